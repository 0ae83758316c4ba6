//! The workstation actor: one per workstation, owner of its processes and its log.
//!
//! The actor is the driver around two pure cores, the [`LogBuffer`] and the
//! [`RestartTracker`]: it spawns processes through the [`Spawner`] seam, reads their pipes on
//! readiness with non-blocking reads of up to 64 KiB made directly into the log's ring (the
//! kernel's pipe copy is the only copy), pumps log followers, and applies restart decisions.
//!
//! A run's end is recorded once its main process has exited *and* both pipes reached end of
//! file (or `exit_drain_ms` passed, when a leftover daemon keeps them open), so that followers
//! see every byte of the run before its exit event.

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd as _, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use nix::sys::signal::Signal;
use tokio::net::unix::pipe;
use tokio::sync::{mpsc, oneshot};

use crate::clock::Clock;
use crate::log_buffer::{LogBuffer, LogRead, Stream};
use crate::process_id::ProcId;
use crate::restart_policy::{RestartDecision, RestartTracker};
use crate::spawner::{ProcessExit, ProcessSpec, ProcessTree, SpawnError, Spawner};
use crate::workstation_follower::{ExitLog, Follower, PumpOutcome};
pub use crate::workstation_limits::WorkstationLimits;
pub use crate::workstation_messages::{
    Follow, ListProcesses, LogEvent, LogFollower, LogRange, ProcessState, ProcessStatus, ReadLogs,
    Shutdown, SignalProcess, StartProcess, StopAll, StopProcess, WorkstationError,
};

/// How long a stop waits for the exit to be recorded after the tree is gone, at most. The
/// exit normally arrives within milliseconds; this only bounds a wait on a kernel that
/// misbehaves.
const STOP_EXIT_WAIT_MS_MAX: u64 = 5_000;
/// How often a stop checks whether the tree has exited during the grace period.
const STOP_POLL_MS: u64 = 10;

/// How many reads of one pipe the actor makes in a row before letting other work (messages,
/// the other pipes, followers) run: 16 × 64 KiB = 1 MiB per turn.
const PIPE_READS_PER_TURN_MAX: usize = 16;

/// The current (or last) run of a process.
#[derive(Debug)]
struct Run {
    serial: u64,
    pid: u32,
    tree: Arc<dyn ProcessTree>,
    started: Instant,
    exit: Option<ProcessExit>,
    pipes_open: u8,
    /// The exit has been recorded; nothing more happens to this run.
    finished: bool,
}

/// A process of the workstation, across its restarts.
#[derive(Debug)]
struct ProcessEntry {
    spec: ProcessSpec,
    tracker: RestartTracker,
    state: ProcessState,
    run: Option<Run>,
    exit_code: Option<i32>,
    signal: Option<i32>,
    started_at_ms: Option<u64>,
    exited_at_ms: Option<u64>,
    last_error: Option<String>,
    stop_requested: bool,
    restart_timer: Option<SpawnHandle>,
    /// Woken when the current run's exit is recorded.
    exit_waiters: Vec<oneshot::Sender<()>>,
}

impl ProcessEntry {
    fn is_active(&self) -> bool {
        matches!(
            self.state,
            ProcessState::Starting | ProcessState::Running | ProcessState::Backoff
        )
    }
}

/// The actor of one workstation. Create it with [`WorkstationActor::new`] and `start()` it.
pub struct WorkstationActor {
    workstation_id: String,
    spawner: Arc<dyn Spawner>,
    clock: Arc<dyn Clock>,
    limits: WorkstationLimits,
    /// Origin of the monotonic milliseconds given to the restart trackers.
    created: Instant,
    log: LogBuffer,
    exits: ExitLog,
    processes: BTreeMap<ProcId, ProcessEntry>,
    followers: Vec<Follower>,
    followers_created_total: u64,
    runs_started_total: u64,
    /// The id the next process started without one gets.
    proc_id_next: u64,
}

impl std::fmt::Debug for WorkstationActor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkstationActor")
            .field("workstation_id", &self.workstation_id)
            .field("log", &self.log)
            .field("processes", &self.processes.len())
            .field("followers", &self.followers.len())
            .finish_non_exhaustive()
    }
}

