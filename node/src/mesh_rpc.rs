//! Node-to-node RPCs over the mesh: the seam that joins `raft` and `mesh` (DESIGN.md §7: the
//! Raft network adapter lives in `node`; `raft` opens no sockets, `mesh` reads no Raft state).
//!
//! Every request on the mesh's QUIC transport is one frame: a tag byte and a body.
//! - [`TAG_RAFT`]: an encoded Raft RPC, handed to [`shoal_raft::RpcHandle::handle`];
//! - [`TAG_WRITE`]: a [`Command`] forwarded by a follower to the leader, answered with a
//!   [`ForwardReply`].
//! - [`TAG_VIEW`]: a worker mirror's request to the leader ([`ViewRequest`]): the committed
//!   state of a node that holds no Raft log, as the commands after the mirror's applied index
//!   (from the state machine's journal) or whole, or the leader's live usage table.
//!
//! [`MeshRaftTransport`] is the client side for Raft; [`forward_write`] is the write path of
//! a node that does not lead (through its Raft node, or for a worker through
//! [`LeaderRoute`]); [`NodeRpcHandler`] serves them, and [`TAG_HEARTBEAT`] (a node's
//! heartbeat into the leader's soft state, see [`send_heartbeat`]). The agent
//! (`agent/cluster.rs`) runs its Raft node over this transport.

use std::net::Ipv4Addr;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use shoal_mesh::{PeerInfo, RpcHandler, StreamReceiver, StreamSender, Transport};
use shoal_raft::network::RaftTransport;
use shoal_raft::{
    Command, CommandResponse, NodeAddr, NodeId, RaftNode, TransportError, WriteError,
};

/// Frame tag of a Raft RPC.
pub const TAG_RAFT: u8 = 1;
/// Frame tag of a forwarded write.
pub const TAG_WRITE: u8 = 2;
/// Frame tag of a heartbeat (a node's id and its [`shoal_raft::soft_state::Heartbeat`]) sent
/// to the leader, answered with a [`HeartbeatReply`].
pub const TAG_HEARTBEAT: u8 = 3;
/// Frame tag of an application request (the agent's own node-to-node calls, e.g. reading a
/// workstation's log on the node that hosts it), served by the [`AppHandler`].
pub const TAG_APP: u8 = 4;
/// Frame tag of a worker mirror's request to the leader ([`ViewRequest`]): the committed state
/// for a node that holds no Raft log, or the leader's live usage table for run placement.
pub const TAG_VIEW: u8 = 5;
/// Frame tag of a query for the observed state of workstations ([`ObservedReply`]): a list of
/// workstation ids, answered by the leader from its soft state (the hosting nodes' heartbeats).
pub const TAG_OBSERVED: u8 = 6;
/// Most workstations one observed-state query asks about.
pub const OBSERVED_QUERY_WORKSTATIONS_MAX: usize = 4_096;
/// Largest encoded cluster state the leader sends to a worker mirror (a mesh frame is at most
/// 16 MiB; the state is bounded well below it: the audit log holds at most 50,000 entries).
pub const MIRROR_STATE_BYTES_MAX: usize = 15 * 1024 * 1024;
/// Most encoded command bytes in one delta answer to a worker mirror: a mirror further behind
/// gets a prefix and asks again (or the whole state, when the window no longer reaches back).
pub const MIRROR_DELTA_BYTES_MAX: usize = 4 * 1024 * 1024;
/// How many times a forwarded write follows a `NotLeader` answer before giving up (an
/// election moved the leader while the write was in flight).
pub const FORWARD_HOPS_MAX: usize = 3;

/// The leader's answer to a forwarded write.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ForwardReply {
    /// Committed and applied; the state machine's answer.
    Applied(CommandResponse),
    /// The receiver is not the leader; it names the leader's mesh RPC address if it knows it.
    NotLeader {
        /// The leader's id.
        leader_id: Option<NodeId>,
        /// The leader's Raft address (`mesh_ip:port`).
        leader_addr: Option<String>,
    },
    /// The write failed at the leader (timeout, shutdown); the text says why.
    Failed(String),
    /// The leader refused the write from this sender (`mesh_authz`): final, the text says
    /// why. (Appended last: earlier variants keep their encoding.)
    Refused(String),
}

/// The leader's answer to a heartbeat.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum HeartbeatReply {
    /// Recorded by the leader of `term`: the sender may renew its lease.
    Acked {
        /// The leader's term.
        term: u64,
        /// What the leader had applied when it acknowledged: a node whose lease was expired
        /// resumes its workstations only once it has applied this much (so that it sees any
        /// re-placement the leader committed meanwhile).
        applied_index: u64,
    },
    /// Not recorded; the text says why (not the leader, leadership unconfirmed, unknown node).
    Refused(String),
    /// The sender was removed from the cluster: final, it must stop its workstations and exit
    /// (see `agent::cluster`).
    Removed {
        /// The sender.
        node: NodeId,
    },
}

/// The reply to a heartbeat the leader did not record.
fn heartbeat_refused(error: shoal_raft::HeartbeatError) -> HeartbeatReply {
    match error {
        shoal_raft::HeartbeatError::Removed { node } => HeartbeatReply::Removed { node },
        other => HeartbeatReply::Refused(other.to_string()),
    }
}

/// Why a write could not be completed through forwarding.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ForwardError {
    /// No leader is known right now (an election is running): retry after a moment.
    #[error("no leader known right now")]
    NoLeader,
    /// The leader could not be reached over the mesh.
    #[error("leader unreachable: {0}")]
    Unreachable(String),
    /// The leader answered with a failure.
    #[error("write failed at the leader: {0}")]
    Failed(String),
    /// The leader refused this node's write: it may not make it (see `mesh_authz`).
    #[error("write refused by the leader: {0}")]
    Refused(String),
}

