//! [`LogStore`]: openraft's `RaftLogStorage` on redb.

use std::fmt::Debug;
use std::ops::RangeBounds;
use std::sync::Arc;

use openraft::storage::LogFlushed;
use openraft::storage::RaftLogStorage;
use openraft::LogState;
use openraft::RaftLogReader;
use redb::ReadableTable;

use super::blocking;
use super::db_err;
use super::io_read;
use super::io_write;
use super::KEY_COMMITTED;
use super::KEY_LAST_PURGED;
use super::KEY_VOTE;
use super::LOG;
use super::META;
use crate::codec;
use crate::types::Entry;
use crate::types::LogId;
use crate::types::StorageError;
use crate::types::TypeConfig;
use crate::types::Vote;

/// The Raft log, vote and committed id, durable in redb. Cloning shares the database.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<super::Database>,
}

impl LogStore {
    pub(crate) fn new(db: Arc<super::Database>) -> Self {
        Self { db }
    }

    /// Fails its `changed()` once the database file is closed and may be opened again (redb
    /// allows one open per process).
    pub fn subscribe_closed(&self) -> tokio::sync::watch::Receiver<()> {
        self.db.subscribe_closed()
    }

    fn read_meta<T: serde::de::DeserializeOwned>(
        db: &redb::Database,
        key: &str,
    ) -> Result<Option<T>, StorageError> {
        let read = db.begin_read().map_err(|e| io_read(db_err(e)))?;
        let table = read.open_table(META).map_err(|e| io_read(db_err(e)))?;
        let Some(value) = table.get(key).map_err(|e| io_read(db_err(e)))? else {
            return Ok(None);
        };
        let decoded =
            codec::decode_checked(value.value()).map_err(|e| io_read(format!("{key}: {e}")))?;
        Ok(Some(decoded))
    }

    fn write_meta<T: serde::Serialize>(
        db: &redb::Database,
        key: &str,
        value: &T,
        durability: redb::Durability,
    ) -> Result<(), StorageError> {
        let bytes = codec::encode_checked(value).map_err(io_write)?;
        let mut write = db.begin_write().map_err(|e| io_write(db_err(e)))?;
        write.set_durability(durability);
        {
            let mut table = write.open_table(META).map_err(|e| io_write(db_err(e)))?;
            table
                .insert(key, bytes.as_slice())
                .map_err(|e| io_write(db_err(e)))?;
        }
        write.commit().map_err(|e| io_write(db_err(e)))?;
        Ok(())
    }

    fn read_range(
        db: &redb::Database,
        start: std::ops::Bound<u64>,
        end: std::ops::Bound<u64>,
    ) -> Result<Vec<Entry>, StorageError> {
        let read = db.begin_read().map_err(|e| io_read(db_err(e)))?;
        let table = read.open_table(LOG).map_err(|e| io_read(db_err(e)))?;
        let mut entries = Vec::new();
        for item in table
            .range::<u64>((start, end))
            .map_err(|e| io_read(db_err(e)))?
        {
            let (key, value) = item.map_err(|e| io_read(db_err(e)))?;
            let index = key.value();
            let entry: Entry = codec::decode_checked(value.value()).map_err(|e| {
                StorageError::from(openraft::StorageIOError::read_log_at_index(
                    index,
                    openraft::AnyError::error(e.to_string()),
                ))
            })?;
            entries.push(entry);
        }
        Ok(entries)
    }

