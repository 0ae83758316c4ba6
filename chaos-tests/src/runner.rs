//! One chaos run against real `shoal agent` processes: form the cluster (bootstrap, then joins
//! with tokens), run the seeded workload and the nemesis schedule side by side while observing
//! the cluster, stop the faults, wait for convergence, read the final state, scan for leftovers,
//! check every invariant and build the report.
//!
//! The run's async part executes on one thread that entered the hub namespace, so the HTTP
//! client reaches every node's private address; everything it creates is removed by the drop
//! guards when the run ends, fails or is interrupted.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{bail, Context};
use nix::sys::signal::Signal;
use reqwest::Method;
use serde_json::{json, Value};
use tracing::{info, warn};

use shoal_chaos::checkers::desired_state::{self, NodeRoom, WorkstationStatus};
use shoal_chaos::checkers::{check_all, CheckConfig};
use shoal_chaos::clock::RunClock;
use shoal_chaos::env::cleanup::{self, RunGuard};
use shoal_chaos::env::datadir;
use shoal_chaos::env::probe::enter_netns;
use shoal_chaos::env::RunTag;
use shoal_chaos::history::{
    CapacityObservation, ClusterSnapshot, Expectation, FaultRecord, FinalState, History,
    LeaderObservation, LeftoverScan, LogFollow, NodeIdx, OpKind, Operation, Outcome,
    RunningObservation,
};
use shoal_chaos::nemesis::{
    kill_precondition, pick, FaultMode, NemesisConfig, Schedule, ScheduledFault, ServerAnswer,
};
use shoal_chaos::partition::Grudge;
use shoal_chaos::report::{Report, RunInfo};
use shoal_chaos::workload::{producer_key, producer_pattern, PoolView, Workload, WorkloadConfig};

use crate::api::{Api, ClusterInfo, NodeInfo, Process, TokenCreated, Workstation};
use crate::cluster::{Cluster, Role};

/// What to run.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// `quick` or `soak 30m`.
    pub scenario: String,
    /// The seed of the schedule and the workload.
    pub seed: u64,
    /// The binary under test.
    pub shoal: PathBuf,
    /// Servers (Raft voters that also run work).
    pub n_servers: usize,
    /// Worker-only nodes.
    pub n_workers: usize,
    /// `tun` or `userspace`.
    pub mesh: String,
    /// The nemesis schedule's configuration.
    pub nemesis: NemesisConfig,
    /// How long the cluster has to converge after the faults stop.
    pub convergence_ms_max: u64,
    /// Concurrent workload clients.
    pub n_clients: u64,
    /// Set on Ctrl-C / SIGTERM: the run stops and cleans up.
    pub cancel: Arc<AtomicBool>,
    /// Where the agents' logs are copied when the run ends (the run's own directory goes).
    pub logs_dir: Option<PathBuf>,
    /// Fault modes the scenario left out, with the reason (for the report).
    pub modes_left_out: Vec<String>,
    /// TOML appended to every agent's config (`--agent-config`).
    pub agent_config_extra: Option<String>,
}

/// How long a node has to come up (bootstrap or join).
const NODE_UP_TIMEOUT_MS: u64 = 60_000;
/// Per-request timeout of workload requests.
const REQUEST_TIMEOUT_MS: u64 = 5_000;
/// Per-request timeout of observation requests.
const OBSERVE_TIMEOUT_MS: u64 = 1_000;
/// Period of the observer.
const OBSERVE_PERIOD_MS: u64 = 500;
/// How long two nodes may both run a workstation during a re-placement.
pub const LEASE_MS: u64 = 12_000;
/// How long one log follow listens before hanging up (the next follow resumes).
const FOLLOW_LISTEN_MS: u64 = 1_500;
/// Most events one log follow takes before hanging up.
const FOLLOW_EVENTS_MAX: usize = 500;
/// How long a fault that targets the leader waits for one to be known.
const LEADER_WAIT_MS: u64 = 10_000;
/// Period of the failover prober's writes.
const PROBE_PERIOD_MS: u64 = 25;
/// How long the up nodes have to serve one final state after the run.
const FINAL_READ_AGREE_MS: u64 = 15_000;
/// Most failover probe writes in flight at once: more than one probe period fits in the
/// probes' 1 s timeout, so that requests a follower holds (forwarding to a dead leader) never
/// delay the next attempt.
const PROBES_IN_FLIGHT_MAX: usize = 48;
/// Most `DELETE /v1/nodes/{id}` attempts of one removal while the answer is indeterminate.
const REMOVE_ATTEMPTS_MAX: u32 = 3;
/// How long a fault that owes a reaction is watched.
const REACTION_WATCH_MS: u64 = 10_000;
/// How long a leader kill waits for a settled cluster (`nemesis::kill_precondition`) before it
/// fires anyway, its failover then reported apart with the reason.
const KILL_SETTLE_WAIT_MS_MAX: u64 = 15_000;
/// How long the cluster must stay settled under one leader and term before a leader kill: a
/// voter that restarted, resumed or rejoined has followed that leader for at least this long.
const KILL_SETTLED_FOR_MS: u64 = 1_000;

/// Runs the scenario; blocks until the run is over and everything is cleaned up.
pub fn run(options: RunOptions) -> anyhow::Result<(Report, History)> {
    let handle = std::thread::Builder::new()
        .name("chaos-run".into())
        .spawn(move || run_on_thread(options))
        .context("spawning the run thread")?;
    match handle.join() {
        Ok(result) => result,
        Err(_) => bail!("the run thread panicked (its guards have cleaned up)"),
    }
}

fn run_on_thread(options: RunOptions) -> anyhow::Result<(Report, History)> {
    let tag = RunTag::random();
    info!(
        tag = tag.as_str(),
        seed = options.seed,
        "chaos run starting"
    );
    // Declared first, dropped last: sweeps whatever the other guards missed.
    let _guard = RunGuard::new(tag.clone());
    let schedule = Schedule::generate(options.seed, &options.nemesis)?;
    let mut roles = vec![Role::ServerWorker; options.n_servers];
    roles.extend(std::iter::repeat_n(Role::Worker, options.n_workers));
    let cluster = Cluster::prepare(
        &tag,
        &roles,
        &options.shoal,
        &options.mesh,
        options.agent_config_extra.as_deref(),
    )?;
    enter_netns(cluster.net.hub_ns())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the run's runtime")?;
    let logs_dir = options.logs_dir.clone();
    let n_nodes = roles.len();
    let result = runtime.block_on(run_async(options, schedule, cluster));
    // The runtime (and with it the context holding the cluster) is dropped here, before the
    // RunGuard's final sweep.
    drop(runtime);
    if let Some(dir) = logs_dir {
        keep_agent_logs(&tag, n_nodes, &dir);
    }
    result
}

/// Copies every node's agent log to `dir/n<idx>.log` (replacing an earlier run's), for
/// diagnosis after the run's directory is gone.
fn keep_agent_logs(tag: &RunTag, n_nodes: usize, dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
    if let Err(error) = std::fs::create_dir_all(dir) {
        warn!(%error, dir = %dir.display(), "cannot keep the agents' logs");
        return;
    }
    for idx in 0..n_nodes {
        let from = tag.root_dir().join(format!("n{idx}")).join("agent.log");
        let to = dir.join(format!("n{idx}.log"));
        if let Err(error) = std::fs::copy(&from, &to) {
            warn!(%error, from = %from.display(), "cannot keep an agent log");
        }
    }
    info!(dir = %dir.display(), "agent logs kept");
}

