//! Bad input and tenant isolation against a real agent: SPEC.md's status and JSON error body
//! for every case, and nothing changes.

// Test code: a panic is the failure report (the workspace denies unwrap/expect elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Agent, Answer, Api};
use reqwest::Method;
use serde_json::{json, Value};
use tracing::info;

/// What a tenant and the admin can observe of the cluster's state: workstations, keys, and
/// the audit entries of changes that succeeded (a refused attempt that reached the state
/// machine is recorded with its refusal as the outcome: that is a record, not a change).
async fn snapshot(admin: &Api) -> anyhow::Result<(Value, Value, Value)> {
    let mut workstations = admin.get("/v1/workstations").await?.body;
    // Live usage comes from heartbeats and moves on its own: it is observed, not state.
    for ws in workstations.as_array_mut().into_iter().flatten() {
        if let Some(fields) = ws.as_object_mut() {
            fields.remove("used");
        }
    }
    let keys = admin.get("/v1/keys").await?.body;
    let audit = admin.get("/v1/audit").await?.body;
    let changes: Vec<Value> = audit
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .filter(|entry| entry["outcome"] == json!("ok"))
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    Ok((workstations, keys, Value::Array(changes)))
}

fn check(case: &str, answer: &Answer, status: u16, code: &str, mentions: &str) {
    assert_eq!(answer.status, status, "{case}: {}", answer.text);
    assert_eq!(answer.error_code(), code, "{case}: {}", answer.text);
    assert!(
        answer
            .content_type
            .as_deref()
            .is_some_and(|t| t.starts_with("application/json")),
        "{case}: content type {:?}",
        answer.content_type
    );
    let message = answer.body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(mentions),
        "{case}: message `{message}` lacks `{mentions}`"
    );
}

