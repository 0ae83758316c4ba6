//! The WireGuard data plane shared by both modes: one UDP socket, one boringtun `Tunn` per
//! peer, and a sink for decrypted packets (the userspace IP stack for quinn, or a TUN device).
//!
//! Threads (all stop within `STOP_POLL_MS` of `stop()`):
//! - `mesh-udp-rx` (tun mode only; userspace mode reads the socket on quinn's endpoint task):
//!   reads the UDP socket, routes each datagram to its peer's tunnel (by the sender's static
//!   key for handshake initiations, by our session index otherwise), hands join packets to the
//!   join server, decrypts, checks the inner source address against the peer's mesh address,
//!   and delivers.
//! - `mesh-timers`: drives `Tunn::update_timers` (rekeys, keepalives, handshake retries).
//! - `mesh-tun-rx` (tun mode): reads the TUN device and encrypts to the peer owning the
//!   destination address.
//!
//! Outbound packets from quinn (userspace mode) are encrypted on the caller's thread.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use boringtun::device::tun::TunSocket;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, Tunn, TunnResult};
use bytes::Bytes;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use parking_lot::{Mutex, RwLock};
use serde::Serialize;
use tokio::io::unix::AsyncFd;

use crate::clock;
use crate::identity::{Identity, NodePublicKey};
use crate::ip_packet::{self, Ipv4Packet};
use crate::join_wire;
use crate::peer_table::{PeerChange, PeerSpec, PeerTable, PeerTableError};
use crate::udp_gso;

/// How often blocked threads wake to check for shutdown.
pub(crate) const STOP_POLL_MS: u16 = 100;
/// Period of `update_timers` (WireGuard's timers have a 1 s granularity at most).
const TIMER_TICK_MS: u64 = 100;
/// Largest datagram handled (plus room for WireGuard's overhead).
const BUF_BYTES: usize = 65_536 + 256;
/// Handshakes per second before boringtun answers with cookies (as boringtun's device).
const HANDSHAKE_RATE_LIMIT: u64 = 100;
/// Shortest time between two handshakes the transport forces to one peer
/// ([`Engine::force_handshake`]).
const FORCED_HANDSHAKE_INTERVAL_MIN: Duration = Duration::from_millis(250);
/// Decrypted QUIC datagrams waiting for quinn (userspace mode); more are dropped like a full
/// socket buffer would.
pub(crate) const INBOX_PACKETS_MAX: usize = 4096;
/// Join requests waiting for the join server; more are dropped.
pub(crate) const JOIN_QUEUE_MAX: usize = 64;
/// Socket buffer size asked for (the kernel may cap it).
const SOCKET_BUFFER_BYTES: usize = 4 * 1024 * 1024;

/// Datagrams handled per `poll_read_socket` call before yielding to quinn.
const RX_BATCH_MAX: usize = 64;

struct RxBufs {
    datagram: Vec<u8>,
    out: Vec<u8>,
    reply: Vec<u8>,
}

thread_local! {
    static SEND_BUF: RefCell<Vec<u8>> = RefCell::new(vec![0u8; BUF_BYTES]);
    static RX_BUFS: RefCell<RxBufs> = RefCell::new(RxBufs {
        datagram: vec![0u8; BUF_BYTES],
        out: vec![0u8; BUF_BYTES],
        reply: Vec::with_capacity(2048),
    });
}

/// Counters of what the data plane did, for metrics and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct MeshStats {
    /// Datagrams read from the UDP socket.
    pub datagrams_received: u64,
    /// Datagrams dropped because they parse as neither WireGuard nor join packets.
    pub datagrams_malformed: u64,
    /// Datagrams dropped because no configured peer matches (unknown or removed peer).
    pub datagrams_unknown_peer: u64,
    /// Datagrams that failed WireGuard verification (bad MAC, replayed counter, ...).
    pub datagrams_rejected: u64,
    /// Decrypted packets dropped because their source is not the peer's mesh address.
    pub packets_not_allowed: u64,
    /// Packets delivered to the TUN device or to quinn.
    pub packets_delivered: u64,
    /// Outbound packets with no peer for their destination.
    pub packets_no_route: u64,
    /// Join packets received.
    pub join_packets_received: u64,
}

