//! A workstation's log: a page of records, or a follow that streams them as they come. Both
//! are served by the node hosting the workstation; a follow relayed from another node is
//! rendered there and relayed as it is. The follow's events are rendered as Server-Sent
//! Events text (`sse_chunk`): that is the log stream's one wire format, on the mesh and on
//! the HTTP API alike, so a relaying node passes chunks through without decoding them.

use bytes::Bytes;
use shoal_executor::workstation::LogEvent;

use super::hosting::{
    catch_up, no_host_error, on_host, whereabouts, FollowOpened, HostAnswer, HostOp, Relayed,
    Whereabouts,
};
use super::workstations::visible;
use super::{Caller, ServiceError};
use crate::agent::host::record_json;
use crate::agent::Agent;
use crate::api_types::{DroppedEvent, ExitEvent, LogsPage};

/// Most bytes of record data in one page (and the default).
pub const LOGS_PAGE_BYTES_MAX: u64 = 5_242_880;

/// A page of workstation `ws_id`'s log: the records holding bytes at or after `from`, at most
/// `limit_bytes` of record data, only process `proc`'s records if given.
pub async fn page(
    agent: &Agent,
    caller: &Caller,
    ws_id: &str,
    from: u64,
    limit_bytes: Option<u64>,
    proc: Option<String>,
) -> Result<LogsPage, ServiceError> {
    let limit_bytes = limit_bytes.unwrap_or(LOGS_PAGE_BYTES_MAX);
    if limit_bytes == 0 || limit_bytes > LOGS_PAGE_BYTES_MAX {
        return Err(ServiceError::field(
            "limit_bytes",
            format!("must be between 1 and {LOGS_PAGE_BYTES_MAX}"),
        ));
    }
    let ws = visible(agent, caller, ws_id)?;
    let op = HostOp::Logs {
        ws: ws.id,
        from,
        // At most LOGS_PAGE_BYTES_MAX, checked above: it fits any usize of a 64-bit node.
        limit_bytes: usize::try_from(limit_bytes).unwrap_or(usize::MAX),
        proc,
    };
    match on_host(agent, caller, op).await? {
        HostAnswer::Logs(page) => Ok(page),
        other => Err(ServiceError::Internal(format!(
            "mismatched answer from the hosting node: {other:?}"
        ))),
    }
}

/// Where a follow's chunks come from.
pub enum FollowSource {
    /// The workstation is hosted here.
    Local(LocalFollower),
    /// Relayed from the hosting node.
    Relayed(RelayedStream),
}

/// A follow of a workstation's log, wherever it is hosted, that ends as soon as this node
/// applies the revocation of the caller's key (SPEC, Trust: a revoked key's open streams
/// close within 1 s; a relayed stream ends on the hosting node when this side drops it).
pub struct FollowStream {
    source: FollowSource,
    /// Fires once the caller's key is revoked. A separate watcher task decides it, so that
    /// reading the source (a relayed frame may be half read) is never cancelled for anything
    /// but the end of the stream.
    revoked: tokio::sync::oneshot::Receiver<()>,
    /// Set once the stream ended: a oneshot must not be polled again after it completed.
    ended: bool,
}

impl FollowStream {
    fn new(agent: &Agent, caller: &Caller, source: FollowSource) -> FollowStream {
        let (revoke, revoked) = tokio::sync::oneshot::channel();
        tokio::spawn(watch_revocation(
            agent.raft.clone(),
            caller.key_id.parse().ok(),
            revoke,
        ));
        FollowStream {
            source,
            revoked,
            ended: false,
        }
    }
}

/// Sends on `revoke` once key `key_id` is revoked or gone in `state` (checked at every applied
/// change); ends early when the stream it watches for is dropped.
async fn watch_revocation(
    state: crate::agent::state_view::StateView,
    key_id: Option<shoal_raft::model::ApiKeyId>,
    mut revoke: tokio::sync::oneshot::Sender<()>,
) {
    let mut applied = state.subscribe_applied();
    loop {
        let revoked = key_id.is_none_or(|key_id| {
            state.read(|state| state.api_keys.get(&key_id).is_none_or(|key| key.revoked))
        });
        if revoked {
            let _ = revoke.send(());
            return;
        }
        tokio::select! {
            changed = applied.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            () = revoke.closed() => return,
        }
    }
}

