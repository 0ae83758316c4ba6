//! Where a run executes: a pure choice among the ready worker nodes by live headroom (the
//! leader's soft state: what each host uses now, from heartbeats) and committed room (what
//! workstations have not reserved). The node that was called keeps the run when it is a worker
//! and close enough to the best, so that the common case costs no hop.

use std::collections::BTreeMap;

use shoal_raft::model::{NodeState, Resources};
use shoal_raft::{ClusterState, NodeId};

/// The called node keeps a run when its headroom score is at most this much below the best
/// (parts per million of capacity: 10 points). Nodes sharing a host, or hosts that are about
/// as busy, report usage that differs by sampling noise; without the margin runs would hop
/// between them for nothing.
pub const LOCAL_PREFERENCE_PPM: u64 = 100_000;

/// How long a node trusts a usage table fetched from the leader.
pub const USAGE_TABLE_MAX_AGE_MS: u64 = 1_000;

/// One worker node that could execute a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunCandidate {
    /// The node.
    pub node: NodeId,
    /// Its host's capacity.
    pub capacity: Resources,
    /// Allocatable minus what workstations reserved.
    pub unreserved: Resources,
    /// What its host uses now (from its last heartbeat, or this node's own sample).
    pub used: Resources,
}

impl RunCandidate {
    /// What a run can use there now: the smaller of what the host has free and what no
    /// workstation reserved, in each dimension.
    pub fn headroom(&self) -> Resources {
        let live = self.capacity.saturating_sub(&self.used);
        Resources::new(
            live.cpu_millis.min(self.unreserved.cpu_millis),
            live.memory_bytes.min(self.unreserved.memory_bytes),
        )
    }

    /// Headroom as the smaller of its CPU and memory fractions of capacity, in ppm.
    pub fn score_ppm(&self) -> u64 {
        let headroom = self.headroom();
        let fraction = |free: u64, total: u64| -> u64 {
            if total == 0 {
                0
            } else {
                ((u128::from(free) * 1_000_000) / u128::from(total)) as u64
            }
        };
        fraction(headroom.cpu_millis, self.capacity.cpu_millis)
            .min(fraction(headroom.memory_bytes, self.capacity.memory_bytes))
    }

    /// True when the run's memory fits the headroom. Memory only: CPU is compressible (a
    /// run on a busy host gets less of it, and its CPU limit is enforced either way), memory
    /// is not.
    pub fn fits(&self, request: &Resources) -> bool {
        self.headroom().memory_bytes >= request.memory_bytes
    }
}

/// The ready worker nodes of `state` with their live usage: `live` from the leader's soft
/// state, `own_used` for the called node (`own`) itself. Other nodes whose usage the leader
/// has not heard are left out: nothing says they are alive.
pub fn candidates(
    state: &ClusterState,
    live: &BTreeMap<NodeId, Resources>,
    own: NodeId,
    own_used: Resources,
) -> Vec<RunCandidate> {
    state
        .nodes
        .values()
        .filter(|node| node.roles.worker && node.state == NodeState::Ready)
        .filter_map(|node| {
            let used = if node.id == own {
                own_used
            } else {
                *live.get(&node.id)?
            };
            Some(RunCandidate {
                node: node.id,
                capacity: node.capacity,
                unreserved: node.free(),
                used,
            })
        })
        .collect()
}

/// The node that should execute a run needing `request`: the called node `own` when it is a
/// candidate, fits, and is within [`LOCAL_PREFERENCE_PPM`] of the best; otherwise the fitting
/// candidate with the most headroom (lowest id on a tie). When nothing fits, the called node
/// if it is a worker (as before placement existed), else the candidate with the most headroom.
/// `None` only when there is no candidate at all.
pub fn choose(candidates: &[RunCandidate], request: &Resources, own: NodeId) -> Option<NodeId> {
    let rank = |c: &&RunCandidate| (c.score_ppm(), std::cmp::Reverse(c.node));
    let best_fitting = candidates
        .iter()
        .filter(|c| c.fits(request))
        .max_by_key(rank);
    let local = candidates.iter().find(|c| c.node == own);
    match (local, best_fitting) {
        (Some(local), Some(best))
            if local.fits(request)
                && local.score_ppm().saturating_add(LOCAL_PREFERENCE_PPM) >= best.score_ppm() =>
        {
            Some(own)
        }
        (_, Some(best)) => Some(best.node),
        (Some(_), None) => Some(own),
        (None, None) => candidates.iter().max_by_key(rank).map(|c| c.node),
    }
}

/// A usage table fetched from the leader, with the (monotonic) time it was fetched.
#[derive(Debug, Default)]
pub struct UsageCache {
    table: parking_lot::Mutex<Option<(std::time::Instant, BTreeMap<NodeId, Resources>)>>,
}

impl UsageCache {
    /// The cached table if it is younger than [`USAGE_TABLE_MAX_AGE_MS`] at `now`.
    pub fn fresh(&self, now: std::time::Instant) -> Option<BTreeMap<NodeId, Resources>> {
        self.table
            .lock()
            .as_ref()
            .filter(|(at, _)| {
                now.saturating_duration_since(*at).as_millis() <= u128::from(USAGE_TABLE_MAX_AGE_MS)
            })
            .map(|(_, table)| table.clone())
    }

