//! The membership plan: server nodes join as learners and are promoted while voters are below
//! the target; nodes that left are removed; workers that are not servers never join Raft.
//!
//! Node removal: a removed node stays out for good (never ready again, its own requests and
//! its heartbeats refused as removed, its id and mesh address never reused), and its
//! workstations run elsewhere with the next generation, or wait pending only while no ready
//! node has room, and are placed as soon as room appears.

// Test code: a panic is the failure report (the workspace denies unwrap/expect elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;

use shoal_raft::apply::apply;
use shoal_raft::command::sha256_hex;
use shoal_raft::command::Admission;
use shoal_raft::command::NodeRegistration;
use shoal_raft::membership::next_step;
use shoal_raft::membership::MembershipStep;
use shoal_raft::model::ClusterSettings;
use shoal_raft::model::Resources;
use shoal_raft::model::Roles;
use std::time::Duration;

use anyhow::ensure;
use common::workstation_request as request;
use common::Cluster;
use common::Deadline;
use common::WAIT;
use proptest::prelude::*;
use shoal_raft::clock::ManualClock;
use shoal_raft::command::PlacementHints;
use shoal_raft::drain::is_removed;
use shoal_raft::model::NodeId;
use shoal_raft::model::NodeState;
use shoal_raft::model::WorkstationId;
use shoal_raft::model::WorkstationState;
use shoal_raft::scheduler;
use shoal_raft::soft_state::Heartbeat;
use shoal_raft::Action;
use shoal_raft::ClusterState;
use shoal_raft::Command;
use shoal_raft::CommandResponse;
use shoal_raft::HeartbeatError;
use shoal_raft::Outcome;
use shoal_raft::RaftNode;
use shoal_raft::Refusal;

fn must(state: &mut ClusterState, action: Action) {
    let answer = apply(state, &Command::new(0, "t", action));
    assert!(answer.is_ok(), "{answer:?}");
}

fn register(state: &mut ClusterState, i: u64, roles: Roles) {
    must(
        state,
        Action::RegisterNode(NodeRegistration {
            admission: if i == 1 {
                Admission::Bootstrap
            } else {
                Admission::Token {
                    secret_sha256: sha256_hex(if roles.server { "s" } else { "w" }),
                }
            },
            wg_public_key: format!("k{i}"),
            endpoint: "e".into(),
            rpc_port: 7000,
            api_addr: None,
            roles,
            capacity: Resources::new(1000, 1 << 30),
            reserve: Resources::default(),
        }),
    );
}

fn set(ids: &[u64]) -> BTreeSet<u64> {
    ids.iter().copied().collect()
}

#[test]
fn servers_join_as_learners_are_promoted_up_to_the_target_and_workers_stay_out() {
    let mut state = ClusterState::new();
    must(
        &mut state,
        Action::InitCluster {
            cluster_id: "c".into(),
            settings: ClusterSettings {
                voter_target: 3,
                ..Default::default()
            },
        },
    );
    must(
        &mut state,
        Action::CreateToken {
            secret_sha256: sha256_hex("s"),
            prefix: "shoal1.test".to_string(),
            roles: Roles::SERVER_WORKER,
            ttl_ms: 1000,
            uses_max: 10,
        },
    );
    must(
        &mut state,
        Action::CreateToken {
            secret_sha256: sha256_hex("w"),
            prefix: "shoal1.test".to_string(),
            roles: Roles::WORKER,
            ttl_ms: 1000,
            uses_max: 10,
        },
    );
    register(&mut state, 1, Roles::SERVER_WORKER);
    register(&mut state, 2, Roles::WORKER);
    register(&mut state, 3, Roles::SERVER_WORKER);
    register(&mut state, 4, Roles::SERVER_WORKER);
    register(&mut state, 5, Roles::SERVER_WORKER);

    assert!(
        matches!(
            next_step(&state, &set(&[1]), &set(&[])),
            Some(MembershipStep::AddLearner(3, _))
        ),
        "worker 2 is skipped"
    );
    assert_eq!(
        next_step(&state, &set(&[1]), &set(&[3])),
        Some(MembershipStep::Promote(3))
    );
    assert_eq!(
        next_step(&state, &set(&[1, 3]), &set(&[4])),
        Some(MembershipStep::Promote(4))
    );
    // At the target: the remaining server joins as a learner but is not promoted.
    assert!(matches!(
        next_step(&state, &set(&[1, 3, 4]), &set(&[])),
        Some(MembershipStep::AddLearner(5, _))
    ));
    assert_eq!(next_step(&state, &set(&[1, 3, 4]), &set(&[5])), None);
    // A voter that left is removed; then the learner is promoted to restore the target.
    must(&mut state, Action::RemoveNode { node: 4 });
    assert_eq!(
        next_step(&state, &set(&[1, 3, 4]), &set(&[5])),
        Some(MembershipStep::RemoveVoters(set(&[4])))
    );
    assert_eq!(
        next_step(&state, &set(&[1, 3]), &set(&[5])),
        Some(MembershipStep::Promote(5))
    );
}