impl WorkstationActor {
    /// A workstation actor whose log starts at `log_start_offset` (0 for a new workstation;
    /// above anything the previous node can have written, after a re-placement).
    pub fn new(
        workstation_id: impl Into<String>,
        spawner: Arc<dyn Spawner>,
        clock: Arc<dyn Clock>,
        log_start_offset: u64,
        limits: WorkstationLimits,
    ) -> Self {
        let created = clock.now();
        Self {
            workstation_id: workstation_id.into(),
            spawner,
            clock,
            created,
            log: LogBuffer::with_limits(
                limits.log_buffer_bytes_max,
                limits.log_records_max,
                log_start_offset,
            ),
            exits: ExitLog::new(limits.exits_max),
            limits,
            processes: BTreeMap::new(),
            followers: Vec::new(),
            followers_created_total: 0,
            runs_started_total: 0,
            proc_id_next: 1,
        }
    }

    fn monotonic_ms(&self) -> u64 {
        u64::try_from(self.clock.now().duration_since(self.created).as_millis()).unwrap_or(u64::MAX)
    }

    /// Makes room for one more process by forgetting the oldest finished one, if needed.
    fn make_room_for_process(&mut self) -> Result<(), WorkstationError> {
        if self.processes.len() < self.limits.processes_max {
            return Ok(());
        }
        let finished = self
            .processes
            .iter()
            .find(|(_, entry)| !entry.is_active())
            .map(|(proc, _)| *proc);
        match finished {
            Some(proc) => {
                self.forget_process(proc);
                Ok(())
            }
            None => Err(WorkstationError::ProcessLimit {
                max: self.limits.processes_max,
            }),
        }
    }

    /// Forgets a finished process, killing in the background whatever its last run left
    /// behind (nothing may outlive the workstation's knowledge of it).
    fn forget_process(&mut self, proc: ProcId) {
        let Some(entry) = self.processes.remove(&proc) else {
            return;
        };
        if let Some(run) = entry.run {
            actix_rt::task::spawn_blocking(move || {
                if let Err(error) = run.tree.kill() {
                    tracing::warn!(proc = %proc, %error, "cannot clean up after a forgotten process");
                }
            });
        }
    }

    /// Spawns a new run of `proc` and starts capturing its output.
    fn spawn_run(&mut self, proc: ProcId, ctx: &mut Context<Self>) -> Result<(), SpawnError> {
        let Some(entry) = self.processes.get_mut(&proc) else {
            return Ok(());
        };
        entry.state = ProcessState::Starting;
        let label = format!("{}/{}", self.workstation_id, proc);
        let spawned = match self.spawner.spawn(&entry.spec, &label) {
            Ok(spawned) => spawned,
            Err(error) => {
                entry.last_error = Some(error.to_string());
                return Err(error);
            }
        };
        self.runs_started_total += 1;
        let serial = self.runs_started_total;
        tracing::info!(
            workstation = %self.workstation_id,
            proc = %proc,
            pid = spawned.pid,
            restarts = entry.tracker.restarts(),
            "process started"
        );
        entry.state = ProcessState::Running;
        entry.last_error = None;
        entry.started_at_ms = Some(self.clock.unix_ms());
        entry.run = Some(Run {
            serial,
            pid: spawned.pid,
            tree: spawned.tree,
            started: self.clock.now(),
            exit: None,
            pipes_open: 2,
            finished: false,
        });
        self.watch_pipe(spawned.stdout, proc, serial, Stream::Stdout, ctx);
        self.watch_pipe(spawned.stderr, proc, serial, Stream::Stderr, ctx);
        ctx.spawn(
            spawned
                .exit
                .into_actor(self)
                .map(move |result, actor, ctx| actor.on_main_exit(proc, serial, result, ctx)),
        );
        Ok(())
    }

    fn on_main_exit(
        &mut self,
        proc: ProcId,
        serial: u64,
        result: Result<ProcessExit, SpawnError>,
        ctx: &mut Context<Self>,
    ) {
        let drain = Duration::from_millis(self.limits.exit_drain_ms);
        let Some(run) = self.current_run(proc, serial) else {
            return;
        };
        run.tree.main_reaped();
        let exit = result.unwrap_or_else(|error| {
            tracing::warn!(proc = %proc, %error, "lost track of a process's exit");
            ProcessExit {
                code: None,
                signal: None,
            }
        });
        run.exit = Some(exit);
        if run.pipes_open == 0 {
            self.finish_run(proc, serial, ctx);
        } else {
            ctx.run_later(drain, move |actor, ctx| actor.finish_run(proc, serial, ctx));
        }
    }

