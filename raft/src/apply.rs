//! The state machine's transition function: `apply(state, command) -> response`. Pure: no
//! I/O, no clock (the command carries `at_ms`), no randomness, no hash-map iteration, so that
//! every replica that applies the same log reaches byte-identical state. Every command is
//! validated here and refused with a typed [`Refusal`]; no input can make it panic.

use std::net::Ipv4Addr;

use crate::command::limits;
use crate::command::Action;
use crate::command::Admission;
use crate::command::Command;
use crate::command::CommandResponse;
use crate::command::NodeRegistration;
use crate::command::ObservedOffsets;
use crate::command::Outcome;
use crate::command::Placed;
use crate::command::PlacementHints;
use crate::command::Refusal;
use crate::command::WorkstationRequest;
use crate::command::LOG_OFFSET_GAP_BYTES;
use crate::model::ApiKey;
use crate::model::ApiKeyId;
use crate::model::AuditEntry;
use crate::model::ClusterSettings;
use crate::model::DesiredProcess;
use crate::model::JoinToken;
use crate::model::Limit;
use crate::model::NetworkPolicy;
use crate::model::NodeId;
use crate::model::NodeRecord;
use crate::model::NodeState;
use crate::model::ProcessId;
use crate::model::Resources;
use crate::model::Roles;
use crate::model::StopSignal;
use crate::model::Tenant;
use crate::model::TenantId;
use crate::model::TokenId;
use crate::model::Workstation;
use crate::model::WorkstationId;
use crate::model::WorkstationSpec;
use crate::model::WorkstationState;
use crate::scheduler;
use crate::state::ClusterState;
use crate::state::AUDIT_LOG_ENTRIES_MAX;

/// Longest join token lifetime: 30 days.
pub const TOKEN_TTL_MS_MAX: u64 = 30 * 24 * 3600 * 1000;
/// Largest per-tenant workstation quota a setting may name.
pub const TENANT_WORKSTATIONS_MAX_MAX: u32 = 1_000_000;
/// Heartbeat grace bounds (1 s .. 1 h).
pub const HEARTBEAT_GRACE_MS_MIN: u64 = 1_000;
/// See [`HEARTBEAT_GRACE_MS_MIN`].
pub const HEARTBEAT_GRACE_MS_MAX: u64 = 3_600_000;

/// Applies one command to the state and answers it. Appends to the audit log.
///
/// Debug builds check [`ClusterState::check_invariants`] after every command (reservation
/// sums, no over-commit, workstation maximums, indexes equal to a rebuild): a command that
/// breaks one panics where it happened instead of surfacing later as a wrong placement. It
/// costs O(nodes + workstations + keys + tokens) per command, so release builds skip it.
pub fn apply(state: &mut ClusterState, command: &Command) -> CommandResponse {
    let response = apply_unchecked(state, command);
    debug_assert!(
        state.check_invariants().is_ok(),
        "{} broke a cluster state invariant: {:?}",
        command.action.name(),
        state.check_invariants()
    );
    response
}

/// [`apply`] without the debug invariant check.
fn apply_unchecked(state: &mut ClusterState, command: &Command) -> CommandResponse {
    let at_ms = command.at_ms;
    let actor = command.actor.as_str();
    match &command.action {
        Action::PlaceBatch { requests, hints } => {
            // Audited per workstation, so that a tenant sees its own creations.
            if requests.len() > limits::PLACE_BATCH_REQUESTS_MAX {
                let refusal = Refusal::invalid(
                    "requests",
                    format!("at most {} per batch", limits::PLACE_BATCH_REQUESTS_MAX),
                );
                let entry = Entry {
                    at_ms,
                    actor,
                    tenant: None,
                    action: "workstation.create",
                };
                audit_result(
                    state,
                    entry,
                    "batch".to_string(),
                    &Err::<(), _>(refusal.clone()),
                );
                return Err(refusal);
            }
            let mut answers = Vec::with_capacity(requests.len());
            for request in requests {
                let answer = create_workstation(state, at_ms, request, hints);
                let resource = match &answer {
                    Ok(placed) => placed.id.to_string(),
                    Err(_) => format!("tenant/{}", truncated(&request.tenant)),
                };
                let entry = Entry {
                    at_ms,
                    actor,
                    tenant: Some(truncated(&request.tenant).to_string()),
                    action: "workstation.create",
                };
                audit_result(state, entry, resource, &answer);
                answers.push(answer);
            }
            Ok(Outcome::Batch(answers))
        }
        Action::RecordAudit {
            tenant,
            action,
            resource,
            outcome,
        } => {
            let checked = check_record_audit(tenant, action, resource, outcome);
            match checked {
                Ok(()) => push_audit(
                    state,
                    AuditEntry {
                        seq: 0,
                        ts_ms: at_ms,
                        actor: truncated(actor).to_string(),
                        tenant: tenant.clone(),
                        action: action.clone(),
                        resource: resource.clone(),
                        outcome: outcome.clone(),
                    },
                ),
                Err(ref refusal) => {
                    let entry = Entry {
                        at_ms,
                        actor,
                        tenant: None,
                        action: "audit.record",
                    };
                    audit_result(
                        state,
                        entry,
                        "audit".to_string(),
                        &Err::<(), _>(refusal.clone()),
                    );
                }
            }
            checked.map(|()| Outcome::Done)
        }
        action => {
            // The tenant is read before the change: a deleted workstation is gone after it.
            let tenant = tenant_of(state, action);
            let (resource, response) = apply_one(state, at_ms, action);
            let entry = Entry {
                at_ms,
                actor,
                tenant,
                action: action.name(),
            };
            audit_result(state, entry, resource, &response);
            response
        }
    }
}

/// The tenant an action's audit entry belongs to: the owner of the workstation or process it
/// touches; `None` for cluster-level actions (nodes, tokens, keys), which only admins see.
fn tenant_of(state: &ClusterState, action: &Action) -> Option<TenantId> {
    let owner = |id: &WorkstationId| state.data.workstations.get(id).map(|ws| ws.tenant.clone());
    match action {
        Action::CreateWorkstation { request, .. } => Some(truncated(&request.tenant).to_string()),
        Action::CreateTenant { tenant } => Some(truncated(tenant).to_string()),
        Action::ResizeWorkstation { id, .. } | Action::DeleteWorkstation { id } => owner(id),
        Action::AddProcess { workstation, .. }
        | Action::RemoveProcess { workstation, .. }
        | Action::StopProcess { workstation, .. } => owner(workstation),
        _ => None,
    }
}

