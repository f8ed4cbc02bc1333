//! The command-line operations behind `edge`'s subcommands.

use std::path::Path;

use anyhow::Context;
use origin_client::publish::{self, PublishOptions};
use origin_client::records::{HostRecord, normalize_host, utc_display, validate_site};
use origin_client::{Access, open_store};

pub async fn publish(
    dir: &Path,
    site: &str,
    store: &str,
    include_skipped: bool,
    progress: bool,
) -> anyhow::Result<()> {
    validate_site(site)?;
    let store = open_store(store, Access::Write)?;
    let opts = PublishOptions {
        include_skipped,
        progress,
        ..PublishOptions::default()
    };
    let report = publish::publish(store.as_ref(), dir, site, &opts)
        .await
        .with_context(|| format!("publishing {} to site {site}", dir.display()))?;
    let d = &report.deploy;
    println!("deploy {}", d.id);
    println!(
        "site {site}: {} files, {} bytes, {} new objects ({} blobs, {} trees) of {}, root {}",
        d.files,
        d.bytes,
        report.new_objects(),
        report.new_blobs,
        report.new_trees,
        report.objects,
        d.root
    );
    Ok(())
}

pub async fn rollback(site: &str, store: &str, to: &str) -> anyhow::Result<()> {
    let store = open_store(store, Access::Write)?;
    let p = publish::rollback(store.as_ref(), site, to)
        .await
        .with_context(|| format!("rolling back site {site} to {to}"))?;
    println!(
        "site {site}: current deploy is now {} (seq {})",
        p.deploy, p.seq
    );
    Ok(())
}

pub async fn deploys(site: &str, store: &str) -> anyhow::Result<()> {
    validate_site(site)?;
    let store = open_store(store, Access::Read)?;
    let list = store.list_deploys(site).await?;
    let current = store.get_current(site).await?;
    if list.is_empty() {
        println!("site {site} has no deploys");
        return Ok(());
    }
    println!(
        "{:<2} {:<24} {:<23} {:>8} {:>14}",
        "", "DEPLOY", "CREATED", "FILES", "BYTES"
    );
    for d in &list {
        let mark = if current.as_ref().is_some_and(|c| c.deploy == d.id) {
            "*"
        } else {
            ""
        };
        println!(
            "{mark:<2} {:<24} {:<23} {:>8} {:>14}",
            d.id,
            utc_display(d.created),
            d.files,
            d.bytes
        );
    }
    Ok(())
}

pub async fn hosts_add(host: &str, site: &str, store: &str) -> anyhow::Result<()> {
    validate_site(site)?;
    let host = normalize_host(host)?;
    let store = open_store(store, Access::Write)?;
    store
        .put_host(&HostRecord {
            host: host.clone(),
            site: site.to_owned(),
        })
        .await?;
    println!("host {host} -> site {site}");
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// A TOML config file (see config/edge.toml); flags override it.
    #[arg(long)]
    pub config: Option<std::path::PathBuf>,
    /// Address to listen on for HTTP/1.1 and cleartext HTTP/2 [default: 127.0.0.1:8080].
    #[arg(long)]
    pub listen: Option<String>,
    /// The store: a path, file:// or http(s):// URL [default: ./store].
    #[arg(long)]
    pub store: Option<String>,
    /// The disk cache folder [default: ./edge-cache]; "" turns the disk tier off.
    #[arg(long)]
    pub cache_dir: Option<String>,
    /// The site for requests whose Host names no site.
    #[arg(long)]
    pub default_site: Option<String>,
    /// The admin listener's address [default: 127.0.0.1:9901]; "" turns it off.
    #[arg(long)]
    pub admin_listen: Option<String>,
    /// Log format on standard error: pretty or json [default: pretty].
    #[arg(long, value_parser = ["pretty", "json"])]
    pub log_format: Option<String>,
    /// Address for HTTPS (HTTP/2 and HTTP/1.1 over TLS), and HTTP/3 on the same port over
    /// UDP; "" turns TLS off [default: off].
    #[arg(long)]
    pub tls_listen: Option<String>,
    /// The certificate folder: HOST.crt + HOST.key per host name (SNI), default.crt +
    /// default.key for any other name (PEM).
    #[arg(long)]
    pub cert_dir: Option<String>,
}

/// Changes the log filter of a running node (SIGHUP reload).
pub type LogReload = Box<dyn Fn(&str) -> anyhow::Result<()> + Send + Sync>;

/// Starts logging to standard error; `RUST_LOG` overrides the default level (info).
pub fn init_logging() {
    let _ = init_logging_with(edge_config::LogFormat::Pretty, "info");
}

/// Starts logging in `format` at `level` (`RUST_LOG` overrides it). Returns a handle that
/// changes the level later.
pub fn init_logging_with(format: edge_config::LogFormat, level: &str) -> Option<LogReload> {
    use std::io::IsTerminal;
    use tracing_subscriber::prelude::*;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    let installed = match format {
        edge_config::LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::io::stderr),
            )
            .try_init(),
        edge_config::LogFormat::Pretty => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(std::io::stderr().is_terminal())
                    .with_writer(std::io::stderr),
            )
            .try_init(),
    };
    installed.ok()?;
    Some(Box::new(move |level: &str| {
        let f = tracing_subscriber::EnvFilter::try_new(level)
            .map_err(|e| anyhow::anyhow!("log.level {level:?}: {e}"))?;
        handle.reload(f).map_err(|e| anyhow::anyhow!("{e}"))
    }))
}

