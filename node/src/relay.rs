//! The mesh relay server: the adapter through which other nodes reach this node's application
//! ([`crate::mesh_rpc::TAG_APP`], JSON bodies). Like the HTTP API, it only decodes, calls the
//! service, and encodes: a [`Relayed`] request names its caller, which the service checks
//! again against this node's applied state before anything is done.

use std::sync::Arc;

use bytes::Bytes;
use shoal_mesh::{PeerInfo, StreamSender};

use crate::agent::Agent;
use crate::mesh_rpc::AppHandler;
use crate::service::hosting::{FollowOpened, HostReply, Relayed, RunAnswer};
use crate::service::logs::ChunkSource;
use crate::service::{self, caller, ServiceError};

/// Serves [`Relayed`] requests from other nodes.
pub struct RelayServer {
    /// The agent.
    pub agent: Arc<Agent>,
}

/// The relay server for `agent` (what [`crate::agent::Adapters::relay`] builds).
pub fn server(agent: Arc<Agent>) -> Arc<dyn AppHandler> {
    Arc::new(RelayServer { agent })
}

impl RelayServer {
    fn refused(from: &PeerInfo, why: &ServiceError) {
        tracing::warn!(from = %from.mesh_addr, error = %why, "a relayed request was refused");
    }
}

#[async_trait::async_trait]
impl AppHandler for RelayServer {
    async fn handle(&self, from: PeerInfo, body: &[u8]) -> Bytes {
        let reply: HostReply = match serde_json::from_slice::<Relayed>(body) {
            Ok(Relayed::Host { caller, op }) => match caller::recheck(&self.agent, &caller) {
                Ok(()) => service::hosting::serve_here(&self.agent, &caller, op).await,
                Err(err) => {
                    Self::refused(&from, &err);
                    Err(err)
                }
            },
            Ok(Relayed::Follow { .. } | Relayed::Run { .. }) => Err(ServiceError::InvalidInput(
                "follow and run are streams, not requests".to_string(),
            )),
            Err(err) => Err(ServiceError::InvalidInput(format!(
                "undecodable relayed request: {err}"
            ))),
        };
        match serde_json::to_vec(&reply) {
            Ok(bytes) => Bytes::from(bytes),
            Err(err) => {
                tracing::error!(error = %err, "could not encode a relay answer");
                Bytes::new()
            }
        }
    }

    async fn handle_stream(&self, from: PeerInfo, open: &[u8], mut sender: StreamSender) {
        let agent = &self.agent;
        match serde_json::from_slice::<Relayed>(open) {
            Ok(Relayed::Run { caller, request }) => {
                tracing::debug!(from = %from.mesh_addr, tenant = %caller.tenant, "a run relayed here");
                let answer: RunAnswer = match caller::recheck(agent, &caller) {
                    Ok(()) => service::runs::execute_here(agent, &caller, *request).await,
                    Err(err) => {
                        Self::refused(&from, &err);
                        Err(err)
                    }
                };
                send_frame(&mut sender, &answer).await;
                sender.finish();
            }
            Ok(Relayed::Follow {
                caller,
                ws,
                from: offset,
                proc,
            }) => {
                let opened = match caller::recheck(agent, &caller) {
                    Ok(()) => service::logs::follow_here(agent, &caller, &ws, offset, proc).await,
                    Err(err) => Err(err),
                };
                let mut follower = match opened {
                    Ok(follower) => follower,
                    Err(err) => {
                        Self::refused(&from, &err);
                        send_frame(&mut sender, &FollowOpened::Err(err)).await;
                        sender.finish();
                        return;
                    }
                };
                if !send_frame(&mut sender, &FollowOpened::Ok(())).await {
                    return;
                }
                // The hosting node renders the SSE chunks; the caller's node relays them.
                while let Some(chunk) = follower.next_chunk().await {
                    if let Some(chunk) = chunk {
                        if sender.send(&chunk).await.is_err() {
                            // The caller went away: dropping the follower unsubscribes.
                            return;
                        }
                    }
                }
                sender.finish();
            }
            Ok(Relayed::Host { .. }) | Err(_) => {
                let err = ServiceError::InvalidInput("not a stream request".to_string());
                send_frame(&mut sender, &FollowOpened::Err(err)).await;
                sender.finish();
            }
        }
    }
}

/// Sends one JSON frame; whether it went out.
async fn send_frame(sender: &mut StreamSender, value: &impl serde::Serialize) -> bool {
    match serde_json::to_vec(value) {
        Ok(bytes) => sender.send(&bytes).await.is_ok(),
        Err(err) => {
            tracing::error!(error = %err, "could not encode a relay frame");
            false
        }
    }
}