#[derive(Default)]
struct Counters {
    datagrams_received: AtomicU64,
    datagrams_malformed: AtomicU64,
    datagrams_unknown_peer: AtomicU64,
    datagrams_rejected: AtomicU64,
    packets_not_allowed: AtomicU64,
    packets_delivered: AtomicU64,
    packets_no_route: AtomicU64,
    join_packets_received: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// A live peer: its tunnel and current endpoint.
pub(crate) struct LivePeer {
    pub(crate) public_key: NodePublicKey,
    pub(crate) mesh_addr: Ipv4Addr,
    tunn: Mutex<Tunn>,
    endpoint: Mutex<Option<SocketAddr>>,
    /// When the transport last forced a handshake with this peer (for the rate limit).
    forced_handshake_at: Mutex<Option<std::time::Instant>>,
}

/// A snapshot of one peer for `wg show` (UAPI).
pub(crate) struct PeerStatus {
    pub(crate) public_key: NodePublicKey,
    pub(crate) mesh_addr: Ipv4Addr,
    pub(crate) endpoint: Option<SocketAddr>,
    pub(crate) since_last_handshake: Option<Duration>,
    pub(crate) tx_bytes: usize,
    pub(crate) rx_bytes: usize,
    pub(crate) persistent_keepalive_s: Option<u16>,
}

#[derive(Default)]
struct Peers {
    table: PeerTable,
    by_index: HashMap<u32, Arc<LivePeer>>,
    by_addr: HashMap<Ipv4Addr, Arc<LivePeer>>,
    by_key: HashMap<NodePublicKey, Arc<LivePeer>>,
}

/// Decrypted QUIC datagrams for quinn (userspace mode), filled and drained on quinn's own
/// task (see `Engine::poll_read_socket`).
pub(crate) struct UserspaceInbox {
    queue: Mutex<VecDeque<(SocketAddrV4, Bytes)>>,
    pub(crate) quic_port: u16,
}

impl UserspaceInbox {
    pub(crate) fn new(quic_port: u16) -> Self {
        Self {
            queue: Mutex::new(VecDeque::new()),
            quic_port,
        }
    }

    fn push(&self, from: SocketAddrV4, payload: Bytes) -> bool {
        let mut queue = self.queue.lock();
        if queue.len() >= INBOX_PACKETS_MAX {
            return false;
        }
        queue.push_back((from, payload));
        true
    }