fn check_record_audit(
    tenant: &Option<TenantId>,
    action: &str,
    resource: &str,
    outcome: &str,
) -> Result<(), Refusal> {
    if let Some(tenant) = tenant {
        check_name("tenant", tenant, false)?;
    }
    for (field, value) in [
        ("action", action),
        ("resource", resource),
        ("outcome", outcome),
    ] {
        if value.is_empty() || value.len() > limits::AUDIT_FIELD_BYTES_MAX {
            return Err(Refusal::invalid(
                field,
                format!("must be 1..={} bytes", limits::AUDIT_FIELD_BYTES_MAX),
            ));
        }
        if value.chars().any(char::is_control) {
            return Err(Refusal::invalid(field, "contains control characters"));
        }
    }
    Ok(())
}

fn truncated(text: &str) -> &str {
    let mut end = text.len().min(limits::NAME_BYTES_MAX);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Who did what, when, on whose behalf: the fixed part of an audit entry.
struct Entry<'a> {
    at_ms: u64,
    actor: &'a str,
    tenant: Option<TenantId>,
    action: &'a str,
}

fn audit_result<T>(
    state: &mut ClusterState,
    entry: Entry<'_>,
    resource: String,
    response: &Result<T, Refusal>,
) {
    let outcome = match response {
        Ok(_) => "ok".to_string(),
        Err(refusal) => refusal.code().to_string(),
    };
    push_audit(
        state,
        AuditEntry {
            seq: 0,
            ts_ms: entry.at_ms,
            actor: truncated(entry.actor).to_string(),
            tenant: entry.tenant,
            action: entry.action.to_string(),
            resource,
            outcome,
        },
    );
}

/// Appends an entry with the next sequence number and compacts the log to
/// [`AUDIT_LOG_ENTRIES_MAX`] entries, oldest first.
fn push_audit(state: &mut ClusterState, mut entry: AuditEntry) {
    entry.seq = state.data.audit.back().map_or(0, |last| last.seq + 1);
    state.data.audit.push_back(entry);
    while state.data.audit.len() > AUDIT_LOG_ENTRIES_MAX {
        state.data.audit.pop_front();
    }
}

fn require_initialized(state: &ClusterState) -> Result<(), Refusal> {
    if state.is_initialized() {
        Ok(())
    } else {
        Err(Refusal::NotInitialized)
    }
}

/// Applies every action except `PlaceBatch`; returns the audited resource and the answer.
fn apply_one(state: &mut ClusterState, at_ms: u64, action: &Action) -> (String, CommandResponse) {
    match action {
        Action::InitCluster {
            cluster_id,
            settings,
        } => (
            format!("cluster/{}", truncated(cluster_id)),
            init_cluster(state, cluster_id, settings),
        ),
        Action::UpdateSettings {
            voter_target,
            heartbeat_grace_ms,
            tenant_workstations_max,
        } => (
            "cluster".to_string(),
            update_settings(
                state,
                *voter_target,
                *heartbeat_grace_ms,
                *tenant_workstations_max,
            ),
        ),
        Action::RegisterNode(registration) => {
            let response = register_node(state, at_ms, registration);
            let resource = match &response {
                Ok(Outcome::NodeRegistered { node_id, .. }) => format!("node/{node_id}"),
                _ => "node".to_string(),
            };
            (resource, response)
        }
        Action::MarkNodeReady { node, hints } => (
            format!("node/{node}"),
            mark_node_ready(state, at_ms, *node, hints),
        ),
        Action::UpdateNodeInfo {
            node,
            api_addr,
            capacity,
            reserve,
        } => (
            format!("node/{node}"),
            update_node_info(state, *node, api_addr, capacity, reserve, None),
        ),
        Action::UpdateNodeCapacity {
            node,
            api_addr,
            capacity,
            reserve,
            workstations_max,
        } => (
            format!("node/{node}"),
            update_node_info(
                state,
                *node,
                api_addr,
                capacity,
                reserve,
                Some(*workstations_max),
            ),
        ),
        Action::DrainNode { node } => (format!("node/{node}"), drain_node(state, at_ms, *node)),
        Action::DrainStep {
            node,
            hints,
            observed,
        } => (
            format!("node/{node}"),
            drain_step(state, at_ms, *node, hints, observed),
        ),
        Action::RemoveNode { node } => (format!("node/{node}"), remove_node(state, at_ms, *node)),
        Action::MarkNodesDown {
            nodes,
            hints,
            observed,
        } => {
            let resource = if nodes.len() == 1 {
                format!("node/{}", nodes[0])
            } else {
                format!("nodes/{}", nodes.len())
            };
            (
                resource,
                mark_nodes_down(state, at_ms, nodes, hints, observed),
            )
        }
        Action::CreateToken {
            secret_sha256,
            prefix,
            roles,
            ttl_ms,
            uses_max,
        } => {
            let request = TokenRequest {
                secret_sha256,
                prefix,
                roles: *roles,
                ttl_ms: *ttl_ms,
                uses_max: *uses_max,
            };
            let response = create_token(state, at_ms, &request);
            let resource = match &response {
                Ok(Outcome::TokenCreated { id, .. }) => id.to_string(),
                _ => "token".to_string(),
            };
            (resource, response)
        }
        Action::ConsumeToken { secret_sha256 } => {
            let response = require_initialized(state)
                .and_then(|()| consume_token(state, at_ms, secret_sha256))
                .map(|(id, roles)| Outcome::TokenConsumed { id, roles });
            let resource = match &response {
                Ok(Outcome::TokenConsumed { id, .. }) => id.to_string(),
                _ => "token".to_string(),
            };
            (resource, response)
        }
        Action::RevokeToken { id } => (id.to_string(), revoke_token(state, *id)),
        Action::CreateTenant { tenant } => (
            format!("tenant/{}", truncated(tenant)),
            create_tenant(state, at_ms, tenant).map(|()| Outcome::Done),
        ),
        Action::CreateApiKey {
            secret_sha256,
            prefix,
            tenant,
            admin,
        } => {
            let response = create_api_key(state, at_ms, secret_sha256, prefix, tenant, *admin);
            let resource = match &response {
                Ok(Outcome::ApiKeyCreated { id }) => id.to_string(),
                _ => "key".to_string(),
            };
            (resource, response)
        }
        Action::RevokeApiKey { id } => (id.to_string(), revoke_api_key(state, *id)),
        Action::CreateWorkstation { request, hints } => {
            let response = create_workstation(state, at_ms, request, hints);
            let resource = match &response {
                Ok(placed) => placed.id.to_string(),
                Err(_) => format!("tenant/{}", truncated(&request.tenant)),
            };
            (resource, response.map(Outcome::WorkstationPlaced))
        }
        Action::PlaceBatch { .. } => (
            "batch".to_string(),
            Err(Refusal::invalid(
                "action",
                "PlaceBatch is applied by apply()",
            )),
        ),
        Action::RecordAudit { .. } => (
            "audit".to_string(),
            Err(Refusal::invalid(
                "action",
                "RecordAudit is applied by apply()",
            )),
        ),
        Action::ResizeWorkstation {
            id,
            reservation,
            limit,
        } => (
            id.to_string(),
            resize_workstation(state, *id, reservation, limit),
        ),
        Action::DeleteWorkstation { id } => (id.to_string(), delete_workstation(state, *id)),
        Action::AddProcess {
            workstation,
            argv,
            env,
            cwd,
            restart,
        } => {
            let response = add_process(state, at_ms, *workstation, argv, env, cwd, *restart);
            let resource = match &response {
                Ok(Outcome::ProcessAdded { id }) => format!("{workstation}/{id}"),
                _ => workstation.to_string(),
            };
            (resource, response)
        }
        Action::RemoveProcess {
            workstation,
            process,
        } => (
            format!("{workstation}/{process}"),
            remove_process(state, *workstation, *process),
        ),
        Action::RaiseLogFloor {
            workstation,
            generation,
            floor,
        } => (
            workstation.to_string(),
            raise_log_floor(state, *workstation, *generation, *floor),
        ),
        Action::StopProcess {
            workstation,
            process,
            signal,
        } => (
            format!("{workstation}/{process}"),
            stop_process(state, *workstation, *process, *signal),
        ),
    }
}

