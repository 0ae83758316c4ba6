//! The membership plan: server nodes join as learners and are promoted while voters are below
//! the target; nodes that left are removed; workers that are not servers never join Raft.

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
use shoal_raft::Action;
use shoal_raft::ClusterState;
use shoal_raft::Command;

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
        Some(MembershipStep::Remove(4))
    );
    assert_eq!(
        next_step(&state, &set(&[1, 3]), &set(&[5])),
        Some(MembershipStep::Promote(5))
    );
}
