//! What can be proposed to the state machine ([`Command`]) and what applying it answers
//! ([`CommandResponse`]). A command carries its own timestamp and actor, so that applying it
//! reads no clock and every replica computes the same result.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::Deserialize;
use serde::Serialize;

use crate::model::ApiKeyId;
use crate::model::ClusterSettings;
use crate::model::Limit;
use crate::model::NodeId;
use crate::model::NodeState;
use crate::model::ProcessId;
use crate::model::Resources;
use crate::model::RestartPolicy;
use crate::model::Roles;
use crate::model::StopSignal;
use crate::model::TenantId;
use crate::model::TokenId;
use crate::model::WorkstationId;
use crate::model::WorkstationSpec;

/// Limits on what one command may carry (DESIGN.md §3).
pub mod limits {
    /// Workstations in one `PlaceBatch`.
    pub const PLACE_BATCH_REQUESTS_MAX: usize = 10_000;
    /// Arguments of one process.
    pub const ARGV_ARGS_MAX: usize = 256;
    /// Bytes of argv plus env plus cwd of one process.
    pub const PROCESS_SPEC_BYTES_MAX: usize = 64 * 1024;
    /// Environment variables of one process.
    pub const ENV_VARS_MAX: usize = 256;
    /// Desired processes of one workstation.
    pub const PROCESSES_PER_WORKSTATION_MAX: usize = 64;
    /// Bytes of a name (workstation, tenant, key prefix, cluster id).
    pub const NAME_BYTES_MAX: usize = 128;
    /// Domains in an allowlist.
    pub const ALLOWLIST_DOMAINS_MAX: usize = 256;
    /// Uses of one join token.
    pub const TOKEN_USES_MAX: u32 = 10_000;
    /// Join tokens kept in the state, live and dead. When the table is full, `CreateToken`
    /// first prunes the dead ones (revoked, expired or used up) and is refused with
    /// `LimitReached` only if 1,000 live tokens remain.
    pub const TOKENS_MAX: usize = 1_000;
    /// API keys kept in the state. When full, `CreateApiKey` first prunes revoked keys.
    pub const API_KEYS_MAX: usize = 10_000;
    /// Bytes of each text field of a `RecordAudit` (action, resource, outcome).
    pub const AUDIT_FIELD_BYTES_MAX: usize = 256;
    /// Nodes in one `MarkNodesDown`.
    pub const NODES_PER_COMMAND_MAX: usize = 100_000;
    /// Bytes of an address, endpoint or public key string.
    pub const ADDR_BYTES_MAX: usize = 256;
    /// The largest workstation maximum a node may state for itself (`UpdateNodeCapacity`).
    pub const NODE_WORKSTATIONS_MAX: u32 = 1_000_000;
}

/// The byte gap left in a workstation's log offsets at each re-placement: the new node starts
/// at `max(floor, last reported offset) + gap`, so that its offsets are above anything the old
/// node can have written between its last heartbeat and its lease expiry (that would be 4 GiB
/// in 5 s, far beyond what a workstation's log pipe carries), and readers in the lost span are
/// told `dropped`.
pub const LOG_OFFSET_GAP_BYTES: u64 = 1 << 32;

/// A proposal to the state machine: who, when, what.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Command {
    /// Wall-clock time at the proposer (Unix ms); the only time `apply` knows.
    pub at_ms: u64,
    /// Key prefix of the caller, or `system` / `node-N` for internal commands (audit log).
    pub actor: String,
    /// The change.
    pub action: Action,
}

impl Command {
    /// Builds a command.
    pub fn new(at_ms: u64, actor: impl Into<String>, action: Action) -> Self {
        Self {
            at_ms,
            actor: actor.into(),
            action,
        }
    }
}

/// How a node is admitted by `RegisterNode`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Admission {
    /// The first node of a new cluster; refused once any node exists.
    Bootstrap,
    /// A join token, by the SHA-256 of its text; consumes one use.
    Token {
        /// Lowercase hex SHA-256 of the token text.
        secret_sha256: String,
    },
}

