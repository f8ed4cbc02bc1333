//! The listeners around the one request handler: every socket the node binds and every accept
//! loop it runs. Cleartext HTTP/1.1 + h2c and HTTPS with HTTP/2 and HTTP/1.1 by ALPN on the
//! serving threads ([`tcp`], certificates in [`tls`]), and HTTP/3 over QUIC on the same
//! threads ([`quic`]).
//! `listen` knows the handler, not how it is built: it never imports `node` or `cli`.
//!
//! Every protocol ends in `Handler::serve`, which alone decides what a request gets. What a
//! listener adds is transport policy, in [`Front`]: the redirect of cleartext requests to
//! HTTPS, `Strict-Transport-Security` and `Alt-Svc` on secure responses, and for HTTP/3 the
//! `Date` header that hyper adds for HTTP/1.1 and HTTP/2.

pub mod conn;
pub mod ocsp;
pub mod plain;
pub mod quic;
pub mod tcp;
pub mod tls;
pub mod version;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use edge_config::Config;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode};

use crate::http::{Body, Handler};
use tls::CertStore;

/// The prefix of ACME HTTP-01 challenges, which the cleartext listener serves even when it
/// redirects everything else to HTTPS (a certificate authority fetches them over http://).
pub const ACME_CHALLENGE: &str = "/.well-known/acme-challenge/";

/// What one listener adds around the handler.
#[derive(Debug, Clone, Default)]
pub struct Front {
    /// Cleartext listener with `tls.redirect_http`: redirect to `https://` on this port.
    redirect_port: Option<u16>,
    /// Added to every response (HSTS, Alt-Svc).
    headers: HeaderMap,
}

impl Front {
    /// The cleartext listener: redirects to HTTPS when configured, otherwise the handler.
    pub fn cleartext(cfg: &Config, tls_port: Option<u16>) -> Front {
        let redirect_port = match &cfg.tls {
            Some(t) if t.redirect_http => tls_port,
            _ => None,
        };
        Front {
            redirect_port,
            headers: HeaderMap::new(),
        }
    }

    /// The HTTPS listener: HSTS when configured, and `Alt-Svc` naming HTTP/3 when it is on.
    pub fn https(cfg: &Config, port: u16, http3: bool) -> Front {
        let mut f = Front::h3(cfg);
        if http3 {
            f.headers
                .insert(header::ALT_SVC, alt_svc(port, cfg.http3.alt_svc_max_age));
        }
        f
    }

    /// The HTTP/3 listener: HSTS when configured.
    pub fn h3(cfg: &Config) -> Front {
        let mut headers = HeaderMap::new();
        if let Some(h) = cfg.tls.as_ref().and_then(|t| t.hsts.as_ref()) {
            headers.insert(header::STRICT_TRANSPORT_SECURITY, hsts(h));
        }
        Front {
            redirect_port: None,
            headers,
        }
    }

    /// Answers one request: the redirect, or the handler's response with this listener's
    /// headers added.
    pub async fn respond<B>(&self, handler: &Handler, req: http::Request<B>) -> Response<Body> {
        if let Some(v) = req.headers().get(version::MARKER) {
            return version_not_supported(v);
        }
        if let Some(port) = self.redirect_port
            && let Some(r) = redirect(port, &req)
        {
            return r;
        }
        let mut resp = handler.handle(req).await;
        if !self.headers.is_empty() {
            let h = resp.headers_mut();
            for (k, v) in &self.headers {
                h.insert(k.clone(), v.clone());
            }
        }
        resp
    }
}

/// 505 for a request line with HTTP major version 2 or more in HTTP/1 framing (marked by
/// [`version::VersionShim`]); the connection is closed after it.
fn version_not_supported(sent: &HeaderValue) -> Response<Body> {
    let sent = String::from_utf8_lossy(sent.as_bytes());
    let body = format!(
        "505 HTTP Version Not Supported: HTTP/{sent} in HTTP/1 framing; use HTTP/1.1, or HTTP/2 by ALPN or prior knowledge\n"
    );
    Response::builder()
        .status(StatusCode::HTTP_VERSION_NOT_SUPPORTED)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .header(header::CACHE_CONTROL, "no-store")
        .header(header::CONNECTION, "close")
        .body(Body::full(body))
        .unwrap_or_else(|_| Response::new(Body::Empty))
}

