//! A workstation's processes: start, list, signal. Each is served by the node hosting the
//! workstation ([`super::hosting::on_host`]); a workstation with no node (`pending`) answers
//! from Raft's desired processes, as its next host will start them.

use super::hosting::{on_host, whereabouts, HostAnswer, HostOp, Whereabouts};
use super::workstations::{failure_of, hosted_here, unplaced, until_applied, visible};
use super::{refuse_if_stopping, Caller, ServiceError};
use crate::agent::host::{parse_signal, process_json};
use crate::agent::model::{ProcessSpec, WorkstationRecord};
use crate::agent::placement;
use crate::agent::Agent;
use crate::api_types::{CreateProcessRequest, Process};
use crate::clock;

/// Bounds on a process's command line and environment.
const ARGV_ITEMS_MAX: usize = 1_024;
const ARGV_BYTES_MAX: usize = 128 * 1024;
const ENV_ITEMS_MAX: usize = 256;

/// The `reason` of a process whose workstation has no node: it runs again once one is found.
pub const PENDING_PROCESS_REASON: &str = "workstation_pending";

/// The processes of a workstation that has no node, as its next host will treat them: that
/// host's first start of the placement (`placement::reconcile`) starts exactly the processes
/// Raft's `DesiredProcess::started_by` names for the placement's generation. A process its
/// owner stopped is `exited` with reason `killed`, a `never` process whose first placement is
/// over is `exited` with reason `node_lost` (SPEC, Lifecycle: both as the next host reports
/// them), and every other one is `starting`, with the reason [`PENDING_PROCESS_REASON`].
pub fn pending_processes(ws: &WorkstationRecord) -> Vec<Process> {
    ws.processes
        .values()
        .map(|spec| {
            let mut process = process_json(&ws.id, spec, None);
            if crate::agent::host::not_started_reason(spec).is_none() {
                process.state = crate::api_types::ProcessState::Starting;
                process.reason = Some(PENDING_PROCESS_REASON.to_string());
            }
            process
        })
        .collect()
}

/// Starts a background process in workstation `ws_id`, on the node that hosts it.
pub async fn create(
    agent: &Agent,
    caller: &Caller,
    ws_id: &str,
    request: CreateProcessRequest,
) -> Result<Process, ServiceError> {
    refuse_if_stopping(agent)?;
    let ws = visible(agent, caller, ws_id)?;
    // Refused the same way on every node before anything is relayed.
    check_process(&request)?;
    if whereabouts(agent, ws_id) == Whereabouts::Pending {
        return start_on_this_node(agent, caller, &ws, request, false).await;
    }
    match on_host(
        agent,
        caller,
        HostOp::StartProcess {
            ws: ws.id.clone(),
            request,
        },
    )
    .await?
    {
        HostAnswer::Process(process) => Ok(process),
        other => Err(mismatched(&other)),
    }
}

/// What [`super::hosting::serve_here`] runs for [`HostOp::StartProcess`].
pub async fn start_here(
    agent: &Agent,
    caller: &Caller,
    ws: &WorkstationRecord,
    request: CreateProcessRequest,
) -> Result<Process, ServiceError> {
    start_on_this_node(agent, caller, ws, request, true).await
}

fn mismatched(answer: &HostAnswer) -> ServiceError {
    ServiceError::Internal(format!(
        "mismatched answer from the hosting node: {answer:?}"
    ))
}

