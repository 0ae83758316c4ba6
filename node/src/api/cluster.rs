//! `/v1/cluster`, `/v1/nodes`, `/v1/tokens`, `/v1/keys` and `/v1/audit`.

use actix_web::{web, HttpResponse};

use super::auth::{Admin, Caller};
use super::body::JsonBody;
use super::error::ApiError;
use crate::agent::model::{secret_prefix, sha256_hex, KeyRecord, TokenRecord};
use crate::agent::Agent;
use crate::api_types::{
    AuditEntry, AuditQuery, ClusterInfo, CreateKeyRequest, CreateTokenRequest, ErrorBody,
    KeyCreated, KeyInfo, NodeInfo, NodeState, Pool, PoolResource, Resources, TokenCreated,
    TokenInfo,
};
use crate::clock;
use crate::config::parse_roles;

/// Default and largest join token lifetime.
const TOKEN_TTL_MS_DEFAULT: u64 = 3_600_000;
const TOKEN_TTL_MS_MAX: u64 = 30 * 24 * 3_600_000;
/// Most audit entries in one answer.
const AUDIT_PAGE_MAX: u32 = 1_000;

fn this_node(agent: &Agent) -> NodeInfo {
    let (cpu_alloc, mem_alloc) = agent.allocatable();
    let (cpu_reserved, mem_reserved) = agent.store.read(|model| model.reserved_on(&agent.node_id));
    let n_workstations = agent.store.read(|model| {
        model
            .workstations
            .values()
            .filter(|ws| ws.node == agent.node_id)
            .count() as u64
    });
    let (cpu_used, mem_used) = agent.usage.used();
    let role = match (agent.config.role_server, agent.config.role_worker) {
        (true, true) => "server,worker",
        (true, false) => "server",
        _ => "worker",
    };
    let last = agent.usage.last_sample_unix_ms();
    NodeInfo {
        id: agent.node_id.clone(),
        role: role.to_string(),
        state: NodeState::Ready,
        mesh_addr: None,
        api_addr: Some(agent.config.api.to_string()),
        endpoint: Some(agent.config.listen.to_string()),
        capacity: Resources {
            cpu_millis: cpu_alloc,
            memory_bytes: mem_alloc,
        },
        reserved: Resources {
            cpu_millis: cpu_reserved,
            memory_bytes: mem_reserved,
        },
        used: Resources {
            cpu_millis: cpu_used,
            memory_bytes: mem_used,
        },
        last_heartbeat_unix_ms: (last > 0).then_some(last),
        n_workstations,
        isolation: format!(
            "runs: {}; workstations: {}",
            agent.run_context.host.isolation().label(),
            agent.host.isolation()
        ),
    }
}

/// The nodes of the cluster (this build: the one node).
pub fn nodes(agent: &Agent) -> Vec<NodeInfo> {
    vec![this_node(agent)]
}

/// The pool totals over `ready` and `draining` nodes.
pub fn pool(nodes: &[NodeInfo]) -> Pool {
    let mut pool = Pool::default();
    for node in nodes
        .iter()
        .filter(|node| matches!(node.state, NodeState::Ready | NodeState::Draining))
    {
        add(
            &mut pool.cpu_millis,
            node.capacity.cpu_millis,
            node.reserved.cpu_millis,
            node.used.cpu_millis,
        );
        add(
            &mut pool.memory_bytes,
            node.capacity.memory_bytes,
            node.reserved.memory_bytes,
            node.used.memory_bytes,
        );
    }
    pool
}

fn add(resource: &mut PoolResource, capacity: u64, reserved: u64, used: u64) {
    resource.capacity = resource.capacity.saturating_add(capacity);
    resource.reserved = resource.reserved.saturating_add(reserved);
    resource.used = resource.used.saturating_add(used);
}

/// Cluster id, leader, term, servers and pool totals.
#[utoipa::path(get, path = "/v1/cluster",
    responses((status = 200, body = ClusterInfo), (status = 401, body = ErrorBody)),
    security(("bearer" = [])), tag = "cluster")]
pub async fn cluster(_caller: Caller, agent: web::Data<Agent>) -> Result<HttpResponse, ApiError> {
    let nodes = nodes(&agent);
    let status = agent.raft.status();
    // This build's API names nodes by the single-server store's id; Raft knows only itself.
    let leader = (status.leader == Some(status.id)).then(|| agent.node_id.clone());
    Ok(HttpResponse::Ok().json(ClusterInfo {
        cluster_id: agent.store.read(|model| model.cluster_id.clone()),
        leader,
        term: status.term.max(1),
        servers: vec![agent.node_id.clone()],
        pool: pool(&nodes),
        answered_by: agent.node_id.clone(),
    }))
}

