//! The agent's life: graceful SIGTERM, a restart on the same data dir is the same node with the
//! same cluster, keys and workstations, and the system endpoints (`/v1/openapi.json`,
//! `/metrics`, `/readyz`).

// Test code: a panic is the failure report (the workspace denies unwrap/expect elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{eventually, Agent};
use serde_json::json;
use tracing::info;

#[tokio::test]
async fn sigterm_stops_cleanly_and_a_restart_on_the_same_data_dir_is_the_same_node(
) -> anyhow::Result<()> {
    common::init_tracing();
    let mut agent = Agent::bootstrap()?;
    let admin_key = agent.admin_key()?;
    let api = agent.client(&admin_key);
    let cluster_before = api.get("/v1/cluster").await?.body;

    info!("--- a workstation with an `always` process and a `never` process");
    let ws = api
        .post(
            "/v1/workstations",
            &json!({"cpu_millis": 100, "memory_bytes": 64 << 20, "name": "keep"}),
        )
        .await?;
    assert_eq!(ws.status, 201);
    let ws_id = ws.body["id"].as_str().unwrap_or_default().to_string();
    // A sleep with an argument no other test uses, so that it can be found in /proc.
    let sleeper = ["sleep", "6007"];
    let always = api
        .post(
            &format!("/v1/workstations/{ws_id}/processes"),
            &json!({"argv": ["sh", "-c", "echo up; exec sleep 6007"], "restart": "always"}),
        )
        .await?;
    assert_eq!(always.status, 201, "{}", always.text);
    let never = api
        .post(
            &format!("/v1/workstations/{ws_id}/processes"),
            &json!({"argv": ["sleep", "600"]}),
        )
        .await?;
    assert_eq!(never.status, 201);
    let logs_before = eventually(Duration::from_secs(10), || {
        let api = api.clone();
        let ws_id = ws_id.clone();
        async move {
            let page = api.get(&format!("/v1/workstations/{ws_id}/logs")).await?;
            let running = common::count_processes_with_argv(&sleeper) == 1;
            Ok((running && page.body["next"].as_u64().unwrap_or(0) > 0).then_some(page.body))
        }
    })
    .await?;

    info!("--- SIGTERM: exit code 0, the processes are gone");
    let code = agent.terminate(Duration::from_secs(20))?;
    assert_eq!(code, Some(0));
    assert_eq!(
        common::count_processes_with_argv(&sleeper),
        0,
        "the workstation's process outlived the agent"
    );

    info!("--- restart on the same data dir, without --bootstrap");
    let data_dir = agent.data_dir.clone();
    let again = Agent::start(&data_dir, &[], agent.api_port)?;
    assert_eq!(again.node_id, agent.node_id);
    let api = again.client(&admin_key);
    let cluster_after = api.get("/v1/cluster").await?;
    assert_eq!(cluster_after.status, 200, "the admin key still works");
    assert_eq!(
        cluster_after.body["cluster_id"],
        cluster_before["cluster_id"]
    );

    info!("--- the workstation is back; `always` restarted, `never` reported exited");
    let processes = eventually(Duration::from_secs(10), || {
        let api = api.clone();
        let ws_id = ws_id.clone();
        async move {
            let answer = api
                .get(&format!("/v1/workstations/{ws_id}/processes"))
                .await?;
            let running = answer.body[0]["state"] == json!("running");
            Ok(running.then_some(answer.body))
        }
    })
    .await?;
    assert_eq!(processes[1]["state"], json!("exited"));
    let ws = api.get(&format!("/v1/workstations/{ws_id}")).await?;
    assert_eq!(ws.body["name"], json!("keep"));
    assert_eq!(ws.body["state"], json!("running"));

    info!("--- log offsets did not go back: an old offset is reported dropped");
    let old_next = logs_before["next"].as_u64().unwrap_or(0);
    let page = eventually(Duration::from_secs(10), || {
        let api = api.clone();
        let ws_id = ws_id.clone();
        async move {
            let page = api
                .get(&format!("/v1/workstations/{ws_id}/logs?from={old_next}"))
                .await?;
            let has_records = page.body["records"]
                .as_array()
                .is_some_and(|r| !r.is_empty());
            Ok(has_records.then_some(page.body))
        }
    })
    .await?;
    let first_new = page["records"][0]["offset"].as_u64().unwrap_or(0);
    assert!(first_new > old_next);
    assert_eq!(page["dropped"].as_u64(), Some(first_new - old_next));
    assert_eq!(page["records"][0]["data"], json!("up\n"));
    Ok(())
}

#[tokio::test]
async fn system_endpoints_openapi_metrics_and_readiness_answer() -> anyhow::Result<()> {
    common::init_tracing();
    let agent = Agent::bootstrap()?;
    let api = agent.client(&agent.admin_key()?);
    let anonymous = api.anonymous();

    info!("--- /readyz and /healthz need no key");
    assert_eq!(anonymous.get("/healthz").await?.status, 200);
    assert_eq!(anonymous.get("/readyz").await?.status, 200);

    info!("--- the OpenAPI document lists every endpoint of SPEC.md");
    let doc = api.get("/v1/openapi.json").await?;
    assert_eq!(doc.status, 200);
    let paths = doc.body["paths"].as_object().cloned().unwrap_or_default();
    for path in [
        "/v1/cluster",
        "/v1/nodes",
        "/v1/nodes/{id}",
        "/v1/nodes/{id}/drain",
        "/v1/tokens",
        "/v1/tokens/{id}",
        "/v1/workstations",
        "/v1/workstations/{id}",
        "/v1/workstations/{id}/processes",
        "/v1/workstations/{id}/processes/{pid}",
        "/v1/workstations/{id}/logs",
        "/v1/runs",
        "/v1/languages",
        "/v1/keys",
        "/v1/keys/{id}",
        "/v1/audit",
        "/healthz",
        "/readyz",
        "/metrics",
    ] {
        assert!(paths.contains_key(path), "openapi lacks {path}");
    }
    assert!(doc.body["components"]["schemas"]["RunResult"].is_object());

    info!("--- /metrics is Prometheus text with the pool, the nodes and request latencies");
    let _ = api.post("/v1/runs", &json!({"argv": ["true"]})).await?;
    let metrics = anonymous.get("/metrics").await?;
    assert_eq!(metrics.status, 200);
    for series in [
        "shoal_nodes{state=\"ready\"} 1",
        "shoal_pool_cpu_millis{kind=\"capacity\"}",
        "shoal_http_request_duration_seconds_count",
        "shoal_runs_total{verdict=\"ok\"} 1",
        "shoal_workstations",
        "shoal_log_bytes_dropped",
    ] {
        assert!(metrics.text.contains(series), "metrics lack {series}");
    }

    info!("--- the pool and the node are visible");
    let nodes = api.get("/v1/nodes").await?;
    assert_eq!(nodes.body[0]["id"], json!(agent.node_id));
    assert_eq!(nodes.body[0]["state"], json!("ready"));
    assert!(
        nodes.body[0]["capacity"]["cpu_millis"]
            .as_u64()
            .unwrap_or(0)
            > 0
    );
    let cluster = api.get("/v1/cluster").await?;
    assert_eq!(cluster.body["leader"], json!(agent.node_id));
    Ok(())
}
