//! `edge serve` as a real process on a real socket: every file of a large generated deploy
//! over HTTP/1.1 and HTTP/2, deploy and rollback pick-up, host routing, and the HTTP
//! semantics of a static host (redirects, index and `.html` fallbacks, the 404 page,
//! validators, ranges, HEAD, precompressed siblings).

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use support::{H1, H2, Node, Workspace, etag_of, poll_until, raw_exchange, url_path, write_files};

const SITE: &str = "shop";
/// Files in the generated deploy.
const GENERATED_FILES: usize = 2_000;
/// HTTP/2 requests in flight at once while fetching the generated deploy.
const H2_IN_FLIGHT: usize = 32;

// ---- a generated deploy --------------------------------------------------------------------

/// xorshift64*: a fixed seed gives the same tree on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

/// Folder names: spaces, `%`, `+`, `#`, `?`, several dots, UTF-8 (composed and not), emoji.
fn dir_name(i: usize) -> String {
    match i % 9 {
        0 => format!("dir {i}"),
        1 => format!("ünïcödé-{i}"),
        2 => format!("sub%{i}"),
        3 => format!("plus+{i}"),
        4 => format!("q?{i}"),
        5 => format!("hash#{i}"),
        6 => format!("🎉 party {i}"),
        7 => format!("v1.2.{i}"),
        _ => format!("plain{i}"),
    }
}

/// File names, unique by `i`, none of them a precompressed sibling of another.
fn file_name(i: usize) -> String {
    match i % 16 {
        0 => format!("file{i}.txt"),
        1 => format!("archive.{i}.tar.gz"),
        2 => format!("with space {i}.html"),
        3 => format!("100% {i}.css"),
        4 => format!("a+b {i}.js"),
        5 => format!("hash#{i}.md"),
        6 => format!("what?{i}.json"),
        7 => format!("café {i}.txt"),
        8 => format!("cafe\u{301} {i}.txt"),
        9 => format!("emoji 🚀 {i}.svg"),
        10 => format!("...{i}.dots"),
        11 => format!(".hidden{i}"),
        12 => format!("mixed.v1.2.3.{i}.min.js"),
        13 => format!("%2e%2e{i}"),
        14 => format!("pct%2F{i}&x=y;z"),
        _ => format!("UPPER {i} .PNG"),
    }
}

/// 2,000 files in nested folders (depth up to 5), mostly small, a few empty, some sharing
/// content. Returns relative path -> bytes.
fn generated_tree() -> BTreeMap<String, Vec<u8>> {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut dirs: Vec<(String, usize)> = vec![(String::new(), 0)];
    for i in 0..60 {
        let (parent, depth) = loop {
            let (p, d) = dirs[rng.below(dirs.len() as u64) as usize].clone();
            if d < 5 {
                break (p, d);
            }
        };
        let path = if parent.is_empty() {
            dir_name(i)
        } else {
            format!("{parent}/{}", dir_name(i))
        };
        dirs.push((path, depth + 1));
    }
    let mut files = BTreeMap::new();
    let mut previous: Vec<u8> = Vec::new();
    for i in 0..GENERATED_FILES {
        let (dir, _) = &dirs[rng.below(dirs.len() as u64) as usize];
        let name = file_name(i);
        let rel = if dir.is_empty() {
            format!("gen/{name}")
        } else {
            format!("gen/{dir}/{name}")
        };
        let data = match i % 50 {
            0 => Vec::new(),
            1 => previous.clone(),
            _ => {
                let len = if rng.below(10) == 0 {
                    rng.below(64 * 1024)
                } else {
                    rng.below(4096) + 1
                };
                rng.bytes(len as usize)
            }
        };
        previous = data.clone();
        files.insert(rel, data);
    }
    assert_eq!(files.len(), GENERATED_FILES, "generated names are unique");
    for needle in [
        " ", "%", "+", "#", "?", "&", ";", "é", "e\u{301}", "🚀", "🎉", "...", "/.",
    ] {
        assert!(
            files.keys().any(|k| k.contains(needle)),
            "no generated path has {needle:?}"
        );
    }
    let depth = files.keys().map(|k| k.matches('/').count()).max();
    assert!(depth >= Some(5), "nesting depth {depth:?}");
    assert!(files.values().any(Vec::is_empty), "an empty file");
    files
}

// ---- a small hand-written deploy -----------------------------------------------------------

