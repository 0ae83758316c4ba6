//! The encoding of [`ClusterData`] (a snapshot's data, a worker's mirror): one format-version
//! byte, then bincode of the data. bincode is positional, so a field added to a record changes
//! the format; the version byte says which layout follows, and the layouts of earlier versions
//! are kept here so that data written by an earlier release still decodes.
//!
//! - Version 1 (no version byte): the layout before [`NodeRecord::workstations_max`]. Its
//!   first byte is the tag of `cluster_id`'s `Option` (0 or 1); bincode refuses any other
//!   tag, so a byte of 2 or more can only be a version. It decodes with every node's
//!   `workstations_max` unset (no count bound until the node states it again, which it does
//!   at its next start).
//! - Version 2: the current [`ClusterData`].

use std::collections::BTreeMap;
use std::collections::VecDeque;
use std::net::Ipv4Addr;

use serde::Deserialize;
use serde::Serialize;

use crate::codec;
use crate::codec::CodecError;
use crate::model::ApiKey;
use crate::model::ApiKeyId;
use crate::model::AuditEntry;
use crate::model::ClusterSettings;
use crate::model::JoinToken;
use crate::model::NodeId;
use crate::model::NodeRecord;
use crate::model::NodeState;
use crate::model::Resources;
use crate::model::Roles;
use crate::model::Tenant;
use crate::model::TenantId;
use crate::model::TokenId;
use crate::model::Workstation;
use crate::model::WorkstationId;
use crate::state::ClusterData;

/// The version byte written before the data.
pub const FORMAT_VERSION: u8 = 2;

/// Encodes the data in the current format: the version byte, then the data.
pub fn encode(data: &ClusterData) -> Result<Vec<u8>, CodecError> {
    codec::encode(&(FORMAT_VERSION, data))
}

/// Decodes what [`encode`] wrote, or data of an earlier version.
pub fn decode(bytes: &[u8]) -> Result<ClusterData, CodecError> {
    match bytes.first().copied() {
        Some(FORMAT_VERSION) => {
            let (_, data): (u8, ClusterData) = codec::decode(bytes)?;
            Ok(data)
        }
        // Version 1 had no version byte: this is the tag of `cluster_id`'s `Option`.
        Some(0 | 1) => Ok(codec::decode::<ClusterDataV1>(bytes)?.into()),
        Some(version) => Err(CodecError::Decode(format!(
            "cluster state format version {version} is unknown (this build reads 1 to \
             {FORMAT_VERSION}): written by a newer release?"
        ))),
        None => Err(CodecError::Decode("empty cluster state".to_string())),
    }
}

/// Encodes the data in the current format behind a CRC32 (see [`codec::encode_checked`]).
pub fn encode_checked(data: &ClusterData) -> Result<Vec<u8>, CodecError> {
    codec::frame_checked(encode(data)?)
}

/// Verifies the CRC32 written by [`encode_checked`] and decodes the data.
pub fn decode_checked(framed: &[u8]) -> Result<ClusterData, CodecError> {
    decode(codec::verify_checked(framed)?)
}

/// [`NodeRecord`] in format version 1: without `workstations_max`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub(crate) struct NodeRecordV1 {
    pub(crate) id: NodeId,
    pub(crate) wg_public_key: String,
    pub(crate) endpoint: String,
    pub(crate) mesh_addr: Ipv4Addr,
    pub(crate) rpc_port: u16,
    pub(crate) api_addr: Option<String>,
    pub(crate) roles: Roles,
    pub(crate) capacity: Resources,
    pub(crate) reserve: Resources,
    pub(crate) reserved: Resources,
    pub(crate) state: NodeState,
    pub(crate) removing: bool,
    pub(crate) registered_ms: u64,
    pub(crate) state_changed_ms: u64,
}

impl From<NodeRecordV1> for NodeRecord {
    fn from(v1: NodeRecordV1) -> Self {
        NodeRecord {
            id: v1.id,
            wg_public_key: v1.wg_public_key,
            endpoint: v1.endpoint,
            mesh_addr: v1.mesh_addr,
            rpc_port: v1.rpc_port,
            api_addr: v1.api_addr,
            roles: v1.roles,
            capacity: v1.capacity,
            reserve: v1.reserve,
            reserved: v1.reserved,
            state: v1.state,
            removing: v1.removing,
            registered_ms: v1.registered_ms,
            state_changed_ms: v1.state_changed_ms,
            workstations_max: None,
        }
    }
}

