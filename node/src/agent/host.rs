//! The workstations this node hosts: one executor `WorkstationActor` per workstation, all on
//! one dedicated actix arbiter, keyed by workstation id and fenced by placement generation.
//! Each workstation's processes run in its own long-lived executor sandbox (namespaces, uid,
//! cgroup limits at its *limit*) with its home volume under `<data_dir>/homes/<id>`; the
//! sandbox is destroyed when the actor (the last holder of its spawner) goes away.
//!
//! The host is a thin driver: it turns the durable spec (model.rs) into executor messages and
//! executor answers into API types. It never decides placement.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix::{Actor, Addr};
use parking_lot::Mutex;
use tracing::{info, warn};

use shoal_executor::clock::{Clock, SystemClock};
use shoal_executor::log_buffer::{LogRecord as ExecRecord, Stream};
use shoal_executor::process_id::ProcId;
use shoal_executor::sandbox::{
    self, CgroupLimits, Sandbox, SandboxHost, SandboxLimits, SandboxSpawner, SandboxSpec,
};
use shoal_executor::spawner::{ProcessSpec as ExecSpec, Spawner};
use shoal_executor::workstation::{
    Follow, ListProcesses, LogFollower, LogRange, ProcessState as ExecState, ProcessStatus,
    ReadLogs, Shutdown, SignalProcess, StartProcess, StopProcess, WorkstationActor,
    WorkstationError, WorkstationLimits,
};

use super::model::{ProcessSpec, Sizing, WorkstationRecord};
use super::Agent;
use crate::api_types::{LogRecord, LogStream, LogsPage, Process, ProcessState, WorkstationState};
use crate::config::AgentConfig;
use crate::service::ServiceError;

/// Log offsets of successive actor starts of one workstation are this many bits apart.
pub const LOG_EPOCH_SHIFT: u32 = 40;

/// Processes (and threads) of one workstation sandbox.
const WORKSTATION_PROCESSES_MAX: u64 = 1_024;
/// Largest private `/tmp` of a workstation sandbox (it is memory, within the memory limit).
const WORKSTATION_TMP_BYTES_MAX: u64 = 1 << 30;

/// Grace between SIGTERM and SIGKILL when a process is killed through the API with TERM.
const KILL_GRACE_MS: u64 = 5_000;

/// How long a teardown waits, beyond the stop grace, for the actor to stop and drop its
/// sandbox before it removes what is left itself.
const TEARDOWN_MARGIN_MS: u64 = 5_000;
/// Pause between checks that a stopped actor has dropped its sandbox.
const TEARDOWN_POLL_MS: u64 = 20;

/// One hosted workstation.
#[derive(Debug, Clone)]
struct Hosted {
    addr: Addr<WorkstationActor>,
    generation: u64,
    log_start_offset: u64,
    /// The live sandbox (owned by the actor's spawner; weak so that it still goes with the
    /// actor), for resizes.
    sandbox: std::sync::Weak<Sandbox>,
    /// The memory limit and CPU quota its cgroup holds: (bytes, millicores).
    applied_limits: (u64, u64),
}

/// The node's workstations.
#[derive(Debug)]
pub struct Host {
    isolation: String,
    sandbox_host: Arc<SandboxHost>,
    homes_dir: std::path::PathBuf,
    /// The executor's sandbox work dirs (`SandboxHostConfig`'s state dir + `work`, as the
    /// agent configures it), one per sandbox name, for the teardown's forced cleanup.
    sandbox_work_dir: std::path::PathBuf,
    clock: Arc<dyn Clock>,
    limits: WorkstationLimits,
    arbiter: actix::ArbiterHandle,
    hosted: Mutex<HashMap<String, Hosted>>,
    /// Where a new workstation's placement latency is recorded.
    metrics: Arc<crate::metrics::Metrics>,
}

