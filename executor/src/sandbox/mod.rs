//! Namespaces, cgroups, a private file system, an unprivileged uid, no capabilities and a
//! seccomp filter around every user process.
//!
//! [`SandboxHost`] is created once per node: it probes what the host permits (and logs it
//! once), removes what an earlier run of the same node left (thawing frozen groups first), and
//! builds the read-only /etc every sandbox sees and, in a mount namespace of its own, the
//! read-only root every run starts from (a copy of it, plus the run's own /proc and /tmp). [`Sandbox`] is one sandbox (one per run, one per workstation): it owns a
//! cgroup `shoal-<node_id>/<name>`, a uid from the node's range and, for workstations, a
//! long-lived init process whose namespaces later processes join. Killing a sandbox kills
//! everything in its cgroup; destroying it leaves no process, cgroup, mount or file behind.

mod cgroup;
mod child;
mod init;
mod netns_pool;
mod probe;
mod rootfs;
mod seccomp;
mod spawner;
mod uid;

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub use cgroup::{CgroupLimits, CgroupStats, CgroupVersion, SandboxCgroup};
pub use probe::{IsolationLevel, IsolationReport, NamespaceSupport};
pub use rootfs::HOME_IN_SANDBOX;
pub use spawner::SandboxSpawner;
pub use uid::{UidLease, UidPool};

pub(crate) use child::{
    describe_failure, output_pipe, Report, StdinPlan, Step, REPORT_EXEC_FAILED, REPORT_EXITED,
    REPORT_RECORD_BYTES, REPORT_SETUP_FAILED, REPORT_STARTED,
};
use child::{InitMode, InitPlan, NodeIdentity, ProgramPlan, Started};
use rootfs::RootLayout;

/// PATH given to every sandboxed process.
pub const SANDBOX_PATH: &str = "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin";
/// Open files per process.
const OPEN_FILES_MAX: libc::rlim_t = 4096;
/// Longest accepted node id (it becomes part of cgroup and directory names).
const NODE_ID_BYTES_MAX: usize = 64;

/// Errors of the sandbox layer.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// A cgroup operation failed.
    #[error("cgroup {what} failed for {path}: {reason}")]
    Cgroup {
        /// The operation.
        what: String,
        /// The cgroup's relative path.
        path: String,
        /// The kernel's or crate's answer.
        reason: String,
    },
    /// Preparing a host directory or file failed.
    #[error("cannot prepare {path}: {reason}")]
    Prepare {
        /// The path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Starting a sandboxed process failed.
    #[error("cannot start sandboxed process: {what}: {reason}")]
    Spawn {
        /// The step.
        what: String,
        /// Why.
        reason: String,
    },
    /// A live sandbox's memory limit cannot be lowered below what it holds (after the kernel
    /// reclaimed what it could); the limit was left unchanged. Retrying after its processes
    /// freed memory can help.
    #[error(
        "cannot lower the memory limit of {path} to {limit_bytes} bytes: its processes hold \
         {usage_bytes} bytes that cannot be reclaimed; the limit is unchanged"
    )]
    MemoryBelowUsage {
        /// The cgroup's relative path.
        path: String,
        /// The requested limit.
        limit_bytes: u64,
        /// What the group holds.
        usage_bytes: u64,
    },
    /// The node's uid range is used up (retrying later can help).
    #[error("no free sandbox user id in the node's range")]
    UidsExhausted,
    /// Invalid configuration or argument.
    #[error("invalid sandbox {field}: {reason}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// Why.
        reason: String,
    },
}

/// Configuration of a node's sandboxes.
#[derive(Clone, Debug)]
pub struct SandboxHostConfig {
    /// The node's id: cgroups live under `shoal-<node_id>`.
    pub node_id: String,
    /// A directory of the node's own (in its data dir) for the sandbox /etc, mount point and
    /// degraded-mode work directories.
    pub state_dir: PathBuf,
    /// First uid of the node's range; default derived from the node id.
    pub first_uid: Option<u32>,
    /// Number of uids in the range.
    pub uid_count: u32,
    /// Tests only: install a filter of the same shape that allows every call it would refuse
    /// (still ENOSYS for clone3 and unknown calls), so that a test can show a call succeeds
    /// without the filter. Never set by the node.
    pub permissive_seccomp_for_tests: bool,
}

impl SandboxHostConfig {
    /// Defaults for `node_id` with state under `state_dir`.
    pub fn new(node_id: impl Into<String>, state_dir: impl Into<PathBuf>) -> Self {
        SandboxHostConfig {
            node_id: node_id.into(),
            state_dir: state_dir.into(),
            first_uid: None,
            uid_count: 65_536,
            permissive_seccomp_for_tests: false,
        }
    }
}

