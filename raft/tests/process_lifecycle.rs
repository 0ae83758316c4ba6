//! Which placements start a desired process (SPEC, Lifecycle, Node lost: on the new node
//! `always` and `on-failure` processes start again, `never` ones are `exited` with reason
//! `node_lost`), and stops that no placement undoes (`StopProcess`, the API's TERM or KILL).
//! Data-driven cases on the pure `apply`, then property tests over random command logs with
//! node losses, drains, removals, pending workstations and stops.

// Test code: a panic is the failure report (the workspace denies unwrap/expect elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::collections::BTreeSet;

use common::workstation_request as request;
use proptest::prelude::*;
use shoal_raft::apply::apply;
use shoal_raft::command::sha256_hex;
use shoal_raft::command::Admission;
use shoal_raft::command::PlacementHints;
use shoal_raft::model::ClusterSettings;
use shoal_raft::model::Limit;
use shoal_raft::model::NodeId;
use shoal_raft::model::ProcessId;
use shoal_raft::model::Resources;
use shoal_raft::model::RestartPolicy;
use shoal_raft::model::Roles;
use shoal_raft::model::StopSignal;
use shoal_raft::model::WorkstationId;
use shoal_raft::Action;
use shoal_raft::ClusterState;
use shoal_raft::Command;
use shoal_raft::Outcome;

const GIB: u64 = 1 << 30;

fn cmd(at_ms: u64, action: Action) -> Command {
    Command::new(at_ms, "key-test", action)
}

fn must(state: &mut ClusterState, at_ms: u64, action: Action) -> Outcome {
    let answer = apply(state, &cmd(at_ms, action.clone()));
    match answer {
        Ok(outcome) => outcome,
        Err(refusal) => panic!("{action:?} refused: {refusal:?}"),
    }
}

fn register(key: &str, roles: Roles, admission: Admission, cpu_millis: u64) -> Action {
    Action::RegisterNode(common::node_registration(admission, key, roles, cpu_millis))
}

fn join(key: &str, cpu_millis: u64) -> Action {
    register(
        key,
        Roles::WORKER,
        Admission::Token {
            secret_sha256: sha256_hex("join"),
        },
        cpu_millis,
    )
}

/// An initialised cluster: node 1 (server and worker, 4 CPUs) and a join token for workers.
fn cluster() -> ClusterState {
    let mut state = ClusterState::new();
    must(
        &mut state,
        0,
        Action::InitCluster {
            cluster_id: "c1".into(),
            settings: ClusterSettings::default(),
        },
    );
    must(
        &mut state,
        1,
        register("boot", Roles::SERVER_WORKER, Admission::Bootstrap, 4000),
    );
    must(
        &mut state,
        2,
        Action::CreateToken {
            secret_sha256: sha256_hex("join"),
            prefix: "shoal1.test".to_string(),
            roles: Roles::WORKER,
            ttl_ms: 1_000_000_000,
            uses_max: 1_000,
        },
    );
    state
}

fn create(tenant: &str, cpu_millis: u64) -> Action {
    Action::CreateWorkstation {
        request: request(tenant, cpu_millis),
        hints: PlacementHints::default(),
    }
}

fn add(workstation: WorkstationId, restart: RestartPolicy) -> Action {
    Action::AddProcess {
        workstation,
        argv: vec!["sleep".into(), "600".into()],
        env: BTreeMap::new(),
        cwd: None,
        restart,
    }
}

fn stop(workstation: WorkstationId, process: ProcessId, signal: StopSignal) -> Action {
    Action::StopProcess {
        workstation,
        process,
        signal,
    }
}

fn mark_down(node: NodeId) -> Action {
    Action::MarkNodesDown {
        nodes: vec![node],
        hints: PlacementHints::default(),
        observed: Default::default(),
    }
}

fn added(outcome: Outcome) -> ProcessId {
    match outcome {
        Outcome::ProcessAdded { id } => id,
        other => panic!("not a process: {other:?}"),
    }
}

/// Which of a workstation's processes its current placement starts, by restart policy name.
fn started_now(state: &ClusterState, id: WorkstationId) -> Vec<ProcessId> {
    let ws = &state.workstations[&id];
    ws.processes
        .values()
        .filter(|process| process.started_by(ws.generation))
        .map(|process| process.id)
        .collect()
}

