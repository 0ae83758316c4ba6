//! The run's report: a JSON document with everything needed to judge and replay the run, and a
//! short human summary.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::checkers::Verdict;
use crate::history::{FaultRecord, History, Outcome};
use crate::stats::FailoverStats;

/// Failover target (issue 7): median leader kill → first acknowledged write.
pub const FAILOVER_P50_TARGET_MS: u64 = 300;
/// Failover target: 99th percentile.
pub const FAILOVER_P99_TARGET_MS: u64 = 1_000;

/// Operation counts by outcome.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutcomeCounts {
    /// Acknowledged.
    pub ok: usize,
    /// Refused.
    pub fail: usize,
    /// Indeterminate.
    pub unknown: usize,
}

impl OutcomeCounts {
    fn add(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Ok => self.ok += 1,
            Outcome::Fail => self.fail += 1,
            Outcome::Unknown => self.unknown += 1,
        }
    }
}

/// What was run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunInfo {
    /// `quick`, `soak 30m`, ...
    pub scenario: String,
    /// The seed; `--seed` with it replays the schedule and the workload.
    pub seed: u64,
    /// The binary under test.
    pub shoal_binary: String,
    /// Nodes in the cluster.
    pub n_nodes: usize,
    /// How long the run took.
    pub duration_ms: u64,
    /// Fault modes the scenario left out, each with the reason (`mode: why`).
    #[serde(default)]
    pub modes_left_out: Vec<String>,
}

/// The whole report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// What was run.
    #[serde(flatten)]
    pub run: RunInfo,
    /// The faults as injected.
    pub faults: Vec<FaultRecord>,
    /// Operation counts, total.
    pub operations: OutcomeCounts,
    /// Operation counts per kind.
    pub operations_by_kind: BTreeMap<String, OutcomeCounts>,
    /// One verdict per invariant.
    pub verdicts: Vec<Verdict>,
    /// Leader kill → first acknowledged write.
    pub failover: FailoverStats,
    /// Whether every invariant held.
    pub passed: bool,
    /// Why the run stopped early or what it could not do, if anything.
    pub notes: Vec<String>,
}

impl Report {
    /// Builds the report of a finished run.
    pub fn new(
        run: RunInfo,
        history: &History,
        verdicts: Vec<Verdict>,
        notes: Vec<String>,
    ) -> Self {
        let mut operations = OutcomeCounts::default();
        let mut operations_by_kind: BTreeMap<String, OutcomeCounts> = BTreeMap::new();
        for op in &history.operations {
            operations.add(op.outcome);
            operations_by_kind
                .entry(op.kind.name().to_string())
                .or_default()
                .add(op.outcome);
        }
        let passed = notes.is_empty() && verdicts.iter().all(|v| v.ok);
        Self {
            run,
            faults: history.faults.clone(),
            operations,
            operations_by_kind,
            failover: FailoverStats::from_history(history),
            verdicts,
            passed,
            notes,
        }
    }

