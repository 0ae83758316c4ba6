//! QUIC over the mesh: typed request/response RPC and long-lived streams between members.
//!
//! Every QUIC connection runs between two mesh addresses, inside WireGuard, which already
//! authenticates the peer: a packet reaches quinn only if it decrypted under a configured
//! peer's key and its source is that peer's mesh address. TLS therefore uses per-start
//! self-signed certificates and the client checks only the handshake signature (not a CA
//! chain); the server accepts connections only from current members' mesh addresses.
//!
//! Wire: one bidirectional QUIC stream per request or stream. Frames are a 4-byte big-endian
//! length and a payload (see [`crate::codec`]). The first frame's first byte says what the
//! stream is: `0` request (one request frame, one response frame), `1` stream (an opening
//! frame, then frames both ways until either side finishes).
//!
//! Connections: one cached connection per peer, dialled on first use. A peer killed and
//! restarted on its identity must not leave us talking to its previous process:
//! - its new process answers the old connection's packets with a stateless reset (the reset
//!   key is derived from the identity, see `endpoint_config`), which closes the connection
//!   at once: the request on it fails and the next one dials the new process;
//! - failing that, a connection whose peer sends nothing at all for
//!   [`TransportLimits::peer_silence_ms_max`] while a request waits is closed in the same way
//!   (see `ConnectionLiveness`);
//! - a request that went out is never resent by the transport (the peer may have handled it:
//!   a forwarded write or run must not happen twice); only the caller, who knows whether it
//!   is idempotent, retries;
//! - a dial runs on its own task, shared by every caller meanwhile (callers giving up do not
//!   cancel it), and is replaced after [`TransportLimits::dial_attempt_ms`] so that a dial
//!   begun while the peer was down does not make callers wait for its backed-off
//!   retransmissions.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt, Shared};
use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::clock;
use crate::codec::{self, read_frame, write_frame};
use crate::engine::Engine;
use crate::error::{MeshError, TransportError};
use crate::identity::{Identity, NodePublicKey};
use crate::liveness::ConnectionLiveness;

/// ALPN of the mesh protocol.
const ALPN: &[u8] = b"shoal-mesh/1";
/// TLS server name used by all nodes (the tunnel authenticates, not the name).
const SERVER_NAME: &str = "shoal-mesh";
const KIND_REQUEST: u8 = 0;
const KIND_STREAM: u8 = 1;
/// Application close code: the peer stayed silent with a request outstanding (see
/// [`TransportLimits::peer_silence_ms_max`]).
const CLOSE_PEER_SILENT: u32 = 1;
/// Application close code: the peer was removed from the mesh.
const CLOSE_PEER_REMOVED: u32 = 2;
/// Application close code: another dial's connection to the peer was installed first.
const CLOSE_SUPERSEDED: u32 = 3;
/// Round trips a live peer gets to acknowledge a request before its silence counts (it
/// acknowledges within one round trip plus its 25 ms acknowledgement delay).
const SILENCE_RTTS_MIN: u32 = 4;
/// A second look before a silent connection is closed, long enough for this process's own
/// endpoint task to catch up on datagrams that arrived while it was not scheduled (a loaded
/// machine), so that a stall here is not taken for the peer's silence.
const SILENCE_CONFIRM_MS: u64 = 25;
/// Labels of the keys derived from the node's identity (HKDF-SHA-256, see [`endpoint_config`]).
const KDF_SALT: &[u8] = b"shoal-mesh quic endpoint keys";
const KDF_INFO_RESET_KEY: &[u8] = b"stateless reset key v1";
/// Length of the connection IDs this node issues (quinn's default).
const CID_BYTES: usize = 8;
/// Concurrent requests + streams one peer may have open towards us.
pub const STREAMS_PER_CONNECTION_MAX: u32 = 1024;

/// Who sent a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerInfo {
    /// The peer's mesh address.
    pub mesh_addr: Ipv4Addr,
    /// The peer's WireGuard public key.
    pub public_key: NodePublicKey,
}

/// The sending half of a mesh stream.
pub struct StreamSender {
    send: quinn::SendStream,
}

