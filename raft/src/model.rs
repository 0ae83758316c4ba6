//! The records the cluster state is made of: nodes, tokens, keys, tenants, workstations and
//! their desired processes, the audit log. Plain data; all changes go through
//! [`crate::apply::apply`].

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;

use serde::Deserialize;
use serde::Serialize;

/// A node's id: a Raft node id for servers, and the same id space for workers. Ids are handed
/// out by the state machine from a counter and never reused.
pub type NodeId = u64;

/// A tenant's name, chosen by the admin who creates its first key.
pub type TenantId = String;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        pub struct $name(pub u64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, "{}"), self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = std::num::ParseIntError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                s.strip_prefix($prefix).unwrap_or(s).parse().map($name)
            }
        }
    };
}

id_type!(
    /// A workstation's id, allocated by the state machine, displayed as `ws-N`.
    WorkstationId,
    "ws-"
);
id_type!(
    /// A desired process's id within its workstation, displayed as `p-N`.
    ProcessId,
    "p-"
);
id_type!(
    /// A join token's id (not its secret), displayed as `tok-N`.
    TokenId,
    "tok-"
);
id_type!(
    /// An API key's id (not its secret), displayed as `key-N`.
    ApiKeyId,
    "key-"
);

/// An amount of CPU and memory: a capacity, a reserve, a reservation or a usage. The one type
/// for the concept: the node's HTTP API uses it as it is (feature `openapi` derives its schema).
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default,
)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Resources {
    /// Thousandths of a CPU core.
    pub cpu_millis: u64,
    /// Bytes of memory.
    pub memory_bytes: u64,
}

impl Resources {
    /// Builds an amount.
    pub const fn new(cpu_millis: u64, memory_bytes: u64) -> Self {
        Self {
            cpu_millis,
            memory_bytes,
        }
    }

    /// True when `other` fits into `self` in both dimensions.
    pub fn fits(&self, other: &Resources) -> bool {
        other.cpu_millis <= self.cpu_millis && other.memory_bytes <= self.memory_bytes
    }

    /// `self - other`, clamped at zero in each dimension.
    pub fn saturating_sub(&self, other: &Resources) -> Resources {
        Resources::new(
            self.cpu_millis.saturating_sub(other.cpu_millis),
            self.memory_bytes.saturating_sub(other.memory_bytes),
        )
    }

    /// `self + other`, clamped at `u64::MAX` in each dimension.
    pub fn saturating_add(&self, other: &Resources) -> Resources {
        Resources::new(
            self.cpu_millis.saturating_add(other.cpu_millis),
            self.memory_bytes.saturating_add(other.memory_bytes),
        )
    }

    /// True when both dimensions are zero.
    pub fn is_zero(&self) -> bool {
        self.cpu_millis == 0 && self.memory_bytes == 0
    }
}

/// What a node does. A node with neither role is refused at registration.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Roles {
    /// A Raft voter candidate (promoted while voters are below the target).
    pub server: bool,
    /// Runs workstations and runs.
    pub worker: bool,
}

impl Roles {
    /// Both roles: the default for small clusters and `shoal dev`.
    pub const SERVER_WORKER: Roles = Roles {
        server: true,
        worker: true,
    };
    /// Worker only: not a Raft member.
    pub const WORKER: Roles = Roles {
        server: false,
        worker: true,
    };
    /// Server only: takes no placements.
    pub const SERVER: Roles = Roles {
        server: true,
        worker: false,
    };
}

impl fmt::Display for Roles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.server, self.worker) {
            (true, true) => f.write_str("server,worker"),
            (true, false) => f.write_str("server"),
            (false, true) => f.write_str("worker"),
            (false, false) => f.write_str("none"),
        }
    }
}

/// A node's durable state as the leader sees it.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NodeState {
    /// Heartbeating and accepting placements.
    Ready,
    /// Takes no new placements; its workstations are being moved away.
    Draining,
    /// Missed its heartbeat grace; its workstations were re-placed.
    Down,
    /// Removed from the cluster; its id is never reused.
    Left,
}

impl fmt::Display for NodeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NodeState::Ready => "ready",
            NodeState::Draining => "draining",
            NodeState::Down => "down",
            NodeState::Left => "left",
        })
    }
}

/// The address at which a node's Raft RPC endpoint is reached over the mesh; openraft's
/// per-member node data.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct NodeAddr {
    /// `ip:port` inside the mesh (or on loopback for tests and `shoal dev`).
    pub addr: String,
}

impl NodeAddr {
    /// Builds an address.
    pub fn new(addr: impl Into<String>) -> Self {
        Self { addr: addr.into() }
    }
}

