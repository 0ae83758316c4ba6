//! Without root the sandbox degrades: it runs with what is permitted and says so. As root, this
//! test re-runs itself as `nobody` to exercise that path for real.

// Test code: a panic is the failure report (the workspace denies unwrap/expect elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod run_support;

use std::sync::Arc;

use shoal_executor::clock::SystemClock;
use shoal_executor::run::{self, Languages, RunContext, RunPolicy, RunRequest, Verdict};
use shoal_executor::sandbox::{IsolationLevel, SandboxHost, SandboxHostConfig};

const INNER: &str = "SHOAL_DEGRADED_INNER";

fn sh(script: &str, timeout_ms: Option<u64>) -> RunRequest {
    RunRequest {
        argv: Some(vec![
            "/bin/sh".to_string(),
            "-c".to_string(),
            script.to_string(),
        ]),
        timeout_ms,
        ..RunRequest::default()
    }
}

async fn degraded_checks() -> anyhow::Result<()> {
    let state_dir = tempfile::Builder::new()
        .prefix("shoal-degraded")
        .tempdir()?;
    let host = SandboxHost::start(SandboxHostConfig::new("degraded", state_dir.path()))?;
    let report = host.isolation().clone();
    assert_eq!(report.level, IsolationLevel::Partial);
    assert!(report.label().contains("not root"), "{}", report.label());
    assert!(
        report.label().contains("no cgroup limits"),
        "{}",
        report.label()
    );
    let context = RunContext {
        host: Arc::clone(&host),
        languages: Arc::new(Languages::discover()),
        policy: RunPolicy::default(),
        clock: Arc::new(SystemClock),
    };
    let result = run::execute(
        &context,
        &sh(
            "echo hi; id -u; grep -E '^(NoNewPrivs|Seccomp):' /proc/self/status",
            None,
        ),
        "d1",
    )
    .await?;
    assert_eq!(result.verdict, Verdict::Ok, "{result:?}");
    assert!(result.stdout.starts_with("hi\n"), "{}", result.stdout);
    assert!(
        result.stdout.contains("NoNewPrivs:\t1"),
        "{}",
        result.stdout
    );
    assert!(
        result.isolation.starts_with("partial"),
        "{}",
        result.isolation
    );
    let result = run::execute(&context, &sh("sleep 100", Some(500)), "d2").await?;
    assert_eq!(result.verdict, Verdict::Timeout, "{result:?}");
    // A killed process may stay a zombie for a moment until the host's init reaps it: poll
    // (bounded) for the live ones to be gone.
    let mut survivors = String::new();
    for _ in 0..100 {
        let listing = std::process::Command::new("ps")
            .args(["-u", "nobody", "-o", "pid=,stat=,comm="])
            .output()?;
        survivors = String::from_utf8_lossy(&listing.stdout)
            .lines()
            .filter(|line| {
                line.contains("sleep")
                    && !line
                        .split_whitespace()
                        .nth(1)
                        .unwrap_or("")
                        .starts_with('Z')
            })
            .collect::<Vec<_>>()
            .join("; ");
        if survivors.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(
        survivors.is_empty(),
        "a sleep survived its run: {survivors}"
    );
    let work = state_dir.path().join("work");
    assert_eq!(
        std::fs::read_dir(&work).map(|dir| dir.count()).unwrap_or(0),
        0
    );
    Ok(())
}

#[tokio::test]
async fn without_root_runs_still_work_and_report_partial_isolation() -> anyhow::Result<()> {
    run_support::init_tracing();
    if std::env::var_os(INNER).is_some() {
        return degraded_checks().await;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return degraded_checks().await;
    }
    tracing::info!("--- as root: run this test again as nobody");
    use std::os::unix::process::CommandExt;
    let output = std::process::Command::new(std::env::current_exe()?)
        .args([
            "--exact",
            "without_root_runs_still_work_and_report_partial_isolation",
            "--nocapture",
        ])
        .env(INNER, "1")
        .env("TMPDIR", "/tmp")
        .current_dir("/tmp")
        .uid(65534)
        .gid(65534)
        .output()?;
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "inner run as nobody failed:\n{text}"
    );
    assert!(text.contains("1 passed"), "{text}");
    Ok(())
}
