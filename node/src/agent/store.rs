//! The durable [`Model`] (this node's hosting records) on disk: `state.json` in the data dir,
//! replaced atomically on every change and checked with a SHA-256 when read back. The body
//! carries a `format_version` ([`FORMAT_VERSION`]); a file of a version this build does not
//! know is refused with an error that says so, never half-read. The audit
//! log is not here: it is replicated state in Raft (an `audit.jsonl` left by an earlier build
//! is ignored).

use std::io::Write;
use std::path::{Path, PathBuf};

use parking_lot::Mutex;
use sha2::{Digest, Sha256};

use super::model::Model;
use crate::service::ServiceError;

/// The version of the state file this build writes.
///
/// 1: no `format_version` field; records held the HTTP API's enums (`"network": "none"`).
/// 2: records hold domain types: Raft's committed network policy (`"None"`,
///    `{"Allowlist": [domains]}`, `"Full"`) and the executor's restart policy (`"on-failure"`).
pub const FORMAT_VERSION: u64 = 2;

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
    /// The file was written in a format this build does not know (by a newer build).
    #[error(
        "state file {path} has format version {found}; this build reads versions 1 to \
         {FORMAT_VERSION}: run the build that wrote it, or move the file away to let this \
         node rebuild its hosting records from the cluster"
    )]
    UnknownVersion {
        /// The file.
        path: PathBuf,
        /// The version it declares.
        found: u64,
    },
}

/// The file's body: the model and the version of its format.
#[derive(serde::Serialize)]
struct Body<'a> {
    format_version: u64,
    #[serde(flatten)]
    model: &'a Model,
}

/// The model of a file body of any version this build knows.
fn decode_body(body: &str) -> Result<Model, DecodeError> {
    let mut value: serde_json::Value =
        serde_json::from_str(body).map_err(|err| DecodeError::Corrupt(err.to_string()))?;
    let object = value
        .as_object_mut()
        .ok_or_else(|| DecodeError::Corrupt("the body is not a JSON object".to_string()))?;
    let version = match object.remove("format_version") {
        None => 1,
        Some(version) => version.as_u64().ok_or_else(|| {
            DecodeError::Corrupt(format!("format_version {version} is not a number"))
        })?,
    };
    match version {
        1 => upgrade_v1(&mut value),
        FORMAT_VERSION => {}
        found => return Err(DecodeError::UnknownVersion(found)),
    }
    serde_json::from_value(value).map_err(|err| DecodeError::Corrupt(err.to_string()))
}

enum DecodeError {
    Corrupt(String),
    UnknownVersion(u64),
}