#[test]
fn a_re_placement_after_a_node_loss_starts_always_and_on_failure_processes_but_not_never_ones() {
    let mut state = cluster();
    // Node 1 is nearly full, so the workstation goes to the worker.
    must(&mut state, 3, create("filler", 3500));
    must(&mut state, 4, join("w2", 4000));
    let Outcome::WorkstationPlaced(placed) = must(&mut state, 5, create("t", 1000)) else {
        panic!("not placed")
    };
    assert_eq!((placed.node, placed.generation), (2, 1));
    let never = added(must(&mut state, 6, add(placed.id, RestartPolicy::Never)));
    let on_failure = added(must(
        &mut state,
        7,
        add(placed.id, RestartPolicy::OnFailure),
    ));
    let always = added(must(&mut state, 8, add(placed.id, RestartPolicy::Always)));
    let ws = &state.workstations[&placed.id];
    assert!(ws.processes.values().all(|p| p.first_generation == 1));
    assert_eq!(
        started_now(&state, placed.id),
        vec![never, on_failure, always]
    );

    must(&mut state, 9, mark_down(2));
    must(&mut state, 10, join("w3", 4000));
    // Nothing fitted at the loss (node 1 has 500 millicores free): pending at generation 2,
    // and the worker that joined takes it under that generation.
    let ws = &state.workstations[&placed.id];
    assert_eq!((ws.node, ws.generation), (Some(3), 2), "{ws:?}");
    assert_eq!(started_now(&state, placed.id), vec![on_failure, always]);
    let lost = &ws.processes[&never];
    assert!(lost.lost_with_its_node(ws.generation));
    assert!(!lost.started_by(ws.generation));
    assert!(!ws.processes[&always].lost_with_its_node(ws.generation));
}

#[test]
fn a_never_process_added_while_its_workstation_has_no_node_is_started_by_the_next_placement() {
    let mut state = cluster();
    must(&mut state, 3, create("filler", 3500));
    must(&mut state, 4, join("w2", 4000));
    let Outcome::WorkstationPlaced(placed) = must(&mut state, 5, create("t", 1000)) else {
        panic!("not placed")
    };
    assert_eq!(placed.node, 2);
    must(&mut state, 6, mark_down(2));
    let ws = &state.workstations[&placed.id];
    assert_eq!((ws.node, ws.generation), (None, 2), "pending: {ws:?}");
    let never = added(must(&mut state, 7, add(placed.id, RestartPolicy::Never)));
    assert_eq!(
        state.workstations[&placed.id].processes[&never].first_generation,
        2
    );

    must(&mut state, 8, join("w3", 4000));
    assert_eq!(state.workstations[&placed.id].node, Some(3));
    assert_eq!(started_now(&state, placed.id), vec![never]);

    // A drain moves it on (generation 3): that placement does not start it again.
    must(&mut state, 9, join("w4", 4000));
    must(&mut state, 10, Action::DrainNode { node: 3 });
    must(
        &mut state,
        11,
        Action::DrainStep {
            node: 3,
            hints: PlacementHints::default(),
            observed: Default::default(),
        },
    );
    let ws = &state.workstations[&placed.id];
    assert_eq!((ws.node, ws.generation), (Some(4), 3), "{ws:?}");
    assert!(started_now(&state, placed.id).is_empty());
    assert!(ws.processes[&never].lost_with_its_node(3));
}

#[test]
fn a_stop_is_recorded_idempotently_keeps_kill_over_term_and_is_audited_as_a_kill() {
    let mut state = cluster();
    let Outcome::WorkstationPlaced(placed) = must(&mut state, 3, create("t", 1000)) else {
        panic!("not placed")
    };
    let first = added(must(&mut state, 4, add(placed.id, RestartPolicy::Always)));
    let second = added(must(
        &mut state,
        5,
        add(placed.id, RestartPolicy::OnFailure),
    ));
    let stopped = |state: &ClusterState, process: ProcessId| {
        state.workstations[&placed.id].processes[&process].stopped
    };

    must(&mut state, 6, stop(placed.id, first, StopSignal::Term));
    assert_eq!(stopped(&state, first), Some(StopSignal::Term));
    assert_eq!(stopped(&state, second), None);
    let audit = state
        .audit
        .back()
        .cloned()
        .unwrap_or_else(|| panic!("no audit"));
    assert_eq!(
        (
            audit.action.as_str(),
            audit.resource.as_str(),
            audit.outcome.as_str(),
            audit.tenant.as_deref()
        ),
        ("process.kill", "ws-1/p-1", "ok", Some("t"))
    );
    must(&mut state, 7, stop(placed.id, first, StopSignal::Term));
    assert_eq!(stopped(&state, first), Some(StopSignal::Term));
    must(&mut state, 8, stop(placed.id, first, StopSignal::Kill));
    assert_eq!(stopped(&state, first), Some(StopSignal::Kill));
    must(&mut state, 9, stop(placed.id, first, StopSignal::Term));
    assert_eq!(stopped(&state, first), Some(StopSignal::Kill));
    assert_eq!(started_now(&state, placed.id), vec![second]);

    for (action, code) in [
        (stop(placed.id, ProcessId(9), StopSignal::Term), "not_found"),
        (
            stop(WorkstationId(99), first, StopSignal::Kill),
            "not_found",
        ),
    ] {
        let before = state.workstations.clone();
        let answer = apply(&mut state, &cmd(10, action));
        assert!(
            matches!(&answer, Err(refusal) if refusal.code() == code),
            "{answer:?}"
        );
        assert_eq!(state.workstations, before, "a refusal changes nothing");
        assert_eq!(
            state.audit.back().map(|entry| entry.outcome.as_str()),
            Some(code)
        );
    }
}

