//! The code that runs between fork and exec, and the parent side that starts it.
//!
//! Why raw `clone` of the calling thread rather than `posix_spawn`, `std::process::Command` or
//! re-executing a helper binary: the sandbox must be set up *inside* the new namespaces (proc
//! mounted by a process that lives in the new PID namespace, pivot_root in the new mount
//! namespace, uid/caps/seccomp dropped last), which `Command`'s `pre_exec` cannot do safely for
//! namespaces, and a helper binary would make the executor library depend on where the node's
//! binary lives and add an exec to every run. So the parent prepares *everything* first (every
//! path as a `CString`, argv/envp pointer arrays, the seccomp program, the file contents) in a
//! plan it keeps alive, then clones. The child runs only raw system calls on that prepared data:
//! no allocation, no locks, no `std` I/O, no panics (iterators instead of indexing). uid/gid
//! changes use the raw syscalls because glibc's `setuid` family signals every thread the parent
//! had, which do not exist in the child.
//!
//! Process tree of a run: node → `init` (PID 1 of the new PID namespace, root, sets up mounts,
//! stays outside seccomp) → `program` (drops everything, execs the user's code; started sharing
//! init's memory on a stack of its own until its exec, see `gated_program`). Once the program is
//! cloned, `init` execs the clean init of `init.rs` (argv `init`, no environment, no
//! capabilities), which opens the program's gate, so no user code runs while PID 1 is a copy
//! of the node; each forked child first zeroes its copy of the node's argv and environment. A run's init does not build a root: it joins the node's shared, read-only
//! sandbox root (`build_mount_template`, once per node) and unshares a copy of it. `init` reports
//! the program's wait status on the report pipe and exits; the kernel then kills whatever else is
//! left in the PID namespace (daemons included). For a workstation `init` stays as the
//! namespace's reaper and each process is started by `enter`: a short-lived clone that joins the
//! namespaces with `setns` and clones the program with `CLONE_PARENT`, so that the program is a
//! child of the node (which waits for it) while living in the sandbox.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use super::SandboxError;

/// Report record tags (child → parent), each record being three 32-bit words.
pub(crate) const REPORT_SETUP_FAILED: u32 = 1;
pub(crate) const REPORT_EXEC_FAILED: u32 = 2;
pub(crate) const REPORT_EXITED: u32 = 3;
pub(crate) const REPORT_STARTED: u32 = 4;
pub(crate) const REPORT_READY: u32 = 5;
/// Size of one report record in bytes.
pub(crate) const REPORT_RECORD_BYTES: usize = 12;
/// Step index reported when forking the program itself failed.
pub(crate) const STEP_FORK_PROGRAM: i32 = -1;
/// Step index reported when joining a namespace failed.
pub(crate) const STEP_SETNS: i32 = -2;
/// Step index reported for failures while preparing the program (stdio, uid, seccomp, ...).
pub(crate) const STEP_PROGRAM: i32 = -3;
/// Step index reported when exec'ing the clean init (see `init.rs`) failed.
pub(crate) const STEP_EXEC_INIT: i32 = -4;

/// One setup action of the init process, done before the program is forked.
#[derive(Debug)]
pub(crate) enum Step {
    /// mount(2).
    Mount {
        source: Option<CString>,
        target: CString,
        fstype: Option<CString>,
        flags: libc::c_ulong,
        data: Option<CString>,
    },
    /// mkdir(2); EEXIST is fine.
    Mkdir { path: CString, mode: libc::mode_t },
    /// symlink(2).
    Symlink { target: CString, link: CString },
    /// Creates a character device node (cheaper than a bind mount, at setup and teardown).
    CharDevice {
        path: CString,
        major: u32,
        minor: u32,
    },
    /// pivot_root into `new_root`, detaching the old root.
    PivotRoot { new_root: CString },
    /// Creates a directory owned by the program's user (never following symlinks).
    OwnedDir {
        path: CString,
        uid: libc::uid_t,
        gid: libc::gid_t,
    },
    /// Creates a new file with `data`, owned by the program's user (O_EXCL|O_NOFOLLOW).
    OwnedFile {
        path: CString,
        data: Vec<u8>,
        mode: libc::mode_t,
        uid: libc::uid_t,
        gid: libc::gid_t,
    },
    /// sethostname(2).
    Hostname { name: CString },
    /// Brings the loopback interface of the new network namespace up.
    LoopbackUp,
    /// Joins the network namespace behind `fd` (prepared ahead of time) and closes the fd.
    JoinNetwork { fd: RawFd },
    /// Joins the node's prepared mount namespace behind `fd` (the sandbox root, built once per
    /// node: read-only system directories, /etc, /dev, mount points), unshares a private copy
    /// of it, and closes the fd. Replaces the per-sandbox copy of the host's mount table, the
    /// root's construction and pivot_root: only the run's own mounts (/proc, /tmp) follow.
    EnterMountTemplate { fd: RawFd },
    /// Protects the init process from the OOM killer (the program is the one to kill).
    ProtectFromOom,
    /// unshare(CLONE_NEWCGROUP): the program sees its own cgroup as the root.
    UnshareCgroup,
    /// Hides `path` (runc's `maskedPaths`): a file gets `dev_null` bound over it, a directory an
    /// empty read-only tmpfs; a path this kernel does not have is fine.
    MaskPath { path: CString, dev_null: CString },
    /// Makes `path` read-only (runc's `readonlyPaths`): a read-only bind of itself; a path this
    /// kernel does not have is fine.
    ReadOnlyPath { path: CString },
}

impl Step {
    /// Human-readable description for error reports.
    pub(crate) fn describe(&self) -> String {
        let text = |value: &CString| value.to_string_lossy().into_owned();
        match self {
            Step::Mount { source, target, .. } => format!(
                "mount {} on {}",
                source.as_ref().map(text).unwrap_or_default(),
                text(target)
            ),
            Step::Mkdir { path, .. } => format!("mkdir {}", text(path)),
            Step::Symlink { link, .. } => format!("symlink {}", text(link)),
            Step::CharDevice { path, .. } => format!("mknod {}", text(path)),
            Step::PivotRoot { new_root } => format!("pivot_root {}", text(new_root)),
            Step::OwnedDir { path, .. } => format!("mkdir {}", text(path)),
            Step::OwnedFile { path, .. } => format!("write {}", text(path)),
            Step::Hostname { .. } => "sethostname".to_string(),
            Step::LoopbackUp => "bring up loopback".to_string(),
            Step::JoinNetwork { .. } => "join the network namespace".to_string(),
            Step::EnterMountTemplate { .. } => "enter the prepared sandbox root".to_string(),
            Step::ProtectFromOom => "oom_score_adj".to_string(),
            Step::UnshareCgroup => "unshare cgroup namespace".to_string(),
            Step::MaskPath { path, .. } => format!("mask {}", text(path)),
            Step::ReadOnlyPath { path } => format!("make {} read-only", text(path)),
        }
    }
}

