//! Host -> site -> deploy -> tree walk -> entry.
//!
//! Pointers (host records and each site's current deploy) are cached and refreshed in the
//! background; a request uses the cached pointer and never waits for a refresh. Unknown hosts
//! and sites are remembered for a short TTL (negative caching). A new deploy pointer is adopted
//! only after its root tree node has been fetched and verified; until then the previous deploy
//! keeps serving. Tree nodes are immutable: fetched once, verified against their hash, decoded
//! once, cached by hash with a byte bound.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use http::HeaderValue;
use moka::future::Cache;
use origin_client::records::{normalize_host, validate_deploy_id, validate_site};
use origin_client::{CurrentPointer, EntryKind, Hash, Store, TreeNode};

use crate::coalesce::Coalescer;
use crate::error::{EdgeError, EdgeResult};
use crate::path::RequestPath;
use crate::tiers::DiskTier;

#[derive(Debug, Clone)]
pub struct ResolverConfig {
    pub refresh_interval: Duration,
    pub negative_ttl: Duration,
    pub tree_cache_bytes: u64,
    pub default_site: Option<String>,
    /// Most hosts and sites remembered (positive and negative).
    pub max_pointers: u64,
    /// Where last-known-good pointers are persisted (None: not persisted).
    pub state_file: Option<PathBuf>,
    /// A pointer not confirmed by the origin for this long is stale (reported, still served).
    pub stale_after: Duration,
}

/// Counters for alarms and metrics.
#[derive(Debug, Default)]
pub struct ResolverStats {
    /// New pointers refused because their root could not be fetched or verified (alarm).
    pub pointers_rejected: AtomicU64,
    /// Pointer refreshes that failed (the cached pointer was kept).
    pub refresh_failures: AtomicU64,
    /// Last-known-good pointers loaded at start.
    pub pointers_loaded: AtomicU64,
}

/// A site's active deploy, as this node knows it.
#[derive(Debug)]
pub struct Deploy {
    pub site: String,
    pub id: String,
    pub root: Hash,
    pub seq: u64,
    /// `id` as a header value, built once.
    pub id_header: http::HeaderValue,
    /// Unix milliseconds when the origin last confirmed this pointer.
    confirmed_ms: AtomicU64,
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Deploy {
    pub fn new(site: String, id: String, root: Hash, seq: u64) -> Deploy {
        Deploy::confirmed_at(site, id, root, seq, unix_ms())
    }

    fn confirmed_at(site: String, id: String, root: Hash, seq: u64, ms: u64) -> Deploy {
        // Deploy ids are validated as `[a-z0-9-]` by the store, so this cannot fail; an
        // invalid one would only lose the header.
        let id_header = http::HeaderValue::from_str(&id)
            .unwrap_or_else(|_| http::HeaderValue::from_static("invalid"));
        Deploy {
            site,
            id,
            root,
            seq,
            id_header,
            confirmed_ms: AtomicU64::new(ms),
        }
    }

    /// How long since the origin last confirmed this pointer.
    pub fn age(&self) -> Duration {
        Duration::from_millis(unix_ms().saturating_sub(self.confirmed_ms.load(Ordering::Relaxed)))
    }

    fn confirm(&self) {
        self.confirmed_ms.store(unix_ms(), Ordering::Relaxed);
    }
}

/// Cached pointer state: `None` means "known not to exist" (negative entry).
type HostSlot = Option<Arc<str>>;
type SiteSlot = Option<Arc<Deploy>>;

/// Weighs tree nodes by the memory they hold.
#[derive(Debug, Clone, Copy)]
struct TreeWeight;

impl quick_cache::Weighter<Hash, TreeNode> for TreeWeight {
    fn weight(&self, _: &Hash, t: &TreeNode) -> u64 {
        t.weight() as u64
    }
}

/// Cached pointers: `None` values are negative entries (known not to exist) that expire
/// after a TTL; positive ones live until evicted or replaced by a refresh. Reads are a
/// sharded-lock hash lookup (quick_cache), with no per-read bookkeeping; misses are
/// coalesced per key.
struct PointerCache<T: Clone> {
    map: quick_cache::sync::Cache<String, (Option<T>, Option<Instant>)>,
    fetches: Coalescer<String, Option<T>, EdgeError>,
    /// Milliseconds; changed by a config reload.
    negative_ttl_ms: Arc<AtomicU64>,
}

impl<T: Clone + Send + Sync> PointerCache<T> {
    fn new(capacity: u64, negative_ttl_ms: Arc<AtomicU64>) -> Self {
        PointerCache {
            map: quick_cache::sync::Cache::new(capacity.max(16) as usize),
            fetches: Coalescer::default(),
            negative_ttl_ms,
        }
    }

