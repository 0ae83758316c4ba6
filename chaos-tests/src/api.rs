//! A small client of Shoal's HTTP control API (SPEC.md "HTTP control API"), with the few JSON
//! types the harness needs defined here (the harness depends on no Shoal crate). Every error is
//! classified the way the history needs it: a definite refusal (`Fail`) or an indeterminate
//! outcome (`Unknown`).

use std::net::SocketAddr;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

use shoal_chaos::history::{LogEvent, Outcome};
use shoal_chaos::sse::SseParser;

/// `GET /v1/cluster`.
#[derive(Clone, Debug, Deserialize)]
pub struct ClusterInfo {
    pub leader: Option<String>,
    pub term: u64,
    pub answered_by: String,
    /// The Raft voters (SPEC: a server is a Raft voter).
    #[serde(default)]
    pub servers: Vec<String>,
}

/// CPU and memory.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct Resources {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
}

/// `GET /v1/nodes` entries.
#[derive(Clone, Debug, Deserialize)]
pub struct NodeInfo {
    pub id: String,
    /// `server,worker`, `server` or `worker`: only workers host workstations.
    #[serde(default)]
    pub role: Option<String>,
    pub state: String,
    #[serde(default)]
    pub capacity: Resources,
    #[serde(default)]
    pub reserved: Resources,
    /// How many workstations are placed on the node.
    #[serde(default)]
    pub n_workstations: u64,
    /// The most workstations the node hosts (its committed `workstations_per_node_max`);
    /// `None` when the node has not committed one, or the API does not show it.
    #[serde(default)]
    pub workstations_max: Option<u64>,
}

/// `GET /v1/workstations` entries.
#[derive(Clone, Debug, Deserialize)]
pub struct Workstation {
    pub id: String,
    pub name: Option<String>,
    pub node: Option<String>,
    pub state: String,
    #[serde(default)]
    pub generation: u64,
    pub cpu_millis: u64,
    pub memory_bytes: u64,
}

/// `GET /v1/workstations/{id}/processes` entries.
#[derive(Clone, Debug, Deserialize)]
pub struct Process {
    pub argv: Vec<String>,
}

/// `POST /v1/tokens`.
#[derive(Clone, Debug, Deserialize)]
pub struct TokenCreated {
    pub token: String,
}

/// One log record (only the offsets matter to the harness).
#[derive(Clone, Debug, Deserialize)]
pub struct LogRecord {
    pub offset: u64,
    pub len: u64,
}

/// The `dropped` event of a log follow.
#[derive(Clone, Debug, Deserialize)]
pub struct DroppedEvent {
    pub bytes: u64,
}

/// What one connection of a log follow saw.
#[derive(Clone, Debug)]
pub struct FollowSegment {
    /// `Connect`, then `Dropped` and `Record` events in order.
    pub events: Vec<LogEvent>,
    /// The last SSE `id:` seen: where a reconnect resumes.
    pub last_id: Option<u64>,
}

/// Longest SSE line accepted (a record's JSON; records hold at most a few KiB of output).
const SSE_LINE_BYTES_MAX: usize = 1 << 20;

/// Why a request did not succeed, and what that means for the history.
#[derive(Debug)]
pub struct ApiError {
    /// `Fail` when the request certainly had no effect, `Unknown` otherwise.
    pub outcome: Outcome,
    /// What happened.
    pub message: String,
    /// The HTTP status, when the node answered with one.
    pub status: Option<u16>,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {}", self.outcome, self.message)
    }
}

impl std::error::Error for ApiError {}

/// The client.
#[derive(Clone, Debug)]
pub struct Api {
    http: reqwest::Client,
    token: String,
    timeout: Duration,
}

