//! Admission decisions (pure) and the pluggable `Admission` callback a member asks.
//!
//! The node crate implements [`Admission`] by forwarding the request to the Raft leader, which
//! calls [`decide`] against its committed state (token records, node list, removed identities),
//! commits the new node with a fresh mesh address (see [`crate::mesh_addr`]) and the token's
//! use, and answers [`JoinAccepted`].

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::identity::NodePublicKey;
use crate::peer_table::PeerSpec;
use crate::token::TokenRecord;

/// Why a join was refused. Shown to the joining operator as is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum JoinRefusal {
    /// No token with this id, or the secret does not match.
    InvalidToken,
    /// The token's time is over.
    TokenExpired,
    /// An admin revoked the token.
    TokenRevoked,
    /// The token has admitted as many nodes as it allows.
    TokenUsedUp,
    /// This public key belonged to a node that was removed; it cannot come back.
    RemovedIdentity,
    /// The join packet is older than the replay window, from the future, or a replay.
    StaleOrReplayed,
    /// The cluster cannot decide now (no leader, overlay range full, ...). Retry later.
    Unavailable(String),
}

impl fmt::Display for JoinRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidToken => f.write_str("the join token is not valid"),
            Self::TokenExpired => f.write_str("the join token has expired"),
            Self::TokenRevoked => f.write_str("the join token was revoked"),
            Self::TokenUsedUp => f.write_str("the join token has no uses left"),
            Self::RemovedIdentity => f.write_str(
                "this node's identity was removed from the cluster; start with a fresh data dir",
            ),
            Self::StaleOrReplayed => {
                f.write_str("the join request is stale or replayed (check the clock)")
            }
            Self::Unavailable(why) => write!(f, "the cluster cannot admit now: {why}"),
        }
    }
}

/// A verified join request, as handed to [`Admission::admit`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinCandidate {
    /// Token id from the token text.
    pub token_id: String,
    /// Token secret (the leader hashes and compares it).
    pub token_secret: [u8; 32],
    /// The joiner's WireGuard public key; proven: the request was encrypted with its private key.
    pub public_key: NodePublicKey,
    /// The joiner's WireGuard endpoint: what it announced, else the address the packet came from.
    pub endpoint: SocketAddr,
}

/// What the joiner receives on success.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinAccepted {
    /// The id the cluster gave the node.
    pub node_id: u64,
    /// The cluster's id.
    pub cluster_id: String,
    /// The joiner's mesh address.
    pub mesh_addr: Ipv4Addr,
    /// Prefix length of the overlay range (e.g. 16 for 10.77.0.0/16).
    pub mesh_prefix_len: u8,
    /// Current members to add as peers (at least the answering member).
    pub peers: Vec<PeerSpec>,
    /// Opaque bytes for the node crate (e.g. roles, Raft details). Bounded by the packet size.
    pub extra: Vec<u8>,
}

/// The callback a member asks when a join request arrives. Implemented by the node crate.
#[async_trait::async_trait]
pub trait Admission: Send + Sync + 'static {
    /// Decides (usually by forwarding to the leader) and commits the join.
    async fn admit(&self, candidate: JoinCandidate) -> Result<JoinAccepted, JoinRefusal>;
}

/// What the state knows about a public key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IdentityStatus {
    /// Never seen.
    Unknown,
    /// A current member (e.g. the joiner retried after the answer was lost, or restarted).
    Member,
    /// A removed node: refused forever.
    Removed,
}

/// The leader's decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AdmissionDecision {
    /// Commit a new node and count one use of the token.
    AdmitNew,
    /// The key is already a member: answer with its existing record, consume nothing. This
    /// makes a retried or replayed join idempotent: it never admits twice.
    AlreadyMember,
    /// Refuse; change nothing.
    Refuse(JoinRefusal),
}

