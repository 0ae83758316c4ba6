//! `POST /v1/runs` and `GET /v1/languages`: decode, call [`service::runs`], encode.

use actix_web::{web, HttpResponse};

use super::auth::Caller;
use super::body::JsonBody;
use crate::agent::Agent;
#[allow(unused_imports)] // named by the OpenAPI attributes
use crate::api_types::{ErrorBody, Language, RunRequest, RunResult};
use crate::service::{self, ServiceError};

/// Runs a program once in a fresh sandbox and answers its result.
#[utoipa::path(post, path = "/v1/runs", request_body = RunRequest,
    responses((status = 200, body = RunResult), (status = 400, body = ErrorBody),
              (status = 413, body = ErrorBody), (status = 429, body = ErrorBody),
              (status = 503, body = ErrorBody)),
    security(("bearer" = [])), tag = "runs")]
pub async fn create_run(
    caller: Caller,
    agent: web::Data<Agent>,
    JsonBody(request): JsonBody<RunRequest>,
) -> Result<HttpResponse, ServiceError> {
    Ok(HttpResponse::Ok().json(service::runs::run(&agent, &caller, request).await?))
}

/// The run languages this node offers.
#[utoipa::path(get, path = "/v1/languages",
    responses((status = 200, body = Vec<Language>)), security(("bearer" = [])), tag = "runs")]
pub async fn languages(
    _caller: Caller,
    agent: web::Data<Agent>,
) -> Result<HttpResponse, ServiceError> {
    Ok(HttpResponse::Ok().json(service::runs::languages(&agent)))
}
