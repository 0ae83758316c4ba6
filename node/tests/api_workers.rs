//! Worker-only nodes with real `shoal agent` processes on loopback: a node admitted with a
//! `worker` token holds no Raft log and mirrors the leader's committed state over the mesh. It
//! authenticates API calls, shows up with its capacity, hosts workstations, serves their logs,
//! and executes the runs a server places on it; after a leader change it follows the new
//! leader.

// Test code: a panic is the failure report (the workspace denies unwrap/expect elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{eventually, Agent, Api};
use serde_json::{json, Value};
use tracing::info;

/// Bounded waits: joins, elections and replication on a shared 2-core machine.
const CLUSTER_WAIT: Duration = Duration::from_secs(60);

fn node_named<'a>(nodes: &'a Value, id: &str) -> Option<&'a Value> {
    nodes.as_array()?.iter().find(|node| node["id"] == id)
}

async fn cluster_of(api: &Api) -> Option<Value> {
    match api.get("/v1/cluster").await {
        Ok(answer) if answer.status == 200 => Some(answer.body),
        _ => None,
    }
}

/// Mints a join token for `role` through `api`.
async fn token_for(api: &Api, role: &str, uses: u32) -> anyhow::Result<String> {
    let token = api
        .post("/v1/tokens", &json!({"uses": uses, "role": role}))
        .await?;
    anyhow::ensure!(token.status == 201, "{}", token.text);
    Ok(token.body["token"].as_str().unwrap_or_default().to_string())
}

