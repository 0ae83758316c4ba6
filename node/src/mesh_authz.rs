//! Who may send what over the mesh: the pure authorization of node-to-node messages by the
//! sender's identity. The mesh has already bound every packet to a WireGuard key (and each
//! mesh address to its key); this module maps that key to the committed node and its role and
//! decides whether such a node may send the message at all. No I/O and no clock: the driver
//! (`mesh_rpc::NodeRpcHandler`) reads the applied state and passes what matters.
//!
//! | message | who may send it |
//! | --- | --- |
//! | Raft `AppendEntries`, `InstallSnapshot` | a server whose claimed id is its own id; a sender this node's state does not know yet (a node behind on the log must still hear a newer leader) |
//! | Raft vote request | the same |
//! | Raft `ElectNow` (`TimeoutNow`) | a voter of this node's current membership, never an unknown sender |
//! | node-scoped writes: `UpdateNodeInfo`, `UpdateNodeCapacity`, `MarkNodeReady`, `DrainStep` (a node leaving moves its own workstations) | the node they are about |
//! | `RaiseLogFloor` | the node its workstation is placed on |
//! | leader-only writes: `InitCluster`, `MarkNodesDown`, `PlaceBatch`, `UpdateSettings` | nobody (the leader proposes them itself, never through a peer) |
//! | every other write (made for an API caller, or an admission) | any node the state knows; see [`caller_requirement`] for the key it must carry |
//!
//! A write made for an API caller carries the caller's key (`mesh_rpc::ForwardRequest`): the
//! leader authenticates it against the committed key hashes and checks what
//! [`caller_requirement`] asks of it (an admin key, or a key of the resource's tenant), so a
//! member cannot make such a write without holding such a key. The check is made when the
//! leader takes the write, not when it applies it: a key revoked in between is still obeyed
//! for that one write.

use std::collections::BTreeSet;

use shoal_raft::model::{NodeId, NodeState, WorkstationId};
use shoal_raft::network::RaftRpcKind;
use shoal_raft::Action;

/// The committed facts about a message's sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SenderView {
    /// Its node id.
    pub id: NodeId,
    /// Whether its committed roles include `server` (may be a Raft member).
    pub server: bool,
    /// Its committed state (a `left` node is not refused here: it stays a Raft member until
    /// its removal commits, and learns of it from the state machine's refusals).
    pub state: NodeState,
}

/// Why a message was refused; the text names the sender and the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct MeshRefusal(pub String);

/// Whether a Raft message of `kind`, claiming to come from `claimed`, may come from `sender`
/// (`None`: its key is not in this node's applied node list), given this node's current
/// voters.
pub fn authorize_raft(
    sender: Option<&SenderView>,
    kind: RaftRpcKind,
    claimed: Option<NodeId>,
    voters: &BTreeSet<NodeId>,
) -> Result<(), MeshRefusal> {
    let Some(sender) = sender else {
        return match kind {
            // A node replaying an old log, or one that just joined, does not know a newer
            // member yet: it must still hear it to catch up. The mesh only delivers packets
            // from peers whose keys the cluster gave it.
            RaftRpcKind::Replication | RaftRpcKind::Vote => Ok(()),
            RaftRpcKind::ElectNow => Err(MeshRefusal(
                "an unknown node may not tell this node to start an election".to_string(),
            )),
        };
    };
    if !sender.server {
        return Err(MeshRefusal(format!(
            "node {} is not a server: it may not send Raft messages",
            sender.id
        )));
    }
    if let Some(claimed) = claimed {
        if claimed != sender.id {
            return Err(MeshRefusal(format!(
                "node {} sent a Raft message in the name of node {claimed}",
                sender.id
            )));
        }
    }
    if kind == RaftRpcKind::ElectNow && !voters.contains(&sender.id) {
        return Err(MeshRefusal(format!(
            "node {} is not a voter: it may not tell this node to start an election",
            sender.id
        )));
    }
    Ok(())
}

