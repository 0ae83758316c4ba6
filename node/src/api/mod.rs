//! The HTTP control API (actix-web): routes, the error and body handling every route shares,
//! the OpenAPI document and the system endpoints (`/healthz`, `/readyz`, `/metrics`).

pub mod auth;
pub mod body;
pub mod cluster;
pub mod error;
pub mod logs;
pub mod openapi;
pub mod runs;
pub mod workstations;

use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::{Server, Service as _, ServiceResponse};
use actix_web::http::header;
use actix_web::middleware::{ErrorHandlerResponse, ErrorHandlers};
use actix_web::{web, App, HttpResponse, HttpServer};
use anyhow::Context;

use crate::agent::Agent;
use crate::api_types::{ErrorBody, Health};
use crate::clock;
use body::BodyLimit;
use error::ServiceError;

/// Builds the HTTP server (bound, not yet running).
pub fn server(agent: Arc<Agent>) -> anyhow::Result<Server> {
    let api_addr = agent.config.api;
    let workers = agent.config.api_workers;
    let body_limit = agent.config.api_body_bytes_max;
    let header_read_timeout_ms = agent.config.api_header_read_timeout_ms;
    let body_read_timeout_ms = agent.config.api_body_read_timeout_ms;
    let data = web::Data::from(Arc::clone(&agent));
    let server = HttpServer::new(move || {
        let metrics_agent = data.clone();
        App::new()
            .app_data(data.clone())
            .app_data(web::Data::new(BodyLimit {
                bytes_max: body_limit,
                read_timeout: Duration::from_millis(body_read_timeout_ms),
            }))
            .app_data(
                web::PathConfig::default().error_handler(|err, _| {
                    ServiceError::InvalidInput(format!("path: {err}")).into()
                }),
            )
            .app_data(
                web::QueryConfig::default()
                    .error_handler(|err, request| query_error(&err, request.query_string()).into()),
            )
            .app_data(
                web::JsonConfig::default()
                    .limit(body_limit)
                    .error_handler(|err, _| {
                        ServiceError::InvalidInput(format!("body: {err}")).into()
                    }),
            )
            .wrap(ErrorHandlers::new().default_handler(json_error_body))
            .wrap_fn(move |request, service| {
                let started = clock::monotonic_now();
                let agent = metrics_agent.clone();
                let response = service.call(request);
                async move {
                    let response = response.await?;
                    let request = response.request();
                    agent.metrics.observe_request(
                        request.match_pattern().as_deref(),
                        request.method().as_str(),
                        response.status().as_u16(),
                        started.elapsed(),
                    );
                    Ok(response)
                }
            })
            .configure(routes)
            .default_service(web::to(|| async {
                Err::<HttpResponse, _>(ServiceError::NotFound("no such endpoint".to_string()))
            }))
    })
    .workers(workers)
    .client_request_timeout(Duration::from_millis(header_read_timeout_ms))
    .shutdown_timeout(5)
    .disable_signals()
    .bind(api_addr)
    .with_context(|| format!("binding the control API to {api_addr}"))?
    .run();
    Ok(server)
}

fn routes(config: &mut web::ServiceConfig) {
    config
        .route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz))
        .route("/metrics", web::get().to(metrics_text))
        .route("/v1/openapi.json", web::get().to(openapi::document))
        .route("/v1/cluster", web::get().to(cluster::cluster))
        .route("/v1/nodes", web::get().to(cluster::list_nodes))
        .route("/v1/nodes/{id}", web::get().to(cluster::show_node))
        .route("/v1/nodes/{id}", web::delete().to(cluster::remove_node))
        .route("/v1/nodes/{id}/drain", web::post().to(cluster::drain_node))
        .route("/v1/tokens", web::post().to(cluster::create_token))
        .route("/v1/tokens", web::get().to(cluster::list_tokens))
        .route("/v1/tokens/{id}", web::delete().to(cluster::revoke_token))
        .route("/v1/keys", web::post().to(cluster::create_key))
        .route("/v1/keys", web::get().to(cluster::list_keys))
        .route("/v1/keys/{id}", web::delete().to(cluster::revoke_key))
        .route("/v1/audit", web::get().to(cluster::audit))
        .route("/v1/workstations", web::post().to(workstations::create))
        .route("/v1/workstations", web::get().to(workstations::list))
        .route("/v1/workstations/{id}", web::get().to(workstations::show))
        .route(
            "/v1/workstations/{id}",
            web::patch().to(workstations::resize),
        )
        .route(
            "/v1/workstations/{id}",
            web::delete().to(workstations::delete),
        )
        .route(
            "/v1/workstations/{id}/processes",
            web::post().to(workstations::create_process),
        )
        .route(
            "/v1/workstations/{id}/processes",
            web::get().to(workstations::list_processes),
        )
        .route(
            "/v1/workstations/{id}/processes/{pid}",
            web::delete().to(workstations::kill_process),
        )
        .route("/v1/workstations/{id}/logs", web::get().to(logs::logs))
        .route("/v1/runs", web::post().to(runs::create_run))
        .route("/v1/languages", web::get().to(runs::languages));
}

