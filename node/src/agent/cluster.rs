//! The node's place in the cluster: its userspace WireGuard mesh and its Raft node (redb under
//! `<data_dir>/raft`), joined by [`crate::mesh_rpc`] (Raft RPCs and forwarded writes over mesh
//! QUIC). The bootstrapping node creates a one-node Raft cluster with itself registered as
//! server and worker; a restart with the same data dir reopens the same mesh identity and the
//! same Raft store, so the node comes back as itself with its state.
//!
//! Two small drivers run beside Raft: the peer loop (the mesh's peer list follows the committed
//! node list) and the heartbeat loop (every `heartbeat_interval_ms`, live usage and the observed
//! state of every hosted workstation into the leader's soft state, so that the failure detector
//! sees this node alive and other nodes can show its workstations; each acknowledged heartbeat
//! renews the node's lease, see [`super::fencing`]).
//!
//! A removed node stays out. When a node learns that it was removed from the cluster
//! (`DELETE /v1/nodes/{id}` committed `RemoveNode`): the leader refused its heartbeat as
//! removed, or its own applied state says so, at start or while running; it writes
//! [`REMOVED_FILE`] in its data dir, stops its workstations, prints one line on stderr and
//! exits with [`REMOVED_EXIT_CODE`]. A restart on the
//! same data dir exits the same way at once, before it starts its mesh or Raft. The machine
//! comes back only as a new node: empty data dir, new join token (the cluster refuses the old
//! identity, and node ids are never reused). A removed node that cannot reach the cluster any
//! more (the members dropped its mesh peer once it left) cannot learn it: it stays up without
//! a leader, not ready, its packets dropped, until it is stopped.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use shoal_mesh::{
    join_cluster, DataPlane, Identity, JoinOptions, JoinToken, Mesh, MeshConfig, PeerSpec,
    DEFAULT_IFNAME, DEFAULT_QUIC_PORT,
};
use shoal_raft::command::PlacementHints;
use shoal_raft::command::{Admission, NodeRegistration};
use shoal_raft::drain::is_removed;
use shoal_raft::model::{ClusterSettings, NodeState, Resources, Roles};
use shoal_raft::soft_state::Heartbeat;
use shoal_raft::{Action, Command, NodeAddr, NodeId, RaftConfig, RaftNode};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::admission::{peers_following, peers_from_state, JoinExtra, RaftAdmission};
use super::fencing;
use super::state_view::StateView;
use super::usage::Usage;
use super::worker_mirror::WorkerMirror;
use super::Agent;
use crate::config::{AgentConfig, MeshMode};
use crate::mesh_rpc::{
    forward_write, send_heartbeat, HeartbeatReply, MeshRaftTransport, NodeRpcHandler,
};

/// The file in the data dir that remembers this node's Raft id and mesh address.
const MEMBER_FILE: &str = "member.json";

/// How long a restarting node waits for a Raft leader before it serves the API anyway.
const LEADER_WAIT_AT_START: Duration = Duration::from_secs(5);

/// How often a worker-only node asks the leader whether its mirror of the state is current.
const MIRROR_SYNC_PERIOD: Duration = Duration::from_millis(250);

/// How many times a node tries to commit its capacity (every 500 ms: about 2 minutes).
const INFO_UPDATE_ATTEMPTS_MAX: u32 = 240;

/// Exit code of `shoal agent` when the node was removed from the cluster (distinct from 1, a
/// failure worth a restart: a supervisor should not restart it, e.g. systemd's
/// `RestartPreventExitStatus=10`).
pub const REMOVED_EXIT_CODE: i32 = 10;

/// Written in the data dir once the node knows it was removed; a start that finds it exits
/// with [`REMOVED_EXIT_CODE`].
pub const REMOVED_FILE: &str = "removed";

/// How long a node told by the leader that it was removed waits for its replica to apply it.
const REMOVED_APPLY_WAIT: Duration = Duration::from_secs(2);

/// How long a removed node that holds the configuration leaving it out waits for it to be
/// applied before it exits.
const REMOVED_ACK_WAIT: Duration = Duration::from_secs(1);

/// How long a removed node that is still a Raft voter keeps taking part in Raft (running no
/// workstation, serving no API) so that the membership change removing it can commit: in a
/// cluster of two voters that change needs its vote.
const REMOVED_VOTER_WAIT: Duration = Duration::from_secs(30);