/// Where the program's standard input comes from.
#[derive(Debug)]
pub(crate) enum StdinPlan {
    /// These bytes, through a memfd (no pipe to feed, no deadlock, charged to the sandbox).
    Bytes(Vec<u8>),
    /// /dev/null.
    Null,
}

/// Everything the program process needs between fork and exec.
pub(crate) struct ProgramPlan {
    /// Paths to try for execve, in order (PATH resolution done by the parent).
    pub exe_candidates: Vec<CString>,
    /// Keeps the argument strings alive for `argv_pointers`.
    _argv: Vec<CString>,
    argv_pointers: Vec<*const libc::c_char>,
    /// Keeps the environment strings alive for `envp_pointers`.
    _envp: Vec<CString>,
    envp_pointers: Vec<*const libc::c_char>,
    /// Working directory.
    pub cwd: CString,
    /// uid and gid to switch to; None keeps the caller's (degraded mode, not root).
    pub credentials: Option<(libc::uid_t, libc::gid_t)>,
    /// Resource limits set before exec.
    pub rlimits: Vec<(libc::__rlimit_resource_t, libc::rlim_t)>,
    /// Standard input.
    pub stdin: StdinPlan,
    /// Write ends of the output pipes.
    pub stdout_fd: RawFd,
    /// Write end of the error pipe.
    pub stderr_fd: RawFd,
    /// Seccomp program to install last (None when seccomp is unavailable).
    pub seccomp: Option<Vec<libc::sock_filter>>,
    /// Drop the capability bounding set, ambient and inheritable sets.
    pub drop_capabilities: bool,
    /// Highest capability number the kernel knows (/proc/sys/kernel/cap_last_cap).
    pub capability_last: u32,
    /// Set no_new_privs (always possible, also without root).
    pub no_new_privs: bool,
    /// Raise oom_score_adj to 1000: in an OOM (the sandbox's or the host's) the user's program
    /// is killed before the sandbox's init and before any host process.
    pub raise_oom_score: bool,
}

impl ProgramPlan {
    /// Builds a plan; pointer arrays are derived from the owned strings.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        exe_candidates: Vec<CString>,
        argv: Vec<CString>,
        envp: Vec<CString>,
        cwd: CString,
        credentials: Option<(libc::uid_t, libc::gid_t)>,
        rlimits: Vec<(libc::__rlimit_resource_t, libc::rlim_t)>,
        stdin: StdinPlan,
        stdout_fd: RawFd,
        stderr_fd: RawFd,
    ) -> Self {
        let mut argv_pointers: Vec<*const libc::c_char> =
            argv.iter().map(|arg| arg.as_ptr()).collect();
        argv_pointers.push(std::ptr::null());
        let mut envp_pointers: Vec<*const libc::c_char> =
            envp.iter().map(|var| var.as_ptr()).collect();
        envp_pointers.push(std::ptr::null());
        ProgramPlan {
            exe_candidates,
            _argv: argv,
            argv_pointers,
            _envp: envp,
            envp_pointers,
            cwd,
            credentials,
            rlimits,
            stdin,
            stdout_fd,
            stderr_fd,
            seccomp: None,
            drop_capabilities: false,
            capability_last: 63,
            no_new_privs: true,
            raise_oom_score: false,
        }
    }
}

/// What the init process does once its setup steps are done.
pub(crate) enum InitMode {
    /// Fork the program, report its wait status, exit (a run).
    RunProgram(Box<ProgramPlan>),
    /// Report readiness and reap orphans until killed (a workstation).
    Reaper,
}

/// The node's own argv and initial environment: address ranges in its memory (from
/// /proc/self/stat), which a forked child zeroes in its copy before anything of the sandbox can
/// see it, so that its `/proc/<pid>/cmdline` shows nothing of the node (`environ` needs ptrace
/// access, which the sandbox's uid does not have to a root process).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct NodeIdentity {
    ranges: [(usize, usize); 2],
}

impl NodeIdentity {
    /// The ranges of this process (empty where /proc/self/stat cannot be read).
    pub(crate) fn of_this_process() -> Self {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        // Fields after the command name's closing parenthesis start at field 3; arg_start,
        // arg_end, env_start and env_end are fields 48 to 51.
        let fields: Vec<usize> = stat
            .rsplit_once(')')
            .map(|(_, rest)| {
                rest.split_whitespace()
                    .skip(45)
                    .take(4)
                    .filter_map(|field| field.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        match fields.as_slice() {
            [arg_start, arg_end, env_start, env_end]
                if arg_start <= arg_end && env_start <= env_end =>
            {
                NodeIdentity {
                    ranges: [(*arg_start, *arg_end), (*env_start, *env_end)],
                }
            }
            _ => NodeIdentity::default(),
        }
    }
}

/// Everything the init process needs.
pub(crate) struct InitPlan {
    /// Namespace flags for clone(2).
    pub clone_flags: libc::c_int,
    /// Setup steps in order.
    pub steps: Vec<Step>,
    /// Index of the first step that must run inside the sandbox's cgroup (writing files
    /// charges memory): the child waits there for the parent's second go, so that moving it
    /// into the cgroup (milliseconds for a v1 memory cgroup) overlaps with the mount setup.
    pub placement_barrier: usize,
    /// What to do afterwards.
    pub mode: InitMode,
    /// The sealed memfd of the clean init (`init.rs`) to exec once set up; None keeps this
    /// forked process as the sandbox's init (architectures without an image).
    pub init_image: Option<RawFd>,
    /// What to erase of the node's identity first thing.
    pub identity: NodeIdentity,
}

/// A started child: its pid, a pidfd to await its exit, and the report pipe's read end.
#[derive(Debug)]
pub(crate) struct Started {
    pub pid: libc::pid_t,
    pub pidfd: OwnedFd,
    pub report: OwnedFd,
}

/// One decoded report record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Report {
    pub tag: u32,
    pub a: i32,
    pub b: i32,
}

impl Report {
    pub(crate) fn decode(bytes: &[u8]) -> Option<Report> {
        let word = |index: usize| -> Option<[u8; 4]> {
            bytes.get(index * 4..index * 4 + 4)?.try_into().ok()
        };
        Some(Report {
            tag: u32::from_ne_bytes(word(0)?),
            a: i32::from_ne_bytes(word(1)?),
            b: i32::from_ne_bytes(word(2)?),
        })
    }
}

fn os_error(what: &str) -> SandboxError {
    SandboxError::Spawn {
        what: what.to_string(),
        reason: std::io::Error::last_os_error().to_string(),
    }
}

fn pipe_cloexec() -> Result<(OwnedFd, OwnedFd), SandboxError> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two fds into the array we own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(os_error("pipe2"));
    }
    // SAFETY: both fds were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// A pipe for a program's output: (parent read end, child write end), both close-on-exec (the
/// child dup2s its end onto 1 or 2, which clears the flag there).
pub(crate) fn output_pipe() -> Result<(OwnedFd, OwnedFd), SandboxError> {
    pipe_cloexec()
}

fn pidfd_open(pid: libc::pid_t) -> Result<OwnedFd, SandboxError> {
    // SAFETY: pidfd_open has no memory-safety preconditions.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(os_error("pidfd_open"));
    }
    // SAFETY: the fd was just created.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Kills and reaps a child that could not be started properly.
fn abandon(pid: libc::pid_t) {
    // SAFETY: plain syscalls on our own child.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        let mut status = 0;
        libc::waitpid(pid, &mut status, 0);
    }
}

