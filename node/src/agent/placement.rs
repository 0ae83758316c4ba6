//! Workstations placed by the leader's scheduler (Raft `CreateWorkstation`), hosted by the node
//! they are placed on. The node's store keeps the hosting record (processes it started, the
//! log epoch); [`reconcile`] makes this node's hosted set follow Raft's placements. It is the
//! thin driver of the pure planner ([`super::reconcile_plan`], where every decision is made):
//! it reads the applied state, the hosting records and the fence, and carries out the plan's
//! actions (a new placement here is recorded and its actor started; a workstation deleted
//! from Raft or placed elsewhere is torn down on a task of its own, [`super::teardown`]).
//! Nothing is started while the node's lease is not held ([`super::fencing`]); [`resume`]
//! brings back the hosted placements that are still current once it is.
//!
//! Observed state: [`observe_hosted`] is what this node reports about its workstations in each
//! heartbeat (state, processes, CPU and memory); [`observe_remote`] asks the leader's soft
//! state about workstations hosted elsewhere, and [`remote_view`] turns that into the API's
//! view on a node that does not host them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use shoal_raft::model::Workstation as RaftWorkstation;
use tracing::{debug, info, warn};

use shoal_raft::model::WorkstationId;
use shoal_raft::soft_state::{ProcessObserved, WorkstationUsage};

use super::model::{ProcessSpec, WorkstationRecord};
use super::reconcile_plan::{plan, plan_resume, resumed_processes, Action, FenceView, Resume};
use super::Agent;
use crate::api_types::{Process, ProcessState, Workstation, WorkstationState};

/// The API's name of a Raft node id.
pub fn node_name(id: u64) -> String {
    format!("node-{id}")
}

/// The first log epoch whose offsets (`epoch << LOG_EPOCH_SHIFT`) are at or above `floor`: a
/// re-placed workstation's log continues above anything its old node can have written.
pub fn log_epoch_above(floor: u64) -> u64 {
    if floor == 0 {
        0
    } else {
        (floor >> super::host::LOG_EPOCH_SHIFT).saturating_add(1)
    }
}

/// The hosting record of a Raft workstation placed on `node`. Whether a process was stopped
/// (`killed`) or is a `never` process lost with an earlier placement (`node_lost`) comes from
/// the committed state, so every node reports the same.
pub fn record_of(ws: &RaftWorkstation, node: &str) -> WorkstationRecord {
    let processes: BTreeMap<u64, ProcessSpec> = ws
        .processes
        .values()
        .map(|process| {
            (
                process.id.0,
                ProcessSpec {
                    id: process.id.0,
                    argv: process.argv.clone(),
                    env: process.env.clone(),
                    cwd: process.cwd.clone(),
                    restart: crate::convert::restart_from_raft(process.restart),
                    created_unix_ms: process.created_ms,
                    killed: process.stopped.is_some(),
                    node_lost: process.lost_with_its_node(ws.generation),
                },
            )
        })
        .collect();
    WorkstationRecord {
        id: ws.id.to_string(),
        name: (!ws.name.is_empty()).then(|| ws.name.clone()),
        tenant: ws.tenant.clone(),
        node: node.to_string(),
        generation: ws.generation,
        cpu_millis: ws.spec.reservation.cpu_millis,
        memory_bytes: ws.spec.reservation.memory_bytes,
        cpu_limit_millis: ws.spec.limit.cpu_limit_millis,
        memory_limit_bytes: ws.spec.limit.memory_limit_bytes,
        network: ws.spec.network.clone(),
        created_unix_ms: ws.created_ms,
        next_process_id: ws.next_process_id,
        processes,
        log_epoch: log_epoch_above(ws.log_offset_floor),
    }
}

/// What failed while reconciling: the workstation, the process (if it was one) and why.
pub type Failure = (String, Option<u64>, crate::service::ServiceError);

/// What the fence allows now, for the planner.
fn fence_view(agent: &Agent) -> FenceView {
    if agent.fence.may_run() {
        FenceView::MayRun
    } else {
        FenceView::Forbidden
    }
}

/// Makes the workstations hosted here follow Raft: carries out one [`plan`] (starts the
/// placements new on this node and their desired processes, follows resizes, carries out
/// committed stops, tears down what was deleted or placed elsewhere). Teardowns run on tasks
/// of their own ([`super::teardown`]); this waits for the ones of this plan with no lock
/// held, so that a caller (a delete, a leave, a node back from `down`) sees what left this
/// node gone. Serialised by the agent's reconcile lock (the loop and the API handlers both
/// call it).
pub async fn reconcile(agent: &Agent) -> Vec<Failure> {
    let (failures, teardowns) = reconcile_once(agent).await;
    super::teardown::wait_attempts(teardowns).await;
    failures
}

