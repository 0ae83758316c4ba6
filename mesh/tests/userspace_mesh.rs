//! Userspace mesh on loopback: RPCs, streams, restarts, removal, garbage and replays.

// Test code: a panic is the failure report (the workspace denies unwrap/expect elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use boringtun::noise::{Tunn, TunnResult};
use bytes::Bytes;
use common::*;
use shoal_mesh::{Identity, PeerSpec, TransportError};

const WAIT: Duration = Duration::from_secs(15);

fn loopback_any() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_userspace_nodes_exchange_rpcs_and_streams_and_keep_doing_so_after_a_restart() {
    init_tracing();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        nodes.push(start_userspace(dir.path(), loopback_any(), mesh_ip(i as u8 + 1)).await);
    }
    let specs: Vec<PeerSpec> = nodes.iter().map(spec_of).collect();
    for node in &nodes {
        node.set_peers(&specs).unwrap();
    }

    tracing::info!("--- every node asks every other node");
    for (i, from) in nodes.iter().enumerate() {
        for (j, to) in nodes.iter().enumerate() {
            if i == j {
                continue;
            }
            let answer = from
                .transport()
                .request(to.mesh_addr(), Bytes::from_static(b"hi"))
                .await
                .unwrap();
            assert_eq!(
                answer,
                format!("echo hi from {}", from.mesh_addr()).as_bytes()
            );
        }
    }

    tracing::info!("--- a stream carries frames both ways and ends cleanly");
    {
        let (mut sender, mut receiver) = nodes[0]
            .transport()
            .open_stream(nodes[1].mesh_addr(), Bytes::from_static(b"follow"))
            .await
            .unwrap();
        assert_eq!(receiver.recv().await.unwrap().unwrap(), &b"follow"[..]);
        for n in 0..3u32 {
            sender.send_typed(&n).await.unwrap();
            assert_eq!(receiver.recv_typed::<u32>().await.unwrap(), Some(n));
        }
        sender.finish();
        assert_eq!(receiver.recv().await.unwrap(), None);
    }

    tracing::info!("--- restart node 3 with the same data dir and port");
    let old_key = nodes[2].public_key();
    let port_addr = nodes[2].local_udp_addr();
    let restarted = nodes.pop().unwrap();
    restarted.shutdown().await;
    let node3 = start_userspace(dirs[2].path(), port_addr, mesh_ip(3)).await;
    assert_eq!(node3.public_key(), old_key, "identity survives a restart");
    node3.set_peers(&specs).unwrap();
    nodes.push(node3);

    tracing::info!("--- all pairs talk again: old connections to node 3 are replaced");
    for (i, from) in nodes.iter().enumerate() {
        for (j, to) in nodes.iter().enumerate() {
            if i != j {
                let answer = from
                    .transport()
                    .request(to.mesh_addr(), Bytes::from_static(b"again"))
                    .await
                    .unwrap();
                assert_eq!(
                    answer,
                    format!("echo again from {}", from.mesh_addr()).as_bytes()
                );
            }
        }
    }
    let (mut sender, mut receiver) = nodes[2]
        .transport()
        .open_stream(nodes[0].mesh_addr(), Bytes::from_static(b"after restart"))
        .await
        .unwrap();
    assert_eq!(
        receiver.recv().await.unwrap().unwrap(),
        &b"after restart"[..]
    );
    sender.send(b"x").await.unwrap();
    assert_eq!(receiver.recv().await.unwrap().unwrap(), &b"x"[..]);
    for node in nodes {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_nodes_packets_are_dropped_and_others_still_work() {
    init_tracing();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        nodes.push(start_userspace(dir.path(), loopback_any(), mesh_ip(i as u8 + 1)).await);
    }
    let specs: Vec<PeerSpec> = nodes.iter().map(spec_of).collect();
    for node in &nodes {
        node.set_peers(&specs).unwrap();
    }
    request_eventually(&nodes[2], nodes[0].mesh_addr(), b"before", WAIT).await;

    tracing::info!("--- node 1 removes node 3 from its peers");
    nodes[0].set_peers(&specs[..2]).unwrap();
    let dropped_before = nodes[0].stats().datagrams_unknown_peer;

    tracing::info!("--- node 3 can no longer reach node 1; its packets are counted as unknown");
    let result = nodes[2]
        .transport()
        .request(nodes[0].mesh_addr(), Bytes::from_static(b"let me in"))
        .await;
    assert!(result.is_err(), "a removed node got an answer: {result:?}");
    assert!(nodes[0].stats().datagrams_unknown_peer > dropped_before);
    assert!(matches!(
        nodes[0]
            .transport()
            .request(nodes[2].mesh_addr(), Bytes::from_static(b"x"))
            .await,
        Err(TransportError::UnknownPeer(_))
    ));

    tracing::info!("--- node 2 still talks to node 1");
    let answer = nodes[1]
        .transport()
        .request(nodes[0].mesh_addr(), Bytes::from_static(b"ok"))
        .await
        .unwrap();
    assert_eq!(
        answer,
        format!("echo ok from {}", nodes[1].mesh_addr()).as_bytes()
    );
    for node in nodes {
        node.shutdown().await;
    }
}

