//! Running code inside a network namespace, and connectivity probes built on it. A thread that
//! enters a network namespace (`setns`) creates its sockets there; the rest of the process is
//! unaffected, so no external tool is needed to test a partition.

use std::fs::File;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::mpsc;
use std::time::Duration;

use nix::sched::{setns, CloneFlags};

use super::EnvError;

/// Runs `f` on a new thread inside network namespace `ns` and returns its result.
pub fn in_netns<T, F>(ns: &str, f: F) -> Result<T, EnvError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let path = format!("/run/netns/{ns}");
    let handle = std::thread::Builder::new()
        .name(format!("netns-{ns}"))
        .spawn(move || -> Result<T, EnvError> {
            enter_netns_path(&path)?;
            Ok(f())
        })
        .map_err(|e| EnvError::io("spawn a netns thread", e))?;
    handle
        .join()
        .unwrap_or_else(|_| panic!("a thread inside netns {ns} panicked"))
}

/// Moves the calling thread into network namespace `ns` (for a thread that will run the
/// harness's client there for its whole life).
pub fn enter_netns(ns: &str) -> Result<(), EnvError> {
    enter_netns_path(&format!("/run/netns/{ns}"))
}

fn enter_netns_path(path: &str) -> Result<(), EnvError> {
    let file = File::open(path).map_err(|e| EnvError::io(format!("open {path}"), e))?;
    setns(&file, CloneFlags::CLONE_NEWNET)
        .map_err(|e| EnvError::io(format!("setns {path}"), e.into()))
}

/// Whether a TCP connection from namespace `ns` to `addr` succeeds within `timeout`.
pub fn tcp_connects(ns: &str, addr: SocketAddr, timeout: Duration) -> Result<bool, EnvError> {
    in_netns(ns, move || {
        TcpStream::connect_timeout(&addr, timeout).is_ok()
    })
}

/// Whether a UDP datagram sent from namespace `from_ns` reaches `to_addr` bound in namespace
/// `to_ns` within `timeout` (a few datagrams are sent; one arriving is enough).
pub fn udp_reaches(
    from_ns: &str,
    to_ns: &str,
    to_addr: SocketAddr,
    timeout: Duration,
) -> Result<bool, EnvError> {
    let (ready_tx, ready_rx) = mpsc::sync_channel::<Result<(), String>>(1);
    let to_ns_owned = to_ns.to_string();
    let receiver = std::thread::Builder::new()
        .name("udp-probe-rx".into())
        .spawn(move || -> Result<bool, EnvError> {
            let setup = (|| -> Result<UdpSocket, EnvError> {
                enter_netns_path(&format!("/run/netns/{to_ns_owned}"))?;
                let socket =
                    UdpSocket::bind(to_addr).map_err(|e| EnvError::io("bind udp probe", e))?;
                socket
                    .set_read_timeout(Some(timeout))
                    .map_err(|e| EnvError::io("udp probe timeout", e))?;
                Ok(socket)
            })();
            match setup {
                Ok(socket) => {
                    let _ = ready_tx.send(Ok(()));
                    let mut buf = [0u8; 64];
                    Ok(socket.recv_from(&mut buf).is_ok())
                }
                Err(error) => {
                    let _ = ready_tx.send(Err(error.to_string()));
                    Err(error)
                }
            }
        })
        .map_err(|e| EnvError::io("spawn udp probe receiver", e))?;
    let ready = ready_rx.recv_timeout(timeout);
    if let Ok(Ok(())) = ready {
        in_netns(from_ns, move || {
            if let Ok(socket) = UdpSocket::bind("0.0.0.0:0") {
                for _ in 0..3 {
                    let _ = socket.send_to(b"shoalchaos-probe", to_addr);
                }
            }
        })?;
    }
    receiver
        .join()
        .unwrap_or_else(|_| panic!("udp probe receiver panicked"))
}