/// Starts a process in workstation `ws`, on this node: the one hosting it, or any node while
/// it has no host (then its next host starts it, and the program is looked up there). The
/// program is looked up on this node's filesystem only when this node hosts the workstation.
async fn start_on_this_node(
    agent: &Agent,
    caller: &Caller,
    ws: &WorkstationRecord,
    request: CreateProcessRequest,
    hosted: bool,
) -> Result<Process, ServiceError> {
    refuse_if_stopping(agent)?;
    check_process(&request)?;
    if hosted {
        crate::agent::host::Host::check_program(&request.argv[0])?;
    }
    let live = ws.processes.values().filter(|spec| !spec.killed).count();
    if live >= agent.config.processes_per_workstation_max {
        return Err(ServiceError::RateLimited {
            message: format!(
                "a workstation runs at most {} processes",
                agent.config.processes_per_workstation_max
            ),
            retry_after_secs: 5,
        });
    }
    let now = clock::now_unix_ms();
    let ws_id = ws.id.clone();
    let raft_ws_id: shoal_raft::model::WorkstationId = ws_id
        .parse()
        .map_err(|_| ServiceError::not_found("workstation", &ws_id))?;
    let restart = crate::convert::restart_to_raft(request.restart.unwrap_or_default());
    let outcome = agent
        .propose_for(
            caller,
            shoal_raft::Action::AddProcess {
                workstation: raft_ws_id,
                argv: request.argv.clone(),
                env: request.env.clone().unwrap_or_default(),
                cwd: request.cwd.clone(),
                restart,
            },
        )
        .await?;
    let shoal_raft::Outcome::ProcessAdded { id: proc_id } = outcome else {
        return Err(ServiceError::Internal(format!(
            "unexpected answer {outcome:?}"
        )));
    };
    let applied_here = until_applied(agent, |state| {
        state
            .workstations
            .get(&raft_ws_id)
            .is_some_and(|ws| ws.processes.contains_key(&proc_id))
    })
    .await;
    let spec = ProcessSpec {
        id: proc_id.0,
        argv: request.argv.clone(),
        env: request.env.clone().unwrap_or_default(),
        cwd: request.cwd.clone(),
        restart: request.restart.unwrap_or_default(),
        created_unix_ms: now,
        killed: false,
        node_lost: false,
    };
    // Not applied here yet: this node's reconcile loop starts it once it has; the answer
    // is the committed process, `starting`.
    if applied_here && hosted_here(agent, ws) {
        let failures = placement::reconcile(agent).await;
        if let Some(err) = failure_of(failures, &ws_id, Some(proc_id.0)) {
            // The start failed (e.g. program not found): undo, so that nothing changes.
            // An undo that does not commit leaves a process that never starts: say so.
            if let Err(undo) = agent
                .propose_for(
                    caller,
                    shoal_raft::Action::RemoveProcess {
                        workstation: raft_ws_id,
                        process: proc_id,
                    },
                )
                .await
            {
                tracing::warn!(workstation = %ws_id, proc = proc_id.0, error = %undo,
                    "a process that could not start was not removed from the desired state");
            }
            if let Err(undo) = agent.store.write(|model| {
                if let Some(ws) = model.workstations.get_mut(&ws_id) {
                    ws.processes.remove(&proc_id.0);
                }
                Ok(())
            }) {
                tracing::warn!(workstation = %ws_id, proc = proc_id.0, error = %undo,
                    "a process that could not start was not removed from the hosting record");
            }
            return Err(err);
        }
    }
    let statuses = if hosted_here(agent, ws) {
        agent.host.processes(&ws_id).await?
    } else {
        Vec::new()
    };
    let status = statuses.iter().find(|status| status.id.0 == spec.id);
    let mut process = process_json(&ws_id, &spec, status);
    if status.is_none() {
        // Committed, and started by its node (elsewhere, or here once applied): it has not
        // run yet, so it is `starting`, not a process a restart left behind.
        process.state = crate::api_types::ProcessState::Starting;
        // A workstation with no node starts it once placed: say so, as its process list does.
        process.reason = unplaced(agent, ws).then(|| PENDING_PROCESS_REASON.to_string());
    }
    Ok(process)
}

fn check_process(request: &CreateProcessRequest) -> Result<(), ServiceError> {
    if request.argv.is_empty() || request.argv[0].is_empty() {
        return Err(ServiceError::field("argv", "needs at least a program"));
    }
    let argv_bytes: usize = request.argv.iter().map(String::len).sum();
    if request.argv.len() > ARGV_ITEMS_MAX || argv_bytes > ARGV_BYTES_MAX {
        return Err(ServiceError::TooLarge(format!(
            "field `argv`: at most {ARGV_ITEMS_MAX} items and {ARGV_BYTES_MAX} bytes"
        )));
    }
    if request.argv.iter().any(|arg| arg.contains('\0')) {
        return Err(ServiceError::field("argv", "must not contain NUL bytes"));
    }
    if let Some(env) = &request.env {
        if env.len() > ENV_ITEMS_MAX {
            return Err(ServiceError::field(
                "env",
                format!("at most {ENV_ITEMS_MAX} variables"),
            ));
        }
        for (key, value) in env {
            if key.is_empty() || key.contains('=') || key.contains('\0') || value.contains('\0') {
                return Err(ServiceError::field(
                    "env",
                    format!("invalid variable `{key}`"),
                ));
            }
        }
    }
    if let Some(cwd) = &request.cwd {
        if cwd.is_empty() || cwd.contains('\0') || cwd.len() > 4096 {
            return Err(ServiceError::field("cwd", "must be a path"));
        }
    }
    Ok(())
}