// ----- validation -----

fn check_name(field: &str, value: &str, allow_empty: bool) -> Result<(), Refusal> {
    if value.is_empty() && !allow_empty {
        return Err(Refusal::invalid(field, "must not be empty"));
    }
    if value.len() > limits::NAME_BYTES_MAX {
        return Err(Refusal::invalid(
            field,
            format!("longer than {} bytes", limits::NAME_BYTES_MAX),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(Refusal::invalid(field, "contains control characters"));
    }
    Ok(())
}

fn check_addr(field: &str, value: &str) -> Result<(), Refusal> {
    if value.is_empty() || value.len() > limits::ADDR_BYTES_MAX {
        return Err(Refusal::invalid(
            field,
            format!("must be 1..={} bytes", limits::ADDR_BYTES_MAX),
        ));
    }
    Ok(())
}

fn check_sha256_hex(field: &str, value: &str) -> Result<(), Refusal> {
    if value.len() != 64
        || !value
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return Err(Refusal::invalid(field, "must be 64 lowercase hex digits"));
    }
    Ok(())
}

fn check_settings(settings: &ClusterSettings) -> Result<(), Refusal> {
    if !matches!(settings.voter_target, 1 | 3 | 5) {
        return Err(Refusal::invalid("voter_target", "must be 1, 3 or 5"));
    }
    if !(HEARTBEAT_GRACE_MS_MIN..=HEARTBEAT_GRACE_MS_MAX).contains(&settings.heartbeat_grace_ms) {
        return Err(Refusal::invalid(
            "heartbeat_grace_ms",
            format!("must be {HEARTBEAT_GRACE_MS_MIN}..={HEARTBEAT_GRACE_MS_MAX}"),
        ));
    }
    if !(1..=TENANT_WORKSTATIONS_MAX_MAX).contains(&settings.tenant_workstations_max) {
        return Err(Refusal::invalid(
            "tenant_workstations_max",
            format!("must be 1..={TENANT_WORKSTATIONS_MAX_MAX}"),
        ));
    }
    if !(8..=30).contains(&settings.overlay_prefix_len) {
        return Err(Refusal::invalid("overlay_prefix_len", "must be 8..=30"));
    }
    let host_mask = u32::MAX >> settings.overlay_prefix_len;
    if u32::from(settings.overlay_addr) & host_mask != 0 {
        return Err(Refusal::invalid(
            "overlay_addr",
            "must be the network address of the range (host bits zero)",
        ));
    }
    Ok(())
}

fn check_spec(spec: &WorkstationSpec) -> Result<(), Refusal> {
    check_reservation(&spec.reservation, &spec.limit)?;
    if let NetworkPolicy::Allowlist(domains) = &spec.network {
        if domains.len() > limits::ALLOWLIST_DOMAINS_MAX {
            return Err(Refusal::invalid(
                "network",
                format!("at most {} domains", limits::ALLOWLIST_DOMAINS_MAX),
            ));
        }
        for domain in domains {
            check_addr("network", domain)?;
        }
    }
    Ok(())
}

fn check_reservation(reservation: &Resources, limit: &Limit) -> Result<(), Refusal> {
    if reservation.cpu_millis == 0 {
        return Err(Refusal::invalid("cpu_millis", "must be positive"));
    }
    if reservation.memory_bytes == 0 {
        return Err(Refusal::invalid("memory_bytes", "must be positive"));
    }
    if limit.cpu_limit_millis < reservation.cpu_millis {
        return Err(Refusal::invalid(
            "cpu_limit_millis",
            "must be at least the reservation",
        ));
    }
    if limit.memory_limit_bytes < reservation.memory_bytes {
        return Err(Refusal::invalid(
            "memory_limit_bytes",
            "must be at least the reservation",
        ));
    }
    Ok(())
}

// ----- cluster and settings -----

fn init_cluster(
    state: &mut ClusterState,
    cluster_id: &str,
    settings: &ClusterSettings,
) -> CommandResponse {
    if state.is_initialized() {
        return Err(Refusal::AlreadyInitialized);
    }
    check_name("cluster_id", cluster_id, false)?;
    check_settings(settings)?;
    state.data.cluster_id = Some(cluster_id.to_string());
    state.data.settings = settings.clone();
    // Node ids start at 1: the bootstrapping node starts Raft as node 1 before this command
    // registers it.
    state.data.next_node_id = state.data.next_node_id.max(1);
    Ok(Outcome::Done)
}

fn update_settings(
    state: &mut ClusterState,
    voter_target: Option<u8>,
    heartbeat_grace_ms: Option<u64>,
    tenant_workstations_max: Option<u32>,
) -> CommandResponse {
    require_initialized(state)?;
    let mut settings = state.data.settings.clone();
    if let Some(target) = voter_target {
        settings.voter_target = target;
    }
    if let Some(max) = tenant_workstations_max {
        settings.tenant_workstations_max = max;
    }
    if let Some(grace) = heartbeat_grace_ms {
        settings.heartbeat_grace_ms = grace;
    }
    check_settings(&settings)?;
    state.data.settings = settings;
    Ok(Outcome::Done)
}

// ----- nodes -----

fn allocate_mesh_addr(state: &mut ClusterState) -> Result<Ipv4Addr, Refusal> {
    let settings = &state.data.settings;
    let hosts = (1u64 << (32 - u32::from(settings.overlay_prefix_len))).saturating_sub(2);
    let host = u64::from(state.data.next_mesh_host) + 1;
    if host > hosts {
        return Err(Refusal::conflict("the overlay range is exhausted"));
    }
    let addr = u32::from(settings.overlay_addr) | host as u32;
    state.data.next_mesh_host = host as u32;
    Ok(Ipv4Addr::from(addr))
}

fn register_node(
    state: &mut ClusterState,
    at_ms: u64,
    registration: &NodeRegistration,
) -> CommandResponse {
    require_initialized(state)?;
    check_addr("wg_public_key", &registration.wg_public_key)?;
    check_addr("endpoint", &registration.endpoint)?;
    if let Some(api_addr) = &registration.api_addr {
        check_addr("api_addr", api_addr)?;
    }
    if let Some(existing) = state.node_by_wg_key(&registration.wg_public_key) {
        // A retry of a registration whose answer was lost: same node, no token use. A removed
        // identity (left, or still being drained away) stays out for good.
        if is_removed(existing) {
            return Err(Refusal::NodeRemoved { node: existing.id });
        }
        return Ok(Outcome::NodeRegistered {
            node_id: existing.id,
            mesh_addr: existing.mesh_addr,
            existing: true,
        });
    }
    if !registration.capacity.fits(&registration.reserve) {
        return Err(Refusal::invalid("reserve", "larger than the capacity"));
    }
    let roles = match &registration.admission {
        Admission::Bootstrap => {
            if !state.data.nodes.is_empty() {
                return Err(Refusal::AlreadyInitialized);
            }
            registration.roles
        }
        Admission::Token { secret_sha256 } => {
            // Validate everything else first, so that a refused registration uses no token.
            check_token(state, at_ms, secret_sha256)?;
            registration.roles
        }
    };
    if !roles.server && !roles.worker {
        return Err(Refusal::invalid("roles", "a node needs at least one role"));
    }
    let mesh_addr = allocate_mesh_addr(state)?;
    let roles = match &registration.admission {
        Admission::Bootstrap => roles,
        Admission::Token { secret_sha256 } => {
            let (_, token_roles) = consume_token(state, at_ms, secret_sha256)?;
            token_roles
        }
    };
    let node_id = state.data.next_node_id.max(1);
    state.data.next_node_id = node_id.saturating_add(1);
    let record = NodeRecord {
        id: node_id,
        wg_public_key: registration.wg_public_key.clone(),
        endpoint: registration.endpoint.clone(),
        mesh_addr,
        rpc_port: registration.rpc_port,
        api_addr: registration.api_addr.clone(),
        roles,
        capacity: registration.capacity,
        reserve: registration.reserve,
        reserved: Resources::default(),
        state: NodeState::Ready,
        removing: false,
        registered_ms: at_ms,
        state_changed_ms: at_ms,
        // The node states it with its capacity once it runs (`UpdateNodeCapacity`).
        workstations_max: None,
    };
    state
        .index
        .node_by_wg_key
        .insert(record.wg_public_key.clone(), node_id);
    state.data.nodes.insert(node_id, record);
    // Insert into the placeable index through the usual path.
    state.update_node(node_id, |_| ());
    // A new ready worker is room: workstations waiting for one are placed now.
    place_pending(state, &PlacementHints::default());
    Ok(Outcome::NodeRegistered {
        node_id,
        mesh_addr,
        existing: false,
    })
}

fn update_node_info(
    state: &mut ClusterState,
    node_id: NodeId,
    api_addr: &Option<String>,
    capacity: &Resources,
    reserve: &Resources,
    workstations_max: Option<u32>,
) -> CommandResponse {
    if api_addr
        .as_ref()
        .is_some_and(|addr| addr.len() > limits::ADDR_BYTES_MAX)
    {
        return Err(Refusal::invalid("api_addr", "too long"));
    }
    if workstations_max.is_some_and(|max| !(1..=limits::NODE_WORKSTATIONS_MAX).contains(&max)) {
        return Err(Refusal::invalid(
            "workstations_max",
            format!("must be 1 to {}", limits::NODE_WORKSTATIONS_MAX),
        ));
    }
    let Some(node) = state.nodes.get(&node_id) else {
        return Err(Refusal::not_found("node", node_id));
    };
    if is_removed(node) {
        return Err(Refusal::NodeRemoved { node: node_id });
    }
    if !capacity.saturating_sub(reserve).fits(&node.reserved) {
        return Err(Refusal::conflict(format!(
            "node {node_id}'s placed reservations {:?} would not fit the new capacity",
            node.reserved
        )));
    }
    let hosted = state.hosted_count(node_id);
    if let Some(max) = workstations_max.filter(|max| hosted > u64::from(*max)) {
        return Err(Refusal::conflict(format!(
            "node {node_id} hosts {hosted} workstations, more than the new maximum of {max}"
        )));
    }
    state.update_node(node_id, |node| {
        node.api_addr = api_addr.clone();
        node.capacity = *capacity;
        node.reserve = *reserve;
        if workstations_max.is_some() {
            node.workstations_max = workstations_max;
        }
    });
    // A joined node commits its capacity here (it registers with none): more room.
    place_pending(state, &PlacementHints::default());
    Ok(Outcome::Done)
}

fn set_node_state(state: &mut ClusterState, at_ms: u64, node: NodeId, new: NodeState) {
    state.update_node(node, |record| {
        if record.state != new {
            record.state = new;
            record.state_changed_ms = at_ms;
        }
    });
}

/// Gives a workstation the next generation on another node (or leaves it pending), moving its
/// log floor above anything the previous generation can have written.
fn replace_workstation(
    state: &mut ClusterState,
    ws_id: WorkstationId,
    hints: &PlacementHints,
    observed: &ObservedOffsets,
) -> Result<Placed, Refusal> {
    let Some(ws) = state.data.workstations.get(&ws_id) else {
        return Err(Refusal::not_found("workstation", ws_id));
    };
    let old_node = ws.node;
    let tenant = ws.tenant.clone();
    let reservation = ws.spec.reservation;
    let chosen = scheduler::choose_node(state, &tenant, &reservation, old_node, hints);
    state.detach(ws_id);
    let reported = observed.log_offset_next.get(&ws_id).copied().unwrap_or(0);
    let Some(ws) = state.data.workstations.get_mut(&ws_id) else {
        return Err(Refusal::not_found("workstation", ws_id));
    };
    ws.generation = ws.generation.saturating_add(1);
    ws.log_offset_floor = ws
        .log_offset_floor
        .max(reported)
        .saturating_add(LOG_OFFSET_GAP_BYTES);
    let generation = ws.generation;
    match chosen {
        Ok(node) => {
            ws.state = WorkstationState::Placed;
            state.attach(ws_id, node);
            Ok(Placed {
                id: ws_id,
                node,
                generation,
            })
        }
        Err(refusal) => {
            ws.state = WorkstationState::Pending;
            Err(refusal)
        }
    }
}

/// Places pending workstations (id order) where they now fit. Called by every change that
/// can make room (a node ready, registered or grown; a workstation deleted or shrunk), so a
/// workstation stays pending only while no ready worker has room for it. Costs O(nodes) when
/// nothing is pending (the common case), O(workstations) otherwise.
fn place_pending(
    state: &mut ClusterState,
    hints: &PlacementHints,
) -> (Vec<Placed>, Vec<WorkstationId>) {
    let n_placed: usize = state
        .index
        .node_workstations
        .values()
        .map(std::collections::BTreeSet::len)
        .sum();
    if n_placed >= state.data.workstations.len() {
        return (Vec::new(), Vec::new());
    }
    let pending: Vec<WorkstationId> = state
        .data
        .workstations
        .values()
        .filter(|ws| ws.state == WorkstationState::Pending)
        .map(|ws| ws.id)
        .collect();
    let mut placed = Vec::new();
    let mut still_pending = Vec::new();
    for ws_id in pending {
        let Some(ws) = state.data.workstations.get(&ws_id) else {
            continue;
        };
        let tenant = ws.tenant.clone();
        let reservation = ws.spec.reservation;
        match scheduler::choose_node(state, &tenant, &reservation, None, hints) {
            Ok(node) => {
                if let Some(ws) = state.data.workstations.get_mut(&ws_id) {
                    ws.state = WorkstationState::Placed;
                    let generation = ws.generation;
                    state.attach(ws_id, node);
                    placed.push(Placed {
                        id: ws_id,
                        node,
                        generation,
                    });
                }
            }
            Err(_) => still_pending.push(ws_id),
        }
    }
    (placed, still_pending)
}

/// True for a node an admin removed: `left`, or still being drained away (`removing`, in any
/// state). Such a node never becomes ready again; see [`crate::drain::is_removed`].
fn is_removed(record: &NodeRecord) -> bool {
    record.removing || record.state == NodeState::Left
}

fn existing_node(state: &ClusterState, node: NodeId) -> Result<&NodeRecord, Refusal> {
    state
        .data
        .nodes
        .get(&node)
        .ok_or_else(|| Refusal::not_found("node", node))
}

fn mark_node_ready(
    state: &mut ClusterState,
    at_ms: u64,
    node: NodeId,
    hints: &PlacementHints,
) -> CommandResponse {
    let record = existing_node(state, node)?;
    // A removed node never becomes ready again, whatever state it was removed in (draining,
    // or down: a node removed while it was silent that comes back with its old data).
    if is_removed(record) {
        return Err(Refusal::NodeRemoved { node });
    }
    set_node_state(state, at_ms, node, NodeState::Ready);
    let (replaced, pending) = place_pending(state, hints);
    Ok(Outcome::NodesChanged {
        nodes: vec![(node, NodeState::Ready)],
        replaced,
        pending,
    })
}

fn drain_node(state: &mut ClusterState, at_ms: u64, node: NodeId) -> CommandResponse {
    let record = existing_node(state, node)?;
    if record.state == NodeState::Left {
        return Err(Refusal::NodeRemoved { node });
    }
    match record.state {
        NodeState::Ready | NodeState::Draining => {}
        other => {
            return Err(Refusal::conflict(format!(
                "node {node} is {other}, only a ready node can be drained"
            )))
        }
    }
    // Decided here, against committed state, so that two concurrent drains cannot both pass.
    let other_ready_workers = state
        .data
        .nodes
        .values()
        .filter(|other| other.id != node && other.roles.worker && other.state == NodeState::Ready)
        .count();
    if record.roles.worker && other_ready_workers == 0 {
        return Err(Refusal::conflict(format!(
            "node-{node} is the cluster's only ready worker: there is nowhere to move its \
             workstations"
        )));
    }
    set_node_state(state, at_ms, node, NodeState::Draining);
    Ok(Outcome::NodesChanged {
        nodes: vec![(node, NodeState::Draining)],
        replaced: Vec::new(),
        pending: Vec::new(),
    })
}

fn drain_step(
    state: &mut ClusterState,
    at_ms: u64,
    node: NodeId,
    hints: &PlacementHints,
    observed: &ObservedOffsets,
) -> CommandResponse {
    let record = existing_node(state, node)?;
    if record.state != NodeState::Draining {
        return Err(Refusal::conflict(format!("node {node} is not draining")));
    }
    let removing = record.removing;
    let next = state.workstations_on(node).next().map(|ws| ws.id);
    let mut replaced = Vec::new();
    if let Some(ws_id) = next {
        // Only move it if it fits elsewhere: a draining workstation keeps running where it is
        // rather than becoming pending.
        let Some(ws) = state.data.workstations.get(&ws_id) else {
            return Err(Refusal::not_found("workstation", ws_id));
        };
        let (tenant, reservation) = (ws.tenant.clone(), ws.spec.reservation);
        scheduler::choose_node(state, &tenant, &reservation, Some(node), hints)?;
        replaced.push(replace_workstation(state, ws_id, hints, observed)?);
    }
    let mut nodes = Vec::new();
    if removing && state.workstations_on(node).next().is_none() {
        set_node_state(state, at_ms, node, NodeState::Left);
        nodes.push((node, NodeState::Left));
    }
    Ok(Outcome::NodesChanged {
        nodes,
        replaced,
        pending: Vec::new(),
    })
}

fn remove_node(state: &mut ClusterState, at_ms: u64, node: NodeId) -> CommandResponse {
    let record = existing_node(state, node)?;
    if record.state == NodeState::Left {
        return Ok(Outcome::NodesChanged {
            nodes: Vec::new(),
            replaced: Vec::new(),
            pending: Vec::new(),
        });
    }
    // Decided here, against committed state, so that two concurrent removals cannot both pass.
    let other_servers = state
        .data
        .nodes
        .values()
        .filter(|other| other.id != node && other.roles.server && other.state != NodeState::Left)
        .count();
    if record.roles.server && other_servers == 0 {
        return Err(Refusal::conflict(format!(
            "node-{node} is the cluster's only server: removing it would leave no cluster"
        )));
    }
    state.update_node(node, |record| record.removing = true);
    let new_state = if state.workstations_on(node).next().is_none() {
        NodeState::Left
    } else {
        NodeState::Draining
    };
    set_node_state(state, at_ms, node, new_state);
    Ok(Outcome::NodesChanged {
        nodes: vec![(node, new_state)],
        replaced: Vec::new(),
        pending: Vec::new(),
    })
}

fn mark_nodes_down(
    state: &mut ClusterState,
    at_ms: u64,
    nodes: &[NodeId],
    hints: &PlacementHints,
    observed: &ObservedOffsets,
) -> CommandResponse {
    require_initialized(state)?;
    if nodes.len() > limits::NODES_PER_COMMAND_MAX {
        return Err(Refusal::invalid("nodes", "too many nodes"));
    }
    // First mark every listed node down, so that none of them receives a re-placement.
    let mut changed = Vec::new();
    for &node in nodes {
        let Some(record) = state.data.nodes.get(&node) else {
            continue;
        };
        if matches!(record.state, NodeState::Ready | NodeState::Draining) {
            set_node_state(state, at_ms, node, NodeState::Down);
            changed.push((node, NodeState::Down));
        }
    }
    let mut replaced = Vec::new();
    let mut pending = Vec::new();
    for (node, _) in &changed {
        let on_node: Vec<WorkstationId> = state.workstations_on(*node).map(|ws| ws.id).collect();
        for ws_id in on_node {
            match replace_workstation(state, ws_id, hints, observed) {
                Ok(placed) => replaced.push(placed),
                Err(_) => pending.push(ws_id),
            }
        }
    }
    // A node that was being removed when it went silent is empty now (its workstations were
    // re-placed, or wait pending for room elsewhere): it has left. Without this it stayed
    // `down` with `removing` set for good, and came back `ready` when it heartbeated again.
    for (node, new_state) in &mut changed {
        let removing = state
            .data
            .nodes
            .get(node)
            .is_some_and(|record| record.removing);
        if removing && state.workstations_on(*node).next().is_none() {
            set_node_state(state, at_ms, *node, NodeState::Left);
            *new_state = NodeState::Left;
        }
    }
    Ok(Outcome::NodesChanged {
        nodes: changed,
        replaced,
        pending,
    })
}

// ----- tokens, tenants, keys -----

fn check_token(state: &ClusterState, at_ms: u64, secret_sha256: &str) -> Result<TokenId, Refusal> {
    let rejected = |reason: &str| Refusal::TokenRejected {
        reason: reason.to_string(),
    };
    let Some(id) = state.index.token_by_hash.get(secret_sha256) else {
        return Err(rejected("unknown"));
    };
    let Some(token) = state.data.tokens.get(id) else {
        return Err(rejected("unknown"));
    };
    if token.revoked {
        return Err(rejected("revoked"));
    }
    if at_ms >= token.expires_ms {
        return Err(rejected("expired"));
    }
    if token.uses_left == 0 {
        return Err(rejected("exhausted"));
    }
    Ok(*id)
}

fn consume_token(
    state: &mut ClusterState,
    at_ms: u64,
    secret_sha256: &str,
) -> Result<(TokenId, Roles), Refusal> {
    let id = check_token(state, at_ms, secret_sha256)?;
    let Some(token) = state.data.tokens.get_mut(&id) else {
        return Err(Refusal::not_found("token", id));
    };
    token.uses_left -= 1;
    Ok((id, token.roles))
}

/// The fields of `CreateToken`.
struct TokenRequest<'a> {
    secret_sha256: &'a str,
    prefix: &'a str,
    roles: Roles,
    ttl_ms: u64,
    uses_max: u32,
}