const INDEX: &[u8] = b"<h1>home</h1>\n";
const ABOUT: &[u8] = b"<h1>about us</h1>\n";
const NOT_FOUND: &[u8] = b"<h1>custom 404 page of the deploy</h1>\n";
const DOCS_INDEX: &[u8] = b"<h1>docs index</h1>\n";
const APP_JS: &[u8] = b"console.log('the uncompressed app');\n";
const APP_JS_BR: &[u8] = b"\x0b\x0f\x80pretend-brotli-bytes\x03";
const APP_JS_GZ: &[u8] = b"\x1f\x8b\x08\x00pretend-gzip-bytes\x00\x00";

fn guide() -> Vec<u8> {
    (0..1000u32).map(|i| (i * 7 % 251) as u8).collect()
}

fn small_site(ws: &Workspace) -> String {
    let dir = ws.site_dir(SITE);
    write_files(
        &dir,
        &[
            ("index.html", INDEX.to_vec()),
            ("about.html", ABOUT.to_vec()),
            ("404.html", NOT_FOUND.to_vec()),
            ("docs/index.html", DOCS_INDEX.to_vec()),
            ("docs/guide.txt", guide()),
            ("café/index.html", b"cafe".to_vec()),
            ("assets/app.js", APP_JS.to_vec()),
            ("assets/app.js.br", APP_JS_BR.to_vec()),
            ("assets/app.js.gz", APP_JS_GZ.to_vec()),
        ],
    );
    ws.publish(&dir, SITE)
}

fn small_node(ws: &Workspace) -> (Node, String) {
    let deploy = small_site(ws);
    (ws.serve().default_site(SITE).start(), deploy)
}

// ---- tests ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_file_of_a_2000_file_deploy_is_served_identically_over_http1_and_http2() {
    let ws = Workspace::new();
    let dir = ws.site_dir(SITE);
    let files = generated_tree();
    write_files(&dir, &files.iter().collect::<Vec<_>>());
    let deploy = ws.publish(&dir, SITE);
    let node = ws.serve().default_site(SITE).start();

    let mut h1 = H1::new(node.addr);
    for (rel, data) in &files {
        let path = url_path(rel);
        let r = h1.get(&path).await;
        assert_eq!(r.status, 200, "HTTP/1.1 {path} ({rel:?}): {}", r.text());
        assert!(
            r.body == *data,
            "HTTP/1.1 {path}: body differs from {rel:?}"
        );
        assert_eq!(r.must("etag"), etag_of(data), "HTTP/1.1 {path}");
        assert_eq!(r.must("content-length"), data.len().to_string(), "{path}");
        assert_eq!(r.must("x-edge-deploy"), deploy, "{path}");
    }

    let h2 = H2::connect(node.addr).await;
    let all: Vec<(String, Vec<u8>)> = files.into_iter().collect();
    for batch in all.chunks(H2_IN_FLIGHT) {
        let mut set = tokio::task::JoinSet::new();
        for (rel, data) in batch.iter().cloned() {
            let h2 = h2.clone();
            let deploy = deploy.clone();
            set.spawn(async move {
                let path = url_path(&rel);
                let r = h2.get(&path).await;
                assert_eq!(r.status, 200, "HTTP/2 {path} ({rel:?}): {}", r.text());
                assert!(r.body == data, "HTTP/2 {path}: body differs from {rel:?}");
                assert_eq!(r.must("etag"), etag_of(&data), "HTTP/2 {path}");
                assert_eq!(r.must("x-edge-deploy"), deploy, "HTTP/2 {path}");
            });
        }
        while let Some(done) = set.join_next().await {
            done.expect("an HTTP/2 fetch panicked");
        }
    }
}

