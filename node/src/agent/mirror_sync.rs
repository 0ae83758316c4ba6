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
    /// Apply `commands` (encoded, in log order) to the mirrored state, which then is the
    /// leader's at `head.applied`.
    Apply {
        /// The leader's head; `applied` is where the commands lead.
        head: ViewHead,
        /// `(log index, encoded Command)`.
        commands: Vec<(u64, Vec<u8>)>,
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
/// A delta is taken only if it follows exactly the mirror's index (`from == have_applied`).
pub fn step(have_applied: u64, have_term: u64, reply: ViewReply) -> SyncStep {
    match reply {
        ViewReply::Current(head)
        | ViewReply::Snapshot { head, .. }
        | ViewReply::Delta { head, .. }
            if head.term < have_term =>
        {
            SyncStep::Next(format!(
                "a leader of term {} answered, but term {have_term} was seen",
                head.term
            ))
        }
        ViewReply::Snapshot { head, state } if head.applied > have_applied => {
            SyncStep::Install { head, state }
        }
        ViewReply::Delta { from, .. } if from != have_applied => SyncStep::Next(format!(
            "a delta after index {from} answered a mirror at {have_applied}"
        )),
        ViewReply::Delta { head, commands, .. } if head.applied > have_applied => {
            SyncStep::Apply { head, commands }
        }
        ViewReply::Snapshot { head, .. }
        | ViewReply::Current(head)
        | ViewReply::Delta { head, .. } => SyncStep::Current(head),
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

/// Why a delta could not be applied; the mirror then asks for the whole state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeltaError {
    /// The commands are not in strictly increasing log order within `(from, to]`.
    #[error("command at index {index} is out of order or outside ({from}, {to}]")]
    OutOfOrder {
        /// The offending index.
        index: u64,
        /// The mirror's index.
        from: u64,
        /// Where the delta leads.
        to: u64,
    },
    /// A command does not decode.
    #[error("command at index {index} is undecodable: {detail}")]
    Undecodable {
        /// Its index.
        index: u64,
        /// The decoder's error.
        detail: String,
    },
}

/// Decodes a delta's commands and checks that they lie strictly increasing in
/// `(from, to]`, before any of them touches the state (a half-applied delta would leave the
/// mirror between two indexes).
pub fn decode_delta(
    from: u64,
    to: u64,
    commands: &[(u64, Vec<u8>)],
) -> Result<Vec<shoal_raft::Command>, DeltaError> {
    let mut last = from;
    let mut decoded = Vec::with_capacity(commands.len());
    for (index, bytes) in commands {
        if *index <= last || *index > to {
            return Err(DeltaError::OutOfOrder {
                index: *index,
                from,
                to,
            });
        }
        last = *index;
        let command = shoal_raft::codec::decode(bytes).map_err(|err| DeltaError::Undecodable {
            index: *index,
            detail: err.to_string(),
        })?;
        decoded.push(command);
    }
    Ok(decoded)
}

/// Applies decoded commands to a mirrored state, as every Raft replica applies them
/// ([`shoal_raft::apply::apply`] is pure and deterministic; a refusal is part of the result
/// and changes nothing, on the leader as here).
pub fn apply_delta(state: &mut ClusterState, commands: &[shoal_raft::Command]) {
    for command in commands {
        let _outcome = shoal_raft::apply::apply(state, command);
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

    #[test]
    fn a_delta_is_applied_only_on_the_index_it_follows_and_in_order() {
        let delta = |term: u64, applied: u64, from: u64| ViewReply::Delta {
            head: head(term, applied),
            from,
            commands: vec![],
        };
        assert_eq!(
            step(5, 2, delta(2, 9, 5)),
            SyncStep::Apply {
                head: head(2, 9),
                commands: vec![]
            }
        );
        assert!(matches!(step(5, 2, delta(2, 9, 4)), SyncStep::Next(_)));
        assert!(matches!(step(5, 3, delta(2, 9, 5)), SyncStep::Next(_)));
        assert_eq!(step(9, 2, delta(2, 9, 9)), SyncStep::Current(head(2, 9)));
        let bytes = shoal_raft::codec::encode(&leader_command(3, 1)).expect("encodes");
        assert!(decode_delta(5, 9, &[(6, bytes.clone()), (8, bytes.clone())]).is_ok());
        for bad in [
            vec![(5, bytes.clone())],
            vec![(10, bytes.clone())],
            vec![(7, bytes.clone()), (7, bytes.clone())],
            vec![(8, bytes.clone()), (6, bytes.clone())],
        ] {
            assert!(
                matches!(decode_delta(5, 9, &bad), Err(DeltaError::OutOfOrder { .. })),
                "{bad:?}"
            );
        }
        assert!(matches!(
            decode_delta(5, 9, &[(6, vec![0xff; 3])]),
            Err(DeltaError::Undecodable { .. })
        ));
    }

    /// A command of the kind `kind` (workstations, processes, keys, audit; some refused),
    /// timestamped `1_000 + n`.
    fn leader_command(kind: u8, n: u64) -> shoal_raft::Command {
        use shoal_raft::command::{PlacementHints, WorkstationRequest};
        use shoal_raft::model::{
            Limit, NetworkPolicy, ProcessId, Resources, RestartPolicy, WorkstationId,
            WorkstationSpec,
        };
        use shoal_raft::Action;
        let ws = WorkstationId(n % 8 + 1);
        let action = match kind % 8 {
            0 | 1 => Action::CreateWorkstation {
                request: WorkstationRequest {
                    tenant: format!("t{}", n % 3),
                    name: format!("w{n}"),
                    spec: WorkstationSpec {
                        reservation: Resources::new(100 + n, 64 << 20),
                        limit: Limit {
                            cpu_limit_millis: 400,
                            memory_limit_bytes: 128 << 20,
                        },
                        network: NetworkPolicy::None,
                    },
                },
                hints: PlacementHints::default(),
            },
            2 => Action::DeleteWorkstation { id: ws },
            3 => Action::AddProcess {
                workstation: ws,
                argv: vec!["sleep".to_string(), n.to_string()],
                env: Default::default(),
                cwd: None,
                restart: RestartPolicy::Always,
            },
            4 => Action::RemoveProcess {
                workstation: ws,
                process: ProcessId(n % 3 + 1),
            },
            5 => Action::ResizeWorkstation {
                id: ws,
                reservation: Resources::new(150, 96 << 20),
                limit: Limit {
                    cpu_limit_millis: 500,
                    memory_limit_bytes: 256 << 20,
                },
            },
            6 => Action::CreateApiKey {
                secret_sha256: format!("{n:064x}"),
                prefix: format!("k{n}"),
                tenant: format!("t{}", n % 3),
                admin: false,
            },
            _ => Action::RecordAudit {
                tenant: Some(format!("t{}", n % 3)),
                action: "process.kill".to_string(),
                resource: format!("ws-{}/p-1", ws.0),
                outcome: "ok".to_string(),
            },
        };
        shoal_raft::Command::new(1_000 + n, "test", action)
    }

    /// The leader's side as the state machine and the `TAG_VIEW` handler see it: the applied
    /// state, its journal and the last log index.
    struct Leader {
        state: ClusterState,
        journal: shoal_raft::journal::Journal,
        index: u64,
    }

    impl Leader {
        /// Appends and applies one log entry (a command, or a blank/membership entry).
        fn entry(&mut self, command: Option<shoal_raft::Command>) {
            self.index += 1;
            self.journal.record(self.index, command.as_ref());
            if let Some(command) = command {
                let _ = shoal_raft::apply::apply(&mut self.state, &command);
            }
        }
    }

    /// A mirror as the worker keeps it.
    struct Mirror {
        state: ClusterState,
        applied: u64,
        exact: bool,
    }

    /// One sync round: the leader answers as `view_sync` does (current, a delta of at most
    /// `bytes_max`, or the whole state), the mirror takes the answer as `sync_once` does.
    fn sync(leader: &Leader, mirror: &mut Mirror, bytes_max: usize) {
        let Some(applied) = leader.journal.applied_index() else {
            return; // Refused: the leader's index is not known yet.
        };
        if mirror.applied >= applied {
            return;
        }
        let head = |applied: u64| ViewHead {
            leader: 1,
            leader_mesh_addr: None,
            term: 1,
            applied,
            voters: vec![1],
        };
        let slice = mirror
            .exact
            .then(|| leader.journal.after(mirror.applied, bytes_max))
            .flatten();
        let reply = match slice {
            Some(slice) => ViewReply::Delta {
                head: head(slice.to_index),
                from: mirror.applied,
                commands: slice
                    .commands
                    .into_iter()
                    .map(|(index, bytes)| (index, bytes.to_vec()))
                    .collect(),
            },
            None => ViewReply::Snapshot {
                head: head(applied),
                state: leader.state.encode().expect("encodes"),
            },
        };
        match step(mirror.applied, 1, reply) {
            SyncStep::Install { head, state } => {
                mirror.state = ClusterState::decode(&state).expect("decodes");
                mirror.applied = head.applied;
                mirror.exact = true;
            }
            SyncStep::Apply { head, commands } => {
                let decoded =
                    decode_delta(mirror.applied, head.applied, &commands).expect("in order");
                apply_delta(&mut mirror.state, &decoded);
                mirror.applied = head.applied;
            }
            other => panic!("unexpected step {other:?}"),
        }
    }

    proptest! {
        /// A mirror fed deltas (cut at any byte bound) and, when the leader's window does not
        /// reach back (a leader restart loses it), whole states, ends byte-identical to the
        /// leader's state after every sync that brings it to the leader's index.
        #[test]
        fn deltas_bring_a_mirror_to_exactly_the_leaders_state(
            events in proptest::collection::vec((0u8..12, 0u8..8, 0u64..40), 1..150),
            bytes_max in 40usize..3_000,
        ) {
            use shoal_raft::command::{Admission, NodeRegistration, PlacementHints};
            use shoal_raft::model::{ClusterSettings, Resources, Roles};
            use shoal_raft::Action;
            let mut leader = Leader {
                state: ClusterState::new(),
                journal: shoal_raft::journal::Journal::default(),
                index: 0,
            };
            leader.journal.record(0, None);
            for action in [
                Action::InitCluster {
                    cluster_id: "c".to_string(),
                    settings: ClusterSettings::default(),
                },
                Action::RegisterNode(NodeRegistration {
                    admission: Admission::Bootstrap,
                    wg_public_key: "key".to_string(),
                    endpoint: "127.0.0.1:1".to_string(),
                    rpc_port: 1,
                    api_addr: None,
                    roles: Roles::SERVER_WORKER,
                    capacity: Resources::new(4_000, 8 << 30),
                    reserve: Resources::new(0, 0),
                }),
                Action::MarkNodeReady { node: 1, hints: PlacementHints::default() },
            ] {
                leader.entry(Some(shoal_raft::Command::new(1, "test", action)));
            }
            let mut mirror = Mirror { state: ClusterState::new(), applied: 0, exact: false };
            for (event, kind, n) in events {
                match event {
                    0 => leader.entry(None),
                    // A leader restart: the state stays, the window of commands is gone.
                    1 => leader.journal = shoal_raft::journal::Journal::default(),
                    2..=4 => sync(&leader, &mut mirror, bytes_max),
                    _ => leader.entry(Some(leader_command(kind, n))),
                }
                if mirror.applied == leader.index {
                    prop_assert_eq!(&mirror.state, &leader.state);
                }
            }
            // A new leader applies a blank entry first; then the mirror catches up.
            leader.entry(None);
            for _ in 0..1_000 {
                if mirror.applied == leader.index {
                    break;
                }
                sync(&leader, &mut mirror, bytes_max);
            }
            prop_assert_eq!(mirror.applied, leader.index);
            prop_assert_eq!(mirror.state.encode().ok(), leader.state.encode().ok());
        }
    }

    proptest! {
        /// Whatever answers arrive, a mirror installs only strictly newer state from a leader
        /// of a term at least as new as any it heard, so its applied index and term never go
        /// back.
        #[test]
        fn the_mirror_never_goes_back(
            answers in proptest::collection::vec(
                (0u64..6, 0u64..50, 0u8..3, any::<bool>()),
                1..40,
            )
        ) {
            let (mut applied, mut term) = (0u64, 0u64);
            for (answer_term, answer_applied, kind, follows) in answers {
                let reply = match kind {
                    0 => ViewReply::Snapshot {
                        head: head(answer_term, answer_applied),
                        state: vec![],
                    },
                    1 => ViewReply::Delta {
                        head: head(answer_term, answer_applied),
                        from: if follows { applied } else { applied + 1 },
                        commands: vec![],
                    },
                    _ => ViewReply::Current(head(answer_term, answer_applied)),
                };
                match step(applied, term, reply) {
                    SyncStep::Apply { head, .. } => {
                        prop_assert!(follows);
                        prop_assert!(head.applied > applied && head.term >= term);
                        applied = head.applied;
                        term = head.term;
                    }
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
