//! The node: builds every part from the configuration, owns their lifetimes, runs the
//! listener. The only module that knows every other one.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use edge_config::Config;
use http::HeaderValue;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use origin_client::resilience::{
    BreakerConfig, FaceConfig, ResilienceConfig, ResilientStore, RetryConfig,
};
use origin_client::store::HttpStoreOptions;
use origin_client::{Access, Store, open_store_with};
use tokio::net::TcpListener;

use crate::http::Routes;
use crate::http::{Handler, HttpConfig};
use crate::listen::Front;
use crate::listen::tls::TlsServing;
use crate::pointers::{Pointers, PointersConfig};
use crate::tiers::{DiskTier, TierConfig, Tiers};
use crate::trees::Trees;

/// The parts a running node holds, for the admin side and tests.
pub struct Node {
    pub handler: Arc<Handler>,
    /// The origin with its breakers and limits (None for preview's in-memory store).
    pub origin: Option<Arc<ResilientStore>>,
}

/// Maps the validated configuration onto the origin client's resilience settings.
pub fn resilience_config(o: &edge_config::Origin) -> ResilienceConfig {
    let face = |concurrency: usize| FaceConfig {
        breaker: BreakerConfig {
            consecutive_failures: o.breaker_failures,
            failure_rate: o.breaker_failure_rate,
            window: o.breaker_window,
            min_requests: 20,
            open_for: o.breaker_open,
            half_open_probes: o.breaker_probes,
        },
        retry: RetryConfig {
            max_attempts: o.retry_attempts,
            budget_ratio: o.retry_budget,
            ..RetryConfig::default()
        },
        first_byte_timeout: o.first_byte_timeout,
        total_base: o.total_timeout,
        min_rate: o.min_rate,
        concurrency,
        queue: o.queue,
    };
    ResilienceConfig {
        meta: face(o.concurrency.clamp(1, 32)),
        objects: face(o.concurrency),
    }
}

/// Builds the handler (pointers, trees, routes, tiers, HTTP policy) for a store and a configuration.
pub async fn build_handler(
    cfg: &Config,
    store: Arc<dyn Store>,
    with_disk: bool,
) -> anyhow::Result<Arc<Handler>> {
    crate::sched::set_yield_after(cfg.yield_after);
    let disk = match (&cfg.cache_dir, with_disk) {
        (Some(dir), true) => {
            let (dir, size) = (dir.clone(), cfg.disk_size);
            let shown = dir.display().to_string();
            let tier = tokio::task::spawn_blocking(move || DiskTier::open(&dir, size))
                .await?
                .with_context(|| format!("opening the disk cache at {shown}"))?;
            tracing::info!(
                dir = %shown,
                objects = tier.len(),
                bytes = tier.bytes(),
                capacity = tier.capacity(),
                "disk tier ready"
            );
            Some(Arc::new(tier))
        }
        _ => None,
    };
    let state_file = match (&cfg.cache_dir, with_disk) {
        (Some(dir), true) => Some(dir.join("pointers.json")),
        _ => None,
    };
    let trees = Trees::new(store.clone(), cfg.tree_size, disk.clone());
    // Resolved files: a quarter of the tree cache's bytes again.
    let routes = Routes::new(trees.clone(), cfg.tree_size / 4);
    let resolver = Pointers::new(
        store.clone(),
        trees,
        PointersConfig {
            refresh_interval: cfg.refresh_interval,
            negative_ttl: cfg.negative_ttl,
            default_site: cfg.default_site.clone(),
            max_pointers: 100_000,
            state_file,
            stale_after: stale_after(cfg),
        },
    );
    if resolver.load_state().await > 0 {
        // Confirm the saved pointers before serving when the origin answers quickly; when it
        // does not, start on them anyway (they are marked stale until confirmed).
        let confirm = resolver.refresh_all();
        if tokio::time::timeout(Duration::from_secs(2), confirm)
            .await
            .is_err()
        {
            tracing::warn!("origin slow at start; serving last-known-good pointers");
        }
    }
    resolver.spawn_refresher();
    resolver.spawn_saver();
    let tiers = Tiers::new(
        store,
        &TierConfig {
            memory_bytes: cfg.memory_size,
            memory_max_object: cfg.memory_max_object,
            site_concurrency: cfg.origin.site_concurrency,
            site_queue: cfg.origin.site_queue,
        },
        disk,
    );
    Ok(Arc::new(Handler::new(
        resolver,
        routes,
        tiers,
        http_config(cfg)?,
    )))
}

/// The HTTP policy of a configuration.
pub fn http_config(cfg: &Config) -> anyhow::Result<HttpConfig> {
    Ok(HttpConfig {
        cache_control_html: HeaderValue::from_str(&cfg.cache_control_html)?,
        cache_control_other: HeaderValue::from_str(&cfg.cache_control_other)?,
    })
}

/// When a pointer counts as stale: three refresh intervals, at least 10 s.
pub fn stale_after(cfg: &Config) -> Duration {
    (cfg.refresh_interval * 3).max(Duration::from_secs(10))
}

/// Opens the configured store behind breakers, timeouts, retries and limits, and builds the
/// handler. A local store that does not exist yet is accepted (reads fail until it appears),
/// so a node restarted during an outage serves what it has cached.
pub async fn build(cfg: &Config) -> anyhow::Result<Node> {
    let http = HttpStoreOptions {
        connect_timeout: cfg.origin.connect_timeout,
        header_timeout: cfg.origin.first_byte_timeout,
        body_timeout: cfg.origin.total_timeout + cfg.origin.first_byte_timeout,
        ..HttpStoreOptions::default()
    };
    let raw = open_store_with(&cfg.store, Access::Serve, http)
        .with_context(|| format!("opening store {}", cfg.store))?;
    let origin = Arc::new(ResilientStore::new(raw, resilience_config(&cfg.origin)));
    let handler = build_handler(cfg, origin.clone(), true).await?;
    Ok(Node {
        handler,
        origin: Some(origin),
    })
}

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
    serve_tcp(
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
pub async fn serve_tcp(
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
                        serving.push(serve_tcp(
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

/// Resolves on SIGINT or SIGTERM.
/// Installs the SIGINT/SIGTERM handlers now and returns the future that resolves on either.
/// Call it before announcing readiness: a signal that arrives before its handler is installed
/// gets the default action (the process dies without draining).
pub fn shutdown_signal_installed() -> impl Future<Output = ()> {
    #[cfg(unix)]
    let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    #[cfg(unix)]
    let int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()).ok();
    async move {
        #[cfg(unix)]
        {
            let term = async {
                match term {
                    Some(mut s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            let int = async {
                match int {
                    Some(mut s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                () = term => {}
                () = int => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
        tracing::info!("shutting down");
    }
}
