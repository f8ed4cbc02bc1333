//! Hostile and malformed requests against `edge serve`, written byte for byte on a raw
//! socket so no client library normalizes them first. Each case checks its status, that the
//! node still serves `/` afterwards, and that no response carries bytes from outside the
//! deploy (sentinel files sit next to and inside the store).

mod support;

use std::net::SocketAddr;

use support::{Node, RawReply, Workspace, raw_exchange, write_files};

const SITE: &str = "shop";
const INDEX: &[u8] = b"<h1>home of the deploy</h1>\n";
const NOT_FOUND: &[u8] = b"<h1>deploy 404</h1>\n";
const GUIDE: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
/// Contents of files outside the deploy: must never appear in a response.
const SENTINEL: &str = "SENTINEL-5e1f0c-outside-the-deploy";

struct Fixture {
    // Dropped after the node (fields drop in order), so the store outlives the process.
    node: Node,
    ws: Workspace,
}

fn fixture(default_site: bool) -> Fixture {
    let ws = Workspace::new();
    let dir = ws.site_dir(SITE);
    write_files(
        &dir,
        &[
            ("index.html", INDEX),
            ("404.html", NOT_FOUND),
            ("docs/guide.txt", GUIDE),
        ],
    );
    ws.publish(&dir, SITE);
    // Next to the store, inside it, and next to the published folder.
    let secret = format!("{SENTINEL}\n");
    std::fs::write(ws.root().join("secret.txt"), &secret).expect("writing a sentinel");
    std::fs::write(ws.store().join("secret.txt"), &secret).expect("writing a sentinel");
    std::fs::write(ws.root().join("sites/secret.txt"), &secret).expect("writing a sentinel");
    let serve = ws.serve();
    let serve = if default_site {
        serve.default_site(SITE)
    } else {
        serve
    };
    Fixture {
        node: serve.start(),
        ws,
    }
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
}

/// Sends `request` and checks the reply leaks nothing from outside the deploy.
fn send(addr: SocketAddr, request: &[u8]) -> RawReply {
    let r = raw_exchange(addr, request);
    assert_no_leak(&r, request);
    r
}

fn assert_no_leak(r: &RawReply, request: &[u8]) {
    let shown = String::from_utf8_lossy(&request[..request.len().min(200)]).into_owned();
    let has = |needle: &[u8]| r.raw.windows(needle.len()).any(|w| w == needle);
    assert!(
        !has(SENTINEL.as_bytes()),
        "{shown:?} leaked a sentinel file"
    );
    assert!(!has(b"root:x:0:0"), "{shown:?} leaked /etc/passwd");
    assert!(!has(b"\"deploy\""), "{shown:?} leaked a store record");
}

/// The node is alive, serves `/` with 200, and logged no panic.
fn assert_still_serving(f: &mut Fixture) {
    let r = send(f.node.addr, get("/").as_bytes());
    assert_eq!(r.status, 200, "GET / after bad input: {:?}", r.body);
    assert_eq!(r.body, INDEX);
    assert!(f.node.is_alive(), "edge exited");
    let log = f.node.log_text();
    assert!(!log.contains("panicked"), "edge panicked:\n{log}");
}

fn assert_status(request: &str, want: u16) {
    let mut f = fixture(true);
    let r = send(f.node.addr, request.as_bytes());
    assert_eq!(
        r.status,
        want,
        "{request:?} -> {:?}",
        String::from_utf8_lossy(&r.body)
    );
    assert_still_serving(&mut f);
    drop(f.ws);
}

#[test]
fn dot_dot_segment_is_400() {
    assert_status(&get("/../etc/passwd"), 400);
}

#[test]
fn encoded_dot_dot_segment_is_400() {
    assert_status(&get("/%2e%2e/"), 400);
}

#[test]
fn encoded_slash_is_400() {
    assert_status(&get("/a%2fb"), 400);
}

#[test]
fn encoded_nul_is_400() {
    assert_status(&get("/%00"), 400);
}

#[test]
fn invalid_utf8_once_decoded_is_400() {
    assert_status(&get("/%ff%fe"), 400);
}

#[test]
fn a_16_kib_uri_is_414() {
    let mut f = fixture(true);
    let path = format!("/{}", "a".repeat(16 * 1024));
    let r = send(f.node.addr, get(&path).as_bytes());
    assert!((400..500).contains(&r.status), "16 KiB URI -> {}", r.status);
    eprintln!("a 16 KiB URI got {}", r.status);
    assert_eq!(r.status, 414, "16 KiB URI");
    assert_still_serving(&mut f);
}

#[test]
fn an_unknown_host_without_a_default_site_is_404() {
    let mut f = fixture(false);
    for host in [
        "unknown.example.com",
        "127.0.0.1",
        "unknown.example.com:8080",
    ] {
        let req = format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        let r = send(f.node.addr, req.as_bytes());
        assert_eq!(r.status, 404, "Host: {host}");
        assert!(
            !r.body.windows(INDEX.len()).any(|w| w == INDEX),
            "Host: {host} got the site's index"
        );
    }
    // Still alive and still answering (with 404: there is no site to serve).
    assert!(f.node.is_alive(), "edge exited");
    let r = send(f.node.addr, get("/").as_bytes());
    assert_eq!(r.status, 404);
}

#[test]
fn http11_without_host_is_400() {
    assert_status("GET / HTTP/1.1\r\nConnection: close\r\n\r\n", 400);
}

