//! `Mesh`: one node's mesh, started from a [`MeshConfig`]: identity, WireGuard data plane
//! (userspace or tun), join server and QUIC transport.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::RwLock;

use crate::admission::Admission;
use crate::engine::{self, Engine, MeshStats, Sink, UserspaceInbox};
use crate::error::MeshError;
use crate::identity::{Identity, NodePublicKey};
use crate::join_server::{self, AdmissionSlot};
use crate::peer_table::{PeerChange, PeerSpec};
use crate::transport::{self, RpcHandler, Transport, TransportLimits};
use crate::tun_device;
use crate::tunnel_socket::TunnelSocket;
use crate::uapi::UapiServer;

/// UDP port of QUIC inside the mesh (on every node's mesh address).
pub const DEFAULT_QUIC_PORT: u16 = 7946;
/// Default WireGuard UDP port.
pub const DEFAULT_WG_PORT: u16 = 51820;

/// Which data plane carries the mesh.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DataPlane {
    /// No privileges: WireGuard in this process, only Shoal's own traffic.
    Userspace,
    /// A real interface (needs CAP_NET_ADMIN), usable by every process on the host.
    Tun {
        /// Interface name (default `shoal0`).
        ifname: String,
    },
}

/// Everything `Mesh::start` needs.
#[derive(Clone, Debug)]
pub struct MeshConfig {
    /// The node's data dir (holds `mesh.key`).
    pub data_dir: PathBuf,
    /// The WireGuard UDP listen address (the only socket open outside the mesh).
    pub listen_addr: SocketAddr,
    /// This node's mesh address.
    pub mesh_addr: Ipv4Addr,
    /// Prefix length of the overlay range (16 for 10.77.0.0/16).
    pub mesh_prefix_len: u8,
    /// Data plane.
    pub data_plane: DataPlane,
    /// QUIC port inside the mesh.
    pub quic_port: u16,
    /// Transport timeouts.
    pub limits: TransportLimits,
    /// WireGuard persistent keepalive (seconds) for peers behind NAT; `None` disables it.
    pub persistent_keepalive_s: Option<u16>,
}

impl MeshConfig {
    /// A userspace configuration with default ports, prefix and limits.
    pub fn new(data_dir: impl Into<PathBuf>, listen_addr: SocketAddr, mesh_addr: Ipv4Addr) -> Self {
        Self {
            data_dir: data_dir.into(),
            listen_addr,
            mesh_addr,
            mesh_prefix_len: 16,
            data_plane: DataPlane::Userspace,
            quic_port: DEFAULT_QUIC_PORT,
            limits: TransportLimits::default(),
            persistent_keepalive_s: None,
        }
    }
}

/// A running mesh node. Stop it with [`Mesh::shutdown`] (dropping it also stops the threads).
pub struct Mesh {
    engine: Arc<Engine>,
    transport: Transport,
    admission: AdmissionSlot,
    threads: Vec<std::thread::JoinHandle<()>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    uapi: Option<UapiServer>,
    identity: Identity,
}

/// How long a start keeps trying to bind a WireGuard port that is still in use.
const BIND_IN_USE_WAIT_MS_MAX: u64 = 5_000;
/// Pause between binds of a port in use.
const BIND_IN_USE_RETRY_MS: u64 = 100;

/// Binds the WireGuard UDP socket. A port in use is retried for up to
/// [`BIND_IN_USE_WAIT_MS_MAX`]: after a kill -9 the previous process of this node can hold it
/// a moment longer (a descendant still exiting), and a node restarted at once must not fail
/// for good on that (the chaos suite saw a restarted node stay down). Any other error, or a
/// port still in use after the wait, is returned.
async fn bind_udp_retrying(addr: std::net::SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let attempts_max = BIND_IN_USE_WAIT_MS_MAX / BIND_IN_USE_RETRY_MS;
    let mut attempt = 0;
    loop {
        match engine::bind_udp(addr) {
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && attempt < attempts_max => {
                if attempt == 0 {
                    tracing::warn!(%addr, "WireGuard port in use; retrying for up to {BIND_IN_USE_WAIT_MS_MAX} ms");
                }
                attempt += 1;
                // No event says when another process lets go of a port: poll, bounded.
                tokio::time::sleep(std::time::Duration::from_millis(BIND_IN_USE_RETRY_MS)).await;
            }
            other => return other,
        }
    }
}

