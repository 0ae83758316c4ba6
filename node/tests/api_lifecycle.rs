//! A node's lifecycle in a real three-node cluster (three `shoal agent` processes on loopback,
//! userspace mesh): SIGTERM of the leader hands leadership over and re-places its workstation
//! on another node with the next generation, where its `always` process runs again, long
//! before the failure detector's grace (set to 10 minutes here, so only the leave can have
//! moved it); the node comes back `ready` after a restart. Draining a node moves its
//! workstation elsewhere and the node takes no new placements; a drain that waits for room
//! goes on by itself (the leader's drain loop) once room appears.

// Test code: a panic is the failure report (the workspace denies unwrap/expect elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::{eventually, Agent, Api};
use serde_json::{json, Value};
use tracing::info;

/// Bounded waits: joins, elections and replication on a shared 2-core machine.
const CLUSTER_WAIT: Duration = Duration::from_secs(60);
/// Far longer than the test: a workstation that moved was moved by the leave or the drain,
/// never by the failure detector.
const GRACE_MS: u64 = 600_000;

struct Cluster {
    agents: Vec<Agent>,
    apis: Vec<Api>,
    config: String,
}

async fn cluster_of(api: &Api) -> Option<Value> {
    match api.get("/v1/cluster").await {
        Ok(answer) if answer.status == 200 => Some(answer.body),
        _ => None,
    }
}

/// Node 0 bootstraps, nodes 1 and 2 join; waits until all three are voters and ready.
async fn three_nodes(root: &Path) -> anyhow::Result<Cluster> {
    let started = common::start_three_nodes(root, GRACE_MS, CLUSTER_WAIT).await?;
    let apis: Vec<Api> = started
        .agents
        .iter()
        .map(|a| a.client(&started.admin_key))
        .collect();
    Ok(Cluster {
        agents: started.agents,
        apis,
        config: started.config,
    })
}

impl Cluster {
    fn index_of(&self, node_id: &str) -> Option<usize> {
        self.agents.iter().position(|a| a.node_id == node_id)
    }

    async fn leader(&self, api: &Api) -> anyhow::Result<String> {
        eventually(CLUSTER_WAIT, || async {
            Ok(cluster_of(api)
                .await
                .and_then(|c| c["leader"].as_str().map(str::to_string))
                .filter(|leader| !leader.is_empty()))
        })
        .await
    }

    /// Creates `n` workstations of `cpu_millis` each (one tenant: they spread one per node),
    /// returns (id, node) of each.
    async fn create(&self, n: usize, cpu_millis: u64) -> anyhow::Result<Vec<(String, String)>> {
        let mut placed = Vec::new();
        for i in 0..n {
            let ws = self.apis[0]
                .post(
                    "/v1/workstations",
                    &json!({"cpu_millis": cpu_millis, "memory_bytes": 64 << 20,
                            "name": format!("w{i}")}),
                )
                .await?;
            anyhow::ensure!(ws.status == 201, "{}", ws.text);
            placed.push((
                ws.body["id"].as_str().unwrap_or_default().to_string(),
                ws.body["node"].as_str().unwrap_or_default().to_string(),
            ));
        }
        Ok(placed)
    }
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_of_the_leader_hands_over_and_its_workstation_runs_on_another_node_next_generation(
) -> anyhow::Result<()> {
    common::init_tracing();
    let temp = tempfile::tempdir()?;

    info!("--- three nodes (heartbeat grace 10 min: only a leave can move a workstation)");
    let mut cluster = three_nodes(temp.path()).await?;
    let leader = cluster.leader(&cluster.apis[0]).await?;
    let leader_idx = cluster
        .index_of(&leader)
        .ok_or_else(|| anyhow::anyhow!("unknown leader {leader}"))?;
    let survivor = cluster.apis[(leader_idx + 1) % 3].clone();

    info!("--- one workstation per node; the leader's gets an `always` process");
    let placed = cluster.create(3, 100).await?;
    let (ws_id, _) = placed
        .iter()
        .find(|(_, node)| *node == leader)
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("nothing placed on the leader: {placed:?}"))?;
    // An argument no other test uses, so that the process can be counted in /proc.
    let sleeper = ["sleep", "6011"];
    let process = survivor
        .post(
            &format!("/v1/workstations/{ws_id}/processes"),
            &json!({"argv": ["sh", "-c", "echo lifecycle-up; exec sleep 6011"],
                    "restart": "always"}),
        )
        .await?;
    assert_eq!(process.status, 201, "{}", process.text);
    let process_id = process.body["id"].as_str().unwrap_or_default().to_string();
    eventually(CLUSTER_WAIT, || async {
        Ok((common::count_processes_with_argv(&sleeper) == 1).then_some(()))
    })
    .await?;

    info!("--- SIGTERM the leader: it exits 0");
    let code = cluster.agents[leader_idx].terminate(Duration::from_secs(60))?;
    assert_eq!(code, Some(0));

