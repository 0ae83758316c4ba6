//! One-shot sandboxed runs of guest code (SPEC.md "Runs").
//!
//! [`execute`] validates a [`RunRequest`], creates a fresh [`Sandbox`], starts the program,
//! watches it (output caps, wall-time limit, CPU-time budget), and answers a [`RunResult`] with a
//! [`Verdict`] from the pure [`classify`]. The sandbox is destroyed before the answer is
//! returned: no process, cgroup, mount or file of the run remains.

mod capture;
mod languages;
mod request;
mod verdict;

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncReadExt, Interest};

pub use capture::{CappedOutput, OUTPUT_KEPT_BYTES_MAX, OUTPUT_TOTAL_BYTES_MAX};
pub use languages::{Language, Languages};
pub use request::{RunFile, RunPolicy, RunRequest, ValidatedRun, CODE_BYTES_MAX};
pub use verdict::{classify, KillReason, ProgramExit, RunFacts, Verdict};

use crate::clock::Clock;
use crate::sandbox::{
    self, ProgramSpec, Sandbox, SandboxError, SandboxFile, SandboxHost, SandboxLimits, SandboxSpec,
};

/// How often the CPU-time budget is checked while a run is CPU-bound.
const CPU_CHECK_INTERVAL: Duration = Duration::from_millis(20);
/// How long output pipes may stay open after the program's init exited (only possible in
/// degraded mode, where a daemon can escape): then they are abandoned.
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(500);
/// Read buffer for output pipes.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// Why a run request was refused or could not be served.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A field is invalid (HTTP 400); the message names the field.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// A field is too large (HTTP 413).
    #[error("{field} is too large: {bytes} bytes, at most {bytes_max}")]
    TooLarge {
        /// The field.
        field: &'static str,
        /// Its size.
        bytes: usize,
        /// The maximum.
        bytes_max: usize,
    },
    /// A valid value this cluster does not offer yet (HTTP 400).
    #[error("unsupported {field}: {reason}")]
    Unsupported {
        /// The field.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// The sandbox could not be created (HTTP 500, or 503 when uids are exhausted).
    #[error("sandbox: {0}")]
    Sandbox(#[from] SandboxError),
}

impl RunError {
    /// The request field the error is about, if any.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            RunError::Invalid { field, .. }
            | RunError::TooLarge { field, .. }
            | RunError::Unsupported { field, .. } => Some(field),
            RunError::Sandbox(_) => None,
        }
    }

    /// The HTTP status SPEC.md gives this error.
    pub fn http_status(&self) -> u16 {
        match self {
            RunError::Invalid { .. } | RunError::Unsupported { .. } => 400,
            RunError::TooLarge { .. } => 413,
            RunError::Sandbox(SandboxError::UidsExhausted) => 503,
            RunError::Sandbox(_) => 500,
        }
    }
}

/// The answer of `POST /v1/runs` (SPEC.md). The one type for a run's result: the HTTP API
/// answers it and a worker sends it back over the mesh as it is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RunResult {
    /// The run id.
    pub id: String,
    /// What happened.
    pub verdict: Verdict,
    /// The exit code, if it exited normally.
    pub exit_code: Option<i32>,
    /// The signal that ended it, if any.
    pub signal: Option<i32>,
    /// Captured standard output (head kept, at most 64 KiB; lossy UTF-8).
    pub stdout: String,
    /// Captured standard error (head kept, at most 64 KiB; lossy UTF-8).
    pub stderr: String,
    /// Whether stdout was cut.
    pub stdout_truncated: bool,
    /// Whether stderr was cut.
    pub stderr_truncated: bool,
    /// Wall time of the program, from its start to its end, ms.
    pub wall_ms: u64,
    /// CPU time (user + system) of every process of the run, ms.
    pub cpu_ms: u64,
    /// Peak memory, bytes (0 if it could not be measured).
    pub peak_memory_bytes: u64,
    /// Time Shoal spent around the program (set-up and tear-down), ms.
    pub overhead_ms: u64,
    /// The node that ran it (filled by the node; `execute` leaves it empty).
    pub node: String,
    /// The isolation level actually applied: `full`, or `partial: <missing layers>`.
    pub isolation: String,
    /// For `internal_error`: what went wrong.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// What `execute` needs from the node.
