//! The workstation actor against real processes: capture, logs, followers, restarts, stops.
//!
//! Each test is a sequence of logged phases. Waits are on events (follower events, message
//! answers) with a timeout; nothing sleeps to let time pass.

// Test code: a panic is the failure report (the workspace denies unwrap/expect elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use actix::{Actor, Addr};
use anyhow::{anyhow, bail, Context as _, Result};
use shoal_executor::clock::{ManualClock, SystemClock};
use shoal_executor::log_buffer::{Stream, LOG_BUFFER_BYTES_MAX};
use shoal_executor::process_id::ProcId;
use shoal_executor::restart_policy::{RestartLimits, RestartPolicy};
use shoal_executor::spawner::{HostSpawner, ProcessSpec};
use shoal_executor::workstation::{
    Follow, ListProcesses, LogEvent, LogFollower, ProcessState, ProcessStatus, ReadLogs, Shutdown,
    SignalProcess, StartProcess, StopProcess, WorkstationActor, WorkstationError,
    WorkstationLimits,
};

const WAIT: Duration = Duration::from_secs(30);

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_test_writer()
        .try_init();
}

fn fast_restart_limits() -> WorkstationLimits {
    WorkstationLimits {
        restart: RestartLimits {
            backoff_ms_initial: 10,
            backoff_ms_max: 40,
            uptime_ms_healthy: 60_000,
            crash_loop_failures: 3,
            crash_loop_window_ms: 60_000,
        },
        ..WorkstationLimits::default()
    }
}

fn start_workstation(log_start_offset: u64, limits: WorkstationLimits) -> Addr<WorkstationActor> {
    WorkstationActor::new(
        "ws-test",
        Arc::new(HostSpawner::new()),
        Arc::new(SystemClock),
        log_start_offset,
        limits,
    )
    .start()
}

fn sh(script: &str) -> ProcessSpec {
    ProcessSpec::new(["sh", "-c", script])
}

async fn start(
    addr: &Addr<WorkstationActor>,
    spec: ProcessSpec,
    restart: RestartPolicy,
) -> Result<ProcId> {
    Ok(addr
        .send(StartProcess {
            spec,
            restart,
            proc: None,
        })
        .await??)
}

async fn follow(addr: &Addr<WorkstationActor>, from: u64) -> Result<LogFollower> {
    Ok(addr.send(Follow { from }).await??)
}

async fn next_event(follower: &mut LogFollower) -> Result<LogEvent> {
    tokio::time::timeout(WAIT, follower.recv())
        .await
        .context("timed out waiting for a log event")?
        .ok_or_else(|| anyhow!("the follower stream ended"))
}

/// Reads events until `exits` exit events have been seen; returns all events read.
async fn events_until_exits(follower: &mut LogFollower, exits: usize) -> Result<Vec<LogEvent>> {
    let mut events = Vec::new();
    let mut seen = 0;
    while seen < exits {
        let event = next_event(follower).await?;
        if matches!(event, LogEvent::Exit { .. }) {
            seen += 1;
        }
        events.push(event);
    }
    Ok(events)
}

/// Checks that records are contiguous from `from` (allowing `Dropped` jumps) and returns
/// (bytes of records, bytes dropped, the concatenated data).
fn account(events: &[LogEvent], from: u64) -> Result<(u64, u64, Vec<u8>)> {
    let (mut cursor, mut received, mut dropped, mut data) = (from, 0, 0, Vec::new());
    for event in events {
        match event {
            LogEvent::Dropped { bytes } => {
                dropped += bytes;
                cursor += bytes;
            }
            LogEvent::Record(record) => {
                if record.offset != cursor {
                    bail!("record at {} where {} was expected", record.offset, cursor);
                }
                cursor += record.len;
                received += record.len;
                data.extend_from_slice(&record.bytes);
            }
            LogEvent::Exit { offset, .. } => {
                if *offset > cursor {
                    bail!("exit at {offset} before the bytes up to it (cursor {cursor})");
                }
            }
        }
    }
    Ok((received, dropped, data))
}