/// A request of a node that holds no Raft log (a worker mirror) to the leader.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum ViewRequest {
    /// "I have applied up to `have_applied`": the leader answers [`ViewReply::Current`] when
    /// that is its own applied index, else the whole committed state.
    Sync {
        /// The mirror's applied index.
        have_applied: u64,
    },
    /// The leader's live usage of every node (from heartbeats), for placing runs.
    Usage,
    /// "I have applied exactly up to `have_applied`": the leader answers
    /// [`ViewReply::Current`], the committed commands after it ([`ViewReply::Delta`]) while its
    /// window of recent commands reaches back that far, else the whole state.
    SyncDelta {
        /// The mirror's applied index; its state is exactly the leader's at that index.
        have_applied: u64,
    },
}

/// The live usage of one node, as the leader's soft state has it.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeUsage {
    /// The node.
    pub node: NodeId,
    /// CPU and memory used on its host, from its last heartbeat.
    pub used: shoal_raft::model::Resources,
}

/// The leader's answer to a [`ViewRequest`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum ViewReply {
    /// The receiver does not lead; it names the leader's mesh address if it knows it.
    NotLeader {
        /// The leader's mesh address.
        leader_mesh_addr: Option<Ipv4Addr>,
    },
    /// The mirror is current.
    Current(ViewHead),
    /// The committed state at `head.applied` (`ClusterState::encode`).
    Snapshot {
        /// Leader, term, applied index and voters.
        head: ViewHead,
        /// The encoded state.
        state: Vec<u8>,
    },
    /// The leader's live usage table.
    Usage(Vec<NodeUsage>),
    /// Not served; the text says why (unknown node, state too large, not started).
    Refused(String),
    /// The committed commands after `from`, in log order, that bring a mirror exactly at
    /// `from` to `head.applied` (blank and membership entries carry none).
    Delta {
        /// Leader, term, the applied index the commands lead to, voters.
        head: ViewHead,
        /// The applied index the commands follow (the mirror's `have_applied`).
        from: u64,
        /// `(log index, encoded Command)`, at most [`MIRROR_DELTA_BYTES_MAX`] bytes of them.
        commands: Vec<(u64, Vec<u8>)>,
    },
}

/// What a mirror learns with every answer: who leads, in which term, up to where.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct ViewHead {
    /// The leader (the node that answered).
    pub leader: NodeId,
    /// The leader's mesh address.
    pub leader_mesh_addr: Option<Ipv4Addr>,
    /// Its term.
    pub term: u64,
    /// Its applied index.
    pub applied: u64,
    /// The Raft voters.
    pub voters: Vec<NodeId>,
}

/// How a node reaches the leader: through its own Raft node when it is a Raft member, else
/// through the leader's mesh address as its mirror of the state knows it.
pub trait LeaderRoute: Send + Sync {
    /// The local Raft node, when this node is a Raft member.
    fn raft_node(&self) -> Option<&RaftNode>;
    /// This node's id.
    fn node_id(&self) -> NodeId;
    /// The leader's mesh address, for a node without a Raft node.
    fn leader_mesh_addr(&self) -> Option<Ipv4Addr>;
}

impl LeaderRoute for RaftNode {
    fn raft_node(&self) -> Option<&RaftNode> {
        Some(self)
    }
    fn node_id(&self) -> NodeId {
        self.id()
    }
    fn leader_mesh_addr(&self) -> Option<Ipv4Addr> {
        let leader = self.status().leader?;
        self.read(|state| state.nodes.get(&leader).map(|node| node.mesh_addr))
    }
}

/// Sends a [`ViewRequest`] to the node at `ip` and decodes its answer.
pub async fn view_request(
    transport: &Transport,
    ip: Ipv4Addr,
    request: &ViewRequest,
) -> Result<ViewReply, ForwardError> {
    let body = shoal_raft::codec::encode(request)
        .map_err(|err| ForwardError::Failed(format!("encoding: {err}")))?;
    let reply = transport
        .request(ip, frame(TAG_VIEW, &body))
        .await
        .map_err(|err| ForwardError::Unreachable(err.to_string()))?;
    shoal_raft::codec::decode(&reply)
        .map_err(|err| ForwardError::Failed(format!("undecodable view reply: {err}")))
}

fn frame(tag: u8, body: &[u8]) -> Bytes {
    let mut bytes = Vec::with_capacity(body.len() + 1);
    bytes.push(tag);
    bytes.extend_from_slice(body);
    Bytes::from(bytes)
}

/// Parses a Raft address `a.b.c.d:port` into the mesh address to send to.
pub fn mesh_ip_of(addr: &NodeAddr) -> Option<Ipv4Addr> {
    let text = addr.addr.as_str();
    let host = text.rsplit_once(':').map_or(text, |(host, _)| host);
    host.parse().ok()
}

/// Raft's transport over the mesh: one QUIC request per RPC.
#[derive(Clone)]
pub struct MeshRaftTransport {
    transport: Transport,
}

impl MeshRaftTransport {
    /// Sends Raft RPCs through `transport`.
    pub fn new(transport: Transport) -> MeshRaftTransport {
        MeshRaftTransport { transport }
    }
}

#[async_trait::async_trait]
impl RaftTransport for MeshRaftTransport {
    async fn send(
        &self,
        target: NodeId,
        target_addr: &NodeAddr,
        request: Vec<u8>,
    ) -> Result<Vec<u8>, TransportError> {
        let Some(ip) = mesh_ip_of(target_addr) else {
            return Err(TransportError::Unreachable {
                target,
                detail: format!("`{}` is not a mesh address", target_addr.addr),
            });
        };
        self.transport
            .request(ip, frame(TAG_RAFT, &request))
            .await
            .map(|reply| reply.to_vec())
            .map_err(|err| TransportError::Failed {
                target,
                detail: err.to_string(),
            })
    }
}

/// Serves the node's side of the mesh RPCs. The Raft node is set once it has started (the
/// mesh must be up first, since Raft's transport runs over it).
#[derive(Default)]
pub struct NodeRpcHandler {
    raft: OnceLock<RaftNode>,
    app: OnceLock<Arc<dyn AppHandler>>,
    /// The last state encoded for worker mirrors, by applied index: every mirror behind by
    /// the same entries shares one encoding.
    view_cache: parking_lot::Mutex<Option<(u64, Arc<Vec<u8>>)>>,
    /// Where refused messages are reported (the agent counts and audits them); bounded, and
    /// a full queue drops the report, never the handler's progress.
    refusals: OnceLock<tokio::sync::mpsc::Sender<RefusedMessage>>,
}