#[derive(Clone, Debug)]
pub struct RunContext {
    /// The node's sandbox host.
    pub host: Arc<SandboxHost>,
    /// Languages discovered at start-up.
    pub languages: Arc<Languages>,
    /// Limits' defaults and maxima.
    pub policy: RunPolicy,
    /// Time source.
    pub clock: Arc<dyn Clock>,
}

/// Runs `request` once in a fresh sandbox. `id` must be unique on this node
/// ([A-Za-z0-9_-], ≤ 60 bytes); it names the run's cgroup. Refusals of the request come back
/// as `Err`; everything that happens after the sandbox exists, including our own failures,
/// comes back as a result (`internal_error` with a message).
pub async fn execute(
    context: &RunContext,
    request: &RunRequest,
    id: &str,
) -> Result<RunResult, RunError> {
    let run = request.validate(&context.policy, &context.languages)?;
    let started_at = context.clock.now();
    let sandbox = context.host.create_for_run(SandboxSpec {
        name: format!("run-{id}"),
        limits: SandboxLimits {
            memory_bytes: run.memory_bytes,
            cpu_millis: run.cpu_millis,
            // The sandbox's init process counts too.
            max_processes: run.max_processes + 1,
            tmp_bytes: run.memory_bytes,
        },
        home: None,
    })?;
    let isolation = sandbox.isolation().label();
    let created_at = context.clock.now();
    let mut observed = supervise(&sandbox, &run, context.clock.as_ref()).await;
    let stats = sandbox.stats();
    let supervised_at = context.clock.now();
    // Usually a few rmdirs, done right here; anything more (kill rounds) on a blocking thread.
    let destroy_error = match sandbox.destroy_quickly() {
        Ok(()) => None,
        Err(sandbox) => match tokio::task::spawn_blocking(move || sandbox.destroy()).await {
            Ok(Ok(())) => None,
            Ok(Err(error)) => Some(error.to_string()),
            Err(error) => Some(format!("cleanup task failed: {error}")),
        },
    };
    if let Some(error) = destroy_error {
        tracing::error!(run = %id, %error, "run sandbox cleanup failed");
        observed.message.get_or_insert(error);
    }
    let finished_at = context.clock.now();
    let total = finished_at.saturating_duration_since(started_at);
    let wall = observed.wall.unwrap_or_default();
    let facts = RunFacts {
        setup_failed: observed.setup_failed,
        exit: observed.exit,
        killed_for: observed.killed_for,
        oom_kills: stats.oom_kills,
        pids_limit_hits: stats.pids_limit_hits,
    };
    let verdict = classify(&facts);
    let (exit_code, signal) = match observed.exit {
        Some(ProgramExit::Code(code)) => (Some(code), None),
        Some(ProgramExit::Signal(signal)) => (None, Some(signal)),
        None => (None, None),
    };
    let cpu_ms = if stats.cpu_usage_ns > 0 {
        stats.cpu_usage_ns / 1_000_000
    } else {
        observed.rusage_cpu_ms
    };
    tracing::info!(
        run = %id,
        verdict = verdict.as_str(),
        wall_ms = wall.as_millis() as u64,
        cpu_ms,
        peak_memory_bytes = stats.memory_peak_bytes,
        create_us = created_at.saturating_duration_since(started_at).as_micros() as u64,
        start_us = observed.start.unwrap_or_default().as_micros() as u64,
        teardown_us = observed.teardown.unwrap_or_default().as_micros() as u64,
        supervise_us = supervised_at.saturating_duration_since(created_at).as_micros() as u64,
        destroy_us = finished_at.saturating_duration_since(supervised_at).as_micros() as u64,
        "run finished"
    );
    Ok(RunResult {
        id: id.to_string(),
        verdict,
        exit_code,
        signal,
        stdout: observed.stdout.to_text(),
        stderr: observed.stderr.to_text(),
        stdout_truncated: observed.stdout.truncated(),
        stderr_truncated: observed.stderr.truncated(),
        wall_ms: wall.as_millis() as u64,
        cpu_ms,
        peak_memory_bytes: stats.memory_peak_bytes,
        overhead_ms: total.saturating_sub(wall).as_millis() as u64,
        node: String::new(),
        isolation,
        message: if verdict == Verdict::InternalError {
            observed.message
        } else {
            None
        },
    })
}

