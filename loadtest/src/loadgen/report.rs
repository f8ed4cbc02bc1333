//! A run's results: percentiles from an HDR histogram of microseconds, counts, rates; as JSON
//! and as text. Pure.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use hdrhistogram::Histogram;

use super::conn::ErrorKind;
use super::{Mode, Proto, RunOptions};

/// The slowest latency the histogram tells apart: one hour, in microseconds. Slower ones are
/// recorded as one hour.
pub const MAX_LATENCY_US: u64 = 3_600_000_000;

/// A histogram of microseconds, 1 µs to an hour, three significant digits.
pub fn new_histogram() -> Histogram<u64> {
    // Constant, valid bounds: 1 <= low, high >= 2 * low, sigfig <= 5.
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).unwrap_or_else(|_| unreachable!())
}

/// Latency summary in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Latency {
    pub min: f64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p99_9: f64,
    pub p99_99: f64,
    pub max: f64,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Latency {
        let q = |q: f64| ms(h.value_at_quantile(q));
        Latency {
            min: ms(h.min()),
            mean: h.mean() / 1000.0,
            p50: q(0.5),
            p90: q(0.9),
            p99: q(0.99),
            p99_9: q(0.999),
            p99_99: q(0.9999),
            max: ms(h.max()),
        }
    }
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// A point of the percentile curve.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CurvePoint {
    /// 0 to 100.
    pub percentile: f64,
    pub ms: f64,
}

/// The latency at percentiles spaced evenly in "nines" (x = -log10(1 - q), from 0 to 5 in
/// steps of 0.1: 0%, ..., 90%, ..., 99%, ..., 99.999%), then the maximum at 100%. Empty for an
/// empty histogram.
pub fn curve(h: &Histogram<u64>) -> Vec<CurvePoint> {
    if h.is_empty() {
        return Vec::new();
    }
    let mut points: Vec<CurvePoint> = (0..=50)
        .map(|step| {
            let q = 1.0 - 10f64.powf(-f64::from(step) / 10.0);
            CurvePoint {
                percentile: q * 100.0,
                ms: ms(h.value_at_quantile(q)),
            }
        })
        .collect();
    points.push(CurvePoint {
        percentile: 100.0,
        ms: ms(h.max()),
    });
    points
}

/// What the workers counted, merged.
#[derive(Debug)]
pub struct Counts {
    pub hist: Histogram<u64>,
    pub statuses: BTreeMap<u16, u64>,
    pub errors: BTreeMap<ErrorKind, u64>,
    pub bytes: u64,
    pub warmup_requests: u64,
    pub reconnects: u64,
}

/// The measured phase of one run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub target: String,
    pub proto: Proto,
    /// `closed` or `open`.
    pub mode: &'static str,
    /// Requests per second asked for (open loop).
    pub rate: Option<f64>,
    pub connections: usize,
    pub streams: usize,
    pub warmup_s: f64,
    pub duration_s: f64,
    /// From the start of the measured phase to its last completed request.
    pub elapsed_s: f64,
    /// Measured requests: `responses + error_total`.
    pub requests: u64,
    pub responses: u64,
    /// Sent during the warm-up (not in any other number).
    pub warmup_requests: u64,
    /// Responses by status code.
    pub statuses: BTreeMap<String, u64>,
    /// Failed requests by kind.
    pub errors: BTreeMap<String, u64>,
    pub error_total: u64,
    /// Response body bytes.
    pub bytes: u64,
    pub req_per_s: f64,
    pub bytes_per_s: f64,
    pub mib_per_s: f64,
    /// Of responses; open loop from each request's intended send time, closed loop from its
    /// actual send time.
    pub latency_ms: Latency,
    /// `intended` (open loop) or `sent` (closed loop).
    pub latency_from: &'static str,
    pub curve: Vec<CurvePoint>,
    /// Connections reopened after breaking.
    pub reconnects: u64,
    #[serde(skip)]
    pub histogram: Histogram<u64>,
}

pub(super) fn build(opts: &RunOptions, c: Counts, elapsed: Duration) -> Report {
    let responses: u64 = c.statuses.values().sum();
    let error_total: u64 = c.errors.values().sum();
    let secs = elapsed.as_secs_f64().max(1e-9);
    let (mode, rate, from) = match opts.mode {
        Mode::Closed => ("closed", None, "sent"),
        Mode::Open { rate } => ("open", Some(rate), "intended"),
    };
    Report {
        target: opts.target.to_string(),
        proto: opts.proto,
        mode,
        rate,
        connections: opts.connections,
        streams: opts.streams,
        warmup_s: opts.warmup.as_secs_f64(),
        duration_s: opts.duration.as_secs_f64(),
        elapsed_s: secs,
        requests: responses + error_total,
        responses,
        warmup_requests: c.warmup_requests,
        statuses: c
            .statuses
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect(),
        errors: c
            .errors
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), *v))
            .collect(),
        error_total,
        bytes: c.bytes,
        req_per_s: responses as f64 / secs,
        bytes_per_s: c.bytes as f64 / secs,
        mib_per_s: c.bytes as f64 / secs / (1024.0 * 1024.0),
        latency_ms: Latency::of(&c.hist),
        latency_from: from,
        curve: curve(&c.hist),
        reconnects: c.reconnects,
        histogram: c.hist,
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mode = match self.rate {
            Some(r) => format!("open loop at {r} req/s"),
            None => "closed loop".to_string(),
        };
        writeln!(
            f,
            "{} over {}, {mode}, {} connection(s) x {} stream(s)",
            self.target,
            self.proto.as_str(),
            self.connections,
            self.streams
        )?;
        writeln!(
            f,
            "measured {:.2} s after a {:.1} s warm-up ({} warm-up requests)",
            self.elapsed_s, self.warmup_s, self.warmup_requests
        )?;
        writeln!(
            f,
            "requests {}  responses {}  errors {}  {:.1} req/s  {:.2} MiB/s  reconnects {}",
            self.requests,
            self.responses,
            self.error_total,
            self.req_per_s,
            self.mib_per_s,
            self.reconnects
        )?;
        let l = &self.latency_ms;
        writeln!(
            f,
            "latency ms (from {} time): p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}  mean {:.3}",
            self.latency_from, l.p50, l.p90, l.p99, l.p99_9, l.max, l.mean
        )?;
        let join = |m: &BTreeMap<String, u64>| {
            if m.is_empty() {
                "none".to_string()
            } else {
                m.iter()
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        };
        writeln!(f, "statuses: {}", join(&self.statuses))?;
        write!(f, "errors: {}", join(&self.errors))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_curve() {
        let mut h = new_histogram();
        for us in 1..=1000u64 {
            h.record(us * 1000).unwrap();
        }
        let l = Latency::of(&h);
        assert!((l.p50 - 500.0).abs() < 1.0, "{l:?}");
        assert!((l.p99 - 990.0).abs() < 1.0, "{l:?}");
        assert!((l.max - 1000.0).abs() < 1.0, "{l:?}");
        let c = curve(&h);
        assert_eq!(c.len(), 52);
        assert_eq!(c[0].percentile, 0.0);
        assert!((c[10].percentile - 90.0).abs() < 1e-9);
        assert!((c[20].percentile - 99.0).abs() < 1e-9);
        assert!(c.windows(2).all(|w| w[0].ms <= w[1].ms));
        assert!(curve(&new_histogram()).is_empty());
    }
}