/// Per-node sandbox context: the probe's result, the uid range, the root layout.
pub struct SandboxHost {
    node_id: String,
    cgroup_prefix: String,
    report: IsolationReport,
    layout: Option<RootLayout>,
    work_dir: PathBuf,
    uid_pool: Arc<UidPool>,
    seccomp_filter: Vec<libc::sock_filter>,
    capability_last: u32,
    netns_pool: Option<Arc<netns_pool::NetnsPool>>,
    /// The node's shared sandbox root, built once (see [`Step::EnterMountTemplate`]); runs
    /// start from a copy of it. None where it could not be built (runs then build their root
    /// themselves, as workstations always do: their home needs a host path).
    mount_template: Option<OwnedFd>,
    /// The sealed memfd of the clean init every sandbox's init process execs once set up (see
    /// `init.rs`): PID 1 of a sandbox is never a copy of the node.
    init_image: Option<OwnedFd>,
    /// Where the node's argv and environment live, erased in every forked child.
    identity: NodeIdentity,
}

impl std::fmt::Debug for SandboxHost {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("SandboxHost")
            .field("node_id", &self.node_id)
            .field("isolation", &self.report.label())
            .finish()
    }
}

// SAFETY: the only non-Send/Sync field is the seccomp program, plain data (sock_filter holds no
// pointers) that is only read.
unsafe impl Send for SandboxHost {}
// SAFETY: see above.
unsafe impl Sync for SandboxHost {}

/// Limits of one sandbox.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SandboxLimits {
    /// Memory (including /tmp, which is memory) in bytes; no swap.
    pub memory_bytes: u64,
    /// CPU quota in millicores.
    pub cpu_millis: u64,
    /// Processes and threads.
    pub max_processes: u64,
    /// Size of the private /tmp in bytes.
    pub tmp_bytes: u64,
}

/// What a sandbox is made of.
#[derive(Clone, Debug)]
pub struct SandboxSpec {
    /// Unique name on this node, e.g. `run-<id>` or `ws-<id>` ([A-Za-z0-9_-], ≤ 64 bytes).
    pub name: String,
    /// Limits.
    pub limits: SandboxLimits,
    /// A host directory mounted read-write at [`HOME_IN_SANDBOX`] (workstations).
    pub home: Option<PathBuf>,
}

fn valid_name(field: &'static str, name: &str) -> Result<(), SandboxError> {
    let ok = !name.is_empty()
        && name.len() <= NODE_ID_BYTES_MAX
        && name
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_');
    if ok {
        Ok(())
    } else {
        Err(SandboxError::Invalid {
            field,
            reason: format!("{name:?} must be 1-{NODE_ID_BYTES_MAX} of [A-Za-z0-9_-]"),
        })
    }
}

fn cstring(field: &'static str, value: &[u8]) -> Result<CString, SandboxError> {
    CString::new(value).map_err(|_| SandboxError::Invalid {
        field,
        reason: "contains a NUL byte".to_string(),
    })
}

impl SandboxHost {
    /// Probes the host, logs the isolation level once, removes what an earlier run of this
    /// node left behind, and prepares the sandbox root layout.
    pub fn start(config: SandboxHostConfig) -> Result<Arc<Self>, SandboxError> {
        valid_name("node_id", &config.node_id)?;
        let cgroup_prefix = format!("shoal-{}", config.node_id);
        std::fs::create_dir_all(&config.state_dir).map_err(|error| SandboxError::Prepare {
            path: config.state_dir.clone(),
            reason: error.to_string(),
        })?;
        let work_dir = config.state_dir.join("work");
        let removed = cleanup_stale(&cgroup_prefix, &work_dir)?;
        let report = probe::probe(&cgroup_prefix);
        let layout = if report.private_filesystem {
            Some(RootLayout::prepare(&config.state_dir)?)
        } else {
            None
        };
        std::fs::create_dir_all(&work_dir).map_err(|error| SandboxError::Prepare {
            path: work_dir.clone(),
            reason: error.to_string(),
        })?;
        let first_uid = config
            .first_uid
            .unwrap_or_else(|| UidPool::first_uid_for_node(&config.node_id));
        match report.level {
            IsolationLevel::Full => tracing::info!(
                node_id = %config.node_id,
                isolation = %report.label(),
                cgroup = ?report.cgroup,
                first_uid,
                stale_sandboxes_removed = removed,
                "sandbox isolation probed"
            ),
            IsolationLevel::Partial => tracing::warn!(
                node_id = %config.node_id,
                isolation = %report.label(),
                cgroup = ?report.cgroup,
                stale_sandboxes_removed = removed,
                "sandbox isolation is partial on this host: running with what is permitted"
            ),
        }
        let netns_pool = if report.private_filesystem && report.namespaces.network {
            netns_pool::NetnsPool::start()
        } else {
            None
        };
        let mount_template = match &layout {
            Some(layout) if report.root => {
                match layout
                    .template_steps()
                    .and_then(|steps| child::build_mount_template(&steps))
                {
                    Ok(namespace) => Some(namespace),
                    Err(error) => {
                        tracing::warn!(%error, "cannot build the shared sandbox root; each run builds its own");
                        None
                    }
                }
            }
            _ => None,
        };
        let init_image = if report.private_filesystem {
            match init::memfd() {
                Ok(image) => Some(image),
                // Without it, PID 1 of a sandbox would be a copy of the node: refuse rather than
                // start sandboxes guests can read the node from.
                Err(reason) if cfg!(target_arch = "x86_64") => {
                    return Err(SandboxError::Prepare {
                        path: PathBuf::from("memfd:init"),
                        reason,
                    })
                }
                Err(reason) => {
                    tracing::warn!(%reason, "sandboxes keep a forked init: its memory is a copy of the node's");
                    None
                }
            }
        } else {
            None
        };
        Ok(Arc::new(SandboxHost {
            init_image,
            identity: NodeIdentity::of_this_process(),
            node_id: config.node_id,
            cgroup_prefix,
            report,
            layout,
            work_dir,
            uid_pool: UidPool::new(first_uid, config.uid_count),
            seccomp_filter: if config.permissive_seccomp_for_tests {
                tracing::warn!("seccomp filter is permissive (tests only)");
                seccomp::build_permissive_filter()
            } else {
                seccomp::build_filter()
            },
            // Unknown: drop every number a 64-bit mask can hold (EINVAL above the last is fine).
            netns_pool,
            mount_template,
            capability_last: std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
                .ok()
                .and_then(|text| text.trim().parse().ok())
                .unwrap_or(63),
        }))
    }

