//! The state machine's journal of applied commands ([`shoal_raft::journal`]) on a real
//! openraft node with its redb store: the commands it holds replay to exactly the node's state
//! at the index it names (what a worker mirror does with a delta), and after a restart it
//! serves only what was applied since, never a window with a hole.

// Test code: a panic is the failure report (the workspace denies unwrap/expect elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use anyhow::{ensure, Context};
use common::*;
use shoal_raft::{Action, ClusterState, Command};

fn audit(n: u64) -> Command {
    Command::new(
        n,
        "test",
        Action::RecordAudit {
            tenant: None,
            action: format!("test.{n}"),
            resource: "r".to_string(),
            outcome: "ok".to_string(),
        },
    )
}

/// Applies the journal's commands after `from` to `base` (the state at `from`).
fn replay(
    node: &shoal_raft::RaftNode,
    base: &ClusterState,
    from: u64,
) -> anyhow::Result<(u64, ClusterState)> {
    let slice = node
        .read(|state| state.journal().after(from, usize::MAX))
        .context("the journal reaches back")?;
    let mut replayed = base.clone();
    for (_, bytes) in &slice.commands {
        let command: Command = shoal_raft::codec::decode(bytes)?;
        let _ = shoal_raft::apply::apply(&mut replayed, &command);
    }
    Ok((slice.to_index, replayed))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_journal_replays_to_the_nodes_state_and_after_a_restart_starts_at_its_snapshot(
) -> anyhow::Result<()> {
    init_tracing();
    let mut cluster = Cluster::new(test_config)?;
    let node = cluster.start(1).await?;
    bootstrap(&node).await?;
    cluster.wait_leader(None).await?;

    tracing::info!("--- writes; the journal names the applied index and replays to the state");
    for n in 0..20 {
        let _ = cluster.write(audit(n)).await?;
    }
    let (applied, state) = node.read(|state| (state.journal().applied_index(), state.clone()));
    let applied = applied.context("a node that applied entries knows its index")?;
    let machine = *node.subscribe_applied().borrow();
    ensure!(
        applied == machine,
        "journal {applied} vs state machine {machine}"
    );
    let (to, replayed) = replay(&node, &ClusterState::new(), 0)?;
    ensure!(to == applied);
    ensure!(
        replayed == state,
        "replaying the journal from the start gives the state"
    );
    ensure!(replayed.encode()? == state.encode()?);

    tracing::info!("--- from a mid point too");
    let middle = state.clone();
    for n in 20..25 {
        let _ = cluster.write(audit(n)).await?;
    }
    let (to, replayed) = replay(&node, &middle, applied)?;
    let now = node.read(|state| state.clone());
    ensure!(
        to == node
            .read(|state| state.journal().applied_index())
            .unwrap_or(0)
    );
    ensure!(replayed == now);

    tracing::info!("--- a snapshot, then a restart from disk: the window starts after it");
    let later = node
        .read(|state| state.journal().applied_index())
        .context("known")?;
    node.trigger_snapshot().await?;
    let deadline = Deadline::after(std::time::Duration::from_secs(30));
    while node.status().snapshot_index < Some(later) {
        ensure!(!deadline.passed(), "no snapshot at {later}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    cluster.kill(1).await?;
    let node = cluster.start(1).await?;
    cluster.wait_leader(None).await?;
    let _ = cluster.write(audit(99)).await?;
    ensure!(
        node.read(|state| state.journal().after(applied, usize::MAX))
            .is_none(),
        "the window does not reach back across the snapshot: a mirror that far behind gets the whole state"
    );
    let (_, replayed) = replay(&node, &now, later)?;
    ensure!(
        replayed == node.read(|state| state.clone()),
        "from the snapshot's index the window replays to the restarted state"
    );
    Ok(())
}
