//! The sandbox's file system: a read-only view of the host's system directories, a minimal /etc
//! without secrets, a fresh /proc, a minimal /dev, a private size-limited /tmp and, for
//! workstations, the home volume. Everything is mounted inside the sandbox's own mount
//! namespace (with private propagation), so nothing appears on the host and nothing has to be
//! unmounted: the mounts vanish with the namespace's last process.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::child::Step;
use super::SandboxError;

/// Host directories shown read-only (when they exist; symlinks such as /bin -> usr/bin on
/// merged-/usr systems are recreated as symlinks).
const SYSTEM_DIRS: &[&str] = &["usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32"];
/// Device nodes created in the sandbox's /dev: (name, major, minor) of the memory devices.
const DEVICES: &[(&str, u32, u32)] = &[
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
];
/// Entries of the host's /etc copied into the sandbox's /etc: what programs and interpreters
/// need to start (dynamic loader, name service, time zone, certificates, alternatives,
/// runtime configuration). Everything else, notably shadow, gshadow, sudoers, ssh host keys,
/// ssl/private and machine-id, is absent.
const ETC_ALLOWLIST: &[&str] = &[
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "nsswitch.conf",
    "localtime",
    "timezone",
    "alternatives",
    "ssl/certs",
    "ssl/openssl.cnf",
    "ca-certificates",
    "ca-certificates.conf",
    "os-release",
    "debian_version",
    "mime.types",
    "protocols",
    "services",
    "host.conf",
    "gai.conf",
    "inputrc",
    "profile",
    "bash.bashrc",
    "perl",
    "python3",
    "java-17-openjdk",
    "java-21-openjdk",
    "fonts",
    "locale.alias",
    "magic",
];
/// Bounds on the copied /etc.
const ETC_FILE_BYTES_MAX: u64 = 4 * 1024 * 1024;
const ETC_TOTAL_BYTES_MAX: u64 = 64 * 1024 * 1024;
const ETC_DEPTH_MAX: usize = 6;
/// Size of the read-only tmpfs the new root is built on (only mount points live there).
const ROOT_TMPFS_OPTIONS: &str = "size=1m,nr_inodes=256,mode=755";
/// /dev is a tiny tmpfs holding mount points and symlinks.
const DEV_TMPFS_OPTIONS: &str = "size=64k,nr_inodes=64,mode=755";
/// Where a workstation's home volume appears inside its sandbox.
pub const HOME_IN_SANDBOX: &str = "/home/user";

/// The per-node host directories the sandboxes are built from.
#[derive(Debug, Clone)]
pub struct RootLayout {
    /// The minimal /etc, rebuilt at each node start.
    pub etc_dir: PathBuf,
    /// An empty directory used as the mount point of every sandbox's root (each sandbox mounts
    /// its own tmpfs there in its own mount namespace).
    pub root_dir: PathBuf,
}

fn io_error(path: &Path, error: std::io::Error) -> SandboxError {
    SandboxError::Prepare {
        path: path.to_path_buf(),
        reason: error.to_string(),
    }
}

fn cstring(path: &Path) -> Result<CString, SandboxError> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| SandboxError::Prepare {
        path: path.to_path_buf(),
        reason: "path contains a NUL byte".to_string(),
    })
}

fn text(value: &str) -> CString {
    // Only called with our own constants and formatted numbers: no NUL bytes.
    CString::new(value.replace('\0', "")).unwrap_or_default()
}

