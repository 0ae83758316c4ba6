//! Each verdict reached by a real program in a real sandbox.

// Test code: a panic is the failure report (the workspace denies unwrap/expect elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod run_support;

use run_support::{code_request, root_or_skip, sh, TestHost};
use shoal_executor::run::{RunRequest, Verdict, OUTPUT_KEPT_BYTES_MAX};

#[tokio::test]
async fn memory_balloon_gets_memory_limit() -> anyhow::Result<()> {
    if !root_or_skip("memory_balloon_gets_memory_limit") {
        return Ok(());
    }
    let host = TestHost::start("balloon")?;
    tracing::info!("--- python allocates 8 MiB blocks forever under a 64 MiB limit");
    let request = RunRequest {
        memory_bytes: Some(64 * 1024 * 1024),
        timeout_ms: Some(20_000),
        ..code_request(
            "python",
            "blocks = []\nwhile True:\n    blocks.append(bytearray(8 * 1024 * 1024))\n",
        )
    };
    let result = host.run(&request, "balloon").await?;
    assert_eq!(result.verdict, Verdict::MemoryLimit, "{result:?}");
    assert_eq!(result.signal, Some(libc::SIGKILL));
    assert!(result.peak_memory_bytes >= 32 * 1024 * 1024, "{result:?}");
    assert!(result.peak_memory_bytes <= 64 * 1024 * 1024, "{result:?}");
    host.assert_clean();
    Ok(())
}

#[tokio::test]
async fn fork_bomb_gets_process_limit_and_the_host_stays_responsive() -> anyhow::Result<()> {
    if !root_or_skip("fork_bomb_gets_process_limit_and_the_host_stays_responsive") {
        return Ok(());
    }
    let host = TestHost::start("forkbomb")?;
    tracing::info!("--- every process forks forever, limit 32 processes");
    let request = RunRequest {
        max_processes: Some(32),
        timeout_ms: Some(20_000),
        ..code_request("python", "import os\nwhile True:\n    os.fork()\n")
    };
    let bomb = host.run(&request, "bomb");
    let host_probe = async {
        // While the bomb runs, the host still starts processes.
        let mut started = 0;
        for _ in 0..5 {
            let status = tokio::process::Command::new("/bin/true").status().await?;
            anyhow::ensure!(status.success(), "host could not run /bin/true");
            started += 1;
        }
        anyhow::Ok(started)
    };
    let (result, started) = tokio::join!(bomb, host_probe);
    let result = result?;
    assert_eq!(started?, 5);
    assert_eq!(result.verdict, Verdict::ProcessLimit, "{result:?}");
    host.assert_clean();
    Ok(())
}

#[tokio::test]
async fn sleep_past_the_wall_limit_gets_timeout() -> anyhow::Result<()> {
    if !root_or_skip("sleep_past_the_wall_limit_gets_timeout") {
        return Ok(());
    }
    let host = TestHost::start("timeout")?;
    tracing::info!("--- sleep 100 with a 1 s limit");
    let request = RunRequest {
        timeout_ms: Some(1000),
        argv: Some(vec!["sleep".to_string(), "100".to_string()]),
        ..RunRequest::default()
    };
    let result = host.run(&request, "sleep").await?;
    assert_eq!(result.verdict, Verdict::Timeout, "{result:?}");
    assert!(result.wall_ms >= 1000, "{result:?}");
    host.assert_clean();
    Ok(())
}

#[tokio::test]
async fn busy_loop_past_its_cpu_time_gets_cpu_limit() -> anyhow::Result<()> {
    if !root_or_skip("busy_loop_past_its_cpu_time_gets_cpu_limit") {
        return Ok(());
    }
    let host = TestHost::start("cpu")?;
    tracing::info!("--- a shell spins with 300 ms of CPU time and 20 s of wall time");
    let request = RunRequest {
        timeout_ms: Some(20_000),
        cpu_time_ms: Some(300),
        ..sh("while :; do :; done")
    };
    let result = host.run(&request, "spin").await?;
    assert_eq!(result.verdict, Verdict::CpuLimit, "{result:?}");
    assert!(result.cpu_ms >= 300, "{result:?}");
    host.assert_clean();
    Ok(())
}

#[tokio::test]
async fn ten_mib_of_output_comes_back_as_64_kib_with_the_flag() -> anyhow::Result<()> {
    if !root_or_skip("ten_mib_of_output_comes_back_as_64_kib_with_the_flag") {
        return Ok(());
    }
    let host = TestHost::start("output")?;
    tracing::info!("--- python writes 10 MiB to stdout and a line to stderr");
    let request = code_request(
        "python",
        "import sys\nsys.stdout.write('x' * (10 * 1024 * 1024))\nsys.stderr.write('done\\n')\n",
    );
    let result = host.run(&request, "output").await?;
    assert_eq!(result.verdict, Verdict::Ok, "{:?}", result.verdict);
    assert_eq!(result.stdout.len(), OUTPUT_KEPT_BYTES_MAX);
    assert!(result.stdout_truncated);
    assert_eq!(result.stderr, "done\n");
    assert!(!result.stderr_truncated);
    tracing::info!("--- `yes` past the 16 MiB hard cap is killed with output_limit");
    let result = host.run(&sh("yes"), "yes").await?;
    assert_eq!(result.verdict, Verdict::OutputLimit, "{:?}", result.verdict);
    assert!(result.stdout_truncated);
    host.assert_clean();
    Ok(())
}
