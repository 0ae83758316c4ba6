//! [`ClusterState`]: the replicated state, plus derived in-memory indexes that make placement
//! O(candidates) instead of O(nodes). The indexes are never serialised; they are rebuilt on
//! decode, so that the encoded state is exactly the durable data.

use std::cmp::Reverse;
use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::collections::VecDeque;
use std::ops::Deref;

use serde::Deserialize;
use serde::Serialize;

use crate::model::ApiKey;
use crate::model::ApiKeyId;
use crate::model::AuditEntry;
use crate::model::ClusterSettings;
use crate::model::JoinToken;
use crate::model::NodeId;
use crate::model::NodeRecord;
use crate::model::NodeState;
use crate::model::Resources;
use crate::model::Tenant;
use crate::model::TenantId;
use crate::model::TokenId;
use crate::model::Workstation;
use crate::model::WorkstationId;

/// The most audit entries the state keeps: 50,000 entries. Beyond it the oldest entries are
/// compacted away (dropped) by `apply`, identically on every replica. A typical entry encodes
/// to 57 bytes (measured: 50,000 `process.kill` entries add 2.9 MB to a snapshot) and takes
/// about 250 bytes of memory (five short strings), so the log costs at most about 3 MB of
/// snapshot and 12 MB of memory per server.
pub const AUDIT_LOG_ENTRIES_MAX: usize = 50_000;

/// The durable data of the cluster (what is encoded in snapshots).
///
/// The audit log is append-only and bounded by [`AUDIT_LOG_ENTRIES_MAX`] (oldest dropped
/// first); `seq` numbers keep counting, so a reader can tell how many were compacted.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct ClusterData {
    /// Set by `InitCluster`.
    pub cluster_id: Option<String>,
    /// Settings.
    pub settings: ClusterSettings,
    /// All nodes ever registered (left ones stay as tombstones).
    pub nodes: BTreeMap<NodeId, NodeRecord>,
    /// Next node id; ids are never reused.
    pub next_node_id: NodeId,
    /// Host offset of the next mesh address in the overlay range.
    pub next_mesh_host: u32,
    /// Join tokens by id.
    pub tokens: BTreeMap<TokenId, JoinToken>,
    /// Next token id.
    pub next_token_id: u64,
    /// API keys by id.
    pub api_keys: BTreeMap<ApiKeyId, ApiKey>,
    /// Next key id.
    pub next_api_key_id: u64,
    /// Tenants by name.
    pub tenants: BTreeMap<TenantId, Tenant>,
    /// Workstations by id.
    pub workstations: BTreeMap<WorkstationId, Workstation>,
    /// Next workstation id.
    pub next_workstation_id: u64,
    /// The newest audit entries, oldest first, at most [`AUDIT_LOG_ENTRIES_MAX`]. A
    /// `VecDeque` encodes exactly like a `Vec`, so the snapshot format is unchanged by it.
    pub audit: VecDeque<AuditEntry>,
}

/// Derived lookups, rebuilt from [`ClusterData`] on decode.
#[derive(Clone, Debug, Default)]
pub(crate) struct Index {
    /// Ready worker nodes ordered by free fraction (ppm, most free first), then id.
    pub(crate) placeable: BTreeSet<(Reverse<u64>, NodeId)>,
    /// Tenant → node → number of that tenant's workstations on the node.
    pub(crate) tenant_nodes: BTreeMap<TenantId, BTreeMap<NodeId, u32>>,
    /// Node → its workstations.
    pub(crate) node_workstations: BTreeMap<NodeId, BTreeSet<WorkstationId>>,
    /// Tenant → how many workstations it has, placed or pending (for its quota).
    pub(crate) tenant_workstations: BTreeMap<TenantId, u32>,
    /// Key hash → key id.
    pub(crate) api_key_by_hash: BTreeMap<String, ApiKeyId>,
    /// Token hash → token id.
    pub(crate) token_by_hash: BTreeMap<String, TokenId>,
    /// WireGuard public key → node id.
    pub(crate) node_by_wg_key: BTreeMap<String, NodeId>,
}

/// The replicated cluster state: read it through `Deref<Target = ClusterData>` and the query
/// methods; change it only through [`crate::apply::apply`].
#[derive(Clone, Debug, Default)]
pub struct ClusterState {
    pub(crate) data: ClusterData,
    pub(crate) index: Index,
    /// The commands applied most recently (the state machine records them; never encoded).
    pub(crate) journal: crate::journal::Journal,
}

impl PartialEq for ClusterState {
    fn eq(&self, other: &Self) -> bool {
        self.data == other.data
    }
}

impl Eq for ClusterState {}

