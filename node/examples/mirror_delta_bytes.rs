//! What a worker mirror receives for one change, as a delta and as the whole state, for a
//! cluster of N workstations: the encoded `TAG_VIEW` answers, built the way the leader builds
//! them (the state machine's journal, `ClusterState::encode`). Prints bytes and the ratio.
//!
//! Run: `cargo run -p shoal-node --example mirror_delta_bytes [N ...]` (default 1000 10000).

// Measurement code run by hand: a panic is the failure report (the workspace denies
// unwrap/expect in the crates' code).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use shoal_node::mesh_rpc::{ViewHead, ViewReply, MIRROR_DELTA_BYTES_MAX};
use shoal_raft::command::{Admission, NodeRegistration, PlacementHints, WorkstationRequest};
use shoal_raft::journal::Journal;
use shoal_raft::model::WorkstationSpec;
use shoal_raft::model::{ClusterSettings, Limit, NetworkPolicy, Resources, Roles};
use shoal_raft::{Action, ClusterState, Command};

fn main() -> anyhow::Result<()> {
    let sizes: Vec<u64> = std::env::args()
        .skip(1)
        .map(|arg| arg.parse())
        .collect::<Result<_, _>>()?;
    let sizes = if sizes.is_empty() {
        vec![1_000, 10_000]
    } else {
        sizes
    };
    for n_workstations in sizes {
        measure(n_workstations)?;
    }
    Ok(())
}

fn create(i: u64) -> Command {
    Command::new(
        1_000 + i,
        "bench",
        Action::CreateWorkstation {
            request: WorkstationRequest {
                tenant: format!("tenant-{}", i % 100),
                name: format!("box-{i}"),
                spec: WorkstationSpec {
                    reservation: Resources::new(10, 1 << 20),
                    limit: Limit {
                        cpu_limit_millis: 20,
                        memory_limit_bytes: 2 << 20,
                    },
                    network: NetworkPolicy::None,
                },
            },
            hints: PlacementHints::default(),
        },
    )
}

fn measure(n_workstations: u64) -> anyhow::Result<()> {
    let mut state = ClusterState::new();
    let mut journal = Journal::default();
    let mut index = 0u64;
    // What the state machine does with each committed entry.
    let mut entry = |state: &mut ClusterState, command: Command| {
        index += 1;
        journal.record(index, Some(&command));
        (index, shoal_raft::apply::apply(state, &command))
    };
    let settings = ClusterSettings {
        tenant_workstations_max: 1_000_000,
        ..ClusterSettings::default()
    };
    let init = Action::InitCluster {
        cluster_id: "bench".to_string(),
        settings,
    };
    let register = Action::RegisterNode(NodeRegistration {
        admission: Admission::Bootstrap,
        wg_public_key: "bench-key".to_string(),
        endpoint: "127.0.0.1:1".to_string(),
        rpc_port: 1,
        api_addr: None,
        roles: Roles::SERVER_WORKER,
        capacity: Resources::new(1_000_000_000, 1 << 50),
        reserve: Resources::new(0, 0),
    });
    let mut before = 0;
    for action in [init, register] {
        let (at, answer) = entry(&mut state, Command::new(1, "bench", action));
        anyhow::ensure!(answer.is_ok(), "{answer:?}");
        before = at;
    }
    for i in 0..n_workstations {
        let (at, answer) = entry(&mut state, create(i));
        anyhow::ensure!(answer.is_ok(), "{answer:?}");
        before = at;
    }
    let (index, answer) = entry(&mut state, create(n_workstations));
    anyhow::ensure!(answer.is_ok(), "{answer:?}");
    let head = ViewHead {
        leader: 1,
        leader_mesh_addr: None,
        term: 1,
        applied: index,
        voters: vec![1],
    };
    let slice = journal
        .after(before, MIRROR_DELTA_BYTES_MAX)
        .ok_or_else(|| anyhow::anyhow!("the journal does not reach back"))?;
    let delta = ViewReply::Delta {
        head: head.clone(),
        from: before,
        commands: slice
            .commands
            .into_iter()
            .map(|(index, bytes)| (index, bytes.to_vec()))
            .collect(),
    };
    let whole = ViewReply::Snapshot {
        head,
        state: state.encode()?,
    };
    let delta_bytes = shoal_raft::codec::encode(&delta)?.len();
    let whole_bytes = shoal_raft::codec::encode(&whole)?.len();
    println!(
        "workstations={n_workstations} one create: delta {delta_bytes} bytes, whole state {whole_bytes} bytes, ratio {:.0}x",
        whole_bytes as f64 / delta_bytes as f64
    );
    Ok(())
}
