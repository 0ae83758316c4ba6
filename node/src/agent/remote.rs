//! Reaching a workstation hosted on another node: the caller's node checks the tenant, then
//! asks the hosting node over the mesh ([`crate::mesh_rpc::TAG_APP`], JSON bodies). The
//! hosting node serves the request from its own actors ([`AgentApp`]).

use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use shoal_mesh::{PeerInfo, StreamSender};

use super::Agent;
use crate::api::error::ApiError;
use crate::api_types::{LogsPage, Process};
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
    /// The request failed there; the text says why.
    Failed(String),
}

/// Serves [`RemoteRequest`]s from this node's workstations.
pub struct AgentApp {
    /// The agent.
    pub agent: Arc<Agent>,
}

impl AgentApp {
    async fn answer(&self, request: RemoteRequest) -> RemoteReply {
        let agent = &self.agent;
        match request {
            RemoteRequest::Logs {
                ws,
                from,
                limit_bytes,
            } => match agent.host.read_logs(&ws, from, limit_bytes).await {
                Ok(page) => RemoteReply::Logs(page),
                Err(err) => RemoteReply::Failed(err.to_string()),
            },
            RemoteRequest::Follow { .. } => {
                RemoteReply::Failed("follow is a stream, not a request".to_string())
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

    async fn handle_stream(&self, _from: PeerInfo, open: &[u8], mut sender: StreamSender) {
        let Ok(RemoteRequest::Follow { ws, from, proc }) =
            serde_json::from_slice::<RemoteRequest>(open)
        else {
            return;
        };
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
        return Err(unavailable(format!(
            "workstation `{ws_id}` has no node right now"
        )));
    };
    let body = serde_json::to_vec(request)
        .map_err(|err| ApiError::Internal(format!("encoding a mesh request: {err}")))?;
    let reply = app_request(&agent.transport, ip, &body)
        .await
        .map_err(|err| unavailable(format!("the hosting node is unreachable: {err}")))?;
    serde_json::from_slice(&reply)
        .map_err(|err| unavailable(format!("the hosting node answered badly: {err}")))
}
