//! HTTP/3: a quinn endpoint per serving thread, each on its own UDP socket on the HTTPS port
//! number (`SO_REUSEPORT`, as the TCP listeners), h3 on each connection, and every request
//! answered by the same `Handler::serve` as HTTP/1.1 and HTTP/2.
//!
//! Invariants: a connection with no request in flight for `server.idle_timeout` gets a
//! GOAWAY and is closed; a response that makes no progress for `server.send_timeout` is
//! reset; what a connection's streams make the node buffer is bounded ([`SEND_WINDOW`]);
//! connections are bounded node-wide (`http3.max_connections`, one count shared by every
//! endpoint; beyond it new ones are refused) and so are concurrent requests per connection (`http3.max_streams`, enforced by
//! QUIC flow control: a client waits for a slot); a packet or request a peer controls never
//! panics, it ends that connection or stream; a response whose body fails mid-way is reset,
//! never finished, so a client cannot take a cut body for a whole one. A connection stays on
//! the thread whose endpoint accepted it; with more than one endpoint, connection migration
//! is off (see [`Shared::new`]).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use edge_config::{Http3, Limits};
use http::header::{self, HeaderValue};
use http_body_util::BodyExt;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::Front;
use super::tls::{self, CertStore};
use crate::http::Handler;

/// Unidirectional streams a peer may open: HTTP/3's control and QPACK streams, and grease.
const MAX_UNI_STREAMS: u32 = 16;
/// Socket buffers asked for (the kernel caps them at `net.core.rmem_max`/`wmem_max`): the
/// default ~200 KiB overflows under bursts from many streams, and every datagram dropped there
/// costs a QUIC loss recovery.
const UDP_BUFFER: usize = 4 << 20;
/// Bytes a connection's streams may have accepted from the node and not yet had
/// acknowledged (quinn's default is 10 MB): what a client that opens streams and never raises
/// their windows makes the node hold, per connection. 2 MiB still fills 20 MB/s at 100 ms.
const SEND_WINDOW: u64 = 2 << 20;

type H3Conn = h3::server::Connection<h3_quinn::Connection, Bytes>;
type H3Stream = h3::server::RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>;

/// Binds `n` UDP sockets on `addr` with `SO_REUSEPORT`, one per serving thread: the kernel
/// hashes each datagram's 4-tuple to one of them, so a client's packets keep reaching the
/// same socket, and so the same thread, for as long as its address and port stay the same.
/// `addr` has a port (the HTTPS one); every socket gets it or the call fails.
pub fn bind_reuseport(addr: SocketAddr, n: usize) -> io::Result<Vec<std::net::UdpSocket>> {
    use socket2::{Domain, Protocol, Socket, Type};
    let mut out = Vec::with_capacity(n.max(1));
    for _ in 0..n.max(1) {
        let sock = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        sock.set_reuse_port(true)?;
        sock.set_nonblocking(true)?;
        for (what, r) in [
            ("receive", sock.set_recv_buffer_size(UDP_BUFFER)),
            ("send", sock.set_send_buffer_size(UDP_BUFFER)),
        ] {
            if let Err(e) = r {
                tracing::warn!(error = %e, "could not enlarge the UDP {what} buffer");
            }
        }
        sock.bind(&addr.into())?;
        out.push(sock.into());
    }
    Ok(out)
}

/// What every HTTP/3 endpoint of the node shares: one server configuration (one rustls
/// configuration, so one session cache and ticketer: a client resumes, or sends 0-RTT, on
/// whichever thread its new connection hashes to; one address-validation token key), one
/// endpoint configuration (one stateless-reset key), and the node-wide connection count.
#[derive(Clone)]
pub struct Shared {
    endpoint: quinn::EndpointConfig,
    server: quinn::ServerConfig,
    slots: Arc<Slots>,
}

