//! The audit log, token prefixes and key prefixes are committed Raft state: two real `shoal
//! agent` processes (node 0 bootstraps, node 1 joins) answer `/v1/audit`, `/v1/tokens` and
//! `/v1/keys` identically whichever node made the change, a tenant sees only the entries of
//! its own workstations and processes on either node, and a bad `since` or `limit` is a 400.

// Test code: a panic is the failure report (the workspace denies unwrap/expect elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{eventually, Agent, Api};
use serde_json::{json, Value};
use tracing::info;

/// Bounded waits: joins and replication on a shared 2-core machine.
const CLUSTER_WAIT: Duration = Duration::from_secs(60);

async fn get_ok(api: &Api, path: &str) -> anyhow::Result<Value> {
    let answer = api.get(path).await?;
    anyhow::ensure!(answer.status == 200, "GET {path}: {}", answer.text);
    Ok(answer.body)
}

/// Waits until `path` answers the same on both nodes and `ready` holds; returns the answer.
async fn converged(
    api0: &Api,
    api1: &Api,
    path: &str,
    ready: impl Fn(&Value) -> bool,
) -> anyhow::Result<Value> {
    eventually(CLUSTER_WAIT, || async {
        let (Ok(first), Ok(second)) = (get_ok(api0, path).await, get_ok(api1, path).await) else {
            return Ok(None);
        };
        Ok((first == second && ready(&first)).then_some(first))
    })
    .await
}

fn has_entry(entries: &Value, action: &str, outcome: &str) -> bool {
    entries.as_array().is_some_and(|entries| {
        entries
            .iter()
            .any(|entry| entry["action"] == action && entry["outcome"] == outcome)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_serves_the_same_audit_log_token_and_key_prefixes_from_raft(
) -> anyhow::Result<()> {
    common::init_tracing();
    let temp = tempfile::tempdir()?;

    info!("--- node 0 bootstraps and mints a join token; node 1 joins with it");
    let node0 = Agent::start(
        &temp.path().join("node-0"),
        &["--bootstrap"],
        common::free_tcp_port(),
    )?;
    let admin_key = node0.admin_key()?;
    let api0 = node0.client(&admin_key);
    let token = api0
        .post("/v1/tokens", &json!({"uses": 1, "role": "server,worker"}))
        .await?;
    assert_eq!(token.status, 201, "{}", token.text);
    let token_text = token.body["token"].as_str().unwrap_or_default().to_string();
    let node1 = Agent::start(
        &temp.path().join("node-1"),
        &["--join", &token_text],
        common::free_tcp_port(),
    )?;
    let api1 = node1.client(&admin_key);

    info!("--- changes made through node 1: a second token, a tenant key, a workstation");
    let second = eventually(CLUSTER_WAIT, || async {
        let answer = api1
            .post("/v1/tokens", &json!({"ttl_ms": 60_000, "uses": 1}))
            .await?;
        Ok((answer.status == 201).then_some(answer.body))
    })
    .await?;
    let acme_key = api1.create_tenant_key("acme").await?;
    let acme1 = node1.client(&acme_key);
    let acme0 = node0.client(&acme_key);
    let ws = eventually(CLUSTER_WAIT, || async {
        let answer = acme1
            .post(
                "/v1/workstations",
                &json!({"cpu_millis": 100, "memory_bytes": 64 << 20}),
            )
            .await?;
        Ok((answer.status == 201).then_some(answer.body))
    })
    .await?;
    let ws_id = ws["id"].as_str().unwrap_or_default().to_string();
    let revoked = api0
        .delete(&format!(
            "/v1/tokens/{}",
            second["id"].as_str().unwrap_or_default()
        ))
        .await?;
    assert_eq!(revoked.status, 204, "{}", revoked.text);

    info!("--- token ls and keys ls show the same ids and prefixes on both nodes");
    let tokens = converged(&api0, &api1, "/v1/tokens", |tokens| {
        tokens.as_array().is_some_and(|tokens| {
            tokens.len() == 2 && tokens.iter().any(|token| token["revoked"] == true)
        })
    })
    .await?;
    for token in tokens.as_array().into_iter().flatten() {
        let prefix = token["prefix"].as_str().unwrap_or_default();
        assert!(prefix.starts_with("shoal1."), "{token}");
    }
    assert!(token_text.starts_with(tokens[0]["prefix"].as_str().unwrap_or("?")));
    assert!(second["token"]
        .as_str()
        .unwrap_or_default()
        .starts_with(tokens[1]["prefix"].as_str().unwrap_or("?")));
    let keys = converged(&api0, &api1, "/v1/keys", |keys| {
        keys.as_array().is_some_and(|keys| keys.len() == 2)
    })
    .await?;
    assert!(keys
        .as_array()
        .into_iter()
        .flatten()
        .any(|key| acme_key.starts_with(key["prefix"].as_str().unwrap_or("?"))));

    info!("--- the admin's audit log is the same on both nodes and holds every change");
    let audit = converged(&api0, &api1, "/v1/audit", |entries| {
        has_entry(entries, "token.revoke", "ok") && has_entry(entries, "workstation.create", "ok")
    })
    .await?;
    for action in ["token.create", "key.create", "node.register"] {
        assert!(has_entry(&audit, action, "ok"), "no {action}: {audit}");
    }

    info!("--- a tenant sees only its own entries, the same on both nodes");
    let mine = converged(&acme0, &acme1, "/v1/audit", |entries| {
        has_entry(entries, "workstation.create", "ok")
    })
    .await?;
    let entries = mine.as_array().cloned().unwrap_or_default();
    assert!(
        entries
            .iter()
            .all(|entry| entry["tenant"] == "acme" && entry["actor"] == acme_key[..12]),
        "{mine}"
    );
    assert!(entries.iter().any(|entry| entry["resource"] == ws_id));

    info!("--- since and limit page the log; bad values are a 400 naming the parameter");
    let newest = get_ok(&api1, "/v1/audit?limit=1").await?;
    assert_eq!(newest.as_array().map(Vec::len), Some(1), "{newest}");
    let future = get_ok(&api1, "/v1/audit?since_unix_ms=32503680000000").await?;
    assert_eq!(future, json!([]));
    for (query, names) in [
        ("limit=1001", "limit"),
        ("since_unix_ms=-1", "since_unix_ms"),
    ] {
        let answer = api1.get(&format!("/v1/audit?{query}")).await?;
        assert_eq!(answer.status, 400, "{query}: {}", answer.text);
        assert!(answer.text.contains(names), "{query}: {}", answer.text);
    }
    Ok(())
}
