//! `GET /v1/workstations/{id}/logs`: a JSON page, or a Server-Sent Events stream whose `id:`
//! values are log offsets, so that any standard SSE client resumes with `Last-Event-ID`
//! exactly where it stopped.

use std::time::Duration;

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::Bytes;
use shoal_executor::workstation::LogEvent;
use tokio::sync::mpsc;

use super::auth::Caller;
use super::error::ApiError;
use crate::agent::host::record_json;
use crate::agent::Agent;
use crate::api_types::{DroppedEvent, ErrorBody, ExitEvent, LogsPage, LogsQuery};

/// Most bytes of record data in one JSON answer (and the default).
pub const LOGS_PAGE_BYTES_MAX: u64 = 5_242_880;
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
) -> Result<HttpResponse, ApiError> {
    let ws = match agent
        .store
        .read(|model| model.workstations.get(id.as_str()).cloned())
    {
        Some(ws) => ws,
        None => return remote_logs(&caller, &agent, &id, &query, &request).await,
    };
    if !caller.can_access(&ws.tenant) {
        return Err(ApiError::not_found("workstation", &id));
    }
    let wants_sse = query.follow.unwrap_or(false)
        || request
            .headers()
            .get(header::ACCEPT)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|accept| accept.contains("text/event-stream"));
    let proc_filter = query.proc.clone();
    if !wants_sse {
        let limit_bytes = query.limit_bytes.unwrap_or(LOGS_PAGE_BYTES_MAX);
        if limit_bytes == 0 || limit_bytes > LOGS_PAGE_BYTES_MAX {
            return Err(ApiError::field(
                "limit_bytes",
                format!("must be between 1 and {LOGS_PAGE_BYTES_MAX}"),
            ));
        }
        let mut page = agent
            .host
            .read_logs(&ws.id, query.from.unwrap_or(0), limit_bytes as usize)
            .await?;
        if let Some(proc) = &proc_filter {
            page.records.retain(|record| &record.proc == proc);
        }
        return Ok(HttpResponse::Ok().json(page));
    }
    // A reconnecting EventSource sends the last `id:` it saw; that wins over `from`.
    let from = match request.headers().get("Last-Event-ID") {
        Some(value) => value
            .to_str()
            .ok()
            .and_then(|text| text.trim().parse::<u64>().ok())
            .ok_or_else(|| {
                ApiError::InvalidInput("header `Last-Event-ID` must be a log offset".to_string())
            })?,
        None => query.from.unwrap_or(0),
    };
    let follower = agent.host.follow(&ws.id, from).await?;
    let source = LocalFollower {
        follower,
        proc_filter,
    };
    Ok(pump_sse(
        source,
        Duration::from_millis(agent.config.log_keepalive_ms),
    ))
}

/// Where the chunks of an SSE log stream come from: a follower of a workstation hosted here,
/// or the stream of already rendered chunks relayed from the hosting node.
pub trait ChunkSource: Send + 'static {
    /// The next chunk: `Some(Some(bytes))` to send, `Some(None)` for an event that is hidden
    /// (nothing to send), `None` when the stream has ended.
    fn next_chunk(&mut self) -> impl std::future::Future<Output = Option<Option<Bytes>>> + Send;
}

/// A follower of a workstation hosted on this node, rendered to SSE here.
struct LocalFollower {
    follower: shoal_executor::workstation::LogFollower,
    proc_filter: Option<String>,
}

impl ChunkSource for LocalFollower {
    async fn next_chunk(&mut self) -> Option<Option<Bytes>> {
        // `None`: the workstation was deleted or the node is stopping.
        let event = self.follower.recv().await?;
        Some(sse_chunk(&event, self.proc_filter.as_deref()))
    }
}

/// SSE chunks rendered by the hosting node and streamed over the mesh.
struct RelayedStream {
    stream: shoal_mesh::StreamReceiver,
    /// Held open for the stream's life: the hosting node reads nothing from it.
    _sender: shoal_mesh::StreamSender,
}