    /// `None` on a miss (or an expired negative entry); `Some(None)` for a negative entry.
    fn get(&self, key: &str) -> Option<Option<T>> {
        let (v, expires) = self.map.get(key)?;
        if expires.is_some_and(|e| Instant::now() >= e) {
            self.map.remove(key);
            return None;
        }
        Some(v)
    }

    fn insert(&self, key: String, v: Option<T>) {
        let ttl = Duration::from_millis(self.negative_ttl_ms.load(Ordering::Relaxed));
        let expires = v.is_none().then(|| Instant::now() + ttl);
        self.map.insert(key, (v, expires));
    }

    fn remove(&self, key: &str) {
        self.map.remove(key);
    }

    /// Cached value, else one coalesced `fetch` whose answer is cached (errors are not).
    async fn get_or_fetch<F>(&self, key: &str, fetch: F) -> EdgeResult<Option<T>>
    where
        F: Future<Output = Result<Option<T>, EdgeError>>,
    {
        if let Some(v) = self.get(key) {
            return Ok(v);
        }
        self.fetches
            .run(key.to_owned(), async {
                let v = fetch.await?;
                self.insert(key.to_owned(), v.clone());
                Ok(v)
            })
            .await
    }

    fn positive(&self) -> Vec<(String, T)> {
        self.map
            .iter()
            .filter_map(|(k, (v, _))| v.map(|v| (k, v)))
            .collect()
    }
}

pub struct Resolver {
    store: Arc<dyn Store>,
    cfg: ResolverConfig,
    hosts: PointerCache<Arc<str>>,
    sites: PointerCache<Arc<Deploy>>,
    trees: Cache<Hash, TreeNode>,
    /// The hit path for tree nodes: they are immutable, so this front needs no
    /// invalidation; it shares the nodes' bytes with `trees` (which coalesces misses).
    tree_front: quick_cache::sync::Cache<Hash, TreeNode, TreeWeight>,
    /// Resolved files by (deploy root, raw request path): derived from immutable trees, so
    /// never stale; bounded by a quarter of the tree cache's bytes.
    routes: quick_cache::sync::Cache<RouteKey, Arc<FileRoute>, RouteWeight>,
    /// Tree nodes are kept on disk too, so a restarted node can walk its deploys while the
    /// origin is down.
    disk: Option<Arc<DiskTier>>,
    /// Tunables a config reload may change (milliseconds).
    negative_ttl_ms: Arc<AtomicU64>,
    refresh_ms: AtomicU64,
    stale_after_ms: AtomicU64,
    /// Set when a pointer changes; the saver persists the pointers then.
    dirty: AtomicBool,
    wake_saver: tokio::sync::Notify,
    pub stats: ResolverStats,
}

/// The persisted last-known-good pointers.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct SavedState {
    version: u32,
    hosts: std::collections::BTreeMap<String, String>,
    sites: std::collections::BTreeMap<String, SavedDeploy>,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct SavedDeploy {
    deploy: String,
    root: Hash,
    seq: u64,
    confirmed_ms: u64,
}

/// What a path resolves to in a deploy.
#[derive(Debug, Clone)]
pub enum Target {
    /// A file, with what its responses need from the tree.
    File(Arc<FileRoute>),
    /// A folder requested without its trailing slash.
    AddSlash,
    NotFound,
}

/// A file a path resolved to, with everything its responses take from the (immutable) deploy
/// tree worked out once: the entry, its precompressed siblings, content type and entity tags.
/// Cached per (deploy root, request path), so a repeated hit walks no tree and formats no
/// header value.
#[derive(Debug)]
pub struct FileRoute {
    pub name: Box<str>,
    pub identity: Variant,
    /// Precompressed siblings (`name.br`, `name.zst`, `name.gz`): index into
    /// [`headers::CODINGS`](crate::http::headers::CODINGS) and the variant.
    pub siblings: Vec<(usize, Variant)>,
    pub content_type: HeaderValue,
    pub html: bool,
}

/// One stored representation of a file: its blob and strong entity tag.
#[derive(Debug, Clone)]
pub struct Variant {
    pub hash: Hash,
    pub size: u64,
    pub etag: HeaderValue,
}

impl Variant {
    fn new(hash: Hash, size: u64) -> Variant {
        Variant {
            hash,
            size,
            etag: crate::http::headers::etag(&hash),
        }
    }
}

impl FileRoute {
    /// The file `name`, a file entry of `dir`.
    fn new(dir: &TreeNode, name: &str, hash: Hash, size: u64) -> FileRoute {
        use crate::http::headers;
        // Siblings sort right after `name`: one search and a short scan.
        let mut siblings: Vec<(usize, Variant)> = dir
            .extensions(name)
            .filter(|e| e.kind == EntryKind::File)
            .filter_map(|e| {
                let suffix = &e.name[name.len()..];
                let rank = headers::CODINGS.iter().position(|(_, s)| *s == suffix)?;
                Some((rank, Variant::new(e.hash, e.size)))
            })
            .collect();
        siblings.sort_by_key(|(rank, _)| *rank);
        let content_type = match headers::content_type(name) {
            std::borrow::Cow::Borrowed(s) => HeaderValue::from_static(s),
            std::borrow::Cow::Owned(s) => HeaderValue::from_str(&s)
                .unwrap_or(HeaderValue::from_static("application/octet-stream")),
        };
        FileRoute {
            name: name.into(),
            identity: Variant::new(hash, size),
            siblings,
            content_type,
            html: headers::is_html(name),
        }
    }