/// Version 1 held the API's network kind; version 2 holds Raft's policy. (The restart policy's
/// names did not change.) An allowlist of version 1 had no domains.
fn upgrade_v1(value: &mut serde_json::Value) {
    let Some(workstations) = value
        .get_mut("workstations")
        .and_then(|workstations| workstations.as_object_mut())
    else {
        return;
    };
    for record in workstations.values_mut() {
        let Some(network) = record.get_mut("network") else {
            continue;
        };
        let upgraded = match network.as_str() {
            Some("none") => serde_json::json!("None"),
            Some("allowlist") => serde_json::json!({ "Allowlist": [] }),
            Some("full") => serde_json::json!("Full"),
            // Anything else is left for the decoder to refuse as corrupt.
            _ => continue,
        };
        *network = upgraded;
    }
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
        let model = decode_body(body).map_err(|err| match err {
            DecodeError::Corrupt(reason) => corrupt(&reason),
            DecodeError::UnknownVersion(found) => StoreError::UnknownVersion {
                path: path.clone(),
                found,
            },
        })?;
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
    let body = serde_json::to_string(&Body {
        format_version: FORMAT_VERSION,
        model,
    })
    .map_err(|err| StoreError::Corrupt {
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

    /// Writes `body` as a state file, with the checksum line the store expects.
    fn write_file(dir: &Path, body: &str) {
        let checksum = hex::encode(Sha256::digest(body.as_bytes()));
        std::fs::write(dir.join("state.json"), format!("{checksum}\n{body}")).unwrap();
    }

    fn hosting_model() -> Model {
        use super::super::model::{ProcessSpec, WorkstationRecord};
        let process = ProcessSpec {
            id: 0,
            argv: vec!["sleep".to_string()],
            env: Default::default(),
            cwd: None,
            restart: shoal_executor::restart_policy::RestartPolicy::OnFailure,
            created_unix_ms: 1,
            killed: false,
            node_lost: false,
        };
        let record = WorkstationRecord {
            id: "ws-1".to_string(),
            name: None,
            tenant: "t".to_string(),
            node: "node-1".to_string(),
            generation: 1,
            cpu_millis: 100,
            memory_bytes: 200,
            cpu_limit_millis: 100,
            memory_limit_bytes: 200,
            network: shoal_raft::model::NetworkPolicy::Allowlist(vec!["example.org".to_string()]),
            created_unix_ms: 1,
            processes: [(0, process)].into(),
            next_process_id: 1,
            log_epoch: 0,
        };
        Model {
            cluster_id: "c1".to_string(),
            node_id: "node-1".to_string(),
            workstations: [("ws-1".to_string(), record)].into(),
        }
    }

    /// The file holds its format version and the domain types (Raft's network policy with its
    /// domains, the executor's restart policy), and reads back equal.
    #[test]
    fn the_file_holds_its_format_version_and_domain_types() {
        let dir = tempfile::tempdir().unwrap();
        let model = hosting_model();
        Store::create(dir.path(), model.clone()).unwrap();
        let text = std::fs::read_to_string(dir.path().join("state.json")).unwrap();
        let body: serde_json::Value =
            serde_json::from_str(text.split_once('\n').unwrap().1).unwrap();
        assert_eq!(body["format_version"], FORMAT_VERSION);
        let record = &body["workstations"]["ws-1"];
        assert_eq!(
            record["network"],
            serde_json::json!({"Allowlist": ["example.org"]})
        );
        assert_eq!(record["processes"]["0"]["restart"], "on-failure");
        let reopened = Store::open(dir.path()).unwrap().unwrap();
        assert_eq!(reopened.read(Model::clone), model);
    }

    /// A file of an earlier build (no version; the API's network names) still opens, each
    /// network kind read as the same committed policy.
    #[test]
    fn a_version_1_file_opens_with_its_network_kinds_upgraded() {
        for (name, expected) in [
            ("none", shoal_raft::model::NetworkPolicy::None),
            (
                "allowlist",
                shoal_raft::model::NetworkPolicy::Allowlist(Vec::new()),
            ),
            ("full", shoal_raft::model::NetworkPolicy::Full),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let body = format!(
                r#"{{"cluster_id":"c1","node_id":"node-1","workstations":{{"ws-1":{{"id":"ws-1","name":null,"tenant":"t","node":"node-1","generation":1,"cpu_millis":100,"memory_bytes":200,"cpu_limit_millis":100,"memory_limit_bytes":200,"network":"{name}","created_unix_ms":1,"processes":{{"0":{{"id":0,"argv":["sleep"],"env":{{}},"cwd":null,"restart":"always","created_unix_ms":1,"killed":false}}}},"next_process_id":1}}}}}}"#
            );
            write_file(dir.path(), &body);
            let store = Store::open(dir.path()).unwrap().unwrap();
            let record = store.read(|m| m.workstations["ws-1"].clone());
            assert_eq!(record.network, expected, "{name}");
            assert_eq!(
                record.processes[&0].restart,
                shoal_executor::restart_policy::RestartPolicy::Always
            );
        }
    }

    /// A file of a format this build does not know is refused, and the error says which
    /// version it found; it is not read as corrupt or as empty.
    #[test]
    fn a_file_of_an_unknown_version_is_refused_with_its_version() {
        let dir = tempfile::tempdir().unwrap();
        write_file(
            dir.path(),
            r#"{"format_version":3,"cluster_id":"c1","node_id":"n1","workstations":{}}"#,
        );
        let err = Store::open(dir.path()).unwrap_err();
        assert!(
            matches!(err, StoreError::UnknownVersion { found: 3, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("format version 3"), "{err}");
    }
}
