//! An in-test HTTP/1.1 + HTTP/2 server (cleartext, or TLS with ALPN) whose behaviour is known:
//! a fixed delay per response, or a stall window during which every response is held. It
//! counts the requests it answered, to compare with what the generator reports. Also an
//! HTTP/3 server (quinn + h3) with the same behaviour and counts.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub const BODY: &[u8] = b"hello, load\n";

/// How the server answers.
#[derive(Debug, Clone, Copy)]
pub enum Behaviour {
    /// Every response waits this long.
    Delay(Duration),
    /// Responses are immediate, except that every request arriving within `len` starting
    /// `after` the first request is held until that window ends.
    Stall { after: Duration, len: Duration },
}

pub struct TestServer {
    pub addr: SocketAddr,
    count: Arc<AtomicU64>,
    h2_count: Arc<AtomicU64>,
    /// HTTP/3 servers: QUIC connections accepted.
    connections: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl TestServer {
    /// Requests answered so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::SeqCst)
    }

    /// Of those, over HTTP/2.
    pub fn h2_count(&self) -> u64 {
        self.h2_count.load(Ordering::SeqCst)
    }

    /// Connections accepted (HTTP/3 servers only).
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::SeqCst)
    }

    pub fn url(&self, scheme: &str) -> http::Uri {
        format!("{scheme}://{}/", self.addr).parse().unwrap()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How long a response waits under `b`; `first` is when the first request arrived.
fn wait_for(b: Behaviour, first: &OnceLock<Instant>) -> Duration {
    let now = Instant::now();
    match b {
        Behaviour::Delay(d) => d,
        Behaviour::Stall { after, len } => {
            let start = *first.get_or_init(|| now) + after;
            if now >= start && now < start + len {
                start + len - now
            } else {
                Duration::ZERO
            }
        }
    }
}

fn self_signed() -> (
    rustls::pki_types::CertificateDer<'static>,
    rustls::pki_types::PrivateKeyDer<'static>,
    String,
) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let pem = cert.cert.pem();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
    (cert.cert.der().clone(), key, pem)
}

/// Starts an HTTP/3 server on a UDP port of 127.0.0.1 with a fresh self-signed certificate
/// (ALPN h3). Returns the certificate's PEM too.
pub async fn start_h3(b: Behaviour) -> (TestServer, String) {
    let (cert, key, pem) = self_signed();
    let mut tls = rustls::ServerConfig::builder_with_protocol_versions(&[&rustls::version::TLS13])
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
    tls.alpn_protocols = vec![b"h3".to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).unwrap();
    let config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let endpoint = quinn::Endpoint::server(config, "127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = endpoint.local_addr().unwrap();
    let count = Arc::new(AtomicU64::new(0));
    let connections = Arc::new(AtomicU64::new(0));
    let first: Arc<OnceLock<Instant>> = Arc::new(OnceLock::new());
    let (c, conns) = (count.clone(), connections.clone());
    let task = tokio::spawn(async move {
        while let Some(incoming) = endpoint.accept().await {
            let (c, conns, first) = (c.clone(), conns.clone(), first.clone());
            tokio::spawn(async move {
                let Ok(conn) = incoming.await else { return };
                conns.fetch_add(1, Ordering::SeqCst);
                let Ok(mut h3) =
                    h3::server::Connection::<_, Bytes>::new(h3_quinn::Connection::new(conn)).await
                else {
                    return;
                };
                while let Ok(Some(resolver)) = h3.accept().await {
                    let (c, first) = (c.clone(), first.clone());
                    tokio::spawn(async move {
                        let Ok((_req, mut stream)) = resolver.resolve_request().await else {
                            return;
                        };
                        let wait = wait_for(b, &first);
                        if !wait.is_zero() {
                            tokio::time::sleep(wait).await;
                        }
                        c.fetch_add(1, Ordering::SeqCst);
                        let resp = Response::builder().status(200).body(()).unwrap();
                        if stream.send_response(resp).await.is_ok()
                            && stream.send_data(Bytes::from_static(BODY)).await.is_ok()
                        {
                            let _ = stream.finish().await;
                        }
                    });
                }
            });
        }
    });
    let server = TestServer {
        addr,
        count,
        h2_count: Arc::new(AtomicU64::new(0)),
        connections,
        task,
    };
    (server, pem)
}

/// Starts a cleartext server (HTTP/1.1 and prior-knowledge HTTP/2 on one socket).
pub async fn start(b: Behaviour) -> TestServer {
    start_inner(b, None).await
}

/// Starts a TLS server with a fresh self-signed certificate for `localhost`/127.0.0.1,
/// offering ALPN h2 and http/1.1. Returns the certificate's PEM too.
pub async fn start_tls(b: Behaviour) -> (TestServer, String) {
    let (cert, key, pem) = self_signed();
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    (start_inner(b, Some(acceptor)).await, pem)
}

async fn start_inner(b: Behaviour, tls: Option<tokio_rustls::TlsAcceptor>) -> TestServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicU64::new(0));
    let h2_count = Arc::new(AtomicU64::new(0));
    let first: Arc<OnceLock<Instant>> = Arc::new(OnceLock::new());
    let (c, c2) = (count.clone(), h2_count.clone());
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let (c, c2, first, tls) = (c.clone(), c2.clone(), first.clone(), tls.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let (c, c2, first) = (c.clone(), c2.clone(), first.clone());
                    async move {
                        let wait = wait_for(b, &first);
                        if !wait.is_zero() {
                            tokio::time::sleep(wait).await;
                        }
                        c.fetch_add(1, Ordering::SeqCst);
                        if req.version() == http::Version::HTTP_2 {
                            c2.fetch_add(1, Ordering::SeqCst);
                        }
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(BODY))))
                    }
                });
                let builder = auto::Builder::new(TokioExecutor::new());
                match tls {
                    None => {
                        let _ = builder.serve_connection(TokioIo::new(tcp), svc).await;
                    }
                    Some(acceptor) => {
                        if let Ok(stream) = acceptor.accept(tcp).await {
                            let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                        }
                    }
                }
            });
        }
    });
    TestServer {
        addr,
        count,
        h2_count,
        connections: Arc::new(AtomicU64::new(0)),
        task,
    }
}
