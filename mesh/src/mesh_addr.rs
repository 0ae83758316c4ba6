//! Pure mesh address allocation from the cluster's overlay range (e.g. 10.77.0.0/16). The
//! leader's state machine calls it while committing a join.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

/// The default overlay range.
pub const DEFAULT_OVERLAY: &str = "10.77.0.0/16";

/// The lowest host address of `overlay` not in `taken` (network and broadcast addresses are
/// never handed out). Pass the addresses of current *and* removed nodes in `taken` if removed
/// addresses must not be reused. `None` when the range is full.
pub fn allocate_mesh_addr(overlay: Ipv4Net, taken: &BTreeSet<Ipv4Addr>) -> Option<Ipv4Addr> {
    overlay.hosts().find(|addr| {
        *addr != overlay.network() && *addr != overlay.broadcast() && !taken.contains(addr)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn first_address_is_dot_one_and_a_full_range_gives_none() {
        let net: Ipv4Net = "10.77.0.0/30".parse().unwrap();
        let mut taken = BTreeSet::new();
        assert_eq!(
            allocate_mesh_addr(net, &taken),
            Some(Ipv4Addr::new(10, 77, 0, 1))
        );
        taken.insert(Ipv4Addr::new(10, 77, 0, 1));
        assert_eq!(
            allocate_mesh_addr(net, &taken),
            Some(Ipv4Addr::new(10, 77, 0, 2))
        );
        taken.insert(Ipv4Addr::new(10, 77, 0, 2));
        assert_eq!(allocate_mesh_addr(net, &taken), None);
    }

    proptest! {
        #[test]
        fn allocated_address_is_inside_free_and_not_network_or_broadcast(
            taken in proptest::collection::btree_set(0u8..=255, 0..200)
        ) {
            let net: Ipv4Net = "10.77.3.0/24".parse().unwrap();
            let taken: BTreeSet<Ipv4Addr> = taken.into_iter().map(|b| Ipv4Addr::new(10, 77, 3, b)).collect();
            if let Some(addr) = allocate_mesh_addr(net, &taken) {
                prop_assert!(net.contains(&addr));
                prop_assert!(!taken.contains(&addr));
                prop_assert!(addr != net.network() && addr != net.broadcast());
            } else {
                prop_assert!(net.hosts().all(|a| taken.contains(&a)));
            }
        }
    }
}