/// What a node says about itself when it registers.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct NodeRegistration {
    /// Bootstrap or token.
    pub admission: Admission,
    /// WireGuard public key (base64); registering the same key again returns the same node.
    pub wg_public_key: String,
    /// WireGuard UDP endpoint.
    pub endpoint: String,
    /// RPC (QUIC) port on the mesh address.
    pub rpc_port: u16,
    /// HTTP API address, if served.
    pub api_addr: Option<String>,
    /// Requested roles (a token's roles override them).
    pub roles: Roles,
    /// Host capacity.
    pub capacity: Resources,
    /// Node's own reserve.
    pub reserve: Resources,
}

/// One workstation to create.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct WorkstationRequest {
    /// Owner (created if new).
    pub tenant: TenantId,
    /// Display name.
    pub name: String,
    /// Reservation, limit and network.
    pub spec: WorkstationSpec,
}

/// Live information from the leader's soft state that placement may prefer, carried in the
/// command so that apply stays deterministic. Empty hints are valid.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct PlacementHints {
    /// Live headroom score per node (higher is more free, e.g. free memory bytes).
    pub headroom: BTreeMap<NodeId, u64>,
}

/// A re-placement input: the last log offset a node reported for a workstation.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct ObservedOffsets {
    /// Workstation → next log offset last reported in a heartbeat.
    pub log_offset_next: BTreeMap<WorkstationId, u64>,
}

