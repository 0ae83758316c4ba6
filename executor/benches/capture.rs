//! End-to-end capture throughput: a child writes 1 GiB to stdout as fast as it can into a
//! workstation actor, beside the pipe ceiling `dd if=/dev/zero bs=64k count=16384 | dd
//! of=/dev/null bs=64k`, timed in the same run (DESIGN.md §5). Prints GB/s for both and the
//! ratio (target ≥ 0.75).
//!
//! `cargo bench -p shoal-executor --bench capture`

// Measurement code run by hand: a panic is the failure report (the workspace denies
// unwrap/expect in the crates' code).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use actix::Actor;
use anyhow::{bail, Context as _, Result};
use shoal_executor::clock::{Clock, SystemClock};
use shoal_executor::restart_policy::RestartPolicy;
use shoal_executor::spawner::{HostSpawner, ProcessSpec};
use shoal_executor::workstation::{
    ListProcesses, LogRange, ProcessState, Shutdown, StartProcess, WorkstationActor,
    WorkstationLimits,
};

const BYTES: u64 = 64 * 1024 * 16_384;
const ROUNDS: usize = 7;
const WRITER: [&str; 5] = ["dd", "if=/dev/zero", "bs=64k", "count=16384", "status=none"];

fn gbps(elapsed: Duration) -> f64 {
    BYTES as f64 / elapsed.as_secs_f64() / 1e9
}

fn pipe_baseline(clock: &SystemClock) -> Result<Duration> {
    let start = clock.now();
    let status = Command::new("sh")
        .args([
            "-c",
            "dd if=/dev/zero bs=64k count=16384 status=none | dd of=/dev/null bs=64k status=none",
        ])
        .status()
        .context("running dd | dd")?;
    let elapsed = clock.now() - start;
    if !status.success() {
        bail!("dd | dd failed: {status}");
    }
    Ok(elapsed)
}

fn actor_capture(clock: &SystemClock) -> Result<Duration> {
    let system = actix::System::new();
    system.block_on(async {
        let addr = WorkstationActor::new(
            "bench",
            Arc::new(HostSpawner::new()),
            Arc::new(SystemClock),
            0,
            WorkstationLimits::default(),
        )
        .start();
        let start = clock.now();
        let proc = addr
            .send(StartProcess {
                spec: ProcessSpec::new(WRITER),
                restart: RestartPolicy::Never,
                proc: None,
            })
            .await??;
        // Polling is fine in a benchmark: 1 ms granularity on a run of about a second.
        loop {
            let processes = addr.send(ListProcesses).await?;
            if processes
                .iter()
                .any(|status| status.id == proc && status.state == ProcessState::Exited)
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let elapsed = clock.now() - start;
        let (_, end) = addr.send(LogRange).await?;
        addr.send(Shutdown { grace_ms: 1_000 }).await?;
        if end != BYTES {
            bail!("captured {end} bytes, expected {BYTES}");
        }
        Ok(elapsed)
    })
}

fn main() -> Result<()> {
    // `cargo bench` passes `--bench`; there is nothing to configure.
    let clock = SystemClock;
    // One warm-up round of each, not counted: the first run pays for cold caches and the
    // first actix system.
    pipe_baseline(&clock)?;
    actor_capture(&clock)?;
    let mut baseline = Vec::new();
    let mut capture = Vec::new();
    for round in 0..ROUNDS {
        let pipe = pipe_baseline(&clock)?;
        let actor = actor_capture(&clock)?;
        println!(
            "round {round}: dd|dd {:.2} GB/s, workstation capture {:.2} GB/s",
            gbps(pipe),
            gbps(actor)
        );
        baseline.push(pipe);
        capture.push(actor);
    }
    baseline.sort();
    capture.sort();
    let median = |runs: &[Duration]| runs[runs.len() / 2];
    let (pipe, actor) = (median(&baseline), median(&capture));
    println!(
        "1 GiB, median of {ROUNDS}: dd|dd {:.2} GB/s, workstation capture {:.2} GB/s, ratio {:.2}",
        gbps(pipe),
        gbps(actor),
        gbps(actor) / gbps(pipe)
    );
    println!(
        "1 GiB, best of {ROUNDS}: dd|dd {:.2} GB/s, workstation capture {:.2} GB/s, ratio {:.2}",
        gbps(baseline[0]),
        gbps(capture[0]),
        gbps(capture[0]) / gbps(baseline[0])
    );
    Ok(())
}
