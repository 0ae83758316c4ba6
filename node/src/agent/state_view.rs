//! [`StateView`]: the committed cluster state as this node sees it. A server reads its own
//! Raft replica ([`RaftNode`]); a worker that is not a server holds no Raft log and reads a
//! [`WorkerMirror`] of the leader's state. The API, the placement loop, the peer loop and the
//! heartbeats read through this type and do not care which it is; writes go to the leader
//! either way ([`crate::mesh_rpc::forward_write`] through [`LeaderRoute`]).

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use shoal_raft::soft_state::SoftState;
use shoal_raft::{ClusterState, NodeId, RaftNode, RaftStatus, WriteError};
use tokio::sync::watch;

use super::worker_mirror::{WorkerMirror, SYNC_REQUEST_TIMEOUT};
use crate::mesh_rpc::LeaderRoute;

/// The committed state this node sees. Cheap to clone.
#[derive(Clone)]
pub enum StateView {
    /// A Raft member (voter or learner): its own replica.
    Raft(RaftNode),
    /// A worker that is not a server: a mirror of the leader's state.
    Mirror(Arc<WorkerMirror>),
}

impl std::fmt::Debug for StateView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StateView::Raft(raft) => write!(f, "StateView::Raft({})", raft.id()),
            StateView::Mirror(mirror) => write!(f, "StateView::{mirror:?}"),
        }
    }
}

impl StateView {
    /// This node's id.
    pub fn id(&self) -> NodeId {
        match self {
            StateView::Raft(raft) => raft.id(),
            StateView::Mirror(mirror) => mirror.id(),
        }
    }

    /// Reads the committed state (keep `f` short: it runs under a read lock).
    pub fn read<R>(&self, f: impl FnOnce(&ClusterState) -> R) -> R {
        match self {
            StateView::Raft(raft) => raft.read(f),
            StateView::Mirror(mirror) => mirror.read(f),
        }
    }

    /// Leader, term, applied index, voters (for a mirror: as last heard from the leader).
    pub fn status(&self) -> RaftStatus {
        match self {
            StateView::Raft(raft) => raft.status(),
            StateView::Mirror(mirror) => mirror.status(),
        }
    }

    /// Whether this node's Raft is stopped by a storage error and being rebuilt (a worker
    /// mirror has no Raft store: always healthy).
    pub fn storage_status(&self) -> shoal_raft::StorageStatus {
        match self {
            StateView::Raft(raft) => raft.storage_status(),
            StateView::Mirror(_) => shoal_raft::StorageStatus::default(),
        }
    }

    /// The leader's soft state (live usage); empty anywhere but on the leader.
    pub fn with_soft_state<R>(&self, f: impl FnOnce(&SoftState) -> R) -> R {
        match self {
            StateView::Raft(raft) => raft.with_soft_state(f),
            StateView::Mirror(mirror) => mirror.with_soft_state(f),
        }
    }

    /// The applied index; changes whenever the state changes.
    pub fn subscribe_applied(&self) -> watch::Receiver<u64> {
        match self {
            StateView::Raft(raft) => raft.subscribe_applied(),
            StateView::Mirror(mirror) => mirror.subscribe_applied(),
        }
    }

    /// Waits until the state at `index` is visible here.
    pub async fn wait_applied(&self, index: u64, timeout: Duration) -> Result<(), WriteError> {
        let mirror = match self {
            StateView::Raft(raft) => return raft.wait_applied(index, timeout).await,
            StateView::Mirror(mirror) => mirror,
        };
        let mut applied = mirror.subscribe_applied();
        let waited = match tokio::time::timeout(timeout, applied.wait_for(|at| *at >= index)).await
        {
            Err(_) => Err(WriteError::Timeout {
                timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
            }),
            Ok(Err(err)) => Err(WriteError::Stopped(err.to_string())),
            Ok(Ok(_)) => Ok(()),
        };
        waited
    }

    /// After a write committed at the leader: makes it visible here before the caller reads
    /// (a Raft member has applied it when the write returned; a mirror syncs once now).
    pub async fn after_write(&self) {
        if let StateView::Mirror(mirror) = self {
            let synced = tokio::time::timeout(SYNC_REQUEST_TIMEOUT * 2, mirror.sync_once()).await;
            if !matches!(synced, Ok(Ok(_))) {
                tracing::debug!("the write is not visible on this worker yet");
            }
        }
    }

    /// The local Raft node, when this node is a Raft member.
    pub fn as_raft(&self) -> Option<&RaftNode> {
        match self {
            StateView::Raft(raft) => Some(raft),
            StateView::Mirror(_) => None,
        }
    }

    /// Stops Raft on a member; a mirror has nothing to stop (its loop is a cluster task).
    pub async fn shutdown(&self) -> Result<(), WriteError> {
        match self {
            StateView::Raft(raft) => raft.shutdown().await,
            StateView::Mirror(_) => Ok(()),
        }
    }
}

impl LeaderRoute for StateView {
    fn raft_node(&self) -> Option<&RaftNode> {
        self.as_raft()
    }

    fn node_id(&self) -> NodeId {
        self.id()
    }

    fn leader_mesh_addr(&self) -> Option<Ipv4Addr> {
        match self {
            StateView::Raft(raft) => LeaderRoute::leader_mesh_addr(raft),
            StateView::Mirror(mirror) => mirror.leader_mesh_addr(),
        }
    }
}
