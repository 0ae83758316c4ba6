//! [`RaftNode`]: the thin tokio driver around `openraft::Raft`, the redb store and the pure
//! cores. It owns a leader task that, while this node leads, confirms leadership with a quorum,
//! turns the failure detector's verdicts into `MarkNodesDown` commands and (optionally) moves
//! the Raft membership one step towards [`membership::next_step`]. Every await has a timeout.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::path::Path;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::ClientWriteError;
use openraft::error::Fatal;
use openraft::error::RaftError;
use openraft::ChangeMembers;
use openraft::ServerState;
use openraft::SnapshotPolicy;
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::clock::Clock;
use crate::command::Action;
use crate::command::Command;
use crate::command::CommandResponse;
use crate::command::Outcome;
use crate::command::Refusal;
use crate::failure_detector::FailureDetector;
use crate::failure_detector::HEARTBEAT_GRACE_MS_DEFAULT;
use crate::membership;
use crate::membership::MembershipStep;
use crate::model::ClusterSettings;
use crate::model::NodeAddr;
use crate::model::NodeId;
use crate::model::NodeState;
use crate::network::NetworkFactory;
use crate::network::RaftTransport;
use crate::network::RpcHandle;
use crate::soft_state::Heartbeat;
use crate::soft_state::SoftState;
use crate::state::ClusterState;
use crate::store;
use crate::store::SmShared;
use crate::store::StoreError;
use crate::types::RaftMetrics;
use crate::types::TypeConfig;

/// Timing and policy of one Raft node.
///
/// Timeouts: heartbeats every 30 ms and an election timeout drawn from 90–120 ms. openraft 0.9
/// starts an election only when the leader's lease (as long as the largest election timeout)
/// plus the follower's own election timeout have passed since the last heartbeat, and voters
/// refuse candidates while that lease lasts: a dead leader is replaced 210–240 ms after its
/// last heartbeat, plus a round trip for the vote. The chaos suite measured leader kill → first
/// acknowledged write at p50 244 ms, p99 479 ms with these values (CI scenario, seed 705),
/// against p50 534 ms, p99 1,084 ms with the earlier 50 / 150–300 ms. A follower that hears no
/// heartbeat for 210 ms (a stalled disk or process: in openraft 0.9 its heartbeats wait behind
/// its previous append) starts a needless election, so hosts with slow fsync or long stalls
/// should raise them (agent options `raft_heartbeat_interval_ms`,
/// `raft_election_timeout_ms_min`/`_max`). The 3:1 ratio of timeout to heartbeat tolerates two
/// lost heartbeats before a needless election.
#[derive(Clone, Debug)]
pub struct RaftConfig {
    /// This node's id (1 for the bootstrapping node; otherwise the id its registration got).
    pub node_id: NodeId,
    /// Leader heartbeat interval.
    pub heartbeat_interval_ms: u64,
    /// Lower bound of the randomised election timeout.
    pub election_timeout_ms_min: u64,
    /// Upper bound of the randomised election timeout.
    pub election_timeout_ms_max: u64,
    /// Build a snapshot after this many applied entries since the last one.
    pub snapshot_logs_since_last: u64,
    /// Entries kept in the log behind a snapshot (lets slightly lagging followers catch up
    /// from the log instead of a snapshot).
    pub logs_kept_after_snapshot: u64,
    /// Snapshot chunk size on the wire.
    pub snapshot_chunk_bytes_max: u64,
    /// Timeout of one snapshot chunk RPC.
    pub snapshot_chunk_timeout_ms: u64,
    /// How long [`RaftNode::write`] waits for commit and apply.
    pub write_timeout_ms: u64,
    /// How long membership changes and bootstrap wait.
    pub admin_timeout_ms: u64,
    /// Period of the leader task.
    pub leader_tick_ms: u64,
    /// A heartbeat is acknowledged only if the leader confirmed its leadership with a quorum
    /// within this window (see the fencing argument in ARCHITECTURE.md).
    pub leader_confirm_window_ms: u64,
    /// Let the leader task mark silent nodes down.
    pub failure_detection: bool,
    /// Let the leader task add/promote/remove Raft members to follow the cluster state.
    pub auto_membership: bool,
    /// A voter that starts with other voters in its membership (a restart) holds its own
    /// elections until it hears a leader, for at most this long. openraft 0.9 has no pre-vote:
    /// a restarted node that has not heard the leader yet (its mesh connections are being
    /// re-established) would otherwise start an election after its election timeout, and its
    /// higher term deposes a healthy leader (the chaos suite saw this after most restarts).
    /// The cost: if the leader is lost while this node is down, this node's first election
    /// comes this much later (the other voters elect as usual).
    pub election_hold_after_start_ms: u64,
}

impl RaftConfig {
    /// Defaults for node `node_id`.
    pub fn new(node_id: NodeId) -> Self {
        Self {
            node_id,
            heartbeat_interval_ms: 30,
            election_timeout_ms_min: 90,
            election_timeout_ms_max: 120,
            snapshot_logs_since_last: 5_000,
            logs_kept_after_snapshot: 1_000,
            snapshot_chunk_bytes_max: 1024 * 1024,
            snapshot_chunk_timeout_ms: 2_000,
            write_timeout_ms: 5_000,
            admin_timeout_ms: 10_000,
            leader_tick_ms: 500,
            leader_confirm_window_ms: 1_000,
            failure_detection: true,
            auto_membership: true,
            election_hold_after_start_ms: 1_000,
        }
    }
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The store is corrupt or cannot be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The configuration is invalid.
    #[error("invalid raft config: {0}")]
    Config(String),
    /// openraft failed to start (e.g. a storage read failed).
    #[error("raft failed to start: {0}")]
    Raft(String),
}

/// Why a write did not produce a response.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteError {
    /// This node is not the leader; send the write there (`leader_node` is its Raft address,
    /// `None` while an election is running: retry after a short wait).
    #[error("not the leader; leader is {leader_id:?}")]
    ForwardToLeader {
        /// The leader, if known.
        leader_id: Option<NodeId>,
        /// Its address, if known.
        leader_node: Option<NodeAddr>,
    },
    /// No answer in time. The command may still commit later: retry only idempotent commands.
    #[error("no commit within {timeout_ms} ms")]
    Timeout {
        /// The timeout.
        timeout_ms: u64,
    },
    /// The node is shutting down or Raft stopped.
    #[error("raft stopped: {0}")]
    Stopped(String),
    /// Another Raft error (e.g. a membership change in progress).
    #[error("raft error: {0}")]
    Raft(String),
    /// The state machine refused (used by compound operations such as bootstrap).
    #[error("refused: {0}")]
    Refused(Refusal),
}

/// Why a membership change failed.
pub type MembershipError = WriteError;

/// Answer to a heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeartbeatAck {
    /// The leader that recorded it.
    pub leader_id: NodeId,
    /// Its term.
    pub term: u64,
}