#[tokio::test]
async fn a_new_deploy_and_a_rollback_are_served_within_the_refresh_interval() {
    const REFRESH: Duration = Duration::from_millis(500);
    // A few intervals: the refresher ticks every 500ms, then fetches one pointer and a tree.
    const DEADLINE: Duration = Duration::from_secs(3);
    let ws = Workspace::new();
    let dir = ws.site_dir(SITE);
    write_files(
        &dir,
        &[
            ("index.html", &b"v1 home"[..]),
            ("page.txt", &b"version one"[..]),
        ],
    );
    let first = ws.publish(&dir, SITE);
    let config = ws.config("edge.toml", "[pointers]\nrefresh_interval = \"500ms\"\n");
    let node = ws.serve().default_site(SITE).config(config).start();
    let mut h1 = H1::new(node.addr);

    let r = h1.get("/page.txt").await;
    assert_eq!((r.status, r.body.as_slice()), (200, &b"version one"[..]));
    assert_eq!(r.must("x-edge-deploy"), first);

    write_files(&dir, &[("page.txt", b"version two")]);
    let second = ws.publish(&dir, SITE);
    assert_ne!(first, second);
    let started = Instant::now();
    let seen = poll_until(DEADLINE, Duration::from_millis(50), || {
        let mut h1 = H1::new(node.addr);
        let want = second.clone();
        async move {
            let r = h1.get("/page.txt").await;
            (r.status == 200 && r.body == b"version two" && r.must("x-edge-deploy") == want)
                .then_some(())
        }
    })
    .await;
    assert!(
        seen.is_some(),
        "deploy {second} not served within {DEADLINE:?} (refresh_interval {REFRESH:?})"
    );
    eprintln!("new deploy served after {:?}", started.elapsed());
    // Files the change did not touch still come from the new deploy.
    let r = h1.get("/").await;
    assert_eq!((r.status, r.body.as_slice()), (200, &b"v1 home"[..]));
    assert_eq!(r.must("x-edge-deploy"), second);

    ws.rollback(SITE, &first);
    let started = Instant::now();
    let back = poll_until(DEADLINE, Duration::from_millis(50), || {
        let mut h1 = H1::new(node.addr);
        let want = first.clone();
        async move {
            let r = h1.get("/page.txt").await;
            (r.status == 200 && r.body == b"version one" && r.must("x-edge-deploy") == want)
                .then_some(())
        }
    })
    .await;
    assert!(
        back.is_some(),
        "rollback to {first} not served within {DEADLINE:?}"
    );
    eprintln!("rollback served after {:?}", started.elapsed());
}

#[tokio::test]
async fn a_host_added_with_hosts_add_routes_to_its_site() {
    let ws = Workspace::new();
    let shop = small_site(&ws);
    let blog_dir = ws.site_dir("blog");
    write_files(&blog_dir, &[("index.html", b"<h1>the blog</h1>")]);
    let blog = ws.publish(&blog_dir, "blog");
    ws.hosts_add("blog.example.com", "blog");
    let node = ws.serve().default_site(SITE).start();
    let port = node.addr.port();

    let mut h1 = H1::new(node.addr);
    for host in [
        format!("blog.example.com:{port}"),
        "blog.example.com".to_owned(),
        format!("BLOG.Example.COM:{port}"),
    ] {
        let r = h1.get_with("/", &[("host", &host)]).await;
        assert_eq!(r.status, 200, "Host: {host}");
        assert_eq!(r.body, b"<h1>the blog</h1>", "Host: {host}");
        assert_eq!(r.must("x-edge-deploy"), blog, "Host: {host}");
    }
    // Any other name falls back to the default site.
    let r = h1.get_with("/", &[("host", "other.example.com")]).await;
    assert_eq!((r.status, r.body.as_slice()), (200, INDEX));
    assert_eq!(r.must("x-edge-deploy"), shop);

    // HTTP/2 carries the host in `:authority`.
    let h2 = H2::connect(node.addr).await;
    let auth = format!("blog.example.com:{port}");
    let r = h2.request_to(Some(&auth), "GET", "/", &[]).await;
    assert_eq!(
        (r.status, r.body.as_slice()),
        (200, &b"<h1>the blog</h1>"[..])
    );
    assert_eq!(r.must("x-edge-deploy"), blog);
}

#[tokio::test]
async fn a_folder_without_its_slash_redirects_keeping_the_query() {
    let ws = Workspace::new();
    let (node, deploy) = small_node(&ws);
    let mut h1 = H1::new(node.addr);

    let r = h1.get("/docs").await;
    assert_eq!(r.status, 301);
    assert_eq!(r.must("location"), "/docs/");
    assert_eq!(r.must("x-edge-deploy"), deploy);

    let r = h1.get("/docs?lang=en&x=%20y").await;
    assert_eq!(r.status, 301);
    assert_eq!(r.must("location"), "/docs/?lang=en&x=%20y");

    // The Location keeps the path as the client encoded it.
    let r = h1.get("/caf%C3%A9?q=1").await;
    assert_eq!(r.status, 301);
    assert_eq!(r.must("location"), "/caf%C3%A9/?q=1");
    let r = h1.get("/caf%C3%A9/").await;
    assert_eq!((r.status, r.body.as_slice()), (200, &b"cafe"[..]));
}

