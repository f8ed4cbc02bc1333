//! Test helpers for HTTPS and HTTP/3: a certificate authority made with rcgen, an `edge serve`
//! process with a TLS listener, and real clients: HTTP/2 and HTTP/1.1 over tokio-rustls (hyper),
//! and HTTP/3 over quinn + h3. Included by `tests/tls.rs` and `tests/h3.rs` next to `support`.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use http::{HeaderMap, Request};
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};

use loadtest::loadgen::conn::AnyCert;

use crate::support::{Reply, START_TIMEOUT};

/// One crypto provider for every client here (the process default may be unset).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

// ---- certificates ------------------------------------------------------------------------

/// A test certificate authority.
pub struct Ca {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pub der: CertificateDer<'static>,
}

/// A leaf certificate and its key, as PEM, and the certificate's DER.
#[derive(Clone)]
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: Vec<u8>,
}

impl Default for Ca {
    fn default() -> Self {
        Ca::new()
    }
}

impl Ca {
    pub fn new() -> Ca {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "edge test CA");
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let key = rcgen::KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("CA certificate");
        Ca {
            der: cert.der().clone(),
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// A leaf for `names` (DNS names or IP addresses), signed by this CA.
    pub fn leaf(&self, names: &[&str]) -> Leaf {
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .expect("leaf params");
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            names.first().copied().unwrap_or("leaf"),
        );
        let key = rcgen::KeyPair::generate().expect("leaf key");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("leaf certificate");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }

    pub fn roots(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.der.clone()).expect("adding the test CA");
        roots
    }
}

/// Writes `DIR/NAME.crt` and `DIR/NAME.key`, each replaced in one rename so a watcher never
/// reads half a file.
pub fn write_pair(dir: &Path, name: &str, leaf: &Leaf) {
    std::fs::create_dir_all(dir).expect("creating the certificate folder");
    for (ext, text) in [("key", &leaf.key_pem), ("crt", &leaf.cert_pem)] {
        let tmp = dir.join(format!(".{name}.{ext}.tmp"));
        std::fs::write(&tmp, text).expect("writing a certificate file");
        std::fs::rename(&tmp, dir.join(format!("{name}.{ext}"))).expect("renaming into place");
    }
}

// ---- client configurations ---------------------------------------------------------------

/// A client that trusts `ca` and offers `alpn`.
pub fn client_config(ca: &Ca, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut c = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("client protocol versions")
        .with_root_certificates(ca.roots())
        .with_no_client_auth();
    c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(c)
}

/// A client that accepts any certificate (to inspect which one the server chose).
pub fn inspecting_config(alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut c = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("client protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert::new(provider())))
        .with_no_client_auth();
    c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(c)
}

fn server_name(sni: &str) -> ServerName<'static> {
    ServerName::try_from(sni.to_owned()).expect("a valid server name")
}

// ---- the node ------------------------------------------------------------------------------

/// An `edge` process with cleartext and TLS listeners; killed (by pid) when dropped.
pub struct TlsNode {
    child: Child,
    /// Cleartext HTTP/1.1 + h2c.
    pub http: SocketAddr,
    /// HTTPS over TCP, and HTTP/3 over UDP on the same port when it is on.
    pub https: SocketAddr,
    /// Every line the node printed on stdout so far.
    pub stdout: Arc<Mutex<Vec<String>>>,
    pub log: PathBuf,
}

impl TlsNode {
    /// Spawns `cmd` and waits for its `http://` and `https://` listening lines.
    pub fn start(mut cmd: Command, log: &Path) -> Result<TlsNode, String> {
        let err = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| format!("opening {}: {e}", log.display()))?;
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(err))
            .spawn()
            .map_err(|e| format!("spawning edge: {e}"))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel::<String>();
        let keep = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                keep.lock().expect("stdout lines").push(line.clone());
                let _ = tx.send(line);
            }
        });
        let mut node = TlsNode {
            child,
            http: SocketAddr::from(([127, 0, 0, 1], 0)),
            https: SocketAddr::from(([127, 0, 0, 1], 0)),
            stdout: lines,
            log: log.to_owned(),
        };
        let deadline = Instant::now() + START_TIMEOUT;
        let (mut http, mut https) = (None, None);
        while http.is_none() || https.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(a) = addr_after(&line, "https://") {
                        https = Some(a);
                    } else if let Some(a) = addr_after(&line, "http://") {
                        http.get_or_insert(a);
                    }
                }
                Err(e) => {
                    std::thread::sleep(Duration::from_millis(200));
                    return Err(format!(
                        "edge printed no http:// and https:// lines ({e:?}); log:\n{}",
                        node.log_text()
                    ));
                }
            }
        }
        node.http = http.expect("seen");
        node.https = https.expect("seen");
        Ok(node)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn is_alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGHUP to the node (by its pid).
    pub fn hangup(&self) {
        let ok = Command::new("kill")
            .args(["-HUP", &self.pid().to_string()])
            .status()
            .expect("running kill")
            .success();
        assert!(ok, "kill -HUP failed");
    }
}

