//! Who is asking: the API key a request was authenticated with, as every service and every
//! relay between nodes sees it.

use serde::{Deserialize, Serialize};

use super::ServiceError;
use crate::agent::model::sha256_hex;
use crate::agent::Agent;

/// Longest accepted API key, in bytes (ours are 70); longer ones are refused unhashed.
pub const API_KEY_BYTES_MAX: usize = 256;

/// The authenticated caller of a request. A relay to the node hosting a workstation carries
/// it, and the hosting node checks ownership again against its own applied state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Caller {
    /// The key's id.
    pub key_id: String,
    /// The key's display prefix (recorded in the audit log).
    pub prefix: String,
    /// The tenant the key acts for.
    pub tenant: String,
    /// Whether it is an admin key.
    pub admin: bool,
    /// The key itself, on the node that authenticated the request only: a write forwarded to
    /// the leader carries it so that the leader authenticates the caller by its hash instead of
    /// trusting the forwarding node. Never relayed to the node hosting a workstation (a worker
    /// must not collect its callers' keys, an admin's included) and never logged.
    #[serde(skip)]
    pub secret: KeySecret,
}

/// An API key's text. Its `Debug` shows nothing of it.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct KeySecret(pub String);

impl std::fmt::Debug for KeySecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeySecret(..)")
    }
}

impl Caller {
    /// Whether this caller may see or touch a resource of `tenant`.
    pub fn can_access(&self, tenant: &str) -> bool {
        self.admin || self.tenant == tenant
    }

    /// Refuses non-admin callers with 403.
    pub fn require_admin(&self) -> Result<(), ServiceError> {
        if self.admin {
            Ok(())
        } else {
            Err(ServiceError::Forbidden(
                "this needs an admin API key".to_string(),
            ))
        }
    }
}

/// The caller holding API key `key`: keys live in Raft's applied state (replicated to every
/// server and mirrored to workers), so any node authenticates any key the cluster committed.
pub fn authenticate(agent: &Agent, key: &str) -> Result<Caller, ServiceError> {
    let key = key.trim();
    if key.is_empty() || key.len() > API_KEY_BYTES_MAX {
        return Err(ServiceError::Unauthorized("invalid API key".to_string()));
    }
    let hash = sha256_hex(key);
    agent
        .raft
        .read(|state| {
            state.api_key_by_hash(&hash).map(|record| Caller {
                key_id: record.id.to_string(),
                prefix: record.prefix.clone(),
                tenant: record.tenant.clone(),
                admin: record.admin,
                secret: KeySecret(key.to_string()),
            })
        })
        .ok_or_else(|| ServiceError::Unauthorized("invalid or revoked API key".to_string()))
}

/// The caller a relayed request names, checked against this node's applied state: the key
/// must still exist, unrevoked, with the same tenant and role. A relay cannot widen what its
/// caller may do, and a key revoked meanwhile is refused here too. (A relay carries the
/// caller's key id, not its key: the hosting node cannot tell a relayed caller from one a
/// lying member names, but it serves only what that tenant may see of a workstation it hosts
/// anyway.)
pub fn recheck(agent: &Agent, caller: &Caller) -> Result<(), ServiceError> {
    let refused = || ServiceError::Unauthorized("invalid or revoked API key".to_string());
    let key_id: shoal_raft::model::ApiKeyId = caller.key_id.parse().map_err(|_| refused())?;
    let current = agent.raft.read(|state| {
        state
            .api_keys
            .get(&key_id)
            .filter(|record| !record.revoked)
            .map(|record| (record.tenant.to_string(), record.admin))
    });
    match current {
        Some((tenant, admin)) if tenant == caller.tenant && admin == caller.admin => Ok(()),
        _ => Err(refused()),
    }
}
