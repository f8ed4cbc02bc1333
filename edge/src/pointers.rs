//! Host -> site -> deploy pointers: the only mutable state a node takes from the origin.
//!
//! Pointers (host records and each site's current deploy) are cached and refreshed in the
//! background; a request uses the cached pointer and never waits for a refresh. Unknown hosts
//! and sites are remembered for a short TTL (negative caching). A new deploy pointer is adopted
//! only after its root tree node has been fetched and verified; until then the previous deploy
//! keeps serving. A refresh failure never drops a pointer. Last-known-good pointers are
//! persisted, so a node restarted while the origin is down still serves.
//!
//! Unknown hosts cost the origin O(1), not a read each: when the store has a host index
//! (`host-index`, kept by `edge hosts add`), it is read once, on the first host the node has
//! not cached, refreshed with the pointers, and answers every unknown name from memory (a
//! name it lacks is not cached either, so a flood of random names evicts nothing). Stores
//! without one are asked one host record per name, as before; an index that cannot be read
//! falls back to that until the next refresh.
//!
//! What a refresh does with a fetched pointer is [`decide`], a pure function of the old
//! pointer, the fetched result and the time; timing (negative TTL, staleness, the refresh
//! period) follows tokio's clock, so tests run it on simulated time.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use origin_client::records::{normalize_host, validate_deploy_id, validate_site};
use origin_client::{CurrentPointer, Hash, Store};
use tokio::time::Instant;

use crate::coalesce::Coalescer;
use crate::error::{self, EdgeError, EdgeResult};
use crate::trees::Trees;

#[derive(Debug, Clone)]
pub struct PointersConfig {
    pub refresh_interval: Duration,
    pub negative_ttl: Duration,
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
pub struct PointerStats {
    /// New pointers refused because their root could not be fetched or verified (alarm).
    pub pointers_rejected: AtomicU64,
    /// Pointer refreshes that failed (the cached pointer was kept).
    pub refresh_failures: AtomicU64,
    /// Last-known-good pointers loaded at start.
    pub pointers_loaded: AtomicU64,
    /// Reads of the store's host index (at first need, then once per refresh round).
    pub host_index_reads: AtomicU64,
    /// Hosts the last host index read lists.
    pub host_index_hosts: AtomicU64,
}

/// What the node knows of the store's host index.
#[derive(Debug)]
enum HostIndexState {
    /// Not needed yet (no unknown host so far).
    Unknown,
    /// The store has none, or it could not be read: hosts are looked up one by one until
    /// the next refresh round reads it again.
    Unusable,
    Loaded(Arc<std::collections::HashMap<String, Arc<str>>>),
}

/// Unix milliseconds that follow tokio's clock (so simulated time moves them too).
#[derive(Debug, Clone, Copy)]
struct Clock {
    base: Instant,
    base_ms: u64,
}

impl Clock {
    fn new() -> Clock {
        let base_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        Clock {
            base: Instant::now(),
            base_ms,
        }
    }

    fn now_ms(&self) -> u64 {
        self.base_ms + self.base.elapsed().as_millis() as u64
    }
}

/// A site's active deploy, as this node knows it.
#[derive(Debug)]
pub struct Deploy {
    pub site: Arc<str>,
    pub id: Arc<str>,
    pub root: Hash,
    pub seq: u64,
    /// Unix milliseconds when the origin last confirmed this pointer.
    confirmed_ms: AtomicU64,
}

impl Deploy {
    pub fn new(site: &str, id: &str, root: Hash, seq: u64, confirmed_ms: u64) -> Deploy {
        Deploy {
            site: site.into(),
            id: id.into(),
            root,
            seq,
            confirmed_ms: AtomicU64::new(confirmed_ms),
        }
    }

    pub fn confirmed_ms(&self) -> u64 {
        self.confirmed_ms.load(Ordering::Relaxed)
    }

