//! `shoal logs -f`: follows a workstation's log over Server-Sent Events and, when the
//! connection drops, reconnects by itself with `Last-Event-ID` set to the last offset it
//! printed, so that nothing still retained is lost and nothing is printed twice.
//!
//! [`FollowState`] is the pure core (events in, bytes to print out, offsets remembered);
//! [`follow`] is the driver (HTTP, backoff, stdout/stderr).

use std::io::{Read, Write};
use std::time::Duration;

use base64::Engine;
use reqwest::Method;

use super::client::ApiClient;
use super::cluster::path_segment;
use super::error::{exit_code, CliError, CliResult};
use super::sse::{SseEvent, SseParser};
use crate::api_types::{DroppedEvent, ExitEvent, LogRecord, LogStream};

/// The first reconnect waits this long; each failed attempt doubles it.
pub const BACKOFF_MS_MIN: u64 = 100;
/// Reconnects never wait longer than this.
pub const BACKOFF_MS_MAX: u64 = 5_000;
/// After this many reconnect attempts in a row without a single event, `logs -f` gives up.
pub const RECONNECT_ATTEMPTS_MAX: u32 = 120;
/// A follow connection with no byte (not even the server's 15 s keep-alive comment) for this
/// long is considered dead and replaced.
pub const IDLE_TIMEOUT_MS: u64 = 45_000;
/// Bytes read from the socket at a time.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// What to print, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Bytes of a `stdout` record.
    Stdout(Vec<u8>),
    /// Bytes of a `stderr` record.
    Stderr(Vec<u8>),
    /// A message about the stream (dropped bytes, a process exit), for stderr.
    Notice(String),
}

/// The pure core of the follower: which offset comes next, and what each event prints.
#[derive(Debug, Clone)]
pub struct FollowState {
    /// The offset the next record must end after; everything before it was printed (or
    /// skipped by the filter). `None` until the first record.
    next_offset: Option<u64>,
    /// The `id:` of the last `log` event handled: what `Last-Event-ID` says on reconnect.
    last_event_id: Option<String>,
    /// Only records of this process are printed (offsets still advance for the others).
    proc_filter: Option<String>,
}

impl FollowState {
    /// A follower that starts at `from` (when given) and prints only `proc_filter`'s records.
    pub fn new(from: Option<u64>, proc_filter: Option<String>) -> Self {
        Self {
            next_offset: from,
            last_event_id: from.map(|offset| offset.to_string()),
            proc_filter,
        }
    }

    /// The offset to resume from.
    pub fn next_offset(&self) -> Option<u64> {
        self.next_offset
    }

    /// The value for `Last-Event-ID` on a reconnect.
    pub fn last_event_id(&self) -> Option<&str> {
        self.last_event_id.as_deref()
    }

    /// Handles one event. Records that end at or before what was already printed are skipped
    /// (a server that repeats itself cannot make us print twice); a record that overlaps is
    /// cut to its new bytes.
    pub fn on_event(&mut self, event: &SseEvent) -> Result<Vec<Output>, String> {
        match event.event.as_str() {
            // An `id:`-only block: the server skipped bytes (e.g. of a filtered process).
            "" => {
                if let Some(offset) = event
                    .id
                    .as_deref()
                    .and_then(|id| id.trim().parse::<u64>().ok())
                {
                    if self.next_offset.is_none_or(|next| offset > next) {
                        self.next_offset = Some(offset);
                        self.last_event_id = Some(offset.to_string());
                    }
                }
                Ok(Vec::new())
            }
            "log" | "message" => {
                let record: LogRecord = serde_json::from_str(&event.data)
                    .map_err(|error| format!("unreadable log record from the server: {error}"))?;
                let mut bytes = record_bytes(&record)?;
                let end = record.offset.saturating_add(bytes.len() as u64);
                let mut out = Vec::new();
                if let Some(next) = self.next_offset {
                    if end <= next {
                        return Ok(out); // Already printed.
                    }
                    if record.offset < next {
                        let skip = usize::try_from(next - record.offset).unwrap_or(usize::MAX);
                        bytes.drain(..skip.min(bytes.len()));
                    }
                }
                self.next_offset = Some(end);
                self.last_event_id = Some(event.id.clone().unwrap_or_else(|| end.to_string()));
                let wanted = match &self.proc_filter {
                    Some(proc) => *proc == record.proc,
                    None => true,
                };
                if wanted && !bytes.is_empty() {
                    out.push(match record.stream {
                        LogStream::Stdout => Output::Stdout(bytes),
                        LogStream::Stderr => Output::Stderr(bytes),
                    });
                }
                Ok(out)
            }
            "dropped" => {
                let dropped: DroppedEvent = serde_json::from_str(&event.data).map_err(|error| {
                    format!("unreadable dropped event from the server: {error}")
                })?;
                Ok(vec![Output::Notice(format!(
                    "{} bytes of output are no longer retained and were skipped",
                    dropped.bytes
                ))])
            }
            "exit" => {
                let exit: ExitEvent = serde_json::from_str(&event.data)
                    .map_err(|error| format!("unreadable exit event from the server: {error}"))?;
                if let Some(proc) = &self.proc_filter {
                    if *proc != exit.proc {
                        return Ok(Vec::new());
                    }
                }
                let how = match (exit.code, exit.signal) {
                    (_, Some(signal)) => format!("was killed by signal {signal}"),
                    (Some(code), None) => format!("exited with code {code}"),
                    (None, None) => "exited".to_string(),
                };
                Ok(vec![Output::Notice(format!("process {} {how}", exit.proc))])
            }
            _ => Ok(Vec::new()), // Unknown events are for newer clients.
        }
    }
}

