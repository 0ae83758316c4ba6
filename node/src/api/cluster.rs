//! `/v1/cluster`, `/v1/nodes`, `/v1/tokens`, `/v1/keys` and `/v1/audit`: decode, call
//! [`service::cluster`], encode.

use actix_web::{web, HttpResponse};

use super::auth::{Admin, Caller};
use super::body::JsonBody;
use crate::agent::Agent;
#[allow(unused_imports)] // named by the OpenAPI attributes
use crate::api_types::{
    AuditEntry, AuditQuery, ClusterInfo, CreateKeyRequest, CreateTokenRequest, ErrorBody,
    KeyCreated, KeyInfo, NodeInfo, TokenCreated, TokenInfo,
};
use crate::service::{self, ServiceError};

/// Cluster id, leader, term, servers and pool totals.
#[utoipa::path(get, path = "/v1/cluster",
    responses((status = 200, body = ClusterInfo), (status = 401, body = ErrorBody)),
    security(("bearer" = [])), tag = "cluster")]
pub async fn cluster(
    _caller: Caller,
    agent: web::Data<Agent>,
) -> Result<HttpResponse, ServiceError> {
    Ok(HttpResponse::Ok().json(service::cluster::cluster(&agent).await))
}

/// The nodes with role, state, addresses, capacity, reserved, used and last heartbeat (admin;
/// a tenant sees the pool totals in `/v1/cluster`).
#[utoipa::path(get, path = "/v1/nodes",
    responses((status = 200, body = Vec<NodeInfo>), (status = 403, body = ErrorBody)),
    security(("bearer" = [])), tag = "cluster")]
pub async fn list_nodes(
    Admin(caller): Admin,
    agent: web::Data<Agent>,
) -> Result<HttpResponse, ServiceError> {
    Ok(HttpResponse::Ok().json(service::cluster::list_nodes(&agent, &caller).await?))
}

/// One node (admin).
#[utoipa::path(get, path = "/v1/nodes/{id}",
    responses((status = 200, body = NodeInfo), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody)),
    security(("bearer" = [])), tag = "cluster")]
pub async fn show_node(
    Admin(caller): Admin,
    agent: web::Data<Agent>,
    id: web::Path<String>,
) -> Result<HttpResponse, ServiceError> {
    Ok(HttpResponse::Ok().json(service::cluster::show_node(&agent, &caller, &id).await?))
}

/// Drains a node (admin): it takes no new placements, and the leader's drain loop moves its
/// workstations to other nodes one by one (`agent::drain`). Answers 200 with the node, now
/// `draining`; its `n_workstations` goes to 0 as they move.
#[utoipa::path(post, path = "/v1/nodes/{id}/drain",
    responses((status = 200, body = NodeInfo), (status = 409, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])), tag = "cluster")]
pub async fn drain_node(
    Admin(caller): Admin,
    agent: web::Data<Agent>,
    id: web::Path<String>,
) -> Result<HttpResponse, ServiceError> {
    Ok(HttpResponse::Ok().json(service::cluster::drain_node(&agent, &caller, &id).await?))
}

/// Removes a node (admin): `left` at once if it hosts nothing, otherwise it drains first (the
/// leader's drain loop) and becomes `left` when empty. The last server of a cluster cannot be
/// removed (409).
#[utoipa::path(delete, path = "/v1/nodes/{id}",
    responses((status = 200, body = NodeInfo), (status = 409, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])), tag = "cluster")]
pub async fn remove_node(
    Admin(caller): Admin,
    agent: web::Data<Agent>,
    id: web::Path<String>,
) -> Result<HttpResponse, ServiceError> {
    Ok(HttpResponse::Ok().json(service::cluster::remove_node(&agent, &caller, &id).await?))
}

/// Creates a join token (admin); its text is returned once.
#[utoipa::path(post, path = "/v1/tokens", request_body = CreateTokenRequest,
    responses((status = 201, body = TokenCreated), (status = 400, body = ErrorBody),
              (status = 403, body = ErrorBody)),
    security(("bearer" = [])), tag = "tokens")]
