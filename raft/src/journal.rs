//! [`Journal`]: a bounded in-memory window of the most recently applied log entries' commands,
//! kept beside the applied [`crate::ClusterState`] by the state machine, so that the leader can
//! answer a worker mirror that is at applied index X with the commands after X (the worker
//! applies them itself: [`crate::apply::apply`] is pure and deterministic) instead of the whole
//! state. The window is never encoded or replicated: after a restart or a snapshot install it
//! starts empty and knows its index again from the next applied entry.
//!
//! Pure: no I/O, no clock. Bounded by [`JOURNAL_ENTRIES_MAX`] commands and
//! [`JOURNAL_BYTES_MAX`] encoded bytes; the oldest commands leave first.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::codec;
use crate::command::Command;

/// Most commands the window keeps.
pub const JOURNAL_ENTRIES_MAX: usize = 4_096;
/// Most encoded command bytes the window keeps (8 MiB per server).
pub const JOURNAL_BYTES_MAX: usize = 8 * 1024 * 1024;

/// The applied commands of the log indexes `first..next`, in order. Log entries without a
/// command (blank and membership entries) leave no trace but are covered: they do not change
/// the cluster state.
#[derive(Clone, Debug, Default)]
pub struct Journal {
    /// The index after the last applied entry; `None` until an entry was applied since the
    /// state was loaded (from a snapshot, a decode, or empty), when the state's index is not
    /// known here.
    next: Option<u64>,
    /// The first index whose command (if any) is in the window.
    first: u64,
    /// `(log index, encoded command)`, oldest first.
    commands: VecDeque<(u64, Arc<[u8]>)>,
    /// Sum of the encoded commands' lengths.
    bytes: usize,
}

/// The commands a mirror at some applied index needs, as far as one reply carries them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalSlice {
    /// The applied index the mirror reaches by applying `commands` (at most the state's).
    pub to_index: u64,
    /// `(log index, encoded command)`, in log order.
    pub commands: Vec<(u64, Arc<[u8]>)>,
}

impl Journal {
    /// Records the entry at `index`, with its command if it carries one. Entries are applied
    /// in log order; an index that does not follow the last one (the first after a load)
    /// starts the window anew at `index`.
    pub fn record(&mut self, index: u64, command: Option<&Command>) {
        if self.next != Some(index) {
            self.commands.clear();
            self.bytes = 0;
            self.first = index;
        }
        self.next = Some(index.saturating_add(1));
        let Some(command) = command else {
            return;
        };
        match codec::encode(command) {
            Ok(bytes) => {
                self.bytes += bytes.len();
                self.commands.push_back((index, Arc::from(bytes)));
            }
            Err(_) => {
                // Cannot happen for a command that was just decoded from the log; if it did,
                // the window restarts after it rather than hiding a gap.
                self.commands.clear();
                self.bytes = 0;
                self.first = index.saturating_add(1);
                return;
            }
        }
        while self.commands.len() > JOURNAL_ENTRIES_MAX || self.bytes > JOURNAL_BYTES_MAX {
            let Some((dropped, bytes)) = self.commands.pop_front() else {
                break;
            };
            self.bytes -= bytes.len();
            self.first = dropped.saturating_add(1);
        }
    }

    /// The index of the last applied entry, if known (see [`Journal`]); 0 when only entry 0
    /// was applied, as openraft counts.
    pub fn applied_index(&self) -> Option<u64> {
        self.next.map(|next| next.saturating_sub(1))
    }

    /// Number of commands in the window.
    pub fn len(&self) -> usize {
        self.commands.len()
    }

    /// Whether the window holds no command.
    pub fn is_empty(&self) -> bool {
        self.commands.is_empty()
    }