    /// Roughly the memory an entry of the route cache holds.
    fn weight(&self, path: &str) -> u64 {
        (256 + path.len() + self.name.len() + 96 * self.siblings.len()) as u64
    }
}

/// A route cache key: a deploy root and a raw request path.
#[derive(Debug, PartialEq, Eq)]
struct RouteKey {
    root: Hash,
    path: Box<str>,
}

/// The borrowed form of [`RouteKey`], so a lookup allocates nothing.
#[derive(Debug)]
struct RouteRef<'a> {
    root: &'a Hash,
    path: &'a str,
}

impl std::hash::Hash for RouteKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        RouteRef {
            root: &self.root,
            path: &self.path,
        }
        .hash(state);
    }
}

impl std::hash::Hash for RouteRef<'_> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write(self.root.as_bytes());
        state.write(self.path.as_bytes());
    }
}

impl quick_cache::Equivalent<RouteKey> for RouteRef<'_> {
    fn equivalent(&self, key: &RouteKey) -> bool {
        *self.root == key.root && self.path == &*key.path
    }
}

#[derive(Debug, Clone, Copy)]
struct RouteWeight;

impl quick_cache::Weighter<RouteKey, Arc<FileRoute>> for RouteWeight {
    fn weight(&self, k: &RouteKey, v: &Arc<FileRoute>) -> u64 {
        v.weight(&k.path)
    }
}

impl Resolver {
    pub fn new(
        store: Arc<dyn Store>,
        cfg: ResolverConfig,
        disk: Option<Arc<DiskTier>>,
    ) -> Arc<Resolver> {
        let trees = Cache::builder()
            .weigher(|_: &Hash, t: &TreeNode| u32::try_from(t.weight()).unwrap_or(u32::MAX))
            .max_capacity(cfg.tree_cache_bytes)
            .build();
        let negative_ttl_ms = Arc::new(AtomicU64::new(cfg.negative_ttl.as_millis() as u64));
        let refresh_ms = cfg.refresh_interval.as_millis() as u64;
        let stale_after_ms = cfg.stale_after.as_millis() as u64;
        let hosts = PointerCache::new(cfg.max_pointers, negative_ttl_ms.clone());
        let sites = PointerCache::new(cfg.max_pointers, negative_ttl_ms.clone());
        let tree_items = (cfg.tree_cache_bytes / 4096).clamp(256, 1 << 20) as usize;
        let tree_front =
            quick_cache::sync::Cache::with_weighter(tree_items, cfg.tree_cache_bytes, TreeWeight);
        let route_bytes = (cfg.tree_cache_bytes / 4).max(64 * 1024);
        let routes = quick_cache::sync::Cache::with_weighter(
            (route_bytes / 384).clamp(256, 1 << 20) as usize,
            route_bytes,
            RouteWeight,
        );
        Arc::new(Resolver {
            store,
            cfg,
            hosts,
            sites,
            trees,
            tree_front,
            routes,
            disk,
            negative_ttl_ms,
            refresh_ms: AtomicU64::new(refresh_ms),
            stale_after_ms: AtomicU64::new(stale_after_ms),
            dirty: AtomicBool::new(false),
            wake_saver: tokio::sync::Notify::new(),
            stats: ResolverStats::default(),
        })
    }

    pub fn config(&self) -> &ResolverConfig {
        &self.cfg
    }

    /// A pointer older than this is reported stale.
    pub fn stale_after(&self) -> Duration {
        Duration::from_millis(self.stale_after_ms.load(Ordering::Relaxed))
    }

    /// Applies reloaded timings: the refresh interval (from the next round), the negative
    /// TTL (for entries made from now on), and the staleness threshold.
    pub fn tune(&self, refresh_interval: Duration, negative_ttl: Duration, stale_after: Duration) {
        self.refresh_ms
            .store(refresh_interval.as_millis() as u64, Ordering::Relaxed);
        self.negative_ttl_ms
            .store(negative_ttl.as_millis() as u64, Ordering::Relaxed);
        self.stale_after_ms
            .store(stale_after.as_millis() as u64, Ordering::Relaxed);
    }

