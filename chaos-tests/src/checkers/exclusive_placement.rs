//! No workstation runs on two nodes at once for longer than the lease: the spans in which two
//! different nodes were seen running the same workstation overlap by at most `lease_ms`.
//!
//! A node's span for a workstation is from the first to the last time it was seen running it
//! under one placement generation.

use std::collections::BTreeMap;

use super::Verdict;
use crate::history::History;

/// A node and a placement generation.
type Placement<'a> = (&'a str, u64);
/// First and last time seen, in ms.
type Span = (u64, u64);

/// Checks the running observations of `history`.
pub fn check(history: &History, lease_ms: u64) -> Verdict {
    // (key) -> (node, generation) -> [first, last]
    let mut spans: BTreeMap<&str, BTreeMap<Placement, Span>> = BTreeMap::new();
    for obs in &history.running {
        let span = spans
            .entry(obs.key.as_str())
            .or_default()
            .entry((obs.node.as_str(), obs.generation))
            .or_insert((obs.at_ms, obs.at_ms));
        span.0 = span.0.min(obs.at_ms);
        span.1 = span.1.max(obs.at_ms);
    }
    let mut violations = Vec::new();
    for (key, by_node) in &spans {
        let entries: Vec<(&Placement, &Span)> = by_node.iter().collect();
        for (i, ((node_a, gen_a), (start_a, end_a))) in entries.iter().enumerate() {
            for ((node_b, gen_b), (start_b, end_b)) in entries.iter().skip(i + 1) {
                if node_a == node_b {
                    continue;
                }
                let overlap_start = (*start_a).max(*start_b);
                let overlap_end = (*end_a).min(*end_b);
                if overlap_end > overlap_start && overlap_end - overlap_start > lease_ms {
                    violations.push(format!(
                        "workstation {key} ran on {node_a} (gen {gen_a}) and {node_b} (gen {gen_b}) \
                         together for {} ms (lease {lease_ms} ms)",
                        overlap_end - overlap_start
                    ));
                }
            }
        }
    }
    Verdict::new(
        "exclusive_placement",
        "No workstation runs on two nodes at once beyond the lease.",
        history.running.len(),
        violations,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::RunningObservation;

    fn seen(at_ms: u64, node: &str, generation: u64) -> RunningObservation {
        RunningObservation {
            at_ms,
            node: node.into(),
            key: "w".into(),
            generation,
        }
    }

    #[test]
    fn handover_within_the_lease_passes() {
        let history = History {
            running: vec![
                seen(0, "a", 1),
                seen(1000, "a", 1),
                seen(900, "b", 2),
                seen(3000, "b", 2),
            ],
            ..History::default()
        };
        assert!(check(&history, 500).ok);
    }

    #[test]
    fn old_node_still_running_after_the_lease_is_a_violation() {
        let history = History {
            running: vec![
                seen(0, "a", 1),
                seen(5000, "a", 1),
                seen(1000, "b", 2),
                seen(6000, "b", 2),
            ],
            ..History::default()
        };
        let verdict = check(&history, 500);
        assert!(!verdict.ok);
        assert!(verdict.violations[0].contains("4000 ms"));
    }

    #[test]
    fn same_node_new_generation_is_not_a_double_run() {
        let history = History {
            running: vec![seen(0, "a", 1), seen(5000, "a", 1), seen(1000, "a", 2)],
            ..History::default()
        };
        assert!(check(&history, 0).ok);
    }
}
