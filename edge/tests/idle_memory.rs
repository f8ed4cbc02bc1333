//! What an idle HTTP/2 connection costs the node (issue 14, item 5). h2 keeps a 16 KiB write
//! buffer, tokio-util's 8 KiB read buffer, a 4 KiB HPACK scratch buffer and the stream and
//! frame slabs of a connection's busiest moment for as long as the connection is open; the
//! vendored h2 (vendor/README.md) gives them back once a connection has had no stream open
//! for half a second, and the node's watchdog polls each connection once a second after its
//! last response so that it does.
//!
//! 1,000 h2c connections make one request each and stay open; 3 s later the node's resident
//! memory must have grown by at most `BOUND_KIB` per connection (measured on this test's debug
//! build, jemalloc: 25.7 KiB per connection without the release, 12.5 with it), and a
//! connection that gave its buffers back serves a small and a large file whole.

mod support;

use std::time::{Duration, Instant};

use support::{H2, Workspace, metrics, write_files};

const CONNS: usize = 1000;
const BOUND_KIB: f64 = 17.0;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_h2_connections_give_their_buffers_back() {
    let ws = Workspace::new();
    let dir = ws.site_dir("idle");
    let page = format!("<!doctype html><title>idle</title><p>{}\n", "x".repeat(600));
    let big: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    write_files(
        &dir,
        &[
            ("index.html", page.clone().into_bytes()),
            ("big.bin", big.clone()),
        ],
    );
    ws.publish(&dir, "idle");
    let node = ws
        .serve()
        .default_site("idle")
        .config(ws.config(
            "edge.toml",
            "[server]\nidle_timeout = \"120s\"\nmax_connections = 5000\n",
        ))
        .start();
    let admin = node.admin.expect("the node printed its admin address");
    for _ in 0..3 {
        assert_eq!(H2::connect(node.addr).await.get("/").await.status, 200);
    }
    let settled = Instant::now() + Duration::from_secs(10);
    while metrics(admin)("edge_connections_open") > 0 {
        assert!(Instant::now() < settled, "warm-up connections still open");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = node.status_kib("VmRSS");

    let mut open = tokio::task::JoinSet::new();
    for _ in 0..CONNS {
        let addr = node.addr;
        open.spawn(async move {
            let c = H2::connect(addr).await;
            assert_eq!(c.get("/").await.status, 200);
            c
        });
    }
    let mut held = Vec::with_capacity(CONNS);
    while let Some(c) = open.join_next().await {
        held.push(c.expect("a connection task"));
    }
    let m = metrics(admin);
    assert_eq!(
        (m("edge_connections_open"), m("edge_connections_idle")),
        (CONNS as u64, CONNS as u64),
        "every connection open and idle at the node"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = node.status_kib("VmRSS");
    assert_eq!(
        metrics(admin)("edge_connections_open"),
        CONNS as u64,
        "no connection closed while idle"
    );
    let per = (after as f64 - before as f64) / CONNS as f64;
    eprintln!("{CONNS} idle h2c connections: VmRSS {before} -> {after} KiB, {per:.2} KiB each");
    assert!(
        per <= BOUND_KIB,
        "an idle h2c connection holds {per:.2} KiB of the node's memory (at most {BOUND_KIB})"
    );

    // Buffers are taken again for the next frames: requests on released connections, some
    // at once on one connection.
    for c in held.iter().step_by(50) {
        let small = c.get("/").await;
        assert_eq!((small.status, small.body), (200, page.clone().into_bytes()));
        let (a, b) = tokio::join!(c.get("/big.bin"), c.get("/big.bin"));
        for r in [a, b] {
            assert_eq!(r.status, 200);
            assert!(
                r.body == big,
                "big.bin on a released connection: wrong bytes"
            );
        }
    }
    drop(held);
}
