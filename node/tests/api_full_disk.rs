//! A full disk under a node's data dir does not break the node for good, against a real agent
//! whose data dir is a small tmpfs that the test fills up. Chaos-found bugs: "a DELETE during a
//! full disk answered 500 and left the workstation `pending`", "the node's Raft stops for good
//! and every write answers 503 until a restart" and "a workstation deleted while its node's
//! disk is full leaks its processes and cgroup". The delete either completes or fails with a
//! clear, retryable 503; once the disk has room again the same agent process (no restart)
//! rebuilds its Raft core, commits writes again, and the deleted workstation has no process,
//! cgroup or directory left. Needs root (to mount the tmpfs): skipped with a message
//! otherwise, and a failure when CI=true.

// Test code: a panic is the failure report (the workspace denies unwrap/expect elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used)]

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
async fn after_a_full_disk_the_same_node_commits_again_and_a_workstation_deleted_meanwhile_leaves_nothing(
) -> anyhow::Result<()> {
    common::init_tracing();
    if !root_or_skip()? {
        return Ok(());
    }
    // Declared first so that it is dropped last, after the agent has stopped.
    let mount = TmpfsMount::new()?;
    let data_dir = mount.path.join("node");
    let agent = Agent::start(&data_dir, &["--bootstrap"], common::free_tcp_port())?;
    let pid_before = agent.pid();
    let admin = agent.client(&agent.admin_key()?);

    info!("--- create a workstation with a running process on the tmpfs-backed node");
    let created = admin
        .post(
            "/v1/workstations",
            &json!({"cpu_millis": 100, "memory_bytes": 64 << 20}),
        )
        .await?;
    assert_eq!(created.status, 201, "{}", created.text);
    let ws_id = created.body["id"].as_str().unwrap_or_default().to_string();
    let path = format!("/v1/workstations/{ws_id}");
    let started = admin
        .post(
            &format!("{path}/processes"),
            &json!({"argv": SLEEPER_ARGV, "restart": "always"}),
        )
        .await?;
    assert_eq!(started.status, 201, "{}", started.text);
    common::eventually(Duration::from_secs(30), || async {
        Ok((common::count_processes_with_argv(&SLEEPER_ARGV) == 1).then_some(()))
    })
    .await
    .context("the workstation's process did not start")?;
    let leftovers = Leftovers::of(&agent, &ws_id);
    assert!(
        leftovers.home.is_dir(),
        "no home volume at {}",
        leftovers.home.display()
    );
    if !leftovers.cgroups.is_empty() {
        info!(cgroups = ?leftovers.cgroups, "the workstation's cgroups");
    }

    info!("--- churn the Raft store, so that it owns written pages it can reuse on a full disk");
    for _ in 0..STORE_CHURN_WRITES {
        let minted = admin
            .post("/v1/tokens", &json!({"ttl_ms": 60_000, "uses": 1}))
            .await?;
        assert_eq!(minted.status, 201, "{}", minted.text);
    }

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

    if deleted.status == 204 {
        info!("--- the delete committed on the full disk: the teardown needs no disk space");
        let cleaned = common::eventually(Duration::from_secs(30), || {
            let leftovers = leftovers.clone();
            async move { Ok(leftovers.remaining().is_empty().then_some(())) }
        })
        .await;
        if cleaned.is_err() {
            anyhow::bail!("left behind on the full disk: {:?}", leftovers.remaining());
        }
        info!("--- write until Raft's store meets the full disk too");
        let mut refused = None;
        for _ in 0..WRITES_UNTIL_FULL_MAX {
            let minted = admin
                .post("/v1/tokens", &json!({"ttl_ms": 60_000, "uses": 1}))
                .await?;
            match minted.status {
                201 => {}
                503 => {
                    refused = Some(minted);
                    break;
                }
                other => anyhow::bail!("a write on a full disk answered {other}: {}", minted.text),
            }
        }
        let refused = refused.context("every write succeeded on a full disk")?;
        info!(body = %refused.text, "a write on the full disk was refused");
    }
    let refused = admin
        .post("/v1/tokens", &json!({"ttl_ms": 60_000, "uses": 1}))
        .await?;
    assert_eq!(refused.status, 503, "{}", refused.text);
    assert!(
        refused.text.contains("storage failed") || refused.text.contains("No space left"),
        "a refusal on a full disk says why: {}",
        refused.text
    );

    info!("--- the node says so: not ready, and its metrics show the storage failure");
    let anonymous = admin.anonymous();
    common::eventually(Duration::from_secs(30), || {
        let anonymous = anonymous.clone();
        async move {
            let ready = anonymous.get("/readyz").await?;
            let metrics = anonymous.get("/metrics").await?;
            Ok((ready.status == 503
                && ready.text.contains("storage failed")
                && metrics.text.contains("shoal_raft_storage_failed 1"))
            .then_some(()))
        }
    })
    .await
    .context("the node did not report its storage failure on /readyz and /metrics")?;

    info!("--- free the disk; the same agent process recovers by itself");
    std::fs::remove_file(&filler)?;
    let gone = common::eventually(Duration::from_secs(60), || {
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
    assert_eq!(agent.pid(), pid_before, "the agent was restarted");

    info!("--- nothing of the deleted workstation is left: process, cgroup, directories");
    let cleaned = common::eventually(Duration::from_secs(30), || {
        let leftovers = leftovers.clone();
        async move { Ok(leftovers.remaining().is_empty().then_some(())) }
    })
    .await;
    if cleaned.is_err() {
        anyhow::bail!("left behind: {:?}", leftovers.remaining());
    }

    info!("--- writes through the node succeed again (once it has rebuilt its Raft core)");
    common::eventually(Duration::from_secs(60), || {
        let admin = admin.clone();
        async move {
            let minted = admin
                .post("/v1/tokens", &json!({"ttl_ms": 60_000, "uses": 1}))
                .await?;
            match minted.status {
                201 => Ok(Some(())),
                503 => Ok(None),
                other => anyhow::bail!("a write answered {other}: {}", minted.text),
            }
        }
    })
    .await
    .context("writes through the node did not succeed again once the disk had room")?;
    let again = admin
        .post(
            "/v1/workstations",
            &json!({"cpu_millis": 100, "memory_bytes": 64 << 20}),
        )
        .await?;
    assert_eq!(again.status, 201, "{}", again.text);
    let again_path = format!(
        "/v1/workstations/{}",
        again.body["id"].as_str().unwrap_or_default()
    );
    let removed = admin.delete(&again_path).await?;
    assert_eq!(removed.status, 204, "{}", removed.text);
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
    let ready = admin.anonymous().get("/readyz").await?;
    assert_eq!(ready.status, 200, "{}", ready.text);
    let metrics = admin.anonymous().get("/metrics").await?;
    assert!(
        metrics.text.contains("shoal_raft_storage_failed 0")
            && !metrics.text.contains("shoal_raft_storage_recoveries 0"),
        "{}",
        metrics.text
    );
    assert_eq!(agent.pid(), pid_before, "the agent was restarted");
    drop(agent);
    drop(mount);
    Ok(())
}

/// Writes before the disk is filled: redb reuses the pages they free, so that a commit on the
/// full disk may still succeed (then the delete commits and the teardown meets the full disk);
/// if it does not, the delete fails with a 503 and commits once there is room. Both must end
/// with nothing left.
const STORE_CHURN_WRITES: usize = 200;
/// Writes that may still fit into pages the Raft store owns once the disk is full.
const WRITES_UNTIL_FULL_MAX: usize = 2_000;

/// The process a workstation runs in the test, found on the host by its exact argv.
const SLEEPER_ARGV: [&str; 2] = ["sleep", "31415926"];

/// What a workstation leaves on the host if its teardown did not finish.
#[derive(Clone, Debug)]
struct Leftovers {
    home: PathBuf,
    work: PathBuf,
    cgroups: Vec<PathBuf>,
}

impl Leftovers {
    fn of(agent: &Agent, ws_id: &str) -> Leftovers {
        let mut cgroups = Vec::new();
        if agent.cgroup_name.starts_with("shoal-") {
            if let Ok(controllers) = std::fs::read_dir("/sys/fs/cgroup") {
                for controller in controllers.flatten() {
                    cgroups.push(controller.path().join(&agent.cgroup_name).join(ws_id));
                }
            }
            cgroups.push(
                Path::new("/sys/fs/cgroup")
                    .join(&agent.cgroup_name)
                    .join(ws_id),
            );
        }
        Leftovers {
            home: agent.data_dir.join("homes").join(ws_id),
            work: agent.data_dir.join("sandbox").join("work").join(ws_id),
            cgroups,
        }
    }

    /// Everything of the workstation that still exists.
    fn remaining(&self) -> Vec<String> {
        let mut left: Vec<String> = self
            .cgroups
            .iter()
            .chain([&self.home, &self.work])
            .filter(|path| path.exists())
            .map(|path| path.display().to_string())
            .collect();
        let processes = common::count_processes_with_argv(&SLEEPER_ARGV);
        if processes > 0 {
            left.push(format!("{processes} process(es) {SLEEPER_ARGV:?}"));
        }
        left
    }
}
