//! The pure half of reconcile: what this node must do so that the workstations it hosts follow
//! the applied Raft state. [`plan`] takes the applied workstations, this node's id, its hosting
//! records and whether the fence lets anything run, and answers a list of [`Action`]s; the
//! driver ([`super::placement::reconcile`]) carries them out. [`plan_resume`] is the same for a
//! lease regained: which hosted placements to bring back, in which log epoch, with which
//! processes. No I/O, no clock, no locks: every decision of reconcile is here and tested here.
//!
//! The decisions:
//! - a hosted record whose workstation was deleted, is placed on another node (or on none),
//!   or is placed here under another generation is torn down ([`Action::TearDown`]); a new
//!   generation here starts only once the old record is gone (the next plan);
//! - committed stops (`StopProcess`) the hosting record has not taken are carried out
//!   ([`Action::CarryOutStops`]), whatever the fence says: stopping is always safe;
//! - only while the fence lets workstations run: a placement on this node with no hosting
//!   record starts ([`Action::Start`]) in the first log epoch above its committed floor, with
//!   the processes `DesiredProcess::started_by` its generation; a hosted current placement
//!   follows a committed resize ([`Action::ApplyLimits`]) and records its new desired
//!   processes, starting those its generation starts ([`Action::AddProcesses`]).
//!
//! Records whose id is not a Raft workstation id (the single-server store's) are left alone.

use std::collections::{BTreeMap, BTreeSet};

use shoal_raft::model::{NodeId, StopSignal, Workstation, WorkstationId};

use super::model::{ProcessSpec, Sizing, WorkstationRecord};
use super::placement::{node_name, record_of};
use crate::api_types::RestartPolicy;

/// What the fence allows ([`super::fencing::FenceHandle::may_run`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FenceView {
    /// The lease is held and this node's state is current: workstations may run.
    MayRun,
    /// No lease, or state not caught up: nothing may start.
    Forbidden,
}

/// Why a hosted workstation leaves this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Departure {
    /// Deleted from Raft.
    Deleted,
    /// Placed on another node, or on none (pending).
    Moved {
        /// Where it is placed now.
        to: Option<NodeId>,
    },
    /// Placed here again under another generation (the hosted one is stale).
    Superseded {
        /// The committed generation.
        current: u64,
    },
}

/// One thing the driver does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Remove everything of the hosted `generation` of `id` from the host (processes,
    /// sandbox, cgroups, work dir, home), then its hosting record. Never waits on the fence.
    TearDown {
        /// Workstation id.
        id: String,
        /// The hosted (stale) generation.
        generation: u64,
        /// Why.
        why: Departure,
    },
    /// Mark these processes `killed` in the hosting record of `id` at `generation` and stop
    /// them: `(process id, true for SIGKILL at once, false for SIGTERM and a grace)`.
    CarryOutStops {
        /// Workstation id.
        id: String,
        /// The hosted (and current) generation.
        generation: u64,
        /// The stops.
        stops: Vec<(u64, bool)>,
    },
    /// A new placement on this node: record it, commit its log floor first when its epoch is
    /// above 0, start its actor in `record.log_epoch`, then start `start`.
    Start {
        /// The hosting record to write (generation, epoch, sizing, every desired process).
        record: WorkstationRecord,
        /// The processes this placement starts, ascending.
        start: Vec<u64>,
    },
    /// A hosted current placement's committed size: its sandbox follows (a no-op when it
    /// already does).
    ApplyLimits {
        /// Workstation id.
        id: String,
        /// The committed reservation and limit.
        sizing: Sizing,
    },
    /// Desired processes of a hosted current placement that its record does not know yet:
    /// record every one of `processes`, then start those in `start`.
    AddProcesses {
        /// Workstation id.
        id: String,
        /// The hosted (and current) generation.
        generation: u64,
        /// The new processes' specs, as the record keeps them.
        processes: Vec<ProcessSpec>,
        /// The ones this placement starts, ascending.
        start: Vec<u64>,
    },
}

