//! The per-node workstation maximum bounds what a node hosts, whichever node takes the
//! request: it is part of each node's committed capacity and the scheduler's fit rule, not a
//! count the receiving node checks against its own workstations.

mod common;

use std::time::Duration;

use serde_json::json;
use tracing::info;

const CLUSTER_WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_node_hosts_more_than_its_workstation_maximum_whichever_node_is_asked(
) -> anyhow::Result<()> {
    common::init_tracing();
    let temp = tempfile::tempdir()?;
    let cluster = common::start_three_nodes_with_config(
        temp.path(),
        10_000,
        "workstations_per_node_max = 1\n",
        CLUSTER_WAIT,
    )
    .await?;
    let admin = cluster.agents[0].client(&cluster.admin_key);

    info!("--- every node states its maximum of 1 in its committed capacity");
    common::eventually(CLUSTER_WAIT, || async {
        let nodes = admin.get("/v1/nodes").await?;
        let all = nodes.body.as_array().is_some_and(|nodes| {
            nodes.len() == 3
                && nodes
                    .iter()
                    .all(|node| node["workstations_max"] == json!(1))
        });
        Ok(all.then_some(()))
    })
    .await?;

    info!("--- three workstations, all asked of node 0: one lands on each node");
    let mut hosts = Vec::new();
    for _ in 0..3 {
        let created = admin
            .post(
                "/v1/workstations",
                &json!({"cpu_millis": 10, "memory_bytes": 8 << 20}),
            )
            .await?;
        anyhow::ensure!(created.status == 201, "{}", created.text);
        hosts.push(
            created.body["node"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        );
    }
    hosts.sort();
    hosts.dedup();
    assert_eq!(hosts.len(), 3, "two workstations share a node: {hosts:?}");

    info!("--- a fourth fits nowhere now, asked of any node: 503 with Retry-After, nothing placed");
    for agent in &cluster.agents {
        let refused = agent
            .client(&cluster.admin_key)
            .post(
                "/v1/workstations",
                &json!({"cpu_millis": 10, "memory_bytes": 8 << 20}),
            )
            .await?;
        assert_eq!(refused.status, 503, "{}", refused.text);
        assert!(refused.retry_after.is_some(), "{}", refused.text);
    }
    let listed = admin.get("/v1/workstations").await?;
    assert_eq!(
        listed.body.as_array().map(Vec::len),
        Some(3),
        "{}",
        listed.text
    );
    Ok(())
}
