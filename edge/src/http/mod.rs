//! The request handler: one code path decides what every request gets, whatever protocol
//! carried it. It sees method, URI, version and headers, and returns a response whose body
//! streams from the tiers.

use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode, Version};

use crate::accesslog::AccessLog;
use crate::error::{self, EdgeError};
use crate::metrics::{ClientLog, Metrics};
use crate::path::{self, PathError};
use crate::pointers::{Deploy, Pointers};
use crate::tiers::{Source, Tiers};

pub mod body;
pub mod headers;
pub mod host;
pub mod objects;
pub mod routes;

pub use body::Body;
pub use objects::Children;
pub use routes::{FileRoute, Routes, Target};

pub static X_EDGE_DEPLOY: HeaderName = HeaderName::from_static("x-edge-deploy");
pub static CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");
/// Present when the response was served on a deploy pointer the origin has not confirmed
/// recently: the pointer's age in seconds.
pub static X_EDGE_STALE_POINTER: HeaderName = HeaderName::from_static("x-edge-stale-pointer");

#[derive(Debug, Clone)]
pub struct HttpConfig {
    pub cache_control_html: HeaderValue,
    pub cache_control_other: HeaderValue,
}

pub struct Handler {
    pointers: Arc<Pointers>,
    routes: Routes,
    tiers: Arc<Tiers>,
    cfg: arc_swap::ArcSwap<HttpConfig>,
    metrics: Arc<Metrics>,
    access_log: Option<AccessLog>,
    /// `[tiers] serve_children`: how child edges' object requests are answered; `None`:
    /// they are not (such paths are site paths like any other).
    children: Option<Children>,
}

/// The parts of a request the handler looks at.
pub struct RequestHead<'a> {
    pub method: &'a Method,
    pub uri: &'a http::Uri,
    pub version: Version,
    pub headers: &'a HeaderMap,
}

impl<'a> RequestHead<'a> {
    pub fn of<B>(req: &'a http::Request<B>) -> Self {
        RequestHead {
            method: req.method(),
            uri: req.uri(),
            version: req.version(),
            headers: req.headers(),
        }
    }
}

/// Where a response's body came from, as `Cache-Status` says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    /// A blob from one of the tiers.
    Tier(Source),
    /// A HEAD answered from the tree alone.
    Tree,
}

impl CacheStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Tier(Source::Memory) => "edge; hit; detail=memory",
            CacheStatus::Tier(Source::Disk) => "edge; hit; detail=disk",
            CacheStatus::Tier(Source::Origin) => "edge; fwd=miss",
            CacheStatus::Tree => "edge; hit; detail=tree",
        }
    }
}

/// What the handler learnt answering a request: the span, the metrics and the access log
/// read these, never the response's headers.
#[derive(Debug, Default, Clone)]
pub struct Facts {
    pub site: Option<Arc<str>>,
    pub deploy: Option<Arc<str>>,
    pub cache: Option<CacheStatus>,
    /// The pointer's age, when it was served stale.
    pub stale_pointer: Option<Duration>,
    /// Body bytes the response announces.
    pub bytes: Option<u64>,
}

impl Facts {
    fn on(&mut self, deploy: &Deploy) {
        self.deploy = Some(deploy.id.clone());
    }
}