// ----- node removal -----

const GIB: u64 = 1 << 30;

fn run(state: &mut ClusterState, action: Action) -> CommandResponse {
    apply(state, &Command::new(0, "t", action))
}

/// An initialised cluster of `nodes` server+worker nodes (ids from 1, keys `k<id>`), each with
/// `cpu_millis` and 8 GiB allocatable, and a join token `s` for more.
fn cluster_of(nodes: u64, cpu_millis: u64) -> ClusterState {
    let mut state = ClusterState::new();
    must(
        &mut state,
        Action::InitCluster {
            cluster_id: "c".into(),
            settings: ClusterSettings::default(),
        },
    );
    must(
        &mut state,
        Action::CreateToken {
            secret_sha256: sha256_hex("s"),
            prefix: "shoal1.test".to_string(),
            roles: Roles::SERVER_WORKER,
            ttl_ms: 1000,
            uses_max: 100,
        },
    );
    for i in 1..=nodes {
        join(&mut state, i, cpu_millis).expect("registered");
    }
    state
}

/// Registers a node with key `k<key>` as a token join does (no capacity yet), then commits
/// its capacity as the joined node does; answers the registration.
fn join(state: &mut ClusterState, key: u64, cpu_millis: u64) -> Result<NodeId, Refusal> {
    let answer = run(
        state,
        Action::RegisterNode(NodeRegistration {
            admission: if key == 1 {
                Admission::Bootstrap
            } else {
                Admission::Token {
                    secret_sha256: sha256_hex("s"),
                }
            },
            wg_public_key: format!("k{key}"),
            endpoint: "e".into(),
            rpc_port: 7000,
            api_addr: None,
            roles: Roles::SERVER_WORKER,
            capacity: Resources::default(),
            reserve: Resources::default(),
        }),
    );
    let node = match answer? {
        Outcome::NodeRegistered { node_id, .. } => node_id,
        other => panic!("not registered: {other:?}"),
    };
    run(
        state,
        Action::UpdateNodeInfo {
            node,
            api_addr: None,
            capacity: Resources::new(cpu_millis, 8 * GIB),
            reserve: Resources::default(),
        },
    )?;
    Ok(node)
}

fn create(state: &mut ClusterState, cpu_millis: u64) -> (WorkstationId, NodeId) {
    match run(
        state,
        Action::CreateWorkstation {
            request: request("t", cpu_millis),
            hints: PlacementHints::default(),
        },
    ) {
        Ok(Outcome::WorkstationPlaced(placed)) => (placed.id, placed.node),
        other => panic!("not placed: {other:?}"),
    }
}

fn mark_down(state: &mut ClusterState, node: NodeId) -> CommandResponse {
    run(
        state,
        Action::MarkNodesDown {
            nodes: vec![node],
            hints: PlacementHints::default(),
            observed: Default::default(),
        },
    )
}

fn mark_ready(state: &mut ClusterState, node: NodeId) -> CommandResponse {
    run(
        state,
        Action::MarkNodeReady {
            node,
            hints: PlacementHints::default(),
        },
    )
}

fn removed(answer: CommandResponse, node: NodeId) -> bool {
    matches!(answer, Err(Refusal::NodeRemoved { node: n }) if n == node)
}