/// Clones the init process with the plan's namespaces, lets `place` put it into its cgroup,
/// then releases it. The plan must stay alive until this returns (the child only reads its own
/// copy of the parent's memory, so afterwards the parent may drop it).
pub(crate) fn start_init(
    plan: &InitPlan,
    place: impl FnOnce(libc::pid_t) -> Result<(), SandboxError>,
) -> Result<Started, SandboxError> {
    let (sync_read, sync_write) = pipe_cloexec()?;
    let (report_read, report_write) = pipe_cloexec()?;
    let flags = (plan.clone_flags | libc::SIGCHLD) as libc::c_ulong;
    // SAFETY: a fork-like clone (no CLONE_VM, no new stack); the child only runs `init_main`,
    // which never returns and only performs raw system calls on data prepared above.
    let pid = unsafe { raw_clone(flags) };
    if pid == 0 {
        // SAFETY: we are the freshly cloned, single-threaded child.
        unsafe {
            init_main(
                plan,
                sync_read.as_raw_fd(),
                report_write.as_raw_fd(),
                &[sync_write.as_raw_fd(), report_read.as_raw_fd()],
            )
        }
    }
    if pid < 0 {
        return Err(os_error("clone"));
    }
    drop(sync_read);
    drop(report_write);
    let pidfd = match pidfd_open(pid) {
        Ok(pidfd) => pidfd,
        Err(error) => {
            abandon(pid);
            return Err(error);
        }
    };
    // The child sets up its namespaces and mounts while we place it into its cgroup.
    if let Err(error) = place(pid) {
        abandon(pid);
        // A child that failed its setup (and so exited) cannot be placed: its own report says
        // why, better than the cgroup's refusal.
        let reports = read_reports_blocking(&report_read);
        if reports
            .iter()
            .any(|report| report.tag == REPORT_SETUP_FAILED)
        {
            return Err(SandboxError::Spawn {
                what: "sandbox setup".to_string(),
                reason: describe_failure(&reports, &plan.steps),
            });
        }
        return Err(error);
    }
    // Go: the child is in its cgroup; it may write files and fork the program.
    release(&sync_write, pid)?;
    Ok(Started {
        pid,
        pidfd,
        report: report_read,
    })
}

fn release(sync_write: &OwnedFd, pid: libc::pid_t) -> Result<(), SandboxError> {
    let go = [1u8];
    // SAFETY: writing one byte from a live buffer to our pipe.
    let written = unsafe { libc::write(sync_write.as_raw_fd(), go.as_ptr().cast(), 1) };
    if written != 1 {
        abandon(pid);
        return Err(os_error("release child"));
    }
    Ok(())
}

/// Starts a program inside an existing sandbox: clones `enter`, which joins the namespaces in
/// `namespace_fds` (the mount namespace last) and clones the program as a sibling (a child of
/// this process). Returns the program's pid (in this process's PID namespace).
pub(crate) fn start_in_namespaces(
    namespace_fds: &[RawFd],
    program: &ProgramPlan,
    identity: NodeIdentity,
    place: impl FnOnce(libc::pid_t) -> Result<(), SandboxError>,
) -> Result<(libc::pid_t, Vec<Report>), SandboxError> {
    let (sync_read, sync_write) = pipe_cloexec()?;
    let (report_read, report_write) = pipe_cloexec()?;
    // SAFETY: as in start_init; the child runs only `enter_main`.
    let pid = unsafe { raw_clone(libc::SIGCHLD as libc::c_ulong) };
    if pid == 0 {
        // SAFETY: freshly cloned single-threaded child.
        unsafe {
            enter_main(
                namespace_fds,
                program,
                identity,
                sync_read.as_raw_fd(),
                report_write.as_raw_fd(),
            )
        }
    }
    if pid < 0 {
        return Err(os_error("clone"));
    }
    drop(sync_read);
    drop(report_write);
    if let Err(error) = place(pid) {
        abandon(pid);
        return Err(error);
    }
    release(&sync_write, pid)?;
    drop(sync_write);
    // `enter` exits right after cloning the program; reap it, then read its reports (the
    // program's copy of the pipe closes at exec).
    let mut status = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    let reports = read_reports_blocking(&report_read);
    let started = reports
        .iter()
        .find(|report| report.tag == REPORT_STARTED)
        .map(|report| report.a);
    match started {
        Some(program_pid) => Ok((program_pid, reports)),
        None => Err(SandboxError::Spawn {
            what: "enter sandbox".to_string(),
            reason: describe_failure(&reports, &[]),
        }),
    }
}

