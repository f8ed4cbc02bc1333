//! TCP listeners: binding (`SO_REUSEPORT`, one socket per worker), the accept loop (HTTP/1.1
//! or h2c by the first bytes; over TLS the protocol ALPN chose, and only it; HTTP/1
//! request-line versions through [`VersionShim`]), and the serving threads (one
//! single-threaded tokio runtime per worker, which also runs that worker's HTTP/3 endpoint).
//!
//! Invariants: a connection stays on the thread that accepted it; every connection is
//! admitted by the node-wide [`Gate`] (cap, idle and send timeouts); accept errors back off
//! (10 ms doubling to 1 s) and are logged at a bounded rate. An idle connection holds no
//! hyper state: a cleartext one gets it only once readable, and an HTTP/1 one is taken
//! apart once quiet and idle for `conn::PARK_AFTER` (1 s) between requests and *parked*: its
//! task ends, and what it keeps is the socket, its service and a holder the socket's read
//! readiness wakes (a new task serves it) or the gate closes (evicted, `idle_timeout` through
//! [`Gate::sweep`] in the accept loop, or its listener shutting down).

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll, Wake, Waker};
use std::time::Duration;

use anyhow::Context;
use bytes::{Buf, Bytes};
use hyper::body::Body as _;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use super::Front;
use super::conn::{Conn, Gate, Guarded, Outcome, StreamExec, Tracked, Unpark};
use super::tls::TlsServing;
use super::version::VersionShim;
use crate::http::Handler;
use crate::metrics::ClientLog;

/// What every TCP connection is served with.
#[derive(Clone)]
pub struct Settings {
    pub header_read_timeout: Duration,
    /// The connection table (cap, idle and send timeouts, counters), node-wide.
    pub gate: Arc<Gate>,
}

/// The hyper builders: HTTP/1.1 (hyper's own, so that an idle connection can be taken
/// apart), and HTTP/2 (h2c, or ALPN `h2` over TLS).
struct Builders {
    h1: http1::Builder,
    h2: auto::Builder<StreamExec>,
    /// How long a cleartext client may take to send the whole h2c preface.
    header_read_timeout: Duration,
}

impl Builders {
    fn new(s: &Settings, metrics: Arc<crate::metrics::Metrics>) -> Builders {
        let limits = s.gate.limits();
        // HTTP/2 streams run under their own send timeout (reset on their own).
        let exec = StreamExec::new(limits.send_timeout, metrics);
        let mut h2 = auto::Builder::new(exec);
        h2.http2()
            .timer(TokioTimer::new())
            .max_header_list_size(limits.max_header_bytes as u32)
            .max_concurrent_streams(256);
        let mut h1 = http1::Builder::new();
        h1.timer(TokioTimer::new())
            .header_read_timeout(s.header_read_timeout)
            // Bounds the request head (431 beyond) and the response bytes hyper queues.
            .max_buf_size(limits.max_header_bytes as usize)
            .keep_alive(true);
        Builders {
            h1,
            h2: h2.http2_only(),
            header_read_timeout: s.header_read_timeout,
        }
    }
}

