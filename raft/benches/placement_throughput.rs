//! Committed placements per second on a 3-node in-process cluster (test transport, real
//! openraft, real redb with fsync) with 5,000 simulated hosts, batched submission
//! (`PlaceBatch`). Baseline in the same run: the pure `apply` rate on one in-memory state.
//! Target: ≥ 37,500 placements/s (10× Nomad's C1M rate).
//!
//! Run: `cargo bench -p shoal-raft --bench placement_throughput`

// Measurement code run by hand: a panic is the failure report (the workspace denies
// unwrap/expect in the crates' code).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use common::*;
use shoal_raft::apply::apply;
use shoal_raft::clock::SystemClock;
use shoal_raft::testing::TestRouter;
use shoal_raft::Action;
use shoal_raft::Command;
use shoal_raft::NodeAddr;
use shoal_raft::Outcome;
use shoal_raft::RaftConfig;
use shoal_raft::RaftNode;

const N_HOSTS: u64 = 5_000;
const N_PLACEMENTS: u64 = 200_000;
const BATCH: u64 = 5_000;
const IN_FLIGHT: usize = 4;
const TARGET_PER_SEC: f64 = 37_500.0;

fn batch_command(batch_idx: u64) -> Command {
    let start = batch_idx * BATCH;
    Command::new(
        2,
        "bench",
        Action::PlaceBatch {
            requests: (start..start + BATCH).map(ws_request).collect(),
            hints: Default::default(),
        },
    )
}

fn placed(outcome: &shoal_raft::CommandResponse) -> u64 {
    match outcome {
        Ok(Outcome::Batch(answers)) => answers.iter().filter(|a| a.is_ok()).count() as u64,
        _ => 0,
    }
}

