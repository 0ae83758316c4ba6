//! A revoked API key stops working on every node within 1 s, and the log streams it holds
//! open end within 1 s too, also one relayed from the node hosting the workstation (SPEC,
//! Trust and Numbers: "key revocation: effective on every node, open streams closed, within
//! 1 s").

mod common;

use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt as _;
use serde_json::json;
use tracing::info;

const CLUSTER_WAIT: Duration = Duration::from_secs(60);
/// SPEC's bound for a revocation to take effect everywhere.
const REVOCATION_BOUND: Duration = Duration::from_secs(1);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_key_is_refused_on_every_node_and_its_open_follow_ends_within_a_second(
) -> anyhow::Result<()> {
    common::init_tracing();
    let temp = tempfile::tempdir()?;
    let cluster = common::start_three_nodes(temp.path(), 10_000, CLUSTER_WAIT).await?;
    let admin = cluster.agents[0].client(&cluster.admin_key);
    let created = admin.post("/v1/keys", &json!({"tenant": "alpha"})).await?;
    anyhow::ensure!(created.status == 201, "{}", created.text);
    let key = created.body["key"].as_str().unwrap_or_default().to_string();
    let key_id = created.body["id"].as_str().unwrap_or_default().to_string();

    info!("--- alpha's workstation prints a line every 100 ms");
    let alpha = cluster.agents[0].client(&key);
    let ws = alpha
        .post(
            "/v1/workstations",
            &json!({"cpu_millis": 10, "memory_bytes": 8 << 20}),
        )
        .await?;
    anyhow::ensure!(ws.status == 201, "{}", ws.text);
    let ws_id = ws.body["id"].as_str().unwrap_or_default().to_string();
    let host = ws.body["node"].as_str().unwrap_or_default().to_string();
    let started = alpha
        .post(
            &format!("/v1/workstations/{ws_id}/processes"),
            &json!({"argv": ["sh", "-c", "while :; do echo tick; sleep 0.1; done"]}),
        )
        .await?;
    anyhow::ensure!(started.status == 201, "{}", started.text);

    info!("--- alpha follows the log through a node that does not host it (a relayed stream)");
    let relay = cluster
        .agents
        .iter()
        .find(|agent| agent.node_id != host)
        .context("a node that does not host the workstation")?;
    let response = reqwest::Client::new()
        .get(format!(
            "{}/v1/workstations/{ws_id}/logs?follow=true",
            relay.base_url
        ))
        .bearer_auth(&key)
        .send()
        .await?;
    anyhow::ensure!(response.status() == 200, "follow: {}", response.status());
    let mut stream = response.bytes_stream();
    let mut seen = String::new();
    tokio::time::timeout(CLUSTER_WAIT, async {
        while !seen.contains("tick") {
            match stream.next().await {
                Some(Ok(chunk)) => seen.push_str(&String::from_utf8_lossy(&chunk)),
                _ => anyhow::bail!("the follow ended before any output: {seen}"),
            }
        }
        Ok(())
    })
    .await
    .context("no output on the follow")??;

    info!("--- the admin revokes the key");
    let revoked = admin.delete(&format!("/v1/keys/{key_id}")).await?;
    anyhow::ensure!(revoked.status == 204, "{}", revoked.text);
    let revoked_at = shoal_node::clock::monotonic_now();

    info!("--- the open follow ends within 1 s");
    let ended = tokio::time::timeout(REVOCATION_BOUND * 5, async {
        loop {
            match stream.next().await {
                Some(Ok(_)) => continue,
                _ => return revoked_at.elapsed(),
            }
        }
    })
    .await
    .context("the follow did not end within 5 s of the revocation")?;
    info!(ended_ms = ended.as_millis() as u64, "the follow ended");
    assert!(
        ended <= REVOCATION_BOUND,
        "the follow ended {ended:?} after the revocation"
    );

    info!("--- every node refuses the key within 1 s");
    for agent in &cluster.agents {
        let api = agent.client(&key);
        let refused_after = tokio::time::timeout(REVOCATION_BOUND * 5, async {
            loop {
                if api.get("/v1/workstations").await?.status == 401 {
                    return Ok::<Duration, anyhow::Error>(revoked_at.elapsed());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .context("a node still accepted the key 5 s after its revocation")??;
        info!(node = %agent.node_id, refused_ms = refused_after.as_millis() as u64, "refused");
        assert!(
            refused_after <= REVOCATION_BOUND,
            "{} accepted the revoked key for {refused_after:?}",
            agent.node_id
        );
    }
    Ok(())
}