/// Why a heartbeat was not acknowledged (the node must not renew its lease).
#[derive(Debug, Clone, thiserror::Error)]
pub enum HeartbeatError {
    /// This node is not the leader.
    #[error("not the leader; leader is {leader_id:?}")]
    NotLeader {
        /// The leader, if known.
        leader_id: Option<NodeId>,
        /// Its address, if known.
        leader_node: Option<NodeAddr>,
    },
    /// This node thinks it leads but has not confirmed it with a quorum recently.
    #[error("leadership not confirmed by a quorum within the last {window_ms} ms")]
    Unconfirmed {
        /// The confirmation window.
        window_ms: u64,
    },
    /// The sender was removed from the cluster (`RemoveNode` committed; see
    /// [`crate::drain::is_removed`]). Final: a removal is never undone, so the node must stop
    /// its workstations and exit.
    #[error("node {node} was removed from the cluster")]
    Removed {
        /// The sender.
        node: NodeId,
    },
    /// The sender's heartbeat grace expired and this leader is committing it `down`: it is
    /// not acknowledged (its lease must not be renewed while its workstations are re-placed)
    /// until that commit, after which it comes back through the back-from-down path.
    #[error("node {node} is being marked down")]
    BeingMarkedDown {
        /// The sender.
        node: NodeId,
    },
}

/// A summary of this node's Raft state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaftStatus {
    /// This node.
    pub id: NodeId,
    /// True when this node is the leader.
    pub is_leader: bool,
    /// The leader, if known.
    pub leader: Option<NodeId>,
    /// Current term.
    pub term: u64,
    /// Last log index.
    pub last_log_index: Option<u64>,
    /// Last applied index.
    pub last_applied_index: Option<u64>,
    /// Index of the last snapshot.
    pub snapshot_index: Option<u64>,
    /// Voters.
    pub voters: BTreeSet<NodeId>,
    /// Learners.
    pub learners: BTreeSet<NodeId>,
}

const NEVER: u64 = u64::MAX;

/// Attempts of [`RaftNode::hand_over_leadership`].
const HAND_OVER_ATTEMPTS_MAX: u32 = 3;

/// What [`RaftNode::hand_over_leadership`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandOver {
    /// This node did not lead: there was nothing to hand over.
    NotLeader,
    /// This node is the only voter: nobody can take over (the cluster stops with it).
    NoOtherVoter,
    /// This node no longer leads and the named node does (normally the chosen successor).
    HandedTo(NodeId),
}

/// Ends a hand-over: heartbeats on again, writes accepted again.
struct HandOverGuard {
    inner: Arc<Inner>,
}

impl Drop for HandOverGuard {
    fn drop(&mut self) {
        self.inner.raft.get().runtime_config().heartbeat(true);
        self.inner.handing_over.store(false, Ordering::Release);
    }
}

enum SuccessorWait {
    Found(NodeId, NodeAddr),
    NoOtherVoter,
    NotLeading(Option<NodeId>),
    TimedOut,
}

struct Inner {
    id: NodeId,
    config: RaftConfig,
    /// The current openraft core (rebuilt after a storage failure) and the node's metrics.
    raft: Arc<RaftCell>,
    shared: Arc<SmShared>,
    clock: Arc<dyn Clock>,
    detector: Arc<Mutex<FailureDetector>>,
    confirmed_at_ms: Arc<AtomicU64>,
    shutdown_tx: watch::Sender<bool>,
    leader_task: Mutex<Option<JoinHandle<()>>>,
    /// The task that forwards the core's metrics and rebuilds the core after a storage error.
    supervisor_task: Mutex<Option<JoinHandle<()>>>,
    /// Fails its `changed()` once the current core's database is closed.
    database_closed: Arc<Mutex<watch::Receiver<()>>>,
    /// Whether Raft is stopped by a storage error and being rebuilt.
    storage: watch::Sender<StorageStatus>,
    transport: Arc<dyn RaftTransport>,
    /// Set while this leader hands its leadership over: writes are refused (clients retry at
    /// the successor) and the leader task pauses.
    handing_over: Arc<AtomicBool>,
}

/// One Raft node of the control plane. Cheap to clone.
#[derive(Clone)]
pub struct RaftNode {
    inner: Arc<Inner>,
}

fn forward(leader_id: Option<NodeId>, leader_node: Option<NodeAddr>) -> WriteError {
    WriteError::ForwardToLeader {
        leader_id,
        leader_node,
    }
}

fn map_write_error(e: RaftError<u64, ClientWriteError<u64, NodeAddr>>) -> WriteError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
            forward(f.leader_id, f.leader_node)
        }
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            WriteError::Raft(e.to_string())
        }
        RaftError::Fatal(f) => WriteError::Stopped(f.to_string()),
    }
}

