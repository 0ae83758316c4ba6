//! Helpers for the CLI integration tests: run the real `shoal` binary, start a real
//! `shoal dev` cluster on free loopback ports, stop it with SIGINT and make sure nothing is
//! left behind (also when a test fails: [`DevCluster`]'s `Drop`).

#![allow(dead_code)] // Each test file uses a different part of this module.

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::Duration;

use anyhow::{bail, Context};

/// The `shoal` binary under test.
pub const SHOAL: &str = env!("CARGO_BIN_EXE_shoal");

/// Logs of the test phases (`tracing::info!("--- ...")`) go to the test's output.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("info")
        .try_init();
}

/// Milliseconds since an arbitrary start, from the crate's clock seam.
pub fn elapsed_ms(start: std::time::Instant) -> u64 {
    u64::try_from(
        shoal_node::clock::monotonic_now()
            .duration_since(start)
            .as_millis(),
    )
    .unwrap_or(u64::MAX)
}

/// Calls `check` every 100 ms until it answers `Some`, at most `timeout`.
pub fn eventually<T>(
    timeout: Duration,
    what: &str,
    mut check: impl FnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let start = shoal_node::clock::monotonic_now();
    loop {
        if let Some(value) = check()? {
            return Ok(value);
        }
        if elapsed_ms(start) > u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX) {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `n` consecutive free TCP ports and `n` consecutive free UDP ports on 127.0.0.1 (free when
/// checked; the range is chosen from the process id to keep parallel tests apart).
pub fn free_port_ranges(n: u16) -> anyhow::Result<(u16, u16)> {
    // Tests of one process run in parallel: each call starts from a different range.
    static CALLS: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let seed = u16::try_from(std::process::id() % 1000).unwrap_or(0) + call * 101;
    for attempt in 0..200u16 {
        let api = 20_000 + ((seed * 17 + attempt * 37) % 2000) * 10;
        let listen = api + 5;
        let api_free = (0..n).all(|i| TcpListener::bind(("127.0.0.1", api + i)).is_ok());
        let listen_free = (0..n).all(|i| UdpSocket::bind(("127.0.0.1", listen + i)).is_ok());
        if api_free && listen_free {
            return Ok((api, listen));
        }
    }
    bail!("no free port range found")
}

/// Runs `shoal ARGS` to completion (at most 90 s) with `SHOAL_ADDR`/`SHOAL_TOKEN` set.
pub fn shoal(addr: &str, token: Option<&str>, args: &[&str]) -> anyhow::Result<Output> {
    let mut command = Command::new(SHOAL);
    command
        .args(args)
        .env("SHOAL_ADDR", addr)
        .env_remove("SHOAL_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(token) = token {
        command.env("SHOAL_TOKEN", token);
    }
    let child = command.spawn().context("spawning shoal")?;
    wait_output(child, Duration::from_secs(90))
}

/// Waits for a child's exit and output, killing it after `timeout`.
pub fn wait_output(mut child: Child, timeout: Duration) -> anyhow::Result<Output> {
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let read_all = |pipe: Option<std::process::ChildStdout>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let out_thread = read_all(stdout);
    let err_thread = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut pipe) = stderr {
            let _ = pipe.read_to_end(&mut bytes);
        }
        bytes
    });
    let status = eventually(timeout, "the shoal command to exit", || {
        Ok(child.try_wait()?)
    });
    let status = match status {
        Ok(status) => status,
        Err(error) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(error);
        }
    };
    Ok(Output {
        status,
        stdout: out_thread.join().unwrap_or_default(),
        stderr: err_thread.join().unwrap_or_default(),
    })
}

