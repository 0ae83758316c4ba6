//! The cgroup of one sandbox, on cgroup v1 and v2 hosts alike.
//!
//! `cgroups-rs` detects the hierarchy (`hierarchies::auto()`: v2 only when /sys/fs/cgroup itself
//! is a cgroup2 mount, so a hybrid host with an empty v2 mount at /sys/fs/cgroup/unified is
//! correctly treated as v1), creates the group in each controller and writes the limits. The
//! few statistics a run needs are read straight from their files, because the crate's
//! `memory_stat()` reads a dozen files a run does not need.

use std::path::{Path, PathBuf};
use std::time::Duration;

use cgroups_rs::cpu::CpuController;
use cgroups_rs::cpuacct::CpuAcctController;
use cgroups_rs::freezer::FreezerController;
use cgroups_rs::memory::MemController;
use cgroups_rs::pid::PidController;
use cgroups_rs::{Cgroup, CgroupPid, Controller, MaxValue};

use super::SandboxError;

/// Which cgroup interface the host offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupVersion {
    /// Separate hierarchies per controller (memory, cpu, cpuacct, pids, freezer).
    V1,
    /// The unified hierarchy.
    V2,
}

/// CFS period used for CPU quotas: 100 ms, the kernel's default.
const CPU_PERIOD_US: u64 = 100_000;
/// How many rounds `kill_all` tries before giving up on a cgroup that keeps processes.
const KILL_ROUNDS_MAX: u32 = 200;
/// Pause between kill rounds: exiting processes need a moment to leave the cgroup.
const KILL_ROUND_PAUSE: Duration = Duration::from_millis(5);

/// Limits written into a sandbox's cgroup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CgroupLimits {
    /// Memory limit in bytes; swap is not allowed on top of it.
    pub memory_bytes: u64,
    /// CPU quota in millicores (1000 = one CPU).
    pub cpu_millis: u64,
    /// Maximum number of processes and threads.
    pub max_processes: u64,
}

/// What the kernel counted for a cgroup.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CgroupStats {
    /// CPU time used by every process that ever ran in the group, in nanoseconds.
    pub cpu_usage_ns: u64,
    /// Highest memory charge seen, in bytes (0 where the kernel does not record it).
    pub memory_peak_bytes: u64,
    /// Processes the OOM killer killed in this group.
    pub oom_kills: u64,
    /// fork/clone calls refused because the pids limit was reached.
    pub pids_limit_hits: u64,
}

fn controllers(version: CgroupVersion) -> Vec<String> {
    controllers_of(version, true)
}

/// The controllers of a group. v1's freezer only makes a kill race-free where nothing else
/// does: a run with a PID namespace of its own dies with its init (the kernel kills the whole
/// namespace and no fork can escape it), so its group can do without one hierarchy (a mkdir, an
/// attach and an rmdir less per run).
fn controllers_of(version: CgroupVersion, freezer: bool) -> Vec<String> {
    let names: &[&str] = match (version, freezer) {
        (CgroupVersion::V1, true) => &["memory", "cpu", "cpuacct", "pids", "freezer"],
        (CgroupVersion::V1, false) => &["memory", "cpu", "cpuacct", "pids"],
        (CgroupVersion::V2, _) => &["memory", "cpu", "pids"],
    };
    names.iter().map(|name| name.to_string()).collect()
}

/// The host's cgroup hierarchy. `hierarchies::auto()` parses /proc/self/mountinfo each time (a
/// few per run); the cgroup mounts of a host do not change while a node runs, so v1's is parsed
/// once and cloned.
fn hierarchy() -> Box<dyn cgroups_rs::Hierarchy> {
    static V1: std::sync::OnceLock<Option<cgroups_rs::hierarchies::V1>> =
        std::sync::OnceLock::new();
    let v1 = V1.get_or_init(|| {
        (!cgroups_rs::hierarchies::is_cgroup2_unified_mode()).then(cgroups_rs::hierarchies::V1::new)
    });
    match v1 {
        Some(v1) => Box::new(v1.clone()),
        None => Box::new(cgroups_rs::hierarchies::V2::new()),
    }
}