    fn current_run(&mut self, proc: ProcId, serial: u64) -> Option<&mut Run> {
        self.processes
            .get_mut(&proc)?
            .run
            .as_mut()
            .filter(|run| run.serial == serial && !run.finished)
    }

    /// Records the end of a run and decides what follows it.
    fn finish_run(&mut self, proc: ProcId, serial: u64, ctx: &mut Context<Self>) {
        let now_ms = self.monotonic_ms();
        let now = self.clock.now();
        let ts_ms = self.clock.unix_ms();
        let offset = self.log.end_offset();
        let Some(entry) = self.processes.get_mut(&proc) else {
            return;
        };
        let Some(run) = entry
            .run
            .as_mut()
            .filter(|run| run.serial == serial && !run.finished)
        else {
            return;
        };
        let Some(exit) = run.exit else {
            return;
        };
        run.finished = true;
        let uptime_ms =
            u64::try_from(now.duration_since(run.started).as_millis()).unwrap_or(u64::MAX);
        let restarts = entry.tracker.restarts();
        entry.exit_code = exit.code;
        entry.signal = exit.signal;
        entry.exited_at_ms = Some(ts_ms);
        let decision = if entry.stop_requested {
            RestartDecision::Exited
        } else {
            entry.tracker.on_exit(exit.success(), uptime_ms, now_ms)
        };
        tracing::info!(
            workstation = %self.workstation_id,
            proc = %proc,
            code = ?exit.code,
            signal = ?exit.signal,
            uptime_ms,
            ?decision,
            "process exited"
        );
        let old_tree = Arc::clone(&run.tree);
        self.exits.push(
            offset,
            LogEvent::Exit {
                proc,
                offset,
                code: exit.code,
                signal: exit.signal,
                restarts,
                ts_ms,
            },
        );
        for waiter in entry.exit_waiters.drain(..) {
            let _ = waiter.send(());
        }
        match decision {
            RestartDecision::Exited => entry.state = ProcessState::Exited,
            RestartDecision::CrashLoop => entry.state = ProcessState::CrashLoop,
            RestartDecision::RestartAfter { delay_ms } => {
                entry.state = ProcessState::Backoff;
                // Like a cgroup-wide stop: what the previous run left behind must not pile up
                // across restarts.
                actix_rt::task::spawn_blocking(move || {
                    if let Err(error) = old_tree.kill() {
                        tracing::warn!(%error, "cannot clean up after a process before its restart");
                    }
                });
                let timer = ctx.run_later(Duration::from_millis(delay_ms), move |actor, ctx| {
                    actor.restart(proc, ctx)
                });
                entry.restart_timer = Some(timer);
            }
        }
        self.pump_followers(ctx);
    }

    fn restart(&mut self, proc: ProcId, ctx: &mut Context<Self>) {
        let Some(entry) = self.processes.get_mut(&proc) else {
            return;
        };
        entry.restart_timer = None;
        if entry.state != ProcessState::Backoff || entry.stop_requested {
            return;
        }
        if let Err(error) = self.spawn_run(proc, ctx) {
            tracing::warn!(proc = %proc, %error, "restart failed");
            let now_ms = self.monotonic_ms();
            let Some(entry) = self.processes.get_mut(&proc) else {
                return;
            };
            // A failed start counts as an immediate failure, so a program that vanished ends
            // in crash_loop instead of being retried forever.
            match entry.tracker.on_exit(false, 0, now_ms) {
                RestartDecision::RestartAfter { delay_ms } => {
                    entry.state = ProcessState::Backoff;
                    let timer = ctx
                        .run_later(Duration::from_millis(delay_ms), move |actor, ctx| {
                            actor.restart(proc, ctx)
                        });
                    entry.restart_timer = Some(timer);
                }
                RestartDecision::CrashLoop => entry.state = ProcessState::CrashLoop,
                RestartDecision::Exited => entry.state = ProcessState::Exited,
            }
        }
    }