/// The committed reservation and limit of a workstation.
pub fn sizing_of(ws: &Workstation) -> Sizing {
    Sizing {
        cpu_millis: ws.spec.reservation.cpu_millis,
        memory_bytes: ws.spec.reservation.memory_bytes,
        cpu_limit_millis: ws.spec.limit.cpu_limit_millis,
        memory_limit_bytes: ws.spec.limit.memory_limit_bytes,
    }
}

/// The plan of one reconcile: the actions, teardowns and stops first (in id order), then, if
/// the fence allows, starts and updates of current placements (in id order).
pub fn plan(
    workstations: &BTreeMap<WorkstationId, Workstation>,
    own: NodeId,
    hosted: &BTreeMap<String, WorkstationRecord>,
    fence: FenceView,
) -> Vec<Action> {
    let mut actions = Vec::new();
    // Hosted records that are no longer the current placement here.
    for (id, record) in hosted {
        let Ok(ws_id) = id.parse::<WorkstationId>() else {
            continue;
        };
        let why = match workstations.get(&ws_id) {
            None => Some(Departure::Deleted),
            Some(ws) if ws.node != Some(own) => Some(Departure::Moved { to: ws.node }),
            Some(ws) if ws.generation != record.generation => Some(Departure::Superseded {
                current: ws.generation,
            }),
            Some(_) => None,
        };
        if let Some(why) = why {
            actions.push(Action::TearDown {
                id: id.clone(),
                generation: record.generation,
                why,
            });
        }
    }
    let placed_here = workstations.values().filter(|ws| ws.node == Some(own));
    // Committed stops not yet in the hosting record of the current generation.
    for ws in placed_here.clone() {
        let id = ws.id.to_string();
        let Some(record) = hosted.get(&id).filter(|r| r.generation == ws.generation) else {
            continue;
        };
        let stops: Vec<(u64, bool)> = ws
            .processes
            .values()
            .filter_map(|process| {
                let signal = process.stopped?;
                let untaken = record
                    .processes
                    .get(&process.id.0)
                    .is_some_and(|spec| !spec.killed);
                untaken.then_some((process.id.0, signal == StopSignal::Kill))
            })
            .collect();
        if !stops.is_empty() {
            actions.push(Action::CarryOutStops {
                id,
                generation: ws.generation,
                stops,
            });
        }
    }
    if fence == FenceView::Forbidden {
        // Stopping is always safe; starting waits for a held lease and current state.
        return actions;
    }
    for ws in placed_here {
        let id = ws.id.to_string();
        let started: Vec<u64> = ws
            .processes
            .values()
            .filter(|process| process.started_by(ws.generation))
            .map(|process| process.id.0)
            .collect();
        match hosted.get(&id) {
            // No record: a new placement here.
            None => actions.push(Action::Start {
                record: record_of(ws, &node_name(own)),
                start: started,
            }),
            // Another generation: torn down above; this one starts once that is done.
            Some(record) if record.generation != ws.generation => {}
            Some(record) => {
                actions.push(Action::ApplyLimits {
                    id: id.clone(),
                    sizing: sizing_of(ws),
                });
                let mut all = record_of(ws, &node_name(own)).processes;
                let new: Vec<ProcessSpec> = ws
                    .processes
                    .keys()
                    .filter(|process| !record.processes.contains_key(&process.0))
                    .filter_map(|process| all.remove(&process.0))
                    .collect();
                if new.is_empty() {
                    continue;
                }
                let start = new
                    .iter()
                    .map(|spec| spec.id)
                    .filter(|proc_id| started.contains(proc_id))
                    .collect();
                actions.push(Action::AddProcesses {
                    id,
                    generation: ws.generation,
                    processes: new,
                    start,
                });
            }
        }
    }
    actions
}

