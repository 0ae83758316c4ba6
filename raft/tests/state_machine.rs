//! The state machine: data-driven cases (one `check` per command family) and a determinism
//! property test (two replicas, one through a snapshot round-trip, reach byte-identical state).

// Test code: a panic is the failure report (the workspace denies unwrap/expect elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use proptest::prelude::*;
use shoal_raft::apply::apply;
use shoal_raft::command::sha256_hex;
use shoal_raft::command::Admission;
use shoal_raft::command::NodeRegistration;
use shoal_raft::command::ObservedOffsets;
use shoal_raft::command::PlacementHints;
use shoal_raft::command::WorkstationRequest;
use shoal_raft::command::LOG_OFFSET_GAP_BYTES;
use shoal_raft::model::ClusterSettings;
use shoal_raft::model::Limit;
use shoal_raft::model::NodeState;
use shoal_raft::model::ProcessId;
use shoal_raft::model::Resources;
use shoal_raft::model::RestartPolicy;
use shoal_raft::model::Roles;
use shoal_raft::model::StopSignal;
use shoal_raft::model::WorkstationId;
use shoal_raft::model::WorkstationSpec;
use shoal_raft::model::WorkstationState;
use shoal_raft::Action;
use shoal_raft::ClusterState;
use shoal_raft::Command;
use shoal_raft::Outcome;
use shoal_raft::Refusal;

const GIB: u64 = 1 << 30;

fn cmd(at_ms: u64, action: Action) -> Command {
    Command::new(at_ms, "key-test", action)
}

fn init() -> ClusterState {
    let mut state = ClusterState::new();
    let r = apply(
        &mut state,
        &cmd(
            0,
            Action::InitCluster {
                cluster_id: "c1".into(),
                settings: ClusterSettings::default(),
            },
        ),
    );
    assert_eq!(r, Ok(Outcome::Done));
    state
}

fn reg(
    admission: Admission,
    key: &str,
    roles: Roles,
    cpu_millis: u64,
    memory_bytes: u64,
) -> Action {
    Action::RegisterNode(NodeRegistration {
        admission,
        wg_public_key: key.into(),
        endpoint: "203.0.113.1:51820".into(),
        rpc_port: 7000,
        api_addr: Some("127.0.0.1:7070".into()),
        roles,
        capacity: Resources::new(cpu_millis, memory_bytes),
        reserve: Resources::new(0, 0),
    })
}

fn ws(tenant: &str, cpu_millis: u64, memory_bytes: u64) -> WorkstationRequest {
    WorkstationRequest {
        tenant: tenant.into(),
        name: String::new(),
        spec: WorkstationSpec {
            reservation: Resources::new(cpu_millis, memory_bytes),
            limit: Limit {
                cpu_limit_millis: cpu_millis,
                memory_limit_bytes: memory_bytes,
            },
            network: Default::default(),
        },
    }
}

fn create(request: WorkstationRequest) -> Action {
    Action::CreateWorkstation {
        request,
        hints: PlacementHints::default(),
    }
}

/// A predicate on a command's answer.
type Expect = dyn Fn(&Result<Outcome, Refusal>) -> bool;

/// Applies `actions` in order to `state` and checks each answer with `expected`.
fn check(state: &mut ClusterState, cases: Vec<(Action, &Expect)>) {
    for (i, (action, expected)) in cases.into_iter().enumerate() {
        let answer = apply(state, &cmd(1_000 + i as u64, action.clone()));
        assert!(
            expected(&answer),
            "case {i}: {action:?} answered {answer:?}"
        );
        state
            .check_invariants()
            .unwrap_or_else(|e| panic!("case {i}: {e}"));
    }
}

/// Applies a setup command that must succeed.
fn must(state: &mut ClusterState, command: &Command) {
    let answer = apply(state, command);
    assert!(answer.is_ok(), "{command:?} answered {answer:?}");
}

fn is_ok(r: &Result<Outcome, Refusal>) -> bool {
    r.is_ok()
}
fn refused(code: &'static str) -> impl Fn(&Result<Outcome, Refusal>) -> bool {
    move |r| matches!(r, Err(refusal) if refusal.code() == code)
}
fn placed_on(node: u64, generation: u64) -> impl Fn(&Result<Outcome, Refusal>) -> bool {
    move |r| matches!(r, Ok(Outcome::WorkstationPlaced(p)) if p.node == node && p.generation == generation)
}

