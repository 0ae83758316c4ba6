//! The executor's one source of time (DESIGN.md §2).
//!
//! Everything in the executor that needs "now" asks a [`Clock`]; only this module reads the
//! operating system's clocks. Tests substitute a [`ManualClock`] and move time by hand, so that
//! restart backoff and crash-loop detection are deterministic.

// This module is the one place allowed to read the system clocks: `.clippy.toml` bans
// `Instant::now` and `SystemTime::now` everywhere else so that time stays behind this seam.
#![allow(clippy::disallowed_methods)]

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A source of time: a monotonic reading for durations and a wall-clock reading for timestamps.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// A monotonic instant, for measuring durations (uptime, backoff deadlines).
    fn now(&self) -> Instant;
    /// Wall-clock time in milliseconds since the Unix epoch, for timestamps shown to users
    /// (log records, exit events). It may jump; never use it to measure a duration.
    fn unix_ms(&self) -> u64;
}

/// The real clock of the host.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn unix_ms(&self) -> u64 {
        // A wall clock set before 1970 reads as 0 rather than failing: timestamps are
        // informational and must never take the executor down.
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|elapsed| u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    }
}

/// A clock that only moves when told to, for deterministic tests.
///
/// `now()` is a fixed base instant (taken once, at construction) plus the total advanced so
/// far; `unix_ms()` starts at the given wall time and advances by the same amounts.
#[derive(Debug)]
pub struct ManualClock {
    base_instant: Instant,
    state: Mutex<ManualClockState>,
}

#[derive(Debug, Clone, Copy)]
struct ManualClockState {
    elapsed: Duration,
    unix_ms_start: u64,
}

impl ManualClock {
    /// A manual clock whose wall time starts at `unix_ms_start`.
    pub fn new(unix_ms_start: u64) -> Self {
        Self {
            base_instant: Instant::now(),
            state: Mutex::new(ManualClockState {
                elapsed: Duration::ZERO,
                unix_ms_start,
            }),
        }
    }

    /// Moves both readings forward by `by`.
    pub fn advance(&self, by: Duration) {
        let mut state = self.lock();
        state.elapsed += by;
    }

    /// Moves both readings forward by `by_ms` milliseconds.
    pub fn advance_ms(&self, by_ms: u64) {
        self.advance(Duration::from_millis(by_ms));
    }

    /// Total time advanced since construction.
    pub fn elapsed(&self) -> Duration {
        self.lock().elapsed
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ManualClockState> {
        // The state is two plain numbers: a panic while holding the lock cannot leave it
        // inconsistent, so a poisoned lock is still safe to use.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new(1_700_000_000_000)
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.base_instant + self.lock().elapsed
    }

    fn unix_ms(&self) -> u64 {
        let state = *self.lock();
        let elapsed_ms = u64::try_from(state.elapsed.as_millis()).unwrap_or(u64::MAX);
        state.unix_ms_start.saturating_add(elapsed_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_advanced() {
        let clock = ManualClock::new(1_000);
        let start = clock.now();
        assert_eq!(clock.now(), start);
        assert_eq!(clock.unix_ms(), 1_000);
        clock.advance_ms(250);
        assert_eq!(clock.now() - start, Duration::from_millis(250));
        assert_eq!(clock.unix_ms(), 1_250);
    }

    #[test]
    fn system_clock_wall_time_is_after_2020() {
        assert!(SystemClock.unix_ms() > 1_577_836_800_000);
    }
}