/// What the supervision loop saw.
struct Observed {
    stdout: CappedOutput,
    stderr: CappedOutput,
    exit: Option<ProgramExit>,
    killed_for: Option<KillReason>,
    setup_failed: bool,
    message: Option<String>,
    wall: Option<Duration>,
    /// From the clone of init to the program's start (namespaces, mounts, files).
    start: Option<Duration>,
    /// From the program's exit (as init reported it) to init's own exit being seen: the
    /// teardown of the PID, mount, IPC, UTS and network namespaces.
    teardown: Option<Duration>,
    rusage_cpu_ms: u64,
}

fn decode_status(status: i32) -> Option<ProgramExit> {
    if libc::WIFEXITED(status) {
        Some(ProgramExit::Code(libc::WEXITSTATUS(status)))
    } else if libc::WIFSIGNALED(status) {
        Some(ProgramExit::Signal(libc::WTERMSIG(status)))
    } else {
        None
    }
}

fn receiver(fd: OwnedFd) -> std::io::Result<tokio::net::unix::pipe::Receiver> {
    tokio::net::unix::pipe::Receiver::from_owned_fd(fd)
}

async fn supervise(sandbox: &Sandbox, run: &ValidatedRun, clock: &dyn Clock) -> Observed {
    let mut observed = Observed {
        stdout: CappedOutput::new(OUTPUT_KEPT_BYTES_MAX),
        stderr: CappedOutput::new(OUTPUT_KEPT_BYTES_MAX),
        exit: None,
        killed_for: None,
        setup_failed: false,
        message: None,
        wall: None,
        start: None,
        teardown: None,
        rusage_cpu_ms: 0,
    };
    let cloned_at = clock.now();
    let fail = |observed: &mut Observed, message: String| {
        observed.setup_failed = true;
        observed.message = Some(message);
    };
    let pipes = sandbox::output_pipe().and_then(|out| Ok((out, sandbox::output_pipe()?)));
    let ((stdout_read, stdout_write), (stderr_read, stderr_write)) = match pipes {
        Ok(pipes) => pipes,
        Err(error) => {
            fail(&mut observed, error.to_string());
            return observed;
        }
    };
    let program = ProgramSpec {
        argv: run.argv.clone(),
        env: run.env.clone(),
        cwd: None,
        // RLIMIT_CPU backstop, a second above the budget the cgroup check enforces.
        cpu_seconds_max: Some(run.cpu_time_ms.div_ceil(1000) + 1),
    };
    let files: Vec<SandboxFile> = run
        .files
        .iter()
        .map(|(path, content, mode)| SandboxFile {
            relative_path: path.clone(),
            content: content.clone(),
            mode: *mode,
        })
        .collect();
    let process = match sandbox.start_run(
        &program,
        &files,
        run.stdin.clone(),
        stdout_write.as_raw_fd(),
        stderr_write.as_raw_fd(),
    ) {
        Ok(process) => process,
        Err(error) => {
            fail(&mut observed, error.to_string());
            return observed;
        }
    };
    let released_at = clock.now();
    drop(stdout_write);
    drop(stderr_write);
    let init_pid = process.init_pid;
    // If this future is dropped mid-run (the caller gave up), the guard kills and reaps init:
    // its PID namespace dies with it and no zombie is left.
    let mut init_guard = InitGuard {
        pid: init_pid,
        reaped: false,
    };
    // Without a PID namespace, killing init does not kill the program: it runs in a session
    // of its own (setsid before exec), so its process group is killed too. A daemon that
    // starts yet another session escapes that; the isolation label says so ("no pid
    // namespace").
    let own_pid_namespace =
        sandbox.isolation().namespaces.pid && sandbox.isolation().private_filesystem;
    let program_group = std::sync::atomic::AtomicI32::new(0);
    let kill_init = || {
        // SAFETY: our own child, not yet reaped (we reap it only after this loop).
        unsafe { libc::kill(init_pid, libc::SIGKILL) };
        if !own_pid_namespace && program_group.load(std::sync::atomic::Ordering::Relaxed) > 1 {
            // SAFETY: kill(2) on the program's process group, which setsid made its own.
            unsafe {
                libc::kill(
                    -program_group.load(std::sync::atomic::Ordering::Relaxed),
                    libc::SIGKILL,
                )
            };
        }
    };
    let streams = receiver(stdout_read).and_then(|out| Ok((out, receiver(stderr_read)?)));
    let report = receiver(process.report);
    // SAFETY: the OwnedFd is moved into the AsyncFd, which owns it until dropped.
    let pidfd = unsafe { AsyncFd::register_with_interest(process.pidfd, Interest::READABLE) }
        .map_err(std::io::Error::from);
    let (mut stdout, mut stderr, mut report, pidfd) = match (streams, report, pidfd) {
        (Ok((stdout, stderr)), Ok(report), Ok(pidfd)) => (stdout, stderr, report, pidfd),
        (Err(error), _, _) | (_, Err(error), _) | (_, _, Err(error)) => {
            kill_init();
            reap(init_pid);
            init_guard.reaped = true;
            fail(&mut observed, format!("cannot watch the run: {error}"));
            return observed;
        }
    };
    let mut stdout_buffer = vec![0u8; READ_CHUNK_BYTES];
    let mut stderr_buffer = vec![0u8; READ_CHUNK_BYTES];
    let mut report_bytes: Vec<u8> = Vec::new();
    let mut report_buffer = [0u8; 256];
    let (mut stdout_open, mut stderr_open, mut report_open) = (true, true, true);
    let mut program_started_at: Option<Instant> = None;
    let mut program_ended_at: Option<Instant> = None;
    let mut init_exited = false;
    let timeout = Duration::from_millis(run.timeout_ms);
    let has_cgroup = sandbox.cgroup_path().is_some();
    let cpu_budget_ns = run.cpu_time_ms.saturating_mul(1_000_000);
    let mut drain_deadline: Option<Instant> = None;
    // A program cannot use more CPU than its quota allows: the budget cannot be reached before
    // budget / quota of wall time, so the first check waits until then.
    let earliest_cpu_exhaustion_ms = run.cpu_time_ms.saturating_mul(1000) / run.cpu_millis.max(1);
    let mut next_cpu_check =
        released_at + Duration::from_millis(earliest_cpu_exhaustion_ms).max(CPU_CHECK_INTERVAL);
    loop {
        let now = clock.now();
        let start = program_started_at.unwrap_or(released_at);
        if !init_exited && observed.killed_for.is_none() {
            if now.saturating_duration_since(start) >= timeout {
                observed.killed_for = Some(KillReason::WallTimeout);
                kill_init();
            } else if has_cgroup && now >= next_cpu_check {
                next_cpu_check = now + CPU_CHECK_INTERVAL;
                if sandbox.cpu_usage_ns() >= cpu_budget_ns {
                    observed.killed_for = Some(KillReason::CpuBudget);
                    kill_init();
                }
            }
        }
        if init_exited && !stdout_open && !stderr_open && !report_open {
            break;
        }
        if let Some(deadline) = drain_deadline {
            if now >= deadline {
                break;
            }
        }
        let mut wake = start + timeout;
        if has_cgroup && !init_exited {
            wake = wake.min(next_cpu_check);
        }
        if let Some(deadline) = drain_deadline {
            wake = wake.min(deadline);
        }
        let sleep_for = wake.saturating_duration_since(now);
        tokio::select! {
            read = stdout.read(&mut stdout_buffer), if stdout_open => match read {
                Ok(0) | Err(_) => stdout_open = false,
                Ok(count) => observed.stdout.push(&stdout_buffer[..count]),
            },
            read = stderr.read(&mut stderr_buffer), if stderr_open => match read {
                Ok(0) | Err(_) => stderr_open = false,
                Ok(count) => observed.stderr.push(&stderr_buffer[..count]),
            },
            read = report.read(&mut report_buffer), if report_open => match read {
                Ok(0) | Err(_) => report_open = false,
                Ok(count) => {
                    report_bytes.extend_from_slice(&report_buffer[..count]);
                    while report_bytes.len() >= sandbox::REPORT_RECORD_BYTES {
                        let record: Vec<u8> = report_bytes.drain(..sandbox::REPORT_RECORD_BYTES).collect();
                        let Some(record) = sandbox::Report::decode(&record) else { continue };
                        match record.tag {
                            sandbox::REPORT_STARTED => {
                                program_started_at = Some(clock.now());
                                program_group.store(record.a, std::sync::atomic::Ordering::Relaxed);
                            }
                            sandbox::REPORT_EXITED => {
                                program_ended_at = Some(clock.now());
                                observed.exit = decode_status(record.a);
                            }
                            sandbox::REPORT_SETUP_FAILED | sandbox::REPORT_EXEC_FAILED => {
                                fail(&mut observed, sandbox::describe_failure(&[record], &process.steps));
                            }
                            _ => {}
                        }
                    }
                }
            },
            ready = pidfd.readable(), if !init_exited => {
                if let Ok(mut guard) = ready {
                    guard.clear_ready();
                }
                init_exited = true;
                observed.rusage_cpu_ms = reap(init_pid);
                init_guard.reaped = true;
                if !own_pid_namespace && program_group.load(std::sync::atomic::Ordering::Relaxed) > 1 {
                    // Whatever the program left in its process group goes with the run.
                    // SAFETY: kill(2) on the program's own process group.
                    unsafe { libc::kill(-program_group.load(std::sync::atomic::Ordering::Relaxed), libc::SIGKILL) };
                }
                let init_exited_at = clock.now();
                if let Some(ended) = program_ended_at {
                    observed.teardown = Some(init_exited_at.saturating_duration_since(ended));
                }
                program_ended_at.get_or_insert(init_exited_at);
                // With a PID namespace every writer is gone now; without one a daemon may
                // hold the pipes: give them a bounded moment.
                drain_deadline = Some(clock.now() + DRAIN_AFTER_EXIT);
            },
            () = tokio::time::sleep(sleep_for) => {},
        }
        let total_output = observed.stdout.total_bytes() + observed.stderr.total_bytes();
        if total_output > OUTPUT_TOTAL_BYTES_MAX && observed.killed_for.is_none() && !init_exited {
            observed.killed_for = Some(KillReason::OutputCap);
            kill_init();
        }
    }
    observed.start = program_started_at.map(|started| started.saturating_duration_since(cloned_at));
    if let (Some(started), Some(ended)) = (program_started_at, program_ended_at) {
        observed.wall = Some(ended.saturating_duration_since(started));
    }
    if observed.exit.is_none() && observed.killed_for.is_some() {
        observed.exit = Some(ProgramExit::Signal(libc::SIGKILL));
    }
    observed
}

/// Kills and reaps a run's init process unless it was reaped already.
struct InitGuard {
    pid: libc::pid_t,
    reaped: bool,
}

impl Drop for InitGuard {
    fn drop(&mut self) {
        if !self.reaped {
            // SAFETY: our own child, not reaped yet. Every other process of the run lives in
            // init's PID namespace as its descendant, so init's exit completes promptly.
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
            reap(self.pid);
        }
    }
}

/// Reaps the init process; returns the CPU time (ms) it and its reaped descendants used.
fn reap(pid: libc::pid_t) -> u64 {
    let mut status = 0;
    // SAFETY: rusage is plain data we own; waiting for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let millis = |time: libc::timeval| (time.tv_sec as u64) * 1000 + (time.tv_usec as u64) / 1000;
    millis(usage.ru_utime) + millis(usage.ru_stime)
}
