//! The cluster as its users see it: the cluster and its nodes, join tokens, API keys and the
//! audit log. Admin-only operations check the caller here, whatever adapter called.

use super::{Caller, ServiceError};
use crate::agent::model::{secret_prefix, sha256_hex};
use crate::agent::Agent;
use crate::api_types::{
    AuditEntry, AuditQuery, ClusterInfo, CreateKeyRequest, CreateTokenRequest, KeyCreated, KeyInfo,
    NodeInfo, NodeState, Pool, PoolResource, Resources, TokenCreated, TokenInfo,
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
    // State, reservations and placements are Raft's (a drained node shows `draining` here
    // too); capacity and usage are this node's live view.
    let own_id = agent.raft.id();
    let (state, reserved, n_workstations, workstations_max) = agent.raft.read(|state| {
        let record = state.nodes.get(&own_id);
        (
            record.map_or(NodeState::Ready, |node| node_state(node.state)),
            record.map_or((0, 0), |node| {
                (node.reserved.cpu_millis, node.reserved.memory_bytes)
            }),
            state.workstations_on(own_id).count() as u64,
            record.and_then(|node| node.workstations_max),
        )
    });
    let (cpu_reserved, mem_reserved) = reserved;
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
        state,
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
        workstations_max,
        isolation: format!(
            "runs: {}; workstations: {}",
            agent.run_context.host.isolation().label(),
            agent.host.isolation()
        ),
    }
}

fn node_state(state: shoal_raft::model::NodeState) -> NodeState {
    use shoal_raft::model::NodeState as RaftState;
    match state {
        RaftState::Ready => NodeState::Ready,
        RaftState::Draining => NodeState::Draining,
        RaftState::Down => NodeState::Down,
        RaftState::Left => NodeState::Left,
    }
}

