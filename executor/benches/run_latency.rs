//! Sandboxed run of /bin/true end to end, beside a bare fork+exec of /bin/true and
//! `unshare -Urpfmniu true` measured in the same run; then sustained runs per second with two
//! parallel workers. Needs root (prints a message and exits otherwise).
//!
//! `cargo bench -p shoal-executor --bench run_latency` (env RUNS=N to change the sample size).

// Measurement code run by hand: a panic is the failure report (the workspace denies
// unwrap/expect in the crates' code).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use shoal_executor::clock::{Clock, SystemClock};
use shoal_executor::run::{self, Languages, RunContext, RunPolicy, RunRequest, Verdict};
use shoal_executor::sandbox::{SandboxHost, SandboxHostConfig};

fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 - 1.0) * fraction).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn summary(name: &str, mut samples: Vec<Duration>) -> Duration {
    samples.sort_unstable();
    let p50 = percentile(&samples, 0.50);
    let p99 = percentile(&samples, 0.99);
    println!(
        "{name:<34} n={:<5} p50={:>8.2} ms  p99={:>8.2} ms",
        samples.len(),
        p50.as_secs_f64() * 1000.0,
        p99.as_secs_f64() * 1000.0
    );
    p50
}

fn main() -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("run_latency: needs root (namespaces, cgroups); skipped");
        return Ok(());
    }
    if std::env::var_os("RUST_LOG").is_some() {
        // Per-run phase timings (create_us, start_us, supervise_us, destroy_us) on stderr.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .try_init();
    }
    let runs: usize = std::env::var("RUNS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(300);
    let clock = SystemClock;
    let state_dir = tempfile::Builder::new().prefix("shoal-bench").tempdir()?;
    let host = SandboxHost::start(SandboxHostConfig::new(
        format!("bench{}", std::process::id()),
        state_dir.path(),
    ))?;
    println!("isolation: {}", host.isolation().label());
    // The machine is shared: every figure is only meaningful beside the load it ran under.
    let load = || {
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    };
    println!("load average at start: {}", load());
    let context = RunContext {
        host: Arc::clone(&host),
        languages: Arc::new(Languages::from_list(Vec::new())),
        policy: RunPolicy::default(),
        clock: Arc::new(SystemClock),
    };
    let request = RunRequest {
        argv: Some(vec!["/bin/true".to_string()]),
        ..RunRequest::default()
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;

    let bare = (0..runs)
        .map(|_| {
            let start = clock.now();
            let status = std::process::Command::new("/bin/true").status();
            assert!(status.map(|status| status.success()).unwrap_or(false));
            clock.now() - start
        })
        .collect::<Vec<_>>();
    let unshare = (0..runs)
        .map(|_| {
            let start = clock.now();
            let status = std::process::Command::new("unshare")
                .args(["-Urpfmniu", "true"])
                .status();
            assert!(status.map(|status| status.success()).unwrap_or(false));
            clock.now() - start
        })
        .collect::<Vec<_>>();
    let cgroup_only = (0..runs)
        .map(|index| {
            let start = clock.now();
            let sandbox = host.create(shoal_executor::sandbox::SandboxSpec {
                name: format!("cg{index}"),
                limits: shoal_executor::sandbox::SandboxLimits {
                    memory_bytes: 256 << 20,
                    cpu_millis: 1000,
                    max_processes: 64,
                    tmp_bytes: 256 << 20,
                },
                home: None,
            });
            let destroyed = sandbox.map(|sandbox| sandbox.destroy());
            assert!(matches!(destroyed, Ok(Ok(()))), "{destroyed:?}");
            clock.now() - start
        })
        .collect::<Vec<_>>();
    let mut overheads = Vec::new();
    let sandboxed = runtime.block_on(async {
        let mut samples = Vec::new();
        for index in 0..runs + 20 {
            let start = clock.now();
            let result = run::execute(&context, &request, &format!("lat{index}")).await?;
            let elapsed = clock.now() - start;
            anyhow::ensure!(result.verdict == Verdict::Ok, "{result:?}");
            if index >= 20 {
                samples.push(elapsed);
                overheads.push(Duration::from_millis(result.overhead_ms));
            }
        }
        anyhow::Ok(samples)
    })?;
    println!("--- latency of one run of /bin/true");
    let bare_p50 = summary("bare fork+exec /bin/true", bare);
    let unshare_p50 = summary("unshare -Urpfmniu true", unshare);
    summary("sandbox cgroup create+destroy", cgroup_only);
    let sandbox_p50 = summary("sandboxed run (execute)", sandboxed);
    summary("  of which overhead_ms (reported)", overheads);
    println!(
        "ratio sandboxed/bare = {:.1}x, sandboxed/unshare = {:.1}x",
        sandbox_p50.as_secs_f64() / bare_p50.as_secs_f64().max(1e-9),
        sandbox_p50.as_secs_f64() / unshare_p50.as_secs_f64().max(1e-9)
    );

    println!("--- sustained throughput, 2 parallel workers");
    let total = runs.max(100) * 2;
    let context = Arc::new(context);
    let start = clock.now();
    runtime.block_on(async {
        let mut workers = Vec::new();
        for worker in 0..2 {
            let context = Arc::clone(&context);
            let request = request.clone();
            workers.push(tokio::spawn(async move {
                for index in 0..total / 2 {
                    let result =
                        run::execute(&context, &request, &format!("w{worker}-{index}")).await?;
                    anyhow::ensure!(result.verdict == Verdict::Ok, "{result:?}");
                }
                anyhow::Ok(())
            }));
        }
        for worker in workers {
            worker.await??;
        }
        anyhow::Ok(())
    })?;
    let elapsed = clock.now() - start;
    drop(context);
    drop(host);
    println!(
        "{total} runs in {:.2} s = {:.0} runs/s",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64()
    );
    println!("load average at end: {}", load());
    Ok(())
}