impl Mesh {
    /// Loads (or creates) the identity, opens the WireGuard socket and the data plane, and
    /// serves `handler` on the QUIC port of the mesh address. Must run inside a tokio runtime.
    pub async fn start(
        config: MeshConfig,
        handler: Arc<dyn RpcHandler>,
    ) -> Result<Self, MeshError> {
        let identity = Identity::load_or_create(&config.data_dir)?;
        let socket = bind_udp_retrying(config.listen_addr)
            .await
            .map_err(|source| MeshError::Socket {
                addr: config.listen_addr,
                source,
            })?;
        let (sink, inbox, ifname) = match &config.data_plane {
            DataPlane::Userspace => {
                let inbox = Arc::new(UserspaceInbox::new(config.quic_port));
                (Sink::Userspace(Arc::clone(&inbox)), Some(inbox), None)
            }
            DataPlane::Tun { ifname } => {
                let tun = tun_device::create_tun(ifname, config.mesh_addr, config.mesh_prefix_len)?;
                (Sink::Tun(tun), None, Some(ifname.clone()))
            }
        };
        let (engine, join_rx) = Engine::new(
            identity.clone(),
            config.mesh_addr,
            socket,
            sink,
            config.persistent_keepalive_s,
        )
        .map_err(|source| MeshError::Socket {
            addr: config.listen_addr,
            source,
        })?;
        let threads = engine.spawn_threads().map_err(|source| MeshError::Socket {
            addr: config.listen_addr,
            source,
        })?;
        let uapi = match &ifname {
            Some(ifname) => match UapiServer::start(ifname, Arc::clone(&engine)) {
                Ok(server) => Some(server),
                Err(e) => {
                    engine.stop();
                    return Err(e);
                }
            },
            None => None,
        };

        let quic_result = (|| {
            let (server_config, client_config) =
                transport::quic_configs(config.limits, inbox.is_none())?;
            let endpoint_config = transport::endpoint_config(&identity)?;
            let runtime: Arc<dyn quinn::Runtime> = Arc::new(quinn::TokioRuntime);
            let mut endpoint = match &inbox {
                Some(inbox) => quinn::Endpoint::new_with_abstract_socket(
                    endpoint_config,
                    Some(server_config),
                    Arc::new(TunnelSocket::new(Arc::clone(&engine), Arc::clone(inbox))),
                    runtime,
                ),
                None => {
                    let addr =
                        SocketAddr::V4(SocketAddrV4::new(config.mesh_addr, config.quic_port));
                    std::net::UdpSocket::bind(addr).and_then(|socket| {
                        quinn::Endpoint::new(endpoint_config, Some(server_config), socket, runtime)
                    })
                }
            }
            .map_err(|e| MeshError::TransportSetup(e.to_string()))?;
            endpoint.set_default_client_config(client_config);
            Ok::<_, MeshError>(endpoint)
        })();
        let endpoint = match quic_result {
            Ok(endpoint) => endpoint,
            Err(e) => {
                engine.stop();
                return Err(e);
            }
        };
        let transport = Transport::new(
            endpoint,
            Arc::clone(&engine),
            config.quic_port,
            config.limits,
        );
        let admission: AdmissionSlot = Arc::new(RwLock::new(None));
        let tasks = vec![
            transport.spawn_server(handler),
            join_server::spawn(
                Arc::clone(&engine),
                identity.clone(),
                join_rx,
                Arc::clone(&admission),
            ),
        ];
        tracing::info!(
            public_key = %identity.public_key(),
            mesh_addr = %config.mesh_addr,
            listen = %engine.local_addr,
            data_plane = ?config.data_plane,
            "mesh started"
        );
        Ok(Self {
            engine,
            transport,
            admission,
            threads,
            tasks,
            uapi,
            identity,
        })
    }

    /// Installs the callback that decides join requests arriving at this node.
    pub fn set_admission(&self, admission: Arc<dyn Admission>) {
        *self.admission.write() = Some(admission);
    }

    /// Makes the WireGuard peers equal to `peers` (the committed node list; this node's own
    /// entry is ignored). Removed peers' packets are dropped from now on and their QUIC
    /// connections closed. A refused list (duplicates) changes nothing.
    pub fn set_peers(&self, peers: &[PeerSpec]) -> Result<(), MeshError> {
        let changes = self
            .engine
            .set_peers(peers)
            .map_err(|e| MeshError::Config(e.to_string()))?;
        for change in changes {
            if let PeerChange::Removed(entry) = change {
                self.transport.drop_peer(entry.spec.mesh_addr);
            }
        }
        Ok(())
    }

    /// The client side of the QUIC transport.
    pub fn transport(&self) -> Transport {
        self.transport.clone()
    }

    /// This node's identity (public key).
    pub fn public_key(&self) -> NodePublicKey {
        self.identity.public_key()
    }

    /// This node's mesh address.
    pub fn mesh_addr(&self) -> Ipv4Addr {
        self.engine.mesh_addr
    }

    /// The bound WireGuard UDP address (useful with port 0).
    pub fn local_udp_addr(&self) -> SocketAddr {
        self.engine.local_addr
    }

    /// Data plane counters.
    pub fn stats(&self) -> MeshStats {
        self.engine.stats()
    }

    /// Stops everything and frees the UDP port and interface before returning.
    pub async fn shutdown(mut self) {
        self.transport.close().await;
        self.stop_now();
    }

    fn stop_now(&mut self) {
        for task in self.tasks.drain(..) {
            task.abort();
        }
        self.engine.stop();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
        self.uapi.take();
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        self.stop_now();
    }
}