/// One plan carried out under the reconcile lock; answers the failures and the teardowns it
/// started (or found running), which it does not wait for.
async fn reconcile_once(agent: &Agent) -> (Vec<Failure>, Vec<watch::Receiver<u64>>) {
    let _serialised = agent.reconcile_lock.lock().await;
    let own = agent.raft.id();
    let hosted = agent.store.read(|model| model.workstations.clone());
    let fence = fence_view(agent);
    let actions = agent
        .raft
        .read(|state| plan(&state.workstations, own, &hosted, fence));
    if fence == FenceView::Forbidden {
        let placed = agent.raft.read(|state| {
            state
                .workstations
                .values()
                .filter(|ws| ws.node == Some(own))
                .count()
        });
        if placed > 0 {
            debug!(placed, "lease not held: starting nothing until it is");
        }
    }
    let mut failures: Vec<Failure> = Vec::new();
    let mut teardowns = Vec::new();
    for action in actions {
        match action {
            Action::TearDown {
                id,
                generation,
                why,
            } => {
                if !agent.teardowns.is_running(&id) {
                    info!(workstation = %id, generation, why = ?why, "placement left this node: tearing it down");
                }
                teardowns.extend(agent.teardowns.start(&id, generation));
            }
            Action::CarryOutStops {
                id,
                generation,
                stops,
            } => carry_out_stops(agent, &id, generation, &stops),
            Action::ApplyLimits { id, sizing } => {
                // A refusal (memory below usage) keeps the old limit and is tried again next
                // time.
                if let Err(err) = agent.host.apply_limits(agent, &id, sizing).await {
                    warn!(workstation = %id, error = %err, "could not apply a resize");
                }
            }
            Action::AddProcesses {
                id,
                generation,
                processes,
                start,
            } => add_processes(agent, &id, generation, &processes, &start, &mut failures).await,
            Action::Start { record, start } => {
                start_placement(agent, record, &start, &mut failures).await;
            }
        }
    }
    (failures, teardowns)
}

/// Records desired processes new to a hosted current placement (a process stopped before this
/// node saw it is recorded, not started) and starts those its generation starts.
async fn add_processes(
    agent: &Agent,
    id: &str,
    generation: u64,
    processes: &[ProcessSpec],
    start: &[u64],
    failures: &mut Vec<Failure>,
) {
    let recorded = agent.store.write(|model| {
        if let Some(record) = model
            .workstations
            .get_mut(id)
            .filter(|record| record.generation == generation)
        {
            for spec in processes {
                record.processes.insert(spec.id, spec.clone());
                record.next_process_id = record.next_process_id.max(spec.id.saturating_add(1));
            }
        }
        Ok(())
    });
    if let Err(err) = recorded {
        warn!(workstation = %id, error = %err, "could not record new processes: starting them anyway");
    }
    for spec in processes.iter().filter(|spec| start.contains(&spec.id)) {
        if let Err(err) = agent.host.start_process(id, spec).await {
            warn!(workstation = %id, proc = spec.id, error = %err, "could not start process");
            failures.push((id.to_string(), Some(spec.id), err));
        }
    }
}

