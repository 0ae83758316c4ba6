//! Log buffer append throughput beside a plain memcpy into a preallocated buffer of the same
//! size, measured in the same run (DESIGN.md §5). Prints the append/memcpy throughput ratio per
//! write size twice: from criterion's samples, and from interleaved batches (robust to load
//! from other work on a shared machine). The target for 4 KiB writes is ≥ 0.5.
//!
//! `cargo bench -p shoal-executor --bench log_buffer_append`

// Measurement code run by hand: a panic is the failure report (the workspace denies
// unwrap/expect in the crates' code).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, Criterion, Throughput};
use shoal_executor::clock::{Clock, SystemClock};
use shoal_executor::log_buffer::{LogBuffer, Stream, LOG_BUFFER_BYTES_MAX};
use shoal_executor::process_id::ProcId;

const SIZES: [usize; 3] = [64, 4_096, 65_536];

/// (write size, "append" or "memcpy") → (iterations, total time), over criterion's samples.
type Totals = BTreeMap<(usize, &'static str), (u64, Duration)>;

thread_local! {
    static TOTALS: RefCell<Totals> = const { RefCell::new(BTreeMap::new()) };
}

fn record(size: usize, kind: &'static str, iterations: u64, elapsed: Duration) {
    TOTALS.with(|totals| {
        let mut totals = totals.borrow_mut();
        let entry = totals.entry((size, kind)).or_insert((0, Duration::ZERO));
        entry.0 += iterations;
        entry.1 += elapsed;
    });
}

fn bench_append(criterion: &mut Criterion) {
    let clock = SystemClock;
    for size in SIZES {
        let mut group = criterion.benchmark_group(format!("append_{size}B"));
        group.throughput(Throughput::Bytes(size as u64));
        let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();

        group.bench_function("log_buffer_append", |bencher| {
            let mut buffer = LogBuffer::new(LOG_BUFFER_BYTES_MAX);
            bencher.iter_custom(|iterations| {
                let start = clock.now();
                for _ in 0..iterations {
                    black_box(buffer.append(ProcId(1), Stream::Stdout, 0, black_box(&data)));
                }
                let elapsed = clock.now() - start;
                record(size, "append", iterations, elapsed);
                elapsed
            });
        });

        group.bench_function("memcpy", |bencher| {
            let mut ring = vec![0u8; LOG_BUFFER_BYTES_MAX];
            let mut position = 0usize;
            bencher.iter_custom(|iterations| {
                let start = clock.now();
                for _ in 0..iterations {
                    if position + size > ring.len() {
                        position = 0;
                    }
                    ring[position..position + size].copy_from_slice(black_box(&data));
                    black_box(&mut ring);
                    position += size;
                }
                let elapsed = clock.now() - start;
                record(size, "memcpy", iterations, elapsed);
                elapsed
            });
        });
        group.finish();
    }
}

fn print_ratios() {
    println!("\nlog buffer append vs memcpy (same run):");
    println!(
        "{:>8} {:>14} {:>14} {:>8}",
        "write", "append GB/s", "memcpy GB/s", "ratio"
    );
    TOTALS.with(|totals| {
        let totals = totals.borrow();
        for size in SIZES {
            let rate = |kind| {
                totals.get(&(size, kind)).map(|(iterations, elapsed)| {
                    (*iterations as f64 * size as f64) / elapsed.as_secs_f64() / 1e9
                })
            };
            if let (Some(append), Some(memcpy)) = (rate("append"), rate("memcpy")) {
                println!(
                    "{:>7}B {:>14.2} {:>14.2} {:>8.2}",
                    size,
                    append,
                    memcpy,
                    append / memcpy
                );
            }
        }
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = bench_append
}

/// Append and memcpy timed in alternating short batches, so that a burst of load from other
/// work on the machine hits both sides alike; prints the throughput ratio per write size.
fn print_interleaved_ratios() {
    const ROUNDS: usize = 400;
    const BATCH_BYTES: usize = 1 << 20;
    let clock = SystemClock;
    println!("\nlog buffer append vs memcpy, interleaved batches of 1 MiB ({ROUNDS} rounds):");
    println!(
        "{:>8} {:>14} {:>14} {:>8}",
        "write", "append GB/s", "memcpy GB/s", "ratio"
    );
    for size in SIZES {
        let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        let writes = BATCH_BYTES / size;
        let mut buffer = LogBuffer::new(LOG_BUFFER_BYTES_MAX);
        let mut ring = vec![0u8; LOG_BUFFER_BYTES_MAX];
        let mut position = 0usize;
        let (mut append_time, mut memcpy_time) = (Duration::ZERO, Duration::ZERO);
        for _ in 0..ROUNDS {
            let start = clock.now();
            for _ in 0..writes {
                black_box(buffer.append(ProcId(1), Stream::Stdout, 0, black_box(&data)));
            }
            append_time += clock.now() - start;
            let start = clock.now();
            for _ in 0..writes {
                if position + size > ring.len() {
                    position = 0;
                }
                ring[position..position + size].copy_from_slice(black_box(&data));
                black_box(&mut ring);
                position += size;
            }
            memcpy_time += clock.now() - start;
        }
        let bytes = (ROUNDS * writes * size) as f64;
        let append = bytes / append_time.as_secs_f64() / 1e9;
        let memcpy = bytes / memcpy_time.as_secs_f64() / 1e9;
        println!(
            "{:>7}B {:>14.2} {:>14.2} {:>8.2}",
            size,
            append,
            memcpy,
            append / memcpy
        );
    }
}

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    print_ratios();
    print_interleaved_ratios();
}
