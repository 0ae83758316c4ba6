//! The seeded workload: which operation a client issues next. The sequence depends only on the
//! seed (never on outcomes), so a failing seed replays the same requests; a deleted
//! workstation's name is never used again, so every name identifies one workstation for life.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::history::OpKind;

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

    /// The next operation.
    pub fn next_op(&mut self) -> OpKind {
        // Weights: create 3, delete 1, resize 2, exec 2, run 2, follow 1.
        let can_create = self.live_keys.len() < self.config.workstations_max;
        let has_live = !self.live_keys.is_empty();
        loop {
            let roll = self.rng.gen_range(0..11);
            match roll {
                0..=2 if can_create => return self.create(),
                3 if has_live => {
                    let idx = self.rng.gen_range(0..self.live_keys.len());
                    let key = self.live_keys.remove(idx);
                    return OpKind::DeleteWorkstation { key };
                }
                4..=5 if has_live => {
                    let key = self.pick_live();
                    let (cpu_millis, memory_bytes) = self.size();
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
    use std::collections::BTreeSet;

    proptest! {
        #[test]
        fn same_seed_same_ops_and_names_are_never_reused(seed in any::<u64>(), client in 0u64..4) {
            let mut a = Workload::new(seed, client, WorkloadConfig::default());
            let mut b = Workload::new(seed, client, WorkloadConfig::default());
            let mut created = BTreeSet::new();
            let mut deleted = BTreeSet::new();
            for _ in 0..300 {
                let op = a.next_op();
                prop_assert_eq!(&op, &b.next_op());
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
        let names: BTreeSet<&str> = (0..500).map(|_| w.next_op().name()).collect();
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
}
