//! The seam between Raft and the network. `raft` opens no sockets: it encodes each RPC with the
//! codec and hands the bytes to a [`RaftTransport`] that the `node` crate implements over the
//! mesh (QUIC). On the receiving side the node hands the bytes to [`RpcHandle::handle`], which
//! decodes, calls openraft and encodes the reply.

use std::sync::Arc;
use std::time::Duration;

use openraft::error::InstallSnapshotError;
use openraft::error::NetworkError;
use openraft::error::RPCError;
use openraft::error::RaftError;
use openraft::error::RemoteError;
use openraft::error::Unreachable;
use openraft::network::Backoff;
use openraft::network::RPCOption;
use openraft::raft::AppendEntriesRequest;
use openraft::raft::AppendEntriesResponse;
use openraft::raft::InstallSnapshotRequest;
use openraft::raft::InstallSnapshotResponse;
use openraft::raft::VoteRequest;
use openraft::raft::VoteResponse;
use openraft::RaftNetwork;
use openraft::RaftNetworkFactory;
use serde::Deserialize;
use serde::Serialize;

use crate::codec;
use crate::model::NodeAddr;
use crate::model::NodeId;
use crate::types::TypeConfig;

/// Largest RPC frame we produce or accept: openraft sends snapshots in chunks of
/// `snapshot_max_chunk_size` (1 MiB, see [`crate::RaftConfig`]) and append batches of at most
/// `max_payload_entries`, so 64 MiB leaves ample room while bounding a hostile frame.
pub const RPC_FRAME_BYTES_MAX: usize = 64 * 1024 * 1024;

/// A Raft RPC on the wire.
#[derive(Serialize, Deserialize, Debug)]
pub enum RaftRpc {
    /// Log replication and heartbeats.
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    /// Election.
    Vote(VoteRequest<u64>),
    /// One chunk of a snapshot.
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    /// Sent by a leader that is stepping down to the voter it chose as its successor (Raft's
    /// `TimeoutNow`): start an election now. openraft 0.9 has no leadership transfer; see
    /// `RaftNode::hand_over_leadership`.
    ElectNow,
}

/// What kind of Raft message a [`RaftRpc`] is, for authorizing its sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RaftRpcKind {
    /// `AppendEntries` (replication and heartbeats) or a snapshot chunk: from a leader.
    Replication,
    /// A vote request: from a candidate.
    Vote,
    /// `ElectNow` (Raft's `TimeoutNow`): from the leader handing over.
    ElectNow,
}

impl RaftRpc {
    /// The node the message claims to come from (the leader or candidate its vote names);
    /// `None` for `ElectNow`, which names nobody.
    pub fn claimed_sender(&self) -> Option<NodeId> {
        match self {
            RaftRpc::AppendEntries(req) => req.vote.leader_id().voted_for(),
            RaftRpc::Vote(req) => req.vote.leader_id().voted_for(),
            RaftRpc::InstallSnapshot(req) => req.vote.leader_id().voted_for(),
            RaftRpc::ElectNow => None,
        }
    }

    /// The message's kind.
    pub fn kind(&self) -> RaftRpcKind {
        match self {
            RaftRpc::AppendEntries(_) | RaftRpc::InstallSnapshot(_) => RaftRpcKind::Replication,
            RaftRpc::Vote(_) => RaftRpcKind::Vote,
            RaftRpc::ElectNow => RaftRpcKind::ElectNow,
        }
    }
}

/// The reply to a [`RaftRpc`].
#[derive(Serialize, Deserialize, Debug)]
pub enum RaftRpcReply {
    /// Reply to `AppendEntries`.
    AppendEntries(Result<AppendEntriesResponse<u64>, RaftError<u64>>),
    /// Reply to `Vote`.
    Vote(Result<VoteResponse<u64>, RaftError<u64>>),
    /// Reply to `InstallSnapshot`.
    InstallSnapshot(Result<InstallSnapshotResponse<u64>, RaftError<u64, InstallSnapshotError>>),
    /// The request could not be decoded (or was too large).
    BadRequest(String),
    /// Reply to `ElectNow`: the election was started, or why not.
    ElectNow(Result<(), String>),
}

/// Why a transport could not deliver an RPC.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TransportError {
    /// No route or connection to the target; openraft backs off before retrying.
    #[error("node {target} unreachable: {detail}")]
    Unreachable {
        /// The target.
        target: NodeId,
        /// Why.
        detail: String,
    },
    /// The request was sent but the reply did not arrive in time or the stream broke.
    #[error("rpc to node {target} failed: {detail}")]
    Failed {
        /// The target.
        target: NodeId,
        /// Why.
        detail: String,
    },
}