#[test]
fn commands_before_init_are_refused_and_init_happens_once() {
    let mut state = ClusterState::new();
    check(
        &mut state,
        vec![
            (create(ws("t", 100, GIB)), &refused("not_initialized")),
            (
                reg(Admission::Bootstrap, "k1", Roles::SERVER_WORKER, 1000, GIB),
                &refused("not_initialized"),
            ),
            (
                Action::InitCluster {
                    cluster_id: "c".into(),
                    settings: ClusterSettings {
                        voter_target: 2,
                        ..Default::default()
                    },
                },
                &refused("invalid_argument"),
            ),
            (
                Action::InitCluster {
                    cluster_id: "c".into(),
                    settings: ClusterSettings::default(),
                },
                &is_ok,
            ),
            (
                Action::InitCluster {
                    cluster_id: "c".into(),
                    settings: ClusterSettings::default(),
                },
                &refused("already_initialized"),
            ),
        ],
    );
}

/// Mints a worker join token at `at_ms` and registers a worker-only node (key `key`, 4 CPUs,
/// 8 GiB) with it one millisecond later.
fn join_worker_with_token(state: &mut ClusterState, at_ms: u64, key: &str) {
    must(
        state,
        &cmd(
            at_ms,
            Action::CreateToken {
                secret_sha256: sha256_hex("t"),
                prefix: "shoal1.test".to_string(),
                roles: Roles::WORKER,
                ttl_ms: 1000,
                uses_max: 5,
            },
        ),
    );
    must(
        state,
        &cmd(
            at_ms + 1,
            reg(
                Admission::Token {
                    secret_sha256: sha256_hex("t"),
                },
                key,
                Roles::WORKER,
                4000,
                8 * GIB,
            ),
        ),
    );
}

#[test]
fn registration_allocates_fresh_ids_and_mesh_addresses_and_checks_tokens() {
    let mut state = init();
    let token = sha256_hex("tok");
    let with_token = |secret: &str| Admission::Token {
        secret_sha256: sha256_hex(secret),
    };
    check(
        &mut state,
        vec![
            (
                reg(
                    Admission::Bootstrap,
                    "k1",
                    Roles::SERVER_WORKER,
                    4000,
                    8 * GIB,
                ),
                &|r| matches!(r, Ok(Outcome::NodeRegistered { node_id: 1, mesh_addr, existing: false }) if mesh_addr.to_string() == "10.42.0.1"),
            ),
            (
                reg(Admission::Bootstrap, "k2", Roles::WORKER, 4000, 8 * GIB),
                &refused("already_initialized"),
            ),
            (
                reg(with_token("tok"), "k2", Roles::WORKER, 4000, 8 * GIB),
                &refused("token_rejected"),
            ),
            (
                Action::CreateToken {
                    secret_sha256: token.clone(),
                    prefix: "shoal1.test".to_string(),
                    roles: Roles::WORKER,
                    ttl_ms: 10_000,
                    uses_max: 1,
                },
                &is_ok,
            ),
            (
                Action::CreateToken {
                    secret_sha256: token.clone(),
                    prefix: "shoal1.test".to_string(),
                    roles: Roles::WORKER,
                    ttl_ms: 10_000,
                    uses_max: 1,
                },
                &refused("conflict"),
            ),
            (
                Action::CreateToken {
                    secret_sha256: "XYZ".into(),
                    prefix: "shoal1.test".to_string(),
                    roles: Roles::WORKER,
                    ttl_ms: 10_000,
                    uses_max: 1,
                },
                &refused("invalid_argument"),
            ),
            (
                reg(with_token("tok"), "k2", Roles::SERVER_WORKER, 4000, 8 * GIB),
                &|r| matches!(r, Ok(Outcome::NodeRegistered { node_id: 2, mesh_addr, .. }) if mesh_addr.to_string() == "10.42.0.2"),
            ),
            // A retry of the same registration returns the same node and uses no token.
            (
                reg(with_token("tok"), "k2", Roles::WORKER, 4000, 8 * GIB),
                &|r| {
                    matches!(
                        r,
                        Ok(Outcome::NodeRegistered {
                            node_id: 2,
                            existing: true,
                            ..
                        })
                    )
                },
            ),
            (
                reg(with_token("tok"), "k3", Roles::WORKER, 4000, 8 * GIB),
                &|r| matches!(r, Err(Refusal::TokenRejected { reason }) if reason == "exhausted"),
            ),
        ],
    );
    // The token's roles win over the requested ones.
    assert_eq!(state.nodes[&2].roles, Roles::WORKER);
}

