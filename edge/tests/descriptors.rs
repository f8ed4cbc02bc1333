//! Running out of descriptors is the node's own problem, never the origin's: `edge serve`
//! started under `prlimit --nofile=1024` with 1,200 silent connections open still serves a
//! new client promptly (the connection cap, derived from the limit, closes the oldest idle
//! connections and leaves descriptors for the disk tier and the store), fills misses from the
//! store, and no origin breaker opens.

mod support;

use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use support::{Node, Workspace, metrics_text, raw_exchange, write_files};

const SITE: &str = "shop";
const FILES: usize = 40;
const SILENT: usize = 1_200;

fn body(i: usize) -> Vec<u8> {
    format!("file {i}\n").repeat(100 + i).into_bytes()
}

/// The value of the sample line starting with `name` (labels included) in Prometheus text.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn at_the_descriptor_limit_new_clients_are_served_and_no_breaker_opens() {
    if Command::new("prlimit").arg("--version").output().is_err() {
        panic!("prlimit (util-linux) is needed for this test");
    }
    let ws = Workspace::new();
    let dir = ws.site_dir(SITE);
    let files: Vec<(String, Vec<u8>)> = (0..FILES)
        .map(|i| (format!("f/{i}.txt"), body(i)))
        .collect();
    write_files(&dir, &files);
    write_files(&dir, &[("index.html", b"<h1>home</h1>".to_vec())]);
    ws.publish(&dir, SITE);

    let serve = ws.serve().default_site(SITE);
    let inner = serve.command();
    let mut cmd = Command::new("prlimit");
    cmd.arg("--nofile=1024:1024")
        .arg("--")
        .arg(inner.get_program());
    cmd.args(inner.get_args());
    let node = Node::start(cmd, &serve.log).unwrap_or_else(|e| panic!("{e}"));
    let admin = node.admin.expect("the node prints its admin address");

    // More silent connections than the node has descriptors.
    let mut silent = Vec::with_capacity(SILENT);
    for _ in 0..SILENT {
        match TcpStream::connect(node.addr) {
            Ok(s) => silent.push(s),
            Err(e) => panic!("connect {}: {e}", silent.len()),
        }
    }
    std::thread::sleep(Duration::from_millis(500));

    // A new client is served within 2 s, and every file (each a miss, read from the store
    // and written to the disk tier) arrives whole.
    for (i, (path, want)) in files.iter().enumerate() {
        let start = Instant::now();
        let r = raw_exchange(
            node.addr,
            format!("GET /{path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        );
        let took = start.elapsed();
        assert_eq!(r.status, 200, "file {i}: {:?}", r.headers);
        assert_eq!(&r.body, want, "file {i}");
        assert!(took < Duration::from_secs(2), "file {i} took {took:?}");
    }

    let text = metrics_text(admin);
    for face in ["meta", "objects"] {
        assert_eq!(
            sample(
                &text,
                &format!("edge_origin_breaker_state{{face=\"{face}\"}}")
            ),
            Some(0.0),
            "{face} breaker closed"
        );
    }
    // The cap derived from 1,024 descriptors (768) closed the oldest silent ones.
    let evicted = sample(
        &text,
        "edge_connections_closed_total{reason=\"evicted_idle\"}",
    )
    .expect("the eviction counter");
    assert!(
        evicted >= (SILENT - 768) as f64,
        "{evicted} idle connections closed for room"
    );
    eprintln!("{SILENT} silent connections under nofile=1024: {evicted} closed to make room");
    drop(silent);
}
