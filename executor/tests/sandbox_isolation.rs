//! What a sandboxed program can and cannot do.

// Test code: a panic is the failure report (the workspace denies unwrap/expect elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod run_support;

use run_support::{code_request, root_or_skip, sh, TestHost};
use shoal_executor::run::Verdict;

#[tokio::test]
async fn program_has_no_capabilities_no_new_privs_and_seccomp() -> anyhow::Result<()> {
    if !root_or_skip("program_has_no_capabilities_no_new_privs_and_seccomp") {
        return Ok(());
    }
    let host = TestHost::start("status")?;
    let result = host
        .run(&sh("grep -E '^(Uid|CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs|Seccomp):' /proc/self/status"), "status")
        .await?;
    assert_eq!(result.verdict, Verdict::Ok, "{result:?}");
    let field = |name: &str| -> String {
        result
            .stdout
            .lines()
            .find(|line| line.starts_with(&format!("{name}:")))
            .map(|line| {
                line.split_whitespace()
                    .nth(1)
                    .unwrap_or_default()
                    .to_string()
            })
            .unwrap_or_default()
    };
    for capability_set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(
            field(capability_set),
            "0000000000000000",
            "{capability_set}: {}",
            result.stdout
        );
    }
    assert_eq!(field("NoNewPrivs"), "1");
    assert_eq!(field("Seccomp"), "2");
    let uid: u32 = field("Uid").parse()?;
    assert!(
        host.host.uid_pool().contains(uid),
        "uid {uid} is not from the node's range"
    );
    tracing::info!("--- calls a non-root uid could make are refused: only the filter stops them");
    let result = host
        .run(
            &code_request(
                "python",
                "import ctypes, os, socket\nlibc = ctypes.CDLL(None, use_errno=True)\n\
                 for name, call in [('personality', lambda: libc.personality(0x0400000)), \
                 ('clone-newuser', lambda: libc.syscall(56, 0x10000000 | 17, 0, 0, 0, 0)), \
                 ('socket-vsock', lambda: libc.socket(40, 1, 0))]:\n\
                 \x20   rc = call()\n\
                 \x20   if rc == 0 and name == 'clone-newuser': os._exit(0)\n\
                 \x20   print(name, 'ok' if rc >= 0 else os.strerror(ctypes.get_errno()))\n",
            ),
            "seccomp",
        )
        .await?;
    assert_eq!(result.verdict, Verdict::Ok, "{result:?}");
    for call in ["personality", "clone-newuser", "socket-vsock"] {
        assert!(
            result
                .stdout
                .contains(&format!("{call} Operation not permitted")),
            "{call} was not refused: {}",
            result.stdout
        );
    }
    host.assert_clean();
    Ok(())
}

#[tokio::test]
async fn program_cannot_see_host_processes() -> anyhow::Result<()> {
    if !root_or_skip("program_cannot_see_host_processes") {
        return Ok(());
    }
    let host = TestHost::start("pidns")?;
    let own_pid = std::process::id();
    let script = format!("ls /proc | grep -cE '^[0-9]+$'; kill -0 {own_pid} 2>/dev/null && echo visible || echo hidden");
    let result = host.run(&sh(&script), "pidns").await?;
    assert_eq!(result.verdict, Verdict::Ok, "{result:?}");
    let mut lines = result.stdout.lines();
    let n_processes: usize = lines.next().unwrap_or_default().trim().parse()?;
    assert!(n_processes <= 4, "sandbox sees {n_processes} processes");
    assert_eq!(lines.next(), Some("hidden"));
    host.assert_clean();
    Ok(())
}