impl StreamSender {
    /// Sends one frame (at most [`codec::FRAME_BYTES_MAX`] bytes).
    pub async fn send(&mut self, frame: &[u8]) -> Result<(), TransportError> {
        write_frame(&mut self.send, frame).await
    }

    /// Sends one value encoded with the mesh codec.
    pub async fn send_typed<T: Serialize>(&mut self, value: &T) -> Result<(), TransportError> {
        let bytes = codec::encode(value)?;
        self.send(&bytes).await
    }

    /// Ends the stream cleanly; the receiver sees `Ok(None)` after the last frame.
    pub fn finish(mut self) {
        let _ = self.send.finish();
    }
}

/// The receiving half of a mesh stream.
pub struct StreamReceiver {
    recv: quinn::RecvStream,
}

impl StreamReceiver {
    /// The next frame; `Ok(None)` when the sender finished.
    pub async fn recv(&mut self) -> Result<Option<Bytes>, TransportError> {
        read_frame(&mut self.recv).await
    }

    /// The next frame decoded with the mesh codec.
    pub async fn recv_typed<T: DeserializeOwned>(&mut self) -> Result<Option<T>, TransportError> {
        match self.recv().await? {
            Some(bytes) => Ok(Some(codec::decode(&bytes)?)),
            None => Ok(None),
        }
    }
}

/// What the node registers to serve requests and streams from peers.
#[async_trait::async_trait]
pub trait RpcHandler: Send + Sync + 'static {
    /// Answers one request.
    async fn handle(&self, from: PeerInfo, request: Bytes) -> Bytes;

    /// Serves one long-lived stream (log following, snapshot transfer). The default refuses
    /// by dropping both halves.
    async fn handle_stream(
        &self,
        from: PeerInfo,
        open: Bytes,
        sender: StreamSender,
        receiver: StreamReceiver,
    ) {
        let _ = (from, open, sender, receiver);
    }
}

/// Timeouts of the transport.
#[derive(Clone, Copy, Debug)]
pub struct TransportLimits {
    /// Connection establishment (one dial, shared by every caller waiting for it).
    pub connect_timeout_ms: u64,
    /// A whole request (send, wait, receive).
    pub request_timeout_ms: u64,
    /// A connection with no traffic (keep-alives are sent at a third of it) is closed.
    pub idle_timeout_ms: u64,
    /// A connection on which a request went out and then nothing at all arrived from the
    /// peer (not even an acknowledgement) for this long, or four round trips if that is
    /// longer, is closed (the request fails; the next one dials a new connection): the
    /// peer's process is gone. Usually a restarted peer's stateless reset closes the
    /// connection sooner; this is the fallback.
    pub peer_silence_ms_max: u64,
    /// A dial not through after this long is joined no more: the next caller starts a new
    /// one, whose first packet goes out at once, where the old dial's retransmissions back off
    /// exponentially (a peer that was down when the dial began may be back). Whichever dial
    /// succeeds first is used.
    pub dial_attempt_ms: u64,
}

impl Default for TransportLimits {
    fn default() -> Self {
        Self {
            connect_timeout_ms: 3_000,
            request_timeout_ms: 10_000,
            idle_timeout_ms: 10_000,
            peer_silence_ms_max: 250,
            dial_attempt_ms: 500,
        }
    }
}

/// Counters of what the transport did, for metrics and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TransportStats {
    /// Connections dialled (each shared by every caller that waited for it).
    pub dials_started: u64,
    /// Connections closed because the peer stayed silent with a request outstanding.
    pub connections_closed_silent: u64,
}

/// A cached connection and the silence window of its requests.
struct Live {
    connection: quinn::Connection,
    liveness: Mutex<ConnectionLiveness>,
}

impl Live {
    fn rx_datagrams(&self) -> u64 {
        self.connection.stats().udp_rx.datagrams
    }
}

#[derive(Clone, Debug)]
enum DialFailure {
    Timeout { timeout_ms: u64 },
    Failed(String),
}

