//! Stalled HTTP/2 and HTTP/3 streams cannot make the node hold memory, and they end after
//! `server.send_timeout` (issue #16, item 1). The attack: many connections open many streams
//! for a 5 MiB disk-cached file and never open their flow-control windows.
//!
//! - HTTP/2 (cleartext, prior knowledge): 20 connections with SETTINGS_INITIAL_WINDOW_SIZE 0,
//!   200 GETs each. No body byte can go out; hyper reads a body's first frame before the
//!   stream has a window (hyper#4003), so each stream holds its first disk block (2 KiB) and
//!   no more. Each stream is reset on its own (RST_STREAM CANCEL) `send_timeout` after it
//!   last made progress; the connections stay open.
//! - HTTP/3: 20 QUIC connections x 100 streams whose receive windows are never raised: half
//!   with a 64-byte stream window (the response head does not fit), half with 16 KiB (the head
//!   and the first blocks go, then the body stalls). Each stream is reset on its own.
//!
//! Both: the node's RSS grows by at most 64 MiB while they are stalled; every stream ends
//! within a bound after `send_timeout` and not before it; the node counts the timeouts; a
//! fresh client gets the whole file during the stall and afterwards.

mod support;
#[path = "support/tls.rs"]
mod tls_support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use support::{H2, Workspace, raw_exchange, write_files};
use tls_support::*;

const FILE: usize = 5 << 20;
const SEND_TIMEOUT: Duration = Duration::from_secs(3);
/// `SEND_TIMEOUT`, and an idle timeout long enough that no connection is closed for being
/// idle while the test runs.
const CONFIG: &str = "[server]\nsend_timeout = \"3s\"\nidle_timeout = \"60s\"\n";
const RSS_BOUND_MIB: f64 = 64.0;
/// How long after the stall began every stream must have ended: the watchdog looks within
/// twice `send_timeout` (conn.rs); the rest is slack for a loaded debug build.
const END_BY: Duration = Duration::from_secs(3 * SEND_TIMEOUT.as_secs() + 10);
/// Streams reset for making no progress.
const H2_SERIES: &str = "edge_streams_reset_total{proto=\"h2\",reason=\"send_timeout\"}";
const H3_SERIES: &str = "edge_streams_reset_total{proto=\"h3\",reason=\"send_timeout\"}";
/// Connections dropped for making no progress (the backstop).
const CONN_SERIES: &str = "edge_connections_closed_total{reason=\"send_timeout\"}";

/// Held for the whole of each test: the two floods (4,000 HTTP/2 streams, 2,000 HTTP/3
/// ones, both clients and nodes in debug builds) do not run at once. Side by side on two
/// cores, one node could take longer than `send_timeout` to answer its flood, and a stream
/// was reset before its head (3,061 of 4,000 heads in one CI run) or the bystander's after
/// waiting behind the other flood.
static ONE_FLOOD: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn file_bytes() -> Vec<u8> {
    (0..FILE as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

/// A resident-memory figure of process `pid` in KiB; `None` once it is gone.
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
}

/// The node's VmRSS sampled every 20 ms on a thread, until stopped (or dropped): the peak.
struct RssPeak {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl RssPeak {
    fn start(pid: u32) -> RssPeak {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut peak = 0;
            while !flag.load(Ordering::Relaxed) {
                let Some(rss) = status_kib(pid, "VmRSS") else {
                    break;
                };
                peak = peak.max(rss);
                std::thread::sleep(Duration::from_millis(20));
            }
            peak
        });
        RssPeak {
            stop,
            thread: Some(thread),
        }
    }

    fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let t = self.thread.take().expect("joined once");
        t.join().expect("the RSS sampler")
    }
}

impl Drop for RssPeak {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Memory figures of one stall, in KiB.
struct Memory {
    start: u64,
    /// VmHWM when the stall began (the high-water mark of warming up).
    hwm_start: u64,
    peak: u64,
    /// VmHWM when every stream had ended: no sample can miss a spike under it.
    hwm: u64,
}

impl Memory {
    /// Growth over the start, by the higher of the sampled peak and the kernel's high-water
    /// mark (which may still be the warm-up's; then the figure overstates).
    fn growth_mib(&self) -> f64 {
        self.peak.max(self.hwm).saturating_sub(self.start) as f64 / 1024.0
    }

