//! The blocking HTTP client of the control API: base address, API key, error mapping.
//!
//! Every command goes through [`ApiClient`], so that "cannot reach", the API's error body and
//! the missing-key hint are turned into a [`CliError`] in exactly one place.

use std::time::Duration;

use reqwest::blocking::{Client, RequestBuilder, Response};
use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde_json::Value;

use super::error::{CliError, CliResult};

/// The address used when neither `--addr` nor `SHOAL_ADDR` is set.
pub const DEFAULT_ADDR: &str = "http://127.0.0.1:7070";
/// How long a plain request may take (connect, answer, and each read of the body).
pub const REQUEST_TIMEOUT_MS: u64 = 30_000;
/// How long connecting may take.
pub const CONNECT_TIMEOUT_MS: u64 = 5_000;
/// The largest error body read to build a message.
const ERROR_BODY_BYTES_MAX: usize = 4096;

/// A client of one node's control API.
#[derive(Debug, Clone)]
pub struct ApiClient {
    /// `scheme://host:port` without a trailing slash.
    base: String,
    token: Option<String>,
    http: Client,
}

impl ApiClient {
    /// A client for `addr` (with or without `http://`) that waits at most `timeout` for each
    /// answer and each read of a body.
    pub fn new(addr: &str, token: Option<String>, timeout: Duration) -> CliResult<Self> {
        let base = normalize_addr(addr)?;
        let http = Client::builder()
            .timeout(timeout)
            .connect_timeout(Duration::from_millis(CONNECT_TIMEOUT_MS))
            .no_proxy()
            .build()
            .map_err(|error| CliError::Other(format!("cannot build the HTTP client: {error}")))?;
        Ok(Self {
            base,
            token: token.filter(|t| !t.trim().is_empty()),
            http,
        })
    }

    /// A request to `path` (which starts with `/`), with the API key if there is one.
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let builder = self.http.request(method, format!("{}{}", self.base, path));
        match &self.token {
            Some(token) => builder.bearer_auth(token.trim()),
            None => builder,
        }
    }

    /// Sends a request; an error status becomes [`CliError::Api`].
    pub fn send(&self, builder: RequestBuilder) -> CliResult<Response> {
        let response = builder
            .send()
            .map_err(|error| self.transport_error(&error))?;
        if response.status().is_success() {
            return Ok(response);
        }
        Err(self.api_error(response))
    }

    /// `GET path` and its JSON answer.
    pub fn get(&self, path: &str) -> CliResult<Value> {
        self.json(self.request(Method::GET, path))
    }

    /// `GET path?query` and its JSON answer.
    pub fn get_query(&self, path: &str, query: &[(&str, String)]) -> CliResult<Value> {
        self.json(self.request(Method::GET, path).query(query))
    }

    /// `POST path` with a JSON body, and its JSON answer.
    pub fn post<B: Serialize + ?Sized>(&self, path: &str, body: &B) -> CliResult<Value> {
        self.json(self.request(Method::POST, path).json(body))
    }

    /// `PATCH path` with a JSON body, and its JSON answer.
    pub fn patch<B: Serialize + ?Sized>(&self, path: &str, body: &B) -> CliResult<Value> {
        self.json(self.request(Method::PATCH, path).json(body))
    }

    /// `DELETE path?query`, and its JSON answer (`null` for an empty answer).
    pub fn delete(&self, path: &str, query: &[(&str, String)]) -> CliResult<Value> {
        self.json(self.request(Method::DELETE, path).query(query))
    }

    /// Sends and decodes the answer as JSON; an empty body is `null`.
    pub fn json(&self, builder: RequestBuilder) -> CliResult<Value> {
        let response = self.send(builder)?;
        let body = response
            .bytes()
            .map_err(|error| self.transport_error(&error))?;
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&body).map_err(|error| {
            CliError::Other(format!("{} answered with invalid JSON: {error}", self.base))
        })
    }

    /// The error for a request that got no answer: the root cause in a few words.
    pub fn transport_error(&self, error: &reqwest::Error) -> CliError {
        CliError::Unreachable {
            addr: self.base.clone(),
            reason: transport_reason(error),
        }
    }

    /// Builds [`CliError::Api`] from an error answer.
    fn api_error(&self, response: Response) -> CliError {
        let status = response.status();
        let mut body = Vec::new();
        // The body is only for the message: a failure to read it leaves a generic message.
        let _ = std::io::Read::read_to_end(
            &mut std::io::Read::take(response, ERROR_BODY_BYTES_MAX as u64),
            &mut body,
        );
        let (code, mut message) = parse_error_body(status, &body);
        if status == StatusCode::UNAUTHORIZED && self.token.is_none() {
            message.push_str(" (no API key given: set SHOAL_TOKEN or pass --token)");
        }
        CliError::Api {
            status: status.as_u16(),
            code,
            message,
        }
    }
}

