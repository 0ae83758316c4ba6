//! [`SoftState`]: what the leader knows from heartbeats and keeps only in memory (rebuilt after
//! a failover): each node's last heartbeat time and live usage. Heartbeat intake is one hash
//! map insert (plus moving the per-workstation vector), so that 10,000 hosts at 1 Hz cost a few
//! milliseconds of CPU per second (see the `heartbeat_intake` benchmark).

use std::collections::BTreeMap;
use std::collections::HashMap;

use serde::Deserialize;
use serde::Serialize;

use crate::command::ObservedOffsets;
use crate::command::PlacementHints;
use crate::model::NodeId;
use crate::model::Resources;
use crate::model::WorkstationId;

/// Most workstations reported in one heartbeat; extra entries are dropped at intake.
pub const WORKSTATIONS_PER_HEARTBEAT_MAX: usize = 4_096;

/// What a workstation's node observes about it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct WorkstationUsage {
    /// The workstation.
    pub id: WorkstationId,
    /// The generation the node runs it under.
    pub generation: u64,
    /// CPU used (millicores, averaged over the heartbeat interval).
    pub cpu_used_millis: u64,
    /// Memory used.
    pub memory_used_bytes: u64,
    /// Next log offset (one past the last byte written): used for log continuity.
    pub log_offset_next: u64,
    /// Observed state as text (`running`, `stopped`, ...), passed through to the API.
    pub state: String,
}

/// One heartbeat from a node.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct Heartbeat {
    /// Total CPU and memory used on the host.
    pub used: Resources,
    /// Load average × 1000.
    pub load_milli: u64,
    /// Per-workstation usage.
    pub workstations: Vec<WorkstationUsage>,
}

/// The leader's view of one node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeLive {
    /// Monotonic time of the last heartbeat (or of the leader's start, for a fresh grace).
    pub last_heartbeat_ms: u64,
    /// The last heartbeat, if any arrived since this leader started.
    pub last: Option<Heartbeat>,
}

/// Heartbeat times and live usage of every node, at the leader.
#[derive(Clone, Debug, Default)]
pub struct SoftState {
    nodes: HashMap<NodeId, NodeLive>,
}

impl SoftState {
    /// Empty.
    pub fn new() -> Self {
        Self::default()
    }

    /// A new leader: every known node starts with a fresh grace period from `now_ms`, and no
    /// usage until it heartbeats.
    pub fn reset(&mut self, nodes: impl IntoIterator<Item = NodeId>, now_ms: u64) {
        self.nodes.clear();
        for node in nodes {
            self.nodes.insert(
                node,
                NodeLive {
                    last_heartbeat_ms: now_ms,
                    last: None,
                },
            );
        }
    }

    /// Records a heartbeat.
    pub fn record(&mut self, node: NodeId, now_ms: u64, mut heartbeat: Heartbeat) {
        heartbeat
            .workstations
            .truncate(WORKSTATIONS_PER_HEARTBEAT_MAX);
        let live = self.nodes.entry(node).or_insert(NodeLive {
            last_heartbeat_ms: now_ms,
            last: None,
        });
        live.last_heartbeat_ms = live.last_heartbeat_ms.max(now_ms);
        live.last = Some(heartbeat);
    }

    /// Starts tracking a node (e.g. just registered) with a fresh grace, if not tracked.
    pub fn track(&mut self, node: NodeId, now_ms: u64) {
        self.nodes.entry(node).or_insert(NodeLive {
            last_heartbeat_ms: now_ms,
            last: None,
        });
    }

    /// Stops tracking a node (left, or marked down).
    pub fn forget(&mut self, node: NodeId) {
        self.nodes.remove(&node);
    }

    /// The view of one node.
    pub fn get(&self, node: NodeId) -> Option<&NodeLive> {
        self.nodes.get(&node)
    }

    /// Every tracked node.
    pub fn iter(&self) -> impl Iterator<Item = (&NodeId, &NodeLive)> {
        self.nodes.iter()
    }

    /// Nodes whose last heartbeat is more than `grace_ms` before `now_ms`, in id order.
    pub fn expired(&self, now_ms: u64, grace_ms: u64) -> Vec<NodeId> {
        let mut expired: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|(_, live)| now_ms.saturating_sub(live.last_heartbeat_ms) > grace_ms)
            .map(|(id, _)| *id)
            .collect();
        expired.sort_unstable();
        expired
    }

    /// Placement hints: free memory per node that has reported usage, given capacities.
    pub fn hints(&self, capacity: impl Fn(NodeId) -> Option<Resources>) -> PlacementHints {
        let mut headroom = BTreeMap::new();
        for (node, live) in &self.nodes {
            if let (Some(heartbeat), Some(capacity)) = (&live.last, capacity(*node)) {
                headroom.insert(
                    *node,
                    capacity
                        .memory_bytes
                        .saturating_sub(heartbeat.used.memory_bytes),
                );
            }
        }
        PlacementHints { headroom }
    }

    /// Last reported log offsets of the workstations on the given nodes.
    pub fn observed_offsets(&self, nodes: &[NodeId]) -> ObservedOffsets {
        let mut observed = ObservedOffsets::default();
        for node in nodes {
            if let Some(heartbeat) = self.nodes.get(node).and_then(|live| live.last.as_ref()) {
                for ws in &heartbeat.workstations {
                    let entry = observed.log_offset_next.entry(ws.id).or_insert(0);
                    *entry = (*entry).max(ws.log_offset_next);
                }
            }
        }
        observed
    }
}