#[test]
fn a_process_stopped_before_its_node_is_lost_is_not_started_by_the_re_placement() {
    let mut state = cluster();
    // Node 1 keeps 800 millicores free: the workstation goes to the emptier worker, and back
    // to node 1 when the worker is lost.
    must(&mut state, 3, create("filler", 3200));
    must(&mut state, 4, join("w2", 4000));
    let Outcome::WorkstationPlaced(placed) = must(&mut state, 5, create("t", 800)) else {
        panic!("not placed")
    };
    assert_eq!(placed.node, 2);
    let always = added(must(&mut state, 6, add(placed.id, RestartPolicy::Always)));
    let kept = added(must(&mut state, 7, add(placed.id, RestartPolicy::Always)));
    must(&mut state, 8, stop(placed.id, always, StopSignal::Term));
    must(&mut state, 9, mark_down(2));
    let ws = &state.workstations[&placed.id];
    assert_eq!((ws.node, ws.generation), (Some(1), 2), "{ws:?}");
    assert_eq!(started_now(&state, placed.id), vec![kept]);
    assert!(
        !ws.processes[&always].lost_with_its_node(2),
        "killed, not lost"
    );
    // The stop survives a snapshot round trip (a follower installing one, a worker's mirror).
    let decoded = ClusterState::decode(&state.encode().unwrap_or_default())
        .unwrap_or_else(|err| panic!("{err}"));
    assert_eq!(decoded.workstations, state.workstations);
}

// ----- properties over random command logs -----

fn arb_action() -> impl Strategy<Value = Action> {
    let tenant = prop::sample::select(vec!["a", "b"]);
    let restart = prop::sample::select(vec![
        RestartPolicy::Never,
        RestartPolicy::OnFailure,
        RestartPolicy::Always,
    ]);
    let signal = prop::sample::select(vec![StopSignal::Term, StopSignal::Kill]);
    prop_oneof![
        3 => (tenant, 200u64..2500).prop_map(|(t, c)| create(t, c)),
        4 => (1u64..8, restart).prop_map(|(id, r)| add(WorkstationId(id), r)),
        2 => (1u64..8, 1u64..6, signal).prop_map(|(id, p, s)| stop(WorkstationId(id), ProcessId(p), s)),
        1 => (1u64..8, 1u64..6).prop_map(|(id, p)| Action::RemoveProcess { workstation: WorkstationId(id), process: ProcessId(p) }),
        2 => (1u64..6).prop_map(mark_down),
        2 => (1u64..6).prop_map(|n| Action::MarkNodeReady { node: n, hints: Default::default() }),
        1 => (1u64..6).prop_map(|n| Action::DrainNode { node: n }),
        2 => (1u64..6).prop_map(|n| Action::DrainStep { node: n, hints: Default::default(), observed: Default::default() }),
        1 => (1u64..6).prop_map(|n| Action::RemoveNode { node: n }),
        1 => (1u64..8, 100u64..3000).prop_map(|(id, c)| Action::ResizeWorkstation {
            id: WorkstationId(id), reservation: Resources::new(c, GIB), limit: Limit { cpu_limit_millis: c, memory_limit_bytes: GIB },
        }),
        1 => (1u64..8).prop_map(|id| Action::DeleteWorkstation { id: WorkstationId(id) }),
        2 => (0u64..5, 1000u64..4000).prop_map(|(k, c)| join(&format!("w{k}"), c)),
    ]
}

/// What a random log did to the processes, as the hosts that follow it would see it.
#[derive(Default)]
struct History {
    /// (workstation, generation) → every node that generation was placed on.
    generation_nodes: BTreeMap<(WorkstationId, u64), BTreeSet<NodeId>>,
    /// (workstation, process) → the generations of the placements that started it.
    started_by: BTreeMap<(WorkstationId, ProcessId), BTreeSet<u64>>,
    /// (workstation, process) → the workstation's generation when the process was added.
    generation_at_add: BTreeMap<(WorkstationId, ProcessId), u64>,
    /// Processes whose stop was committed.
    stopped: BTreeSet<(WorkstationId, ProcessId)>,
    /// Processes that were started by a placement after their stop was committed.
    started_after_stop: Vec<(WorkstationId, ProcessId, u64)>,
}

