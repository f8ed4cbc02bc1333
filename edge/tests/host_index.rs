//! Unknown hosts cost the origin O(1): `edge hosts add` keeps a host index in the store,
//! and a real `edge serve` in front of a counting chaos origin answers 5,000 random Host
//! names with at most 10 origin reads, while known hosts keep their sites. A store without
//! an index is still served, one host record per name.

mod support;

use std::sync::Arc;
use std::time::Duration;

use loadtest::chaos::ChaosOrigin;
use origin_client::store::{Access, LocalStore};
use support::{Workspace, raw_exchange, write_files};

const RANDOM_HOSTS: usize = 5_000;

fn get(addr: std::net::SocketAddr, host: &str) -> (u16, Vec<u8>) {
    let r = raw_exchange(
        addr,
        format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    (r.status, r.body)
}

fn random_host(i: usize) -> String {
    let h = blake3::hash(format!("random host {i}").as_bytes()).to_hex();
    format!("{}.{}.example", &h[..12], &h[12..20])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_hosts_cost_the_origin_a_handful_of_reads() {
    let ws = Workspace::new();
    for (site, page) in [("shop", "<h1>shop</h1>"), ("blog", "<h1>blog</h1>")] {
        let dir = ws.site_dir(site);
        write_files(&dir, &[("index.html", page.as_bytes())]);
        ws.publish(&dir, site);
    }
    ws.hosts_add("www.shop.example", "shop");
    ws.hosts_add("blog.example", "blog");
    assert!(
        ws.store().join("host-index").is_file(),
        "hosts add writes the host index"
    );

    let store = LocalStore::open(&ws.store(), Access::Read).unwrap();
    let (_, origin) = ChaosOrigin::start(Arc::new(store), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let node = ws.serve().store_location(&origin.url()).start();
    let addr = node.addr;

    let (known, origin) = tokio::task::spawn_blocking(move || {
        assert_eq!(
            get(addr, "www.shop.example"),
            (200, b"<h1>shop</h1>".to_vec())
        );
        origin.reset_counts();
        let mut statuses = std::collections::BTreeMap::new();
        for i in 0..RANDOM_HOSTS {
            *statuses.entry(get(addr, &random_host(i)).0).or_insert(0u32) += 1;
        }
        // A host never seen before, after the flood: still its own site.
        let known = get(addr, "blog.example");
        assert_eq!(
            statuses.len(),
            1,
            "one answer for every unknown host: {statuses:?}"
        );
        assert!(
            statuses.keys().all(|s| *s == 404),
            "unknown hosts are not found: {statuses:?}"
        );
        (known, origin)
    })
    .await
    .unwrap();
    assert_eq!(known, (200, b"<h1>blog</h1>".to_vec()));
    let counts = origin.counts();
    let host_reads: u64 = counts
        .paths
        .iter()
        .filter(|(p, _)| p.starts_with("hosts/") || p.as_str() == "host-index")
        .map(|(_, n)| n)
        .sum();
    eprintln!(
        "{RANDOM_HOSTS} random hosts: {} origin requests ({host_reads} for hosts)",
        counts.total
    );
    assert!(
        counts.total <= 10,
        "{} origin requests for {RANDOM_HOSTS} random hosts ({host_reads} for hosts)",
        counts.total
    );
    drop(node);
    origin.shutdown().await;
}

/// Without an index (a store written before it existed), hosts are looked up one record at
/// a time: known hosts are served, unknown ones cost a read each (negatively cached).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_index_hosts_are_read_one_by_one() {
    let ws = Workspace::new();
    let dir = ws.site_dir("shop");
    write_files(&dir, &[("index.html", b"<h1>shop</h1>".as_slice())]);
    ws.publish(&dir, "shop");
    ws.hosts_add("www.shop.example", "shop");
    std::fs::remove_file(ws.store().join("host-index")).unwrap();

    let store = LocalStore::open(&ws.store(), Access::Read).unwrap();
    let (_, origin) = ChaosOrigin::start(Arc::new(store), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let node = ws.serve().store_location(&origin.url()).start();
    let addr = node.addr;
    let origin = tokio::task::spawn_blocking(move || {
        assert_eq!(
            get(addr, "www.shop.example"),
            (200, b"<h1>shop</h1>".to_vec())
        );
        origin.reset_counts();
        for i in 0..20 {
            assert_eq!(get(addr, &random_host(i)).0, 404);
        }
        // Asked again within the negative TTL: not read again.
        for i in 0..20 {
            assert_eq!(get(addr, &random_host(i)).0, 404);
        }
        origin
    })
    .await
    .unwrap();
    let counts = origin.counts();
    let per_host = counts
        .paths
        .iter()
        .filter(|(p, _)| p.starts_with("hosts/"))
        .count();
    assert_eq!(
        per_host, 20,
        "one record read per unknown host: {:?}",
        counts.paths
    );
    assert!(counts.path("host-index") <= 1, "{:?}", counts.paths);
    tokio::time::sleep(Duration::from_millis(10)).await;
    drop(node);
    origin.shutdown().await;
}
