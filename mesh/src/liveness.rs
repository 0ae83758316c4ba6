//! `ConnectionLiveness`: is the peer at the other end of a QUIC connection still there?
//!
//! A live QUIC peer acknowledges every packet that carries a request within one round trip
//! plus its acknowledgement delay, whether or not its handler has answered yet. So "a request
//! was sent and, since then, not a single datagram arrived on the connection" for much longer
//! than a round trip means the peer's process is gone: killed, or restarted and no longer
//! holding the connection (a restarted process answers the old connection's packets with a
//! stateless reset, when the reset reaches us; this is the fallback when it does not). Silence
//! while nothing was sent says nothing: an idle connection is quiet.
//!
//! Pure: the caller passes the connection's received-datagram counter and `now`.

use std::time::{Duration, Instant};

/// The silence window of one connection (see the module doc).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ConnectionLiveness {
    /// The connection's received-datagram counter when last looked at.
    rx_datagrams_seen: u64,
    /// When the first request was sent after the last datagram seen; `None` when no request
    /// has been sent since.
    unanswered_since: Option<Instant>,
}

impl ConnectionLiveness {
    /// Notes that a request is being sent at `now`; returns the start of the silence window
    /// it belongs to (earlier than `now` if earlier requests are still unacknowledged).
    pub(crate) fn on_request_sent(&mut self, rx_datagrams: u64, now: Instant) -> Instant {
        self.observe(rx_datagrams);
        *self.unanswered_since.get_or_insert(now)
    }

    /// How long the peer has been silent while a request was waiting: zero if a datagram
    /// arrived since the last request was sent, or if none was sent.
    pub(crate) fn silent_for(&mut self, rx_datagrams: u64, now: Instant) -> Duration {
        self.observe(rx_datagrams);
        self.unanswered_since
            .map_or(Duration::ZERO, |since| now.saturating_duration_since(since))
    }

    /// An upper bound of [`Self::silent_for`] that needs no counter: the time since the
    /// silence window began, zero if none is open.
    pub(crate) fn window_age(&self, now: Instant) -> Duration {
        self.unanswered_since
            .map_or(Duration::ZERO, |since| now.saturating_duration_since(since))
    }

    fn observe(&mut self, rx_datagrams: u64) {
        if rx_datagrams != self.rx_datagrams_seen {
            // The peer sent something after every earlier request: it was alive then.
            self.rx_datagrams_seen = rx_datagrams;
            self.unanswered_since = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn an_idle_connection_is_never_silent() {
        let t0 = crate::clock::monotonic();
        let mut liveness = ConnectionLiveness::default();
        assert_eq!(liveness.silent_for(0, t0 + ms(60_000)), Duration::ZERO);
    }

    #[test]
    fn silence_counts_from_the_first_unanswered_request() {
        let t0 = crate::clock::monotonic();
        let mut liveness = ConnectionLiveness::default();
        assert_eq!(liveness.on_request_sent(5, t0), t0);
        // A second request while the first is unanswered joins the same window.
        assert_eq!(liveness.on_request_sent(5, t0 + ms(50)), t0);
        assert_eq!(liveness.silent_for(5, t0 + ms(300)), ms(300));
    }

    #[test]
    fn any_datagram_from_the_peer_ends_the_window() {
        let t0 = crate::clock::monotonic();
        let mut liveness = ConnectionLiveness::default();
        liveness.on_request_sent(5, t0);
        assert_eq!(liveness.silent_for(6, t0 + ms(300)), Duration::ZERO);
        // A request after that opens a new window.
        assert_eq!(liveness.on_request_sent(6, t0 + ms(400)), t0 + ms(400));
        assert_eq!(liveness.silent_for(6, t0 + ms(450)), ms(50));
    }

    proptest! {
        /// Against a model: the silence is the time since the earliest request sent after
        /// the last change of the received counter, and zero when there is none.
        #[test]
        fn silence_matches_the_model(
            steps in proptest::collection::vec((any::<bool>(), 0u64..3, 0u64..200), 1..60),
        ) {
            let t0 = crate::clock::monotonic();
            let mut liveness = ConnectionLiveness::default();
            let mut now = t0;
            let mut rx = 0u64;
            let mut model_since: Option<Instant> = None;
            for (send, rx_added, advance_ms) in steps {
                now += ms(advance_ms);
                if rx_added > 0 {
                    rx += rx_added;
                    model_since = None;
                }
                if send {
                    let since = liveness.on_request_sent(rx, now);
                    let expected = *model_since.get_or_insert(now);
                    prop_assert_eq!(since, expected);
                } else {
                    let expected = model_since.map_or(Duration::ZERO, |s| now - s);
                    let age = liveness.window_age(now);
                    prop_assert_eq!(liveness.silent_for(rx, now), expected);
                    prop_assert!(age >= expected, "the window age bounds the silence");
                }
            }
        }
    }
}
