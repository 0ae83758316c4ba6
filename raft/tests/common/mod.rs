//! Helpers for the in-process cluster tests: real `RaftNode`s with redb on disk (tempdirs),
//! connected by the in-memory `TestRouter`.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use anyhow::Context;
use shoal_raft::clock::Clock;
use shoal_raft::clock::SystemClock;
use shoal_raft::command::Admission;
use shoal_raft::command::NodeRegistration;
use shoal_raft::command::WorkstationRequest;
use shoal_raft::model::ClusterSettings;
use shoal_raft::model::Limit;
use shoal_raft::model::Resources;
use shoal_raft::model::Roles;
use shoal_raft::model::WorkstationSpec;
use shoal_raft::testing::TestRouter;
use shoal_raft::Command;
use shoal_raft::CommandResponse;
use shoal_raft::NodeAddr;
use shoal_raft::NodeId;
use shoal_raft::RaftConfig;
use shoal_raft::RaftNode;
use shoal_raft::WriteError;

pub const WAIT: Duration = Duration::from_secs(20);

/// A bound on a retry loop, read through the crate's clock seam.
pub struct Deadline {
    clock: SystemClock,
    end_ms: u64,
}

impl Deadline {
    pub fn after(wait: Duration) -> Self {
        let clock = SystemClock::new();
        let end_ms = clock.monotonic_ms() + wait.as_millis() as u64;
        Self { clock, end_ms }
    }

    pub fn passed(&self) -> bool {
        self.clock.monotonic_ms() > self.end_ms
    }
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,openraft=warn".into()),
        )
        .with_test_writer()
        .try_init();
}

pub fn addr(id: NodeId) -> NodeAddr {
    NodeAddr::new(format!("node-{id}"))
}

pub fn registration(admission: Admission, id_hint: u64, roles: Roles) -> NodeRegistration {
    NodeRegistration {
        admission,
        wg_public_key: format!("wg-key-{id_hint}"),
        endpoint: format!("127.0.0.1:{}", 51_000 + id_hint),
        rpc_port: 7000,
        api_addr: None,
        roles,
        capacity: Resources::new(8_000, 16 << 30),
        reserve: Resources::new(500, 1 << 30),
    }
}

/// A registration with the given key and cpu (8 GiB of memory, no reserve), for the pure
/// state machine tests.
pub fn node_registration(
    admission: Admission,
    key: &str,
    roles: Roles,
    cpu_millis: u64,
) -> NodeRegistration {
    NodeRegistration {
        admission,
        wg_public_key: key.into(),
        endpoint: "203.0.113.1:51820".into(),
        rpc_port: 7000,
        api_addr: None,
        roles,
        capacity: Resources::new(cpu_millis, 8 << 30),
        reserve: Resources::new(0, 0),
    }
}

/// A workstation of `cpu_millis` and 1 GiB for `tenant`, its limit equal to its reservation.
pub fn workstation_request(tenant: &str, cpu_millis: u64) -> WorkstationRequest {
    WorkstationRequest {
        tenant: tenant.into(),
        name: String::new(),
        spec: WorkstationSpec {
            reservation: Resources::new(cpu_millis, 1 << 30),
            limit: Limit {
                cpu_limit_millis: cpu_millis,
                memory_limit_bytes: 1 << 30,
            },
            network: Default::default(),
        },
    }
}

/// A cluster of nodes on one router, each with its own data dir.
pub struct Cluster {
    pub router: TestRouter,
    pub root: tempfile::TempDir,
    pub nodes: Vec<Option<RaftNode>>,
    pub config: Box<dyn Fn(NodeId) -> RaftConfig + Send + Sync>,
    pub clock: Arc<dyn Clock>,
}