    fn report(&self, what: &str) {
        eprintln!(
            "{what}: RSS {:.1} MiB at start (VmHWM {:.1}), peak {:.1} MiB sampled, VmHWM {:.1} MiB at the end: +{:.1} MiB",
            self.start as f64 / 1024.0,
            self.hwm_start as f64 / 1024.0,
            self.peak as f64 / 1024.0,
            self.hwm as f64 / 1024.0,
            self.growth_mib()
        );
    }
}

/// `GET /metrics` on the admin listener: the counter `series`.
async fn send_timeouts(admin: SocketAddr, series: &'static str) -> f64 {
    let r = tokio::task::spawn_blocking(move || {
        let req = format!("GET /metrics HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n");
        raw_exchange(admin, req.as_bytes())
    })
    .await
    .expect("the metrics request");
    assert_eq!(
        r.status,
        200,
        "/metrics: {}",
        String::from_utf8_lossy(&r.body)
    );
    String::from_utf8_lossy(&r.body)
        .lines()
        .find_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            (k == series).then(|| v.parse().expect("a number"))
        })
        .unwrap_or_else(|| panic!("no {series} in /metrics"))
}

/// The file over HTTP/1.1 once, so that it is in the disk tier before the attack.
async fn warm(addr: SocketAddr, data: &[u8]) {
    let r = tokio::task::spawn_blocking(move || {
        raw_exchange(
            addr,
            b"GET /big.bin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
    })
    .await
    .expect("the warm-up request");
    assert_eq!(r.status, 200);
    assert!(r.body == data, "the file, whole");
}

// ---- HTTP/2 --------------------------------------------------------------------------------

const H2_CONNS: usize = 20;
const H2_STREAMS: usize = 200;

/// What became of one stalled HTTP/2 stream.
struct H2Stream {
    conn: usize,
    /// When its response head arrived (headers are not flow-controlled).
    head: Option<Instant>,
    status: Option<u16>,
    /// Body bytes that arrived: none may, with a zero window.
    bytes: usize,
    ended: Option<Instant>,
    how: String,
}

fn h2_why(e: &h2::Error) -> String {
    if e.is_reset() {
        format!("reset ({:?})", e.reason())
    } else if e.is_go_away() {
        format!("GOAWAY ({:?})", e.reason())
    } else if e.is_io() {
        "connection closed".into()
    } else {
        // h2 reports a peer that closed the socket with no GOAWAY as a library error.
        format!("connection ended: {e}")
    }
}

/// Waits for the stream's head, then for its body without ever releasing capacity, until it
/// ends or `deadline`.
async fn stalled_h2(conn: usize, resp: h2::client::ResponseFuture, deadline: Instant) -> H2Stream {
    let mut s = H2Stream {
        conn,
        head: None,
        status: None,
        bytes: 0,
        ended: None,
        how: String::new(),
    };
    let run = async {
        let resp = match resp.await {
            Ok(r) => r,
            Err(e) => return h2_why(&e),
        };
        s.head = Some(Instant::now());
        s.status = Some(resp.status().as_u16());
        let mut body = resp.into_body();
        loop {
            match body.data().await {
                Some(Ok(d)) => s.bytes += d.len(),
                Some(Err(e)) => return h2_why(&e),
                None => return "finished".into(),
            }
        }
    };
    match tokio::time::timeout_at(deadline.into(), run).await {
        Ok(how) => {
            s.ended = Some(Instant::now());
            s.how = how;
        }
        Err(_) => s.how = "still open at the deadline".into(),
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_streams_with_zero_windows_hold_bounded_memory_and_end_after_send_timeout() {
    let _flood = ONE_FLOOD.lock().await;
    let ws = Workspace::new();
    let data = file_bytes();
    let dir = ws.site_dir("big");
    write_files(&dir, &[("big.bin", data.clone())]);
    ws.publish(&dir, "big");
    let node = ws
        .serve()
        .default_site("big")
        .config(ws.config("edge.toml", CONFIG))
        .start();
    let admin = node.admin.expect("the node printed its admin address");
    warm(node.addr, &data).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let start = node.status_kib("VmRSS");
    let hwm_start = node.status_kib("VmHWM");
    let sampler = RssPeak::start(node.pid());

    let began = Instant::now();
    let deadline = began + END_BY + Duration::from_secs(10);
    let uri = format!("http://{}/big.bin", node.addr);
    let mut tasks = Vec::with_capacity(H2_CONNS * H2_STREAMS);
    let mut senders = Vec::with_capacity(H2_CONNS);
    let mut conn_ended = Vec::with_capacity(H2_CONNS);
    for c in 0..H2_CONNS {
        let tcp = tokio::net::TcpStream::connect(node.addr)
            .await
            .expect("connecting");
        // The connection window cannot go below its initial 65,535 bytes (RFC 9113, 6.9.2);
        // with every stream window at 0 none of it can be used anyway.
        let (mut client, conn) = h2::client::Builder::new()
            .initial_window_size(0)
            .initial_connection_window_size(65_535)
            .handshake::<_, Bytes>(tcp)
            .await
            .expect("HTTP/2 handshake");
        let ended = Arc::new(AtomicBool::new(false));
        let flag = ended.clone();
        tokio::spawn(async move {
            let _ = conn.await;
            flag.store(true, Ordering::Relaxed);
        });
        conn_ended.push(ended);
        for _ in 0..H2_STREAMS {
            client = client.ready().await.expect("a stream slot");
            let req = http::Request::get(&uri).body(()).expect("a request");
            let (resp, _) = client.send_request(req, true).expect("sending a request");
            tasks.push(tokio::spawn(stalled_h2(c, resp, deadline)));
        }
        // The node writes each head after its request arrives: its last write on this
        // connection comes after this instant.
        senders.push((client, Instant::now()));
    }
    let sent = began.elapsed();

    // A client arriving during the stall gets the whole file.
    let bystander = H2::connect(node.addr).await;
    let t = Instant::now();
    let r = bystander.get_streamed("/big.bin", |_| {}).await;
    assert!(r.status == 200 && r.complete && r.hash == blake3::hash(&data));
    let bystander_took = t.elapsed();

    let mut streams = Vec::with_capacity(tasks.len());
    for t in tasks {
        streams.push(t.await.expect("a stream task"));
    }
    let mem = Memory {
        start,
        hwm_start,
        peak: sampler.stop(),
        hwm: node.status_kib("VmHWM"),
    };

    // Every stream got its head, and no byte of a body.
    let heads = streams.iter().filter(|s| s.status == Some(200)).count();
    let bytes: usize = streams.iter().map(|s| s.bytes).sum();
    let mut hows: Vec<(String, usize)> = Vec::new();
    for s in &streams {
        match hows.iter_mut().find(|(h, _)| *h == s.how) {
            Some((_, n)) => *n += 1,
            None => hows.push((s.how.clone(), 1)),
        }
    }
    // Per connection: from its last request sent (before the node's last write) to its
    // first stream's end, and from its last response head seen (after the node's last write)
    // to its last stream's end.
    let mut stalls = Vec::new();
    for (c, (_, last_sent)) in senders.iter().enumerate() {
        let mine: Vec<&H2Stream> = streams.iter().filter(|s| s.conn == c).collect();
        let last_head = mine.iter().filter_map(|s| s.head).max();
        let first_end = mine.iter().filter_map(|s| s.ended).min();
        let last_end = mine.iter().filter_map(|s| s.ended).max();
        if let (Some(h), Some(a), Some(b)) = (last_head, first_end, last_end) {
            stalls.push((
                a.saturating_duration_since(*last_sent),
                b.saturating_duration_since(h),
            ));
        }
    }
    let shortest = stalls.iter().map(|s| s.0).min().unwrap_or_default();
    let longest = stalls.iter().map(|s| s.1).max().unwrap_or_default();
    let counted = send_timeouts(admin, H2_SERIES).await;
    let conns_cut = send_timeouts(admin, CONN_SERIES).await;
    let alive = conn_ended
        .iter()
        .filter(|e| !e.load(Ordering::Relaxed))
        .count();
    drop(senders);
    eprintln!(
        "HTTP/2: {H2_CONNS} x {H2_STREAMS} streams sent in {sent:?}; {heads} heads, {bytes} body bytes; ends: {hows:?}"
    );
    eprintln!(
        "HTTP/2: per connection, last request to first end >= {shortest:?}, last head to last end <= {longest:?} (send_timeout {SEND_TIMEOUT:?}); {H2_SERIES} = {counted}, {CONN_SERIES} = {conns_cut}; {alive} connections still open; a fresh client took {bystander_took:?} for the file meanwhile"
    );
    mem.report("HTTP/2 stall");

    assert_eq!(heads, H2_CONNS * H2_STREAMS, "every stream got a 200 head");
    assert_eq!(bytes, 0, "a zero window let body bytes through");
    let open = streams.iter().filter(|s| s.ended.is_none()).count();
    assert_eq!(
        open, 0,
        "{open} streams still open at the deadline: {hows:?}"
    );
    assert_eq!(
        hows,
        vec![("reset (Some(CANCEL))".to_string(), H2_CONNS * H2_STREAMS)],
        "every stream reset on its own"
    );
    assert_eq!(stalls.len(), H2_CONNS);
    assert!(
        // The watchdog's clock counts whole milliseconds.
        shortest + Duration::from_millis(20) >= SEND_TIMEOUT,
        "a stream ended {shortest:?} after its connection's last request, before send_timeout"
    );
    assert!(
        longest <= 2 * SEND_TIMEOUT + Duration::from_secs(3),
        "a stream ended only {longest:?} after its connection's last write"
    );
    assert_eq!(
        counted,
        (H2_CONNS * H2_STREAMS) as f64,
        "one send timeout per stream"
    );
    assert_eq!(conns_cut, 0.0, "no connection dropped: {alive} still open");
    assert_eq!(alive, H2_CONNS, "the connections stay open");
    assert!(
        mem.growth_mib() <= RSS_BOUND_MIB,
        "RSS grew {:.1} MiB with stalled HTTP/2 streams",
        mem.growth_mib()
    );

    // Afterwards a fresh client gets the whole file.
    let fresh = H2::connect(node.addr).await;
    let r = fresh.get_streamed("/big.bin", |_| {}).await;
    assert!(r.status == 200 && r.complete && r.hash == blake3::hash(&data));
    tokio::time::sleep(Duration::from_secs(1)).await;
    eprintln!(
        "HTTP/2: RSS {:.1} MiB after the stall",
        node.status_kib("VmRSS") as f64 / 1024.0
    );
}

// ---- HTTP/3 --------------------------------------------------------------------------------

const H3_CONNS: usize = 20;
const H3_STREAMS: usize = 100;
/// Stream windows of the stalling clients: the response head does not fit in the first (the
/// server's control and QPACK streams, a few dozen bytes, do), the second takes the head and
/// the first blocks of the body (2 + 4 + 8 KiB, and part of the next).
const H3_WINDOWS: [u32; 2] = [64, 16 << 10];

type H3Request = h3::client::RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>;

/// A stalling HTTP/3 client: its endpoint, connection, request sender and driver.
struct H3Client {
    _ep: quinn::Endpoint,
    conn: quinn::Connection,
    send: h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>,
    driver: tokio::task::JoinHandle<()>,
}

impl Drop for H3Client {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// Connects with stream windows of `window` bytes that are never raised (nothing is read),
/// and a connection window that holds every stream's. Keep-alives hold the connection open,
/// as an attacker would, so that QUIC's idle timeout is not what ends it.
async fn stalling_h3(ca: &Ca, addr: SocketAddr, window: u32) -> H3Client {
    let mut transport = quinn::TransportConfig::default();
    transport
        .stream_receive_window(window.into())
        .receive_window((window * H3_STREAMS as u32 * 2).max(1 << 20).into())
        .keep_alive_interval(Some(Duration::from_secs(1)));
    let mut config = quic_client_config(client_config(ca, &[b"h3"]));
    config.transport_config(Arc::new(transport));
    let ep = quic_endpoint(config);
    let conn = ep
        .connect(addr, "localhost")
        .expect("connect")
        .await
        .expect("QUIC handshake");
    let (mut driver, send) = h3::client::new(h3_quinn::Connection::new(conn.clone()))
        .await
        .expect("h3 setup");
    let driver = tokio::spawn(async move {
        let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
    });
    H3Client {
        _ep: ep,
        conn,
        send,
        driver,
    }
}

/// What a stalled stream shows when it is finally read: a reset discards what the stream
/// had buffered (quinn), so a reset stream fails at once, and reading it raises no window.
async fn h3_outcome(mut s: H3Request) -> String {
    fn why(e: &h3::error::StreamError) -> String {
        match e {
            h3::error::StreamError::RemoteTerminate { code, .. }
                if *code == h3::error::Code::H3_REQUEST_CANCELLED =>
            {
                "reset".into()
            }
            e => format!("error: {e}"),
        }
    }
    let wait = Duration::from_secs(2);
    match tokio::time::timeout(wait, s.recv_response()).await {
        Err(_) => "no head, not reset".into(),
        Ok(Err(e)) => why(&e),
        Ok(Ok(_)) => match tokio::time::timeout(wait, s.recv_data()).await {
            Err(_) => "head, then nothing, not reset".into(),
            Ok(Ok(Some(_))) => "body bytes, not reset".into(),
            Ok(Ok(None)) => "finished".into(),
            Ok(Err(e)) => why(&e),
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h3_streams_with_closed_windows_hold_bounded_memory_and_are_reset_after_send_timeout() {
    let _flood = ONE_FLOOD.lock().await;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ca = Ca::new();
    let ws = Workspace::new();
    let data = file_bytes();
    let dir = ws.site_dir("big");
    write_files(&dir, &[("big.bin", data.clone())]);
    ws.publish(&dir, "big");
    let certs = ws.root().join("certs");
    write_pair(&certs, "default", &ca.leaf(&["localhost", "127.0.0.1"]));
    let mut cmd = ws
        .serve()
        .default_site("big")
        .config(ws.config("edge.toml", CONFIG))
        .command();
    cmd.arg("--tls-listen")
        .arg("127.0.0.1:0")
        .arg("--cert-dir")
        .arg(&certs);
    let node =
        TlsNode::start(cmd, &ws.root().join("edge-serve.log")).unwrap_or_else(|e| panic!("{e}"));
    // The admin banner follows the listening lines.
    let admin = support::poll_until(Duration::from_secs(10), Duration::from_millis(20), || {
        let line = node
            .stdout
            .lock()
            .expect("stdout lines")
            .iter()
            .find_map(|l| l.strip_prefix("edge admin on http://").map(str::to_owned));
        async move { line?.trim_end_matches('/').parse::<SocketAddr>().ok() }
    })
    .await
    .expect("the node printed its admin address");
    warm(node.http, &data).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let start = status_kib(node.pid(), "VmRSS").expect("the node's RSS");
    let hwm_start = status_kib(node.pid(), "VmHWM").expect("the node's VmHWM");
    let sampler = RssPeak::start(node.pid());

    let began = Instant::now();
    let mut clients = Vec::with_capacity(H3_CONNS);
    let mut streams: Vec<(u32, H3Request)> = Vec::with_capacity(H3_CONNS * H3_STREAMS);
    for c in 0..H3_CONNS {
        let window = H3_WINDOWS[c % H3_WINDOWS.len()];
        let mut client = stalling_h3(&ca, node.https, window).await;
        for _ in 0..H3_STREAMS {
            let req = http::Request::get("https://localhost/big.bin")
                .body(())
                .expect("a request");
            let mut s = client
                .send
                .send_request(req)
                .await
                .expect("sending a request");
            let _ = s.finish().await;
            streams.push((window, s));
        }
        clients.push(client);
    }
    let sent = began.elapsed();

    // A client arriving during the stall gets the whole file.
    let ep = quic_endpoint(quic_client_config(client_config(&ca, &[b"h3"])));
    let t = Instant::now();
    let bystander = H3::connect(&ep, node.https, "localhost")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let r = bystander.get("/big.bin").await;
    assert!(r.status == 200 && r.complete && r.body == data);
    let bystander_took = t.elapsed();

    // The node counts each stream it resets; wait (bounded) until it has counted them all.
    let total = (H3_CONNS * H3_STREAMS) as f64;
    let mut first_reset = None;
    let mut counted = 0.0;
    while began.elapsed() < END_BY + sent {
        counted = send_timeouts(admin, H3_SERIES).await;
        if counted > 0.0 && first_reset.is_none() {
            first_reset = Some(began.elapsed());
        }
        if counted >= total {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let all_reset = began.elapsed();
    let mem = Memory {
        start,
        hwm_start,
        peak: sampler.stop(),
        hwm: status_kib(node.pid(), "VmHWM").expect("the node's VmHWM"),
    };

    // Only now does the client look at its streams.
    let mut outcomes = Vec::with_capacity(streams.len());
    for (window, s) in streams {
        outcomes.push((window, tokio::spawn(h3_outcome(s))));
    }
    let mut hows: Vec<(u32, String, usize)> = Vec::new();
    for (window, t) in outcomes {
        let how = t.await.expect("an outcome task");
        match hows.iter_mut().find(|(w, h, _)| *w == window && *h == how) {
            Some((_, _, n)) => *n += 1,
            None => hows.push((window, how, 1)),
        }
    }
    let alive = clients
        .iter()
        .filter(|c| c.conn.close_reason().is_none())
        .count();
    eprintln!(
        "HTTP/3: {H3_CONNS} x {H3_STREAMS} streams (stream windows {H3_WINDOWS:?} B) sent in {sent:?}; first reset counted {first_reset:?}, {counted} of {total} by {all_reset:?} (send_timeout {SEND_TIMEOUT:?})"
    );
    eprintln!(
        "HTTP/3: streams by window and outcome: {hows:?}; {alive} connections still open; a fresh client took {bystander_took:?} for the file meanwhile"
    );
    mem.report("HTTP/3 stall");

    let first = first_reset.expect("no stream was reset");
    assert!(
        first + Duration::from_millis(100) >= SEND_TIMEOUT,
        "a stream was reset {first:?} after the first request, before send_timeout"
    );
    assert_eq!(counted, total, "a send timeout per stream");
    assert!(
        all_reset <= sent + 2 * SEND_TIMEOUT + Duration::from_secs(5),
        "the last stream was reset {all_reset:?} after the first request"
    );
    let reset: usize = hows
        .iter()
        .filter(|(_, h, _)| h == "reset")
        .map(|(_, _, n)| n)
        .sum();
    assert_eq!(reset, H3_CONNS * H3_STREAMS, "every stream reset: {hows:?}");
    assert_eq!(alive, H3_CONNS, "the connections stay usable");
    assert!(
        mem.growth_mib() <= RSS_BOUND_MIB,
        "RSS grew {:.1} MiB with stalled HTTP/3 streams",
        mem.growth_mib()
    );

    // Afterwards a fresh client gets the whole file.
    let fresh = H3::connect(&ep, node.https, "localhost")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let r = fresh.get("/big.bin").await;
    assert!(r.status == 200 && r.complete && r.body == data);
    drop(clients);
    tokio::time::sleep(Duration::from_secs(1)).await;
    eprintln!(
        "HTTP/3: RSS {:.1} MiB after the stall",
        status_kib(node.pid(), "VmRSS").unwrap_or_default() as f64 / 1024.0
    );
}
