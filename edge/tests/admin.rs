//! The admin listener and operating the node, with `edge serve` as a real process: every
//! endpoint, the token, Prometheus text (checked by promtool), reload on SIGHUP, drain on SIGTERM, check-config,
//! and the status page rendered in headless Chromium.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Node {
    child: Child,
    addr: String,
    admin: String,
    log: PathBuf,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn edge() -> Command {
    Command::new(env!("CARGO_BIN_EXE_edge"))
}

struct Site {
    dir: tempfile::TempDir,
}

impl Site {
    fn new() -> Site {
        let dir = tempfile::tempdir().unwrap();
        let site = dir.path().join("site");
        std::fs::create_dir_all(site.join("docs")).unwrap();
        std::fs::write(site.join("index.html"), "<h1>home</h1>").unwrap();
        std::fs::write(site.join("docs/index.html"), "docs").unwrap();
        let big: Vec<u8> = (0..(24u32 << 20)).map(|i| (i % 251) as u8).collect();
        std::fs::write(site.join("big.bin"), big).unwrap();
        let s = Site { dir };
        s.publish();
        s
    }

    fn store(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    fn publish(&self) {
        let out = edge()
            .arg("publish")
            .arg(self.dir.path().join("site"))
            .args(["--site", "main", "--store"])
            .arg(self.store())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn config(&self, text: &str) -> PathBuf {
        let p = self.dir.path().join("edge.toml");
        std::fs::write(&p, text).unwrap();
        p
    }

    fn start(&self, config: Option<&Path>, token: Option<&str>) -> Node {
        let log = self
            .dir
            .path()
            .join(format!("node-{}.log", fastrand_name()));
        let mut cmd = edge();
        cmd.arg("serve")
            .arg("--store")
            .arg(self.store())
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .arg("--cache-dir")
            .arg(self.dir.path().join("cache"))
            .args(["--default-site", "main"])
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap());
        if let Some(c) = config {
            cmd.arg("--config").arg(c);
        }
        match token {
            Some(t) => cmd.env("EDGE_ADMIN_TOKEN", t),
            None => cmd.env_remove("EDGE_ADMIN_TOKEN"),
        };
        let mut child = cmd.spawn().unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut first = String::new();
        let mut second = String::new();
        out.read_line(&mut first).unwrap();
        out.read_line(&mut second).unwrap();
        std::thread::spawn(move || {
            let mut sink = Vec::new();
            let _ = out.read_to_end(&mut sink);
        });
        let addr_of = |line: &str| {
            line.trim()
                .rsplit("http://")
                .next()
                .unwrap()
                .trim_end_matches('/')
                .to_owned()
        };
        assert!(first.starts_with("edge listening on"), "{first}");
        assert!(second.starts_with("edge admin on"), "{second}");
        Node {
            addr: addr_of(&first),
            admin: addr_of(&second),
            child,
            log,
        }
    }
}

fn fastrand_name() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

struct Resp {
    status: u16,
    head: String,
    body: Vec<u8>,
}

fn request(addr: &str, method: &str, path: &str, headers: &[(&str, &str)]) -> Resp {
    request_host(addr, Some("localhost"), method, path, headers)
}

/// [`request`] with `host` as the Host header (`None`: none at all).
fn request_host(
    addr: &str,
    host: Option<&str>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Resp {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    if let Some(h) = host {
        req.push_str(&format!("Host: {h}\r\n"));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if method == "POST" {
        req.push_str("Content-Length: 0\r\n");
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    let split = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&buf[..split]).to_string();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let mut body = buf[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    Resp { status, head, body }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = b.windows(2).position(|w| w == b"\r\n").unwrap();
        let len =
            usize::from_str_radix(std::str::from_utf8(&b[..line_end]).unwrap().trim(), 16).unwrap();
        b = &b[line_end + 2..];
        if len == 0 {
            return out;
        }
        out.extend_from_slice(&b[..len]);
        b = &b[len + 2..];
    }
}

fn get(addr: &str, path: &str) -> Resp {
    request(addr, "GET", path, &[])
}

/// Parses Prometheus text: every sample line is `name{labels} value` with a numeric value,
/// and every sample's metric has a TYPE line. Returns (sample, value) pairs.
fn parse_prometheus(text: &str) -> Vec<(String, f64)> {
    let mut typed = std::collections::HashSet::new();
    let mut samples = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split_whitespace();
            let name = it.next().unwrap();
            let kind = it.next().unwrap();
            assert!(
                ["counter", "gauge", "histogram"].contains(&kind),
                "unknown type in {line}"
            );
            typed.insert(name.to_owned());
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (sample, value) = line.rsplit_once(' ').expect(line);
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let name = sample.split('{').next().unwrap();
        let base = name
            .trim_end_matches("_bucket")
            .trim_end_matches("_sum")
            .trim_end_matches("_count");
        assert!(
            typed.contains(name) || typed.contains(base),
            "sample without a TYPE line: {line}"
        );
        if sample.contains('{') {
            assert!(sample.ends_with('}'), "bad labels in {line}");
        }
        samples.push((sample.to_owned(), value));
    }
    samples
}

fn sample(samples: &[(String, f64)], name: &str) -> f64 {
    samples
        .iter()
        .find(|(s, _)| s == name)
        .unwrap_or_else(|| panic!("no sample {name}"))
        .1
}

#[test]
fn health_readiness_metrics_and_status() {
    let site = Site::new();
    let node = site.start(None, None);
    assert_eq!(get(&node.admin, "/healthz").status, 200);
    assert_eq!(get(&node.admin, "/readyz").status, 200);
    assert_eq!(get(&node.admin, "/nope").status, 404);
    assert_eq!(request(&node.admin, "DELETE", "/metrics", &[]).status, 405);

    let before = parse_prometheus(&String::from_utf8(get(&node.admin, "/metrics").body).unwrap());
    let ok_before = sample(
        &before,
        "edge_requests_total{protocol=\"http1\",class=\"2xx\"}",
    );
    for _ in 0..5 {
        assert_eq!(get(&node.addr, "/").status, 200);
    }
    assert_eq!(get(&node.addr, "/missing").status, 404);
    let m = get(&node.admin, "/metrics");
    assert!(
        m.head
            .to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4")
    );
    let after = parse_prometheus(&String::from_utf8(m.body).unwrap());
    assert_eq!(
        sample(
            &after,
            "edge_requests_total{protocol=\"http1\",class=\"2xx\"}"
        ) - ok_before,
        5.0
    );
    assert!(
        sample(
            &after,
            "edge_requests_total{protocol=\"http1\",class=\"4xx\"}"
        ) >= 1.0
    );
    assert!(sample(&after, "edge_request_duration_seconds_count") >= 6.0);
    assert!(sample(&after, "edge_tier_hits_total{tier=\"memory\"}") >= 4.0);
    assert!(sample(&after, "edge_tier_hits_total{tier=\"origin\"}") >= 1.0);
    assert_eq!(
        sample(&after, "edge_origin_breaker_state{face=\"objects\"}"),
        0.0
    );
    assert!(
        sample(
            &after,
            "edge_origin_requests_total{face=\"meta\",outcome=\"success\"}"
        ) >= 1.0
    );
    assert!(sample(&after, "edge_tier_bytes{tier=\"memory\"}") > 0.0);
    // Each serving thread yields at most once per server.yield_after (1 ms); its clock starts
    // with the thread, so a request served later than that yields once.
    assert!(sample(&after, "edge_worker_yields_total") >= 1.0);
    assert!(after.iter().any(|(s, _)| s == "edge_stale_serves_total"));
    assert!(after.iter().any(|(s, _)| s == "edge_site_shed_total"));

    let status: serde_json::Value =
        serde_json::from_slice(&get(&node.admin, "/status").body).unwrap();
    assert_eq!(status["sites"][0]["site"], "main");
    assert_eq!(status["sites"][0]["stale"], false);
    assert!(status["tiers"]["memory"]["hits"].as_u64().unwrap() >= 4);
    assert_eq!(status["breakers"]["objects"], "closed");
    let html = get(&node.admin, "/status.html");
    assert!(html.head.to_ascii_lowercase().contains("text/html"));
    let html = String::from_utf8(html.body).unwrap();
    assert!(html.contains("<td>main</td>"), "{html}");
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "no external assets"
    );
}

/// Runs `promtool check metrics` (Debian's `prometheus` package) on `text`. `None` when
/// promtool is not installed.
fn promtool_check(text: &str) -> Option<std::process::Output> {
    let mut child = match Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => panic!("running promtool: {e}"),
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    Some(child.wait_with_output().unwrap())
}

/// `/metrics` of a node that has served traffic (hits, a miss, a 404, a range) passes
/// `promtool check metrics`, and every family is one group with HELP and TYPE first, in both
/// formats (promtool 2.42 does not notice a family split in two, so that is checked here).
#[test]
fn metrics_pass_promtool_and_every_family_is_one_group() {
    use edge::metrics::{Format, exposition_problems};
    let site = Site::new();
    let node = site.start(None, None);
    for path in ["/", "/", "/docs/", "/missing"] {
        get(&node.addr, path);
    }
    let range = request(&node.addr, "GET", "/big.bin", &[("Range", "bytes=0-99")]);
    assert_eq!(range.status, 206);

    let classic = get(&node.admin, "/metrics");
    assert_eq!(classic.status, 200);
    assert!(
        classic
            .head
            .to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{}",
        classic.head
    );
    let classic = String::from_utf8(classic.body).unwrap();
    assert_eq!(
        exposition_problems(&classic, Format::Prometheus),
        Vec::<String>::new(),
        "{classic}"
    );
    // What a Prometheus server sends: it gets OpenMetrics.
    let accept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5";
    let om = request(&node.admin, "GET", "/metrics", &[("Accept", accept)]);
    assert!(
        om.head
            .to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text; version=1.0.0"),
        "{}",
        om.head
    );
    let om = String::from_utf8(om.body).unwrap();
    assert_eq!(
        exposition_problems(&om, Format::OpenMetrics),
        Vec::<String>::new(),
        "{om}"
    );
    let samples = parse_prometheus(&classic);
    assert!(sample(&samples, "edge_request_duration_seconds_count") >= 5.0);
    assert!(sample(&samples, "edge_tier_hits_total{tier=\"origin\"}") >= 1.0);

    match promtool_check(&classic) {
        Some(out) => assert!(
            out.status.success(),
            "promtool check metrics failed ({}):\n{}{}\n{classic}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        None if std::env::var_os("CI").is_some() => {
            panic!("promtool is not installed, and CI is set (.ci/run installs `prometheus`)")
        }
        None => {
            eprintln!("promtool not on PATH: promtool check skipped (apt-get install prometheus)")
        }
    }
}

#[test]
fn refresh_and_purge_need_the_token_and_work() {
    let site = Site::new();
    let token = "a-long-enough-admin-token";
    let node = site.start(None, Some(token));
    assert_eq!(get(&node.addr, "/").status, 200);
    let bearer = format!("Bearer {token}");
    let unauthorized = request(&node.admin, "POST", "/sites/main/refresh", &[]);
    assert_eq!(unauthorized.status, 401);
    assert!(
        unauthorized
            .head
            .to_ascii_lowercase()
            .contains("www-authenticate: bearer")
    );
    let wrong = request(
        &node.admin,
        "POST",
        "/sites/main/refresh",
        &[("Authorization", "Bearer a-long-enough-admin-tokeX")],
    );
    assert_eq!(wrong.status, 401);
    assert_eq!(
        request(
            &node.admin,
            "POST",
            "/sites/main/purge",
            &[("Authorization", "Basic x")]
        )
        .status,
        401
    );
    // Reads need no token.
    assert_eq!(get(&node.admin, "/metrics").status, 200);

    // A new deploy is picked up at once by refresh (the refresher waits 5 s).
    std::fs::write(site.dir.path().join("site/index.html"), "<h1>v2</h1>").unwrap();
    site.publish();
    let r = request(
        &node.admin,
        "POST",
        "/sites/main/refresh",
        &[("Authorization", &bearer)],
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["seq"], 2);
    assert_eq!(get(&node.addr, "/").body, b"<h1>v2</h1>");
    assert_eq!(
        request(
            &node.admin,
            "POST",
            "/sites/Bad%20Site/refresh",
            &[("Authorization", &bearer)]
        )
        .status,
        400
    );

    let p = request(
        &node.admin,
        "POST",
        "/sites/main/purge",
        &[("Authorization", &bearer)],
    );
    assert_eq!(p.status, 200);
    let v: serde_json::Value = serde_json::from_slice(&p.body).unwrap();
    assert_eq!(v["purged"], true);
    assert!(v["tree_nodes_dropped"].as_u64().unwrap() >= 1);
    let status: serde_json::Value =
        serde_json::from_slice(&get(&node.admin, "/status").body).unwrap();
    assert!(status["sites"].as_array().unwrap().is_empty(), "{status}");
    // The next request re-reads the pointer and serves again.
    assert_eq!(get(&node.addr, "/").body, b"<h1>v2</h1>");
}

#[test]
fn a_non_loopback_admin_listener_needs_a_token() {
    let site = Site::new();
    let out = edge()
        .arg("serve")
        .arg("--store")
        .arg(site.store())
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "0.0.0.0:0"])
        .env_remove("EDGE_ADMIN_TOKEN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("admin.listen") && err.contains("token"),
        "{err}"
    );
}

