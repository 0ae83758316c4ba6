//! Verdict classification: a pure function from what was observed about a run to its verdict.

use serde::{Deserialize, Serialize};

/// How a run ended, as SPEC.md names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Exited with code 0.
    Ok,
    /// Exited with another code.
    NonzeroExit,
    /// Killed by a signal (not one of the limits below).
    Signaled,
    /// Still running at the wall-time limit.
    Timeout,
    /// Used up its CPU-time budget.
    CpuLimit,
    /// The kernel's OOM killer killed a process of the run.
    MemoryLimit,
    /// The process limit refused a fork and the program failed.
    ProcessLimit,
    /// Wrote more than the hard output cap.
    OutputLimit,
    /// The sandbox could not be set up or the program could not be started.
    InternalError,
}

impl Verdict {
    /// The wire name.
    pub fn as_str(&self) -> &'static str {
        match self {
            Verdict::Ok => "ok",
            Verdict::NonzeroExit => "nonzero_exit",
            Verdict::Signaled => "signaled",
            Verdict::Timeout => "timeout",
            Verdict::CpuLimit => "cpu_limit",
            Verdict::MemoryLimit => "memory_limit",
            Verdict::ProcessLimit => "process_limit",
            Verdict::OutputLimit => "output_limit",
            Verdict::InternalError => "internal_error",
        }
    }
}

/// Why the executor itself killed a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KillReason {
    /// The wall-time limit passed.
    WallTimeout,
    /// The cgroup's CPU usage reached the CPU-time budget.
    CpuBudget,
    /// Output went past the hard cap.
    OutputCap,
}

/// How the program's main process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgramExit {
    /// exit(code).
    Code(i32),
    /// Killed by this signal.
    Signal(i32),
}

/// Everything the classification looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunFacts {
    /// The sandbox or the exec failed: the user's program never ran.
    pub setup_failed: bool,
    /// The main process's end, if it was observed.
    pub exit: Option<ProgramExit>,
    /// Set when the executor killed the run.
    pub killed_for: Option<KillReason>,
    /// OOM kills in the run's cgroup.
    pub oom_kills: u64,
    /// Forks refused by the cgroup's pids limit.
    pub pids_limit_hits: u64,
}

