//! Connections to the target: TCP, optional TLS (rustls on the ring provider, ALPN), and an
//! HTTP/1.1 or HTTP/2 client connection from hyper's low-level API; or QUIC (quinn, one UDP
//! socket per connection) with an HTTP/3 client connection (h3), so the generator decides
//! exactly how many connections exist. Also the mapping of failures to [`ErrorKind`]s.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes};
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

impl ErrorKind {
    /// A QUIC connection's end, as seen while connecting or on an open connection.
    fn of_quic(e: &quinn::ConnectionError) -> ErrorKind {
        use quinn::ConnectionError as E;
        match e {
            E::TimedOut => ErrorKind::Timeout,
            E::Reset => ErrorKind::Reset,
            E::ApplicationClosed(_) | E::ConnectionClosed(_) | E::LocallyClosed => {
                ErrorKind::Closed
            }
            // TLS alerts travel as CRYPTO_ERROR transport codes (0x100..=0x1ff).
            E::TransportError(t) if (0x100..0x200).contains(&u64::from(t.code)) => ErrorKind::Tls,
            _ => ErrorKind::Protocol,
        }
    }

    fn of_h3_conn(e: &h3::error::ConnectionError) -> ErrorKind {
        use h3::error::ConnectionError as E;
        use h3::quic::ConnectionErrorIncoming as I;
        match e {
            // The variants are `non_exhaustive`: matched with braces.
            E::Timeout { .. } | E::Remote { 0: I::Timeout, .. } => ErrorKind::Timeout,
            E::Remote {
                0: I::ApplicationClose { .. },
                ..
            }
            | E::Local { .. } => ErrorKind::Closed,
            _ => ErrorKind::Protocol,
        }
    }

    fn of_h3(e: &h3::error::StreamError) -> ErrorKind {
        use h3::error::StreamError as E;
        match e {
            E::ConnectionError { 0: c, .. } => ErrorKind::of_h3_conn(c),
            E::RemoteTerminate { .. } => ErrorKind::Reset,
            E::RemoteClosing { .. } => ErrorKind::Closed,
            _ => ErrorKind::Protocol,
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a connection could not be opened: the kind that is counted, and the reason for people.
#[derive(Debug, Clone)]
pub struct ConnectError {
    pub kind: ErrorKind,
    pub reason: String,
}

impl ConnectError {
    fn new(kind: ErrorKind, reason: impl fmt::Display) -> ConnectError {
        ConnectError {
            kind,
            reason: reason.to_string(),
        }
    }

    fn hyper(e: hyper::Error) -> ConnectError {
        ConnectError::new(ErrorKind::of_hyper(&e), e)
    }

    fn alpn(proto: Proto, got: Option<&[u8]>) -> ConnectError {
        let got = got.map_or_else(
            || "none".into(),
            |p| String::from_utf8_lossy(p).into_owned(),
        );
        ConnectError::new(
            ErrorKind::Tls,
            format_args!(
                "the server did not agree to {} by ALPN (it chose {got})",
                proto.as_str()
            ),
        )
    }
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.reason)
    }
}

impl From<ConnectError> for ErrorKind {
    fn from(e: ConnectError) -> ErrorKind {
        e.kind
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
    /// HTTP/3: the QUIC client settings and the server name for SNI.
    quic: Option<(quinn::ClientConfig, String)>,
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
            .field("tls", &(self.tls.is_some() || self.quic.is_some()))
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
    /// HTTP/3 needs `https://`.
    pub async fn new(target: &Uri, proto: Proto, tls: &TlsOptions) -> Result<Endpoint, GenError> {
        let scheme = match target.scheme_str() {
            Some("http") if proto == Proto::H3 => return Err(GenError::H3NeedsHttps),
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
        let (tls, quic) = if proto == Proto::H3 {
            (None, Some((quic_config(tls)?, host.to_string())))
        } else if scheme == Scheme::HTTPS {
            let name = ServerName::try_from(host.to_string())
                .map_err(|_| GenError::Target(target.to_string()))?;
            let mut config = client_tls(tls, rustls::DEFAULT_VERSIONS)?;
            config.alpn_protocols = match proto {
                Proto::H2 => vec![b"h2".to_vec()],
                _ => vec![b"http/1.1".to_vec()],
            };
            (Some((TlsConnector::from(Arc::new(config)), name)), None)
        } else {
            (None, None)
        };
        Ok(Endpoint {
            addr,
            scheme,
            authority,
            proto,
            tls,
            quic,
            h2_stream_window: 16 * 1024 * 1024,
            h2_conn_window: 64 * 1024 * 1024,
        })
    }

    /// The request URI for a target: origin-form for HTTP/1.1 (the Host header carries the
    /// authority), absolute for HTTP/2 and HTTP/3 (it becomes `:authority`).
    pub fn uri(&self, authority: &Authority, path: &PathAndQuery) -> Uri {
        let mut parts = http::uri::Parts::default();
        parts.path_and_query = Some(path.clone());
        if self.proto != Proto::H1 {
            parts.scheme = Some(self.scheme.clone());
            parts.authority = Some(authority.clone());
        }
        // Both forms are valid by construction: a path, optionally with scheme and authority.
        Uri::from_parts(parts).unwrap_or_else(|_| Uri::from_static("/"))
    }

    /// Opens one connection and completes the HTTP handshake. The connection's driver runs on
    /// its own task until the connection closes.
    pub async fn connect(&self) -> Result<Sender, ConnectError> {
        if let Some((config, name)) = &self.quic {
            return self.connect_h3(config, name).await;
        }
        let tcp = TcpStream::connect(self.addr)
            .await
            .map_err(|e| ConnectError::new(ErrorKind::Connect, e))?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => self.handshake(tcp).await,
            Some((connector, name)) => {
                let tls = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|e| ConnectError::new(ErrorKind::Tls, e))?;
                let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
                match (self.proto, alpn.as_deref()) {
                    (Proto::H2, Some(b"h2")) | (Proto::H1, None | Some(b"http/1.1")) => {}
                    (_, other) => return Err(ConnectError::alpn(self.proto, other)),
                }
                self.handshake(tls).await
            }
        }
    }

