//! Workstation logs through the API of a real agent: SSE follow, resume with `Last-Event-ID`,
//! and the exact 5 MiB bound with exact `dropped`.

// Test code: a panic is the failure report (the workspace denies unwrap/expect elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{eventually, Agent, Api, SseEvent, SseParser};
use futures::StreamExt;
use serde_json::{json, Value};
use tracing::info;

async fn create_workstation(api: &Api) -> anyhow::Result<String> {
    let answer = api
        .post(
            "/v1/workstations",
            &json!({"cpu_millis": 100, "memory_bytes": 64 << 20}),
        )
        .await?;
    anyhow::ensure!(
        answer.status == 201,
        "create: {} {}",
        answer.status,
        answer.text
    );
    Ok(answer.body["id"].as_str().unwrap_or_default().to_string())
}

async fn exec(api: &Api, ws: &str, script: &str) -> anyhow::Result<String> {
    let answer = api
        .post(
            &format!("/v1/workstations/{ws}/processes"),
            &json!({"argv": ["sh", "-c", script]}),
        )
        .await?;
    anyhow::ensure!(
        answer.status == 201,
        "exec: {} {}",
        answer.status,
        answer.text
    );
    Ok(answer.body["id"].as_str().unwrap_or_default().to_string())
}

/// Reads SSE events from `response` until `stop` says so or the stream ends.
async fn read_events(
    response: reqwest::Response,
    mut stop: impl FnMut(&SseEvent) -> bool,
) -> anyhow::Result<Vec<SseEvent>> {
    let mut parser = SseParser::default();
    let mut events = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        for event in parser.feed(&chunk?) {
            let done = stop(&event);
            events.push(event);
            if done {
                return Ok(events);
            }
        }
    }
    Ok(events)
}

fn record_text(event: &SseEvent) -> anyhow::Result<String> {
    let record: Value = serde_json::from_str(&event.data)?;
    Ok(record["data"].as_str().unwrap_or_default().to_string())
}

#[tokio::test]
async fn follow_then_drop_then_resume_with_last_event_id_loses_and_repeats_no_byte(
) -> anyhow::Result<()> {
    common::init_tracing();
    let agent = Agent::bootstrap()?;
    let api = agent.client(&agent.admin_key()?);
    let ws = create_workstation(&api).await?;

    info!("--- start a process that prints 300 numbered lines over about 1.5 s");
    exec(
        &api,
        &ws,
        "i=0; while [ $i -lt 300 ]; do echo \"line $i\"; i=$((i+1)); sleep 0.005; done",
    )
    .await?;

    info!("--- follow, keep the first 40 log events, then drop the connection");
    let url = format!("{}/v1/workstations/{ws}/logs?follow=true", api.base_url);
    let response = api
        .http
        .get(&url)
        .bearer_auth(api.key.clone().unwrap_or_default())
        .send()
        .await?;
    anyhow::ensure!(response.status() == 200);
    let mut n_logs = 0;
    let first = tokio::time::timeout(
        Duration::from_secs(20),
        read_events(response, |event| {
            if event.event == "log" {
                n_logs += 1;
            }
            n_logs >= 40
        }),
    )
    .await??;
    let last_id = first
        .iter()
        .rev()
        .find_map(|event| event.id.clone())
        .ok_or_else(|| anyhow::anyhow!("no id in the first events"))?;
    let mut text = String::new();
    for event in first.iter().filter(|event| event.event == "log") {
        text.push_str(&record_text(event)?);
    }
    assert_eq!(
        last_id.parse::<usize>()?,
        text.len(),
        "the id of a log event is the offset just after its record"
    );

    info!(last_id = %last_id, "--- reconnect with Last-Event-ID and read until the exit event");
    let response = api
        .http
        .get(format!("{}/v1/workstations/{ws}/logs", api.base_url))
        .bearer_auth(api.key.clone().unwrap_or_default())
        .header("Accept", "text/event-stream")
        .header("Last-Event-ID", &last_id)
        .send()
        .await?;
    let second = tokio::time::timeout(
        Duration::from_secs(20),
        read_events(response, |event| event.event == "exit"),
    )
    .await??;
    assert!(
        second.iter().all(|event| event.event != "dropped"),
        "nothing was dropped"
    );
    for event in second.iter().filter(|event| event.event == "log") {
        text.push_str(&record_text(event)?);
    }
    let exit: Value =
        serde_json::from_str(&second.last().map(|e| e.data.clone()).unwrap_or_default())?;
    assert_eq!(exit["code"], json!(0));

    info!("--- the two halves are exactly the program's output");
    let expected: String = (0..300).map(|i| format!("line {i}\n")).collect();
    assert_eq!(text, expected);
    Ok(())
}

