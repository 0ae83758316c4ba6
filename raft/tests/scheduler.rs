//! Scheduler property tests over random clusters and request streams: no node is ever
//! over-committed, every placement fits where it lands, the same inputs give the same
//! placements, and refusals are classified correctly (unsatisfiable vs no capacity).

// Test code: a panic is the failure report (the workspace denies unwrap/expect elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;
use shoal_raft::apply::apply;
use shoal_raft::command::sha256_hex;
use shoal_raft::command::Admission;
use shoal_raft::command::NodeRegistration;
use shoal_raft::command::PlacementHints;
use shoal_raft::command::WorkstationRequest;
use shoal_raft::model::ClusterSettings;
use shoal_raft::model::Limit;
use shoal_raft::model::Resources;
use shoal_raft::model::Roles;
use shoal_raft::model::WorkstationSpec;
use shoal_raft::scheduler;
use shoal_raft::Action;
use shoal_raft::ClusterState;
use shoal_raft::Command;
use shoal_raft::Outcome;
use shoal_raft::Refusal;

const GIB: u64 = 1 << 30;

fn cluster(nodes: &[(u64, u64, u64, u64)]) -> ClusterState {
    let mut state = ClusterState::new();
    let mut run = |action: Action| {
        let answer = apply(&mut state, &Command::new(0, "test", action));
        assert!(answer.is_ok(), "{answer:?}");
    };
    run(Action::InitCluster {
        cluster_id: "c".into(),
        settings: ClusterSettings::default(),
    });
    run(Action::CreateToken {
        secret_sha256: sha256_hex("j"),
        prefix: "shoal1.test".to_string(),
        roles: Roles::WORKER,
        ttl_ms: 1_000_000,
        uses_max: 10_000,
    });
    for (i, (cpu, mem, reserve_cpu, reserve_mem)) in nodes.iter().enumerate() {
        run(Action::RegisterNode(NodeRegistration {
            admission: if i == 0 {
                Admission::Bootstrap
            } else {
                Admission::Token {
                    secret_sha256: sha256_hex("j"),
                }
            },
            wg_public_key: format!("k{i}"),
            endpoint: "e".into(),
            rpc_port: 1,
            api_addr: None,
            roles: Roles::SERVER_WORKER,
            capacity: Resources::new(*cpu, *mem),
            reserve: Resources::new((*reserve_cpu).min(*cpu), (*reserve_mem).min(*mem)),
        }));
    }
    state
}

fn request(tenant: u8, cpu: u64, mem: u64) -> WorkstationRequest {
    WorkstationRequest {
        tenant: format!("t{tenant}"),
        name: String::new(),
        spec: WorkstationSpec {
            reservation: Resources::new(cpu, mem),
            limit: Limit {
                cpu_limit_millis: cpu,
                memory_limit_bytes: mem,
            },
            network: Default::default(),
        },
    }
}

fn arb_nodes() -> impl Strategy<Value = Vec<(u64, u64, u64, u64)>> {
    prop::collection::vec(
        (500u64..16_000, GIB..(64 * GIB), 0u64..1000, 0u64..(2 * GIB)),
        1..12,
    )
}

fn arb_requests() -> impl Strategy<Value = Vec<(u8, u64, u64)>> {
    prop::collection::vec((0u8..4, 1u64..6_000, 1u64..(12 * GIB)), 1..120)
}