/// A mesh message refused by [`crate::mesh_authz`], as reported to the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedMessage {
    /// What kind of message it was (`raft`, `write`), for metrics.
    pub kind: &'static str,
    /// The sender's mesh address.
    pub from: Ipv4Addr,
    /// The sender's node id, if the applied state knows its address.
    pub node: Option<NodeId>,
    /// Why it was refused.
    pub reason: String,
}

/// The agent's side of [`TAG_APP`] requests: bytes in, bytes out (the agent defines the
/// encoding). Only mesh members reach it.
#[async_trait::async_trait]
pub trait AppHandler: Send + Sync + 'static {
    /// Answers one request from `from`.
    async fn handle(&self, from: PeerInfo, body: &[u8]) -> Bytes;

    /// Serves one long-lived stream opened by `from` with `open` (e.g. following a log).
    async fn handle_stream(&self, from: PeerInfo, open: &[u8], sender: StreamSender);
}

/// Opens an application stream to the node at mesh address `ip`.
pub async fn app_stream(
    transport: &Transport,
    ip: Ipv4Addr,
    open: &[u8],
) -> Result<(StreamSender, StreamReceiver), shoal_mesh::TransportError> {
    transport.open_stream(ip, frame(TAG_APP, open)).await
}

/// Sends an application request to the node at mesh address `ip`.
pub async fn app_request(
    transport: &Transport,
    ip: Ipv4Addr,
    body: &[u8],
) -> Result<Bytes, shoal_mesh::TransportError> {
    transport.request(ip, frame(TAG_APP, body)).await
}

impl NodeRpcHandler {
    /// A handler that answers "not ready" until [`NodeRpcHandler::set_raft`].
    pub fn new() -> Arc<NodeRpcHandler> {
        Arc::new(NodeRpcHandler::default())
    }

    /// Attaches the started Raft node.
    pub fn set_raft(&self, raft: RaftNode) {
        let _ = self.raft.set(raft);
    }

    /// Attaches the agent's application handler.
    pub fn set_app(&self, app: Arc<dyn AppHandler>) {
        let _ = self.app.set(app);
    }

    /// Attaches the queue refused messages are reported to.
    pub fn set_refusals(&self, refusals: tokio::sync::mpsc::Sender<RefusedMessage>) {
        let _ = self.refusals.set(refusals);
    }

    /// The committed facts about the node at `from`'s mesh address (the mesh binds each mesh
    /// address to one WireGuard key), if the applied state knows it.
    fn sender_view(raft: &RaftNode, from: &PeerInfo) -> Option<crate::mesh_authz::SenderView> {
        raft.read(|state| {
            state
                .nodes
                .values()
                .find(|node| node.mesh_addr == from.mesh_addr)
                .map(|node| crate::mesh_authz::SenderView {
                    id: node.id,
                    server: node.roles.server,
                    state: node.state,
                })
        })
    }

    /// Logs and reports a refused message.
    fn refused(
        &self,
        kind: &'static str,
        from: &PeerInfo,
        sender: Option<&crate::mesh_authz::SenderView>,
        refusal: &crate::mesh_authz::MeshRefusal,
    ) {
        tracing::warn!(kind, from = %from.mesh_addr, node = ?sender.map(|s| s.id), reason = %refusal,
            "refused a mesh message");
        if let Some(refusals) = self.refusals.get() {
            let _ = refusals.try_send(RefusedMessage {
                kind,
                from: from.mesh_addr,
                node: sender.map(|s| s.id),
                reason: refusal.to_string(),
            });
        }
    }

    /// Serves a Raft RPC after checking that its sender may send it ([`crate::mesh_authz`]).
    async fn handle_raft(&self, raft: &RaftNode, from: &PeerInfo, body: &[u8]) -> Vec<u8> {
        use shoal_raft::network::RaftRpcReply;
        let rpc = match shoal_raft::RpcHandle::decode(body) {
            Ok(rpc) => rpc,
            Err(why) => return shoal_raft::RpcHandle::encode_reply(&RaftRpcReply::BadRequest(why)),
        };
        let sender = Self::sender_view(raft, from);
        // Only ElectNow needs the voters; replication (every heartbeat) does not pay for them.
        let voters = if rpc.kind() == shoal_raft::network::RaftRpcKind::ElectNow {
            raft.status().voters
        } else {
            std::collections::BTreeSet::new()
        };
        if let Err(refusal) = crate::mesh_authz::authorize_raft(
            sender.as_ref(),
            rpc.kind(),
            rpc.claimed_sender(),
            &voters,
        ) {
            self.refused("raft", from, sender.as_ref(), &refusal);
            return shoal_raft::RpcHandle::encode_reply(&RaftRpcReply::BadRequest(format!(
                "refused: {refusal}"
            )));
        }
        raft.rpc_handle().handle_decoded(rpc).await
    }