impl Shared {
    /// The configuration for `endpoints` endpoints (one per serving thread).
    pub fn new(certs: Arc<CertStore>, cfg: &Http3, endpoints: usize) -> anyhow::Result<Shared> {
        let endpoints = endpoints.max(1);
        let tls = tls::quic_config(certs, cfg.early_data)?;
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)?;
        let mut transport = quinn::TransportConfig::default();
        transport
            .send_window(SEND_WINDOW)
            .max_concurrent_bidi_streams(cfg.max_streams.into())
            .max_concurrent_uni_streams(MAX_UNI_STREAMS.into())
            .max_idle_timeout(Some(cfg.idle_timeout.try_into()?));
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        server.transport_config(Arc::new(transport));
        // Handshakes waiting to be accepted, per endpoint: the node-wide cap split between
        // the endpoints, so all of them together wait on no more than the connections we
        // would take. The accept loop takes each at once, so the queue only holds what
        // arrives faster than one thread's loop runs.
        server.max_incoming((cfg.max_connections as usize).div_ceil(endpoints));
        if endpoints > 1 {
            // One socket per thread (`SO_REUSEPORT`) and the kernel picks the socket by the
            // 4-tuple: a client's packets from a new address or port most likely reach
            // another thread's endpoint, which does not know the connection. So connection
            // migration is off: clients are told not to migrate (`disable_active_migration`)
            // and no endpoint follows a peer to a new path. A NAT rebinding still moves a
            // client: its packets then reach an endpoint that does not know the connection
            // and answers with a stateless reset (rate-limited), valid for the connection
            // since every endpoint shares the reset key, so the client learns at once that
            // the connection is gone and reconnects, resuming its TLS session; when none
            // arrives the connection ends at its idle timeout.
            server.migration(false);
        }
        Ok(Shared {
            endpoint: quinn::EndpointConfig::default(),
            server,
            slots: Arc::new(Slots {
                open: AtomicUsize::new(0),
                max: cfg.max_connections as usize,
            }),
        })
    }

    /// Builds an endpoint on `udp`, driven by the current tokio runtime: call it on the
    /// serving thread that will run it (inside its runtime).
    pub fn endpoint(&self, udp: std::net::UdpSocket) -> io::Result<quinn::Endpoint> {
        quinn::Endpoint::new(
            self.endpoint.clone(),
            Some(self.server.clone()),
            udp,
            Arc::new(quinn::TokioRuntime),
        )
    }
}

/// HTTP/3 connections open across every endpoint of the node (`http3.max_connections`).
struct Slots {
    open: AtomicUsize,
    max: usize,
}

impl Slots {
    /// A slot for one more connection, or `None` at the cap.
    fn take(self: &Arc<Self>) -> Option<Slot> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()?;
        Some(Slot(self.clone()))
    }
}

/// One connection's place under `http3.max_connections`, given back on drop (when the
/// connection's task ends).
struct Slot(Arc<Slots>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Accepts connections until `shutdown` turns true; then asks each connection to finish
/// (HTTP/3 GOAWAY), waits up to `drain` for them, and closes the endpoint. A connection with
/// no request in flight for `limits.idle_timeout` gets a GOAWAY and is closed; a response
/// that makes no progress for `limits.send_timeout` has its stream reset. Runs on the
/// thread whose runtime drives `endpoint`; its connections stay on that thread.
pub async fn run(
    endpoint: quinn::Endpoint,
    shared: Shared,
    handler: Arc<Handler>,
    front: Arc<Front>,
    settings: Settings,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
    drain: Duration,
) {
    let Settings {
        http3: cfg,
        limits,
        header_read_timeout,
    } = settings;
    loop {
        let incoming = tokio::select! {
            i = endpoint.accept() => match i {
                Some(i) => i,
                None => break,
            },
            _ = shutdown.wait_for(|s| *s) => break,
        };
        let Some(slot) = shared.slots.take() else {
            tracing::debug!(peer.addr = %incoming.remote_address(), "HTTP/3 connection refused: at http3.max_connections");
            incoming.refuse();
            continue;
        };
        let span =
            tracing::debug_span!("conn", peer.addr = %incoming.remote_address(), proto = "h3");
        let conn = connection(
            incoming,
            handler.clone(),
            front.clone(),
            cfg.early_data,
            (limits, header_read_timeout),
            shutdown.clone(),
        );
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                let _slot = slot;
                conn.await
            },
            span,
        ));
    }
    // Stop taking new connections; open ones got their GOAWAY from the same signal.
    endpoint.set_server_config(None);
    if tokio::time::timeout(drain, endpoint.wait_idle())
        .await
        .is_err()
    {
        tracing::warn!("HTTP/3 drain deadline passed with connections still open");
    }
    endpoint.close(0u32.into(), b"shutting down");
    // The endpoint's driver runs on this thread's runtime, which ends when this returns: let
    // it send the CONNECTION_CLOSE frames first (bounded), or clients wait out their idle
    // timeout.
    let _ = tokio::time::timeout(super::conn::GRACE, endpoint.wait_idle()).await;
}