async fn status(addr: &Addr<WorkstationActor>, proc: ProcId) -> Result<ProcessStatus> {
    addr.send(ListProcesses)
        .await?
        .into_iter()
        .find(|status| status.id == proc)
        .ok_or_else(|| anyhow!("process {proc} not listed"))
}

fn pid_exists(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

fn session_of(pid: i32) -> Result<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    after
        .split_whitespace()
        .nth(3)
        .and_then(|field| field.parse().ok())
        .ok_or_else(|| anyhow!("no session in {stat:?}"))
}

/// A file of `len` bytes where the byte at position i is `i % 251` (a prime, so offsets are
/// checkable anywhere).
fn pattern_file(dir: &Path, len: usize) -> Result<std::path::PathBuf> {
    let path = dir.join("pattern");
    let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    std::fs::write(&path, data)?;
    Ok(path)
}

#[actix_rt::test]
async fn a_process_writing_50_mib_leaves_exactly_the_newest_5_mib_with_correct_offsets(
) -> Result<()> {
    init_tracing();
    const WRITTEN: u64 = 50 * 1024 * 1024;
    let dir = tempfile::tempdir()?;
    let pattern = pattern_file(dir.path(), WRITTEN as usize)?;
    let addr = start_workstation(0, WorkstationLimits::default());

    tracing::info!("--- a process writes 50 MiB; a follower from 0 accounts for every byte");
    let mut follower = follow(&addr, 0).await?;
    let spec = ProcessSpec::new(["cat".to_owned(), pattern.display().to_string()]);
    start(&addr, spec, RestartPolicy::Never).await?;
    let events = events_until_exits(&mut follower, 1).await?;
    let (received, dropped, _) = account(&events, 0)?;
    assert_eq!(
        received + dropped,
        WRITTEN,
        "follower: bytes received + dropped"
    );
    match events.last() {
        Some(LogEvent::Exit { code, offset, .. }) => {
            assert_eq!((*code, *offset), (Some(0), WRITTEN));
        }
        other => bail!("last event is not the exit: {other:?}"),
    }

    tracing::info!("--- a read from 0 reports 45 MiB dropped and returns exactly the newest 5 MiB");
    let read = addr
        .send(ReadLogs {
            from: 0,
            limit_bytes: usize::MAX,
        })
        .await?;
    assert_eq!(read.dropped, WRITTEN - LOG_BUFFER_BYTES_MAX as u64);
    assert_eq!(read.next, WRITTEN);
    let mut offset = read.dropped;
    for record in &read.records {
        assert_eq!(record.offset, offset);
        assert_eq!(record.stream, Stream::Stdout);
        for (i, &byte) in record.bytes.iter().enumerate() {
            assert_eq!(
                byte,
                ((offset + i as u64) % 251) as u8,
                "byte at offset {}",
                offset + i as u64
            );
        }
        offset += record.len;
    }
    assert_eq!(offset, WRITTEN);

    tracing::info!("--- a read from the middle of a record is cut at the requested offset");
    let from = WRITTEN - 1_000;
    let read = addr
        .send(ReadLogs {
            from,
            limit_bytes: 300,
        })
        .await?;
    assert_eq!((read.dropped, read.next), (0, from + 300));
    assert_eq!(read.records[0].offset, from);
    assert_eq!(read.records[0].bytes[0], (from % 251) as u8);
    addr.send(Shutdown { grace_ms: 1_000 }).await?;
    Ok(())
}