impl DialFailure {
    fn into_error(self, peer: Ipv4Addr) -> TransportError {
        let addr = IpAddr::V4(peer);
        match self {
            Self::Timeout { timeout_ms } => TransportError::ConnectTimeout { addr, timeout_ms },
            Self::Failed(message) => TransportError::Connection { addr, message },
        }
    }
}

type Dial = Shared<BoxFuture<'static, Result<Arc<Live>, DialFailure>>>;

/// What the transport holds for one peer.
enum Slot {
    Connected(Arc<Live>),
    /// A dial in flight, run by its own task so that callers giving up (a Raft heartbeat's
    /// 50 ms deadline) do not cancel it; every caller meanwhile awaits this one.
    Dialing {
        dial_id: u64,
        started_at: Instant,
        dial: Dial,
    },
}

struct Inner {
    endpoint: quinn::Endpoint,
    engine: Arc<Engine>,
    quic_port: u16,
    limits: TransportLimits,
    slots: Mutex<HashMap<Ipv4Addr, Slot>>,
    next_dial_id: AtomicU64,
    dials_started: AtomicU64,
    connections_closed_silent: AtomicU64,
}

/// The client side of the transport (cheap to clone). See the module doc.
#[derive(Clone)]
pub struct Transport {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct MeshCertVerifier {
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for MeshCertVerifier {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        // The WireGuard tunnel authenticated the peer (see the module doc).
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn setup_error(e: impl std::fmt::Display) -> MeshError {
    MeshError::TransportSetup(e.to_string())
}

fn derive_key(identity: &Identity, info: &'static [u8]) -> Result<[u8; 32], MeshError> {
    let prk = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, KDF_SALT)
        .extract(identity.secret().as_bytes());
    let info = [info];
    let okm = prk
        .expand(&info, ring::hkdf::HKDF_SHA256)
        .map_err(|_| setup_error("key derivation"))?;
    let mut key = [0u8; 32];
    okm.fill(&mut key)
        .map_err(|_| setup_error("key derivation"))?;
    Ok(key)
}

/// Random 8-byte connection IDs that every process of a node accepts as its own.
///
/// quinn's default generator signs its IDs with a key that is random per process and silently
/// drops short-header packets whose ID fails the check, so a restarted process would never
/// answer its previous process's connections. Checking IDs buys nothing here: every packet
/// reaching quinn was authenticated by WireGuard as coming from a member.
struct MeshConnectionIdGenerator;

impl quinn::ConnectionIdGenerator for MeshConnectionIdGenerator {
    fn generate_cid(&mut self) -> quinn::ConnectionId {
        quinn::ConnectionId::new(&crate::random::bytes::<CID_BYTES>())
    }