async fn connection(
    incoming: quinn::Incoming,
    handler: Arc<Handler>,
    front: Arc<Front>,
    early_data: bool,
    (limits, header_read_timeout): (Limits, Duration),
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let connecting = match incoming.accept() {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(error = %e, "QUIC connection not accepted");
            return;
        }
    };
    let conn = if early_data {
        // Serve requests that arrive in 0-RTT, before the handshake completes.
        match connecting.into_0rtt() {
            Ok((c, _)) => c,
            Err(connecting) => match connecting.await {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(error = %e, "QUIC handshake failed");
                    return;
                }
            },
        }
    } else {
        match connecting.await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "QUIC handshake failed");
                return;
            }
        }
    };
    let quic = conn.clone();
    // The control stream and SETTINGS: bounded like a request head (a client that grants no
    // stream credit holds nothing longer).
    let built = tokio::time::timeout(
        header_read_timeout,
        h3::server::builder()
            .max_field_section_size(limits.max_header_bytes)
            .build(h3_quinn::Connection::new(conn)),
    )
    .await;
    let mut h3: H3Conn = match built {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "HTTP/3 connection setup failed");
            return;
        }
        Err(_) => {
            tracing::debug!("HTTP/3 connection setup timed out");
            quic.close(H3_NO_ERROR.into(), b"setup timed out");
            return;
        }
    };
    let mut closing = *shutdown.borrow();
    if closing {
        goaway(&mut h3).await;
    }
    // Requests in flight; `done` is told when one ends.
    let inflight = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(Notify::new());
    let mut idle_since = Instant::now();
    // After an idle GOAWAY: when the connection is closed if the client has not.
    let mut close_at: Option<Instant> = None;
    loop {
        let idle = inflight.load(Ordering::Acquire) == 0;
        let wake = close_at.unwrap_or(idle_since + limits.idle_timeout);
        enum Event<R> {
            Accepted(R),
            Shutdown,
            Ended,
            Idle,
        }
        let event = tokio::select! {
            r = h3.accept() => Event::Accepted(r),
            _ = shutdown.wait_for(|s| *s), if !closing => Event::Shutdown,
            () = done.notified() => Event::Ended,
            () = tokio::time::sleep_until(wake), if idle => Event::Idle,
        };
        let next = match event {
            Event::Accepted(r) => Some(r),
            Event::Shutdown => None,
            Event::Ended => {
                if inflight.load(Ordering::Acquire) == 0 {
                    idle_since = Instant::now();
                }
                continue;
            }
            Event::Idle => {
                if close_at.is_some() {
                    quic.close(H3_NO_ERROR.into(), b"idle");
                    break;
                }
                handler
                    .metrics()
                    .conns
                    .idle_timeouts
                    .fetch_add(1, Ordering::Relaxed);
                tracing::debug!("HTTP/3 connection idle; GOAWAY");
                closing = true;
                goaway(&mut h3).await;
                close_at = Some(Instant::now() + super::conn::GRACE);
                continue;
            }
        };
        match next {
            None => {
                closing = true;
                // GOAWAY: requests already accepted finish. h3's accept() returns None only
                // once the client answers with its own GOAWAY, which a client need not do:
                // one that does not is closed by the idle timer, or by the endpoint's close
                // at the drain deadline. Not at once when idle: a finished response may
                // still be in quinn's send buffer, unacknowledged, and a close drops it.
                goaway(&mut h3).await;
            }
            Some(Ok(Some(resolver))) => {
                let handler = handler.clone();
                let front = front.clone();
                inflight.fetch_add(1, Ordering::AcqRel);
                let ended = Ended(inflight.clone(), done.clone());
                tokio::spawn(async move {
                    let _ended = ended;
                    // The request head within `server.header_read_timeout`, as over TCP.
                    match tokio::time::timeout(header_read_timeout, resolver.resolve_request())
                        .await
                    {
                        Ok(Ok((req, stream))) => {
                            request(&handler, &front, req, stream, limits.send_timeout).await
                        }
                        Ok(Err(e)) => tracing::debug!(error = %e, "bad HTTP/3 request"),
                        Err(_) => tracing::debug!("HTTP/3 request head timed out"),
                    }
                });
            }
            Some(Ok(None)) => break,
            Some(Err(e)) => {
                if !e.is_h3_no_error() {
                    tracing::debug!(error = %e, "HTTP/3 connection ended with an error");
                }
                break;
            }
        }
    }
}

/// HTTP/3's bound sockets, one per serving thread, and what their endpoints share.
pub struct Sockets {
    pub udp: Vec<std::net::UdpSocket>,
    pub shared: Shared,
}

/// The HTTP/3 listener: its sockets, what it adds around the handler, and its settings.
pub struct Service {
    pub sockets: Sockets,
    pub front: Arc<Front>,
    pub settings: Settings,
}

/// What the HTTP/3 listener is served with.
#[derive(Clone)]
pub struct Settings {
    pub http3: Http3,
    pub limits: Limits,
    /// Bounds the connection's setup (control stream, SETTINGS) and each request head.
    pub header_read_timeout: Duration,
}

/// Sends GOAWAY, waiting at most [`super::conn::GRACE`] for the control stream to take it
/// (a client that never raises its windows cannot hold the connection's task here).
async fn goaway(h3: &mut H3Conn) {
    if tokio::time::timeout(super::conn::GRACE, h3.shutdown(0))
        .await
        .is_err()
    {
        tracing::debug!("HTTP/3 GOAWAY not taken within the grace period");
    }
}

