//! The admin listener: metrics, health, readiness, per-site refresh and purge, and a status
//! page. On its own address (loopback by default); mutating endpoints need the bearer token.
//!
//! | endpoint | token | what |
//! | --- | --- | --- |
//! | `GET /metrics` | no | Prometheus text (0.0.4); OpenMetrics when `Accept` asks for it |
//! | `GET /healthz` | no | 200 while the process runs |
//! | `GET /readyz` | no | 200 once pointers are loaded and listeners are up, else 503 |
//! | `GET /status` | no | JSON; `GET /status.html` (or `Accept: text/html`) a small HTML page |
//! | `POST /sites/{site}/refresh` | yes | re-read the site's pointer now |
//! | `POST /sites/{site}/purge` | yes | drop the site's pointer and cached tree nodes |
//!
//! Every `GET` endpoint answers `HEAD` too (the same headers, no body); other methods get 405
//! with `Allow`. The token goes in `Authorization: Bearer TOKEN` (the scheme in any case,
//! RFC 9110 11.1).
//!
//! What a browser on the same machine could otherwise do is refused, token or not:
//!
//! - **Host** (every endpoint): the name in `Host` (or an absolute URI's authority) must be
//!   `localhost`, a loopback IP, or the IP the listener is bound to (any IP when bound to
//!   `0.0.0.0`/`[::]`). Any other name gets 421: a page on `evil.example` that rebinds its
//!   name to 127.0.0.1 cannot read `/status`. The port is not compared: an ssh tunnel or a
//!   port forward changes it, and it is the name that a rebinding page controls. No `Host`
//!   (except on HTTP/1.0) or one that does not parse gets 400.
//! - **Cross-site** (the `POST` endpoints): `Sec-Fetch-Site` other than `same-origin` or
//!   `none`, or an `Origin` other than `http://` + an allowed name + the listener's port (or
//!   the port in `Host`), gets 403 before the token is looked at. A form on another site
//!   cannot purge; `curl` sends neither header and is not affected.