    fn cid_len(&self) -> usize {
        CID_BYTES
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}

/// The QUIC endpoint configuration of a node: its stateless-reset key is derived from the
/// node's identity (HKDF-SHA-256 of the private key, never the key itself), and its
/// connection IDs are accepted by every process of the node (see
/// [`MeshConnectionIdGenerator`]).
///
/// The reset key must be the same in every process of the node: when a node is killed and
/// restarts on its identity, peers still hold connections to its previous process and keep
/// sending on them. The new process answers those packets with a stateless reset carrying the
/// token the old process announced for the connection ID (a MAC of it under the reset key),
/// so the peer's old connection dies at once and its next request dials the new process,
/// instead of its requests vanishing until the idle timeout.
pub(crate) fn endpoint_config(identity: &Identity) -> Result<quinn::EndpointConfig, MeshError> {
    let reset_key = derive_key(identity, KDF_INFO_RESET_KEY)?;
    let mut config = quinn::EndpointConfig::new(Arc::new(ring::hmac::Key::new(
        ring::hmac::HMAC_SHA256,
        &reset_key,
    )));
    config.cid_generator(|| Box::new(MeshConnectionIdGenerator));
    Ok(config)
}

/// Server and client QUIC configurations.
pub(crate) fn quic_configs(
    limits: TransportLimits,
    path_mtu_discovery: bool,
) -> Result<(quinn::ServerConfig, quinn::ClientConfig), MeshError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certified =
        rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_string()]).map_err(setup_error)?;
    let cert = certified.cert.der().clone();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(rustls::pki_types::PrivatePkcs8KeyDer::from(
        certified.key_pair.serialize_der(),
    ));
    let mut server_crypto = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(setup_error)?
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .map_err(setup_error)?;
    server_crypto.alpn_protocols = vec![ALPN.to_vec()];
    let mut client_crypto = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(setup_error)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(MeshCertVerifier { provider }))
        .with_no_client_auth();
    client_crypto.alpn_protocols = vec![ALPN.to_vec()];

    let mut transport = quinn::TransportConfig::default();
    let idle = quinn::IdleTimeout::try_from(Duration::from_millis(limits.idle_timeout_ms))
        .map_err(setup_error)?;
    transport.max_idle_timeout(Some(idle));
    transport.keep_alive_interval(Some(Duration::from_millis(limits.idle_timeout_ms / 3)));
    transport.max_concurrent_bidi_streams(STREAMS_PER_CONNECTION_MAX.into());
    transport.max_concurrent_uni_streams(0u32.into());
    if !path_mtu_discovery {
        // Userspace mode: 1200-byte QUIC packets always fit the tunnel on any path.
        transport.mtu_discovery_config(None);
    }
    let transport = Arc::new(transport);

    let mut server = quinn::ServerConfig::with_crypto(Arc::new(
        quinn::crypto::rustls::QuicServerConfig::try_from(server_crypto).map_err(setup_error)?,
    ));
    server.transport_config(Arc::clone(&transport));
    let mut client = quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(client_crypto).map_err(setup_error)?,
    ));
    client.transport_config(transport);
    Ok((server, client))
}