impl Drop for TlsNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn addr_after(line: &str, scheme: &str) -> Option<SocketAddr> {
    let rest = &line[line.find(scheme)? + scheme.len()..];
    rest.split('/').next()?.parse().ok()
}

// ---- HTTP/2 and HTTP/1.1 over TLS ----------------------------------------------------------

use crate::support::within;

/// What a TLS handshake settled on.
#[derive(Debug, Clone)]
pub struct Handshake {
    /// The server's leaf certificate, DER.
    pub leaf: Vec<u8>,
    pub alpn: Option<Vec<u8>>,
    pub version: Option<rustls::ProtocolVersion>,
}

/// Connects and shakes hands; `Err` carries the handshake error.
pub async fn tls_connect(
    addr: SocketAddr,
    sni: &str,
    config: Arc<rustls::ClientConfig>,
) -> Result<
    (
        tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
        Handshake,
    ),
    String,
> {
    let tcp = within("connecting", tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|e| format!("connecting: {e}"))?;
    let connector = tokio_rustls::TlsConnector::from(config);
    let tls = within("TLS handshake", connector.connect(server_name(sni), tcp))
        .await
        .map_err(|e| format!("TLS handshake: {e}"))?;
    let (_, conn) = tls.get_ref();
    let hs = Handshake {
        leaf: conn
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.to_vec())
            .unwrap_or_default(),
        alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
        version: conn.protocol_version(),
    };
    Ok((tls, hs))
}

async fn read_reply(resp: hyper::Response<hyper::body::Incoming>) -> Reply {
    crate::support::read_all(resp).await
}

/// An HTTP/2 client over TLS on one connection (clone to share it).
#[derive(Clone)]
pub struct H2Tls {
    sender: crate::support::Sender2,
    pub handshake: Handshake,
    authority: String,
}

impl H2Tls {
    /// Connects with SNI `sni` (also the `:authority` of requests), offering ALPN h2 only.
    pub async fn connect(addr: SocketAddr, sni: &str, config: Arc<rustls::ClientConfig>) -> H2Tls {
        let (tls, handshake) = tls_connect(addr, sni, config)
            .await
            .unwrap_or_else(|e| panic!("{sni}: {e}"));
        assert_eq!(handshake.alpn.as_deref(), Some(&b"h2"[..]), "ALPN h2");
        let (sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .expect("HTTP/2 handshake over TLS");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        H2Tls {
            sender,
            handshake,
            authority: sni.to_owned(),
        }
    }

    pub async fn request(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
        let uri = format!("https://{}{path}", self.authority);
        let mut b = Request::builder().method(method).uri(&uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b.body(Empty::new()).expect("a valid request");
        crate::support::send_h2(&self.sender, req, &format!("h2+TLS {method} {uri}")).await
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.request("GET", path, &[]).await
    }
}

/// One HTTP/1.1 request over a new TLS connection offering ALPN http/1.1.
pub async fn h1_tls_get(
    addr: SocketAddr,
    sni: &str,
    config: Arc<rustls::ClientConfig>,
    path: &str,
) -> (Reply, Handshake) {
    let (tls, hs) = tls_connect(addr, sni, config)
        .await
        .unwrap_or_else(|e| panic!("{sni}: {e}"));
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .expect("HTTP/1.1 handshake over TLS");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = Request::get(path)
        .header("host", sni)
        .body(Empty::<Bytes>::new())
        .expect("a valid request");
    let resp = within("h1+TLS GET", sender.send_request(req))
        .await
        .expect("h1+TLS GET");
    (within("h1+TLS body", read_reply(resp)).await, hs)
}

// ---- HTTP/3 --------------------------------------------------------------------------------

/// A quinn client configuration trusting `ca` (ALPN h3; 0-RTT offered when the server's
/// ticket allows it).
pub fn quic_client_config(tls: Arc<rustls::ClientConfig>) -> quinn::ClientConfig {
    let mut tls = (*tls).clone();
    tls.alpn_protocols = vec![b"h3".to_vec()];
    tls.enable_early_data = true;
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("QUIC client TLS");
    quinn::ClientConfig::new(Arc::new(crypto))
}

/// A client endpoint on an ephemeral UDP port of 127.0.0.1.
pub fn quic_endpoint(config: quinn::ClientConfig) -> quinn::Endpoint {
    let mut ep = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0)))
        .expect("binding a UDP client socket");
    ep.set_default_client_config(config);
    ep
}