#[tokio::test]
async fn program_can_write_only_tmp() -> anyhow::Result<()> {
    if !root_or_skip("program_can_write_only_tmp") {
        return Ok(());
    }
    let host = TestHost::start("writes")?;
    let script = "for path in /tmp/ok /dev/shm/ok /x /usr/x /usr/bin/x /etc/x /etc/passwd /home/x /proc/x /dev/x /dev/null2; do \
                  if echo data > $path 2>/dev/null; then echo \"$path writable\"; else echo \"$path refused\"; fi; done; \
                  test -e /etc/shadow && echo shadow-visible; test -e /etc/gshadow && echo gshadow-visible; true";
    let result = host.run(&sh(script), "writes").await?;
    assert_eq!(result.verdict, Verdict::Ok, "{result:?}");
    assert_eq!(result.stdout.lines().count(), 11, "{}", result.stdout);
    for line in result.stdout.lines() {
        let writable = line.ends_with("writable");
        let expected = line.starts_with("/tmp/") || line.starts_with("/dev/shm/");
        assert_eq!(writable, expected, "unexpected: {line}");
    }
    assert!(
        !result.stdout.contains("shadow-visible"),
        "{}",
        result.stdout
    );
    tracing::info!(
        "--- the mounts themselves are read-only (file modes alone would refuse the writes above), \
         and a remount read-write is refused"
    );
    let code = "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n\
                for path in ['/', '/usr', '/etc', '/dev', '/proc/sys', '/tmp']:\n\
                \x20   print(path, 'ro' if os.statvfs(path).f_flag & os.ST_RDONLY else 'rw')\n\
                for path in [b'/', b'/usr', b'/etc']:\n\
                \x20   rc = libc.mount(None, path, None, 0x20 | 0x1000, None)\n\
                \x20   print('remount', path.decode(), 'ok' if rc == 0 else os.strerror(ctypes.get_errno()))\n";
    let result = host.run(&code_request("python", code), "remount").await?;
    assert_eq!(result.verdict, Verdict::Ok, "{result:?}");
    for path in ["/", "/usr", "/etc", "/dev", "/proc/sys"] {
        assert!(
            result
                .stdout
                .lines()
                .any(|line| line == format!("{path} ro")),
            "{path} is not a read-only mount: {}",
            result.stdout
        );
    }
    assert!(result.stdout.lines().any(|line| line == "/tmp rw"));
    assert!(!result.stdout.contains(" ok"), "{}", result.stdout);
    host.assert_clean();
    Ok(())
}

#[tokio::test]
async fn program_cannot_reach_the_network_or_host_loopback_services() -> anyhow::Result<()> {
    if !root_or_skip("program_cannot_reach_the_network_or_host_loopback_services") {
        return Ok(());
    }
    let host = TestHost::start("network")?;
    tracing::info!("--- a service listens on the host's 127.0.0.1");
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let port = listener.local_addr()?.port();
    let code = format!(
        "import socket\n\
         for address in [('127.0.0.1', {port}), ('1.1.1.1', 80), ('10.0.0.1', 22)]:\n\
         \x20   try:\n\
         \x20       socket.create_connection(address, timeout=2)\n\
         \x20       print(address, 'connected')\n\
         \x20   except OSError as error:\n\
         \x20       print(address, 'refused', error.errno)\n\
         server = socket.socket()\n\
         server.bind(('127.0.0.1', 0))\n\
         server.listen()\n\
         client = socket.create_connection(server.getsockname(), timeout=2)\n\
         print('own loopback works')\n"
    );
    let result = host.run(&code_request("python", &code), "network").await?;
    assert_eq!(result.verdict, Verdict::Ok, "{result:?}");
    assert!(!result.stdout.contains("connected"), "{}", result.stdout);
    assert_eq!(
        result.stdout.matches("refused").count(),
        3,
        "{}",
        result.stdout
    );
    assert!(
        result.stdout.contains("own loopback works"),
        "{}",
        result.stdout
    );
    match listener.accept() {
        Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("the host's listener was reached: {other:?}"),
    }
    host.assert_clean();
    Ok(())
}

#[tokio::test]
async fn double_forked_setsid_daemon_does_not_outlive_its_run() -> anyhow::Result<()> {
    if !root_or_skip("double_forked_setsid_daemon_does_not_outlive_its_run") {
        return Ok(());
    }
    let host = TestHost::start("daemon")?;
    tracing::info!("--- the program starts a setsid daemon (double fork) and exits at once");
    let script = "setsid sh -c 'sleep 1000 </dev/null >/dev/null 2>&1 &' </dev/null >/dev/null 2>&1 & \
                  sleep 0.3; ps -eo pid,sid,comm 2>/dev/null || ls /proc | grep -cE '^[0-9]+$'; echo started";
    let result = host.run(&sh(script), "daemon").await?;
    assert_eq!(result.verdict, Verdict::Ok, "{result:?}");
    assert!(result.stdout.contains("started"));
    tracing::info!("--- nothing with a sandbox uid is alive on the host afterwards");
    host.assert_clean();
    Ok(())
}