/// Detects the cgroup version the crate will use and whether the controllers we need are there.
pub fn detect() -> Option<CgroupVersion> {
    let hierarchy = hierarchy();
    let version = if hierarchy.v2() {
        CgroupVersion::V2
    } else {
        CgroupVersion::V1
    };
    let available: Vec<String> = hierarchy
        .subsystems()
        .iter()
        .map(|subsystem| subsystem.controller_name())
        .collect();
    let needed = controllers(version);
    let missing: Vec<&String> = needed
        .iter()
        .filter(|name| !available.contains(name))
        .collect();
    if missing.is_empty() {
        Some(version)
    } else {
        tracing::warn!(?version, ?missing, "cgroup controllers missing");
        None
    }
}

/// One sandbox's cgroup (a group in each controller on v1).
pub struct SandboxCgroup {
    cgroup: Cgroup,
    version: CgroupVersion,
    relative_path: String,
}

impl std::fmt::Debug for SandboxCgroup {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("SandboxCgroup")
            .field("version", &self.version)
            .field("relative_path", &self.relative_path)
            .finish()
    }
}

fn cgroup_error(what: &str, path: &str, error: impl std::fmt::Display) -> SandboxError {
    SandboxError::Cgroup {
        what: what.to_string(),
        path: path.to_string(),
        reason: error.to_string(),
    }
}

impl SandboxCgroup {
    /// Creates the group `relative_path` (e.g. `shoal-node1/run-…`) and writes the limits.
    pub fn create(
        version: CgroupVersion,
        relative_path: &str,
        limits: CgroupLimits,
    ) -> Result<Self, SandboxError> {
        Self::create_with(version, relative_path, limits, true)
    }

    /// [`SandboxCgroup::create`], optionally without v1's freezer (see `controllers_of`).
    pub(crate) fn create_with(
        version: CgroupVersion,
        relative_path: &str,
        limits: CgroupLimits,
        freezer: bool,
    ) -> Result<Self, SandboxError> {
        let cgroup = Cgroup::new_with_specified_controllers(
            hierarchy(),
            relative_path,
            Some(controllers_of(version, freezer)),
        )
        .map_err(|error| cgroup_error("create", relative_path, error))?;
        let sandbox_cgroup = SandboxCgroup {
            cgroup,
            version,
            relative_path: relative_path.to_string(),
        };
        // cgroups-rs only logs a failed mkdir on v1: check that every controller's group exists.
        for subsystem in sandbox_cgroup.cgroup.subsystems() {
            let path = subsystem.to_controller().path().to_path_buf();
            if !path.is_dir() {
                let _ = sandbox_cgroup.remove();
                return Err(cgroup_error("create", relative_path, "directory missing"));
            }
        }
        if let Err(error) = sandbox_cgroup.apply_limits(limits) {
            let _ = sandbox_cgroup.remove();
            return Err(error);
        }
        Ok(sandbox_cgroup)
    }

    /// Creates a group below this one without limits of its own (they are inherited from this
    /// group): used to tell one process tree of a workstation from the others.
    pub fn create_child(&self, name: &str) -> Result<Self, SandboxError> {
        let relative_path = format!("{}/{name}", self.relative_path);
        let cgroup = Cgroup::new_with_specified_controllers(
            hierarchy(),
            &relative_path,
            Some(controllers(self.version)),
        )
        .map_err(|error| cgroup_error("create", &relative_path, error))?;
        Ok(SandboxCgroup {
            cgroup,
            version: self.version,
            relative_path,
        })
    }

    /// Loads an existing group (for cleaning up what an earlier run of the node left).
    fn load(version: CgroupVersion, relative_path: &str) -> Self {
        SandboxCgroup {
            cgroup: Cgroup::load_with_specified_controllers(
                hierarchy(),
                relative_path,
                controllers(version),
            ),
            version,
            relative_path: relative_path.to_string(),
        }
    }

