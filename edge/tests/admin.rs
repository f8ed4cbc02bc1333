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
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
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

/// Renders `/status.html` in headless Chromium, saves a screenshot under
/// `target/test-artifacts/`, and reads the key figures back from the rendered page.
#[test]
fn status_page_renders_in_chromium() {
    let chromium = ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find(|c| {
            Command::new("sh")
                .args(["-c", &format!("command -v {c}")])
                .output()
                .is_ok_and(|o| o.status.success())
        });
    let Some(chromium) = chromium else {
        if std::env::var("EDGE_SKIP_BROWSER_TESTS").is_ok() {
            eprintln!("EDGE_SKIP_BROWSER_TESTS set and no chromium: skipped");
            return;
        }
        panic!("chromium is not installed (.ci/run installs it; EDGE_SKIP_BROWSER_TESTS=1 skips)");
    };
    let site = Site::new();
    let node = site.start(None, None);
    for _ in 0..3 {
        assert_eq!(get(&node.addr, "/").status, 200);
    }
    let url = format!("http://{}/status.html", node.admin);
    let artifacts = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let shot = artifacts.join("status-page.png");
    let _ = std::fs::remove_file(&shot);
    let profile = tempfile::tempdir().unwrap();
    let common = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1000,700",
    ];
    let out = Command::new(chromium)
        .args(common)
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--screenshot={}", shot.display()))
        .arg(&url)
        .output()
        .unwrap();
    assert!(
        shot.exists(),
        "no screenshot: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let png = std::fs::read(&shot).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert!(
        png.len() > 5_000,
        "a blank page is tiny: {} bytes",
        png.len()
    );
    let dom = Command::new(chromium)
        .args(common)
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--dump-dom")
        .arg(&url)
        .output()
        .unwrap();
    let dom = String::from_utf8_lossy(&dom.stdout);
    assert!(dom.contains("<td>main</td>"), "{dom}");
    assert!(dom.contains("id=\"breaker-objects\">closed<"), "{dom}");
    assert!(dom.contains("id=\"ready\">true<"), "{dom}");
    let requests: u64 = dom
        .split("id=\"requests\">")
        .nth(1)
        .and_then(|r| r.split('<').next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(requests >= 3, "{dom}");
    eprintln!("status page screenshot: {}", shot.display());
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