/// Everything the run's tasks share.
struct Ctx {
    clock: RunClock,
    cluster: Mutex<Cluster>,
    history: Mutex<History>,
    api: Api,
    api_fast: Api,
    /// Workstation key → id.
    ids: Mutex<BTreeMap<String, String>>,
    /// Ids of workstations whose delete was acknowledged.
    deleted_ids: Mutex<Vec<String>>,
    /// Keys of workstations whose delete was acknowledged.
    deleted_keys: Mutex<Vec<String>>,
    /// Per workstation key, the offset to resume its log follow from.
    follow_next: Mutex<BTreeMap<String, u64>>,
    op_seq: AtomicU64,
    stop_clients: AtomicBool,
    /// Set at a leader kill; the failover prober writes until one write is acknowledged.
    probing: AtomicBool,
    cancel: Arc<AtomicBool>,
    notes: Mutex<Vec<String>>,
    /// The observer's latest workstations and nodes, from which each workload client takes its
    /// [`PoolView`].
    pool: Mutex<(Vec<WorkstationStatus>, Vec<NodeRoom>)>,
}

/// Locks a mutex; a poisoned lock only means another task panicked, and the data is still
/// the best record there is.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Ctx {
    fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }

    /// Sleeps `ms`, waking early when the run is cancelled; false if it was.
    async fn sleep_ms(&self, ms: u64) -> bool {
        let mut left = ms;
        while left > 0 {
            if self.cancelled() {
                return false;
            }
            let step = left.min(200);
            tokio::time::sleep(Duration::from_millis(step)).await;
            left -= step;
        }
        !self.cancelled()
    }

    fn record(
        &self,
        node: NodeIdx,
        kind: OpKind,
        invoke_ms: u64,
        result: Result<(), (Outcome, String)>,
    ) {
        let (outcome, error) = match result {
            Ok(()) => (Outcome::Ok, None),
            Err((outcome, error)) => (outcome, Some(error)),
        };
        let op = Operation {
            id: self.op_seq.fetch_add(1, Ordering::Relaxed),
            node,
            kind,
            invoke_ms,
            complete_ms: self.clock.now_ms(),
            outcome,
            error,
        };
        lock(&self.history).operations.push(op);
    }

    fn up_nodes(&self) -> Vec<NodeIdx> {
        lock(&self.cluster).up_nodes()
    }

    async fn cluster_info(&self, idx: NodeIdx) -> Option<ClusterInfo> {
        self.api_fast
            .get::<ClusterInfo>(Cluster::api_addr(idx), "/v1/cluster")
            .await
            .ok()
    }

    /// The leader as the first up node that knows one reports it.
    async fn find_leader(&self) -> Option<NodeIdx> {
        for idx in self.up_nodes() {
            if let Some(info) = self.cluster_info(idx).await {
                if let Some(leader) = info.leader {
                    return lock(&self.cluster).idx_of(&leader);
                }
            }
        }
        None
    }

    /// The leader, waiting up to `timeout_ms` for one to be known.
    async fn wait_leader(&self, timeout_ms: u64) -> Option<NodeIdx> {
        let deadline_ms = self.clock.now_ms() + timeout_ms;
        loop {
            if let Some(leader) = self.find_leader().await {
                return Some(leader);
            }
            if self.clock.now_ms() > deadline_ms || !self.sleep_ms(100).await {
                return None;
            }
        }
    }

    /// Waits until node `idx` answers `/v1/cluster` with a known leader; learns its id.
    async fn wait_node_up(&self, idx: NodeIdx, timeout_ms: u64) -> anyhow::Result<String> {
        let deadline_ms = self.clock.now_ms() + timeout_ms;
        let mut ready_line_wait_ms: u64 = 5_000;
        loop {
            if lock(&self.cluster).exited(idx) {
                bail!(
                    "node {idx}'s agent exited; last log lines:\n{}",
                    lock(&self.cluster).log_tail(idx, 20)
                );
            }
            if let Some(info) = self.cluster_info(idx).await {
                // The ready line follows the API's start by a moment: wait for it a little.
                let ready_line = lock(&self.cluster).ready_cgroup(idx).is_some();
                if info.leader.is_some() && !ready_line && ready_line_wait_ms > 0 {
                    ready_line_wait_ms = ready_line_wait_ms.saturating_sub(200);
                } else if info.leader.is_some() {
                    let mut cluster = lock(&self.cluster);
                    // The node keeps its sandbox cgroups under the name its ready line gives
                    // (SPEC "Isolation"); recorded so that cleanup removes them, also after a
                    // crash of the harness.
                    if let Some(name) = cluster.ready_cgroup(idx) {
                        if let Err(error) = cleanup::record_cgroup_name(&cluster.tag, &name) {
                            warn!(%error, "could not record the node's cgroup name");
                        }
                        cluster.cgroup_names.insert(name.clone());
                        cluster.nodes[idx].cgroup = Some(name);
                    }
                    cluster.nodes[idx].id = Some(info.answered_by.clone());
                    return Ok(info.answered_by);
                }
            }
            if self.clock.now_ms() > deadline_ms || !self.sleep_ms(200).await {
                bail!(
                    "node {idx} did not come up within {timeout_ms} ms; last log lines:\n{}",
                    lock(&self.cluster).log_tail(idx, 20)
                );
            }
        }
    }

    /// Waits until an up node reports `n_servers` Raft voters (SPEC: a server is a Raft voter;
    /// joined servers start as learners and are promoted one by one).
    async fn wait_voters(&self, n_servers: usize, timeout_ms: u64) -> anyhow::Result<()> {
        let deadline_ms = self.clock.now_ms() + timeout_ms;
        let mut voters = Vec::new();
        loop {
            for idx in self.up_nodes() {
                if let Some(info) = self.cluster_info(idx).await {
                    voters = info.servers;
                    if voters.len() == n_servers {
                        info!(?voters, "every server is a voter");
                        return Ok(());
                    }
                }
            }
            if self.clock.now_ms() > deadline_ms || !self.sleep_ms(200).await {
                bail!(
                    "{} of {n_servers} servers are Raft voters after {timeout_ms} ms: {voters:?}",
                    voters.len()
                );
            }
        }
    }

    /// Creates a join token through any up node.
    async fn create_token(&self, role: Role) -> Result<String, (Outcome, String)> {
        let body = match role {
            Role::Worker => json!({"ttl_ms": 600_000, "uses": 1, "role": "worker"}),
            Role::ServerWorker => json!({"ttl_ms": 600_000, "uses": 1}),
        };
        let node = self.up_nodes().first().copied().unwrap_or(0);
        self.api
            .call::<TokenCreated>(
                Method::POST,
                Cluster::api_addr(node),
                "/v1/tokens",
                Some(body),
            )
            .await
            .map(|t| t.token)
            .map_err(|e| (e.outcome, e.message))
    }

    /// Joins node `idx` with a fresh token, recorded as a `JoinNode` operation.
    async fn join(&self, idx: NodeIdx) -> anyhow::Result<()> {
        let invoke_ms = self.clock.now_ms();
        let role = lock(&self.cluster).nodes[idx].role;
        let result = async {
            let token = self.create_token(role).await?;
            {
                let mut cluster = lock(&self.cluster);
                cluster.nodes[idx].join_args = vec!["--join".into(), token];
                cluster
                    .start(idx, None)
                    .map_err(|e| (Outcome::Fail, format!("{e:#}")))?;
            }
            self.wait_node_up(idx, NODE_UP_TIMEOUT_MS)
                .await
                .map(|_| ())
                .map_err(|e| (Outcome::Unknown, format!("{e:#}")))
        }
        .await;
        let error = result.as_ref().err().map(|(_, e)| e.clone());
        self.record(idx, OpKind::JoinNode { node: idx }, invoke_ms, result);
        match error {
            None => Ok(()),
            Some(e) => bail!("node {idx} could not join: {e}"),
        }
    }
}

