//! Workstation processes through the executor core's `Spawner` seam, inside one long-lived
//! sandbox with a home volume.

// Test code: a panic is the failure report (the workspace denies unwrap/expect elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod run_support;

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use run_support::{processes_with_uid_in, root_or_skip, TestHost};
use shoal_executor::sandbox::{self, SandboxLimits, SandboxSpawner, SandboxSpec};
use shoal_executor::spawner::{ProcessSpec, Spawner};
use tokio::io::AsyncReadExt;

async fn read_all(fd: OwnedFd) -> anyhow::Result<String> {
    let mut receiver = tokio::net::unix::pipe::Receiver::from_owned_fd(fd)?;
    let mut text = String::new();
    tokio::time::timeout(Duration::from_secs(20), receiver.read_to_string(&mut text)).await??;
    Ok(text)
}

fn limits() -> SandboxLimits {
    SandboxLimits {
        memory_bytes: 256 << 20,
        cpu_millis: 1000,
        max_processes: 64,
        tmp_bytes: 64 << 20,
    }
}

#[tokio::test]
async fn workstation_processes_run_in_the_sandbox_with_their_home() -> anyhow::Result<()> {
    if !root_or_skip("workstation_processes_run_in_the_sandbox_with_their_home") {
        return Ok(());
    }
    let host = TestHost::start("ws-home")?;
    let home = host.state_path().join("homes").join("ws1");
    std::fs::create_dir_all(&home)?;
    let sentinel = host.state_path().join("sentinel");
    std::fs::write(&sentinel, "host data")?;
    let sandbox = Arc::new(host.host.create(SandboxSpec {
        name: "ws-1".to_string(),
        limits: limits(),
        home: Some(home.clone()),
    })?);
    let spawner = SandboxSpawner::new(Arc::clone(&sandbox));
    tracing::info!("--- a process writes into its home and reports where it runs");
    let script = format!(
        "id -u; pwd; echo data > $HOME/file; grep -E '^(Seccomp|CapEff):' /proc/self/status; \
         ln -s {} $HOME/link; ln -s /etc/shadow $HOME/shadow; echo pwned > $HOME/link 2>/dev/null; \
         touch /usr/x 2>/dev/null || echo usr-refused",
        sentinel.display()
    );
    let spawned = spawner.spawn(&ProcessSpec::new(["/bin/sh", "-c", &script]), "ws-1/p1")?;
    let stdout = read_all(spawned.stdout).await?;
    let exit = tokio::time::timeout(Duration::from_secs(20), spawned.exit).await??;
    assert!(exit.success(), "{exit:?}: {stdout}");
    let mut lines = stdout.lines();
    let uid: u32 = lines.next().unwrap_or_default().parse()?;
    assert_eq!(Some(uid), sandbox.uid());
    assert_eq!(lines.next(), Some(sandbox::HOME_IN_SANDBOX));
    assert!(stdout.contains("Seccomp:\t2"), "{stdout}");
    assert!(stdout.contains("CapEff:\t0000000000000000"), "{stdout}");
    assert!(stdout.contains("usr-refused"), "{stdout}");
    assert_eq!(std::fs::read_to_string(home.join("file"))?, "data\n");
    assert_eq!(std::fs::read_to_string(&sentinel)?, "host data");
    tracing::info!(
        "--- deleting the workstation removes sandbox and home, not what links point to"
    );
    drop(spawner);
    let sandbox = Arc::try_unwrap(sandbox).map_err(|_| anyhow::anyhow!("sandbox still shared"))?;
    sandbox.destroy()?;
    sandbox::remove_home(&home)?;
    assert!(!home.exists());
    assert_eq!(std::fs::read_to_string(&sentinel)?, "host data");
    assert!(std::fs::metadata("/etc/shadow").is_ok());
    host.assert_clean();
    Ok(())
}

#[tokio::test]
async fn killing_one_process_tree_spares_its_siblings_and_destroy_kills_all() -> anyhow::Result<()>
{
    if !root_or_skip("killing_one_process_tree_spares_its_siblings_and_destroy_kills_all") {
        return Ok(());
    }
    let host = TestHost::start("ws-trees")?;
    let sandbox = Arc::new(host.host.create(SandboxSpec {
        name: "ws-2".to_string(),
        limits: limits(),
        home: None,
    })?);
    let spawner = SandboxSpawner::new(Arc::clone(&sandbox));
    tracing::info!("--- start a long sleeper and a process that leaves a setsid daemon behind");
    let sleeper = spawner.spawn(&ProcessSpec::new(["sleep", "1000"]), "ws-2/sleeper")?;
    let daemonizer = spawner.spawn(
        &ProcessSpec::new([
            "/bin/sh",
            "-c",
            "setsid sh -c 'sleep 1000 </dev/null >/dev/null 2>&1 &' </dev/null >/dev/null 2>&1; echo spawned",
        ]),
        "ws-2/daemonizer",
    )?;
    let output = read_all(daemonizer.stdout).await?;
    assert_eq!(output, "spawned\n");
    let exit = tokio::time::timeout(Duration::from_secs(20), daemonizer.exit).await??;
    assert!(exit.success());
    daemonizer.tree.main_reaped();
    assert!(
        daemonizer.tree.is_alive()?,
        "the daemon should still run in the tree"
    );
    tracing::info!("--- kill the daemonizer's tree: the daemon dies, the sleeper lives");
    let killed = daemonizer.tree.kill()?;
    assert!(killed >= 1);
    assert!(!daemonizer.tree.is_alive()?);
    assert!(sleeper.tree.is_alive()?);
    tracing::info!("--- destroying the sandbox kills the sleeper too");
    drop(spawner);
    let sandbox = Arc::try_unwrap(sandbox).map_err(|_| anyhow::anyhow!("sandbox still shared"))?;
    let uid_pool = Arc::clone(host.host.uid_pool());
    sandbox.destroy()?;
    let exit = tokio::time::timeout(Duration::from_secs(20), sleeper.exit).await??;
    assert_eq!(exit.signal, Some(libc::SIGKILL));
    assert!(processes_with_uid_in(&uid_pool).is_empty());
    host.assert_clean();
    Ok(())
}

