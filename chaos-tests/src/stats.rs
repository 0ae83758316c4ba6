//! Small statistics for the report: nearest-rank percentiles and failover times.

use serde::{Deserialize, Serialize};

use crate::history::{History, Outcome};
use crate::nemesis::FaultMode;

/// The nearest-rank `p`-th percentile (0 < p <= 100) of `samples`; `None` when empty.
pub fn percentile(samples: &[u64], p: f64) -> Option<u64> {
    if samples.is_empty() {
        return None;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

/// Leader kill → first acknowledged write, over every leader kill of a run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FailoverStats {
    /// How many leader kills fired.
    pub n_kills: usize,
    /// Per kill, ms from the kill to the completion of the first write invoked after it that
    /// the cluster acknowledged; kills with no later acknowledged write are not counted here.
    pub samples_ms: Vec<u64>,
    /// Kills after which no write was ever acknowledged.
    pub n_without_ack: usize,
    /// Median.
    pub p50_ms: Option<u64>,
    /// 99th percentile.
    pub p99_ms: Option<u64>,
}

impl FailoverStats {
    /// Measures failover from the history's leader kills and its operations.
    pub fn from_history(history: &History) -> Self {
        let mut samples_ms = Vec::new();
        let mut n_kills = 0;
        let mut n_without_ack = 0;
        for fault in &history.faults {
            if fault.mode != FaultMode::KillLeader || !fault.fired() {
                continue;
            }
            let Some(kill_ms) = fault.start_ms else {
                continue;
            };
            n_kills += 1;
            let first_ack = history
                .operations
                .iter()
                .filter(|op| {
                    op.kind.is_write() && op.outcome == Outcome::Ok && op.invoke_ms >= kill_ms
                })
                .map(|op| op.complete_ms)
                .min();
            match first_ack {
                Some(ack_ms) => samples_ms.push(ack_ms - kill_ms),
                None => n_without_ack += 1,
            }
        }
        Self {
            n_kills,
            p50_ms: percentile(&samples_ms, 50.0),
            p99_ms: percentile(&samples_ms, 99.0),
            samples_ms,
            n_without_ack,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{FaultRecord, OpKind, Operation};
    use proptest::prelude::*;

    #[test]
    fn percentile_nearest_rank_cases() {
        let check = |samples: &[u64], p: f64, expected: Option<u64>| {
            assert_eq!(percentile(samples, p), expected, "{samples:?} p{p}");
        };
        check(&[], 50.0, None);
        check(&[7], 99.0, Some(7));
        check(&[1, 2, 3, 4], 50.0, Some(2));
        check(&[4, 3, 2, 1], 100.0, Some(4));
        let hundred: Vec<u64> = (1..=100).collect();
        check(&hundred, 99.0, Some(99));
        check(&hundred, 50.0, Some(50));
    }

    proptest! {
        #[test]
        fn percentile_is_a_sample_and_monotonic_in_p(samples in proptest::collection::vec(0u64..10_000, 1..50)) {
            let p50 = percentile(&samples, 50.0).unwrap();
            let p99 = percentile(&samples, 99.0).unwrap();
            prop_assert!(samples.contains(&p50) && samples.contains(&p99));
            prop_assert!(p50 <= p99);
        }
    }

    #[test]
    fn failover_counts_first_ack_invoked_after_each_kill() {
        let write = |id, invoke_ms, complete_ms, outcome| Operation {
            id,
            node: 0,
            kind: OpKind::DeleteWorkstation { key: "w".into() },
            invoke_ms,
            complete_ms,
            outcome,
            error: None,
        };
        let kill = |seq, at| FaultRecord {
            seq,
            mode: FaultMode::KillLeader,
            targets: vec![0],
            start_ms: Some(at),
            end_ms: Some(at + 1000),
            error: None,
            expectation: None,
        };
        let history = History {
            operations: vec![
                write(0, 900, 1100, Outcome::Ok), // invoked before the kill: not counted
                write(1, 1010, 1500, Outcome::Fail), // refused: not counted
                write(2, 1100, 1300, Outcome::Ok), // first ack after kill 1: 300 ms
                write(3, 5000, 5050, Outcome::Ok), // first ack after kill 2: 1050 ms
            ],
            faults: vec![kill(0, 1000), kill(1, 4000), kill(2, 9000)],
            ..History::default()
        };
        let stats = FailoverStats::from_history(&history);
        assert_eq!(stats.n_kills, 3);
        assert_eq!(stats.samples_ms, vec![300, 1050]);
        assert_eq!(stats.n_without_ack, 1);
        assert_eq!(stats.p50_ms, Some(300));
        assert_eq!(stats.p99_ms, Some(1050));
    }
}
