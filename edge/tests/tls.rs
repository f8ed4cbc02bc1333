//! HTTPS end to end, with real handshakes against a real `edge serve` process and
//! certificates made by rcgen: HTTP/2 and HTTP/1.1 over TLS serve the same bytes as cleartext
//! HTTP/1.1; SNI picks the certificate; TLS 1.0/1.1 and non-"intermediate" suites are refused;
//! garbage does not wedge the node; certificates reload (file change, SIGHUP) without a
//! restart and without dropping open connections; HTTP -> HTTPS redirect and HSTS.

mod support;
#[path = "support/tls.rs"]
mod tls_support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use support::{H1, Workspace, url_path};
use tls_support::*;

/// Files with awkward names and sizes (a large one streams rather than sitting in memory).
fn site_files() -> Vec<(String, Vec<u8>)> {
    let mut big = vec![0u8; 5 << 20];
    let mut x = 0x9e37_79b9_u32;
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
        ("big.bin".into(), big),
    ]
}

/// A workspace with the site published as `site`, and a certificate folder with `default`
/// (localhost, 127.0.0.1) from `ca`.
fn setup(ca: &Ca) -> (Workspace, std::path::PathBuf, Vec<(String, Vec<u8>)>) {
    let ws = Workspace::new();
    let files = site_files();
    let dir = ws.site_dir("site");
    support::write_files(&dir, &files);
    ws.publish(&dir, "site");
    let certs = ws.root().join("certs");
    write_pair(&certs, "default", &ca.leaf(&["localhost", "127.0.0.1"]));
    (ws, certs, files)
}

fn start(ws: &Workspace, certs: &Path, config: Option<&str>) -> TlsNode {
    let mut serve = ws.serve().default_site("site");
    if let Some(toml) = config {
        serve = serve.config(ws.config("edge.toml", toml));
    }
    let mut cmd = serve.command();
    cmd.arg("--tls-listen")
        .arg("127.0.0.1:0")
        .arg("--cert-dir")
        .arg(certs);
    TlsNode::start(cmd, &ws.root().join("edge-serve.log")).unwrap_or_else(|e| panic!("{e}"))
}