impl Transport {
    pub(crate) fn new(
        endpoint: quinn::Endpoint,
        engine: Arc<Engine>,
        quic_port: u16,
        limits: TransportLimits,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                endpoint,
                engine,
                quic_port,
                limits,
                slots: Mutex::new(HashMap::new()),
                next_dial_id: AtomicU64::new(0),
                dials_started: AtomicU64::new(0),
                connections_closed_silent: AtomicU64::new(0),
            }),
        }
    }

    /// Serves incoming connections with `handler` until the endpoint closes.
    pub(crate) fn spawn_server(&self, handler: Arc<dyn RpcHandler>) -> tokio::task::JoinHandle<()> {
        let endpoint = self.inner.endpoint.clone();
        let engine = Arc::clone(&self.inner.engine);
        let request_timeout = Duration::from_millis(self.inner.limits.request_timeout_ms);
        tokio::spawn(async move {
            while let Some(incoming) = endpoint.accept().await {
                let peer = match incoming.remote_address() {
                    SocketAddr::V4(addr) => engine.peer_by_addr(*addr.ip()),
                    SocketAddr::V6(_) => None,
                };
                let Some(peer) = peer else {
                    tracing::debug!(remote = %incoming.remote_address(), "refused connection from a non-member");
                    incoming.refuse();
                    continue;
                };
                let from = PeerInfo {
                    mesh_addr: peer.mesh_addr,
                    public_key: peer.public_key,
                };
                let handler = Arc::clone(&handler);
                tokio::spawn(async move {
                    let Ok(connection) = incoming.await else {
                        return;
                    };
                    while let Ok((send, recv)) = connection.accept_bi().await {
                        let handler = Arc::clone(&handler);
                        tokio::spawn(serve_stream(handler, from, send, recv, request_timeout));
                    }
                });
            }
        })
    }

    /// Mesh address of this node's transport.
    pub fn local_mesh_addr(&self) -> Ipv4Addr {
        self.inner.engine.mesh_addr
    }

    /// What the transport did so far.
    pub fn stats(&self) -> TransportStats {
        TransportStats {
            dials_started: self.inner.dials_started.load(Ordering::Relaxed),
            connections_closed_silent: self.inner.connections_closed_silent.load(Ordering::Relaxed),
        }
    }

    /// How long `live`'s peer may stay silent with a request outstanding.
    fn silence_bound(&self, live: &Live) -> Duration {
        Duration::from_millis(self.inner.limits.peer_silence_ms_max)
            .max(live.connection.rtt() * SILENCE_RTTS_MIN)
    }

    /// How long `live`'s peer has been silent with a request outstanding, if that is past
    /// the bound.
    fn silent_past_bound(&self, live: &Live) -> Option<Duration> {
        let now = clock::monotonic();
        // The common case without touching quinn's connection state: the silence cannot be
        // longer than its window, and the bound is never below the configured limit.
        let limit = Duration::from_millis(self.inner.limits.peer_silence_ms_max);
        if live.liveness.lock().window_age(now) < limit {
            return None;
        }
        let rx_datagrams = live.rx_datagrams();
        let silent = live.liveness.lock().silent_for(rx_datagrams, now);
        (silent >= self.silence_bound(live)).then_some(silent)
    }

    /// Closes `live` because its peer stayed silent for `silent` with a request outstanding.
    fn close_silent(&self, peer: Ipv4Addr, live: &Live, silent: Duration) {
        if live.connection.close_reason().is_some() {
            return;
        }
        tracing::info!(
            peer = %peer,
            silent_ms = silent.as_millis() as u64,
            "no packet from the peer with a request outstanding: closing the connection"
        );
        self.inner
            .connections_closed_silent
            .fetch_add(1, Ordering::Relaxed);
        live.connection
            .close(CLOSE_PEER_SILENT.into(), b"peer silent");
        // The tunnel may be what is stale (the peer restarted and lost the session we hold).
        self.inner.engine.force_handshake(peer);
    }

    /// The connection to `peer`: the cached one if it is open and its peer has not been
    /// silent too long (a second look after [`SILENCE_CONFIRM_MS`] closes it), else the one a
    /// dial (shared with every concurrent caller) brings. The flag says whether the
    /// connection is new (just dialled).
    async fn connection(&self, peer: Ipv4Addr) -> Result<(Arc<Live>, bool), TransportError> {
        if self.inner.engine.peer_by_addr(peer).is_none() {
            return Err(TransportError::UnknownPeer(IpAddr::V4(peer)));
        }
        let mut looked_twice = false;
        loop {
            let (suspect, dial) = {
                let mut slots = self.inner.slots.lock();
                match slots.get(&peer) {
                    Some(Slot::Connected(live)) if live.connection.close_reason().is_none() => {
                        let live = Arc::clone(live);
                        if looked_twice || self.silent_past_bound(&live).is_none() {
                            return Ok((live, false));
                        }
                        (Some(live), None)
                    }
                    Some(Slot::Dialing {
                        started_at, dial, ..
                    }) if clock::monotonic().saturating_duration_since(*started_at)
                        < Duration::from_millis(self.inner.limits.dial_attempt_ms) =>
                    {
                        (None, Some(dial.clone()))
                    }
                    stale => {
                        if matches!(stale, Some(Slot::Dialing { .. })) {
                            // A dial with no answer within `dial_attempt_ms`: the tunnel may
                            // be what is stale (see `Engine::force_handshake`).
                            self.inner.engine.force_handshake(peer);
                        }
                        (None, Some(self.start_dial(&mut slots, peer)))
                    }
                }
            };
            if let Some(dial) = dial {
                return match dial.await {
                    Ok(live) => Ok((live, true)),
                    Err(failure) => Err(failure.into_error(peer)),
                };
            }
            if let Some(live) = suspect {
                tokio::time::sleep(Duration::from_millis(SILENCE_CONFIRM_MS)).await;
                if let Some(silent) = self.silent_past_bound(&live) {
                    self.close_silent(peer, &live, silent);
                }
            }
            looked_twice = true;
        }
    }

    /// Starts a dial to `peer` on its own task and records it in `slots`. When the
    /// connection is up the task installs it, unless another dial's connection was installed
    /// first (then it closes its own and answers with that one) or the peer was removed
    /// meanwhile (then it closes its own).
    fn start_dial(&self, slots: &mut HashMap<Ipv4Addr, Slot>, peer: Ipv4Addr) -> Dial {
        let dial_id = self.inner.next_dial_id.fetch_add(1, Ordering::Relaxed);
        self.inner.dials_started.fetch_add(1, Ordering::Relaxed);
        let inner = Arc::clone(&self.inner);
        let connecting = self.inner.endpoint.connect(
            SocketAddr::new(IpAddr::V4(peer), self.inner.quic_port),
            SERVER_NAME,
        );
        let timeout_ms = self.inner.limits.connect_timeout_ms;
        let task = tokio::spawn(async move {
            let result = match connecting {
                Err(e) => Err(DialFailure::Failed(e.to_string())),
                Ok(connecting) => {
                    match tokio::time::timeout(Duration::from_millis(timeout_ms), connecting).await
                    {
                        Err(_) => Err(DialFailure::Timeout { timeout_ms }),
                        Ok(Err(e)) => Err(DialFailure::Failed(e.to_string())),
                        Ok(Ok(connection)) => Ok(Arc::new(Live {
                            connection,
                            liveness: Mutex::new(ConnectionLiveness::default()),
                        })),
                    }
                }
            };
            let mut slots = inner.slots.lock();
            match (result, slots.get(&peer)) {
                (Ok(live), Some(Slot::Connected(installed)))
                    if installed.connection.close_reason().is_none() =>
                {
                    // A later dial won the race.
                    live.connection
                        .close(CLOSE_SUPERSEDED.into(), b"superseded");
                    Ok(Arc::clone(installed))
                }
                (Ok(live), Some(_)) => {
                    slots.insert(peer, Slot::Connected(Arc::clone(&live)));
                    Ok(live)
                }
                (Ok(live), None) => {
                    live.connection
                        .close(CLOSE_PEER_REMOVED.into(), b"peer removed");
                    Err(DialFailure::Failed(
                        "the peer was removed while connecting".to_string(),
                    ))
                }
                (Err(failure), slot) => {
                    if matches!(slot, Some(Slot::Dialing { dial_id: id, .. }) if *id == dial_id) {
                        slots.remove(&peer);
                    }
                    tracing::debug!(peer = %peer, failure = ?failure, "dial failed");
                    Err(failure)
                }
            }
        });
        let dial: Dial = async move {
            task.await
                .unwrap_or_else(|e| Err(DialFailure::Failed(e.to_string())))
        }
        .boxed()
        .shared();
        slots.insert(
            peer,
            Slot::Dialing {
                dial_id,
                started_at: clock::monotonic(),
                dial: dial.clone(),
            },
        );
        dial
    }

    /// Drops `live` from the cache if it is still the connection to `peer`.
    fn forget(&self, peer: Ipv4Addr, live: &Live) {
        let mut slots = self.inner.slots.lock();
        if let Some(Slot::Connected(cached)) = slots.get(&peer) {
            if cached.connection.stable_id() == live.connection.stable_id() {
                slots.remove(&peer);
            }
        }
    }

    /// Closes and forgets the connection to a peer (called when it is removed).
    pub(crate) fn drop_peer(&self, peer: Ipv4Addr) {
        // A dial in flight finds its slot gone and closes what it brings.
        if let Some(Slot::Connected(live)) = self.inner.slots.lock().remove(&peer) {
            live.connection
                .close(CLOSE_PEER_REMOVED.into(), b"peer removed");
        }
    }

    /// Sends `request` to the member at `peer` and returns its answer.
    ///
    /// A cached connection found dead before the request went out on it is replaced at once,
    /// within the same deadline. A request that went out is never sent twice here, since the
    /// peer may have handled it: if the connection then dies (the restarted peer's stateless
    /// reset, or the peer silent past [`TransportLimits::peer_silence_ms_max`]), the request
    /// fails at once and the caller's next request dials a new connection.
    pub async fn request(&self, peer: Ipv4Addr, request: Bytes) -> Result<Bytes, TransportError> {
        let timeout_ms = self.inner.limits.request_timeout_ms;
        let attempt = async {
            for attempt in 0..2 {
                let (live, fresh) = self.connection(peer).await?;
                match self.request_on(peer, &live, &request).await {
                    Ok(response) => return Ok(response),
                    Err(failure) => {
                        self.forget(peer, &live);
                        if fresh || attempt == 1 || failure.maybe_delivered {
                            return Err(failure.error);
                        }
                        tracing::debug!(peer = %peer, error = %failure.error, "stale connection, reconnecting");
                    }
                }
            }
            Err(TransportError::Closed)
        };
        tokio::time::timeout(Duration::from_millis(timeout_ms), attempt)
            .await
            .map_err(|_| TransportError::RequestTimeout {
                addr: IpAddr::V4(peer),
                timeout_ms,
            })?
    }

    /// One request on `live`. If the peer stays silent (see [`ConnectionLiveness`]) past the
    /// bound, the connection is closed and the request fails, so that the next request dials
    /// a new one.
    async fn request_on(
        &self,
        peer: Ipv4Addr,
        live: &Live,
        request: &[u8],
    ) -> Result<Bytes, RequestFailure> {
        let sent_at = clock::monotonic();
        let rx_datagrams = live.rx_datagrams();
        let silent_since = live.liveness.lock().on_request_sent(rx_datagrams, sent_at);
        let exchange = exchange(&live.connection, request);
        tokio::pin!(exchange);
        let check_in = (silent_since + self.silence_bound(live)).saturating_duration_since(sent_at);
        tokio::select! {
            biased;
            response = &mut exchange => return response,
            () = tokio::time::sleep(check_in) => {}
        }
        if self.silent_past_bound(live).is_some() {
            tokio::select! {
                biased;
                response = &mut exchange => return response,
                () = tokio::time::sleep(Duration::from_millis(SILENCE_CONFIRM_MS)) => {}
            }
            if let Some(silent) = self.silent_past_bound(live) {
                self.close_silent(peer, live, silent);
                return Err(RequestFailure::maybe_delivered(
                    TransportError::Connection {
                        addr: IpAddr::V4(peer),
                        message: format!("no packet from the peer for {} ms", silent.as_millis()),
                    },
                ));
            }
        }
        // The peer acknowledged something after the request went out: it is alive and the
        // answer is up to its handler (bounded by the caller's deadline).
        exchange.await
    }

    /// Typed request: encodes `request` and decodes the answer with the mesh codec.
    pub async fn request_typed<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        peer: Ipv4Addr,
        request: &Req,
    ) -> Result<Resp, TransportError> {
        let bytes = codec::encode(request)?;
        let response = self.request(peer, Bytes::from(bytes)).await?;
        codec::decode(&response)
    }

    /// Opens a long-lived stream to `peer`, sending `open` as its first frame.
    pub async fn open_stream(
        &self,
        peer: Ipv4Addr,
        open: Bytes,
    ) -> Result<(StreamSender, StreamReceiver), TransportError> {
        let addr = IpAddr::V4(peer);
        let timeout_ms = self.inner.limits.connect_timeout_ms;
        let opening = async {
            for attempt in 0..2 {
                let (live, fresh) = self.connection(peer).await?;
                // The opening frame is a request as far as liveness goes: a live peer
                // acknowledges it, and the next caller finds the connection closed if not.
                let rx_datagrams = live.rx_datagrams();
                live.liveness
                    .lock()
                    .on_request_sent(rx_datagrams, clock::monotonic());
                let opened = async {
                    let (mut send, recv) = live.connection.open_bi().await.map_err(|e| {
                        TransportError::Connection {
                            addr,
                            message: e.to_string(),
                        }
                    })?;
                    write_frame(&mut send, &prefixed(KIND_STREAM, &open)).await?;
                    Ok::<_, TransportError>((StreamSender { send }, StreamReceiver { recv }))
                }
                .await;
                match opened {
                    Ok(halves) => return Ok(halves),
                    Err(e) => {
                        self.forget(peer, &live);
                        if fresh || attempt == 1 {
                            return Err(e);
                        }
                    }
                }
            }
            Err(TransportError::Closed)
        };
        tokio::time::timeout(Duration::from_millis(timeout_ms), opening)
            .await
            .map_err(|_| TransportError::ConnectTimeout { addr, timeout_ms })?
    }

    /// Closes every connection and the endpoint.
    pub(crate) async fn close(&self) {
        self.inner.slots.lock().clear();
        self.inner.endpoint.close(0u32.into(), b"shutdown");
        let _ =
            tokio::time::timeout(Duration::from_millis(500), self.inner.endpoint.wait_idle()).await;
    }
}

