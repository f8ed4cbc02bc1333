//! Decoded tree nodes by hash: a memory front, coalesced misses, the disk tier, the origin.
//! A deploy's compiled site rules (named by its root node) are fetched, verified and cached
//! the same way, decoded once per deploy.
//!
//! Invariants: a node is decoded and cached only after its bytes matched the hash that names
//! it; nodes are immutable, so nothing here is ever invalidated for correctness (only purged to
//! free memory or on an operator's request); identical concurrent misses make one origin read;
//! blocking file I/O runs on the blocking pool.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::StreamExt;
use origin_client::rules::Rules;
use origin_client::{EntryKind, Hash, Store, TreeNode};

use crate::coalesce::Coalescer;
use crate::error::{EdgeError, EdgeResult};
use crate::tiers::DiskTier;

/// Weighs tree nodes by the memory they hold.
#[derive(Debug, Clone, Copy)]
struct TreeWeight;

impl quick_cache::Weighter<Hash, TreeNode> for TreeWeight {
    fn weight(&self, _: &Hash, t: &TreeNode) -> u64 {
        t.weight() as u64
    }
}

/// Weighs decoded rules: their encoding, times a margin for the structures built from it.
#[derive(Debug, Clone, Copy)]
struct RulesWeight;

impl quick_cache::Weighter<Hash, (Arc<Rules>, u64)> for RulesWeight {
    fn weight(&self, _: &Hash, r: &(Arc<Rules>, u64)) -> u64 {
        r.1 * 3 + 256
    }
}

pub struct Trees {
    store: Arc<dyn Store>,
    /// The hit path: a sharded-lock hash lookup with no per-read bookkeeping.
    front: quick_cache::sync::Cache<Hash, TreeNode, TreeWeight>,
    fetches: Coalescer<Hash, TreeNode, EdgeError>,
    /// Nodes are kept on disk too, so a restarted node can walk its deploys while the origin
    /// is down.
    disk: Option<Arc<DiskTier>>,
    /// Byte bound of the memory front (prefetches stay within half of it).
    capacity: u64,
    pub stats: TreeStats,
    rules: quick_cache::sync::Cache<Hash, (Arc<Rules>, u64), RulesWeight>,
    rules_fetches: Coalescer<Hash, Arc<Rules>, EdgeError>,
}

/// Counters for metrics.
#[derive(Debug, Default)]
pub struct TreeStats {
    /// Nodes fetched ahead of requests when a deploy was adopted.
    pub prefetched: AtomicU64,
    /// Prefetch walks finished (whole, or stopped at their bound or by an error).
    pub prefetches: AtomicU64,
}

/// Tree nodes fetched at once by a prefetch walk.
const PREFETCH_CONCURRENCY: usize = 8;

/// What a prefetch did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Prefetched {
    /// Nodes now cached (fetched, or found cached).
    pub nodes: u64,
    pub bytes: u64,
    /// Nodes that could not be fetched (the walk goes on without their subtrees).
    pub failed: u64,
    /// Whether the walk stopped at its byte bound before the end of the tree.
    pub truncated: bool,
}

impl Trees {
    pub fn new(store: Arc<dyn Store>, bytes: u64, disk: Option<Arc<DiskTier>>) -> Arc<Trees> {
        let items = (bytes / 4096).clamp(256, 1 << 20) as usize;
        Arc::new(Trees {
            store,
            front: quick_cache::sync::Cache::with_weighter(items, bytes, TreeWeight),
            fetches: Coalescer::default(),
            disk,
            capacity: bytes,
            stats: TreeStats::default(),
            rules: quick_cache::sync::Cache::with_weighter(
                64,
                (bytes / 4).max(1 << 20),
                RulesWeight,
            ),
            rules_fetches: Coalescer::default(),
        })
    }

    /// Fetches every node of the tree under `root` ahead of requests, breadth first, a few at
    /// a time, so that a path nobody asked for yet resolves without one origin round trip per
    /// folder level. Stops after `max_bytes` of nodes (it must not evict the trees of the
    /// deploys being served); a node that fails is skipped with its subtree.
    pub async fn prefetch(&self, root: Hash, max_bytes: u64) -> Prefetched {
        let mut done = Prefetched::default();
        let mut queue = std::collections::VecDeque::from([root]);
        let mut seen = std::collections::HashSet::from([root]);
        let mut inflight = futures_util::stream::FuturesUnordered::new();
        loop {
            while inflight.len() < PREFETCH_CONCURRENCY && !done.truncated {
                let Some(h) = queue.pop_front() else { break };
                inflight.push(async move { (h, self.get(h).await) });
            }
            let Some((hash, got)) = inflight.next().await else {
                break;
            };
            match got {
                Ok(node) => {
                    done.nodes += 1;
                    done.bytes += node.weight() as u64;
                    if done.bytes >= max_bytes {
                        done.truncated = true;
                    }
                    for e in node.iter().filter(|e| e.kind == EntryKind::Dir) {
                        if seen.insert(e.hash) {
                            queue.push_back(e.hash);
                        }
                    }
                }
                Err(e) => {
                    done.failed += 1;
                    tracing::debug!(%hash, error = %crate::error::chain(&e), "prefetch: tree node not fetched");
                }
            }
        }
        done.truncated |= !queue.is_empty();
        self.stats
            .prefetched
            .fetch_add(done.nodes, Ordering::Relaxed);
        self.stats.prefetches.fetch_add(1, Ordering::Relaxed);
        done
    }

