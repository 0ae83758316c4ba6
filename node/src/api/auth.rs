//! Authentication: `Authorization: Bearer <api key>`, checked by [`service::caller`]. An
//! extractor rather than a middleware so that each handler states in its signature who may
//! call it, and so that a missing key is refused before the body is read.
//!
//! [`service::caller`]: crate::service::caller

use std::future::{ready, Ready};

use actix_web::{dev::Payload, http::header, web, FromRequest, HttpRequest};

use crate::agent::Agent;
pub use crate::service::Caller;
use crate::service::ServiceError;

fn authenticate(req: &HttpRequest) -> Result<Caller, ServiceError> {
    let agent = req
        .app_data::<web::Data<Agent>>()
        .ok_or_else(|| ServiceError::Internal("agent state missing".to_string()))?;
    let Some(value) = req.headers().get(header::AUTHORIZATION) else {
        return Err(ServiceError::Unauthorized(
            "missing `Authorization: Bearer <api key>` header".to_string(),
        ));
    };
    let text = value.to_str().map_err(|_| {
        ServiceError::Unauthorized("the Authorization header is not text".to_string())
    })?;
    let Some(key) = text.strip_prefix("Bearer ") else {
        return Err(ServiceError::Unauthorized(
            "the Authorization header must be `Bearer <api key>`".to_string(),
        ));
    };
    crate::service::caller::authenticate(agent, key)
}

impl FromRequest for Caller {
    type Error = ServiceError;
    type Future = Ready<Result<Caller, ServiceError>>;

    fn from_request(req: &HttpRequest, _payload: &mut Payload) -> Self::Future {
        ready(authenticate(req))
    }
}

/// An admin caller, refused (403) before the body is read: a tenant key learns nothing from
/// a body error on an endpoint it may not use. The service checks the role again.
#[derive(Debug, Clone)]
pub struct Admin(pub Caller);

impl FromRequest for Admin {
    type Error = ServiceError;
    type Future = Ready<Result<Admin, ServiceError>>;

    fn from_request(req: &HttpRequest, _payload: &mut Payload) -> Self::Future {
        ready(authenticate(req).and_then(|caller| {
            caller.require_admin()?;
            Ok(Admin(caller))
        }))
    }
}