use std::fmt::{self, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Instant;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use origin_client::records::validate_site;
use origin_client::resilience::{BreakerState, Face, ResilientStore};
use origin_client::store::parents::Failure;
use serde_json::json;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::registry::Registry;

use crate::http::Handler;
use crate::metrics::{Format, counter, counter_family, gauge, gauge_family};
use crate::notify::{Hint, Notifier};
use crate::samples::{self, Sample, Samples};

/// Sites shown on the status page and in `/status`, busiest first.
pub const SITES_SHOWN: usize = 50;

pub struct Admin {
    handler: Arc<Handler>,
    origin: Option<Arc<ResilientStore>>,
    /// What `/metrics` shows: collectors that read the counters at scrape time.
    registry: Registry,
    /// blake3 of the token: compared in constant time (blake3::Hash's equality is).
    token: Option<blake3::Hash>,
    /// Which `Host` and `Origin` values are this listener's.
    guard: Guard,
    ready: AtomicBool,
    started: Instant,
    /// One sample a second while the admin listener runs ([`run`]).
    samples: Arc<Samples>,
    /// Pushed pointer changes, when `[notify]` is on ([`Admin::set_notify`]).
    notify: Arc<std::sync::OnceLock<Arc<Notifier>>>,
}

type Resp = Response<Full<Bytes>>;

fn reply(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Resp {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    r
}

fn json_reply(status: StatusCode, v: serde_json::Value) -> Resp {
    let mut body = serde_json::to_vec_pretty(&v).unwrap_or_default();
    body.push(b'\n');
    reply(status, "application/json", body)
}

fn method_not_allowed(allow: &'static str) -> Resp {
    let mut r = reply(
        StatusCode::METHOD_NOT_ALLOWED,
        "text/plain",
        "method not allowed\n",
    );
    r.headers_mut()
        .insert(header::ALLOW, header::HeaderValue::from_static(allow));
    r
}

fn refused(e: &Refused) -> Resp {
    tracing::debug!(reason = %e, "admin request refused");
    reply(e.status(), "text/plain", format!("{e}\n"))
}

/// Why a request was refused before any endpoint saw it.
#[derive(Debug, thiserror::Error)]
enum Refused {
    #[error("a Host header is required")]
    NoHost,
    #[error("more than one Host header")]
    ManyHosts,
    #[error("host {0:?} is not a host[:port]")]
    BadHost(String),
    #[error("host {0:?} is not this admin listener's address")]
    NotOurHost(String),
    #[error("cross-site request refused (Sec-Fetch-Site: {0:?})")]
    CrossSite(String),
    #[error("cross-origin request refused (Origin: {0:?})")]
    CrossOrigin(String),
}

impl Refused {
    fn status(&self) -> StatusCode {
        match self {
            Refused::NoHost | Refused::ManyHosts | Refused::BadHost(_) => StatusCode::BAD_REQUEST,
            Refused::NotOurHost(_) => StatusCode::MISDIRECTED_REQUEST,
            Refused::CrossSite(_) | Refused::CrossOrigin(_) => StatusCode::FORBIDDEN,
        }
    }
}

/// Which `Host` and `Origin` values belong to the admin listener (see the module docs). Does
/// no I/O.
#[derive(Debug, Clone, Copy)]
struct Guard {
    /// The bound address; `None` (no listener) allows loopback names only.
    listen: Option<SocketAddr>,
}

impl Guard {
    /// Whether `host` (a name or IP, IPv6 without brackets) is this listener's.
    fn name_allowed(self, host: &str, ip: Option<IpAddr>) -> bool {
        if host.eq_ignore_ascii_case("localhost") {
            return true;
        }
        // Any other name could be rebound to our address by its owner.
        let Some(ip) = ip else {
            return false;
        };
        ip.is_loopback()
            || self
                .listen
                .is_some_and(|l| l.ip() == ip || l.ip().is_unspecified())
    }

    /// Checks the request's `Host` (and an absolute URI's authority); returns the port it
    /// names, if any.
    fn check_host<B>(self, req: &Request<B>) -> Result<Option<u16>, Refused> {
        let mut hosts = req.headers().get_all(header::HOST).iter();
        let host = hosts.next();
        if hosts.next().is_some() {
            return Err(Refused::ManyHosts);
        }
        let mut port = None;
        let mut seen = false;
        let from_uri = req.uri().authority().map(|a| a.as_str().as_bytes());
        for value in from_uri.into_iter().chain(host.map(|h| h.as_bytes())) {
            seen = true;
            let text = String::from_utf8_lossy(value);
            let (name, ip, p) =
                split_host(&text).ok_or_else(|| Refused::BadHost(text.clone().into_owned()))?;
            if !self.name_allowed(name, ip) {
                return Err(Refused::NotOurHost(text.into_owned()));
            }
            port = port.or(p);
        }
        if !seen && req.version() != http::Version::HTTP_10 {
            return Err(Refused::NoHost);
        }
        Ok(port)
    }

    /// For the mutating endpoints: refuses what a browser marks as coming from another site
    /// or origin. `host_port`: the port in the request's `Host`.
    fn check_same_origin(
        self,
        headers: &header::HeaderMap,
        host_port: Option<u16>,
    ) -> Result<(), Refused> {
        for v in headers.get_all("sec-fetch-site") {
            let v = String::from_utf8_lossy(v.as_bytes());
            if !(v.eq_ignore_ascii_case("same-origin") || v.eq_ignore_ascii_case("none")) {
                return Err(Refused::CrossSite(v.into_owned()));
            }
        }
        for v in headers.get_all(header::ORIGIN) {
            let v = String::from_utf8_lossy(v.as_bytes());
            if !self.origin_allowed(&v, host_port) {
                return Err(Refused::CrossOrigin(v.into_owned()));
            }
        }
        Ok(())
    }

    /// `http://` + an allowed name + the listener's port or the `Host` port (80 when left
    /// out). `null` and every other scheme are refused.
    fn origin_allowed(self, origin: &str, host_port: Option<u16>) -> bool {
        let Some(rest) = origin
            .get(..7)
            .filter(|s| s.eq_ignore_ascii_case("http://"))
            .map(|_| &origin[7..])
        else {
            return false;
        };
        let Some((name, ip, port)) = split_host(rest) else {
            return false;
        };
        let port = port.unwrap_or(80);
        self.name_allowed(name, ip)
            && (self.listen.is_some_and(|l| l.port() == port) || host_port.unwrap_or(80) == port)
    }
}

/// Splits `host[:port]` (an IPv6 host in brackets): the name (brackets removed), its IP if
/// it is one, and the port. `None` for what is not that shape.
fn split_host(s: &str) -> Option<(&str, Option<IpAddr>, Option<u16>)> {
    let (name, ip, port) = if let Some(rest) = s.strip_prefix('[') {
        let (v6, after) = rest.split_once(']')?;
        let ip = IpAddr::V6(v6.parse::<Ipv6Addr>().ok()?);
        (v6, Some(ip), after)
    } else {
        let (name, port) = match s.find(':') {
            Some(i) => (&s[..i], &s[i..]),
            None => (s, ""),
        };
        (name, name.parse::<Ipv4Addr>().ok().map(IpAddr::V4), port)
    };
    let port = match port {
        "" => None,
        p => Some(p.strip_prefix(':')?.parse::<u16>().ok()?),
    };
    let name_ok = !name.is_empty()
        && (ip.is_some()
            || name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'));
    name_ok.then_some((name, ip, port))
}

impl Admin {
    pub fn new(
        handler: Arc<Handler>,
        origin: Option<Arc<ResilientStore>>,
        token: Option<&str>,
        listen: Option<SocketAddr>,
    ) -> Arc<Admin> {
        let started = Instant::now();
        let samples = Arc::new(Samples::default());
        let mut registry = Registry::default();
        registry.register_collector(Box::new(handler.metrics().clone()));
        registry.register_collector(Box::new(NodeStats {
            handler: handler.clone(),
            origin: origin.clone(),
            started,
            samples: samples.clone(),
        }));
        let notify = Arc::default();
        registry.register_collector(Box::new(crate::notify::Metrics(Arc::clone(&notify))));
        Arc::new(Admin {
            handler,
            origin,
            registry,
            token: token.map(|t| blake3::hash(t.as_bytes())),
            guard: Guard { listen },
            ready: AtomicBool::new(false),
            started,
            samples,
            notify,
        })
    }

    /// The counters now, as a sample (not yet in the ring). `filesystem`: the disk cache's
    /// filesystem (available, size) bytes, read by the caller off the async threads.
    pub fn read_sample(&self, filesystem: Option<(u64, u64)>) -> Sample {
        let h = &self.handler;
        let m = h.metrics();
        let t = h.tiers();
        let unix_s = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut s = Sample::new(Instant::now(), unix_s);
        s.requests = m.total_requests();
        s.bytes = m.response_bytes.load(Relaxed);
        s.tiers = [
            t.stats.memory_hits.load(Relaxed),
            t.stats.disk_hits.load(Relaxed),
            t.stats.origin_fetches.load(Relaxed),
        ];
        s.latency = m.latency.bucket_counts();
        s.shed = t.stats.site_shed.load(Relaxed);
        if let Some(o) = &self.origin {
            s.breakers = Some(FACES.map(|f| o.breaker_state(f).as_str()));
            let faces = FACES.map(|f| {
                let st = o.stats(f);
                samples::FaceCounts {
                    success: st.successes.load(Relaxed),
                    failure: st.failures.load(Relaxed),
                    timeout: st.timeouts.load(Relaxed),
                    rejected_open: st.rejected_open.load(Relaxed),
                    shed: o.limit(f).shed_count(),
                }
            });
            s.shed += faces.iter().map(|f| f.shed).sum::<u64>();
            s.origin = Some(faces);
        }
        s.sites = m.sites.counts();
        s.filesystem = filesystem;
        s
    }

    /// Reads the counters and adds the sample to the ring; returns its number.
    pub fn sample(&self, filesystem: Option<(u64, u64)>) -> u64 {
        self.samples.push(self.read_sample(filesystem))
    }

    /// The ring of per-second samples.
    pub fn samples(&self) -> &Samples {
        &self.samples
    }

    /// Takes a sample every `every` until dropped (the filesystem figures on the blocking
    /// pool).
    pub async fn sample_every(self: Arc<Self>, every: std::time::Duration) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let fs_dir = self.handler.tiers().disk().and_then(|d| {
            // `blobs/` of the disk tier: the parent of a blob's fan-out folder.
            d.path(&origin_client::Hash::of(b""))
                .ancestors()
                .nth(2)
                .map(std::path::Path::to_path_buf)
        });
        loop {
            tick.tick().await;
            let filesystem = match &fs_dir {
                Some(dir) => {
                    let dir = dir.clone();
                    tokio::task::spawn_blocking(move || filesystem_space(&dir))
                        .await
                        .ok()
                        .flatten()
                }
                None => None,
            };
            self.sample(filesystem);
        }
    }

    /// Marks the node ready (pointers loaded, listeners up).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Relaxed);
    }

    fn authorized(&self, req: &Request<hyper::body::Incoming>) -> bool {
        let Some(want) = self.token else {
            return true;
        };
        crate::http::headers::bearer_matches(req.headers(), &want)
    }

    /// Answers one request: the `Host` check, then the endpoint; `HEAD` as `GET` without the
    /// body.
    pub async fn handle(&self, req: Request<hyper::body::Incoming>) -> Resp {
        let host_port = match self.guard.check_host(&req) {
            Ok(port) => port,
            Err(e) => return refused(&e),
        };
        if req.method() != Method::HEAD {
            return self.route(req, host_port).await;
        }
        let (parts, body) = self.route(req, host_port).await.into_parts();
        let mut head = Response::from_parts(parts, Full::new(Bytes::new()));
        if let Some(len) = hyper::body::Body::size_hint(&body).exact() {
            head.headers_mut()
                .insert(header::CONTENT_LENGTH, header::HeaderValue::from(len));
        }
        head
    }

    async fn route(&self, req: Request<hyper::body::Incoming>, host_port: Option<u16>) -> Resp {
        let path = req.uri().path().to_owned();
        let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
        match (req.method(), segs.as_slice()) {
            (&Method::GET | &Method::HEAD, ["metrics"]) => {
                let accept = req.headers().get(header::ACCEPT);
                let format = Format::from_accept(accept.and_then(|v| v.to_str().ok()));
                match self.metrics_text(format) {
                    Ok(text) => reply(StatusCode::OK, format.content_type(), text),
                    Err(fmt::Error) => {
                        tracing::error!("metrics encoding failed");
                        reply(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            "text/plain",
                            "metrics encoding failed\n",
                        )
                    }
                }
            }
            (&Method::GET | &Method::HEAD, ["healthz"]) => {
                reply(StatusCode::OK, "text/plain", "ok\n")
            }
            (&Method::GET | &Method::HEAD, ["readyz"]) => {
                if self.ready.load(Relaxed) {
                    reply(StatusCode::OK, "text/plain", "ready\n")
                } else {
                    reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "not ready\n")
                }
            }
            (&Method::GET | &Method::HEAD, ["status"]) => {
                let html = req
                    .headers()
                    .get(header::ACCEPT)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|a| a.contains("text/html"));
                if html {
                    reply(
                        StatusCode::OK,
                        "text/html; charset=utf-8",
                        status_html(&self.status()),
                    )
                } else {
                    json_reply(StatusCode::OK, self.status())
                }
            }
            (&Method::GET | &Method::HEAD, ["status.html"]) => reply(
                StatusCode::OK,
                "text/html; charset=utf-8",
                status_html(&self.status()),
            ),
            (&Method::POST, ["sites", site, action @ ("refresh" | "purge")]) => {
                if let Err(e) = self.guard.check_same_origin(req.headers(), host_port) {
                    return refused(&e);
                }
                if !self.authorized(&req) {
                    let mut r = reply(
                        StatusCode::UNAUTHORIZED,
                        "text/plain",
                        "a valid bearer token is required\n",
                    );
                    r.headers_mut().insert(
                        header::WWW_AUTHENTICATE,
                        header::HeaderValue::from_static("Bearer realm=\"edge-admin\""),
                    );
                    return r;
                }
                if let Err(e) = validate_site(site) {
                    return json_reply(StatusCode::BAD_REQUEST, json!({ "error": e.to_string() }));
                }
                self.site_action(site, action).await
            }
            (_, ["metrics" | "healthz" | "readyz" | "status" | "status.html"]) => {
                method_not_allowed("GET, HEAD")
            }
            (_, ["sites", _, "refresh" | "purge"]) => method_not_allowed("POST"),
            _ => reply(
                StatusCode::NOT_FOUND,
                "text/plain",
                "no such admin endpoint\n",
            ),
        }
    }

    async fn site_action(&self, site: &str, action: &str) -> Resp {
        let pointers = self.handler.pointers();
        if action == "purge" {
            let dropped = pointers.purge_site(site);
            tracing::info!(site, ?dropped, "purged site");
            let notified = self.announce_purge(site).await;
            return json_reply(
                StatusCode::OK,
                json!({ "site": site, "purged": dropped.is_some(), "tree_nodes_dropped": dropped.unwrap_or(0), "notified": notified }),
            );
        }
        match pointers.refresh_site(site).await {
            Ok(Some(d)) => json_reply(
                StatusCode::OK,
                json!({ "site": site, "deploy": &*d.id, "seq": d.seq, "root": d.root.to_hex() }),
            ),
            Ok(None) => json_reply(
                StatusCode::NOT_FOUND,
                json!({ "site": site, "error": "the origin has no deploy for this site" }),
            ),
            Err(e) => json_reply(
                e.status(),
                json!({ "site": site, "error": crate::error::chain(&e) }),
            ),
        }
    }

    /// The exposition in `format`, from the registry.
    pub fn metrics_text(&self, format: Format) -> Result<String, fmt::Error> {
        let mut out = String::with_capacity(8192);
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(match format {
            Format::OpenMetrics => out,
            Format::Prometheus => crate::metrics::to_prometheus_text(&out),
        })
    }

    /// The status as JSON: the live counters (as before), and from the sample ring the rates
    /// of the last second, latency quantiles over the last [`samples::LATENCY_WINDOW`]
    /// seconds, the history of the last minutes, origin health per face and the busiest
    /// sites. Everything derived from samples names the sample it is from (`sample.seq`).
    pub fn status(&self) -> serde_json::Value {
        let h = &self.handler;
        let r = h.pointers();
        let ring = self.samples.all();
        let last = ring.last();
        let prev = ring.len().checked_sub(2).map(|i| &ring[i]);
        let pair = prev.zip(last);
        let site_rates: std::collections::HashMap<Arc<str>, samples::SiteRate> = pair
            .map(|(a, b)| samples::site_rates(a, b, usize::MAX))
            .unwrap_or_default()
            .into_iter()
            .map(|sr| (sr.site.clone(), sr))
            .collect();
        let stale_after = r.config().stale_after;
        let deploys = r.deploys();
        let mut sites: Vec<(f64, u64, serde_json::Value)> = deploys
            .iter()
            .map(|d| {
                let age = r.age(d);
                let sr = site_rates.get(&*d.site);
                let row = json!({
                    "site": &*d.site,
                    "deploy": &*d.id,
                    "seq": d.seq,
                    "root": d.root.to_hex(),
                    "pointer_age_s": age.as_secs(),
                    "stale": age > stale_after,
                    "requests": sr.map_or(0, |s| s.requests),
                    "requests_per_s": sr.map_or(0.0, |s| s.requests_per_s),
                    "bytes_per_s": sr.map_or(0.0, |s| s.bytes_per_s),
                    "hit_ratio": sr.and_then(|s| s.hit_ratio),
                    "refused": sr.map_or(0, |s| s.refused),
                });
                (
                    sr.map_or(0.0, |s| s.requests_per_s),
                    sr.map_or(0, |s| s.requests),
                    row,
                )
            })
            .collect();
        sites.sort_by(|a, b| {
            b.0.total_cmp(&a.0)
                .then(b.1.cmp(&a.1))
                .then_with(|| a.2["site"].as_str().cmp(&b.2["site"].as_str()))
        });
        sites.truncate(SITES_SHOWN);
        let sites: Vec<_> = sites.into_iter().map(|(_, _, v)| v).collect();
        let hosts: Vec<_> = r
            .hosts()
            .into_iter()
            .take(SITES_SHOWN)
            .map(|(h, s)| json!({"host": h, "site": &*s}))
            .collect();
        let t = h.tiers();
        let mem = t.stats.memory_hits.load(Relaxed);
        let disk = t.stats.disk_hits.load(Relaxed);
        let origin = t.stats.origin_fetches.load(Relaxed);
        let lookups = (mem + disk + origin).max(1) as f64;
        let breakers = self.origin.as_ref().map(|o| {
            json!({
                "meta": o.breaker_state(Face::Meta).as_str(),
                "objects": o.breaker_state(Face::Objects).as_str(),
                "meta_opened": o.breaker_opened(Face::Meta),
                "objects_opened": o.breaker_opened(Face::Objects),
            })
        });
        let rates = pair.map(|(a, b)| samples::rates(a, b));
        let window = ring.len().saturating_sub(1 + samples::LATENCY_WINDOW);
        let latency = ring.get(window).zip(last).map(|(a, b)| {
            let d = samples::latency_delta(a, b);
            let ms = |q| samples::quantile(&d, q).map(|s| samples::round3(s * 1000.0));
            json!({
                "p50_ms": ms(0.5),
                "p99_ms": ms(0.99),
                "window_s": samples::round3(b.at.saturating_duration_since(a.at).as_secs_f64()),
                "observations": d.iter().sum::<u64>(),
            })
        });
        let origin_faces = self.origin.as_ref().map(|o| {
            let face = |i: usize, f: Face| {
                let now = last.and_then(|s| s.origin).map(|o| o[i]);
                let before = prev.and_then(|s| s.origin).map(|o| o[i]);
                let secs = pair.map_or(0.0, |(a, b)| {
                    b.at.saturating_duration_since(a.at).as_secs_f64()
                });
                let per_s = |get: fn(&samples::FaceCounts) -> u64| match (before, now) {
                    (Some(a), Some(b)) if secs > 0.0 => {
                        samples::round3(get(&b).saturating_sub(get(&a)) as f64 / secs)
                    }
                    _ => 0.0,
                };
                let history: Vec<&str> = ring
                    .iter()
                    .filter_map(|s| s.breakers.map(|b| b[i]))
                    .collect();
                json!({
                    "state": o.breaker_state(f).as_str(),
                    "opened": o.breaker_opened(f),
                    "success": now.map_or(0, |c| c.success),
                    "failure": now.map_or(0, |c| c.failure),
                    "timeout": now.map_or(0, |c| c.timeout),
                    "rejected_open": now.map_or(0, |c| c.rejected_open),
                    "shed": now.map_or(0, |c| c.shed),
                    "success_per_s": per_s(|c| c.success),
                    "failure_per_s": per_s(|c| c.failure),
                    "timeout_per_s": per_s(|c| c.timeout),
                    "breaker_history": history,
                })
            };
            json!({ "meta": face(0, Face::Meta), "objects": face(1, Face::Objects) })
        });
        let history = {
            let steps: Vec<samples::Rates> = ring
                .windows(2)
                .map(|w| samples::rates(&w[0], &w[1]))
                .collect();
            let p99: Vec<Option<f64>> = ring
                .windows(2)
                .map(|w| {
                    samples::quantile(&samples::latency_delta(&w[0], &w[1]), 0.99)
                        .map(|s| samples::round3(s * 1000.0))
                })
                .collect();
            json!({
                "first_seq": ring.get(1).map(|s| s.seq),
                "requests_per_s": steps.iter().map(|r| r.requests_per_s).collect::<Vec<_>>(),
                "bytes_per_s": steps.iter().map(|r| r.bytes_per_s).collect::<Vec<_>>(),
                "hit_ratio": steps.iter().map(|r| r.hit_ratio).collect::<Vec<_>>(),
                "p99_ms": p99,
            })
        };
        json!({
            "uptime_s": self.started.elapsed().as_secs(),
            "ready": self.ready.load(Relaxed),
            "requests": h.metrics().total_requests(),
            "sample": last.map(|s| json!({ "seq": s.seq, "unix_s": s.unix_s })),
            "rates": rates.map(|r| json!({
                "interval_s": r.interval_s,
                "requests_per_s": r.requests_per_s,
                "bytes_per_s": r.bytes_per_s,
                "hit_ratio": r.hit_ratio,
                "memory_per_s": r.tiers_per_s[0],
                "disk_per_s": r.tiers_per_s[1],
                "origin_per_s": r.tiers_per_s[2],
                "shed_per_s": r.shed_per_s,
            })),
            "latency": latency,
            "history": history,
            "sites_total": deploys.len(),
            "sites": sites,
            "hosts": hosts,
            "tiers": {
                "memory": { "bytes": t.memory_bytes(), "hits": mem, "hit_ratio": mem as f64 / lookups },
                "disk": t.disk().map(|d| json!({
                    "bytes": d.bytes(), "capacity": d.capacity(), "objects": d.len(),
                    "evictions": d.evictions(), "hits": disk, "hit_ratio": disk as f64 / lookups,
                    "filesystem_avail": last.and_then(|s| s.filesystem).map(|f| f.0),
                    "filesystem_size": last.and_then(|s| s.filesystem).map(|f| f.1),
                })),
                "origin": { "fetches": origin, "ratio": origin as f64 / lookups },
                "tree_bytes": h.trees().bytes(),
            },
            "breakers": breakers,
            "origin": origin_faces,
            "parents": parents_status(h),
            "children": h.children().map(|c| {
                serde_json::Value::Object(
                    c.stats
                        .counts()
                        .into_iter()
                        .map(|(k, v)| (k.to_owned(), json!(v)))
                        .collect(),
                )
            }),
            "notify": self.notify.get().map(|n| n.status()),
        })
    }
}

