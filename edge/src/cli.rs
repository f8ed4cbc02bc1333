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
    println!("site {site}: current deploy is now {} (seq {})", p.deploy, p.seq);
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
pub struct ServeArgs {}

pub async fn serve(_args: ServeArgs) -> anyhow::Result<()> {
    anyhow::bail!("serve is not built yet")
}

pub async fn preview(_dir: &Path, _listen: &str) -> anyhow::Result<()> {
    anyhow::bail!("preview is not built yet")
}