fn create_token(
    state: &mut ClusterState,
    at_ms: u64,
    request: &TokenRequest<'_>,
) -> CommandResponse {
    let TokenRequest {
        secret_sha256,
        prefix,
        roles,
        ttl_ms,
        uses_max,
    } = *request;
    require_initialized(state)?;
    check_sha256_hex("secret_sha256", secret_sha256)?;
    check_name("prefix", prefix, false)?;
    if ttl_ms == 0 || ttl_ms > TOKEN_TTL_MS_MAX {
        return Err(Refusal::invalid("ttl", "must be between 1 ms and 30 days"));
    }
    if uses_max == 0 || uses_max > limits::TOKEN_USES_MAX {
        return Err(Refusal::invalid(
            "uses",
            format!("must be 1..={}", limits::TOKEN_USES_MAX),
        ));
    }
    if !roles.server && !roles.worker {
        return Err(Refusal::invalid(
            "role",
            "a token must grant at least one role",
        ));
    }
    if state.index.token_by_hash.contains_key(secret_sha256) {
        return Err(Refusal::conflict("a token with this secret exists"));
    }
    if state.data.tokens.len() >= limits::TOKENS_MAX {
        // Refuse before pruning, so that a refusal changes nothing.
        let n_live = state
            .data
            .tokens
            .values()
            .filter(|token| !token.is_dead(at_ms))
            .count();
        if n_live >= limits::TOKENS_MAX {
            return Err(Refusal::LimitReached {
                what: "live join tokens".to_string(),
                max: limits::TOKENS_MAX as u64,
                reason: "revoke some, or wait until they expire".to_string(),
            });
        }
        prune_dead_tokens(state, at_ms);
    }
    state.data.next_token_id = state.data.next_token_id.saturating_add(1);
    let id = TokenId(state.data.next_token_id);
    let expires_ms = at_ms.saturating_add(ttl_ms);
    state.data.tokens.insert(
        id,
        JoinToken {
            id,
            secret_sha256: secret_sha256.to_string(),
            prefix: prefix.to_string(),
            roles,
            created_ms: at_ms,
            expires_ms,
            uses_left: uses_max,
            uses_max,
            revoked: false,
        },
    );
    state
        .index
        .token_by_hash
        .insert(secret_sha256.to_string(), id);
    Ok(Outcome::TokenCreated { id, expires_ms })
}

