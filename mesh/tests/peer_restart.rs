//! A peer killed hard (no QUIC close reaches anyone) and restarted on its identity and port:
//! the others' next requests reach the new process within a caller's deadline, far below the
//! idle timeout that used to be the only way out of the dead connection.
//!
//! "Killed hard" is dropping the `Mesh` without `shutdown`: its drop closes the WireGuard
//! socket before anything else, so its QUIC connections die without a word, as they do under
//! `kill -9`.

// Test code: a panic is the failure report (the workspace denies unwrap/expect elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use shoal_mesh::{Mesh, MeshConfig, PeerInfo, PeerSpec, RpcHandler, Transport, TransportLimits};
use tokio::sync::Notify;

/// The deadline of one try, as a Raft or heartbeat caller has one (well under the 6 s idle
/// timeout of `quick_limits`).
const CALLER_DEADLINE: Duration = Duration::from_secs(1);

fn loopback_any() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// At most two tries of `CALLER_DEADLINE` each; the errors of both if neither answered.
async fn request_within_deadline(
    transport: &Transport,
    to: Ipv4Addr,
    body: &'static [u8],
) -> Result<Bytes, String> {
    let mut errors = Vec::new();
    for _ in 0..2 {
        match tokio::time::timeout(
            CALLER_DEADLINE,
            transport.request(to, Bytes::from_static(body)),
        )
        .await
        {
            Ok(Ok(answer)) => return Ok(answer),
            Ok(Err(e)) => errors.push(e.to_string()),
            Err(_) => errors.push(format!("no answer within {CALLER_DEADLINE:?}")),
        }
    }
    Err(errors.join("; "))
}

async fn start_nodes(dirs: &[tempfile::TempDir], limits: TransportLimits) -> Vec<Mesh> {
    let mut nodes = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        nodes.push(
            start_userspace_with(dir.path(), loopback_any(), mesh_ip(i as u8 + 1), limits).await,
        );
    }
    let specs: Vec<PeerSpec> = nodes.iter().map(spec_of).collect();
    for node in &nodes {
        node.set_peers(&specs).unwrap();
    }
    nodes
}

/// Kills `node` hard and starts it again on the same data dir (identity) and UDP port.
async fn kill_and_restart(
    node: Mesh,
    dir: &Path,
    limits: TransportLimits,
    specs: &[PeerSpec],
) -> Mesh {
    let listen = node.local_udp_addr();
    let mesh_addr = node.mesh_addr();
    drop(node);
    let restarted = start_userspace_with(dir, listen, mesh_addr, limits).await;
    restarted.set_peers(specs).unwrap();
    restarted
}