    fn apply_limits(&self, limits: CgroupLimits) -> Result<(), SandboxError> {
        let path = self.relative_path.as_str();
        let memory: &MemController = self
            .cgroup
            .controller_of()
            .ok_or_else(|| cgroup_error("memory", path, "no memory controller"))?;
        let memory_bytes = i64::try_from(limits.memory_bytes).unwrap_or(i64::MAX);
        memory
            .set_limit(memory_bytes)
            .map_err(|error| cgroup_error("memory limit", path, error))?;
        // Swap off: v2 takes the swap allowance (0), v1 the memory+swap total (= the limit). A
        // v1 kernel booted without swap accounting has no memsw file; with no swap charged
        // there is nothing to limit, so its absence is not an error.
        match self.version {
            CgroupVersion::V2 => {
                if self.file_path::<MemController>("memory.swap.max").is_some() {
                    memory
                        .set_memswap_limit(0)
                        .map_err(|error| cgroup_error("swap limit", path, error))?;
                }
            }
            CgroupVersion::V1 => {
                if self
                    .file_path::<MemController>("memory.memsw.limit_in_bytes")
                    .is_some()
                {
                    memory
                        .set_memswap_limit(memory_bytes)
                        .map_err(|error| cgroup_error("swap limit", path, error))?;
                }
                let _ = memory.set_swappiness(0);
            }
        }
        self.apply_cpu_and_pids(limits)
    }

    fn apply_cpu_and_pids(&self, limits: CgroupLimits) -> Result<(), SandboxError> {
        let path = self.relative_path.as_str();
        let cpu: &CpuController = self
            .cgroup
            .controller_of()
            .ok_or_else(|| cgroup_error("cpu", path, "no cpu controller"))?;
        let quota_us = limits.cpu_millis.saturating_mul(CPU_PERIOD_US) / 1000;
        cpu.set_cfs_quota_and_period(
            Some(i64::try_from(quota_us.max(1000)).unwrap_or(i64::MAX)),
            Some(CPU_PERIOD_US),
        )
        .map_err(|error| cgroup_error("cpu quota", path, error))?;
        let pids: &PidController = self
            .cgroup
            .controller_of()
            .ok_or_else(|| cgroup_error("pids", path, "no pids controller"))?;
        pids.set_pid_max(MaxValue::Value(
            i64::try_from(limits.max_processes).unwrap_or(i64::MAX),
        ))
        .map_err(|error| cgroup_error("pids limit", path, error))?;
        Ok(())
    }

    /// Changes the limits of a live group (a workstation's resize).
    ///
    /// Raising memory always works. Lowering it lets the kernel reclaim what it can (page
    /// cache); if the group still holds more than the new limit (anonymous memory, /tmp files),
    /// the change is refused with [`SandboxError::MemoryBelowUsage`] and the memory limit stays
    /// as it was: a resize never makes the kernel OOM-kill a workstation's processes. CPU quota
    /// and pids limit are then written as given (a pids limit below the current count only
    /// stops new forks).
    pub fn update_limits(&self, limits: CgroupLimits) -> Result<(), SandboxError> {
        let path = self.relative_path.as_str();
        let memory: &MemController = self
            .cgroup
            .controller_of()
            .ok_or_else(|| cgroup_error("memory", path, "no memory controller"))?;
        let memory_bytes = i64::try_from(limits.memory_bytes).unwrap_or(i64::MAX);
        let below_usage = |usage_bytes: u64| SandboxError::MemoryBelowUsage {
            path: path.to_string(),
            limit_bytes: limits.memory_bytes,
            usage_bytes,
        };
        match self.version {
            CgroupVersion::V1 => {
                let has_memsw = self
                    .file_path::<MemController>("memory.memsw.limit_in_bytes")
                    .is_some();
                let current_bytes = self.read_number::<MemController>("memory.limit_in_bytes");
                if current_bytes.is_some_and(|current| limits.memory_bytes >= current) {
                    // memory+swap must never be below memory: raise it first.
                    if has_memsw {
                        memory
                            .set_memswap_limit(memory_bytes)
                            .map_err(|error| cgroup_error("swap limit", path, error))?;
                    }
                    memory
                        .set_limit(memory_bytes)
                        .map_err(|error| cgroup_error("memory limit", path, error))?;
                } else {
                    // The kernel reclaims, then answers EBUSY if the usage still does not fit.
                    if let Err(error) = memory.set_limit(memory_bytes) {
                        let usage = self
                            .read_number::<MemController>("memory.usage_in_bytes")
                            .unwrap_or(0);
                        return Err(if usage > limits.memory_bytes {
                            below_usage(usage)
                        } else {
                            cgroup_error("memory limit", path, error)
                        });
                    }
                    if has_memsw {
                        memory
                            .set_memswap_limit(memory_bytes)
                            .map_err(|error| cgroup_error("swap limit", path, error))?;
                    }
                }
            }
            CgroupVersion::V2 => {
                // memory.max below the usage makes the kernel OOM-kill; memory.high only
                // reclaims. So: high first, look at what is left, then max (or refuse).
                let high = |value: MaxValue| {
                    memory.set_mem(cgroups_rs::memory::SetMemory {
                        high: Some(value),
                        ..Default::default()
                    })
                };
                high(MaxValue::Value(memory_bytes))
                    .map_err(|error| cgroup_error("memory high", path, error))?;
                let usage = self
                    .read_number::<MemController>("memory.current")
                    .unwrap_or(0);
                let result = if usage > limits.memory_bytes {
                    Err(below_usage(usage))
                } else {
                    memory
                        .set_limit(memory_bytes)
                        .map_err(|error| cgroup_error("memory limit", path, error))
                };
                high(MaxValue::Max).map_err(|error| cgroup_error("memory high", path, error))?;
                result?;
            }
        }
        self.apply_cpu_and_pids(limits)
    }