/// `h3=":PORT"; ma=SECONDS`.
pub fn alt_svc(port: u16, max_age: Duration) -> HeaderValue {
    HeaderValue::from_str(&format!("h3=\":{port}\"; ma={}", max_age.as_secs()))
        .unwrap_or(HeaderValue::from_static("clear"))
}

fn hsts(h: &edge_config::Hsts) -> HeaderValue {
    let mut v = format!("max-age={}", h.max_age.as_secs());
    if h.include_subdomains {
        v.push_str("; includeSubDomains");
    }
    HeaderValue::from_str(&v).unwrap_or(HeaderValue::from_static("max-age=0"))
}

/// The redirect of a cleartext request to the same URL on `https://` (port `port`): 301 for
/// GET and HEAD, 308 (method kept) for others. `None` (serve it) for ACME challenges and for
/// requests that name no usable host.
fn redirect<B>(port: u16, req: &http::Request<B>) -> Option<Response<Body>> {
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    if path.starts_with(ACME_CHALLENGE) {
        return None;
    }
    let authority = match req.uri().authority() {
        Some(a) => a.clone(),
        None => req
            .headers()
            .get(header::HOST)?
            .to_str()
            .ok()?
            .parse::<http::uri::Authority>()
            .ok()?,
    };
    let host = authority.host();
    if host.is_empty() {
        return None;
    }
    let location = if port == 443 {
        format!("https://{host}{path}")
    } else {
        format!("https://{host}:{port}{path}")
    };
    let location = HeaderValue::from_str(&location).ok()?;
    let status = if matches!(*req.method(), Method::GET | Method::HEAD) {
        StatusCode::MOVED_PERMANENTLY
    } else {
        StatusCode::PERMANENT_REDIRECT
    };
    Response::builder()
        .status(status)
        .header(header::LOCATION, location)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Body::full("this site is served over https\n"))
        .ok()
}

/// HTTPS and HTTP/3 with their certificates loaded and sockets bound.
pub struct Secure {
    /// The TCP address; HTTP/3 listens on the same port over UDP.
    pub addr: SocketAddr,
    pub certs: Arc<CertStore>,
    tcp: Vec<std::net::TcpListener>,
    quic: Option<quic::Sockets>,
}

impl Secure {
    /// Loads the certificates and binds `workers` TCP sockets and, with HTTP/3 on, `workers`
    /// UDP sockets on the same port (`SO_REUSEPORT` both: one of each per serving thread).
    /// `None` when TLS is off.
    pub async fn bind(
        cfg: &Config,
        workers: usize,
        ocsp: Arc<tls::OcspStats>,
    ) -> anyhow::Result<Option<Secure>> {
        let Some(t) = &cfg.tls else { return Ok(None) };
        let dir = t.cert_dir.clone();
        let certs = tokio::task::spawn_blocking(move || CertStore::load(&dir, ocsp))
            .await?
            .context("`tls.cert_dir` (--cert-dir)")?;
        let certs = Arc::new(certs);
        // With port 0 the TCP sockets pick a port and UDP must get the same number; should
        // UDP find it taken, try another.
        let attempts = if t.listen.port() == 0 { 8 } else { 1 };
        for attempt in 1..=attempts {
            let tcp =
                tcp::bind_reuseport(t.listen, workers).context("`tls.listen` (--tls-listen)")?;
            let addr = tcp[0].local_addr()?;
            if !cfg.http3.enabled {
                return Ok(Some(Secure {
                    addr,
                    certs,
                    tcp,
                    quic: None,
                }));
            }
            match quic::bind_reuseport(addr, tcp.len()) {
                Ok(udp) => {
                    let shared = quic::Shared::new(certs.clone(), &cfg.http3, udp.len())?;
                    return Ok(Some(Secure {
                        addr,
                        certs,
                        tcp,
                        quic: Some(quic::Sockets { udp, shared }),
                    }));
                }
                Err(e) if attempt < attempts && e.kind() == std::io::ErrorKind::AddrInUse => {}
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!("`tls.listen` (--tls-listen): binding UDP {addr} for HTTP/3")
                    });
                }
            }
        }
        unreachable!("the last attempt returns")
    }

    pub fn http3(&self) -> bool {
        self.quic.is_some()
    }
}

