//! One-shot runs on this node, until the executor's sandboxed run module lands.
//!
//! The program is started through the executor's [`Spawner`] seam (the executor stays the only
//! code that starts user processes) in a fresh temporary directory that is removed before the
//! answer is sent. There is no sandbox on this path: the answer says `isolation: "none"`, and
//! the limits that need a sandbox (memory, CPU time, processes) are not enforced, so the
//! verdicts `memory_limit`, `cpu_limit` and `process_limit` are never produced here. What is
//! enforced: wall time (the whole process tree is killed), output capture (64 KiB head per
//! stream) and an output hard cap.

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use shoal_executor::spawner::{ProcessSpec, Spawner};
use tokio::io::AsyncReadExt;

use crate::api_types::{RunResult, Verdict};
use crate::clock;

/// Bytes of each stream kept in the answer (SPEC.md: 64 KiB, head kept).
pub const OUTPUT_KEPT_BYTES_MAX: usize = 65_536;
/// Total output after which the program is killed with `output_limit`.
pub const OUTPUT_HARD_CAP_BYTES: u64 = 16 << 20;

/// A validated run, ready to execute.
#[derive(Debug, Clone)]
pub struct RunPlan {
    /// Program and arguments; a `{code}` element is replaced by the path of the code file.
    pub argv: Vec<String>,
    /// The code, written to `main.<extension>` when present.
    pub code: Option<(String, String)>,
    /// Standard input.
    pub stdin: Option<String>,
    /// Extra files (names validated: no `/`, not `.` or `..`).
    pub files: BTreeMap<String, String>,
    /// Extra environment.
    pub env: BTreeMap<String, String>,
    /// Wall-time limit.
    pub timeout_ms: u64,
}

/// Runs programs for `POST /v1/runs`.
#[derive(Debug)]
pub struct Runner {
    spawner: Arc<dyn Spawner>,
    work_dir: PathBuf,
}

impl Runner {
    /// A runner that puts its temporary directories under `work_dir`, which it empties first
    /// (what an earlier run of this node left behind).
    ///
    /// `spawner` must be the node's one spawner: the host spawner tells process trees apart by
    /// a per-spawner serial, so two spawners in one process would mistake each other's trees.
    pub fn new(work_dir: PathBuf, spawner: Arc<dyn Spawner>) -> std::io::Result<Runner> {
        if work_dir.exists() {
            std::fs::remove_dir_all(&work_dir)?;
        }
        std::fs::create_dir_all(&work_dir)?;
        Ok(Runner { spawner, work_dir })
    }

    /// Executes `plan`; every failure of Shoal's own is an `internal_error` verdict.
    pub async fn run(&self, id: &str, node: &str, plan: RunPlan) -> RunResult {
        let started = clock::monotonic_now();
        let dir = self.work_dir.join(id);
        let mut result = match self.run_in(&dir, plan).await {
            Ok(result) => result,
            Err(message) => RunResult {
                id: String::new(),
                verdict: Verdict::InternalError,
                exit_code: None,
                signal: None,
                stdout: String::new(),
                stderr: message,
                stdout_truncated: false,
                stderr_truncated: false,
                wall_ms: 0,
                cpu_ms: 0,
                peak_memory_bytes: 0,
                overhead_ms: 0,
                node: String::new(),
                isolation: String::new(),
            },
        };
        let _ = tokio::fs::remove_dir_all(&dir).await;
        let total_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        result.id = id.to_string();
        result.node = node.to_string();
        result.isolation = "none".to_string();
        result.overhead_ms = total_ms.saturating_sub(result.wall_ms);
        result
    }

