//! Join tokens: what the admin is given once, and what the cluster stores (hashed).
//!
//! Text form (documented in the crate docs and ARCHITECTURE.md):
//!
//! ```text
//! shoal1.<id>.<secret>.<member public key>@<member endpoint>[,<member endpoint>...]
//! ```
//!
//! - `id`: 16 lowercase hex characters; names the token in `token ls` / `token revoke` and is
//!   the lookup key of the stored record.
//! - `secret`: 32 random bytes, URL-safe base64 without padding (43 characters). Only its
//!   SHA-256 is stored.
//! - `member public key`: the WireGuard public key of a member (URL-safe base64, 43 chars): the
//!   joiner encrypts its join request to this key, so it knows it talks to the cluster.
//! - `member endpoint`: `host:port` of that member's WireGuard UDP port (IPv6 as `[addr]:port`).
//!
//! Everything here is pure: creation takes the random bytes and `now_ms` from the caller.

use std::fmt;
use std::str::FromStr;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::admission::JoinRefusal;
use crate::error::MeshError;
use crate::identity::NodePublicKey;

/// The prefix that names the token format version.
pub const TOKEN_PREFIX: &str = "shoal1";
/// Most member endpoints a token carries.
pub const TOKEN_ENDPOINTS_MAX: usize = 8;
/// Longest accepted token text.
pub const TOKEN_TEXT_BYTES_MAX: usize = 1024;

/// A parsed join token (the full secret: only the joiner and the admin ever hold this).
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// Token id (16 hex characters).
    pub id: String,
    /// The secret.
    pub secret: [u8; 32],
    /// Public key of the member the joiner contacts.
    pub member_public_key: NodePublicKey,
    /// `host:port` endpoints of that member's WireGuard UDP port.
    pub member_endpoints: Vec<String>,
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the secret (logs end up in places).
        f.debug_struct("JoinToken")
            .field("id", &self.id)
            .field("member_public_key", &self.member_public_key)
            .field("member_endpoints", &self.member_endpoints)
            .finish_non_exhaustive()
    }
}

impl JoinToken {
    /// A new token from random bytes (`id_bytes` and `secret` come from the caller's source).
    pub fn new(
        id_bytes: [u8; 8],
        secret: [u8; 32],
        member_public_key: NodePublicKey,
        member_endpoints: Vec<String>,
    ) -> Self {
        Self {
            id: hex::encode(id_bytes),
            secret,
            member_public_key,
            member_endpoints,
        }
    }

    /// A new token with fresh random id and secret.
    pub fn generate(member_public_key: NodePublicKey, member_endpoints: Vec<String>) -> Self {
        Self::new(
            crate::random::bytes(),
            crate::random::bytes(),
            member_public_key,
            member_endpoints,
        )
    }

    /// SHA-256 of the secret: what the cluster stores.
    pub fn secret_sha256(&self) -> [u8; 32] {
        hash_secret(&self.secret)
    }

    /// Parses the text form.
    pub fn parse(text: &str) -> Result<Self, MeshError> {
        let bad = |why: &str| MeshError::InvalidToken(why.to_string());
        let text = text.trim();
        if text.len() > TOKEN_TEXT_BYTES_MAX {
            return Err(bad("too long"));
        }
        let (head, endpoints) = text
            .split_once('@')
            .ok_or_else(|| bad("missing '@<member endpoint>'"))?;
        let mut parts = head.split('.');
        let (Some(prefix), Some(id), Some(secret), Some(key), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(bad(
                "expected shoal1.<id>.<secret>.<public key>@<host:port>",
            ));
        };
        if prefix != TOKEN_PREFIX {
            return Err(bad("unknown token version (expected 'shoal1')"));
        }
        if id.len() != 16 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad("the id is 16 hex characters"));
        }
        let secret: [u8; 32] = URL_SAFE_NO_PAD
            .decode(secret)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| bad("the secret is 32 bytes of URL-safe base64"))?;
        let member_public_key =
            NodePublicKey::parse(key).map_err(|_| bad("the member public key is invalid"))?;
        let member_endpoints: Vec<String> = endpoints
            .split(',')
            .filter(|e| !e.is_empty())
            .map(str::to_string)
            .collect();
        if member_endpoints.is_empty() || member_endpoints.len() > TOKEN_ENDPOINTS_MAX {
            return Err(bad("expected 1 to 8 member endpoints"));
        }
        for endpoint in &member_endpoints {
            let ok = endpoint
                .rsplit_once(':')
                .map(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
                .unwrap_or(false);
            if !ok {
                return Err(bad("a member endpoint is host:port"));
            }
        }
        Ok(Self {
            id: id.to_ascii_lowercase(),
            secret,
            member_public_key,
            member_endpoints,
        })
    }
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{TOKEN_PREFIX}.{}.{}.{}@{}",
            self.id,
            URL_SAFE_NO_PAD.encode(self.secret),
            self.member_public_key.to_base64_url(),
            self.member_endpoints.join(",")
        )
    }
}

impl FromStr for JoinToken {
    type Err = MeshError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// SHA-256 of a token secret.
pub fn hash_secret(secret: &[u8; 32]) -> [u8; 32] {
    Sha256::digest(secret).into()
}

/// What the cluster stores about a token (in Raft): never the secret itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Token id.
    pub id: String,
    /// SHA-256 of the secret.
    pub secret_sha256: [u8; 32],
    /// When it was created (Unix ms).
    pub created_at_ms: u64,
    /// When it stops working (Unix ms).
    pub expires_at_ms: u64,
    /// How many joins it admits in total (`None`: unlimited until expiry).
    pub uses_max: Option<u32>,
    /// How many joins it has admitted.
    pub uses: u32,
    /// Revoked by an admin.
    pub revoked: bool,
}