/// Lists a workstation's processes with their observed state; for a `pending` workstation
/// (no node), its desired processes as its next host will start them, each with the reason
/// `workstation_pending`.
pub async fn list(
    agent: &Agent,
    caller: &Caller,
    ws_id: &str,
) -> Result<Vec<Process>, ServiceError> {
    let ws = visible(agent, caller, ws_id)?;
    if unplaced(agent, &ws) {
        // No host to ask: the desired processes, as the next host will start them.
        return Ok(pending_processes(&ws));
    }
    match on_host(agent, caller, HostOp::Processes { ws: ws.id.clone() }).await? {
        HostAnswer::Processes(processes) => Ok(processes),
        other => Err(mismatched(&other)),
    }
}

/// The processes of workstation `ws`, hosted here ([`placement::hosted_processes`]).
pub async fn hosted_processes(
    agent: &Agent,
    ws: &WorkstationRecord,
) -> Result<Vec<Process>, ServiceError> {
    placement::hosted_processes(agent, ws).await
}

/// What [`super::hosting::serve_here`] runs for [`HostOp::Signal`]: signals process `proc_id`
/// of `ws_id`, hosted here (TERM and KILL stop it for good).
pub async fn signal_here(
    agent: &Agent,
    ws_id: &str,
    proc_id: u64,
    signal_text: &str,
) -> Result<(), ServiceError> {
    let signal = parse_signal(signal_text)?;
    let stops = matches!(
        signal,
        nix::sys::signal::Signal::SIGTERM | nix::sys::signal::Signal::SIGKILL
    );
    kill_here(agent, ws_id, proc_id, signal, stops).await
}

/// Signals a process hosted on this node. TERM and KILL (`stops`) come after the stop was
/// committed in Raft (`StopProcess`, see [`signal`]): the hosting record takes the flag
/// (so that [`placement::reconcile`] does not stop it a second time) and the process is
/// stopped, waiting for its exit; a process this node never started (not started by this
/// placement, or not yet) has nothing to stop, and no placement starts it now.
async fn kill_here(
    agent: &Agent,
    ws_id: &str,
    proc_id: u64,
    signal: nix::sys::signal::Signal,
    stops: bool,
) -> Result<(), ServiceError> {
    if !stops {
        return agent.host.kill_process(ws_id, proc_id, signal).await;
    }
    let unrecorded = agent.store.read(|model| {
        model
            .workstations
            .get(ws_id)
            .and_then(|ws| ws.processes.get(&proc_id))
            .is_some_and(|spec| !spec.killed)
    });
    if unrecorded {
        agent.store.write(|model| {
            if let Some(spec) = model
                .workstations
                .get_mut(ws_id)
                .and_then(|ws| ws.processes.get_mut(&proc_id))
            {
                spec.killed = true;
            }
            Ok(())
        })?;
    }
    match agent.host.kill_process(ws_id, proc_id, signal).await {
        Err(ServiceError::NotFound(_)) => Ok(()),
        other => other,
    }
}

/// Sends `signal_text` to process `proc_id` of `ws` on the node hosting it.
async fn signal_on_host(
    agent: &Agent,
    caller: &Caller,
    ws: &WorkstationRecord,
    proc_id: u64,
    signal_text: &str,
) -> Result<(), ServiceError> {
    let op = HostOp::Signal {
        ws: ws.id.clone(),
        proc: proc_id,
        signal: signal_text.to_string(),
    };
    on_host(agent, caller, op).await.map(|_| ())
}

/// Signals process `proc_text` of workstation `ws_id` (`signal_text` defaults to TERM; TERM
/// and KILL stop it for good).
pub async fn signal(
    agent: &Agent,
    caller: &Caller,
    ws_id: &str,
    proc_text: &str,
    signal_text: Option<&str>,
) -> Result<(), ServiceError> {
    let ws = visible(agent, caller, ws_id)?;
    let proc_id: u64 = proc_text
        .parse()
        .map_err(|_| ServiceError::not_found("process", proc_text))?;
    if !ws.processes.contains_key(&proc_id) {
        return Err(ServiceError::not_found("process", proc_text));
    }
    let signal_text = signal_text.unwrap_or("TERM");
    let signal = parse_signal(signal_text)?;
    let stops = matches!(
        signal,
        nix::sys::signal::Signal::SIGTERM | nix::sys::signal::Signal::SIGKILL
    );
    if stops {
        return stop(agent, caller, &ws, proc_id, signal, signal_text).await;
    }
    let resource = format!("{}/p-{proc_id}", ws.id);
    let result = signal_on_host(agent, caller, &ws, proc_id, signal_text).await;
    let outcome = match &result {
        Ok(()) => "ok",
        Err(err) => err.code(),
    };
    super::workstations::record_audit(agent, caller, "process.kill", &resource, outcome).await;
    result
}

