//! Hardening under abuse, on real sockets against `edge serve`: idle connections closed after
//! `server.idle_timeout` (silent TCP, keep-alive, HTTP/2 with a GOAWAY), heads beyond
//! `server.max_header_bytes` refused with 431, the connection cap closing the oldest idle
//! connection to admit a new one, a stalled response reset after `server.send_timeout`, and
//! strict Host (duplicate, invalid -> 400), and HTTP/1 request-line versions (1.x > 1.1
//! served as 1.1, 2.0 -> 505).

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use support::{Node, Workspace, metrics, raw_exchange, write_files};

const SITE: &str = "shop";
const INDEX: &[u8] = b"<h1>home</h1>\n";

struct Fixture {
    node: Node,
    _ws: Workspace,
}

fn fixture(server: &str, files: &[(&str, Vec<u8>)]) -> Fixture {
    let ws = Workspace::new();
    let dir = ws.site_dir(SITE);
    let mut all = vec![("index.html", INDEX.to_vec())];
    all.extend(files.iter().cloned());
    write_files(&dir, &all);
    ws.publish(&dir, SITE);
    let cfg = ws.config("edge.toml", &format!("[server]\n{server}\n"));
    let node = ws.serve().default_site(SITE).config(cfg).start();
    Fixture { node, _ws: ws }
}

/// Reads until the peer closes (EOF or reset); the time it took and the bytes read.
fn until_closed(s: &mut TcpStream, within: Duration) -> Option<(Duration, Vec<u8>)> {
    let start = Instant::now();
    s.set_read_timeout(Some(within)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 64 << 10];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Some((start.elapsed(), got)),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return Some((start.elapsed(), got));
            }
            Err(_) => return None,
        }
        if start.elapsed() > within {
            return None;
        }
    }
}