fn init() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_and_h1_over_tls_serve_the_same_bytes_as_cleartext() {
    init();
    let ca = Ca::new();
    let (ws, certs, files) = setup(&ca);
    let node = start(&ws, &certs, None);
    let mut h1 = H1::new(node.http);
    let h2 = H2Tls::connect(node.https, "localhost", client_config(&ca, &[b"h2"])).await;
    assert_eq!(h2.handshake.version, Some(rustls::ProtocolVersion::TLSv1_3));
    let alt_svc = format!("h3=\":{}\"; ma=86400", node.https.port());

    let mut paths: Vec<String> = files.iter().map(|(p, _)| url_path(p)).collect();
    paths.extend([
        "/".into(),
        "/docs/".into(),
        "/docs".into(),
        "/missing".into(),
    ]);
    for path in &paths {
        let a = h1.get(path).await;
        let b = h2.get(path).await;
        assert_same(&format!("h2+TLS {path}"), &a, &b);
        assert_eq!(b.header("alt-svc"), Some(alt_svc.as_str()), "{path}");
        assert_eq!(a.header("alt-svc"), None, "cleartext advertises no h3");
        assert!(b.header("date").is_some(), "{path}: Date");
        assert_eq!(a.header("strict-transport-security"), None);
        assert_eq!(
            b.header("strict-transport-security"),
            None,
            "HSTS off by default"
        );
    }
    for (rel, data) in &files {
        let b = h2.get(&url_path(rel)).await;
        assert_eq!(b.status, 200, "{rel}");
        assert!(b.body == *data, "{rel}: bytes differ from the file");
    }
    // Conditional and partial requests take the same path through the handler.
    let etag = h1.get("/style.css").await.must("etag").to_owned();
    let cases: [(&str, &[(&str, &str)]); 3] = [
        ("/style.css", &[("if-none-match", etag.as_str())]),
        ("/big.bin", &[("range", "bytes=1000-1999")]),
        ("/style.css", &[("accept-encoding", "gzip")]),
    ];
    for (path, headers) in cases {
        let a = h1.get_with(path, headers).await;
        let b = h2.request("GET", path, headers).await;
        assert_same(&format!("h2+TLS {path} {headers:?}"), &a, &b);
    }
    // Many concurrent streams on the one TLS connection.
    let mut tasks = Vec::new();
    for i in 0..32 {
        let h2 = h2.clone();
        let (rel, data) = files[i % files.len()].clone();
        tasks.push(tokio::spawn(async move {
            let r = h2.get(&url_path(&rel)).await;
            assert!(r.status == 200 && r.body == data, "{rel}");
        }));
    }
    for t in tasks {
        t.await.expect("a concurrent request");
    }

    // HTTP/1.1 over TLS, chosen by ALPN.
    let (r, hs) = h1_tls_get(
        node.https,
        "localhost",
        client_config(&ca, &[b"http/1.1"]),
        "/a%20b/c%23d%3F.txt",
    )
    .await;
    assert_eq!(hs.alpn.as_deref(), Some(&b"http/1.1"[..]));
    assert_eq!((r.status, r.body.as_slice()), (200, &b"odd name\n"[..]));
    assert_eq!(r.header("alt-svc"), Some(alt_svc.as_str()));

    // TLS 1.2 works too (intermediate profile).
    let mut c12 = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(ca.roots())
        .with_no_client_auth();
    c12.alpn_protocols = vec![b"h2".to_vec()];
    let h2_12 = H2Tls::connect(node.https, "localhost", std::sync::Arc::new(c12)).await;
    assert_eq!(
        h2_12.handshake.version,
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    assert_same("TLS 1.2", &h1.get("/").await, &h2_12.get("/").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_picks_the_certificate_and_unknown_names_get_the_default() {
    init();
    let ca = Ca::new();
    let (ws, certs, _) = setup(&ca);
    let a = ca.leaf(&["a.test"]);
    let b = ca.leaf(&["b.test"]);
    write_pair(&certs, "a.test", &a);
    write_pair(&certs, "b.test", &b);
    let default = std::fs::read_to_string(certs.join("default.crt")).unwrap();
    let default_der = rustls_pki_types::pem::PemObject::from_pem_slice(default.as_bytes())
        .map(|c: rustls_pki_types::CertificateDer<'_>| c.to_vec())
        .unwrap();
    let node = start(&ws, &certs, None);

    // Verified against the CA and the name: each host gets its own certificate.
    for (host, leaf) in [("a.test", &a), ("b.test", &b)] {
        let h2 = H2Tls::connect(node.https, host, client_config(&ca, &[b"h2"])).await;
        assert!(h2.handshake.leaf == leaf.der, "{host}: wrong certificate");
        assert_eq!(h2.get("/").await.status, 200, "{host}");
    }
    // Upper case SNI is the same name.
    let (_, hs) = tls_connect(node.https, "A.TEST", inspecting_config(&[b"h2"]))
        .await
        .unwrap();
    assert!(hs.leaf == a.der, "A.TEST");
    // An unknown name, and no SNI at all (an IP address), get the default.
    for sni in ["unknown.test", "127.0.0.1"] {
        let (_, hs) = tls_connect(node.https, sni, inspecting_config(&[b"h2"]))
            .await
            .unwrap_or_else(|e| panic!("{sni}: {e}"));
        assert!(
            hs.leaf == default_der,
            "{sni}: expected the default certificate"
        );
    }
    // And a client that checks names refuses the default for another name.
    let Err(e) = tls_connect(node.https, "unknown.test", client_config(&ca, &[b"h2"])).await else {
        panic!("the default certificate does not name unknown.test");
    };
    assert!(e.contains("certificate"), "{e}");
}

/// A TLS ClientHello record offering only `version` (0x0301 = TLS 1.0, 0x0302 = TLS 1.1),
/// with no supported_versions extension, as an old client sends it.
fn legacy_client_hello(version: u16) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&version.to_be_bytes());
    body.extend_from_slice(&[7u8; 32]); // random
    body.push(0); // session id
    let suites: [u16; 6] = [0xc009, 0xc013, 0xc00a, 0xc014, 0x002f, 0x0035];
    body.extend_from_slice(&((suites.len() * 2) as u16).to_be_bytes());
    for s in suites {
        body.extend_from_slice(&s.to_be_bytes());
    }
    body.extend_from_slice(&[1, 0]); // compression: null
    let mut ext = Vec::new();
    // server_name: localhost
    let name = b"localhost";
    ext.extend_from_slice(&[0, 0]);
    ext.extend_from_slice(&((name.len() + 5) as u16).to_be_bytes());
    ext.extend_from_slice(&((name.len() + 3) as u16).to_be_bytes());
    ext.push(0);
    ext.extend_from_slice(&(name.len() as u16).to_be_bytes());
    ext.extend_from_slice(name);
    // supported_groups: x25519, secp256r1
    ext.extend_from_slice(&[0, 10, 0, 6, 0, 4, 0, 0x1d, 0, 0x17]);
    // ec_point_formats: uncompressed
    ext.extend_from_slice(&[0, 11, 0, 2, 1, 0]);
    body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    body.extend_from_slice(&ext);
    let mut hs = vec![1u8]; // client_hello
    hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend_from_slice(&body);
    let mut rec = vec![0x16, 0x03, 0x01];
    rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    rec.extend_from_slice(&hs);
    rec
}

/// Sends `bytes` and reads until the server closes (or 5 s pass).
fn exchange(addr: std::net::SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).expect("connecting");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.write_all(bytes);
    // Half-close: a server waiting for the rest of a record sees the end at once.
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

fn openssl(args: &[&str], addr: std::net::SocketAddr) -> (bool, String) {
    let out = Command::new("openssl")
        .arg("s_client")
        .arg("-connect")
        .arg(addr.to_string())
        .args(["-servername", "localhost"])
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("running openssl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // A completed handshake prints the negotiated cipher; a refused one "(NONE)".
    let ok =
        out.status.success() && text.contains("Cipher is") && !text.contains("Cipher is (NONE)");
    (ok, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_protocol_versions_and_weak_suites_are_refused() {
    init();
    let ca = Ca::new();
    let (ws, certs, _) = setup(&ca);
    let node = start(&ws, &certs, None);

    for (version, name) in [(0x0301u16, "TLS 1.0"), (0x0302, "TLS 1.1")] {
        let reply = exchange(node.https, &legacy_client_hello(version));
        assert!(!reply.is_empty(), "{name}: no answer");
        assert_eq!(
            reply[0], 0x15,
            "{name}: expected an alert record, got {reply:02x?}"
        );
        assert!(
            !reply.contains(&0x16) || reply[0] != 0x16,
            "{name}: the server answered with a handshake"
        );
        // Fatal alert: protocol_version (70) or handshake_failure (40).
        assert_eq!(reply.get(5), Some(&2), "{name}: fatal alert");
        assert!(
            matches!(reply.get(6), Some(70 | 40)),
            "{name}: {reply:02x?}"
        );
    }

    if Command::new("openssl").arg("version").output().is_err() {
        eprintln!("openssl not found: skipping the s_client checks");
        return;
    }
    // SECLEVEL=0 lets OpenSSL 3 really offer the old versions (its own policy forbids them).
    for v in ["-tls1", "-tls1_1"] {
        let (ok, text) = openssl(&[v, "-cipher", "DEFAULT@SECLEVEL=0"], node.https);
        assert!(!ok, "openssl {v} shook hands:\n{text}");
    }
    let (ok, text) = openssl(&["-tls1_2"], node.https);
    assert!(ok, "openssl -tls1_2 failed:\n{text}");
    assert!(text.contains("ECDHE-ECDSA-"), "{text}");
    let (ok, text) = openssl(&["-tls1_3"], node.https);
    assert!(ok, "openssl -tls1_3 failed:\n{text}");
    // Suites outside Mozilla's intermediate profile: CBC, static RSA key exchange.
    for cipher in [
        "ECDHE-ECDSA-AES128-SHA",
        "ECDHE-ECDSA-AES256-SHA384",
        "AES128-GCM-SHA256",
    ] {
        let (ok, text) = openssl(&["-tls1_2", "-cipher", cipher], node.https);
        assert!(!ok, "{cipher} was accepted:\n{text}");
    }
    // Key exchange groups: X25519, P-256, P-384 only.
    for group in ["X25519", "P-256", "P-384"] {
        let (ok, text) = openssl(&["-tls1_3", "-groups", group], node.https);
        assert!(ok, "group {group} refused:\n{text}");
    }
    let (ok, text) = openssl(&["-tls1_3", "-groups", "P-521"], node.https);
    assert!(!ok, "P-521 was accepted:\n{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_instead_of_a_client_hello_does_not_wedge_the_node() {
    init();
    let ca = Ca::new();
    let (ws, certs, _) = setup(&ca);
    let mut node = start(&ws, &certs, None);
    let config = client_config(&ca, &[b"h2"]);

    let mut noise = vec![0u8; 16 << 10];
    let mut x = 12345u32;
    for b in noise.iter_mut() {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        *b = (x >> 16) as u8;
    }
    let mut truncated = legacy_client_hello(0x0303);
    truncated.truncate(20);
    let huge_record = [0x16, 0x03, 0x01, 0xff, 0xff, 0x01, 0xff, 0xff, 0xff];
    let inputs: Vec<(&str, Vec<u8>)> = vec![
        ("random bytes", noise.clone()),
        (
            "cleartext HTTP",
            b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n".to_vec(),
        ),
        ("a truncated ClientHello", truncated),
        ("an oversized record header", huge_record.to_vec()),
        (
            "a handshake record of zeros",
            [&[0x16, 3, 1, 0, 64][..], &[0u8; 64]].concat(),
        ),
    ];
    for (what, bytes) in &inputs {
        let started = Instant::now();
        let reply = exchange(node.https, bytes);
        // The node closes such a connection (perhaps after an alert), well within the timeout.
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{what}: connection left open"
        );
        assert!(reply.len() < 64, "{what}: unexpected answer {reply:02x?}");
    }
    // Many at once, some never finishing, while real clients keep being served.
    let mut hold = Vec::new();
    for i in 0..64 {
        let mut s = TcpStream::connect(node.https).unwrap();
        if i % 2 == 0 {
            let _ = s.write_all(&noise[..(i * 97) % noise.len()]);
        }
        hold.push(s);
    }
    let h2 = H2Tls::connect(node.https, "localhost", config.clone()).await;
    assert_eq!(h2.get("/").await.status, 200);
    let mut h1 = H1::new(node.http);
    assert_eq!(h1.get("/").await.status, 200);
    drop(hold);
    assert!(node.is_alive(), "the node died");
    let h2 = H2Tls::connect(node.https, "localhost", config).await;
    assert_eq!(h2.get("/docs/").await.status, 200);
}

/// Polls new handshakes until the server presents `want` for `sni`.
async fn wait_for_leaf(addr: std::net::SocketAddr, sni: &str, want: &[u8]) -> Duration {
    let started = Instant::now();
    loop {
        let (_, hs) = tls_connect(addr, sni, inspecting_config(&[b"h2"]))
            .await
            .unwrap_or_else(|e| panic!("{sni}: {e}"));
        if hs.leaf == want {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{sni}: the new certificate was not picked up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_certificate_is_picked_up_and_open_connections_keep_working() {
    init();
    let ca = Ca::new();
    let (ws, certs, files) = setup(&ca);
    let v1 = ca.leaf(&["a.test"]);
    write_pair(&certs, "a.test", &v1);
    let node = start(&ws, &certs, None);
    let open = H2Tls::connect(node.https, "a.test", client_config(&ca, &[b"h2"])).await;
    assert!(open.handshake.leaf == v1.der);
    assert_eq!(open.get("/").await.status, 200);

    let v2 = ca.leaf(&["a.test"]);
    write_pair(&certs, "a.test", &v2);
    let took = wait_for_leaf(node.https, "a.test", &v2.der).await;
    eprintln!("new certificate served {took:?} after the files were replaced");
    // A new client verifies the new certificate; the open connection keeps serving.
    let fresh = H2Tls::connect(node.https, "a.test", client_config(&ca, &[b"h2"])).await;
    assert!(fresh.handshake.leaf == v2.der);
    for (rel, data) in &files {
        let r = open.get(&url_path(rel)).await;
        assert!(
            r.status == 200 && r.body == *data,
            "{rel} on the open connection"
        );
    }
    // A broken replacement (key does not match) keeps the working certificate.
    std::fs::write(certs.join("a.test.crt"), ca.leaf(&["a.test"]).cert_pem).unwrap();
    // The reload attempt is the event to wait for: once it is logged, the map is settled.
    let logged = support::poll_until(Duration::from_secs(10), Duration::from_millis(20), || {
        let seen = node.log_text().contains("certificate not reloaded");
        async move { seen.then_some(()) }
    })
    .await;
    assert!(logged.is_some(), "the failed pair is logged");
    let (_, hs) = tls_connect(node.https, "a.test", client_config(&ca, &[b"h2"]))
        .await
        .expect("still serving a valid certificate");
    assert!(hs.leaf == v2.der, "a broken pair replaced the working one");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_certificates_when_the_folder_is_not_watched() {
    init();
    let ca = Ca::new();
    let (ws, certs, _) = setup(&ca);
    let v1 = ca.leaf(&["localhost"]);
    write_pair(&certs, "default", &v1);
    let node = start(&ws, &certs, Some("[tls]\nwatch = false\n"));
    let open = H2Tls::connect(node.https, "localhost", client_config(&ca, &[b"h2"])).await;
    let v2 = ca.leaf(&["localhost"]);
    write_pair(&certs, "default", &v2);
    tokio::time::sleep(Duration::from_millis(700)).await;
    let (_, hs) = tls_connect(node.https, "localhost", inspecting_config(&[b"h2"]))
        .await
        .unwrap();
    assert!(
        hs.leaf == v1.der,
        "not watching: the old certificate stays until SIGHUP"
    );
    node.hangup();
    wait_for_leaf(node.https, "localhost", &v2.der).await;
    assert_eq!(
        open.get("/").await.status,
        200,
        "the open connection survived"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleartext_redirects_to_https_and_hsts_is_sent_over_tls() {
    init();
    let ca = Ca::new();
    let (ws, certs, _) = setup(&ca);
    let node = start(
        &ws,
        &certs,
        Some(
            "[tls]\nredirect_http = true\nhsts_max_age = \"8760h\"\nhsts_include_subdomains = true\n",
        ),
    );
    let port = node.https.port();
    let mut h1 = H1::new(node.http);
    let r = h1
        .get_with("/a%20b/c?x=1", &[("host", "example.test:8080")])
        .await;
    assert_eq!(r.status, 301);
    assert_eq!(
        r.must("location"),
        format!("https://example.test:{port}/a%20b/c?x=1")
    );
    assert_eq!(r.header("strict-transport-security"), None);
    let r = h1
        .request("POST", "/form", &[("host", "example.test")])
        .await;
    assert_eq!(r.status, 308);
    assert_eq!(
        r.must("location"),
        format!("https://example.test:{port}/form")
    );
    // ACME HTTP-01 challenges are still served over cleartext.
    let r = h1.get_with("/.well-known/acme-challenge/token", &[]).await;
    assert_eq!(r.status, 404, "served by the handler, not redirected");
    assert_eq!(r.text(), "<h1>not here</h1>\n");

    let h2 = H2Tls::connect(node.https, "localhost", client_config(&ca, &[b"h2"])).await;
    let r = h2.get("/").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("strict-transport-security"),
        Some("max-age=31536000; includeSubDomains")
    );
}

#[test]
fn a_bad_certificate_folder_stops_the_start_naming_the_file() {
    let ws = Workspace::new();
    let certs = ws.root().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    let ca = Ca::new();
    std::fs::write(certs.join("a.test.crt"), ca.leaf(&["a.test"]).cert_pem).unwrap();
    let out = ws
        .serve()
        .command()
        .arg("--tls-listen")
        .arg("127.0.0.1:0")
        .arg("--cert-dir")
        .arg(&certs)
        .output()
        .expect("running edge");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("a.test.key"), "{err}");
    assert!(err.contains("tls.cert_dir"), "{err}");

    let out = ws
        .serve()
        .command()
        .arg("--tls-listen")
        .arg("127.0.0.1:0")
        .output()
        .expect("running edge");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tls.cert_dir"), "{err}");
}

/// Runs `openssl ARGS` in `dir`; panics with its output when it fails.
fn openssl_in(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("running openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a leaf for `ocsp.test` (serial 1234ABCD) and OCSP responses for it made by
/// `openssl ocsp` as a responder: `good.der`, `revoked.der`, and `other.der` (good, but for
/// another serial). Returns the leaf's DER.
fn ocsp_fixture(dir: &Path) -> Vec<u8> {
    let key = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    openssl_in(
        dir,
        &[
            &["req", "-x509"][..],
            &key,
            &["-keyout", "ca.key", "-out", "ca.crt"],
        ]
        .concat()
        .into_iter()
        .chain(["-subj", "/CN=OCSP test CA", "-days", "3"])
        .collect::<Vec<_>>(),
    );
    for (name, serial) in [("leaf", "0x1234abcd"), ("other", "0x77")] {
        openssl_in(
            dir,
            &[&["req"][..], &key]
                .concat()
                .into_iter()
                .chain([
                    "-keyout",
                    &format!("{name}.key"),
                    "-out",
                    &format!("{name}.csr"),
                ])
                .chain([
                    "-subj",
                    "/CN=ocsp.test",
                    "-addext",
                    "subjectAltName=DNS:ocsp.test",
                ])
                .collect::<Vec<_>>(),
        );
        openssl_in(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-set_serial",
                serial,
                "-days",
                "2",
                "-copy_extensions",
                "copy",
                "-out",
                &format!("{name}.crt"),
            ],
        );
    }
    let index = [
        (
            "good",
            "V\t301231000000Z\t\t1234ABCD\tunknown\t/CN=ocsp.test\n",
            "leaf",
        ),
        (
            "revoked",
            "R\t301231000000Z\t261201000000Z\t1234ABCD\tunknown\t/CN=ocsp.test\n",
            "leaf",
        ),
        (
            "other",
            "V\t301231000000Z\t\t77\tunknown\t/CN=ocsp.test\n",
            "other",
        ),
    ];
    for (name, line, cert) in index {
        std::fs::write(dir.join(format!("{name}.index")), line).unwrap();
        openssl_in(
            dir,
            &[
                "ocsp",
                "-index",
                &format!("{name}.index"),
                "-rsigner",
                "ca.crt",
                "-rkey",
                "ca.key",
                "-CA",
                "ca.crt",
                "-issuer",
                "ca.crt",
                "-cert",
                &format!("{cert}.crt"),
                "-no_nonce",
                "-ndays",
                "1",
                "-respout",
                &format!("{name}.der"),
            ],
        );
    }
    let pem = std::fs::read(dir.join("leaf.crt")).unwrap();
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::from_pem_slice(&pem)
        .unwrap()
        .to_vec()
}

/// `openssl s_client -status` for `name`: what it printed about the stapled response.
fn stapled(addr: std::net::SocketAddr, name: &str) -> String {
    let out = Command::new("openssl")
        .arg("s_client")
        .arg("-connect")
        .arg(addr.to_string())
        .args(["-servername", name, "-status"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("running openssl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// OCSP stapling: `DIR/<host>.ocsp` is sent in the handshake of that host (seen by
/// `openssl s_client -status`), a host without one gets none, and a response that is revoked
/// or for another certificate is refused with a log line naming the file, the certificate
/// still served; reloaded with the certificates (SIGHUP). Expiry is checked by the same
/// function the node calls at every handshake, on the real `openssl ocsp` response.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ocsp_responses_are_stapled_while_good_and_current() {
    init();
    if Command::new("openssl").arg("version").output().is_err() {
        eprintln!("openssl not found: skipping OCSP stapling");
        return;
    }
    let ca = Ca::new();
    let (ws, certs, _) = setup(&ca);
    let fx = ws.root().join("ocsp");
    std::fs::create_dir_all(&fx).unwrap();
    let leaf = ocsp_fixture(&fx);
    for ext in ["crt", "key"] {
        std::fs::copy(
            fx.join(format!("leaf.{ext}")),
            certs.join(format!("ocsp.test.{ext}")),
        )
        .unwrap();
    }
    std::fs::copy(fx.join("good.der"), certs.join("ocsp.test.ocsp")).unwrap();
    let good = std::fs::read(fx.join("good.der")).unwrap();

    // What the node checks, on the real response.
    use edge::listen::ocsp::{OcspError, check};
    let now = std::time::SystemTime::now();
    let day = Duration::from_secs(86_400);
    let staple = check(&good, &leaf, now).expect("a good, current response");
    let next = staple
        .next_update
        .expect("openssl -ndays 1 sets nextUpdate");
    assert!(
        next > now + day - Duration::from_secs(600) && next < now + day + Duration::from_secs(600)
    );
    assert!(staple.current(now) && !staple.current(next));
    assert_eq!(check(&good, &leaf, now + 2 * day), Err(OcspError::Expired));
    assert_eq!(check(&good, &leaf, now - day), Err(OcspError::NotYetValid));
    let revoked = std::fs::read(fx.join("revoked.der")).unwrap();
    assert_eq!(
        check(&revoked, &leaf, now),
        Err(OcspError::NotGood("revoked"))
    );
    let other = std::fs::read(fx.join("other.der")).unwrap();
    assert_eq!(check(&other, &leaf, now), Err(OcspError::OtherCertificate));
    for cut in [0, 1, 10, good.len() / 2, good.len() - 1] {
        assert!(check(&good[..cut], &leaf, now).is_err(), "cut at {cut}");
    }

    let node = start(&ws, &certs, None);
    let out = stapled(node.https, "ocsp.test");
    assert!(out.contains("OCSP Response Status: successful"), "{out}");
    assert!(out.contains("Cert Status: good"), "{out}");
    assert!(out.contains("Serial Number: 1234ABCD"), "{out}");
    let out = stapled(node.https, "localhost");
    assert!(out.contains("OCSP response: no response sent"), "{out}");

    // A revoked response replaces the good one: not stapled, the certificate still served.
    for (file, what) in [
        ("revoked.der", "revoked"),
        ("other.der", "serial number not found"),
    ] {
        let tmp = certs.join(".ocsp.tmp");
        std::fs::copy(fx.join(file), &tmp).unwrap();
        std::fs::rename(&tmp, certs.join("ocsp.test.ocsp")).unwrap();
        node.hangup();
        let refusals = if what == "revoked" { 1 } else { 2 };
        eventually(&format!("{file} refused"), || {
            node.log_text().matches("OCSP response not stapled").count() >= refusals
        });
        let out = stapled(node.https, "ocsp.test");
        assert!(
            out.contains("OCSP response: no response sent"),
            "{file}: {out}"
        );
        assert!(
            out.contains("CN=ocsp.test") || out.contains("CN = ocsp.test"),
            "{out}"
        );
        let log = node.log_text();
        assert!(
            log.contains("ocsp.test.ocsp") && log.contains(what),
            "{log}"
        );
    }
    // The good one back: stapled again.
    std::fs::copy(fx.join("good.der"), certs.join(".ocsp.tmp")).unwrap();
    std::fs::rename(certs.join(".ocsp.tmp"), certs.join("ocsp.test.ocsp")).unwrap();
    node.hangup();
    eventually("the good response stapled again", || {
        stapled(node.https, "ocsp.test").contains("Cert Status: good")
    });
}

/// Polls `f` for up to 10 s.
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "{what}: not within 10 s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Writes `bytes` on a TLS connection that negotiated `alpn` and reads what comes back
/// (until the server closes, or 3 s of silence).
async fn tls_exchange(addr: std::net::SocketAddr, alpn: &[u8], bytes: &[u8]) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut tls, hs) = tls_connect(addr, "localhost", inspecting_config(&[alpn]))
        .await
        .unwrap();
    assert_eq!(hs.alpn.as_deref(), Some(alpn));
    tls.write_all(bytes).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 16 << 10];
    loop {
        match tokio::time::timeout(Duration::from_secs(3), tls.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return got,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// ALPN is honoured both ways (RFC 9113 3.3, RFC 7301): after `http/1.1` the HTTP/2 preface
/// is not served as HTTP/2, and after `h2` an HTTP/1.1 request is not served as HTTP/1.1.
/// Request-line versions over TLS as over TCP: 1.2 served as 1.1, 2.0 -> 505.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alpn_is_honoured_both_ways() {
    init();
    let ca = Ca::new();
    let (ws, certs, _) = setup(&ca);
    let node = start(&ws, &certs, None);

    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";
    let got = tls_exchange(node.https, b"http/1.1", preface).await;
    // Not HTTP/2: no SETTINGS frame (its type byte at offset 3 is 4); a 400 or a close.
    eprintln!(
        "http/1.1 after the h2 preface: {:?}",
        String::from_utf8_lossy(&got)
    );
    assert!(
        got.is_empty() || got.starts_with(b"HTTP/1.1 400"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );

    let get = b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    let got = tls_exchange(node.https, b"h2", get).await;
    assert!(
        !got.starts_with(b"HTTP/"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    // What comes back, if anything, is HTTP/2 frames, SETTINGS first.
    if !got.is_empty() {
        assert!(got.len() >= 9 && got[3] == 0x4, "{got:02x?}");
    }
    eprintln!("h2 after a HTTP/1.1 request: {got:02x?}");

    let got = tls_exchange(
        node.https,
        b"http/1.1",
        b"GET / HTTP/1.2\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    let got = tls_exchange(
        node.https,
        b"http/1.1",
        b"GET / HTTP/2.0\r\nHost: localhost\r\n\r\n",
    )
    .await;
    assert!(
        got.starts_with(b"HTTP/1.1 505"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
}

/// A TLS connection that completes its handshake and then sends nothing is closed after
/// `server.idle_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_tls_connections_close_after_idle_timeout() {
    use tokio::io::AsyncReadExt;
    init();
    let ca = Ca::new();
    let (ws, certs, _) = setup(&ca);
    let node = start(&ws, &certs, Some("[server]\nidle_timeout = \"800ms\"\n"));
    for alpn in [&b"h2"[..], b"http/1.1"] {
        let started = Instant::now();
        let (mut tls, _) = tls_connect(node.https, "localhost", client_config(&ca, &[alpn]))
            .await
            .unwrap();
        let mut buf = [0u8; 4096];
        let mut got = Vec::new();
        loop {
            match tokio::time::timeout(Duration::from_secs(10), tls.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
                Err(_) => panic!("{alpn:?}: not closed within 10 s"),
            }
        }
        let t = started.elapsed();
        assert!(
            t >= Duration::from_millis(600),
            "{alpn:?}: closed after {t:?}"
        );
        eprintln!(
            "{:?}: closed after {t:?} ({} bytes first)",
            String::from_utf8_lossy(alpn),
            got.len()
        );
    }
}
