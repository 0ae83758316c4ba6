//! Small RPCs over the userspace mesh on loopback: rate and latency percentiles at several
//! concurrency levels, two nodes in this process (each with its own WireGuard socket, quinn
//! endpoint and threads). Run: `cargo bench -p shoal-mesh --bench rpc`.
//! Targets (issue 4): at least 20,000 requests/s with p99 at most 2 ms; the ratio to the
//! targets is printed.

// Measurement code run by hand: a panic is the failure report (the workspace denies
// unwrap/expect in the crates' code).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use shoal_mesh::{clock, Mesh, MeshConfig, PeerInfo, PeerSpec, RpcHandler};

const RATE_TARGET_PER_S: f64 = 20_000.0;
const P99_TARGET_MS: f64 = 2.0;
const RUN_MS: u64 = 3_000;
const WARMUP_MS: u64 = 500;

struct Echo;

#[async_trait::async_trait]
impl RpcHandler for Echo {
    async fn handle(&self, _from: PeerInfo, request: Bytes) -> Bytes {
        request
    }
}

fn spec(mesh: &Mesh) -> PeerSpec {
    PeerSpec {
        public_key: mesh.public_key(),
        endpoint: Some(mesh.local_udp_addr()),
        mesh_addr: mesh.mesh_addr(),
    }
}

async fn run_level(
    client: &Mesh,
    server: &Mesh,
    concurrency: usize,
    run_ms: u64,
) -> (f64, Vec<u64>) {
    let transport = client.transport();
    let target = server.mesh_addr();
    let start = clock::monotonic();
    let deadline = start + Duration::from_millis(run_ms);
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let transport = transport.clone();
        workers.push(tokio::spawn(async move {
            let mut latencies_us = Vec::with_capacity(100_000);
            let payload = Bytes::from_static(&[7u8; 64]);
            while clock::monotonic() < deadline {
                let sent = clock::monotonic();
                if transport.request(target, payload.clone()).await.is_ok() {
                    latencies_us.push(sent.elapsed().as_micros() as u64);
                }
            }
            latencies_us
        }));
    }
    let mut all = Vec::new();
    for worker in workers {
        all.extend(worker.await.unwrap_or_default());
    }
    let elapsed_s = start.elapsed().as_secs_f64();
    all.sort_unstable();
    (all.len() as f64 / elapsed_s, all)
}

fn percentile_ms(sorted_us: &[u64], p: f64) -> f64 {
    if sorted_us.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted_us.len() as f64 * p).ceil() as usize).clamp(1, sorted_us.len()) - 1;
    sorted_us[idx] as f64 / 1000.0
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let a = Mesh::start(MeshConfig::new(dirs[0].path(), any, "10.77.0.1".parse().unwrap()), Arc::new(Echo))
            .await
            .expect("node a");
        let b = Mesh::start(MeshConfig::new(dirs[1].path(), any, "10.77.0.2".parse().unwrap()), Arc::new(Echo))
            .await
            .expect("node b");
        let specs = [spec(&a), spec(&b)];
        a.set_peers(&specs).unwrap();
        b.set_peers(&specs).unwrap();
        run_level(&a, &b, 4, WARMUP_MS).await;

        println!("rpc over the userspace mesh, 64-byte echo, loopback, {RUN_MS} ms per level");
        println!("{:>11} {:>10} {:>8} {:>8} {:>8}", "concurrency", "req/s", "p50 ms", "p99 ms", "max ms");
        let mut best: Option<(usize, f64, f64)> = None;
        for concurrency in [1usize, 8, 16, 32, 64] {
            let (rate, lat) = run_level(&a, &b, concurrency, RUN_MS).await;
            let p99 = percentile_ms(&lat, 0.99);
            println!(
                "{concurrency:>11} {rate:>10.0} {:>8.3} {p99:>8.3} {:>8.3}",
                percentile_ms(&lat, 0.50),
                lat.last().copied().unwrap_or(0) as f64 / 1000.0
            );
            if p99 <= P99_TARGET_MS && best.is_none_or(|(_, r, _)| rate > r) {
                best = Some((concurrency, rate, p99));
            }
        }
        match best {
            Some((concurrency, rate, p99)) => println!(
                "best with p99 <= {P99_TARGET_MS} ms: {rate:.0} req/s at concurrency {concurrency} (p99 {p99:.3} ms); \
                 ratio to the {RATE_TARGET_PER_S:.0}/s target: {:.2}",
                rate / RATE_TARGET_PER_S
            ),
            None => println!("no level met p99 <= {P99_TARGET_MS} ms"),
        }
        a.shutdown().await;
        b.shutdown().await;
    });
}