/// What a node must remember about itself to come back as the same member after a restart.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MemberFile {
    /// Raft node id (1 for the bootstrapping node).
    pub raft_id: NodeId,
    /// Its address in the overlay range.
    pub mesh_addr: Ipv4Addr,
    /// Prefix length of the overlay range.
    pub mesh_prefix_len: u8,
    /// True for a node the cluster admitted as a worker only: it holds no Raft log and
    /// mirrors the leader's state ([`WorkerMirror`]).
    #[serde(default)]
    pub worker_only: bool,
    /// The peers the join answer named: a restart before the log has caught up with the
    /// join starts with them, since its replayed node list can lack the leader.
    #[serde(default)]
    pub join_peers: Vec<PeerSpec>,
}

impl MemberFile {
    fn path(data_dir: &Path) -> PathBuf {
        data_dir.join(MEMBER_FILE)
    }

    /// Reads the member file, if the node was started before.
    pub fn load(data_dir: &Path) -> anyhow::Result<Option<MemberFile>> {
        let path = Self::path(data_dir);
        match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text)
                .map(Some)
                .with_context(|| format!("{} is corrupt", path.display())),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(err).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Writes the member file atomically (temp file, fsync, rename).
    pub fn store(&self, data_dir: &Path) -> anyhow::Result<()> {
        use std::io::Write as _;
        let path = Self::path(data_dir);
        let temp = path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(self)?;
        let mut file =
            std::fs::File::create(&temp).with_context(|| format!("writing {}", temp.display()))?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&temp, &path).with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }
}

/// The running mesh and Raft node of this agent.
pub struct ClusterNode {
    /// The userspace WireGuard mesh (shared with the peer loop).
    pub mesh: Arc<Mesh>,
    /// The committed state this node sees: its Raft node, or a mirror on a worker-only node.
    pub raft: StateView,
    /// The serving side of node-to-node RPCs.
    pub handler: Arc<NodeRpcHandler>,
    /// The member file.
    pub member: MemberFile,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for ClusterNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterNode")
            .field("member", &self.member)
            .finish_non_exhaustive()
    }
}

/// The settings a bootstrapping node commits.
fn settings_of(config: &AgentConfig) -> ClusterSettings {
    ClusterSettings {
        voter_target: config.voter_target,
        heartbeat_grace_ms: config.heartbeat_grace_ms,
        tenant_workstations_max: config.tenant_workstations_max,
        ..ClusterSettings::default()
    }
}

/// The first address of the overlay range: the bootstrapping node's mesh address (the state
/// machine hands out host offsets from 1).
fn first_mesh_addr(settings: &ClusterSettings) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(settings.overlay_addr).saturating_add(1))
}

/// The mesh data plane the agent was asked for. `tun` creates the interface
/// `shoal0` ([`DEFAULT_IFNAME`]) in the agent's network namespace (one Shoal node per namespace).
fn data_plane_of(mode: MeshMode) -> DataPlane {
    match mode {
        MeshMode::Tun => DataPlane::Tun {
            ifname: DEFAULT_IFNAME.to_string(),
        },
        MeshMode::Userspace => DataPlane::Userspace,
    }
}

fn roles_of(config: &AgentConfig) -> Roles {
    Roles {
        server: config.role_server,
        worker: config.role_worker,
    }
}

