//! Counters and the request-latency histogram behind `GET /metrics` (Prometheus text format,
//! written by hand: a handful of series does not justify a metrics framework).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// Upper bounds of the request-latency histogram buckets, in seconds.
const LATENCY_BUCKETS_SECONDS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// The run verdicts, in the order they are exported.
pub const VERDICTS: [&str; 9] = [
    "ok",
    "nonzero_exit",
    "signaled",
    "timeout",
    "cpu_limit",
    "memory_limit",
    "process_limit",
    "output_limit",
    "internal_error",
];

/// The node's counters. Everything is a relaxed atomic: metrics are informational.
#[derive(Debug, Default)]
pub struct Metrics {
    latency_buckets: [AtomicU64; 12],
    latency_count: AtomicU64,
    latency_sum_micros: AtomicU64,
    requests_by_class: [AtomicU64; 5],
    runs_by_verdict: [AtomicU64; 9],
}

impl Metrics {
    /// Records one answered request.
    pub fn observe_request(&self, status: u16, elapsed_micros: u64) {
        let seconds = elapsed_micros as f64 / 1_000_000.0;
        for (bucket, bound) in self.latency_buckets.iter().zip(LATENCY_BUCKETS_SECONDS) {
            if seconds <= bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.latency_count.fetch_add(1, Ordering::Relaxed);
        self.latency_sum_micros
            .fetch_add(elapsed_micros, Ordering::Relaxed);
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.requests_by_class[class].fetch_add(1, Ordering::Relaxed);
    }

    /// Records one finished run.
    pub fn observe_run(&self, verdict: &str) {
        if let Some(index) = VERDICTS.iter().position(|known| *known == verdict) {
            self.runs_by_verdict[index].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Appends the counters of this module to `out`.
    pub fn render(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP shoal_http_request_duration_seconds Control API request latency.\n\
             # TYPE shoal_http_request_duration_seconds histogram"
        );
        for (bucket, bound) in self.latency_buckets.iter().zip(LATENCY_BUCKETS_SECONDS) {
            let _ = writeln!(
                out,
                "shoal_http_request_duration_seconds_bucket{{le=\"{bound}\"}} {}",
                bucket.load(Ordering::Relaxed)
            );
        }
        let count = self.latency_count.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "shoal_http_request_duration_seconds_bucket{{le=\"+Inf\"}} {count}\n\
             shoal_http_request_duration_seconds_sum {}\n\
             shoal_http_request_duration_seconds_count {count}",
            self.latency_sum_micros.load(Ordering::Relaxed) as f64 / 1_000_000.0
        );
        let _ = writeln!(
            out,
            "# HELP shoal_http_requests_total Control API requests by status class.\n\
             # TYPE shoal_http_requests_total counter"
        );
        for (index, counter) in self.requests_by_class.iter().enumerate() {
            let _ = writeln!(
                out,
                "shoal_http_requests_total{{class=\"{}xx\"}} {}",
                index + 1,
                counter.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP shoal_runs_total Runs executed on this node, by verdict.\n\
             # TYPE shoal_runs_total counter"
        );
        for (verdict, counter) in VERDICTS.iter().zip(&self.runs_by_verdict) {
            let _ = writeln!(
                out,
                "shoal_runs_total{{verdict=\"{verdict}\"}} {}",
                counter.load(Ordering::Relaxed)
            );
        }
    }
}

/// Appends one gauge (with its HELP and TYPE lines) to `out`.
pub fn gauge(out: &mut String, name: &str, help: &str, samples: &[(&str, u64)]) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
    for (labels, value) in samples {
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {value}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_count_matches() {
        let metrics = Metrics::default();
        metrics.observe_request(200, 500);
        metrics.observe_request(404, 30_000);
        metrics.observe_request(503, 20_000_000);
        let mut out = String::new();
        metrics.render(&mut out);
        assert!(out.contains("shoal_http_request_duration_seconds_bucket{le=\"0.001\"} 1\n"));
        assert!(out.contains("shoal_http_request_duration_seconds_bucket{le=\"0.05\"} 2\n"));
        assert!(out.contains("shoal_http_request_duration_seconds_bucket{le=\"10\"} 2\n"));
        assert!(out.contains("shoal_http_request_duration_seconds_bucket{le=\"+Inf\"} 3\n"));
        assert!(out.contains("shoal_http_requests_total{class=\"4xx\"} 1\n"));
    }
}