    /// Starts capturing one pipe of a run.
    fn watch_pipe(
        &mut self,
        fd: OwnedFd,
        proc: ProcId,
        serial: u64,
        stream: Stream,
        ctx: &mut Context<Self>,
    ) {
        if self.limits.pipe_buffer_bytes > 0 {
            // Best effort: a larger pipe lets the writer run ahead while the actor is busy, so
            // both sides wake up less often. The kernel caps it (fs.pipe-max-size) and may
            // refuse it once the user's pipe memory is spent; the default size still works.
            let size = i32::try_from(self.limits.pipe_buffer_bytes).unwrap_or(i32::MAX);
            if let Err(error) =
                nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_SETPIPE_SZ(size))
            {
                tracing::debug!(proc = %proc, %error, "pipe size unchanged");
            }
        }
        match pipe::Receiver::from_owned_fd(fd) {
            Ok(receiver) => self.await_readable(receiver, proc, serial, stream, ctx),
            Err(error) => {
                tracing::warn!(proc = %proc, %error, "cannot read a process's pipe");
                self.on_pipe_end(proc, serial, ctx);
            }
        }
    }

    fn await_readable(
        &mut self,
        receiver: pipe::Receiver,
        proc: ProcId,
        serial: u64,
        stream: Stream,
        ctx: &mut Context<Self>,
    ) {
        ctx.spawn(
            async move {
                let ready = receiver.readable().await;
                (receiver, ready)
            }
            .into_actor(self)
            .map(move |(receiver, ready), actor, ctx| {
                actor.on_pipe_readable(receiver, ready, proc, serial, stream, ctx)
            }),
        );
    }

    /// Reads what the pipe holds straight into the log (no intermediate buffer), then waits
    /// for more, or records the pipe's end.
    fn on_pipe_readable(
        &mut self,
        receiver: pipe::Receiver,
        ready: std::io::Result<()>,
        proc: ProcId,
        serial: u64,
        stream: Stream,
        ctx: &mut Context<Self>,
    ) {
        let mut open = ready.is_ok();
        let mut appended = false;
        if open {
            let ts_ms = self.clock.unix_ms();
            let read_bytes = self.limits.pipe_read_bytes.max(1);
            for _ in 0..PIPE_READS_PER_TURN_MAX {
                let read = self
                    .log
                    .append_from(proc, stream, ts_ms, read_bytes, |slot| {
                        receiver.try_read(slot)
                    });
                match read {
                    Ok(0) => {
                        open = false;
                        break;
                    }
                    Ok(_) => appended = true,
                    Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(error) => {
                        tracing::warn!(proc = %proc, %error, "reading a process's pipe failed");
                        open = false;
                        break;
                    }
                }
            }
        }
        if appended {
            self.pump_followers(ctx);
        }
        if open {
            self.await_readable(receiver, proc, serial, stream, ctx);
        } else {
            self.on_pipe_end(proc, serial, ctx);
        }
    }

    fn on_pipe_end(&mut self, proc: ProcId, serial: u64, ctx: &mut Context<Self>) {
        let Some(run) = self.current_run(proc, serial) else {
            return;
        };
        run.pipes_open = run.pipes_open.saturating_sub(1);
        if run.pipes_open == 0 && run.exit.is_some() {
            self.finish_run(proc, serial, ctx);
        }
    }

    fn pump_followers(&mut self, ctx: &mut Context<Self>) {
        let event_bytes_max = self.limits.follower_event_bytes_max;
        let mut index = 0;
        while index < self.followers.len() {
            let follower = &mut self.followers[index];
            if follower.waiting_for_room {
                index += 1;
                continue;
            }
            match follower.pump(&self.log, &self.exits, event_bytes_max) {
                PumpOutcome::CaughtUp => index += 1,
                PumpOutcome::Closed => {
                    self.followers.swap_remove(index);
                }
                PumpOutcome::QueueFull => {
                    follower.waiting_for_room = true;
                    let sender = follower.sender.clone();
                    let follower_id = follower.id;
                    ctx.spawn(
                        async move {
                            // The permit is dropped at once: this only waits for room.
                            let _ = sender.reserve().await;
                        }
                        .into_actor(self)
                        .map(move |(), actor, ctx| {
                            if let Some(follower) =
                                actor.followers.iter_mut().find(|f| f.id == follower_id)
                            {
                                follower.waiting_for_room = false;
                            }
                            actor.pump_followers(ctx);
                        }),
                    );
                    index += 1;
                }
            }
        }
    }

    /// Begins stopping `proc` and returns what remains to be awaited: the grace period, the
    /// kill of the whole tree, and the recording of the exit.
    fn begin_stop(
        &mut self,
        proc: ProcId,
        grace_ms: u64,
        ctx: &mut Context<Self>,
    ) -> Result<impl std::future::Future<Output = ()>, WorkstationError> {
        let entry = self
            .processes
            .get_mut(&proc)
            .ok_or(WorkstationError::UnknownProcess(proc))?;
        entry.stop_requested = true;
        if let Some(timer) = entry.restart_timer.take() {
            ctx.cancel_future(timer);
        }
        if entry.state == ProcessState::Backoff {
            entry.state = ProcessState::Exited;
        }
        let tree = entry.run.as_ref().map(|run| Arc::clone(&run.tree));
        let exit_recorded = match entry.run.as_ref() {
            Some(run) if !run.finished => {
                let (sender, receiver) = oneshot::channel();
                entry.exit_waiters.push(sender);
                Some(receiver)
            }
            _ => None,
        };
        tracing::info!(workstation = %self.workstation_id, proc = %proc, grace_ms, "stopping process");
        Ok(async move {
            if let Some(tree) = tree {
                let killed =
                    actix_rt::task::spawn_blocking(move || terminate_tree(&*tree, grace_ms)).await;
                match killed {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => {
                        tracing::warn!(proc = %proc, %error, "stop could not kill every process")
                    }
                    Err(error) => tracing::warn!(proc = %proc, %error, "stop task failed"),
                }
            }
            if let Some(receiver) = exit_recorded {
                let _ =
                    tokio::time::timeout(Duration::from_millis(STOP_EXIT_WAIT_MS_MAX), receiver)
                        .await;
            }
        })
    }

    fn begin_stop_all(
        &mut self,
        grace_ms: u64,
        ctx: &mut Context<Self>,
    ) -> impl std::future::Future<Output = ()> {
        let procs: Vec<ProcId> = self.processes.keys().copied().collect();
        let stops: Vec<_> = procs
            .into_iter()
            .filter_map(|proc| self.begin_stop(proc, grace_ms, ctx).ok())
            .collect();
        async move {
            futures::future::join_all(stops).await;
        }
    }

    fn status(&self, proc: ProcId, entry: &ProcessEntry) -> ProcessStatus {
        ProcessStatus {
            id: proc,
            argv: entry.spec.argv.clone(),
            restart: entry.tracker.policy(),
            state: entry.state,
            pid: entry
                .run
                .as_ref()
                .filter(|run| run.exit.is_none())
                .map(|run| run.pid),
            exit_code: entry.exit_code,
            signal: entry.signal,
            restarts: entry.tracker.restarts(),
            started_at_ms: entry.started_at_ms,
            exited_at_ms: entry.exited_at_ms,
            last_error: entry.last_error.clone(),
        }
    }
}