#[tokio::test]
async fn planted_symlinks_and_hardlinks_do_not_reach_host_files() -> anyhow::Result<()> {
    if !root_or_skip("planted_symlinks_and_hardlinks_do_not_reach_host_files") {
        return Ok(());
    }
    use std::os::unix::fs::MetadataExt;
    let host = TestHost::start("links")?;
    let secrets = host.state_path().join("secrets");
    std::fs::create_dir_all(&secrets)?;
    let sentinel = secrets.join("sentinel");
    std::fs::write(&sentinel, "host data")?;
    let home = host.state_path().join("homes").join("ws1");
    std::fs::create_dir_all(&home)?;
    let limits = shoal_executor::sandbox::SandboxLimits {
        memory_bytes: 256 << 20,
        cpu_millis: 1000,
        max_processes: 64,
        tmp_bytes: 64 << 20,
    };
    let spec = || shoal_executor::sandbox::SandboxSpec {
        name: "ws-links".to_string(),
        limits,
        home: Some(home.clone()),
    };
    tracing::info!("--- a workstation plants links to host paths in its home");
    let sandbox = std::sync::Arc::new(host.host.create(spec())?);
    let spawner = shoal_executor::sandbox::SandboxSpawner::new(std::sync::Arc::clone(&sandbox));
    let script = format!(
        "ln -s {secrets} $HOME/dir-link; ln -s {sentinel} $HOME/file-link; ln -s / $HOME/root; \
         ln /usr/bin/env $HOME/hard 2>/dev/null || echo hardlink-refused; mkdir -p $HOME/a/b; \
         ln -s {secrets} $HOME/a/b/deep",
        secrets = secrets.display(),
        sentinel = sentinel.display()
    );
    let spawned = shoal_executor::spawner::Spawner::spawn(
        &spawner,
        &shoal_executor::spawner::ProcessSpec::new(["/bin/sh", "-c", &script]),
        "ws-links/p1",
    )?;
    let exit = tokio::time::timeout(std::time::Duration::from_secs(20), spawned.exit).await??;
    assert!(exit.success(), "{exit:?}");
    assert!(
        home.join("dir-link").is_symlink(),
        "the links were not planted"
    );
    drop(spawner);
    let sandbox =
        std::sync::Arc::try_unwrap(sandbox).map_err(|_| anyhow::anyhow!("sandbox still shared"))?;
    sandbox.destroy()?;

    tracing::info!("--- the host re-creates the sandbox (chown of the home) and removes the home");
    let sandbox = host.host.create(spec())?;
    let uid = sandbox.uid().unwrap_or_default();
    assert_eq!(std::fs::symlink_metadata(&home)?.uid(), uid);
    sandbox.destroy()?;
    tracing::info!("--- a link planted in place of the home itself is not followed by the chown");
    let other_home = host.state_path().join("homes").join("ws2");
    std::os::unix::fs::symlink(&secrets, &other_home)?;
    let sandbox = host.host.create(shoal_executor::sandbox::SandboxSpec {
        name: "ws-links2".to_string(),
        limits,
        home: Some(other_home.clone()),
    });
    drop(sandbox);
    shoal_executor::sandbox::remove_home(&home)?;
    shoal_executor::sandbox::remove_home(&other_home)?;
    assert!(!home.exists());
    assert_eq!(std::fs::read_to_string(&sentinel)?, "host data");
    for path in [&secrets, &sentinel] {
        let metadata = std::fs::metadata(path)?;
        assert_eq!(
            (metadata.uid(), metadata.gid()),
            (0, 0),
            "{} changed owner",
            path.display()
        );
    }
    assert!(std::fs::metadata("/usr/bin/env").is_ok());
    host.assert_clean();
    Ok(())
}

#[tokio::test]
async fn concurrent_runs_get_distinct_uids() -> anyhow::Result<()> {
    if !root_or_skip("concurrent_runs_get_distinct_uids") {
        return Ok(());
    }
    let host = TestHost::start("uids")?;
    let request = sh("id -u; sleep 0.3");
    let first = host.run(&request, "uid1");
    let second = host.run(&request, "uid2");
    let (first, second) = tokio::join!(first, second);
    let (first, second) = (first?, second?);
    assert_eq!(first.verdict, Verdict::Ok, "{first:?}");
    assert_eq!(second.verdict, Verdict::Ok, "{second:?}");
    assert_ne!(first.stdout, second.stdout);
    host.assert_clean();
    Ok(())
}