/// Whether a write of `action` forwarded by `sender` may be proposed. `placed_on` answers
/// which node a workstation is placed on in the applied state.
pub fn authorize_write(
    sender: Option<&SenderView>,
    action: &Action,
    placed_on: impl Fn(WorkstationId) -> Option<NodeId>,
) -> Result<(), MeshRefusal> {
    let Some(sender) = sender else {
        return Err(MeshRefusal(
            "a node this cluster does not know may not write".to_string(),
        ));
    };
    let about_itself = |node: NodeId, what: &str| {
        if node == sender.id {
            Ok(())
        } else {
            Err(MeshRefusal(format!(
                "node {} may not {what} for node {node}: a node speaks only about itself",
                sender.id
            )))
        }
    };
    match action {
        Action::UpdateNodeInfo { node, .. } | Action::UpdateNodeCapacity { node, .. } => {
            about_itself(*node, "state capacity")
        }
        Action::MarkNodeReady { node, .. } => about_itself(*node, "report ready"),
        Action::RaiseLogFloor { workstation, .. } => match placed_on(*workstation) {
            Some(node) => about_itself(node, "raise the log floor"),
            None => Err(MeshRefusal(format!(
                "node {} may not raise the log floor of {workstation}, which is placed on no node",
                sender.id
            ))),
        },
        // A node that leaves (SIGTERM) moves its own workstations away step by step.
        Action::DrainStep { node, .. } => about_itself(*node, "move workstations away"),
        Action::InitCluster { .. }
        | Action::MarkNodesDown { .. }
        | Action::PlaceBatch { .. }
        | Action::UpdateSettings { .. } => Err(MeshRefusal(format!(
            "node {} may not forward a leader-only write",
            sender.id
        ))),
        _ => Ok(()),
    }
}

/// What a write asks of the API key it is made for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallerRequirement {
    /// None: a node's own write (node-scoped, leader-only or an admission), checked above.
    None,
    /// An admin key.
    Admin,
    /// A key of this tenant or an admin key; `None` when the resource does not exist (the
    /// state machine refuses the write; any valid key may learn that).
    Tenant(Option<String>),
}

/// What `action`, forwarded by `sender`, asks of the API key it is made for. `workstation_of`
/// answers whose a workstation is and which node it is placed on, in the applied state.
pub fn caller_requirement(
    sender: Option<&SenderView>,
    action: &Action,
    workstation_of: impl Fn(WorkstationId) -> Option<(String, Option<NodeId>)>,
) -> CallerRequirement {
    let tenant_of = |ws| workstation_of(ws).map(|(tenant, _)| tenant);
    match action {
        // The node hosting a workstation starts, stops and undoes its processes for the callers
        // other nodes relay to it (they do not relay their keys); it runs them anyway.
        Action::AddProcess { workstation, .. }
        | Action::RemoveProcess { workstation, .. }
        | Action::StopProcess { workstation, .. }
            if sender.is_some_and(|sender| {
                workstation_of(*workstation).and_then(|(_, node)| node) == Some(sender.id)
            }) =>
        {
            CallerRequirement::None
        }
        Action::CreateWorkstation { request, .. } => {
            CallerRequirement::Tenant(Some(request.tenant.clone()))
        }
        Action::ResizeWorkstation { id, .. } | Action::DeleteWorkstation { id } => {
            CallerRequirement::Tenant(tenant_of(*id))
        }
        Action::AddProcess { workstation, .. }
        | Action::RemoveProcess { workstation, .. }
        | Action::StopProcess { workstation, .. } => {
            CallerRequirement::Tenant(tenant_of(*workstation))
        }
        Action::RecordAudit {
            tenant: Some(tenant),
            ..
        } => CallerRequirement::Tenant(Some(tenant.clone())),
        // A node audits what it refused itself (`mesh.*`); anything else about the cluster is
        // an admin's.
        Action::RecordAudit {
            tenant: None,
            action,
            ..
        } if action.starts_with("mesh.") => CallerRequirement::None,
        // A node that leaves drains itself.
        Action::DrainNode { node } if sender.is_some_and(|sender| sender.id == *node) => {
            CallerRequirement::None
        }
        Action::RecordAudit { tenant: None, .. }
        | Action::DrainNode { .. }
        | Action::RemoveNode { .. }
        | Action::CreateToken { .. }
        | Action::RevokeToken { .. }
        | Action::CreateTenant { .. }
        | Action::CreateApiKey { .. }
        | Action::RevokeApiKey { .. } => CallerRequirement::Admin,
        _ => CallerRequirement::None,
    }
}

/// The committed facts about the API key a write carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyView {
    /// Its display prefix (named as the actor in the audit log).
    pub prefix: String,
    /// Its tenant.
    pub tenant: String,
    /// Whether it is an admin key.
    pub admin: bool,
}

/// The hash under which the state keeps an API key.
pub fn key_hash(key: &str) -> String {
    shoal_raft::command::sha256_hex(key)
}