    async fn handle_write(&self, from: &PeerInfo, body: &[u8]) -> ForwardReply {
        let Some(raft) = self.raft.get() else {
            return ForwardReply::Failed("raft not started yet".to_string());
        };
        let ForwardRequest {
            mut command,
            credential,
        } = match shoal_raft::codec::decode(body) {
            Ok(request) => request,
            Err(err) => return ForwardReply::Failed(format!("undecodable command: {err}")),
        };
        let sender = Self::sender_view(raft, from);
        let placed_on = |ws: shoal_raft::model::WorkstationId| {
            raft.read(|state| state.workstations.get(&ws).and_then(|placed| placed.node))
        };
        if let Err(refusal) =
            crate::mesh_authz::authorize_write(sender.as_ref(), &command.action, placed_on)
        {
            self.refused("write", from, sender.as_ref(), &refusal);
            return ForwardReply::Refused(refusal.to_string());
        }
        // A write made for an API caller: the leader authenticates the caller's key itself and
        // names the key in the audit log, whatever the forwarding node wrote there.
        let checked = raft.read(|state| {
            let requirement =
                crate::mesh_authz::caller_requirement(sender.as_ref(), &command.action, |ws| {
                    state
                        .workstations
                        .get(&ws)
                        .map(|placed| (placed.tenant.clone(), placed.node))
                });
            let key = credential.as_deref().and_then(|credential| {
                state
                    .api_key_by_hash(&crate::mesh_authz::key_hash(credential))
                    .map(|key| crate::mesh_authz::KeyView {
                        prefix: key.prefix.clone(),
                        tenant: key.tenant.clone(),
                        admin: key.admin,
                    })
            });
            crate::mesh_authz::authorize_caller(&requirement, key.as_ref())
        });
        match checked {
            Ok(Some(prefix)) => command.actor = prefix,
            Ok(None) => {}
            Err(refusal) => {
                self.refused("write", from, sender.as_ref(), &refusal);
                return ForwardReply::Refused(refusal.to_string());
            }
        }
        match raft.write(command).await {
            Ok(response) => ForwardReply::Applied(response),
            Err(WriteError::ForwardToLeader {
                leader_id,
                leader_node,
            }) => ForwardReply::NotLeader {
                leader_id,
                leader_addr: leader_node.map(|node| node.addr),
            },
            Err(err) => ForwardReply::Failed(err.to_string()),
        }
    }
}

impl NodeRpcHandler {
    /// Serves a worker mirror (see [`ViewRequest`]); only the leader answers with state.
    fn handle_view(&self, from: &PeerInfo, body: &[u8]) -> ViewReply {
        let Some(raft) = self.raft.get() else {
            return ViewReply::Refused("this node holds no Raft state".to_string());
        };
        let request: ViewRequest = match shoal_raft::codec::decode(body) {
            Ok(request) => request,
            Err(err) => return ViewReply::Refused(format!("undecodable: {err}")),
        };
        let status = raft.status();
        let mesh_addr_of =
            |id: NodeId| raft.read(|state| state.nodes.get(&id).map(|node| node.mesh_addr));
        if !status.is_leader {
            return ViewReply::NotLeader {
                leader_mesh_addr: status.leader.and_then(mesh_addr_of),
            };
        }
        // Only registered nodes get the state (it holds key and token hashes).
        let known = raft.read(|state| {
            state.nodes.values().any(|node| {
                node.mesh_addr == from.mesh_addr && node.state != shoal_raft::model::NodeState::Left
            })
        });
        if !known {
            return ViewReply::Refused(format!("{} is not a node", from.mesh_addr));
        }
        match request {
            ViewRequest::Usage => {
                let mut usage: Vec<NodeUsage> = raft.with_soft_state(|soft| {
                    soft.iter()
                        .filter_map(|(node, live)| {
                            Some(NodeUsage {
                                node: *node,
                                used: live.last.as_ref()?.used,
                            })
                        })
                        .collect()
                });
                usage.sort_by_key(|entry| entry.node);
                ViewReply::Usage(usage)
            }
            ViewRequest::Sync { have_applied } => {
                self.view_sync(raft, &status, have_applied, false)
            }
            ViewRequest::SyncDelta { have_applied } => {
                self.view_sync(raft, &status, have_applied, true)
            }
        }
    }

    /// Answers a mirror at `have_applied`: current, the commands after it (`deltas`, while the
    /// state's journal reaches back), or the whole state. The applied index always comes from
    /// the same read of the state as the commands or the encoding, so that a mirror's state is
    /// exactly the leader's at the index it is told (a mirror that applies commands on top of
    /// it would otherwise diverge).
    fn view_sync(
        &self,
        raft: &RaftNode,
        status: &shoal_raft::RaftStatus,
        have_applied: u64,
        deltas: bool,
    ) -> ViewReply {
        let head = |applied: u64| ViewHead {
            leader: status.id,
            leader_mesh_addr: raft
                .read(|state| state.nodes.get(&status.id).map(|node| node.mesh_addr)),
            term: status.term,
            applied,
            voters: status.voters.iter().copied().collect(),
        };
        let (applied, slice) = raft.read(|state| {
            let journal = state.journal();
            let slice = deltas
                .then(|| journal.after(have_applied, MIRROR_DELTA_BYTES_MAX))
                .flatten();
            (journal.applied_index(), slice)
        });
        let Some(applied) = applied else {
            // Only right after a start or a snapshot install, before the next entry applies
            // (a new leader applies a blank entry at once): the mirror asks again.
            return ViewReply::Refused("the leader's applied index is not known yet".to_string());
        };
        // A new leader may not have applied all a mirror has: the mirror keeps its (newer,
        // committed) state.
        if have_applied >= applied {
            return ViewReply::Current(head(applied));
        }
        if let Some(slice) = slice {
            return ViewReply::Delta {
                head: head(slice.to_index),
                from: have_applied,
                commands: slice
                    .commands
                    .into_iter()
                    .map(|(index, command)| (index, command.to_vec()))
                    .collect(),
            };
        }
        let cached = self
            .view_cache
            .lock()
            .as_ref()
            .filter(|(index, _)| *index == applied)
            .map(|(_, bytes)| Arc::clone(bytes));
        let (applied, bytes) = match cached {
            Some(bytes) => (applied, bytes),
            None => {
                let encoded = raft.read(|state| {
                    state
                        .journal()
                        .applied_index()
                        .map(|index| (index, state.encode()))
                });
                match encoded {
                    Some((index, Ok(bytes))) => {
                        let bytes = Arc::new(bytes);
                        *self.view_cache.lock() = Some((index, Arc::clone(&bytes)));
                        (index, bytes)
                    }
                    Some((_, Err(err))) => return ViewReply::Refused(format!("encoding: {err}")),
                    None => {
                        return ViewReply::Refused(
                            "the leader's applied index is not known yet".to_string(),
                        )
                    }
                }
            }
        };
        if bytes.len() > MIRROR_STATE_BYTES_MAX {
            return ViewReply::Refused(format!(
                "the state is {} bytes, more than a mirror takes ({MIRROR_STATE_BYTES_MAX})",
                bytes.len()
            ));
        }
        ViewReply::Snapshot {
            head: head(applied),
            state: bytes.as_ref().clone(),
        }
    }
}