/// The sites `/status` lists.
fn status_sites(node: &Node) -> usize {
    let v: serde_json::Value = serde_json::from_slice(&get(&node.admin, "/status").body).unwrap();
    v["sites"].as_array().unwrap().len()
}

#[test]
fn cross_site_posts_are_refused_without_a_token_too() {
    let site = Site::new();
    let node = site.start(None, None);
    assert_eq!(get(&node.addr, "/").status, 200);
    assert_eq!(status_sites(&node), 1);
    let port = node.admin.rsplit(':').next().unwrap();
    // What a form on another site sends: no token is needed here, so only this stops it.
    for cross in [
        [
            ("Sec-Fetch-Site", "cross-site"),
            ("Origin", "http://evil.example"),
        ],
        [
            ("Sec-Fetch-Site", "cross-site"),
            ("Referer", "http://evil.example/"),
        ],
        [
            ("Sec-Fetch-Site", "same-site"),
            ("Origin", "http://localhost:3000"),
        ],
        [("Origin", "http://evil.example"), ("Accept", "*/*")],
        [("Origin", "null"), ("Accept", "*/*")],
    ] {
        for action in ["purge", "refresh"] {
            let r = request(
                &node.admin,
                "POST",
                &format!("/sites/main/{action}"),
                &cross,
            );
            let body = String::from_utf8_lossy(&r.body);
            assert_eq!(r.status, 403, "{cross:?}: {body}");
            assert!(body.contains("refused"), "{body}");
            assert_eq!(body.lines().count(), 1, "{body}");
        }
        assert_eq!(status_sites(&node), 1, "{cross:?} purged the site");
    }
    // The listener's own origin (or no such headers, as curl sends) purges.
    let own = format!("http://localhost:{port}");
    let r = request(
        &node.admin,
        "POST",
        "/sites/main/purge",
        &[("Sec-Fetch-Site", "same-origin"), ("Origin", &own)],
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(status_sites(&node), 0);
}

#[test]
fn hosts_origins_bearer_case_and_head() {
    let site = Site::new();
    let token = "a-long-enough-admin-token";
    let node = site.start(None, Some(token));
    assert_eq!(get(&node.addr, "/").status, 200);
    let port = node.admin.rsplit(':').next().unwrap().to_owned();

    // DNS rebinding: a page on evil.example whose name now points at 127.0.0.1.
    for host in [
        "evil.example",
        &format!("evil.example:{port}"),
        "localhost.evil.example",
    ] {
        for path in ["/status", "/metrics", "/status.html", "/healthz"] {
            let r = request_host(&node.admin, Some(host), "GET", path, &[]);
            let body = String::from_utf8_lossy(&r.body);
            assert_eq!(r.status, 421, "{host} {path}: {body}");
            assert!(
                body.contains("is not this admin listener's address") && body.contains(host),
                "{body}"
            );
            assert!(!body.contains("\"sites\""), "{body}");
        }
    }
    let r = request_host(&node.admin, None, "GET", "/status", &[]);
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    for host in [
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        "localhost".to_owned(),
    ] {
        let r = request_host(&node.admin, Some(&host), "GET", "/status", &[]);
        assert_eq!(r.status, 200, "{host}");
        assert_eq!(
            request_host(&node.admin, Some(&host), "GET", "/metrics", &[]).status,
            200
        );
    }

    // A cross-site POST with the right token is still refused, and purges nothing.
    let bearer = format!("Bearer {token}");
    for cross in [
        ("Sec-Fetch-Site", "cross-site"),
        ("Origin", "http://evil.example"),
    ] {
        let r = request(
            &node.admin,
            "POST",
            "/sites/main/purge",
            &[cross, ("Authorization", &bearer)],
        );
        assert_eq!(r.status, 403, "{cross:?}");
        assert_eq!(status_sites(&node), 1, "{cross:?} purged the site");
    }
    // The same-origin one, with the scheme in lower case (RFC 9110 11.1), works.
    let lower = format!("bearer {token}");
    let own = format!("http://127.0.0.1:{port}");
    let r = request_host(
        &node.admin,
        Some(&format!("127.0.0.1:{port}")),
        "POST",
        "/sites/main/refresh",
        &[
            ("Authorization", &lower),
            ("Origin", &own),
            ("Sec-Fetch-Site", "same-origin"),
        ],
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let r = request(
        &node.admin,
        "POST",
        "/sites/main/purge",
        &[("Authorization", &format!("BEARER {token}"))],
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(status_sites(&node), 0);
    // The token is still checked.
    let r = request(
        &node.admin,
        "POST",
        "/sites/main/purge",
        &[("Authorization", "bearer a-long-enough-admin-tokeX")],
    );
    assert_eq!(r.status, 401);

    // HEAD where GET is: the same headers, no body.
    let got = get(&node.admin, "/metrics");
    let head = request(&node.admin, "HEAD", "/metrics", &[]);
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty(), "{} bytes", head.body.len());
    let header = |r: &Resp, name: &str| {
        r.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    };
    assert_eq!(header(&head, "content-type"), header(&got, "content-type"));
    let len: usize = header(&head, "content-length").unwrap().parse().unwrap();
    assert!(len > 1000, "{len}");
    for path in ["/healthz", "/readyz", "/status", "/status.html"] {
        let r = request(&node.admin, "HEAD", path, &[]);
        assert_eq!(r.status, 200, "{path}");
        assert!(r.body.is_empty(), "{path}");
    }
    let r = request(&node.admin, "POST", "/metrics", &[]);
    assert_eq!(r.status, 405);
    assert_eq!(header(&r, "allow").as_deref(), Some("GET, HEAD"));
    let r = request(&node.admin, "GET", "/sites/main/purge", &[]);
    assert_eq!(r.status, 405);
    assert_eq!(header(&r, "allow").as_deref(), Some("POST"));
}

#[test]
fn a_short_admin_token_in_the_environment_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    // Spawned with a deadline: a node that does start would serve forever.
    let serve = |token: &str, admin: &str| {
        let mut child = edge()
            .arg("serve")
            .arg("--store")
            .arg(dir.path().join("store"))
            .args(["--listen", "127.0.0.1:0", "--admin-listen", admin])
            .env("EDGE_ADMIN_TOKEN", token)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("EDGE_ADMIN_TOKEN={token:?}: the node started");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        child.wait_with_output().unwrap()
    };
    let out = serve("short", "127.0.0.1:0");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("EDGE_ADMIN_TOKEN") && err.contains("at least 16 characters"),
        "{err}"
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("edge admin on"));
    // Empty is unset: a non-loopback listener is then refused for want of a token.
    let out = serve("", "0.0.0.0:0");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("admin.listen") && err.contains("without a token"),
        "{err}"
    );
}