/// Regression (chaos, removed_node_returns): a node removed while it was silent stayed
/// `down` with `removing` set once the failure detector marked it down, and when it came back
/// with its old data its `MarkNodeReady` was accepted: "the removed node reported ready".
#[test]
fn a_removed_node_that_went_down_has_left_and_is_never_ready_again() {
    let mut state = cluster_of(3, 4_000);
    let (ws, on) = create(&mut state, 1_000);
    assert!(run(&mut state, Action::RemoveNode { node: on }).is_ok());
    assert_eq!(state.nodes[&on].state, NodeState::Draining);
    assert!(
        is_removed(&state, on),
        "removed as soon as RemoveNode commits"
    );
    // Draining for removal: the node's own requests are refused as removed.
    assert!(removed(mark_ready(&mut state, on), on));

    // It was dead: the detector marks it down before the drain loop moved its workstation.
    let Ok(Outcome::NodesChanged {
        nodes, replaced, ..
    }) = mark_down(&mut state, on)
    else {
        panic!("not marked down");
    };
    assert_eq!(
        nodes,
        vec![(on, NodeState::Left)],
        "empty and removed: left"
    );
    assert_eq!(replaced.len(), 1);
    assert_eq!(replaced[0].id, ws);
    assert_ne!(replaced[0].node, on);
    assert_eq!(
        replaced[0].generation, 2,
        "the next generation fences the old one"
    );

    // It comes back with its old data: ready, capacity and a re-registration are refused.
    assert!(removed(mark_ready(&mut state, on), on));
    let info = Action::UpdateNodeInfo {
        node: on,
        api_addr: None,
        capacity: Resources::new(4_000, 8 * GIB),
        reserve: Resources::default(),
    };
    assert!(removed(run(&mut state, info), on));
    assert!(removed(
        join(&mut state, on, 4_000).map(|_| Outcome::Done),
        on
    ));
    assert_eq!(state.nodes[&on].state, NodeState::Left);
    assert!(state.check_invariants().is_ok());
}

#[test]
fn a_node_removed_while_down_leaves_at_once_and_is_never_ready_again() {
    let mut state = cluster_of(3, 4_000);
    let (ws, on) = create(&mut state, 1_000);
    assert!(mark_down(&mut state, on).is_ok());
    assert_eq!(state.workstations[&ws].generation, 2);
    assert!(run(&mut state, Action::RemoveNode { node: on }).is_ok());
    assert_eq!(state.nodes[&on].state, NodeState::Left);
    assert!(removed(mark_ready(&mut state, on), on));
    assert!(removed(run(&mut state, Action::DrainNode { node: on }), on));
}

/// Regression (chaos, removed_node_returns): workstations of a removed node that fitted
/// nowhere went `pending` and stayed so for good, because pending workstations were placed
/// only when a node reported `ready` again, never when a new node joined or room was freed.
#[test]
fn workstations_left_pending_by_a_removal_are_placed_when_room_appears_with_the_next_generation() {
    let mut state = cluster_of(2, 2_000);
    let (first, on_first) = create(&mut state, 2_000);
    let (second, on_second) = create(&mut state, 2_000);
    assert_ne!(on_first, on_second, "one per node: both are full");

    // The second node is removed while dead: nothing has room, its workstation waits.
    assert!(run(&mut state, Action::RemoveNode { node: on_second }).is_ok());
    let Ok(Outcome::NodesChanged { pending, .. }) = mark_down(&mut state, on_second) else {
        panic!("not marked down");
    };
    assert_eq!(pending, vec![second]);
    assert_eq!(state.workstations[&second].state, WorkstationState::Pending);
    assert_eq!(state.workstations[&second].generation, 2);
    assert!(matches!(
        scheduler::refusal_for(&state, &state.workstations[&second].spec.reservation),
        Refusal::NoCapacity { .. }
    ));

    // A new node joins (registered without capacity, then commits it): placed there.
    let new = join(&mut state, 9, 4_000).expect("joined");
    let placement = state.workstations[&second].placement();
    assert_eq!(placement.map(|p| (p.node, p.generation)), Some((new, 2)));
    assert_eq!(state.workstations[&second].state, WorkstationState::Placed);

    // Room freed by a delete is used too.
    assert!(mark_down(&mut state, new).is_ok());
    assert_eq!(state.workstations[&second].state, WorkstationState::Pending);
    assert!(run(&mut state, Action::DeleteWorkstation { id: first }).is_ok());
    let placement = state.workstations[&second].placement();
    assert_eq!(
        placement.map(|p| (p.node, p.generation)),
        Some((on_first, 3))
    );
    assert!(state.check_invariants().is_ok());
}