/// Starts a placement new on this node: its log floor committed first when it starts in an
/// epoch above 0, then its hosting record, its actor (only while the fence lets it run, see
/// [`super::fencing::FenceHandle::start_gated`]) and the processes of `start`.
async fn start_placement(
    agent: &Agent,
    record: WorkstationRecord,
    start: &[u64],
    failures: &mut Vec<Failure>,
) {
    let id = record.id.clone();
    // A re-placed generation starts in an epoch above its floor; that epoch is committed as
    // the floor's high-water mark first, so that a further re-placement goes above it (epoch
    // 0, a first placement, is below every re-placement's floor already). Not committed: not
    // started; the next reconcile tries again.
    if record.log_epoch > 0
        && !commit_log_floor(agent, &id, record.generation, record.log_epoch).await
    {
        return;
    }
    if !agent.fence.may_run() {
        // The lease ran out meanwhile: the reconcile after the renewal's resume starts it.
        info!(workstation = %id, "lease ran out before the start: starting it once renewed");
        return;
    }
    let inserted = agent.store.write(|model| {
        model.workstations.insert(id.clone(), record.clone());
        Ok(())
    });
    if let Err(err) = inserted {
        warn!(workstation = %id, error = %err, "could not record a placement");
        failures.push((id, None, err));
        return;
    }
    match agent.fence.start_gated(|| agent.host.ensure(&record)).await {
        // Fenced between the check and the start: the record stays, and the resume after the
        // next renewal brings it back in a new epoch.
        None => {
            info!(workstation = %id, "lease ran out before the start: resumed once renewed");
            return;
        }
        Some(Err(err)) => {
            warn!(workstation = %id, error = %err, "could not start a placed workstation");
            let _ = agent.store.write(|model| {
                model.workstations.remove(&id);
                Ok(())
            });
            failures.push((id, None, err));
            return;
        }
        Some(Ok(())) => {}
    }
    for proc_id in start {
        let Some(spec) = record.processes.get(proc_id) else {
            continue;
        };
        if let Err(err) = agent.host.start_process(&id, spec).await {
            warn!(workstation = %id, proc = spec.id, error = %err, "could not start process");
        }
    }
    info!(workstation = %id, generation = record.generation, "placed workstation started here");
}

/// Carries out stops committed in Raft (`StopProcess`) on a workstation hosted here: the
/// processes not yet marked in the hosting record are marked there and stopped with the
/// committed signal. The API's kill signals the host directly once the stop is committed;
/// this catches a signal that did not arrive (the host unreachable for a moment, a race with
/// the host's first start of the process). Safe without the lease: it only stops.
fn carry_out_stops(agent: &Agent, id: &str, generation: u64, stops: &[(u64, bool)]) {
    let newly: Result<Vec<(u64, bool)>, _> = agent.store.write(|model| {
        let Some(record) = model
            .workstations
            .get_mut(id)
            .filter(|record| record.generation == generation)
        else {
            return Ok(Vec::new());
        };
        let mut newly = Vec::new();
        for (proc_id, kill) in stops {
            if let Some(spec) = record.processes.get_mut(proc_id) {
                if !spec.killed {
                    spec.killed = true;
                    newly.push((*proc_id, *kill));
                }
            }
        }
        Ok(newly)
    });
    match newly {
        Ok(newly) => {
            for (proc_id, kill) in newly {
                info!(workstation = %id, proc = proc_id, kill, "stop committed in Raft: stopping the process here");
                agent.host.stop_process_detached(id, proc_id, kill);
            }
        }
        Err(err) => {
            // The next reconcile tries again; meanwhile the process is not started again
            // (starts read the committed state) and the API reads the stop from Raft.
            warn!(workstation = %id, error = %err, "could not record a committed stop");
        }
    }
}

/// The committed placements on this node: workstation id → its current generation.
fn current_placements(agent: &Agent) -> BTreeMap<String, u64> {
    let own = agent.raft.id();
    agent.raft.read(|state| {
        state
            .workstations
            .values()
            .filter(|ws| ws.node == Some(own))
            .map(|ws| (ws.id.to_string(), ws.generation))
            .collect()
    })
}

/// Ids of hosted workstations whose generation is not the committed placement on this node.
pub fn stale_hosted(agent: &Agent) -> Vec<String> {
    let current = current_placements(agent);
    agent.store.read(|model| {
        model
            .workstations
            .values()
            .filter(|ws| ws.id.parse::<WorkstationId>().is_ok())
            .filter(|ws| current.get(&ws.id) != Some(&ws.generation))
            .map(|ws| ws.id.clone())
            .collect()
    })
}

/// How long one resume waits for a log floor to commit (the fence loop awaits the resume);
/// what does not commit in time is retried by [`resume_retry_loop`].
const LOG_FLOOR_COMMIT_TIMEOUT: Duration = Duration::from_secs(2);
/// First and largest pause between attempts to resume workstations whose log floor did not
/// commit.
const RESUME_RETRY_MS_MIN: u64 = 250;
const RESUME_RETRY_MS_MAX: u64 = 5_000;

/// The first log offset above local log epoch `epoch` (epoch `e` writes offsets in
/// `[e << LOG_EPOCH_SHIFT, (e + 1) << LOG_EPOCH_SHIFT)`): the floor a node commits before it
/// starts a workstation's actor in `epoch`.
pub fn log_floor_above_epoch(epoch: u64) -> u64 {
    epoch
        .saturating_add(1)
        .saturating_mul(1u64 << super::host::LOG_EPOCH_SHIFT)
}