/// The nodes with role, state, addresses, capacity, reserved, used and last heartbeat.
#[utoipa::path(get, path = "/v1/nodes",
    responses((status = 200, body = Vec<NodeInfo>)), security(("bearer" = [])), tag = "cluster")]
pub async fn list_nodes(
    _caller: Caller,
    agent: web::Data<Agent>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(nodes(&agent)))
}

/// One node.
#[utoipa::path(get, path = "/v1/nodes/{id}",
    responses((status = 200, body = NodeInfo), (status = 404, body = ErrorBody)),
    security(("bearer" = [])), tag = "cluster")]
pub async fn show_node(
    _caller: Caller,
    agent: web::Data<Agent>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    nodes(&agent)
        .into_iter()
        .find(|node| node.id == *id)
        .map(|node| HttpResponse::Ok().json(node))
        .ok_or_else(|| ApiError::not_found("node", &id))
}

/// Drains a node (admin). With a single node there is nowhere to move its workstations to.
#[utoipa::path(post, path = "/v1/nodes/{id}/drain",
    responses((status = 409, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody)),
    security(("bearer" = [])), tag = "cluster")]
pub async fn drain_node(
    Admin(caller): Admin,
    agent: web::Data<Agent>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    refuse_last_node(&agent, &caller, &id, "node.drain")
}

/// Removes a node (admin). The last server of a cluster cannot be removed.
#[utoipa::path(delete, path = "/v1/nodes/{id}",
    responses((status = 409, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody)),
    security(("bearer" = [])), tag = "cluster")]
pub async fn remove_node(
    Admin(caller): Admin,
    agent: web::Data<Agent>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    refuse_last_node(&agent, &caller, &id, "node.remove")
}

fn refuse_last_node(
    agent: &Agent,
    caller: &Caller,
    id: &str,
    action: &str,
) -> Result<HttpResponse, ApiError> {
    if id != agent.node_id {
        return Err(ApiError::not_found("node", id));
    }
    let err = ApiError::Conflict(
        "this node is the cluster's only node: there is nowhere to move its workstations"
            .to_string(),
    );
    let now = clock::now_unix_ms();
    agent.store.write(|model| {
        model.audit(
            now,
            &caller.prefix,
            &caller.tenant,
            action,
            &format!("node/{id}"),
            err.code(),
        );
        Ok(())
    })?;
    Err(err)
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
) -> Result<HttpResponse, ApiError> {
    let ttl_ms = request.ttl_ms.unwrap_or(TOKEN_TTL_MS_DEFAULT);
    if ttl_ms == 0 || ttl_ms > TOKEN_TTL_MS_MAX {
        return Err(ApiError::field(
            "ttl_ms",
            format!("must be between 1 and {TOKEN_TTL_MS_MAX}"),
        ));
    }
    if request.uses == Some(0) {
        return Err(ApiError::field("uses", "must be at least 1"));
    }
    let role = request.role.clone().unwrap_or_else(|| "worker".to_string());
    parse_roles(&role).map_err(|err| ApiError::field("role", err))?;
    let now = clock::now_unix_ms();
    let secret = format!("shoaljoin_{}", agent.random.hex(24));
    let record = TokenRecord {
        id: agent.new_id("tok"),
        prefix: secret_prefix(&secret),
        sha256: sha256_hex(&secret),
        role,
        created_unix_ms: now,
        expires_unix_ms: now.saturating_add(ttl_ms),
        uses_max: request.uses,
        uses: 0,
        revoked: false,
    };
    let info = record.info();
    let resource = format!("token/{}", record.id);
    agent.store.write(|model| {
        model.add_token(record)?;
        model.audit(
            now,
            &caller.prefix,
            &caller.tenant,
            "token.create",
            &resource,
            "ok",
        );
        Ok(())
    })?;
    Ok(HttpResponse::Created().json(TokenCreated {
        info,
        token: secret,
    }))
}

/// Lists join tokens (admin), never their text.
#[utoipa::path(get, path = "/v1/tokens",
    responses((status = 200, body = Vec<TokenInfo>), (status = 403, body = ErrorBody)),
    security(("bearer" = [])), tag = "tokens")]
