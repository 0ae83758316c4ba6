//! `GET /v1/workstations/{id}/logs`: a JSON page, or a Server-Sent Events stream whose `id:`
//! values are log offsets, so that any standard SSE client resumes with `Last-Event-ID`
//! exactly where it stopped. Decodes, calls [`service::logs`], streams.

use std::time::Duration;

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::Bytes;
use tokio::sync::mpsc;

use super::auth::Caller;
use crate::agent::Agent;
#[allow(unused_imports)] // named by the OpenAPI attributes
use crate::api_types::{ErrorBody, LogsPage, LogsQuery};
use crate::service::logs::ChunkSource;
use crate::service::{self, ServiceError};

/// SSE chunks queued towards one slow client before the producer waits (the executor's own
/// follower queue then pauses it and reports `dropped`).
const SSE_CHUNKS_QUEUED_MAX: usize = 16;

/// Reads or follows a workstation's log.
#[utoipa::path(get, path = "/v1/workstations/{id}/logs", params(LogsQuery),
    responses((status = 200, body = LogsPage,
               description = "JSON page; with follow=true or Accept: text/event-stream a \
                              text/event-stream of `log`, `dropped` and `exit` events"),
              (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 429, body = ErrorBody)),
    security(("bearer" = [])), tag = "logs")]
pub async fn logs(
    caller: Caller,
    agent: web::Data<Agent>,
    id: web::Path<String>,
    query: web::Query<LogsQuery>,
    request: HttpRequest,
) -> Result<HttpResponse, ServiceError> {
    let wants_sse = query.follow.unwrap_or(false)
        || request
            .headers()
            .get(header::ACCEPT)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|accept| accept.contains("text/event-stream"));
    if !wants_sse {
        let page = service::logs::page(
            &agent,
            &caller,
            &id,
            query.from.unwrap_or(0),
            query.limit_bytes,
            query.proc.clone(),
        )
        .await?;
        return Ok(HttpResponse::Ok().json(page));
    }
    // A reconnecting EventSource sends the last `id:` it saw; that wins over `from`.
    let from = match request.headers().get("Last-Event-ID") {
        Some(value) => value
            .to_str()
            .ok()
            .and_then(|text| text.trim().parse::<u64>().ok())
            .ok_or_else(|| {
                ServiceError::InvalidInput(
                    "header `Last-Event-ID` must be a log offset".to_string(),
                )
            })?,
        None => query.from.unwrap_or(0),
    };
    let stream = service::logs::follow(&agent, &caller, &id, from, query.proc.clone()).await?;
    Ok(pump_sse(
        stream,
        Duration::from_millis(agent.config.log_keepalive_ms),
    ))
}

/// Streams `source` as a `text/event-stream` answer: an opening comment at once (clients see
/// the stream open), then each chunk, and a `: keepalive` comment whenever `keepalive` passes
/// without one, so that idle streams stay open through proxies. At most
/// `SSE_CHUNKS_QUEUED_MAX` chunks wait for a slow client; then the source waits too. The pump
/// ends when the source ends or the client goes away (dropping the source unsubscribes it).
pub fn pump_sse(mut source: impl ChunkSource, keepalive: Duration) -> HttpResponse {
    let (sender, receiver) = mpsc::channel::<Result<Bytes, std::io::Error>>(SSE_CHUNKS_QUEUED_MAX);
    tokio::spawn(async move {
        if sender
            .send(Ok(Bytes::from_static(b": shoal log stream\n\n")))
            .await
            .is_err()
        {
            return;
        }
        let mut keepalive = tokio::time::interval(keepalive);
        keepalive.tick().await;
        loop {
            let chunk = tokio::select! {
                next = source.next_chunk() => match next {
                    Some(chunk) => chunk,
                    None => break,
                },
                _ = keepalive.tick() => Some(Bytes::from_static(b": keepalive\n\n")),
            };
            if let Some(chunk) = chunk {
                if sender.send(Ok(chunk)).await.is_err() {
                    break;
                }
            }
        }
    });
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(tokio_stream::wrappers::ReceiverStream::new(receiver))
}
