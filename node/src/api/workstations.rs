//! `/v1/workstations` and their processes.

use actix_web::{web, HttpResponse};

use super::auth::Caller;
use super::body::JsonBody;
use super::error::ApiError;
use super::refuse_if_stopping;
use crate::agent::host::{parse_signal, process_json};
use crate::agent::model::{ProcessSpec, Sizing, WorkstationRecord};
use crate::agent::placement;
use crate::agent::Agent;
use crate::api_types::{
    CreateProcessRequest, CreateWorkstationRequest, ErrorBody, KillQuery, Process,
    ResizeWorkstationRequest, Workstation,
};
use crate::clock;

/// Smallest memory reservation.
const MEMORY_BYTES_MIN: u64 = 1 << 20;
/// Largest value accepted for any resource field (well above any real node: 1 PiB, 1M cores).
const MEMORY_BYTES_ABSURD: u64 = 1 << 50;
const CPU_MILLIS_ABSURD: u64 = 1_000_000_000;
/// Bounds on a process's command line and environment.
const ARGV_ITEMS_MAX: usize = 1_024;
const ARGV_BYTES_MAX: usize = 128 * 1024;
const ENV_ITEMS_MAX: usize = 256;
const NAME_CHARS_MAX: usize = 64;

fn check_resources(
    cpu_millis: u64,
    memory_bytes: u64,
    cpu_limit_millis: u64,
    memory_limit_bytes: u64,
) -> Result<(), ApiError> {
    if cpu_millis == 0 {
        return Err(ApiError::field("cpu_millis", "must be at least 1"));
    }
    if cpu_millis > CPU_MILLIS_ABSURD {
        return Err(ApiError::field("cpu_millis", "is absurdly large"));
    }
    if memory_bytes < MEMORY_BYTES_MIN {
        return Err(ApiError::field(
            "memory_bytes",
            format!("must be at least {MEMORY_BYTES_MIN}"),
        ));
    }
    if memory_bytes > MEMORY_BYTES_ABSURD {
        return Err(ApiError::field("memory_bytes", "is absurdly large"));
    }
    if cpu_limit_millis < cpu_millis || cpu_limit_millis > CPU_MILLIS_ABSURD {
        return Err(ApiError::field(
            "cpu_limit_millis",
            "must be at least cpu_millis (and not absurd)",
        ));
    }
    if memory_limit_bytes < memory_bytes || memory_limit_bytes > MEMORY_BYTES_ABSURD {
        return Err(ApiError::field(
            "memory_limit_bytes",
            "must be at least memory_bytes (and not absurd)",
        ));
    }
    Ok(())
}

/// Finds a workstation the caller may see, or 404 (also for other tenants' workstations, so
/// that ids do not leak across tenants). Raft says whether it exists and whose it is; the
/// hosting record is this node's if it hosts it, else built from Raft's placement.
fn visible(agent: &Agent, caller: &Caller, id: &str) -> Result<WorkstationRecord, ApiError> {
    let not_found = || ApiError::not_found("workstation", id);
    let ws_id: shoal_raft::model::WorkstationId = id.parse().map_err(|_| not_found())?;
    let placed = agent
        .raft
        .read(|state| state.workstations.get(&ws_id).cloned())
        .filter(|ws| caller.can_access(&ws.tenant))
        .ok_or_else(not_found)?;
    let from_raft = placement::record_of(
        &placed,
        &placed.node.map(placement::node_name).unwrap_or_default(),
    );
    // Raft is the truth for the spec, the placement and which processes were stopped or lost
    // with an earlier placement; the hosting record adds what only the hosting node knows
    // (the log epoch).
    Ok(agent
        .store
        .read(|model| model.workstations.get(id).map(|hosted| hosted.log_epoch))
        .map(|log_epoch| {
            let mut record = from_raft.clone();
            record.log_epoch = log_epoch;
            record
        })
        .unwrap_or(from_raft))
}

