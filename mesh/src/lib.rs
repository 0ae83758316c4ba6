//! Shoal's mesh: node identity, the WireGuard data planes, QUIC transport and join admission.
//!
//! - [`Mesh::start`] runs a node's mesh from a [`MeshConfig`]; [`Mesh::set_peers`] makes its
//!   WireGuard peers follow the committed node list; [`Mesh::transport`] sends requests and
//!   opens streams to members; an [`RpcHandler`] serves them.
//! - [`join_cluster`] proves a [`JoinToken`] to a member through its WireGuard UDP port; the
//!   member asks its [`Admission`] callback, which uses the pure [`admission::decide`].
//! - Pure cores: [`peer_table`], [`token`], [`admission`], [`replay_window`], [`mesh_addr`],
//!   [`ip_packet`], [`join_wire`], [`codec`].
//!
//! Join token text: `shoal1.<id>.<secret>.<member public key>@<host:port>[,<host:port>...]`
//! (see [`token`]).

pub mod admission;
pub mod clock;
pub mod codec;
mod engine;
pub mod error;
pub mod identity;
pub mod ip_packet;
pub mod join_client;
mod join_server;
pub mod join_wire;
mod liveness;
mod mesh;
pub mod mesh_addr;
pub mod peer_table;
pub mod random;
pub mod replay_window;
pub mod token;
pub mod transport;
mod tun_device;
mod tunnel_socket;
mod uapi;
mod udp_gso;

pub use admission::{Admission, JoinAccepted, JoinCandidate, JoinRefusal};
pub use engine::MeshStats;
pub use error::{JoinError, MeshError, TransportError};
pub use identity::{Identity, NodePublicKey};
pub use join_client::{join_cluster, JoinOptions};
pub use mesh::{DataPlane, Mesh, MeshConfig, DEFAULT_QUIC_PORT, DEFAULT_WG_PORT};
pub use peer_table::PeerSpec;
pub use token::{JoinToken, TokenRecord};
pub use transport::{
    PeerInfo, RpcHandler, StreamReceiver, StreamSender, Transport, TransportLimits, TransportStats,
};
pub use tun_device::{DEFAULT_IFNAME, TUN_MTU};
