//! [`SoftState`]: what the leader knows from heartbeats and keeps only in memory (rebuilt after
//! a failover): each node's last heartbeat time, live usage and the observed state of its
//! workstations and their processes. Heartbeat intake is one hash map insert (plus moving the
//! per-workstation vector after bounding it), so that 10,000 hosts at 1 Hz cost a few
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
/// Most processes reported for one workstation in one heartbeat.
pub const PROCESSES_PER_WORKSTATION_REPORTED_MAX: usize = 64;
/// Most processes reported in one heartbeat in all (with the text bounds below, a heartbeat
/// stays under about 4 MiB encoded, well inside the mesh's 16 MiB frames).
pub const PROCESSES_PER_HEARTBEAT_MAX: usize = 16_384;
/// Longest text field (a state or an exit reason) in a heartbeat, in bytes.
pub const HEARTBEAT_TEXT_BYTES_MAX: usize = 64;

/// What a node observes about one process of a workstation it hosts.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ProcessObserved {
    /// The process id within its workstation.
    pub id: u64,
    /// `starting`, `running`, `exited`, `backoff` or `crash_loop`.
    pub state: String,
    /// Exit code of the last exit, if it exited normally.
    pub exit_code: Option<i32>,
    /// Signal number of the last exit, if a signal ended it.
    pub signal: Option<i32>,
    /// How many times it was restarted.
    pub restarts: u32,
    /// Why it exited when that was not its own doing (`killed`, ...).
    pub reason: Option<String>,
}

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
    /// Its processes as observed (at most [`PROCESSES_PER_WORKSTATION_REPORTED_MAX`]).
    pub processes: Vec<ProcessObserved>,
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