/// Completes a WireGuard handshake with `target` from a raw socket, as peer `identity`.
fn raw_handshake(socket: &UdpSocket, tunn: &mut Tunn, target: SocketAddr) {
    let mut buf = vec![0u8; 2048];
    let mut out = vec![0u8; 2048];
    let TunnResult::WriteToNetwork(init) = tunn.format_handshake_initiation(&mut buf, false) else {
        panic!("no handshake initiation")
    };
    socket.send_to(init, target).unwrap();
    // Skip the node's own initiations (it greets new peers); wait for the response.
    for _ in 0..10 {
        let (len, _) = socket.recv_from(&mut buf).unwrap();
        if buf[0] != 2 {
            continue;
        }
        match tunn.decapsulate(Some(target.ip()), &buf[..len], &mut out) {
            TunnResult::WriteToNetwork(keepalive) => {
                socket.send_to(keepalive, target).unwrap();
                return;
            }
            other => panic!("unexpected handshake result {other:?}"),
        }
    }
    panic!("no handshake response");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_truncated_and_replayed_datagrams_neither_crash_nor_wedge_a_node() {
    init_tracing();
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let a = start_userspace(dirs[0].path(), loopback_any(), mesh_ip(1)).await;
    let b = start_userspace(dirs[1].path(), loopback_any(), mesh_ip(2)).await;
    // A third, raw peer: a bare boringtun tunnel on a plain socket, so the test can replay.
    let raw_identity = Identity::generate();
    let raw_socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    raw_socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let raw_spec = PeerSpec {
        public_key: raw_identity.public_key(),
        endpoint: Some(raw_socket.local_addr().unwrap()),
        mesh_addr: mesh_ip(9),
    };
    a.set_peers(&[spec_of(&a), spec_of(&b), raw_spec]).unwrap();
    b.set_peers(&[spec_of(&a), spec_of(&b)]).unwrap();
    let mut buf = vec![0u8; 65_536];
    let target = a.local_udp_addr();

    tracing::info!("--- random garbage, fake join packets and truncated handshakes");
    let attacker = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut seed: u64 = 0x5eed;
    for n in 0..500usize {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let len = (seed >> 33) as usize % 300;
        let mut packet: Vec<u8> = (0..len).map(|i| (seed >> (i % 56)) as u8).collect();
        match n % 4 {
            0 if len >= 4 => packet[..4].copy_from_slice(&[1, 0, 0, 0]),
            1 if len >= 4 => packet[..4].copy_from_slice(&[4, 0, 0, 0]),
            2 if len >= 4 => packet[..4].copy_from_slice(b"SJ\x01\x01"),
            _ => {}
        }
        attacker.send_to(&packet, target).unwrap();
    }
    let mut tunn = Tunn::new(
        boringtun::x25519::StaticSecret::from(
            <[u8; 32]>::try_from(
                base64::Engine::decode(
                    &base64::engine::general_purpose::STANDARD,
                    raw_identity.private_base64(),
                )
                .unwrap(),
            )
            .unwrap(),
        ),
        a.public_key().to_x25519(),
        None,
        None,
        77,
        None,
    );
    let mut init_buf = vec![0u8; 2048];
    if let TunnResult::WriteToNetwork(init) = tunn.format_handshake_initiation(&mut init_buf, false)
    {
        for cut in [0, 3, 4, 50, 147] {
            attacker.send_to(&init[..cut], target).unwrap();
        }
    }

    tracing::info!("--- a real peer handshakes, pings, and replays its ping");
    let mut tunn = Tunn::new(
        boringtun::x25519::StaticSecret::from(
            <[u8; 32]>::try_from(
                base64::Engine::decode(
                    &base64::engine::general_purpose::STANDARD,
                    raw_identity.private_base64(),
                )
                .unwrap(),
            )
            .unwrap(),
        ),
        a.public_key().to_x25519(),
        None,
        None,
        78,
        None,
    );
    raw_handshake(&raw_socket, &mut tunn, target);
    let ping = icmp_echo_request(mesh_ip(9), mesh_ip(1));
    let mut enc = vec![0u8; 2048];
    let TunnResult::WriteToNetwork(datagram) = tunn.encapsulate(&ping, &mut enc) else {
        panic!("no session")
    };
    let datagram = datagram.to_vec();
    raw_socket.send_to(&datagram, target).unwrap();
    let mut out = vec![0u8; 2048];
    let mut replied = false;
    for _ in 0..10 {
        let (len, _) = raw_socket.recv_from(&mut buf).unwrap();
        if buf[0] != 4 {
            continue; // a late handshake initiation from the node
        }
        match tunn.decapsulate(Some(target.ip()), &buf[..len], &mut out) {
            TunnResult::WriteToTunnelV4(reply, src) => {
                assert_eq!(src, mesh_ip(1));
                assert_eq!(reply[20], 0, "an ICMP echo reply");
                replied = true;
                break;
            }
            other => tracing::info!(?other, "not the reply"),
        }
    }
    assert!(replied, "the node answered the ping");
    let rejected_before = a.stats().datagrams_rejected;
    raw_socket.send_to(&datagram, target).unwrap();

    tracing::info!("--- the node still serves RPCs, and counted the replay and the garbage");
    let answer = request_eventually(&b, a.mesh_addr(), b"still alive", WAIT).await;
    assert_eq!(
        answer,
        format!("echo still alive from {}", b.mesh_addr()).as_bytes()
    );
    let stats = a.stats();
    assert!(stats.datagrams_malformed > 0, "{stats:?}");
    assert!(
        stats.datagrams_rejected > rejected_before,
        "replay not rejected: {stats:?}"
    );
    assert!(stats.join_packets_received > 0, "{stats:?}");
    a.shutdown().await;
    b.shutdown().await;
}

fn icmp_echo_request(src: std::net::Ipv4Addr, dst: std::net::Ipv4Addr) -> Vec<u8> {
    let mut icmp = vec![8u8, 0, 0, 0, 0x42, 0x42, 0, 1, b'p', b'i', b'n', b'g'];
    let sum = internet_checksum(&icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    let total = 20 + icmp.len();
    let mut packet = vec![
        0x45,
        0,
        (total >> 8) as u8,
        total as u8,
        0,
        0,
        0x40,
        0,
        64,
        1,
        0,
        0,
    ];
    packet.extend_from_slice(&src.octets());
    packet.extend_from_slice(&dst.octets());
    let sum = internet_checksum(&packet);
    packet[10..12].copy_from_slice(&sum.to_be_bytes());
    packet.extend_from_slice(&icmp);
    packet
}

fn internet_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in data.chunks(2) {
        let word = if chunk.len() == 2 {
            u16::from_be_bytes([chunk[0], chunk[1]])
        } else {
            u16::from(chunk[0]) << 8
        };
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}