#[tokio::test]
async fn bad_inputs_get_the_spec_status_and_error_body_and_change_nothing() -> anyhow::Result<()> {
    common::init_tracing();
    let agent = Agent::bootstrap()?;
    let admin = agent.client(&agent.admin_key()?);
    let ws = admin
        .post(
            "/v1/workstations",
            &json!({"cpu_millis": 100, "memory_bytes": 64 << 20}),
        )
        .await?;
    assert_eq!(ws.status, 201);
    let ws_id = ws.body["id"].as_str().unwrap_or_default().to_string();
    let before = snapshot(&admin).await?;

    let raw = |method: Method, path: &str, body: &str| {
        let admin = admin.clone();
        let path = path.to_string();
        let body = body.as_bytes().to_vec();
        async move { admin.raw(method, &path, Some(body)).await }
    };

    info!("--- malformed and mistyped JSON: 400 naming the field");
    let cases: Vec<(&str, &str, &str)> = vec![
        ("truncated JSON", "{\"cpu_millis\": 100, ", "malformed JSON"),
        ("not JSON", "hello", "malformed JSON"),
        ("empty body", "", "JSON body"),
        (
            "string for a number",
            r#"{"cpu_millis": "lots", "memory_bytes": 67108864}"#,
            "cpu_millis",
        ),
        (
            "negative memory",
            r#"{"cpu_millis": 100, "memory_bytes": -1}"#,
            "memory_bytes",
        ),
        (
            "fractional cpu",
            r#"{"cpu_millis": 0.5, "memory_bytes": 67108864}"#,
            "cpu_millis",
        ),
        (
            "zero cpu",
            r#"{"cpu_millis": 0, "memory_bytes": 67108864}"#,
            "cpu_millis",
        ),
        (
            "unknown field",
            r#"{"cpu_millis": 1, "memory_bytes": 67108864, "gpu": 1}"#,
            "gpu",
        ),
        (
            "missing field",
            r#"{"memory_bytes": 67108864}"#,
            "cpu_millis",
        ),
        (
            "limit below reservation",
            r#"{"cpu_millis": 100, "memory_bytes": 67108864, "cpu_limit_millis": 50}"#,
            "cpu_limit_millis",
        ),
        (
            "unknown network",
            r#"{"cpu_millis": 100, "memory_bytes": 67108864, "network": "moon"}"#,
            "network",
        ),
        (
            "absurd memory",
            r#"{"cpu_millis": 100, "memory_bytes": 18446744073709551615}"#,
            "memory_bytes",
        ),
    ];
    for (case, body, mentions) in cases {
        let answer = raw(Method::POST, "/v1/workstations", body).await?;
        check(case, &answer, 400, "invalid_input", mentions);
    }

    info!("--- larger than any node: 422");
    let answer = admin
        .post(
            "/v1/workstations",
            &json!({"cpu_millis": 100_000_000, "memory_bytes": 64 << 20}),
        )
        .await?;
    check(
        "cpu beyond every node",
        &answer,
        422,
        "unsatisfiable",
        "larger than any node",
    );

    info!("--- process and run inputs");
    let answer = raw(
        Method::POST,
        &format!("/v1/workstations/{ws_id}/processes"),
        r#"{"argv": []}"#,
    )
    .await?;
    check("empty argv", &answer, 400, "invalid_input", "argv");
    let answer = raw(
        Method::POST,
        &format!("/v1/workstations/{ws_id}/processes"),
        r#"{"argv": ["/no/such/program"]}"#,
    )
    .await?;
    check("unstartable program", &answer, 400, "invalid_input", "argv");
    let answer = raw(
        Method::POST,
        &format!("/v1/workstations/{ws_id}/processes"),
        r#"{"argv": ["true"], "restart": "sometimes"}"#,
    )
    .await?;
    check(
        "unknown restart policy",
        &answer,
        400,
        "invalid_input",
        "restart",
    );
    let code = "x".repeat(65 * 1024);
    let answer = admin
        .post("/v1/runs", &json!({"language": "sh", "code": code}))
        .await?;
    check("65 KiB of code", &answer, 413, "too_large", "code");
    let answer = admin
        .post("/v1/runs", &json!({"argv": ["true"], "timeout_ms": 60_001}))
        .await?;
    check(
        "timeout above 60 s",
        &answer,
        400,
        "invalid_input",
        "timeout_ms",
    );
    let answer = admin
        .post("/v1/runs", &json!({"language": "cobol-66", "code": "x"}))
        .await?;
    check(
        "unknown language",
        &answer,
        400,
        "invalid_input",
        "language",
    );
    let big = format!(
        "{{\"argv\": [\"true\"], \"stdin\": \"{}\"}}",
        "y".repeat(300 * 1024)
    );
    let answer = raw(Method::POST, "/v1/runs", &big).await?;
    check("oversized body", &answer, 413, "too_large", "bytes");

    info!("--- unknown ids: 404");
    for (method, path) in [
        (Method::GET, "/v1/workstations/ws-nope".to_string()),
        (Method::DELETE, "/v1/workstations/ws-nope".to_string()),
        (Method::GET, "/v1/workstations/ws-nope/logs".to_string()),
        (
            Method::GET,
            "/v1/workstations/ws-nope/processes".to_string(),
        ),
        (
            Method::DELETE,
            format!("/v1/workstations/{ws_id}/processes/999"),
        ),
        (
            Method::DELETE,
            format!("/v1/workstations/{ws_id}/processes/not-a-number"),
        ),
        (Method::GET, "/v1/nodes/n-nope".to_string()),
        (Method::DELETE, "/v1/keys/key-nope".to_string()),
        (Method::DELETE, "/v1/tokens/tok-nope".to_string()),
        (Method::GET, "/v1/no/such/endpoint".to_string()),
    ] {
        let answer = admin.raw(method.clone(), &path, None).await?;
        check(&format!("{method} {path}"), &answer, 404, "not_found", "");
    }
    let answer = admin
        .get(&format!("/v1/workstations/{ws_id}/logs?from=abc"))
        .await?;
    check("non-numeric from", &answer, 400, "invalid_input", "query");
    let answer = admin
        .raw(
            Method::DELETE,
            &format!("/v1/workstations/{ws_id}/processes/1?signal=BOGUS"),
            None,
        )
        .await?;
    assert!(
        answer.status == 404 || answer.status == 400,
        "{}",
        answer.text
    );

    info!("--- missing or wrong key: 401, before the body is even looked at");
    let answer = admin
        .anonymous()
        .raw(Method::POST, "/v1/workstations", Some(b"{garbage".to_vec()))
        .await?;
    check("no key", &answer, 401, "unauthorized", "Authorization");
    let answer = admin
        .with_key("shoal_wrong")
        .get("/v1/workstations")
        .await?;
    check("wrong key", &answer, 401, "unauthorized", "API key");
    let answer = admin.with_key(&"k".repeat(5000)).get("/v1/cluster").await?;
    check("absurd key", &answer, 401, "unauthorized", "API key");

    info!("--- nothing changed; the refused attempts that reached Raft are on record");
    assert_eq!(snapshot(&admin).await?, before);
    let audit = admin.get("/v1/audit").await?.body;
    assert!(
        audit
            .as_array()
            .is_some_and(|entries| entries.iter().any(|entry| {
                entry["action"] == json!("workstation.create")
                    && entry["outcome"] == json!("unsatisfiable")
            })),
        "{audit}"
    );
    info!("--- a bad audit query is a 400 naming the field");
    let answer = admin.get("/v1/audit?limit=0").await?;
    check("audit limit 0", &answer, 400, "invalid_input", "limit");
    let answer = admin.get("/v1/audit?since_unix_ms=soon").await?;
    check(
        "audit since text",
        &answer,
        400,
        "invalid_input",
        "since_unix_ms",
    );
    let health = admin.anonymous().get("/healthz").await?;
    assert_eq!(health.status, 200);
    Ok(())
}