    /// The memory limit, CPU quota and pids limit the kernel holds for the group (for checks
    /// and tests; None where a file is missing or unreadable).
    pub fn current_limits(&self) -> Option<CgroupLimits> {
        let memory_file = match self.version {
            CgroupVersion::V1 => "memory.limit_in_bytes",
            CgroupVersion::V2 => "memory.max",
        };
        let memory_bytes = self.read_number::<MemController>(memory_file)?;
        let quota_us = match self.version {
            CgroupVersion::V1 => self.read_number::<CpuController>("cpu.cfs_quota_us")?,
            CgroupVersion::V2 => {
                let text =
                    std::fs::read_to_string(self.file_path::<CpuController>("cpu.max")?).ok()?;
                text.split_whitespace().next()?.parse().ok()?
            }
        };
        Some(CgroupLimits {
            memory_bytes,
            cpu_millis: quota_us.saturating_mul(1000) / CPU_PERIOD_US,
            max_processes: self.read_number::<PidController>("pids.max")?,
        })
    }

    /// A file of controller `C` holding one number.
    fn read_number<'a, C>(&'a self, file: &str) -> Option<u64>
    where
        &'a C: From<&'a cgroups_rs::Subsystem>,
        C: Controller + cgroups_rs::ControllIdentifier + 'a,
    {
        let path = self.file_path::<C>(file)?;
        std::fs::read_to_string(path).ok()?.trim().parse().ok()
    }

    /// The path of one of the group's files in controller `C`, if the file exists.
    fn file_path<'a, C>(&'a self, file: &str) -> Option<PathBuf>
    where
        &'a C: From<&'a cgroups_rs::Subsystem>,
        C: Controller + cgroups_rs::ControllIdentifier + 'a,
    {
        let controller: &C = self.cgroup.controller_of()?;
        let path = controller.path().join(file);
        path.exists().then_some(path)
    }

    /// The cgroup interface.
    pub fn version(&self) -> CgroupVersion {
        self.version
    }

    /// The group's path relative to the controllers' roots.
    pub fn relative_path(&self) -> &str {
        &self.relative_path
    }

    /// Moves process `pid` (with all its threads) into the group.
    pub fn add_process(&self, pid: i32) -> Result<(), SandboxError> {
        let pid =
            u64::try_from(pid).map_err(|_| cgroup_error("add", &self.relative_path, "bad pid"))?;
        let result = match self.version {
            // The process is single-threaded (just cloned, not yet released). Writing its tid
            // to v1's `tasks` moves it without taking the thread-group rwsem, whose RCU grace
            // period made each `cgroup.procs` write cost milliseconds (one per hierarchy).
            CgroupVersion::V1 => self.cgroup.add_task(CgroupPid::from(pid)),
            CgroupVersion::V2 => self.cgroup.add_task_by_tgid(CgroupPid::from(pid)),
        };
        result.map_err(|error| cgroup_error("add process", &self.relative_path, error))
    }

    /// Process ids currently in the group (in any controller on v1).
    pub fn pids(&self) -> Vec<i32> {
        let mut pids: Vec<i32> = self
            .cgroup
            .procs()
            .into_iter()
            .filter_map(|pid| i32::try_from(pid.pid).ok())
            .collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// CPU time used so far, in nanoseconds (one file read: cheap enough to poll).
    pub fn cpu_usage_ns(&self) -> u64 {
        let read = |path: Option<PathBuf>| {
            path.and_then(|path| std::fs::read_to_string(path).ok())
                .unwrap_or_default()
        };
        match self.version {
            CgroupVersion::V1 => read(self.file_path::<CpuAcctController>("cpuacct.usage"))
                .trim()
                .parse()
                .unwrap_or(0),
            CgroupVersion::V2 => read(self.file_path::<CpuController>("cpu.stat"))
                .lines()
                .find_map(|line| line.strip_prefix("usage_usec "))
                .and_then(|value| value.trim().parse::<u64>().ok())
                .unwrap_or(0)
                .saturating_mul(1000),
        }
    }

    /// Reads what the kernel counted.
    pub fn stats(&self) -> CgroupStats {
        let read = |path: Option<PathBuf>| path.and_then(|path| std::fs::read_to_string(path).ok());
        let keyed = |text: &Option<String>, key: &str| -> u64 {
            text.as_deref()
                .and_then(|text| {
                    text.lines().find_map(|line| {
                        let mut fields = line.split_whitespace();
                        (fields.next() == Some(key))
                            .then(|| fields.next().and_then(|value| value.parse().ok()))
                            .flatten()
                    })
                })
                .unwrap_or(0)
        };
        let number = |text: Option<String>| -> u64 {
            text.and_then(|text| text.trim().parse().ok()).unwrap_or(0)
        };
        let pids_events = read(self.file_path::<PidController>("pids.events"));
        match self.version {
            CgroupVersion::V1 => CgroupStats {
                cpu_usage_ns: number(read(self.file_path::<CpuAcctController>("cpuacct.usage"))),
                memory_peak_bytes: number(read(
                    self.file_path::<MemController>("memory.max_usage_in_bytes"),
                )),
                oom_kills: keyed(
                    &read(self.file_path::<MemController>("memory.oom_control")),
                    "oom_kill",
                ),
                pids_limit_hits: keyed(&pids_events, "max"),
            },
            CgroupVersion::V2 => CgroupStats {
                cpu_usage_ns: keyed(
                    &read(self.file_path::<CpuController>("cpu.stat")),
                    "usage_usec",
                )
                .saturating_mul(1000),
                memory_peak_bytes: number(read(self.file_path::<MemController>("memory.peak"))),
                oom_kills: keyed(
                    &read(self.file_path::<MemController>("memory.events")),
                    "oom_kill",
                ),
                pids_limit_hits: keyed(&pids_events, "max"),
            },
        }
    }

    /// Kills every process in the group and waits until it is empty. On v2 `cgroup.kill` does
    /// it atomically; on v1 the group is frozen first so that nothing can fork between reading
    /// `cgroup.procs` and sending SIGKILL, then thawed so that the killed processes can exit.
    pub fn kill_all(&self) -> Result<(), SandboxError> {
        for _round in 0..KILL_ROUNDS_MAX {
            let pids = self.pids();
            if pids.is_empty() {
                return Ok(());
            }
            match self.version {
                CgroupVersion::V2 => {
                    if self.cgroup.kill().is_err() {
                        for pid in &pids {
                            // SAFETY: kill(2) has no memory-safety preconditions.
                            unsafe { libc::kill(*pid, libc::SIGKILL) };
                        }
                    }
                }
                CgroupVersion::V1 => {
                    let freezer: Option<&FreezerController> = self.cgroup.controller_of();
                    if let Some(freezer) = freezer {
                        let _ = freezer.freeze();
                    }
                    for pid in self.pids() {
                        // SAFETY: kill(2) has no memory-safety preconditions.
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                    }
                    if let Some(freezer) = freezer {
                        let _ = freezer.thaw();
                    }
                }
            }
            std::thread::sleep(KILL_ROUND_PAUSE);
        }
        Err(cgroup_error(
            "kill",
            &self.relative_path,
            "processes remain after repeated SIGKILL",
        ))
    }

    /// Thaws the group if it is frozen (best effort: a group that cannot be thawed fails its
    /// kill rounds with a clear error instead).
    fn thaw(&self) {
        match self.version {
            CgroupVersion::V1 => {
                let freezer: Option<&FreezerController> = self.cgroup.controller_of();
                if let Some(freezer) = freezer {
                    if !matches!(
                        freezer.state(),
                        Ok(cgroups_rs::freezer::FreezerState::Thawed)
                    ) {
                        if let Err(error) = freezer.thaw() {
                            tracing::warn!(%error, path = %self.relative_path, "cannot thaw cgroup");
                        }
                    }
                }
            }
            CgroupVersion::V2 => {
                // v2's freezer is a core file (`cgroup.freeze`); `cgroup.kill` reaches frozen
                // tasks anyway, thawing just makes their exit prompt.
                if let Some(path) = self.file_path::<MemController>("cgroup.freeze") {
                    let _ = std::fs::write(path, "0");
                }
            }
        }
    }

    /// Removes the group if it holds no process (rmdir refuses a populated group, so success
    /// proves it empty); false if it could not (then kill and remove it the long way). Skips
    /// the kill rounds and the search for child groups: for a run's group after its init, and
    /// with it the run's whole PID namespace, was reaped.
    pub fn remove_if_empty(&self) -> bool {
        self.cgroup.subsystems().iter().all(|subsystem| {
            match std::fs::remove_dir(subsystem.to_controller().path()) {
                Ok(()) => true,
                Err(error) => error.kind() == std::io::ErrorKind::NotFound,
            }
        })
    }

    /// Kills what is left and removes the group from every hierarchy.
    pub fn remove(&self) -> Result<(), SandboxError> {
        self.kill_all()?;
        self.cgroup
            .delete()
            .map_err(|error| cgroup_error("remove", &self.relative_path, error))
    }

    /// Whether any of the group's directories still exists.
    pub fn exists(&self) -> bool {
        self.cgroup
            .subsystems()
            .iter()
            .any(|subsystem| subsystem.to_controller().path().exists())
    }
}

