//! Compression at publish and site rules (`_redirects`, `_headers`), end to end: `edge
//! publish` of a real folder into a local store, `edge serve` with TLS, and clients on
//! HTTP/1.1, HTTP/2 and HTTP/3 that decode what they get.

mod support;
#[path = "support/tls.rs"]
mod tls_support;

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};

use futures_util::StreamExt;
use support::{H1, H2, Reply, Workspace, url_path};
use tls_support::*;

/// The number of files in the generated site (`SITE_FILES` overrides, e.g. for a quick run).
fn site_size() -> usize {
    std::env::var("SITE_FILES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000)
}

/// A site of `n` files: HTML, CSS, JS, JSON, SVG and text with the repetition real ones
/// have, plus PNG-like and WOFF2-like binaries that must be served as they are. Sizes from
/// 200 B to 4 KiB; every file's bytes differ.
fn gen_site(n: usize) -> Vec<(String, Vec<u8>, bool)> {
    let mut x = 0x9e37_79b9_u32;
    let mut noise = move |len: usize| -> Vec<u8> {
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect()
    };
    let words = [
        "edge", "cache", "deploy", "static", "site", "request", "header", "content", "tree",
        "blob", "origin", "compress", "brotli", "gzip", "zstd", "redirect",
    ];
    let text = |i: usize, len: usize, line: &dyn Fn(usize, &str) -> String| -> Vec<u8> {
        let mut out = String::new();
        let mut k = 0;
        while out.len() < len {
            out.push_str(&line(k, words[(i * 7 + k * 3) % words.len()]));
            k += 1;
        }
        out.into_bytes()
    };
    (0..n)
        .map(|i| {
            let len = 200 + (i * 977) % 4_000;
            match i % 8 {
                0 => (
                    format!("pages/p{i}/index.html"),
                    text(i, len, &|k, w| {
                        format!("<div class=\"row r{k}\"><a href=\"/{w}/{k}\">{w} {i}</a></div>\n")
                    }),
                    true,
                ),
                1 => (
                    format!("css/s{i}.css"),
                    text(i, len, &|k, w| {
                        format!(".{w}-{k} {{ margin: {k}px; color: #{i:06x}; }}\n")
                    }),
                    true,
                ),
                2 => (
                    format!("js/app.{i:04x}.js"),
                    text(i, len, &|k, w| {
                        format!("export function {w}{k}(a, b) {{ return a + b * {i}; }}\n")
                    }),
                    true,
                ),
                3 => (
                    format!("data/d{i}.json"),
                    text(i, len, &|k, w| {
                        format!("{{\"id\": {k}, \"name\": \"{w}\", \"site\": {i}}},\n")
                    }),
                    true,
                ),
                4 => (
                    format!("img/i{i}.svg"),
                    text(i, len, &|k, _| {
                        format!("<circle cx=\"{k}\" cy=\"{i}\" r=\"4\"/>\n")
                    }),
                    true,
                ),
                5 => (
                    format!("docs/t{i}.txt"),
                    text(i, len, &|k, w| format!("{w} line {k} of file {i}\n")),
                    true,
                ),
                6 => {
                    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
                    png.extend(noise(len));
                    (format!("img/p{i}.png"), png, false)
                }
                _ => (format!("fonts/f{i}.woff2"), noise(len), false),
            }
        })
        .collect()
}

fn decode(coding: &str, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match coding {
        "br" => {
            brotli::Decompressor::new(body, 4096)
                .read_to_end(&mut out)
                .expect("brotli decodes");
        }
        "zstd" => out = zstd::stream::decode_all(body).expect("zstd decodes"),
        "gzip" => {
            flate2::read::GzDecoder::new(body)
                .read_to_end(&mut out)
                .expect("gzip decodes");
        }
        other => panic!("unexpected coding {other}"),
    }
    out
}

const CODINGS: [&str; 3] = ["br", "zstd", "gzip"];

/// Checks one file's four answers (identity, br, zstd, gzip) on one protocol; returns the
/// bytes on the wire for (identity, best coding).
fn check_file(
    proto: &str,
    rel: &str,
    data: &[u8],
    compressible: bool,
    replies: &[Reply],
) -> (u64, u64) {
    let what = |c: &str| format!("{proto} {rel} ({c})");
    let plain = &replies[0];
    assert_eq!(plain.status, 200, "{}", what("identity"));
    assert!(
        plain.body == data,
        "{}: identity bytes differ",
        what("identity")
    );
    assert_eq!(
        plain.header("content-encoding"),
        None,
        "{}",
        what("identity")
    );
    let mut etags = vec![plain.must("etag").to_owned()];
    let mut best = data.len() as u64;
    for (coding, r) in CODINGS.iter().zip(&replies[1..]) {
        assert_eq!(r.status, 200, "{}", what(coding));
        if compressible {
            assert_eq!(
                r.header("content-encoding"),
                Some(*coding),
                "{}",
                what(coding)
            );
            assert_eq!(
                r.header("vary"),
                Some("Accept-Encoding"),
                "{}",
                what(coding)
            );
            assert!(r.body.len() < data.len(), "{}: not smaller", what(coding));
            assert!(
                decode(coding, &r.body) == data,
                "{}: decodes to other bytes",
                what(coding)
            );
            assert_eq!(
                r.must("content-length"),
                r.body.len().to_string(),
                "{}",
                what(coding)
            );
            etags.push(r.must("etag").to_owned());
            best = best.min(r.body.len() as u64);
        } else {
            assert_eq!(
                r.header("content-encoding"),
                None,
                "{}: served identity",
                what(coding)
            );
            assert!(r.body == data, "{}: bytes differ", what(coding));
        }
    }
    if compressible {
        assert_eq!(
            plain.header("vary"),
            Some("Accept-Encoding"),
            "{}",
            what("identity")
        );
        let mut distinct = etags.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(
            distinct.len(),
            4,
            "{rel}: ETags differ per variant: {etags:?}"
        );
    }
    (data.len() as u64, best)
}

struct Site {
    ws: Workspace,
    certs: std::path::PathBuf,
    ca: Ca,
    files: Vec<(String, Vec<u8>, bool)>,
}

fn publish_site(files: Vec<(String, Vec<u8>, bool)>) -> Site {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ws = Workspace::new();
    let dir = ws.site_dir("site");
    let pairs: Vec<(&str, &[u8])> = files.iter().map(|(p, d, _)| (p.as_str(), &d[..])).collect();
    support::write_files(&dir, &pairs);
    let started = std::time::Instant::now();
    ws.publish(&dir, "site");
    eprintln!("published {} files in {:?}", files.len(), started.elapsed());
    let ca = Ca::new();
    let certs = ws.root().join("certs");
    write_pair(&certs, "default", &ca.leaf(&["localhost", "127.0.0.1"]));
    Site {
        ws,
        certs,
        ca,
        files,
    }
}

fn start(s: &Site) -> TlsNode {
    let mut cmd = s.ws.serve().default_site("site").command();
    cmd.arg("--tls-listen")
        .arg("127.0.0.1:0")
        .arg("--cert-dir")
        .arg(&s.certs);
    TlsNode::start(cmd, &s.ws.root().join("edge-serve.log")).unwrap_or_else(|e| panic!("{e}"))
}

/// Every compressible file of a 2,000-file site, asked for in br, zstd and gzip over
/// HTTP/1.1, HTTP/2 and HTTP/3, decodes to its exact bytes; images and fonts are served as
/// they are; `Vary` is sent; the four ETags of a file differ; a Range on a compressed variant
/// is a range of the compressed bytes, with its Content-Encoding.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_file_decodes_to_its_bytes_in_every_coding_on_every_protocol() {
    let s = publish_site(gen_site(site_size()));
    let node = start(&s);
    let mut h1 = H1::new(node.http);
    let h2 = H2::connect(node.http).await;
    let ep = quic_endpoint(quic_client_config(client_config(&s.ca, &[b"h3"])));
    let h3 = H3::connect(&ep, node.https, "localhost")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let accepts: [&[(&str, &str)]; 4] = [
        &[],
        &[("accept-encoding", "br")],
        &[("accept-encoding", "zstd")],
        &[("accept-encoding", "gzip")],
    ];

    // HTTP/2: every file, 32 requests in flight.
    let (mut before, mut after) = (0u64, 0u64);
    let mut checks = futures_util::stream::iter(s.files.iter())
        .map(|(rel, data, compressible)| {
            let h2 = h2.clone();
            async move {
                let path = url_path(rel);
                let mut replies = Vec::new();
                for a in accepts {
                    replies.push(h2.request_to(None, "GET", &path, a).await);
                }
                check_file("h2", rel, data, *compressible, &replies)
            }
        })
        .buffer_unordered(32);
    let mut text_files = 0;
    while let Some((b, a)) = checks.next().await {
        if a < b {
            text_files += 1;
            before += b;
            after += a;
        }
    }
    eprintln!(
        "text files: {text_files}, {before} bytes identity, {after} bytes with the best coding ({:.1}%)",
        100.0 * after as f64 / before.max(1) as f64
    );
    // HTTP/1.1 and HTTP/3: every file too, one request at a time.
    for (rel, data, compressible) in &s.files {
        let path = url_path(rel);
        let mut r1 = Vec::new();
        let mut r3 = Vec::new();
        for a in accepts {
            r1.push(h1.request("GET", &path, a).await);
            r3.push(h3.request("GET", &path, a).await);
        }
        check_file("h1", rel, data, *compressible, &r1);
        check_file("h3", rel, data, *compressible, &r3);
    }

    // Range on a compressed variant: bytes of the variant, with its encoding and ETag.
    let (rel, data, _) = s
        .files
        .iter()
        .find(|f| f.2 && f.1.len() > 4000)
        .expect("a text file");
    let path = url_path(rel);
    let whole = h1.request("GET", &path, &[("accept-encoding", "br")]).await;
    let etag = whole.must("etag").to_owned();
    for h in [&[("accept-encoding", "br"), ("range", "bytes=10-109")][..]] {
        let part = h1.request("GET", &path, h).await;
        assert_eq!(part.status, 206);
        assert_eq!(part.header("content-encoding"), Some("br"));
        assert_eq!(part.header("etag"), Some(etag.as_str()));
        assert_eq!(
            part.must("content-range"),
            format!("bytes 10-109/{}", whole.body.len())
        );
        assert!(part.body == whole.body[10..110]);
        let p3 = h3.request("GET", &path, h).await;
        assert_eq!(p3.status, 206);
        assert!(p3.body == part.body);
    }
    // If-Range with another variant's ETag gives the whole representation asked for.
    let plain_etag = support::etag_of(data);
    let r = h1
        .request(
            "GET",
            &path,
            &[
                ("accept-encoding", "br"),
                ("range", "bytes=0-9"),
                ("if-range", &plain_etag),
            ],
        )
        .await;
    assert_eq!(r.status, 200);
    assert!(r.body == whole.body);
    // 304 per variant.
    let r = h2
        .request_to(
            None,
            "GET",
            &path,
            &[("accept-encoding", "br"), ("if-none-match", &etag)],
        )
        .await;
    assert_eq!(r.status, 304);
    let r = h2
        .request_to(
            None,
            "GET",
            &path,
            &[("accept-encoding", "gzip"), ("if-none-match", &etag)],
        )
        .await;
    assert_eq!(r.status, 200, "the gzip variant has another ETag");
}

