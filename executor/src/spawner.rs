//! The process seam (DESIGN.md §2): every user process the executor starts goes through a
//! [`Spawner`].
//!
//! A spawner turns a [`ProcessSpec`] into a running process and hands back a
//! [`SpawnedProcess`]: its pid, its stdout and stderr pipes, a future that resolves when it
//! exits, and a [`ProcessTree`] handle that can signal or kill *everything* the process started.
//! The workstation actor only talks to these traits, so the sandbox can put namespaces and a
//! cgroup around processes (and use the cgroup to find the whole tree) without touching the
//! actor.
//!
//! `HostSpawner` (feature `test-support`, for tests and benchmarks) is the unsandboxed
//! implementation: it runs processes directly on the host in their own session and finds their
//! trees through `/proc`. The node spawns only through the sandbox (`SandboxSpawner`).

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;

use futures::future::BoxFuture;
use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};

#[cfg(any(test, feature = "test-support"))]
pub use crate::host_spawner::HostSpawner;

/// What to run: the program and its arguments, extra environment variables, working directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessSpec {
    /// Program and arguments; `argv[0]` is looked up in `PATH` when it has no slash.
    pub argv: Vec<String>,
    /// Environment variables set on top of the spawner's base environment, in order.
    #[serde(default)]
    pub env: Vec<(String, String)>,
    /// Working directory; the spawner's default when absent.
    #[serde(default)]
    pub cwd: Option<PathBuf>,
}

impl ProcessSpec {
    /// A spec with just a command line.
    pub fn new<I, S>(argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            argv: argv.into_iter().map(Into::into).collect(),
            env: Vec::new(),
            cwd: None,
        }
    }
}

/// How a process ended: an exit code, or the signal that killed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessExit {
    /// The exit code, when the process exited by itself.
    pub code: Option<i32>,
    /// The signal number, when a signal killed the process.
    pub signal: Option<i32>,
}

impl ProcessExit {
    /// Exited with code 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

impl From<std::process::ExitStatus> for ProcessExit {
    fn from(status: std::process::ExitStatus) -> Self {
        use std::os::unix::process::ExitStatusExt as _;
        Self {
            code: status.code(),
            signal: status.signal(),
        }
    }
}

/// Why spawning or controlling a process failed.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// The spec has no program to run. Retrying the same spec cannot help.
    #[error("argv is empty")]
    EmptyArgv,
    /// The operating system refused to start the program (not found, not executable, out of
    /// processes...). Retrying may help only if the cause is transient.
    #[error("cannot start {program:?}: {source}")]
    Start {
        /// `argv[0]`.
        program: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Inspecting or signalling processes failed.
    #[error("process control failed: {0}")]
    Control(#[source] std::io::Error),
    /// Waiting for the process failed.
    #[error("waiting for the process failed: {0}")]
    Wait(#[source] std::io::Error),
}

/// The whole tree of processes that grew from one spawned process, including descendants that
/// left its session or process group (a double-forked `setsid` daemon).
///
/// Implementations must make "nothing outlives [`ProcessTree::kill`]" true: the host spawner
/// tracks the tree through `/proc`; a sandbox spawner uses its cgroup.
pub trait ProcessTree: Send + Sync + std::fmt::Debug {
    /// Sends `signal` to every live process of the tree; returns how many were signalled.
    /// Non-blocking apart from inspecting the process table.
    fn signal(&self, signal: Signal) -> Result<usize, SpawnError>;

    /// Whether any process of the tree, other than a zombie, is still alive.
    fn is_alive(&self) -> Result<bool, SpawnError>;

    /// Kills (SIGKILL) every process of the tree, repeating until none is left (so that
    /// processes forked meanwhile are caught too), and reaps those that became the caller's
    /// children. Returns how many processes were killed. Blocks for a bounded time (a few
    /// milliseconds normally): call it from a blocking-capable thread.
    fn kill(&self) -> Result<usize, SpawnError>;

    /// Marks the tree's main process as reaped, so that its pid (which the kernel may now reuse
    /// for an unrelated process) is no longer used to find the tree. The workstation actor
    /// calls it when the exit future resolves.
    fn main_reaped(&self);
}

/// A freshly started process.
pub struct SpawnedProcess {
    /// The pid of the main process, as seen by the executor.
    pub pid: u32,
    /// The read end of the process's stdout pipe.
    pub stdout: OwnedFd,
    /// The read end of the process's stderr pipe.
    pub stderr: OwnedFd,
    /// Resolves once, when the main process has exited and been reaped.
    pub exit: BoxFuture<'static, Result<ProcessExit, SpawnError>>,
    /// The process and everything it starts.
    pub tree: Arc<dyn ProcessTree>,
}

impl std::fmt::Debug for SpawnedProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpawnedProcess")
            .field("pid", &self.pid)
            .field("tree", &self.tree)
            .finish_non_exhaustive()
    }
}

/// Starts processes. One spawner serves every workstation of a node.
pub trait Spawner: Send + Sync + std::fmt::Debug {
    /// Starts `spec` with stdin closed (`/dev/null`) and stdout and stderr piped. Must be called
    /// from within a tokio runtime (the exit future is driven by it). `label` names the owner
    /// (workstation and process id) for logs and tracking; it carries no meaning otherwise.
    fn spawn(&self, spec: &ProcessSpec, label: &str) -> Result<SpawnedProcess, SpawnError>;
}
