//! What isolation this host permits, found out once at start-up by trying it.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use serde::Serialize;

use super::cgroup::{self, CgroupVersion};
use super::seccomp;

/// The namespaces the kernel let us create.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct NamespaceSupport {
    /// PID namespace.
    pub pid: bool,
    /// Mount namespace.
    pub mount: bool,
    /// Network namespace.
    pub network: bool,
    /// IPC namespace.
    pub ipc: bool,
    /// UTS namespace.
    pub uts: bool,
    /// cgroup namespace.
    pub cgroup: bool,
}

impl NamespaceSupport {
    /// All of PID, mount, network, IPC and UTS (what a full sandbox needs).
    pub fn all_required(&self) -> bool {
        self.pid && self.mount && self.network && self.ipc && self.uts
    }
}

/// How much of the sandbox is applied on this host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IsolationLevel {
    /// Namespaces, cgroup limits, own uid, no capabilities, seccomp, private file system.
    Full,
    /// Some layers are missing; `IsolationReport::missing` names them.
    Partial,
}

/// The outcome of the start-up probe: what every sandbox on this node gets.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct IsolationReport {
    /// The overall level.
    pub level: IsolationLevel,
    /// Whether the node runs as root (needed for uids, mounts, cgroups).
    pub root: bool,
    /// Namespaces available (and therefore applied).
    pub namespaces: NamespaceSupport,
    /// The cgroup interface used, None when cgroups cannot be managed.
    pub cgroup: Option<CgroupVersion>,
    /// Whether a seccomp filter is installed on every sandboxed process.
    pub seccomp: bool,
    /// Whether each sandbox gets its own unprivileged uid with no capabilities.
    pub dedicated_uid: bool,
    /// Whether the sandbox has its own root file system (read-only system dirs, private /tmp).
    pub private_filesystem: bool,
    /// no_new_privs is always set (it needs no privilege).
    pub no_new_privs: bool,
}

impl IsolationReport {
    /// The layers that are not applied, in words.
    pub fn missing(&self) -> Vec<&'static str> {
        let mut missing = Vec::new();
        if !self.root {
            missing.push("not root");
        }
        let namespaces = &self.namespaces;
        for (present, name) in [
            (namespaces.pid, "no pid namespace"),
            (namespaces.mount, "no mount namespace"),
            (namespaces.network, "no network namespace"),
            (namespaces.ipc, "no ipc namespace"),
            (namespaces.uts, "no uts namespace"),
            (self.cgroup.is_some(), "no cgroup limits"),
            (self.seccomp, "no seccomp"),
            (self.dedicated_uid, "no dedicated uid"),
            (self.private_filesystem, "no private file system"),
        ] {
            if !present {
                missing.push(name);
            }
        }
        missing
    }

    /// One line for answers and logs: `full`, or `partial: <missing layers>`.
    pub fn label(&self) -> String {
        match self.level {
            IsolationLevel::Full => "full".to_string(),
            IsolationLevel::Partial => format!("partial: {}", self.missing().join(", ")),
        }
    }

    /// A report for the given facts (the level follows from them).
    pub fn from_facts(
        root: bool,
        namespaces: NamespaceSupport,
        cgroup: Option<CgroupVersion>,
        seccomp: bool,
    ) -> Self {
        let dedicated_uid = root;
        let private_filesystem = root && namespaces.mount && namespaces.pid;
        let full = root
            && namespaces.all_required()
            && cgroup.is_some()
            && seccomp
            && dedicated_uid
            && private_filesystem;
        IsolationReport {
            level: if full {
                IsolationLevel::Full
            } else {
                IsolationLevel::Partial
            },
            root,
            namespaces,
            cgroup,
            seccomp,
            dedicated_uid,
            private_filesystem,
            no_new_privs: true,
        }
    }
}

const PROBE_PID: u8 = 1;
const PROBE_MOUNT: u8 = 2;
const PROBE_NETWORK: u8 = 4;
const PROBE_IPC: u8 = 8;
const PROBE_UTS: u8 = 16;
const PROBE_CGROUP: u8 = 32;
const PROBE_SECCOMP: u8 = 64;

