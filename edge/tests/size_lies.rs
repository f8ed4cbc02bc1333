//! A tree that lies about a size: two entries name one blob hash under two sizes. Over
//! HTTP/1.1, HTTP/2 (TLS) and HTTP/3, a plain GET and a Range GET of the larger entry get a
//! clean 502 (no panic, no 200 whose Content-Length disagrees with its body); the entry with
//! the true size keeps serving; the mismatch counter moves.

mod support;
#[path = "support/tls.rs"]
mod tls_support;

use std::time::Duration;

use origin_client::tree::{OwnedEntry, encode};
use origin_client::{Access, CurrentPointer, EntryKind, Hash, TreeNode, open_store};
use support::{H1, Reply, Workspace, poll_until};
use tls_support::*;

fn data(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Publishes a site, then moves its pointer to a root that adds `lie-a.bin` and `lie-b.bin`:
/// the hashes of `a.txt` and `b.txt` with sizes 5,000 (the blobs are 1,000 bytes).
async fn lying_deploy(ws: &Workspace, files: &[(&str, Vec<u8>)]) {
    let dir = ws.site_dir("site");
    support::write_files(&dir, files);
    ws.publish(&dir, "site");
    let store = open_store(&ws.store().display().to_string(), Access::Write).unwrap();
    let cur = store.get_current("site").await.unwrap().unwrap();
    let root = TreeNode::decode(store.get_object(&cur.root).await.unwrap().unwrap()).unwrap();
    let mut entries: Vec<OwnedEntry> = root
        .iter()
        .map(|e| OwnedEntry {
            name: e.name.into(),
            kind: e.kind,
            size: e.size,
            hash: e.hash,
        })
        .collect();
    for (name, real) in [("lie-a.bin", "a.txt"), ("lie-b.bin", "b.txt")] {
        let real = root.lookup(real).unwrap();
        entries.push(OwnedEntry {
            name: name.into(),
            kind: EntryKind::File,
            size: 5_000,
            hash: real.hash,
        });
    }
    let bytes = encode(entries).unwrap();
    let hash = Hash::of(&bytes);
    store.put_object(&hash, bytes).await.unwrap();
    let next = CurrentPointer {
        site: "site".into(),
        deploy: format!("{}-lie", cur.deploy),
        root: hash,
        seq: cur.seq + 1,
        updated: cur.updated + 1,
    };
    store.swap_current(Some(cur.seq), &next).await.unwrap();
}

fn is_clean_refusal(what: &str, r: &Reply) {
    assert_eq!(r.status, 502, "{what}: {} {:?}", r.status, r.text());
    assert!(r.complete, "{what}: a whole error response, not a cut one");
    assert!(
        r.text().contains("fail verification"),
        "{what}: {:?}",
        r.text()
    );
}

async fn metric(admin: std::net::SocketAddr, name: &str) -> u64 {
    let m = H1::new(admin).get("/metrics").await;
    m.text()
        .lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_under_two_sizes_is_refused_cleanly_on_every_protocol() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ca = Ca::new();
    let ws = Workspace::new();
    let (a, b) = (data(1_000, 1), data(1_000, 2));
    lying_deploy(
        &ws,
        &[
            ("index.html", b"home".to_vec()),
            ("a.txt", a.clone()),
            ("b.txt", b.clone()),
        ],
    )
    .await;
    let certs = ws.root().join("certs");
    write_pair(&certs, "default", &ca.leaf(&["localhost"]));
    let mut cmd = ws.serve().default_site("site").command();
    cmd.args(["--tls-listen", "127.0.0.1:0", "--cert-dir"])
        .arg(&certs);
    let node = TlsNode::start(cmd, &ws.root().join("edge.log")).unwrap_or_else(|e| panic!("{e}"));
    let admin = poll_until(Duration::from_secs(10), Duration::from_millis(20), || {
        let lines = node.stdout.clone();
        async move {
            let lines = lines.lock().unwrap();
            lines
                .iter()
                .find_map(|l| l.strip_prefix("edge admin on http://"))
                .and_then(|a| a.trim_end_matches('/').parse().ok())
        }
    })
    .await
    .expect("the admin banner");

    let mut h1 = H1::new(node.http);
    let h2 = H2Tls::connect(node.https, "localhost", client_config(&ca, &[b"h2"])).await;
    let ep = quic_endpoint(quic_client_config(client_config(&ca, &[b"h3"])));
    let h3 = H3::connect(&ep, node.https, "localhost")
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    // `a.txt` is served first (its bytes enter the memory and disk tiers); `lie-b.bin` is
    // asked for before `b.txt` (nothing cached yet). Either way the liar gets a 502.
    let ok = h1.get("/a.txt").await;
    assert_eq!((ok.status, ok.body == a), (200, true));
    let range = [("range", "bytes=4000-4999")];
    for (proto, round) in [("h1", 0), ("h2", 1), ("h3", 2)] {
        for (path, headers) in [
            ("/lie-a.bin", &[][..]),
            ("/lie-a.bin", &range[..]),
            ("/lie-b.bin", &[][..]),
            ("/lie-b.bin", &range[..]),
        ] {
            let r = match round {
                0 => h1.get_with(path, headers).await,
                1 => h2.request("GET", path, headers).await,
                _ => h3.request("GET", path, headers).await,
            };
            is_clean_refusal(&format!("{proto} {path} {headers:?}"), &r);
        }
        for (path, want) in [("/a.txt", &a), ("/b.txt", &b)] {
            let r = match round {
                0 => h1.get(path).await,
                1 => h2.get(path).await,
                _ => h3.get(path).await,
            };
            assert_eq!(r.status, 200, "{proto} {path}");
            assert_eq!(r.must("content-length"), "1000", "{proto} {path}");
            assert!(
                r.body == *want,
                "{proto} {path}: the true entry keeps serving"
            );
        }
    }
    assert!(
        metric(admin, "edge_size_mismatches_total").await >= 6,
        "cached bytes offered for the lying entries are counted"
    );
    let log = node.log_text();
    assert!(!log.contains("panicked"), "{log}");
    assert!(log.contains("size differs from its tree entry"), "{log}");
}