impl RaftNode {
    /// Opens (verifying) the store in `data_dir` and starts Raft. A corrupt store is a
    /// [`StartError::Store`] with a message that says what is corrupt and what to do.
    pub async fn start(
        config: RaftConfig,
        data_dir: &Path,
        transport: Arc<dyn RaftTransport>,
        clock: Arc<dyn Clock>,
    ) -> Result<RaftNode, StartError> {
        let (log_store, state_machine) = open_store(data_dir).await?;
        let shared = state_machine.shared();
        let database_closed = Arc::new(Mutex::new(log_store.subscribe_closed()));
        let raft_config = openraft::Config {
            cluster_name: "shoal".to_string(),
            heartbeat_interval: config.heartbeat_interval_ms,
            election_timeout_min: config.election_timeout_ms_min,
            election_timeout_max: config.election_timeout_ms_max,
            install_snapshot_timeout: config.snapshot_chunk_timeout_ms,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_logs_since_last),
            max_in_snapshot_log_to_keep: config.logs_kept_after_snapshot,
            snapshot_max_chunk_size: config.snapshot_chunk_bytes_max,
            ..Default::default()
        }
        .validate()
        .map_err(|e| StartError::Config(e.to_string()))?;
        let raft_config = Arc::new(raft_config);
        let mut log_store = log_store;
        let restarted = had_a_leader(&mut log_store).await;
        let raft = openraft::Raft::new(
            config.node_id,
            raft_config.clone(),
            NetworkFactory {
                transport: transport.clone(),
                retry_after_unreachable: Duration::from_millis(config.heartbeat_interval_ms),
            },
            log_store,
            state_machine,
        )
        .await
        .map_err(|e| StartError::Raft(e.to_string()))?;
        let grace_ms = {
            let applied = shared.applied.read();
            if applied.state.is_initialized() {
                applied.state.settings.heartbeat_grace_ms
            } else {
                HEARTBEAT_GRACE_MS_DEFAULT
            }
        };
        let (shutdown_tx, _) = watch::channel(false);
        let cell = Arc::new(RaftCell {
            metrics_tx: watch::channel(raft.metrics().borrow().clone()).0,
            leader_heard: watch::channel(0).0,
            raft: parking_lot::RwLock::new(raft),
        });
        if restarted {
            hold_elections_until_a_leader_is_heard(
                &cell,
                config.node_id,
                Duration::from_millis(config.election_hold_after_start_ms),
            );
        }
        let (storage, _) = watch::channel(StorageStatus::default());
        let supervisor = Supervisor {
            id: config.node_id,
            data_dir: data_dir.to_path_buf(),
            raft_config,
            cell: cell.clone(),
            shared: shared.clone(),
            transport: transport.clone(),
            storage: storage.clone(),
            database_closed: database_closed.clone(),
            shutdown_rx: shutdown_tx.subscribe(),
            clock: clock.clone(),
            shutdown_timeout: Duration::from_millis(config.admin_timeout_ms),
            retry_ms: STORAGE_RETRY_MS_MIN,
            election_hold: Duration::from_millis(config.election_hold_after_start_ms),
        };
        let inner = Arc::new(Inner {
            id: config.node_id,
            config,
            raft: cell,
            shared,
            clock,
            detector: Arc::new(Mutex::new(FailureDetector::new(grace_ms))),
            confirmed_at_ms: Arc::new(AtomicU64::new(NEVER)),
            shutdown_tx,
            leader_task: Mutex::new(None),
            supervisor_task: Mutex::new(None),
            database_closed,
            storage,
            transport,
            handing_over: Arc::new(AtomicBool::new(false)),
        });
        let node = RaftNode { inner };
        let task = tokio::spawn(leader_loop(node.clone_for_task()));
        *node.inner.leader_task.lock() = Some(task);
        let supervisor_task = tokio::spawn(supervise(supervisor));
        *node.inner.supervisor_task.lock() = Some(supervisor_task);
        tracing::info!(node_id = node.inner.id, dir = %data_dir.display(), "raft node started");
        Ok(node)
    }

    fn clone_for_task(&self) -> LeaderTask {
        LeaderTask {
            id: self.inner.id,
            config: self.inner.config.clone(),
            raft: self.inner.raft.clone(),
            shared: self.inner.shared.clone(),
            clock: self.inner.clock.clone(),
            detector: self.inner.detector.clone(),
            confirmed_at_ms: self.inner.confirmed_at_ms.clone(),
            shutdown_rx: self.inner.shutdown_tx.subscribe(),
            handing_over: self.inner.handing_over.clone(),
        }
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.inner.id
    }

    /// The handle the transport's server side passes incoming RPC bytes to.
    pub fn rpc_handle(&self) -> RpcHandle {
        RpcHandle {
            raft: self.inner.raft.clone(),
        }
    }

    fn admin_timeout(&self) -> Duration {
        Duration::from_millis(self.inner.config.admin_timeout_ms)
    }

    /// Creates a new one-node cluster with this node (which must be node 1) as its only voter,
    /// then commits `InitCluster` and registers this node. Idempotent: on a node that is
    /// already bootstrapped it changes nothing.
    pub async fn bootstrap(
        &self,
        self_addr: NodeAddr,
        cluster_id: &str,
        settings: ClusterSettings,
        registration: crate::command::NodeRegistration,
    ) -> Result<(), WriteError> {
        if self.inner.id != 1 {
            return Err(WriteError::Raft(format!(
                "only node 1 bootstraps a cluster, this is node {}",
                self.inner.id
            )));
        }
        let raft = self.inner.raft.get();
        let initialized = tokio::time::timeout(self.admin_timeout(), raft.is_initialized())
            .await
            .map_err(|_| WriteError::Timeout {
                timeout_ms: self.inner.config.admin_timeout_ms,
            })?
            .map_err(|e| WriteError::Stopped(e.to_string()))?;
        if !initialized {
            let members = BTreeMap::from([(1u64, self_addr)]);
            tokio::time::timeout(self.admin_timeout(), raft.initialize(members))
                .await
                .map_err(|_| WriteError::Timeout {
                    timeout_ms: self.inner.config.admin_timeout_ms,
                })?
                .map_err(|e| WriteError::Raft(e.to_string()))?;
        }
        raft.wait(Some(self.admin_timeout()))
            .current_leader(1, "bootstrap: wait to lead")
            .await
            .map_err(|e| WriteError::Raft(e.to_string()))?;
        let at_ms = self.inner.clock.unix_ms();
        if !self.read(|state| state.is_initialized()) {
            let command = Command::new(
                at_ms,
                "system",
                Action::InitCluster {
                    cluster_id: cluster_id.to_string(),
                    settings,
                },
            );
            match self.write(command).await? {
                Ok(_) | Err(Refusal::AlreadyInitialized) => {}
                Err(refusal) => return Err(WriteError::Refused(refusal)),
            }
        }
        if self.read(|state| state.nodes.is_empty()) {
            let command = Command::new(at_ms, "system", Action::RegisterNode(registration));
            match self.write(command).await? {
                Ok(_) | Err(Refusal::AlreadyInitialized) => {}
                Err(refusal) => return Err(WriteError::Refused(refusal)),
            }
        }
        Ok(())
    }

    /// Proposes a command and waits until it is committed and applied here.
    pub async fn write(&self, command: Command) -> Result<CommandResponse, WriteError> {
        if self.inner.handing_over.load(Ordering::Acquire) {
            // Stepping down: a new entry now would make the successor's log shorter than ours
            // and cost it our vote. The caller retries once the successor leads.
            return Err(forward(None, None));
        }
        if let Some(error) = self.inner.storage.borrow().failed.clone() {
            return Err(WriteError::Stopped(format!(
                "storage failed ({error}); this node is retrying, try again later"
            )));
        }
        let timeout_ms = self.inner.config.write_timeout_ms;
        match tokio::time::timeout(
            Duration::from_millis(timeout_ms),
            self.inner.raft.get().client_write(command),
        )
        .await
        {
            Err(_) => Err(WriteError::Timeout { timeout_ms }),
            Ok(Ok(response)) => Ok(response.data),
            Ok(Err(e)) => Err(map_write_error(e)),
        }
    }

    /// Reads the applied state under a read lock (keep `f` short: apply waits for it).
    pub fn read<R>(&self, f: impl FnOnce(&ClusterState) -> R) -> R {
        f(&self.inner.shared.applied.read().state)
    }

    /// Confirms with a quorum that this node still leads and has applied everything committed
    /// before this call; after `Ok`, [`RaftNode::read`] is linearizable.
    pub async fn ensure_linearizable(&self) -> Result<(), WriteError> {
        let timeout_ms = self.inner.config.write_timeout_ms;
        match tokio::time::timeout(
            Duration::from_millis(timeout_ms),
            self.inner.raft.get().ensure_linearizable(),
        )
        .await
        {
            Err(_) => Err(WriteError::Timeout { timeout_ms }),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(RaftError::APIError(openraft::error::CheckIsLeaderError::ForwardToLeader(
                f,
            )))) => Err(forward(f.leader_id, f.leader_node)),
            Ok(Err(RaftError::APIError(e))) => Err(WriteError::Raft(e.to_string())),
            Ok(Err(RaftError::Fatal(f))) => Err(WriteError::Stopped(f.to_string())),
        }
    }

    /// The index of the last applied entry; changes whenever the state changes.
    pub fn subscribe_applied(&self) -> watch::Receiver<u64> {
        self.inner.shared.applied_index.subscribe()
    }

    /// Waits until the entry at `index` is applied here.
    pub async fn wait_applied(&self, index: u64, timeout: Duration) -> Result<(), WriteError> {
        let mut rx = self.subscribe_applied();
        tokio::time::timeout(timeout, rx.wait_for(|applied| *applied >= index))
            .await
            .map_err(|_| WriteError::Timeout {
                timeout_ms: timeout.as_millis() as u64,
            })?
            .map_err(|e| WriteError::Stopped(e.to_string()))?;
        Ok(())
    }

    /// openraft's metrics stream (leader, term, replication).
    pub fn metrics(&self) -> watch::Receiver<RaftMetrics> {
        self.inner.raft.metrics()
    }

    /// A summary of the current Raft state.
    pub fn status(&self) -> RaftStatus {
        let metrics = self.inner.raft.metrics();
        let m = metrics.borrow();
        let membership = m.membership_config.membership();
        RaftStatus {
            id: m.id,
            is_leader: m.state == ServerState::Leader,
            leader: m.current_leader,
            term: m.current_term,
            last_log_index: m.last_log_index,
            last_applied_index: m.last_applied.map(|id| id.index),
            snapshot_index: m.snapshot.map(|id| id.index),
            voters: membership.voter_ids().collect(),
            learners: membership.learner_ids().collect(),
        }
    }

    /// Whether Raft is stopped by a storage error (a full disk) and this node is rebuilding its
    /// core, with how many attempts so far and how many recoveries since start.
    pub fn storage_status(&self) -> StorageStatus {
        self.inner.storage.borrow().clone()
    }

    /// [`RaftNode::storage_status`] as a stream, for waiting on a failure or a recovery.
    pub fn subscribe_storage(&self) -> watch::Receiver<StorageStatus> {
        self.inner.storage.subscribe()
    }

    async fn admin<F, T>(&self, fut: F) -> Result<T, WriteError>
    where
        F: std::future::Future<Output = Result<T, RaftError<u64, ClientWriteError<u64, NodeAddr>>>>,
    {
        match tokio::time::timeout(self.admin_timeout(), fut).await {
            Err(_) => Err(WriteError::Timeout {
                timeout_ms: self.inner.config.admin_timeout_ms,
            }),
            Ok(result) => result.map_err(map_write_error),
        }
    }

    /// Adds a node as a learner and waits until it has caught up (leader only).
    pub async fn add_learner(&self, id: NodeId, addr: NodeAddr) -> Result<(), WriteError> {
        self.admin(self.inner.raft.get().add_learner(id, addr, true))
            .await
            .map(|_| ())
    }

    /// Promotes a learner to voter (leader only).
    pub async fn promote(&self, id: NodeId) -> Result<(), WriteError> {
        self.admin(
            self.inner
                .raft
                .get()
                .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false),
        )
        .await
        .map(|_| ())
    }

    /// Removes a node from the Raft membership, voter or learner (leader only). The node's id
    /// stays used in the cluster state: ids are never reused.
    pub async fn remove(&self, id: NodeId) -> Result<(), WriteError> {
        let status = self.status();
        if status.voters.contains(&id) {
            self.admin(
                self.inner
                    .raft
                    .get()
                    .change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), false),
            )
            .await?;
        }
        if self.status().learners.contains(&id) {
            self.admin(
                self.inner
                    .raft
                    .get()
                    .change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false),
            )
            .await?;
        }
        Ok(())
    }

    /// Builds a snapshot now (tests, and before a planned restart).
    pub async fn trigger_snapshot(&self) -> Result<(), WriteError> {
        tokio::time::timeout(
            self.admin_timeout(),
            self.inner.raft.get().trigger().snapshot(),
        )
        .await
        .map_err(|_| WriteError::Timeout {
            timeout_ms: self.inner.config.admin_timeout_ms,
        })?
        .map_err(|e| WriteError::Stopped(e.to_string()))
    }

    /// Hands this node's leadership to an up-to-date voter before it stops (SIGTERM), so that
    /// the cluster has a leader again within one round trip instead of after the followers'
    /// lease and election timeouts.
    ///
    /// openraft 0.9 has no leadership transfer, so this is Raft's `TimeoutNow` built from what
    /// 0.9 offers: the leader refuses new writes and pauses its leader task; waits until the
    /// voter with the most of its log ([`membership::choose_successor`]) has all of it; turns
    /// its own heartbeats off; and sends that voter [`crate::network::RaftRpc::ElectNow`], on
    /// which it calls `trigger().elect()`. Its vote request reaches the old leader, whose own
    /// vote lease has expired and whose log is no longer than the candidate's, so the old
    /// leader grants it and becomes a follower: with its vote and the candidate's own, a
    /// three-voter cluster has a quorum at once (larger clusters gather the rest once the
    /// followers' leases lapse, since no more heartbeats come). Up to
    /// `HAND_OVER_ATTEMPTS_MAX` attempts; heartbeats and writes are enabled again afterwards
    /// (a follower sends none, and a node that still leads goes on leading).
    pub async fn hand_over_leadership(&self) -> Result<HandOver, WriteError> {
        if !self.status().is_leader {
            return Ok(HandOver::NotLeader);
        }
        self.inner.handing_over.store(true, Ordering::Release);
        self.inner.confirmed_at_ms.store(NEVER, Ordering::Release);
        // Heartbeats and writes come back on however this ends, also if the caller drops
        // this future at a timeout.
        let _restore = HandOverGuard {
            inner: self.inner.clone(),
        };
        let result = self.hand_over_attempts().await;
        match &result {
            Ok(outcome) => {
                tracing::info!(node_id = self.inner.id, ?outcome, "leadership hand-over")
            }
            Err(e) => {
                tracing::warn!(node_id = self.inner.id, error = %e, "leadership hand-over failed")
            }
        }
        result
    }

    async fn hand_over_attempts(&self) -> Result<HandOver, WriteError> {
        let raft = self.inner.raft.get();
        // A successor catches up within a few heartbeats and an election that starts wins in
        // one round trip; four election timeouts (at least 1 s) bound each step.
        let election_ms = self.inner.config.election_timeout_ms_max;
        let step_timeout = Duration::from_millis(election_ms.saturating_mul(4).max(1_000));
        let mut last_failure = String::from("no attempt made");
        for attempt in 1..=HAND_OVER_ATTEMPTS_MAX {
            let successor = match self.wait_for_successor(step_timeout).await {
                SuccessorWait::Found(id, addr) => (id, addr),
                SuccessorWait::NoOtherVoter => return Ok(HandOver::NoOtherVoter),
                SuccessorWait::NotLeading(Some(leader)) => return Ok(HandOver::HandedTo(leader)),
                SuccessorWait::NotLeading(None) | SuccessorWait::TimedOut => {
                    last_failure = "no voter caught up with the leader's log".to_string();
                    continue;
                }
            };
            let (successor_id, successor_addr) = successor;
            if attempt == 1 {
                // The leader's own vote lease (openraft's `leader_lease`, the maximum election
                // timeout) is renewed by its heartbeats and refuses any candidate until it
                // lapses. With heartbeats off it lapses first: the followers' leases run as
                // long, and they only campaign one election timeout after theirs.
                raft.runtime_config().heartbeat(false);
                let lease_ms = election_ms.saturating_add(self.inner.config.heartbeat_interval_ms);
                tokio::time::sleep(Duration::from_millis(lease_ms)).await;
            }
            tracing::info!(
                node_id = self.inner.id,
                successor = successor_id,
                attempt,
                "asking the successor to elect itself"
            );
            if let Err(why) = self
                .send_elect_now(successor_id, &successor_addr, step_timeout)
                .await
            {
                last_failure = why;
                tokio::time::sleep(Duration::from_millis(election_ms)).await;
                continue;
            }
            let mut metrics = raft.metrics();
            let own = self.inner.id;
            // Only the leader id leaves the wait: the metrics guard must not live across the
            // awaits below (it is not `Send`, and callers spawn this future).
            let elected = tokio::time::timeout(
                step_timeout,
                metrics.wait_for(|m| m.current_leader.is_some_and(|leader| leader != own)),
            )
            .await
            .ok()
            .and_then(|waited| waited.ok().and_then(|m| m.current_leader));
            if let Some(leader) = elected {
                return Ok(HandOver::HandedTo(leader));
            }
            last_failure = format!("node {successor_id} was not elected within {step_timeout:?}");
            // Our own vote lease may have refused the candidate (we were elected moments ago):
            // it has expired after one election timeout.
            tokio::time::sleep(Duration::from_millis(election_ms)).await;
        }
        Err(WriteError::Raft(format!(
            "leadership not handed over after {HAND_OVER_ATTEMPTS_MAX} attempts: {last_failure}"
        )))
    }

    async fn wait_for_successor(&self, timeout: Duration) -> SuccessorWait {
        let mut metrics = self.inner.raft.metrics();
        let own = self.inner.id;
        let wait = async {
            loop {
                let verdict = {
                    let m = metrics.borrow_and_update();
                    if m.state != ServerState::Leader {
                        Some(SuccessorWait::NotLeading(
                            m.current_leader.filter(|l| *l != own),
                        ))
                    } else {
                        let membership = m.membership_config.membership();
                        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
                        let matched: BTreeMap<NodeId, Option<u64>> = m
                            .replication
                            .as_ref()
                            .map(|progress| {
                                progress
                                    .iter()
                                    .map(|(id, log)| (*id, log.map(|log| log.index)))
                                    .collect()
                            })
                            .unwrap_or_default();
                        match membership::choose_successor(own, &voters, &matched, m.last_log_index)
                        {
                            None => Some(SuccessorWait::NoOtherVoter),
                            Some(successor) if successor.up_to_date => membership
                                .get_node(&successor.id)
                                .map(|addr| SuccessorWait::Found(successor.id, addr.clone())),
                            Some(_) => None,
                        }
                    }
                };
                if let Some(verdict) = verdict {
                    return verdict;
                }
                if metrics.changed().await.is_err() {
                    return SuccessorWait::NotLeading(None);
                }
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .unwrap_or(SuccessorWait::TimedOut)
    }

    async fn send_elect_now(
        &self,
        target: NodeId,
        addr: &NodeAddr,
        timeout: Duration,
    ) -> Result<(), String> {
        let request =
            crate::codec::encode(&crate::network::RaftRpc::ElectNow).map_err(|e| e.to_string())?;
        let reply = tokio::time::timeout(timeout, self.inner.transport.send(target, addr, request))
            .await
            .map_err(|_| format!("node {target} did not answer ElectNow within {timeout:?}"))?
            .map_err(|e| e.to_string())?;
        match crate::codec::decode::<crate::network::RaftRpcReply>(&reply) {
            Ok(crate::network::RaftRpcReply::ElectNow(result)) => result,
            Ok(other) => Err(format!("node {target} answered ElectNow with {other:?}")),
            Err(e) => Err(format!(
                "undecodable ElectNow reply from node {target}: {e}"
            )),
        }
    }

    /// Records a node's heartbeat at the leader. Acknowledged only while this node leads and
    /// has confirmed it with a quorum within `leader_confirm_window_ms`; only an acknowledged
    /// heartbeat may renew the node's [`crate::lease::Lease`].
    pub fn heartbeat(
        &self,
        node: NodeId,
        heartbeat: Heartbeat,
    ) -> Result<HeartbeatAck, HeartbeatError> {
        let (leader_id, leader_node, term, is_leader) = {
            let metrics = self.inner.raft.metrics();
            let m = metrics.borrow();
            let leader_node = m
                .current_leader
                .and_then(|id| m.membership_config.membership().get_node(&id).cloned());
            (
                m.current_leader,
                leader_node,
                m.current_term,
                m.state == ServerState::Leader,
            )
        };
        if !is_leader {
            return Err(HeartbeatError::NotLeader {
                leader_id,
                leader_node,
            });
        }
        // Applied state holds only committed entries and a removal is never undone, so this
        // answer is final even before the leadership is confirmed.
        if self.read(|state| crate::drain::is_removed(state, node)) {
            return Err(HeartbeatError::Removed { node });
        }
        let now_ms = self.inner.clock.monotonic_ms();
        let window_ms = self.inner.config.leader_confirm_window_ms;
        let confirmed = self.inner.confirmed_at_ms.load(Ordering::Acquire);
        if confirmed == NEVER || now_ms.saturating_sub(confirmed) > window_ms {
            return Err(HeartbeatError::Unconfirmed { window_ms });
        }
        let mut detector = self.inner.detector.lock();
        // Past its grace the node is listed by the detector until the leader task has
        // committed it down (then forgotten): an ack now would renew its lease while its
        // workstations are being re-placed.
        let grace_ms = detector.grace_ms();
        if self.inner.config.failure_detection
            && detector
                .soft_state()
                .get(node)
                .is_some_and(|live| now_ms.saturating_sub(live.last_heartbeat_ms) > grace_ms)
        {
            return Err(HeartbeatError::BeingMarkedDown { node });
        }
        detector.heartbeat(node, now_ms, heartbeat);
        Ok(HeartbeatAck {
            leader_id: self.inner.id,
            term,
        })
    }

    /// Reads the leader's soft state (usage, last heartbeats). Empty on followers.
    pub fn with_soft_state<R>(&self, f: impl FnOnce(&SoftState) -> R) -> R {
        f(self.inner.detector.lock().soft_state())
    }

    /// Stops the leader task and Raft. The store is closed once openraft's tasks have ended.
    pub async fn shutdown(&self) -> Result<(), WriteError> {
        self.inner.shutdown_tx.send_replace(true);
        let task = self.inner.leader_task.lock().take();
        if let Some(task) = task {
            let _ = tokio::time::timeout(self.admin_timeout(), task).await;
        }
        // The supervisor may be rebuilding the core: let it finish (or give up) first, so that
        // the core stopped below is the last one and its database the one waited for.
        let supervisor = self.inner.supervisor_task.lock().take();
        if let Some(mut supervisor) = supervisor {
            if tokio::time::timeout(self.admin_timeout(), &mut supervisor)
                .await
                .is_err()
            {
                supervisor.abort();
                let _ = supervisor.await;
            }
        }
        tokio::time::timeout(self.admin_timeout(), self.inner.raft.get().shutdown())
            .await
            .map_err(|_| WriteError::Timeout {
                timeout_ms: self.inner.config.admin_timeout_ms,
            })?
            .map_err(|e| WriteError::Stopped(e.to_string()))?;
        // openraft's state machine worker and in-flight blocking store calls release the
        // database shortly after the core stops; wait until it is closed, so that the data dir
        // can be opened again (a restart in the same process) as soon as this returns.
        let mut closed = self.inner.database_closed.lock().clone();
        tokio::time::timeout(self.admin_timeout(), async {
            while closed.changed().await.is_ok() {}
        })
        .await
        .map_err(|_| WriteError::Timeout {
            timeout_ms: self.inner.config.admin_timeout_ms,
        })?;
        tracing::info!(node_id = self.inner.id, "raft node stopped");
        Ok(())
    }
}

/// Opens the store off the async executor (it reads and verifies the whole file).
async fn open_store(
    data_dir: &Path,
) -> Result<(store::LogStore, store::StateMachineStore), StoreError> {
    let dir = data_dir.to_path_buf();
    tokio::task::spawn_blocking(move || store::open(&dir))
        .await
        .map_err(|e| StoreError::Database {
            path: data_dir.join(store::DB_FILE_NAME),
            detail: e.to_string(),
        })?
}

/// The openraft core that serves this node now, and this node's Raft metrics as one stream
/// that outlives cores. Everything reaches the core through it (the node's methods, the leader
/// task, the [`RpcHandle`]), so a core rebuilt after a storage failure is everyone's at once.
pub(crate) struct RaftCell {
    raft: parking_lot::RwLock<openraft::Raft<TypeConfig>>,
    /// Fed by the supervisor from the current core's metrics.
    metrics_tx: watch::Sender<RaftMetrics>,
    /// Counts `AppendEntries` this node accepted (a leader's vote not lower than its own): what
    /// ends a restarted voter's election hold.
    pub(crate) leader_heard: watch::Sender<u64>,
}

impl RaftCell {
    /// The current core (a cheap handle clone).
    pub(crate) fn get(&self) -> openraft::Raft<TypeConfig> {
        self.raft.read().clone()
    }

    /// The node's metrics: those of the current core, and across a rebuild those of the next.
    fn metrics(&self) -> watch::Receiver<RaftMetrics> {
        self.metrics_tx.subscribe()
    }
}

/// The health of a node's Raft storage ([`RaftNode::storage_status`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StorageStatus {
    /// Set while Raft is stopped by a storage error (e.g. the data dir's disk is full): the
    /// error. The node keeps retrying to rebuild its core until it succeeds.
    pub failed: Option<String>,
    /// Rebuild attempts since the current failure.
    pub attempts: u64,
    /// Times the core was rebuilt after a storage failure since the node started.
    pub recoveries: u64,
}

