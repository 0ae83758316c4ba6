//! The durable high-water mark of a workstation's log (`RaiseLogFloor`): a hosting node commits
//! it before starting a workstation's actor in a new local log epoch, so that a re-placement
//! continues above every offset the old node can have served, also when the leader that
//! re-places never heard the old node's offset reports (SPEC: log offsets never go back).

// Test code: a panic is the failure report (the workspace denies unwrap/expect elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use shoal_raft::apply::apply;
use shoal_raft::command::sha256_hex;
use shoal_raft::command::Admission;
use shoal_raft::command::PlacementHints;
use shoal_raft::command::WorkstationRequest;
use shoal_raft::model::ClusterSettings;
use shoal_raft::model::Limit;
use shoal_raft::model::NodeId;
use shoal_raft::model::Resources;
use shoal_raft::model::Roles;
use shoal_raft::model::WorkstationId;
use shoal_raft::model::WorkstationSpec;
use shoal_raft::Action;
use shoal_raft::ClusterState;
use shoal_raft::Command;
use shoal_raft::Outcome;
use shoal_raft::Refusal;

const GIB: u64 = 1 << 30;
/// The hosting node's log epoch width (node/src/agent/host.rs `LOG_EPOCH_SHIFT`): epoch `e`
/// writes offsets in `[e << 40, (e + 1) << 40)`.
const LOG_EPOCH_SHIFT: u32 = 40;

fn cmd(at_ms: u64, actor: &str, action: Action) -> Command {
    Command::new(at_ms, actor, action)
}

fn must(state: &mut ClusterState, command: Command) -> Outcome {
    match apply(state, &command) {
        Ok(outcome) => outcome,
        Err(refusal) => panic!("{command:?} refused: {refusal}"),
    }
}

fn register(admission: Admission, key: &str, roles: Roles) -> Action {
    Action::RegisterNode(common::node_registration(admission, key, roles, 4_000))
}

/// An initialised cluster of two worker nodes (1 and 2) and one workstation; answers where it
/// was placed.
fn cluster_with_one_workstation() -> (ClusterState, WorkstationId, NodeId, u64) {
    let mut state = ClusterState::new();
    must(
        &mut state,
        cmd(
            0,
            "system",
            Action::InitCluster {
                cluster_id: "c1".into(),
                settings: ClusterSettings::default(),
            },
        ),
    );
    must(
        &mut state,
        cmd(
            1,
            "system",
            register(Admission::Bootstrap, "k1", Roles::SERVER_WORKER),
        ),
    );
    must(
        &mut state,
        cmd(
            2,
            "key-admin",
            Action::CreateToken {
                secret_sha256: sha256_hex("join"),
                prefix: "shoal1.test".into(),
                roles: Roles::WORKER,
                ttl_ms: 60_000,
                uses_max: 1,
            },
        ),
    );
    must(
        &mut state,
        cmd(
            3,
            "system",
            register(
                Admission::Token {
                    secret_sha256: sha256_hex("join"),
                },
                "k2",
                Roles::WORKER,
            ),
        ),
    );
    let placed = must(
        &mut state,
        cmd(
            4,
            "key-t",
            Action::CreateWorkstation {
                request: WorkstationRequest {
                    tenant: "t".into(),
                    name: String::new(),
                    spec: WorkstationSpec {
                        reservation: Resources::new(1_000, GIB),
                        limit: Limit {
                            cpu_limit_millis: 1_000,
                            memory_limit_bytes: GIB,
                        },
                        network: Default::default(),
                    },
                },
                hints: PlacementHints::default(),
            },
        ),
    );
    let Outcome::WorkstationPlaced(placed) = placed else {
        panic!("{placed:?}")
    };
    (state, placed.id, placed.node, placed.generation)
}

/// The first local epoch a hosting node uses for a placement (node `log_epoch_above`).
fn first_epoch(floor: u64) -> u64 {
    if floor == 0 {
        0
    } else {
        (floor >> LOG_EPOCH_SHIFT) + 1
    }
}