/// Every change to the cluster state.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Sets the cluster id and settings; once.
    InitCluster {
        /// Random id chosen by the bootstrapping node.
        cluster_id: String,
        /// Settings.
        settings: ClusterSettings,
    },
    /// Changes settings.
    UpdateSettings {
        /// New voter target (1, 3 or 5).
        voter_target: Option<u8>,
        /// New heartbeat grace.
        heartbeat_grace_ms: Option<u64>,
        /// New per-tenant workstation quota.
        tenant_workstations_max: Option<u32>,
    },
    /// Admits a node: allocates its id and mesh address.
    RegisterNode(NodeRegistration),
    /// Node came back (after stopping stale workstations) or an admin un-drains it.
    MarkNodeReady {
        /// The node.
        node: NodeId,
        /// Hints for placing pending workstations onto nodes.
        hints: PlacementHints,
    },
    /// A node states its own capacity, reserve and API address (a joined node knows them only
    /// once it runs; the join packet does not carry them). Refused if the new allocatable
    /// capacity would not hold the reservations already placed on the node. Leaves the node's
    /// workstation maximum as it is: nodes send [`Action::UpdateNodeCapacity`], which also
    /// carries it; this variant stays so that log entries written before it still decode
    /// and apply.
    UpdateNodeInfo {
        /// The node.
        node: NodeId,
        /// Where it serves the HTTP API.
        api_addr: Option<String>,
        /// Host capacity.
        capacity: Resources,
        /// Node's own reserve.
        reserve: Resources,
    },
    /// Stop new placements on a node.
    DrainNode {
        /// The node.
        node: NodeId,
    },
    /// Moves one workstation off a draining node; marks it `left` when empty and removing.
    DrainStep {
        /// The node.
        node: NodeId,
        /// Placement hints.
        hints: PlacementHints,
        /// Last offsets reported.
        observed: ObservedOffsets,
    },
    /// Removes a node: `left` at once if empty, otherwise draining until empty.
    RemoveNode {
        /// The node.
        node: NodeId,
    },
    /// Failure detector verdict: marks nodes down and re-places their workstations.
    MarkNodesDown {
        /// Nodes whose grace expired.
        nodes: Vec<NodeId>,
        /// Placement hints.
        hints: PlacementHints,
        /// Last offsets reported by the lost nodes.
        observed: ObservedOffsets,
    },
    /// Creates a join token.
    CreateToken {
        /// SHA-256 (hex) of the token text.
        secret_sha256: String,
        /// The token's public head for display (`shoal1.<id>`), never part of the secret.
        prefix: String,
        /// Roles granted.
        roles: Roles,
        /// Lifetime from `at_ms`.
        ttl_ms: u64,
        /// Joins admitted.
        uses_max: u32,
    },
    /// Consumes one use of a token (admission check without registering).
    ConsumeToken {
        /// SHA-256 (hex) of the token text.
        secret_sha256: String,
    },
    /// Revokes a token.
    RevokeToken {
        /// The token.
        id: TokenId,
    },
    /// Creates a tenant (idempotent).
    CreateTenant {
        /// Name.
        tenant: TenantId,
    },
    /// Creates an API key (and its tenant if new).
    CreateApiKey {
        /// SHA-256 (hex) of the key text.
        secret_sha256: String,
        /// Display prefix of the key.
        prefix: String,
        /// Tenant.
        tenant: TenantId,
        /// Admin key.
        admin: bool,
    },
    /// Revokes an API key.
    RevokeApiKey {
        /// The key.
        id: ApiKeyId,
    },
    /// Creates and places one workstation.
    CreateWorkstation {
        /// What to create.
        request: WorkstationRequest,
        /// Placement hints.
        hints: PlacementHints,
    },
    /// Creates and places many workstations; each is answered separately.
    PlaceBatch {
        /// What to create, at most `PLACE_BATCH_REQUESTS_MAX`.
        requests: Vec<WorkstationRequest>,
        /// Placement hints.
        hints: PlacementHints,
    },
    /// Changes a workstation's reservation and limit in place.
    ResizeWorkstation {
        /// The workstation.
        id: WorkstationId,
        /// New reservation.
        reservation: Resources,
        /// New limit.
        limit: Limit,
    },
    /// Deletes a workstation; the audit log keeps the record.
    DeleteWorkstation {
        /// The workstation.
        id: WorkstationId,
    },
    /// Adds a desired process.
    AddProcess {
        /// The workstation.
        workstation: WorkstationId,
        /// Program and arguments.
        argv: Vec<String>,
        /// Environment.
        env: BTreeMap<String, String>,
        /// Working directory.
        cwd: Option<String>,
        /// Restart policy.
        restart: RestartPolicy,
    },
    /// Removes a desired process (the node stops it).
    RemoveProcess {
        /// The workstation.
        workstation: WorkstationId,
        /// The process.
        process: ProcessId,
    },
    /// Records an API action that changes no replicated state (a signal sent to a process) in
    /// the audit log, so that every node serves the same log.
    RecordAudit {
        /// The tenant it concerns; `None` for admin-only entries.
        tenant: Option<TenantId>,
        /// What was done, e.g. `process.kill`.
        action: String,
        /// What it was done to, e.g. `ws-3/p-1`.
        resource: String,
        /// `ok` or the error code.
        outcome: String,
    },
    /// The hosting node's durable high-water mark of a workstation's log: committed before
    /// the node starts the workstation's actor in a new local log epoch, with `floor` the
    /// first offset above that epoch, so that a re-placement (which starts above
    /// `log_offset_floor`) continues above every offset the old node can have served, even
    /// when the leader that re-places never heard the old node's reports. Raises the floor
    /// (never lowers it); refused for an unknown workstation or another generation.
    /// (Appended last: earlier variants keep their encoding.)
    RaiseLogFloor {
        /// The workstation.
        workstation: WorkstationId,
        /// The generation the node hosts; a stale one is refused (`Conflict`).
        generation: u64,
        /// The new floor (a log offset).
        floor: u64,
    },
    /// The owner stopped a process for good (TERM or KILL through the API): committed before
    /// the signal is sent, so that no later placement of the workstation starts it again and
    /// every node reports it `exited` with reason `killed`; the hosting node stops it when it
    /// applies this, if the API's signal has not. Idempotent: stopping a stopped process
    /// succeeds (a KILL after a TERM is kept). Audited as `process.kill`, the API's action.
    /// (Appended last: earlier variants keep their encoding.)
    StopProcess {
        /// The workstation.
        workstation: WorkstationId,
        /// The process.
        process: ProcessId,
        /// TERM (with the node's grace) or KILL.
        signal: StopSignal,
    },
    /// What [`Action::UpdateNodeInfo`] states, plus the most workstations the node hosts
    /// (its `workstations_per_node_max`): the node's committed capacity in both resources and
    /// count, what a node sends about itself at every start. Refused if the new allocatable
    /// capacity would not hold the reservations already placed on the node, or if the node
    /// already hosts more workstations than the new maximum; the maximum is 1 to
    /// [`limits::NODE_WORKSTATIONS_MAX`]. (Appended last: earlier variants keep their
    /// encoding.)
    UpdateNodeCapacity {
        /// The node.
        node: NodeId,
        /// Where it serves the HTTP API.
        api_addr: Option<String>,
        /// Host capacity.
        capacity: Resources,
        /// Node's own reserve.
        reserve: Resources,
        /// The most workstations placement puts on the node.
        workstations_max: u32,
    },
}

