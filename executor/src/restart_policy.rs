//! Restart policies and the pure decision of what to do when a process exits (DESIGN.md §1).
//!
//! [`RestartTracker::on_exit`] takes the exit, how long the process ran and the current
//! monotonic time, and answers: stay exited, restart after a backoff delay, or give up
//! (`crash_loop`). No clock, no I/O: tests drive it with plain numbers.
//!
//! Backoff doubles from `backoff_ms_initial` up to `backoff_ms_max` across consecutive restarts
//! and resets once a run lasts `uptime_ms_healthy`. A run shorter than that is a *fast exit*;
//! `crash_loop_failures` fast exits within `crash_loop_window_ms` put the process in
//! `crash_loop`, which is final: the process is not restarted again until its owner starts it
//! anew. Giving up (rather than retrying forever at the maximum backoff) puts a limit on
//! retries (DESIGN.md §3) and leaves the failing output in the log for the owner to read.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// When a process is restarted after it exits (SPEC.md: `never`, `on-failure`, `always`).
///
/// The one type for the policy: the HTTP API and the CLI use it as it is. Raft's
/// `model::RestartPolicy` is the committed copy; the node converts between the two in one
/// module (`node/src/convert.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Never restarted.
    #[default]
    Never,
    /// Restarted (with backoff) when it exits with a non-zero code or a signal.
    OnFailure,
    /// Restarted (with backoff) whenever it exits.
    Always,
}

impl RestartPolicy {
    /// The wire name: `never`, `on-failure` or `always`.
    pub fn as_str(self) -> &'static str {
        match self {
            RestartPolicy::Never => "never",
            RestartPolicy::OnFailure => "on-failure",
            RestartPolicy::Always => "always",
        }
    }
}

impl std::fmt::Display for RestartPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A restart policy name that is not one of `never`, `on-failure`, `always`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown restart policy {0:?} (expected never, on-failure or always)")]
pub struct UnknownRestartPolicy(pub String);

impl std::str::FromStr for RestartPolicy {
    type Err = UnknownRestartPolicy;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        match name {
            "never" => Ok(RestartPolicy::Never),
            "on-failure" => Ok(RestartPolicy::OnFailure),
            "always" => Ok(RestartPolicy::Always),
            other => Err(UnknownRestartPolicy(other.to_owned())),
        }
    }
}

/// The numbers behind restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartLimits {
    /// Delay before the first restart.
    pub backoff_ms_initial: u64,
    /// The longest delay between restarts.
    pub backoff_ms_max: u64,
    /// A run at least this long is healthy: it resets the backoff and the fast-exit count.
    pub uptime_ms_healthy: u64,
    /// How many fast exits within the window make a crash loop (at least 1).
    pub crash_loop_failures: u32,
    /// The window in which fast exits are counted.
    pub crash_loop_window_ms: u64,
}

impl Default for RestartLimits {
    fn default() -> Self {
        Self {
            backoff_ms_initial: 100,
            backoff_ms_max: 30_000,
            uptime_ms_healthy: 10_000,
            crash_loop_failures: 5,
            crash_loop_window_ms: 60_000,
        }
    }
}

/// What to do after an exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartDecision {
    /// Leave the process exited (the policy does not ask for a restart).
    Exited,
    /// Restart after `delay_ms` (the process is in `backoff` meanwhile).
    RestartAfter {
        /// The backoff delay.
        delay_ms: u64,
    },
    /// Too many fast exits: give up (`crash_loop`).
    CrashLoop,
}

/// The restart state of one process across its runs.
#[derive(Debug, Clone)]
pub struct RestartTracker {
    policy: RestartPolicy,
    limits: RestartLimits,
    backoff_ms_next: u64,
    /// Monotonic times of recent fast exits, oldest first; at most `crash_loop_failures`.
    fast_exits_ms: VecDeque<u64>,
    restarts: u32,
}

