//! The HTTP mapping of the application's error: SPEC's status for each [`ServiceError`], its
//! headers (`Retry-After`, `WWW-Authenticate`) and the JSON body; and the parsing of JSON
//! request bodies into 400s that name the field.

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};

pub use crate::service::error::ServiceError;

impl ResponseError for ServiceError {
    fn status_code(&self) -> StatusCode {
        match self {
            ServiceError::InvalidInput(_) => StatusCode::BAD_REQUEST,
            ServiceError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ServiceError::Forbidden(_) => StatusCode::FORBIDDEN,
            ServiceError::NotFound(_) => StatusCode::NOT_FOUND,
            ServiceError::Conflict(_) => StatusCode::CONFLICT,
            ServiceError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ServiceError::Unsatisfiable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ServiceError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ServiceError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ServiceError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        match self {
            ServiceError::RateLimited {
                retry_after_secs, ..
            }
            | ServiceError::Unavailable {
                retry_after_secs, ..
            } => {
                response.insert_header((header::RETRY_AFTER, retry_after_secs.to_string()));
            }
            ServiceError::Unauthorized(_) => {
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
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ServiceError> {
    if body.is_empty() {
        return Err(ServiceError::InvalidInput(
            "a JSON body is required".to_string(),
        ));
    }
    serde_json::from_slice::<T>(body).map_err(|err| {
        let detail = err.to_string();
        if err.is_syntax() || err.is_eof() {
            return ServiceError::InvalidInput(format!("malformed JSON: {detail}"));
        }
        // `missing field` and `unknown field` messages name the field already.
        if detail.contains("field `") {
            return ServiceError::InvalidInput(detail);
        }
        match field_before(body, err.line(), err.column()) {
            Some(field) => ServiceError::field(&field, detail),
            None => ServiceError::InvalidInput(format!("body: {detail}")),
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
