//! Hardening under abuse, on real sockets against `edge serve`: idle connections closed after
//! `server.idle_timeout` (silent TCP, keep-alive, HTTP/2 with a GOAWAY), heads beyond
//! `server.max_header_bytes` refused with 431, the connection cap closing the oldest idle
//! connection to admit a new one, a stalled response reset after `server.send_timeout`, and
//! strict Host (duplicate, invalid -> 400).

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use support::{Node, Workspace, raw_exchange, write_files};

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
