//! Workstations: create (the leader's scheduler places it), list, show, resize, delete.
//! What only the hosting node can do with one (its processes and log) goes through
//! [`super::hosting`].

use super::{refuse_if_stopping, Caller, ServiceError};
use crate::agent::model::{Sizing, WorkstationRecord};
use crate::agent::placement;
use crate::agent::Agent;
use crate::api_types::{CreateWorkstationRequest, ResizeWorkstationRequest, Workstation};
use crate::clock;

/// Smallest memory reservation.
const MEMORY_BYTES_MIN: u64 = 1 << 20;
/// Largest value accepted for any resource field (well above any real node: 1 PiB, 1M cores).
const MEMORY_BYTES_ABSURD: u64 = 1 << 50;
const CPU_MILLIS_ABSURD: u64 = 1_000_000_000;
const NAME_CHARS_MAX: usize = 64;

fn check_resources(
    cpu_millis: u64,
    memory_bytes: u64,
    cpu_limit_millis: u64,
    memory_limit_bytes: u64,
) -> Result<(), ServiceError> {
    if cpu_millis == 0 {
        return Err(ServiceError::field("cpu_millis", "must be at least 1"));
    }
    if cpu_millis > CPU_MILLIS_ABSURD {
        return Err(ServiceError::field("cpu_millis", "is absurdly large"));
    }
    if memory_bytes < MEMORY_BYTES_MIN {
        return Err(ServiceError::field(
            "memory_bytes",
            format!("must be at least {MEMORY_BYTES_MIN}"),
        ));
    }
    if memory_bytes > MEMORY_BYTES_ABSURD {
        return Err(ServiceError::field("memory_bytes", "is absurdly large"));
    }
    if cpu_limit_millis < cpu_millis || cpu_limit_millis > CPU_MILLIS_ABSURD {
        return Err(ServiceError::field(
            "cpu_limit_millis",
            "must be at least cpu_millis (and not absurd)",
        ));
    }
    if memory_limit_bytes < memory_bytes || memory_limit_bytes > MEMORY_BYTES_ABSURD {
        return Err(ServiceError::field(
            "memory_limit_bytes",
            "must be at least memory_bytes (and not absurd)",
        ));
    }
    Ok(())
}

/// Finds a workstation the caller may see, or 404 (also for other tenants' workstations, so
/// that ids do not leak across tenants). Raft says whether it exists and whose it is; the
/// hosting record is this node's if it hosts it, else built from Raft's placement.
pub fn visible(
    agent: &Agent,
    caller: &Caller,
    id: &str,
) -> Result<WorkstationRecord, ServiceError> {
    let not_found = || ServiceError::not_found("workstation", id);
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
pub fn hosted_here(agent: &Agent, ws: &WorkstationRecord) -> bool {
    agent
        .store
        .read(|model| model.workstations.contains_key(&ws.id))
}

/// Whether the applied state has the workstation on no node (`pending`: nothing fits, or it
/// waits for re-placement after its node was lost).
pub fn unplaced(agent: &Agent, ws: &WorkstationRecord) -> bool {
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

pub async fn view(agent: &Agent, ws: &WorkstationRecord) -> Workstation {
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
        view.pending_reason = super::hosting::pending_reason_of(agent, &ws.id);
        if unplaced(agent, ws) {
            view.node = None;
            view.processes = super::processes::pending_processes(ws);
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
pub async fn until_applied(
    agent: &Agent,
    done: impl Fn(&shoal_raft::ClusterState) -> bool,
) -> bool {
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
        network: crate::convert::network_to_raft(request.network.unwrap_or_default()),
        created_unix_ms: proposed_unix_ms,
        processes: Default::default(),
        next_process_id: 0,
        log_epoch: 0,
    }
}

/// Records an action that changes no replicated state (a signal, a failed sandbox start) in
/// Raft's audit log under the caller's tenant. Best effort: the action has happened, so a
/// Raft that cannot take the entry now is logged, not turned into a failure answer.
pub async fn record_audit(
    agent: &Agent,
    caller: &Caller,
    action: &str,
    resource: &str,
    outcome: &str,
) {
    let entry = shoal_raft::Action::RecordAudit {
        tenant: Some(caller.tenant.clone()),
        action: action.to_string(),
        resource: resource.to_string(),
        outcome: outcome.to_string(),
    };
    if let Err(err) = agent.propose_for(caller, entry).await {
        tracing::warn!(action, resource, error = %err, "could not record an audit entry");
    }
}

/// The failure of `ws_id` (and `proc`) in a reconcile run, if any.
pub fn failure_of(
    failures: Vec<placement::Failure>,
    ws_id: &str,
    proc: Option<u64>,
) -> Option<ServiceError> {
    failures
        .into_iter()
        .find(|(id, failed_proc, _)| id == ws_id && *failed_proc == proc)
        .map(|(_, _, err)| err)
}

/// Creates a workstation and places it.
pub async fn create(
    agent: &Agent,
    caller: &Caller,
    request: CreateWorkstationRequest,
) -> Result<Workstation, ServiceError> {
    refuse_if_stopping(agent)?;
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
            return Err(ServiceError::field(
                "name",
                "must be 1-64 printable characters",
            ));
        }
    }
    // The leader's scheduler places it (pure, in the state machine) on a node with room.
    let proposed_unix_ms = clock::now_unix_ms();
    let outcome = agent
        .propose_for(
            caller,
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
                        network: crate::convert::network_to_raft(
                            request.network.unwrap_or_default(),
                        ),
                    },
                },
                hints: shoal_raft::command::PlacementHints::default(),
            },
        )
        .await
        .map_err(retry_when_room)?;
    let shoal_raft::Outcome::WorkstationPlaced(placed) = outcome else {
        return Err(ServiceError::Internal(format!(
            "unexpected answer {outcome:?}"
        )));
    };
    let id = placed.id.to_string();
    let resource = id.clone();
    // Read-your-writes: the leader applied it; wait until this node has too, so that the
    // reconcile below and the answer see it.
    let applied_here =
        until_applied(agent, |state| state.workstations.contains_key(&placed.id)).await;
    if applied_here && placed.node == agent.raft.id() {
        let failures = placement::reconcile(agent).await;
        if let Some(err) = failure_of(failures, &id, None) {
            // The sandbox could not be made: undo the placement, so that nothing changes.
            // The audit log keeps both lines: the placement and why it was undone.
            if let Err(undo) = agent
                .propose_for(
                    caller,
                    shoal_raft::Action::DeleteWorkstation { id: placed.id },
                )
                .await
            {
                tracing::warn!(workstation = %id, error = %undo,
                    "a workstation whose sandbox could not be made was not deleted again");
            }
            // The undo's `workstation.delete` entry is in Raft's audit log; this one says why.
            record_audit(agent, caller, "workstation.start", &resource, err.code()).await;
            return Err(err);
        }
    }
    let record = match visible(agent, caller, &id) {
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
                committed_create_record(caller, &request, sizing, &placed, proposed_unix_ms);
            tracing::info!(workstation = %id, tenant = %record.tenant, node = %record.node, "workstation created (answered from the leader's outcome)");
            return Ok(placement::remote_view(&record, None));
        }
    };
    tracing::info!(workstation = %id, tenant = %record.tenant, node = %record.node, "workstation created");
    Ok(view(agent, &record).await)
}