// Read-only view of the durable data: `state.nodes`, `state.workstations`, ... Mutation is
// only possible inside this crate, through `apply`.
impl Deref for ClusterState {
    type Target = ClusterData;
    fn deref(&self) -> &ClusterData {
        &self.data
    }
}

impl Serialize for ClusterState {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.data.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for ClusterState {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(ClusterState::from_data(ClusterData::deserialize(
            deserializer,
        )?))
    }
}

/// Pool totals for the API, CLI and metrics (`used` comes from soft state, not from here).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PoolTotals {
    /// Sum of the capacity of ready and draining worker nodes.
    pub capacity: Resources,
    /// Sum of their allocatable (capacity − reserve).
    pub allocatable: Resources,
    /// Sum of the reservations placed on them.
    pub reserved: Resources,
}

/// Free fraction of a node in parts per million: the smaller of its CPU and memory fractions,
/// integer arithmetic so that every replica orders nodes identically.
pub(crate) fn free_ppm(node: &NodeRecord) -> u64 {
    let allocatable = node.allocatable();
    let free = node.free();
    let fraction = |free: u64, total: u64| -> u64 {
        if total == 0 {
            0
        } else {
            ((free as u128) * 1_000_000 / (total as u128)) as u64
        }
    };
    fraction(free.cpu_millis, allocatable.cpu_millis)
        .min(fraction(free.memory_bytes, allocatable.memory_bytes))
}

fn placeable_key(node: &NodeRecord) -> Option<(Reverse<u64>, NodeId)> {
    (node.state == NodeState::Ready && node.roles.worker)
        .then(|| (Reverse(free_ppm(node)), node.id))
}

impl Index {
    /// The indexes of `data`.
    fn build(data: &ClusterData) -> Self {
        let mut index = Index::placement_of(data);
        for node in data.nodes.values() {
            index
                .node_by_wg_key
                .insert(node.wg_public_key.clone(), node.id);
        }
        for key in data.api_keys.values() {
            index
                .api_key_by_hash
                .insert(key.secret_sha256.clone(), key.id);
        }
        for token in data.tokens.values() {
            index
                .token_by_hash
                .insert(token.secret_sha256.clone(), token.id);
        }
        index
    }

    /// Only the placement indexes of `data` (placeable nodes, per-tenant and per-node
    /// counts), the lookups left empty: what [`ClusterState::check_invariants`] compares,
    /// in O(nodes + workstations).
    fn placement_of(data: &ClusterData) -> Self {
        let mut index = Index::default();
        for node in data.nodes.values() {
            if let Some(key) = placeable_key(node) {
                index.placeable.insert(key);
            }
        }
        for ws in data.workstations.values() {
            *index
                .tenant_workstations
                .entry(ws.tenant.clone())
                .or_default() += 1;
            if let Some(node) = ws.node {
                *index
                    .tenant_nodes
                    .entry(ws.tenant.clone())
                    .or_default()
                    .entry(node)
                    .or_default() += 1;
                index
                    .node_workstations
                    .entry(node)
                    .or_default()
                    .insert(ws.id);
            }
        }
        index
    }
}

impl ClusterState {
    /// An empty, uninitialised state.
    pub fn new() -> Self {
        Self::default()
    }

    /// Wraps decoded data and builds the indexes.
    pub fn from_data(data: ClusterData) -> Self {
        Self {
            index: Index::build(&data),
            data,
            journal: crate::journal::Journal::default(),
        }
    }

    /// The commands the state machine applied most recently, with the applied index of this
    /// state when known: a worker mirror at an older index can be sent the commands after it.
    pub fn journal(&self) -> &crate::journal::Journal {
        &self.journal
    }

    /// Encodes the durable data (the snapshot format, versioned: see
    /// [`crate::state_format`]).
    pub fn encode(&self) -> Result<Vec<u8>, crate::codec::CodecError> {
        crate::state_format::encode(&self.data)
    }

    /// Decodes what [`ClusterState::encode`] produced (or an earlier release wrote) and
    /// rebuilds the indexes.
    pub fn decode(bytes: &[u8]) -> Result<Self, crate::codec::CodecError> {
        Ok(Self::from_data(crate::state_format::decode(bytes)?))
    }

    /// True once `InitCluster` was applied.
    pub fn is_initialized(&self) -> bool {
        self.data.cluster_id.is_some()
    }

    /// The active (not revoked) API key with this secret hash.
    pub fn api_key_by_hash(&self, secret_sha256: &str) -> Option<&ApiKey> {
        let id = self.index.api_key_by_hash.get(secret_sha256)?;
        self.data.api_keys.get(id).filter(|key| !key.revoked)
    }