impl Host {
    /// Starts the host's arbiter; workstations get sandboxes from `sandbox_host`.
    pub fn new(
        config: &AgentConfig,
        sandbox_host: Arc<SandboxHost>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> anyhow::Result<Host> {
        let homes_dir = config.data_dir.join("homes");
        std::fs::create_dir_all(&homes_dir)?;
        let limits = WorkstationLimits {
            processes_max: config.processes_per_workstation_max,
            followers_max: config.log_subscribers_per_workstation_max,
            ..WorkstationLimits::default()
        };
        let arbiter = actix::Arbiter::new().handle();
        Ok(Host {
            isolation: sandbox_host.isolation().label(),
            sandbox_host,
            homes_dir,
            sandbox_work_dir: config.data_dir.join("sandbox").join("work"),
            clock: Arc::new(SystemClock),
            limits,
            arbiter,
            hosted: Mutex::new(HashMap::new()),
            metrics,
        })
    }

    /// The isolation level applied to processes on this node.
    pub fn isolation(&self) -> &str {
        &self.isolation
    }

    /// Makes sure the workstation's actor runs at the record's generation, in a sandbox of its
    /// own; an actor of an older generation is stopped first (fencing).
    pub fn ensure(&self, ws: &WorkstationRecord) -> Result<(), ServiceError> {
        let mut hosted = self.hosted.lock();
        if let Some(current) = hosted.get(&ws.id) {
            if current.generation == ws.generation {
                return Ok(());
            }
            current.addr.do_send(Shutdown { grace_ms: 0 });
        }
        let home = self.homes_dir.join(&ws.id);
        std::fs::create_dir_all(&home)
            .map_err(|err| ServiceError::Internal(format!("creating the home volume: {err}")))?;
        let sandbox = self
            .sandbox_host
            .create(SandboxSpec {
                name: ws.id.clone(),
                limits: SandboxLimits {
                    memory_bytes: ws.memory_limit_bytes,
                    cpu_millis: ws.cpu_limit_millis,
                    max_processes: WORKSTATION_PROCESSES_MAX,
                    tmp_bytes: ws.memory_limit_bytes.min(WORKSTATION_TMP_BYTES_MAX),
                },
                home: Some(home),
            })
            .map_err(|err| match err {
                sandbox::SandboxError::UidsExhausted => ServiceError::unavailable(format!(
                    "no sandbox user id is free on this node: {err}"
                )),
                other => {
                    ServiceError::Internal(format!("creating the workstation's sandbox: {other}"))
                }
            })?;
        let sandbox = Arc::new(sandbox);
        let weak_sandbox = Arc::downgrade(&sandbox);
        let spawner: Arc<dyn Spawner> = Arc::new(SandboxSpawner::new(sandbox));
        let clock = Arc::clone(&self.clock);
        let limits = self.limits;
        // Offsets never go back: each start of the actor on this node (a node restart loses the
        // in-memory log) begins a new 2^40-byte epoch above anything written before it.
        let log_start_offset = ws.log_epoch << LOG_EPOCH_SHIFT;
        let ws_id = ws.id.clone();
        let addr = WorkstationActor::start_in_arbiter(&self.arbiter, move |_ctx| {
            WorkstationActor::new(ws_id, spawner, clock, log_start_offset, limits)
        });
        hosted.insert(
            ws.id.clone(),
            Hosted {
                addr,
                generation: ws.generation,
                log_start_offset,
                sandbox: weak_sandbox,
                applied_limits: (ws.memory_limit_bytes, ws.cpu_limit_millis),
            },
        );
        // The first start of a new workstation (generation 1, log epoch 0) ends its placement:
        // its create command's time is the only one the committed state keeps (a re-placement
        // or a resume after a restart has none, and is not counted).
        if ws.generation == 1 && ws.log_epoch == 0 {
            self.metrics
                .observe_placement(ws.created_unix_ms, crate::clock::now_unix_ms());
        }
        Ok(())
    }

    /// Makes the live sandbox of a hosted workstation follow its committed *limit* (a resize):
    /// its cgroup's memory limit and CPU quota change in place and nothing restarts; then the
    /// hosting record follows, so that a restart of the node keeps the new size. A memory limit
    /// below what the workstation holds is refused by the executor (409, the old limit stays)
    /// and tried again at the next reconcile. Returns whether the sandbox changed.
    pub async fn apply_limits(
        &self,
        agent: &Agent,
        ws_id: &str,
        sizing: Sizing,
    ) -> Result<bool, ServiceError> {
        let wanted = (sizing.memory_limit_bytes, sizing.cpu_limit_millis);
        let sandbox = {
            let hosted = self.hosted.lock();
            match hosted.get(ws_id) {
                Some(entry) if entry.applied_limits != wanted => entry.sandbox.upgrade(),
                _ => None,
            }
        };
        let Some(sandbox) = sandbox else {
            return Ok(false);
        };
        let limits = CgroupLimits {
            memory_bytes: sizing.memory_limit_bytes,
            cpu_millis: sizing.cpu_limit_millis,
            max_processes: WORKSTATION_PROCESSES_MAX,
        };
        // Lowering a v1 memory limit makes the kernel reclaim in the writer: off the runtime.
        let updated = tokio::task::spawn_blocking({
            let sandbox = Arc::clone(&sandbox);
            move || sandbox.update_limits(limits)
        })
        .await
        .map_err(|err| ServiceError::Internal(format!("resizing the sandbox: {err}")))?;
        updated.map_err(|err| match err {
            sandbox::SandboxError::MemoryBelowUsage { .. } => {
                ServiceError::Conflict(err.to_string())
            }
            other => ServiceError::Internal(format!("resizing the workstation's sandbox: {other}")),
        })?;
        if let Some(entry) = self.hosted.lock().get_mut(ws_id) {
            if std::ptr::eq(entry.sandbox.as_ptr(), Arc::as_ptr(&sandbox)) {
                entry.applied_limits = wanted;
            }
        }
        agent.store.write(|model| {
            if model.workstations.contains_key(ws_id) {
                // Raft checked the room when it committed the resize.
                model.resize_workstation(ws_id, sizing)?;
            }
            Ok(())
        })?;
        info!(
            workstation = %ws_id,
            memory_limit_bytes = sizing.memory_limit_bytes,
            cpu_limit_millis = sizing.cpu_limit_millis,
            "workstation sandbox resized"
        );
        Ok(true)
    }

    /// Checks before committing a process that its program can be found: a bare name in the
    /// sandbox's PATH, or an absolute path in the host system directories the sandbox shows.
    /// Paths in the home volume or `/tmp` are not checked (they exist only inside).
    pub fn check_program(program: &str) -> Result<(), ServiceError> {
        let missing = || ServiceError::field("argv", format!("program `{program}` not found"));
        if !program.contains('/') {
            let found = sandbox::SANDBOX_PATH
                .split(':')
                .any(|dir| std::path::Path::new(dir).join(program).is_file());
            return if found { Ok(()) } else { Err(missing()) };
        }
        let inside_only = program.starts_with(sandbox::HOME_IN_SANDBOX)
            || program.starts_with("/tmp")
            || !program.starts_with('/');
        if inside_only || std::path::Path::new(program).is_file() {
            Ok(())
        } else {
            Err(missing())
        }
    }

    fn addr(&self, ws_id: &str) -> Result<Addr<WorkstationActor>, ServiceError> {
        self.hosted
            .lock()
            .get(ws_id)
            .map(|hosted| hosted.addr.clone())
            .ok_or_else(|| {
                ServiceError::unavailable(format!(
                    "workstation `{ws_id}` is not running on this node"
                ))
            })
    }

    /// The observed state of a workstation and its log's next offset.
    pub async fn state(&self, ws_id: &str) -> (WorkstationState, u64) {
        let Ok(addr) = self.addr(ws_id) else {
            return (WorkstationState::Pending, 0);
        };
        match addr.send(LogRange).await {
            Ok((_, end)) => (WorkstationState::Running, end),
            Err(_) => (WorkstationState::Failed, 0),
        }
    }

    /// Log bytes written since the actor started, and how many of them were dropped.
    pub async fn log_counters(&self, ws_id: &str) -> Option<(u64, u64)> {
        let (addr, start) = {
            let hosted = self.hosted.lock();
            let entry = hosted.get(ws_id)?;
            (entry.addr.clone(), entry.log_start_offset)
        };
        let (retained_start, end) = addr.send(LogRange).await.ok()?;
        Some((
            end.saturating_sub(start),
            retained_start.saturating_sub(start),
        ))
    }

    /// Starts a desired process.
    pub async fn start_process(&self, ws_id: &str, spec: &ProcessSpec) -> Result<(), ServiceError> {
        let addr = self.addr(ws_id)?;
        let message = StartProcess {
            spec: ExecSpec {
                argv: spec.argv.clone(),
                env: spec
                    .env
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                cwd: spec.cwd.clone().map(Into::into),
            },
            restart: spec.restart,
            proc: Some(ProcId(spec.id)),
        };
        addr.send(message)
            .await
            .map_err(mailbox)?
            .map(|_| ())
            .map_err(workstation_error)
    }

    /// Sends `signal` to a process; TERM and KILL stop it for good (it is not restarted).
    pub async fn kill_process(
        &self,
        ws_id: &str,
        proc_id: u64,
        signal: nix::sys::signal::Signal,
    ) -> Result<(), ServiceError> {
        use nix::sys::signal::Signal;
        let addr = self.addr(ws_id)?;
        let proc = ProcId(proc_id);
        match signal {
            Signal::SIGTERM | Signal::SIGKILL => {
                let grace_ms = if signal == Signal::SIGKILL {
                    0
                } else {
                    KILL_GRACE_MS
                };
                addr.send(StopProcess { proc, grace_ms })
                    .await
                    .map_err(mailbox)?
                    .map_err(workstation_error)
            }
            other => addr
                .send(SignalProcess {
                    proc,
                    signal: other,
                })
                .await
                .map_err(mailbox)?
                .map(|_| ())
                .map_err(workstation_error),
        }
    }

    /// Asks the workstation's actor to stop a process (`kill`: SIGKILL at once, else SIGTERM
    /// and SIGKILL after the grace) without waiting for it: the actor carries the stop out by
    /// itself. Used by `placement::reconcile` to carry out a stop committed in Raft whose
    /// signal from the API did not reach this node. A workstation with no actor here runs no
    /// process, so there is nothing to stop.
    pub fn stop_process_detached(&self, ws_id: &str, proc_id: u64, kill: bool) {
        let Ok(addr) = self.addr(ws_id) else {
            return;
        };
        let grace_ms = if kill { 0 } else { KILL_GRACE_MS };
        addr.do_send(StopProcess {
            proc: ProcId(proc_id),
            grace_ms,
        });
    }

    /// The observed processes of a workstation.
    pub async fn processes(&self, ws_id: &str) -> Result<Vec<ProcessStatus>, ServiceError> {
        let addr = self.addr(ws_id)?;
        addr.send(ListProcesses).await.map_err(mailbox)
    }

    /// Reads the log.
    pub async fn read_logs(
        &self,
        ws_id: &str,
        from: u64,
        limit_bytes: usize,
    ) -> Result<LogsPage, ServiceError> {
        let addr = self.addr(ws_id)?;
        let read = addr
            .send(ReadLogs { from, limit_bytes })
            .await
            .map_err(mailbox)?;
        Ok(LogsPage {
            from: read.from,
            dropped: read.dropped,
            next: read.next,
            records: read.records.iter().map(record_json).collect(),
        })
    }

    /// Follows the log from `from`.
    pub async fn follow(&self, ws_id: &str, from: u64) -> Result<LogFollower, ServiceError> {
        let addr = self.addr(ws_id)?;
        addr.send(Follow { from })
            .await
            .map_err(mailbox)?
            .map_err(workstation_error)
    }

    /// Tears a workstation down: stops its processes and its actor (whose sandbox is then
    /// destroyed), then makes sure nothing of it is left on the host whatever the actor
    /// managed: every process still in its cgroup tree is killed and the tree removed, its
    /// sandbox work dir and its home volume are deleted. Idempotent, and it needs no disk space
    /// (it only signals, rmdirs and unlinks), so a full disk cannot stop it. An error means
    /// something is left: the caller keeps the hosting record and calls it again later.
    pub async fn remove(&self, ws_id: &str, grace_ms: u64) -> Result<(), ServiceError> {
        let hosted = self.hosted.lock().remove(ws_id);
        if let Some(hosted) = hosted {
            let wait = Duration::from_millis(grace_ms.saturating_add(TEARDOWN_MARGIN_MS));
            let stopped = tokio::time::timeout(wait, async {
                let _ = hosted.addr.send(Shutdown { grace_ms }).await;
                // The sandbox goes when the stopped actor's spawner is dropped; clean up after
                // it, not beside it.
                while hosted.sandbox.strong_count() > 0 {
                    tokio::time::sleep(Duration::from_millis(TEARDOWN_POLL_MS)).await;
                }
            })
            .await;
            if stopped.is_err() {
                warn!(workstation = %ws_id, "the workstation did not stop in time: removing it by force");
            }
        }
        let cgroup = format!("{}/{ws_id}", self.sandbox_host.cgroup_prefix());
        let work = self.sandbox_work_dir.join(ws_id);
        let home = self.homes_dir.join(ws_id);
        let cleaned = tokio::task::spawn_blocking(move || -> Result<(), String> {
            // Kills what is still in the tree (also processes the actor lost track of), removes
            // the groups, then the work dir.
            sandbox::cleanup_stale(&cgroup, &work)
                .map_err(|err| format!("removing the sandbox: {err}"))?;
            sandbox::remove_home(&home).map_err(|err| format!("removing the home volume: {err}"))
        })
        .await
        .map_err(|err| ServiceError::Internal(format!("tearing the workstation down: {err}")))?;
        cleaned.map_err(|err| {
            warn!(workstation = %ws_id, error = %err, "workstation teardown incomplete");
            ServiceError::Internal(format!("tearing workstation {ws_id} down: {err}"))
        })
    }

    /// Stops every workstation (graceful shutdown of the node), each within `grace`.
    pub async fn shutdown(&self, grace: Duration) {
        let all: Vec<(String, Hosted)> = self.hosted.lock().drain().collect();
        let grace_ms = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX);
        let stops = all.into_iter().map(|(id, hosted)| async move {
            let wait = grace + Duration::from_secs(2);
            if tokio::time::timeout(wait, hosted.addr.send(Shutdown { grace_ms }))
                .await
                .is_err()
            {
                warn!(workstation = %id, "workstation did not stop in time");
            }
        });
        futures::future::join_all(stops).await;
    }
}