#[tokio::test]
async fn a_folder_with_its_slash_serves_its_index_html() {
    let ws = Workspace::new();
    let (node, _) = small_node(&ws);
    let mut h1 = H1::new(node.addr);
    let r = h1.get("/docs/").await;
    assert_eq!((r.status, r.body.as_slice()), (200, DOCS_INDEX));
    assert_eq!(r.must("etag"), etag_of(DOCS_INDEX));
    assert_eq!(r.must("content-type"), "text/html; charset=utf-8");
    let r = h1.get("/").await;
    assert_eq!((r.status, r.body.as_slice()), (200, INDEX));
    assert_eq!(r.must("etag"), etag_of(INDEX));
}

#[tokio::test]
async fn an_extensionless_path_serves_the_html_file() {
    let ws = Workspace::new();
    let (node, _) = small_node(&ws);
    let mut h1 = H1::new(node.addr);
    let r = h1.get("/about").await;
    assert_eq!((r.status, r.body.as_slice()), (200, ABOUT));
    assert_eq!(r.must("etag"), etag_of(ABOUT));
    assert_eq!(r.must("content-type"), "text/html; charset=utf-8");
    let r = h1.get("/about.html").await;
    assert_eq!((r.status, r.body.as_slice()), (200, ABOUT));
}

#[tokio::test]
async fn a_missing_path_serves_the_deploys_404_page_with_status_404() {
    let ws = Workspace::new();
    let (node, deploy) = small_node(&ws);
    let mut h1 = H1::new(node.addr);
    for path in [
        "/nope",
        "/nope/",
        "/docs/missing.txt",
        "/docs/guide.txt/",
        "/a/b/c",
    ] {
        let r = h1.get(path).await;
        assert_eq!(r.status, 404, "{path}");
        assert_eq!(r.body, NOT_FOUND, "{path}");
        assert_eq!(r.must("content-type"), "text/html; charset=utf-8", "{path}");
        assert_eq!(r.must("x-edge-deploy"), deploy, "{path}");
    }
    let h2 = H2::connect(node.addr).await;
    let r = h2.request_to(None, "GET", "/nope", &[]).await;
    assert_eq!((r.status, r.body.as_slice()), (404, NOT_FOUND));
}

#[tokio::test]
async fn if_none_match_with_the_etag_gives_304() {
    let ws = Workspace::new();
    let (node, _) = small_node(&ws);
    let mut h1 = H1::new(node.addr);
    let etag = etag_of(&guide());
    let r = h1.get("/docs/guide.txt").await;
    assert_eq!(r.must("etag"), etag);

    let r = h1
        .get_with("/docs/guide.txt", &[("if-none-match", &etag)])
        .await;
    assert_eq!(r.status, 304);
    assert!(r.body.is_empty(), "a 304 has no body");
    assert_eq!(r.must("etag"), etag);

    let weak = format!("\"other\", W/{etag}");
    let r = h1
        .get_with("/docs/guide.txt", &[("if-none-match", &weak)])
        .await;
    assert_eq!(r.status, 304, "weak comparison, in a list");

    let r = h1
        .get_with("/docs/guide.txt", &[("if-none-match", "\"not-the-etag\"")])
        .await;
    assert_eq!((r.status, r.body), (200, guide()));
}

#[tokio::test]
async fn a_range_gives_206_with_content_range_and_the_right_bytes() {
    let ws = Workspace::new();
    let (node, _) = small_node(&ws);
    let data = guide();
    let mut h1 = H1::new(node.addr);
    let r = h1
        .get_with("/docs/guide.txt", &[("range", "bytes=0-9")])
        .await;
    assert_eq!(r.status, 206);
    assert_eq!(r.must("content-range"), format!("bytes 0-9/{}", data.len()));
    assert_eq!(r.must("content-length"), "10");
    assert_eq!(r.body, &data[..10]);

    let r = h1
        .get_with("/docs/guide.txt", &[("range", "bytes=-5")])
        .await;
    assert_eq!(r.status, 206);
    assert_eq!(r.must("content-range"), "bytes 995-999/1000");
    assert_eq!(r.body, &data[995..]);

    let h2 = H2::connect(node.addr).await;
    let r = h2
        .request_to(
            None,
            "GET",
            "/docs/guide.txt",
            &[("range", "bytes=100-199")],
        )
        .await;
    assert_eq!(r.status, 206);
    assert_eq!(r.must("content-range"), "bytes 100-199/1000");
    assert_eq!(r.body, &data[100..200]);
}