/// Builds the node's sandbox root once, in a mount namespace of its own, and returns an fd
/// that keeps that namespace alive (no process stays in it). A helper process clones into a
/// new mount namespace, runs `steps` (mounts ending in pivot_root), reports, and exits once
/// the namespace is held.
pub(crate) fn build_mount_template(steps: &[Step]) -> Result<OwnedFd, SandboxError> {
    let (sync_read, sync_write) = pipe_cloexec()?;
    let (report_read, report_write) = pipe_cloexec()?;
    // SAFETY: a fork-like clone; the child only runs raw system calls on `steps`.
    let pid = unsafe { raw_clone((libc::CLONE_NEWNS | libc::SIGCHLD) as libc::c_ulong) };
    if pid == 0 {
        // SAFETY: the freshly cloned, single-threaded child.
        unsafe {
            libc::close(sync_write.as_raw_fd());
            libc::close(report_read.as_raw_fd());
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
            // Modes are the steps' own, whatever umask the node runs with.
            libc::umask(0);
            let report_fd = report_write.as_raw_fd();
            for (index, step) in steps.iter().enumerate() {
                if let Err(error) = run_step(step) {
                    fail(report_fd, index as i32, error);
                }
            }
            report(report_fd, REPORT_READY, 0, 0);
            libc::close(report_fd);
            // Stay until the parent holds the namespace (it closes the pipe then).
            let mut byte = 0u8;
            while libc::read(sync_read.as_raw_fd(), (&mut byte as *mut u8).cast(), 1) < 0
                && errno() == libc::EINTR
            {}
            libc::_exit(0)
        }
    }
    if pid < 0 {
        return Err(os_error("clone"));
    }
    drop(sync_read);
    drop(report_write);
    let reports = read_reports_blocking(&report_read);
    let ready = reports.iter().any(|report| report.tag == REPORT_READY);
    let namespace = if ready {
        std::fs::File::open(format!("/proc/{pid}/ns/mnt"))
            .map(OwnedFd::from)
            .map_err(|error| SandboxError::Spawn {
                what: "open the sandbox root's mount namespace".to_string(),
                reason: error.to_string(),
            })
    } else {
        Err(SandboxError::Spawn {
            what: "sandbox root".to_string(),
            reason: describe_failure(&reports, steps),
        })
    };
    drop(sync_write);
    let mut status = 0;
    // SAFETY: waiting for our own child, which exits once the pipe closed.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    namespace
}

/// Reads report records until EOF (blocking; only for short-lived helpers).
pub(crate) fn read_reports_blocking(report: &OwnedFd) -> Vec<Report> {
    let mut bytes = Vec::new();
    let mut buffer = [0u8; 256];
    loop {
        // SAFETY: reading into a live buffer we own.
        let count =
            unsafe { libc::read(report.as_raw_fd(), buffer.as_mut_ptr().cast(), buffer.len()) };
        if count > 0 {
            bytes.extend_from_slice(&buffer[..count as usize]);
            continue;
        }
        if count < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        break;
    }
    bytes
        .chunks_exact(REPORT_RECORD_BYTES)
        .filter_map(Report::decode)
        .collect()
}

/// Explains failure records in words.
pub(crate) fn describe_failure(reports: &[Report], steps: &[Step]) -> String {
    for report in reports {
        let errno = std::io::Error::from_raw_os_error(report.b);
        match report.tag {
            REPORT_SETUP_FAILED => {
                let step = match report.a {
                    STEP_FORK_PROGRAM => "fork the program".to_string(),
                    STEP_SETNS => "join the sandbox's namespaces".to_string(),
                    STEP_PROGRAM => "prepare the program (stdio, credentials, seccomp)".to_string(),
                    STEP_EXEC_INIT => "exec the sandbox's init".to_string(),
                    index => usize::try_from(index)
                        .ok()
                        .and_then(|index| steps.get(index))
                        .map(Step::describe)
                        .unwrap_or_else(|| format!("step {index}")),
                };
                return format!("sandbox setup failed: {step}: {errno}");
            }
            REPORT_EXEC_FAILED => return format!("cannot execute the program: {errno}"),
            _ => {}
        }
    }
    "the sandbox's init process ended without a report".to_string()
}

// ---------------------------------------------------------------------------------------------
// Child side. Everything below runs after clone: raw system calls on prepared data only.
// ---------------------------------------------------------------------------------------------

unsafe fn raw_clone(flags: libc::c_ulong) -> libc::pid_t {
    libc::syscall(libc::SYS_clone, flags, 0usize, 0usize, 0usize, 0usize) as libc::pid_t
}

unsafe fn errno() -> i32 {
    *libc::__errno_location()
}

unsafe fn report(fd: RawFd, tag: u32, a: i32, b: i32) {
    let mut record = [0u8; REPORT_RECORD_BYTES];
    let tag_bytes = tag.to_ne_bytes();
    let a_bytes = a.to_ne_bytes();
    let b_bytes = b.to_ne_bytes();
    record[0..4].copy_from_slice(&tag_bytes);
    record[4..8].copy_from_slice(&a_bytes);
    record[8..12].copy_from_slice(&b_bytes);
    // One write below PIPE_BUF is atomic; a failure cannot be reported anywhere.
    libc::write(fd, record.as_ptr().cast(), REPORT_RECORD_BYTES);
}

unsafe fn fail(fd: RawFd, step: i32, error: i32) -> ! {
    report(fd, REPORT_SETUP_FAILED, step, error);
    libc::_exit(125)
}

/// Closes every fd >= 3 except those in `keep` (at most 8), with close_range over the gaps.
unsafe fn close_all_except(keep: &[RawFd]) {
    let mut sorted = [RawFd::MAX; 8];
    let mut count = 0;
    for fd in keep.iter().take(8) {
        sorted[count] = *fd;
        count += 1;
    }
    // Insertion sort on the stack.
    for index in 1..count {
        let mut position = index;
        while position > 0 && sorted[position - 1] > sorted[position] {
            sorted.swap(position - 1, position);
            position -= 1;
        }
    }
    let mut low: u32 = 3;
    for fd in sorted.iter().take(count) {
        let fd = *fd as u32;
        if fd >= low {
            if fd > low {
                close_range(low, fd - 1, 0);
            }
            low = fd + 1;
        }
    }
    close_range(low, u32::MAX, 0);
}

unsafe fn close_range(low: u32, high: u32, flags: u32) {
    if libc::syscall(libc::SYS_close_range, low, high, flags) != 0 {
        // Kernels before 5.9: walk a bounded range by hand.
        let mut fd = low;
        while fd <= high && fd < 65_536 {
            if flags == 0 {
                libc::close(fd as RawFd);
            } else {
                libc::fcntl(fd as RawFd, libc::F_SETFD, libc::FD_CLOEXEC);
            }
            fd += 1;
        }
    }
}

