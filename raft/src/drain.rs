//! Draining, decided purely: which step a draining node takes next. SPEC: "a draining node
//! takes no new placements; its workstations are re-placed one by one; it reports `left` once
//! empty if it was removed". The state machine already refuses new placements on a draining
//! node and `DrainStep` moves one workstation (or marks an empty, removed node `left`); this
//! module tells the leader's drain driver (and a node leaving on SIGTERM) whether a step would
//! make progress now, and what it would do, so that no step is proposed that apply must refuse.
//!
//! `DrainStep` moves the draining node's first workstation (lowest id), so a first workstation
//! that fits nowhere else blocks the others behind it: the plan says so ([`NodePlan::Blocked`])
//! and the driver waits for room instead of proposing refused steps.

use crate::command::PlacementHints;
use crate::command::Refusal;
use crate::model::NodeId;
use crate::model::NodeState;
use crate::model::WorkstationId;
use crate::scheduler;
use crate::state::ClusterState;

/// What a draining node's next `DrainStep` would do, decided against the committed state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodePlan {
    /// The step moves `workstation` to `target` (the scheduler's choice now, with the same
    /// hints) with the next generation.
    Move {
        /// The workstation `DrainStep` picks (the node's lowest id).
        workstation: WorkstationId,
        /// Where the scheduler puts it.
        target: NodeId,
    },
    /// The node is empty and being removed: the step marks it `left`.
    MarkLeft,
    /// The node is empty and stays `draining` (an admin drain without removal): nothing to do.
    Drained,
    /// The next workstation fits on no other node now: no step until room appears.
    Blocked {
        /// The workstation that does not fit.
        workstation: WorkstationId,
        /// Why (no capacity now, or larger than any other node).
        refusal: Refusal,
    },
    /// The node is not draining (ready, down or left): drain does not apply.
    NotDraining,
}

impl NodePlan {
    /// True when committing a `DrainStep` for the node makes progress.
    pub fn is_step(&self) -> bool {
        matches!(self, NodePlan::Move { .. } | NodePlan::MarkLeft)
    }
}

/// The plan of one node.
pub fn node_plan(state: &ClusterState, node: NodeId, hints: &PlacementHints) -> NodePlan {
    let Some(record) = state.nodes.get(&node) else {
        return NodePlan::NotDraining;
    };
    if record.state != NodeState::Draining {
        return NodePlan::NotDraining;
    }
    let Some(ws) = state.workstations_on(node).next() else {
        return if record.removing {
            NodePlan::MarkLeft
        } else {
            NodePlan::Drained
        };
    };
    match scheduler::choose_node(state, &ws.tenant, &ws.spec.reservation, Some(node), hints) {
        Ok(target) => NodePlan::Move {
            workstation: ws.id,
            target,
        },
        Err(refusal) => NodePlan::Blocked {
            workstation: ws.id,
            refusal,
        },
    }
}

/// True when `node` was removed from the cluster (`RemoveNode` committed): it is `left`, or
/// still being drained away (`removing` set, whatever its state: draining, or down if it was
/// silent). A removed node stays out for good: the leader refuses its heartbeats and `apply`
/// refuses its own requests (`Refusal::NodeRemoved`), and the node, once it learns it, stops
/// its workstations and exits. An id the state does not know is not "removed" (a joining
/// node has not been applied yet), and ids are never reused.
pub fn is_removed(state: &ClusterState, node: NodeId) -> bool {
    state
        .nodes
        .get(&node)
        .is_some_and(|record| record.removing || record.state == NodeState::Left)
}

/// The next drain step of the cluster: the draining node with the lowest id whose step makes
/// progress, and its plan. One step at a time cluster-wide, so that each decision is taken
/// against the state the previous step produced (and workstations move one by one).
pub fn next_step(state: &ClusterState, hints: &PlacementHints) -> Option<(NodeId, NodePlan)> {
    state
        .nodes
        .values()
        .filter(|record| record.state == NodeState::Draining)
        .map(|record| (record.id, node_plan(state, record.id, hints)))
        .find(|(_, plan)| plan.is_step())
}

#[cfg(test)]
mod tests {

    use proptest::prelude::*;

    use super::*;
    use crate::apply::apply;
    use crate::command::Action;
    use crate::command::Command;
    use crate::command::Outcome;
    use crate::command::WorkstationRequest;
    use crate::model::Limit;
    use crate::model::Resources;
    use crate::model::WorkstationSpec;
    use crate::state::test_support::cluster_of;
    use crate::state::test_support::ready_node;

    const GIB: u64 = 1 << 30;

    /// An initialised cluster of ready server+worker nodes with the given allocatable
    /// (cpu millis, GiB), ids from 1.
    fn cluster(nodes: &[(u64, u64)]) -> ClusterState {
        let nodes: Vec<_> = nodes
            .iter()
            .map(|&(cpu, gib)| ready_node(cpu, gib * GIB))
            .collect();
        cluster_of(&nodes)
    }

