//! The command-line operations behind `edge`'s subcommands: publish, rollback, deploys,
//! hosts add, gc, fsck, check-config, the configuration from flags and logging. Serving and preview are
//! wired by [`crate::node`].

use std::path::Path;

use anyhow::Context;
use origin_client::gc::{self, GcOptions, KeepRule};
use origin_client::publish::{self, PublishOptions};
use origin_client::records::{HostRecord, normalize_host, utc_display, validate_site};
use origin_client::store::CountingStore;
use origin_client::{Access, Store, open_store};

use crate::notify::Hint;

/// How `edge publish` runs.
#[derive(Debug, Clone, Copy)]
pub struct PublishArgs<'a> {
    pub include_skipped: bool,
    pub compress: bool,
    pub progress: bool,
    /// `--notify nats://HOST:PORT`: a hint once the pointer moved.
    pub notify: Option<&'a str>,
}

pub async fn publish(
    dir: &Path,
    site: &str,
    store: &str,
    args: &PublishArgs<'_>,
) -> anyhow::Result<()> {
    validate_site(site)?;
    let notify = notify_url(args.notify)?;
    let compress = args.compress;
    let store = CountingStore::new(open_store(store, Access::Write)?);
    let opts = PublishOptions {
        include_skipped: args.include_skipped,
        progress: args.progress,
        compress: compress.then_some(origin_client::compress::Levels::PUBLISH),
        ..PublishOptions::default()
    };
    let started = std::time::Instant::now();
    let report = publish::publish(&store, dir, site, &opts)
        .await
        .with_context(|| format!("publishing {} to site {site}", dir.display()))?;
    let d = &report.deploy;
    println!("deploy {}", d.id);
    println!(
        "site {site}: {} files, {} bytes, {} new objects ({} blobs, {} trees, {} variants, {} index) of {}, root {}",
        d.files,
        d.bytes,
        report.new_objects(),
        report.new_blobs,
        report.new_trees,
        report.new_variants,
        report.new_index,
        report.objects,
        d.root
    );
    if compress {
        println!(
            "compressed {} files ({} unchanged since the previous deploy); {} unchanged folders reused",
            report.compressed, report.reused_variants, report.reused_folders
        );
    }
    if report.repaired > 0 {
        println!(
            "{} objects removed by a concurrent gc were put back",
            report.repaired
        );
    }
    let http = store
        .requests()
        .map(|n| format!(", {n} HTTP requests"))
        .unwrap_or_default();
    println!(
        "store operations: {}{http}; {:.2}s",
        store.ops(),
        started.elapsed().as_secs_f64()
    );
    if let Some(url) = notify {
        let seq = report.previous_seq.map_or(1, |s| s + 1);
        notify_moved(&url, &Hint::moved(site, &d.id, seq, "publish")).await;
    }
    Ok(())
}

/// `--notify`: checked before anything is written, so a typo does not show up only after
/// the pointer moved.
fn notify_url(flag: Option<&str>) -> anyhow::Result<Option<String>> {
    flag.map(|u| edge_config::parse_nats_url(u).map_err(|e| anyhow::anyhow!("--notify: {e}")))
        .transpose()
}

/// Publishes the hint for a pointer that moved. A failure is a warning: the pointer moved
/// already, and nodes see the change at their next poll.
async fn notify_moved(url: &str, hint: &Hint) {
    match crate::notify::announce(url, hint).await {
        Ok(()) => println!("notified {url} on {}", crate::notify::subject(&hint.site)),
        Err(e) => eprintln!(
            "warning: the pointer moved, but notifying {url} failed: {}; nodes will see the change when they next poll",
            crate::error::chain(&e)
        ),
    }
}

/// `edge gc`: deletes the objects no kept deploy reaches; prints counts and bytes.
pub async fn gc(
    store: &str,
    keep: usize,
    grace: &str,
    dry_run: bool,
    progress: bool,
) -> anyhow::Result<()> {
    let grace = edge_config::parse_duration(grace).map_err(|e| anyhow::anyhow!("--grace: {e}"))?;
    let store = open_store(store, Access::Write)?;
    let opts = GcOptions {
        rule: KeepRule { keep, grace },
        dry_run,
        concurrency: 32,
        progress,
    };
    let r = gc::collect(store.as_ref(), &opts)
        .await
        .with_context(|| format!("collecting garbage in {}", store.location()))?;
    let verb = if dry_run { "would delete" } else { "deleted" };
    println!(
        "{} sites, {} kept deploys; {} objects: {} reachable, {} unreachable but within the grace period, {verb} {} ({} bytes); {} bytes kept",
        r.sites,
        r.kept_deploys,
        r.objects,
        r.reachable,
        r.young,
        r.deleted,
        r.deleted_bytes,
        r.kept_bytes
    );
    Ok(())
}

