//! The rolling log buffer of one workstation: a pure data structure, no I/O, no clock.
//!
//! The log is one byte stream per workstation, addressed by byte offsets that count bytes since
//! the workstation was created and never go back (SPEC.md "Logs"). The buffer keeps the newest
//! `capacity_bytes` bytes of that stream (5,242,880 for a workstation) as *records*: runs of
//! bytes written by one process to one stream, each with a timestamp.
//!
//! # Memory
//!
//! Memory is allocated once, at construction: a ring of exactly `capacity_bytes` bytes for the
//! record data, and an index of at most `records_max` record descriptors (40 bytes each). Both
//! are preallocated and never grow, so a flood of 1-byte writes cannot grow the buffer.
//!
//! # Eviction
//!
//! * Bytes: when an append would make the retained data exceed `capacity_bytes`, the oldest
//!   bytes are dropped first. The oldest record is cut at the byte level, so the buffer always
//!   retains exactly the newest `min(written, capacity_bytes)` bytes unless the index bound
//!   (next point) dropped more.
//! * Index: when the index is full, a new write is *coalesced* into the newest record if it
//!   comes from the same process and stream (the record keeps the timestamp of its first byte);
//!   otherwise the oldest record is dropped to make room. Coalescing was chosen over always
//!   dropping because the common flood is one process printing small lines: merging keeps all
//!   of its bytes (only record boundaries, which carry no meaning for a byte stream, are lost),
//!   whereas dropping the oldest record would throw away output that the byte bound still
//!   allows. Dropping remains the fallback for interleaved floods, so the index stays bounded
//!   in every case.
//!
//! # Reading
//!
//! [`LogBuffer::read`] follows SPEC.md: the answer holds the records with bytes at or after the
//! requested offset (a record that starts before it is cut at it); `dropped` is how many of the
//! requested bytes are no longer retained; `next` is the offset to ask for next.

use std::collections::VecDeque;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::process_id::ProcId;

/// The byte bound of a workstation's log (SPEC.md "Numbers": 5 MiB, exact bound).
pub const LOG_BUFFER_BYTES_MAX: usize = 5_242_880;

/// The default bound on the number of records a workstation's log indexes. At 40 bytes per
/// descriptor this is 1.25 MiB; it fills the 5 MiB byte bound as long as records average at
/// least 160 bytes, and coalescing keeps single-stream floods of smaller writes complete.
pub const LOG_RECORDS_MAX: usize = 32_768;

/// Which output stream of a process a record comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    /// The process's standard output.
    Stdout,
    /// The process's standard error.
    Stderr,
}

impl Stream {
    /// The name used on the wire: `"stdout"` or `"stderr"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// A run of bytes written by one process to one stream, as returned by a read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    /// The log offset of the first byte of `bytes`.
    pub offset: u64,
    /// The number of bytes, always `bytes.len()`.
    pub len: u64,
    /// The process that wrote the bytes.
    pub proc: ProcId,
    /// The stream the bytes were written to.
    pub stream: Stream,
    /// When the record's first byte was captured, in milliseconds since the Unix epoch.
    pub ts_ms: u64,
    /// The bytes exactly as written (not necessarily UTF-8).
    pub bytes: Vec<u8>,
}

impl LogRecord {
    /// The offset just after this record's last byte.
    pub fn end_offset(&self) -> u64 {
        self.offset + self.len
    }

    /// The record in its API form (SPEC.md "Logs").
    pub fn to_json(&self) -> LogRecordJson {
        LogRecordJson::from(self)
    }
}

/// The answer to a read (SPEC.md "Logs").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRead {
    /// The offset that was asked for, echoed back.
    pub from: u64,
    /// How many of the requested bytes are no longer retained (or, after a re-placement, were
    /// never produced on this node).
    pub dropped: u64,
    /// The offset to ask for next.
    pub next: u64,
    /// The records holding bytes at or after `from`, oldest first.
    pub records: Vec<LogRecord>,
}