    /// Fills as many `(buf, meta)` pairs as there are queued datagrams.
    /// Moves queued datagrams into quinn's buffers; returns how many.
    pub(crate) fn fill(
        &self,
        bufs: &mut [io::IoSliceMut<'_>],
        meta: &mut [quinn::udp::RecvMeta],
        dst_ip: Ipv4Addr,
    ) -> usize {
        let mut queue = self.queue.lock();
        let mut filled = 0;
        while filled < bufs.len().min(meta.len()) {
            let Some((from, payload)) = queue.pop_front() else {
                break;
            };
            let len = payload.len().min(bufs[filled].len());
            bufs[filled][..len].copy_from_slice(&payload[..len]);
            // RecvMeta is non-exhaustive: it can only be built from its default.
            #[allow(clippy::field_reassign_with_default)]
            let m = {
                let mut m = quinn::udp::RecvMeta::default();
                m.addr = SocketAddr::V4(from);
                m.len = len;
                m.stride = len;
                m.dst_ip = Some(IpAddr::V4(dst_ip));
                m
            };
            meta[filled] = m;
            filled += 1;
        }
        filled
    }
}

/// Join requests handed from the receive thread to the join server.
pub(crate) type JoinQueue = tokio::sync::mpsc::Receiver<(Vec<u8>, SocketAddr)>;

/// The WireGuard UDP socket. In userspace mode it is registered with tokio so that quinn's
/// endpoint task can read it; in tun mode a dedicated thread reads it, and registering it
/// would wake tokio's reactor for every packet for nothing.
enum WgSocket {
    Plain(UdpSocket),
    Async(AsyncFd<UdpSocket>),
}

impl WgSocket {
    fn get(&self) -> &UdpSocket {
        match self {
            Self::Plain(socket) => socket,
            Self::Async(fd) => fd.get_ref(),
        }
    }
}

/// Where decrypted packets go.
pub(crate) enum Sink {
    Userspace(Arc<UserspaceInbox>),
    Tun(Arc<TunSocket>),
}

/// See the module doc.
pub(crate) struct Engine {
    identity: Identity,
    own_public: boringtun::x25519::PublicKey,
    pub(crate) mesh_addr: Ipv4Addr,
    socket: RwLock<Option<WgSocket>>,
    pub(crate) local_addr: SocketAddr,
    peers: RwLock<Peers>,
    rate_limiter: Arc<RateLimiter>,
    pub(crate) sink: Sink,
    join_tx: tokio::sync::mpsc::Sender<(Vec<u8>, SocketAddr)>,
    counters: Counters,
    stop: AtomicBool,
    persistent_keepalive_s: Option<u16>,
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("public_key", &self.identity.public_key())
            .field("mesh_addr", &self.mesh_addr)
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

/// Binds the WireGuard UDP socket (non-blocking, large buffers).
pub(crate) fn bind_udp(addr: SocketAddr) -> io::Result<UdpSocket> {
    let domain = socket2::Domain::for_address(addr);
    let socket = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    if addr.is_ipv6() {
        // Dual-stack when bound to [::], so IPv4 peers reach us too.
        let _ = socket.set_only_v6(false);
    }
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER_BYTES);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER_BYTES);
    // Deliberately not forced past net.core.{r,w}mem_max (SO_RCVBUFFORCE): measured, the
    // deeper queue only added latency inside the tunnel and lowered iperf3 throughput.
    socket.bind(&addr.into())?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

fn wait_fd(fd: std::os::fd::BorrowedFd<'_>, flags: PollFlags, timeout_ms: u16) -> bool {
    let mut fds = [PollFd::new(fd, flags)];
    matches!(nix::poll::poll(&mut fds, PollTimeout::from(timeout_ms)), Ok(n) if n > 0)
}

impl Engine {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        identity: Identity,
        mesh_addr: Ipv4Addr,
        socket: UdpSocket,
        sink: Sink,
        persistent_keepalive_s: Option<u16>,
    ) -> io::Result<(Arc<Self>, JoinQueue)> {
        let local_addr = socket.local_addr()?;
        let socket = match sink {
            Sink::Tun(_) => WgSocket::Plain(socket),
            // Needs a tokio runtime (Mesh::start is async).
            // SAFETY: the AsyncFd owns the UdpSocket, whose fd stays open and unchanged
            // until the AsyncFd is dropped (only `stop` drops it, as a whole).
            Sink::Userspace(_) => WgSocket::Async(
                unsafe { AsyncFd::register_with_interest(socket, tokio::io::Interest::READABLE) }
                    .map_err(|e| io::Error::other(e.to_string()))?,
            ),
        };
        let own_public = boringtun::x25519::PublicKey::from(identity.public_key().0);
        let (join_tx, join_rx) = tokio::sync::mpsc::channel(JOIN_QUEUE_MAX);
        let engine = Arc::new(Self {
            rate_limiter: Arc::new(RateLimiter::new(&own_public, HANDSHAKE_RATE_LIMIT)),
            identity,
            own_public,
            mesh_addr,
            socket: RwLock::new(Some(socket)),
            local_addr,
            peers: RwLock::new(Peers::default()),
            sink,
            join_tx,
            counters: Counters::default(),
            stop: AtomicBool::new(false),
            persistent_keepalive_s,
        });
        Ok((engine, join_rx))
    }

    /// Starts the driver threads.
    pub(crate) fn spawn_threads(self: &Arc<Self>) -> io::Result<Vec<std::thread::JoinHandle<()>>> {
        let mut threads = Vec::new();
        if matches!(self.sink, Sink::Tun(_)) {
            // Userspace mode reads the socket from quinn's endpoint task instead
            // (`poll_read_socket`): one thread hand-off less per packet.
            let engine = Arc::clone(self);
            threads.push(
                std::thread::Builder::new()
                    .name("mesh-udp-rx".into())
                    .spawn(move || engine.udp_rx_loop())?,
            );
        }
        let engine = Arc::clone(self);
        threads.push(
            std::thread::Builder::new()
                .name("mesh-timers".into())
                .spawn(move || engine.timer_loop())?,
        );
        if let Sink::Tun(tun) = &self.sink {
            let engine = Arc::clone(self);
            let tun = Arc::clone(tun);
            threads.push(
                std::thread::Builder::new()
                    .name("mesh-tun-rx".into())
                    .spawn(move || engine.tun_rx_loop(&tun))?,
            );
        }
        Ok(threads)
    }

    /// Asks the threads to stop and closes the UDP socket (frees the port at once).
    pub(crate) fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.socket.write().take();
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    pub(crate) fn public_key(&self) -> NodePublicKey {
        self.identity.public_key()
    }

    pub(crate) fn private_base64(&self) -> String {
        self.identity.private_base64()
    }

    pub(crate) fn stats(&self) -> MeshStats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        MeshStats {
            datagrams_received: get(&c.datagrams_received),
            datagrams_malformed: get(&c.datagrams_malformed),
            datagrams_unknown_peer: get(&c.datagrams_unknown_peer),
            datagrams_rejected: get(&c.datagrams_rejected),
            packets_not_allowed: get(&c.packets_not_allowed),
            packets_delivered: get(&c.packets_delivered),
            packets_no_route: get(&c.packets_no_route),
            join_packets_received: get(&c.join_packets_received),
        }
    }

