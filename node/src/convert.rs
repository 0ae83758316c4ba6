//! Every conversion between Raft's committed records and the executor's types, in one place.
//!
//! Each concept has one type per crate that must hold it, and no more (ARCHITECTURE.md, "One
//! type per concept"): `executor` may not depend on `raft` (DESIGN.md §7), and Raft's types are
//! part of its positional bincode log and snapshots, so the two crates keep their own
//! `RestartPolicy` and `NetworkPolicy`. The HTTP API and the CLI use the executor's types as
//! they are (`api_types` re-exports them), so these functions are the only place where the
//! two meet. The matches are exhaustive: a variant added on either side does not compile until
//! it is converted here.

use shoal_executor::network_policy::NetworkPolicy;
use shoal_executor::restart_policy::RestartPolicy;
use shoal_raft::model::{NetworkPolicy as RaftNetwork, RestartPolicy as RaftRestart};

/// The restart policy Raft commits for one the API or the executor names.
pub fn restart_to_raft(policy: RestartPolicy) -> RaftRestart {
    match policy {
        RestartPolicy::Never => RaftRestart::Never,
        RestartPolicy::OnFailure => RaftRestart::OnFailure,
        RestartPolicy::Always => RaftRestart::Always,
    }
}

/// The executor's (and the API's) restart policy of a committed one.
pub fn restart_from_raft(policy: RaftRestart) -> RestartPolicy {
    match policy {
        RaftRestart::Never => RestartPolicy::Never,
        RaftRestart::OnFailure => RestartPolicy::OnFailure,
        RaftRestart::Always => RestartPolicy::Always,
    }
}

/// The network policy Raft commits for a requested kind. The API names no allowlist domains
/// yet, so an allowlist starts empty (egress to nothing).
pub fn network_to_raft(policy: NetworkPolicy) -> RaftNetwork {
    match policy {
        NetworkPolicy::None => RaftNetwork::None,
        NetworkPolicy::Allowlist => RaftNetwork::Allowlist(Vec::new()),
        NetworkPolicy::Full => RaftNetwork::Full,
    }
}

/// The kind of a committed network policy, as the API and the executor name it (the
/// allowlist's domains stay in Raft's record).
pub fn network_kind(policy: &RaftNetwork) -> NetworkPolicy {
    match policy {
        RaftNetwork::None => NetworkPolicy::None,
        RaftNetwork::Allowlist(_) => NetworkPolicy::Allowlist,
        RaftNetwork::Full => NetworkPolicy::Full,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every restart policy survives the trip through Raft and back, and the pairs are the
    /// ones with the same meaning (never/never, ...), not merely some bijection.
    #[test]
    fn restart_policies_convert_both_ways_variant_for_variant() {
        let pairs = [
            (RestartPolicy::Never, RaftRestart::Never),
            (RestartPolicy::OnFailure, RaftRestart::OnFailure),
            (RestartPolicy::Always, RaftRestart::Always),
        ];
        for (policy, committed) in pairs {
            assert_eq!(restart_to_raft(policy), committed);
            assert_eq!(restart_from_raft(committed), policy);
        }
        // Exhaustive: a new executor variant must be added to `pairs` above.
        for policy in [
            RestartPolicy::Never,
            RestartPolicy::OnFailure,
            RestartPolicy::Always,
        ] {
            match policy {
                RestartPolicy::Never | RestartPolicy::OnFailure | RestartPolicy::Always => {
                    assert!(pairs.iter().any(|(p, _)| *p == policy))
                }
            }
        }
    }

    /// Every network kind survives the trip through Raft and back; an allowlist keeps its
    /// domains in Raft and is still an allowlist when read back.
    #[test]
    fn network_policies_convert_both_ways_variant_for_variant() {
        let pairs = [
            (NetworkPolicy::None, RaftNetwork::None),
            (NetworkPolicy::Allowlist, RaftNetwork::Allowlist(Vec::new())),
            (NetworkPolicy::Full, RaftNetwork::Full),
        ];
        for (kind, committed) in &pairs {
            assert_eq!(&network_to_raft(*kind), committed);
            assert_eq!(network_kind(committed), *kind);
            match kind {
                NetworkPolicy::None | NetworkPolicy::Allowlist | NetworkPolicy::Full => {}
            }
        }
        assert_eq!(
            network_kind(&RaftNetwork::Allowlist(vec!["example.org".to_string()])),
            NetworkPolicy::Allowlist
        );
    }
}