/// Drops every token that can never admit a node again (revoked, expired at `at_ms`, or used
/// up), so that they stop counting against [`limits::TOKENS_MAX`]. Their ids are not reused.
fn prune_dead_tokens(state: &mut ClusterState, at_ms: u64) {
    let dead: Vec<TokenId> = state
        .data
        .tokens
        .values()
        .filter(|token| token.is_dead(at_ms))
        .map(|token| token.id)
        .collect();
    for id in dead {
        if let Some(token) = state.data.tokens.remove(&id) {
            state.index.token_by_hash.remove(&token.secret_sha256);
        }
    }
}

fn revoke_token(state: &mut ClusterState, id: TokenId) -> CommandResponse {
    let token = state
        .data
        .tokens
        .get_mut(&id)
        .ok_or_else(|| Refusal::not_found("token", id))?;
    token.revoked = true;
    Ok(Outcome::Done)
}

fn create_tenant(state: &mut ClusterState, at_ms: u64, tenant: &str) -> Result<(), Refusal> {
    require_initialized(state)?;
    check_name("tenant", tenant, false)?;
    if !state.data.tenants.contains_key(tenant) {
        state.data.tenants.insert(
            tenant.to_string(),
            Tenant {
                id: tenant.to_string(),
                created_ms: at_ms,
            },
        );
    }
    Ok(())
}

