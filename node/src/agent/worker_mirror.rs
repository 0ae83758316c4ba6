//! [`WorkerMirror`]: the committed cluster state as a worker that is not a Raft member sees it.
//! SPEC: "Workers that are not servers hold no Raft log: they heartbeat to the leader over the
//! mesh and receive their assignments." The mirror asks the leader over the mesh
//! ([`crate::mesh_rpc::TAG_VIEW`]) every sync period with its applied index; the leader answers
//! "current" (a few bytes), the committed commands after that index (a delta, which the mirror
//! applies itself with Raft's pure `apply`), or, when its window of recent commands no longer
//! reaches back (or the mirror's state is not known to be exact), its whole committed state.
//! Whom to ask and what an answer means are decided by the pure [`super::mirror_sync`]; this
//! file is the driver.
//!
//! The mirrored state is kept in `<data>/mirror.bin` (CRC-checked), so that a restarted worker
//! knows its peers and the servers to ask before the first answer: written at once after a
//! whole state, and at most every [`PERSIST_ROUNDS`] sync rounds after deltas. A state read
//! back from it is not trusted to be exact (it may be older than its file says, or written by
//! an older version): the first sync after a start asks for the whole state.

use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use shoal_mesh::Transport;
use shoal_raft::soft_state::SoftState;
use shoal_raft::{ClusterState, NodeId, RaftStatus};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::mirror_sync::{self, SyncStep};
use crate::mesh_rpc::{view_request, ViewHead, ViewRequest};

/// File holding the last mirrored state.
const MIRROR_FILE: &str = "mirror.bin";
/// How long one answer may take.
pub const SYNC_REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Most requests in one sync round (candidates plus `NotLeader` hops).
pub const SYNC_ASKS_MAX: usize = 12;
/// After deltas, `mirror.bin` is rewritten at most every this many sync rounds (the file only
/// helps a restart find its peers; re-encoding the whole state on every change would cost
/// what the deltas save).
pub const PERSIST_ROUNDS: u32 = 20;

/// Fault-injection seam for tests (a follower whose apply lags): when this environment
/// variable names a path and a file exists there, the mirror takes nothing from the leader
/// (each sync round returns at once), as a worker cut off from state updates would. Unset in
/// production; read once at start.
pub const HOLD_FILE_ENV: &str = "SHOAL_TEST_MIRROR_HOLD_FILE";

/// What is kept on disk.
#[derive(Serialize, Deserialize)]
struct Persisted {
    head: ViewHead,
    state: Vec<u8>,
}

/// Why a sync round failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SyncError {
    /// No node answered with the state; the text says what the last one said.
    #[error("no leader answered: {0}")]
    NoLeader(String),
    /// The leader's state could not be decoded.
    #[error("the leader's state is undecodable: {0}")]
    Undecodable(String),
}

/// The committed state of the cluster, copied from the leader. Cheap to share (`Arc`).
pub struct WorkerMirror {
    id: NodeId,
    own_mesh_addr: Ipv4Addr,
    seeds: Vec<Ipv4Addr>,
    transport: Transport,
    path: PathBuf,
    state: parking_lot::RwLock<ClusterState>,
    head: parking_lot::Mutex<ViewHead>,
    applied: watch::Sender<u64>,
    /// Always empty: soft state lives at the leader; kept so reads have the Raft node's shape.
    soft: SoftState,
    /// One sync round at a time (the loop and writes that want their effect visible).
    sync_lock: tokio::sync::Mutex<()>,
    /// See [`HOLD_FILE_ENV`].
    hold_file: Option<PathBuf>,
    /// Whether the state is exactly the leader's at `head.applied` (after a whole state from
    /// a leader, and the deltas on top of it): only then may deltas be applied to it.
    exact: AtomicBool,
    /// Whether deltas changed the state since `mirror.bin` was written.
    unsaved: AtomicBool,
}

impl std::fmt::Debug for WorkerMirror {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerMirror")
            .field("id", &self.id)
            .field("head", &*self.head.lock())
            .finish_non_exhaustive()
    }
}

