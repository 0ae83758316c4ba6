//! `POST /v1/runs` and `GET /v1/languages`: a thin mapping onto the executor's sandboxed run
//! module (`shoal_executor::run`), which validates, isolates, watches and classifies.

use std::sync::atomic::Ordering;

use actix_web::{web, HttpResponse};
use shoal_executor::run::{self as exec_run, RunError};

use super::auth::Caller;
use super::body::JsonBody;
use super::error::ApiError;
use super::refuse_if_stopping;
use crate::agent::Agent;
use crate::api_types::{ErrorBody, Language, NetworkPolicy, RunRequest, RunResult, Verdict};

/// The executor's request for an API request (the shapes are the same; the types are kept
/// apart so that the API's schema is generated from `api_types`).
fn to_executor(request: RunRequest) -> exec_run::RunRequest {
    exec_run::RunRequest {
        language: request.language,
        argv: request.argv,
        code: request.code,
        stdin: request.stdin,
        files: request.files.map(|files| {
            files
                .into_iter()
                .map(|file| exec_run::RunFile {
                    path: file.path,
                    content: file.content,
                    executable: file.executable,
                })
                .collect()
        }),
        env: request.env,
        timeout_ms: request.timeout_ms,
        memory_bytes: request.memory_bytes,
        cpu_millis: request.cpu_millis,
        max_processes: request.max_processes,
        cpu_time_ms: request.cpu_time_ms,
        network: request.network.map(|network| {
            match network {
                NetworkPolicy::None => "none",
                NetworkPolicy::Allowlist => "allowlist",
                NetworkPolicy::Full => "full",
            }
            .to_string()
        }),
    }
}

fn run_error(err: RunError) -> ApiError {
    let message = match err.field() {
        Some(field) => format!("field `{field}`: {err}"),
        None => err.to_string(),
    };
    match err.http_status() {
        400 => ApiError::InvalidInput(message),
        413 => ApiError::TooLarge(message),
        503 => ApiError::Unavailable {
            message,
            retry_after_secs: 1,
        },
        _ => ApiError::Internal(message),
    }
}

fn verdict(verdict: &exec_run::Verdict) -> Verdict {
    match verdict {
        exec_run::Verdict::Ok => Verdict::Ok,
        exec_run::Verdict::NonzeroExit => Verdict::NonzeroExit,
        exec_run::Verdict::Signaled => Verdict::Signaled,
        exec_run::Verdict::Timeout => Verdict::Timeout,
        exec_run::Verdict::CpuLimit => Verdict::CpuLimit,
        exec_run::Verdict::MemoryLimit => Verdict::MemoryLimit,
        exec_run::Verdict::ProcessLimit => Verdict::ProcessLimit,
        exec_run::Verdict::OutputLimit => Verdict::OutputLimit,
        exec_run::Verdict::InternalError => Verdict::InternalError,
    }
}

/// Runs a program once in a fresh sandbox and answers its result.
#[utoipa::path(post, path = "/v1/runs", request_body = RunRequest,
    responses((status = 200, body = RunResult), (status = 400, body = ErrorBody),
              (status = 413, body = ErrorBody), (status = 429, body = ErrorBody),
              (status = 503, body = ErrorBody)),
    security(("bearer" = [])), tag = "runs")]
pub async fn create_run(
    caller: Caller,
    agent: web::Data<Agent>,
    JsonBody(request): JsonBody<RunRequest>,
) -> Result<HttpResponse, ApiError> {
    refuse_if_stopping(&agent)?;
    let in_flight = agent.runs_in_flight.fetch_add(1, Ordering::SeqCst);
    let _guard = InFlight(&agent);
    if in_flight >= agent.config.runs_concurrent_max {
        return Err(ApiError::RateLimited {
            message: format!(
                "this node runs at most {} programs at once",
                agent.config.runs_concurrent_max
            ),
            retry_after_secs: 1,
        });
    }
    let id = agent.new_id("run");
    let result = exec_run::execute(&agent.run_context, &to_executor(request), &id)
        .await
        .map_err(run_error)?;
    agent.metrics.observe_run(result.verdict.as_str());
    // Runs change no durable state, so they are not audited (a disk write per run would
    // dominate its latency); this log line records them.
    tracing::info!(run = %id, tenant = %caller.tenant, verdict = result.verdict.as_str(),
        wall_ms = result.wall_ms, overhead_ms = result.overhead_ms, "run finished");
    Ok(HttpResponse::Ok().json(RunResult {
        id: result.id,
        verdict: verdict(&result.verdict),
        exit_code: result.exit_code,
        signal: result.signal,
        stdout: result.stdout,
        stderr: result.stderr,
        stdout_truncated: result.stdout_truncated,
        stderr_truncated: result.stderr_truncated,
        wall_ms: result.wall_ms,
        cpu_ms: result.cpu_ms,
        peak_memory_bytes: result.peak_memory_bytes,
        overhead_ms: result.overhead_ms,
        node: agent.node_id.clone(),
        isolation: result.isolation,
        message: result.message,
    }))
}

struct InFlight<'a>(&'a Agent);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.runs_in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The run languages this node offers.
#[utoipa::path(get, path = "/v1/languages",
    responses((status = 200, body = Vec<Language>)), security(("bearer" = [])), tag = "runs")]
pub async fn languages(_caller: Caller, agent: web::Data<Agent>) -> Result<HttpResponse, ApiError> {
    let languages: Vec<Language> = agent
        .run_context
        .languages
        .list()
        .iter()
        .map(|language| Language {
            name: language.name.clone(),
            interpreter: language.interpreter.to_string_lossy().to_string(),
            version: language.version.clone(),
        })
        .collect();
    Ok(HttpResponse::Ok().json(languages))
}