#[tokio::test]
async fn a_tenant_cannot_see_or_touch_another_tenants_workstations_processes_runs_or_logs(
) -> anyhow::Result<()> {
    common::init_tracing();
    let agent = Agent::bootstrap()?;
    let admin = agent.client(&agent.admin_key()?);
    let alice = admin.with_key(&admin.create_tenant_key("alice").await?);
    let bob = admin.with_key(&admin.create_tenant_key("bob").await?);

    info!("--- alice creates a workstation with a process");
    let ws = alice
        .post(
            "/v1/workstations",
            &json!({"cpu_millis": 100, "memory_bytes": 64 << 20}),
        )
        .await?;
    assert_eq!(ws.status, 201, "{}", ws.text);
    let ws_id = ws.body["id"].as_str().unwrap_or_default().to_string();
    let proc = alice
        .post(
            &format!("/v1/workstations/{ws_id}/processes"),
            &json!({"argv": ["sleep", "30"]}),
        )
        .await?;
    assert_eq!(proc.status, 201, "{}", proc.text);

    info!("--- a tenant sees the pool totals, never the nodes' addresses and capacities");
    let cluster = bob.get("/v1/cluster").await?;
    assert_eq!(cluster.status, 200, "{}", cluster.text);
    assert!(cluster.body["pool"]["cpu_millis"]["capacity"].as_u64() > Some(0));
    for path in [
        "/v1/nodes".to_string(),
        format!("/v1/nodes/{}", agent.node_id),
    ] {
        let answer = bob.get(&path).await?;
        assert_eq!(answer.status, 403, "{path}: {}", answer.text);
        assert_eq!(answer.error_code(), "forbidden");
        assert!(
            !answer.text.contains("127.0.0.1"),
            "{path}: {}",
            answer.text
        );
    }
    assert_eq!(admin.get("/v1/nodes").await?.status, 200);

    info!("--- bob sees nothing of it and can touch nothing");
    let list = bob.get("/v1/workstations").await?;
    assert_eq!(list.body, json!([]));
    for (method, path) in [
        (Method::GET, format!("/v1/workstations/{ws_id}")),
        (Method::GET, format!("/v1/workstations/{ws_id}/processes")),
        (Method::GET, format!("/v1/workstations/{ws_id}/logs")),
        (
            Method::GET,
            format!("/v1/workstations/{ws_id}/logs?follow=true"),
        ),
        (
            Method::DELETE,
            format!("/v1/workstations/{ws_id}/processes/1"),
        ),
        (Method::DELETE, format!("/v1/workstations/{ws_id}")),
    ] {
        let answer = bob.raw(method.clone(), &path, None).await?;
        assert_eq!(answer.status, 404, "{method} {path}: {}", answer.text);
    }
    let answer = bob
        .patch(
            &format!("/v1/workstations/{ws_id}"),
            &json!({"cpu_millis": 200}),
        )
        .await?;
    assert_eq!(answer.status, 404);
    let answer = bob
        .post(
            &format!("/v1/workstations/{ws_id}/processes"),
            &json!({"argv": ["true"]}),
        )
        .await?;
    assert_eq!(answer.status, 404);

    info!("--- bob's runs and audit entries are his own; admin-only endpoints are 403");
    let run = bob.post("/v1/runs", &json!({"argv": ["true"]})).await?;
    assert_eq!(run.status, 200);
    let audit = bob.get("/v1/audit").await?;
    assert!(audit
        .body
        .as_array()
        .is_some_and(|entries| entries.iter().all(|entry| entry["tenant"] == json!("bob"))));
    for (method, path) in [
        (Method::POST, "/v1/keys"),
        (Method::GET, "/v1/keys"),
        (Method::POST, "/v1/tokens"),
        (Method::GET, "/v1/tokens"),
    ] {
        let body =
            (method == Method::POST).then(|| b"{\"tenant\": \"bob\", \"admin\": true}".to_vec());
        let answer = bob.raw(method.clone(), path, body).await?;
        assert_eq!(answer.status, 403, "{method} {path}: {}", answer.text);
        assert_eq!(answer.error_code(), "forbidden");
    }

    info!("--- alice's workstation is untouched; the admin sees both tenants");
    let mine = alice
        .get(&format!("/v1/workstations/{ws_id}/processes"))
        .await?;
    assert_eq!(mine.body[0]["state"], json!("running"));
    let all = admin.get("/v1/workstations").await?;
    assert_eq!(all.body.as_array().map(Vec::len), Some(1));
    let alice_audit = alice.get("/v1/audit").await?;
    assert!(alice_audit.body.as_array().is_some_and(|entries| entries
        .iter()
        .any(|entry| entry["action"] == json!("workstation.create"))));
    Ok(())
}