/// An executor log record in its API form.
pub fn record_json(record: &ExecRecord) -> LogRecord {
    use base64::Engine as _;
    let (data, data_b64) = match std::str::from_utf8(&record.bytes) {
        Ok(text) => (Some(text.to_string()), None),
        Err(_) => (
            None,
            Some(base64::engine::general_purpose::STANDARD.encode(&record.bytes)),
        ),
    };
    LogRecord {
        offset: record.offset,
        len: record.len,
        proc: record.proc.to_string(),
        stream: match record.stream {
            Stream::Stdout => LogStream::Stdout,
            Stream::Stderr => LogStream::Stderr,
        },
        ts: record.ts_ms,
        data,
        data_b64,
    }
}

/// The `reason` of a process its owner stopped for good (TERM or KILL).
pub const REASON_KILLED: &str = "killed";
/// The `reason` of a `never` process after its workstation was re-placed (SPEC, Lifecycle).
pub const REASON_NODE_LOST: &str = "node_lost";
/// The `reason` of a `never` process its node did not start again after an agent restart or
/// a lease loss, within the same placement.
pub const REASON_NODE_RESTARTED: &str = "node_restarted";

/// Why no placement starts `spec` any more, if none does: its owner stopped it
/// ([`REASON_KILLED`]), or it is a `never` process whose first placement is over
/// ([`REASON_NODE_LOST`]). Such a process is `exited` with this reason on every node, hosted,
/// pending or seen from elsewhere.
pub fn not_started_reason(spec: &ProcessSpec) -> Option<&'static str> {
    if spec.killed {
        Some(REASON_KILLED)
    } else if spec.node_lost {
        Some(REASON_NODE_LOST)
    } else {
        None
    }
}

