//! `edge preview DIR`: a local folder served through the same pointers, trees, tiers and HTTP code,
//! from an in-memory store that is rebuilt when files change. Files are compressed at fast
//! levels, and `_redirects` / `_headers` apply as in a publish (a bad line keeps the previous
//! version serving, and says why).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::Watcher;
use origin_client::publish::{PublishOptions, publish};
use origin_client::store::MemoryStore;
use origin_client::{EntryKind, Hash, Store, TreeNode};

use crate::http::Handler;
use crate::pointers::Pointers;

pub const SITE: &str = "preview";

/// Publishes `dir` into `store` as the preview site and points the pointers at it. Objects
/// no longer referenced are dropped from the store.
pub async fn rebuild(store: &MemoryStore, pointers: &Pointers, dir: &Path) -> anyhow::Result<()> {
    let opts = PublishOptions {
        compress: Some(origin_client::compress::Levels::FAST),
        ..PublishOptions::default()
    };
    let report = publish(store, dir, SITE, &opts).await?;
    let d = report.deploy;
    pointers.set_deploy(SITE, &d.id, d.root, d.seq);
    let mut keep = HashSet::new();
    collect(store, d.root, &mut keep).await?;
    // The index lets the next rebuild skip the folders that did not change.
    keep.extend(d.index);
    store.retain_objects(&keep);
    tracing::info!(deploy = %d.id, files = d.files, "preview rebuilt");
    Ok(())
}

async fn collect(store: &MemoryStore, root: Hash, keep: &mut HashSet<Hash>) -> anyhow::Result<()> {
    let mut stack = vec![root];
    while let Some(h) = stack.pop() {
        keep.insert(h);
        let bytes = store
            .get_object(&h)
            .await?
            .ok_or_else(|| anyhow::anyhow!("tree {h} vanished"))?;
        // Blobs, child nodes, compressed variants and the rules object.
        for (hash, kind) in TreeNode::decode(bytes)?.references() {
            match kind {
                EntryKind::Dir => stack.push(hash),
                EntryKind::File => {
                    keep.insert(hash);
                }
            }
        }
    }
    Ok(())
}

/// Watches `dir` and rebuilds the preview within a second of any change.
pub fn spawn_watcher(
    store: MemoryStore,
    handler: Arc<Handler>,
    dir: PathBuf,
) -> anyhow::Result<notify::RecommendedWatcher> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
    let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        // Reads (our own rebuild opens every file) are not changes: reacting to them would
        // rebuild forever.
        if ev.is_ok_and(|e| !matches!(e.kind, notify::EventKind::Access(_))) {
            // A full channel already holds a pending rebuild: dropping this signal is fine.
            let _ = tx.try_send(());
        }
    })?;
    watcher.watch(&dir, notify::RecursiveMode::Recursive)?;
    tokio::spawn(async move {
        while rx.recv().await.is_some() {
            // Let a burst of writes (an editor saving, a build tool) settle.
            tokio::time::sleep(Duration::from_millis(150)).await;
            while rx.try_recv().is_ok() {}
            if let Err(e) = rebuild(&store, handler.pointers(), &dir).await {
                tracing::warn!(error = %format!("{e:#}"), "preview rebuild failed; still serving the previous version");
            }
        }
    });
    Ok(watcher)
}