/// First and largest pause between attempts to rebuild the core after a storage failure.
const STORAGE_RETRY_MS_MIN: u64 = 100;
const STORAGE_RETRY_MS_MAX: u64 = 5_000;
/// A rebuilt core that ran this long without failing resets the backoff.
const STORAGE_HEALTHY_MS: u64 = 30_000;
/// The data dir must take (and fsync) a probe file of this size before the core is rebuilt:
/// room for a few log appends, so that a disk that is still full is not hammered by cores
/// that fail on their first write.
const STORAGE_PROBE_BYTES: usize = 256 * 1024;
/// The probe file's name in the data dir.
const STORAGE_PROBE_FILE: &str = ".storage-probe";
/// How long one attempt waits for the failed core to release the database.
const DATABASE_CLOSE_WAIT_MS: u64 = 1_000;

/// Forwards the core's metrics into the node's stream and, when the core stops on a storage
/// error, rebuilds it in this process from the durable store.
///
/// Why a rebuild is sound (openraft 0.9 itself stops for good on any `StorageError`): the new
/// core is what a restart of the process would start, from the same durable store. The old
/// core has ended and joined its tasks, and its database is closed (every handle dropped)
/// before the file is opened again, so nothing of the old core writes afterwards. Our store
/// reports an append or a vote only after its fsync'd commit, and openraft answers a peer only
/// after that report, so every acknowledgement is on disk; a write that failed was never
/// acknowledged. The one thing carried over in memory is the applied state machine, which
/// only ever holds committed entries. The vote is read back from disk and the store refuses to
/// lower it. The same id, log and membership come back; nothing else is kept.
struct Supervisor {
    id: NodeId,
    data_dir: PathBuf,
    raft_config: Arc<openraft::Config>,
    cell: Arc<RaftCell>,
    shared: Arc<SmShared>,
    transport: Arc<dyn RaftTransport>,
    storage: watch::Sender<StorageStatus>,
    database_closed: Arc<Mutex<watch::Receiver<()>>>,
    shutdown_rx: watch::Receiver<bool>,
    clock: Arc<dyn Clock>,
    shutdown_timeout: Duration,
    /// The next pause between rebuild attempts (kept across failures in quick succession).
    retry_ms: u64,
    /// [`RaftConfig::election_hold_after_start_ms`], for a rebuilt core.
    election_hold: Duration,
}

