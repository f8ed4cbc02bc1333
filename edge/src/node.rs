//! The node: the one composition root. It builds every part from the configuration (origin,
//! pointers, trees, tiers, handler, access log, admin, the NATS subscription of
//! [`crate::notify`]), owns their lifetimes, and wires a running node: the admin listener,
//! SIGHUP reloads, the banners, and the listeners of [`crate::listen`].
//! The only module that knows every other one; nothing but `cli` (and unit-test fixtures)
//! imports it.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use edge_config::{Config, ReloadPlan};
use http::HeaderValue;
use origin_client::resilience::{
    BreakerConfig, FaceConfig, ResilienceConfig, ResilientStore, RetryConfig,
};
use origin_client::store::{HttpStoreOptions, Parent, Parents, S3Options, StoreOptions};
use origin_client::{Access, Store, open_store_opts};

use crate::admin::Admin;
use crate::http::{Handler, HttpConfig, Routes};
use crate::listen::{self, tcp};
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
    build_handler_on(cfg, Arc::new(Parents::none(store)), with_disk).await
}

/// [`build_handler`] reading objects from `objects`: its parents, then its origin (which
/// alone answers pointers and records).
pub async fn build_handler_on(
    cfg: &Config,
    objects: Arc<Parents>,
    with_disk: bool,
) -> anyhow::Result<Arc<Handler>> {
    let store: Arc<dyn Store> = objects.clone();
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
    let pointers = Pointers::new(
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
    if pointers.load_state().await > 0 {
        // Confirm the saved pointers before serving when the origin answers quickly; when it
        // does not, start on them anyway (they are marked stale until confirmed).
        let confirm = pointers.refresh_all();
        if tokio::time::timeout(Duration::from_secs(2), confirm)
            .await
            .is_err()
        {
            tracing::warn!("origin slow at start; serving last-known-good pointers");
        }
    }
    pointers.spawn_refresher();
    pointers.spawn_saver();
    let tiers = Tiers::with_parents(
        objects,
        &TierConfig {
            memory_bytes: cfg.memory_size,
            memory_max_object: cfg.memory_max_object,
            site_concurrency: cfg.origin.site_concurrency,
            site_queue: cfg.origin.site_queue,
        },
        disk,
    );
    tiers.set_max_buffered(cfg.limits.max_buffered);
    crate::tiers::scrub::spawn(&tiers, cfg.disk_scrub_rate);
    Ok(Arc::new(Handler::new(
        pointers,
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
    let s3 = S3Options {
        endpoint: cfg.store_s3.endpoint.clone(),
        region: cfg.store_s3.region.clone(),
        allow_http: cfg.store_s3.allow_http,
        path_style: cfg.store_s3.path_style,
        connect_timeout: cfg.origin.connect_timeout,
        read_timeout: cfg.origin.total_timeout + cfg.origin.first_byte_timeout,
        // The origin's own retries (budgeted, with backoff) wrap the store.
        retries: 0,
        ..S3Options::default()
    };
    let raw = open_store_opts(
        &cfg.store,
        Access::Serve,
        &StoreOptions {
            http: http.clone(),
            s3,
        },
    )
    .with_context(|| format!("opening store {}", cfg.store))?;
    let resilience = resilience_config(&cfg.origin);
    let origin = Arc::new(ResilientStore::new(raw, resilience.clone()));
    let token = tiers_token(cfg)?;
    let parents = cfg
        .tiers
        .parents
        .iter()
        .map(|url| {
            Parent::new(
                url,
                token.as_deref(),
                resilience.objects.clone(),
                http.clone(),
            )
            .with_context(|| format!("`tiers.parents`: {url}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    if !parents.is_empty() {
        tracing::info!(parents = ?cfg.tiers.parents, "reading objects from parents before the origin");
    }
    let objects = Arc::new(Parents::new(origin.clone(), parents));
    let mut handler = build_handler_on(cfg, objects, true).await?;
    if cfg.tiers.serve_children {
        Arc::get_mut(&mut handler)
            .ok_or_else(|| anyhow::anyhow!("handler already shared"))?
            .serve_children(crate::http::Children::new(token.as_deref()));
    }
    Ok(Node {
        handler,
        origin: Some(origin),
    })
}

/// The tiers token: `EDGE_TIERS_TOKEN` (empty means unset; shorter than `tiers.token` may
/// be, or not UTF-8, stops the start), else `tiers.token`.
pub fn tiers_token(cfg: &Config) -> anyhow::Result<Option<String>> {
    const VAR: &str = "EDGE_TIERS_TOKEN";
    let token = match std::env::var(VAR) {
        Ok(t) if t.is_empty() => return Ok(cfg.tiers.token.clone()),
        Ok(t) => t,
        Err(std::env::VarError::NotPresent) => return Ok(cfg.tiers.token.clone()),
        Err(std::env::VarError::NotUnicode(_)) => anyhow::bail!("`{VAR}`: is not valid UTF-8"),
    };
    edge_config::check_tiers_token(&token).map_err(|e| anyhow::anyhow!("`{VAR}`: {e}"))?;
    Ok(Some(token))
}

/// Refuses to serve children on a listener other machines can reach without a token.
pub fn check_children_exposure(cfg: &Config) -> anyhow::Result<()> {
    if let Some(addr) = cfg.children_listener_exposed()
        && tiers_token(cfg)?.is_none()
    {
        anyhow::bail!(
            "`tiers.serve_children`: {addr} is not a loopback address, so `tiers.token` (or EDGE_TIERS_TOKEN) is required to serve objects to children there"
        );
    }
    Ok(())
}

/// `EDGE_ADMIN_TOKEN`, which overrides `admin.token`. Empty means unset; shorter than the
/// minimum `admin.token` has, or not UTF-8, stops the start.
pub fn env_admin_token() -> anyhow::Result<Option<String>> {
    const VAR: &str = "EDGE_ADMIN_TOKEN";
    let token = match std::env::var(VAR) {
        Ok(t) => t,
        Err(std::env::VarError::NotPresent) => return Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => anyhow::bail!("`{VAR}`: is not valid UTF-8"),
    };
    if token.is_empty() {
        return Ok(None);
    }
    if token.len() < edge_config::ADMIN_TOKEN_MIN_LEN {
        anyhow::bail!(
            "`{VAR}`: must be at least {} characters",
            edge_config::ADMIN_TOKEN_MIN_LEN
        );
    }
    Ok(Some(token))
}

/// Changes the log filter of a running node (SIGHUP reload).
pub type LogReload = Box<dyn Fn(&str) -> anyhow::Result<()> + Send + Sync>;

/// Reads the configuration again (the file, then the flags), for SIGHUP.
pub type Reread = Box<dyn Fn() -> anyhow::Result<Config> + Send + Sync>;

/// `edge serve`: builds the node from `cfg`, starts the access log and the admin listener,
/// reloads on SIGHUP (`reread` gives the new configuration, `reload_log` changes the log
/// level), prints the banners and serves until SIGINT/SIGTERM, then drains.
pub async fn serve(
    cfg: Config,
    reload_log: Option<LogReload>,
    reread: Reread,
) -> anyhow::Result<()> {
    let admin_token = env_admin_token()?.or_else(|| cfg.admin_token.clone());
    if let Some(addr) = cfg.admin_listen
        && !addr.ip().is_loopback()
        && admin_token.is_none()
    {
        anyhow::bail!(
            "`admin.listen`: refusing to serve the admin endpoints on {addr}, not a loopback address, without a token (set admin.token or EDGE_ADMIN_TOKEN)"
        );
    }
    check_children_exposure(&cfg)?;
    let mut node = build(&cfg).await?;
    if cfg.access_log != edge_config::AccessLog::Off {
        let target = match &cfg.access_log {
            edge_config::AccessLog::File(p) => crate::accesslog::Target::File(p.clone()),
            _ => crate::accesslog::Target::Stdout,
        };
        let handler = Arc::get_mut(&mut node.handler)
            .ok_or_else(|| anyhow::anyhow!("handler already shared"))?;
        let log = crate::accesslog::AccessLog::start(
            target,
            cfg.access_log_queue,
            handler.metrics().clone(),
        )
        .context("opening the access log")?;
        handler.set_access_log(log);
    }
    // Pushed pointer changes: subscribed before serving; never waits for the NATS server
    // (until it answers the node polls at the fallback interval).
    let notifier = match &cfg.notify {
        Some(n) => Some(
            crate::notify::Notifier::start(
                crate::notify::NotifyConfig {
                    url: n.nats.clone(),
                    fallback_refresh_interval: n.fallback_refresh_interval,
                },
                node.handler.pointers().clone(),
            )
            .await
            .context("`notify.nats`")?,
        ),
        None => None,
    };
    // Bound before the admin is built: it checks `Host` and `Origin` against this address.
    let admin_listener = match cfg.admin_listen {
        Some(addr) => Some(
            tcp::bind(addr)
                .await
                .context("`admin.listen` (--admin-listen; \"\" turns the admin listener off)")?,
        ),
        None => None,
    };
    let admin_addr = admin_listener
        .as_ref()
        .map(tokio::net::TcpListener::local_addr)
        .transpose()?;
    let admin = Admin::new(
        node.handler.clone(),
        node.origin.clone(),
        admin_token.as_deref(),
        admin_addr,
    );
    if let Some(n) = notifier {
        admin.set_notify(n);
    }
    let mut admin_banner = None;
    if let (Some(listener), Some(addr)) = (admin_listener, admin_addr) {
        admin_banner = Some(format!("edge admin on http://{addr}/"));
        // One sample a second for the status page and `edge top`, while the listener runs.
        tokio::spawn(admin.clone().sample_every(Duration::from_secs(1)));
        let admin = admin.clone();
        let handle = move |req| {
            let admin = admin.clone();
            async move { admin.handle(req).await }
        };
        tokio::spawn(listen::plain::serve(
            listener,
            handle,
            Duration::from_secs(10),
            std::future::pending(),
        ));
    }
    // Memory freed when load drops goes back to the OS (glibc's malloc keeps it otherwise).
    tokio::spawn(crate::memory::release_after_drops(
        node.handler.metrics().clone(),
        Duration::from_secs(1),
    ));
    // Installed now, before the banner is printed: a SIGHUP that came before its handler
    // would kill the process.
    #[cfg(unix)]
    let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    #[cfg(not(unix))]
    let hup = None::<()>;
    tokio::spawn(reload_on_sighup(
        reread,
        cfg.clone(),
        reload_log,
        node.handler.clone(),
        hup,
    ));
    tracing::info!(store = %cfg.store, "serving");
    serve_handler(
        node.handler,
        &cfg,
        Duration::from_secs(10),
        "edge listening on",
        Some((admin, admin_banner)),
    )
    .await
}

/// SIGHUP: re-reads the configuration. A file that fails validation is refused with the
/// error logged, and the running configuration is kept. What can change in place does at
/// once (see [`ReloadPlan`]); settings that need new listeners or caches are reported as
/// needing a restart.
async fn reload_on_sighup(
    reread: Reread,
    mut current: Config,
    reload_log: Option<LogReload>,
    handler: Arc<Handler>,
    #[cfg(unix)] hup: Option<tokio::signal::unix::Signal>,
    #[cfg(not(unix))] hup: Option<()>,
) {
    #[cfg(unix)]
    {
        let Some(mut hup) = hup else {
            return;
        };
        while hup.recv().await.is_some() {
            let next = match reread() {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "config reload refused; keeping the running configuration");
                    continue;
                }
            };
            let plan = current.reload_plan(&next);
            apply_reload(&plan, &next, reload_log.as_ref(), &handler);
            tracing::info!(needs_restart = ?plan.needs_restart, "configuration reloaded");
            current = next;
        }
    }
    #[cfg(not(unix))]
    let _ = (reread, current, reload_log, handler, hup);
}

/// Applies the settings a running node can change: the log level (when it changed),
/// cache-control, `yield_after`, the pointer timings and the per-site origin limits.
fn apply_reload(
    plan: &ReloadPlan,
    next: &Config,
    reload_log: Option<&LogReload>,
    handler: &Handler,
) {
    if plan.log_level
        && let Some(reload) = reload_log
    {
        match reload(&next.log_level) {
            Ok(()) => tracing::debug!(level = %next.log_level, "log level changed"),
            Err(e) => tracing::error!(error = %e, "log level not changed"),
        }
    }
    match http_config(next) {
        Ok(h) => handler.set_http_config(h),
        Err(e) => tracing::error!(error = %e, "cache-control not changed"),
    }
    crate::sched::set_yield_after(next.yield_after);
    handler
        .pointers()
        .tune(next.refresh_interval, next.negative_ttl, stale_after(next));
    handler
        .tiers()
        .set_site_limits(next.origin.site_concurrency, next.origin.site_queue);
}

/// Binds the configured address, prints the URL, serves until SIGINT/SIGTERM, then drains.
async fn serve_handler(
    handler: Arc<Handler>,
    cfg: &Config,
    drain: Duration,
    banner: &str,
    admin: Option<(Arc<Admin>, Option<String>)>,
) -> anyhow::Result<()> {
    // Signal handlers before the banner: whoever reads it may signal at once.
    let stop = listen::shutdown_signal_installed();
    let listeners = tcp::bind_reuseport(cfg.listen, tcp::worker_count())?;
    let addr = listeners[0].local_addr()?;
    // Scripts and tests read this first line for the address.
    println!("{banner} http://{addr}/");
    let secure = listen::Secure::bind(cfg, listeners.len(), handler.metrics().ocsp.clone()).await?;
    if let Some(s) = &secure {
        let h3 = if s.http3() { ", HTTP/3 on UDP" } else { "" };
        println!("{banner} https://{}/ (TLS{h3})", s.addr);
    }
    if let Some((admin, admin_banner)) = &admin {
        // Ready before the banner: whoever reads it may ask /readyz at once.
        admin.set_ready(true);
        if let Some(b) = admin_banner {
            println!("{b}");
        }
    }
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        stop.await;
        let _ = tx.send(true);
    });
    listen::run(handler, cfg, listeners, secure, rx, drain).await
}

/// `edge preview DIR`: `dir` published into an in-memory store, rebuilt when files change,
/// served on `listen`; with `tls_listen`, HTTPS and HTTP/3 there too, with a certificate
/// generated for localhost (written to a temporary folder, removed on exit).
pub async fn preview(dir: &Path, listen: &str, tls_listen: Option<&str>) -> anyhow::Result<()> {
    let mut file = edge_config::FileConfig::default();
    let cert_dir = match tls_listen {
        Some(addr) => {
            let certs = std::env::temp_dir().join(format!("edge-preview-{}", std::process::id()));
            let cert = listen::tls::write_local_cert(&certs)
                .with_context(|| format!("writing a local certificate to {}", certs.display()))?;
            // On stderr: scripts read the first line of stdout for the address.
            eprintln!(
                "certificate for localhost: {} (e.g. curl --cacert {} https://localhost:PORT/)",
                cert.display(),
                cert.display()
            );
            file.tls.listen = Some(addr.to_owned());
            file.tls.cert_dir = Some(certs.display().to_string());
            file.tls.watch = Some(false);
            Some(RemoveOnDrop(certs))
        }
        None => None,
    };
    file.server.listen = Some(listen.to_owned());
    file.server.default_site = Some(crate::preview::SITE.to_owned());
    file.cache.dir = Some(String::new());
    file.pointers.refresh_interval = Some("1h".into());
    file.http.cache_control_other = Some("no-cache".into());
    let cfg = Config::from_file(&file, None, None)?;
    let store = origin_client::store::MemoryStore::new();
    let handler = build_handler(&cfg, Arc::new(store.clone()), false).await?;
    crate::preview::rebuild(&store, handler.pointers(), dir)
        .await
        .with_context(|| format!("reading {}", dir.display()))?;
    let _watcher = crate::preview::spawn_watcher(store, handler.clone(), dir.to_owned())?;
    let banner = format!("previewing {} at", dir.display());
    let served = serve_handler(handler, &cfg, Duration::from_secs(2), &banner, None).await;
    drop(cert_dir);
    served
}

/// Removes a folder (best effort) when dropped.
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