impl LogRead {
    /// The read in its API form.
    pub fn to_json(&self) -> LogReadJson {
        LogReadJson {
            from: self.from,
            dropped: self.dropped,
            next: self.next,
            records: self.records.iter().map(LogRecordJson::from).collect(),
        }
    }
}

/// A log record as the HTTP API shows it: `data` when the bytes are valid UTF-8, otherwise
/// `data_b64` (standard base64 with padding); exactly one of the two is present.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRecordJson {
    /// Offset of the record's first byte.
    pub offset: u64,
    /// Length of the record in bytes.
    pub len: u64,
    /// The process that wrote it.
    pub proc: ProcId,
    /// `"stdout"` or `"stderr"`.
    pub stream: Stream,
    /// Capture time, milliseconds since the Unix epoch.
    pub ts: u64,
    /// The bytes as text, when they are valid UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    /// The bytes in base64, when they are not valid UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_b64: Option<String>,
}

impl From<&LogRecord> for LogRecordJson {
    fn from(record: &LogRecord) -> Self {
        let (data, data_b64) = match std::str::from_utf8(&record.bytes) {
            Ok(text) => (Some(text.to_owned()), None),
            Err(_) => (
                None,
                Some(base64::engine::general_purpose::STANDARD.encode(&record.bytes)),
            ),
        };
        Self {
            offset: record.offset,
            len: record.len,
            proc: record.proc,
            stream: record.stream,
            ts: record.ts_ms,
            data,
            data_b64,
        }
    }
}

/// A read in its API form: `{from, dropped, next, records}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogReadJson {
    /// The offset that was asked for.
    pub from: u64,
    /// Requested bytes no longer retained.
    pub dropped: u64,
    /// The offset to ask for next.
    pub next: u64,
    /// The records.
    pub records: Vec<LogRecordJson>,
}

/// The descriptor of one retained record; its bytes live in the ring.
#[derive(Debug, Clone, Copy)]
struct RecordMeta {
    offset: u64,
    len: u64,
    proc: ProcId,
    stream: Stream,
    ts_ms: u64,
}

/// A rolling, offset-addressed log of bounded size. See the module documentation.
pub struct LogBuffer {
    /// The record data: the byte at log offset `o` lives at `ring[o % ring.len()]`. Retained
    /// bytes are always the newest, contiguous in offset space, and at most `ring.len()`, so
    /// that mapping is unambiguous.
    ring: Box<[u8]>,
    /// Retained records, oldest first, contiguous: each starts where the previous one ends.
    /// Preallocated with `records_max` slots and never pushed beyond them.
    index: VecDeque<RecordMeta>,
    records_max: usize,
    /// Offset of the oldest retained byte (equals `end` when nothing is retained).
    start: u64,
    /// Offset just after the newest byte ever written.
    end: u64,
    /// `end % ring.len()`, kept up to date incrementally: a 64-bit division per append costs as
    /// much as copying a small write.
    write_position: usize,
}

impl std::fmt::Debug for LogBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogBuffer")
            .field("capacity_bytes", &self.ring.len())
            .field("records_max", &self.records_max)
            .field("records", &self.index.len())
            .field("start", &self.start)
            .field("end", &self.end)
            .finish()
    }
}

impl LogBuffer {
    /// An empty buffer keeping at most `capacity_bytes` bytes, starting at offset 0, with the
    /// default index bound scaled to the capacity (at most [`LOG_RECORDS_MAX`]).
    pub fn new(capacity_bytes: usize) -> Self {
        Self::with_start_offset(capacity_bytes, 0)
    }

    /// An empty buffer whose first byte will have offset `start_offset`. A re-placed
    /// workstation starts its new log above any offset the old node can have produced, so a
    /// reader of the lost span is told it was `dropped` (SPEC.md "Log continuity").
    pub fn with_start_offset(capacity_bytes: usize, start_offset: u64) -> Self {
        let records_max = (capacity_bytes / 160).clamp(16, LOG_RECORDS_MAX);
        Self::with_limits(capacity_bytes, records_max, start_offset)
    }