    /// What every sandbox of this node gets.
    pub fn isolation(&self) -> &IsolationReport {
        &self.report
    }

    /// The node's cgroup name (`shoal-<node_id>`).
    pub fn cgroup_prefix(&self) -> &str {
        &self.cgroup_prefix
    }

    /// The uid range.
    pub fn uid_pool(&self) -> &Arc<UidPool> {
        &self.uid_pool
    }

    /// Creates a sandbox: cgroup with limits, uid, (degraded mode) work directory. No process
    /// runs in it yet.
    pub fn create(self: &Arc<Self>, spec: SandboxSpec) -> Result<Sandbox, SandboxError> {
        self.create_inner(spec, false)
    }

    /// [`SandboxHost::create`] for a one-shot run: its processes all live in a PID namespace
    /// of its own (where the host permits one), which dies with its init, so its v1 group needs
    /// no freezer and is removed with plain rmdirs once init is reaped.
    pub(crate) fn create_for_run(
        self: &Arc<Self>,
        spec: SandboxSpec,
    ) -> Result<Sandbox, SandboxError> {
        self.create_inner(spec, true)
    }

    fn create_inner(
        self: &Arc<Self>,
        spec: SandboxSpec,
        for_run: bool,
    ) -> Result<Sandbox, SandboxError> {
        valid_name("name", &spec.name)?;
        let own_pid_namespace = self.report.private_filesystem && self.report.namespaces.pid;
        let run_group = for_run && own_pid_namespace;
        let preferred_uid = spec
            .home
            .as_deref()
            .and_then(|home| std::fs::symlink_metadata(home).ok())
            .map(|metadata| metadata.uid());
        let uid = if self.report.dedicated_uid {
            Some(
                self.uid_pool
                    .allocate(preferred_uid)
                    .ok_or(SandboxError::UidsExhausted)?,
            )
        } else {
            None
        };
        let cgroup = match self.report.cgroup {
            Some(version) => Some(cgroup::SandboxCgroup::create_with(
                version,
                &format!("{}/{}", self.cgroup_prefix, spec.name),
                CgroupLimits {
                    memory_bytes: spec.limits.memory_bytes,
                    cpu_millis: spec.limits.cpu_millis,
                    max_processes: spec.limits.max_processes,
                },
                !run_group,
            )?),
            None => None,
        };
        let mut sandbox = Sandbox {
            host: Arc::clone(self),
            name: spec.name,
            limits: Mutex::new(spec.limits),
            home: spec.home,
            cgroup,
            uid,
            work_dir: None,
            reaper: Mutex::new(None),
            n_spawned: std::sync::atomic::AtomicU64::new(0),
            run_group,
            destroyed: false,
        };
        if let (Some(home), Some(uid)) = (&sandbox.home, &sandbox.uid) {
            let path = cstring("home", home.as_os_str().as_bytes())?;
            // SAFETY: lchown on a path we own; never follows a symlink planted at the top.
            if unsafe { libc::lchown(path.as_ptr(), uid.uid(), uid.uid()) } != 0 {
                return Err(SandboxError::Prepare {
                    path: home.clone(),
                    reason: std::io::Error::last_os_error().to_string(),
                });
            }
        }
        if self.layout.is_none() {
            // Degraded mode: the program's working directory is a host directory of ours.
            let dir = self.work_dir.join(&sandbox.name);
            std::fs::create_dir_all(&dir).map_err(|error| SandboxError::Prepare {
                path: dir.clone(),
                reason: error.to_string(),
            })?;
            sandbox.work_dir = Some(dir);
        }
        Ok(sandbox)
    }
}

/// The steps up to pivot_root (mounts, which charge next to nothing) may run before the init
/// process is in its cgroup; everything after must not.
fn placement_barrier(steps: &[Step]) -> usize {
    steps
        .iter()
        .rposition(|step| {
            matches!(
                step,
                Step::PivotRoot { .. }
                    | Step::EnterMountTemplate { .. }
                    | Step::Mount { .. }
                    | Step::MaskPath { .. }
                    | Step::ReadOnlyPath { .. }
            )
        })
        .map(|index| index + 1)
        .unwrap_or(0)
}