/// What the `node` crate implements: send one encoded RPC to a node and return its encoded
/// reply. The bytes are opaque to the transport; the callee passes them to
/// [`RpcHandle::handle`]. Implementations must bound the reply size by
/// [`RPC_FRAME_BYTES_MAX`]; `raft` wraps each call in a timeout.
#[async_trait::async_trait]
pub trait RaftTransport: Send + Sync + 'static {
    /// Sends `request` to `target` at `target_addr` and returns the reply bytes.
    async fn send(
        &self,
        target: NodeId,
        target_addr: &NodeAddr,
        request: Vec<u8>,
    ) -> Result<Vec<u8>, TransportError>;
}

/// Serves incoming Raft RPCs for one node. Cheap to clone; stays valid when the node rebuilds
/// its openraft core after a storage failure (it always reaches the current core).
#[derive(Clone)]
pub struct RpcHandle {
    pub(crate) raft: Arc<crate::raft_node::RaftCell>,
}

impl RpcHandle {
    /// Decodes a request (bounded by [`RPC_FRAME_BYTES_MAX`]), so that the caller can
    /// authorize its sender before [`RpcHandle::handle_decoded`] hands it to Raft.
    pub fn decode(request: &[u8]) -> Result<RaftRpc, String> {
        if request.len() > RPC_FRAME_BYTES_MAX {
            return Err(format!("frame of {} bytes too large", request.len()));
        }
        codec::decode::<RaftRpc>(request).map_err(|e| e.to_string())
    }

    /// Hands a decoded request to Raft and encodes the reply.
    pub async fn handle_decoded(&self, rpc: RaftRpc) -> Vec<u8> {
        Self::encode_reply(&self.handle_rpc(rpc).await)
    }

    /// The encoding of `reply` (of a refusal too).
    pub fn encode_reply(reply: &RaftRpcReply) -> Vec<u8> {
        match codec::encode(reply) {
            Ok(bytes) => bytes,
            // Encoding our own reply cannot fail for these types; answer with the error text.
            Err(e) => codec::encode(&RaftRpcReply::BadRequest(e.to_string())).unwrap_or_default(),
        }
    }

    /// Decodes a request, hands it to Raft and encodes the reply. Never panics on bad input:
    /// undecodable bytes get a `BadRequest` reply.
    pub async fn handle(&self, request: &[u8]) -> Vec<u8> {
        let reply = if request.len() > RPC_FRAME_BYTES_MAX {
            RaftRpcReply::BadRequest(format!("frame of {} bytes too large", request.len()))
        } else {
            match codec::decode::<RaftRpc>(request) {
                Ok(rpc) => self.handle_rpc(rpc).await,
                Err(e) => RaftRpcReply::BadRequest(e.to_string()),
            }
        };
        match codec::encode(&reply) {
            Ok(bytes) => bytes,
            // Encoding our own reply cannot fail for these types; answer with the error text.
            Err(e) => codec::encode(&RaftRpcReply::BadRequest(e.to_string())).unwrap_or_default(),
        }
    }

    /// Handles a decoded request.
    pub async fn handle_rpc(&self, rpc: RaftRpc) -> RaftRpcReply {
        let raft = self.raft.get();
        match rpc {
            RaftRpc::AppendEntries(req) => {
                let reply = raft.append_entries(req).await;
                if matches!(&reply, Ok(response) if !matches!(response, AppendEntriesResponse::HigherVote(_)))
                {
                    self.raft
                        .leader_heard
                        .send_modify(|n| *n = n.wrapping_add(1));
                }
                RaftRpcReply::AppendEntries(reply)
            }
            RaftRpc::Vote(req) => RaftRpcReply::Vote(raft.vote(req).await),
            RaftRpc::InstallSnapshot(req) => {
                RaftRpcReply::InstallSnapshot(raft.install_snapshot(req).await)
            }
            RaftRpc::ElectNow => {
                RaftRpcReply::ElectNow(raft.trigger().elect().await.map_err(|e| e.to_string()))
            }
        }
    }
}

/// openraft's network factory over a [`RaftTransport`].
pub(crate) struct NetworkFactory {
    pub(crate) transport: Arc<dyn RaftTransport>,
    /// How long a leader waits before it tries a peer again after [`TransportError::Unreachable`]:
    /// one heartbeat interval, not openraft's default 500 ms, so that a peer restarted after a
    /// kill hears the leader well before its own election timer fires (see [`Connection::call`]).
    pub(crate) retry_after_unreachable: Duration,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeId, node: &NodeAddr) -> Connection {
        Connection {
            target,
            addr: node.clone(),
            transport: self.transport.clone(),
            retry_after_unreachable: self.retry_after_unreachable,
        }
    }
}

/// One peer, as openraft sees it.
pub(crate) struct Connection {
    target: NodeId,
    addr: NodeAddr,
    transport: Arc<dyn RaftTransport>,
    retry_after_unreachable: Duration,
}

