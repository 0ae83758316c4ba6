//! After the faults stop, the cluster converges within `convergence_ms_max`: every live node
//! names the same leader in the same term, every live node is `ready`, and desired state equals
//! actual state.

use super::Verdict;
use crate::history::{ClusterSnapshot, History};

/// Whether one snapshot shows a converged cluster.
pub fn converged(snapshot: &ClusterSnapshot) -> bool {
    let mut agreed: Option<(u64, &str)> = None;
    for (_, answer) in &snapshot.leaders {
        let Some((term, Some(leader))) = answer else {
            return false;
        };
        match agreed {
            None => agreed = Some((*term, leader.as_str())),
            Some(a) if a == (*term, leader.as_str()) => {}
            Some(_) => return false,
        }
    }
    agreed.is_some()
        && !snapshot.node_states.is_empty()
        && snapshot
            .node_states
            .iter()
            .all(|(_, state)| state == "ready")
        && snapshot.desired_equals_actual
}

/// Why a snapshot is not converged, in a few words.
fn describe(snapshot: &ClusterSnapshot) -> String {
    let leaders: Vec<String> = snapshot
        .leaders
        .iter()
        .map(|(idx, answer)| match answer {
            Some((term, Some(leader))) => format!("{idx}:{leader}@{term}"),
            Some((term, None)) => format!("{idx}:none@{term}"),
            None => format!("{idx}:no answer"),
        })
        .collect();
    let not_ready: Vec<String> = snapshot
        .node_states
        .iter()
        .filter(|(_, state)| state != "ready")
        .map(|(id, state)| format!("{id}={state}"))
        .collect();
    let mut differences = snapshot.differences.clone();
    differences.truncate(5);
    let mut text = format!(
        "leaders [{}], not ready [{}], desired != actual [{}]",
        leaders.join(" "),
        not_ready.join(" "),
        differences.join(", ")
    );
    if !snapshot.pending_fits_nowhere.is_empty() {
        let mut fits_nowhere = snapshot.pending_fits_nowhere.clone();
        fits_nowhere.truncate(3);
        text.push_str(&format!(
            ", {} pending that fit nowhere (not differences) [{}]",
            snapshot.pending_fits_nowhere.len(),
            fits_nowhere.join(", ")
        ));
    }
    text
}