/// Longest part of a query string quoted back in an error.
const QUERY_QUOTED_CHARS_MAX: usize = 200;

/// A 400 for a query string that does not parse. serde's error does not name the parameter,
/// so the message quotes the query string (bounded), which does.
fn query_error(err: &actix_web::error::QueryPayloadError, query: &str) -> ServiceError {
    let quoted: String = query.chars().take(QUERY_QUOTED_CHARS_MAX).collect();
    let cause = match err {
        actix_web::error::QueryPayloadError::Deserialize(inner) => inner.to_string(),
        other => other.to_string(),
    };
    ServiceError::InvalidInput(format!("query string `{quoted}`: {cause}"))
}

/// Turns every error answer that is not already our JSON (actix's own 404/405/413 texts, a
/// panic's 500) into `{"error": {...}}`.
fn json_error_body<B>(response: ServiceResponse<B>) -> actix_web::Result<ErrorHandlerResponse<B>> {
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/json"));
    if is_json {
        return Ok(ErrorHandlerResponse::Response(
            response.map_into_left_body(),
        ));
    }
    let status = response.status();
    let error = match status.as_u16() {
        400 => ServiceError::InvalidInput("malformed request".to_string()),
        404 => ServiceError::NotFound("no such endpoint".to_string()),
        405 => ServiceError::InvalidInput("method not allowed on this endpoint".to_string()),
        413 => ServiceError::TooLarge("the request is too large".to_string()),
        503 => ServiceError::unavailable("unavailable"),
        _ => ServiceError::Internal(
            status
                .canonical_reason()
                .unwrap_or("request failed")
                .to_string(),
        ),
    };
    let (request, _) = response.into_parts();
    let mut answer = HttpResponse::build(status).json(error.body());
    if status.as_u16() == 503 {
        answer
            .headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    }
    Ok(ErrorHandlerResponse::Response(
        ServiceResponse::new(request, answer).map_into_right_body::<B>(),
    ))
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", responses((status = 200, body = Health)), tag = "system")]
pub async fn healthz(agent: web::Data<Agent>) -> HttpResponse {
    HttpResponse::Ok().json(Health {
        status: "ok".to_string(),
        node: agent.node_id.clone(),
        reason: None,
    })
}

/// Readiness: the node can serve writes (the leader acknowledged it within its lease, it is not
/// shutting down, it was not removed from the cluster).
#[utoipa::path(get, path = "/readyz",
    responses((status = 200, body = Health), (status = 503, body = ErrorBody)), tag = "system")]
pub async fn readyz(agent: web::Data<Agent>) -> Result<HttpResponse, ServiceError> {
    crate::service::refuse_if_stopping(&agent)?;
    // Ready means the cluster hears this node: its lease was renewed by a heartbeat the
    // leader acknowledged. "A leader is known" is not enough: a removed node that came back
    // where no member hears it any more still names the leader of the vote it kept on disk.
    let id = agent.raft.id();
    if agent
        .raft
        .read(|state| shoal_raft::drain::is_removed(state, id))
    {
        return Err(ServiceError::unavailable(
            "this node was removed from the cluster",
        ));
    }
    if let Some(error) = agent.raft.storage_status().failed {
        return Err(ServiceError::unavailable(format!(
            "raft storage failed, retrying: {error}"
        )));
    }
    if !agent.fence.may_run() {
        return Err(ServiceError::unavailable(
            "no lease: the leader has not acknowledged this node recently",
        ));
    }
    Ok(HttpResponse::Ok().json(Health {
        status: "ok".to_string(),
        node: agent.node_id.clone(),
        reason: None,
    }))
}

/// Prometheus text format (the series are defined and read in [`crate::metrics`]).
#[utoipa::path(get, path = "/metrics",
    responses((status = 200, content_type = "text/plain", body = String)), tag = "system")]
pub async fn metrics_text(agent: web::Data<Agent>) -> HttpResponse {
    let nodes = crate::service::cluster::nodes(&agent).await;
    let text = crate::metrics::render(&agent, &nodes, &crate::service::cluster::pool(&nodes)).await;
    HttpResponse::Ok()
        .content_type(crate::metrics::CONTENT_TYPE)
        .body(text)
}
