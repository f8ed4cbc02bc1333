//! Resolved files, with every header value their responses take from the (immutable) deploy
//! tree worked out once: content type, entity tags, precompressed siblings. Cached per
//! (deploy root, raw request path), so a repeated hit parses no path, walks no tree and
//! formats no header value. Derived from immutable trees, so never stale; bounded in bytes.
//!
//! The walk itself is [`crate::route`] (pure), and so is rules matching
//! (`origin_client::rules`); this module drives them over [`Trees`]. With site rules, a route
//! is remembered only when its answer cannot depend on the query string: a file no forced
//! rule's path matches, or a rewrite no query-matching rule was tried for. So a hit on a
//! remembered path costs the same with ten thousand rules as with none.

use std::sync::Arc;

use http::{HeaderName, HeaderValue, StatusCode};
use origin_client::Hash;
use origin_client::rules::{Action, Rules};

use crate::error::EdgeResult;
use crate::metrics::{ClientLog, ClientLogs};
use crate::path::RequestPath;
use crate::route::{self, FileEntry, Step, Walk};
use crate::trees::Trees;
use origin_client::TreeNode;

use super::headers;

/// A file a path resolved to, ready to answer from.
#[derive(Debug)]
pub struct FileRoute {
    pub name: Box<str>,
    pub identity: Variant,
    /// Precompressed siblings (`name.br`, `name.zst`, `name.gz`): index into
    /// [`route::CODINGS`] and the variant, in preference order.
    pub siblings: Vec<(usize, Variant)>,
    pub content_type: HeaderValue,
    pub html: bool,
    /// 200, or the status of the rewrite rule that led here (200 or 404).
    pub status: StatusCode,
    /// What `_headers` sets for the request path: they override the edge's own.
    pub headers: SiteHeaders,
}

/// Headers a site's `_headers` sets for a path, ready to insert.
pub type SiteHeaders = Arc<[(HeaderName, HeaderValue)]>;

/// The headers `rules` give `segs`, as header values. Publishing validated them; one that
/// still does not parse is left out (and logged).
pub fn site_headers(rules: Option<&Rules>, segs: &[&str], logs: &ClientLogs) -> SiteHeaders {
    let Some(rules) = rules else {
        return Arc::from([]);
    };
    rules
        .headers(segs)
        .into_iter()
        .filter_map(|(n, v)| {
            match (
                HeaderName::from_bytes(n.as_bytes()),
                HeaderValue::from_str(&v),
            ) {
                (Ok(n), Ok(v)) => Some((n, v)),
                _ => {
                    if logs.allow(ClientLog::Request) {
                        tracing::warn!(header = %n, "site header left out: not a valid header");
                    }
                    None
                }
            }
        })
        .collect()
}

/// One stored representation of a file: its blob, size and strong entity tag.
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
            etag: headers::etag(&hash),
        }
    }
}

impl FileRoute {
    pub fn new(f: &FileEntry) -> FileRoute {
        let content_type = match headers::content_type(&f.name) {
            std::borrow::Cow::Borrowed(s) => HeaderValue::from_static(s),
            std::borrow::Cow::Owned(s) => HeaderValue::from_str(&s)
                .unwrap_or(HeaderValue::from_static("application/octet-stream")),
        };
        FileRoute {
            name: f.name.clone(),
            identity: Variant::new(f.hash, f.size),
            siblings: f
                .siblings
                .iter()
                .map(|&(rank, hash, size)| (rank, Variant::new(hash, size)))
                .collect(),
            content_type,
            html: headers::is_html(&f.name),
            status: StatusCode::OK,
            headers: Arc::from([]),
        }
    }

    /// The route answered with `status` and the site's headers for the request path.
    pub fn with(mut self, status: StatusCode, headers: SiteHeaders) -> FileRoute {
        self.status = status;
        self.headers = headers;
        self
    }

    /// Roughly the memory an entry of the route cache holds.
    fn weight(&self, path: &str) -> u64 {
        let headers: usize = self
            .headers
            .iter()
            .map(|(n, v)| 48 + n.as_str().len() + v.len())
            .sum();
        (256 + path.len() + self.name.len() + 96 * self.siblings.len() + headers) as u64
    }
}

