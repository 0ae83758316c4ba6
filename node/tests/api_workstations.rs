//! A workstation's life through the API of a real agent: create, resize within and beyond its
//! node, signal and kill processes, filter logs by process, delete; and the pool's refusals
//! (422 never fits, 503 with Retry-After when full now).

// Test code: a panic is the failure report (the workspace denies unwrap/expect elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{eventually, Agent, Api};
use serde_json::{json, Value};
use tracing::info;

async fn process_state(api: &Api, ws: &str, proc: &str) -> anyhow::Result<Value> {
    let answer = api.get(&format!("/v1/workstations/{ws}/processes")).await?;
    Ok(answer
        .body
        .as_array()
        .and_then(|processes| processes.iter().find(|p| p["id"] == json!(proc)).cloned())
        .unwrap_or(Value::Null))
}

#[tokio::test]
async fn resize_signal_kill_filter_and_delete_a_workstation() -> anyhow::Result<()> {
    common::init_tracing();
    let agent = Agent::bootstrap()?;
    let api = agent.client(&agent.admin_key()?);
    let node = api.get(&format!("/v1/nodes/{}", agent.node_id)).await?;
    let node_memory = node.body["capacity"]["memory_bytes"].as_u64().unwrap_or(0);
    assert!(node_memory > 1 << 30);

    info!("--- create, then resize in place");
    let ws = api
        .post(
            "/v1/workstations",
            &json!({"cpu_millis": 100, "memory_bytes": 64 << 20, "name": "box"}),
        )
        .await?;
    assert_eq!(ws.status, 201, "{}", ws.text);
    let id = ws.body["id"].as_str().unwrap_or_default().to_string();
    assert_eq!(ws.body["generation"], json!(1));
    assert_eq!(ws.body["home_volume"], json!("node-local"));
    let nodes = api.get("/v1/nodes").await?;
    let node_isolation = nodes.body[0]["isolation"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let isolation = ws.body["isolation"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        node_isolation.ends_with(&format!("workstations: {isolation}")),
        "{node_isolation} vs {isolation}"
    );
    let resized = api
        .patch(
            &format!("/v1/workstations/{id}"),
            &json!({"cpu_millis": 200, "memory_bytes": 128 << 20}),
        )
        .await?;
    assert_eq!(resized.status, 200, "{}", resized.text);
    assert_eq!(resized.body["cpu_millis"], json!(200));
    assert_eq!(
        resized.body["cpu_limit_millis"],
        json!(200),
        "the limit follows the reservation up"
    );
    let reserved = api.get("/v1/cluster").await?.body["pool"]["memory_bytes"]["reserved"].clone();
    assert_eq!(reserved, json!(128u64 << 20));
    if agent.cgroup_name.starts_with("shoal-") {
        info!("--- the running sandbox's cgroup follows the committed limit");
        let v1 = std::path::Path::new("/sys/fs/cgroup/memory")
            .join(&agent.cgroup_name)
            .join(&id)
            .join("memory.limit_in_bytes");
        let v2 = std::path::Path::new("/sys/fs/cgroup")
            .join(&agent.cgroup_name)
            .join(&id)
            .join("memory.max");
        let limit_file = if v1.exists() { v1 } else { v2 };
        eventually(Duration::from_secs(10), || {
            let limit_file = limit_file.clone();
            async move {
                let text = std::fs::read_to_string(&limit_file).unwrap_or_default();
                Ok((text.trim() == (128u64 << 20).to_string()).then_some(()))
            }
        })
        .await?;
    }

    info!("--- resizes that cannot be done change nothing");
    let too_big = api
        .patch(
            &format!("/v1/workstations/{id}"),
            &json!({"memory_bytes": node_memory * 2}),
        )
        .await?;
    assert_eq!(too_big.status, 422, "{}", too_big.text);
    let bad_limit = api
        .patch(
            &format!("/v1/workstations/{id}"),
            &json!({"cpu_limit_millis": 50}),
        )
        .await?;
    assert_eq!(bad_limit.status, 400);
    assert_eq!(
        api.get(&format!("/v1/workstations/{id}")).await?.body,
        resized.body
    );

    info!("--- a second workstation that does not fit now: 503 with Retry-After");
    let hog = api
        .post(
            "/v1/workstations",
            &json!({"cpu_millis": 100, "memory_bytes": node_memory - (64 << 20)}),
        )
        .await?;
    assert_eq!(hog.status, 503, "{}", hog.text);
    assert!(hog.retry_after.is_some());
    assert_eq!(hog.error_code(), "unavailable");

    info!("--- two processes; the log can be filtered by process");
    let talker = api
        .post(
            &format!("/v1/workstations/{id}/processes"),
            &json!({"argv": ["sh", "-c", "echo from-talker; exec sleep 600"], "env": {"A": "1"}}),
        )
        .await?;
    assert_eq!(talker.status, 201, "{}", talker.text);
    let talker_id = talker.body["id"].as_str().unwrap_or_default().to_string();
    let trapper = api
        .post(
            &format!("/v1/workstations/{id}/processes"),
            &json!({"argv": ["sh", "-c", "trap 'echo got-usr1' USR1; echo ready; while true; do sleep 0.05; done"], "restart": "always"}),
        )
        .await?;
    let trapper_id = trapper.body["id"].as_str().unwrap_or_default().to_string();
    eventually(Duration::from_secs(10), || {
        let api = api.clone();
        let path = format!("/v1/workstations/{id}/logs?proc={trapper_id}");
        async move {
            let page = api.get(&path).await?;
            let text: String = page.body["records"]
                .as_array()
                .map(|records| records.iter().filter_map(|r| r["data"].as_str()).collect())
                .unwrap_or_default();
            Ok(text.contains("ready").then_some(()))
        }
    })
    .await?;
    let filtered = api
        .get(&format!("/v1/workstations/{id}/logs?proc={talker_id}"))
        .await?;
    let records = filtered.body["records"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(!records.is_empty());
    assert!(records.iter().all(|r| r["proc"] == json!(talker_id)));

    if isolation == "full" {
        info!("--- full isolation: processes run unprivileged in their home volume");
        let probe = api
            .post(
                &format!("/v1/workstations/{id}/processes"),
                &json!({"argv": ["sh", "-c", "echo uid=$(id -u) home=$HOME; echo kept > f; ls /root 2>&1 | head -1"]}),
            )
            .await?;
        let probe_id = probe.body["id"].as_str().unwrap_or_default().to_string();
        let text = eventually(Duration::from_secs(10), || {
            let api = api.clone();
            let path = format!("/v1/workstations/{id}/logs?proc={probe_id}");
            async move {
                let page = api.get(&path).await?;
                let text: String = page.body["records"]
                    .as_array()
                    .map(|records| records.iter().filter_map(|r| r["data"].as_str()).collect())
                    .unwrap_or_default();
                Ok(text.contains("/root").then_some(text))
            }
        })
        .await?;
        assert!(!text.contains("uid=0 "), "{text}");
        assert!(
            text.contains("No such file"),
            "the host's /root is not visible: {text}"
        );
        assert!(agent.data_dir.join("homes").join(&id).join("f").is_file());
    }

    info!("--- USR1 is delivered and the process keeps running");
    let signalled = api
        .delete(&format!(
            "/v1/workstations/{id}/processes/{trapper_id}?signal=USR1"
        ))
        .await?;
    assert_eq!(signalled.status, 204, "{}", signalled.text);
    eventually(Duration::from_secs(10), || {
        let api = api.clone();
        let path = format!("/v1/workstations/{id}/logs?proc={trapper_id}");
        async move {
            let page = api.get(&path).await?;
            Ok(page.text.contains("got-usr1").then_some(()))
        }
    })
    .await?;
    assert_eq!(
        process_state(&api, &id, &trapper_id).await?["state"],
        json!("running")
    );

    info!("--- TERM stops an `always` process for good");
    let killed = api
        .delete(&format!("/v1/workstations/{id}/processes/{trapper_id}"))
        .await?;
    assert_eq!(killed.status, 204, "{}", killed.text);
    let state = process_state(&api, &id, &trapper_id).await?;
    assert_eq!(state["state"], json!("exited"), "{state}");
    assert_eq!(state["reason"], json!("killed"));

    info!("--- delete: gone from the API, its processes stopped, the audit keeps it");
    let deleted = api.delete(&format!("/v1/workstations/{id}")).await?;
    assert_eq!(deleted.status, 204);
    assert_eq!(
        api.get(&format!("/v1/workstations/{id}")).await?.status,
        404
    );
    assert_eq!(
        api.get(&format!("/v1/workstations/{id}/logs"))
            .await?
            .status,
        404
    );
    let pool = api.get("/v1/cluster").await?.body["pool"]["memory_bytes"]["reserved"].clone();
    assert_eq!(pool, json!(0));
    assert!(
        !agent.data_dir.join("homes").join(&id).exists(),
        "the home volume is removed"
    );
    let audit = api.get("/v1/audit").await?;
    let actions: Vec<&str> = audit
        .body
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .filter_map(|e| e["action"].as_str())
                .collect()
        })
        .unwrap_or_default();
    for action in [
        "workstation.create",
        "workstation.resize",
        "process.create",
        "process.kill",
        "workstation.delete",
    ] {
        assert!(
            actions.contains(&action),
            "audit lacks {action}: {actions:?}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn sigterm_with_an_open_log_stream_ends_the_stream_and_exits_cleanly() -> anyhow::Result<()> {
    common::init_tracing();
    let mut agent = Agent::bootstrap()?;
    let api = agent.client(&agent.admin_key()?);
    let ws = api
        .post(
            "/v1/workstations",
            &json!({"cpu_millis": 100, "memory_bytes": 64 << 20}),
        )
        .await?;
    let id = ws.body["id"].as_str().unwrap_or_default().to_string();
    let proc = api
        .post(
            &format!("/v1/workstations/{id}/processes"),
            &json!({"argv": ["sleep", "600"]}),
        )
        .await?;
    assert_eq!(proc.status, 201);

    info!("--- a follower is connected");
    let response = api
        .http
        .get(format!(
            "{}/v1/workstations/{id}/logs?follow=true",
            api.base_url
        ))
        .bearer_auth(api.key.clone().unwrap_or_default())
        .send()
        .await?;
    assert_eq!(response.status(), 200);
    let reading = tokio::spawn(async move { response.bytes().await.map(|b| b.len()) });

    info!("--- SIGTERM: exit 0 within the grace, and the stream ends");
    assert_eq!(agent.terminate(Duration::from_secs(20))?, Some(0));
    let ended = tokio::time::timeout(Duration::from_secs(10), reading).await;
    assert!(ended.is_ok(), "the log stream did not end");
    Ok(())
}

/// Bounded waits for joins and replication on a shared 2-core machine.
const CLUSTER_WAIT: Duration = Duration::from_secs(60);
/// The agent's fault-injection seam (`agent::worker_mirror::HOLD_FILE_ENV`): while the named
/// file exists, a worker's mirror takes nothing from the leader.
const MIRROR_HOLD_ENV: &str = "SHOAL_TEST_MIRROR_HOLD_FILE";

/// Regression (chaos, acknowledged_writes): a create that the leader committed answered
/// `404 workstation not found` through a node whose state lagged the leader by more than its
/// 2 s read-your-writes wait. The answer now comes from the leader's outcome: 201 for the
/// create, the committed size for a resize, the committed process for an exec, 204 for a
/// delete; never a 4xx for a committed write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_writes_through_a_lagging_node_answer_from_the_leaders_outcome_never_404(
) -> anyhow::Result<()> {
    common::init_tracing();
    let temp = tempfile::tempdir()?;
    let config_text = common::write_config(
        temp.path(),
        "heartbeat_interval_ms = 200\nheartbeat_grace_ms = 3000\n",
    )?;
    let hold = temp.path().join("hold-the-mirror");
    let hold_text = hold.to_string_lossy().to_string();

    info!("--- a server bootstraps; a worker-only node joins (its mirror can be held back)");
    let server = Agent::start(
        &temp.path().join("server"),
        &["--bootstrap", "--config", &config_text],
        common::free_tcp_port(),
    )?;
    let admin_key = server.admin_key()?;
    let server_api = server.client(&admin_key);
    let token = server_api
        .post("/v1/tokens", &json!({"uses": 1, "role": "worker"}))
        .await?;
    assert_eq!(token.status, 201, "{}", token.text);
    let token = token.body["token"].as_str().unwrap_or_default().to_string();
    let worker = Agent::start_with_env(
        &temp.path().join("worker"),
        &[
            "--join",
            &token,
            "--role",
            "worker",
            "--config",
            &config_text,
        ],
        common::free_tcp_port(),
        &[(MIRROR_HOLD_ENV, &hold_text)],
    )?;
    let worker_api = worker.client(&admin_key);

    info!("--- a first workstation, created through the server, is seen by the worker");
    let before = server_api
        .post(
            "/v1/workstations",
            &json!({"cpu_millis": 100, "memory_bytes": 64 << 20}),
        )
        .await?;
    assert_eq!(before.status, 201, "{}", before.text);
    let before_id = before.body["id"].as_str().unwrap_or_default().to_string();
    eventually(CLUSTER_WAIT, || async {
        let answer = worker_api
            .get(&format!("/v1/workstations/{before_id}"))
            .await;
        Ok(answer.ok().filter(|a| a.status == 200).map(|_| ()))
    })
    .await?;

    info!("--- the worker's mirror is held: from now on it lags the leader");
    std::fs::write(&hold, b"held")?;

    info!("--- a create through the lagging worker: 201 with the leader's placement");
    let created = worker_api
        .post(
            "/v1/workstations",
            &json!({"cpu_millis": 100, "memory_bytes": 64 << 20, "name": "lagging"}),
        )
        .await?;
    assert_eq!(created.status, 201, "{}", created.text);
    let created_id = created.body["id"].as_str().unwrap_or_default().to_string();
    assert!(created_id.starts_with("ws-"), "{}", created.text);
    assert_ne!(created_id, before_id);
    assert_eq!(created.body["generation"], json!(1), "{}", created.text);
    assert_eq!(created.body["cpu_millis"], json!(100), "{}", created.text);
    assert_eq!(created.body["name"], json!("lagging"), "{}", created.text);
    let placed_on = created.body["node"].as_str().unwrap_or_default();
    assert!(
        placed_on == server.node_id || placed_on == worker.node_id,
        "{}",
        created.text
    );
    let lagging = worker_api
        .get(&format!("/v1/workstations/{created_id}"))
        .await?;
    assert_eq!(
        lagging.status, 404,
        "the worker must still lag here, else this test proves nothing: {}",
        lagging.text
    );
    let on_server = server_api
        .get(&format!("/v1/workstations/{created_id}"))
        .await?;
    assert_eq!(on_server.status, 200, "{}", on_server.text);
    assert_eq!(
        on_server.body["node"], created.body["node"],
        "{}",
        on_server.text
    );

    info!("--- a resize through the lagging worker answers the committed size");
    let resized = worker_api
        .patch(
            &format!("/v1/workstations/{before_id}"),
            &json!({"cpu_millis": 150}),
        )
        .await?;
    assert_eq!(resized.status, 200, "{}", resized.text);
    assert_eq!(resized.body["cpu_millis"], json!(150), "{}", resized.text);

    info!("--- an exec through the lagging worker answers the committed process");
    let process = worker_api
        .post(
            &format!("/v1/workstations/{before_id}/processes"),
            &json!({"argv": ["sleep", "600"]}),
        )
        .await?;
    assert_eq!(process.status, 201, "{}", process.text);
    // The hosting node carries the exec out (its own applied state is current): the process is
    // `running` there, or `starting` when this worker hosts it and answers from the outcome.
    assert!(
        process.body["state"] == json!("starting") || process.body["state"] == json!("running"),
        "{}",
        process.text
    );

    info!("--- a delete through the lagging worker answers 204");
    let deleted = worker_api
        .delete(&format!("/v1/workstations/{before_id}"))
        .await?;
    assert_eq!(deleted.status, 204, "{}", deleted.text);

    info!("--- the hold ends: the worker catches up with all of it");
    std::fs::remove_file(&hold)?;
    eventually(CLUSTER_WAIT, || async {
        let (Ok(created), Ok(gone)) = (
            worker_api
                .get(&format!("/v1/workstations/{created_id}"))
                .await,
            worker_api
                .get(&format!("/v1/workstations/{before_id}"))
                .await,
        ) else {
            return Ok(None);
        };
        Ok((created.status == 200 && gone.status == 404).then_some(()))
    })
    .await?;
    Ok(())
}

/// The per-tenant workstation quota comes from the bootstrapping node's config file: with
/// `tenant_workstations_max = 2` a tenant's third workstation is refused with 429 naming the
/// limit, another tenant is not affected, and a delete makes room again.
#[tokio::test]
async fn the_tenant_workstation_quota_is_set_at_bootstrap_from_the_config_file(
) -> anyhow::Result<()> {
    common::init_tracing();
    let agent = Agent::bootstrap_with_config("tenant_workstations_max = 2\n")?;
    let admin = agent.client(&agent.admin_key()?);
    let acme = agent.client(&admin.create_tenant_key("acme").await?);
    let other = agent.client(&admin.create_tenant_key("other").await?);
    let small = json!({"cpu_millis": 10, "memory_bytes": 16 << 20});

    info!("--- two workstations fit the quota");
    let mut ids = Vec::new();
    for _ in 0..2 {
        let created = acme.post("/v1/workstations", &small).await?;
        assert_eq!(created.status, 201, "{}", created.text);
        ids.push(created.body["id"].as_str().unwrap_or_default().to_string());
    }

    info!("--- the third is refused with 429 naming the limit; another tenant still creates");
    let refused = acme.post("/v1/workstations", &small).await?;
    assert_eq!(refused.status, 429, "{}", refused.text);
    assert!(
        refused.text.contains("tenant_workstations_max"),
        "{}",
        refused.text
    );
    let theirs = other.post("/v1/workstations", &small).await?;
    assert_eq!(theirs.status, 201, "{}", theirs.text);

    info!("--- a delete makes room");
    let deleted = acme.delete(&format!("/v1/workstations/{}", ids[0])).await?;
    assert_eq!(deleted.status, 204, "{}", deleted.text);
    let again = acme.post("/v1/workstations", &small).await?;
    assert_eq!(again.status, 201, "{}", again.text);
    Ok(())
}
