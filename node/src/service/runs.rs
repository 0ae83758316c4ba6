//! Runs: one program in a fresh sandbox, through the executor's run module
//! (`shoal_executor::run`), which validates, isolates, watches and classifies.
//!
//! Where a run executes is chosen by [`crate::agent::run_placement::choose`] from the leader's
//! live usage of the worker nodes: the called node keeps it when it is a worker about as free
//! as the best, otherwise the run goes over the mesh to the chosen worker
//! ([`super::hosting::Relayed::Run`], a stream, because a run may take longer than
//! a mesh request's timeout) and the answer names the node that ran it.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use shoal_executor::run::{self as exec_run, RunError};
use shoal_raft::model::Resources;
use shoal_raft::NodeId;

use super::hosting::{Relayed, RunAnswer};
use super::{refuse_if_stopping, Caller, ServiceError};
use crate::agent::{run_placement, Agent};
use crate::api_types::{Language, RunRequest, RunResult};
use crate::clock;
use crate::mesh_rpc::{app_stream, view_request, ViewReply, ViewRequest};

/// A run's default and largest wall time (SPEC): how long a forwarded run may take, plus
/// [`FORWARDED_RUN_MARGIN`].
const RUN_WALL_MS_MAX: u64 = 60_000;
/// What a forwarded run may take beyond its wall time: sandbox setup, teardown, the hop.
const FORWARDED_RUN_MARGIN: Duration = Duration::from_secs(20);
/// How long a node waits for the leader's usage table before placing with what it knows.
const USAGE_FETCH_TIMEOUT: Duration = Duration::from_millis(500);
/// A run's default memory (SPEC), for placing runs that do not say.
const RUN_MEMORY_BYTES_DEFAULT: u64 = 256 << 20;
/// A run's default CPU (SPEC).
const RUN_CPU_MILLIS_DEFAULT: u64 = 1_000;

fn run_error(err: RunError) -> ServiceError {
    let message = match err.field() {
        Some(field) => format!("field `{field}`: {err}"),
        None => err.to_string(),
    };
    match err.http_status() {
        400 => ServiceError::InvalidInput(message),
        413 => ServiceError::TooLarge(message),
        503 => ServiceError::Unavailable {
            message,
            retry_after_secs: 1,
        },
        _ => ServiceError::Internal(message),
    }
}

/// Runs a program once in a fresh sandbox, on this node or the worker [`place`] chooses, and
/// answers its result.
pub async fn run(
    agent: &Agent,
    caller: &Caller,
    request: RunRequest,
) -> Result<RunResult, ServiceError> {
    refuse_if_stopping(agent)?;
    let own = agent.raft.id();
    let node = match place(agent, &request).await {
        Some(node) => node,
        None if agent.config.role_worker => own,
        None => {
            return Err(ServiceError::Unavailable {
                message: "no worker node can take a run right now".to_string(),
                retry_after_secs: 2,
            })
        }
    };
    if node == own {
        execute_here(agent, caller, request).await
    } else {
        execute_on(agent, node, caller, request).await
    }
}

/// The node that should execute `request` (see [`run_placement::choose`]); `None` when no
/// worker is known.
async fn place(agent: &Agent, request: &RunRequest) -> Option<NodeId> {
    let own = agent.raft.id();
    let live = live_usage(agent).await;
    let (cpu_used, memory_used) = agent.usage.used();
    let own_used = Resources::new(cpu_used, memory_used);
    let needs = Resources::new(
        request.cpu_millis.unwrap_or(RUN_CPU_MILLIS_DEFAULT),
        request.memory_bytes.unwrap_or(RUN_MEMORY_BYTES_DEFAULT),
    );
    let candidates = agent
        .raft
        .read(|state| run_placement::candidates(state, &live, own, own_used));
    run_placement::choose(&candidates, &needs, own)
}

