//! The node's metrics (`GET /metrics`, Prometheus text format 0.0.4), on `prometheus-client`.
//!
//! Two kinds of series, and every value is measured, none is a constant:
//! - **Events**, recorded where they happen: API requests (by route pattern, method and status
//!   class), runs (by verdict, with their wall time), placements (create committed → the
//!   workstation's sandbox running on its host), Raft proposals (submit → applied outcome), and
//!   the apply lag this node saw at its last acknowledged heartbeat.
//! - **State**, read at scrape time from the agent ([`render`]): leadership and term from this
//!   node's Raft metrics (or, on a worker-only node, its mirror of the leader's state), the lease,
//!   node states and the pool, and the workstations, processes and log buffers hosted here.
//!
//! The agent and the services reach metrics through this module only; the HTTP adapter calls
//! [`render`] and [`Metrics::observe_request`] and holds no metric of its own.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use shoal_executor::workstation::ProcessState;
use shoal_raft::RaftStatus;

use crate::agent::Agent;
use crate::api_types::{NodeInfo, NodeState, Pool, WorkstationState};

/// The `Content-Type` of what [`render`] returns (Prometheus text format 0.0.4).
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// The route label of a request that matched no route: one value, so that a scan of random
/// paths cannot grow the number of series.
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// Upper bounds of the API request-latency buckets, in seconds.
const REQUEST_BUCKETS_SECONDS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];
/// Upper bounds of the run wall-time buckets, in seconds (runs last at most minutes).
const RUN_BUCKETS_SECONDS: [f64; 13] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];
/// Upper bounds of the placement-latency buckets, in seconds.
const PLACEMENT_BUCKETS_SECONDS: [f64; 12] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Upper bounds of the Raft commit-latency buckets, in seconds.
const COMMIT_BUCKETS_SECONDS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The run verdicts (the executor's wire names), exported from the start with 0.
pub const VERDICTS: [&str; 9] = [
    "ok",
    "nonzero_exit",
    "signaled",
    "timeout",
    "cpu_limit",
    "memory_limit",
    "process_limit",
    "output_limit",
    "internal_error",
];

/// The kinds of refused mesh messages (a fixed set: bounded series).
const MESH_REFUSAL_KINDS: [&str; 3] = ["raft", "write", "other"];

/// How a proposal through [`Agent::propose`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitResult {
    /// Committed and applied; the state machine accepted it.
    Applied,
    /// Committed and applied; the state machine refused it (a conflict, a full pool, ...).
    Refused,
    /// Not committed: no leader reachable, or the leader failed it.
    Failed,
}

impl CommitResult {
    fn label(self) -> &'static str {
        match self {
            CommitResult::Applied => "applied",
            CommitResult::Refused => "refused",
            CommitResult::Failed => "failed",
        }
    }
}

const COMMIT_RESULTS: [CommitResult; 3] = [
    CommitResult::Applied,
    CommitResult::Refused,
    CommitResult::Failed,
];