/// `edge fsck`: checks every object every kept deploy reaches; fails when any is missing or
/// corrupt, naming it with the sites, deploys and paths that reach it.
pub async fn fsck(store: &str, site: Option<&str>, progress: bool) -> anyhow::Result<()> {
    let store = open_store(store, Access::Read)?;
    let r = gc::fsck(store.as_ref(), site, 32, progress)
        .await
        .with_context(|| format!("checking {}", store.location()))?;
    let sites: std::collections::BTreeSet<&str> =
        r.deploys.iter().map(|d| d.site.as_str()).collect();
    println!(
        "checked {} deploys of {} sites: {} objects",
        r.deploys.len(),
        sites.len(),
        r.objects
    );
    if r.damage.is_empty() {
        println!("ok");
        return Ok(());
    }
    let mut by_deploy: std::collections::BTreeMap<(&str, &str), Vec<String>> =
        std::collections::BTreeMap::new();
    for d in &r.damage {
        let kind = match d.kind {
            origin_client::EntryKind::Dir => "tree node",
            origin_client::EntryKind::File => "blob",
        };
        let what = match &d.fault {
            gc::Fault::Missing => "missing".to_owned(),
            gc::Fault::Corrupt(why) => format!("corrupt ({why})"),
        };
        for (site, deploy, path) in &d.reached_from {
            by_deploy
                .entry((site, deploy))
                .or_default()
                .push(format!("{what} {kind} {} at {path}", d.hash));
        }
    }
    for ((site, deploy), lines) in &by_deploy {
        let current = r
            .deploys
            .iter()
            .any(|k| k.site == *site && k.deploy == *deploy && k.current);
        let mark = if current { " (current)" } else { "" };
        println!(
            "site {site} deploy {deploy}{mark}: {} problems",
            lines.len()
        );
        for l in lines {
            println!("  {l}");
        }
    }
    let damaged_sites: std::collections::BTreeSet<&str> =
        by_deploy.keys().map(|(s, _)| *s).collect();
    anyhow::bail!(
        "{} damaged objects in {} deploys of {} sites ({})",
        r.damage.len(),
        by_deploy.len(),
        damaged_sites.len(),
        damaged_sites.into_iter().collect::<Vec<_>>().join(", ")
    )
}

pub async fn rollback(
    site: &str,
    store: &str,
    to: &str,
    notify: Option<&str>,
) -> anyhow::Result<()> {
    let notify = notify_url(notify)?;
    let store = open_store(store, Access::Write)?;
    let p = publish::rollback(store.as_ref(), site, to)
        .await
        .with_context(|| format!("rolling back site {site} to {to}"))?;
    println!(
        "site {site}: current deploy is now {} (seq {})",
        p.deploy, p.seq
    );
    if let Some(url) = notify {
        notify_moved(&url, &Hint::moved(site, &p.deploy, p.seq, "rollback")).await;
    }
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
    // The record, then the host index edges read for names they have not seen.
    origin_client::hosts::add(
        store.as_ref(),
        &HostRecord {
            host: host.clone(),
            site: site.to_owned(),
        },
    )
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
    /// The store: a path, file://, http(s):// or s3://BUCKET/PREFIX URL [default: ./store].
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
    /// Parent edges to read objects from before the origin (comma-separated, or repeated);
    /// replaces `[tiers] parents`.
    #[arg(long, value_name = "URL[,URL...]", value_delimiter = ',')]
    pub parent: Vec<String>,
}

/// Starts logging to standard error; `RUST_LOG` overrides the default level (info).
pub fn init_logging() {
    let _ = init_logging_with(edge_config::LogFormat::Pretty, "info");
}

/// Starts logging in `format` at `level` (`RUST_LOG` overrides it). Returns a handle that
/// changes the level later.
pub fn init_logging_with(
    format: edge_config::LogFormat,
    level: &str,
) -> Option<crate::node::LogReload> {
    use std::io::IsTerminal;
    use tracing_subscriber::prelude::*;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(quiet_nats(level)));
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
        let f = tracing_subscriber::EnvFilter::try_new(quiet_nats(level))
            .map_err(|e| anyhow::anyhow!("log.level {level:?}: {e}"))?;
        handle.reload(f).map_err(|e| anyhow::anyhow!("{e}"))
    }))
}

/// The NATS client logs every reconnect attempt at info level; `notify` says what matters
/// (lost, unreachable at a bounded rate, back), so the client is held to warnings unless the
/// filter names it.
fn quiet_nats(level: &str) -> String {
    if level.contains("async_nats") {
        level.to_owned()
    } else {
        format!("{level},async_nats=warn")
    }
}

/// `edge check-config FILE`: validates a config file; the error names the key and line.
pub fn check_config(path: &Path) -> anyhow::Result<()> {
    let cfg = edge_config::Config::load(path)?;
    // The same check `edge serve` makes of the variable.
    let env_token = crate::node::env_admin_token()?;
    if let Some(addr) = cfg.admin_listen
        && !addr.ip().is_loopback()
        && cfg.admin_token.is_none()
        && env_token.is_none()
    {
        anyhow::bail!(
            "{}: `admin.listen`: {addr} is not a loopback address, so `admin.token` (or EDGE_ADMIN_TOKEN) is required",
            path.display()
        );
    }
    // Likewise for serving children on a listener other machines can reach.
    crate::node::check_children_exposure(&cfg)
        .map_err(|e| anyhow::anyhow!("{}: {e:#}", path.display()))?;
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
    if !args.parent.is_empty() {
        file.tiers.parents = Some(args.parent.clone());
    }
    Ok(edge_config::Config::from_file(
        &file,
        text.as_deref(),
        name.as_deref(),
    )?)
}

/// `edge serve`: the configuration from the file and flags, logging, then the node (which
/// reads the file and flags again on SIGHUP).
pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let cfg = serve_config(&args)?;
    let reload_log = init_logging_with(cfg.log_format, &cfg.log_level);
    crate::node::serve(cfg, reload_log, Box::new(move || serve_config(&args))).await
}

/// `edge preview DIR`; with `tls_listen`, HTTPS and HTTP/3 there too, with a certificate
/// generated for localhost (written to a temporary folder, removed on exit).
pub async fn preview(dir: &Path, listen: &str, tls_listen: Option<&str>) -> anyhow::Result<()> {
    init_logging();
    crate::node::preview(dir, listen, tls_listen).await
}