/// Whether this node hosts the workstation (its actor, processes and log are here).
fn hosted_here(agent: &Agent, ws: &WorkstationRecord) -> bool {
    agent
        .store
        .read(|model| model.workstations.contains_key(&ws.id))
}

/// The `reason` of a process whose workstation has no node: it runs again once one is found.
pub const PENDING_PROCESS_REASON: &str = "workstation_pending";

/// Whether the applied state has the workstation on no node (`pending`: nothing fits, or it
/// waits for re-placement after its node was lost).
fn unplaced(agent: &Agent, ws: &WorkstationRecord) -> bool {
    let Ok(id) = ws.id.parse::<shoal_raft::model::WorkstationId>() else {
        return false;
    };
    agent.raft.read(|state| {
        state
            .workstations
            .get(&id)
            .is_some_and(|placed| placed.node.is_none())
    })
}

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

async fn view(agent: &Agent, ws: &WorkstationRecord) -> Workstation {
    let observed = placement::observe_remote(agent, std::slice::from_ref(ws)).await;
    view_observed(agent, ws, &observed).await
}

/// The view of `ws`: from its actor when hosted here, else from `observed` (the leader's soft
/// state, see [`placement::observe_remote`]).
async fn view_observed(
    agent: &Agent,
    ws: &WorkstationRecord,
    observed: &std::collections::BTreeMap<String, shoal_raft::soft_state::WorkstationUsage>,
) -> Workstation {
    let mut view = if hosted_here(agent, ws) {
        placement::local_view(agent, ws).await
    } else {
        placement::remote_view(ws, observed.get(&ws.id))
    };
    if view.state == crate::api_types::WorkstationState::Pending {
        view.pending_reason = crate::agent::remote::pending_reason_of(agent, &ws.id);
        if unplaced(agent, ws) {
            view.node = None;
            view.processes = pending_processes(ws);
        }
    }
    view
}

/// Longest wait for this node to apply a write the leader has committed and answered.
const LOCAL_APPLY_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Waits (at most [`LOCAL_APPLY_WAIT`]) until this node's applied state satisfies `done`:
/// a write forwarded to the leader is answered once the leader applied it, and a follower
/// applies it a moment later. Returns whether it did; on `false` this node lags the leader
/// (by more than the wait), and the caller must build its answer from what the leader
/// answered (the committed write's [`shoal_raft::Outcome`]), not from the local state: a
/// committed write never answers 404.
async fn until_applied(agent: &Agent, done: impl Fn(&shoal_raft::ClusterState) -> bool) -> bool {
    let mut applied = agent.raft.subscribe_applied();
    let wait = async {
        while !agent.raft.read(&done) {
            if applied.changed().await.is_err() {
                // The state stopped changing (shutdown): whatever is there now is the answer.
                return;
            }
        }
    };
    let _ = tokio::time::timeout(LOCAL_APPLY_WAIT, wait).await;
    let caught_up = agent.raft.read(&done);
    if !caught_up {
        tracing::info!(
            wait_ms = LOCAL_APPLY_WAIT.as_millis() as u64,
            "a committed write is not applied on this node yet; answering from the leader's outcome"
        );
    }
    caught_up
}

/// What the leader committed for a create, as a record: the request's spec and tenant, the
/// placement of the [`shoal_raft::Outcome`], no processes yet. Used when this node has not
/// applied the create yet. `created_unix_ms` is the time this node proposed it (the command's
/// own timestamp is taken a moment later by [`Agent::propose`]; reads from the committed
/// state show that one).
fn committed_create_record(
    caller: &Caller,
    request: &CreateWorkstationRequest,
    sizing: Sizing,
    placed: &shoal_raft::command::Placed,
    proposed_unix_ms: u64,
) -> WorkstationRecord {
    WorkstationRecord {
        id: placed.id.to_string(),
        name: request.name.clone(),
        tenant: caller.tenant.clone(),
        node: placement::node_name(placed.node),
        generation: placed.generation,
        cpu_millis: sizing.cpu_millis,
        memory_bytes: sizing.memory_bytes,
        cpu_limit_millis: sizing.cpu_limit_millis,
        memory_limit_bytes: sizing.memory_limit_bytes,
        network: request.network.unwrap_or_default(),
        created_unix_ms: proposed_unix_ms,
        processes: Default::default(),
        next_process_id: 0,
        log_epoch: 0,
    }
}