/// Brings back, after the lease was (re)gained, every hosted placement whose generation is
/// still current in the committed state ([`plan_resume`]): a new log epoch (offsets never go
/// back), its sandbox and actor, and its processes whose restart policy asks for it
/// ([`resumed_processes`]: `never` ones stay exited, as after a node restart). Then one
/// reconcile stops what moved and starts what is new. Runs on a task of its own (the fence
/// loop never waits for it).
///
/// The new epoch is local to this node, so before starting in it the node commits
/// `RaiseLogFloor` (the first offset above that epoch) through Raft: a later re-placement by
/// a leader that never heard this node's offset reports still continues above it. A
/// workstation whose floor does not commit is not started; [`resume_retry_loop`] tries again
/// while the lease is held.
pub async fn resume(agent: Arc<Agent>) {
    if agent.shutting_down.load(Ordering::SeqCst) {
        return;
    }
    let unfinished = resume_current(&agent).await;
    if unfinished > 0 {
        tokio::spawn(resume_retry_loop(Arc::clone(&agent)));
    }
    let _ = reconcile_once(&agent).await;
}

/// Resumes again, backing off up to [`RESUME_RETRY_MS_MAX`], until every current placement
/// hosted here runs, the lease is lost (the next resume takes over) or the agent stops.
async fn resume_retry_loop(agent: Arc<Agent>) {
    let mut retry_ms = RESUME_RETRY_MS_MIN;
    loop {
        tokio::time::sleep(Duration::from_millis(retry_ms)).await;
        if agent.shutting_down.load(Ordering::SeqCst) || !agent.fence.may_run() {
            return;
        }
        let unfinished = resume_current(&agent).await;
        if unfinished == 0 {
            let _ = reconcile_once(&agent).await;
            return;
        }
        debug!(
            unfinished,
            retry_in_ms = retry_ms,
            "log floors not committed yet"
        );
        retry_ms = retry_ms.saturating_mul(2).min(RESUME_RETRY_MS_MAX);
    }
}

/// What [`plan_resume`] says now, reading the host for which actors run.
async fn resumes_now(agent: &Agent) -> Vec<Resume> {
    let own = agent.raft.id();
    let hosted = agent.store.read(|model| model.workstations.clone());
    let mut running = BTreeSet::new();
    for id in hosted.keys() {
        if agent.host.state(id).await.0 == WorkstationState::Running {
            running.insert(id.clone());
        }
    }
    let fence = fence_view(agent);
    agent
        .raft
        .read(|state| plan_resume(&state.workstations, own, &hosted, &running, fence))
}

/// One resume pass: commits each stopped current placement's next log floor, then starts the
/// committed ones in that epoch. Answers how many were left stopped because their floor did
/// not commit.
async fn resume_current(agent: &Agent) -> usize {
    let candidates = {
        let _serialised = agent.reconcile_lock.lock().await;
        resumes_now(agent).await
    };
    if candidates.is_empty() {
        return 0;
    }
    // The floors, committed without the lock held (Raft round trips), all at once.
    let committed: Vec<bool> =
        futures::future::join_all(candidates.iter().map(|resume| {
            commit_log_floor(agent, &resume.id, resume.generation, resume.log_epoch)
        }))
        .await;
    let _serialised = agent.reconcile_lock.lock().await;
    // Moved meanwhile (reconcile tears it down), started by another pass, or its epoch used:
    // only what the plan still says, in the epoch whose floor was committed.
    let still = resumes_now(agent).await;
    let mut unfinished = 0;
    for (resume, committed) in candidates.into_iter().zip(committed) {
        if !committed {
            unfinished += 1;
            continue;
        }
        if !still.contains(&resume) {
            continue;
        }
        let Resume {
            id,
            generation,
            log_epoch: epoch,
        } = resume;
        let record = agent.store.write(|model| {
            let record = model.workstations.get_mut(&id).filter(|record| {
                record.generation == generation && record.log_epoch.saturating_add(1) == epoch
            });
            Ok(record.map(|record| {
                record.log_epoch = epoch;
                record.clone()
            }))
        });
        let Ok(Some(record)) = record else {
            continue;
        };
        match agent.fence.start_gated(|| agent.host.ensure(&record)).await {
            None => {
                debug!(workstation = %id, "lease ran out before the resume");
                continue;
            }
            Some(Err(err)) => {
                warn!(workstation = %id, error = %err, "could not resume workstation");
                continue;
            }
            Some(Ok(())) => {}
        }
        // Stops are read from the committed state too: one applied since the last reconcile
        // may not be in the hosting record yet.
        let restarted = id.parse::<WorkstationId>().ok().map_or_else(
            || resumed_processes(&record, None),
            |ws_id| {
                agent
                    .raft
                    .read(|state| resumed_processes(&record, state.workstations.get(&ws_id)))
            },
        );
        for proc_id in restarted {
            let Some(spec) = record.processes.get(&proc_id) else {
                continue;
            };
            if let Err(err) = agent.host.start_process(&id, spec).await {
                warn!(workstation = %id, proc = spec.id, error = %err, "could not restart process");
            }
        }
        info!(workstation = %id, generation = record.generation, log_epoch = epoch, "workstation resumed");
    }
    unfinished
}

