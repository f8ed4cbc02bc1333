//! HTTP/3 end to end against a real `edge serve` process, with a quinn + h3 client and
//! certificates made by rcgen: the same bytes and headers as HTTP/1.1 cleartext through the
//! one handler; garbage datagrams do not wedge the node; connections and streams are
//! bounded; 0-RTT is off by default and works when switched on.

mod support;
#[path = "support/tls.rs"]
mod tls_support;

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::{H1, Workspace, url_path};
use tls_support::*;

fn site_files() -> Vec<(String, Vec<u8>)> {
    let mut big = vec![0u8; 5 << 20];
    let mut x = 0x2545_f491_u32;
    for b in big.iter_mut() {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        *b = x as u8;
    }
    vec![
        ("index.html".into(), b"<h1>home</h1>\n".to_vec()),
        ("404.html".into(), b"<h1>not here</h1>\n".to_vec()),
        ("docs/index.html".into(), b"<h1>docs</h1>\n".to_vec()),
        ("a b/c#d?.txt".into(), b"odd name\n".to_vec()),
        (
            "\u{fc}n\u{ef}/\u{e7}\u{f8}d\u{e9}.txt".into(),
            "utf-8 \u{2713}\n".into(),
        ),
        ("style.css".into(), b"body { color: red }\n".repeat(500)),
        ("style.css.gz".into(), b"pretend gzip".to_vec()),
        ("big.bin".into(), big),
    ]
}

struct Setup {
    ws: Workspace,
    certs: std::path::PathBuf,
    files: Vec<(String, Vec<u8>)>,
    ca: Ca,
}

fn setup() -> Setup {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ca = Ca::new();
    let ws = Workspace::new();
    let files = site_files();
    let dir = ws.site_dir("site");
    support::write_files(&dir, &files);
    ws.publish(&dir, "site");
    let certs = ws.root().join("certs");
    write_pair(&certs, "default", &ca.leaf(&["localhost", "127.0.0.1"]));
    Setup {
        ws,
        certs,
        files,
        ca,
    }
}

fn start(s: &Setup, config: Option<&str>) -> TlsNode {
    let mut serve = s.ws.serve().default_site("site");
    if let Some(toml) = config {
        serve = serve.config(s.ws.config("edge.toml", toml));
    }
    let mut cmd = serve.command();
    cmd.arg("--tls-listen")
        .arg("127.0.0.1:0")
        .arg("--cert-dir")
        .arg(&s.certs);
    TlsNode::start(cmd, &s.ws.root().join("edge-serve.log")).unwrap_or_else(|e| panic!("{e}"))
}