/// Records an action that changes no replicated state (a signal, a failed sandbox start) in
/// Raft's audit log under the caller's tenant. Best effort: the action has happened, so a
/// Raft that cannot take the entry now is logged, not turned into a failure answer.
async fn record_audit(agent: &Agent, caller: &Caller, action: &str, resource: &str, outcome: &str) {
    let entry = shoal_raft::Action::RecordAudit {
        tenant: Some(caller.tenant.clone()),
        action: action.to_string(),
        resource: resource.to_string(),
        outcome: outcome.to_string(),
    };
    if let Err(err) = agent.propose(&caller.prefix, entry).await {
        tracing::warn!(action, resource, error = %err, "could not record an audit entry");
    }
}

/// The failure of `ws_id` (and `proc`) in a reconcile run, if any.
fn failure_of(
    failures: Vec<placement::Failure>,
    ws_id: &str,
    proc: Option<u64>,
) -> Option<ApiError> {
    failures
        .into_iter()
        .find(|(id, failed_proc, _)| id == ws_id && *failed_proc == proc)
        .map(|(_, _, err)| err)
}

/// Creates a workstation and places it.
#[utoipa::path(post, path = "/v1/workstations", request_body = CreateWorkstationRequest,
    responses((status = 201, body = Workstation), (status = 400, body = ErrorBody),
              (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])), tag = "workstations")]