fn get(addr: SocketAddr, path: &str) -> u16 {
    raw_exchange(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .status
}

#[test]
fn silent_and_keep_alive_connections_close_after_idle_timeout() {
    let f = fixture(
        "idle_timeout = \"600ms\"\nheader_read_timeout = \"30s\"",
        &[],
    );
    // Connected, nothing sent.
    let mut silent = TcpStream::connect(f.node.addr).unwrap();
    // One request, then nothing (keep-alive).
    let mut kept = TcpStream::connect(f.node.addr).unwrap();
    kept.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let (t, _) = until_closed(&mut silent, Duration::from_secs(10)).expect("silent closed");
    assert!(t >= Duration::from_millis(400), "closed too early: {t:?}");
    let (_, bytes) = until_closed(&mut kept, Duration::from_secs(10)).expect("idle closed");
    assert!(bytes.starts_with(b"HTTP/1.1 200"), "served first");
    // The node still serves.
    assert_eq!(get(f.node.addr, "/"), 200);
}

/// The admin listener's connection gauges: (open, idle, parked).
fn conn_gauges(admin: SocketAddr) -> (u64, u64, u64) {
    let m = metrics(admin);
    (
        m("edge_connections_open"),
        m("edge_connections_idle"),
        m("edge_connections_parked"),
    )
}

/// Opens `n` keep-alive connections, one request each, and waits until they are parked
/// (idle past PARK_AFTER: no task of their own, only the socket); with when each got its
/// response.
fn parked_connections(f: &Fixture, n: usize) -> Vec<(TcpStream, Instant)> {
    let conns: Vec<(TcpStream, Instant)> = (0..n)
        .map(|_| {
            let mut s = TcpStream::connect(f.node.addr).unwrap();
            s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            assert_eq!(responses(&mut s, 1), [200]);
            let served = Instant::now();
            // Idle in this order: the gate closes the oldest first.
            std::thread::sleep(Duration::from_millis(20));
            (s, served)
        })
        .collect();
    let admin = f.node.admin.expect("the admin address");
    let deadline = Instant::now() + Duration::from_secs(5);
    while conn_gauges(admin).2 != n as u64 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(conn_gauges(admin).2, n as u64, "all {n} parked");
    conns
}

/// A parked HTTP/1 connection has no task and no timer of its own; the gate still closes it:
/// evicted (oldest first) at the cap, after `idle_timeout` (counted), and at shutdown, where
/// the node exits once its parked connections are closed instead of waiting out its drain.
#[test]
fn parked_connections_are_evicted_time_out_and_let_the_node_drain() {
    let f = fixture("max_connections = 4\nidle_timeout = \"4s\"", &[]);
    let admin = f.node.admin.expect("the admin address");
    let mut parked = parked_connections(&f, 4);
    // A fifth client: the oldest parked connection makes room.
    assert_eq!(
        get(f.node.addr, "/"),
        200,
        "a new client is served at the cap"
    );
    let (_, bytes) = until_closed(&mut parked[0].0, Duration::from_secs(5)).expect("evicted");
    assert!(bytes.is_empty(), "nothing sent to the evicted one");
    assert_eq!(
        metrics(admin)("edge_connections_closed_total{reason=\"evicted_idle\"}"),
        1
    );
    // The others: closed once idle for 4 s, not before (the client saw its response a
    // little after the node went idle), and not much after.
    for (s, served) in &mut parked[1..] {
        let (_, bytes) = until_closed(s, Duration::from_secs(10)).expect("timed out");
        assert!(bytes.is_empty());
        let idle = served.elapsed();
        assert!(
            idle > Duration::from_millis(3800) && idle < Duration::from_secs(7),
            "closed {idle:?} after its response, at idle_timeout (4 s)"
        );
    }
    let m = metrics(admin);
    assert_eq!(
        m("edge_connections_closed_total{reason=\"idle_timeout\"}"),
        3
    );
    // Counted out once the connection's last reference goes, just after its socket closed.
    let deadline = Instant::now() + Duration::from_secs(2);
    while conn_gauges(admin) != (0, 0, 0) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(conn_gauges(admin), (0, 0, 0), "counted out");

    // Shutdown: parked connections do not hold the drain (10 s) open.
    let mut f = fixture("idle_timeout = \"60s\"", &[]);
    let mut parked = parked_connections(&f, 3);
    let (took, ok) = f
        .node
        .terminate(Duration::from_secs(8))
        .expect("the node exits before its drain deadline");
    assert!(ok, "a clean exit");
    assert!(took < Duration::from_secs(5), "exited after {took:?}");
    for (s, _) in &mut parked {
        assert!(until_closed(s, Duration::from_secs(2)).is_some(), "closed");
    }
}

/// Reads until `count` complete responses with `Content-Length` bodies have arrived; their
/// status codes.
fn responses(s: &mut TcpStream, count: usize) -> Vec<u16> {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 16 << 10];
    loop {
        let mut statuses = Vec::new();
        let mut rest = &got[..];
        while let Some(end) = rest.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&rest[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: ")?.trim().parse().ok())
                .unwrap_or(0);
            if rest.len() < end + 4 + len {
                break;
            }
            statuses.push(head[9..12].parse().unwrap());
            rest = &rest[end + 4 + len..];
        }
        if statuses.len() >= count {
            return statuses;
        }
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return statuses,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// An idle connection holds no hyper state once parked (rebuilt once the socket is readable), and
/// that changes nothing a client sees: a connection silent for a while is served when it
/// finally sends; a keep-alive one is served again after a pause, pipelined requests and a
/// head split over a pause included; a request body sent late is never read as a request;
/// and the gauges count every such connection open and idle.
#[test]
fn idle_connections_are_served_when_they_speak_again() {
    // Longer than PARK_AFTER (1 s): each pause parks the connection.
    const PARKED: Duration = Duration::from_millis(1500);
    let f = fixture("idle_timeout = \"20s\"", &[]);
    let admin = f.node.admin.expect("the admin address");
    let mut silent = TcpStream::connect(f.node.addr).unwrap();
    let mut kept = TcpStream::connect(f.node.addr).unwrap();
    kept.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_eq!(responses(&mut kept, 1), [200]);
    assert_eq!(
        conn_gauges(admin).2,
        1,
        "within PARK_AFTER of its response, only the silent one is parked"
    );
    std::thread::sleep(PARKED);
    assert_eq!(conn_gauges(admin), (2, 2, 2), "both open, idle and parked");

    silent
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_eq!(responses(&mut silent, 1), [200], "served after its silence");
    // Two pipelined requests and the start of a third; the rest after a pause.
    kept.write_all(
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /nope HTTP/1.1\r\nHost: x\r\n\r\nGET / HT",
    )
    .unwrap();
    assert_eq!(responses(&mut kept, 2), [200, 404]);
    std::thread::sleep(PARKED);
    kept.write_all(b"TP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert_eq!(responses(&mut kept, 1), [200], "the split head");
    std::thread::sleep(PARKED);
    assert_eq!(conn_gauges(admin), (2, 2, 2), "parked again");

    // A body that looks like a request, sent after a pause: one response only.
    let smuggled = b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n";
    kept.write_all(
        format!(
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
            smuggled.len()
        )
        .as_bytes(),
    )
    .unwrap();
    std::thread::sleep(PARKED);
    let _ = kept.write_all(smuggled);
    let _ = kept.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let got = responses(&mut kept, 3);
    assert_eq!(got[0], 405);
    assert!(
        !got.contains(&404),
        "the body was read as a request: {got:?}"
    );
    drop((silent, kept));
    std::thread::sleep(PARKED);
    assert_eq!(conn_gauges(admin), (0, 0, 0), "closed ones counted out");
}

#[test]
fn idle_h2_gets_a_goaway() {
    let f = fixture("idle_timeout = \"600ms\"", &[]);
    let mut s = TcpStream::connect(f.node.addr).unwrap();
    // Prior-knowledge h2c: the preface and an empty SETTINGS frame.
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .unwrap();
    let (t, bytes) = until_closed(&mut s, Duration::from_secs(10)).expect("closed");
    assert!(t >= Duration::from_millis(400), "{t:?}");
    let frames = h2_frame_types(&bytes);
    assert!(frames.contains(&7), "a GOAWAY before the close: {frames:?}");
}

/// The frame types in a server's HTTP/2 byte stream.
fn h2_frame_types(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while b.len() >= 9 {
        let len = (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2]);
        out.push(b[3]);
        b = &b[(9 + len).min(b.len())..];
    }
    out
}

#[test]
fn request_heads_beyond_max_header_bytes_get_431() {
    let f = fixture("max_header_bytes = \"16KiB\"", &[]);
    let big = "a".repeat(20 << 10);
    let r = raw_exchange(
        f.node.addr,
        format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n").as_bytes(),
    );
    assert_eq!(r.status, 431);
    let fits = "a".repeat(8 << 10);
    let r = raw_exchange(
        f.node.addr,
        format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {fits}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    );
    assert_eq!(r.status, 200);
}

#[test]
fn at_the_cap_the_oldest_idle_connection_makes_room() {
    let f = fixture("max_connections = 8\nidle_timeout = \"60s\"", &[]);
    let mut idle: Vec<TcpStream> = (0..8)
        .map(|_| {
            let s = TcpStream::connect(f.node.addr).unwrap();
            // Admitted in this order: wait until each is counted before the next.
            std::thread::sleep(Duration::from_millis(20));
            s
        })
        .collect();
    let start = Instant::now();
    assert_eq!(
        get(f.node.addr, "/"),
        200,
        "a new client is served at the cap"
    );
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    // The oldest idle one was closed for it.
    let (_, bytes) = until_closed(&mut idle[0], Duration::from_secs(5)).expect("oldest closed");
    assert!(bytes.is_empty());
    // The newest silent one is still open (no EOF within a short read).
    idle[7]
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut b = [0u8; 1];
    assert!(
        matches!(idle[7].read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut)
    );
}

#[test]
fn a_stalled_response_is_reset_after_send_timeout() {
    let big: Vec<u8> = (0..(24u32 << 20)).map(|i| (i % 251) as u8).collect();
    let f = fixture("send_timeout = \"1s\"", &[("big.bin", big)]);
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.set_recv_buffer_size(16 << 10).unwrap();
    s.connect(&f.node.addr.into()).unwrap();
    let mut s: TcpStream = s.into();
    s.write_all(b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    // Read nothing until well past send_timeout, then drain: the body is cut short.
    std::thread::sleep(Duration::from_secs(4));
    let (_, bytes) = until_closed(&mut s, Duration::from_secs(20)).expect("reset");
    assert!(bytes.starts_with(b"HTTP/1.1 200"));
    assert!(bytes.len() < 24 << 20, "cut: {} bytes", bytes.len());
}

#[test]
fn duplicate_and_invalid_hosts_get_400() {
    let f = fixture("", &[]);
    for req in [
        &b"GET / HTTP/1.1\r\nHost: other.example\r\nHost: 127.0.0.1\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: a b@c/d\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x:8x\r\n\r\n",
    ] {
        let r = raw_exchange(f.node.addr, req);
        assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(req));
    }
    assert_eq!(get(f.node.addr, "/"), 200);
}

/// `HTTP/1.x` with x > 1 is served as HTTP/1.1 (RFC 9110 2.5), on a fresh connection and
/// after other requests on a keep-alive one (heads, and a body that looks like a request line,
/// followed exactly); `HTTP/2.0` in HTTP/1 framing gets 505 and the connection is closed.
#[test]
fn higher_minor_versions_are_served_as_1_1_and_major_2_gets_505() {
    let f = fixture("", &[]);
    for req in [
        &b"GET / HTTP/1.2\r\nHost: x\r\nConnection: close\r\n\r\n"[..],
        b"GET / HTTP/1.9\nHost: x\nConnection: close\n\n",
    ] {
        let r = raw_exchange(f.node.addr, req);
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(req));
        assert!(r.raw.starts_with(b"HTTP/1.1 200"), "{:?}", r);
        assert_eq!(r.body, INDEX);
    }
    // Pipelined on one connection: 1.1, a POST whose 19-byte body reads like a request line
    // (not rewritten, not served: 405), then 1.3, sent in small pieces.
    let mut s = TcpStream::connect(f.node.addr).unwrap();
    let pipeline = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n\
        POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 19\r\n\r\nGET /x HTTP/1.2\r\n\r\n\
        GET / HTTP/1.3\r\nHost: x\r\nConnection: close\r\n\r\n";
    for piece in pipeline.chunks(5) {
        s.write_all(piece).unwrap();
        std::thread::sleep(Duration::from_millis(1));
    }
    let (_, got) = until_closed(&mut s, Duration::from_secs(10)).expect("closed after the last");
    let text = String::from_utf8_lossy(&got);
    let statuses: Vec<&str> = text
        .match_indices("HTTP/1.1 ")
        .map(|(i, _)| &text[i + 9..i + 12])
        .collect();
    assert_eq!(statuses, ["200", "405", "200"], "{text}");

    for req in [
        &b"GET / HTTP/2.0\r\nHost: x\r\n\r\n"[..],
        b"GET / HTTP/3.0\r\nHost: x\r\n\r\n",
    ] {
        let mut s = TcpStream::connect(f.node.addr).unwrap();
        s.write_all(req).unwrap();
        let (_, got) = until_closed(&mut s, Duration::from_secs(10)).expect("closed after 505");
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 505"), "{text}");
        assert!(text.contains("in HTTP/1 framing"), "{text}");
        assert!(
            text.to_ascii_lowercase().contains("connection: close"),
            "{text}"
        );
    }
    // Prior-knowledge h2c still gets HTTP/2 (its preface is not a request line to rewrite).
    let mut s = TcpStream::connect(f.node.addr).unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut head = [0u8; 9];
    s.read_exact(&mut head).unwrap();
    assert_eq!(
        head[3], 0x04,
        "the server's first frame is SETTINGS: {head:02x?}"
    );
    assert_eq!(get(f.node.addr, "/"), 200);
}

/// One request on a fresh prior-knowledge h2c connection, with `headers` literally (HPACK
/// literals without indexing); the first byte of the response's header block (the static
/// table index of its `:status`: 0x88 is 200, 0x8c is 400), or the error code of a
/// RST_STREAM.
fn h2_status_byte(addr: SocketAddr, headers: &[(&str, &str)]) -> Result<u8, u32> {
    let mut block = Vec::new();
    for (k, v) in headers {
        assert!(k.len() < 127 && v.len() < 127);
        block.push(0x00);
        block.push(k.len() as u8);
        block.extend_from_slice(k.as_bytes());
        block.push(v.len() as u8);
        block.extend_from_slice(v.as_bytes());
    }
    let frame = |kind: u8, flags: u8, stream: u32, payload: &[u8]| {
        let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        f.extend_from_slice(&[kind, flags]);
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    };
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(0x4, 0, 0, &[]));
    out.extend(frame(0x1, 0x5, 1, &block)); // END_STREAM | END_HEADERS
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(&out).unwrap();
    loop {
        let mut head = [0u8; 9];
        s.read_exact(&mut head).expect("a frame from the server");
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0u8; len];
        s.read_exact(&mut payload).unwrap();
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        match head[3] {
            0x1 if stream == 1 => {
                // Skip padding/priority fields when flagged.
                let mut p = &payload[..];
                if head[4] & 0x8 != 0 {
                    p = &p[1..];
                }
                if head[4] & 0x20 != 0 {
                    p = &p[5..];
                }
                return Ok(p[0]);
            }
            0x3 if stream == 1 => {
                return Err(u32::from_be_bytes(payload[..4].try_into().unwrap()));
            }
            0x7 => panic!("GOAWAY: {payload:02x?}"),
            _ => {}
        }
    }
}

