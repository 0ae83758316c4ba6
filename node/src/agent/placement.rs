//! Workstations placed by the leader's scheduler (Raft `CreateWorkstation`), hosted by the node
//! they are placed on. The node's store keeps the hosting record (processes it started, the
//! log epoch); [`reconcile`] makes this node's hosted set follow Raft's placements: a new
//! placement on this node is recorded and its actor started, a workstation deleted from Raft
//! or placed elsewhere (a newer generation) is stopped (fencing).

use std::collections::BTreeMap;

use shoal_raft::model::{NetworkPolicy as RaftNetwork, Workstation as RaftWorkstation};
use tracing::{info, warn};

use super::model::{ProcessSpec, WorkstationRecord};
use super::Agent;
use crate::api_types::{NetworkPolicy, RestartPolicy};

/// The API's name of a Raft node id.
pub fn node_name(id: u64) -> String {
    format!("node-{id}")
}

/// The API's network policy of a Raft one.
pub fn network_of(policy: &RaftNetwork) -> NetworkPolicy {
    match policy {
        RaftNetwork::None => NetworkPolicy::None,
        RaftNetwork::Allowlist(_) => NetworkPolicy::Allowlist,
        RaftNetwork::Full => NetworkPolicy::Full,
    }
}

/// Raft's network policy of an API one.
pub fn raft_network_of(policy: NetworkPolicy) -> RaftNetwork {
    match policy {
        NetworkPolicy::None => RaftNetwork::None,
        NetworkPolicy::Allowlist => RaftNetwork::Allowlist(Vec::new()),
        NetworkPolicy::Full => RaftNetwork::Full,
    }
}

fn restart_of(policy: shoal_raft::model::RestartPolicy) -> RestartPolicy {
    match policy {
        shoal_raft::model::RestartPolicy::Never => RestartPolicy::Never,
        shoal_raft::model::RestartPolicy::OnFailure => RestartPolicy::OnFailure,
        shoal_raft::model::RestartPolicy::Always => RestartPolicy::Always,
    }
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

/// The hosting record of a Raft workstation placed on `node`.
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
                    restart: restart_of(process.restart),
                    created_unix_ms: process.created_ms,
                    killed: false,
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
        network: network_of(&ws.spec.network),
        created_unix_ms: ws.created_ms,
        next_process_id: ws.next_process_id,
        processes,
        log_epoch: log_epoch_above(ws.log_offset_floor),
    }
}

/// What failed while reconciling: the workstation, the process (if it was one) and why.
pub type Failure = (String, Option<u64>, crate::api::error::ApiError);

/// Makes the workstations hosted here follow Raft: starts the ones newly placed on this node
/// and their new desired processes, and stops the ones deleted or placed elsewhere. Serialised
/// by the agent's reconcile lock (the loop and the API handlers both call it).
pub async fn reconcile(agent: &Agent) -> Vec<Failure> {
    let _serialised = agent.reconcile_lock.lock().await;
    let mut failures: Vec<Failure> = Vec::new();
    let own = agent.raft.id();
    let placed: Vec<RaftWorkstation> = agent.raft.read(|state| {
        state
            .workstations
            .values()
            .filter(|ws| ws.node == Some(own))
            .cloned()
            .collect()
    });
    let placed_ids: BTreeMap<String, u64> = placed
        .iter()
        .map(|ws| (ws.id.to_string(), ws.generation))
        .collect();
    let hosted: Vec<(String, u64)> = agent.store.read(|model| {
        model
            .workstations
            .values()
            .map(|ws| (ws.id.clone(), ws.generation))
            .collect()
    });
    for (id, generation) in &hosted {
        // Records of the single-server store (ids not from Raft) are left alone.
        if id.parse::<shoal_raft::model::WorkstationId>().is_err() {
            continue;
        }
        let current = placed_ids.get(id);
        if current.is_none_or(|current| current != generation) {
            let gone = agent.raft.read(|state| {
                id.parse()
                    .ok()
                    .and_then(|ws_id| state.workstations.get(&ws_id))
                    .is_none_or(|ws| ws.node != Some(own))
            });
            if gone {
                info!(workstation = %id, "placement left this node: stopping");
                agent.host.remove(id, 2_000).await;
                let _ = agent.store.write(|model| {
                    model.workstations.remove(id);
                    Ok(())
                });
            }
        }
    }
    for ws in placed {
        let id = ws.id.to_string();
        let known = agent.store.read(|model| {
            model
                .workstations
                .get(&id)
                .map(|record| record.processes.keys().copied().collect::<Vec<u64>>())
        });
        if let Some(known) = known {
            // Hosted already: start the desired processes added since.
            for process in ws.processes.values().filter(|p| !known.contains(&p.id.0)) {
                let spec = record_of(&ws, &agent.node_id)
                    .processes
                    .remove(&process.id.0);
                let Some(spec) = spec else { continue };
                let _ = agent.store.write(|model| {
                    if let Some(record) = model.workstations.get_mut(&id) {
                        record.processes.insert(spec.id, spec.clone());
                        record.next_process_id = record.next_process_id.max(spec.id + 1);
                    }
                    Ok(())
                });
                if let Err(err) = agent.host.start_process(&id, &spec).await {
                    warn!(workstation = %id, proc = spec.id, error = %err, "could not start process");
                    failures.push((id.clone(), Some(spec.id), err));
                }
            }
            continue;
        }
        let record = record_of(&ws, &agent.node_id);
        let inserted = agent.store.write(|model| {
            model.workstations.insert(id.clone(), record.clone());
            Ok(())
        });
        if let Err(err) = inserted {
            warn!(workstation = %id, error = %err, "could not record a placement");
            failures.push((id.clone(), None, err));
            continue;
        }
        if let Err(err) = agent.host.ensure(&record) {
            warn!(workstation = %id, error = %err, "could not start a placed workstation");
            let _ = agent.store.write(|model| {
                model.workstations.remove(&id);
                Ok(())
            });
            failures.push((id.clone(), None, err));
            continue;
        }
        for spec in record.processes.values() {
            if let Err(err) = agent.host.start_process(&id, spec).await {
                warn!(workstation = %id, proc = spec.id, error = %err, "could not start process");
            }
        }
        info!(workstation = %id, generation = ws.generation, "placed workstation started here");
    }
    failures
}

/// Runs [`reconcile`] whenever the applied Raft state changes.
pub async fn reconcile_loop(agent: std::sync::Arc<Agent>) {
    let mut applied = agent.raft.subscribe_applied();
    loop {
        reconcile(&agent).await;
        if applied.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// A re-placed workstation's log starts at or above the floor Raft committed.
        #[test]
        fn the_log_epoch_starts_at_or_above_the_floor(floor in 0u64..(1 << 60)) {
            let start = log_epoch_above(floor) << super::super::host::LOG_EPOCH_SHIFT;
            prop_assert!(start >= floor);
        }
    }
}