/// The bytes of a record: `data` as UTF-8, or `data_b64` decoded.
pub fn record_bytes(record: &LogRecord) -> Result<Vec<u8>, String> {
    match (&record.data, &record.data_b64) {
        (Some(text), _) => Ok(text.as_bytes().to_vec()),
        (None, Some(encoded)) => base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|error| {
                format!(
                    "log record at offset {} has bad base64: {error}",
                    record.offset
                )
            }),
        (None, None) => Ok(Vec::new()),
    }
}

/// How long to wait before reconnect attempt `attempt` (0-based): doubling, capped.
pub fn backoff_ms(attempt: u32) -> u64 {
    BACKOFF_MS_MIN
        .saturating_mul(1u64 << attempt.min(20))
        .min(BACKOFF_MS_MAX)
}

/// Writes outputs to stdout/stderr. `Ok(false)` when stdout is closed (e.g. `| head`): the
/// reader is gone and following should stop quietly.
pub fn emit(outputs: Vec<Output>) -> CliResult<bool> {
    let mut stdout = std::io::stdout().lock();
    for output in outputs {
        let result = match output {
            Output::Stdout(bytes) => stdout.write_all(&bytes),
            Output::Stderr(bytes) => {
                // Keep the two streams in order on a shared terminal.
                let _ = stdout.flush();
                let mut stderr = std::io::stderr().lock();
                let _ = stderr.write_all(&bytes);
                let _ = stderr.flush();
                Ok(())
            }
            Output::Notice(text) => {
                let _ = stdout.flush();
                eprintln!("shoal: {text}");
                Ok(())
            }
        };
        if let Err(error) = result {
            if error.kind() == std::io::ErrorKind::BrokenPipe {
                return Ok(false);
            }
            return Err(error.into());
        }
    }
    match stdout.flush() {
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(error) => Err(error.into()),
        Ok(()) => Ok(true),
    }
}

/// How one connection ended.
enum ConnectionEnd {
    /// The server closed it or it broke; reconnect.
    Dropped { got_events: bool, reason: String },
    /// Stdout is closed; stop.
    ReaderGone,
}