impl TokenRecord {
    /// The record for a freshly created token.
    pub fn new(token: &JoinToken, now_ms: u64, ttl_ms: u64, uses_max: Option<u32>) -> Self {
        Self {
            id: token.id.clone(),
            secret_sha256: token.secret_sha256(),
            created_at_ms: now_ms,
            expires_at_ms: now_ms.saturating_add(ttl_ms),
            uses_max,
            uses: 0,
            revoked: false,
        }
    }

    /// Whether `secret` is this token's secret and the token can admit one more node now.
    /// The order of checks is fixed: a wrong secret is reported before anything about the
    /// token's state, so that someone without the secret learns nothing about it.
    pub fn check(&self, secret: &[u8; 32], now_ms: u64) -> Result<(), JoinRefusal> {
        if !constant_time_eq(&hash_secret(secret), &self.secret_sha256) {
            return Err(JoinRefusal::InvalidToken);
        }
        if self.revoked {
            return Err(JoinRefusal::TokenRevoked);
        }
        if now_ms >= self.expires_at_ms {
            return Err(JoinRefusal::TokenExpired);
        }
        if self.uses_left() == Some(0) {
            return Err(JoinRefusal::TokenUsedUp);
        }
        Ok(())
    }

    /// Joins still allowed (`None`: unlimited).
    pub fn uses_left(&self) -> Option<u32> {
        self.uses_max.map(|max| max.saturating_sub(self.uses))
    }

    /// Counts one admission.
    pub fn consume(&mut self) {
        self.uses = self.uses.saturating_add(1);
    }
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn token() -> JoinToken {
        JoinToken::new(
            [1; 8],
            [2; 32],
            NodePublicKey([3; 32]),
            vec!["127.0.0.1:51820".into(), "[::1]:51820".into()],
        )
    }

    #[test]
    fn token_text_round_trips_and_has_the_documented_shape() {
        let text = token().to_string();
        assert!(text.starts_with("shoal1.0101010101010101."));
        assert!(text.ends_with("@127.0.0.1:51820,[::1]:51820"));
        assert_eq!(JoinToken::parse(&text).unwrap(), token());
    }

    #[test]
    fn malformed_token_texts_are_refused() {
        let good = token().to_string();
        for bad in [
            "",
            "shoal1",
            &good.replace("shoal1", "shoal2"),
            &good.replace("@127.0.0.1:51820,[::1]:51820", ""),
            &good.replace("@127.0.0.1:51820,[::1]:51820", "@nohost"),
            &good.replace("0101010101010101", "01"),
            &good.replace(".AgICAgI", ".!!!"),
        ] {
            assert!(JoinToken::parse(bad).is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn debug_output_never_contains_the_secret() {
        let text = token().to_string();
        let secret_text = text.split('.').nth(2).unwrap().to_string();
        assert!(!format!("{:?}", token()).contains(&secret_text));
    }

    #[test]
    fn check_refuses_wrong_revoked_expired_and_used_up_in_that_order() {
        let t = token();
        let mut record = TokenRecord::new(&t, 1_000, 60_000, Some(1));
        assert_eq!(record.check(&t.secret, 1_000), Ok(()));
        assert_eq!(
            record.check(&[9; 32], 1_000),
            Err(JoinRefusal::InvalidToken)
        );
        assert_eq!(
            record.check(&t.secret, 61_000),
            Err(JoinRefusal::TokenExpired)
        );
        record.consume();
        assert_eq!(
            record.check(&t.secret, 1_000),
            Err(JoinRefusal::TokenUsedUp)
        );
        record.revoked = true;
        assert_eq!(
            record.check(&t.secret, 1_000),
            Err(JoinRefusal::TokenRevoked)
        );
        assert_eq!(
            record.check(&[9; 32], 99_000),
            Err(JoinRefusal::InvalidToken)
        );
    }

    proptest! {
        #[test]
        fn parsing_arbitrary_text_never_panics(text in ".{0,200}") {
            let _ = JoinToken::parse(&text);
        }

        #[test]
        fn any_generated_token_round_trips(id in any::<[u8; 8]>(), secret in any::<[u8; 32]>(),
                                           key in any::<[u8; 32]>(), port in 1u16..) {
            let t = JoinToken::new(id, secret, NodePublicKey(key), vec![format!("example.org:{port}")]);
            prop_assert_eq!(JoinToken::parse(&t.to_string()).unwrap(), t);
        }

        /// A token admits exactly `uses_max` joins before expiry, and none after expiry.
        #[test]
        fn uses_and_expiry_are_exact(uses_max in 0u32..5, ttl_ms in 1u64..10_000, at_ms in 0u64..20_000) {
            let t = token();
            let mut record = TokenRecord::new(&t, 0, ttl_ms, Some(uses_max));
            let mut admitted = 0;
            while record.check(&t.secret, at_ms).is_ok() && admitted < 10 {
                record.consume();
                admitted += 1;
            }
            if at_ms >= ttl_ms { prop_assert_eq!(admitted, 0); } else { prop_assert_eq!(admitted, uses_max); }
        }
    }
}