    /// The peer owning a mesh address, if any.
    pub(crate) fn peer_by_addr(&self, addr: Ipv4Addr) -> Option<Arc<LivePeer>> {
        self.peers.read().by_addr.get(&addr).cloned()
    }

    /// Makes the peer set equal to `specs`; returns what changed.
    pub(crate) fn set_peers(&self, specs: &[PeerSpec]) -> Result<Vec<PeerChange>, PeerTableError> {
        let mut new_peers = Vec::new();
        let changes = {
            let mut peers = self.peers.write();
            let changes = peers
                .table
                .apply(self.public_key(), self.mesh_addr, specs)?;
            for change in &changes {
                match change {
                    PeerChange::Added(entry) => {
                        let tunn = Tunn::new(
                            self.identity.secret().clone(),
                            entry.spec.public_key.to_x25519(),
                            None,
                            self.persistent_keepalive_s,
                            entry.index,
                            Some(Arc::clone(&self.rate_limiter)),
                        );
                        let live = Arc::new(LivePeer {
                            public_key: entry.spec.public_key,
                            mesh_addr: entry.spec.mesh_addr,
                            tunn: Mutex::new(tunn),
                            endpoint: Mutex::new(entry.spec.endpoint),
                            forced_handshake_at: Mutex::new(None),
                        });
                        peers.by_index.insert(entry.index, Arc::clone(&live));
                        peers
                            .by_addr
                            .insert(entry.spec.mesh_addr, Arc::clone(&live));
                        peers
                            .by_key
                            .insert(entry.spec.public_key, Arc::clone(&live));
                        new_peers.push(live);
                    }
                    PeerChange::Removed(entry) => {
                        peers.by_index.remove(&entry.index);
                        peers.by_addr.remove(&entry.spec.mesh_addr);
                        peers.by_key.remove(&entry.spec.public_key);
                    }
                    PeerChange::EndpointChanged {
                        public_key,
                        endpoint,
                        ..
                    } => {
                        if let Some(live) = peers.by_key.get(public_key) {
                            *live.endpoint.lock() = *endpoint;
                        }
                    }
                }
                tracing::info!(change = ?change, "mesh peer change");
            }
            changes
        };
        // Handshake with new peers right away: after a restart this replaces the sessions the
        // others still hold for our previous incarnation, instead of waiting for their timers.
        for live in new_peers {
            self.initiate_handshake(&live, false);
        }
        Ok(changes)
    }

    /// Starts a new WireGuard handshake with the peer at `addr` now, even while one is in
    /// progress or a session exists; false if the peer is unknown or one was forced less than
    /// [`FORCED_HANDSHAKE_INTERVAL_MIN`] ago. The transport calls it when the peer stayed
    /// silent or a dial got no answer: one side may hold a session the other has lost (a peer
    /// restarted and the response to its handshake was lost, e.g. in a partition), and
    /// WireGuard's own timers would retry only after REKEY_TIMEOUT (5 s), or, on the side
    /// still holding the old session, after KEEPALIVE + REKEY_TIMEOUT (15 s). A handshake
    /// replaces a working session without interrupting it, so forcing one is always safe.
    pub(crate) fn force_handshake(&self, addr: Ipv4Addr) -> bool {
        let Some(live) = self.peer_by_addr(addr) else {
            return false;
        };
        let now = clock::monotonic();
        {
            let mut forced_at = live.forced_handshake_at.lock();
            if forced_at
                .is_some_and(|at| now.saturating_duration_since(at) < FORCED_HANDSHAKE_INTERVAL_MIN)
            {
                return false;
            }
            *forced_at = Some(now);
        }
        tracing::debug!(peer = %addr, "peer silent: forcing a new WireGuard handshake");
        self.initiate_handshake(&live, true)
    }

    /// Sends a handshake initiation to `live`'s endpoint, if it has one; `force` starts one
    /// even while boringtun considers a handshake in progress. Whether one was sent.
    fn initiate_handshake(&self, live: &LivePeer, force: bool) -> bool {
        let Some(endpoint) = *live.endpoint.lock() else {
            return false;
        };
        SEND_BUF.with(|buf| {
            let mut buf = buf.borrow_mut();
            let mut tunn = live.tunn.lock();
            if let TunnResult::WriteToNetwork(packet) =
                tunn.format_handshake_initiation(&mut buf, force)
            {
                self.send_raw(packet, endpoint);
            }
        });
        true
    }

