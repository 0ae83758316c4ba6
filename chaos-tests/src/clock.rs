//! The one place the harness reads time (DESIGN.md §2). Every other module takes times as
//! arguments, in milliseconds since the start of the run, so that histories are replayable.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A monotonic clock anchored at the start of a run; `now_ms` is what histories record.
#[derive(Clone, Copy, Debug)]
pub struct RunClock {
    start: Instant,
}

impl RunClock {
    /// Starts the run's clock now.
    #[allow(clippy::disallowed_methods)] // the clock module is the one allowed reader of time
    pub fn start() -> Self {
        Self {
            start: Instant::now(),
        }
    }

    /// Milliseconds since the run started.
    #[allow(clippy::disallowed_methods)] // the clock module is the one allowed reader of time
    pub fn now_ms(&self) -> u64 {
        u64::try_from(Instant::now().duration_since(self.start).as_millis()).unwrap_or(u64::MAX)
    }

    /// The instant `elapsed` after the start of the run, for deadlines.
    pub fn at(&self, elapsed: Duration) -> Instant {
        self.start + elapsed
    }

    /// Time left until `deadline_ms` (zero when it has passed).
    pub fn until_ms(&self, deadline_ms: u64) -> Duration {
        Duration::from_millis(deadline_ms.saturating_sub(self.now_ms()))
    }
}

/// Seconds since the Unix epoch on the host's wall clock (read only, for comparing a skewed
/// node's clock with the host's; the harness never sets the host clock).
#[allow(clippy::disallowed_methods)] // the clock module is the one allowed reader of time
pub fn wall_clock_unix_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A point in time after which a wait gives up.
#[derive(Clone, Copy, Debug)]
pub struct Deadline {
    at: Instant,
}

impl Deadline {
    /// The deadline `timeout` from now.
    #[allow(clippy::disallowed_methods)] // the clock module is the one allowed reader of time
    pub fn after(timeout: Duration) -> Self {
        Self {
            at: Instant::now() + timeout,
        }
    }

    /// Whether the deadline has passed.
    #[allow(clippy::disallowed_methods)] // the clock module is the one allowed reader of time
    pub fn expired(&self) -> bool {
        Instant::now() >= self.at
    }

    /// Time left (zero when expired).
    #[allow(clippy::disallowed_methods)] // the clock module is the one allowed reader of time
    pub fn remaining(&self) -> Duration {
        self.at.saturating_duration_since(Instant::now())
    }
}

/// Polls `condition` every `interval_ms` until it holds (true) or `timeout` passes (false).
/// For waiting on state outside the process (a port, a process state) that offers no event.
pub fn poll_until(
    timeout: Duration,
    interval_ms: u64,
    mut condition: impl FnMut() -> bool,
) -> bool {
    let deadline = Deadline::after(timeout);
    loop {
        if condition() {
            return true;
        }
        if deadline.expired() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(interval_ms).min(deadline.remaining()));
    }
}
