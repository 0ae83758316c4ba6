//! A `pending` workstation (its node was lost and no ready worker has room for it) with real
//! `shoal agent` processes on loopback: the API says why it is pending, lists its processes
//! as its next host will start them, answers a clear 503 for what needs a host, and the
//! workstation runs again once a resize makes it fit. SPEC, Lifecycle, Node lost: on the new
//! host the `always` and `on-failure` processes run again, the `never` one is `exited` with
//! reason `node_lost`, and a process its owner stopped with TERM before the node was lost stays
//! `exited` with reason `killed` (the stop is in Raft, not only on the lost node).
//!
//! SPEC refuses a create that fits no node now (503), so a workstation becomes pending here
//! the way it does in a cluster: a server+worker node is filled but for 100 millicores, a
//! worker-only node hosts a workstation of 500 millicores, and that worker is killed.

// Test code: a panic is the failure report (the workspace denies unwrap/expect elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{eventually, Agent, Api};
use serde_json::{json, Value};
use tracing::info;

/// Bounded waits: joins, failure detection and placement on a shared 2-core machine.
const CLUSTER_WAIT: Duration = Duration::from_secs(60);
/// What the server+worker node keeps free beside its filler workstation.
const SERVER_FREE_CPU_MILLIS: u64 = 100;
/// The pending workstation's reservation: more than the server node has free.
const WS_CPU_MILLIS: u64 = 500;
const WS_MEMORY_BYTES: u64 = 64 << 20;

fn node_named<'a>(nodes: &'a Value, id: &str) -> Option<&'a Value> {
    nodes.as_array()?.iter().find(|node| node["id"] == id)
}

/// The workstation as `api` answers it, if it does.
async fn workstation(api: &Api, id: &str) -> Option<Value> {
    match api.get(&format!("/v1/workstations/{id}")).await {
        Ok(answer) if answer.status == 200 => Some(answer.body),
        _ => None,
    }
}

/// The process `proc` in a process list.
fn process_in<'a>(processes: &'a Value, proc: &str) -> Option<&'a Value> {
    processes
        .as_array()?
        .iter()
        .find(|process| process["id"] == proc)
}

/// Waits until the processes of workstation `id` are exactly `expected`: each process id with
/// its state and, for the ones that are not `running`, the reason; returns the list. On a
/// timeout the error shows the last list seen.
async fn processes_become(
    api: &Api,
    id: &str,
    expected: &[(&str, &str, Option<&str>)],
) -> anyhow::Result<Value> {
    let last_seen = std::sync::Mutex::new(String::new());
    let found = eventually(CLUSTER_WAIT, || async {
        let Ok(answer) = api.get(&format!("/v1/workstations/{id}/processes")).await else {
            return Ok(None);
        };
        if let Ok(mut last) = last_seen.lock() {
            last.clone_from(&answer.text);
        }
        let matches = answer.status == 200
            && answer.body.as_array().map(Vec::len) == Some(expected.len())
            && expected.iter().all(|(proc, state, reason)| {
                process_in(&answer.body, proc).is_some_and(|process| {
                    process["state"] == *state
                        && reason.is_none_or(|reason| process["reason"] == reason)
                })
            });
        Ok(matches.then_some(answer.body))
    })
    .await;
    found.map_err(|err| {
        let last = last_seen
            .lock()
            .map(|last| last.clone())
            .unwrap_or_default();
        err.context(format!("expected {expected:?}, last seen {last}"))
    })
}