fn create_api_key(
    state: &mut ClusterState,
    at_ms: u64,
    secret_sha256: &str,
    prefix: &str,
    tenant: &str,
    admin: bool,
) -> CommandResponse {
    require_initialized(state)?;
    check_sha256_hex("secret_sha256", secret_sha256)?;
    check_name("prefix", prefix, false)?;
    check_name("tenant", tenant, false)?;
    if state.index.api_key_by_hash.contains_key(secret_sha256) {
        return Err(Refusal::conflict("a key with this secret exists"));
    }
    if state.data.api_keys.len() >= limits::API_KEYS_MAX {
        let n_active = state
            .data
            .api_keys
            .values()
            .filter(|key| !key.revoked)
            .count();
        if n_active >= limits::API_KEYS_MAX {
            return Err(Refusal::LimitReached {
                what: "API keys".to_string(),
                max: limits::API_KEYS_MAX as u64,
                reason: "revoke keys that are no longer used".to_string(),
            });
        }
        // Revoked keys authenticate nothing: dropping them changes no answer but `keys ls`.
        let revoked: Vec<ApiKeyId> = state
            .data
            .api_keys
            .values()
            .filter(|key| key.revoked)
            .map(|key| key.id)
            .collect();
        for id in revoked {
            if let Some(key) = state.data.api_keys.remove(&id) {
                state.index.api_key_by_hash.remove(&key.secret_sha256);
            }
        }
    }
    create_tenant(state, at_ms, tenant)?;
    state.data.next_api_key_id = state.data.next_api_key_id.saturating_add(1);
    let id = ApiKeyId(state.data.next_api_key_id);
    state.data.api_keys.insert(
        id,
        ApiKey {
            id,
            secret_sha256: secret_sha256.to_string(),
            prefix: prefix.to_string(),
            tenant: tenant.to_string(),
            admin,
            revoked: false,
            created_ms: at_ms,
        },
    );
    state
        .index
        .api_key_by_hash
        .insert(secret_sha256.to_string(), id);
    Ok(Outcome::ApiKeyCreated { id })
}