async fn run_async(
    options: RunOptions,
    schedule: Schedule,
    cluster: Cluster,
) -> anyhow::Result<(Report, History)> {
    let clock = RunClock::start();
    let n_nodes = cluster.nodes.len();
    let admin_token_path = cluster.admin_token_path.clone();
    let placeholder = Api::new(String::new(), Duration::from_millis(REQUEST_TIMEOUT_MS))?;
    let ctx = Arc::new(Ctx {
        clock,
        cluster: Mutex::new(cluster),
        history: Mutex::new(History::default()),
        api: placeholder.clone(),
        api_fast: Api::new(String::new(), Duration::from_millis(OBSERVE_TIMEOUT_MS))?,
        ids: Mutex::new(BTreeMap::new()),
        deleted_ids: Mutex::new(Vec::new()),
        deleted_keys: Mutex::new(Vec::new()),
        follow_next: Mutex::new(BTreeMap::new()),
        op_seq: AtomicU64::new(0),
        stop_clients: AtomicBool::new(false),
        probing: AtomicBool::new(false),
        cancel: options.cancel.clone(),
        notes: Mutex::new(Vec::new()),
        pool: Mutex::new((Vec::new(), Vec::new())),
    });
    spawn_signal_watch(options.cancel.clone());

    info!("--- bootstrap node 0");
    {
        let mut cluster = lock(&ctx.cluster);
        cluster.nodes[0].join_args = vec!["--bootstrap".into()];
        cluster.start(0, None)?;
    }
    let token = wait_admin_token(&ctx, &admin_token_path).await?;
    // The admin key is known only now; rebuild the context's clients with it.
    let ctx = Arc::new(Ctx {
        api: ctx.api.with_token(token.clone()),
        api_fast: ctx.api_fast.with_token(token),
        ..Arc::try_unwrap(ctx).map_err(|_| anyhow::anyhow!("context still shared"))?
    });
    ctx.wait_node_up(0, NODE_UP_TIMEOUT_MS).await?;

    info!(
        n_nodes,
        "--- join the other nodes with tokens, wait until every server votes"
    );
    let formed = async {
        for idx in 1..n_nodes {
            ctx.join(idx).await?;
        }
        ctx.wait_voters(options.n_servers, NODE_UP_TIMEOUT_MS).await
    }
    .await;
    if let Err(error) = formed {
        // A verdict still: the run failed because the cluster could not form.
        warn!(error = %format!("{error:#}"), "the cluster did not form");
        let history = std::mem::take(&mut *lock(&ctx.history));
        let report = Report::new(
            RunInfo {
                scenario: options.scenario.clone(),
                seed: options.seed,
                shoal_binary: options.shoal.display().to_string(),
                n_nodes,
                duration_ms: ctx.clock.now_ms(),
                modes_left_out: options.modes_left_out.clone(),
            },
            &history,
            Vec::new(),
            vec![format!("the cluster did not form: {error:#}")],
        );
        return Ok((report, history));
    }

    info!(
        n_faults = schedule.faults.len(),
        "--- workload, observer and nemesis"
    );
    let mut tasks = Vec::new();
    for client in 0..options.n_clients {
        tasks.push(tokio::spawn(client_loop(ctx.clone(), options.seed, client)));
    }
    tasks.push(tokio::spawn(failover_prober(ctx.clone())));
    let observer = tokio::spawn(observer_loop(ctx.clone()));
    // How far a soak's pauses have pushed the rest of the schedule back.
    let mut shift_ms = 0;
    let n_faults = schedule.faults.len();
    for (idx, fault) in schedule.faults.iter().enumerate() {
        let wait_ms = (fault.start_ms + shift_ms).saturating_sub(ctx.clock.now_ms());
        if !ctx.sleep_ms(wait_ms).await {
            break;
        }
        let record = inject(&ctx, fault).await;
        info!(seq = fault.seq, mode = ?fault.mode, fired = record.fired(), error = ?record.error, "fault done");
        lock(&ctx.history).faults.push(record);
        if options.nemesis.pauses_after(fault.seq, n_faults) {
            info!(
                seq = fault.seq,
                "--- round over: heal, restart what is down, wait for convergence"
            );
            heal_all(&ctx).await;
            let pause_ms = ctx.clock.now_ms();
            lock(&ctx.history).pauses_ms.push(pause_ms);
            wait_converged(&ctx, pause_ms, options.convergence_ms_max).await;
            if let Some(next) = schedule.faults.get(idx + 1) {
                let late_ms = ctx.clock.now_ms().saturating_sub(next.start_ms + shift_ms);
                shift_ms += late_ms;
            }
        }
    }

    info!("--- faults over: heal, restart what is down, wait for convergence");
    heal_all(&ctx).await;
    let faults_end_ms = ctx.clock.now_ms();
    wait_converged(&ctx, faults_end_ms, options.convergence_ms_max).await;
    ctx.stop_clients.store(true, Ordering::Relaxed);
    for task in tasks {
        let _ = task.await;
    }
    observer.abort();

    info!("--- final state and leftover scan");
    let (final_state, final_note) = read_final_state(&ctx).await;
    let leftovers = scan_leftovers(&ctx);
    let duration_ms = ctx.clock.now_ms();
    let mut history = std::mem::take(&mut *lock(&ctx.history));
    history.final_state = final_state;
    history.leftovers.push(leftovers);
    let mut notes = std::mem::take(&mut *lock(&ctx.notes));
    notes.extend(final_note);
    if ctx.cancelled() {
        notes.push("interrupted (Ctrl-C or SIGTERM) before the end of the scenario".into());
    }
    let verdicts = check_all(
        &history,
        &CheckConfig {
            lease_ms: LEASE_MS,
            convergence_ms_max: options.convergence_ms_max,
            scheduled_modes: schedule.modes(),
        },
    );
    let shoal_binary = options.shoal.display().to_string();
    let report = Report::new(
        RunInfo {
            scenario: options.scenario.clone(),
            seed: options.seed,
            shoal_binary,
            n_nodes,
            duration_ms,
            modes_left_out: options.modes_left_out.clone(),
        },
        &history,
        verdicts,
        notes,
    );
    Ok((report, history))
}

/// Waits until the last three snapshots since `since_ms` show a converged cluster, or
/// `convergence_ms_max` has passed (the convergence checker then says so).
async fn wait_converged(ctx: &Ctx, since_ms: u64, convergence_ms_max: u64) {
    let deadline_ms = since_ms + convergence_ms_max;
    while ctx.clock.now_ms() < deadline_ms && !ctx.cancelled() {
        let converged = lock(&ctx.history)
            .snapshots
            .iter()
            .rev()
            .take(3)
            .filter(|s| s.at_ms >= since_ms)
            .filter(|s| shoal_chaos::checkers::convergence::converged(s))
            .count()
            == 3;
        if converged {
            break;
        }
        ctx.sleep_ms(250).await;
    }
}

fn spawn_signal_watch(cancel: Arc<AtomicBool>) {
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(error) => {
                    warn!(%error, "cannot watch SIGTERM");
                    let _ = tokio::signal::ctrl_c().await;
                    cancel.store(true, Ordering::Relaxed);
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        warn!("interrupted: stopping the run and cleaning up");
        cancel.store(true, Ordering::Relaxed);
    });
}

async fn wait_admin_token(ctx: &Ctx, path: &Path) -> anyhow::Result<String> {
    let deadline_ms = ctx.clock.now_ms() + NODE_UP_TIMEOUT_MS;
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            let token = text.trim().to_string();
            if !token.is_empty() {
                return Ok(token);
            }
        }
        if lock(&ctx.cluster).exited(0) {
            bail!(
                "the bootstrap node exited; last log lines:\n{}",
                lock(&ctx.cluster).log_tail(0, 20)
            );
        }
        if ctx.clock.now_ms() > deadline_ms || !ctx.sleep_ms(200).await {
            bail!("no admin key at {} after bootstrap", path.display());
        }
    }
}

/// One workload client: seeded operations against the up nodes, round robin.
async fn client_loop(ctx: Arc<Ctx>, seed: u64, client: u64) {
    let mut workload = Workload::new(seed, client, WorkloadConfig::default());
    let mut n_ops = 0usize;
    while !ctx.stop_clients.load(Ordering::Relaxed) && !ctx.cancelled() {
        let pool = {
            let pool = lock(&ctx.pool);
            PoolView::for_client(client, &pool.0, &pool.1)
        };
        let kind = workload.next_op(&pool);
        let up = ctx.up_nodes();
        let Some(node) = up.get(n_ops % up.len().max(1)).copied() else {
            ctx.sleep_ms(200).await;
            continue;
        };
        n_ops += 1;
        let invoke_ms = ctx.clock.now_ms();
        let result = execute(&ctx, node, &kind).await;
        ctx.record(node, kind, invoke_ms, result);
        ctx.sleep_ms(100).await;
    }
}