impl ClusterNode {
    /// Starts the mesh and Raft. With a member file it reopens the node it names; otherwise
    /// `--join TOKEN` proves the token to the member it names and starts as the node the
    /// cluster admitted, and `--bootstrap` creates the one-node cluster `cluster_id`.
    pub async fn start(
        config: &AgentConfig,
        cluster_id: &str,
        usage: &Usage,
    ) -> anyhow::Result<ClusterNode> {
        let settings = settings_of(config);
        let mut initial_peers: Vec<PeerSpec> = Vec::new();
        let (member, fresh) = match MemberFile::load(&config.data_dir)? {
            Some(member) => {
                if config.data_dir.join(REMOVED_FILE).exists() {
                    exit_removed(member.raft_id);
                }
                if !member.worker_only {
                    initial_peers = member.join_peers.clone();
                }
                (member, false)
            }
            None if config.join.is_some() => {
                let text = config.join.as_deref().unwrap_or_default();
                let token = JoinToken::parse(text).context("reading the join token")?;
                let identity = Identity::load_or_create(&config.data_dir.join("mesh"))
                    .context("creating the node's mesh identity")?;
                info!(member = ?token.member_endpoints, "joining the cluster");
                let accepted = join_cluster(&identity, &token, &JoinOptions::new(config.listen))
                    .await
                    .context("joining the cluster")?;
                // The token's roles are what the cluster committed; the member says which.
                let worker_only = JoinExtra::parse(&accepted.extra)
                    .map_or(!config.role_server, |extra| !extra.roles.server);
                if worker_only == config.role_server {
                    warn!(
                        worker_only,
                        "the join token's roles differ from --role: the token's roles apply"
                    );
                }
                info!(node_id = accepted.node_id, mesh_addr = %accepted.mesh_addr, worker_only, "admitted");
                initial_peers = accepted.peers;
                let member = MemberFile {
                    raft_id: accepted.node_id,
                    mesh_addr: accepted.mesh_addr,
                    mesh_prefix_len: accepted.mesh_prefix_len,
                    worker_only,
                    join_peers: initial_peers.clone(),
                };
                member.store(&config.data_dir)?;
                (member, false)
            }
            None if config.bootstrap => (
                MemberFile {
                    raft_id: 1,
                    mesh_addr: first_mesh_addr(&settings),
                    mesh_prefix_len: settings.overlay_prefix_len,
                    worker_only: false,
                    join_peers: Vec::new(),
                },
                true,
            ),
            None => bail!(
                "{} holds no cluster member yet: pass --bootstrap",
                config.data_dir.display()
            ),
        };
        let handler = NodeRpcHandler::new();
        let mut mesh_config = MeshConfig::new(
            config.data_dir.join("mesh"),
            config.listen,
            member.mesh_addr,
        );
        mesh_config.mesh_prefix_len = member.mesh_prefix_len;
        mesh_config.data_plane = data_plane_of(config.mesh);
        let mesh = Mesh::start(mesh_config, handler.clone())
            .await
            .with_context(|| format!("starting the mesh on {}", config.listen))?;
        if member.worker_only {
            return Self::start_worker_only(member, mesh, handler, &initial_peers, config).await;
        }
        let raft_config = RaftConfig {
            heartbeat_interval_ms: config.raft_heartbeat_interval_ms,
            election_timeout_ms_min: config.raft_election_timeout_ms_min,
            election_timeout_ms_max: config.raft_election_timeout_ms_max,
            ..RaftConfig::new(member.raft_id)
        };
        let raft = RaftNode::start(
            raft_config,
            &config.data_dir.join("raft"),
            Arc::new(MeshRaftTransport::new(mesh.transport())),
            Arc::new(shoal_raft::clock::SystemClock::default()),
        )
        .await
        .context("starting raft")?;
        handler.set_raft(raft.clone());
        if !initial_peers.is_empty() {
            mesh.set_peers(&initial_peers)
                .context("adding the cluster's members as peers")?;
        }
        let mesh = Arc::new(mesh);
        // The peers follow the node list from now on, before the wait for a leader below: a
        // restarted server has replayed its log, and must reach every voter it knows to elect a
        // leader when the one it followed is gone. A server whose stored vote names no leader
        // (it had campaigned) waits here, and with only the peers its join answer named (none
        // for the bootstrap node) it reached no voter that joined later (chaos: a follower
        // restarted while the leader was cut off, then the leader killed: no quorum until the
        // killed leader came back, 2.5 s).
        let peer_task = tokio::spawn(peer_loop(
            StateView::Raft(raft.clone()),
            Arc::clone(&mesh),
            initial_peers,
        ));
        mesh.set_admission(Arc::new(RaftAdmission {
            view: StateView::Raft(raft.clone()),
            transport: mesh.transport(),
        }));
        if fresh {
            let registration = NodeRegistration {
                admission: Admission::Bootstrap,
                wg_public_key: mesh.public_key().to_base64(),
                endpoint: mesh.local_udp_addr().to_string(),
                rpc_port: DEFAULT_QUIC_PORT,
                api_addr: Some(config.api.to_string()),
                roles: roles_of(config),
                capacity: Resources::new(usage.capacity_cpu_millis, usage.capacity_memory_bytes),
                reserve: Resources::new(
                    config.node_reserve_cpu_millis,
                    config.node_reserve_memory_bytes,
                ),
            };
            raft.bootstrap(
                NodeAddr::new(format!("{}:{DEFAULT_QUIC_PORT}", member.mesh_addr)),
                cluster_id,
                settings,
                registration,
            )
            .await
            .context("bootstrapping the raft cluster")?;
            member.store(&config.data_dir)?;
            info!(raft_id = member.raft_id, mesh_addr = %member.mesh_addr, "raft cluster bootstrapped");
        } else {
            info!(raft_id = member.raft_id, mesh_addr = %member.mesh_addr, "raft member started");
            // Answer the first API request with a known leader where one can be elected
            // quickly; a member of a cluster without quorum goes on without one.
            let mut metrics = raft.metrics();
            let elected = tokio::time::timeout(
                LEADER_WAIT_AT_START,
                metrics.wait_for(|m| m.current_leader.is_some()),
            )
            .await;
            if !matches!(elected, Ok(Ok(_))) {
                warn!("no raft leader known yet; serving without one");
            }
            // Removed while it was away, and its replica caught up with that: never serve.
            if raft.read(|state| is_removed(state, member.raft_id)) {
                record_removed(&config.data_dir, member.raft_id);
                // Nothing runs yet (no workstation, no API); Raft may still need its vote.
                let view = StateView::Raft(raft.clone());
                wait_out_of_voters(&view, member.raft_id).await;
                let _ = raft.shutdown().await;
                exit_removed(member.raft_id);
            }
        }
        Ok(ClusterNode {
            mesh,
            raft: StateView::Raft(raft),
            handler,
            member,
            tasks: vec![peer_task],
        })
    }