#[test]
fn expired_and_revoked_tokens_admit_nobody() {
    let mut state = init();
    let mut answers = Vec::new();
    for action in [
        Action::CreateToken {
            secret_sha256: sha256_hex("a"),
            prefix: "shoal1.test".to_string(),
            roles: Roles::WORKER,
            ttl_ms: 10,
            uses_max: 5,
        },
        Action::CreateToken {
            secret_sha256: sha256_hex("b"),
            prefix: "shoal1.test".to_string(),
            roles: Roles::WORKER,
            ttl_ms: 1_000_000,
            uses_max: 5,
        },
    ] {
        answers.push(apply(&mut state, &cmd(100, action)));
    }
    let revoke = apply(
        &mut state,
        &cmd(
            101,
            Action::RevokeToken {
                id: shoal_raft::model::TokenId(2),
            },
        ),
    );
    assert_eq!(revoke, Ok(Outcome::Done));
    let expired = apply(
        &mut state,
        &cmd(
            110,
            Action::ConsumeToken {
                secret_sha256: sha256_hex("a"),
            },
        ),
    );
    assert!(
        matches!(expired, Err(Refusal::TokenRejected { ref reason }) if reason == "expired"),
        "{expired:?}"
    );
    let revoked = apply(
        &mut state,
        &cmd(
            102,
            Action::ConsumeToken {
                secret_sha256: sha256_hex("b"),
            },
        ),
    );
    assert!(
        matches!(revoked, Err(Refusal::TokenRejected { ref reason }) if reason == "revoked"),
        "{revoked:?}"
    );
}

#[test]
fn api_keys_are_stored_hashed_and_found_by_hash_until_revoked() {
    let mut state = init();
    let secret = "shoal_abcdef123456";
    let created = apply(
        &mut state,
        &cmd(
            1,
            Action::CreateApiKey {
                secret_sha256: sha256_hex(secret),
                prefix: "shoal_ab".into(),
                tenant: "acme".into(),
                admin: false,
            },
        ),
    );
    let Ok(Outcome::ApiKeyCreated { id }) = created else {
        panic!("{created:?}")
    };
    assert!(
        state.tenants.contains_key("acme"),
        "tenant created with its first key"
    );
    assert_eq!(
        state.api_key_by_hash(&sha256_hex(secret)).map(|k| k.id),
        Some(id)
    );
    assert!(
        !state
            .encode()
            .unwrap()
            .windows(secret.len())
            .any(|w| w == secret.as_bytes()),
        "secret in state"
    );
    must(&mut state, &cmd(2, Action::RevokeApiKey { id }));
    assert!(state.api_key_by_hash(&sha256_hex(secret)).is_none());
}

#[test]
fn placement_is_refused_as_unsatisfiable_or_no_capacity() {
    let mut state = init();
    check(
        &mut state,
        vec![
            (create(ws("t", 100, GIB)), &refused("no_capacity")), // no worker yet
            (
                reg(
                    Admission::Bootstrap,
                    "k1",
                    Roles::SERVER_WORKER,
                    2000,
                    4 * GIB,
                ),
                &is_ok,
            ),
            (create(ws("t", 3000, GIB)), &|r| {
                matches!(r, Err(Refusal::Unsatisfiable { .. }))
            }),
            (create(ws("t", 1500, 3 * GIB)), &placed_on(1, 1)),
            (create(ws("t", 1000, GIB)), &refused("no_capacity")),
            (create(ws("t", 0, GIB)), &refused("invalid_argument")),
            (create(ws("t", 500, GIB)), &placed_on(1, 1)),
            (create(ws("t", 1, 1)), &refused("no_capacity")),
        ],
    );
}

