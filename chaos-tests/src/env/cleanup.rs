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
    /// Cgroup directories the run's nodes created (named in the run dir's `cgroups` file).
    pub cgroups: Vec<PathBuf>,
}

impl Leftovers {
    /// Whether nothing was found.
    pub fn is_empty(&self) -> bool {
        self.namespaces.is_empty()
            && self.processes.is_empty()
            && self.mounts.is_empty()
            && self.dirs.is_empty()
            && self.cgroups.is_empty()
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
    let dirs: Vec<PathBuf> = fs::read_dir(std::env::temp_dir())
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    let cgroups = dirs
        .iter()
        .flat_map(|dir| {
            fs::read_to_string(dir.join(CGROUPS_FILE))
                .unwrap_or_default()
                .lines()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .flat_map(|name: String| cgroup_dirs_named(&name))
        .collect();
    Leftovers {
        namespaces,
        processes,
        mounts,
        dirs,
        cgroups,
    }
}

/// The file in a run's directory listing the top-level cgroup names its nodes use, one a line,
/// so that a later `--cleanup` finds them (the names carry node ids, not the run's tag).
pub const CGROUPS_FILE: &str = "cgroups";

/// Records that the run's nodes create cgroups named `name` (e.g. `shoal-<node id>`).
pub fn record_cgroup_name(tag: &RunTag, name: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(tag.root_dir().join(CGROUPS_FILE))?;
    writeln!(file, "{name}")
}

/// The cgroup root and every v1 controller hierarchy under it.
fn cgroup_hierarchies() -> Vec<PathBuf> {
    let root = PathBuf::from("/sys/fs/cgroup");
    let mut all = vec![root.clone()];
    if let Ok(entries) = fs::read_dir(&root) {
        all.extend(
            entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.is_dir()),
        );
    }
    all
}

/// Existing top-level cgroup directories named `name` in any hierarchy.
fn cgroup_dirs_named(name: &str) -> Vec<PathBuf> {
    if name.is_empty() || name.contains('/') || name.starts_with('.') {
        return Vec::new();
    }
    cgroup_hierarchies()
        .into_iter()
        .map(|h| h.join(name))
        .filter(|p| p.join("cgroup.procs").exists())
        .collect()
}

/// Kills the processes in a cgroup tree and removes its directories, deepest first.
/// Removes a cgroup and its subtree; false if some group is still there (e.g. a killed
/// process that nobody has reaped yet keeps its group busy).
fn remove_cgroup_tree(dir: &std::path::Path) -> bool {
    // An agent killed while it held a v1 group frozen (its kill sequence is freeze, SIGKILL,
    // thaw) leaves the group frozen, and a frozen parent keeps its whole subtree frozen: thaw
    // top-down, before recursing, so that the SIGKILLs below take effect at every depth.
    thaw(dir);
    let mut removed = true;
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.filter_map(Result::ok) {
            if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                removed &= remove_cgroup_tree(&entry.path());
            }
        }
    }
    let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
    let pids: Vec<i32> = procs
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    for &pid in &pids {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    thaw(dir);
    poll_until(Duration::from_secs(2), 20, || {
        fs::read_to_string(dir.join("cgroup.procs"))
            .map(|p| p.trim().is_empty())
            .unwrap_or(true)
    });
    // A process killed a moment ago may still hold the group for a few milliseconds.
    let mut last_error = None;
    let gone = poll_until(Duration::from_secs(2), 20, || match fs::remove_dir(dir) {
        Ok(()) => true,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => true,
        Err(error) => {
            last_error = Some(error);
            false
        }
    });
    if !gone {
        if let Some(error) = last_error {
            warn!(dir = %dir.display(), %error, "could not remove cgroup");
        }
    }
    removed && gone
}

/// Thaws a v1 freezer group (no-op elsewhere: the file exists only in the freezer hierarchy).
fn thaw(dir: &std::path::Path) {
    let state = dir.join("freezer.state");
    if state.exists() {
        let _ = fs::write(state, "THAWED");
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
    let mut cgroups_left = false;
    for cgroup in &found.cgroups {
        cgroups_left |= !remove_cgroup_tree(cgroup);
    }
    for dir in &found.dirs {
        // The run dir holds the record of the run's cgroup names: while one of them is still
        // there, keep it, so that a later `--cleanup` (or the next `remove`) still finds it.
        if cgroups_left && dir.join(CGROUPS_FILE).exists() {
            warn!(dir = %dir.display(), "kept: it records cgroups that are still there");
            continue;
        }
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
