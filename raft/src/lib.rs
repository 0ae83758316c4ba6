//! Shoal's control plane: the Raft state machine and storage, the cluster model, failure
//! detection and the scheduler.
//!
//! Code map:
//! - pure cores: [`apply`] (the state machine), [`scheduler`] (placement), [`membership`]
//!   (which Raft membership change comes next; who succeeds a leader that steps down),
//!   [`drain`] (the next step of a draining node), [`failure_detector`] / [`soft_state`]
//!   (heartbeats), [`lease`] (node-side fencing), [`journal`] (the bounded window of recently
//!   applied commands a leader sends worker mirrors as deltas);
//! - storage: [`store`] (redb log store and state machine, checksummed), [`codec`],
//!   [`state_format`] (the versioned encoding of the cluster state);
//! - drivers: [`RaftNode`] (wraps `openraft::Raft`), [`network`] (the transport seam),
//!   [`testing`] (an in-memory transport for tests).

// openraft's own error types (StorageError, RaftError) are ~224 bytes; they are the trait
// signatures we implement, so boxing them locally would only add conversions.
#![allow(clippy::result_large_err)]
// The control plane needs no unsafe code (ARCHITECTURE.md invariant).
#![forbid(unsafe_code)]

pub mod apply;
pub mod clock;
pub mod codec;
pub mod command;
pub mod drain;
pub mod failure_detector;
pub mod journal;
pub mod lease;
pub mod membership;
pub mod model;
pub mod network;
mod raft_node;
pub mod scheduler;
pub mod soft_state;
pub mod state;
pub mod state_format;
pub mod store;
pub mod testing;
pub mod types;

pub use command::Action;
pub use command::Command;
pub use command::CommandResponse;
pub use command::Outcome;
pub use command::Refusal;
pub use model::NodeAddr;
pub use model::NodeId;
pub use network::RaftTransport;
pub use network::RpcHandle;
pub use network::TransportError;
pub use raft_node::HandOver;
pub use raft_node::HeartbeatAck;
pub use raft_node::HeartbeatError;
pub use raft_node::MembershipError;
pub use raft_node::RaftConfig;
pub use raft_node::RaftNode;
pub use raft_node::RaftStatus;
pub use raft_node::StartError;
pub use raft_node::StorageStatus;
pub use raft_node::WriteError;
pub use state::ClusterState;
