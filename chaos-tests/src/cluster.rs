//! The cluster under test: one `shoal agent` per node namespace, each with its own tmpfs data
//! dir, started, killed, paused and restarted by the nemesis. Field order is drop order:
//! processes die before their data dirs are unmounted and before the network goes.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use shoal_chaos::env::disk::TmpfsMount;
use shoal_chaos::env::network::TestNetwork;
use shoal_chaos::env::process::{ManagedProcess, ProcessSpec};
use shoal_chaos::env::RunTag;
use shoal_chaos::history::NodeIdx;

/// The API port of every node (each node has its own address).
pub const API_PORT: u16 = 7070;
/// The WireGuard UDP port of every node.
pub const WG_PORT: u16 = 51820;
/// Size of each node's data filesystem.
pub const DATA_DIR_BYTES: u64 = 256 << 20;

/// What a node is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// A Raft voter that also runs workloads.
    ServerWorker,
    /// Runs workloads only.
    Worker,
}

/// One node of the cluster.
#[derive(Debug)]
pub struct NodeSlot {
    /// The agent, when running.
    pub process: Option<ManagedProcess>,
    /// Its data filesystem.
    pub disk: TmpfsMount,
    /// Index in the harness.
    pub idx: NodeIdx,
    /// Its role.
    pub role: Role,
    /// `--bootstrap` or `--join TOKEN` (ignored by the agent on a restart with data).
    pub join_args: Vec<String>,
    /// The node id the cluster gave it, once known.
    pub id: Option<String>,
    /// Whether the harness expects it up (false while killed, or when taken out for good).
    pub expected_up: bool,
    /// Whether it is out of the cluster (removed) and must not count in snapshots.
    pub out: bool,
    /// The top-level name of its sandbox cgroups (`shoal-n-<hex>`), from its ready line.
    pub cgroup: Option<String>,
}

/// The whole cluster.
#[derive(Debug)]
pub struct Cluster {
    /// The nodes (dropped first: kills the agents, unmounts data dirs).
    pub nodes: Vec<NodeSlot>,
    /// The network (dropped after the nodes).
    pub net: TestNetwork,
    /// The run's tag.
    pub tag: RunTag,
    /// The `shoal` binary.
    pub shoal: PathBuf,
    /// `tun` or `userspace`.
    pub mesh: String,
    /// Where the bootstrap node writes the admin key.
    pub admin_token_path: PathBuf,
    /// The agents' config file (`--config`), when the run needs one: it sets the cluster's
    /// voter target to the number of servers (read by the bootstrapping node only), followed
    /// by the run's `--agent-config` text.
    pub config_path: Option<PathBuf>,
    /// Every agent pid the run started, with its node: processes an agent spawned carry its
    /// pid in their tree marker, also after the agent was killed.
    pub agent_pids: BTreeMap<i32, NodeIdx>,
    /// Every sandbox cgroup name the run's nodes announced (a node that rejoins as a new node
    /// gets a new one; the old tree may still hold leftovers).
    pub cgroup_names: BTreeSet<String>,
}

impl Cluster {
    /// Creates the network and the data dirs; starts nothing.
    pub fn prepare(
        tag: &RunTag,
        roles: &[Role],
        shoal: &Path,
        mesh: &str,
        agent_config_extra: Option<&str>,
    ) -> anyhow::Result<Cluster> {
        let root = tag.root_dir();
        std::fs::create_dir_all(&root).with_context(|| format!("mkdir {}", root.display()))?;
        let n_servers = roles.iter().filter(|r| **r == Role::ServerWorker).count();
        let config_text = match (agent_config_text(n_servers)?, agent_config_extra) {
            (None, None) => None,
            (generated, extra) => Some(format!(
                "{}{}",
                generated.unwrap_or_default(),
                extra.unwrap_or_default()
            )),
        };
        let config_path = match config_text {
            Some(text) => {
                let path = root.join("agent.toml");
                std::fs::write(&path, text)
                    .with_context(|| format!("writing {}", path.display()))?;
                Some(path)
            }
            None => None,
        };
        let net = TestNetwork::create(tag, roles.len())?;
        let mut nodes = Vec::new();
        for (idx, role) in roles.iter().enumerate() {
            let disk = TmpfsMount::mount(
                &root.join(format!("n{idx}")).join("data"),
                DATA_DIR_BYTES,
                tag,
            )?;
            nodes.push(NodeSlot {
                process: None,
                disk,
                idx,
                role: *role,
                join_args: Vec::new(),
                id: None,
                expected_up: false,
                out: false,
                cgroup: None,
            });
        }
        Ok(Cluster {
            nodes,
            net,
            tag: tag.clone(),
            shoal: shoal.to_path_buf(),
            mesh: mesh.to_string(),
            admin_token_path: root.join("admin.token"),
            config_path,
            agent_pids: BTreeMap::new(),
            cgroup_names: BTreeSet::new(),
        })
    }