/// A hosted placement to bring back after the lease was regained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resume {
    /// Workstation id.
    pub id: String,
    /// Its (current) generation.
    pub generation: u64,
    /// The log epoch to start its actor in: one above the record's, so offsets never go back.
    pub log_epoch: u64,
}

/// The hosted placements to resume: every record whose generation is still the current
/// placement here and whose actor does not run (`running` lists the ones that do). Nothing
/// while the fence forbids running.
pub fn plan_resume(
    workstations: &BTreeMap<WorkstationId, Workstation>,
    own: NodeId,
    hosted: &BTreeMap<String, WorkstationRecord>,
    running: &BTreeSet<String>,
    fence: FenceView,
) -> Vec<Resume> {
    if fence == FenceView::Forbidden {
        return Vec::new();
    }
    hosted
        .values()
        .filter(|record| !running.contains(&record.id))
        .filter(|record| {
            record
                .id
                .parse::<WorkstationId>()
                .ok()
                .and_then(|ws_id| workstations.get(&ws_id))
                .is_some_and(|ws| ws.node == Some(own) && ws.generation == record.generation)
        })
        .map(|record| Resume {
            id: record.id.clone(),
            generation: record.generation,
            log_epoch: record.log_epoch.saturating_add(1),
        })
        .collect()
}

