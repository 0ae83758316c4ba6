//! [`HostProcessTree`]: the tree of one host process, found through `/proc`.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::Pid;

use crate::spawner::{ProcessTree, SpawnError};

/// The environment variable that marks every process of one tree. Children inherit it, so a
/// descendant that left the session and was re-parented (a double-forked daemon) still carries
/// it. A process that execs with a scrubbed environment *and* escapes the session is not found
/// on a host without cgroups; the sandbox spawner's cgroup closes that gap.
pub(crate) const TREE_MARKER_VAR: &str = "SHOAL_PROCESS_TREE";

/// How many kill rounds [`HostProcessTree::kill`] makes before giving up on processes that
/// survive SIGKILL (only possible in uninterruptible sleep).
const KILL_ROUNDS_MAX: u32 = 40;
/// The longest pause between two kill rounds.
const KILL_ROUND_PAUSE_MS_MAX: u64 = 20;
/// A bound on the pids remembered as members (see `known_pids`).
const KNOWN_PIDS_MAX: usize = 4_096;

/// One line of the process table.
#[derive(Debug, Clone, Copy)]
struct ProcEntry {
    pid: i32,
    ppid: i32,
    pgrp: i32,
    session: i32,
    zombie: bool,
    /// Start time in clock ticks since boot: with the pid, identifies a process even if its
    /// pid is later reused.
    start_time: u64,
}

/// The processes that grew from one host process.
///
/// Membership, recomputed from `/proc` at every call: while the main process is not reaped,
/// its descendants and the members of its session and process group (it is a session leader);
/// always, every process whose environment carries this tree's marker.
#[derive(Debug)]
pub struct HostProcessTree {
    main_pid: i32,
    /// `SHOAL_PROCESS_TREE=<value>` exactly as it appears in `/proc/<pid>/environ`.
    marker_entry: Vec<u8>,
    main_reaped: AtomicBool,
    /// Members seen so far, by pid with their start time. The environment of a dying process
    /// (its memory already released) or of a zombie can no longer be read, so this is how such
    /// a process is still recognised as ours, killed and reaped. The start time guards against
    /// pid reuse.
    known_pids: Mutex<HashMap<i32, u64>>,
}

impl HostProcessTree {
    /// The tree of `main_pid`, whose processes carry marker `marker_value`.
    pub fn new(main_pid: u32, marker_value: &str) -> Self {
        Self {
            main_pid: i32::try_from(main_pid).unwrap_or(i32::MAX),
            marker_entry: format!("{TREE_MARKER_VAR}={marker_value}").into_bytes(),
            main_reaped: AtomicBool::new(false),
            known_pids: Mutex::new(HashMap::new()),
        }
    }

    fn known(&self) -> std::sync::MutexGuard<'_, HashMap<i32, u64>> {
        // A set of integers cannot be left inconsistent by a panic elsewhere.
        self.known_pids
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The current members of the tree (live processes and zombies).
    fn members(&self) -> Result<Vec<ProcEntry>, SpawnError> {
        let own_pid = i32::try_from(std::process::id()).unwrap_or(i32::MAX);
        let table = read_process_table()?;
        let main_live = !self.main_reaped.load(Ordering::Acquire);
        let mut member_pids: HashSet<i32> = HashSet::new();

        if main_live {
            // Seeds: the main process and its session and process group; then everything
            // descending from any of them.
            let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
            let mut stack = vec![self.main_pid];
            for entry in &table {
                children.entry(entry.ppid).or_default().push(entry.pid);
                if entry.pgrp == self.main_pid || entry.session == self.main_pid {
                    stack.push(entry.pid);
                }
            }
            while let Some(pid) = stack.pop() {
                if member_pids.insert(pid) {
                    if let Some(kids) = children.get(&pid) {
                        stack.extend(kids.iter().copied());
                    }
                }
            }
        }

        let mut known = self.known();
        for entry in &table {
            if member_pids.contains(&entry.pid) {
                continue;
            }
            let seen_before = known.get(&entry.pid) == Some(&entry.start_time);
            let is_member = if entry.zombie {
                // Only a zombie seen alive as a member, or one of the main process's
                // session that is not itself a session leader, is recognised as ours.
                seen_before || (entry.session == self.main_pid && entry.pid != entry.session)
            } else {
                seen_before || has_marker(entry.pid, &self.marker_entry)
            };
            if is_member {
                member_pids.insert(entry.pid);
            }
        }
        member_pids.remove(&own_pid);
        member_pids.remove(&1);

        let members: Vec<ProcEntry> = table
            .into_iter()
            .filter(|entry| member_pids.contains(&entry.pid))
            .collect();
        // Forget only processes that are gone; a member whose environment just became
        // unreadable (it is exiting) must stay known.
        known.retain(|pid, start_time| {
            members
                .iter()
                .any(|entry| entry.pid == *pid && entry.start_time == *start_time)
        });
        for entry in &members {
            if known.len() < KNOWN_PIDS_MAX {
                known.insert(entry.pid, entry.start_time);
            }
        }
        Ok(members)
    }