impl Api {
    /// A client authenticating with `token`, giving up on a request after `timeout`.
    pub fn new(token: String, timeout: Duration) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(Duration::from_millis(500))
            .pool_max_idle_per_host(4)
            .build()?;
        Ok(Self {
            http,
            token,
            timeout,
        })
    }

    /// Replaces the API key (after the admin key file appears).
    pub fn with_token(&self, token: String) -> Self {
        Self {
            http: self.http.clone(),
            token,
            timeout: self.timeout,
        }
    }

    /// Sends a request and decodes a JSON answer.
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        addr: SocketAddr,
        path: &str,
        body: Option<Value>,
    ) -> Result<T, ApiError> {
        let url = format!("http://{addr}{path}");
        let mut request = self.http.request(method, &url).bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.map_err(classify)?;
        let status = response.status();
        let text = response.text().await.map_err(classify)?;
        if !status.is_success() {
            return Err(ApiError {
                outcome: status_outcome(status),
                message: format!("{status}: {}", truncate(&text, 300)),
                status: Some(status.as_u16()),
            });
        }
        let text = if text.is_empty() { "null" } else { &text };
        serde_json::from_str(text).map_err(|e| ApiError {
            // It answered 2xx: the request took effect even if the answer is odd.
            outcome: Outcome::Unknown,
            message: format!("undecodable answer ({e}): {}", truncate(text, 300)),
            status: Some(status.as_u16()),
        })
    }

    /// A GET that must succeed; for observations.
    pub async fn get<T: DeserializeOwned>(
        &self,
        addr: SocketAddr,
        path: &str,
    ) -> Result<T, ApiError> {
        self.call(Method::GET, addr, path, None).await
    }

    /// Follows a workstation's log over SSE for `listen_ms` (or until `events_max` events),
    /// resuming after `last_id` like a standard SSE client (same URL, `Last-Event-ID`), then
    /// disconnects.
    pub async fn follow_logs(
        &self,
        addr: SocketAddr,
        ws_id: &str,
        last_id: Option<u64>,
        listen_ms: u64,
        events_max: usize,
    ) -> Result<FollowSegment, ApiError> {
        let url = format!("http://{addr}/v1/workstations/{ws_id}/logs?from=0&follow=true");
        let mut request = self
            .http
            .get(&url)
            .bearer_auth(&self.token)
            .header("Accept", "text/event-stream");
        if let Some(id) = last_id {
            request = request.header("Last-Event-ID", id.to_string());
        }
        let mut response = request.send().await.map_err(classify)?;
        let status = response.status();
        if !status.is_success() {
            let text = response.text().await.unwrap_or_default();
            return Err(ApiError {
                outcome: status_outcome(status),
                message: format!("{status}: {}", truncate(&text, 300)),
                status: Some(status.as_u16()),
            });
        }
        let mut segment = FollowSegment {
            events: vec![LogEvent::Connect {
                from: last_id.unwrap_or(0),
            }],
            last_id,
        };
        let mut parser = SseParser::new(SSE_LINE_BYTES_MAX);
        let mut failure: Option<String> = None;
        let read = async {
            while segment.events.len() < events_max {
                let chunk = match response.chunk().await {
                    Ok(Some(chunk)) => chunk,
                    Ok(None) => break,
                    Err(e) => {
                        failure = Some(e.to_string());
                        break;
                    }
                };
                let events = match parser.feed(&chunk) {
                    Ok(events) => events,
                    Err(e) => {
                        failure = Some(e.to_string());
                        break;
                    }
                };
                for event in events {
                    if let Some(id) = event.id.as_deref().and_then(|i| i.parse().ok()) {
                        segment.last_id = Some(id);
                    }
                    match event.event.as_str() {
                        "dropped" => match serde_json::from_str::<DroppedEvent>(&event.data) {
                            Ok(d) => segment.events.push(LogEvent::Dropped { bytes: d.bytes }),
                            Err(e) => failure = Some(format!("bad dropped event: {e}")),
                        },
                        "log" => match serde_json::from_str::<LogRecord>(&event.data) {
                            Ok(r) => segment.events.push(LogEvent::Record {
                                offset: r.offset,
                                len: r.len,
                            }),
                            Err(e) => failure = Some(format!("bad log event: {e}")),
                        },
                        _ => {}
                    }
                }
            }
        };
        // Listening ends by the harness hanging up: that is the disconnect to resume from.
        let _ = tokio::time::timeout(Duration::from_millis(listen_ms), read).await;
        match failure {
            // What was received is still history; a broken stream is the server's doing.
            Some(message) if segment.events.len() <= 1 => Err(ApiError {
                outcome: Outcome::Fail,
                message,
                status: Some(status.as_u16()),
            }),
            _ => Ok(segment),
        }
    }

    /// Whether `/readyz` answers 200.
    pub async fn ready(&self, addr: SocketAddr) -> bool {
        let url = format!("http://{addr}/readyz");
        matches!(self.http.get(&url).send().await, Ok(r) if r.status().is_success())
    }
}

/// A 4xx is a definite refusal; a 5xx may hide a write that was committed (a forwarded write
/// whose leader died after committing), so it is indeterminate.
fn status_outcome(status: StatusCode) -> Outcome {
    if status.is_client_error() {
        Outcome::Fail
    } else {
        Outcome::Unknown
    }
}

fn classify(error: reqwest::Error) -> ApiError {
    // A refused connection never delivered the request; anything later might have.
    let outcome = if error.is_connect() {
        Outcome::Fail
    } else {
        Outcome::Unknown
    };
    ApiError {
        outcome,
        message: error.to_string(),
        status: error.status().map(|s| s.as_u16()),
    }
}

fn truncate(text: &str, chars_max: usize) -> String {
    text.chars().take(chars_max).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_errors_fail_server_errors_are_unknown() {
        assert_eq!(status_outcome(StatusCode::NOT_FOUND), Outcome::Fail);
        assert_eq!(status_outcome(StatusCode::CONFLICT), Outcome::Fail);
        assert_eq!(
            status_outcome(StatusCode::SERVICE_UNAVAILABLE),
            Outcome::Unknown
        );
        assert_eq!(
            status_outcome(StatusCode::GATEWAY_TIMEOUT),
            Outcome::Unknown
        );
    }
}
