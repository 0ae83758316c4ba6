//! Draining and leaving: the thin drivers around [`shoal_raft::drain`]'s pure planner.
//!
//! - [`drain_loop`]: on the leader, every [`DRAIN_TICK_MS`], commits the cluster's next useful
//!   `DrainStep` ([`shoal_raft::drain::next_step`]): a draining node's workstations move one by
//!   one (each with the next generation, so its restart policies apply on the new node), and a
//!   removed node that is empty becomes `left`. A step that would be refused (no room
//!   elsewhere) is not proposed; the loop waits for room.
//! - [`leave_for_shutdown`]: on SIGTERM, the node marks itself `draining` and moves its own
//!   workstations away (same planner, back to back), then stops the ones that moved, before
//!   the agent hands over Raft leadership and stops. It writes [`LEFT_FOR_SHUTDOWN_FILE`] in
//!   the data dir first, so that [`resume_after_restart`] makes it `ready` again when it comes
//!   back (an admin's drain, made before, is left alone).
//!
//! A whole cluster stopped at once (`shoal dev`'s Ctrl-C) must not shuffle workstations among
//! nodes that are all leaving: a leaving node waits [`LEAVE_SETTLE_MS`] after marking itself
//! draining, so that peers stopping at the same moment have marked themselves too, and the
//! planner finds no ready node to move to (`Blocked`): nothing moves.

use std::sync::Arc;
use std::time::Duration;

use shoal_raft::command::{ObservedOffsets, PlacementHints};
use shoal_raft::drain::{self, NodePlan};
use shoal_raft::model::{NodeId, NodeState};
use shoal_raft::{Action, Command};
use tracing::{debug, info, warn};

use super::Agent;
use crate::mesh_rpc::forward_write;

/// Period of the leader's drain loop: at most one `DrainStep` per tick, cluster-wide.
pub const DRAIN_TICK_MS: u64 = 500;
/// Written in the data dir when a node drains itself for a shutdown.
pub const LEFT_FOR_SHUTDOWN_FILE: &str = "left-for-shutdown";
/// How long a leaving node waits after marking itself draining before it moves anything.
pub const LEAVE_SETTLE_MS: u64 = 500;
/// How long one write of the leave sequence may take (a cluster without quorum fails fast).
const LEAVE_WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a moved workstation may take to show up as moved in this node's replica.
const LEAVE_APPLY_WAIT: Duration = Duration::from_secs(2);
/// How often a restarted node tries to report ready (every 500 ms: about 2 minutes).
const RESUME_ATTEMPTS_MAX: u32 = 240;

/// The leader's drain driver; runs for the agent's lifetime and acts only while this node
/// leads and is not shutting down.
pub async fn drain_loop(agent: Arc<Agent>) {
    let tick = Duration::from_millis(DRAIN_TICK_MS);
    let mut blocked_logged: Option<(NodeId, String)> = None;
    loop {
        tokio::time::sleep(tick).await;
        if agent
            .shutting_down
            .load(std::sync::atomic::Ordering::Acquire)
        {
            continue;
        }
        // Only the leader drives drains (a worker-only node never leads).
        let own = agent.raft.id();
        if agent.raft.status().leader != Some(own) {
            continue;
        }
        let hints = leader_hints(&agent);
        let (next, blocked) = agent.raft.read(|state| {
            let blocked = state
                .nodes
                .values()
                .filter(|node| node.state == NodeState::Draining)
                .find_map(|node| match drain::node_plan(state, node.id, &hints) {
                    NodePlan::Blocked { refusal, .. } => Some((node.id, refusal.to_string())),
                    _ => None,
                });
            (drain::next_step(state, &hints), blocked)
        });
        if blocked != blocked_logged {
            if let Some((node, why)) = &blocked {
                info!(node, reason = %why, "drain waits: the next workstation fits nowhere else");
            }
            blocked_logged = blocked;
        }
        let Some((node, plan)) = next else {
            continue;
        };
        let observed = agent
            .raft
            .with_soft_state(|soft| soft.observed_offsets(&[node]));
        let command = Command::new(
            crate::clock::now_unix_ms(),
            "system",
            Action::DrainStep {
                node,
                hints,
                observed,
            },
        );
        match forward_write(&agent.raft, &agent.transport, command).await {
            Ok(Ok(_)) => info!(node, ?plan, "drain step committed"),
            Ok(Err(refusal)) => debug!(node, reason = %refusal, "drain step refused"),
            Err(err) => debug!(node, error = %err, "drain step not committed"),
        }
    }
}

