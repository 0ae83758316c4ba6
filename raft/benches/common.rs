//! Shared helpers for the bench binaries.
#![allow(dead_code)]

use shoal_raft::apply::apply;
use shoal_raft::clock::Clock;
use shoal_raft::clock::SystemClock;
use shoal_raft::command::sha256_hex;
use shoal_raft::command::Admission;
use shoal_raft::command::NodeRegistration;
use shoal_raft::command::WorkstationRequest;
use shoal_raft::model::ClusterSettings;
use shoal_raft::model::Limit;
use shoal_raft::model::Resources;
use shoal_raft::model::Roles;
use shoal_raft::model::WorkstationSpec;
use shoal_raft::Action;
use shoal_raft::ClusterState;
use shoal_raft::Command;

pub const GIB: u64 = 1 << 30;
pub const JOIN_SECRET: &str = "bench-join";

/// Microsecond-ish stopwatch through the crate's clock seam (ms resolution; runs are long).
pub struct Stopwatch {
    clock: SystemClock,
    start_ms: u64,
}

impl Stopwatch {
    pub fn start() -> Self {
        let clock = SystemClock::new();
        let start_ms = clock.monotonic_ms();
        Self { clock, start_ms }
    }
    pub fn secs(&self) -> f64 {
        (self.clock.monotonic_ms() - self.start_ms).max(1) as f64 / 1000.0
    }
}

pub fn host_registration(i: u64) -> NodeRegistration {
    NodeRegistration {
        admission: Admission::Token {
            secret_sha256: sha256_hex(JOIN_SECRET),
        },
        wg_public_key: format!("wg-host-{i:06}"),
        endpoint: format!("198.51.100.{}:{}", i % 250, 51_000 + i % 1000),
        rpc_port: 7000,
        api_addr: None,
        roles: Roles::WORKER,
        capacity: Resources::new(64_000, 256 * GIB),
        reserve: Resources::new(1_000, 4 * GIB),
    }
}

pub fn ws_request(i: u64) -> WorkstationRequest {
    let cpu_millis = 100 + (i % 10) * 100;
    let memory_bytes = (256 << 20) * (1 + i % 8);
    WorkstationRequest {
        tenant: format!("tenant-{}", i % 1000),
        name: String::new(),
        spec: WorkstationSpec {
            reservation: Resources::new(cpu_millis, memory_bytes),
            limit: Limit {
                cpu_limit_millis: cpu_millis * 2,
                memory_limit_bytes: memory_bytes * 2,
            },
            network: Default::default(),
        },
    }
}

pub fn init_commands() -> Vec<Command> {
    vec![
        Command::new(
            0,
            "system",
            Action::InitCluster {
                cluster_id: "bench".into(),
                settings: ClusterSettings::default(),
            },
        ),
        Command::new(
            0,
            "admin",
            Action::CreateToken {
                secret_sha256: sha256_hex(JOIN_SECRET),
                prefix: "shoal1.test".to_string(),
                roles: Roles::WORKER,
                ttl_ms: 1_000_000_000,
                uses_max: 10_000,
            },
        ),
    ]
}

/// A state with `n_hosts` registered worker hosts, built by applying commands.
pub fn state_with_hosts(n_hosts: u64) -> ClusterState {
    let mut state = ClusterState::new();
    for command in init_commands() {
        let _ = apply(&mut state, &command);
    }
    for i in 0..n_hosts {
        let answer = apply(
            &mut state,
            &Command::new(1, "system", Action::RegisterNode(host_registration(i))),
        );
        assert!(answer.is_ok(), "{answer:?}");
    }
    state
}

/// Resident set size of this process in bytes.
pub fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<u64>().ok())
        })
        .map_or(0, |pages| pages * 4096)
}

/// CPU time (user + system) of this process in seconds.
pub fn cpu_secs() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    let Some(after) = stat.rsplit(')').next() else {
        return 0.0;
    };
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // After the ')' field 0 is the state; utime and stime are fields 11 and 12.
    (ticks(11) + ticks(12)) / 100.0
}
