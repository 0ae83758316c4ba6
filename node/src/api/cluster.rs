//! `/v1/cluster`, `/v1/nodes`, `/v1/tokens`, `/v1/keys` and `/v1/audit`.

use actix_web::{web, HttpResponse};

use super::auth::{Admin, Caller};
use super::body::JsonBody;
use super::error::ApiError;
use crate::agent::model::{secret_prefix, sha256_hex, TokenRecord};
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
        mesh_addr: agent.raft.read(|state| {
            state
                .nodes
                .get(&agent.raft.id())
                .map(|n| n.mesh_addr.to_string())
        }),
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

/// The nodes of the cluster: this node as it sees itself (live usage), the others as the
/// committed node list and the leader's soft state describe them.
pub fn nodes(agent: &Agent) -> Vec<NodeInfo> {
    use shoal_raft::model::NodeState as RaftState;
    let own_id = agent.raft.id();
    // Live usage is soft state, known on the leader from heartbeats. Read before the applied
    // state, so that the two locks are never held together.
    let live_usage: std::collections::BTreeMap<u64, Resources> =
        agent.raft.with_soft_state(|soft| {
            soft.iter()
                .filter_map(|(id, live)| {
                    let heartbeat = live.last.as_ref()?;
                    Some((
                        *id,
                        Resources {
                            cpu_millis: heartbeat.used.cpu_millis,
                            memory_bytes: heartbeat.used.memory_bytes,
                        },
                    ))
                })
                .collect()
        });
    let others: Vec<NodeInfo> = agent.raft.read(|state| {
        state
            .nodes
            .values()
            .filter(|node| node.id != own_id)
            .map(|node| NodeInfo {
                id: format!("node-{}", node.id),
                role: node.roles.to_string(),
                state: match node.state {
                    RaftState::Ready => NodeState::Ready,
                    RaftState::Draining => NodeState::Draining,
                    RaftState::Down => NodeState::Down,
                    RaftState::Left => NodeState::Left,
                },
                mesh_addr: Some(node.mesh_addr.to_string()),
                api_addr: node.api_addr.clone(),
                endpoint: Some(node.endpoint.clone()),
                capacity: Resources {
                    cpu_millis: node.allocatable().cpu_millis,
                    memory_bytes: node.allocatable().memory_bytes,
                },
                reserved: Resources {
                    cpu_millis: node.reserved.cpu_millis,
                    memory_bytes: node.reserved.memory_bytes,
                },
                // Live usage is soft state: known on the leader, from heartbeats.
                used: live_usage.get(&node.id).copied().unwrap_or_default(),
                last_heartbeat_unix_ms: None,
                n_workstations: state.workstations_on(node.id).count() as u64,
                isolation: String::new(),
            })
            .collect()
    });
    let mut all = vec![this_node(agent)];
    all.extend(others);
    all
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
    let leader = status.leader.map(|id| format!("node-{id}"));
    Ok(HttpResponse::Ok().json(ClusterInfo {
        cluster_id: agent
            .raft
            .read(|state| state.cluster_id.clone())
            .unwrap_or_else(|| agent.store.read(|model| model.cluster_id.clone())),
        leader,
        term: status.term.max(1),
        servers: status
            .voters
            .iter()
            .map(|id| format!("node-{id}"))
            .collect(),
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
    // Server by default: a server node beyond the voter target stays a Raft learner, which
    // still receives the whole state (keys, nodes) that its API serves. A worker-only node is
    // not a Raft member and in this build has no replicated state to serve.
    let role = request
        .role
        .clone()
        .unwrap_or_else(|| "server,worker".to_string());
    let (server, worker) = parse_roles(&role).map_err(|err| ApiError::field("role", err))?;
    let now = clock::now_unix_ms();
    // A mesh join token names this member (its WireGuard key and UDP endpoint); the cluster
    // keeps only the SHA-256 of its secret, in Raft.
    let token = shoal_mesh::JoinToken::generate(
        agent.mesh_public_key,
        vec![agent.config.listen.to_string()],
    );
    let outcome = agent
        .propose(
            &caller.prefix,
            shoal_raft::Action::CreateToken {
                secret_sha256: crate::agent::admission::token_secret_sha256(&token.secret),
                roles: shoal_raft::model::Roles { server, worker },
                ttl_ms,
                uses_max: request
                    .uses
                    .unwrap_or(shoal_raft::command::limits::TOKEN_USES_MAX),
            },
        )
        .await?;
    let shoal_raft::Outcome::TokenCreated { id, expires_ms } = outcome else {
        return Err(ApiError::Internal(format!("unexpected answer {outcome:?}")));
    };
    let secret = token.to_string();
    let record = TokenRecord {
        id: id.to_string(),
        prefix: format!("{}.{}", shoal_mesh::token::TOKEN_PREFIX, token.id),
        sha256: crate::agent::admission::token_secret_sha256(&token.secret),
        role,
        created_unix_ms: now,
        expires_unix_ms: expires_ms,
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
    let tokens: Vec<TokenInfo> = agent.raft.read(|state| {
        state
            .tokens
            .values()
            .map(|token| TokenInfo {
                id: token.id.to_string(),
                prefix: agent.store.read(|model| {
                    model
                        .tokens
                        .get(&token.id.to_string())
                        .map(|record| record.prefix.clone())
                        .unwrap_or_default()
                }),
                role: token.roles.to_string(),
                created_unix_ms: token.created_ms,
                expires_unix_ms: token.expires_ms,
                uses_max: Some(token.uses_max),
                uses: token.uses_max.saturating_sub(token.uses_left),
                revoked: token.revoked,
            })
            .collect()
    });
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
    let token_id: shoal_raft::model::TokenId =
        id.parse().map_err(|_| ApiError::not_found("token", &id))?;
    agent
        .propose(
            &caller.prefix,
            shoal_raft::Action::RevokeToken { id: token_id },
        )
        .await?;
    agent.store.write(|model| {
        if let Some(token) = model.tokens.get_mut(id.as_str()) {
            token.revoked = true;
        }
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
    let outcome = agent
        .propose(
            &caller.prefix,
            shoal_raft::Action::CreateApiKey {
                secret_sha256: sha256_hex(&secret),
                prefix: secret_prefix(&secret),
                tenant: tenant.to_string(),
                admin: request.admin,
            },
        )
        .await?;
    let shoal_raft::Outcome::ApiKeyCreated { id } = outcome else {
        return Err(ApiError::Internal(format!("unexpected answer {outcome:?}")));
    };
    let info = KeyInfo {
        id: id.to_string(),
        prefix: secret_prefix(&secret),
        tenant: tenant.to_string(),
        admin: request.admin,
        created_unix_ms: now,
        revoked: false,
    };
    let resource = format!("key/{}", info.id);
    agent.store.write(|model| {
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
    let keys: Vec<KeyInfo> = agent.raft.read(|state| {
        state
            .api_keys
            .values()
            .map(|key| KeyInfo {
                id: key.id.to_string(),
                prefix: key.prefix.clone(),
                tenant: key.tenant.clone(),
                admin: key.admin,
                created_unix_ms: key.created_ms,
                revoked: key.revoked,
            })
            .collect()
    });
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
    let key_id: shoal_raft::model::ApiKeyId =
        id.parse().map_err(|_| ApiError::not_found("key", &id))?;
    agent
        .propose(
            &caller.prefix,
            shoal_raft::Action::RevokeApiKey { id: key_id },
        )
        .await?;
    agent.store.write(|model| {
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