fn arb_hints() -> impl Strategy<Value = PlacementHints> {
    prop::collection::btree_map(1u64..13, 0u64..(64 * GIB), 0..12)
        .prop_map(|headroom| PlacementHints { headroom })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, .. ProptestConfig::default() })]

    #[test]
    fn placements_never_over_commit_and_always_fit(
        nodes in arb_nodes(),
        requests in arb_requests(),
        hints in arb_hints(),
        batch in any::<bool>(),
    ) {
        let mut state = cluster(&nodes);
        let reqs: Vec<WorkstationRequest> = requests.iter().map(|(t, c, m)| request(*t, *c, *m)).collect();
        let answers: Vec<Result<shoal_raft::command::Placed, Refusal>> = if batch {
            match apply(&mut state, &Command::new(1, "t", Action::PlaceBatch { requests: reqs.clone(), hints: hints.clone() })) {
                Ok(Outcome::Batch(answers)) => answers,
                other => return Err(TestCaseError::fail(format!("{other:?}"))),
            }
        } else {
            reqs.iter().map(|r| {
                let before = state.clone();
                let answer = apply(&mut state, &Command::new(1, "t", Action::CreateWorkstation { request: r.clone(), hints: hints.clone() }));
                match answer {
                    Ok(Outcome::WorkstationPlaced(p)) => {
                        // It fitted the node's free capacity before it was placed.
                        let node = &before.nodes[&p.node];
                        prop_assert!(node.free().fits(&r.spec.reservation));
                        Ok(Ok(p))
                    }
                    Err(refusal) => Ok(Err(refusal)),
                    other => Err(TestCaseError::fail(format!("{other:?}"))),
                }
            }).collect::<Result<Vec<_>, TestCaseError>>()?
        };
        prop_assert!(state.check_invariants().is_ok(), "{:?}", state.check_invariants());
        for (r, answer) in reqs.iter().zip(&answers) {
            match answer {
                Ok(p) => prop_assert_eq!(state.workstations[&p.id].spec.reservation, r.spec.reservation),
                Err(Refusal::Unsatisfiable { .. }) => {
                    prop_assert!(state.nodes.values().all(|n| !n.allocatable().fits(&r.spec.reservation)));
                }
                Err(Refusal::NoCapacity { .. }) => {
                    prop_assert!(state.nodes.values().any(|n| n.allocatable().fits(&r.spec.reservation)));
                }
                Err(other) => prop_assert!(false, "unexpected refusal {other:?}"),
            }
        }
    }

    #[test]
    fn same_state_and_requests_give_the_same_placements(
        nodes in arb_nodes(),
        requests in arb_requests(),
        hints in arb_hints(),
    ) {
        let reqs: Vec<WorkstationRequest> = requests.iter().map(|(t, c, m)| request(*t, *c, *m)).collect();
        let run = || {
            let mut state = cluster(&nodes);
            let answer = apply(&mut state, &Command::new(1, "t", Action::PlaceBatch { requests: reqs.clone(), hints: hints.clone() }));
            (answer, state.encode().unwrap())
        };
        prop_assert_eq!(run(), run());
    }

    /// After nodes are lost, every workstation the state machine left pending has a reason
    /// that says it fits nowhere, and indeed no ready worker node has its reservation free;
    /// every placed one is reported as placed on its node.
    #[test]
    fn every_workstation_left_pending_after_node_loss_has_a_fits_nowhere_reason(
        nodes in arb_nodes(),
        requests in arb_requests(),
        lost in prop::collection::btree_set(1u64..13, 1..6),
    ) {
        let mut state = cluster(&nodes);
        let reqs: Vec<WorkstationRequest> = requests.iter().map(|(t, c, m)| request(*t, *c, *m)).collect();
        let _ = apply(&mut state, &Command::new(1, "t", Action::PlaceBatch { requests: reqs, hints: Default::default() }));
        let lost: Vec<u64> = lost.into_iter().filter(|id| state.nodes.contains_key(id)).collect();
        let _ = apply(&mut state, &Command::new(2, "t", Action::MarkNodesDown {
            nodes: lost,
            hints: Default::default(),
            observed: Default::default(),
        }));
        for ws in state.workstations.values() {
            let reason = scheduler::pending_reason(&state, ws.node, &ws.spec.reservation);
            match ws.node {
                Some(node) => prop_assert_eq!(reason, scheduler::PendingReason::Placed { node }),
                None => {
                    prop_assert!(reason.fits_nowhere(), "{}: {}", ws.id, reason);
                    prop_assert!(state
                        .nodes
                        .values()
                        .filter(|n| n.roles.worker && n.state == shoal_raft::model::NodeState::Ready)
                        .all(|n| !n.free().fits(&ws.spec.reservation)));
                }
            }
        }
    }

    #[test]
    fn no_capacity_now_means_nothing_fits_anywhere(
        nodes in arb_nodes(),
        requests in arb_requests(),
        probe in (1u64..6_000, 1u64..(12 * GIB)),
    ) {
        let mut state = cluster(&nodes);
        let reqs: Vec<WorkstationRequest> = requests.iter().map(|(t, c, m)| request(*t, *c, *m)).collect();
        let _ = apply(&mut state, &Command::new(1, "t", Action::PlaceBatch { requests: reqs, hints: Default::default() }));
        let reservation = Resources::new(probe.0, probe.1);
        match scheduler::choose_node(&state, "probe", &reservation, None, &PlacementHints::default()) {
            Ok(node) => prop_assert!(state.nodes[&node].free().fits(&reservation)),
            Err(_) => prop_assert!(state.nodes.values().all(|n| !n.free().fits(&reservation))),
        }
    }
}