    /// The newest `limit` audit entries at or after `since_ms` that `visible` lets through
    /// (it is given the entry's tenant), oldest first.
    pub fn audit_page(
        &self,
        since_ms: u64,
        limit: usize,
        visible: impl Fn(Option<&str>) -> bool,
    ) -> Vec<AuditEntry> {
        let mut page: Vec<AuditEntry> = self
            .data
            .audit
            .iter()
            .rev()
            // A filter, not a take_while: proposers' clocks may disagree, so times in log
            // order are not sorted.
            .filter(|entry| entry.ts_ms >= since_ms && visible(entry.tenant.as_deref()))
            .take(limit)
            .cloned()
            .collect();
        page.reverse();
        page
    }

    /// The node registered with this WireGuard public key.
    pub fn node_by_wg_key(&self, wg_public_key: &str) -> Option<&NodeRecord> {
        let id = self.index.node_by_wg_key.get(wg_public_key)?;
        self.data.nodes.get(id)
    }

    /// The workstations currently placed on a node (its assignments), in id order.
    pub fn workstations_on(&self, node: NodeId) -> impl Iterator<Item = &Workstation> + '_ {
        self.index
            .node_workstations
            .get(&node)
            .into_iter()
            .flatten()
            .filter_map(|id| self.data.workstations.get(id))
    }

    /// How many workstations are placed on a node (what it hosts, for its
    /// [`NodeRecord::workstations_max`]).
    pub fn hosted_count(&self, node: NodeId) -> u64 {
        self.index
            .node_workstations
            .get(&node)
            .map_or(0, |set| set.len() as u64)
    }

    /// How many workstations `tenant` has, placed or pending.
    pub fn tenant_workstation_count(&self, tenant: &str) -> u32 {
        self.index
            .tenant_workstations
            .get(tenant)
            .copied()
            .unwrap_or(0)
    }

    /// Voters should be added while the number of server nodes that are voters is below this.
    pub fn voter_target(&self) -> usize {
        usize::from(self.data.settings.voter_target)
    }

    /// Pool totals over ready and draining worker nodes.
    pub fn pool_totals(&self) -> PoolTotals {
        let mut totals = PoolTotals::default();
        for node in self.data.nodes.values() {
            if node.roles.worker && matches!(node.state, NodeState::Ready | NodeState::Draining) {
                totals.capacity = totals.capacity.saturating_add(&node.capacity);
                totals.allocatable = totals.allocatable.saturating_add(&node.allocatable());
                totals.reserved = totals.reserved.saturating_add(&node.reserved);
            }
        }
        totals
    }

    /// Checks the derived indexes and reservation sums against the data (tests and debug
    /// assertions): every node's `reserved` is the sum of its placements and never exceeds its
    /// allocatable capacity, and no node hosts more workstations than its maximum.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut sums: BTreeMap<NodeId, Resources> = BTreeMap::new();
        let mut counts: BTreeMap<NodeId, u64> = BTreeMap::new();
        for ws in self.data.workstations.values() {
            if let Some(node) = ws.node {
                let sum = sums.entry(node).or_default();
                *sum = sum.saturating_add(&ws.spec.reservation);
                *counts.entry(node).or_default() += 1;
                if !self.data.nodes.contains_key(&node) {
                    return Err(format!("{} placed on unknown node {node}", ws.id));
                }
            }
        }
        for node in self.data.nodes.values() {
            let sum = sums.get(&node.id).copied().unwrap_or_default();
            if sum != node.reserved {
                return Err(format!(
                    "node {} reserved {:?} but placements sum to {:?}",
                    node.id, node.reserved, sum
                ));
            }
            if !node.allocatable().fits(&node.reserved) {
                return Err(format!(
                    "node {} over-committed: reserved {:?} > allocatable {:?}",
                    node.id,
                    node.reserved,
                    node.allocatable()
                ));
            }
            let hosted = counts.get(&node.id).copied().unwrap_or(0);
            if let Some(max) = node.workstations_max {
                if hosted > u64::from(max) {
                    return Err(format!(
                        "node {} hosts {hosted} workstations, more than its maximum of {max}",
                        node.id
                    ));
                }
            }
        }
        // Rebuilt from a borrow, not a clone of the data, and only the placement indexes:
        // this runs after every apply in debug builds, where the audit log alone is up to
        // 50,000 entries and the key table 10,000.
        let rebuilt = Index::placement_of(&self.data);
        if rebuilt.placeable != self.index.placeable
            || rebuilt.tenant_nodes != self.index.tenant_nodes
            || rebuilt.node_workstations != self.index.node_workstations
            || rebuilt.tenant_workstations != self.index.tenant_workstations
        {
            return Err("derived index differs from a rebuild".to_string());
        }
        Ok(())
    }

    // ----- mutation helpers for apply and the scheduler (crate-private) -----

    /// Changes a node through `f`, keeping the placeable index in step.
    pub(crate) fn update_node<R>(
        &mut self,
        node_id: NodeId,
        f: impl FnOnce(&mut NodeRecord) -> R,
    ) -> Option<R> {
        let node = self.data.nodes.get_mut(&node_id)?;
        if let Some(key) = placeable_key(node) {
            self.index.placeable.remove(&key);
        }
        let result = f(node);
        if let Some(key) = placeable_key(node) {
            self.index.placeable.insert(key);
        }
        Some(result)
    }

    /// Puts a workstation on a node: accounts its reservation and updates the indexes.
    /// The caller has checked that it fits.
    pub(crate) fn attach(&mut self, ws_id: WorkstationId, node_id: NodeId) {
        let Some(ws) = self.data.workstations.get_mut(&ws_id) else {
            return;
        };
        debug_assert!(ws.node.is_none(), "attach of a placed workstation");
        ws.node = Some(node_id);
        let reservation = ws.spec.reservation;
        let tenant = ws.tenant.clone();
        self.update_node(node_id, |node| {
            node.reserved = node.reserved.saturating_add(&reservation);
        });
        *self
            .index
            .tenant_nodes
            .entry(tenant)
            .or_default()
            .entry(node_id)
            .or_default() += 1;
        self.index
            .node_workstations
            .entry(node_id)
            .or_default()
            .insert(ws_id);
    }

    /// Takes a workstation off its node, releasing its reservation.
    pub(crate) fn detach(&mut self, ws_id: WorkstationId) {
        let Some(ws) = self.data.workstations.get_mut(&ws_id) else {
            return;
        };
        let Some(node_id) = ws.node.take() else {
            return;
        };
        let reservation = ws.spec.reservation;
        let tenant = ws.tenant.clone();
        self.update_node(node_id, |node| {
            node.reserved = node.reserved.saturating_sub(&reservation);
        });
        if let Some(per_node) = self.index.tenant_nodes.get_mut(&tenant) {
            if let Some(count) = per_node.get_mut(&node_id) {
                *count -= 1;
                if *count == 0 {
                    per_node.remove(&node_id);
                }
            }
            if per_node.is_empty() {
                self.index.tenant_nodes.remove(&tenant);
            }
        }
        if let Some(set) = self.index.node_workstations.get_mut(&node_id) {
            set.remove(&ws_id);
            if set.is_empty() {
                self.index.node_workstations.remove(&node_id);
            }
        }
    }
}

