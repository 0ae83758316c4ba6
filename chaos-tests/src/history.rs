//! The history of a chaos run: every operation the workload issued, with its invoke and
//! completion times and an ok/fail/unknown outcome, and every observation the harness made of
//! the cluster (leaders, placements, capacity, log reads, leftovers, faults).
//!
//! Times are milliseconds since the start of the run ([`crate::clock::RunClock`]). The checkers
//! read a finished `History`; nothing here does I/O.

use serde::{Deserialize, Serialize};

use crate::nemesis::FaultMode;

/// Index of a node in the harness (0-based, the order nodes were started in).
pub type NodeIdx = usize;

/// How an operation ended, as far as the client can tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The cluster acknowledged it: it took effect and must never be lost.
    Ok,
    /// The cluster definitely refused it (e.g. 4xx, 503 no leader, connection refused before
    /// sending): it did not take effect.
    Fail,
    /// The client cannot tell (timeout, connection reset after sending): it may or may not have
    /// taken effect; checkers must accept both.
    Unknown,
}

/// What a workload operation asked for. Workstations are named by the harness (`key`), so that
/// an operation whose outcome is unknown can still be matched with what the cluster reports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum OpKind {
    /// `POST /v1/workstations` with `name = key`.
    CreateWorkstation {
        /// Harness name of the workstation.
        key: String,
        /// Reserved CPU.
        cpu_millis: u64,
        /// Reserved memory.
        memory_bytes: u64,
    },
    /// `DELETE /v1/workstations/{id}`.
    DeleteWorkstation {
        /// Harness name of the workstation.
        key: String,
    },
    /// `PATCH /v1/workstations/{id}`.
    ResizeWorkstation {
        /// Harness name of the workstation.
        key: String,
        /// New reserved CPU.
        cpu_millis: u64,
        /// New reserved memory.
        memory_bytes: u64,
    },
    /// `POST /v1/workstations/{id}/processes`.
    ExecProcess {
        /// Harness name of the workstation.
        key: String,
        /// The command line.
        argv: Vec<String>,
    },
    /// `POST /v1/runs`.
    Run {
        /// The command line.
        argv: Vec<String>,
    },
    /// `GET /v1/workstations/{id}/logs?follow=true`, resumed from the last offset.
    FollowLogs {
        /// Harness name of the workstation.
        key: String,
    },
    /// `POST /v1/tokens`: a small committed write, issued continuously to measure failover.
    CreateToken,
    /// `POST /v1/tokens` then `shoal agent --join TOKEN` for a new node.
    JoinNode {
        /// The joining node.
        node: NodeIdx,
    },
}

impl OpKind {
    /// Whether the operation changes durable state (counts for failover and "no acknowledged
    /// write lost").
    pub fn is_write(&self) -> bool {
        !matches!(self, OpKind::FollowLogs { .. } | OpKind::Run { .. })
    }

    /// The short name used in reports.
    pub fn name(&self) -> &'static str {
        match self {
            OpKind::CreateWorkstation { .. } => "create_workstation",
            OpKind::DeleteWorkstation { .. } => "delete_workstation",
            OpKind::ResizeWorkstation { .. } => "resize_workstation",
            OpKind::ExecProcess { .. } => "exec_process",
            OpKind::Run { .. } => "run",
            OpKind::FollowLogs { .. } => "follow_logs",
            OpKind::CreateToken => "create_token",
            OpKind::JoinNode { .. } => "join_node",
        }
    }

    /// The workstation the operation is about, if any.
    pub fn workstation_key(&self) -> Option<&str> {
        match self {
            OpKind::CreateWorkstation { key, .. }
            | OpKind::DeleteWorkstation { key }
            | OpKind::ResizeWorkstation { key, .. }
            | OpKind::ExecProcess { key, .. }
            | OpKind::FollowLogs { key } => Some(key),
            OpKind::Run { .. } | OpKind::CreateToken | OpKind::JoinNode { .. } => None,
        }
    }
}

