//! The per-second sample ring behind the status page and `edge top`: a bounded ring of
//! [`Sample`]s (counter readings, one a second), and the pure arithmetic over them: rates
//! between two samples, latency quantiles from histogram bucket deltas, per-site rates, and
//! human-readable units.
//!
//! No I/O and no clock of its own: the admin side reads the counters, stamps the sample with
//! `now` and pushes it.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::metrics::{LATENCY_BUCKETS, SiteCounts};

/// Samples kept: five minutes at one a second.
pub const RING: usize = 300;

/// The window of the latency quantiles, in samples (seconds).
pub const LATENCY_WINDOW: usize = 10;

/// One origin face's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaceCounts {
    pub success: u64,
    pub failure: u64,
    pub timeout: u64,
    pub rejected_open: u64,
    pub shed: u64,
}

/// The node's counters read at one moment.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Set by [`Samples::push`]: 1, 2, ...
    pub seq: u64,
    pub at: Instant,
    pub unix_s: u64,
    pub requests: u64,
    pub bytes: u64,
    /// Blob lookups answered by memory, disk, origin.
    pub tiers: [u64; 3],
    /// Latency histogram, per bucket (not cumulative): [`LATENCY_BUCKETS`] then `+Inf`.
    pub latency: Vec<u64>,
    /// Requests refused for load: site bulkheads plus both origin faces' queues.
    pub shed: u64,
    /// Breaker state per face (meta, objects): "closed", "half-open", "open".
    pub breakers: Option<[&'static str; 2]>,
    /// Per face (meta, objects).
    pub origin: Option<[FaceCounts; 2]>,
    /// Per-site counters (bounded by the metrics' site table).
    pub sites: Vec<(Arc<str>, SiteCounts)>,
    /// The disk cache's filesystem: (available, size) bytes.
    pub filesystem: Option<(u64, u64)>,
}

impl Sample {
    /// An empty sample taken at `at`.
    pub fn new(at: Instant, unix_s: u64) -> Sample {
        Sample {
            seq: 0,
            at,
            unix_s,
            requests: 0,
            bytes: 0,
            tiers: [0; 3],
            latency: vec![0; LATENCY_BUCKETS.len() + 1],
            shed: 0,
            breakers: None,
            origin: None,
            sites: Vec::new(),
            filesystem: None,
        }
    }
}

/// The bounded ring.
#[derive(Debug)]
pub struct Samples {
    ring: Mutex<VecDeque<Arc<Sample>>>,
    cap: usize,
}

impl Default for Samples {
    fn default() -> Self {
        Samples::with_capacity(RING)
    }
}

