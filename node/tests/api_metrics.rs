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
    let mut apis: Vec<Api> = cluster
        .agents
        .iter()
        .map(|agent| agent.client(&cluster.admin_key))
        .collect();

    info!("--- a worker-only node joins: it mirrors the state and never leads");
    let token = apis[0]
        .post("/v1/tokens", &json!({"uses": 1, "role": "worker"}))
        .await?;
    anyhow::ensure!(token.status == 201, "{}", token.text);
    let token = token.body["token"].as_str().unwrap_or_default().to_string();
    let worker = Agent::start(
        &temp.path().join("worker"),
        &[
            "--join",
            &token,
            "--role",
            "worker",
            "--config",
            &cluster.config,
        ],
        common::free_tcp_port(),
    )?;
    // Index 3 of `apis`: the worker.
    apis.push(worker.client(&cluster.admin_key));

    info!("--- one of the three servers reports leading; all four the same term and a lease");
    let (leader, term) = eventually(CLUSTER_WAIT, || async {
        Ok(one_leader_one_term(&leadership(&apis).await))
    })
    .await?;
    assert!(leader < 3, "the worker-only node reported leading");
    let named = apis[(leader + 1) % 3].get("/v1/cluster").await?;
    assert_eq!(
        named.body["leader"].as_str(),
        Some(cluster.agents[leader].node_id.as_str()),
        "the node reporting shoal_is_leader 1 is the leader the cluster names"
    );
    eventually(CLUSTER_WAIT, || async {
        let mut all_held = true;
        for api in &apis {
            all_held &= value(&scrape(api).await?, "shoal_lease_held") == Some(1.0);
        }
        Ok(all_held.then_some(()))
    })
    .await
    .context("not every node reports its lease held")?;

    let changes = "shoal_raft_leader_changes_total";
    let mut changes_before = Vec::new();
    for api in &apis {
        changes_before.push(value(&scrape(api).await?, changes).context("no leader changes")?);
    }
    info!(
        leader,
        term, "--- kill -9 the leader: one server leads, all report a higher term"
    );
    cluster.agents[leader].kill9();
    let survivors: Vec<usize> = (0..4).filter(|i| *i != leader).collect();
    let survivor_apis: Vec<Api> = survivors.iter().map(|i| apis[*i].clone()).collect();
    let (new_leader, new_term) = eventually(CLUSTER_WAIT, || async {
        Ok(one_leader_one_term(&leadership(&survivor_apis).await)
            .filter(|(_, new_term)| *new_term > term))
    })
    .await
    .context("no single survivor reported leading at a higher term")?;
    let new_leader = survivors[new_leader];
    assert!(new_leader < 3, "the worker-only node reported leading");
    info!(new_leader, new_term, "a surviving server leads");
    eventually(CLUSTER_WAIT, || async {
        let mut all_counted = true;
        for i in &survivors {
            let seen = value(&scrape(&apis[*i]).await?, changes).unwrap_or(0.0);
            all_counted &= seen > changes_before[*i];
        }
        Ok(all_counted.then_some(()))
    })
    .await
    .context("a survivor (the worker too) did not count the leader change")?;

    info!("--- after the heartbeat grace the new leader counts the killed node down");
    let down = "shoal_nodes{state=\"down\"}";
    assert_eq!(
        value(&scrape(&apis[new_leader]).await?, down),
        Some(0.0),
        "no node is down yet"
    );
    eventually(CLUSTER_WAIT, || async {
        let text = scrape(&apis[new_leader]).await?;
        Ok((value(&text, down) == Some(1.0)).then_some(()))
    })
    .await
    .context("the killed leader was never counted down")?;

    info!("--- kill the new leader too: the lone server is not acknowledged and loses its lease");
    cluster.agents[new_leader].kill9();
    let lone = (0..3)
        .find(|i| *i != leader && *i != new_leader)
        .context("no third server")?;
    let lone = &apis[lone];
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

    info!("--- its reservation is in the pool; a process runs and its output is counted");
    let reserved = "shoal_pool_cpu_millis{kind=\"reserved\"}";
    assert_eq!(
        value(&after, reserved).unwrap_or(0.0) - value(&before, reserved).unwrap_or(0.0),
        100.0,
        "{after}"
    );
    let reserved_memory = "shoal_pool_memory_bytes{kind=\"reserved\"}";
    assert_eq!(
        value(&after, reserved_memory).unwrap_or(0.0)
            - value(&before, reserved_memory).unwrap_or(0.0),
        f64::from(64u32 << 20),
        "{after}"
    );
    let processes_running = "shoal_processes{state=\"running\"}";
    let written = "shoal_log_bytes_written";
    assert_eq!(value(&after, processes_running), Some(0.0), "{after}");
    assert_eq!(value(&after, written), Some(0.0), "{after}");
    let started = api
        .post(
            &format!("/v1/workstations/{id}/processes"),
            &json!({"argv": ["sh", "-c", "echo hello-metrics; exec sleep 600"]}),
        )
        .await?;
    assert_eq!(started.status, 201, "{}", started.text);
    eventually(CLUSTER_WAIT, || async {
        let text = scrape(&api).await?;
        let running = value(&text, processes_running) == Some(1.0);
        // "hello-metrics\n" is 14 bytes.
        let logged = value(&text, written).unwrap_or(0.0) >= 14.0;
        Ok((running && logged).then_some(()))
    })
    .await
    .context("the process or its output was not counted")?;

    info!("--- 6 MB of output through the 5 MiB buffer: the overwritten bytes are counted dropped");
    let dropped = "shoal_log_bytes_dropped";
    assert_eq!(value(&scrape(&api).await?, dropped), Some(0.0));
    let flood = api
        .post(
            &format!("/v1/workstations/{id}/processes"),
            &json!({"argv": ["sh", "-c", "head -c 6000000 /dev/zero | tr '\\0' a"], "restart": "never"}),
        )
        .await?;
    assert_eq!(flood.status, 201, "{}", flood.text);
    eventually(CLUSTER_WAIT, || async {
        let text = scrape(&api).await?;
        // 6,000,000 bytes and more through a ring of 5,242,880.
        Ok((value(&text, dropped).unwrap_or(0.0) >= 757_120.0).then_some(()))
    })
    .await
    .context("the overwritten log bytes were not counted dropped")?;

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
    let errors_4xx = "shoal_http_requests_total{class=\"4xx\"}";
    let errors_before = value(&scrape(&api).await?, errors_4xx).unwrap_or(0.0);
    let missing = api.get("/v1/no/such/thing").await?;
    assert_eq!(missing.status, 404);
    let after = scrape(&api).await?;
    assert_eq!(
        value(&after, errors_4xx),
        Some(errors_before + 1.0),
        "one more 4xx answer: {after}"
    );
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
