//! Request counters and the latency histogram: lock-free atomics on the request path, read at
//! scrape time by `prometheus-client` collectors (the admin listener's `Registry`).
//!
//! prometheus-client writes OpenMetrics text; [`to_prometheus_text`] turns it into the classic
//! Prometheus text format (0.0.4) for scrapers that do not ask for OpenMetrics (`promtool
//! check metrics`, curl). [`exposition_problems`] checks either against the rules a parser
//! relies on: each family one group, HELP and TYPE once and first, sample names that fit the
//! type.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use http::Version;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

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

    /// The per-bucket counts (not cumulative), [`LATENCY_BUCKETS`] then `+Inf`.
    pub fn bucket_counts(&self) -> Vec<u64> {
        self.buckets
            .iter()
            .chain(std::iter::once(&self.inf))
            .map(|n| n.load(Relaxed))
            .collect()
    }

    /// Writes the histogram as family `name`: the per-bucket counts (prometheus-client makes
    /// them cumulative), `+Inf` last; the count is the sum of the buckets, so it always
    /// equals the `+Inf` bucket even while observations land.
    pub fn encode(&self, enc: &mut DescriptorEncoder<'_>, name: &str, help: &str) -> fmt::Result {
        let mut buckets: Vec<(f64, u64)> = LATENCY_BUCKETS
            .iter()
            .zip(&self.buckets)
            .map(|(&b, n)| (b, n.load(Relaxed)))
            .collect();
        buckets.push((f64::INFINITY, self.inf.load(Relaxed)));
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = self.sum_micros.load(Relaxed) as f64 / 1e6;
        enc.encode_descriptor(name, help, None, MetricType::Histogram)?
            .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }
}

/// Status classes, as labelled.
pub const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

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
    /// Times freed memory was handed back to the OS after a drop in load (`memory`).
    pub memory_releases: AtomicU64,
    /// Body bytes of the responses sent (as announced; HEAD and 304 count 0).
    pub response_bytes: AtomicU64,
    /// Per-site counters, a bounded table.
    pub sites: SiteTable,
    /// Client connections: open, idle, refused, closed by the node.
    pub conns: ConnStats,
    /// Log lines that clients cause, rate-limited per kind.
    pub client_logs: std::sync::Arc<ClientLogs>,
    /// Response bytes held in memory on their way to clients (the `server.max_buffered`
    /// budget in use).
    pub buffered_bytes: std::sync::Arc<AtomicU64>,
    /// OCSP stapling (`tls.cert_dir`/NAME.ocsp).
    pub ocsp: std::sync::Arc<OcspStats>,
}

/// OCSP stapling, as the certificate store counts it.
#[derive(Debug, Default)]
pub struct OcspStats {
    /// Certificates loaded with a response to staple (at the last load).
    pub stapled: AtomicU64,
    /// Response files not stapled: unreadable, malformed, for another certificate, not
    /// `good`, not yet valid or expired when loaded.
    pub refused: AtomicU64,
    /// Handshakes answered without a staple because the loaded one expired since.
    pub expired_handshakes: AtomicU64,
}

/// What one response adds to its site's counters (from the handler's `Facts`).
#[derive(Debug, Clone, Copy, Default)]
pub struct SiteFacts {
    pub bytes: u64,
    /// `Some(true)`: served from memory, disk or the tree alone; `Some(false)`: fetched from
    /// the origin; `None`: no blob lookup (a redirect, an error before the tiers).
    pub hit: Option<bool>,
    /// Refused with 503 + Retry-After (a full site bulkhead or origin queue, an open breaker).
    pub shed: bool,
}

/// One site's counters.
#[derive(Debug, Default)]
pub struct SiteCounters {
    pub requests: AtomicU64,
    pub bytes: AtomicU64,
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub shed: AtomicU64,
}

/// A copy of one site's counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SiteCounts {
    pub requests: u64,
    pub bytes: u64,
    pub hits: u64,
    pub misses: u64,
    pub shed: u64,
}

