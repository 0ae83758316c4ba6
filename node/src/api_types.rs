//! The JSON request and response types of the HTTP control API (v1), shared by the agent's
//! handlers, the CLI client and the chaos tests.
//!
//! Field names follow SPEC.md ("HTTP control API") exactly. Times are Unix milliseconds
//! (`*_unix_ms`), sizes are bytes (`*_bytes`), CPU is millicores (`*_millis`). Optional request
//! fields may be omitted; unknown request fields are refused (400) so that a typo never silently
//! changes what a client asked for.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

// One type per concept (ARCHITECTURE.md): the API's JSON uses these domain types as they are;
// their crates derive `ToSchema` (feature `openapi`) and their serde names are SPEC's.
/// The network policy of a workstation or run: the executor's kind (Raft's committed policy
/// also holds the allowlist's domains; `convert` maps between them).
pub use shoal_executor::network_policy::NetworkPolicy;
/// The restart policy of a workstation process: the executor's, which applies it.
pub use shoal_executor::restart_policy::RestartPolicy;
/// A run's request, result and verdict: the executor's, which validates and runs it.
pub use shoal_executor::run::{RunFile, RunRequest, RunResult, Verdict};
/// A pair of CPU and memory quantities: Raft's, as the scheduler accounts them.
pub use shoal_raft::model::Resources;

// ---------------------------------------------------------------------------------------------
// Errors

/// Every error answer: `{"error": {"code": "...", "message": "..."}}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// The inside of an error answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct ErrorDetail {
    /// A stable machine-readable code: `invalid_input`, `unauthorized`, `forbidden`,
    /// `not_found`, `conflict`, `too_large`, `unsatisfiable`, `rate_limited`, `unavailable`,
    /// `internal`.
    pub code: String,
    /// A human-readable sentence; for `invalid_input` it names the offending field.
    pub message: String,
}

// ---------------------------------------------------------------------------------------------
// Cluster, nodes and the elastic compute pool

/// One resource of the pool, summed over the nodes that are `ready` or `draining`.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct PoolResource {
    /// Allocatable capacity (capacity minus each node's own reserve).
    pub capacity: u64,
    /// Sum of the reservations of the workstations placed on these nodes.
    pub reserved: u64,
    /// Live usage reported by the nodes' heartbeats.
    pub used: u64,
}

/// The elastic compute pool.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct Pool {
    /// CPU in millicores.
    pub cpu_millis: PoolResource,
    /// Memory in bytes.
    pub memory_bytes: PoolResource,
}

/// `GET /v1/cluster`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct ClusterInfo {
    /// The cluster's id, chosen at bootstrap.
    pub cluster_id: String,
    /// The id of the current leader, if one is known.
    pub leader: Option<String>,
    /// The current Raft term.
    pub term: u64,
    /// The ids of the server (Raft voter) nodes.
    pub servers: Vec<String>,
    /// The pool totals.
    pub pool: Pool,
    /// The id of the node that answered this request.
    pub answered_by: String,
}

/// The state of a node.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    /// Heartbeating and taking placements.
    Ready,
    /// Taking no new placements; its workstations are being re-placed.
    Draining,
    /// No heartbeat for longer than the grace period.
    Down,
    /// Removed from the cluster.
    Left,
}

