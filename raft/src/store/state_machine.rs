//! [`StateMachineStore`]: openraft's `RaftStateMachine`. The cluster state lives in memory
//! (behind a lock shared with readers); durability comes from the log plus the snapshot stored
//! in redb. On restart the state is loaded from the snapshot and openraft re-applies the
//! committed log after it (the committed id is saved by the log store).

use std::io::Cursor;
use std::sync::Arc;

use openraft::storage::RaftStateMachine;
use openraft::EntryPayload;
use openraft::RaftSnapshotBuilder;
use parking_lot::RwLock;
use serde::Deserialize;
use serde::Serialize;
use tokio::sync::watch;

use super::blocking;
use super::db_err;
use super::io_read;
use super::io_write;
use super::KEY_SNAPSHOT;
use super::SNAPSHOT;
use crate::apply::apply;
use crate::codec;
use crate::command::CommandResponse;
use crate::command::Outcome;
use crate::state::ClusterState;
use crate::state_format;
use crate::types::Entry;
use crate::types::LogId;
use crate::types::SnapshotMeta;
use crate::types::StorageError;
use crate::types::StoredMembership;
use crate::types::TypeConfig;

/// A snapshot as stored on disk: its metadata and its data (`crc32 ‖ version ‖
/// bincode(ClusterData)`, see [`crate::state_format`];
/// the same bytes that are sent to a lagging follower).
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct StoredSnapshot {
    /// openraft's metadata.
    pub meta: SnapshotMeta,
    /// The checksummed state.
    pub data: Vec<u8>,
}

impl StoredSnapshot {
    /// Verifies the data checksum and decodes the state.
    pub fn decode_state(&self) -> Result<ClusterState, codec::CodecError> {
        Ok(ClusterState::from_data(state_format::decode_checked(
            &self.data,
        )?))
    }
}

/// The applied state and what openraft needs to know about it, changed together.
#[derive(Debug, Default)]
pub struct Applied {
    /// The cluster state.
    pub state: ClusterState,
    /// Last applied log id.
    pub last_applied: Option<LogId>,
    /// Last applied membership.
    pub last_membership: StoredMembership,
}

/// What the state machine shares with readers ([`crate::RaftNode::read`]).
#[derive(Debug)]
pub struct SmShared {
    /// The applied state.
    pub applied: RwLock<Applied>,
    /// Index of the last applied entry (0 before any), for waiting on progress.
    pub applied_index: watch::Sender<u64>,
}

/// The state machine handed to openraft.
pub struct StateMachineStore {
    db: Arc<super::Database>,
    shared: Arc<SmShared>,
    snapshot_seq: u64,
}

impl StateMachineStore {
    pub(crate) fn new(db: Arc<super::Database>, snapshot: Option<StoredSnapshot>) -> Self {
        let mut applied = Applied::default();
        if let Some(snapshot) = snapshot {
            // `open` verified it; a decode failure here cannot happen, but is not a panic.
            if let Ok(state) = snapshot.decode_state() {
                applied.state = state;
                applied.last_applied = snapshot.meta.last_log_id;
                applied.last_membership = snapshot.meta.last_membership.clone();
            }
        }
        let index = applied.last_applied.map_or(0, |id| id.index);
        Self {
            db,
            shared: Arc::new(SmShared {
                applied: RwLock::new(applied),
                applied_index: watch::channel(index).0,
            }),
            snapshot_seq: 0,
        }
    }

    /// A state machine over a reopened database that keeps the state this process already
    /// applied (see [`super::reopen`]); a stored snapshot newer than it replaces it.
    pub(crate) fn with_shared(
        db: Arc<super::Database>,
        shared: Arc<SmShared>,
        snapshot: Option<StoredSnapshot>,
    ) -> Self {
        if let Some(snapshot) = snapshot {
            let newer = {
                let applied = shared.applied.read();
                snapshot.meta.last_log_id > applied.last_applied
            };
            if newer {
                if let Ok(state) = snapshot.decode_state() {
                    let index = snapshot.meta.last_log_id.map_or(0, |id| id.index);
                    {
                        let mut applied = shared.applied.write();
                        applied.state = state;
                        applied.last_applied = snapshot.meta.last_log_id;
                        applied.last_membership = snapshot.meta.last_membership.clone();
                    }
                    shared.applied_index.send_replace(index);
                }
            }
        }
        Self {
            db,
            shared,
            snapshot_seq: 0,
        }
    }

    /// The handle readers use.
    pub fn shared(&self) -> Arc<SmShared> {
        self.shared.clone()
    }

    fn read_snapshot(db: &redb::Database) -> Result<Option<StoredSnapshot>, StorageError> {
        let read = db.begin_read().map_err(|e| io_read(db_err(e)))?;
        let table = read.open_table(SNAPSHOT).map_err(|e| io_read(db_err(e)))?;
        let Some(value) = table.get(KEY_SNAPSHOT).map_err(|e| io_read(db_err(e)))? else {
            return Ok(None);
        };
        let stored = codec::decode_checked(value.value()).map_err(io_read)?;
        Ok(Some(stored))
    }