impl Action {
    /// The audit name of this action.
    pub fn name(&self) -> &'static str {
        match self {
            Action::InitCluster { .. } => "cluster.init",
            Action::UpdateSettings { .. } => "cluster.settings",
            Action::RegisterNode(_) => "node.register",
            Action::MarkNodeReady { .. } => "node.ready",
            Action::UpdateNodeInfo { .. } | Action::UpdateNodeCapacity { .. } => "node.update",
            Action::DrainNode { .. } => "node.drain",
            Action::DrainStep { .. } => "node.drain_step",
            Action::RemoveNode { .. } => "node.remove",
            Action::MarkNodesDown { .. } => "node.down",
            Action::CreateToken { .. } => "token.create",
            Action::ConsumeToken { .. } => "token.consume",
            Action::RevokeToken { .. } => "token.revoke",
            Action::CreateTenant { .. } => "tenant.create",
            Action::CreateApiKey { .. } => "key.create",
            Action::RevokeApiKey { .. } => "key.revoke",
            Action::CreateWorkstation { .. } => "workstation.create",
            Action::PlaceBatch { .. } => "workstation.create",
            Action::ResizeWorkstation { .. } => "workstation.resize",
            Action::DeleteWorkstation { .. } => "workstation.delete",
            Action::AddProcess { .. } => "process.create",
            Action::RemoveProcess { .. } => "process.remove",
            Action::RecordAudit { .. } => "audit.record",
            Action::RaiseLogFloor { .. } => "workstation.log_floor",
            Action::StopProcess { .. } => "process.kill",
        }
    }
}

/// A workstation that was placed.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placed {
    /// The workstation.
    pub id: WorkstationId,
    /// Its node.
    pub node: NodeId,
    /// Its generation.
    pub generation: u64,
}

/// What a successful command produced.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing to report (blank and membership log entries, settings).
    Done,
    /// `RegisterNode`: the node's id and mesh address; `existing` when it was registered before.
    NodeRegistered {
        /// Its id.
        node_id: NodeId,
        /// Its mesh address.
        mesh_addr: Ipv4Addr,
        /// True when this public key was already registered (idempotent retry).
        existing: bool,
    },
    /// A node changed state; workstations that moved and those left pending.
    NodesChanged {
        /// Nodes whose state changed.
        nodes: Vec<(NodeId, NodeState)>,
        /// Workstations re-placed (with their new generation).
        replaced: Vec<Placed>,
        /// Workstations that found no room and wait.
        pending: Vec<WorkstationId>,
    },
    /// `CreateToken`.
    TokenCreated {
        /// Its id.
        id: TokenId,
        /// When it expires.
        expires_ms: u64,
    },
    /// `ConsumeToken`: the roles it grants.
    TokenConsumed {
        /// The token.
        id: TokenId,
        /// Roles it grants.
        roles: Roles,
    },
    /// `CreateApiKey`.
    ApiKeyCreated {
        /// Its id.
        id: ApiKeyId,
    },
    /// `CreateWorkstation`.
    WorkstationPlaced(Placed),
    /// `PlaceBatch`: one answer per request, in order.
    Batch(Vec<Result<Placed, Refusal>>),
    /// `AddProcess`.
    ProcessAdded {
        /// Its id.
        id: ProcessId,
    },
}