/// `GET /v1/nodes` (a list of these) and `GET /v1/nodes/{id}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct NodeInfo {
    /// The node id.
    pub id: String,
    /// The node's roles, comma-separated: `server,worker`, `server` or `worker`.
    pub role: String,
    /// `ready`, `draining`, `down` or `left`.
    pub state: NodeState,
    /// The node's address inside the mesh overlay, if it has one.
    pub mesh_addr: Option<String>,
    /// The address of the node's HTTP control API, if it serves one.
    pub api_addr: Option<String>,
    /// The node's WireGuard endpoint (UDP), if known.
    pub endpoint: Option<String>,
    /// Allocatable capacity (capacity minus the node's own reserve).
    pub capacity: Resources,
    /// Sum of the reservations placed on the node.
    pub reserved: Resources,
    /// Live usage from the last heartbeat.
    pub used: Resources,
    /// When the last heartbeat arrived, Unix ms; `None` if never.
    pub last_heartbeat_unix_ms: Option<u64>,
    /// Number of workstations placed on the node.
    pub n_workstations: u64,
    /// The most workstations the node hosts (its committed `workstations_per_node_max`; the
    /// scheduler places no more there); absent while the node has not stated one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workstations_max: Option<u32>,
    /// The isolation the node applies to user code, as its sandbox probe found it:
    /// `runs: <level>; workstations: <level>`, each `full` or `partial: <missing layers>`.
    pub isolation: String,
}

// ---------------------------------------------------------------------------------------------
// Join tokens

/// `POST /v1/tokens`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CreateTokenRequest {
    /// Lifetime in milliseconds; default 1 hour, at most 30 days.
    pub ttl_ms: Option<u64>,
    /// How many joins the token admits; default unlimited until it expires.
    pub uses: Option<u32>,
    /// Roles of the node it admits: `worker` (default), `server` or `server,worker`.
    pub role: Option<String>,
}

/// A join token as listed (never the secret).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct TokenInfo {
    /// The token id.
    pub id: String,
    /// The first characters of the token text, for recognising it.
    pub prefix: String,
    /// Roles of the node it admits.
    pub role: String,
    /// Creation time, Unix ms.
    pub created_unix_ms: u64,
    /// Expiry time, Unix ms.
    pub expires_unix_ms: u64,
    /// How many joins it admits in total (`None`: unlimited).
    pub uses_max: Option<u32>,
    /// How many joins it has admitted.
    pub uses: u32,
    /// Whether it was revoked.
    pub revoked: bool,
}

/// The answer to `POST /v1/tokens`: the token text, shown once and never again.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct TokenCreated {
    /// The token's listing.
    #[serde(flatten)]
    pub info: TokenInfo,
    /// The full token text to pass to `shoal agent --join`.
    pub token: String,
}

// ---------------------------------------------------------------------------------------------
// API keys and the audit log

/// `POST /v1/keys`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CreateKeyRequest {
    /// The tenant the key acts for (1-64 characters of `[A-Za-z0-9_.-]`).
    pub tenant: String,
    /// Whether the key is an admin key (sees all tenants, manages nodes, tokens and keys).
    #[serde(default)]
    pub admin: bool,
}

/// An API key as listed (never the secret).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct KeyInfo {
    /// The key id.
    pub id: String,
    /// The first characters of the key, for recognising it.
    pub prefix: String,
    /// The tenant it acts for.
    pub tenant: String,
    /// Whether it is an admin key.
    pub admin: bool,
    /// Creation time, Unix ms.
    pub created_unix_ms: u64,
    /// Whether it was revoked.
    pub revoked: bool,
}

/// The answer to `POST /v1/keys`: the full key, shown once and never again.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct KeyCreated {
    /// The key's listing.
    #[serde(flatten)]
    pub info: KeyInfo,
    /// The full API key, for `Authorization: Bearer <key>`.
    pub key: String,
}

/// One audit log entry.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct AuditEntry {
    /// Sequence number, increasing.
    pub seq: u64,
    /// When it happened, Unix ms.
    pub time_unix_ms: u64,
    /// The prefix of the API key that acted (or `system`).
    pub actor: String,
    /// The tenant of the actor.
    pub tenant: String,
    /// What was done, e.g. `workstation.create`.
    pub action: String,
    /// What it was done to, e.g. `workstation/ws-…`.
    pub resource: String,
    /// `ok` or the error code.
    pub outcome: String,
}

// ---------------------------------------------------------------------------------------------
// Workstations

/// The state of a workstation.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum WorkstationState {
    /// Committed, not yet running on its node.
    Pending,
    /// Its sandbox exists and it accepts processes.
    Running,
    /// Being stopped or deleted.
    Stopping,
    /// Stopped.
    Stopped,
    /// Its node could not create it.
    Failed,
}

