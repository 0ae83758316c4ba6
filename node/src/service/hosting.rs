//! "Here, or ask the node that hosts it": the one place that decides where a request about a
//! workstation's processes and log is served, and the wire types of the relay between nodes.
//!
//! A [`HostOp`] is served by [`serve_here`] on the node that hosts the workstation, both when
//! the request arrived there and when another node relayed it (through the `relay` adapter,
//! over [`crate::mesh_rpc::TAG_APP`]). The hosting node checks the caller again against its own
//! applied state, so a relay can never do more than its caller may. Its answer, success or
//! [`ServiceError`], crosses the mesh as it is.

use serde::{Deserialize, Serialize};

use super::{Caller, ServiceError};
use crate::agent::Agent;
use crate::api_types::{CreateProcessRequest, LogsPage, Process, RunRequest, RunResult};
use crate::mesh_rpc::app_request;

/// How long a client is told to wait before it asks again about a workstation that has no
/// node: placement happens as soon as room appears, and a node lost is noticed within the
/// heartbeat grace.
pub const PENDING_RETRY_AFTER_SECS: u64 = 5;

/// Something only the node hosting workstation `ws` can do.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum HostOp {
    /// A page of the workstation's log.
    Logs {
        /// The workstation.
        ws: String,
        /// First offset.
        from: u64,
        /// Most record bytes.
        limit_bytes: usize,
        /// Only this process's records.
        proc: Option<String>,
    },
    /// The workstation's processes with their observed state.
    Processes {
        /// The workstation.
        ws: String,
    },
    /// Signals a process; `stops` (TERM or KILL, committed before) records the stop too.
    Signal {
        /// The workstation.
        ws: String,
        /// The process.
        proc: u64,
        /// Signal name (`TERM`, `KILL`, `USR1`, ...).
        signal: String,
    },
    /// Starts a process: the program is looked up on the hosting node's filesystem, the
    /// process committed and started there, and undone if it cannot start.
    StartProcess {
        /// The workstation.
        ws: String,
        /// The request as the caller sent it (validated again on the hosting node).
        request: CreateProcessRequest,
    },
}

impl HostOp {
    /// The workstation the operation is about.
    pub fn workstation(&self) -> &str {
        match self {
            HostOp::Logs { ws, .. }
            | HostOp::Processes { ws }
            | HostOp::Signal { ws, .. }
            | HostOp::StartProcess { ws, .. } => ws,
        }
    }
}

/// A request from one node to another on behalf of an API caller.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Relayed {
    /// An operation for the node hosting a workstation (request and answer).
    Host {
        /// Who asked, as the receiving node authenticated them.
        caller: Caller,
        /// What to do.
        op: HostOp,
    },
    /// Follow a workstation's log (a stream: one [`FollowOpened`] frame, then SSE chunks).
    Follow {
        /// Who asked.
        caller: Caller,
        /// The workstation.
        ws: String,
        /// First offset.
        from: u64,
        /// Only this process's records.
        proc: Option<String>,
    },
    /// Execute a run on the receiving node (a stream: one [`RunAnswer`] frame after at most
    /// the run's wall time, longer than a mesh request may take).
    Run {
        /// Who asked.
        caller: Caller,
        /// The run (boxed: it is much larger than the other requests).
        request: Box<RunRequest>,
    },
}

/// What the hosting node answers to a [`HostOp`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum HostAnswer {
    /// A log page.
    Logs(LogsPage),
    /// Processes.
    Processes(Vec<Process>),
    /// One process (a start).
    Process(Process),
    /// Done (a signal).
    Done,
}

/// The answer to [`Relayed::Host`] on the wire.
pub type HostReply = Result<HostAnswer, ServiceError>;
/// The first frame of a relayed follow: whether it opened.
pub type FollowOpened = Result<(), ServiceError>;
/// The one frame of a relayed run.
pub type RunAnswer = Result<RunResult, ServiceError>;

/// Where a workstation is served from, as this node sees it now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Whereabouts {
    /// This node hosts it (or is its placement and will once it applied it).
    Here,
    /// Another node hosts it, at this mesh address.
    Node(std::net::Ipv4Addr),
    /// No node hosts it (`pending`).
    Pending,
}

/// Where workstation `ws_id` is served: this node's hosting records first (the truth for
/// what runs here), then Raft's placement.
pub fn whereabouts(agent: &Agent, ws_id: &str) -> Whereabouts {
    if agent
        .store
        .read(|model| model.workstations.contains_key(ws_id))
    {
        return Whereabouts::Here;
    }
    let own = agent.raft.id();
    agent.raft.read(|state| {
        let Some(node) = ws_id
            .parse::<shoal_raft::model::WorkstationId>()
            .ok()
            .and_then(|id| state.workstations.get(&id))
            .and_then(|ws| ws.node)
        else {
            return Whereabouts::Pending;
        };
        if node == own {
            return Whereabouts::Here;
        }
        match state.nodes.get(&node) {
            Some(record) => Whereabouts::Node(record.mesh_addr),
            None => Whereabouts::Pending,
        }
    })
}

/// Serves `op` where the workstation is: here, or on its hosting node over the mesh. The one
/// place this choice is made.
pub async fn on_host(agent: &Agent, caller: &Caller, op: HostOp) -> HostReply {
    match whereabouts(agent, op.workstation()) {
        Whereabouts::Here => serve_here(agent, caller, op).await,
        Whereabouts::Pending => Err(no_host_error(agent, op.workstation())),
        Whereabouts::Node(ip) => {
            let ws = op.workstation().to_string();
            let body = serde_json::to_vec(&Relayed::Host {
                caller: caller.clone(),
                op,
            })
            .map_err(|err| ServiceError::Internal(format!("encoding a mesh request: {err}")))?;
            let reply = app_request(&agent.transport, ip, &body)
                .await
                .map_err(|err| {
                    ServiceError::unavailable(format!(
                        "the node hosting workstation `{ws}` is unreachable: {err}"
                    ))
                })?;
            serde_json::from_slice::<HostReply>(&reply).map_err(|err| {
                ServiceError::unavailable(format!(
                    "the node hosting workstation `{ws}` answered badly: {err}"
                ))
            })?
        }
    }
}

