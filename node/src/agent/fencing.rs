//! Lease fencing on the node: a node that cannot show that the leader heard it recently stops
//! every workstation it hosts, before the leader can give them to another node.
//!
//! [`Fence`] is the pure, clock-driven core: it is fed the times of acknowledged heartbeats
//! (the time each was *sent*, never the time the ack arrived), this node's applied Raft index
//! and clock ticks, and answers with what to do: [`FenceAction::StopAll`] when the lease runs
//! out while workstations may run, [`FenceAction::Resume`] when the lease is renewed and this
//! node's committed state has caught up with what the leader had applied when it acknowledged
//! (so that a placement re-placed meanwhile is seen as moved, never resumed). The lease is half
//! the cluster's heartbeat grace, at most 5 s ([`shoal_raft::lease::lease_ms_for_grace`]).
//!
//! [`fence_loop`] is the thin driver: it applies acks posted by the heartbeat loop
//! ([`FenceHandle::post_ack`]), wakes at the lease's deadline and on every applied index, and
//! carries out the actions: stop every hosted workstation (its processes and sandbox; the
//! hosting record and home volume stay so that it can resume), or resume the placements whose
//! generation is still current. The stop waits on nothing slow (no reconcile lock, no Raft
//! round trip, no teardown: only the start gate, see [`FenceHandle::start_gated`]), and a
//! resume runs on a task of its own, so the loop notices every expiry on time. The leader
//! fences itself the same way: its heartbeat to itself is acknowledged only while it has
//! confirmed its leadership with a quorum within the last second, so a leader cut off from
//! its quorum lets its lease run out like any other node.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use shoal_raft::lease::Lease;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::Agent;

/// Grace between SIGTERM and SIGKILL when the fence stops a workstation's processes: short,
/// because the leader may re-place them once the grace has passed.
pub const FENCE_STOP_GRACE_MS: u64 = 500;

/// Acks waiting for the fence loop (the heartbeat loop drops an ack when full: renewal waits
/// for the next one).
const ACKS_QUEUED_MAX: usize = 16;

/// Where the fence stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FenceState {
    /// No valid lease (start-up, or it ran out): nothing hosted here may run.
    Expired,
    /// The lease was renewed after being expired; workstations resume once this node has
    /// applied at least `applied_index_min` (what the leader had applied when it acknowledged).
    CatchingUp {
        /// The leader's applied index at the renewing ack.
        applied_index_min: u64,
    },
    /// The lease holds and this node's state is current: its workstations may run.
    Held,
}

/// What the driver must do after a transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FenceAction {
    /// Stop every hosted workstation's processes and sandbox; keep records and home volumes.
    StopAll,
    /// Resume the hosted placements whose generation is still current in the committed state.
    Resume,
}

/// The pure fence: a [`Lease`] plus the catch-up rule. Reads no clock.
#[derive(Debug, Clone)]
pub struct Fence {
    lease: Lease,
    state: FenceState,
}

impl Fence {
    /// A fence with a lease of `lease_ms`, expired: nothing runs until the first ack.
    pub fn new(lease_ms: u64) -> Fence {
        Fence {
            lease: Lease::new(lease_ms),
            state: FenceState::Expired,
        }
    }

    /// The current state.
    pub fn state(&self) -> FenceState {
        self.state
    }

    /// The lease's duration.
    pub fn lease_ms(&self) -> u64 {
        self.lease.duration_ms()
    }

    /// Changes the lease (the cluster's heartbeat grace changed). Takes effect at the next
    /// event.
    pub fn set_lease_ms(&mut self, lease_ms: u64) {
        self.lease.set_duration_ms(lease_ms);
    }

    /// True when hosted workstations may run at `now_ms`: the state is current and the lease
    /// has not run out (even if no tick has been processed since it did).
    pub fn may_run(&self, now_ms: u64) -> bool {
        self.state == FenceState::Held && !self.lease.expired(now_ms)
    }

