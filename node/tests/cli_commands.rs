//! Every client command of SPEC.md's table against a real `shoal dev` node, in human and
//! `--json` form: tokens, keys, audit, workstations (create, ls, show, resize, rm), exec, ps,
//! kill, logs, run (exit codes follow the program), status, nodes.

// Test code: a panic is the failure report (the workspace denies unwrap/expect elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cli_support;

use std::time::Duration;

use cli_support::{eventually, shoal, shoal_ok, DevCluster};
use serde_json::Value;
use tracing::info;

fn json(text: &str) -> anyhow::Result<Value> {
    Ok(serde_json::from_str(text)?)
}

#[test]
fn every_client_command_works_against_a_real_node() -> anyhow::Result<()> {
    cli_support::init_tracing();
    let cluster = DevCluster::start(1, Duration::from_secs(60))?;
    let (addr, key) = (cluster.addr.clone(), cluster.admin_key.clone());
    let (addr, key) = (addr.as_str(), key.as_str());
    let ok = |args: &[&str]| shoal_ok(addr, key, args);

    info!("--- join tokens: create prints the text once, ls shows the prefix, revoke");
    let token = ok(&[
        "token", "create", "--ttl", "10m", "--uses", "1", "--role", "worker",
    ])?;
    assert!(token.len() > 16, "{token}");
    let tokens = json(&ok(&["token", "ls", "--json"])?)?;
    let listed = tokens.as_array().map(Vec::len).unwrap_or(0);
    assert_eq!(listed, 1, "{tokens}");
    let token_id = tokens[0]["id"].as_str().unwrap_or_default().to_string();
    assert!(token.starts_with(tokens[0]["prefix"].as_str().unwrap_or("?")));
    assert!(
        !ok(&["token", "ls"])?.contains(&token),
        "token ls must not show the secret"
    );
    ok(&["token", "revoke", &token_id])?;
    assert_eq!(
        json(&ok(&["token", "ls", "--json"])?)?[0]["revoked"],
        Value::Bool(true)
    );

    info!("--- API keys: create for a tenant, ls, the tenant key works, revoke stops it");
    let tenant_key = ok(&["keys", "create", "--tenant", "acme"])?;
    let keys = json(&ok(&["keys", "ls", "--json"])?)?;
    let acme = keys
        .as_array()
        .and_then(|keys| keys.iter().find(|k| k["tenant"] == "acme"))
        .cloned()
        .unwrap_or_default();
    assert!(!ok(&["keys", "ls"])?.contains(&tenant_key));
    let acme_ws = shoal_ok(
        addr,
        &tenant_key,
        &["ws", "create", "--cpu", "100m", "--mem", "64MiB"],
    )?;
    assert!(acme_ws.starts_with("ws-"));
    ok(&["keys", "revoke", acme["id"].as_str().unwrap_or("?")])?;
    let refused = shoal(addr, Some(&tenant_key), &["ws", "ls"])?;
    assert_eq!(refused.status.code(), Some(4));

    info!("--- workstations: create, ls, show, resize, exec, ps, kill, logs, rm");
    let ws = ok(&[
        "ws",
        "create",
        "--name",
        "box",
        "--cpu",
        "0.25",
        "--mem",
        "128MiB",
        "--mem-limit",
        "256MiB",
        "--network",
        "none",
    ])?;
    let table = ok(&["ws", "ls"])?;
    assert!(
        table.contains(&ws) && table.contains("box") && table.contains(&acme_ws),
        "{table}"
    );
    let shown = json(&ok(&["ws", "show", &ws, "--json"])?)?;
    assert_eq!(shown["cpu_millis"], 250);
    assert_eq!(shown["memory_limit_bytes"], 256u64 << 20);
    let resized = json(&ok(&["ws", "resize", &ws, "--cpu", "0.5", "--json"])?)?;
    assert_eq!(resized["cpu_millis"], 500);
    assert!(ok(&["ws", "show", &ws])?.contains("0.5 reserved"));
    let sleeper = ok(&[
        "exec",
        &ws,
        "--restart",
        "never",
        "--env",
        "GREETING=hi",
        "--",
        "sh",
        "-c",
        "echo $GREETING; exec sleep 600",
    ])?;
    eventually(Duration::from_secs(20), "the greeting in the log", || {
        Ok(ok(&["logs", &ws])?.contains("hi").then_some(()))
    })?;
    let ps = ok(&["ps", &ws])?;
    assert!(ps.contains(&sleeper) && ps.contains("running"), "{ps}");
    let killed = ok(&["kill", &ws, &sleeper, "--signal", "KILL"])?;
    assert!(killed.contains("KILL"), "{killed}");
    eventually(
        Duration::from_secs(20),
        "the process to be reported exited",
        || {
            let processes = json(&ok(&["ps", &ws, "--json"])?)?;
            Ok((processes[0]["state"] == "exited").then_some(()))
        },
    )?;
    let page = json(&ok(&["logs", &ws, "--json"])?)?;
    assert!(
        page["records"].as_array().is_some_and(|r| !r.is_empty()),
        "{page}"
    );
    assert_eq!(page["next"], 3, "{page}");
    assert_eq!(ok(&["logs", &ws, "--from", "1"])?, "i");
    ok(&["ws", "rm", &ws])?;
    let gone = shoal(addr, Some(key), &["ws", "show", &ws])?;
    assert_eq!(gone.status.code(), Some(5));

    info!("--- runs exit with the program's code");
    let run = shoal(
        addr,
        Some(key),
        &[
            "run",
            "--timeout",
            "10s",
            "--mem",
            "128MiB",
            "--",
            "sh",
            "-c",
            "echo out; echo err >&2; exit 7",
        ],
    )?;
    assert_eq!(run.status.code(), Some(7));
    assert_eq!(String::from_utf8_lossy(&run.stdout), "out\n");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.starts_with("err\nnonzero_exit · exit 7 · "),
        "{stderr}"
    );
    let killed = shoal(addr, Some(key), &["run", "--", "sh", "-c", "kill -9 $$"])?;
    assert_eq!(
        killed.status.code(),
        Some(137),
        "{}",
        String::from_utf8_lossy(&killed.stderr)
    );
    let result = json(&ok(&["run", "--json", "--", "true"])?)?;
    assert_eq!(result["verdict"], "ok");

    info!("--- status, nodes, audit");
    let status = json(&ok(&["status", "--json"])?)?;
    assert!(
        status["pool"]["cpu_millis"]["capacity"]
            .as_u64()
            .unwrap_or(0)
            > 0,
        "{status}"
    );
    info!("--- connection flags before the subcommand win over SHOAL_ADDR, as after it");
    for args in [
        vec!["--addr", addr, "--token", key, "status", "--json"],
        vec!["status", "--addr", addr, "--token", key, "--json"],
        vec!["--json", "--addr", addr, "--token", key, "token", "ls"],
    ] {
        // SHOAL_ADDR points at a closed port: only the flags can reach the node.
        let output = shoal("http://127.0.0.1:9", None, &args)?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "shoal {args:?}: {stderr}");
        json(&String::from_utf8_lossy(&output.stdout))?;
    }
    let nodes = json(&ok(&["nodes", "--json"])?)?;
    assert_eq!(nodes.as_array().map(Vec::len), Some(1));
    let node_id = nodes[0]["id"].as_str().unwrap_or("?").to_string();
    assert!(ok(&["nodes"])?.contains(&node_id));
    info!("--- the last node cannot be drained or removed: the API's 409 in one line");
    for action in ["drain", "remove"] {
        let refused = shoal(addr, Some(key), &["nodes", action, &node_id])?;
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert_eq!(refused.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains("409") && stderr.lines().count() == 1,
            "{stderr}"
        );
    }
    let unknown = shoal(addr, Some(key), &["nodes", "remove", "n-unknown"])?;
    assert_eq!(unknown.status.code(), Some(5));
    let audit = ok(&["audit", "--since", "1h"])?;
    for action in [
        "workstation.create",
        "workstation.resize",
        "workstation.delete",
        "process.create",
        "process.kill",
        "key.create",
        "key.revoke",
        "token.create",
        "token.revoke",
    ] {
        assert!(audit.contains(action), "audit lacks {action}: {audit}");
    }
    let future = json(&ok(&[
        "audit",
        "--since",
        "2999-01-01T00:00:00Z",
        "--json",
    ])?)?;
    assert_eq!(future.as_array().map(Vec::len), Some(0), "{future}");
    Ok(())
}