#[test]
fn one_tenant_spreads_across_nodes_before_doubling_up() {
    let mut state = cluster(&[(8_000, 32 * GIB, 0, 0); 4]);
    let answer = apply(
        &mut state,
        &Command::new(
            1,
            "t",
            Action::PlaceBatch {
                requests: (0..4).map(|_| request(7, 100, GIB)).collect(),
                hints: Default::default(),
            },
        ),
    );
    let Ok(Outcome::Batch(answers)) = answer else {
        panic!("{answer:?}")
    };
    let mut nodes: Vec<u64> = answers
        .iter()
        .map(|a| a.as_ref().map(|p| p.node).unwrap_or(0))
        .collect();
    nodes.sort_unstable();
    assert_eq!(nodes, vec![1, 2, 3, 4]);
}

#[test]
fn live_headroom_breaks_ties_between_equally_free_nodes() {
    let state = cluster(&[(8_000, 32 * GIB, 0, 0); 3]);
    let hints = PlacementHints {
        headroom: [(1, 5), (2, 50), (3, 10)].into_iter().collect(),
    };
    let chosen = scheduler::choose_node(&state, "t", &Resources::new(100, GIB), None, &hints);
    assert_eq!(chosen, Ok(2));
}

/// Commits a node's capacity with a workstation maximum, as a node does at start.
fn commit_capacity(
    state: &mut ClusterState,
    node: u64,
    workstations_max: u32,
) -> Result<Outcome, Refusal> {
    let record = state.nodes[&node].clone();
    apply(
        state,
        &Command::new(
            1,
            "t",
            Action::UpdateNodeCapacity {
                node,
                api_addr: record.api_addr,
                capacity: record.capacity,
                reserve: record.reserve,
                workstations_max,
            },
        ),
    )
}

/// How many workstations are placed on each node, counted from the workstations themselves.
fn hosted_counts(state: &ClusterState) -> std::collections::BTreeMap<u64, u64> {
    let mut counts = std::collections::BTreeMap::new();
    for ws in state.workstations.values() {
        if let Some(node) = ws.node {
            *counts.entry(node).or_insert(0u64) += 1;
        }
    }
    counts
}

/// One step of the workstation-maximum model test.
#[derive(Clone, Debug)]
enum Step {
    Create { tenant: u8, cpu: u64, mem: u64 },
    Batch { n: usize, cpu: u64 },
    Delete { pick: usize },
    Down { node: u64 },
    Ready { node: u64 },
    Drain { node: u64 },
    DrainOne { node: u64 },
    SetMax { node: u64, max: u32 },
}