unsafe fn stdio_to_dev_null() {
    let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
    if null >= 0 {
        libc::dup2(null, 0);
        libc::dup2(null, 1);
        libc::dup2(null, 2);
        if null > 2 {
            libc::close(null);
        }
    }
}

unsafe fn wait_for_go(sync_read: RawFd) {
    wait_for_byte(sync_read);
    libc::close(sync_read);
}

unsafe fn wait_for_byte(sync_read: RawFd) {
    let mut byte = 0u8;
    loop {
        let count = libc::read(sync_read, (&mut byte as *mut u8).cast(), 1);
        if count == 1 {
            break;
        }
        if count < 0 && errno() == libc::EINTR {
            continue;
        }
        // The parent gave up on us (closed the pipe without a go).
        libc::_exit(1);
    }
}

unsafe fn init_main(
    plan: &InitPlan,
    sync_read: RawFd,
    report_fd: RawFd,
    parent_ends: &[RawFd],
) -> ! {
    for fd in parent_ends {
        libc::close(*fd);
    }
    // First thing, before this process is visible to anything in the sandbox's namespaces.
    hide_node_identity(&plan.identity);
    libc::umask(0);
    // If the node dies, its sandboxes die with it (killing init kills the PID namespace). If it
    // died before this line, the sync pipe reads EOF at the placement barrier and we exit
    // before the program could start. The mount setup needs no go: it starts right away, on
    // the other CPU, while the parent places us into the cgroup.
    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
    // Prepared namespaces' fds must survive the fd cleanup until they are joined.
    let network_fd = plan
        .steps
        .iter()
        .find_map(|step| match step {
            Step::JoinNetwork { fd } => Some(*fd),
            _ => None,
        })
        .unwrap_or(sync_read);
    let mount_fd = plan
        .steps
        .iter()
        .find_map(|step| match step {
            Step::EnterMountTemplate { fd } => Some(*fd),
            _ => None,
        })
        .unwrap_or(sync_read);
    let image_fd = plan.init_image.unwrap_or(sync_read);
    match &plan.mode {
        InitMode::RunProgram(program) => {
            close_all_except(&[
                sync_read,
                report_fd,
                program.stdout_fd,
                program.stderr_fd,
                network_fd,
                mount_fd,
                image_fd,
            ]);
        }
        InitMode::Reaper => {
            close_all_except(&[sync_read, report_fd, network_fd, mount_fd, image_fd])
        }
    }
    stdio_to_dev_null();
    let mut placed = false;
    for (index, step) in plan.steps.iter().enumerate() {
        if index >= plan.placement_barrier && !placed {
            wait_for_go(sync_read);
            placed = true;
        }
        if let Err(error) = run_step(step) {
            fail(report_fd, index as i32, error);
        }
    }
    if !placed {
        wait_for_go(sync_read);
    }
    match (&plan.mode, plan.init_image) {
        (InitMode::RunProgram(program), Some(image)) => {
            // The program waits at the gate until the clean init opens it: it never runs
            // user code while PID 1 is still this copy of the node.
            let (program_pid, gate) = match gated_program(program, report_fd) {
                Ok(started) => started,
                Err(error) => fail(report_fd, STEP_FORK_PROGRAM, error),
            };
            report(report_fd, REPORT_STARTED, program_pid, 0);
            libc::close(program.stdout_fd);
            libc::close(program.stderr_fd);
            let error = exec_clean_init(image, report_fd, program_pid, gate);
            libc::kill(program_pid, libc::SIGKILL);
            fail(report_fd, STEP_EXEC_INIT, error)
        }
        (InitMode::Reaper, Some(image)) => {
            let error = exec_clean_init(image, report_fd, 0, -1);
            fail(report_fd, STEP_EXEC_INIT, error)
        }
        (InitMode::RunProgram(program), None) => {
            let program_pid = vfork_program(program, report_fd);
            if program_pid < 0 {
                fail(report_fd, STEP_FORK_PROGRAM, errno());
            }
            report(report_fd, REPORT_STARTED, program_pid, 0);
            libc::close(program.stdout_fd);
            libc::close(program.stderr_fd);
            loop {
                let mut status = 0;
                let reaped = libc::waitpid(-1, &mut status, 0);
                if reaped == program_pid {
                    report(report_fd, REPORT_EXITED, status, 0);
                    // Exiting kills everything else in the PID namespace.
                    libc::_exit(0);
                }
                if reaped < 0 && errno() != libc::EINTR {
                    libc::_exit(0);
                }
            }
        }
        (InitMode::Reaper, None) => {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGCHLD);
            libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            report(report_fd, REPORT_READY, libc::getpid(), 0);
            libc::close(report_fd);
            loop {
                let mut info: libc::siginfo_t = std::mem::zeroed();
                libc::sigwaitinfo(&set, &mut info);
                let mut status = 0;
                while libc::waitpid(-1, &mut status, libc::WNOHANG) > 0 {}
            }
        }
    }
}

/// Stack of the program process between its clone and its exec (untouched pages cost nothing).
const PROGRAM_STACK_BYTES: usize = 256 * 1024;

/// What [`program_entry`] needs: lives on init's stack, which stays put while init waits.
struct ProgramEntry<'a> {
    program: &'a ProgramPlan,
    report_fd: RawFd,
}

extern "C" fn program_entry(argument: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `argument` points to the ProgramEntry on init's stack; init is suspended
    // (CLONE_VFORK) until this process execs or exits, so it stays valid and unchanged.
    unsafe {
        let entry = &*(argument as *const ProgramEntry);
        exec_program(entry.program, entry.report_fd)
    }
}

/// Starts the program vfork-style: it shares init's memory (CLONE_VM, on a stack of its own)
/// until its exec, and init waits (CLONE_VFORK). This spares copying the page tables of init,
/// which is a copy of the whole node. Everything `exec_program` does is per-process kernel
/// state (credentials, rlimits, seccomp, fds: no CLONE_FILES, signal dispositions: no
/// CLONE_SIGHAND) or writes to its own stack. Returns the program's pid, or -1 (errno set).
unsafe fn vfork_program(program: &ProgramPlan, report_fd: RawFd) -> libc::pid_t {
    let stack = libc::mmap(
        std::ptr::null_mut(),
        PROGRAM_STACK_BYTES,
        libc::PROT_READ | libc::PROT_WRITE,
        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
        -1,
        0,
    );
    if stack == libc::MAP_FAILED {
        return -1;
    }
    let entry = ProgramEntry { program, report_fd };
    // The stack grows down: hand clone its top.
    let top = stack
        .cast::<u8>()
        .add(PROGRAM_STACK_BYTES)
        .cast::<libc::c_void>();
    let pid = libc::clone(
        program_entry,
        top,
        libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
        (&entry as *const ProgramEntry)
            .cast_mut()
            .cast::<libc::c_void>(),
    );
    // The program has exec'd (its own memory now) or exited: the stack is ours again.
    let saved_errno = errno();
    libc::munmap(stack, PROGRAM_STACK_BYTES);
    *libc::__errno_location() = saved_errno;
    pid
}

