//! Workers, pacing and phases: the part of the generator that keeps time.
//!
//! Invariants:
//! - Every request of the measured phase is counted exactly once: as a response (by status,
//!   with its latency in the histogram) or as an error (by kind).
//! - Open loop: request `i` is due at `start + i / rate`; no request is sent before it is due,
//!   and its latency runs from that instant, however late a worker got to it.
//! - The run ends: nothing new starts after the measured phase's end (closed loop) or after
//!   the last due request (open loop); every request has a timeout; queued requests still
//!   unsent one timeout after the end are counted as `unsent`, not sent.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::sync::{Mutex, Semaphore};
use tokio::task::JoinSet;

use super::conn::{Endpoint, ErrorKind, Fetched, Sender};
use super::report::{self, Report};
use super::workload::Workload;
use super::{GenError, Mode, RunOptions};

/// The pause after a failed connection attempt, so a dead target is not hammered in a loop.
const RECONNECT_PAUSE: Duration = Duration::from_millis(10);

/// Runs the load described by `opts` over `workload` and reports the measured phase.
pub async fn run(opts: &RunOptions, workload: Arc<Workload>) -> Result<Report, GenError> {
    opts.validate()?;
    let endpoint = Endpoint::new(&opts.target, opts.proto, &opts.tls).await?;

    // Connections first, so the clock measures requests rather than handshakes.
    let mut senders = Vec::with_capacity(opts.connections);
    for index in 0..opts.connections {
        let s = endpoint.connect().await.map_err(|e| GenError::Connect {
            index,
            addr: endpoint.addr,
            kind: e.kind,
            reason: e.reason,
        })?;
        senders.push(s);
    }

    let workers = opts.connections * opts.streams;
    let start = Instant::now();
    let measure_start = start + opts.warmup;
    let end = measure_start + opts.duration;
    let pace = match opts.mode {
        Mode::Closed => None,
        Mode::Open { rate } => {
            let warmup_n = (opts.warmup.as_secs_f64() * rate).ceil() as u64;
            let measured_n =
                ((opts.duration.as_secs_f64() * rate).ceil() as u64).clamp(1, opts.max_requests);
            Some(Pace {
                interval: 1.0 / rate,
                warmup_n,
                total: warmup_n + measured_n,
                permits: Semaphore::new(0),
                limit: AtomicU64::new(u64::MAX),
            })
        }
    };
    let shared = Arc::new(Shared {
        endpoint,
        workload,
        start,
        measure_start,
        end,
        drain_deadline: end + opts.timeout,
        max_requests: opts.max_requests,
        timeout: opts.timeout,
        next: AtomicU64::new(0),
        measured_claimed: AtomicU64::new(0),
        pace,
        live: Live::default(),
        stop: AtomicBool::new(false),
    });
    // Stops the pacing thread however this function ends (including being cancelled).
    let _stop = StopOnDrop(shared.clone());
    if shared.pace.is_some() {
        let sh = shared.clone();
        std::thread::Builder::new()
            .name("loadtest-pacer".into())
            .spawn(move || pace_loop(&sh, workers))
            .map_err(|source| GenError::Output {
                path: "pacing thread".into(),
                source,
            })?;
    }

    let progress = opts
        .progress
        .then(|| tokio::spawn(progress_loop(shared.clone())));

    let mut set = JoinSet::new();
    let mut seed = fastrand::Rng::with_seed(opts.seed);
    for (c, sender) in senders.into_iter().enumerate() {
        let mut spawn = |stream: usize, conn: ConnRef, sender: Sender| {
            set.spawn(
                Worker {
                    shared: shared.clone(),
                    conn,
                    sender: Some((0, sender)),
                    rng: fastrand::Rng::with_seed(seed.u64(..) ^ (c * 1000 + stream) as u64),
                    stats: Stats::new(),
                }
                .run(),
            );
        };
        match sender.share() {
            Some(shared) => {
                let slot: SharedConn = Arc::new(Mutex::new(Some((0, shared))));
                for stream in 0..opts.streams {
                    if let Some(s) = sender.share() {
                        spawn(stream, ConnRef::Shared(slot.clone()), s);
                    }
                }
            }
            None => spawn(0, ConnRef::Own, sender),
        }
    }

    let mut total = Stats::new();
    while let Some(done) = set.join_next().await {
        // A worker does not panic on anything a peer sends; a panic is a bug worth surfacing.
        let stats = done.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        total.merge(stats);
    }
    if let Some(p) = progress {
        p.abort();
        let _ = p.await;
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r\x1b[2K");
        let _ = err.flush();
    }

    let elapsed = total
        .last_done
        .map(|t| t.saturating_duration_since(shared.measure_start))
        .filter(|d| !d.is_zero())
        .unwrap_or(opts.duration);
    Ok(report::build(opts, total.into_parts(), elapsed))
}

/// Open-loop pacing state.
struct Pace {
    /// Seconds between due times.
    interval: f64,
    /// Requests due during the warm-up.
    warmup_n: u64,
    /// Requests due in all: warm-up plus measured.
    total: u64,
    /// One permit per due request.
    permits: Semaphore,
    /// How many requests were released; `u64::MAX` while pacing goes on.
    limit: AtomicU64,
}

#[derive(Default)]
struct Live {
    done: AtomicU64,
    bytes: AtomicU64,
    errors: AtomicU64,
}

struct Shared {
    endpoint: Endpoint,
    workload: Arc<Workload>,
    start: Instant,
    measure_start: Instant,
    end: Instant,
    drain_deadline: Instant,
    max_requests: u64,
    timeout: Duration,
    /// The next request number (both modes).
    next: AtomicU64,
    /// Closed loop: measured requests claimed so far.
    measured_claimed: AtomicU64,
    pace: Option<Pace>,
    live: Live,
    stop: AtomicBool,
}

struct StopOnDrop(Arc<Shared>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.stop.store(true, Ordering::Relaxed);
    }
}

