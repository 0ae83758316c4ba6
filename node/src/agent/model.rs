//! The durable state of a single-server cluster: API keys, join tokens, workstation specs and
//! placements, desired processes and the audit log, with pure operations on it.
//!
//! This is what Raft replicates in a multi-server cluster; here the agent is the only server,
//! so the state lives in one file in the data dir (see `store.rs`). The operations are pure:
//! they take `now` and inputs, check them, and change the model or return an error, so they can
//! be tested without disk or clock.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::api::error::ApiError;
use crate::api_types::{
    AuditEntry, NetworkPolicy, RestartPolicy, TokenInfo, Workstation, WorkstationState,
};

/// At most this many audit entries are kept (the oldest are dropped first).
pub const AUDIT_ENTRIES_MAX: usize = 10_000;
/// At most this many API keys exist (revoked ones included).
pub const KEYS_MAX: usize = 10_000;
/// At most this many join tokens exist (revoked ones included).
pub const TOKENS_MAX: usize = 1_000;
/// At most this many workstations exist in the cluster.
// Placement moved to Raft's scheduler; the single-server check stays for its tests.
#[cfg_attr(not(test), allow(dead_code))]
pub const WORKSTATIONS_MAX: usize = 10_000;
/// How many characters of a secret are kept for display.
pub const SECRET_PREFIX_CHARS: usize = 12;

/// An API key as stored: its SHA-256, never the key.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct KeyRecord {
    /// Key id.
    pub id: String,
    /// First characters of the key.
    pub prefix: String,
    /// Hex SHA-256 of the full key.
    pub sha256: String,
    /// Tenant.
    pub tenant: String,
    /// Admin key.
    pub admin: bool,
    /// Creation time.
    pub created_unix_ms: u64,
    /// Revoked.
    pub revoked: bool,
}

/// A join token as stored: its SHA-256, never the token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TokenRecord {
    /// Token id.
    pub id: String,
    /// First characters of the token.
    pub prefix: String,
    /// Hex SHA-256 of the token.
    pub sha256: String,
    /// Roles it admits.
    pub role: String,
    /// Creation time.
    pub created_unix_ms: u64,
    /// Expiry time.
    pub expires_unix_ms: u64,
    /// Joins admitted in total (`None`: unlimited).
    pub uses_max: Option<u32>,
    /// Joins admitted so far.
    pub uses: u32,
    /// Revoked.
    pub revoked: bool,
}

impl TokenRecord {
    /// The public listing.
    pub fn info(&self) -> TokenInfo {
        TokenInfo {
            id: self.id.clone(),
            prefix: self.prefix.clone(),
            role: self.role.clone(),
            created_unix_ms: self.created_unix_ms,
            expires_unix_ms: self.expires_unix_ms,
            uses_max: self.uses_max,
            uses: self.uses,
            revoked: self.revoked,
        }
    }
}

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
    /// Set once the owner killed it: it is not started again.
    pub killed: bool,
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

