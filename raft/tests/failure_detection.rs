//! Failure detection and fencing driven by a controlled clock: the pure detector and lease,
//! then a real single-node Raft whose leader task commits a silent node down and re-places its
//! workstations with the next generation.

// Test code: a panic is the failure report (the workspace denies unwrap/expect elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use anyhow::ensure;
use common::*;
use shoal_raft::clock::Clock;
use shoal_raft::clock::ManualClock;
use shoal_raft::command::sha256_hex;
use shoal_raft::command::Admission;
use shoal_raft::command::WorkstationRequest;
use shoal_raft::failure_detector::FailureDetector;
use shoal_raft::lease::Lease;
use shoal_raft::model::Limit;
use shoal_raft::model::NodeState;
use shoal_raft::model::Resources;
use shoal_raft::model::Roles;
use shoal_raft::model::WorkstationSpec;
use shoal_raft::soft_state::Heartbeat;
use shoal_raft::Action;
use shoal_raft::Command;
use shoal_raft::HeartbeatError;
use shoal_raft::Outcome;
use shoal_raft::RaftNode;

#[test]
fn detector_marks_down_only_after_grace_and_a_new_leader_gives_fresh_grace() {
    let mut detector = FailureDetector::new(10_000);
    detector.on_leader_start([1, 2, 3], 0);
    detector.heartbeat(1, 4_000, Heartbeat::default());
    assert!(
        detector.tick(10_000).is_empty(),
        "exactly at grace is not past it"
    );
    assert_eq!(detector.tick(10_001), vec![2, 3]);
    assert_eq!(detector.tick(14_001), vec![1, 2, 3]);
    // A new leader at 20 s does not trust the silence it did not observe.
    detector.on_leader_start([1, 2, 3], 20_000);
    assert!(detector.tick(29_999).is_empty());
    detector.forget(2);
    assert_eq!(detector.tick(30_001), vec![1, 3]);
}

#[test]
fn a_down_node_heartbeating_again_keeps_its_usage_and_a_silent_one_is_forgotten() {
    let mut detector = FailureDetector::new(10_000);
    detector.on_leader_start([1, 2, 3], 0);
    // Nodes 2 and 3 were committed down; node 2 heartbeats again (before it reports ready).
    detector.forget(2);
    detector.forget(3);
    detector.heartbeat(1, 11_000, Heartbeat::default());
    detector.heartbeat(2, 11_000, Heartbeat::default());
    detector.sync_nodes(&[1], 11_000);
    assert!(
        detector
            .soft_state()
            .get(2)
            .is_some_and(|live| live.last.is_some()),
        "the usage of a node heard while down is kept for when it is ready again"
    );
    assert!(detector.tick(11_000).is_empty());
    // Once ready (expected again) it keeps that usage rather than starting empty.
    detector.sync_nodes(&[1, 2], 11_500);
    assert!(detector
        .soft_state()
        .get(2)
        .is_some_and(|live| live.last.is_some()));
    // A node that is not expected and silent past the grace is forgotten, never listed.
    detector.heartbeat(3, 12_000, Heartbeat::default());
    detector.sync_nodes(&[1, 2], 22_001);
    assert!(detector.soft_state().get(3).is_none());
    assert_eq!(detector.tick(22_001), vec![1, 2]);
}

#[test]
fn lease_expires_after_its_duration_from_the_last_acknowledged_send() {
    let mut lease = Lease::new(5_000);
    assert!(lease.expired(0), "a lease never renewed is expired");
    lease.renew(1_000);
    assert!(!lease.expired(5_999));
    assert!(lease.expired(6_000));
    lease.renew(500); // a late ack of an older heartbeat never moves it back
    assert_eq!(lease.remaining_ms(1_000), 5_000);
    // The fencing margin: a node stops at most lease after its last acked send, the leader
    // marks it down no earlier than grace after it last heard from it.
    const _: () = assert!(
        shoal_raft::lease::LEASE_MS_DEFAULT + 1_000
            < shoal_raft::failure_detector::HEARTBEAT_GRACE_MS_DEFAULT
    );
}