/// Accept errors back off from this...
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
/// ...doubling up to this.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Serves `listener` with `front` around the handler (redirect, HSTS, Alt-Svc) and, with
/// `tls`, a TLS handshake (ALPN h2 or http/1.1) before HTTP on each connection, until
/// `shutdown` resolves; then stops accepting and gives open connections up to `drain`.
pub async fn serve(
    handler: Arc<Handler>,
    listener: TcpListener,
    front: Arc<Front>,
    tls: Option<TlsServing>,
    settings: Settings,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) {
    let builders = Arc::new(Builders::new(&settings, handler.metrics().clone()));
    let max_line = settings.gate.limits().max_header_bytes as usize;
    let gate = settings.gate.clone();
    let metrics = handler.metrics().clone();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let live = Arc::new(Live::default());
    let mut backoff = ACCEPT_BACKOFF_MIN;
    let mut sweep = gate.sweep();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            // Parked connections have no timer of their own: their idle timeout is here.
            () = tokio::time::sleep_until(sweep) => {
                sweep = gate.sweep();
                continue;
            }
            r = listener.accept() => match r {
                Ok(c) => {
                    backoff = ACCEPT_BACKOFF_MIN;
                    c
                }
                Err(e) => {
                    // Out of descriptors and the like: back off instead of spinning, and
                    // say so at a bounded rate.
                    metrics.conns.accept_errors.fetch_add(1, Ordering::Relaxed);
                    if metrics.client_logs.allow(ClientLog::AcceptFailed) {
                        tracing::warn!(error = %e, backoff_ms = backoff.as_millis() as u64, "accept failed; backing off");
                    }
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = &mut shutdown => break,
                    }
                    backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Some(conn) = gate.admit() else {
            // At the cap with none idle: closed at once (the client sees a reset).
            drop(stream);
            continue;
        };
        let conn = Arc::new(conn);
        let _ = stream.set_nodelay(true);
        let svc = {
            let (handler, front, conn) = (handler.clone(), front.clone(), conn.clone());
            service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let (handler, front) = (handler.clone(), front.clone());
                let inflight = conn.begin();
                if !req.body().is_end_stream() {
                    conn.hold();
                }
                async move {
                    let resp = front.respond(&handler, req).await;
                    Ok::<_, Infallible>(resp.map(|b| Guarded::new(b, inflight)))
                }
            })
        };
        let (builders, stop, token) = (builders.clone(), stop_rx.clone(), live.enter());
        let logs = metrics.client_logs.clone();
        let tls = tls.clone();
        let span = tracing::debug_span!(
            "conn",
            peer.addr = %peer,
            proto = if tls.is_some() { "tls" } else { "tcp" }
        );
        let io = conn.io(stream);
        let work = async move {
            let h1 = H1 {
                builders,
                conn,
                svc,
                stop,
                token,
            };
            let result = match tls {
                None => serve_cleartext(h1, io, max_line).await,
                // Boxed: the handshake's state would make every cleartext task as large.
                Some(tls) => Box::pin(serve_tls(h1, io, max_line, tls, logs)).await,
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        };
        tokio::spawn(tracing::Instrument::instrument(work, span));
    }
    drop(listener);
    let _ = stop_tx.send(true);
    gate.close_parked(live.lot());
    tokio::select! {
        () = live.drained() => {}
        () = tokio::time::sleep(drain) => {
            tracing::warn!("drain deadline passed with connections still open");
        }
    }
}

/// A cleartext connection: nothing but the socket until it is readable, then HTTP/1.1 or
/// h2c by its first bytes.
async fn serve_cleartext<S>(
    h1: H1<S>,
    io: Tracked<TcpStream>,
    max_line: usize,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    S: H1Service,
{
    let accepted = Accepted {
        h1,
        io,
        max_line,
        span: tracing::Span::current(),
    };
    match park(accepted) {
        Some(a) => serve_first_bytes(a.h1, a.io, max_line).await,
        None => Ok(()),
    }
}

/// A cleartext connection once its socket is readable: its first bytes (after a wake-up
/// with none: once it has one), then HTTP/1.1 or h2c by them.
async fn serve_first_bytes<S>(
    mut h1: H1<S>,
    io: Tracked<TcpStream>,
    max_line: usize,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    S: H1Service,
{
    if !h1
        .conn
        .idle_until(readable(io.get_ref()), &mut h1.stop)
        .await
    {
        return Ok(());
    }
    match sniff_h2c(io.get_ref(), h1.builders.header_read_timeout).await {
        None => Ok(()),
        Some(true) => serve_h2(h1, io).await,
        Some(false) => {
            let io = VersionShim::new(io, max_line);
            serve_h1(h1, io, cleartext_tcp).await.map_err(Into::into)
        }
    }
}

fn cleartext_tcp(io: &VersionShim<Tracked<TcpStream>>) -> &TcpStream {
    io.get_ref().get_ref()
}

fn tls_tcp(io: &VersionShim<tokio_rustls::server::TlsStream<Tracked<TcpStream>>>) -> &TcpStream {
    io.get_ref().get_ref().0.get_ref()
}

/// A TLS connection: the handshake, then the protocol ALPN chose, and only it (HTTP/2 for
/// `h2`, HTTP/1.1 otherwise: RFC 9113 3.3, RFC 7301).
async fn serve_tls<S>(
    h1: H1<S>,
    io: Tracked<TcpStream>,
    max_line: usize,
    tls: TlsServing,
    logs: Arc<crate::metrics::ClientLogs>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    S: H1Service,
{
    let peer = io.get_ref().peer_addr().ok();
    let handshake = tokio::time::timeout(tls.handshake_timeout, tls.acceptor.accept(io));
    let stream = match handshake.await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            if logs.allow(ClientLog::TlsHandshake) {
                tracing::info!(peer.addr = ?peer, error = %e, "TLS handshake failed");
            }
            return Ok(());
        }
        Err(_) => {
            if logs.allow(ClientLog::TlsHandshake) {
                tracing::info!(peer.addr = ?peer, "TLS handshake timed out");
            }
            return Ok(());
        }
    };
    if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
        serve_h2(h1, stream).await
    } else {
        let io = VersionShim::new(stream, max_line);
        serve_h1(h1, io, tls_tcp).await.map_err(Into::into)
    }
}