/// Each parent's breaker and counters (`[tiers] parents`), for `/status`.
fn parents_status(h: &Handler) -> Vec<serde_json::Value> {
    h.tiers()
        .parents()
        .list()
        .iter()
        .map(|p| {
            let errors: serde_json::Map<String, serde_json::Value> = Failure::COUNTED
                .into_iter()
                .map(|k| (k.as_str().to_owned(), json!(p.stats.failures(k))))
                .collect();
            json!({
                "url": p.url(),
                "breaker": p.breaker_state().as_str(),
                "opened": p.breaker_opened(),
                "fetches": p.stats.fetches.load(Relaxed),
                "errors": errors,
            })
        })
        .collect()
}

/// A breaker's state as a gauge: 0 closed, 1 half-open, 2 open.
fn breaker_gauge(state: BreakerState) -> f64 {
    match state {
        BreakerState::Closed => 0.0,
        BreakerState::HalfOpen => 1.0,
        BreakerState::Open => 2.0,
    }
}

/// The node's figures that live outside [`crate::metrics::Metrics`] (tiers, resolver, disk,
/// origin faces), read at scrape time. Each family is written whole before the next starts.
struct NodeStats {
    handler: Arc<Handler>,
    origin: Option<Arc<ResilientStore>>,
    started: Instant,
    samples: Arc<Samples>,
}