/// HTTP/2: `:authority` and `host` must agree (400 otherwise), on a real h2c connection.
#[test]
fn h2_authority_that_disagrees_with_host_gets_400() {
    let f = fixture("", &[]);
    let base = [(":method", "GET"), (":scheme", "http"), (":path", "/")];
    let with = |extra: &[(&'static str, &'static str)]| {
        let mut h = base.to_vec();
        h.extend_from_slice(extra);
        h2_status_byte(f.node.addr, &h)
    };
    assert_eq!(
        with(&[(":authority", "x")]),
        Ok(0x88),
        "200 with :authority alone"
    );
    assert_eq!(
        with(&[(":authority", "x"), ("host", "x")]),
        Ok(0x88),
        "200 when they agree"
    );
    assert_eq!(
        with(&[(":authority", "x"), ("host", "other.example")]),
        Ok(0x8c),
        "400 when they disagree"
    );
    // An :authority that is not a valid authority is a malformed request: 400, or the
    // stream reset with PROTOCOL_ERROR by the HTTP/2 layer (RFC 9113 8.1.1).
    let bad = with(&[(":authority", "a b")]);
    assert!(matches!(bad, Ok(0x8c) | Err(1)), "{bad:?}");
}

/// Warnings a client can cause are rate-limited per kind: 300 requests for files whose
/// objects the origin lost write at most 5 `request failed` lines per second, and count the
/// rest in `edge_log_suppressed_total{kind="request"}`; every request still gets its answer.
#[test]
fn request_failure_warnings_are_rate_limited() {
    let ws = Workspace::new();
    let dir = ws.site_dir(SITE);
    let files: Vec<(String, Vec<u8>)> = (0..300)
        .map(|i| (format!("f{i}.txt"), format!("file {i}\n").into_bytes()))
        .collect();
    write_files(&dir, &files);
    ws.publish(&dir, SITE);
    let node = ws.serve().default_site(SITE).no_disk().start();
    // The deploy is adopted (its root node cached); then the origin loses every object.
    assert_eq!(get(node.addr, "/f0.txt"), 200);
    std::fs::remove_dir_all(ws.store().join("objects")).unwrap();
    let start = Instant::now();
    let mut failed = 0;
    for i in 1..300 {
        let status = get(node.addr, &format!("/f{i}.txt"));
        assert!(status >= 500, "/f{i}.txt: {status}");
        failed += 1;
    }
    let secs = start.elapsed().as_secs() + 1;
    std::thread::sleep(Duration::from_millis(200));
    let lines = node.log_text().matches("request failed").count();
    assert!(lines >= 1, "no request failed line at all");
    assert!(
        lines as u64 <= 5 * (secs + 1),
        "{lines} lines for {failed} failures in {secs} s"
    );
    let admin = node.admin.expect("admin listener");
    let metrics = raw_exchange(
        admin,
        b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    let text = String::from_utf8_lossy(&metrics.body);
    let suppressed: f64 = text
        .lines()
        .find(|l| l.starts_with("edge_log_suppressed_total{kind=\"request\"}"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no request kind in\n{text}"));
    assert!(
        suppressed as usize + lines >= failed,
        "{lines} written + {suppressed} suppressed < {failed} failures"
    );
    eprintln!("{failed} failures in {secs} s: {lines} lines written, {suppressed} suppressed");
}
