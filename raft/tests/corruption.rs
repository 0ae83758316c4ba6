//! A node whose stored log or snapshot is corrupt refuses to start, with a message that says
//! what is corrupt, instead of joining the cluster with bad data.

// Test code: a panic is the failure report (the workspace denies unwrap/expect elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use anyhow::ensure;
use common::*;
use redb::ReadableTable;
use shoal_raft::store::StoreError;
use shoal_raft::Action;
use shoal_raft::Command;
use shoal_raft::StartError;

const LOG: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("log");
const SNAPSHOT: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("snapshot");

/// Runs a one-node cluster with a few commands and a snapshot, then stops it.
async fn prepared_cluster() -> anyhow::Result<Cluster> {
    let mut cluster = Cluster::new(test_config)?;
    let node = cluster.start(1).await?;
    bootstrap(&node).await?;
    for i in 0..5 {
        cluster
            .write(Command::new(
                i,
                "admin",
                Action::CreateTenant {
                    tenant: format!("t{i}"),
                },
            ))
            .await??;
    }
    node.trigger_snapshot().await?;
    let mut metrics = node.metrics();
    let built = tokio::time::timeout(WAIT, metrics.wait_for(|m| m.snapshot.is_some()))
        .await
        .is_ok_and(|r| r.is_ok());
    ensure!(built, "no snapshot");
    cluster
        .write(Command::new(
            9,
            "admin",
            Action::CreateTenant {
                tenant: "after".into(),
            },
        ))
        .await??;
    cluster.kill(1).await?;
    Ok(cluster)
}

fn flip_last_byte(value: &mut [u8]) {
    if let Some(last) = value.last_mut() {
        *last ^= 0x01;
    }
}

fn corrupt_log_entry(cluster: &Cluster, index: u64) -> anyhow::Result<()> {
    let db = redb::Database::open(cluster.dir(1).join("raft.redb"))?;
    let write = db.begin_write()?;
    {
        let mut t = write.open_table(LOG)?;
        let mut value = t
            .get(index)?
            .ok_or_else(|| anyhow::anyhow!("no entry"))?
            .value()
            .to_vec();
        flip_last_byte(&mut value);
        t.insert(index, value.as_slice())?;
    }
    write.commit()?;
    Ok(())
}

fn corrupt_snapshot(cluster: &Cluster) -> anyhow::Result<()> {
    let db = redb::Database::open(cluster.dir(1).join("raft.redb"))?;
    let write = db.begin_write()?;
    {
        let mut t = write.open_table(SNAPSHOT)?;
        let mut value = t
            .get("current")?
            .ok_or_else(|| anyhow::anyhow!("no snapshot"))?
            .value()
            .to_vec();
        flip_last_byte(&mut value);
        t.insert("current", value.as_slice())?;
    }
    write.commit()?;
    Ok(())
}

async fn expect_refusal(cluster: &mut Cluster, what: &str) -> anyhow::Result<()> {
    match cluster.start(1).await {
        Ok(_) => anyhow::bail!("a node with a corrupt {what} started"),
        Err(e) => {
            let Some(StartError::Store(StoreError::Corrupt { what: found, .. })) =
                e.downcast_ref::<StartError>()
            else {
                anyhow::bail!("wrong error: {e:#}");
            };
            ensure!(found.contains(what), "reported {found}, expected {what}");
            let message = format!("{:#}", e);
            ensure!(message.contains("refusing to start"), "{message}");
            tracing::info!(%message, "refused as expected");
            Ok(())
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_log_entry_refuses_start() -> anyhow::Result<()> {
    init_tracing();
    let mut cluster = prepared_cluster().await?;
    let last_index = {
        let db = redb::Database::open(cluster.dir(1).join("raft.redb"))?;
        let read = db.begin_read()?;
        let table = read.open_table(LOG)?;
        let last = table.last()?.map(|(k, _)| k.value());
        last.ok_or_else(|| anyhow::anyhow!("empty log"))?
    };
    corrupt_log_entry(&cluster, last_index)?;
    expect_refusal(&mut cluster, &format!("log entry {last_index}")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_snapshot_refuses_start() -> anyhow::Result<()> {
    init_tracing();
    let mut cluster = prepared_cluster().await?;
    corrupt_snapshot(&cluster)?;
    expect_refusal(&mut cluster, "snapshot").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intact_store_restarts_with_its_state() -> anyhow::Result<()> {
    init_tracing();
    let mut cluster = prepared_cluster().await?;
    let node = cluster.start(1).await?;
    cluster.wait_leader(None).await?;
    let n_tenants = node.read(|s| s.tenants.len());
    ensure!(n_tenants == 6, "tenants after restart: {n_tenants}");
    cluster.kill(1).await?;
    Ok(())
}