pub async fn create(
    caller: Caller,
    agent: web::Data<Agent>,
    JsonBody(request): JsonBody<CreateWorkstationRequest>,
) -> Result<HttpResponse, ApiError> {
    refuse_if_stopping(&agent)?;
    let cpu_limit_millis = request.cpu_limit_millis.unwrap_or(request.cpu_millis);
    let memory_limit_bytes = request.memory_limit_bytes.unwrap_or(request.memory_bytes);
    check_resources(
        request.cpu_millis,
        request.memory_bytes,
        cpu_limit_millis,
        memory_limit_bytes,
    )?;
    if let Some(name) = &request.name {
        if name.is_empty()
            || name.chars().count() > NAME_CHARS_MAX
            || name.chars().any(char::is_control)
        {
            return Err(ApiError::field("name", "must be 1-64 printable characters"));
        }
    }
    let hosted_now = agent.store.read(|model| model.workstations.len());
    if hosted_now >= agent.config.workstations_per_node_max {
        return Err(ApiError::Unavailable {
            message: "no node can host another workstation right now".to_string(),
            retry_after_secs: 5,
        });
    }
    // The leader's scheduler places it (pure, in the state machine) on a node with room.
    let proposed_unix_ms = clock::now_unix_ms();
    let outcome = agent
        .propose(
            &caller.prefix,
            shoal_raft::Action::CreateWorkstation {
                request: shoal_raft::command::WorkstationRequest {
                    tenant: caller.tenant.clone(),
                    name: request.name.clone().unwrap_or_default(),
                    spec: shoal_raft::model::WorkstationSpec {
                        reservation: shoal_raft::model::Resources::new(
                            request.cpu_millis,
                            request.memory_bytes,
                        ),
                        limit: shoal_raft::model::Limit {
                            cpu_limit_millis,
                            memory_limit_bytes,
                        },
                        network: placement::raft_network_of(request.network.unwrap_or_default()),
                    },
                },
                hints: shoal_raft::command::PlacementHints::default(),
            },
        )
        .await
        .map_err(|err| match err {
            ApiError::Unavailable { message, .. } => ApiError::Unavailable {
                message,
                retry_after_secs: 5,
            },
            other => other,
        })?;
    let shoal_raft::Outcome::WorkstationPlaced(placed) = outcome else {
        return Err(ApiError::Internal(format!("unexpected answer {outcome:?}")));
    };
    let id = placed.id.to_string();
    let resource = id.clone();
    // Read-your-writes: the leader applied it; wait until this node has too, so that the
    // reconcile below and the answer see it.
    let applied_here =
        until_applied(&agent, |state| state.workstations.contains_key(&placed.id)).await;
    if applied_here && placed.node == agent.raft.id() {
        let failures = placement::reconcile(&agent).await;
        if let Some(err) = failure_of(failures, &id, None) {
            // The sandbox could not be made: undo the placement, so that nothing changes.
            // The audit log keeps both lines: the placement and why it was undone.
            let _ = agent
                .propose(
                    &caller.prefix,
                    shoal_raft::Action::DeleteWorkstation { id: placed.id },
                )
                .await;
            // The undo's `workstation.delete` entry is in Raft's audit log; this one says why.
            record_audit(&agent, &caller, "workstation.start", &resource, err.code()).await;
            return Err(err);
        }
    }
    let record = match visible(&agent, &caller, &id) {
        Ok(record) => record,
        // The create is committed but not (or no longer) in this node's state: it lags the
        // leader, or a concurrent delete came first. The answer is what the leader committed;
        // its node starts it (this node's reconcile loop, if it is this one, once it applied).
        Err(_) => {
            let sizing = Sizing {
                cpu_millis: request.cpu_millis,
                memory_bytes: request.memory_bytes,
                cpu_limit_millis,
                memory_limit_bytes,
            };
            let record =
                committed_create_record(&caller, &request, sizing, &placed, proposed_unix_ms);
            tracing::info!(workstation = %id, tenant = %record.tenant, node = %record.node, "workstation created (answered from the leader's outcome)");
            return Ok(HttpResponse::Created().json(placement::remote_view(&record, None)));
        }
    };
    tracing::info!(workstation = %id, tenant = %record.tenant, node = %record.node, "workstation created");
    Ok(HttpResponse::Created().json(view(&agent, &record).await))
}

/// Lists the caller's workstations (all of them for an admin key).
#[utoipa::path(get, path = "/v1/workstations",
    responses((status = 200, body = Vec<Workstation>)), security(("bearer" = [])), tag = "workstations")]
pub async fn list(caller: Caller, agent: web::Data<Agent>) -> Result<HttpResponse, ApiError> {
    let ids: Vec<String> = agent.raft.read(|state| {
        state
            .workstations
            .values()
            .filter(|ws| caller.can_access(&ws.tenant))
            .map(|ws| ws.id.to_string())
            .collect()
    });
    let records: Vec<WorkstationRecord> = ids
        .iter()
        .filter_map(|id| visible(&agent, &caller, id).ok())
        .collect();
    let observed = placement::observe_remote(&agent, &records).await;
    let mut views = Vec::with_capacity(records.len());
    for ws in &records {
        views.push(view_observed(&agent, ws, &observed).await);
    }
    Ok(HttpResponse::Ok().json(views))
}

/// Shows one workstation.
#[utoipa::path(get, path = "/v1/workstations/{id}",
    responses((status = 200, body = Workstation), (status = 404, body = ErrorBody)),
    security(("bearer" = [])), tag = "workstations")]
pub async fn show(
    caller: Caller,
    agent: web::Data<Agent>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let ws = visible(&agent, &caller, &id)?;
    Ok(HttpResponse::Ok().json(view(&agent, &ws).await))
}

