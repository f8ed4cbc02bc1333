//! Request counters and the latency histogram: lock-free atomics on the request path,
//! rendered as Prometheus text by the admin listener.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use http::Version;

/// Upper bounds of the latency buckets, seconds.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

pub const PROTOCOLS: &[&str] = &["http1", "http2", "http3"];

/// A cumulative-on-render histogram: one counter per bucket plus the sum.
#[derive(Debug)]
pub struct Histogram {
    buckets: Vec<AtomicU64>,
    /// Observations above the last bound.
    inf: AtomicU64,
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: LATENCY_BUCKETS.iter().map(|_| AtomicU64::new(0)).collect(),
            inf: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        match LATENCY_BUCKETS.iter().position(|&b| secs <= b) {
            Some(i) => self.buckets[i].fetch_add(1, Relaxed),
            None => self.inf.fetch_add(1, Relaxed),
        };
        self.sum_micros.fetch_add(d.as_micros() as u64, Relaxed);
        self.count.fetch_add(1, Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Relaxed)
    }

    /// Appends the histogram in Prometheus text format.
    pub fn render(&self, out: &mut String, name: &str) {
        let mut cumulative = 0;
        for (i, b) in LATENCY_BUCKETS.iter().enumerate() {
            cumulative += self.buckets[i].load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cumulative}");
        }
        cumulative += self.inf.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let sum = self.sum_micros.load(Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {cumulative}");
    }
}

/// Counters of the serving path.
#[derive(Debug, Default)]
pub struct Metrics {
    /// [protocol][status class 1..=5 as 0..=4]
    requests: [[AtomicU64; 5]; 3],
    pub latency: Histogram,
    /// Responses served on a stale pointer.
    pub stale_serves: AtomicU64,
    /// Access-log lines dropped because the log writer fell behind.
    pub access_log_dropped: AtomicU64,
}

pub fn protocol_index(v: Version) -> usize {
    match v {
        Version::HTTP_2 => 1,
        Version::HTTP_3 => 2,
        _ => 0,
    }
}

impl Metrics {
    pub fn record(&self, version: Version, status: u16, elapsed: Duration) {
        let class = (status / 100).clamp(1, 5) as usize - 1;
        self.requests[protocol_index(version)][class].fetch_add(1, Relaxed);
        self.latency.observe(elapsed);
    }

    pub fn requests(&self, proto: usize, class: usize) -> u64 {
        self.requests[proto][class].load(Relaxed)
    }

    pub fn total_requests(&self) -> u64 {
        self.requests
            .iter()
            .flat_map(|p| p.iter())
            .map(|c| c.load(Relaxed))
            .sum()
    }

    pub fn render(&self, out: &mut String) {
        out.push_str("# HELP edge_requests_total Responses sent, by protocol and status class.\n");
        out.push_str("# TYPE edge_requests_total counter\n");
        for (p, proto) in PROTOCOLS.iter().enumerate() {
            for class in 0..5 {
                let _ = writeln!(
                    out,
                    "edge_requests_total{{protocol=\"{proto}\",class=\"{}xx\"}} {}",
                    class + 1,
                    self.requests(p, class)
                );
            }
        }
        out.push_str("# HELP edge_request_duration_seconds Time to the response head.\n");
        out.push_str("# TYPE edge_request_duration_seconds histogram\n");
        self.latency.render(out, "edge_request_duration_seconds");
        counter(
            out,
            "edge_stale_serves_total",
            "Responses served on a pointer the origin has not confirmed recently.",
            self.stale_serves.load(Relaxed),
        );
        counter(
            out,
            "edge_access_log_dropped_total",
            "Access-log lines dropped because the writer fell behind.",
            self.access_log_dropped.load(Relaxed),
        );
        counter(
            out,
            "edge_worker_yields_total",
            "Times a serving thread busy for server.yield_after gave its CPU up between requests.",
            crate::sched::yields(),
        );
    }
}

/// Appends one counter with its help and type lines.
pub fn counter(out: &mut String, name: &str, help: &str, v: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
    );
}

/// Appends one gauge with its help and type lines.
pub fn gauge(out: &mut String, name: &str, help: &str, v: f64) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative_and_counts_everything() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(50));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(30));
        let mut out = String::new();
        h.render(&mut out, "x");
        assert!(out.contains("x_bucket{le=\"0.0001\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"0.005\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"10\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("x_count 3\n"), "{out}");
    }

    #[test]
    fn requests_by_protocol_and_class() {
        let m = Metrics::default();
        m.record(Version::HTTP_11, 200, Duration::from_millis(1));
        m.record(Version::HTTP_2, 404, Duration::from_millis(1));
        m.record(Version::HTTP_2, 503, Duration::from_millis(1));
        let mut out = String::new();
        m.render(&mut out);
        assert!(out.contains("edge_requests_total{protocol=\"http1\",class=\"2xx\"} 1"));
        assert!(out.contains("edge_requests_total{protocol=\"http2\",class=\"4xx\"} 1"));
        assert!(out.contains("edge_requests_total{protocol=\"http2\",class=\"5xx\"} 1"));
        assert_eq!(m.total_requests(), 3);
    }
}
