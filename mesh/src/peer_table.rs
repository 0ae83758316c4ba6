//! The pure peer table: which WireGuard peers a node has, following the committed node list.
//!
//! `apply` takes the whole desired peer list (the committed nodes minus this node) and returns
//! the changes to make (add, endpoint changed, remove). It does no I/O: the engine applies the
//! changes to its live tunnels. Lookups by mesh address, by public key and by the local session
//! index (the number boringtun puts in the upper 24 bits of `receiver_idx`) are what the data
//! plane needs to route and to accept packets.

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::identity::NodePublicKey;

/// Most peers a node keeps (a limit on everything): far above any Shoal cluster.
pub const PEERS_MAX: usize = 4096;

/// Session indexes are 24 bits wide (boringtun shifts them left by 8).
const INDEX_MASK: u32 = 0x00ff_ffff;

/// One desired peer, as the node crate derives it from the committed node list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerSpec {
    /// The peer's WireGuard public key (its identity).
    pub public_key: NodePublicKey,
    /// Where its WireGuard UDP port is reachable, if known (otherwise learned when it talks).
    pub endpoint: Option<SocketAddr>,
    /// Its address inside the mesh: the only source address accepted from it.
    pub mesh_addr: Ipv4Addr,
}

/// A peer in the table: its spec and the local index of its tunnel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerEntry {
    /// The configured peer.
    pub spec: PeerSpec,
    /// Local tunnel index (24 bits), unique for the life of the table, never reused while
    /// the table lives so that a removed peer's sessions can never match a new peer.
    pub index: u32,
}

/// A change the data plane has to make.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerChange {
    /// Create a tunnel for a new peer (or a peer whose mesh address changed: it was removed first).
    Added(PeerEntry),
    /// The configured endpoint of an existing peer changed.
    EndpointChanged {
        /// The peer.
        public_key: NodePublicKey,
        /// Its tunnel index.
        index: u32,
        /// The new endpoint.
        endpoint: Option<SocketAddr>,
    },
    /// Drop the peer's tunnel: its packets are refused from now on.
    Removed(PeerEntry),
}

/// Why a desired peer list was refused (nothing changes then).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PeerTableError {
    /// Two peers share a public key.
    #[error("duplicate public key {0}")]
    DuplicateKey(NodePublicKey),
    /// Two peers (or a peer and this node) share a mesh address.
    #[error("duplicate mesh address {0}")]
    DuplicateMeshAddr(Ipv4Addr),
    /// More than `PEERS_MAX` peers.
    #[error("{0} peers exceed the limit of {PEERS_MAX}")]
    TooMany(usize),
}

/// The peer table. See the module doc.
#[derive(Clone, Debug, Default)]
pub struct PeerTable {
    by_key: BTreeMap<NodePublicKey, PeerEntry>,
    key_by_mesh_addr: HashMap<Ipv4Addr, NodePublicKey>,
    key_by_index: HashMap<u32, NodePublicKey>,
    last_index: u32,
}

