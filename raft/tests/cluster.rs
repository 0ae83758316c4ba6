//! An in-process 3-node cluster over the test transport with real openraft and real redb on
//! disk: election, failover, restart from disk, catch-up by snapshot, membership changes.

// Test code: a panic is the failure report (the workspace denies unwrap/expect elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use anyhow::ensure;
use common::*;
use shoal_raft::command::sha256_hex;
use shoal_raft::command::Admission;
use shoal_raft::command::WorkstationRequest;
use shoal_raft::model::Limit;
use shoal_raft::model::NodeState;
use shoal_raft::model::Resources;
use shoal_raft::model::Roles;
use shoal_raft::model::WorkstationSpec;
use shoal_raft::Action;
use shoal_raft::Command;
use shoal_raft::Outcome;

fn ws_request(tenant: &str, cpu_millis: u64) -> WorkstationRequest {
    WorkstationRequest {
        tenant: tenant.to_string(),
        name: String::new(),
        spec: WorkstationSpec {
            reservation: Resources::new(cpu_millis, 256 << 20),
            limit: Limit {
                cpu_limit_millis: cpu_millis * 2,
                memory_limit_bytes: 512 << 20,
            },
            network: Default::default(),
        },
    }
}

/// Bootstraps node 1, registers nodes 2 and 3 with a join token, adds them as learners and
/// promotes them.
async fn three_nodes(cluster: &mut Cluster) -> anyhow::Result<()> {
    let n1 = cluster.start(1).await?;
    bootstrap(&n1).await?;
    let token = sha256_hex("join-secret");
    let created = cluster
        .write(Command::new(
            1,
            "admin",
            Action::CreateToken {
                secret_sha256: token.clone(),
                prefix: "shoal1.test".to_string(),
                roles: Roles::SERVER_WORKER,
                ttl_ms: 3_600_000,
                uses_max: 2,
            },
        ))
        .await?;
    ensure!(
        matches!(created, Ok(Outcome::TokenCreated { .. })),
        "{created:?}"
    );
    for hint in [2u64, 3] {
        let registered = cluster
            .write(Command::new(
                2,
                "system",
                Action::RegisterNode(registration(
                    Admission::Token {
                        secret_sha256: token.clone(),
                    },
                    hint,
                    Roles::SERVER_WORKER,
                )),
            ))
            .await?;
        let Ok(Outcome::NodeRegistered { node_id, .. }) = registered else {
            anyhow::bail!("registration refused: {registered:?}");
        };
        ensure!(node_id == hint, "node ids are handed out in order");
        cluster.start(node_id).await?;
        n1.add_learner(node_id, addr(node_id)).await?;
        n1.promote(node_id).await?;
    }
    let status = n1.status();
    ensure!(status.voters.len() == 3, "voters: {:?}", status.voters);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_node_cluster_elects_fails_over_and_restarts_from_disk() -> anyhow::Result<()> {
    init_tracing();
    let mut cluster = Cluster::new(test_config)?;

    tracing::info!("--- bootstrap node 1, join and promote nodes 2 and 3");
    three_nodes(&mut cluster).await?;
    let leader = cluster.wait_leader(None).await?;
    ensure!(leader == 1);

    tracing::info!("--- place workstations; every replica reaches the same state");
    let placed = cluster
        .write(Command::new(
            10,
            "key-a",
            Action::PlaceBatch {
                requests: (0..20)
                    .map(|i| ws_request(&format!("t{}", i % 3), 500))
                    .collect(),
                hints: Default::default(),
            },
        ))
        .await?;
    let Ok(Outcome::Batch(answers)) = placed else {
        anyhow::bail!("batch refused: {placed:?}");
    };
    ensure!(answers.iter().all(Result::is_ok), "{answers:?}");
    let index = cluster.leader_applied(leader)?;
    let states = cluster.converged_states(index).await?;
    ensure!(states.len() == 3, "states of {} replicas", states.len());

    tracing::info!("--- kill the leader, expect a new one and writes to succeed there");
    cluster.kill(leader).await?;
    let new_leader = cluster.wait_leader(Some(leader)).await?;
    ensure!(new_leader != leader);
    let response = cluster
        .write(Command::new(
            11,
            "key-a",
            Action::CreateWorkstation {
                request: ws_request("t0", 250),
                hints: Default::default(),
            },
        ))
        .await?;
    ensure!(
        matches!(response, Ok(Outcome::WorkstationPlaced(_))),
        "{response:?}"
    );

    tracing::info!("--- restart the old leader from disk; it catches up");
    cluster.start(leader).await?;
    let index = cluster.leader_applied(new_leader)?;
    let states = cluster.converged_states(index).await?;
    ensure!(states.len() == 3, "states of {} replicas", states.len());
    let before = states[0].clone();

    tracing::info!("--- stop every node and restart all from disk: state intact");
    for id in 1..=3 {
        cluster.kill(id).await?;
    }
    for id in 1..=3 {
        cluster.start(id).await?;
    }
    cluster.wait_leader(None).await?;
    let states = cluster.states(index).await?;
    ensure!(
        states.iter().all(|s| *s == before),
        "state changed across a full restart"
    );
    let n_ws = cluster.node(1)?.read(|s| s.workstations.len());
    ensure!(n_ws == 21, "expected 21 workstations, found {n_ws}");

    for id in 1..=3 {
        cluster.kill(id).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_node_catches_up_by_snapshot() -> anyhow::Result<()> {
    init_tracing();
    let mut cluster = Cluster::new(|id| {
        let mut config = test_config(id);
        config.snapshot_logs_since_last = 20;
        config.logs_kept_after_snapshot = 0;
        config
    })?;
    three_nodes(&mut cluster).await?;

    tracing::info!("--- cut node 3 off and write well past the snapshot threshold");
    cluster.router.isolate(3);
    for i in 0..60u64 {
        let response = cluster
            .write(Command::new(
                100 + i,
                "key-a",
                Action::CreateWorkstation {
                    request: ws_request("lag", 10),
                    hints: Default::default(),
                },
            ))
            .await?;
        ensure!(response.is_ok(), "{response:?}");
    }
    let leader = cluster.wait_leader(None).await?;
    let leader_node = cluster.node(leader)?;
    leader_node.trigger_snapshot().await?;
    let mut metrics = leader_node.metrics();
    // Keep no `Ref` from `wait_for`: holding it blocks openraft's metrics writer.
    let purged = tokio::time::timeout(
        WAIT,
        metrics.wait_for(|m| m.purged.is_some_and(|p| p.index > 20)),
    )
    .await
    .is_ok_and(|r| r.is_ok());
    ensure!(purged, "leader did not purge its log after the snapshot");

    tracing::info!("--- heal node 3: it must install a snapshot (the log it needs is purged)");
    cluster.router.heal(3);
    let index = cluster.leader_applied(leader)?;
    let states = cluster.states(index).await?;
    ensure!(
        states.windows(2).all(|w| w[0] == w[1]),
        "node 3 differs after catch-up"
    );
    // openraft publishes the installed snapshot in its metrics just after the state is in
    // place; wait for that event rather than reading once.
    let mut metrics = cluster.node(3)?.metrics();
    let installed = tokio::time::timeout(
        WAIT,
        metrics.wait_for(|m| m.snapshot.is_some_and(|s| s.index > 20)),
    )
    .await
    .is_ok_and(|r| r.is_ok());
    let snapshot_index = cluster.node(3)?.status().snapshot_index;
    ensure!(installed, "node 3 has no snapshot: {snapshot_index:?}");

    for id in 1..=3 {
        cluster.kill(id).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_member_leaves_raft_and_its_id_is_never_reused() -> anyhow::Result<()> {
    init_tracing();
    let mut cluster = Cluster::new(test_config)?;
    three_nodes(&mut cluster).await?;
    let leader = cluster.wait_leader(None).await?;

    tracing::info!("--- remove node 3: state says left, raft membership shrinks to 2 voters");
    let removed = cluster
        .write(Command::new(20, "admin", Action::RemoveNode { node: 3 }))
        .await?;
    ensure!(removed.is_ok(), "{removed:?}");
    cluster.node(leader)?.remove(3).await?;
    let status = cluster.node(leader)?.status();
    ensure!(
        !status.voters.contains(&3) && !status.learners.contains(&3),
        "{status:?}"
    );
    cluster.kill(3).await?;
    let state = cluster
        .node(leader)?
        .read(|s| s.nodes.get(&3).map(|n| n.state));
    ensure!(state == Some(NodeState::Left), "{state:?}");

    tracing::info!("--- the cluster still commits with 2 voters; a new node gets id 4");
    let token = sha256_hex("second-secret");
    cluster
        .write(Command::new(
            21,
            "admin",
            Action::CreateToken {
                secret_sha256: token.clone(),
                prefix: "shoal1.test".to_string(),
                roles: Roles::WORKER,
                ttl_ms: 60_000,
                uses_max: 1,
            },
        ))
        .await??;
    let registered = cluster
        .write(Command::new(
            22,
            "system",
            Action::RegisterNode(registration(
                Admission::Token {
                    secret_sha256: token,
                },
                4,
                Roles::WORKER,
            )),
        ))
        .await?;
    ensure!(
        matches!(registered, Ok(Outcome::NodeRegistered { node_id: 4, .. })),
        "{registered:?}"
    );

    tracing::info!("--- a removed node's key cannot re-register");
    let again = cluster
        .write(Command::new(
            23,
            "system",
            Action::RegisterNode(registration(Admission::Bootstrap, 3, Roles::WORKER)),
        ))
        .await?;
    ensure!(again.is_err(), "{again:?}");

    for id in 1..=2 {
        cluster.kill(id).await?;
    }
    let _ = Duration::ZERO;
    Ok(())
}
