//! `/metrics` follows the truth: each test changes something (kills the leader, loses the
//! lease, creates a workstation, runs a program, sends a request) and sees the series move on
//! real `shoal agent` processes.

mod common;

use std::time::Duration;

use anyhow::Context;
use common::{eventually, start_three_nodes, Agent, Api};
use serde_json::json;
use tracing::info;

/// Bounded waits: joins, elections and replication on a shared 2-core machine.
const CLUSTER_WAIT: Duration = Duration::from_secs(60);
/// A lone server stops being acknowledged; its lease (half the 10 s grace) runs out after this
/// at most, with room for a slow machine.
const LEASE_LOSS_WAIT: Duration = Duration::from_secs(20);

/// The page of `GET /metrics` (no key needed).
async fn scrape(api: &Api) -> anyhow::Result<String> {
    let answer = api.anonymous().get("/metrics").await?;
    anyhow::ensure!(answer.status == 200, "/metrics answered {}", answer.status);
    Ok(answer.text)
}

/// The value of exactly `series` (name and labels as printed) in a metrics page.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// (is_leader, term) of every reachable node, in order; `None` for one that did not answer.
async fn leadership(apis: &[Api]) -> Vec<Option<(f64, f64)>> {
    let mut all = Vec::new();
    for api in apis {
        let seen = match scrape(api).await {
            Ok(text) => value(&text, "shoal_is_leader").zip(value(&text, "shoal_raft_term")),
            Err(_) => None,
        };
        all.push(seen);
    }
    all
}