    /// [`Trees::prefetch`] in the background, within half the memory front.
    pub fn spawn_prefetch(self: &Arc<Self>, root: Hash) {
        let this = self.clone();
        let bound = self.capacity / 2;
        tokio::spawn(async move {
            let done = this.prefetch(root, bound).await;
            tracing::debug!(%root, nodes = done.nodes, bytes = done.bytes, failed = done.failed, truncated = done.truncated, "tree prefetched");
        });
    }

    /// A node already in memory.
    pub fn cached(&self, hash: &Hash) -> Option<TreeNode> {
        self.front.get(hash)
    }

    /// A node by hash: from memory, else the disk tier, else the origin; verified and decoded
    /// once, then cached (and written to the disk tier).
    pub async fn get(&self, hash: Hash) -> EdgeResult<TreeNode> {
        if let Some(t) = self.front.get(&hash) {
            return Ok(t);
        }
        // Boxed so that the hit path's futures stay small: a large future is copied whenever
        // it is built or moved (see `Handler::serve`).
        Box::pin(self.fetches.run(hash, self.fill(hash))).await
    }

    /// A deploy's compiled site rules by hash (from its root node): decoded once, cached.
    pub async fn rules(&self, hash: Hash) -> EdgeResult<Arc<Rules>> {
        if let Some((r, _)) = self.rules.get(&hash) {
            return Ok(r);
        }
        Box::pin(self.rules_fetches.run(hash, self.fill_rules(hash))).await
    }

    async fn fill_rules(&self, hash: Hash) -> EdgeResult<Arc<Rules>> {
        if let Some((r, _)) = self.rules.get(&hash) {
            return Ok(r);
        }
        let bytes = match self.read_disk(hash).await {
            Some(b) => b,
            None => {
                let bytes = self
                    .store
                    .get_object(&hash)
                    .await?
                    .ok_or(EdgeError::MissingObject { hash })?;
                if Hash::of(&bytes) != hash {
                    return Err(EdgeError::Corrupt { hash });
                }
                if let Some(disk) = self.disk.clone() {
                    let b = bytes.clone();
                    let written = tokio::task::spawn_blocking(move || disk.write(&hash, &b)).await;
                    if let Ok(Err(e)) = written {
                        tracing::warn!(%hash, error = %e, "cannot cache site rules on disk");
                    }
                }
                bytes
            }
        };
        let len = bytes.len() as u64;
        let decoded = tokio::task::spawn_blocking(move || Rules::decode(&bytes))
            .await
            .map_err(|e| EdgeError::internal(e.to_string()))?
            .map_err(|e| EdgeError::BadRules {
                hash,
                why: e.to_string().into(),
            })?;
        let rules = Arc::new(decoded);
        self.rules.insert(hash, (rules.clone(), len));
        Ok(rules)
    }

    async fn read_disk(&self, hash: Hash) -> Option<bytes::Bytes> {
        let disk = self.disk.clone()?;
        tokio::task::spawn_blocking(move || disk.read_verified(&hash))
            .await
            .ok()
            .flatten()
    }

    async fn fill(&self, hash: Hash) -> EdgeResult<TreeNode> {
        if let Some(t) = self.front.get(&hash) {
            return Ok(t); // filled while this caller queued behind the lock
        }
        if let Some(disk) = self.disk.clone() {
            let from_disk = tokio::task::spawn_blocking(move || disk.read_verified(&hash))
                .await
                .ok()
                .flatten();
            if let Some(bytes) = from_disk {
                match TreeNode::decode(bytes) {
                    Ok(t) => {
                        self.front.insert(hash, t.clone());
                        return Ok(t);
                    }
                    Err(e) => tracing::warn!(%hash, error = %e, "cached tree node does not decode"),
                }
            }
        }
        let bytes = self
            .store
            .get_object(&hash)
            .await?
            .ok_or(EdgeError::MissingObject { hash })?;
        if Hash::of(&bytes) != hash {
            return Err(EdgeError::Corrupt { hash });
        }
        let node = TreeNode::decode(bytes.clone())
            .map_err(|source| EdgeError::BadTree { hash, source })?;
        if let Some(disk) = self.disk.clone() {
            let written = tokio::task::spawn_blocking(move || disk.write(&hash, &bytes)).await;
            if let Ok(Err(e)) = written {
                tracing::warn!(%hash, error = %e, "cannot cache tree node on disk");
            }
        }
        self.front.insert(hash, node.clone());
        Ok(node)
    }