#[test]
fn resize_in_place_when_room_else_typed_refusal() {
    let mut state = init();
    must(
        &mut state,
        &cmd(
            1,
            reg(
                Admission::Bootstrap,
                "k1",
                Roles::SERVER_WORKER,
                2000,
                4 * GIB,
            ),
        ),
    );
    must(&mut state, &cmd(2, create(ws("t", 500, GIB))));
    must(&mut state, &cmd(3, create(ws("t", 500, GIB))));
    let resize = |cpu: u64, mem: u64| Action::ResizeWorkstation {
        id: WorkstationId(1),
        reservation: Resources::new(cpu, mem),
        limit: Limit {
            cpu_limit_millis: cpu,
            memory_limit_bytes: mem,
        },
    };
    check(
        &mut state,
        vec![
            (resize(1500, 3 * GIB), &is_ok),
            (resize(1600, GIB), &|r| {
                matches!(r, Err(Refusal::ResizeNoRoom { node: 1, .. }))
            }),
            (resize(100, GIB / 2), &is_ok),
            (
                Action::ResizeWorkstation {
                    id: WorkstationId(99),
                    reservation: Resources::new(1, 1),
                    limit: Limit {
                        cpu_limit_millis: 1,
                        memory_limit_bytes: 1,
                    },
                },
                &refused("not_found"),
            ),
        ],
    );
    assert_eq!(state.nodes[&1].reserved, Resources::new(600, GIB + GIB / 2));
}

#[test]
fn down_node_workstations_are_replaced_with_next_generation_and_log_floor_moves_up() {
    let mut state = init();
    must(
        &mut state,
        &cmd(
            1,
            reg(
                Admission::Bootstrap,
                "k1",
                Roles::SERVER_WORKER,
                2000,
                4 * GIB,
            ),
        ),
    );
    must(
        &mut state,
        &cmd(
            2,
            Action::CreateToken {
                secret_sha256: sha256_hex("t"),
                prefix: "shoal1.test".to_string(),
                roles: Roles::WORKER,
                ttl_ms: 1000,
                uses_max: 5,
            },
        ),
    );
    must(
        &mut state,
        &cmd(
            3,
            reg(
                Admission::Token {
                    secret_sha256: sha256_hex("t"),
                },
                "k2",
                Roles::WORKER,
                2000,
                4 * GIB,
            ),
        ),
    );
    // Two workstations of one tenant spread over the two nodes.
    let a = apply(&mut state, &cmd(4, create(ws("t", 1000, GIB))));
    let b = apply(&mut state, &cmd(5, create(ws("t", 1000, GIB))));
    let (Ok(Outcome::WorkstationPlaced(a)), Ok(Outcome::WorkstationPlaced(b))) = (a, b) else {
        panic!()
    };
    assert_ne!(a.node, b.node, "one tenant's workstations spread");
    let on_two = if a.node == 2 { a.id } else { b.id };
    let observed = ObservedOffsets {
        log_offset_next: BTreeMap::from([(on_two, 12_345)]),
    };
    let down = apply(
        &mut state,
        &cmd(
            6,
            Action::MarkNodesDown {
                nodes: vec![2],
                hints: PlacementHints::default(),
                observed,
            },
        ),
    );
    let Ok(Outcome::NodesChanged {
        nodes,
        replaced,
        pending,
    }) = down
    else {
        panic!("{down:?}")
    };
    assert_eq!(nodes, vec![(2, NodeState::Down)]);
    assert_eq!(replaced.len(), 1);
    assert!(pending.is_empty());
    assert_eq!(
        (replaced[0].id, replaced[0].node, replaced[0].generation),
        (on_two, 1, 2)
    );
    assert_eq!(
        state.workstations[&on_two].log_offset_floor,
        12_345 + LOG_OFFSET_GAP_BYTES
    );
    state.check_invariants().unwrap();
    // Marking it down again changes nothing.
    let again = apply(
        &mut state,
        &cmd(
            7,
            Action::MarkNodesDown {
                nodes: vec![2],
                hints: PlacementHints::default(),
                observed: Default::default(),
            },
        ),
    );
    assert!(matches!(again, Ok(Outcome::NodesChanged { ref nodes, .. }) if nodes.is_empty()));
    // Node 1 down too: nowhere to go, so pending, generation still bumped.
    let down1 = apply(
        &mut state,
        &cmd(
            8,
            Action::MarkNodesDown {
                nodes: vec![1],
                hints: PlacementHints::default(),
                observed: Default::default(),
            },
        ),
    );
    let Ok(Outcome::NodesChanged { pending, .. }) = down1 else {
        panic!()
    };
    assert_eq!(pending.len(), 2);
    assert!(state
        .workstations
        .values()
        .all(|w| w.state == WorkstationState::Pending && w.node.is_none()));
    // Node 2 comes back: pending workstations are placed on it where they fit.
    let ready = apply(
        &mut state,
        &cmd(
            9,
            Action::MarkNodeReady {
                node: 2,
                hints: PlacementHints::default(),
            },
        ),
    );
    let Ok(Outcome::NodesChanged {
        replaced, pending, ..
    }) = ready
    else {
        panic!("{ready:?}")
    };
    assert_eq!((replaced.len(), pending.len()), (2, 0));
    state.check_invariants().unwrap();
}