impl Drop for SandboxHost {
    /// Every sandbox holds the host, so this runs after the last one is gone: remove the node's
    /// (by now empty) cgroup prefix so that a stopped node leaves nothing behind.
    fn drop(&mut self) {
        if let Some(pool) = &self.netns_pool {
            pool.stop();
        }
        if let Some(version) = self.report.cgroup {
            if let Err(error) = cgroup::remove_recursive(version, &self.cgroup_prefix) {
                tracing::warn!(%error, prefix = %self.cgroup_prefix, "cannot remove the node's cgroups");
            }
        }
    }
}

/// Removes the cgroups and work directories an earlier run of the node (same prefix) left,
/// killing any process still in them. Returns how many sandbox cgroups were removed.
pub fn cleanup_stale(cgroup_prefix: &str, work_dir: &Path) -> Result<usize, SandboxError> {
    let mut removed = 0;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        if let Some(version) = cgroup::detect() {
            removed = cgroup::remove_tree(version, cgroup_prefix)?;
        }
    }
    if work_dir.exists() {
        // remove_dir_all does not follow symlinks a program may have planted.
        std::fs::remove_dir_all(work_dir).map_err(|error| SandboxError::Prepare {
            path: work_dir.to_path_buf(),
            reason: error.to_string(),
        })?;
    }
    Ok(removed)
}

/// Whether any cgroup directory of `cgroup_prefix`'s tree exists (for leak checks in tests).
pub fn cgroup_tree_exists(cgroup_prefix: &str) -> bool {
    match cgroup::detect() {
        Some(version) => !cgroup::children(version, cgroup_prefix).is_empty(),
        None => false,
    }
}

/// The long-lived init process of a workstation sandbox and its namespaces.
#[derive(Debug)]
struct Reaper {
    pid: libc::pid_t,
    _pidfd: OwnedFd,
    /// ipc, uts, net, cgroup, pid, mnt: the order `enter` joins them in (mnt last: it changes
    /// the root).
    namespace_fds: Vec<OwnedFd>,
}

/// One sandbox. Dropping it destroys it (best effort); call [`Sandbox::destroy`] to see errors.
#[derive(Debug)]
pub struct Sandbox {
    host: Arc<SandboxHost>,
    name: String,
    /// Changed by [`Sandbox::update_limits`]; read when a process starts.
    limits: Mutex<SandboxLimits>,
    home: Option<PathBuf>,
    cgroup: Option<cgroup::SandboxCgroup>,
    uid: Option<UidLease>,
    work_dir: Option<PathBuf>,
    reaper: Mutex<Option<Reaper>>,
    n_spawned: std::sync::atomic::AtomicU64,
    /// A run's group in its own PID namespace: no freezer, no child groups (see
    /// [`SandboxHost::create_for_run`]).
    run_group: bool,
    destroyed: bool,
}

/// What to run in a sandbox.
#[derive(Clone, Debug, Default)]
pub struct ProgramSpec {
    /// argv; `argv[0]` is looked up in [`SANDBOX_PATH`] unless it contains a '/'.
    pub argv: Vec<String>,
    /// Extra environment (on top of PATH, HOME, TMPDIR, LANG).
    pub env: Vec<(String, String)>,
    /// Working directory inside the sandbox; default /tmp (runs) or the home (workstations).
    pub cwd: Option<String>,
    /// CPU-time backstop in seconds (RLIMIT_CPU), if any.
    pub cpu_seconds_max: Option<u64>,
}

/// A file to create in the run's /tmp before the program starts.
#[derive(Clone, Debug)]
pub struct SandboxFile {
    /// Path relative to /tmp (validated by the caller: no "..", not absolute).
    pub relative_path: String,
    /// Content.
    pub content: Vec<u8>,
    /// Mode bits (e.g. 0o644, 0o755).
    pub mode: u32,
}

/// A process started in a workstation sandbox.
#[derive(Debug)]
pub struct SpawnedInSandbox {
    /// Host pid (a child of the caller).
    pub pid: libc::pid_t,
    /// The cgroup holding the process and everything it starts (None without cgroups).
    pub tree: Option<cgroup::SandboxCgroup>,
}

/// A run's init process once started.
#[derive(Debug)]
pub(crate) struct RunProcess {
    /// Host pid of the init process (killing it kills the PID namespace).
    pub init_pid: libc::pid_t,
    /// Becomes readable when init exits.
    pub pidfd: OwnedFd,
    /// Report records from init and the program.
    pub report: OwnedFd,
    /// The setup steps, to explain a failure report.
    pub steps: Vec<Step>,
}

impl Sandbox {
    /// The sandbox's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The uid its processes run as (None in degraded mode: the node's own uid).
    pub fn uid(&self) -> Option<u32> {
        self.uid.as_ref().map(UidLease::uid)
    }

    /// The isolation actually applied to this sandbox's processes.
    pub fn isolation(&self) -> &IsolationReport {
        &self.host.report
    }