async fn supervise(mut sup: Supervisor) {
    loop {
        let raft = sup.cell.get();
        let started_ms = sup.clock.monotonic_ms();
        let Some(fatal) = forward_metrics(&raft, &sup.cell.metrics_tx, &mut sup.shutdown_rx).await
        else {
            return;
        };
        match fatal {
            Fatal::StorageError(error) => {
                let error = error.to_string();
                tracing::error!(
                    node_id = sup.id,
                    error = %error,
                    "raft storage failed and the core stopped; rebuilding it from the durable \
                     store once the data dir is writable again"
                );
                sup.storage.send_modify(|status| {
                    status.failed = Some(error.clone());
                    status.attempts = 0;
                });
                if sup.clock.monotonic_ms().saturating_sub(started_ms) >= STORAGE_HEALTHY_MS {
                    sup.retry_ms = STORAGE_RETRY_MS_MIN;
                }
                if !recover(&mut sup, raft).await {
                    return;
                }
            }
            Fatal::Stopped => return,
            other => {
                // A panic in openraft is a bug, not an operating error: no rebuild.
                tracing::error!(node_id = sup.id, error = %other, "raft core stopped; not rebuilt");
                return;
            }
        }
    }
}

/// Copies `raft`'s metrics into `tx` until the core stops (its fatal error) or the node shuts
/// down (`None`).
async fn forward_metrics(
    raft: &openraft::Raft<TypeConfig>,
    tx: &watch::Sender<RaftMetrics>,
    shutdown_rx: &mut watch::Receiver<bool>,
) -> Option<Fatal<NodeId>> {
    let mut rx = raft.metrics();
    loop {
        if *shutdown_rx.borrow() {
            return None;
        }
        let stopped = {
            let mut metrics = rx.borrow_and_update().clone();
            let stopped = metrics.running_state.clone().err();
            if stopped.is_some() {
                // A stopped core hears no leader: the node must not look ready, nor send
                // heartbeats or writes to the leader it knew last (maybe itself).
                metrics.current_leader = None;
            }
            tx.send_replace(metrics);
            stopped
        };
        if let Some(fatal) = stopped {
            return Some(fatal);
        }
        tokio::select! {
            changed = rx.changed() => {
                if changed.is_err() {
                    // The core's task ended without reporting why: it panicked.
                    return Some(rx.borrow().running_state.clone().err().unwrap_or(Fatal::Panicked));
                }
            }
            _ = shutdown_rx.changed() => return None,
        }
    }
}

