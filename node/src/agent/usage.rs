//! The node's CPU and memory: capacity once at start, live usage sampled every heartbeat
//! (sysinfo). The numbers feed `/v1/nodes`, `/v1/cluster` and `/metrics`.

use std::sync::atomic::{AtomicU64, Ordering};

use sysinfo::{CpuRefreshKind, MemoryRefreshKind, RefreshKind, System};

/// The node's capacity and last sampled usage.
#[derive(Debug)]
pub struct Usage {
    /// Total CPU, millicores (1000 per logical CPU).
    pub capacity_cpu_millis: u64,
    /// Total memory, bytes.
    pub capacity_memory_bytes: u64,
    used_cpu_millis: AtomicU64,
    used_memory_bytes: AtomicU64,
    last_sample_unix_ms: AtomicU64,
}

impl Usage {
    /// Reads the host's capacity.
    pub fn probe() -> (Usage, System) {
        let system = System::new_with_specifics(
            RefreshKind::nothing()
                .with_cpu(CpuRefreshKind::nothing().with_cpu_usage())
                .with_memory(MemoryRefreshKind::nothing().with_ram()),
        );
        let n_cpus = u64::try_from(system.cpus().len()).unwrap_or(1).max(1);
        let usage = Usage {
            capacity_cpu_millis: n_cpus * 1000,
            capacity_memory_bytes: system.total_memory(),
            used_cpu_millis: AtomicU64::new(0),
            used_memory_bytes: AtomicU64::new(system.used_memory()),
            last_sample_unix_ms: AtomicU64::new(0),
        };
        (usage, system)
    }

    /// Takes one sample (call every heartbeat interval; CPU usage is measured between calls).
    pub fn sample(&self, system: &mut System, now_unix_ms: u64) {
        system.refresh_cpu_usage();
        system.refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram());
        let percent = f64::from(system.global_cpu_usage()).clamp(0.0, 100.0);
        let used_cpu = (percent / 100.0 * self.capacity_cpu_millis as f64) as u64;
        self.used_cpu_millis.store(used_cpu, Ordering::Relaxed);
        self.used_memory_bytes
            .store(system.used_memory(), Ordering::Relaxed);
        self.last_sample_unix_ms
            .store(now_unix_ms, Ordering::Relaxed);
    }

    /// Live usage: (CPU millicores, memory bytes).
    pub fn used(&self) -> (u64, u64) {
        (
            self.used_cpu_millis.load(Ordering::Relaxed),
            self.used_memory_bytes.load(Ordering::Relaxed),
        )
    }

    /// When the last sample was taken (the single-node stand-in for the last heartbeat).
    pub fn last_sample_unix_ms(&self) -> u64 {
        self.last_sample_unix_ms.load(Ordering::Relaxed)
    }
}
