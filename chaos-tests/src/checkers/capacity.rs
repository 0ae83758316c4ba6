//! On every node, reservations never exceed allocatable capacity, neither as the cluster
//! reports them nor as the sum of the workstations placed on the node.

use super::Verdict;
use crate::history::History;

/// Checks the capacity observations of `history`.
pub fn check(history: &History) -> Verdict {
    let mut violations = Vec::new();
    for obs in &history.capacity {
        let placed_cpu: u64 = obs.placed_reservations.iter().map(|(cpu, _)| cpu).sum();
        let placed_mem: u64 = obs.placed_reservations.iter().map(|(_, mem)| mem).sum();
        let checks = [
            (
                "reported cpu",
                obs.cpu_reserved_millis,
                obs.cpu_allocatable_millis,
            ),
            (
                "reported memory",
                obs.memory_reserved_bytes,
                obs.memory_allocatable_bytes,
            ),
            ("placed cpu", placed_cpu, obs.cpu_allocatable_millis),
            ("placed memory", placed_mem, obs.memory_allocatable_bytes),
        ];
        for (what, reserved, allocatable) in checks {
            if reserved > allocatable {
                violations.push(format!(
                    "at {} ms node {}: {what} reservations {reserved} > allocatable {allocatable}",
                    obs.at_ms, obs.node
                ));
            }
        }
    }
    Verdict::new(
        "capacity",
        "On every node, reservations never exceed allocatable capacity.",
        history.capacity.len(),
        violations,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::CapacityObservation;

    fn obs(reported_cpu: u64, placed: Vec<(u64, u64)>) -> CapacityObservation {
        CapacityObservation {
            at_ms: 10,
            node: "n1".into(),
            cpu_allocatable_millis: 2000,
            memory_allocatable_bytes: 4 << 30,
            cpu_reserved_millis: reported_cpu,
            memory_reserved_bytes: 1 << 30,
            placed_reservations: placed,
        }
    }

    #[test]
    fn full_but_not_over_is_fine() {
        let history = History {
            capacity: vec![obs(2000, vec![(1000, 1 << 30), (1000, 3 << 30)])],
            ..History::default()
        };
        assert!(check(&history).ok);
    }

    #[test]
    fn over_reported_reservation_is_a_violation() {
        let history = History {
            capacity: vec![obs(2001, vec![])],
            ..History::default()
        };
        assert!(!check(&history).ok);
    }

    #[test]
    fn placed_sum_over_capacity_is_a_violation_even_if_the_report_looks_fine() {
        let history = History {
            capacity: vec![obs(1000, vec![(1000, 1 << 30), (1500, 1 << 30)])],
            ..History::default()
        };
        let verdict = check(&history);
        assert!(!verdict.ok);
        assert!(verdict.violations[0].contains("placed cpu"));
    }
}