    fn run(state: &mut ClusterState, at_ms: u64, action: Action) -> Outcome {
        match apply(state, &Command::new(at_ms, "test", action)) {
            Ok(outcome) => outcome,
            Err(refusal) => panic!("refused: {refusal}"),
        }
    }

    fn create(
        state: &mut ClusterState,
        tenant: &str,
        cpu: u64,
        gib: u64,
    ) -> (WorkstationId, NodeId) {
        let request = WorkstationRequest {
            tenant: tenant.to_string(),
            name: String::new(),
            spec: WorkstationSpec {
                reservation: Resources::new(cpu, gib * GIB),
                limit: Limit {
                    cpu_limit_millis: cpu,
                    memory_limit_bytes: gib * GIB,
                },
                network: Default::default(),
            },
        };
        match run(
            state,
            1,
            Action::CreateWorkstation {
                request,
                hints: PlacementHints::default(),
            },
        ) {
            Outcome::WorkstationPlaced(placed) => (placed.id, placed.node),
            other => panic!("not placed: {other:?}"),
        }
    }

    fn step(state: &mut ClusterState, node: NodeId) -> CommandResult {
        apply(
            state,
            &Command::new(
                9,
                "test",
                Action::DrainStep {
                    node,
                    hints: PlacementHints::default(),
                    observed: Default::default(),
                },
            ),
        )
    }

    type CommandResult = crate::command::CommandResponse;

    #[test]
    fn a_drained_node_moves_its_workstations_one_by_one_then_is_drained() {
        let mut state = cluster(&[(4_000, 8), (4_000, 8)]);
        let hints = PlacementHints::default();
        // Both workstations on node 1: node 2 is drained while they are created, then ready.
        run(&mut state, 1, Action::DrainNode { node: 2 });
        let (first, _) = create(&mut state, "t", 1_000, 1);
        let (second, _) = create(&mut state, "t", 1_000, 1);
        assert!(first < second);
        assert_eq!(state.workstations_on(1).count(), 2);
        run(
            &mut state,
            2,
            Action::MarkNodeReady {
                node: 2,
                hints: hints.clone(),
            },
        );
        assert_eq!(node_plan(&state, 1, &hints), NodePlan::NotDraining);
        assert_eq!(next_step(&state, &hints), None);

        run(&mut state, 3, Action::DrainNode { node: 1 });
        for (moved, left_behind) in [(first, Some(second)), (second, None)] {
            assert_eq!(
                next_step(&state, &hints),
                Some((
                    1,
                    NodePlan::Move {
                        workstation: moved,
                        target: 2
                    }
                ))
            );
            assert!(step(&mut state, 1).is_ok());
            assert_eq!(state.workstations[&moved].node, Some(2));
            assert_eq!(state.workstations[&moved].generation, 2);
            if let Some(other) = left_behind {
                assert_eq!(state.workstations[&other].node, Some(1), "one at a time");
            }
        }
        assert_eq!(node_plan(&state, 1, &hints), NodePlan::Drained);
        assert_eq!(
            state.nodes[&1].state,
            NodeState::Draining,
            "not removed: stays draining"
        );
        assert_eq!(next_step(&state, &hints), None, "nothing left to move");
    }

    #[test]
    fn a_removed_node_is_marked_left_once_empty() {
        let mut state = cluster(&[(4_000, 8), (4_000, 8)]);
        let (ws, on) = create(&mut state, "t", 1_000, 1);
        run(&mut state, 2, Action::RemoveNode { node: on });
        let hints = PlacementHints::default();
        let other = if on == 1 { 2 } else { 1 };
        assert_eq!(
            node_plan(&state, on, &hints),
            NodePlan::Move {
                workstation: ws,
                target: other
            }
        );
        assert!(step(&mut state, on).is_ok());
        // The move emptied it: the same step marked it left.
        assert_eq!(state.nodes[&on].state, NodeState::Left);
        assert_eq!(node_plan(&state, on, &hints), NodePlan::NotDraining);
    }

    #[test]
    fn a_removed_node_emptied_by_deletes_gets_a_step_that_marks_it_left() {
        let mut state = cluster(&[(4_000, 8), (4_000, 8)]);
        let (ws, on) = create(&mut state, "t", 1_000, 1);
        run(&mut state, 2, Action::RemoveNode { node: on });
        run(&mut state, 3, Action::DeleteWorkstation { id: ws });
        let hints = PlacementHints::default();
        assert_eq!(next_step(&state, &hints), Some((on, NodePlan::MarkLeft)));
        assert!(step(&mut state, on).is_ok());
        assert_eq!(state.nodes[&on].state, NodeState::Left);
    }