const REDIRECTS: &str = "# moved blog, SPA, shop closed
/old-blog/*      /blog/:splat          301
/store id=:id    /items/:id            302
/go              https://example.com/  307
/café            /café-new             308
/forced.html     /index.html           200!
/shadowed.html   /index.html           200
/shop/*          /shop-closed.html     404
/*               /index.html           200
";

const HEADERS: &str = "/*
  X-Frame-Options: DENY
  Content-Security-Policy: default-src 'self'
/assets/*
  Cache-Control: public, max-age=31536000, immutable
/fonts/*
  Access-Control-Allow-Origin: *
";

fn rules_site(ws: &Workspace) -> std::path::PathBuf {
    let dir = ws.site_dir("rules");
    support::write_files(
        &dir,
        &[
            ("index.html", &b"<main id=app>spa</main>\n".repeat(20)[..]),
            ("forced.html", b"forced file\n"),
            ("shadowed.html", b"shadowed file wins\n"),
            ("shop-closed.html", b"the shop is closed\n"),
            (
                "assets/app.3f2a9c.js",
                &b"console.log('fingerprinted');\n".repeat(30)[..],
            ),
            ("fonts/a.woff2", b"wOF2 font bytes"),
            ("blog/first/index.html", b"first post\n"),
            ("_redirects", REDIRECTS.as_bytes()),
            ("_headers", HEADERS.as_bytes()),
        ],
    );
    dir
}

/// `_redirects` and `_headers` as a site owner writes them, on HTTP/1.1, HTTP/2 and HTTP/3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_rewrites_and_headers() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ws = Workspace::new();
    let dir = rules_site(&ws);
    ws.publish(&dir, "site");
    let ca = Ca::new();
    let certs = ws.root().join("certs");
    write_pair(&certs, "default", &ca.leaf(&["localhost", "127.0.0.1"]));
    let s = Site {
        ws,
        certs,
        ca,
        files: Vec::new(),
    };
    let node = start(&s);
    let mut h1 = H1::new(node.http);
    let h2 = H2::connect(node.http).await;
    let ep = quic_endpoint(quic_client_config(client_config(&s.ca, &[b"h3"])));
    let h3 = H3::connect(&ep, node.https, "localhost")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let spa = b"<main id=app>spa</main>\n".repeat(20);

    // (path, status, body or Location, a header that must be there)
    type Row<'a> = (&'a str, u16, &'a [u8], Option<(&'a str, &'a str)>);
    let table: &[Row<'_>] = &[
        (
            "/dashboard/settings",
            200,
            &spa,
            Some(("x-frame-options", "DENY")),
        ),
        (
            "/",
            200,
            &spa,
            Some(("content-security-policy", "default-src 'self'")),
        ),
        (
            "/old-blog/first/",
            301,
            b"/blog/first",
            Some(("x-frame-options", "DENY")),
        ),
        ("/old-blog/a%20b?ref=x", 301, b"/blog/a%20b?ref=x", None),
        ("/store?id=42", 302, b"/items/42", None),
        ("/go", 307, b"https://example.com/", None),
        ("/caf%C3%A9", 308, b"/caf%C3%A9-new", None),
        ("/forced.html", 200, &spa, None),
        ("/shadowed.html", 200, b"shadowed file wins\n", None),
        (
            "/shop/cart",
            404,
            b"the shop is closed\n",
            Some(("x-frame-options", "DENY")),
        ),
        ("/blog/first/", 200, b"first post\n", None),
        (
            "/assets/app.3f2a9c.js",
            200,
            &b"console.log('fingerprinted');\n".repeat(30),
            Some(("cache-control", "public, max-age=31536000, immutable")),
        ),
        (
            "/fonts/a.woff2",
            200,
            b"wOF2 font bytes",
            Some(("access-control-allow-origin", "*")),
        ),
        // The rules files are compiled, not served: the SPA fallback answers.
        ("/_redirects", 200, &spa, None),
        ("/_headers", 200, &spa, None),
    ];
    for (path, status, want, header) in table {
        // Twice: the second answer may come from the route cache.
        for round in 0..2 {
            let a = h1.request("GET", path, &[]).await;
            let b = h2.request_to(None, "GET", path, &[]).await;
            let c = h3.request("GET", path, &[]).await;
            for (proto, r) in [("h1", &a), ("h2", &b), ("h3", &c)] {
                let what = format!("{proto} {path} (round {round})");
                assert_eq!(r.status, *status, "{what}: {}", show(&r.headers));
                if (301..=308).contains(status) {
                    assert_eq!(r.must("location").as_bytes(), *want, "{what}");
                } else {
                    assert!(
                        r.body == *want,
                        "{what}: body {:?}",
                        String::from_utf8_lossy(&r.body)
                    );
                }
                if let Some((name, value)) = header {
                    assert_eq!(r.header(name), Some(*value), "{what}: {name}");
                }
            }
        }
    }
    // Site headers on 304s too (RFC 9110, 15.4.5), and they replace the edge's Cache-Control.
    let first = h1.get("/assets/app.3f2a9c.js").await;
    let etag = first.must("etag").to_owned();
    for r in [
        h1.request("GET", "/assets/app.3f2a9c.js", &[("if-none-match", &etag)])
            .await,
        h3.request("GET", "/assets/app.3f2a9c.js", &[("if-none-match", &etag)])
            .await,
    ] {
        assert_eq!(r.status, 304);
        assert_eq!(
            r.header("cache-control"),
            Some("public, max-age=31536000, immutable")
        );
        assert_eq!(r.header("x-frame-options"), Some("DENY"));
        assert_eq!(r.header("etag"), Some(etag.as_str()));
    }
    let all: Vec<_> = first.headers.get_all("cache-control").iter().collect();
    assert_eq!(all.len(), 1, "one Cache-Control, the site's");
}

fn publish_cmd(ws: &Workspace, dir: &Path, extra: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_edge"))
        .arg("publish")
        .arg(dir)
        .args(["--site", "site", "--store"])
        .arg(ws.store())
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .expect("running edge publish")
}

fn object_count(store: &Path) -> usize {
    let Ok(rd) = std::fs::read_dir(store.join("objects")) else {
        return 0;
    };
    rd.map(|d| std::fs::read_dir(d.expect("objects entry").path()).map_or(0, |f| f.count()))
        .sum()
}

/// A bad `_redirects` or `_headers` fails the publish naming file:line and the reason, and
/// writes nothing: the previous deploy stays current. `--no-compress` stores no variants.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_rules_fail_the_publish_and_no_compress_stores_no_variants() {
    let ws = Workspace::new();
    let dir = rules_site(&ws);
    let first = ws.publish(&dir, "site");
    let current = std::fs::read(ws.store().join("sites/site/current")).unwrap();
    let objects = object_count(&ws.store());

    let cases: &[(&str, &str, &str)] = &[
        (
            "_redirects",
            "/ok /fine\n/api/* https://api.example.com/:splat 200\n",
            "_redirects:2: status 200 to \"https://api.example.com/:splat\" would proxy another host; proxy rules are not supported yet",
        ),
        (
            "_redirects",
            "/a /b 301\n\n/c /d 418\n",
            "_redirects:3: status 418 is not supported",
        ),
        (
            "_headers",
            "/*\n  X-Ok: 1\n  Transfer-Encoding: chunked\n",
            "_headers:3: header Transfer-Encoding cannot be set by a site",
        ),
    ];
    for (file, text, want) in cases {
        rules_site(&ws);
        std::fs::write(
            dir.join("index.html"),
            "a new version that must not go live",
        )
        .unwrap();
        std::fs::write(dir.join(file), text).unwrap();
        let out = publish_cmd(&ws, &dir, &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{file}: publish succeeded");
        assert!(stderr.contains(want), "{file}: stderr {stderr}");
        assert!(
            stderr.contains(&dir.join(file).display().to_string()),
            "{file}: the path is named: {stderr}"
        );
        assert_eq!(
            std::fs::read(ws.store().join("sites/site/current")).unwrap(),
            current,
            "{file}: the previous deploy stays current"
        );
        assert_eq!(
            object_count(&ws.store()),
            objects,
            "{file}: nothing written"
        );
    }

    // Served: still the first deploy.
    let node = ws.serve().default_site("site").start();
    let mut h1 = H1::new(node.addr);
    let r = h1.get("/").await;
    assert_eq!(r.must("x-edge-deploy"), first);
    drop(node);

    // --no-compress: a text file is served as it is whatever the client accepts.
    rules_site(&ws);
    std::fs::write(dir.join("index.html"), b"<p>uncompressed</p>\n".repeat(50)).unwrap();
    let out = publish_cmd(&ws, &dir, &["--no-compress"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let node = ws.serve().default_site("site").start();
    let mut h1 = H1::new(node.addr);
    let r = h1
        .get_with("/", &[("accept-encoding", "br, gzip, zstd")])
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-encoding"), None);
    assert!(r.body == b"<p>uncompressed</p>\n".repeat(50));
}