impl NodeRpcHandler {
    fn handle_heartbeat(&self, from: &PeerInfo, body: &[u8]) -> HeartbeatReply {
        let Some(raft) = self.raft.get() else {
            return HeartbeatReply::Refused("raft not started yet".to_string());
        };
        let (node, heartbeat): (NodeId, shoal_raft::soft_state::Heartbeat) =
            match shoal_raft::codec::decode(body) {
                Ok(decoded) => decoded,
                Err(err) => return HeartbeatReply::Refused(format!("undecodable: {err}")),
            };
        // A node speaks only for itself: its id must own the mesh address it sends from.
        let owns = raft.read(|state| {
            state
                .nodes
                .get(&node)
                .is_some_and(|record| record.mesh_addr == from.mesh_addr)
        });
        if !owns {
            return HeartbeatReply::Refused(format!(
                "node {node} is not at mesh address {}",
                from.mesh_addr
            ));
        }
        match raft.heartbeat(node, heartbeat) {
            Ok(ack) => acked(raft, ack),
            Err(err) => heartbeat_refused(err),
        }
    }
}

/// The answer to an acknowledged heartbeat: the term and what the leader had applied.
fn acked(raft: &RaftNode, ack: shoal_raft::HeartbeatAck) -> HeartbeatReply {
    HeartbeatReply::Acked {
        term: ack.term,
        applied_index: raft.status().last_applied_index.unwrap_or(0),
    }
}

/// The leader's answer to an observed-state query ([`TAG_OBSERVED`]).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum ObservedReply {
    /// What each node last reported about the workstations asked for, with the reporting
    /// node (see [`shoal_raft::soft_state::SoftState::observed`]).
    Observed(Vec<(NodeId, shoal_raft::soft_state::WorkstationUsage)>),
    /// Not answered; the text says why (not the leader, not a node, too many ids).
    Refused(String),
}

impl NodeRpcHandler {
    /// Serves an observed-state query from a node of the cluster; only the leader has the
    /// soft state.
    fn handle_observed(&self, from: &PeerInfo, body: &[u8]) -> ObservedReply {
        let Some(raft) = self.raft.get() else {
            return ObservedReply::Refused("this node holds no Raft state".to_string());
        };
        if !raft.status().is_leader {
            return ObservedReply::Refused("not the leader".to_string());
        }
        let known = raft.read(|state| {
            state
                .nodes
                .values()
                .any(|node| node.mesh_addr == from.mesh_addr)
        });
        if !known {
            return ObservedReply::Refused(format!("{} is not a node", from.mesh_addr));
        }
        let wanted: Vec<shoal_raft::model::WorkstationId> = match shoal_raft::codec::decode(body) {
            Ok(wanted) => wanted,
            Err(err) => return ObservedReply::Refused(format!("undecodable: {err}")),
        };
        if wanted.len() > OBSERVED_QUERY_WORKSTATIONS_MAX {
            return ObservedReply::Refused(format!(
                "at most {OBSERVED_QUERY_WORKSTATIONS_MAX} workstations per query"
            ));
        }
        ObservedReply::Observed(raft.with_soft_state(|soft| soft.observed(&wanted)))
    }
}

/// Asks the leader's soft state what the nodes last reported about `workstations` (read
/// locally when this node leads).
pub async fn query_observed<R: LeaderRoute + ?Sized>(
    route: &R,
    transport: &Transport,
    workstations: &[shoal_raft::model::WorkstationId],
) -> Result<Vec<(NodeId, shoal_raft::soft_state::WorkstationUsage)>, String> {
    if let Some(raft) = route.raft_node() {
        if raft.status().is_leader {
            return Ok(raft.with_soft_state(|soft| soft.observed(workstations)));
        }
    }
    let ip = route
        .leader_mesh_addr()
        .ok_or_else(|| "no leader known".to_string())?;
    let body = shoal_raft::codec::encode(workstations).map_err(|err| format!("encoding: {err}"))?;
    let reply = transport
        .request(ip, frame(TAG_OBSERVED, &body))
        .await
        .map_err(|err| format!("leader unreachable: {err}"))?;
    match shoal_raft::codec::decode::<ObservedReply>(&reply) {
        Ok(ObservedReply::Observed(found)) => Ok(found),
        Ok(ObservedReply::Refused(why)) => Err(why),
        Err(err) => Err(format!("undecodable reply: {err}")),
    }
}

/// Sends this node's heartbeat to the leader over the mesh (or records it directly when this
/// node leads).
pub async fn send_heartbeat<R: LeaderRoute + ?Sized>(
    route: &R,
    transport: &Transport,
    heartbeat: shoal_raft::soft_state::Heartbeat,
) -> HeartbeatReply {
    let (id, ip) = match route.raft_node() {
        Some(raft) => {
            let status = raft.status();
            let Some(leader) = status.leader else {
                return HeartbeatReply::Refused("no leader known".to_string());
            };
            if leader == status.id {
                return match raft.heartbeat(status.id, heartbeat) {
                    Ok(ack) => acked(raft, ack),
                    Err(err) => heartbeat_refused(err),
                };
            }
            let Some(ip) = raft.read(|state| state.nodes.get(&leader).map(|node| node.mesh_addr))
            else {
                return HeartbeatReply::Refused(format!("leader {leader} not in the node list"));
            };
            (status.id, ip)
        }
        // A worker that is not a Raft member: the leader its mirror last heard from.
        None => match route.leader_mesh_addr() {
            Some(ip) => (route.node_id(), ip),
            None => return HeartbeatReply::Refused("no leader known".to_string()),
        },
    };
    let body = match shoal_raft::codec::encode(&(id, heartbeat)) {
        Ok(body) => body,
        Err(err) => return HeartbeatReply::Refused(format!("encoding: {err}")),
    };
    match transport.request(ip, frame(TAG_HEARTBEAT, &body)).await {
        Ok(reply) => shoal_raft::codec::decode(&reply)
            .unwrap_or_else(|err| HeartbeatReply::Refused(format!("undecodable reply: {err}"))),
        Err(err) => HeartbeatReply::Refused(format!("leader unreachable: {err}")),
    }
}

