//! `shoal logs -f` through a TCP proxy that cuts every connection several times while a
//! process writes numbered lines: the follower reconnects by itself with `Last-Event-ID` and
//! its output is exactly the process's output, no line lost or repeated.

// Test code: a panic is the failure report (the workspace denies unwrap/expect elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cli_support;

use std::io::{BufRead, BufReader};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use cli_support::{shoal_ok, socket_addr, DevCluster, SHOAL};
use tracing::info;

const N_LINES: usize = 300;

/// A loopback TCP proxy whose live connections can be cut on demand.
struct CuttingProxy {
    port: u16,
    live: Arc<Mutex<Vec<TcpStream>>>,
}

impl CuttingProxy {
    fn start(target: std::net::SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let live: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let live_accept = Arc::clone(&live);
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { break };
                let Ok(server) = TcpStream::connect(target) else {
                    continue;
                };
                let (Ok(client_read), Ok(server_read)) = (client.try_clone(), server.try_clone())
                else {
                    continue;
                };
                if let (Ok(a), Ok(b)) = (client.try_clone(), server.try_clone()) {
                    if let Ok(mut live) = live_accept.lock() {
                        live.push(a);
                        live.push(b);
                    }
                }
                pump(client_read, server);
                pump(server_read, client);
            }
        });
        Ok(Self { port, live })
    }

    /// Cuts every connection open now; returns how many sockets it shut.
    fn cut(&self) -> usize {
        let Ok(mut live) = self.live.lock() else {
            return 0;
        };
        let n = live.len();
        for stream in live.drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
        n
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut from, &mut to);
        let _ = to.shutdown(Shutdown::Both);
    });
}

#[test]
fn logs_follow_resumes_after_connection_drops_without_losing_or_repeating_a_line(
) -> anyhow::Result<()> {
    cli_support::init_tracing();
    let cluster = DevCluster::start(1, Duration::from_secs(60))?;
    let (addr, key) = (cluster.addr.as_str(), cluster.admin_key.as_str());
    let proxy = CuttingProxy::start(socket_addr(addr)?)?;

    info!("--- a workstation whose process prints {N_LINES} numbered lines, slowly");
    let ws = shoal_ok(
        addr,
        key,
        &["ws", "create", "--cpu", "0.2", "--mem", "64MiB"],
    )?;
    let script = format!(
        "i=0; while [ $i -lt {N_LINES} ]; do printf 'line %05d\\n' $i; i=$((i+1)); sleep 0.01; done"
    );
    shoal_ok(addr, key, &["exec", &ws, "--", "sh", "-c", &script])?;

    info!("--- follow through the proxy and cut the connection three times");
    let mut follower = Command::new(SHOAL)
        .args([
            "logs",
            "-f",
            &ws,
            "--addr",
            &format!("http://127.0.0.1:{}", proxy.port),
        ])
        .env("SHOAL_TOKEN", key)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let stdout = follower
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let stderr = follower
        .stderr
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stderr"))?;
    let (sender, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    let stderr_thread = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut BufReader::new(stderr), &mut text);
        text
    });
    let mut received = Vec::new();
    let mut n_cuts = 0;
    while received.len() < N_LINES {
        let line = match lines.recv_timeout(Duration::from_secs(30)) {
            Ok(line) => line,
            Err(_) => break,
        };
        received.push(line);
        // Cut while output is flowing: after 50, 120 and 200 lines.
        if [50, 120, 200].contains(&received.len()) && proxy.cut() > 0 {
            n_cuts += 1;
        }
    }
    let _ = follower.kill();
    let _ = follower.wait();
    let stderr_text = stderr_thread.join().unwrap_or_default();

    info!("--- exactly the process's lines, in order, each once");
    let expected: Vec<String> = (0..N_LINES).map(|i| format!("line {i:05}")).collect();
    assert_eq!(received, expected, "stderr of the follower: {stderr_text}");
    assert_eq!(n_cuts, 3);
    assert!(
        stderr_text.matches("reconnecting from offset").count() >= 3,
        "the follower should have reconnected three times: {stderr_text}"
    );
    Ok(())
}