/// The processes a resumed placement starts again: those of its record that were not stopped
/// (in the record or in the committed state `ws`) and whose restart policy asks for it;
/// `never` ones stay exited, as after a node restart.
pub fn resumed_processes(record: &WorkstationRecord, ws: Option<&Workstation>) -> Vec<u64> {
    let stopped_in_raft = |proc_id: u64| {
        ws.and_then(|ws| {
            ws.processes
                .values()
                .find(|process| process.id.0 == proc_id)
        })
        .is_some_and(|process| process.stopped.is_some())
    };
    record
        .processes
        .values()
        .filter(|spec| {
            !spec.killed && !stopped_in_raft(spec.id) && spec.restart != RestartPolicy::Never
        })
        .map(|spec| spec.id)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use shoal_raft::model::{
        DesiredProcess, Limit, NetworkPolicy, ProcessId, Resources, RestartPolicy as Restart,
        WorkstationSpec, WorkstationState,
    };

    const OWN: NodeId = 1;
    const OTHER: NodeId = 2;

    fn process(id: u64, restart: Restart, first_generation: u64) -> DesiredProcess {
        DesiredProcess {
            id: ProcessId(id),
            argv: vec!["sleep".to_string(), "60".to_string()],
            env: BTreeMap::new(),
            cwd: None,
            restart,
            created_ms: 0,
            first_generation,
            stopped: None,
        }
    }

    fn workstation(id: u64, node: Option<NodeId>, generation: u64) -> Workstation {
        Workstation {
            id: WorkstationId(id),
            tenant: "t".to_string(),
            name: String::new(),
            spec: WorkstationSpec {
                reservation: Resources {
                    cpu_millis: 100,
                    memory_bytes: 64 << 20,
                },
                limit: Limit {
                    cpu_limit_millis: 100,
                    memory_limit_bytes: 64 << 20,
                },
                network: NetworkPolicy::None,
            },
            node,
            generation,
            state: if node.is_some() {
                WorkstationState::Placed
            } else {
                WorkstationState::Pending
            },
            processes: BTreeMap::new(),
            next_process_id: 1,
            log_offset_floor: 0,
            created_ms: 0,
        }
    }

    fn with(mut ws: Workstation, processes: &[DesiredProcess]) -> Workstation {
        for process in processes {
            ws.processes.insert(process.id, process.clone());
            ws.next_process_id = ws.next_process_id.max(process.id.0 + 1);
        }
        ws
    }

    fn state(all: &[Workstation]) -> BTreeMap<WorkstationId, Workstation> {
        all.iter().map(|ws| (ws.id, ws.clone())).collect()
    }

    /// The record this node keeps for `ws` once it started it.
    fn hosting(all: &[Workstation]) -> BTreeMap<String, WorkstationRecord> {
        all.iter()
            .map(|ws| (ws.id.to_string(), record_of(ws, &node_name(OWN))))
            .collect()
    }

    fn teardowns(actions: &[Action]) -> Vec<(String, u64, Departure)> {
        actions
            .iter()
            .filter_map(|action| match action {
                Action::TearDown {
                    id,
                    generation,
                    why,
                } => Some((id.clone(), *generation, *why)),
                _ => None,
            })
            .collect()
    }

    fn starts(actions: &[Action]) -> Vec<(String, u64, u64, Vec<u64>)> {
        actions
            .iter()
            .filter_map(|action| match action {
                Action::Start { record, start } => Some((
                    record.id.clone(),
                    record.generation,
                    record.log_epoch,
                    start.clone(),
                )),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_new_placement_here_starts_with_the_processes_its_generation_starts() {
        let mut stopped = process(4, Restart::Always, 1);
        stopped.stopped = Some(StopSignal::Term);
        let ws = with(
            workstation(7, Some(OWN), 1),
            &[
                process(1, Restart::Never, 1),
                process(2, Restart::Always, 1),
                process(3, Restart::OnFailure, 1),
                stopped,
            ],
        );
        let actions = plan(&state(&[ws]), OWN, &BTreeMap::new(), FenceView::MayRun);
        assert_eq!(
            starts(&actions),
            vec![("ws-7".to_string(), 1, 0, vec![1, 2, 3])]
        );
        let Some(Action::Start { record, .. }) = actions.first() else {
            panic!("{actions:?}");
        };
        assert_eq!(record.node, "node-1");
        assert_eq!(
            record.processes.len(),
            4,
            "a stopped process is recorded too"
        );
        assert!(record.processes[&4].killed);
    }

    #[test]
    fn a_re_placed_generation_starts_above_its_floor_without_its_never_processes() {
        let mut ws = with(
            workstation(7, Some(OWN), 3),
            &[
                process(1, Restart::Never, 1),
                process(2, Restart::Always, 1),
            ],
        );
        ws.log_offset_floor = (5 << super::super::host::LOG_EPOCH_SHIFT) + 17;
        let actions = plan(&state(&[ws]), OWN, &BTreeMap::new(), FenceView::MayRun);
        assert_eq!(starts(&actions), vec![("ws-7".to_string(), 3, 6, vec![2])]);
        let Some(Action::Start { record, .. }) = actions.first() else {
            panic!("{actions:?}");
        };
        assert!(record.processes[&1].node_lost);
    }

    #[test]
    fn placements_elsewhere_or_pending_start_nothing_here() {
        let all = [
            workstation(1, Some(OTHER), 1),
            workstation(2, None, 2),
            with(
                workstation(3, Some(OTHER), 1),
                &[process(1, Restart::Always, 1)],
            ),
        ];
        assert_eq!(
            plan(&state(&all), OWN, &BTreeMap::new(), FenceView::MayRun),
            vec![]
        );
    }

    #[test]
    fn deleted_moved_and_superseded_workstations_are_torn_down() {
        let hosted = hosting(&[
            workstation(1, Some(OWN), 1),
            workstation(2, Some(OWN), 1),
            workstation(3, Some(OWN), 1),
            workstation(4, Some(OWN), 2),
            workstation(5, Some(OWN), 1),
        ]);
        let applied = state(&[
            // 1 deleted.
            workstation(2, Some(OTHER), 2),
            workstation(3, None, 2),
            workstation(4, Some(OWN), 3),
            workstation(5, Some(OWN), 1),
        ]);
        for fence in [FenceView::MayRun, FenceView::Forbidden] {
            let actions = plan(&applied, OWN, &hosted, fence);
            assert_eq!(
                teardowns(&actions),
                vec![
                    ("ws-1".to_string(), 1, Departure::Deleted),
                    ("ws-2".to_string(), 1, Departure::Moved { to: Some(OTHER) }),
                    ("ws-3".to_string(), 1, Departure::Moved { to: None }),
                    ("ws-4".to_string(), 2, Departure::Superseded { current: 3 }),
                ],
                "{fence:?}"
            );
            // Generation 3 of ws-4 starts only once the old record is gone.
            assert_eq!(starts(&actions), vec![]);
        }
        let mut after = hosted.clone();
        after.remove("ws-4");
        assert_eq!(
            starts(&plan(&applied, OWN, &after, FenceView::MayRun)),
            vec![("ws-4".to_string(), 3, 0, vec![])]
        );
    }

    #[test]
    fn records_of_the_single_server_store_are_left_alone() {
        let mut hosted = BTreeMap::new();
        let mut record = record_of(&workstation(1, Some(OWN), 1), "node-1");
        record.id = "w-legacy".to_string();
        hosted.insert(record.id.clone(), record);
        assert_eq!(
            plan(&BTreeMap::new(), OWN, &hosted, FenceView::MayRun),
            vec![]
        );
    }

    #[test]
    fn committed_stops_are_carried_out_even_while_the_fence_forbids_running() {
        let before = with(
            workstation(7, Some(OWN), 1),
            &[
                process(1, Restart::Always, 1),
                process(2, Restart::Always, 1),
                process(3, Restart::Always, 1),
            ],
        );
        let hosted = hosting(std::slice::from_ref(&before));
        let mut after = before.clone();
        for (proc_id, signal) in [(1, StopSignal::Term), (3, StopSignal::Kill)] {
            if let Some(process) = after.processes.get_mut(&ProcessId(proc_id)) {
                process.stopped = Some(signal);
            }
        }
        let applied = state(&[after.clone()]);
        let expected = Action::CarryOutStops {
            id: "ws-7".to_string(),
            generation: 1,
            stops: vec![(1, false), (3, true)],
        };
        for fence in [FenceView::MayRun, FenceView::Forbidden] {
            let actions = plan(&applied, OWN, &hosted, fence);
            assert!(actions.contains(&expected), "{fence:?}: {actions:?}");
        }
        // Once the record took them, nothing more to do.
        let taken = hosting(&[after]);
        let actions = plan(&applied, OWN, &taken, FenceView::Forbidden);
        assert_eq!(actions, vec![]);
    }

    #[test]
    fn stops_of_a_stale_generation_are_left_to_its_teardown() {
        let hosted = hosting(&[with(
            workstation(7, Some(OWN), 1),
            &[process(1, Restart::Always, 1)],
        )]);
        let mut moved = with(
            workstation(7, Some(OWN), 2),
            &[process(1, Restart::Always, 1)],
        );
        if let Some(process) = moved.processes.get_mut(&ProcessId(1)) {
            process.stopped = Some(StopSignal::Kill);
        }
        let actions = plan(&state(&[moved]), OWN, &hosted, FenceView::MayRun);
        assert_eq!(
            actions,
            vec![Action::TearDown {
                id: "ws-7".to_string(),
                generation: 1,
                why: Departure::Superseded { current: 2 },
            }]
        );
    }

    #[test]
    fn a_hosted_placement_follows_its_size_and_records_and_starts_new_processes() {
        let before = with(
            workstation(7, Some(OWN), 1),
            &[process(1, Restart::Always, 1)],
        );
        let hosted = hosting(std::slice::from_ref(&before));
        let mut stopped_before_seen = process(4, Restart::Always, 1);
        stopped_before_seen.stopped = Some(StopSignal::Kill);
        let mut after = with(
            before,
            &[
                process(2, Restart::Never, 1),
                process(3, Restart::OnFailure, 1),
                stopped_before_seen,
            ],
        );
        after.spec.limit.memory_limit_bytes = 128 << 20;
        let actions = plan(&state(&[after.clone()]), OWN, &hosted, FenceView::MayRun);
        let Some(Action::AddProcesses {
            processes, start, ..
        }) = actions.get(1)
        else {
            panic!("{actions:?}");
        };
        assert_eq!(
            actions.first(),
            Some(&Action::ApplyLimits {
                id: "ws-7".to_string(),
                sizing: sizing_of(&after),
            })
        );
        assert_eq!(
            processes.iter().map(|spec| spec.id).collect::<Vec<_>>(),
            vec![2, 3, 4]
        );
        assert!(processes[2].killed, "recorded as killed, not started");
        assert_eq!(start, &vec![2, 3]);
        assert_eq!(actions.len(), 2);
    }

    #[test]
    fn while_the_fence_forbids_running_nothing_starts_or_changes() {
        let all = [
            with(
                workstation(1, Some(OWN), 1),
                &[process(1, Restart::Always, 1)],
            ),
            workstation(2, Some(OWN), 1),
        ];
        let hosted = hosting(&all[1..]);
        let mut grown = all.to_vec();
        grown[1] = with(grown[1].clone(), &[process(1, Restart::Always, 1)]);
        grown[1].spec.limit.cpu_limit_millis = 500;
        assert_eq!(
            plan(&state(&grown), OWN, &hosted, FenceView::Forbidden),
            vec![]
        );
    }

    #[test]
    fn a_resume_brings_back_current_placements_that_do_not_run_in_the_next_epoch() {
        let mut current = record_of(&workstation(1, Some(OWN), 1), "node-1");
        current.log_epoch = 3;
        let hosted: BTreeMap<String, WorkstationRecord> = [
            current,
            record_of(&workstation(2, Some(OWN), 1), "node-1"),
            record_of(&workstation(3, Some(OWN), 1), "node-1"),
            record_of(&workstation(4, Some(OWN), 1), "node-1"),
        ]
        .into_iter()
        .map(|record| (record.id.clone(), record))
        .collect();
        let applied = state(&[
            workstation(1, Some(OWN), 1),
            workstation(2, Some(OWN), 1),
            workstation(3, Some(OTHER), 2),
            workstation(4, Some(OWN), 2),
        ]);
        let running: BTreeSet<String> = ["ws-2".to_string()].into();
        assert_eq!(
            plan_resume(&applied, OWN, &hosted, &running, FenceView::MayRun),
            vec![Resume {
                id: "ws-1".to_string(),
                generation: 1,
                log_epoch: 4,
            }]
        );
        assert_eq!(
            plan_resume(&applied, OWN, &hosted, &running, FenceView::Forbidden),
            vec![]
        );
    }

    #[test]
    fn a_resume_restarts_what_its_restart_policy_asks_for_and_nothing_stopped() {
        let mut ws = with(
            workstation(1, Some(OWN), 1),
            &[
                process(1, Restart::Never, 1),
                process(2, Restart::Always, 1),
                process(3, Restart::OnFailure, 1),
                process(4, Restart::Always, 1),
                process(5, Restart::Always, 1),
            ],
        );
        let mut record = record_of(&ws, "node-1");
        if let Some(spec) = record.processes.get_mut(&4) {
            spec.killed = true;
        }
        if let Some(process) = ws.processes.get_mut(&ProcessId(5)) {
            process.stopped = Some(StopSignal::Term);
        }
        assert_eq!(resumed_processes(&record, Some(&ws)), vec![2, 3]);
        assert_eq!(resumed_processes(&record, None), vec![2, 3, 5]);
    }

    fn restart() -> impl Strategy<Value = Restart> {
        prop_oneof![
            Just(Restart::Never),
            Just(Restart::OnFailure),
            Just(Restart::Always)
        ]
    }

    fn desired() -> impl Strategy<Value = (u64, Restart, u64, Option<bool>)> {
        (
            1u64..6,
            restart(),
            1u64..4,
            proptest::option::of(any::<bool>()),
        )
    }

    /// A generated applied state: workstations 1..8 on this node, another or none, at
    /// generations 1..4, with processes.
    fn applied() -> impl Strategy<Value = BTreeMap<WorkstationId, Workstation>> {
        proptest::collection::btree_map(
            1u64..8,
            (
                prop_oneof![Just(Some(OWN)), Just(Some(OTHER)), Just(None)],
                1u64..4,
                0u64..(1 << 44),
                proptest::collection::vec(desired(), 0..5),
            ),
            0..6,
        )
        .prop_map(|all| {
            all.into_iter()
                .map(|(id, (node, generation, floor, processes))| {
                    let mut ws = workstation(id, node, generation);
                    ws.log_offset_floor = floor;
                    for (proc_id, restart, first, stopped) in processes {
                        let mut p = process(proc_id, restart, first.min(generation));
                        p.stopped = stopped.map(|kill| {
                            if kill {
                                StopSignal::Kill
                            } else {
                                StopSignal::Term
                            }
                        });
                        ws.processes.insert(p.id, p);
                    }
                    (ws.id, ws)
                })
                .collect()
        })
    }

    /// Generated hosting records: workstations 1..8 at generations 1..4 with some processes,
    /// some of them killed.
    fn hosted() -> impl Strategy<Value = BTreeMap<String, WorkstationRecord>> {
        proptest::collection::btree_map(
            1u64..8,
            (
                1u64..4,
                proptest::collection::btree_map(1u64..6, any::<bool>(), 0..5),
            ),
            0..6,
        )
        .prop_map(|all| {
            all.into_iter()
                .map(|(id, (generation, processes))| {
                    let ws = with(
                        workstation(id, Some(OWN), generation),
                        &processes
                            .keys()
                            .map(|p| process(*p, Restart::Always, 1))
                            .collect::<Vec<_>>(),
                    );
                    let mut record = record_of(&ws, "node-1");
                    for (proc_id, killed) in processes {
                        if let Some(spec) = record.processes.get_mut(&proc_id) {
                            spec.killed = killed;
                        }
                    }
                    (record.id.clone(), record)
                })
                .collect()
        })
    }

    fn fence() -> impl Strategy<Value = FenceView> {
        prop_oneof![Just(FenceView::MayRun), Just(FenceView::Forbidden)]
    }

    proptest! {
        /// Safety of every plan: a start, a resize or a new process only for a placement on
        /// this node at its committed generation, only while the fence lets workstations run,
        /// and only for processes `started_by` that generation; a workstation is started only
        /// when no record of it is hosted (an old generation is torn down first), in the first
        /// epoch above its floor.
        #[test]
        fn a_plan_starts_only_current_placements_here_and_nothing_while_fenced(
            applied in applied(), hosted in hosted(), fence in fence(),
        ) {
            let actions = plan(&applied, OWN, &hosted, fence);
            let current = |id: &str, generation: u64| {
                id.parse::<WorkstationId>().ok().and_then(|ws_id| applied.get(&ws_id))
                    .filter(|ws| ws.node == Some(OWN) && ws.generation == generation)
            };
            for action in &actions {
                match action {
                    Action::Start { record, start } => {
                        prop_assert_eq!(fence, FenceView::MayRun);
                        let ws = current(&record.id, record.generation);
                        prop_assert!(ws.is_some(), "{action:?}");
                        let Some(ws) = ws else { continue };
                        prop_assert!(!hosted.contains_key(&record.id));
                        prop_assert_eq!(record.log_epoch, super::super::placement::log_epoch_above(ws.log_offset_floor));
                        for proc_id in start {
                            let started = ws.processes.get(&ProcessId(*proc_id)).is_some_and(|p| p.started_by(ws.generation));
                            prop_assert!(started, "{action:?}");
                        }
                    }
                    Action::AddProcesses { id, generation, processes, start } => {
                        prop_assert_eq!(fence, FenceView::MayRun);
                        let ws = current(id, *generation);
                        prop_assert!(ws.is_some(), "{action:?}");
                        let Some(ws) = ws else { continue };
                        prop_assert_eq!(hosted.get(id).map(|r| r.generation), Some(*generation));
                        for spec in processes {
                            prop_assert!(!hosted[id].processes.contains_key(&spec.id));
                        }
                        for proc_id in start {
                            let started = ws.processes.get(&ProcessId(*proc_id)).is_some_and(|p| p.started_by(ws.generation));
                            prop_assert!(started, "{action:?}");
                        }
                    }
                    Action::ApplyLimits { id, .. } => {
                        prop_assert_eq!(fence, FenceView::MayRun);
                        let generation = hosted.get(id).map_or(0, |r| r.generation);
                        prop_assert!(current(id, generation).is_some(), "{action:?}");
                    }
                    Action::CarryOutStops { id, generation, stops } => {
                        let ws = current(id, *generation);
                        prop_assert!(ws.is_some(), "{action:?}");
                        let Some(ws) = ws else { continue };
                        for (proc_id, kill) in stops {
                            let signal = ws.processes.get(&ProcessId(*proc_id)).and_then(|p| p.stopped);
                            prop_assert_eq!(signal, Some(if *kill { StopSignal::Kill } else { StopSignal::Term }));
                            prop_assert_eq!(hosted[id].processes.get(proc_id).map(|s| s.killed), Some(false));
                        }
                    }
                    Action::TearDown { .. } => {}
                }
            }
        }

        /// Completeness: every hosted record that is not the current placement here is torn
        /// down exactly once, whatever the fence, and no current one is; while the fence
        /// allows it, every placement here without a record starts.
        #[test]
        fn a_plan_tears_down_exactly_the_stale_records_and_starts_every_new_placement(
            applied in applied(), hosted in hosted(), fence in fence(),
        ) {
            let actions = plan(&applied, OWN, &hosted, fence);
            let torn: Vec<(String, u64)> = teardowns(&actions).into_iter().map(|(id, g, _)| (id, g)).collect();
            let stale: Vec<(String, u64)> = hosted.values()
                .filter(|record| {
                    let ws_id: Option<WorkstationId> = record.id.parse().ok();
                    !ws_id.and_then(|ws_id| applied.get(&ws_id))
                        .is_some_and(|ws| ws.node == Some(OWN) && ws.generation == record.generation)
                })
                .map(|record| (record.id.clone(), record.generation))
                .collect();
            prop_assert_eq!(torn, stale);
            let started: Vec<String> = starts(&actions).into_iter().map(|(id, ..)| id).collect();
            let expected: Vec<String> = if fence == FenceView::MayRun {
                applied.values()
                    .filter(|ws| ws.node == Some(OWN) && !hosted.contains_key(&ws.id.to_string()))
                    .map(|ws| ws.id.to_string())
                    .collect()
            } else {
                Vec::new()
            };
            prop_assert_eq!(started, expected);
        }

        /// A resume brings back only current placements here whose actor does not run, one
        /// epoch above the record's, and nothing while the fence forbids running.
        #[test]
        fn a_resume_plan_resumes_only_stopped_current_placements(
            applied in applied(), hosted in hosted(), fence in fence(),
            running in proptest::collection::btree_set(1u64..8, 0..4),
        ) {
            let running: BTreeSet<String> = running.into_iter().map(|id| WorkstationId(id).to_string()).collect();
            let resumes = plan_resume(&applied, OWN, &hosted, &running, fence);
            if fence == FenceView::Forbidden {
                prop_assert!(resumes.is_empty());
            }
            for resume in resumes {
                prop_assert!(!running.contains(&resume.id));
                let record = &hosted[&resume.id];
                prop_assert_eq!(resume.generation, record.generation);
                prop_assert_eq!(resume.log_epoch, record.log_epoch + 1);
                let ws = resume.id.parse::<WorkstationId>().ok().and_then(|id| applied.get(&id));
                prop_assert!(ws.is_some_and(|ws| ws.node == Some(OWN) && ws.generation == resume.generation));
            }
        }
    }
}
