//! `/v1/workstations` and their processes: decode, call [`service::workstations`] and
//! [`service::processes`], encode.

use actix_web::{web, HttpResponse};

use super::auth::Caller;
use super::body::JsonBody;
use crate::agent::Agent;
#[allow(unused_imports)] // named by the OpenAPI attributes
use crate::api_types::{
    CreateProcessRequest, CreateWorkstationRequest, ErrorBody, KillQuery, Process,
    ResizeWorkstationRequest, Workstation,
};
use crate::service::{self, ServiceError};

/// Creates a workstation and places it.
#[utoipa::path(post, path = "/v1/workstations", request_body = CreateWorkstationRequest,
    responses((status = 201, body = Workstation), (status = 400, body = ErrorBody),
              (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])), tag = "workstations")]
pub async fn create(
    caller: Caller,
    agent: web::Data<Agent>,
    JsonBody(request): JsonBody<CreateWorkstationRequest>,
) -> Result<HttpResponse, ServiceError> {
    Ok(
        HttpResponse::Created()
            .json(service::workstations::create(&agent, &caller, request).await?),
    )
}

/// Lists the caller's workstations (all of them for an admin key).
#[utoipa::path(get, path = "/v1/workstations",
    responses((status = 200, body = Vec<Workstation>)), security(("bearer" = [])), tag = "workstations")]
pub async fn list(caller: Caller, agent: web::Data<Agent>) -> Result<HttpResponse, ServiceError> {
    Ok(HttpResponse::Ok().json(service::workstations::list(&agent, &caller).await))
}

/// Shows one workstation.
#[utoipa::path(get, path = "/v1/workstations/{id}",
    responses((status = 200, body = Workstation), (status = 404, body = ErrorBody)),
    security(("bearer" = [])), tag = "workstations")]
pub async fn show(
    caller: Caller,
    agent: web::Data<Agent>,
    id: web::Path<String>,
) -> Result<HttpResponse, ServiceError> {
    Ok(HttpResponse::Ok().json(service::workstations::show(&agent, &caller, &id).await?))
}

/// Resizes a workstation in place when its node has room.
#[utoipa::path(patch, path = "/v1/workstations/{id}", request_body = ResizeWorkstationRequest,
    responses((status = 200, body = Workstation), (status = 400, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])), tag = "workstations")]
pub async fn resize(
    caller: Caller,
    agent: web::Data<Agent>,
    id: web::Path<String>,
    JsonBody(request): JsonBody<ResizeWorkstationRequest>,
) -> Result<HttpResponse, ServiceError> {
    Ok(
        HttpResponse::Ok()
            .json(service::workstations::resize(&agent, &caller, &id, request).await?),
    )
}

/// Deletes a workstation: processes stopped, log discarded, the audit log keeps the record.
#[utoipa::path(delete, path = "/v1/workstations/{id}",
    responses((status = 204), (status = 404, body = ErrorBody)),
    security(("bearer" = [])), tag = "workstations")]
pub async fn delete(
    caller: Caller,
    agent: web::Data<Agent>,
    id: web::Path<String>,
) -> Result<HttpResponse, ServiceError> {
    service::workstations::delete(&agent, &caller, &id).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Starts a background process in a workstation.
#[utoipa::path(post, path = "/v1/workstations/{id}/processes", request_body = CreateProcessRequest,
    responses((status = 201, body = Process), (status = 400, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 429, body = ErrorBody)),
    security(("bearer" = [])), tag = "processes")]
pub async fn create_process(
    caller: Caller,
    agent: web::Data<Agent>,
    id: web::Path<String>,
    JsonBody(request): JsonBody<CreateProcessRequest>,
) -> Result<HttpResponse, ServiceError> {
    Ok(HttpResponse::Created()
        .json(service::processes::create(&agent, &caller, &id, request).await?))
}

/// Lists a workstation's processes with their observed state; for a `pending` workstation
/// (no node), its desired processes as its next host will start them, each with the reason
/// `workstation_pending`.
#[utoipa::path(get, path = "/v1/workstations/{id}/processes",
    responses((status = 200, body = Vec<Process>), (status = 404, body = ErrorBody),
              (status = 503, body = ErrorBody)),
    security(("bearer" = [])), tag = "processes")]
pub async fn list_processes(
    caller: Caller,
    agent: web::Data<Agent>,
    id: web::Path<String>,
) -> Result<HttpResponse, ServiceError> {
    Ok(HttpResponse::Ok().json(service::processes::list(&agent, &caller, &id).await?))
}

/// Signals a process (`?signal=TERM` by default; TERM and KILL stop it for good).
#[utoipa::path(delete, path = "/v1/workstations/{id}/processes/{pid}", params(KillQuery),
    responses((status = 204), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])), tag = "processes")]
pub async fn kill_process(
    caller: Caller,
    agent: web::Data<Agent>,
    path: web::Path<(String, String)>,
    query: web::Query<KillQuery>,
) -> Result<HttpResponse, ServiceError> {
    let (ws_id, proc_id) = path.into_inner();
    service::processes::signal(&agent, &caller, &ws_id, &proc_id, query.signal.as_deref()).await?;
    Ok(HttpResponse::NoContent().finish())
}
