//! The crate's one seam for time (DESIGN.md §2). Everything else takes `now` as an argument or
//! holds a [`Clock`]; tests use [`ManualClock`].

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

/// A source of time: monotonic milliseconds for durations (grace, lease) and wall-clock Unix
/// milliseconds for command timestamps.
pub trait Clock: Send + Sync + 'static {
    /// Monotonic milliseconds since an arbitrary origin; never goes back.
    fn monotonic_ms(&self) -> u64;
    /// Unix time in milliseconds (for `Command::at_ms` and the audit log).
    fn unix_ms(&self) -> u64;
}

/// The real clock.
#[derive(Debug, Clone)]
pub struct SystemClock {
    origin: Instant,
}

impl SystemClock {
    /// A clock whose monotonic origin is now.
    #[allow(clippy::disallowed_methods)] // The crate's one reading of the real clock.
    pub fn new() -> Self {
        Self {
            origin: Instant::now(),
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    fn monotonic_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    #[allow(clippy::disallowed_methods)] // The crate's one reading of the wall clock.
    fn unix_ms(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

/// A clock moved by hand, for tests. Both readings advance together.
#[derive(Debug, Clone, Default)]
pub struct ManualClock {
    now_ms: Arc<AtomicU64>,
}

impl ManualClock {
    /// A clock at `start_ms`.
    pub fn new(start_ms: u64) -> Self {
        Self {
            now_ms: Arc::new(AtomicU64::new(start_ms)),
        }
    }

    /// Moves time forward.
    pub fn advance_ms(&self, delta_ms: u64) {
        self.now_ms.fetch_add(delta_ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn monotonic_ms(&self) -> u64 {
        self.now_ms.load(Ordering::SeqCst)
    }

    fn unix_ms(&self) -> u64 {
        self.now_ms.load(Ordering::SeqCst)
    }
}
