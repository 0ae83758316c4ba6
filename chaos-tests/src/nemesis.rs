//! The nemesis schedule: which faults hit the cluster and when, picked from a seed.
//!
//! The same seed and configuration always give the same schedule, so a failing seed replays.
//! Targets that depend on the cluster at the time (the leader, a follower) are chosen when the
//! fault fires, from the fault's own `target_pick` number, so that replay stays deterministic
//! given the same cluster behaviour.

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// A kind of fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultMode {
    /// `kill -9` the leader, restart it after the fault's duration.
    KillLeader,
    /// `kill -9` a follower (a server that is not the leader), restart it later.
    KillFollower,
    /// `kill -9` a worker-only node, restart it later.
    KillWorker,
    /// SIGSTOP the leader for longer than the election timeout, then SIGCONT.
    PauseLeader,
    /// Cut the leader off with a minority of the servers.
    PartitionLeaderMinority,
    /// Split the nodes into a majority and a minority at random.
    PartitionMajorityMinority,
    /// Two halves that only talk through one bridge node.
    PartitionBridge,
    /// Packets from one node to another are dropped, the reverse direction passes.
    PartitionOneWay,
    /// Restart a node with its wall clock set back.
    ClockSkewRestart,
    /// Corrupt a stopped server's Raft data: it must refuse to start.
    CorruptRaftData,
    /// Remove a node from the cluster, then start it again with its old data: it must not get
    /// back in.
    RemovedNodeReturns,
    /// Fill the disk under a node's data dir.
    DiskFull,
}

impl FaultMode {
    /// Every fault mode, in a fixed order.
    pub const ALL: [FaultMode; 12] = [
        FaultMode::KillLeader,
        FaultMode::KillFollower,
        FaultMode::KillWorker,
        FaultMode::PauseLeader,
        FaultMode::PartitionLeaderMinority,
        FaultMode::PartitionMajorityMinority,
        FaultMode::PartitionBridge,
        FaultMode::PartitionOneWay,
        FaultMode::ClockSkewRestart,
        FaultMode::CorruptRaftData,
        FaultMode::RemovedNodeReturns,
        FaultMode::DiskFull,
    ];
}

/// What the schedule is generated from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NemesisConfig {
    /// The modes the run must cover; each is scheduled at least once.
    pub modes: Vec<FaultMode>,
    /// How many leader kills at least (for failover percentiles); 0 if `KillLeader` is not in
    /// `modes`.
    pub leader_kills_min: u32,
    /// Faults start no earlier than this (the cluster forms and the workload warms up first).
    pub warmup_ms: u64,
    /// Faults end no later than this; the rest of the run is for convergence.
    pub faults_end_ms_max: u64,
    /// Shortest fault.
    pub fault_ms_min: u64,
    /// Longest fault.
    pub fault_ms_max: u64,
    /// Shortest quiet gap after a fault (the cluster recovers before the next).
    pub heal_ms_min: u64,
    /// Longest quiet gap after a fault.
    pub heal_ms_max: u64,
    /// Upper bound on the number of faults in one schedule.
    pub faults_max: u32,
    /// A third of the follower and worker kills last this long instead (longer than the
    /// cluster's heartbeat grace, so the node is marked `down` and its workstations are
    /// re-placed); 0 disables it.
    #[serde(default)]
    pub node_lost_ms: u64,
    /// A soak is rounds of faults: after every this many faults the nemesis pauses until the
    /// cluster has converged (or the convergence limit has passed), so convergence is checked
    /// after every round, not only at the end; 0 never pauses (the quick scenario).
    #[serde(default)]
    pub pause_every_faults: u32,
}

impl NemesisConfig {
    /// Whether the nemesis pauses for convergence after fault `seq` of a schedule of
    /// `n_faults` (never after the last one: the run's end waits for convergence anyway).
    pub fn pauses_after(&self, seq: u64, n_faults: usize) -> bool {
        let every = u64::from(self.pause_every_faults);
        every > 0 && (seq + 1).is_multiple_of(every) && seq + 1 < n_faults as u64
    }
}

/// One fault in the schedule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduledFault {
    /// Position in the schedule.
    pub seq: u64,
    /// The mode.
    pub mode: FaultMode,
    /// When it starts, ms since the run started.
    pub start_ms: u64,
    /// How long it lasts before it is healed.
    pub duration_ms: u64,
    /// A random number the driver uses to choose targets among the candidates at fire time.
    pub target_pick: u64,
}