#[async_trait::async_trait]
impl RpcHandler for NodeRpcHandler {
    async fn handle(&self, from: PeerInfo, request: Bytes) -> Bytes {
        let Some((&tag, body)) = request.split_first() else {
            return Bytes::new();
        };
        match tag {
            TAG_RAFT => match self.raft.get() {
                Some(raft) => Bytes::from(self.handle_raft(raft, &from, body).await),
                // Not started: an empty answer fails to decode at the caller, which openraft
                // treats as a failed RPC and retries.
                None => Bytes::new(),
            },
            TAG_WRITE => {
                let reply = self.handle_write(&from, body).await;
                Bytes::from(shoal_raft::codec::encode(&reply).unwrap_or_default())
            }
            TAG_HEARTBEAT => {
                let reply = self.handle_heartbeat(&from, body);
                Bytes::from(shoal_raft::codec::encode(&reply).unwrap_or_default())
            }
            TAG_OBSERVED => {
                let reply = self.handle_observed(&from, body);
                Bytes::from(shoal_raft::codec::encode(&reply).unwrap_or_default())
            }
            TAG_VIEW => {
                let reply = self.handle_view(&from, body);
                Bytes::from(shoal_raft::codec::encode(&reply).unwrap_or_default())
            }
            TAG_APP => match self.app.get() {
                Some(app) => app.handle(from, body).await,
                None => Bytes::new(),
            },
            other => {
                tracing::debug!(from = %from.mesh_addr, tag = other, "unknown mesh RPC tag");
                Bytes::new()
            }
        }
    }

    async fn handle_stream(
        &self,
        from: PeerInfo,
        open: Bytes,
        sender: StreamSender,
        _receiver: StreamReceiver,
    ) {
        if let (Some((&TAG_APP, body)), Some(app)) = (open.split_first(), self.app.get()) {
            app.handle_stream(from, body, sender).await;
        }
    }
}

/// A write forwarded to the leader ([`TAG_WRITE`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ForwardRequest {
    /// What to propose.
    pub command: Command,
    /// The API key of the caller the write is made for, if it is made for one: the leader
    /// authenticates it against the committed keys and authorizes the write for that key
    /// ([`crate::mesh_authz::caller_requirement`]); a node's own writes carry none.
    pub credential: Option<String>,
}

/// Proposes `command`, made by this node itself, through the local Raft node, following the
/// leader over the mesh when this node does not lead.
pub async fn forward_write<R: LeaderRoute + ?Sized>(
    route: &R,
    transport: &Transport,
    command: Command,
) -> Result<CommandResponse, ForwardError> {
    forward_write_for(route, transport, command, None).await
}

