//! `shoal dev`: a local N-node cluster on loopback with the userspace mesh, for trying Shoal
//! and for tests. It supervises `shoal agent` child processes:
//!
//! - first start: node 0 bootstraps and writes the admin key to `<data-dir>/admin.token`; once
//!   it is ready, `shoal dev` mints one join token with that key and starts the other nodes
//!   with `--join`;
//! - restart (the data dir has `dev.json`): every node starts at once from its own data dir,
//!   with no join (a 3-server cluster needs a quorum before anything answers);
//! - Ctrl-C / SIGTERM: SIGTERM to every node's process group, SIGKILL after a grace; children
//!   also get `PR_SET_PDEATHSIG`, so a `kill -9` of `shoal dev` still takes them down.
//!
//! [`DevPlan`] is the pure part (ports, paths, flags); the rest is the process driver.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::client::ApiClient;
use super::error::{exit_code, CliError, CliResult};
use super::progress::Progress;
use super::render::{items, text};
use super::units::parse_duration;
use crate::api_types::CreateTokenRequest;

/// `--help` text after the options.
pub const DEV_HELP: &str = "\
Node i serves the API on ADDR's port + i and its WireGuard port on the --listen port + i.
Node i's data and log are in <data-dir>/node-<i> (agent.log); the admin API key is written to
<data-dir>/admin.token. Running `shoal dev` again with the same data dir brings the same
cluster back (the layout is remembered in <data-dir>/dev.json).

Exit codes: 0 after Ctrl-C (or SIGTERM) stopped every node; 1 if a node did not come up
(the end of its log is printed); 2 usage error.";

/// Most nodes `shoal dev` starts.
pub const NODES_MAX: u16 = 9;
/// How often nodes are polled while starting, and children checked while running.
const POLL_INTERVAL_MS: u64 = 200;
/// How long a node has after SIGTERM before its process group gets SIGKILL.
pub const STOP_GRACE_MS: u64 = 10_000;
/// How much of a node's log is printed when it fails.
const LOG_TAIL_BYTES: u64 = 4096;
/// How long a join token minted by `shoal dev` lives.
const JOIN_TOKEN_TTL_MS: u64 = 10 * 60 * 1000;
/// The voter target of a `shoal dev` cluster: the agent's default `voter_target` (dev passes
/// no configuration). Servers beyond it stay learners.
const VOTER_TARGET: usize = 3;

/// How many voters a dev cluster of `n_nodes` (each a server) has once formed: every server
/// up to the voter target.
fn voters_wanted(n_nodes: usize) -> usize {
    n_nodes.min(VOTER_TARGET)
}

/// `shoal dev [--nodes N] [--data-dir DIR] [--api ADDR]`.
#[derive(Debug, clap::Args)]
pub struct DevArgs {
    /// How many nodes (each a server and a worker). Default 3, or what the data dir had.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=i64::from(NODES_MAX)))]
    nodes: Option<u16>,
    /// Where the nodes keep their data (default .shoal/dev).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// API address of node 0; node i uses this port + i. Default 127.0.0.1:7070.
    #[arg(long, value_name = "ADDR")]
    api: Option<SocketAddr>,
    /// WireGuard UDP address of node 0; node i uses this port + i. Default: API port + 1000.
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// How long to wait for the nodes to become ready.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    ready_timeout: Duration,
}

/// What `shoal dev` remembers in `<data-dir>/dev.json` so that a restart brings the same
/// cluster back even without the original flags.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DevLayout {
    /// Number of nodes.
    pub nodes: u16,
    /// API address of node 0.
    pub api: SocketAddr,
    /// WireGuard address of node 0.
    pub listen: SocketAddr,
    /// How many nodes (0..joined) have been part of the cluster already.
    pub joined: u16,
}

/// One node to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodePlan {
    /// Its index, 0-based.
    pub idx: u16,
    /// Its API address.
    pub api: SocketAddr,
    /// Its WireGuard address.
    pub listen: SocketAddr,
    /// Its data dir.
    pub data_dir: PathBuf,
    /// Where its stdout and stderr go.
    pub log_path: PathBuf,
}

