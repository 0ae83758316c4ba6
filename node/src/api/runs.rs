//! `POST /v1/runs` and `GET /v1/languages`.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use actix_web::{web, HttpResponse};

use super::auth::Caller;
use super::body::JsonBody;
use super::error::ApiError;
use super::refuse_if_stopping;
use crate::agent::runner::RunPlan;
use crate::agent::Agent;
use crate::api_types::{ErrorBody, Language, NetworkPolicy, RunRequest, RunResult};

/// Largest `code` (SPEC.md: 64 KiB).
pub const CODE_BYTES_MAX: usize = 65_536;
/// Default and largest wall time (SPEC.md: 60 s).
pub const RUN_TIMEOUT_MS_MAX: u64 = 60_000;
/// Defaults of SPEC.md.
const RUN_MEMORY_BYTES_DEFAULT: u64 = 256 << 20;
const RUN_CPU_MILLIS_DEFAULT: u64 = 1_000;
const RUN_PROCESSES_DEFAULT: u32 = 64;
/// Bounds on the other inputs.
const STDIN_BYTES_MAX: usize = 1 << 20;
const FILES_MAX: usize = 32;
const FILES_BYTES_MAX: usize = 1 << 20;
const ENV_ITEMS_MAX: usize = 256;

/// A language this node offers: name, interpreter path, file extension, version.
#[derive(Debug, Clone)]
pub struct LanguageSpec {
    /// Public name.
    pub name: String,
    /// Interpreter path.
    pub interpreter: String,
    /// Extension of the code file.
    pub extension: String,
    /// Reported version.
    pub version: String,
}

/// Finds the interpreters installed on this host (looked up in PATH once at start).
pub fn detect_languages() -> Vec<LanguageSpec> {
    let candidates = [
        ("python", "python3", "py"),
        ("sh", "sh", "sh"),
        ("bash", "bash", "sh"),
        ("node", "node", "js"),
        ("ruby", "ruby", "rb"),
        ("perl", "perl", "pl"),
    ];
    let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".to_string());
    candidates
        .iter()
        .filter_map(|(name, program, extension)| {
            let found = path
                .split(':')
                .map(|dir| std::path::Path::new(dir).join(program))
                .find(|candidate| candidate.is_file())?;
            Some(LanguageSpec {
                name: (*name).to_string(),
                interpreter: found.to_string_lossy().to_string(),
                extension: (*extension).to_string(),
                version: "installed".to_string(),
            })
        })
        .collect()
}