    /// Node `idx`'s API address.
    pub fn api_addr(idx: NodeIdx) -> SocketAddr {
        SocketAddr::from((TestNetwork::node_addr(idx), API_PORT))
    }

    /// Node `idx`'s data dir.
    pub fn data_dir(&self, idx: NodeIdx) -> PathBuf {
        self.nodes[idx].disk.dir().to_path_buf()
    }

    /// Starts (or restarts) node `idx`'s agent, optionally with its wall clock shifted.
    pub fn start(&mut self, idx: NodeIdx, clock_offset_s: Option<i64>) -> anyhow::Result<()> {
        if let Some(mut old) = self.nodes[idx].process.take() {
            if old.try_exit()?.is_none() {
                bail!("node {idx} is still running");
            }
        }
        let node = &self.nodes[idx];
        let addr = TestNetwork::node_addr(idx);
        let mut args = vec![
            "agent".to_string(),
            "--data-dir".into(),
            node.disk.dir().display().to_string(),
            "--listen".into(),
            format!("{addr}:{WG_PORT}"),
            "--api".into(),
            format!("{addr}:{API_PORT}"),
            "--mesh".into(),
            self.mesh.clone(),
            "--admin-token-file".into(),
            self.admin_token_path.display().to_string(),
        ];
        if node.role == Role::Worker {
            args.extend(["--role".to_string(), "worker".to_string()]);
        }
        if let Some(path) = &self.config_path {
            args.extend(["--config".to_string(), path.display().to_string()]);
        }
        args.extend(node.join_args.iter().cloned());
        let spec = ProcessSpec {
            ns: self.net.node_ns(idx).to_string(),
            program: self.shoal.clone(),
            args,
            // `SHOAL_CHAOS_AGENT_LOG` sets the agents' `RUST_LOG` (e.g. to debug one module).
            env: vec![(
                "RUST_LOG".into(),
                std::env::var("SHOAL_CHAOS_AGENT_LOG").unwrap_or_else(|_| "info".into()),
            )],
            log_path: self
                .tag
                .root_dir()
                .join(format!("n{idx}"))
                .join("agent.log"),
            clock_offset_s,
            // Each node is a host of its own: a `tun` mesh's UAPI socket
            // (`/run/wireguard/shoal0.sock`) must not collide with another node's.
            private_dirs: if self.mesh == "tun" {
                vec![PathBuf::from("/run/wireguard")]
            } else {
                Vec::new()
            },
        };
        let process = ManagedProcess::spawn(spec, &self.tag)?;
        self.agent_pids.insert(process.pid(), idx);
        let node = &mut self.nodes[idx];
        node.process = Some(process);
        node.expected_up = true;
        Ok(())
    }

    /// `kill -9` node `idx`'s agent.
    pub fn kill(&mut self, idx: NodeIdx) -> anyhow::Result<()> {
        let node = &mut self.nodes[idx];
        node.expected_up = false;
        if let Some(process) = node.process.as_mut() {
            process.kill9()?;
        }
        Ok(())
    }

    /// Sends a signal to node `idx`'s agent.
    pub fn signal(&self, idx: NodeIdx, signal: nix::sys::signal::Signal) -> anyhow::Result<()> {
        match self.nodes[idx].process.as_ref() {
            Some(process) => Ok(process.signal(signal)?),
            None => bail!("node {idx} has no process"),
        }
    }

    /// Whether node `idx`'s agent process has exited (reaping it).
    pub fn exited(&mut self, idx: NodeIdx) -> bool {
        match self.nodes[idx].process.as_mut() {
            Some(process) => !matches!(process.try_exit(), Ok(None)),
            None => true,
        }
    }

    /// The nodes expected up and in the cluster.
    pub fn up_nodes(&self) -> Vec<NodeIdx> {
        self.nodes
            .iter()
            .filter(|n| n.expected_up && !n.out)
            .map(|n| n.idx)
            .collect()
    }

