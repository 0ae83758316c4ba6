//! Coverage: every fault mode scheduled for the run actually fired at least once; otherwise the
//! run fails.

use super::Verdict;
use crate::history::History;
use crate::nemesis::FaultMode;

/// Checks that each of `scheduled` has a fired fault record in `history`.
pub fn check(history: &History, scheduled: &[FaultMode]) -> Verdict {
    let mut violations = Vec::new();
    for mode in scheduled {
        let records: Vec<_> = history.faults.iter().filter(|f| f.mode == *mode).collect();
        if !records.iter().any(|f| f.fired()) {
            let why: Vec<String> = records.iter().filter_map(|f| f.error.clone()).collect();
            violations.push(format!(
                "{mode:?} never fired ({} attempts: {why:?})",
                records.len()
            ));
        }
    }
    Verdict::new(
        "coverage",
        "Every fault mode scheduled for the run actually fired.",
        scheduled.len(),
        violations,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::FaultRecord;

    fn record(mode: FaultMode, error: Option<&str>) -> FaultRecord {
        FaultRecord {
            seq: 0,
            mode,
            targets: vec![],
            start_ms: Some(1),
            end_ms: Some(2),
            error: error.map(str::to_string),
            expectation: None,
        }
    }

    #[test]
    fn every_scheduled_mode_fired_passes() {
        let h = History {
            faults: vec![
                record(FaultMode::KillLeader, None),
                record(FaultMode::DiskFull, None),
            ],
            ..History::default()
        };
        assert!(check(&h, &[FaultMode::KillLeader, FaultMode::DiskFull]).ok);
    }

    #[test]
    fn a_mode_that_only_failed_to_inject_is_a_violation() {
        let h = History {
            faults: vec![
                record(FaultMode::KillLeader, None),
                record(FaultMode::DiskFull, Some("no tmpfs")),
            ],
            ..History::default()
        };
        let verdict = check(
            &h,
            &[
                FaultMode::KillLeader,
                FaultMode::DiskFull,
                FaultMode::PauseLeader,
            ],
        );
        assert_eq!(verdict.n_violations, 2);
        assert!(verdict.violations[0].contains("no tmpfs"));
    }
}