/// Resizes a workstation in place when its node has room.
#[utoipa::path(patch, path = "/v1/workstations/{id}", request_body = ResizeWorkstationRequest,
    responses((status = 200, body = Workstation), (status = 400, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])), tag = "workstations")]
pub async fn resize(
    caller: Caller,
    agent: web::Data<Agent>,
    id: web::Path<String>,
    JsonBody(request): JsonBody<ResizeWorkstationRequest>,
) -> Result<HttpResponse, ApiError> {
    refuse_if_stopping(&agent)?;
    let ws = visible(&agent, &caller, &id)?;
    let cpu_millis = request.cpu_millis.unwrap_or(ws.cpu_millis);
    let memory_bytes = request.memory_bytes.unwrap_or(ws.memory_bytes);
    // A limit not given follows the reservation up if the reservation grows past it.
    let cpu_limit_millis = request
        .cpu_limit_millis
        .unwrap_or(ws.cpu_limit_millis.max(cpu_millis));
    let memory_limit_bytes = request
        .memory_limit_bytes
        .unwrap_or(ws.memory_limit_bytes.max(memory_bytes));
    check_resources(
        cpu_millis,
        memory_bytes,
        cpu_limit_millis,
        memory_limit_bytes,
    )?;
    let (cpu, mem) = agent.allocatable();
    let largest = agent.raft.read(|state| {
        state
            .nodes
            .values()
            .map(|node| node.allocatable())
            .fold((cpu, mem), |(c, m), a| {
                (c.max(a.cpu_millis), m.max(a.memory_bytes))
            })
    });
    if cpu_millis > largest.0 || memory_bytes > largest.1 {
        return Err(ApiError::Unsatisfiable(
            "the new reservation is larger than any node".to_string(),
        ));
    }
    let ws_id: shoal_raft::model::WorkstationId = ws
        .id
        .parse()
        .map_err(|_| ApiError::not_found("workstation", &ws.id))?;
    agent
        .propose(
            &caller.prefix,
            shoal_raft::Action::ResizeWorkstation {
                id: ws_id,
                reservation: shoal_raft::model::Resources::new(cpu_millis, memory_bytes),
                limit: shoal_raft::model::Limit {
                    cpu_limit_millis,
                    memory_limit_bytes,
                },
            },
        )
        .await
        .map_err(|err| match err {
            ApiError::Unavailable { message, .. } => ApiError::Unavailable {
                message,
                retry_after_secs: 5,
            },
            other => other,
        })?;
    // Raft checked the room and holds the new size (the answer reads it from there); the
    // hosting record follows as a cache. A local disk error must not turn a committed resize
    // into a failure answer.
    let new_reservation = shoal_raft::model::Resources::new(cpu_millis, memory_bytes);
    let applied_here = until_applied(&agent, |state| {
        state
            .workstations
            .get(&ws_id)
            .is_some_and(|ws| ws.spec.reservation == new_reservation)
    })
    .await;
    let sizing = Sizing {
        cpu_millis,
        memory_bytes,
        cpu_limit_millis,
        memory_limit_bytes,
    };
    let cached = agent.store.write(|model| {
        if model.workstations.contains_key(&ws.id) {
            model.resize_workstation(&ws.id, sizing, u64::MAX, u64::MAX)?;
        }
        Ok(())
    });
    if let Err(err) = cached {
        tracing::warn!(workstation = %ws.id, error = %err, "resize committed; the hosting record was not updated");
    }
    let updated = match visible(&agent, &caller, &ws.id) {
        Ok(record) if applied_here => record,
        // This node lags the leader (or the workstation went away since): the answer is the
        // committed size on the record as this node knew it.
        _ => WorkstationRecord {
            cpu_millis,
            memory_bytes,
            cpu_limit_millis,
            memory_limit_bytes,
            ..ws
        },
    };
    Ok(HttpResponse::Ok().json(view(&agent, &updated).await))
}

