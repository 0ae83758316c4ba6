//! The standard WireGuard cross-platform UAPI socket (`/var/run/wireguard/<ifname>.sock`) for
//! the `tun` data plane, so that `wg show <ifname>` works. `get=1` reports the interface and
//! its peers; `set=1` is refused with EPERM, because the peer set follows the committed node
//! list and a hand-made change would be overwritten anyway.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout};

use crate::clock;
use crate::engine::{Engine, STOP_POLL_MS};
use crate::error::MeshError;

/// Directory of UAPI sockets, as wireguard-tools expects.
pub const UAPI_DIR: &str = "/var/run/wireguard";
/// Longest request line accepted.
const LINE_BYTES_MAX: usize = 4096;
/// Most lines in one request.
const LINES_MAX: usize = 100_000;

/// The running UAPI server; removes its socket file when dropped.
pub(crate) struct UapiServer {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl UapiServer {
    pub(crate) fn start(ifname: &str, engine: Arc<Engine>) -> Result<Self, MeshError> {
        let err = |e: std::io::Error| MeshError::Tun {
            ifname: ifname.to_string(),
            message: format!("uapi socket: {e}"),
        };
        std::fs::create_dir_all(UAPI_DIR).map_err(err)?;
        let path = PathBuf::from(UAPI_DIR).join(format!("{ifname}.sock"));
        // The socket directory is shared by every network namespace: never take over a
        // socket another live device answers on; only clear one left by a crashed run.
        if path.exists() {
            if UnixStream::connect(&path).is_ok() {
                return Err(MeshError::Tun {
                    ifname: ifname.to_string(),
                    message: format!("{} is in use by another device", path.display()),
                });
            }
            let _ = std::fs::remove_file(&path);
        }
        let listener = UnixListener::bind(&path).map_err(err)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
        listener.set_nonblocking(true).map_err(err)?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("mesh-uapi".into())
            .spawn(move || {
                while !thread_stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            if let Err(e) = serve(stream, &engine) {
                                tracing::debug!(error = %e, "uapi client error");
                            }
                        }
                        Err(_) => {
                            let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
                            let _ = nix::poll::poll(&mut fds, PollTimeout::from(STOP_POLL_MS));
                        }
                    }
                }
            })
            .map_err(err)?;
        Ok(Self {
            path,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for UapiServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn serve(stream: UnixStream, engine: &Engine) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    let mut reader = BufReader::new(&stream);
    let mut writer = &stream;
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 || line.len() > LINE_BYTES_MAX {
        return Ok(());
    }
    let command = line.trim().to_string();
    // Consume the rest of the request up to its blank line.
    for _ in 0..LINES_MAX {
        line.clear();
        if reader.read_line(&mut line)? == 0
            || line.trim().is_empty()
            || line.len() > LINE_BYTES_MAX
        {
            break;
        }
    }
    let response = match command.as_str() {
        "get=1" => get_response(engine),
        "set=1" => "errno=1\n\n".to_string(),
        _ => "errno=22\n\n".to_string(),
    };
    writer.write_all(response.as_bytes())?;
    writer.flush()
}

fn hex_key(base64_key: &str) -> String {
    crate::identity::NodePublicKey::parse(base64_key)
        .map(|k| hex::encode(k.0))
        .unwrap_or_default()
}

/// The `get=1` answer in the UAPI text format (keys in hex).
fn get_response(engine: &Engine) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(out, "private_key={}", hex_key(&engine.private_base64()));
    let _ = writeln!(out, "listen_port={}", engine.local_addr.port());
    let now_ms = clock::unix_ms();
    for peer in engine.peer_statuses() {
        let _ = writeln!(out, "public_key={}", hex::encode(peer.public_key.0));
        if let Some(endpoint) = peer.endpoint {
            let _ = writeln!(out, "endpoint={endpoint}");
        }
        let (sec, nsec) = match peer.since_last_handshake {
            Some(since) => {
                let at_ms = now_ms.saturating_sub(since.as_millis() as u64);
                (at_ms / 1000, (at_ms % 1000) * 1_000_000)
            }
            None => (0, 0),
        };
        let _ = writeln!(out, "last_handshake_time_sec={sec}");
        let _ = writeln!(out, "last_handshake_time_nsec={nsec}");
        let _ = writeln!(out, "tx_bytes={}", peer.tx_bytes);
        let _ = writeln!(out, "rx_bytes={}", peer.rx_bytes);
        let _ = writeln!(
            out,
            "persistent_keepalive_interval={}",
            peer.persistent_keepalive_s.unwrap_or(0)
        );
        let _ = writeln!(out, "allowed_ip={}/32", peer.mesh_addr);
        let _ = writeln!(out, "protocol_version=1");
    }
    out.push_str("errno=0\n\n");
    out
}
