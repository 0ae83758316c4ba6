//! No acknowledged write is lost: every write the cluster acknowledged is visible in the final
//! state unless an operation that may have taken effect after it could have undone it.
//!
//! Workstation sizes are checked as a linearizable register: the final size must be the value
//! of a create or resize that was not certainly overwritten, i.e. not followed in real time by
//! an acknowledged resize invoked after it completed.

use std::collections::BTreeMap;

use super::Verdict;
use crate::history::{History, OpKind, Operation, Outcome};
use crate::nemesis::FaultMode;

/// Checks the operations of `history` against its final state.
pub fn check(history: &History) -> Verdict {
    let statement = "No acknowledged write is lost.";
    if !history.final_state.read_ok {
        return Verdict::new(
            "acknowledged_writes",
            statement,
            0,
            vec!["the final state could not be read".to_string()],
        );
    }
    let mut by_key: BTreeMap<&str, Vec<&Operation>> = BTreeMap::new();
    for op in &history.operations {
        if let Some(key) = op.kind.workstation_key() {
            by_key.entry(key).or_default().push(op);
        }
    }
    let final_ws: BTreeMap<&str, (u64, u64)> = history
        .final_state
        .workstations
        .iter()
        .map(|(key, cpu, mem)| (key.as_str(), (*cpu, *mem)))
        .collect();

    // Workstations whose processes the final read could not list (no node to ask): their
    // process checks are skipped, counted and named; the workstation itself is still checked.
    let processes_unknown: BTreeMap<&str, &str> = history
        .final_state
        .processes_unknown
        .iter()
        .map(|(key, why)| (key.as_str(), why.as_str()))
        .collect();
    let mut skipped: Vec<String> = Vec::new();
    let mut n_processes_skipped = 0;

    let mut n_checked = 0;
    let mut violations = Vec::new();
    for (key, ops) in &by_key {
        let maybe_deleted = ops.iter().any(|op| {
            matches!(op.kind, OpKind::DeleteWorkstation { .. }) && op.outcome != Outcome::Fail
        });
        let created_ok = ops.iter().any(|op| {
            matches!(op.kind, OpKind::CreateWorkstation { .. }) && op.outcome == Outcome::Ok
        });
        let deleted_ok = ops.iter().any(|op| {
            matches!(op.kind, OpKind::DeleteWorkstation { .. }) && op.outcome == Outcome::Ok
        });
        let present = final_ws.get(key);
        if created_ok {
            // Checked either way: with a delete that may have taken effect, absence is fine.
            n_checked += 1;
        }
        if created_ok && !maybe_deleted && present.is_none() {
            violations.push(format!("workstation {key}: acknowledged create lost"));
        }
        if deleted_ok {
            n_checked += 1;
            if present.is_some() {
                violations.push(format!("workstation {key}: acknowledged delete undone"));
            }
        }
        if let (Some(&size), false) = (present, maybe_deleted) {
            if let Some(violation) = check_size(key, ops, size) {
                violations.push(violation);
            }
            n_checked += 1;
            if let Some(why) = processes_unknown.get(key) {
                let n_acknowledged = ops
                    .iter()
                    .filter(|op| {
                        matches!(op.kind, OpKind::ExecProcess { .. }) && op.outcome == Outcome::Ok
                    })
                    .count();
                n_processes_skipped += n_acknowledged;
                skipped.push(format!("{key} ({why})"));
                continue;
            }
            for op in ops {
                if let (OpKind::ExecProcess { argv, .. }, Outcome::Ok) = (&op.kind, op.outcome) {
                    n_checked += 1;
                    let cmdline = argv.join(" ");
                    let found = history
                        .final_state
                        .processes
                        .iter()
                        .any(|(k, p)| k == key && *p == cmdline);
                    if !found {
                        violations.push(format!(
                            "workstation {key}: acknowledged process `{cmdline}` lost"
                        ));
                    }
                }
            }
        }
    }

    // A node whose join was acknowledged stays a member unless the harness removed it.
    let removed: Vec<usize> = history
        .faults
        .iter()
        .filter(|f| f.mode == FaultMode::RemovedNodeReturns)
        .flat_map(|f| f.targets.iter().copied())
        .collect();
    for op in &history.operations {
        if let (OpKind::JoinNode { node }, Outcome::Ok) = (&op.kind, op.outcome) {
            if removed.contains(node) {
                continue;
            }
            n_checked += 1;
            if !history.final_state.member_nodes.contains(node) {
                violations.push(format!("node {node}: acknowledged join lost"));
            }
        }
    }
    let verdict = Verdict::new("acknowledged_writes", statement, n_checked, violations);
    if skipped.is_empty() {
        return verdict;
    }
    let n_skipped = skipped.len();
    skipped.truncate(SKIPPED_NAMED_MAX);
    verdict.with_measured(format!(
        "process checks skipped for {n_skipped} workstations ({n_processes_skipped} acknowledged \
         processes) whose processes could not be read: {}",
        skipped.join(", ")
    ))
}

