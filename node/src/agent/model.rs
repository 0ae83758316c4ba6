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

use shoal_executor::restart_policy::RestartPolicy;
use shoal_raft::model::NetworkPolicy;

use crate::api_types::{Workstation, WorkstationState};
use crate::service::ServiceError;

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
    /// Restart policy: the executor's, which the host starts the process with.
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
    /// Network policy as committed in Raft (with the allowlist's domains).
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
            network: crate::convert::network_kind(&self.network),
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
    /// Records a committed resize of a hosted workstation. Raft's scheduler checked the
    /// node's room when it committed it; this only keeps the hosting record in step.
    pub fn resize_workstation(&mut self, id: &str, new: Sizing) -> Result<(), ServiceError> {
        let Some(ws) = self.workstations.get_mut(id) else {
            return Err(ServiceError::not_found("workstation", id));
        };
        ws.cpu_millis = new.cpu_millis;
        ws.memory_bytes = new.memory_bytes;
        ws.cpu_limit_millis = new.cpu_limit_millis;
        ws.memory_limit_bytes = new.memory_limit_bytes;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    /// A resize sets all four sizes of the hosted record; an unknown workstation is
    /// `not_found` and changes nothing.
    #[test]
    fn resize_sets_every_size_and_an_unknown_workstation_is_not_found() {
        let mut model = Model::default();
        model
            .workstations
            .insert("a".to_string(), ws("a", 100, 200));
        let sizing = Sizing {
            cpu_millis: 300,
            memory_bytes: 400,
            cpu_limit_millis: 500,
            memory_limit_bytes: 600,
        };
        model.resize_workstation("a", sizing).unwrap();
        let record = &model.workstations["a"];
        assert_eq!(
            (
                record.cpu_millis,
                record.memory_bytes,
                record.cpu_limit_millis,
                record.memory_limit_bytes
            ),
            (300, 400, 500, 600)
        );
        let before = model.clone();
        let err = model.resize_workstation("b", sizing).unwrap_err();
        assert_eq!(err.code(), "not_found");
        assert_eq!(model, before);
    }
}