    /// Loads persisted last-known-good pointers. They serve at once (as stale, until the
    /// origin confirms them); a missing file is not an error, a damaged one is logged and
    /// ignored.
    pub async fn load_state(&self) -> usize {
        let Some(path) = self.cfg.state_file.clone() else {
            return 0;
        };
        let read = tokio::task::spawn_blocking(move || std::fs::read(&path)).await;
        let bytes = match read {
            Ok(Ok(b)) => b,
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => return 0,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot read saved pointers");
                return 0;
            }
            Err(_) => return 0,
        };
        let state: SavedState = match serde_json::from_slice(&bytes) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "saved pointers are damaged; ignoring them");
                return 0;
            }
        };
        let mut n = 0;
        for (host, site) in state.hosts {
            if normalize_host(&host).is_ok_and(|h| h == host) && validate_site(&site).is_ok() {
                self.hosts.insert(host, Some(Arc::from(site)));
                n += 1;
            }
        }
        for (site, d) in state.sites {
            if validate_site(&site).is_err() || validate_deploy_id(&d.deploy).is_err() {
                continue;
            }
            let deploy =
                Deploy::confirmed_at(site.clone(), d.deploy, d.root, d.seq, d.confirmed_ms);
            self.sites.insert(site, Some(Arc::new(deploy)));
            n += 1;
        }
        self.stats
            .pointers_loaded
            .store(n as u64, Ordering::Relaxed);
        tracing::info!(pointers = n, "loaded last-known-good pointers");
        n
    }

    fn mark_dirty(&self) {
        if self.cfg.state_file.is_some() && !self.dirty.swap(true, Ordering::AcqRel) {
            self.wake_saver.notify_one();
        }
    }

    /// Writes the pointers now (atomically: temporary file, fsync, rename).
    pub async fn save_state(&self) -> std::io::Result<()> {
        let Some(path) = self.cfg.state_file.clone() else {
            return Ok(());
        };
        self.dirty.store(false, Ordering::Release);
        let mut state = SavedState {
            version: 1,
            ..SavedState::default()
        };
        for (host, site) in self.hosts.positive() {
            state.hosts.insert(host, site.to_string());
        }
        for (site, d) in self.sites.positive() {
            state.sites.insert(
                site,
                SavedDeploy {
                    deploy: d.id.clone(),
                    root: d.root,
                    seq: d.seq,
                    confirmed_ms: d.confirmed_ms.load(Ordering::Relaxed),
                },
            );
        }
        let json = serde_json::to_vec_pretty(&state).map_err(std::io::Error::other)?;
        tokio::task::spawn_blocking(move || write_atomic(&path, &json))
            .await
            .map_err(std::io::Error::other)?
    }

    /// Persists pointers whenever they change (batched). The task keeps the resolver alive:
    /// it is for a node's lifetime.
    pub fn spawn_saver(self: &Arc<Self>) -> Option<tokio::task::JoinHandle<()>> {
        self.cfg.state_file.as_ref()?;
        let this = self.clone();
        Some(tokio::spawn(async move {
            loop {
                this.wake_saver.notified().await;
                if let Err(e) = this.save_state().await {
                    tracing::warn!(error = %e, "cannot save last-known-good pointers");
                    this.dirty.store(true, Ordering::Release);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    this.wake_saver.notify_one();
                }
            }
        }))
    }

    /// Starts the background refresh of cached pointers. It stops when the resolver is
    /// dropped.
    pub fn spawn_refresher(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let every = match weak.upgrade() {
                    Some(this) => Duration::from_millis(this.refresh_ms.load(Ordering::Relaxed)),
                    None => return,
                };
                tokio::time::sleep(every).await;
                let Some(this) = weak.upgrade() else { return };
                this.refresh_all().await;
            }
        })
    }

    /// The site a Host header names: its host record, else the default site. `None` when
    /// neither exists.
    pub async fn site_for_host(&self, host: Option<&str>) -> EdgeResult<Option<Arc<str>>> {
        let found = match host.and_then(host_name) {
            Some(name) => match self.hosts.get(&name) {
                Some(slot) => slot,
                None => {
                    let store = self.store.as_ref();
                    let fetched =
                        Box::pin(self.hosts.get_or_fetch(&name, fetch_host(store, &name))).await;
                    match fetched {
                        Ok(slot) => {
                            if slot.is_some() {
                                self.mark_dirty();
                            }
                            slot
                        }
                        // The origin cannot say which site an unknown host is: with a default
                        // site, serve that rather than fail (a known host would be cached).
                        Err(e) if self.cfg.default_site.is_some() => {
                            tracing::debug!(error = %error_chain(&*e), "host lookup failed; using the default site");
                            None
                        }
                        Err(e) => return Err(e),
                    }
                }
            },
            None => None,
        };
        Ok(found.or_else(|| self.cfg.default_site.as_deref().map(Arc::from)))
    }

    /// The site's active deploy; `None` if the site has none.
    pub async fn deploy(&self, site: &str) -> EdgeResult<Option<Arc<Deploy>>> {
        if let Some(slot) = self.sites.get(site) {
            return Ok(slot);
        }
        let slot = Box::pin(self.sites.get_or_fetch(site, self.fetch_deploy(site))).await?;
        if slot.is_some() {
            self.mark_dirty();
        }
        Ok(slot)
    }

    async fn fetch_deploy(&self, site: &str) -> Result<SiteSlot, EdgeError> {
        match self.store.get_current(site).await? {
            None => Ok(None),
            Some(p) => Ok(Some(self.adopt(p).await?)),
        }
    }

    /// Accepts a pointer only once its root tree node is fetched and verified.
    async fn adopt(&self, p: CurrentPointer) -> Result<Arc<Deploy>, EdgeError> {
        if let Err(e) = self.tree(p.root).await {
            self.stats.pointers_rejected.fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                site = %p.site,
                deploy = %p.deploy,
                root = %p.root,
                error = %error_chain(&*e),
                "alarm: new deploy pointer refused, its root tree cannot be fetched or verified"
            );
            return Err(unwrap_shared(e));
        }
        Ok(Arc::new(Deploy::new(p.site, p.deploy, p.root, p.seq)))
    }

    /// Re-reads one site's pointer now. Keeps the old one on any failure: an unreachable
    /// origin, a new pointer whose root cannot be fetched and verified, and an origin that
    /// no longer has a pointer for a site it served (a wiped or wrongly mounted store is more
    /// likely than a deliberate removal; removing a site from a node is an explicit purge).
    pub async fn refresh_site(&self, site: &str) -> EdgeResult<Option<Arc<Deploy>>> {
        let old = self.sites.get(site).flatten();
        let fetched = self.store.get_current(site).await;
        match (fetched, old) {
            (Ok(Some(p)), Some(old)) if old.root == p.root && old.id == p.deploy => {
                old.confirm();
                // Persist the confirmation too, so a node restarted during an outage knows
                // how old its pointers really are (one small write per refresh round).
                self.mark_dirty();
                Ok(Some(old))
            }
            (Ok(Some(p)), old) => match self.adopt(p).await {
                Ok(new) => {
                    if let Some(old) = &old {
                        tracing::info!(site, from = %old.id, to = %new.id, "adopted new deploy");
                    }
                    self.sites.insert(site.to_owned(), Some(new.clone()));
                    self.mark_dirty();
                    Ok(Some(new))
                }
                Err(e) => {
                    self.stats.refresh_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(site, error = %error_chain(&e), "pointer not adopted; keeping the previous deploy");
                    Err(Arc::new(e))
                }
            },
            (Ok(None), Some(old)) => {
                self.stats.pointers_rejected.fetch_add(1, Ordering::Relaxed);
                tracing::error!(site, deploy = %old.id, "alarm: the origin has no pointer for a site this node serves; keeping the last-known-good deploy");
                Ok(Some(old))
            }
            (Ok(None), None) => {
                self.sites.insert(site.to_owned(), None);
                Ok(None)
            }
            (Err(e), _) => {
                self.stats.refresh_failures.fetch_add(1, Ordering::Relaxed);
                let e = EdgeError::from(e);
                tracing::warn!(site, error = %error_chain(&e), "pointer refresh failed; keeping the cached one");
                Err(Arc::new(e))
            }
        }
    }

    async fn refresh_host(&self, host: &str) {
        match fetch_host(self.store.as_ref(), host).await {
            Ok(None) if self.hosts.get(host).flatten().is_some() => {
                tracing::error!(
                    host,
                    "alarm: the origin has no record for a host this node serves; keeping the last-known-good site"
                );
            }
            Ok(slot) => {
                let changed = self.hosts.get(host) != Some(slot.clone());
                self.hosts.insert(host.to_owned(), slot);
                if changed {
                    self.mark_dirty();
                }
            }
            Err(e) => {
                tracing::warn!(host, error = %error_chain(&e), "host refresh failed; keeping the cached record")
            }
        }
    }

    /// Refreshes every cached positive pointer (negative ones simply expire).
    pub async fn refresh_all(&self) {
        let sites: Vec<String> = self.sites.positive().into_iter().map(|(k, _)| k).collect();
        let hosts: Vec<String> = self.hosts.positive().into_iter().map(|(k, _)| k).collect();
        futures_util::stream::iter(sites)
            .for_each_concurrent(16, |s| async move {
                let _ = self.refresh_site(&s).await;
            })
            .await;
        futures_util::stream::iter(hosts)
            .for_each_concurrent(16, |h| async move { self.refresh_host(&h).await })
            .await;
    }

    /// A tree node by hash: from memory, else the disk tier, else the origin; verified and
    /// decoded once, then cached (and written to the disk tier).
    pub async fn tree(&self, hash: Hash) -> EdgeResult<TreeNode> {
        if let Some(t) = self.tree_front.get(&hash) {
            return Ok(t);
        }
        // Miss paths are boxed so that the hit path's futures stay small: a large future is
        // copied whenever it is built or moved (see `Handler::serve`).
        let node = Box::pin(self.tree_slow(hash)).await?;
        self.tree_front.insert(hash, node.clone());
        Ok(node)
    }

    async fn tree_slow(&self, hash: Hash) -> EdgeResult<TreeNode> {
        if let Some(t) = self.trees.get(&hash).await {
            return Ok(t);
        }
        let store = self.store.clone();
        let disk = self.disk.clone();
        self.trees
            .try_get_with(hash, async move {
                if let Some(disk) = disk.clone() {
                    let from_disk = tokio::task::spawn_blocking(move || disk.read_verified(&hash))
                        .await
                        .ok()
                        .flatten();
                    if let Some(bytes) = from_disk {
                        match TreeNode::decode(bytes) {
                            Ok(t) => return Ok(t),
                            Err(e) => tracing::warn!(%hash, error = %e, "cached tree node does not decode"),
                        }
                    }
                }
                let bytes = store
                    .get_object(&hash)
                    .await?
                    .ok_or(EdgeError::MissingObject { hash })?;
                if Hash::of(&bytes) != hash {
                    return Err(EdgeError::Corrupt { hash });
                }
                let node = TreeNode::decode(bytes.clone())
                    .map_err(|source| EdgeError::BadTree { hash, source })?;
                if let Some(disk) = disk {
                    let written =
                        tokio::task::spawn_blocking(move || disk.write(&hash, &bytes)).await;
                    if let Ok(Err(e)) = written {
                        tracing::warn!(%hash, error = %e, "cannot cache tree node on disk");
                    }
                }
                Ok(node)
            })
            .await
    }

    /// Walks `path` from `root`.
    ///
    /// `/dir/` serves `dir/index.html`; `/dir` (a folder) asks for the slash; `/about`
    /// serves `about.html` when there is no `about`; a file with a trailing slash is not found.
    pub async fn lookup(&self, root: Hash, path: &RequestPath<'_>) -> EdgeResult<Target> {
        let mut dir = self.tree(root).await?;
        let n = path.segments.len();
        for (i, seg) in path.segments.iter().enumerate() {
            let last = i + 1 == n;
            let Some(e) = dir.lookup(seg) else {
                if last && !path.trailing_slash {
                    return Ok(file_in(&dir, &format!("{seg}.html")));
                }
                return Ok(Target::NotFound);
            };
            match (e.kind, last) {
                (EntryKind::Dir, false) => {
                    let h = e.hash;
                    dir = self.tree(h).await?;
                }
                (EntryKind::File, false) => return Ok(Target::NotFound),
                (EntryKind::File, true) if path.trailing_slash => return Ok(Target::NotFound),
                (EntryKind::File, true) => {
                    return Ok(Target::File(Arc::new(FileRoute::new(
                        &dir, e.name, e.hash, e.size,
                    ))));
                }
                (EntryKind::Dir, true) if !path.trailing_slash => return Ok(Target::AddSlash),
                (EntryKind::Dir, true) => {
                    let h = e.hash;
                    dir = self.tree(h).await?;
                }
            }
        }
        Ok(file_in(&dir, "index.html"))
    }

    /// The file `raw_path` resolved to in the deploy with this root, if that was worked out
    /// before (by [`Resolver::lookup_route`]). The path is the request's raw path: one that
    /// is cached has parsed before, so its hit needs no parsing either.
    pub fn cached_route(&self, root: &Hash, raw_path: &str) -> Option<Arc<FileRoute>> {
        self.routes.get(&RouteRef {
            root,
            path: raw_path,
        })
    }

    /// [`Resolver::lookup`], remembering a file it finds under `raw_path` (the path `path`
    /// was parsed from) for [`Resolver::cached_route`].
    pub async fn lookup_route(
        &self,
        root: Hash,
        raw_path: &str,
        path: &RequestPath<'_>,
    ) -> EdgeResult<Target> {
        let target = self.lookup(root, path).await?;
        if let Target::File(route) = &target {
            self.routes.insert(
                RouteKey {
                    root,
                    path: raw_path.into(),
                },
                route.clone(),
            );
        }
        Ok(target)
    }

    /// The deploy's `404.html`, if it has one.
    pub async fn not_found_page(&self, root: Hash) -> EdgeResult<Target> {
        Ok(file_in(&self.tree(root).await?, "404.html"))
    }

    /// Forgets a site's pointer and every cached tree node (admin purge, preview rebuilds).
    pub async fn forget_site(&self, site: &str) {
        self.sites.remove(site);
    }

    /// Drops a site's pointer and the tree nodes of its deploy (those still cached), so the
    /// next request re-reads both from the origin. Blobs need no purge: they are addressed
    /// by their hash, so a cached blob can only ever be the right bytes for that hash.
    /// Returns how many tree nodes were dropped, or `None` if the site was not cached.
    pub async fn purge_site(&self, site: &str) -> Option<usize> {
        let deploy = self.sites.get(site).flatten();
        self.sites.remove(site);
        self.mark_dirty();
        let deploy = deploy?;
        let mut stack = vec![deploy.root];
        let mut dropped = 0;
        while let Some(h) = stack.pop() {
            let node = match self.tree_front.get(&h) {
                Some(n) => Some(n),
                None => self.trees.get(&h).await,
            };
            let Some(node) = node else { continue };
            for e in node.iter().filter(|e| e.kind == EntryKind::Dir) {
                stack.push(e.hash);
            }
            self.tree_front.remove(&h);
            self.trees.invalidate(&h).await;
            dropped += 1;
        }
        Some(dropped)
    }

    /// Every site's cached deploy, by site name.
    pub fn deploys(&self) -> Vec<Arc<Deploy>> {
        let mut v: Vec<_> = self.sites.positive().into_iter().map(|(_, d)| d).collect();
        v.sort_by(|a, b| a.site.cmp(&b.site));
        v
    }

    /// Host names cached with a site.
    pub fn hosts(&self) -> Vec<(String, Arc<str>)> {
        let mut v = self.hosts.positive();
        v.sort();
        v
    }

    /// Bytes of decoded tree nodes held in memory.
    pub fn tree_bytes(&self) -> u64 {
        self.tree_front.weight()
    }

    /// Replaces a site's pointer directly (preview, which owns its store).
    pub async fn set_deploy(&self, deploy: Deploy) {
        self.sites
            .insert(deploy.site.clone(), Some(Arc::new(deploy)));
    }
}

