//! Self-checks of the load generator against in-test servers on 127.0.0.1 whose behaviour is
//! known: it must report a fixed delay at p50, show a stall in open loop (no coordinated
//! omission), and count exactly the requests the server answered.

mod test_server;

use std::sync::Arc;
use std::time::Duration;

use loadtest::loadgen::{ErrorKind, GenError, Mode, Proto, RunOptions, TlsOptions, Workload, run};
use test_server::{BODY, Behaviour};

fn opts(target: http::Uri) -> RunOptions {
    let mut o = RunOptions::new(target);
    o.warmup = Duration::ZERO;
    o.duration = Duration::from_millis(1500);
    o.connections = 4;
    o
}

/// `err` is a failure to open a connection, of `kind`, whose message says `reason`.
fn assert_connect_error(err: &GenError, kind: ErrorKind, reason: &str) {
    assert!(
        matches!(err, GenError::Connect { kind: k, .. } if *k == kind),
        "{err}"
    );
    assert!(err.to_string().contains(reason), "{err}");
}

/// 2 connections x 8 streams for 1 s after a 200 ms warm-up, against a 20 ms server.
fn multiplexed(target: http::Uri, proto: Proto) -> RunOptions {
    let mut o = opts(target);
    o.proto = proto;
    o.connections = 2;
    o.streams = 8;
    o.duration = Duration::from_secs(1);
    o.warmup = Duration::from_millis(200);
    o
}

/// What a [`multiplexed`] run against a 20 ms server that answered `served` requests reports.
fn assert_multiplexed_report(r: &loadtest::loadgen::Report, served: u64) {
    assert!(
        (20.0..26.0).contains(&r.latency_ms.p50),
        "{:?}",
        r.latency_ms
    );
    // 16 streams in parallel: about 800 requests a second.
    assert!(r.requests > 500, "{} requests", r.requests);
    assert!(r.warmup_requests > 0);
    assert_eq!(r.error_total, 0, "{:?}", r.errors);
    assert_eq!(r.requests + r.warmup_requests, served);
}

/// Trusts `pem` (and only it); the folder holds the file and must outlive the run.
fn trusting(pem: &str) -> (tempfile::TempDir, TlsOptions) {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, pem).unwrap();
    let tls = TlsOptions {
        insecure: false,
        ca_file: Some(ca),
    };
    (dir, tls)
}

