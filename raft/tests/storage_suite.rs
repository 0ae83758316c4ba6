//! openraft's storage conformance suite against the redb store, each test on a fresh data dir.

// Test code: a panic is the failure report (the workspace denies unwrap/expect elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use openraft::testing::StoreBuilder;
use openraft::testing::Suite;
use shoal_raft::store;
use shoal_raft::store::LogStore;
use shoal_raft::store::StateMachineStore;
use shoal_raft::types::StorageError;
use shoal_raft::types::TypeConfig;

struct RedbBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for RedbBuilder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachineStore), StorageError> {
        let dir = tempfile::tempdir().map_err(|e| {
            openraft::StorageIOError::write(openraft::AnyError::error(e.to_string()))
        })?;
        let (log_store, state_machine) = store::open(dir.path()).map_err(|e| {
            openraft::StorageIOError::read(openraft::AnyError::error(e.to_string()))
        })?;
        Ok((dir, log_store, state_machine))
    }
}

#[test]
fn redb_store_passes_openraft_storage_suite() -> anyhow::Result<()> {
    Suite::test_all(RedbBuilder).map_err(|e| anyhow::anyhow!("storage suite failed: {e}"))?;
    Ok(())
}
