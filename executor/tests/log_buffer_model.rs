//! The log buffer against a trivially correct model (DESIGN.md §5): a list of records holding
//! their bytes in plain vectors, read byte by byte.

// Test code: a panic is the failure report (the workspace denies unwrap/expect elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;
use shoal_executor::log_buffer::{LogBuffer, LogRead, LogRecord, Stream, LOG_BUFFER_BYTES_MAX};
use shoal_executor::process_id::ProcId;

#[derive(Debug, Clone)]
struct ModelRecord {
    offset: u64,
    proc: ProcId,
    stream: Stream,
    ts_ms: u64,
    data: Vec<u8>,
}

/// The model: same eviction rules, no ring, no index arithmetic.
#[derive(Debug)]
struct Model {
    capacity_bytes: usize,
    records_max: usize,
    records: Vec<ModelRecord>,
    end: u64,
}

impl Model {
    fn new(capacity_bytes: usize, records_max: usize, start_offset: u64) -> Self {
        Self {
            capacity_bytes,
            records_max,
            records: Vec::new(),
            end: start_offset,
        }
    }

    fn start(&self) -> u64 {
        self.records
            .first()
            .map_or(self.end, |record| record.offset)
    }

    fn append(&mut self, proc: ProcId, stream: Stream, ts_ms: u64, bytes: &[u8]) -> u64 {
        let offset = self.end;
        if bytes.is_empty() {
            return offset;
        }
        let skipped = bytes.len().saturating_sub(self.capacity_bytes);
        if skipped > 0 {
            self.records.clear();
            self.end += skipped as u64;
        }
        let kept = &bytes[skipped..];
        let full = self.records.len() == self.records_max;
        match self.records.last_mut() {
            Some(last) if full && last.proc == proc && last.stream == stream => {
                last.data.extend_from_slice(kept)
            }
            _ => {
                if full {
                    self.records.remove(0);
                }
                self.records.push(ModelRecord {
                    offset: self.end,
                    proc,
                    stream,
                    ts_ms,
                    data: kept.to_vec(),
                });
            }
        }
        self.end += kept.len() as u64;
        loop {
            let total: usize = self.records.iter().map(|record| record.data.len()).sum();
            if total <= self.capacity_bytes {
                break;
            }
            let excess = total - self.capacity_bytes;
            let first = &mut self.records[0];
            if first.data.len() <= excess {
                self.records.remove(0);
            } else {
                first.data.drain(..excess);
                first.offset += excess as u64;
            }
        }
        offset
    }