impl Samples {
    pub fn with_capacity(cap: usize) -> Samples {
        Samples {
            ring: Mutex::new(VecDeque::with_capacity(cap.max(1))),
            cap: cap.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Arc<Sample>>> {
        // Pushes and clones only: a panic cannot leave the ring half-changed.
        self.ring.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds `s` as the newest sample (numbered one past the last), dropping the oldest when
    /// full. Returns its number.
    pub fn push(&self, mut s: Sample) -> u64 {
        let mut ring = self.lock();
        s.seq = ring.back().map_or(1, |b| b.seq + 1);
        let seq = s.seq;
        if ring.len() == self.cap {
            ring.pop_front();
        }
        ring.push_back(Arc::new(s));
        seq
    }

    /// The samples held, oldest first.
    pub fn all(&self) -> Vec<Arc<Sample>> {
        self.lock().iter().cloned().collect()
    }

    pub fn latest(&self) -> Option<Arc<Sample>> {
        self.lock().back().cloned()
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Rates between two samples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rates {
    /// Seconds between the two samples.
    pub interval_s: f64,
    pub requests_per_s: f64,
    pub bytes_per_s: f64,
    /// Memory, disk, origin lookups per second.
    pub tiers_per_s: [f64; 3],
    /// Share of blob lookups answered by memory or disk; `None` without lookups.
    pub hit_ratio: Option<f64>,
    pub shed_per_s: f64,
}

fn delta(a: u64, b: u64) -> u64 {
    // Counters only grow; a reset (never expected) reads as zero, not as a huge rate.
    b.saturating_sub(a)
}

fn per_s(d: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        round3(d as f64 / secs)
    } else {
        0.0
    }
}

/// Rounded to three decimals, so the JSON and the page show the same short number.
pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// The hit ratio of lookups `hits` of `total`, `None` without lookups.
pub fn ratio(hits: u64, total: u64) -> Option<f64> {
    (total > 0).then(|| (hits as f64 / total as f64 * 10_000.0).round() / 10_000.0)
}

pub fn rates(prev: &Sample, cur: &Sample) -> Rates {
    let secs = cur.at.saturating_duration_since(prev.at).as_secs_f64();
    let t: [u64; 3] = std::array::from_fn(|i| delta(prev.tiers[i], cur.tiers[i]));
    Rates {
        interval_s: round3(secs),
        requests_per_s: per_s(delta(prev.requests, cur.requests), secs),
        bytes_per_s: per_s(delta(prev.bytes, cur.bytes), secs),
        tiers_per_s: t.map(|d| per_s(d, secs)),
        hit_ratio: ratio(t[0] + t[1], t[0] + t[1] + t[2]),
        shed_per_s: per_s(delta(prev.shed, cur.shed), secs),
    }
}

/// Quantile `q` (0..=1) of the observations in per-bucket counts `buckets`
/// ([`LATENCY_BUCKETS`] then `+Inf`), in seconds: linear within the bucket it falls in, as
/// Prometheus' `histogram_quantile` does; the last finite bound when it falls in `+Inf`.
/// `None` without observations.
pub fn quantile(buckets: &[u64], q: f64) -> Option<f64> {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = q.clamp(0.0, 1.0) * total as f64;
    let mut seen = 0u64;
    for (i, &n) in buckets.iter().enumerate() {
        if n > 0 && (seen + n) as f64 >= rank {
            let Some(&upper) = LATENCY_BUCKETS.get(i) else {
                return LATENCY_BUCKETS.last().copied();
            };
            let lower = if i == 0 { 0.0 } else { LATENCY_BUCKETS[i - 1] };
            let within = ((rank - seen as f64) / n as f64).clamp(0.0, 1.0);
            return Some(lower + (upper - lower) * within);
        }
        seen += n;
    }
    LATENCY_BUCKETS.last().copied()
}

/// The per-bucket observations between two samples.
pub fn latency_delta(prev: &Sample, cur: &Sample) -> Vec<u64> {
    cur.latency
        .iter()
        .enumerate()
        .map(|(i, &n)| delta(prev.latency.get(i).copied().unwrap_or(0), n))
        .collect()
}

/// One site's rates between two samples.
#[derive(Debug, Clone, PartialEq)]
pub struct SiteRate {
    pub site: Arc<str>,
    pub requests: u64,
    pub requests_per_s: f64,
    pub bytes_per_s: f64,
    /// Over the interval; `None` without lookups.
    pub hit_ratio: Option<f64>,
    /// Refused (503 + Retry-After) since start.
    pub refused: u64,
}

/// Per-site rates between two samples, busiest first (then by name), at most `top`.
pub fn site_rates(prev: &Sample, cur: &Sample, top: usize) -> Vec<SiteRate> {
    let secs = cur.at.saturating_duration_since(prev.at).as_secs_f64();
    let before: HashMap<&str, &SiteCounts> = prev.sites.iter().map(|(s, c)| (&**s, c)).collect();
    let zero = SiteCounts::default();
    let mut v: Vec<SiteRate> = cur
        .sites
        .iter()
        .map(|(site, c)| {
            let p = before.get(&**site).copied().unwrap_or(&zero);
            let (h, m) = (delta(p.hits, c.hits), delta(p.misses, c.misses));
            SiteRate {
                site: site.clone(),
                requests: c.requests,
                requests_per_s: per_s(delta(p.requests, c.requests), secs),
                bytes_per_s: per_s(delta(p.bytes, c.bytes), secs),
                hit_ratio: ratio(h, h + m),
                refused: c.shed,
            }
        })
        .collect();
    v.sort_by(|a, b| {
        b.requests_per_s
            .total_cmp(&a.requests_per_s)
            .then(b.requests.cmp(&a.requests))
            .then(a.site.cmp(&b.site))
    });
    v.truncate(top);
    v
}

/// `n` bytes in binary units: "512 B", "1.3 KiB", "10.0 GiB".
pub fn human_bytes(n: f64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut x = n.max(0.0);
    let mut u = 0;
    while x >= 1024.0 && u < UNITS.len() - 1 {
        x /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{x:.0} B")
    } else {
        format!("{x:.1} {}", UNITS[u])
    }
}

/// A per-second rate: "0", "12.5", "1.2k", "3.4M".
pub fn human_rate(x: f64) -> String {
    let x = x.max(0.0);
    if x >= 1e6 {
        format!("{:.1}M", x / 1e6)
    } else if x >= 1e4 {
        format!("{:.1}k", x / 1e3)
    } else if x >= 100.0 || x == x.trunc() {
        format!("{x:.0}")
    } else {
        format!("{x:.1}")
    }
}

/// A ratio as a percentage, "99.5%"; "-" for none.
pub fn human_pct(x: Option<f64>) -> String {
    x.map_or_else(|| "-".to_owned(), |x| format!("{:.1}%", x * 100.0))
}

/// Milliseconds for seconds `s`: "0.21 ms", "12 ms"; "-" for none.
pub fn human_ms(s: Option<f64>) -> String {
    match s {
        None => "-".to_owned(),
        Some(s) if s * 1000.0 >= 10.0 => format!("{:.0} ms", s * 1000.0),
        Some(s) => format!("{:.2} ms", s * 1000.0),
    }
}

/// Seconds as "45 s", "3 m 20 s", "2 h 5 m", "3 d 4 h".
pub fn human_age(s: u64) -> String {
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} m {} s", s / 60, s % 60),
        3600..86400 => format!("{} h {} m", s / 3600, s % 3600 / 60),
        _ => format!("{} d {} h", s / 86400, s % 86400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(t0: Instant, ms: u64, requests: u64, tiers: [u64; 3]) -> Sample {
        let mut s = Sample::new(t0 + Duration::from_millis(ms), 0);
        s.requests = requests;
        s.tiers = tiers;
        s
    }

    #[test]
    fn the_ring_is_bounded_and_numbers_samples() {
        let r = Samples::with_capacity(3);
        let t0 = Instant::now();
        for i in 0..5 {
            assert_eq!(r.push(at(t0, i * 1000, i, [0; 3])), i + 1);
        }
        let all = r.all();
        assert_eq!(all.len(), 3);
        assert_eq!(
            all.iter().map(|s| s.seq).collect::<Vec<_>>(),
            [3, 4, 5],
            "oldest dropped"
        );
        assert_eq!(r.latest().map(|s| s.requests), Some(4));
    }

    #[test]
    fn rates_divide_by_the_real_interval() {
        let t0 = Instant::now();
        let a = at(t0, 0, 100, [10, 0, 5]);
        let b = at(t0, 2000, 300, [100, 20, 5]);
        let r = rates(&a, &b);
        assert_eq!(r.requests_per_s, 100.0);
        assert_eq!(r.tiers_per_s, [45.0, 10.0, 0.0]);
        assert_eq!(r.hit_ratio, Some(1.0));
        let c = at(t0, 2500, 300, [100, 20, 10]);
        assert_eq!(rates(&b, &c).hit_ratio, Some(0.0));
        assert_eq!(rates(&b, &c).tiers_per_s[2], 10.0);
        assert_eq!(rates(&c, &c).requests_per_s, 0.0, "no time, no rate");
        // A counter that went down reads as no traffic, not as a huge rate.
        assert_eq!(rates(&b, &a).requests_per_s, 0.0);
        assert_eq!(rates(&a, &a).hit_ratio, None);
    }

    #[test]
    fn quantiles_interpolate_within_the_bucket() {
        let mut b = vec![0u64; LATENCY_BUCKETS.len() + 1];
        assert_eq!(quantile(&b, 0.5), None);
        // 100 observations in (0.001, 0.0025]: the median is halfway through it.
        b[4] = 100;
        let p50 = quantile(&b, 0.5).unwrap();
        assert!((p50 - 0.00175).abs() < 1e-12, "{p50}");
        // One slow outlier in +Inf: p99 stays in the bucket, p100 is the last bound.
        b[LATENCY_BUCKETS.len()] = 1;
        assert!(quantile(&b, 0.99).unwrap() <= 0.0025);
        assert_eq!(quantile(&b, 1.0), Some(10.0));
    }

    #[test]
    fn site_rates_are_busiest_first_and_bounded() {
        let t0 = Instant::now();
        let mut a = at(t0, 0, 0, [0; 3]);
        let mut b = at(t0, 1000, 0, [0; 3]);
        let c = |requests, hits, misses| SiteCounts {
            requests,
            bytes: requests * 10,
            hits,
            misses,
            shed: 0,
        };
        a.sites = vec![("a".into(), c(10, 5, 5)), ("b".into(), c(0, 0, 0))];
        b.sites = vec![
            ("a".into(), c(20, 10, 10)),
            ("b".into(), c(50, 50, 0)),
            ("new".into(), c(5, 0, 5)),
        ];
        let r = site_rates(&a, &b, 2);
        assert_eq!(r.len(), 2);
        assert_eq!((&*r[0].site, r[0].requests_per_s), ("b", 50.0));
        assert_eq!(r[0].hit_ratio, Some(1.0));
        assert_eq!(r[0].bytes_per_s, 500.0);
        assert_eq!((&*r[1].site, r[1].hit_ratio), ("a", Some(0.5)));
    }

    #[test]
    fn human_units() {
        assert_eq!(human_bytes(1367.0), "1.3 KiB");
        assert_eq!(human_bytes(10737418240.0), "10.0 GiB");
        assert_eq!(human_bytes(12.0), "12 B");
        assert_eq!(human_rate(0.0), "0");
        assert_eq!(human_rate(12.25), "12.2");
        assert_eq!(human_rate(512.4), "512");
        assert_eq!(human_rate(25_300.0), "25.3k");
        assert_eq!(human_pct(Some(0.995)), "99.5%");
        assert_eq!(human_pct(None), "-");
        assert_eq!(human_ms(Some(0.00021)), "0.21 ms");
        assert_eq!(human_ms(Some(0.25)), "250 ms");
        assert_eq!(human_age(200), "3 m 20 s");
        assert_eq!(human_age(90_000), "1 d 1 h");
    }
}
