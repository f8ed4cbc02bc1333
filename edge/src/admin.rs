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

use std::convert::Infallible;
use std::fmt::{self, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Instant;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use origin_client::records::validate_site;
use origin_client::resilience::{Face, ResilientStore};
use serde_json::json;
use tokio::net::TcpListener;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::registry::Registry;

use crate::http::Handler;
use crate::metrics::{Format, counter, counter_family, gauge, gauge_family};

pub struct Admin {
    handler: Arc<Handler>,
    origin: Option<Arc<ResilientStore>>,
    /// What `/metrics` shows: collectors that read the counters at scrape time.
    registry: Registry,
    /// blake3 of the token: compared in constant time (blake3::Hash's equality is).
    token: Option<blake3::Hash>,
    ready: AtomicBool,
    started: Instant,
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

impl Admin {
    pub fn new(
        handler: Arc<Handler>,
        origin: Option<Arc<ResilientStore>>,
        token: Option<&str>,
    ) -> Arc<Admin> {
        let started = Instant::now();
        let mut registry = Registry::default();
        registry.register_collector(Box::new(handler.metrics().clone()));
        registry.register_collector(Box::new(NodeStats {
            handler: handler.clone(),
            origin: origin.clone(),
            started,
        }));
        Arc::new(Admin {
            handler,
            origin,
            registry,
            token: token.map(|t| blake3::hash(t.as_bytes())),
            ready: AtomicBool::new(false),
            started,
        })
    }

    /// Marks the node ready (pointers loaded, listeners up).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Relaxed);
    }

    fn authorized(&self, req: &Request<hyper::body::Incoming>) -> bool {
        let Some(want) = self.token else {
            return true;
        };
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        blake3::hash(given.as_bytes()) == want
    }

    pub async fn handle(&self, req: Request<hyper::body::Incoming>) -> Resp {
        let path = req.uri().path().to_owned();
        let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
        match (req.method(), segs.as_slice()) {
            (&Method::GET, ["metrics"]) => {
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
            (&Method::GET, ["healthz"]) => reply(StatusCode::OK, "text/plain", "ok\n"),
            (&Method::GET, ["readyz"]) => {
                if self.ready.load(Relaxed) {
                    reply(StatusCode::OK, "text/plain", "ready\n")
                } else {
                    reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "not ready\n")
                }
            }
            (&Method::GET, ["status"]) => {
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
            (&Method::GET, ["status.html"]) => reply(
                StatusCode::OK,
                "text/html; charset=utf-8",
                status_html(&self.status()),
            ),
            (&Method::POST, ["sites", site, action @ ("refresh" | "purge")]) => {
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
            (_, ["metrics" | "healthz" | "readyz" | "status" | "status.html"])
            | (_, ["sites", _, "refresh" | "purge"]) => reply(
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain",
                "method not allowed\n",
            ),
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
            return json_reply(
                StatusCode::OK,
                json!({ "site": site, "purged": dropped.is_some(), "tree_nodes_dropped": dropped.unwrap_or(0) }),
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

    pub fn status(&self) -> serde_json::Value {
        let h = &self.handler;
        let r = h.pointers();
        let stale_after = r.config().stale_after;
        let sites: Vec<_> = r
            .deploys()
            .iter()
            .map(|d| {
                let age = r.age(d);
                json!({
                    "site": &*d.site,
                    "deploy": &*d.id,
                    "seq": d.seq,
                    "root": d.root.to_hex(),
                    "pointer_age_s": age.as_secs(),
                    "stale": age > stale_after,
                })
            })
            .collect();
        let hosts: Vec<_> = r
            .hosts()
            .into_iter()
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
        json!({
            "uptime_s": self.started.elapsed().as_secs(),
            "ready": self.ready.load(Relaxed),
            "requests": h.metrics().total_requests(),
            "sites": sites,
            "hosts": hosts,
            "tiers": {
                "memory": { "bytes": t.memory_bytes(), "hits": mem, "hit_ratio": mem as f64 / lookups },
                "disk": t.disk().map(|d| json!({
                    "bytes": d.bytes(), "capacity": d.capacity(), "objects": d.len(),
                    "evictions": d.evictions(), "hits": disk, "hit_ratio": disk as f64 / lookups,
                })),
                "origin": { "fetches": origin, "ratio": origin as f64 / lookups },
                "tree_bytes": h.trees().bytes(),
            },
            "breakers": breakers,
        })
    }
}

/// The node's figures that live outside [`crate::metrics::Metrics`] (tiers, resolver, disk,
/// origin faces), read at scrape time. Each family is written whole before the next starts.
struct NodeStats {
    handler: Arc<Handler>,
    origin: Option<Arc<ResilientStore>>,
    started: Instant,
}

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
        gauge(
            &mut enc,
            "edge_sites",
            "Sites with a cached deploy.",
            h.pointers().deploys().len() as f64,
        )?;
        if let Some(o) = &self.origin {
            const FACES: [Face; 2] = [Face::Meta, Face::Objects];
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
                let state = match o.breaker_state(face) {
                    origin_client::resilience::BreakerState::Closed => 0.0,
                    origin_client::resilience::BreakerState::HalfOpen => 1.0,
                    origin_client::resilience::BreakerState::Open => 2.0,
                };
                ([("face", face.as_str())], state)
            });
            gauge_family(
                &mut enc,
                "edge_origin_breaker_state",
                "Breaker state per face: 0 closed, 1 half-open, 2 open.",
                states,
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

/// A small self-contained page (no external assets) from the status JSON.
pub fn status_html(v: &serde_json::Value) -> String {
    let mut h = String::with_capacity(4096);
    h.push_str("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>edge status</title><style>body{font-family:system-ui,sans-serif;margin:2rem;color:#222}table{border-collapse:collapse;margin:0 0 1.5rem}td,th{border:1px solid #ccc;padding:.3rem .6rem;text-align:left}th{background:#f3f3f3}.stale{color:#b00}.ok{color:#070}h1{font-size:1.4rem}</style></head><body><h1>edge status</h1>");
    let _ = write!(
        h,
        "<p id=\"summary\">uptime <span id=\"uptime\">{}</span> s, ready <span id=\"ready\">{}</span>, requests <span id=\"requests\">{}</span></p>",
        v["uptime_s"], v["ready"], v["requests"]
    );
    h.push_str("<h2>Sites</h2><table id=\"sites\"><tr><th>site</th><th>deploy</th><th>seq</th><th>pointer age (s)</th><th>state</th></tr>");
    for s in v["sites"].as_array().into_iter().flatten() {
        let stale = s["stale"].as_bool().unwrap_or(false);
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"{}\">{}</td></tr>",
            esc(s["site"].as_str().unwrap_or("")),
            esc(s["deploy"].as_str().unwrap_or("")),
            s["seq"],
            s["pointer_age_s"],
            if stale { "stale" } else { "ok" },
            if stale { "stale" } else { "fresh" }
        );
    }
    h.push_str("</table><h2>Tiers</h2><table id=\"tiers\"><tr><th>tier</th><th>bytes</th><th>hits</th><th>hit ratio</th></tr>");
    let tiers = &v["tiers"];
    let pct = |x: &serde_json::Value| format!("{:.1}%", x.as_f64().unwrap_or(0.0) * 100.0);
    let _ = write!(
        h,
        "<tr><td>memory</td><td>{}</td><td>{}</td><td id=\"memory-hit-ratio\">{}</td></tr>",
        tiers["memory"]["bytes"],
        tiers["memory"]["hits"],
        pct(&tiers["memory"]["hit_ratio"])
    );
    if tiers["disk"].is_object() {
        let _ = write!(
            h,
            "<tr><td>disk</td><td>{} of {}</td><td>{}</td><td id=\"disk-hit-ratio\">{}</td></tr>",
            tiers["disk"]["bytes"],
            tiers["disk"]["capacity"],
            tiers["disk"]["hits"],
            pct(&tiers["disk"]["hit_ratio"])
        );
    }
    let _ = write!(
        h,
        "<tr><td>origin</td><td></td><td>{}</td><td>{}</td></tr></table>",
        tiers["origin"]["fetches"],
        pct(&tiers["origin"]["ratio"])
    );
    if v["breakers"].is_object() {
        let _ = write!(
            h,
            "<h2>Origin breakers</h2><table id=\"breakers\"><tr><th>face</th><th>state</th><th>times opened</th></tr><tr><td>meta</td><td id=\"breaker-meta\">{}</td><td>{}</td></tr><tr><td>objects</td><td id=\"breaker-objects\">{}</td><td>{}</td></tr></table>",
            esc(v["breakers"]["meta"].as_str().unwrap_or("")),
            v["breakers"]["meta_opened"],
            esc(v["breakers"]["objects"].as_str().unwrap_or("")),
            v["breakers"]["objects_opened"]
        );
    }
    h.push_str("</body></html>\n");
    h
}

/// Serves the admin endpoints on `listener` until `shutdown` resolves.
pub async fn run(admin: Arc<Admin>, listener: TcpListener, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    continue;
                }
            },
            () = &mut shutdown => return,
        };
        let admin = admin.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let admin = admin.clone();
                async move { Ok::<_, Infallible>(admin.handle(req).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::Routes;
    use crate::http::{HttpConfig, RequestHead};
    use crate::metrics::exposition_problems;
    use crate::pointers::{Pointers, PointersConfig};
    use crate::tiers::{DiskTier, TierConfig, Tiers};
    use crate::trees::Trees;
    use origin_client::publish::{PublishOptions, publish};
    use origin_client::resilience::ResilienceConfig;
    use origin_client::store::MemoryStore;
    use std::time::Duration;

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
        let trees = Trees::new(origin.clone(), 1 << 20, Some(disk.clone()));
        let pointers = Pointers::new(
            origin.clone(),
            trees.clone(),
            PointersConfig {
                refresh_interval: Duration::from_secs(60),
                negative_ttl: Duration::from_secs(60),
                default_site: Some("main".into()),
                max_pointers: 1000,
                state_file: None,
                stale_after: Duration::from_secs(60),
            },
        );
        let tiers = Tiers::new(
            origin.clone(),
            &TierConfig {
                memory_bytes: 8 << 20,
                memory_max_object: 1 << 20,
                site_concurrency: 4,
                site_queue: 16,
            },
            Some(disk),
        );
        let handler = Arc::new(Handler::new(
            pointers,
            Routes::new(trees, 1 << 20),
            tiers,
            HttpConfig {
                cache_control_html: header::HeaderValue::from_static("no-cache"),
                cache_control_other: header::HeaderValue::from_static("max-age=60"),
            },
        ));
        (Admin::new(handler, Some(origin), None), dir)
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
                ("edge_origin_requests_total{", 12),
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
}
