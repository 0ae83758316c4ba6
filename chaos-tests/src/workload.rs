//! The seeded workload: which operation a client issues next. The sequence depends only on the
//! seed and on the [`PoolView`]s it is given (never on outcomes), so a failing seed replays the
//! same requests as long as the cluster stays below the pool target; a deleted workstation's
//! name is never used again, so every name identifies one workstation for life.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::checkers::desired_state::{NodeRoom, WorkstationStatus};
use crate::history::OpKind;

/// Above this share of the pool's allocatable capacity (in percent, in CPU or in memory)
/// reserved by the cluster's workstations, the workload stops creating and growing
/// workstations and deletes its own instead (also ones it has forgotten: a delete that failed
/// or timed out leaves a workstation the generator no longer tracks), until the share is back
/// below. Without a bound the population only grows over a long run (a 20-minute soak, seed
/// 4326430475747548734 on 6c0791f, leaked about 70 workstations until every node was full),
/// and a full cluster exercises nothing but "no room"; half the pool keeps placement,
/// re-placement after a node loss (the survivors must take the lost node's share) and resizes
/// in play.
pub const POOL_RESERVED_PERCENT_TARGET: u64 = 50;

/// What the workload knows of the cluster from the latest observation: how full the pool is
/// and which of its own workstations the cluster keeps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PoolView {
    /// Allocatable CPU of the ready worker nodes, summed; 0 while nothing was observed.
    pub cpu_allocatable_millis: u64,
    /// Allocatable memory of the ready worker nodes, summed.
    pub memory_allocatable_bytes: u64,
    /// CPU reserved by every workstation the cluster keeps (placed or pending).
    pub cpu_reserved_millis: u64,
    /// Memory reserved by every workstation the cluster keeps.
    pub memory_reserved_bytes: u64,
    /// Keys of the client's own workstations the cluster keeps, sorted.
    pub own_keys: Vec<String>,
}

impl PoolView {
    /// Client `client`'s view of one observation: the cluster's workstations and nodes.
    pub fn for_client(client: u64, workstations: &[WorkstationStatus], nodes: &[NodeRoom]) -> Self {
        let mut view = Self::default();
        for node in nodes.iter().filter(|n| n.state == "ready" && n.worker) {
            view.cpu_allocatable_millis = view
                .cpu_allocatable_millis
                .saturating_add(node.cpu_allocatable_millis);
            view.memory_allocatable_bytes = view
                .memory_allocatable_bytes
                .saturating_add(node.memory_allocatable_bytes);
        }
        for ws in workstations {
            view.cpu_reserved_millis = view.cpu_reserved_millis.saturating_add(ws.cpu_millis);
            view.memory_reserved_bytes = view.memory_reserved_bytes.saturating_add(ws.memory_bytes);
            if key_client(&ws.key) == Some(client) {
                view.own_keys.push(ws.key.clone());
            }
        }
        view.own_keys.sort();
        view
    }

    /// Whether the cluster's reservations are above [`POOL_RESERVED_PERCENT_TARGET`] of the
    /// allocatable pool, in CPU or in memory. An unobserved pool (0 allocatable) is not.
    pub fn above_target(&self) -> bool {
        let above = |reserved: u64, allocatable: u64| {
            allocatable > 0
                && u128::from(reserved) * 100
                    > u128::from(allocatable) * u128::from(POOL_RESERVED_PERCENT_TARGET)
        };
        above(self.cpu_reserved_millis, self.cpu_allocatable_millis)
            || above(self.memory_reserved_bytes, self.memory_allocatable_bytes)
    }
}

/// The client of a workload key `c<client>w<n>`.
pub fn key_client(key: &str) -> Option<u64> {
    let (client, n) = key.strip_prefix('c')?.split_once('w')?;
    n.parse::<u64>().ok()?;
    client.parse().ok()
}

/// Limits and choices of the workload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadConfig {
    /// At most this many workstations exist (as far as the generator knows) at once.
    pub workstations_max: usize,
    /// Reservation choices for CPU.
    pub cpu_millis_choices: Vec<u64>,
    /// Reservation choices for memory.
    pub memory_bytes_choices: Vec<u64>,
}

impl Default for WorkloadConfig {
    fn default() -> Self {
        Self {
            workstations_max: 4,
            cpu_millis_choices: vec![50, 100, 200],
            memory_bytes_choices: vec![16 << 20, 32 << 20, 64 << 20],
        }
    }
}