impl SiteCounters {
    fn add(&self, f: SiteFacts) {
        self.requests.fetch_add(1, Relaxed);
        if f.bytes > 0 {
            self.bytes.fetch_add(f.bytes, Relaxed);
        }
        match f.hit {
            Some(true) => self.hits.fetch_add(1, Relaxed),
            Some(false) => self.misses.fetch_add(1, Relaxed),
            None => 0,
        };
        if f.shed {
            self.shed.fetch_add(1, Relaxed);
        }
    }

    pub fn counts(&self) -> SiteCounts {
        SiteCounts {
            requests: self.requests.load(Relaxed),
            bytes: self.bytes.load(Relaxed),
            hits: self.hits.load(Relaxed),
            misses: self.misses.load(Relaxed),
            shed: self.shed.load(Relaxed),
        }
    }
}

/// Client connections over TCP (HTTP/1.1 and HTTP/2; HTTP/3 has its own bound).
#[derive(Debug, Default)]
pub struct ConnStats {
    pub open: AtomicU64,
    /// Open with no request in flight.
    pub idle: AtomicU64,
    /// Open and holding no hyper state: only the socket, until it is readable (accepted
    /// cleartext ones before their first byte, HTTP/1 ones parked).
    pub parked: AtomicU64,
    /// Refused at `server.max_connections` with no idle connection to close.
    pub refused: AtomicU64,
    /// Idle connections closed to admit new ones at the cap.
    pub evicted: AtomicU64,
    /// Closed after `server.idle_timeout` with no request in flight.
    pub idle_timeouts: AtomicU64,
    /// Closed after `server.send_timeout` without progress on a response.
    pub send_timeouts: AtomicU64,
    /// HTTP/2 streams reset after `server.send_timeout` without progress.
    pub h2_stream_timeouts: AtomicU64,
    /// HTTP/3 streams reset after `server.send_timeout` without progress.
    pub h3_stream_timeouts: AtomicU64,
    /// accept() failures (descriptor limits and the like).
    pub accept_errors: AtomicU64,
}

/// Kinds of log lines a client can cause.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientLog {
    AcceptFailed,
    TlsHandshake,
    Request,
}

impl ClientLog {
    pub const ALL: [ClientLog; 3] = [
        ClientLog::AcceptFailed,
        ClientLog::TlsHandshake,
        ClientLog::Request,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ClientLog::AcceptFailed => "accept_failed",
            ClientLog::TlsHandshake => "tls_handshake",
            ClientLog::Request => "request",
        }
    }
}

/// The label of the counters of sites beyond [`MAX_SITES`].
pub const OTHER_SITES: &str = "(other)";

/// At most this many sites get counters of their own; the rest share [`OTHER_SITES`].
pub const MAX_SITES: usize = 1024;

/// Per-site counters. The request path reads the map with one atomic load (`ArcSwap`) and
/// adds with atomics; a site seen for the first time copies the map under a lock (at most
/// [`MAX_SITES`] times in the life of the process).
#[derive(Debug, Default)]
pub struct SiteTable {
    map: arc_swap::ArcSwap<HashMap<std::sync::Arc<str>, std::sync::Arc<SiteCounters>>>,
    grow: std::sync::Mutex<()>,
    other: SiteCounters,
    cap: Option<usize>,
}

impl SiteTable {
    /// A table that tracks at most `cap` sites by name.
    pub fn with_cap(cap: usize) -> SiteTable {
        SiteTable {
            cap: Some(cap),
            ..SiteTable::default()
        }
    }

    fn cap(&self) -> usize {
        self.cap.unwrap_or(MAX_SITES)
    }

    pub fn record(&self, site: &std::sync::Arc<str>, f: SiteFacts) {
        if let Some(c) = self.map.load().get(site) {
            return c.add(f);
        }
        // A new site: copy the map with it added, unless it is full.
        let _g = self.grow.lock().unwrap_or_else(|p| p.into_inner());
        let cur = self.map.load_full();
        if let Some(c) = cur.get(site) {
            return c.add(f);
        }
        if cur.len() >= self.cap() {
            return self.other.add(f);
        }
        let c = std::sync::Arc::new(SiteCounters::default());
        c.add(f);
        let mut next = HashMap::clone(&cur);
        next.insert(site.clone(), c);
        self.map.store(std::sync::Arc::new(next));
    }

