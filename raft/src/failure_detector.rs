//! [`FailureDetector`]: decides which nodes to mark down, from heartbeat times and a clock
//! reading passed in. Pure; the driver commits its verdicts as `MarkNodesDown`.

use crate::model::NodeId;
use crate::soft_state::Heartbeat;
use crate::soft_state::SoftState;

/// The default heartbeat grace (SPEC: down after 10 s without a heartbeat).
pub const HEARTBEAT_GRACE_MS_DEFAULT: u64 = 10_000;

/// Heartbeat bookkeeping plus the grace rule.
#[derive(Clone, Debug)]
pub struct FailureDetector {
    soft: SoftState,
    grace_ms: u64,
}

impl FailureDetector {
    /// A detector with the given grace and no nodes.
    pub fn new(grace_ms: u64) -> Self {
        Self {
            soft: SoftState::new(),
            grace_ms,
        }
    }

    /// Changes the grace (settings changed).
    pub fn set_grace_ms(&mut self, grace_ms: u64) {
        self.grace_ms = grace_ms;
    }

    /// The grace in use.
    pub fn grace_ms(&self) -> u64 {
        self.grace_ms
    }

    /// On becoming leader: every node that should heartbeat gets a fresh grace from `now_ms`
    /// instead of being declared down for silence the previous leader observed.
    pub fn on_leader_start(&mut self, nodes: impl IntoIterator<Item = NodeId>, now_ms: u64) {
        self.soft.reset(nodes, now_ms);
    }

    /// Records a heartbeat.
    pub fn heartbeat(&mut self, node: NodeId, now_ms: u64, heartbeat: Heartbeat) {
        self.soft.record(node, now_ms, heartbeat);
    }

    /// Keeps the tracked set to the nodes that should heartbeat (ready or draining): new ones
    /// get a fresh grace. Any other node is forgotten once it has been silent for the grace:
    /// a node marked down that heartbeats again keeps its usage, so that when it reports
    /// `ready` it is a placement candidate at once instead of one heartbeat later.
    pub fn sync_nodes(&mut self, expected: &[NodeId], now_ms: u64) {
        let silent: Vec<NodeId> = self
            .soft
            .iter()
            .filter(|(id, live)| {
                !expected.contains(id)
                    && now_ms.saturating_sub(live.last_heartbeat_ms) > self.grace_ms
            })
            .map(|(id, _)| *id)
            .collect();
        for node in silent {
            self.soft.forget(node);
        }
        for node in expected {
            self.soft.track(*node, now_ms);
        }
    }

    /// Nodes whose grace has expired at `now_ms` (id order). They stay listed until the driver
    /// calls [`FailureDetector::forget`] after committing them down.
    pub fn tick(&self, now_ms: u64) -> Vec<NodeId> {
        self.soft.expired(now_ms, self.grace_ms)
    }

    /// Stops tracking a node (committed down, or left).
    pub fn forget(&mut self, node: NodeId) {
        self.soft.forget(node);
    }

    /// The soft state (usage for the API and placement hints).
    pub fn soft_state(&self) -> &SoftState {
        &self.soft
    }
}