/// Serves HTTP/2 on `io` (h2c, or ALPN `h2` over TLS) until the connection ends.
async fn serve_h2<I, S>(h1: H1<S>, io: I) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: H1Service,
{
    let H1 {
        builders,
        conn,
        svc,
        stop,
        token: _token,
    } = h1;
    let mut c = Box::pin(builders.h2.serve_connection(TokioIo::new(io), svc));
    conn.watch(c.as_mut(), |c| c.graceful_shutdown(), stop)
        .await
}

/// The service every connection gets (one `service_fn` type; named for the bounds).
trait H1Service:
    hyper::service::Service<
        http::Request<hyper::body::Incoming>,
        Response = http::Response<Guarded<crate::http::Body>>,
        Error = Infallible,
        Future: Send + 'static,
    > + Clone
    + Unpin
    + Send
    + 'static
{
}

impl<T> H1Service for T where
    T: hyper::service::Service<
            http::Request<hyper::body::Incoming>,
            Response = http::Response<Guarded<crate::http::Body>>,
            Error = Infallible,
            Future: Send + 'static,
        > + Clone
        + Unpin
        + Send
        + 'static
{
}

/// What serves a client connection, owned by it (and by its holder while it is parked).
struct H1<S> {
    builders: Arc<Builders>,
    conn: Arc<Conn>,
    svc: S,
    stop: tokio::sync::watch::Receiver<bool>,
    /// Counts the connection in its listener's drain.
    token: LiveToken,
}

/// Serves HTTP/1.1 on `io`, taking hyper's connection apart each time it has been quiet and
/// idle for [`PARK_AFTER`](super::conn::PARK_AFTER) between requests (its buffers freed;
/// bytes it read ahead kept) and parking the connection ([`park`]): the task ends, and a
/// new one serves it once the socket (`tcp(&io)`) is readable again.
async fn serve_h1<T, S>(h1: H1<S>, io: T, tcp: fn(&T) -> &TcpStream) -> hyper::Result<()>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: H1Service,
{
    serve_h1_from(
        h1,
        Rewind {
            pre: Bytes::new(),
            io,
        },
        tcp,
    )
    .await
}

async fn serve_h1_from<T, S>(
    mut h1: H1<S>,
    mut io: Rewind<T>,
    tcp: fn(&T) -> &TcpStream,
) -> hyper::Result<()>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: H1Service,
{
    loop {
        // Boxed: the task holds it only while a request may be on its way. The service is
        // cloned in (three `Arc`s, once per build, not per request) so `h1` stays whole.
        let svc = h1.svc.clone();
        let mut c = Box::new(h1.builders.h1.serve_connection(TokioIo::new(io), svc));
        match h1
            .conn
            .watch_until_quiet(
                Pin::new(&mut *c),
                |c| c.graceful_shutdown(),
                h1.stop.clone(),
            )
            .await?
        {
            Outcome::Ended => return Ok(()),
            Outcome::Quiet => {}
        }
        let parts = c.into_parts();
        io = parts.io.into_inner();
        io.pre = parts.read_buf;
        if io.pre.is_empty() {
            // Frees the buffer hyper read into (an empty view still holds it).
            io.pre = Bytes::new();
            let held = Held {
                h1,
                io,
                tcp,
                span: tracing::Span::current(),
            };
            // Readable already: served on by this task.
            let Some(back) = park(held) else {
                return Ok(());
            };
            (h1, io) = (back.h1, back.io);
        } else {
            h1.conn.held_over();
        }
    }
}

