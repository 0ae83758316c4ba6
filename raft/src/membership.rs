//! Which Raft membership change comes next, as a pure function of the cluster state and the
//! current Raft membership: server nodes join as learners, learners are promoted while voters
//! are below the target, nodes that left are removed. Workers that are not servers are never
//! Raft members. One step at a time, because openraft allows one membership change in flight.

use std::collections::BTreeSet;

use crate::model::NodeAddr;
use crate::model::NodeId;
use crate::model::NodeState;
use crate::state::ClusterState;

/// One membership change for the leader to make.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MembershipStep {
    /// Remove a member (voter or learner) whose node has left or is not a server.
    Remove(NodeId),
    /// Add a ready server node as a learner.
    AddLearner(NodeId, NodeAddr),
    /// Promote a learner to voter.
    Promote(NodeId),
}

/// The next step, or `None` when the membership matches the state.
pub fn next_step(
    state: &ClusterState,
    voters: &BTreeSet<NodeId>,
    learners: &BTreeSet<NodeId>,
) -> Option<MembershipStep> {
    let is_server = |id: &NodeId| {
        state
            .nodes
            .get(id)
            .is_some_and(|node| node.roles.server && node.state != NodeState::Left)
    };
    // Removals first; never remove the last voter.
    for id in learners.iter().chain(voters.iter()) {
        if state.nodes.contains_key(id)
            && !is_server(id)
            && !(voters.len() == 1 && voters.contains(id))
        {
            return Some(MembershipStep::Remove(*id));
        }
    }
    let n_voters = voters.iter().filter(|id| is_server(id)).count();
    if n_voters < state.voter_target() {
        let promotable = learners.iter().find(|id| {
            state
                .nodes
                .get(id)
                .is_some_and(|node| node.roles.server && node.state == NodeState::Ready)
        });
        if let Some(id) = promotable {
            return Some(MembershipStep::Promote(*id));
        }
    }
    for node in state.nodes.values() {
        if node.roles.server
            && node.state == NodeState::Ready
            && !voters.contains(&node.id)
            && !learners.contains(&node.id)
        {
            return Some(MembershipStep::AddLearner(node.id, node.rpc_addr()));
        }
    }
    None
}
