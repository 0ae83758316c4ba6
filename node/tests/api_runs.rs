//! `POST /v1/runs` against a real agent: every verdict this build can produce, the output
//! head bound, and the honest isolation level.

mod common;

use common::Agent;
use serde_json::{json, Value};
use tracing::info;

async fn run(api: &common::Api, body: Value) -> anyhow::Result<Value> {
    let answer = api.post("/v1/runs", &body).await?;
    anyhow::ensure!(
        answer.status == 200,
        "run: {} {}",
        answer.status,
        answer.text
    );
    Ok(answer.body)
}

#[tokio::test]
async fn every_available_verdict_is_reported_with_the_isolation_actually_applied(
) -> anyhow::Result<()> {
    common::init_tracing();
    let agent = Agent::bootstrap()?;
    let api = agent.client(&agent.admin_key()?);

    // (name, request, verdict, exit_code)
    let cases = [
        ("true", json!({"argv": ["true"]}), "ok", json!(0)),
        (
            "sh snippet",
            json!({"language": "sh", "code": "echo hi; exit 0"}),
            "ok",
            json!(0),
        ),
        (
            "exit 3",
            json!({"argv": ["sh", "-c", "exit 3"]}),
            "nonzero_exit",
            json!(3),
        ),
        (
            "missing program",
            json!({"argv": ["/nonexistent/program"]}),
            "nonzero_exit",
            json!(127),
        ),
        (
            "kill -9 self",
            json!({"argv": ["sh", "-c", "kill -9 $$"]}),
            "signaled",
            Value::Null,
        ),
        (
            "sleep past timeout",
            json!({"argv": ["sleep", "30"], "timeout_ms": 300}),
            "timeout",
            Value::Null,
        ),
        (
            "endless output",
            json!({"argv": ["yes"]}),
            "output_limit",
            Value::Null,
        ),
    ];
    for (name, request, verdict, exit_code) in cases {
        info!(case = name, "--- run");
        let result = run(&api, request).await?;
        assert_eq!(result["verdict"], json!(verdict), "{name}: {result}");
        assert_eq!(result["exit_code"], exit_code, "{name}: {result}");
        assert_eq!(result["isolation"], json!("none"), "{name}");
        assert_eq!(result["node"], json!(agent.node_id), "{name}");
    }

    info!("--- stdout and stdin: the head is kept and flagged");
    let result = run(
        &api,
        json!({"argv": ["sh", "-c", "cat; head -c 100000 /dev/zero | tr '\\0' x"], "stdin": "from stdin\n"}),
    )
    .await?;
    let stdout = result["stdout"].as_str().unwrap_or_default();
    assert_eq!(stdout.len(), 65_536);
    assert!(stdout.starts_with("from stdin\nxxx"));
    assert_eq!(result["stdout_truncated"], json!(true));
    assert_eq!(result["stderr_truncated"], json!(false));

    info!("--- files are written next to the program, and gone afterwards");
    let result = run(
        &api,
        json!({"argv": ["sh", "-c", "cat input.txt; pwd"], "files": {"input.txt": "data\n"}}),
    )
    .await?;
    let stdout = result["stdout"].as_str().unwrap_or_default().to_string();
    assert!(stdout.starts_with("data\n"), "{stdout}");
    let run_dir = stdout.lines().nth(1).unwrap_or_default().to_string();
    assert!(!run_dir.is_empty() && !std::path::Path::new(&run_dir).exists());
    Ok(())
}