fn root(target: &http::Uri) -> Arc<Workload> {
    Arc::new(Workload::from_list("/", target.authority().unwrap()).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_delay_shows_at_p50_and_counts_match() {
    let server = test_server::start(Behaviour::Delay(Duration::from_millis(20))).await;
    let o = opts(server.url("http"));
    let r = run(&o, root(&o.target)).await.unwrap();
    eprintln!("{r}");
    let p50 = r.latency_ms.p50;
    assert!(
        (20.0..26.0).contains(&p50),
        "p50 {p50} ms for a 20 ms server"
    );
    assert!(r.latency_ms.min >= 20.0, "{:?}", r.latency_ms);
    assert_eq!(r.error_total, 0, "{:?}", r.errors);
    assert_eq!(r.statuses.get("200"), Some(&r.requests));
    // 4 connections x 1.5 s / 20 ms is about 300; the generator's count is the server's.
    assert!((200..=320).contains(&r.requests), "{} requests", r.requests);
    assert_eq!(r.requests + r.warmup_requests, server.count());
    assert_eq!(r.bytes, r.requests * BODY.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_streams_share_connections_and_count() {
    let server = test_server::start(Behaviour::Delay(Duration::from_millis(20))).await;
    let o = multiplexed(server.url("http"), Proto::H2);
    let r = run(&o, root(&o.target)).await.unwrap();
    assert_multiplexed_report(&r, server.count());
    assert_eq!(server.h2_count(), server.count());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_shows_a_one_second_stall() {
    let stall = Behaviour::Stall {
        after: Duration::from_millis(500),
        len: Duration::from_secs(1),
    };
    let server = test_server::start(stall).await;
    let mut o = opts(server.url("http"));
    o.mode = Mode::Open { rate: 400.0 };
    o.connections = 8;
    o.duration = Duration::from_millis(2500);
    let open = run(&o, root(&o.target)).await.unwrap();
    eprintln!("{open}");
    // 1000 requests are due; about 400 of them during the stall, waiting up to a second.
    assert_eq!(open.requests, 1000);
    assert_eq!(open.error_total, 0, "{:?}", open.errors);
    assert_eq!(open.requests, server.count());
    let l = open.latency_ms;
    assert!(l.p99 >= 800.0, "open-loop p99 {} ms hides the stall", l.p99);
    assert!(l.p90 >= 300.0, "open-loop p90 {} ms hides the stall", l.p90);
    assert!(l.max >= 950.0 && l.max < 1300.0, "max {} ms", l.max);
    assert!(l.p50 < 300.0, "p50 {} ms", l.p50);

    // The same stall seen by a closed loop: only the 8 requests in flight wait, and the
    // upper percentiles look healthy. This is what the open loop exists to avoid.
    let server = test_server::start(stall).await;
    let mut o = opts(server.url("http"));
    o.connections = 8;
    o.duration = Duration::from_millis(2500);
    let closed = run(&o, root(&o.target)).await.unwrap();
    eprintln!("{closed}");
    assert!(closed.latency_ms.max >= 900.0, "{:?}", closed.latency_ms);
    assert!(
        closed.latency_ms.p99 < 100.0,
        "closed-loop p99 {} ms",
        closed.latency_ms.p99
    );
    assert_eq!(closed.requests, server.count());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_requests_bounds_both_modes() {
    let server = test_server::start(Behaviour::Delay(Duration::ZERO)).await;
    let mut o = opts(server.url("http"));
    o.duration = Duration::from_secs(20);
    o.max_requests = 500;
    let started = std::time::Instant::now();
    let r = run(&o, root(&o.target)).await.unwrap();
    assert_eq!(r.requests, 500);
    assert_eq!(server.count(), 500);
    assert!(started.elapsed() < Duration::from_secs(5));

    let server = test_server::start(Behaviour::Delay(Duration::ZERO)).await;
    let mut o = opts(server.url("http"));
    o.mode = Mode::Open { rate: 1000.0 };
    o.warmup = Duration::from_millis(100);
    o.duration = Duration::from_secs(20);
    o.max_requests = 300;
    let r = run(&o, root(&o.target)).await.unwrap();
    assert_eq!(r.requests, 300);
    assert_eq!(r.warmup_requests, 100);
    assert_eq!(server.count(), 400);
    // Paced: 400 requests at 1000/s take about 0.4 s.
    assert!(started.elapsed() < Duration::from_secs(8));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_over_tls_with_alpn() {
    let (server, pem) = test_server::start_tls(Behaviour::Delay(Duration::from_millis(5))).await;
    let mut o = opts(server.url("https"));
    o.proto = Proto::H2;
    o.connections = 1;
    o.streams = 4;
    o.duration = Duration::from_millis(500);

    // A self-signed certificate is refused unless told otherwise.
    let err = run(&o, root(&o.target)).await.unwrap_err();
    assert!(matches!(err, GenError::Connect { .. }), "{err}");

    o.tls = TlsOptions {
        insecure: true,
        ca_file: None,
    };
    let r = run(&o, root(&o.target)).await.unwrap();
    assert!(r.requests > 50, "{} requests", r.requests);
    assert_eq!(r.error_total, 0, "{:?}", r.errors);
    assert_eq!(server.h2_count(), server.count());

    // Trusting the certificate explicitly works too, here over HTTP/1.1 (ALPN http/1.1).
    let (_ca_dir, trusted) = trusting(&pem);
    o.tls = trusted;
    o.proto = Proto::H1;
    o.streams = 1;
    let before = server.count();
    let r = run(&o, root(&o.target)).await.unwrap();
    assert!(r.requests > 20);
    assert_eq!(r.error_total, 0, "{:?}", r.errors);
    assert_eq!(server.count() - before, r.requests);
    assert_eq!(server.h2_count(), before);
}

/// HTTP/3: the fixed delay shows at p50, streams share the QUIC connections asked for, the
/// server's count is the generator's; an untrusted certificate, an http:// target and a port
/// where nothing answers QUIC are each refused with a clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h3_fixed_delay_streams_and_counts() {
    let (server, pem) = test_server::start_h3(Behaviour::Delay(Duration::from_millis(20))).await;
    let mut o = multiplexed(server.url("https"), Proto::H3);

    let err = run(&o, root(&o.target)).await.unwrap_err();
    assert_connect_error(&err, ErrorKind::Tls, "invalid peer certificate");
    assert_eq!(server.count(), 0);

    let (_ca_dir, trusted) = trusting(&pem);
    o.tls = trusted;
    let conns_before = server.connections();
    let r = run(&o, root(&o.target)).await.unwrap();
    eprintln!("{r}");
    assert_multiplexed_report(&r, server.count());
    assert_eq!(r.statuses.get("200"), Some(&r.requests));
    assert_eq!(r.bytes, r.requests * BODY.len() as u64);
    assert_eq!(server.connections() - conns_before, 2);

    let mut plain = o.clone();
    plain.target = server.url("http");
    let err = run(&plain, root(&plain.target)).await.unwrap_err();
    assert!(matches!(err, GenError::H3NeedsHttps), "{err}");
    assert!(err.to_string().contains("https://"), "{err}");

    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let dead = udp.local_addr().unwrap();
    drop(udp);
    o.target = format!("https://{dead}/").parse().unwrap();
    let started = std::time::Instant::now();
    let err = run(&o, root(&o.target)).await.unwrap_err();
    assert_connect_error(&err, ErrorKind::Connect, "is HTTP/3 listening on UDP");
    assert!(started.elapsed() < Duration::from_secs(8));
}

#[tokio::test]
async fn a_dead_target_fails_fast() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    let o = opts(format!("http://{addr}/").parse().unwrap());
    let err = run(&o, root(&o.target)).await.unwrap_err();
    assert!(matches!(err, GenError::Connect { index: 0, .. }), "{err}");
}

/// The command line: a synthetic workload over a multi-site Zipf mix, JSON written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_writes_json() {
    let server = test_server::start(Behaviour::Delay(Duration::ZERO)).await;
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("r.json");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args(["run", &server.url("http").to_string(), "--proto", "h2"])
        .args(["-c", "2", "--streams", "2", "--warmup", "0s", "-d", "300ms"])
        .args([
            "--files",
            "50",
            "--sites",
            "3",
            "--max-requests",
            "200",
            "--json",
        ])
        .arg(&json)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("latency ms"), "{stdout}");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let requests = v["requests"].as_u64().unwrap();
    assert!(requests > 0 && requests <= 200);
    assert_eq!(requests, server.count());
    assert_eq!(v["proto"], "h2");
    for key in ["p50", "p90", "p99", "p99_9", "max"] {
        assert!(v["latency_ms"][key].is_number(), "{key}");
    }
    assert!(v["curve"].as_array().unwrap().len() > 10);

    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args(["run", "http://127.0.0.1:1/", "--proto", "h3"])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--proto h3 needs an https:// target"),
        "{stderr}"
    );
}
