//! A full disk under a node's data dir does not break the node for good: openraft stops its
//! core on the storage error, the node stops acknowledging writes and says why
//! (`storage_status`), and once the disk has room again it rebuilds its core in the same
//! process from the durable store and commits again, with its log intact. Real redb on a real
//! (small) tmpfs that the test fills up. Needs root (to mount the tmpfs): skipped with a
//! message otherwise, and a failure when CI=true.

// Test code: a panic is the failure report (the workspace denies unwrap/expect elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write as _;
use std::path::Path;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use anyhow::ensure;
use anyhow::Context as _;
use common::*;
use shoal_raft::Action;
use shoal_raft::Command;
use shoal_raft::WriteError;
use tracing::info;

/// Room for the redb file of a small cluster; small enough to fill in a moment.
const TMPFS_SIZE: &str = "size=16m";
/// Writes that may still fit into pages redb already owns after the disk is full.
const WRITES_UNTIL_FULL_MAX: u64 = 2_000;

/// A tmpfs mounted over a directory, unmounted (lazily) when dropped, also on failure.
struct TmpfsMount {
    path: PathBuf,
}

impl TmpfsMount {
    fn new(path: &Path) -> anyhow::Result<TmpfsMount> {
        std::fs::create_dir_all(path)?;
        nix::mount::mount(
            Some("tmpfs"),
            path,
            Some("tmpfs"),
            nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
            Some(TMPFS_SIZE),
        )
        .context("mounting a tmpfs")?;
        Ok(TmpfsMount {
            path: path.to_path_buf(),
        })
    }
}

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.path, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Writes `path` until the file system refuses with ENOSPC, down to the last small block.
fn fill(path: &Path) -> anyhow::Result<u64> {
    let mut file = std::fs::File::create(path)?;
    let mut written = 0u64;
    for chunk_bytes in [1usize << 20, 4096, 512, 1] {
        let chunk = vec![0xA5u8; chunk_bytes];
        loop {
            match file.write(&chunk) {
                Ok(0) => break,
                Ok(n) => written += n as u64,
                Err(err) if err.raw_os_error() == Some(nix::errno::Errno::ENOSPC as i32) => break,
                Err(err) => return Err(err.into()),
            }
        }
    }
    Ok(written)
}

fn root_or_skip() -> anyhow::Result<bool> {
    if nix::unistd::geteuid().is_root() {
        return Ok(true);
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        bail!("this test needs root (to mount a tmpfs) and CI=true");
    }
    eprintln!("skipped: needs root to mount a tmpfs data dir");
    Ok(false)
}