/// One operation of the workload: invoked at `invoke_ms`, completed at `complete_ms`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operation {
    /// Sequence number, unique in the history.
    pub id: u64,
    /// The node whose API the request was sent to.
    pub node: NodeIdx,
    /// What was asked.
    pub kind: OpKind,
    /// When the request was sent.
    pub invoke_ms: u64,
    /// When the answer (or the timeout) came.
    pub complete_ms: u64,
    /// How it ended.
    pub outcome: Outcome,
    /// The error text for `Fail` and `Unknown`.
    pub error: Option<String>,
}

/// A node's answer to "who leads, in which term" (`GET /v1/cluster`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderObservation {
    /// When the answer came.
    pub at_ms: u64,
    /// The node that answered.
    pub observer: NodeIdx,
    /// The Raft term it reported.
    pub term: u64,
    /// The leader's node id it reported, if it knows one.
    pub leader: Option<String>,
}

/// A workstation seen running on a node at a moment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunningObservation {
    /// When it was seen.
    pub at_ms: u64,
    /// The node id it was running on.
    pub node: String,
    /// Harness name of the workstation.
    pub key: String,
    /// The placement generation reported.
    pub generation: u64,
}

/// One node's capacity and reservations as reported by the cluster at a moment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapacityObservation {
    /// When it was seen.
    pub at_ms: u64,
    /// The node id.
    pub node: String,
    /// Allocatable CPU (capacity minus the node's own reserve).
    pub cpu_allocatable_millis: u64,
    /// Allocatable memory.
    pub memory_allocatable_bytes: u64,
    /// CPU reservations the cluster reports for the node.
    pub cpu_reserved_millis: u64,
    /// Memory reservations the cluster reports for the node.
    pub memory_reserved_bytes: u64,
    /// The reservations of the workstations placed on the node in the same snapshot, summed by
    /// the harness (cpu millis, memory bytes); checked too, so a wrong report cannot hide an
    /// over-commit.
    pub placed_reservations: Vec<(u64, u64)>,
}

/// One event of a log follow, in the order the client saw it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum LogEvent {
    /// A (re)connection asking for bytes from `from` on.
    Connect {
        /// The offset asked for.
        from: u64,
    },
    /// The server reported that `bytes` requested bytes are no longer retained.
    Dropped {
        /// How many bytes were lost.
        bytes: u64,
    },
    /// A record covering `[offset, offset + len)`.
    Record {
        /// Its first byte's offset.
        offset: u64,
        /// Its length in bytes.
        len: u64,
    },
}

/// Everything one follower of one workstation's log saw.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogFollow {
    /// Harness name of the workstation.
    pub key: String,
    /// The events in order.
    pub events: Vec<LogEvent>,
}

/// A node's answer about leadership: the term and the leader it names (if any).
pub type LeaderAnswer = (u64, Option<String>);

/// A snapshot of the whole cluster, taken by asking every node the harness believes alive.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterSnapshot {
    /// When it was taken.
    pub at_ms: u64,
    /// Per node the harness expects to be alive: (node, reported term, reported leader), or
    /// `None` if the node did not answer.
    pub leaders: Vec<(NodeIdx, Option<LeaderAnswer>)>,
    /// Every node's state (`ready`, `down`, ...) as the cluster reports it, for the nodes the
    /// harness expects to be alive.
    pub node_states: Vec<(String, String)>,
    /// Whether every workstation's desired state equals its observed state.
    pub desired_equals_actual: bool,
    /// When not: which workstations differ and how (`key: state`), for the report.
    #[serde(default)]
    pub differences: Vec<String>,
    /// Workstations left pending because they fit on no ready worker node (see
    /// [`crate::checkers::desired_state`]): right, so not differences; kept for the report.
    #[serde(default)]
    pub pending_fits_nowhere: Vec<String>,
}