fn ws(tenant: &str) -> WorkstationRequest {
    WorkstationRequest {
        tenant: tenant.into(),
        name: String::new(),
        spec: WorkstationSpec {
            reservation: Resources::new(1000, 1 << 30),
            limit: Limit {
                cpu_limit_millis: 1000,
                memory_limit_bytes: 1 << 30,
            },
            network: Default::default(),
        },
    }
}

/// Heartbeats `node` until the leader acknowledges it (the leader task confirms leadership
/// every tick); bounded.
async fn heartbeat_acked(raft: &RaftNode, node: u64) -> anyhow::Result<()> {
    let deadline = Deadline::after(WAIT);
    loop {
        match raft.heartbeat(node, Heartbeat::default()) {
            Ok(_) => return Ok(()),
            Err(HeartbeatError::Unconfirmed { .. }) if !deadline.passed() => {
                let mut rx = raft.metrics();
                let _ = tokio::time::timeout(Duration::from_millis(20), rx.changed()).await;
            }
            Err(e) => anyhow::bail!("heartbeat refused: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_commits_silent_node_down_and_replaces_its_workstations() -> anyhow::Result<()> {
    init_tracing();
    let clock = ManualClock::new(1_000_000);
    let mut cluster = Cluster::new(|id| {
        let mut config = test_config(id);
        config.failure_detection = true;
        config.leader_tick_ms = 20;
        config
    })?;
    cluster.clock = Arc::new(clock.clone());
    let raft = cluster.start(1).await?;
    bootstrap(&raft).await?;

    tracing::info!(
        "--- register worker node 2, place two workstations of one tenant (one per node)"
    );
    cluster
        .write(Command::new(
            1,
            "admin",
            Action::CreateToken {
                secret_sha256: sha256_hex("j"),
                prefix: "shoal1.test".to_string(),
                roles: Roles::WORKER,
                ttl_ms: 60_000,
                uses_max: 1,
            },
        ))
        .await??;
    cluster
        .write(Command::new(
            2,
            "system",
            Action::RegisterNode(registration(
                Admission::Token {
                    secret_sha256: sha256_hex("j"),
                },
                2,
                Roles::WORKER,
            )),
        ))
        .await??;
    let batch = cluster
        .write(Command::new(
            3,
            "key-a",
            Action::PlaceBatch {
                requests: vec![ws("t"), ws("t")],
                hints: Default::default(),
            },
        ))
        .await??;
    let Outcome::Batch(answers) = batch else {
        anyhow::bail!("{batch:?}")
    };
    let on_two = answers.iter().flatten().find(|p| p.node == 2).map(|p| p.id);
    let on_two = on_two.ok_or_else(|| anyhow::anyhow!("nothing on node 2: {answers:?}"))?;

    tracing::info!(
        "--- the leader task is leading (an acked heartbeat proves it gave fresh grace)"
    );
    heartbeat_acked(&raft, 1).await?;
    heartbeat_acked(&raft, 2).await?;

    tracing::info!("--- 6 s pass; only node 1 heartbeats");
    clock.advance_ms(6_000);
    heartbeat_acked(&raft, 1).await?;
    ensure!(
        raft.read(|s| s.nodes[&2].state) == NodeState::Ready,
        "down before grace"
    );

    tracing::info!("--- 5 s more: node 2 has been silent 11 s > 10 s grace, node 1 only 5 s");
    clock.advance_ms(5_000);
    let mut applied = raft.subscribe_applied();
    let down = tokio::time::timeout(
        WAIT,
        applied.wait_for(|_| raft.read(|s| s.nodes[&2].state == NodeState::Down)),
    )
    .await
    .is_ok_and(|r| r.is_ok());
    ensure!(down, "node 2 was not marked down");
    let (node_one, placement) =
        raft.read(|s| (s.nodes[&1].state, s.workstations[&on_two].placement()));
    ensure!(
        node_one == NodeState::Ready,
        "node 1 heartbeated and must stay ready"
    );
    let placement = placement.ok_or_else(|| anyhow::anyhow!("not re-placed"))?;
    ensure!(
        placement.node == 1 && placement.generation == 2,
        "{placement:?}"
    );
    ensure!(clock.monotonic_ms() == 1_011_000);

    cluster.kill(1).await?;
    Ok(())
}