/// Releases one permit per request at its due time, on a plain thread: `thread::sleep` wakes
/// within tens of microseconds, where the async timer rounds up to whole milliseconds.
fn pace_loop(sh: &Shared, workers: usize) {
    let Some(pace) = &sh.pace else { return };
    let mut released = 0u64;
    while !sh.stop.load(Ordering::Relaxed) {
        let elapsed = sh.start.elapsed().as_secs_f64();
        let due = ((elapsed / pace.interval).floor() as u64 + 1).min(pace.total);
        if due > released {
            pace.permits.add_permits((due - released) as usize);
            released = due;
        }
        if released >= pace.total {
            break;
        }
        let next_at = sh.start + Duration::from_secs_f64(released as f64 * pace.interval);
        let wait = next_at
            .saturating_duration_since(Instant::now())
            .clamp(Duration::from_micros(50), Duration::from_millis(50));
        std::thread::sleep(wait);
    }
    pace.limit.store(released, Ordering::Release);
    // Wake every worker so each sees the limit and stops.
    pace.permits.add_permits(workers);
}

async fn progress_loop(sh: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let (mut last_done, mut last_bytes) = (0u64, 0u64);
    loop {
        tick.tick().await;
        let now = Instant::now();
        let done = sh.live.done.load(Ordering::Relaxed);
        let bytes = sh.live.bytes.load(Ordering::Relaxed);
        let errors = sh.live.errors.load(Ordering::Relaxed);
        let phase = if now < sh.measure_start {
            "warm-up"
        } else if now < sh.end {
            "measure"
        } else {
            "drain"
        };
        let backlog = sh.pace.as_ref().map(|p| {
            let elapsed = now.saturating_duration_since(sh.start).as_secs_f64();
            let due = ((elapsed / p.interval) as u64).min(p.total);
            due.saturating_sub(sh.next.load(Ordering::Relaxed))
        });
        let mut line = format!(
            "[{phase}] {:6.1}s  {done} req  {} req/s  {:.1} MiB/s  {errors} errors",
            now.saturating_duration_since(sh.start).as_secs_f64(),
            done - last_done,
            (bytes - last_bytes) as f64 / (1024.0 * 1024.0),
        );
        if let Some(b) = backlog {
            line.push_str(&format!("  backlog {b}"));
        }
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r\x1b[2K{line}");
        let _ = err.flush();
        (last_done, last_bytes) = (done, bytes);
    }
}

/// How a worker reaches its connection: its own (HTTP/1.1: one request at a time), or one
/// shared by the stream workers of an HTTP/2 connection, with a generation number so a broken
/// connection is replaced once, not once per stream.
#[derive(Clone)]
enum ConnRef {
    Own,
    Shared(SharedConn),
}

/// A multiplexed connection (HTTP/2, HTTP/3) shared by its streams' workers, with a
/// generation number so a broken one is replaced once, not once per stream.
type SharedConn = Arc<Mutex<Option<(u64, Sender)>>>;

/// Per-worker counts, merged at the end (no shared lock on the request path).
struct Stats {
    hist: Histogram<u64>,
    statuses: BTreeMap<u16, u64>,
    errors: BTreeMap<ErrorKind, u64>,
    bytes: u64,
    warmup_requests: u64,
    reconnects: u64,
    last_done: Option<Instant>,
}

impl Stats {
    fn new() -> Stats {
        Stats {
            hist: report::new_histogram(),
            statuses: BTreeMap::new(),
            errors: BTreeMap::new(),
            bytes: 0,
            warmup_requests: 0,
            reconnects: 0,
            last_done: None,
        }
    }

    fn merge(&mut self, o: Stats) {
        // Both come from `new_histogram`, so their ranges match and adding cannot fail.
        let _ = self.hist.add(&o.hist);
        for (k, v) in o.statuses {
            *self.statuses.entry(k).or_default() += v;
        }
        for (k, v) in o.errors {
            *self.errors.entry(k).or_default() += v;
        }
        self.bytes += o.bytes;
        self.warmup_requests += o.warmup_requests;
        self.reconnects += o.reconnects;
        self.last_done = self.last_done.max(o.last_done);
    }

    fn into_parts(self) -> report::Counts {
        report::Counts {
            hist: self.hist,
            statuses: self.statuses,
            errors: self.errors,
            bytes: self.bytes,
            warmup_requests: self.warmup_requests,
            reconnects: self.reconnects,
        }
    }
}

struct Worker {
    shared: Arc<Shared>,
    conn: ConnRef,
    sender: Option<(u64, Sender)>,
    rng: fastrand::Rng,
    stats: Stats,
}

impl Worker {
    async fn run(mut self) -> Stats {
        if self.shared.pace.is_some() {
            self.open_loop().await;
        } else {
            self.closed_loop().await;
        }
        self.stats
    }

    async fn closed_loop(&mut self) {
        let sh = self.shared.clone();
        loop {
            let now = Instant::now();
            if now >= sh.end {
                break;
            }
            let measured = now >= sh.measure_start;
            if measured && sh.measured_claimed.fetch_add(1, Ordering::Relaxed) >= sh.max_requests {
                break;
            }
            let i = sh.next.fetch_add(1, Ordering::Relaxed);
            let sent = Instant::now();
            let result = self.request(i).await;
            self.record(measured, sent, result).await;
        }
    }

    async fn open_loop(&mut self) {
        let sh = self.shared.clone();
        let Some(pace) = &sh.pace else { return };
        loop {
            match pace.permits.acquire().await {
                Ok(p) => p.forget(),
                // The semaphore is never closed; treat it as the end all the same.
                Err(_) => break,
            }
            let i = sh.next.fetch_add(1, Ordering::Relaxed);
            if i >= pace.limit.load(Ordering::Acquire) {
                break;
            }
            let due = sh.start + Duration::from_secs_f64(i as f64 * pace.interval);
            let measured = i >= pace.warmup_n;
            if Instant::now() > sh.drain_deadline {
                self.record(measured, due, Err(ErrorKind::Unsent)).await;
                continue;
            }
            let result = self.request(i).await;
            self.record(measured, due, result).await;
        }
    }

    async fn record(&mut self, measured: bool, from: Instant, result: Result<Fetched, ErrorKind>) {
        let done = Instant::now();
        let live = &self.shared.live;
        live.done.fetch_add(1, Ordering::Relaxed);
        let failed_to_connect = matches!(result, Err(ErrorKind::Connect | ErrorKind::Tls));
        match result {
            Ok(f) => {
                live.bytes.fetch_add(f.body_bytes, Ordering::Relaxed);
                if measured {
                    let us = done.saturating_duration_since(from).as_micros();
                    self.stats
                        .hist
                        .saturating_record(u64::try_from(us).unwrap_or(u64::MAX).max(1));
                    *self.stats.statuses.entry(f.status).or_default() += 1;
                    self.stats.bytes += f.body_bytes;
                }
            }
            Err(kind) => {
                live.errors.fetch_add(1, Ordering::Relaxed);
                if measured {
                    *self.stats.errors.entry(kind).or_default() += 1;
                }
            }
        }
        if measured {
            self.stats.last_done = Some(done);
        } else {
            self.stats.warmup_requests += 1;
        }
        if failed_to_connect {
            tokio::time::sleep(RECONNECT_PAUSE).await;
        }
    }

    /// One request with the run's timeout, on a working connection (reopened if needed).
    async fn request(&mut self, i: u64) -> Result<Fetched, ErrorKind> {
        let timeout = self.shared.timeout;
        let result = match tokio::time::timeout(timeout, self.attempt(i)).await {
            Ok(r) => r,
            Err(_) => Err(ErrorKind::Timeout),
        };
        // An HTTP/1.1 connection is in an unknown state after any failure: replace it. An
        // HTTP/2 stream failure leaves the connection usable; `is_closed` catches a dead one.
        if result.is_err() && matches!(self.conn, ConnRef::Own) {
            self.sender = None;
        }
        result
    }

    async fn attempt(&mut self, i: u64) -> Result<Fetched, ErrorKind> {
        self.ensure_connected().await?;
        let sh = &self.shared;
        let (authority, path) = sh.workload.pick(i, &mut self.rng);
        let uri = sh.endpoint.uri(authority, path);
        match &mut self.sender {
            Some((_, s)) => s.get(uri, authority).await,
            None => Err(ErrorKind::Connect),
        }
    }

    async fn ensure_connected(&mut self) -> Result<(), ErrorKind> {
        if matches!(&self.sender, Some((_, s)) if !s.is_closed()) {
            return Ok(());
        }
        let old = self.sender.take().map(|(g, _)| g);
        match &self.conn {
            ConnRef::Own => {
                let s = self.shared.endpoint.connect().await?;
                self.stats.reconnects += 1;
                self.sender = Some((0, s));
            }
            ConnRef::Shared(slot) => {
                // Held while connecting: the connection's other streams wait for this one
                // reconnect instead of each opening their own.
                let mut cur = slot.lock().await;
                if let Some((g, s)) = &*cur
                    && Some(*g) != old
                    && !s.is_closed()
                    && let Some(s) = s.share()
                {
                    self.sender = Some((*g, s));
                    return Ok(());
                }
                let generation = cur.as_ref().map_or(0, |(g, _)| g + 1);
                let s = self.shared.endpoint.connect().await?;
                self.stats.reconnects += 1;
                match s.share() {
                    Some(mine) => {
                        self.sender = Some((generation, mine));
                        *cur = Some((generation, s));
                    }
                    None => self.sender = Some((generation, s)),
                }
            }
        }
        Ok(())
    }
}