    /// Byte by byte: every retained byte at or after the effective start, up to the limit,
    /// grouped back by the record it came from.
    fn read(&self, from: u64, limit_bytes: usize) -> LogRead {
        let start = self.start();
        let dropped = start.saturating_sub(from);
        let effective = from.clamp(start, self.end);
        let mut records: Vec<LogRecord> = Vec::new();
        let mut next = effective;
        let mut taken = 0usize;
        let mut last_record_idx: Option<usize> = None;
        for (record_idx, record) in self.records.iter().enumerate() {
            for (byte_idx, &byte) in record.data.iter().enumerate() {
                let offset = record.offset + byte_idx as u64;
                if offset < effective || taken == limit_bytes {
                    continue;
                }
                taken += 1;
                next = offset + 1;
                // Consecutive bytes of one model record form one answer record.
                let same_record = last_record_idx == Some(record_idx);
                last_record_idx = Some(record_idx);
                if same_record {
                    let last = records.last_mut().expect("checked above");
                    last.bytes.push(byte);
                    last.len += 1;
                } else {
                    records.push(LogRecord {
                        offset,
                        len: 1,
                        proc: record.proc,
                        stream: record.stream,
                        ts_ms: record.ts_ms,
                        bytes: vec![byte],
                    });
                }
            }
        }
        LogRead {
            from,
            dropped,
            next,
            records,
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    Append {
        proc: u64,
        stream: Stream,
        len: usize,
        seed: u8,
    },
    /// `append_from` with a fill that writes at most `len` bytes.
    AppendFrom {
        proc: u64,
        stream: Stream,
        len: usize,
        seed: u8,
    },
    Read {
        from_back: u64,
        limit_bytes: usize,
    },
}

fn op_strategy(capacity_bytes: usize) -> impl Strategy<Value = Op> {
    let stream = prop_oneof![Just(Stream::Stdout), Just(Stream::Stderr)];
    prop_oneof![
        3 => (0u64..3, stream.clone(), 0..=capacity_bytes + 20, any::<u8>())
            .prop_map(|(proc, stream, len, seed)| Op::Append { proc, stream, len, seed }),
        2 => (0u64..3, stream, 0..=capacity_bytes + 20, any::<u8>())
            .prop_map(|(proc, stream, len, seed)| Op::AppendFrom { proc, stream, len, seed }),
        // Reads are placed relative to the end: from far before the start to just past the end.
        2 => (0u64..(3 * capacity_bytes as u64 + 10), 0..=capacity_bytes + 20)
            .prop_map(|(from_back, limit_bytes)| Op::Read { from_back, limit_bytes }),
    ]
}

fn scenario() -> impl Strategy<Value = (usize, usize, u64, Vec<Op>)> {
    (
        1usize..=48,
        1usize..=6,
        prop_oneof![Just(0u64), 0u64..1_000],
    )
        .prop_flat_map(|(capacity_bytes, records_max, start_offset)| {
            (
                Just(capacity_bytes),
                Just(records_max),
                Just(start_offset),
                proptest::collection::vec(op_strategy(capacity_bytes), 1..60),
            )
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Every append returns the model's offset, every read equals the model's read, and the
    /// bounds (bytes retained, records indexed) hold after every step.
    #[test]
    fn log_buffer_matches_the_model((capacity_bytes, records_max, start_offset, ops) in scenario()) {
        let mut buffer = LogBuffer::with_limits(capacity_bytes, records_max, start_offset);
        let mut model = Model::new(capacity_bytes, records_max, start_offset);
        for (step, op) in ops.into_iter().enumerate() {
            match op {
                Op::Append { proc, stream, len, seed } => {
                    let bytes: Vec<u8> = (0..len).map(|i| seed.wrapping_add(i as u8)).collect();
                    let ts_ms = step as u64;
                    let got = buffer.append(ProcId(proc), stream, ts_ms, &bytes);
                    let want = model.append(ProcId(proc), stream, ts_ms, &bytes);
                    prop_assert_eq!(got, want);
                }
                Op::AppendFrom { proc, stream, len, seed } => {
                    let bytes: Vec<u8> = (0..len).map(|i| seed.wrapping_add(i as u8)).collect();
                    let ts_ms = step as u64;
                    let written = buffer
                        .append_from(ProcId(proc), stream, ts_ms, len, |slot| {
                            let n = slot.len().min(bytes.len());
                            slot[..n].copy_from_slice(&bytes[..n]);
                            Ok::<usize, ()>(n)
                        })
                        .map_err(|()| TestCaseError::fail("fill cannot fail"))?;
                    prop_assert!(written <= len);
                    model.append(ProcId(proc), stream, ts_ms, &bytes[..written]);
                }
                Op::Read { from_back, limit_bytes } => {
                    let from = (model.end + 5).saturating_sub(from_back);
                    prop_assert_eq!(buffer.read(from, limit_bytes), model.read(from, limit_bytes));
                }
            }
            prop_assert!(buffer.retained_bytes() <= capacity_bytes as u64);
            prop_assert!(buffer.record_count() <= records_max);
            prop_assert_eq!(buffer.start_offset(), model.start());
            prop_assert_eq!(buffer.end_offset(), model.end);
            let everything = buffer.read(0, usize::MAX);
            prop_assert_eq!(&everything, &model.read(0, usize::MAX));
            prop_assert_eq!(everything.dropped, model.start());
        }
    }
}

#[test]
fn a_flood_of_one_byte_writes_keeps_the_index_bounded_and_the_newest_bytes() {
    let mut buffer = LogBuffer::new(LOG_BUFFER_BYTES_MAX);
    let records_max = buffer.records_max();
    let writes = LOG_BUFFER_BYTES_MAX + 1_000;
    for i in 0..writes {
        buffer.append(ProcId(1), Stream::Stdout, 0, &[(i % 251) as u8]);
    }
    assert!(buffer.record_count() <= records_max);
    assert_eq!(buffer.retained_bytes(), LOG_BUFFER_BYTES_MAX as u64);
    let read = buffer.read(0, usize::MAX);
    assert_eq!(read.dropped, 1_000);
    let mut offset = read.dropped;
    for record in &read.records {
        assert_eq!(record.offset, offset);
        for (i, &byte) in record.bytes.iter().enumerate() {
            assert_eq!(byte, ((offset + i as u64) % 251) as u8);
        }
        offset += record.len;
    }
    assert_eq!(offset, writes as u64);
}

#[test]
fn interleaved_one_byte_writes_drop_oldest_records_when_the_index_is_full() {
    let mut buffer = LogBuffer::with_limits(1_000, 4, 0);
    for i in 0..10u8 {
        let stream = if i % 2 == 0 {
            Stream::Stdout
        } else {
            Stream::Stderr
        };
        buffer.append(ProcId(1), stream, 0, &[i]);
    }
    let read = buffer.read(0, usize::MAX);
    assert_eq!(read.dropped, 6);
    let bytes: Vec<u8> = read.records.iter().flat_map(|r| r.bytes.clone()).collect();
    assert_eq!(bytes, vec![6, 7, 8, 9]);
}

#[test]
fn a_read_cuts_the_record_that_straddles_from_and_reports_dropped() {
    let mut buffer = LogBuffer::with_limits(10, 16, 0);
    buffer.append(ProcId(1), Stream::Stdout, 7, b"hello");
    buffer.append(ProcId(2), Stream::Stderr, 8, b"world!");
    // 11 bytes written into 10: the first byte is gone.
    let read = buffer.read(0, usize::MAX);
    assert_eq!((read.dropped, read.next), (1, 11));
    assert_eq!(read.records[0].bytes, b"ello");
    let read = buffer.read(3, 4);
    assert_eq!((read.dropped, read.next), (0, 7));
    assert_eq!(read.records.len(), 2);
    assert_eq!(
        (read.records[0].offset, &read.records[0].bytes[..]),
        (3, &b"lo"[..])
    );
    assert_eq!(
        (read.records[1].offset, &read.records[1].bytes[..]),
        (5, &b"wo"[..])
    );
    assert_eq!(read.records[1].proc, ProcId(2));
}

#[test]
fn a_buffer_with_a_start_offset_reports_the_lost_span_as_dropped() {
    let mut buffer = LogBuffer::with_start_offset(LOG_BUFFER_BYTES_MAX, 1_000_000);
    assert_eq!(
        buffer.append(ProcId(1), Stream::Stdout, 0, b"new"),
        1_000_000
    );
    let read = buffer.read(999_990, 100);
    assert_eq!(
        (read.from, read.dropped, read.next),
        (999_990, 10, 1_000_003)
    );
    assert_eq!(read.records[0].bytes, b"new");
}

#[test]
fn a_write_larger_than_the_buffer_keeps_its_newest_bytes() {
    let mut buffer = LogBuffer::with_limits(4, 4, 0);
    buffer.append(ProcId(1), Stream::Stdout, 0, b"ab");
    assert_eq!(
        buffer.append(ProcId(1), Stream::Stdout, 0, b"0123456789"),
        2
    );
    let read = buffer.read(0, usize::MAX);
    assert_eq!((read.dropped, read.next), (8, 12));
    assert_eq!(read.records[0].bytes, b"6789");
}

#[test]
fn records_serialize_as_text_or_base64() {
    let mut buffer = LogBuffer::new(64);
    buffer.append(ProcId(3), Stream::Stderr, 42, "héllo".as_bytes());
    buffer.append(ProcId(3), Stream::Stdout, 43, &[0xff, 0x00, 0xfe]);
    let json = serde_json::to_value(buffer.read(0, usize::MAX).to_json()).expect("serializable");
    assert_eq!(
        json,
        serde_json::json!({
            "from": 0, "dropped": 0, "next": 9,
            "records": [
                {"offset": 0, "len": 6, "proc": 3, "stream": "stderr", "ts": 42, "data": "héllo"},
                {"offset": 6, "len": 3, "proc": 3, "stream": "stdout", "ts": 43, "data_b64": "/wD+"}
            ]
        })
    );
}