impl RootLayout {
    /// Builds the layout under `state_dir` (replacing what an earlier start left).
    pub fn prepare(state_dir: &Path) -> Result<Self, SandboxError> {
        let etc_dir = state_dir.join("etc");
        let root_dir = state_dir.join("root");
        if etc_dir.exists() {
            std::fs::remove_dir_all(&etc_dir).map_err(|error| io_error(&etc_dir, error))?;
        }
        std::fs::create_dir_all(&etc_dir).map_err(|error| io_error(&etc_dir, error))?;
        std::fs::create_dir_all(&root_dir).map_err(|error| io_error(&root_dir, error))?;
        // Explicit modes: the agent runs with umask 077 (its data dir is its own), but the
        // sandbox's /etc must be readable by the sandboxed programs' users.
        set_mode(&etc_dir, SHARED_DIR_MODE)?;
        set_mode(&root_dir, SHARED_DIR_MODE)?;
        let mut copied_bytes = 0u64;
        for entry in ETC_ALLOWLIST {
            let source = Path::new("/etc").join(entry);
            let target = etc_dir.join(entry);
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent).map_err(|error| io_error(parent, error))?;
                set_mode(parent, SHARED_DIR_MODE)?;
            }
            copy_tree(&source, &target, 0, &mut copied_bytes)?;
        }
        let generated: &[(&str, &str)] = &[
            ("passwd", "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"),
            ("group", "root:x:0:\nnogroup:x:65534:\n"),
            ("hosts", "127.0.0.1\tlocalhost sandbox\n::1\tlocalhost ip6-localhost ip6-loopback\n"),
            ("hostname", "sandbox\n"),
            ("resolv.conf", "# no network in this sandbox\n"),
        ];
        for (name, content) in generated {
            let path = etc_dir.join(name);
            std::fs::write(&path, content).map_err(|error| io_error(&path, error))?;
            set_mode(&path, SHARED_FILE_MODE)?;
        }
        Ok(RootLayout { etc_dir, root_dir })
    }

    /// The mount steps for one sandbox, done by its init process before pivot_root.
    pub(crate) fn steps(
        &self,
        tmp_bytes: u64,
        home: Option<&Path>,
    ) -> Result<Vec<Step>, SandboxError> {
        self.build_steps(Some(tmp_bytes), home)
    }

    /// The steps that build the node's shared sandbox root once (see
    /// [`Step::EnterMountTemplate`]): everything of [`RootLayout::steps`] but the sandbox's own
    /// /proc, /tmp and home, ending with pivot_root into it.
    pub(crate) fn template_steps(&self) -> Result<Vec<Step>, SandboxError> {
        self.build_steps(None, None)
    }

    /// A sandbox's own mounts on top of a copy of the shared root: a fresh /proc (mounted by
    /// its init, so it shows the sandbox's PID namespace) and its private /tmp.
    pub(crate) fn steps_in_template(&self, tmp_bytes: u64) -> Vec<Step> {
        vec![
            Step::Mount {
                source: Some(text("proc")),
                target: text("/proc"),
                fstype: Some(text("proc")),
                flags: libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                data: None,
            },
            Step::Mount {
                source: Some(text("tmpfs")),
                target: text("/tmp"),
                fstype: Some(text("tmpfs")),
                flags: libc::MS_NOSUID | libc::MS_NODEV,
                data: Some(text(&format!("size={tmp_bytes},mode=1777"))),
            },
        ]
    }

    /// With `tmp_bytes`, one sandbox's root (with /proc, /tmp and the home mounted); without,
    /// the shared template (mount points only for those).
    fn build_steps(
        &self,
        tmp_bytes: Option<u64>,
        home: Option<&Path>,
    ) -> Result<Vec<Step>, SandboxError> {
        let root = &self.root_dir;
        let under = |relative: &str| cstring(&root.join(relative));
        let mut steps = vec![
            // Stop mount events from propagating to the host.
            Step::Mount {
                source: None,
                target: text("/"),
                fstype: None,
                flags: libc::MS_REC | libc::MS_PRIVATE,
                data: None,
            },
            Step::Mount {
                source: Some(text("tmpfs")),
                target: cstring(root)?,
                fstype: Some(text("tmpfs")),
                flags: libc::MS_NOSUID | libc::MS_NODEV,
                data: Some(text(ROOT_TMPFS_OPTIONS)),
            },
        ];
        for dir in SYSTEM_DIRS {
            let host = Path::new("/").join(dir);
            let Ok(metadata) = std::fs::symlink_metadata(&host) else {
                continue;
            };
            if metadata.file_type().is_symlink() {
                let target = std::fs::read_link(&host).map_err(|error| io_error(&host, error))?;
                steps.push(Step::Symlink {
                    target: cstring(&target)?,
                    link: under(dir)?,
                });
            } else if metadata.is_dir() {
                steps.extend(read_only_bind(&host, &root.join(dir))?);
            }
        }
        steps.extend(read_only_bind(&self.etc_dir, &root.join("etc"))?);
        steps.push(Step::Mkdir {
            path: under("proc")?,
            mode: 0o555,
        });
        if tmp_bytes.is_some() {
            steps.push(Step::Mount {
                source: Some(text("proc")),
                target: under("proc")?,
                fstype: Some(text("proc")),
                flags: libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                data: None,
            });
        }
        steps.push(Step::Mkdir {
            path: under("dev")?,
            mode: 0o755,
        });
        steps.push(Step::Mount {
            source: Some(text("tmpfs")),
            target: under("dev")?,
            fstype: Some(text("tmpfs")),
            flags: libc::MS_NOSUID | libc::MS_NOEXEC,
            data: Some(text(DEV_TMPFS_OPTIONS)),
        });
        for (device, major, minor) in DEVICES {
            steps.push(Step::CharDevice {
                path: under(&format!("dev/{device}"))?,
                major: *major,
                minor: *minor,
            });
        }
        for (link, target) in [
            ("dev/fd", "/proc/self/fd"),
            ("dev/stdin", "/proc/self/fd/0"),
            ("dev/stdout", "/proc/self/fd/1"),
            ("dev/stderr", "/proc/self/fd/2"),
        ] {
            steps.push(Step::Symlink {
                target: text(target),
                link: under(link)?,
            });
        }
        // POSIX shared memory (shm_open, Python's multiprocessing) lives in /tmp's tmpfs: one
        // mount less to set up and tear down per run, and one size limit for both.
        steps.push(Step::Symlink {
            target: text("/tmp"),
            link: under("dev/shm")?,
        });
        steps.push(Step::Mount {
            source: None,
            target: under("dev")?,
            fstype: None,
            flags: libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NOEXEC,
            data: Some(text(DEV_TMPFS_OPTIONS)),
        });
        steps.push(Step::Mkdir {
            path: under("tmp")?,
            mode: 0o1777,
        });
        if let Some(tmp_bytes) = tmp_bytes {
            steps.push(Step::Mount {
                source: Some(text("tmpfs")),
                target: under("tmp")?,
                fstype: Some(text("tmpfs")),
                flags: libc::MS_NOSUID | libc::MS_NODEV,
                data: Some(text(&format!("size={tmp_bytes},mode=1777"))),
            });
        }
        if let Some(home) = home {
            steps.push(Step::Mkdir {
                path: under("home")?,
                mode: 0o755,
            });
            steps.push(Step::Mkdir {
                path: under(HOME_IN_SANDBOX.trim_start_matches('/'))?,
                mode: 0o755,
            });
            let target = under(HOME_IN_SANDBOX.trim_start_matches('/'))?;
            steps.push(Step::Mount {
                source: Some(cstring(home)?),
                target: target.clone(),
                fstype: None,
                flags: libc::MS_BIND,
                data: None,
            });
            steps.push(Step::Mount {
                source: None,
                target,
                fstype: None,
                flags: libc::MS_BIND | libc::MS_REMOUNT | libc::MS_NOSUID | libc::MS_NODEV,
                data: None,
            });
        }
        steps.push(Step::Mount {
            source: None,
            target: cstring(root)?,
            fstype: None,
            flags: libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV,
            data: Some(text(ROOT_TMPFS_OPTIONS)),
        });
        steps.push(Step::PivotRoot {
            new_root: cstring(root)?,
        });
        Ok(steps)
    }
}

