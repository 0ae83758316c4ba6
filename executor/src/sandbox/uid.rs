//! Allocation of unprivileged user ids, one per live sandbox.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

/// A range of user ids owned by one node; each live sandbox holds a distinct one.
#[derive(Debug)]
pub struct UidPool {
    first_uid: u32,
    uid_count: u32,
    in_use: Mutex<BTreeSet<u32>>,
}

/// A user id held by a sandbox; returned to the pool on drop.
#[derive(Debug)]
pub struct UidLease {
    uid: u32,
    pool: Arc<UidPool>,
}

impl UidLease {
    /// The user id (also used as the group id).
    pub fn uid(&self) -> u32 {
        self.uid
    }
}

impl Drop for UidLease {
    fn drop(&mut self) {
        if let Ok(mut in_use) = self.pool.in_use.lock() {
            in_use.remove(&self.uid);
        }
    }
}

impl UidPool {
    /// A pool of `uid_count` ids starting at `first_uid`.
    pub fn new(first_uid: u32, uid_count: u32) -> Arc<Self> {
        Arc::new(UidPool {
            first_uid,
            uid_count: uid_count.max(1),
            in_use: Mutex::new(BTreeSet::new()),
        })
    }

    /// The first id of the range derived from a node id, so that nodes sharing a host get
    /// different ranges (65,536 ids each, in 4,096 slots above 100,000).
    pub fn first_uid_for_node(node_id: &str) -> u32 {
        // FNV-1a: stable across builds and platforms, unlike std's hasher.
        let mut hash: u32 = 0x811c_9dc5;
        for byte in node_id.bytes() {
            hash ^= u32::from(byte);
            hash = hash.wrapping_mul(0x0100_0193);
        }
        100_000 + (hash % 4096) * 65_536
    }

    /// Whether `uid` belongs to this pool's range.
    pub fn contains(&self, uid: u32) -> bool {
        uid >= self.first_uid && uid - self.first_uid < self.uid_count
    }

    /// Takes `preferred` if it is in range and free (a workstation whose home already belongs to
    /// it), otherwise the lowest free id. None when the range is exhausted.
    pub fn allocate(self: &Arc<Self>, preferred: Option<u32>) -> Option<UidLease> {
        let mut in_use = self.in_use.lock().ok()?;
        let uid = match preferred {
            Some(uid) if self.contains(uid) && !in_use.contains(&uid) => uid,
            _ => (self.first_uid..self.first_uid.saturating_add(self.uid_count))
                .find(|uid| !in_use.contains(uid))?,
        };
        in_use.insert(uid);
        Some(UidLease {
            uid,
            pool: Arc::clone(self),
        })
    }

    /// Ids currently held.
    pub fn n_in_use(&self) -> usize {
        self.in_use.lock().map(|in_use| in_use.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn live_leases_are_distinct_and_in_range(
            operations in proptest::collection::vec((any::<bool>(), 0u32..40), 1..200)
        ) {
            let pool = UidPool::new(5000, 16);
            let mut leases: Vec<UidLease> = Vec::new();
            for (take, preferred) in operations {
                if take {
                    if let Some(lease) = pool.allocate(Some(5000 + preferred)) {
                        leases.push(lease);
                    } else {
                        prop_assert_eq!(leases.len(), 16);
                    }
                } else if !leases.is_empty() {
                    leases.remove(preferred as usize % leases.len());
                }
                let mut uids: Vec<u32> = leases.iter().map(UidLease::uid).collect();
                prop_assert!(uids.iter().all(|uid| pool.contains(*uid)));
                uids.sort_unstable();
                uids.dedup();
                prop_assert_eq!(uids.len(), leases.len());
                prop_assert_eq!(pool.n_in_use(), leases.len());
            }
        }
    }

    #[test]
    fn node_ranges_stay_inside_u32_and_above_system_ids() {
        for node in ["a", "node-1", "node-2", "ffffffffffffffff"] {
            let first = UidPool::first_uid_for_node(node);
            assert!(first >= 100_000);
            assert!(first.checked_add(65_536).is_some());
        }
    }
}