/// Follows `ws`'s log from `state`'s offset until stdout closes, the workstation goes away, or
/// reconnecting fails [`RECONNECT_ATTEMPTS_MAX`] times in a row.
pub fn follow(addr_client: &ApiClient, ws: &str, state: &mut FollowState) -> CliResult<u8> {
    let path = format!("/v1/workstations/{}/logs", path_segment(ws));
    let mut failures: u32 = 0;
    loop {
        let mut query: Vec<(&str, String)> = vec![("follow", "true".to_string())];
        if let Some(from) = state.next_offset() {
            query.push(("from", from.to_string()));
        }
        if let Some(proc) = &state.proc_filter {
            query.push(("proc", proc.clone()));
        }
        let mut request = addr_client
            .request(Method::GET, &path)
            .query(&query)
            .header(reqwest::header::ACCEPT, "text/event-stream");
        if let Some(id) = state.last_event_id() {
            request = request.header("Last-Event-ID", id);
        }
        let end = match addr_client.send(request) {
            Ok(response) => read_stream(response, state)?,
            // The workstation or the key is gone: reconnecting cannot help.
            Err(error @ CliError::Api { status, .. }) if status < 500 && status != 429 => {
                return Err(error)
            }
            Err(error) => ConnectionEnd::Dropped {
                got_events: false,
                reason: error.to_string(),
            },
        };
        match end {
            ConnectionEnd::ReaderGone => return Ok(exit_code::OK),
            ConnectionEnd::Dropped { got_events, reason } => {
                if got_events {
                    failures = 0;
                }
                if failures >= RECONNECT_ATTEMPTS_MAX {
                    return Err(CliError::Other(format!(
                        "gave up following after {failures} failed reconnects: {reason}"
                    )));
                }
                let wait_ms = backoff_ms(failures);
                failures += 1;
                tracing::debug!(reason, wait_ms, "log stream dropped; reconnecting");
                eprintln!(
                    "shoal: connection lost ({reason}); reconnecting from offset {}",
                    state
                        .next_offset()
                        .map_or("start".to_string(), |o| o.to_string())
                );
                std::thread::sleep(Duration::from_millis(wait_ms));
            }
        }
    }
}

