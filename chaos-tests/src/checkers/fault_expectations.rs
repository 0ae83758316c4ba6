//! Every fault that owes a reaction got it: a node with corrupted Raft data refuses to start,
//! and a removed node that comes back with its old identity stays out of the cluster.

use super::Verdict;
use crate::history::History;
use crate::nemesis::FaultMode;

/// The fault modes that owe a reaction.
pub const MODES_WITH_REACTION: [FaultMode; 3] = [
    FaultMode::CorruptRaftData,
    FaultMode::RemovedNodeReturns,
    FaultMode::DiskFull,
];

const STATEMENT: &str = "Every fault that owes a reaction got it (corrupt Raft data refuses to start; a removed node stays out; a full disk does not crash the node).";

/// Checks the expectations attached to the fault records of `history`; `scheduled` are the
/// modes the run scheduled (if none owes a reaction, the invariant is not applicable).
pub fn check(history: &History, scheduled: &[FaultMode]) -> Verdict {
    if !scheduled.iter().any(|m| MODES_WITH_REACTION.contains(m)) {
        return Verdict::not_applicable(
            "fault_reactions",
            STATEMENT,
            "no scheduled fault mode owes a reaction",
        );
    }
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
        STATEMENT,
        with_expectation.len(),
        violations,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{Expectation, FaultRecord};

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
        assert!(check(&h, &[FaultMode::CorruptRaftData]).ok);
    }

    #[test]
    fn scheduled_reaction_mode_that_produced_no_record_fails_but_none_scheduled_is_not_applicable()
    {
        assert!(!check(&History::default(), &[FaultMode::DiskFull]).ok);
        let verdict = check(&History::default(), &[FaultMode::KillLeader]);
        assert!(verdict.ok);
        assert!(verdict.measured.unwrap().starts_with("not applicable"));
    }

    #[test]
    fn unmet_expectation_is_a_violation() {
        let h = History {
            faults: vec![record(true), record(false)],
            ..History::default()
        };
        let verdict = check(&h, &[FaultMode::CorruptRaftData]);
        assert_eq!(verdict.n_violations, 1);
        assert!(verdict.violations[0].contains("node became ready"));
    }
}
