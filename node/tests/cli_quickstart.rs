//! The README quickstart, command for command, against a real `shoal dev` cluster: create a
//! workstation, start a long process, follow its logs and disconnect, reconnect to its logs,
//! run a snippet, look at the pool. Every command is run as a user types it, with
//! `SHOAL_ADDR` and `SHOAL_TOKEN` set as the quickstart says.

// Test code: a panic is the failure report (the workspace denies unwrap/expect elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cli_support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use cli_support::{pids_mentioning, shoal, shoal_ok, DevCluster, SHOAL};
use tracing::info;

/// The long process of the quickstart, verbatim.
const TICKER: &str = r#"i=0; while :; do echo "tick $i"; i=$((i+1)); sleep 1; done"#;

/// `shoal logs -f WS [extra]` as a background child whose stdout lines arrive on a channel.
struct Follower {
    child: std::process::Child,
    lines: mpsc::Receiver<String>,
}

impl Follower {
    fn start(cluster: &DevCluster, ws: &str, extra: &[&str]) -> anyhow::Result<Self> {
        let mut child = Command::new(SHOAL)
            .args(["logs", "-f", ws])
            .args(extra)
            .env("SHOAL_ADDR", &cluster.addr)
            .env("SHOAL_TOKEN", &cluster.admin_key)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Self { child, lines })
    }

    /// Lines until one satisfies `done` (at most `timeout`).
    fn read_until(
        &self,
        timeout: Duration,
        done: impl Fn(&str) -> bool,
    ) -> anyhow::Result<Vec<String>> {
        let mut seen = Vec::new();
        loop {
            let line = self.lines.recv_timeout(timeout).map_err(|_| {
                anyhow::anyhow!("no expected line within {timeout:?}; got {seen:?}")
            })?;
            let stop = done(&line);
            seen.push(line);
            if stop {
                return Ok(seen);
            }
        }
    }

    /// Ctrl-C.
    fn interrupt(mut self) -> anyhow::Result<()> {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id())?);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT)?;
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tick_number(line: &str) -> Option<u64> {
    line.strip_prefix("tick ")?.trim().parse().ok()
}

#[test]
fn the_readme_quickstart_works_command_for_command() -> anyhow::Result<()> {
    cli_support::init_tracing();
    info!("--- set-up: a local cluster (`shoal dev`)");
    let cluster = DevCluster::start(3, Duration::from_secs(90))?;
    let (addr, key) = (cluster.addr.clone(), cluster.admin_key.clone());
    let (addr, key) = (addr.as_str(), key.as_str());

    info!("--- WS=$(shoal ws create --name demo --cpu 0.5 --mem 256MiB)");
    let ws = shoal_ok(
        addr,
        key,
        &[
            "ws", "create", "--name", "demo", "--cpu", "0.5", "--mem", "256MiB",
        ],
    )?;
    assert!(ws.starts_with("ws-"), "ws create printed {ws:?}");

    info!("--- shoal exec \"$WS\" -- sh -c '<ticker>'");
    let proc_id = shoal_ok(addr, key, &["exec", &ws, "--", "sh", "-c", TICKER])?;
    assert!(!proc_id.is_empty());

    info!("--- shoal logs -f \"$WS\", then Ctrl-C (disconnect)");
    let follower = Follower::start(&cluster, &ws, &[])?;
    let first = follower.read_until(Duration::from_secs(20), |l| tick_number(l) == Some(2))?;
    assert_eq!(first, ["tick 0", "tick 1", "tick 2"]);
    follower.interrupt()?;

    info!("--- the process keeps running while nobody listens");
    std::thread::sleep(Duration::from_secs(2));

    info!("--- shoal logs -f \"$WS\" --tail 100 (reconnect)");
    let follower = Follower::start(&cluster, &ws, &["--tail", "100"])?;
    let again = follower.read_until(Duration::from_secs(20), |l| {
        tick_number(l).is_some_and(|n| n >= 6)
    })?;
    let numbers: Vec<u64> = again.iter().filter_map(|l| tick_number(l)).collect();
    assert_eq!(
        numbers.len(),
        again.len(),
        "only tick lines expected: {again:?}"
    );
    assert!(
        numbers.windows(2).all(|w| w[1] == w[0] + 1),
        "a gap or a repeat: {numbers:?}"
    );
    assert!(
        numbers[0] <= 3,
        "the tail should include what was printed while disconnected: {numbers:?}"
    );
    follower.interrupt()?;

    info!("--- echo 'print(sum(range(10)))' | shoal run --lang python -");
    let mut run = Command::new(SHOAL)
        .args(["run", "--lang", "python", "-"])
        .env("SHOAL_ADDR", addr)
        .env("SHOAL_TOKEN", key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = run.stdin.take() {
        std::io::Write::write_all(&mut stdin, b"print(sum(range(10)))\n")?;
    }
    let output = cli_support::wait_output(run, Duration::from_secs(90))?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&output.stdout), "45\n");
    let summary = stderr.lines().last().unwrap_or_default();
    assert!(summary.starts_with("ok · exit 0 · "), "summary: {summary}");
    assert!(summary.contains("peak"), "summary: {summary}");

    info!("--- shoal status; shoal nodes");
    let status = shoal_ok(addr, key, &["status"])?;
    assert!(
        status.contains("POOL") && status.contains("cpu") && status.contains("memory"),
        "{status}"
    );
    let nodes = shoal_ok(addr, key, &["nodes"])?;
    assert_eq!(
        nodes.lines().count(),
        1 + usize::from(cluster.nodes),
        "{nodes}"
    );
    assert!(nodes.contains("ready"), "{nodes}");

    info!("--- Ctrl-C the cluster: the long process goes too");
    let marker = TICKER;
    assert!(
        !pids_mentioning(marker).is_empty(),
        "the ticker should be running before the stop"
    );
    drop(cluster);
    assert_eq!(
        pids_mentioning(marker),
        Vec::<u32>::new(),
        "the workstation process survived"
    );
    let gone = shoal(addr, Some(key), &["status"])?;
    assert_eq!(gone.status.code(), Some(3));
    Ok(())
}
