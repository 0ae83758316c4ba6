//! openraft's type configuration for Shoal.

use std::io::Cursor;

use crate::command::Command;
use crate::command::CommandResponse;
use crate::model::NodeAddr;

openraft::declare_raft_types!(
    /// Shoal's Raft types: commands in, command responses out, `u64` node ids, nodes addressed
    /// by their mesh RPC address, snapshots as in-memory bytes.
    pub TypeConfig:
        D = Command,
        R = CommandResponse,
        NodeId = u64,
        Node = NodeAddr,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A Raft log entry.
pub type Entry = openraft::Entry<TypeConfig>;
/// A log id.
pub type LogId = openraft::LogId<u64>;
/// A vote.
pub type Vote = openraft::Vote<u64>;
/// Membership as stored with the state machine.
pub type StoredMembership = openraft::StoredMembership<u64, NodeAddr>;
/// Snapshot metadata.
pub type SnapshotMeta = openraft::SnapshotMeta<u64, NodeAddr>;
/// A storage error as openraft wants it.
pub type StorageError = openraft::StorageError<u64>;
/// openraft's metrics for this node.
pub type RaftMetrics = openraft::RaftMetrics<u64, NodeAddr>;