    /// The servers expected up and in the cluster.
    pub fn up_servers(&self) -> Vec<NodeIdx> {
        self.nodes
            .iter()
            .filter(|n| n.expected_up && !n.out && n.role == Role::ServerWorker)
            .map(|n| n.idx)
            .collect()
    }

    /// The node with id `id`.
    pub fn idx_of(&self, id: &str) -> Option<NodeIdx> {
        self.nodes
            .iter()
            .find(|n| n.id.as_deref() == Some(id))
            .map(|n| n.idx)
    }

    /// The pid of node `idx`'s agent if it runs.
    pub fn pid(&self, idx: NodeIdx) -> Option<i32> {
        self.nodes[idx].process.as_ref().map(|p| p.pid())
    }

    /// The cgroup name in the last ready line of node `idx`'s agent log
    /// (`shoal-agent ready node=… api=… cgroup=shoal-n-…`), if it printed one.
    pub fn ready_cgroup(&self, idx: NodeIdx) -> Option<String> {
        let text = std::fs::read_to_string(self.log_path(idx)).ok()?;
        ready_line_cgroup(&text)
    }

    fn log_path(&self, idx: NodeIdx) -> PathBuf {
        self.tag
            .root_dir()
            .join(format!("n{idx}"))
            .join("agent.log")
    }

    /// The last lines of node `idx`'s agent log (for reports).
    pub fn log_tail(&self, idx: NodeIdx, lines_max: usize) -> String {
        let text = std::fs::read_to_string(self.log_path(idx)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(lines_max)..].join("\n")
    }
}

/// The agents' config file for a cluster of `n_servers` servers: `None` for 3 (the agent's
/// default voter target, so the harness also drives binaries without the option), a
/// `voter_target` line for 1 or 5 (SPEC: a server is a Raft voter; 1, 3 or 5 of them), an
/// error for any other number.
pub fn agent_config_text(n_servers: usize) -> anyhow::Result<Option<String>> {
    match n_servers {
        3 => Ok(None),
        1 | 5 => Ok(Some(format!("voter_target = {n_servers}\n"))),
        other => bail!("a cluster has 1, 3 or 5 servers, not {other}"),
    }
}

/// The `cgroup=` value of the last `shoal-agent ready` line of an agent's output; only a name
/// of the agent's own form (`shoal-…`, no `/`) is taken, since cleanup removes what it names.
pub fn ready_line_cgroup(log: &str) -> Option<String> {
    let line = log
        .lines()
        .rev()
        .find(|line| line.starts_with("shoal-agent ready "))?;
    let name = line
        .split_whitespace()
        .find_map(|field| field.strip_prefix("cgroup="))?;
    let valid = name.starts_with("shoal-")
        && name.len() > "shoal-".len()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    valid.then(|| name.to_string())
}

#[cfg(test)]
mod tests {
    use super::{agent_config_text, ready_line_cgroup};

    #[test]
    fn every_server_is_a_voter_one_three_or_five() {
        assert_eq!(agent_config_text(3).unwrap(), None);
        assert_eq!(
            agent_config_text(5).unwrap().as_deref(),
            Some("voter_target = 5\n")
        );
        assert_eq!(
            agent_config_text(1).unwrap().as_deref(),
            Some("voter_target = 1\n")
        );
        for n in [0, 2, 4, 6] {
            assert!(agent_config_text(n).is_err(), "{n} servers");
        }
    }

    #[test]
    fn ready_line_cgroup_cases() {
        let check = |log: &str, expected: Option<&str>| {
            assert_eq!(ready_line_cgroup(log).as_deref(), expected, "{log:?}");
        };
        check("", None);
        check(
            "x\nshoal-agent ready node=node-1 api=1.2.3.4:7070 cgroup=shoal-n-1a2b\n",
            Some("shoal-n-1a2b"),
        );
        // The last start counts.
        check(
            "shoal-agent ready node=a api=b cgroup=shoal-n-1\nshoal-agent ready node=a api=b cgroup=shoal-n-2",
            Some("shoal-n-2"),
        );
        // Never a path or a name of another form.
        check("shoal-agent ready node=a api=b cgroup=../etc", None);
        check("shoal-agent ready node=a api=b cgroup=shoal-n/x", None);
        check("shoal-agent ready node=a api=b cgroup=system.slice", None);
        check("shoal-agent ready node=a api=b", None);
        check(
            "  shoal-agent ready node=a cgroup=shoal-n-9 (quoted in a log line)",
            None,
        );
    }
}