/// The whole durable state.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Model {
    /// Cluster id.
    pub cluster_id: String,
    /// The id of this (the only server) node.
    pub node_id: String,
    /// API keys by id.
    pub keys: BTreeMap<String, KeyRecord>,
    /// Join tokens by id.
    pub tokens: BTreeMap<String, TokenRecord>,
    /// Workstations by id.
    pub workstations: BTreeMap<String, WorkstationRecord>,
    /// The newest audit entries, oldest first, bounded by [`AUDIT_ENTRIES_MAX`]. Not part of
    /// the state file: the store appends them to their own file (`audit.jsonl`).
    #[serde(skip)]
    pub audit: VecDeque<AuditEntry>,
    /// The next audit sequence number.
    pub audit_next_seq: u64,
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
    /// Appends an audit entry (dropping the oldest beyond the bound).
    pub fn audit(
        &mut self,
        now_unix_ms: u64,
        actor: &str,
        tenant: &str,
        action: &str,
        resource: &str,
        outcome: &str,
    ) {
        let entry = AuditEntry {
            seq: self.audit_next_seq,
            time_unix_ms: now_unix_ms,
            actor: actor.to_string(),
            tenant: tenant.to_string(),
            action: action.to_string(),
            resource: resource.to_string(),
            outcome: outcome.to_string(),
        };
        self.audit_next_seq += 1;
        self.audit.push_back(entry);
        while self.audit.len() > AUDIT_ENTRIES_MAX {
            self.audit.pop_front();
        }
    }

    /// Adds a key record.
    pub fn add_key(&mut self, record: KeyRecord) -> Result<(), ApiError> {
        if self.keys.len() >= KEYS_MAX {
            return Err(ApiError::RateLimited {
                message: format!("at most {KEYS_MAX} API keys"),
                retry_after_secs: 60,
            });
        }
        self.keys.insert(record.id.clone(), record);
        Ok(())
    }

    /// Adds a token record.
    pub fn add_token(&mut self, record: TokenRecord) -> Result<(), ApiError> {
        if self.tokens.len() >= TOKENS_MAX {
            return Err(ApiError::RateLimited {
                message: format!("at most {TOKENS_MAX} join tokens"),
                retry_after_secs: 60,
            });
        }
        self.tokens.insert(record.id.clone(), record);
        Ok(())
    }

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
    ) -> Result<(), ApiError> {
        if record.cpu_millis > allocatable_cpu_millis
            || record.memory_bytes > allocatable_memory_bytes
        {
            return Err(ApiError::Unsatisfiable(format!(
                "the reservation ({} millicores, {} bytes) is larger than any node \
                 (largest allocatable: {} millicores, {} bytes)",
                record.cpu_millis,
                record.memory_bytes,
                allocatable_cpu_millis,
                allocatable_memory_bytes
            )));
        }
        if self.workstations.contains_key(&record.id) {
            return Err(ApiError::Conflict(format!(
                "workstation `{}` already exists",
                record.id
            )));
        }
        if self.workstations.len() >= WORKSTATIONS_MAX {
            return Err(ApiError::RateLimited {
                message: format!("at most {WORKSTATIONS_MAX} workstations"),
                retry_after_secs: 60,
            });
        }
        let (cpu, mem) = self.reserved_on(&record.node);
        if cpu.saturating_add(record.cpu_millis) > allocatable_cpu_millis
            || mem.saturating_add(record.memory_bytes) > allocatable_memory_bytes
        {
            return Err(ApiError::Unavailable {
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
    ) -> Result<(), ApiError> {
        let Sizing {
            cpu_millis,
            memory_bytes,
            cpu_limit_millis,
            memory_limit_bytes,
        } = new;
        let Some(current) = self.workstations.get(id) else {
            return Err(ApiError::not_found("workstation", id));
        };
        if cpu_millis > allocatable_cpu_millis || memory_bytes > allocatable_memory_bytes {
            return Err(ApiError::Unsatisfiable(
                "the new reservation is larger than any node".to_string(),
            ));
        }
        let (cpu, mem) = self.reserved_on(&current.node);
        let cpu_other = cpu.saturating_sub(current.cpu_millis);
        let mem_other = mem.saturating_sub(current.memory_bytes);
        if cpu_other.saturating_add(cpu_millis) > allocatable_cpu_millis
            || mem_other.saturating_add(memory_bytes) > allocatable_memory_bytes
        {
            return Err(ApiError::Unavailable {
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

    #[test]
    fn audit_log_is_bounded_and_sequenced() {
        let mut model = Model::default();
        for i in 0..(AUDIT_ENTRIES_MAX + 5) {
            model.audit(i as u64, "k", "t", "a", "r", "ok");
        }
        assert_eq!(model.audit.len(), AUDIT_ENTRIES_MAX);
        assert_eq!(model.audit.front().map(|e| e.seq), Some(5));
    }
}