fn client(ca: &Ca) -> quinn::Endpoint {
    quic_endpoint(quic_client_config(client_config(ca, &[b"h3"])))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h3_serves_the_same_bytes_and_headers_as_http1() {
    let s = setup();
    let node = start(&s, None);
    let ep = client(&s.ca);
    let h3 = H3::connect(&ep, node.https, "localhost")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut h1 = H1::new(node.http);

    let mut paths: Vec<String> = s.files.iter().map(|(p, _)| url_path(p)).collect();
    paths.extend([
        "/".into(),
        "/docs/".into(),
        "/docs".into(),
        "/missing".into(),
    ]);
    for path in &paths {
        let a = h1.get(path).await;
        let b = h3.get(path).await;
        assert_same(&format!("h3 {path}"), &a, &b);
        let date = b.must("date");
        httpdate::parse_http_date(date).unwrap_or_else(|e| panic!("{path}: Date {date:?}: {e}"));
        assert_eq!(
            b.header("alt-svc"),
            None,
            "{path}: no Alt-Svc over h3 itself"
        );
    }
    for (rel, data) in &s.files {
        let b = h3.get(&url_path(rel)).await;
        assert_eq!(b.status, 200, "{rel}");
        assert!(b.body == *data, "{rel}: bytes differ from the file");
    }
    // HEAD, conditional, partial and encoded requests go through the same handler.
    let etag = h1.get("/style.css").await.must("etag").to_owned();
    type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)]);
    let cases: [Case<'_>; 5] = [
        ("HEAD", "/big.bin", &[]),
        ("GET", "/style.css", &[("if-none-match", etag.as_str())]),
        ("GET", "/big.bin", &[("range", "bytes=1000-1999")]),
        ("GET", "/big.bin", &[("range", "bytes=99999999-")]),
        ("GET", "/style.css", &[("accept-encoding", "gzip")]),
    ];
    for (method, path, headers) in cases {
        let a = h1.request(method, path, headers).await;
        let b = h3.request(method, path, headers).await;
        assert_same(&format!("h3 {method} {path} {headers:?}"), &a, &b);
    }
    let r = h3.request("POST", "/", &[]).await;
    assert_eq!((r.status, r.header("allow")), (405, Some("GET, HEAD")));

    // Concurrent requests on one connection.
    let h3 = Arc::new(h3);
    let mut tasks = Vec::new();
    for i in 0..40 {
        let h3 = h3.clone();
        let (rel, data) = s.files[i % s.files.len()].clone();
        tasks.push(tokio::spawn(async move {
            let r = h3.get(&url_path(&rel)).await;
            assert!(r.status == 200 && r.body == data, "{rel}");
        }));
    }
    for t in tasks {
        t.await.expect("a concurrent request");
    }

    // HTTPS responses advertise this port for h3.
    let h2 = H2Tls::connect(node.https, "localhost", client_config(&s.ca, &[b"h2"])).await;
    assert_eq!(
        h2.get("/").await.header("alt-svc"),
        Some(format!("h3=\":{}\"; ma=86400", node.https.port()).as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_datagrams_do_not_crash_or_wedge_the_node() {
    let s = setup();
    let mut node = start(&s, None);
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut x = 0x1234_5678u32;
    let mut noise = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                (x >> 16) as u8
            })
            .collect()
    };
    let mut datagrams: Vec<Vec<u8>> = Vec::new();
    for n in [0usize, 1, 5, 20, 1200, 1500, 65_000] {
        datagrams.push(noise(n));
    }
    // Long-header packets that look like QUIC v1 Initials with garbage inside, with absurd
    // connection id lengths and lengths, and a version negotiation trigger.
    for (first, version, dcid_len) in [
        (0xc3u8, 1u32, 8u8),
        (0xc0, 1, 20),
        (0xc0, 1, 255),
        (0xc0, 0x1a2a_3a4a, 8),
        (0xf0, 1, 0),
    ] {
        let mut p = vec![first];
        p.extend_from_slice(&version.to_be_bytes());
        p.push(dcid_len);
        p.extend(noise(1200));
        datagrams.push(p);
    }
    // Short-header packets for connections that do not exist.
    datagrams.push([&[0x40u8][..], &noise(100)].concat());
    for _ in 0..20 {
        for d in &datagrams {
            let _ = sock.send_to(d, node.https);
        }
    }
    // And a flood of plausible Initials from many source ports.
    for _ in 0..200 {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut p = vec![0xc0u8, 0, 0, 0, 1, 8];
        p.extend(noise(1250));
        let _ = s.send_to(&p, node.https);
    }
    // A handshake and a request after the garbage are the proof it was absorbed.
    let ep = client(&s.ca);
    let h3 = H3::connect(&ep, node.https, "localhost")
        .await
        .unwrap_or_else(|e| panic!("after garbage: {e}"));
    assert!(node.is_alive(), "the node died");
    assert_eq!(h3.get("/").await.status, 200);
    let mut h1 = H1::new(node.http);
    assert_eq!(h1.get("/").await.status, 200);
    // Garbage on an established connection's 4-tuple is dropped, the connection lives on.
    let r = h3.get("/docs/").await;
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_and_streams_are_bounded() {
    let s = setup();
    let node = start(&s, Some("[http3]\nmax_connections = 2\nmax_streams = 3\n"));
    // Every connection from its own client socket (port): the kernel spreads them over the
    // node's endpoints, one per serving thread, and the cap is the node's, not each one's.
    let fresh = || client(&s.ca);
    let (ea, eb) = (fresh(), fresh());
    let a = H3::connect(&ea, node.https, "localhost").await.unwrap();
    let b = H3::connect(&eb, node.https, "localhost").await.unwrap();
    assert_eq!(a.get("/").await.status, 200);
    assert_eq!(b.get("/").await.status, 200);
    for i in 0..8 {
        let e = fresh();
        let refused = H3::connect(&e, node.https, "localhost").await;
        let e = refused
            .err()
            .unwrap_or_else(|| panic!("connection {} beyond the cap of 2 is refused", i + 3));
        assert!(e.to_lowercase().contains("refused"), "{e}");
    }
    let ep = client(&s.ca);

    // Three streams at a time: 30 concurrent requests queue for slots and all complete.
    let a = Arc::new(a);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..30 {
        let a = a.clone();
        let (rel, data) = s.files[i % s.files.len()].clone();
        tasks.push(tokio::spawn(async move {
            let r = a.get(&url_path(&rel)).await;
            assert!(r.status == 200 && r.body == data, "{rel}");
        }));
    }
    for t in tasks {
        t.await.expect("a queued request");
    }
    eprintln!("30 requests over 3 streams took {:?}", started.elapsed());

    // Closing one makes room for another.
    b.conn.close(0u32.into(), b"done");
    drop(b);
    let started = Instant::now();
    let c = loop {
        match H3::connect(&ep, node.https, "localhost").await {
            Ok(c) => break c,
            Err(e) => {
                assert!(started.elapsed() < Duration::from_secs(10), "{e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert_eq!(c.get("/").await.status, 200);
}

/// Connects once to get a session ticket, then again trying 0-RTT. Returns whether the
/// client could send 0-RTT and, if it did, whether the server accepted it, with the reply.
async fn second_connection_0rtt(ep: &quinn::Endpoint, addr: SocketAddr) -> (bool, bool, u16) {
    second_connection_0rtt_from(ep, ep, addr).await
}

/// [`second_connection_0rtt`] with the second connection from `second` (its own UDP port).
async fn second_connection_0rtt_from(
    ep: &quinn::Endpoint,
    second: &quinn::Endpoint,
    addr: SocketAddr,
) -> (bool, bool, u16) {
    let first = H3::connect(ep, addr, "localhost").await.unwrap();
    assert_eq!(first.get("/").await.status, 200);
    // Let the NewSessionTicket arrive, then close.
    tokio::time::sleep(Duration::from_millis(200)).await;
    first.conn.close(0u32.into(), b"bye");
    drop(first);
    let connecting = second.connect(addr, "localhost").unwrap();
    match connecting.into_0rtt() {
        Ok((conn, accepted)) => {
            let h3 = H3::over(conn, "localhost").await.unwrap();
            let r = h3.get("/").await;
            let accepted = accepted.await;
            (true, accepted, r.status)
        }
        Err(connecting) => {
            let conn = connecting.await.unwrap();
            let h3 = H3::over(conn, "localhost").await.unwrap();
            (false, false, h3.get("/").await.status)
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_rtt_is_off_by_default_and_works_when_switched_on() {
    let s = setup();
    let node = start(&s, None);
    let (sent, accepted, status) = second_connection_0rtt(&client(&s.ca), node.https).await;
    assert!(!sent && !accepted, "0-RTT must be off by default");
    assert_eq!(status, 200);
    drop(node);

    let node = start(&s, Some("[http3]\nearly_data = true\n"));
    let (sent, accepted, status) = second_connection_0rtt(&client(&s.ca), node.https).await;
    assert!(sent, "the server's ticket should allow 0-RTT");
    assert!(accepted, "the server should accept 0-RTT");
    assert_eq!(status, 200);

    // From another client port the second connection may reach another serving thread's
    // endpoint: the endpoints share one TLS configuration, so its ticket works there too.
    // (One client configuration: its session store is shared by both client endpoints.)
    let config = quic_client_config(client_config(&s.ca, &[b"h3"]));
    for i in 0..6 {
        let (a, b) = (quic_endpoint(config.clone()), quic_endpoint(config.clone()));
        let (sent, accepted, status) = second_connection_0rtt_from(&a, &b, node.https).await;
        assert!(
            sent && accepted && status == 200,
            "pair {i}: 0-RTT from a new port: sent={sent} accepted={accepted} status={status}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_origin_bytes_never_make_a_complete_h3_response() {
    use loadtest::chaos::{Action, ChaosOrigin, Kind, Rule};
    let s = setup();
    let store = origin_client::store::LocalStore::open(&s.ws.store(), origin_client::Access::Write)
        .unwrap();
    let (_, origin) = ChaosOrigin::start(Arc::new(store), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let mut cmd =
        s.ws.serve()
            .store_location(&origin.url())
            .default_site("site")
            .no_disk()
            .command();
    cmd.arg("--tls-listen")
        .arg("127.0.0.1:0")
        .arg("--cert-dir")
        .arg(&s.certs);
    let node =
        TlsNode::start(cmd, &s.ws.root().join("chaos.log")).unwrap_or_else(|e| panic!("{e}"));
    let ep = client(&s.ca);
    let h3 = H3::connect(&ep, node.https, "localhost").await.unwrap();
    assert_eq!(h3.get("/").await.status, 200);
    let big = &s.files.iter().find(|(n, _)| n == "big.bin").unwrap().1;
    for action in [
        Action::Flip { offset: None },
        Action::Truncate {
            bytes: None,
            fraction: Some(0.5),
        },
    ] {
        let label = format!("{action:?}");
        origin
            .set_rules(vec![Rule::new(action).path("objects/").kind(Kind::Blob)])
            .unwrap();
        let r = h3
            .try_request("GET", "/big.bin", &[])
            .await
            .unwrap_or_else(|e| panic!("{label}: {e}"));
        assert!(
            !(r.status == 200 && r.complete),
            "{label}: a complete 200 from bad origin bytes ({} bytes, right={})",
            r.body.len(),
            r.body == *big
        );
        if r.status == 200 {
            assert!(r.body.len() < big.len(), "{label}: every byte arrived");
        }
        eprintln!(
            "{label}: status {} after {} bytes, complete={}",
            r.status,
            r.body.len(),
            r.complete
        );
        origin.heal();
    }
    // Healed: the whole file, and the connection still works.
    let r = h3.get("/big.bin").await;
    assert!(r.status == 200 && r.complete && r.body == *big);
}

/// An HTTP/3 connection with no request in flight is closed after `server.idle_timeout`
/// (GOAWAY, then the close), also after it served a request; one in use is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_h3_connections_close_after_idle_timeout() {
    let s = setup();
    let node = start(&s, Some("[server]\nidle_timeout = \"800ms\"\n"));
    let ep = client(&s.ca);
    let silent = H3::connect(&ep, node.https, "localhost").await.unwrap();
    let used = H3::connect(&ep, node.https, "localhost").await.unwrap();
    let started = Instant::now();
    assert_eq!(used.get("/").await.status, 200);
    for (name, c) in [("silent", &silent), ("after a request", &used)] {
        let closed = tokio::time::timeout(Duration::from_secs(10), c.conn.closed())
            .await
            .unwrap_or_else(|_| panic!("{name}: not closed within 10 s"));
        let t = started.elapsed();
        assert!(
            t >= Duration::from_millis(600),
            "{name}: closed after {t:?}: {closed}"
        );
        eprintln!("{name}: closed after {t:?}: {closed}");
    }
    // A new connection is served.
    let c = H3::connect(&ep, node.https, "localhost").await.unwrap();
    assert_eq!(c.get("/").await.status, 200);
}

/// A request stream whose head never completes is dropped after `server.header_read_timeout`
/// (as over TCP); the connection, then idle, closes after `server.idle_timeout`, instead of
/// being held open by the half-sent head.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unfinished_h3_request_head_does_not_hold_the_connection() {
    let s = setup();
    let node = start(
        &s,
        Some("[server]\nidle_timeout = \"800ms\"\nheader_read_timeout = \"1s\"\n"),
    );
    let ep = client(&s.ca);
    let c = H3::connect(&ep, node.https, "localhost").await.unwrap();
    let started = Instant::now();
    let (mut send, _recv) = c.conn.open_bi().await.expect("a request stream");
    // A HEADERS frame (type 0x01) announcing 100 bytes, of which 2 are sent; never finished.
    send.write_all(&[0x01, 0x40, 0x64, 0x00, 0x00])
        .await
        .expect("the start of a head");
    let closed = tokio::time::timeout(Duration::from_secs(10), c.conn.closed())
        .await
        .expect("the connection is closed within 10 s, not held by the unfinished head");
    let t = started.elapsed();
    eprintln!("closed after {t:?}: {closed}");
    assert!(
        t >= Duration::from_millis(1_600),
        "closed after {t:?}, before the head timed out and the connection was idle: {closed}"
    );
    // The node serves a new connection.
    let c = H3::connect(&ep, node.https, "localhost").await.unwrap();
    assert_eq!(c.get("/").await.status, 200);
}

/// The local ports and inodes of the sockets in a `/proc/net/{udp,tcp}` table, with the
/// state column (`0A` is a TCP listener; `07` an unconnected UDP socket).
fn proc_net(table: &str) -> Vec<(u16, String, u64)> {
    let text = std::fs::read_to_string(format!("/proc/net/{table}")).unwrap();
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let port = u16::from_str_radix(f.get(1)?.rsplit(':').next()?, 16).ok()?;
            Some((port, f.get(3)?.to_string(), f.get(9)?.parse().ok()?))
        })
        .collect()
}

/// The socket inodes process `pid` holds.
fn socket_inodes(pid: u32) -> std::collections::HashSet<u64> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| {
            let target = std::fs::read_link(e.ok()?.path()).ok()?;
            let t = target.to_str()?;
            t.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
        })
        .collect()
}

/// CPU time (user + system, clock ticks) of each thread of `pid` named `edge-worker-*`.
fn worker_cpu(pid: u32) -> std::collections::BTreeMap<String, u64> {
    let mut out = std::collections::BTreeMap::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let dir = t.unwrap().path();
        let Ok(name) = std::fs::read_to_string(dir.join("comm")) else {
            continue;
        };
        let name = name.trim().to_owned();
        if !name.starts_with("edge-worker-") {
            continue;
        }
        let stat = std::fs::read_to_string(dir.join("stat")).unwrap();
        // After the `(comm)` field: state is field 3, utime 14 and stime 15.
        let rest: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..]
            .split_whitespace()
            .collect();
        let ticks: u64 = rest[11].parse::<u64>().unwrap() + rest[12].parse::<u64>().unwrap();
        out.insert(name, ticks);
    }
    out
}

/// HTTP/3 runs on every serving thread: as many UDP sockets on the HTTPS port as there are
/// TCP listeners on it (one of each per thread, `SO_REUSEPORT`), all held by the node;
/// connections from many client ports are all served, and every serving thread does
/// HTTP/3 work for them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h3_is_served_on_every_serving_thread() {
    let s = setup();
    let node = start(&s, None);
    let port = node.https.port();
    let mine = socket_inodes(node.pid());
    let count = |table: &str, state: &str| {
        proc_net(table)
            .into_iter()
            .filter(|(p, st, inode)| *p == port && st == state && mine.contains(inode))
            .count()
    };
    let (udp, tcp) = (count("udp", "07"), count("tcp", "0A"));
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    eprintln!("port {port}: {udp} UDP sockets, {tcp} TCP listeners, {threads} cores");
    assert_eq!(udp, tcp, "one UDP socket per serving thread, as TCP");
    if threads > 1 {
        assert!(udp > 1, "{udp} UDP socket(s) on a {threads}-core machine");
    }

    // 64 connections, each from its own client port, 20 requests each.
    let before = worker_cpu(node.pid());
    let config = quic_client_config(client_config(&s.ca, &[b"h3"]));
    let mut tasks = Vec::new();
    for i in 0..64 {
        let (config, addr) = (config.clone(), node.https);
        tasks.push(tokio::spawn(async move {
            let ep = quic_endpoint(config);
            let h3 = H3::connect(&ep, addr, "localhost")
                .await
                .unwrap_or_else(|e| panic!("connection {i}: {e}"));
            for _ in 0..20 {
                let r = h3.get("/style.css").await;
                assert_eq!(r.status, 200, "connection {i}");
            }
            h3.conn.close(0u32.into(), b"done");
            ep.wait_idle().await;
        }));
    }
    for t in tasks {
        t.await.expect("a connection's requests");
    }
    let after = worker_cpu(node.pid());
    eprintln!("serving threads' CPU ticks before {before:?}, after {after:?}");
    assert_eq!(after.len(), tcp, "one serving thread per TCP listener");
    for (name, ticks) in &after {
        let was = before.get(name).copied().unwrap_or(0);
        assert!(
            *ticks > was,
            "{name} did no HTTP/3 work for 64 connections from distinct ports"
        );
    }
}

/// SIGTERM drains HTTP/3 on every serving thread's endpoint: responses in flight on
/// connections from many client ports (so on every endpoint) complete; each connection is
/// then closed by the node (this client does not close on GOAWAY, so at the drain deadline,
/// 10 s, with a CONNECTION_CLOSE the client receives, not by its idle timeout), and the
/// node exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_h3_on_every_endpoint() {
    let s = setup();
    let mut node = start(&s, None);
    let big = s
        .files
        .iter()
        .find(|(n, _)| n == "big.bin")
        .unwrap()
        .1
        .clone();
    let big = Arc::new(big);
    let config = quic_client_config(client_config(&s.ca, &[b"h3"]));
    let mut conns = Vec::new();
    for i in 0..8 {
        let ep = quic_endpoint(config.clone());
        let h3 = H3::connect(&ep, node.https, "localhost")
            .await
            .unwrap_or_else(|e| panic!("connection {i}: {e}"));
        // Warm: the drain measures serving, not the origin.
        assert_eq!(h3.get("/big.bin").await.status, 200);
        conns.push((ep, Arc::new(h3)));
    }
    let mut inflight = Vec::new();
    for (i, (_, h3)) in conns.iter().enumerate() {
        let (h3, big) = (h3.clone(), big.clone());
        inflight.push(tokio::spawn(async move {
            let r = h3
                .try_request("GET", "/big.bin", &[])
                .await
                .unwrap_or_else(|e| panic!("connection {i}: {e}"));
            assert!(
                r.status == 200 && r.complete && r.body == *big,
                "connection {i}: a drained response is complete and right ({} bytes)",
                r.body.len()
            );
        }));
    }
    // The requests reach the node before the signal does.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let pid = node.pid().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    for t in inflight {
        t.await.expect("a response in flight");
    }
    for (i, (_, h3)) in conns.iter().enumerate() {
        let closed = tokio::time::timeout(Duration::from_secs(15), h3.conn.closed())
            .await
            .unwrap_or_else(|_| panic!("connection {i}: not closed after the drain"));
        eprintln!("connection {i}: {closed}");
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while node.is_alive() {
        assert!(Instant::now() < deadline, "did not exit after draining");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
