//! The agent daemon, `shoal agent`: opens (or creates) the node's durable state, starts the
//! local workstation host, the usage sampler and the HTTP control API, and stops them in order
//! on SIGTERM/SIGINT.
//!
//! Cluster: the node runs its userspace WireGuard mesh and its Raft node ([`cluster`]);
//! it bootstraps a one-node Raft cluster or joins one with a token ([`admission`] is the
//! member side). Keys, tokens, nodes and workstation placements are Raft state; each node
//! hosts the workstations placed on it ([`placement`]) and serves the others' through the
//! mesh ([`remote`]). The node-local store keeps hosting records and the audit lines of the
//! API (see the crate's report for what is still node-local).

pub mod admission;
pub mod cluster;
pub mod drain;
pub mod fencing;
pub mod host;
pub mod mirror_sync;
pub mod model;
pub mod placement;
pub mod random;
pub mod reconcile_plan;
pub mod run_placement;
pub mod state_view;
pub mod store;
pub mod teardown;
pub mod usage;
pub mod worker_mirror;

use std::io::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use shoal_executor::clock::SystemClock;
use shoal_executor::run::{Languages, RunContext, RunPolicy};
use shoal_executor::sandbox::{SandboxHost, SandboxHostConfig};
use tracing::{info, warn};

use crate::clock;
use crate::config::{AgentArgs, AgentConfig};
use crate::metrics::{CommitResult, Metrics};
use host::Host;
use model::{secret_prefix, sha256_hex, Model};
use random::Random;
use store::Store;
use usage::Usage;

/// Everything a request handler can reach. Shared by all actix workers (`web::Data`).
pub struct Agent {
    /// Resolved configuration.
    pub config: AgentConfig,
    /// This node's id.
    pub node_id: String,
    /// The durable state.
    pub store: Store,
    /// Ids and secrets.
    pub random: Random,
    /// The workstations this node hosts and the runs it executes.
    pub host: Host,
    /// What the executor's run module needs: the sandbox host, languages, limits, clock.
    pub run_context: RunContext,
    /// Capacity and live usage.
    pub usage: Usage,
    /// Every series of `/metrics` (shared with the host, which records placements).
    pub metrics: Arc<Metrics>,
    /// Runs executing now (bounded by `runs_concurrent_max`).
    pub runs_in_flight: AtomicUsize,
    /// Set when a graceful shutdown began: new work is refused with 503.
    pub shutting_down: AtomicBool,
    /// The committed state this node sees (leader, term, members, the cluster's node list):
    /// its Raft node, or on a worker-only node a mirror of the leader's state.
    pub raft: state_view::StateView,
    /// The leader's live usage table, as last fetched (for placing runs).
    pub run_usage: run_placement::UsageCache,
    /// The mesh transport (forwarded writes, node-to-node requests).
    pub transport: shoal_mesh::Transport,
    /// This node's WireGuard public key (named in the join tokens it mints).
    pub mesh_public_key: shoal_mesh::NodePublicKey,
    /// Serialises [`placement::reconcile`] runs.
    pub reconcile_lock: tokio::sync::Mutex<()>,
    /// The node's lease: nothing hosted here runs unless it holds ([`fencing`]).
    pub fence: Arc<fencing::FenceHandle>,
    /// The last observation of each hosted workstation (for heartbeats and local views).
    pub observed: placement::ObservedCache,
    /// Teardowns of workstations that left this node, each on its own task.
    pub teardowns: teardown::Teardowns,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

impl Agent {
    /// Allocatable capacity of this node: capacity minus its own reserve.
    pub fn allocatable(&self) -> (u64, u64) {
        (
            self.usage
                .capacity_cpu_millis
                .saturating_sub(self.config.node_reserve_cpu_millis),
            self.usage
                .capacity_memory_bytes
                .saturating_sub(self.config.node_reserve_memory_bytes),
        )
    }

    /// Proposes `action` for API caller `caller`: forwarded to the leader with the caller's
    /// key, which the leader checks against the committed keys before it proposes (the
    /// leader does not take a node's word for who asked; see `mesh_authz`).
    pub async fn propose_for(
        &self,
        caller: &crate::service::Caller,
        action: shoal_raft::Action,
    ) -> Result<shoal_raft::Outcome, crate::service::ServiceError> {
        // A caller relayed from another node has no key here (keys are never relayed): the
        // write then goes as this node's own, which the leader allows only for what a node
        // may do itself (e.g. change the processes of a workstation it hosts).
        let credential = Some(caller.secret.0.as_str()).filter(|key| !key.is_empty());
        self.propose_with(&caller.prefix, action, credential).await
    }