impl History {
    /// Applies `actions` to a fresh cluster, recording after each command which process each
    /// current placement starts.
    fn of(actions: &[Action]) -> (ClusterState, History) {
        let mut state = cluster();
        let mut history = History::default();
        for (i, action) in actions.iter().enumerate() {
            let generation_before = match action {
                Action::AddProcess { workstation, .. } => {
                    state.workstations.get(workstation).map(|ws| ws.generation)
                }
                _ => None,
            };
            let answer = apply(&mut state, &cmd(100 + i as u64, action.clone()));
            match (action, &answer) {
                (Action::AddProcess { workstation, .. }, Ok(Outcome::ProcessAdded { id })) => {
                    if let Some(generation) = generation_before {
                        history
                            .generation_at_add
                            .insert((*workstation, *id), generation);
                    }
                }
                (
                    Action::StopProcess {
                        workstation,
                        process,
                        ..
                    },
                    Ok(_),
                ) => {
                    history.stopped.insert((*workstation, *process));
                }
                _ => {}
            }
            for ws in state.workstations.values() {
                let Some(node) = ws.node else { continue };
                history
                    .generation_nodes
                    .entry((ws.id, ws.generation))
                    .or_default()
                    .insert(node);
                for process in ws.processes.values() {
                    if !process.started_by(ws.generation) {
                        continue;
                    }
                    let key = (ws.id, process.id);
                    history
                        .started_by
                        .entry(key)
                        .or_default()
                        .insert(ws.generation);
                    if history.stopped.contains(&key) {
                        history
                            .started_after_stop
                            .push((ws.id, process.id, ws.generation));
                    }
                }
            }
        }
        (state, history)
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, .. ProptestConfig::default() })]

    /// SPEC, Lifecycle, Node lost: a `never` process is started by exactly one placement, the
    /// one current when it was added (or, added while its workstation had no node, the next
    /// one), whatever losses, drains, removals and resizes follow; `always` and `on-failure`
    /// processes are started by every placement from their first on. Each generation of a
    /// workstation is placed on one node only, so "one generation" is "one placement".
    #[test]
    fn a_never_process_is_started_by_exactly_one_placement(
        actions in prop::collection::vec(arb_action(), 1..120),
    ) {
        let (state, history) = History::of(&actions);
        for ((ws, generation), nodes) in &history.generation_nodes {
            prop_assert_eq!(nodes.len(), 1, "{} generation {} on nodes {:?}", ws, generation, nodes);
        }
        for ws in state.workstations.values() {
            for process in ws.processes.values() {
                let key = (ws.id, process.id);
                prop_assert_eq!(
                    history.generation_at_add.get(&key).copied(),
                    Some(process.first_generation),
                    "{}/{}", ws.id, process.id
                );
                let started = history.started_by.get(&key).cloned().unwrap_or_default();
                let placed_first = history
                    .generation_nodes
                    .contains_key(&(ws.id, process.first_generation));
                let stopped = history.stopped.contains(&key);
                match process.restart {
                    RestartPolicy::Never => {
                        prop_assert!(
                            started.iter().all(|g| *g == process.first_generation),
                            "{}/{} started by generations {:?}, first {}",
                            ws.id, process.id, started, process.first_generation
                        );
                        if placed_first && !stopped {
                            prop_assert_eq!(started.len(), 1);
                        }
                        prop_assert_eq!(
                            process.lost_with_its_node(ws.generation),
                            !stopped && ws.generation > process.first_generation
                        );
                    }
                    RestartPolicy::OnFailure | RestartPolicy::Always => {
                        prop_assert!(!process.lost_with_its_node(ws.generation));
                        if !stopped && ws.node.is_some() {
                            prop_assert!(process.started_by(ws.generation));
                        }
                        prop_assert!(started.iter().all(|g| *g >= process.first_generation));
                    }
                }
            }
        }
    }

    /// A stop committed through `StopProcess` is never undone: no placement after it (node
    /// losses, drains, pending workstations placed again) starts the process, and the flag
    /// stays set for as long as the process exists.
    #[test]
    fn a_stopped_process_is_never_started_again(
        actions in prop::collection::vec(arb_action(), 1..120),
    ) {
        let (state, history) = History::of(&actions);
        prop_assert!(
            history.started_after_stop.is_empty(),
            "started after their stop: {:?}", history.started_after_stop
        );
        for (ws_id, process_id) in &history.stopped {
            let Some(process) = state
                .workstations
                .get(ws_id)
                .and_then(|ws| ws.processes.get(process_id))
            else {
                continue;
            };
            prop_assert!(process.stopped.is_some(), "{}/{}", ws_id, process_id);
            for generation in 0..=state.workstations[ws_id].generation + 1 {
                prop_assert!(!process.started_by(generation));
            }
        }
    }
}
