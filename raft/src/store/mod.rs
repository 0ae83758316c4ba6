//! Durable storage on redb: one database file `raft.redb` in the data dir holding the log, the
//! vote, the committed log id and the current snapshot. Every stored value is framed with a
//! CRC32 (see [`crate::codec::encode_checked`]) that is verified whenever it is read, and the
//! whole file is verified by [`open`] before Raft starts: a corrupt node refuses to start
//! instead of joining with bad data. redb commits with `Durability::Immediate` (fsync) before
//! openraft is told an append or vote is done.

mod log_store;
mod state_machine;

use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;

pub use log_store::LogStore;
use redb::ReadableTable;
use redb::TableDefinition;
pub use state_machine::SmShared;
pub use state_machine::SnapshotBuilder;
pub use state_machine::StateMachineStore;
pub use state_machine::StoredSnapshot;

use crate::codec;
use crate::types::Entry;
use crate::types::LogId;
use crate::types::Vote;

/// Log entries by index: `crc32 ‖ bincode(Entry)`.
pub(crate) const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
/// Vote, committed and last purged log id: `crc32 ‖ bincode(value)`.
pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// The current snapshot: `crc32 ‖ bincode(StoredSnapshot)`.
pub(crate) const SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshot");

pub(crate) const KEY_VOTE: &str = "vote";
pub(crate) const KEY_COMMITTED: &str = "committed";
pub(crate) const KEY_LAST_PURGED: &str = "last_purged";
pub(crate) const KEY_SNAPSHOT: &str = "current";

/// The database file name inside the data dir.
pub const DB_FILE_NAME: &str = "raft.redb";

/// Why the store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Stored data failed its checksum or does not decode: the node must not start with it.
    #[error(
        "corrupt raft data in {path}: {what}: {detail}; refusing to start. Restore this node's \
         data dir from a backup, or remove it and re-join the node under a new identity"
    )]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// Which record (`log entry 42`, `vote`, `snapshot`).
        what: String,
        /// The checksum or decode error.
        detail: String,
    },
    /// The database could not be opened or read (permissions, disk, already open).
    #[error("cannot open raft store {path}: {detail}")]
    Database {
        /// The database file.
        path: PathBuf,
        /// The redb error.
        detail: String,
    },
}

/// The open redb database plus a close signal: `closed` is dropped after the database (fields
/// drop in order), so a holder of [`Database::subscribe_closed`] learns when the file lock is
/// really released, not merely when the last `Arc` went away.
pub struct Database {
    db: redb::Database,
    closed: tokio::sync::watch::Sender<()>,
}

impl Database {
    /// A receiver whose `changed()` fails once the database is closed.
    pub fn subscribe_closed(&self) -> tokio::sync::watch::Receiver<()> {
        self.closed.subscribe()
    }
}

impl std::ops::Deref for Database {
    type Target = redb::Database;
    fn deref(&self) -> &redb::Database {
        &self.db
    }
}

pub(crate) fn db_err(e: impl Into<redb::Error>) -> String {
    e.into().to_string()
}

/// Opens (or creates) the store in `data_dir`, verifies every stored record, and returns the
/// log store and state machine for openraft.
pub fn open(data_dir: &Path) -> Result<(LogStore, StateMachineStore), StoreError> {
    let (db, snapshot) = open_database(data_dir)?;
    let log_store = LogStore::new(db.clone());
    let state_machine = StateMachineStore::new(db, snapshot);
    Ok((log_store, state_machine))
}

/// Opens the store again in the same process after Raft stopped on a storage error (a full
/// disk), for a new openraft core: the file is verified like at start, and the state machine
/// keeps `shared`, the state this process already applied (every applied entry was committed,
/// so it is never ahead of what the cluster agreed), so readers and their watchers stay valid
/// and openraft re-applies nothing it already applied. A stored snapshot newer than `shared`
/// (cannot happen: a snapshot is written before it is installed in memory) replaces it.
///
/// The previous database must be closed first: redb refuses a second open in one process
/// (`StoreError::Database`, retry later), and after an I/O error it must be reopened anyway.
pub fn reopen(
    data_dir: &Path,
    shared: Arc<SmShared>,
) -> Result<(LogStore, StateMachineStore), StoreError> {
    let (db, snapshot) = open_database(data_dir)?;
    let log_store = LogStore::new(db.clone());
    let state_machine = StateMachineStore::with_shared(db, shared, snapshot);
    Ok((log_store, state_machine))
}