    async fn run_in(&self, dir: &Path, plan: RunPlan) -> Result<RunResult, String> {
        let io = |what: &str, err: std::io::Error| format!("{what}: {err}");
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| io("creating the run directory", e))?;
        let mut argv = plan.argv.clone();
        if let Some((extension, code)) = &plan.code {
            let path = dir.join(format!("main.{extension}"));
            tokio::fs::write(&path, code)
                .await
                .map_err(|e| io("writing the code", e))?;
            let path_text = path.to_string_lossy().to_string();
            for arg in &mut argv {
                if arg == "{code}" {
                    arg.clone_from(&path_text);
                }
            }
        }
        for (name, content) in &plan.files {
            tokio::fs::write(dir.join(name), content)
                .await
                .map_err(|e| io("writing a file", e))?;
        }
        if let Some(stdin) = &plan.stdin {
            // The spawner closes stdin; a shell redirect feeds the file instead.
            let path = dir.join(".stdin");
            tokio::fs::write(&path, stdin)
                .await
                .map_err(|e| io("writing stdin", e))?;
            let mut wrapped = vec![
                "/bin/sh".to_string(),
                "-c".to_string(),
                "exec \"$@\" < \"$0\"".to_string(),
                path.to_string_lossy().to_string(),
            ];
            wrapped.extend(argv);
            argv = wrapped;
        }
        let spec = ProcessSpec {
            argv,
            env: plan.env.into_iter().collect(),
            cwd: Some(dir.to_path_buf()),
        };
        let started = clock::monotonic_now();
        let mut spawned = match self.spawner.spawn(&spec, "run") {
            Ok(spawned) => spawned,
            Err(err) => {
                // The program could not start (not found, not executable): the caller's
                // program failed, like a shell's 127.
                return Ok(RunResult {
                    id: String::new(),
                    verdict: Verdict::NonzeroExit,
                    exit_code: Some(127),
                    signal: None,
                    stdout: String::new(),
                    stderr: format!("{err}\n"),
                    stdout_truncated: false,
                    stderr_truncated: false,
                    wall_ms: 0,
                    cpu_ms: 0,
                    peak_memory_bytes: 0,
                    overhead_ms: 0,
                    node: String::new(),
                    isolation: String::new(),
                });
            }
        };
        let tree = Arc::clone(&spawned.tree);
        let total = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let over_cap = Arc::new(tokio::sync::Notify::new());
        let stdout = tokio::spawn(capture(
            spawned.stdout,
            Arc::clone(&total),
            Arc::clone(&over_cap),
        ));
        let stderr = tokio::spawn(capture(
            spawned.stderr,
            Arc::clone(&total),
            Arc::clone(&over_cap),
        ));
        let deadline = Duration::from_millis(plan.timeout_ms);
        enum End {
            Exited(Result<shoal_executor::spawner::ProcessExit, String>),
            Timeout,
            OutputLimit,
        }
        let end = tokio::select! {
            exit = &mut spawned.exit => End::Exited(exit.map_err(|e| e.to_string())),
            _ = tokio::time::sleep(deadline) => End::Timeout,
            _ = over_cap.notified() => End::OutputLimit,
        };
        let wall_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        // Whatever happened, nothing of the run may outlive it.
        let killer = Arc::clone(&tree);
        let _ = tokio::task::spawn_blocking(move || killer.kill()).await;
        let (exit, limit_verdict) = match end {
            End::Exited(exit) => (Some(exit?), None),
            End::Timeout => (None, Some(Verdict::Timeout)),
            End::OutputLimit => (None, Some(Verdict::OutputLimit)),
        };
        if exit.is_none() {
            let _ = tokio::time::timeout(Duration::from_secs(2), &mut spawned.exit).await;
        }
        tree.main_reaped();
        let (stdout, stdout_truncated) = stdout.await.unwrap_or_default();
        let (stderr, stderr_truncated) = stderr.await.unwrap_or_default();
        let (verdict, exit_code, signal) = match (limit_verdict, exit) {
            (Some(verdict), _) => (verdict, None, Some(libc::SIGKILL)),
            (None, Some(exit)) => (classify(exit.code, exit.signal), exit.code, exit.signal),
            (None, None) => (Verdict::InternalError, None, None),
        };
        Ok(RunResult {
            id: String::new(),
            verdict,
            exit_code,
            signal,
            stdout: String::from_utf8_lossy(&stdout).to_string(),
            stderr: String::from_utf8_lossy(&stderr).to_string(),
            stdout_truncated,
            stderr_truncated,
            wall_ms,
            cpu_ms: 0,
            peak_memory_bytes: 0,
            overhead_ms: 0,
            node: String::new(),
            isolation: String::new(),
        })
    }
}

/// The verdict of a program that ended by itself (no limit fired).
pub fn classify(code: Option<i32>, signal: Option<i32>) -> Verdict {
    match (code, signal) {
        (Some(0), _) => Verdict::Ok,
        (Some(_), _) => Verdict::NonzeroExit,
        (None, Some(_)) => Verdict::Signaled,
        (None, None) => Verdict::InternalError,
    }
}

/// Reads a pipe to its end, keeping the head; wakes `over_cap` once all streams together
/// passed the hard cap.
async fn capture(
    fd: OwnedFd,
    total: Arc<std::sync::atomic::AtomicU64>,
    over_cap: Arc<tokio::sync::Notify>,
) -> (Vec<u8>, bool) {
    use std::sync::atomic::Ordering;
    let mut kept = Vec::new();
    let mut truncated = false;
    let Ok(mut pipe) = tokio::net::unix::pipe::Receiver::from_owned_fd(fd) else {
        return (kept, truncated);
    };
    let mut buffer = vec![0u8; 65_536];
    loop {
        match pipe.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = OUTPUT_KEPT_BYTES_MAX.saturating_sub(kept.len());
                if n > room {
                    truncated = true;
                }
                kept.extend_from_slice(&buffer[..n.min(room)]);
                let before = total.fetch_add(n as u64, Ordering::Relaxed);
                if before + n as u64 > OUTPUT_HARD_CAP_BYTES {
                    over_cap.notify_one();
                    break;
                }
            }
        }
    }
    (kept, truncated)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_of_programs_that_ended_by_themselves() {
        assert_eq!(classify(Some(0), None), Verdict::Ok);
        assert_eq!(classify(Some(3), None), Verdict::NonzeroExit);
        assert_eq!(classify(None, Some(9)), Verdict::Signaled);
        assert_eq!(classify(None, None), Verdict::InternalError);
    }
}