impl RestartTracker {
    /// A tracker for a process that has not exited yet.
    pub fn new(policy: RestartPolicy, limits: RestartLimits) -> Self {
        let limits = RestartLimits {
            backoff_ms_initial: limits.backoff_ms_initial.max(1),
            backoff_ms_max: limits.backoff_ms_max.max(limits.backoff_ms_initial.max(1)),
            crash_loop_failures: limits.crash_loop_failures.max(1),
            ..limits
        };
        Self {
            policy,
            backoff_ms_next: limits.backoff_ms_initial,
            fast_exits_ms: VecDeque::with_capacity(limits.crash_loop_failures as usize),
            limits,
            restarts: 0,
        }
    }

    /// The policy.
    pub fn policy(&self) -> RestartPolicy {
        self.policy
    }

    /// How many restarts this tracker has ordered.
    pub fn restarts(&self) -> u32 {
        self.restarts
    }

    /// Decides what follows an exit. `success` is exit code 0; `uptime_ms` is how long the run
    /// lasted; `now_ms` is a monotonic reading in milliseconds (any fixed origin).
    pub fn on_exit(&mut self, success: bool, uptime_ms: u64, now_ms: u64) -> RestartDecision {
        let wants_restart = match self.policy {
            RestartPolicy::Never => false,
            RestartPolicy::OnFailure => !success,
            RestartPolicy::Always => true,
        };
        if !wants_restart {
            return RestartDecision::Exited;
        }
        if uptime_ms >= self.limits.uptime_ms_healthy {
            self.backoff_ms_next = self.limits.backoff_ms_initial;
            self.fast_exits_ms.clear();
        } else {
            let window_start = now_ms.saturating_sub(self.limits.crash_loop_window_ms);
            while self
                .fast_exits_ms
                .front()
                .is_some_and(|&exit_ms| exit_ms < window_start)
            {
                self.fast_exits_ms.pop_front();
            }
            if self.fast_exits_ms.len() >= self.limits.crash_loop_failures as usize {
                self.fast_exits_ms.pop_front();
            }
            self.fast_exits_ms.push_back(now_ms);
            if self.fast_exits_ms.len() >= self.limits.crash_loop_failures as usize {
                return RestartDecision::CrashLoop;
            }
        }
        let delay_ms = self.backoff_ms_next;
        self.backoff_ms_next = delay_ms.saturating_mul(2).min(self.limits.backoff_ms_max);
        self.restarts += 1;
        RestartDecision::RestartAfter { delay_ms }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn limits() -> RestartLimits {
        RestartLimits {
            backoff_ms_initial: 100,
            backoff_ms_max: 1_000,
            uptime_ms_healthy: 5_000,
            crash_loop_failures: 4,
            crash_loop_window_ms: 60_000,
        }
    }

    /// One exit: (success, uptime_ms, gap_ms since the previous exit) → expected decision.
    fn check(policy: RestartPolicy, exits: &[(bool, u64, u64)], expected: &[RestartDecision]) {
        let mut tracker = RestartTracker::new(policy, limits());
        let mut now_ms = 0;
        let decisions: Vec<_> = exits
            .iter()
            .map(|&(success, uptime_ms, gap_ms)| {
                now_ms += gap_ms;
                tracker.on_exit(success, uptime_ms, now_ms)
            })
            .collect();
        assert_eq!(decisions, expected, "policy {policy}, exits {exits:?}");
    }

    use RestartDecision::{CrashLoop, Exited, RestartAfter};
    const fn after(delay_ms: u64) -> RestartDecision {
        RestartAfter { delay_ms }
    }

    #[test]
    fn never_policy_never_restarts() {
        check(
            RestartPolicy::Never,
            &[(false, 10, 0), (true, 10, 0)],
            &[Exited, Exited],
        );
    }

    #[test]
    fn on_failure_restarts_failures_only() {
        check(
            RestartPolicy::OnFailure,
            &[(false, 10_000, 0), (true, 10_000, 0)],
            &[after(100), Exited],
        );
    }

    #[test]
    fn always_restarts_clean_exits_too() {
        check(
            RestartPolicy::Always,
            &[(true, 6_000, 0), (true, 6_000, 6_000)],
            &[after(100), after(100)],
        );
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_then_crash_loops() {
        let mut limits_wide = limits();
        limits_wide.crash_loop_failures = 10;
        let mut tracker = RestartTracker::new(RestartPolicy::Always, limits_wide);
        let delays: Vec<_> = (0..9).map(|n| tracker.on_exit(false, 1, n * 10)).collect();
        let expected: Vec<_> = [100, 200, 400, 800, 1_000, 1_000, 1_000, 1_000, 1_000]
            .into_iter()
            .map(after)
            .collect();
        assert_eq!(delays, expected);
        assert_eq!(tracker.on_exit(false, 1, 100), CrashLoop);
        assert_eq!(tracker.restarts(), 9);
    }

    #[test]
    fn crash_loop_after_n_fast_failures_within_the_window() {
        check(
            RestartPolicy::OnFailure,
            &[
                (false, 1, 0),
                (false, 1, 100),
                (false, 1, 200),
                (false, 1, 400),
            ],
            &[after(100), after(200), after(400), CrashLoop],
        );
    }

    #[test]
    fn fast_failures_spread_wider_than_the_window_do_not_crash_loop() {
        check(
            RestartPolicy::OnFailure,
            &[
                (false, 1, 0),
                (false, 1, 30_000),
                (false, 1, 30_000),
                (false, 1, 30_001),
                (false, 1, 30_001),
            ],
            &[after(100), after(200), after(400), after(800), after(1_000)],
        );
    }

    #[test]
    fn a_healthy_run_resets_backoff_and_fast_exit_count() {
        check(
            RestartPolicy::Always,
            &[
                (false, 1, 0),
                (false, 1, 10),
                (false, 1, 10),
                (false, 5_000, 5_000),
                (false, 1, 10),
                (false, 1, 10),
                (false, 1, 10),
                (false, 1, 10),
            ],
            &[
                after(100),
                after(200),
                after(400),
                after(100),
                after(200),
                after(400),
                after(800),
                CrashLoop,
            ],
        );
    }

    #[test]
    fn policy_names_round_trip() {
        for policy in [
            RestartPolicy::Never,
            RestartPolicy::OnFailure,
            RestartPolicy::Always,
        ] {
            assert_eq!(policy.as_str().parse::<RestartPolicy>(), Ok(policy));
            let json = serde_json::to_string(&policy).expect("serializable");
            assert_eq!(json, format!("\"{}\"", policy.as_str()));
        }
        assert!("sometimes".parse::<RestartPolicy>().is_err());
    }

    proptest! {
        /// Whatever the exits, delays stay within [initial, max], `never` never restarts,
        /// `on-failure` never restarts a success, and a crash loop needs at least
        /// `crash_loop_failures` fast exits within the window.
        #[test]
        fn decisions_respect_the_limits(
            policy in prop_oneof![
                Just(RestartPolicy::Never),
                Just(RestartPolicy::OnFailure),
                Just(RestartPolicy::Always)
            ],
            exits in proptest::collection::vec((any::<bool>(), 0u64..8_000, 0u64..40_000), 0..40),
        ) {
            let limits = limits();
            let mut tracker = RestartTracker::new(policy, limits);
            let mut now_ms = 0u64;
            let mut fast_exit_times: Vec<u64> = Vec::new();
            for (success, uptime_ms, gap_ms) in exits {
                now_ms += gap_ms;
                let restart_wanted = match policy {
                    RestartPolicy::Never => false,
                    RestartPolicy::OnFailure => !success,
                    RestartPolicy::Always => true,
                };
                if restart_wanted {
                    if uptime_ms >= limits.uptime_ms_healthy {
                        fast_exit_times.clear();
                    } else {
                        fast_exit_times.push(now_ms);
                    }
                }
                let recent = fast_exit_times
                    .iter()
                    .filter(|&&t| t >= now_ms.saturating_sub(limits.crash_loop_window_ms))
                    .count();
                match tracker.on_exit(success, uptime_ms, now_ms) {
                    RestartDecision::Exited => prop_assert!(!restart_wanted),
                    RestartDecision::RestartAfter { delay_ms } => {
                        prop_assert!(restart_wanted);
                        prop_assert!((limits.backoff_ms_initial..=limits.backoff_ms_max).contains(&delay_ms));
                        prop_assert!(recent < limits.crash_loop_failures as usize);
                    }
                    RestartDecision::CrashLoop => {
                        prop_assert!(restart_wanted);
                        prop_assert_eq!(recent, limits.crash_loop_failures as usize);
                        break;
                    }
                }
            }
        }
    }
}