impl PeerTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes the table equal to `desired` (ignoring an entry with `own_key`, so the node can
    /// pass the whole committed node list) and returns the changes, removals first.
    pub fn apply(
        &mut self,
        own_key: NodePublicKey,
        own_mesh_addr: Ipv4Addr,
        desired: &[PeerSpec],
    ) -> Result<Vec<PeerChange>, PeerTableError> {
        let mut wanted: BTreeMap<NodePublicKey, &PeerSpec> = BTreeMap::new();
        let mut addrs: HashMap<Ipv4Addr, NodePublicKey> = HashMap::new();
        for spec in desired.iter().filter(|s| s.public_key != own_key) {
            if wanted.insert(spec.public_key, spec).is_some() {
                return Err(PeerTableError::DuplicateKey(spec.public_key));
            }
            if spec.mesh_addr == own_mesh_addr
                || addrs.insert(spec.mesh_addr, spec.public_key).is_some()
            {
                return Err(PeerTableError::DuplicateMeshAddr(spec.mesh_addr));
            }
        }
        if wanted.len() > PEERS_MAX {
            return Err(PeerTableError::TooMany(wanted.len()));
        }

        let mut changes = Vec::new();
        // Removals first (including peers whose mesh address changed), so that the address
        // is free before a new peer takes it.
        let stale: Vec<NodePublicKey> = self
            .by_key
            .iter()
            .filter(|(key, entry)| match wanted.get(*key) {
                None => true,
                Some(spec) => spec.mesh_addr != entry.spec.mesh_addr,
            })
            .map(|(key, _)| *key)
            .collect();
        for key in stale {
            if let Some(entry) = self.remove(&key) {
                changes.push(PeerChange::Removed(entry));
            }
        }
        for (key, spec) in wanted {
            match self.by_key.get_mut(&key) {
                Some(entry) => {
                    if entry.spec.endpoint != spec.endpoint {
                        entry.spec.endpoint = spec.endpoint;
                        changes.push(PeerChange::EndpointChanged {
                            public_key: key,
                            index: entry.index,
                            endpoint: spec.endpoint,
                        });
                    }
                }
                None => {
                    let index = self.allocate_index();
                    let entry = PeerEntry {
                        spec: spec.clone(),
                        index,
                    };
                    self.key_by_mesh_addr.insert(spec.mesh_addr, key);
                    self.key_by_index.insert(index, key);
                    self.by_key.insert(key, entry.clone());
                    changes.push(PeerChange::Added(entry));
                }
            }
        }
        Ok(changes)
    }

    fn remove(&mut self, key: &NodePublicKey) -> Option<PeerEntry> {
        let entry = self.by_key.remove(key)?;
        self.key_by_mesh_addr.remove(&entry.spec.mesh_addr);
        self.key_by_index.remove(&entry.index);
        Some(entry)
    }

    fn allocate_index(&mut self) -> u32 {
        // Monotonic, skipping 0 and indexes still in use after a wrap of the 24-bit space.
        loop {
            self.last_index = (self.last_index + 1) & INDEX_MASK;
            if self.last_index != 0 && !self.key_by_index.contains_key(&self.last_index) {
                return self.last_index;
            }
        }
    }

    /// The peer that owns this mesh address.
    pub fn by_mesh_addr(&self, addr: Ipv4Addr) -> Option<&PeerEntry> {
        self.key_by_mesh_addr
            .get(&addr)
            .and_then(|k| self.by_key.get(k))
    }

    /// The peer with this public key.
    pub fn by_public_key(&self, key: &NodePublicKey) -> Option<&PeerEntry> {
        self.by_key.get(key)
    }

    /// The peer whose tunnel has this local index.
    pub fn by_index(&self, index: u32) -> Option<&PeerEntry> {
        self.key_by_index
            .get(&index)
            .and_then(|k| self.by_key.get(k))
    }

    /// All peers, ordered by public key.
    pub fn entries(&self) -> impl Iterator<Item = &PeerEntry> {
        self.by_key.values()
    }

    /// Number of peers.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(n: u8) -> NodePublicKey {
        NodePublicKey([n; 32])
    }

    fn spec(n: u8, port: Option<u16>, addr: u8) -> PeerSpec {
        PeerSpec {
            public_key: key(n),
            endpoint: port.map(|p| SocketAddr::from(([127, 0, 0, 1], p))),
            mesh_addr: Ipv4Addr::new(10, 77, 0, addr),
        }
    }

    const OWN_ADDR: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);

    #[test]
    fn add_change_endpoint_and_remove_produce_exactly_those_changes() {
        let mut table = PeerTable::new();
        let changes = table
            .apply(key(0), OWN_ADDR, &[spec(0, None, 1), spec(2, Some(1), 2)])
            .unwrap();
        assert!(matches!(&changes[..], [PeerChange::Added(e)] if e.spec == spec(2, Some(1), 2)));
        let index = table.by_public_key(&key(2)).unwrap().index;

        let changes = table
            .apply(key(0), OWN_ADDR, &[spec(2, Some(9), 2)])
            .unwrap();
        assert_eq!(
            changes,
            vec![PeerChange::EndpointChanged {
                public_key: key(2),
                index,
                endpoint: Some(SocketAddr::from(([127, 0, 0, 1], 9)))
            }]
        );
        let changes = table.apply(key(0), OWN_ADDR, &[]).unwrap();
        assert!(matches!(&changes[..], [PeerChange::Removed(e)] if e.index == index));
        assert!(table.by_mesh_addr(Ipv4Addr::new(10, 77, 0, 2)).is_none());
        assert!(table.by_index(index).is_none());
    }

    #[test]
    fn mesh_address_change_is_a_removal_then_an_addition_with_a_new_index() {
        let mut table = PeerTable::new();
        table.apply(key(0), OWN_ADDR, &[spec(2, None, 2)]).unwrap();
        let old_index = table.by_public_key(&key(2)).unwrap().index;
        let changes = table.apply(key(0), OWN_ADDR, &[spec(2, None, 3)]).unwrap();
        assert!(matches!(&changes[0], PeerChange::Removed(e) if e.index == old_index));
        assert!(matches!(&changes[1], PeerChange::Added(e) if e.index != old_index));
    }

    #[test]
    fn duplicates_are_refused_and_change_nothing() {
        let mut table = PeerTable::new();
        table.apply(key(0), OWN_ADDR, &[spec(2, None, 2)]).unwrap();
        let before: Vec<_> = table.entries().cloned().collect();
        assert_eq!(
            table.apply(key(0), OWN_ADDR, &[spec(3, None, 3), spec(4, None, 3)]),
            Err(PeerTableError::DuplicateMeshAddr(Ipv4Addr::new(
                10, 77, 0, 3
            )))
        );
        assert_eq!(
            table.apply(key(0), OWN_ADDR, &[spec(3, None, 3), spec(3, None, 4)]),
            Err(PeerTableError::DuplicateKey(key(3)))
        );
        assert_eq!(
            table.apply(key(0), OWN_ADDR, &[spec(3, None, 1)]),
            Err(PeerTableError::DuplicateMeshAddr(OWN_ADDR))
        );
        let after: Vec<_> = table.entries().cloned().collect();
        assert_eq!(before, after);
    }

    proptest! {
        /// Model: after any sequence of updates the table holds exactly the last desired list
        /// (minus this node), lookups agree with each other, indexes are unique and never
        /// reused, and re-applying the same list changes nothing.
        #[test]
        fn table_follows_any_sequence_of_desired_lists(
            rounds in proptest::collection::vec(
                proptest::collection::btree_map(1u8..12, (proptest::option::of(1u16..4), 2u8..40), 0..8),
                1..12)
        ) {
            let mut table = PeerTable::new();
            let mut seen_indexes = std::collections::HashSet::new();
            for round in rounds {
                // Make mesh addresses unique the way the allocator would.
                let mut used = std::collections::HashSet::new();
                let desired: Vec<PeerSpec> = round
                    .iter()
                    .filter(|(_, (_, addr))| used.insert(*addr))
                    .map(|(k, (port, addr))| spec(*k, *port, *addr))
                    .collect();
                let changes = table.apply(key(0), OWN_ADDR, &desired).unwrap();
                for change in &changes {
                    if let PeerChange::Added(e) = change {
                        prop_assert!(seen_indexes.insert(e.index), "index reused");
                    }
                }
                prop_assert_eq!(table.len(), desired.len());
                for s in &desired {
                    let by_key = table.by_public_key(&s.public_key).unwrap();
                    prop_assert_eq!(&by_key.spec, s);
                    prop_assert_eq!(table.by_mesh_addr(s.mesh_addr).unwrap(), by_key);
                    prop_assert_eq!(table.by_index(by_key.index).unwrap(), by_key);
                }
                prop_assert!(table.apply(key(0), OWN_ADDR, &desired).unwrap().is_empty());
            }
        }
    }
}