fn prefixed(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut framed = Vec::with_capacity(payload.len() + 1);
    framed.push(kind);
    framed.extend_from_slice(payload);
    framed
}

/// Sends one request frame on a new stream of `connection` and reads the answer.
async fn exchange(connection: &quinn::Connection, request: &[u8]) -> Result<Bytes, RequestFailure> {
    let addr = connection.remote_address().ip();
    let (mut send, mut recv) = connection.open_bi().await.map_err(|e| {
        RequestFailure::not_sent(TransportError::Connection {
            addr,
            message: e.to_string(),
        })
    })?;
    // A peer handles a request only once its whole frame arrived: if the write failed, the
    // frame was not all sent.
    write_frame(&mut send, &prefixed(KIND_REQUEST, request))
        .await
        .map_err(RequestFailure::not_sent)?;
    let _ = send.finish();
    read_frame(&mut recv)
        .await
        .and_then(|frame| frame.ok_or(TransportError::Closed))
        .map_err(RequestFailure::maybe_delivered)
}

/// A failed request, and whether the peer may have handled it (then only the caller, who
/// knows whether the request can be handled twice, may send it again).
#[derive(Debug)]
struct RequestFailure {
    error: TransportError,
    maybe_delivered: bool,
}

impl RequestFailure {
    fn not_sent(error: TransportError) -> Self {
        Self {
            error,
            maybe_delivered: false,
        }
    }

