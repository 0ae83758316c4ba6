//! Configuration of `shoal agent`: command-line flags, an optional TOML file, and the
//! resolved [`AgentConfig`] the agent runs with.
//!
//! Precedence: a flag given on the command line wins over the file, the file wins over the
//! built-in default. Every option is documented in `ops/shoal.example.toml`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::Deserialize;

/// `shoal agent`: run one node of a cluster.
///
/// What `shoal dev` (and any supervisor) relies on:
/// - `--data-dir DIR` holds the node's identity, its durable state and its workstations; a
///   restart with the same data dir comes back as the same node (the `--bootstrap`/`--join`
///   flag is then ignored: the data dir already says which cluster it belongs to).
/// - `--bootstrap` creates a new cluster with this node as its first server;
///   `--join TOKEN` joins an existing one with a token from `POST /v1/tokens`.
/// - `--listen 127.0.0.1:PORT` is the WireGuard UDP port, `--api 127.0.0.1:PORT` the HTTP
///   control API, `--mesh userspace` needs no privileges.
/// - `--admin-token-file PATH`: on the first bootstrap an admin API key (tenant `admin`) is
///   created and its full text written to PATH (mode 0600); on a restart the file is kept as it
///   is (the key stays valid). The key can mint join tokens for further nodes with
///   `POST /v1/tokens`.
/// - The agent prints one line `shoal-agent ready node=<id> api=<addr> cgroup=<name>` on stdout
///   once its API listens, so that a parent process can wait for it instead of polling, and
///   knows the cgroup tree (`shoal-<local sandbox id>`) that holds the node's sandboxes.
/// - SIGTERM or SIGINT stops it gracefully; it exits 0.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct AgentArgs {
    /// TOML configuration file (see ops/shoal.example.toml); flags override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Directory for the node's identity, state and workstations.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Create a new cluster with this node as its first server.
    #[arg(long, conflicts_with = "join")]
    pub bootstrap: bool,
    /// Join an existing cluster with this join token.
    #[arg(long, value_name = "TOKEN")]
    pub join: Option<String>,
    /// WireGuard UDP listen address (default 0.0.0.0:51820).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// HTTP control API listen address (default 127.0.0.1:7070).
    #[arg(long, value_name = "ADDR")]
    pub api: Option<SocketAddr>,
    /// Mesh data plane: `tun` (needs CAP_NET_ADMIN) or `userspace` (default).
    #[arg(long, value_name = "MODE")]
    pub mesh: Option<MeshMode>,
    /// Roles of this node: `server,worker` (default), `server` or `worker`.
    #[arg(long, value_name = "ROLES")]
    pub role: Option<String>,
    /// On first bootstrap, write a new admin API key to this file.
    #[arg(long, value_name = "PATH")]
    pub admin_token_file: Option<PathBuf>,
    /// Log format on stderr: `text` (default) or `json`.
    #[arg(long, value_name = "FORMAT")]
    pub log_format: Option<String>,
}

/// The mesh data plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum MeshMode {
    /// A real WireGuard interface (`shoal0`), needs CAP_NET_ADMIN.
    Tun,
    /// WireGuard in the agent's own process; no privileges; Shoal's own traffic only.
    Userspace,
}

/// The TOML file: every field optional, same names as the flags (with `_`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    data_dir: Option<PathBuf>,
    listen: Option<SocketAddr>,
    api: Option<SocketAddr>,
    mesh: Option<MeshMode>,
    role: Option<String>,
    admin_token_file: Option<PathBuf>,
    log_format: Option<String>,
    api_body_bytes_max: Option<usize>,
    api_header_read_timeout_ms: Option<u64>,
    api_body_read_timeout_ms: Option<u64>,
    api_workers: Option<usize>,
    heartbeat_interval_ms: Option<u64>,
    heartbeat_grace_ms: Option<u64>,
    raft_heartbeat_interval_ms: Option<u64>,
    raft_election_timeout_ms_min: Option<u64>,
    raft_election_timeout_ms_max: Option<u64>,
    voter_target: Option<u8>,
    node_reserve_cpu_millis: Option<u64>,
    node_reserve_memory_bytes: Option<u64>,
    workstations_per_node_max: Option<usize>,
    processes_per_workstation_max: Option<usize>,
    runs_concurrent_max: Option<usize>,
    log_subscribers_per_workstation_max: Option<usize>,
    shutdown_grace_ms: Option<u64>,
    log_keepalive_ms: Option<u64>,
    tenant_workstations_max: Option<u32>,
}