    /// The limits (as last updated).
    pub fn limits(&self) -> SandboxLimits {
        match self.limits.lock() {
            Ok(limits) => *limits,
            Err(poisoned) => *poisoned.into_inner(),
        }
    }

    /// Changes the memory limit, CPU quota and pids limit of the live sandbox (a workstation's
    /// resize): its cgroup's files are rewritten, running processes keep running under the new
    /// limits. Lowering memory below what the sandbox holds is refused with
    /// [`SandboxError::MemoryBelowUsage`] and leaves the memory limit as it was. The private
    /// /tmp keeps its size (it is mounted once, inside the sandbox). Without cgroups only
    /// processes started later see the change (their RLIMIT_DATA).
    pub fn update_limits(&self, limits: CgroupLimits) -> Result<(), SandboxError> {
        if let Some(cgroup) = &self.cgroup {
            cgroup.update_limits(limits)?;
        }
        let mut current = match self.limits.lock() {
            Ok(current) => current,
            Err(poisoned) => poisoned.into_inner(),
        };
        current.memory_bytes = limits.memory_bytes;
        current.cpu_millis = limits.cpu_millis;
        current.max_processes = limits.max_processes;
        tracing::info!(
            sandbox = %self.name,
            memory_bytes = limits.memory_bytes,
            cpu_millis = limits.cpu_millis,
            max_processes = limits.max_processes,
            "sandbox limits updated"
        );
        Ok(())
    }

    /// The limits the kernel holds for the sandbox's cgroup right now (None without cgroups).
    pub fn cgroup_limits(&self) -> Option<CgroupLimits> {
        self.cgroup
            .as_ref()
            .and_then(cgroup::SandboxCgroup::current_limits)
    }

    /// What the kernel counted for the sandbox's cgroup (zeros without cgroups).
    pub fn stats(&self) -> CgroupStats {
        self.cgroup
            .as_ref()
            .map(cgroup::SandboxCgroup::stats)
            .unwrap_or_default()
    }

    /// CPU time used by the sandbox so far in nanoseconds (0 without cgroups).
    pub fn cpu_usage_ns(&self) -> u64 {
        self.cgroup
            .as_ref()
            .map(cgroup::SandboxCgroup::cpu_usage_ns)
            .unwrap_or(0)
    }

    /// Host pids currently in the sandbox's cgroup.
    pub fn pids(&self) -> Vec<i32> {
        self.cgroup
            .as_ref()
            .map(cgroup::SandboxCgroup::pids)
            .unwrap_or_default()
    }

    /// The relative cgroup path (`shoal-<node>/<name>`), if cgroups are applied.
    pub fn cgroup_path(&self) -> Option<&str> {
        self.cgroup
            .as_ref()
            .map(cgroup::SandboxCgroup::relative_path)
    }

    fn tmp_dir(&self) -> String {
        match &self.work_dir {
            Some(dir) => dir.to_string_lossy().into_owned(),
            None => "/tmp".to_string(),
        }
    }

    fn home_dir(&self) -> String {
        match (&self.work_dir, &self.home) {
            (None, Some(_)) => HOME_IN_SANDBOX.to_string(),
            (Some(_), Some(home)) => home.to_string_lossy().into_owned(),
            (_, None) => self.tmp_dir(),
        }
    }

    fn clone_flags(&self) -> libc::c_int {
        let namespaces = &self.host.report.namespaces;
        if !self.host.report.private_filesystem {
            // Without a private root there is no point in (and no safe way to mount) a new
            // PID namespace's /proc: run in the host's namespaces, as the report says.
            return 0;
        }
        let mut flags = libc::CLONE_NEWNS | libc::CLONE_NEWPID;
        if namespaces.network {
            flags |= libc::CLONE_NEWNET;
        }
        if namespaces.ipc {
            flags |= libc::CLONE_NEWIPC;
        }
        if namespaces.uts {
            flags |= libc::CLONE_NEWUTS;
        }
        flags
    }

    /// Steps of a fresh init process: file system, files, hostname, loopback. With
    /// `mount_template`, the file system is a copy of the node's shared root plus the sandbox's
    /// own /proc and /tmp (no home: that needs the host's paths).
    fn init_steps(
        &self,
        files: &[SandboxFile],
        mount_template: Option<RawFd>,
    ) -> Result<Vec<Step>, SandboxError> {
        let report = &self.host.report;
        let mut steps = match (&self.host.layout, mount_template) {
            (Some(layout), Some(fd)) if self.home.is_none() => {
                let mut steps = vec![Step::EnterMountTemplate { fd }];
                steps.extend(layout.steps_in_template(self.limits().tmp_bytes));
                steps
            }
            (Some(layout), _) => layout.steps(self.limits().tmp_bytes, self.home.as_deref())?,
            (None, _) => Vec::new(),
        };
        let (uid, gid) = self.credentials().unwrap_or_else(|| {
            // SAFETY: getuid/getgid have no preconditions.
            unsafe { (libc::getuid(), libc::getgid()) }
        });
        let tmp = self.tmp_dir();
        for file in files {
            let mut prefix = PathBuf::from(&tmp);
            let relative = Path::new(&file.relative_path);
            let components: Vec<_> = relative.components().collect();
            for (index, component) in components.iter().enumerate() {
                prefix.push(component);
                let path = cstring("files", prefix.as_os_str().as_bytes())?;
                if index + 1 < components.len() {
                    steps.push(Step::OwnedDir { path, uid, gid });
                } else {
                    steps.push(Step::OwnedFile {
                        path,
                        data: file.content.clone(),
                        mode: file.mode & 0o777,
                        uid,
                        gid,
                    });
                }
            }
        }
        if report.private_filesystem {
            if report.namespaces.uts {
                steps.push(Step::Hostname {
                    name: cstring("hostname", b"sandbox")?,
                });
            }
            if report.namespaces.network {
                steps.push(Step::LoopbackUp);
            }
            steps.push(Step::ProtectFromOom);
            if report.namespaces.cgroup && self.cgroup.is_some() {
                steps.push(Step::UnshareCgroup);
            }
        }
        Ok(steps)
    }