    /// An empty buffer with an explicit index bound. Both bounds are at least 1.
    pub fn with_limits(capacity_bytes: usize, records_max: usize, start_offset: u64) -> Self {
        let capacity_bytes = capacity_bytes.max(1);
        let records_max = records_max.max(1);
        Self {
            ring: vec![0u8; capacity_bytes].into_boxed_slice(),
            index: VecDeque::with_capacity(records_max),
            records_max,
            start: start_offset,
            end: start_offset,
            write_position: (start_offset % capacity_bytes as u64) as usize,
        }
    }

    /// The most bytes this buffer retains.
    pub fn capacity_bytes(&self) -> usize {
        self.ring.len()
    }

    /// The most records this buffer indexes.
    pub fn records_max(&self) -> usize {
        self.records_max
    }

    /// Offset of the oldest retained byte (equal to [`Self::end_offset`] when empty).
    pub fn start_offset(&self) -> u64 {
        self.start
    }

    /// Offset the next written byte will get.
    pub fn end_offset(&self) -> u64 {
        self.end
    }

    /// How many bytes are retained (never more than [`Self::capacity_bytes`]).
    pub fn retained_bytes(&self) -> u64 {
        self.end - self.start
    }

    /// How many records are retained (never more than [`Self::records_max`]).
    pub fn record_count(&self) -> usize {
        self.index.len()
    }

    /// Appends bytes written by `proc` to `stream` at `ts_ms`, and returns the offset of their
    /// first byte. An empty write changes nothing and returns the current end offset. A write
    /// larger than the whole buffer keeps only its newest `capacity_bytes` bytes.
    pub fn append(&mut self, proc: ProcId, stream: Stream, ts_ms: u64, bytes: &[u8]) -> u64 {
        let offset = self.end;
        if bytes.is_empty() {
            return offset;
        }
        let capacity = self.ring.len();
        let kept = if bytes.len() > capacity {
            &bytes[bytes.len() - capacity..]
        } else {
            bytes
        };
        let skipped = (bytes.len() - kept.len()) as u64;
        if skipped > 0 {
            // The write alone overflows the buffer: everything retained so far, and the head
            // of the write itself, fall out.
            self.index.clear();
            self.end += skipped;
            self.start = self.end;
            self.write_position = (self.end % capacity as u64) as usize;
        }
        let position = self.write_position;
        let first_part = kept.len().min(capacity - position);
        self.ring[position..position + first_part].copy_from_slice(&kept[..first_part]);
        let rest = kept.len() - first_part;
        if rest > 0 {
            self.ring[..rest].copy_from_slice(&kept[first_part..]);
        }
        self.commit(proc, stream, ts_ms, kept.len() as u64);
        offset
    }

    /// Appends bytes produced by `fill` directly into the ring, without an intermediate
    /// buffer: `fill` gets a slice of at most `len_max` bytes (and at least one, at the ring's
    /// current write position) and returns how many it wrote, e.g. a non-blocking `read(2)`
    /// from a pipe. Returns that count; 0 (or an error) appends nothing.
    ///
    /// Writing into the ring before the bookkeeping is safe: the slice covers exactly the
    /// oldest retained bytes, which the append drops anyway, and nothing else can observe the
    /// buffer in between.
    pub fn append_from<E>(
        &mut self,
        proc: ProcId,
        stream: Stream,
        ts_ms: u64,
        len_max: usize,
        fill: impl FnOnce(&mut [u8]) -> Result<usize, E>,
    ) -> Result<usize, E> {
        let capacity = self.ring.len();
        let position = self.write_position;
        let len = len_max.max(1).min(capacity - position);
        let written = fill(&mut self.ring[position..position + len])?;
        // A `fill` that claims more than it was given is a bug in the caller.
        assert!(written <= len, "fill wrote {written} bytes into {len}");
        if written > 0 {
            self.commit(proc, stream, ts_ms, written as u64);
        }
        Ok(written)
    }