/// Deletes a workstation: processes stopped, log discarded, the audit log keeps the record.
#[utoipa::path(delete, path = "/v1/workstations/{id}",
    responses((status = 204), (status = 404, body = ErrorBody)),
    security(("bearer" = [])), tag = "workstations")]
pub async fn delete(
    caller: Caller,
    agent: web::Data<Agent>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let ws = visible(&agent, &caller, &id)?;
    let ws_id: shoal_raft::model::WorkstationId = ws
        .id
        .parse()
        .map_err(|_| ApiError::not_found("workstation", &ws.id))?;
    agent
        .propose(
            &caller.prefix,
            shoal_raft::Action::DeleteWorkstation { id: ws_id },
        )
        .await?;
    until_applied(&agent, |state| !state.workstations.contains_key(&ws_id)).await;
    // The hosting node stops it when its reconcile sees the deletion; here at once.
    placement::reconcile(&agent).await;
    tracing::info!(workstation = %ws.id, "workstation deleted");
    Ok(HttpResponse::NoContent().finish())
}

/// Starts a background process in a workstation.
#[utoipa::path(post, path = "/v1/workstations/{id}/processes", request_body = CreateProcessRequest,
    responses((status = 201, body = Process), (status = 400, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 429, body = ErrorBody)),
    security(("bearer" = [])), tag = "processes")]
