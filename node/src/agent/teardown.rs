//! Teardowns of workstations that left this node (deleted, moved, or superseded by a newer
//! generation here), each on a task of its own, outside the reconcile lock.
//!
//! A teardown can take long: it stops the processes (SIGTERM, a grace, SIGKILL), waits for
//! the actor to drop its sandbox, then removes the cgroup tree, the work dir and the home
//! volume (a home with many files takes as long as the disk needs). Nothing else waits for
//! it: the reconcile lock is not held meanwhile, so a lease-expiry stop
//! ([`super::fencing`]), which takes no reconcile lock anyway, and the starts of other
//! workstations go on. [`Teardowns`] keeps at most one teardown per workstation running
//! (per-workstation exclusion) and lets a caller wait for the ones it asked for.
//!
//! Test seam: in debug builds, the environment variable [`DELAY_ENV`] (milliseconds, read
//! once at start) makes every teardown wait that long before it begins, as a teardown of a
//! home with very many files would; release builds ignore it.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Weak;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::watch;
use tracing::{info, warn};

use super::Agent;

/// Test seam (debug builds only): every teardown first waits this many milliseconds.
pub const DELAY_ENV: &str = "SHOAL_TEST_TEARDOWN_DELAY_MS";
/// The longest delay the seam accepts (a typo must not park teardowns for hours).
const DELAY_MS_MAX: u64 = 120_000;
/// Grace between SIGTERM and SIGKILL when a workstation that left this node is torn down.
pub const TEARDOWN_GRACE_MS: u64 = 2_000;

/// First and largest pause before a failed teardown attempt is tried again.
const RETRY_MS_MIN: u64 = 250;
const RETRY_MS_MAX: u64 = 5_000;

/// The teardowns running on this node, by workstation id.
#[derive(Debug)]
pub struct Teardowns {
    /// Workstation id → a receiver of how many attempts of its teardown have ended.
    running: Mutex<HashMap<String, watch::Receiver<u64>>>,
    /// Counts the teardowns that succeeded: the reconcile loop plans again at each (a
    /// re-placement here under a newer generation starts once the old one is gone).
    finished: watch::Sender<u64>,
    /// [`DELAY_ENV`], in debug builds.
    delay_ms: u64,
    /// The agent these teardowns belong to (its tasks need an owned handle; weak, because the
    /// agent owns this).
    agent: Weak<Agent>,
}

impl Teardowns {
    /// No teardown running; the test seam read from the environment (debug builds only).
    pub fn new(agent: Weak<Agent>) -> Teardowns {
        let delay_ms = if cfg!(debug_assertions) {
            std::env::var(DELAY_ENV)
                .ok()
                .and_then(|text| text.trim().parse::<u64>().ok())
                .map_or(0, |ms| ms.min(DELAY_MS_MAX))
        } else {
            0
        };
        Teardowns {
            running: Mutex::new(HashMap::new()),
            finished: watch::Sender::new(0),
            delay_ms,
            agent,
        }
    }

    /// A receiver that changes each time a teardown succeeds on this node.
    pub fn subscribe_finished(&self) -> watch::Receiver<u64> {
        self.finished.subscribe()
    }

    /// Whether a teardown of `id` is running.
    pub fn is_running(&self, id: &str) -> bool {
        self.running.lock().contains_key(id)
    }

    /// Starts tearing down `id` at `generation` on a task of its own, unless a teardown of it
    /// is running already. The task tries again, backing off from 250 ms to 5 s, until
    /// nothing of the workstation is left and its record is gone (or the agent stops).
    /// Answers a receiver that changes when the next attempt ends ([`wait_attempts`]); `None`
    /// while the agent is going away.
    pub fn start(&self, id: &str, generation: u64) -> Option<watch::Receiver<u64>> {
        let agent = self.agent.upgrade()?;
        let mut running = self.running.lock();
        if let Some(attempts) = running.get(id) {
            let mut next = attempts.clone();
            next.borrow_and_update();
            return Some(next);
        }
        let (attempts_tx, attempts) = watch::channel(0u64);
        running.insert(id.to_string(), attempts.clone());
        drop(running);
        let id = id.to_string();
        tokio::spawn(async move {
            if agent.teardowns.delay_ms > 0 {
                info!(workstation = %id, delay_ms = agent.teardowns.delay_ms, "test seam: teardown delayed");
                tokio::time::sleep(Duration::from_millis(agent.teardowns.delay_ms)).await;
            }
            let mut retry_ms = RETRY_MS_MIN;
            let succeeded = loop {
                let succeeded = tear_down(&agent, &id, generation).await;
                attempts_tx.send_modify(|count| *count = count.saturating_add(1));
                if succeeded || agent.shutting_down.load(Ordering::SeqCst) {
                    break succeeded;
                }
                tokio::time::sleep(Duration::from_millis(retry_ms)).await;
                retry_ms = retry_ms.saturating_mul(2).min(RETRY_MS_MAX);
            };
            agent.teardowns.running.lock().remove(&id);
            drop(attempts_tx);
            if succeeded {
                agent
                    .teardowns
                    .finished
                    .send_modify(|count| *count = count.wrapping_add(1));
            }
        });
        Some(attempts)
    }
}

/// Waits until each teardown in `attempts` has ended the attempt it was in when its receiver
/// was handed out (its first one for a new teardown), whether it succeeded or not: a caller
/// sees the outcome of one try, as it would of a teardown of its own, and a failing teardown
/// goes on trying on its task.
pub async fn wait_attempts(attempts: Vec<watch::Receiver<u64>>) {
    for mut receiver in attempts {
        // An error: the task ended (its sender is gone), so the attempt did too.
        let _ = receiver.changed().await;
    }
}

/// One teardown attempt: everything of the workstation goes from the host, then its hosting
/// record (only the record of the generation torn down). False when something is left: the
/// record stays, and the teardown's task tries again after a pause.
async fn tear_down(agent: &Agent, id: &str, generation: u64) -> bool {
    // The record goes only once nothing of the workstation is left on the host (a full disk,
    // say, can make the record's removal fail, never the teardown itself).
    if let Err(err) = agent.host.remove(id, TEARDOWN_GRACE_MS).await {
        warn!(workstation = %id, error = %err, "teardown incomplete: trying again later");
        return false;
    }
    let forgotten = agent.store.write(|model| {
        if model
            .workstations
            .get(id)
            .is_some_and(|record| record.generation == generation)
        {
            model.workstations.remove(id);
        }
        Ok(())
    });
    match forgotten {
        Ok(()) => {
            info!(workstation = %id, generation, "workstation torn down");
            true
        }
        Err(err) => {
            warn!(workstation = %id, error = %err, "could not forget a removed workstation: trying again later");
            false
        }
    }
}