/// HTTP/3's "no error" application close code.
const H3_NO_ERROR: u32 = 0x100;

/// Ends a request in flight on drop.
struct Ended(Arc<AtomicUsize>, Arc<Notify>);

impl Drop for Ended {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
        self.1.notify_one();
    }
}

/// Answers one request on its stream. A request body, which GET and HEAD do not have, is
/// not read.
async fn request(
    handler: &Handler,
    front: &Front,
    req: http::Request<()>,
    mut stream: H3Stream,
    send_timeout: Duration,
) {
    let head_only = req.method() == http::Method::HEAD;
    // Boxed: the handler's future is large and an async fn's state is as large as its
    // largest await, so without the box every stream would keep that size for as long as
    // its body takes to send (thousands of streams when clients stall).
    let resp = Box::pin(front.respond(handler, req)).await;
    let (mut parts, mut body) = resp.into_parts();
    // hyper adds Date for HTTP/1.1 and HTTP/2; h3 does not.
    super::insert_default(&mut parts.headers, header::DATE, || {
        HeaderValue::from_str(&httpdate::fmt_http_date(SystemTime::now()))
            .unwrap_or(HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 GMT"))
    });
    // hyper derives Content-Length from an exact body size for HTTP/1.1 and HTTP/2; do the
    // same here so every protocol carries the same header.
    let status = parts.status;
    if !head_only
        && status != http::StatusCode::NOT_MODIFIED
        && status != http::StatusCode::NO_CONTENT
        && let Some(len) = http_body::Body::size_hint(&body).exact()
    {
        super::insert_default(&mut parts.headers, header::CONTENT_LENGTH, || {
            HeaderValue::from(len)
        });
    }
    // Connection-specific fields are forbidden in HTTP/3 (RFC 9114, 4.2).
    for h in [
        header::CONNECTION,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::HeaderName::from_static("keep-alive"),
        header::HeaderName::from_static("proxy-connection"),
    ] {
        parts.headers.remove(h);
    }
    // The head is stream data under the client's flow control like the body: a client whose
    // window cannot take it stalls here, under the same send timeout as a DATA frame.
    let head = stream.send_response(http::Response::from_parts(parts, ()));
    match within(send_timeout, head).await {
        Sent::Done => {}
        Sent::Failed(e) => {
            tracing::debug!(error = %e, "HTTP/3 response head not sent");
            return;
        }
        Sent::Stalled => return stalled(handler, &mut stream),
    }
    if !head_only {
        while let Some(frame) = body.frame().await {
            let data = match frame {
                Ok(f) => match f.into_data() {
                    Ok(d) => d,
                    Err(_) => continue,
                },
                Err(e) => {
                    // The bytes behind this response failed (verification, origin cut): reset
                    // the stream so the client sees an error, not a short body.
                    tracing::debug!(error = %e, "HTTP/3 response body failed; resetting the stream");
                    stream.stop_stream(h3::error::Code::H3_INTERNAL_ERROR);
                    return;
                }
            };
            if data.is_empty() {
                continue;
            }
            match within(send_timeout, stream.send_data(data)).await {
                Sent::Done => {}
                Sent::Failed(e) => {
                    tracing::debug!(error = %e, "HTTP/3 response body not sent");
                    return;
                }
                Sent::Stalled => return stalled(handler, &mut stream),
            }
        }
    }
    // Finishing may write too (h3 sends a grease frame on one stream per connection).
    match within(send_timeout, stream.finish()).await {
        Sent::Done => {}
        Sent::Failed(e) => tracing::debug!(error = %e, "HTTP/3 response not finished"),
        Sent::Stalled => stalled(handler, &mut stream),
    }
}

/// How one write on a response stream went.
enum Sent {
    Done,
    Failed(h3::error::StreamError),
    /// Not taken within `server.send_timeout`: the client's windows stayed closed.
    Stalled,
}

/// Awaits `write` (the head, a DATA frame, the finish) for at most `send_timeout`.
async fn within(
    send_timeout: Duration,
    write: impl Future<Output = Result<(), h3::error::StreamError>>,
) -> Sent {
    match tokio::time::timeout(send_timeout, write).await {
        Ok(Ok(())) => Sent::Done,
        Ok(Err(e)) => Sent::Failed(e),
        Err(_) => Sent::Stalled,
    }
}

/// A response that made no progress for `send_timeout`: reset, and counted.
fn stalled(handler: &Handler, stream: &mut H3Stream) {
    handler
        .metrics()
        .conns
        .h3_stream_timeouts
        .fetch_add(1, Ordering::Relaxed);
    tracing::debug!("HTTP/3 response made no progress; resetting the stream");
    stream.stop_stream(h3::error::Code::H3_REQUEST_CANCELLED);
}
