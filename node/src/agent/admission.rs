//! The member side of a join: the mesh hands a verified [`JoinCandidate`] (token proven, public
//! key proven by the WireGuard handshake) to [`RaftAdmission`], which proposes `RegisterNode`
//! through Raft (forwarded to the leader when this member does not lead). The state machine
//! checks the token's hash, uses, expiry and revocation, and allocates the node's id and mesh
//! address; the answer carries the current members as peers.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use shoal_mesh::{
    Admission, JoinAccepted, JoinCandidate, JoinRefusal, NodePublicKey, PeerSpec, Transport,
    DEFAULT_QUIC_PORT,
};
use shoal_raft::command::{Admission as RaftAdmissionKind, NodeRegistration};
use shoal_raft::model::{NodeState, Resources, Roles};
use shoal_raft::{Action, ClusterState, Command, Outcome, Refusal};

use super::state_view::StateView;
use crate::clock;
use crate::mesh_rpc::forward_write;

/// What a member tells a joiner beyond the mesh's fields (`JoinAccepted::extra`, JSON): the
/// roles the cluster committed for it (the token's), so that a worker-only node knows it holds
/// no Raft log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinExtra {
    /// The committed roles.
    pub roles: Roles,
}

impl JoinExtra {
    /// Reads the extra bytes of a join answer; `None` when absent or not ours.
    pub fn parse(bytes: &[u8]) -> Option<JoinExtra> {
        serde_json::from_slice(bytes).ok()
    }
}

/// The cluster's hash of a join token's secret, as committed to Raft: lowercase hex of the
/// mesh crate's SHA-256 of the secret bytes.
pub fn token_secret_sha256(secret: &[u8; 32]) -> String {
    hex::encode(shoal_mesh::token::hash_secret(secret))
}

/// Admits joiners through Raft (any node can: a worker forwards through its mirror's leader).
pub struct RaftAdmission {
    /// The committed state this member sees.
    pub view: StateView,
    /// This member's mesh transport (to forward the registration to the leader).
    pub transport: Transport,
}

/// The mesh peers a node should have: every node of the committed list that has not left,
/// except the one with `own_key`.
pub fn peers_from_state(state: &ClusterState, own_key: &str) -> Vec<PeerSpec> {
    peers_keeping(state, own_key, &std::collections::BTreeSet::new())
}

/// [`peers_from_state`], but a node that left stays a peer while it is in `raft_members`:
/// the change that takes a removed voter out of the Raft membership may need its vote, which
/// it can only give over the mesh; its packets are dropped once that change is applied.
pub fn peers_keeping(
    state: &ClusterState,
    own_key: &str,
    raft_members: &std::collections::BTreeSet<shoal_raft::NodeId>,
) -> Vec<PeerSpec> {
    state
        .nodes
        .values()
        .filter(|node| {
            (node.state != NodeState::Left || raft_members.contains(&node.id))
                && node.wg_public_key != own_key
        })
        .filter_map(|node| {
            Some(PeerSpec {
                public_key: NodePublicKey::parse(&node.wg_public_key).ok()?,
                endpoint: node.endpoint.parse::<SocketAddr>().ok(),
                mesh_addr: node.mesh_addr,
            })
        })
        .collect()
}