/// A parked HTTP/1 connection: what it needs to be served again, with no task.
struct Held<T, S> {
    h1: H1<S>,
    io: Rewind<T>,
    tcp: fn(&T) -> &TcpStream,
    span: tracing::Span,
}

/// A parked cleartext connection that has sent nothing yet.
struct Accepted<S> {
    h1: H1<S>,
    io: Tracked<TcpStream>,
    max_line: usize,
    span: tracing::Span,
}

/// What a parked connection is, and how it is served again once readable.
trait Resume: Send + Sized + 'static {
    type Service;
    fn h1(&self) -> &H1<Self::Service>;
    fn socket(&self) -> &TcpStream;
    /// Served again, by a new task.
    fn resume(self) -> impl Future<Output = ()> + Send + 'static;
}

impl<T, S> Resume for Held<T, S>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: H1Service,
{
    type Service = S;

    fn h1(&self) -> &H1<S> {
        &self.h1
    }

    fn socket(&self) -> &TcpStream {
        (self.tcp)(&self.io.io)
    }

    fn resume(self) -> impl Future<Output = ()> + Send + 'static {
        let work = async move {
            if let Err(e) = serve_h1_from(self.h1, self.io, self.tcp).await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        };
        tracing::Instrument::instrument(work, self.span)
    }
}

impl<S: H1Service> Resume for Accepted<S> {
    type Service = S;

    fn h1(&self) -> &H1<S> {
        &self.h1
    }

    fn socket(&self) -> &TcpStream {
        self.io.get_ref()
    }

    fn resume(self) -> impl Future<Output = ()> + Send + 'static {
        let work = async move {
            if let Err(e) = serve_first_bytes(self.h1, self.io, self.max_line).await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        };
        tracing::Instrument::instrument(work, self.span)
    }
}

/// The holder of a parked connection: the socket's waker (readable: a task serves it again)
/// and, through the gate, the closer (evicted, idle timeout, shutdown).
struct Parking<R> {
    held: Mutex<Option<R>>,
    runtime: tokio::runtime::Handle,
    lot: usize,
}

impl<R> Parking<R> {
    fn take(&self) -> Option<R> {
        self.held.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// Parks a connection with nothing in flight: registers its holder with the gate and the
/// socket's read readiness, and lets the calling task end (`None`). Returns the connection
/// when the socket is readable already (the caller serves on), and drops it (`None`) when
/// its listener is shutting down.
fn park<R: Resume>(held: R) -> Option<R> {
    // Shutting down, or due already (the sweep may have looked before it was registered).
    if *held.h1().stop.borrow() || held.h1().conn.idle_expired() {
        return None;
    }
    let conn = held.h1().conn.clone();
    let stop = held.h1().stop.clone();
    let parking = Arc::new(Parking {
        lot: held.h1().token.lot(),
        held: Mutex::new(Some(held)),
        runtime: tokio::runtime::Handle::current(),
    });
    conn.park(parking.clone());
    let ready = {
        let waker = Waker::from(parking.clone());
        let mut cx = TaskContext::from_waker(&waker);
        let guard = parking.held.lock().unwrap_or_else(|p| p.into_inner());
        match guard.as_ref() {
            // Closed by the gate already.
            None => return None,
            // A byte, the end, or an error: whoever reads finds out which. A peek, not the
            // read readiness: a socket just accepted reports that before it has a byte.
            Some(h) => h
                .socket()
                .poll_peek(&mut cx, &mut ReadBuf::new(&mut [0u8; 1]))
                .is_ready(),
        }
    };
    // Whoever takes the connection out of the holder first has it: here, the waker, or
    // the gate closing it.
    if ready {
        let held = parking.take();
        if held.is_some() {
            conn.unpark();
        }
        return held;
    }
    // A shutdown that began, or an eviction at the cap that chose it, while it was being
    // parked (`close_parked` or the gate may have looked before it was registered).
    if (*stop.borrow() || conn.evicted())
        && let Some(held) = parking.take()
    {
        conn.unpark();
        drop(held);
    }
    None
}

impl<R: Send + 'static> Unpark for Parking<R> {
    fn detach(&self) -> Option<Box<dyn Send>> {
        self.take().map(|held| Box::new(held) as Box<dyn Send>)
    }

    fn lot(&self) -> usize {
        self.lot
    }
}

impl<R: Resume> Wake for Parking<R> {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let Some(held) = self.take() else {
            // The gate took it to close it.
            return;
        };
        held.h1().conn.unpark();
        self.runtime.spawn(held.resume());
    }
}