fn open_database(data_dir: &Path) -> Result<(Arc<Database>, Option<StoredSnapshot>), StoreError> {
    let path = data_dir.join(DB_FILE_NAME);
    let database_err = |detail: String| StoreError::Database {
        path: path.clone(),
        detail,
    };
    std::fs::create_dir_all(data_dir).map_err(|e| database_err(e.to_string()))?;
    let db = redb::Database::create(&path).map_err(|e| match e {
        redb::DatabaseError::Storage(redb::StorageError::Corrupted(detail)) => {
            StoreError::Corrupt {
                path: path.clone(),
                what: "database file".to_string(),
                detail,
            }
        }
        other => database_err(db_err(other)),
    })?;
    let write = db.begin_write().map_err(|e| database_err(db_err(e)))?;
    {
        write.open_table(LOG).map_err(|e| database_err(db_err(e)))?;
        write
            .open_table(META)
            .map_err(|e| database_err(db_err(e)))?;
        write
            .open_table(SNAPSHOT)
            .map_err(|e| database_err(db_err(e)))?;
    }
    write.commit().map_err(|e| database_err(db_err(e)))?;
    let db = Arc::new(Database {
        db,
        closed: tokio::sync::watch::channel(()).0,
    });
    let snapshot = verify(&db, &path)?;
    Ok((db, snapshot))
}

/// Reads and checks every record; returns the stored snapshot, if any.
fn verify(db: &redb::Database, path: &Path) -> Result<Option<StoredSnapshot>, StoreError> {
    let corrupt = |what: String, detail: String| StoreError::Corrupt {
        path: path.to_path_buf(),
        what,
        detail,
    };
    let database_err = |detail: String| StoreError::Database {
        path: path.to_path_buf(),
        detail,
    };
    let read = db.begin_read().map_err(|e| database_err(db_err(e)))?;
    let meta = read.open_table(META).map_err(|e| database_err(db_err(e)))?;
    if let Some(value) = meta.get(KEY_VOTE).map_err(|e| database_err(db_err(e)))? {
        codec::decode_checked::<Vote>(value.value())
            .map_err(|e| corrupt("vote".to_string(), e.to_string()))?;
    }
    if let Some(value) = meta
        .get(KEY_COMMITTED)
        .map_err(|e| database_err(db_err(e)))?
    {
        codec::decode_checked::<Option<LogId>>(value.value())
            .map_err(|e| corrupt(KEY_COMMITTED.to_string(), e.to_string()))?;
    }
    if let Some(value) = meta
        .get(KEY_LAST_PURGED)
        .map_err(|e| database_err(db_err(e)))?
    {
        codec::decode_checked::<LogId>(value.value())
            .map_err(|e| corrupt(KEY_LAST_PURGED.to_string(), e.to_string()))?;
    }
    let log = read.open_table(LOG).map_err(|e| database_err(db_err(e)))?;
    let mut previous: Option<u64> = None;
    for item in log.iter().map_err(|e| database_err(db_err(e)))? {
        let (key, value) = item.map_err(|e| database_err(db_err(e)))?;
        let index = key.value();
        let entry: Entry = codec::decode_checked(value.value())
            .map_err(|e| corrupt(format!("log entry {index}"), e.to_string()))?;
        if entry.log_id.index != index {
            return Err(corrupt(
                format!("log entry {index}"),
                format!("stored under index {index} but has log id {}", entry.log_id),
            ));
        }
        if let Some(prev) = previous {
            if prev + 1 != index {
                return Err(corrupt(
                    format!("log entry {index}"),
                    format!("gap in the log after index {prev}"),
                ));
            }
        }
        previous = Some(index);
    }
    let snapshots = read
        .open_table(SNAPSHOT)
        .map_err(|e| database_err(db_err(e)))?;
    let Some(value) = snapshots
        .get(KEY_SNAPSHOT)
        .map_err(|e| database_err(db_err(e)))?
    else {
        return Ok(None);
    };
    let stored: StoredSnapshot = codec::decode_checked(value.value())
        .map_err(|e| corrupt("snapshot".to_string(), e.to_string()))?;
    // The state inside carries its own checksum (it also travels over the network).
    stored
        .decode_state()
        .map_err(|e| corrupt("snapshot data".to_string(), e.to_string()))?;
    Ok(Some(stored))
}

pub(crate) fn io_read(e: impl std::fmt::Display) -> crate::types::StorageError {
    openraft::StorageIOError::read(openraft::AnyError::error(e.to_string())).into()
}

pub(crate) fn io_write(e: impl std::fmt::Display) -> crate::types::StorageError {
    openraft::StorageIOError::write(openraft::AnyError::error(e.to_string())).into()
}

/// Runs blocking redb work off the async executor.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, crate::types::StorageError> + Send + 'static,
) -> Result<T, crate::types::StorageError> {
    tokio::task::spawn_blocking(f).await.map_err(io_write)?
}