/// [`forward_write`] for a write made for an API caller whose key is `credential`.
pub async fn forward_write_for<R: LeaderRoute + ?Sized>(
    route: &R,
    transport: &Transport,
    command: Command,
    credential: Option<&str>,
) -> Result<CommandResponse, ForwardError> {
    let (mut leader_addr, mut leader_known) = match route.raft_node() {
        Some(raft) => match raft.write(command.clone()).await {
            Ok(response) => return Ok(response),
            Err(WriteError::ForwardToLeader {
                leader_id,
                leader_node,
            }) => (leader_node.map(|node| node.addr), leader_id.is_some()),
            Err(err) => return Err(ForwardError::Failed(err.to_string())),
        },
        // A worker mirror: straight to the leader it knows (a server that no longer leads
        // answers `NotLeader` with the new leader, followed below).
        None => {
            let ip = route.leader_mesh_addr();
            (ip.map(|ip| ip.to_string()), ip.is_some())
        }
    };
    let request = ForwardRequest {
        command,
        credential: credential.map(str::to_string),
    };
    let body = shoal_raft::codec::encode(&request)
        .map_err(|err| ForwardError::Failed(format!("encoding the command: {err}")))?;
    for _ in 0..FORWARD_HOPS_MAX {
        let Some(addr) = leader_addr.take() else {
            return Err(if leader_known {
                ForwardError::Unreachable("the leader's address is unknown".to_string())
            } else {
                ForwardError::NoLeader
            });
        };
        let Some(ip) = mesh_ip_of(&NodeAddr::new(addr.clone())) else {
            return Err(ForwardError::Unreachable(format!(
                "bad leader address `{addr}`"
            )));
        };
        let reply = transport
            .request(ip, frame(TAG_WRITE, &body))
            .await
            .map_err(|err| ForwardError::Unreachable(err.to_string()))?;
        match shoal_raft::codec::decode::<ForwardReply>(&reply) {
            Ok(ForwardReply::Applied(response)) => return Ok(response),
            Ok(ForwardReply::NotLeader {
                leader_id,
                leader_addr: next,
            }) => {
                leader_known = leader_id.is_some();
                leader_addr = next;
            }
            Ok(ForwardReply::Failed(reason)) => return Err(ForwardError::Failed(reason)),
            Ok(ForwardReply::Refused(reason)) => return Err(ForwardError::Refused(reason)),
            Err(err) => return Err(ForwardError::Failed(format!("undecodable reply: {err}"))),
        }
    }
    Err(ForwardError::NoLeader)
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::path::Path;
    use std::time::Duration;

    use shoal_mesh::{Mesh, MeshConfig, PeerSpec, DEFAULT_QUIC_PORT};
    use shoal_raft::command::{sha256_hex, Admission, NodeRegistration};
    use shoal_raft::model::{ClusterSettings, Resources, Roles};
    use shoal_raft::{Action, Outcome, RaftConfig};

    use super::*;

    fn registration(mesh: &Mesh, admission: Admission) -> NodeRegistration {
        NodeRegistration {
            admission,
            wg_public_key: mesh.public_key().to_base64(),
            endpoint: mesh.local_udp_addr().to_string(),
            rpc_port: DEFAULT_QUIC_PORT,
            api_addr: None,
            roles: Roles::SERVER_WORKER,
            capacity: Resources::new(2_000, 4 << 30),
            reserve: Resources::new(0, 0),
        }
    }

    async fn start_node(
        dir: &Path,
        id: NodeId,
        mesh_addr: Ipv4Addr,
    ) -> anyhow::Result<(Mesh, RaftNode, Arc<NodeRpcHandler>)> {
        let handler = NodeRpcHandler::new();
        let config = MeshConfig::new(
            dir.join("mesh"),
            SocketAddr::from(([127, 0, 0, 1], 0)),
            mesh_addr,
        );
        let mesh = Mesh::start(config, handler.clone()).await?;
        let mut raft_config = RaftConfig::new(id);
        raft_config.failure_detection = false;
        raft_config.auto_membership = false;
        let raft = RaftNode::start(
            raft_config,
            &dir.join("raft"),
            Arc::new(MeshRaftTransport::new(mesh.transport())),
            Arc::new(shoal_raft::clock::SystemClock::default()),
        )
        .await?;
        handler.set_raft(raft.clone());
        Ok((mesh, raft, handler))
    }

    fn spec(mesh: &Mesh) -> PeerSpec {
        PeerSpec {
            public_key: mesh.public_key(),
            endpoint: Some(mesh.local_udp_addr()),
            mesh_addr: mesh.mesh_addr(),
        }
    }

    fn rpc_addr(mesh: &Mesh) -> NodeAddr {
        NodeAddr::new(format!("{}:{DEFAULT_QUIC_PORT}", mesh.mesh_addr()))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn raft_replicates_over_the_mesh_and_a_follower_forwards_writes_to_the_leader(
    ) -> anyhow::Result<()> {
        let dirs = [tempfile::tempdir()?, tempfile::tempdir()?];
        let settings = ClusterSettings::default();

        tracing::info!("--- node 1 bootstraps over its own mesh");
        let first_addr = Ipv4Addr::new(10, 42, 0, 1);
        let (mesh1, raft1, _) = start_node(dirs[0].path(), 1, first_addr).await?;
        raft1
            .bootstrap(
                rpc_addr(&mesh1),
                "c-test",
                settings,
                registration(&mesh1, Admission::Bootstrap),
            )
            .await?;
        let assigned = raft1.read(|state| state.nodes.get(&1).map(|node| node.mesh_addr));
        assert_eq!(
            assigned,
            Some(first_addr),
            "node 1 gets the first overlay address"
        );

        tracing::info!("--- node 2 is registered with a join token and joins over the mesh");
        let secret = "join-secret";
        let created = raft1
            .write(Command::new(
                1,
                "test",
                Action::CreateToken {
                    secret_sha256: sha256_hex(secret),
                    prefix: "shoal1.test".to_string(),
                    roles: Roles::SERVER_WORKER,
                    ttl_ms: 60_000,
                    uses_max: 1,
                },
            ))
            .await?;
        assert!(matches!(created, Ok(Outcome::TokenCreated { .. })));
        // Node 2's mesh must exist before its registration (its public key is its identity),
        // so it starts on the address the next registration will get.
        let second_addr = Ipv4Addr::new(10, 42, 0, 2);
        let (mesh2, raft2, _) = start_node(dirs[1].path(), 2, second_addr).await?;
        let registered = raft1
            .write(Command::new(
                2,
                "test",
                Action::RegisterNode(registration(
                    &mesh2,
                    Admission::Token {
                        secret_sha256: sha256_hex(secret),
                    },
                )),
            ))
            .await?;
        let Ok(Outcome::NodeRegistered {
            node_id, mesh_addr, ..
        }) = registered
        else {
            anyhow::bail!("registration refused: {registered:?}");
        };
        assert_eq!((node_id, mesh_addr), (2, second_addr));
        mesh1.set_peers(&[spec(&mesh2)])?;
        mesh2.set_peers(&[spec(&mesh1)])?;
        raft1.add_learner(2, rpc_addr(&mesh2)).await?;
        raft1.promote(2).await?;

        tracing::info!(
            "--- a write proposed at the follower for an admin is forwarded and applied on both"
        );
        let admin_key = "shoal_test_admin_key";
        raft1
            .write(Command::new(
                3,
                "test",
                Action::CreateApiKey {
                    secret_sha256: sha256_hex(admin_key),
                    prefix: "shoal_test_a".to_string(),
                    tenant: "admin".to_string(),
                    admin: true,
                },
            ))
            .await??;
        let response = tokio::time::timeout(
            Duration::from_secs(20),
            forward_write_for(
                &raft2,
                &mesh2.transport(),
                Command::new(
                    3,
                    "test",
                    Action::CreateTenant {
                        tenant: "forwarded".to_string(),
                    },
                ),
                Some(admin_key),
            ),
        )
        .await??;
        assert!(response.is_ok(), "{response:?}");
        let applied = raft1.status().last_applied_index.unwrap_or(0);
        raft2.wait_applied(applied, Duration::from_secs(10)).await?;
        for raft in [&raft1, &raft2] {
            assert!(raft.read(|state| state.tenants.contains_key("forwarded")));
        }
        assert_eq!(raft2.status().leader, Some(1));

        raft2.shutdown().await?;
        raft1.shutdown().await?;
        mesh2.shutdown().await;
        mesh1.shutdown().await;
        Ok(())
    }

    /// A node admitted with a worker token is a mesh peer, so it can send any frame: it must
    /// not vote, trigger elections, speak for another node or forward a leader-only write.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_worker_identity_cannot_vote_elect_speak_for_another_node_or_write_as_the_leader(
    ) -> anyhow::Result<()> {
        use shoal_raft::network::{RaftRpc, RaftRpcReply};
        let dirs = [tempfile::tempdir()?, tempfile::tempdir()?];

        tracing::info!("--- node 1 bootstraps; node 2 is registered with a worker token");
        let (mesh1, raft1, handler1) =
            start_node(dirs[0].path(), 1, Ipv4Addr::new(10, 42, 0, 1)).await?;
        raft1
            .bootstrap(
                rpc_addr(&mesh1),
                "c-test",
                ClusterSettings::default(),
                registration(&mesh1, Admission::Bootstrap),
            )
            .await?;
        let secret = "worker-secret";
        raft1
            .write(Command::new(
                1,
                "test",
                Action::CreateToken {
                    secret_sha256: sha256_hex(secret),
                    prefix: "shoal1.test".to_string(),
                    roles: Roles::WORKER,
                    ttl_ms: 60_000,
                    uses_max: 1,
                },
            ))
            .await??;
        // The rogue: a mesh with node 2's identity and no Raft of its own.
        let rogue_handler = NodeRpcHandler::new();
        let rogue = Mesh::start(
            MeshConfig::new(
                dirs[1].path().join("mesh"),
                SocketAddr::from(([127, 0, 0, 1], 0)),
                Ipv4Addr::new(10, 42, 0, 2),
            ),
            rogue_handler,
        )
        .await?;
        let mut joining = registration(
            &rogue,
            Admission::Token {
                secret_sha256: sha256_hex(secret),
            },
        );
        joining.roles = Roles::WORKER;
        let registered = raft1
            .write(Command::new(2, "test", Action::RegisterNode(joining)))
            .await?;
        anyhow::ensure!(
            matches!(registered, Ok(Outcome::NodeRegistered { node_id: 2, .. })),
            "{registered:?}"
        );
        mesh1.set_peers(&[spec(&rogue)])?;
        rogue.set_peers(&[spec(&mesh1)])?;
        let (refusals, mut refused) = tokio::sync::mpsc::channel::<RefusedMessage>(16);
        handler1.set_refusals(refusals);
        let term_before = raft1.status().term;
        let nodes_before = raft1.read(|state| state.nodes.clone());
        let send = |tag: u8, body: Vec<u8>| {
            let transport = rogue.transport();
            async move {
                tokio::time::timeout(
                    Duration::from_secs(10),
                    transport.request(Ipv4Addr::new(10, 42, 0, 1), frame(tag, &body)),
                )
                .await
            }
        };

        tracing::info!("--- a vote request at term + 10 and an ElectNow are refused");
        let vote = RaftRpc::Vote(openraft::raft::VoteRequest {
            vote: openraft::Vote::new(term_before + 10, 2),
            last_log_id: None,
        });
        for rpc in [vote, RaftRpc::ElectNow] {
            let reply = send(TAG_RAFT, shoal_raft::codec::encode(&rpc)?).await??;
            let reply: RaftRpcReply = shoal_raft::codec::decode(&reply)?;
            assert!(
                matches!(&reply, RaftRpcReply::BadRequest(why) if why.contains("not a server")),
                "{rpc:?}: {reply:?}"
            );
        }

        tracing::info!(
            "--- node-scoped writes about another node and leader-only writes are refused"
        );
        let forged = [
            Action::UpdateNodeInfo {
                node: 1,
                api_addr: Some("203.0.113.1:1".to_string()),
                capacity: Resources::new(1, 1),
                reserve: Resources::new(0, 0),
            },
            Action::MarkNodesDown {
                nodes: vec![1],
                hints: Default::default(),
                observed: Default::default(),
            },
        ];
        for action in forged {
            let body = shoal_raft::codec::encode(&ForwardRequest {
                command: Command::new(3, "rogue", action.clone()),
                credential: None,
            })?;
            let reply = send(TAG_WRITE, body).await??;
            let reply: ForwardReply = shoal_raft::codec::decode(&reply)?;
            assert!(
                matches!(reply, ForwardReply::Refused(_)),
                "{action:?}: {reply:?}"
            );
        }

        tracing::info!("--- what the worker may say about itself still goes through");
        let own = Action::UpdateNodeInfo {
            node: 2,
            api_addr: None,
            capacity: Resources::new(1_000, 1 << 30),
            reserve: Resources::new(0, 0),
        };
        let body = shoal_raft::codec::encode(&ForwardRequest {
            command: Command::new(4, "node-2", own),
            credential: None,
        })?;
        let reply: ForwardReply = shoal_raft::codec::decode(&send(TAG_WRITE, body).await??)?;
        assert!(matches!(reply, ForwardReply::Applied(Ok(_))), "{reply:?}");

        tracing::info!("--- minting an admin key: refused without a key, and with a tenant's key");
        let tenant_key = "shoal_test_tenant_key";
        raft1
            .write(Command::new(
                5,
                "test",
                Action::CreateApiKey {
                    secret_sha256: sha256_hex(tenant_key),
                    prefix: "shoal_test_t".to_string(),
                    tenant: "alpha".to_string(),
                    admin: false,
                },
            ))
            .await??;
        let keys_before = raft1.read(|state| state.api_keys.len());
        for credential in [
            None,
            Some(tenant_key.to_string()),
            Some("shoal_made_up".to_string()),
        ] {
            let mint = Action::CreateApiKey {
                secret_sha256: sha256_hex("shoal_rogue_admin"),
                prefix: "shoal_rogue".to_string(),
                tenant: "admin".to_string(),
                admin: true,
            };
            let body = shoal_raft::codec::encode(&ForwardRequest {
                command: Command::new(6, "shoal_admin", mint),
                credential: credential.clone(),
            })?;
            let reply: ForwardReply = shoal_raft::codec::decode(&send(TAG_WRITE, body).await??)?;
            assert!(
                matches!(reply, ForwardReply::Refused(_)),
                "{credential:?}: {reply:?}"
            );
        }
        assert_eq!(raft1.read(|state| state.api_keys.len()), keys_before);

        tracing::info!("--- the term, the leader and node 1's record are unchanged");
        let status = raft1.status();
        assert_eq!((status.term, status.leader), (term_before, Some(1)));
        let nodes_after = raft1.read(|state| state.nodes.clone());
        assert_eq!(nodes_after.get(&1), nodes_before.get(&1));
        tracing::info!("--- every refusal was reported with its sender");
        let mut reports = Vec::new();
        while let Ok(report) = refused.try_recv() {
            reports.push(report);
        }
        assert_eq!(reports.len(), 7, "{reports:?}");
        assert!(
            reports
                .iter()
                .all(|report| report.node == Some(2) && report.from == Ipv4Addr::new(10, 42, 0, 2)),
            "{reports:?}"
        );

        raft1.shutdown().await?;
        rogue.shutdown().await;
        mesh1.shutdown().await;
        Ok(())
    }
}