#[tokio::test]
async fn a_body_that_trickles_in_is_refused_after_its_deadline() -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    common::init_tracing();
    let agent = Agent::bootstrap_with_config("api_body_read_timeout_ms = 300\n")?;
    let key = agent.admin_key()?;
    info!("--- announce 100 bytes, send 10, then wait");
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", agent.api_port)).await?;
    let head = format!(
        "POST /v1/workstations HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"cpu_mil"
    );
    stream.write_all(head.as_bytes()).await?;
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(std::time::Duration::from_secs(10), stream.read(&mut answer))
        .await??;
    let text = String::from_utf8_lossy(&answer[..n]).to_string();
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(text.contains("did not arrive within 300 ms"), "{text}");
    Ok(())
}

/// The chaos-found bug: join tokens that could no longer admit anyone counted against the
/// 1,000-token limit for good, so after 1,000 creations `POST /v1/tokens` answered 429 forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_and_revoked_join_tokens_do_not_count_against_the_1000_token_limit_for_good(
) -> anyhow::Result<()> {
    use futures::StreamExt as _;
    common::init_tracing();
    let agent = Agent::bootstrap()?;
    let admin = agent.client(&agent.admin_key()?);
    let create = |ttl_ms: u64| {
        let admin = admin.clone();
        async move {
            admin
                .post("/v1/tokens", &json!({"ttl_ms": ttl_ms, "uses": 1}))
                .await
        }
    };

    info!("--- 999 tokens that live 1 h and one that expires at once fill the table");
    let statuses: Vec<u16> = futures::stream::iter(0..999)
        .map(|_| create(3_600_000))
        .buffer_unordered(8)
        .map(|answer| answer.map_or(0, |answer| answer.status))
        .collect()
        .await;
    assert!(statuses.iter().all(|&status| status == 201), "{statuses:?}");
    assert_eq!(create(1).await?.status, 201);
    assert_eq!(
        admin.get("/v1/tokens").await?.body.as_array().map(Vec::len),
        Some(1_000)
    );

    info!("--- the expired token makes room (it answered 429 for good); then 1,000 live: 429");
    let created = create(3_600_000).await?;
    assert_eq!(created.status, 201, "{}", created.text);
    let refused = create(3_600_000).await?;
    check(
        "token 1,001",
        &refused,
        429,
        "rate_limited",
        "at most 1000 live join tokens",
    );

    info!("--- revoking one makes room for one");
    let listed = admin.get("/v1/tokens").await?;
    let first = listed.body[0]["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert_eq!(
        admin.delete(&format!("/v1/tokens/{first}")).await?.status,
        204
    );
    let created = create(3_600_000).await?;
    assert_eq!(created.status, 201, "{}", created.text);
    assert!(created.body["token"]
        .as_str()
        .is_some_and(|t| !t.is_empty()));
    assert_eq!(create(3_600_000).await?.status, 429);
    let listed = admin.get("/v1/tokens").await?;
    assert_eq!(listed.body.as_array().map(Vec::len), Some(1_000));
    Ok(())
}