/// Serves the cleartext listeners and, when given, HTTPS and HTTP/3 until `shutdown` turns
/// true, then drains them for up to `drain`: all of them on the serving threads, each with
/// its own socket of each. Certificates reload on SIGHUP and, with `tls.watch`, when their
/// files change.
pub async fn run(
    handler: Arc<Handler>,
    cfg: &Config,
    plain: Vec<std::net::TcpListener>,
    secure: Option<Secure>,
    shutdown: tokio::sync::watch::Receiver<bool>,
    drain: Duration,
) -> anyhow::Result<()> {
    let mut services = vec![tcp::TcpService {
        listeners: plain,
        front: Front::cleartext(cfg, secure.as_ref().map(|s| s.addr.port())),
        tls: None,
    }];
    let mut quic = None;
    let mut _reloader = None;
    if let (Some(s), Some(t)) = (secure, &cfg.tls) {
        _reloader = Some(tls::spawn_reloader(s.certs.clone(), t.watch)?);
        services.push(tcp::TcpService {
            listeners: s.tcp,
            front: Front::https(cfg, s.addr.port(), s.quic.is_some()),
            tls: Some(tls::TlsServing {
                acceptor: tokio_rustls::TlsAcceptor::from(tls::tcp_config(s.certs.clone())?),
                handshake_timeout: t.handshake_timeout,
            }),
        });
        quic = s.quic.map(|sockets| quic::Service {
            sockets,
            front: Arc::new(Front::h3(cfg)),
            settings: quic::Settings {
                http3: cfg.http3.clone(),
                limits: cfg.limits,
                header_read_timeout: cfg.header_read_timeout,
            },
        });
    }
    let settings = tcp::Settings {
        header_read_timeout: cfg.header_read_timeout,
        gate: conn::Gate::new(cfg.limits, handler.metrics().clone()),
    };
    tracing::info!(
        max_connections = settings.gate.max(),
        "client connections capped (server.max_connections)"
    );
    tcp::run_workers(handler, services, quic, settings, shutdown, drain).await
}

/// Installs the SIGINT/SIGTERM handlers now and returns the future that resolves on either.
/// Call it before announcing readiness: a signal that arrives before its handler is installed
/// gets the default action (the process dies without draining).
pub fn shutdown_signal_installed() -> impl Future<Output = ()> {
    #[cfg(unix)]
    let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    #[cfg(unix)]
    let int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()).ok();
    async move {
        #[cfg(unix)]
        {
            let term = async {
                match term {
                    Some(mut s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            let int = async {
                match int {
                    Some(mut s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                () = term => {}
                () = int => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
        tracing::info!("shutting down");
    }
}

/// Adds a header to a map unless present (used for `Date` on HTTP/3).
pub(crate) fn insert_default(
    h: &mut HeaderMap,
    name: HeaderName,
    value: impl FnOnce() -> HeaderValue,
) {
    if !h.contains_key(&name) {
        h.insert(name, value());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, uri: &str, host: Option<&str>) -> http::Request<()> {
        let mut b = http::Request::builder().method(method).uri(uri);
        if let Some(h) = host {
            b = b.header("host", h);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn redirects_keep_host_path_and_query() {
        let r = redirect(8443, &req("GET", "/a%20b/?x=1", Some("example.com:8080"))).unwrap();
        assert_eq!(r.status(), 301);
        assert_eq!(
            r.headers()["location"],
            "https://example.com:8443/a%20b/?x=1"
        );
        let r = redirect(443, &req("POST", "/", Some("[::1]:80"))).unwrap();
        assert_eq!(r.status(), 308);
        assert_eq!(r.headers()["location"], "https://[::1]/");
        assert!(redirect(443, &req("GET", "/.well-known/acme-challenge/t", Some("a"))).is_none());
        assert!(redirect(443, &req("GET", "/", None)).is_none());
        assert!(redirect(443, &req("GET", "/", Some("bad host"))).is_none());
    }

    #[test]
    fn alt_svc_and_hsts_values() {
        assert_eq!(
            alt_svc(8443, Duration::from_secs(86_400)),
            "h3=\":8443\"; ma=86400"
        );
        let h = edge_config::Hsts {
            max_age: Duration::from_secs(31_536_000),
            include_subdomains: true,
        };
        assert_eq!(hsts(&h), "max-age=31536000; includeSubDomains");
    }
}