/// At most this many workstations with skipped process checks are named in the verdict (all
/// are counted).
const SKIPPED_NAMED_MAX: usize = 10;

/// The final size must be one a create or resize could have left there last.
fn check_size(key: &str, ops: &[&Operation], size: (u64, u64)) -> Option<String> {
    let writes: Vec<(&Operation, (u64, u64))> = ops
        .iter()
        .filter(|op| op.outcome != Outcome::Fail)
        .filter_map(|op| match op.kind {
            OpKind::CreateWorkstation {
                cpu_millis,
                memory_bytes,
                ..
            }
            | OpKind::ResizeWorkstation {
                cpu_millis,
                memory_bytes,
                ..
            } => Some((*op, (cpu_millis, memory_bytes))),
            _ => None,
        })
        .collect();
    if writes.is_empty() {
        // Created by an operation outside the history (cannot happen in a harness run); the
        // size has nothing to be compared with.
        return None;
    }
    let acknowledged: Vec<&Operation> = writes
        .iter()
        .filter(|(op, _)| op.outcome == Outcome::Ok)
        .map(|(op, _)| *op)
        .collect();
    let candidates: Vec<(u64, u64)> = writes
        .iter()
        .filter(|(w, _)| {
            // `w` is certainly overwritten if an acknowledged write began after `w` ended. An
            // unknown write has no end, so it is never certainly overwritten.
            w.outcome != Outcome::Ok
                || !acknowledged
                    .iter()
                    .any(|later| later.id != w.id && later.invoke_ms > w.complete_ms)
        })
        .map(|(_, value)| *value)
        .collect();
    if candidates.contains(&size) {
        None
    } else {
        Some(format!(
            "workstation {key}: final size {size:?} is none of the possible last writes {candidates:?}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::FinalState;

    fn op(id: u64, kind: OpKind, invoke_ms: u64, complete_ms: u64, outcome: Outcome) -> Operation {
        Operation {
            id,
            node: 0,
            kind,
            invoke_ms,
            complete_ms,
            outcome,
            error: None,
        }
    }
    fn create(key: &str, cpu: u64) -> OpKind {
        OpKind::CreateWorkstation {
            key: key.into(),
            cpu_millis: cpu,
            memory_bytes: 1,
        }
    }
    fn resize(key: &str, cpu: u64) -> OpKind {
        OpKind::ResizeWorkstation {
            key: key.into(),
            cpu_millis: cpu,
            memory_bytes: 1,
        }
    }
    fn delete(key: &str) -> OpKind {
        OpKind::DeleteWorkstation { key: key.into() }
    }
    fn history(operations: Vec<Operation>, workstations: Vec<(&str, u64)>) -> History {
        History {
            operations,
            final_state: FinalState {
                read_ok: true,
                workstations: workstations
                    .into_iter()
                    .map(|(k, cpu)| (k.to_string(), cpu, 1))
                    .collect(),
                processes: vec![],
                processes_unknown: vec![],
                member_nodes: vec![],
            },
            ..History::default()
        }
    }

    #[test]
    fn kept_creates_deletes_and_last_resize_pass() {
        let h = history(
            vec![
                op(0, create("a", 100), 0, 10, Outcome::Ok),
                op(1, create("b", 100), 0, 10, Outcome::Ok),
                op(2, delete("b"), 20, 30, Outcome::Ok),
                op(3, resize("a", 200), 40, 50, Outcome::Ok),
                op(4, create("c", 100), 0, 10, Outcome::Fail),
            ],
            vec![("a", 200)],
        );
        let verdict = check(&h);
        assert!(verdict.ok, "{verdict:?}");
    }

    #[test]
    fn lost_acknowledged_create_is_a_violation() {
        let h = history(vec![op(0, create("a", 100), 0, 10, Outcome::Ok)], vec![]);
        assert!(!check(&h).ok);
    }

    #[test]
    fn undone_acknowledged_delete_is_a_violation() {
        let h = history(
            vec![
                op(0, create("a", 100), 0, 10, Outcome::Ok),
                op(1, delete("a"), 20, 30, Outcome::Ok),
            ],
            vec![("a", 100)],
        );
        assert!(!check(&h).ok);
    }

    #[test]
    fn stale_size_after_acknowledged_resize_is_a_violation() {
        let h = history(
            vec![
                op(0, create("a", 100), 0, 10, Outcome::Ok),
                op(1, resize("a", 200), 20, 30, Outcome::Ok),
            ],
            vec![("a", 100)],
        );
        let verdict = check(&h);
        assert!(!verdict.ok);
        assert!(verdict.violations[0].contains("final size"));
    }

    #[test]
    fn unknown_or_concurrent_resizes_may_win() {
        let h = history(
            vec![
                op(0, create("a", 100), 0, 10, Outcome::Ok),
                op(1, resize("a", 200), 20, 60, Outcome::Ok),
                op(2, resize("a", 300), 30, 40, Outcome::Ok), // concurrent with 1
                op(3, resize("a", 400), 70, 80, Outcome::Unknown),
            ],
            vec![("a", 300)],
        );
        assert!(check(&h).ok);
        let h2 = history(h.operations.clone(), vec![("a", 400)]);
        assert!(check(&h2).ok);
    }

    #[test]
    fn unknown_delete_allows_absence() {
        let h = history(
            vec![
                op(0, create("a", 100), 0, 10, Outcome::Ok),
                op(1, delete("a"), 20, 30, Outcome::Unknown),
            ],
            vec![],
        );
        assert!(check(&h).ok);
    }

    #[test]
    fn unreadable_final_state_fails() {
        let mut h = history(
            vec![op(0, create("a", 100), 0, 10, Outcome::Ok)],
            vec![("a", 100)],
        );
        h.final_state.read_ok = false;
        assert!(!check(&h).ok);
    }

    #[test]
    fn lost_acknowledged_process_is_a_violation() {
        let exec = OpKind::ExecProcess {
            key: "a".into(),
            argv: vec!["sleep".into(), "100".into()],
        };
        let mut h = history(
            vec![
                op(0, create("a", 100), 0, 10, Outcome::Ok),
                op(1, exec, 20, 30, Outcome::Ok),
            ],
            vec![("a", 100)],
        );
        assert!(!check(&h).ok);
        h.final_state
            .processes
            .push(("a".into(), "sleep 100".into()));
        assert!(check(&h).ok);
    }

    /// Soak seed 4326430475747548734 on 6c0791f: a pending workstation (no node) made every
    /// node's final read fail, so nothing was checked. Its processes are now unknown and only
    /// its process checks are skipped, said so in the verdict.
    #[test]
    fn a_pending_workstation_skips_only_its_process_checks_and_the_verdict_counts_them() {
        let exec = |key: &str| OpKind::ExecProcess {
            key: key.into(),
            argv: vec!["sleep".into(), "100".into()],
        };
        let mut h = history(
            vec![
                op(0, create("a", 100), 0, 10, Outcome::Ok),
                op(1, exec("a"), 20, 30, Outcome::Ok),
                op(2, exec("a"), 40, 50, Outcome::Ok),
                op(3, create("b", 100), 0, 10, Outcome::Ok),
                op(4, exec("b"), 20, 30, Outcome::Ok),
            ],
            vec![("a", 100), ("b", 100)],
        );
        h.final_state
            .processes
            .push(("b".into(), "sleep 100".into()));
        h.final_state.processes_unknown.push((
            "a".into(),
            "pending, no node: GET /v1/workstations/ws-1/processes answered 503".into(),
        ));
        let verdict = check(&h);
        assert!(verdict.ok, "{verdict:?}");
        // a: create and size; b: create, size and its one process.
        assert_eq!(verdict.n_checked, 5, "{verdict:?}");
        assert_eq!(
            verdict.measured.as_deref(),
            Some(
                "process checks skipped for 1 workstations (2 acknowledged processes) whose \
                 processes could not be read: a (pending, no node: GET \
                 /v1/workstations/ws-1/processes answered 503)"
            )
        );

        // The workstation itself is still checked: a lost size is found.
        h.final_state.workstations[0].1 = 300;
        let verdict = check(&h);
        assert!(!verdict.ok, "{verdict:?}");
        assert!(verdict.violations[0].contains("workstation a: final size"));

        // Another workstation's lost process is still found.
        h.final_state.workstations[0].1 = 100;
        h.final_state.processes.clear();
        let verdict = check(&h);
        assert!(!verdict.ok, "{verdict:?}");
        assert_eq!(
            verdict.violations,
            vec!["workstation b: acknowledged process `sleep 100` lost".to_string()]
        );
    }
}