impl fmt::Display for NodeAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.addr)
    }
}

/// One node of the cluster.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct NodeRecord {
    /// Never reused.
    pub id: NodeId,
    /// WireGuard public key (base64), the node's identity.
    pub wg_public_key: String,
    /// WireGuard UDP endpoint (`host:port`) outside the mesh.
    pub endpoint: String,
    /// The node's address inside the overlay range, allocated at registration.
    pub mesh_addr: Ipv4Addr,
    /// Port of the node's RPC endpoint (QUIC) on its mesh address.
    pub rpc_port: u16,
    /// Where the node serves the HTTP API, if it does.
    pub api_addr: Option<String>,
    /// Server and/or worker.
    pub roles: Roles,
    /// What the host has.
    pub capacity: Resources,
    /// What the node keeps for itself (agent, OS); never placed on.
    pub reserve: Resources,
    /// Sum of the reservations of the workstations placed here (kept by apply).
    pub reserved: Resources,
    /// Ready, draining, down or left.
    pub state: NodeState,
    /// Set by a remove request: the node becomes `left` once drained.
    pub removing: bool,
    /// When it registered (command time).
    pub registered_ms: u64,
    /// When its state last changed (command time).
    pub state_changed_ms: u64,
    /// The most workstations the node hosts (its `workstations_per_node_max`), committed by
    /// the node itself with its capacity ([`crate::command::Action::UpdateNodeCapacity`]).
    /// Part of its capacity: placement never puts a workstation on a node that hosts this
    /// many. `None` until the node states it (between its registration and its first info
    /// update, or for a node that only sent the older `UpdateNodeInfo`): no count bound then.
    ///
    /// Added after the first release of the snapshot format, last in the record: bincode is
    /// positional, so a snapshot written before it does not decode as the current
    /// [`crate::state::ClusterData`]; [`crate::state::ClusterState::decode`] and the snapshot
    /// store read such a snapshot through the previous layout and give every node `None`.
    pub workstations_max: Option<u32>,
}

impl NodeRecord {
    /// Capacity minus the node's reserve: what placements may use in total.
    pub fn allocatable(&self) -> Resources {
        self.capacity.saturating_sub(&self.reserve)
    }

    /// Allocatable minus what is already reserved by placements.
    pub fn free(&self) -> Resources {
        self.allocatable().saturating_sub(&self.reserved)
    }

    /// The Raft address of this node: its mesh address and RPC port.
    pub fn rpc_addr(&self) -> NodeAddr {
        NodeAddr::new(format!("{}:{}", self.mesh_addr, self.rpc_port))
    }
}

/// A join token. Only the SHA-256 of its secret is stored.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct JoinToken {
    /// Id shown in `token ls`.
    pub id: TokenId,
    /// Lowercase hex SHA-256 of the token text.
    pub secret_sha256: String,
    /// The token's public head (`shoal1.<id>`), for display in `token ls` on every node; it
    /// holds nothing of the secret.
    pub prefix: String,
    /// Roles a node joining with this token gets.
    pub roles: Roles,
    /// Creation time (command time).
    pub created_ms: u64,
    /// The token is refused at or after this time.
    pub expires_ms: u64,
    /// How many joins it still admits.
    pub uses_left: u32,
    /// How many joins it admitted in total.
    pub uses_max: u32,
    /// Revoked tokens admit nothing.
    pub revoked: bool,
}

impl JoinToken {
    /// True when the token can never admit a node again at or after `at_ms`: revoked,
    /// expired or out of uses. Dead tokens are pruned when the token table is full.
    pub fn is_dead(&self, at_ms: u64) -> bool {
        self.revoked || at_ms >= self.expires_ms || self.uses_left == 0
    }
}

/// An API key. Only the SHA-256 of the key is stored, plus a short prefix for display.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ApiKey {
    /// Id shown in `keys ls`.
    pub id: ApiKeyId,
    /// Lowercase hex SHA-256 of the key text.
    pub secret_sha256: String,
    /// The first characters of the key, for display and the audit log.
    pub prefix: String,
    /// The tenant whose resources it may see.
    pub tenant: TenantId,
    /// Admin keys see everything and manage nodes, tokens and keys.
    pub admin: bool,
    /// Revoked keys authenticate nothing.
    pub revoked: bool,
    /// Creation time (command time).
    pub created_ms: u64,
}

/// A tenant: the owner of workstations and keys.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Tenant {
    /// Its name.
    pub id: TenantId,
    /// Creation time (command time).
    pub created_ms: u64,
}

