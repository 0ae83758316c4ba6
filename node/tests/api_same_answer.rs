//! Every node answers the same request the same way: on a 3-node cluster, each request about a
//! workstation's processes, log and size is sent to the node hosting it and to each other
//! node, and all three answer the same status and error code. The hosting node does the work
//! either way ("here, or ask the hosting node" is one decision in the service layer) and its
//! error crosses the mesh intact: before, a signal to an exited process answered 409 on its
//! host and 503 elsewhere, because the host's error crossed as a string.

mod common;

use std::time::Duration;

use common::{eventually, Api};
use serde_json::{json, Value};
use tracing::info;

/// Bounded waits: joins, elections and replication on a shared 2-core machine.
const CLUSTER_WAIT: Duration = Duration::from_secs(60);

/// One request of the table.
struct Case {
    name: &'static str,
    method: reqwest::Method,
    path: String,
    body: Option<Value>,
    /// Whether it uses the other tenant's key.
    as_other_tenant: bool,
    /// The status every node must answer.
    status: u16,
    /// The error code every node must answer (empty for a success).
    code: &'static str,
}

async fn send(api: &Api, case: &Case) -> anyhow::Result<common::Answer> {
    let body = case.body.as_ref().map(serde_json::to_vec).transpose()?;
    api.raw(case.method.clone(), &case.path, body).await
}

