//! Typed errors of the mesh. Each variant says what happened; the doc says whether a retry helps.

use std::net::{IpAddr, SocketAddr};

use crate::admission::JoinRefusal;

/// Errors from starting or configuring the mesh.
#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    /// A key is not 32 bytes of base64. Not retryable.
    #[error("invalid key: {0}")]
    InvalidKey(String),
    /// The identity file could not be read or written.
    #[error("mesh identity: {0}")]
    Identity(String),
    /// The configuration is inconsistent (e.g. two peers with one mesh address). Not retryable.
    #[error("invalid mesh configuration: {0}")]
    Config(String),
    /// A join token could not be parsed. Not retryable.
    #[error("invalid join token: {0}")]
    InvalidToken(String),
    /// Binding or using a socket failed.
    #[error("socket {addr}: {source}")]
    Socket {
        /// The address involved.
        addr: SocketAddr,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// Creating or configuring the TUN interface failed (needs CAP_NET_ADMIN).
    #[error("tun interface {ifname}: {message}")]
    Tun {
        /// Interface name.
        ifname: String,
        /// What failed.
        message: String,
    },
    /// QUIC/TLS setup failed.
    #[error("transport setup: {0}")]
    TransportSetup(String),
}

/// Errors of a request or stream over the mesh transport.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The address is not a current member's mesh address. Not retryable until peers change.
    #[error("{0} is not a mesh peer")]
    UnknownPeer(IpAddr),
    /// No QUIC connection could be established in time. Retryable.
    #[error("connect to {addr} timed out after {timeout_ms} ms")]
    ConnectTimeout {
        /// Peer mesh address.
        addr: IpAddr,
        /// The limit that expired.
        timeout_ms: u64,
    },
    /// The request got no answer in time. Retryable if the request is idempotent.
    #[error("request to {addr} timed out after {timeout_ms} ms")]
    RequestTimeout {
        /// Peer mesh address.
        addr: IpAddr,
        /// The limit that expired.
        timeout_ms: u64,
    },
    /// The connection failed or was lost. Retryable.
    #[error("connection to {addr}: {message}")]
    Connection {
        /// Peer mesh address.
        addr: IpAddr,
        /// What quinn said.
        message: String,
    },
    /// A frame exceeded the size limit. Not retryable.
    #[error("frame of {len_bytes} bytes exceeds the limit of {max_bytes} bytes")]
    FrameTooLarge {
        /// Announced or actual length.
        len_bytes: usize,
        /// The limit.
        max_bytes: usize,
    },
    /// The peer closed the stream before a complete frame. Retryable.
    #[error("stream closed by peer")]
    Closed,
    /// A frame could not be encoded or decoded.
    #[error("codec: {0}")]
    Codec(String),
    /// The transport is shutting down.
    #[error("mesh transport is shut down")]
    Shutdown,
}

/// Errors of joining a cluster.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// The member refused the join; the reason says why. Not retryable with the same token
    /// unless the reason is `Unavailable`.
    #[error("join refused: {0}")]
    Refused(JoinRefusal),
    /// No member answered in time. Retryable.
    #[error("no answer from {member} after {attempts} attempts")]
    NoAnswer {
        /// The member endpoint that was tried.
        member: String,
        /// How many join packets were sent.
        attempts: u32,
    },
    /// The token could not be used (parse error, unresolvable host).
    #[error("{0}")]
    Token(String),
    /// Local socket failure.
    #[error("join socket: {0}")]
    Io(#[from] std::io::Error),
}