    fn last_entry_log_id(db: &redb::Database) -> Result<Option<LogId>, StorageError> {
        let read = db.begin_read().map_err(|e| io_read(db_err(e)))?;
        let table = read.open_table(LOG).map_err(|e| io_read(db_err(e)))?;
        let Some((_, value)) = table.last().map_err(|e| io_read(db_err(e)))? else {
            return Ok(None);
        };
        let entry: Entry = codec::decode_checked(value.value()).map_err(io_read)?;
        Ok(Some(entry.log_id))
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let db = self.db.clone();
        let start = range.start_bound().cloned();
        let end = range.end_bound().cloned();
        blocking(move || LogStore::read_range(&db, start, end)).await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let db = self.db.clone();
        blocking(move || {
            let last_purged_log_id: Option<LogId> = LogStore::read_meta(&db, KEY_LAST_PURGED)?;
            let last_log_id = LogStore::last_entry_log_id(&db)?.or(last_purged_log_id);
            Ok(LogState {
                last_purged_log_id,
                last_log_id,
            })
        })
        .await
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let db = self.db.clone();
        let vote = *vote;
        blocking(move || {
            // Defence in depth: openraft never lowers the vote, and neither may a bug here.
            if let Some(stored) = LogStore::read_meta::<Vote>(&db, KEY_VOTE)? {
                if vote < stored {
                    return Err(
                        openraft::StorageIOError::write_vote(openraft::AnyError::error(format!(
                            "refusing to move the vote back from {stored} to {vote}"
                        )))
                        .into(),
                    );
                }
            }
            LogStore::write_meta(&db, KEY_VOTE, &vote, redb::Durability::Immediate)
        })
        .await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        let db = self.db.clone();
        blocking(move || LogStore::read_meta(&db, KEY_VOTE)).await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        let db = self.db.clone();
        // The committed id is an optimisation (openraft re-applies committed entries at start
        // instead of waiting to re-learn the commit index), not a safety property, so it is
        // written without its own fsync: redb makes it durable with the next durable commit
        // (the next append or vote), and a crash loses at most this hint.
        blocking(move || {
            LogStore::write_meta(&db, KEY_COMMITTED, &committed, redb::Durability::None)
        })
        .await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        let db = self.db.clone();
        blocking(move || Ok(LogStore::read_meta::<Option<LogId>>(&db, KEY_COMMITTED)?.flatten()))
            .await
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut framed = Vec::new();
        for entry in entries {
            let bytes = codec::encode_checked(&entry).map_err(|e| {
                StorageError::from(openraft::StorageIOError::write_log_entry(
                    entry.log_id,
                    openraft::AnyError::error(e.to_string()),
                ))
            })?;
            framed.push((entry.log_id.index, bytes));
        }
        let db = self.db.clone();
        let result = blocking(move || {
            let write = db.begin_write().map_err(|e| io_write(db_err(e)))?;
            {
                let mut table = write.open_table(LOG).map_err(|e| io_write(db_err(e)))?;
                for (index, bytes) in &framed {
                    table
                        .insert(*index, bytes.as_slice())
                        .map_err(|e| io_write(db_err(e)))?;
                }
            }
            // Durability::Immediate (redb's default): fsync before commit returns.
            write.commit().map_err(|e| io_write(db_err(e)))?;
            Ok(())
        })
        .await;
        match &result {
            Ok(()) => callback.log_io_completed(Ok(())),
            Err(e) => callback.log_io_completed(Err(std::io::Error::other(e.to_string()))),
        }
        result
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let db = self.db.clone();
        blocking(move || {
            let write = db.begin_write().map_err(|e| io_write(db_err(e)))?;
            {
                let mut table = write.open_table(LOG).map_err(|e| io_write(db_err(e)))?;
                table
                    .retain_in(log_id.index.., |_, _| false)
                    .map_err(|e| io_write(db_err(e)))?;
            }
            write.commit().map_err(|e| io_write(db_err(e)))?;
            Ok(())
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let db = self.db.clone();
        blocking(move || {
            let bytes = codec::encode_checked(&log_id).map_err(io_write)?;
            let write = db.begin_write().map_err(|e| io_write(db_err(e)))?;
            {
                let mut meta = write.open_table(META).map_err(|e| io_write(db_err(e)))?;
                meta.insert(KEY_LAST_PURGED, bytes.as_slice())
                    .map_err(|e| io_write(db_err(e)))?;
                let mut table = write.open_table(LOG).map_err(|e| io_write(db_err(e)))?;
                table
                    .retain_in(..=log_id.index, |_, _| false)
                    .map_err(|e| io_write(db_err(e)))?;
            }
            write.commit().map_err(|e| io_write(db_err(e)))?;
            Ok(())
        })
        .await
    }
}
