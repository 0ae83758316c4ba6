//! Node removal in a real three-node cluster (three `shoal agent` processes on loopback,
//! userspace mesh): `DELETE /v1/nodes/{id}` moves the removed node's workstation to another
//! node with the next generation, the removed node learns it and exits with the removal exit
//! code (10) and one line on stderr, and, started again on its old data dir, it exits the same
//! way at once: it is never `ready` again, and the cluster goes on answering.
//!
//! Regression (chaos `removed_node_returns`): a removed node that came back with its old data
//! was reported ready, and workstations of removed nodes stayed `pending`.

// Test code: a panic is the failure report (the workspace denies unwrap/expect elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Read as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{eventually, Api};
use serde_json::{json, Value};
use tracing::info;

/// Bounded waits: joins, elections and replication on a shared 2-core machine.
const CLUSTER_WAIT: Duration = Duration::from_secs(60);
/// Far longer than the test: a workstation that moved was moved by the removal, never by the
/// failure detector.
const GRACE_MS: u64 = 600_000;
/// The exit code of `shoal agent` for a node removed from the cluster.
const REMOVED_EXIT_CODE: i32 = 10;

async fn workstation(api: &Api, id: &str) -> Option<Value> {
    match api.get(&format!("/v1/workstations/{id}")).await {
        Ok(answer) if answer.status == 200 => Some(answer.body),
        _ => None,
    }
}

async fn node_state(api: &Api, id: &str) -> Option<String> {
    let answer = api.get(&format!("/v1/nodes/{id}")).await.ok()?;
    answer.body["state"].as_str().map(str::to_string)
}

