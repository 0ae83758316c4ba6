//! The network a workstation's or run's processes get (SPEC.md: `none`, `allowlist`, `full`).
//!
//! The one type for the policy's kind: the HTTP API, the CLI and the run request use it as it
//! is. Raft's `model::NetworkPolicy` keeps the allowlist's domains as committed state; the node
//! converts between the two in one module (`node/src/convert.rs`).

use serde::{Deserialize, Serialize};

/// The network policy of a workstation or run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "snake_case")]
pub enum NetworkPolicy {
    /// Loopback only.
    #[default]
    None,
    /// Egress only through the node's proxy, to listed domains.
    Allowlist,
    /// Direct egress.
    Full,
}

impl NetworkPolicy {
    /// The wire name: `none`, `allowlist` or `full`.
    pub fn as_str(self) -> &'static str {
        match self {
            NetworkPolicy::None => "none",
            NetworkPolicy::Allowlist => "allowlist",
            NetworkPolicy::Full => "full",
        }
    }
}

impl std::fmt::Display for NetworkPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The JSON names are SPEC's; `as_str` (used in messages) agrees with them.
    #[test]
    fn wire_names_are_specs_and_match_as_str() {
        for (policy, name) in [
            (NetworkPolicy::None, "none"),
            (NetworkPolicy::Allowlist, "allowlist"),
            (NetworkPolicy::Full, "full"),
        ] {
            assert_eq!(
                serde_json::to_string(&policy).unwrap(),
                format!("\"{name}\"")
            );
            assert_eq!(policy.as_str(), name);
            let back: NetworkPolicy = serde_json::from_str(&format!("\"{name}\"")).unwrap();
            assert_eq!(back, policy);
        }
        assert!(serde_json::from_str::<NetworkPolicy>("\"wide\"").is_err());
    }
}