/// The network a workstation's processes get, as committed (with the allowlist's domains).
/// The executor's `NetworkPolicy` is its kind, which the API shows; the node converts between
/// them in `node/src/convert.rs` (`executor` may not depend on `raft`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, Default)]
pub enum NetworkPolicy {
    /// Loopback only.
    #[default]
    None,
    /// Egress only through the node's proxy, to these domains.
    Allowlist(Vec<String>),
    /// Direct egress.
    Full,
}

/// The burst ceiling of a workstation.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Limit {
    /// CPU ceiling in millicores.
    pub cpu_limit_millis: u64,
    /// Memory ceiling in bytes.
    pub memory_limit_bytes: u64,
}

/// What a workstation asks for.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct WorkstationSpec {
    /// Guaranteed CPU and memory; what placement accounts.
    pub reservation: Resources,
    /// Burst ceiling; at least the reservation.
    pub limit: Limit,
    /// Network policy.
    pub network: NetworkPolicy,
}

/// Where a workstation runs, fenced by its generation: a node runs a workstation only under the
/// current generation.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Placement {
    /// The node it is placed on.
    pub node: NodeId,
    /// Starts at 1; bumped at every re-placement.
    pub generation: u64,
}

/// A workstation's durable placement state (observed running/stopped comes from heartbeats).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WorkstationState {
    /// Placed on a node; see `placement`.
    Placed,
    /// Lost its node and no other node had room: waits for capacity.
    Pending,
}

/// When a process is started again after it exits, as committed. The executor's
/// `RestartPolicy` (which the API and CLI use) has the same variants; the node converts between
/// them in `node/src/convert.rs` (`executor` may not depend on `raft`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum RestartPolicy {
    /// Never; after a node loss it is reported `exited` with reason `node_lost`.
    #[default]
    Never,
    /// Only after a non-zero exit or a signal.
    OnFailure,
    /// Always.
    Always,
}

/// A process the owner wants running in a workstation.
///
/// `first_generation` and `stopped` were added after the first release of the format:
/// bincode is positional (`#[serde(default)]` does not help it), so a snapshot or a worker's
/// `mirror.bin` that holds a desired process and was written before them does not decode
/// (the store refuses to start with a clear error; the mirror file is ignored and fetched
/// again). Log entries are unaffected: `AddProcess` carries neither field, and `StopProcess`
/// is a new last variant.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct DesiredProcess {
    /// Id within the workstation.
    pub id: ProcessId,
    /// Program and arguments.
    pub argv: Vec<String>,
    /// Environment.
    pub env: BTreeMap<String, String>,
    /// Working directory inside the sandbox.
    pub cwd: Option<String>,
    /// Restart policy.
    pub restart: RestartPolicy,
    /// Creation time (command time).
    pub created_ms: u64,
    /// The placement generation that starts it first: the workstation's generation when the
    /// process was added. That is the current placement, or, for a workstation without a node,
    /// its next one (a re-placement gives the next generation before it looks for a node, and
    /// placing a pending workstation keeps it). A `never` process is started by this placement
    /// only; see [`DesiredProcess::started_by`].
    pub first_generation: u64,
    /// Set when the owner stopped it for good (TERM or KILL through the API, committed as
    /// `StopProcess`): no placement starts it again and it is reported `exited` with reason
    /// `killed`. Never cleared. The signal is the one a host that still runs it stops it with.
    pub stopped: Option<StopSignal>,
}

impl DesiredProcess {
    /// Whether the placement of `generation` starts this process when it starts the
    /// workstation: never once it was stopped; a `never` process only in its first
    /// generation (SPEC: after a node loss it is `exited` with reason `node_lost`); `always`
    /// and `on-failure` processes in every generation from their first on.
    pub fn started_by(&self, generation: u64) -> bool {
        if self.stopped.is_some() || generation < self.first_generation {
            return false;
        }
        match self.restart {
            RestartPolicy::Never => generation == self.first_generation,
            RestartPolicy::OnFailure | RestartPolicy::Always => true,
        }
    }

    /// True for a `never` process whose first placement is over: a later placement of its
    /// workstation (after a node loss, a drain or a move) does not start it.
    pub fn lost_with_its_node(&self, generation: u64) -> bool {
        self.stopped.is_none()
            && self.restart == RestartPolicy::Never
            && generation > self.first_generation
    }
}

/// How an owner's stop (`StopProcess`) ends a process that is still running somewhere.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StopSignal {
    /// SIGTERM, then SIGKILL after the node's grace.
    Term,
    /// SIGKILL at once.
    Kill,
}