    /// Snapshot of the peers for UAPI.
    pub(crate) fn peer_statuses(&self) -> Vec<PeerStatus> {
        let peers: Vec<Arc<LivePeer>> = self.peers.read().by_key.values().cloned().collect();
        peers
            .iter()
            .map(|p| {
                let (since, tx_bytes, rx_bytes, _, _) = p.tunn.lock().stats();
                PeerStatus {
                    public_key: p.public_key,
                    mesh_addr: p.mesh_addr,
                    endpoint: *p.endpoint.lock(),
                    since_last_handshake: since,
                    tx_bytes,
                    rx_bytes,
                    persistent_keepalive_s: self.persistent_keepalive_s,
                }
            })
            .collect()
    }

    /// Sends a UDP datagram on the WireGuard socket. On a full send buffer it waits briefly
    /// once, then drops (as a full NIC queue would): every protocol above retransmits.
    pub(crate) fn send_raw(&self, datagram: &[u8], to: SocketAddr) {
        // Recursive: the userspace receive path sends replies while holding a read guard of
        // its own, and a queued writer (stop) must not deadlock it.
        let guard = self.socket.read_recursive();
        let Some(socket) = guard.as_ref().map(WgSocket::get) else {
            return;
        };
        match socket.send_to(datagram, to) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if wait_fd(socket.as_fd(), PollFlags::POLLOUT, 5) {
                    let _ = socket.send_to(datagram, to);
                }
            }
            Err(e) => tracing::debug!(error = %e, to = %to, "mesh send failed"),
        }
    }

    /// Encrypts an IPv4 packet to the peer owning `dst` and sends it.
    pub(crate) fn send_ip(&self, packet: &[u8], dst: Ipv4Addr) {
        let Some(peer) = self.peer_by_addr(dst) else {
            bump(&self.counters.packets_no_route);
            return;
        };
        if packet.len() + 64 > BUF_BYTES {
            return;
        }
        SEND_BUF.with(|buf| {
            let mut buf = buf.borrow_mut();
            let result = peer.tunn.lock().encapsulate(packet, &mut buf);
            if let TunnResult::WriteToNetwork(datagram) = result {
                if let Some(endpoint) = *peer.endpoint.lock() {
                    self.send_raw(datagram, endpoint);
                }
            }
        });
    }

    /// Userspace mode: reads and handles datagrams from the socket on the caller's task
    /// (quinn's endpoint driver). `Ready(())` once at least one datagram was handled (the
    /// inbox may have new QUIC datagrams), `Pending` when none is waiting (the waker is
    /// registered with tokio's reactor). After `stop` it stays pending.
    pub(crate) fn poll_read_socket(&self, cx: &mut Context<'_>) -> Poll<()> {
        RX_BUFS.with(|bufs| {
            let mut bufs = bufs.borrow_mut();
            let RxBufs {
                datagram,
                out,
                reply,
            } = &mut *bufs;
            let mut handled = 0usize;
            while handled < RX_BATCH_MAX {
                let received = {
                    let guard = self.socket.read();
                    let Some(WgSocket::Async(fd)) = guard.as_ref() else {
                        return Poll::Pending;
                    };
                    let mut ready = match fd.poll_read_ready(cx) {
                        Poll::Ready(Ok(ready)) => ready,
                        Poll::Ready(Err(_)) | Poll::Pending => break,
                    };
                    match ready.try_io(|socket| socket.get_ref().recv_from(datagram)) {
                        Ok(Ok(received)) => Some(received),
                        // E.g. ECONNREFUSED after a send to a closed port: not fatal.
                        Ok(Err(_)) => None,
                        // Readiness cleared; the next poll_read_ready registers the waker.
                        Err(_would_block) => continue,
                    }
                };
                handled += 1;
                if let Some((len, from)) = received {
                    self.handle_datagram(&datagram[..len], from, out, reply);
                }
            }
            if handled > 0 {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
    }

    fn udp_rx_loop(self: Arc<Self>) {
        use std::os::fd::AsRawFd;
        // Room for a whole coalesced burst (64 segments of up to ~1.5 kB, or one 64 kB one).
        let mut datagram = vec![0u8; BUF_BYTES + udp_gso::GSO_BYTES_MAX];
        let mut out = vec![0u8; BUF_BYTES];
        let mut reply = Vec::with_capacity(2048);
        if let Some(socket) = self.socket.read().as_ref().map(WgSocket::get) {
            udp_gso::enable_gro(socket.as_raw_fd());
        }
        while !self.stopped() {
            let received = {
                let guard = self.socket.read();
                let Some(socket) = guard.as_ref().map(WgSocket::get) else {
                    break;
                };
                match udp_gso::recv_segments(socket.as_raw_fd(), &mut datagram) {
                    Ok(r) => Some(r),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        wait_fd(socket.as_fd(), PollFlags::POLLIN, STOP_POLL_MS);
                        None
                    }
                    Err(e) => {
                        // E.g. ECONNREFUSED from an earlier send to a closed port: not fatal.
                        tracing::trace!(error = %e, "mesh recv error");
                        None
                    }
                }
            };
            if let Some((len, from, segment)) = received {
                let segment = segment.unwrap_or(len).max(1);
                for one in datagram[..len].chunks(segment) {
                    self.handle_datagram(one, from, &mut out, &mut reply);
                }
            }
        }
        tracing::debug!("mesh-udp-rx stopped");
    }

    /// Handles one datagram from the network. Never panics on any input.
    pub(crate) fn handle_datagram(
        &self,
        datagram: &[u8],
        from: SocketAddr,
        out: &mut [u8],
        reply: &mut Vec<u8>,
    ) {
        bump(&self.counters.datagrams_received);
        if join_wire::is_join_packet(datagram) {
            bump(&self.counters.join_packets_received);
            if datagram[3] == join_wire::KIND_REQUEST
                && datagram.len() <= join_wire::JOIN_PACKET_BYTES_MAX
            {
                // Full queue: drop; the joiner retries.
                let _ = self.join_tx.try_send((datagram.to_vec(), from));
            }
            return;
        }
        let peer = match Tunn::parse_incoming_packet(datagram) {
            Err(_) => {
                bump(&self.counters.datagrams_malformed);
                return;
            }
            Ok(Packet::HandshakeInit(init)) => {
                match parse_handshake_anon(self.identity.secret(), &self.own_public, &init) {
                    Ok(half) => self
                        .peers
                        .read()
                        .by_key
                        .get(&NodePublicKey(half.peer_static_public))
                        .cloned(),
                    Err(_) => None,
                }
            }
            Ok(Packet::HandshakeResponse(p)) => self.peer_by_index(p.receiver_idx),
            Ok(Packet::PacketCookieReply(p)) => self.peer_by_index(p.receiver_idx),
            Ok(Packet::PacketData(p)) => self.peer_by_index(p.receiver_idx),
        };
        let Some(peer) = peer else {
            bump(&self.counters.datagrams_unknown_peer);
            return;
        };
        let mut tunn = peer.tunn.lock();
        match tunn.decapsulate(Some(from.ip()), datagram, out) {
            TunnResult::WriteToNetwork(packet) => {
                self.send_raw(packet, from);
                // Flush packets queued while the handshake was in progress.
                while let TunnResult::WriteToNetwork(packet) = tunn.decapsulate(None, &[], out) {
                    self.send_raw(packet, from);
                }
                drop(tunn);
                self.roam(&peer, from);
            }
            TunnResult::WriteToTunnelV4(packet, src) => {
                drop(tunn);
                self.roam(&peer, from);
                if src != peer.mesh_addr {
                    bump(&self.counters.packets_not_allowed);
                    return;
                }
                self.deliver(packet, reply);
            }
            TunnResult::WriteToTunnelV6(..) => {
                bump(&self.counters.packets_not_allowed);
            }
            TunnResult::Done => {
                drop(tunn);
                self.roam(&peer, from);
            }
            TunnResult::Err(e) => {
                tracing::trace!(error = ?e, from = %from, "wireguard rejected a datagram");
                bump(&self.counters.datagrams_rejected);
            }
        }
    }

    fn peer_by_index(&self, receiver_idx: u32) -> Option<Arc<LivePeer>> {
        self.peers
            .read()
            .by_index
            .get(&(receiver_idx >> 8))
            .cloned()
    }

    /// WireGuard roaming: an authenticated packet tells us where the peer is now.
    fn roam(&self, peer: &LivePeer, from: SocketAddr) {
        let mut endpoint = peer.endpoint.lock();
        if *endpoint != Some(from) {
            tracing::debug!(peer = %peer.public_key, endpoint = %from, "peer endpoint learned");
            *endpoint = Some(from);
        }
    }

    fn deliver(&self, packet: &[u8], reply: &mut Vec<u8>) {
        match &self.sink {
            Sink::Tun(tun) => {
                tun.write4(packet);
                bump(&self.counters.packets_delivered);
            }
            Sink::Userspace(inbox) => match ip_packet::parse_ipv4(packet) {
                Ok(Ipv4Packet::Udp { src, dst, payload })
                    if *dst.ip() == self.mesh_addr && dst.port() == inbox.quic_port =>
                {
                    if inbox.push(src, Bytes::copy_from_slice(payload)) {
                        bump(&self.counters.packets_delivered);
                    }
                }
                Ok(Ipv4Packet::IcmpEchoRequest { src, dst, icmp }) if dst == self.mesh_addr => {
                    ip_packet::build_icmp_echo_reply(dst, src, icmp, reply);
                    bump(&self.counters.packets_delivered);
                    self.send_ip(reply, src);
                }
                _ => bump(&self.counters.packets_not_allowed),
            },
        }
    }

    fn timer_loop(self: Arc<Self>) {
        let mut buf = vec![0u8; BUF_BYTES];
        let mut ticks: u64 = 0;
        while !self.stopped() {
            std::thread::sleep(Duration::from_millis(TIMER_TICK_MS));
            ticks += 1;
            if ticks.is_multiple_of(1000 / TIMER_TICK_MS) {
                self.rate_limiter.reset_count();
            }
            let peers: Vec<Arc<LivePeer>> = self.peers.read().by_key.values().cloned().collect();
            for peer in peers {
                let mut tunn = peer.tunn.lock();
                if let TunnResult::WriteToNetwork(packet) = tunn.update_timers(&mut buf) {
                    drop(tunn);
                    if let Some(endpoint) = *peer.endpoint.lock() {
                        self.send_raw(packet, endpoint);
                    }
                }
            }
        }
        tracing::debug!("mesh-timers stopped");
    }

    fn tun_rx_loop(self: Arc<Self>, tun: &TunSocket) {
        let mut packet_buf = vec![0u8; BUF_BYTES];
        let mut batch = GsoBatch::new();
        // SAFETY: the TunSocket outlives this loop (we hold an Arc to it in the caller).
        let fd =
            unsafe { std::os::fd::BorrowedFd::borrow_raw(std::os::fd::AsRawFd::as_raw_fd(tun)) };
        while !self.stopped() {
            match tun.read(&mut packet_buf) {
                Ok(packet) => {
                    if let Some(IpAddr::V4(dst)) = Tunn::dst_address(packet) {
                        let len = packet.len();
                        self.queue_for_batch(&packet_buf[..len], dst, &mut batch);
                    }
                }
                Err(boringtun::device::Error::IfaceRead(e))
                    if e.kind() == io::ErrorKind::WouldBlock =>
                {
                    // The burst is over: send what was gathered, then sleep.
                    self.flush_batch(&mut batch);
                    wait_fd(fd, PollFlags::POLLIN, STOP_POLL_MS);
                }
                Err(e) => {
                    // E.g. the interface was deleted under us: do not spin.
                    self.flush_batch(&mut batch);
                    tracing::debug!(error = %e, "tun read error");
                    std::thread::sleep(Duration::from_millis(u64::from(STOP_POLL_MS)));
                }
            }
        }
        tracing::debug!("mesh-tun-rx stopped");
    }

    /// Encrypts a packet read from the TUN device into the batch; equal-sized datagrams to
    /// one endpoint accumulate into one GSO send.
    fn queue_for_batch(&self, packet: &[u8], dst: Ipv4Addr, batch: &mut GsoBatch) {
        let Some(peer) = self.peer_by_addr(dst) else {
            bump(&self.counters.packets_no_route);
            return;
        };
        if packet.len() + 64 > BUF_BYTES {
            return;
        }
        if batch.used + packet.len() + 256 > batch.buf.len() {
            self.flush_batch(batch);
        }
        let start = batch.used;
        let len = match peer
            .tunn
            .lock()
            .encapsulate(packet, &mut batch.buf[start..])
        {
            TunnResult::WriteToNetwork(datagram) => datagram.len(),
            _ => return,
        };
        let Some(endpoint) = *peer.endpoint.lock() else {
            return;
        };
        let joins = batch.count > 0
            && batch.endpoint == Some(endpoint)
            && batch.segment_bytes == len
            && batch.count < udp_gso::GSO_SEGMENTS_MAX
            && batch.used + len - batch.start <= udp_gso::GSO_BYTES_MAX;
        if joins {
            batch.used += len;
            batch.count += 1;
            return;
        }
        // Send the previous group; this datagram starts a new one where it already lies.
        self.send_group(batch);
        batch.start = start;
        batch.used = start + len;
        batch.count = 1;
        batch.segment_bytes = len;
        batch.endpoint = Some(endpoint);
    }

    fn flush_batch(&self, batch: &mut GsoBatch) {
        self.send_group(batch);
        batch.start = 0;
        batch.used = 0;
        batch.count = 0;
        batch.endpoint = None;
    }

    fn send_group(&self, batch: &mut GsoBatch) {
        let Some(endpoint) = batch.endpoint else {
            return;
        };
        if batch.count == 0 {
            return;
        }
        let group = &batch.buf[batch.start..batch.used];
        if batch.count > 1 && batch.gso_enabled {
            match self.send_gso(group, batch.segment_bytes, endpoint) {
                Ok(()) => return,
                Err(e) => {
                    // Old kernel or a device without UDP GSO: send one by one from now on.
                    tracing::info!(error = %e, "UDP GSO unavailable, sending datagrams one by one");
                    batch.gso_enabled = false;
                }
            }
        }
        for datagram in group.chunks(batch.segment_bytes) {
            self.send_raw(datagram, endpoint);
        }
    }

    fn send_gso(&self, group: &[u8], segment_bytes: usize, to: SocketAddr) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let guard = self.socket.read_recursive();
        let Some(socket) = guard.as_ref().map(WgSocket::get) else {
            return Ok(());
        };
        let to = match (to, self.local_addr) {
            // A dual-stack socket needs IPv4 destinations in their IPv6-mapped form.
            (SocketAddr::V4(v4), SocketAddr::V6(_)) => {
                SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port())
            }
            (to, _) => to,
        };
        let segment = u16::try_from(segment_bytes).map_err(io::Error::other)?;
        match udp_gso::send_segments(socket.as_raw_fd(), group, segment, to) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if wait_fd(socket.as_fd(), PollFlags::POLLOUT, 5) {
                    let _ = udp_gso::send_segments(socket.as_raw_fd(), group, segment, to);
                }
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}