/// The pure plan: which nodes, on which ports, with which `shoal agent` flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevPlan {
    /// The data dir of the whole cluster.
    pub data_dir: PathBuf,
    /// The layout (written back to `dev.json`).
    pub layout: DevLayout,
    /// The nodes.
    pub nodes: Vec<NodePlan>,
}

impl DevPlan {
    /// Combines flags with a remembered layout (flags win) and computes every node's ports.
    pub fn new(
        data_dir: PathBuf,
        nodes: Option<u16>,
        api: Option<SocketAddr>,
        listen: Option<SocketAddr>,
        remembered: Option<&DevLayout>,
    ) -> Result<Self, String> {
        let n_nodes = nodes.or(remembered.map(|l| l.nodes)).unwrap_or(3);
        if n_nodes == 0 || n_nodes > NODES_MAX {
            return Err(format!("--nodes must be between 1 and {NODES_MAX}"));
        }
        let api = api
            .or(remembered.map(|l| l.api))
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 7070)));
        let listen = match listen.or(remembered.map(|l| l.listen)) {
            Some(listen) => listen,
            None => {
                let port = api
                    .port()
                    .checked_add(1000)
                    .ok_or("--api port too high to derive --listen")?;
                SocketAddr::new(api.ip(), port)
            }
        };
        let joined = remembered.map_or(0, |l| l.joined);
        let mut plans = Vec::new();
        for idx in 0..n_nodes {
            let api_port = api
                .port()
                .checked_add(idx)
                .ok_or("--api port + nodes exceeds 65535")?;
            let listen_port = listen
                .port()
                .checked_add(idx)
                .ok_or("--listen port + nodes exceeds 65535")?;
            let listen_node = SocketAddr::new(listen.ip(), listen_port);
            let api_node = SocketAddr::new(api.ip(), api_port);
            let node_dir = data_dir.join(format!("node-{idx}"));
            plans.push(NodePlan {
                idx,
                api: api_node,
                listen: listen_node,
                log_path: node_dir.join("agent.log"),
                data_dir: node_dir,
            });
        }
        if api.ip() == listen.ip() && api.port().abs_diff(listen.port()) < n_nodes {
            return Err("the --api and --listen port ranges overlap".to_string());
        }
        Ok(Self {
            data_dir,
            layout: DevLayout {
                nodes: n_nodes,
                api,
                listen,
                joined,
            },
            nodes: plans,
        })
    }

    /// Where the admin key is written.
    pub fn admin_token_path(&self) -> PathBuf {
        self.data_dir.join("admin.token")
    }

    /// Whether node `idx` has been part of the cluster before (then it restarts without a
    /// join; node 0 always passes `--bootstrap`, which the agent ignores on a restart).
    pub fn has_joined(&self, idx: u16) -> bool {
        idx < self.layout.joined
    }

    /// The `shoal agent` arguments of node `idx`; `join_token` for a node that has not joined.
    pub fn agent_args(&self, node: &NodePlan, join_token: Option<&str>) -> Vec<String> {
        let mut args = vec![
            "agent".to_string(),
            "--data-dir".to_string(),
            node.data_dir.display().to_string(),
            "--listen".to_string(),
            node.listen.to_string(),
            "--api".to_string(),
            node.api.to_string(),
            "--mesh".to_string(),
            "userspace".to_string(),
        ];
        if node.idx == 0 {
            args.push("--bootstrap".to_string());
            args.push("--admin-token-file".to_string());
            args.push(self.admin_token_path().display().to_string());
        } else if let Some(token) = join_token.filter(|_| !self.has_joined(node.idx)) {
            args.push("--join".to_string());
            args.push(token.to_string());
        }
        args
    }
}

/// The signal that asked `shoal dev` to stop (0: none yet). Set by the signal handler, which
/// may only do async-signal-safe things, read by the supervision loop.
static STOP_SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_stop_signal(signal: libc::c_int) {
    STOP_SIGNAL.store(signal, Ordering::SeqCst);
}

fn stop_requested() -> bool {
    STOP_SIGNAL.load(Ordering::SeqCst) != 0
}