/// `POST /v1/workstations`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CreateWorkstationRequest {
    /// A display name (at most 64 characters).
    pub name: Option<String>,
    /// Reserved CPU in millicores (at least 1).
    pub cpu_millis: u64,
    /// Reserved memory in bytes (at least 1 MiB).
    pub memory_bytes: u64,
    /// CPU ceiling in millicores (default: the reservation; at least the reservation).
    pub cpu_limit_millis: Option<u64>,
    /// Memory ceiling in bytes (default: the reservation; at least the reservation).
    pub memory_limit_bytes: Option<u64>,
    /// Network policy (default `none`).
    pub network: Option<NetworkPolicy>,
}

/// `PATCH /v1/workstations/{id}`: resize; omitted fields keep their value.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ResizeWorkstationRequest {
    /// New reserved CPU in millicores.
    pub cpu_millis: Option<u64>,
    /// New reserved memory in bytes.
    pub memory_bytes: Option<u64>,
    /// New CPU ceiling in millicores.
    pub cpu_limit_millis: Option<u64>,
    /// New memory ceiling in bytes.
    pub memory_limit_bytes: Option<u64>,
}

/// A workstation.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct Workstation {
    /// The workstation id.
    pub id: String,
    /// Its display name.
    pub name: Option<String>,
    /// The tenant that owns it.
    pub tenant: String,
    /// The node it is placed on (`None` while unplaced).
    pub node: Option<String>,
    /// `pending`, `running`, `stopping`, `stopped` or `failed`.
    pub state: WorkstationState,
    /// The placement generation (starts at 1, increases at every re-placement).
    pub generation: u64,
    /// Reserved CPU in millicores.
    pub cpu_millis: u64,
    /// Reserved memory in bytes.
    pub memory_bytes: u64,
    /// CPU ceiling in millicores.
    pub cpu_limit_millis: u64,
    /// Memory ceiling in bytes.
    pub memory_limit_bytes: u64,
    /// Network policy.
    pub network: NetworkPolicy,
    /// Creation time, Unix ms.
    pub created_unix_ms: u64,
    /// Where the home volume lives: always `node-local` for now (it is not recovered when its
    /// node is lost).
    pub home_volume: String,
    /// The isolation level actually applied to its processes (`full` or `partial: ...`).
    pub isolation: String,
    /// The log offset the next output byte will get.
    pub log_next_offset: u64,
    /// Its processes with their observed state: from the hosting node's actor there, from the
    /// leader's soft state (the hosting node's last heartbeat) elsewhere.
    #[serde(default)]
    pub processes: Vec<Process>,
    /// CPU and memory it used at its node's last heartbeat, when reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used: Option<Resources>,
    /// Why it is `pending`, in one line (e.g. "no ready worker node has 200 millicores and
    /// 64 MiB free (closest: node-3 with 150 millicores and 2 GiB free)"); present only while
    /// `state` is `pending`. An addition to SPEC's fields.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_reason: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Processes

/// The state of a workstation process.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum ProcessState {
    /// Being started.
    Starting,
    /// Running.
    Running,
    /// Exited and not restarted.
    Exited,
    /// Waiting before a restart.
    Backoff,
    /// Restarted too often too quickly; no longer restarted.
    CrashLoop,
}

/// `POST /v1/workstations/{id}/processes`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CreateProcessRequest {
    /// The program and its arguments (at least one element).
    pub argv: Vec<String>,
    /// Extra environment variables.
    pub env: Option<BTreeMap<String, String>>,
    /// Working directory (default: the home volume).
    pub cwd: Option<String>,
    /// Restart policy (default `never`).
    pub restart: Option<RestartPolicy>,
}

