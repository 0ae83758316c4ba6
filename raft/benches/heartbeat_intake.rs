//! Heartbeat intake at the leader for 10,000 simulated hosts at 1 Hz: each heartbeat is
//! decoded from its wire bytes (codec) and handed to `RaftNode::heartbeat` on a real one-node
//! leader. Reports CPU per simulated second as a percentage of one core (target ≤ 10 %).
//! Baseline in the same run: decoding alone.
//!
//! Run: `cargo bench -p shoal-raft --bench heartbeat_intake`

// Measurement code run by hand: a panic is the failure report (the workspace denies
// unwrap/expect in the crates' code).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use common::*;
use shoal_raft::clock::SystemClock;
use shoal_raft::codec;
use shoal_raft::model::Resources;
use shoal_raft::model::WorkstationId;
use shoal_raft::soft_state::Heartbeat;
use shoal_raft::soft_state::ProcessObserved;
use shoal_raft::soft_state::WorkstationUsage;
use shoal_raft::testing::TestRouter;
use shoal_raft::NodeAddr;
use shoal_raft::RaftConfig;
use shoal_raft::RaftNode;

const N_HOSTS: u64 = 10_000;
const ROUNDS: u64 = 20;
const WORKSTATIONS_PER_HOST: u64 = 10;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let frames: Vec<Vec<u8>> = (0..N_HOSTS)
        .map(|host| {
            let heartbeat = Heartbeat {
                used: Resources::new(12_000 + host % 1000, 40 * GIB),
                load_milli: 1_500,
                workstations: (0..WORKSTATIONS_PER_HOST)
                    .map(|w| WorkstationUsage {
                        id: WorkstationId(host * 100 + w),
                        generation: 1,
                        cpu_used_millis: 250,
                        memory_used_bytes: 300 << 20,
                        log_offset_next: 1_000_000 + w,
                        state: "running".into(),
                        processes: vec![ProcessObserved {
                            id: 1,
                            state: "running".into(),
                            exit_code: None,
                            signal: None,
                            restarts: 0,
                            reason: None,
                        }],
                    })
                    .collect(),
            };
            codec::encode(&heartbeat)
        })
        .collect::<Result<_, _>>()?;
    println!(
        "{N_HOSTS} hosts, {WORKSTATIONS_PER_HOST} workstations each, {} bytes per heartbeat",
        frames[0].len()
    );

    let dir = tempfile::tempdir()?;
    let router = TestRouter::new();
    let mut config = RaftConfig::new(1);
    config.auto_membership = false;
    config.failure_detection = false;
    config.leader_tick_ms = 100;
    let node = RaftNode::start(
        config,
        dir.path(),
        router.transport(1),
        Arc::new(SystemClock::new()),
    )
    .await?;
    router.register(1, node.rpc_handle());
    node.bootstrap(NodeAddr::new("n1"), "bench", Default::default(), {
        let mut r = host_registration(0);
        r.admission = shoal_raft::command::Admission::Bootstrap;
        r
    })
    .await?;
    // Wait for the leader task to confirm leadership (heartbeats are refused before that).
    let deadline = Stopwatch::start();
    while node.heartbeat(0, Heartbeat::default()).is_err() {
        anyhow::ensure!(deadline.secs() < 10.0, "leadership never confirmed");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }

    println!("== baseline: decode only, {ROUNDS} rounds");
    let cpu_before = cpu_secs();
    let watch = Stopwatch::start();
    let mut n = 0usize;
    for _ in 0..ROUNDS {
        for frame in &frames {
            let heartbeat: Heartbeat = codec::decode(frame)?;
            n += heartbeat.workstations.len();
        }
    }
    let decode_cpu =
        (cpu_secs() - cpu_before).max(watch.secs().min(cpu_secs() - cpu_before + 0.01));
    println!(
        "decode: {:.3} s wall for {} heartbeats ({n} workstation reports)",
        watch.secs(),
        ROUNDS * N_HOSTS
    );

    println!("== decode + RaftNode::heartbeat at the leader, {ROUNDS} rounds");
    let cpu_before = cpu_secs();
    let watch = Stopwatch::start();
    let mut refused = 0u64;
    for _ in 0..ROUNDS {
        for (host, frame) in frames.iter().enumerate() {
            let heartbeat: Heartbeat = codec::decode(frame)?;
            if node.heartbeat(host as u64, heartbeat).is_err() {
                refused += 1;
            }
        }
    }
    let wall = watch.secs();
    let cpu = cpu_secs() - cpu_before;
    let per_sim_second = wall / ROUNDS as f64;
    println!("intake: {wall:.3} s wall, {cpu:.2} s process CPU (includes Raft's own timers) for {} heartbeats; {refused} refused (leadership reconfirmation window)", ROUNDS * N_HOSTS);
    println!(
        "=> one simulated second of 10,000 hosts at 1 Hz costs {:.1} ms = {:.2} % of one core (target <= 10 %); decode alone {:.2} %",
        per_sim_second * 1000.0,
        per_sim_second * 100.0,
        decode_cpu / ROUNDS as f64 * 100.0
    );
    println!(
        "tracked nodes in soft state: {}",
        node.with_soft_state(|s| s.iter().count())
    );
    node.shutdown().await?;
    Ok(())
}