#[test]
fn drain_moves_workstations_one_by_one_and_removal_ends_in_left() {
    let mut state = init();
    must(
        &mut state,
        &cmd(
            1,
            reg(
                Admission::Bootstrap,
                "k1",
                Roles::SERVER_WORKER,
                4000,
                8 * GIB,
            ),
        ),
    );
    join_worker_with_token(&mut state, 2, "k2");
    for i in 0..4 {
        must(
            &mut state,
            &cmd(4 + i, create(ws(&format!("t{i}"), 500, GIB))),
        );
    }
    let on_two = state.workstations_on(2).count();
    assert!(on_two > 0);
    assert!(
        matches!(apply(&mut state, &cmd(10, Action::RemoveNode { node: 2 })), Ok(Outcome::NodesChanged { ref nodes, .. }) if nodes == &vec![(2, NodeState::Draining)])
    );
    assert!(
        matches!(apply(&mut state, &cmd(11, create(ws("x", 100, 1)))), Ok(Outcome::WorkstationPlaced(p)) if p.node == 1),
        "draining node takes nothing new"
    );
    for step in 0..on_two {
        let r = apply(
            &mut state,
            &cmd(
                20 + step as u64,
                Action::DrainStep {
                    node: 2,
                    hints: PlacementHints::default(),
                    observed: Default::default(),
                },
            ),
        );
        assert!(
            matches!(r, Ok(Outcome::NodesChanged { ref replaced, .. }) if replaced.len() == 1),
            "{r:?}"
        );
        state.check_invariants().unwrap();
    }
    assert_eq!(state.nodes[&2].state, NodeState::Left);
    assert!(state
        .workstations
        .values()
        .all(|w| w.node == Some(1) && (w.generation == 1 || w.generation == 2)));
    // A left node's id is never handed out again.
    must(
        &mut state,
        &cmd(
            40,
            reg(
                Admission::Token {
                    secret_sha256: sha256_hex("t"),
                },
                "k9",
                Roles::WORKER,
                4000,
                8 * GIB,
            ),
        ),
    );
    assert!(state.nodes.contains_key(&3) && state.next_node_id == 4);
}

#[test]
fn the_only_ready_worker_cannot_be_drained_nor_the_only_server_removed_and_nothing_changes() {
    let mut state = init();
    must(
        &mut state,
        &cmd(
            1,
            reg(
                Admission::Bootstrap,
                "k1",
                Roles::SERVER_WORKER,
                4000,
                8 * GIB,
            ),
        ),
    );
    let before = state.nodes[&1].clone();
    let only_worker = apply(&mut state, &cmd(2, Action::DrainNode { node: 1 }));
    assert!(
        matches!(&only_worker, Err(Refusal::Conflict { reason }) if reason.contains("only ready worker")),
        "{only_worker:?}"
    );
    let only_server = apply(&mut state, &cmd(3, Action::RemoveNode { node: 1 }));
    assert!(
        matches!(&only_server, Err(Refusal::Conflict { reason }) if reason.contains("only server")),
        "{only_server:?}"
    );
    assert_eq!(state.nodes[&1], before, "a refusal changes nothing");
    let unknown = apply(&mut state, &cmd(4, Action::RemoveNode { node: 9 }));
    assert!(
        matches!(unknown, Err(Refusal::NotFound { .. })),
        "{unknown:?}"
    );
    // With a second ready worker (not a server), the first can be drained; the worker-only
    // node can be removed, the server still cannot.
    join_worker_with_token(&mut state, 5, "k2");
    assert!(apply(&mut state, &cmd(7, Action::RemoveNode { node: 1 })).is_err());
    assert!(is_ok(&apply(
        &mut state,
        &cmd(8, Action::DrainNode { node: 1 })
    )));
    assert!(is_ok(&apply(
        &mut state,
        &cmd(9, Action::RemoveNode { node: 2 })
    )));
    state.check_invariants().unwrap();
}