/// `shoal nodes drain` on a node whose workstation fits nowhere else yet: waiting for room is
/// progress, not failure. Bounded, it ends with one clear line saying what is left; unbounded,
/// it keeps looking (a line on stderr per change) and succeeds once room appears.
#[test]
fn nodes_drain_waits_for_room_with_progress_and_finishes_once_room_appears() -> anyhow::Result<()> {
    cli_support::init_tracing();
    let cluster = DevCluster::start(2, Duration::from_secs(90))?;
    let (addr, key) = (cluster.addr.clone(), cluster.admin_key.clone());
    let (addr, key) = (addr.as_str(), key.as_str());
    let ok = |args: &[&str]| shoal_ok(addr, key, args);

    info!("--- two nodes, each filled most of the way by one workstation");
    let nodes = eventually(Duration::from_secs(60), "two ready nodes", || {
        let nodes = json(&ok(&["nodes", "--json"])?)?;
        let ready = nodes.as_array().is_some_and(|nodes| {
            nodes.len() == 2
                && nodes.iter().all(|node| {
                    node["state"] == "ready" && node["capacity"]["cpu_millis"].as_u64() > Some(0)
                })
        });
        Ok(ready.then_some(nodes))
    })?;
    let allocatable = nodes
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|node| {
            let capacity = node["capacity"]["cpu_millis"].as_u64()?;
            let reserve = node["reserve"]["cpu_millis"].as_u64().unwrap_or(0);
            Some(capacity.saturating_sub(reserve))
        })
        .min()
        .unwrap_or(0);
    anyhow::ensure!(allocatable >= 10, "nodes report no CPU: {nodes}");
    let big = format!("{}m", allocatable * 6 / 10);
    let mut placed = Vec::new();
    for _ in 0..2 {
        let ws = json(&ok(&[
            "ws", "create", "--cpu", &big, "--mem", "64MiB", "--json",
        ])?)?;
        placed.push((
            ws["id"].as_str().unwrap_or_default().to_string(),
            ws["node"].as_str().unwrap_or_default().to_string(),
        ));
    }
    let (drained_ws, drained) = placed[0].clone();
    let (blocker_ws, blocker_node) = placed[1].clone();
    assert_ne!(drained, blocker_node, "one per node: {placed:?}");

    info!("--- a bounded drain: its workstation fits nowhere else, so it ends saying what is left");
    let bounded = shoal(
        addr,
        Some(key),
        &["nodes", "drain", &drained, "--wait-timeout", "3s"],
    )?;
    let stderr = String::from_utf8_lossy(&bounded.stderr);
    assert_eq!(bounded.status.code(), Some(1), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.contains(&format!("node {drained} is not drained after 3s"))
            && last.contains("1 workstation(s) left")
            && last.contains("it keeps draining"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("draining node {drained}: 1 workstation(s) left")),
        "progress lines: {stderr}"
    );
    let ws = json(&ok(&["ws", "show", &drained_ws, "--json"])?)?;
    assert_eq!(
        ws["node"],
        drained.as_str(),
        "it stays until room appears: {ws}"
    );

    info!("--- an unbounded drain keeps waiting; room appears; it finishes");
    let waiting = std::process::Command::new(cli_support::SHOAL)
        .args(["nodes", "drain", &drained, "--wait-timeout", "80s"])
        .env("SHOAL_ADDR", addr)
        .env("SHOAL_TOKEN", key)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    ok(&["ws", "rm", &blocker_ws])?;
    let finished = cli_support::wait_output(waiting, Duration::from_secs(90))?;
    let stderr = String::from_utf8_lossy(&finished.stderr);
    assert!(finished.status.success(), "{stderr}");
    assert_eq!(
        String::from_utf8_lossy(&finished.stdout).trim(),
        format!("node {drained} is drained"),
        "{stderr}"
    );
    let ws = json(&ok(&["ws", "show", &drained_ws, "--json"])?)?;
    assert_eq!(ws["node"], blocker_node.as_str(), "moved: {ws}");
    Ok(())
}