/// Writes `data` to `path` via a temporary file, fsync and rename.
fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

fn file_in(dir: &TreeNode, name: &str) -> Target {
    match dir.lookup(name) {
        Some(e) if e.kind == EntryKind::File => {
            Target::File(Arc::new(FileRoute::new(dir, name, e.hash, e.size)))
        }
        _ => Target::NotFound,
    }
}

/// The host name of a Host header value: port removed, lowercased, validated. IP literals
/// and invalid names yield `None` (they name no site).
pub fn host_name(header: &str) -> Option<std::borrow::Cow<'_, str>> {
    if header.starts_with('[') {
        return None; // an IPv6 literal names no site
    }
    let name = match header.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => header,
    };
    // The common case, already normal, borrows; anything else is normalised (or refused).
    // One pass over the bytes: labels of 1-63 lowercase letters, digits, `-` or `_`.
    let plain = name.len() <= 253 && {
        let mut label = 0usize;
        let mut ok = true;
        for &c in name.as_bytes() {
            if c == b'.' {
                ok &= label > 0;
                label = 0;
            } else {
                ok &= c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'_';
                label += 1;
                ok &= label <= 63;
            }
        }
        ok && label > 0
    };
    if plain {
        return Some(std::borrow::Cow::Borrowed(name));
    }
    normalize_host(name).ok().map(std::borrow::Cow::Owned)
}