/// Why a schedule cannot be generated.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    /// The time window cannot hold every mandatory fault.
    #[error("the fault window ({window_ms} ms) cannot hold the {n_mandatory} mandatory faults")]
    WindowTooShort {
        /// The window between warmup and the end of faults.
        window_ms: u64,
        /// How many faults had to fit.
        n_mandatory: usize,
    },
    /// The configuration is inconsistent.
    #[error("invalid nemesis configuration: {0}")]
    Invalid(&'static str),
}

/// A seeded fault schedule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schedule {
    /// The seed it came from.
    pub seed: u64,
    /// The faults, in start order, never overlapping.
    pub faults: Vec<ScheduledFault>,
}

impl Schedule {
    /// Generates the schedule for `seed`: every configured mode at least once (and at least
    /// `leader_kills_min` leader kills), in a seeded order, then random extra faults while the
    /// window has room. Faults never overlap: each is followed by a quiet gap.
    pub fn generate(seed: u64, config: &NemesisConfig) -> Result<Schedule, ScheduleError> {
        if config.fault_ms_min > config.fault_ms_max || config.heal_ms_min > config.heal_ms_max {
            return Err(ScheduleError::Invalid("a minimum exceeds its maximum"));
        }
        if config.modes.is_empty() {
            return Ok(Schedule {
                seed,
                faults: Vec::new(),
            });
        }
        let mut rng = StdRng::seed_from_u64(seed);
        let mut mandatory: Vec<FaultMode> = config.modes.clone();
        if config.modes.contains(&FaultMode::KillLeader) {
            let extra = config.leader_kills_min.saturating_sub(1);
            mandatory.extend(std::iter::repeat_n(FaultMode::KillLeader, extra as usize));
        }
        if mandatory.len() > config.faults_max as usize {
            return Err(ScheduleError::Invalid(
                "faults_max is below the number of mandatory faults",
            ));
        }
        mandatory.shuffle(&mut rng);

        let window_ms = config.faults_end_ms_max.saturating_sub(config.warmup_ms);
        let mut faults = Vec::new();
        let mut t_ms = config.warmup_ms;
        let next = |mode: FaultMode, t_ms: &mut u64, rng: &mut StdRng| -> Option<ScheduledFault> {
            let mut duration_ms = rng.gen_range(config.fault_ms_min..=config.fault_ms_max);
            let node_lost = rng.gen_ratio(1, 3);
            if node_lost
                && config.node_lost_ms > 0
                && matches!(mode, FaultMode::KillFollower | FaultMode::KillWorker)
            {
                duration_ms = config.node_lost_ms;
            }
            let heal_ms = rng.gen_range(config.heal_ms_min..=config.heal_ms_max);
            let target_pick = rng.gen::<u64>();
            let start_ms = *t_ms;
            let end_ms = start_ms + duration_ms;
            if end_ms > config.faults_end_ms_max {
                return None;
            }
            *t_ms = end_ms + heal_ms;
            Some(ScheduledFault {
                seq: 0,
                mode,
                start_ms,
                duration_ms,
                target_pick,
            })
        };
        for mode in &mandatory {
            match next(*mode, &mut t_ms, &mut rng) {
                Some(fault) => faults.push(fault),
                None => {
                    return Err(ScheduleError::WindowTooShort {
                        window_ms,
                        n_mandatory: mandatory.len(),
                    })
                }
            }
        }
        while faults.len() < config.faults_max as usize {
            let mode = config.modes[rng.gen_range(0..config.modes.len())];
            match next(mode, &mut t_ms, &mut rng) {
                Some(fault) => faults.push(fault),
                None => break,
            }
        }
        for (seq, fault) in faults.iter_mut().enumerate() {
            fault.seq = seq as u64;
        }
        Ok(Schedule { seed, faults })
    }

    /// How many faults of `mode` are scheduled.
    pub fn count(&self, mode: FaultMode) -> usize {
        self.faults.iter().filter(|f| f.mode == mode).count()
    }

    /// The distinct modes scheduled.
    pub fn modes(&self) -> Vec<FaultMode> {
        let mut modes: Vec<FaultMode> = self.faults.iter().map(|f| f.mode).collect();
        modes.sort();
        modes.dedup();
        modes
    }
}

