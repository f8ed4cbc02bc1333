//! Slow readers cannot make the node hold memory: 1,000 HTTP/1.1 connections each ask for a
//! 5 MiB disk-cached file and then read it at about 1 KiB/s. A response holds at most two
//! blocks, under the node-wide `server.max_buffered`; blocks stay at or under 32 KiB until a
//! response has sent 1 MiB, shrink to 8 KiB for a client that makes the response wait, and
//! once 1/16 of the budget is held every new block is 8 KiB (`tiers::Pace`,
//! `Budget::block_cap`), so the node's resident memory grows by at most 64 MiB while they
//! run (about 45 MiB measured on 2026-12-02, with 17 MB of blocks held).

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::{Workspace, raw_exchange, write_files};

const CLIENTS: usize = 1_000;
const FILE: usize = 5 << 20;
const READ_FOR: Duration = Duration::from_secs(12);

#[test]
fn a_thousand_slow_readers_hold_bounded_memory() {
    let ws = Workspace::new();
    let dir = ws.site_dir("big");
    let data: Vec<u8> = (0..FILE as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    write_files(&dir, &[("big.bin", data.clone())]);
    ws.publish(&dir, "big");
    // Long send and idle timeouts: the readers are slow, not stalled.
    let cfg = ws.config(
        "edge.toml",
        "[server]\nsend_timeout = \"120s\"\nidle_timeout = \"120s\"\nmax_connections = 4000\n",
    );
    let node = ws.serve().default_site("big").config(cfg).start();
    // Warm: the file is on disk (and in memory as far as the memory tier takes it).
    let r = raw_exchange(
        node.addr,
        b"GET /big.bin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    assert!(r.body == data, "the file, whole");
    std::thread::sleep(Duration::from_millis(500));
    let start_rss = node.status_kib("VmRSS");

    let mut conns = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        let sock =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        // A small receive buffer, as a slow client on a slow link has.
        sock.set_recv_buffer_size(4096).unwrap();
        sock.connect(&node.addr.into()).unwrap();
        let mut s: TcpStream = sock.into();
        s.write_all(b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        s.set_read_timeout(Some(Duration::from_millis(2))).unwrap();
        conns.push(s);
    }
    // Every client reads about 1 KiB a second.
    let mut peak = start_rss;
    let mut got = vec![0usize; CLIENTS];
    let began = Instant::now();
    let mut buf = [0u8; 1024];
    while began.elapsed() < READ_FOR {
        let round = Instant::now();
        for (i, s) in conns.iter_mut().enumerate() {
            if let Ok(n) = s.read(&mut buf) {
                got[i] += n;
            }
        }
        peak = peak.max(node.status_kib("VmRSS"));
        let left = Duration::from_secs(1).saturating_sub(round.elapsed());
        std::thread::sleep(left);
    }
    let reading = got.iter().filter(|&&n| n > 0).count();
    // What the node says it holds for them (response blocks under `server.max_buffered`).
    let metrics = raw_exchange(
        node.admin.expect("admin listener"),
        b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    let buffered = String::from_utf8_lossy(&metrics.body)
        .lines()
        .find_map(|l| l.strip_prefix("edge_buffered_bytes ").map(str::to_owned))
        .unwrap_or_default();
    eprintln!("edge_buffered_bytes with {CLIENTS} slow readers: {buffered}");
    drop(conns);
    let growth_mib = (peak.saturating_sub(start_rss)) as f64 / 1024.0;
    eprintln!(
        "{CLIENTS} slow readers ({reading} got bytes): RSS {} MiB at start, peak {} MiB (+{growth_mib:.1} MiB)",
        start_rss / 1024,
        peak / 1024
    );
    assert!(
        reading >= CLIENTS * 9 / 10,
        "only {reading} readers were served"
    );
    // Within 10 s of their end: back within 32 MiB of the start (jemalloc, the default
    // build, decays by itself; glibc's malloc is trimmed after the drop: `edge::memory`).
    let mut after = node.status_kib("VmRSS");
    let left = Instant::now();
    while left.elapsed() < Duration::from_secs(10) && after > start_rss + 32 * 1024 {
        std::thread::sleep(Duration::from_millis(250));
        after = node.status_kib("VmRSS");
    }
    eprintln!(
        "RSS {:.1} s after they left: {} MiB ({} MiB at start)",
        left.elapsed().as_secs_f64(),
        after / 1024,
        start_rss / 1024
    );
    assert!(
        growth_mib <= 64.0,
        "RSS grew {growth_mib:.1} MiB with slow readers"
    );
    assert!(
        after <= start_rss + 32 * 1024,
        "RSS {} MiB 10 s after the slow readers left, {} MiB at start: freed memory kept",
        after / 1024,
        start_rss / 1024
    );
    let metrics = raw_exchange(
        node.admin.expect("admin listener"),
        b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    let releases = String::from_utf8_lossy(&metrics.body)
        .lines()
        .find_map(|l| {
            l.strip_prefix("edge_memory_releases_total ")
                .map(str::to_owned)
        })
        .unwrap_or_default();
    eprintln!("edge_memory_releases_total: {releases}");
}