/// `edge check-config FILE`: validates a config file; the error names the key and line.
pub fn check_config(path: &Path) -> anyhow::Result<()> {
    let cfg = edge_config::Config::load(path)?;
    if let Some(addr) = cfg.admin_listen
        && !addr.ip().is_loopback()
        && cfg.admin_token.is_none()
        && std::env::var("EDGE_ADMIN_TOKEN").map_or(true, |t| t.is_empty())
    {
        anyhow::bail!(
            "{}: `admin.listen`: {addr} is not a loopback address, so `admin.token` (or EDGE_ADMIN_TOKEN) is required",
            path.display()
        );
    }
    println!("{}: ok", path.display());
    Ok(())
}

/// The configuration `edge serve` runs with: the file (if any), then the flags.
pub fn serve_config(args: &ServeArgs) -> anyhow::Result<edge_config::Config> {
    let (mut file, text, name) = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading config file {}", path.display()))?;
            let name = path.display().to_string();
            let parsed: edge_config::FileConfig = toml::from_str(&text).map_err(|e| {
                anyhow::anyhow!(
                    edge_config::Config::parse(&text, Some(&name))
                        .err()
                        .map_or_else(|| e.to_string(), |e| e.to_string())
                )
            })?;
            (parsed, Some(text), Some(name))
        }
        None => (edge_config::FileConfig::default(), None, None),
    };
    if let Some(v) = &args.listen {
        file.server.listen = Some(v.clone());
    }
    if let Some(v) = &args.store {
        file.store.location = Some(v.clone());
    }
    if let Some(v) = &args.cache_dir {
        file.cache.dir = Some(v.clone());
    }
    if let Some(v) = &args.default_site {
        file.server.default_site = Some(v.clone());
    }
    if let Some(v) = &args.admin_listen {
        file.admin.listen = Some(v.clone());
    }
    if let Some(v) = &args.log_format {
        file.log.format = Some(v.clone());
    }
    if let Some(v) = &args.tls_listen {
        file.tls.listen = Some(v.clone());
    }
    if let Some(v) = &args.cert_dir {
        file.tls.cert_dir = Some(v.clone());
    }
    Ok(edge_config::Config::from_file(
        &file,
        text.as_deref(),
        name.as_deref(),
    )?)
}

pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let cfg = serve_config(&args)?;
    let reload_log = init_logging_with(cfg.log_format, &cfg.log_level);
    let admin_token = std::env::var("EDGE_ADMIN_TOKEN")
        .ok()
        .filter(|t| !t.is_empty())
        .or_else(|| cfg.admin_token.clone());
    if let Some(addr) = cfg.admin_listen
        && !addr.ip().is_loopback()
        && admin_token.is_none()
    {
        anyhow::bail!(
            "`admin.listen`: refusing to serve the admin endpoints on {addr}, not a loopback address, without a token (set admin.token or EDGE_ADMIN_TOKEN)"
        );
    }
    let mut node = crate::node::build(&cfg).await?;
    if cfg.access_log != edge_config::AccessLog::Off {
        let target = match &cfg.access_log {
            edge_config::AccessLog::File(p) => crate::accesslog::Target::File(p.clone()),
            _ => crate::accesslog::Target::Stdout,
        };
        let handler = std::sync::Arc::get_mut(&mut node.handler)
            .ok_or_else(|| anyhow::anyhow!("handler already shared"))?;
        let log = crate::accesslog::AccessLog::start(
            target,
            cfg.access_log_queue,
            handler.metrics().clone(),
        )
        .context("opening the access log")?;
        handler.set_access_log(log);
    }
    let admin = crate::admin::Admin::new(
        node.handler.clone(),
        node.origin.clone(),
        admin_token.as_deref(),
    );
    let mut admin_banner = None;
    if let Some(addr) = cfg.admin_listen {
        let listener = crate::node::bind(addr)
            .await
            .context("`admin.listen` (--admin-listen; \"\" turns the admin listener off)")?;
        admin_banner = Some(format!("edge admin on http://{}/", listener.local_addr()?));
        let admin = admin.clone();
        tokio::spawn(crate::admin::run(admin, listener, std::future::pending()));
    }
    // Installed now, before the banner is printed: a SIGHUP that came before its handler
    // would kill the process.
    #[cfg(unix)]
    let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    #[cfg(not(unix))]
    let hup = None::<()>;
    tokio::spawn(reload_on_sighup(
        args,
        cfg.clone(),
        reload_log,
        node.handler.clone(),
        hup,
    ));
    tracing::info!(store = %cfg.store, "serving");
    serve_handler(
        node.handler,
        &cfg,
        std::time::Duration::from_secs(10),
        "edge listening on",
        Some((admin, admin_banner)),
    )
    .await
}