    /// Every tracked site's counts, by name, then [`OTHER_SITES`] when it has counted any.
    pub fn counts(&self) -> Vec<(std::sync::Arc<str>, SiteCounts)> {
        let mut v: Vec<_> = self
            .map
            .load()
            .iter()
            .map(|(k, c)| (k.clone(), c.counts()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        let other = self.other.counts();
        if other.requests > 0 {
            v.push((OTHER_SITES.into(), other));
        }
        v
    }
}

/// At most [`ClientLogs::PER_SECOND`] lines per kind and second; the rest are counted, not
/// written. Lock-free: one window start and two counters per kind.
#[derive(Debug, Default)]
pub struct ClientLogs {
    /// Per kind: the second the window started (since the first use), lines in it, lines
    /// suppressed in total.
    kinds: [(AtomicU64, AtomicU64, AtomicU64); 3],
    started: std::sync::OnceLock<std::time::Instant>,
}

impl ClientLogs {
    pub const PER_SECOND: u64 = 5;

    /// Whether a line of `kind` may be written now; if not, it is counted as suppressed.
    pub fn allow(&self, kind: ClientLog) -> bool {
        let started = *self.started.get_or_init(std::time::Instant::now);
        self.allow_at(kind, started.elapsed().as_secs())
    }

    fn allow_at(&self, kind: ClientLog, second: u64) -> bool {
        let (window, lines, suppressed) = &self.kinds[kind as usize];
        if window.swap(second, Relaxed) != second {
            lines.store(0, Relaxed);
        }
        if lines.fetch_add(1, Relaxed) < Self::PER_SECOND {
            return true;
        }
        suppressed.fetch_add(1, Relaxed);
        false
    }

    pub fn suppressed(&self, kind: ClientLog) -> u64 {
        self.kinds[kind as usize].2.load(Relaxed)
    }
}

pub fn protocol_index(v: Version) -> usize {
    match v {
        Version::HTTP_2 => 1,
        Version::HTTP_3 => 2,
        _ => 0,
    }
}

impl Metrics {
    /// Metrics whose `edge_buffered_bytes` reads `buffered` (the tiers' response budget).
    pub fn with_buffered(buffered: std::sync::Arc<AtomicU64>) -> Metrics {
        Metrics {
            buffered_bytes: buffered,
            ..Metrics::default()
        }
    }

    pub fn record(&self, version: Version, status: u16, elapsed: Duration) {
        let class = (status / 100).clamp(1, 5) as usize - 1;
        self.requests[protocol_index(version)][class].fetch_add(1, Relaxed);
        self.latency.observe(elapsed);
    }

    /// Accounts a response's body bytes and, when it was for a site, the site's counters.
    pub fn record_site(&self, site: Option<&std::sync::Arc<str>>, f: SiteFacts) {
        if f.bytes > 0 {
            self.response_bytes.fetch_add(f.bytes, Relaxed);
        }
        if let Some(site) = site {
            self.sites.record(site, f);
        }
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
}

impl Collector for Metrics {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> fmt::Result {
        let requests = PROTOCOLS.iter().enumerate().flat_map(|(p, &proto)| {
            CLASSES
                .iter()
                .enumerate()
                .map(move |(c, &class)| ([("protocol", proto), ("class", class)], (p, c)))
        });
        counter_family(
            &mut enc,
            "edge_requests_total",
            "Responses sent, by protocol and status class.",
            requests.map(|(labels, (p, c))| (labels, self.requests(p, c))),
        )?;
        self.latency.encode(
            &mut enc,
            "edge_request_duration_seconds",
            "Time to the response head.",
        )?;
        counter(
            &mut enc,
            "edge_stale_serves_total",
            "Responses served on a pointer the origin has not confirmed recently.",
            self.stale_serves.load(Relaxed),
        )?;
        counter(
            &mut enc,
            "edge_access_log_dropped_total",
            "Access-log lines dropped because the writer fell behind.",
            self.access_log_dropped.load(Relaxed),
        )?;
        counter(
            &mut enc,
            "edge_memory_releases_total",
            "Times the node gave freed allocator memory back to the OS after connections or buffered responses went away.",
            self.memory_releases.load(Relaxed),
        )?;
        counter(
            &mut enc,
            "edge_worker_yields_total",
            "Times a serving thread busy for server.yield_after gave its CPU up between requests.",
            crate::sched::yields(),
        )?;
        counter(
            &mut enc,
            "edge_response_bytes_total",
            "Body bytes of the responses sent (HEAD and 304: none).",
            self.response_bytes.load(Relaxed),
        )?;
        let sites = self.sites.counts();
        counter_family(
            &mut enc,
            "edge_site_requests_total",
            "Responses sent per site (at most 1024 sites by name, the rest as \"(other)\").",
            sites.iter().map(|(s, c)| ([("site", &**s)], c.requests)),
        )?;
        counter_family(
            &mut enc,
            "edge_site_response_bytes_total",
            "Body bytes sent per site.",
            sites.iter().map(|(s, c)| ([("site", &**s)], c.bytes)),
        )?;
        let lookups = sites.iter().flat_map(|(s, c)| {
            [("hit", c.hits), ("miss", c.misses)]
                .map(|(result, v)| ([("site", &**s), ("result", result)], v))
        });
        counter_family(
            &mut enc,
            "edge_site_lookups_total",
            "Blob lookups per site: hit (memory, disk, tree) or miss (origin).",
            lookups,
        )?;
        counter_family(
            &mut enc,
            "edge_site_refused_total",
            "Responses per site refused with 503 + Retry-After (site bulkhead or origin queue full, breaker open).",
            sites.iter().map(|(s, c)| ([("site", &**s)], c.shed)),
        )?;
        let c = &self.conns;
        gauge(
            &mut enc,
            "edge_connections_open",
            "Client TCP connections open.",
            c.open.load(Relaxed) as f64,
        )?;
        gauge(
            &mut enc,
            "edge_connections_idle",
            "Client TCP connections open with no request in flight.",
            c.idle.load(Relaxed) as f64,
        )?;
        gauge(
            &mut enc,
            "edge_connections_parked",
            "Client TCP connections open holding only their socket (no HTTP state) until readable.",
            c.parked.load(Relaxed) as f64,
        )?;
        counter_family(
            &mut enc,
            "edge_connections_closed_total",
            "Client connections the node refused or closed, by reason.",
            [
                ("refused", &c.refused),
                ("evicted_idle", &c.evicted),
                ("idle_timeout", &c.idle_timeouts),
                ("send_timeout", &c.send_timeouts),
            ]
            .map(|(r, v)| ([("reason", r)], v.load(Relaxed))),
        )?;
        counter_family(
            &mut enc,
            "edge_streams_reset_total",
            "HTTP/2 and HTTP/3 streams the node reset, by protocol and reason (send_timeout: no progress for server.send_timeout; the connection stays open).",
            [("h2", &c.h2_stream_timeouts), ("h3", &c.h3_stream_timeouts)]
                .map(|(p, v)| ([("proto", p), ("reason", "send_timeout")], v.load(Relaxed))),
        )?;
        counter(
            &mut enc,
            "edge_accept_errors_total",
            "Failed accept() calls (descriptor limits and the like); accepting backs off.",
            c.accept_errors.load(Relaxed),
        )?;
        gauge(
            &mut enc,
            "edge_buffered_bytes",
            "Response bytes held in memory on their way to clients (server.max_buffered).",
            self.buffered_bytes.load(Relaxed) as f64,
        )?;
        let o = &self.ocsp;
        gauge(
            &mut enc,
            "edge_tls_ocsp_stapled",
            "Certificates with an OCSP response stapled (tls.cert_dir/NAME.ocsp, at the last load).",
            o.stapled.load(Relaxed) as f64,
        )?;
        counter(
            &mut enc,
            "edge_tls_ocsp_refused_total",
            "OCSP response files not stapled (malformed, another certificate, not good, expired); see the log.",
            o.refused.load(Relaxed),
        )?;
        counter(
            &mut enc,
            "edge_tls_ocsp_expired_handshakes_total",
            "TLS handshakes answered without a staple because the loaded OCSP response expired since.",
            o.expired_handshakes.load(Relaxed),
        )?;
        counter_family(
            &mut enc,
            "edge_log_suppressed_total",
            "Client-caused log lines not written (over the per-kind rate), by kind.",
            ClientLog::ALL.map(|k| ([("kind", k.as_str())], self.client_logs.suppressed(k))),
        )
    }
}

/// The OpenMetrics family name of counter samples `name` (which must end in `_total`:
/// prometheus-client appends the suffix to each sample).
fn counter_family_name(name: &str) -> Result<&str, fmt::Error> {
    name.strip_suffix("_total").ok_or(fmt::Error)
}

/// One unlabelled counter; `name` is the sample name, ending in `_total`.
pub fn counter(enc: &mut DescriptorEncoder<'_>, name: &str, help: &str, v: u64) -> fmt::Result {
    let family = counter_family_name(name)?;
    ConstCounter::new(v).encode(enc.encode_descriptor(family, help, None, MetricType::Counter)?)
}

/// One counter family, every label set in one group; `name` ends in `_total`.
pub fn counter_family<L: EncodeLabelSet>(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (L, u64)>,
) -> fmt::Result {
    let family = counter_family_name(name)?;
    let mut m = enc.encode_descriptor(family, help, None, MetricType::Counter)?;
    for (labels, v) in samples {
        ConstCounter::new(v).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

/// One unlabelled gauge.
pub fn gauge(enc: &mut DescriptorEncoder<'_>, name: &str, help: &str, v: f64) -> fmt::Result {
    ConstGauge::new(v).encode(enc.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

/// One gauge family, every label set in one group.
pub fn gauge_family<L: EncodeLabelSet>(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (L, f64)>,
) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in samples {
        ConstGauge::new(v).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

/// The two text formats the admin listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The classic Prometheus text format, 0.0.4: a counter family is named like its
    /// samples (`x_total`), no `# EOF`.
    Prometheus,
    /// OpenMetrics 1.0 text, as prometheus-client writes it: a counter family `x` has
    /// samples `x_total`; ends with `# EOF`.
    OpenMetrics,
}

impl Format {
    /// The format an `Accept` header asks for: OpenMetrics when it names it (Prometheus
    /// servers do), else the classic text.
    pub fn from_accept(accept: Option<&str>) -> Format {
        match accept {
            Some(a) if a.contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::Prometheus,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// The classic Prometheus text (0.0.4) of an OpenMetrics exposition of counters, gauges and
/// histograms (what this node writes). The two differ there only in a counter family's name
/// on its HELP and TYPE lines (OpenMetrics `x`, classic `x_total`, the samples' name, which a
/// classic parser needs to join the samples to their type), the `# UNIT` lines and `# EOF`.
/// Samples are unchanged.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let counters: HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len() + 8 * counters.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|kind| Some((kind, line.strip_prefix(kind)?)));
        match meta {
            Some((kind, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                if counters.contains(name) {
                    out.push_str(kind);
                    out.push_str(name);
                    out.push_str("_total ");
                    out.push_str(tail);
                } else {
                    out.push_str(line);
                }
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// What is wrong with an exposition in `format`, one line per problem (empty: none). Checks
/// what parsers rely on and `promtool check metrics` (2.42) does not all check: every family
/// is one contiguous group; its HELP and TYPE come once each, HELP first, before its
/// samples; every sample belongs to a family declared before it, with a name that fits the
/// type (counter `_total`, gauge the family name, histogram `_bucket` with `le`, `_sum`,
/// `_count`, and a `+Inf` bucket); values are numbers; OpenMetrics ends with `# EOF`.
pub fn exposition_problems(text: &str, format: Format) -> Vec<String> {
    #[derive(PartialEq)]
    enum State {
        Helped,
        Typed(String),
        Closed,
    }
    /// Makes `name` the family being written; the one before it is closed for good.
    fn switch_to(current: &mut Option<String>, families: &mut HashMap<String, State>, name: &str) {
        if current.as_deref() != Some(name) {
            if let Some(prev) = current.take() {
                families.insert(prev, State::Closed);
            }
            *current = Some(name.to_owned());
        }
    }
    let mut problems = Vec::new();
    let mut families: HashMap<String, State> = HashMap::new();
    let mut current: Option<String> = None;
    let mut inf_bucket: HashSet<String> = HashSet::new();
    let mut histograms: Vec<String> = Vec::new();
    let mut eof = false;
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if eof {
            problems.push(format!("line {n}: text after # EOF"));
            break;
        }
        if line == "# EOF" {
            if format == Format::Prometheus {
                problems.push(format!("line {n}: # EOF in classic text"));
            }
            eof = true;
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap_or("");
            if families.contains_key(name) {
                problems.push(format!("line {n}: second HELP for {name}"));
            }
            switch_to(&mut current, &mut families, name);
            families.insert(name.to_owned(), State::Helped);
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split(' ');
            let (name, kind) = (it.next().unwrap_or(""), it.next().unwrap_or(""));
            if families.get(name) != Some(&State::Helped) || current.as_deref() != Some(name) {
                problems.push(format!(
                    "line {n}: TYPE for {name} not right after its one HELP"
                ));
            }
            if !["counter", "gauge", "histogram"].contains(&kind) {
                problems.push(format!("line {n}: unexpected type {kind:?} for {name}"));
            }
            let name_total = name.ends_with("_total");
            match (kind, format) {
                ("counter", Format::Prometheus) if !name_total => {
                    problems.push(format!("line {n}: counter {name} does not end in _total"))
                }
                ("counter", Format::OpenMetrics) if name_total => problems.push(format!(
                    "line {n}: OpenMetrics counter family {name} ends in _total"
                )),
                ("gauge" | "histogram", _) if name_total => {
                    problems.push(format!("line {n}: {kind} {name} ends in _total"))
                }
                _ => {}
            }
            if kind == "histogram" {
                histograms.push(name.to_owned());
            }
            switch_to(&mut current, &mut families, name);
            families.insert(name.to_owned(), State::Typed(kind.to_owned()));
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let Some((sample, value)) = line.rsplit_once(' ') else {
            problems.push(format!("line {n}: not a sample: {line}"));
            continue;
        };
        if value.parse::<f64>().is_err() && !["+Inf", "-Inf", "NaN"].contains(&value) {
            problems.push(format!("line {n}: value {value:?} is not a number"));
        }
        let (name, labels) = match sample.split_once('{') {
            Some((name, labels)) => (name, labels.strip_suffix('}')),
            None => (sample, Some("")),
        };
        let Some(labels) = labels else {
            problems.push(format!("line {n}: bad labels in {sample}"));
            continue;
        };
        // The family this sample belongs to, and the suffix its name adds.
        let family = [
            (name, ""),
            (name.strip_suffix("_total").unwrap_or(""), "_total"),
            (name.strip_suffix("_bucket").unwrap_or(""), "_bucket"),
            (name.strip_suffix("_sum").unwrap_or(""), "_sum"),
            (name.strip_suffix("_count").unwrap_or(""), "_count"),
        ]
        .into_iter()
        .find(|(f, _)| !f.is_empty() && families.contains_key(*f));
        let Some((family, suffix)) = family else {
            problems.push(format!("line {n}: {name} has no TYPE before it"));
            continue;
        };
        match families.get(family) {
            Some(State::Typed(kind)) => {
                let fits = match (kind.as_str(), format) {
                    ("counter", Format::Prometheus) => suffix.is_empty(),
                    ("counter", Format::OpenMetrics) => suffix == "_total",
                    ("gauge", _) => suffix.is_empty(),
                    ("histogram", _) => ["_bucket", "_sum", "_count"].contains(&suffix),
                    _ => false,
                };
                if !fits {
                    problems.push(format!(
                        "line {n}: sample {name} does not fit {kind} {family}"
                    ));
                }
                if suffix == "_bucket" {
                    if !labels.split(',').any(|l| l.starts_with("le=\"")) {
                        problems.push(format!("line {n}: bucket without le: {sample}"));
                    }
                    if labels.contains("le=\"+Inf\"") {
                        inf_bucket.insert(family.to_owned());
                    }
                }
            }
            Some(State::Closed) => {
                problems.push(format!(
                    "line {n}: {family} continues after another family: split into two groups"
                ));
            }
            _ => problems.push(format!("line {n}: {family} has a sample before its TYPE")),
        }
        if current.as_deref() != Some(family) {
            problems.push(format!(
                "line {n}: {family} sample inside another family's group"
            ));
        }
    }
    for h in histograms {
        if !inf_bucket.contains(&h) {
            problems.push(format!("histogram {h} has no +Inf bucket"));
        }
    }
    if format == Format::OpenMetrics && !eof {
        problems.push("OpenMetrics text without # EOF".to_owned());
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::registry::Registry;
    use std::sync::Arc;

    fn render(c: impl Collector, format: Format) -> String {
        let mut r = Registry::default();
        r.register_collector(Box::new(c));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &r).unwrap();
        match format {
            Format::OpenMetrics => out,
            Format::Prometheus => to_prometheus_text(&out),
        }
    }

    #[test]
    fn client_logs_are_limited_per_kind_and_second() {
        let l = ClientLogs::default();
        let allowed = (0..20)
            .filter(|_| l.allow_at(ClientLog::AcceptFailed, 7))
            .count() as u64;
        assert_eq!(allowed, ClientLogs::PER_SECOND);
        assert_eq!(
            l.suppressed(ClientLog::AcceptFailed),
            20 - ClientLogs::PER_SECOND
        );
        assert!(l.allow_at(ClientLog::Request, 7), "kinds are separate");
        assert!(l.allow_at(ClientLog::AcceptFailed, 8), "a new second");
        assert_eq!(l.suppressed(ClientLog::Request), 0);
    }

    #[test]
    fn histogram_is_cumulative_and_counts_everything() {
        let m = Arc::new(Metrics::default());
        m.latency.observe(Duration::from_micros(50));
        m.latency.observe(Duration::from_millis(3));
        m.latency.observe(Duration::from_secs(30));
        let out = render(m.clone(), Format::Prometheus);
        let x = "edge_request_duration_seconds";
        assert!(
            out.contains(&format!("{x}_bucket{{le=\"0.0001\"}} 1\n")),
            "{out}"
        );
        assert!(
            out.contains(&format!("{x}_bucket{{le=\"0.005\"}} 2\n")),
            "{out}"
        );
        assert!(
            out.contains(&format!("{x}_bucket{{le=\"10.0\"}} 2\n")),
            "{out}"
        );
        assert!(
            out.contains(&format!("{x}_bucket{{le=\"+Inf\"}} 3\n")),
            "{out}"
        );
        assert!(out.contains(&format!("{x}_count 3\n")), "{out}");
        let sum: f64 = out
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{x}_sum ")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no sum in {out}"));
        assert!((sum - 30.00305).abs() < 1e-9, "{sum}");
        assert_eq!(
            out.matches(&format!("{x}_bucket")).count(),
            LATENCY_BUCKETS.len() + 1
        );
        assert_eq!(m.latency.count(), 3);
    }

    #[test]
    fn requests_by_protocol_and_class() {
        let m = Arc::new(Metrics::default());
        m.record(Version::HTTP_11, 200, Duration::from_millis(1));
        m.record(Version::HTTP_2, 404, Duration::from_millis(1));
        m.record(Version::HTTP_2, 503, Duration::from_millis(1));
        m.stale_serves.fetch_add(2, Relaxed);
        for format in [Format::Prometheus, Format::OpenMetrics] {
            let out = render(m.clone(), format);
            assert!(out.contains("edge_requests_total{protocol=\"http1\",class=\"2xx\"} 1\n"));
            assert!(out.contains("edge_requests_total{protocol=\"http2\",class=\"4xx\"} 1\n"));
            assert!(out.contains("edge_requests_total{protocol=\"http2\",class=\"5xx\"} 1\n"));
            assert!(out.contains("edge_requests_total{protocol=\"http3\",class=\"1xx\"} 0\n"));
            assert!(out.contains("edge_stale_serves_total 2\n"), "{out}");
            assert_eq!(
                exposition_problems(&out, format),
                Vec::<String>::new(),
                "{out}"
            );
        }
        assert_eq!(m.total_requests(), 3);
    }

    #[test]
    fn the_site_table_is_bounded_and_counts_the_rest_as_other() {
        let t = SiteTable::with_cap(2);
        let hit = SiteFacts {
            bytes: 10,
            hit: Some(true),
            shed: false,
        };
        let shed = SiteFacts {
            bytes: 0,
            hit: None,
            shed: true,
        };
        for site in ["b", "a", "b", "c", "d"] {
            t.record(&site.into(), hit);
        }
        t.record(&"a".into(), shed);
        let got = t.counts();
        let names: Vec<&str> = got.iter().map(|(s, _)| &**s).collect();
        assert_eq!(names, ["a", "b", OTHER_SITES]);
        assert_eq!(
            got[0].1,
            SiteCounts {
                requests: 2,
                bytes: 10,
                hits: 1,
                misses: 0,
                shed: 1
            }
        );
        assert_eq!(got[1].1.requests, 2);
        assert_eq!(got[2].1.requests, 2, "c and d share (other)");
        let m = Arc::new(Metrics::default());
        m.record_site(Some(&"s".into()), hit);
        m.record_site(None, hit);
        assert_eq!(m.response_bytes.load(Relaxed), 20);
        let out = render(m, Format::Prometheus);
        assert!(
            out.contains("edge_site_requests_total{site=\"s\"} 1\n"),
            "{out}"
        );
        assert!(out.contains("edge_site_lookups_total{site=\"s\",result=\"hit\"} 1\n"));
        assert!(out.contains("edge_response_bytes_total 20\n"));
        assert_eq!(
            exposition_problems(&out, Format::Prometheus),
            Vec::<String>::new()
        );
    }

    #[test]
    fn classic_text_names_counter_families_by_their_samples() {
        let m = Arc::new(Metrics::default());
        let om = render(m.clone(), Format::OpenMetrics);
        assert!(om.contains("# TYPE edge_requests counter\n"), "{om}");
        assert!(om.ends_with("# EOF\n"), "{om}");
        let classic = to_prometheus_text(&om);
        assert!(
            classic.contains("# HELP edge_requests_total Responses sent"),
            "{classic}"
        );
        assert!(
            classic.contains("# TYPE edge_requests_total counter\n"),
            "{classic}"
        );
        assert!(classic.contains("# TYPE edge_request_duration_seconds histogram\n"));
        assert!(!classic.contains("# EOF"), "{classic}");
        // Samples are untouched: the same lines, less the metadata.
        let samples = |t: &str| -> Vec<String> {
            t.lines()
                .filter(|l| !l.starts_with('#'))
                .map(str::to_owned)
                .collect()
        };
        assert_eq!(samples(&om), samples(&classic));
        // Each format read as the other is refused.
        assert!(!exposition_problems(&om, Format::Prometheus).is_empty());
        assert!(!exposition_problems(&classic, Format::OpenMetrics).is_empty());
    }

    #[test]
    fn the_checker_finds_split_families_and_misnamed_samples() {
        let good = "# HELP a_total A.\n# TYPE a_total counter\na_total{f=\"x\"} 1\na_total{f=\"y\"} 1\n# HELP b B.\n# TYPE b gauge\nb{f=\"x\"} 0\nb{f=\"y\"} 2\n";
        assert_eq!(
            exposition_problems(good, Format::Prometheus),
            Vec::<String>::new()
        );
        // Two families whose samples interleave per label (what admin.rs once wrote).
        let interleaved = "# HELP a_total A.\n# TYPE a_total counter\n# HELP b B.\n# TYPE b gauge\na_total{f=\"x\"} 1\nb{f=\"x\"} 0\na_total{f=\"y\"} 1\nb{f=\"y\"} 2\n";
        let p = exposition_problems(interleaved, Format::Prometheus);
        assert!(
            p.iter().any(|p| p.contains("split into two groups")),
            "{p:?}"
        );
        let bad = [
            // HELP twice
            "# HELP a A.\n# TYPE a gauge\na 1\n# HELP a A.\n",
            // a sample with no TYPE
            "z 1\n",
            // counter not ending in _total
            "# HELP a A.\n# TYPE a counter\na 1\n",
            // gauge sample with a counter suffix
            "# HELP a A.\n# TYPE a gauge\na_total 1\n",
            // histogram without +Inf, bucket without le
            "# HELP h H.\n# TYPE h histogram\nh_bucket 1\nh_sum 1\nh_count 1\n",
            // TYPE without HELP
            "# TYPE a gauge\na 1\n",
            // not a number
            "# HELP a A.\n# TYPE a gauge\na one\n",
        ];
        for text in bad {
            assert!(
                !exposition_problems(text, Format::Prometheus).is_empty(),
                "{text}"
            );
        }
    }
}