/// After each leader kill, small writes (join tokens) until the first one is acknowledged, so
/// that failover is measured to within ~`PROBE_PERIOD_MS`: a client that retries promptly
/// against the other nodes. A new attempt starts every `PROBE_PERIOD_MS`, round robin over the
/// up nodes, without waiting for earlier ones (a node that hangs does not hold the measurement
/// up), at most `PROBES_IN_FLIGHT_MAX` at a time. Only in those windows: the cluster keeps
/// every token it ever issued, and refused attempts create none, so a run costs a few tokens
/// per kill.
async fn failover_prober(ctx: Arc<Ctx>) {
    let mut n = 0usize;
    let mut in_flight = tokio::task::JoinSet::new();
    while !ctx.stop_clients.load(Ordering::Relaxed) && !ctx.cancelled() {
        while in_flight.try_join_next().is_some() {}
        if !ctx.probing.load(Ordering::Relaxed) || in_flight.len() >= PROBES_IN_FLIGHT_MAX {
            ctx.sleep_ms(PROBE_PERIOD_MS).await;
            continue;
        }
        let up = ctx.up_nodes();
        let Some(node) = up.get(n % up.len().max(1)).copied() else {
            ctx.sleep_ms(PROBE_PERIOD_MS).await;
            continue;
        };
        n += 1;
        let probe_ctx = ctx.clone();
        in_flight.spawn(async move {
            let ctx = probe_ctx;
            let invoke_ms = ctx.clock.now_ms();
            let result = ctx
                .api_fast
                .call::<Value>(
                    Method::POST,
                    Cluster::api_addr(node),
                    "/v1/tokens",
                    Some(json!({"ttl_ms": 1000, "uses": 1})),
                )
                .await
                .map(|_| ())
                .map_err(|e| (e.outcome, e.message));
            if result.is_ok() {
                ctx.probing.store(false, Ordering::Relaxed);
            }
            ctx.record(node, OpKind::CreateToken, invoke_ms, result);
        });
        ctx.sleep_ms(PROBE_PERIOD_MS).await;
    }
    // Every attempt is in the history before the run reads it.
    while in_flight.join_next().await.is_some() {}
}

/// The id of workstation `key`, from creates seen so far or by listing.
async fn ws_id(ctx: &Ctx, node: NodeIdx, key: &str) -> Result<String, (Outcome, String)> {
    if let Some(id) = lock(&ctx.ids).get(key) {
        return Ok(id.clone());
    }
    let list: Vec<Workstation> = ctx
        .api
        .get(Cluster::api_addr(node), "/v1/workstations")
        .await
        .map_err(|e| (Outcome::Fail, format!("looking up {key}: {e}")))?;
    for ws in list {
        if let Some(name) = ws.name {
            lock(&ctx.ids).insert(name, ws.id);
        }
    }
    lock(&ctx.ids).get(key).cloned().ok_or((
        Outcome::Fail,
        format!("workstation {key} unknown: not sent"),
    ))
}

async fn execute(ctx: &Ctx, node: NodeIdx, kind: &OpKind) -> Result<(), (Outcome, String)> {
    let addr = Cluster::api_addr(node);
    let err = |e: crate::api::ApiError| (e.outcome, e.message);
    match kind {
        OpKind::CreateWorkstation {
            key,
            cpu_millis,
            memory_bytes,
        } => {
            let body = json!({"name": key, "cpu_millis": cpu_millis, "memory_bytes": memory_bytes});
            let ws: Workstation = ctx
                .api
                .call(Method::POST, addr, "/v1/workstations", Some(body))
                .await
                .map_err(err)?;
            lock(&ctx.ids).insert(key.clone(), ws.id);
            Ok(())
        }
        OpKind::DeleteWorkstation { key } => {
            let id = ws_id(ctx, node, key).await?;
            ctx.api
                .call::<Value>(
                    Method::DELETE,
                    addr,
                    &format!("/v1/workstations/{id}"),
                    None,
                )
                .await
                .map_err(err)?;
            lock(&ctx.deleted_ids).push(id);
            lock(&ctx.deleted_keys).push(key.clone());
            Ok(())
        }
        OpKind::ResizeWorkstation {
            key,
            cpu_millis,
            memory_bytes,
        } => {
            let id = ws_id(ctx, node, key).await?;
            let body = json!({"cpu_millis": cpu_millis, "memory_bytes": memory_bytes});
            ctx.api
                .call::<Value>(
                    Method::PATCH,
                    addr,
                    &format!("/v1/workstations/{id}"),
                    Some(body),
                )
                .await
                .map(|_| ())
                .map_err(err)
        }
        OpKind::ExecProcess { key, argv } => {
            let id = ws_id(ctx, node, key).await?;
            let body = json!({"argv": argv, "restart": "always"});
            ctx.api
                .call::<Value>(
                    Method::POST,
                    addr,
                    &format!("/v1/workstations/{id}/processes"),
                    Some(body),
                )
                .await
                .map(|_| ())
                .map_err(err)
        }
        OpKind::Run { argv } => {
            let body = json!({"argv": argv, "timeout_ms": 3000});
            ctx.api
                .call::<Value>(Method::POST, addr, "/v1/runs", Some(body))
                .await
                .map(|_| ())
                .map_err(err)
        }
        OpKind::FollowLogs { key } => {
            let id = ws_id(ctx, node, key).await?;
            let last_id = lock(&ctx.follow_next).get(key).copied();
            let segment = ctx
                .api
                .follow_logs(addr, &id, last_id, FOLLOW_LISTEN_MS, FOLLOW_EVENTS_MAX)
                .await
                .map_err(err)?;
            if let Some(next) = segment.last_id {
                lock(&ctx.follow_next).insert(key.clone(), next);
            }
            let mut history = lock(&ctx.history);
            match history.log_follows.iter_mut().find(|f| f.key == *key) {
                Some(follow) => follow.events.extend(segment.events),
                None => history.log_follows.push(LogFollow {
                    key: key.clone(),
                    events: segment.events,
                }),
            }
            Ok(())
        }
        OpKind::CreateToken | OpKind::JoinNode { .. } => {
            Err((Outcome::Fail, "not a client operation".into()))
        }
    }
}

/// Every `OBSERVE_PERIOD_MS`: leaders from every up node; placements, capacity and a
/// convergence snapshot from one of them.
async fn observer_loop(ctx: Arc<Ctx>) {
    while !ctx.cancelled() {
        observe_once(&ctx).await;
        ctx.sleep_ms(OBSERVE_PERIOD_MS).await;
    }
}

