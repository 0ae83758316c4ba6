//! The API's one error type and its JSON rendering (`{"error": {"code", "message"}}`).

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};

use crate::api_types::{ErrorBody, ErrorDetail};

/// `Retry-After` of a 429 for a full table or a quota: freeing room takes an admin or time.
pub const LIMIT_RETRY_AFTER_SECS: u64 = 60;

/// Every way a request can fail, each with its SPEC.md status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// 400: the input is malformed or out of range; the message names the field.
    #[error("{0}")]
    InvalidInput(String),
    /// 401: no API key, or one that is not valid.
    #[error("{0}")]
    Unauthorized(String),
    /// 403: the key is valid but may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// 404: no such resource (or not visible to this tenant).
    #[error("{0}")]
    NotFound(String),
    /// 409: the resource's state does not allow this now.
    #[error("{0}")]
    Conflict(String),
    /// 413: body or code too large.
    #[error("{0}")]
    TooLarge(String),
    /// 422: can never be satisfied (e.g. larger than any node).
    #[error("{0}")]
    Unsatisfiable(String),
    /// 429: rate or quota exceeded; retry after this many seconds.
    #[error("{message}")]
    RateLimited {
        /// Human-readable reason.
        message: String,
        /// Seconds the client should wait.
        retry_after_secs: u64,
    },
    /// 503: no leader or no capacity right now; retry after this many seconds.
    #[error("{message}")]
    Unavailable {
        /// Human-readable reason.
        message: String,
        /// Seconds the client should wait.
        retry_after_secs: u64,
    },
    /// 500: a bug or an unexpected local failure (disk).
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    /// Shorthand for a 400 that names `field`.
    pub fn field(field: &str, problem: impl std::fmt::Display) -> ApiError {
        ApiError::InvalidInput(format!("field `{field}`: {problem}"))
    }

    /// Shorthand for a 404 about `what`.
    pub fn not_found(what: &str, id: &str) -> ApiError {
        ApiError::NotFound(format!("{what} `{id}` not found"))
    }

    /// Shorthand for a 503 with `Retry-After: 1`.
    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError::Unavailable {
            message: message.into(),
            retry_after_secs: 1,
        }
    }

    /// The API's answer to a refusal of the state machine, with SPEC's status: 400 names the
    /// field, 404, 409, 422 never fits, 429 a bounded table is full, 503 no room right now.
    pub fn from_refusal(refusal: &shoal_raft::Refusal) -> ApiError {
        use shoal_raft::Refusal;
        match refusal {
            Refusal::NotFound { kind, id } => ApiError::not_found(kind, id),
            Refusal::InvalidArgument { field, reason } => ApiError::field(field, reason),
            Refusal::Conflict { reason } => ApiError::Conflict(reason.clone()),
            Refusal::NodeRemoved { .. } => ApiError::Conflict(refusal.to_string()),
            Refusal::Unsatisfiable {
                requested,
                largest_allocatable,
            } => ApiError::Unsatisfiable(format!(
                "the reservation ({} millicores, {} bytes) is larger than any node \
                 (largest allocatable: {} millicores, {} bytes)",
                requested.cpu_millis,
                requested.memory_bytes,
                largest_allocatable.cpu_millis,
                largest_allocatable.memory_bytes
            )),
            Refusal::NoCapacity { requested } => ApiError::Unavailable {
                message: format!(
                    "no node has room for {} millicores and {} bytes right now",
                    requested.cpu_millis, requested.memory_bytes
                ),
                retry_after_secs: 5,
            },
            Refusal::LimitReached { .. } => ApiError::RateLimited {
                message: refusal.to_string(),
                retry_after_secs: LIMIT_RETRY_AFTER_SECS,
            },
            _ => ApiError::unavailable(refusal.to_string()),
        }
    }

    /// The stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::InvalidInput(_) => "invalid_input",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound(_) => "not_found",
            ApiError::Conflict(_) => "conflict",
            ApiError::TooLarge(_) => "too_large",
            ApiError::Unsatisfiable(_) => "unsatisfiable",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::Unavailable { .. } => "unavailable",
            ApiError::Internal(_) => "internal",
        }
    }

    /// The JSON body.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                code: self.code().to_string(),
                message: self.to_string(),
            },
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::InvalidInput(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unsatisfiable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        match self {
            ApiError::RateLimited {
                retry_after_secs, ..
            }
            | ApiError::Unavailable {
                retry_after_secs, ..
            } => {
                response.insert_header((header::RETRY_AFTER, retry_after_secs.to_string()));
            }
            ApiError::Unauthorized(_) => {
                response.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
            }
            _ => {}
        }
        response.json(self.body())
    }
}

/// Parses a JSON request body, turning every failure into a 400 that names the field
/// where serde stopped (serde_json reports a position, not a path; the nearest key before that
/// position is the field).
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.is_empty() {
        return Err(ApiError::InvalidInput(
            "a JSON body is required".to_string(),
        ));
    }
    serde_json::from_slice::<T>(body).map_err(|err| {
        let detail = err.to_string();
        if err.is_syntax() || err.is_eof() {
            return ApiError::InvalidInput(format!("malformed JSON: {detail}"));
        }
        // `missing field` and `unknown field` messages name the field already.
        if detail.contains("field `") {
            return ApiError::InvalidInput(detail);
        }
        match field_before(body, err.line(), err.column()) {
            Some(field) => ApiError::field(&field, detail),
            None => ApiError::InvalidInput(format!("body: {detail}")),
        }
    })
}