fn text(status: StatusCode, reason: &str) -> Response<Body> {
    let body = format!(
        "{} {}: {reason}\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .header(header::CACHE_CONTROL, "no-store")
        .body(Body::full(body))
        .unwrap_or_else(|_| Response::new(Body::Empty))
}

/// Sets the headers a site's `_headers` gives the request path, replacing the edge's own.
fn add_site_headers(h: &mut HeaderMap, site: &[(HeaderName, HeaderValue)]) {
    for (name, value) in site {
        h.insert(name.clone(), value.clone());
    }
}

/// The response for a path that does not parse.
fn refuse_path(e: PathError) -> Response<Body> {
    match e {
        PathError::TooLong => text(StatusCode::URI_TOO_LONG, "request target too long"),
        e => text(StatusCode::BAD_REQUEST, &e.to_string()),
    }
}

/// The refusal for `raw` if it does not parse; `None` if it does.
fn path_refusal(raw: &str) -> Option<Response<Body>> {
    path::parse(raw).err().map(refuse_path)
}

impl Handler {
    pub fn new(
        pointers: Arc<Pointers>,
        routes: Routes,
        tiers: Arc<Tiers>,
        cfg: HttpConfig,
    ) -> Handler {
        let buffered = tiers.buffered().clone();
        let metrics = Arc::new(crate::metrics::Metrics::with_buffered(buffered));
        let mut routes = routes;
        routes.set_logs(metrics.client_logs.clone());
        Handler {
            pointers,
            routes,
            tiers,
            cfg: arc_swap::ArcSwap::from_pointee(cfg),
            metrics,
            access_log: None,
            children: None,
        }
    }

    /// Replaces the HTTP policy (a config reload).
    pub fn set_http_config(&self, cfg: HttpConfig) {
        self.cfg.store(Arc::new(cfg));
    }

    /// Sends one JSON line per request to `log`.
    pub fn set_access_log(&mut self, log: AccessLog) {
        self.access_log = Some(log);
    }

    /// Answers child edges' `GET /.edge/objects/<hash>` from now on.
    pub fn serve_children(&mut self, children: Children) {
        self.children = Some(children);
    }

    pub fn children(&self) -> Option<&Children> {
        self.children.as_ref()
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn pointers(&self) -> &Arc<Pointers> {
        &self.pointers
    }

    pub fn trees(&self) -> &Arc<crate::trees::Trees> {
        self.routes.trees()
    }

    pub fn tiers(&self) -> &Arc<Tiers> {
        &self.tiers
    }

    pub async fn handle<B>(&self, req: http::Request<B>) -> Response<Body> {
        self.serve(RequestHead::of(&req)).await
    }

    /// Answers one request, whatever protocol carried it, and accounts for it (metrics,
    /// access log, and a debug-level span with site, deploy, path, cache status, status),
    /// from the facts the decision returned.
    pub async fn serve(&self, req: RequestHead<'_>) -> Response<Body> {
        let started = std::time::Instant::now();
        let span = tracing::debug_span!(
            "request",
            http.method = %req.method,
            url.path = req.uri.path(),
            site = tracing::field::Empty,
            deploy = tracing::field::Empty,
            cache.status = tracing::field::Empty,
            http.response.status_code = tracing::field::Empty,
        );
        let (resp, facts) = {
            use tracing::Instrument;
            // Boxed: the decision's state machine is several KiB, and an unboxed one would be
            // copied with every future that wraps it on the way to the connection (measured:
            // memmove was 14% of the node's CPU on small-file hits).
            Box::pin(self.decide(&req)).instrument(span.clone()).await
        };
        let now = std::time::Instant::now();
        let elapsed = now.saturating_duration_since(started);
        let status = resp.status().as_u16();
        self.metrics.record(req.version, status, elapsed);
        self.metrics.record_site(
            facts.site.as_ref(),
            crate::metrics::SiteFacts {
                bytes: facts.bytes.unwrap_or(0),
                hit: facts.cache.map(|c| c != CacheStatus::Tier(Source::Origin)),
                shed: status == 503 && resp.headers().contains_key(header::RETRY_AFTER),
            },
        );
        crate::sched::after_request(now);
        if !span.is_disabled() {
            span.record("http.response.status_code", status);
            if let Some(s) = &facts.site {
                span.record("site", &**s);
            }
            if let Some(d) = &facts.deploy {
                span.record("deploy", &**d);
            }
            if let Some(c) = facts.cache {
                span.record("cache.status", c.as_str());
            }
        }
        if let Some(log) = &self.access_log {
            let host = req
                .uri
                .authority()
                .map(|a| a.as_str())
                .or_else(|| req.headers.get(header::HOST).and_then(|v| v.to_str().ok()))
                .unwrap_or("");
            log.log(&crate::accesslog::Line {
                method: req.method.as_str(),
                host,
                path: req.uri.path_and_query().map_or("/", |p| p.as_str()),
                proto: crate::metrics::PROTOCOLS[crate::metrics::protocol_index(req.version)],
                status,
                bytes: facts.bytes,
                micros: elapsed.as_micros() as u64,
                deploy: facts.deploy.as_deref(),
                cache: facts.cache.map(CacheStatus::as_str),
                stale_s: facts.stale_pointer.map(|a| a.as_secs()),
            });
        }
        resp
    }

    /// The response to a request, and what was learnt on the way.
    async fn decide(&self, req: &RequestHead<'_>) -> (Response<Body>, Facts) {
        let mut facts = Facts::default();
        let resp = self.respond(req, &mut facts).await;
        if facts.bytes.is_none() {
            facts.bytes = http_body::Body::size_hint(resp.body()).exact();
        }
        (resp, facts)
    }

    async fn respond(&self, req: &RequestHead<'_>, facts: &mut Facts) -> Response<Body> {
        let head_only = match *req.method {
            Method::GET => false,
            Method::HEAD => true,
            _ => {
                let mut r = text(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "only GET and HEAD are served",
                );
                r.headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
                return r;
            }
        };
        let target_len = req.uri.path_and_query().map_or(0, |p| p.as_str().len());
        if target_len > path::MAX_URI_LEN {
            return text(StatusCode::URI_TOO_LONG, "request target too long");
        }
        if let Some(children) = &self.children
            && let Some(rest) = req.uri.path().strip_prefix(objects::PREFIX)
        {
            return self
                .child_object(children, req, rest, head_only, facts)
                .await;
        }
        let host = match host::request_host(req.uri, req.headers, req.version) {
            Ok(h) => h,
            Err(e) => return text(StatusCode::BAD_REQUEST, &e.to_string()),
        };
        // A path that is in the route cache parsed before; any other is parsed (and a bad one
        // refused) before a failed host or pointer lookup is reported, as if parsed first.
        let raw_path = req.uri.path();
        let site = match self.pointers.site_for_host(host).await {
            Ok(Some(s)) => s,
            Ok(None) => {
                return path_refusal(raw_path).unwrap_or_else(|| {
                    text(
                        StatusCode::NOT_FOUND,
                        "no site is configured for this host name",
                    )
                });
            }
            Err(e) => {
                return path_refusal(raw_path).unwrap_or_else(|| self.failure(&e, "host lookup"));
            }
        };
        facts.site = Some(site.clone());
        let deploy = match self.pointers.deploy(&site).await {
            Ok(Some(d)) => d,
            Ok(None) => {
                return path_refusal(raw_path).unwrap_or_else(|| {
                    text(StatusCode::NOT_FOUND, "the site has no active deploy")
                });
            }
            Err(e) => {
                return path_refusal(raw_path)
                    .unwrap_or_else(|| self.failure(&e, "pointer lookup"));
            }
        };
        facts.on(&deploy);
        if let Some(route) = self.routes.cached(&deploy.root, raw_path) {
            return self.file(req, &deploy, &route, head_only, facts).await;
        }
        let parsed = match path::parse(raw_path) {
            Ok(p) => p,
            Err(e) => return refuse_path(e),
        };
        let lookup = self
            .routes
            .resolve(deploy.root, raw_path, &parsed, req.uri.query());
        let target = match lookup.await {
            Ok(t) => t,
            Err(e) => return self.failure(&e, "tree walk"),
        };
        match target {
            Target::AddSlash(site) => {
                // Built from the checked segments, re-encoded, never from the raw path: a
                // raw `//docs` would become `//docs/`, which browsers read as another host.
                let mut loc = String::with_capacity(req.uri.path().len() + 2);
                for seg in &parsed.segments {
                    loc.push('/');
                    loc.push_str(&path::encode_segment(seg));
                }
                loc.push('/');
                if let Some(q) = req.uri.query() {
                    loc.push('?');
                    loc.push_str(q);
                }
                let mut r = text(StatusCode::MOVED_PERMANENTLY, "this is a folder");
                if let Ok(v) = HeaderValue::from_str(&loc) {
                    r.headers_mut().insert(header::LOCATION, v);
                }
                add_site_headers(r.headers_mut(), &site);
                self.stamp(r.headers_mut(), &deploy, facts);
                r
            }
            Target::Redirect {
                status,
                location,
                headers: site,
            } => {
                let mut r = text(status, "moved (the site's _redirects)");
                r.headers_mut().insert(header::LOCATION, location);
                add_site_headers(r.headers_mut(), &site);
                self.stamp(r.headers_mut(), &deploy, facts);
                r
            }
            Target::File(route) => self.file(req, &deploy, &route, head_only, facts).await,
            Target::NotFound(site) => {
                match self.routes.not_found_page(deploy.root, site.clone()).await {
                    Ok(Some(route)) => self.file(req, &deploy, &route, head_only, facts).await,
                    Ok(None) => {
                        let mut r = text(StatusCode::NOT_FOUND, "no such file in this deploy");
                        add_site_headers(r.headers_mut(), &site);
                        self.stamp(r.headers_mut(), &deploy, facts);
                        r
                    }
                    Err(e) => self.failure(&e, "404 page"),
                }
            }
        }
    }

    /// Names the deploy in the response, and marks one served on a stale pointer (header,
    /// metric, fact).
    fn stamp(&self, h: &mut HeaderMap, deploy: &Deploy, facts: &mut Facts) {
        // Deploy ids are `[a-z0-9-]` (validated by the store): always a valid value.
        if let Ok(v) = HeaderValue::from_str(&deploy.id) {
            h.insert(X_EDGE_DEPLOY.clone(), v);
        }
        let age = self.pointers.age(deploy);
        if age > self.pointers.stale_after() {
            self.metrics
                .stale_serves
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            h.insert(
                X_EDGE_STALE_POINTER.clone(),
                HeaderValue::from(age.as_secs()),
            );
            facts.stale_pointer = Some(age);
            tracing::debug!(site = %deploy.site, deploy = %deploy.id, pointer.age_s = age.as_secs(), "served on a stale pointer");
        }
    }

    fn failure(&self, e: &EdgeError, during: &'static str) -> Response<Body> {
        // Clients choose how many requests fail (cold paths while the origin is down):
        // the lines are rate-limited, the responses are counted by status anyway.
        if self.metrics.client_logs.allow(ClientLog::Request) {
            tracing::warn!(during, error = %error::chain(e), "request failed");
        }
        let mut r = text(e.status(), e.reason());
        if let Some(after) = e.retry_after() {
            r.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(after.as_secs().max(1)),
            );
        }
        r
    }

    async fn file(
        &self,
        req: &RequestHead<'_>,
        deploy: &Deploy,
        route: &FileRoute,
        head_only: bool,
        facts: &mut Facts,
    ) -> Response<Body> {
        let status = route.status;
        // Compressed forms (recorded variants, precompressed siblings): the best acceptable.
        let mut encoding = None;
        if !route.siblings.is_empty() {
            let accept = req
                .headers
                .get(header::ACCEPT_ENCODING)
                .and_then(|v| v.to_str().ok());
            let ranks = route.siblings.iter().map(|(rank, _)| *rank);
            if let Some(i) = headers::choose_encoding(accept, ranks) {
                let (rank, variant) = &route.siblings[i];
                encoding = Some((headers::CODINGS[*rank].0, variant));
            }
        }
        let variant = encoding.map_or(&route.identity, |(_, v)| v);
        let (hash, size) = (variant.hash, variant.size);
        let etag = variant.etag.to_str().unwrap_or_default();
        let mut h = HeaderMap::with_capacity(12);
        h.insert(header::CONTENT_TYPE, route.content_type.clone());
        h.insert(header::ETAG, variant.etag.clone());
        h.insert(header::CACHE_CONTROL, {
            let cfg = self.cfg.load();
            if route.html {
                cfg.cache_control_html.clone()
            } else {
                cfg.cache_control_other.clone()
            }
        });
        if !route.siblings.is_empty() {
            h.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
        }
        if let Some((coding, _)) = encoding {
            h.insert(header::CONTENT_ENCODING, HeaderValue::from_static(coding));
        }
        // The site's own headers override the edge's (they were checked at publish to leave
        // framing, validators and encoding to the edge), on 200, 206, 304 and 404 alike.
        add_site_headers(&mut h, &route.headers);
        self.stamp(&mut h, deploy, facts);

        if status == StatusCode::OK
            && let Some(inm) = req.headers.get(header::IF_NONE_MATCH)
            && inm.to_str().is_ok_and(|v| headers::none_match(v, etag))
        {
            let mut r = Response::new(Body::Empty);
            *r.status_mut() = StatusCode::NOT_MODIFIED;
            *r.headers_mut() = h;
            r.headers_mut().remove(header::CONTENT_TYPE);
            return r;
        }

        let mut status = status;
        let (mut start, mut end) = (0, size);
        if status == StatusCode::OK {
            h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
            let if_range_ok = req
                .headers
                .get(header::IF_RANGE)
                .is_none_or(|v| v.to_str().is_ok_and(|v| v == etag));
            if let Some(range) = req.headers.get(header::RANGE).filter(|_| if_range_ok) {
                let spec = range.to_str().map_or(headers::RangeSpec::Malformed, |r| {
                    headers::parse_range(r, size)
                });
                match spec {
                    headers::RangeSpec::Whole => {}
                    headers::RangeSpec::Single(s, e) => {
                        status = StatusCode::PARTIAL_CONTENT;
                        (start, end) = (s, e);
                        if let Ok(v) = HeaderValue::from_str(&format!("bytes {s}-{}/{size}", e - 1))
                        {
                            h.insert(header::CONTENT_RANGE, v);
                        }
                    }
                    headers::RangeSpec::Unsatisfiable | headers::RangeSpec::Malformed => {
                        let mut r = text(
                            StatusCode::RANGE_NOT_SATISFIABLE,
                            if spec == headers::RangeSpec::Malformed {
                                "malformed Range header"
                            } else {
                                "range outside the file"
                            },
                        );
                        if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                            r.headers_mut().insert(header::CONTENT_RANGE, v);
                        }
                        return r;
                    }
                }
            }
        }
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(end - start));

        let body = if head_only {
            facts.cache = Some(CacheStatus::Tree);
            Body::Empty
        } else {
            match self.tiers.get(hash, size, &deploy.site).await {
                Ok((blob, source)) => {
                    facts.cache = Some(CacheStatus::Tier(source));
                    // The tiers hand out only blobs of the size asked for; sliced within it.
                    match blob {
                        crate::tiers::Blob::Bytes(b) if start == 0 && end == size => Body::full(b),
                        crate::tiers::Blob::Bytes(b) => {
                            Body::full(b.slice(start as usize..end as usize))
                        }
                        other => Body::Stream {
                            stream: other.into_stream(start, end),
                            len: end - start,
                        },
                    }
                }
                Err(e) => return self.failure(&e, "blob fetch"),
            }
        };
        if let Some(c) = facts.cache {
            h.insert(CACHE_STATUS.clone(), HeaderValue::from_static(c.as_str()));
        }
        facts.bytes = Some(if head_only { 0 } else { end - start });
        let mut r = Response::new(body);
        *r.status_mut() = status;
        *r.headers_mut() = h;
        r
    }
}