/// Installs the SIGINT/SIGTERM/SIGHUP handler.
fn install_signal_handlers() -> CliResult<()> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let action = SigAction::new(
        SigHandler::Handler(on_stop_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for signal in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: the handler only stores into an atomic, which is async-signal-safe.
        unsafe { sigaction(signal, &action) }.map_err(|error| {
            CliError::Other(format!("cannot install a signal handler: {error}"))
        })?;
    }
    Ok(())
}

/// A running `shoal agent` child.
struct NodeProcess {
    plan: NodePlan,
    child: Child,
    /// Set once it has been reaped.
    exited: Option<ExitStatus>,
}

impl NodeProcess {
    /// Starts `shoal agent` in its own process group, with its output appended to its log and
    /// `PR_SET_PDEATHSIG` so that it dies with `shoal dev`.
    fn spawn(plan: &NodePlan, args: &[String]) -> CliResult<Self> {
        std::fs::create_dir_all(&plan.data_dir).map_err(|error| {
            CliError::Other(format!(
                "cannot create {}: {error}",
                plan.data_dir.display()
            ))
        })?;
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&plan.log_path)
            .map_err(|error| {
                CliError::Other(format!("cannot open {}: {error}", plan.log_path.display()))
            })?;
        let log_err = log.try_clone()?;
        let exe = std::env::current_exe()
            .map_err(|error| CliError::Other(format!("cannot find the shoal binary: {error}")))?;
        let parent_pid = std::process::id();
        let mut command = Command::new(exe);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        // SAFETY: between fork and exec only async-signal-safe calls (setpgid, prctl, getppid).
        unsafe {
            command.pre_exec(move || {
                // Its own group: a terminal's Ctrl-C reaches only `shoal dev`, which stops the
                // nodes in order, and the whole group can be killed at the end.
                if libc::setpgid(0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The parent may have died before prctl: then nobody would stop us.
                if u32::try_from(libc::getppid()).ok() != Some(parent_pid) {
                    return Err(std::io::Error::other("shoal dev exited"));
                }
                Ok(())
            });
        }
        let child = command
            .spawn()
            .map_err(|error| CliError::Other(format!("cannot start node-{}: {error}", plan.idx)))?;
        tracing::info!(node = plan.idx, pid = child.id(), api = %plan.api, "started shoal agent");
        Ok(Self {
            plan: plan.clone(),
            child,
            exited: None,
        })
    }

    /// Reaps it if it exited; returns its status then.
    fn poll_exit(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.exited = Some(status);
                // Anything it left in its group goes with it.
                self.signal_group(libc::SIGKILL);
            }
        }
        self.exited
    }

    fn signal_group(&self, signal: libc::c_int) {
        if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: kill(2) with a negative pid signals the process group we created.
            unsafe {
                libc::kill(-pid, signal);
            }
        }
    }
}

/// Stops every node: SIGTERM to each group, then SIGKILL to those still there after the grace.
fn stop_all(nodes: &mut [NodeProcess]) {
    for node in nodes.iter_mut() {
        if node.poll_exit().is_none() {
            node.signal_group(libc::SIGTERM);
        }
    }
    let attempts = STOP_GRACE_MS / POLL_INTERVAL_MS;
    for _ in 0..attempts {
        if nodes.iter_mut().all(|node| node.poll_exit().is_some()) {
            return;
        }
        std::thread::sleep(Duration::from_millis(POLL_INTERVAL_MS));
    }
    for node in nodes.iter_mut() {
        if node.poll_exit().is_none() {
            eprintln!(
                "shoal dev: node-{} did not stop in time; killing it",
                node.plan.idx
            );
            node.signal_group(libc::SIGKILL);
            node.exited = node.child.wait().ok();
        }
    }
}

/// The last lines of a node's log, for an error report.
fn log_tail(path: &Path) -> String {
    let Ok(mut file) = File::open(path) else {
        return format!("(no log at {})", path.display());
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(LOG_TAIL_BYTES)));
    let mut bytes = Vec::new();
    let _ = file.take(LOG_TAIL_BYTES).read_to_end(&mut bytes);
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(20);
    lines[start..].join("\n")
}

