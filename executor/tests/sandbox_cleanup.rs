//! Start-up cleanup of what an earlier run of the node left: a node SIGKILLed between the freeze
//! and the thaw of a v1 group kill leaves the workstation's group frozen, with its processes
//! (and its process-tree groups below it) frozen too. The next start must thaw, kill and remove
//! all of it.

// Test code: a panic is the failure report (the workspace denies unwrap/expect elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod run_support;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use run_support::{root_or_skip, TestHost};
use shoal_executor::sandbox::{self, SandboxLimits, SandboxSpawner, SandboxSpec};
use shoal_executor::spawner::{ProcessSpec, Spawner};

/// The file that freezes a group: v1's freezer hierarchy or v2's core `cgroup.freeze`.
fn freeze_file(cgroup_path: &str) -> Option<PathBuf> {
    let v1 = PathBuf::from("/sys/fs/cgroup/freezer")
        .join(cgroup_path)
        .join("freezer.state");
    let v2 = PathBuf::from("/sys/fs/cgroup")
        .join(cgroup_path)
        .join("cgroup.freeze");
    [v1, v2].into_iter().find(|path| path.exists())
}

/// The state letter of `/proc/<pid>/stat` (None once the pid is gone).
fn process_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")
        .and_then(|(_, rest)| rest.chars().next())
}

/// Thaws the group if the test fails before the cleanup under test did it (the TestHost's own
/// drop then removes everything).
struct ThawOnDrop(PathBuf, &'static str);

impl Drop for ThawOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::write(&self.0, self.1);
    }
}

#[tokio::test]
async fn start_up_cleanup_thaws_kills_and_removes_a_frozen_workstation_group() -> anyhow::Result<()>
{
    if !root_or_skip("start_up_cleanup_thaws_kills_and_removes_a_frozen_workstation_group") {
        return Ok(());
    }
    let host = TestHost::start("frozen")?;
    let sandbox = Arc::new(host.host.create(SandboxSpec {
        name: "ws-frozen".to_string(),
        limits: SandboxLimits {
            memory_bytes: 128 << 20,
            cpu_millis: 500,
            max_processes: 32,
            tmp_bytes: 16 << 20,
        },
        home: None,
    })?);
    let spawner = SandboxSpawner::new(Arc::clone(&sandbox));
    tracing::info!("--- a workstation process runs in its tree group below the workstation's");
    let sleeper = spawner.spawn(&ProcessSpec::new(["sleep", "1000"]), "ws-frozen/sleeper")?;
    let group = sandbox
        .cgroup_path()
        .ok_or_else(|| anyhow::anyhow!("no cgroup applied"))?
        .to_string();
    let freeze = freeze_file(&group).ok_or_else(|| anyhow::anyhow!("no freezer for {group}"))?;
    let (frozen, thawed) = if freeze.ends_with("freezer.state") {
        ("FROZEN", "THAWED")
    } else {
        ("1", "0")
    };
    let mut pids = sandbox.pids();
    pids.push(i32::try_from(sleeper.pid)?);
    anyhow::ensure!(
        pids.len() >= 2,
        "expected the init and the sleeper: {pids:?}"
    );

    tracing::info!("--- freeze the workstation's group, as a node killed mid-kill leaves it");
    let _thaw_guard = ThawOnDrop(freeze.clone(), thawed);
    std::fs::write(&freeze, frozen)?;
    let mut waited = 0;
    while std::fs::read_to_string(&freeze)?.trim() != frozen && waited < 200 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        waited += 1;
    }
    anyhow::ensure!(
        std::fs::read_to_string(&freeze)?.trim() == frozen,
        "the group did not freeze"
    );

    tracing::info!("--- the node's start-up cleanup thaws, kills and removes the whole tree");
    let removed = tokio::task::spawn_blocking({
        let prefix = host.host.cgroup_prefix().to_string();
        let work = host.state_path().join("work-none");
        move || sandbox::cleanup_stale(&prefix, &work)
    })
    .await??;
    assert_eq!(removed, 1, "one sandbox group (the workstation's) was left");
    assert!(
        !sandbox::cgroup_tree_exists(host.host.cgroup_prefix()),
        "a group of the frozen tree remains"
    );
    assert!(
        !freeze.exists(),
        "the frozen group {} remains",
        freeze.display()
    );
    let exit = tokio::time::timeout(Duration::from_secs(20), sleeper.exit).await??;
    assert_eq!(exit.signal, Some(libc::SIGKILL), "{exit:?}");
    for pid in &pids {
        let mut tries = 0;
        // The init is reaped by the sandbox's own reaping thread once the sandbox goes; until
        // then it may be a zombie, which is dead.
        while process_state(*pid).is_some_and(|state| state != 'Z') && tries < 500 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            tries += 1;
        }
        let state = process_state(*pid);
        assert!(
            state.is_none() || state == Some('Z'),
            "process {pid} survived the cleanup in state {state:?}"
        );
    }

    tracing::info!("--- the sandbox object itself then goes without error, leaving nothing");
    drop(spawner);
    let sandbox = Arc::try_unwrap(sandbox).map_err(|_| anyhow::anyhow!("sandbox still shared"))?;
    sandbox.destroy()?;
    host.assert_clean();
    Ok(())
}