    /// A few lines for a terminal.
    pub fn human_summary(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "chaos run: scenario {} seed {} nodes {} duration {:.1} s binary {}",
            self.run.scenario,
            self.run.seed,
            self.run.n_nodes,
            self.run.duration_ms as f64 / 1000.0,
            self.run.shoal_binary
        );
        let mut by_mode: BTreeMap<String, (usize, usize)> = BTreeMap::new();
        for fault in &self.faults {
            let entry = by_mode.entry(format!("{:?}", fault.mode)).or_default();
            entry.0 += 1;
            if fault.fired() {
                entry.1 += 1;
            }
        }
        let faults: Vec<String> = by_mode
            .iter()
            .map(|(mode, (n, fired))| format!("{mode} {fired}/{n}"))
            .collect();
        let _ = writeln!(out, "faults (fired/attempted): {}", faults.join(", "));
        for left_out in &self.run.modes_left_out {
            let _ = writeln!(out, "fault mode left out: {left_out}");
        }
        let _ = writeln!(
            out,
            "operations: {} ok, {} fail, {} unknown",
            self.operations.ok, self.operations.fail, self.operations.unknown
        );
        for verdict in &self.verdicts {
            let _ = writeln!(
                out,
                "  {:<20} {:<4} checked {:>5}{}{}",
                verdict.invariant,
                if verdict.ok { "ok" } else { "FAIL" },
                verdict.n_checked,
                verdict
                    .measured
                    .as_ref()
                    .map(|m| format!(", {m}"))
                    .unwrap_or_default(),
                verdict
                    .violations
                    .first()
                    .map(|v| format!(", first violation: {v}"))
                    .unwrap_or_default()
            );
        }
        let fmt_ms = |v: Option<u64>| v.map(|ms| format!("{ms} ms")).unwrap_or("n/a".into());
        let _ = writeln!(
            out,
            "failover (leader kill -> first acknowledged write): {} kills, {} measured on a settled cluster, p50 {}, p99 {}, {} without an ack",
            self.failover.n_kills,
            self.failover.samples_ms.len(),
            fmt_ms(self.failover.p50_ms),
            fmt_ms(self.failover.p99_ms),
            self.failover.n_without_ack
        );
        for kill in &self.failover.unsettled {
            let _ = writeln!(
                out,
                "failover after a kill on an unsettled cluster (not in the percentiles): fault {}: {} ({})",
                kill.seq,
                fmt_ms(kill.failover_ms),
                kill.reason
            );
        }
        if let (Some(p50), Some(p99)) = (self.failover.p50_ms, self.failover.p99_ms) {
            let met = p50 <= FAILOVER_P50_TARGET_MS && p99 <= FAILOVER_P99_TARGET_MS;
            let _ = writeln!(
                out,
                "failover target p50 <= {FAILOVER_P50_TARGET_MS} ms, p99 <= {FAILOVER_P99_TARGET_MS} ms: {}",
                if met { "met" } else { "NOT met" }
            );
        }
        for note in &self.notes {
            let _ = writeln!(out, "note: {note}");
        }
        let _ = writeln!(
            out,
            "verdict: {}",
            if self.passed { "PASS" } else { "FAIL" }
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkers::{check_all, CheckConfig};
    use crate::history::{OpKind, Operation};

    fn info() -> RunInfo {
        RunInfo {
            scenario: "quick".into(),
            seed: 1,
            shoal_binary: "shoal".into(),
            n_nodes: 3,
            duration_ms: 10,
            modes_left_out: vec!["removed_node_returns: not implemented".into()],
        }
    }

    #[test]
    fn report_of_an_empty_history_fails_and_says_why() {
        let history = History::default();
        let verdicts = check_all(
            &history,
            &CheckConfig {
                lease_ms: 1000,
                convergence_ms_max: 1000,
                scheduled_modes: vec![],
            },
        );
        let report = Report::new(info(), &history, verdicts, vec![]);
        assert!(!report.passed);
        let text = report.human_summary();
        assert!(
            text.contains("single_leader") && text.contains("FAIL") && text.contains("no evidence")
        );
        let json = serde_json::to_string(&report).unwrap();
        let back: Report = serde_json::from_str(&json).unwrap();
        assert_eq!(back, report);
    }

    #[test]
    fn operations_are_counted_by_kind_and_outcome() {
        let op = |id, outcome| Operation {
            id,
            node: 0,
            kind: OpKind::Run { argv: vec![] },
            invoke_ms: 0,
            complete_ms: 1,
            outcome,
            error: None,
        };
        let history = History {
            operations: vec![
                op(0, Outcome::Ok),
                op(1, Outcome::Unknown),
                op(2, Outcome::Ok),
            ],
            ..History::default()
        };
        let report = Report::new(info(), &history, vec![], vec![]);
        assert_eq!(
            report.operations,
            OutcomeCounts {
                ok: 2,
                fail: 0,
                unknown: 1
            }
        );
        assert_eq!(report.operations_by_kind["run"].ok, 2);
        assert!(report.passed, "no verdicts and no notes");
    }
}