type RpcErr<E = openraft::error::Infallible> = RPCError<u64, NodeAddr, RaftError<u64, E>>;

impl Connection {
    async fn call<E: std::error::Error>(
        &self,
        rpc: RaftRpc,
        ttl: Duration,
    ) -> Result<RaftRpcReply, RpcErr<E>> {
        let bytes = codec::encode(&rpc).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        // A reply that does not come within the ttl (one heartbeat interval for appends) is a
        // network error, NOT `Unreachable`: openraft stops sending to an unreachable peer for a
        // backoff, dropping its heartbeats meanwhile, so a follower whose fsync stalled for one
        // heartbeat interval, or a peer restarted right after a kill, would not hear the leader
        // for the whole backoff and start an election that deposes a healthy leader (the chaos
        // suite saw restarted nodes do exactly that, 300-400 ms after their restart).
        let sent = tokio::time::timeout(ttl, self.transport.send(self.target, &self.addr, bytes))
            .await
            .map_err(|_| {
                RPCError::Network(NetworkError::new(&TransportError::Failed {
                    target: self.target,
                    detail: format!("no reply within {} ms", ttl.as_millis()),
                }))
            })?;
        let reply_bytes = sent.map_err(|e| match e {
            TransportError::Unreachable { .. } => RPCError::Unreachable(Unreachable::new(&e)),
            TransportError::Failed { .. } => RPCError::Network(NetworkError::new(&e)),
        })?;
        if reply_bytes.len() > RPC_FRAME_BYTES_MAX {
            return Err(RPCError::Network(NetworkError::new(
                &TransportError::Failed {
                    target: self.target,
                    detail: "reply too large".to_string(),
                },
            )));
        }
        let reply: RaftRpcReply =
            codec::decode(&reply_bytes).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        if let RaftRpcReply::BadRequest(detail) = &reply {
            return Err(RPCError::Network(NetworkError::new(
                &TransportError::Failed {
                    target: self.target,
                    detail: format!("peer refused the request: {detail}"),
                },
            )));
        }
        Ok(reply)
    }

    fn unexpected<E: std::error::Error>(&self) -> RpcErr<E> {
        RPCError::Network(NetworkError::new(&TransportError::Failed {
            target: self.target,
            detail: "reply of the wrong kind".to_string(),
        }))
    }
}

impl RaftNetwork<TypeConfig> for Connection {
    fn backoff(&self) -> Backoff {
        Backoff::new(std::iter::repeat(self.retry_after_unreachable))
    }

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RpcErr> {
        match self
            .call(RaftRpc::AppendEntries(rpc), option.hard_ttl())
            .await?
        {
            RaftRpcReply::AppendEntries(reply) => {
                reply.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            _ => Err(self.unexpected()),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<u64>, RpcErr<InstallSnapshotError>> {
        match self
            .call(RaftRpc::InstallSnapshot(rpc), option.hard_ttl())
            .await?
        {
            RaftRpcReply::InstallSnapshot(reply) => {
                reply.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            _ => Err(self.unexpected()),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RpcErr> {
        match self.call(RaftRpc::Vote(rpc), option.hard_ttl()).await? {
            RaftRpcReply::Vote(reply) => {
                reply.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            _ => Err(self.unexpected()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A peer that takes every request and never answers (a killed node, or one whose disk
    /// stalled).
    struct SilentPeer;

    #[async_trait::async_trait]
    impl RaftTransport for SilentPeer {
        async fn send(
            &self,
            _target: NodeId,
            _target_addr: &NodeAddr,
            _request: Vec<u8>,
        ) -> Result<Vec<u8>, TransportError> {
            std::future::pending().await
        }
    }

    fn connection(transport: Arc<dyn RaftTransport>) -> Connection {
        Connection {
            target: 2,
            addr: NodeAddr {
                addr: "10.42.0.2:0".to_string(),
            },
            transport,
            retry_after_unreachable: Duration::from_millis(50),
        }
    }

    #[tokio::test]
    async fn a_reply_that_misses_its_ttl_is_a_network_error_so_openraft_keeps_sending_heartbeats() {
        let connection = connection(Arc::new(SilentPeer));
        let error = connection
            .call::<openraft::error::Infallible>(RaftRpc::ElectNow, Duration::from_millis(50))
            .await
            .expect_err("a silent peer cannot answer");
        // `Unreachable` would make openraft drop this peer's heartbeats for a whole backoff.
        assert!(
            matches!(error, RPCError::Network(_)),
            "expected a network error, got {error:?}"
        );
    }

    #[test]
    fn after_an_unreachable_peer_the_leader_retries_within_one_heartbeat_interval() {
        let connection = connection(Arc::new(SilentPeer));
        let waits: Vec<Duration> = connection.backoff().take(3).collect();
        assert_eq!(waits, vec![Duration::from_millis(50); 3]);
    }
}