/// Checks the snapshots taken after the last fault and, in a soak, after every pause of the
/// nemesis (until the next fault starts).
pub fn check(history: &History, convergence_ms_max: u64) -> Verdict {
    let statement = "After the faults stop, the cluster converges within the stated time: one \
                     leader, every live node ready, desired state equal to actual.";
    let faults_end_ms = history.faults_end_ms().unwrap_or(0);
    let mut violations = Vec::new();
    let mut n_checked = 0;
    let mut pause_times_ms = Vec::new();
    for &pause_ms in history.pauses_ms.iter().filter(|p| **p < faults_end_ms) {
        let next_fault_ms = history
            .faults
            .iter()
            .filter_map(|f| f.start_ms)
            .filter(|start| *start > pause_ms)
            .min()
            .unwrap_or(u64::MAX);
        let during: Vec<&ClusterSnapshot> = history
            .snapshots
            .iter()
            .filter(|s| s.at_ms >= pause_ms && s.at_ms < next_fault_ms)
            .collect();
        n_checked += during.len();
        match during.iter().find(|s| converged(s)) {
            Some(s) if s.at_ms - pause_ms <= convergence_ms_max => {
                pause_times_ms.push(s.at_ms - pause_ms)
            }
            Some(s) => violations.push(format!(
                "the pause at {pause_ms} ms converged only after {} ms (limit {convergence_ms_max} ms)",
                s.at_ms - pause_ms
            )),
            None => violations.push(format!(
                "the pause at {pause_ms} ms never converged in {} snapshots before the next fault \
                 (limit {convergence_ms_max} ms); last: {}",
                during.len(),
                during.last().map(|s| describe(s)).unwrap_or_default()
            )),
        }
    }
    let after: Vec<&ClusterSnapshot> = history
        .snapshots
        .iter()
        .filter(|s| s.at_ms >= faults_end_ms)
        .collect();
    n_checked += after.len();
    let first = after.iter().find(|s| converged(s));
    let mut measured = None;
    match first {
        Some(s) => {
            let took_ms = s.at_ms - faults_end_ms;
            measured = Some(format!("converged {took_ms} ms after the last fault ended"));
            if took_ms > convergence_ms_max {
                violations.push(format!(
                    "converged only after {took_ms} ms (limit {convergence_ms_max} ms)"
                ));
            }
        }
        None if !after.is_empty() => {
            let last = after.last().map(|s| describe(s)).unwrap_or_default();
            violations.push(format!(
                "never converged in {} snapshots after the last fault (limit {convergence_ms_max} ms); last: {last}",
                after.len()
            ))
        }
        None => {}
    }
    if !history.pauses_ms.is_empty() {
        let slowest = pause_times_ms.iter().max().copied().unwrap_or(0);
        let text = format!(
            "{} of {} mid-run pauses converged, the slowest in {slowest} ms",
            pause_times_ms.len(),
            history.pauses_ms.len()
        );
        measured = Some(match measured {
            Some(m) => format!("{m}; {text}"),
            None => text,
        });
    }
    let n_full = history
        .snapshots
        .iter()
        .filter(|s| !s.pending_fits_nowhere.is_empty())
        .count();
    if n_full > 0 {
        let text = format!(
            "{n_full} snapshots had workstations pending that fit on no ready worker node \
             (not counted as differences)"
        );
        measured = Some(match measured {
            Some(m) => format!("{m}; {text}"),
            None => text,
        });
    }
    let verdict = Verdict::new("convergence", statement, n_checked, violations);
    match measured {
        Some(m) => verdict.with_measured(m),
        None => verdict,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::FaultRecord;
    use crate::nemesis::FaultMode;

    fn snapshot(at_ms: u64, leaders: &[Option<(u64, &str)>], ready: bool) -> ClusterSnapshot {
        ClusterSnapshot {
            at_ms,
            leaders: leaders
                .iter()
                .enumerate()
                .map(|(i, l)| (i, l.map(|(t, n)| (t, Some(n.to_string())))))
                .collect(),
            node_states: vec![("a".into(), if ready { "ready" } else { "down" }.into())],
            desired_equals_actual: true,
            differences: vec![],
            pending_fits_nowhere: vec![],
        }
    }
    fn history(snapshots: Vec<ClusterSnapshot>) -> History {
        History {
            snapshots,
            faults: vec![FaultRecord {
                seq: 0,
                mode: FaultMode::KillLeader,
                targets: vec![0],
                start_ms: Some(0),
                end_ms: Some(1000),
                error: None,
                expectation: None,
            }],
            ..History::default()
        }
    }

    #[test]
    fn converging_in_time_passes_and_reports_the_time() {
        let h = history(vec![
            snapshot(500, &[Some((2, "a")), Some((3, "b"))], true), // during faults: ignored
            snapshot(1200, &[Some((3, "b")), None], true),
            snapshot(1900, &[Some((3, "b")), Some((3, "b"))], true),
        ]);
        let verdict = check(&h, 2000);
        assert!(verdict.ok, "{verdict:?}");
        assert_eq!(
            verdict.measured.as_deref(),
            Some("converged 900 ms after the last fault ended")
        );
    }

    #[test]
    fn split_leaders_or_down_nodes_never_converge() {
        let h = history(vec![
            snapshot(1200, &[Some((3, "a")), Some((3, "b"))], true),
            snapshot(1300, &[Some((3, "a")), Some((3, "a"))], false),
        ]);
        assert!(!check(&h, 60_000).ok);
    }

    #[test]
    fn a_soak_pause_that_never_converges_before_the_next_fault_is_a_violation() {
        let fault = |start_ms, end_ms| FaultRecord {
            seq: 0,
            mode: FaultMode::KillLeader,
            targets: vec![0],
            start_ms: Some(start_ms),
            end_ms: Some(end_ms),
            error: None,
            expectation: None,
        };
        let mut h = History {
            faults: vec![fault(0, 1000), fault(5000, 6000)],
            pauses_ms: vec![1000],
            snapshots: vec![
                snapshot(1500, &[Some((3, "a"))], false),
                snapshot(4500, &[Some((3, "a"))], false),
                // After the next fault: not evidence for the pause.
                snapshot(5500, &[Some((3, "a"))], true),
                snapshot(6500, &[Some((4, "b"))], true),
            ],
            ..History::default()
        };
        let verdict = check(&h, 30_000);
        assert!(!verdict.ok, "{verdict:?}");
        assert!(
            verdict.violations[0].contains("pause at 1000 ms"),
            "{verdict:?}"
        );

        h.snapshots[1] = snapshot(4500, &[Some((3, "a"))], true);
        let verdict = check(&h, 30_000);
        assert!(verdict.ok, "{verdict:?}");
        assert_eq!(
            verdict.measured.as_deref(),
            Some(
                "converged 500 ms after the last fault ended; 1 of 1 mid-run pauses converged, \
                 the slowest in 3500 ms"
            )
        );
        assert!(!check(&h, 3000).ok, "too slow for a 3 s limit");
    }

    /// Soak seed 4326430475747548734 on 6c0791f: the cluster was full and the checker called
    /// the pending workstations a failure to converge.
    #[test]
    fn a_full_cluster_with_pending_workstations_converges_and_the_report_counts_them() {
        let mut full = snapshot(1500, &[Some((3, "a"))], true);
        let comparison = crate::checkers::desired_state::compare(
            &[crate::checkers::desired_state::WorkstationStatus {
                key: "c0w275".into(),
                state: "pending".into(),
                node: None,
                cpu_millis: 200,
                memory_bytes: 1,
            }],
            &[crate::checkers::desired_state::NodeRoom {
                id: "a".into(),
                state: "ready".into(),
                worker: true,
                cpu_allocatable_millis: 2000,
                memory_allocatable_bytes: 1 << 30,
                cpu_reserved_millis: 2000,
                memory_reserved_bytes: 0,
                workstations_hosted: 0,
                workstations_max: None,
            }],
        );
        full.desired_equals_actual = comparison.differences.is_empty();
        full.differences = comparison.differences;
        full.pending_fits_nowhere = comparison.pending_fits_nowhere;
        let verdict = check(&history(vec![full]), 30_000);
        assert!(verdict.ok, "{verdict:?}");
        assert_eq!(
            verdict.measured.as_deref(),
            Some(
                "converged 500 ms after the last fault ended; 1 snapshots had workstations \
                 pending that fit on no ready worker node (not counted as differences)"
            )
        );
    }

    #[test]
    fn converging_too_late_is_a_violation() {
        let h = history(vec![snapshot(9000, &[Some((3, "b"))], true)]);
        assert!(!check(&h, 2000).ok);
    }
}
