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

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::codec::{self, read_frame, write_frame};
use crate::engine::Engine;
use crate::error::{MeshError, TransportError};
use crate::identity::NodePublicKey;

/// ALPN of the mesh protocol.
const ALPN: &[u8] = b"shoal-mesh/1";
/// TLS server name used by all nodes (the tunnel authenticates, not the name).
const SERVER_NAME: &str = "shoal-mesh";
const KIND_REQUEST: u8 = 0;
const KIND_STREAM: u8 = 1;
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
    /// Connection establishment.
    pub connect_timeout_ms: u64,
    /// A whole request (send, wait, receive).
    pub request_timeout_ms: u64,
    /// A connection with no traffic (keep-alives are sent at a third of it) is closed.
    pub idle_timeout_ms: u64,
}

impl Default for TransportLimits {
    fn default() -> Self {
        Self {
            connect_timeout_ms: 3_000,
            request_timeout_ms: 10_000,
            idle_timeout_ms: 10_000,
        }
    }
}

type Slot = Arc<tokio::sync::Mutex<Option<quinn::Connection>>>;

struct Inner {
    endpoint: quinn::Endpoint,
    engine: Arc<Engine>,
    quic_port: u16,
    limits: TransportLimits,
    connections: Mutex<HashMap<Ipv4Addr, Slot>>,
    /// Live connections for the common path, read without an async lock; the slots above
    /// only serialise connection establishment.
    established: Mutex<HashMap<Ipv4Addr, quinn::Connection>>,
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
                connections: Mutex::new(HashMap::new()),
                established: Mutex::new(HashMap::new()),
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

    async fn connection(
        &self,
        peer: Ipv4Addr,
    ) -> Result<(quinn::Connection, bool), TransportError> {
        if self.inner.engine.peer_by_addr(peer).is_none() {
            return Err(TransportError::UnknownPeer(IpAddr::V4(peer)));
        }
        if let Some(connection) = self.inner.established.lock().get(&peer) {
            if connection.close_reason().is_none() {
                return Ok((connection.clone(), false));
            }
        }
        let slot = Arc::clone(self.inner.connections.lock().entry(peer).or_default());
        let mut guard = slot.lock().await;
        if let Some(connection) = guard.as_ref() {
            if connection.close_reason().is_none() {
                return Ok((connection.clone(), false));
            }
        }
        let addr = IpAddr::V4(peer);
        let connecting = self
            .inner
            .endpoint
            .connect(SocketAddr::new(addr, self.inner.quic_port), SERVER_NAME)
            .map_err(|e| TransportError::Connection {
                addr,
                message: e.to_string(),
            })?;
        let timeout_ms = self.inner.limits.connect_timeout_ms;
        let connection = tokio::time::timeout(Duration::from_millis(timeout_ms), connecting)
            .await
            .map_err(|_| TransportError::ConnectTimeout { addr, timeout_ms })?
            .map_err(|e| TransportError::Connection {
                addr,
                message: e.to_string(),
            })?;
        *guard = Some(connection.clone());
        self.inner
            .established
            .lock()
            .insert(peer, connection.clone());
        Ok((connection, true))
    }

    fn forget(&self, peer: Ipv4Addr, connection: &quinn::Connection) {
        {
            let mut established = self.inner.established.lock();
            if established.get(&peer).map(|c| c.stable_id()) == Some(connection.stable_id()) {
                established.remove(&peer);
            }
        }
        let slot = self.inner.connections.lock().get(&peer).cloned();
        if let Some(slot) = slot {
            if let Ok(mut guard) = slot.try_lock() {
                if guard.as_ref().map(|c| c.stable_id()) == Some(connection.stable_id()) {
                    *guard = None;
                }
            }
        }
    }

    /// Closes and forgets the connection to a peer (called when it is removed).
    pub(crate) fn drop_peer(&self, peer: Ipv4Addr) {
        self.inner.established.lock().remove(&peer);
        if let Some(slot) = self.inner.connections.lock().remove(&peer) {
            if let Ok(mut guard) = slot.try_lock() {
                if let Some(connection) = guard.take() {
                    connection.close(0u32.into(), b"peer removed");
                }
            }
        }
    }

    /// Sends `request` to the member at `peer` and returns its answer. A cached connection
    /// that turns out dead (the peer restarted) is replaced once, within the same deadline.
    pub async fn request(&self, peer: Ipv4Addr, request: Bytes) -> Result<Bytes, TransportError> {
        let timeout_ms = self.inner.limits.request_timeout_ms;
        let attempt = async {
            for attempt in 0..2 {
                let (connection, fresh) = self.connection(peer).await?;
                match request_on(&connection, &request).await {
                    Ok(response) => return Ok(response),
                    Err(e) => {
                        self.forget(peer, &connection);
                        if fresh || attempt == 1 {
                            return Err(e);
                        }
                        tracing::debug!(peer = %peer, error = %e, "stale connection, reconnecting");
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
                let (connection, fresh) = self.connection(peer).await?;
                let opened = async {
                    let (mut send, recv) =
                        connection
                            .open_bi()
                            .await
                            .map_err(|e| TransportError::Connection {
                                addr,
                                message: e.to_string(),
                            })?;
                    write_frame(&mut send, &prefixed(KIND_STREAM, &open)).await?;
                    Ok::<_, TransportError>((StreamSender { send }, StreamReceiver { recv }))
                }
                .await;
                match opened {
                    Ok(halves) => return Ok(halves),
                    Err(e) => {
                        self.forget(peer, &connection);
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
        self.inner.connections.lock().clear();
        self.inner.established.lock().clear();
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

async fn request_on(
    connection: &quinn::Connection,
    request: &[u8],
) -> Result<Bytes, TransportError> {
    let addr = connection.remote_address().ip();
    let (mut send, mut recv) =
        connection
            .open_bi()
            .await
            .map_err(|e| TransportError::Connection {
                addr,
                message: e.to_string(),
            })?;
    write_frame(&mut send, &prefixed(KIND_REQUEST, request)).await?;
    let _ = send.finish();
    read_frame(&mut recv).await?.ok_or(TransportError::Closed)
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