    #[test]
    fn a_workstation_that_fits_nowhere_else_blocks_without_a_refused_step() {
        let mut state = cluster(&[(4_000, 8), (1_000, 1)]);
        let (ws, on) = create(&mut state, "t", 3_000, 4);
        assert_eq!(on, 1);
        run(&mut state, 2, Action::DrainNode { node: 1 });
        let hints = PlacementHints::default();
        let plan = node_plan(&state, 1, &hints);
        assert!(
            matches!(plan, NodePlan::Blocked { workstation, refusal: Refusal::NoCapacity { .. } } if workstation == ws),
            "{plan:?}"
        );
        assert_eq!(next_step(&state, &hints), None);
        // Apply agrees: the step it would have been is refused and changes nothing.
        let before = state.clone();
        assert!(step(&mut state, 1).is_err());
        assert_eq!(state.workstations, before.workstations);
    }

    /// Node allocatables (cpu, GiB), workstation requests (tenant, cpu, GiB), and for each
    /// node but the first whether it is drained and whether it is removed.
    type Scenario = (Vec<(u64, u64)>, Vec<(u8, u64, u64)>, Vec<(bool, bool)>);

    fn arb_cluster() -> impl Strategy<Value = Scenario> {
        (
            prop::collection::vec((1_000u64..8_000, 1u64..16), 2..6),
            prop::collection::vec((0u8..3, 100u64..3_000, 1u64..6), 0..24),
            prop::collection::vec((any::<bool>(), any::<bool>()), 6),
        )
    }

    proptest! {
        /// Following the plan, every proposed step is accepted and does what the plan said;
        /// nothing is ever placed on a draining node; no node is over-committed; and the
        /// drain ends with every draining node either empty (and `left` if removed) or
        /// blocked by a workstation that fits nowhere else.
        #[test]
        fn following_the_plan_drains_every_node_it_can_and_no_step_is_refused(
            (nodes, requests, drains) in arb_cluster()
        ) {
            let mut state = cluster(&nodes);
            for (tenant, cpu, gib) in &requests {
                let request = WorkstationRequest {
                    tenant: format!("t{tenant}"),
                    name: String::new(),
                    spec: WorkstationSpec {
                        reservation: Resources::new(*cpu, gib * GIB),
                        limit: Limit { cpu_limit_millis: *cpu, memory_limit_bytes: gib * GIB },
                        network: Default::default(),
                    },
                };
                // Requests that do not fit are refused; that is fine here.
                let _ = apply(&mut state, &Command::new(1, "t", Action::CreateWorkstation {
                    request, hints: PlacementHints::default(),
                }));
            }
            let ids: Vec<NodeId> = state.nodes.keys().copied().collect();
            // Keep at least one node ready.
            for (id, (drain, remove)) in ids.iter().skip(1).zip(drains.iter()) {
                let action = if *remove {
                    Action::RemoveNode { node: *id }
                } else if *drain {
                    Action::DrainNode { node: *id }
                } else {
                    continue;
                };
                let answer = apply(&mut state, &Command::new(2, "t", action));
                prop_assert!(answer.is_ok(), "{:?}", answer);
            }
            let draining: Vec<NodeId> = ids.iter().copied()
                .filter(|id| state.nodes[id].state == NodeState::Draining).collect();
            let hints = PlacementHints::default();
            let steps_max = state.workstations.len() + ids.len() + 1;
            let mut n_steps = 0;
            while let Some((node, plan)) = next_step(&state, &hints) {
                prop_assert!(n_steps < steps_max, "the drain does not converge");
                n_steps += 1;
                let answer = step(&mut state, node);
                match (&plan, answer) {
                    (NodePlan::Move { workstation, target }, Ok(Outcome::NodesChanged { replaced, .. })) => {
                        prop_assert_eq!(replaced.len(), 1);
                        prop_assert_eq!(replaced[0].id, *workstation);
                        prop_assert_eq!(replaced[0].node, *target);
                        // A move never lands on a draining (or down, or left) node.
                        prop_assert_eq!(state.nodes[target].state, NodeState::Ready);
                    }
                    (NodePlan::MarkLeft, Ok(_)) => prop_assert_eq!(state.nodes[&node].state, NodeState::Left),
                    (plan, answer) => prop_assert!(false, "{plan:?} answered {answer:?}"),
                }
                prop_assert!(state.check_invariants().is_ok());
            }
            for node in draining {
                let plan = node_plan(&state, node, &hints);
                let empty = state.workstations_on(node).next().is_none();
                match plan {
                    NodePlan::NotDraining => prop_assert_eq!(state.nodes[&node].state, NodeState::Left),
                    NodePlan::Drained => prop_assert!(empty && !state.nodes[&node].removing),
                    NodePlan::Blocked { .. } => prop_assert!(!empty),
                    other => prop_assert!(false, "node {} still has a step: {:?}", node, other),
                }
            }
        }
    }
}