    /// Proposes `action` made by this node itself (`actor`: its name for the audit log).
    pub async fn propose(
        &self,
        actor: &str,
        action: shoal_raft::Action,
    ) -> Result<shoal_raft::Outcome, crate::service::ServiceError> {
        self.propose_with(actor, action, None).await
    }

    /// Proposes `action` through Raft (forwarded to the leader if this node does not lead)
    /// and maps a refusal to the API's error.
    async fn propose_with(
        &self,
        actor: &str,
        action: shoal_raft::Action,
        credential: Option<&str>,
    ) -> Result<shoal_raft::Outcome, crate::service::ServiceError> {
        use crate::mesh_rpc::ForwardError;
        use crate::service::ServiceError;
        let started = clock::monotonic_now();
        let command = shoal_raft::Command::new(clock::now_unix_ms(), actor, action);
        let response =
            crate::mesh_rpc::forward_write_for(&self.raft, &self.transport, command, credential)
                .await;
        if matches!(response, Ok(Ok(_))) {
            // A worker mirror has not seen its own write yet; the caller reads it next.
            self.raft.after_write().await;
        }
        let result = match &response {
            Ok(Ok(_)) => CommitResult::Applied,
            Ok(Err(_)) => CommitResult::Refused,
            Err(_) => CommitResult::Failed,
        };
        self.metrics.observe_commit(result, started.elapsed());
        let response = response.map_err(|err| match err {
            ForwardError::NoLeader | ForwardError::Unreachable(_) => {
                ServiceError::unavailable(format!("no Raft leader reachable right now: {err}"))
            }
            ForwardError::Failed(why) => ServiceError::unavailable(why),
            ForwardError::Refused(why) => ServiceError::Forbidden(why),
        })?;
        response.map_err(|refusal| ServiceError::from_refusal(&refusal))
    }

