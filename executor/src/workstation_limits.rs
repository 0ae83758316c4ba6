//! The bounds of one workstation actor (DESIGN.md §3: a limit on everything).

use crate::log_buffer::{LOG_BUFFER_BYTES_MAX, LOG_RECORDS_MAX};
use crate::restart_policy::RestartLimits;

/// Every bound a workstation actor enforces. The defaults are the product's numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkstationLimits {
    /// Bytes of log retained (SPEC.md: 5,242,880).
    pub log_buffer_bytes_max: usize,
    /// Records indexed by the log (see [`crate::log_buffer`]).
    pub log_records_max: usize,
    /// Processes tracked at once, exited ones included (the oldest finished one is forgotten
    /// to make room).
    pub processes_max: usize,
    /// Concurrent log followers.
    pub followers_max: usize,
    /// Events queued for one follower before it is considered slow and paused.
    pub follower_queue_events_max: usize,
    /// Bytes of log data in one follower event; with the queue bound, this caps the memory a
    /// follower can pin (16 × 64 KiB = 1 MiB by default).
    pub follower_event_bytes_max: usize,
    /// Exit events remembered for followers.
    pub exits_max: usize,
    /// Messages queued in the actor's mailbox before senders wait.
    pub mailbox_messages_max: usize,
    /// Size of one read from a process's pipe.
    pub pipe_read_bytes: usize,
    /// Kernel buffer asked for each output pipe (0 keeps the kernel's default, 64 KiB).
    /// Pipe memory is charged to the user, so this stays modest.
    pub pipe_buffer_bytes: usize,
    /// After a process's main process exits, how long to wait for its pipes to reach end of
    /// file before recording the exit anyway (a daemon it left behind may keep them open).
    pub exit_drain_ms: u64,
    /// Bytes returned by one [`crate::workstation::ReadLogs`] at most.
    pub read_bytes_max: usize,
    /// Restart backoff and crash-loop bounds.
    pub restart: RestartLimits,
}

impl Default for WorkstationLimits {
    fn default() -> Self {
        Self {
            log_buffer_bytes_max: LOG_BUFFER_BYTES_MAX,
            log_records_max: LOG_RECORDS_MAX,
            processes_max: 64,
            followers_max: 32,
            follower_queue_events_max: 16,
            follower_event_bytes_max: 65_536,
            exits_max: 1_024,
            mailbox_messages_max: 256,
            pipe_read_bytes: 65_536,
            pipe_buffer_bytes: 262_144,
            exit_drain_ms: 200,
            read_bytes_max: LOG_BUFFER_BYTES_MAX,
            restart: RestartLimits::default(),
        }
    }
}