#[actix_rt::test]
async fn stdout_and_stderr_are_captured_with_their_stream_and_process() -> Result<()> {
    init_tracing();
    let addr = start_workstation(0, WorkstationLimits::default());
    let mut follower = follow(&addr, 0).await?;
    let proc = start(&addr, sh("echo out; echo err >&2"), RestartPolicy::Never).await?;
    let events = events_until_exits(&mut follower, 1).await?;
    let mut seen: Vec<(Stream, String)> = events
        .iter()
        .filter_map(|event| match event {
            LogEvent::Record(record) => {
                assert_eq!(record.proc, proc);
                Some((
                    record.stream,
                    String::from_utf8_lossy(&record.bytes).into_owned(),
                ))
            }
            _ => None,
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        vec![
            (Stream::Stdout, "out\n".to_owned()),
            (Stream::Stderr, "err\n".to_owned())
        ]
    );
    addr.send(Shutdown { grace_ms: 1_000 }).await?;
    Ok(())
}

/// Text segments and exits, for comparing event sequences regardless of how bytes were cut.
#[derive(Debug, PartialEq, Eq)]
enum Piece {
    Text(String),
    Exit { code: Option<i32>, restarts: u32 },
}

fn pieces(events: &[LogEvent]) -> Vec<Piece> {
    let mut pieces: Vec<Piece> = Vec::new();
    for event in events {
        match event {
            LogEvent::Record(record) => {
                let text = String::from_utf8_lossy(&record.bytes).into_owned();
                match pieces.last_mut() {
                    Some(Piece::Text(last)) => last.push_str(&text),
                    _ => pieces.push(Piece::Text(text)),
                }
            }
            LogEvent::Exit { code, restarts, .. } => pieces.push(Piece::Exit {
                code: *code,
                restarts: *restarts,
            }),
            LogEvent::Dropped { bytes } => pieces.push(Piece::Text(format!("<dropped {bytes}>"))),
        }
    }
    pieces
}

#[actix_rt::test]
async fn following_across_restarts_sees_every_retained_byte_once_in_order_with_exit_events(
) -> Result<()> {
    init_tracing();
    let dir = tempfile::tempdir()?;
    let counter = dir.path().join("counter");
    let script = format!(
        "n=$(cat {c} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {c}; echo run $n; \
         [ $n -ge 3 ] && exit 0; exit 1",
        c = counter.display()
    );
    let addr = start_workstation(0, fast_restart_limits());

    tracing::info!(
        "--- a live follower sees three runs of an on-failure process, exits in between"
    );
    let mut live = follow(&addr, 0).await?;
    let proc = start(&addr, sh(&script), RestartPolicy::OnFailure).await?;
    let events = events_until_exits(&mut live, 3).await?;
    let expected = vec![
        Piece::Text("run 1\n".into()),
        Piece::Exit {
            code: Some(1),
            restarts: 0,
        },
        Piece::Text("run 2\n".into()),
        Piece::Exit {
            code: Some(1),
            restarts: 1,
        },
        Piece::Text("run 3\n".into()),
        Piece::Exit {
            code: Some(0),
            restarts: 2,
        },
    ];
    assert_eq!(pieces(&events), expected);
    account(&events, 0)?;
    let final_status = status(&addr, proc).await?;
    assert_eq!(
        (
            final_status.state,
            final_status.restarts,
            final_status.exit_code
        ),
        (ProcessState::Exited, 2, Some(0))
    );

    tracing::info!(
        "--- a follower reconnecting at offset 3 gets the rest of run 1 once, then the same"
    );
    let mut resumed = follow(&addr, 3).await?;
    let events = events_until_exits(&mut resumed, 3).await?;
    let mut expected_resumed = expected;
    expected_resumed[0] = Piece::Text(" 1\n".into());
    assert_eq!(pieces(&events), expected_resumed);
    account(&events, 3)?;

    tracing::info!(
        "--- a follower from the end gets the exit recorded at that offset (exits are \
         delivered at least once), then only what comes next"
    );
    let mut tail = follow(&addr, 18).await?;
    start(&addr, sh("echo later"), RestartPolicy::Never).await?;
    let events = events_until_exits(&mut tail, 2).await?;
    assert_eq!(
        pieces(&events),
        vec![
            Piece::Exit {
                code: Some(0),
                restarts: 2
            },
            Piece::Text("later\n".into()),
            Piece::Exit {
                code: Some(0),
                restarts: 0
            }
        ]
    );
    addr.send(Shutdown { grace_ms: 1_000 }).await?;
    Ok(())
}

#[actix_rt::test]
async fn restart_policies_backoff_and_crash_loop_with_real_processes() -> Result<()> {
    init_tracing();
    let addr = start_workstation(0, fast_restart_limits());
    let mut follower = follow(&addr, 0).await?;

    tracing::info!("--- on-failure: three fast failures end in crash_loop, two restarts made");
    let failing = start(&addr, sh("exit 3"), RestartPolicy::OnFailure).await?;
    let events = events_until_exits(&mut follower, 3).await?;
    let codes: Vec<_> = events
        .iter()
        .filter_map(|event| match event {
            LogEvent::Exit {
                proc,
                code,
                restarts,
                ..
            } if *proc == failing => Some((*code, *restarts)),
            _ => None,
        })
        .collect();
    assert_eq!(codes, vec![(Some(3), 0), (Some(3), 1), (Some(3), 2)]);
    let failing_status = status(&addr, failing).await?;
    assert_eq!(
        (failing_status.state, failing_status.restarts),
        (ProcessState::CrashLoop, 2)
    );

    tracing::info!("--- on-failure: a clean exit is not restarted");
    let clean = start(&addr, sh("exit 0"), RestartPolicy::OnFailure).await?;
    events_until_exits(&mut follower, 1).await?;
    let clean_status = status(&addr, clean).await?;
    assert_eq!(
        (clean_status.state, clean_status.restarts),
        (ProcessState::Exited, 0)
    );

    tracing::info!("--- never: a failure is not restarted");
    let never = start(&addr, sh("exit 5"), RestartPolicy::Never).await?;
    events_until_exits(&mut follower, 1).await?;
    let never_status = status(&addr, never).await?;
    assert_eq!(
        (
            never_status.state,
            never_status.restarts,
            never_status.exit_code
        ),
        (ProcessState::Exited, 0, Some(5))
    );

    tracing::info!("--- always: clean exits are restarted too, until they crash-loop");
    let always = start(&addr, sh("exit 0"), RestartPolicy::Always).await?;
    events_until_exits(&mut follower, 3).await?;
    let always_status = status(&addr, always).await?;
    assert_eq!(
        (always_status.state, always_status.restarts),
        (ProcessState::CrashLoop, 2)
    );
    addr.send(Shutdown { grace_ms: 1_000 }).await?;

    tracing::info!("--- a long backoff shows as backoff; a stop cancels the pending restart");
    let slow_limits = WorkstationLimits {
        restart: RestartLimits {
            backoff_ms_initial: 60_000,
            ..fast_restart_limits().restart
        },
        ..WorkstationLimits::default()
    };
    let addr = start_workstation(0, slow_limits);
    let mut follower = follow(&addr, 0).await?;
    let waiting = start(&addr, sh("exit 1"), RestartPolicy::OnFailure).await?;
    events_until_exits(&mut follower, 1).await?;
    assert_eq!(status(&addr, waiting).await?.state, ProcessState::Backoff);
    addr.send(StopProcess {
        proc: waiting,
        grace_ms: 100,
    })
    .await??;
    let stopped = status(&addr, waiting).await?;
    assert_eq!((stopped.state, stopped.restarts), (ProcessState::Exited, 1));
    addr.send(Shutdown { grace_ms: 1_000 }).await?;
    Ok(())
}

#[actix_rt::test]
async fn a_stop_kills_a_double_forked_setsid_grandchild() -> Result<()> {
    init_tracing();
    let dir = tempfile::tempdir()?;
    let pid_file = dir.path().join("daemon.pid");
    let addr = start_workstation(0, WorkstationLimits::default());
    let mut follower = follow(&addr, 0).await?;

    tracing::info!("--- the process double-forks a setsid daemon, then waits");
    let script = format!(
        "(setsid sh -c 'echo $$ > {p}.tmp; mv {p}.tmp {p}; echo daemonized; exec sleep 300' &); \
         exec sleep 300",
        p = pid_file.display()
    );
    let proc = start(&addr, sh(&script), RestartPolicy::Always).await?;
    match next_event(&mut follower).await? {
        LogEvent::Record(record) => assert_eq!(record.bytes, b"daemonized\n"),
        other => bail!("expected the daemonized line, got {other:?}"),
    }
    let daemon_pid: i32 = std::fs::read_to_string(&pid_file)?.trim().parse()?;
    let main_pid = status(&addr, proc)
        .await?
        .pid
        .ok_or_else(|| anyhow!("no pid while running"))? as i32;
    assert!(pid_exists(daemon_pid), "the daemon runs");
    assert_ne!(
        session_of(daemon_pid)?,
        session_of(main_pid)?,
        "the daemon left the session"
    );

    tracing::info!("--- a stop leaves neither the main process nor the daemon");
    addr.send(StopProcess {
        proc,
        grace_ms: 2_000,
    })
    .await??;
    assert!(!pid_exists(main_pid), "main process {main_pid} is gone");
    eprintln!(
        "DEBUG daemon stat {:?} own {}",
        std::fs::read_to_string(format!("/proc/{daemon_pid}/stat")),
        std::process::id()
    );
    assert!(
        !pid_exists(daemon_pid),
        "daemon {daemon_pid} is gone (not even a zombie)"
    );
    let stopped = status(&addr, proc).await?;
    assert_eq!(
        (stopped.state, stopped.signal),
        (ProcessState::Exited, Some(15))
    );
    addr.send(Shutdown { grace_ms: 1_000 }).await?;
    Ok(())
}

#[actix_rt::test]
async fn a_follower_that_never_reads_does_not_slow_the_writer_or_other_followers() -> Result<()> {
    init_tracing();
    const FIRST: u64 = 4 * 1024 * 1024;
    const SECOND: u64 = 20 * 1024 * 1024;
    let limits = WorkstationLimits::default();
    let addr = start_workstation(0, limits);

    tracing::info!(
        "--- a stalled follower and a reading follower; 4 MiB written (less than the buffer)"
    );
    let mut stalled = follow(&addr, 0).await?;
    let mut reading = follow(&addr, 0).await?;
    start(
        &addr,
        ProcessSpec::new(["head", "-c", &FIRST.to_string(), "/dev/zero"]),
        RestartPolicy::Never,
    )
    .await?;
    let events = events_until_exits(&mut reading, 1).await?;
    let (received, dropped, _) = account(&events, 0)?;
    assert_eq!(
        (received, dropped),
        (FIRST, 0),
        "the reading follower lost nothing"
    );
    assert_eq!(
        stalled.len(),
        limits.follower_queue_events_max,
        "the stalled queue is full, no more"
    );

    tracing::info!(
        "--- 20 MiB more: the writer finishes although the stalled follower still does not read"
    );
    start(
        &addr,
        ProcessSpec::new(["head", "-c", &SECOND.to_string(), "/dev/zero"]),
        RestartPolicy::Never,
    )
    .await?;
    let events = events_until_exits(&mut reading, 1).await?;
    let (received, dropped, _) = account(&events, FIRST)?;
    assert_eq!(received + dropped, SECOND);

    tracing::info!(
        "--- the stalled follower, reading at last, is told what it missed and continues"
    );
    let events = events_until_exits(&mut stalled, 2).await?;
    let (received, dropped, _) = account(&events, 0)?;
    assert_eq!(received + dropped, FIRST + SECOND);
    assert!(dropped > 0, "the stalled follower was told it missed bytes");
    let first_dropped = events
        .iter()
        .position(|event| matches!(event, LogEvent::Dropped { .. }))
        .ok_or_else(|| anyhow!("no dropped event"))?;
    assert_eq!(
        first_dropped, limits.follower_queue_events_max,
        "queued events came first"
    );
    addr.send(Shutdown { grace_ms: 1_000 }).await?;
    Ok(())
}

#[actix_rt::test]
async fn signal_reaches_the_process_tree() -> Result<()> {
    init_tracing();
    let addr = start_workstation(0, WorkstationLimits::default());
    let mut follower = follow(&addr, 0).await?;
    let script = "trap 'echo got-usr1; exit 7' USR1; echo ready; while :; do sleep 1; done";
    let proc = start(&addr, sh(script), RestartPolicy::Never).await?;
    match next_event(&mut follower).await? {
        LogEvent::Record(record) => assert_eq!(record.bytes, b"ready\n"),
        other => bail!("expected ready, got {other:?}"),
    }
    let signalled = addr
        .send(SignalProcess {
            proc,
            signal: nix::sys::signal::Signal::SIGUSR1,
        })
        .await??;
    assert!(signalled >= 1);
    let events = events_until_exits(&mut follower, 1).await?;
    // The shell may also report on stderr that its `sleep` died of the signal: only stdout
    // is compared.
    let stdout_only: Vec<LogEvent> = events
        .into_iter()
        .filter(
            |event| !matches!(event, LogEvent::Record(record) if record.stream == Stream::Stderr),
        )
        .collect();
    assert_eq!(
        pieces(&stdout_only),
        vec![
            Piece::Text("got-usr1\n".into()),
            Piece::Exit {
                code: Some(7),
                restarts: 0
            }
        ]
    );
    let error = addr
        .send(SignalProcess {
            proc,
            signal: nix::sys::signal::Signal::SIGUSR1,
        })
        .await?;
    assert!(matches!(error, Err(WorkstationError::NotRunning(_))));
    addr.send(Shutdown { grace_ms: 1_000 }).await?;
    Ok(())
}

#[actix_rt::test]
async fn shutdown_stops_every_process_and_ends_followers() -> Result<()> {
    init_tracing();
    let addr = start_workstation(0, WorkstationLimits::default());
    let mut follower = follow(&addr, 0).await?;
    let first = start(
        &addr,
        ProcessSpec::new(["sleep", "300"]),
        RestartPolicy::Always,
    )
    .await?;
    let second = start(
        &addr,
        sh("trap '' TERM; echo immune; sleep 300"),
        RestartPolicy::Always,
    )
    .await?;
    let _ = next_event(&mut follower).await?;
    let pids: Vec<i32> = addr
        .send(ListProcesses)
        .await?
        .iter()
        .filter_map(|status| status.pid.map(|pid| pid as i32))
        .collect();
    assert_eq!(pids.len(), 2, "both {first} and {second} run");

    tracing::info!("--- shutdown with a short grace: the TERM-immune one is killed too");
    addr.send(Shutdown { grace_ms: 200 }).await?;
    for pid in pids {
        assert!(!pid_exists(pid), "pid {pid} is gone");
    }
    let mut exits = 0;
    while let Some(event) = tokio::time::timeout(WAIT, follower.recv()).await? {
        if matches!(event, LogEvent::Exit { .. }) {
            exits += 1;
        }
    }
    assert_eq!(
        exits, 2,
        "both exits were delivered before the stream ended"
    );
    Ok(())
}

#[actix_rt::test]
async fn a_replaced_workstation_log_continues_above_its_start_offset() -> Result<()> {
    init_tracing();
    let addr = start_workstation(1_000_000, WorkstationLimits::default());
    start(&addr, sh("echo hi"), RestartPolicy::Never).await?;
    let mut follower = follow(&addr, 999_000).await?;
    assert_eq!(
        next_event(&mut follower).await?,
        LogEvent::Dropped { bytes: 1_000 }
    );
    match next_event(&mut follower).await? {
        LogEvent::Record(record) => assert_eq!(
            (record.offset, &record.bytes[..]),
            (1_000_000, &b"hi\n"[..])
        ),
        other => bail!("expected the record, got {other:?}"),
    }
    addr.send(Shutdown { grace_ms: 1_000 }).await?;
    Ok(())
}

#[actix_rt::test]
async fn invalid_starts_are_refused_without_leaving_a_process() -> Result<()> {
    init_tracing();
    let addr = start_workstation(0, WorkstationLimits::default());
    let empty = addr
        .send(StartProcess {
            spec: ProcessSpec::new(Vec::<String>::new()),
            restart: RestartPolicy::Never,
            proc: None,
        })
        .await?;
    assert!(matches!(empty, Err(WorkstationError::InvalidSpec(_))));
    let missing = addr
        .send(StartProcess {
            spec: ProcessSpec::new(["/nonexistent/program"]),
            restart: RestartPolicy::Always,
            proc: None,
        })
        .await?;
    assert!(matches!(missing, Err(WorkstationError::Spawn(_))));
    assert!(addr.send(ListProcesses).await?.is_empty());
    addr.send(Shutdown { grace_ms: 1_000 }).await?;
    Ok(())
}

#[actix_rt::test]
async fn an_exit_is_recorded_while_a_daemon_holds_the_pipes_and_a_stop_still_kills_the_daemon(
) -> Result<()> {
    init_tracing();
    let dir = tempfile::tempdir()?;
    let pid_file = dir.path().join("daemon.pid");
    let addr = start_workstation(0, WorkstationLimits::default());
    let mut follower = follow(&addr, 0).await?;

    tracing::info!(
        "--- the main process exits 2, leaving a setsid daemon that keeps its stdout open"
    );
    let script = format!(
        "(setsid sh -c 'echo $$ > {p}.tmp; mv {p}.tmp {p}; echo daemon-up; exec sleep 300' &); \
         exit 2",
        p = pid_file.display()
    );
    let proc = start(&addr, sh(&script), RestartPolicy::Never).await?;
    let (mut text, mut exit_code) = (String::new(), None);
    while exit_code.is_none() || !text.contains("daemon-up") {
        match next_event(&mut follower).await? {
            LogEvent::Record(record) => text.push_str(&String::from_utf8_lossy(&record.bytes)),
            LogEvent::Exit { code, .. } => exit_code = Some(code),
            LogEvent::Dropped { bytes } => bail!("unexpected drop of {bytes} bytes"),
        }
    }
    assert_eq!(exit_code, Some(Some(2)));
    let daemon_pid: i32 = std::fs::read_to_string(&pid_file)?.trim().parse()?;
    assert!(pid_exists(daemon_pid), "the daemon outlived its parent");
    assert_eq!(status(&addr, proc).await?.state, ProcessState::Exited);

    tracing::info!("--- stopping the exited process kills what it left behind");
    addr.send(StopProcess {
        proc,
        grace_ms: 1_000,
    })
    .await??;
    assert!(!pid_exists(daemon_pid), "daemon {daemon_pid} is gone");
    addr.send(Shutdown { grace_ms: 1_000 }).await?;
    Ok(())
}

#[actix_rt::test]
async fn runs_that_stay_up_long_enough_by_the_clock_reset_the_crash_loop_count() -> Result<()> {
    init_tracing();
    let clock = Arc::new(ManualClock::default());
    let limits = WorkstationLimits {
        restart: RestartLimits {
            crash_loop_failures: 2,
            uptime_ms_healthy: 60_000,
            ..fast_restart_limits().restart
        },
        ..WorkstationLimits::default()
    };
    let addr = WorkstationActor::new(
        "ws-manual-clock",
        Arc::new(HostSpawner::new()),
        clock.clone(),
        0,
        limits,
    )
    .start();
    let mut follower = follow(&addr, 0).await?;
    let proc = start(&addr, sh("echo up; exec sleep 300"), RestartPolicy::Always).await?;

    for run in 0..3u32 {
        tracing::info!(
            run,
            "--- the run is up; 61 s pass on the clock; it is killed"
        );
        match next_event(&mut follower).await? {
            LogEvent::Record(record) => assert_eq!(record.bytes, b"up\n"),
            other => bail!("expected up, got {other:?}"),
        }
        clock.advance_ms(61_000);
        addr.send(SignalProcess {
            proc,
            signal: nix::sys::signal::Signal::SIGKILL,
        })
        .await??;
        match next_event(&mut follower).await? {
            LogEvent::Exit {
                signal, restarts, ..
            } => assert_eq!((signal, restarts), (Some(9), run)),
            other => bail!("expected the exit, got {other:?}"),
        }
    }
    assert_ne!(status(&addr, proc).await?.state, ProcessState::CrashLoop);

    tracing::info!("--- two kills without the clock moving are fast failures: crash_loop");
    for _ in 0..2 {
        match next_event(&mut follower).await? {
            LogEvent::Record(record) => assert_eq!(record.bytes, b"up\n"),
            other => bail!("expected up, got {other:?}"),
        }
        addr.send(SignalProcess {
            proc,
            signal: nix::sys::signal::Signal::SIGKILL,
        })
        .await??;
        let _exit = next_event(&mut follower).await?;
    }
    let final_status = status(&addr, proc).await?;
    assert_eq!(
        (final_status.state, final_status.restarts),
        (ProcessState::CrashLoop, 4)
    );
    addr.send(Shutdown { grace_ms: 1_000 }).await?;
    Ok(())
}
