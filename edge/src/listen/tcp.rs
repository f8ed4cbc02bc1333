//! TCP listeners: binding (`SO_REUSEPORT`, one socket per worker), the accept loop (hyper-util
//! auto: HTTP/1.1 + h2c; over TLS the protocol ALPN chose, and only it; HTTP/1 request-line
//! versions through [`VersionShim`]), and the serving threads (one single-threaded tokio
//! runtime per worker).
//!
//! Invariants: a connection stays on the thread that accepted it; every connection is
//! admitted by the node-wide [`Gate`] (cap, idle and send timeouts); accept errors back off
//! (10 ms doubling to 1 s) and are logged at a bounded rate.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use super::Front;
use super::conn::{Gate, Guarded, StreamExec};
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

/// The hyper builders: cleartext (HTTP/1.1 or h2c, by the first bytes), and one per ALPN
/// protocol over TLS.
struct Builders {
    auto: auto::Builder<StreamExec>,
    h1: auto::Builder<StreamExec>,
    h2: auto::Builder<StreamExec>,
}

impl Builders {
    fn new(s: &Settings, metrics: Arc<crate::metrics::Metrics>) -> Builders {
        let limits = s.gate.limits();
        // HTTP/2 streams run under their own send timeout (reset on their own).
        let exec = StreamExec::new(limits.send_timeout, metrics);
        let make = || {
            let mut b = auto::Builder::new(exec.clone());
            b.http1()
                .timer(TokioTimer::new())
                .header_read_timeout(s.header_read_timeout)
                // Bounds the request head (431 beyond) and the response bytes hyper queues.
                .max_buf_size(limits.max_header_bytes as usize)
                .keep_alive(true);
            b.http2()
                .timer(TokioTimer::new())
                .max_header_list_size(limits.max_header_bytes as u32)
                .max_concurrent_streams(256);
            b
        };
        Builders {
            auto: make(),
            h1: make().http1_only(),
            h2: make().http2_only(),
        }
    }

    /// The builder for a TLS connection that negotiated `alpn`: HTTP/2 only for `h2`,
    /// HTTP/1.1 only otherwise (RFC 9113 3.3, RFC 7301).
    fn for_alpn(&self, alpn: Option<&[u8]>) -> &auto::Builder<StreamExec> {
        match alpn {
            Some(b"h2") => &self.h2,
            _ => &self.h1,
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
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
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
            service_fn(move |req| {
                let (handler, front) = (handler.clone(), front.clone());
                let inflight = conn.begin();
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
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                let _token = token;
                let io = conn.io(stream);
                let result = match tls {
                    None => {
                        let io = VersionShim::new(io, max_line);
                        let c = builders.auto.serve_connection(TokioIo::new(io), svc);
                        tokio::pin!(c);
                        conn.watch(c, |c| c.graceful_shutdown(), stop).await
                    }
                    Some(tls) => {
                        let handshake =
                            tokio::time::timeout(tls.handshake_timeout, tls.acceptor.accept(io));
                        let stream = match handshake.await {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                if logs.allow(ClientLog::TlsHandshake) {
                                    tracing::info!(peer.addr = %peer, error = %e, "TLS handshake failed");
                                }
                                return;
                            }
                            Err(_) => {
                                if logs.allow(ClientLog::TlsHandshake) {
                                    tracing::info!(peer.addr = %peer, "TLS handshake timed out");
                                }
                                return;
                            }
                        };
                        let alpn = stream.get_ref().1.alpn_protocol();
                        let builder = builders.for_alpn(alpn);
                        if alpn == Some(b"h2") {
                            let c = builder.serve_connection(TokioIo::new(stream), svc);
                            tokio::pin!(c);
                            conn.watch(c, |c| c.graceful_shutdown(), stop).await
                        } else {
                            let io = VersionShim::new(stream, max_line);
                            let c = builder.serve_connection(TokioIo::new(io), svc);
                            tokio::pin!(c);
                            conn.watch(c, |c| c.graceful_shutdown(), stop).await
                        }
                    }
                };
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
            },
            span,
        ));
    }
    drop(listener);
    let _ = stop_tx.send(true);
    tokio::select! {
        () = live.drained() => {}
        () = tokio::time::sleep(drain) => {
            tracing::warn!("drain deadline passed with connections still open");
        }
    }
}

/// Connections of one listener still running (for the drain).
#[derive(Default)]
struct Live {
    n: std::sync::atomic::AtomicUsize,
    zero: tokio::sync::Notify,
}

struct LiveToken(Arc<Live>);

impl Live {
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
/// Several services (cleartext and HTTPS): worker `i` serves the `i`th socket of each.
pub async fn run_workers(
    handler: Arc<Handler>,
    services: Vec<TcpService>,
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
    let mut threads = Vec::new();
    for (i, mine) in per_worker.into_iter().enumerate() {
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
                    futures_util::future::join_all(serving).await;
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