/// A process in its API form, combining the durable spec and the observed status.
pub fn process_json(ws_id: &str, spec: &ProcessSpec, status: Option<&ProcessStatus>) -> Process {
    let (state, exit_code, signal, restarts, reason) = match status {
        Some(status) => (
            match status.state {
                ExecState::Starting => ProcessState::Starting,
                ExecState::Running => ProcessState::Running,
                ExecState::Exited => ProcessState::Exited,
                ExecState::Backoff => ProcessState::Backoff,
                ExecState::CrashLoop => ProcessState::CrashLoop,
            },
            status.exit_code,
            status.signal,
            status.restarts,
            if spec.killed {
                Some(REASON_KILLED.to_string())
            } else {
                status.last_error.clone()
            },
        ),
        // Known to the cluster but not running here: stopped by its owner, a `never` process
        // whose first placement is over, or one that a node restart does not start again.
        None => (
            ProcessState::Exited,
            None,
            None,
            0,
            Some(
                not_started_reason(spec)
                    .unwrap_or(REASON_NODE_RESTARTED)
                    .to_string(),
            ),
        ),
    };
    Process {
        id: spec.id.to_string(),
        workstation: ws_id.to_string(),
        argv: spec.argv.clone(),
        restart: spec.restart,
        state,
        exit_code,
        signal,
        restarts,
        reason,
        created_unix_ms: spec.created_unix_ms,
    }
}