    info!("--- a new leader is known");
    let new_leader = eventually(CLUSTER_WAIT, || async {
        Ok(cluster_of(&survivor)
            .await
            .and_then(|c| c["leader"].as_str().map(str::to_string))
            .filter(|l| !l.is_empty() && *l != leader))
    })
    .await?;
    info!(%new_leader, "elected");

    info!("--- the workstation runs on another node, generation 2, its `always` process again");
    let moved = eventually(CLUSTER_WAIT, || async {
        Ok(workstation(&survivor, &ws_id)
            .await
            .filter(|ws| ws["node"] != leader.as_str() && ws["generation"] == 2))
    })
    .await?;
    info!(node = %moved["node"], "re-placed");
    eventually(CLUSTER_WAIT, || async {
        let Ok(processes) = survivor
            .get(&format!("/v1/workstations/{ws_id}/processes"))
            .await
        else {
            return Ok(None);
        };
        let running = processes.body.as_array().is_some_and(|list| {
            list.iter()
                .any(|p| p["id"] == process_id.as_str() && p["state"] == "running")
        });
        Ok((running && common::count_processes_with_argv(&sleeper) == 1).then_some(()))
    })
    .await?;
    // The node left on its own: it is draining, not down (the grace is 10 minutes).
    assert_eq!(
        node_state(&survivor, &leader).await.as_deref(),
        Some("draining")
    );

    info!("--- restarted on the same data dir, the old leader comes back ready");
    let data_dir = temp.path().join(format!("node-{leader_idx}"));
    let port = common::free_tcp_port();
    let config = cluster.config.clone();
    cluster.agents[leader_idx] = Agent::start(&data_dir, &["--config", &config], port)?;
    eventually(CLUSTER_WAIT, || async {
        Ok((node_state(&survivor, &leader).await.as_deref() == Some("ready")).then_some(()))
    })
    .await?;
    // Its workstation stayed where it moved; one copy of the process runs.
    let ws = workstation(&survivor, &ws_id).await;
    assert_eq!(ws.map(|ws| ws["node"].clone()), Some(moved["node"].clone()));
    assert_eq!(common::count_processes_with_argv(&sleeper), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_node_moves_its_workstation_away_takes_no_new_placements_and_waits_for_room(
) -> anyhow::Result<()> {
    common::init_tracing();
    let temp = tempfile::tempdir()?;

    info!("--- three nodes; three workstations that each fill most of a node");
    let cluster = three_nodes(temp.path()).await?;
    let api = cluster.apis[0].clone();
    let nodes = api.get("/v1/nodes").await?.body;
    let allocatable = nodes
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|node| {
            let capacity = node["capacity"]["cpu_millis"].as_u64()?;
            let reserve = node["reserve"]["cpu_millis"].as_u64().unwrap_or(0);
            Some(capacity.saturating_sub(reserve))
        })
        .min()
        .unwrap_or(0);
    anyhow::ensure!(allocatable >= 10, "nodes report no CPU: {nodes}");
    let big = allocatable * 6 / 10;
    let placed = cluster.create(3, big).await?;
    let hosts: std::collections::BTreeSet<&str> =
        placed.iter().map(|(_, node)| node.as_str()).collect();
    assert_eq!(hosts.len(), 3, "one per node: {placed:?}");
    let (drained_ws, drained) = placed[0].clone();
    let (blocker_ws, _) = placed[1].clone();

    info!("--- drain {drained}: its workstation fits nowhere else yet, so it stays and waits");
    let answer = api
        .post(&format!("/v1/nodes/{drained}/drain"), &Value::Null)
        .await?;
    info!(status = answer.status, body = %answer.text, "drain answered");
    assert!(
        answer.status == 200 || answer.status == 503,
        "{}",
        answer.text
    );
    eventually(CLUSTER_WAIT, || async {
        Ok((node_state(&api, &drained).await.as_deref() == Some("draining")).then_some(()))
    })
    .await?;
    let ws = workstation(&api, &drained_ws).await;
    assert_eq!(
        ws.as_ref().map(|ws| ws["node"].clone()),
        Some(json!(drained))
    );

    info!("--- the draining node takes no new placements");
    let small = cluster.create(2, 10).await?;
    for (id, node) in &small {
        assert_ne!(*node, drained, "{id} placed on the draining node");
    }

    info!("--- room appears elsewhere: the drain goes on by itself, with the next generation");
    let deleted = api
        .delete(&format!("/v1/workstations/{blocker_ws}"))
        .await?;
    assert!(deleted.status < 300, "{}", deleted.text);
    let moved = eventually(CLUSTER_WAIT, || async {
        Ok(workstation(&api, &drained_ws)
            .await
            .filter(|ws| ws["node"] != drained.as_str() && ws["generation"] == 2))
    })
    .await?;
    info!(node = %moved["node"], "re-placed");
    assert_eq!(
        node_state(&api, &drained).await.as_deref(),
        Some("draining")
    );
    let after = cluster.create(1, 10).await?;
    assert_ne!(after[0].1, drained, "placed on the drained node");
    Ok(())
}