/// Rebuilds the core after a storage failure, retrying with a bounded backoff until it works or
/// the node shuts down (false).
async fn recover(sup: &mut Supervisor, failed: openraft::Raft<TypeConfig>) -> bool {
    // The core has stopped; join its tick task too so that nothing of it runs on.
    let _ = tokio::time::timeout(sup.shutdown_timeout, failed.shutdown()).await;
    drop(failed);
    loop {
        if *sup.shutdown_rx.borrow() {
            return false;
        }
        sup.storage.send_modify(|status| status.attempts += 1);
        let attempt = sup.storage.borrow().attempts;
        match rebuild(sup).await {
            Ok(raft) => {
                *sup.cell.raft.write() = raft;
                sup.storage.send_modify(|status| {
                    status.failed = None;
                    status.recoveries += 1;
                });
                tracing::info!(
                    node_id = sup.id,
                    attempt,
                    "raft storage recovered: core rebuilt from the durable store"
                );
                return true;
            }
            Err(why) => tracing::warn!(
                node_id = sup.id,
                attempt,
                retry_in_ms = sup.retry_ms,
                error = %why,
                "raft storage failed, retrying"
            ),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(sup.retry_ms)) => {}
            _ = sup.shutdown_rx.changed() => return false,
        }
        sup.retry_ms = sup.retry_ms.saturating_mul(2).min(STORAGE_RETRY_MS_MAX);
    }
}