/// TERM or KILL: stops a process for good. The stop is committed in Raft first
/// (`StopProcess`, audited as `process.kill`), so that nothing can undo it: no later placement
/// starts the process (a re-placement after a node loss included), and every node reports it
/// `exited` with reason `killed`. A stop that does not commit answers its error and signals
/// nothing. Once committed, the hosting node is signalled directly so that the answer comes
/// after the exit; if that signal does not get through, the host stops the process itself
/// when it applies the stop (`placement::reconcile`), and a workstation with no node has
/// nothing running: the answer is 204 either way, because the stop is done as far as the
/// cluster is concerned.
async fn stop(
    agent: &Agent,
    caller: &Caller,
    ws: &WorkstationRecord,
    proc_id: u64,
    signal: nix::sys::signal::Signal,
    signal_text: &str,
) -> Result<(), ServiceError> {
    let raft_ws_id: shoal_raft::model::WorkstationId = ws
        .id
        .parse()
        .map_err(|_| ServiceError::not_found("workstation", &ws.id))?;
    let raft_proc_id = shoal_raft::model::ProcessId(proc_id);
    let stop_signal = if signal == nix::sys::signal::Signal::SIGKILL {
        shoal_raft::model::StopSignal::Kill
    } else {
        shoal_raft::model::StopSignal::Term
    };
    agent
        .propose_for(
            caller,
            shoal_raft::Action::StopProcess {
                workstation: raft_ws_id,
                process: raft_proc_id,
                signal: stop_signal,
            },
        )
        .await?;
    // This node's views read the stop from its applied state: wait (bounded) until it is
    // there, as a create or an exec does.
    until_applied(agent, |state| {
        state
            .workstations
            .get(&raft_ws_id)
            .and_then(|ws| ws.processes.get(&raft_proc_id))
            .is_none_or(|process| process.stopped.is_some())
    })
    .await;
    let delivered = if unplaced(agent, ws) {
        Ok(())
    } else {
        signal_on_host(agent, caller, ws, proc_id, signal_text).await
    };
    if let Err(err) = delivered {
        tracing::warn!(workstation = %ws.id, proc = proc_id, error = %err,
            "stop committed, but the signal did not reach the host: it stops the process when it applies the stop");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api_types::{ProcessState, RestartPolicy};

    fn spec(id: u64, restart: RestartPolicy, killed: bool, node_lost: bool) -> ProcessSpec {
        ProcessSpec {
            id,
            argv: vec!["sleep".to_string(), id.to_string()],
            env: Default::default(),
            cwd: None,
            restart,
            created_unix_ms: 7,
            killed,
            node_lost,
        }
    }

    #[test]
    fn a_pending_workstation_lists_what_its_next_host_starts_as_starting_and_the_rest_as_exited_with_why(
    ) {
        let processes = [
            spec(0, RestartPolicy::Never, false, false),
            spec(1, RestartPolicy::OnFailure, false, false),
            spec(2, RestartPolicy::Always, true, false),
            spec(3, RestartPolicy::Never, false, true),
            spec(4, RestartPolicy::Never, true, false),
        ];
        let ws = WorkstationRecord {
            id: "ws-9".to_string(),
            name: None,
            tenant: "t".to_string(),
            node: String::new(),
            generation: 2,
            cpu_millis: 100,
            memory_bytes: 1 << 20,
            cpu_limit_millis: 100,
            memory_limit_bytes: 1 << 20,
            network: Default::default(),
            created_unix_ms: 1,
            processes: processes.iter().map(|p| (p.id, p.clone())).collect(),
            next_process_id: 5,
            log_epoch: 0,
        };
        let listed = pending_processes(&ws);
        let expected = [
            (ProcessState::Starting, PENDING_PROCESS_REASON),
            (ProcessState::Starting, PENDING_PROCESS_REASON),
            (ProcessState::Exited, "killed"),
            (ProcessState::Exited, "node_lost"),
            (ProcessState::Exited, "killed"),
        ];
        assert_eq!(listed.len(), processes.len());
        for ((process, spec), (state, reason)) in listed.iter().zip(&processes).zip(expected) {
            assert_eq!(process.id, spec.id.to_string());
            assert_eq!(process.workstation, "ws-9");
            assert_eq!(process.argv, spec.argv);
            assert_eq!(process.restart, spec.restart);
            assert_eq!(process.state, state, "{process:?}");
            assert_eq!(process.reason.as_deref(), Some(reason), "{process:?}");
            assert_eq!(
                (process.exit_code, process.signal, process.restarts),
                (None, None, 0)
            );
        }
    }
}