/// Starts a worker-only node joining with `token`.
fn start_worker(dir: &std::path::Path, token: &str, config: &str) -> anyhow::Result<Agent> {
    Agent::start(
        dir,
        &["--join", token, "--role", "worker", "--config", config],
        common::free_tcp_port(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_only_node_mirrors_the_state_hosts_workstations_and_runs_what_a_server_places(
) -> anyhow::Result<()> {
    common::init_tracing();
    let temp = tempfile::tempdir()?;
    let config_text = common::write_config(
        temp.path(),
        "heartbeat_interval_ms = 200\nheartbeat_grace_ms = 3000\n",
    )?;

    info!("--- a server-only node bootstraps; a worker token is minted through its API");
    let server = Agent::start(
        &temp.path().join("server"),
        &["--bootstrap", "--role", "server", "--config", &config_text],
        common::free_tcp_port(),
    )?;
    let admin_key = server.admin_key()?;
    let server_api = server.client(&admin_key);
    let token = token_for(&server_api, "worker", 1).await?;

    info!("--- a worker-only node joins; it keeps no Raft store");
    let mut worker = start_worker(&temp.path().join("worker"), &token, &config_text)?;
    let worker_api = worker.client(&admin_key);
    assert!(
        !worker.data_dir.join("raft").exists(),
        "a worker-only node must hold no Raft log"
    );

    info!("--- the worker authenticates the cluster's admin key from its mirror; it is no Raft member");
    let cluster = eventually(CLUSTER_WAIT, || async { Ok(cluster_of(&worker_api).await) }).await?;
    assert_eq!(cluster["leader"], json!(server.node_id), "{cluster}");
    assert_eq!(cluster["servers"], json!([server.node_id]), "{cluster}");
    let bad = worker_api
        .with_key("shoal_not_a_key")
        .get("/v1/cluster")
        .await?;
    assert_eq!(bad.status, 401, "{}", bad.text);
    let on_server = cluster_of(&server_api).await.unwrap_or_default();
    assert_eq!(on_server["servers"], json!([server.node_id]), "{on_server}");

    info!(
        "--- the worker shows up in /v1/nodes on the server with its capacity, ready, heard from"
    );
    eventually(CLUSTER_WAIT, || async {
        let Ok(answer) = server_api.get("/v1/nodes").await else {
            return Ok(None);
        };
        let ok = node_named(&answer.body, &worker.node_id).is_some_and(|node| {
            node["role"] == "worker"
                && node["state"] == "ready"
                && node["capacity"]["cpu_millis"].as_u64().unwrap_or(0) > 0
                && node["used"]["memory_bytes"].as_u64().unwrap_or(0) > 0
        });
        Ok(ok.then_some(()))
    })
    .await?;

    info!("--- a workstation is placed on the worker (the only worker) and created there");
    let ws = server_api
        .post(
            "/v1/workstations",
            &json!({"cpu_millis": 100, "memory_bytes": 64 << 20}),
        )
        .await?;
    assert_eq!(ws.status, 201, "{}", ws.text);
    assert_eq!(ws.body["node"], json!(worker.node_id), "{}", ws.text);
    let ws_id = ws.body["id"].as_str().unwrap_or_default().to_string();

    info!(
        "--- the worker's mirror sees the workstation (reads on a worker lag the leader by a sync)"
    );
    eventually(CLUSTER_WAIT, || async {
        let answer = worker_api.get(&format!("/v1/workstations/{ws_id}")).await;
        Ok(answer.ok().filter(|a| a.status == 200).map(|_| ()))
    })
    .await?;

    info!("--- a process started through the worker's API (write forwarded to the leader) runs");
    let proc = worker_api
        .post(
            &format!("/v1/workstations/{ws_id}/processes"),
            &json!({"argv": ["sh", "-c", "echo hello-from-the-worker; exec sleep 600"]}),
        )
        .await?;
    assert_eq!(proc.status, 201, "{}", proc.text);
    let logs_path = format!("/v1/workstations/{ws_id}/logs?from=0");
    for (name, api) in [("worker", &worker_api), ("server", &server_api)] {
        info!(via = name, "--- the log is served");
        eventually(CLUSTER_WAIT, || async {
            let Ok(answer) = api.get(&logs_path).await else {
                return Ok(None);
            };
            let text = answer.body["records"].to_string();
            Ok(text.contains("hello-from-the-worker").then_some(()))
        })
        .await?;
    }
    let processes = worker_api
        .get(&format!("/v1/workstations/{ws_id}/processes"))
        .await?;
    assert_eq!(processes.status, 200, "{}", processes.text);
    assert_eq!(processes.body[0]["state"], "running", "{}", processes.text);

    info!("--- a workstation's log read through the server right after its creation: the worker catches up");
    let second = server_api
        .post(
            "/v1/workstations",
            &json!({"cpu_millis": 100, "memory_bytes": 64 << 20}),
        )
        .await?;
    assert_eq!(second.status, 201, "{}", second.text);
    let second_id = second.body["id"].as_str().unwrap_or_default().to_string();
    let page = server_api
        .get(&format!("/v1/workstations/{second_id}/logs?from=0"))
        .await?;
    assert_eq!(page.status, 200, "{}", page.text);
    assert_eq!(page.body["next"], 0, "{}", page.text);

    info!("--- a run submitted to the server executes on the worker");
    let run = server_api
        .post("/v1/runs", &json!({"argv": ["sh", "-c", "echo ran-there"]}))
        .await?;
    assert_eq!(run.status, 200, "{}", run.text);
    assert_eq!(run.body["node"], json!(worker.node_id), "{}", run.text);
    assert_eq!(run.body["stdout"], "ran-there\n", "{}", run.text);
    assert_eq!(run.body["verdict"], "ok", "{}", run.text);
    info!("--- an error at the worker comes back with its status");
    let invalid = server_api
        .post("/v1/runs", &json!({"argv": [], "timeout_ms": 1000}))
        .await?;
    assert_eq!(invalid.status, 400, "{}", invalid.text);
    info!("--- a run submitted to the worker stays there");
    let local = worker_api
        .post("/v1/runs", &json!({"argv": ["sh", "-c", "echo ran-here"]}))
        .await?;
    assert_eq!(local.status, 200, "{}", local.text);
    assert_eq!(local.body["node"], json!(worker.node_id), "{}", local.text);

    info!("--- the worker is killed: a run at the server gets 503 with Retry-After, not a hang");
    worker.kill9();
    let refused = tokio::time::timeout(
        CLUSTER_WAIT,
        server_api.post("/v1/runs", &json!({"argv": ["true"]})),
    )
    .await??;
    assert_eq!(refused.status, 503, "{}", refused.text);
    assert!(refused.retry_after.is_some(), "{refused:?}");
    assert_eq!(refused.error_code(), "unavailable", "{}", refused.text);

    info!("--- the worker restarts on its data dir: same node, its kept mirror, ready again");
    let restarted = Agent::start(
        &worker.data_dir,
        &["--role", "worker", "--config", &config_text],
        common::free_tcp_port(),
    )?;
    assert_eq!(restarted.node_id, worker.node_id);
    assert!(!restarted.data_dir.join("raft").exists());
    let restarted_api = restarted.client(&admin_key);
    let cluster = eventually(CLUSTER_WAIT, || async {
        Ok(cluster_of(&restarted_api).await)
    })
    .await?;
    assert_eq!(cluster["servers"], json!([server.node_id]), "{cluster}");
    eventually(CLUSTER_WAIT, || async {
        let Ok(answer) = server_api.get("/v1/nodes").await else {
            return Ok(None);
        };
        let ready =
            node_named(&answer.body, &worker.node_id).is_some_and(|node| node["state"] == "ready");
        Ok(ready.then_some(()))
    })
    .await?;
    let again = server_api
        .post("/v1/runs", &json!({"argv": ["sh", "-c", "echo back"]}))
        .await?;
    assert_eq!(again.status, 200, "{}", again.text);
    assert_eq!(again.body["node"], json!(worker.node_id), "{}", again.text);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_only_node_follows_a_new_leader_after_kill_9_of_the_old_one() -> anyhow::Result<()>
{
    common::init_tracing();
    let temp = tempfile::tempdir()?;
    let config_text = common::write_config(
        temp.path(),
        "heartbeat_interval_ms = 200\nheartbeat_grace_ms = 3000\n",
    )?;

    info!("--- three servers form a cluster; a worker joins");
    let mut server0 = Agent::start(
        &temp.path().join("server-0"),
        &["--bootstrap", "--role", "server", "--config", &config_text],
        common::free_tcp_port(),
    )?;
    let admin_key = server0.admin_key()?;
    let api0 = server0.client(&admin_key);
    let server_token = token_for(&api0, "server", 2).await?;
    let mut servers = Vec::new();
    for i in 1..=2 {
        servers.push(Agent::start(
            &temp.path().join(format!("server-{i}")),
            &[
                "--join",
                &server_token,
                "--role",
                "server",
                "--config",
                &config_text,
            ],
            common::free_tcp_port(),
        )?);
    }
    eventually(CLUSTER_WAIT, || async {
        let Some(cluster) = cluster_of(&api0).await else {
            return Ok(None);
        };
        Ok((cluster["servers"].as_array().map_or(0, Vec::len) == 3).then_some(()))
    })
    .await?;
    let worker_token = token_for(&api0, "worker", 1).await?;
    let worker = start_worker(&temp.path().join("worker"), &worker_token, &config_text)?;
    let worker_api = worker.client(&admin_key);
    let cluster = eventually(CLUSTER_WAIT, || async { Ok(cluster_of(&worker_api).await) }).await?;
    assert_eq!(cluster["leader"], json!(server0.node_id), "{cluster}");
    let servers_seen = cluster["servers"].as_array().cloned().unwrap_or_default();
    assert_eq!(servers_seen.len(), 3, "{cluster}");
    assert!(
        !servers_seen.contains(&json!(worker.node_id)),
        "the worker is no Raft member: {cluster}"
    );

    info!("--- kill -9 the leader; the worker's mirror follows the new one");
    server0.kill9();
    let new_leader = eventually(CLUSTER_WAIT, || async {
        let Some(cluster) = cluster_of(&worker_api).await else {
            return Ok(None);
        };
        let leader = cluster["leader"].as_str().unwrap_or("").to_string();
        Ok((!leader.is_empty() && leader != server0.node_id).then_some(leader))
    })
    .await?;
    assert!(
        servers.iter().any(|server| server.node_id == new_leader),
        "{new_leader}"
    );

    info!("--- a write through the worker reaches the new leader; a key made there works on the worker");
    let key = eventually(CLUSTER_WAIT, || async {
        let answer = worker_api
            .post("/v1/keys", &json!({"tenant": "carol"}))
            .await;
        Ok(answer.ok().filter(|a| a.status == 201))
    })
    .await?;
    let carol_key = key.body["key"].as_str().unwrap_or_default().to_string();
    let carol = worker.client(&carol_key);
    let seen = carol.get("/v1/workstations").await?;
    assert_eq!(seen.status, 200, "{}", seen.text);
    let on_server = servers[0].client(&carol_key);
    eventually(CLUSTER_WAIT, || async {
        let answer = on_server.get("/v1/workstations").await;
        Ok(answer.ok().filter(|a| a.status == 200).map(|_| ()))
    })
    .await?;

    info!("--- the new leader hears the worker's heartbeats: it stays ready");
    let leader_api = servers
        .iter()
        .find(|server| server.node_id == new_leader)
        .map(|server| server.client(&admin_key))
        .ok_or_else(|| anyhow::anyhow!("no agent is {new_leader}"))?;
    eventually(CLUSTER_WAIT, || async {
        let Ok(answer) = leader_api.get("/v1/nodes").await else {
            return Ok(None);
        };
        let heard = node_named(&answer.body, &worker.node_id).is_some_and(|node| {
            node["state"] == "ready" && node["used"]["memory_bytes"].as_u64().unwrap_or(0) > 0
        });
        Ok(heard.then_some(()))
    })
    .await?;
    Ok(())
}
