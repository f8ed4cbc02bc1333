//! Connections to the target: TCP, optional TLS (rustls on the ring provider, ALPN), and an
//! HTTP/1.1 or HTTP/2 client connection from hyper's low-level API, so the generator decides
//! exactly how many connections exist. Also the mapping of failures to [`ErrorKind`]s.

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Uri};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::{GenError, Proto};

/// Why a request did not produce a response. Statuses, whatever they are, are not errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The TCP connection could not be made.
    Connect,
    /// The TLS handshake failed, or ALPN did not pick the protocol asked for.
    Tls,
    /// No complete response within the request timeout.
    Timeout,
    /// The peer reset the connection.
    Reset,
    /// The connection closed before the response was complete.
    Closed,
    /// The peer broke the protocol (a bad response, an HTTP/2 stream or connection error).
    Protocol,
    /// Still queued when the run's drain deadline passed (open loop only): never sent.
    Unsent,
    Other,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Connect => "connect",
            ErrorKind::Tls => "tls",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Reset => "reset",
            ErrorKind::Closed => "closed",
            ErrorKind::Protocol => "protocol",
            ErrorKind::Unsent => "unsent",
            ErrorKind::Other => "other",
        }
    }

    fn of_io(e: &std::io::Error) -> ErrorKind {
        use std::io::ErrorKind as K;
        match e.kind() {
            K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe => ErrorKind::Reset,
            K::UnexpectedEof => ErrorKind::Closed,
            K::TimedOut => ErrorKind::Timeout,
            _ => ErrorKind::Other,
        }
    }

    pub(super) fn of_hyper(e: &hyper::Error) -> ErrorKind {
        if e.is_timeout() {
            return ErrorKind::Timeout;
        }
        if e.is_incomplete_message() || e.is_closed() || e.is_canceled() {
            return ErrorKind::Closed;
        }
        if e.is_parse() || e.is_parse_status() || e.is_parse_too_large() || e.is_user() {
            return ErrorKind::Protocol;
        }
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            if let Some(io) = s.downcast_ref::<std::io::Error>() {
                return ErrorKind::of_io(io);
            }
            source = s.source();
        }
        // What remains are HTTP/2 stream and connection errors (RST_STREAM, GOAWAY).
        ErrorKind::Protocol
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where and how to connect; shared by every connection of a run.
#[derive(Clone)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub scheme: Scheme,
    /// The target URL's authority: the default Host.
    pub authority: Authority,
    pub proto: Proto,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    /// HTTP/2 flow-control windows (bytes).
    h2_stream_window: u32,
    h2_conn_window: u32,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("addr", &self.addr)
            .field("scheme", &self.scheme)
            .field("authority", &self.authority)
            .field("proto", &self.proto)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// TLS settings for `https://` targets.
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    /// Accept any certificate (self-signed local certs). Handshake signatures are still checked.
    pub insecure: bool,
    /// Trust these PEM certificates instead of the system roots.
    pub ca_file: Option<std::path::PathBuf>,
}

impl Endpoint {
    /// Resolves `target` (`http://host:port` or `https://host:port`; any path is ignored) once.
    pub async fn new(target: &Uri, proto: Proto, tls: &TlsOptions) -> Result<Endpoint, GenError> {
        if proto == Proto::H3 {
            return Err(GenError::H3Unsupported);
        }
        let scheme = match target.scheme_str() {
            Some("http") => Scheme::HTTP,
            Some("https") => Scheme::HTTPS,
            _ => return Err(GenError::Target(target.to_string())),
        };
        let authority = target
            .authority()
            .cloned()
            .ok_or_else(|| GenError::Target(target.to_string()))?;
        let default_port = if scheme == Scheme::HTTPS { 443 } else { 80 };
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let port = authority.port_u16().unwrap_or(default_port);
        let addr = tokio::net::lookup_host((host, port))
            .await
            .map_err(|source| GenError::Resolve {
                host: authority.to_string(),
                source,
            })?
            .next()
            .ok_or_else(|| GenError::Resolve {
                host: authority.to_string(),
                source: std::io::Error::other("no addresses"),
            })?;
        let tls = if scheme == Scheme::HTTPS {
            let name = ServerName::try_from(host.to_string())
                .map_err(|_| GenError::Target(target.to_string()))?;
            Some((tls_connector(proto, tls)?, name))
        } else {
            None
        };
        Ok(Endpoint {
            addr,
            scheme,
            authority,
            proto,
            tls,
            h2_stream_window: 16 * 1024 * 1024,
            h2_conn_window: 64 * 1024 * 1024,
        })
    }

    /// The request URI for a target: origin-form for HTTP/1.1 (the Host header carries the
    /// authority), absolute for HTTP/2 (it becomes `:authority`).
    pub fn uri(&self, authority: &Authority, path: &PathAndQuery) -> Uri {
        let mut parts = http::uri::Parts::default();
        parts.path_and_query = Some(path.clone());
        if self.proto == Proto::H2 {
            parts.scheme = Some(self.scheme.clone());
            parts.authority = Some(authority.clone());
        }
        // Both forms are valid by construction: a path, optionally with scheme and authority.
        Uri::from_parts(parts).unwrap_or_else(|_| Uri::from_static("/"))
    }