    /// Drops the cached nodes of the tree under `root` (those still in memory), so the next
    /// walk re-reads them. Returns how many were dropped.
    pub fn purge(&self, root: Hash) -> usize {
        let mut stack = vec![root];
        let mut dropped = 0;
        while let Some(h) = stack.pop() {
            let Some(node) = self.front.get(&h) else {
                continue;
            };
            stack.extend(
                node.iter()
                    .filter(|e| e.kind == EntryKind::Dir)
                    .map(|e| e.hash),
            );
            self.front.remove(&h);
            dropped += 1;
        }
        dropped
    }

    /// Bytes of decoded tree nodes held in memory.
    pub fn bytes(&self) -> u64 {
        self.front.weight()
    }

    /// Node fetches under way (coalesced by hash).
    pub fn fetches_in_flight(&self) -> usize {
        self.fetches.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::FaultStore;
    use origin_client::publish::{PublishOptions, publish};
    use std::time::Duration;

    /// A deploy's tree is fetched ahead once adopted: afterwards, deep paths nobody asked for
    /// resolve with the origin's object face hanging (no round trip per level).
    #[tokio::test(start_paused = true)]
    async fn an_adopted_deploy_is_prefetched_so_deep_misses_need_no_origin() {
        let dir = tempfile::tempdir().unwrap();
        let mut paths = Vec::new();
        for a in 0..4 {
            for b in 0..3 {
                let p = format!("a{a}/b{b}/c/d/e/page{a}{b}.html");
                let f = dir.path().join(&p);
                std::fs::create_dir_all(f.parent().unwrap()).unwrap();
                std::fs::write(&f, &p).unwrap();
                paths.push(p);
            }
        }
        std::fs::write(dir.path().join("index.html"), "home").unwrap();
        let store = Arc::new(FaultStore::default());
        publish(&*store, dir.path(), "s", &PublishOptions::default())
            .await
            .unwrap();
        let h = crate::testing::handler(store.clone(), "s", None);
        let trees = h.trees().clone();
        let req = |p: &str| {
            http::Request::get(format!("/{p}"))
                .header("host", "x.test")
                .body(())
                .unwrap()
        };
        assert_eq!(h.handle(req("index.html")).await.status(), 200);
        for _ in 0..1000 {
            if trees.stats.prefetches.load(Ordering::SeqCst) > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(trees.stats.prefetches.load(Ordering::SeqCst), 1);
        // root + 4 a* + 12 b* + 12 c + 12 d + 12 e
        assert_eq!(trees.stats.prefetched.load(Ordering::SeqCst), 53);
        let reads = store.object_reads.load(Ordering::SeqCst);
        FaultStore::set(&store.objects_hang, true);
        for p in &paths {
            let routes = crate::http::Routes::new(trees.clone(), 1 << 20);
            let raw = format!("/{p}");
            let parsed = crate::path::parse(&raw).unwrap();
            let root = h.pointers().deploy("s").await.unwrap().unwrap().root;
            let target =
                tokio::time::timeout(Duration::from_secs(5), routes.lookup(root, &raw, &parsed))
                    .await
                    .unwrap_or_else(|_| panic!("{p}: the walk asked the origin"))
                    .unwrap();
            assert!(matches!(target, crate::http::Target::File(_)), "{p}");
        }
        assert_eq!(
            store.object_reads.load(Ordering::SeqCst),
            reads,
            "no tree node was asked for"
        );
        // The control: a node that is not cached does go to the (hanging) origin.
        let routes = crate::http::Routes::new(trees.clone(), 1 << 20);
        let parsed = crate::path::parse("/").unwrap();
        let unknown = routes.lookup(origin_client::Hash::of(b"unknown"), "/", &parsed);
        assert!(
            tokio::time::timeout(Duration::from_secs(5), unknown)
                .await
                .is_err()
        );
        assert_eq!(store.object_reads.load(Ordering::SeqCst), reads + 1);
    }

    #[tokio::test(start_paused = true)]
    async fn prefetch_stops_at_its_byte_bound() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..50 {
            let f = dir.path().join(format!("d{i}/x.txt"));
            std::fs::create_dir_all(f.parent().unwrap()).unwrap();
            std::fs::write(&f, format!("{i}")).unwrap();
        }
        let store = Arc::new(FaultStore::default());
        let root = publish(&*store, dir.path(), "s", &PublishOptions::default())
            .await
            .unwrap()
            .deploy
            .root;
        let trees = Trees::new(store.clone(), 1 << 20, None);
        let all = trees.prefetch(root, u64::MAX).await;
        assert_eq!((all.nodes, all.failed, all.truncated), (51, 0, false));
        let trees = Trees::new(store, 1 << 20, None);
        let some = trees.prefetch(root, 2_000).await;
        assert!(some.truncated, "{some:?}");
        assert!(some.nodes < 51 && some.bytes >= 2_000, "{some:?}");
    }
}