/// Accepts `host:port`, `http://host:port` and `http://host:port/`; refuses anything that is
/// not an http(s) URL.
pub fn normalize_addr(addr: &str) -> CliResult<String> {
    let addr = addr.trim();
    let with_scheme = if addr.contains("://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    };
    let url = reqwest::Url::parse(&with_scheme)
        .map_err(|error| CliError::Usage(format!("invalid address {addr:?}: {error}")))?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(CliError::Usage(format!(
            "invalid address {addr:?}: only http:// is supported"
        )));
    }
    if url.host_str().is_none() {
        return Err(CliError::Usage(format!(
            "invalid address {addr:?}: no host"
        )));
    }
    Ok(with_scheme.trim_end_matches('/').to_string())
}

/// The API's `{"error": {"code", "message"}}`, or the status text when the body is not that.
fn parse_error_body(status: StatusCode, body: &[u8]) -> (String, String) {
    let parsed: Option<(String, String)> =
        serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|value| {
                let error = value.get("error")?;
                let message = error.get("message")?.as_str()?.to_string();
                let code = error
                    .get("code")
                    .and_then(Value::as_str)
                    .unwrap_or("error")
                    .to_string();
                Some((code, message))
            });
    if let Some(parsed) = parsed {
        return parsed;
    }
    let reason = status.canonical_reason().unwrap_or("error").to_string();
    let text = String::from_utf8_lossy(body);
    let first_line = text.lines().next().unwrap_or("").trim();
    let message = if first_line.is_empty() {
        format!("HTTP {} {reason}", status.as_u16())
    } else {
        first_line.chars().take(200).collect()
    };
    (reason.to_lowercase().replace(' ', "_"), message)
}

/// The root cause of a transport error in a few words (`connection refused`, `timed out`).
pub fn transport_reason(error: &reqwest::Error) -> String {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    let mut last = error.to_string();
    while let Some(current) = source {
        if let Some(io) = current.downcast_ref::<std::io::Error>() {
            return match io.kind() {
                std::io::ErrorKind::ConnectionRefused => "connection refused".to_string(),
                std::io::ErrorKind::ConnectionReset => "connection reset".to_string(),
                std::io::ErrorKind::TimedOut => "timed out".to_string(),
                _ => io.to_string(),
            };
        }
        last = current.to_string();
        source = current.source();
    }
    if error.is_timeout() {
        return "timed out".to_string();
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_normalized_or_refused() {
        assert_eq!(
            normalize_addr("127.0.0.1:7070").ok().as_deref(),
            Some("http://127.0.0.1:7070")
        );
        assert_eq!(
            normalize_addr("http://h:1/").ok().as_deref(),
            Some("http://h:1")
        );
        assert!(normalize_addr("ftp://h:1").is_err());
        assert!(normalize_addr("http://").is_err());
        assert!(normalize_addr("not a url at all").is_err());
    }

    #[test]
    fn error_bodies_give_code_and_message() {
        let body = br#"{"error":{"code":"not_found","message":"no workstation ws-1"}}"#;
        assert_eq!(
            parse_error_body(StatusCode::NOT_FOUND, body),
            ("not_found".to_string(), "no workstation ws-1".to_string())
        );
        assert_eq!(
            parse_error_body(StatusCode::BAD_GATEWAY, b""),
            (
                "bad_gateway".to_string(),
                "HTTP 502 Bad Gateway".to_string()
            )
        );
        assert_eq!(
            parse_error_body(StatusCode::BAD_REQUEST, b"oops\nmore"),
            ("bad_request".to_string(), "oops".to_string())
        );
    }
}
