//! At most one leader per term: no two observations name different leaders for the same term.

use std::collections::{BTreeMap, BTreeSet};

use super::Verdict;
use crate::history::History;

/// Checks the leader observations of `history`.
pub fn check(history: &History) -> Verdict {
    let mut leaders_by_term: BTreeMap<u64, BTreeSet<&str>> = BTreeMap::new();
    let mut n_checked = 0;
    for obs in &history.leaders {
        if let Some(leader) = &obs.leader {
            n_checked += 1;
            leaders_by_term.entry(obs.term).or_default().insert(leader);
        }
    }
    let violations = leaders_by_term
        .iter()
        .filter(|(_, leaders)| leaders.len() > 1)
        .map(|(term, leaders)| format!("term {term} has leaders {leaders:?}"))
        .collect();
    Verdict::new(
        "single_leader",
        "At most one leader per term.",
        n_checked,
        violations,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::LeaderObservation;

    fn obs(observer: usize, term: u64, leader: Option<&str>) -> LeaderObservation {
        LeaderObservation {
            at_ms: 0,
            observer,
            term,
            leader: leader.map(str::to_string),
        }
    }

    #[test]
    fn one_leader_per_term_passes_even_across_terms() {
        let history = History {
            leaders: vec![
                obs(0, 1, Some("a")),
                obs(1, 1, Some("a")),
                obs(2, 2, Some("b")),
                obs(2, 3, None),
            ],
            ..History::default()
        };
        let verdict = check(&history);
        assert!(verdict.ok, "{verdict:?}");
        assert_eq!(verdict.n_checked, 3);
    }

    #[test]
    fn two_leaders_in_one_term_is_a_violation() {
        let history = History {
            leaders: vec![obs(0, 4, Some("a")), obs(1, 4, Some("b"))],
            ..History::default()
        };
        let verdict = check(&history);
        assert!(!verdict.ok);
        assert_eq!(verdict.n_violations, 1);
        assert!(verdict.violations[0].contains("term 4"));
    }

    #[test]
    fn no_observations_is_not_a_pass() {
        assert!(!check(&History::default()).ok);
    }
}
