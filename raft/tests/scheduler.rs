//! Scheduler property tests over random clusters and request streams: no node is ever
//! over-committed, every placement fits where it lands, the same inputs give the same
//! placements, and refusals are classified correctly (unsatisfiable vs no capacity).

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
