//! This node's hosting records: the workstations placed on this node (spec, generation,
//! desired processes, the log epoch of their actor), with pure operations on them, kept in the
//! data dir by `store.rs`.
//!
//! Everything cluster-wide (API keys, join tokens, workstation specs and placements, the audit
//! log) lives in Raft; this file keeps only what the hosting node needs to restart its own
//! workstations before Raft has caught up. The operations are pure: they take inputs, check
//! them, and change the model or return an error, so they can be tested without disk or clock.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::api_types::{NetworkPolicy, RestartPolicy, Workstation, WorkstationState};
use crate::service::ServiceError;

/// At most this many workstations exist in the cluster.
// Placement moved to Raft's scheduler; the single-server check stays for its tests.
#[cfg_attr(not(test), allow(dead_code))]
pub const WORKSTATIONS_MAX: usize = 10_000;
/// How many characters of a secret are kept for display.
pub const SECRET_PREFIX_CHARS: usize = 12;

/// A desired process of a workstation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProcessSpec {
    /// Process id within the workstation.
    pub id: u64,
    /// Program and arguments.
    pub argv: Vec<String>,
    /// Extra environment.
    pub env: BTreeMap<String, String>,
    /// Working directory.
    pub cwd: Option<String>,
    /// Restart policy.
    pub restart: RestartPolicy,
    /// Creation time.
    pub created_unix_ms: u64,
    /// Set once the owner stopped it for good (TERM or KILL): it is not started again. Raft's
    /// committed `StopProcess` is the truth; this is its copy in the hosting record, which
    /// `placement::reconcile` keeps in step (and stops the process when it sets it).
    pub killed: bool,
    /// A `never` process whose first placement is over (its workstation was re-placed): this
    /// placement does not start it, and it is reported `exited` with reason `node_lost`.
    #[serde(default)]
    pub node_lost: bool,
}

/// A workstation's spec and placement.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct WorkstationRecord {
    /// Workstation id.
    pub id: String,
    /// Display name.
    pub name: Option<String>,
    /// Owning tenant.
    pub tenant: String,
    /// Node it is placed on.
    pub node: String,
    /// Placement generation.
    pub generation: u64,
    /// Reserved CPU.
    pub cpu_millis: u64,
    /// Reserved memory.
    pub memory_bytes: u64,
    /// CPU ceiling.
    pub cpu_limit_millis: u64,
    /// Memory ceiling.
    pub memory_limit_bytes: u64,
    /// Network policy.
    pub network: NetworkPolicy,
    /// Creation time.
    pub created_unix_ms: u64,
    /// Desired processes.
    pub processes: BTreeMap<u64, ProcessSpec>,
    /// The next process id.
    pub next_process_id: u64,
    /// How many times this node started the workstation's actor (the log's offset epoch).
    #[serde(default)]
    pub log_epoch: u64,
}

impl WorkstationRecord {
    /// The public view, given what the hosting node observes.
    pub fn view(
        &self,
        state: WorkstationState,
        isolation: &str,
        log_next_offset: u64,
    ) -> Workstation {
        Workstation {
            id: self.id.clone(),
            name: self.name.clone(),
            tenant: self.tenant.clone(),
            node: Some(self.node.clone()),
            state,
            generation: self.generation,
            cpu_millis: self.cpu_millis,
            memory_bytes: self.memory_bytes,
            cpu_limit_millis: self.cpu_limit_millis,
            memory_limit_bytes: self.memory_limit_bytes,
            network: self.network,
            created_unix_ms: self.created_unix_ms,
            home_volume: "node-local".to_string(),
            isolation: isolation.to_string(),
            log_next_offset,
            processes: Vec::new(),
            used: None,
            pending_reason: None,
        }
    }
}

/// A workstation's reservation and limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizing {
    /// Reserved CPU.
    pub cpu_millis: u64,
    /// Reserved memory.
    pub memory_bytes: u64,
    /// CPU ceiling.
    pub cpu_limit_millis: u64,
    /// Memory ceiling.
    pub memory_limit_bytes: u64,
}

/// This node's durable hosting state. Files written by earlier builds also hold keys, tokens
/// and audit counters; serde ignores those fields (they live in Raft now).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Model {
    /// Cluster id.
    pub cluster_id: String,
    /// The id of this (the only server) node.
    pub node_id: String,
    /// The workstations this node hosts, by id.
    pub workstations: BTreeMap<String, WorkstationRecord>,
}

