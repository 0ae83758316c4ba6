//! Basic runs end to end in a real sandbox: output, exit codes, stdin, files, languages.

// Test code: a panic is the failure report (the workspace denies unwrap/expect elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod run_support;

use run_support::{code_request, root_or_skip, sh, TestHost};
use shoal_executor::run::{RunFile, RunRequest, Verdict};

#[tokio::test]
async fn python_hello_world_runs_with_full_isolation_and_leaves_nothing() -> anyhow::Result<()> {
    if !root_or_skip("python_hello_world_runs_with_full_isolation_and_leaves_nothing") {
        return Ok(());
    }
    let host = TestHost::start("hello")?;
    tracing::info!("--- run print('hello') in python");
    let result = host
        .run(&code_request("python", "print('hello')"), "hello1")
        .await?;
    assert_eq!(result.verdict, Verdict::Ok, "{result:?}");
    assert_eq!(result.stdout, "hello\n");
    assert_eq!(result.exit_code, Some(0));
    assert_eq!(result.isolation, "full");
    host.assert_clean();
    Ok(())
}

#[tokio::test]
async fn exit_code_stdin_env_and_files_reach_the_program() -> anyhow::Result<()> {
    if !root_or_skip("exit_code_stdin_env_and_files_reach_the_program") {
        return Ok(());
    }
    let host = TestHost::start("basics")?;
    tracing::info!("--- a shell reads stdin, a file and an env var, then exits 3");
    let request = RunRequest {
        stdin: Some("from stdin\n".to_string()),
        files: Some(vec![RunFile {
            path: "data/in.txt".to_string(),
            content: "from file\n".to_string(),
            executable: false,
        }]),
        env: Some([("GREETING".to_string(), "from env".to_string())].into()),
        ..sh("cat; cat data/in.txt; echo \"$GREETING\"; echo err >&2; pwd; exit 3")
    };
    let result = host.run(&request, "basics1").await?;
    assert_eq!(result.verdict, Verdict::NonzeroExit, "{result:?}");
    assert_eq!(result.exit_code, Some(3));
    assert_eq!(result.stdout, "from stdin\nfrom file\nfrom env\n/tmp\n");
    assert_eq!(result.stderr, "err\n");
    tracing::info!("--- a program killed by a signal is `signaled`");
    let result = host.run(&sh("kill -SEGV $$"), "basics2").await?;
    assert_eq!(result.verdict, Verdict::Signaled, "{result:?}");
    assert_eq!(result.signal, Some(libc::SIGSEGV));
    tracing::info!("--- a missing program is an internal error with a message, not a crash");
    let missing = RunRequest {
        argv: Some(vec!["no-such-program".to_string()]),
        ..RunRequest::default()
    };
    let result = host.run(&missing, "basics3").await?;
    assert_eq!(result.verdict, Verdict::InternalError, "{result:?}");
    assert!(result.message.unwrap_or_default().contains("No such file"));
    host.assert_clean();
    Ok(())
}

#[tokio::test]
async fn repeated_true_runs_leave_nothing_behind() -> anyhow::Result<()> {
    if !root_or_skip("repeated_true_runs_leave_nothing_behind") {
        return Ok(());
    }
    let host = TestHost::start("repeat")?;
    let request = RunRequest {
        argv: Some(vec!["/bin/true".to_string()]),
        ..RunRequest::default()
    };
    for index in 0..10 {
        let result = host.run(&request, &format!("true{index}")).await?;
        assert_eq!(result.verdict, Verdict::Ok, "{result:?}");
    }
    host.assert_clean();
    Ok(())
}

/// Compile-time proof that a run can be spawned on a multi-threaded runtime (actix/tokio need
/// `Send` futures): this function only has to type-check.
#[allow(dead_code)]
fn execute_future_is_send(context: &shoal_executor::run::RunContext, request: &RunRequest) {
    fn is_send<T: Send>(_: &T) {}
    let future = shoal_executor::run::execute(context, request, "send-check");
    is_send(&future);
}
