//! `shoal dev` with real `shoal agent` children: it prints the admin key and writes
//! `<data-dir>/admin.token`, Ctrl-C leaves no process behind, a restart with the same data dir
//! brings the same cluster back, and a `kill -9` of `shoal dev` still takes its nodes down.

// Test code: a panic is the failure report (the workspace denies unwrap/expect elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cli_support;

use std::time::Duration;

use cli_support::{eventually, shoal, shoal_ok, DevCluster};
use tracing::info;

const START_TIMEOUT: Duration = Duration::from_secs(60);

fn cluster_id(cluster: &DevCluster) -> anyhow::Result<String> {
    let status = shoal_ok(&cluster.addr, &cluster.admin_key, &["status", "--json"])?;
    let status: serde_json::Value = serde_json::from_str(&status)?;
    Ok(status["cluster_id"]
        .as_str()
        .unwrap_or_default()
        .to_string())
}

#[test]
fn dev_prints_and_writes_the_admin_key_stops_on_ctrl_c_and_restarts_the_same_cluster(
) -> anyhow::Result<()> {
    cli_support::init_tracing();
    info!("--- start a one-node `shoal dev`");
    let mut cluster = DevCluster::start(1, START_TIMEOUT)?;
    let written = std::fs::read_to_string(cluster.data_dir.join("admin.token"))?;
    assert_eq!(
        written.trim(),
        cluster.admin_key,
        "printed key and admin.token differ"
    );
    assert!(!cluster.admin_key.is_empty());
    assert!(
        cluster.banner.iter().any(|l| l.contains(&cluster.addr)),
        "banner lacks the API address: {:?}",
        cluster.banner
    );
    let first_id = cluster_id(&cluster)?;
    assert!(!first_id.is_empty());
    assert!(
        !cluster.leftover_pids().is_empty(),
        "the agent should be running"
    );
    let log = cluster.data_dir.join("node-0").join("agent.log");
    assert!(
        std::fs::metadata(&log)?.len() > 0,
        "the agent's log is empty"
    );

    info!("--- Ctrl-C: exit code 0 and no process of the cluster left");
    let code = cluster.interrupt(Duration::from_secs(30))?;
    assert_eq!(code, Some(0));
    assert_eq!(
        cluster.leftover_pids(),
        Vec::<u32>::new(),
        "processes left behind"
    );
    let refused = shoal(&cluster.addr, Some(&cluster.admin_key), &["status"])?;
    assert_eq!(refused.status.code(), Some(3), "the API should be gone");

    info!("--- restart with the same data dir: same cluster id, same key");
    let data_dir = cluster.data_dir.clone();
    let ports = cluster.ports;
    let restarted = DevCluster::start_in(&data_dir, 1, ports, START_TIMEOUT, None)?;
    assert_eq!(restarted.admin_key, cluster.admin_key);
    assert_eq!(cluster_id(&restarted)?, first_id);
    drop(restarted);
    assert_eq!(cluster.leftover_pids(), Vec::<u32>::new());
    Ok(())
}

#[test]
fn killing_dev_with_sigkill_still_stops_its_nodes() -> anyhow::Result<()> {
    cli_support::init_tracing();
    let mut cluster = DevCluster::start(1, START_TIMEOUT)?;
    let agents = cluster.leftover_pids();
    assert!(!agents.is_empty());

    info!("--- kill -9 shoal dev: its nodes get SIGTERM from the kernel (PR_SET_PDEATHSIG)");
    if let Some(mut child) = cluster.child.take() {
        child.kill()?;
        child.wait()?;
    }
    eventually(Duration::from_secs(30), "the agents to exit", || {
        Ok(cluster.leftover_pids().is_empty().then_some(()))
    })?;
    Ok(())
}

#[test]
fn a_second_dev_on_the_same_data_dir_is_refused_in_one_line() -> anyhow::Result<()> {
    cli_support::init_tracing();
    let cluster = DevCluster::start(1, START_TIMEOUT)?;
    let second = shoal(
        &cluster.addr,
        None,
        &[
            "dev",
            "--nodes",
            "1",
            "--data-dir",
            &cluster.data_dir.display().to_string(),
        ],
    )?;
    assert_eq!(second.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("another `shoal dev` is running"),
        "{stderr}"
    );
    Ok(())
}

#[test]
fn a_node_that_cannot_start_is_reported_with_the_end_of_its_log() -> anyhow::Result<()> {
    cli_support::init_tracing();
    let (api_port, listen_port) = cli_support::free_port_ranges(1)?;
    info!("--- the API port is taken: node-0 cannot listen");
    let _squatter = std::net::TcpListener::bind(("127.0.0.1", api_port))?;
    let dir = tempfile::tempdir()?;
    let data_dir = dir.path().join("dev");
    let output = shoal(
        "http://127.0.0.1:1",
        None,
        &[
            "dev",
            "--nodes",
            "1",
            "--data-dir",
            &data_dir.display().to_string(),
            "--api",
            &format!("127.0.0.1:{api_port}"),
            "--listen",
            &format!("127.0.0.1:{listen_port}"),
            "--ready-timeout",
            "30s",
        ],
    )?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("node-0"), "{stderr}");
    assert!(stderr.contains("agent.log"), "{stderr}");
    assert!(
        stderr.lines().any(|l| l.starts_with("  | ")),
        "the end of the node's log should be shown: {stderr}"
    );
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.starts_with("shoal: node-0"), "{stderr}");
    assert_eq!(
        cli_support::pids_mentioning(&data_dir.display().to_string()),
        Vec::<u32>::new()
    );
    Ok(())
}
