//! Reaching a workstation hosted on another node: the caller's node checks the tenant, then
//! asks the hosting node over the mesh ([`crate::mesh_rpc::TAG_APP`], JSON bodies). The
//! hosting node serves the request from its own actors ([`AgentApp`]).

use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use shoal_mesh::{PeerInfo, StreamSender};

use super::Agent;
use crate::api::error::ApiError;
use crate::api_types::{LogsPage, Process, RunRequest, RunResult};
use crate::mesh_rpc::{app_request, AppHandler};

/// A request to the node hosting a workstation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum RemoteRequest {
    /// A page of the workstation's log.
    Logs {
        /// The workstation.
        ws: String,
        /// First offset.
        from: u64,
        /// Most record bytes.
        limit_bytes: usize,
    },
    /// The workstation's processes with their observed state.
    Processes {
        /// The workstation.
        ws: String,
    },
    /// Follows the log from `from` (a stream of SSE chunks, see `api::logs::sse_chunk`).
    Follow {
        /// The workstation.
        ws: String,
        /// First offset.
        from: u64,
        /// Only this process's records.
        proc: Option<String>,
    },
    /// Signals a process (TERM and KILL stop it for good).
    Kill {
        /// The workstation.
        ws: String,
        /// The process.
        proc: u64,
        /// Signal name (`TERM`, `KILL`, ...).
        signal: String,
    },
    /// Executes a run here (a stream: the answer is one [`RunReply`] frame after at most the
    /// run's wall time). The caller's node authenticated it.
    Run {
        /// The caller's tenant (for the log line).
        tenant: String,
        /// The run (boxed: it is much larger than the other requests).
        request: Box<RunRequest>,
    },
}

/// An API error carried across the mesh, so that the caller's node answers with the status
/// the executing node chose (400, 413, 429 with `Retry-After`, ...).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RemoteError {
    /// HTTP status.
    pub status: u16,
    /// The message.
    pub message: String,
    /// `Retry-After` seconds, for 429 and 503.
    pub retry_after_secs: u64,
}

impl RemoteError {
    /// Carries `err`.
    pub fn of(err: &ApiError) -> RemoteError {
        use actix_web::ResponseError as _;
        let retry_after_secs = match err {
            ApiError::RateLimited {
                retry_after_secs, ..
            }
            | ApiError::Unavailable {
                retry_after_secs, ..
            } => *retry_after_secs,
            _ => 0,
        };
        RemoteError {
            status: err.status_code().as_u16(),
            message: err.to_string(),
            retry_after_secs,
        }
    }

    /// The error again, as the caller's node answers it.
    pub fn into_api_error(self) -> ApiError {
        let RemoteError {
            status,
            message,
            retry_after_secs,
        } = self;
        match status {
            400 => ApiError::InvalidInput(message),
            401 => ApiError::Unauthorized(message),
            403 => ApiError::Forbidden(message),
            404 => ApiError::NotFound(message),
            409 => ApiError::Conflict(message),
            413 => ApiError::TooLarge(message),
            422 => ApiError::Unsatisfiable(message),
            429 => ApiError::RateLimited {
                message,
                retry_after_secs: retry_after_secs.max(1),
            },
            503 => ApiError::Unavailable {
                message,
                retry_after_secs: retry_after_secs.max(1),
            },
            _ => ApiError::Internal(message),
        }
    }
}

/// The hosting node's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum RemoteReply {
    /// A log page.
    Logs(LogsPage),
    /// Processes.
    Processes(Vec<Process>),
    /// Done.
    Done,
    /// An API error at the hosting node, with its status.
    Error(RemoteError),
    /// The request failed there; the text says why.
    Failed(String),
}

/// The executing node's answer to [`RemoteRequest::Run`] (the one frame of the run's stream).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum RunReply {
    /// The run's result (boxed: it holds up to 128 KiB of output).
    Done(Box<RunResult>),
    /// An API error at the executing node.
    Error(RemoteError),
}

/// Serves [`RemoteRequest`]s from this node's workstations.
pub struct AgentApp {
    /// The agent.
    pub agent: Arc<Agent>,
}

impl AgentApp {
    /// A request may reach the hosting node before it has seen the placement (a worker's
    /// mirror syncs every 250 ms; the caller's node may have the new state first): when `ws`
    /// is not hosted here yet, sync once and reconcile before answering.
    async fn catch_up(&self, ws: &str) {
        let hosted = self
            .agent
            .store
            .read(|model| model.workstations.contains_key(ws));
        if !hosted {
            self.agent.raft.after_write().await;
            super::placement::reconcile(&self.agent).await;
        }
    }

    async fn answer(&self, request: RemoteRequest) -> RemoteReply {
        let agent = &self.agent;
        match &request {
            RemoteRequest::Logs { ws, .. }
            | RemoteRequest::Processes { ws }
            | RemoteRequest::Follow { ws, .. }
            | RemoteRequest::Kill { ws, .. } => self.catch_up(ws).await,
            RemoteRequest::Run { .. } => {}
        }
        match request {
            RemoteRequest::Logs {
                ws,
                from,
                limit_bytes,
            } => match agent.host.read_logs(&ws, from, limit_bytes).await {
                Ok(page) => RemoteReply::Logs(page),
                Err(err) => RemoteReply::Failed(err.to_string()),
            },
            RemoteRequest::Follow { .. } | RemoteRequest::Run { .. } => {
                RemoteReply::Failed("follow and run are streams, not requests".to_string())
            }
            RemoteRequest::Kill { ws, proc, signal } => {
                let signal = match super::host::parse_signal(&signal) {
                    Ok(signal) => signal,
                    Err(err) => return RemoteReply::Failed(err.to_string()),
                };
                let stops = matches!(
                    signal,
                    nix::sys::signal::Signal::SIGTERM | nix::sys::signal::Signal::SIGKILL
                );
                match crate::api::workstations::kill_here(agent, &ws, proc, signal, stops).await {
                    Ok(()) => RemoteReply::Done,
                    Err(err) => RemoteReply::Failed(err.to_string()),
                }
            }
            RemoteRequest::Processes { ws } => {
                let Some(record) = agent
                    .store
                    .read(|model| model.workstations.get(&ws).cloned())
                else {
                    return RemoteReply::Failed(format!("workstation `{ws}` is not hosted here"));
                };
                let statuses = agent.host.processes(&ws).await.unwrap_or_default();
                RemoteReply::Processes(
                    record
                        .processes
                        .values()
                        .map(|spec| {
                            let status = statuses.iter().find(|status| status.id.0 == spec.id);
                            super::host::process_json(&ws, spec, status)
                        })
                        .collect(),
                )
            }
        }
    }
}