/// Tries, in a throw-away child, to create each namespace and to install a seccomp filter.
fn probe_in_child() -> (NamespaceSupport, bool) {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 fills our array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return (NamespaceSupport::default(), false);
    }
    // SAFETY: fresh fds owned by us.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let filter = seccomp::build_filter();
    // SAFETY: fork-like clone; the child only makes raw system calls and exits.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            libc::SIGCHLD as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    } as libc::pid_t;
    if pid == 0 {
        // SAFETY: single-threaded child; raw system calls on prepared data only.
        unsafe {
            let mut bits = 0u8;
            for (flag, bit) in [
                (libc::CLONE_NEWNS, PROBE_MOUNT),
                (libc::CLONE_NEWPID, PROBE_PID),
                (libc::CLONE_NEWNET, PROBE_NETWORK),
                (libc::CLONE_NEWIPC, PROBE_IPC),
                (libc::CLONE_NEWUTS, PROBE_UTS),
                (libc::CLONE_NEWCGROUP, PROBE_CGROUP),
            ] {
                if libc::unshare(flag) == 0 {
                    bits |= bit;
                }
            }
            if !filter.is_empty() && libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0 {
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
                ) == 0
                {
                    bits |= PROBE_SECCOMP;
                }
            }
            libc::write(write_end.as_raw_fd(), (&bits as *const u8).cast(), 1);
            libc::_exit(0);
        }
    }
    drop(write_end);
    if pid < 0 {
        return (NamespaceSupport::default(), false);
    }
    let mut bits = 0u8;
    // SAFETY: reading one byte into our variable, then reaping our child.
    let count = unsafe { libc::read(read_end.as_raw_fd(), (&mut bits as *mut u8).cast(), 1) };
    let mut status = 0;
    // SAFETY: reaping our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    if count != 1 {
        return (NamespaceSupport::default(), false);
    }
    (
        NamespaceSupport {
            pid: bits & PROBE_PID != 0,
            mount: bits & PROBE_MOUNT != 0,
            network: bits & PROBE_NETWORK != 0,
            ipc: bits & PROBE_IPC != 0,
            uts: bits & PROBE_UTS != 0,
            cgroup: bits & PROBE_CGROUP != 0,
        },
        bits & PROBE_SECCOMP != 0,
    )
}

/// Probes the host. `cgroup_prefix` is the node's cgroup name (e.g. `shoal-node1`); a group
/// `<prefix>/probe` is created and removed to prove that cgroups can be managed.
pub fn probe(cgroup_prefix: &str) -> IsolationReport {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let (namespaces, seccomp_works) = probe_in_child();
    let cgroup_version = if root { cgroup::detect() } else { None };
    let cgroup_version = cgroup_version.filter(|version| {
        let limits = cgroup::CgroupLimits {
            memory_bytes: 64 * 1024 * 1024,
            cpu_millis: 1000,
            max_processes: 16,
        };
        match cgroup::SandboxCgroup::create(*version, &format!("{cgroup_prefix}/probe"), limits) {
            Ok(group) => group.remove().is_ok(),
            Err(error) => {
                tracing::warn!(%error, "cannot manage cgroups");
                false
            }
        }
    });
    IsolationReport::from_facts(
        root,
        namespaces,
        cgroup_version,
        seccomp_works && seccomp::supported(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_level_needs_every_layer() {
        let all = NamespaceSupport {
            pid: true,
            mount: true,
            network: true,
            ipc: true,
            uts: true,
            cgroup: true,
        };
        let full = IsolationReport::from_facts(true, all, Some(CgroupVersion::V1), true);
        assert_eq!(full.level, IsolationLevel::Full);
        assert_eq!(full.label(), "full");
        let cases = [
            (false, all, Some(CgroupVersion::V2), true, "not root"),
            (
                true,
                NamespaceSupport {
                    network: false,
                    ..all
                },
                Some(CgroupVersion::V2),
                true,
                "no network namespace",
            ),
            (true, all, None, true, "no cgroup limits"),
            (true, all, Some(CgroupVersion::V2), false, "no seccomp"),
        ];
        for (root, namespaces, cgroup, seccomp, missing) in cases {
            let report = IsolationReport::from_facts(root, namespaces, cgroup, seccomp);
            assert_eq!(report.level, IsolationLevel::Partial);
            assert!(
                report.label().contains(missing),
                "{} lacks {missing}",
                report.label()
            );
        }
    }
}
