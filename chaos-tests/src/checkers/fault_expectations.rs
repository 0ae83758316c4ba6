//! Every fault that owes a reaction got it: a node with corrupted Raft data refuses to start,
//! and a removed node that comes back with its old identity stays out of the cluster.

use super::Verdict;
use crate::history::History;

/// Checks the expectations attached to the fault records of `history`.
pub fn check(history: &History) -> Verdict {
    let with_expectation: Vec<_> = history
        .faults
        .iter()
        .filter_map(|f| f.expectation.as_ref().map(|e| (f, e)))
        .collect();
    let violations = with_expectation
        .iter()
        .filter(|(_, e)| !e.met)
        .map(|(f, e)| {
            format!(
                "fault {} {:?} on {:?}: expected \"{}\", saw {}",
                f.seq,
                f.mode,
                f.targets,
                e.description,
                e.detail.as_deref().unwrap_or("nothing")
            )
        })
        .collect();
    Verdict::new(
        "fault_reactions",
        "Every fault that owes a reaction got it (corrupt Raft data refuses to start; a removed node stays out).",
        with_expectation.len(),
        violations,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{Expectation, FaultRecord};
    use crate::nemesis::FaultMode;

    fn record(met: bool) -> FaultRecord {
        FaultRecord {
            seq: 3,
            mode: FaultMode::CorruptRaftData,
            targets: vec![1],
            start_ms: Some(1),
            end_ms: Some(2),
            error: None,
            expectation: Some(Expectation {
                description: "node refuses to start".into(),
                met,
                detail: (!met).then(|| "node became ready".to_string()),
            }),
        }
    }

    #[test]
    fn met_expectation_passes() {
        let h = History {
            faults: vec![record(true)],
            ..History::default()
        };
        assert!(check(&h).ok);
    }

    #[test]
    fn unmet_expectation_is_a_violation() {
        let h = History {
            faults: vec![record(true), record(false)],
            ..History::default()
        };
        let verdict = check(&h);
        assert_eq!(verdict.n_violations, 1);
        assert!(verdict.violations[0].contains("node became ready"));
    }
}