impl Cluster {
    pub fn new(
        config: impl Fn(NodeId) -> RaftConfig + Send + Sync + 'static,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            router: TestRouter::new(),
            root: tempfile::tempdir()?,
            nodes: Vec::new(),
            config: Box::new(config),
            clock: Arc::new(SystemClock::new()),
        })
    }

    pub fn dir(&self, id: NodeId) -> PathBuf {
        self.root.path().join(format!("node-{id}"))
    }

    pub async fn start(&mut self, id: NodeId) -> anyhow::Result<RaftNode> {
        let node = RaftNode::start(
            (self.config)(id),
            &self.dir(id),
            self.router.transport(id),
            self.clock.clone(),
        )
        .await
        .with_context(|| format!("start node {id}"))?;
        self.router.register(id, node.rpc_handle());
        let idx = id as usize;
        if self.nodes.len() <= idx {
            self.nodes.resize(idx + 1, None);
        }
        self.nodes[idx] = Some(node.clone());
        Ok(node)
    }

    pub async fn kill(&mut self, id: NodeId) -> anyhow::Result<()> {
        self.router.unregister(id);
        if let Some(node) = self.nodes.get_mut(id as usize).and_then(Option::take) {
            node.shutdown().await?;
        }
        Ok(())
    }

    pub fn node(&self, id: NodeId) -> anyhow::Result<&RaftNode> {
        self.nodes
            .get(id as usize)
            .and_then(Option::as_ref)
            .with_context(|| format!("node {id} not running"))
    }

    pub fn running(&self) -> impl Iterator<Item = &RaftNode> {
        self.nodes.iter().flatten()
    }

    /// Waits until every running node agrees on one leader (other than `not`), returns it.
    pub async fn wait_leader(&self, not: Option<NodeId>) -> anyhow::Result<NodeId> {
        let deadline = Deadline::after(WAIT);
        loop {
            let leaders: Vec<Option<NodeId>> = self
                .running()
                .filter(|n| !self.router.is_isolated(n.id()))
                .map(|n| n.status().leader)
                .collect();
            if let Some(Some(leader)) = leaders.first() {
                if leaders.iter().all(|l| *l == Some(*leader))
                    && Some(*leader) != not
                    && self.node(*leader).is_ok_and(|n| n.status().is_leader)
                {
                    return Ok(*leader);
                }
            }
            if deadline.passed() {
                bail!("no agreed leader within {WAIT:?}: {leaders:?}");
            }
            // Wait for any metrics change of the first node (an event), bounded.
            let mut rx = self.running().next().context("no node running")?.metrics();
            let _ = tokio::time::timeout(Duration::from_millis(100), rx.changed()).await;
        }
    }

    /// Writes through whichever node leads, following ForwardToLeader.
    pub async fn write(&self, command: Command) -> anyhow::Result<CommandResponse> {
        let deadline = Deadline::after(WAIT);
        loop {
            let leader = self.wait_leader(None).await?;
            match self.node(leader)?.write(command.clone()).await {
                Ok(response) => return Ok(response),
                Err(WriteError::ForwardToLeader { .. }) | Err(WriteError::Timeout { .. })
                    if !deadline.passed() => {}
                Err(e) => bail!("write failed: {e}"),
            }
        }
    }

    /// Waits until every running node has applied at least `index`.
    pub async fn wait_applied(&self, index: u64) -> anyhow::Result<()> {
        for node in self.running() {
            node.wait_applied(index, WAIT)
                .await
                .with_context(|| format!("node {} did not apply {index}", node.id()))?;
        }
        Ok(())
    }

    /// The encoded states of every running node once they are byte-identical, after all
    /// applied `index`. The leader's own task may commit further entries (membership steps)
    /// while the replicas are read, so one read can catch them at different indexes; the
    /// property is that they converge, within [`WAIT`], or the call fails with the last states.
    pub async fn converged_states(&self, index: u64) -> anyhow::Result<Vec<Vec<u8>>> {
        let clock = SystemClock::new();
        let deadline_ms =
            clock.monotonic_ms() + u64::try_from(WAIT.as_millis()).unwrap_or(u64::MAX);
        loop {
            let states = self.states(index).await?;
            if states.windows(2).all(|pair| pair[0] == pair[1]) {
                return Ok(states);
            }
            if clock.monotonic_ms() >= deadline_ms {
                bail!("replicas still differ after {WAIT:?}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The encoded state of every running node, after all applied `index`.
    pub async fn states(&self, index: u64) -> anyhow::Result<Vec<Vec<u8>>> {
        self.wait_applied(index).await?;
        self.running()
            .map(|n| n.read(|s| s.encode()).map_err(anyhow::Error::from))
            .collect()
    }

    pub fn leader_applied(&self, leader: NodeId) -> anyhow::Result<u64> {
        Ok(self.node(leader)?.status().last_applied_index.unwrap_or(0))
    }
}

pub async fn bootstrap(node: &RaftNode) -> anyhow::Result<()> {
    node.bootstrap(
        addr(1),
        "test-cluster",
        ClusterSettings::default(),
        registration(Admission::Bootstrap, 1, Roles::SERVER_WORKER),
    )
    .await?;
    Ok(())
}

pub fn test_config(id: NodeId) -> RaftConfig {
    let mut config = RaftConfig::new(id);
    config.failure_detection = false;
    config.auto_membership = false;
    config.leader_tick_ms = 100;
    config
}

/// Bootstraps node 1 and makes nodes 2 and 3 voters (Raft membership only, without the cluster
/// state's node list).
pub async fn three_voters(cluster: &mut Cluster) -> anyhow::Result<()> {
    let n1 = cluster.start(1).await?;
    bootstrap(&n1).await?;
    for id in [2, 3] {
        cluster.start(id).await?;
        n1.add_learner(id, addr(id)).await?;
        n1.promote(id).await?;
    }
    anyhow::ensure!(n1.status().voters.len() == 3, "{:?}", n1.status().voters);
    Ok(())
}