impl ChunkSource for FollowStream {
    async fn next_chunk(&mut self) -> Option<Option<Bytes>> {
        if self.ended {
            return None;
        }
        let FollowStream {
            source, revoked, ..
        } = self;
        let next = async {
            match source {
                FollowSource::Local(local) => local.next_chunk().await,
                FollowSource::Relayed(relayed) => relayed.next_chunk().await,
            }
        };
        let chunk = tokio::select! {
            chunk = next => chunk,
            // Revoked (or the watcher ended with the node): the stream ends here.
            _ = revoked => None,
        };
        self.ended = chunk.is_none();
        chunk
    }
}

/// Follows workstation `ws_id`'s log from offset `from` (only `proc`'s records, if given).
pub async fn follow(
    agent: &Agent,
    caller: &Caller,
    ws_id: &str,
    from: u64,
    proc: Option<String>,
) -> Result<FollowStream, ServiceError> {
    visible(agent, caller, ws_id)?;
    match whereabouts(agent, ws_id) {
        Whereabouts::Here => Ok(FollowStream::new(
            agent,
            caller,
            FollowSource::Local(follow_here(agent, caller, ws_id, from, proc).await?),
        )),
        Whereabouts::Pending => Err(no_host_error(agent, ws_id)),
        Whereabouts::Node(ip) => {
            let open = serde_json::to_vec(&Relayed::Follow {
                caller: caller.clone(),
                ws: ws_id.to_string(),
                from,
                proc,
            })
            .map_err(|err| ServiceError::Internal(format!("encoding a mesh request: {err}")))?;
            let unreachable = |why: String| {
                ServiceError::unavailable(format!(
                    "the node hosting workstation `{ws_id}` is unreachable: {why}"
                ))
            };
            let (sender, mut stream) = crate::mesh_rpc::app_stream(&agent.transport, ip, &open)
                .await
                .map_err(|err| unreachable(err.to_string()))?;
            // The hosting node's first frame says whether the follow opened, with its error.
            let opened = match stream.recv().await {
                Ok(Some(frame)) => serde_json::from_slice::<FollowOpened>(&frame)
                    .map_err(|err| unreachable(format!("undecodable answer: {err}")))?,
                Ok(None) => Err(unreachable("it closed the stream".to_string())),
                Err(err) => Err(unreachable(err.to_string())),
            };
            opened?;
            Ok(FollowStream::new(
                agent,
                caller,
                FollowSource::Relayed(RelayedStream {
                    stream,
                    _sender: sender,
                }),
            ))
        }
    }
}

/// A follow of workstation `ws_id`, hosted here: what [`follow`] does locally and what the
/// relay server does for another node.
pub async fn follow_here(
    agent: &Agent,
    caller: &Caller,
    ws_id: &str,
    from: u64,
    proc: Option<String>,
) -> Result<LocalFollower, ServiceError> {
    catch_up(agent, ws_id).await;
    visible(agent, caller, ws_id)?;
    let follower = agent.host.follow(ws_id, from).await?;
    Ok(LocalFollower {
        follower,
        proc_filter: proc,
    })
}

/// Where the chunks of an SSE log stream come from: a follower of a workstation hosted here,
/// or the stream of already rendered chunks relayed from the hosting node.
pub trait ChunkSource: Send + 'static {
    /// The next chunk: `Some(Some(bytes))` to send, `Some(None)` for an event that is hidden
    /// (nothing to send), `None` when the stream has ended.
    fn next_chunk(&mut self) -> impl std::future::Future<Output = Option<Option<Bytes>>> + Send;
}

/// A follower of a workstation hosted on this node, rendered to SSE here.
pub struct LocalFollower {
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
pub struct RelayedStream {
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