/// The configuration the agent runs with.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Data directory.
    pub data_dir: PathBuf,
    /// `Some` on a bootstrap.
    pub bootstrap: bool,
    /// Join token, if joining.
    pub join: Option<String>,
    /// WireGuard UDP listen address.
    pub listen: SocketAddr,
    /// HTTP API listen address.
    pub api: SocketAddr,
    /// Mesh data plane.
    pub mesh: MeshMode,
    /// Whether this node is a server (Raft voter).
    pub role_server: bool,
    /// Whether this node runs workloads.
    pub role_worker: bool,
    /// Where to write the admin key on first bootstrap.
    pub admin_token_file: Option<PathBuf>,
    /// `text` or `json`.
    pub log_format: String,
    /// Largest accepted request body.
    pub api_body_bytes_max: usize,
    /// How long a client may take to send a request's head before it is dropped.
    pub api_header_read_timeout_ms: u64,
    /// How long a request body may take to arrive (400 after that).
    pub api_body_read_timeout_ms: u64,
    /// actix-web worker threads.
    pub api_workers: usize,
    /// Heartbeat period.
    pub heartbeat_interval_ms: u64,
    /// A node is `down` after this long without a heartbeat.
    pub heartbeat_grace_ms: u64,
    /// Raft leader heartbeat period (default 30 ms).
    pub raft_heartbeat_interval_ms: u64,
    /// Lower bound of the randomised Raft election timeout (default 90 ms).
    pub raft_election_timeout_ms_min: u64,
    /// Upper bound of the randomised Raft election timeout (default 120 ms). A dead leader
    /// is replaced this much plus one election timeout after its last heartbeat (openraft's
    /// leader lease); keep both above the data disk's p99 fsync latency.
    pub raft_election_timeout_ms_max: u64,
    /// Raft voters the cluster keeps (1, 3 or 5; servers beyond it stay learners). Only a
    /// bootstrapping node reads it: it is a cluster setting from then on.
    pub voter_target: u8,
    /// CPU kept back for the node itself.
    pub node_reserve_cpu_millis: u64,
    /// Memory kept back for the node itself.
    pub node_reserve_memory_bytes: u64,
    /// Most workstations one node hosts: committed with the node's capacity, and the
    /// scheduler places no workstation on a node that hosts this many.
    pub workstations_per_node_max: usize,
    /// Most desired processes per workstation.
    pub processes_per_workstation_max: usize,
    /// Most runs executing at once on this node; more get 429.
    pub runs_concurrent_max: usize,
    /// Most concurrent log followers per workstation; more get 429.
    pub log_subscribers_per_workstation_max: usize,
    /// How long a graceful shutdown waits for processes to stop before killing them.
    pub shutdown_grace_ms: u64,
    /// An idle log stream gets an SSE comment this often (SPEC.md: at least every 15 s).
    pub log_keepalive_ms: u64,
    /// Most workstations one tenant may have at a time (placed or pending); one more is
    /// refused with 429. Only a bootstrapping node reads it: it is a cluster setting from then
    /// on (`ClusterSettings::tenant_workstations_max`).
    pub tenant_workstations_max: u32,
}

