//! The `tun` data plane between network namespaces this test creates, interop with a
//! userspace node and with Debian's wireguard-go, and `wg show` through the UAPI socket.
//! Needs root: skipped with a message otherwise, unless CI=true, where it fails.

// Test code: a panic is the failure report (the workspace denies unwrap/expect elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use shoal_mesh::Identity;

const NODE_BIN: &str = env!("CARGO_BIN_EXE_shoal-mesh-node");
const WAIT: Duration = Duration::from_secs(20);

/// Whether the test can run; panics on CI when it cannot.
fn privileged(test: &str) -> bool {
    let missing = if !nix::unistd::Uid::effective().is_root() {
        Some("not running as root")
    } else if !Path::new("/dev/net/tun").exists() {
        Some("/dev/net/tun is missing")
    } else if Command::new("wg").arg("--version").output().is_err()
        || Command::new("wireguard-go")
            .arg("--version")
            .output()
            .is_err()
    {
        Some("wireguard-tools or wireguard-go is not installed (ops/install-deps.sh)")
    } else {
        None
    };
    match missing {
        None => true,
        Some(why) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("{test} must run on CI but cannot: {why}")
        }
        Some(why) => {
            eprintln!("SKIPPED {test}: {why}");
            false
        }
    }
}

fn run(args: &[&str]) -> String {
    let output = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("command runs");
    assert!(
        output.status.success(),
        "{}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A network namespace, deleted (with its interfaces) on drop.
struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Self {
        let name = format!("shoalmesh-{tag}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        run(&["ip", "netns", "add", &name]);
        run(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        Self(name)
    }

    fn exec(&self, args: &[&str]) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.0]).args(args);
        command
    }

    fn ping(&self, addr: &str) -> bool {
        self.exec(&["ping", "-c", "1", "-W", "1", addr])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

/// Two namespaces joined by a veth pair: `a` is 10.99.0.1/24, `b` is 10.99.0.2/24.
fn two_namespaces(tag: &str) -> (Netns, Netns) {
    let a = Netns::new(&format!("{tag}a"));
    let b = Netns::new(&format!("{tag}b"));
    run(&[
        "ip", "-n", &a.0, "link", "add", "va", "type", "veth", "peer", "name", "vb", "netns", &b.0,
    ]);
    run(&["ip", "-n", &a.0, "addr", "add", "10.99.0.1/24", "dev", "va"]);
    run(&["ip", "-n", &b.0, "addr", "add", "10.99.0.2/24", "dev", "vb"]);
    run(&["ip", "-n", &a.0, "link", "set", "va", "up"]);
    run(&["ip", "-n", &b.0, "link", "set", "vb", "up"]);
    (a, b)
}

/// A child process, terminated (SIGTERM, then SIGKILL) and reaped on drop.
struct ChildGuard {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl ChildGuard {
    fn spawn(mut command: Command) -> Self {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self { child, lines }
    }

    fn wait_line(&self, prefix: &str) -> String {
        let deadline = shoal_mesh::clock::monotonic() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(shoal_mesh::clock::monotonic());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.starts_with(prefix) => return line,
                Ok(_) => {}
                Err(e) => panic!("no '{prefix}' line from child: {e}"),
            }
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        for _ in 0..30 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct NodeSpec<'a> {
    ns: &'a Netns,
    dir: &'a Path,
    listen: &'a str,
    mesh_addr: &'a str,
    mode: &'a str,
    ifname: &'a str,
    peers: Vec<String>,
    rpc_to: Option<&'a str>,
}

fn public_key(dir: &Path) -> String {
    Identity::load_or_create(dir)
        .unwrap()
        .public_key()
        .to_string()
}

fn start_node(spec: NodeSpec) -> ChildGuard {
    let dir = spec.dir.to_str().unwrap();
    let mut args = vec![
        NODE_BIN,
        "--data-dir",
        dir,
        "--listen",
        spec.listen,
        "--mesh-addr",
        spec.mesh_addr,
        "--mode",
        spec.mode,
        "--ifname",
        spec.ifname,
        "--exit-on-stdin-eof",
    ];
    for peer in &spec.peers {
        args.push("--peer");
        args.push(peer);
    }
    if let Some(target) = spec.rpc_to {
        args.push("--rpc-to");
        args.push(target);
    }
    let node = ChildGuard::spawn(spec.ns.exec(&args));
    node.wait_line("ready");
    node
}

fn wait_for_ping(ns: &Netns, addr: &str) {
    let deadline = shoal_mesh::clock::monotonic() + WAIT;
    while !ns.ping(addr) {
        assert!(
            shoal_mesh::clock::monotonic() < deadline,
            "{addr} never answered a ping from {}",
            ns.0
        );
    }
}

#[test]
fn tun_nodes_and_a_userspace_node_interoperate_and_wg_show_lists_the_peers() {
    common::init_tracing();
    if !privileged("tun_nodes_and_a_userspace_node_interoperate_and_wg_show_lists_the_peers") {
        return;
    }
    let (ns_a, ns_b) = two_namespaces("t");
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let keys: Vec<String> = dirs.iter().map(|d| public_key(d.path())).collect();

    tracing::info!("--- tun node A (shoal0) in ns a, tun node B and userspace node C in ns b");
    let _a = start_node(NodeSpec {
        ns: &ns_a,
        dir: dirs[0].path(),
        listen: "10.99.0.1:51820",
        mesh_addr: "10.77.0.1",
        mode: "tun",
        ifname: "shoal0",
        peers: vec![
            format!("{},10.99.0.2:51820,10.77.0.2", keys[1]),
            format!("{},10.99.0.2:51821,10.77.0.3", keys[2]),
        ],
        rpc_to: None,
    });
    let _b = start_node(NodeSpec {
        ns: &ns_b,
        dir: dirs[1].path(),
        listen: "10.99.0.2:51820",
        mesh_addr: "10.77.0.2",
        mode: "tun",
        ifname: "shoalt1",
        peers: vec![
            format!("{},10.99.0.1:51820,10.77.0.1", keys[0]),
            format!("{},10.99.0.2:51821,10.77.0.3", keys[2]),
        ],
        rpc_to: None,
    });

    tracing::info!("--- the kernel's ping crosses the tun mesh both ways");
    wait_for_ping(&ns_a, "10.77.0.2");
    wait_for_ping(&ns_b, "10.77.0.1");

    tracing::info!("--- userspace node C reaches tun node A over QUIC, and A pings C");
    let c = start_node(NodeSpec {
        ns: &ns_b,
        dir: dirs[2].path(),
        listen: "10.99.0.2:51821",
        mesh_addr: "10.77.0.3",
        mode: "userspace",
        ifname: "unused",
        peers: vec![
            format!("{},10.99.0.1:51820,10.77.0.1", keys[0]),
            format!("{},10.99.0.2:51820,10.77.0.2", keys[1]),
        ],
        rpc_to: Some("10.77.0.1"),
    });
    assert_eq!(c.wait_line("rpc-"), "rpc-ok");
    wait_for_ping(&ns_a, "10.77.0.3");

    tracing::info!("--- wg show shoal0 (inside ns a) lists both peers with a handshake");
    let shown = ns_a.exec(&["wg", "show", "shoal0"]).output().unwrap();
    let shown = String::from_utf8_lossy(&shown.stdout);
    tracing::info!(%shown, "wg show");
    assert!(
        shown.contains(&keys[1]) && shown.contains(&keys[2]),
        "{shown}"
    );
    assert!(shown.contains("allowed ips: 10.77.0.2/32"), "{shown}");
    assert!(shown.contains("latest handshake"), "{shown}");
}

#[test]
fn a_wireguard_go_peer_handshakes_with_tun_and_userspace_nodes_and_pings_them() {
    common::init_tracing();
    if !privileged("a_wireguard_go_peer_handshakes_with_tun_and_userspace_nodes_and_pings_them") {
        return;
    }
    let (ns_a, ns_b) = two_namespaces("w");
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let keys: Vec<String> = dirs.iter().map(|d| public_key(d.path())).collect();
    let wg_identity = Identity::generate();
    let wg_dir = tempfile::tempdir().unwrap();
    let wg_key_file = wg_dir.path().join("wg.key");
    std::fs::write(&wg_key_file, wg_identity.private_base64()).unwrap();
    let wg_peer = format!("{},10.99.0.2:51820,10.77.0.9", wg_identity.public_key());

    tracing::info!("--- wireguard-go in ns b, configured with wg set");
    let ifname = format!("wgsh{}", std::process::id() % 100_000);
    let _wg = ChildGuard::spawn(ns_b.exec(&["wireguard-go", "-f", &ifname]));
    let socket = format!("/var/run/wireguard/{ifname}.sock");
    let deadline = shoal_mesh::clock::monotonic() + WAIT;
    while !Path::new(&socket).exists() {
        assert!(
            shoal_mesh::clock::monotonic() < deadline,
            "wireguard-go did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    run(&[
        "ip",
        "netns",
        "exec",
        &ns_b.0,
        "wg",
        "set",
        &ifname,
        "private-key",
        wg_key_file.to_str().unwrap(),
        "listen-port",
        "51820",
        "peer",
        &keys[0],
        "endpoint",
        "10.99.0.1:51820",
        "allowed-ips",
        "10.77.0.1/32",
        "peer",
        &keys[1],
        "endpoint",
        "10.99.0.1:51821",
        "allowed-ips",
        "10.77.0.3/32",
    ]);
    run(&[
        "ip",
        "-n",
        &ns_b.0,
        "addr",
        "add",
        "10.77.0.9/16",
        "dev",
        &ifname,
    ]);
    run(&["ip", "-n", &ns_b.0, "link", "set", &ifname, "up"]);

    tracing::info!("--- a tun node and a userspace node in ns a");
    let _a = start_node(NodeSpec {
        ns: &ns_a,
        dir: dirs[0].path(),
        listen: "10.99.0.1:51820",
        mesh_addr: "10.77.0.1",
        mode: "tun",
        ifname: "shoalw0",
        peers: vec![wg_peer.clone()],
        rpc_to: None,
    });
    let _c = start_node(NodeSpec {
        ns: &ns_a,
        dir: dirs[1].path(),
        listen: "10.99.0.1:51821",
        mesh_addr: "10.77.0.3",
        mode: "userspace",
        ifname: "unused",
        peers: vec![wg_peer],
        rpc_to: None,
    });

    tracing::info!("--- wireguard-go pings both mesh addresses");
    wait_for_ping(&ns_b, "10.77.0.1");
    wait_for_ping(&ns_b, "10.77.0.3");
    let handshakes = run(&[
        "ip",
        "netns",
        "exec",
        &ns_b.0,
        "wg",
        "show",
        &ifname,
        "latest-handshakes",
    ]);
    for key in &keys {
        let line = handshakes
            .lines()
            .find(|l| l.starts_with(key.as_str()))
            .unwrap_or_default();
        let seconds: u64 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        assert!(seconds > 0, "no handshake with {key}: {handshakes}");
    }
}