    /// A worker-only node: no Raft node (the cluster never makes it a learner or voter, see
    /// `shoal_raft::membership`); its state is a mirror of the leader's, synced over the mesh.
    /// Its mesh handler serves no Raft, writes or heartbeats (it is never asked for them).
    async fn start_worker_only(
        member: MemberFile,
        mesh: Mesh,
        handler: Arc<NodeRpcHandler>,
        initial_peers: &[PeerSpec],
        config: &AgentConfig,
    ) -> anyhow::Result<ClusterNode> {
        let seeds: Vec<Ipv4Addr> = initial_peers.iter().map(|peer| peer.mesh_addr).collect();
        let mirror = Arc::new(WorkerMirror::open(
            member.raft_id,
            member.mesh_addr,
            seeds,
            mesh.transport(),
            &config.data_dir,
        ));
        // Peers: the join answer's members now; a restart's come from the kept mirror.
        let own_key = mesh.public_key().to_base64();
        let mut peers = initial_peers.to_vec();
        if peers.is_empty() {
            peers = mirror.read(|state| peers_from_state(state, &own_key));
        }
        if !peers.is_empty() {
            mesh.set_peers(&peers)
                .context("adding the cluster's members as peers")?;
        }
        let view = StateView::Mirror(Arc::clone(&mirror));
        mesh.set_admission(Arc::new(RaftAdmission {
            view: view.clone(),
            transport: mesh.transport(),
        }));
        // Serve the API with the cluster's keys from the first request on, where a leader
        // answers quickly; otherwise go on with what the mirror kept.
        match tokio::time::timeout(LEADER_WAIT_AT_START, async {
            loop {
                match mirror.sync_once().await {
                    Ok(_) => return,
                    Err(err) => debug!(error = %err, "no leader answered the mirror yet"),
                }
                tokio::time::sleep(MIRROR_SYNC_PERIOD).await;
            }
        })
        .await
        {
            Ok(()) => info!(
                raft_id = member.raft_id,
                mesh_addr = %member.mesh_addr,
                applied = mirror.status().last_applied_index.unwrap_or(0),
                "worker-only node started: state mirrored from the leader"
            ),
            Err(_) => warn!("no leader answered the worker mirror yet; serving what it kept"),
        }
        if mirror.read(|state| is_removed(state, member.raft_id)) {
            record_removed(&config.data_dir, member.raft_id);
            exit_removed(member.raft_id);
        }
        let mut node = ClusterNode {
            mesh: Arc::new(mesh),
            raft: view,
            handler,
            member,
            tasks: Vec::new(),
        };
        node.tasks
            .push(tokio::spawn(mirror.sync_loop(MIRROR_SYNC_PERIOD)));
        node.tasks.push(tokio::spawn(peer_loop(
            node.raft.clone(),
            Arc::clone(&node.mesh),
            peers,
        )));
        Ok(node)
    }

