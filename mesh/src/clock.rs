//! The one place where the mesh reads the clock (DESIGN.md §2). Pure code takes `now` as an
//! argument; drivers call these functions and pass the result down.
#![allow(clippy::disallowed_methods)] // This module is the seam that is allowed to read time.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (wall clock), used for token expiry and join timestamps.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A monotonic instant, used for timeouts and latency measurements.
pub fn monotonic() -> Instant {
    Instant::now()
}