    fn credentials(&self) -> Option<(libc::uid_t, libc::gid_t)> {
        self.uid.as_ref().map(|lease| (lease.uid(), lease.uid()))
    }

    /// Builds the pre-exec plan of a program (all strings prepared before any fork).
    fn program_plan(
        &self,
        program: &ProgramSpec,
        default_cwd: String,
        stdin: StdinPlan,
        stdout_fd: RawFd,
        stderr_fd: RawFd,
    ) -> Result<ProgramPlan, SandboxError> {
        let Some(first) = program.argv.first() else {
            return Err(SandboxError::Invalid {
                field: "argv",
                reason: "empty".to_string(),
            });
        };
        let exe_candidates = if first.contains('/') {
            vec![cstring("argv", first.as_bytes())?]
        } else {
            SANDBOX_PATH
                .split(':')
                .map(|dir| cstring("argv", format!("{dir}/{first}").as_bytes()))
                .collect::<Result<_, _>>()?
        };
        let argv = program
            .argv
            .iter()
            .map(|arg| cstring("argv", arg.as_bytes()))
            .collect::<Result<Vec<_>, _>>()?;
        let mut env: Vec<(String, String)> = vec![
            ("PATH".to_string(), SANDBOX_PATH.to_string()),
            ("HOME".to_string(), self.home_dir()),
            ("TMPDIR".to_string(), self.tmp_dir()),
            ("LANG".to_string(), "C.UTF-8".to_string()),
        ];
        for (key, value) in &program.env {
            env.retain(|(known, _)| known != key);
            env.push((key.clone(), value.clone()));
        }
        let envp = env
            .iter()
            .map(|(key, value)| cstring("env", format!("{key}={value}").as_bytes()))
            .collect::<Result<Vec<_>, _>>()?;
        let cwd = cstring("cwd", program.cwd.clone().unwrap_or(default_cwd).as_bytes())?;
        let report = &self.host.report;
        let mut rlimits = vec![
            (libc::RLIMIT_CORE, 0),
            (libc::RLIMIT_NOFILE, OPEN_FILES_MAX),
        ];
        if let Some(seconds) = program.cpu_seconds_max {
            rlimits.push((libc::RLIMIT_CPU, seconds));
        }
        if report.dedicated_uid {
            // A backstop above the cgroup's pids limit (which must trip first so that the
            // kernel counts the event): the uid is the sandbox's own, so only its processes
            // count.
            rlimits.push((
                libc::RLIMIT_NPROC,
                self.limits().max_processes.saturating_mul(2),
            ));
        }
        if report.cgroup.is_none() {
            // Without a memory cgroup, bound the data segment instead (weaker, per process).
            rlimits.push((libc::RLIMIT_DATA, self.limits().memory_bytes));
        }
        let mut plan = ProgramPlan::new(
            exe_candidates,
            argv,
            envp,
            cwd,
            self.credentials(),
            rlimits,
            stdin,
            stdout_fd,
            stderr_fd,
        );
        plan.seccomp = report.seccomp.then(|| self.host.seccomp_filter.clone());
        plan.drop_capabilities = report.root;
        plan.capability_last = self.host.capability_last;
        plan.no_new_privs = true;
        Ok(plan)
    }

