//! The identifier of a process within one workstation.

use serde::{Deserialize, Serialize};

/// Identifies a process within its workstation: unique for the workstation's life and stable
/// across restarts of that process (a restart is the same process, run again). Serialized as a
/// plain number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ProcId(pub u64);

impl std::fmt::Display for ProcId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}