/// An HTTP/3 connection: quinn + h3, its driver polled on a task.
pub struct H3 {
    pub conn: quinn::Connection,
    send: h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>,
    driver: tokio::task::JoinHandle<()>,
    authority: String,
}

impl Drop for H3 {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

impl H3 {
    /// Connects to `addr` with SNI `sni`; `Err` when the handshake or h3 setup fails.
    pub async fn connect(ep: &quinn::Endpoint, addr: SocketAddr, sni: &str) -> Result<H3, String> {
        let connecting = ep.connect(addr, sni).map_err(|e| format!("connect: {e}"))?;
        let conn = within("QUIC handshake", connecting)
            .await
            .map_err(|e| format!("QUIC handshake: {e}"))?;
        H3::over(conn, sni).await
    }

    /// h3 on an established (or 0-RTT) QUIC connection.
    pub async fn over(conn: quinn::Connection, sni: &str) -> Result<H3, String> {
        let (mut driver, send) = within(
            "h3 setup",
            h3::client::new(h3_quinn::Connection::new(conn.clone())),
        )
        .await
        .map_err(|e| format!("h3 setup: {e}"))?;
        let driver = tokio::spawn(async move {
            let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
        });
        Ok(H3 {
            conn,
            send,
            driver,
            authority: sni.to_owned(),
        })
    }

    pub async fn try_request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<Reply, String> {
        let uri = format!("https://{}{path}", self.authority);
        let mut b = Request::builder().method(method).uri(&uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b.body(()).expect("a valid request");
        let mut send = self.send.clone();
        let what = format!("h3 {method} {uri}");
        within(&what, async move {
            let mut stream = send
                .send_request(req)
                .await
                .map_err(|e| format!("send_request: {e}"))?;
            // A server that has answered may stop reading the request stream before our FIN
            // goes out (RFC 9114, 4.1): finishing then fails, but the response is there.
            let _ = stream.finish().await;
            let resp = stream
                .recv_response()
                .await
                .map_err(|e| format!("recv_response: {e}"))?;
            let mut body = Vec::new();
            let mut complete = true;
            loop {
                match stream.recv_data().await {
                    Ok(Some(mut chunk)) => {
                        while chunk.has_remaining() {
                            let c = chunk.chunk();
                            body.extend_from_slice(c);
                            let n = c.len();
                            chunk.advance(n);
                        }
                    }
                    Ok(None) => break,
                    Err(_) => {
                        complete = false;
                        break;
                    }
                }
            }
            let (parts, ()) = resp.into_parts();
            Ok(Reply {
                status: parts.status.as_u16(),
                headers: parts.headers,
                body,
                complete,
            })
        })
        .await
    }

    pub async fn request(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
        self.try_request(method, path, headers)
            .await
            .unwrap_or_else(|e| panic!("h3 {method} {path}: {e}"))
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.request("GET", path, &[]).await
    }
}

/// The headers two protocols must agree on for the same file.
pub const SAME_HEADERS: [&str; 6] = [
    "content-type",
    "content-length",
    "etag",
    "cache-control",
    "x-edge-deploy",
    "content-encoding",
];

/// Asserts `b` (another protocol) matches `a` (HTTP/1.1 cleartext): status, body bytes, and
/// the headers in [`SAME_HEADERS`].
pub fn assert_same(what: &str, a: &Reply, b: &Reply) {
    assert_eq!(a.status, b.status, "{what}: status");
    assert!(b.complete, "{what}: body was cut");
    assert!(
        a.body == b.body,
        "{what}: bodies differ ({} vs {} bytes)",
        a.body.len(),
        b.body.len()
    );
    for h in SAME_HEADERS {
        assert_eq!(
            a.headers.get(h),
            b.headers.get(h),
            "{what}: header {h} differs"
        );
    }
}

/// Headers as a map, for debugging output.
pub fn show(h: &HeaderMap) -> String {
    format!("{h:?}")
}