fn refusal_of(refusal: &Refusal) -> JoinRefusal {
    match refusal {
        Refusal::TokenRejected { reason } => match reason.as_str() {
            "expired" => JoinRefusal::TokenExpired,
            "revoked" => JoinRefusal::TokenRevoked,
            "exhausted" => JoinRefusal::TokenUsedUp,
            _ => JoinRefusal::InvalidToken,
        },
        Refusal::NodeRemoved { .. } => JoinRefusal::RemovedIdentity,
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
        let response = forward_write(&self.view, &self.transport, command)
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
        self.view.after_write().await;
        let applied = self.view.status().last_applied_index.unwrap_or(0);
        let _ = self
            .view
            .wait_applied(applied, std::time::Duration::from_secs(5))
            .await;
        let (cluster_id, mesh_prefix_len, roles) = self.view.read(|state| {
            (
                state.cluster_id.clone().unwrap_or_default(),
                state.settings.overlay_prefix_len,
                state.nodes.get(&node_id).map(|node| node.roles),
            )
        });
        tracing::info!(node_id, mesh_addr = %mesh_addr, "node admitted");
        Ok(JoinAccepted {
            node_id,
            cluster_id,
            mesh_addr,
            mesh_prefix_len,
            peers: self.view.read(|state| peers_from_state(state, &joiner_key)),
            extra: roles
                .and_then(|roles| serde_json::to_vec(&JoinExtra { roles }).ok())
                .unwrap_or_default(),
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
        assert_eq!(
            refusal_of(&Refusal::NodeRemoved { node: 4 }),
            JoinRefusal::RemovedIdentity,
            "a removed identity is told so, not to retry"
        );
    }

    #[test]
    fn the_join_extra_carries_the_committed_roles_and_anything_else_is_none() {
        for roles in [Roles::WORKER, Roles::SERVER, Roles::SERVER_WORKER] {
            let bytes = serde_json::to_vec(&JoinExtra { roles }).unwrap_or_default();
            assert_eq!(JoinExtra::parse(&bytes), Some(JoinExtra { roles }));
        }
        assert_eq!(JoinExtra::parse(b""), None);
        assert_eq!(JoinExtra::parse(b"\x01\x02"), None);
    }

    /// Regression (chaos, removed_node_returns): the members dropped a removed node's mesh
    /// peer as soon as it left, before the Raft change removing it from the voters committed;
    /// that change needed its vote, so it never committed and every later one was refused.
    #[test]
    fn a_node_that_left_stays_a_peer_only_while_it_is_a_raft_member() {
        use shoal_raft::command::{Admission as Kind, NodeRegistration};
        let key = |i: u8| NodePublicKey([i; 32]).to_base64();
        let mut state = ClusterState::new();
        let mut run = |action: Action| {
            let answer = shoal_raft::apply::apply(&mut state, &Command::new(0, "t", action));
            assert!(answer.is_ok(), "{answer:?}");
        };
        run(Action::InitCluster {
            cluster_id: "c".into(),
            settings: Default::default(),
        });
        run(Action::CreateToken {
            secret_sha256: "a".repeat(64),
            prefix: "p".into(),
            roles: Roles::SERVER_WORKER,
            ttl_ms: 1_000,
            uses_max: 10,
        });
        for i in 1..=3u8 {
            run(Action::RegisterNode(NodeRegistration {
                admission: if i == 1 {
                    Kind::Bootstrap
                } else {
                    Kind::Token {
                        secret_sha256: "a".repeat(64),
                    }
                },
                wg_public_key: key(i),
                endpoint: format!("127.0.0.1:{}", 51_000 + u16::from(i)),
                rpc_port: DEFAULT_QUIC_PORT,
                api_addr: None,
                roles: Roles::SERVER_WORKER,
                capacity: Resources::new(1_000, 1 << 30),
                reserve: Resources::new(0, 0),
            }));
        }
        run(Action::RemoveNode { node: 3 });
        let peers = |members: &[u64]| -> Vec<u8> {
            let members = members.iter().copied().collect();
            peers_keeping(&state, &key(1), &members)
                .iter()
                .map(|peer| peer.public_key.0[0])
                .collect()
        };
        assert_eq!(peers(&[1, 2, 3]), vec![2, 3], "still a voter: still a peer");
        assert_eq!(peers(&[1, 2]), vec![2], "out of Raft: dropped");
        assert_eq!(peers_from_state(&state, &key(1)).len(), 1);
    }

    #[test]
    fn the_token_hash_is_the_hex_of_the_mesh_hash_of_the_secret() {
        let secret = [7u8; 32];
        let hash = token_secret_sha256(&secret);
        assert_eq!(hash.len(), 64);
        assert_eq!(hash, hex::encode(shoal_mesh::token::hash_secret(&secret)));
    }
}
