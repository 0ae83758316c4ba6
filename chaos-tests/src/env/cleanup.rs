//! Finding and removing everything a run created: processes (marked with the run's
//! environment variable or living in its namespaces), mounts, namespaces and directories. Used
//! by the drop guards of a run, and by `shoal-chaos --cleanup` after a run that crashed.

use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use nix::mount::{umount2, MntFlags};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::Serialize;
use tracing::{info, warn};

use super::{run, RunTag, PREFIX, RUN_ENV_VAR};
use crate::clock::poll_until;

/// What belongs to runs matching a filter (one run's tag, or every run).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Leftovers {
    /// Network namespaces.
    pub namespaces: Vec<String>,
    /// Processes (pid).
    pub processes: Vec<i32>,
    /// Mount points.
    pub mounts: Vec<String>,
    /// Directories under the temp dir.
    pub dirs: Vec<PathBuf>,
}

impl Leftovers {
    /// Whether nothing was found.
    pub fn is_empty(&self) -> bool {
        self.namespaces.is_empty()
            && self.processes.is_empty()
            && self.mounts.is_empty()
            && self.dirs.is_empty()
    }
}

/// Which runs to look for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// One run.
    Run(RunTag),
    /// Every run of the harness on this host.
    All,
}

impl Scope {
    /// The name prefix of what this scope covers.
    fn prefix(&self) -> String {
        match self {
            Scope::Run(tag) => tag.prefix(),
            Scope::All => format!("{PREFIX}-"),
        }
    }

    fn matches_env(&self, value: &str) -> bool {
        match self {
            Scope::Run(tag) => value == tag.as_str(),
            Scope::All => true,
        }
    }
}

/// Lists what belongs to `scope`.
pub fn find(scope: &Scope) -> Leftovers {
    let prefix = scope.prefix();
    let namespaces: Vec<String> = run("ip", &["netns", "list"])
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| name.starts_with(&prefix))
        .map(str::to_string)
        .collect();
    let mut processes = marked_processes(scope);
    for ns in &namespaces {
        processes.extend(namespace_pids(ns));
    }
    let own = std::process::id() as i32;
    processes.retain(|&pid| pid != own);
    processes.sort_unstable();
    processes.dedup();
    let mounts = mounts_matching(&prefix);
    let dirs = fs::read_dir(std::env::temp_dir())
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    Leftovers {
        namespaces,
        processes,
        mounts,
        dirs,
    }
}

/// Removes what belongs to `scope`; returns what was found (and removed).
pub fn remove(scope: &Scope) -> Leftovers {
    let found = find(scope);
    for &pid in &found.processes {
        let _ = kill(Pid::from_raw(pid), Signal::SIGCONT);
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    let gone = poll_until(Duration::from_secs(5), 20, || {
        found
            .processes
            .iter()
            .all(|&pid| super::process::proc_state(pid) == super::process::ProcState::Gone)
    });
    if !gone {
        warn!(pids = ?found.processes, "some processes survived SIGKILL for 5 s");
    }
    // Deepest mount points first.
    let mut mounts = found.mounts.clone();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for mount_point in &mounts {
        if let Err(error) = umount2(mount_point.as_str(), MntFlags::MNT_DETACH) {
            warn!(mount_point = mount_point.as_str(), %error, "could not unmount");
        }
    }
    for ns in &found.namespaces {
        if let Err(error) = run("ip", &["netns", "del", ns]) {
            warn!(ns = ns.as_str(), %error, "could not delete namespace");
        }
    }
    for dir in &found.dirs {
        if let Err(error) = fs::remove_dir_all(dir) {
            warn!(dir = %dir.display(), %error, "could not remove directory");
        }
    }
    if !found.is_empty() {
        info!(?found, "cleaned up");
    }
    found
}

/// Kills every process inside network namespace `ns`.
pub fn kill_namespace_processes(ns: &str) {
    for pid in namespace_pids(ns) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGCONT);
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

fn namespace_pids(ns: &str) -> Vec<i32> {
    run("ip", &["netns", "pids", ns])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Processes whose environment carries the run marker.
fn marked_processes(scope: &Scope) -> Vec<i32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let needle = format!("{RUN_ENV_VAR}=");
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()))
        .filter(|pid| {
            let Ok(environ) = fs::read(format!("/proc/{pid}/environ")) else {
                return false;
            };
            environ.split(|&b| b == 0).any(|var| {
                std::str::from_utf8(var)
                    .ok()
                    .and_then(|v| v.strip_prefix(&needle))
                    .is_some_and(|value| scope.matches_env(value))
            })
        })
        .collect()
}

/// Mount points (in this mount namespace) whose source or path carries `prefix`.
fn mounts_matching(prefix: &str) -> Vec<String> {
    let Ok(mountinfo) = fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    mountinfo
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let mount_point = fields.get(4)?;
            // After the " - " separator: fstype, source, options.
            let sep = fields.iter().position(|f| *f == "-")?;
            let source = fields.get(sep + 2)?;
            // Namespace handles under /run/netns are removed by `ip netns del`.
            let is_ours = (source.starts_with(prefix) || mount_point.contains(prefix))
                && !mount_point.starts_with("/run/netns");
            is_ours.then(|| mount_point.to_string())
        })
        .collect()
}

/// Removes everything of its run when dropped: the last line of defence of a run, after the
/// network's and the processes' own guards.
#[derive(Debug)]
pub struct RunGuard {
    tag: RunTag,
}

impl RunGuard {
    /// Guards run `tag`.
    pub fn new(tag: RunTag) -> Self {
        Self { tag }
    }
}

impl Drop for RunGuard {
    fn drop(&mut self) {
        remove(&Scope::Run(self.tag.clone()));
    }
}