/// Commits `RaiseLogFloor` for a workstation about to run in local log `epoch` (bounded by
/// [`LOG_FLOOR_COMMIT_TIMEOUT`]); true once it is applied.
async fn commit_log_floor(agent: &Agent, id: &str, generation: u64, epoch: u64) -> bool {
    let Ok(workstation) = id.parse::<WorkstationId>() else {
        return false;
    };
    let floor = log_floor_above_epoch(epoch);
    let action = shoal_raft::Action::RaiseLogFloor {
        workstation,
        generation,
        floor,
    };
    let actor = format!("node-{}", agent.raft.id());
    match tokio::time::timeout(LOG_FLOOR_COMMIT_TIMEOUT, agent.propose(&actor, action)).await {
        Ok(Ok(_)) => {
            debug!(workstation = %id, generation, log_epoch = epoch, floor, "log floor committed");
            true
        }
        Ok(Err(err)) => {
            warn!(workstation = %id, generation, log_epoch = epoch, error = %err, "log floor not committed: not resuming yet");
            false
        }
        Err(_) => {
            warn!(workstation = %id, generation, log_epoch = epoch, timeout_ms = LOG_FLOOR_COMMIT_TIMEOUT.as_millis() as u64, "log floor not committed in time: not resuming yet");
            false
        }
    }
}

/// Observations of hosted workstations, kept between heartbeats (CPU is a rate: it needs the
/// previous sample) and for this node's own API views.
#[derive(Debug, Default)]
pub struct ObservedCache {
    last: parking_lot::Mutex<BTreeMap<String, (CpuSample, WorkstationUsage)>>,
}

impl ObservedCache {
    /// The last observations, for a heartbeat that could not wait for new ones.
    pub fn snapshot(&self) -> Vec<WorkstationUsage> {
        self.last
            .lock()
            .values()
            .map(|(_, usage)| usage.clone())
            .collect()
    }
}

/// A workstation cgroup's CPU time at a monotonic time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuSample {
    /// CPU time used so far, nanoseconds.
    pub cpu_ns: u64,
    /// When it was read ([`super::fencing::monotonic_ms`]).
    pub at_ms: u64,
}

/// Average CPU use in millicores between two samples (0 without a previous sample, across a
/// counter reset, or when no time passed).
pub fn cpu_millis_between(previous: Option<CpuSample>, now: CpuSample) -> u64 {
    let Some(previous) = previous else {
        return 0;
    };
    let elapsed_ms = now.at_ms.saturating_sub(previous.at_ms);
    if elapsed_ms == 0 {
        return 0;
    }
    // ns of CPU per ms of wall time / 1000 = millicores.
    now.cpu_ns.saturating_sub(previous.cpu_ns) / elapsed_ms / 1_000
}

/// Reads a workstation cgroup's CPU time (ns) and memory charge (bytes) from the kernel's files
/// (v2 first, then v1); zeros where the host applies no cgroups.
fn cgroup_usage(cgroup: &str) -> (u64, u64) {
    let read = |path: String| std::fs::read_to_string(path).ok();
    let number = |text: Option<String>| text.and_then(|text| text.trim().parse::<u64>().ok());
    let v2_cpu = read(format!("/sys/fs/cgroup/{cgroup}/cpu.stat")).and_then(|text| {
        text.lines()
            .find_map(|line| line.strip_prefix("usage_usec "))
            .and_then(|value| value.trim().parse::<u64>().ok())
            .map(|usec| usec.saturating_mul(1_000))
    });
    let cpu_ns = v2_cpu
        .or_else(|| {
            number(read(format!(
                "/sys/fs/cgroup/cpuacct/{cgroup}/cpuacct.usage"
            )))
        })
        .unwrap_or(0);
    let memory_bytes = number(read(format!("/sys/fs/cgroup/{cgroup}/memory.current")))
        .or_else(|| {
            number(read(format!(
                "/sys/fs/cgroup/memory/{cgroup}/memory.usage_in_bytes"
            )))
        })
        .unwrap_or(0);
    (cpu_ns, memory_bytes)
}