/// Picks one of `candidates` with a fault's `target_pick` (None when there are none).
pub fn pick<T: Copy>(candidates: &[T], target_pick: u64) -> Option<T> {
    if candidates.is_empty() {
        return None;
    }
    let idx = (target_pick % candidates.len() as u64) as usize;
    candidates.get(idx).copied()
}

/// What one server answered just before a leader kill (`GET /v1/cluster` and `/readyz`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerAnswer {
    /// The leader it names, if it knows one.
    pub leader: Option<String>,
    /// Its current Raft term.
    pub term: u64,
    /// How many Raft voters it lists.
    pub n_voters: usize,
    /// Whether its `/readyz` answered 200 (it holds a lease from an acknowledged heartbeat).
    pub ready: bool,
}

/// Whether the cluster is settled enough for a leader kill to measure failover: every server
/// the run expects is up and answered, all name the same leader in the same term, each lists
/// every server as a voter and is ready. `Ok((leader, term))` when settled, otherwise why not.
/// A kill of a cluster that is not settled (a voter still restarting, catching up, electing or
/// cut off) measures that fault as much as the failover, so its sample is reported apart.
pub fn kill_precondition(
    n_servers: usize,
    up_servers: &[usize],
    answers: &[Option<ServerAnswer>],
) -> Result<(String, u64), String> {
    if up_servers.len() < n_servers {
        return Err(format!("{} of {n_servers} servers up", up_servers.len()));
    }
    let mut agreed: Option<(String, u64)> = None;
    for (idx, answer) in up_servers.iter().zip(answers) {
        let Some(answer) = answer else {
            return Err(format!("server {idx} does not answer /v1/cluster"));
        };
        let Some(leader) = &answer.leader else {
            return Err(format!("server {idx} knows no leader"));
        };
        if answer.n_voters != n_servers {
            return Err(format!(
                "server {idx} lists {} of {n_servers} voters",
                answer.n_voters
            ));
        }
        if !answer.ready {
            return Err(format!("server {idx} is not ready (no lease)"));
        }
        match &agreed {
            None => agreed = Some((leader.clone(), answer.term)),
            Some((l, t)) if l == leader && *t == answer.term => {}
            Some((l, t)) => {
                return Err(format!(
                    "servers disagree on the leader: {l} in term {t}, server {idx} says {leader} in term {}",
                    answer.term
                ))
            }
        }
    }
    agreed.ok_or_else(|| "no server answered".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn config(modes: Vec<FaultMode>, leader_kills_min: u32, end_ms: u64) -> NemesisConfig {
        NemesisConfig {
            modes,
            leader_kills_min,
            warmup_ms: 5_000,
            faults_end_ms_max: end_ms,
            fault_ms_min: 1_000,
            fault_ms_max: 4_000,
            heal_ms_min: 1_000,
            heal_ms_max: 3_000,
            faults_max: 500,
            node_lost_ms: 15_000,
            pause_every_faults: 0,
        }
    }

    #[test]
    fn a_soak_pauses_after_every_round_but_not_after_the_last_fault() {
        let mut cfg = config(vec![FaultMode::KillLeader], 1, 600_000);
        assert!(
            (0..100).all(|seq| !cfg.pauses_after(seq, 100)),
            "quick never pauses"
        );
        cfg.pause_every_faults = 40;
        let pauses: Vec<u64> = (0..100).filter(|seq| cfg.pauses_after(*seq, 100)).collect();
        assert_eq!(pauses, vec![39, 79]);
        let pauses: Vec<u64> = (0..80).filter(|seq| cfg.pauses_after(*seq, 80)).collect();
        assert_eq!(pauses, vec![39]);
    }

    #[test]
    fn same_seed_gives_same_schedule_and_different_seeds_differ() {
        let cfg = config(FaultMode::ALL.to_vec(), 20, 600_000);
        let a = Schedule::generate(7, &cfg).unwrap();
        let b = Schedule::generate(7, &cfg).unwrap();
        let c = Schedule::generate(8, &cfg).unwrap();
        assert_eq!(a, b);
        assert_ne!(a.faults, c.faults);
    }

    #[test]
    fn too_short_window_is_refused_not_silently_truncated() {
        let cfg = config(FaultMode::ALL.to_vec(), 20, 20_000);
        assert!(matches!(
            Schedule::generate(1, &cfg),
            Err(ScheduleError::WindowTooShort { .. })
        ));
    }

    #[test]
    fn a_leader_kill_waits_for_every_server_up_ready_and_agreeing() {
        let answer = |_idx: usize, leader: Option<&str>, term: u64| {
            Some(ServerAnswer {
                leader: leader.map(str::to_string),
                term,
                n_voters: 3,
                ready: true,
            })
        };
        let all_up = [0, 1, 2];
        let settled = [
            answer(0, Some("n1"), 4),
            answer(1, Some("n1"), 4),
            answer(2, Some("n1"), 4),
        ];
        assert_eq!(
            kill_precondition(3, &all_up, &settled),
            Ok(("n1".into(), 4))
        );
        let check_err = |up: &[usize], answers: &[Option<ServerAnswer>], needle: &str| {
            let err = kill_precondition(3, up, answers).unwrap_err();
            assert!(err.contains(needle), "{err:?} should mention {needle:?}");
        };
        check_err(&[0, 2], &settled[..2], "2 of 3 servers up");
        check_err(
            &all_up,
            &[settled[0].clone(), None, settled[2].clone()],
            "server 1 does not answer",
        );
        check_err(
            &all_up,
            &[settled[0].clone(), answer(1, None, 4), settled[2].clone()],
            "server 1 knows no leader",
        );
        check_err(
            &all_up,
            &[
                settled[0].clone(),
                settled[1].clone(),
                answer(2, Some("n1"), 5),
            ],
            "disagree",
        );
        check_err(
            &all_up,
            &[
                settled[0].clone(),
                settled[1].clone(),
                answer(2, Some("n3"), 4),
            ],
            "disagree",
        );
        let mut learner = settled.clone();
        learner[1].as_mut().unwrap().n_voters = 2;
        check_err(&all_up, &learner, "server 1 lists 2 of 3 voters");
        let mut unready = settled.clone();
        unready[2].as_mut().unwrap().ready = false;
        check_err(&all_up, &unready, "server 2 is not ready");
    }

    #[test]
    fn pick_is_stable_and_handles_empty_candidates() {
        assert_eq!(pick::<usize>(&[], 5), None);
        assert_eq!(pick(&[10, 11, 12], 4), Some(11));
    }

    proptest! {
        #[test]
        fn schedule_covers_every_mode_never_overlaps_and_stays_in_window(
            seed in any::<u64>(),
            mode_mask in 1u16..(1 << 12),
            leader_kills_min in 0u32..25,
        ) {
            let modes: Vec<FaultMode> = FaultMode::ALL
                .iter()
                .enumerate()
                .filter(|(i, _)| mode_mask & (1 << i) != 0)
                .map(|(_, m)| *m)
                .collect();
            let cfg = config(modes.clone(), leader_kills_min, 1_000_000);
            let schedule = Schedule::generate(seed, &cfg).unwrap();
            prop_assert_eq!(&schedule, &Schedule::generate(seed, &cfg).unwrap());
            for mode in &modes {
                prop_assert!(schedule.count(*mode) >= 1, "mode {:?} not scheduled", mode);
            }
            for mode in schedule.modes() {
                prop_assert!(modes.contains(&mode));
            }
            if modes.contains(&FaultMode::KillLeader) {
                prop_assert!(schedule.count(FaultMode::KillLeader) >= leader_kills_min as usize);
            }
            let mut end_prev = 0;
            for (i, fault) in schedule.faults.iter().enumerate() {
                prop_assert_eq!(fault.seq, i as u64);
                prop_assert!(fault.start_ms >= cfg.warmup_ms);
                let gap_ms = if i == 0 { 0 } else { cfg.heal_ms_min };
                prop_assert!(fault.start_ms >= end_prev + gap_ms);
                prop_assert!(fault.start_ms + fault.duration_ms <= cfg.faults_end_ms_max);
                let node_lost = fault.duration_ms == cfg.node_lost_ms
                    && matches!(fault.mode, FaultMode::KillFollower | FaultMode::KillWorker);
                prop_assert!(node_lost || (cfg.fault_ms_min..=cfg.fault_ms_max).contains(&fault.duration_ms));
                end_prev = fault.start_ms + fault.duration_ms;
            }
        }
    }
}