#[test]
fn processes_are_validated_and_bounded() {
    let mut state = init();
    must(
        &mut state,
        &cmd(
            1,
            reg(
                Admission::Bootstrap,
                "k1",
                Roles::SERVER_WORKER,
                4000,
                8 * GIB,
            ),
        ),
    );
    must(&mut state, &cmd(2, create(ws("t", 500, GIB))));
    let add = |argv: Vec<&str>| Action::AddProcess {
        workstation: WorkstationId(1),
        argv: argv.into_iter().map(String::from).collect(),
        env: BTreeMap::new(),
        cwd: None,
        restart: RestartPolicy::Always,
    };
    check(
        &mut state,
        vec![
            (add(vec!["python3", "-m", "http.server"]), &|r| {
                matches!(r, Ok(Outcome::ProcessAdded { id: ProcessId(1) }))
            }),
            (add(vec![]), &refused("invalid_argument")),
            (add(vec!["a\0b"]), &refused("invalid_argument")),
            (
                Action::RemoveProcess {
                    workstation: WorkstationId(1),
                    process: ProcessId(1),
                },
                &is_ok,
            ),
            (
                Action::RemoveProcess {
                    workstation: WorkstationId(1),
                    process: ProcessId(1),
                },
                &refused("not_found"),
            ),
            (
                Action::DeleteWorkstation {
                    id: WorkstationId(1),
                },
                &is_ok,
            ),
            (add(vec!["x"]), &refused("not_found")),
        ],
    );
    for _ in 0..64 {
        must(&mut state, &cmd(3, create(ws("t", 1, 1))));
    }
    let id = *state.workstations.keys().next().unwrap();
    for i in 0..70 {
        let r = apply(
            &mut state,
            &cmd(
                4,
                Action::AddProcess {
                    workstation: id,
                    argv: vec!["sleep".into()],
                    env: BTreeMap::new(),
                    cwd: None,
                    restart: RestartPolicy::Never,
                },
            ),
        );
        assert_eq!(r.is_ok(), i < 64, "process {i}: {r:?}");
    }
}

#[test]
fn every_command_is_audited_with_actor_action_resource_and_outcome() {
    let mut state = init();
    let refused = apply(&mut state, &cmd(5, create(ws("t", 1, 1))));
    assert!(refused.is_err(), "no worker yet: {refused:?}");
    let last = state.audit.back().unwrap();
    assert_eq!(
        (
            last.ts_ms,
            last.actor.as_str(),
            last.action.as_str(),
            last.outcome.as_str()
        ),
        (5, "key-test", "workstation.create", "no_capacity")
    );
    let n = state.audit.len();
    must(
        &mut state,
        &cmd(
            6,
            Action::PlaceBatch {
                requests: vec![ws("t", 1, 1), ws("t", 1, 1)],
                hints: Default::default(),
            },
        ),
    );
    assert_eq!(
        state.audit.len(),
        n + 2,
        "a batch is audited per workstation"
    );
    assert!(
        state
            .audit
            .iter()
            .enumerate()
            .all(|(i, e)| e.seq == i as u64),
        "append-only, in order"
    );
}

// ----- determinism -----

fn arb_action() -> impl Strategy<Value = Action> {
    let tenant = prop::sample::select(vec!["a", "b", "c"]);
    prop_oneof![
        4 => (tenant.clone(), 1u64..3000, 1u64..(6 * GIB)).prop_map(|(t, c, m)| create(ws(t, c, m))),
        2 => prop::collection::vec((tenant.clone(), 1u64..1500, 1u64..(2 * GIB)), 0..8).prop_map(|reqs| Action::PlaceBatch {
            requests: reqs.into_iter().map(|(t, c, m)| ws(t, c, m)).collect(),
            hints: PlacementHints::default(),
        }),
        1 => (1u64..20, 1u64..4000, 1u64..(4 * GIB)).prop_map(|(id, c, m)| Action::ResizeWorkstation {
            id: WorkstationId(id), reservation: Resources::new(c, m), limit: Limit { cpu_limit_millis: c, memory_limit_bytes: m },
        }),
        1 => (1u64..20).prop_map(|id| Action::DeleteWorkstation { id: WorkstationId(id) }),
        1 => (1u64..20, 1u64..4, 0u64..(1 << 44)).prop_map(|(id, generation, floor)| Action::RaiseLogFloor {
            workstation: WorkstationId(id), generation, floor,
        }),
        1 => (1u64..6).prop_map(|n| Action::MarkNodesDown { nodes: vec![n], hints: Default::default(), observed: Default::default() }),
        1 => (1u64..6).prop_map(|n| Action::MarkNodeReady { node: n, hints: Default::default() }),
        1 => (1u64..6).prop_map(|n| Action::DrainNode { node: n }),
        1 => (1u64..6).prop_map(|n| Action::DrainStep { node: n, hints: Default::default(), observed: Default::default() }),
        1 => (1u64..6).prop_map(|n| Action::RemoveNode { node: n }),
        1 => (0u64..6, 500u64..8000, GIB..(16 * GIB)).prop_map(|(k, c, m)| reg(Admission::Token { secret_sha256: sha256_hex("join") }, &format!("key{k}"), Roles::WORKER, c, m)),
        1 => (1u64..20, prop::collection::vec("[a-z]{1,8}", 0..4)).prop_map(|(id, argv)| Action::AddProcess {
            workstation: WorkstationId(id), argv, env: BTreeMap::new(), cwd: None, restart: RestartPolicy::OnFailure,
        }),
        1 => (1u64..20, 1u64..4, any::<bool>()).prop_map(|(id, process, kill)| Action::StopProcess {
            workstation: WorkstationId(id), process: ProcessId(process),
            signal: if kill { StopSignal::Kill } else { StopSignal::Term },
        }),
    ]
}