/// The shell script of a workstation's log producer: numbered lines (so gaps and duplicates
/// are visible), and the workstation's key in its command line (so the harness can find the
/// process on the host and tell which workstation it belongs to).
pub fn producer_script(key: &str) -> String {
    format!("i=0; while [ $i -lt 100000 ]; do echo {key}-$i; i=$((i+1)); sleep 0.1; done")
}

/// The text of a producer's command line that names workstation `key` (and no other key).
pub fn producer_pattern(key: &str) -> String {
    format!("do echo {key}-$i;")
}

/// The workstation key of a producer's command line, if it is one.
pub fn producer_key(cmdline: &str) -> Option<&str> {
    cmdline
        .split_once("do echo ")
        .and_then(|(_, rest)| rest.split_once("-$i;"))
        .map(|(key, _)| key)
}

/// Generates operations from a seed.
#[derive(Debug)]
pub struct Workload {
    rng: StdRng,
    config: WorkloadConfig,
    live_keys: Vec<String>,
    n_created: u64,
}

impl Workload {
    /// A generator for `seed`; `client` separates the streams of concurrent clients.
    pub fn new(seed: u64, client: u64, config: WorkloadConfig) -> Self {
        Self {
            rng: StdRng::seed_from_u64(seed ^ client.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
            config,
            live_keys: Vec::new(),
            // Names are `c<client>w<n>`: the client in the high half keeps them unique across
            // the clients of one run.
            n_created: client << 32,
        }
    }

    /// The workstations the generator believes exist.
    pub fn live_keys(&self) -> &[String] {
        &self.live_keys
    }

    /// The next operation, given the latest view of the pool. Above the pool target the
    /// create share goes to deleting the client's own workstations the cluster keeps (those
    /// it tracks and those it lost track of), and resizes shrink to the smallest size.
    pub fn next_op(&mut self, pool: &PoolView) -> OpKind {
        // Weights: create 3, delete 1, resize 2, exec 2, run 2, follow 1.
        let above_target = pool.above_target();
        let can_create = !above_target && self.live_keys.len() < self.config.workstations_max;
        let has_live = !self.live_keys.is_empty();
        loop {
            let roll = self.rng.gen_range(0..11);
            match roll {
                0..=2 if can_create => return self.create(),
                0..=2 if above_target && !pool.own_keys.is_empty() => {
                    let key = pool.own_keys[self.rng.gen_range(0..pool.own_keys.len())].clone();
                    self.live_keys.retain(|live| *live != key);
                    return OpKind::DeleteWorkstation { key };
                }
                3 if has_live => {
                    let idx = self.rng.gen_range(0..self.live_keys.len());
                    let key = self.live_keys.remove(idx);
                    return OpKind::DeleteWorkstation { key };
                }
                4..=5 if has_live => {
                    let key = self.pick_live();
                    let (cpu_millis, memory_bytes) = self.size();
                    let (cpu_millis, memory_bytes) = if above_target {
                        self.size_smallest()
                    } else {
                        (cpu_millis, memory_bytes)
                    };
                    return OpKind::ResizeWorkstation {
                        key,
                        cpu_millis,
                        memory_bytes,
                    };
                }
                6..=7 if has_live => {
                    let key = self.pick_live();
                    let script = producer_script(&key);
                    return OpKind::ExecProcess {
                        key,
                        argv: vec!["sh".into(), "-c".into(), script],
                    };
                }
                8..=9 => {
                    let n = self.rng.gen_range(0..1000u32);
                    return OpKind::Run {
                        argv: vec!["sh".into(), "-c".into(), format!("echo run-{n}")],
                    };
                }
                10 if has_live => {
                    let key = self.pick_live();
                    return OpKind::FollowLogs { key };
                }
                _ => continue,
            }
        }
    }

    fn create(&mut self) -> OpKind {
        let key = format!("c{}w{}", self.n_created >> 32, self.n_created & 0xFFFF_FFFF);
        self.n_created += 1;
        self.live_keys.push(key.clone());
        let (cpu_millis, memory_bytes) = self.size();
        OpKind::CreateWorkstation {
            key,
            cpu_millis,
            memory_bytes,
        }
    }

    fn pick_live(&mut self) -> String {
        let idx = self.rng.gen_range(0..self.live_keys.len());
        self.live_keys[idx].clone()
    }

    /// The smallest reservation the workload uses: a resize to it never grows.
    fn size_smallest(&self) -> (u64, u64) {
        let cpu = self.config.cpu_millis_choices.iter().min().copied();
        let mem = self.config.memory_bytes_choices.iter().min().copied();
        (cpu.unwrap_or(0), mem.unwrap_or(0))
    }

    fn size(&mut self) -> (u64, u64) {
        let cpu = self.config.cpu_millis_choices
            [self.rng.gen_range(0..self.config.cpu_millis_choices.len())];
        let mem = self.config.memory_bytes_choices[self
            .rng
            .gen_range(0..self.config.memory_bytes_choices.len())];
        (cpu, mem)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{BTreeMap, BTreeSet};

    proptest! {
        #[test]
        fn same_seed_same_ops_and_names_are_never_reused(seed in any::<u64>(), client in 0u64..4) {
            let mut a = Workload::new(seed, client, WorkloadConfig::default());
            let mut b = Workload::new(seed, client, WorkloadConfig::default());
            let mut created = BTreeSet::new();
            let mut deleted = BTreeSet::new();
            for _ in 0..300 {
                let op = a.next_op(&PoolView::default());
                prop_assert_eq!(&op, &b.next_op(&PoolView::default()));
                match &op {
                    OpKind::CreateWorkstation { key, .. } => prop_assert!(created.insert(key.clone())),
                    OpKind::DeleteWorkstation { key } => {
                        prop_assert!(created.contains(key));
                        prop_assert!(deleted.insert(key.clone()));
                    }
                    other => if let Some(key) = other.workstation_key() {
                        prop_assert!(created.contains(key) && !deleted.contains(key));
                    }
                }
                prop_assert!(a.live_keys().len() <= WorkloadConfig::default().workstations_max);
            }
        }
    }

    #[test]
    fn producer_command_line_names_exactly_its_workstation() {
        let cmdline = format!("sh -c {}", producer_script("c0w1"));
        assert_eq!(producer_key(&cmdline), Some("c0w1"));
        assert!(cmdline.contains(&producer_pattern("c0w1")));
        assert!(!cmdline.contains(&producer_pattern("c0w10")));
        assert!(!format!("sh -c {}", producer_script("c0w10")).contains(&producer_pattern("c0w1")));
        assert_eq!(producer_key("sleep 100"), None);
    }

    #[test]
    fn workload_exercises_every_operation_kind() {
        let mut w = Workload::new(42, 0, WorkloadConfig::default());
        let names: BTreeSet<&str> = (0..500)
            .map(|_| w.next_op(&PoolView::default()).name())
            .collect();
        for name in [
            "create_workstation",
            "delete_workstation",
            "resize_workstation",
            "exec_process",
            "run",
            "follow_logs",
        ] {
            assert!(names.contains(name), "{name} never generated");
        }
    }

    const GIB: u64 = 1 << 30;

    /// A pool of four ready worker nodes of 2000 m cpu and 24 GiB each, like the chaos
    /// cluster's, and the workstations it keeps.
    fn view(client: u64, cluster: &BTreeMap<String, (u64, u64)>) -> PoolView {
        let nodes: Vec<NodeRoom> = (0..4)
            .map(|i| NodeRoom {
                id: format!("node-{i}"),
                state: "ready".into(),
                worker: true,
                cpu_allocatable_millis: 2000,
                memory_allocatable_bytes: 24 * GIB,
                cpu_reserved_millis: 0,
                memory_reserved_bytes: 0,
                workstations_hosted: 0,
                workstations_max: None,
            })
            .collect();
        let workstations: Vec<WorkstationStatus> = cluster
            .iter()
            .map(|(key, (cpu, mem))| WorkstationStatus {
                key: key.clone(),
                state: "running".into(),
                node: Some("node-0".into()),
                cpu_millis: *cpu,
                memory_bytes: *mem,
            })
            .collect();
        PoolView::for_client(client, &workstations, &nodes)
    }

    /// Soak seed 4326430475747548734 on 6c0791f: deletes that failed or timed out left
    /// workstations the generator had forgotten, and over 20 minutes they filled every node.
    /// Here every other delete fails: the cluster's reservations must still stay near the
    /// target (one create per client may land past it before the next view), and creates,
    /// deletes and resizes must all keep happening.
    #[test]
    fn the_live_population_stays_below_the_pool_target_when_deletes_fail() {
        let n_clients = 3u64;
        let mut clients: Vec<Workload> = (0..n_clients)
            .map(|c| Workload::new(7, c, WorkloadConfig::default()))
            .collect();
        let mut cluster: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        let mut delete_fails = false;
        let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
        let mut above_seen = false;
        let target_cpu_millis = 4 * 2000 * POOL_RESERVED_PERCENT_TARGET / 100;
        let overshoot_cpu_millis = n_clients * 200;
        for _ in 0..5_000 {
            for (client, workload) in clients.iter_mut().enumerate() {
                let pool = view(client as u64, &cluster);
                above_seen |= pool.above_target();
                let op = workload.next_op(&pool);
                *counts.entry(op.name()).or_default() += 1;
                match op {
                    OpKind::CreateWorkstation {
                        key,
                        cpu_millis,
                        memory_bytes,
                    } => {
                        cluster.insert(key, (cpu_millis, memory_bytes));
                    }
                    OpKind::DeleteWorkstation { key } => {
                        delete_fails = !delete_fails;
                        if !delete_fails {
                            cluster.remove(&key);
                        }
                    }
                    OpKind::ResizeWorkstation {
                        key,
                        cpu_millis,
                        memory_bytes,
                    } => {
                        if let Some(size) = cluster.get_mut(&key) {
                            *size = (cpu_millis, memory_bytes);
                        }
                    }
                    _ => {}
                }
                let reserved: u64 = cluster.values().map(|(cpu, _)| cpu).sum();
                assert!(
                    reserved <= target_cpu_millis + overshoot_cpu_millis,
                    "{reserved} m cpu reserved by {} workstations",
                    cluster.len()
                );
            }
        }
        assert!(
            above_seen,
            "the run never reached the target: it proves nothing"
        );
        for name in [
            "create_workstation",
            "delete_workstation",
            "resize_workstation",
        ] {
            assert!(counts.get(name).copied().unwrap_or(0) > 100, "{counts:?}");
        }
    }

    #[test]
    fn above_the_target_a_client_deletes_only_its_own_workstations_and_never_grows_one() {
        let mut cluster = BTreeMap::new();
        // 4100 of 8000 m cpu: above 50 %. c1's workstations are not client 0's to delete.
        for n in 0..20 {
            cluster.insert(format!("c0w{n}"), (200, 32 << 20));
        }
        cluster.insert("c1w0".to_string(), (100, 32 << 20));
        let pool = view(0, &cluster);
        assert!(pool.above_target());
        assert_eq!(pool.own_keys.len(), 20);
        let mut w = Workload::new(3, 0, WorkloadConfig::default());
        let mut n_deletes = 0;
        for _ in 0..300 {
            match w.next_op(&pool) {
                OpKind::CreateWorkstation { .. } => panic!("created above the target"),
                OpKind::DeleteWorkstation { key } => {
                    assert_eq!(key_client(&key), Some(0), "{key}");
                    n_deletes += 1;
                }
                OpKind::ResizeWorkstation {
                    cpu_millis,
                    memory_bytes,
                    ..
                } => assert_eq!((cpu_millis, memory_bytes), (50, 16 << 20)),
                _ => {}
            }
        }
        assert!(n_deletes > 30, "{n_deletes}");
    }

    #[test]
    fn pool_target_is_checked_in_cpu_and_in_memory_and_an_unobserved_pool_is_below_it() {
        assert!(!PoolView::default().above_target());
        let at = |cpu: u64, mem: u64| PoolView {
            cpu_allocatable_millis: 1000,
            memory_allocatable_bytes: 1000,
            cpu_reserved_millis: cpu,
            memory_reserved_bytes: mem,
            own_keys: vec![],
        };
        assert!(
            !at(500, 500).above_target(),
            "exactly the target is not above it"
        );
        assert!(at(501, 0).above_target());
        assert!(at(0, 501).above_target());
    }

    #[test]
    fn key_client_reads_the_workload_names_only() {
        assert_eq!(key_client("c0w275"), Some(0));
        assert_eq!(key_client("c12w0"), Some(12));
        assert_eq!(key_client("ws-12"), None);
        assert_eq!(key_client("c1wx"), None);
        assert_eq!(key_client("cw1"), None);
    }
}