impl WorkerMirror {
    /// A mirror for node `id`, starting from what `data_dir` kept (a damaged file is ignored:
    /// it is only a cache of the leader's state), asking `seeds` until it knows the servers.
    pub fn open(
        id: NodeId,
        own_mesh_addr: Ipv4Addr,
        seeds: Vec<Ipv4Addr>,
        transport: Transport,
        data_dir: &Path,
    ) -> WorkerMirror {
        let path = data_dir.join(MIRROR_FILE);
        let (head, state) = match load(&path) {
            Ok(Some(kept)) => kept,
            Ok(None) => (ViewHead::default(), ClusterState::new()),
            Err(why) => {
                warn!(path = %path.display(), error = %why, "ignoring a damaged mirror file");
                (ViewHead::default(), ClusterState::new())
            }
        };
        let (applied, _) = watch::channel(head.applied);
        WorkerMirror {
            id,
            own_mesh_addr,
            seeds,
            transport,
            path,
            state: parking_lot::RwLock::new(state),
            head: parking_lot::Mutex::new(head),
            applied,
            soft: SoftState::new(),
            sync_lock: tokio::sync::Mutex::new(()),
            hold_file: std::env::var_os(HOLD_FILE_ENV).map(PathBuf::from),
            exact: AtomicBool::new(false),
            unsaved: AtomicBool::new(false),
        }
    }