/// The last object key (`"name":`) that starts before `line:column` (1-based) in `text`.
fn field_before(text: &[u8], line: usize, column: usize) -> Option<String> {
    let mut position = 0usize;
    let mut current_line = 1usize;
    for (index, byte) in text.iter().enumerate() {
        if current_line == line {
            position = index;
            break;
        }
        if *byte == b'\n' {
            current_line += 1;
        }
    }
    let end = position.saturating_add(column).min(text.len());
    let prefix = std::str::from_utf8(&text[..end]).ok()?;
    // Walk back to the last `"key"` followed by optional spaces and a colon.
    let mut search_end = prefix.len();
    while let Some(colon) = prefix[..search_end].rfind(':') {
        let before = prefix[..colon].trim_end();
        if let Some(stripped) = before.strip_suffix('"') {
            if let Some(open) = stripped.rfind('"') {
                let key = &stripped[open + 1..];
                if !key.is_empty() && key.len() <= 64 && !key.contains('\\') {
                    return Some(key.to_string());
                }
            }
        }
        search_end = colon;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api_types::CreateWorkstationRequest;

    #[test]
    fn type_errors_name_the_field() {
        let cases: &[(&str, &str)] = &[
            (r#"{"cpu_millis": "many", "memory_bytes": 1}"#, "cpu_millis"),
            (r#"{"cpu_millis": 1, "memory_bytes": -5}"#, "memory_bytes"),
            (
                r#"{"cpu_millis": 1,
                 "memory_bytes": 5, "network": "moon"}"#,
                "network",
            ),
            (
                r#"{"cpu_millis": 1, "memory_bytes": 5, "color": 1}"#,
                "color",
            ),
            (r#"{"memory_bytes": 5}"#, "cpu_millis"),
        ];
        for (body, field) in cases {
            let err = parse_json::<CreateWorkstationRequest>(body.as_bytes()).unwrap_err();
            assert_eq!(err.code(), "invalid_input");
            assert!(err.to_string().contains(field), "{body}: {err}");
        }
    }

    #[test]
    fn malformed_json_is_invalid_input() {
        for body in ["", "{", "not json", "[1,2", "{\"cpu_millis\": }"] {
            let err = parse_json::<CreateWorkstationRequest>(body.as_bytes()).unwrap_err();
            assert_eq!(err.code(), "invalid_input", "{body}");
        }
    }
}

#[cfg(test)]
mod fuzz {
    use super::*;
    use crate::api_types::{
        CreateKeyRequest, CreateProcessRequest, CreateTokenRequest, CreateWorkstationRequest,
        ResizeWorkstationRequest, RunRequest,
    };
    use proptest::prelude::*;

    fn parse_all(body: &[u8]) {
        fn check<T: serde::de::DeserializeOwned>(body: &[u8]) {
            if let Err(err) = parse_json::<T>(body) {
                assert_eq!(err.code(), "invalid_input", "{err}");
            }
        }
        check::<CreateWorkstationRequest>(body);
        check::<ResizeWorkstationRequest>(body);
        check::<CreateProcessRequest>(body);
        check::<RunRequest>(body);
        check::<CreateKeyRequest>(body);
        check::<CreateTokenRequest>(body);
    }

    /// Arbitrary JSON-ish text: objects with known and unknown keys and values of every type.
    fn json_like() -> impl Strategy<Value = String> {
        let key = prop_oneof![
            Just("cpu_millis".to_string()),
            Just("memory_bytes".to_string()),
            Just("argv".to_string()),
            Just("code".to_string()),
            Just("files".to_string()),
            Just("tenant".to_string()),
            Just("restart".to_string()),
            "[a-z_\\\\\"]{0,12}",
        ];
        let value = prop_oneof![
            Just("null".to_string()),
            Just("-1".to_string()),
            Just("1e400".to_string()),
            Just("18446744073709551616".to_string()),
            Just("\"x\"".to_string()),
            Just("[\"a\", 1]".to_string()),
            Just("{\"path\": 1}".to_string()),
            any::<u64>().prop_map(|n| n.to_string()),
            "\"[^\"]{0,8}\"",
        ];
        proptest::collection::vec((key, value), 0..6).prop_map(|pairs| {
            let fields: Vec<String> = pairs
                .into_iter()
                .map(|(key, value)| format!("\"{key}\": {value}"))
                .collect();
            format!("{{{}}}", fields.join(", "))
        })
    }

    proptest! {
        /// No byte string makes a body parser panic, and every refusal is a 400.
        #[test]
        fn arbitrary_bytes_are_refused_cleanly(body in proptest::collection::vec(any::<u8>(), 0..256)) {
            parse_all(&body);
        }

        /// Mistyped, oversized and unknown fields in JSON objects are refused cleanly too.
        #[test]
        fn arbitrary_json_objects_are_refused_cleanly(body in json_like()) {
            parse_all(body.as_bytes());
        }
    }
}
