//! End-to-end API benchmark against a running agent (not a test: numbers, no assertions).
//!
//! ```text
//! shoal agent --bootstrap --data-dir /tmp/bench --api 127.0.0.1:7070 &
//! cargo run -p shoal-node --example bench_api -- http://127.0.0.1:7070 "$(cat /tmp/bench/admin.token)"
//! ```
//!
//! Prints: `POST /v1/runs` of `true` one at a time (p50, p99), runs per second with 16
//! concurrent clients, and log follow latency (a process writes its wall-clock time, the SSE
//! client subtracts it from its own on arrival; same host, same clock) p50 and p99.

// Measurement code run by hand: a panic is the failure report (the workspace denies
// unwrap/expect in the crates' code).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use futures::StreamExt;
use serde_json::{json, Value};
use shoal_node::clock;

const SEQUENTIAL_RUNS: usize = 200;
const CONCURRENT_CLIENTS: usize = 16;
const CONCURRENT_SECONDS: u64 = 10;
const FOLLOW_LINES: usize = 300;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

async fn post(
    client: &reqwest::Client,
    url: &str,
    key: &str,
    body: &Value,
) -> anyhow::Result<Value> {
    let response = client.post(url).bearer_auth(key).json(body).send().await?;
    let status = response.status();
    let value: Value = response.json().await?;
    anyhow::ensure!(status.is_success(), "{status}: {value}");
    Ok(value)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let base = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:7070".to_string());
    let key = args
        .next()
        .ok_or_else(|| anyhow::anyhow!("usage: bench_api ADDR KEY"))?;
    let client = reqwest::Client::new();
    let runs_url = format!("{base}/v1/runs");
    let run_body = json!({"argv": ["true"]});

    // Warm up (languages, connection pool, page cache).
    for _ in 0..10 {
        post(&client, &runs_url, &key, &run_body).await?;
    }

    let mut latencies_ms = Vec::with_capacity(SEQUENTIAL_RUNS);
    let mut isolation = String::new();
    for _ in 0..SEQUENTIAL_RUNS {
        let started = clock::monotonic_now();
        let result = post(&client, &runs_url, &key, &run_body).await?;
        latencies_ms.push(started.elapsed().as_secs_f64() * 1000.0);
        isolation = result["isolation"].as_str().unwrap_or_default().to_string();
    }
    latencies_ms.sort_by(f64::total_cmp);
    println!(
        "POST /v1/runs `true`, sequential, n={SEQUENTIAL_RUNS}, isolation={isolation}: p50 {:.1} ms, p99 {:.1} ms",
        percentile(&latencies_ms, 0.50),
        percentile(&latencies_ms, 0.99)
    );

    let deadline = Duration::from_secs(CONCURRENT_SECONDS);
    let started = clock::monotonic_now();
    let workers = (0..CONCURRENT_CLIENTS).map(|_| {
        let client = client.clone();
        let url = runs_url.clone();
        let key = key.clone();
        let body = run_body.clone();
        async move {
            let mut done = 0u64;
            let mut failed = 0u64;
            while started.elapsed() < deadline {
                match post(&client, &url, &key, &body).await {
                    Ok(_) => done += 1,
                    Err(_) => failed += 1,
                }
            }
            (done, failed)
        }
    });
    let results = futures::future::join_all(workers).await;
    let elapsed = started.elapsed().as_secs_f64();
    let done: u64 = results.iter().map(|(done, _)| done).sum();
    let failed: u64 = results.iter().map(|(_, failed)| failed).sum();
    println!(
        "POST /v1/runs `true`, {CONCURRENT_CLIENTS} concurrent clients for {elapsed:.1} s: {:.1} runs/s ({done} ok, {failed} refused or failed)",
        done as f64 / elapsed
    );

    let ws = post(
        &client,
        &format!("{base}/v1/workstations"),
        &key,
        &json!({"cpu_millis": 100, "memory_bytes": 64 << 20}),
    )
    .await?;
    let ws_id = ws["id"].as_str().unwrap_or_default().to_string();
    let response = client
        .get(format!("{base}/v1/workstations/{ws_id}/logs?follow=true"))
        .bearer_auth(&key)
        .send()
        .await?;
    let script = format!(
        "import time, sys\nfor i in range({FOLLOW_LINES}):\n    print(time.time_ns() // 1000, flush=True)\n    time.sleep(0.01)\n"
    );
    post(
        &client,
        &format!("{base}/v1/workstations/{ws_id}/processes"),
        &key,
        &json!({"argv": ["python3", "-c", script]}),
    )
    .await?;
    let mut follow_ms = Vec::with_capacity(FOLLOW_LINES);
    let mut stream = response.bytes_stream();
    let mut pending = String::new();
    while follow_ms.len() < FOLLOW_LINES {
        let Some(chunk) = tokio::time::timeout(Duration::from_secs(30), stream.next()).await?
        else {
            break;
        };
        let arrived_us = clock::now_unix_micros();
        pending.push_str(&String::from_utf8_lossy(&chunk?));
        while let Some(end) = pending.find("\n\n") {
            let event: String = pending.drain(..end + 2).collect();
            let Some(data) = event.lines().find_map(|line| line.strip_prefix("data: ")) else {
                continue;
            };
            let record: Value = serde_json::from_str(data).unwrap_or(Value::Null);
            for line in record["data"].as_str().unwrap_or_default().lines() {
                if let Ok(written_us) = line.trim().parse::<u64>() {
                    follow_ms.push(arrived_us.saturating_sub(written_us) as f64 / 1000.0);
                }
            }
        }
    }
    follow_ms.sort_by(f64::total_cmp);
    println!(
        "log follow latency (write in the process -> SSE event at the client), n={}: p50 {:.2} ms, p99 {:.2} ms",
        follow_ms.len(),
        percentile(&follow_ms, 0.50),
        percentile(&follow_ms, 0.99)
    );
    let _ = client
        .delete(format!("{base}/v1/workstations/{ws_id}"))
        .bearer_auth(&key)
        .send()
        .await;
    Ok(())
}
