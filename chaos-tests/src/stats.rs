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
///
/// Only kills that fired on a settled cluster (every server up, ready and following one leader,
/// see [`crate::nemesis::kill_precondition`]) count towards the percentiles: they measure
/// Shoal's failover. The others are listed in `unsettled` with their reason and time, never
/// dropped: their time also measures the fault before them (a voter restarting, catching up
/// or cut off).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FailoverStats {
    /// How many leader kills fired.
    pub n_kills: usize,
    /// Per kill on a settled cluster, ms from the kill to the completion of the first write
    /// invoked after it that the cluster acknowledged; kills with no later acknowledged write
    /// are not counted here.
    pub samples_ms: Vec<u64>,
    /// Kills after which no write was ever acknowledged.
    pub n_without_ack: usize,
    /// Median of `samples_ms`.
    pub p50_ms: Option<u64>,
    /// 99th percentile of `samples_ms`.
    pub p99_ms: Option<u64>,
    /// Kills that fired on a cluster that had not settled, reported apart.
    #[serde(default)]
    pub unsettled: Vec<UnsettledKill>,
}

/// A leader kill that fired before the cluster had settled.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnsettledKill {
    /// The fault's position in the schedule.
    pub seq: u64,
    /// Kill → first acknowledged write, if one was.
    pub failover_ms: Option<u64>,
    /// What was not settled.
    pub reason: String,
}

impl FailoverStats {
    /// Measures failover from the history's leader kills and its operations.
    pub fn from_history(history: &History) -> Self {
        let mut samples_ms = Vec::new();
        let mut unsettled = Vec::new();
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
            let failover_ms = first_ack.map(|ack_ms| ack_ms - kill_ms);
            if failover_ms.is_none() {
                n_without_ack += 1;
            }
            let why = history
                .unsettled_kills
                .iter()
                .find(|(seq, _)| *seq == fault.seq);
            match (why, failover_ms) {
                (Some((_, reason)), _) => unsettled.push(UnsettledKill {
                    seq: fault.seq,
                    failover_ms,
                    reason: reason.clone(),
                }),
                (None, Some(ms)) => samples_ms.push(ms),
                (None, None) => {}
            }
        }
        Self {
            n_kills,
            p50_ms: percentile(&samples_ms, 50.0),
            p99_ms: percentile(&samples_ms, 99.0),
            samples_ms,
            n_without_ack,
            unsettled,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{FaultRecord, OpKind, Operation};
    use proptest::prelude::*;

    /// Fault `seq`: the leader killed at `at_ms`, restarted a second later.
    fn kill_leader_at(seq: u64, at_ms: u64) -> FaultRecord {
        FaultRecord {
            seq,
            mode: FaultMode::KillLeader,
            targets: vec![0],
            start_ms: Some(at_ms),
            end_ms: Some(at_ms + 1000),
            error: None,
            expectation: None,
        }
    }

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
        let history = History {
            operations: vec![
                write(0, 900, 1100, Outcome::Ok), // invoked before the kill: not counted
                write(1, 1010, 1500, Outcome::Fail), // refused: not counted
                write(2, 1100, 1300, Outcome::Ok), // first ack after kill 1: 300 ms
                write(3, 5000, 5050, Outcome::Ok), // first ack after kill 2: 1050 ms
            ],
            faults: vec![
                kill_leader_at(0, 1000),
                kill_leader_at(1, 4000),
                kill_leader_at(2, 9000),
            ],
            ..History::default()
        };
        let stats = FailoverStats::from_history(&history);
        assert_eq!(stats.n_kills, 3);
        assert_eq!(stats.samples_ms, vec![300, 1050]);
        assert_eq!(stats.n_without_ack, 1);
        assert_eq!(stats.p50_ms, Some(300));
        assert_eq!(stats.p99_ms, Some(1050));
        assert!(stats.unsettled.is_empty());
    }

    #[test]
    fn a_kill_on_an_unsettled_cluster_is_reported_apart_with_its_reason_not_dropped() {
        let write = |id, invoke_ms, complete_ms| Operation {
            id,
            node: 0,
            kind: OpKind::CreateToken,
            invoke_ms,
            complete_ms,
            outcome: Outcome::Ok,
            error: None,
        };
        let history = History {
            operations: vec![write(0, 1100, 1500), write(1, 5000, 7900)],
            faults: vec![kill_leader_at(0, 1000), kill_leader_at(1, 4000)],
            unsettled_kills: vec![(1, "server 2 knows no leader".into())],
            ..History::default()
        };
        let stats = FailoverStats::from_history(&history);
        assert_eq!(stats.n_kills, 2);
        assert_eq!(stats.samples_ms, vec![500]);
        assert_eq!(stats.p99_ms, Some(500));
        assert_eq!(
            stats.unsettled,
            vec![UnsettledKill {
                seq: 1,
                failover_ms: Some(3900),
                reason: "server 2 knows no leader".into(),
            }]
        );
    }
}
