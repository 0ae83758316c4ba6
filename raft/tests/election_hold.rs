//! A restarted voter holds its own elections until it hears a leader
//! (`RaftConfig::election_hold_after_start_ms`): openraft 0.9 has no pre-vote, and the chaos
//! suite saw nodes restarted after a kill -9 start an election 300-400 ms after their restart,
//! before the leader's connections to them were re-established, deposing a healthy leader.
//! In-process 3-node clusters with real openraft and redb; every wait is bounded.

// Test code: a panic is the failure report (the workspace denies unwrap/expect elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use anyhow::ensure;
use common::*;
use shoal_raft::Action;
use shoal_raft::Command;
use shoal_raft::NodeId;
use shoal_raft::RaftConfig;

fn config_with_hold(hold_ms: u64) -> impl Fn(NodeId) -> RaftConfig + Send + Sync + 'static {
    move |id| {
        let mut config = test_config(id);
        config.election_hold_after_start_ms = hold_ms;
        config
    }
}

/// Commits a write and waits until every running node applied it: each has accepted the
/// leader's `AppendEntries` since. (A restarted node names its old leader from its stored vote
/// at once, so its metrics do not show that it heard one.)
async fn every_node_hears_the_leader(cluster: &Cluster, name: &str) -> anyhow::Result<()> {
    let command = Command::new(
        1,
        "admin",
        Action::CreateTenant {
            tenant: name.to_string(),
        },
    );
    let response = cluster.write(command).await?;
    ensure!(response.is_ok(), "{response:?}");
    let leader = cluster.wait_leader(None).await?;
    cluster.wait_applied(cluster.leader_applied(leader)?).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_voter_that_cannot_hear_the_leader_does_not_start_an_election(
) -> anyhow::Result<()> {
    init_tracing();
    // Nodes 1 and 2 tolerate long stalls (election timeouts of seconds), so that on a loaded
    // machine no election but node 3's own could change a term during the check below.
    let mut cluster = Cluster::new(|id| {
        let mut config = test_config(id);
        config.election_hold_after_start_ms = 60_000;
        if id != 3 {
            config.election_timeout_ms_min = 3_000;
            config.election_timeout_ms_max = 4_000;
        }
        config
    })?;

    tracing::info!("--- three voters, node 1 leads");
    three_voters(&mut cluster).await?;
    ensure!(cluster.wait_leader(None).await? == 1);
    let term = cluster.node(1)?.status().term;

    tracing::info!(
        "--- node 3 restarts; the leader's requests to it are lost, its own get through"
    );
    cluster.kill(3).await?;
    cluster.router.block(1, 3);
    cluster.start(3).await?;

    tracing::info!(
        "--- past openraft's own election timeout (lease 300 + 150..300 ms), no election"
    );
    // Without the hold node 3 becomes a candidate in term + 1 within ~600 ms of its start; with
    // it, nothing may change for the whole (60 s) hold, so this check cannot race.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    ensure!(
        cluster.node(3)?.status().term == term,
        "node 3 started an election: term {} -> {}",
        term,
        cluster.node(3)?.status().term
    );
    ensure!(cluster.node(1)?.status().is_leader && cluster.node(1)?.status().term == term);

    tracing::info!("--- the leader reaches node 3 again; it follows in the same term");
    cluster.router.unblock(1, 3);
    every_node_hears_the_leader(&cluster, "after-unblock").await?;
    ensure!(cluster.node(3)?.status().term == term);
    ensure!(cluster.node(1)?.status().is_leader);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_voters_that_heard_the_leader_elect_at_once_when_it_dies() -> anyhow::Result<()> {
    init_tracing();
    // A hold far longer than the test's waits: a new leader can only come from a held node
    // whose hold ended because it heard the leader.
    let mut cluster = Cluster::new(config_with_hold(60_000))?;

    tracing::info!("--- three voters; nodes 2 and 3 restart and follow node 1");
    three_voters(&mut cluster).await?;
    ensure!(cluster.wait_leader(None).await? == 1);
    for id in [2, 3] {
        cluster.kill(id).await?;
        cluster.start(id).await?;
    }
    every_node_hears_the_leader(&cluster, "after-restarts").await?;

    tracing::info!("--- node 1 dies; node 2 or 3 leads");
    cluster.kill(1).await?;
    let leader = cluster.wait_leader(Some(1)).await?;
    ensure!(leader == 2 || leader == 3, "leader {leader}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_voters_elect_after_the_hold_when_no_leader_is_left() -> anyhow::Result<()> {
    init_tracing();
    let mut cluster = Cluster::new(config_with_hold(1_000))?;

    tracing::info!("--- three voters; all stop; nodes 2 and 3 start again without node 1");
    three_voters(&mut cluster).await?;
    ensure!(cluster.wait_leader(None).await? == 1);
    for id in [1, 2, 3] {
        cluster.kill(id).await?;
    }
    for id in [2, 3] {
        cluster.start(id).await?;
    }

    tracing::info!("--- nobody to hear: after the 1 s hold they elect one of themselves");
    let leader = cluster.wait_leader(Some(1)).await?;
    ensure!(leader == 2 || leader == 3, "leader {leader}");
    Ok(())
}