/// A workstation process.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct Process {
    /// The process id within its workstation (not an OS pid).
    pub id: String,
    /// The workstation it belongs to.
    pub workstation: String,
    /// The program and its arguments.
    pub argv: Vec<String>,
    /// Restart policy.
    pub restart: RestartPolicy,
    /// `starting`, `running`, `exited`, `backoff` or `crash_loop`.
    pub state: ProcessState,
    /// Exit code of the last exit, if it exited normally.
    pub exit_code: Option<i32>,
    /// Signal number of the last exit, if it was killed by a signal.
    pub signal: Option<i32>,
    /// How many times it was restarted.
    pub restarts: u32,
    /// Why it exited when that was not its own doing, e.g. `node_lost`, `killed`.
    pub reason: Option<String>,
    /// Creation time, Unix ms.
    pub created_unix_ms: u64,
}

// ---------------------------------------------------------------------------------------------
// Logs

/// Which output stream a log record came from.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum LogStream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// One log record. Exactly one of `data` (valid UTF-8) and `data_b64` is present.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct LogRecord {
    /// Offset of the record's first byte, counted since the workstation was created.
    pub offset: u64,
    /// The record's length in bytes.
    pub len: u64,
    /// The process that wrote it.
    pub proc: String,
    /// `stdout` or `stderr`.
    pub stream: LogStream,
    /// When it was captured, Unix ms.
    pub ts: u64,
    /// The bytes as text, when they are valid UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    /// The bytes in standard base64, when they are not valid UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_b64: Option<String>,
}

/// The JSON answer of `GET /v1/workstations/{id}/logs` (without `follow`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct LogsPage {
    /// The offset that was asked for.
    pub from: u64,
    /// How many of the requested bytes are no longer retained.
    pub dropped: u64,
    /// The offset to ask for next.
    pub next: u64,
    /// The records holding bytes at or after `from` (the first one cut to start at `from`).
    pub records: Vec<LogRecord>,
}

/// SSE `dropped` event data.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct DroppedEvent {
    /// How many requested bytes are no longer retained.
    pub bytes: u64,
}

/// SSE `exit` event data.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct ExitEvent {
    /// The process that exited.
    pub proc: String,
    /// Its exit code, if it exited normally.
    pub code: Option<i32>,
    /// The signal that killed it, if any.
    pub signal: Option<i32>,
}

// ---------------------------------------------------------------------------------------------
// Runs

/// One entry of `GET /v1/languages`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct Language {
    /// The name to pass as `language`.
    pub name: String,
    /// The interpreter that runs it.
    pub interpreter: String,
    /// The interpreter's version, as it reports it.
    pub version: String,
}

// ---------------------------------------------------------------------------------------------
// Health

/// `GET /healthz` and `GET /readyz`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct Health {
    /// `ok` or `not_ready`.
    pub status: String,
    /// This node's id.
    pub node: String,
    /// Why it is not ready, if it is not.
    pub reason: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Query strings

/// Query of `GET /v1/workstations/{id}/logs`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::IntoParams, PartialEq, Eq)]
#[into_params(parameter_in = Query)]
pub struct LogsQuery {
    /// First offset wanted (default 0: everything retained).
    pub from: Option<u64>,
    /// Stream as Server-Sent Events and wait for new output.
    pub follow: Option<bool>,
    /// At most this many bytes of record data in a JSON answer (default and max 5 MiB).
    pub limit_bytes: Option<u64>,
    /// Only this process's records.
    pub proc: Option<String>,
}

/// Query of `DELETE /v1/workstations/{id}/processes/{pid}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::IntoParams, PartialEq, Eq)]
#[into_params(parameter_in = Query)]
pub struct KillQuery {
    /// Signal name (`TERM`, `KILL`, `INT`, `HUP`, `QUIT`, `USR1`, `USR2`); default `TERM`.
    pub signal: Option<String>,
}

/// Query of `GET /v1/audit`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::IntoParams, PartialEq, Eq)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Only entries at or after this time, Unix ms.
    pub since_unix_ms: Option<u64>,
    /// At most this many entries (default and max 1000), newest last.
    pub limit: Option<u32>,
}