async fn observe_once(ctx: &Ctx) {
    let up = ctx.up_nodes();
    let mut answers = Vec::new();
    for &idx in &up {
        let info = ctx.cluster_info(idx).await;
        let at_ms = ctx.clock.now_ms();
        if let Some(info) = &info {
            lock(&ctx.history).leaders.push(LeaderObservation {
                at_ms,
                observer: idx,
                term: info.term,
                leader: info.leader.clone(),
            });
        }
        answers.push((idx, info.map(|i| (i.term, i.leader))));
    }
    let Some(&source) = up.first() else {
        return;
    };
    let addr = Cluster::api_addr(source);
    let nodes: Result<Vec<NodeInfo>, _> = ctx.api_fast.get(addr, "/v1/nodes").await;
    let workstations: Result<Vec<Workstation>, _> =
        ctx.api_fast.get(addr, "/v1/workstations").await;
    let at_ms = ctx.clock.now_ms();
    let (Ok(nodes), Ok(workstations)) = (nodes, workstations) else {
        return;
    };
    let up_ids: Vec<String> = {
        let cluster = lock(&ctx.cluster);
        up.iter()
            .filter_map(|&i| cluster.nodes[i].id.clone())
            .collect()
    };
    let host_running = {
        let cluster = lock(&ctx.cluster);
        let node_cgroups: Vec<(NodeIdx, String)> = cluster
            .nodes
            .iter()
            .filter_map(|n| n.cgroup.clone().map(|name| (n.idx, name)))
            .collect();
        host_workstation_processes(&cluster.agent_pids, &node_cgroups)
    };
    let mut history = lock(&ctx.history);
    // Host evidence: the workload's log producer of each workstation, found by its command
    // line, attributed to the node whose agent spawned it (by the executor's tree marker).
    for (idx, key) in &host_running {
        let node = lock(&ctx.cluster).nodes[*idx]
            .id
            .clone()
            .unwrap_or_else(|| format!("node-{idx}"));
        let generation = workstations
            .iter()
            .find(|w| w.name.as_deref() == Some(key.as_str()))
            .map(|w| w.generation)
            .unwrap_or(0);
        history.running.push(RunningObservation {
            at_ms,
            node,
            key: key.clone(),
            generation,
        });
    }
    for ws in &workstations {
        if let (Some(node), Some(key), "running") = (&ws.node, &ws.name, ws.state.as_str()) {
            history.running.push(RunningObservation {
                at_ms,
                node: node.clone(),
                key: key.clone(),
                generation: ws.generation,
            });
        }
    }
    for node in &nodes {
        let placed = workstations
            .iter()
            .filter(|w| w.node.as_deref() == Some(node.id.as_str()))
            .filter(|w| matches!(w.state.as_str(), "pending" | "running" | "stopping"))
            .map(|w| (w.cpu_millis, w.memory_bytes))
            .collect();
        history.capacity.push(CapacityObservation {
            at_ms,
            node: node.id.clone(),
            cpu_allocatable_millis: node.capacity.cpu_millis,
            memory_allocatable_bytes: node.capacity.memory_bytes,
            cpu_reserved_millis: node.reserved.cpu_millis,
            memory_reserved_bytes: node.reserved.memory_bytes,
            placed_reservations: placed,
        });
    }
    let node_states = up_ids
        .iter()
        .map(|id| {
            let state = nodes
                .iter()
                .find(|n| &n.id == id)
                .map(|n| n.state.clone())
                .unwrap_or_else(|| "missing".into());
            (id.clone(), state)
        })
        .collect();
    // Every workstation the cluster keeps should be running on a node, unless it is pending
    // because no ready worker node has room for it (then pending is right).
    let statuses: Vec<WorkstationStatus> = workstations
        .iter()
        .map(|w| WorkstationStatus {
            key: w.name.clone().unwrap_or_else(|| w.id.clone()),
            state: w.state.clone(),
            node: w.node.clone(),
            cpu_millis: w.cpu_millis,
            memory_bytes: w.memory_bytes,
        })
        .collect();
    let rooms = node_rooms(&nodes);
    let comparison = desired_state::compare(&statuses, &rooms);
    *lock(&ctx.pool) = (statuses, rooms);
    history.snapshots.push(ClusterSnapshot {
        at_ms,
        leaders: answers,
        node_states,
        desired_equals_actual: comparison.differences.is_empty(),
        differences: comparison.differences,
        pending_fits_nowhere: comparison.pending_fits_nowhere,
    });
}

/// The nodes of a `GET /v1/nodes` answer as placement sees them.
fn node_rooms(nodes: &[NodeInfo]) -> Vec<NodeRoom> {
    nodes
        .iter()
        .map(|n| NodeRoom {
            id: n.id.clone(),
            state: n.state.clone(),
            // A node that does not say counts as a worker: the stricter reading (it could
            // take the workstation, so a pending one is a difference).
            worker: n
                .role
                .as_deref()
                .is_none_or(|roles| roles.split(',').any(|role| role.trim() == "worker")),
            cpu_allocatable_millis: n.capacity.cpu_millis,
            memory_allocatable_bytes: n.capacity.memory_bytes,
            cpu_reserved_millis: n.reserved.cpu_millis,
            memory_reserved_bytes: n.reserved.memory_bytes,
            workstations_hosted: n.n_workstations,
            workstations_max: n.workstations_max,
        })
        .collect()
}

/// Injects one scheduled fault and heals it; the record says what happened.
async fn inject(ctx: &Ctx, fault: &ScheduledFault) -> FaultRecord {
    let mut record = FaultRecord {
        seq: fault.seq,
        mode: fault.mode,
        targets: Vec::new(),
        start_ms: None,
        end_ms: None,
        error: None,
        expectation: None,
    };
    if let Err(error) = inject_inner(ctx, fault, &mut record).await {
        warn!(seq = fault.seq, mode = ?fault.mode, error = %format!("{error:#}"), "fault failed");
        record.error = Some(format!("{error:#}"));
        // Leave the cluster whole for the next fault whatever happened.
        heal_all(ctx).await;
    }
    record
}