fn seeded() -> ClusterState {
    let mut state = init();
    must(
        &mut state,
        &cmd(
            1,
            reg(
                Admission::Bootstrap,
                "boot",
                Roles::SERVER_WORKER,
                4000,
                8 * GIB,
            ),
        ),
    );
    must(
        &mut state,
        &cmd(
            2,
            Action::CreateToken {
                secret_sha256: sha256_hex("join"),
                prefix: "shoal1.test".to_string(),
                roles: Roles::WORKER,
                ttl_ms: 1_000_000_000,
                uses_max: 100,
            },
        ),
    );
    state
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]

    #[test]
    fn replicas_applying_the_same_log_reach_byte_identical_state(
        actions in prop::collection::vec(arb_action(), 1..80),
        split in 0usize..80,
    ) {
        let mut replica_a = seeded();
        let mut replica_b = seeded();
        let split = split.min(actions.len());
        let mut answers_a = Vec::new();
        let mut answers_b = Vec::new();
        for (i, action) in actions.iter().enumerate() {
            let command = cmd(100 + i as u64, action.clone());
            answers_a.push(apply(&mut replica_a, &command));
            if i == split {
                // Replica B goes through a snapshot round-trip mid-way (as a lagging follower).
                replica_b = ClusterState::decode(&replica_b.encode().unwrap()).unwrap();
            }
            answers_b.push(apply(&mut replica_b, &command));
            prop_assert!(replica_a.check_invariants().is_ok(), "{:?}", replica_a.check_invariants());
        }
        prop_assert_eq!(answers_a, answers_b);
        prop_assert_eq!(replica_a.encode().unwrap(), replica_b.encode().unwrap());
    }
}

#[test]
fn a_node_updates_its_capacity_and_api_address_but_never_below_its_placed_reservations() {
    let mut state = init();
    must(
        &mut state,
        &cmd(
            1,
            reg(Admission::Bootstrap, "k1", Roles::SERVER_WORKER, 0, 0),
        ),
    );
    let update = |cpu_millis: u64, memory_bytes: u64| Action::UpdateNodeInfo {
        node: 1,
        api_addr: Some("127.0.0.1:7071".into()),
        capacity: Resources::new(cpu_millis, memory_bytes),
        reserve: Resources::new(0, 0),
    };
    check(
        &mut state,
        vec![
            (create(ws("t", 1_000, GIB)), &refused("unsatisfiable")),
            (update(4_000, 8 * GIB), &is_ok),
            (create(ws("t", 3_000, GIB)), &placed_on(1, 1)),
            (update(2_000, 8 * GIB), &refused("conflict")),
            (
                Action::UpdateNodeInfo {
                    node: 9,
                    api_addr: None,
                    capacity: Resources::new(1, 1),
                    reserve: Resources::new(0, 0),
                },
                &refused("not_found"),
            ),
        ],
    );
    let node = &state.nodes[&1];
    assert_eq!(node.capacity, Resources::new(4_000, 8 * GIB));
    assert_eq!(node.api_addr.as_deref(), Some("127.0.0.1:7071"));
}