/// What a scan of a node's host state found that still belongs to deleted workstations.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeftoverScan {
    /// When the scan ran.
    pub at_ms: u64,
    /// The deleted workstation ids that were looked for.
    pub deleted_ids: Vec<String>,
    /// Processes (pid and command line) whose cgroup or command names a deleted workstation.
    pub processes: Vec<String>,
    /// Cgroup directories naming a deleted workstation.
    pub cgroups: Vec<String>,
    /// Mount points naming a deleted workstation.
    pub mounts: Vec<String>,
}

/// An expected reaction of the cluster to a fault, and whether it happened.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Expectation {
    /// What should have happened, e.g. "node refuses to start on corrupted Raft data".
    pub description: String,
    /// Whether it did.
    pub met: bool,
    /// What was seen instead, when not met.
    pub detail: Option<String>,
}

/// One fault as it was injected.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultRecord {
    /// Position in the nemesis schedule.
    pub seq: u64,
    /// The fault mode.
    pub mode: FaultMode,
    /// The nodes it hit.
    pub targets: Vec<NodeIdx>,
    /// When it started; `None` if it could not be injected.
    pub start_ms: Option<u64>,
    /// When it was healed.
    pub end_ms: Option<u64>,
    /// Why it could not be injected, if it could not.
    pub error: Option<String>,
    /// The reaction the cluster owed, if the mode has one.
    pub expectation: Option<Expectation>,
}

impl FaultRecord {
    /// Whether the fault was actually injected.
    pub fn fired(&self) -> bool {
        self.start_ms.is_some() && self.error.is_none()
    }
}

/// The final state read from the cluster after the run, for "no acknowledged write lost".
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FinalState {
    /// Whether the final read succeeded (if not, the checker cannot pass).
    pub read_ok: bool,
    /// Workstations present at the end: (key, cpu millis, memory bytes).
    pub workstations: Vec<(String, u64, u64)>,
    /// Processes present at the end: (workstation key, argv joined by spaces).
    pub processes: Vec<(String, String)>,
    /// Workstations whose processes could not be read, with why: (workstation key, reason).
    /// Only a workstation without a node qualifies (its node answers 503 "has no node right
    /// now"); any other failed read fails the whole read. The process checks skip these.
    #[serde(default)]
    pub processes_unknown: Vec<(String, String)>,
    /// Node indices the cluster lists as members at the end.
    pub member_nodes: Vec<NodeIdx>,
}

/// Everything recorded during one run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    /// The workload's operations, in invoke order.
    pub operations: Vec<Operation>,
    /// Leader observations.
    pub leaders: Vec<LeaderObservation>,
    /// Placement observations.
    pub running: Vec<RunningObservation>,
    /// Capacity observations.
    pub capacity: Vec<CapacityObservation>,
    /// Log follows.
    pub log_follows: Vec<LogFollow>,
    /// Cluster snapshots for convergence.
    pub snapshots: Vec<ClusterSnapshot>,
    /// Leftover scans after deletes.
    pub leftovers: Vec<LeftoverScan>,
    /// Faults as injected.
    pub faults: Vec<FaultRecord>,
    /// When the nemesis paused mid-run (a soak's round ended, every fault healed) to let the
    /// cluster converge, ms since the run started.
    #[serde(default)]
    pub pauses_ms: Vec<u64>,
    /// Leader kills (fault `seq`) that fired although the cluster had not settled, with why
    /// (see [`crate::nemesis::kill_precondition`]); `stats` reports their failover apart.
    #[serde(default)]
    pub unsettled_kills: Vec<(u64, String)>,
    /// The final state.
    pub final_state: FinalState,
}

impl History {
    /// When the last fault was healed (or the last fault start, if one was never healed).
    pub fn faults_end_ms(&self) -> Option<u64> {
        self.faults
            .iter()
            .filter_map(|f| f.end_ms.or(f.start_ms))
            .max()
    }
}