/// Zeroes the node's argv and environment in this (forked) process's copy of its memory and
/// renames it `init`: `/proc/<pid>/cmdline` then reads empty, `comm` reads `init`.
unsafe fn hide_node_identity(identity: &NodeIdentity) {
    for (start, end) in identity.ranges {
        if end > start {
            std::ptr::write_bytes(start as *mut u8, 0, end - start);
        }
    }
    libc::prctl(libc::PR_SET_NAME, c"init".as_ptr(), 0, 0, 0);
}

/// Lowest fd number used to park fds while the clean init's fds 3-5 are arranged.
const PARKED_FD_MIN: libc::c_int = 64;

/// Execs the clean init (`init.rs`) with fd 3 = `report_fd`, fd 4 = a pipe holding `word`, fd
/// 5 = `gate` (when >= 0), nothing else, no capabilities, argv `init` and no environment.
/// Returns only on failure, with the errno.
unsafe fn exec_clean_init(image: RawFd, report_fd: RawFd, word: libc::pid_t, gate: RawFd) -> i32 {
    let mut word_pipe = [0 as libc::c_int; 2];
    if libc::pipe2(word_pipe.as_mut_ptr(), libc::O_CLOEXEC) != 0 {
        return errno();
    }
    let bytes = word.to_ne_bytes();
    if libc::write(word_pipe[1], bytes.as_ptr().cast(), bytes.len()) != bytes.len() as isize {
        return errno();
    }
    libc::close(word_pipe[1]);
    // Park every fd above the target numbers first, so that no dup2 overwrites another.
    let park = |fd: RawFd| libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, PARKED_FD_MIN);
    let report_parked = park(report_fd);
    let word_parked = park(word_pipe[0]);
    let image_parked = park(image);
    let gate_parked = if gate >= 0 { park(gate) } else { 0 };
    if report_parked < 0 || word_parked < 0 || image_parked < 0 || gate_parked < 0 {
        return errno();
    }
    if libc::dup2(report_parked, 3) != 3
        || libc::dup2(word_parked, 4) != 4
        || (gate >= 0 && libc::dup2(gate_parked, 5) != 5)
    {
        return errno();
    }
    // Everything else closes at exec (the image too: the kernel holds the file).
    close_range(
        if gate >= 0 { 6 } else { 5 },
        u32::MAX,
        libc::CLOSE_RANGE_CLOEXEC,
    );
    // Dispositions the node set (it ignores SIGPIPE) and the signal mask survive exec.
    for signal in 1..=64 {
        if signal != libc::SIGKILL && signal != libc::SIGSTOP {
            libc::signal(signal, libc::SIG_DFL);
        }
    }
    let mut empty: libc::sigset_t = std::mem::zeroed();
    libc::sigemptyset(&mut empty);
    libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
    // The clean init needs no privilege: an empty bounding set leaves it none after exec.
    for capability in 0..=63 {
        libc::prctl(libc::PR_CAPBSET_DROP, capability as libc::c_ulong, 0, 0, 0);
    }
    libc::prctl(
        libc::PR_CAP_AMBIENT,
        libc::PR_CAP_AMBIENT_CLEAR_ALL,
        0,
        0,
        0,
    );
    libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
    let argv = [c"init".as_ptr(), std::ptr::null()];
    let envp = [std::ptr::null::<libc::c_char>()];
    libc::syscall(
        libc::SYS_execveat,
        image_parked,
        c"".as_ptr(),
        argv.as_ptr(),
        envp.as_ptr(),
        libc::AT_EMPTY_PATH,
    );
    errno()
}

/// What [`gated_program_entry`] needs, copied to the top of the program's own stack (init
/// goes on running, and then execs, while the program reads it).
struct GatedEntry {
    program: *const ProgramPlan,
    report_fd: RawFd,
    gate_read: RawFd,
    gate_write: RawFd,
}

extern "C" fn gated_program_entry(argument: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `argument` points to the GatedEntry at the top of this process's own stack
    // mapping, which nothing else touches; the plan it points to lives in memory init never
    // frees (init execs, which leaves this process the only user of that memory).
    unsafe {
        let entry = &*(argument as *const GatedEntry);
        // This process's copy of the write end: closed, so that the gate reads EOF (and the
        // program exits) if init dies without opening it.
        libc::close(entry.gate_write);
        let mut byte = 0u8;
        loop {
            let count = libc::read(entry.gate_read, (&mut byte as *mut u8).cast(), 1);
            if count == 1 {
                break;
            }
            if count < 0 && errno() == libc::EINTR {
                continue;
            }
            libc::_exit(125);
        }
        libc::close(entry.gate_read);
        exec_program(&*entry.program, entry.report_fd)
    }
}

/// Starts the program sharing init's memory (CLONE_VM, a stack of its own: no copy of init's
/// page tables, which are a copy of the whole node) but, unlike `vfork_program`, without
/// suspending init: the program waits at a gate while init execs the clean init, which opens
/// it. Init's exec leaves the program the only user of the old memory until its own exec.
/// Returns the program's pid and init's end of the gate (close-on-exec).
unsafe fn gated_program(
    program: &ProgramPlan,
    report_fd: RawFd,
) -> Result<(libc::pid_t, RawFd), i32> {
    let mut gate = [0 as libc::c_int; 2];
    if libc::pipe2(gate.as_mut_ptr(), libc::O_CLOEXEC) != 0 {
        return Err(errno());
    }
    let stack = libc::mmap(
        std::ptr::null_mut(),
        PROGRAM_STACK_BYTES,
        libc::PROT_READ | libc::PROT_WRITE,
        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
        -1,
        0,
    );
    if stack == libc::MAP_FAILED {
        return Err(errno());
    }
    // The entry at the very top, the stack (16-byte aligned) right below it.
    let entry_offset = (PROGRAM_STACK_BYTES - std::mem::size_of::<GatedEntry>()) & !15;
    let entry = stack.cast::<u8>().add(entry_offset).cast::<GatedEntry>();
    entry.write(GatedEntry {
        program,
        report_fd,
        gate_read: gate[0],
        gate_write: gate[1],
    });
    let pid = libc::clone(
        gated_program_entry,
        entry.cast::<libc::c_void>(),
        libc::CLONE_VM | libc::SIGCHLD,
        entry.cast::<libc::c_void>(),
    );
    if pid < 0 {
        let error = errno();
        libc::munmap(stack, PROGRAM_STACK_BYTES);
        return Err(error);
    }
    libc::close(gate[0]);
    Ok((pid, gate[1]))
}

