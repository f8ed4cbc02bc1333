//! Host -> site -> deploy -> tree walk -> entry.
//!
//! Pointers (host records and each site's current deploy) are cached and refreshed in the
//! background; a request uses the cached pointer and never waits for a refresh. Unknown hosts
//! and sites are remembered for a short TTL (negative caching). A new deploy pointer is adopted
//! only after its root tree node has been fetched and verified; until then the previous deploy
//! keeps serving. Tree nodes are immutable: fetched once, verified against their hash, decoded
//! once, cached by hash with a byte bound.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use moka::Expiry;
use moka::future::Cache;
use origin_client::records::normalize_host;
use origin_client::{EntryKind, Hash, Store, TreeNode};

use crate::error::{EdgeError, EdgeResult};
use crate::path::RequestPath;

#[derive(Debug, Clone)]
pub struct ResolverConfig {
    pub refresh_interval: Duration,
    pub negative_ttl: Duration,
    pub tree_cache_bytes: u64,
    pub default_site: Option<String>,
    /// Most hosts and sites remembered (positive and negative).
    pub max_pointers: u64,
}

/// A site's active deploy, as this node knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deploy {
    pub site: String,
    pub id: String,
    pub root: Hash,
    pub seq: u64,
    /// When this node adopted the pointer.
    pub adopted: Instant,
    /// `id` as a header value, built once.
    pub id_header: http::HeaderValue,
}

impl Deploy {
    pub fn new(site: String, id: String, root: Hash, seq: u64) -> Deploy {
        // Deploy ids are validated as `[a-z0-9-]` by the store, so this cannot fail; an
        // invalid one would only lose the header.
        let id_header = http::HeaderValue::from_str(&id)
            .unwrap_or_else(|_| http::HeaderValue::from_static("invalid"));
        Deploy {
            site,
            id,
            root,
            seq,
            adopted: Instant::now(),
            id_header,
        }
    }
}

/// Cached pointer state: `None` means "known not to exist" (negative entry).
type HostSlot = Option<Arc<str>>;
type SiteSlot = Option<Arc<Deploy>>;

/// Negative entries expire after a TTL; positive ones live until evicted or refreshed.
struct NegativeTtl(Duration);

impl<K, V> Expiry<K, Option<V>> for NegativeTtl {
    fn expire_after_create(&self, _: &K, v: &Option<V>, _: Instant) -> Option<Duration> {
        v.is_none().then_some(self.0)
    }
    fn expire_after_update(
        &self,
        _: &K,
        v: &Option<V>,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        v.is_none().then_some(self.0)
    }
}

pub struct Resolver {
    store: Arc<dyn Store>,
    cfg: ResolverConfig,
    hosts: Cache<String, HostSlot>,
    sites: Cache<String, SiteSlot>,
    trees: Cache<Hash, TreeNode>,
}

/// What a path resolves to in a deploy.
#[derive(Debug, Clone)]
pub enum Target {
    /// A file: its entry data, and the folder holding it (to find precompressed siblings).
    File {
        dir: TreeNode,
        name: String,
        hash: Hash,
        size: u64,
    },
    /// A folder requested without its trailing slash.
    AddSlash,
    NotFound,
}