/// Prints why a node failed, with the end of its log.
fn report_node_failure(plan: &NodePlan, what: &str) {
    eprintln!(
        "shoal dev: node-{} {what}; the end of {}:",
        plan.idx,
        plan.log_path.display()
    );
    for line in log_tail(&plan.log_path).lines() {
        eprintln!("  | {line}");
    }
}

/// Waits until every node in `nodes[range]` answers `/readyz`, a node exits, a stop is
/// requested, or `timeout` passes.
fn wait_ready(
    nodes: &mut [NodeProcess],
    wanted: std::ops::Range<usize>,
    timeout: Duration,
) -> CliResult<bool> {
    let mut ready = vec![false; nodes.len()];
    let probes: Vec<Option<ApiClient>> = nodes
        .iter()
        .map(|node| {
            ApiClient::new(
                &node.plan.api.to_string(),
                None,
                Duration::from_millis(2_000),
            )
            .ok()
        })
        .collect();
    let mut progress = Progress::new("starting nodes:");
    let attempts = (timeout.as_millis() / u128::from(POLL_INTERVAL_MS)).max(1);
    for _ in 0..attempts {
        if stop_requested() {
            return Ok(false);
        }
        for idx in wanted.clone() {
            if ready[idx] {
                continue;
            }
            if let Some(status) = nodes[idx].poll_exit() {
                progress.finish();
                report_node_failure(
                    &nodes[idx].plan,
                    &format!("exited while starting ({status})"),
                );
                return Err(CliError::Other(format!(
                    "node-{idx} exited while starting ({status}); its log is {}",
                    nodes[idx].plan.log_path.display()
                )));
            }
            if let Some(probe) = &probes[idx] {
                ready[idx] = probe.get("/readyz").is_ok();
            }
        }
        let n_ready = wanted.clone().filter(|&idx| ready[idx]).count();
        if n_ready == wanted.len() {
            progress.finish();
            return Ok(true);
        }
        progress.tick(&format!("{n_ready}/{} ready", wanted.len()));
        std::thread::sleep(Duration::from_millis(POLL_INTERVAL_MS));
    }
    progress.finish();
    let slow: Vec<usize> = wanted.filter(|&idx| !ready[idx]).collect();
    for &idx in &slow {
        report_node_failure(&nodes[idx].plan, "did not become ready");
    }
    Err(CliError::Other(format!(
        "node(s) {} did not become ready within {}; see the log(s) above",
        slow.iter()
            .map(|i| format!("node-{i}"))
            .collect::<Vec<_>>()
            .join(", "),
        humantime::format_duration(timeout)
    )))
}

/// Waits until `/v1/cluster` (asked of `admin`'s node) names a leader and lists `wanted`
/// voters, a node exits, a stop is requested, or `timeout` passes. A node that answers
/// `/readyz` may still be a learner: until the leader promotes it, a cluster of three has two
/// voters, and losing its leader then leaves it without a quorum.
fn wait_voters(
    nodes: &mut [NodeProcess],
    admin: &ApiClient,
    wanted: usize,
    timeout: Duration,
) -> CliResult<bool> {
    let mut progress = Progress::new("forming the cluster:");
    let attempts = (timeout.as_millis() / u128::from(POLL_INTERVAL_MS)).max(1);
    let mut listed = 0;
    for _ in 0..attempts {
        if stop_requested() {
            return Ok(false);
        }
        for node in nodes.iter_mut() {
            if let Some(status) = node.poll_exit() {
                progress.finish();
                report_node_failure(
                    &node.plan,
                    &format!("exited while the cluster formed ({status})"),
                );
                return Err(CliError::Other(format!(
                    "node-{} exited while the cluster formed ({status}); its log is {}",
                    node.plan.idx,
                    node.plan.log_path.display()
                )));
            }
        }
        // A failed request is one more attempt: the leader may be changing.
        if let Ok(cluster) = admin.get("/v1/cluster") {
            let has_leader = cluster
                .get("leader")
                .is_some_and(|leader| leader.is_string());
            listed = cluster
                .get("servers")
                .and_then(serde_json::Value::as_array)
                .map_or(0, Vec::len);
            if has_leader && listed >= wanted {
                progress.finish();
                return Ok(true);
            }
        }
        progress.tick(&format!("{listed}/{wanted} voters"));
        std::thread::sleep(Duration::from_millis(POLL_INTERVAL_MS));
    }
    progress.finish();
    Err(CliError::Other(format!(
        "the cluster listed {listed} of {wanted} voters after {}; see each node's agent.log",
        humantime::format_duration(timeout),
    )))
}

