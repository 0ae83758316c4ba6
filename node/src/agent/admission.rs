//! The member side of a join: the mesh hands a verified [`JoinCandidate`] (token proven, public
//! key proven by the WireGuard handshake) to [`RaftAdmission`], which proposes `RegisterNode`
//! through Raft (forwarded to the leader when this member does not lead). The state machine
//! checks the token's hash, uses, expiry and revocation, and allocates the node's id and mesh
//! address; the answer carries the current members as peers.

use std::net::SocketAddr;

use shoal_mesh::{
    Admission, JoinAccepted, JoinCandidate, JoinRefusal, NodePublicKey, PeerSpec, Transport,
    DEFAULT_QUIC_PORT,
};
use shoal_raft::command::{Admission as RaftAdmissionKind, NodeRegistration};
use shoal_raft::model::{NodeState, Resources, Roles};
use shoal_raft::{Action, Command, Outcome, RaftNode, Refusal};

use crate::clock;
use crate::mesh_rpc::forward_write;

/// The cluster's hash of a join token's secret, as committed to Raft: lowercase hex of the
/// mesh crate's SHA-256 of the secret bytes.
pub fn token_secret_sha256(secret: &[u8; 32]) -> String {
    hex::encode(shoal_mesh::token::hash_secret(secret))
}

/// Admits joiners through Raft.
pub struct RaftAdmission {
    /// This member's Raft node.
    pub raft: RaftNode,
    /// This member's mesh transport (to forward the registration to the leader).
    pub transport: Transport,
}

/// The mesh peers a node should have: every node of the committed list that has not left,
/// except the one with `own_key`.
pub fn peers_from_state(raft: &RaftNode, own_key: &str) -> Vec<PeerSpec> {
    raft.read(|state| {
        state
            .nodes
            .values()
            .filter(|node| node.state != NodeState::Left && node.wg_public_key != own_key)
            .filter_map(|node| {
                Some(PeerSpec {
                    public_key: NodePublicKey::parse(&node.wg_public_key).ok()?,
                    endpoint: node.endpoint.parse::<SocketAddr>().ok(),
                    mesh_addr: node.mesh_addr,
                })
            })
            .collect()
    })
}

fn refusal_of(refusal: &Refusal) -> JoinRefusal {
    match refusal {
        Refusal::TokenRejected { reason } => match reason.as_str() {
            "expired" => JoinRefusal::TokenExpired,
            "revoked" => JoinRefusal::TokenRevoked,
            "exhausted" => JoinRefusal::TokenUsedUp,
            _ => JoinRefusal::InvalidToken,
        },
        Refusal::Conflict { reason } if reason.contains("left") || reason.contains("removed") => {
            JoinRefusal::RemovedIdentity
        }
        other => JoinRefusal::Unavailable(other.to_string()),
    }
}

#[async_trait::async_trait]
impl Admission for RaftAdmission {
    async fn admit(&self, candidate: JoinCandidate) -> Result<JoinAccepted, JoinRefusal> {
        let joiner_key = candidate.public_key.to_base64();
        // The joiner commits its own capacity and API address once it runs (it knows them;
        // the join packet does not carry them).
        let registration = NodeRegistration {
            admission: RaftAdmissionKind::Token {
                secret_sha256: token_secret_sha256(&candidate.token_secret),
            },
            wg_public_key: joiner_key.clone(),
            endpoint: candidate.endpoint.to_string(),
            rpc_port: DEFAULT_QUIC_PORT,
            api_addr: None,
            roles: Roles::SERVER_WORKER,
            capacity: Resources::new(0, 0),
            reserve: Resources::new(0, 0),
        };
        let command = Command::new(
            clock::now_unix_ms(),
            "join",
            Action::RegisterNode(registration),
        );
        let response = forward_write(&self.raft, &self.transport, command)
            .await
            .map_err(|err| JoinRefusal::Unavailable(err.to_string()))?;
        let (node_id, mesh_addr) = match response {
            Ok(Outcome::NodeRegistered {
                node_id, mesh_addr, ..
            }) => (node_id, mesh_addr),
            Ok(other) => {
                return Err(JoinRefusal::Unavailable(format!(
                    "unexpected answer {other:?}"
                )))
            }
            Err(refusal) => return Err(refusal_of(&refusal)),
        };
        // The registration is applied at the leader; wait until this member has applied it
        // too, so that the peer list below is current.
        let applied = self.raft.status().last_applied_index.unwrap_or(0);
        let _ = self
            .raft
            .wait_applied(applied, std::time::Duration::from_secs(5))
            .await;
        let (cluster_id, mesh_prefix_len) = self.raft.read(|state| {
            (
                state.cluster_id.clone().unwrap_or_default(),
                state.settings.overlay_prefix_len,
            )
        });
        tracing::info!(node_id, mesh_addr = %mesh_addr, "node admitted");
        Ok(JoinAccepted {
            node_id,
            cluster_id,
            mesh_addr,
            mesh_prefix_len,
            peers: peers_from_state(&self.raft, &joiner_key),
            extra: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_refusals_keep_their_reason_and_others_are_retryable() {
        let rejected = |reason: &str| Refusal::TokenRejected {
            reason: reason.to_string(),
        };
        assert_eq!(refusal_of(&rejected("expired")), JoinRefusal::TokenExpired);
        assert_eq!(refusal_of(&rejected("revoked")), JoinRefusal::TokenRevoked);
        assert_eq!(refusal_of(&rejected("exhausted")), JoinRefusal::TokenUsedUp);
        assert_eq!(refusal_of(&rejected("unknown")), JoinRefusal::InvalidToken);
        assert!(matches!(
            refusal_of(&Refusal::NotInitialized),
            JoinRefusal::Unavailable(_)
        ));
    }

    #[test]
    fn the_token_hash_is_the_hex_of_the_mesh_hash_of_the_secret() {
        let secret = [7u8; 32];
        let hash = token_secret_sha256(&secret);
        assert_eq!(hash.len(), 64);
        assert_eq!(hash, hex::encode(shoal_mesh::token::hash_secret(&secret)));
    }
}