    /// Stores a table fetched at `now`.
    pub fn store(&self, now: std::time::Instant, table: BTreeMap<NodeId, Resources>) {
        *self.table.lock() = Some((now, table));
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;
    use shoal_raft::model::{NodeRecord, Roles};
    use std::net::Ipv4Addr;

    const GIB: u64 = 1 << 30;

    /// A node record with 4 cores and 8 GiB, at mesh address 10.42.0.`id`.
    pub(crate) fn node(id: NodeId, roles: Roles, state: NodeState) -> NodeRecord {
        NodeRecord {
            id,
            wg_public_key: format!("key-{id}"),
            endpoint: format!("127.0.0.1:{}", 5000 + id),
            mesh_addr: Ipv4Addr::new(10, 42, 0, u8::try_from(id).unwrap_or(250)),
            rpc_port: 7000,
            api_addr: None,
            roles,
            capacity: Resources::new(4_000, 8 * GIB),
            reserve: Resources::new(0, 0),
            reserved: Resources::new(0, 0),
            state,
            removing: false,
            registered_ms: 0,
            state_changed_ms: 0,
            workstations_max: None,
        }
    }

    fn candidate(node: NodeId, used_memory: u64, reserved_memory: u64) -> RunCandidate {
        RunCandidate {
            node,
            capacity: Resources::new(4_000, 8 * GIB),
            unreserved: Resources::new(4_000, 8 * GIB - reserved_memory),
            used: Resources::new(1_000, used_memory),
        }
    }

    const RUN: Resources = Resources::new(1_000, 256 << 20);

    #[test]
    fn the_called_node_keeps_the_run_when_it_is_about_as_free_as_the_best() {
        let nodes = [candidate(1, 3 * GIB, 0), candidate(2, 2 * GIB + GIB / 2, 0)];
        assert_eq!(choose(&nodes, &RUN, 1), Some(1), "0.5 GiB less free: stays");
    }

    #[test]
    fn a_run_goes_to_the_worker_with_clearly_more_headroom() {
        let nodes = [
            candidate(1, 7 * GIB, 0),
            candidate(2, GIB, 0),
            candidate(3, 2 * GIB, 0),
        ];
        assert_eq!(choose(&nodes, &RUN, 1), Some(2));
        // Reservations count as used room even when the host is idle.
        let nodes = [candidate(1, GIB, 6 * GIB), candidate(2, 2 * GIB, 0)];
        assert_eq!(choose(&nodes, &RUN, 1), Some(2));
    }

    #[test]
    fn a_node_that_is_not_a_worker_sends_every_run_to_a_worker() {
        let nodes = [candidate(2, 7 * GIB + GIB / 2, 0)];
        assert_eq!(choose(&nodes, &RUN, 1), Some(2), "fits");
        let full = [
            candidate(2, 8 * GIB, 0),
            candidate(3, 8 * GIB - (128 << 20), 0),
        ];
        assert_eq!(
            choose(&full, &RUN, 1),
            Some(3),
            "nothing fits: most headroom"
        );
        assert_eq!(choose(&[], &RUN, 1), None);
    }

    #[test]
    fn when_nothing_fits_the_called_worker_runs_it_itself() {
        let nodes = [candidate(1, 8 * GIB, 0), candidate(2, 8 * GIB, 0)];
        assert_eq!(choose(&nodes, &RUN, 2), Some(2));
    }

    #[test]
    fn a_usage_table_is_trusted_for_one_second() {
        let cache = UsageCache::default();
        let start = crate::clock::monotonic_now();
        assert_eq!(cache.fresh(start), None);
        cache.store(start, BTreeMap::from([(2, Resources::new(1, 2))]));
        assert!(cache
            .fresh(start + std::time::Duration::from_millis(1_000))
            .is_some());
        assert_eq!(
            cache.fresh(start + std::time::Duration::from_millis(1_001)),
            None
        );
    }

    #[test]
    fn candidates_are_ready_workers_with_known_usage_and_the_called_node() {
        let mut data = shoal_raft::state::ClusterData::default();
        for (id, roles, state) in [
            (1, Roles::SERVER, NodeState::Ready),
            (2, Roles::WORKER, NodeState::Ready),
            (3, Roles::SERVER_WORKER, NodeState::Down),
            (4, Roles::WORKER, NodeState::Ready),
            (5, Roles::SERVER_WORKER, NodeState::Ready),
        ] {
            data.nodes.insert(id, node(id, roles, state));
        }
        let state = ClusterState::from_data(data);
        let live = BTreeMap::from([(2, Resources::new(1, 2)), (3, Resources::new(1, 2))]);
        let found: Vec<NodeId> = candidates(&state, &live, 5, Resources::new(3, 4))
            .iter()
            .map(|c| c.node)
            .collect();
        assert_eq!(found, vec![2, 5], "1 is no worker, 3 is down, 4 unheard");
    }

    proptest! {
        /// The choice is always a candidate; a fitting one whenever one fits, unless the
        /// called node keeps it within the margin; and never a non-fitting remote node when a
        /// fitting one exists.
        #[test]
        fn the_choice_is_a_candidate_and_fits_when_anything_fits(
            used in proptest::collection::vec((0u64..9, 0u64..8), 0..6),
            own in 0u64..7,
        ) {
            let nodes: Vec<RunCandidate> = used
                .iter()
                .enumerate()
                .map(|(i, (used_gib, reserved_gib))| {
                    candidate(i as u64 + 1, used_gib * GIB, reserved_gib * GIB)
                })
                .collect();
            let chosen = choose(&nodes, &RUN, own);
            prop_assert_eq!(chosen.is_some(), !nodes.is_empty());
            if let Some(chosen) = chosen {
                let c = nodes.iter().find(|c| c.node == chosen);
                prop_assert!(c.is_some());
                if nodes.iter().any(|c| c.fits(&RUN)) {
                    prop_assert!(c.is_some_and(|c| c.fits(&RUN)));
                }
            }
        }
    }
}
