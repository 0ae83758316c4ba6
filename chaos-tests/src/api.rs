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

use shoal_chaos::history::Outcome;

/// `GET /v1/cluster`.
#[derive(Clone, Debug, Deserialize)]
pub struct ClusterInfo {
    pub leader: Option<String>,
    pub term: u64,
    pub answered_by: String,
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
    pub state: String,
    #[serde(default)]
    pub capacity: Resources,
    #[serde(default)]
    pub reserved: Resources,
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

/// `GET /v1/workstations/{id}/logs?from=N`.
#[derive(Clone, Debug, Deserialize)]
pub struct LogsPage {
    pub from: u64,
    pub dropped: u64,
    pub next: u64,
    pub records: Vec<LogRecord>,
}

/// Why a request did not succeed, and what that means for the history.
#[derive(Debug)]
pub struct ApiError {
    /// `Fail` when the request certainly had no effect, `Unknown` otherwise.
    pub outcome: Outcome,
    /// What happened.
    pub message: String,
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
            });
        }
        let text = if text.is_empty() { "null" } else { &text };
        serde_json::from_str(text).map_err(|e| ApiError {
            // It answered 2xx: the request took effect even if the answer is odd.
            outcome: Outcome::Unknown,
            message: format!("undecodable answer ({e}): {}", truncate(text, 300)),
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
