//! Shared test helpers: an echo RPC handler, an in-memory admission (the leader's role), and
//! node start-up on loopback.
#![allow(dead_code)] // Each test binary uses a different subset.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use shoal_mesh::admission::{decide, AdmissionDecision, IdentityStatus};
use shoal_mesh::mesh_addr::allocate_mesh_addr;
use shoal_mesh::{
    Admission, JoinAccepted, JoinCandidate, JoinRefusal, Mesh, MeshConfig, NodePublicKey, PeerInfo,
    PeerSpec, RpcHandler, StreamReceiver, StreamSender, TokenRecord, TransportLimits,
};

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,quinn=warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// Answers `echo <request> from <mesh addr>`; streams echo every frame back, after the opening.
pub struct EchoHandler;

#[async_trait::async_trait]
impl RpcHandler for EchoHandler {
    async fn handle(&self, from: PeerInfo, request: Bytes) -> Bytes {
        let mut answer = b"echo ".to_vec();
        answer.extend_from_slice(&request);
        answer.extend_from_slice(format!(" from {}", from.mesh_addr).as_bytes());
        Bytes::from(answer)
    }

    async fn handle_stream(
        &self,
        _from: PeerInfo,
        open: Bytes,
        mut sender: StreamSender,
        mut receiver: StreamReceiver,
    ) {
        if sender.send(&open).await.is_err() {
            return;
        }
        while let Ok(Some(frame)) = receiver.recv().await {
            if sender.send(&frame).await.is_err() {
                return;
            }
        }
        sender.finish();
    }
}

pub fn mesh_ip(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 77, 0, n)
}

pub fn quick_limits() -> TransportLimits {
    TransportLimits {
        connect_timeout_ms: 2_000,
        request_timeout_ms: 4_000,
        idle_timeout_ms: 6_000,
        peer_silence_ms_max: 250,
        dial_attempt_ms: 500,
    }
}

pub async fn start_userspace(dir: &Path, listen: SocketAddr, mesh_addr: Ipv4Addr) -> Mesh {
    start_userspace_with(dir, listen, mesh_addr, quick_limits()).await
}

pub async fn start_userspace_with(
    dir: &Path,
    listen: SocketAddr,
    mesh_addr: Ipv4Addr,
    limits: TransportLimits,
) -> Mesh {
    let mut config = MeshConfig::new(dir, listen, mesh_addr);
    config.limits = limits;
    Mesh::start(config, Arc::new(EchoHandler))
        .await
        .expect("mesh starts")
}

pub fn spec_of(mesh: &Mesh) -> PeerSpec {
    PeerSpec {
        public_key: mesh.public_key(),
        endpoint: Some(mesh.local_udp_addr()),
        mesh_addr: mesh.mesh_addr(),
    }
}

/// Waits for `request` to succeed, up to `timeout` (events over the network have no other
/// completion signal than the answer itself).
pub async fn request_eventually(
    mesh: &Mesh,
    to: Ipv4Addr,
    body: &'static [u8],
    timeout: Duration,
) -> Bytes {
    let transport = mesh.transport();
    tokio::time::timeout(timeout, async {
        loop {
            match transport.request(to, Bytes::from_static(body)).await {
                Ok(answer) => return answer,
                Err(e) => tracing::info!(error = %e, "request not through yet"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("request succeeds in time")
}

/// The leader's side of admission, in memory: token records, members, removed identities,
/// decided with the pure `decide` and addresses from `allocate_mesh_addr`.
pub struct TestAdmission {
    pub state: Mutex<AdmissionState>,
}

pub struct AdmissionState {
    pub tokens: HashMap<String, TokenRecord>,
    pub members: HashMap<NodePublicKey, (u64, PeerSpec)>,
    pub removed: HashSet<NodePublicKey>,
    pub admitted_count: u32,
    pub now_ms: u64,
}

impl TestAdmission {
    pub fn new(member: PeerSpec) -> Arc<Self> {
        let mut members = HashMap::new();
        members.insert(member.public_key, (1, member));
        Arc::new(Self {
            state: Mutex::new(AdmissionState {
                tokens: HashMap::new(),
                members,
                removed: HashSet::new(),
                admitted_count: 0,
                now_ms: shoal_mesh::clock::unix_ms(),
            }),
        })
    }
}

#[async_trait::async_trait]
impl Admission for TestAdmission {
    async fn admit(&self, candidate: JoinCandidate) -> Result<JoinAccepted, JoinRefusal> {
        let mut state = self.state.lock();
        let identity = if state.removed.contains(&candidate.public_key) {
            IdentityStatus::Removed
        } else if state.members.contains_key(&candidate.public_key) {
            IdentityStatus::Member
        } else {
            IdentityStatus::Unknown
        };
        let now_ms = state.now_ms;
        let decision = decide(
            state.tokens.get(&candidate.token_id),
            &candidate,
            identity,
            now_ms,
        );
        let node_id = match decision {
            AdmissionDecision::Refuse(refusal) => return Err(refusal),
            AdmissionDecision::AlreadyMember => state.members[&candidate.public_key].0,
            AdmissionDecision::AdmitNew => {
                let taken: BTreeSet<Ipv4Addr> =
                    state.members.values().map(|(_, s)| s.mesh_addr).collect();
                let addr = allocate_mesh_addr("10.77.0.0/16".parse().unwrap(), &taken)
                    .ok_or_else(|| JoinRefusal::Unavailable("overlay full".into()))?;
                if let Some(record) = state.tokens.get_mut(&candidate.token_id) {
                    record.consume();
                }
                state.admitted_count += 1;
                let node_id = state.members.len() as u64 + 1;
                let spec = PeerSpec {
                    public_key: candidate.public_key,
                    endpoint: Some(candidate.endpoint),
                    mesh_addr: addr,
                };
                state.members.insert(candidate.public_key, (node_id, spec));
                node_id
            }
        };
        let own = state.members[&candidate.public_key].1.mesh_addr;
        Ok(JoinAccepted {
            node_id,
            cluster_id: "test-cluster".into(),
            mesh_addr: own,
            mesh_prefix_len: 16,
            peers: state.members.values().map(|(_, s)| s.clone()).collect(),
            extra: vec![],
        })
    }
}
