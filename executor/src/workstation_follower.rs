//! One log follower of a workstation: a position in the log and a bounded queue.
//!
//! A follower is a cursor (`offset`, next exit event), not a copy of the output: the actor
//! *pumps* it, turning retained log bytes and exit events into queued events until the queue
//! is full. A full queue never makes anyone wait: the follower is simply paused until its
//! reader makes room. If the log meanwhile drops the bytes under its cursor, the next pump
//! sends a `Dropped` event with the exact count and continues from the oldest retained byte.

use std::collections::VecDeque;

use tokio::sync::mpsc;

use crate::log_buffer::LogBuffer;
use crate::workstation_messages::LogEvent;

/// An exit event as the actor remembers it, numbered so followers can tell which they sent.
#[derive(Debug, Clone)]
pub(crate) struct ExitRecord {
    pub(crate) seq: u64,
    pub(crate) offset: u64,
    pub(crate) event: LogEvent,
}

/// Remembered exit events, bounded, in order of `seq` (and so of offset).
#[derive(Debug)]
pub(crate) struct ExitLog {
    records: VecDeque<ExitRecord>,
    records_max: usize,
    seq_next: u64,
}

impl ExitLog {
    pub(crate) fn new(records_max: usize) -> Self {
        let records_max = records_max.max(1);
        Self {
            records: VecDeque::with_capacity(records_max),
            records_max,
            seq_next: 0,
        }
    }

    pub(crate) fn push(&mut self, offset: u64, event: LogEvent) {
        if self.records.len() == self.records_max {
            self.records.pop_front();
        }
        self.records.push_back(ExitRecord {
            seq: self.seq_next,
            offset,
            event,
        });
        self.seq_next += 1;
    }

    /// The sequence number of the first remembered exit at or after `offset` (or the next
    /// number to be given if there is none): where a new follower from `offset` starts. Exits
    /// exactly at `offset` are included, so a reader that resumes at an offset never misses an
    /// exit (it may see one again).
    pub(crate) fn seq_from_offset(&self, offset: u64) -> u64 {
        self.records
            .iter()
            .find(|record| record.offset >= offset)
            .map_or(self.seq_next, |record| record.seq)
    }

    fn first_from_seq(&self, seq: u64) -> Option<&ExitRecord> {
        let first_seq = self.records.front()?.seq;
        let index = usize::try_from(seq.saturating_sub(first_seq)).ok()?;
        self.records.get(index)
    }
}

/// Why a pump stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PumpOutcome {
    /// Everything available was queued.
    CaughtUp,
    /// The queue is full; pump again once the reader makes room.
    QueueFull,
    /// The reader is gone; forget this follower.
    Closed,
}

/// A follower's position and queue.
#[derive(Debug)]
pub(crate) struct Follower {
    pub(crate) id: u64,
    pub(crate) sender: mpsc::Sender<LogEvent>,
    /// The next log offset to deliver.
    pub(crate) offset: u64,
    /// The sequence number of the next exit event to deliver.
    pub(crate) exit_seq: u64,
    /// A task is waiting for room in the queue; do not pump until it reports.
    pub(crate) waiting_for_room: bool,
}

impl Follower {
    /// Queues events until caught up or the queue is full. Events come in log order: an exit
    /// recorded at offset `o` comes after every byte below `o` and before every byte from `o`.
    pub(crate) fn pump(
        &mut self,
        log: &LogBuffer,
        exits: &ExitLog,
        event_bytes_max: usize,
    ) -> PumpOutcome {
        loop {
            let permit = match self.sender.try_reserve() {
                Ok(permit) => permit,
                Err(mpsc::error::TrySendError::Full(())) => return PumpOutcome::QueueFull,
                Err(mpsc::error::TrySendError::Closed(())) => return PumpOutcome::Closed,
            };
            let next_exit = exits.first_from_seq(self.exit_seq);
            if let Some(exit) = next_exit {
                if exit.offset <= self.offset {
                    permit.send(exit.event.clone());
                    self.exit_seq = exit.seq + 1;
                    continue;
                }
            }
            if self.offset < log.start_offset() {
                permit.send(LogEvent::Dropped {
                    bytes: log.start_offset() - self.offset,
                });
                self.offset = log.start_offset();
                continue;
            }
            let stop_at =
                next_exit.map_or(log.end_offset(), |exit| exit.offset.min(log.end_offset()));
            if self.offset >= stop_at {
                return PumpOutcome::CaughtUp;
            }
            let limit_bytes = usize::try_from(stop_at - self.offset)
                .unwrap_or(usize::MAX)
                .min(event_bytes_max.max(1));
            let mut read = log.read_records(self.offset, limit_bytes, 1);
            match read.records.pop() {
                Some(record) => {
                    self.offset = read.next;
                    permit.send(LogEvent::Record(record));
                }
                None => return PumpOutcome::CaughtUp,
            }
        }
    }
}