/// Live headroom hints from the leader's soft state (empty elsewhere).
fn leader_hints(agent: &Agent) -> PlacementHints {
    let capacities = agent.raft.read(|state| {
        state
            .nodes
            .values()
            .map(|node| (node.id, node.capacity))
            .collect::<std::collections::BTreeMap<_, _>>()
    });
    agent
        .raft
        .with_soft_state(|soft| soft.hints(|id| capacities.get(&id).copied()))
}

/// What [`leave_for_shutdown`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaveReport {
    /// Workstations moved to other nodes.
    pub moved: usize,
    /// Workstations still placed here (nowhere to go, no quorum, or out of time): they are
    /// stopped with the node and re-placed by the failure detector after the grace.
    pub left_here: usize,
}

/// On SIGTERM: marks this node `draining` (unless it already is, or there is no other ready
/// worker to move to), moves its workstations away one by one until none can move or
/// `deadline` passes, and stops the ones that moved. Never fails: whatever could not move is
/// stopped with the node and re-placed after the heartbeat grace, as for a lost node.
pub async fn leave_for_shutdown(agent: &Agent, deadline: Duration) -> LeaveReport {
    let started = crate::clock::monotonic_now();
    let own = agent.raft.id();
    let (own_state, other_ready_workers) = agent.raft.read(|state| {
        (
            state.nodes.get(&own).map(|node| node.state),
            state
                .nodes
                .values()
                .filter(|node| {
                    node.id != own && node.roles.worker && node.state == NodeState::Ready
                })
                .count(),
        )
    });
    let hosted = || agent.raft.read(|state| state.workstations_on(own).count());
    match own_state {
        Some(NodeState::Ready) if other_ready_workers > 0 => {
            let marker = agent.config.data_dir.join(LEFT_FOR_SHUTDOWN_FILE);
            if let Err(err) = std::fs::write(&marker, b"drained itself for a shutdown\n") {
                warn!(error = %err, "could not record the shutdown drain; staying ready");
                return LeaveReport {
                    moved: 0,
                    left_here: hosted(),
                };
            }
            if !propose(agent, Action::DrainNode { node: own }).await {
                let _ = std::fs::remove_file(&marker);
                return LeaveReport {
                    moved: 0,
                    left_here: hosted(),
                };
            }
            // The plan below reads this node's replica: wait until it shows the drain.
            let shown = wait_visible(agent, |state| {
                state
                    .nodes
                    .get(&own)
                    .is_some_and(|node| node.state == NodeState::Draining)
            })
            .await;
            if !shown {
                warn!("leaving: the drain is not visible here yet");
            }
            info!("leaving: marked draining, no new placements here");
            tokio::time::sleep(Duration::from_millis(LEAVE_SETTLE_MS)).await;
        }
        Some(NodeState::Draining) => {}
        _ => {
            return LeaveReport {
                moved: 0,
                left_here: hosted(),
            }
        }
    }
    let steps_max = hosted().saturating_add(1);
    let mut moved = 0;
    for _ in 0..steps_max {
        if started.elapsed() >= deadline {
            warn!(
                ?deadline,
                "leaving: out of time, the rest stays for the failure detector"
            );
            break;
        }
        let plan = agent
            .raft
            .read(|state| drain::node_plan(state, own, &PlacementHints::default()));
        let NodePlan::Move {
            workstation,
            target,
        } = plan
        else {
            if let NodePlan::Blocked { refusal, .. } = &plan {
                info!(reason = %refusal, "leaving: the next workstation fits nowhere else");
            }
            break;
        };
        let observed = own_offsets(agent).await;
        let step = Action::DrainStep {
            node: own,
            hints: PlacementHints::default(),
            observed,
        };
        if !propose(agent, step).await {
            break;
        }
        // Wait until this replica sees the move, so the next plan starts from it.
        let seen = wait_visible(agent, |state| {
            state
                .workstations
                .get(&workstation)
                .is_none_or(|ws| ws.node != Some(own))
        })
        .await;
        if !seen {
            warn!(%workstation, "leaving: the move is not visible here yet");
            break;
        }
        moved += 1;
        info!(%workstation, to = target, "leaving: workstation re-placed");
    }
    // Stop what moved now (the reconcile loop would too), before the node stops the rest.
    super::placement::reconcile(agent).await;
    let report = LeaveReport {
        moved,
        left_here: hosted(),
    };
    info!(
        moved = report.moved,
        left_here = report.left_here,
        "leaving: done"
    );
    report
}