/// Serves `op` on this node, the one that hosts the workstation: for requests that arrived
/// here and for those relayed from another node alike. The caller's access is checked against
/// this node's own applied state.
pub async fn serve_here(agent: &Agent, caller: &Caller, op: HostOp) -> HostReply {
    catch_up(agent, op.workstation()).await;
    match op {
        HostOp::Logs {
            ws,
            from,
            limit_bytes,
            proc,
        } => {
            super::workstations::visible(agent, caller, &ws)?;
            let mut page = agent.host.read_logs(&ws, from, limit_bytes).await?;
            if let Some(proc) = &proc {
                page.records.retain(|record| &record.proc == proc);
            }
            Ok(HostAnswer::Logs(page))
        }
        HostOp::Processes { ws } => {
            let record = super::workstations::visible(agent, caller, &ws)?;
            Ok(HostAnswer::Processes(
                super::processes::hosted_processes(agent, &record).await?,
            ))
        }
        HostOp::Signal { ws, proc, signal } => {
            super::workstations::visible(agent, caller, &ws)?;
            super::processes::signal_here(agent, &ws, proc, &signal).await?;
            Ok(HostAnswer::Done)
        }
        HostOp::StartProcess { ws, request } => {
            let record = super::workstations::visible(agent, caller, &ws)?;
            Ok(HostAnswer::Process(
                super::processes::start_here(agent, caller, &record, request).await?,
            ))
        }
    }
}

/// A request may reach the hosting node before it has seen the placement (a worker's mirror
/// syncs every 250 ms; the caller's node may have the new state first): when `ws` is not
/// hosted here yet, sync once and reconcile before answering.
pub async fn catch_up(agent: &Agent, ws: &str) {
    let hosted = agent
        .store
        .read(|model| model.workstations.contains_key(ws));
    if !hosted {
        agent.raft.after_write().await;
        crate::agent::placement::reconcile(agent).await;
    }
}

/// Why workstation `ws_id` has no node, in one line: the scheduler's pending reason
/// ([`shoal_raft::scheduler::pending_reason`]) against this node's applied state; `None` if
/// the state does not know it.
pub fn pending_reason_of(agent: &Agent, ws_id: &str) -> Option<String> {
    let id: shoal_raft::model::WorkstationId = ws_id.parse().ok()?;
    agent.raft.read(|state| {
        let ws = state.workstations.get(&id)?;
        Some(
            shoal_raft::scheduler::pending_reason(state, ws.node, &ws.spec.reservation).to_string(),
        )
    })
}

/// The answer to a request that needs the node hosting `ws_id` while it has none (it is
/// `pending`): 503 with `Retry-After`, naming the workstation, its state and why.
pub fn no_host_error(agent: &Agent, ws_id: &str) -> ServiceError {
    let reason = pending_reason_of(agent, ws_id)
        .unwrap_or_else(|| "it is not placed on any node".to_string());
    ServiceError::Unavailable {
        message: format!(
            "workstation `{ws_id}` is pending: {reason}; its log and running processes are \
             served once a node runs it"
        ),
        retry_after_secs: PENDING_RETRY_AFTER_SECS,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A relay names its caller but never carries the caller's key: the node hosting a
    /// workstation (possibly a worker-only node) must not collect its callers' keys.
    #[test]
    fn a_relayed_request_does_not_carry_the_callers_key() {
        let caller = Caller {
            key_id: "key-1".to_string(),
            prefix: "shoal_admin".to_string(),
            tenant: "admin".to_string(),
            admin: true,
            secret: super::super::caller::KeySecret("shoal_the_secret_key".to_string()),
        };
        let relayed = Relayed::Host {
            caller,
            op: HostOp::Processes {
                ws: "ws-1".to_string(),
            },
        };
        let json =
            String::from_utf8(serde_json::to_vec(&relayed).unwrap_or_default()).unwrap_or_default();
        assert!(json.contains("key-1"), "{json}");
        assert!(!json.contains("shoal_the_secret_key"), "{json}");
    }

    /// Every error kind crosses the mesh with its kind, message and retry hint, so the caller's
    /// node answers exactly what the hosting node decided.
    #[test]
    fn a_service_error_crosses_the_mesh_intact() {
        let errors = [
            ServiceError::InvalidInput("field `argv`: empty".to_string()),
            ServiceError::Conflict("process 1 is not running".to_string()),
            ServiceError::TooLarge("code".to_string()),
            ServiceError::RateLimited {
                message: "busy".to_string(),
                retry_after_secs: 3,
            },
            ServiceError::Unavailable {
                message: "stopping".to_string(),
                retry_after_secs: 7,
            },
            ServiceError::Internal("disk".to_string()),
            ServiceError::NotFound("x".to_string()),
            ServiceError::Forbidden("admin".to_string()),
        ];
        for err in errors {
            let reply: HostReply = Err(err.clone());
            let json = serde_json::to_vec(&reply).unwrap_or_default();
            let back: HostReply = serde_json::from_slice(&json).unwrap_or(Ok(HostAnswer::Done));
            assert_eq!(back.err(), Some(err));
        }
    }
}
