//! `shoal logs WS [-f] [--from OFFSET] [--tail BYTES] [--proc PROC]`.

use std::time::Duration;

use super::cluster::path_segment;
use super::error::{exit_code, CliError, CliResult};
use super::follow::{emit, follow, record_bytes, FollowState, Output, IDLE_TIMEOUT_MS};
use super::render::print_json;
use super::units::parse_size;
use super::ConnectionArgs;
use crate::api_types::{LogStream, LogsPage};

/// Most pages one `logs` read asks for: the retained log is at most 5 MiB, so this is far more
/// than a well-behaved server needs, and stops a misbehaving one from looping us forever.
const PAGES_MAX: u32 = 10_000;

/// `shoal logs`.
#[derive(Debug, clap::Args)]
pub struct LogsArgs {
    #[command(flatten)]
    conn: ConnectionArgs,
    /// The workstation id.
    ws: String,
    /// Keep following new output; on a dropped connection, resume where it stopped.
    #[arg(short, long)]
    follow: bool,
    /// Start at this byte offset of the workstation's log (default: the oldest retained byte).
    #[arg(long, value_name = "OFFSET", conflicts_with = "tail")]
    from: Option<u64>,
    /// Print only the last BYTES bytes of retained output (e.g. 4096, 64KiB).
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    tail: Option<u64>,
    /// Only the output of this process.
    #[arg(long, value_name = "PROC")]
    proc: Option<String>,
}

/// `shoal logs`.
pub fn logs(args: &LogsArgs) -> CliResult<u8> {
    if args.conn.json && args.follow {
        return Err(CliError::Usage("--json cannot be combined with -f".into()));
    }
    let client = args.conn.client()?;
    let path = format!("/v1/workstations/{}/logs", path_segment(&args.ws));
    let needs_read = !args.follow || args.tail.is_some() || args.conn.json;
    let mut state = FollowState::new(args.from, args.proc.clone());
    if needs_read {
        let mut from = args.from.unwrap_or(0);
        // `--json` prints one page merged from all pages read; records are kept for it only.
        let mut merged: Option<LogsPage> = None;
        // With `--tail`, only the last `tail` bytes are kept between pages (bounded memory).
        let mut tail_outputs: Vec<Output> = Vec::new();
        for _ in 0..PAGES_MAX {
            let mut query = vec![("from", from.to_string())];
            if let Some(proc) = &args.proc {
                query.push(("proc", proc.clone()));
            }
            let value = client.get_query(&path, &query)?;
            let page: LogsPage = serde_json::from_value(value).map_err(|error| {
                CliError::Other(format!("unreadable logs answer from the server: {error}"))
            })?;
            let first_page = merged.is_none();
            let mut outputs: Vec<Output> = Vec::new();
            if page.dropped > 0 && first_page && !args.conn.json {
                outputs.push(Output::Notice(format!(
                    "{} bytes of output before offset {} are no longer retained",
                    page.dropped,
                    page.from.saturating_add(page.dropped)
                )));
            }
            // Filtered pages may be empty yet move on: only a page that does not advance ends it.
            let done = page.next <= from;
            for record in &page.records {
                if args.proc.as_ref().is_some_and(|proc| *proc != record.proc) {
                    continue;
                }
                let bytes = record_bytes(record).map_err(CliError::Other)?;
                outputs.push(match record.stream {
                    LogStream::Stdout => Output::Stdout(bytes),
                    LogStream::Stderr => Output::Stderr(bytes),
                });
            }
            from = page.next.max(from);
            match &mut merged {
                None => merged = Some(page),
                Some(all) => {
                    all.next = page.next;
                    if args.conn.json {
                        all.records.extend(page.records);
                    }
                }
            }
            if args.conn.json {
                // Printed at the end, as one document.
            } else if let Some(tail) = args.tail {
                tail_outputs.extend(outputs);
                tail_outputs = keep_tail(tail_outputs, tail);
            } else if !emit(outputs)? {
                return Ok(exit_code::OK);
            }
            if done {
                break;
            }
        }
        if args.conn.json {
            if let Some(page) = &merged {
                let value = serde_json::to_value(page).map_err(|error| {
                    CliError::Other(format!("cannot encode the logs page: {error}"))
                })?;
                print_json(&value);
            }
            return Ok(exit_code::OK);
        }
        if !emit(tail_outputs)? || !args.follow {
            return Ok(exit_code::OK);
        }
        state = FollowState::new(Some(from), args.proc.clone());
    }
    let follow_client = args
        .conn
        .client_with_timeout(Duration::from_millis(IDLE_TIMEOUT_MS))?;
    follow(&follow_client, &args.ws, &mut state)
}

/// Keeps the last `tail_bytes` bytes of output (notices are kept whole).
pub fn keep_tail(outputs: Vec<Output>, tail_bytes: u64) -> Vec<Output> {
    let mut remaining = tail_bytes;
    let mut kept = Vec::new();
    for output in outputs.into_iter().rev() {
        match output {
            Output::Stdout(_) | Output::Stderr(_) if remaining == 0 => {}
            Output::Stdout(bytes) => {
                let (bytes, used) = cut_head(bytes, remaining);
                remaining -= used;
                kept.push(Output::Stdout(bytes));
            }
            Output::Stderr(bytes) => {
                let (bytes, used) = cut_head(bytes, remaining);
                remaining -= used;
                kept.push(Output::Stderr(bytes));
            }
            Output::Notice(_) => {} // Notices are about bytes before the tail.
        }
    }
    kept.reverse();
    kept
}

/// The last `at_most` bytes of `bytes`, and how many that is.
fn cut_head(mut bytes: Vec<u8>, at_most: u64) -> (Vec<u8>, u64) {
    let len = bytes.len() as u64;
    if len > at_most {
        let skip = usize::try_from(len - at_most).unwrap_or(bytes.len());
        bytes.drain(..skip);
    }
    let used = bytes.len() as u64;
    (bytes, used)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_last_bytes_across_records() {
        let outputs = vec![
            Output::Notice("dropped".into()),
            Output::Stdout(b"hello\n".to_vec()),
            Output::Stderr(b"err\n".to_vec()),
            Output::Stdout(b"bye\n".to_vec()),
        ];
        assert_eq!(
            keep_tail(outputs.clone(), 6),
            vec![
                Output::Stderr(b"r\n".to_vec()),
                Output::Stdout(b"bye\n".to_vec())
            ]
        );
        assert_eq!(keep_tail(outputs.clone(), 0), vec![]);
        assert_eq!(keep_tail(outputs, 1000).len(), 3);
    }
}