fn plan(agent: &Agent, request: RunRequest) -> Result<RunPlan, ApiError> {
    if let Some(code) = &request.code {
        if code.len() > CODE_BYTES_MAX {
            return Err(ApiError::TooLarge(format!(
                "field `code`: {} bytes, at most {CODE_BYTES_MAX}",
                code.len()
            )));
        }
    }
    let timeout_ms = request.timeout_ms.unwrap_or(RUN_TIMEOUT_MS_MAX);
    if timeout_ms == 0 || timeout_ms > RUN_TIMEOUT_MS_MAX {
        return Err(ApiError::field(
            "timeout_ms",
            format!("must be between 1 and {RUN_TIMEOUT_MS_MAX}"),
        ));
    }
    let memory_bytes = request.memory_bytes.unwrap_or(RUN_MEMORY_BYTES_DEFAULT);
    if memory_bytes < (1 << 20) || memory_bytes > agent.usage.capacity_memory_bytes {
        return Err(ApiError::field(
            "memory_bytes",
            "must be at least 1 MiB and at most the node's memory",
        ));
    }
    let cpu_millis = request.cpu_millis.unwrap_or(RUN_CPU_MILLIS_DEFAULT);
    if cpu_millis == 0 || cpu_millis > agent.usage.capacity_cpu_millis {
        return Err(ApiError::field(
            "cpu_millis",
            "must be at least 1 and at most the node's CPU",
        ));
    }
    let max_processes = request.max_processes.unwrap_or(RUN_PROCESSES_DEFAULT);
    if max_processes == 0 || max_processes > 4096 {
        return Err(ApiError::field(
            "max_processes",
            "must be between 1 and 4096",
        ));
    }
    if request
        .network
        .is_some_and(|network| network != NetworkPolicy::None)
    {
        return Err(ApiError::field("network", "runs only offer `none`"));
    }
    if let Some(stdin) = &request.stdin {
        if stdin.len() > STDIN_BYTES_MAX {
            return Err(ApiError::TooLarge(format!(
                "field `stdin`: at most {STDIN_BYTES_MAX} bytes"
            )));
        }
    }
    let files = request.files.unwrap_or_default();
    if files.len() > FILES_MAX || files.values().map(String::len).sum::<usize>() > FILES_BYTES_MAX {
        return Err(ApiError::TooLarge(format!(
            "field `files`: at most {FILES_MAX} files and {FILES_BYTES_MAX} bytes"
        )));
    }
    for name in files.keys() {
        let bad = name.is_empty()
            || name.len() > 255
            || name.contains('/')
            || name.contains('\0')
            || name == "."
            || name == ".."
            || name.starts_with(".stdin")
            || name.starts_with("main.");
        if bad {
            return Err(ApiError::field(
                "files",
                format!("invalid file name `{name}`"),
            ));
        }
    }
    let env: BTreeMap<String, String> = request.env.unwrap_or_default();
    if env.len() > ENV_ITEMS_MAX {
        return Err(ApiError::field(
            "env",
            format!("at most {ENV_ITEMS_MAX} variables"),
        ));
    }
    for (key, value) in &env {
        if key.is_empty() || key.contains('=') || key.contains('\0') || value.contains('\0') {
            return Err(ApiError::field("env", format!("invalid variable `{key}`")));
        }
    }
    let (argv, code) = match (&request.language, request.argv) {
        (Some(_), Some(_)) => {
            return Err(ApiError::field(
                "argv",
                "give either `language` or `argv`, not both",
            ))
        }
        (Some(language), None) => {
            let spec = agent
                .languages
                .iter()
                .find(|spec| &spec.name == language)
                .ok_or_else(|| {
                    ApiError::field(
                        "language",
                        format!("`{language}` is not offered (see GET /v1/languages)"),
                    )
                })?;
            let Some(code) = request.code else {
                return Err(ApiError::field("code", "is required with `language`"));
            };
            (
                vec![spec.interpreter.clone(), "{code}".to_string()],
                Some((spec.extension.clone(), code)),
            )
        }
        (None, Some(argv)) => {
            if argv.is_empty() || argv[0].is_empty() || argv.len() > 1024 {
                return Err(ApiError::field(
                    "argv",
                    "needs a program (and at most 1024 items)",
                ));
            }
            if argv.iter().any(|arg| arg.contains('\0')) {
                return Err(ApiError::field("argv", "must not contain NUL bytes"));
            }
            (argv, request.code.map(|code| ("txt".to_string(), code)))
        }
        (None, None) => {
            return Err(ApiError::field(
                "language",
                "give `language` and `code`, or `argv`",
            ))
        }
    };
    Ok(RunPlan {
        argv,
        code,
        stdin: request.stdin,
        files,
        env,
        timeout_ms,
    })
}

/// Runs a program once and answers its result.
#[utoipa::path(post, path = "/v1/runs", request_body = RunRequest,
    responses((status = 200, body = RunResult), (status = 400, body = ErrorBody),
              (status = 413, body = ErrorBody), (status = 429, body = ErrorBody)),
    security(("bearer" = [])), tag = "runs")]
pub async fn create_run(
    caller: Caller,
    agent: web::Data<Agent>,
    JsonBody(request): JsonBody<RunRequest>,
) -> Result<HttpResponse, ApiError> {
    refuse_if_stopping(&agent)?;
    let plan = plan(&agent, request)?;
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
    let result = agent.runner.run(&id, &agent.node_id, plan).await;
    let verdict = serde_json::to_value(result.verdict)
        .ok()
        .and_then(|value| value.as_str().map(str::to_string))
        .unwrap_or_default();
    agent.metrics.observe_run(&verdict);
    // Runs change no durable state, so they are not audited (a disk write per run would
    // dominate its latency); the log line below records them.
    tracing::info!(run = %id, tenant = %caller.tenant, verdict = %verdict, wall_ms = result.wall_ms, "run finished");
    Ok(HttpResponse::Ok().json(result))
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
        .languages
        .iter()
        .map(|spec| Language {
            name: spec.name.clone(),
            interpreter: spec.interpreter.clone(),
            version: spec.version.clone(),
        })
        .collect();
    Ok(HttpResponse::Ok().json(languages))
}