#[test]
fn silent_admin_clients_are_closed_after_the_header_read_timeout() {
    let site = Site::new();
    let node = site.start(None, None);
    // Nothing at all; a part of the h2c preface; half a request head. All at once, so the
    // test waits one timeout (10 s).
    let clients: Vec<_> = [
        &b""[..],
        b"PRI * HT",
        b"GET /status HTTP/1.1\r\nHost: localhost\r\n",
    ]
    .into_iter()
    .map(|sent| {
        let addr = node.admin.clone();
        std::thread::spawn(move || {
            let mut s = TcpStream::connect(&addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            s.write_all(sent).unwrap();
            let t = Instant::now();
            let mut buf = Vec::new();
            let _ = s.read_to_end(&mut buf);
            (String::from_utf8_lossy(sent).into_owned(), t.elapsed(), buf)
        })
    })
    .collect();
    for c in clients {
        let (sent, waited, buf) = c.join().unwrap();
        assert!(
            waited >= Duration::from_secs(8) && waited < Duration::from_secs(25),
            "{sent:?}: closed after {waited:?}"
        );
        assert!(
            !String::from_utf8_lossy(&buf).contains("\"sites\""),
            "{sent:?}"
        );
    }
    // The listener still answers.
    assert_eq!(get(&node.admin, "/healthz").status, 200);
}

#[test]
fn check_config_names_the_key_and_line() {
    let site = Site::new();
    let good = site.config("[server]\nlisten = \"127.0.0.1:0\"\n");
    let out = edge().arg("check-config").arg(&good).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/edge.toml");
    let out = edge().arg("check-config").arg(&shipped).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let bad = site.config("[cache]\nmemory_size = \"256MiB\"\n\ndisk_size = \"lots\"\n");
    let out = edge().arg("check-config").arg(&bad).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("line 4") && err.contains("`cache.disk_size`"),
        "{err}"
    );

    let unknown = site.config("[origin]\nbreaker_failures = 3\nretries = 2\n");
    let out = edge().arg("check-config").arg(&unknown).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("line 3") && err.contains("retries"),
        "{err}"
    );
}