#[test]
fn a_malformed_range_is_416() {
    let mut f = fixture(true);
    for range in ["bytes=abc", "bytes=5-1", "bytes=", "nonsense"] {
        let req = format!(
            "GET /docs/guide.txt HTTP/1.1\r\nHost: 127.0.0.1\r\nRange: {range}\r\nConnection: close\r\n\r\n"
        );
        let r = send(f.node.addr, req.as_bytes());
        assert_eq!(r.status, 416, "Range: {range}");
        assert_eq!(
            r.header("content-range"),
            Some("bytes */36"),
            "Range: {range}"
        );
        assert!(
            !r.body.windows(10).any(|w| w == &GUIDE[..10]),
            "a 416 carries none of the file"
        );
    }
    assert_still_serving(&mut f);
}

#[test]
fn post_put_delete_are_405_with_allow_get_head() {
    let mut f = fixture(true);
    for (method, extra) in [
        (
            "POST",
            "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 3\r\n\r\na=1",
        ),
        ("PUT", "Content-Length: 5\r\n\r\nhello"),
        ("DELETE", "\r\n"),
        ("PATCH", "Content-Length: 0\r\n\r\n"),
    ] {
        let req = format!(
            "{method} /index.html HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n{extra}"
        );
        let r = send(f.node.addr, req.as_bytes());
        assert_eq!(r.status, 405, "{method}");
        assert_eq!(r.header("allow"), Some("GET, HEAD"), "{method}");
    }
    assert_still_serving(&mut f);
    // Nothing was written: the file is unchanged.
    let r = send(f.node.addr, get("/index.html").as_bytes());
    assert_eq!((r.status, r.body.as_slice()), (200, INDEX));
}

/// Every bad request above, and more attempts at the sentinel files, against one node; then
/// it must still serve `/`, and nothing from outside the deploy may have come back.
#[test]
fn the_node_survives_every_bad_request_and_leaks_nothing() {
    let mut f = fixture(true);
    let addr = f.node.addr;
    let long = format!("/{}", "a".repeat(16 * 1024));
    let huge = format!("/{}", "b".repeat(100 * 1024));
    let cases: Vec<(String, &[u16])> = vec![
        (get("/../etc/passwd"), &[400]),
        (get("/%2e%2e/"), &[400]),
        (get("/%2E%2E/%2E%2E/secret.txt"), &[400]),
        (get("/.%2e/secret.txt"), &[400]),
        (get("/../secret.txt"), &[400]),
        (get("/../../secret.txt"), &[400]),
        (get("/..%2fsecret.txt"), &[400]),
        (get("/%2e%2e%2fsecret.txt"), &[400]),
        (get("/docs/../../secret.txt"), &[400]),
        (get("/a%2fb"), &[400]),
        (get("/%00"), &[400]),
        (get("/secret.txt%00.html"), &[400]),
        (get("/%ff%fe"), &[400]),
        (get("/%zz"), &[400]),
        (get("/%4"), &[400]),
        (get(&long), &[414]),
        (get(&huge), &[400, 414, 431]),
        (get("/secret.txt"), &[404]),
        (get("/..\\secret.txt"), &[400, 404]),
        (get("/sites/shop/current"), &[404]),
        (get("/objects/"), &[404]),
        (get("*"), &[400]),
        (get("http://evil.example.com/secret.txt"), &[400, 404]),
        ("GET / HTTP/1.1\r\nConnection: close\r\n\r\n".into(), &[400]),
        (
            "GET /docs/guide.txt HTTP/1.1\r\nHost: 127.0.0.1\r\nRange: bytes=abc\r\nConnection: close\r\n\r\n".into(),
            &[416],
        ),
        (
            "POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 3\r\nConnection: close\r\n\r\na=1".into(),
            &[405],
        ),
        (
            "PUT /secret.txt HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".into(),
            &[405],
        ),
        (
            "DELETE / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".into(),
            &[405],
        ),
        ("GARBAGE\r\n\r\n".into(), &[400]),
        (
            "GET / HTTP/1.1\r\nHost: bad host name\r\nConnection: close\r\n\r\n".into(),
            &[200, 400],
        ),
    ];
    let mut seen = Vec::new();
    for (req, want) in &cases {
        let r = send(addr, req.as_bytes());
        let shown: String = req.chars().take(80).collect();
        assert!(
            want.contains(&r.status),
            "{shown:?} -> {} (want one of {want:?}): {:?}",
            r.status,
            String::from_utf8_lossy(&r.body)
        );
        seen.push(format!("{} <- {shown:?}", r.status));
        assert!(f.node.is_alive(), "edge exited after {shown:?}");
    }
    eprintln!("{}", seen.join("\n"));
    assert_still_serving(&mut f);
}

/// A folder asked for without its slash redirects to the same host: `//docs` names the
/// folder `docs` (empty segments are dropped), so its Location must not be `//docs/`, which
/// a browser reads as the host `docs`.
/// (Was a bug: the Location was built from the raw request path.)
#[test]
fn a_redirect_never_points_to_another_host() {
    let mut f = fixture(true);
    for (path, want) in [
        ("/docs", "/docs/"),
        ("/docs?a=b", "/docs/?a=b"),
        ("//docs", "/docs/"),
        ("///docs?a=b", "/docs/?a=b"),
    ] {
        let r = send(f.node.addr, get(path).as_bytes());
        assert_eq!(r.status, 301, "{path}");
        let loc = r.header("location").unwrap_or_default();
        assert!(
            !loc.starts_with("//") && !loc.contains("://"),
            "GET {path} redirects off-site to Location {loc:?}"
        );
        assert_eq!(loc, want, "GET {path}");
    }
    assert_still_serving(&mut f);
}