/// The origin's faces, in the order samples and the status list them.
const FACES: [Face; 2] = [Face::Meta, Face::Objects];

impl fmt::Debug for NodeStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeStats").finish_non_exhaustive()
    }
}

impl Collector for NodeStats {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> fmt::Result {
        let h = &self.handler;
        let t = h.tiers();
        let ts = &t.stats;
        counter_family(
            &mut enc,
            "edge_tier_hits_total",
            "Blob lookups answered by each tier (origin: fetched).",
            [
                ("memory", ts.memory_hits.load(Relaxed)),
                ("disk", ts.disk_hits.load(Relaxed)),
                ("origin", ts.origin_fetches.load(Relaxed)),
            ]
            .map(|(tier, v)| ([("tier", tier)], v)),
        )?;
        counter(
            &mut enc,
            "edge_verify_failures_total",
            "Objects that failed their hash or size check.",
            ts.verify_failures.load(Relaxed),
        )?;
        counter(
            &mut enc,
            "edge_size_mismatches_total",
            "Cached blobs not served for a tree entry that declares another size for their hash.",
            ts.size_mismatches.load(Relaxed),
        )?;
        counter(
            &mut enc,
            "edge_fill_streams_total",
            "Responses that joined a large object's fill and streamed it as it was written.",
            ts.fill_streams.load(Relaxed),
        )?;
        let scrub = &ts.scrub;
        counter(
            &mut enc,
            "edge_disk_scrub_bytes_total",
            "Bytes of the disk tier read back and checked by the background scrub.",
            scrub.bytes.load(Relaxed),
        )?;
        counter(
            &mut enc,
            "edge_disk_scrub_files_total",
            "Disk-tier files the background scrub found whole and right.",
            scrub.files.load(Relaxed),
        )?;
        counter(
            &mut enc,
            "edge_disk_scrub_failures_total",
            "Disk-tier files the background scrub found damaged and dropped.",
            scrub.failures.load(Relaxed),
        )?;
        counter(
            &mut enc,
            "edge_disk_scrub_passes_total",
            "Passes of the background scrub over the whole disk tier.",
            scrub.passes.load(Relaxed),
        )?;
        counter(
            &mut enc,
            "edge_site_shed_total",
            "Origin fetches refused because a site's bulkhead was full.",
            ts.site_shed.load(Relaxed),
        )?;
        let disk = t.disk();
        let mut bytes = vec![
            ("memory", t.memory_bytes() as f64),
            ("tree", h.trees().bytes() as f64),
        ];
        if let Some(d) = disk {
            bytes.push(("disk", d.bytes() as f64));
        }
        gauge_family(
            &mut enc,
            "edge_tier_bytes",
            "Bytes held by each tier.",
            bytes.into_iter().map(|(tier, v)| ([("tier", tier)], v)),
        )?;
        if let Some(d) = disk {
            gauge(
                &mut enc,
                "edge_disk_capacity_bytes",
                "Byte bound of the disk tier.",
                d.capacity() as f64,
            )?;
            counter(
                &mut enc,
                "edge_disk_evictions_total",
                "Objects evicted from the disk tier.",
                d.evictions(),
            )?;
        }
        let rs = &h.pointers().stats;
        counter(
            &mut enc,
            "edge_pointer_rejected_total",
            "Alarm: pointers refused (root not fetchable or verifiable, or vanished at the origin).",
            rs.pointers_rejected.load(Relaxed),
        )?;
        counter(
            &mut enc,
            "edge_pointer_refresh_failures_total",
            "Pointer refreshes that failed (the cached pointer was kept).",
            rs.refresh_failures.load(Relaxed),
        )?;
        let pointers = h.pointers();
        let deploys = pointers.deploys();
        gauge(
            &mut enc,
            "edge_sites",
            "Sites with a cached deploy.",
            deploys.len() as f64,
        )?;
        let ages = deploys.iter().map(|d| pointers.age(d));
        let stale_after = pointers.stale_after();
        let (oldest, stale) = ages.fold((0.0f64, 0u64), |(m, n), a| {
            (m.max(a.as_secs_f64()), n + u64::from(a > stale_after))
        });
        gauge(
            &mut enc,
            "edge_pointer_max_age_seconds",
            "Age of the oldest cached deploy pointer: seconds since the origin last confirmed it.",
            oldest,
        )?;
        gauge(
            &mut enc,
            "edge_pointers_stale",
            "Cached deploy pointers older than the stale bound (served, but not confirmed lately).",
            stale as f64,
        )?;
        if let Some((avail, size)) = self.samples.latest().and_then(|s| s.filesystem) {
            gauge(
                &mut enc,
                "edge_disk_filesystem_avail_bytes",
                "Bytes available to the node on the disk cache's filesystem (read once a second).",
                avail as f64,
            )?;
            gauge(
                &mut enc,
                "edge_disk_filesystem_size_bytes",
                "Size of the disk cache's filesystem.",
                size as f64,
            )?;
        }
        if let Some(o) = &self.origin {
            // Both faces of one family, then both of the next: a family is one group.
            let outcomes = FACES.into_iter().flat_map(|face| {
                let s = o.stats(face);
                [
                    ("success", s.successes.load(Relaxed)),
                    ("failure", s.failures.load(Relaxed)),
                    ("retry", s.retries.load(Relaxed)),
                    ("timeout", s.timeouts.load(Relaxed)),
                    ("rejected_open", s.rejected_open.load(Relaxed)),
                    ("shed", o.limit(face).shed_count()),
                    // Not the origin's doing: this node ran out of descriptors or memory.
                    ("local_error", s.local_errors.load(Relaxed)),
                ]
                .map(|(outcome, v)| ([("face", face.as_str()), ("outcome", outcome)], v))
            });
            counter_family(
                &mut enc,
                "edge_origin_requests_total",
                "Origin requests by face and outcome.",
                outcomes,
            )?;
            let states = FACES.map(|face| {
                (
                    [("face", face.as_str())],
                    breaker_gauge(o.breaker_state(face)),
                )
            });
            gauge_family(
                &mut enc,
                "edge_origin_breaker_state",
                "Breaker state per face: 0 closed, 1 half-open, 2 open.",
                states,
            )?;
        }
        let parents = t.parents().list();
        if !parents.is_empty() {
            counter_family(
                &mut enc,
                "edge_parent_fetches_total",
                "Objects asked of each parent edge (tiers.parents), including those its open breaker refused.",
                parents
                    .iter()
                    .map(|p| ([("parent", p.url())], p.stats.fetches.load(Relaxed))),
            )?;
            counter_family(
                &mut enc,
                "edge_parent_errors_total",
                "Objects a parent did not give, by kind: wrong_bytes (failed the hash or size; read from the next source), not_found, breaker_open (not asked), error.",
                parents.iter().flat_map(|p| {
                    Failure::COUNTED.map(|k| {
                        (
                            [("parent", p.url()), ("kind", k.as_str())],
                            p.stats.failures(k),
                        )
                    })
                }),
            )?;
            gauge_family(
                &mut enc,
                "edge_parent_breaker_state",
                "Breaker state per parent edge: 0 closed, 1 half-open, 2 open.",
                parents
                    .iter()
                    .map(|p| ([("parent", p.url())], breaker_gauge(p.breaker_state()))),
            )?;
        }
        if let Some(c) = h.children() {
            counter_family(
                &mut enc,
                "edge_child_requests_total",
                "Object requests from child edges (GET /.edge/objects/<hash>), by result.",
                c.stats.counts().map(|(r, v)| ([("result", r)], v)),
            )?;
        }
        gauge(
            &mut enc,
            "edge_uptime_seconds",
            "Seconds since start.",
            self.started.elapsed().as_secs_f64(),
        )
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A number for an attribute: the JSON text of `v` (`null` for none), so the page and
/// `/status` carry the very same value.
fn num(v: &serde_json::Value) -> String {
    esc(&v.to_string())
}

/// A line chart of `values` (`null`s are gaps), `w` x `h`, from 0 to the larger of the
/// largest value and `min_top`, with the top value written in the corner.
fn svg_line(id: &str, values: &[serde_json::Value], min_top: f64, unit: &str) -> String {
    const W: f64 = 300.0;
    const H: f64 = 60.0;
    let xs: Vec<Option<f64>> = values.iter().map(serde_json::Value::as_f64).collect();
    let top = xs.iter().flatten().fold(min_top, |m, &x| m.max(x));
    let step = if xs.len() > 1 {
        W / (samples::RING - 1) as f64
    } else {
        0.0
    };
    // Right-aligned: the newest sample at the right edge.
    let x0 = W - step * xs.len().saturating_sub(1) as f64;
    let mut paths = String::new();
    let mut pen_down = false;
    for (i, x) in xs.iter().enumerate() {
        match x {
            Some(x) => {
                let px = x0 + step * i as f64;
                let py = H - 2.0 - (x / top).clamp(0.0, 1.0) * (H - 14.0);
                let _ = write!(
                    paths,
                    "{}{px:.1},{py:.1}",
                    if pen_down { " L" } else { " M" }
                );
                pen_down = true;
            }
            None => pen_down = false,
        }
    }
    format!(
        "<svg id=\"{id}\" class=\"chart\" viewBox=\"0 0 {W} {H}\" width=\"{W}\" height=\"{H}\" role=\"img\" data-points=\"{}\"><rect width=\"{W}\" height=\"{H}\" fill=\"#fafafa\" stroke=\"#ddd\"/><path d=\"{}\" fill=\"none\" stroke=\"#2a6fdb\" stroke-width=\"1.5\"/><text x=\"4\" y=\"11\" font-size=\"10\" fill=\"#666\">max {} {unit}</text></svg>",
        xs.len(),
        paths.trim_start(),
        esc(&samples::human_rate(top))
    )
}

/// A strip of the breaker's state, one bar per sample: green closed, amber half-open, red open.
fn svg_breaker(id: &str, states: &[serde_json::Value]) -> String {
    const W: f64 = 300.0;
    const H: f64 = 12.0;
    let step = W / samples::RING as f64;
    let x0 = W - step * states.len() as f64;
    let mut bars = String::new();
    for (i, s) in states.iter().enumerate() {
        let color = match s.as_str() {
            Some("closed") => "#3a3",
            Some("open") => "#d33",
            _ => "#e90",
        };
        let _ = write!(
            bars,
            "<rect x=\"{:.2}\" width=\"{:.2}\" height=\"{H}\" fill=\"{color}\"/>",
            x0 + step * i as f64,
            step + 0.05
        );
    }
    format!(
        "<svg id=\"{id}\" class=\"strip\" viewBox=\"0 0 {W} {H}\" width=\"{W}\" height=\"{H}\" role=\"img\"><rect width=\"{W}\" height=\"{H}\" fill=\"#eee\"/>{bars}</svg>"
    )
}

/// The status page, from the status JSON: human units, charts of the last minutes drawn
/// here as inline SVG (no script, no external asset: it works offline), refreshed every
/// two seconds. Every figure also carries its JSON value in `data-v`, and the page names
/// the sample it shows (`id="sample"`), so a test can compare it with `/status`.
pub fn status_html(v: &serde_json::Value) -> String {
    use samples::{human_age, human_bytes, human_ms, human_pct, human_rate};
    let f = |x: &serde_json::Value| x.as_f64().unwrap_or(0.0);
    let mut h = String::with_capacity(16384);
    h.push_str("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"2\"><title>edge status</title><style>body{font-family:system-ui,sans-serif;margin:1.5rem;color:#222}table{border-collapse:collapse;margin:0 0 1.2rem}td,th{border:1px solid #ccc;padding:.25rem .55rem;text-align:left}td.n{text-align:right;font-variant-numeric:tabular-nums}th{background:#f3f3f3}.stale,.open{color:#b00}.ok,.closed{color:#070}.half_open{color:#b60}h1{font-size:1.4rem;margin:0 0 .5rem}h2{font-size:1.1rem;margin:1rem 0 .4rem}.charts{display:flex;flex-wrap:wrap;gap:1rem}.charts figure{margin:0}figcaption{font-size:.85rem;color:#555}.big{font-size:1.3rem;font-weight:600}</style></head><body><h1>edge status</h1>");
    let _ = write!(
        h,
        "<p id=\"summary\">uptime <span id=\"uptime\" data-v=\"{}\">{}</span>, ready <span id=\"ready\">{}</span>, requests <span id=\"requests\">{}</span>, sample <span id=\"sample\">{}</span></p>",
        num(&v["uptime_s"]),
        human_age(v["uptime_s"].as_u64().unwrap_or(0)),
        v["ready"],
        v["requests"],
        num(&v["sample"]["seq"]),
    );
    let r = &v["rates"];
    let l = &v["latency"];
    let _ = write!(
        h,
        "<table id=\"now\"><tr><th>requests/s</th><th>bytes/s</th><th>hit ratio</th><th>shed/s</th><th>latency p50</th><th>latency p99</th></tr><tr><td class=\"n big\" id=\"rps\" data-v=\"{}\">{}</td><td class=\"n big\" id=\"bps\" data-v=\"{}\">{}/s</td><td class=\"n big\" id=\"hit-ratio\" data-v=\"{}\">{}</td><td class=\"n big\" id=\"shed\" data-v=\"{}\">{}</td><td class=\"n big\" id=\"p50\" data-v=\"{}\">{}</td><td class=\"n big\" id=\"p99\" data-v=\"{}\">{}</td></tr></table>",
        num(&r["requests_per_s"]),
        human_rate(f(&r["requests_per_s"])),
        num(&r["bytes_per_s"]),
        human_bytes(f(&r["bytes_per_s"])),
        num(&r["hit_ratio"]),
        human_pct(r["hit_ratio"].as_f64()),
        num(&r["shed_per_s"]),
        human_rate(f(&r["shed_per_s"])),
        num(&l["p50_ms"]),
        human_ms(l["p50_ms"].as_f64().map(|ms| ms / 1000.0)),
        num(&l["p99_ms"]),
        human_ms(l["p99_ms"].as_f64().map(|ms| ms / 1000.0)),
    );
    let hist = &v["history"];
    let series = |k: &str| hist[k].as_array().cloned().unwrap_or_default();
    let _ = write!(
        h,
        "<div class=\"charts\"><figure>{}<figcaption>requests/s, last {} s</figcaption></figure><figure>{}<figcaption>hit ratio (%), last {} s</figcaption></figure><figure>{}<figcaption>latency p99 (ms), per second</figcaption></figure></div>",
        svg_line("chart-rps", &series("requests_per_s"), 1.0, "/s"),
        series("requests_per_s").len(),
        svg_line(
            "chart-hit-ratio",
            &series("hit_ratio")
                .iter()
                .map(|x| x
                    .as_f64()
                    .map_or(serde_json::Value::Null, |x| json!(x * 100.0)))
                .collect::<Vec<_>>(),
            100.0,
            "%"
        ),
        series("hit_ratio").len(),
        svg_line("chart-p99", &series("p99_ms"), 1.0, "ms"),
    );

    let _ = write!(
        h,
        "<h2>Sites</h2><p>{} sites with a deploy; the busiest {} shown.</p><table id=\"sites\"><tr><th>site</th><th>requests/s</th><th>bytes/s</th><th>hit ratio</th><th>refused (503)</th><th>deploy</th><th>seq</th><th>pointer age</th><th>state</th></tr>",
        v["sites_total"],
        v["sites"].as_array().map_or(0, Vec::len)
    );
    for s in v["sites"].as_array().into_iter().flatten() {
        let stale = s["stale"].as_bool().unwrap_or(false);
        let _ = write!(
            h,
            "<tr><td>{}</td><td class=\"n site-rps\" data-v=\"{}\">{}</td><td class=\"n site-bps\" data-v=\"{}\">{}/s</td><td class=\"n site-hit\" data-v=\"{}\">{}</td><td class=\"n site-refused\" data-v=\"{}\">{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\" data-v=\"{}\">{}</td><td class=\"{}\">{}</td></tr>",
            esc(s["site"].as_str().unwrap_or("")),
            num(&s["requests_per_s"]),
            human_rate(f(&s["requests_per_s"])),
            num(&s["bytes_per_s"]),
            human_bytes(f(&s["bytes_per_s"])),
            num(&s["hit_ratio"]),
            human_pct(s["hit_ratio"].as_f64()),
            num(&s["refused"]),
            s["refused"],
            esc(s["deploy"].as_str().unwrap_or("")),
            s["seq"],
            num(&s["pointer_age_s"]),
            human_age(s["pointer_age_s"].as_u64().unwrap_or(0)),
            if stale { "stale" } else { "ok" },
            if stale { "stale" } else { "fresh" }
        );
    }
    h.push_str("</table><h2>Tiers</h2><table id=\"tiers\"><tr><th>tier</th><th>holds</th><th>lookups/s</th><th>hits</th><th>share since start</th></tr>");
    let tiers = &v["tiers"];
    let pct = |x: &serde_json::Value| human_pct(x.as_f64());
    let _ = write!(
        h,
        "<tr><td>memory</td><td class=\"n\" data-v=\"{}\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\" id=\"memory-hit-ratio\">{}</td></tr>",
        num(&tiers["memory"]["bytes"]),
        human_bytes(f(&tiers["memory"]["bytes"])),
        human_rate(f(&r["memory_per_s"])),
        tiers["memory"]["hits"],
        pct(&tiers["memory"]["hit_ratio"])
    );
    if tiers["disk"].is_object() {
        let d = &tiers["disk"];
        let used = f(&d["bytes"]) / f(&d["capacity"]).max(1.0);
        let fs = match (
            d["filesystem_avail"].as_f64(),
            d["filesystem_size"].as_f64(),
        ) {
            (Some(a), Some(s)) => {
                format!("; filesystem {} free of {}", human_bytes(a), human_bytes(s))
            }
            _ => String::new(),
        };
        let _ = write!(
            h,
            "<tr><td>disk</td><td class=\"n\" id=\"disk-bytes\" data-v=\"{}\">{} of {} ({}), {} objects{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\" id=\"disk-hit-ratio\">{}</td></tr>",
            num(&d["bytes"]),
            human_bytes(f(&d["bytes"])),
            human_bytes(f(&d["capacity"])),
            human_pct(Some(used)),
            d["objects"],
            esc(&fs),
            human_rate(f(&r["disk_per_s"])),
            d["hits"],
            pct(&d["hit_ratio"])
        );
    }
    let _ = write!(
        h,
        "<tr><td>origin</td><td class=\"n\">tree nodes {}</td><td class=\"n\">{}</td><td class=\"n\">{} fetches</td><td class=\"n\">{}</td></tr></table>",
        human_bytes(f(&tiers["tree_bytes"])),
        human_rate(f(&r["origin_per_s"])),
        tiers["origin"]["fetches"],
        pct(&tiers["origin"]["ratio"])
    );
    if v["origin"].is_object() {
        h.push_str("<h2>Origin</h2><table id=\"origin\"><tr><th>face</th><th>breaker</th><th>times opened</th><th>ok/s</th><th>failed/s</th><th>timeouts/s</th><th>refused while open</th><th>shed</th><th>breaker, last minutes</th></tr>");
        for face in ["meta", "objects"] {
            let o = &v["origin"][face];
            let state = o["state"].as_str().unwrap_or("");
            let _ = write!(
                h,
                "<tr><td>{face}</td><td id=\"breaker-{face}\" class=\"{}\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td></tr>",
                esc(state),
                esc(state),
                o["opened"],
                human_rate(f(&o["success_per_s"])),
                human_rate(f(&o["failure_per_s"])),
                human_rate(f(&o["timeout_per_s"])),
                o["rejected_open"],
                o["shed"],
                svg_breaker(
                    &format!("breaker-history-{face}"),
                    o["breaker_history"]
                        .as_array()
                        .map_or(&[][..], Vec::as_slice)
                ),
            );
        }
        h.push_str("</table>");
    }
    h.push_str("</body></html>\n");
    h
}

/// (available, size) bytes of the filesystem holding `dir`.
fn filesystem_space(dir: &std::path::Path) -> Option<(u64, u64)> {
    let st = rustix::fs::statvfs(dir).ok()?;
    Some((
        st.f_bavail.saturating_mul(st.f_frsize),
        st.f_blocks.saturating_mul(st.f_frsize),
    ))
}

/// Pushed pointer changes (`[notify]`): the purge's hint to the other nodes, `/status` and
/// `/metrics`.
impl Admin {
    /// Hands the node's NATS subscription to the admin side (once, before serving).
    pub fn set_notify(&self, notifier: Arc<Notifier>) {
        let _ = self.notify.set(notifier);
    }

