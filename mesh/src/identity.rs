//! A node's X25519 identity: created on first start in the data dir (mode 0600), loaded after.
//! The public key, printed in base64 like `wg pubkey`, is the node's identity in the cluster.

use std::fmt;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use x25519_dalek::{PublicKey, StaticSecret};

use crate::error::MeshError;
use crate::random;

/// File name of the private key inside the data dir.
pub const PRIVATE_KEY_FILE_NAME: &str = "mesh.key";

/// A node's WireGuard public key: 32 bytes, shown as standard base64 (44 characters).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NodePublicKey(pub [u8; 32]);

impl NodePublicKey {
    /// Standard base64, as `wg` prints keys.
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }

    /// URL-safe base64 without padding (43 characters), as used inside join tokens.
    pub fn to_base64_url(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.0)
    }

    /// Parses standard or URL-safe base64 (with or without padding).
    pub fn parse(text: &str) -> Result<Self, MeshError> {
        let trimmed = text.trim();
        let decoded = STANDARD
            .decode(trimmed)
            .or_else(|_| URL_SAFE_NO_PAD.decode(trimmed.trim_end_matches('=')))
            .map_err(|_| MeshError::InvalidKey("not base64".into()))?;
        let bytes: [u8; 32] = decoded
            .try_into()
            .map_err(|_| MeshError::InvalidKey("a key is 32 bytes".into()))?;
        Ok(Self(bytes))
    }

    /// The key as the x25519 type boringtun uses.
    pub fn to_x25519(&self) -> PublicKey {
        PublicKey::from(self.0)
    }
}

impl fmt::Display for NodePublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

impl fmt::Debug for NodePublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodePublicKey({})", self.to_base64())
    }
}

impl FromStr for NodePublicKey {
    type Err = MeshError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// A node's key pair. The secret never leaves this type except to boringtun.
#[derive(Clone)]
pub struct Identity {
    secret: StaticSecret,
    public: NodePublicKey,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// A fresh random identity (not persisted).
    pub fn generate() -> Self {
        Self::from_secret_bytes(random::bytes::<32>())
    }

    /// The identity whose private key is these bytes (clamped by x25519).
    pub fn from_secret_bytes(bytes: [u8; 32]) -> Self {
        let secret = StaticSecret::from(bytes);
        let public = NodePublicKey(PublicKey::from(&secret).to_bytes());
        Self { secret, public }
    }

    /// Loads `<data_dir>/mesh.key`, or creates it (mode 0600) on first start.
    pub fn load_or_create(data_dir: &Path) -> Result<Self, MeshError> {
        let path = Self::key_path(data_dir);
        match std::fs::read_to_string(&path) {
            Ok(text) => Self::parse_private(&text)
                .map_err(|e| MeshError::Identity(format!("{}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(data_dir)
                    .map_err(|e| MeshError::Identity(format!("{}: {e}", data_dir.display())))?;
                let identity = Self::generate();
                identity.write_private(&path)?;
                tracing::info!(public_key = %identity.public, path = %path.display(), "created mesh identity");
                Ok(identity)
            }
            Err(e) => Err(MeshError::Identity(format!("{}: {e}", path.display()))),
        }
    }

    /// Where the private key lives inside a data dir.
    pub fn key_path(data_dir: &Path) -> PathBuf {
        data_dir.join(PRIVATE_KEY_FILE_NAME)
    }

    fn parse_private(text: &str) -> Result<Self, MeshError> {
        let key = NodePublicKey::parse(text)?; // Same encoding; the bytes are the secret here.
        Ok(Self::from_secret_bytes(key.0))
    }

    fn write_private(&self, path: &Path) -> Result<(), MeshError> {
        let err = |e: std::io::Error| MeshError::Identity(format!("{}: {e}", path.display()));
        // Write to a temporary file created 0600 and rename, so a crash never leaves a
        // half-written key and the key is never readable by others, not even briefly.
        let tmp = path.with_extension("key.tmp");
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(err)?;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(err)?;
        file.write_all(format!("{}\n", self.private_base64()).as_bytes())
            .map_err(err)?;
        file.sync_all().map_err(err)?;
        std::fs::rename(&tmp, path).map_err(err)?;
        Ok(())
    }

    /// The public key: the node's identity.
    pub fn public_key(&self) -> NodePublicKey {
        self.public
    }

    /// The private key in standard base64, as `wg genkey` prints it (for `wg set private-key`).
    pub fn private_base64(&self) -> String {
        STANDARD.encode(self.secret.to_bytes())
    }

    /// The secret as boringtun's type.
    pub(crate) fn secret(&self) -> &StaticSecret {
        &self.secret
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_is_created_once_with_mode_0600_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let first = Identity::load_or_create(dir.path()).unwrap();
        let mode = std::fs::metadata(Identity::key_path(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let second = Identity::load_or_create(dir.path()).unwrap();
        assert_eq!(first.public_key(), second.public_key());
    }

    #[test]
    fn corrupt_key_file_is_an_error_not_a_new_identity() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(Identity::key_path(dir.path()), "not a key").unwrap();
        assert!(Identity::load_or_create(dir.path()).is_err());
    }

    #[test]
    fn public_key_round_trips_through_both_base64_forms() {
        let key = Identity::generate().public_key();
        assert_eq!(NodePublicKey::parse(&key.to_base64()).unwrap(), key);
        assert_eq!(NodePublicKey::parse(&key.to_base64_url()).unwrap(), key);
        assert_eq!(key.to_base64().len(), 44);
    }
}
