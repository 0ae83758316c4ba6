//! The member side of the join protocol: decrypts join requests that arrive on the WireGuard
//! UDP port, applies the replay window, asks the [`Admission`] callback and answers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};

use crate::admission::{Admission, JoinCandidate, JoinRefusal};
use crate::clock;
use crate::engine::Engine;
use crate::identity::Identity;
use crate::join_wire::{self, JoinResponse};
use crate::replay_window::ReplayWindow;

/// Join requests being decided at once; more are dropped (the joiner retries).
pub const JOINS_CONCURRENT_MAX: usize = 8;
/// How long the admission callback may take.
pub const ADMISSION_TIMEOUT_MS: u64 = 10_000;

/// The admission callback, settable after start (the node may learn its role later).
pub(crate) type AdmissionSlot = Arc<RwLock<Option<Arc<dyn Admission>>>>;

pub(crate) fn spawn(
    engine: Arc<Engine>,
    identity: Identity,
    mut requests: tokio::sync::mpsc::Receiver<(Vec<u8>, SocketAddr)>,
    admission: AdmissionSlot,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let replay = Arc::new(Mutex::new(ReplayWindow::new()));
        let permits = Arc::new(tokio::sync::Semaphore::new(JOINS_CONCURRENT_MAX));
        while let Some((packet, from)) = requests.recv().await {
            let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
                tracing::warn!(from = %from, "join request dropped: too many in progress");
                continue;
            };
            let engine = Arc::clone(&engine);
            let identity = identity.clone();
            let replay = Arc::clone(&replay);
            let admission = admission.read().clone();
            tokio::spawn(async move {
                let _permit = permit;
                // Requests we cannot decrypt get no answer: we have no key to answer with,
                // and strangers learn nothing.
                let Ok(opened) = join_wire::open_request(&identity, &packet) else {
                    tracing::debug!(from = %from, "undecryptable join packet dropped");
                    return;
                };
                let request = &opened.request;
                let fresh = replay.lock().check_and_record(
                    request.nonce,
                    request.timestamp_ms,
                    clock::unix_ms(),
                );
                let response: JoinResponse = match (fresh, admission) {
                    (Err(refusal), _) => Err(refusal),
                    (Ok(()), None) => Err(JoinRefusal::Unavailable(
                        "this member does not admit nodes".into(),
                    )),
                    (Ok(()), Some(admission)) => {
                        let candidate = JoinCandidate {
                            token_id: request.token_id.clone(),
                            token_secret: request.token_secret,
                            public_key: opened.joiner_public_key,
                            endpoint: request.endpoint.unwrap_or(from),
                        };
                        tokio::time::timeout(
                            Duration::from_millis(ADMISSION_TIMEOUT_MS),
                            admission.admit(candidate),
                        )
                        .await
                        .unwrap_or_else(|_| {
                            Err(JoinRefusal::Unavailable("admission timed out".into()))
                        })
                    }
                };
                match &response {
                    Ok(accepted) => {
                        tracing::info!(joiner = %opened.joiner_public_key, node_id = accepted.node_id, mesh_addr = %accepted.mesh_addr, "join accepted")
                    }
                    Err(refusal) => {
                        tracing::info!(joiner = %opened.joiner_public_key, refusal = %refusal, "join refused")
                    }
                }
                engine.send_raw(&join_wire::seal_response(&opened.reply, &response), from);
            });
        }
    })
}
