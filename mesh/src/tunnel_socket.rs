//! quinn's socket in userspace mode: QUIC datagrams become IPv4/UDP packets between mesh
//! addresses, encrypted by the engine's WireGuard tunnels; decrypted packets for our QUIC port
//! come back through the engine's inbox.

use std::cell::RefCell;
use std::fmt;
use std::io;
use std::net::{SocketAddr, SocketAddrV4};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};

use crate::engine::{Engine, UserspaceInbox};
use crate::ip_packet;

/// Socket read rounds per `poll_recv` before yielding.
const RECV_ROUNDS_MAX: usize = 4;

thread_local! {
    static PACKET_BUF: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(65_536));
}

/// See the module doc.
pub(crate) struct TunnelSocket {
    engine: Arc<Engine>,
    inbox: Arc<UserspaceInbox>,
    local: SocketAddrV4,
}

impl fmt::Debug for TunnelSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TunnelSocket")
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

impl TunnelSocket {
    pub(crate) fn new(engine: Arc<Engine>, inbox: Arc<UserspaceInbox>) -> Self {
        let local = SocketAddrV4::new(engine.mesh_addr, inbox.quic_port);
        Self {
            engine,
            inbox,
            local,
        }
    }
}

/// Sends never block: the engine drops a packet when the OS buffer stays full, like a NIC.
#[derive(Debug)]
struct AlwaysWritable;

impl UdpPoller for AlwaysWritable {
    fn poll_writable(self: Pin<&mut Self>, _cx: &mut Context) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl AsyncUdpSocket for TunnelSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Box::pin(AlwaysWritable)
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        let SocketAddr::V4(dst) = transmit.destination else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the mesh is IPv4",
            ));
        };
        // Without GSO each transmit is one datagram; with a segment size, split it.
        let segment = transmit
            .segment_size
            .unwrap_or(transmit.contents.len())
            .max(1);
        PACKET_BUF.with(|buf| {
            let mut buf = buf.borrow_mut();
            for chunk in transmit.contents.chunks(segment) {
                if ip_packet::build_udp(self.local, dst, chunk, &mut buf).is_ok() {
                    self.engine.send_ip(&buf, *dst.ip());
                }
            }
        });
        Ok(())
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [io::IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        // Reading the WireGuard socket here, on quinn's endpoint task, saves a thread
        // hand-off per packet. A flood that yields nothing for quinn is cut into rounds so
        // that other tasks run in between.
        for _ in 0..RECV_ROUNDS_MAX {
            let filled = self.inbox.fill(bufs, meta, self.engine.mesh_addr);
            if filled > 0 {
                return Poll::Ready(Ok(filled));
            }
            if self.engine.poll_read_socket(cx).is_pending() {
                return Poll::Pending;
            }
        }
        let filled = self.inbox.fill(bufs, meta, self.engine.mesh_addr);
        if filled > 0 {
            return Poll::Ready(Ok(filled));
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(SocketAddr::V4(self.local))
    }
}