/// [`ClusterData`] in format version 1: its nodes are [`NodeRecordV1`].
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub(crate) struct ClusterDataV1 {
    pub(crate) cluster_id: Option<String>,
    pub(crate) settings: ClusterSettings,
    pub(crate) nodes: BTreeMap<NodeId, NodeRecordV1>,
    pub(crate) next_node_id: NodeId,
    pub(crate) next_mesh_host: u32,
    pub(crate) tokens: BTreeMap<TokenId, JoinToken>,
    pub(crate) next_token_id: u64,
    pub(crate) api_keys: BTreeMap<ApiKeyId, ApiKey>,
    pub(crate) next_api_key_id: u64,
    pub(crate) tenants: BTreeMap<TenantId, Tenant>,
    pub(crate) workstations: BTreeMap<WorkstationId, Workstation>,
    pub(crate) next_workstation_id: u64,
    pub(crate) audit: VecDeque<AuditEntry>,
}

impl From<ClusterDataV1> for ClusterData {
    fn from(v1: ClusterDataV1) -> Self {
        ClusterData {
            cluster_id: v1.cluster_id,
            settings: v1.settings,
            nodes: v1
                .nodes
                .into_iter()
                .map(|(id, node)| (id, node.into()))
                .collect(),
            next_node_id: v1.next_node_id,
            next_mesh_host: v1.next_mesh_host,
            tokens: v1.tokens,
            next_token_id: v1.next_token_id,
            api_keys: v1.api_keys,
            next_api_key_id: v1.next_api_key_id,
            tenants: v1.tenants,
            workstations: v1.workstations,
            next_workstation_id: v1.next_workstation_id,
            audit: v1.audit,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::test_support::cluster_of;
    use crate::state::test_support::ready_node;

    /// The version-1 layout of `data`, as a release before the workstation maximum wrote it.
    fn as_v1(data: &ClusterData) -> ClusterDataV1 {
        ClusterDataV1 {
            cluster_id: data.cluster_id.clone(),
            settings: data.settings.clone(),
            nodes: data
                .nodes
                .iter()
                .map(|(id, node)| {
                    let v1 = NodeRecordV1 {
                        id: node.id,
                        wg_public_key: node.wg_public_key.clone(),
                        endpoint: node.endpoint.clone(),
                        mesh_addr: node.mesh_addr,
                        rpc_port: node.rpc_port,
                        api_addr: node.api_addr.clone(),
                        roles: node.roles,
                        capacity: node.capacity,
                        reserve: node.reserve,
                        reserved: node.reserved,
                        state: node.state,
                        removing: node.removing,
                        registered_ms: node.registered_ms,
                        state_changed_ms: node.state_changed_ms,
                    };
                    (*id, v1)
                })
                .collect(),
            next_node_id: data.next_node_id,
            next_mesh_host: data.next_mesh_host,
            tokens: data.tokens.clone(),
            next_token_id: data.next_token_id,
            api_keys: data.api_keys.clone(),
            next_api_key_id: data.next_api_key_id,
            tenants: data.tenants.clone(),
            workstations: data.workstations.clone(),
            next_workstation_id: data.next_workstation_id,
            audit: data.audit.clone(),
        }
    }

    #[test]
    fn state_written_before_the_workstation_maximum_still_decodes_without_one() {
        let state = cluster_of(&[ready_node(1000, 1 << 30), ready_node(2000, 2 << 30)]);
        for cluster_id in [Some("c".to_string()), None] {
            let mut data = state.data.clone();
            data.cluster_id = cluster_id;
            let v1_bytes = codec::encode(&as_v1(&data)).unwrap();
            let decoded = decode(&v1_bytes).unwrap();
            assert_eq!(decoded, data);
            assert!(decoded.nodes.values().all(|n| n.workstations_max.is_none()));
            let framed = codec::frame_checked(v1_bytes).unwrap();
            assert_eq!(decode_checked(&framed).unwrap(), data);
        }
    }

    #[test]
    fn current_state_round_trips_with_its_version_byte_and_an_unknown_version_is_refused() {
        let mut state = cluster_of(&[ready_node(1000, 1 << 30)]);
        if let Some(node) = state.data.nodes.get_mut(&1) {
            node.workstations_max = Some(7);
        }
        let bytes = encode(&state.data).unwrap();
        assert_eq!(bytes[0], FORMAT_VERSION);
        assert_eq!(decode(&bytes).unwrap(), state.data);
        assert_eq!(
            decode_checked(&encode_checked(&state.data).unwrap()).unwrap(),
            state.data
        );
        let mut newer = bytes.clone();
        newer[0] = FORMAT_VERSION + 1;
        let err = decode(&newer).unwrap_err().to_string();
        assert!(err.contains("format version 3 is unknown"), "{err}");
        assert!(decode(&[]).is_err());
    }
}