impl ChunkSource for RelayedStream {
    async fn next_chunk(&mut self) -> Option<Option<Bytes>> {
        match self.stream.recv().await {
            Ok(Some(chunk)) => Some(Some(chunk)),
            // The hosting node ended the stream (deleted, stopping, unreachable).
            Ok(None) | Err(_) => None,
        }
    }
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

/// One follower event as SSE text, or `None` if the filter hides it.
pub fn sse_chunk(event: &LogEvent, proc_filter: Option<&str>) -> Option<Bytes> {
    let text = match event {
        LogEvent::Dropped { bytes } => format!(
            "event: dropped\ndata: {}\n\n",
            serde_json::to_string(&DroppedEvent { bytes: *bytes }).ok()?
        ),
        LogEvent::Record(record) => {
            let json = record_json(record);
            if proc_filter.is_some_and(|proc| proc != json.proc) {
                // Still advance the client's resume point past the hidden bytes.
                return Some(Bytes::from(format!(
                    ": skip\nid: {}\n\n",
                    record.end_offset()
                )));
            }
            format!(
                "event: log\nid: {}\ndata: {}\n\n",
                record.end_offset(),
                serde_json::to_string(&json).ok()?
            )
        }
        LogEvent::Exit {
            proc, code, signal, ..
        } => {
            let proc = proc.to_string();
            if proc_filter.is_some_and(|wanted| wanted != proc) {
                return None;
            }
            format!(
                "event: exit\ndata: {}\n\n",
                serde_json::to_string(&ExitEvent {
                    proc,
                    code: *code,
                    signal: *signal,
                })
                .ok()?
            )
        }
    };
    Some(Bytes::from(text))
}

/// The log of a workstation hosted on another node: a page read there over the mesh.
async fn remote_logs(
    caller: &Caller,
    agent: &Agent,
    id: &str,
    query: &LogsQuery,
    request: &HttpRequest,
) -> Result<HttpResponse, ApiError> {
    use crate::agent::remote::{ask_host, RemoteReply, RemoteRequest};
    let ws_id: Option<shoal_raft::model::WorkstationId> = id.parse().ok();
    let visible = agent.raft.read(|state| {
        ws_id
            .and_then(|ws_id| state.workstations.get(&ws_id))
            .is_some_and(|ws| caller.can_access(&ws.tenant))
    });
    if !visible {
        return Err(ApiError::not_found("workstation", id));
    }
    let wants_sse = query.follow.unwrap_or(false)
        || request
            .headers()
            .get(header::ACCEPT)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|accept| accept.contains("text/event-stream"));
    if wants_sse {
        return remote_follow(agent, id, query, request).await;
    }
    let limit_bytes = query.limit_bytes.unwrap_or(LOGS_PAGE_BYTES_MAX);
    if limit_bytes == 0 || limit_bytes > LOGS_PAGE_BYTES_MAX {
        return Err(ApiError::field(
            "limit_bytes",
            format!("must be between 1 and {LOGS_PAGE_BYTES_MAX}"),
        ));
    }
    let reply = ask_host(
        agent,
        id,
        &RemoteRequest::Logs {
            ws: id.to_string(),
            from: query.from.unwrap_or(0),
            limit_bytes: limit_bytes as usize,
        },
    )
    .await?;
    match reply {
        RemoteReply::Logs(mut page) => {
            if let Some(proc) = &query.proc {
                page.records.retain(|record| &record.proc == proc);
            }
            Ok(HttpResponse::Ok().json(page))
        }
        RemoteReply::Failed(why) => Err(ApiError::unavailable(why)),
        RemoteReply::Error(error) => Err(error.into_api_error()),
        _ => Err(ApiError::Internal("mismatched mesh answer".into())),
    }
}

/// Follows the log of a workstation hosted on another node: that node renders the SSE chunks
/// and streams them over the mesh; this node relays them and adds the keepalive comments.
async fn remote_follow(
    agent: &Agent,
    id: &str,
    query: &LogsQuery,
    request: &HttpRequest,
) -> Result<HttpResponse, ApiError> {
    use crate::agent::remote::RemoteRequest;
    let from = match request.headers().get("Last-Event-ID") {
        Some(value) => value
            .to_str()
            .ok()
            .and_then(|text| text.trim().parse::<u64>().ok())
            .ok_or_else(|| {
                ApiError::InvalidInput("header `Last-Event-ID` must be a log offset".to_string())
            })?,
        None => query.from.unwrap_or(0),
    };
    let ip = agent.raft.read(|state| {
        let ws_id: shoal_raft::model::WorkstationId = id.parse().ok()?;
        let node = state.workstations.get(&ws_id)?.node?;
        state.nodes.get(&node).map(|record| record.mesh_addr)
    });
    let ip = ip.ok_or_else(|| crate::agent::remote::no_host_error(agent, id))?;
    let open = serde_json::to_vec(&RemoteRequest::Follow {
        ws: id.to_string(),
        from,
        proc: query.proc.clone(),
    })
    .map_err(|err| ApiError::Internal(format!("encoding a mesh request: {err}")))?;
    let (stream_sender, stream) = crate::mesh_rpc::app_stream(&agent.transport, ip, &open)
        .await
        .map_err(|err| ApiError::unavailable(format!("the hosting node is unreachable: {err}")))?;
    let source = RelayedStream {
        stream,
        _sender: stream_sender,
    };
    Ok(pump_sse(
        source,
        Duration::from_millis(agent.config.log_keepalive_ms),
    ))
}