#[tokio::test]
async fn twenty_mib_of_output_keeps_exactly_5242880_bytes_and_reports_dropped_exactly(
) -> anyhow::Result<()> {
    common::init_tracing();
    let agent = Agent::bootstrap()?;
    let api = agent.client(&agent.admin_key()?);
    let ws = create_workstation(&api).await?;

    info!("--- write 20 MiB of text");
    let total: u64 = 20 * 1024 * 1024;
    let proc = exec(
        &api,
        &ws,
        &format!("yes 0123456789abcdef | head -c {total}"),
    )
    .await?;
    eventually(Duration::from_secs(60), || {
        let api = api.clone();
        let ws = ws.clone();
        let proc = proc.clone();
        async move {
            let answer = api.get(&format!("/v1/workstations/{ws}/processes")).await?;
            let exited = answer.body.as_array().is_some_and(|processes| {
                processes
                    .iter()
                    .any(|p| p["id"] == json!(proc) && p["state"] == json!("exited"))
            });
            Ok(exited.then_some(()))
        }
    })
    .await?;

    info!("--- read everything from offset 0");
    let answer = api
        .get(&format!("/v1/workstations/{ws}/logs?from=0"))
        .await?;
    assert_eq!(answer.status, 200);
    let retained: u64 = answer.body["records"]
        .as_array()
        .map(|records| records.iter().filter_map(|r| r["len"].as_u64()).sum())
        .unwrap_or(0);
    assert_eq!(retained, 5_242_880);
    assert_eq!(answer.body["dropped"], json!(total - 5_242_880));
    assert_eq!(answer.body["next"], json!(total));
    let first_offset = answer.body["records"][0]["offset"].as_u64();
    assert_eq!(first_offset, Some(total - 5_242_880));

    info!("--- a follower from 0 is told the same drop first");
    let response = api
        .http
        .get(format!(
            "{}/v1/workstations/{ws}/logs?follow=true&from=0",
            api.base_url
        ))
        .bearer_auth(api.key.clone().unwrap_or_default())
        .send()
        .await?;
    let events = tokio::time::timeout(
        Duration::from_secs(20),
        read_events(response, |event| event.event == "log"),
    )
    .await??;
    assert_eq!(events[0].event, "dropped");
    let dropped: Value = serde_json::from_str(&events[0].data)?;
    assert_eq!(dropped["bytes"], json!(total - 5_242_880));
    Ok(())
}

#[tokio::test]
async fn an_idle_log_stream_gets_keepalive_comments() -> anyhow::Result<()> {
    common::init_tracing();
    let agent = Agent::bootstrap_with_config("log_keepalive_ms = 200\n")?;
    let api = agent.client(&agent.admin_key()?);
    let ws = create_workstation(&api).await?;
    let response = api
        .http
        .get(format!(
            "{}/v1/workstations/{ws}/logs?follow=true",
            api.base_url
        ))
        .bearer_auth(api.key.clone().unwrap_or_default())
        .send()
        .await?;
    info!("--- nothing is written; comments keep arriving");
    let mut stream = response.bytes_stream();
    let mut text = String::new();
    while text.matches(": keepalive").count() < 2 {
        let chunk = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await?
            .ok_or_else(|| anyhow::anyhow!("the stream ended"))??;
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(
        !text.contains("event:"),
        "no event on an idle stream: {text}"
    );
    Ok(())
}
