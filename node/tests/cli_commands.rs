//! Every client command of SPEC.md's table against a real `shoal dev` node, in human and
//! `--json` form: tokens, keys, audit, workstations (create, ls, show, resize, rm), exec, ps,
//! kill, logs, run (exit codes follow the program), status, nodes.

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
