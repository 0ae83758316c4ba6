//! [`Lease`]: the node-side half of fencing. A node renews its lease each time the leader
//! acknowledges its heartbeat (using the time the heartbeat was *sent*), and stops every
//! workstation once the lease has expired. With a 5 s lease and a 10 s grace, a node stops its
//! workstations at least 4 s (minus the 1 s leader-confirmation window, see ARCHITECTURE) before
//! the leader can mark it down and re-place them.

/// Default lease: half the default heartbeat grace.
pub const LEASE_MS_DEFAULT: u64 = 5_000;

/// The lease for a cluster whose heartbeat grace is `grace_ms`: half the grace, at most
/// [`LEASE_MS_DEFAULT`] (5 s for the default 10 s grace). Half leaves the other half for the
/// leader's 1 s confirmation window and for the node to stop its workstations.
pub fn lease_ms_for_grace(grace_ms: u64) -> u64 {
    (grace_ms / 2).clamp(1, LEASE_MS_DEFAULT)
}

/// A lease measured on the node's own monotonic clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lease {
    duration_ms: u64,
    renewed_at_ms: Option<u64>,
}

impl Lease {
    /// A lease of `duration_ms`, not yet held.
    pub fn new(duration_ms: u64) -> Self {
        Self {
            duration_ms,
            renewed_at_ms: None,
        }
    }

    /// Renews from `sent_at_ms`: the time the acknowledged heartbeat was sent (not when the
    /// ack arrived), which is conservative. Never moves the renewal time back.
    pub fn renew(&mut self, sent_at_ms: u64) {
        self.renewed_at_ms = Some(self.renewed_at_ms.map_or(sent_at_ms, |t| t.max(sent_at_ms)));
    }

    /// True when never renewed, or when `now_ms` is at or past renewal + duration.
    pub fn expired(&self, now_ms: u64) -> bool {
        match self.renewed_at_ms {
            None => true,
            Some(at) => now_ms >= at.saturating_add(self.duration_ms),
        }
    }

    /// The lease's duration.
    pub fn duration_ms(&self) -> u64 {
        self.duration_ms
    }

    /// Changes the duration (the cluster's heartbeat grace changed); the renewal time stays.
    pub fn set_duration_ms(&mut self, duration_ms: u64) {
        self.duration_ms = duration_ms;
    }

    /// When the lease expires (renewal + duration), `None` when never renewed.
    pub fn expires_at_ms(&self) -> Option<u64> {
        self.renewed_at_ms
            .map(|at| at.saturating_add(self.duration_ms))
    }

    /// Milliseconds left, 0 when expired.
    pub fn remaining_ms(&self, now_ms: u64) -> u64 {
        self.renewed_at_ms.map_or(0, |at| {
            at.saturating_add(self.duration_ms).saturating_sub(now_ms)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lease_is_half_the_grace_and_at_most_five_seconds() {
        assert_eq!(lease_ms_for_grace(10_000), LEASE_MS_DEFAULT);
        assert_eq!(lease_ms_for_grace(4_000), 2_000);
        assert_eq!(lease_ms_for_grace(600_000), LEASE_MS_DEFAULT);
        assert_eq!(lease_ms_for_grace(1), 1, "never a zero lease");
    }

    #[test]
    fn a_changed_duration_moves_the_expiry_not_the_renewal() {
        let mut lease = Lease::new(5_000);
        assert_eq!(lease.expires_at_ms(), None);
        lease.renew(1_000);
        assert_eq!(lease.expires_at_ms(), Some(6_000));
        lease.set_duration_ms(2_000);
        assert_eq!(lease.duration_ms(), 2_000);
        assert_eq!(lease.expires_at_ms(), Some(3_000));
        assert!(lease.expired(3_000));
        assert!(!lease.expired(2_999));
    }
}