fn mailbox(err: actix::MailboxError) -> ServiceError {
    ServiceError::unavailable(format!("the workstation is not answering: {err}"))
}

fn workstation_error(err: WorkstationError) -> ServiceError {
    match err {
        WorkstationError::UnknownProcess(proc) => {
            ServiceError::not_found("process", &proc.to_string())
        }
        WorkstationError::DuplicateProcess(proc) => {
            ServiceError::Conflict(format!("process {proc} already exists"))
        }
        WorkstationError::NotRunning(proc) => {
            ServiceError::Conflict(format!("process {proc} is not running"))
        }
        WorkstationError::ProcessLimit { max } => ServiceError::RateLimited {
            message: format!("a workstation runs at most {max} processes"),
            retry_after_secs: 5,
        },
        WorkstationError::FollowerLimit { max } => ServiceError::RateLimited {
            message: format!("at most {max} log followers per workstation"),
            retry_after_secs: 5,
        },
        WorkstationError::InvalidSpec(reason) => ServiceError::field("argv", reason),
        WorkstationError::Spawn(err) => ServiceError::field("argv", err),
    }
}

/// Parses a signal name of `?signal=` (`TERM`, `SIGTERM`, `kill`, ...).
pub fn parse_signal(name: &str) -> Result<nix::sys::signal::Signal, ServiceError> {
    use nix::sys::signal::Signal;
    let upper = name.trim().to_ascii_uppercase();
    let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
    match bare {
        "TERM" => Ok(Signal::SIGTERM),
        "KILL" => Ok(Signal::SIGKILL),
        "INT" => Ok(Signal::SIGINT),
        "HUP" => Ok(Signal::SIGHUP),
        "QUIT" => Ok(Signal::SIGQUIT),
        "USR1" => Ok(Signal::SIGUSR1),
        "USR2" => Ok(Signal::SIGUSR2),
        "STOP" => Ok(Signal::SIGSTOP),
        "CONT" => Ok(Signal::SIGCONT),
        _ => Err(ServiceError::field(
            "signal",
            format!("unknown signal `{name}` (TERM, KILL, INT, HUP, QUIT, USR1, USR2, STOP, CONT)"),
        )),
    }
}