/// SIGHUP: re-reads the configuration. A file that fails validation is refused with the
/// error logged, and the running configuration is kept. The log level takes effect at once;
/// settings that need new listeners or caches are reported as needing a restart.
async fn reload_on_sighup(
    args: ServeArgs,
    mut current: edge_config::Config,
    reload_log: Option<LogReload>,
    handler: std::sync::Arc<crate::http::Handler>,
    #[cfg(unix)] hup: Option<tokio::signal::unix::Signal>,
    #[cfg(not(unix))] hup: Option<()>,
) {
    #[cfg(unix)]
    {
        let Some(mut hup) = hup else {
            return;
        };
        while hup.recv().await.is_some() {
            let next = match serve_config(&args) {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "config reload refused; keeping the running configuration");
                    continue;
                }
            };
            if next.log_level != current.log_level
                && let Some(reload) = &reload_log
            {
                match reload(&next.log_level) {
                    Ok(()) => tracing::debug!(level = %next.log_level, "log level changed"),
                    Err(e) => tracing::error!(error = %e, "log level not changed"),
                }
            }
            match crate::node::http_config(&next) {
                Ok(h) => handler.set_http_config(h),
                Err(e) => tracing::error!(error = %e, "cache-control not changed"),
            }
            crate::sched::set_yield_after(next.yield_after);
            handler.pointers().tune(
                next.refresh_interval,
                next.negative_ttl,
                crate::node::stale_after(&next),
            );
            handler
                .tiers()
                .set_site_limits(next.origin.site_concurrency, next.origin.site_queue);
            let mut restart = Vec::new();
            if next.listen != current.listen {
                restart.push("server.listen");
            }
            if next.store != current.store {
                restart.push("store.location");
            }
            if next.cache_dir != current.cache_dir || next.disk_size != current.disk_size {
                restart.push("cache.dir/disk_size");
            }
            let mut origin_now = next.origin.clone();
            origin_now.site_concurrency = current.origin.site_concurrency;
            origin_now.site_queue = current.origin.site_queue;
            if origin_now != current.origin {
                restart.push("origin (except site_concurrency, site_queue)");
            }
            if next.memory_size != current.memory_size
                || next.memory_max_object != current.memory_max_object
                || next.tree_size != current.tree_size
            {
                restart.push("cache.memory_size/memory_max_object/tree_size");
            }
            if next.default_site != current.default_site {
                restart.push("server.default_site");
            }
            if next.admin_listen != current.admin_listen {
                restart.push("admin.listen");
            }
            // Certificates reload by themselves on SIGHUP; the listeners and folder do not.
            if next.tls != current.tls || next.http3 != current.http3 {
                restart.push("tls.*/http3.*");
            }
            tracing::info!(needs_restart = ?restart, "configuration reloaded");
            current = next;
        }
    }
    #[cfg(not(unix))]
    let _ = (args, current, reload_log, handler, hup);
}

/// Binds the configured address, prints the URL, serves until SIGINT/SIGTERM, then drains.
async fn serve_handler(
    handler: std::sync::Arc<crate::http::Handler>,
    cfg: &edge_config::Config,
    drain: std::time::Duration,
    banner: &str,
    admin: Option<(std::sync::Arc<crate::admin::Admin>, Option<String>)>,
) -> anyhow::Result<()> {
    // Signal handlers before the banner: whoever reads it may signal at once.
    let stop = crate::node::shutdown_signal_installed();
    let listeners = crate::node::bind_reuseport(cfg.listen, crate::node::worker_count())?;
    let addr = listeners[0].local_addr()?;
    // Scripts and tests read this first line for the address.
    println!("{banner} http://{addr}/");
    let secure = crate::listen::Secure::bind(cfg, listeners.len()).await?;
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
    crate::listen::run(handler, cfg, listeners, secure, rx, drain).await
}

/// `edge preview DIR`; with `tls_listen`, HTTPS and HTTP/3 there too, with a certificate
/// generated for localhost (written to a temporary folder, removed on exit).
pub async fn preview(dir: &Path, listen: &str, tls_listen: Option<&str>) -> anyhow::Result<()> {
    init_logging();
    let mut file = edge_config::FileConfig::default();
    let cert_dir = match tls_listen {
        Some(addr) => {
            let certs = std::env::temp_dir().join(format!("edge-preview-{}", std::process::id()));
            let cert = crate::listen::tls::write_local_cert(&certs)
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
    let cfg = edge_config::Config::from_file(&file, None, None)?;
    let store = origin_client::store::MemoryStore::new();
    let handler =
        crate::node::build_handler(&cfg, std::sync::Arc::new(store.clone()), false).await?;
    crate::preview::rebuild(&store, handler.pointers(), dir)
        .await
        .with_context(|| format!("reading {}", dir.display()))?;
    let _watcher = crate::preview::spawn_watcher(store, handler.clone(), dir.to_owned())?;
    let banner = format!("previewing {} at", dir.display());
    let served = serve_handler(
        handler,
        &cfg,
        std::time::Duration::from_secs(2),
        &banner,
        None,
    )
    .await;
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