    /// A new id: `prefix` and 16 hex digits.
    pub fn new_id(&self, prefix: &str) -> String {
        format!("{prefix}-{}", self.random.hex(8))
    }
}

/// How long a starting node with a known leader waits for its first lease before serving.
const LEASE_WAIT_AT_START: Duration = Duration::from_secs(5);

/// The adapters a node serves its application through, handed in by the binary's root so that
/// the agent never imports them: the HTTP control API and the mesh relay server.
#[derive(Clone, Copy)]
pub struct Adapters {
    /// Builds the bound (not yet running) HTTP server.
    pub http: fn(Arc<Agent>) -> anyhow::Result<actix_web::dev::Server>,
    /// Builds the server of requests relayed from other nodes.
    pub relay: fn(Arc<Agent>) -> Arc<dyn crate::mesh_rpc::AppHandler>,
}

/// Runs the agent until SIGTERM/SIGINT.
pub fn run(args: AgentArgs, adapters: Adapters) -> anyhow::Result<()> {
    let config = AgentConfig::resolve(&args)?;
    init_tracing(&config.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    // actix-web's server wants its own system; it runs on this thread, the rest on `runtime`.
    let system = actix_rt::System::with_tokio_rt(move || runtime);
    system.block_on(run_async(config, adapters))
}

fn init_tracing(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second agent in the same process (tests) would fail to install: that is fine.
    let _ = if format == "json" {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

async fn run_async(config: AgentConfig, adapters: Adapters) -> anyhow::Result<()> {
    secure_data_dir(&config.data_dir)?;
    let random = Random::from_entropy();
    let (store, admin_key) = open_or_create_store(&config, &random)?;
    // The sandbox names (cgroups, uids, dirs) use the store's random id, unique per host.
    let sandbox_name = store.read(|model| model.node_id.clone());
    // What an earlier run of this node left behind (cgroups and processes of a kill -9) goes
    // first, before the cluster start may end the process: a node that learns at start that
    // it was removed exits there for good, and its data dir is emptied for a rejoin under a
    // new sandbox name, so nothing would ever remove the old tree (chaos: no_leftovers).
    // `SandboxHost::start` cleans up again below; it is idempotent.
    let stale_cgroup_prefix = format!("shoal-{sandbox_name}");
    match shoal_executor::sandbox::cleanup_stale(
        &stale_cgroup_prefix,
        &config.data_dir.join("sandbox").join("work"),
    ) {
        Ok(removed) if removed > 0 => {
            info!(removed, cgroup = %stale_cgroup_prefix, "removed what an earlier run of this node left")
        }
        Ok(_) => {}
        Err(err) => warn!(error = %err, "could not remove what an earlier run of this node left"),
    }
    let (usage, mut system) = Usage::probe();
    let mut cluster =
        cluster::ClusterNode::start(&config, &store.read(|m| m.cluster_id.clone()), &usage).await?;
    if let Some(admin_key) = admin_key {
        let raft = cluster
            .raft
            .as_raft()
            .context("a bootstrapping node is a Raft member")?;
        commit_admin_key(raft, &admin_key).await?;
    }
    // The roles the cluster committed (a join token's) are the node's roles.
    let mut config = config;
    if cluster.member.worker_only {
        config.role_server = false;
        config.role_worker = true;
    }
    cluster.start_info_update(&config, &usage);
    let node_id = format!("node-{}", cluster.member.raft_id);
    info!(
        node = %node_id,
        cluster = %store.read(|m| m.cluster_id.clone()),
        mesh = ?config.mesh,
        cpu_millis = usage.capacity_cpu_millis,
        memory_bytes = usage.capacity_memory_bytes,
        "node starting"
    );
    // The sandbox host probes what isolation this host permits, logs it, and removes what an
    // earlier run of this node left behind (cgroups, work directories).
    let sandbox_host = SandboxHost::start(SandboxHostConfig::new(
        sandbox_name,
        config.data_dir.join("sandbox"),
    ))
    .map_err(|err| anyhow::anyhow!("preparing the sandbox host: {err}"))?;
    let run_isolation = sandbox_host.isolation().label();
    let cgroup_prefix = sandbox_host.cgroup_prefix().to_string();
    let metrics = Arc::new(Metrics::new());
    let host = Host::new(&config, Arc::clone(&sandbox_host), Arc::clone(&metrics))
        .context("starting the workstation host")?;
    info!(runs = %run_isolation, workstations = %host.isolation(), "isolation applied to user code");
    let run_context = RunContext {
        host: sandbox_host,
        languages: Arc::new(Languages::discover()),
        policy: RunPolicy::default(),
        clock: Arc::new(SystemClock),
    };
    let agent = Arc::new_cyclic(|me| Agent {
        config: config.clone(),
        node_id: node_id.clone(),
        store,
        random,
        host,
        run_context,
        usage,
        metrics,
        runs_in_flight: AtomicUsize::new(0),
        shutting_down: AtomicBool::new(false),
        raft: cluster.raft.clone(),
        run_usage: run_placement::UsageCache::default(),
        transport: cluster.mesh.transport(),
        mesh_public_key: cluster.mesh.public_key(),
        reconcile_lock: tokio::sync::Mutex::new(()),
        fence: fencing::FenceHandle::new(shoal_raft::lease::LEASE_MS_DEFAULT),
        observed: placement::ObservedCache::default(),
        teardowns: teardown::Teardowns::new(me.clone()),
    });
    // Hosted workstations come back (or new placements start) only once the lease is held:
    // the first acknowledged heartbeat, with this node's state caught up with the leader's.
    let fencer = tokio::spawn(fencing::fence_loop(Arc::clone(&agent)));
    let leader_watch = tokio::spawn(crate::metrics::count_leader_changes(
        agent.raft.clone(),
        Arc::clone(&agent.metrics),
    ));
    cluster.start_heartbeats(
        Arc::clone(&agent),
        Duration::from_millis(config.heartbeat_interval_ms),
    );
    if agent.raft.status().leader.is_some() && !agent.fence.wait_held(LEASE_WAIT_AT_START).await {
        warn!("no lease yet: workstations start once the leader acknowledges this node");
    }
    let reconciler = tokio::spawn(placement::reconcile_loop(Arc::clone(&agent)));
    let drainer = tokio::spawn(drain::drain_loop(Arc::clone(&agent)));
    let resumer = tokio::spawn(drain::resume_after_restart(Arc::clone(&agent)));
    cluster
        .handler
        .set_app((adapters.relay)(Arc::clone(&agent)));
    let (refusals, refused) = tokio::sync::mpsc::channel(REFUSALS_QUEUED_MAX);
    cluster.handler.set_refusals(refusals);
    let refusal_reporter = tokio::spawn(report_refusals(Arc::clone(&agent), refused));

    // Usage sampler: the single-node stand-in for heartbeats.
    let sampler_agent = Arc::clone(&agent);
    let sampler = tokio::spawn(async move {
        let period = Duration::from_millis(sampler_agent.config.heartbeat_interval_ms);
        loop {
            sampler_agent
                .usage
                .sample(&mut system, clock::now_unix_ms());
            tokio::time::sleep(period).await;
        }
    });

    let server = (adapters.http)(Arc::clone(&agent))?;
    let handle = server.handle();
    let server_task = tokio::spawn(server);
    println!(
        "shoal-agent ready node={node_id} api={} cgroup={cgroup_prefix}",
        config.api
    );
    let _ = std::io::stdout().flush();
    info!(node = %node_id, api = %config.api, "control API listening");

    let stop = wait_for_signal().await;
    info!("shutting down: refusing new work, stopping workstations");
    agent.shutting_down.store(true, Ordering::SeqCst);
    resumer.abort();
    if stop == Stop::Leave {
        // SIGTERM: this node leaves; its workstations are re-placed (next generation, their
        // restart policies apply there) before it stops them.
        drain::leave_for_shutdown(&agent, Duration::from_millis(config.shutdown_grace_ms)).await;
    }
    let raft = agent
        .raft
        .as_raft()
        .filter(|_| drain::another_server_is_ready(&agent));
    if let Some(raft) = raft {
        match tokio::time::timeout(HAND_OVER_WAIT, raft.hand_over_leadership()).await {
            Ok(Ok(outcome)) => info!(?outcome, "raft leadership"),
            Ok(Err(err)) => warn!(error = %err, "leadership not handed over"),
            Err(_) => warn!(timeout = ?HAND_OVER_WAIT, "leadership not handed over in time"),
        }
    }
    agent
        .host
        .shutdown(Duration::from_millis(config.shutdown_grace_ms))
        .await;
    handle.stop(true).await;
    sampler.abort();
    reconciler.abort();
    drainer.abort();
    fencer.abort();
    refusal_reporter.abort();
    leader_watch.abort();
    let _ = server_task.await;
    cluster.shutdown().await;
    info!("stopped");
    Ok(())
}

/// Refused mesh messages waiting to be counted and audited; more are dropped (and logged by
/// the handler), so a flood of forged messages costs the node nothing more.
const REFUSALS_QUEUED_MAX: usize = 64;
/// At most one audit entry per sender and message kind in this long: a peer that keeps
/// sending forged messages must not fill the audit log (every refusal is still counted).
const REFUSAL_AUDIT_INTERVAL: Duration = Duration::from_secs(10);
/// Senders remembered for the audit throttle.
const REFUSAL_SENDERS_MAX: usize = 1_024;

/// Counts every refused mesh message in metrics and writes it to the audit log with its
/// sender (throttled per sender and kind by [`REFUSAL_AUDIT_INTERVAL`]).
async fn report_refusals(
    agent: Arc<Agent>,
    mut refused: tokio::sync::mpsc::Receiver<crate::mesh_rpc::RefusedMessage>,
) {
    type Key = (&'static str, std::net::Ipv4Addr);
    let mut last_audit: std::collections::HashMap<Key, std::time::Instant> =
        std::collections::HashMap::new();
    while let Some(message) = refused.recv().await {
        agent.metrics.observe_mesh_refusal(message.kind);
        let now = clock::monotonic_now();
        let key = (message.kind, message.from);
        if last_audit
            .get(&key)
            .is_some_and(|at| now.duration_since(*at) < REFUSAL_AUDIT_INTERVAL)
        {
            continue;
        }
        if last_audit.len() >= REFUSAL_SENDERS_MAX {
            last_audit.clear();
        }
        last_audit.insert(key, now);
        let sender = match message.node {
            Some(node) => format!("node-{node} ({})", message.from),
            None => message.from.to_string(),
        };
        let entry = shoal_raft::Action::RecordAudit {
            tenant: None,
            action: format!("mesh.{}.refused", message.kind),
            resource: sender,
            outcome: message.reason,
        };
        if let Err(err) = agent.propose(&agent.node_id, entry).await {
            warn!(error = %err, "could not audit a refused mesh message");
        }
    }
}

/// How a node was asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// SIGTERM (systemd, `shoal dev`): leave the cluster gracefully, re-placing the node's
    /// workstations elsewhere before stopping them.
    Leave,
    /// SIGINT (Ctrl-C on a foreground agent): stop here; the workstations stay placed on this
    /// node, as for a node that is lost, and come back with it (or move after the grace).
    Interrupt,
}

/// How long a leader that stops waits for its successor to be elected (normally about one
/// election timeout; when the whole cluster stops at once nobody can take over).
const HAND_OVER_WAIT: Duration = Duration::from_secs(2);

async fn wait_for_signal() -> Stop {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        warn!("could not install signal handlers; stop with SIGKILL");
        return futures::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {
            info!("SIGTERM");
            Stop::Leave
        }
        _ = int.recv() => {
            info!("SIGINT");
            Stop::Interrupt
        }
    }
}

/// Commits the bootstrap admin key to Raft (the API authenticates against Raft's keys).
async fn commit_admin_key(raft: &shoal_raft::RaftNode, admin_key: &str) -> anyhow::Result<()> {
    let response = raft
        .write(shoal_raft::Command::new(
            clock::now_unix_ms(),
            "system",
            shoal_raft::Action::CreateApiKey {
                secret_sha256: sha256_hex(admin_key),
                prefix: secret_prefix(admin_key),
                tenant: "admin".to_string(),
                admin: true,
            },
        ))
        .await
        .map_err(|err| anyhow::anyhow!("committing the admin key: {err}"))?;
    response.map_err(|refusal| anyhow::anyhow!("committing the admin key: {refusal}"))?;
    Ok(())
}

/// The node's store, and the admin key when this start bootstrapped a new cluster.
fn open_or_create_store(
    config: &AgentConfig,
    random: &Random,
) -> anyhow::Result<(Store, Option<String>)> {
    if let Some(store) = Store::open(&config.data_dir)? {
        if config.join.is_some() || config.bootstrap {
            info!("data dir already holds a node: --bootstrap/--join ignored, same node again");
        }
        return Ok((store, None));
    }
    if config.join.is_some() {
        // A joining node's records come from the cluster; its local store holds only what
        // this build still keeps per node (workstations it hosts, its audit lines).
        let model = Model {
            node_id: format!("n-{}", random.hex(6)),
            ..Model::default()
        };
        return Ok((Store::create(&config.data_dir, model)?, None));
    }
    if !config.bootstrap {
        bail!(
            "{} holds no node yet: pass --bootstrap to create a cluster or --join TOKEN",
            config.data_dir.display()
        );
    }
    let model = Model {
        cluster_id: format!("c-{}", random.hex(8)),
        node_id: format!("n-{}", random.hex(6)),
        ..Model::default()
    };
    // The admin key itself is committed to Raft by `commit_admin_key` (and audited there).
    let admin_key = format!("shoal_{}", random.hex(32));
    let key_prefix = secret_prefix(&admin_key);
    let token_path = config
        .admin_token_file
        .clone()
        .unwrap_or_else(|| config.data_dir.join("admin.token"));
    write_secret(&token_path, &admin_key)?;
    let store = Store::create(&config.data_dir, model)?;
    info!(path = %token_path.display(), key_prefix = %key_prefix, "bootstrapped a new cluster; admin API key written");
    Ok((store, Some(admin_key)))
}

/// The data dir's mode: only the agent's user may list or enter it (it holds the node's
/// private key, the Raft store with key and token hashes, and the admin token).
const DATA_DIR_MODE: u32 = 0o700;
/// The mode of every file the agent writes, through the umask it sets at start.
const SECRET_FILE_MODE: u32 = 0o600;

/// Creates the data dir (or takes an existing one) with mode 0700, and sets the process umask
/// to 077, so that every file and directory the agent creates from now on is its user's only
/// (0600 files, 0700 directories), whatever umask it was started with.
fn secure_data_dir(data_dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating data dir {}", data_dir.display()))?;
    std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(DATA_DIR_MODE))
        .with_context(|| format!("setting mode 0700 on data dir {}", data_dir.display()))
}

/// Writes `secret` to `path`, mode 0600 even when the file exists already. A symbolic link
/// at `path` is refused (`O_NOFOLLOW`), so that nobody who can write the parent directory can
/// make the agent write the secret elsewhere.
fn write_secret(path: &Path, secret: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    if let Some(parent) = path.parent() {
        if !parent.as_os_str().is_empty() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(SECRET_FILE_MODE)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .with_context(|| {
            format!(
                "writing {} (a symbolic link there is refused)",
                path.display()
            )
        })?;
    // `mode` applies only to a file this call creates: an existing one is fixed here.
    file.set_permissions(std::fs::Permissions::from_mode(SECRET_FILE_MODE))
        .with_context(|| format!("setting mode 0600 on {}", path.display()))?;
    writeln!(file, "{secret}").with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