impl Resolver {
    pub fn new(store: Arc<dyn Store>, cfg: ResolverConfig) -> Arc<Resolver> {
        let trees = Cache::builder()
            .weigher(|_: &Hash, t: &TreeNode| u32::try_from(t.weight()).unwrap_or(u32::MAX))
            .max_capacity(cfg.tree_cache_bytes)
            .build();
        let hosts = Cache::builder()
            .max_capacity(cfg.max_pointers)
            .expire_after(NegativeTtl(cfg.negative_ttl))
            .build();
        let sites = Cache::builder()
            .max_capacity(cfg.max_pointers)
            .expire_after(NegativeTtl(cfg.negative_ttl))
            .build();
        Arc::new(Resolver {
            store,
            cfg,
            hosts,
            sites,
            trees,
        })
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Starts the background refresh of cached pointers. It stops when the resolver is
    /// dropped.
    pub fn spawn_refresher(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        let every = self.cfg.refresh_interval;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(this) = weak.upgrade() else { return };
                this.refresh_all().await;
            }
        })
    }

    /// The site a Host header names: its host record, else the default site. `None` when
    /// neither exists.
    pub async fn site_for_host(&self, host: Option<&str>) -> EdgeResult<Option<Arc<str>>> {
        let found = match host.and_then(host_name) {
            Some(name) => match self.hosts.get(name.as_ref()).await {
                Some(slot) => slot,
                None => {
                    let store = self.store.clone();
                    let key = name.into_owned();
                    let k2 = key.clone();
                    self.hosts
                        .try_get_with(key, async move { fetch_host(store.as_ref(), &k2).await })
                        .await?
                }
            },
            None => None,
        };
        Ok(found.or_else(|| self.cfg.default_site.as_deref().map(Arc::from)))
    }

    /// The site's active deploy; `None` if the site has none.
    pub async fn deploy(&self, site: &str) -> EdgeResult<Option<Arc<Deploy>>> {
        if let Some(slot) = self.sites.get(site).await {
            return Ok(slot);
        }
        let key = site.to_owned();
        self.sites
            .try_get_with(
                site.to_owned(),
                async move { self.fetch_deploy(&key).await },
            )
            .await
    }

    async fn fetch_deploy(&self, site: &str) -> Result<SiteSlot, EdgeError> {
        let Some(p) = self.store.get_current(site).await? else {
            return Ok(None);
        };
        // Adopt only a pointer whose root we can fetch and verify.
        self.tree(p.root).await.map_err(unwrap_shared)?;
        Ok(Some(Arc::new(Deploy::new(p.site, p.deploy, p.root, p.seq))))
    }

    /// Re-reads one site's pointer now; keeps the old one on any failure.
    pub async fn refresh_site(&self, site: &str) -> EdgeResult<Option<Arc<Deploy>>> {
        let old = self.sites.get(site).await.flatten();
        match self.store.get_current(site).await {
            Ok(Some(p))
                if old
                    .as_ref()
                    .is_some_and(|d| d.root == p.root && d.id == p.deploy) =>
            {
                Ok(old)
            }
            Ok(_) => match self.fetch_deploy(site).await {
                Ok(slot) => {
                    if let (Some(old), Some(new)) = (&old, &slot) {
                        tracing::info!(site, from = %old.id, to = %new.id, "adopted new deploy");
                    }
                    self.sites.insert(site.to_owned(), slot.clone()).await;
                    Ok(slot)
                }
                Err(e) => {
                    tracing::warn!(site, error = %error_chain(&e), "pointer not adopted; keeping the previous deploy");
                    Err(Arc::new(e))
                }
            },
            Err(e) => {
                let e = EdgeError::from(e);
                tracing::warn!(site, error = %error_chain(&e), "pointer refresh failed; keeping the cached one");
                Err(Arc::new(e))
            }
        }
    }

    async fn refresh_host(&self, host: &str) {
        match fetch_host(self.store.as_ref(), host).await {
            Ok(slot) => self.hosts.insert(host.to_owned(), slot).await,
            Err(e) => {
                tracing::warn!(host, error = %error_chain(&e), "host refresh failed; keeping the cached record")
            }
        }
    }

    /// Refreshes every cached positive pointer (negative ones simply expire).
    pub async fn refresh_all(&self) {
        let sites: Vec<String> = self
            .sites
            .iter()
            .filter(|(_, v)| v.is_some())
            .map(|(k, _)| k.as_ref().clone())
            .collect();
        let hosts: Vec<String> = self
            .hosts
            .iter()
            .filter(|(_, v)| v.is_some())
            .map(|(k, _)| k.as_ref().clone())
            .collect();
        futures_util::stream::iter(sites)
            .for_each_concurrent(16, |s| async move {
                let _ = self.refresh_site(&s).await;
            })
            .await;
        futures_util::stream::iter(hosts)
            .for_each_concurrent(16, |h| async move { self.refresh_host(&h).await })
            .await;
    }

    /// A tree node by hash: from the cache, else fetched, verified and decoded once.
    pub async fn tree(&self, hash: Hash) -> EdgeResult<TreeNode> {
        if let Some(t) = self.trees.get(&hash).await {
            return Ok(t);
        }
        let store = self.store.clone();
        self.trees
            .try_get_with(hash, async move {
                let bytes = store
                    .get_object(&hash)
                    .await?
                    .ok_or(EdgeError::MissingObject { hash })?;
                TreeNode::decode(bytes).map_err(|source| EdgeError::BadTree { hash, source })
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
                    return Ok(Target::File {
                        name: e.name.to_owned(),
                        hash: e.hash,
                        size: e.size,
                        dir: dir.clone(),
                    });
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

    /// The deploy's `404.html`, if it has one.
    pub async fn not_found_page(&self, root: Hash) -> EdgeResult<Target> {
        Ok(file_in(&self.tree(root).await?, "404.html"))
    }

    /// Forgets a site's pointer and every cached tree node (admin purge, preview rebuilds).
    pub async fn forget_site(&self, site: &str) {
        self.sites.invalidate(site).await;
    }

    /// Replaces a site's pointer directly (preview, which owns its store).
    pub async fn set_deploy(&self, deploy: Deploy) {
        self.sites
            .insert(deploy.site.clone(), Some(Arc::new(deploy)))
            .await;
    }
}

fn file_in(dir: &TreeNode, name: &str) -> Target {
    match dir.lookup(name) {
        Some(e) if e.kind == EntryKind::File => Target::File {
            name: name.to_owned(),
            hash: e.hash,
            size: e.size,
            dir: dir.clone(),
        },
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
    let plain = !name.ends_with('.')
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'_')
        });
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
        let r = Resolver::new(Arc::new(store), cfg());
        let d = r.deploy("s").await.unwrap().unwrap();
        (r, d, dir)
    }

    async fn walk(r: &Resolver, root: Hash, p: &str) -> String {
        match r
            .lookup(root, &crate::path::parse(p).unwrap())
            .await
            .unwrap()
        {
            Target::File { name, .. } => name,
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
            Target::File { .. }
        ));
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
    }
}
