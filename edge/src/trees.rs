//! Decoded tree nodes by hash: a memory front, coalesced misses, the disk tier, the origin.
//! A deploy's compiled site rules (named by its root node) are fetched, verified and cached
//! the same way, decoded once per deploy.
//!
//! Invariants: a node is decoded and cached only after its bytes matched the hash that names
//! it; nodes are immutable, so nothing here is ever invalidated for correctness (only purged to
//! free memory or on an operator's request); identical concurrent misses make one origin read;
//! blocking file I/O runs on the blocking pool.

use std::sync::Arc;

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
    rules: quick_cache::sync::Cache<Hash, (Arc<Rules>, u64), RulesWeight>,
    rules_fetches: Coalescer<Hash, Arc<Rules>, EdgeError>,
}

impl Trees {
    pub fn new(store: Arc<dyn Store>, bytes: u64, disk: Option<Arc<DiskTier>>) -> Arc<Trees> {
        let items = (bytes / 4096).clamp(256, 1 << 20) as usize;
        Arc::new(Trees {
            store,
            front: quick_cache::sync::Cache::with_weighter(items, bytes, TreeWeight),
            fetches: Coalescer::default(),
            disk,
            rules: quick_cache::sync::Cache::with_weighter(
                64,
                (bytes / 4).max(1 << 20),
                RulesWeight,
            ),
            rules_fetches: Coalescer::default(),
        })
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
