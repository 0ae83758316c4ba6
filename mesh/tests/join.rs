//! Join through the WireGuard UDP port: a valid token admits once; bad tokens, removed
//! identities and replayed join packets are refused with a clear reason and change nothing.

// Test code: a panic is the failure report (the workspace denies unwrap/expect elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use common::*;
use shoal_mesh::join_wire::{self, JoinRequest};
use shoal_mesh::{
    join_cluster, Identity, JoinError, JoinOptions, JoinRefusal, JoinToken, TokenRecord,
};

fn options() -> JoinOptions {
    let mut options = JoinOptions::new(SocketAddr::from(([127, 0, 0, 1], 0)));
    options.attempts_max = 3;
    options.attempt_timeout_ms = 2_000;
    options
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_token_admits_a_node_that_then_talks_over_the_mesh() {
    init_tracing();
    let member_dir = tempfile::tempdir().unwrap();
    let member = start_userspace(
        member_dir.path(),
        "127.0.0.1:0".parse().unwrap(),
        mesh_ip(1),
    )
    .await;
    let admission = TestAdmission::new(spec_of(&member));
    member.set_admission(admission.clone());
    let token = JoinToken::generate(
        member.public_key(),
        vec![member.local_udp_addr().to_string()],
    );
    {
        let mut state = admission.state.lock();
        let record = TokenRecord::new(&token, state.now_ms, 3_600_000, Some(1));
        state.tokens.insert(token.id.clone(), record);
    }
    let token = JoinToken::parse(&token.to_string()).unwrap();

    tracing::info!("--- the joiner proves the token through the member's WireGuard port");
    let joiner_dir = tempfile::tempdir().unwrap();
    let joiner_identity = Identity::load_or_create(joiner_dir.path()).unwrap();
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let joiner_addr = udp.local_addr().unwrap();
    drop(udp);
    let mut opts = options();
    opts.bind_addr = joiner_addr;
    let accepted = join_cluster(&joiner_identity, &token, &opts).await.unwrap();
    assert_eq!(accepted.mesh_addr, mesh_ip(2));
    assert!(accepted
        .peers
        .iter()
        .any(|p| p.public_key == member.public_key()));

    tracing::info!("--- both sides configure peers from the committed list; RPC works");
    let joiner = start_userspace(joiner_dir.path(), joiner_addr, accepted.mesh_addr).await;
    joiner.set_peers(&accepted.peers).unwrap();
    let members: Vec<_> = admission
        .state
        .lock()
        .members
        .values()
        .map(|(_, s)| s.clone())
        .collect();
    member.set_peers(&members).unwrap();
    let answer = joiner
        .transport()
        .request(mesh_ip(1), bytes::Bytes::from_static(b"hello"))
        .await
        .unwrap();
    assert_eq!(answer, &b"echo hello from 10.77.0.2"[..]);

    tracing::info!("--- the same identity joining again is answered idempotently, no new use");
    let mut again = options();
    again.bind_addr = "127.0.0.1:0".parse().unwrap();
    let repeated = join_cluster(&joiner_identity, &token, &again)
        .await
        .unwrap();
    assert_eq!(repeated.mesh_addr, accepted.mesh_addr);
    assert_eq!(admission.state.lock().admitted_count, 1);
    joiner.shutdown().await;
    member.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_expired_revoked_used_up_tokens_and_removed_identities_are_refused() {
    init_tracing();
    let member_dir = tempfile::tempdir().unwrap();
    let member = start_userspace(
        member_dir.path(),
        "127.0.0.1:0".parse().unwrap(),
        mesh_ip(1),
    )
    .await;
    let admission = TestAdmission::new(spec_of(&member));
    member.set_admission(admission.clone());
    let endpoint = vec![member.local_udp_addr().to_string()];
    let make = |ttl_ms: u64, uses: Option<u32>, revoked: bool| {
        let token = JoinToken::generate(member.public_key(), endpoint.clone());
        let mut state = admission.state.lock();
        let mut record = TokenRecord::new(&token, state.now_ms, ttl_ms, uses);
        record.revoked = revoked;
        state.tokens.insert(token.id.clone(), record);
        token
    };
    let good = make(3_600_000, Some(1), false);
    let expired = make(0, None, false);
    let revoked = make(3_600_000, None, false);
    admission
        .state
        .lock()
        .tokens
        .get_mut(&revoked.id)
        .unwrap()
        .revoked = true;
    let mut wrong_secret = good.clone();
    wrong_secret.secret = [0; 32];
    let mut unknown_id = good.clone();
    unknown_id.id = "ffffffffffffffff".into();

    let cases = [
        (wrong_secret, JoinRefusal::InvalidToken),
        (unknown_id, JoinRefusal::InvalidToken),
        (expired, JoinRefusal::TokenExpired),
        (revoked, JoinRefusal::TokenRevoked),
    ];
    for (token, expected) in cases {
        tracing::info!(?expected, "--- a bad token is refused with its reason");
        let result = join_cluster(&Identity::generate(), &token, &options()).await;
        match result {
            Err(JoinError::Refused(refusal)) => assert_eq!(refusal, expected),
            other => panic!("expected {expected:?}, got {other:?}"),
        }
    }
    assert_eq!(
        admission.state.lock().admitted_count,
        0,
        "refusals change nothing"
    );

    tracing::info!("--- a single-use token admits one node, then is used up");
    join_cluster(&Identity::generate(), &good, &options())
        .await
        .unwrap();
    match join_cluster(&Identity::generate(), &good, &options()).await {
        Err(JoinError::Refused(JoinRefusal::TokenUsedUp)) => {}
        other => panic!("expected TokenUsedUp, got {other:?}"),
    }

    tracing::info!("--- a removed identity cannot come back, even with a fresh token");
    let removed = Identity::generate();
    admission.state.lock().removed.insert(removed.public_key());
    let fresh = make(3_600_000, None, false);
    match join_cluster(&removed, &fresh, &options()).await {
        Err(JoinError::Refused(JoinRefusal::RemovedIdentity)) => {}
        other => panic!("expected RemovedIdentity, got {other:?}"),
    }

    tracing::info!("--- a replayed join packet is refused and admits nobody");
    let token = make(3_600_000, None, false);
    let joiner = Identity::generate();
    let request = JoinRequest {
        token_id: token.id.clone(),
        token_secret: token.secret,
        endpoint: None,
        timestamp_ms: shoal_mesh::clock::unix_ms(),
        nonce: [7; 16],
    };
    let (packet, pending) =
        join_wire::seal_request(&joiner, &member.public_key(), &request).unwrap();
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut answers = Vec::new();
    for _ in 0..2 {
        socket.send_to(&packet, member.local_udp_addr()).unwrap();
        let mut buf = vec![0u8; 65_536];
        let (len, _) = socket.recv_from(&mut buf).unwrap();
        answers.push(pending.open_response(&buf[..len]).unwrap());
    }
    assert!(answers[0].is_ok(), "{:?}", answers[0]);
    assert_eq!(answers[1], Err(JoinRefusal::StaleOrReplayed));
    let admitted = admission.state.lock().admitted_count;
    assert_eq!(
        admitted, 2,
        "one admission from the good token, one from the first packet"
    );
    member.shutdown().await;
}