fn tenant(i: u64) -> Command {
    Command::new(
        i,
        "admin",
        Action::CreateTenant {
            tenant: format!("tenant-{i}"),
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_stops_acknowledging_and_the_node_commits_again_once_there_is_room_without_a_restart(
) -> anyhow::Result<()> {
    init_tracing();
    if !root_or_skip()? {
        return Ok(());
    }
    let mut cluster = Cluster::new(test_config)?;
    // Dropped after the cluster (declared later, dropped earlier) has stopped the node.
    let mount = TmpfsMount::new(&cluster.dir(1))?;
    let node = cluster.start(1).await?;
    bootstrap(&node).await?;

    info!("--- commit a few entries on the tmpfs-backed node");
    for i in 0..5 {
        cluster.write(tenant(i)).await??;
    }
    let before = node.status();
    let term_before = before.term;
    let log_before = before.last_log_index.context("no log")?;
    ensure!(node.storage_status().failed.is_none());

    info!("--- fill the disk, write until the store fails");
    let filler = mount.path.join("filler");
    let filled = fill(&filler)?;
    info!(bytes = filled, "the data dir's file system is full");
    let mut storage = node.subscribe_storage();
    let mut refused = None;
    for i in 100..100 + WRITES_UNTIL_FULL_MAX {
        match node.write(tenant(i)).await {
            Ok(_) => continue,
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let refused = refused.context("every write succeeded on a full disk")?;
    info!(error = %refused, "a write on the full disk was refused");
    let failed = tokio::time::timeout(WAIT, storage.wait_for(|s| s.failed.is_some()))
        .await
        .context("the node did not report the storage failure")??
        .clone();
    info!(status = ?failed, "storage status while the disk is full");

    info!("--- while the disk is full, nothing is acknowledged and the node says why");
    match node.write(tenant(10_000)).await {
        Err(WriteError::Stopped(message)) => {
            ensure!(message.contains("storage failed"), "{message}")
        }
        other => bail!("a write on a full disk answered {other:?}"),
    }
    ensure!(
        !node.status().is_leader,
        "a stopped core still claims to lead"
    );
    ensure!(
        node.status().leader.is_none(),
        "a stopped core still names a leader: {:?}",
        node.status()
    );
    let retried = tokio::time::timeout(WAIT, storage.wait_for(|s| s.attempts >= 2))
        .await
        .context("the node did not retry while the disk was full")??
        .clone();
    ensure!(
        retried.failed.is_some(),
        "recovered on a full disk: {retried:?}"
    );
    ensure!(
        retried.recoveries == 0,
        "recovered on a full disk: {retried:?}"
    );

    info!("--- free the disk: the node rebuilds its core by itself, in this process");
    std::fs::remove_file(&filler)?;
    let recovered = tokio::time::timeout(
        Duration::from_secs(60),
        storage.wait_for(|s| s.failed.is_none() && s.recoveries >= 1),
    )
    .await
    .context("the node did not recover once the disk had room")??
    .clone();
    info!(status = ?recovered, "storage recovered");

    info!("--- the same handle commits again, and the log is intact");
    let response = cluster.write(tenant(20_000)).await?;
    ensure!(response.is_ok(), "{response:?}");
    let after = node.status();
    ensure!(after.term >= term_before, "the term went back: {after:?}");
    ensure!(
        after.last_log_index.unwrap_or(0) > log_before,
        "the log did not grow past {log_before}: {after:?}"
    );
    let tenants_present = node.read(|state| {
        (0..5)
            .map(|i| format!("tenant-{i}"))
            .chain(std::iter::once("tenant-20000".to_string()))
            .all(|name| state.tenants.contains_key(&name))
    });
    ensure!(
        tenants_present,
        "entries committed before the failure are gone"
    );

    info!("--- the data dir still opens and verifies after a clean stop");
    cluster.kill(1).await?;
    let node = cluster.start(1).await?;
    let restarted = node.read(|state| state.tenants.contains_key("tenant-20000"));
    ensure!(
        restarted,
        "the entry committed after the recovery is not durable"
    );
    cluster.kill(1).await?;
    drop(mount);
    Ok(())
}

/// Writes through node 2 or 3, whichever leads, following `ForwardToLeader` between them (node
/// 1's stopped core still reports its last view, so the cluster-wide helpers cannot be used
/// while it is down).
async fn write_via_survivors(cluster: &Cluster, command: Command) -> anyhow::Result<()> {
    let deadline = Deadline::after(WAIT);
    loop {
        for id in [2, 3] {
            match cluster.node(id)?.write(command.clone()).await {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(refusal)) => bail!("refused: {refusal:?}"),
                Err(WriteError::ForwardToLeader { .. }) | Err(WriteError::Timeout { .. }) => {}
                Err(e) => bail!("write failed: {e}"),
            }
        }
        if deadline.passed() {
            bail!("no survivor accepted a write within {WAIT:?}");
        }
        // Wait for an election among the survivors (an event), bounded.
        let mut metrics = cluster.node(2)?.metrics();
        let _ = tokio::time::timeout(Duration::from_millis(100), metrics.changed()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_disk_fills_steps_out_and_rejoins_with_its_log_once_there_is_room(
) -> anyhow::Result<()> {
    init_tracing();
    if !root_or_skip()? {
        return Ok(());
    }
    let mut cluster = Cluster::new(test_config)?;
    let mount = TmpfsMount::new(&cluster.dir(1))?;

    info!("--- three voters, node 1 (on the tmpfs) leads, some writes committed");
    three_voters(&mut cluster).await?;
    let n1 = cluster.node(1)?.clone();
    ensure!(
        cluster.wait_leader(None).await? == 1,
        "node 1 does not lead"
    );
    for i in 0..10 {
        cluster.write(tenant(i)).await??;
    }
    let term_before = n1.status().term;

    info!("--- fill node 1's disk; its store fails and it stops acknowledging");
    let filler = mount.path.join("filler");
    fill(&filler)?;
    let mut storage = n1.subscribe_storage();
    for i in 100..100 + WRITES_UNTIL_FULL_MAX {
        if n1.write(tenant(i)).await.is_err() {
            break;
        }
    }
    tokio::time::timeout(WAIT, storage.wait_for(|s| s.failed.is_some()))
        .await
        .context("node 1 did not report the storage failure")??;
    ensure!(
        !n1.status().is_leader,
        "a stopped core still claims to lead"
    );

    info!("--- the survivors elect a leader and commit without node 1");
    write_via_survivors(&cluster, tenant(30_000)).await?;

    info!("--- free the disk: node 1 rebuilds its core, follows and catches up");
    std::fs::remove_file(&filler)?;
    tokio::time::timeout(
        Duration::from_secs(60),
        storage.wait_for(|s| s.failed.is_none() && s.recoveries >= 1),
    )
    .await
    .context("node 1 did not recover once the disk had room")??;
    write_via_survivors(&cluster, tenant(30_001)).await?;
    let leader = cluster.wait_leader(None).await?;
    let index = cluster.leader_applied(leader)?;
    let states = cluster.converged_states(index).await?;
    ensure!(states.len() == 3, "{} states", states.len());
    ensure!(n1.status().term >= term_before, "node 1's term went back");
    let complete = n1.read(|state| {
        (0..10)
            .chain([30_000, 30_001])
            .all(|i| state.tenants.contains_key(&format!("tenant-{i}")))
    });
    ensure!(
        complete,
        "node 1 lacks committed entries after its recovery"
    );

    info!("--- the cluster with node 1 back commits again");
    let response = cluster.write(tenant(30_002)).await?;
    ensure!(response.is_ok(), "{response:?}");
    for id in [1, 2, 3] {
        cluster.kill(id).await?;
    }
    drop(mount);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_stopped_while_its_disk_is_full_stops_cleanly_and_starts_again_from_its_data(
) -> anyhow::Result<()> {
    init_tracing();
    if !root_or_skip()? {
        return Ok(());
    }
    let mut cluster = Cluster::new(test_config)?;
    let mount = TmpfsMount::new(&cluster.dir(1))?;
    let node = cluster.start(1).await?;
    bootstrap(&node).await?;
    for i in 0..5 {
        cluster.write(tenant(i)).await??;
    }

    info!("--- fill the disk until the store fails; the node is retrying");
    let filler = mount.path.join("filler");
    fill(&filler)?;
    let mut storage = node.subscribe_storage();
    for i in 100..100 + WRITES_UNTIL_FULL_MAX {
        if node.write(tenant(i)).await.is_err() {
            break;
        }
    }
    tokio::time::timeout(
        WAIT,
        storage.wait_for(|s| s.failed.is_some() && s.attempts >= 1),
    )
    .await
    .context("the node did not report the storage failure")??;

    info!("--- stop it while the disk is still full: the stop finishes and frees the store");
    tokio::time::timeout(WAIT, cluster.kill(1))
        .await
        .context("the stop hung on a full disk")??;
    drop(node);

    info!("--- free the disk and start it again from the same data dir");
    std::fs::remove_file(&filler)?;
    let node = cluster.start(1).await?;
    ensure!(node.storage_status() == shoal_raft::StorageStatus::default());
    let response = cluster.write(tenant(20_000)).await?;
    ensure!(response.is_ok(), "{response:?}");
    let complete = node.read(|state| {
        (0..5)
            .chain([20_000])
            .all(|i| state.tenants.contains_key(&format!("tenant-{i}")))
    });
    ensure!(complete, "committed entries are missing after the restart");
    cluster.kill(1).await?;
    drop(mount);
    Ok(())
}