/// Regression (chaos, removed_node_returns): a removed voter stayed a voter until its
/// workstations were drained away, while it had already stopped; with two voters the cluster
/// then had no quorum and the drain, and the membership change, never committed.
#[test]
fn a_removed_server_leaves_the_raft_membership_at_once_while_its_workstations_drain() {
    let mut state = cluster_of(3, 4_000);
    let (_, on) = create(&mut state, 1_000);
    assert!(run(&mut state, Action::RemoveNode { node: on }).is_ok());
    assert_eq!(
        state.nodes[&on].state,
        NodeState::Draining,
        "still draining"
    );
    let others: Vec<NodeId> = [1, 2, 3].into_iter().filter(|id| *id != on).collect();
    let voters = set(&[1, 2, 3]);
    assert_eq!(
        next_step(&state, &voters, &set(&[])),
        Some(MembershipStep::RemoveVoters(set(&[on])))
    );
    // Down to two voters, removing one of them is planned too (its vote commits it).
    let two = set(&[others[0], on]);
    assert_eq!(
        next_step(&state, &two, &set(&[])),
        Some(MembershipStep::RemoveVoters(set(&[on])))
    );
    // Never the last voter: the others join first.
    assert!(!matches!(
        next_step(&state, &set(&[on]), &set(&[])),
        Some(MembershipStep::Remove(_) | MembershipStep::RemoveVoters(_))
    ));
}

/// Regression (chaos, removed_node_returns): with voters {3, 6, 8} and both 3 and 8 removed
/// (8 dead for good), removing 3 first made the joint configuration {3,6,8}/{6,8}, which needs
/// the dead 8 and never committed; every later change was refused. All departing voters go in
/// one change ({3,6,8} -> {6} needs 2 of the old voters and 6).
#[test]
fn every_departing_voter_is_removed_in_one_membership_change() {
    let mut state = cluster_of(4, 4_000);
    must(&mut state, Action::RemoveNode { node: 2 });
    must(&mut state, Action::RemoveNode { node: 4 });
    assert_eq!(
        next_step(&state, &set(&[2, 3, 4]), &set(&[1])),
        Some(MembershipStep::RemoveVoters(set(&[2, 4])))
    );
    // Learners go first, one by one.
    assert_eq!(
        next_step(&state, &set(&[1, 3, 4]), &set(&[2])),
        Some(MembershipStep::Remove(2))
    );
}

#[test]
fn a_removed_node_id_and_mesh_address_are_never_reused() {
    let mut state = cluster_of(3, 4_000);
    let old = state.nodes[&3].clone();
    assert!(run(&mut state, Action::RemoveNode { node: 3 }).is_ok());
    assert_eq!(state.nodes[&3].state, NodeState::Left);
    let new = join(&mut state, 4, 4_000).expect("joined");
    assert!(new > 3);
    assert_ne!(state.nodes[&new].mesh_addr, old.mesh_addr);
    assert!(state
        .nodes
        .values()
        .all(|n| n.id == 3 || n.mesh_addr != old.mesh_addr));
}

/// One operation of the removal model.
#[derive(Clone, Debug)]
enum Op {
    Create(u64),
    Delete(u8),
    Remove(u8),
    Down(u8),
    Ready(u8),
    Drain(u8),
    DrainStep(u8),
    Join(u64),
}

fn arb_step() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (200u64..3_000).prop_map(Op::Create),
        2 => any::<u8>().prop_map(Op::Delete),
        1 => any::<u8>().prop_map(Op::Remove),
        1 => any::<u8>().prop_map(Op::Down),
        2 => any::<u8>().prop_map(Op::Ready),
        1 => any::<u8>().prop_map(Op::Drain),
        3 => any::<u8>().prop_map(Op::DrainStep),
        1 => (1_000u64..6_000).prop_map(Op::Join),
    ]
}