async fn fetch_host(store: &dyn Store, host: &str) -> Result<HostSlot, EdgeError> {
    Ok(store.get_host(host).await?.map(|r| Arc::from(r.site)))
}

fn unwrap_shared(e: Arc<EdgeError>) -> EdgeError {
    Arc::try_unwrap(e).unwrap_or_else(|e| EdgeError::Internal(error_chain(&*e)))
}

/// An error and its causes on one line, for logs.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use origin_client::publish::{PublishOptions, publish};
    use origin_client::store::MemoryStore;

    fn cfg() -> ResolverConfig {
        ResolverConfig {
            refresh_interval: Duration::from_secs(60),
            negative_ttl: Duration::from_secs(60),
            tree_cache_bytes: 1 << 20,
            default_site: None,
            max_pointers: 1000,
            state_file: None,
            stale_after: Duration::from_secs(60),
        }
    }

    async fn site() -> (Arc<Resolver>, Arc<Deploy>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        for (p, d) in [
            ("index.html", "root"),
            ("about.html", "about"),
            ("docs/index.html", "docs"),
            ("docs/a.txt", "a"),
            ("404.html", "nf"),
        ] {
            let p = dir.path().join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, d).unwrap();
        }
        let store = MemoryStore::new();
        publish(&store, dir.path(), "s", &PublishOptions::default())
            .await
            .unwrap();
        let r = Resolver::new(Arc::new(store), cfg(), None);
        let d = r.deploy("s").await.unwrap().unwrap();
        (r, d, dir)
    }

    async fn walk(r: &Resolver, root: Hash, p: &str) -> String {
        match r
            .lookup(root, &crate::path::parse(p).unwrap())
            .await
            .unwrap()
        {
            Target::File(route) => route.name.to_string(),
            Target::AddSlash => "301".into(),
            Target::NotFound => "404".into(),
        }
    }

    #[tokio::test]
    async fn walks_like_a_static_host() {
        let (r, d, _dir) = site().await;
        assert_eq!(walk(&r, d.root, "/").await, "index.html");
        assert_eq!(walk(&r, d.root, "/about").await, "about.html");
        assert_eq!(walk(&r, d.root, "/about.html").await, "about.html");
        assert_eq!(walk(&r, d.root, "/docs").await, "301");
        assert_eq!(walk(&r, d.root, "/docs/").await, "index.html");
        assert_eq!(walk(&r, d.root, "/docs/a.txt").await, "a.txt");
        assert_eq!(walk(&r, d.root, "/docs/a.txt/").await, "404");
        assert_eq!(walk(&r, d.root, "/docs/a.txt/x").await, "404");
        assert_eq!(walk(&r, d.root, "/nope").await, "404");
        assert_eq!(walk(&r, d.root, "/nope/").await, "404");
        assert!(matches!(
            r.not_found_page(d.root).await.unwrap(),
            Target::File(_)
        ));
    }

    /// Files found by `lookup_route` are remembered per (root, raw path), with their
    /// precompressed siblings in preference order; folders, misses and other roots are not.
    #[tokio::test]
    async fn routes_are_cached_per_root_and_raw_path() {
        let (r, d, dir) = site().await;
        for p in ["docs/a.txt.gz", "docs/a.txt.br", "docs/a.txt.bak"] {
            std::fs::write(dir.path().join(p), p).unwrap();
        }
        let store = r.store.clone();
        publish(&*store, dir.path(), "s", &PublishOptions::default())
            .await
            .unwrap();
        r.refresh_site("s").await.unwrap();
        let d2 = r.deploy("s").await.unwrap().unwrap();
        assert_ne!(d.root, d2.root);

        let raw = "/docs/a.txt";
        assert!(r.cached_route(&d2.root, raw).is_none());
        let parsed = crate::path::parse(raw).unwrap();
        let Target::File(found) = r.lookup_route(d2.root, raw, &parsed).await.unwrap() else {
            panic!("a file")
        };
        let cached = r.cached_route(&d2.root, raw).expect("cached after lookup");
        assert!(Arc::ptr_eq(&found, &cached));
        assert_eq!(&*cached.name, "a.txt");
        assert_eq!(cached.content_type, "text/plain; charset=utf-8");
        assert_eq!(
            cached.identity.etag,
            crate::http::headers::etag(&cached.identity.hash)
        );
        // `.br` before `.gz` (CODINGS order), `.bak` is no coding.
        let codings: Vec<_> = cached
            .siblings
            .iter()
            .map(|(rank, _)| crate::http::headers::CODINGS[*rank].0)
            .collect();
        assert_eq!(codings, ["br", "gzip"]);
        // Same path, older root: its own entry, without the siblings.
        assert!(r.cached_route(&d.root, raw).is_none());
        let Target::File(old) = r.lookup_route(d.root, raw, &parsed).await.unwrap() else {
            panic!("a file")
        };
        assert!(old.siblings.is_empty());
        assert!(r.cached_route(&d2.root, raw).unwrap().siblings.len() == 2);
        // Other spellings of the path are their own keys; folders and misses are not cached.
        assert!(r.cached_route(&d2.root, "/docs/a%2Etxt").is_none());
        for p in ["/docs", "/nope"] {
            let parsed = crate::path::parse(p).unwrap();
            r.lookup_route(d2.root, p, &parsed).await.unwrap();
            assert!(r.cached_route(&d2.root, p).is_none(), "{p}");
        }
    }

    #[tokio::test]
    async fn unknown_site_and_host_are_negative() {
        let (r, _, _dir) = site().await;
        assert!(r.deploy("other").await.unwrap().is_none());
        assert!(
            r.site_for_host(Some("nope.example"))
                .await
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn host_names() {
        assert_eq!(
            host_name("Example.com:8080").as_deref(),
            Some("example.com")
        );
        assert_eq!(host_name("127.0.0.1:80").as_deref(), Some("127.0.0.1"));
        assert_eq!(host_name("[::1]:80"), None);
        assert_eq!(host_name("a.example.").as_deref(), Some("a.example"));
        assert_eq!(host_name("bad host"), None);
        assert_eq!(host_name("a..b"), None);
        assert_eq!(host_name(".a"), None);
        assert_eq!(
            host_name("site0.loadtest.test:8080").as_deref(),
            Some("site0.loadtest.test")
        );
        assert!(matches!(
            host_name("a-b_c.d9"),
            Some(std::borrow::Cow::Borrowed("a-b_c.d9"))
        ));
        let long = "a".repeat(64);
        assert!(!matches!(
            host_name(&long),
            Some(std::borrow::Cow::Borrowed(_))
        ));
        assert!(matches!(
            host_name(&long[..63]),
            Some(std::borrow::Cow::Borrowed(_))
        ));
    }
}
