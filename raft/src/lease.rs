//! [`Lease`]: the node-side half of fencing. A node renews its lease each time the leader
//! acknowledges its heartbeat (using the time the heartbeat was *sent*), and stops every
//! workstation once the lease has expired. With a 5 s lease and a 10 s grace, a node stops its
//! workstations at least 4 s (minus the 1 s leader-confirmation window, see ARCHITECTURE) before
//! the leader can mark it down and re-place them.

/// Default lease: half the default heartbeat grace.
pub const LEASE_MS_DEFAULT: u64 = 5_000;

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

    /// Milliseconds left, 0 when expired.
    pub fn remaining_ms(&self, now_ms: u64) -> u64 {
        self.renewed_at_ms.map_or(0, |at| {
            at.saturating_add(self.duration_ms).saturating_sub(now_ms)
        })
    }
}