fn revoke_api_key(state: &mut ClusterState, id: ApiKeyId) -> CommandResponse {
    let key = state
        .data
        .api_keys
        .get_mut(&id)
        .ok_or_else(|| Refusal::not_found("key", id))?;
    key.revoked = true;
    Ok(Outcome::Done)
}

// ----- workstations and processes -----

fn create_workstation(
    state: &mut ClusterState,
    at_ms: u64,
    request: &WorkstationRequest,
    hints: &PlacementHints,
) -> Result<Placed, Refusal> {
    require_initialized(state)?;
    check_name("tenant", &request.tenant, false)?;
    check_name("name", &request.name, true)?;
    check_spec(&request.spec)?;
    let quota = state.data.settings.tenant_workstations_max;
    if state.tenant_workstation_count(&request.tenant) >= quota {
        return Err(Refusal::LimitReached {
            what: format!("workstations for tenant `{}`", truncated(&request.tenant)),
            max: u64::from(quota),
            reason: "delete one first, or ask an admin to raise tenant_workstations_max"
                .to_string(),
        });
    }
    let node = scheduler::choose_node(
        state,
        &request.tenant,
        &request.spec.reservation,
        None,
        hints,
    )?;
    create_tenant(state, at_ms, &request.tenant)?;
    state.data.next_workstation_id = state.data.next_workstation_id.saturating_add(1);
    let id = WorkstationId(state.data.next_workstation_id);
    let name = if request.name.is_empty() {
        id.to_string()
    } else {
        request.name.clone()
    };
    state.data.workstations.insert(
        id,
        Workstation {
            id,
            tenant: request.tenant.clone(),
            name,
            spec: request.spec.clone(),
            node: None,
            generation: 1,
            state: WorkstationState::Placed,
            processes: Default::default(),
            next_process_id: 0,
            log_offset_floor: 0,
            created_ms: at_ms,
        },
    );
    *state
        .index
        .tenant_workstations
        .entry(request.tenant.clone())
        .or_default() += 1;
    state.attach(id, node);
    Ok(Placed {
        id,
        node,
        generation: 1,
    })
}

fn resize_workstation(
    state: &mut ClusterState,
    id: WorkstationId,
    reservation: &Resources,
    limit: &Limit,
) -> CommandResponse {
    check_reservation(reservation, limit)?;
    let ws = state
        .data
        .workstations
        .get(&id)
        .ok_or_else(|| Refusal::not_found("workstation", id))?;
    let current = ws.spec.reservation;
    match ws.node {
        Some(node) => {
            scheduler::resize_fits(state, node, &current, reservation)?;
            state.update_node(node, |record| {
                record.reserved = record
                    .reserved
                    .saturating_sub(&current)
                    .saturating_add(reservation);
            });
        }
        None => {
            // Pending: only refuse what can never fit anywhere.
            if let refusal @ Refusal::Unsatisfiable { .. } =
                scheduler::refusal_for(state, reservation)
            {
                return Err(refusal);
            }
        }
    }
    if let Some(ws) = state.data.workstations.get_mut(&id) {
        ws.spec.reservation = *reservation;
        ws.spec.limit = *limit;
    }
    // A smaller reservation frees room.
    place_pending(state, &PlacementHints::default());
    Ok(Outcome::Done)
}