async fn inject_inner(
    ctx: &Ctx,
    fault: &ScheduledFault,
    record: &mut FaultRecord,
) -> anyhow::Result<()> {
    // A fault right after another may find the cluster still electing: wait a little.
    let leader = ctx.wait_leader(LEADER_WAIT_MS).await;
    let (servers, workers, up) = {
        let cluster = lock(&ctx.cluster);
        let servers = cluster.up_servers();
        let workers: Vec<NodeIdx> = cluster
            .up_nodes()
            .into_iter()
            .filter(|i| cluster.nodes[*i].role == Role::Worker)
            .collect();
        (servers, workers, cluster.up_nodes())
    };
    let followers: Vec<NodeIdx> = servers
        .iter()
        .copied()
        .filter(|s| Some(*s) != leader)
        .collect();
    let need = |v: Option<NodeIdx>, what: &str| v.with_context(|| format!("no {what} to target"));
    let duration_ms = fault.duration_ms;
    match fault.mode {
        FaultMode::KillLeader | FaultMode::KillFollower | FaultMode::KillWorker => {
            let settled_leader = if fault.mode == FaultMode::KillLeader {
                let (leader, unsettled) = settle_for_kill(ctx).await;
                if let Some(reason) = unsettled {
                    warn!(seq = fault.seq, %reason, "leader kill on an unsettled cluster");
                    lock(&ctx.history).unsettled_kills.push((fault.seq, reason));
                }
                leader
            } else {
                None
            };
            let target = match fault.mode {
                FaultMode::KillLeader => need(settled_leader.or(leader), "leader")?,
                FaultMode::KillFollower => need(pick(&followers, fault.target_pick), "follower")?,
                _ => need(pick(&workers, fault.target_pick), "worker-only node")?,
            };
            record.targets = vec![target];
            lock(&ctx.cluster).kill(target)?;
            record.start_ms = Some(ctx.clock.now_ms());
            if fault.mode == FaultMode::KillLeader {
                ctx.probing.store(true, Ordering::Relaxed);
            }
            ctx.sleep_ms(duration_ms).await;
            lock(&ctx.cluster).start(target, None)?;
        }
        FaultMode::PauseLeader => {
            let target = need(leader, "leader")?;
            record.targets = vec![target];
            lock(&ctx.cluster).signal(target, Signal::SIGSTOP)?;
            record.start_ms = Some(ctx.clock.now_ms());
            // Past any sane election timeout.
            ctx.sleep_ms(duration_ms.max(3_000)).await;
            lock(&ctx.cluster).signal(target, Signal::SIGCONT)?;
        }
        FaultMode::PartitionLeaderMinority
        | FaultMode::PartitionMajorityMinority
        | FaultMode::PartitionBridge
        | FaultMode::PartitionOneWay => {
            let all: Vec<NodeIdx> = (0..lock(&ctx.cluster).nodes.len()).collect();
            let grudge = match fault.mode {
                FaultMode::PartitionLeaderMinority => {
                    let leader = need(leader, "leader")?;
                    let minority_size = servers.len().saturating_sub(1) / 2;
                    let mut minority = vec![leader];
                    minority.extend(followers.iter().take(minority_size.saturating_sub(1)));
                    let majority: Vec<NodeIdx> = all
                        .iter()
                        .copied()
                        .filter(|n| !minority.contains(n))
                        .collect();
                    record.targets = minority.clone();
                    Grudge::complete(&[minority, majority])
                }
                FaultMode::PartitionMajorityMinority => {
                    let mut order = all.clone();
                    let shift = (fault.target_pick % all.len() as u64) as usize;
                    order.rotate_left(shift);
                    let (minority, majority) = order.split_at(all.len() / 2);
                    record.targets = minority.to_vec();
                    Grudge::complete(&[minority.to_vec(), majority.to_vec()])
                }
                FaultMode::PartitionBridge => {
                    let bridge = need(pick(&all, fault.target_pick), "bridge node")?;
                    record.targets = vec![bridge];
                    Grudge::bridge(&all, bridge)
                }
                _ => {
                    let from = need(leader, "leader")?;
                    let to = need(pick(&followers, fault.target_pick), "follower")?;
                    record.targets = vec![from, to];
                    Grudge::one_way(from, to)
                }
            };
            lock(&ctx.cluster).net.apply(&grudge)?;
            record.start_ms = Some(ctx.clock.now_ms());
            ctx.sleep_ms(duration_ms).await;
            lock(&ctx.cluster).net.heal()?;
        }
        FaultMode::ClockSkewRestart => {
            let target = need(pick(&up, fault.target_pick), "node")?;
            record.targets = vec![target];
            {
                let mut cluster = lock(&ctx.cluster);
                cluster.kill(target)?;
                cluster.start(target, Some(-3_600))?;
            }
            record.start_ms = Some(ctx.clock.now_ms());
            ctx.sleep_ms(duration_ms.max(5_000)).await;
            let mut cluster = lock(&ctx.cluster);
            cluster.kill(target)?;
            cluster.start(target, None)?;
        }
        FaultMode::CorruptRaftData => {
            let target = need(pick(&followers, fault.target_pick), "follower")?;
            record.targets = vec![target];
            let (data_dir, backup) = {
                let cluster = lock(&ctx.cluster);
                let backup = cluster
                    .tag
                    .root_dir()
                    .join(format!("n{target}"))
                    .join("backup");
                (cluster.data_dir(target), backup)
            };
            lock(&ctx.cluster).kill(target)?;
            datadir::copy_dir(&data_dir, &backup)?;
            let corrupted = datadir::corrupt_raft_data(&data_dir, fault.target_pick)?;
            lock(&ctx.cluster).start(target, None)?;
            record.start_ms = Some(ctx.clock.now_ms());
            let (met, detail) = watch_refusal(ctx, target).await;
            record.expectation = Some(Expectation {
                description: format!(
                    "node refuses to start on corrupted Raft data ({})",
                    corrupted.join(", ")
                ),
                met,
                detail,
            });
            lock(&ctx.cluster).kill(target)?;
            datadir::clear_dir(&data_dir)?;
            datadir::copy_dir(&backup, &data_dir)?;
            let _ = std::fs::remove_dir_all(&backup);
            lock(&ctx.cluster).start(target, None)?;
        }
        FaultMode::RemovedNodeReturns => {
            let candidates = if workers.is_empty() {
                &followers
            } else {
                &workers
            };
            let target = need(pick(candidates, fault.target_pick), "node to remove")?;
            record.targets = vec![target];
            let id = lock(&ctx.cluster).nodes[target]
                .id
                .clone()
                .context("target's id unknown")?;
            lock(&ctx.cluster).kill(target)?;
            let via = need(
                leader
                    .filter(|l| *l != target)
                    .or(followers.first().copied()),
                "node to ask",
            )?;
            // An indeterminate answer (a timeout while the cluster elects) may still have
            // committed the removal: ask again (the answer then says whether it did) rather
            // than restart the node on its old data as if it were a member.
            let mut attempt = 0;
            loop {
                attempt += 1;
                let result = ctx
                    .api
                    .call::<Value>(
                        Method::DELETE,
                        Cluster::api_addr(via),
                        &format!("/v1/nodes/{id}"),
                        None,
                    )
                    .await;
                match result {
                    Ok(_) => break,
                    Err(e) if e.outcome == Outcome::Unknown && attempt < REMOVE_ATTEMPTS_MAX => {
                        warn!(%id, attempt, error = %e, "removal answer unknown: asking again");
                    }
                    Err(e) => bail!("removing node {id} (attempt {attempt}): {e}"),
                }
            }
            {
                let mut cluster = lock(&ctx.cluster);
                cluster.nodes[target].out = true;
                cluster.start(target, None)?;
                cluster.nodes[target].out = true;
            }
            record.start_ms = Some(ctx.clock.now_ms());
            let (met, detail) = watch_stays_out(ctx, target, &id, via).await;
            record.expectation = Some(Expectation {
                description: "a removed node that comes back with its old data stays out".into(),
                met,
                detail,
            });
            // Back in as a new node: wipe its data, join with a fresh token.
            let data_dir = {
                let mut cluster = lock(&ctx.cluster);
                cluster.kill(target)?;
                cluster.nodes[target].id = None;
                cluster.data_dir(target)
            };
            datadir::clear_dir(&data_dir)?;
            lock(&ctx.cluster).nodes[target].out = false;
            let joined = async {
                ctx.join(target).await?;
                // Back to full strength before the next fault: until the new node is promoted,
                // the cluster has one voter fewer, and killing another would leave it without
                // a quorum, which no Raft cluster survives.
                let n_servers = lock(&ctx.cluster)
                    .nodes
                    .iter()
                    .filter(|n| n.role == Role::ServerWorker && !n.out)
                    .count();
                ctx.wait_voters(n_servers, NODE_UP_TIMEOUT_MS).await
            }
            .await;
            if let Err(error) = joined {
                let mut cluster = lock(&ctx.cluster);
                cluster.nodes[target].out = true;
                let _ = cluster.kill(target);
                lock(&ctx.notes).push(format!(
                    "node {target} could not rejoin after removal: {error:#}"
                ));
            }
        }
        FaultMode::DiskFull => {
            let target = need(pick(&up, fault.target_pick), "node")?;
            record.targets = vec![target];
            let written = lock(&ctx.cluster).nodes[target].disk.fill()?;
            info!(target, written, "disk filled");
            record.start_ms = Some(ctx.clock.now_ms());
            ctx.sleep_ms(duration_ms).await;
            lock(&ctx.cluster).nodes[target].disk.unfill()?;
            // Surviving is not enough: a node whose Raft stopped on the write error would stay
            // up as a member that can neither vote nor accept entries.
            let (met, detail) = watch_serves_writes(ctx, target).await;
            record.expectation = Some(Expectation {
                description: "the node survives a full disk (an expected operating error, \
                              DESIGN.md §4) and serves writes again once the disk has room"
                    .into(),
                met,
                detail,
            });
            if !met {
                // Leave the cluster whole for the next fault.
                let mut cluster = lock(&ctx.cluster);
                cluster.kill(target)?;
                cluster.start(target, None)?;
            }
        }
    }
    record.end_ms = Some(ctx.clock.now_ms());
    Ok(())
}