#[cfg(test)]
mod size_tests {
    /// The future a connection holds per request stays small (the decision is boxed).
    #[test]
    fn serve_future_is_small() {
        fn size_of<F: Future>(_: &F) -> usize {
            std::mem::size_of::<F>()
        }
        let store: std::sync::Arc<dyn origin_client::Store> =
            std::sync::Arc::new(origin_client::store::MemoryStore::new());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let cfg = edge_config::Config::default();
            let handler = crate::node::build_handler(&cfg, store, false)
                .await
                .unwrap();
            let req = http::Request::get("/").body(()).unwrap();
            let fut = handler.handle(req);
            let n = size_of(&fut);
            eprintln!("Handler::handle future: {n} bytes");
            assert!(n < 2048, "{n} bytes");
        });
    }
}

/// Origin failures keep their kind through coalescing and streaming, on simulated time.
#[cfg(test)]
mod failure_tests {

    use std::sync::Arc;
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    use origin_client::publish::{PublishOptions, publish};
    use origin_client::resilience::{
        BreakerConfig, BreakerState, Face, FaceConfig, ResilienceConfig, ResilientStore,
        RetryConfig,
    };

    use crate::testing::{FaultStore, handler};
    use crate::tiers::DiskTier;

    fn faces() -> ResilienceConfig {
        let face = FaceConfig {
            breaker: BreakerConfig {
                consecutive_failures: 3,
                open_for: Duration::from_secs(30),
                ..BreakerConfig::default()
            },
            retry: RetryConfig {
                max_attempts: 1,
                ..RetryConfig::default()
            },
            first_byte_timeout: Duration::from_secs(1),
            total_base: Duration::from_secs(2),
            min_rate: 1 << 30,
            concurrency: 64,
            queue: 1024,
        };
        ResilienceConfig {
            meta: face.clone(),
            objects: face,
        }
    }