fn echo_of(body: &str, from: &Mesh) -> Vec<u8> {
    format!("echo {body} from {}", from.mesh_addr()).into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_peers_stateless_reset_kills_the_old_connection_so_the_next_request_gets_through_within_its_deadline(
) {
    init_tracing();
    // The silence fallback is off: only the restarted process's stateless reset (same reset
    // key, derived from the identity) can end the old connection before the idle timeout.
    let limits = TransportLimits {
        peer_silence_ms_max: 60_000,
        ..quick_limits()
    };
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes = start_nodes(&dirs, limits).await;
    let specs: Vec<PeerSpec> = nodes.iter().map(spec_of).collect();
    let c_addr = nodes[2].mesh_addr();

    tracing::info!("--- A and B talk to C: each caches a connection to C's process");
    for from in &nodes[..2] {
        let answer = request_within_deadline(&from.transport(), c_addr, b"before")
            .await
            .unwrap();
        assert_eq!(answer, echo_of("before", from));
    }
    assert_eq!(nodes[0].transport().stats().dials_started, 1);

    tracing::info!("--- kill C hard and restart it on its identity and port");
    let c = nodes.pop().unwrap();
    nodes.push(kill_and_restart(c, dirs[2].path(), limits, &specs).await);

    tracing::info!("--- A's and B's next requests to C get through within the deadline");
    for from in &nodes[..2] {
        let answer = request_within_deadline(&from.transport(), c_addr, b"after")
            .await
            .unwrap_or_else(|e| {
                panic!("{} could not reach the restarted C: {e}", from.mesh_addr())
            });
        assert_eq!(answer, echo_of("after", from));
    }
    let stats = nodes[0].transport().stats();
    assert_eq!(
        stats.dials_started, 2,
        "A dialled the new process once: {stats:?}"
    );
    assert_eq!(stats.connections_closed_silent, 0, "{stats:?}");

    tracing::info!("--- C reaches A and B too");
    for to in &nodes[..2] {
        let answer = request_within_deadline(&nodes[2].transport(), to.mesh_addr(), b"back")
            .await
            .unwrap();
        assert_eq!(answer, echo_of("back", &nodes[2]));
    }
    for node in nodes {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_to_a_killed_peer_is_closed_and_a_dial_begun_while_it_was_down_does_not_delay_it_once_back(
) {
    init_tracing();
    let limits = quick_limits();
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes = start_nodes(&dirs, limits).await;
    let specs: Vec<PeerSpec> = nodes.iter().map(spec_of).collect();
    let a = nodes[0].transport();
    let c_addr = nodes[1].mesh_addr();
    request_within_deadline(&a, c_addr, b"before")
        .await
        .unwrap();

    tracing::info!(
        "--- kill C hard: A's request goes unanswered and A closes the silent connection"
    );
    let c = nodes.pop().unwrap();
    let listen = c.local_udp_addr();
    drop(c);
    let unanswered = tokio::time::timeout(
        CALLER_DEADLINE,
        a.request(c_addr, Bytes::from_static(b"into the void")),
    )
    .await;
    assert!(
        !matches!(unanswered, Ok(Ok(_))),
        "a killed peer cannot answer"
    );
    let stats = a.stats();
    assert_eq!(stats.connections_closed_silent, 1, "{stats:?}");

    tracing::info!("--- the next request dials C while it is down; the dial outlives the caller");
    let unanswered = tokio::time::timeout(
        Duration::from_millis(1_500),
        a.request(c_addr, Bytes::from_static(b"into the void again")),
    )
    .await;
    assert!(
        !matches!(unanswered, Ok(Ok(_))),
        "a killed peer cannot answer"
    );
    assert_eq!(a.stats().dials_started, 2);

    tracing::info!("--- restart C; once C has reached A (the tunnel is up both ways), one try of A's gets through");
    let c = start_userspace_with(dirs[1].path(), listen, c_addr, limits).await;
    c.set_peers(&specs).unwrap();
    let answer = request_within_deadline(&c.transport(), nodes[0].mesh_addr(), b"hello")
        .await
        .unwrap();
    assert_eq!(answer, echo_of("hello", &c));
    // The dial begun while C was down is older than `dial_attempt_ms`: its retransmissions
    // back off (the next one about 3 s after it began, past its 2 s connect timeout), so
    // waiting for it would miss the deadline; a new dial is started instead.
    let answer = tokio::time::timeout(
        CALLER_DEADLINE,
        a.request(c_addr, Bytes::from_static(b"after")),
    )
    .await
    .expect("an answer within the deadline")
    .expect("an answer");
    assert_eq!(answer, echo_of("after", &nodes[0]));
    assert_eq!(a.stats().dials_started, 3);
    c.shutdown().await;
    for node in nodes {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_to_a_restarted_peer_share_one_new_connection() {
    init_tracing();
    // One dial may take as long as it needs and the silence fallback is off (the reset ends
    // the old connection), so that the count below is exact on a slow machine too.
    let limits = TransportLimits {
        dial_attempt_ms: 60_000,
        peer_silence_ms_max: 60_000,
        ..quick_limits()
    };
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes = start_nodes(&dirs, limits).await;
    let specs: Vec<PeerSpec> = nodes.iter().map(spec_of).collect();
    let a = nodes[0].transport();
    let c_addr = nodes[1].mesh_addr();
    request_within_deadline(&a, c_addr, b"before")
        .await
        .unwrap();
    assert_eq!(a.stats().dials_started, 1);

    tracing::info!("--- kill and restart C, then 16 requests from A at once");
    let c = nodes.pop().unwrap();
    nodes.push(kill_and_restart(c, dirs[1].path(), limits, &specs).await);
    let requests: Vec<_> = (0..16)
        .map(|_| {
            let a = a.clone();
            tokio::spawn(async move { request_within_deadline(&a, c_addr, b"together").await })
        })
        .collect();
    for request in requests {
        let answer = request.await.unwrap().unwrap();
        assert_eq!(answer, echo_of("together", &nodes[0]));
    }
    let stats = a.stats();
    assert_eq!(
        stats.dials_started, 2,
        "one new connection for all: {stats:?}"
    );
    for node in nodes {
        node.shutdown().await;
    }
}

/// Counts the requests it handles (across restarts: the count is shared); a `hang` request is
/// counted and then never answered, like a write its node handled just before being killed.
struct CountingHandler {
    handled: Arc<AtomicU32>,
    first_handled: Arc<Notify>,
}

#[async_trait::async_trait]
impl RpcHandler for CountingHandler {
    async fn handle(&self, _from: PeerInfo, request: Bytes) -> Bytes {
        if request == b"hang"[..] {
            self.handled.fetch_add(1, Ordering::SeqCst);
            self.first_handled.notify_one();
            std::future::pending::<()>().await;
        }
        request
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_its_peer_handled_before_being_killed_is_not_sent_again_to_the_restarted_peer() {
    init_tracing();
    let limits = quick_limits();
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let handled = Arc::new(AtomicU32::new(0));
    let first_handled = Arc::new(Notify::new());
    let start_c = |listen: SocketAddr| {
        let mut config = MeshConfig::new(dirs[1].path(), listen, mesh_ip(2));
        config.limits = limits;
        let handler = Arc::new(CountingHandler {
            handled: Arc::clone(&handled),
            first_handled: Arc::clone(&first_handled),
        });
        async move { Mesh::start(config, handler).await.expect("mesh starts") }
    };
    let a_node = start_userspace_with(dirs[0].path(), loopback_any(), mesh_ip(1), limits).await;
    let c = start_c(loopback_any()).await;
    let specs = vec![spec_of(&a_node), spec_of(&c)];
    a_node.set_peers(&specs).unwrap();
    c.set_peers(&specs).unwrap();
    let a = a_node.transport();
    let c_addr = c.mesh_addr();

    let answer = request_within_deadline(&a, c_addr, b"warm").await.unwrap();
    assert_eq!(answer, &b"warm"[..], "A has a connection to C cached");

    tracing::info!("--- C handles A's request but dies before answering");
    let pending = {
        let a = a.clone();
        tokio::spawn(async move {
            tokio::time::timeout(
                Duration::from_secs(8),
                a.request(c_addr, Bytes::from_static(b"hang")),
            )
            .await
        })
    };
    tokio::time::timeout(Duration::from_secs(5), first_handled.notified())
        .await
        .expect("C handles the request");
    let listen = c.local_udp_addr();
    drop(c);

    tracing::info!(
        "--- C restarts: A's request fails (the old connection is reset) and is not resent"
    );
    let c = start_c(listen).await;
    c.set_peers(&specs).unwrap();
    let outcome = pending.await.unwrap();
    assert!(
        matches!(outcome, Ok(Err(_))),
        "the request fails: {outcome:?}"
    );
    let answer = request_within_deadline(&a, c_addr, b"next").await.unwrap();
    assert_eq!(answer, &b"next"[..]);
    assert_eq!(
        handled.load(Ordering::SeqCst),
        1,
        "the request was handled once"
    );
    c.shutdown().await;
    a_node.shutdown().await;
}

/// A node restarted at once after a kill -9 can find its WireGuard port still held for a
/// moment (a descendant of the old process still exiting; the chaos suite saw a restarted node
/// fail with "Address already in use" and stay down): the start waits for the port instead
/// of failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_waits_for_its_wireguard_port_while_the_previous_process_still_holds_it() {
    init_tracing();
    let dir = tempfile::tempdir().expect("tempdir");
    let holder = std::net::UdpSocket::bind(loopback_any()).expect("bind a holder");
    let port = holder.local_addr().expect("holder addr");
    // The "previous process" lets go of the port a little after the new one started.
    let release = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        drop(holder);
    });
    let mesh = tokio::time::timeout(
        Duration::from_secs(20),
        start_userspace(dir.path(), port, mesh_ip(40)),
    )
    .await
    .expect("the start ends within its bounded wait");
    assert_eq!(mesh.local_udp_addr(), port);
    release.await.expect("release task");
    mesh.shutdown().await;
}
