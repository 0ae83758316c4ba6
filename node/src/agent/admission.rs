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

/// [`peers_keeping`], plus every peer of `previous` whose key the state does not know at all.
///
/// A node's applied state can be older than what it was told: a joiner replays the log from
/// the start, and until it applies its own registration the committed list lacks the nodes
/// that joined after that point, possibly the current leader. The join answer named them, so
/// they are kept until the state knows them (node records are never deleted: a known key's
/// own record then decides). Dropping them cut the leader off and stopped the replication
/// that would have brought the list up to date (chaos removed_node_returns, seed 702). A
/// state peer whose mesh address such a peer holds is left out: the unknown peer is the newer
/// holder of that address.
pub fn peers_following(
    state: &ClusterState,
    own_key: &str,
    raft_members: &std::collections::BTreeSet<shoal_raft::NodeId>,
    previous: &[PeerSpec],
) -> Vec<PeerSpec> {
    let known: std::collections::BTreeSet<&str> = state
        .nodes
        .values()
        .map(|node| node.wg_public_key.as_str())
        .collect();
    let unknown: Vec<PeerSpec> = previous
        .iter()
        .filter(|peer| {
            let key = peer.public_key.to_base64();
            key != own_key && !known.contains(key.as_str())
        })
        .cloned()
        .collect();
    let mut peers: Vec<PeerSpec> = peers_keeping(state, own_key, raft_members)
        .into_iter()
        .filter(|peer| unknown.iter().all(|kept| kept.mesh_addr != peer.mesh_addr))
        .collect();
    peers.extend(unknown);
    peers
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

    fn apply_ok(state: &mut ClusterState, action: Action) {
        let answer = shoal_raft::apply::apply(state, &Command::new(0, "t", action));
        assert!(answer.is_ok(), "{answer:?}");
    }

    /// Registers key `i` from `endpoint`, as the bootstrap node when `i` is 1.
    fn register(state: &mut ClusterState, i: u8, endpoint: &str) {
        use shoal_raft::command::{Admission as Kind, NodeRegistration};
        apply_ok(
            state,
            Action::RegisterNode(NodeRegistration {
                admission: if i == 1 {
                    Kind::Bootstrap
                } else {
                    Kind::Token {
                        secret_sha256: "a".repeat(64),
                    }
                },
                wg_public_key: NodePublicKey([i; 32]).to_base64(),
                endpoint: endpoint.to_string(),
                rpc_port: DEFAULT_QUIC_PORT,
                api_addr: None,
                roles: Roles::SERVER_WORKER,
                capacity: Resources::new(1_000, 1 << 30),
                reserve: Resources::new(0, 0),
            }),
        );
    }

    fn id_of(state: &ClusterState, i: u8) -> shoal_raft::NodeId {
        let key = NodePublicKey([i; 32]).to_base64();
        state
            .nodes
            .values()
            .find(|node| node.wg_public_key == key)
            .map(|node| node.id)
            .unwrap_or_default()
    }

    fn spec_of(state: &ClusterState, i: u8) -> Option<PeerSpec> {
        peers_from_state(state, "")
            .into_iter()
            .find(|peer| peer.public_key.0[0] == i)
    }

    /// Regression (chaos removed_node_returns, seed 702): a node removed and rejoined with a
    /// new identity from the same endpoint replayed the log from its start; the node list
    /// applied so far lacked the leader (itself a node that had rejoined later), so the peer
    /// loop dropped the leader the join answer had named, the leader's handshakes were
    /// refused and the new node, promoted to voter, never caught up.
    #[test]
    fn a_node_removed_and_rejoined_with_a_new_identity_from_the_same_endpoint_keeps_the_leader_while_its_log_catches_up(
    ) {
        let key = |i: u8| NodePublicKey([i; 32]).to_base64();
        let mut now = ClusterState::new();
        apply_ok(
            &mut now,
            Action::InitCluster {
                cluster_id: "c".into(),
                settings: Default::default(),
            },
        );
        apply_ok(
            &mut now,
            Action::CreateToken {
                secret_sha256: "a".repeat(64),
                prefix: "p".into(),
                roles: Roles::SERVER_WORKER,
                ttl_ms: 1_000,
                uses_max: 10,
            },
        );
        register(&mut now, 1, "198.18.0.10:51820");
        register(&mut now, 2, "198.18.0.11:51820");
        register(&mut now, 3, "198.18.0.12:51820");
        // What the rejoining node has applied when its replay reaches this point.
        let replayed = now.clone();
        // Node 3 is removed and its address rejoins as key 5 (the leader later); node 1 is
        // removed and its address rejoins as key 6, the node under test.
        let gone = id_of(&now, 3);
        apply_ok(&mut now, Action::RemoveNode { node: gone });
        register(&mut now, 5, "198.18.0.12:51820");
        let gone = id_of(&now, 1);
        apply_ok(&mut now, Action::RemoveNode { node: gone });
        register(&mut now, 6, "198.18.0.10:51820");
        let members: std::collections::BTreeSet<_> =
            [id_of(&now, 2), id_of(&now, 5), id_of(&now, 6)].into();
        // The join answer, computed by a member that has applied the registration.
        let answer = peers_from_state(&now, &key(6));
        let leader = spec_of(&now, 5).expect("the leader is in the join answer");
        assert!(answer.contains(&leader));

        let peers = peers_following(&replayed, &key(6), &members, &answer);
        assert!(
            peers.contains(&leader),
            "a replay that does not know the leader yet keeps it: {peers:?}"
        );
        assert!(peers.iter().any(|peer| peer.public_key.0[0] == 2));
        assert!(peers.iter().all(|peer| peer.public_key.0[0] != 6));

        // Caught up: the committed list decides; the old identities are gone.
        let caught_up = peers_following(&now, &key(6), &members, &peers);
        let mut keys: Vec<u8> = caught_up.iter().map(|peer| peer.public_key.0[0]).collect();
        keys.sort_unstable();
        assert_eq!(keys, vec![2, 5], "{caught_up:?}");

        // A peer the state knows and that left is dropped, even if it was a previous peer.
        let gone = id_of(&now, 5);
        apply_ok(&mut now, Action::RemoveNode { node: gone });
        let members: std::collections::BTreeSet<_> = [id_of(&now, 2), id_of(&now, 6)].into();
        let after = peers_following(&now, &key(6), &members, &caught_up);
        let keys: Vec<u8> = after.iter().map(|peer| peer.public_key.0[0]).collect();
        assert_eq!(keys, vec![2], "{after:?}");
    }

    #[test]
    fn a_peer_the_state_does_not_know_yet_wins_its_mesh_address_over_an_older_holder() {
        let mut state = ClusterState::new();
        apply_ok(
            &mut state,
            Action::InitCluster {
                cluster_id: "c".into(),
                settings: Default::default(),
            },
        );
        register(&mut state, 1, "127.0.0.1:51001");
        let old = spec_of(&state, 1).expect("node 1 is a peer");
        let newer = PeerSpec {
            public_key: NodePublicKey([9; 32]),
            endpoint: old.endpoint,
            mesh_addr: old.mesh_addr,
        };
        let own = NodePublicKey([7; 32]).to_base64();
        let peers = peers_following(
            &state,
            &own,
            &std::collections::BTreeSet::new(),
            std::slice::from_ref(&newer),
        );
        assert_eq!(
            peers,
            vec![newer],
            "one holder per mesh address, the newer one"
        );
    }

    #[test]
    fn the_token_hash_is_the_hex_of_the_mesh_hash_of_the_secret() {
        let secret = [7u8; 32];
        let hash = token_secret_sha256(&secret);
        assert_eq!(hash.len(), 64);
        assert_eq!(hash, hex::encode(shoal_mesh::token::hash_secret(&secret)));
    }
}