/// Encrypted datagrams gathered from one TUN burst (see `queue_for_batch`).
struct GsoBatch {
    buf: Vec<u8>,
    /// Start of the current group of equal-sized datagrams to one endpoint.
    start: usize,
    /// End of the bytes written.
    used: usize,
    count: usize,
    segment_bytes: usize,
    endpoint: Option<SocketAddr>,
    gso_enabled: bool,
}

impl GsoBatch {
    fn new() -> Self {
        Self {
            buf: vec![0u8; 2 * udp_gso::GSO_BYTES_MAX + BUF_BYTES],
            start: 0,
            used: 0,
            count: 0,
            segment_bytes: 0,
            endpoint: None,
            gso_enabled: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn engine_with_one_peer() -> Arc<Engine> {
        let socket = bind_udp(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
        let inbox = Arc::new(UserspaceInbox::new(7946));
        let (engine, _join_rx) = Engine::new(
            Identity::from_secret_bytes([1; 32]),
            Ipv4Addr::new(10, 77, 0, 1),
            socket,
            Sink::Userspace(inbox),
            None,
        )
        .unwrap();
        let peer = Identity::from_secret_bytes([2; 32]);
        engine
            .set_peers(&[PeerSpec {
                public_key: peer.public_key(),
                endpoint: None,
                mesh_addr: Ipv4Addr::new(10, 77, 0, 2),
            }])
            .unwrap();
        engine
    }

    proptest! {
        /// Any datagram, including ones that look like each WireGuard message type or a join
        /// packet, is counted and dropped without a panic.
        #[test]
        fn random_datagrams_never_panic_the_engine(
            kind in 0u8..6,
            receiver in any::<u32>(),
            body in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_io().build().unwrap();
            let _context = runtime.enter();
            let engine = engine_with_one_peer();
            let mut datagram = match kind {
                0 => vec![],
                1..=4 => vec![kind, 0, 0, 0],
                _ => b"SJ\x01\x01".to_vec(),
            };
            // Aim data-like packets at the configured peer's index sometimes.
            datagram.extend_from_slice(&(receiver & 0x1ff).to_le_bytes());
            datagram.extend_from_slice(&body);
            let mut out = vec![0u8; BUF_BYTES];
            let mut reply = Vec::new();
            engine.handle_datagram(&datagram, SocketAddr::from(([127, 0, 0, 1], 9)), &mut out, &mut reply);
            // Exact WireGuard sizes reach the tunnel: try those too.
            for len in [148usize, 92, 64, 32] {
                let mut sized = datagram.clone();
                sized.resize(len, 0);
                engine.handle_datagram(&sized, SocketAddr::from(([127, 0, 0, 1], 9)), &mut out, &mut reply);
            }
            let stats = engine.stats();
            prop_assert_eq!(stats.packets_delivered, 0);
            prop_assert_eq!(stats.datagrams_received, 5);
            engine.stop();
        }
    }
}