/// Lists the caller's workstations (all of them for an admin key).
pub async fn list(agent: &Agent, caller: &Caller) -> Vec<Workstation> {
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
        .filter_map(|id| visible(agent, caller, id).ok())
        .collect();
    let observed = placement::observe_remote(agent, &records).await;
    let mut views = Vec::with_capacity(records.len());
    for ws in &records {
        views.push(view_observed(agent, ws, &observed).await);
    }
    views
}

/// Shows one workstation.
pub async fn show(agent: &Agent, caller: &Caller, id: &str) -> Result<Workstation, ServiceError> {
    let ws = visible(agent, caller, id)?;
    Ok(view(agent, &ws).await)
}

/// Resizes a workstation in place when its node has room.
pub async fn resize(
    agent: &Agent,
    caller: &Caller,
    id: &str,
    request: ResizeWorkstationRequest,
) -> Result<Workstation, ServiceError> {
    refuse_if_stopping(agent)?;
    let ws = visible(agent, caller, id)?;
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
        return Err(ServiceError::Unsatisfiable(
            "the new reservation is larger than any node".to_string(),
        ));
    }
    let ws_id: shoal_raft::model::WorkstationId = ws
        .id
        .parse()
        .map_err(|_| ServiceError::not_found("workstation", &ws.id))?;
    agent
        .propose_for(
            caller,
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
        .map_err(retry_when_room)?;
    // Raft checked the room and holds the new size (the answer reads it from there); the
    // hosting record follows as a cache. A local disk error must not turn a committed resize
    // into a failure answer.
    let new_reservation = shoal_raft::model::Resources::new(cpu_millis, memory_bytes);
    let applied_here = until_applied(agent, |state| {
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
            model.resize_workstation(&ws.id, sizing)?;
        }
        Ok(())
    });
    if let Err(err) = cached {
        tracing::warn!(workstation = %ws.id, error = %err, "resize committed; the hosting record was not updated");
    }
    let updated = match visible(agent, caller, &ws.id) {
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
    Ok(view(agent, &updated).await)
}

/// Deletes a workstation: processes stopped, log discarded, the audit log keeps the record.
pub async fn delete(agent: &Agent, caller: &Caller, id: &str) -> Result<(), ServiceError> {
    let ws = visible(agent, caller, id)?;
    let ws_id: shoal_raft::model::WorkstationId = ws
        .id
        .parse()
        .map_err(|_| ServiceError::not_found("workstation", &ws.id))?;
    agent
        .propose_for(caller, shoal_raft::Action::DeleteWorkstation { id: ws_id })
        .await?;
    until_applied(agent, |state| !state.workstations.contains_key(&ws_id)).await;
    // The hosting node stops it when its reconcile sees the deletion; here at once.
    placement::reconcile(agent).await;
    tracing::info!(workstation = %ws.id, "workstation deleted");
    Ok(())
}

/// How long a client is told to wait when no node has room right now: room appears when a
/// workstation is deleted or shrunk, or a node joins or comes back.
const NO_ROOM_RETRY_AFTER_SECS: u64 = 5;

/// A 503 of a placement (no room now) with the [`NO_ROOM_RETRY_AFTER_SECS`] hint.
fn retry_when_room(err: ServiceError) -> ServiceError {
    match err {
        ServiceError::Unavailable { message, .. } => ServiceError::Unavailable {
            message,
            retry_after_secs: NO_ROOM_RETRY_AFTER_SECS,
        },
        other => other,
    }
}