/// Test support: clusters built directly from node records, without commands (for the pure
/// cores' unit tests).
#[cfg(test)]
pub(crate) mod test_support {
    use std::net::Ipv4Addr;

    use super::ClusterData;
    use super::ClusterState;
    use crate::model::NodeRecord;
    use crate::model::NodeState;
    use crate::model::Resources;
    use crate::model::Roles;

    /// One node of a test cluster: allocatable, what is reserved on it, state, worker role.
    #[derive(Clone, Copy, Debug)]
    pub(crate) struct TestNode {
        pub(crate) cpu_millis: u64,
        pub(crate) memory_bytes: u64,
        pub(crate) reserved: Resources,
        pub(crate) state: NodeState,
        pub(crate) worker: bool,
        pub(crate) workstations_max: Option<u32>,
    }

    /// A ready server+worker node with nothing reserved.
    pub(crate) fn ready_node(cpu_millis: u64, memory_bytes: u64) -> TestNode {
        TestNode {
            cpu_millis,
            memory_bytes,
            reserved: Resources::default(),
            state: NodeState::Ready,
            worker: true,
            workstations_max: None,
        }
    }

    /// An initialised cluster of the given nodes, ids from 1 (reservations set directly).
    pub(crate) fn cluster_of(nodes: &[TestNode]) -> ClusterState {
        let mut data = ClusterData {
            cluster_id: Some("c".to_string()),
            next_node_id: nodes.len() as u64 + 1,
            ..ClusterData::default()
        };
        for (i, node) in nodes.iter().enumerate() {
            let id = i as u64 + 1;
            data.nodes.insert(
                id,
                NodeRecord {
                    id,
                    wg_public_key: format!("k{id}"),
                    endpoint: "e".to_string(),
                    mesh_addr: Ipv4Addr::new(10, 42, 0, id as u8),
                    rpc_port: 1,
                    api_addr: None,
                    roles: if node.worker {
                        Roles::SERVER_WORKER
                    } else {
                        Roles::SERVER
                    },
                    capacity: Resources::new(node.cpu_millis, node.memory_bytes),
                    reserve: Resources::default(),
                    reserved: node.reserved,
                    state: node.state,
                    removing: false,
                    registered_ms: 0,
                    state_changed_ms: 0,
                    workstations_max: node.workstations_max,
                },
            );
        }
        ClusterState::from_data(data)
    }
}
