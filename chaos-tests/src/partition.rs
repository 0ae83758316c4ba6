//! Network partitions as a pure value: for every node, the set of nodes whose packets it drops
//! (Jepsen calls this a "grudge"). The environment driver turns a grudge into firewall rules
//! inside each node's namespace; building and checking the shapes needs no kernel.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::history::NodeIdx;

/// For every node, the nodes it drops incoming packets from.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grudge {
    drops_from: BTreeMap<NodeIdx, BTreeSet<NodeIdx>>,
}

impl Grudge {
    /// No partition.
    pub fn none() -> Self {
        Self::default()
    }

    /// Groups that cannot talk to each other in either direction; nodes in the same group talk.
    pub fn complete(groups: &[Vec<NodeIdx>]) -> Self {
        let mut grudge = Self::default();
        for (i, group) in groups.iter().enumerate() {
            for (j, other) in groups.iter().enumerate() {
                if i == j {
                    continue;
                }
                for &node in group {
                    for &from in other {
                        grudge.drop_packets(node, from);
                    }
                }
            }
        }
        grudge
    }

    /// Splits `nodes` into two halves that only both talk to `bridge` (which must be in
    /// `nodes`): each half keeps the bridge, the halves cannot reach each other directly.
    pub fn bridge(nodes: &[NodeIdx], bridge: NodeIdx) -> Self {
        let others: Vec<NodeIdx> = nodes.iter().copied().filter(|&n| n != bridge).collect();
        let (left, right) = others.split_at(others.len() / 2);
        Self::complete(&[left.to_vec(), right.to_vec()])
    }

    /// Packets from `from` to `to` are dropped; `to` can still send to `from`.
    pub fn one_way(from: NodeIdx, to: NodeIdx) -> Self {
        let mut grudge = Self::default();
        grudge.drop_packets(to, from);
        grudge
    }

    /// Makes `node` drop packets coming from `from`.
    pub fn drop_packets(&mut self, node: NodeIdx, from: NodeIdx) {
        if node != from {
            self.drops_from.entry(node).or_default().insert(from);
        }
    }

    /// Whether a packet from `from` reaches `to`.
    pub fn passes(&self, from: NodeIdx, to: NodeIdx) -> bool {
        !self
            .drops_from
            .get(&to)
            .is_some_and(|set| set.contains(&from))
    }

    /// The nodes `node` drops packets from, sorted.
    pub fn drops_from(&self, node: NodeIdx) -> Vec<NodeIdx> {
        self.drops_from
            .get(&node)
            .map(|set| set.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Every node that has at least one rule.
    pub fn nodes_with_rules(&self) -> Vec<NodeIdx> {
        self.drops_from.keys().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn complete_partition_cuts_both_directions_between_groups_only() {
        let g = Grudge::complete(&[vec![0], vec![1, 2]]);
        assert!(!g.passes(0, 1) && !g.passes(1, 0) && !g.passes(0, 2) && !g.passes(2, 0));
        assert!(g.passes(1, 2) && g.passes(2, 1));
    }

    #[test]
    fn bridge_node_talks_to_both_halves_which_cannot_talk_to_each_other() {
        let g = Grudge::bridge(&[0, 1, 2, 3, 4], 2);
        for n in [0, 1, 3, 4] {
            assert!(g.passes(2, n) && g.passes(n, 2));
        }
        assert!(g.passes(0, 1) && g.passes(3, 4));
        assert!(!g.passes(0, 3) && !g.passes(4, 1));
    }

    #[test]
    fn one_way_drops_only_the_named_direction() {
        let g = Grudge::one_way(0, 1);
        assert!(!g.passes(0, 1));
        assert!(g.passes(1, 0));
        assert_eq!(g.drops_from(1), vec![0]);
        assert!(g.drops_from(0).is_empty());
    }

    proptest! {
        #[test]
        fn complete_partition_is_symmetric_and_matches_group_membership(
            assignment in proptest::collection::vec(0usize..3, 1..8)
        ) {
            let mut groups = vec![Vec::new(), Vec::new(), Vec::new()];
            for (node, g) in assignment.iter().enumerate() {
                groups[*g].push(node);
            }
            let grudge = Grudge::complete(&groups);
            for a in 0..assignment.len() {
                for b in 0..assignment.len() {
                    let same = assignment[a] == assignment[b];
                    prop_assert_eq!(grudge.passes(a, b), same);
                    prop_assert_eq!(grudge.passes(a, b), grudge.passes(b, a));
                }
            }
        }
    }
}