/// Classifies a run. Precedence, most specific cause first: a failed setup is ours
/// (`internal_error`); an OOM kill or a refused fork explains whatever failure followed (a
/// program that copes and exits 0 is `ok`); then the executor's own kill reason; then how the
/// program ended (SIGXCPU is the RLIMIT_CPU backstop of the CPU budget).
pub fn classify(facts: &RunFacts) -> Verdict {
    if facts.setup_failed {
        return Verdict::InternalError;
    }
    let exited_zero = facts.exit == Some(ProgramExit::Code(0)) && facts.killed_for.is_none();
    if facts.oom_kills > 0 && !exited_zero {
        return Verdict::MemoryLimit;
    }
    if facts.pids_limit_hits > 0 && !exited_zero && facts.killed_for != Some(KillReason::OutputCap)
    {
        return Verdict::ProcessLimit;
    }
    match facts.killed_for {
        Some(KillReason::OutputCap) => return Verdict::OutputLimit,
        Some(KillReason::CpuBudget) => return Verdict::CpuLimit,
        Some(KillReason::WallTimeout) => return Verdict::Timeout,
        None => {}
    }
    match facts.exit {
        Some(ProgramExit::Code(0)) => Verdict::Ok,
        Some(ProgramExit::Code(_)) => Verdict::NonzeroExit,
        Some(ProgramExit::Signal(signal)) if signal == libc::SIGXCPU => Verdict::CpuLimit,
        Some(ProgramExit::Signal(_)) => Verdict::Signaled,
        None => Verdict::InternalError,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> RunFacts {
        RunFacts {
            setup_failed: false,
            exit: Some(ProgramExit::Code(0)),
            killed_for: None,
            oom_kills: 0,
            pids_limit_hits: 0,
        }
    }

    fn check(case: &str, facts: RunFacts, expected: Verdict) {
        assert_eq!(classify(&facts), expected, "case: {case}: {facts:?}");
    }

    #[test]
    fn verdict_table() {
        let kill9 = Some(ProgramExit::Signal(libc::SIGKILL));
        let table: Vec<(&str, RunFacts, Verdict)> = vec![
            ("clean exit", facts(), Verdict::Ok),
            (
                "exit 3",
                RunFacts {
                    exit: Some(ProgramExit::Code(3)),
                    ..facts()
                },
                Verdict::NonzeroExit,
            ),
            (
                "SIGSEGV",
                RunFacts {
                    exit: Some(ProgramExit::Signal(libc::SIGSEGV)),
                    ..facts()
                },
                Verdict::Signaled,
            ),
            (
                "SIGXCPU from RLIMIT_CPU",
                RunFacts {
                    exit: Some(ProgramExit::Signal(libc::SIGXCPU)),
                    ..facts()
                },
                Verdict::CpuLimit,
            ),
            (
                "OOM killed the main process",
                RunFacts {
                    exit: kill9,
                    oom_kills: 1,
                    ..facts()
                },
                Verdict::MemoryLimit,
            ),
            (
                "OOM killed a child, shell exited 137",
                RunFacts {
                    exit: Some(ProgramExit::Code(137)),
                    oom_kills: 1,
                    ..facts()
                },
                Verdict::MemoryLimit,
            ),
            (
                "OOM killed a child, program coped",
                RunFacts {
                    oom_kills: 1,
                    ..facts()
                },
                Verdict::Ok,
            ),
            (
                "fork bomb failed",
                RunFacts {
                    exit: Some(ProgramExit::Code(1)),
                    pids_limit_hits: 40,
                    ..facts()
                },
                Verdict::ProcessLimit,
            ),
            (
                "fork bomb until the wall limit",
                RunFacts {
                    exit: kill9,
                    killed_for: Some(KillReason::WallTimeout),
                    pids_limit_hits: 40,
                    ..facts()
                },
                Verdict::ProcessLimit,
            ),
            (
                "refused fork but program coped",
                RunFacts {
                    pids_limit_hits: 2,
                    ..facts()
                },
                Verdict::Ok,
            ),
            (
                "wall timeout",
                RunFacts {
                    exit: kill9,
                    killed_for: Some(KillReason::WallTimeout),
                    ..facts()
                },
                Verdict::Timeout,
            ),
            (
                "wall timeout, exit unseen",
                RunFacts {
                    exit: None,
                    killed_for: Some(KillReason::WallTimeout),
                    ..facts()
                },
                Verdict::Timeout,
            ),
            (
                "cpu budget",
                RunFacts {
                    exit: kill9,
                    killed_for: Some(KillReason::CpuBudget),
                    ..facts()
                },
                Verdict::CpuLimit,
            ),
            (
                "output cap",
                RunFacts {
                    exit: kill9,
                    killed_for: Some(KillReason::OutputCap),
                    ..facts()
                },
                Verdict::OutputLimit,
            ),
            (
                "output cap while forks were refused",
                RunFacts {
                    exit: kill9,
                    killed_for: Some(KillReason::OutputCap),
                    pids_limit_hits: 3,
                    ..facts()
                },
                Verdict::OutputLimit,
            ),
            (
                "OOM beats timeout",
                RunFacts {
                    exit: kill9,
                    killed_for: Some(KillReason::WallTimeout),
                    oom_kills: 1,
                    ..facts()
                },
                Verdict::MemoryLimit,
            ),
            (
                "exited 0 just as the wall limit hit",
                RunFacts {
                    killed_for: Some(KillReason::WallTimeout),
                    ..facts()
                },
                Verdict::Timeout,
            ),
            (
                "setup failed",
                RunFacts {
                    setup_failed: true,
                    exit: None,
                    ..facts()
                },
                Verdict::InternalError,
            ),
            (
                "setup failed wins over everything",
                RunFacts {
                    setup_failed: true,
                    oom_kills: 3,
                    ..facts()
                },
                Verdict::InternalError,
            ),
            (
                "no exit observed, no kill",
                RunFacts {
                    exit: None,
                    ..facts()
                },
                Verdict::InternalError,
            ),
        ];
        for (case, facts, expected) in table {
            check(case, facts, expected);
        }
    }

    #[test]
    fn wire_names_match_serde() {
        for verdict in [
            Verdict::Ok,
            Verdict::NonzeroExit,
            Verdict::Signaled,
            Verdict::Timeout,
            Verdict::CpuLimit,
            Verdict::MemoryLimit,
            Verdict::ProcessLimit,
            Verdict::OutputLimit,
            Verdict::InternalError,
        ] {
            let json = serde_json::to_string(&verdict).unwrap_or_default();
            assert_eq!(json, format!("\"{}\"", verdict.as_str()));
        }
    }
}
