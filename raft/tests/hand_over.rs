//! Leadership hand-over before a leader stops (`RaftNode::hand_over_leadership`), in an
//! in-process 3-node cluster with real openraft and real redb: the leader hands over to an
//! up-to-date voter, the cluster keeps every committed write and accepts new ones, and the
//! old leader follows the new one. Nothing here is timed: each wait has a bound.

// Test code: a panic is the failure report (the workspace denies unwrap/expect elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use anyhow::ensure;
use common::*;
use shoal_raft::Action;
use shoal_raft::Command;
use shoal_raft::HandOver;
use shoal_raft::Outcome;

fn tenant(at_ms: u64, name: &str) -> Command {
    Command::new(
        at_ms,
        "admin",
        Action::CreateTenant {
            tenant: name.to_string(),
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_hands_over_to_an_up_to_date_voter_and_keeps_every_committed_write(
) -> anyhow::Result<()> {
    init_tracing();
    let mut cluster = Cluster::new(test_config)?;

    tracing::info!("--- three voters, node 1 leads, some writes committed");
    three_voters(&mut cluster).await?;
    ensure!(cluster.wait_leader(None).await? == 1);
    for i in 0..20 {
        let response = cluster.write(tenant(10 + i, &format!("t{i}"))).await?;
        ensure!(matches!(response, Ok(Outcome::Done)), "{response:?}");
    }

    tracing::info!("--- a follower has nothing to hand over");
    ensure!(cluster.node(2)?.hand_over_leadership().await? == HandOver::NotLeader);

    tracing::info!("--- node 1 hands over; another voter leads and node 1 follows it");
    let outcome = cluster.node(1)?.hand_over_leadership().await?;
    let HandOver::HandedTo(successor) = outcome else {
        anyhow::bail!("expected a hand-over, got {outcome:?}");
    };
    ensure!(successor != 1, "handed over to itself");
    let leader = cluster.wait_leader(Some(1)).await?;
    ensure!(
        leader == successor,
        "{leader} leads, {successor} was chosen"
    );
    ensure!(!cluster.node(1)?.status().is_leader);

    tracing::info!("--- every committed write survived; new writes commit, also through node 1");
    let response = cluster.write(tenant(40, "after")).await?;
    ensure!(matches!(response, Ok(Outcome::Done)), "{response:?}");
    let index = cluster.leader_applied(leader)?;
    let states = cluster.converged_states(index).await?;
    ensure!(states.len() == 3);
    let tenants = cluster.node(1)?.read(|state| state.tenants.len());
    ensure!(tenants >= 21, "only {tenants} tenants on the old leader");
    match cluster.node(1)?.write(tenant(41, "via-old")).await {
        Err(shoal_raft::WriteError::ForwardToLeader { leader_id, .. }) => {
            ensure!(
                leader_id == Some(leader),
                "old leader points at {leader_id:?}"
            );
        }
        other => anyhow::bail!("the old leader should forward writes: {other:?}"),
    }

    tracing::info!("--- the new leader hands over in turn (the old leader can lead again)");
    let outcome = cluster.node(leader)?.hand_over_leadership().await?;
    ensure!(
        matches!(outcome, HandOver::HandedTo(next) if next != leader),
        "{outcome:?}"
    );
    let next = cluster.wait_leader(Some(leader)).await?;
    let response = cluster.write(tenant(50, "third")).await?;
    ensure!(matches!(response, Ok(Outcome::Done)), "{response:?}");
    cluster
        .converged_states(cluster.leader_applied(next)?)
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_voter_keeps_leading_and_writing_when_nobody_can_take_over() -> anyhow::Result<()>
{
    init_tracing();
    let mut cluster = Cluster::new(test_config)?;
    let n1 = cluster.start(1).await?;
    bootstrap(&n1).await?;
    ensure!(n1.hand_over_leadership().await? == HandOver::NoOtherVoter);
    ensure!(n1.status().is_leader);
    let response = n1.write(tenant(5, "still-writing")).await?;
    ensure!(matches!(response, Ok(Outcome::Done)), "{response:?}");
    Ok(())
}
