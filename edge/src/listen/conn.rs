//! What a client connection may hold of the node, and for how long (HTTP/1.1 and HTTP/2 over
//! TCP): the node-wide connection cap (`server.max_connections`), the idle timeout for every
//! state without a request in flight (`server.idle_timeout`: after accept, after the TLS
//! handshake, between keep-alive requests, HTTP/2 with no open stream), and the send timeout
//! of a response that makes no progress (`server.send_timeout`).
//!
//! Invariants: a connection is counted from accept to close; it is idle exactly while no
//! request is in flight on it (a request is in flight from the service call until its
//! response body is dropped); at the cap the connection idle the longest is closed to admit
//! a new one, and with none idle the new one is refused; the watchdog of a connection is
//! the one timer it has, re-armed only when it fires (at least once per `send_timeout`).
//! On HTTP/2 each stream has its own send timeout ([`StreamExec`]): a stalled stream is
//! reset (RST_STREAM) while the others and the connection go on; the connection's watchdog
//! acts only [`STREAM_FIRST`] later, as a backstop.
//!
//! An HTTP/1 connection idle for [`PARK_AFTER`] (1 s) is *parked*: hyper's connection (its
//! 8 KiB read and write buffers) is taken apart, its task ends, and only the socket and its
//! service are kept, by a holder ([`Unpark`], [`Conn::park`]) that the socket's readiness
//! wakes or the gate closes: evicted at the cap, after `idle_timeout` ([`Gate::sweep`]: a
//! parked connection has no timer), or at shutdown ([`Gate::close_parked`]). Until then hyper's
//! connection stays, so keep-alive requests that follow each other closely never rebuild
//! it; the watchdog's one timer, not one per request, looks when that time is up. The socket wrapper ([`Tracked`]) tells
//! when that is safe: the request had no body, its response ended, hyper flushed every byte
//! since, and then found nothing to read; bytes read after the response end keep hyper's
//! connection (a partial head stays under hyper's header-read timeout).

use std::collections::BTreeMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use edge_config::Limits;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::metrics::Metrics;

/// The descriptors kept back from client connections (disk tier, origin, logs, listeners)
/// when `server.max_connections` is `auto`: a quarter of the limit, at least 256.
pub fn derived_max_connections(fd_limit: u64) -> u64 {
    let reserve = (fd_limit / 4).max(256);
    fd_limit.saturating_sub(reserve).max(16)
}

/// The process's soft descriptor limit (`ulimit -n`), from /proc; 1024 when unknown.
pub fn fd_limit() -> u64 {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|t| parse_fd_limit(&t))
        .unwrap_or(1024)
}

fn parse_fd_limit(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line["Max open files".len()..].split_whitespace().next()?;
    match soft {
        "unlimited" => Some(1 << 20),
        n => n.parse().ok(),
    }
}

/// The node-wide connection table: shared by every serving thread.
pub struct Gate {
    max: u64,
    limits: Limits,
    metrics: Arc<Metrics>,
    /// Idle connections by when they went idle (a sequence number: oldest first).
    idle: Mutex<BTreeMap<u64, Arc<Shared>>>,
    seq: AtomicU64,
    epoch: Instant,
}

impl Gate {
    pub fn new(limits: Limits, metrics: Arc<Metrics>) -> Arc<Gate> {
        let max = limits
            .max_connections
            .unwrap_or_else(|| derived_max_connections(fd_limit()));
        Arc::new(Gate {
            max,
            limits,
            metrics,
            idle: Mutex::new(BTreeMap::new()),
            seq: AtomicU64::new(0),
            epoch: Instant::now(),
        })
    }