/// Reads the remembered layout, if any.
fn read_layout(path: &Path) -> CliResult<Option<DevLayout>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|error| CliError::Other(format!("{} is damaged: {error}", path.display()))),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(CliError::Other(format!(
            "cannot read {}: {error}",
            path.display()
        ))),
    }
}

/// Writes the layout (via a temporary file, so that a crash never leaves half a file).
fn write_layout(path: &Path, layout: &DevLayout) -> CliResult<()> {
    let tmp = path.with_extension("json.tmp");
    let bytes = serde_json::to_vec_pretty(layout)
        .map_err(|error| CliError::Other(format!("cannot encode the dev layout: {error}")))?;
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// `shoal dev`.
pub fn dev(args: &DevArgs) -> CliResult<u8> {
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(".shoal/dev"));
    std::fs::create_dir_all(&data_dir).map_err(|error| {
        CliError::Other(format!("cannot create {}: {error}", data_dir.display()))
    })?;
    // One `shoal dev` per data dir: a second one would fight over the same ports and files.
    let lock_file = File::create(data_dir.join("dev.lock"))?;
    let _lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusiveNonblock)
        .map_err(|_| {
            CliError::Other(format!(
                "another `shoal dev` is running with the data dir {}",
                data_dir.display()
            ))
        })?;
    let layout_path = data_dir.join("dev.json");
    let remembered = read_layout(&layout_path)?;
    let mut plan = DevPlan::new(
        data_dir,
        args.nodes,
        args.api,
        args.listen,
        remembered.as_ref(),
    )
    .map_err(CliError::Usage)?;
    install_signal_handlers()?;

    let mut nodes: Vec<NodeProcess> = Vec::new();
    let result = start_and_supervise(&mut plan, &layout_path, &mut nodes, args.ready_timeout);
    if !nodes.is_empty() {
        eprintln!("shoal dev: stopping {} node(s)", nodes.len());
        stop_all(&mut nodes);
    }
    result
}

