//! The environment driver: everything that touches the kernel. Network namespaces joined by a
//! bridge, firewall partitions inside the namespaces, processes started in them, skewed clocks,
//! small data filesystems, and the cleanup that removes all of it. Needs root.
//!
//! Everything created carries the run's tag (`shoalchaos-<tag>`), so that a crashed run's
//! leftovers can be found and removed (`shoal-chaos --cleanup`).

pub mod cleanup;
pub mod datadir;
pub mod disk;
pub mod network;
pub mod probe;
pub mod process;

use std::process::Command;

use rand::RngCore;

/// Prefix of everything the harness creates: namespace names, temp dirs, mount sources.
pub const PREFIX: &str = "shoalchaos";

/// Name of the environment variable that marks every process the harness starts with its run.
pub const RUN_ENV_VAR: &str = "SHOAL_CHAOS_RUN";

/// What went wrong while driving the environment.
#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    /// A command (ip, iptables, mount) failed.
    #[error("`{command}` failed: {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// What it printed on stderr.
        stderr: String,
    },
    /// A system call or file operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// The harness needs root.
    #[error("the chaos environment needs root (uid 0)")]
    NotRoot,
    /// A tool is missing from the host.
    #[error("missing tool: {0}")]
    MissingTool(String),
}

impl EnvError {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            what: what.into(),
            source,
        }
    }
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

/// The random tag of one run; part of every name the run creates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunTag(String);

impl RunTag {
    /// A fresh random tag (8 hex digits), from the OS's entropy: it must differ between
    /// concurrent runs even with the same seed, so it does not come from the seed.
    pub fn random() -> Self {
        Self(format!("{:08x}", rand::rngs::OsRng.next_u32()))
    }

    /// The tag text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `shoalchaos-<tag>`: the prefix of everything this run creates.
    pub fn prefix(&self) -> String {
        format!("{PREFIX}-{}", self.0)
    }

    /// The run's directory (data dirs, logs, ballast): `$TMPDIR/shoalchaos-<tag>`.
    pub fn root_dir(&self) -> std::path::PathBuf {
        std::env::temp_dir().join(self.prefix())
    }
}

/// Runs a command to completion; its stdout on success, its stderr in the error otherwise.
pub(crate) fn run(program: &str, args: &[&str]) -> Result<String, EnvError> {
    let command = format!("{program} {}", args.join(" "));
    let output = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| EnvError::io(format!("spawn `{command}`"), e))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(EnvError::Command {
            command,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        })
    }
}