#[async_trait::async_trait]
impl AppHandler for AgentApp {
    async fn handle(&self, _from: PeerInfo, body: &[u8]) -> Bytes {
        let reply = match serde_json::from_slice::<RemoteRequest>(body) {
            Ok(request) => self.answer(request).await,
            Err(err) => RemoteReply::Failed(format!("undecodable request: {err}")),
        };
        Bytes::from(serde_json::to_vec(&reply).unwrap_or_default())
    }

    async fn handle_stream(&self, from_peer: PeerInfo, open: &[u8], mut sender: StreamSender) {
        let (ws, from, proc) = match serde_json::from_slice::<RemoteRequest>(open) {
            Ok(RemoteRequest::Follow { ws, from, proc }) => (ws, from, proc),
            Ok(RemoteRequest::Run { tenant, request }) => {
                tracing::debug!(from = %from_peer.mesh_addr, tenant = %tenant, "a run forwarded here");
                let reply =
                    match crate::api::runs::execute_here(&self.agent, &tenant, *request).await {
                        Ok(result) => RunReply::Done(Box::new(result)),
                        Err(err) => RunReply::Error(RemoteError::of(&err)),
                    };
                if let Ok(bytes) = serde_json::to_vec(&reply) {
                    let _ = sender.send(&bytes).await;
                }
                sender.finish();
                return;
            }
            _ => return,
        };
        self.catch_up(&ws).await;
        let Ok(mut follower) = self.agent.host.follow(&ws, from).await else {
            return;
        };
        // The hosting node renders the SSE chunks; the caller's node relays them as they are.
        while let Some(event) = follower.recv().await {
            if let Some(chunk) = crate::api::logs::sse_chunk(&event, proc.as_deref()) {
                if sender.send(&chunk).await.is_err() {
                    // The caller went away: dropping the follower unsubscribes.
                    return;
                }
            }
        }
        sender.finish();
    }
}

/// How long a client is told to wait before it asks again about a workstation that has no
/// node: placement happens as soon as room appears, and a node lost is noticed within the
/// heartbeat grace.
pub const PENDING_RETRY_AFTER_SECS: u64 = 5;

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
pub fn no_host_error(agent: &Agent, ws_id: &str) -> ApiError {
    let reason = pending_reason_of(agent, ws_id)
        .unwrap_or_else(|| "it is not placed on any node".to_string());
    ApiError::Unavailable {
        message: format!(
            "workstation `{ws_id}` is pending: {reason}; its log and running processes are \
             served once a node runs it"
        ),
        retry_after_secs: PENDING_RETRY_AFTER_SECS,
    }
}

/// Sends `request` to the node hosting workstation `ws_id` (per Raft's placement).
pub async fn ask_host(
    agent: &Agent,
    ws_id: &str,
    request: &RemoteRequest,
) -> Result<RemoteReply, ApiError> {
    let unavailable = |why: String| ApiError::unavailable(why);
    let ip = agent.raft.read(|state| {
        let id: shoal_raft::model::WorkstationId = ws_id.parse().ok()?;
        let node = state.workstations.get(&id)?.node?;
        state.nodes.get(&node).map(|record| record.mesh_addr)
    });
    let Some(ip) = ip else {
        return Err(no_host_error(agent, ws_id));
    };
    let body = serde_json::to_vec(request)
        .map_err(|err| ApiError::Internal(format!("encoding a mesh request: {err}")))?;
    let reply = app_request(&agent.transport, ip, &body)
        .await
        .map_err(|err| unavailable(format!("the hosting node is unreachable: {err}")))?;
    serde_json::from_slice(&reply)
        .map_err(|err| unavailable(format!("the hosting node answered badly: {err}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_api_error_crosses_the_mesh_with_its_status_and_retry_after() {
        let errors = [
            ApiError::InvalidInput("field `argv`: empty".to_string()),
            ApiError::TooLarge("code".to_string()),
            ApiError::RateLimited {
                message: "busy".to_string(),
                retry_after_secs: 3,
            },
            ApiError::Unavailable {
                message: "stopping".to_string(),
                retry_after_secs: 1,
            },
            ApiError::Internal("disk".to_string()),
            ApiError::NotFound("x".to_string()),
        ];
        for err in errors {
            let carried = RemoteError::of(&err);
            let json = serde_json::to_vec(&RunReply::Error(carried.clone())).unwrap_or_default();
            let Ok(RunReply::Error(back)) = serde_json::from_slice::<RunReply>(&json) else {
                panic!("the reply did not round-trip");
            };
            let again = back.into_api_error();
            assert_eq!(again.code(), err.code());
            assert_eq!(again.to_string(), err.to_string());
            assert_eq!(RemoteError::of(&again), carried);
        }
    }
}