/// SIGTERM to the tree, up to `grace_ms` for it to exit, then SIGKILL to whatever is left.
/// Blocking: runs on the blocking pool.
fn terminate_tree(tree: &dyn ProcessTree, grace_ms: u64) -> Result<(), SpawnError> {
    tree.signal(Signal::SIGTERM)?;
    // Counted polls instead of a deadline: time is read only through the clock module, and
    // a grace period needs no more precision than this.
    for _ in 0..grace_ms.div_ceil(STOP_POLL_MS) {
        if !tree.is_alive()? {
            break;
        }
        std::thread::sleep(Duration::from_millis(STOP_POLL_MS));
    }
    tree.kill().map(|_| ())
}

impl Actor for WorkstationActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(self.limits.mailbox_messages_max);
        tracing::info!(workstation = %self.workstation_id, log_start = self.log.start_offset(), "workstation actor started");
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        // Normally `Shutdown` already stopped everything; this is the last line of defence
        // when the actor is stopped otherwise: nothing may outlive it.
        for (proc, entry) in &self.processes {
            if let Some(run) = &entry.run {
                if let Err(error) = run.tree.kill() {
                    tracing::warn!(proc = %proc, %error, "cannot kill a process tree on actor stop");
                }
            }
        }
        tracing::info!(workstation = %self.workstation_id, "workstation actor stopped");
    }
}

impl Handler<StartProcess> for WorkstationActor {
    type Result = Result<ProcId, WorkstationError>;