/// Waits (at most [`LEAVE_APPLY_WAIT`]) until this node's view of the committed state satisfies
/// `visible`: a write the leader applied reaches a follower's replica a moment later.
async fn wait_visible(agent: &Agent, visible: impl Fn(&shoal_raft::ClusterState) -> bool) -> bool {
    let mut applied = agent.raft.subscribe_applied();
    let waiting = async {
        loop {
            if agent.raft.read(&visible) {
                return true;
            }
            if applied.changed().await.is_err() {
                return false;
            }
        }
    };
    tokio::time::timeout(LEAVE_APPLY_WAIT, waiting)
        .await
        .unwrap_or(false)
}

/// The log offsets this node's workstations reached: the new generation's log starts above.
async fn own_offsets(agent: &Agent) -> ObservedOffsets {
    let mut observed = ObservedOffsets::default();
    for usage in super::placement::observe_hosted(agent).await {
        observed
            .log_offset_next
            .insert(usage.id, usage.log_offset_next);
    }
    observed
}

/// Proposes one command of the leave sequence, bounded; true when it was applied.
async fn propose(agent: &Agent, action: Action) -> bool {
    let command = Command::new(
        crate::clock::now_unix_ms(),
        format!("node-{}", agent.raft.id()),
        action,
    );
    let name = command.action.name();
    match tokio::time::timeout(
        LEAVE_WRITE_TIMEOUT,
        forward_write(&agent.raft, &agent.transport, command),
    )
    .await
    {
        Ok(Ok(Ok(_))) => true,
        Ok(Ok(Err(refusal))) => {
            warn!(command = name, reason = %refusal, "leaving: refused");
            false
        }
        Ok(Err(err)) => {
            warn!(command = name, error = %err, "leaving: not committed");
            false
        }
        Err(_) => {
            warn!(command = name, timeout = ?LEAVE_WRITE_TIMEOUT, "leaving: no commit in time");
            false
        }
    }
}

/// After a restart: a node that drained itself for its shutdown reports `ready` again (a node
/// the cluster marked `down` meanwhile is made ready by the heartbeat loop instead, once its
/// stale workstations are stopped). Retries until a leader takes it; then forgets the marker.
pub async fn resume_after_restart(agent: Arc<Agent>) {
    let marker = agent.config.data_dir.join(LEFT_FOR_SHUTDOWN_FILE);
    if !marker.exists() {
        return;
    }
    let own = agent.raft.id();
    for attempt in 1..=RESUME_ATTEMPTS_MAX {
        let state = agent.raft.read(|state| {
            state
                .nodes
                .get(&own)
                .map(|node| (node.state, node.removing))
        });
        match state {
            Some((NodeState::Draining, false)) => {
                let command = Command::new(
                    crate::clock::now_unix_ms(),
                    format!("node-{own}"),
                    Action::MarkNodeReady {
                        node: own,
                        hints: PlacementHints::default(),
                    },
                );
                match forward_write(&agent.raft, &agent.transport, command).await {
                    Ok(Ok(_)) => {
                        info!("back after a shutdown drain: ready again");
                        break;
                    }
                    Ok(Err(refusal)) => {
                        warn!(reason = %refusal, "ready refused after a shutdown drain");
                        break;
                    }
                    Err(err) => debug!(attempt, error = %err, "ready not committed yet"),
                }
            }
            // Down: the heartbeat loop reports ready once stale workstations are stopped.
            Some((NodeState::Down, _)) | None => {}
            // Ready already, left, or being removed (an admin's decision since): done.
            Some(_) => break,
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    if let Err(err) = std::fs::remove_file(&marker) {
        warn!(error = %err, "could not remove the shutdown drain marker");
    }
}

/// True when another server node is `ready`: a leader that stops hands its leadership over
/// only then (when the whole cluster stops at once, every other server is leaving too and an
/// attempt would only delay the stop).
pub fn another_server_is_ready(agent: &Agent) -> bool {
    let own = agent.raft.id();
    agent.raft.read(|state| {
        state
            .nodes
            .values()
            .any(|node| node.id != own && node.roles.server && node.state == NodeState::Ready)
    })
}