    async fn handshake<I>(&self, io: I) -> Result<Sender, ConnectError>
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let io = TokioIo::new(io);
        match self.proto {
            Proto::H1 => {
                let (send, conn) = http1::Builder::new()
                    .handshake(io)
                    .await
                    .map_err(ConnectError::hyper)?;
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
                    .map_err(ConnectError::hyper)?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                Ok(Sender::H2(send))
            }
        }
    }
}

impl Endpoint {
    /// One QUIC connection on its own UDP socket (so connections spread over the runtime's
    /// threads instead of sharing one socket's driver), then the HTTP/3 handshake.
    async fn connect_h3(
        &self,
        config: &quinn::ClientConfig,
        name: &str,
    ) -> Result<Sender, ConnectError> {
        let bind = match self.addr {
            SocketAddr::V4(_) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
            SocketAddr::V6(_) => SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
        };
        let udp = std::net::UdpSocket::bind(bind)
            .map_err(|e| ConnectError::new(ErrorKind::Connect, e))?;
        // Room for a burst of responses; the kernel caps it at net.core.rmem_max.
        let sock = socket2::SockRef::from(&udp);
        let _ = sock.set_recv_buffer_size(4 << 20);
        let _ = sock.set_send_buffer_size(4 << 20);
        let runtime = quinn::default_runtime()
            .ok_or_else(|| ConnectError::new(ErrorKind::Other, "no async runtime for QUIC"))?;
        let mut endpoint =
            quinn::Endpoint::new(quinn::EndpointConfig::default(), None, udp, runtime)
                .map_err(|e| ConnectError::new(ErrorKind::Connect, e))?;
        endpoint.set_default_client_config(config.clone());
        let connecting = endpoint
            .connect(self.addr, name)
            .map_err(|e| ConnectError::new(ErrorKind::Connect, e))?;
        // Nothing answers a QUIC handshake sent to a closed port: bound the wait.
        let conn = match tokio::time::timeout(QUIC_HANDSHAKE_TIMEOUT, connecting).await {
            Err(_) | Ok(Err(quinn::ConnectionError::TimedOut)) => {
                return Err(ConnectError::new(
                    ErrorKind::Connect,
                    format_args!(
                        "no QUIC handshake within {QUIC_HANDSHAKE_TIMEOUT:?} (is HTTP/3 listening on UDP {}?)",
                        self.addr
                    ),
                ));
            }
            Ok(Err(e)) => return Err(ConnectError::new(ErrorKind::of_quic(&e), e)),
            Ok(Ok(conn)) => conn,
        };
        let alpn = conn
            .handshake_data()
            .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
            .and_then(|d| d.protocol);
        if alpn.as_deref() != Some(b"h3".as_slice()) {
            return Err(ConnectError::alpn(Proto::H3, alpn.as_deref()));
        }
        let (mut driver, send) = h3::client::new(h3_quinn::Connection::new(conn.clone()))
            .await
            .map_err(|e| ConnectError::new(ErrorKind::of_h3_conn(&e), e))?;
        tokio::spawn(async move {
            // Its end reaches the requests on it; nothing to add here.
            let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
        });
        Ok(Sender::H3(H3Sender {
            send,
            conn,
            _endpoint: endpoint,
        }))
    }
}