pub async fn list_tokens(_admin: Admin, agent: web::Data<Agent>) -> Result<HttpResponse, ApiError> {
    let tokens: Vec<TokenInfo> = agent
        .store
        .read(|model| model.tokens.values().map(TokenRecord::info).collect());
    Ok(HttpResponse::Ok().json(tokens))
}

/// Revokes a join token (admin).
#[utoipa::path(delete, path = "/v1/tokens/{id}",
    responses((status = 204), (status = 404, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("bearer" = [])), tag = "tokens")]
pub async fn revoke_token(
    Admin(caller): Admin,
    agent: web::Data<Agent>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let now = clock::now_unix_ms();
    agent.store.write(|model| {
        let token = model
            .tokens
            .get_mut(id.as_str())
            .ok_or_else(|| ApiError::not_found("token", &id))?;
        token.revoked = true;
        model.audit(
            now,
            &caller.prefix,
            &caller.tenant,
            "token.revoke",
            &format!("token/{id}"),
            "ok",
        );
        Ok(())
    })?;
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
) -> Result<HttpResponse, ApiError> {
    let tenant = request.tenant.trim();
    let valid = !tenant.is_empty()
        && tenant.len() <= 64
        && tenant
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if !valid {
        return Err(ApiError::field(
            "tenant",
            "must be 1-64 characters of [A-Za-z0-9_.-]",
        ));
    }
    let now = clock::now_unix_ms();
    let secret = format!("shoal_{}", agent.random.hex(32));
    let record = KeyRecord {
        id: agent.new_id("key"),
        prefix: secret_prefix(&secret),
        sha256: sha256_hex(&secret),
        tenant: tenant.to_string(),
        admin: request.admin,
        created_unix_ms: now,
        revoked: false,
    };
    let info = record.info();
    let resource = format!("key/{}", record.id);
    agent.store.write(|model| {
        model.add_key(record)?;
        model.audit(
            now,
            &caller.prefix,
            &caller.tenant,
            "key.create",
            &resource,
            "ok",
        );
        Ok(())
    })?;
    Ok(HttpResponse::Created().json(KeyCreated { info, key: secret }))
}

/// Lists API keys (admin), never the keys themselves.
#[utoipa::path(get, path = "/v1/keys",
    responses((status = 200, body = Vec<KeyInfo>), (status = 403, body = ErrorBody)),
    security(("bearer" = [])), tag = "keys")]
pub async fn list_keys(_admin: Admin, agent: web::Data<Agent>) -> Result<HttpResponse, ApiError> {
    let keys: Vec<KeyInfo> = agent
        .store
        .read(|model| model.keys.values().map(KeyRecord::info).collect());
    Ok(HttpResponse::Ok().json(keys))
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
) -> Result<HttpResponse, ApiError> {
    if caller.key_id == *id {
        return Err(ApiError::Conflict("a key cannot revoke itself".to_string()));
    }
    let now = clock::now_unix_ms();
    agent.store.write(|model| {
        let key = model
            .keys
            .get_mut(id.as_str())
            .ok_or_else(|| ApiError::not_found("key", &id))?;
        key.revoked = true;
        model.audit(
            now,
            &caller.prefix,
            &caller.tenant,
            "key.revoke",
            &format!("key/{id}"),
            "ok",
        );
        Ok(())
    })?;
    Ok(HttpResponse::NoContent().finish())
}

/// The audit log: an admin sees all entries, a tenant its own.
#[utoipa::path(get, path = "/v1/audit", params(AuditQuery),
    responses((status = 200, body = Vec<AuditEntry>)), security(("bearer" = [])), tag = "audit")]
pub async fn audit(
    caller: Caller,
    agent: web::Data<Agent>,
    query: web::Query<AuditQuery>,
) -> Result<HttpResponse, ApiError> {
    let since = query.since_unix_ms.unwrap_or(0);
    let limit = query
        .limit
        .unwrap_or(AUDIT_PAGE_MAX)
        .clamp(1, AUDIT_PAGE_MAX) as usize;
    let entries: Vec<AuditEntry> = agent.store.read(|model| {
        let mut matching: Vec<AuditEntry> = model
            .audit
            .iter()
            .rev()
            .filter(|entry| entry.time_unix_ms >= since && caller.can_access(&entry.tenant))
            .take(limit)
            .cloned()
            .collect();
        matching.reverse();
        matching
    });
    Ok(HttpResponse::Ok().json(entries))
}