/// Starts the nodes, prints the addresses and the key, then supervises until a stop signal.
fn start_and_supervise(
    plan: &mut DevPlan,
    layout_path: &Path,
    nodes: &mut Vec<NodeProcess>,
    ready_timeout: Duration,
) -> CliResult<u8> {
    let n_nodes = plan.nodes.len();
    // Nodes that were in the cluster before start together (they need each other for a quorum);
    // node 0 on a first start, then the newcomers with a join token.
    let n_known = usize::from(plan.layout.joined.max(1)).min(n_nodes);
    for node_plan in &plan.nodes[..n_known] {
        let args = plan.agent_args(node_plan, None);
        nodes.push(NodeProcess::spawn(node_plan, &args)?);
    }
    if !wait_ready(nodes, 0..n_known, ready_timeout)? {
        return Ok(exit_code::OK);
    }
    let admin_key = read_admin_key(&plan.admin_token_path())?;
    let admin = ApiClient::new(
        &plan.nodes[0].api.to_string(),
        Some(admin_key.clone()),
        Duration::from_millis(10_000),
    )?;
    plan.layout.joined = plan
        .layout
        .joined
        .max(u16::try_from(n_known).unwrap_or(u16::MAX));
    write_layout(layout_path, &plan.layout)?;
    if n_known < n_nodes {
        let request = CreateTokenRequest {
            ttl_ms: Some(JOIN_TOKEN_TTL_MS),
            uses: u32::try_from(n_nodes - n_known).ok(),
            role: Some("server,worker".to_string()),
        };
        let answer = admin.post("/v1/tokens", &request)?;
        let token = answer
            .get("token")
            .and_then(serde_json::Value::as_str)
            .ok_or_else(|| CliError::Other("the join token answer has no token".into()))?
            .to_string();
        for node_plan in &plan.nodes[n_known..] {
            let args = plan.agent_args(node_plan, Some(&token));
            nodes.push(NodeProcess::spawn(node_plan, &args)?);
        }
        if !wait_ready(nodes, n_known..n_nodes, ready_timeout)? {
            return Ok(exit_code::OK);
        }
        plan.layout.joined = plan.layout.nodes;
        write_layout(layout_path, &plan.layout)?;
    }
    // "Up" means the voter target is reached, not only that every node answers: a joined
    // node is a learner until the leader promotes it.
    if !wait_voters(nodes, &admin, voters_wanted(n_nodes), ready_timeout)? {
        return Ok(exit_code::OK);
    }
    print_banner(plan, &admin, &admin_key);

    // Supervise until asked to stop.
    let mut reported = vec![false; nodes.len()];
    loop {
        if stop_requested() {
            return Ok(exit_code::OK);
        }
        for (idx, node) in nodes.iter_mut().enumerate() {
            if let Some(status) = node.poll_exit() {
                if !reported[idx] {
                    reported[idx] = true;
                    report_node_failure(&node.plan, &format!("exited ({status})"));
                }
            }
        }
        if reported.iter().all(|r| *r) {
            return Err(CliError::Other("every node has exited".into()));
        }
        std::thread::sleep(Duration::from_millis(POLL_INTERVAL_MS));
    }
}

/// Reads the admin key node 0 wrote.
fn read_admin_key(path: &Path) -> CliResult<String> {
    let text = std::fs::read_to_string(path).map_err(|error| {
        CliError::Other(format!(
            "node-0 is ready but its admin key file {} cannot be read: {error}",
            path.display()
        ))
    })?;
    let key = text.trim().to_string();
    if key.is_empty() {
        return Err(CliError::Other(format!(
            "the admin key file {} is empty",
            path.display()
        )));
    }
    Ok(key)
}