/// A persistent sandbox with a reservation, placed on one node.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Workstation {
    /// Never reused.
    pub id: WorkstationId,
    /// Owner.
    pub tenant: TenantId,
    /// Display name.
    pub name: String,
    /// Reservation, limit, network.
    pub spec: WorkstationSpec,
    /// The node it is on; `None` while pending.
    pub node: Option<NodeId>,
    /// Current generation (1 at creation, +1 at each re-placement, kept while pending).
    pub generation: u64,
    /// Placed or pending.
    pub state: WorkstationState,
    /// Desired processes.
    pub processes: BTreeMap<ProcessId, DesiredProcess>,
    /// Next process id to hand out.
    pub next_process_id: u64,
    /// The log of this generation starts at this byte offset; above anything an earlier
    /// generation can have produced (see `LOG_OFFSET_GAP_BYTES`).
    pub log_offset_floor: u64,
    /// Creation time (command time).
    pub created_ms: u64,
}

impl Workstation {
    /// The current placement, if placed.
    pub fn placement(&self) -> Option<Placement> {
        self.node.map(|node| Placement {
            node,
            generation: self.generation,
        })
    }
}

/// One line of the append-only audit log.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct AuditEntry {
    /// Position in the log, from 0.
    pub seq: u64,
    /// Command time.
    pub ts_ms: u64,
    /// Key prefix of the caller, or `system`/`node-N` for internal commands.
    pub actor: String,
    /// The tenant whose resource this concerns (a workstation's or process's owner); `None`
    /// for cluster-level entries (nodes, tokens, keys), which only admin keys see.
    pub tenant: Option<TenantId>,
    /// Command name, e.g. `workstation.create`.
    pub action: String,
    /// What it acted on, e.g. `ws-12`.
    pub resource: String,
    /// `ok` or the refusal code.
    pub outcome: String,
}

/// Cluster-wide settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ClusterSettings {
    /// Number of Raft voters to aim for: 1, 3 or 5.
    pub voter_target: u8,
    /// A node is marked down after this long without a heartbeat.
    pub heartbeat_grace_ms: u64,
    /// Network address of the overlay range from which mesh addresses are handed out.
    pub overlay_addr: Ipv4Addr,
    /// Prefix length of the overlay range (8..=30).
    pub overlay_prefix_len: u8,
    /// Most workstations one tenant may have at a time (placed or pending); one more is
    /// refused with `LimitReached` (the API's 429). 1..=1,000,000; 1,000 by default.
    pub tenant_workstations_max: u32,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        Self {
            voter_target: 3,
            heartbeat_grace_ms: 10_000,
            overlay_addr: Ipv4Addr::new(10, 42, 0, 0),
            overlay_prefix_len: 16,
            tenant_workstations_max: 1_000,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The log and snapshots are bincode, which is positional: an enum is its variant's index
    /// and a struct its fields in order, whatever serde attributes rename them to. This pins the
    /// bytes of the records the node converts to and from its API and executor types (see
    /// `node/src/convert.rs`), so a reordered variant or field, which would silently change
    /// what existing logs and snapshots mean, fails here.
    #[test]
    fn encoding_of_converted_records_is_unchanged() {
        let spec = WorkstationSpec {
            reservation: Resources::new(250, 64 << 20),
            limit: Limit {
                cpu_limit_millis: 500,
                memory_limit_bytes: 128 << 20,
            },
            network: NetworkPolicy::Allowlist(vec!["example.org".to_string()]),
        };
        let process = DesiredProcess {
            id: ProcessId(3),
            argv: vec!["sleep".to_string(), "1".to_string()],
            env: BTreeMap::from([("K".to_string(), "V".to_string())]),
            cwd: None,
            restart: RestartPolicy::OnFailure,
            created_ms: 7,
            first_generation: 2,
            stopped: Some(StopSignal::Kill),
        };
        let encoded = [
            crate::codec::encode(&spec).unwrap(),
            crate::codec::encode(&NetworkPolicy::None).unwrap(),
            crate::codec::encode(&NetworkPolicy::Full).unwrap(),
            crate::codec::encode(&process).unwrap(),
            crate::codec::encode(&RestartPolicy::Never).unwrap(),
            crate::codec::encode(&RestartPolicy::Always).unwrap(),
        ]
        .map(hex::encode);
        assert_eq!(
            encoded,
            [
                "fafc00000004fbf401fc0000000801010b6578616d706c652e6f7267",
                "00",
                "02",
                "030205736c656570013101014b0156000107020101",
                "00",
                "02",
            ]
        );
    }
}