/// Whether `key` (the live key the write's credential hashes to, if any) meets
/// `requirement`; on success, the key's prefix to record as the write's actor (`None` when the
/// write needs no key).
pub fn authorize_caller(
    requirement: &CallerRequirement,
    key: Option<&KeyView>,
) -> Result<Option<String>, MeshRefusal> {
    if *requirement == CallerRequirement::None {
        return Ok(None);
    }
    let Some(key) = key else {
        return Err(MeshRefusal(
            "a write made for an API caller needs that caller's valid, unrevoked key".to_string(),
        ));
    };
    let allowed = match requirement {
        CallerRequirement::None => true,
        CallerRequirement::Admin => key.admin,
        CallerRequirement::Tenant(Some(tenant)) => key.admin || key.tenant == *tenant,
        CallerRequirement::Tenant(None) => true,
    };
    if allowed {
        Ok(Some(key.prefix.clone()))
    } else {
        Err(MeshRefusal(format!(
            "key {} (tenant {}) may not make this write",
            key.prefix, key.tenant
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_raft::command::PlacementHints;
    use shoal_raft::model::Resources;

    fn server(id: NodeId) -> SenderView {
        SenderView {
            id,
            server: true,
            state: NodeState::Ready,
        }
    }

    fn worker(id: NodeId) -> SenderView {
        SenderView {
            id,
            server: false,
            state: NodeState::Ready,
        }
    }

    #[test]
    fn writes_for_api_callers_need_a_key_that_may_make_them() {
        let admin = KeyView {
            prefix: "shoal_admin".to_string(),
            tenant: "admin".to_string(),
            admin: true,
        };
        let alpha = KeyView {
            prefix: "shoal_alpha".to_string(),
            tenant: "alpha".to_string(),
            admin: false,
        };
        let mint = Action::CreateApiKey {
            secret_sha256: "00".to_string(),
            prefix: "p".to_string(),
            tenant: "admin".to_string(),
            admin: true,
        };
        let delete = |ws| Action::DeleteWorkstation {
            id: WorkstationId(ws),
        };
        // ws-1 is alpha's on node 1, ws-2 beta's on node 4 (the sender), ws-3 does not exist.
        let workstation_of = |ws: WorkstationId| match ws.0 {
            1 => Some(("alpha".to_string(), Some(1))),
            2 => Some(("beta".to_string(), Some(4))),
            _ => None,
        };
        let add = |ws| Action::AddProcess {
            workstation: WorkstationId(ws),
            argv: vec!["true".to_string()],
            env: Default::default(),
            cwd: None,
            restart: shoal_raft::model::RestartPolicy::Never,
        };
        let drain_self = Action::DrainNode { node: 4 };
        let drain_other = Action::DrainNode { node: 1 };
        let refused_audit = Action::RecordAudit {
            tenant: None,
            action: "mesh.raft.refused".to_string(),
            resource: "node-4".to_string(),
            outcome: "x".to_string(),
        };
        let node = worker(4);
        // (the write, the key it carries, the actor recorded or a refusal)
        type Case<'a> = (Action, Option<&'a KeyView>, Result<Option<&'a str>, ()>);
        let cases: Vec<Case> = vec![
            (mint.clone(), None, Err(())),
            (mint.clone(), Some(&alpha), Err(())),
            (mint, Some(&admin), Ok(Some("shoal_admin"))),
            (delete(1), None, Err(())),
            (delete(1), Some(&alpha), Ok(Some("shoal_alpha"))),
            (delete(2), Some(&alpha), Err(())),
            (delete(2), Some(&admin), Ok(Some("shoal_admin"))),
            (delete(3), Some(&alpha), Ok(Some("shoal_alpha"))),
            (drain_self, None, Ok(None)),
            (drain_other.clone(), None, Err(())),
            (drain_other, Some(&alpha), Err(())),
            (refused_audit, None, Ok(None)),
            // The host of ws-2 changes its processes without a key; not those of ws-1.
            (add(2), None, Ok(None)),
            (add(1), None, Err(())),
            (add(1), Some(&alpha), Ok(Some("shoal_alpha"))),
        ];
        for (action, key, expected) in cases {
            let requirement = caller_requirement(Some(&node), &action, workstation_of);
            let verdict = authorize_caller(&requirement, key);
            assert_eq!(
                verdict
                    .as_ref()
                    .map(|prefix| prefix.as_deref())
                    .map_err(|_| ()),
                expected,
                "{action:?} with {key:?}: {verdict:?}"
            );
        }
    }

    #[test]
    fn raft_messages_come_only_from_servers_speaking_in_their_own_name() {
        let voters: BTreeSet<NodeId> = [1, 2, 3].into();
        let cases: &[(Option<SenderView>, RaftRpcKind, Option<NodeId>, bool)] = &[
            (Some(server(2)), RaftRpcKind::Replication, Some(2), true),
            (Some(server(2)), RaftRpcKind::Vote, Some(2), true),
            (Some(server(2)), RaftRpcKind::ElectNow, None, true),
            // A worker's identity: no Raft message at all.
            (Some(worker(4)), RaftRpcKind::Vote, Some(4), false),
            (Some(worker(4)), RaftRpcKind::ElectNow, None, false),
            (Some(worker(4)), RaftRpcKind::Replication, Some(4), false),
            // A server speaking in another's name.
            (Some(server(2)), RaftRpcKind::Vote, Some(1), false),
            (Some(server(2)), RaftRpcKind::Replication, Some(3), false),
            // A server that is no voter (a learner) may replicate? No: only leaders replicate,
            // but a learner's claim is checked the same; it may not trigger an election.
            (Some(server(5)), RaftRpcKind::ElectNow, None, false),
            // Unknown senders: heard (a lagging node must catch up), but never ElectNow.
            (None, RaftRpcKind::Replication, Some(7), true),
            (None, RaftRpcKind::Vote, Some(7), true),
            (None, RaftRpcKind::ElectNow, None, false),
            // A node marked `left` stays a Raft member until the membership change that
            // removes it commits (a removed leader replicates that change itself), and learns
            // of its removal from the state machine's refusals: the mesh does not refuse it.
            (
                Some(SenderView {
                    state: NodeState::Left,
                    ..server(3)
                }),
                RaftRpcKind::Vote,
                Some(3),
                true,
            ),
        ];
        for (sender, kind, claimed, allowed) in cases {
            let verdict = authorize_raft(sender.as_ref(), *kind, *claimed, &voters);
            assert_eq!(
                verdict.is_ok(),
                *allowed,
                "{sender:?} {kind:?} claiming {claimed:?}: {verdict:?}"
            );
        }
    }

    #[test]
    fn node_scoped_writes_are_only_about_the_sender_and_leader_only_writes_never_forwarded() {
        let info = |node| Action::UpdateNodeInfo {
            node,
            api_addr: None,
            capacity: Resources::new(1, 1),
            reserve: Resources::new(0, 0),
        };
        let capacity = |node| Action::UpdateNodeCapacity {
            node,
            api_addr: None,
            capacity: Resources::new(1, 1),
            reserve: Resources::new(0, 0),
            workstations_max: 1,
        };
        let ready = |node| Action::MarkNodeReady {
            node,
            hints: PlacementHints::default(),
        };
        let floor = |ws: u64| Action::RaiseLogFloor {
            workstation: WorkstationId(ws),
            generation: 1,
            floor: 1 << 40,
        };
        let down = Action::MarkNodesDown {
            nodes: vec![1],
            hints: PlacementHints::default(),
            observed: Default::default(),
        };
        let step = |node| Action::DrainStep {
            node,
            hints: PlacementHints::default(),
            observed: Default::default(),
        };
        let delete = Action::DeleteWorkstation {
            id: WorkstationId(9),
        };
        // ws-1 on node 4, ws-2 on node 2, ws-3 nowhere.
        let placed_on = |ws: WorkstationId| match ws.0 {
            1 => Some(4),
            2 => Some(2),
            _ => None,
        };
        let rogue = worker(4);
        let cases: Vec<(Option<SenderView>, Action, bool)> = vec![
            (Some(rogue), info(4), true),
            (Some(rogue), info(1), false),
            (Some(rogue), capacity(4), true),
            (Some(rogue), capacity(1), false),
            (Some(rogue), ready(4), true),
            (Some(rogue), ready(2), false),
            (Some(rogue), floor(1), true),
            (Some(rogue), floor(2), false),
            (Some(rogue), floor(3), false),
            (Some(rogue), down.clone(), false),
            (Some(rogue), step(4), true),
            (Some(rogue), step(1), false),
            (Some(server(2)), down, false),
            (Some(rogue), delete.clone(), true),
            (None, info(4), false),
            (None, delete, false),
        ];
        for (sender, action, allowed) in cases {
            let verdict = authorize_write(sender.as_ref(), &action, placed_on);
            assert_eq!(
                verdict.is_ok(),
                allowed,
                "{sender:?} {action:?}: {verdict:?}"
            );
        }
    }
}
