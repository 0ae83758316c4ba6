//! A peer restarted while the network loses its handshake response: once the network heals,
//! the two must talk again within a few caller retries, not only when WireGuard's own timers
//! retry (REKEY_TIMEOUT, 5 s) (chaos: a restarted follower and another follower could not reach
//! each other for 2-5 s after a partition healed, so a leader kill found no quorum).
//!
//! The two nodes talk through a UDP relay in the test that can drop one direction.

// Test code: a panic is the failure report (the workspace denies unwrap/expect elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use shoal_mesh::{Mesh, PeerSpec, Transport};
use tokio::net::UdpSocket;

/// How long a caller may take to get a request through once the network healed: well under
/// the 5 s after which WireGuard itself would retry the lost handshake.
const HEALED_DEADLINE: Duration = Duration::from_secs(4);
/// A caller's deadline for one request, and its pause before the next, as Raft's RPCs retry.
const TRY_DEADLINE: Duration = Duration::from_millis(250);
const TRY_PAUSE: Duration = Duration::from_millis(50);
/// WireGuard message type of a handshake response (first byte, little-endian u32 type 2).
const HANDSHAKE_RESPONSE: u8 = 2;
/// WireGuard message type of a handshake initiation.
const HANDSHAKE_INITIATION: u8 = 1;

/// A UDP relay between `a` and `b` (both send to it; it forwards by source address).
struct Relay {
    addr: SocketAddr,
    drop_a_to_b: Arc<AtomicBool>,
    /// Handshake responses from `a` dropped while `drop_a_to_b` was set.
    responses_dropped: Arc<AtomicU64>,
    /// Handshake initiations forwarded from `b` to `a`.
    initiations_b_to_a: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(a: SocketAddr, b: SocketAddr) -> Relay {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let drop_a_to_b = Arc::new(AtomicBool::new(false));
        let responses_dropped = Arc::new(AtomicU64::new(0));
        let initiations_b_to_a = Arc::new(AtomicU64::new(0));
        let (dropping, dropped, initiations) = (
            drop_a_to_b.clone(),
            responses_dropped.clone(),
            initiations_b_to_a.clone(),
        );
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 65_536];
            loop {
                let Ok((n, from)) = socket.recv_from(&mut buf).await else {
                    return;
                };
                let datagram = &buf[..n];
                if from == a {
                    if dropping.load(Ordering::SeqCst) {
                        if datagram.first() == Some(&HANDSHAKE_RESPONSE) {
                            dropped.fetch_add(1, Ordering::SeqCst);
                        }
                        continue;
                    }
                    let _ = socket.send_to(datagram, b).await;
                } else if from == b {
                    if datagram.first() == Some(&HANDSHAKE_INITIATION) {
                        initiations.fetch_add(1, Ordering::SeqCst);
                    }
                    let _ = socket.send_to(datagram, a).await;
                }
            }
        });
        Relay {
            addr,
            drop_a_to_b,
            responses_dropped,
            initiations_b_to_a,
            task,
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn via(relay: &Relay, mesh: &Mesh) -> PeerSpec {
    PeerSpec {
        endpoint: Some(relay.addr),
        ..spec_of(mesh)
    }
}

/// Requests `to` like a Raft caller (a short deadline per try, a new try soon after) until
/// one is answered or `HEALED_DEADLINE` has passed; the last error if none was.
async fn reach(transport: &Transport, to: std::net::Ipv4Addr) -> Result<Bytes, String> {
    let mut last_error = String::from("no try");
    let tries = async {
        loop {
            match tokio::time::timeout(
                TRY_DEADLINE,
                transport.request(to, Bytes::from_static(b"hi")),
            )
            .await
            {
                Ok(Ok(answer)) => return answer,
                Ok(Err(e)) => last_error = e.to_string(),
                Err(_) => last_error = format!("no answer within {TRY_DEADLINE:?}"),
            }
            tokio::time::sleep(TRY_PAUSE).await;
        }
    };
    match tokio::time::timeout(HEALED_DEADLINE, tries).await {
        Ok(answer) => Ok(answer),
        Err(_) => Err(last_error),
    }
}

async fn wait_for(what: &str, counter: &AtomicU64) {
    tokio::time::timeout(Duration::from_secs(30), async {
        while counter.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what} never seen"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_restarted_while_its_handshake_response_was_lost_is_reachable_within_a_deadline_once_the_network_heals(
) {
    init_tracing();
    let limits = quick_limits();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let a = start_userspace_with(dir_a.path(), any, mesh_ip(1), limits).await;
    let b = start_userspace_with(dir_b.path(), any, mesh_ip(2), limits).await;
    let relay = Relay::start(a.local_udp_addr(), b.local_udp_addr()).await;
    a.set_peers(&[via(&relay, &b)]).unwrap();
    b.set_peers(&[via(&relay, &a)]).unwrap();

    tracing::info!("--- A and B talk through the relay");
    reach(&a.transport(), b.mesh_addr()).await.unwrap();
    reach(&b.transport(), a.mesh_addr()).await.unwrap();

    tracing::info!("--- the relay drops A -> B; B is killed hard and restarted: A's handshake response is lost");
    relay.drop_a_to_b.store(true, Ordering::SeqCst);
    let (listen_b, mesh_b) = (b.local_udp_addr(), b.mesh_addr());
    drop(b);
    let b = start_userspace_with(dir_b.path(), listen_b, mesh_b, limits).await;
    b.set_peers(&[via(&relay, &a)]).unwrap();
    wait_for("B's handshake initiation", &relay.initiations_b_to_a).await;
    wait_for("A's dropped handshake response", &relay.responses_dropped).await;

    tracing::info!(
        "--- the network heals: A reaches B and B reaches A, retrying like Raft, well within 5 s"
    );
    relay.drop_a_to_b.store(false, Ordering::SeqCst);
    let (a_transport, b_transport) = (a.transport(), b.transport());
    let (a_to_b, b_to_a) = tokio::join!(
        reach(&a_transport, b.mesh_addr()),
        reach(&b_transport, a.mesh_addr())
    );
    assert!(a_to_b.is_ok(), "A could not reach B: {a_to_b:?}");
    assert!(b_to_a.is_ok(), "B could not reach A: {b_to_a:?}");
    a.shutdown().await;
    b.shutdown().await;
}