unsafe fn run_step(step: &Step) -> Result<(), i32> {
    let check = |result: libc::c_int| if result == 0 { Ok(()) } else { Err(errno()) };
    let optional = |value: &Option<CString>| {
        value
            .as_ref()
            .map(|value| value.as_ptr())
            .unwrap_or(std::ptr::null())
    };
    match step {
        Step::Mount {
            source,
            target,
            fstype,
            flags,
            data,
        } => check(libc::mount(
            optional(source),
            target.as_ptr(),
            optional(fstype),
            *flags,
            optional(data).cast(),
        )),
        Step::Mkdir { path, mode } => {
            if libc::mkdir(path.as_ptr(), *mode) == 0 || errno() == libc::EEXIST {
                Ok(())
            } else {
                Err(errno())
            }
        }
        Step::Symlink { target, link } => check(libc::symlink(target.as_ptr(), link.as_ptr())),
        Step::CharDevice { path, major, minor } => {
            check(libc::mknod(
                path.as_ptr(),
                libc::S_IFCHR | 0o666,
                libc::makedev(*major, *minor),
            ))?;
            // mknod applies the umask; the nodes must be usable by the program's user.
            check(libc::chmod(path.as_ptr(), 0o666))
        }
        Step::PivotRoot { new_root } => {
            check(libc::chdir(new_root.as_ptr()))?;
            // pivot_root(".", "."): the old root ends up stacked under the new one and is
            // detached right away, so no put_old directory is needed in the read-only root.
            let dot = c".".as_ptr();
            if libc::syscall(libc::SYS_pivot_root, dot, dot) != 0 {
                return Err(errno());
            }
            check(libc::umount2(dot, libc::MNT_DETACH))?;
            check(libc::chdir(c"/".as_ptr()))
        }
        Step::OwnedDir { path, uid, gid } => {
            if libc::mkdir(path.as_ptr(), 0o755) != 0 && errno() != libc::EEXIST {
                return Err(errno());
            }
            check(libc::lchown(path.as_ptr(), *uid, *gid))
        }
        Step::OwnedFile {
            path,
            data,
            mode,
            uid,
            gid,
        } => {
            let fd = libc::open(
                path.as_ptr(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                *mode,
            );
            if fd < 0 {
                return Err(errno());
            }
            let result = write_all(fd, data).and_then(|()| check(libc::fchown(fd, *uid, *gid)));
            libc::close(fd);
            result
        }
        Step::Hostname { name } => check(libc::sethostname(name.as_ptr(), name.as_bytes().len())),
        Step::LoopbackUp => loopback_up(),
        Step::ProtectFromOom => {
            // Lowering the score needs CAP_SYS_RESOURCE, which a containerised node may lack;
            // the program raises its own score to the maximum anyway, so the OOM killer picks
            // it first either way.
            let _ = write_proc_self(c"/proc/self/oom_score_adj", b"-1000");
            Ok(())
        }
        Step::UnshareCgroup => check(libc::unshare(libc::CLONE_NEWCGROUP)),
        Step::MaskPath { path, dev_null } => {
            let none = std::ptr::null();
            if libc::mount(
                dev_null.as_ptr(),
                path.as_ptr(),
                none,
                libc::MS_BIND,
                none.cast(),
            ) == 0
            {
                return Ok(());
            }
            match errno() {
                libc::ENOENT => Ok(()),
                // A directory: nothing to bind a file over.
                libc::ENOTDIR => check(libc::mount(
                    c"tmpfs".as_ptr(),
                    path.as_ptr(),
                    c"tmpfs".as_ptr(),
                    libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                    c"size=4k,nr_inodes=2,mode=555".as_ptr().cast(),
                )),
                error => Err(error),
            }
        }
        Step::ReadOnlyPath { path } => {
            let none = std::ptr::null();
            if libc::mount(
                path.as_ptr(),
                path.as_ptr(),
                none,
                libc::MS_BIND | libc::MS_REC,
                none.cast(),
            ) != 0
            {
                return if errno() == libc::ENOENT {
                    Ok(())
                } else {
                    Err(errno())
                };
            }
            check(libc::mount(
                none,
                path.as_ptr(),
                none,
                libc::MS_BIND
                    | libc::MS_REMOUNT
                    | libc::MS_RDONLY
                    | libc::MS_NOSUID
                    | libc::MS_NODEV
                    | libc::MS_NOEXEC,
                none.cast(),
            ))
        }
        Step::JoinNetwork { fd } => {
            let result = check(libc::setns(*fd, libc::CLONE_NEWNET));
            libc::close(*fd);
            result
        }
        Step::EnterMountTemplate { fd } => {
            // setns sets root and working directory to the template's root; unshare then
            // gives this process a copy of its (few) mounts, private to the sandbox.
            let result = check(libc::setns(*fd, libc::CLONE_NEWNS))
                .and_then(|()| check(libc::unshare(libc::CLONE_NEWNS)));
            libc::close(*fd);
            result
        }
    }
}

/// Brings up the loopback interface of the caller's network namespace (raw system calls only:
/// also used between fork and exec). Err is the errno.
///
/// # Safety
/// None beyond the system calls' own; `unsafe` because it runs in forked children.
pub(crate) unsafe fn loopback_up() -> Result<(), i32> {
    let check = |result: libc::c_int| if result == 0 { Ok(()) } else { Err(errno()) };
    let socket = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
    if socket < 0 {
        return Err(errno());
    }
    let mut request: libc::ifreq = std::mem::zeroed();
    for (slot, byte) in request.ifr_name.iter_mut().zip(b"lo\0".iter()) {
        *slot = *byte as libc::c_char;
    }
    let mut result = check(libc::ioctl(socket, libc::SIOCGIFFLAGS, &mut request));
    if result.is_ok() {
        request.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        result = check(libc::ioctl(socket, libc::SIOCSIFFLAGS, &request));
    }
    libc::close(socket);
    result
}

unsafe fn write_all(fd: RawFd, data: &[u8]) -> Result<(), i32> {
    let mut rest = data;
    while !rest.is_empty() {
        let count = libc::write(fd, rest.as_ptr().cast(), rest.len());
        if count < 0 {
            if errno() == libc::EINTR {
                continue;
            }
            return Err(errno());
        }
        rest = rest.get(count as usize..).unwrap_or(&[]);
    }
    Ok(())
}

unsafe fn write_proc_self(path: &std::ffi::CStr, value: &[u8]) -> Result<(), i32> {
    let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
    if fd < 0 {
        return Err(errno());
    }
    let result = write_all(fd, value);
    libc::close(fd);
    result
}

unsafe fn enter_main(
    namespace_fds: &[RawFd],
    program: &ProgramPlan,
    identity: NodeIdentity,
    sync_read: RawFd,
    report_fd: RawFd,
) -> ! {
    // Before the program is cloned into the sandbox's PID namespace from this memory.
    hide_node_identity(&identity);
    wait_for_go(sync_read);
    for fd in namespace_fds {
        if libc::setns(*fd, 0) != 0 {
            fail(report_fd, STEP_SETNS, errno());
        }
    }
    // CLONE_PARENT: the program becomes a child of the node, which waits for it; joining the
    // PID namespace above only applies to children, so the program lives inside it.
    let program_pid = raw_clone((libc::CLONE_PARENT | libc::SIGCHLD) as libc::c_ulong);
    if program_pid == 0 {
        exec_program(program, report_fd);
    }
    if program_pid < 0 {
        fail(report_fd, STEP_FORK_PROGRAM, errno());
    }
    report(report_fd, REPORT_STARTED, program_pid, 0);
    libc::_exit(0)
}

#[repr(C)]
struct CapabilityHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapabilityData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

unsafe fn exec_program(program: &ProgramPlan, report_fd: RawFd) -> ! {
    let step_failed = |error: i32| -> ! { fail(report_fd, STEP_PROGRAM, error) };
    // Signal dispositions and the mask survive exec: give the program the defaults (the node
    // ignores SIGPIPE, the reaper blocks SIGCHLD).
    for signal in 1..=64 {
        if signal != libc::SIGKILL && signal != libc::SIGSTOP {
            libc::signal(signal, libc::SIG_DFL);
        }
    }
    let mut empty: libc::sigset_t = std::mem::zeroed();
    libc::sigemptyset(&mut empty);
    libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
    // Own session and process group: no controlling terminal, and a group to kill.
    libc::setsid();
    if program.raise_oom_score {
        if let Err(error) = write_proc_self(c"/proc/self/oom_score_adj", b"1000") {
            step_failed(error);
        }
    }
    for (resource, value) in &program.rlimits {
        let limit = libc::rlimit {
            rlim_cur: *value,
            rlim_max: *value,
        };
        if libc::setrlimit(*resource, &limit) != 0 {
            step_failed(errno());
        }
    }
    let stdin_fd = match &program.stdin {
        StdinPlan::Bytes(data) => {
            let fd = libc::syscall(libc::SYS_memfd_create, c"stdin".as_ptr(), libc::MFD_CLOEXEC)
                as RawFd;
            if fd < 0 {
                step_failed(errno());
            }
            if let Err(error) = write_all(fd, data) {
                step_failed(error);
            }
            libc::lseek(fd, 0, libc::SEEK_SET);
            fd
        }
        StdinPlan::Null => libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC),
    };
    if stdin_fd < 0
        || libc::dup2(stdin_fd, 0) < 0
        || libc::dup2(program.stdout_fd, 1) < 0
        || libc::dup2(program.stderr_fd, 2) < 0
    {
        step_failed(errno());
    }
    // Everything else closes at exec (the report pipe stays usable until then).
    close_range(3, u32::MAX, libc::CLOSE_RANGE_CLOEXEC);
    if libc::chdir(program.cwd.as_ptr()) != 0 {
        step_failed(errno());
    }
    if program.drop_capabilities {
        for capability in 0..=program.capability_last {
            libc::prctl(libc::PR_CAPBSET_DROP, capability as libc::c_ulong, 0, 0, 0);
        }
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        );
    }
    if let Some((uid, gid)) = program.credentials {
        if libc::syscall(libc::SYS_setgroups, 0usize, std::ptr::null::<libc::gid_t>()) != 0
            || libc::syscall(libc::SYS_setresgid, gid, gid, gid) != 0
            || libc::syscall(libc::SYS_setresuid, uid, uid, uid) != 0
        {
            step_failed(errno());
        }
    }
    // A fresh session keyring, owned by the program's user: the node's own session keyring
    // (inherited through fork) is no longer the program's. No keyring support: nothing to hide.
    const KEYCTL_JOIN_SESSION_KEYRING: libc::c_long = 1;
    if libc::syscall(
        libc::SYS_keyctl,
        KEYCTL_JOIN_SESSION_KEYRING,
        std::ptr::null::<libc::c_char>(),
    ) < 0
        && errno() != libc::ENOSYS
    {
        step_failed(errno());
    }
    if program.drop_capabilities {
        let header = CapabilityHeader {
            version: LINUX_CAPABILITY_VERSION_3,
            pid: 0,
        };
        let data = [CapabilityData {
            effective: 0,
            permitted: 0,
            inheritable: 0,
        }; 2];
        if libc::syscall(libc::SYS_capset, &header, data.as_ptr()) != 0 {
            step_failed(errno());
        }
    }
    if program.no_new_privs && libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
        step_failed(errno());
    }
    if let Some(filter) = &program.seccomp {
        let fprog = libc::sock_fprog {
            len: filter.len() as libc::c_ushort,
            filter: filter.as_ptr() as *mut libc::sock_filter,
        };
        if libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER,
            &fprog as *const libc::sock_fprog,
            0,
            0,
        ) != 0
        {
            step_failed(errno());
        }
    }
    let mut last_error = libc::ENOENT;
    for candidate in &program.exe_candidates {
        libc::execve(
            candidate.as_ptr(),
            program.argv_pointers.as_ptr(),
            program.envp_pointers.as_ptr(),
        );
        last_error = errno();
        if last_error != libc::ENOENT && last_error != libc::ENOTDIR {
            break;
        }
    }
    report(report_fd, REPORT_EXEC_FAILED, 0, last_error);
    libc::_exit(127)
}