fn wait_for_log(node: &Node, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(&node.log).unwrap_or_default();
        if text.contains(needle) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "log never said {needle:?}:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sighup_reloads_a_good_config_and_refuses_a_bad_one() {
    let site = Site::new();
    let config = site.config("[log]\nlevel = \"info\"\n");
    let node = site.start(Some(&config), None);
    let pid = node.child.id().to_string();
    site.config("[log]\nlevel = \"debug\"\n");
    assert!(
        Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success()
    );
    wait_for_log(&node, "configuration reloaded");
    // The new level is in force: this debug line is only written at debug level.
    wait_for_log(&node, "log level changed");
    site.config("[log]\nlevel = \"info\"\n[cache]\nmemory_size = \"not a size\"\n");
    assert!(
        Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success()
    );
    wait_for_log(&node, "config reload refused");
    let log = std::fs::read_to_string(&node.log).unwrap();
    assert!(
        log.contains("cache.memory_size"),
        "the refusal names the key:\n{log}"
    );
    assert_eq!(get(&node.addr, "/").status, 200, "still serving");
}

#[test]
fn sigterm_drains_requests_in_flight() {
    let site = Site::new();
    let mut node = site.start(None, None);
    let want: Vec<u8> = (0..(24u32 << 20)).map(|i| (i % 251) as u8).collect();
    // Warm the file so the drain measures serving, not the origin.
    assert_eq!(get(&node.addr, "/big.bin").body.len(), want.len());
    let mut clients = Vec::new();
    for _ in 0..4 {
        let mut s = TcpStream::connect(&node.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.write_all(b"GET /big.bin HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut first = [0u8; 4096];
        let n = s.read(&mut first).unwrap();
        assert!(n > 0);
        clients.push((s, first[..n].to_vec()));
    }
    let pid = node.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    // New connections are refused soon; the ones in flight complete.
    for (mut s, mut got) in clients {
        s.read_to_end(&mut got).unwrap();
        let split = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        assert!(got[..split].starts_with(b"HTTP/1.1 200"));
        assert!(
            got[split + 4..] == want[..],
            "a drained response is complete and right"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = node.child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "did not exit after draining");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit status {status:?}");
}

/// The first of `names` on PATH.
fn which(names: &[&'static str]) -> Option<&'static str> {
    names.iter().copied().find(|c| {
        Command::new("sh")
            .args(["-c", &format!("command -v {c}")])
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

/// `tool` (a Debian package .ci/run installs), or a panic naming the variable that skips.
fn need(names: &[&'static str], skip: &str) -> Option<&'static str> {
    match which(names) {
        Some(t) => Some(t),
        None if std::env::var(skip).is_ok() => {
            eprintln!("{skip} set and no {}: skipped", names[0]);
            None
        }
        None => panic!(
            "{} is not installed (.ci/run installs it; {skip}=1 skips)",
            names[0]
        ),
    }
}

/// Open-loop load at `rate` requests/s on `/` for `secs` (bounded), from the loadtest
/// library on a thread of its own. Returns the requests it completed.
/// Open-loop load on `addr` at `rate` requests/s, in rounds of five seconds, until the
/// returned handle is stopped (or `max_secs` pass): a slow browser on a busy machine must
/// not outlast the load it is asked to show.
struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<u64>,
}

impl Load {
    /// Stops the load and returns how many responses it received.
    fn stop(self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

fn load(addr: &str, rate: f64, max_secs: u64) -> Load {
    let target: http::Uri = format!("http://{addr}/").parse().unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let deadline = Instant::now() + Duration::from_secs(max_secs);
        let host = target.authority().unwrap().clone();
        let w = std::sync::Arc::new(loadtest::loadgen::Workload::from_list("/", &host).unwrap());
        let mut responses = 0;
        while !flag.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline {
            let mut opts = loadtest::loadgen::RunOptions::new(target.clone());
            opts.mode = loadtest::loadgen::Mode::Open { rate };
            opts.connections = 8;
            opts.warmup = Duration::ZERO;
            opts.duration = Duration::from_secs(5);
            responses += rt
                .block_on(loadtest::loadgen::run(&opts, w.clone()))
                .unwrap()
                .responses;
        }
        responses
    });
    Load { stop, thread }
}

fn status_json(node: &Node) -> serde_json::Value {
    serde_json::from_slice(&get(&node.admin, "/status").body).unwrap()
}

/// Waits (bounded) until the node's last sample shows at least `rps` requests/s.
fn wait_for_rate(node: &Node, rps: f64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = status_json(node);
        if s["rates"]["requests_per_s"].as_f64().unwrap_or(0.0) >= rps {
            return;
        }
        assert!(Instant::now() < deadline, "no load seen: {s}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The value of the first `data-v` after `marker` in a dumped DOM, as JSON.
fn data_v(dom: &str, marker: &str) -> serde_json::Value {
    let rest = dom
        .split(marker)
        .nth(1)
        .unwrap_or_else(|| panic!("no {marker} in {dom}"));
    let v = rest
        .split("data-v=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap_or_else(|| panic!("no data-v after {marker}"));
    serde_json::from_str(v).unwrap_or_else(|e| panic!("{e}: data-v {v:?} after {marker}"))
}

fn text_of(dom: &str, id: &str) -> String {
    dom.split(&format!("id=\"{id}\""))
        .nth(1)
        .and_then(|r| r.split('>').nth(1))
        .and_then(|r| r.split('<').next())
        .unwrap_or_else(|| panic!("no #{id} in {dom}"))
        .to_owned()
}

/// The `d` of the chart's path: what moves when the chart does.
fn chart_path(dom: &str, id: &str) -> String {
    dom.split(&format!("<svg id=\"{id}\""))
        .nth(1)
        .and_then(|r| r.split("<path d=\"").nth(1))
        .and_then(|r| r.split('"').next())
        .unwrap_or_else(|| panic!("no chart {id} in {dom}"))
        .to_owned()
}

struct Browser {
    chromium: &'static str,
    profile: tempfile::TempDir,
}

impl Browser {
    fn run(&self, args: &[String]) -> std::process::Output {
        Command::new(self.chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--window-size=1100,900",
            ])
            .arg(format!("--user-data-dir={}", self.profile.path().display()))
            .args(args)
            .output()
            .unwrap()
    }

    fn screenshot(&self, url: &str, shot: &Path) {
        let _ = std::fs::remove_file(shot);
        let out = self.run(&[format!("--screenshot={}", shot.display()), url.to_owned()]);
        assert!(
            shot.exists(),
            "no screenshot: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let png = std::fs::read(shot).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        assert!(
            png.len() > 5_000,
            "a blank page is tiny: {} bytes",
            png.len()
        );
    }

    fn dom(&self, url: &str) -> String {
        let out = self.run(&["--dump-dom".to_owned(), url.to_owned()]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// Renders `/status.html` in headless Chromium under load: screenshots saved under
/// `target/test-artifacts/` (two, seconds apart: the charts move), and the figures read
/// back from the rendered DOM equal `/status` JSON of the sample the page names.
#[test]
fn status_page_under_load_renders_in_chromium_and_matches_the_json() {
    let Some(chromium) = need(
        &["chromium", "chromium-browser", "google-chrome"],
        "EDGE_SKIP_BROWSER_TESTS",
    ) else {
        return;
    };
    let site = Site::new();
    let node = site.start(None, None);
    let loader = load(&node.addr, 200.0, 180);
    wait_for_rate(&node, 100.0);
    let url = format!("http://{}/status.html", node.admin);
    let artifacts = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let browser = Browser {
        chromium,
        profile: tempfile::tempdir().unwrap(),
    };
    browser.screenshot(&url, &artifacts.join("status-page-1.png"));

    // DOM against the JSON: the totals of the sample the page shows are in the history of
    // a later /status; the windowed figures and the sites are compared when the page's
    // sample is the one a /status before or after it reports.
    let mut compared_sites = false;
    let mut first_dom = String::new();
    for _attempt in 0..6 {
        let before = status_json(&node);
        let dom = browser.dom(&url);
        let after = status_json(&node);
        let seq: u64 = text_of(&dom, "sample").parse().unwrap();
        let (b, a) = (
            before["sample"]["seq"].as_u64().unwrap(),
            after["sample"]["seq"].as_u64().unwrap(),
        );
        assert!(b <= seq && seq <= a, "page sample {seq} not in [{b}, {a}]");
        let first = after["history"]["first_seq"].as_u64().unwrap();
        let i = (seq - first) as usize;
        let hist = &after["history"];
        assert_eq!(
            data_v(&dom, "id=\"rps\""),
            hist["requests_per_s"][i],
            "sample {seq}"
        );
        assert_eq!(
            data_v(&dom, "id=\"bps\""),
            hist["bytes_per_s"][i],
            "sample {seq}"
        );
        assert_eq!(
            data_v(&dom, "id=\"hit-ratio\""),
            hist["hit_ratio"][i],
            "sample {seq}"
        );
        assert!(
            hist["requests_per_s"][i].as_f64().unwrap() > 50.0,
            "under load: {hist}"
        );
        assert!(dom.contains("<td>main</td>"), "{dom}");
        assert_eq!(text_of(&dom, "breaker-objects"), "closed");
        assert_eq!(text_of(&dom, "ready"), "true");
        if first_dom.is_empty() {
            first_dom = dom.clone();
        }
        let same = [&before, &after]
            .into_iter()
            .find(|j| j["sample"]["seq"].as_u64() == Some(seq));
        if let Some(j) = same {
            assert_eq!(data_v(&dom, "id=\"p50\""), j["latency"]["p50_ms"]);
            assert_eq!(data_v(&dom, "id=\"p99\""), j["latency"]["p99_ms"]);
            assert_eq!(data_v(&dom, "site-rps"), j["sites"][0]["requests_per_s"]);
            assert_eq!(data_v(&dom, "site-bps"), j["sites"][0]["bytes_per_s"]);
            assert_eq!(data_v(&dom, "site-hit"), j["sites"][0]["hit_ratio"]);
            assert!(j["sites"][0]["requests_per_s"].as_f64().unwrap() > 50.0);
            compared_sites = true;
            break;
        }
    }
    assert!(
        compared_sites,
        "the page never showed the sample of a /status beside it"
    );
    // Seconds later, the charts have moved.
    let seq0 = status_json(&node)["sample"]["seq"].as_u64().unwrap();
    while status_json(&node)["sample"]["seq"].as_u64().unwrap() < seq0 + 2 {
        std::thread::sleep(Duration::from_millis(100));
    }
    let later = browser.dom(&url);
    assert_ne!(
        chart_path(&first_dom, "chart-rps"),
        chart_path(&later, "chart-rps"),
        "the requests/s chart did not move"
    );
    browser.screenshot(&url, &artifacts.join("status-page-2.png"));
    assert!(loader.stop() > 0);
    eprintln!("status page screenshots: {}", artifacts.display());
}

/// The sum of the samples named `name` (any labels) in Prometheus text.
fn sum_of(samples: &[(String, f64)], name: &str) -> f64 {
    samples
        .iter()
        .filter(|(s, _)| s == name || s.starts_with(&format!("{name}{{")))
        .map(|(_, v)| v)
        .sum()
}

fn scrape(node: &Node) -> (Instant, Vec<(String, f64)>) {
    let body = get(&node.admin, "/metrics").body;
    (
        Instant::now(),
        parse_prometheus(&String::from_utf8(body).unwrap()),
    )
}

/// The number after `key ` in `edge top --once` output.
fn figure(out: &str, key: &str) -> f64 {
    out.split(&format!("{key} "))
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in\n{out}"))
}

#[test]
fn top_once_under_load_shows_the_rates_of_metrics_deltas() {
    let site = Site::new();
    let node = site.start(None, None);
    let loader = load(&node.addr, 300.0, 180);
    // Steady state: two samples in a row at the offered rate (the first second ramps up).
    wait_for_rate(&node, 270.0);
    let seq = status_json(&node)["sample"]["seq"].as_u64().unwrap();
    while status_json(&node)["sample"]["seq"].as_u64().unwrap() <= seq {
        std::thread::sleep(Duration::from_millis(50));
    }
    wait_for_rate(&node, 270.0);
    let (t0, m0) = scrape(&node);
    let out = edge()
        .args(["top", "--once", "--admin", &node.admin])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = String::from_utf8(out.stdout).unwrap();
    std::thread::sleep((t0 + Duration::from_secs(1)).saturating_duration_since(Instant::now()));
    let (t1, m1) = scrape(&node);
    let secs = t1.duration_since(t0).as_secs_f64();
    let per_s = |name: &str| (sum_of(&m1, name) - sum_of(&m0, name)) / secs;
    for (key, metric) in [
        ("requests/s", "edge_requests_total"),
        ("bytes/s", "edge_response_bytes_total"),
        ("memory", "edge_tier_hits_total{tier=\"memory\"}"),
    ] {
        let (shown, measured) = (figure(&out, key), per_s(metric));
        assert!(shown > 0.0, "{key} in\n{out}");
        assert!(
            (shown - measured).abs() <= 0.10 * measured,
            "{key}: top shows {shown}, /metrics says {measured:.1} over {secs:.2} s\n{out}"
        );
    }
    let main = out
        .lines()
        .find(|l| l.trim_start().starts_with("main "))
        .unwrap_or_else(|| panic!("no site row in\n{out}"));
    let site_rps: f64 = main.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(site_rps > 0.0, "{main}");
    assert!(out.contains("origin objects breaker closed"), "{out}");
    assert!(
        out.contains("hit ratio 9") || out.contains("hit ratio 100"),
        "{out}"
    );
    // A node that is not there: a clear error, not a panic.
    let gone = edge()
        .args(["top", "--once", "--admin", "127.0.0.1:1"])
        .output()
        .unwrap();
    assert!(!gone.status.success());
    let err = String::from_utf8_lossy(&gone.stderr);
    assert!(
        err.starts_with("error: reading http://127.0.0.1:1/status"),
        "{err}"
    );
    assert!(loader.stop() > 0);
}

/// Kills a tmux server (its own socket) when dropped.
struct Tmux(String);

impl Tmux {
    fn cmd(&self) -> Command {
        let mut c = Command::new("tmux");
        c.args(["-L", &self.0]);
        c
    }

    fn pane(&self) -> String {
        let out = self
            .cmd()
            .args(["capture-pane", "-p", "-t", "top"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn wait_for(&self, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let pane = self.pane();
            if ok(&pane) {
                return pane;
            }
            assert!(Instant::now() < deadline, "{what}; the pane:\n{pane}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd().arg("kill-server").output();
    }
}

#[test]
fn top_runs_in_a_terminal_under_tmux_and_q_quits() {
    if need(&["tmux"], "EDGE_SKIP_TUI_TESTS").is_none() {
        return;
    }
    let site = Site::new();
    let node = site.start(None, None);
    for _ in 0..20 {
        assert_eq!(get(&node.addr, "/").status, 200);
    }
    let tmux = Tmux(format!("edge-top-test-{}", std::process::id()));
    let script = format!(
        "'{}' top --admin {}; echo \"top exited $?\"; sleep 60",
        env!("CARGO_BIN_EXE_edge"),
        node.admin
    );
    let started = tmux
        .cmd()
        .args([
            "new-session",
            "-d",
            "-s",
            "top",
            "-x",
            "140",
            "-y",
            "40",
            &script,
        ])
        .status()
        .unwrap();
    assert!(started.success());
    let pane = tmux.wait_for("the view did not draw", |p| {
        p.contains("requests/s") && p.contains("main") && p.contains("q quits")
    });
    assert!(pane.contains("breaker closed"), "{pane}");
    assert!(pane.contains("SITE"), "{pane}");
    assert!(pane.contains("20261") || pane.contains("deploy"), "{pane}");
    // Traffic shows up on the next refresh.
    let before = figure(&pane, "requests");
    for _ in 0..10 {
        assert_eq!(get(&node.addr, "/").status, 200);
    }
    tmux.wait_for("the view did not refresh", |p| {
        p.contains("requests ") && figure(p, "requests") >= before + 10.0
    });
    let q = tmux
        .cmd()
        .args(["send-keys", "-t", "top", "q"])
        .status()
        .unwrap();
    assert!(q.success());
    let pane = tmux.wait_for("q did not quit", |p| p.contains("top exited"));
    assert!(pane.contains("top exited 0"), "{pane}");
}

/// The metric names a PromQL expression reads: identifiers that are not functions,
/// keywords, label names in `by (...)`, matchers, ranges, strings or Grafana variables.
fn promql_metrics(expr: &str) -> Vec<String> {
    let mut s = String::new();
    // Strings, matchers and ranges out.
    let (mut in_str, mut depth_brace, mut depth_bracket) = (false, 0, 0);
    for c in expr.chars() {
        match c {
            '"' => in_str = !in_str,
            _ if in_str => {}
            '{' => depth_brace += 1,
            '}' => depth_brace -= 1,
            '[' => depth_bracket += 1,
            ']' => depth_bracket -= 1,
            _ if depth_brace > 0 || depth_bracket > 0 => {}
            c => s.push(c),
        }
    }
    let chars: Vec<char> = s.chars().collect();
    let mut names = Vec::new();
    let mut i = 0;
    let mut skip_group = false;
    while i < chars.len() {
        let c = chars[i];
        if c == '$' {
            i += 1;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            continue;
        }
        if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let next = chars[i..].iter().find(|c| !c.is_whitespace());
            const KEYWORDS: [&str; 18] = [
                "and",
                "or",
                "unless",
                "bool",
                "offset",
                "inf",
                "sum",
                "min",
                "max",
                "avg",
                "count",
                "stddev",
                "stdvar",
                "topk",
                "bottomk",
                "quantile",
                "count_values",
                "group",
            ];
            const GROUPING: [&str; 6] = [
                "by",
                "without",
                "on",
                "ignoring",
                "group_left",
                "group_right",
            ];
            if GROUPING.contains(&word.as_str()) {
                skip_group = next == Some(&'(');
            } else if next != Some(&'(') && !KEYWORDS.contains(&word.as_str()) {
                names.push(word);
            }
            continue;
        }
        if c.is_ascii_digit() || c == '.' {
            // A number (0.99, 1e3): digits, dots and an exponent.
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
            continue;
        }
        if c == '(' && skip_group {
            while i < chars.len() && chars[i] != ')' {
                i += 1;
            }
            skip_group = false;
        }
        i += 1;
    }
    names
}

#[test]
fn the_promql_reader_finds_metric_names() {
    assert_eq!(
        promql_metrics(
            "histogram_quantile(0.99, sum by (le) (rate(edge_x_bucket{a=\"b\",instance=~\"$instance\"}[$__rate_interval])))"
        ),
        ["edge_x_bucket"]
    );
    assert_eq!(
        promql_metrics("a / b > 0.05 and on (site) topk(10, sum without (x, y) (c)) == bool 2"),
        ["a", "b", "c"]
    );
    assert_eq!(
        promql_metrics("label_values(edge_up, instance)"),
        ["edge_up", "instance"]
    );
}

/// Every query of config/grafana-dashboard.json and config/alerts.yml names only metrics a
/// real node's /metrics has; the dashboard has the shape Grafana imports.
#[test]
fn dashboard_and_alerts_name_only_metrics_the_node_exports() {
    let site = Site::new();
    let node = site.start(None, None);
    assert_eq!(get(&node.addr, "/").status, 200);
    assert_eq!(get(&node.addr, "/missing").status, 404);
    // The filesystem gauges come with the first sample.
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let t = String::from_utf8(get(&node.admin, "/metrics").body).unwrap();
        if t.contains("edge_disk_filesystem_avail_bytes ") {
            break t;
        }
        assert!(Instant::now() < deadline, "no filesystem gauge in\n{t}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let exported: std::collections::BTreeSet<String> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_owned())
        .collect();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("config/grafana-dashboard.json")).unwrap(),
    )
    .unwrap();
    assert!(dash["title"].is_string() && dash["uid"].is_string());
    assert!(dash["schemaVersion"].as_u64().unwrap() >= 30);
    let panels = dash["panels"].as_array().unwrap();
    assert!(panels.len() >= 10);
    let mut ids = std::collections::BTreeSet::new();
    let mut problems = Vec::new();
    let mut queries: Vec<(String, String)> = Vec::new();
    for p in panels {
        let title = p["title"].as_str().unwrap_or("?").to_owned();
        assert!(
            ids.insert(p["id"].as_u64().unwrap()),
            "panel id twice: {title}"
        );
        assert!(
            ["timeseries", "stat"].contains(&p["type"].as_str().unwrap()),
            "{title}"
        );
        let g = &p["gridPos"];
        for k in ["h", "w", "x", "y"] {
            assert!(g[k].is_u64(), "{title}: gridPos.{k}");
        }
        assert!(
            g["x"].as_u64().unwrap() + g["w"].as_u64().unwrap() <= 24,
            "{title}"
        );
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title}: no query");
        for t in targets {
            assert!(t["refId"].is_string(), "{title}");
            queries.push((title.clone(), t["expr"].as_str().unwrap().to_owned()));
        }
    }
    for v in dash["templating"]["list"].as_array().unwrap() {
        let q = v["query"]["query"].as_str().unwrap();
        // label_values(METRIC, LABEL): the metric only.
        let metric = q
            .strip_prefix("label_values(")
            .and_then(|r| r.split(',').next())
            .unwrap();
        queries.push(("templating".into(), metric.to_owned()));
    }
    let alerts = std::fs::read_to_string(root.join("config/alerts.yml")).unwrap();
    for (n, line) in alerts.lines().enumerate() {
        if let Some(expr) = line.trim().strip_prefix("expr: ") {
            queries.push((format!("config/alerts.yml:{}", n + 1), expr.to_owned()));
        }
    }
    assert!(queries.len() >= 30, "{queries:?}");
    for (title, expr) in &queries {
        let names = promql_metrics(expr);
        assert!(!names.is_empty(), "{title}: no metric in {expr}");
        for name in names {
            if !exported.contains(&name) {
                problems.push(format!("{title}: {name} (in {expr})"));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "queries name metrics the node does not export:\n{}\nexported: {exported:?}",
        problems.join("\n")
    );
}

/// `promtool check rules` and the rules' unit tests (config/alerts.test.yml).
#[test]
fn alert_rules_pass_promtool() {
    let Some(promtool) = need(&["promtool"], "EDGE_SKIP_PROMTOOL") else {
        return;
    };
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config");
    for args in [
        ["check", "rules", "alerts.yml"],
        ["test", "rules", "alerts.test.yml"],
    ] {
        let out = Command::new(promtool)
            .args(args)
            .current_dir(&config)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn log_format_json_writes_one_object_per_line() {
    let site = Site::new();
    let log = site.dir.path().join("json.log");
    let mut child = edge()
        .arg("serve")
        .arg("--store")
        .arg(site.store())
        .args(["--listen", "127.0.0.1:0", "--admin-listen", ""])
        .args(["--log-format", "json", "--cache-dir"])
        .arg(site.dir.path().join("cache"))
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.trim().is_empty(), "the node logged nothing");
    for line in text.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v["level"].is_string() && v["fields"].is_object(), "{line}");
    }
}