fn read_only_bind(source: &Path, target: &Path) -> Result<Vec<Step>, SandboxError> {
    let target = cstring(target)?;
    Ok(vec![
        Step::Mkdir {
            path: target.clone(),
            mode: 0o755,
        },
        Step::Mount {
            source: Some(cstring(source)?),
            target: target.clone(),
            fstype: None,
            flags: libc::MS_BIND,
            data: None,
        },
        Step::Mount {
            source: None,
            target,
            fstype: None,
            flags: libc::MS_BIND
                | libc::MS_REMOUNT
                | libc::MS_RDONLY
                | libc::MS_NOSUID
                | libc::MS_NODEV,
            data: None,
        },
    ])
}

/// Copies a file, symlink or directory tree without following symlinks, dropping set-id bits,
/// within the size and depth bounds.
fn copy_tree(
    source: &Path,
    target: &Path,
    depth: usize,
    copied_bytes: &mut u64,
) -> Result<(), SandboxError> {
    use std::os::unix::fs::PermissionsExt;
    let Ok(metadata) = std::fs::symlink_metadata(source) else {
        return Ok(());
    };
    let kind = metadata.file_type();
    if kind.is_symlink() {
        let link = std::fs::read_link(source).map_err(|error| io_error(source, error))?;
        std::os::unix::fs::symlink(&link, target).map_err(|error| io_error(target, error))?;
    } else if kind.is_dir() {
        if depth >= ETC_DEPTH_MAX {
            return Ok(());
        }
        std::fs::create_dir_all(target).map_err(|error| io_error(target, error))?;
        set_mode(target, SHARED_DIR_MODE)?;
        let entries = std::fs::read_dir(source).map_err(|error| io_error(source, error))?;
        for entry in entries.flatten() {
            copy_tree(
                &entry.path(),
                &target.join(entry.file_name()),
                depth + 1,
                copied_bytes,
            )?;
        }
    } else if kind.is_file() {
        // Files only root may read are not meant for sandboxed programs.
        let world_readable = metadata.permissions().mode() & 0o004 != 0;
        if !world_readable
            || metadata.len() > ETC_FILE_BYTES_MAX
            || *copied_bytes + metadata.len() > ETC_TOTAL_BYTES_MAX
        {
            return Ok(());
        }
        std::fs::copy(source, target).map_err(|error| io_error(source, error))?;
        let mode = metadata.permissions().mode() & 0o755;
        std::fs::set_permissions(target, std::fs::Permissions::from_mode(mode))
            .map_err(|error| io_error(target, error))?;
        *copied_bytes += metadata.len();
    }
    Ok(())
}

/// Mode of the directories the sandbox shares read-only with its programs.
const SHARED_DIR_MODE: u32 = 0o755;
/// Mode of the files the sandbox generates for its programs (`/etc/passwd`, ...).
const SHARED_FILE_MODE: u32 = 0o644;

/// Sets `path`'s mode (whatever umask the process runs with).
fn set_mode(path: &Path, mode: u32) -> Result<(), SandboxError> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|error| io_error(path, error))
}
