//! The admin listener: metrics, health, readiness, per-site refresh and purge, and a status
//! page. On its own address (loopback by default); mutating endpoints need the bearer token.
//!
//! | endpoint | token | what |
//! | --- | --- | --- |
//! | `GET /metrics` | no | Prometheus text |
//! | `GET /healthz` | no | 200 while the process runs |
//! | `GET /readyz` | no | 200 once pointers are loaded and listeners are up, else 503 |
//! | `GET /status` | no | JSON; `GET /status.html` (or `Accept: text/html`) a small HTML page |
//! | `POST /sites/{site}/refresh` | yes | re-read the site's pointer now |
//! | `POST /sites/{site}/purge` | yes | drop the site's pointer and cached tree nodes |

use std::convert::Infallible;
use std::fmt::Write;
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

use crate::http::Handler;
use crate::metrics::{counter, gauge};

pub struct Admin {
    handler: Arc<Handler>,
    origin: Option<Arc<ResilientStore>>,
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
        Arc::new(Admin {
            handler,
            origin,
            token: token.map(|t| blake3::hash(t.as_bytes())),
            ready: AtomicBool::new(false),
            started: Instant::now(),
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
            (&Method::GET, ["metrics"]) => reply(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                self.metrics_text(),
            ),
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

    fn metrics_text(&self) -> String {
        let mut out = String::with_capacity(8192);
        let h = &self.handler;
        h.metrics().render(&mut out);
        let t = h.tiers();
        let ts = &t.stats;
        out.push_str("# HELP edge_tier_hits_total Blob lookups answered by each tier (origin: fetched).\n# TYPE edge_tier_hits_total counter\n");
        let _ = writeln!(
            out,
            "edge_tier_hits_total{{tier=\"memory\"}} {}",
            ts.memory_hits.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "edge_tier_hits_total{{tier=\"disk\"}} {}",
            ts.disk_hits.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "edge_tier_hits_total{{tier=\"origin\"}} {}",
            ts.origin_fetches.load(Relaxed)
        );
        counter(
            &mut out,
            "edge_verify_failures_total",
            "Objects that failed their hash or size check.",
            ts.verify_failures.load(Relaxed),
        );
        counter(
            &mut out,
            "edge_size_mismatches_total",
            "Cached blobs not served for a tree entry that declares another size for their hash.",
            ts.size_mismatches.load(Relaxed),
        );
        counter(
            &mut out,
            "edge_site_shed_total",
            "Origin fetches refused because a site's bulkhead was full.",
            ts.site_shed.load(Relaxed),
        );
        out.push_str(
            "# HELP edge_tier_bytes Bytes held by each tier.\n# TYPE edge_tier_bytes gauge\n",
        );
        let _ = writeln!(
            out,
            "edge_tier_bytes{{tier=\"memory\"}} {}",
            t.memory_bytes()
        );
        let _ = writeln!(
            out,
            "edge_tier_bytes{{tier=\"tree\"}} {}",
            h.trees().bytes()
        );
        if let Some(d) = t.disk() {
            let _ = writeln!(out, "edge_tier_bytes{{tier=\"disk\"}} {}", d.bytes());
            gauge(
                &mut out,
                "edge_disk_capacity_bytes",
                "Byte bound of the disk tier.",
                d.capacity() as f64,
            );
            counter(
                &mut out,
                "edge_disk_evictions_total",
                "Objects evicted from the disk tier.",
                d.evictions(),
            );
        }
        let rs = &h.pointers().stats;
        counter(
            &mut out,
            "edge_pointer_rejected_total",
            "Alarm: pointers refused (root not fetchable or verifiable, or vanished at the origin).",
            rs.pointers_rejected.load(Relaxed),
        );
        counter(
            &mut out,
            "edge_pointer_refresh_failures_total",
            "Pointer refreshes that failed (the cached pointer was kept).",
            rs.refresh_failures.load(Relaxed),
        );
        gauge(
            &mut out,
            "edge_sites",
            "Sites with a cached deploy.",
            h.pointers().deploys().len() as f64,
        );
        if let Some(o) = &self.origin {
            out.push_str("# HELP edge_origin_requests_total Origin requests by face and outcome.\n# TYPE edge_origin_requests_total counter\n");
            out.push_str("# HELP edge_origin_breaker_state Breaker state per face: 0 closed, 1 half-open, 2 open.\n# TYPE edge_origin_breaker_state gauge\n");
            for face in [Face::Meta, Face::Objects] {
                let s = o.stats(face);
                let f = face.as_str();
                for (outcome, v) in [
                    ("success", s.successes.load(Relaxed)),
                    ("failure", s.failures.load(Relaxed)),
                    ("retry", s.retries.load(Relaxed)),
                    ("timeout", s.timeouts.load(Relaxed)),
                    ("rejected_open", s.rejected_open.load(Relaxed)),
                    ("shed", o.limit(face).shed_count()),
                ] {
                    let _ = writeln!(
                        out,
                        "edge_origin_requests_total{{face=\"{f}\",outcome=\"{outcome}\"}} {v}"
                    );
                }
                let state = match o.breaker_state(face) {
                    origin_client::resilience::BreakerState::Closed => 0,
                    origin_client::resilience::BreakerState::HalfOpen => 1,
                    origin_client::resilience::BreakerState::Open => 2,
                };
                let _ = writeln!(out, "edge_origin_breaker_state{{face=\"{f}\"}} {state}");
            }
        }
        gauge(
            &mut out,
            "edge_uptime_seconds",
            "Seconds since start.",
            self.started.elapsed().as_secs_f64(),
        );
        out
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
