//! The one place the node reads time (DESIGN.md §2).
//!
//! Everything else takes `now` as an argument or asks this module, so that tests can reason
//! about time and so that `.clippy.toml` can ban the direct calls elsewhere.

use std::time::{Duration, Instant, UNIX_EPOCH};

/// Wall-clock time as Unix milliseconds (for timestamps shown to users and in the audit log).
#[allow(clippy::disallowed_methods)] // This is the clock module: the one allowed reader.
pub fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis()
        .try_into()
        .unwrap_or(u64::MAX)
}

/// Monotonic time, for measuring durations (latencies, timeouts).
#[allow(clippy::disallowed_methods)] // This is the clock module: the one allowed reader.
pub fn monotonic_now() -> Instant {
    Instant::now()
}

/// Wall-clock time as Unix microseconds (for latency measurements between processes on one
/// host, e.g. the log follow benchmark).
#[allow(clippy::disallowed_methods)] // This is the clock module: the one allowed reader.
pub fn now_unix_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_micros()
        .try_into()
        .unwrap_or(u64::MAX)
}