    /// After a purge, tells the other nodes to refresh the site. `None` without `[notify]`;
    /// a failure is logged and answered `false` (the purge itself succeeded).
    async fn announce_purge(&self, site: &str) -> Option<bool> {
        let n = self.notify.get()?;
        match n.announce(&Hint::purged(site)).await {
            Ok(()) => Some(true),
            Err(e) => {
                tracing::warn!(site, error = %crate::error::chain(&e), "purge not announced over NATS; other nodes will see it when they poll");
                Some(false)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::RequestHead;
    use crate::metrics::exposition_problems;
    use crate::tiers::DiskTier;
    use origin_client::publish::{PublishOptions, publish};
    use origin_client::resilience::ResilienceConfig;
    use origin_client::store::MemoryStore;

    /// A whole node's handler over a published site, with a disk tier and both origin faces,
    /// so every family the admin listener writes is there.
    async fn admin() -> (Arc<Admin>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let site = dir.path().join("site");
        std::fs::create_dir_all(&site).unwrap();
        std::fs::write(site.join("index.html"), "<h1>home</h1>").unwrap();
        let store = MemoryStore::new();
        publish(&store, &site, "main", &PublishOptions::default())
            .await
            .unwrap();
        let origin = Arc::new(ResilientStore::new(
            Arc::new(store),
            ResilienceConfig::default(),
        ));
        let disk = Arc::new(DiskTier::open(&dir.path().join("cache"), 64 << 20).unwrap());
        let handler = crate::testing::handler(origin.clone(), "main", Some(disk));
        (Admin::new(handler, Some(origin), None, None), dir)
    }

    async fn get(admin: &Admin, path: &str) -> u16 {
        let uri: http::Uri = path.parse().unwrap();
        let mut headers = http::HeaderMap::new();
        headers.insert(header::HOST, header::HeaderValue::from_static("localhost"));
        let resp = admin
            .handler
            .serve(RequestHead {
                method: &Method::GET,
                uri: &uri,
                version: http::Version::HTTP_11,
                headers: &headers,
            })
            .await;
        resp.status().as_u16()
    }

    #[tokio::test]
    async fn every_family_is_one_group_with_its_help_and_type_first() {
        let (admin, _dir) = admin().await;
        assert_eq!(get(&admin, "/").await, 200);
        assert_eq!(get(&admin, "/").await, 200);
        assert_eq!(get(&admin, "/missing").await, 404);
        for format in [Format::Prometheus, Format::OpenMetrics] {
            let text = admin.metrics_text(format).unwrap();
            assert_eq!(
                exposition_problems(&text, format),
                Vec::<String>::new(),
                "{format:?}:\n{text}"
            );
            // The families that once interleaved per face: each whole, in one run of lines.
            for (family, n) in [
                ("edge_origin_requests_total{", 14),
                ("edge_origin_breaker_state{", 2),
                ("edge_tier_bytes{", 3),
                ("edge_tier_hits_total{", 3),
                ("edge_requests_total{", 15),
            ] {
                let lines: Vec<usize> = text
                    .lines()
                    .enumerate()
                    .filter(|(_, l)| l.starts_with(family))
                    .map(|(i, _)| i)
                    .collect();
                assert_eq!(lines.len(), n, "{family} in\n{text}");
                assert_eq!(lines[n - 1] - lines[0], n - 1, "{family} split in\n{text}");
            }
        }
        let classic = admin.metrics_text(Format::Prometheus).unwrap();
        for (name, kind) in [
            ("edge_requests_total", "counter"),
            ("edge_request_duration_seconds", "histogram"),
            ("edge_stale_serves_total", "counter"),
            ("edge_access_log_dropped_total", "counter"),
            ("edge_worker_yields_total", "counter"),
            ("edge_tier_hits_total", "counter"),
            ("edge_verify_failures_total", "counter"),
            ("edge_size_mismatches_total", "counter"),
            ("edge_site_shed_total", "counter"),
            ("edge_disk_scrub_bytes_total", "counter"),
            ("edge_disk_scrub_failures_total", "counter"),
            ("edge_tier_bytes", "gauge"),
            ("edge_disk_capacity_bytes", "gauge"),
            ("edge_disk_evictions_total", "counter"),
            ("edge_pointer_rejected_total", "counter"),
            ("edge_pointer_refresh_failures_total", "counter"),
            ("edge_sites", "gauge"),
            ("edge_origin_requests_total", "counter"),
            ("edge_origin_breaker_state", "gauge"),
            ("edge_uptime_seconds", "gauge"),
        ] {
            assert_eq!(
                classic.matches(&format!("# TYPE {name} {kind}\n")).count(),
                1,
                "{name} {kind} in\n{classic}"
            );
        }
        assert!(
            classic.contains("edge_requests_total{protocol=\"http1\",class=\"2xx\"} 2\n"),
            "{classic}"
        );
        assert!(classic.contains("edge_requests_total{protocol=\"http1\",class=\"4xx\"} 1\n"));
        assert!(classic.contains("edge_request_duration_seconds_count 3\n"));
        assert!(classic.contains("edge_origin_breaker_state{face=\"objects\"} 0"));
        assert!(classic.contains("edge_sites 1"), "{classic}");
    }

    fn host_req(version: http::Version, host: Option<&str>) -> Request<()> {
        let mut b = Request::builder().uri("/status").version(version);
        if let Some(h) = host {
            b = b.header(header::HOST, h);
        }
        b.body(()).unwrap()
    }

    fn guard(listen: &str) -> Guard {
        Guard {
            listen: Some(listen.parse().unwrap()),
        }
    }

    #[test]
    fn host_names_that_could_be_rebound_are_refused() {
        let g = guard("127.0.0.1:9901");
        let h11 = http::Version::HTTP_11;
        for ok in [
            "localhost",
            "LocalHost:9901",
            "127.0.0.1:9901",
            "127.0.0.1",
            "[::1]:9901",
            "[::1]",
            // a tunnel's port: the name is what matters
            "localhost:9000",
        ] {
            assert!(g.check_host(&host_req(h11, Some(ok))).is_ok(), "{ok}");
        }
        for (bad, status) in [
            ("evil.example", 421),
            ("evil.example:9901", 421),
            ("localhost.evil.example", 421),
            ("10.0.0.5:9901", 421),
            ("localhost:", 400),
            ("localhost:99999", 400),
            ("::1", 400),
            ("[::1", 400),
            ("a@localhost", 400),
            ("", 400),
        ] {
            let e = g.check_host(&host_req(h11, Some(bad))).unwrap_err();
            assert_eq!(e.status().as_u16(), status, "{bad}: {e}");
        }
        let e = g.check_host(&host_req(h11, None)).unwrap_err();
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        assert!(
            g.check_host(&host_req(http::Version::HTTP_10, None))
                .is_ok()
        );
        // An absolute URI's authority is checked too.
        let r = Request::builder()
            .uri("http://evil.example/status")
            .header(header::HOST, "localhost")
            .body(())
            .unwrap();
        assert!(matches!(g.check_host(&r), Err(Refused::NotOurHost(_))));
        // Two Host headers.
        let mut r = host_req(h11, Some("localhost"));
        r.headers_mut()
            .append(header::HOST, header::HeaderValue::from_static("localhost"));
        assert!(matches!(g.check_host(&r), Err(Refused::ManyHosts)));
    }

    #[test]
    fn the_listen_ip_is_allowed_and_any_ip_on_a_wildcard() {
        let g = guard("10.0.0.5:9901");
        assert!(
            g.check_host(&host_req(http::Version::HTTP_11, Some("10.0.0.5:9901")))
                .is_ok()
        );
        assert!(
            g.check_host(&host_req(http::Version::HTTP_11, Some("10.0.0.6:9901")))
                .is_err()
        );
        for any in [guard("0.0.0.0:9901"), guard("[::]:9901")] {
            for ok in ["10.0.0.6:9901", "[2001:db8::1]:9901", "localhost"] {
                assert!(
                    any.check_host(&host_req(http::Version::HTTP_11, Some(ok)))
                        .is_ok(),
                    "{ok}"
                );
            }
            let e = any
                .check_host(&host_req(http::Version::HTTP_11, Some("node.example:9901")))
                .unwrap_err();
            assert_eq!(e.status(), StatusCode::MISDIRECTED_REQUEST);
        }
        let none = Guard { listen: None };
        assert!(
            none.check_host(&host_req(http::Version::HTTP_11, Some("10.0.0.5")))
                .is_err()
        );
        assert!(
            none.check_host(&host_req(http::Version::HTTP_11, Some("localhost")))
                .is_ok()
        );
    }

    #[test]
    fn cross_site_and_cross_origin_posts_are_refused() {
        let g = guard("127.0.0.1:9901");
        let check = |pairs: &[(&str, &str)], host_port: Option<u16>| {
            let mut h = http::HeaderMap::new();
            for (k, v) in pairs {
                h.append(
                    header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    header::HeaderValue::from_str(v).unwrap(),
                );
            }
            g.check_same_origin(&h, host_port)
        };
        let p = Some(9901);
        assert!(check(&[], p).is_ok());
        assert!(check(&[("sec-fetch-site", "same-origin")], p).is_ok());
        assert!(check(&[("sec-fetch-site", "none")], p).is_ok());
        for origin in [
            "http://127.0.0.1:9901",
            "http://localhost:9901",
            "http://[::1]:9901",
        ] {
            assert!(check(&[("origin", origin)], p).is_ok(), "{origin}");
        }
        // Through a tunnel: the origin the browser saw.
        assert!(check(&[("origin", "http://localhost:9000")], Some(9000)).is_ok());
        for (k, v) in [
            ("sec-fetch-site", "cross-site"),
            ("sec-fetch-site", "same-site"),
            ("origin", "http://evil.example"),
            ("origin", "http://evil.example:9901"),
            ("origin", "http://localhost:3000"),
            ("origin", "https://localhost:9901"),
            ("origin", "null"),
        ] {
            let e = check(&[(k, v)], p).unwrap_err();
            assert_eq!(e.status(), StatusCode::FORBIDDEN, "{k}: {v}");
            assert!(e.to_string().contains(v), "{e}");
        }
        // Both: either one refuses.
        assert!(
            check(
                &[
                    ("sec-fetch-site", "same-origin"),
                    ("origin", "http://evil.example")
                ],
                p
            )
            .is_err()
        );
    }
}
