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

/// The teardowns running on this node, by workstation id.
#[derive(Debug)]
pub struct Teardowns {
    /// Workstation id → (generation being torn down, set to true when the teardown ends).
    running: Mutex<HashMap<String, (u64, watch::Receiver<bool>)>>,
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
    /// is running already; either way answers a receiver that turns true when the running
    /// teardown ends (successfully or not). `None` while the agent is going away.
    pub fn start(&self, id: &str, generation: u64) -> Option<watch::Receiver<bool>> {
        let agent = self.agent.upgrade()?;
        let (done_tx, done_rx) = {
            let mut running = self.running.lock();
            if let Some((_, done)) = running.get(id) {
                return Some(done.clone());
            }
            let (done_tx, done_rx) = watch::channel(false);
            running.insert(id.to_string(), (generation, done_rx.clone()));
            (done_tx, done_rx)
        };
        let id = id.to_string();
        tokio::spawn(async move {
            let succeeded = tear_down(&agent, &id, generation).await;
            agent.teardowns.running.lock().remove(&id);
            let _ = done_tx.send(true);
            if succeeded {
                agent
                    .teardowns
                    .finished
                    .send_modify(|count| *count = count.wrapping_add(1));
            }
        });
        Some(done_rx)
    }
}

/// Waits until every teardown in `done` has ended (a dropped sender counts as ended).
pub async fn wait_all(done: Vec<watch::Receiver<bool>>) {
    for mut receiver in done {
        let _ = receiver.wait_for(|ended| *ended).await;
    }
}

/// One teardown: everything of the workstation goes from the host, then its hosting record
/// (only the record of the generation torn down). False when something is left: the record
/// stays, and the reconcile loop tries again after a pause.
async fn tear_down(agent: &Agent, id: &str, generation: u64) -> bool {
    if agent.teardowns.delay_ms > 0 {
        info!(workstation = %id, delay_ms = agent.teardowns.delay_ms, "test seam: teardown delayed");
        tokio::time::sleep(Duration::from_millis(agent.teardowns.delay_ms)).await;
    }
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