/// The nodes of the cluster: this node as it sees itself (live usage), the others as the
/// committed node list and the leader's soft state describe them. Live usage is soft state,
/// known on the leader from heartbeats: another node asks the leader for it (cached for at most
/// a second, bounded wait), so every node shows the same pool.
pub async fn nodes(agent: &Agent) -> Vec<NodeInfo> {
    let own_id = agent.raft.id();
    let live_usage: std::collections::BTreeMap<u64, Resources> = super::runs::live_usage(agent)
        .await
        .into_iter()
        .map(|(id, used)| {
            (
                id,
                Resources {
                    cpu_millis: used.cpu_millis,
                    memory_bytes: used.memory_bytes,
                },
            )
        })
        .collect();
    let others: Vec<NodeInfo> = agent.raft.read(|state| {
        state
            .nodes
            .values()
            .filter(|node| node.id != own_id)
            .map(|node| NodeInfo {
                id: format!("node-{}", node.id),
                role: node.roles.to_string(),
                state: node_state(node.state),
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
                used: live_usage.get(&node.id).copied().unwrap_or_default(),
                last_heartbeat_unix_ms: None,
                n_workstations: state.workstations_on(node.id).count() as u64,
                workstations_max: node.workstations_max,
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
pub async fn cluster(agent: &Agent) -> ClusterInfo {
    let nodes = nodes(agent).await;
    let status = agent.raft.status();
    // This build's API names nodes by the single-server store's id; Raft knows only itself.
    let leader = status.leader.map(|id| format!("node-{id}"));
    ClusterInfo {
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
    }
}

/// The nodes with role, state, addresses, capacity, reserved, used and last heartbeat.
pub async fn list_nodes(agent: &Agent, caller: &Caller) -> Result<Vec<NodeInfo>, ServiceError> {
    // Node addresses, endpoints and per-node capacities are the operator's; a tenant sees the
    // pool totals in `cluster`.
    caller.require_admin()?;
    Ok(nodes(agent).await)
}

/// One node.
pub async fn show_node(agent: &Agent, caller: &Caller, id: &str) -> Result<NodeInfo, ServiceError> {
    caller.require_admin()?;
    nodes(agent)
        .await
        .into_iter()
        .find(|node| node.id == id)
        .ok_or_else(|| ServiceError::not_found("node", id))
}

/// Drains a node (admin): it takes no new placements, and the leader's drain loop moves its
/// workstations to other nodes one by one (`agent::drain`). Answers 200 with the node, now
/// `draining`; its `n_workstations` goes to 0 as they move. Unknown nodes (404) and the only
/// ready worker (409) are refused by the state machine.
pub async fn drain_node(
    agent: &Agent,
    caller: &Caller,
    id: &str,
) -> Result<NodeInfo, ServiceError> {
    change_node(agent, caller, id, |node| shoal_raft::Action::DrainNode {
        node,
    })
    .await
}

/// Removes a node (admin): `left` at once if it hosts nothing, otherwise it drains first (the
/// leader's drain loop) and becomes `left` when empty. Unknown nodes (404) and the last
/// server of a cluster (409) are refused by the state machine.
pub async fn remove_node(
    agent: &Agent,
    caller: &Caller,
    id: &str,
) -> Result<NodeInfo, ServiceError> {
    change_node(agent, caller, id, |node| shoal_raft::Action::RemoveNode {
        node,
    })
    .await
}

/// An admin's change to node `id`: commits `action(node)` and answers the node as it is then.
async fn change_node(
    agent: &Agent,
    caller: &Caller,
    id: &str,
    action: impl FnOnce(u64) -> shoal_raft::Action,
) -> Result<NodeInfo, ServiceError> {
    caller.require_admin()?;
    let node = raft_node_id(id)?;
    agent.propose_for(caller, action(node)).await?;
    node_answer(agent, id).await
}

/// `node-N` (as the API names nodes) or `N` → the Raft node id; anything else is 404.
fn raft_node_id(id: &str) -> Result<u64, ServiceError> {
    id.strip_prefix("node-")
        .unwrap_or(id)
        .parse()
        .map_err(|_| ServiceError::not_found("node", id))
}

/// The node as `/v1/nodes/{id}` shows it, after a change.
async fn node_answer(agent: &Agent, id: &str) -> Result<NodeInfo, ServiceError> {
    let wanted = raft_node_id(id).map(|n| format!("node-{n}"))?;
    nodes(agent)
        .await
        .into_iter()
        .find(|node| node.id == wanted)
        .ok_or_else(|| ServiceError::not_found("node", id))
}

/// Creates a join token (admin); its text is returned once.
pub async fn create_token(
    agent: &Agent,
    caller: &Caller,
    request: CreateTokenRequest,
) -> Result<TokenCreated, ServiceError> {
    caller.require_admin()?;
    let ttl_ms = request.ttl_ms.unwrap_or(TOKEN_TTL_MS_DEFAULT);
    if ttl_ms == 0 || ttl_ms > TOKEN_TTL_MS_MAX {
        return Err(ServiceError::field(
            "ttl_ms",
            format!("must be between 1 and {TOKEN_TTL_MS_MAX}"),
        ));
    }
    if request.uses == Some(0) {
        return Err(ServiceError::field("uses", "must be at least 1"));
    }
    // Server by default: a server node beyond the voter target stays a Raft learner, which
    // still receives the whole state (keys, nodes) that its API serves. A worker-only node is
    // not a Raft member and in this build has no replicated state to serve.
    let role = request
        .role
        .clone()
        .unwrap_or_else(|| "server,worker".to_string());
    let (server, worker) = parse_roles(&role).map_err(|err| ServiceError::field("role", err))?;
    // A mesh join token names this member (its WireGuard key and UDP endpoint); the cluster
    // keeps only the SHA-256 of its secret and its public head (for `token ls`), in Raft.
    let token = shoal_mesh::JoinToken::generate(
        agent.mesh_public_key,
        vec![agent.config.listen.to_string()],
    );
    let prefix = format!("{}.{}", shoal_mesh::token::TOKEN_PREFIX, token.id);
    let uses_max = request
        .uses
        .unwrap_or(shoal_raft::command::limits::TOKEN_USES_MAX);
    let outcome = agent
        .propose_for(
            caller,
            shoal_raft::Action::CreateToken {
                secret_sha256: crate::agent::admission::token_secret_sha256(&token.secret),
                prefix: prefix.clone(),
                roles: shoal_raft::model::Roles { server, worker },
                ttl_ms,
                uses_max,
            },
        )
        .await?;
    let shoal_raft::Outcome::TokenCreated { id, expires_ms } = outcome else {
        return Err(ServiceError::Internal(format!(
            "unexpected answer {outcome:?}"
        )));
    };
    let info = TokenInfo {
        id: id.to_string(),
        prefix,
        role: shoal_raft::model::Roles { server, worker }.to_string(),
        created_unix_ms: expires_ms.saturating_sub(ttl_ms),
        expires_unix_ms: expires_ms,
        uses_max: Some(uses_max),
        uses: 0,
        revoked: false,
    };
    Ok(TokenCreated {
        info,
        token: token.to_string(),
    })
}

/// Lists join tokens (admin), never their text.
pub fn list_tokens(agent: &Agent, caller: &Caller) -> Result<Vec<TokenInfo>, ServiceError> {
    caller.require_admin()?;
    let tokens: Vec<TokenInfo> = agent.raft.read(|state| {
        state
            .tokens
            .values()
            .map(|token| TokenInfo {
                id: token.id.to_string(),
                prefix: token.prefix.clone(),
                role: token.roles.to_string(),
                created_unix_ms: token.created_ms,
                expires_unix_ms: token.expires_ms,
                uses_max: Some(token.uses_max),
                uses: token.uses_max.saturating_sub(token.uses_left),
                revoked: token.revoked,
            })
            .collect()
    });
    Ok(tokens)
}

/// Revokes a join token (admin).
pub async fn revoke_token(agent: &Agent, caller: &Caller, id: &str) -> Result<(), ServiceError> {
    caller.require_admin()?;
    let token_id: shoal_raft::model::TokenId = id
        .parse()
        .map_err(|_| ServiceError::not_found("token", id))?;
    agent
        .propose_for(caller, shoal_raft::Action::RevokeToken { id: token_id })
        .await?;
    Ok(())
}

/// Creates an API key (admin); the full key is returned once.
pub async fn create_key(
    agent: &Agent,
    caller: &Caller,
    request: CreateKeyRequest,
) -> Result<KeyCreated, ServiceError> {
    caller.require_admin()?;
    let tenant = request.tenant.trim();
    let valid = !tenant.is_empty()
        && tenant.len() <= 64
        && tenant
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if !valid {
        return Err(ServiceError::field(
            "tenant",
            "must be 1-64 characters of [A-Za-z0-9_.-]",
        ));
    }
    let now = clock::now_unix_ms();
    let secret = format!("shoal_{}", agent.random.hex(32));
    let outcome = agent
        .propose_for(
            caller,
            shoal_raft::Action::CreateApiKey {
                secret_sha256: sha256_hex(&secret),
                prefix: secret_prefix(&secret),
                tenant: tenant.to_string(),
                admin: request.admin,
            },
        )
        .await?;
    let shoal_raft::Outcome::ApiKeyCreated { id } = outcome else {
        return Err(ServiceError::Internal(format!(
            "unexpected answer {outcome:?}"
        )));
    };
    let info = KeyInfo {
        id: id.to_string(),
        prefix: secret_prefix(&secret),
        tenant: tenant.to_string(),
        admin: request.admin,
        created_unix_ms: now,
        revoked: false,
    };
    Ok(KeyCreated { info, key: secret })
}

/// Lists API keys (admin), never the keys themselves.
pub fn list_keys(agent: &Agent, caller: &Caller) -> Result<Vec<KeyInfo>, ServiceError> {
    caller.require_admin()?;
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
    Ok(keys)
}

/// Revokes an API key (admin). A key cannot revoke itself (that would lock its holder out by
/// accident).
pub async fn revoke_key(agent: &Agent, caller: &Caller, id: &str) -> Result<(), ServiceError> {
    caller.require_admin()?;
    let key_id: shoal_raft::model::ApiKeyId =
        id.parse().map_err(|_| ServiceError::not_found("key", id))?;
    // Compared as ids, not as text: `key-5` and `5` name the same key.
    if caller.key_id.parse::<shoal_raft::model::ApiKeyId>().ok() == Some(key_id) {
        return Err(ServiceError::Conflict(
            "a key cannot revoke itself".to_string(),
        ));
    }
    agent
        .propose_for(caller, shoal_raft::Action::RevokeApiKey { id: key_id })
        .await?;
    Ok(())
}

/// The audit log, from committed Raft state (every node answers the same): an admin sees all
/// entries, a tenant only those about its own workstations and processes. At most
/// `limit` (default and max 1,000) of the newest entries at or after `since_unix_ms`, oldest
/// first. The cluster keeps the newest 50,000 entries (`AUDIT_LOG_ENTRIES_MAX`).
pub fn audit(
    agent: &Agent,
    caller: &Caller,
    query: &AuditQuery,
) -> Result<Vec<AuditEntry>, ServiceError> {
    let since = query.since_unix_ms.unwrap_or(0);
    let limit = match query.limit {
        None => AUDIT_PAGE_MAX,
        Some(limit) if (1..=AUDIT_PAGE_MAX).contains(&limit) => limit,
        Some(_) => {
            return Err(ServiceError::field(
                "limit",
                format!("must be between 1 and {AUDIT_PAGE_MAX}"),
            ))
        }
    } as usize;
    let entries: Vec<AuditEntry> = agent.raft.read(|state| {
        state
            .audit_page(since, limit, |tenant| {
                caller.admin || tenant == Some(caller.tenant.as_str())
            })
            .into_iter()
            .map(|entry| AuditEntry {
                seq: entry.seq,
                time_unix_ms: entry.ts_ms,
                actor: entry.actor,
                // Empty for cluster-level entries (nodes, tokens, keys).
                tenant: entry.tenant.unwrap_or_default(),
                action: entry.action,
                resource: entry.resource,
                outcome: entry.outcome,
            })
            .collect()
    });
    Ok(entries)
}