#[tokio::test]
async fn a_range_past_the_end_gives_416() {
    let ws = Workspace::new();
    let (node, _) = small_node(&ws);
    let mut h1 = H1::new(node.addr);
    let r = h1
        .get_with("/docs/guide.txt", &[("range", "bytes=999999-")])
        .await;
    assert_eq!(r.status, 416);
    assert_eq!(r.must("content-range"), "bytes */1000");
    assert!(
        !r.body.windows(10).any(|w| w == &guide()[..10]),
        "a 416 carries none of the file"
    );
}

#[tokio::test]
async fn head_gives_the_headers_with_content_length_and_no_body() {
    let ws = Workspace::new();
    let (node, deploy) = small_node(&ws);
    let data = guide();
    let req = "HEAD /docs/guide.txt HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    let r = raw_exchange(node.addr, req.as_bytes());
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("1000"));
    assert_eq!(r.header("etag"), Some(etag_of(&data).as_str()));
    assert_eq!(r.header("x-edge-deploy"), Some(deploy.as_str()));
    assert_eq!(r.header("accept-ranges"), Some("bytes"));
    assert!(r.body.is_empty(), "HEAD sent {} body bytes", r.body.len());

    // The hyper client agrees, over both protocols, and for the 404 page.
    let mut h1 = H1::new(node.addr);
    let r = h1.request("HEAD", "/docs/guide.txt", &[]).await;
    assert_eq!((r.status, r.body.len()), (200, 0));
    assert_eq!(r.must("content-length"), "1000");
    let h2 = H2::connect(node.addr).await;
    let r = h2.request_to(None, "HEAD", "/docs/guide.txt", &[]).await;
    assert_eq!((r.status, r.body.len()), (200, 0));
    assert_eq!(r.must("content-length"), "1000");
    let req = "HEAD /nope HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    let r = raw_exchange(node.addr, req.as_bytes());
    assert_eq!(r.status, 404);
    assert_eq!(
        r.header("content-length"),
        Some(NOT_FOUND.len().to_string().as_str())
    );
    assert!(r.body.is_empty(), "HEAD of the 404 page sent a body");
}

#[tokio::test]
async fn precompressed_siblings_are_chosen_by_accept_encoding() {
    let ws = Workspace::new();
    let (node, _) = small_node(&ws);
    let mut h1 = H1::new(node.addr);

    let r = h1
        .get_with("/assets/app.js", &[("accept-encoding", "br")])
        .await;
    assert_eq!((r.status, r.body.as_slice()), (200, APP_JS_BR));
    assert_eq!(r.must("content-encoding"), "br");
    assert_eq!(r.must("vary"), "Accept-Encoding");
    assert_eq!(r.must("etag"), etag_of(APP_JS_BR));
    assert_eq!(r.must("content-type"), "text/javascript; charset=utf-8");

    let r = h1
        .get_with("/assets/app.js", &[("accept-encoding", "gzip")])
        .await;
    assert_eq!((r.status, r.body.as_slice()), (200, APP_JS_GZ));
    assert_eq!(r.must("content-encoding"), "gzip");
    assert_eq!(r.must("vary"), "Accept-Encoding");
    assert_eq!(r.must("etag"), etag_of(APP_JS_GZ));

    // br is preferred when both are acceptable.
    let r = h1
        .get_with(
            "/assets/app.js",
            &[("accept-encoding", "gzip, deflate, br")],
        )
        .await;
    assert_eq!((r.status, r.body.as_slice()), (200, APP_JS_BR));

    for accept in [None, Some("identity"), Some("br;q=0, gzip;q=0")] {
        let headers: Vec<(&str, &str)> =
            accept.map(|a| ("accept-encoding", a)).into_iter().collect();
        let r = h1.get_with("/assets/app.js", &headers).await;
        assert_eq!((r.status, r.body.as_slice()), (200, APP_JS), "{accept:?}");
        assert_eq!(r.header("content-encoding"), None, "{accept:?}");
        assert_eq!(r.must("vary"), "Accept-Encoding", "{accept:?}");
        assert_eq!(r.must("etag"), etag_of(APP_JS), "{accept:?}");
    }

    let h2 = H2::connect(node.addr).await;
    let r = h2
        .request_to(None, "GET", "/assets/app.js", &[("accept-encoding", "br")])
        .await;
    assert_eq!((r.status, r.body.as_slice()), (200, APP_JS_BR));
    assert_eq!(r.must("content-encoding"), "br");
}
