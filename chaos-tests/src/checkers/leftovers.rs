//! No processes, cgroups or mounts of a deleted workstation remain on any node after its
//! delete was acknowledged.

use super::Verdict;
use crate::history::{History, OpKind, Outcome};

/// Whether `text` (a command line, a `/proc/PID/cgroup` line, a path) names workstation `id`
/// as a whole token: `ws-6` is named by `/shoal-n-1/ws-6/p-2` but not by `/shoal-n-1/ws-66`.
pub fn names_id(text: &str, id: &str) -> bool {
    if id.is_empty() {
        return false;
    }
    let is_word = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    text.match_indices(id).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let after = text[at + id.len()..].chars().next();
        !before.is_some_and(is_word) && !after.is_some_and(is_word)
    })
}

/// Checks the leftover scans of `history`.
pub fn check(history: &History) -> Verdict {
    let n_deletes_ok = history
        .operations
        .iter()
        .filter(|op| {
            matches!(op.kind, OpKind::DeleteWorkstation { .. }) && op.outcome == Outcome::Ok
        })
        .count();
    let mut violations = Vec::new();
    if n_deletes_ok > 0 && history.leftovers.is_empty() {
        violations.push(format!(
            "{n_deletes_ok} acknowledged deletes but no leftover scan ran"
        ));
    }
    for scan in &history.leftovers {
        for (what, items) in [
            ("process", &scan.processes),
            ("cgroup", &scan.cgroups),
            ("mount", &scan.mounts),
        ] {
            for item in items {
                violations.push(format!("at {} ms: leftover {what} {item}", scan.at_ms));
            }
        }
    }
    let n_checked = history.leftovers.iter().map(|s| s.deleted_ids.len()).sum();
    Verdict::new(
        "no_leftovers",
        "No leftover processes, cgroups or mounts on any node after workstations are deleted.",
        n_checked,
        violations,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_id_matches_whole_tokens_only() {
        let check = |text: &str, id: &str, expected: bool| {
            assert_eq!(names_id(text, id), expected, "{text:?} names {id:?}");
        };
        check("5:pids:/shoal-n-1a/ws-6/p-2", "ws-6", true);
        check("/sys/fs/cgroup/pids/shoal-n-1a/ws-6", "ws-6", true);
        check("/sys/fs/cgroup/pids/shoal-n-1a/ws-66", "ws-6", false);
        check("5:pids:/shoal-n-1a/ws-60/p-1", "ws-6", false);
        check("/home/ws-6x", "ws-6", false);
        check("xws-6", "ws-6", false);
        check("ws-6", "ws-6", true);
        check("ws-66 and ws-6", "ws-6", true);
        check("anything", "", false);
    }
    use crate::history::{LeftoverScan, Operation};

    fn scan(processes: Vec<String>, mounts: Vec<String>) -> LeftoverScan {
        LeftoverScan {
            at_ms: 5,
            deleted_ids: vec!["ws-1".into()],
            processes,
            cgroups: vec![],
            mounts,
        }
    }
    fn deleted() -> Operation {
        Operation {
            id: 0,
            node: 0,
            kind: OpKind::DeleteWorkstation { key: "w".into() },
            invoke_ms: 0,
            complete_ms: 1,
            outcome: Outcome::Ok,
            error: None,
        }
    }

    #[test]
    fn clean_scan_passes() {
        let h = History {
            operations: vec![deleted()],
            leftovers: vec![scan(vec![], vec![])],
            ..History::default()
        };
        assert!(check(&h).ok);
    }

    #[test]
    fn leftover_process_or_mount_is_a_violation() {
        let h = History {
            operations: vec![deleted()],
            leftovers: vec![scan(
                vec!["123 sleep 100".into()],
                vec!["/tmp/x/ws-1/home".into()],
            )],
            ..History::default()
        };
        assert_eq!(check(&h).n_violations, 2);
    }

    #[test]
    fn deletes_without_a_scan_fail() {
        let h = History {
            operations: vec![deleted()],
            ..History::default()
        };
        assert!(!check(&h).ok);
    }
}