/// Why the state machine refused a command. Refusals are normal answers, not failures of Raft:
/// the command is still in the log and every replica refuses it identically.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The cluster has not been initialised yet.
    #[error("the cluster is not initialised")]
    NotInitialized,
    /// `InitCluster` on an initialised cluster, or bootstrap admission on a non-empty one.
    #[error("the cluster is already initialised")]
    AlreadyInitialized,
    /// An argument is out of range; names the field.
    #[error("invalid {field}: {reason}")]
    InvalidArgument {
        /// The field.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// The target does not exist.
    #[error("{kind} {id} not found")]
    NotFound {
        /// `node`, `workstation`, `process`, `token`, `key`.
        kind: String,
        /// Its id.
        id: String,
    },
    /// The target is in a state that does not allow this.
    #[error("conflict: {reason}")]
    Conflict {
        /// What conflicts.
        reason: String,
    },
    /// A join token was refused.
    #[error("join token refused: {reason}")]
    TokenRejected {
        /// `unknown`, `expired`, `revoked` or `exhausted`.
        reason: String,
    },
    /// The reservation is larger than any node's allocatable capacity: it can never fit (422).
    #[error(
        "unsatisfiable: {requested:?} exceeds the largest node allocatable {largest_allocatable:?}"
    )]
    Unsatisfiable {
        /// What was asked.
        requested: Resources,
        /// The largest allocatable of any worker node.
        largest_allocatable: Resources,
    },
    /// Some node could hold it, but none has room now (503 with Retry-After).
    #[error("no capacity now for {requested:?}")]
    NoCapacity {
        /// What was asked.
        requested: Resources,
    },
    /// A resize does not fit on the workstation's node (moving is a later feature).
    #[error("resize does not fit on node {node}: free {free:?}, needed {needed:?}")]
    ResizeNoRoom {
        /// The node.
        node: NodeId,
        /// Its free capacity (excluding this workstation).
        free: Resources,
        /// The new reservation.
        needed: Resources,
    },
    /// A bounded table is full (429): `what` names it, `max` is its bound.
    #[error("at most {max} {what}: {reason}")]
    LimitReached {
        /// What is full, e.g. `live join tokens`.
        what: String,
        /// The bound.
        max: u64,
        /// What the caller can do.
        reason: String,
    },
    /// The node was removed from the cluster (`RemoveNode`: being drained away, or `left`):
    /// its identity stays out for good, so nothing it asks for itself (ready, capacity, a
    /// registration with its old key) is accepted. Retrying cannot help; a machine comes back
    /// only as a new node (empty data dir, new join token).
    #[error(
        "node {node} was removed from the cluster; a removed node needs a new identity \
         (empty data dir, new join token)"
    )]
    NodeRemoved {
        /// The removed node.
        node: NodeId,
    },
}

impl Refusal {
    /// A short stable code for the audit log and API error codes.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::NotInitialized => "not_initialized",
            Refusal::AlreadyInitialized => "already_initialized",
            Refusal::InvalidArgument { .. } => "invalid_argument",
            Refusal::NotFound { .. } => "not_found",
            Refusal::Conflict { .. } => "conflict",
            Refusal::TokenRejected { .. } => "token_rejected",
            Refusal::Unsatisfiable { .. } => "unsatisfiable",
            Refusal::NoCapacity { .. } => "no_capacity",
            Refusal::ResizeNoRoom { .. } => "resize_no_room",
            Refusal::LimitReached { .. } => "limit_reached",
            Refusal::NodeRemoved { .. } => "node_removed",
        }
    }

    pub(crate) fn invalid(field: &str, reason: impl Into<String>) -> Self {
        Refusal::InvalidArgument {
            field: field.to_string(),
            reason: reason.into(),
        }
    }

    pub(crate) fn not_found(kind: &str, id: impl ToString) -> Self {
        Refusal::NotFound {
            kind: kind.to_string(),
            id: id.to_string(),
        }
    }

    pub(crate) fn conflict(reason: impl Into<String>) -> Self {
        Refusal::Conflict {
            reason: reason.into(),
        }
    }
}

/// The answer of applying one log entry.
pub type CommandResponse = Result<Outcome, Refusal>;

/// Lowercase hex SHA-256 of a secret (token or key text): the only form in which secrets enter
/// the log.
pub fn sha256_hex(secret: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(secret.as_bytes()))
}
