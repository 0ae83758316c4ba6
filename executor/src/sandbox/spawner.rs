//! [`SandboxSpawner`]: the executor core's [`Spawner`] seam for a workstation's processes, each
//! started inside the workstation's long-lived sandbox (its namespaces, uid, limits) and
//! tracked by a cgroup of its own below the sandbox's, so that killing a process's tree kills
//! exactly what it started (double-forked daemons included) and nothing of its siblings.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use nix::sys::signal::Signal;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use super::{output_pipe, ProgramSpec, Sandbox, SandboxCgroup};
use crate::spawner::{ProcessExit, ProcessSpec, ProcessTree, SpawnError, SpawnedProcess, Spawner};

/// Starts processes inside one workstation's sandbox.
#[derive(Debug, Clone)]
pub struct SandboxSpawner {
    sandbox: Arc<Sandbox>,
}

impl SandboxSpawner {
    /// A spawner for the processes of the workstation that owns `sandbox`.
    pub fn new(sandbox: Arc<Sandbox>) -> Self {
        SandboxSpawner { sandbox }
    }

    /// The sandbox.
    pub fn sandbox(&self) -> &Arc<Sandbox> {
        &self.sandbox
    }
}

fn start_error(program: &str, reason: impl std::fmt::Display) -> SpawnError {
    SpawnError::Start {
        program: program.to_string(),
        source: std::io::Error::other(reason.to_string()),
    }
}

impl Spawner for SandboxSpawner {
    fn spawn(&self, spec: &ProcessSpec, label: &str) -> Result<SpawnedProcess, SpawnError> {
        let program = spec.argv.first().ok_or(SpawnError::EmptyArgv)?.clone();
        let (stdout_read, stdout_write) =
            output_pipe().map_err(|error| start_error(&program, error))?;
        let (stderr_read, stderr_write) =
            output_pipe().map_err(|error| start_error(&program, error))?;
        let program_spec = ProgramSpec {
            argv: spec.argv.clone(),
            env: spec.env.clone(),
            cwd: spec
                .cwd
                .as_ref()
                .map(|cwd| cwd.to_string_lossy().into_owned()),
            cpu_seconds_max: None,
        };
        let spawned = self
            .sandbox
            .spawn(
                &program_spec,
                stdout_write.as_raw_fd(),
                stderr_write.as_raw_fd(),
            )
            .map_err(|error| start_error(&program, error))?;
        drop(stdout_write);
        drop(stderr_write);
        let pid = spawned.pid;
        // SAFETY: pidfd_open on our own, not yet reaped child: the pid cannot be reused.
        let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        let tree = Arc::new(SandboxProcessTree {
            main_pid: pid,
            cgroup: spawned.tree,
            main_reaped: AtomicBool::new(false),
        });
        if pidfd < 0 {
            let error = std::io::Error::last_os_error();
            let _ = tree.kill();
            let _ = reap_blocking(pid);
            return Err(SpawnError::Control(error));
        }
        // SAFETY: the fd was just created and is owned by nobody else.
        let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as i32) };
        tracing::debug!(label, pid, program = %program, sandbox = self.sandbox.name(), "spawned sandboxed process");
        let exit_tree = Arc::clone(&tree);
        let exit = Box::pin(async move {
            // SAFETY: the OwnedFd moves into the AsyncFd, which owns it until dropped.
            let pidfd = unsafe { AsyncFd::register_with_interest(pidfd, Interest::READABLE) }
                .map_err(|error| SpawnError::Wait(error.into()))?;
            let mut guard = pidfd.readable().await.map_err(SpawnError::Wait)?;
            guard.clear_ready();
            let status = reap_blocking(pid).map_err(SpawnError::Wait)?;
            exit_tree.forget_if_empty();
            Ok(status)
        });
        Ok(SpawnedProcess {
            pid: pid as u32,
            stdout: stdout_read,
            stderr: stderr_read,
            exit,
            tree,
        })
    }
}

/// Waits for `pid` (which has exited or is about to) and decodes its status.
fn reap_blocking(pid: libc::pid_t) -> std::io::Result<ProcessExit> {
    loop {
        let mut status = 0;
        // SAFETY: waiting for our own child.
        let reaped = unsafe { libc::waitpid(pid, &mut status, 0) };
        if reaped == pid {
            return Ok(if libc::WIFEXITED(status) {
                ProcessExit {
                    code: Some(libc::WEXITSTATUS(status)),
                    signal: None,
                }
            } else {
                ProcessExit {
                    code: None,
                    signal: Some(libc::WTERMSIG(status)),
                }
            });
        }
        let error = std::io::Error::last_os_error();
        if error.kind() != std::io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

/// A sandboxed process and everything it started: the members of its cgroup.
#[derive(Debug)]
struct SandboxProcessTree {
    main_pid: libc::pid_t,
    cgroup: Option<SandboxCgroup>,
    main_reaped: AtomicBool,
}

impl SandboxProcessTree {
    fn members(&self) -> Vec<i32> {
        match &self.cgroup {
            Some(cgroup) => cgroup.pids(),
            // Without cgroups only the main process is known.
            None if !self.main_reaped.load(Ordering::SeqCst) => vec![self.main_pid],
            None => Vec::new(),
        }
    }

    /// Removes the tree's cgroup once nothing is left in it.
    fn forget_if_empty(&self) {
        self.main_reaped.store(true, Ordering::SeqCst);
        if let Some(cgroup) = &self.cgroup {
            if cgroup.pids().is_empty() {
                let _ = cgroup.remove();
            }
        }
    }
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next().map(|state| state == "Z"))
        })
        .unwrap_or(true)
}

impl ProcessTree for SandboxProcessTree {
    fn signal(&self, signal: Signal) -> Result<usize, SpawnError> {
        let mut signalled = 0;
        for pid in self.members() {
            // SAFETY: kill(2) has no memory-safety preconditions.
            if unsafe { libc::kill(pid, signal as i32) } == 0 {
                signalled += 1;
            }
        }
        Ok(signalled)
    }

    fn is_alive(&self) -> Result<bool, SpawnError> {
        Ok(self.members().into_iter().any(|pid| !is_zombie(pid)))
    }

    fn kill(&self) -> Result<usize, SpawnError> {
        let members = self.members().len();
        match &self.cgroup {
            Some(cgroup) => cgroup
                .kill_all()
                .map_err(|error| SpawnError::Control(std::io::Error::other(error.to_string())))?,
            None => {
                if !self.main_reaped.load(Ordering::SeqCst) {
                    // SAFETY: our own child, not yet reaped.
                    unsafe { libc::kill(self.main_pid, libc::SIGKILL) };
                }
            }
        }
        if self.main_reaped.load(Ordering::SeqCst) {
            if let Some(cgroup) = &self.cgroup {
                let _ = cgroup.remove();
            }
        }
        Ok(members)
    }

    fn main_reaped(&self) {
        self.main_reaped.store(true, Ordering::SeqCst);
    }
}
