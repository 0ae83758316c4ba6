//! Log streams have monotonic offsets with no gap and no duplicate, except where the server
//! reported dropped bytes: across reconnects each record starts exactly where the previous one
//! ended plus any reported drop.

use super::Verdict;
use crate::history::{History, LogEvent};

/// Checks every log follow of `history`.
pub fn check(history: &History) -> Verdict {
    let mut violations = Vec::new();
    let mut n_checked = 0;
    for (follow_idx, follow) in history.log_follows.iter().enumerate() {
        // The offset the next byte must have; `None` before the first connect.
        let mut expected: Option<u64> = None;
        // The highest offset delivered so far: a reconnect may not ask below it, or the
        // client would see bytes twice.
        let mut delivered_end = 0u64;
        for event in &follow.events {
            match *event {
                LogEvent::Connect { from } => {
                    if from < delivered_end {
                        violations.push(format!(
                            "follow {follow_idx} of {}: reconnect from {from} below delivered end {delivered_end}",
                            follow.key
                        ));
                    }
                    expected = Some(from);
                }
                LogEvent::Dropped { bytes } => {
                    expected = expected.map(|e| e + bytes);
                }
                LogEvent::Record { offset, len } => {
                    n_checked += 1;
                    match expected {
                        None => violations.push(format!(
                            "follow {follow_idx} of {}: record at {offset} before any connect",
                            follow.key
                        )),
                        Some(e) if offset < e => violations.push(format!(
                            "follow {follow_idx} of {}: duplicate or backwards record at {offset}, expected {e}",
                            follow.key
                        )),
                        Some(e) if offset > e => violations.push(format!(
                            "follow {follow_idx} of {}: gap of {} bytes at {e} not reported as dropped",
                            follow.key,
                            offset - e
                        )),
                        Some(_) => {}
                    }
                    expected = Some(offset + len);
                    delivered_end = delivered_end.max(offset + len);
                }
            }
        }
    }
    Verdict::new(
        "log_continuity",
        "Log streams have monotonic offsets, no gap and no duplicate except reported drops.",
        n_checked,
        violations,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::LogFollow;
    use LogEvent::*;

    fn follow(events: Vec<LogEvent>) -> History {
        History {
            log_follows: vec![LogFollow {
                key: "w".into(),
                events,
            }],
            ..History::default()
        }
    }

    #[test]
    fn contiguous_records_across_a_resume_with_a_reported_drop_pass() {
        let h = follow(vec![
            Connect { from: 0 },
            Record { offset: 0, len: 10 },
            Record { offset: 10, len: 5 },
            Connect { from: 15 },
            Dropped { bytes: 100 },
            Record {
                offset: 115,
                len: 1,
            },
        ]);
        let verdict = check(&h);
        assert!(verdict.ok, "{verdict:?}");
        assert_eq!(verdict.n_checked, 3);
    }

    #[test]
    fn unreported_gap_is_a_violation() {
        let h = follow(vec![
            Connect { from: 0 },
            Record { offset: 0, len: 10 },
            Record { offset: 12, len: 1 },
        ]);
        assert!(!check(&h).ok);
    }

    #[test]
    fn duplicate_record_after_resume_is_a_violation() {
        let h = follow(vec![
            Connect { from: 0 },
            Record { offset: 0, len: 10 },
            Connect { from: 10 },
            Record { offset: 5, len: 5 },
        ]);
        assert!(!check(&h).ok);
    }

    #[test]
    fn reconnect_below_delivered_bytes_is_a_violation() {
        let h = follow(vec![
            Connect { from: 0 },
            Record { offset: 0, len: 10 },
            Connect { from: 4 },
            Record { offset: 4, len: 6 },
        ]);
        assert!(!check(&h).ok);
    }
}