    /// Starts a run: a fresh init process in new namespaces, which sets up the file system,
    /// writes `files` into /tmp and runs `program`. Used by [`crate::run`].
    pub(crate) fn start_run(
        &self,
        program: &ProgramSpec,
        files: &[SandboxFile],
        stdin: Vec<u8>,
        stdout_fd: RawFd,
        stderr_fd: RawFd,
    ) -> Result<RunProcess, SandboxError> {
        let mut program_plan = self.program_plan(
            program,
            self.tmp_dir(),
            StdinPlan::Bytes(stdin),
            stdout_fd,
            stderr_fd,
        )?;
        program_plan.raise_oom_score = true;
        let mut clone_flags = self.clone_flags();
        let mount_template = self
            .host
            .mount_template
            .as_ref()
            .filter(|_| clone_flags & libc::CLONE_NEWNS != 0 && self.home.is_none())
            .map(AsRawFd::as_raw_fd);
        if mount_template.is_some() {
            // The init joins the template's namespace and unshares a copy of it: no copy of
            // the host's mount table at clone.
            clone_flags &= !libc::CLONE_NEWNS;
        }
        let mut steps = self.init_steps(files, mount_template)?;
        // A network namespace made ahead of time, joined first thing (before loopback is up).
        let network = match &self.host.netns_pool {
            Some(pool) if clone_flags & libc::CLONE_NEWNET != 0 => pool.take(),
            _ => None,
        };
        if let Some(network) = &network {
            clone_flags &= !libc::CLONE_NEWNET;
            // The pool brought its loopback up already.
            steps.retain(|step| !matches!(step, Step::LoopbackUp));
            steps.insert(
                0,
                Step::JoinNetwork {
                    fd: network.as_raw_fd(),
                },
            );
        }
        let plan = InitPlan {
            clone_flags,
            placement_barrier: placement_barrier(&steps),
            steps,
            mode: InitMode::RunProgram(Box::new(program_plan)),
            init_image: self.host.init_image.as_ref().map(AsRawFd::as_raw_fd),
            identity: self.host.identity,
        };
        let Started { pid, pidfd, report } = child::start_init(&plan, |pid| self.place(pid))?;
        Ok(RunProcess {
            init_pid: pid,
            pidfd,
            report,
            steps: plan.steps,
        })
    }

    fn place(&self, pid: libc::pid_t) -> Result<(), SandboxError> {
        match &self.cgroup {
            Some(cgroup) => cgroup.add_process(pid),
            None => Ok(()),
        }
    }

    /// Starts the sandbox's long-lived init process (workstations): it holds the namespaces
    /// that [`Sandbox::spawn`] joins. Idempotent.
    pub fn start_reaper(&self) -> Result<(), SandboxError> {
        let mut reaper = self.reaper.lock().map_err(|_| SandboxError::Spawn {
            what: "reaper".to_string(),
            reason: "lock poisoned".to_string(),
        })?;
        if reaper.is_some() || self.clone_flags() == 0 {
            return Ok(());
        }
        let steps = self.init_steps(&[], None)?;
        let plan = InitPlan {
            clone_flags: self.clone_flags(),
            placement_barrier: placement_barrier(&steps),
            steps,
            mode: InitMode::Reaper,
            init_image: self.host.init_image.as_ref().map(AsRawFd::as_raw_fd),
            identity: self.host.identity,
        };
        let started = child::start_init(&plan, |pid| self.place(pid))?;
        let reports = child::read_reports_blocking(&started.report);
        if !reports
            .iter()
            .any(|report| report.tag == child::REPORT_READY)
        {
            // SAFETY: killing and reaping our own child.
            unsafe {
                libc::kill(started.pid, libc::SIGKILL);
                let mut status = 0;
                libc::waitpid(started.pid, &mut status, 0);
            }
            return Err(SandboxError::Spawn {
                what: "workstation init".to_string(),
                reason: describe_failure(&reports, &plan.steps),
            });
        }
        let flags = self.clone_flags();
        let mut namespace_fds = Vec::new();
        for (name, flag) in [
            ("ipc", libc::CLONE_NEWIPC),
            ("uts", libc::CLONE_NEWUTS),
            ("net", libc::CLONE_NEWNET),
            ("pid", libc::CLONE_NEWPID),
            ("mnt", libc::CLONE_NEWNS),
        ] {
            if flags & flag == 0 {
                continue;
            }
            let path = format!("/proc/{}/ns/{name}", started.pid);
            let file = std::fs::File::open(&path).map_err(|error| SandboxError::Spawn {
                what: format!("open {path}"),
                reason: error.to_string(),
            })?;
            namespace_fds.push(OwnedFd::from(file));
        }
        *reaper = Some(Reaper {
            pid: started.pid,
            _pidfd: started.pidfd,
            namespace_fds,
        });
        Ok(())
    }