#[test]
fn a_workstation_re_placed_by_a_leader_that_never_heard_its_old_host_continues_above_the_old_hosts_epoch(
) {
    let (mut state, id, old_node, generation) = cluster_with_one_workstation();
    assert_eq!(first_epoch(state.workstations[&id].log_offset_floor), 0);
    tracing::info!("--- the old host resumes the workstation in local epoch 1 after fencing");
    let epoch_used: u64 = 1;
    must(
        &mut state,
        cmd(
            5,
            &format!("node-{old_node}"),
            Action::RaiseLogFloor {
                workstation: id,
                generation,
                floor: (epoch_used + 1) << LOG_EPOCH_SHIFT,
            },
        ),
    );
    tracing::info!("--- a new leader that never heard the old host marks it down, no offsets");
    let down = must(
        &mut state,
        cmd(
            6,
            "system",
            Action::MarkNodesDown {
                nodes: vec![old_node],
                hints: PlacementHints::default(),
                observed: Default::default(),
            },
        ),
    );
    let Outcome::NodesChanged { replaced, .. } = down else {
        panic!("{down:?}")
    };
    assert_eq!(replaced.len(), 1, "{replaced:?}");
    assert_ne!(replaced[0].node, old_node);
    assert_eq!(replaced[0].generation, generation + 1);
    let floor = state.workstations[&id].log_offset_floor;
    assert!(
        floor >= (epoch_used + 1) << LOG_EPOCH_SHIFT,
        "floor {floor} is inside or below the old host's epoch {epoch_used}"
    );
    assert!(
        first_epoch(floor) > epoch_used,
        "the new host starts in epoch {} (offset {}), not above the old host's epoch {epoch_used}",
        first_epoch(floor),
        first_epoch(floor) << LOG_EPOCH_SHIFT
    );
    state.check_invariants().expect("invariants hold");
}

#[test]
fn a_log_floor_only_rises_and_a_stale_generation_or_unknown_workstation_changes_nothing() {
    let (mut state, id, node, generation) = cluster_with_one_workstation();
    let actor = format!("node-{node}");
    let raise = |generation: u64, floor: u64| Action::RaiseLogFloor {
        workstation: id,
        generation,
        floor,
    };
    must(&mut state, cmd(5, &actor, raise(generation, 3 << 40)));
    assert_eq!(state.workstations[&id].log_offset_floor, 3 << 40);
    tracing::info!("--- a lower floor (a late duplicate) leaves it where it is");
    must(&mut state, cmd(6, &actor, raise(generation, 2 << 40)));
    assert_eq!(state.workstations[&id].log_offset_floor, 3 << 40);

    tracing::info!("--- a stale generation is refused and changes nothing but the audit log");
    let before = state.workstations.clone();
    let audit_before = state.audit.len();
    let stale = apply(&mut state, &cmd(7, &actor, raise(generation + 1, 9 << 40)));
    assert!(
        matches!(stale, Err(Refusal::Conflict { .. })),
        "a stale generation answered {stale:?}"
    );
    let old = generation.saturating_sub(1);
    let older = apply(&mut state, &cmd(8, &actor, raise(old, 9 << 40)));
    assert!(matches!(older, Err(Refusal::Conflict { .. })), "{older:?}");
    tracing::info!("--- an unknown workstation is refused");
    let unknown = apply(
        &mut state,
        &cmd(
            9,
            &actor,
            Action::RaiseLogFloor {
                workstation: WorkstationId(id.0 + 1_000),
                generation,
                floor: 9 << 40,
            },
        ),
    );
    assert!(
        matches!(unknown, Err(Refusal::NotFound { .. })),
        "{unknown:?}"
    );
    assert_eq!(state.workstations, before, "refusals change no workstation");
    tracing::info!("--- every attempt is audited as a system action, with its outcome");
    let entries: Vec<_> = state.audit.iter().skip(audit_before).collect();
    assert_eq!(entries.len(), 3);
    assert!(entries
        .iter()
        .all(|e| e.action == "workstation.log_floor" && e.actor == actor && e.tenant.is_none()));
    assert_eq!(entries[0].outcome, "conflict");
    assert_eq!(entries[2].outcome, "not_found");
    assert_eq!(entries[0].resource, id.to_string());
    state.check_invariants().expect("invariants hold");
}