    /// When the driver must tick next to notice expiry (`None` when nothing is running).
    pub fn deadline_ms(&self) -> Option<u64> {
        match self.state {
            FenceState::Expired => None,
            FenceState::CatchingUp { .. } | FenceState::Held => self.lease.expires_at_ms(),
        }
    }

    /// Time passes: when the lease has run out, workstations that may run must stop.
    pub fn on_tick(&mut self, now_ms: u64) -> Option<FenceAction> {
        if !self.lease.expired(now_ms) {
            return None;
        }
        let was = std::mem::replace(&mut self.state, FenceState::Expired);
        (was == FenceState::Held).then_some(FenceAction::StopAll)
    }

    /// The leader acknowledged a heartbeat sent at `sent_at_ms`, when it had applied up to
    /// `leader_applied_index`; this node has applied up to `applied_index`.
    pub fn on_ack(
        &mut self,
        sent_at_ms: u64,
        now_ms: u64,
        leader_applied_index: u64,
        applied_index: u64,
    ) -> Option<FenceAction> {
        self.lease.renew(sent_at_ms);
        if let Some(action) = self.on_tick(now_ms) {
            return Some(action);
        }
        if self.lease.expired(now_ms) {
            // The ack came back too late to hold anything.
            return None;
        }
        if self.state == FenceState::Expired {
            self.state = FenceState::CatchingUp {
                applied_index_min: leader_applied_index,
            };
        }
        self.on_applied(now_ms, applied_index)
    }

    /// This node has applied up to `applied_index`.
    pub fn on_applied(&mut self, now_ms: u64, applied_index: u64) -> Option<FenceAction> {
        if let Some(action) = self.on_tick(now_ms) {
            return Some(action);
        }
        match self.state {
            FenceState::CatchingUp { applied_index_min } if applied_index >= applied_index_min => {
                self.state = FenceState::Held;
                Some(FenceAction::Resume)
            }
            _ => None,
        }
    }
}

/// Monotonic milliseconds since the first call in this process (the fence's time base).
pub fn monotonic_ms() -> u64 {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    let origin = *ORIGIN.get_or_init(crate::clock::monotonic_now);
    u64::try_from(
        crate::clock::monotonic_now()
            .duration_since(origin)
            .as_millis(),
    )
    .unwrap_or(u64::MAX)
}

/// An acknowledged heartbeat, as the heartbeat loop posts it.
#[derive(Debug, Clone, Copy)]
pub struct Ack {
    /// When the heartbeat was sent ([`monotonic_ms`]).
    pub sent_at_ms: u64,
    /// What the leader had applied when it acknowledged.
    pub leader_applied_index: u64,
}

/// The fence shared by the heartbeat loop (acks in), the reconcile paths (may anything run?)
/// and [`fence_loop`] (the only one that changes it).
#[derive(Debug)]
pub struct FenceHandle {
    fence: Mutex<Fence>,
    acks: mpsc::Sender<Ack>,
    acks_in: Mutex<Option<mpsc::Receiver<Ack>>>,
    /// Held by a fence stop while it stops everything, and by each start of a workstation's
    /// actor around its check of the fence: a start either happens before the stop (which
    /// then stops it) or sees the expired fence. Nothing else takes it, and no holder waits on
    /// Raft, a teardown or another lock meanwhile.
    start_gate: tokio::sync::Mutex<()>,
}

impl FenceHandle {
    /// A handle around an expired fence with a lease of `lease_ms`.
    pub fn new(lease_ms: u64) -> Arc<FenceHandle> {
        let (acks, acks_in) = mpsc::channel(ACKS_QUEUED_MAX);
        Arc::new(FenceHandle {
            fence: Mutex::new(Fence::new(lease_ms)),
            acks,
            acks_in: Mutex::new(Some(acks_in)),
            start_gate: tokio::sync::Mutex::new(()),
        })
    }

    /// Runs `start` (which starts a workstation's actor) only if workstations may run now,
    /// under the start gate, so that it cannot slip past a fence stop running at the same
    /// time; `None` when the fence forbids it. `start` must not block for long: a fence stop
    /// waits for it.
    pub async fn start_gated<R>(&self, start: impl FnOnce() -> R) -> Option<R> {
        let _gate = self.start_gate.lock().await;
        self.may_run().then(start)
    }

