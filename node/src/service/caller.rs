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
    /// The key itself: a relay and a forwarded write carry it so that the node receiving
    /// them (the hosting node, the leader) authenticates the caller again by its hash instead
    /// of trusting the node that sent them. Never logged.
    pub secret: KeySecret,
}

/// An API key's text. Its `Debug` shows nothing of it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
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

/// The caller a relayed request names, authenticated again on this node by its key (the
/// node that relayed it is not trusted to have done so): the key must still exist, unrevoked,
/// with the same id, tenant and role. A relay cannot widen what its caller may do, nor act for
/// a caller whose key it does not hold.
pub fn recheck(agent: &Agent, caller: &Caller) -> Result<(), ServiceError> {
    let again = authenticate(agent, &caller.secret.0)?;
    if again.key_id == caller.key_id && again.tenant == caller.tenant && again.admin == caller.admin
    {
        Ok(())
    } else {
        Err(ServiceError::Unauthorized(
            "the relayed caller does not match its key".to_string(),
        ))
    }
}
