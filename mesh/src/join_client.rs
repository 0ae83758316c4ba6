//! The joiner side: proves a token to a member through its WireGuard UDP port, before this
//! node's mesh starts (it has no mesh address yet). The socket is bound to the address the
//! node will use for WireGuard, so the member sees the endpoint it will talk to.

use std::net::SocketAddr;
use std::time::Duration;

use crate::admission::{JoinAccepted, JoinRefusal};
use crate::clock;
use crate::error::JoinError;
use crate::identity::Identity;
use crate::join_wire::{self, JoinRequest};
use crate::random;
use crate::token::JoinToken;

/// How a node joins.
#[derive(Clone, Debug)]
pub struct JoinOptions {
    /// Local address to send from: the node's WireGuard listen address.
    pub bind_addr: SocketAddr,
    /// The endpoint to announce to the cluster (`None`: what the member sees).
    pub announce_endpoint: Option<SocketAddr>,
    /// Request packets sent per member endpoint before giving up.
    pub attempts_max: u32,
    /// How long to wait for an answer to each packet.
    pub attempt_timeout_ms: u64,
}

impl JoinOptions {
    /// Defaults: 5 attempts of 2 s each.
    pub fn new(bind_addr: SocketAddr) -> Self {
        Self {
            bind_addr,
            announce_endpoint: None,
            attempts_max: 5,
            attempt_timeout_ms: 2_000,
        }
    }
}

/// Joins the cluster named by `token`. Returns the admission (node id, mesh address, peers)
/// or the member's refusal. Retries on silence and on `Unavailable`; never retries a refusal
/// about the token or identity.
pub async fn join_cluster(
    identity: &Identity,
    token: &JoinToken,
    options: &JoinOptions,
) -> Result<JoinAccepted, JoinError> {
    let socket = tokio::net::UdpSocket::bind(options.bind_addr).await?;
    let mut last_refusal = None;
    for member in &token.member_endpoints {
        let targets: Vec<SocketAddr> = match tokio::net::lookup_host(member.as_str()).await {
            Ok(addrs) => addrs.collect(),
            Err(e) => {
                tracing::warn!(member = %member, error = %e, "cannot resolve member endpoint");
                continue;
            }
        };
        let Some(target) = targets
            .iter()
            .find(|a| a.is_ipv4() == options.bind_addr.is_ipv4())
            .or(targets.first())
            .copied()
        else {
            continue;
        };
        for attempt in 1..=options.attempts_max {
            let request = JoinRequest {
                token_id: token.id.clone(),
                token_secret: token.secret,
                endpoint: options.announce_endpoint,
                timestamp_ms: clock::unix_ms(),
                nonce: random::bytes(),
            };
            let (packet, pending) =
                join_wire::seal_request(identity, &token.member_public_key, &request)
                    .map_err(|e| JoinError::Token(e.to_string()))?;
            socket.send_to(&packet, target).await?;
            tracing::info!(member = %target, attempt, "join request sent");
            let wait = async {
                let mut buf = vec![0u8; join_wire::JOIN_PACKET_BYTES_MAX];
                loop {
                    let (len, from) = socket.recv_from(&mut buf).await?;
                    if from != target || !pending.matches(&buf[..len]) {
                        continue;
                    }
                    if let Ok(response) = pending.open_response(&buf[..len]) {
                        return Ok::<_, std::io::Error>(response);
                    }
                }
            };
            match tokio::time::timeout(Duration::from_millis(options.attempt_timeout_ms), wait)
                .await
            {
                Ok(Ok(Ok(accepted))) => return Ok(accepted),
                Ok(Ok(Err(JoinRefusal::Unavailable(why)))) => {
                    tracing::warn!(member = %target, reason = %why, "member cannot admit now");
                    last_refusal = Some(JoinRefusal::Unavailable(why));
                }
                Ok(Ok(Err(refusal))) => return Err(JoinError::Refused(refusal)),
                // ICMP port unreachable surfaces as a recv error on Linux: retry like silence.
                Ok(Err(_)) | Err(_) => {}
            }
        }
    }
    match last_refusal {
        Some(refusal) => Err(JoinError::Refused(refusal)),
        None => Err(JoinError::NoAnswer {
            member: token.member_endpoints.join(","),
            attempts: options.attempts_max,
        }),
    }
}