/// Bytes hyper read and did not parse, handed back before the socket's.
struct Rewind<T> {
    pre: Bytes,
    io: T,
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewind<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pre.is_empty() {
            return Pin::new(&mut this.io).poll_read(cx, buf);
        }
        let n = this.pre.len().min(buf.remaining());
        buf.put_slice(&this.pre[..n]);
        this.pre.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Rewind<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// Resolves once `stream` has a byte to read, or its end. Not `TcpStream::readable`: that
/// reports a socket readable before it has seen a byte (the readiness tokio starts with).
async fn readable(stream: &TcpStream) -> io::Result<()> {
    stream.peek(&mut [0u8; 1]).await.map(drop)
}

/// What an h2c client sends first (RFC 9113 3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether a readable cleartext connection speaks h2c (`Some(true)`: the preface) or
/// HTTP/1 (`Some(false)`), from bytes peeked, not read; `None` (close): end of stream, or
/// only a part of the preface within `limit`.
pub(super) async fn sniff_h2c(stream: &TcpStream, limit: Duration) -> Option<bool> {
    let wait = async {
        let mut buf = [0u8; H2_PREFACE.len()];
        loop {
            let n = stream.peek(&mut buf).await.ok()?;
            if n == 0 {
                return None;
            }
            if buf[..n] != H2_PREFACE[..n] {
                return Some(false);
            }
            if n == buf.len() {
                return Some(true);
            }
            // A part of the preface so far: a real client sends all 24 bytes at once, so
            // this polls only for one that trickles them.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(limit, wait).await.ok().flatten()
}

/// Connections of one listener still running (for the drain).
#[derive(Default)]
struct Live {
    n: std::sync::atomic::AtomicUsize,
    zero: tokio::sync::Notify,
}

struct LiveToken(Arc<Live>);

impl LiveToken {
    /// Which listener (its drain counter) the connection belongs to.
    fn lot(&self) -> usize {
        Arc::as_ptr(&self.0) as usize
    }
}

impl Live {
    fn lot(self: &Arc<Self>) -> usize {
        Arc::as_ptr(self) as usize
    }

    fn enter(self: &Arc<Self>) -> LiveToken {
        self.n.fetch_add(1, Ordering::AcqRel);
        LiveToken(self.clone())
    }

    async fn drained(&self) {
        loop {
            let notified = self.zero.notified();
            if self.n.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for LiveToken {
    fn drop(&mut self) {
        if self.0.n.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.zero.notify_waiters();
        }
    }
}

/// Binds the listener, with a message naming the address on failure.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening on {addr}"))
}

/// Binds `n` listening sockets on one address with `SO_REUSEPORT`, so the kernel spreads
/// connections over them. With port 0 the first picks the port and the others join it.
pub fn bind_reuseport(addr: SocketAddr, n: usize) -> anyhow::Result<Vec<std::net::TcpListener>> {
    use socket2::{Domain, Protocol, Socket, Type};
    let mut out = Vec::with_capacity(n);
    let mut addr = addr;
    for _ in 0..n.max(1) {
        let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        sock.set_reuse_address(true)?;
        sock.set_reuse_port(true)?;
        sock.set_nonblocking(true)?;
        sock.bind(&addr.into())
            .with_context(|| format!("listening on {addr}"))?;
        sock.listen(4096)?;
        let l: std::net::TcpListener = sock.into();
        addr = l.local_addr()?;
        out.push(l);
    }
    Ok(out)
}

/// One kind of TCP listener: a socket per worker (the same count for every service), what
/// it adds around the handler, and its TLS settings if it speaks TLS.
pub struct TcpService {
    pub listeners: Vec<std::net::TcpListener>,
    pub front: Front,
    pub tls: Option<TlsServing>,
}

/// Serves on one thread per listener, each with a single-threaded runtime: a connection
/// stays on the thread that accepted it, with no cross-thread wake-ups or work stealing on
/// the request path (the model nginx's workers use). Shared state (caches, pointers, the
/// connection table) is behind `Arc`s; background work (pointer refresh) runs on the
/// caller's runtime. Returns when every worker has drained after `shutdown` fires.
///
/// Several services (cleartext and HTTPS): worker `i` serves the `i`th socket of each, and
/// with `quic` the `i`th UDP socket too, through a quinn endpoint built on that worker's
/// runtime (which then drives it: its packets and connections never leave the thread).
pub async fn run_workers(
    handler: Arc<Handler>,
    services: Vec<TcpService>,
    quic: Option<super::quic::Service>,
    settings: Settings,
    shutdown: tokio::sync::watch::Receiver<bool>,
    drain: Duration,
) -> anyhow::Result<()> {
    let workers = services
        .iter()
        .map(|s| s.listeners.len())
        .max()
        .unwrap_or(0);
    let mut per_worker: Vec<Vec<_>> = (0..workers).map(|_| Vec::new()).collect();
    for s in services {
        let front = Arc::new(s.front);
        for (i, l) in s.listeners.into_iter().enumerate() {
            per_worker[i].push((l, front.clone(), s.tls.clone()));
        }
    }
    // Worker `i`'s UDP socket, with what every endpoint shares.
    let mut udp: Vec<Option<_>> = (0..workers).map(|_| None).collect();
    if let Some(q) = quic {
        anyhow::ensure!(
            q.sockets.udp.len() <= workers,
            "more UDP sockets than serving threads"
        );
        for (i, sock) in q.sockets.udp.into_iter().enumerate() {
            udp[i] = Some((
                sock,
                q.sockets.shared.clone(),
                q.front.clone(),
                q.settings.clone(),
            ));
        }
    }
    let mut threads = Vec::new();
    for (i, (mine, udp)) in per_worker.into_iter().zip(udp).enumerate() {
        let handler = handler.clone();
        let shutdown = shutdown.clone();
        let settings = settings.clone();
        let t = std::thread::Builder::new()
            .name(format!("edge-worker-{i}"))
            .spawn(move || -> anyhow::Result<()> {
                crate::sched::serving_thread();
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                rt.block_on(async move {
                    let h3 = match udp {
                        None => None,
                        Some((sock, shared, front, h3_settings)) => {
                            // Inside this runtime: the endpoint's driver is spawned on it.
                            let ep = shared
                                .endpoint(sock)
                                .context("HTTP/3 endpoint on a serving thread")?;
                            Some(super::quic::run(
                                ep,
                                shared,
                                handler.clone(),
                                front,
                                h3_settings,
                                shutdown.clone(),
                                drain,
                            ))
                        }
                    };
                    let mut serving = Vec::new();
                    for (l, front, tls) in mine {
                        let listener = TcpListener::from_std(l)?;
                        let mut shutdown = shutdown.clone();
                        let stop = async move {
                            let _ = shutdown.wait_for(|s| *s).await;
                        };
                        serving.push(serve(
                            handler.clone(),
                            listener,
                            front,
                            tls,
                            settings.clone(),
                            stop,
                            drain,
                        ));
                    }
                    let h3 = async {
                        if let Some(h3) = h3 {
                            h3.await;
                        }
                    };
                    tokio::join!(futures_util::future::join_all(serving), h3);
                    Ok(())
                })
            })?;
        threads.push(t);
    }
    tokio::task::spawn_blocking(move || {
        for t in threads {
            match t.join() {
                Ok(r) => r?,
                Err(_) => anyhow::bail!("a worker thread panicked"),
            }
        }
        Ok(())
    })
    .await?
}

/// How many serving workers to run: one per core.
pub fn worker_count() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}