/// Before a leader kill: waits until `kill_precondition` has held under one leader and term for
/// `KILL_SETTLED_FOR_MS`, at most `KILL_SETTLE_WAIT_MS_MAX`. Returns the leader to kill (the
/// settled one, or whichever is known) and, when the cluster did not settle, why not.
async fn settle_for_kill(ctx: &Ctx) -> (Option<NodeIdx>, Option<String>) {
    let deadline_ms = ctx.clock.now_ms() + KILL_SETTLE_WAIT_MS_MAX;
    // Since when the precondition has held, and under which leader and term.
    let mut held: Option<(u64, (String, u64))> = None;
    let mut last_reason = String::from("not asked yet");
    loop {
        let (n_servers, up_servers) = {
            let cluster = lock(&ctx.cluster);
            let n_servers = cluster
                .nodes
                .iter()
                .filter(|n| n.role == Role::ServerWorker && !n.out)
                .count();
            (n_servers, cluster.up_servers())
        };
        let mut answers = Vec::with_capacity(up_servers.len());
        for idx in &up_servers {
            let answer = match ctx.cluster_info(*idx).await {
                Some(info) => Some(ServerAnswer {
                    leader: info.leader,
                    term: info.term,
                    n_voters: info.servers.len(),
                    ready: ctx.api_fast.ready(Cluster::api_addr(*idx)).await,
                }),
                None => None,
            };
            answers.push(answer);
        }
        let now_ms = ctx.clock.now_ms();
        match kill_precondition(n_servers, &up_servers, &answers) {
            Ok(agreed) => match &held {
                Some((since_ms, same)) if *same == agreed => {
                    if now_ms.saturating_sub(*since_ms) >= KILL_SETTLED_FOR_MS {
                        return (lock(&ctx.cluster).idx_of(&agreed.0), None);
                    }
                }
                _ => held = Some((now_ms, agreed)),
            },
            Err(reason) => {
                held = None;
                last_reason = reason;
            }
        }
        if now_ms > deadline_ms || !ctx.sleep_ms(100).await {
            let reason = match held {
                Some(_) => format!("not settled for {KILL_SETTLED_FOR_MS} ms"),
                None => last_reason,
            };
            let leader = ctx.find_leader().await;
            return (
                leader,
                Some(format!(
                    "not settled after {KILL_SETTLE_WAIT_MS_MAX} ms: {reason}"
                )),
            );
        }
    }
}

/// Watches a node after a fault it must recover from: a write sent through it (a join token)
/// must be acknowledged within `REACTION_WATCH_MS`, and it must not exit.
async fn watch_serves_writes(ctx: &Ctx, target: NodeIdx) -> (bool, Option<String>) {
    let deadline_ms = ctx.clock.now_ms() + REACTION_WATCH_MS;
    let mut last_error = String::from("no attempt");
    while ctx.clock.now_ms() < deadline_ms && !ctx.cancelled() {
        if lock(&ctx.cluster).exited(target) {
            return (
                false,
                Some(format!(
                    "it exited; last log lines:\n{}",
                    lock(&ctx.cluster).log_tail(target, 5)
                )),
            );
        }
        let invoke_ms = ctx.clock.now_ms();
        let result = ctx
            .api_fast
            .call::<Value>(
                Method::POST,
                Cluster::api_addr(target),
                "/v1/tokens",
                Some(json!({"ttl_ms": 1000, "uses": 1})),
            )
            .await
            .map(|_| ())
            .map_err(|e| (e.outcome, e.message));
        let ok = result.is_ok();
        if let Err((_, message)) = &result {
            last_error = message.clone();
        }
        ctx.record(target, OpKind::CreateToken, invoke_ms, result);
        if ok {
            return (true, None);
        }
        ctx.sleep_ms(250).await;
    }
    (
        false,
        Some(format!(
            "no write through it was acknowledged within {REACTION_WATCH_MS} ms; last error: \
             {last_error}; last log lines:\n{}",
            lock(&ctx.cluster).log_tail(target, 5)
        )),
    )
}

/// Watches a node started on corrupted data: it must exit with a failure, not become ready.
async fn watch_refusal(ctx: &Ctx, target: NodeIdx) -> (bool, Option<String>) {
    let deadline_ms = ctx.clock.now_ms() + REACTION_WATCH_MS;
    while ctx.clock.now_ms() < deadline_ms && !ctx.cancelled() {
        let exit = lock(&ctx.cluster).nodes[target]
            .process
            .as_mut()
            .and_then(|p| p.try_exit().ok().flatten());
        if let Some(status) = exit {
            return if status.success() {
                (false, Some("it exited with status 0".into()))
            } else {
                (true, None)
            };
        }
        if ctx.api_fast.ready(Cluster::api_addr(target)).await {
            return (false, Some("it started and reported ready".into()));
        }
        ctx.sleep_ms(200).await;
    }
    (
        false,
        Some(format!(
            "still running, not ready, after {REACTION_WATCH_MS} ms"
        )),
    )
}

/// Watches a removed node that was started again: it must not be ready nor listed as ready.
async fn watch_stays_out(
    ctx: &Ctx,
    target: NodeIdx,
    id: &str,
    via: NodeIdx,
) -> (bool, Option<String>) {
    let deadline_ms = ctx.clock.now_ms() + REACTION_WATCH_MS;
    while ctx.clock.now_ms() < deadline_ms && !ctx.cancelled() {
        if ctx.api_fast.ready(Cluster::api_addr(target)).await {
            return (false, Some("the removed node reported ready".into()));
        }
        if let Ok(nodes) = ctx
            .api_fast
            .get::<Vec<NodeInfo>>(Cluster::api_addr(via), "/v1/nodes")
            .await
        {
            if nodes.iter().any(|n| n.id == id && n.state == "ready") {
                return (
                    false,
                    Some(format!("the cluster lists {id} as ready again")),
                );
            }
        }
        ctx.sleep_ms(200).await;
    }
    (true, None)
}

/// Heals the network and restarts every node that should be in the cluster but is down.
async fn heal_all(ctx: &Ctx) {
    let mut cluster = lock(&ctx.cluster);
    if let Err(error) = cluster.net.heal() {
        warn!(%error, "heal failed");
    }
    for idx in 0..cluster.nodes.len() {
        let _ = cluster.signal(idx, Signal::SIGCONT);
        let _ = cluster.nodes[idx].disk.unfill();
        if cluster.nodes[idx].out {
            continue;
        }
        if cluster.exited(idx) {
            if let Err(error) = cluster.start(idx, None) {
                warn!(idx, error = %format!("{error:#}"), "restart failed");
            }
        }
    }
}

/// The final state, once every up node serves the same one (reads come from each node's
/// applied state, and a follower may lag the leader for a moment): the leader's read. A node
/// whose read fails is read again every 500 ms. If the replicas still disagree (or a read
/// still fails) after `FINAL_READ_AGREE_MS`, the leader's read is used and a note says so,
/// naming for each node what it served or which request failed and how.
async fn read_final_state(ctx: &Ctx) -> (FinalState, Option<String>) {
    let deadline_ms = ctx.clock.now_ms() + FINAL_READ_AGREE_MS;
    loop {
        let up = ctx.up_nodes();
        let mut reads = Vec::new();
        let mut failures = Vec::new();
        for &idx in &up {
            match read_state_from(ctx, idx).await {
                Ok(state) => reads.push((idx, state)),
                Err(why) => failures.push((idx, why)),
            }
        }
        let leader = ctx.find_leader().await;
        let agree = failures.is_empty()
            && reads.len() == up.len()
            && reads.windows(2).all(|pair| pair[0].1 == pair[1].1)
            && leader.is_some();
        if agree || ctx.clock.now_ms() > deadline_ms || !ctx.sleep_ms(500).await {
            let chosen = reads
                .iter()
                .find(|(idx, _)| Some(*idx) == leader)
                .or(reads.first())
                .map(|(_, state)| state.clone())
                .unwrap_or_default();
            let note = (!agree).then(|| {
                let summary: Vec<String> = reads
                    .iter()
                    .map(|(idx, s)| {
                        format!(
                            "node {idx}: {} workstations, {} processes, {} with processes unknown",
                            s.workstations.len(),
                            s.processes.len(),
                            s.processes_unknown.len()
                        )
                    })
                    .chain(
                        failures
                            .iter()
                            .map(|(idx, why)| format!("node {idx} failed: {why}")),
                    )
                    .collect();
                format!(
                    "the up nodes did not serve one final state within {FINAL_READ_AGREE_MS} ms \
                     (leader {leader:?}; {} of {} read: {})",
                    reads.len(),
                    up.len(),
                    summary.join("; ")
                )
            });
            return (chosen, note);
        }
    }
}