/// Reads one SSE connection to its end.
fn read_stream(
    mut response: reqwest::blocking::Response,
    state: &mut FollowState,
) -> CliResult<ConnectionEnd> {
    let mut parser = SseParser::new();
    let mut buffer = vec![0u8; READ_CHUNK_BYTES];
    let mut got_events = false;
    loop {
        let n_read = match response.read(&mut buffer) {
            Ok(0) => {
                return Ok(ConnectionEnd::Dropped {
                    got_events,
                    reason: "the server closed the stream".to_string(),
                })
            }
            Ok(n_read) => n_read,
            Err(error) => {
                return Ok(ConnectionEnd::Dropped {
                    got_events,
                    reason: error.to_string(),
                })
            }
        };
        let events = parser
            .feed(&buffer[..n_read])
            .map_err(|error| CliError::Other(error.to_string()))?;
        for event in &events {
            got_events = true;
            let outputs = state.on_event(event).map_err(CliError::Other)?;
            if !emit(outputs)? {
                return Ok(ConnectionEnd::ReaderGone);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log_event(offset: u64, data: &str, stream: &str, proc: &str) -> SseEvent {
        let end = offset + data.len() as u64;
        SseEvent {
            event: "log".into(),
            data: format!(
                r#"{{"offset":{offset},"len":{},"proc":"{proc}","stream":"{stream}","ts":1,"data":{}}}"#,
                data.len(),
                serde_json::Value::String(data.into())
            ),
            id: Some(end.to_string()),
        }
    }

    #[test]
    fn records_print_to_their_stream_and_advance_the_offset() {
        let mut state = FollowState::new(None, None);
        let out = state
            .on_event(&log_event(0, "hello\n", "stdout", "p1"))
            .unwrap();
        assert_eq!(out, vec![Output::Stdout(b"hello\n".to_vec())]);
        let out = state
            .on_event(&log_event(6, "oops\n", "stderr", "p1"))
            .unwrap();
        assert_eq!(out, vec![Output::Stderr(b"oops\n".to_vec())]);
        assert_eq!(state.next_offset(), Some(11));
        assert_eq!(state.last_event_id(), Some("11"));
    }

    #[test]
    fn repeated_records_are_not_printed_twice_and_overlaps_are_cut() {
        let mut state = FollowState::new(Some(3), None);
        assert_eq!(
            state.on_event(&log_event(0, "ab", "stdout", "p")).unwrap(),
            vec![]
        );
        assert_eq!(
            state
                .on_event(&log_event(1, "bcdef", "stdout", "p"))
                .unwrap(),
            vec![Output::Stdout(b"def".to_vec())]
        );
        assert_eq!(
            state
                .on_event(&log_event(1, "bcdef", "stdout", "p"))
                .unwrap(),
            vec![]
        );
        assert_eq!(state.next_offset(), Some(6));
    }

    #[test]
    fn the_proc_filter_hides_other_processes_but_advances() {
        let mut state = FollowState::new(None, Some("p2".into()));
        assert_eq!(
            state
                .on_event(&log_event(0, "one", "stdout", "p1"))
                .unwrap(),
            vec![]
        );
        assert_eq!(
            state
                .on_event(&log_event(3, "two", "stdout", "p2"))
                .unwrap(),
            vec![Output::Stdout(b"two".to_vec())]
        );
        assert_eq!(state.last_event_id(), Some("6"));
    }

    #[test]
    fn id_only_blocks_move_the_resume_point_forward_only() {
        let mut state = FollowState::new(Some(10), None);
        let skip = |id: &str| SseEvent {
            event: String::new(),
            data: String::new(),
            id: Some(id.into()),
        };
        assert_eq!(state.on_event(&skip("25")).unwrap(), vec![]);
        assert_eq!(state.last_event_id(), Some("25"));
        assert_eq!(state.on_event(&skip("20")).unwrap(), vec![]);
        assert_eq!(state.next_offset(), Some(25));
    }

    #[test]
    fn binary_records_are_decoded_and_notices_are_worded() {
        let mut state = FollowState::new(None, None);
        let event = SseEvent {
            event: "log".into(),
            data: r#"{"offset":0,"len":2,"proc":"p","stream":"stdout","ts":1,"data_b64":"/wA="}"#
                .into(),
            id: Some("2".into()),
        };
        assert_eq!(
            state.on_event(&event).unwrap(),
            vec![Output::Stdout(vec![0xff, 0])]
        );
        let dropped = SseEvent {
            event: "dropped".into(),
            data: r#"{"bytes":42}"#.into(),
            id: None,
        };
        assert_eq!(
            state.on_event(&dropped).unwrap(),
            vec![Output::Notice(
                "42 bytes of output are no longer retained and were skipped".into()
            )]
        );
        let exit = SseEvent {
            event: "exit".into(),
            data: r#"{"proc":"p","code":3,"signal":null}"#.into(),
            id: None,
        };
        assert_eq!(
            state.on_event(&exit).unwrap(),
            vec![Output::Notice("process p exited with code 3".into())]
        );
        let bad = SseEvent {
            event: "log".into(),
            data: "{".into(),
            id: None,
        };
        assert!(state.on_event(&bad).is_err());
    }

    proptest::proptest! {
        /// Model: a byte stream cut into records, delivered over several connections, each of
        /// which replays from some point at or before what was printed (a server or proxy that
        /// repeats itself); the printed bytes are exactly the stream, once.
        #[test]
        fn replayed_deliveries_print_every_byte_exactly_once(
            text in "[a-z\n]{1,200}",
            cut_points in proptest::collection::vec(proptest::prelude::any::<usize>(), 0..20),
            replays in proptest::collection::vec((proptest::prelude::any::<usize>(), proptest::prelude::any::<usize>()), 1..6),
        ) {
            let bytes = text.as_bytes();
            let mut cuts: Vec<usize> = cut_points.into_iter().map(|c| c % bytes.len()).filter(|&c| c > 0).collect();
            cuts.push(0);
            cuts.push(bytes.len());
            cuts.sort_unstable();
            cuts.dedup();
            let records: Vec<(u64, &str)> = cuts
                .windows(2)
                .map(|w| (w[0] as u64, &text[w[0]..w[1]]))
                .collect();
            let mut state = FollowState::new(None, None);
            let mut printed = Vec::new();
            let mut delivered_idx = 0usize;
            for (back, take) in replays.into_iter().chain(std::iter::once((0, usize::MAX))) {
                // A connection starts up to `back` records before where the last one stopped.
                let start = delivered_idx.saturating_sub(back % 4);
                let end = start.saturating_add(take % 8 + 1).min(records.len());
                let end = if take == usize::MAX { records.len() } else { end };
                for &(offset, data) in &records[start..end] {
                    for output in state.on_event(&log_event(offset, data, "stdout", "p")).unwrap() {
                        if let Output::Stdout(b) = output {
                            printed.extend(b);
                        }
                    }
                }
                delivered_idx = delivered_idx.max(end);
            }
            proptest::prop_assert_eq!(printed, bytes.to_vec());
        }
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        assert_eq!(backoff_ms(0), 100);
        assert_eq!(backoff_ms(1), 200);
        assert_eq!(backoff_ms(5), 3_200);
        assert_eq!(backoff_ms(6), BACKOFF_MS_MAX);
        assert_eq!(backoff_ms(u32::MAX), BACKOFF_MS_MAX);
    }
}