    /// Starts the heartbeat loop ([`heartbeat_loop`]).
    pub fn start_heartbeats(&mut self, agent: Arc<Agent>, period: Duration) {
        self.tasks.push(tokio::spawn(heartbeat_loop(agent, period)));
    }

    /// Commits this node's capacity, reserve, workstation maximum and API address (after a
    /// join, and at every start so that a changed `--api`, host or limit is seen), retrying
    /// until a leader takes it. The maximum is part of the node's committed capacity: the
    /// scheduler places no workstation on a node that hosts that many.
    pub fn start_info_update(&mut self, config: &AgentConfig, usage: &Usage) {
        let raft = self.raft.clone();
        let transport = self.mesh.transport();
        let action = Action::UpdateNodeCapacity {
            node: self.member.raft_id,
            api_addr: Some(config.api.to_string()),
            capacity: Resources::new(usage.capacity_cpu_millis, usage.capacity_memory_bytes),
            reserve: Resources::new(
                config.node_reserve_cpu_millis,
                config.node_reserve_memory_bytes,
            ),
            // `resolve` bounds it to 1..=NODE_WORKSTATIONS_MAX, so it fits a u32.
            workstations_max: u32::try_from(config.workstations_per_node_max)
                .unwrap_or(shoal_raft::command::limits::NODE_WORKSTATIONS_MAX),
        };
        self.tasks.push(tokio::spawn(async move {
            for attempt in 1..=INFO_UPDATE_ATTEMPTS_MAX {
                let command = Command::new(crate::clock::now_unix_ms(), "system", action.clone());
                match forward_write(&raft, &transport, command).await {
                    Ok(Ok(_)) => {
                        info!("node capacity and API address committed");
                        return;
                    }
                    Ok(Err(refusal)) => {
                        warn!(reason = %refusal, "node capacity refused");
                        return;
                    }
                    Err(err) => debug!(attempt, error = %err, "node capacity not committed yet"),
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            warn!("gave up committing this node's capacity and API address");
        }));
    }

    /// Stops the loops, Raft and the mesh.
    pub async fn shutdown(self) {
        for task in &self.tasks {
            task.abort();
        }
        if let Err(err) = self.raft.shutdown().await {
            warn!(error = %err, "raft did not stop cleanly");
        }
        match Arc::try_unwrap(self.mesh) {
            Ok(mesh) => mesh.shutdown().await,
            // A task still holds it (aborted, not yet dropped): dropping it stops the threads.
            Err(_) => debug!("mesh dropped instead of shut down"),
        }
    }
}

/// How long a node back from `down` waits to apply what the leader had applied when it
/// acknowledged, before trying again at the next heartbeat.
const CATCH_UP_WAIT: Duration = Duration::from_secs(5);

/// Longest a heartbeat waits for the observation of the hosted workstations.
const OBSERVE_TIMEOUT: Duration = Duration::from_millis(500);

/// While the lease is not held, heartbeats go out at least this often (a node that starts or
/// comes back gets its lease without waiting a whole period).
const UNLEASED_HEARTBEAT_PERIOD: Duration = Duration::from_millis(200);

/// Every `period`: this node's usage and the observed state of its workstations to the leader
/// (directly when this node leads). An acknowledgement renews the lease (from the time the
/// heartbeat was sent) and, for a node the cluster marked `down`, leads to [`report_ready`].
async fn heartbeat_loop(agent: Arc<Agent>, period: Duration) {
    let id = agent.raft.id();
    loop {
        if agent.raft.read(|state| is_removed(state, id)) {
            leave_removed(&agent, "its replica of the cluster state says so").await;
        }
        let (cpu_millis, memory_bytes) = agent.usage.used();
        // A slow or stuck workstation actor must not hold the heartbeat (and so the lease)
        // back: past the bound, the last observations go out again.
        let workstations =
            tokio::time::timeout(OBSERVE_TIMEOUT, super::placement::observe_hosted(&agent))
                .await
                .unwrap_or_else(|_| {
                    warn!("observing the workstations took too long: last observations sent");
                    agent.observed.snapshot()
                });
        let mut heartbeat = Heartbeat {
            used: Resources::new(cpu_millis, memory_bytes),
            load_milli: 0,
            workstations,
        };
        heartbeat.bound();
        let sent_at_ms = fencing::monotonic_ms();
        let sending = send_heartbeat(&agent.raft, &agent.transport, heartbeat);
        match tokio::time::timeout(period.max(Duration::from_secs(1)), sending).await {
            Ok(HeartbeatReply::Acked { applied_index, .. }) => {
                let own_applied = agent.raft.status().last_applied_index.unwrap_or(0);
                agent.metrics.set_apply_lag(applied_index, own_applied);
                agent.fence.post_ack(fencing::Ack {
                    sent_at_ms,
                    leader_applied_index: applied_index,
                });
                let id = agent.raft.id();
                let down = agent.raft.read(|state| {
                    state
                        .nodes
                        .get(&id)
                        .is_some_and(|node| node.state == NodeState::Down)
                });
                if down {
                    report_ready(&agent, applied_index).await;
                }
            }
            Ok(HeartbeatReply::Refused(why)) => debug!(reason = %why, "heartbeat refused"),
            Ok(HeartbeatReply::Removed { .. }) => {
                leave_removed(&agent, "the leader refused its heartbeat as removed").await;
            }
            Err(_) => debug!("heartbeat timed out"),
        }
        let pause = if agent.fence.may_run() {
            period
        } else {
            period.min(UNLEASED_HEARTBEAT_PERIOD)
        };
        tokio::time::sleep(pause).await;
    }
}

/// Records in the data dir that this node was removed (a restart then exits at once). Best
/// effort: without it, a restart learns it again from the leader or its replica.
fn record_removed(data_dir: &Path, node: NodeId) {
    let text = format!("node-{node} was removed from the cluster\n");
    if let Err(err) = std::fs::write(data_dir.join(REMOVED_FILE), text) {
        warn!(error = %err, "could not record the removal in the data dir");
    }
}

/// Ends the process of a removed node: one line on stderr, [`REMOVED_EXIT_CODE`].
fn exit_removed(node: NodeId) -> ! {
    eprintln!(
        "shoal agent: node-{node} was removed from the cluster and stops for good (exit code \
         {REMOVED_EXIT_CODE}); to bring this machine back, empty its data dir and join with a \
         new token"
    );
    std::process::exit(REMOVED_EXIT_CODE)
}

/// This running node learned that it was removed (`how`): it records it, refuses new work,
/// stops every workstation it hosts (they are re-placed elsewhere by the leader with the next
/// generation, or already were), and exits with [`REMOVED_EXIT_CODE`]. A removed leader does
/// not hand its leadership over (`hand_over_leadership`'s future is not `Send`, and this runs
/// in a spawned task): the other voters elect a new leader after their election timeout.
async fn leave_removed(agent: &Agent, how: &str) -> ! {
    let id = agent.raft.id();
    warn!(
        node = id,
        how, "this node was removed from the cluster: stopping its workstations and exiting"
    );
    agent
        .shutting_down
        .store(true, std::sync::atomic::Ordering::SeqCst);
    record_removed(&agent.config.data_dir, id);
    // Told by the leader: let the replica apply the removal too (bounded), so that it is
    // known here even without the marker file.
    let mut applied = agent.raft.subscribe_applied();
    let _ = tokio::time::timeout(REMOVED_APPLY_WAIT, async {
        while !agent.raft.read(|state| is_removed(state, id)) {
            if applied.changed().await.is_err() {
                return;
            }
        }
    })
    .await;
    // Held until the exit: no reconcile or resume starts a workstation here again.
    let _no_more_starts = agent.reconcile_lock.lock().await;
    agent
        .host
        .shutdown(Duration::from_millis(agent.config.shutdown_grace_ms))
        .await;
    wait_out_of_voters(&agent.raft, id).await;
    exit_removed(id)
}

/// Waits (at most [`REMOVED_VOTER_WAIT`]) until this removed node's vote is no longer needed:
/// the leader removes a removed node from the Raft membership at once, and with two voters
/// the joint configuration of that change cannot commit without this node's acknowledgement.
/// Once this node holds a configuration whose newest voter set leaves it out, it has
/// acknowledged it (or is about to); it then waits a moment ([`REMOVED_ACK_WAIT`]) for that
/// entry to be applied here, which the leader may never tell it (it stops replicating to a
/// removed node). A worker-only node is never a voter.
async fn wait_out_of_voters(view: &StateView, id: NodeId) {
    let Some(raft) = view.as_raft() else {
        return;
    };
    if !in_newest_voters(raft, id).0 {
        return;
    }
    info!(
        node = id,
        "removed: staying a Raft voter until the membership change commits"
    );
    let mut metrics = raft.metrics();
    let waiting = async {
        while in_newest_voters(raft, id).0 {
            if metrics.changed().await.is_err() {
                return;
            }
        }
        let _ = tokio::time::timeout(REMOVED_ACK_WAIT, async {
            while !in_newest_voters(raft, id).1 {
                if metrics.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
    };
    if tokio::time::timeout(REMOVED_VOTER_WAIT, waiting)
        .await
        .is_err()
    {
        warn!(node = id, "removed: still a Raft voter; exiting anyway");
    }
}

/// Whether `id` is a voter of the newest configuration this node holds, and whether that
/// configuration is applied (so committed) here.
fn in_newest_voters(raft: &RaftNode, id: NodeId) -> (bool, bool) {
    let metrics = raft.metrics();
    let m = metrics.borrow();
    let in_newest = m
        .membership_config
        .membership()
        .get_joint_config()
        .last()
        .is_some_and(|voters| voters.contains(&id));
    let applied = m.last_applied.map(|log_id| log_id.index);
    let config_at = m.membership_config.log_id().map(|log_id| log_id.index);
    (in_newest, applied >= config_at)
}

/// A node marked `down` while it was silent (a partition, a pause, a slow join) is heard again:
/// its workstations were re-placed with a newer generation meanwhile. Before it reports
/// `ready` (and can be given work again) it applies what the leader had applied when it
/// acknowledged, so it sees those re-placements, and stops every workstation whose generation
/// has moved on. If anything stale is left, it tries again at the next heartbeat.
async fn report_ready(agent: &Agent, leader_applied_index: u64) {
    let id = agent.raft.id();
    if let Err(err) = agent
        .raft
        .wait_applied(leader_applied_index, CATCH_UP_WAIT)
        .await
    {
        debug!(error = %err, "back from down: not caught up with the leader yet");
        return;
    }
    super::placement::reconcile(agent).await;
    let stale = super::placement::stale_hosted(agent);
    if !stale.is_empty() {
        warn!(workstations = ?stale, "back from down: stale workstations not stopped yet");
        return;
    }
    let command = Command::new(
        crate::clock::now_unix_ms(),
        format!("node-{id}"),
        Action::MarkNodeReady {
            node: id,
            hints: PlacementHints::default(),
        },
    );
    match forward_write(&agent.raft, &agent.transport, command).await {
        Ok(Ok(_)) => info!("back after being marked down: stale workstations stopped, ready again"),
        Ok(Err(refusal)) => warn!(reason = %refusal, "ready refused"),
        Err(err) => debug!(error = %err, "ready not committed yet"),
    }
}

/// Makes the mesh peers follow the applied node list. `initial` are the peers the node was
/// told of (join answer) or started with: those the applied list does not know yet stay peers
/// ([`peers_following`]), so that a node replaying an old log keeps the leader.
async fn peer_loop(raft: StateView, mesh: Arc<Mesh>, initial: Vec<PeerSpec>) {
    let own_key = mesh.public_key().to_base64();
    let mut applied = raft.subscribe_applied();
    let mut last: Option<Vec<PeerSpec>> = None;
    loop {
        // A node that just joined has not received the log yet: its peers are the ones the
        // join answer named until the committed node list reaches it.
        let known = raft.read(|state| !state.nodes.is_empty());
        // Raft members (from the applied membership) keep their peer until they leave Raft.
        let status = raft.status();
        let members: std::collections::BTreeSet<NodeId> =
            status.voters.union(&status.learners).copied().collect();
        let previous = last.as_deref().unwrap_or(&initial);
        let current = raft.read(|state| peers_following(state, &own_key, &members, previous));
        if known && last.as_ref() != Some(&current) {
            match mesh.set_peers(&current) {
                Ok(()) => info!(
                    n_peers = current.len(),
                    "mesh peers follow the committed node list"
                ),
                Err(err) => warn!(error = %err, "could not set the mesh peers"),
            }
            last = Some(current);
        }
        if applied.changed().await.is_err() {
            return;
        }
    }
}