fn arb_step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (0u8..4, 1u64..3_000, 1u64..(4 * GIB)).prop_map(|(tenant, cpu, mem)| Step::Create { tenant, cpu, mem }),
        2 => (1usize..20, 1u64..1_000).prop_map(|(n, cpu)| Step::Batch { n, cpu }),
        3 => any::<usize>().prop_map(|pick| Step::Delete { pick }),
        1 => (1u64..6).prop_map(|node| Step::Down { node }),
        2 => (1u64..6).prop_map(|node| Step::Ready { node }),
        1 => (1u64..6).prop_map(|node| Step::Drain { node }),
        2 => (1u64..6).prop_map(|node| Step::DrainOne { node }),
        2 => (1u64..6, 0u32..6).prop_map(|(node, max)| Step::SetMax { node, max }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, .. ProptestConfig::default() })]

    /// Whatever is created, deleted, lost, drained or re-stated, no node ever hosts more
    /// workstations than the maximum it committed; a refused creation with room somewhere
    /// is refused only because every node with room is at its maximum.
    #[test]
    fn no_node_ever_hosts_more_than_its_workstation_maximum(
        nodes in prop::collection::vec((2_000u64..16_000, (8 * GIB)..(64 * GIB)), 1..6),
        maxes in prop::collection::vec(1u32..5, 6),
        steps in prop::collection::vec(arb_step(), 1..80),
    ) {
        let mut state = cluster(&nodes.iter().map(|(c, m)| (*c, *m, 0, 0)).collect::<Vec<_>>());
        for (idx, max) in maxes.iter().enumerate().take(nodes.len()) {
            prop_assert!(commit_capacity(&mut state, idx as u64 + 1, *max).is_ok());
        }
        for step in steps {
            let before = state.clone();
            let action = match step.clone() {
                Step::Create { tenant, cpu, mem } => Action::CreateWorkstation {
                    request: request(tenant, cpu, mem),
                    hints: Default::default(),
                },
                Step::Batch { n, cpu } => Action::PlaceBatch {
                    requests: (0..n).map(|i| request((i % 4) as u8, cpu, GIB)).collect(),
                    hints: Default::default(),
                },
                Step::Delete { pick } => {
                    let ids: Vec<_> = state.workstations.keys().copied().collect();
                    if ids.is_empty() {
                        continue;
                    }
                    Action::DeleteWorkstation { id: ids[pick % ids.len()] }
                }
                Step::Down { node } => Action::MarkNodesDown {
                    nodes: vec![node],
                    hints: Default::default(),
                    observed: Default::default(),
                },
                Step::Ready { node } => Action::MarkNodeReady { node, hints: Default::default() },
                Step::Drain { node } => Action::DrainNode { node },
                Step::DrainOne { node } => Action::DrainStep {
                    node,
                    hints: Default::default(),
                    observed: Default::default(),
                },
                Step::SetMax { node, max } => {
                    if !state.nodes.contains_key(&node) {
                        continue;
                    }
                    let answer = commit_capacity(&mut state, node, max);
                    let hosted = hosted_counts(&before).get(&node).copied().unwrap_or(0);
                    // Refused exactly when invalid (0) or below what the node hosts.
                    prop_assert_eq!(answer.is_err(), max == 0 || hosted > u64::from(max), "{:?}", answer);
                    Action::UpdateNodeCapacity {
                        node,
                        api_addr: None,
                        capacity: state.nodes[&node].capacity,
                        reserve: state.nodes[&node].reserve,
                        // The same again: accepted, changes nothing.
                        workstations_max: state.nodes[&node].workstations_max.unwrap_or(1),
                    }
                }
            };
            let answer = apply(&mut state, &Command::new(2, "t", action));
            prop_assert!(state.check_invariants().is_ok(), "{:?}", state.check_invariants());
            // The pending reason agrees with placement, counts included.
            let probe = Resources::new(500, GIB);
            prop_assert_eq!(
                scheduler::pending_reason(&state, None, &probe).fits_nowhere(),
                scheduler::choose_node(&state, "probe", &probe, None, &PlacementHints::default()).is_err()
            );
            let counts = hosted_counts(&state);
            for node in state.nodes.values() {
                let hosted = counts.get(&node.id).copied().unwrap_or(0);
                let max = node.workstations_max.map_or(u64::MAX, u64::from);
                prop_assert!(hosted <= max, "node {} hosts {} > max {} after {:?}", node.id, hosted, max, step);
            }
            if let (Step::Create { cpu, mem, .. }, Err(Refusal::NoCapacity { .. })) = (&step, &answer) {
                let reservation = Resources::new(*cpu, *mem);
                let before_counts = hosted_counts(&before);
                let every_roomy_node_is_full = before
                    .nodes
                    .values()
                    .filter(|n| n.roles.worker && n.state == shoal_raft::model::NodeState::Ready)
                    .filter(|n| n.free().fits(&reservation))
                    .all(|n| n.workstations_max.is_some_and(|max| {
                        before_counts.get(&n.id).copied().unwrap_or(0) >= u64::from(max)
                    }));
                prop_assert!(every_roomy_node_is_full, "refused with room: {:?}", step);
            }
        }
    }
}