/// Runs a command that must succeed; returns its stdout, trimmed.
pub fn shoal_ok(addr: &str, token: &str, args: &[&str]) -> anyhow::Result<String> {
    let output = shoal(addr, Some(token), args)?;
    if !output.status.success() {
        bail!(
            "shoal {} failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

/// Pids of processes whose command line mentions `needle` (read from /proc).
pub fn pids_mentioning(needle: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            // A zombie has an empty command line; it is gone for our purposes once reaped,
            // but a live process mentioning the needle is what we look for.
            if cmdline.contains(needle) && pid != std::process::id() {
                pids.push(pid);
            }
        }
    }
    pids
}

/// A `shoal dev` cluster started by a test, in its own temporary data dir.
pub struct DevCluster {
    /// The `shoal dev` process.
    pub child: Option<Child>,
    /// The data dir (inside `_tmp`, or given).
    pub data_dir: PathBuf,
    /// API address of node 0, `http://127.0.0.1:PORT`.
    pub addr: String,
    /// The admin key as printed.
    pub admin_key: String,
    /// Every stdout line `shoal dev` printed.
    pub banner: Vec<String>,
    /// `shoal status --json` (`/v1/cluster`) asked right when the "is up" line was read.
    pub status_at_up: Option<serde_json::Value>,
    /// Lines of stdout still to come.
    lines: Option<Receiver<String>>,
    /// The API and WireGuard base ports.
    pub ports: (u16, u16),
    pub nodes: u16,
    _tmp: Option<tempfile::TempDir>,
}

impl DevCluster {
    /// Starts `shoal dev --nodes N` in a new temporary data dir on free ports and waits for
    /// its banner (at most `timeout`).
    pub fn start(nodes: u16, timeout: Duration) -> anyhow::Result<Self> {
        let tmp = tempfile::Builder::new().prefix("shoal-cli-dev").tempdir()?;
        let data_dir = tmp.path().join("dev");
        let ports = free_port_ranges(nodes)?;
        let mut cluster = Self::start_in(&data_dir, nodes, ports, timeout, Some(tmp))?;
        cluster.nodes = nodes;
        Ok(cluster)
    }

    /// Starts `shoal dev` on an existing data dir (a restart).
    pub fn start_in(
        data_dir: &Path,
        nodes: u16,
        ports: (u16, u16),
        timeout: Duration,
        tmp: Option<tempfile::TempDir>,
    ) -> anyhow::Result<Self> {
        let mut child = Command::new(SHOAL)
            .args([
                "dev",
                "--nodes",
                &nodes.to_string(),
                "--data-dir",
                &data_dir.display().to_string(),
                "--api",
                &format!("127.0.0.1:{}", ports.0),
                "--listen",
                &format!("127.0.0.1:{}", ports.1),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("spawning shoal dev")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let (sender, receiver) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let mut cluster = Self {
            child: Some(child),
            data_dir: data_dir.to_path_buf(),
            addr: format!("http://127.0.0.1:{}", ports.0),
            admin_key: String::new(),
            banner: Vec::new(),
            status_at_up: None,
            lines: Some(receiver),
            ports,
            nodes,
            _tmp: tmp,
        };
        cluster.wait_banner(timeout)?;
        Ok(cluster)
    }

    /// Reads stdout until "Press Ctrl-C"; the line after "admin API key" is the key.
    fn wait_banner(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let receiver = self.lines.as_ref().context("no stdout reader")?;
        let start = shoal_node::clock::monotonic_now();
        loop {
            let left = timeout.saturating_sub(Duration::from_millis(elapsed_ms(start)));
            let line = match receiver.recv_timeout(left) {
                Ok(line) => line,
                Err(_) => {
                    let status = self
                        .child
                        .as_mut()
                        .and_then(|c| c.try_wait().ok().flatten());
                    bail!(
                        "shoal dev printed no ready banner within {timeout:?} (exit status {status:?}); it printed {:?}",
                        self.banner
                    )
                }
            };
            if line.contains(" is up with ") {
                // Ask the cluster about its voters the moment it says it is up, before the
                // rest of the banner: a test can then check that "up" meant formed.
                self.status_at_up = std::fs::read_to_string(self.data_dir.join("admin.token"))
                    .ok()
                    .and_then(|key| shoal_ok(&self.addr, key.trim(), &["status", "--json"]).ok())
                    .and_then(|text| serde_json::from_str(&text).ok());
            }
            self.banner.push(line.clone());
            if line.starts_with("Press Ctrl-C") {
                break;
            }
        }
        let key_idx = self
            .banner
            .iter()
            .position(|l| l.starts_with("admin API key"))
            .context("no admin key line")?;
        self.admin_key = self
            .banner
            .get(key_idx + 1)
            .context("no key after the admin key line")?
            .trim()
            .to_string();
        Ok(())
    }

    /// The pid of `shoal dev`.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends SIGINT (Ctrl-C) and waits for `shoal dev` to exit; returns its exit code.
    pub fn interrupt(&mut self, timeout: Duration) -> anyhow::Result<Option<i32>> {
        let Some(mut child) = self.child.take() else {
            return Ok(None);
        };
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id())?);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT)?;
        let status = eventually(timeout, "shoal dev to exit after SIGINT", || {
            Ok(child.try_wait()?)
        });
        match status {
            Ok(status) => Ok(status.code()),
            Err(error) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(error)
            }
        }
    }

    /// Live processes that belong to this cluster (their command line names its data dir).
    pub fn leftover_pids(&self) -> Vec<u32> {
        pids_mentioning(&self.data_dir.display().to_string())
    }
}

impl Drop for DevCluster {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.interrupt(Duration::from_secs(30));
        }
        // Whatever a failed test left behind goes too.
        for pid in self.leftover_pids() {
            if let Ok(pid) = i32::try_from(pid) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

/// The socket address of a `http://host:port` address.
pub fn socket_addr(addr: &str) -> anyhow::Result<SocketAddr> {
    Ok(addr.trim_start_matches("http://").parse()?)
}
