//! Shared helpers of the sandbox and run integration tests: a per-test sandbox host with its own
//! node id, root detection (skip, or fail under CI=true), and leak checks.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, Once};

use shoal_executor::clock::SystemClock;
use shoal_executor::run::{self, Languages, RunContext, RunPolicy, RunRequest, RunResult};
use shoal_executor::sandbox::{self, SandboxHost, SandboxHostConfig};

static TRACING: Once = Once::new();

/// Installs a test subscriber once.
pub fn init_tracing() {
    TRACING.call_once(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
            )
            .with_test_writer()
            .try_init();
    });
}

/// True when the test can run. Not root: skip with a message, unless CI=true (then fail).
pub fn root_or_skip(test: &str) -> bool {
    init_tracing();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var("CI")
        .map(|value| value == "true")
        .unwrap_or(false)
    {
        panic!("{test} needs root and CI=true: refusing to skip");
    }
    eprintln!("SKIP {test}: needs root (namespaces, cgroups, uids); run as root to execute it");
    false
}

/// A sandbox host of its own for one test (node id unique per test and process).
pub struct TestHost {
    pub host: Arc<SandboxHost>,
    pub context: RunContext,
    pub state_dir: tempfile::TempDir,
}

impl TestHost {
    pub fn start(test: &str) -> anyhow::Result<Self> {
        let state_dir = tempfile::Builder::new()
            .prefix("shoal-sandbox-test")
            .tempdir()?;
        let node_id = format!("t{}-{}", std::process::id(), test.replace('_', "-"));
        let node_id: String = node_id.chars().take(60).collect();
        let host = SandboxHost::start(SandboxHostConfig::new(node_id, state_dir.path()))?;
        let context = RunContext {
            host: Arc::clone(&host),
            languages: Arc::new(Languages::discover()),
            policy: RunPolicy::default(),
            clock: Arc::new(SystemClock),
        };
        Ok(TestHost {
            host,
            context,
            state_dir,
        })
    }

    pub async fn run(&self, request: &RunRequest, id: &str) -> anyhow::Result<RunResult> {
        Ok(run::execute(&self.context, request, id).await?)
    }

    pub fn state_path(&self) -> PathBuf {
        self.state_dir.path().to_path_buf()
    }

    /// Asserts that nothing of any sandbox remains: no cgroup under the node's prefix, no
    /// process with one of the node's uids, no mount under the state dir, no work files.
    pub fn assert_clean(&self) {
        let prefix = self.host.cgroup_prefix();
        assert!(
            !sandbox::cgroup_tree_exists(prefix),
            "a sandbox cgroup under {prefix} remains"
        );
        let leftover = processes_with_uid_in(self.host.uid_pool());
        assert!(
            leftover.is_empty(),
            "sandbox processes remain: {leftover:?}"
        );
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let state = self.state_dir.path().to_string_lossy().into_owned();
        assert!(
            !mounts.contains(&state),
            "a mount under {state} is visible on the host"
        );
        let work = self.state_dir.path().join("work");
        let entries = std::fs::read_dir(&work).map(|dir| dir.count()).unwrap_or(0);
        assert_eq!(entries, 0, "files remain in {}", work.display());
        assert_eq!(self.host.uid_pool().n_in_use(), 0, "uids still leased");
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        // Remove whatever a failed test left (cgroups, processes), then the prefix itself.
        let _ = sandbox::cleanup_stale(
            self.host.cgroup_prefix(),
            &self.state_dir.path().join("work"),
        );
    }
}

/// Host pids whose real uid is in `pool`'s range.
pub fn processes_with_uid_in(pool: &sandbox::UidPool) -> Vec<(i32, u32)> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<i32>().ok())
        else {
            continue;
        };
        let status =
            std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("status"))
                .unwrap_or_default();
        let uid = status
            .lines()
            .find(|line| line.starts_with("Uid:"))
            .and_then(|line| line.split_whitespace().nth(1))
            .and_then(|uid| uid.parse::<u32>().ok());
        if let Some(uid) = uid {
            if pool.contains(uid) {
                found.push((pid, uid));
            }
        }
    }
    found
}

/// A request for `code` in `language`.
pub fn code_request(language: &str, code: &str) -> RunRequest {
    RunRequest {
        language: Some(language.to_string()),
        code: Some(code.to_string()),
        ..RunRequest::default()
    }
}

/// A request for `sh -c script`.
pub fn sh(script: &str) -> RunRequest {
    RunRequest {
        argv: Some(vec![
            "/bin/sh".to_string(),
            "-c".to_string(),
            script.to_string(),
        ]),
        ..RunRequest::default()
    }
}