/// Starts a process in workstation `ws_id`; the answer must be 201.
async fn exec(
    api: &common::Api,
    ws_id: &str,
    argv: serde_json::Value,
    restart: &str,
) -> anyhow::Result<common::Answer> {
    let answer = api
        .post(
            &format!("/v1/workstations/{ws_id}/processes"),
            &json!({"argv": argv, "restart": restart}),
        )
        .await?;
    anyhow::ensure!(
        answer.status == 201,
        "exec answered {}: {}",
        answer.status,
        answer.text
    );
    Ok(answer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workstation_that_lost_its_node_and_fits_nowhere_says_why_lists_its_processes_and_runs_after_a_resize(
) -> anyhow::Result<()> {
    common::init_tracing();
    let temp = tempfile::tempdir()?;
    let config_text = common::write_config(
        temp.path(),
        "heartbeat_interval_ms = 200\nheartbeat_grace_ms = 3000\nnode_reserve_cpu_millis = 0\n",
    )?;

    info!("--- a server+worker node bootstraps and commits its capacity");
    let server = Agent::start(
        &temp.path().join("server"),
        &["--bootstrap", "--config", &config_text],
        common::free_tcp_port(),
    )?;
    let admin_key = server.admin_key()?;
    let api = server.client(&admin_key);
    let server_cpu_millis = eventually(CLUSTER_WAIT, || async {
        let Ok(answer) = api.get("/v1/nodes").await else {
            return Ok(None);
        };
        Ok(node_named(&answer.body, &server.node_id)
            .and_then(|node| node["capacity"]["cpu_millis"].as_u64())
            .filter(|cpu| *cpu > SERVER_FREE_CPU_MILLIS))
    })
    .await?;

    info!(
        server_cpu_millis,
        "--- a filler workstation leaves the server node 100 millicores free"
    );
    let filler = api
        .post(
            "/v1/workstations",
            &json!({"cpu_millis": server_cpu_millis - SERVER_FREE_CPU_MILLIS,
                    "memory_bytes": 16 << 20}),
        )
        .await?;
    assert_eq!(filler.status, 201, "{}", filler.text);
    assert_eq!(
        filler.body["node"],
        json!(server.node_id),
        "{}",
        filler.text
    );

    info!("--- the OpenAPI document has the added optional field");
    let doc = api.get("/v1/openapi.json").await?;
    assert_eq!(doc.status, 200, "{}", doc.text);
    let field = &doc.body["components"]["schemas"]["Workstation"]["properties"]["pending_reason"];
    assert!(
        field.is_object(),
        "{}",
        doc.body["components"]["schemas"]["Workstation"]
    );
    let required = &doc.body["components"]["schemas"]["Workstation"]["required"];
    assert!(
        !required
            .as_array()
            .is_some_and(|names| names.contains(&json!("pending_reason"))),
        "{required}"
    );

    info!("--- a worker-only node joins and is ready");
    let token = api
        .post("/v1/tokens", &json!({"uses": 1, "role": "worker"}))
        .await?;
    assert_eq!(token.status, 201, "{}", token.text);
    let token = token.body["token"].as_str().unwrap_or_default().to_string();
    let mut worker = Agent::start(
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
    )?;
    eventually(CLUSTER_WAIT, || async {
        let Ok(answer) = api.get("/v1/nodes").await else {
            return Ok(None);
        };
        let ready = node_named(&answer.body, &worker.node_id).is_some_and(|node| {
            node["state"] == "ready"
                && node["capacity"]["cpu_millis"].as_u64().unwrap_or(0) >= WS_CPU_MILLIS
        });
        Ok(ready.then_some(()))
    })
    .await?;

    info!(
        "--- a workstation of 500 millicores can only go to the worker; three processes run there"
    );
    let ws = api
        .post(
            "/v1/workstations",
            &json!({"cpu_millis": WS_CPU_MILLIS, "memory_bytes": WS_MEMORY_BYTES}),
        )
        .await?;
    assert_eq!(ws.status, 201, "{}", ws.text);
    assert_eq!(ws.body["node"], json!(worker.node_id), "{}", ws.text);
    let ws_id = ws.body["id"].as_str().unwrap_or_default().to_string();
    let mut ids = Vec::new();
    for (argv, restart) in [
        (json!(["sleep", "600"]), "always"),
        (
            json!(["sh", "-c", "echo pending-test-output; exec sleep 600"]),
            "never",
        ),
        (json!(["sleep", "60203"]), "always"),
    ] {
        let proc = exec(&api, &ws_id, argv, restart).await?;
        ids.push(proc.body["id"].as_str().unwrap_or_default().to_string());
    }
    let (always, never, stopped) = (ids[0].clone(), ids[1].clone(), ids[2].clone());
    processes_become(
        &api,
        &ws_id,
        &[
            (&always, "running", None),
            (&never, "running", None),
            (&stopped, "running", None),
        ],
    )
    .await?;

    info!("--- TERM stops the third (`always`) process on the worker: exited, killed");
    let term = api
        .delete(&format!("/v1/workstations/{ws_id}/processes/{stopped}"))
        .await?;
    assert_eq!(term.status, 204, "{}", term.text);
    let processes = api
        .get(&format!("/v1/workstations/{ws_id}/processes"))
        .await?;
    let killed = process_in(&processes.body, &stopped)
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        (&killed["state"], &killed["reason"]),
        (&json!("exited"), &json!("killed")),
        "{}",
        processes.text
    );

    info!("--- the worker is killed: after the grace the workstation has no node and is pending");
    worker.kill9();
    let pending = eventually(CLUSTER_WAIT, || async {
        Ok(workstation(&api, &ws_id)
            .await
            .filter(|ws| ws["state"] == "pending" && ws["node"].is_null()))
    })
    .await?;
    info!(%pending, "--- pending, with its reason");
    let reason = pending["pending_reason"].as_str().unwrap_or_default();
    let expected = format!(
        "no ready worker node has {WS_CPU_MILLIS} millicores and 64 MiB free (closest: {} with \
         {SERVER_FREE_CPU_MILLIS} millicores and ",
        server.node_id
    );
    assert!(reason.starts_with(&expected), "{pending}");
    assert_eq!(pending["generation"], 2, "{pending}");
    let listed = api.get("/v1/workstations").await?;
    let in_list = listed
        .body
        .as_array()
        .and_then(|all| all.iter().find(|ws| ws["id"] == json!(ws_id)))
        .cloned()
        .unwrap_or_default();
    assert_eq!(in_list["pending_reason"], json!(reason), "{}", listed.text);
    assert!(
        filler.body.get("pending_reason").is_none(),
        "{}",
        filler.text
    );

    info!(
        "--- its processes answer 200 as the next host treats them: the `always` one starting, \
         the `never` one exited with node_lost, the stopped one exited with killed"
    );
    let processes = api
        .get(&format!("/v1/workstations/{ws_id}/processes"))
        .await?;
    assert_eq!(processes.status, 200, "{}", processes.text);
    assert_eq!(
        processes.body.as_array().map(Vec::len),
        Some(3),
        "{}",
        processes.text
    );
    for (proc, state, reason) in [
        (&always, "starting", "workstation_pending"),
        (&never, "exited", "node_lost"),
        (&stopped, "exited", "killed"),
    ] {
        let process = process_in(&processes.body, proc)
            .cloned()
            .unwrap_or_default();
        assert_eq!(
            (&process["state"], &process["reason"]),
            (&json!(state), &json!(reason)),
            "{proc}: {}",
            processes.text
        );
    }

    info!("--- a stop needs no host (it is committed in Raft): TERM again answers 204");
    let term_again = api
        .delete(&format!("/v1/workstations/{ws_id}/processes/{stopped}"))
        .await?;
    assert_eq!(term_again.status, 204, "{}", term_again.text);

    info!("--- its log and a signal that does not stop need a host: 503 with Retry-After, naming it and why");
    let logs = api
        .get(&format!("/v1/workstations/{ws_id}/logs?from=0"))
        .await?;
    let kill = api
        .delete(&format!(
            "/v1/workstations/{ws_id}/processes/{always}?signal=HUP"
        ))
        .await?;
    info!(logs = %logs.text, "--- the log's answer");
    for answer in [&logs, &kill] {
        assert_eq!(answer.status, 503, "{}", answer.text);
        assert!(answer.retry_after.is_some(), "{answer:?}");
        assert_eq!(answer.error_code(), "unavailable", "{}", answer.text);
        let message = answer.body["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(&format!("workstation `{ws_id}` is pending: {reason}")),
            "{}",
            answer.text
        );
    }

    info!(
        "--- processes started while it is pending (`on-failure` and `never`) are committed: \
         201, `starting`, pending; the next placement starts both"
    );
    let mut added_ids = Vec::new();
    for (argv, restart) in [
        (json!(["sleep", "601"]), "on-failure"),
        (json!(["sleep", "603"]), "never"),
    ] {
        let added = exec(&api, &ws_id, argv, restart).await?;
        assert_eq!(added.body["state"], "starting", "{}", added.text);
        assert_eq!(
            added.body["reason"], "workstation_pending",
            "{}",
            added.text
        );
        added_ids.push(added.body["id"].as_str().unwrap_or_default().to_string());
    }
    let (on_failure, never_added) = (added_ids[0].clone(), added_ids[1].clone());
    let processes = api
        .get(&format!("/v1/workstations/{ws_id}/processes"))
        .await?;
    assert_eq!(processes.status, 200, "{}", processes.text);
    assert_eq!(
        processes.body.as_array().map(Vec::len),
        Some(5),
        "{}",
        processes.text
    );

    info!("--- a resize to 50 millicores makes it fit the server node: it runs there again");
    let resized = api
        .patch(
            &format!("/v1/workstations/{ws_id}"),
            &json!({"cpu_millis": 50}),
        )
        .await?;
    assert_eq!(resized.status, 200, "{}", resized.text);
    let running = eventually(CLUSTER_WAIT, || async {
        Ok(workstation(&api, &ws_id)
            .await
            .filter(|ws| ws["state"] == "running"))
    })
    .await?;
    assert_eq!(running["node"], json!(server.node_id), "{running}");
    assert!(running.get("pending_reason").is_none(), "{running}");
    info!(
        "--- on the new host the `always` and `on-failure` processes and the `never` one added \
         while pending run; the `never` one from the lost node is exited with node_lost, the \
         stopped one with killed"
    );
    let processes = processes_become(
        &api,
        &ws_id,
        &[
            (&always, "running", None),
            (&never, "exited", Some("node_lost")),
            (&stopped, "exited", Some("killed")),
            (&on_failure, "running", None),
            (&never_added, "running", None),
        ],
    )
    .await?;
    info!(%processes, "--- the new host runs exactly what the pending list said it would");
    assert_eq!(
        common::count_processes_with_argv(&["sleep", "60203"]),
        0,
        "the process stopped before the node was lost is not running anywhere"
    );
    let logs = api
        .get(&format!("/v1/workstations/{ws_id}/logs?from=0"))
        .await?;
    assert_eq!(logs.status, 200, "{}", logs.text);
    assert!(
        !logs.text.contains("pending-test-output"),
        "the `never` process did not run again on the new host: {}",
        logs.text
    );
    Ok(())
}