    fn write_snapshot(db: &redb::Database, stored: &StoredSnapshot) -> Result<(), StorageError> {
        let bytes = codec::encode_checked(stored).map_err(io_write)?;
        let write = db.begin_write().map_err(|e| io_write(db_err(e)))?;
        {
            let mut table = write
                .open_table(SNAPSHOT)
                .map_err(|e| io_write(db_err(e)))?;
            table
                .insert(KEY_SNAPSHOT, bytes.as_slice())
                .map_err(|e| io_write(db_err(e)))?;
        }
        write.commit().map_err(|e| io_write(db_err(e)))?;
        Ok(())
    }
}

/// Builds a snapshot from the current state.
pub struct SnapshotBuilder {
    db: Arc<super::Database>,
    shared: Arc<SmShared>,
    seq: u64,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<openraft::Snapshot<TypeConfig>, StorageError> {
        // Encoding under the read lock gives a consistent cut; it blocks apply for the time of
        // one encode (tens of ms for 100,000 workstations, see the `state_size` benchmark).
        let (data, last_applied, last_membership) = {
            let applied = self.shared.applied.read();
            let data = state_format::encode_checked(&applied.state.data).map_err(io_write)?;
            (data, applied.last_applied, applied.last_membership.clone())
        };
        let snapshot_id = match last_applied {
            Some(id) => format!("{}-{}-{}", id.leader_id.term, id.index, self.seq),
            None => format!("0-0-{}", self.seq),
        };
        let meta = SnapshotMeta {
            last_log_id: last_applied,
            last_membership,
            snapshot_id,
        };
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        let db = self.db.clone();
        let stored = blocking(move || {
            StateMachineStore::write_snapshot(&db, &stored)?;
            Ok(stored)
        })
        .await?;
        tracing::info!(snapshot = %meta.snapshot_id, bytes = stored.data.len(), "built snapshot");
        Ok(openraft::Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(stored.data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let applied = self.shared.applied.read();
        Ok((applied.last_applied, applied.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResponse>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        // Applying a large batch is CPU work (tens of ms for thousands of placements): run it
        // on the blocking pool, so that the async workers keep serving heartbeats and timers
        // and a busy state machine does not cause needless elections.
        let entries: Vec<Entry> = entries.into_iter().collect();
        let shared = self.shared.clone();
        let (responses, last_index) = tokio::task::spawn_blocking(move || {
            let mut responses = Vec::with_capacity(entries.len());
            let mut applied = shared.applied.write();
            for entry in entries {
                applied.last_applied = Some(entry.log_id);
                // The leader answers worker mirrors from this window (see `journal`).
                let command = match &entry.payload {
                    EntryPayload::Normal(command) => Some(command),
                    _ => None,
                };
                applied.state.journal.record(entry.log_id.index, command);
                match entry.payload {
                    EntryPayload::Blank => responses.push(Ok(Outcome::Done)),
                    EntryPayload::Normal(command) => {
                        responses.push(apply(&mut applied.state, &command));
                    }
                    EntryPayload::Membership(membership) => {
                        applied.last_membership =
                            StoredMembership::new(Some(entry.log_id), membership);
                        responses.push(Ok(Outcome::Done));
                    }
                }
            }
            let last_index = applied.last_applied.map_or(0, |id| id.index);
            (responses, last_index)
        })
        .await
        .map_err(io_write)?;
        self.shared.applied_index.send_replace(last_index);
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.snapshot_seq += 1;
        SnapshotBuilder {
            db: self.db.clone(),
            shared: self.shared.clone(),
            seq: self.snapshot_seq,
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: snapshot.into_inner(),
        };
        // A snapshot that fails its checksum is refused, never installed.
        let state = stored.decode_state().map_err(|e| {
            StorageError::from(openraft::StorageIOError::read_snapshot(
                Some(meta.signature()),
                openraft::AnyError::error(e.to_string()),
            ))
        })?;
        let db = self.db.clone();
        let to_store = stored.clone();
        blocking(move || StateMachineStore::write_snapshot(&db, &to_store)).await?;
        let index = {
            let mut applied = self.shared.applied.write();
            applied.state = state;
            applied.last_applied = meta.last_log_id;
            applied.last_membership = meta.last_membership.clone();
            meta.last_log_id.map_or(0, |id| id.index)
        };
        self.shared.applied_index.send_replace(index);
        tracing::info!(snapshot = %meta.snapshot_id, "installed snapshot");
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<openraft::Snapshot<TypeConfig>>, StorageError> {
        let db = self.db.clone();
        let stored = blocking(move || StateMachineStore::read_snapshot(&db)).await?;
        Ok(stored.map(|stored| openraft::Snapshot {
            meta: stored.meta,
            snapshot: Box::new(Cursor::new(stored.data)),
        }))
    }
}