    async fn site(files: &[(&str, Vec<u8>)]) -> (Arc<FaultStore>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let site = dir.path().join("site");
        for (p, d) in files {
            let p = site.join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, d).unwrap();
        }
        let store = Arc::new(FaultStore::default());
        publish(&*store, &site, "s", &PublishOptions::default())
            .await
            .unwrap();
        (store, dir)
    }

    async fn get(h: &crate::http::Handler, path: &str) -> (u16, Option<String>) {
        let req = http::Request::get(path)
            .header("host", "example.test")
            .body(())
            .unwrap();
        let r = h.handle(req).await;
        let retry = r
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_owned());
        (r.status().as_u16(), retry)
    }

    /// The review's defect: a root-tree timeout seen by several coalesced waiters turned into a
    /// 500 for all but one. Every waiter now gets the 504.
    #[tokio::test(start_paused = true)]
    async fn a_root_tree_timeout_is_a_504_for_all_50_waiters() {
        let (faults, _dir) = site(&[("index.html", b"home".to_vec())]).await;
        FaultStore::set(&faults.objects_hang, true);
        let origin = Arc::new(ResilientStore::new(faults.clone(), faces()));
        let h = handler(origin.clone(), "s", None);
        let answers = futures_util::future::join_all((0..50).map(|_| get(&h, "/"))).await;
        assert!(
            answers.iter().all(|(s, _)| *s == 504),
            "{:?}",
            answers.iter().map(|a| a.0).collect::<Vec<_>>()
        );
        assert_eq!(
            faults.object_reads.load(Ordering::SeqCst),
            1,
            "one coalesced root fetch for 50 waiters"
        );
        assert_eq!(
            origin.stats(Face::Objects).timeouts.load(Ordering::SeqCst),
            1
        );
        assert_eq!(h.pointers().lookups_in_flight(), 0);
        assert_eq!(h.trees().fetches_in_flight(), 0);
    }

    /// An origin that stalls mid-body: the response streams the fill as it is written, so its
    /// head (200) has gone out; the fill's transfer deadline cuts the body (never a complete
    /// response), the objects breaker counts each stalled body, and after its threshold it
    /// opens (503 with Retry-After, without asking the origin).
    #[tokio::test(start_paused = true)]
    async fn a_body_that_stalls_mid_way_is_a_504_and_opens_the_breaker() {
        let big: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 251) as u8).collect();
        let big_hash = origin_client::Hash::of(&big);
        let (faults, dir) = site(&[("index.html", b"home".to_vec()), ("big.bin", big)]).await;
        let disk = Arc::new(DiskTier::open(&dir.path().join("cache"), 64 << 20).unwrap());
        let origin = Arc::new(ResilientStore::new(faults.clone(), faces()));
        let h = handler(origin.clone(), "s", Some(disk.clone()));
        assert_eq!(
            get(&h, "/").await.0,
            200,
            "the tree is fetched before the stall"
        );
        faults.stall_after.store(100_000, Ordering::SeqCst);
        let before = origin.stats(Face::Objects).failures.load(Ordering::SeqCst);
        for round in 0..3 {
            let req = http::Request::get("/big.bin")
                .header("host", "example.test")
                .body(())
                .unwrap();
            let r = h.handle(req).await;
            assert_eq!(r.status(), 200, "round {round}");
            // Read as a transport does: each frame dropped once taken (a response holds a
            // window of two blocks until they are).
            let mut body = r.into_body();
            let cut = loop {
                match http_body_util::BodyExt::frame(&mut body).await {
                    Some(Ok(_)) => {}
                    Some(Err(_)) => break true,
                    None => break false,
                }
            };
            assert!(cut, "round {round}: the stalled body is cut");
            // The body is cut as the fill fails; the fill's task ends just after.
            for _ in 0..100 {
                if h.tiers().fills_in_flight() == 0 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            assert_eq!(h.tiers().fills_in_flight(), 0, "round {round}");
        }
        let objects = origin.stats(Face::Objects);
        assert_eq!(objects.failures.load(Ordering::SeqCst) - before, 3);
        assert_eq!(origin.breaker_state(Face::Objects), BreakerState::Open);
        let reads = faults.object_reads.load(Ordering::SeqCst);
        let (status, retry) = get(&h, "/big.bin").await;
        assert_eq!(status, 503);
        assert!(retry.is_some_and(|r| r.parse::<u64>().unwrap() >= 1));
        assert_eq!(
            faults.object_reads.load(Ordering::SeqCst),
            reads,
            "not asked while open"
        );
        assert!(disk.lookup(&big_hash).is_none(), "no partial file is kept");
        // The small file it already has keeps serving.
        assert_eq!(get(&h, "/").await.0, 200);
    }
}