/// The leader's live usage of every node: its soft state on the leader, elsewhere a table
/// fetched from the leader at most once per [`run_placement::USAGE_TABLE_MAX_AGE_MS`] (empty
/// when the leader does not answer in time: then only this node is a candidate).
pub(crate) async fn live_usage(agent: &Agent) -> BTreeMap<NodeId, Resources> {
    if agent.raft.status().is_leader {
        return agent.raft.with_soft_state(|soft| {
            soft.iter()
                .filter_map(|(node, live)| Some((*node, live.last.as_ref()?.used)))
                .collect()
        });
    }
    let now = clock::monotonic_now();
    if let Some(table) = agent.run_usage.fresh(now) {
        return table;
    }
    let table = match crate::mesh_rpc::LeaderRoute::leader_mesh_addr(&agent.raft) {
        Some(ip) => {
            let asking = view_request(&agent.transport, ip, &ViewRequest::Usage);
            match tokio::time::timeout(USAGE_FETCH_TIMEOUT, asking).await {
                Ok(Ok(ViewReply::Usage(usage))) => usage
                    .into_iter()
                    .map(|entry| (entry.node, entry.used))
                    .collect(),
                other => {
                    tracing::debug!(answer = ?other.map(|r| r.map(|_| ())), "no usage table from the leader");
                    BTreeMap::new()
                }
            }
        }
        None => BTreeMap::new(),
    };
    agent.run_usage.store(now, table.clone());
    table
}

/// Sends the run to `node` over the mesh and waits (bounded by the run's wall time plus a
/// margin) for its result. A worker that fails or does not answer is a 503 with
/// `Retry-After`, never a hang.
async fn execute_on(
    agent: &Agent,
    node: NodeId,
    caller: &Caller,
    request: RunRequest,
) -> Result<RunResult, ServiceError> {
    let failed = |why: String| ServiceError::Unavailable {
        message: format!("the worker chosen for this run (node-{node}) failed: {why}"),
        retry_after_secs: 1,
    };
    let ip = agent
        .raft
        .read(|state| state.nodes.get(&node).map(|record| record.mesh_addr))
        .ok_or_else(|| failed("it is not in the node list".to_string()))?;
    let wait = Duration::from_millis(
        request
            .timeout_ms
            .unwrap_or(RUN_WALL_MS_MAX)
            .min(RUN_WALL_MS_MAX),
    ) + FORWARDED_RUN_MARGIN;
    let open = serde_json::to_vec(&Relayed::Run {
        caller: caller.clone(),
        request: Box::new(request),
    })
    .map_err(|err| ServiceError::Internal(format!("encoding a forwarded run: {err}")))?;
    let (_sender, mut receiver) = app_stream(&agent.transport, ip, &open)
        .await
        .map_err(|err| failed(format!("unreachable: {err}")))?;
    let frame = match tokio::time::timeout(wait, receiver.recv()).await {
        Err(_) => return Err(failed(format!("no answer within {wait:?}"))),
        Ok(Err(err)) => return Err(failed(err.to_string())),
        Ok(Ok(None)) => return Err(failed("it closed the stream without an answer".to_string())),
        Ok(Ok(Some(frame))) => frame,
    };
    // The executing node's own error (a 400, 413 or 429 it chose) is the answer as it is.
    serde_json::from_slice::<RunAnswer>(&frame)
        .map_err(|err| failed(format!("undecodable answer: {err}")))?
}

/// Executes a run on this node (bounded by `runs_concurrent_max`): validation, a fresh
/// sandbox, supervision, classification. Also what a worker does with a forwarded run.
pub async fn execute_here(
    agent: &Agent,
    caller: &Caller,
    request: RunRequest,
) -> Result<RunResult, ServiceError> {
    refuse_if_stopping(agent)?;
    let in_flight = agent.runs_in_flight.fetch_add(1, Ordering::SeqCst);
    let _guard = InFlight(agent);
    if in_flight >= agent.config.runs_concurrent_max {
        return Err(ServiceError::RateLimited {
            message: format!(
                "this node runs at most {} programs at once",
                agent.config.runs_concurrent_max
            ),
            retry_after_secs: 1,
        });
    }
    let id = agent.new_id("run");
    let mut result = exec_run::execute(&agent.run_context, &request, &id)
        .await
        .map_err(run_error)?;
    result.node = agent.node_id.clone();
    agent
        .metrics
        .observe_run(result.verdict.as_str(), result.wall_ms);
    // Runs change no durable state, so they are not audited (a disk write per run would
    // dominate its latency); this log line records them.
    tracing::info!(run = %id, tenant = %caller.tenant, verdict = result.verdict.as_str(),
        wall_ms = result.wall_ms, overhead_ms = result.overhead_ms, "run finished");
    Ok(result)
}

struct InFlight<'a>(&'a Agent);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.runs_in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The run languages this node offers.
pub fn languages(agent: &Agent) -> Vec<Language> {
    agent
        .run_context
        .languages
        .list()
        .iter()
        .map(|language| Language {
            name: language.name.clone(),
            interpreter: language.interpreter.to_string_lossy().to_string(),
            version: language.version.clone(),
        })
        .collect()
}