    pub fn max(&self) -> u64 {
        self.max
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn at(&self, ms: u64) -> Instant {
        self.epoch + Duration::from_millis(ms)
    }

    fn idle_map(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Arc<Shared>>> {
        // A panic while the map is held cannot leave it inconsistent (single inserts and
        // removes), so a poisoned lock is used as is.
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The holder of a parked connection, taken out (it is no longer counted parked): by
    /// whoever took the connection out of the holder first.
    fn take_parked(&self, s: &Shared) -> Option<Arc<dyn Unpark>> {
        let p = s.parked().take();
        if p.is_some() {
            self.metrics.conns.parked.fetch_sub(1, Ordering::Relaxed);
        }
        p
    }

    /// A parked connection, claimed to be closed: taken out of its holder, which leaves the
    /// gate. `None` when it is not parked, or the socket's wake-up took it first (a task
    /// serves it, and it stays counted until that task unparks it).
    fn claim(&self, s: &Shared) -> Option<Box<dyn Send>> {
        let holder = s.parked().clone()?;
        let held = holder.detach()?;
        self.take_parked(s);
        Some(held)
    }

    /// Closes the parked connections idle for `idle_timeout` (counted); returns when to look
    /// again: when the next idle connection's time is up. Connections with a task of their
    /// own are left to it. Any serving loop may call it: parked connections have no timer.
    pub fn sweep(&self) -> Instant {
        let now = self.now_ms();
        let timeout = self.limits.idle_timeout.as_millis() as u64;
        let mut next = now + timeout;
        let mut due = Vec::new();
        for s in self.idle_map().values() {
            let at = s.idle_since.load(Ordering::Relaxed) + timeout;
            if at > now {
                next = at;
                break;
            }
            if s.parked().is_some() {
                due.push(s.clone());
            }
        }
        for s in due {
            if let Some(held) = self.claim(&s) {
                self.metrics
                    .conns
                    .idle_timeouts
                    .fetch_add(1, Ordering::Relaxed);
                drop(held);
            }
        }
        self.at(next.max(now + 1))
    }

    /// Closes the parked connections of listener `lot` (it is shutting down).
    pub fn close_parked(&self, lot: usize) {
        let mine: Vec<Arc<Shared>> = self
            .idle_map()
            .values()
            .filter(|s| s.parked().as_ref().is_some_and(|p| p.lot() == lot))
            .cloned()
            .collect();
        for s in mine {
            drop(self.claim(&s));
        }
    }

    /// Counts a new connection in, closing the oldest idle one when at the cap; `None`
    /// (refused, counted) when at the cap with none idle.
    pub fn admit(self: &Arc<Self>) -> Option<Conn> {
        let c = &self.metrics.conns;
        let open = c.open.fetch_add(1, Ordering::Relaxed) + 1;
        if open > self.max {
            let oldest = self.idle_map().pop_first();
            match oldest {
                Some((_, victim)) => {
                    *victim.idle_key.lock().unwrap_or_else(|p| p.into_inner()) = None;
                    c.idle.fetch_sub(1, Ordering::Relaxed);
                    c.evicted.fetch_add(1, Ordering::Relaxed);
                    victim.close.notify_one();
                    drop(self.claim(&victim));
                }
                None => {
                    c.open.fetch_sub(1, Ordering::Relaxed);
                    c.refused.fetch_add(1, Ordering::Relaxed);
                    return None;
                }
            }
        }
        let shared = Arc::new(Shared {
            inflight: AtomicUsize::new(0),
            idle_since: AtomicU64::new(self.now_ms()),
            last_progress: AtomicU64::new(self.now_ms()),
            idle_key: Mutex::new(None),
            close: Notify::new(),
            quiet: AtomicU8::new(QUIET),
            parked: Mutex::new(None),
        });
        let conn = Conn {
            gate: self.clone(),
            shared,
        };
        conn.become_idle();
        Some(conn)
    }
}

struct Shared {
    inflight: AtomicUsize,
    idle_since: AtomicU64,
    /// The last write to the socket, or request start.
    last_progress: AtomicU64,
    /// The key in the gate's idle map while idle.
    idle_key: Mutex<Option<u64>>,
    /// Told to close (evicted at the cap).
    close: Notify,
    /// How far an HTTP/1 connection is on the way to being parked: [`BUSY`] .. [`QUIET`],
    /// or [`HELD`].
    quiet: AtomicU8,
    /// What holds the connection while it is parked with no task ([`Conn::park`]).
    parked: Mutex<Option<Arc<dyn Unpark>>>,
}

impl Shared {
    fn parked(&self) -> std::sync::MutexGuard<'_, Option<Arc<dyn Unpark>>> {
        self.parked.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What holds a parked HTTP/1 connection (its socket, service and listener token) while no
/// task does: it is woken by the socket's readiness, and told to close by the gate (evicted
/// at the cap, idle for `idle_timeout`, or its listener shutting down).
pub trait Unpark: Send + Sync {
    /// The connection, if it is still parked: dropping it closes it (after it is counted,
    /// so a client that sees the close sees the count).
    fn detach(&self) -> Option<Box<dyn Send>>;
    /// The listener it belongs to, to close a listener's own when it shuts down.
    fn lot(&self) -> usize;
}

/// A request is in flight (or hyper is reading one).
const BUSY: u8 = 0;
/// The last request's response body was dropped (its bytes are in hyper's buffer).
const ENDED: u8 = 1;
/// hyper flushed its buffer to the socket after that.
const FLUSHED: u8 = 2;
/// hyper then found nothing to read: it holds nothing but its buffers, so it can be taken
/// apart. Also the state of a connection no request has started on.
const QUIET: u8 = 3;
/// Not to be parked until the next request ends: a request with a body (hyper may still
/// be reading it), or bytes read since the last response ended (a head hyper is reading).
const HELD: u8 = 4;

/// How [`Conn::watch_until_quiet`] returned.
pub enum Outcome {
    /// The connection is done.
    Ended,
    /// The HTTP/1 connection is quiet: take it apart and wait for readability.
    Quiet,
}

/// One admitted connection: counted until dropped.
pub struct Conn {
    gate: Arc<Gate>,
    shared: Arc<Shared>,
}

impl Conn {
    fn key(&self) -> std::sync::MutexGuard<'_, Option<u64>> {
        self.shared
            .idle_key
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn become_idle(&self) {
        let mut key = self.key();
        if key.is_none() {
            // The time and the place in the idle map under its lock, so that the map is in
            // the order of `idle_since` ([`Gate::sweep`] stops at the first one not due).
            let mut map = self.gate.idle_map();
            self.shared
                .idle_since
                .store(self.gate.now_ms(), Ordering::Relaxed);
            let seq = self.gate.seq.fetch_add(1, Ordering::Relaxed);
            map.insert(seq, self.shared.clone());
            self.gate.metrics.conns.idle.fetch_add(1, Ordering::Relaxed);
            *key = Some(seq);
        } else {
            self.shared
                .idle_since
                .store(self.gate.now_ms(), Ordering::Relaxed);
        }
    }

    fn leave_idle(&self) {
        let mut key = self.key();
        if let Some(k) = key.take() {
            self.gate.idle_map().remove(&k);
            self.gate.metrics.conns.idle.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// A request starts: the connection is busy until the returned guard drops.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.shared
            .last_progress
            .store(self.gate.now_ms(), Ordering::Relaxed);
        self.shared.quiet.store(BUSY, Ordering::Relaxed);
        if self.shared.inflight.fetch_add(1, Ordering::AcqRel) == 0 {
            self.leave_idle();
        }
        InFlight { conn: self.clone() }
    }

    /// The request just begun has a body: hyper's connection is not parked after it.
    pub fn hold(&self) {
        self.shared.quiet.store(HELD, Ordering::Relaxed);
    }

    /// The connection is rebuilt with bytes hyper had read and not parsed: not parked again
    /// until a request ends.
    pub fn held_over(&self) {
        self.hold();
    }

    /// Waits, holding only the socket, until `readable` is ready (`true`), or until the
    /// connection is to close (`false`): idle for `idle_timeout` (counted), evicted at the
    /// cap, `shutdown` turned true, or `readable` failed. Only while nothing is in flight.
    pub async fn idle_until(
        &self,
        readable: impl Future<Output = io::Result<()>>,
        shutdown: &mut tokio::sync::watch::Receiver<bool>,
    ) -> bool {
        let due = self.shared.idle_since.load(Ordering::Relaxed)
            + self.gate.limits.idle_timeout.as_millis() as u64;
        let _parked = Parked::new(&self.gate.metrics.conns.parked);
        tokio::select! {
            r = readable => r.is_ok(),
            () = self.shared.close.notified() => false,
            _ = shutdown.wait_for(|s| *s) => false,
            () = tokio::time::sleep_until(self.gate.at(due)) => {
                self.gate.metrics.conns.idle_timeouts.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// The connection is parked: `holder` has it, and no task. Only while nothing is in
    /// flight, after [`Conn::watch_until_quiet`] returned [`Outcome::Quiet`].
    pub fn park(&self, holder: Arc<dyn Unpark>) {
        self.gate
            .metrics
            .conns
            .parked
            .fetch_add(1, Ordering::Relaxed);
        *self.shared.parked() = Some(holder);
    }

    /// Whether the gate closed this idle connection to make room at the cap (it is no
    /// longer in the idle table). Only meaningful while nothing is in flight.
    pub fn evicted(&self) -> bool {
        self.key().is_none()
    }

    /// The connection, taken out of its holder by the caller (readable: a task serves it
    /// again), leaves the gate's parked set.
    pub fn unpark(&self) {
        self.gate.take_parked(&self.shared);
    }

    /// Whether the connection has been idle for `idle_timeout` already; counted as closed
    /// for it when so (the caller closes it).
    pub fn idle_expired(&self) -> bool {
        let due = self.shared.idle_since.load(Ordering::Relaxed)
            + self.gate.limits.idle_timeout.as_millis() as u64;
        let expired = self.gate.now_ms() >= due;
        if expired {
            self.gate
                .metrics
                .conns
                .idle_timeouts
                .fetch_add(1, Ordering::Relaxed);
        }
        expired
    }

    /// Wraps the connection's socket so that writes count as progress.
    pub fn io<T>(self: &Arc<Self>, io: T) -> Tracked<T> {
        Tracked {
            io,
            conn: self.clone(),
        }
    }

    /// What the watchdog does next: wait until the returned instant, or act now.
    fn check(&self) -> Check {
        let l = &self.gate.limits;
        let now = self.gate.now_ms();
        if self.shared.inflight.load(Ordering::Acquire) == 0 {
            let due =
                self.shared.idle_since.load(Ordering::Relaxed) + l.idle_timeout.as_millis() as u64;
            if now >= due {
                return Check::Idle;
            }
            // A request may start meanwhile without waking the watchdog (none is sent on
            // the request path): look again within a send timeout, so a stall is seen
            // within twice `send_timeout`.
            Check::Wait(
                self.gate
                    .at(due.min(now + l.send_timeout.as_millis() as u64)),
            )
        } else {
            let due = self.shared.last_progress.load(Ordering::Relaxed)
                + (l.send_timeout + STREAM_FIRST).as_millis() as u64;
            if now >= due {
                return Check::Stalled;
            }
            Check::Wait(self.gate.at(due))
        }
    }

    /// When the watchdog of an HTTP/1 connection that may be parked looks again: idle for
    /// [`PARK_AFTER`] already (`Now`: parked if quiet); idle since less (`At` its
    /// `PARK_AFTER`); busy (`At` a `PARK_AFTER` from now, so a request that ends is parked
    /// within twice that, at one wake-up a second and none per request); `None`, idle but
    /// held (a request body, or a head begun): not parked before another request, which
    /// the watchdog sees within `send_timeout` anyway ([`Conn::check`]).
    fn park_check(&self) -> Option<Park> {
        let now = self.gate.now_ms();
        let after = PARK_AFTER.as_millis() as u64;
        if self.shared.inflight.load(Ordering::Acquire) > 0 {
            return Some(Park::At(self.gate.at(now + after)));
        }
        if self.shared.quiet.load(Ordering::Relaxed) == HELD {
            return None;
        }
        let due = self.shared.idle_since.load(Ordering::Relaxed) + after;
        Some(if now >= due {
            Park::Now
        } else {
            Park::At(self.gate.at(due))
        })
    }

    /// When the watchdog of a connection that is not parked looks at it once after its last
    /// response (see [`Conn::watching`]): a [`PARK_AFTER`] after it, if that is still to
    /// come and nothing is in flight.
    fn release_check(&self) -> Option<Instant> {
        if self.shared.inflight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let due = self.shared.idle_since.load(Ordering::Relaxed) + PARK_AFTER.as_millis() as u64;
        (self.gate.now_ms() < due).then(|| self.gate.at(due))
    }

    /// Drives `conn` (a hyper connection) until it ends; or until it is idle for
    /// `idle_timeout` or evicted at the cap (then `graceful` is called: HTTP/2 GOAWAY,
    /// HTTP/1.1 closes once idle; it is dropped if still open [`GRACE`] later with nothing
    /// in flight); or until a response makes no progress for `send_timeout` (dropped: the
    /// client sees the connection reset). `shutdown` turning true calls `graceful` too; the
    /// listener's drain deadline bounds the rest.
    pub async fn watch<F, E>(
        &self,
        conn: Pin<&mut F>,
        graceful: impl Fn(Pin<&mut F>),
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Result<(), E>
    where
        F: Future<Output = Result<(), E>>,
    {
        self.watching(conn, graceful, shutdown, false)
            .await
            .map(|_| ())
    }

    /// [`Conn::watch`] for an HTTP/1 connection that may be parked: also returns
    /// [`Outcome::Quiet`] once hyper holds nothing but its buffers and the connection has
    /// been idle for [`PARK_AFTER`] (and no close was asked).
    pub async fn watch_until_quiet<F, E>(
        &self,
        conn: Pin<&mut F>,
        graceful: impl Fn(Pin<&mut F>),
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Result<Outcome, E>
    where
        F: Future<Output = Result<(), E>>,
    {
        self.watching(conn, graceful, shutdown, true).await
    }

    async fn watching<F, E>(
        &self,
        mut conn: Pin<&mut F>,
        graceful: impl Fn(Pin<&mut F>),
        mut shutdown: tokio::sync::watch::Receiver<bool>,
        park: bool,
    ) -> Result<Outcome, E>
    where
        F: Future<Output = Result<(), E>>,
    {
        let c = &self.gate.metrics.conns;
        let mut closing: Option<Instant> = None;
        let mut shut = false;
        loop {
            let wake = match self.check() {
                Check::Wait(t) => t,
                Check::Idle => match closing {
                    Some(deadline) if Instant::now() >= deadline => return Ok(Outcome::Ended),
                    Some(deadline) => deadline,
                    None => {
                        c.idle_timeouts.fetch_add(1, Ordering::Relaxed);
                        graceful(conn.as_mut());
                        closing = Some(Instant::now() + GRACE);
                        continue;
                    }
                },
                Check::Stalled => {
                    c.send_timeouts.fetch_add(1, Ordering::Relaxed);
                    return Ok(Outcome::Ended);
                }
            };
            let wake = closing.map_or(wake, |d| d.min(wake));
            // Parked only once idle for PARK_AFTER: until then hyper's connection stays, so a
            // keep-alive client that sends again soon (any closed loop) never rebuilds it.
            let (parkable, wake) = match (park && closing.is_none())
                .then(|| self.park_check())
                .flatten()
            {
                Some(Park::Now) => (true, wake.min(Instant::now() + PARK_AFTER)),
                Some(Park::At(t)) => (false, wake.min(t)),
                None => (false, wake),
            };
            // Any other connection (HTTP/2) is polled once more a PARK_AFTER after its last
            // response: h2 gives back its buffers then (vendor/README.md), and an idle
            // connection is polled by nothing else.
            let wake = match self.release_check() {
                Some(t) if !park => wake.min(t),
                _ => wake,
            };
            let served = std::future::poll_fn(|cx| match conn.as_mut().poll(cx) {
                Poll::Ready(r) => Poll::Ready(r.map(|()| Outcome::Ended)),
                Poll::Pending if parkable && self.shared.quiet.load(Ordering::Relaxed) == QUIET => {
                    Poll::Ready(Ok(Outcome::Quiet))
                }
                Poll::Pending => Poll::Pending,
            });
            tokio::select! {
                r = served => return r,
                () = self.shared.close.notified(), if closing.is_none() => {
                    graceful(conn.as_mut());
                    closing = Some(Instant::now() + GRACE);
                }
                _ = shutdown.wait_for(|s| *s), if !shut => {
                    shut = true;
                    if closing.is_none() {
                        graceful(conn.as_mut());
                    }
                }
                () = tokio::time::sleep_until(wake) => {
                    if closing.is_some_and(|d| Instant::now() >= d)
                        && self.shared.inflight.load(Ordering::Acquire) == 0
                    {
                        return Ok(Outcome::Ended);
                    }
                }
            }
        }
    }
}

/// How long an HTTP/1 connection stays idle (and quiet) before it is parked: its hyper
/// connection taken apart, only the socket kept. Long enough that a client sending its next
/// request within it (any closed loop, a page's requests) keeps hyper's connection, whose
/// rebuild costs about 40% more instructions per request; short against `idle_timeout`.
pub const PARK_AFTER: Duration = Duration::from_secs(1);

/// Counts a connection parked while it lives (the `memory` release sees hyper's buffers
/// freed as a drop in connections holding them).
struct Parked<'a>(&'a AtomicU64);

impl<'a> Parked<'a> {
    fn new(gauge: &'a AtomicU64) -> Self {
        gauge.fetch_add(1, Ordering::Relaxed);
        Parked(gauge)
    }
}

impl Drop for Parked<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What [`Conn::park_check`] found.
enum Park {
    Now,
    At(Instant),
}

/// How long a connection asked to close (idle, evicted) may take to do so.
pub const GRACE: Duration = Duration::from_secs(1);

/// How much later than `send_timeout` the connection watchdog drops a connection whose
/// responses make no progress: on HTTP/2 its stalled streams are reset first, one by one
/// ([`StreamExec`]), and the connection survives them.
pub const STREAM_FIRST: Duration = Duration::from_secs(1);

/// The executor hyper spawns each HTTP/2 stream on (the request's service future, then the
/// response body piped into the stream): a stream whose response body has not moved (no
/// frame taken from it) for `send_timeout` is dropped, which makes h2 send
/// RST_STREAM(CANCEL) and frees what the stream held; the connection goes on. Wake-ups
/// alone are not progress: h2 wakes waiting streams when others end or capacity moves.
#[derive(Clone)]
pub struct StreamExec {
    send_timeout: Duration,
    metrics: Arc<Metrics>,
}

impl StreamExec {
    pub fn new(send_timeout: Duration, metrics: Arc<Metrics>) -> StreamExec {
        StreamExec {
            send_timeout,
            metrics,
        }
    }
}

impl<F> hyper::rt::Executor<F> for StreamExec
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    fn execute(&self, fut: F) {
        tokio::spawn(Watched {
            inner: Box::pin(fut),
            timeout: self.send_timeout,
            last: Instant::now(),
            timer: None,
            metrics: self.metrics.clone(),
        });
    }
}

thread_local! {
    /// Set when a response body hands over a frame ([`Guarded`]) while a stream task is
    /// polled on this thread: the stream's progress, read and cleared by [`Watched`]. A
    /// stream task and the body it pipes are polled together, on one thread.
    static BODY_MOVED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// A stream task under its send timeout. The timer is made only when the task first waits
/// (a response sent in one poll never has one) and re-armed only when it fires.
struct Watched<F> {
    inner: Pin<Box<F>>,
    timeout: Duration,
    /// When the stream started, or its body last handed over a frame.
    last: Instant,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    metrics: Arc<Metrics>,
}

impl<F: std::future::Future<Output = ()>> std::future::Future for Watched<F> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        let now = Instant::now();
        if this.timer.is_some() && now >= this.last + this.timeout {
            // No frame taken for `send_timeout`: reset the stream.
            this.metrics
                .conns
                .h2_stream_timeouts
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!("HTTP/2 response made no progress; resetting the stream");
            return Poll::Ready(());
        }
        BODY_MOVED.set(false);
        let ready = this.inner.as_mut().poll(cx).is_ready();
        if BODY_MOVED.replace(false) {
            this.last = now;
        }
        if ready {
            return Poll::Ready(());
        }
        let due = this.last + this.timeout;
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
        if timer.deadline() != due {
            timer.as_mut().reset(due);
        }
        // Registers the task's waker with the timer.
        let _ = timer.as_mut().poll(cx);
        Poll::Pending
    }
}

enum Check {
    Wait(Instant),
    Idle,
    Stalled,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.leave_idle();
        self.gate.metrics.conns.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A request in flight on a connection (held by the response body).
pub struct InFlight {
    conn: Arc<Conn>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let s = &self.conn.shared;
        s.last_progress
            .store(self.conn.gate.now_ms(), Ordering::Relaxed);
        if s.inflight.fetch_sub(1, Ordering::AcqRel) == 1 {
            let _ = s
                .quiet
                .compare_exchange(BUSY, ENDED, Ordering::Relaxed, Ordering::Relaxed);
            self.conn.become_idle();
        }
    }
}

/// A response body with its request's in-flight guard: the request ends when the body is
/// dropped (sent, or abandoned by the client).
pub struct Guarded<B> {
    body: B,
    _inflight: InFlight,
}

impl<B> Guarded<B> {
    pub fn new(body: B, inflight: InFlight) -> Self {
        Guarded {
            body,
            _inflight: inflight,
        }
    }
}

impl<B: http_body::Body + Unpin> http_body::Body for Guarded<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        let r = Pin::new(&mut self.get_mut().body).poll_frame(cx);
        if let Poll::Ready(Some(Ok(_))) = r {
            BODY_MOVED.set(true);
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// A connection's socket: every write that moves bytes counts as progress.
pub struct Tracked<T> {
    io: T,
    conn: Arc<Conn>,
}

impl<T> Tracked<T> {
    pub fn get_ref(&self) -> &T {
        &self.io
    }

    fn progress(&self, n: usize) {
        if n > 0 {
            // Bytes after the flush: another flush is needed before parking.
            let _ = self.conn.shared.quiet.compare_exchange(
                FLUSHED,
                ENDED,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
            self.conn
                .shared
                .last_progress
                .store(self.conn.gate.now_ms(), Ordering::Relaxed);
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.io).poll_read(cx, buf);
        let quiet = &this.conn.shared.quiet;
        match quiet.load(Ordering::Relaxed) {
            ENDED | FLUSHED | QUIET if buf.filled().len() > before => {
                quiet.store(HELD, Ordering::Relaxed);
            }
            FLUSHED if r.is_pending() => quiet.store(QUIET, Ordering::Relaxed),
            _ => {}
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            this.progress(n);
        }
        r
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = r {
            this.progress(n);
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_flush(cx);
        if let Poll::Ready(Ok(())) = r {
            // hyper flushes the socket only once its own buffer is empty.
            let _ = this.conn.shared.quiet.compare_exchange(
                ENDED,
                FLUSHED,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
        r
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptor_limit_and_derived_cap() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max processes             63318                63318                processes\n\
                      Max open files            1024                 524288               files\n";
        assert_eq!(parse_fd_limit(limits), Some(1024));
        assert_eq!(parse_fd_limit("nothing"), None);
        assert_eq!(derived_max_connections(1024), 768);
        assert_eq!(derived_max_connections(65_536), 49_152);
        assert_eq!(derived_max_connections(300), 44);
        assert_eq!(derived_max_connections(100), 16);
    }

    fn gate(max: u64) -> Arc<Gate> {
        let limits = Limits {
            max_connections: Some(max),
            ..edge_config::Config::default().limits
        };
        Gate::new(limits, Arc::default())
    }

    #[tokio::test]
    async fn at_the_cap_the_oldest_idle_connection_is_closed() {
        let g = gate(2);
        let a = Arc::new(g.admit().unwrap());
        let b = Arc::new(g.admit().unwrap());
        let busy = a.begin();
        // `a` is busy, `b` idle: the third evicts `b`.
        let c = g.admit().expect("admitted by evicting an idle one");
        assert_eq!(g.metrics.conns.evicted.load(Ordering::Relaxed), 1);
        tokio::time::timeout(Duration::from_secs(1), b.shared.close.notified())
            .await
            .expect("b told to close");
        drop(b);
        // Now `a` is busy and `c` idle, but c's eviction made room... `c` is the only idle.
        let d = g.admit().expect("evicts c");
        drop((c, d));
        assert_eq!(g.metrics.conns.evicted.load(Ordering::Relaxed), 2);
        // Only busy ones left at the cap: refused.
        let e = Arc::new(g.admit().unwrap());
        let _busy_e = e.begin();
        assert!(g.admit().is_none(), "every connection busy: refused");
        assert_eq!(g.metrics.conns.refused.load(Ordering::Relaxed), 1);
        drop(busy);
        assert_eq!(g.metrics.conns.idle.load(Ordering::Relaxed), 1);
        drop(a);
        assert_eq!(g.metrics.conns.idle.load(Ordering::Relaxed), 0);
        assert_eq!(g.metrics.conns.open.load(Ordering::Relaxed), 1);
    }
}