fn pick<T: Copy>(items: &[T], i: u8) -> Option<T> {
    (!items.is_empty()).then(|| items[usize::from(i) % items.len()])
}

proptest! {
    /// After any sequence of creates, deletes, removals, failures, returns, drains and joins:
    /// a removed node never becomes ready again, holds no placement once it has left, no
    /// workstation waits pending while some ready node has room for it, and no node is
    /// over-committed.
    #[test]
    fn removed_nodes_stay_out_and_no_workstation_waits_while_room_exists(
        steps in prop::collection::vec(arb_step(), 1..60)
    ) {
        let mut state = cluster_of(3, 4_000);
        let mut next_key = 10;
        let mut ever_removed: BTreeSet<NodeId> = BTreeSet::new();
        for step in steps {
            let nodes: Vec<NodeId> = state.nodes.keys().copied().collect();
            let workstations: Vec<WorkstationId> = state.workstations.keys().copied().collect();
            let action = match step {
                Op::Create(cpu) => Action::CreateWorkstation {
                    request: request("t", cpu),
                    hints: PlacementHints::default(),
                },
                Op::Delete(i) => match pick(&workstations, i) {
                    Some(id) => Action::DeleteWorkstation { id },
                    None => continue,
                },
                Op::Remove(i) => Action::RemoveNode { node: nodes[usize::from(i) % nodes.len()] },
                Op::Down(i) => Action::MarkNodesDown {
                    nodes: vec![nodes[usize::from(i) % nodes.len()]],
                    hints: PlacementHints::default(),
                    observed: Default::default(),
                },
                Op::Ready(i) => Action::MarkNodeReady {
                    node: nodes[usize::from(i) % nodes.len()],
                    hints: PlacementHints::default(),
                },
                Op::Drain(i) => Action::DrainNode { node: nodes[usize::from(i) % nodes.len()] },
                Op::DrainStep(i) => Action::DrainStep {
                    node: nodes[usize::from(i) % nodes.len()],
                    hints: PlacementHints::default(),
                    observed: Default::default(),
                },
                Op::Join(cpu) => {
                    next_key += 1;
                    let _ = join(&mut state, next_key, cpu);
                    continue;
                }
            };
            let _ = run(&mut state, action);
            ever_removed.extend(nodes.iter().copied().filter(|id| is_removed(&state, *id)));
            prop_assert!(state.check_invariants().is_ok(), "{:?}", state.check_invariants());
            for id in &ever_removed {
                let record = &state.nodes[id];
                prop_assert!(is_removed(&state, *id), "node {} un-removed", id);
                prop_assert_ne!(record.state, NodeState::Ready, "removed node {} ready", id);
                if record.state == NodeState::Left {
                    prop_assert_eq!(state.workstations_on(*id).count(), 0);
                }
            }
            for ws in state.workstations.values() {
                prop_assert_eq!(ws.node.is_none(), ws.state == WorkstationState::Pending);
                if ws.node.is_none() {
                    let fits = scheduler::choose_node(
                        &state, &ws.tenant, &ws.spec.reservation, None, &PlacementHints::default(),
                    );
                    prop_assert!(fits.is_err(), "{} pending but fits on {:?}", ws.id, fits);
                }
            }
        }
    }
}

// ----- heartbeats of removed nodes, at a real Raft leader -----

fn fast_leader(id: NodeId) -> shoal_raft::RaftConfig {
    let mut config = common::test_config(id);
    config.failure_detection = true;
    config.leader_tick_ms = 20;
    config
}

/// Heartbeats `node` until the leader answers something other than "unconfirmed" (its task
/// confirms leadership every tick); bounded.
async fn heartbeat_answer(
    raft: &RaftNode,
    node: NodeId,
) -> anyhow::Result<Result<(), HeartbeatError>> {
    let deadline = Deadline::after(WAIT);
    loop {
        match raft.heartbeat(node, Heartbeat::default()) {
            Err(HeartbeatError::Unconfirmed { .. }) if !deadline.passed() => {
                let mut rx = raft.metrics();
                let _ = tokio::time::timeout(Duration::from_millis(20), rx.changed()).await;
            }
            answer => return Ok(answer.map(|_| ())),
        }
    }
}