/// One attempt: the old database closed, the data dir writable, the store reopened and
/// verified, a new core started on it.
async fn rebuild(sup: &Supervisor) -> Result<openraft::Raft<TypeConfig>, String> {
    let mut closed = sup.database_closed.lock().clone();
    let waited = tokio::time::timeout(Duration::from_millis(DATABASE_CLOSE_WAIT_MS), async {
        while closed.changed().await.is_ok() {}
    })
    .await;
    if waited.is_err() {
        return Err("the stopped core still holds the database".to_string());
    }
    let dir = sup.data_dir.clone();
    tokio::task::spawn_blocking(move || probe_writable(&dir))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("data dir not writable: {e}"))?;
    let dir = sup.data_dir.clone();
    let shared = sup.shared.clone();
    let (log_store, state_machine) =
        tokio::task::spawn_blocking(move || store::reopen(&dir, shared))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
    // From here on a failed attempt must wait for this database to close.
    *sup.database_closed.lock() = log_store.subscribe_closed();
    let mut log_store = log_store;
    let restarted = had_a_leader(&mut log_store).await;
    let raft = openraft::Raft::new(
        sup.id,
        sup.raft_config.clone(),
        NetworkFactory {
            transport: sup.transport.clone(),
            retry_after_unreachable: Duration::from_millis(sup.raft_config.heartbeat_interval),
        },
        log_store,
        state_machine,
    )
    .await
    .map_err(|e| format!("raft failed to start: {e}"))?;
    if restarted {
        // Held on the cell, which serves this core once the supervisor installs it.
        hold_elections_until_a_leader_is_heard_on(&raft, &sup.cell, sup.id, sup.election_hold);
    }
    Ok(raft)
}

/// Whether this node's stored vote is a committed one: it has been part of a cluster that had
/// a leader, so on start there is a leader to hear (or to replace) rather than a cluster to
/// form.
async fn had_a_leader(log_store: &mut store::LogStore) -> bool {
    use openraft::storage::RaftLogStorage as _;
    match log_store.read_vote().await {
        Ok(Some(vote)) => vote.is_committed() && vote.leader_id().get_term() > 0,
        _ => false,
    }
}

/// Whether a restarted voter's election hold may end early: it is the only voter (nobody
/// else could lead).
fn sole_voter(metrics: &RaftMetrics, id: NodeId) -> bool {
    let mut voters = metrics.membership_config.membership().voter_ids();
    voters.next() == Some(id) && voters.next().is_none()
}

/// Disables openraft's election timer on a restarted voter until it accepts an `AppendEntries`
/// from a leader, or `hold` passes (see [`RaftConfig::election_hold_after_start_ms`]).
/// `trigger().elect()` (the leadership hand-over) is not affected, and the node still grants
/// votes to others meanwhile.
fn hold_elections_until_a_leader_is_heard(cell: &Arc<RaftCell>, id: NodeId, hold: Duration) {
    hold_elections_until_a_leader_is_heard_on(&cell.get(), cell, id, hold);
}

fn hold_elections_until_a_leader_is_heard_on(
    raft: &openraft::Raft<TypeConfig>,
    cell: &Arc<RaftCell>,
    id: NodeId,
    hold: Duration,
) {
    raft.runtime_config().elect(false);
    tracing::info!(
        node_id = id,
        hold_ms = hold.as_millis() as u64,
        "holding elections until a leader is heard"
    );
    let raft = raft.clone();
    let mut heard = cell.leader_heard.subscribe();
    let mut metrics = raft.metrics();
    tokio::spawn(async move {
        heard.mark_unchanged();
        let why = tokio::time::timeout(hold, async {
            loop {
                if sole_voter(&metrics.borrow_and_update(), id) {
                    return "sole voter";
                }
                tokio::select! {
                    changed = heard.changed() => {
                        if changed.is_ok() {
                            return "heard a leader";
                        }
                        return "stopped";
                    }
                    changed = metrics.changed() => {
                        if changed.is_err() {
                            return "stopped";
                        }
                    }
                }
            }
        })
        .await
        .unwrap_or("hold passed");
        raft.runtime_config().elect(true);
        tracing::info!(node_id = id, why, "election hold ended");
    });
}