    /// Accounts for `len` bytes (at most the capacity) just written at the ring's write
    /// position: indexes them, advances the end, and drops what no longer fits.
    fn commit(&mut self, proc: ProcId, stream: Stream, ts_ms: u64, len: u64) {
        let capacity = self.ring.len() as u64;
        debug_assert!(len > 0 && len <= capacity);
        let coalesce = self.index.len() == self.records_max
            && self
                .index
                .back()
                .is_some_and(|newest| newest.proc == proc && newest.stream == stream);
        if coalesce {
            if let Some(newest) = self.index.back_mut() {
                newest.len += len;
            }
        } else {
            if self.index.len() == self.records_max {
                // Index full and nothing to merge with: the oldest record makes room.
                self.index.pop_front();
            }
            self.index.push_back(RecordMeta {
                offset: self.end,
                len,
                proc,
                stream,
                ts_ms,
            });
        }
        self.end += len;
        let position = self.write_position + len as usize;
        self.write_position = if position >= capacity as usize {
            position - capacity as usize
        } else {
            position
        };
        debug_assert_eq!(self.write_position as u64, self.end % capacity);
        self.trim_to(self.end.saturating_sub(capacity));
        self.start = self.index.front().map_or(self.end, |oldest| oldest.offset);
        debug_assert!(self.end - self.start <= capacity);
        debug_assert!(self.index.len() <= self.records_max);
    }

    /// Drops every retained byte below `floor`, cutting the record that straddles it.
    fn trim_to(&mut self, floor: u64) {
        while let Some(oldest) = self.index.front_mut() {
            if oldest.offset >= floor {
                break;
            }
            let oldest_end = oldest.offset + oldest.len;
            if oldest_end <= floor {
                self.index.pop_front();
            } else {
                oldest.len = oldest_end - floor;
                oldest.offset = floor;
                break;
            }
        }
    }

    /// Reads up to `limit_bytes` bytes of records from offset `from` (SPEC.md "Logs").
    ///
    /// If `from` is older than the oldest retained byte, `dropped` says how many requested
    /// bytes are gone and the read continues at the oldest retained byte. If `from` is past
    /// the end of the log, the answer is empty and `next` is the end of the log.
    pub fn read(&self, from: u64, limit_bytes: usize) -> LogRead {
        self.read_records(from, limit_bytes, usize::MAX)
    }

    /// Like [`Self::read`], returning at most `records_max` records.
    pub fn read_records(&self, from: u64, limit_bytes: usize, records_max: usize) -> LogRead {
        let (mut cursor, dropped) = if from < self.start {
            (self.start, self.start - from)
        } else if from > self.end {
            (self.end, 0)
        } else {
            (from, 0)
        };
        let mut remaining = limit_bytes as u64;
        let mut records = Vec::new();
        let mut position = self
            .index
            .partition_point(|record| record.offset + record.len <= cursor);
        while remaining > 0 && records.len() < records_max {
            let Some(meta) = self.index.get(position) else {
                break;
            };
            let record_start = meta.offset.max(cursor);
            let record_end = (meta.offset + meta.len).min(record_start.saturating_add(remaining));
            records.push(LogRecord {
                offset: record_start,
                len: record_end - record_start,
                proc: meta.proc,
                stream: meta.stream,
                ts_ms: meta.ts_ms,
                bytes: self.copy_out(record_start, record_end),
            });
            remaining -= record_end - record_start;
            cursor = record_end;
            position += 1;
        }
        LogRead {
            from,
            dropped,
            next: cursor,
            records,
        }
    }

    /// Copies the retained bytes `[from, to)` out of the ring.
    fn copy_out(&self, from: u64, to: u64) -> Vec<u8> {
        debug_assert!(self.start <= from && from <= to && to <= self.end);
        let capacity = self.ring.len();
        let len = (to - from) as usize;
        let position = (from % capacity as u64) as usize;
        let first_part = len.min(capacity - position);
        let mut bytes = Vec::with_capacity(len);
        bytes.extend_from_slice(&self.ring[position..position + first_part]);
        bytes.extend_from_slice(&self.ring[..len - first_part]);
        bytes
    }
}