#[test]
fn a_node_at_its_workstation_maximum_gets_no_more_and_the_pending_reason_says_so() {
    let mut state = cluster(&[(8_000, 32 * GIB, 0, 0), (4_000, 16 * GIB, 0, 0)]);
    assert!(commit_capacity(&mut state, 1, 2).is_ok());
    assert!(commit_capacity(&mut state, 2, 1).is_ok());
    let create = |state: &mut ClusterState| {
        apply(
            state,
            &Command::new(
                1,
                "t",
                Action::CreateWorkstation {
                    request: request(1, 100, GIB),
                    hints: Default::default(),
                },
            ),
        )
    };
    let placed: Vec<u64> = (0..3)
        .map(|_| match create(&mut state) {
            Ok(Outcome::WorkstationPlaced(p)) => p.node,
            other => panic!("{other:?}"),
        })
        .collect();
    // Node 1 is larger (more free) but takes only two; the third goes to node 2.
    let mut sorted = placed.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, vec![1, 1, 2]);
    // Both are full by count though they have room by resources: no capacity now.
    assert!(matches!(
        create(&mut state),
        Err(Refusal::NoCapacity { .. })
    ));
    let reason = scheduler::pending_reason(&state, None, &Resources::new(100, GIB));
    assert!(reason.fits_nowhere());
    assert_eq!(
        reason,
        scheduler::PendingReason::AtWorkstationMax {
            requested: Resources::new(100, GIB),
            full: vec![(1, 2), (2, 1)],
        }
    );
    assert_eq!(
        reason.to_string(),
        "every ready worker node with 100 millicores and 1 GiB free hosts its maximum number \
         of workstations (node-1: 2, node-2: 1)"
    );
    // Lowering a maximum below what the node hosts is refused; raising it makes room.
    assert!(matches!(
        commit_capacity(&mut state, 1, 1),
        Err(Refusal::Conflict { .. })
    ));
    assert!(matches!(
        commit_capacity(&mut state, 1, 0),
        Err(Refusal::InvalidArgument { .. })
    ));
    assert!(commit_capacity(&mut state, 2, 2).is_ok());
    assert_eq!(
        scheduler::pending_reason(&state, None, &Resources::new(100, GIB)),
        scheduler::PendingReason::RoomOn { node: 2 }
    );
    // The older `UpdateNodeInfo` (log entries written before the maximum) keeps it.
    let record = state.nodes[&2].clone();
    let answer = apply(
        &mut state,
        &Command::new(
            1,
            "t",
            Action::UpdateNodeInfo {
                node: 2,
                api_addr: record.api_addr,
                capacity: record.capacity,
                reserve: record.reserve,
            },
        ),
    );
    assert!(answer.is_ok(), "{answer:?}");
    assert_eq!(state.nodes[&2].workstations_max, Some(2));
}

#[test]
fn a_workstation_re_placed_after_node_loss_skips_nodes_at_their_maximum() {
    let mut state = cluster(&[(8_000, 32 * GIB, 0, 0); 3]);
    for node in 1..=3 {
        assert!(commit_capacity(&mut state, node, 1).is_ok());
    }
    for _ in 0..2 {
        let answer = apply(
            &mut state,
            &Command::new(
                1,
                "t",
                Action::CreateWorkstation {
                    request: request(1, 100, GIB),
                    hints: Default::default(),
                },
            ),
        );
        assert!(answer.is_ok(), "{answer:?}");
    }
    // Two nodes host one each; the third is empty. Losing one moves its workstation to the
    // empty node; losing a second leaves it pending (the survivor is at its maximum).
    let hosts: Vec<u64> = hosted_counts(&state).keys().copied().collect();
    let down = |state: &mut ClusterState, node: u64| {
        apply(
            state,
            &Command::new(
                2,
                "t",
                Action::MarkNodesDown {
                    nodes: vec![node],
                    hints: Default::default(),
                    observed: Default::default(),
                },
            ),
        )
    };
    assert!(down(&mut state, hosts[0]).is_ok());
    assert!(state.workstations.values().all(|ws| ws.node.is_some()));
    assert!(down(&mut state, hosts[1]).is_ok());
    let pending: Vec<_> = state
        .workstations
        .values()
        .filter(|ws| ws.node.is_none())
        .collect();
    assert_eq!(pending.len(), 1);
    let reason = scheduler::pending_reason(&state, None, &pending[0].spec.reservation);
    assert!(
        matches!(reason, scheduler::PendingReason::AtWorkstationMax { .. }),
        "{reason}"
    );
}