async fn process_state(api: &Api, ws: &str, proc: &str) -> anyhow::Result<Option<String>> {
    let answer = api.get(&format!("/v1/workstations/{ws}/processes")).await?;
    Ok(answer.body.as_array().and_then(|processes| {
        processes
            .iter()
            .find(|process| process["id"] == json!(proc))
            .and_then(|process| process["state"].as_str().map(str::to_string))
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_answers_the_same_status_and_code_for_the_same_request() -> anyhow::Result<()> {
    common::init_tracing();
    let temp = tempfile::tempdir()?;
    let cluster = common::start_three_nodes(temp.path(), 10_000, CLUSTER_WAIT).await?;
    let admin = cluster.agents[0].client(&cluster.admin_key);
    let alpha_key = admin.create_tenant_key("alpha").await?;
    let beta_key = admin.create_tenant_key("beta").await?;
    let alpha: Vec<Api> = cluster
        .agents
        .iter()
        .map(|agent| agent.client(&alpha_key))
        .collect();
    let beta: Vec<Api> = cluster
        .agents
        .iter()
        .map(|agent| agent.client(&beta_key))
        .collect();

    info!("--- alpha creates a workstation with a running process and an exited one");
    let created = alpha[0]
        .post(
            "/v1/workstations",
            &json!({"cpu_millis": 100, "memory_bytes": 64 << 20}),
        )
        .await?;
    anyhow::ensure!(created.status == 201, "{}", created.text);
    let ws = created.body["id"].as_str().unwrap_or_default().to_string();
    let host = created.body["node"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let start = |argv: Value| {
        let api = alpha[0].clone();
        let ws = ws.clone();
        async move {
            let answer = api
                .post(
                    &format!("/v1/workstations/{ws}/processes"),
                    &json!({"argv": argv, "restart": "never"}),
                )
                .await?;
            anyhow::ensure!(answer.status == 201, "{}", answer.text);
            Ok::<String, anyhow::Error>(answer.body["id"].as_str().unwrap_or_default().to_string())
        }
    };
    let running = start(json!([
        "sh",
        "-c",
        "trap 'echo usr1' USR1; echo hello; while :; do sleep 1; done"
    ]))
    .await?;
    let exited = start(json!(["true"])).await?;
    eventually(CLUSTER_WAIT, || async {
        let done = process_state(&alpha[0], &ws, &exited).await? == Some("exited".to_string());
        let up = process_state(&alpha[0], &ws, &running).await? == Some("running".to_string());
        Ok((done && up).then_some(()))
    })
    .await?;
    info!(workstation = %ws, host = %host, "--- placed; every request goes to each of the three nodes");

    let unknown = "ws-999999";
    let get = reqwest::Method::GET;
    let post = reqwest::Method::POST;
    let patch = reqwest::Method::PATCH;
    let delete = reqwest::Method::DELETE;
    let case =
        |name, method: &reqwest::Method, path: String, body: Option<Value>, other, status, code| {
            Case {
                name,
                method: method.clone(),
                path,
                body,
                as_other_tenant: other,
                status,
                code,
            }
        };
    let procs = format!("/v1/workstations/{ws}/processes");
    let cases = vec![
        case("list processes", &get, procs.clone(), None, false, 200, ""),
        case(
            "read the log",
            &get,
            format!("/v1/workstations/{ws}/logs?from=0"),
            None,
            false,
            200,
            "",
        ),
        case(
            "signal a running process",
            &delete,
            format!("{procs}/{running}?signal=USR1"),
            None,
            false,
            204,
            "",
        ),
        case(
            "signal an exited process",
            &delete,
            format!("{procs}/{exited}?signal=USR1"),
            None,
            false,
            409,
            "conflict",
        ),
        case(
            "signal an unknown process",
            &delete,
            format!("{procs}/4242?signal=USR1"),
            None,
            false,
            404,
            "not_found",
        ),
        case(
            "exec",
            &post,
            procs.clone(),
            Some(json!({"argv": ["true"], "restart": "never"})),
            false,
            201,
            "",
        ),
        case(
            "exec an unknown program",
            &post,
            procs.clone(),
            Some(json!({"argv": ["no-such-program-shoal-test"]})),
            false,
            400,
            "invalid_input",
        ),
        case(
            "resize",
            &patch,
            format!("/v1/workstations/{ws}"),
            Some(json!({"cpu_millis": 100})),
            false,
            200,
            "",
        ),
        case(
            "resize to nothing",
            &patch,
            format!("/v1/workstations/{ws}"),
            Some(json!({"cpu_millis": 0})),
            false,
            400,
            "invalid_input",
        ),
        case(
            "list an unknown workstation's processes",
            &get,
            format!("/v1/workstations/{unknown}/processes"),
            None,
            false,
            404,
            "not_found",
        ),
        case(
            "read an unknown workstation's log",
            &get,
            format!("/v1/workstations/{unknown}/logs"),
            None,
            false,
            404,
            "not_found",
        ),
        case(
            "signal in an unknown workstation",
            &delete,
            format!("/v1/workstations/{unknown}/processes/0"),
            None,
            false,
            404,
            "not_found",
        ),
        case(
            "exec in an unknown workstation",
            &post,
            format!("/v1/workstations/{unknown}/processes"),
            Some(json!({"argv": ["true"]})),
            false,
            404,
            "not_found",
        ),
        case(
            "resize an unknown workstation",
            &patch,
            format!("/v1/workstations/{unknown}"),
            Some(json!({"cpu_millis": 100})),
            false,
            404,
            "not_found",
        ),
        case(
            "delete an unknown workstation",
            &delete,
            format!("/v1/workstations/{unknown}"),
            None,
            false,
            404,
            "not_found",
        ),
        case(
            "another tenant lists processes",
            &get,
            procs.clone(),
            None,
            true,
            404,
            "not_found",
        ),
        case(
            "another tenant reads the log",
            &get,
            format!("/v1/workstations/{ws}/logs"),
            None,
            true,
            404,
            "not_found",
        ),
        case(
            "another tenant signals",
            &delete,
            format!("{procs}/{running}?signal=KILL"),
            None,
            true,
            404,
            "not_found",
        ),
        case(
            "another tenant execs",
            &post,
            procs.clone(),
            Some(json!({"argv": ["true"]})),
            true,
            404,
            "not_found",
        ),
        case(
            "another tenant resizes",
            &patch,
            format!("/v1/workstations/{ws}"),
            Some(json!({"cpu_millis": 100})),
            true,
            404,
            "not_found",
        ),
        case(
            "another tenant deletes",
            &delete,
            format!("/v1/workstations/{ws}"),
            None,
            true,
            404,
            "not_found",
        ),
    ];
    let mut mismatches = Vec::new();
    for case in &cases {
        for (index, agent) in cluster.agents.iter().enumerate() {
            let api = if case.as_other_tenant {
                &beta[index]
            } else {
                &alpha[index]
            };
            let answer = send(api, case).await?;
            let role = if agent.node_id == host {
                "host"
            } else {
                "other"
            };
            info!(case = case.name, node = %agent.node_id, role, status = answer.status, code = answer.error_code(), "answer");
            if answer.status != case.status || answer.error_code() != case.code {
                mismatches.push(format!(
                    "{} on {} ({role}): {} {} (expected {} {:?}): {}",
                    case.name,
                    agent.node_id,
                    answer.status,
                    answer.error_code(),
                    case.status,
                    case.code,
                    answer.text
                ));
            }
        }
    }

    info!("--- delete: each node deletes a workstation of its own creation");
    for api in &alpha {
        let created = api
            .post(
                "/v1/workstations",
                &json!({"cpu_millis": 10, "memory_bytes": 8 << 20}),
            )
            .await?;
        anyhow::ensure!(created.status == 201, "{}", created.text);
        let id = created.body["id"].as_str().unwrap_or_default();
        let deleted = api.delete(&format!("/v1/workstations/{id}")).await?;
        if deleted.status != 204 {
            mismatches.push(format!("delete via {}: {}", api.base_url, deleted.text));
        }
    }
    assert!(
        mismatches.is_empty(),
        "nodes answered differently:\n{}",
        mismatches.join("\n")
    );
    Ok(())
}
