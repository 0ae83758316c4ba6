//! The chaos-found bug "a DELETE of a workstation during a full disk answered 500 and left the
//! workstation `pending` for good", against a real agent whose data dir is a small tmpfs that
//! the test fills up: the delete either completes or fails with a clear, retryable error, and
//! once the disk has room again the workstation is gone everywhere. Needs root (to mount the
//! tmpfs): skipped with a message otherwise, and a failure when CI=true.
//!
//! With state in Raft the delete now fails with a 503 naming the disk error (it was a 500
//! after the change, from the node-local audit write). The node's Raft does not recover by
//! itself when room comes back (openraft stops its core on a storage error); the test restarts
//! the node on the same data dir, after which the delete completes and state converges.

mod common;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use common::Agent;
use serde_json::json;
use tracing::info;

/// Size of the tmpfs data dir: room for Raft's redb file, the node's state and a workstation's
/// home volume, small enough to fill in a moment.
const TMPFS_SIZE: &str = "size=192m";
/// Chunk in which the filler file is written until the disk is full.
const FILL_CHUNK_BYTES: usize = 1 << 20;

/// A tmpfs mounted for the test, unmounted (lazily, so that a leftover open file cannot keep
/// it) when dropped, also on failure.
struct TmpfsMount {
    path: PathBuf,
    _parent: tempfile::TempDir,
}

impl TmpfsMount {
    fn new() -> anyhow::Result<TmpfsMount> {
        let parent = tempfile::tempdir().context("temp dir")?;
        let path = parent.path().join("data");
        std::fs::create_dir(&path)?;
        nix::mount::mount(
            Some("tmpfs"),
            &path,
            Some("tmpfs"),
            nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
            Some(TMPFS_SIZE),
        )
        .context("mounting a tmpfs")?;
        Ok(TmpfsMount {
            path,
            _parent: parent,
        })
    }
}

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.path, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Writes `path` until the file system refuses with ENOSPC; returns the bytes written.
fn fill(path: &Path) -> anyhow::Result<u64> {
    let mut file = std::fs::File::create(path)?;
    let chunk = vec![0xA5u8; FILL_CHUNK_BYTES];
    let mut written = 0u64;
    loop {
        match file.write(&chunk) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(err) if err.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(err) => return Err(err.into()),
        }
    }
    // Also the last partial block, so that not even a small write fits.
    let mut small = [0u8; 512];
    small.fill(1);
    while let Ok(n) = file.write(&small) {
        if n == 0 {
            break;
        }
        written += n as u64;
    }
    Ok(written)
}

fn root_or_skip() -> anyhow::Result<bool> {
    if nix::unistd::geteuid().is_root() {
        return Ok(true);
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        anyhow::bail!("this test needs root (to mount a tmpfs) and CI=true");
    }
    eprintln!("skipped: needs root to mount a tmpfs data dir");
    Ok(false)
}

#[tokio::test]
async fn a_delete_during_a_full_disk_completes_or_fails_cleanly_and_the_workstation_goes_away(
) -> anyhow::Result<()> {
    common::init_tracing();
    if !root_or_skip()? {
        return Ok(());
    }
    // Declared first so that it is dropped last, after the agent has stopped.
    let mount = TmpfsMount::new()?;
    let data_dir = mount.path.join("node");
    let agent = Agent::start(&data_dir, &["--bootstrap"], common::free_tcp_port())?;
    let admin = agent.client(&agent.admin_key()?);

    info!("--- create a workstation on the tmpfs-backed node");
    let created = admin
        .post(
            "/v1/workstations",
            &json!({"cpu_millis": 100, "memory_bytes": 64 << 20}),
        )
        .await?;
    assert_eq!(created.status, 201, "{}", created.text);
    let ws_id = created.body["id"].as_str().unwrap_or_default().to_string();
    let path = format!("/v1/workstations/{ws_id}");

    info!("--- fill the disk, then delete");
    let filler = mount.path.join("filler");
    let filled = fill(&filler)?;
    info!(bytes = filled, "the data dir's file system is full");
    let deleted = admin.delete(&path).await?;
    info!(status = deleted.status, body = %deleted.text, "delete on a full disk");
    assert!(
        deleted.status == 204 || deleted.status == 503,
        "a delete on a full disk completes (204) or fails with a retryable 503, not {}: {}",
        deleted.status,
        deleted.text
    );
    if deleted.status == 503 {
        assert_eq!(deleted.error_code(), "unavailable", "{}", deleted.text);
        assert!(
            !deleted.body["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .is_empty(),
            "{}",
            deleted.text
        );
    }

    info!("--- free the disk");
    std::fs::remove_file(&filler)?;
    let mut agent = agent;
    if deleted.status == 503 {
        // openraft stops its core for good on a storage write error, so this node's Raft
        // does not come back by itself once there is room (reported in notes/bugs.md); a
        // restart on the same data dir does.
        info!("--- restart the node on the same data dir");
        agent.kill9();
        agent = Agent::start(&data_dir, &[], common::free_tcp_port())?;
    }
    let admin = agent.client(&agent.admin_key()?);
    info!("--- the workstation is gone (the delete retried until it is)");
    let gone = common::eventually(Duration::from_secs(30), || {
        let admin = admin.clone();
        let path = path.clone();
        async move {
            let answer = admin.delete(&path).await?;
            match answer.status {
                204 | 404 => {}
                503 => return Ok(None),
                other => anyhow::bail!("delete answered {other}: {}", answer.text),
            }
            let shown = admin.get(&path).await?;
            Ok((shown.status == 404).then_some(()))
        }
    })
    .await;
    gone.context("the workstation did not go away once the disk had room")?;
    let listed = admin.get("/v1/workstations").await?;
    assert_eq!(listed.body, json!([]), "{}", listed.text);
    let audit = admin.get("/v1/audit").await?;
    assert!(
        audit
            .body
            .as_array()
            .is_some_and(|entries| entries.iter().any(|entry| {
                entry["action"] == json!("workstation.delete")
                    && entry["resource"] == json!(ws_id)
                    && entry["outcome"] == json!("ok")
            })),
        "{}",
        audit.text
    );
    let health = admin.anonymous().get("/healthz").await?;
    assert_eq!(health.status, 200);
    drop(agent);
    drop(mount);
    Ok(())
}