impl AgentConfig {
    /// Resolves flags over the optional file over defaults, and checks the result.
    pub fn resolve(args: &AgentArgs) -> anyhow::Result<AgentConfig> {
        let file = match &args.config {
            Some(path) => load_file(path)?,
            None => FileConfig::default(),
        };
        let Some(data_dir) = args.data_dir.clone().or(file.data_dir) else {
            bail!("--data-dir (or data_dir in the config file) is required");
        };
        let role = args
            .role
            .clone()
            .or(file.role)
            .unwrap_or_else(|| "server,worker".to_string());
        let (role_server, role_worker) = parse_roles(&role)?;
        let log_format = args
            .log_format
            .clone()
            .or(file.log_format)
            .unwrap_or_else(|| "text".to_string());
        if log_format != "text" && log_format != "json" {
            bail!("log_format must be `text` or `json`, not `{log_format}`");
        }
        let raft_defaults = shoal_raft::RaftConfig::new(0);
        let config = AgentConfig {
            data_dir,
            bootstrap: args.bootstrap,
            join: args.join.clone(),
            listen: args
                .listen
                .or(file.listen)
                .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 51820))),
            api: args
                .api
                .or(file.api)
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 7070))),
            mesh: args.mesh.or(file.mesh).unwrap_or(MeshMode::Userspace),
            role_server,
            role_worker,
            admin_token_file: args.admin_token_file.clone().or(file.admin_token_file),
            log_format,
            api_body_bytes_max: file.api_body_bytes_max.unwrap_or(256 * 1024),
            api_header_read_timeout_ms: file.api_header_read_timeout_ms.unwrap_or(10_000),
            api_body_read_timeout_ms: file.api_body_read_timeout_ms.unwrap_or(10_000),
            api_workers: file.api_workers.unwrap_or(2),
            heartbeat_interval_ms: file.heartbeat_interval_ms.unwrap_or(1_000),
            heartbeat_grace_ms: file.heartbeat_grace_ms.unwrap_or(10_000),
            raft_heartbeat_interval_ms: file
                .raft_heartbeat_interval_ms
                .unwrap_or(raft_defaults.heartbeat_interval_ms),
            raft_election_timeout_ms_min: file
                .raft_election_timeout_ms_min
                .unwrap_or(raft_defaults.election_timeout_ms_min),
            raft_election_timeout_ms_max: file
                .raft_election_timeout_ms_max
                .unwrap_or(raft_defaults.election_timeout_ms_max),
            voter_target: file.voter_target.unwrap_or(3),
            node_reserve_cpu_millis: file.node_reserve_cpu_millis.unwrap_or(0),
            node_reserve_memory_bytes: file.node_reserve_memory_bytes.unwrap_or(256 << 20),
            workstations_per_node_max: file.workstations_per_node_max.unwrap_or(256),
            processes_per_workstation_max: file.processes_per_workstation_max.unwrap_or(64),
            runs_concurrent_max: file.runs_concurrent_max.unwrap_or(64),
            log_subscribers_per_workstation_max: file
                .log_subscribers_per_workstation_max
                .unwrap_or(64),
            shutdown_grace_ms: file.shutdown_grace_ms.unwrap_or(5_000),
            log_keepalive_ms: file.log_keepalive_ms.unwrap_or(10_000),
            tenant_workstations_max: file
                .tenant_workstations_max
                .unwrap_or(shoal_raft::model::ClusterSettings::default().tenant_workstations_max),
        };
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> anyhow::Result<()> {
        if self.api_body_bytes_max < 70 * 1024 {
            // A run may carry 64 KiB of code plus its JSON envelope.
            bail!("api_body_bytes_max must be at least 71680");
        }
        if self.heartbeat_interval_ms == 0 || self.heartbeat_grace_ms < self.heartbeat_interval_ms {
            bail!("heartbeat_grace_ms must be at least heartbeat_interval_ms, which must be > 0");
        }
        if self.raft_heartbeat_interval_ms == 0
            || self.raft_election_timeout_ms_min < 2 * self.raft_heartbeat_interval_ms
            || self.raft_election_timeout_ms_max <= self.raft_election_timeout_ms_min
            || self.raft_election_timeout_ms_max > 60_000
        {
            bail!(
                "raft timeouts: need 0 < raft_heartbeat_interval_ms, raft_election_timeout_ms_min at \
                 least twice the heartbeat, and raft_election_timeout_ms_max above the min and at \
                 most 60000 (got {}, {}, {})",
                self.raft_heartbeat_interval_ms,
                self.raft_election_timeout_ms_min,
                self.raft_election_timeout_ms_max
            );
        }
        if !matches!(self.voter_target, 1 | 3 | 5) {
            bail!("voter_target must be 1, 3 or 5");
        }
        if self.log_keepalive_ms == 0 || self.log_keepalive_ms > 15_000 {
            bail!("log_keepalive_ms must be between 1 and 15000 (SPEC.md: at least every 15 s)");
        }
        if self.api_body_read_timeout_ms == 0 || self.api_header_read_timeout_ms == 0 {
            bail!("api_header_read_timeout_ms and api_body_read_timeout_ms must be > 0");
        }
        if self.api_workers == 0 || self.api_workers > 64 {
            bail!("api_workers must be between 1 and 64");
        }
        let per_node_max = shoal_raft::command::limits::NODE_WORKSTATIONS_MAX;
        if !(1..=per_node_max as usize).contains(&self.workstations_per_node_max) {
            bail!("workstations_per_node_max must be between 1 and {per_node_max}");
        }
        let quota_max = shoal_raft::apply::TENANT_WORKSTATIONS_MAX_MAX;
        if !(1..=quota_max).contains(&self.tenant_workstations_max) {
            bail!("tenant_workstations_max must be between 1 and {quota_max}");
        }
        Ok(())
    }
}