/// The API's text of a workstation state (as in heartbeats).
pub fn workstation_state_text(state: WorkstationState) -> &'static str {
    match state {
        WorkstationState::Pending => "pending",
        WorkstationState::Running => "running",
        WorkstationState::Stopping => "stopping",
        WorkstationState::Stopped => "stopped",
        WorkstationState::Failed => "failed",
    }
}

fn workstation_state_of(text: &str) -> WorkstationState {
    match text {
        "running" => WorkstationState::Running,
        "stopping" => WorkstationState::Stopping,
        "stopped" => WorkstationState::Stopped,
        "failed" => WorkstationState::Failed,
        _ => WorkstationState::Pending,
    }
}

/// The API's text of a process state (as in heartbeats).
pub fn process_state_text(state: ProcessState) -> &'static str {
    match state {
        ProcessState::Starting => "starting",
        ProcessState::Running => "running",
        ProcessState::Exited => "exited",
        ProcessState::Backoff => "backoff",
        ProcessState::CrashLoop => "crash_loop",
    }
}

fn process_state_of(text: &str) -> ProcessState {
    match text {
        "running" => ProcessState::Running,
        "exited" => ProcessState::Exited,
        "backoff" => ProcessState::Backoff,
        "crash_loop" => ProcessState::CrashLoop,
        _ => ProcessState::Starting,
    }
}

/// The processes of workstation `ws`, hosted here, with what its actor observes. An actor
/// that does not answer is an error, not an empty list. A stop this node carried out is in
/// its hosting record at once (`kill_here`), before its applied state (a worker's mirror lags
/// by up to a sync) has the committed `StopProcess`: such a process is shown stopped.
pub async fn hosted_processes(
    agent: &Agent,
    ws: &WorkstationRecord,
) -> Result<Vec<Process>, crate::service::ServiceError> {
    let statuses = agent.host.processes(&ws.id).await?;
    let stopped_here: Vec<u64> = agent.store.read(|model| {
        model
            .workstations
            .get(&ws.id)
            .map_or_else(Vec::new, |hosted| {
                hosted
                    .processes
                    .values()
                    .filter(|spec| spec.killed)
                    .map(|spec| spec.id)
                    .collect()
            })
    });
    Ok(ws
        .processes
        .values()
        .map(|spec| {
            let status = statuses.iter().find(|status| status.id.0 == spec.id);
            if spec.killed || !stopped_here.contains(&spec.id) {
                return super::host::process_json(&ws.id, spec, status);
            }
            let stopped = ProcessSpec {
                killed: true,
                ..spec.clone()
            };
            super::host::process_json(&ws.id, &stopped, status)
        })
        .collect())
}