/// Cuts `text` to at most [`HEARTBEAT_TEXT_BYTES_MAX`] bytes, on a character boundary.
fn bound_text(text: &mut String) {
    if text.len() > HEARTBEAT_TEXT_BYTES_MAX {
        let mut end = HEARTBEAT_TEXT_BYTES_MAX;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
}

impl Heartbeat {
    /// Applies the bounds: at most [`WORKSTATIONS_PER_HEARTBEAT_MAX`] workstations, at most
    /// [`PROCESSES_PER_WORKSTATION_REPORTED_MAX`] processes each and
    /// [`PROCESSES_PER_HEARTBEAT_MAX`] in all, text fields cut to
    /// [`HEARTBEAT_TEXT_BYTES_MAX`]. The sender calls it before encoding, the leader again at
    /// intake (a heartbeat comes from another process).
    pub fn bound(&mut self) {
        self.workstations.truncate(WORKSTATIONS_PER_HEARTBEAT_MAX);
        let mut budget = PROCESSES_PER_HEARTBEAT_MAX;
        for ws in &mut self.workstations {
            bound_text(&mut ws.state);
            let keep = ws
                .processes
                .len()
                .min(PROCESSES_PER_WORKSTATION_REPORTED_MAX)
                .min(budget);
            ws.processes.truncate(keep);
            budget -= keep;
            for process in &mut ws.processes {
                bound_text(&mut process.state);
                if let Some(reason) = &mut process.reason {
                    bound_text(reason);
                }
            }
        }
    }
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
        heartbeat.bound();
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

    /// The last observation of each of `workstations` reported by any node, with the node
    /// that reported it, in the order asked (a workstation may be reported by two nodes for a
    /// moment around a re-placement: the caller matches node and generation against the
    /// committed placement).
    pub fn observed(&self, workstations: &[WorkstationId]) -> Vec<(NodeId, WorkstationUsage)> {
        let mut found = Vec::new();
        for (node, live) in &self.nodes {
            let Some(heartbeat) = &live.last else {
                continue;
            };
            for ws in &heartbeat.workstations {
                if workstations.contains(&ws.id) {
                    found.push((*node, ws.clone()));
                }
            }
        }
        found.sort_by_key(|(node, ws)| (ws.id, *node));
        found
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn process(id: u64, text: &str) -> ProcessObserved {
        ProcessObserved {
            id,
            state: text.to_string(),
            exit_code: Some(1),
            signal: None,
            restarts: 3,
            reason: Some(text.to_string()),
        }
    }

    fn workstation(id: u64, n_processes: usize, text: &str) -> WorkstationUsage {
        WorkstationUsage {
            id: WorkstationId(id),
            generation: 1,
            cpu_used_millis: 10,
            memory_used_bytes: 1 << 20,
            log_offset_next: 7,
            state: text.to_string(),
            processes: (0..n_processes as u64).map(|p| process(p, text)).collect(),
        }
    }

    /// The largest heartbeat a node could send encodes well inside a mesh frame once bounded.
    #[test]
    fn a_bounded_heartbeat_of_the_largest_node_stays_under_four_mib() {
        // 81 bytes whose 64th byte is inside a character.
        let long_text = format!("a{}", "é".repeat(40));
        let mut heartbeat = Heartbeat {
            used: Resources::new(1, 1),
            load_milli: 0,
            workstations: (0..WORKSTATIONS_PER_HEARTBEAT_MAX as u64 + 10)
                .map(|id| workstation(id, PROCESSES_PER_WORKSTATION_REPORTED_MAX + 1, &long_text))
                .collect(),
        };
        heartbeat.bound();
        let encoded = crate::codec::encode(&heartbeat).map_or(usize::MAX, |bytes| bytes.len());
        assert!(encoded < 4 << 20, "{encoded} bytes");
        let n_processes: usize = heartbeat
            .workstations
            .iter()
            .map(|ws| ws.processes.len())
            .sum();
        assert_eq!(n_processes, PROCESSES_PER_HEARTBEAT_MAX);
        assert_eq!(heartbeat.workstations.len(), WORKSTATIONS_PER_HEARTBEAT_MAX);
    }

    proptest! {
        /// Bounding keeps every limit, keeps short text as it is, cuts on character boundaries,
        /// and changes nothing in a heartbeat that is already within bounds.
        #[test]
        fn bounding_keeps_every_limit_and_is_idempotent(
            shape in proptest::collection::vec((0usize..100, "[a-zé]{0,80}"), 0..40),
        ) {
            let mut heartbeat = Heartbeat {
                used: Resources::new(1, 1),
                load_milli: 0,
                workstations: shape
                    .iter()
                    .enumerate()
                    .map(|(id, (n, text))| workstation(id as u64, *n, text))
                    .collect(),
            };
            heartbeat.bound();
            let once = heartbeat.clone();
            heartbeat.bound();
            prop_assert_eq!(&once, &heartbeat);
            for (ws, (n, text)) in heartbeat.workstations.iter().zip(&shape) {
                prop_assert_eq!(ws.processes.len(), (*n).min(PROCESSES_PER_WORKSTATION_REPORTED_MAX));
                prop_assert!(ws.state.len() <= HEARTBEAT_TEXT_BYTES_MAX);
                prop_assert!(text.starts_with(&ws.state));
                if text.len() <= HEARTBEAT_TEXT_BYTES_MAX {
                    prop_assert_eq!(&ws.state, text);
                }
            }
            let decoded: Heartbeat = crate::codec::decode(
                &crate::codec::encode(&heartbeat).map_err(|e| TestCaseError::fail(e.to_string()))?,
            )
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(decoded, heartbeat);
        }
    }

    /// The leader answers what each node last reported about the workstations asked for.
    #[test]
    fn observed_lists_each_reporting_node_of_the_asked_workstations() {
        let mut soft = SoftState::new();
        let report = |ids: &[u64]| Heartbeat {
            used: Resources::new(1, 1),
            load_milli: 0,
            workstations: ids
                .iter()
                .map(|id| workstation(*id, 1, "running"))
                .collect(),
        };
        soft.record(1, 10, report(&[5, 6]));
        soft.record(2, 10, report(&[6, 7]));
        let found: Vec<(NodeId, u64)> = soft
            .observed(&[WorkstationId(6), WorkstationId(7), WorkstationId(9)])
            .iter()
            .map(|(node, ws)| (*node, ws.id.0))
            .collect();
        assert_eq!(found, vec![(1, 6), (2, 6), (2, 7)]);
    }
}