pub async fn create_process(
    caller: Caller,
    agent: web::Data<Agent>,
    id: web::Path<String>,
    JsonBody(request): JsonBody<CreateProcessRequest>,
) -> Result<HttpResponse, ApiError> {
    refuse_if_stopping(&agent)?;
    let ws = visible(&agent, &caller, &id)?;
    check_process(&request)?;
    crate::agent::host::Host::check_program(&request.argv[0])?;
    let live = ws.processes.values().filter(|spec| !spec.killed).count();
    if live >= agent.config.processes_per_workstation_max {
        return Err(ApiError::RateLimited {
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
        .map_err(|_| ApiError::not_found("workstation", &ws_id))?;
    let restart = match request.restart.unwrap_or_default() {
        crate::api_types::RestartPolicy::Never => shoal_raft::model::RestartPolicy::Never,
        crate::api_types::RestartPolicy::OnFailure => shoal_raft::model::RestartPolicy::OnFailure,
        crate::api_types::RestartPolicy::Always => shoal_raft::model::RestartPolicy::Always,
    };
    let outcome = agent
        .propose(
            &caller.prefix,
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
        return Err(ApiError::Internal(format!("unexpected answer {outcome:?}")));
    };
    let applied_here = until_applied(&agent, |state| {
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
    if applied_here && hosted_here(&agent, &ws) {
        let failures = placement::reconcile(&agent).await;
        if let Some(err) = failure_of(failures, &ws_id, Some(proc_id.0)) {
            // The start failed (e.g. program not found): undo, so that nothing changes.
            let _ = agent
                .propose(
                    &caller.prefix,
                    shoal_raft::Action::RemoveProcess {
                        workstation: raft_ws_id,
                        process: proc_id,
                    },
                )
                .await;
            let _ = agent.store.write(|model| {
                if let Some(ws) = model.workstations.get_mut(&ws_id) {
                    ws.processes.remove(&proc_id.0);
                }
                Ok(())
            });
            return Err(err);
        }
    }
    let statuses = if hosted_here(&agent, &ws) {
        agent.host.processes(&ws_id).await.unwrap_or_default()
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
        process.reason = unplaced(&agent, &ws).then(|| PENDING_PROCESS_REASON.to_string());
    }
    Ok(HttpResponse::Created().json(process))
}

fn check_process(request: &CreateProcessRequest) -> Result<(), ApiError> {
    if request.argv.is_empty() || request.argv[0].is_empty() {
        return Err(ApiError::field("argv", "needs at least a program"));
    }
    let argv_bytes: usize = request.argv.iter().map(String::len).sum();
    if request.argv.len() > ARGV_ITEMS_MAX || argv_bytes > ARGV_BYTES_MAX {
        return Err(ApiError::TooLarge(format!(
            "field `argv`: at most {ARGV_ITEMS_MAX} items and {ARGV_BYTES_MAX} bytes"
        )));
    }
    if request.argv.iter().any(|arg| arg.contains('\0')) {
        return Err(ApiError::field("argv", "must not contain NUL bytes"));
    }
    if let Some(env) = &request.env {
        if env.len() > ENV_ITEMS_MAX {
            return Err(ApiError::field(
                "env",
                format!("at most {ENV_ITEMS_MAX} variables"),
            ));
        }
        for (key, value) in env {
            if key.is_empty() || key.contains('=') || key.contains('\0') || value.contains('\0') {
                return Err(ApiError::field("env", format!("invalid variable `{key}`")));
            }
        }
    }
    if let Some(cwd) = &request.cwd {
        if cwd.is_empty() || cwd.contains('\0') || cwd.len() > 4096 {
            return Err(ApiError::field("cwd", "must be a path"));
        }
    }
    Ok(())
}

/// Lists a workstation's processes with their observed state; for a `pending` workstation
/// (no node), its desired processes as its next host will start them, each with the reason
/// `workstation_pending`.
#[utoipa::path(get, path = "/v1/workstations/{id}/processes",
    responses((status = 200, body = Vec<Process>), (status = 404, body = ErrorBody),
              (status = 503, body = ErrorBody)),
    security(("bearer" = [])), tag = "processes")]
pub async fn list_processes(
    caller: Caller,
    agent: web::Data<Agent>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let ws = visible(&agent, &caller, &id)?;
    if unplaced(&agent, &ws) {
        // No host to ask: the desired processes, as the next host will start them.
        return Ok(HttpResponse::Ok().json(pending_processes(&ws)));
    }
    if !hosted_here(&agent, &ws) {
        use crate::agent::remote::{ask_host, RemoteReply, RemoteRequest};
        let reply = ask_host(
            &agent,
            &ws.id,
            &RemoteRequest::Processes { ws: ws.id.clone() },
        )
        .await?;
        return match reply {
            RemoteReply::Processes(processes) => Ok(HttpResponse::Ok().json(processes)),
            RemoteReply::Failed(why) => Err(ApiError::unavailable(why)),
            RemoteReply::Error(error) => Err(error.into_api_error()),
            _ => Err(ApiError::Internal("mismatched mesh answer".into())),
        };
    }
    let statuses = agent.host.processes(&ws.id).await.unwrap_or_default();
    let processes: Vec<Process> = ws
        .processes
        .values()
        .map(|spec| {
            let status = statuses.iter().find(|status| status.id.0 == spec.id);
            process_json(&ws.id, spec, status)
        })
        .collect();
    Ok(HttpResponse::Ok().json(processes))
}

/// Signals a process hosted on this node. TERM and KILL (`stops`) come after the stop was
/// committed in Raft (`StopProcess`, see [`kill_process`]): the hosting record takes the flag
/// (so that [`placement::reconcile`] does not stop it a second time) and the process is
/// stopped, waiting for its exit; a process this node never started (not started by this
/// placement, or not yet) has nothing to stop, and no placement starts it now.
pub async fn kill_here(
    agent: &Agent,
    ws_id: &str,
    proc_id: u64,
    signal: nix::sys::signal::Signal,
    stops: bool,
) -> Result<(), ApiError> {
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
        Err(ApiError::NotFound(_)) => Ok(()),
        other => other,
    }
}

/// Signals a process (`?signal=TERM` by default; TERM and KILL stop it for good).
#[utoipa::path(delete, path = "/v1/workstations/{id}/processes/{pid}", params(KillQuery),
    responses((status = 204), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])), tag = "processes")]