    /// How long before `now_ms` the origin last confirmed this pointer.
    pub fn age_at(&self, now_ms: u64) -> Duration {
        Duration::from_millis(now_ms.saturating_sub(self.confirmed_ms()))
    }
}

/// What a refresh does with what the origin said. Pure: see [`decide`].
#[derive(Debug)]
pub enum Refresh {
    /// The origin confirmed the pointer this node has: mark it confirmed at this time.
    Confirm { now_ms: u64 },
    /// A new pointer: adopt it once its root is fetched and verified.
    Adopt(CurrentPointer),
    /// The origin has no pointer for a site this node serves: keep the old one (alarm). A
    /// wiped or wrongly mounted store is likelier than a deliberate removal; removing a site
    /// from a node is an explicit purge.
    KeepMissing,
    /// The site has no deploy, and this node knows none: remember that (negative entry).
    Absent,
    /// The origin could not be asked: keep what is cached.
    Failed(EdgeError),
}

/// The refresh rule, a pure function of the old pointer, the fetched result and the time.
pub fn decide(
    old: Option<&Deploy>,
    fetched: Result<Option<CurrentPointer>, EdgeError>,
    now_ms: u64,
) -> Refresh {
    match (fetched, old) {
        (Ok(Some(p)), Some(old)) if old.root == p.root && *old.id == *p.deploy => {
            Refresh::Confirm { now_ms }
        }
        (Ok(Some(p)), _) => Refresh::Adopt(p),
        (Ok(None), Some(_)) => Refresh::KeepMissing,
        (Ok(None), None) => Refresh::Absent,
        (Err(e), _) => Refresh::Failed(e),
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

impl<T: Clone + Send + Sync + 'static> PointerCache<T> {
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
        F: Future<Output = EdgeResult<Option<T>>>,
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

pub struct Pointers {
    store: Arc<dyn Store>,
    trees: Arc<Trees>,
    cfg: PointersConfig,
    hosts: PointerCache<Arc<str>>,
    sites: PointerCache<Arc<Deploy>>,
    host_index: arc_swap::ArcSwap<HostIndexState>,
    host_index_fetch: Coalescer<(), (), EdgeError>,
    clock: Clock,
    /// Tunables a config reload may change (milliseconds).
    negative_ttl_ms: Arc<AtomicU64>,
    refresh_ms: AtomicU64,
    /// While non-zero, the refresher polls at most this far apart (milliseconds): pushed
    /// changes ([`crate::notify`]) are off, so polling must be quick again.
    poll_cap_ms: AtomicU64,
    /// Wakes the refresher when its interval changes.
    retune: Arc<tokio::sync::Notify>,
    stale_after_ms: AtomicU64,
    /// Set when a pointer changes; the saver persists the pointers then.
    dirty: AtomicBool,
    wake_saver: tokio::sync::Notify,
    pub stats: PointerStats,
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

impl Pointers {
    pub fn new(store: Arc<dyn Store>, trees: Arc<Trees>, cfg: PointersConfig) -> Arc<Pointers> {
        let negative_ttl_ms = Arc::new(AtomicU64::new(cfg.negative_ttl.as_millis() as u64));
        Arc::new(Pointers {
            hosts: PointerCache::new(cfg.max_pointers, negative_ttl_ms.clone()),
            sites: PointerCache::new(cfg.max_pointers, negative_ttl_ms.clone()),
            host_index: arc_swap::ArcSwap::from_pointee(HostIndexState::Unknown),
            host_index_fetch: Coalescer::default(),
            refresh_ms: AtomicU64::new(cfg.refresh_interval.as_millis() as u64),
            poll_cap_ms: AtomicU64::new(0),
            retune: Arc::new(tokio::sync::Notify::new()),
            stale_after_ms: AtomicU64::new(cfg.stale_after.as_millis() as u64),
            negative_ttl_ms,
            store,
            trees,
            cfg,
            clock: Clock::new(),
            dirty: AtomicBool::new(false),
            wake_saver: tokio::sync::Notify::new(),
            stats: PointerStats::default(),
        })
    }

    pub fn config(&self) -> &PointersConfig {
        &self.cfg
    }

    /// A pointer older than this is reported stale.
    pub fn stale_after(&self) -> Duration {
        Duration::from_millis(self.stale_after_ms.load(Ordering::Relaxed))
    }

    /// How long since the origin last confirmed `deploy`.
    pub fn age(&self, deploy: &Deploy) -> Duration {
        deploy.age_at(self.clock.now_ms())
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

    /// Caps the polling interval (`Some`) while pushed changes cannot arrive, or lifts the
    /// cap (`None`). The refresher applies it at once: a round already overdue under the
    /// new interval runs now.
    pub fn set_poll_cap(&self, cap: Option<Duration>) {
        let ms = cap.map_or(0, |d| (d.as_millis() as u64).max(1));
        if self.poll_cap_ms.swap(ms, Ordering::Relaxed) != ms {
            self.retune.notify_one();
        }
    }

    /// How long the refresher waits between rounds now: the refresh interval, or the cap
    /// when one is set and shorter.
    pub fn poll_interval(&self) -> Duration {
        let every = self.refresh_ms.load(Ordering::Relaxed);
        let every = match self.poll_cap_ms.load(Ordering::Relaxed) {
            0 => every,
            cap => every.min(cap),
        };
        Duration::from_millis(every)
    }

    /// A site's cached slot, without asking the origin: `None` when the site is not cached,
    /// `Some(None)` when it is remembered as having no deploy.
    pub fn cached_deploy(&self, site: &str) -> Option<Option<Arc<Deploy>>> {
        self.sites.get(site)
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
            let deploy = Deploy::new(&site, &d.deploy, d.root, d.seq, d.confirmed_ms);
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
                    deploy: d.id.to_string(),
                    root: d.root,
                    seq: d.seq,
                    confirmed_ms: d.confirmed_ms(),
                },
            );
        }
        let json = serde_json::to_vec_pretty(&state).map_err(std::io::Error::other)?;
        tokio::task::spawn_blocking(move || write_atomic(&path, &json))
            .await
            .map_err(std::io::Error::other)?
    }

    /// Persists pointers whenever they change (batched). The task keeps the pointers alive:
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

    /// Starts the background refresh of cached pointers: a round [`Pointers::poll_interval`]
    /// after the end of the previous one (the interval is read again when it changes). It
    /// stops when the pointers are dropped.
    pub fn spawn_refresher(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        let retune = self.retune.clone();
        tokio::spawn(async move {
            let mut last = Instant::now();
            loop {
                let every = match weak.upgrade() {
                    Some(this) => this.poll_interval(),
                    None => return,
                };
                tokio::select! {
                    () = tokio::time::sleep_until(last + every) => {}
                    () = retune.notified() => continue,
                }
                let Some(this) = weak.upgrade() else { return };
                this.refresh_all().await;
                last = Instant::now();
            }
        })
    }

    /// The site a Host header names: its host record, else the default site. `None` when
    /// neither exists.
    pub async fn site_for_host(&self, host: Option<&str>) -> EdgeResult<Option<Arc<str>>> {
        let found = match host.and_then(host_name) {
            Some(name) => match self.hosts.get(&name) {
                Some(slot) => slot,
                None if let Some(index) = self.usable_host_index().await => {
                    match index.get(name.as_ref()) {
                        Some(site) => {
                            self.hosts.insert(name.into_owned(), Some(site.clone()));
                            self.mark_dirty();
                            Some(site.clone())
                        }
                        None => None,
                    }
                }
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
                            tracing::debug!(error = %error::chain(&e), "host lookup failed; using the default site");
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

    /// The store's host index, read at first need (one read however many lookups wait for
    /// it); `None` when the store has none or it cannot be read.
    async fn usable_host_index(&self) -> Option<Arc<std::collections::HashMap<String, Arc<str>>>> {
        if let HostIndexState::Unknown = **self.host_index.load() {
            let _ = Box::pin(self.host_index_fetch.run((), async {
                if let HostIndexState::Unknown = **self.host_index.load() {
                    self.read_host_index().await;
                }
                Ok(())
            }))
            .await;
        }
        match &**self.host_index.load() {
            HostIndexState::Loaded(m) => Some(m.clone()),
            _ => None,
        }
    }

    /// Reads the host index into memory. A failure leaves it unusable until the next
    /// refresh round (hosts are then looked up one by one).
    async fn read_host_index(&self) {
        self.stats.host_index_reads.fetch_add(1, Ordering::Relaxed);
        let state = match self.store.get_host_index().await {
            Ok(Some(ix)) => {
                let map: std::collections::HashMap<String, Arc<str>> = ix
                    .hosts
                    .into_iter()
                    .map(|(h, s)| (h, Arc::from(s)))
                    .collect();
                self.stats
                    .host_index_hosts
                    .store(map.len() as u64, Ordering::Relaxed);
                tracing::debug!(hosts = map.len(), version = ix.version, "host index read");
                HostIndexState::Loaded(Arc::new(map))
            }
            Ok(None) => HostIndexState::Unusable,
            Err(e) => {
                tracing::warn!(error = %error::chain(&EdgeError::from(e)), "host index not readable; looking hosts up one by one until the next refresh");
                HostIndexState::Unusable
            }
        };
        self.host_index.store(Arc::new(state));
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

    async fn fetch_deploy(&self, site: &str) -> EdgeResult<Option<Arc<Deploy>>> {
        match self.store.get_current(site).await? {
            None => Ok(None),
            Some(p) => Ok(Some(self.adopt(p).await?)),
        }
    }

    /// Accepts a pointer only once its root tree node is fetched and verified.
    async fn adopt(&self, p: CurrentPointer) -> EdgeResult<Arc<Deploy>> {
        if let Err(e) = self.trees.get(p.root).await {
            self.stats.pointers_rejected.fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                site = %p.site,
                deploy = %p.deploy,
                root = %p.root,
                error = %error::chain(&e),
                "alarm: new deploy pointer refused, its root tree cannot be fetched or verified"
            );
            return Err(e);
        }
        // The rest of the tree, ahead of requests: an uncached path then resolves without an
        // origin round trip per folder level.
        self.trees.spawn_prefetch(p.root);
        let now = self.clock.now_ms();
        Ok(Arc::new(Deploy::new(
            &p.site, &p.deploy, p.root, p.seq, now,
        )))
    }

    /// Re-reads one site's pointer now and applies [`decide`]. Keeps the old pointer on any
    /// failure.
    pub async fn refresh_site(&self, site: &str) -> EdgeResult<Option<Arc<Deploy>>> {
        let old = self.sites.get(site).flatten();
        let fetched = self.store.get_current(site).await.map_err(EdgeError::from);
        match decide(old.as_deref(), fetched, self.clock.now_ms()) {
            Refresh::Confirm { now_ms } => {
                let old = old.expect("decide confirms only an existing pointer");
                old.confirmed_ms.store(now_ms, Ordering::Relaxed);
                // Persist the confirmation too, so a node restarted during an outage knows
                // how old its pointers really are (one small write per refresh round).
                self.mark_dirty();
                Ok(Some(old))
            }
            Refresh::Adopt(p) => match self.adopt(p).await {
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
                    tracing::warn!(site, error = %error::chain(&e), "pointer not adopted; keeping the previous deploy");
                    Err(e)
                }
            },
            Refresh::KeepMissing => {
                self.stats.pointers_rejected.fetch_add(1, Ordering::Relaxed);
                let old = old.expect("decide keeps only an existing pointer");
                tracing::error!(site, deploy = %old.id, "alarm: the origin has no pointer for a site this node serves; keeping the last-known-good deploy");
                Ok(Some(old))
            }
            Refresh::Absent => {
                self.sites.insert(site.to_owned(), None);
                Ok(None)
            }
            Refresh::Failed(e) => {
                self.stats.refresh_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(site, error = %error::chain(&e), "pointer refresh failed; keeping the cached one");
                Err(e)
            }
        }
    }

    async fn refresh_host(&self, host: &str) {
        let fetched = fetch_host(self.store.as_ref(), host).await;
        self.apply_host(host, fetched);
    }

    /// What a refresh does with a host's fetched record (or index entry).
    fn apply_host(&self, host: &str, fetched: EdgeResult<Option<Arc<str>>>) {
        match fetched {
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
                tracing::warn!(host, error = %error::chain(&e), "host refresh failed; keeping the cached record")
            }
        }
    }

    /// Refreshes every cached positive pointer (negative ones simply expire). Hosts come
    /// from the host index when the store has one (one read), else one record each. Hosts
    /// loaded from the saved state, with the index never read yet (a restarted node), read
    /// it too rather than one record each.
    pub async fn refresh_all(&self) {
        let sites: Vec<String> = self.sites.positive().into_iter().map(|(k, _)| k).collect();
        let hosts: Vec<String> = self.hosts.positive().into_iter().map(|(k, _)| k).collect();
        futures_util::stream::iter(sites)
            .for_each_concurrent(16, |s| async move {
                let _ = self.refresh_site(&s).await;
            })
            .await;
        if !hosts.is_empty() || !matches!(**self.host_index.load(), HostIndexState::Unknown) {
            self.read_host_index().await;
        }
        if let HostIndexState::Loaded(index) = &**self.host_index.load() {
            for h in hosts {
                self.apply_host(&h, Ok(index.get(&h).cloned()));
            }
            return;
        }
        futures_util::stream::iter(hosts)
            .for_each_concurrent(16, |h| async move { self.refresh_host(&h).await })
            .await;
    }

    /// Forgets a site's pointer (preview rebuilds).
    pub fn forget_site(&self, site: &str) {
        self.sites.remove(site);
    }

    /// Drops a site's pointer and the tree nodes of its deploy (those still cached), so the
    /// next request re-reads both from the origin. Blobs need no purge: they are addressed
    /// by their hash, so a cached blob can only ever be the right bytes for that hash.
    /// Returns how many tree nodes were dropped, or `None` if the site was not cached.
    pub fn purge_site(&self, site: &str) -> Option<usize> {
        let deploy = self.sites.get(site).flatten();
        self.sites.remove(site);
        self.mark_dirty();
        Some(self.trees.purge(deploy?.root))
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

    /// Replaces a site's pointer directly (preview, which owns its store).
    pub fn set_deploy(&self, site: &str, id: &str, root: Hash, seq: u64) {
        let d = Deploy::new(site, id, root, seq, self.clock.now_ms());
        self.sites.insert(site.to_owned(), Some(Arc::new(d)));
    }

    /// Pointer lookups under way (hosts and sites; coalesced by name).
    pub fn lookups_in_flight(&self) -> usize {
        self.hosts.fetches.len() + self.sites.fetches.len()
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

async fn fetch_host(store: &dyn Store, host: &str) -> EdgeResult<Option<Arc<str>>> {
    Ok(store.get_host(host).await?.map(|r| Arc::from(r.site)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use origin_client::StoreError;
    use origin_client::publish::{PublishOptions, publish};

    use crate::testing::FaultStore as Switch;

    fn cfg() -> PointersConfig {
        PointersConfig {
            refresh_interval: Duration::from_secs(10),
            negative_ttl: Duration::from_secs(30),
            default_site: None,
            max_pointers: 1000,
            state_file: None,
            stale_after: Duration::from_secs(60),
        }
    }

    async fn publish_version(store: &dyn Store, dir: &Path, v: &str) -> Hash {
        std::fs::write(dir.join("index.html"), v).unwrap();
        publish(store, dir, "s", &PublishOptions::default())
            .await
            .unwrap()
            .deploy
            .root
    }

    fn pointers(store: &Arc<Switch>, cfg: PointersConfig) -> Arc<Pointers> {
        let store: Arc<dyn Store> = store.clone();
        Pointers::new(store.clone(), Trees::new(store, 1 << 20, None), cfg)
    }

    /// Lets spawned tasks (the refresher) run to their next wait on the paused clock.
    async fn settle() {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }

    fn pointer(deploy: &str, root: Hash) -> CurrentPointer {
        CurrentPointer {
            site: "s".into(),
            deploy: deploy.into(),
            root,
            seq: 1,
            updated: 0,
        }
    }

    #[test]
    fn the_refresh_rule() {
        let root = Hash::of(b"root");
        let old = Deploy::new("s", "d1", root, 1, 0);
        let timeout = || {
            EdgeError::from(StoreError::Timeout {
                url: "x".into(),
                after: Some(Duration::from_secs(1)),
            })
        };
        type Case<'a> = (
            Option<&'a Deploy>,
            Result<Option<CurrentPointer>, EdgeError>,
            &'a str,
        );
        let cases: Vec<Case<'_>> = vec![
            (Some(&old), Ok(Some(pointer("d1", root))), "confirm at 7"),
            (
                Some(&old),
                Ok(Some(pointer("d2", Hash::of(b"new")))),
                "adopt d2",
            ),
            (Some(&old), Ok(Some(pointer("d2", root))), "adopt d2"),
            (None, Ok(Some(pointer("d1", root))), "adopt d1"),
            (Some(&old), Ok(None), "keep missing"),
            (None, Ok(None), "absent"),
            (Some(&old), Err(timeout()), "failed 504"),
            (None, Err(timeout()), "failed 504"),
        ];
        for (old, fetched, want) in cases {
            let got = match decide(old, fetched, 7) {
                Refresh::Confirm { now_ms } => format!("confirm at {now_ms}"),
                Refresh::Adopt(p) => format!("adopt {}", p.deploy),
                Refresh::KeepMissing => "keep missing".into(),
                Refresh::Absent => "absent".into(),
                Refresh::Failed(e) => format!("failed {}", e.status().as_u16()),
            };
            assert_eq!(got, want);
        }
    }

    /// A published change is adopted by the background refresh within one interval, with no
    /// request waiting on it; pointers served while the origin is down age into "stale" and
    /// are still served; the next successful refresh makes them fresh again.
    #[tokio::test(start_paused = true)]
    async fn refresh_and_staleness_on_simulated_time() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Switch::default());
        let r1 = publish_version(&*store, dir.path(), "one").await;
        let p = pointers(&store, cfg());
        let _refresher = p.spawn_refresher();
        assert_eq!(p.deploy("s").await.unwrap().unwrap().root, r1);

        let r2 = publish_version(&*store, dir.path(), "two").await;
        tokio::time::sleep(Duration::from_secs(9)).await;
        settle().await;
        assert_eq!(
            p.deploy("s").await.unwrap().unwrap().root,
            r1,
            "before the interval"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        settle().await;
        assert_eq!(
            p.deploy("s").await.unwrap().unwrap().root,
            r2,
            "after one interval"
        );

        Switch::set(&store.meta_down, true);
        let failures = p.stats.refresh_failures.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(59)).await;
        settle().await;
        let d = p.deploy("s").await.unwrap().unwrap();
        assert_eq!(d.root, r2, "the last-known-good pointer is kept");
        assert!(p.stats.refresh_failures.load(Ordering::SeqCst) >= failures + 5);
        assert!(p.age(&d) <= p.stale_after(), "{:?}", p.age(&d));
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(p.age(&d) > p.stale_after(), "stale after 60 s unconfirmed");

        Switch::set(&store.meta_down, false);
        tokio::time::sleep(Duration::from_secs(10)).await;
        settle().await;
        assert!(
            p.age(&d) < Duration::from_secs(10),
            "confirmed again: {:?}",
            p.age(&d)
        );
    }

    /// A poll cap (pushed changes off) shortens the interval at once, an overdue round runs
    /// now, and lifting it brings the long interval back.
    #[tokio::test(start_paused = true)]
    async fn a_poll_cap_applies_at_once_and_lifts() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Switch::default());
        let r1 = publish_version(&*store, dir.path(), "one").await;
        let mut c = cfg();
        c.refresh_interval = Duration::from_secs(60);
        let p = pointers(&store, c);
        let _refresher = p.spawn_refresher();
        assert_eq!(p.deploy("s").await.unwrap().unwrap().root, r1);
        assert_eq!(p.poll_interval(), Duration::from_secs(60));

        let r2 = publish_version(&*store, dir.path(), "two").await;
        tokio::time::sleep(Duration::from_secs(20)).await;
        settle().await;
        assert_eq!(p.deploy("s").await.unwrap().unwrap().root, r1, "60 s apart");
        // 20 s since the last round, cap 5 s: overdue, so a round runs at once.
        p.set_poll_cap(Some(Duration::from_secs(5)));
        assert_eq!(p.poll_interval(), Duration::from_secs(5));
        settle().await;
        tokio::time::sleep(Duration::from_millis(1)).await;
        settle().await;
        assert_eq!(p.deploy("s").await.unwrap().unwrap().root, r2, "at once");

        let r3 = publish_version(&*store, dir.path(), "three").await;
        tokio::time::sleep(Duration::from_secs(6)).await;
        settle().await;
        assert_eq!(p.deploy("s").await.unwrap().unwrap().root, r3, "5 s apart");

        p.set_poll_cap(None);
        assert_eq!(p.poll_interval(), Duration::from_secs(60));
        let r4 = publish_version(&*store, dir.path(), "four").await;
        tokio::time::sleep(Duration::from_secs(30)).await;
        settle().await;
        assert_eq!(
            p.deploy("s").await.unwrap().unwrap().root,
            r3,
            "60 s apart again"
        );
        tokio::time::sleep(Duration::from_secs(31)).await;
        settle().await;
        assert_eq!(p.deploy("s").await.unwrap().unwrap().root, r4);
        // A cap longer than the interval changes nothing.
        p.set_poll_cap(Some(Duration::from_secs(600)));
        assert_eq!(p.poll_interval(), Duration::from_secs(60));
        assert!(p.cached_deploy("s").unwrap().is_some());
        assert!(p.cached_deploy("other").is_none());
    }

    /// Unknown sites and hosts are remembered for the negative TTL, then asked again.
    #[tokio::test(start_paused = true)]
    async fn negative_entries_expire_on_simulated_time() {
        let store = Arc::new(Switch::default());
        let p = pointers(&store, cfg());
        let reads = || store.meta_reads.load(Ordering::SeqCst);
        assert!(p.deploy("other").await.unwrap().is_none());
        assert!(
            p.site_for_host(Some("nope.example"))
                .await
                .unwrap()
                .is_none()
        );
        assert_eq!(reads(), 2);
        tokio::time::sleep(Duration::from_secs(29)).await;
        assert!(p.deploy("other").await.unwrap().is_none());
        assert!(
            p.site_for_host(Some("nope.example"))
                .await
                .unwrap()
                .is_none()
        );
        assert_eq!(reads(), 2, "answered from the negative cache");
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(p.deploy("other").await.unwrap().is_none());
        assert!(
            p.site_for_host(Some("nope.example"))
                .await
                .unwrap()
                .is_none()
        );
        assert_eq!(reads(), 4, "asked again after the TTL");
        // A reload shortens the TTL for entries made from then on.
        p.tune(
            cfg().refresh_interval,
            Duration::from_secs(1),
            cfg().stale_after,
        );
        tokio::time::sleep(Duration::from_secs(31)).await;
        assert!(p.deploy("other").await.unwrap().is_none());
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(p.deploy("other").await.unwrap().is_none());
        assert_eq!(reads(), 6);
    }

    /// The review's leak: a lone host lookup cancelled while the origin hangs (an HTTP/2
    /// stream reset during a lookup for an attacker-chosen Host) leaves no coalescing entry.
    #[tokio::test(start_paused = true)]
    async fn a_cancelled_lone_lookup_leaves_nothing_behind() {
        let store = Arc::new(Switch::default());
        Switch::set(&store.meta_hang, true);
        let p = pointers(&store, cfg());
        for i in 0..50 {
            let host = format!("h{i}.example");
            let lookup = p.site_for_host(Some(&host));
            assert!(
                tokio::time::timeout(Duration::from_millis(10), lookup)
                    .await
                    .is_err()
            );
            let site = host.replace('.', "-");
            let lookup = p.deploy(&site);
            assert!(
                tokio::time::timeout(Duration::from_millis(10), lookup)
                    .await
                    .is_err()
            );
        }
        assert_eq!(
            store.meta_reads.load(Ordering::SeqCst),
            100,
            "each lookup reached the store"
        );
        assert_eq!(p.lookups_in_flight(), 0);
    }

    /// A node restarted with hosts in its saved state has not read the host index yet: its
    /// refresh round reads the index (one request), not one record per host.
    #[tokio::test]
    async fn a_restarted_node_refreshes_saved_hosts_from_the_index() {
        let dir = tempfile::tempdir().unwrap();
        let memory = Arc::new(origin_client::store::MemoryStore::new());
        let store: Arc<dyn Store> =
            Arc::new(origin_client::store::CountingStore::new(memory.clone()));
        std::fs::create_dir(dir.path().join("site")).unwrap();
        publish_version(&*store, &dir.path().join("site"), "one").await;
        for i in 0..20 {
            let record = origin_client::records::HostRecord {
                host: format!("h{i}.example"),
                site: "s".into(),
            };
            origin_client::hosts::add(&*store, &record).await.unwrap();
        }
        let cfg = PointersConfig {
            state_file: Some(dir.path().join("pointers.json")),
            ..cfg()
        };
        let first = Pointers::new(
            store.clone(),
            Trees::new(store.clone(), 1 << 20, None),
            cfg.clone(),
        );
        for i in 0..20 {
            let site = first
                .site_for_host(Some(&format!("h{i}.example")))
                .await
                .unwrap();
            assert_eq!(site.as_deref(), Some("s"));
        }
        first.save_state().await.unwrap();

        let counting = Arc::new(origin_client::store::CountingStore::new(memory));
        let store: Arc<dyn Store> = counting.clone();
        let second = Pointers::new(store.clone(), Trees::new(store, 1 << 20, None), cfg);
        assert_eq!(second.load_state().await, 20);
        second.refresh_all().await;
        assert_eq!(second.stats.host_index_reads.load(Ordering::Relaxed), 1);
        assert_eq!(counting.ops(), 1, "one read of the index, no host records");
        assert_eq!(
            second
                .site_for_host(Some("h7.example"))
                .await
                .unwrap()
                .as_deref(),
            Some("s")
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