    /// Opens one connection and completes the HTTP handshake. The connection's driver runs on
    /// its own task until the connection closes.
    pub async fn connect(&self) -> Result<Sender, ErrorKind> {
        let tcp = TcpStream::connect(self.addr)
            .await
            .map_err(|_| ErrorKind::Connect)?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => self.handshake(tcp).await,
            Some((connector, name)) => {
                let tls = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|_| ErrorKind::Tls)?;
                let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
                match (self.proto, alpn.as_deref()) {
                    (Proto::H2, Some(b"h2")) | (Proto::H1, None | Some(b"http/1.1")) => {}
                    _ => return Err(ErrorKind::Tls),
                }
                self.handshake(tls).await
            }
        }
    }

    async fn handshake<I>(&self, io: I) -> Result<Sender, ErrorKind>
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let io = TokioIo::new(io);
        match self.proto {
            Proto::H1 => {
                let (send, conn) = http1::Builder::new()
                    .handshake(io)
                    .await
                    .map_err(|e| ErrorKind::of_hyper(&e))?;
                tokio::spawn(async move {
                    // Its errors reach the requests on it; nothing to add here.
                    let _ = conn.await;
                });
                Ok(Sender::H1(send))
            }
            _ => {
                let (send, conn) = http2::Builder::new(TokioExecutor::new())
                    .initial_stream_window_size(self.h2_stream_window)
                    .initial_connection_window_size(self.h2_conn_window)
                    .max_frame_size(256 * 1024)
                    .handshake(io)
                    .await
                    .map_err(|e| ErrorKind::of_hyper(&e))?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                Ok(Sender::H2(send))
            }
        }
    }
}

fn tls_connector(proto: Proto, opts: &TlsOptions) -> Result<TlsConnector, GenError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(GenError::TlsConfig)?;
    let mut config = if opts.insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
            .with_no_client_auth()
    } else {
        builder
            .with_root_certificates(roots(opts.ca_file.as_deref())?)
            .with_no_client_auth()
    };
    config.alpn_protocols = match proto {
        Proto::H2 => vec![b"h2".to_vec()],
        _ => vec![b"http/1.1".to_vec()],
    };
    Ok(TlsConnector::from(Arc::new(config)))
}

fn roots(ca_file: Option<&Path>) -> Result<rustls::RootCertStore, GenError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| GenError::CaFile {
                    path: path.to_path_buf(),
                    reason: e.to_string(),
                })?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(GenError::CaFile {
                    path: path.to_path_buf(),
                    reason: "no usable certificate in it".into(),
                });
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
        }
    }
    Ok(roots)
}

/// `--insecure`: any certificate chain is accepted; the handshake signature is still verified
/// against the presented key, so the session is at least with the holder of that key.
#[derive(Debug)]
struct AnyCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// One client connection's request handle. HTTP/2 handles are clones sharing a connection.
#[derive(Debug)]
pub enum Sender {
    H1(http1::SendRequest<Empty<Bytes>>),
    H2(http2::SendRequest<Empty<Bytes>>),
}

/// A response: its status and how many body bytes arrived.
#[derive(Debug, Clone, Copy)]
pub struct Fetched {
    pub status: u16,
    pub body_bytes: u64,
}

impl Sender {
    pub fn is_closed(&self) -> bool {
        match self {
            Sender::H1(s) => s.is_closed(),
            Sender::H2(s) => s.is_closed(),
        }
    }

    /// Sends a GET and reads the whole body (counting, not keeping it).
    pub async fn get(&mut self, uri: Uri, host: &Authority) -> Result<Fetched, ErrorKind> {
        let mut req = Request::get(uri);
        if let Sender::H1(_) = self {
            req = req.header(http::header::HOST, host.as_str());
        }
        // A GET with a valid URI and an authority as Host cannot fail to build.
        let req = req.body(Empty::new()).map_err(|_| ErrorKind::Other)?;
        let resp = match self {
            Sender::H1(s) => {
                s.ready().await.map_err(|e| ErrorKind::of_hyper(&e))?;
                s.send_request(req).await
            }
            Sender::H2(s) => {
                s.ready().await.map_err(|e| ErrorKind::of_hyper(&e))?;
                s.send_request(req).await
            }
        }
        .map_err(|e| ErrorKind::of_hyper(&e))?;
        let status = resp.status().as_u16();
        let mut body = resp.into_body();
        let mut body_bytes = 0u64;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| ErrorKind::of_hyper(&e))?;
            if let Some(data) = frame.data_ref() {
                body_bytes += data.len() as u64;
            }
        }
        Ok(Fetched { status, body_bytes })
    }
}
