//! The durable [`Model`] (this node's hosting records) on disk: `state.json` in the data dir,
//! replaced atomically on every change and checked with a SHA-256 when read back. The audit
//! log is not here: it is replicated state in Raft (an `audit.jsonl` left by an earlier build
//! is ignored).

use std::io::Write;
use std::path::{Path, PathBuf};

use parking_lot::Mutex;
use sha2::{Digest, Sha256};

use super::model::Model;
use crate::service::ServiceError;

/// The model, its file, and a lock that serialises writers.
#[derive(Debug)]
pub struct Store {
    path: PathBuf,
    model: Mutex<Model>,
}

/// What can go wrong loading the state file.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The file could not be read or written.
    #[error("state file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file's checksum does not match its content, or it does not parse.
    #[error("state file {path} is corrupt: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

impl Store {
    /// Opens the state file in `data_dir`, if there is one.
    pub fn open(data_dir: &Path) -> Result<Option<Store>, StoreError> {
        let path = data_dir.join("state.json");
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(StoreError::Io { path, source }),
        };
        let corrupt = |reason: &str| StoreError::Corrupt {
            path: path.clone(),
            reason: reason.to_string(),
        };
        let (checksum, body) = text
            .split_once('\n')
            .ok_or_else(|| corrupt("no checksum line"))?;
        if hex::encode(Sha256::digest(body.as_bytes())) != checksum.trim() {
            return Err(corrupt("checksum mismatch"));
        }
        let model: Model = serde_json::from_str(body).map_err(|err| corrupt(&err.to_string()))?;
        Ok(Some(Store {
            path,
            model: Mutex::new(model),
        }))
    }

    /// Creates the state file in `data_dir` with `model`.
    pub fn create(data_dir: &Path, model: Model) -> Result<Store, StoreError> {
        let path = data_dir.join("state.json");
        write_atomically(&path, &model)?;
        Ok(Store {
            path,
            model: Mutex::new(model),
        })
    }

    /// Reads the model.
    pub fn read<R>(&self, read: impl FnOnce(&Model) -> R) -> R {
        read(&self.model.lock())
    }

    /// Changes the model: `change` works on a copy; if it succeeds the copy is written to disk
    /// and becomes the model; if it fails (or the disk does), nothing changes.
    pub fn write<R>(
        &self,
        change: impl FnOnce(&mut Model) -> Result<R, ServiceError>,
    ) -> Result<R, ServiceError> {
        let mut model = self.model.lock();
        let mut next = model.clone();
        let result = change(&mut next)?;
        write_atomically(&self.path, &next).map_err(|err| {
            ServiceError::Internal(format!("could not persist the change: {err}"))
        })?;
        *model = next;
        Ok(result)
    }
}

fn write_atomically(path: &Path, model: &Model) -> Result<(), StoreError> {
    let io = |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    };
    let body = serde_json::to_string(model).map_err(|err| StoreError::Corrupt {
        path: path.to_path_buf(),
        reason: err.to_string(),
    })?;
    let checksum = hex::encode(Sha256::digest(body.as_bytes()));
    let temp = path.with_extension("json.tmp");
    let mut file = std::fs::File::create(&temp).map_err(io)?;
    file.write_all(checksum.as_bytes()).map_err(io)?;
    file.write_all(b"\n").map_err(io)?;
    file.write_all(body.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&temp, path).map_err(io)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_model_reads_back_and_a_flipped_byte_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let model = Model {
            cluster_id: "c1".to_string(),
            ..Model::default()
        };
        let store = Store::create(dir.path(), model).unwrap();
        store
            .write(|model| {
                model.node_id = "n1".to_string();
                Ok(())
            })
            .unwrap();
        let reopened = Store::open(dir.path()).unwrap().unwrap();
        assert_eq!(reopened.read(|m| m.node_id.clone()), "n1");
        let path = dir.path().join("state.json");
        let text = std::fs::read_to_string(&path).unwrap().replace("c1", "c2");
        std::fs::write(&path, text).unwrap();
        assert!(matches!(
            Store::open(dir.path()),
            Err(StoreError::Corrupt { .. })
        ));
    }

    #[test]
    fn a_failed_change_leaves_the_model_alone() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(dir.path(), Model::default()).unwrap();
        let result: Result<(), ServiceError> = store.write(|model| {
            model.cluster_id = "changed".to_string();
            Err(ServiceError::Conflict("no".to_string()))
        });
        assert!(result.is_err());
        assert_eq!(store.read(|m| m.cluster_id.clone()), "");
    }
}