/// What this node observes about every workstation it hosts, for its heartbeat: state (a
/// fenced workstation is `stopped`), processes, CPU (averaged since the last call) and memory.
/// Bounded like the heartbeat ([`Heartbeat::bound`](shoal_raft::soft_state::Heartbeat::bound)).
pub async fn observe_hosted(agent: &Agent) -> Vec<WorkstationUsage> {
    let records: Vec<WorkstationRecord> = agent.store.read(|model| {
        model
            .workstations
            .values()
            .filter(|ws| ws.id.parse::<WorkstationId>().is_ok())
            .take(shoal_raft::soft_state::WORKSTATIONS_PER_HEARTBEAT_MAX)
            .cloned()
            .collect()
    });
    let prefix = agent.run_context.host.cgroup_prefix().to_string();
    let mut observed = Vec::with_capacity(records.len());
    let mut samples = Vec::with_capacity(records.len());
    for ws in &records {
        let Ok(id) = ws.id.parse::<WorkstationId>() else {
            continue;
        };
        let (state, log_offset_next) = agent.host.state(&ws.id).await;
        let running = state == WorkstationState::Running;
        let (state, processes) = if running {
            match hosted_processes(agent, ws).await {
                Ok(processes) => (state, processes),
                Err(err) => {
                    // The heartbeat still names the processes, without an observed state.
                    debug!(workstation = %ws.id, error = %err,
                        "the actor did not report its processes for the heartbeat");
                    let unobserved = ws
                        .processes
                        .values()
                        .map(|spec| super::host::process_json(&ws.id, spec, None))
                        .collect();
                    (state, unobserved)
                }
            }
        } else {
            // Hosted but without an actor: fenced (or not resumed yet).
            (WorkstationState::Stopped, Vec::new())
        };
        let (cpu_ns, memory_used_bytes) = if running {
            let cgroup = format!("{prefix}/{}", ws.id);
            tokio::task::spawn_blocking(move || cgroup_usage(&cgroup))
                .await
                .unwrap_or((0, 0))
        } else {
            (0, 0)
        };
        let sample = CpuSample {
            cpu_ns,
            at_ms: super::fencing::monotonic_ms(),
        };
        let previous = agent
            .observed
            .last
            .lock()
            .get(&ws.id)
            .map(|(sample, _)| *sample);
        let usage = WorkstationUsage {
            id,
            generation: ws.generation,
            cpu_used_millis: cpu_millis_between(previous, sample),
            memory_used_bytes,
            log_offset_next,
            state: workstation_state_text(state).to_string(),
            processes: processes
                .iter()
                .take(shoal_raft::soft_state::PROCESSES_PER_WORKSTATION_REPORTED_MAX)
                .map(|process| ProcessObserved {
                    id: process.id.parse().unwrap_or(0),
                    state: process_state_text(process.state).to_string(),
                    exit_code: process.exit_code,
                    signal: process.signal,
                    restarts: process.restarts,
                    reason: process.reason.clone(),
                })
                .collect(),
        };
        samples.push((ws.id.clone(), sample, usage.clone()));
        observed.push(usage);
    }
    let mut last = agent.observed.last.lock();
    last.clear();
    for (id, sample, usage) in samples {
        last.insert(id, (sample, usage));
    }
    observed
}

/// The committed placement's observations of `records` not hosted here, from the leader's soft
/// state (one mesh request to the leader, or none when this node leads): only what the node
/// the workstation is placed on reported under its current generation. Empty when the leader
/// cannot be asked (the views then say `pending`).
pub async fn observe_remote(
    agent: &Agent,
    records: &[WorkstationRecord],
) -> BTreeMap<String, WorkstationUsage> {
    let hosted: Vec<String> = agent
        .store
        .read(|model| model.workstations.keys().cloned().collect());
    let wanted: Vec<WorkstationId> = records
        .iter()
        .filter(|ws| !hosted.contains(&ws.id))
        .filter_map(|ws| ws.id.parse().ok())
        .take(crate::mesh_rpc::OBSERVED_QUERY_WORKSTATIONS_MAX)
        .collect();
    if wanted.is_empty() {
        return BTreeMap::new();
    }
    let found = match crate::mesh_rpc::query_observed(&agent.raft, &agent.transport, &wanted).await
    {
        Ok(found) => found,
        Err(why) => {
            debug!(error = %why, "observed state not available from the leader");
            return BTreeMap::new();
        }
    };
    agent.raft.read(|state| {
        found
            .into_iter()
            .filter(|(node, usage)| {
                state
                    .workstations
                    .get(&usage.id)
                    .is_some_and(|ws| ws.node == Some(*node) && ws.generation == usage.generation)
            })
            .map(|(_, usage)| (usage.id.to_string(), usage))
            .collect()
    })
}

/// A process its node has not reported: `exited` with the reason when no placement starts it
/// (stopped by its owner, or a `never` process lost with an earlier placement), else
/// `starting`.
fn not_started_or_starting(ws_id: &str, spec: &super::model::ProcessSpec) -> Process {
    let mut process = super::host::process_json(ws_id, spec, None);
    if super::host::not_started_reason(spec).is_none() {
        process.state = ProcessState::Starting;
        process.reason = None;
    }
    process
}

/// The view of a workstation hosted on another node, from the leader's soft state:
/// `pending` until its node has reported it.
pub fn remote_view(ws: &WorkstationRecord, observed: Option<&WorkstationUsage>) -> Workstation {
    let Some(observed) = observed else {
        let mut view = ws.view(WorkstationState::Pending, "", 0);
        view.processes = ws
            .processes
            .values()
            .map(|spec| not_started_or_starting(&ws.id, spec))
            .collect();
        return view;
    };
    let mut view = ws.view(
        workstation_state_of(&observed.state),
        "",
        observed.log_offset_next,
    );
    view.used = Some(crate::api_types::Resources {
        cpu_millis: observed.cpu_used_millis,
        memory_bytes: observed.memory_used_bytes,
    });
    view.processes = ws
        .processes
        .values()
        .map(|spec| {
            let mut process = super::host::process_json(&ws.id, spec, None);
            match observed.processes.iter().find(|p| p.id == spec.id) {
                Some(seen) => {
                    process.state = process_state_of(&seen.state);
                    process.exit_code = seen.exit_code;
                    process.signal = seen.signal;
                    process.restarts = seen.restarts;
                    process.reason = seen.reason.clone();
                }
                // Added since the node's last heartbeat.
                None => process = not_started_or_starting(&ws.id, spec),
            }
            process
        })
        .collect();
    view
}