/// Prints the cluster id, the API addresses and the admin key.
fn print_banner(plan: &DevPlan, admin: &ApiClient, admin_key: &str) {
    let cluster_id = admin
        .get("/v1/cluster")
        .map(|cluster| text(&cluster, &["cluster_id"]))
        .unwrap_or_else(|_| "-".to_string());
    let isolation: Vec<String> = admin
        .get("/v1/nodes")
        .map(|answer| {
            let mut levels: Vec<String> = items(&answer, "nodes")
                .into_iter()
                .map(|node| text(node, &["isolation"]))
                .filter(|level| !level.is_empty() && level != "-")
                .collect();
            levels.sort();
            levels.dedup();
            levels
        })
        .unwrap_or_default();
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "shoal dev: cluster {cluster_id} is up with {} node(s), userspace mesh, isolation: {}",
        plan.nodes.len(),
        if isolation.is_empty() {
            "-".to_string()
        } else {
            isolation.join(", ")
        }
    );
    for node in &plan.nodes {
        // The cluster names its nodes (`node-<raft id>`) in join order, which need not be the
        // order of the data dirs: ask each node who it is.
        let name = ApiClient::new(
            &format!("http://{}", node.api),
            Some(admin_key.to_string()),
            Duration::from_secs(5),
        )
        .and_then(|client| client.get("/v1/cluster"))
        .map(|cluster| text(&cluster, &["answered_by"]))
        .unwrap_or_else(|_| "-".to_string());
        let _ = writeln!(
            out,
            "  {name}  http://{}  ({})",
            node.api,
            node.data_dir.display()
        );
    }
    let token_path = plan.admin_token_path();
    let _ = writeln!(out, "admin API key (also in {}):", token_path.display());
    let _ = writeln!(out, "{admin_key}");
    let _ = writeln!(out, "Use it with:");
    let _ = writeln!(out, "  export SHOAL_ADDR=http://{}", plan.nodes[0].api);
    let _ = writeln!(out, "  export SHOAL_TOKEN=$(cat {})", token_path.display());
    let _ = writeln!(out, "Press Ctrl-C to stop the cluster.");
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn every_server_up_to_the_voter_target_must_be_a_voter() {
        assert_eq!(voters_wanted(1), 1);
        assert_eq!(voters_wanted(2), 2);
        assert_eq!(voters_wanted(3), 3);
        assert_eq!(voters_wanted(5), 3);
    }

    #[test]
    fn default_plan_is_three_nodes_on_consecutive_ports() {
        let plan = DevPlan::new(PathBuf::from(".shoal/dev"), None, None, None, None).unwrap();
        assert_eq!(plan.nodes.len(), 3);
        let apis: Vec<_> = plan.nodes.iter().map(|n| n.api.to_string()).collect();
        assert_eq!(apis, ["127.0.0.1:7070", "127.0.0.1:7071", "127.0.0.1:7072"]);
        assert_eq!(plan.nodes[2].listen, addr("127.0.0.1:8072"));
        assert_eq!(
            plan.nodes[1].log_path,
            PathBuf::from(".shoal/dev/node-1/agent.log")
        );
        assert_eq!(
            plan.admin_token_path(),
            PathBuf::from(".shoal/dev/admin.token")
        );
    }

    #[test]
    fn agent_flags_bootstrap_node_zero_and_join_the_others_once() {
        let plan = DevPlan::new(
            PathBuf::from("d"),
            Some(2),
            Some(addr("127.0.0.1:9000")),
            None,
            None,
        )
        .unwrap();
        assert_eq!(
            plan.agent_args(&plan.nodes[0], None).join(" "),
            "agent --data-dir d/node-0 --listen 127.0.0.1:10000 --api 127.0.0.1:9000 --mesh userspace --bootstrap --admin-token-file d/admin.token"
        );
        assert_eq!(
            plan.agent_args(&plan.nodes[1], Some("tok")).join(" "),
            "agent --data-dir d/node-1 --listen 127.0.0.1:10001 --api 127.0.0.1:9001 --mesh userspace --join tok"
        );
        let remembered = DevLayout {
            nodes: 2,
            api: addr("127.0.0.1:9000"),
            listen: addr("127.0.0.1:10000"),
            joined: 2,
        };
        let again = DevPlan::new(PathBuf::from("d"), None, None, None, Some(&remembered)).unwrap();
        assert!(!again
            .agent_args(&again.nodes[1], Some("tok"))
            .contains(&"--join".to_string()));
    }

    #[test]
    fn remembered_layout_is_used_unless_flags_override_it() {
        let remembered = DevLayout {
            nodes: 1,
            api: addr("127.0.0.1:9100"),
            listen: addr("127.0.0.1:9200"),
            joined: 1,
        };
        let plan = DevPlan::new(PathBuf::from("d"), None, None, None, Some(&remembered)).unwrap();
        assert_eq!(plan.layout, remembered);
        let plan =
            DevPlan::new(PathBuf::from("d"), Some(2), None, None, Some(&remembered)).unwrap();
        assert_eq!(plan.nodes.len(), 2);
        assert_eq!(plan.nodes[1].api, addr("127.0.0.1:9101"));
        assert!(plan.has_joined(0) && !plan.has_joined(1));
    }

    #[test]
    fn impossible_layouts_are_refused() {
        assert!(DevPlan::new(PathBuf::from("d"), Some(0), None, None, None).is_err());
        assert!(DevPlan::new(
            PathBuf::from("d"),
            Some(3),
            Some(addr("127.0.0.1:65534")),
            Some(addr("127.0.0.1:1000")),
            None
        )
        .is_err());
        assert!(DevPlan::new(
            PathBuf::from("d"),
            Some(3),
            Some(addr("127.0.0.1:7070")),
            Some(addr("127.0.0.1:7071")),
            None
        )
        .is_err());
        assert!(DevPlan::new(
            PathBuf::from("d"),
            Some(3),
            Some(addr("127.0.0.1:7070")),
            Some(addr("127.0.0.1:7070")),
            None
        )
        .is_err());
    }
}