pub async fn kill_process(
    caller: Caller,
    agent: web::Data<Agent>,
    path: web::Path<(String, String)>,
    query: web::Query<KillQuery>,
) -> Result<HttpResponse, ApiError> {
    let (ws_id, proc_text) = path.into_inner();
    let ws = visible(&agent, &caller, &ws_id)?;
    let proc_id: u64 = proc_text
        .parse()
        .map_err(|_| ApiError::not_found("process", &proc_text))?;
    if !ws.processes.contains_key(&proc_id) {
        return Err(ApiError::not_found("process", &proc_text));
    }
    let signal = parse_signal(query.signal.as_deref().unwrap_or("TERM"))?;
    let stops = matches!(
        signal,
        nix::sys::signal::Signal::SIGTERM | nix::sys::signal::Signal::SIGKILL
    );
    if stops {
        return stop_process(&agent, &caller, &ws, proc_id, signal, query.signal.clone()).await;
    }
    let resource = format!("{}/p-{proc_id}", ws.id);
    let result = if hosted_here(&agent, &ws) {
        kill_here(&agent, &ws.id, proc_id, signal, stops).await
    } else {
        use crate::agent::remote::{ask_host, RemoteReply, RemoteRequest};
        let request = RemoteRequest::Kill {
            ws: ws.id.clone(),
            proc: proc_id,
            signal: query.signal.clone().unwrap_or_else(|| "TERM".to_string()),
        };
        match ask_host(&agent, &ws.id, &request).await {
            Ok(RemoteReply::Done) => Ok(()),
            Ok(RemoteReply::Failed(why)) => Err(ApiError::unavailable(why)),
            Ok(RemoteReply::Error(error)) => Err(error.into_api_error()),
            Ok(_) => Err(ApiError::Internal("mismatched mesh answer".into())),
            Err(err) => Err(err),
        }
    };
    let outcome = match &result {
        Ok(()) => "ok",
        Err(err) => err.code(),
    };
    record_audit(&agent, &caller, "process.kill", &resource, outcome).await;
    result?;
    Ok(HttpResponse::NoContent().finish())
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
async fn stop_process(
    agent: &Agent,
    caller: &Caller,
    ws: &WorkstationRecord,
    proc_id: u64,
    signal: nix::sys::signal::Signal,
    signal_text: Option<String>,
) -> Result<HttpResponse, ApiError> {
    let raft_ws_id: shoal_raft::model::WorkstationId = ws
        .id
        .parse()
        .map_err(|_| ApiError::not_found("workstation", &ws.id))?;
    let raft_proc_id = shoal_raft::model::ProcessId(proc_id);
    let stop_signal = if signal == nix::sys::signal::Signal::SIGKILL {
        shoal_raft::model::StopSignal::Kill
    } else {
        shoal_raft::model::StopSignal::Term
    };
    agent
        .propose(
            &caller.prefix,
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
    } else if hosted_here(agent, ws) {
        kill_here(agent, &ws.id, proc_id, signal, true).await
    } else {
        use crate::agent::remote::{ask_host, RemoteReply, RemoteRequest};
        let request = RemoteRequest::Kill {
            ws: ws.id.clone(),
            proc: proc_id,
            signal: signal_text.unwrap_or_else(|| "TERM".to_string()),
        };
        match ask_host(agent, &ws.id, &request).await {
            Ok(RemoteReply::Done) => Ok(()),
            Ok(RemoteReply::Failed(why)) => Err(ApiError::unavailable(why)),
            Ok(RemoteReply::Error(error)) => Err(error.into_api_error()),
            Ok(_) => Err(ApiError::Internal("mismatched mesh answer".into())),
            Err(err) => Err(err),
        }
    };
    if let Err(err) = delivered {
        tracing::warn!(workstation = %ws.id, proc = proc_id, error = %err,
            "stop committed, but the signal did not reach the host: it stops the process when it applies the stop");
    }
    Ok(HttpResponse::NoContent().finish())
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
