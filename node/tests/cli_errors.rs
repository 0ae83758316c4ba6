//! Error paths of the client commands: one line on stderr, the documented exit code, never a
//! panic or a backtrace; usage errors are clap's (exit 2) before any request is sent.

// Test code: a panic is the failure report (the workspace denies unwrap/expect elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cli_support;

use std::net::TcpListener;
use std::time::Duration;

use cli_support::{shoal, shoal_ok, DevCluster};
use tracing::info;

/// A loopback port nothing listens on (bound, then released).
fn closed_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

fn stderr_of(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).to_string()
}

fn assert_one_line_error(output: &std::process::Output, code: i32, mentions: &str) {
    let stderr = stderr_of(output);
    assert_eq!(output.status.code(), Some(code), "stderr: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "not one line: {stderr}");
    assert!(stderr.starts_with("shoal: "), "{stderr}");
    assert!(stderr.contains(mentions), "`{stderr}` lacks `{mentions}`");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("backtrace"),
        "{stderr}"
    );
    assert!(
        output.stdout.is_empty(),
        "stdout: {}",
        String::from_utf8_lossy(&output.stdout)
    );
}

#[test]
fn an_unreachable_node_is_one_line_and_exit_code_3() -> anyhow::Result<()> {
    cli_support::init_tracing();
    let addr = format!("http://127.0.0.1:{}", closed_port()?);
    for args in [
        &["status"][..],
        &["nodes"],
        &["ws", "ls"],
        &["logs", "ws-1"],
        &["run", "--", "true"],
        &["audit", "--since", "1h"],
    ] {
        let output = shoal(&addr, Some("k"), args)?;
        assert_one_line_error(
            &output,
            3,
            &format!("cannot reach {addr}: connection refused"),
        );
    }
    info!("--- --addr overrides SHOAL_ADDR");
    let output = shoal("http://127.0.0.1:1", None, &["status", "--addr", &addr])?;
    assert_one_line_error(&output, 3, &addr);
    Ok(())
}

#[test]
fn bad_flags_and_values_are_clap_usage_errors_with_exit_code_2() -> anyhow::Result<()> {
    cli_support::init_tracing();
    let addr = format!("http://127.0.0.1:{}", closed_port()?);
    for (args, mentions) in [
        (&["ws", "create", "--bogus"][..], "--bogus"),
        (&["ws", "create", "--mem", "lots"], "--mem"),
        (&["run", "--timeout", "soon", "x.py"], "--timeout"),
        (&["exec", "ws-1"], "CMD"),
        (&["nosuchcommand"], "nosuchcommand"),
    ] {
        let output = shoal(&addr, None, args)?;
        let stderr = stderr_of(&output);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.starts_with("error: "), "{args:?}: {stderr}");
        assert!(stderr.contains(mentions), "{args:?}: {stderr}");
    }
    info!("--- our own usage errors (valid for clap) are one line and exit code 2 too");
    let output = shoal(&addr, None, &["run"])?;
    assert_one_line_error(&output, 2, "nothing to run");
    let output = shoal(&addr, None, &["status", "--addr", "ftp://x"])?;
    assert_one_line_error(&output, 2, "invalid address");
    Ok(())
}

#[test]
fn help_documents_the_exit_codes() -> anyhow::Result<()> {
    let output = shoal("http://127.0.0.1:1", None, &["run", "--help"])?;
    let help = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0));
    for needle in [
        "Exit codes:",
        "3    the node could not be reached",
        "128+N",
        "SHOAL_TOKEN",
    ] {
        assert!(
            help.contains(needle),
            "run --help lacks {needle:?}:\n{help}"
        );
    }
    Ok(())
}

#[test]
fn api_errors_are_one_line_with_meaningful_exit_codes() -> anyhow::Result<()> {
    cli_support::init_tracing();
    let cluster = DevCluster::start(1, Duration::from_secs(60))?;
    let (addr, key) = (cluster.addr.as_str(), cluster.admin_key.as_str());

    info!("--- no key: 401, exit 4, with a hint");
    let output = shoal(addr, None, &["ws", "ls"])?;
    assert_one_line_error(&output, 4, "SHOAL_TOKEN");
    info!("--- a wrong key: exit 4");
    let output = shoal(addr, Some("shoal_wrong"), &["ws", "ls"])?;
    assert_one_line_error(&output, 4, "401");
    info!("--- an unknown workstation: exit 5");
    let output = shoal(addr, Some(key), &["ws", "show", "ws-does-not-exist"])?;
    assert_one_line_error(&output, 5, "404");
    info!("--- a workstation larger than any node: the API's message, exit 1");
    let output = shoal(addr, Some(key), &["ws", "create", "--mem", "1000TiB"])?;
    assert_one_line_error(&output, 1, "422");
    info!("--- a tenant key cannot manage keys: exit 4");
    let tenant_key = shoal_ok(addr, key, &["keys", "create", "--tenant", "acme"])?;
    let output = shoal(addr, Some(&tenant_key), &["keys", "ls"])?;
    assert_one_line_error(&output, 4, "403");
    info!("--- code over 64 KiB is refused before sending");
    let dir = tempfile::tempdir()?;
    let big = dir.path().join("big.py");
    std::fs::write(&big, vec![b'#'; 65 * 1024])?;
    let output = shoal(addr, Some(key), &["run", &big.display().to_string()])?;
    assert_one_line_error(&output, 2, "larger than 65536 bytes");
    Ok(())
}

#[test]
fn a_closed_stdout_ends_the_command_quietly_without_a_panic() -> anyhow::Result<()> {
    cli_support::init_tracing();
    let cluster = DevCluster::start(1, Duration::from_secs(60))?;
    info!("--- `shoal status` into a pipe whose reader is already gone");
    let mut child = std::process::Command::new(cli_support::SHOAL)
        .args(["status"])
        .env("SHOAL_ADDR", &cluster.addr)
        .env("SHOAL_TOKEN", &cluster.admin_key)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    drop(child.stdout.take());
    let output = cli_support::wait_output(child, Duration::from_secs(60))?;
    let stderr = stderr_of(&output);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.is_empty(), "nothing to say on stderr: {stderr}");
    Ok(())
}
