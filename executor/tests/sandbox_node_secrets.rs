//! Guests see nothing of the node: PID 1 of a sandbox is the clean init (argv `init`, no
//! environment, a memfd as its executable), not a copy of the node, and neither /proc nor the
//! mount table shows the node's argv, environment or data dir.

mod run_support;

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use run_support::{root_or_skip, sh, TestHost};
use shoal_executor::run::Verdict;
use shoal_executor::sandbox::{SandboxLimits, SandboxSpawner, SandboxSpec};
use shoal_executor::spawner::{ProcessSpec, Spawner};
use tokio::io::AsyncReadExt;

/// A secret in the node's environment, which no guest may read.
const SECRET_VARIABLE: &str = "SHOAL_TEST_NODE_SECRET";
const SECRET_VALUE: &str = "s3cr3t-node-marker-7d1f";

/// What a guest prints about PID 1, every process it can see, its mount table and environment.
const PROBE: &str = "echo \"pid1-cmdline=$(tr '\\0' ' ' < /proc/1/cmdline)\"; \
     echo \"pid1-comm=$(cat /proc/1/comm)\"; \
     echo \"pid1-exe=$(readlink /proc/1/exe 2>&1)\"; \
     echo \"pid1-environ=$(tr '\\0' ' ' < /proc/1/environ 2>&1)\"; \
     for f in /proc/[0-9]*/cmdline; do echo \"$f=$(tr '\\0' ' ' < $f 2>/dev/null)\"; done; \
     cat /proc/self/mountinfo; env";

fn limits() -> SandboxLimits {
    SandboxLimits {
        memory_bytes: 256 << 20,
        cpu_millis: 1000,
        max_processes: 64,
        tmp_bytes: 64 << 20,
    }
}

fn set_secret() {
    std::env::set_var(SECRET_VARIABLE, SECRET_VALUE);
}

/// Host paths and secrets a guest must not see: the node's environment secret, the node's
/// data dir, its executable (a host path) and its argv.
fn forbidden(host: &TestHost) -> anyhow::Result<Vec<String>> {
    let mut forbidden = vec![
        SECRET_VALUE.to_string(),
        host.state_path().to_string_lossy().into_owned(),
        std::env::current_exe()?.to_string_lossy().into_owned(),
    ];
    forbidden.extend(std::env::args().skip(1).filter(|arg| arg.len() > 3));
    Ok(forbidden)
}

fn assert_pid1_is_the_clean_init(output: &str) {
    assert!(
        output.lines().any(|line| line == "pid1-cmdline=init "),
        "{output}"
    );
    // exec from an fd names the process after the fd's file.
    assert!(
        output
            .lines()
            .any(|line| line == "pid1-comm=init" || line == "pid1-comm=memfd:init"),
        "{output}"
    );
}

#[tokio::test]
async fn a_run_sees_no_argv_environment_or_data_dir_of_the_node() -> anyhow::Result<()> {
    if !root_or_skip("a_run_sees_no_argv_environment_or_data_dir_of_the_node") {
        return Ok(());
    }
    set_secret();
    let host = TestHost::start("secrets-run")?;
    let result = host.run(&sh(PROBE), "secrets").await?;
    assert_eq!(result.verdict, Verdict::Ok, "{result:?}");
    let output = format!("{}{}", result.stdout, result.stderr);
    assert_pid1_is_the_clean_init(&output);
    for needle in forbidden(&host)? {
        assert!(!output.contains(&needle), "{needle:?} is visible: {output}");
    }
    host.assert_clean();
    Ok(())
}

async fn read_all(fd: OwnedFd) -> anyhow::Result<String> {
    let mut receiver = tokio::net::unix::pipe::Receiver::from_owned_fd(fd)?;
    let mut text = String::new();
    tokio::time::timeout(Duration::from_secs(20), receiver.read_to_string(&mut text)).await??;
    Ok(text)
}

#[tokio::test]
async fn a_workstation_sees_no_argv_environment_or_data_dir_of_the_node() -> anyhow::Result<()> {
    if !root_or_skip("a_workstation_sees_no_argv_environment_or_data_dir_of_the_node") {
        return Ok(());
    }
    set_secret();
    let host = TestHost::start("secrets-ws")?;
    let home = host.state_path().join("homes").join("ws1");
    std::fs::create_dir_all(&home)?;
    let sandbox = Arc::new(host.host.create(SandboxSpec {
        name: "ws-1".to_string(),
        limits: limits(),
        home: Some(home.clone()),
    })?);
    let spawner = SandboxSpawner::new(Arc::clone(&sandbox));
    let spawned = spawner.spawn(&ProcessSpec::new(["/bin/sh", "-c", PROBE]), "ws-1/p1")?;
    let stdout = read_all(spawned.stdout).await?;
    let exit = tokio::time::timeout(Duration::from_secs(20), spawned.exit).await??;
    assert!(exit.success(), "{exit:?}: {stdout}");
    assert_pid1_is_the_clean_init(&stdout);
    // The home is a bind mount of a directory of the data dir: its path in the host file
    // system is the mount's root field until homes get a file system of their own.
    let visible: String = stdout
        .lines()
        .filter(|line| !line.contains(" /home/user "))
        .collect::<Vec<_>>()
        .join("\n");
    for needle in forbidden(&host)? {
        assert!(
            !visible.contains(&needle),
            "{needle:?} is visible: {stdout}"
        );
    }

    tracing::info!("--- seen from the host, the sandbox's PID 1 is the clean init");
    let mut checked = 0;
    for pid in sandbox.pids() {
        let proc_dir = std::path::Path::new("/proc").join(pid.to_string());
        let Ok(cmdline) = std::fs::read(proc_dir.join("cmdline")) else {
            continue;
        };
        if cmdline != b"init\0" {
            continue;
        }
        checked += 1;
        let exe = std::fs::read_link(proc_dir.join("exe"))?;
        assert!(
            exe.to_string_lossy().starts_with("/memfd:init"),
            "init's executable is {exe:?}"
        );
        assert_eq!(std::fs::read(proc_dir.join("environ"))?, b"");
        let status = std::fs::read_to_string(proc_dir.join("status"))?;
        for set in ["CapPrm", "CapEff", "CapBnd"] {
            assert!(
                status.contains(&format!("{set}:\t0000000000000000")),
                "{set}: {status}"
            );
        }
    }
    assert_eq!(checked, 1, "the workstation's init was not found");
    drop(spawner);
    let sandbox = Arc::try_unwrap(sandbox).map_err(|_| anyhow::anyhow!("sandbox still shared"))?;
    sandbox.destroy()?;
    shoal_executor::sandbox::remove_home(&home)?;
    host.assert_clean();
    Ok(())
}