/// True once the process `pid` has exited (gone, or a zombie waiting for its parent).
fn exited(pid: nix::unistd::Pid) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the field after the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => true,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_node_exits_its_workstation_runs_elsewhere_next_generation_and_it_never_comes_back(
) -> anyhow::Result<()> {
    common::init_tracing();
    let temp = tempfile::tempdir()?;

    info!("--- three nodes (heartbeat grace 10 min: only the removal can move a workstation)");
    let mut started = common::start_three_nodes(temp.path(), GRACE_MS, CLUSTER_WAIT).await?;
    let apis: Vec<Api> = started
        .agents
        .iter()
        .map(|agent| agent.client(&started.admin_key))
        .collect();
    let leader = eventually(CLUSTER_WAIT, || async {
        let Ok(cluster) = apis[0].get("/v1/cluster").await else {
            return Ok(None);
        };
        Ok(cluster.body["leader"]
            .as_str()
            .filter(|leader| !leader.is_empty())
            .map(str::to_string))
    })
    .await?;
    let leader_idx = started
        .agents
        .iter()
        .position(|agent| agent.node_id == leader)
        .ok_or_else(|| anyhow::anyhow!("unknown leader {leader}"))?;
    let leader_api = apis[leader_idx].clone();

    info!("--- one workstation per node (one tenant spreads them)");
    let mut placed = Vec::new();
    for i in 0..3 {
        let ws = leader_api
            .post(
                "/v1/workstations",
                &json!({"cpu_millis": 100, "memory_bytes": 64 << 20, "name": format!("r{i}")}),
            )
            .await?;
        anyhow::ensure!(ws.status == 201, "{}", ws.text);
        placed.push((
            ws.body["id"].as_str().unwrap_or_default().to_string(),
            ws.body["node"].as_str().unwrap_or_default().to_string(),
        ));
    }
    // The removed node is a follower, so that the leader that decides stays up.
    let (ws_id, removed) = placed
        .iter()
        .find(|(_, node)| *node != leader)
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("nothing placed on a follower: {placed:?}"))?;
    let removed_idx = started
        .agents
        .iter()
        .position(|agent| agent.node_id == removed)
        .ok_or_else(|| anyhow::anyhow!("unknown node {removed}"))?;
    eventually(CLUSTER_WAIT, || async {
        Ok(workstation(&leader_api, &ws_id)
            .await
            .filter(|ws| ws["state"] == "running"))
    })
    .await?;

    info!(%removed, "--- DELETE /v1/nodes/{{id}} with the admin key");
    let answer = leader_api.delete(&format!("/v1/nodes/{removed}")).await?;
    assert_eq!(answer.status, 200, "{}", answer.text);

    info!("--- its workstation runs on another node with generation 2");
    let moved = eventually(CLUSTER_WAIT, || async {
        Ok(workstation(&leader_api, &ws_id).await.filter(|ws| {
            ws["node"] != removed.as_str() && ws["generation"] == 2 && ws["state"] == "running"
        }))
    })
    .await?;
    info!(node = %moved["node"], "re-placed");

    info!("--- the removed node learns it and exits by itself; the cluster lists it left");
    let pid = started.agents[removed_idx]
        .pid()
        .ok_or_else(|| anyhow::anyhow!("no pid"))?;
    eventually(CLUSTER_WAIT, || async { Ok(exited(pid).then_some(())) }).await?;
    eventually(CLUSTER_WAIT, || async {
        Ok((node_state(&leader_api, &removed).await.as_deref() == Some("left")).then_some(()))
    })
    .await?;
    started.agents[removed_idx].kill9();

    // What a kill -9 leaves behind: a workstation cgroup in the node's own tree (chaos
    // no_leftovers: a removed node restarted after a kill -9 exited before its start-up
    // cleanup, and the machine's rejoin under a new sandbox name never removed the old tree).
    let leftover = std::path::Path::new("/sys/fs/cgroup/pids")
        .join(&started.agents[removed_idx].cgroup_name)
        .join("ws-left-by-a-kill");
    let planted = nix::unistd::geteuid().is_root()
        && leftover.parent().is_some_and(|tree| tree.exists())
        && std::fs::create_dir_all(&leftover).is_ok();
    info!(planted, leftover = %leftover.display(), "a leftover sandbox cgroup (v1 pids, root only)");

    info!("--- started again on its old data dir, it exits at once with the removal code");
    let data_dir = started.agents[removed_idx].data_dir.clone();
    let mut child = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .arg("agent")
        .arg("--data-dir")
        .arg(&data_dir)
        .arg("--api")
        .arg(format!("127.0.0.1:{}", common::free_tcp_port()))
        .arg("--listen")
        .arg(format!("127.0.0.1:{}", common::free_udp_port()))
        .arg("--mesh")
        .arg("userspace")
        .arg("--config")
        .arg(&started.config)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let status = eventually(CLUSTER_WAIT, || {
        let status = child.try_wait();
        async move { Ok(status?) }
    })
    .await;
    let status = match status {
        Ok(status) => status,
        Err(error) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(error.context("the removed node did not exit"));
        }
    };
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        pipe.read_to_string(&mut stderr)?;
    }
    info!(?status, stderr = %stderr.trim(), "exited");
    assert_eq!(status.code(), Some(REMOVED_EXIT_CODE), "{stderr}");
    let line = stderr
        .lines()
        .find(|line| line.contains("was removed from the cluster"))
        .unwrap_or_default();
    assert!(
        line.starts_with(&format!(
            "shoal agent: {removed} was removed from the cluster"
        )),
        "one clear line: {stderr}"
    );

    if planted {
        assert!(
            !leftover.exists(),
            "the removed node's restart removed what its earlier run left: {}",
            leftover.display()
        );
    }

    info!("--- never ready again, and the cluster still answers");
    assert_eq!(
        node_state(&leader_api, &removed).await.as_deref(),
        Some("left")
    );
    for (idx, api) in apis.iter().enumerate() {
        if idx == removed_idx {
            continue;
        }
        let nodes = api.get("/v1/nodes").await?;
        assert_eq!(nodes.status, 200, "{}", nodes.text);
        let listed = nodes.body.as_array().cloned().unwrap_or_default();
        assert!(
            listed
                .iter()
                .all(|node| node["id"] != removed.as_str() || node["state"] == "left"),
            "{listed:?}"
        );
    }
    let ws = leader_api
        .post(
            "/v1/workstations",
            &json!({"cpu_millis": 100, "memory_bytes": 64 << 20, "name": "after"}),
        )
        .await?;
    assert_eq!(ws.status, 201, "{}", ws.text);
    assert_ne!(
        ws.body["node"],
        removed.as_str(),
        "no placement on a removed node"
    );
    let moved_again = workstation(&leader_api, &ws_id).await;
    assert_eq!(
        moved_again.map(|ws| (ws["node"].clone(), ws["generation"].clone())),
        Some((moved["node"].clone(), json!(2)))
    );
    Ok(())
}