#[tokio::test]
async fn resizing_a_live_workstation_changes_its_limits_and_refuses_memory_below_usage(
) -> anyhow::Result<()> {
    if !root_or_skip(
        "resizing_a_live_workstation_changes_its_limits_and_refuses_memory_below_usage",
    ) {
        return Ok(());
    }
    let host = TestHost::start("ws-resize")?;
    let sandbox = Arc::new(host.host.create(SandboxSpec {
        name: "ws-3".to_string(),
        limits: SandboxLimits {
            memory_bytes: 256 << 20,
            cpu_millis: 1000,
            max_processes: 64,
            tmp_bytes: 128 << 20,
        },
        home: None,
    })?);
    let spawner = SandboxSpawner::new(Arc::clone(&sandbox));
    tracing::info!("--- a running process holds 48 MiB in /tmp (memory that cannot be reclaimed)");
    let filler = spawner.spawn(
        &ProcessSpec::new([
            "/bin/sh",
            "-c",
            "head -c 50331648 /dev/zero > /tmp/fill && echo filled && exec sleep 1000",
        ]),
        "ws-3/filler",
    )?;
    let mut stdout = tokio::net::unix::pipe::Receiver::from_owned_fd(filler.stdout)?;
    let mut line = [0u8; 7];
    tokio::time::timeout(Duration::from_secs(20), stdout.read_exact(&mut line)).await??;
    assert_eq!(&line, b"filled\n");
    let before = sandbox
        .cgroup_limits()
        .ok_or_else(|| anyhow::anyhow!("no cgroup limits"))?;
    assert_eq!(before.memory_bytes, 256 << 20);
    assert_eq!(before.cpu_millis, 1000);

    tracing::info!("--- raise memory and CPU, lower pids: the live cgroup's files change");
    let raised = sandbox::CgroupLimits {
        memory_bytes: 512 << 20,
        cpu_millis: 2500,
        max_processes: 48,
    };
    sandbox.update_limits(raised)?;
    assert_eq!(sandbox.cgroup_limits(), Some(raised));
    assert_eq!(sandbox.limits().memory_bytes, 512 << 20);

    tracing::info!("--- lower memory to 96 MiB (above the usage): applied");
    let lowered = sandbox::CgroupLimits {
        memory_bytes: 96 << 20,
        cpu_millis: 500,
        max_processes: 48,
    };
    sandbox.update_limits(lowered)?;
    assert_eq!(sandbox.cgroup_limits(), Some(lowered));

    tracing::info!("--- lower memory to 16 MiB (below the 48 MiB held): refused, nothing killed");
    let too_low = sandbox::CgroupLimits {
        memory_bytes: 16 << 20,
        cpu_millis: 500,
        max_processes: 48,
    };
    let refused = tokio::task::spawn_blocking({
        let sandbox = Arc::clone(&sandbox);
        move || sandbox.update_limits(too_low)
    })
    .await?;
    match refused {
        Err(sandbox::SandboxError::MemoryBelowUsage {
            limit_bytes,
            usage_bytes,
            ..
        }) => {
            assert_eq!(limit_bytes, 16 << 20);
            assert!(usage_bytes > 16 << 20, "usage {usage_bytes}");
        }
        other => anyhow::bail!("expected MemoryBelowUsage, got {other:?}"),
    }
    assert_eq!(
        sandbox.cgroup_limits(),
        Some(lowered),
        "the limit stays as it was"
    );
    assert_eq!(sandbox.limits().memory_bytes, 96 << 20);
    assert!(filler.tree.is_alive()?, "the resize killed nothing");
    assert_eq!(sandbox.stats().oom_kills, 0);

    tracing::info!("--- deleting the workstation leaves nothing");
    drop(spawner);
    let sandbox = Arc::try_unwrap(sandbox).map_err(|_| anyhow::anyhow!("sandbox still shared"))?;
    sandbox.destroy()?;
    let exit = tokio::time::timeout(Duration::from_secs(20), filler.exit).await??;
    assert_eq!(exit.signal, Some(libc::SIGKILL));
    host.assert_clean();
    Ok(())
}