/// Removes the group at `relative_path` and every group below it, killing their processes.
///
/// Groups are thawed top-down before anything is killed: a node killed between the freeze and
/// the thaw of `kill_all` leaves a v1 group frozen, a frozen v1 group freezes its whole
/// subtree (thawing a child does not help while its parent is frozen), and SIGKILL only takes
/// effect once a task is thawed. So: thaw (this group, then its children), kill, remove.
pub fn remove_recursive(version: CgroupVersion, relative_path: &str) -> Result<(), SandboxError> {
    let group = SandboxCgroup::load(version, relative_path);
    if group.exists() {
        group.thaw();
    }
    for name in children(version, relative_path) {
        remove_recursive(version, &format!("{relative_path}/{name}"))?;
    }
    if group.exists() {
        group.remove()?;
    }
    Ok(())
}

/// Names of the groups below `prefix` (e.g. `shoal-node1`), in any hierarchy.
pub fn children(version: CgroupVersion, prefix: &str) -> Vec<String> {
    let mut names = Vec::new();
    let group = SandboxCgroup::load(version, prefix);
    for subsystem in group.cgroup.subsystems() {
        let dir: &Path = subsystem.to_controller().path();
        if let Ok(entries) = std::fs::read_dir(dir) {
            for entry in entries.flatten() {
                if entry.file_type().map(|kind| kind.is_dir()).unwrap_or(false) {
                    if let Some(name) = entry.file_name().to_str() {
                        if !names.iter().any(|known: &String| known == name) {
                            names.push(name.to_string());
                        }
                    }
                }
            }
        }
    }
    names
}

/// Removes every group below `prefix` and `prefix` itself, killing what still runs there.
/// Returns how many sandbox groups were removed.
pub fn remove_tree(version: CgroupVersion, prefix: &str) -> Result<usize, SandboxError> {
    let removed = children(version, prefix).len();
    remove_recursive(version, prefix)?;
    Ok(removed)
}