/// How long a QUIC handshake may take before the connection attempt counts as failed.
const QUIC_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// The QUIC client settings for HTTP/3: TLS 1.3 only, ALPN h3.
fn quic_config(opts: &TlsOptions) -> Result<quinn::ClientConfig, GenError> {
    let mut tls = client_tls(opts, &[&rustls::version::TLS13])?;
    tls.alpn_protocols = vec![b"h3".to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| GenError::QuicConfig(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(Duration::from_secs(30))
            .map_err(|e| GenError::QuicConfig(e.to_string()))?,
    ));
    // Room for large responses on many streams at once (the defaults suit ~100 Mbit/s links).
    transport.stream_receive_window(quinn::VarInt::from_u32(16 << 20));
    transport.receive_window(quinn::VarInt::from_u32(64 << 20));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

fn client_tls(
    opts: &TlsOptions,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Result<rustls::ClientConfig, GenError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(GenError::TlsConfig)?;
    Ok(if opts.insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
            .with_no_client_auth()
    } else {
        builder
            .with_root_certificates(roots(opts.ca_file.as_deref())?)
            .with_no_client_auth()
    })
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
/// against the presented key, so the session is at least with the holder of that key. Public
/// for tests that inspect what a server presents.
#[derive(Debug)]
pub struct AnyCert(Arc<rustls::crypto::CryptoProvider>);

impl AnyCert {
    pub fn new(provider: Arc<rustls::crypto::CryptoProvider>) -> AnyCert {
        AnyCert(provider)
    }
}

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

/// One client connection's request handle. HTTP/2 and HTTP/3 handles are clones sharing a
/// connection.
#[derive(Debug)]
pub enum Sender {
    H1(http1::SendRequest<Empty<Bytes>>),
    H2(http2::SendRequest<Empty<Bytes>>),
    H3(H3Sender),
}

/// An HTTP/3 connection's request handle, with the QUIC connection (to tell a closed one) and
/// its endpoint (the UDP socket's owner).
#[derive(Clone)]
pub struct H3Sender {
    send: h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>,
    conn: quinn::Connection,
    _endpoint: quinn::Endpoint,
}

impl fmt::Debug for H3Sender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("H3Sender")
            .field("remote", &self.conn.remote_address())
            .finish_non_exhaustive()
    }
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
            Sender::H3(s) => s.conn.close_reason().is_some(),
        }
    }

    /// Another handle on the same connection, for protocols that multiplex requests on one
    /// (HTTP/2, HTTP/3); `None` for HTTP/1.1.
    pub fn share(&self) -> Option<Sender> {
        match self {
            Sender::H1(_) => None,
            Sender::H2(s) => Some(Sender::H2(s.clone())),
            Sender::H3(s) => Some(Sender::H3(s.clone())),
        }
    }

    /// Sends a GET and reads the whole body (counting, not keeping it).
    pub async fn get(&mut self, uri: Uri, host: &Authority) -> Result<Fetched, ErrorKind> {
        if let Sender::H3(s) = self {
            return s.get(uri).await;
        }
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
            Sender::H3(_) => return Err(ErrorKind::Other),
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

impl H3Sender {
    async fn get(&mut self, uri: Uri) -> Result<Fetched, ErrorKind> {
        // A GET with a valid absolute URI cannot fail to build.
        let req = Request::get(uri).body(()).map_err(|_| ErrorKind::Other)?;
        let mut stream = self
            .send
            .send_request(req)
            .await
            .map_err(|e| ErrorKind::of_h3(&e))?;
        stream.finish().await.map_err(|e| ErrorKind::of_h3(&e))?;
        let resp = stream
            .recv_response()
            .await
            .map_err(|e| ErrorKind::of_h3(&e))?;
        let status = resp.status().as_u16();
        let mut body_bytes = 0u64;
        while let Some(mut chunk) = stream.recv_data().await.map_err(|e| ErrorKind::of_h3(&e))? {
            let n = chunk.remaining();
            body_bytes += n as u64;
            chunk.advance(n);
        }
        Ok(Fetched { status, body_bytes })
    }
}
