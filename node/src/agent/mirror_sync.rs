//! The pure decisions of a worker mirror (a node that holds no Raft log and copies the
//! committed state from the leader, see [`super::worker_mirror`]): whom to ask, and what an
//! answer means. No I/O, no clock: the driver passes the mirror's head and the answer in.

use std::net::Ipv4Addr;

use shoal_raft::model::NodeState;
use shoal_raft::ClusterState;

use crate::mesh_rpc::{ViewHead, ViewReply};

/// Most nodes asked in one sync round (the leader hint, then servers, then seeds).
pub const SYNC_CANDIDATES_MAX: usize = 8;

/// The nodes to ask for the state, in order: the leader the mirror last heard from, the
/// servers of the mirrored node list (ready or draining, by id), then the seeds (the members a
/// join answer named). Never the mirror itself, no duplicates, at most
/// [`SYNC_CANDIDATES_MAX`].
pub fn candidates(
    leader_hint: Option<Ipv4Addr>,
    state: &ClusterState,
    seeds: &[Ipv4Addr],
    own: Ipv4Addr,
) -> Vec<Ipv4Addr> {
    let servers = state
        .nodes
        .values()
        .filter(|node| {
            node.roles.server && matches!(node.state, NodeState::Ready | NodeState::Draining)
        })
        .map(|node| node.mesh_addr);
    let mut out: Vec<Ipv4Addr> = Vec::new();
    for ip in leader_hint
        .into_iter()
        .chain(servers)
        .chain(seeds.iter().copied())
    {
        if ip != own && !out.contains(&ip) {
            out.push(ip);
        }
        if out.len() == SYNC_CANDIDATES_MAX {
            break;
        }
    }
    out
}

/// What the mirror does with one answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncStep {
    /// Replace the mirrored state with `state` (encoded) at `head`.
    Install {
        /// The leader's head.
        head: ViewHead,
        /// The encoded committed state.
        state: Vec<u8>,
    },
    /// The mirror is current: only the head (leader, term, voters) is taken.
    Current(ViewHead),
    /// Ask this node next (the one asked named the leader).
    Follow(Ipv4Addr),
    /// Ask the next candidate; the text says why.
    Next(String),
}

