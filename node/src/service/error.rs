//! The one error of the node's application: what went wrong with a request, in domain terms
//! (not found, conflict, invalid field, forbidden, too large, unavailable with a retry hint...).
//!
//! Every service returns it; the HTTP adapter (`api::error`) maps it to a status and the JSON
//! body, and the mesh relay carries it intact (it is serde-encoded), so that the same request
//! answers the same status and body on every node, whichever node did the work.

use serde::{Deserialize, Serialize};

use crate::api_types::{ErrorBody, ErrorDetail};

/// `Retry-After` of a 429 for a full table or a quota: freeing room takes an admin or time.
pub const LIMIT_RETRY_AFTER_SECS: u64 = 60;

/// Every way a request can fail, each with its SPEC.md status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum ServiceError {
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

impl ServiceError {
    /// Shorthand for a 400 that names `field`.
    pub fn field(field: &str, problem: impl std::fmt::Display) -> ServiceError {
        ServiceError::InvalidInput(format!("field `{field}`: {problem}"))
    }

    /// Shorthand for a 404 about `what`.
    pub fn not_found(what: &str, id: &str) -> ServiceError {
        ServiceError::NotFound(format!("{what} `{id}` not found"))
    }

    /// Shorthand for a 503 with `Retry-After: 1`.
    pub fn unavailable(message: impl Into<String>) -> ServiceError {
        ServiceError::Unavailable {
            message: message.into(),
            retry_after_secs: 1,
        }
    }

    /// The API's answer to a refusal of the state machine, with SPEC's status: 400 names the
    /// field, 404, 409, 422 never fits, 429 a bounded table is full, 503 no room right now.
    pub fn from_refusal(refusal: &shoal_raft::Refusal) -> ServiceError {
        use shoal_raft::Refusal;
        match refusal {
            Refusal::NotFound { kind, id } => ServiceError::not_found(kind, id),
            Refusal::InvalidArgument { field, reason } => ServiceError::field(field, reason),
            Refusal::Conflict { reason } => ServiceError::Conflict(reason.clone()),
            Refusal::NodeRemoved { .. } => ServiceError::Conflict(refusal.to_string()),
            Refusal::Unsatisfiable {
                requested,
                largest_allocatable,
            } => ServiceError::Unsatisfiable(format!(
                "the reservation ({} millicores, {} bytes) is larger than any node \
                 (largest allocatable: {} millicores, {} bytes)",
                requested.cpu_millis,
                requested.memory_bytes,
                largest_allocatable.cpu_millis,
                largest_allocatable.memory_bytes
            )),
            Refusal::NoCapacity { requested } => ServiceError::Unavailable {
                message: format!(
                    "no node has room for {} millicores and {} bytes right now",
                    requested.cpu_millis, requested.memory_bytes
                ),
                retry_after_secs: 5,
            },
            Refusal::LimitReached { .. } => ServiceError::RateLimited {
                message: refusal.to_string(),
                retry_after_secs: LIMIT_RETRY_AFTER_SECS,
            },
            _ => ServiceError::unavailable(refusal.to_string()),
        }
    }

    /// The stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            ServiceError::InvalidInput(_) => "invalid_input",
            ServiceError::Unauthorized(_) => "unauthorized",
            ServiceError::Forbidden(_) => "forbidden",
            ServiceError::NotFound(_) => "not_found",
            ServiceError::Conflict(_) => "conflict",
            ServiceError::TooLarge(_) => "too_large",
            ServiceError::Unsatisfiable(_) => "unsatisfiable",
            ServiceError::RateLimited { .. } => "rate_limited",
            ServiceError::Unavailable { .. } => "unavailable",
            ServiceError::Internal(_) => "internal",
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