    fn handle(&mut self, message: StartProcess, ctx: &mut Self::Context) -> Self::Result {
        if message.spec.argv.is_empty() {
            return Err(WorkstationError::InvalidSpec("argv is empty".to_owned()));
        }
        let proc = match message.proc {
            Some(proc)
                if self
                    .processes
                    .get(&proc)
                    .is_some_and(ProcessEntry::is_active) =>
            {
                return Err(WorkstationError::DuplicateProcess(proc));
            }
            Some(proc) => proc,
            None => ProcId(self.proc_id_next),
        };
        // Ids are never reused within a workstation, so that log records and exit events
        // always name one process.
        self.proc_id_next = self.proc_id_next.max(proc.0.saturating_add(1));
        self.forget_process(proc);
        self.make_room_for_process()?;
        self.processes.insert(
            proc,
            ProcessEntry {
                spec: message.spec,
                tracker: RestartTracker::new(message.restart, self.limits.restart),
                state: ProcessState::Starting,
                run: None,
                exit_code: None,
                signal: None,
                started_at_ms: None,
                exited_at_ms: None,
                last_error: None,
                stop_requested: false,
                restart_timer: None,
                exit_waiters: Vec::new(),
            },
        );
        if let Err(error) = self.spawn_run(proc, ctx) {
            self.processes.remove(&proc);
            return Err(error.into());
        }
        Ok(proc)
    }
}

impl Handler<StopProcess> for WorkstationActor {
    type Result = ResponseActFuture<Self, Result<(), WorkstationError>>;

    fn handle(&mut self, message: StopProcess, ctx: &mut Self::Context) -> Self::Result {
        match self.begin_stop(message.proc, message.grace_ms, ctx) {
            Ok(stopping) => Box::pin(
                async move {
                    stopping.await;
                    Ok(())
                }
                .into_actor(self),
            ),
            Err(error) => Box::pin(fut::ready(Err(error))),
        }
    }
}

impl Handler<SignalProcess> for WorkstationActor {
    type Result = Result<usize, WorkstationError>;

    fn handle(&mut self, message: SignalProcess, _ctx: &mut Self::Context) -> Self::Result {
        let entry = self
            .processes
            .get(&message.proc)
            .ok_or(WorkstationError::UnknownProcess(message.proc))?;
        let run = entry
            .run
            .as_ref()
            .filter(|run| run.exit.is_none())
            .ok_or(WorkstationError::NotRunning(message.proc))?;
        Ok(run.tree.signal(message.signal)?)
    }
}

impl Handler<ListProcesses> for WorkstationActor {
    type Result = MessageResult<ListProcesses>;

    fn handle(&mut self, _message: ListProcesses, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult(
            self.processes
                .iter()
                .map(|(proc, entry)| self.status(*proc, entry))
                .collect(),
        )
    }
}

impl Handler<ReadLogs> for WorkstationActor {
    type Result = MessageResult<ReadLogs>;

    fn handle(&mut self, message: ReadLogs, _ctx: &mut Self::Context) -> Self::Result {
        let limit_bytes = message.limit_bytes.min(self.limits.read_bytes_max);
        let read: LogRead = self.log.read(message.from, limit_bytes);
        MessageResult(read)
    }
}

impl Handler<LogRange> for WorkstationActor {
    type Result = MessageResult<LogRange>;

    fn handle(&mut self, _message: LogRange, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult((self.log.start_offset(), self.log.end_offset()))
    }
}

impl Handler<Follow> for WorkstationActor {
    type Result = Result<LogFollower, WorkstationError>;

    fn handle(&mut self, message: Follow, ctx: &mut Self::Context) -> Self::Result {
        self.followers
            .retain(|follower| !follower.sender.is_closed());
        if self.followers.len() >= self.limits.followers_max {
            return Err(WorkstationError::FollowerLimit {
                max: self.limits.followers_max,
            });
        }
        let (sender, receiver) = mpsc::channel(self.limits.follower_queue_events_max.max(1));
        self.followers_created_total += 1;
        let offset = message.from.min(self.log.end_offset());
        self.followers.push(Follower {
            id: self.followers_created_total,
            sender,
            offset,
            exit_seq: self.exits.seq_from_offset(message.from),
            waiting_for_room: false,
        });
        self.pump_followers(ctx);
        Ok(receiver)
    }
}

impl Handler<StopAll> for WorkstationActor {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, message: StopAll, ctx: &mut Self::Context) -> Self::Result {
        Box::pin(self.begin_stop_all(message.grace_ms, ctx).into_actor(self))
    }
}

impl Handler<Shutdown> for WorkstationActor {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, message: Shutdown, ctx: &mut Self::Context) -> Self::Result {
        let stopping = self.begin_stop_all(message.grace_ms, ctx);
        Box::pin(stopping.into_actor(self).map(|(), actor, ctx| {
            actor.followers.clear();
            ctx.stop();
        }))
    }
}