/// Writes, fsyncs and removes a probe file of [`STORAGE_PROBE_BYTES`] in `dir`.
fn probe_writable(dir: &Path) -> std::io::Result<()> {
    use std::io::Write as _;
    let path = dir.join(STORAGE_PROBE_FILE);
    let result = (|| {
        let mut file = std::fs::File::create(&path)?;
        file.write_all(&vec![0u8; STORAGE_PROBE_BYTES])?;
        file.sync_all()
    })();
    let removed = std::fs::remove_file(&path);
    result?;
    removed
}

struct LeaderTask {
    handing_over: Arc<AtomicBool>,
    id: NodeId,
    config: RaftConfig,
    raft: Arc<RaftCell>,
    shared: Arc<SmShared>,
    clock: Arc<dyn Clock>,
    detector: Arc<Mutex<FailureDetector>>,
    confirmed_at_ms: Arc<AtomicU64>,
    shutdown_rx: watch::Receiver<bool>,
}

async fn leader_loop(mut task: LeaderTask) {
    let tick = Duration::from_millis(task.config.leader_tick_ms);
    let mut led_term: Option<u64> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            _ = task.shutdown_rx.changed() => return,
        }
        if *task.shutdown_rx.borrow() {
            return;
        }
        let (is_leader, term) = {
            let metrics = task.raft.metrics();
            let m = metrics.borrow();
            (m.state == ServerState::Leader, m.current_term)
        };
        if !is_leader || task.handing_over.load(Ordering::Acquire) {
            task.confirmed_at_ms.store(NEVER, Ordering::Release);
            led_term = None;
            continue;
        }
        let now_ms = task.clock.monotonic_ms();
        if led_term != Some(term) {
            // A new leader gives every node a fresh grace instead of trusting silence it did
            // not observe.
            let expected = expected_heartbeats(&task.shared);
            let grace_ms = task.shared.applied.read().state.settings.heartbeat_grace_ms;
            let mut detector = task.detector.lock();
            detector.set_grace_ms(grace_ms.max(1));
            detector.on_leader_start(expected, now_ms);
            led_term = Some(term);
            tracing::info!(
                node_id = task.id,
                term,
                "leading: fresh heartbeat grace for every node"
            );
        }
        if let Ok(Ok(_)) = tokio::time::timeout(tick, task.raft.get().ensure_linearizable()).await {
            task.confirmed_at_ms.store(now_ms, Ordering::Release);
        }
        if task.config.failure_detection {
            detect_failures(&task).await;
        }
        if task.config.auto_membership {
            reconcile_membership(&task).await;
        }
    }
}

fn expected_heartbeats(shared: &SmShared) -> Vec<NodeId> {
    shared
        .applied
        .read()
        .state
        .nodes
        .values()
        .filter(|node| matches!(node.state, NodeState::Ready | NodeState::Draining))
        .map(|node| node.id)
        .collect()
}

async fn detect_failures(task: &LeaderTask) {
    let now_ms = task.clock.monotonic_ms();
    let expected = expected_heartbeats(&task.shared);
    let (expired, hints, observed) = {
        let applied = task.shared.applied.read();
        let mut detector = task.detector.lock();
        detector.set_grace_ms(applied.state.settings.heartbeat_grace_ms.max(1));
        detector.sync_nodes(&expected, now_ms);
        let expired = detector.tick(now_ms);
        if expired.is_empty() {
            return;
        }
        let soft = detector.soft_state();
        let hints = soft.hints(|id| applied.state.nodes.get(&id).map(|node| node.capacity));
        let observed = soft.observed_offsets(&expired);
        (expired, hints, observed)
    };
    tracing::warn!(nodes = ?expired, "heartbeat grace expired: marking nodes down");
    let command = Command::new(
        task.clock.unix_ms(),
        "system",
        Action::MarkNodesDown {
            nodes: expired.clone(),
            hints,
            observed,
        },
    );
    let timeout = Duration::from_millis(task.config.write_timeout_ms);
    match tokio::time::timeout(timeout, task.raft.get().client_write(command)).await {
        Ok(Ok(response)) => {
            let mut detector = task.detector.lock();
            for node in &expired {
                detector.forget(*node);
            }
            if let Ok(Outcome::NodesChanged {
                replaced, pending, ..
            }) = response.data
            {
                tracing::info!(
                    n_replaced = replaced.len(),
                    n_pending = pending.len(),
                    "re-placed workstations of down nodes"
                );
            }
        }
        Ok(Err(e)) => tracing::warn!(error = %e, "could not commit nodes down"),
        Err(_) => tracing::warn!("timed out committing nodes down"),
    }
}

async fn reconcile_membership(task: &LeaderTask) {
    let (voters, learners) = {
        let metrics = task.raft.metrics();
        let m = metrics.borrow();
        let membership = m.membership_config.membership();
        (
            membership.voter_ids().collect::<BTreeSet<_>>(),
            membership.learner_ids().collect::<BTreeSet<_>>(),
        )
    };
    let step = {
        let applied = task.shared.applied.read();
        membership::next_step(&applied.state, &voters, &learners)
    };
    let Some(step) = step else {
        return;
    };
    tracing::info!(?step, "membership step");
    let timeout = Duration::from_millis(task.config.admin_timeout_ms);
    let result = match step {
        MembershipStep::AddLearner(id, addr) => {
            tokio::time::timeout(timeout, task.raft.get().add_learner(id, addr, false))
                .await
                .map(|r| r.map(|_| ()))
        }
        MembershipStep::Promote(id) => tokio::time::timeout(
            timeout,
            task.raft
                .get()
                .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false),
        )
        .await
        .map(|r| r.map(|_| ())),
        MembershipStep::RemoveVoters(ids) => tokio::time::timeout(
            timeout,
            task.raft
                .get()
                .change_membership(ChangeMembers::RemoveVoters(ids), false),
        )
        .await
        .map(|r| r.map(|_| ())),
        MembershipStep::Remove(id) => {
            let change = if voters.contains(&id) {
                ChangeMembers::RemoveVoters(BTreeSet::from([id]))
            } else {
                ChangeMembers::RemoveNodes(BTreeSet::from([id]))
            };
            tokio::time::timeout(timeout, task.raft.get().change_membership(change, false))
                .await
                .map(|r| r.map(|_| ()))
        }
    };
    match result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "membership step failed"),
        Err(_) => tracing::warn!("membership step timed out"),
    }
}