/// The view of a workstation hosted here, from its actor, with its processes and the usage of
/// the last heartbeat's sample.
pub async fn local_view(agent: &Agent, ws: &WorkstationRecord) -> Workstation {
    let (state, next) = agent.host.state(&ws.id).await;
    let mut view = ws.view(state, agent.host.isolation(), next);
    if state == WorkstationState::Running {
        // A view of the workstation is still worth answering when its actor does not: its
        // processes are then left out, and the reason is logged.
        match hosted_processes(agent, ws).await {
            Ok(processes) => view.processes = processes,
            Err(err) => tracing::warn!(workstation = %ws.id, error = %err,
                "the workstation's actor did not report its processes"),
        }
    }
    view.used =
        agent
            .observed
            .last
            .lock()
            .get(&ws.id)
            .map(|(_, usage)| crate::api_types::Resources {
                cpu_millis: usage.cpu_used_millis,
                memory_bytes: usage.memory_used_bytes,
            });
    view
}

/// Runs a reconcile whenever the applied Raft state changes or a teardown succeeded (a
/// re-placement here under a newer generation starts once the old record is gone). It never
/// waits for a teardown: each runs, and retries, on its own task ([`super::teardown`]).
pub async fn reconcile_loop(agent: std::sync::Arc<Agent>) {
    let mut applied = agent.raft.subscribe_applied();
    let mut finished = agent.teardowns.subscribe_finished();
    loop {
        // Marked seen before planning: a teardown that ends during the plan wakes the next.
        finished.borrow_and_update();
        let _ = reconcile_once(&agent).await;
        tokio::select! {
            changed = applied.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            changed = finished.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// CPU use between two samples is the CPU time over the wall time, in millicores, and
        /// never panics or wraps on counter resets or clock oddities.
        #[test]
        fn cpu_millis_is_cpu_time_over_wall_time(
            cpu_before in 0u64..(1 << 50), cpu_spent in 0u64..(1 << 40),
            at_before in 0u64..(1 << 40), elapsed_ms in 0u64..100_000,
        ) {
            let before = CpuSample { cpu_ns: cpu_before, at_ms: at_before };
            let after = CpuSample { cpu_ns: cpu_before + cpu_spent, at_ms: at_before + elapsed_ms };
            let millis = cpu_millis_between(Some(before), after);
            let expected = cpu_spent.checked_div(elapsed_ms).map_or(0, |per_ms| per_ms / 1_000);
            prop_assert_eq!(millis, expected);
            prop_assert_eq!(cpu_millis_between(None, after), 0);
            prop_assert_eq!(cpu_millis_between(Some(after), before), 0);
        }

        /// A re-placed workstation's log starts at or above the floor Raft committed.
        #[test]
        fn the_log_epoch_starts_at_or_above_the_floor(floor in 0u64..(1 << 60)) {
            let start = log_epoch_above(floor) << super::super::host::LOG_EPOCH_SHIFT;
            prop_assert!(start >= floor);
        }

        /// The floor committed before running in an epoch is above every offset of that
        /// epoch, and a re-placement above it (Raft adds `LOG_OFFSET_GAP_BYTES`) starts in a
        /// later epoch: a re-placed log never restarts inside or below an epoch its old node
        /// ran in.
        #[test]
        fn a_committed_epoch_floor_puts_a_re_placement_in_a_later_epoch(epoch in 0u64..(1 << 23)) {
            let shift = super::super::host::LOG_EPOCH_SHIFT;
            let floor = log_floor_above_epoch(epoch);
            let last_offset_of_epoch = ((epoch + 1) << shift) - 1;
            prop_assert!(floor > last_offset_of_epoch);
            let re_placed = floor + shoal_raft::command::LOG_OFFSET_GAP_BYTES;
            prop_assert!(log_epoch_above(re_placed) > epoch);
            prop_assert!(log_epoch_above(re_placed) << shift >= re_placed);
        }
    }
}