async fn register_worker(cluster: &Cluster, id_hint: u64) -> anyhow::Result<NodeId> {
    cluster
        .write(Command::new(
            1,
            "admin",
            Action::CreateToken {
                secret_sha256: sha256_hex(&format!("j{id_hint}")),
                prefix: "shoal1.test".to_string(),
                roles: Roles::SERVER_WORKER,
                ttl_ms: 60_000,
                uses_max: 1,
            },
        ))
        .await??;
    let answer = cluster
        .write(Command::new(
            2,
            "join",
            Action::RegisterNode(common::registration(
                Admission::Token {
                    secret_sha256: sha256_hex(&format!("j{id_hint}")),
                },
                id_hint,
                Roles::SERVER_WORKER,
            )),
        ))
        .await??;
    let Outcome::NodeRegistered { node_id, .. } = answer else {
        anyhow::bail!("{answer:?}");
    };
    Ok(node_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_refuses_the_heartbeats_of_a_removed_node_as_removed() -> anyhow::Result<()> {
    common::init_tracing();
    let mut cluster = Cluster::new(common::test_config)?;
    let raft = cluster.start(1).await?;
    common::bootstrap(&raft).await?;
    let node = register_worker(&cluster, 2).await?;

    tracing::info!("--- node {node} heartbeats and is acknowledged");
    ensure!(heartbeat_answer(&raft, node).await?.is_ok());

    tracing::info!("--- an admin removes it: every heartbeat from then on is refused as removed");
    cluster
        .write(Command::new(3, "admin", Action::RemoveNode { node }))
        .await??;
    for _ in 0..3 {
        let answer = heartbeat_answer(&raft, node).await?;
        ensure!(
            matches!(answer, Err(HeartbeatError::Removed { node: n }) if n == node),
            "{answer:?}"
        );
    }
    ensure!(raft.read(|s| s.nodes[&node].state) == NodeState::Left);
    ensure!(
        heartbeat_answer(&raft, 1).await?.is_ok(),
        "others are still heard"
    );
    cluster.kill(1).await?;
    Ok(())
}

/// The race closed: a node whose grace expired is not acknowledged while the leader commits it
/// `down` (the ack would renew its lease while its workstations are re-placed); once the
/// commit is applied, it is heard again, as a `down` node that reports ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_past_its_grace_is_not_acknowledged_until_it_is_committed_down() -> anyhow::Result<()>
{
    common::init_tracing();
    let clock = ManualClock::new(1_000_000);
    // A confirmation window longer than the silence: right after the clock jumps, the leader
    // still counts as confirmed, so a heartbeat reaches the grace check before the leader
    // task's next tick commits the node down.
    let mut cluster = Cluster::new(|id| {
        let mut config = fast_leader(id);
        config.leader_confirm_window_ms = 60_000;
        config
    })?;
    cluster.clock = std::sync::Arc::new(clock.clone());
    let raft = cluster.start(1).await?;
    common::bootstrap(&raft).await?;
    let node = register_worker(&cluster, 2).await?;
    ensure!(heartbeat_answer(&raft, node).await?.is_ok());

    tracing::info!("--- node {node} is silent past the grace; the leader marks it down");
    clock.advance_ms(11_000);
    let deadline = Deadline::after(WAIT);
    let mut n_refused = 0u32;
    loop {
        ensure!(!deadline.passed(), "never acknowledged again");
        match heartbeat_answer(&raft, node).await? {
            Ok(()) => {
                // Acknowledged only after the commit: the leader's state says down.
                let state = raft.read(|s| s.nodes[&node].state);
                ensure!(state == NodeState::Down, "acked while {state:?}");
                break;
            }
            Err(HeartbeatError::BeingMarkedDown { node: n }) if n == node => {
                n_refused += 1;
                tokio::task::yield_now().await;
            }
            Err(other) => anyhow::bail!("unexpected refusal: {other}"),
        }
    }
    tracing::info!(n_refused, "--- heard again as a down node");
    ensure!(raft.read(|s| s.nodes[&node].state) == NodeState::Down);
    cluster.kill(1).await?;
    Ok(())
}