/// Some((index of the one leader, the common term)) when every node answered, exactly one
/// reports `shoal_is_leader 1`, the others 0, and all report the same term.
fn one_leader_one_term(seen: &[Option<(f64, f64)>]) -> Option<(usize, f64)> {
    let seen: Vec<(f64, f64)> = seen.iter().copied().collect::<Option<_>>()?;
    let leaders: Vec<usize> = (0..seen.len()).filter(|i| seen[*i].0 == 1.0).collect();
    let others_zero = seen.iter().filter(|(l, _)| *l == 0.0).count() == seen.len() - 1;
    let term = seen.first()?.1;
    let same_term = seen.iter().all(|(_, t)| *t == term);
    (leaders.len() == 1 && others_zero && same_term).then(|| (leaders[0], term))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_reports_leading_and_after_its_kill_one_survivor_does_at_a_higher_term(
) -> anyhow::Result<()> {
    common::init_tracing();
    let temp = tempfile::tempdir()?;
    let mut cluster = start_three_nodes(temp.path(), 10_000, CLUSTER_WAIT).await?;
    let apis: Vec<Api> = cluster
        .agents
        .iter()
        .map(|agent| agent.client(&cluster.admin_key))
        .collect();

    info!("--- three servers: exactly one reports leading, all the same term, all hold a lease");
    let (leader, term) = eventually(CLUSTER_WAIT, || async {
        Ok(one_leader_one_term(&leadership(&apis).await))
    })
    .await?;
    let named = apis[(leader + 1) % 3].get("/v1/cluster").await?;
    assert_eq!(
        named.body["leader"].as_str(),
        Some(cluster.agents[leader].node_id.as_str()),
        "the node reporting shoal_is_leader 1 is the leader the cluster names"
    );
    for api in &apis {
        let text = scrape(api).await?;
        assert_eq!(value(&text, "shoal_lease_held"), Some(1.0), "{text}");
    }

    info!(
        leader,
        term, "--- kill -9 the leader: one survivor leads, at a higher term"
    );
    cluster.agents[leader].kill9();
    let survivors: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let survivor_apis: Vec<Api> = survivors.iter().map(|i| apis[*i].clone()).collect();
    let (new_leader, new_term) = eventually(CLUSTER_WAIT, || async {
        Ok(one_leader_one_term(&leadership(&survivor_apis).await)
            .filter(|(_, new_term)| *new_term > term))
    })
    .await
    .context("no single survivor reported leading at a higher term")?;
    info!(
        new_leader = survivors[new_leader],
        new_term, "a survivor leads"
    );

    info!("--- kill the new leader too: the lone server is not acknowledged and loses its lease");
    cluster.agents[survivors[new_leader]].kill9();
    let lone = &survivor_apis[1 - new_leader];
    eventually(LEASE_LOSS_WAIT, || async {
        let text = scrape(lone).await?;
        Ok((value(&text, "shoal_lease_held") == Some(0.0)).then_some(()))
    })
    .await
    .context("the lone server still reports its lease held")?;
    Ok(())
}

#[tokio::test]
async fn a_workstation_a_run_and_a_request_move_their_series() -> anyhow::Result<()> {
    common::init_tracing();
    let agent = Agent::bootstrap()?;
    let api = agent.client(&agent.admin_key()?);

    let before = scrape(&api).await?;
    let running = "shoal_workstations{state=\"running\"}";
    let placements = "shoal_placement_duration_seconds_count";
    let commits = "shoal_raft_commit_duration_seconds_count{result=\"applied\"}";
    let runs_ok = "shoal_runs_total{verdict=\"ok\"}";
    let run_durations = "shoal_run_duration_seconds_count{verdict=\"ok\"}";
    let show_route = "shoal_http_request_duration_seconds_count{route=\"/v1/workstations/{id}\",method=\"GET\",class=\"2xx\"}";
    assert_eq!(value(&before, running), Some(0.0), "{before}");
    assert_eq!(value(&before, placements), Some(0.0), "{before}");
    assert_eq!(value(&before, runs_ok), Some(0.0), "{before}");
    assert_eq!(value(&before, run_durations), Some(0.0), "{before}");
    assert_eq!(value(&before, show_route), None, "no such request yet");
    let commits_before = value(&before, commits).unwrap_or(0.0);

    info!("--- a workstation is created: one more running on its host, one placement, one commit");
    let created = api
        .post(
            "/v1/workstations",
            &json!({"cpu_millis": 100, "memory_bytes": 64 << 20}),
        )
        .await?;
    assert_eq!(created.status, 201, "{}", created.text);
    assert_eq!(created.body["node"].as_str(), Some(agent.node_id.as_str()));
    let id = created.body["id"].as_str().unwrap_or_default().to_string();
    let after = eventually(CLUSTER_WAIT, || async {
        let text = scrape(&api).await?;
        Ok((value(&text, running) == Some(1.0)).then_some(text))
    })
    .await
    .context("shoal_workstations{state=\"running\"} did not reach 1")?;
    assert_eq!(value(&after, placements), Some(1.0), "{after}");
    assert!(
        value(&after, commits).unwrap_or(0.0) > commits_before,
        "the create's proposal is counted: {after}"
    );

    info!("--- a run: one more ok verdict and one more run duration");
    let run = api.post("/v1/runs", &json!({"argv": ["true"]})).await?;
    assert_eq!(run.status, 200, "{}", run.text);
    assert_eq!(run.body["verdict"], json!("ok"));
    let after = scrape(&api).await?;
    assert_eq!(value(&after, runs_ok), Some(1.0), "{after}");
    assert_eq!(value(&after, run_durations), Some(1.0), "{after}");

    info!("--- two reads of the workstation: its route's latency count is 2");
    for _ in 0..2 {
        let shown = api.get(&format!("/v1/workstations/{id}")).await?;
        assert_eq!(shown.status, 200, "{}", shown.text);
    }
    let after = scrape(&api).await?;
    assert_eq!(value(&after, show_route), Some(2.0), "{after}");

    info!("--- a path no route matches is counted under one fixed label");
    let missing = api.get("/v1/no/such/thing").await?;
    assert_eq!(missing.status, 404);
    let after = scrape(&api).await?;
    assert_eq!(
        value(
            &after,
            "shoal_http_request_duration_seconds_count{route=\"unmatched\",method=\"GET\",class=\"4xx\"}"
        ),
        Some(1.0),
        "{after}"
    );
    assert!(
        !after.contains("/v1/no/such/thing"),
        "a raw path became a label"
    );
    Ok(())
}