fn delete_workstation(state: &mut ClusterState, id: WorkstationId) -> CommandResponse {
    if !state.data.workstations.contains_key(&id) {
        return Err(Refusal::not_found("workstation", id));
    }
    state.detach(id);
    if let Some(ws) = state.data.workstations.remove(&id) {
        if let Some(count) = state.index.tenant_workstations.get_mut(&ws.tenant) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                state.index.tenant_workstations.remove(&ws.tenant);
            }
        }
    }
    // Its reservation is free again: a workstation waiting for room may fit now.
    place_pending(state, &PlacementHints::default());
    Ok(Outcome::Done)
}

fn add_process(
    state: &mut ClusterState,
    at_ms: u64,
    workstation: WorkstationId,
    argv: &[String],
    env: &std::collections::BTreeMap<String, String>,
    cwd: &Option<String>,
    restart: crate::model::RestartPolicy,
) -> CommandResponse {
    if argv.is_empty() {
        return Err(Refusal::invalid("argv", "must not be empty"));
    }
    if argv.len() > limits::ARGV_ARGS_MAX {
        return Err(Refusal::invalid(
            "argv",
            format!("at most {} arguments", limits::ARGV_ARGS_MAX),
        ));
    }
    if env.len() > limits::ENV_VARS_MAX {
        return Err(Refusal::invalid(
            "env",
            format!("at most {} variables", limits::ENV_VARS_MAX),
        ));
    }
    let spec_bytes: usize = argv.iter().map(String::len).sum::<usize>()
        + env.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
        + cwd.as_ref().map_or(0, String::len);
    if spec_bytes > limits::PROCESS_SPEC_BYTES_MAX {
        return Err(Refusal::invalid(
            "argv",
            format!(
                "argv, env and cwd exceed {} bytes",
                limits::PROCESS_SPEC_BYTES_MAX
            ),
        ));
    }
    if argv.iter().any(|arg| arg.contains('\0'))
        || env.keys().any(|k| k.is_empty() || k.contains(['=', '\0']))
    {
        return Err(Refusal::invalid(
            "env",
            "empty name, '=' or NUL in argv or env",
        ));
    }
    let ws = workstation_mut(state, workstation)?;
    if ws.processes.len() >= limits::PROCESSES_PER_WORKSTATION_MAX {
        return Err(Refusal::conflict(format!(
            "a workstation holds at most {} processes",
            limits::PROCESSES_PER_WORKSTATION_MAX
        )));
    }
    ws.next_process_id = ws.next_process_id.saturating_add(1);
    let id = ProcessId(ws.next_process_id);
    // The current placement starts it, or, without a node, the next one: a workstation that
    // lost its node already holds the generation its next placement gets.
    let first_generation = ws.generation;
    ws.processes.insert(
        id,
        DesiredProcess {
            id,
            argv: argv.to_vec(),
            env: env.clone(),
            cwd: cwd.clone(),
            restart,
            created_ms: at_ms,
            first_generation,
            stopped: None,
        },
    );
    Ok(Outcome::ProcessAdded { id })
}

/// The workstation `id`, or the refusal that names it as not found.
fn workstation_mut(
    state: &mut ClusterState,
    id: WorkstationId,
) -> Result<&mut Workstation, Refusal> {
    state
        .data
        .workstations
        .get_mut(&id)
        .ok_or_else(|| Refusal::not_found("workstation", id))
}

/// Marks a process stopped for good; see `Action::StopProcess`.
fn stop_process(
    state: &mut ClusterState,
    workstation: WorkstationId,
    process: ProcessId,
    signal: StopSignal,
) -> CommandResponse {
    let ws = workstation_mut(state, workstation)?;
    let spec = ws
        .processes
        .get_mut(&process)
        .ok_or_else(|| Refusal::not_found("process", process))?;
    // A KILL after a TERM (the owner lost patience) is kept; a TERM never softens a KILL.
    spec.stopped = if spec.stopped == Some(StopSignal::Kill) || signal == StopSignal::Kill {
        Some(StopSignal::Kill)
    } else {
        Some(StopSignal::Term)
    };
    Ok(Outcome::Done)
}

fn remove_process(
    state: &mut ClusterState,
    workstation: WorkstationId,
    process: ProcessId,
) -> CommandResponse {
    let ws = workstation_mut(state, workstation)?;
    ws.processes
        .remove(&process)
        .ok_or_else(|| Refusal::not_found("process", process))?;
    Ok(Outcome::Done)
}

/// Raises a workstation's log floor to `floor` (never lowers it) for the generation the
/// hosting node runs: a later re-placement then starts above it. Refused without a change for
/// an unknown workstation or a generation that is not the current one (the node's report is
/// about a placement that has moved on).
fn raise_log_floor(
    state: &mut ClusterState,
    id: WorkstationId,
    generation: u64,
    floor: u64,
) -> CommandResponse {
    require_initialized(state)?;
    let Some(ws) = state.data.workstations.get_mut(&id) else {
        return Err(Refusal::not_found("workstation", id));
    };
    if ws.generation != generation {
        return Err(Refusal::conflict(format!(
            "workstation {id} is at generation {}, not {generation}",
            ws.generation
        )));
    }
    ws.log_offset_floor = ws.log_offset_floor.max(floor);
    Ok(Outcome::Done)
}

#[cfg(test)]
mod invariant_check_tests {
    use super::*;
    use crate::model::NodeState;
    use crate::state::test_support::cluster_of;
    use crate::state::test_support::TestNode;

    /// Debug builds check the state's invariants after every command: a state whose node
    /// claims a reservation no workstation accounts for makes the next command panic.
    #[cfg(debug_assertions)]
    #[test]
    #[should_panic(expected = "audit.record broke a cluster state invariant")]
    fn a_command_leaving_a_broken_invariant_panics_in_debug_builds() {
        let mut state = cluster_of(&[TestNode {
            cpu_millis: 1000,
            memory_bytes: 1 << 30,
            reserved: Resources::new(100, 0),
            state: NodeState::Ready,
            worker: true,
            workstations_max: None,
        }]);
        let _ = apply(
            &mut state,
            &Command::new(
                1,
                "t",
                Action::RecordAudit {
                    tenant: None,
                    action: "process.kill".to_string(),
                    resource: "ws-1/p-1".to_string(),
                    outcome: "ok".to_string(),
                },
            ),
        );
    }
}