    /// The commands after `have_applied` up to the applied index, at most `bytes_max` encoded
    /// bytes of them (a prefix: the mirror asks again for the rest). `None` when the window
    /// does not reach back to `have_applied` (the mirror needs the whole state), when the
    /// state's index is not known, when `have_applied` is ahead of it, or when the first
    /// command needed is larger than `bytes_max`.
    pub fn after(&self, have_applied: u64, bytes_max: usize) -> Option<JournalSlice> {
        let applied = self.applied_index()?;
        if have_applied > applied || self.first > have_applied.saturating_add(1) {
            return None;
        }
        let mut slice = JournalSlice {
            to_index: applied,
            commands: Vec::new(),
        };
        let mut bytes = 0usize;
        for (index, command) in self.commands.iter().filter(|(i, _)| *i > have_applied) {
            if bytes + command.len() > bytes_max {
                if slice.commands.is_empty() {
                    return None;
                }
                // Everything before this command, blank entries included, is covered.
                slice.to_index = index - 1;
                break;
            }
            bytes += command.len();
            slice.commands.push((*index, Arc::clone(command)));
        }
        Some(slice)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::Action;
    use proptest::prelude::*;

    fn audit(n: u64) -> Command {
        Command::new(
            n,
            "test",
            Action::RecordAudit {
                tenant: None,
                action: format!("a{n}"),
                resource: "r".to_string(),
                outcome: "ok".to_string(),
            },
        )
    }

    #[test]
    fn an_unknown_index_serves_nothing_and_the_first_entry_starts_the_window() {
        let mut journal = Journal::default();
        assert_eq!(journal.applied_index(), None);
        assert_eq!(journal.after(0, usize::MAX), None);
        journal.record(7, None);
        journal.record(8, Some(&audit(8)));
        assert_eq!(journal.applied_index(), Some(8));
        let slice = journal.after(6, usize::MAX).expect("covers 7..=8");
        assert_eq!(slice.to_index, 8);
        assert_eq!(slice.commands.len(), 1);
        assert_eq!(journal.after(5, usize::MAX), None, "index 6 is not covered");
        assert_eq!(journal.after(9, usize::MAX), None, "ahead of the state");
        let current = journal.after(8, usize::MAX).expect("nothing to send");
        assert!(current.commands.is_empty());
    }

    #[test]
    fn a_gap_in_the_indexes_restarts_the_window() {
        let mut journal = Journal::default();
        for index in 1..=3 {
            journal.record(index, Some(&audit(index)));
        }
        journal.record(10, Some(&audit(10)));
        assert_eq!(journal.len(), 1);
        assert_eq!(journal.after(3, usize::MAX), None);
        assert!(journal.after(9, usize::MAX).is_some());
    }

    #[test]
    fn a_reply_is_cut_at_the_byte_bound_and_says_where_it_ends() {
        let mut journal = Journal::default();
        journal.record(0, None);
        for index in 1..=10 {
            journal.record(index, Some(&audit(index)));
        }
        let size = journal.commands[0].1.len();
        let slice = journal.after(0, size * 3).expect("a prefix");
        assert_eq!(slice.commands.len(), 3);
        assert_eq!(slice.to_index, 3);
        assert_eq!(journal.after(0, size - 1), None, "not even one fits");
    }

    #[test]
    fn the_oldest_commands_leave_the_window_first_and_then_need_the_whole_state() {
        let mut journal = Journal::default();
        let total = JOURNAL_ENTRIES_MAX as u64 + 100;
        for index in 1..=total {
            journal.record(index, Some(&audit(index)));
        }
        assert_eq!(journal.len(), JOURNAL_ENTRIES_MAX);
        assert_eq!(journal.after(50, usize::MAX), None, "gone: the whole state");
        let recent = journal
            .after(total - 10, usize::MAX)
            .expect("still in the window");
        assert_eq!(recent.commands.len(), 10);
        assert_eq!(recent.to_index, total);
        let oldest_kept = total - JOURNAL_ENTRIES_MAX as u64;
        assert!(journal.after(oldest_kept, usize::MAX).is_some());
        assert!(journal.after(oldest_kept - 1, usize::MAX).is_none());
    }

    proptest! {
        /// Whatever is recorded, the window stays within its bounds, and a slice covers exactly
        /// the recorded commands after the asked index, in order, up to its `to_index`.
        #[test]
        fn the_window_is_bounded_and_slices_are_exact(
            kinds in proptest::collection::vec(any::<bool>(), 1..300),
            asks in proptest::collection::vec((0u64..320, 1usize..4_000), 1..20),
        ) {
            let mut journal = Journal::default();
            let mut recorded: Vec<u64> = Vec::new();
            for (index, carries) in kinds.iter().enumerate() {
                let index = index as u64;
                journal.record(index, carries.then(|| audit(index)).as_ref());
                if *carries {
                    recorded.push(index);
                }
                prop_assert!(journal.len() <= JOURNAL_ENTRIES_MAX);
                prop_assert!(journal.bytes <= JOURNAL_BYTES_MAX);
            }
            let applied = kinds.len() as u64 - 1;
            for (have, bytes_max) in asks {
                let Some(slice) = journal.after(have, bytes_max) else { continue };
                prop_assert!(have <= slice.to_index && slice.to_index <= applied);
                let expected: Vec<u64> = recorded
                    .iter()
                    .copied()
                    .filter(|i| *i > have && *i <= slice.to_index)
                    .collect();
                let got: Vec<u64> = slice.commands.iter().map(|(i, _)| *i).collect();
                prop_assert_eq!(got, expected);
            }
        }
    }
}