/// Hex SHA-256 of a secret.
pub fn sha256_hex(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// The display prefix of a secret.
pub fn secret_prefix(secret: &str) -> String {
    secret.chars().take(SECRET_PREFIX_CHARS).collect()
}

impl Model {
    /// Sum of the reservations of all workstations placed on `node`.
    pub fn reserved_on(&self, node: &str) -> (u64, u64) {
        self.workstations
            .values()
            .filter(|ws| ws.node == node)
            .fold((0, 0), |(cpu, mem), ws| {
                (
                    cpu.saturating_add(ws.cpu_millis),
                    mem.saturating_add(ws.memory_bytes),
                )
            })
    }

    /// Places a new workstation on `node` if the reservation fits its allocatable capacity:
    /// 422 if it can never fit, 503 if it does not fit now.
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn place_workstation(
        &mut self,
        record: WorkstationRecord,
        allocatable_cpu_millis: u64,
        allocatable_memory_bytes: u64,
    ) -> Result<(), ServiceError> {
        if record.cpu_millis > allocatable_cpu_millis
            || record.memory_bytes > allocatable_memory_bytes
        {
            return Err(ServiceError::Unsatisfiable(format!(
                "the reservation ({} millicores, {} bytes) is larger than any node \
                 (largest allocatable: {} millicores, {} bytes)",
                record.cpu_millis,
                record.memory_bytes,
                allocatable_cpu_millis,
                allocatable_memory_bytes
            )));
        }
        if self.workstations.contains_key(&record.id) {
            return Err(ServiceError::Conflict(format!(
                "workstation `{}` already exists",
                record.id
            )));
        }
        if self.workstations.len() >= WORKSTATIONS_MAX {
            return Err(ServiceError::RateLimited {
                message: format!("at most {WORKSTATIONS_MAX} workstations"),
                retry_after_secs: 60,
            });
        }
        let (cpu, mem) = self.reserved_on(&record.node);
        if cpu.saturating_add(record.cpu_millis) > allocatable_cpu_millis
            || mem.saturating_add(record.memory_bytes) > allocatable_memory_bytes
        {
            return Err(ServiceError::Unavailable {
                message: format!(
                    "no node has room for {} millicores and {} bytes right now",
                    record.cpu_millis, record.memory_bytes
                ),
                retry_after_secs: 5,
            });
        }
        self.workstations.insert(record.id.clone(), record);
        Ok(())
    }

    /// Resizes a workstation in place if its node has room for the new reservation.
    pub fn resize_workstation(
        &mut self,
        id: &str,
        new: Sizing,
        allocatable_cpu_millis: u64,
        allocatable_memory_bytes: u64,
    ) -> Result<(), ServiceError> {
        let Sizing {
            cpu_millis,
            memory_bytes,
            cpu_limit_millis,
            memory_limit_bytes,
        } = new;
        let Some(current) = self.workstations.get(id) else {
            return Err(ServiceError::not_found("workstation", id));
        };
        if cpu_millis > allocatable_cpu_millis || memory_bytes > allocatable_memory_bytes {
            return Err(ServiceError::Unsatisfiable(
                "the new reservation is larger than any node".to_string(),
            ));
        }
        let (cpu, mem) = self.reserved_on(&current.node);
        let cpu_other = cpu.saturating_sub(current.cpu_millis);
        let mem_other = mem.saturating_sub(current.memory_bytes);
        if cpu_other.saturating_add(cpu_millis) > allocatable_cpu_millis
            || mem_other.saturating_add(memory_bytes) > allocatable_memory_bytes
        {
            return Err(ServiceError::Unavailable {
                message: "the workstation's node has no room for the new reservation now"
                    .to_string(),
                retry_after_secs: 5,
            });
        }
        if let Some(ws) = self.workstations.get_mut(id) {
            ws.cpu_millis = cpu_millis;
            ws.memory_bytes = memory_bytes;
            ws.cpu_limit_millis = cpu_limit_millis;
            ws.memory_limit_bytes = memory_limit_bytes;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ws(id: &str, cpu_millis: u64, memory_bytes: u64) -> WorkstationRecord {
        WorkstationRecord {
            id: id.to_string(),
            name: None,
            tenant: "t".to_string(),
            node: "n1".to_string(),
            generation: 1,
            cpu_millis,
            memory_bytes,
            cpu_limit_millis: cpu_millis,
            memory_limit_bytes: memory_bytes,
            network: NetworkPolicy::None,
            created_unix_ms: 0,
            processes: BTreeMap::new(),
            next_process_id: 1,
            log_epoch: 0,
        }
    }

    proptest! {
        /// Whatever sequence of creates and resizes, the reservations on the node never exceed
        /// its allocatable capacity, and a refusal changes nothing.
        #[test]
        fn placement_never_overcommits(ops in proptest::collection::vec((0u64..3000, 0u64..4000, any::<bool>(), 0usize..8), 1..60)) {
            let mut model = Model::default();
            for (index, (cpu, mem, resize, target)) in ops.into_iter().enumerate() {
                let before = model.clone();
                let result = if resize {
                    let id = format!("w{target}");
                    model.resize_workstation(&id, Sizing { cpu_millis: cpu, memory_bytes: mem, cpu_limit_millis: cpu, memory_limit_bytes: mem }, 4000, 8000)
                } else {
                    model.place_workstation(ws(&format!("w{}", index % 8), cpu, mem), 4000, 8000)
                };
                if result.is_err() {
                    prop_assert_eq!(&model, &before);
                }
                let (cpu_sum, mem_sum) = model.reserved_on("n1");
                prop_assert!(cpu_sum <= 4000 && mem_sum <= 8000);
            }
        }
    }

    #[test]
    fn too_large_is_unsatisfiable_and_full_is_unavailable() {
        let mut model = Model::default();
        let err = model
            .place_workstation(ws("a", 5000, 1), 4000, 8000)
            .unwrap_err();
        assert_eq!(err.code(), "unsatisfiable");
        model
            .place_workstation(ws("b", 3000, 1), 4000, 8000)
            .unwrap();
        let err = model
            .place_workstation(ws("c", 2000, 1), 4000, 8000)
            .unwrap_err();
        assert_eq!(err.code(), "unavailable");
    }
}