/// Node `idx`'s view of the final state, normalised (sorted) for comparison, or which request
/// failed and how. A workstation without a node has no host to list its processes: its
/// processes request answers 503 ("has no node right now"), and it is recorded with its
/// processes unknown instead of failing the read (a node that answers 200 for it, from the
/// desired state, is used as it is).
async fn read_state_from(ctx: &Ctx, idx: NodeIdx) -> Result<FinalState, String> {
    let addr = Cluster::api_addr(idx);
    let workstations = ctx
        .api
        .get::<Vec<Workstation>>(addr, "/v1/workstations")
        .await
        .map_err(|e| format!("GET /v1/workstations: {e}"))?;
    let nodes = ctx
        .api
        .get::<Vec<NodeInfo>>(addr, "/v1/nodes")
        .await
        .map_err(|e| format!("GET /v1/nodes: {e}"))?;
    let mut state = FinalState {
        read_ok: true,
        ..FinalState::default()
    };
    for ws in &workstations {
        let key = ws.name.clone().unwrap_or_else(|| ws.id.clone());
        state
            .workstations
            .push((key.clone(), ws.cpu_millis, ws.memory_bytes));
        let path = format!("/v1/workstations/{}/processes", ws.id);
        match ctx.api.get::<Vec<Process>>(addr, &path).await {
            Ok(processes) => state.processes.extend(
                processes
                    .into_iter()
                    .map(|p| (key.clone(), p.argv.join(" "))),
            ),
            Err(error) if ws.node.is_none() && error.status == Some(503) => {
                info!(idx, %key, %error, "processes of a workstation without a node: unknown");
                // The reason carries no error text, so that every node records the same one.
                state.processes_unknown.push((
                    key.clone(),
                    format!("{}, no node: GET {path} answered 503", ws.state),
                ));
            }
            Err(error) => {
                return Err(format!(
                    "GET {path} ({key}, {} on {}): {error}",
                    ws.state,
                    ws.node.as_deref().unwrap_or("no node")
                ))
            }
        }
    }
    let cluster = lock(&ctx.cluster);
    state.member_nodes = nodes
        .iter()
        .filter(|n| n.state != "left")
        .filter_map(|n| cluster.idx_of(&n.id))
        .collect();
    state.workstations.sort();
    state.processes.sort();
    state.processes_unknown.sort();
    state.member_nodes.sort_unstable();
    Ok(state)
}

/// Looks on the host for processes, cgroups and mounts that name a deleted workstation.
fn scan_leftovers(ctx: &Ctx) -> LeftoverScan {
    let deleted_ids = lock(&ctx.deleted_ids).clone();
    let pids: Vec<i32> = {
        let cluster = lock(&ctx.cluster);
        (0..cluster.nodes.len())
            .filter_map(|i| cluster.pid(i))
            .collect()
    };
    let deleted_keys = lock(&ctx.deleted_keys).clone();
    let names = |text: &str| {
        deleted_ids
            .iter()
            .any(|id| shoal_chaos::checkers::leftovers::names_id(text, id))
            || deleted_keys
                .iter()
                .any(|key| text.contains(&producer_pattern(key)))
    };
    let mut scan = LeftoverScan {
        at_ms: ctx.clock.now_ms(),
        deleted_ids: deleted_ids.clone(),
        processes: Vec::new(),
        cgroups: Vec::new(),
        mounts: Vec::new(),
    };
    if deleted_ids.is_empty() {
        return scan;
    }
    // Only what this run's nodes made counts: other agents may share the host (another run,
    // a test suite) with workstations of the same ids.
    let (agent_pids, node_cgroups) = {
        let cluster = lock(&ctx.cluster);
        (cluster.agent_pids.clone(), cluster.cgroup_names.clone())
    };
    let in_run_cgroup = |cgroup_file: &str| {
        cgroup_file.lines().any(|line| {
            node_cgroups.iter().any(|name| {
                line.split_once(&format!("/{name}/"))
                    .is_some_and(|(_, below)| names(below))
            })
        })
    };
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let pid = entry.file_name().to_string_lossy().to_string();
            if pid.parse::<i32>().is_err() {
                continue;
            }
            let cgroup = std::fs::read_to_string(entry.path().join("cgroup")).unwrap_or_default();
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            let environ = std::fs::read(entry.path().join("environ")).unwrap_or_default();
            let spawned_by_run =
                tree_marker_agent(&environ).is_some_and(|pid| agent_pids.contains_key(&pid));
            if in_run_cgroup(&cgroup) || (spawned_by_run && names(&cmdline)) {
                scan.processes.push(format!("{pid} {}", cmdline.trim()));
            }
        }
    }
    for hierarchy in cgroup_hierarchies() {
        for name in &node_cgroups {
            walk_cgroups(&hierarchy.join(name), 0, &names, &mut scan.cgroups);
        }
    }
    // Agents run in their own mount namespaces (`unshare --mount`): read theirs.
    for pid in pids
        .iter()
        .map(|p| p.to_string())
        .chain(std::iter::once("self".to_string()))
    {
        let mountinfo =
            std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap_or_default();
        for line in mountinfo.lines() {
            if let Some(mount_point) = line.split(' ').nth(4) {
                if names(mount_point) && !scan.mounts.iter().any(|m| m == mount_point) {
                    scan.mounts.push(mount_point.to_string());
                }
            }
        }
    }
    scan
}

/// The executor's process tree marker: `<agent pid>.<serial>`.
const TREE_MARKER_VAR: &str = "SHOAL_PROCESS_TREE=";

/// Workload log producers running on the host, as (node, workstation key). A process is
/// attributed to a node by the executor's process-tree marker (host spawner: it names the
/// agent's pid) or by its cgroup (sandbox spawner: `/<node's cgroup name>/...`).
fn host_workstation_processes(
    agent_pids: &BTreeMap<i32, NodeIdx>,
    node_cgroups: &[(NodeIdx, String)],
) -> Vec<(NodeIdx, String)> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().parse::<i32>().is_err() {
            continue;
        }
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let Some(key) = producer_key(&cmdline).map(str::to_string) else {
            continue;
        };
        let environ = std::fs::read(entry.path().join("environ")).unwrap_or_default();
        let by_marker = tree_marker_agent(&environ).and_then(|pid| agent_pids.get(&pid).copied());
        let cgroup = std::fs::read_to_string(entry.path().join("cgroup")).unwrap_or_default();
        let by_cgroup = node_cgroups
            .iter()
            .find(|(_, name)| cgroup.contains(&format!("/{name}/")))
            .map(|(idx, _)| *idx);
        let owner = by_marker.or(by_cgroup);
        if let Some(idx) = owner {
            found.push((idx, key));
        }
    }
    found.sort();
    found.dedup();
    found
}

/// The agent pid in a process's executor tree marker (`SHOAL_PROCESS_TREE=<pid>.<serial>`),
/// from its `/proc/PID/environ`.
fn tree_marker_agent(environ: &[u8]) -> Option<i32> {
    environ.split(|&b| b == 0).find_map(|var| {
        let var = std::str::from_utf8(var).ok()?;
        let marker = var.strip_prefix(TREE_MARKER_VAR)?;
        marker.split('.').next()?.parse().ok()
    })
}

/// The cgroup root and the hierarchies mounted under it (v1 controllers, v2 `unified`).
fn cgroup_hierarchies() -> Vec<PathBuf> {
    let root = PathBuf::from("/sys/fs/cgroup");
    let mut all = vec![root.clone()];
    if let Ok(entries) = std::fs::read_dir(&root) {
        all.extend(
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.join("cgroup.procs").exists()),
        );
    }
    all
}

/// Depth-limited walk of the cgroup tree for directories naming a deleted workstation.
fn walk_cgroups(dir: &Path, depth: usize, names: &dyn Fn(&str) -> bool, found: &mut Vec<String>) {
    const DEPTH_MAX: usize = 8;
    if depth > DEPTH_MAX {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            let path = entry.path();
            if names(&entry.file_name().to_string_lossy()) {
                found.push(path.display().to_string());
            }
            walk_cgroups(&path, depth + 1, names, found);
        }
    }
}