/// Decides what an answer means for a mirror that has applied `have_applied` and last heard
/// from a leader of `have_term`. A leader of an older term than one already heard is a deposed
/// leader that does not know it yet: its answer is ignored. A snapshot that is not newer than
/// the mirror is taken as "current" (a fresh leader may not have applied everything yet).
pub fn step(have_applied: u64, have_term: u64, reply: ViewReply) -> SyncStep {
    match reply {
        ViewReply::Current(head) | ViewReply::Snapshot { head, .. } if head.term < have_term => {
            SyncStep::Next(format!(
                "a leader of term {} answered, but term {have_term} was seen",
                head.term
            ))
        }
        ViewReply::Snapshot { head, state } if head.applied > have_applied => {
            SyncStep::Install { head, state }
        }
        ViewReply::Snapshot { head, .. } | ViewReply::Current(head) => SyncStep::Current(head),
        ViewReply::NotLeader {
            leader_mesh_addr: Some(ip),
        } => SyncStep::Follow(ip),
        ViewReply::NotLeader {
            leader_mesh_addr: None,
        } => SyncStep::Next("no leader known there".to_string()),
        ViewReply::Refused(why) => SyncStep::Next(why),
        ViewReply::Usage(_) => SyncStep::Next("answered a usage table".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use shoal_raft::model::Roles;

    fn head(term: u64, applied: u64) -> ViewHead {
        ViewHead {
            leader: 1,
            leader_mesh_addr: Some(Ipv4Addr::new(10, 42, 0, 1)),
            term,
            applied,
            voters: vec![1],
        }
    }

    /// Node 1 (server, worker), node 2 (worker only), node 3 (server, worker), node 4 (a
    /// server that is down): mesh addresses 10.42.0.N.
    fn state() -> ClusterState {
        let mut data = shoal_raft::state::ClusterData::default();
        for (id, roles, state) in [
            (1, Roles::SERVER_WORKER, NodeState::Ready),
            (2, Roles::WORKER, NodeState::Ready),
            (3, Roles::SERVER_WORKER, NodeState::Ready),
            (4, Roles::SERVER, NodeState::Down),
        ] {
            data.nodes.insert(
                id,
                super::super::run_placement::tests::node(id, roles, state),
            );
        }
        ClusterState::from_data(data)
    }

    #[test]
    fn the_leader_hint_comes_first_then_servers_then_seeds_never_self_or_twice() {
        let state = state();
        assert_eq!(state.nodes.len(), 4, "{:?}", state.nodes.keys());
        let ip = |n: u8| Ipv4Addr::new(10, 42, 0, n);
        let server1 = state.nodes[&1].mesh_addr;
        let worker2 = state.nodes[&2].mesh_addr;
        let server3 = state.nodes[&3].mesh_addr;
        let seed = ip(99);
        assert_eq!(
            candidates(Some(server3), &state, &[seed, server1], worker2),
            vec![server3, server1, seed],
            "hint, the other server, then the seed; the worker (self) never"
        );
        assert_eq!(
            candidates(None, &ClusterState::new(), &[seed, seed], worker2),
            vec![seed],
            "an empty mirror asks its seeds"
        );
        let many: Vec<Ipv4Addr> = (10..40).map(ip).collect();
        assert_eq!(
            candidates(None, &state, &many, worker2).len(),
            SYNC_CANDIDATES_MAX
        );
    }

    #[test]
    fn a_newer_snapshot_is_installed_an_older_or_equal_one_only_updates_the_head() {
        let install = step(
            5,
            1,
            ViewReply::Snapshot {
                head: head(2, 9),
                state: vec![1, 2],
            },
        );
        assert_eq!(
            install,
            SyncStep::Install {
                head: head(2, 9),
                state: vec![1, 2]
            }
        );
        assert_eq!(
            step(
                9,
                2,
                ViewReply::Snapshot {
                    head: head(3, 7),
                    state: vec![]
                }
            ),
            SyncStep::Current(head(3, 7)),
            "a new leader that applied less: keep the newer mirror, follow the leader"
        );
        assert_eq!(
            step(9, 2, ViewReply::Current(head(2, 9))),
            SyncStep::Current(head(2, 9))
        );
    }

    #[test]
    fn a_deposed_leader_is_ignored_and_a_follower_points_to_the_leader() {
        assert!(matches!(
            step(
                1,
                5,
                ViewReply::Snapshot {
                    head: head(4, 100),
                    state: vec![]
                }
            ),
            SyncStep::Next(_)
        ));
        assert!(matches!(
            step(1, 5, ViewReply::Current(head(4, 1))),
            SyncStep::Next(_)
        ));
        let leader = Ipv4Addr::new(10, 42, 0, 3);
        assert_eq!(
            step(
                1,
                5,
                ViewReply::NotLeader {
                    leader_mesh_addr: Some(leader)
                }
            ),
            SyncStep::Follow(leader)
        );
        assert!(matches!(
            step(
                1,
                5,
                ViewReply::NotLeader {
                    leader_mesh_addr: None
                }
            ),
            SyncStep::Next(_)
        ));
        assert!(matches!(
            step(1, 5, ViewReply::Refused("x".to_string())),
            SyncStep::Next(_)
        ));
    }

    proptest! {
        /// Whatever answers arrive, a mirror installs only strictly newer state from a leader
        /// of a term at least as new as any it heard, so its applied index and term never go
        /// back.
        #[test]
        fn the_mirror_never_goes_back(
            answers in proptest::collection::vec((0u64..6, 0u64..50, any::<bool>()), 1..40)
        ) {
            let (mut applied, mut term) = (0u64, 0u64);
            for (answer_term, answer_applied, snapshot) in answers {
                let reply = if snapshot {
                    ViewReply::Snapshot { head: head(answer_term, answer_applied), state: vec![] }
                } else {
                    ViewReply::Current(head(answer_term, answer_applied))
                };
                match step(applied, term, reply) {
                    SyncStep::Install { head, .. } => {
                        prop_assert!(head.applied > applied && head.term >= term);
                        applied = head.applied;
                        term = head.term;
                    }
                    SyncStep::Current(head) => {
                        prop_assert!(head.term >= term);
                        term = head.term;
                    }
                    SyncStep::Follow(_) | SyncStep::Next(_) => {}
                }
            }
        }
    }
}
