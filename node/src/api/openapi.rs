//! `GET /v1/openapi.json`, generated from the handlers' `#[utoipa::path]` attributes and the
//! `ToSchema` types of `api_types`, so it cannot drift from the code.

use actix_web::HttpResponse;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{cluster, logs, runs, workstations};
use crate::api_types::*;

/// The OpenAPI document of the control API.
#[derive(OpenApi)]
#[openapi(
    info(title = "Shoal control API", version = "1",
         description = "JSON over HTTP, served by every node. Errors are \
                        {\"error\": {\"code\", \"message\"}}."),
    paths(
        super::healthz, super::readyz, super::metrics_text,
        cluster::cluster, cluster::list_nodes, cluster::show_node, cluster::drain_node,
        cluster::remove_node, cluster::create_token, cluster::list_tokens, cluster::revoke_token,
        cluster::create_key, cluster::list_keys, cluster::revoke_key, cluster::audit,
        workstations::create, workstations::list, workstations::show, workstations::resize,
        workstations::delete, workstations::create_process, workstations::list_processes,
        workstations::kill_process, logs::logs, runs::create_run, runs::languages,
    ),
    components(schemas(
        ErrorBody, ErrorDetail, ClusterInfo, Pool, PoolResource, Resources, NodeInfo, NodeState,
        CreateTokenRequest, TokenInfo, TokenCreated, CreateKeyRequest, KeyInfo, KeyCreated,
        AuditEntry, NetworkPolicy, WorkstationState, CreateWorkstationRequest,
        ResizeWorkstationRequest, Workstation, RestartPolicy, ProcessState,
        CreateProcessRequest, Process, LogStream, LogRecord, LogsPage, DroppedEvent, ExitEvent,
        Verdict, RunRequest, RunResult, Language, Health,
    )),
    modifiers(&BearerAuth),
)]
pub struct ApiDoc;

/// Declares the `bearer` security scheme the paths refer to.
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("An API key: `Authorization: Bearer <key>`"))
                    .build(),
            ),
        );
    }
}

/// Serves the document.
pub async fn document() -> HttpResponse {
    HttpResponse::Ok().json(ApiDoc::openapi())
}
