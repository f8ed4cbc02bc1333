//! TCP listeners: binding (`SO_REUSEPORT`, one socket per worker), the accept loop (hyper-util
//! auto: HTTP/1.1 + h2c, or a TLS handshake first), and the serving threads (one
//! single-threaded tokio runtime per worker).
//!
//! Invariant: a connection stays on the thread that accepted it.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use super::Front;
use super::tls::TlsServing;
use crate::http::Handler;

/// Serves HTTP/1.1 and cleartext HTTP/2 on `listener` until `shutdown` resolves, then stops
/// accepting and gives open connections up to `drain` to finish.
pub async fn run(
    handler: Arc<Handler>,
    listener: TcpListener,
    header_read_timeout: Duration,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) {
    let front = Arc::new(Front::default());
    serve(
        handler,
        listener,
        front,
        None,
        header_read_timeout,
        shutdown,
        drain,
    )
    .await
}

/// Like [`run`], with `front` around the handler (redirect, HSTS, Alt-Svc) and, with `tls`,
/// a TLS handshake (ALPN h2 or http/1.1) before HTTP on each connection.
pub async fn serve(
    handler: Arc<Handler>,
    listener: TcpListener,
    front: Arc<Front>,
    tls: Option<TlsServing>,
    header_read_timeout: Duration,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256);
    let builder = Arc::new(builder);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let front = front.clone();
        let svc = service_fn(move |req| {
            let handler = handler.clone();
            let front = front.clone();
            async move { Ok::<_, Infallible>(front.respond(&handler, req).await) }
        });
        if let Some(tls) = &tls {
            let (tls, builder, watcher) = (tls.clone(), builder.clone(), graceful.watcher());
            let span = tracing::debug_span!("conn", peer.addr = %peer, proto = "tls");
            tokio::spawn(tracing::Instrument::instrument(
                async move {
                    let stream = match tokio::time::timeout(
                        tls.handshake_timeout,
                        tls.acceptor.accept(stream),
                    )
                    .await
                    {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!("TLS handshake timed out");
                            return;
                        }
                    };
                    let conn = builder
                        .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                        .into_owned();
                    if let Err(e) = watcher.watch(conn).await {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                },
                span,
            ));
            continue;
        }
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), svc)
            .into_owned();
        let conn = graceful.watch(conn);
        // A debug-level span per connection: free unless debug logging is on.
        let span = tracing::debug_span!("conn", peer.addr = %peer, proto = "tcp");
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
            },
            span,
        ));
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(drain) => {
            tracing::warn!("drain deadline passed with connections still open");
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

/// Serves on one thread per listener, each with a single-threaded runtime: a connection
/// stays on the thread that accepted it, with no cross-thread wake-ups or work stealing on
/// the request path (the model nginx's workers use). Shared state (caches, pointers) is
/// behind `Arc`s; background work (pointer refresh) runs on the caller's runtime. Returns
/// when every worker has drained after `shutdown` fires.
pub async fn run_workers(
    handler: Arc<Handler>,
    listeners: Vec<std::net::TcpListener>,
    header_read_timeout: Duration,
    shutdown: tokio::sync::watch::Receiver<bool>,
    drain: Duration,
) -> anyhow::Result<()> {
    let service = TcpService {
        listeners,
        front: Front::default(),
        tls: None,
    };
    run_workers_with(handler, vec![service], header_read_timeout, shutdown, drain).await
}

/// One kind of TCP listener: a socket per worker (the same count for every service), what
/// it adds around the handler, and its TLS settings if it speaks TLS.
pub struct TcpService {
    pub listeners: Vec<std::net::TcpListener>,
    pub front: Front,
    pub tls: Option<TlsServing>,
}

/// [`run_workers`] for several services (cleartext and HTTPS): worker `i` serves the `i`th
/// socket of each.
pub async fn run_workers_with(
    handler: Arc<Handler>,
    services: Vec<TcpService>,
    header_read_timeout: Duration,
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
                            header_read_timeout,
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
