//! State for 10,000 hosts and 100,000 workstations: memory of the state, snapshot build
//! (encode + CRC, and the redb write) and restore (CRC check + decode + index rebuild).
//! Targets: memory ≤ 1 GiB; build + restore ≤ 1 s.
//!
//! Run: `cargo bench -p shoal-raft --bench state_size`

// Measurement code run by hand: a panic is the failure report (the workspace denies
// unwrap/expect in the crates' code).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use shoal_raft::apply::apply;
use shoal_raft::state_format;
use shoal_raft::Action;
use shoal_raft::ClusterState;
use shoal_raft::Command;

const N_HOSTS: u64 = 10_000;
const N_WORKSTATIONS: u64 = 100_000;

fn main() -> anyhow::Result<()> {
    let rss_start = rss_bytes();
    let mut state = state_with_hosts(N_HOSTS);
    for b in 0..N_WORKSTATIONS / 1_000 {
        let requests = (b * 1_000..(b + 1) * 1_000).map(ws_request).collect();
        let answer = apply(
            &mut state,
            &Command::new(
                2,
                "bench",
                Action::PlaceBatch {
                    requests,
                    hints: Default::default(),
                },
            ),
        );
        anyhow::ensure!(answer.is_ok(), "{answer:?}");
    }
    anyhow::ensure!(
        state.workstations.len() as u64 == N_WORKSTATIONS,
        "placed {}",
        state.workstations.len()
    );
    let rss_state = rss_bytes();
    println!(
        "state: {} hosts, {} workstations, {} audit entries; RSS grew by {:.1} MiB (process RSS {:.1} MiB)",
        state.nodes.len(),
        state.workstations.len(),
        state.audit.len(),
        (rss_state.saturating_sub(rss_start)) as f64 / (1 << 20) as f64,
        rss_state as f64 / (1 << 20) as f64
    );

    let watch = Stopwatch::start();
    let framed = state_format::encode_checked(&state)?;
    let build = watch.secs();
    println!(
        "snapshot build (encode + crc32): {:.3} s, {:.1} MiB",
        build,
        framed.len() as f64 / (1 << 20) as f64
    );

    let dir = tempfile::tempdir()?;
    let db = redb::Database::create(dir.path().join("snap.redb"))?;
    let table: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("snapshot");
    let watch = Stopwatch::start();
    let write = db.begin_write()?;
    {
        let mut t = write.open_table(table)?;
        t.insert("current", framed.as_slice())?;
    }
    write.commit()?;
    let persist = watch.secs();
    println!("snapshot persist (redb insert + fsync commit): {persist:.3} s");

    let watch = Stopwatch::start();
    let restored = ClusterState::from_data(state_format::decode_checked(&framed)?);
    let restore = watch.secs();
    println!("snapshot restore (crc32 + decode + index rebuild): {restore:.3} s");
    anyhow::ensure!(restored == state, "restored state differs");
    println!(
        "=> build + restore = {:.3} s (target <= 1 s); with persist {:.3} s",
        build + restore,
        build + persist + restore
    );
    Ok(())
}