pub async fn create_token(
    Admin(caller): Admin,
    agent: web::Data<Agent>,
    JsonBody(request): JsonBody<CreateTokenRequest>,
) -> Result<HttpResponse, ServiceError> {
    Ok(HttpResponse::Created()
        .json(service::cluster::create_token(&agent, &caller, request).await?))
}

/// Lists join tokens (admin), never their text.
#[utoipa::path(get, path = "/v1/tokens",
    responses((status = 200, body = Vec<TokenInfo>), (status = 403, body = ErrorBody)),
    security(("bearer" = [])), tag = "tokens")]
pub async fn list_tokens(
    Admin(caller): Admin,
    agent: web::Data<Agent>,
) -> Result<HttpResponse, ServiceError> {
    Ok(HttpResponse::Ok().json(service::cluster::list_tokens(&agent, &caller)?))
}

/// Revokes a join token (admin).
#[utoipa::path(delete, path = "/v1/tokens/{id}",
    responses((status = 204), (status = 404, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("bearer" = [])), tag = "tokens")]
pub async fn revoke_token(
    Admin(caller): Admin,
    agent: web::Data<Agent>,
    id: web::Path<String>,
) -> Result<HttpResponse, ServiceError> {
    service::cluster::revoke_token(&agent, &caller, &id).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Creates an API key (admin); the full key is returned once.
#[utoipa::path(post, path = "/v1/keys", request_body = CreateKeyRequest,
    responses((status = 201, body = KeyCreated), (status = 400, body = ErrorBody),
              (status = 403, body = ErrorBody)),
    security(("bearer" = [])), tag = "keys")]
pub async fn create_key(
    Admin(caller): Admin,
    agent: web::Data<Agent>,
    JsonBody(request): JsonBody<CreateKeyRequest>,
) -> Result<HttpResponse, ServiceError> {
    Ok(HttpResponse::Created().json(service::cluster::create_key(&agent, &caller, request).await?))
}

/// Lists API keys (admin), never the keys themselves.
#[utoipa::path(get, path = "/v1/keys",
    responses((status = 200, body = Vec<KeyInfo>), (status = 403, body = ErrorBody)),
    security(("bearer" = [])), tag = "keys")]
pub async fn list_keys(
    Admin(caller): Admin,
    agent: web::Data<Agent>,
) -> Result<HttpResponse, ServiceError> {
    Ok(HttpResponse::Ok().json(service::cluster::list_keys(&agent, &caller)?))
}

/// Revokes an API key (admin). A key cannot revoke itself (that would lock its holder out by
/// accident).
#[utoipa::path(delete, path = "/v1/keys/{id}",
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])), tag = "keys")]
pub async fn revoke_key(
    Admin(caller): Admin,
    agent: web::Data<Agent>,
    id: web::Path<String>,
) -> Result<HttpResponse, ServiceError> {
    service::cluster::revoke_key(&agent, &caller, &id).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// The audit log, from committed Raft state (every node answers the same): an admin sees all
/// entries, a tenant only those about its own workstations and processes. At most
/// `limit` (default and max 1,000) of the newest entries at or after `since_unix_ms`, oldest
/// first. The cluster keeps the newest 50,000 entries (`AUDIT_LOG_ENTRIES_MAX`).
#[utoipa::path(get, path = "/v1/audit", params(AuditQuery),
    responses((status = 200, body = Vec<AuditEntry>), (status = 400, body = ErrorBody)),
    security(("bearer" = [])), tag = "audit")]
pub async fn audit(
    caller: Caller,
    agent: web::Data<Agent>,
    query: web::Query<AuditQuery>,
) -> Result<HttpResponse, ServiceError> {
    Ok(HttpResponse::Ok().json(service::cluster::audit(&agent, &caller, &query)?))
}