    /// Whether a test holds this mirror back (see [`HOLD_FILE_ENV`]).
    fn held(&self) -> bool {
        self.hold_file.as_deref().is_some_and(Path::exists)
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// Reads the mirrored state under a read lock (keep `f` short).
    pub fn read<R>(&self, f: impl FnOnce(&ClusterState) -> R) -> R {
        f(&self.state.read())
    }

    /// The (empty) soft state: live usage is known at the leader only.
    pub fn with_soft_state<R>(&self, f: impl FnOnce(&SoftState) -> R) -> R {
        f(&self.soft)
    }

    /// The applied index of the mirror; changes whenever the state changes.
    pub fn subscribe_applied(&self) -> watch::Receiver<u64> {
        self.applied.subscribe()
    }

    /// The leader's mesh address as last heard (before any answer: none).
    pub fn leader_mesh_addr(&self) -> Option<Ipv4Addr> {
        self.head.lock().leader_mesh_addr
    }

    /// A Raft-shaped summary: never the leader, no log, the leader and voters as last heard.
    pub fn status(&self) -> RaftStatus {
        let head = self.head.lock().clone();
        RaftStatus {
            id: self.id,
            is_leader: false,
            leader: (head.term > 0).then_some(head.leader),
            term: head.term,
            last_log_index: None,
            last_applied_index: Some(head.applied),
            snapshot_index: None,
            voters: head.voters.iter().copied().collect(),
            learners: Default::default(),
        }
    }

    /// One sync round: asks the candidates in order (following `NotLeader` answers) until a
    /// leader answers, and installs its state if it is newer. Returns whether the state
    /// changed.
    pub async fn sync_once(&self) -> Result<bool, SyncError> {
        let _one_at_a_time = self.sync_lock.lock().await;
        if self.held() {
            return Ok(false);
        }
        let (have_applied, have_term, hint) = {
            let head = self.head.lock();
            (head.applied, head.term, head.leader_mesh_addr)
        };
        let mut queue: VecDeque<Ipv4Addr> = self
            .read(|state| mirror_sync::candidates(hint, state, &self.seeds, self.own_mesh_addr))
            .into();
        let mut last_why = "no node to ask".to_string();
        let mut asks = 0;
        while let Some(ip) = queue.pop_front() {
            if asks == SYNC_ASKS_MAX {
                break;
            }
            asks += 1;
            let request = if self.exact.load(Ordering::Acquire) {
                ViewRequest::SyncDelta { have_applied }
            } else {
                ViewRequest::Sync { have_applied }
            };
            let reply = match tokio::time::timeout(
                SYNC_REQUEST_TIMEOUT,
                view_request(&self.transport, ip, &request),
            )
            .await
            {
                Ok(Ok(reply)) => reply,
                Ok(Err(err)) => {
                    last_why = format!("{ip}: {err}");
                    continue;
                }
                Err(_) => {
                    last_why = format!("{ip}: no answer within {SYNC_REQUEST_TIMEOUT:?}");
                    continue;
                }
            };
            if self.held() {
                // Held while the answer was in flight: it may already hold newer writes.
                return Ok(false);
            }
            match mirror_sync::step(have_applied, have_term, reply) {
                SyncStep::Install { head, state } => {
                    let decoded = ClusterState::decode(&state)
                        .map_err(|err| SyncError::Undecodable(err.to_string()))?;
                    self.install(head, decoded, state).await;
                    return Ok(true);
                }
                SyncStep::Apply { head, commands } => {
                    let decoded =
                        match mirror_sync::decode_delta(have_applied, head.applied, &commands) {
                            Ok(decoded) => decoded,
                            Err(err) => {
                                // Nothing was applied; the next round asks for the whole state.
                                self.exact.store(false, Ordering::Release);
                                return Err(SyncError::Undecodable(err.to_string()));
                            }
                        };
                    self.apply_commands(head, &decoded);
                    return Ok(true);
                }
                SyncStep::Current(head) => {
                    *self.head.lock() = ViewHead {
                        applied: have_applied,
                        ..head
                    };
                    return Ok(false);
                }
                SyncStep::Follow(leader) => {
                    if leader != self.own_mesh_addr {
                        queue.push_front(leader);
                    }
                }
                SyncStep::Next(why) => last_why = format!("{ip}: {why}"),
            }
        }
        Err(SyncError::NoLeader(last_why))
    }

    async fn install(&self, head: ViewHead, state: ClusterState, encoded: Vec<u8>) {
        let applied = head.applied;
        *self.state.write() = state;
        *self.head.lock() = head.clone();
        self.exact.store(true, Ordering::Release);
        self.unsaved.store(false, Ordering::Release);
        self.applied.send_replace(applied);
        debug!(applied, "mirror installed the leader's state");
        self.keep(Persisted {
            head,
            state: encoded,
        })
        .await;
    }

    /// Applies a delta's decoded commands (see [`mirror_sync::apply_delta`]); the state is
    /// then the leader's at `head.applied`.
    fn apply_commands(&self, head: ViewHead, commands: &[shoal_raft::Command]) {
        let applied = head.applied;
        mirror_sync::apply_delta(&mut self.state.write(), commands);
        *self.head.lock() = head;
        self.unsaved.store(true, Ordering::Release);
        self.applied.send_replace(applied);
        debug!(
            applied,
            commands = commands.len(),
            "mirror applied the leader's commands"
        );
    }

    /// Writes `mirror.bin` if deltas changed the state since it was last written.
    async fn keep_if_unsaved(&self) {
        let kept = {
            // No sync round changes the state or head while they are encoded together.
            let _one_at_a_time = self.sync_lock.lock().await;
            if !self.unsaved.swap(false, Ordering::AcqRel) {
                return;
            }
            let head = self.head.lock().clone();
            match self.read(ClusterState::encode) {
                Ok(state) => Persisted { head, state },
                Err(err) => {
                    warn!(error = %err, "could not encode the mirrored state");
                    return;
                }
            }
        };
        self.keep(kept).await;
    }

    async fn keep(&self, kept: Persisted) {
        let path = self.path.clone();
        let stored = tokio::task::spawn_blocking(move || store(&path, &kept)).await;
        if let Ok(Err(err)) | Err(err) = stored.map_err(|err| err.to_string()) {
            warn!(error = %err, "could not keep the mirrored state on disk");
        }
    }

    /// Syncs every `period` until the task is aborted; logs when the leader changes or the
    /// mirror cannot reach one.
    pub async fn sync_loop(self: Arc<Self>, period: Duration) {
        let mut last_leader: Option<NodeId> = None;
        let mut failing = false;
        let mut rounds: u32 = 0;
        loop {
            rounds = rounds.wrapping_add(1);
            if rounds.is_multiple_of(PERSIST_ROUNDS) {
                self.keep_if_unsaved().await;
            }
            match self.sync_once().await {
                Ok(_) => {
                    let leader = self.status().leader;
                    if leader != last_leader {
                        info!(leader = ?leader, term = self.status().term, "worker mirror follows the leader");
                        last_leader = leader;
                    }
                    failing = false;
                }
                Err(err) => {
                    if !failing {
                        warn!(error = %err, "worker mirror cannot reach a leader");
                    }
                    failing = true;
                }
            }
            tokio::time::sleep(period).await;
        }
    }
}

fn load(path: &Path) -> Result<Option<(ViewHead, ClusterState)>, String> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(err.to_string()),
    };
    let kept: Persisted =
        shoal_raft::codec::decode_checked(&bytes).map_err(|err| err.to_string())?;
    let state = ClusterState::decode(&kept.state).map_err(|err| err.to_string())?;
    Ok(Some((kept.head, state)))
}

fn store(path: &Path, kept: &Persisted) -> Result<(), String> {
    use std::io::Write as _;
    let bytes = shoal_raft::codec::encode_checked(kept).map_err(|err| err.to_string())?;
    let temp = path.with_extension("bin.tmp");
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::File::create(&temp)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
        std::fs::rename(&temp, path)
    };
    write().map_err(|err| err.to_string())
}
