//! A small tmpfs mounted under a node's data dir, so that the nemesis can fill the disk under
//! one node without touching the host's disks. Unmounted on drop.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use tracing::{debug, warn};

use super::{EnvError, RunTag};

/// Name of the file that fills the disk.
const BALLAST: &str = ".shoalchaos-ballast";

/// Bytes written per call while filling.
const FILL_CHUNK_BYTES: usize = 64 * 1024;

/// A mounted tmpfs of a fixed size.
#[derive(Debug)]
pub struct TmpfsMount {
    dir: PathBuf,
    size_bytes: u64,
}

impl TmpfsMount {
    /// Mounts a tmpfs of `size_bytes` at `dir` (created if missing). The mount's source is the
    /// run's prefix, so `--cleanup` finds it.
    pub fn mount(dir: &Path, size_bytes: u64, tag: &RunTag) -> Result<Self, EnvError> {
        fs::create_dir_all(dir).map_err(|e| EnvError::io(format!("mkdir {}", dir.display()), e))?;
        let options = format!("size={size_bytes},mode=0755");
        mount(
            Some(tag.prefix().as_str()),
            dir,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some(options.as_str()),
        )
        .map_err(|e| EnvError::io(format!("mount tmpfs at {}", dir.display()), e.into()))?;
        debug!(dir = %dir.display(), size_bytes, "tmpfs mounted");
        Ok(Self {
            dir: dir.to_path_buf(),
            size_bytes,
        })
    }

    /// The mount point.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes a ballast file until the filesystem is full; returns the bytes written.
    pub fn fill(&self) -> Result<u64, EnvError> {
        let path = self.dir.join(BALLAST);
        let mut file = File::create(&path)
            .map_err(|e| EnvError::io(format!("create {}", path.display()), e))?;
        let chunk = vec![0xA5u8; FILL_CHUNK_BYTES];
        let mut written = 0u64;
        // Bounded: a tmpfs of `size_bytes` cannot take more than that.
        while written <= self.size_bytes {
            match file.write(&chunk) {
                Ok(0) => break,
                Ok(n) => written += n as u64,
                Err(e) if e.raw_os_error() == Some(libc_enospc()) => break,
                Err(e) => return Err(EnvError::io("fill tmpfs", e)),
            }
        }
        // A partial page may still fit; fill it byte-wise chunks so the disk is really full.
        let mut small = [0xA5u8; 512];
        while let Ok(n) = file.write(&small) {
            if n == 0 {
                break;
            }
            written += n as u64;
            small[0] = small[0].wrapping_add(1);
        }
        Ok(written)
    }

    /// Removes the ballast file.
    pub fn unfill(&self) -> Result<(), EnvError> {
        let path = self.dir.join(BALLAST);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(EnvError::io(format!("remove {}", path.display()), e)),
        }
    }
}

fn libc_enospc() -> i32 {
    nix::errno::Errno::ENOSPC as i32
}

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        // Detach: a process that still has a file open there must not keep the mount alive.
        if let Err(error) = umount2(&self.dir, MntFlags::MNT_DETACH) {
            warn!(dir = %self.dir.display(), %error, "could not unmount tmpfs");
        }
    }
}