fn load_file(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing config file {}", path.display()))
}

/// Parses `server,worker` / `server` / `worker`.
pub fn parse_roles(text: &str) -> anyhow::Result<(bool, bool)> {
    let mut server = false;
    let mut worker = false;
    for part in text.split(',').map(str::trim) {
        match part {
            "server" => server = true,
            "worker" => worker = true,
            other => bail!("unknown role `{other}` (expected server, worker)"),
        }
    }
    if !server && !worker {
        bail!("a node needs at least one role");
    }
    Ok((server, worker))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Resolves a config file holding `text` (with data dir `/x`, no flags).
    fn resolve(text: &str) -> anyhow::Result<AgentConfig> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("shoal.toml");
        std::fs::write(&path, text)?;
        AgentConfig::resolve(&AgentArgs {
            config: Some(path),
            data_dir: Some(PathBuf::from("/x")),
            ..AgentArgs::default()
        })
    }

    #[test]
    fn flags_override_file_and_file_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shoal.toml");
        std::fs::write(
            &path,
            "data_dir = \"/var/lib/shoal\"\napi = \"127.0.0.1:9000\"\nheartbeat_grace_ms = 20000\n",
        )
        .unwrap();
        let args = AgentArgs {
            config: Some(path),
            api: Some("127.0.0.1:9100".parse().unwrap()),
            ..AgentArgs::default()
        };
        let config = AgentConfig::resolve(&args).unwrap();
        assert_eq!(config.api.port(), 9100);
        assert_eq!(config.data_dir, PathBuf::from("/var/lib/shoal"));
        assert_eq!(config.heartbeat_grace_ms, 20000);
        assert_eq!(config.heartbeat_interval_ms, 1000);
    }

    #[test]
    fn the_documented_example_config_parses_and_sets_every_option() {
        let text = include_str!("../../ops/shoal.example.toml");
        let file: FileConfig = toml::from_str(text).unwrap();
        // Every option but admin_token_file (whose default depends on data_dir) is shown with
        // its default value.
        let shown = [
            file.data_dir.is_some(),
            file.listen.is_some(),
            file.api.is_some(),
            file.mesh.is_some(),
            file.role.is_some(),
            file.log_format.is_some(),
            file.api_body_bytes_max.is_some(),
            file.api_header_read_timeout_ms.is_some(),
            file.api_body_read_timeout_ms.is_some(),
            file.api_workers.is_some(),
            file.heartbeat_interval_ms.is_some(),
            file.heartbeat_grace_ms.is_some(),
            file.raft_heartbeat_interval_ms.is_some(),
            file.raft_election_timeout_ms_min.is_some(),
            file.raft_election_timeout_ms_max.is_some(),
            file.voter_target.is_some(),
            file.node_reserve_cpu_millis.is_some(),
            file.node_reserve_memory_bytes.is_some(),
            file.workstations_per_node_max.is_some(),
            file.processes_per_workstation_max.is_some(),
            file.runs_concurrent_max.is_some(),
            file.log_subscribers_per_workstation_max.is_some(),
            file.shutdown_grace_ms.is_some(),
            file.log_keepalive_ms.is_some(),
            file.tenant_workstations_max.is_some(),
        ];
        assert!(shown.iter().all(|shown| *shown));
        assert!(text.contains("# admin_token_file = "));
    }

    #[test]
    fn raft_timeouts_default_to_the_raft_crates_and_inconsistent_ones_are_refused() {
        let defaults = resolve("").unwrap();
        let raft = shoal_raft::RaftConfig::new(1);
        assert_eq!(
            (
                defaults.raft_heartbeat_interval_ms,
                defaults.raft_election_timeout_ms_min,
                defaults.raft_election_timeout_ms_max
            ),
            (
                raft.heartbeat_interval_ms,
                raft.election_timeout_ms_min,
                raft.election_timeout_ms_max
            )
        );
        let faster =
            resolve("raft_election_timeout_ms_min = 100\nraft_election_timeout_ms_max = 150\n")
                .unwrap();
        assert_eq!(faster.raft_election_timeout_ms_max, 150);
        for bad in [
            "raft_heartbeat_interval_ms = 0\n",
            "raft_election_timeout_ms_min = 50\n",
            "raft_election_timeout_ms_min = 300\nraft_election_timeout_ms_max = 300\n",
            "raft_election_timeout_ms_max = 60001\n",
        ] {
            let err = resolve(bad).unwrap_err().to_string();
            assert!(err.contains("raft timeouts"), "{bad}: {err}");
        }
    }

    #[test]
    fn unknown_file_keys_and_bad_roles_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shoal.toml");
        std::fs::write(&path, "data_dirr = \"/x\"\n").unwrap();
        let args = AgentArgs {
            config: Some(path),
            ..AgentArgs::default()
        };
        assert!(AgentConfig::resolve(&args).is_err());
        assert!(parse_roles("server,cook").is_err());
        assert_eq!(parse_roles("worker").unwrap(), (false, true));
    }

    /// Chaos (`--servers 5`): the voter target was fixed at 3, so a five-server cluster ran
    /// with two learners.
    #[test]
    fn a_five_server_cluster_can_ask_for_five_voters_and_an_even_count_is_refused() {
        assert_eq!(resolve("").unwrap().voter_target, 3);
        assert_eq!(resolve("voter_target = 5\n").unwrap().voter_target, 5);
        assert_eq!(resolve("voter_target = 1\n").unwrap().voter_target, 1);
        assert!(resolve("voter_target = 4\n").is_err());
        assert!(resolve("voter_target = 0\n").is_err());
    }

    #[test]
    fn the_tenant_workstation_quota_is_read_from_the_file_and_checked() {
        let default = resolve("").unwrap();
        assert_eq!(default.tenant_workstations_max, 1_000);
        let set = resolve("tenant_workstations_max = 3\n").unwrap();
        assert_eq!(set.tenant_workstations_max, 3);
        for refused in ["0", "1000001", "-1"] {
            assert!(
                resolve(&format!("tenant_workstations_max = {refused}\n")).is_err(),
                "{refused}"
            );
        }
    }
}
