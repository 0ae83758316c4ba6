//! A run whose caller gives up (the future is dropped) leaves nothing behind either.

// Test code: a panic is the failure report (the workspace denies unwrap/expect elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod run_support;

use std::time::Duration;

use run_support::{root_or_skip, TestHost};
use shoal_executor::run::RunRequest;

/// Children of this process that are zombies (never reaped).
fn own_zombies() -> Vec<String> {
    let own_pid = std::process::id().to_string();
    let mut zombies = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.first() == Some(&"Z") && fields.get(1) == Some(&own_pid.as_str()) {
            zombies.push(stat);
        }
    }
    zombies
}

#[tokio::test]
async fn dropping_a_run_midway_kills_reaps_and_removes_everything() -> anyhow::Result<()> {
    if !root_or_skip("dropping_a_run_midway_kills_reaps_and_removes_everything") {
        return Ok(());
    }
    let host = TestHost::start("cancel")?;
    let request = RunRequest {
        argv: Some(vec![
            "/bin/sh".to_string(),
            "-c".to_string(),
            "sleep 100 & sleep 100".to_string(),
        ]),
        ..RunRequest::default()
    };
    tracing::info!("--- start a 100 s run and give up on it after 500 ms");
    let outcome =
        tokio::time::timeout(Duration::from_millis(500), host.run(&request, "cancel")).await;
    assert!(outcome.is_err(), "the run should still have been running");
    tracing::info!("--- no process, cgroup, zombie or file of the run remains");
    host.assert_clean();
    assert!(own_zombies().is_empty(), "zombies: {:?}", own_zombies());
    Ok(())
}