    /// True when hosted workstations may run now.
    pub fn may_run(&self) -> bool {
        self.fence.lock().may_run(monotonic_ms())
    }

    /// Hands an acknowledged heartbeat to the fence loop (dropped when the queue is full).
    pub fn post_ack(&self, ack: Ack) {
        if self.acks.try_send(ack).is_err() {
            warn!("fence: ack queue full, renewal waits for the next heartbeat");
        }
    }

    /// Waits until workstations may run, at most `timeout`; true if they may.
    pub async fn wait_held(&self, timeout: Duration) -> bool {
        let waiting = async {
            while !self.may_run() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(timeout, waiting).await.is_ok()
    }
}

/// The lease for the cluster's committed heartbeat grace.
fn lease_ms_of(agent: &Agent) -> u64 {
    let grace_ms = agent
        .raft
        .read(|state| state.settings.heartbeat_grace_ms)
        .max(1);
    shoal_raft::lease::lease_ms_for_grace(grace_ms)
}

/// Stops every workstation hosted here (processes and sandboxes); the hosting records and home
/// volumes stay. Takes only the start gate ([`FenceHandle::start_gated`]), which nothing holds
/// for longer than one actor start: never the reconcile lock, so it never waits behind a
/// reconcile, a Raft round trip or a teardown. The fence is already expired when this runs, so
/// no start after the gate is taken here can succeed.
async fn stop_all(agent: &Agent) {
    let _no_starts = agent.fence.start_gate.lock().await;
    agent
        .host
        .shutdown(Duration::from_millis(FENCE_STOP_GRACE_MS))
        .await;
}

/// Drives `agent.fence`: acks from the heartbeat loop, the lease's deadline and the applied
/// index in, stops and resumes out. Runs until the agent stops.
pub async fn fence_loop(agent: Arc<Agent>) {
    let Some(mut acks) = agent.fence.acks_in.lock().take() else {
        warn!("fence loop started twice");
        return;
    };
    let mut applied = agent.raft.subscribe_applied();
    loop {
        let (deadline, lease_ms) = {
            let mut fence = agent.fence.fence.lock();
            fence.set_lease_ms(lease_ms_of(&agent));
            (fence.deadline_ms(), fence.lease_ms())
        };
        // Wake at the deadline, or at least every lease period (a changed grace is picked up).
        let wait_ms = deadline
            .map_or(lease_ms, |at| at.saturating_sub(monotonic_ms()))
            .min(lease_ms)
            .max(1);
        let action = tokio::select! {
            ack = acks.recv() => {
                let Some(ack) = ack else { return };
                let applied_index = *applied.borrow();
                agent.fence.fence.lock().on_ack(
                    ack.sent_at_ms,
                    monotonic_ms(),
                    ack.leader_applied_index,
                    applied_index,
                )
            }
            changed = applied.changed() => {
                if changed.is_err() {
                    return;
                }
                let applied_index = *applied.borrow();
                agent.fence.fence.lock().on_applied(monotonic_ms(), applied_index)
            }
            _ = tokio::time::sleep(Duration::from_millis(wait_ms)) => {
                agent.fence.fence.lock().on_tick(monotonic_ms())
            }
        };
        match action {
            Some(FenceAction::StopAll) => {
                warn!(
                    lease_ms,
                    "lease expired (no acknowledged heartbeat): stopping every workstation here"
                );
                stop_all(&agent).await;
                info!("fenced: every workstation here is stopped until the lease is renewed");
            }
            Some(FenceAction::Resume) => {
                info!("lease held and state current: resuming current placements");
                // On a task of its own: a resume commits log floors (Raft round trips) and
                // waits for the reconcile lock, and this loop must stay free to notice the
                // next expiry on time.
                tokio::spawn(super::placement::resume(Arc::clone(&agent)));
            }
            None => {}
        }
        debug!(state = ?agent.fence.fence.lock().state(), "fence");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LEASE_MS: u64 = 5_000;

    /// One event of a generated history.
    #[derive(Debug, Clone)]
    enum Event {
        /// Time passes by this much, then the driver ticks.
        Advance(u64),
        /// An ack arrives for a heartbeat sent this long ago, when the leader had applied
        /// `leader_index`.
        Ack { age_ms: u64, leader_index: u64 },
        /// This node applies up to here (never goes back).
        Apply(u64),
    }

    fn event() -> impl Strategy<Value = Event> {
        prop_oneof![
            (0u64..3_000).prop_map(Event::Advance),
            (0u64..7_000, 0u64..50).prop_map(|(age_ms, leader_index)| Event::Ack {
                age_ms,
                leader_index
            }),
            (0u64..50).prop_map(Event::Apply),
        ]
    }

    #[test]
    fn a_new_fence_lets_nothing_run_until_an_ack_and_catch_up() {
        let mut fence = Fence::new(LEASE_MS);
        assert!(!fence.may_run(0));
        assert_eq!(fence.on_tick(1_000), None);
        // Acked at t=1000 for a heartbeat sent at t=900, leader had applied 7, we have 5.
        assert_eq!(fence.on_ack(900, 1_000, 7, 5), None);
        assert_eq!(
            fence.state(),
            FenceState::CatchingUp {
                applied_index_min: 7
            }
        );
        assert!(!fence.may_run(1_000), "stale state must not run");
        assert_eq!(fence.on_applied(1_100, 7), Some(FenceAction::Resume));
        assert!(fence.may_run(1_100));
    }

    #[test]
    fn the_lease_counts_from_the_send_time_and_expiry_stops_everything_once() {
        let mut fence = Fence::new(LEASE_MS);
        assert_eq!(fence.on_ack(0, 10, 0, 0), Some(FenceAction::Resume));
        // The ack arrived 10 ms after sending; the lease still ends at 0 + 5000.
        assert_eq!(fence.deadline_ms(), Some(LEASE_MS));
        assert!(fence.may_run(LEASE_MS - 1));
        assert!(!fence.may_run(LEASE_MS), "expired even before the tick");
        assert_eq!(fence.on_tick(LEASE_MS - 1), None);
        assert_eq!(fence.on_tick(LEASE_MS), Some(FenceAction::StopAll));
        assert_eq!(fence.on_tick(LEASE_MS + 1_000), None, "stopped only once");
        assert_eq!(fence.deadline_ms(), None);
    }

    #[test]
    fn an_ack_that_comes_back_after_the_lease_renews_nothing() {
        let mut fence = Fence::new(LEASE_MS);
        assert_eq!(fence.on_ack(0, 1, 0, 0), Some(FenceAction::Resume));
        // Sent at 1000, acknowledged only at 6500: its lease ended at 6000.
        assert_eq!(fence.on_ack(1_000, 6_500, 0, 0), Some(FenceAction::StopAll));
        assert_eq!(fence.state(), FenceState::Expired);
        // A later, timely ack renews it again.
        assert_eq!(fence.on_ack(6_400, 6_600, 3, 3), Some(FenceAction::Resume));
    }

    #[test]
    fn regular_acks_keep_the_lease_without_resuming_again() {
        let mut fence = Fence::new(LEASE_MS);
        assert_eq!(fence.on_ack(0, 5, 0, 0), Some(FenceAction::Resume));
        for second in 1..100u64 {
            let now = second * 1_000;
            assert_eq!(fence.on_tick(now), None);
            assert_eq!(fence.on_ack(now, now + 5, second, second - 1), None);
            assert!(fence.may_run(now + 5));
        }
    }

    #[test]
    fn a_shorter_grace_shortens_the_lease() {
        let mut fence = Fence::new(LEASE_MS);
        assert_eq!(fence.on_ack(0, 5, 0, 0), Some(FenceAction::Resume));
        fence.set_lease_ms(shoal_raft::lease::lease_ms_for_grace(4_000));
        assert_eq!(fence.lease_ms(), 2_000);
        assert_eq!(fence.on_tick(2_000), Some(FenceAction::StopAll));
        assert_eq!(shoal_raft::lease::lease_ms_for_grace(10_000), LEASE_MS);
        assert_eq!(shoal_raft::lease::lease_ms_for_grace(60_000), LEASE_MS);
    }

    proptest! {
        /// Against a model of the lease (the latest acknowledged send time) and of catch-up:
        /// workstations may run only while an acknowledged heartbeat was sent less than a
        /// lease ago and this node has applied what the leader had when the renewing ack was
        /// sent; the actions alternate Resume, StopAll, Resume, ... (nothing is stopped that
        /// was not resumed, nothing resumed twice); and a driver that ticks at the deadline
        /// never leaves workstations running past the lease.
        #[test]
        fn the_fence_matches_the_lease_model(events in proptest::collection::vec(event(), 1..200)) {
            let mut fence = Fence::new(LEASE_MS);
            let mut now_ms: u64 = 10_000;
            let mut latest_sent: Option<u64> = None;
            let mut applied: u64 = 0;
            let mut running = false;
            let mut catch_up_target: Option<u64> = None;
            for event in events {
                let action = match event {
                    Event::Advance(by) => {
                        // The driver wakes at the deadline if it comes first.
                        if let Some(deadline) = fence.deadline_ms() {
                            if deadline <= now_ms + by && deadline > now_ms {
                                let stopped = fence.on_tick(deadline);
                                if running {
                                    prop_assert_eq!(stopped, Some(FenceAction::StopAll));
                                    running = false;
                                }
                            }
                        }
                        now_ms += by;
                        fence.on_tick(now_ms)
                    }
                    Event::Ack { age_ms, leader_index } => {
                        let sent = now_ms.saturating_sub(age_ms);
                        latest_sent = Some(latest_sent.map_or(sent, |t| t.max(sent)));
                        let was_expired = fence.state() == FenceState::Expired;
                        let action = fence.on_ack(sent, now_ms, leader_index, applied);
                        if was_expired && fence.state() != FenceState::Expired {
                            catch_up_target = Some(leader_index);
                        }
                        action
                    }
                    Event::Apply(index) => {
                        applied = applied.max(index);
                        fence.on_applied(now_ms, applied)
                    }
                };
                match action {
                    Some(FenceAction::Resume) => {
                        prop_assert!(!running, "resumed twice");
                        prop_assert!(applied >= catch_up_target.unwrap_or(u64::MAX));
                        running = true;
                    }
                    Some(FenceAction::StopAll) => {
                        prop_assert!(running, "stopped what was not resumed");
                        running = false;
                    }
                    None => {}
                }
                let lease_holds = latest_sent.is_some_and(|sent| now_ms < sent + LEASE_MS);
                prop_assert_eq!(fence.may_run(now_ms), running && lease_holds);
                if running {
                    prop_assert!(lease_holds, "running past the lease");
                    prop_assert_eq!(fence.state(), FenceState::Held);
                }
            }
        }

        /// Liveness: a timely ack followed by catching up always lets workstations run.
        #[test]
        fn a_timely_ack_and_catch_up_always_resume(
            before in proptest::collection::vec(event(), 0..50),
            age_ms in 0u64..LEASE_MS,
            leader_index in 0u64..100,
        ) {
            let mut fence = Fence::new(LEASE_MS);
            let mut now_ms: u64 = 10_000;
            for event in before {
                match event {
                    Event::Advance(by) => {
                        now_ms += by;
                        fence.on_tick(now_ms);
                    }
                    Event::Ack { age_ms, leader_index } => {
                        fence.on_ack(now_ms.saturating_sub(age_ms), now_ms, leader_index, 0);
                    }
                    Event::Apply(_) => {}
                }
            }
            fence.on_ack(now_ms - age_ms, now_ms, leader_index, 0);
            fence.on_applied(now_ms, u64::MAX);
            prop_assert!(fence.may_run(now_ms));
        }
    }
}