#[tokio::test]
async fn minimal_dev_has_working_memory_devices_only() -> anyhow::Result<()> {
    if !root_or_skip("minimal_dev_has_working_memory_devices_only") {
        return Ok(());
    }
    let host = TestHost::start("dev")?;
    let script =
        "echo x > /dev/null && head -c 4 /dev/urandom | wc -c && head -c 3 /dev/zero | wc -c \
                  && (echo x > /dev/full) 2>/dev/null || echo full-refused; ls /dev | tr '\\n' ' '";
    let result = host.run(&sh(script), "dev").await?;
    assert_eq!(result.verdict, Verdict::Ok, "{result:?}");
    let lines: Vec<&str> = result.stdout.lines().collect();
    assert_eq!(
        lines.first().map(|line| line.trim()),
        Some("4"),
        "{}",
        result.stdout
    );
    assert_eq!(
        lines.get(1).map(|line| line.trim()),
        Some("3"),
        "{}",
        result.stdout
    );
    assert_eq!(lines.get(2).copied(), Some("full-refused"));
    let listed: Vec<&str> = lines.get(3).unwrap_or(&"").split_whitespace().collect();
    assert_eq!(
        listed,
        ["fd", "full", "null", "random", "shm", "stderr", "stdin", "stdout", "urandom", "zero"]
    );
    host.assert_clean();
    Ok(())
}

#[tokio::test]
async fn every_run_gets_a_fresh_network_namespace_with_loopback_up() -> anyhow::Result<()> {
    if !root_or_skip("every_run_gets_a_fresh_network_namespace_with_loopback_up") {
        return Ok(());
    }
    let host = TestHost::start("netns")?;
    let host_namespace = std::fs::read_link("/proc/self/ns/net")?;
    let code = "import os, socket\n\
                print(os.readlink('/proc/self/ns/net'))\n\
                server = socket.socket()\n\
                server.bind(('127.0.0.1', 0))\n\
                server.listen()\n\
                socket.create_connection(server.getsockname(), timeout=2)\n\
                print('loopback up')\n";
    let mut seen = Vec::new();
    tracing::info!("--- five runs in a row (made ahead of time or at clone, each used once)");
    for index in 0..5 {
        let result = host
            .run(&code_request("python", code), &format!("netns{index}"))
            .await?;
        assert_eq!(result.verdict, Verdict::Ok, "{result:?}");
        let mut lines = result.stdout.lines();
        let namespace = lines.next().unwrap_or_default().to_string();
        assert_eq!(lines.next(), Some("loopback up"), "{}", result.stdout);
        assert_ne!(std::path::Path::new(&namespace), host_namespace);
        assert!(!seen.contains(&namespace), "namespace {namespace} reused");
        seen.push(namespace);
    }
    host.assert_clean();
    Ok(())
}

