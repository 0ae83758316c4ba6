//! A process started inside a node's network namespace (and a mount namespace of its own), with its output in a log
//! file, and the signals the nemesis sends it: SIGKILL, SIGSTOP, SIGCONT. A skewed wall clock
//! comes from libfaketime preloaded into the process (the host's clock is never touched).

use std::fs::OpenOptions;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use tracing::{debug, warn};

use super::{EnvError, RunTag, RUN_ENV_VAR};
use crate::clock::poll_until;

/// What to start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessSpec {
    /// The network namespace to run in.
    pub ns: String,
    /// The program.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    /// Where stdout and stderr are appended.
    pub log_path: PathBuf,
    /// Wall-clock offset in seconds (negative: set back), through libfaketime.
    pub clock_offset_s: Option<i64>,
    /// Directories that get a fresh, empty tmpfs seen only by this process (mounted in the
    /// mount namespace of its own, so the host never sees it). Nodes that
    /// share one host need this for paths a real node owns alone, such as the WireGuard UAPI
    /// socket directory `/run/wireguard` of a `tun` mesh.
    pub private_dirs: Vec<PathBuf>,
}

/// The state letter of a process in `/proc/PID/stat` that matters here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProcState {
    /// Running or sleeping.
    Alive,
    /// Stopped by a signal (SIGSTOP).
    Stopped,
    /// Exited (zombie or reaped).
    Gone,
}

/// `text` as one single-quoted shell word.
fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "'\\''"))
}

/// A started process; killed (with its process group) and reaped on drop.
#[derive(Debug)]
pub struct ManagedProcess {
    spec: ProcessSpec,
    child: Child,
    exit: Option<ExitStatus>,
}

impl ManagedProcess {
    /// Starts `spec` in its namespace, marked with the run's tag.
    pub fn spawn(spec: ProcessSpec, tag: &RunTag) -> Result<Self, EnvError> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&spec.log_path)
            .map_err(|e| EnvError::io(format!("open {}", spec.log_path.display()), e))?;
        let log_err = log
            .try_clone()
            .map_err(|e| EnvError::io("clone log handle", e))?;
        // Not `ip netns exec`: it remounts /sys for the namespace, which hides the host's
        // cgroup hierarchies from the agent (a real node has them). `unshare` gives the process
        // a mount namespace of its own (slave: the harness's unmounts still reach it, its own
        // mounts never reach the host), `nsenter` moves it into the node's network namespace;
        // both exec, so the pid is the program's.
        let mut command = Command::new("unshare");
        command
            .args(["--mount", "--propagation", "slave", "nsenter"])
            .arg(format!("--net=/run/netns/{}", spec.ns));
        if !spec.private_dirs.is_empty() {
            // `sh` mounts the private dirs and `exec`s the program: the pid stays the program's.
            // The mounts live in the process's own mount namespace and vanish with it.
            let mut script = String::from("set -e; ");
            for dir in &spec.private_dirs {
                let dir = shell_quote(&dir.display().to_string());
                script.push_str(&format!(
                    "mkdir -p {dir}; mount -t tmpfs -o size=1m,mode=0755 shoal-chaos {dir}; "
                ));
            }
            script.push_str("exec \"$0\" \"$@\"");
            command.args(["sh", "-c", &script]);
        }
        command
            .arg(&spec.program)
            .args(&spec.args)
            .env(RUN_ENV_VAR, tag.as_str())
            .envs(spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            // Its own process group, so that cleanup can kill whatever it forked.
            .process_group(0);
        if let Some(offset_s) = spec.clock_offset_s {
            let lib = find_libfaketime()?;
            command
                .env("LD_PRELOAD", lib)
                .env("FAKETIME", format!("{offset_s:+}"))
                // Only the wall clock is set back; timers and timeouts keep real time.
                .env("DONT_FAKE_MONOTONIC", "1");
        }
        let child = command
            .spawn()
            .map_err(|e| EnvError::io(format!("spawn {}", spec.program.display()), e))?;
        debug!(pid = child.id(), ns = spec.ns.as_str(), program = %spec.program.display(), "process started");
        Ok(Self {
            spec,
            child,
            exit: None,
        })
    }

    /// What was started.
    pub fn spec(&self) -> &ProcessSpec {
        &self.spec
    }

    /// The process id (`unshare`, `nsenter` and `sh` exec, so it is the program's pid).
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: Signal) -> Result<(), EnvError> {
        kill(Pid::from_raw(self.pid()), signal)
            .map_err(|e| EnvError::io(format!("kill -{signal} {}", self.pid()), e.into()))
    }

    /// `kill -9`, then reaps it.
    pub fn kill9(&mut self) -> Result<ExitStatus, EnvError> {
        if let Some(status) = self.try_exit()? {
            return Ok(status);
        }
        self.signal(Signal::SIGKILL)?;
        let status = self
            .child
            .wait()
            .map_err(|e| EnvError::io("wait for killed process", e))?;
        self.exit = Some(status);
        Ok(status)
    }

    /// The exit status if it has exited (reaping it), without blocking.
    pub fn try_exit(&mut self) -> Result<Option<ExitStatus>, EnvError> {
        if self.exit.is_none() {
            self.exit = self
                .child
                .try_wait()
                .map_err(|e| EnvError::io("try_wait", e))?;
        }
        Ok(self.exit)
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<Option<ExitStatus>, EnvError> {
        let mut result = Ok(None);
        poll_until(timeout, 20, || match self.try_exit() {
            Ok(Some(status)) => {
                result = Ok(Some(status));
                true
            }
            Ok(None) => false,
            Err(error) => {
                result = Err(error);
                true
            }
        });
        result
    }

    /// The process's state as the kernel reports it.
    pub fn state(&mut self) -> ProcState {
        if matches!(self.try_exit(), Ok(Some(_))) {
            return ProcState::Gone;
        }
        proc_state(self.pid())
    }
}

/// The state of process `pid` from `/proc/PID/stat`.
pub fn proc_state(pid: i32) -> ProcState {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return ProcState::Gone;
    };
    // The state letter follows the command name, which is in parentheses and may contain
    // spaces; take the text after the last ')'.
    match stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next())
    {
        Some('T') | Some('t') => ProcState::Stopped,
        Some('Z') | Some('X') | None => ProcState::Gone,
        Some(_) => ProcState::Alive,
    }
}

impl Drop for ManagedProcess {
    fn drop(&mut self) {
        if matches!(self.try_exit(), Ok(Some(_))) {
            // The program is gone; its group may still hold children it forked.
            let _ = killpg(Pid::from_raw(self.pid()), Signal::SIGKILL);
            return;
        }
        // A stopped process still dies of SIGKILL; SIGCONT first anyway so its group's other
        // members are not left stopped.
        let group = Pid::from_raw(self.pid());
        let _ = killpg(group, Signal::SIGCONT);
        if let Err(error) = killpg(group, Signal::SIGKILL) {
            warn!(pid = self.pid(), %error, "could not kill process group");
        }
        let _ = self.child.wait();
    }
}

/// The libfaketime shared library (Debian package `faketime` or `libfaketime`).
pub fn find_libfaketime() -> Result<PathBuf, EnvError> {
    let candidates = [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/faketime/libfaketime.so.1",
        "/usr/local/lib/faketime/libfaketime.so.1",
    ];
    candidates
        .iter()
        .map(Path::new)
        .find(|p| p.exists())
        .map(Path::to_path_buf)
        .ok_or_else(|| EnvError::MissingTool("libfaketime.so.1 (apt-get install faketime)".into()))
}
