//! The messages a [`crate::workstation::WorkstationActor`] answers, and what they return.

use actix::Message;
use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::log_buffer::{LogRead, LogRecord};
use crate::process_id::ProcId;
use crate::restart_policy::RestartPolicy;
use crate::spawner::{ProcessSpec, SpawnError};

/// The observed state of a process (SPEC.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProcessState {
    /// Being spawned.
    Starting,
    /// Its main process is alive.
    Running,
    /// Ended and will not be restarted (by policy, or because it was stopped).
    Exited,
    /// Ended and waiting for its restart delay.
    Backoff,
    /// Ended after too many fast exits; not restarted any more.
    CrashLoop,
}

/// What [`ListProcesses`] reports per process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessStatus {
    /// The process id within the workstation.
    pub id: ProcId,
    /// Its command line.
    pub argv: Vec<String>,
    /// Its restart policy.
    pub restart: RestartPolicy,
    /// Its state.
    pub state: ProcessState,
    /// The pid of its current main process, while running.
    pub pid: Option<u32>,
    /// Exit code of the last run, if it exited by itself.
    pub exit_code: Option<i32>,
    /// Signal that ended the last run, if any.
    pub signal: Option<i32>,
    /// How many times it was restarted.
    pub restarts: u32,
    /// When the current (or last) run started, Unix milliseconds.
    pub started_at_ms: Option<u64>,
    /// When the last run ended, Unix milliseconds.
    pub exited_at_ms: Option<u64>,
    /// Why the last start failed, if it did.
    pub last_error: Option<String>,
}

/// One event of a log follower, in log order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogEvent {
    /// `bytes` bytes of the log between the follower's position and the next event are no
    /// longer retained (the follower was too slow, or asked for an offset that is gone).
    Dropped {
        /// How many bytes were missed.
        bytes: u64,
    },
    /// A record (possibly a piece of one; see `follower_event_bytes_max`).
    Record(LogRecord),
    /// A run of a process ended. Delivered after every byte that run wrote before its exit
    /// was recorded.
    Exit {
        /// The process.
        proc: ProcId,
        /// The log offset at which the exit was recorded.
        offset: u64,
        /// Exit code, if it exited by itself.
        code: Option<i32>,
        /// Signal that ended it, if any.
        signal: Option<i32>,
        /// How many times the process had been restarted before this run.
        restarts: u32,
        /// When the exit was recorded, Unix milliseconds.
        ts_ms: u64,
    },
}

/// The receiving end of a follower: bounded; dropping it unsubscribes.
pub type LogFollower = mpsc::Receiver<LogEvent>;

/// What can go wrong when asking a workstation to do something.
#[derive(Debug, thiserror::Error)]
pub enum WorkstationError {
    /// No process with this id. Retrying cannot help.
    #[error("no process {0} in this workstation")]
    UnknownProcess(ProcId),
    /// A process with this id already exists.
    #[error("process {0} already exists")]
    DuplicateProcess(ProcId),
    /// The process is not running (nothing to signal).
    #[error("process {0} is not running")]
    NotRunning(ProcId),
    /// The workstation already tracks its maximum of running processes.
    #[error("too many processes (at most {max})")]
    ProcessLimit {
        /// The bound.
        max: usize,
    },
    /// The workstation already serves its maximum of followers.
    #[error("too many log followers (at most {max})")]
    FollowerLimit {
        /// The bound.
        max: usize,
    },
    /// The spec cannot be run (e.g. empty argv).
    #[error("invalid process spec: {0}")]
    InvalidSpec(String),
    /// Starting or controlling the process failed.
    #[error(transparent)]
    Spawn(#[from] SpawnError),
}

/// Starts a process; answers its id. Its output is captured into the log from then on.
#[derive(Debug, Message)]
#[rtype(result = "Result<ProcId, WorkstationError>")]
pub struct StartProcess {
    /// What to run.
    pub spec: ProcessSpec,
    /// When to restart it.
    pub restart: RestartPolicy,
    /// The id to give it (e.g. the one the cluster state knows it by); the next free id when
    /// absent.
    pub proc: Option<ProcId>,
}

/// Stops a process: SIGTERM to its whole tree, SIGKILL to whatever is left after `grace_ms`.
/// Answers once nothing of the tree is left and the exit is recorded. The process is not
/// restarted; it stays listed as `exited`. Also kills what an exited process left behind.
#[derive(Debug, Message)]
#[rtype(result = "Result<(), WorkstationError>")]
pub struct StopProcess {
    /// The process.
    pub proc: ProcId,
    /// How long the tree may take to exit after SIGTERM.
    pub grace_ms: u64,
}

/// Sends a signal to every process of a running process's tree; answers how many got it.
#[derive(Debug, Message)]
#[rtype(result = "Result<usize, WorkstationError>")]
pub struct SignalProcess {
    /// The process.
    pub proc: ProcId,
    /// The signal.
    pub signal: Signal,
}

/// Lists every process with its state.
#[derive(Debug, Message)]
#[rtype(result = "Vec<ProcessStatus>")]
pub struct ListProcesses;

/// Reads the log (SPEC.md "Logs"); `limit_bytes` is capped by `read_bytes_max`.
#[derive(Debug, Message)]
#[rtype(result = "LogRead")]
pub struct ReadLogs {
    /// First offset wanted.
    pub from: u64,
    /// Most bytes wanted.
    pub limit_bytes: usize,
}

/// Follows the log from `from`: retained bytes first, then live output and exit events.
///
/// An offset older than the log starts with a `Dropped` event; an offset past its end starts
/// at the end. Exit events recorded at or after `from` are included, so a reader resuming at
/// the offset it last saw may see the last exit twice but never misses one. The stream ends
/// when the actor stops.
#[derive(Debug, Message)]
#[rtype(result = "Result<LogFollower, WorkstationError>")]
pub struct Follow {
    /// First offset wanted.
    pub from: u64,
}

/// The log's retained range: `(start_offset, end_offset)`.
#[derive(Debug, Message)]
#[rtype(result = "(u64, u64)")]
pub struct LogRange;

/// Stops every process (as [`StopProcess`]); answers when nothing is left.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct StopAll {
    /// Grace between SIGTERM and SIGKILL.
    pub grace_ms: u64,
}

/// Stops every process, then the actor; followers see their stream end.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Shutdown {
    /// Grace between SIGTERM and SIGKILL.
    pub grace_ms: u64,
}