/// What a path resolved to, with files ready to answer from. Every kind carries the site's
/// headers for the request path.
#[derive(Debug, Clone)]
pub enum Target {
    /// A file (at the path, or where a rewrite rule pointed), with its status.
    File(Arc<FileRoute>),
    AddSlash(SiteHeaders),
    NotFound(SiteHeaders),
    /// A redirect rule: status and `Location`.
    Redirect {
        status: StatusCode,
        location: HeaderValue,
        headers: SiteHeaders,
    },
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

/// Walks deploys over the tree cache, remembering the files it finds.
pub struct Routes {
    trees: Arc<Trees>,
    cache: quick_cache::sync::Cache<RouteKey, Arc<FileRoute>, RouteWeight>,
    /// Rate limits for the warnings a request can cause (a rule whose substitution makes
    /// an invalid header); the handler's, once it has one.
    logs: Arc<ClientLogs>,
}

impl Routes {
    pub fn new(trees: Arc<Trees>, bytes: u64) -> Routes {
        let bytes = bytes.max(64 * 1024);
        Routes {
            trees,
            cache: quick_cache::sync::Cache::with_weighter(
                (bytes / 384).clamp(256, 1 << 20) as usize,
                bytes,
                RouteWeight,
            ),
            logs: Arc::default(),
        }
    }

    /// Counts the warnings requests cause in `logs` (the handler's metrics).
    pub fn set_logs(&mut self, logs: Arc<ClientLogs>) {
        self.logs = logs;
    }

    pub fn trees(&self) -> &Arc<Trees> {
        &self.trees
    }

    /// The file `raw_path` resolved to in the deploy with this root, if that was worked out
    /// before. The path is the request's raw path: one that is cached parsed before, so its
    /// hit needs no parsing either.
    pub fn cached(&self, root: &Hash, raw_path: &str) -> Option<Arc<FileRoute>> {
        self.cache.get(&RouteRef {
            root,
            path: raw_path,
        })
    }

    /// [`Routes::resolve`] for a request without a query string.
    pub async fn lookup(
        &self,
        root: Hash,
        raw_path: &str,
        path: &RequestPath<'_>,
    ) -> EdgeResult<Target> {
        self.resolve(root, raw_path, path, None).await
    }

    /// Walks `path` from `root`, fetching the nodes the walk needs, applies the deploy's
    /// site rules (`query` is the request's raw query), and remembers under `raw_path` (the
    /// path `path` was parsed from) a file whose answer cannot depend on the query.
    pub async fn resolve(
        &self,
        root: Hash,
        raw_path: &str,
        path: &RequestPath<'_>,
        query: Option<&str>,
    ) -> EdgeResult<Target> {
        let root_node = self.trees.get(root).await?;
        let rules = match root_node.rules() {
            Some(h) => Some(self.trees.rules(h).await?),
            None => None,
        };
        // Boxed, like the rare paths below: a route miss keeps the handler's future small.
        let found = Box::pin(self.walk(root_node, path)).await?;
        let segs: Vec<&str> = path.segments.iter().map(|s| &**s).collect();
        let headers = site_headers(rules.as_deref(), &segs, &self.logs);
        let exists = !matches!(found, route::Target::NotFound);
        if let Some(rules) = &rules {
            let decision = rules.redirect(&segs, query, exists);
            if let Some(action) = decision.action {
                let remember = !decision.query_dependent;
                // Boxed: the rare path keeps the common one's future small.
                return Box::pin(self.apply(root, raw_path, action, headers, remember)).await;
            }
        }
        Ok(match found {
            route::Target::File(f) => {
                let r = Arc::new(FileRoute::new(&f).with(StatusCode::OK, headers));
                if rules.as_ref().is_none_or(|r| !r.may_force(&segs)) {
                    self.remember(root, raw_path, &r);
                }
                Target::File(r)
            }
            route::Target::AddSlash => Target::AddSlash(headers),
            route::Target::NotFound => Target::NotFound(headers),
        })
    }

    fn remember(&self, root: Hash, raw_path: &str, r: &Arc<FileRoute>) {
        self.cache.insert(
            RouteKey {
                root,
                path: raw_path.into(),
            },
            r.clone(),
        );
    }

    async fn walk(&self, root: TreeNode, path: &RequestPath<'_>) -> EdgeResult<route::Target> {
        let mut walk = Walk::new(path);
        let mut node = root;
        loop {
            match walk.step(&node) {
                Step::Need(h) => node = self.trees.get(h).await?,
                Step::Done(t) => return Ok(t),
            }
        }
    }

