//! `shoal-mesh-node`: one mesh node as a process, for the namespace tests and
//! `ops/bench-mesh.sh`. It serves an echo RPC, configures the given peers, prints
//! `ready <public key>` once up, and stops cleanly on SIGTERM, SIGINT or (with
//! `--exit-on-stdin-eof`) stdin EOF.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use clap::Parser;
use shoal_mesh::{
    DataPlane, Identity, Mesh, MeshConfig, NodePublicKey, PeerInfo, PeerSpec, RpcHandler,
};

#[derive(Parser, Debug)]
#[command(about = "Runs one Shoal mesh node (test and benchmark harness)")]
struct Args {
    /// Data dir holding the node's key.
    #[arg(long)]
    data_dir: PathBuf,
    /// Only create/load the key and print the public key.
    #[arg(long)]
    print_public_key: bool,
    /// WireGuard UDP listen address.
    #[arg(long, default_value = "0.0.0.0:51820")]
    listen: SocketAddr,
    /// This node's mesh address.
    #[arg(long, default_value = "10.77.0.1")]
    mesh_addr: Ipv4Addr,
    /// Overlay prefix length.
    #[arg(long, default_value_t = 16)]
    prefix_len: u8,
    /// `tun` or `userspace`.
    #[arg(long, default_value = "userspace")]
    mode: String,
    /// TUN interface name.
    #[arg(long, default_value = shoal_mesh::DEFAULT_IFNAME)]
    ifname: String,
    /// A peer: `<public key>,<endpoint or ->,<mesh addr>` (repeatable).
    #[arg(long = "peer")]
    peers: Vec<String>,
    /// Also stop when stdin reaches EOF (tests hold the pipe, so the node dies with them).
    #[arg(long)]
    exit_on_stdin_eof: bool,
    /// After start, send RPCs to this mesh address until one succeeds and print `rpc-ok`.
    #[arg(long)]
    rpc_to: Option<Ipv4Addr>,
}

struct Echo;

#[async_trait::async_trait]
impl RpcHandler for Echo {
    async fn handle(&self, _from: PeerInfo, request: Bytes) -> Bytes {
        request
    }
}

fn parse_peer(text: &str) -> anyhow::Result<PeerSpec> {
    let parts: Vec<&str> = text.split(',').collect();
    let [key, endpoint, mesh_addr] = parts[..] else {
        anyhow::bail!("--peer is <public key>,<endpoint or ->,<mesh addr>");
    };
    Ok(PeerSpec {
        public_key: NodePublicKey::parse(key)?,
        endpoint: if endpoint == "-" {
            None
        } else {
            Some(endpoint.parse().context("peer endpoint")?)
        },
        mesh_addr: mesh_addr.parse().context("peer mesh address")?,
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,quinn=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    if args.print_public_key {
        println!("{}", Identity::load_or_create(&args.data_dir)?.public_key());
        return Ok(());
    }
    let peers = args
        .peers
        .iter()
        .map(|p| parse_peer(p))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut config = MeshConfig::new(&args.data_dir, args.listen, args.mesh_addr);
    config.mesh_prefix_len = args.prefix_len;
    config.data_plane = match args.mode.as_str() {
        "tun" => DataPlane::Tun {
            ifname: args.ifname.clone(),
        },
        "userspace" => DataPlane::Userspace,
        other => anyhow::bail!("--mode is tun or userspace, not {other}"),
    };
    let mesh = Mesh::start(config, Arc::new(Echo)).await?;
    mesh.set_peers(&peers)?;
    println!("ready {}", mesh.public_key());
    if let Some(target) = args.rpc_to {
        let transport = mesh.transport();
        let ok = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                match transport.request(target, Bytes::from_static(b"ping")).await {
                    Ok(answer) if answer == b"ping"[..] => return,
                    Ok(_) => {}
                    Err(e) => tracing::info!(error = %e, "rpc not through yet"),
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
        .await;
        println!("{}", if ok.is_ok() { "rpc-ok" } else { "rpc-failed" });
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let watch_stdin = args.exit_on_stdin_eof;
    let stdin_closed = async move {
        if !watch_stdin {
            return futures::future::pending::<()>().await;
        }
        let _ = tokio::task::spawn_blocking(|| {
            let mut sink = String::new();
            while std::io::stdin()
                .read_line(&mut sink)
                .map(|n| n > 0)
                .unwrap_or(false)
            {
                sink.clear();
            }
        })
        .await;
    };
    tokio::select! {
        _ = interrupt.recv() => tracing::info!("SIGINT"),
        _ = term.recv() => tracing::info!("SIGTERM"),
        _ = stdin_closed => tracing::info!("stdin closed"),
    }
    tracing::info!(stats = ?mesh.stats(), "stopping");
    mesh.shutdown().await;
    // The blocking stdin reader cannot be cancelled; leave without waiting for it.
    std::process::exit(0);
}