/// The pure admission rule. `token` is the stored record for the presented id, if any.
pub fn decide(
    token: Option<&TokenRecord>,
    candidate: &JoinCandidate,
    identity: IdentityStatus,
    now_ms: u64,
) -> AdmissionDecision {
    match identity {
        IdentityStatus::Removed => AdmissionDecision::Refuse(JoinRefusal::RemovedIdentity),
        IdentityStatus::Member => AdmissionDecision::AlreadyMember,
        IdentityStatus::Unknown => match token {
            None => AdmissionDecision::Refuse(JoinRefusal::InvalidToken),
            Some(record) => match record.check(&candidate.token_secret, now_ms) {
                Ok(()) => AdmissionDecision::AdmitNew,
                Err(refusal) => AdmissionDecision::Refuse(refusal),
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::JoinToken;
    use proptest::prelude::*;

    fn candidate(secret: [u8; 32]) -> JoinCandidate {
        JoinCandidate {
            token_id: "0101010101010101".into(),
            token_secret: secret,
            public_key: NodePublicKey([7; 32]),
            endpoint: SocketAddr::from(([127, 0, 0, 1], 1)),
        }
    }

    #[test]
    fn decisions_for_each_case() {
        let t = JoinToken::new([1; 8], [2; 32], NodePublicKey([3; 32]), vec!["h:1".into()]);
        let record = TokenRecord::new(&t, 0, 1_000, Some(1));
        let good = candidate([2; 32]);
        let cases = [
            (
                Some(&record),
                &good,
                IdentityStatus::Unknown,
                10,
                AdmissionDecision::AdmitNew,
            ),
            (
                None,
                &good,
                IdentityStatus::Unknown,
                10,
                AdmissionDecision::Refuse(JoinRefusal::InvalidToken),
            ),
            (
                Some(&record),
                &candidate([0; 32]),
                IdentityStatus::Unknown,
                10,
                AdmissionDecision::Refuse(JoinRefusal::InvalidToken),
            ),
            (
                Some(&record),
                &good,
                IdentityStatus::Unknown,
                1_000,
                AdmissionDecision::Refuse(JoinRefusal::TokenExpired),
            ),
            (
                Some(&record),
                &good,
                IdentityStatus::Removed,
                10,
                AdmissionDecision::Refuse(JoinRefusal::RemovedIdentity),
            ),
            (
                None,
                &good,
                IdentityStatus::Removed,
                10,
                AdmissionDecision::Refuse(JoinRefusal::RemovedIdentity),
            ),
            (
                Some(&record),
                &good,
                IdentityStatus::Member,
                10,
                AdmissionDecision::AlreadyMember,
            ),
        ];
        for (token, cand, identity, now_ms, expected) in cases {
            assert_eq!(
                decide(token, cand, identity.clone(), now_ms),
                expected,
                "{identity:?} at {now_ms}"
            );
        }
    }

    proptest! {
        /// Model: however join attempts (good, bad, repeated keys) interleave, a token with
        /// `uses_max = n` admits at most n new nodes, a key is admitted at most once, and a
        /// removed key is never admitted.
        #[test]
        fn never_admits_more_than_uses_nor_a_key_twice_nor_a_removed_key(
            uses_max in 0u32..4,
            attempts in proptest::collection::vec((0u8..6, any::<bool>()), 0..30),
        ) {
            let t = JoinToken::new([1; 8], [2; 32], NodePublicKey([3; 32]), vec!["h:1".into()]);
            let mut record = TokenRecord::new(&t, 0, 1_000, Some(uses_max));
            let mut members = std::collections::HashSet::new();
            let removed = 5u8;
            let mut admitted = 0;
            for (key, good_secret) in attempts {
                let mut cand = candidate(if good_secret { [2; 32] } else { [4; 32] });
                cand.public_key = NodePublicKey([key; 32]);
                let identity = if key == removed { IdentityStatus::Removed }
                    else if members.contains(&key) { IdentityStatus::Member }
                    else { IdentityStatus::Unknown };
                match decide(Some(&record), &cand, identity, 10) {
                    AdmissionDecision::AdmitNew => {
                        prop_assert!(key != removed);
                        prop_assert!(members.insert(key));
                        record.consume();
                        admitted += 1;
                    }
                    AdmissionDecision::AlreadyMember => prop_assert!(members.contains(&key)),
                    AdmissionDecision::Refuse(_) => {}
                }
            }
            prop_assert!(admitted <= uses_max);
        }
    }
}
