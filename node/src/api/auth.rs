//! Authentication: `Authorization: Bearer <api key>`, checked against the SHA-256 hashes in the
//! durable state. An extractor rather than a middleware so that each handler states in its
//! signature who may call it, and so that a missing key is refused before the body is read.

use std::future::{ready, Ready};

use actix_web::{dev::Payload, http::header, web, FromRequest, HttpRequest};

use super::error::ApiError;
use crate::agent::model::sha256_hex;
use crate::agent::Agent;

/// Longest accepted API key, in bytes (ours are 70); longer headers are refused unhashed.
const API_KEY_BYTES_MAX: usize = 256;

/// The authenticated caller of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The key's id.
    pub key_id: String,
    /// The key's display prefix (recorded in the audit log).
    pub prefix: String,
    /// The tenant the key acts for.
    pub tenant: String,
    /// Whether it is an admin key.
    pub admin: bool,
}

impl Caller {
    /// Whether this caller may see or touch a resource of `tenant`.
    pub fn can_access(&self, tenant: &str) -> bool {
        self.admin || self.tenant == tenant
    }

    /// Refuses non-admin callers with 403.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.admin {
            Ok(())
        } else {
            Err(ApiError::Forbidden(
                "this needs an admin API key".to_string(),
            ))
        }
    }
}

/// An admin caller (a tenant key gets 403).
#[derive(Debug, Clone)]
pub struct Admin(pub Caller);

fn authenticate(req: &HttpRequest) -> Result<Caller, ApiError> {
    let agent = req
        .app_data::<web::Data<Agent>>()
        .ok_or_else(|| ApiError::Internal("agent state missing".to_string()))?;
    let Some(value) = req.headers().get(header::AUTHORIZATION) else {
        return Err(ApiError::Unauthorized(
            "missing `Authorization: Bearer <api key>` header".to_string(),
        ));
    };
    let text = value
        .to_str()
        .map_err(|_| ApiError::Unauthorized("the Authorization header is not text".to_string()))?;
    let Some(key) = text.strip_prefix("Bearer ") else {
        return Err(ApiError::Unauthorized(
            "the Authorization header must be `Bearer <api key>`".to_string(),
        ));
    };
    let key = key.trim();
    if key.is_empty() || key.len() > API_KEY_BYTES_MAX {
        return Err(ApiError::Unauthorized("invalid API key".to_string()));
    }
    let hash = sha256_hex(key);
    // Keys live in Raft's applied state (replicated to every server), so any node
    // authenticates any key the cluster committed.
    agent
        .raft
        .read(|state| {
            state.api_key_by_hash(&hash).map(|record| Caller {
                key_id: record.id.to_string(),
                prefix: record.prefix.clone(),
                tenant: record.tenant.clone(),
                admin: record.admin,
            })
        })
        .ok_or_else(|| ApiError::Unauthorized("invalid or revoked API key".to_string()))
}

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = Ready<Result<Caller, ApiError>>;

    fn from_request(req: &HttpRequest, _payload: &mut Payload) -> Self::Future {
        ready(authenticate(req))
    }
}

impl FromRequest for Admin {
    type Error = ApiError;
    type Future = Ready<Result<Admin, ApiError>>;

    fn from_request(req: &HttpRequest, _payload: &mut Payload) -> Self::Future {
        ready(authenticate(req).and_then(|caller| {
            caller.require_admin()?;
            Ok(Admin(caller))
        }))
    }
}
