//! Pure replay protection for join packets: a join request carries a timestamp and a random
//! nonce; a member accepts it only if the timestamp is within the window of its own clock and
//! the nonce was not seen within the window. Together with the token use count and the
//! idempotent "already a member" answer, a replayed join packet never admits twice.

use std::collections::{BTreeMap, HashMap};

use crate::admission::JoinRefusal;

/// How far a join request's timestamp may be from the member's clock.
pub const JOIN_WINDOW_MS: u64 = 120_000;
/// Most nonces remembered (a limit on memory under a flood of valid-looking packets).
pub const REPLAY_NONCES_MAX: usize = 65_536;

/// Seen nonces within the window. See the module doc.
#[derive(Debug, Default)]
pub struct ReplayWindow {
    seen: HashMap<[u8; 16], u64>,
    by_time: BTreeMap<(u64, [u8; 16]), ()>,
}

impl ReplayWindow {
    /// An empty window.
    pub fn new() -> Self {
        Self::default()
    }

    /// Accepts `(nonce, timestamp_ms)` once, if fresh; records it.
    pub fn check_and_record(
        &mut self,
        nonce: [u8; 16],
        timestamp_ms: u64,
        now_ms: u64,
    ) -> Result<(), JoinRefusal> {
        self.expire(now_ms);
        if timestamp_ms.abs_diff(now_ms) > JOIN_WINDOW_MS || self.seen.contains_key(&nonce) {
            return Err(JoinRefusal::StaleOrReplayed);
        }
        if self.seen.len() >= REPLAY_NONCES_MAX {
            return Err(JoinRefusal::Unavailable("too many join requests".into()));
        }
        self.seen.insert(nonce, timestamp_ms);
        self.by_time.insert((timestamp_ms, nonce), ());
        Ok(())
    }

    fn expire(&mut self, now_ms: u64) {
        // An entry can be forgotten once its timestamp is outside the window: a replay of it
        // would be refused by the timestamp check anyway.
        let cutoff = now_ms.saturating_sub(JOIN_WINDOW_MS);
        while let Some((&(ts, nonce), ())) = self.by_time.iter().next() {
            if ts >= cutoff {
                break;
            }
            self.by_time.remove(&(ts, nonce));
            self.seen.remove(&nonce);
        }
    }

    /// Number of remembered nonces.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether no nonce is remembered.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_replay_is_refused_and_stale_or_future_requests_too() {
        let mut window = ReplayWindow::new();
        let now = 1_000_000;
        assert_eq!(window.check_and_record([1; 16], now, now), Ok(()));
        assert_eq!(
            window.check_and_record([1; 16], now, now + 5),
            Err(JoinRefusal::StaleOrReplayed)
        );
        assert_eq!(
            window.check_and_record([2; 16], now - JOIN_WINDOW_MS - 1, now),
            Err(JoinRefusal::StaleOrReplayed)
        );
        assert_eq!(
            window.check_and_record([3; 16], now + JOIN_WINDOW_MS + 1, now),
            Err(JoinRefusal::StaleOrReplayed)
        );
    }

    proptest! {
        /// Whatever the sequence, a (nonce) is accepted at most once while its timestamp is
        /// inside the window, and memory stays bounded by the window.
        #[test]
        fn each_nonce_is_accepted_at_most_once_within_the_window(
            events in proptest::collection::vec((0u8..8, 0u64..400_000, 0u64..400_000), 0..100)
        ) {
            let mut window = ReplayWindow::new();
            let mut accepted: Vec<(u8, u64)> = Vec::new();
            let mut now = 0u64;
            for (nonce, ts, advance) in events {
                now += advance / 50;
                if window.check_and_record([nonce; 16], ts, now).is_ok() {
                    for (n, t) in &accepted {
                        // Accepted before with a timestamp still inside the window: replay.
                        prop_assert!(!(*n == nonce && t + JOIN_WINDOW_MS >= now));
                    }
                    accepted.push((nonce, ts));
                }
            }
        }
    }
}