/// Writes through the current leader, following `ForwardToLeader` (leadership can move under
/// load: three replicas share two cores here).
async fn write(
    nodes: &[RaftNode],
    command: Command,
) -> anyhow::Result<shoal_raft::CommandResponse> {
    let mut target = 0usize;
    for _ in 0..2_000 {
        match nodes[target].write(command.clone()).await {
            Ok(response) => return Ok(response),
            Err(shoal_raft::WriteError::ForwardToLeader { leader_id, .. }) => {
                target = leader_id.map_or((target + 1) % nodes.len(), |id| (id - 1) as usize);
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            Err(e) => anyhow::bail!("write failed: {e}"),
        }
    }
    anyhow::bail!("no leader accepted the write")
}

/// The 1-minute load average (other builds share the two cores; figures depend on it).
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "unknown".to_string())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    println!("load average (1 min) at start: {}", load_average());
    println!("== baseline: pure apply of {N_PLACEMENTS} placements on one in-memory state, {N_HOSTS} hosts");
    let mut state = state_with_hosts(N_HOSTS);
    let watch = Stopwatch::start();
    let mut n_placed = 0;
    for b in 0..N_PLACEMENTS / BATCH {
        n_placed += placed(&apply(&mut state, &batch_command(b)));
    }
    let baseline = n_placed as f64 / watch.secs();
    println!(
        "baseline apply: {n_placed} placed in {:.2} s = {baseline:.0} placements/s",
        watch.secs()
    );
    drop(state);

    println!(
        "== 3-node cluster, redb on disk (fsync), in-process transport, election timeout override: {:?}",
        std::env::var("SHOAL_BENCH_ELECTION_MS").ok()
    );
    let dir = tempfile::tempdir()?;
    let router = TestRouter::new();
    let clock = Arc::new(SystemClock::new());
    let mut nodes = Vec::new();
    for id in 1..=3u64 {
        let mut config = RaftConfig::new(id);
        config.failure_detection = false;
        config.auto_membership = false;
        // Three replicas share two cores here: allow a slow commit instead of failing the run.
        config.write_timeout_ms = 30_000;
        // The election timeout must exceed the disk's fsync latency (a follower's heartbeat
        // waits behind its previous append in openraft 0.9); on a loaded shared disk the
        // default 90-120 ms is too short, so a run can set SHOAL_BENCH_ELECTION_MS=1000.
        if let Some(ms) = std::env::var("SHOAL_BENCH_ELECTION_MS")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
        {
            config.election_timeout_ms_min = ms;
            config.election_timeout_ms_max = ms * 2;
            config.heartbeat_interval_ms = ms / 3;
        }
        let node = RaftNode::start(
            config,
            &dir.path().join(format!("n{id}")),
            router.transport(id),
            clock.clone(),
        )
        .await?;
        router.register(id, node.rpc_handle());
        nodes.push(node);
    }
    let leader = nodes[0].clone();
    leader
        .bootstrap(
            NodeAddr::new("n1"),
            "bench",
            Default::default(),
            host_registration(1_000_000).clone_bootstrap(),
        )
        .await?;
    for id in 2..=3u64 {
        leader
            .add_learner(id, NodeAddr::new(format!("n{id}")))
            .await?;
        leader.promote(id).await?;
    }
    for command in init_commands().into_iter().skip(1) {
        write(&nodes, command).await??;
    }

    println!("registering {N_HOSTS} hosts (concurrent single-host commands)");
    let watch = Stopwatch::start();
    let mut set = tokio::task::JoinSet::new();
    for i in 0..N_HOSTS {
        if set.len() >= 64 {
            if let Some(r) = set.join_next().await {
                r??;
            }
        }
        // Through whichever node leads: an election under load must not fail the run.
        let nodes = nodes.clone();
        set.spawn(async move {
            write(
                &nodes,
                Command::new(1, "system", Action::RegisterNode(host_registration(i))),
            )
            .await?
            .map_err(anyhow::Error::from)?;
            anyhow::Ok(())
        });
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    println!(
        "registered {} nodes in {:.2} s",
        leader.read(|s| s.nodes.len()),
        watch.secs()
    );

    println!(
        "placing {N_PLACEMENTS} workstations in batches of {BATCH}, {IN_FLIGHT} batches in flight"
    );
    let cpu_before = cpu_secs();
    let watch = Stopwatch::start();
    let mut set = tokio::task::JoinSet::new();
    let mut n_placed = 0;
    for b in 0..N_PLACEMENTS / BATCH {
        if set.len() >= IN_FLIGHT {
            if let Some(r) = set.join_next().await {
                n_placed += r??;
            }
        }
        let nodes = nodes.clone();
        set.spawn(async move { anyhow::Ok(placed(&write(&nodes, batch_command(b)).await?)) });
    }
    while let Some(r) = set.join_next().await {
        n_placed += r??;
    }
    let secs = watch.secs();
    let rate = n_placed as f64 / secs;
    let index = nodes
        .iter()
        .filter_map(|n| n.status().last_applied_index)
        .max()
        .unwrap_or(0);
    for node in &nodes {
        node.wait_applied(index, std::time::Duration::from_secs(60))
            .await?;
    }
    let identical = {
        let encoded: Vec<Vec<u8>> = nodes
            .iter()
            .map(|n| n.read(|s| s.encode()))
            .collect::<Result<_, _>>()?;
        encoded.windows(2).all(|w| w[0] == w[1])
    };
    println!(
        "committed: {n_placed} placements in {secs:.2} s = {rate:.0} placements/s (process CPU {:.1} s on 2 cores)",
        cpu_secs() - cpu_before
    );
    println!(
        "ratio to baseline apply: {:.2}; ratio to target {TARGET_PER_SEC}: {:.2}",
        rate / baseline,
        rate / TARGET_PER_SEC
    );
    println!(
        "replicas byte-identical after the run: {identical}; final term {} (1 = no election)",
        leader.status().term
    );
    println!("load average (1 min) at end: {}", load_average());
    for node in &nodes {
        node.shutdown().await?;
    }
    Ok(())
}

trait CloneBootstrap {
    fn clone_bootstrap(self) -> shoal_raft::command::NodeRegistration;
}

impl CloneBootstrap for shoal_raft::command::NodeRegistration {
    fn clone_bootstrap(mut self) -> shoal_raft::command::NodeRegistration {
        self.admission = shoal_raft::command::Admission::Bootstrap;
        self.roles = shoal_raft::model::Roles::SERVER;
        self
    }
}
