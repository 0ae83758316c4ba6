//! [`HostSpawner`]: runs processes directly on the host, without a sandbox.

use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::host_process_tree::{HostProcessTree, TREE_MARKER_VAR};
use crate::spawner::{ProcessExit, ProcessSpec, SpawnError, SpawnedProcess, Spawner};

/// Spawns processes on the host, each in a session (and process group) of its own.
///
/// The whole tree of a process is found through `/proc` (see [`HostProcessTree`]): its
/// descendants, its session and process group, and any process carrying its tree marker in
/// the environment, which is how a double-forked `setsid` daemon is still found. Construction
/// makes the calling process a child subreaper (`PR_SET_CHILD_SUBREAPER`, process-wide), so
/// such orphans are re-parented to this process rather than to init and the tree kill can
/// reap them. This is the fallback for hosts without cgroups; the sandbox spawner finds trees
/// through its cgroup instead.
#[derive(Debug)]
pub struct HostSpawner {
    /// The spawning process's pid, part of every marker so that two nodes on one host (as in
    /// `shoal dev`) never share one.
    own_pid: u32,
}

/// Makes tree markers unique among every process this OS process spawns. Process-wide, not
/// per spawner: two spawners in one process (tests, or two workstations' worth of them) must
/// never hand out the same marker, or one tree's stop would kill the other's processes.
static SPAWNED_TOTAL: AtomicU64 = AtomicU64::new(0);

impl HostSpawner {
    /// A host spawner. Becoming a subreaper is best effort: if the kernel refuses, trees are
    /// still found and killed, and init reaps orphans.
    pub fn new() -> Self {
        if let Err(error) = nix::sys::prctl::set_child_subreaper(true) {
            tracing::warn!(%error, "cannot become a child subreaper; orphans go to init");
        }
        Self {
            own_pid: std::process::id(),
        }
    }
}

impl Default for HostSpawner {
    fn default() -> Self {
        Self::new()
    }
}

impl Spawner for HostSpawner {
    fn spawn(&self, spec: &ProcessSpec, label: &str) -> Result<SpawnedProcess, SpawnError> {
        let program = spec.argv.first().ok_or(SpawnError::EmptyArgv)?;
        let serial = SPAWNED_TOTAL.fetch_add(1, Ordering::Relaxed);
        let marker_value = format!("{}.{}", self.own_pid, serial);

        let mut command = tokio::process::Command::new(program);
        command
            .args(&spec.argv[1..])
            .envs(spec.env.iter().map(|(key, value)| (key, value)))
            .env(TREE_MARKER_VAR, &marker_value)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(false);
        if let Some(cwd) = &spec.cwd {
            command.current_dir(cwd);
        }
        // SAFETY: the closure runs between fork and exec and only calls setsid(2), which is
        // async-signal-safe; it allocates nothing and takes no locks.
        unsafe {
            command.pre_exec(|| {
                nix::unistd::setsid()
                    .map(|_| ())
                    .map_err(std::io::Error::from)
            });
        }
        let start_error = |source| SpawnError::Start {
            program: program.clone(),
            source,
        };
        let mut child = command.spawn().map_err(start_error)?;
        let pid = child.id().ok_or_else(|| {
            start_error(std::io::Error::other(
                "child exited before its pid was read",
            ))
        })?;
        let tree = Arc::new(HostProcessTree::new(pid, &marker_value));
        let pipes = (child.stdout.take(), child.stderr.take());
        let (Some(stdout), Some(stderr)) = pipes else {
            // Cannot happen with Stdio::piped(); clean up rather than leak the child.
            let _ = child.start_kill();
            return Err(start_error(std::io::Error::other(
                "stdout/stderr pipe missing",
            )));
        };
        let stdout = stdout.into_owned_fd().map_err(SpawnError::Control)?;
        let stderr = stderr.into_owned_fd().map_err(SpawnError::Control)?;
        tracing::debug!(label, pid, program = %program, "spawned host process");

        let exit = Box::pin(async move {
            child
                .wait()
                .await
                .map(ProcessExit::from)
                .map_err(SpawnError::Wait)
        });
        Ok(SpawnedProcess {
            pid,
            stdout,
            stderr,
            exit,
            tree,
        })
    }
}