type U64Gauge = Gauge<u64, AtomicU64>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClassLabel {
    class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VerdictLabel {
    verdict: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

/// The route is an actix pattern from the route table (or [`UNMATCHED_ROUTE`]) and the
/// method one of a fixed set: the number of series is bounded by the route table.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    method: &'static str,
    class: &'static str,
}

fn request_histogram() -> Histogram {
    Histogram::new(REQUEST_BUCKETS_SECONDS)
}

fn run_histogram() -> Histogram {
    Histogram::new(RUN_BUCKETS_SECONDS)
}

fn commit_histogram() -> Histogram {
    Histogram::new(COMMIT_BUCKETS_SECONDS)
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// What is read from the agent at scrape time (see [`render`]); plain numbers, so that
/// [`Metrics::set_state`] is pure.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StateSample {
    /// Nodes by state: ready, draining, down.
    pub nodes_by_state: [u64; 3],
    /// Whether this node's Raft is stopped by a storage error and retrying.
    pub storage_failed: bool,
    /// Times this node rebuilt its Raft core after a storage error.
    pub storage_recoveries: u64,
    /// Whether this node is the Raft leader ([`leads`]).
    pub is_leader: bool,
    /// The current term this node knows.
    pub term: u64,
    /// Whether this node holds its lease (hosted workstations may run).
    pub lease_held: bool,
    /// The pool over ready and draining nodes.
    pub pool: Pool,
    /// Workstations hosted here: running, other.
    pub workstations: [u64; 2],
    /// Processes hosted here by state: starting, running, exited, backoff, crash loop.
    pub processes: [u64; 5],
    /// Log bytes written by the workstations hosted here.
    pub log_bytes_written: u64,
    /// Log bytes dropped from their buffers.
    pub log_bytes_dropped: u64,
}

/// Every series of the node. Shared (`Arc`) by the agent, the host and the HTTP adapter;
/// recording is a relaxed atomic update.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    nodes: Family<StateLabel, U64Gauge>,
    storage_failed: U64Gauge,
    storage_recoveries: U64Gauge,
    is_leader: U64Gauge,
    raft_term: U64Gauge,
    lease_held: U64Gauge,
    pool_cpu_millis: Family<KindLabel, U64Gauge>,
    pool_memory_bytes: Family<KindLabel, U64Gauge>,
    workstations: Family<StateLabel, U64Gauge>,
    processes: Family<StateLabel, U64Gauge>,
    log_bytes_written: U64Gauge,
    log_bytes_dropped: U64Gauge,
    apply_lag: U64Gauge,
    http_requests: Family<ClassLabel, Counter>,
    http_duration: HistogramFamily<RequestLabels>,
    runs: Family<VerdictLabel, Counter>,
    run_duration: HistogramFamily<VerdictLabel>,
    placement_duration: Histogram,
    commit_duration: HistogramFamily<ResultLabel>,
    mesh_refused: Family<KindLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every series (labelled series with a fixed label set start at 0).
    pub fn new() -> Metrics {
        let mut metrics = Metrics {
            registry: Registry::default(),
            nodes: Family::default(),
            storage_failed: U64Gauge::default(),
            storage_recoveries: U64Gauge::default(),
            is_leader: U64Gauge::default(),
            raft_term: U64Gauge::default(),
            lease_held: U64Gauge::default(),
            pool_cpu_millis: Family::default(),
            pool_memory_bytes: Family::default(),
            workstations: Family::default(),
            processes: Family::default(),
            log_bytes_written: U64Gauge::default(),
            log_bytes_dropped: U64Gauge::default(),
            apply_lag: U64Gauge::default(),
            http_requests: Family::default(),
            http_duration: Family::new_with_constructor(request_histogram),
            runs: Family::default(),
            run_duration: Family::new_with_constructor(run_histogram),
            placement_duration: Histogram::new(PLACEMENT_BUCKETS_SECONDS),
            commit_duration: Family::new_with_constructor(commit_histogram),
            mesh_refused: Family::default(),
        };
        metrics.register_all();
        for verdict in VERDICTS {
            let _ = metrics.runs.get_or_create(&VerdictLabel { verdict });
            let _ = metrics
                .run_duration
                .get_or_create(&VerdictLabel { verdict });
        }
        for result in COMMIT_RESULTS {
            let _ = metrics.commit_duration.get_or_create(&ResultLabel {
                result: result.label(),
            });
        }
        for kind in MESH_REFUSAL_KINDS {
            let _ = metrics.mesh_refused.get_or_create(&KindLabel { kind });
        }
        for class in STATUS_CLASSES {
            let _ = metrics.http_requests.get_or_create(&ClassLabel { class });
        }
        metrics
    }

    fn register_all(&mut self) {
        let r = &mut self.registry;
        r.register("shoal_nodes", "Nodes by state.", self.nodes.clone());
        r.register(
            "shoal_raft_storage_failed",
            "1 while this node's Raft is stopped by a storage error (e.g. a full disk) and retrying.",
            self.storage_failed.clone(),
        );
        r.register(
            "shoal_raft_storage_recoveries",
            "Times this node rebuilt its Raft core after a storage error since it started.",
            self.storage_recoveries.clone(),
        );
        r.register(
            "shoal_is_leader",
            "1 while this node's Raft metrics name this node the current leader.",
            self.is_leader.clone(),
        );
        r.register(
            "shoal_raft_term",
            "The current Raft term this node knows (a worker-only node: as last heard from the leader).",
            self.raft_term.clone(),
        );
        r.register(
            "shoal_lease_held",
            "1 while this node holds its lease: the workstations it hosts may run.",
            self.lease_held.clone(),
        );
        r.register(
            "shoal_pool_cpu_millis",
            "The pool's CPU in millicores.",
            self.pool_cpu_millis.clone(),
        );
        r.register(
            "shoal_pool_memory_bytes",
            "The pool's memory in bytes.",
            self.pool_memory_bytes.clone(),
        );
        r.register(
            "shoal_workstations",
            "Workstations hosted on this node by state.",
            self.workstations.clone(),
        );
        r.register(
            "shoal_processes",
            "Workstation processes on this node by state.",
            self.processes.clone(),
        );
        r.register(
            "shoal_log_bytes_written",
            "Log bytes written by the workstations hosted here since they started on this node.",
            self.log_bytes_written.clone(),
        );
        r.register(
            "shoal_log_bytes_dropped",
            "Log bytes dropped from the 5 MiB buffers of the workstations hosted here.",
            self.log_bytes_dropped.clone(),
        );
        r.register(
            "shoal_raft_apply_lag_entries",
            "Entries the leader had applied and this node had not, at this node's last acknowledged heartbeat.",
            self.apply_lag.clone(),
        );
        r.register(
            "shoal_http_requests",
            "Control API requests by status class.",
            self.http_requests.clone(),
        );
        r.register(
            "shoal_http_request_duration_seconds",
            "Control API request latency by route pattern, method and status class.",
            self.http_duration.clone(),
        );
        r.register(
            "shoal_runs",
            "Runs executed on this node, by verdict.",
            self.runs.clone(),
        );
        r.register(
            "shoal_run_duration_seconds",
            "Wall time of the runs executed on this node, by verdict.",
            self.run_duration.clone(),
        );
        r.register(
            "shoal_placement_duration_seconds",
            "A new workstation's create command (its time, on the proposing node's clock) to its sandbox running on this host.",
            self.placement_duration.clone(),
        );
        r.register(
            "shoal_mesh_refused",
            "Mesh messages refused because their sender may not send them, by kind (raft, write).",
            self.mesh_refused.clone(),
        );
        r.register(
            "shoal_raft_commit_duration_seconds",
            "Proposals from this node: submit to applied outcome (forwarding to the leader included), by result.",
            self.commit_duration.clone(),
        );
    }

    /// Records one mesh message refused by `mesh_authz` (`kind`: `raft` or `write`).
    pub fn observe_mesh_refusal(&self, kind: &'static str) {
        let kind = MESH_REFUSAL_KINDS
            .into_iter()
            .find(|known| *known == kind)
            .unwrap_or("other");
        self.mesh_refused.get_or_create(&KindLabel { kind }).inc();
    }

    /// Records one answered API request: `route` is the matched actix pattern, if any.
    pub fn observe_request(
        &self,
        route: Option<&str>,
        method: &str,
        status: u16,
        elapsed: Duration,
    ) {
        let class = status_class(status);
        self.http_requests
            .get_or_create(&ClassLabel { class })
            .inc();
        self.http_duration
            .get_or_create(&RequestLabels {
                route: route.unwrap_or(UNMATCHED_ROUTE).to_string(),
                method: method_label(method),
                class,
            })
            .observe(elapsed.as_secs_f64());
    }

    /// Records one finished run with its wall time.
    pub fn observe_run(&self, verdict: &'static str, wall_ms: u64) {
        let label = VerdictLabel { verdict };
        self.runs.get_or_create(&label).inc();
        self.run_duration
            .get_or_create(&label)
            .observe(millis_to_seconds(wall_ms));
    }

    /// Records a new workstation started on this host: `created_unix_ms` is its create
    /// command's time, `now_unix_ms` this host's clock (a skew between the two clocks shows up
    /// here; a negative difference counts as 0).
    pub fn observe_placement(&self, created_unix_ms: u64, now_unix_ms: u64) {
        self.placement_duration.observe(millis_to_seconds(
            now_unix_ms.saturating_sub(created_unix_ms),
        ));
    }

    /// Records one proposal through [`Agent::propose`].
    pub fn observe_commit(&self, result: CommitResult, elapsed: Duration) {
        self.commit_duration
            .get_or_create(&ResultLabel {
                result: result.label(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// Records the apply lag seen at an acknowledged heartbeat.
    pub fn set_apply_lag(&self, leader_applied_index: u64, own_applied_index: u64) {
        self.apply_lag
            .set(leader_applied_index.saturating_sub(own_applied_index));
    }

    /// Sets the gauges read at scrape time.
    pub fn set_state(&self, sample: &StateSample) {
        for (state, value) in ["ready", "draining", "down"]
            .into_iter()
            .zip(sample.nodes_by_state)
        {
            self.nodes.get_or_create(&StateLabel { state }).set(value);
        }
        self.storage_failed.set(u64::from(sample.storage_failed));
        self.storage_recoveries.set(sample.storage_recoveries);
        self.is_leader.set(u64::from(sample.is_leader));
        self.raft_term.set(sample.term);
        self.lease_held.set(u64::from(sample.lease_held));
        for (family, resource) in [
            (&self.pool_cpu_millis, &sample.pool.cpu_millis),
            (&self.pool_memory_bytes, &sample.pool.memory_bytes),
        ] {
            for (kind, value) in [
                ("capacity", resource.capacity),
                ("reserved", resource.reserved),
                ("used", resource.used),
            ] {
                family.get_or_create(&KindLabel { kind }).set(value);
            }
        }
        for (state, value) in ["running", "other"].into_iter().zip(sample.workstations) {
            self.workstations
                .get_or_create(&StateLabel { state })
                .set(value);
        }
        for (state, value) in ["starting", "running", "exited", "backoff", "crash_loop"]
            .into_iter()
            .zip(sample.processes)
        {
            self.processes
                .get_or_create(&StateLabel { state })
                .set(value);
        }
        self.log_bytes_written.set(sample.log_bytes_written);
        self.log_bytes_dropped.set(sample.log_bytes_dropped);
    }

    /// Every series in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(8192);
        if let Err(err) =
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
        {
            // Writing to a String does not fail; say so rather than serve half a page quietly.
            tracing::warn!(error = %err, "encoding the metrics failed");
        }
        out
    }
}

/// The status classes of [`status_class`], exported from the start with 0.
const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// `404` → `"4xx"`; anything outside 100..=599 falls into the nearest class.
pub fn status_class(status: u16) -> &'static str {
    let index = usize::from(status / 100).clamp(1, 5) - 1;
    STATUS_CLASSES[index]
}

/// The method label: the standard methods by name, anything else as `other` (a client can
/// send any token as a method).
pub fn method_label(method: &str) -> &'static str {
    match method {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        "HEAD" => "HEAD",
        "OPTIONS" => "OPTIONS",
        _ => "other",
    }
}

/// Whether this node is the Raft leader: its Raft metrics say it leads *and* name it the
/// current leader (a worker-only node's mirror never leads).
pub fn leads(status: &RaftStatus) -> bool {
    status.is_leader && status.leader == Some(status.id)
}

/// Nodes by state (ready, draining, down), as `/v1/nodes` shows them.
pub fn nodes_by_state(nodes: &[NodeInfo]) -> [u64; 3] {
    let mut counts = [0u64; 3];
    for node in nodes {
        let index = match node.state {
            NodeState::Ready => 0,
            NodeState::Draining => 1,
            NodeState::Down => 2,
            NodeState::Left => continue,
        };
        counts[index] += 1;
    }
    counts
}

fn process_state_index(state: ProcessState) -> usize {
    match state {
        ProcessState::Starting => 0,
        ProcessState::Running => 1,
        ProcessState::Exited => 2,
        ProcessState::Backoff => 3,
        ProcessState::CrashLoop => 4,
    }
}

fn millis_to_seconds(ms: u64) -> f64 {
    ms as f64 / 1_000.0
}

/// `GET /metrics`: reads the agent's state into the scrape-time gauges and encodes every
/// series. `nodes` and `pool` are what `/v1/nodes` and `/v1/cluster` show.
pub async fn render(agent: &Agent, nodes: &[NodeInfo], pool: &Pool) -> String {
    let status = agent.raft.status();
    let storage = agent.raft.storage_status();
    let mut sample = StateSample {
        nodes_by_state: nodes_by_state(nodes),
        storage_failed: storage.failed.is_some(),
        storage_recoveries: storage.recoveries,
        is_leader: leads(&status),
        term: status.term,
        lease_held: agent.fence.may_run(),
        pool: *pool,
        ..StateSample::default()
    };
    let ids: Vec<String> = agent
        .store
        .read(|model| model.workstations.keys().cloned().collect());
    for id in &ids {
        let (state, _) = agent.host.state(id).await;
        if let Some((written, dropped)) = agent.host.log_counters(id).await {
            sample.log_bytes_written = sample.log_bytes_written.saturating_add(written);
            sample.log_bytes_dropped = sample.log_bytes_dropped.saturating_add(dropped);
        }
        let index = usize::from(state != WorkstationState::Running);
        sample.workstations[index] += 1;
        match agent.host.processes(id).await {
            Ok(processes) => {
                for process in processes {
                    sample.processes[process_state_index(process.state)] += 1;
                }
            }
            Err(err) => {
                tracing::debug!(workstation = %id, error = %err, "metrics: processes not listed")
            }
        }
    }
    agent.metrics.set_state(&sample);
    agent.metrics.encode()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn status(id: u64, is_leader: bool, leader: Option<u64>) -> RaftStatus {
        RaftStatus {
            id,
            is_leader,
            leader,
            term: 3,
            last_log_index: None,
            last_applied_index: None,
            snapshot_index: None,
            voters: BTreeSet::new(),
            learners: BTreeSet::new(),
        }
    }

    #[test]
    fn only_a_node_that_leads_and_is_named_leader_reports_leading() {
        assert!(leads(&status(1, true, Some(1))));
        assert!(!leads(&status(1, false, Some(2))), "a follower");
        assert!(!leads(&status(1, false, None)), "no leader known");
        assert!(
            !leads(&status(1, true, Some(2))),
            "a stale leader state naming another"
        );
        assert!(!leads(&status(4, false, Some(1))), "a worker's mirror");
    }

    #[test]
    fn status_classes_and_methods_are_bounded() {
        for (status, class) in [(101, "1xx"), (200, "2xx"), (404, "4xx"), (503, "5xx")] {
            assert_eq!(status_class(status), class);
        }
        assert_eq!(status_class(0), "1xx");
        assert_eq!(status_class(999), "5xx");
        assert_eq!(method_label("DELETE"), "DELETE");
        assert_eq!(method_label("BREW"), "other");
    }

    fn line_value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn scrape_time_gauges_show_the_sample() {
        let metrics = Metrics::new();
        let mut sample = StateSample {
            nodes_by_state: [2, 1, 1],
            is_leader: true,
            term: 7,
            lease_held: true,
            workstations: [3, 1],
            processes: [0, 4, 1, 0, 2],
            log_bytes_dropped: 12,
            ..StateSample::default()
        };
        sample.pool.memory_bytes.reserved = 1 << 30;
        metrics.set_state(&sample);
        let text = metrics.encode();
        for (series, value) in [
            ("shoal_nodes{state=\"ready\"}", 2.0),
            ("shoal_nodes{state=\"down\"}", 1.0),
            ("shoal_is_leader", 1.0),
            ("shoal_raft_term", 7.0),
            ("shoal_lease_held", 1.0),
            (
                "shoal_pool_memory_bytes{kind=\"reserved\"}",
                1_073_741_824.0,
            ),
            ("shoal_workstations{state=\"running\"}", 3.0),
            ("shoal_processes{state=\"crash_loop\"}", 2.0),
            ("shoal_log_bytes_dropped", 12.0),
        ] {
            assert_eq!(
                line_value(&text, series),
                Some(value),
                "{series} in\n{text}"
            );
        }
        sample.is_leader = false;
        sample.lease_held = false;
        metrics.set_state(&sample);
        let text = metrics.encode();
        assert_eq!(line_value(&text, "shoal_is_leader"), Some(0.0));
        assert_eq!(line_value(&text, "shoal_lease_held"), Some(0.0));
    }

    #[test]
    fn request_histogram_is_labelled_by_route_and_cumulative() {
        let metrics = Metrics::new();
        let route = Some("/v1/workstations/{id}");
        metrics.observe_request(route, "GET", 200, Duration::from_micros(500));
        metrics.observe_request(route, "GET", 200, Duration::from_millis(30));
        metrics.observe_request(None, "GET", 404, Duration::from_secs(20));
        let text = metrics.encode();
        let labels = "route=\"/v1/workstations/{id}\",method=\"GET\",class=\"2xx\"";
        let bucket = |le: &str| {
            format!("shoal_http_request_duration_seconds_bucket{{{labels},le=\"{le}\"}}")
        };
        assert_eq!(line_value(&text, &bucket("0.001")), Some(1.0), "{text}");
        assert_eq!(line_value(&text, &bucket("0.05")), Some(2.0));
        assert_eq!(line_value(&text, &bucket("+Inf")), Some(2.0));
        assert_eq!(
            line_value(
                &text,
                &format!("shoal_http_request_duration_seconds_count{{{labels}}}")
            ),
            Some(2.0)
        );
        assert_eq!(
            line_value(
                &text,
                "shoal_http_request_duration_seconds_count{route=\"unmatched\",method=\"GET\",class=\"4xx\"}"
            ),
            Some(1.0)
        );
        assert_eq!(
            line_value(&text, "shoal_http_requests_total{class=\"4xx\"}"),
            Some(1.0)
        );
    }

    #[test]
    fn runs_placements_commits_and_lag_are_recorded() {
        let metrics = Metrics::new();
        let text = metrics.encode();
        assert_eq!(
            line_value(&text, "shoal_runs_total{verdict=\"timeout\"}"),
            Some(0.0),
            "every verdict is exported from the start"
        );
        metrics.observe_run("ok", 1_500);
        metrics.observe_placement(10_000, 10_250);
        metrics.observe_placement(10_000, 9_000);
        metrics.observe_commit(CommitResult::Refused, Duration::from_millis(3));
        metrics.set_apply_lag(120, 100);
        let text = metrics.encode();
        assert_eq!(
            line_value(&text, "shoal_runs_total{verdict=\"ok\"}"),
            Some(1.0)
        );
        assert_eq!(
            line_value(&text, "shoal_run_duration_seconds_sum{verdict=\"ok\"}"),
            Some(1.5)
        );
        assert_eq!(
            line_value(&text, "shoal_placement_duration_seconds_count"),
            Some(2.0)
        );
        assert_eq!(
            line_value(&text, "shoal_placement_duration_seconds_sum"),
            Some(0.25),
            "a clock skew counts as 0, not as a wrapped-around age"
        );
        assert_eq!(
            line_value(
                &text,
                "shoal_raft_commit_duration_seconds_count{result=\"refused\"}"
            ),
            Some(1.0)
        );
        assert_eq!(
            line_value(&text, "shoal_raft_apply_lag_entries"),
            Some(20.0)
        );
        metrics.set_apply_lag(100, 120);
        assert_eq!(
            line_value(&metrics.encode(), "shoal_raft_apply_lag_entries"),
            Some(0.0)
        );
    }
}