    fn maybe_delivered(error: TransportError) -> Self {
        Self {
            error,
            maybe_delivered: true,
        }
    }
}

async fn serve_stream(
    handler: Arc<dyn RpcHandler>,
    from: PeerInfo,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    request_timeout: Duration,
) {
    let first = match tokio::time::timeout(request_timeout, read_frame(&mut recv)).await {
        Ok(Ok(Some(first))) if !first.is_empty() => first,
        _ => return,
    };
    let payload = first.slice(1..);
    match first[0] {
        KIND_REQUEST => {
            let response = handler.handle(from, payload).await;
            if write_frame(&mut send, &response).await.is_ok() {
                let _ = send.finish();
            }
        }
        KIND_STREAM => {
            handler
                .handle_stream(
                    from,
                    payload,
                    StreamSender { send },
                    StreamReceiver { recv },
                )
                .await;
        }
        kind => {
            tracing::debug!(kind, peer = %from.mesh_addr, "unknown stream kind");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reset_key_is_the_same_for_every_process_of_a_node_and_is_not_its_private_key() {
        let node = Identity::from_secret_bytes([7; 32]);
        let same_node_restarted = Identity::from_secret_bytes([7; 32]);
        let other_node = Identity::from_secret_bytes([8; 32]);
        let key = derive_key(&node, KDF_INFO_RESET_KEY).unwrap();
        assert_eq!(
            key,
            derive_key(&same_node_restarted, KDF_INFO_RESET_KEY).unwrap()
        );
        assert_ne!(key, derive_key(&other_node, KDF_INFO_RESET_KEY).unwrap());
        assert_ne!(key, [7; 32]);
        assert_ne!(key, node.public_key().0);
        assert!(endpoint_config(&node).is_ok());
    }

    #[test]
    fn connection_ids_are_random_and_of_the_announced_length() {
        use quinn::ConnectionIdGenerator as _;
        let mut generator = MeshConnectionIdGenerator;
        let first = generator.generate_cid();
        let second = generator.generate_cid();
        assert_eq!(first.len(), generator.cid_len());
        assert_ne!(first, second);
    }
}
