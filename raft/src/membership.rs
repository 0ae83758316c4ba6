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
    /// Remove a member (a learner) whose node has left, was removed or is not a server.
    Remove(NodeId),
    /// Remove every voter whose node has left, was removed or is not a server, in one change:
    /// one at a time, a first change could keep a voter that is gone for good in the new
    /// configuration, and its joint configuration would then never commit.
    RemoveVoters(BTreeSet<NodeId>),
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
    // A removed node leaves Raft at once, while its workstations are still being drained
    // away: it stops taking part as soon as it learns it was removed, and with two voters
    // the change that removes it needs its vote.
    let is_server = |id: &NodeId| {
        state.nodes.get(id).is_some_and(|node| {
            node.roles.server && !node.removing && node.state != NodeState::Left
        })
    };
    // Removals first: learners one by one, departing voters all at once; never every voter
    // (a server is promoted first).
    let departing = |id: &&NodeId| state.nodes.contains_key(id) && !is_server(id);
    if let Some(id) = learners.iter().find(departing) {
        return Some(MembershipStep::Remove(*id));
    }
    let departing_voters: BTreeSet<NodeId> = voters.iter().filter(departing).copied().collect();
    if !departing_voters.is_empty() && departing_voters.len() < voters.len() {
        return Some(MembershipStep::RemoveVoters(departing_voters));
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

/// The voter a leader that steps down hands its leadership to, as seen in the leader's
/// replication progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Successor {
    /// The voter.
    pub id: NodeId,
    /// True when it has every entry the leader has (`matched >= last_log_index`): only then
    /// can it win the election with the leader's vote.
    pub up_to_date: bool,
}

/// Picks the successor of leader `leader`: the voter other than the leader whose matched log
/// index is highest (a tie goes to the lowest id), and whether it holds the leader's whole
/// log. `matched` is the leader's replication progress (`None` entries have matched nothing).
/// `None` when there is no other voter.
pub fn choose_successor(
    leader: NodeId,
    voters: &BTreeSet<NodeId>,
    matched: &std::collections::BTreeMap<NodeId, Option<u64>>,
    last_log_index: Option<u64>,
) -> Option<Successor> {
    let mut best: Option<(Option<u64>, std::cmp::Reverse<NodeId>)> = None;
    for &id in voters.iter().filter(|id| **id != leader) {
        let index = matched.get(&id).copied().flatten();
        let rank = (index, std::cmp::Reverse(id));
        if best.is_none_or(|current| rank > current) {
            best = Some(rank);
        }
    }
    best.map(|(index, std::cmp::Reverse(id))| Successor {
        id,
        up_to_date: index >= last_log_index,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn check(
        voters: &[NodeId],
        matched: &[(NodeId, Option<u64>)],
        last: Option<u64>,
        expected: Option<(NodeId, bool)>,
    ) {
        let voters: BTreeSet<NodeId> = voters.iter().copied().collect();
        let matched: BTreeMap<NodeId, Option<u64>> = matched.iter().copied().collect();
        let got = choose_successor(1, &voters, &matched, last).map(|s| (s.id, s.up_to_date));
        assert_eq!(
            got, expected,
            "voters {voters:?} matched {matched:?} last {last:?}"
        );
    }

    #[test]
    fn the_successor_is_the_most_caught_up_other_voter() {
        // Alone: nobody to hand over to.
        check(&[1], &[], Some(5), None);
        // The most caught-up voter wins; up to date only if it has the leader's last entry.
        check(
            &[1, 2, 3],
            &[(2, Some(4)), (3, Some(5))],
            Some(5),
            Some((3, true)),
        );
        check(
            &[1, 2, 3],
            &[(2, Some(4)), (3, Some(3))],
            Some(5),
            Some((2, false)),
        );
        // A tie goes to the lowest id.
        check(
            &[1, 2, 3],
            &[(2, Some(5)), (3, Some(5))],
            Some(5),
            Some((2, true)),
        );
        // A voter with no progress recorded yet ranks lowest but can still be named.
        check(&[1, 3], &[], Some(5), Some((3, false)));
        // Learners are not in `voters` and never chosen, whatever they matched.
        check(
            &[1, 2],
            &[(2, Some(1)), (4, Some(9))],
            Some(9),
            Some((2, false)),
        );
        // An empty log: every voter is up to date.
        check(&[1, 2], &[(2, None)], None, Some((2, true)));
    }
}