    /// Reaps the zombies among `members` that are our own children, except the main process
    /// (its exit status belongs to the exit future).
    fn reap_zombies(&self, members: &[ProcEntry]) {
        let own_pid = i32::try_from(std::process::id()).unwrap_or(i32::MAX);
        for entry in members {
            if entry.zombie && entry.ppid == own_pid && entry.pid != self.main_pid {
                // WNOHANG: the entry is a zombie, so this returns at once; an error means
                // someone else reaped it first, which is fine.
                let _ = waitpid(Pid::from_raw(entry.pid), Some(WaitPidFlag::WNOHANG));
            }
        }
    }
}

impl ProcessTree for HostProcessTree {
    fn signal(&self, signal: Signal) -> Result<usize, SpawnError> {
        let members = self.members()?;
        let mut signalled = 0;
        for entry in members.iter().filter(|entry| !entry.zombie) {
            match kill(Pid::from_raw(entry.pid), signal) {
                Ok(()) => signalled += 1,
                Err(Errno::ESRCH) => {}
                Err(errno) => return Err(SpawnError::Control(errno.into())),
            }
        }
        Ok(signalled)
    }

    fn is_alive(&self) -> Result<bool, SpawnError> {
        let members = self.members()?;
        self.reap_zombies(&members);
        Ok(members.iter().any(|entry| !entry.zombie))
    }

    fn kill(&self) -> Result<usize, SpawnError> {
        let mut killed: HashSet<i32> = HashSet::new();
        for round in 0..KILL_ROUNDS_MAX {
            let members = self.members()?;
            self.reap_zombies(&members);
            let alive: Vec<i32> = members
                .iter()
                .filter(|entry| !entry.zombie)
                .map(|entry| entry.pid)
                .collect();
            if alive.is_empty() {
                return Ok(killed.len());
            }
            for pid in alive {
                match kill(Pid::from_raw(pid), Signal::SIGKILL) {
                    Ok(()) | Err(Errno::ESRCH) => {
                        killed.insert(pid);
                    }
                    Err(errno) => return Err(SpawnError::Control(errno.into())),
                }
            }
            // SIGKILL is delivered asynchronously: give the kernel a moment before checking.
            let pause_ms = (1u64 << round.min(5)).min(KILL_ROUND_PAUSE_MS_MAX);
            std::thread::sleep(Duration::from_millis(pause_ms));
        }
        Err(SpawnError::Control(std::io::Error::other(format!(
            "processes of tree {} survived {KILL_ROUNDS_MAX} rounds of SIGKILL",
            self.main_pid
        ))))
    }

    fn main_reaped(&self) {
        self.main_reaped.store(true, Ordering::Release);
    }
}

/// Reads pid, parent, process group, session and state of every process.
fn read_process_table() -> Result<Vec<ProcEntry>, SpawnError> {
    let mut table = Vec::new();
    for dir_entry in std::fs::read_dir("/proc").map_err(SpawnError::Control)? {
        let Ok(dir_entry) = dir_entry else { continue };
        let Some(pid) = dir_entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<i32>().ok())
        else {
            continue;
        };
        // A process can vanish between listing and reading: skip it.
        let Ok(stat) = std::fs::read(format!("/proc/{pid}/stat")) else {
            continue;
        };
        if let Some(entry) = parse_stat(pid, &stat) {
            table.push(entry);
        }
    }
    Ok(table)
}

/// Parses `/proc/<pid>/stat`: `pid (comm) state ppid pgrp session ...`. The command name may
/// contain spaces and parentheses, so fields are read after the last `)`.
fn parse_stat(pid: i32, stat: &[u8]) -> Option<ProcEntry> {
    let close = stat.iter().rposition(|&byte| byte == b')')?;
    let rest = std::str::from_utf8(stat.get(close + 1..)?).ok()?;
    let mut fields = rest.split_ascii_whitespace();
    let state = fields.next()?;
    let ppid = fields.next()?.parse().ok()?;
    let pgrp = fields.next()?.parse().ok()?;
    let session = fields.next()?.parse().ok()?;
    // Field 22 of the line; `fields` is now at field 7.
    let start_time = fields.nth(15)?.parse().ok()?;
    Some(ProcEntry {
        pid,
        ppid,
        pgrp,
        session,
        zombie: state == "Z" || state == "X",
        start_time,
    })
}

/// Whether the environment of `pid` contains `marker_entry` (an unreadable environment, e.g.
/// another user's process, does not).
fn has_marker(pid: i32, marker_entry: &[u8]) -> bool {
    std::fs::read(format!("/proc/{pid}/environ"))
        .map(|environ| {
            environ
                .split(|&byte| byte == 0)
                .any(|entry| entry == marker_entry)
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_stat_reads_fields_after_a_command_with_spaces_and_parens() {
        let stat = b"4242 (my (odd) cmd) S 1 4242 4242 0 -1 4194560 96 0 0 0 0 0 0 0 20 0 1 0 \
                     211284 2654208 380";
        let entry = parse_stat(4242, stat).expect("parsable");
        assert_eq!((entry.ppid, entry.pgrp, entry.session), (1, 4242, 4242));
        assert_eq!(entry.start_time, 211_284);
        assert!(!entry.zombie);
        let zombie = parse_stat(7, b"7 (x) Z 3 3 3 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 99 0 0")
            .expect("parsable");
        assert!(zombie.zombie);
        assert_eq!(zombie.start_time, 99);
    }

    #[test]
    fn parse_stat_rejects_truncated_lines() {
        assert!(parse_stat(1, b"1 (x) S 0").is_none());
        assert!(parse_stat(1, b"garbage").is_none());
    }
}