    /// Carries out a matching rule: a redirect, or the content of the target path (rewrites
    /// are not rules-matched again).
    async fn apply(
        &self,
        root: Hash,
        raw_path: &str,
        action: Action,
        headers: SiteHeaders,
        remember: bool,
    ) -> EdgeResult<Target> {
        let status = StatusCode::from_u16(action.status).unwrap_or(StatusCode::MOVED_PERMANENTLY);
        if !action.rewrite {
            // Literal parts of a target may be UTF-8: sent percent-encoded, as browsers do.
            let to: String = action
                .to
                .bytes()
                .map(|b| {
                    if b.is_ascii_graphic() {
                        (b as char).to_string()
                    } else {
                        format!("%{b:02X}")
                    }
                })
                .collect();
            return Ok(match HeaderValue::from_str(&to) {
                Ok(location) => Target::Redirect {
                    status,
                    location,
                    headers,
                },
                Err(_) => {
                    if self.logs.allow(ClientLog::Request) {
                        tracing::warn!(line = action.line, "redirect target is not a valid header");
                    }
                    Target::NotFound(headers)
                }
            });
        }
        let target = action.to.split(['?', '#']).next().unwrap_or("/");
        let Ok(parsed) = crate::path::parse(target) else {
            return Ok(Target::NotFound(headers));
        };
        let node = self.trees.get(root).await?;
        Ok(match self.walk(node, &parsed).await? {
            route::Target::File(f) => {
                let r = Arc::new(FileRoute::new(&f).with(status, headers));
                if remember {
                    self.remember(root, raw_path, &r);
                }
                Target::File(r)
            }
            _ => Target::NotFound(headers),
        })
    }

    /// The deploy's `404.html`, if it has one, with the site's headers for the request.
    pub async fn not_found_page(
        &self,
        root: Hash,
        headers: SiteHeaders,
    ) -> EdgeResult<Option<Arc<FileRoute>>> {
        let node = self.trees.get(root).await?;
        Ok(match route::not_found_page(&node) {
            route::Target::File(f) => Some(Arc::new(
                FileRoute::new(&f).with(StatusCode::NOT_FOUND, headers),
            )),
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use origin_client::publish::{PublishOptions, publish};
    use origin_client::store::MemoryStore;

    /// Files found by `lookup` are remembered per (root, raw path), with their precompressed
    /// siblings in preference order; folders, misses and other roots are not.
    #[tokio::test]
    async fn routes_are_cached_per_root_and_raw_path() {
        let dir = tempfile::tempdir().unwrap();
        let store = MemoryStore::new();
        let mut roots = Vec::new();
        for extra in [
            &[][..],
            &["docs/a.txt.gz", "docs/a.txt.br", "docs/a.txt.bak"][..],
        ] {
            for p in ["index.html", "docs/a.txt"].iter().chain(extra) {
                let p = dir.path().join(p);
                std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                std::fs::write(&p, p.display().to_string()).unwrap();
            }
            let opts = PublishOptions {
                compress: None,
                ..PublishOptions::default()
            };
            let d = publish(&store, dir.path(), "s", &opts).await.unwrap();
            roots.push(d.deploy.root);
        }
        let (old, new) = (roots[0], roots[1]);
        assert_ne!(old, new);
        let trees = Trees::new(Arc::new(store), 1 << 20, None);
        let routes = Routes::new(trees, 1 << 20);

        let raw = "/docs/a.txt";
        assert!(routes.cached(&new, raw).is_none());
        let parsed = crate::path::parse(raw).unwrap();
        let Target::File(found) = routes.lookup(new, raw, &parsed).await.unwrap() else {
            panic!("a file")
        };
        let cached = routes.cached(&new, raw).expect("cached after lookup");
        assert!(Arc::ptr_eq(&found, &cached));
        assert_eq!(&*cached.name, "a.txt");
        assert_eq!(cached.content_type, "text/plain; charset=utf-8");
        assert_eq!(cached.identity.etag, headers::etag(&cached.identity.hash));
        // `.br` before `.gz` (CODINGS order), `.bak` is no coding.
        let codings: Vec<_> = cached
            .siblings
            .iter()
            .map(|(rank, _)| route::CODINGS[*rank].0)
            .collect();
        assert_eq!(codings, ["br", "gzip"]);
        // Same path, older root: its own entry, without the siblings.
        assert!(routes.cached(&old, raw).is_none());
        let Target::File(o) = routes.lookup(old, raw, &parsed).await.unwrap() else {
            panic!("a file")
        };
        assert!(o.siblings.is_empty());
        assert_eq!(routes.cached(&new, raw).unwrap().siblings.len(), 2);
        // Other spellings of the path are their own keys; folders and misses are not cached.
        assert!(routes.cached(&new, "/docs/a%2Etxt").is_none());
        for p in ["/docs", "/nope"] {
            let parsed = crate::path::parse(p).unwrap();
            routes.lookup(new, p, &parsed).await.unwrap();
            assert!(routes.cached(&new, p).is_none(), "{p}");
        }
    }
}