#[tokio::test]
async fn runs_share_only_the_read_only_root_and_get_their_own_proc_and_tmp() -> anyhow::Result<()> {
    if !root_or_skip("runs_share_only_the_read_only_root_and_get_their_own_proc_and_tmp") {
        return Ok(());
    }
    let host = TestHost::start("shared-root")?;
    tracing::info!("--- a run's mount table: the shared read-only root, its own /proc and /tmp");
    let first = host
        .run(
            &sh("cat /proc/self/mountinfo; echo secret > /tmp/left-behind; \
                 touch /left-behind 2>/dev/null || echo root-refused"),
            "shared-root-1",
        )
        .await?;
    assert_eq!(first.verdict, Verdict::Ok, "{first:?}");
    let state = host.state_path().to_string_lossy().into_owned();
    let mut mount_points = Vec::new();
    for line in first.stdout.lines().filter(|line| *line != "root-refused") {
        // id parent major:minor root mount-point options [optional...] - type source super
        let fields: Vec<&str> = line.split(' ').collect();
        let root = fields.get(3).copied().unwrap_or_default();
        let point = fields.get(4).copied().unwrap_or_default().to_string();
        let options = fields.get(5).copied().unwrap_or_default();
        // The root field is the mounted directory's path in its own file system: a bind
        // mount of a data-dir directory would show the host path here.
        assert!(
            !root.contains(&state) && !line.contains(&state),
            "a host path is visible: {line}"
        );
        let writable = point == "/tmp" || point == "/proc";
        assert_eq!(
            options.split(',').any(|option| option == "ro"),
            !writable,
            "{point} has options {options}: {}",
            first.stdout
        );
        // What runc masks or protects in /proc comes on top of the run's own /proc.
        if !point.starts_with("/proc/") {
            mount_points.push(point);
        }
    }
    mount_points.sort();
    assert_eq!(
        mount_points,
        ["/", "/dev", "/etc", "/proc", "/tmp", "/usr"],
        "{}",
        first.stdout
    );
    assert!(first.stdout.contains("root-refused"), "{}", first.stdout);

    tracing::info!("--- the next run starts from the same root but sees nothing the first left");
    let second = host
        .run(
            &sh("test -e /tmp/left-behind && echo leaked; test -e /left-behind && echo leaked-root; \
                 ls /proc | grep -cE '^[0-9]+$'"),
            "shared-root-2",
        )
        .await?;
    assert_eq!(second.verdict, Verdict::Ok, "{second:?}");
    assert!(!second.stdout.contains("leaked"), "{}", second.stdout);
    let n_processes: u32 = second.stdout.trim().parse()?;
    assert!(
        n_processes <= 4,
        "sees {n_processes} processes: {}",
        second.stdout
    );
    host.assert_clean();
    Ok(())
}

/// runc's default `maskedPaths` under /proc (a sandbox has no /sys) and `readonlyPaths`.
const PROC_MASKED: &[&str] = &[
    "acpi",
    "asound",
    "kcore",
    "keys",
    "latency_stats",
    "timer_list",
    "timer_stats",
    "sched_debug",
    "scsi",
];
const PROC_READ_ONLY: &[&str] = &["bus", "fs", "irq", "sys", "sysrq-trigger"];

#[tokio::test]
async fn proc_is_masked_like_runc_and_keys_timers_and_sysctls_are_out_of_reach(
) -> anyhow::Result<()> {
    if !root_or_skip("proc_is_masked_like_runc_and_keys_timers_and_sysctls_are_out_of_reach") {
        return Ok(());
    }
    let host = TestHost::start("proc-masks")?;
    let mut script = String::new();
    for name in PROC_MASKED {
        // A masked file reads empty, a masked directory lists empty.
        script.push_str(&format!(
            "p=/proc/{name}; if [ -d $p ]; then echo \"$p entries=$(ls -A $p | wc -l)\"; \
             elif [ -e $p ]; then echo \"$p bytes=$(cat $p 2>/dev/null | wc -c)\"; fi; "
        ));
    }
    script.push_str("cat /proc/self/mountinfo");
    let result = host.run(&sh(&script), "proc-masks").await?;
    assert_eq!(result.verdict, Verdict::Ok, "{result:?}");
    let mut checked = 0;
    for name in PROC_MASKED {
        if std::fs::symlink_metadata(format!("/proc/{name}")).is_err() {
            continue;
        }
        checked += 1;
        let line = result
            .stdout
            .lines()
            .find(|line| line.starts_with(&format!("/proc/{name} ")))
            .unwrap_or_default();
        assert!(
            line.ends_with("entries=0") || line.ends_with("bytes=0"),
            "/proc/{name} is not masked: {line:?}\n{}",
            result.stdout
        );
    }
    assert!(
        checked >= 2,
        "this host has too few of the masked paths to test"
    );
    for name in PROC_READ_ONLY {
        if std::fs::symlink_metadata(format!("/proc/{name}")).is_err() {
            continue;
        }
        // mountinfo: id parent major:minor root mount-point options ...
        let read_only = result.stdout.lines().any(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            fields.get(4) == Some(&format!("/proc/{name}").as_str())
                && fields
                    .get(5)
                    .is_some_and(|options| options.split(',').any(|option| option == "ro"))
        });
        assert!(
            read_only,
            "/proc/{name} is not read-only: {}",
            result.stdout
        );
    }
    host.assert_clean();
    Ok(())
}
