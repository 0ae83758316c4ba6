//! The invariant checkers, one module each, each stated in one sentence at its top. Each reads a
//! finished [`History`] and returns a [`Verdict`]; none does I/O.
//!
//! A checker that found nothing to check fails: a run that produced no evidence for an
//! invariant has not shown that the invariant holds.
//!
//! [`desired_state`] is not a checker: it is the pure comparison of desired and actual state
//! (with the scheduler's fit rule for pending workstations) that the runner applies to each
//! convergence snapshot.

pub mod acknowledged_writes;
pub mod capacity;
pub mod convergence;
pub mod coverage;
pub mod desired_state;
pub mod exclusive_placement;
pub mod fault_expectations;
pub mod leftovers;
pub mod log_continuity;
pub mod single_leader;

use serde::{Deserialize, Serialize};

use crate::history::History;
use crate::nemesis::FaultMode;

/// At most this many violations are kept per verdict (the count is kept in full).
pub const VIOLATIONS_KEPT_MAX: usize = 20;

/// The result of one checker.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    /// Short name of the invariant.
    pub invariant: String,
    /// The invariant in one sentence.
    pub statement: String,
    /// Whether it held (and there was evidence).
    pub ok: bool,
    /// How many items (observations, operations, streams) were checked.
    pub n_checked: usize,
    /// How many violations were found.
    pub n_violations: usize,
    /// The first violations, described.
    pub violations: Vec<String>,
    /// A measured figure, when the invariant has one (e.g. convergence time).
    pub measured: Option<String>,
}

impl Verdict {
    /// Builds a verdict; no evidence (`n_checked == 0`) is a failure.
    pub fn new(
        invariant: &str,
        statement: &str,
        n_checked: usize,
        mut violations: Vec<String>,
    ) -> Self {
        if n_checked == 0 && violations.is_empty() {
            violations.push("no evidence: the run produced nothing to check".to_string());
        }
        let n_violations = violations.len();
        violations.truncate(VIOLATIONS_KEPT_MAX);
        Self {
            invariant: invariant.to_string(),
            statement: statement.to_string(),
            ok: n_violations == 0,
            n_checked,
            n_violations,
            violations,
            measured: None,
        }
    }

    /// A verdict for an invariant the run's scenario does not exercise (it holds vacuously,
    /// and says so).
    pub fn not_applicable(invariant: &str, statement: &str, reason: &str) -> Self {
        Self {
            invariant: invariant.to_string(),
            statement: statement.to_string(),
            ok: true,
            n_checked: 0,
            n_violations: 0,
            violations: Vec::new(),
            measured: Some(format!("not applicable: {reason}")),
        }
    }

    /// Attaches a measured figure.
    pub fn with_measured(mut self, measured: String) -> Self {
        self.measured = Some(measured);
        self
    }
}

/// Parameters the checkers need besides the history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckConfig {
    /// How long two nodes may both run a workstation during a re-placement (the lease).
    pub lease_ms: u64,
    /// How long after the last fault the cluster has to converge.
    pub convergence_ms_max: u64,
    /// The fault modes the schedule contained.
    pub scheduled_modes: Vec<FaultMode>,
}

/// Runs every checker.
pub fn check_all(history: &History, config: &CheckConfig) -> Vec<Verdict> {
    vec![
        single_leader::check(history),
        acknowledged_writes::check(history),
        exclusive_placement::check(history, config.lease_ms),
        capacity::check(history),
        log_continuity::check(history),
        convergence::check(history, config.convergence_ms_max),
        leftovers::check(history),
        coverage::check(history, &config.scheduled_modes),
        fault_expectations::check(history, &config.scheduled_modes),
    ]
}