    /// Starts a process in this (workstation) sandbox, in a cgroup of its own below the
    /// sandbox's (its process tree; limits are the sandbox's). The process is a child of the
    /// calling process (wait for it with waitpid/pidfd); its stdout and stderr go to the given
    /// fds and its stdin is /dev/null.
    pub fn spawn(
        &self,
        program: &ProgramSpec,
        stdout_fd: RawFd,
        stderr_fd: RawFd,
    ) -> Result<SpawnedInSandbox, SandboxError> {
        self.start_reaper()?;
        let mut plan = self.program_plan(
            program,
            self.home_dir(),
            StdinPlan::Null,
            stdout_fd,
            stderr_fd,
        )?;
        plan.raise_oom_score = true;
        let tree = match &self.cgroup {
            Some(cgroup) => {
                let serial = self
                    .n_spawned
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Some(cgroup.create_child(&format!("p-{serial}"))?)
            }
            None => None,
        };
        let reaper = self.reaper.lock().map_err(|_| SandboxError::Spawn {
            what: "reaper".to_string(),
            reason: "lock poisoned".to_string(),
        })?;
        let namespace_fds: Vec<RawFd> = reaper
            .as_ref()
            .map(|reaper| {
                reaper
                    .namespace_fds
                    .iter()
                    .map(AsRawFd::as_raw_fd)
                    .collect()
            })
            .unwrap_or_default();
        let place = |pid| match &tree {
            Some(tree) => tree.add_process(pid),
            None => Ok(()),
        };
        let started = child::start_in_namespaces(&namespace_fds, &plan, self.host.identity, place);
        drop(reaper);
        let (pid, reports) = match started {
            Ok(started) => started,
            Err(error) => {
                if let Some(tree) = &tree {
                    let _ = tree.remove();
                }
                return Err(error);
            }
        };
        if let Some(report) = reports
            .iter()
            .find(|report| report.tag == REPORT_EXEC_FAILED || report.tag == REPORT_SETUP_FAILED)
        {
            // The program's pid is our child: reap it so that it does not linger as a zombie.
            let mut status = 0;
            // SAFETY: reaping our own (already exited) child.
            unsafe { libc::waitpid(pid, &mut status, 0) };
            if let Some(tree) = &tree {
                let _ = tree.remove();
            }
            return Err(SandboxError::Spawn {
                what: program.argv.first().cloned().unwrap_or_default(),
                reason: describe_failure(&[*report], &[]),
            });
        }
        Ok(SpawnedInSandbox { pid, tree })
    }

    /// Kills every process of the sandbox (the whole cgroup, and the init process).
    pub fn kill_all(&self) -> Result<(), SandboxError> {
        if let Ok(mut reaper) = self.reaper.lock() {
            if let Some(reaper) = reaper.take() {
                // SAFETY: killing our own child.
                unsafe { libc::kill(reaper.pid, libc::SIGKILL) };
                // The namespace's init only finishes exiting once every process of its PID
                // namespace is reaped, and workstation processes are the caller's children,
                // reaped by their exit futures on the caller's runtime, which may be the very
                // thread running this. Waiting here could deadlock: reap it on the side.
                let pid = reaper.pid;
                let waiter = std::thread::Builder::new()
                    .name("sandbox-init-reap".to_string())
                    .spawn(move || {
                        let mut status = 0;
                        // SAFETY: reaping our own child.
                        unsafe { libc::waitpid(pid, &mut status, 0) };
                    });
                if let Err(error) = waiter {
                    tracing::warn!(%error, pid, "cannot start the reaping thread; init stays a zombie");
                }
            }
        }
        match &self.cgroup {
            Some(cgroup) => cgroup.kill_all(),
            None => Ok(()),
        }
    }

    /// Kills everything and removes the cgroup and (degraded mode) the work directory. The
    /// home volume stays (it belongs to the workstation, see [`remove_home`]).
    pub fn destroy(mut self) -> Result<(), SandboxError> {
        self.destroy_inner()
    }

    /// Destroys a run's sandbox right away when that takes only a few rmdirs (its init, and
    /// with it its PID namespace, is gone and its group is empty); otherwise hands it back, to
    /// be destroyed the long way with [`Sandbox::destroy`] on a blocking thread.
    pub(crate) fn destroy_quickly(mut self) -> Result<(), Box<Sandbox>> {
        let quick = self.run_group
            && self.work_dir.is_none()
            && matches!(self.reaper.lock().as_deref(), Ok(None))
            && self
                .cgroup
                .as_ref()
                .is_some_and(cgroup::SandboxCgroup::remove_if_empty);
        if quick {
            self.destroyed = true;
            Ok(())
        } else {
            Err(Box::new(self))
        }
    }

    fn destroy_inner(&mut self) -> Result<(), SandboxError> {
        if self.destroyed {
            return Ok(());
        }
        self.destroyed = true;
        // A run's group once its init (and so its PID namespace) is gone: rmdir alone, which
        // the kernel refuses while any process is left (then the long way below).
        let removed_fast = self.run_group
            && self.cgroup.as_ref().is_some_and(|cgroup| {
                matches!(self.reaper.lock().as_deref(), Ok(None)) && cgroup.remove_if_empty()
            });
        if !removed_fast {
            self.kill_all()?;
        }
        if let Some(cgroup) = self.cgroup.as_ref().filter(|_| !removed_fast) {
            // Process-tree groups of a workstation first, then the sandbox's own.
            cgroup::remove_recursive(cgroup.version(), cgroup.relative_path())?;
        }
        if let Some(dir) = &self.work_dir {
            if dir.exists() {
                std::fs::remove_dir_all(dir).map_err(|error| SandboxError::Prepare {
                    path: dir.clone(),
                    reason: error.to_string(),
                })?;
            }
        }
        Ok(())
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if let Err(error) = self.destroy_inner() {
            tracing::error!(sandbox = %self.name, %error, "sandbox cleanup failed");
        }
    }
}

/// Removes a workstation's home volume without following any symlink planted in it.
pub fn remove_home(home: &Path) -> Result<(), SandboxError> {
    if std::fs::symlink_metadata(home).is_err() {
        return Ok(());
    }
    std::fs::remove_dir_all(home).map_err(|error| SandboxError::Prepare {
        path: home.to_path_buf(),
        reason: error.to_string(),
    })
}
