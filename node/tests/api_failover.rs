//! Failover with a server that restarts while the leader is gone. A restarted server has
//! replayed its log, so it knows every voter; it must reach them over the mesh at once, not only
//! the peers its join answer named, or a cluster whose leader died meanwhile has no quorum until
//! the old leader comes back (chaos soak, seed 4326430475747548734, fault 2: 2.5 s without a
//! leader).

// Test code: a panic is the failure report (the workspace denies unwrap/expect elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{bail, Context};
use common::{eventually, start_three_nodes, Api};
use serde_json::json;
use tracing::info;

/// Bounded waits: joins, elections and replication on a shared 2-core machine.
const CLUSTER_WAIT: Duration = Duration::from_secs(60);
/// How long the restarted agent may take to print its ready line.
const READY_WAIT: Duration = Duration::from_secs(30);
/// What the agent logs when it gave up waiting for a leader at start.
const NO_LEADER_AT_START: &str = "no raft leader known yet";

/// A restarted `shoal agent` whose log (stderr) the test reads; killed on drop.
struct CapturedAgent {
    child: Option<Child>,
    stderr: Option<std::thread::JoinHandle<Vec<String>>>,
}

impl CapturedAgent {
    /// Starts the node in `data_dir` again on its API and WireGuard ports, and waits for its
    /// ready line.
    fn restart(
        data_dir: &Path,
        config: &str,
        api_port: u16,
        listen_port: u16,
    ) -> anyhow::Result<Self> {
        let mut child = common::agent_command(data_dir, api_port, listen_port)
            .arg("--config")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawning shoal agent")?;
        let stdout = child.stdout.take().context("agent stdout")?;
        let stderr = child.stderr.take().context("agent stderr")?;
        let mut agent = CapturedAgent {
            child: Some(child),
            stderr: Some(std::thread::spawn(move || {
                BufReader::new(stderr)
                    .lines()
                    .map_while(Result::ok)
                    .collect()
            })),
        };
        let (sender, receiver) = mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = sender.send(line);
            }
        });
        loop {
            match receiver.recv_timeout(READY_WAIT) {
                Ok(line) if line.starts_with("shoal-agent ready") => return Ok(agent),
                Ok(_) => {}
                Err(_) => {
                    let log = agent.stop().join("\n");
                    bail!("the restarted agent did not print its ready line; its log:\n{log}");
                }
            }
        }
    }

    /// Kills the agent and returns every line it logged.
    fn stop(&mut self) -> Vec<String> {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.stderr
            .take()
            .and_then(|reader| reader.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for CapturedAgent {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn leader_of(api: &Api) -> Option<String> {
    let answer = api.get("/v1/cluster").await.ok()?;
    answer.body["leader"].as_str().map(str::to_string)
}

async fn term_of(api: &Api) -> Option<u64> {
    let answer = api.get("/v1/cluster").await.ok()?;
    answer.body["term"].as_u64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restarted_while_the_leader_is_down_reaches_the_voters_its_join_answer_did_not_name(
) -> anyhow::Result<()> {
    common::init_tracing();
    let temp = tempfile::tempdir()?;

    info!("--- three servers: node 0 bootstraps, node 1 joins, then node 2 joins");
    let mut cluster = start_three_nodes(temp.path(), 10_000, CLUSTER_WAIT).await?;
    let api0 = cluster.agents[0].client(&cluster.admin_key);
    let leader_id = eventually(CLUSTER_WAIT, || async { Ok(leader_of(&api0).await) }).await?;
    let leader = cluster
        .agents
        .iter()
        .position(|agent| agent.node_id == leader_id)
        .context("the leader is none of the three")?;
    // The follower to restart must not know the third server from its member file: node 0
    // bootstrapped (its join answer named nobody) and node 1's join answer named only node 0.
    let follower = if leader == 0 { 1 } else { 0 };
    let other = 3 - leader - follower;
    let follower_api = cluster.agents[follower].client(&cluster.admin_key);
    let term_before = term_of(&follower_api)
        .await
        .context("the follower's term")?;
    info!(
        leader,
        follower, other, "--- kill the third server and the leader: the follower alone campaigns"
    );
    cluster.agents[other].kill9();
    cluster.agents[leader].kill9();
    // A candidate's vote is not committed, so after its restart it knows no leader and waits
    // for one; that wait is where only the join answer's peers were reachable.
    eventually(CLUSTER_WAIT, || async {
        Ok(term_of(&follower_api)
            .await
            .filter(|term| *term > term_before))
    })
    .await?;
    let ports = |idx: usize| {
        let agent = &cluster.agents[idx];
        (agent.data_dir.clone(), agent.api_port, agent.listen_port)
    };
    let (follower_dir, follower_api_port, follower_listen_port) = ports(follower);
    let (other_dir, other_api_port, other_listen_port) = ports(other);
    cluster.agents[follower].kill9();

    info!("--- restart the third server, then the follower (a candidate when it stopped); the leader stays down");
    let _other = CapturedAgent::restart(
        &other_dir,
        &cluster.config,
        other_api_port,
        other_listen_port,
    )?;
    let mut restarted = CapturedAgent::restart(
        &follower_dir,
        &cluster.config,
        follower_api_port,
        follower_listen_port,
    )?;
    let new_leader = eventually(CLUSTER_WAIT, || async {
        Ok(leader_of(&follower_api).await)
    })
    .await?;
    assert_ne!(new_leader, leader_id, "the killed leader cannot lead");

    info!("--- a write through the restarted follower is acknowledged");
    eventually(CLUSTER_WAIT, || async {
        let answer = follower_api.post("/v1/tokens", &json!({"uses": 1})).await;
        Ok(answer
            .is_ok_and(|answer| answer.status == 201)
            .then_some(()))
    })
    .await?;
    let log = restarted.stop();
    assert!(
        !log.iter().any(|line| line.contains(NO_LEADER_AT_START)),
        "the restarted follower found no leader during its start-up wait: it could not reach \
         the third server; its log:\n{}",
        log.join("\n")
    );
    Ok(())
}
