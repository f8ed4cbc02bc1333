//! Parent tiers end to end: real `edge serve` processes on 127.0.0.1, an in-process chaos
//! origin ([`loadtest::chaos::ChaosOrigin`]) in front of the store that counts every request,
//! and for the lying parent a second chaos origin posing as a parent edge, flipping bytes.
//!
//! - a parent and two children: a cold object asked through both costs the origin one fetch,
//!   and both children serve the same bytes;
//! - the parent killed: children answer from the origin, its breaker opens; started again,
//!   objects go through it again;
//! - a parent that sends wrong bytes: no wrong byte is served, the origin is asked, the
//!   parent is counted;
//! - `/.edge/objects/<hash>`: off by default (404), and with a token 401 without it, 400 for
//!   a malformed hash, 404 for a missing object;
//! - `check-config` names the key: parent URLs, the token, `serve_children` on a listener
//!   other machines reach without a token.
//!
//! Every test prints `PARENTS` lines with what it measured (run with `--nocapture`).

mod support;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use loadtest::chaos::{Action, ChaosOrigin, Rule};
use origin_client::store::LocalStore;
use origin_client::{Access, Hash};
use support::*;

const TOKEN: &str = "parent-token-0123456789";

/// The store key of `data` as an object: `objects/<hh>/<hash>`.
fn object_key(data: &[u8]) -> String {
    let hex = Hash::of(data).to_hex();
    format!("objects/{}/{hex}", &hex[..2])
}

/// A site's files: small ones, one large enough to stream through the disk tier (more than
/// `cache.memory_max_object`), and 40 numbered ones for requests that must be cold.
fn files() -> Vec<(String, Vec<u8>)> {
    let mut v = vec![
        ("index.html".to_owned(), b"<h1>home</h1>".to_vec()),
        (
            "small.bin".to_owned(),
            (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect(),
        ),
        (
            "big.bin".to_owned(),
            (0..(6u32 << 20)).map(|i| (i % 253) as u8 ^ 0x5a).collect(),
        ),
    ];
    for i in 0..40 {
        v.push((
            format!("f/{i:02}.txt"),
            format!("file {i} ").repeat(50).into_bytes(),
        ));
    }
    v
}

fn file<'a>(files: &'a [(String, Vec<u8>)], name: &str) -> &'a [u8] {
    &files.iter().find(|(n, _)| n == name).expect("a file").1
}

/// A published site, a chaos origin in front of its store, and the files.
struct Rig {
    ws: Workspace,
    origin: ChaosOrigin,
    files: Vec<(String, Vec<u8>)>,
}

impl Rig {
    async fn new() -> Rig {
        let ws = Workspace::new();
        let files = files();
        let dir = ws.site_dir("s");
        write_files(&dir, &files);
        ws.publish(&dir, "s");
        let origin = chaos(&ws).await;
        Rig { ws, origin, files }
    }

    /// `edge serve` named `name` (its own cache folder and log), on the origin, serving
    /// site `s` by default, with `toml` as its config file.
    fn node(&self, name: &str, toml: &str) -> Serve {
        let mut s = self
            .ws
            .serve()
            .store_location(&self.origin.url())
            .default_site("s")
            .config(self.ws.config(&format!("{name}.toml"), toml))
            .log_to(self.ws.root().join(format!("{name}.log")));
        s.cache_dir = Some(self.ws.root().join(format!("cache-{name}")));
        s
    }

    fn file(&self, name: &str) -> &[u8] {
        file(&self.files, name)
    }

    /// Origin requests for `name`'s object since the start.
    fn fetched(&self, name: &str) -> u64 {
        self.origin.counts().path(&object_key(self.file(name)))
    }
}

/// A chaos origin over the workspace's store.
async fn chaos(ws: &Workspace) -> ChaosOrigin {
    let store = LocalStore::open(&ws.store(), Access::Read).expect("opening the store");
    let (_, origin) = ChaosOrigin::start(Arc::new(store), "127.0.0.1:0".parse().unwrap())
        .await
        .expect("starting a chaos origin");
    origin
}

/// The config of a parent (serving children with the token).
fn parent_toml() -> String {
    format!("[tiers]\nserve_children = true\ntoken = \"{TOKEN}\"\n")
}

/// The config of a child: the token for its parents, and `extra`.
fn child_toml(extra: &str) -> String {
    format!("[tiers]\ntoken = \"{TOKEN}\"\n{extra}")
}

/// The node's `/metrics` text.
async fn metrics(node: &Node) -> String {
    let admin = node.admin.expect("the node has an admin listener");
    H1::new(admin).get("/metrics").await.text()
}

/// Checks an exposition the way the admin tests do: every family one group with HELP and
/// TYPE first (`exposition_problems`), and `promtool check metrics` when it is installed.
fn check_exposition(text: &str, what: &str) {
    use edge::metrics::{Format, exposition_problems};
    use std::io::Write;
    let problems = exposition_problems(text, Format::Prometheus);
    assert!(problems.is_empty(), "{what}: {problems:?}");
    let child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let Ok(mut child) = child else {
        eprintln!("promtool not installed: {what} not checked by it");
        return;
    };
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(text.as_bytes())
        .expect("writing to promtool");
    let out = child.wait_with_output().expect("running promtool");
    assert!(
        out.status.success(),
        "{what}: promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The value of the sample `sample` (name and labels exactly as written), if present.
fn sample(text: &str, sample: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let (name, v) = l.rsplit_once(' ')?;
        (name == sample).then(|| v.parse().expect("a number"))
    })
}

fn parent_sample(text: &str, family: &str, parent: &str, kind: Option<&str>) -> f64 {
    let labels = match kind {
        Some(k) => format!("{family}{{parent=\"{parent}\",kind=\"{k}\"}}"),
        None => format!("{family}{{parent=\"{parent}\"}}"),
    };
    sample(text, &labels).unwrap_or_else(|| panic!("no {labels} in:\n{text}"))
}

/// GETs `path` from `node` and asserts a complete 200 with `want`.
async fn expect_file(c: &mut H1, path: &str, want: &[u8]) {
    let r = c.get(path).await;
    assert_eq!(r.status, 200, "{path}: {}", r.text());
    assert!(
        r.body == want,
        "{path}: wrong bytes ({} of {})",
        r.body.len(),
        want.len()
    );
}

/// A cold object asked through two children costs the origin one fetch of it: small (whole
/// reads), large (streamed through both tiers' disks) and the tree nodes; sequential and
/// concurrent. Both children serve the file's bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_children_one_origin_fetch_per_object() {
    let rig = Rig::new().await;
    let parent = rig.node("parent", &parent_toml()).start();
    let purl = format!("http://{}", parent.addr);
    let child = |name: &str| {
        rig.node(name, &child_toml(""))
            .arg("--parent")
            .arg(&purl)
            .start()
    };
    let (a, b) = (child("child-a"), child("child-b"));
    let (mut ca, mut cb) = (H1::new(a.addr), H1::new(b.addr));

    // Sequential: the second child finds it in the parent.
    for name in ["index.html", "small.bin"] {
        expect_file(&mut ca, &format!("/{name}"), rig.file(name)).await;
        expect_file(&mut cb, &format!("/{name}"), rig.file(name)).await;
    }
    // Concurrent, with the origin slow for the large object: one parent fill for both.
    rig.origin
        .set_rules(vec![
            Rule::new(Action::Latency {
                ms: 400,
                jitter_ms: 0,
            })
            .path(&object_key(rig.file("big.bin"))),
        ])
        .unwrap();
    let big = rig.file("big.bin");
    let (ra, rb) = tokio::join!(ca.get("/big.bin"), cb.get("/big.bin"));
    rig.origin.heal();
    for r in [&ra, &rb] {
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(r.body == big, "big.bin: wrong bytes");
    }
    for (i, name) in ["f/00.txt", "f/01.txt"].iter().enumerate() {
        let path = format!("/{name}");
        let (ra, rb) = tokio::join!(ca.get(&path), cb.get(&path));
        assert!(
            ra.body == rig.file(name) && rb.body == rig.file(name),
            "{i}"
        );
    }

    let counts = rig.origin.counts();
    let objects: u64 = counts
        .paths
        .iter()
        .filter(|(k, _)| k.starts_with("objects/"))
        .map(|(_, n)| n)
        .sum();
    let distinct = counts
        .paths
        .keys()
        .filter(|k| k.starts_with("objects/"))
        .count() as u64;
    for name in ["index.html", "small.bin", "big.bin", "f/00.txt", "f/01.txt"] {
        assert_eq!(rig.fetched(name), 1, "{name}: origin fetches");
    }
    assert_eq!(
        objects, distinct,
        "every object (tree nodes too) fetched once: {counts:?}"
    );

    let (ma, mb, mp) = (metrics(&a).await, metrics(&b).await, metrics(&parent).await);
    let mut asked = 0.0;
    for m in [&ma, &mb] {
        asked += parent_sample(m, "edge_parent_fetches_total", &purl, None);
        for kind in ["wrong_bytes", "error", "breaker_open", "not_found"] {
            assert_eq!(
                parent_sample(m, "edge_parent_errors_total", &purl, Some(kind)),
                0.0,
                "{kind}"
            );
        }
        assert_eq!(
            parent_sample(m, "edge_parent_breaker_state", &purl, None),
            0.0
        );
    }
    check_exposition(&ma, "a child's /metrics");
    check_exposition(&mp, "the parent's /metrics");
    let served = sample(&mp, "edge_child_requests_total{result=\"ok\"}").unwrap();
    assert_eq!(
        served, asked,
        "every object a child asked for, the parent served"
    );
    eprintln!(
        "PARENTS two_children: origin object fetches {objects} for {distinct} objects; children asked the parent {asked} times, it served {served}"
    );
}

/// The parent killed: children keep answering 200 with the right bytes from the origin, and
/// the parent's breaker opens; the parent started again on its port: fetches go through it
/// again (its breaker closes after a probe).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_parent_opens_its_breaker_and_a_restarted_one_is_used_again() {
    let rig = Rig::new().await;
    let port = free_port();
    let paddr = format!("127.0.0.1:{port}");
    let purl = format!("http://{paddr}");
    let parent_node = || rig.node("parent", &parent_toml()).listen(&paddr);
    let parent = parent_node().start();
    let knobs = "[origin]\nbreaker_failures = 2\nbreaker_open = \"3s\"\nbreaker_probes = 1\nretry_attempts = 1\n";
    let child = rig
        .node("child", &child_toml(knobs))
        .arg("--parent")
        .arg(&purl)
        .start();
    let mut c = H1::new(child.addr);
    expect_file(&mut c, "/f/00.txt", rig.file("f/00.txt")).await;
    let m = metrics(&child).await;
    assert!(parent_sample(&m, "edge_parent_fetches_total", &purl, None) >= 1.0);

    parent.kill();
    let t = Instant::now();
    for i in 1..=6 {
        let name = format!("f/{i:02}.txt");
        expect_file(&mut c, &format!("/{name}"), rig.file(&name)).await;
    }
    let during = t.elapsed();
    let m = metrics(&child).await;
    let state = parent_sample(&m, "edge_parent_breaker_state", &purl, None);
    let errors = parent_sample(&m, "edge_parent_errors_total", &purl, Some("error"));
    let skipped = parent_sample(&m, "edge_parent_errors_total", &purl, Some("breaker_open"));
    assert_eq!(state, 2.0, "the parent's breaker is open:\n{m}");
    assert_eq!(errors, 2.0, "two failures open it");
    assert_eq!(skipped, 4.0, "then it is not asked");
    for i in 1..=6 {
        assert_eq!(
            rig.fetched(&format!("f/{i:02}.txt")),
            1,
            "{i}: from the origin"
        );
    }
    eprintln!(
        "PARENTS dead_parent: 6 cold files served 200 in {:.0} ms with the parent down; parent errors {errors}, skipped while open {skipped}",
        during.as_secs_f64() * 1000.0
    );

    let parent = parent_node().start();
    let t = Instant::now();
    // A cold file every 250 ms until the restarted parent has served one.
    let mut back = None;
    for i in 7..40 {
        let name = format!("f/{i:02}.txt");
        expect_file(&mut c, &format!("/{name}"), rig.file(&name)).await;
        let served = sample(
            &metrics(&parent).await,
            "edge_child_requests_total{result=\"ok\"}",
        );
        if served.is_some_and(|n| n >= 1.0) {
            back = Some(name);
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let back = back.expect("objects go through the restarted parent");
    let m = metrics(&child).await;
    assert_eq!(
        parent_sample(&m, "edge_parent_breaker_state", &purl, None),
        0.0
    );
    let fetched_back = rig.fetched(&back);
    assert_eq!(
        fetched_back, 1,
        "{back}: the parent fetched it from the origin once"
    );
    eprintln!(
        "PARENTS dead_parent: restarted parent used again after {:.1} s ({back})",
        t.elapsed().as_secs_f64()
    );
}

/// A parent that flips a byte of every object it sends: every file is served whole and
/// right (small, large, and the tree nodes behind them), read again from the origin within
/// the same request, and each wrong answer is counted against the parent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parent_that_sends_wrong_bytes_costs_a_refetch_never_a_wrong_byte() {
    let rig = Rig::new().await;
    let liar = chaos(&rig.ws).await;
    liar.set_rules(vec![Rule::new(Action::Flip { offset: None })])
        .unwrap();
    let lurl = liar.url().trim_end_matches('/').to_owned();
    let child = rig
        .node("child", &child_toml(""))
        .arg("--parent")
        .arg(&lurl)
        .start();
    let mut c = H1::new(child.addr);
    let names = ["index.html", "small.bin", "big.bin", "f/03.txt"];
    for name in names {
        expect_file(&mut c, &format!("/{name}"), rig.file(name)).await;
        // Again, from the child's own tiers.
        expect_file(&mut c, &format!("/{name}"), rig.file(name)).await;
    }
    let m = metrics(&child).await;
    let wrong = parent_sample(&m, "edge_parent_errors_total", &lurl, Some("wrong_bytes"));
    let asked = parent_sample(&m, "edge_parent_fetches_total", &lurl, None);
    let liar_counts = liar.counts();
    let liar_blobs = names
        .iter()
        .filter(|n| {
            let key = object_key(rig.file(n));
            liar_counts.path(&format!(".edge/{key}")) == 1
        })
        .count();
    assert_eq!(
        liar_blobs,
        names.len(),
        "each file was asked of the parent: {liar_counts:?}"
    );
    assert_eq!(
        wrong, asked,
        "every answer of the parent was wrong, and counted"
    );
    assert!(
        wrong >= names.len() as f64 + 1.0,
        "the files and the root node: {wrong}"
    );
    for name in names {
        assert_eq!(rig.fetched(name), 1, "{name}: read again from the origin");
    }
    assert_eq!(
        child.log_lines_with(&["parent sent wrong bytes"]),
        5.min(wrong as usize),
        "logged at a bounded rate"
    );
    eprintln!(
        "PARENTS lying_parent: {asked} objects asked of a parent flipping bytes, {wrong} counted wrong_bytes, 0 wrong bytes served"
    );
}

/// Two parents, one of which hangs: an object whose home is the hanging one costs one
/// `first_byte_timeout` and is read from its next parent (not the origin) until the hanging
/// parent's breaker opens; then it is skipped at once. Every file is served 200, right.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_parent_costs_a_timeout_until_its_breaker_opens_and_the_next_parent_serves() {
    let rig = Rig::new().await;
    let good = rig.node("parent", &parent_toml()).start();
    let gurl = format!("http://{}", good.addr);
    let hang = chaos(&rig.ws).await;
    hang.set_rules(vec![Rule::new(Action::Hang { max_ms: None })])
        .unwrap();
    let hurl = hang.url().trim_end_matches('/').to_owned();
    let knobs = "[origin]\nfirst_byte_timeout = \"500ms\"\nbreaker_failures = 2\nbreaker_open = \"60s\"\nretry_attempts = 1\n";
    let child = rig
        .node("child", &child_toml(knobs))
        .arg("--parent")
        .arg(&format!("{gurl},{hurl}"))
        .start();
    let mut c = H1::new(child.addr);
    let mut slow = Vec::new();
    let mut fast = Vec::new();
    for i in 0..16 {
        let name = format!("f/{i:02}.txt");
        let t = Instant::now();
        expect_file(&mut c, &format!("/{name}"), rig.file(&name)).await;
        let took = t.elapsed();
        if took >= Duration::from_millis(450) {
            slow.push(took);
        } else {
            fast.push(took);
        }
    }
    let m = metrics(&child).await;
    let hung = parent_sample(&m, "edge_parent_errors_total", &hurl, Some("error"));
    let skipped = parent_sample(&m, "edge_parent_errors_total", &hurl, Some("breaker_open"));
    assert_eq!(hung, 2.0, "two timeouts open its breaker:\n{m}");
    assert_eq!(
        parent_sample(&m, "edge_parent_breaker_state", &hurl, None),
        2.0
    );
    assert!(skipped >= 1.0, "then it is skipped:\n{m}");
    // The root node or a file: whatever first had the hanging parent as its home paid the
    // timeouts; nothing after the breaker opened did.
    assert!(slow.len() <= 2, "{slow:?}");
    for i in 0..16 {
        assert_eq!(rig.fetched(&format!("f/{i:02}.txt")), 1, "{i}");
    }
    let served = sample(
        &metrics(&good).await,
        "edge_child_requests_total{result=\"ok\"}",
    )
    .unwrap();
    let asked_good = parent_sample(&m, "edge_parent_fetches_total", &gurl, None);
    assert_eq!(
        served, asked_good,
        "every object came through the good parent"
    );
    assert_eq!(
        parent_sample(&m, "edge_parent_errors_total", &gurl, Some("error")),
        0.0
    );
    let worst_fast = fast.iter().max().copied().unwrap_or_default();
    eprintln!(
        "PARENTS hanging_parent: {} requests paid a 500 ms timeout ({:?}), {} did not (slowest {:.0} ms); hanging parent: {hung} errors, {skipped} skipped; the good parent served {served} objects",
        slow.len(),
        slow,
        fast.len(),
        worst_fast.as_secs_f64() * 1000.0
    );
}

/// `GET /.edge/objects/<hash>`: not served unless `serve_children` (the path is a site path,
/// 404 here); with a token, 401 without it or with another, 200 with the bytes (both path
/// forms, HEAD too), 400 for a malformed hash, 404 for an object the origin lacks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_object_endpoint_is_off_by_default_and_checks_its_token() {
    let rig = Rig::new().await;
    let data = rig.file("small.bin").to_vec();
    let hex = Hash::of(&data).to_hex();
    let flat = format!("/.edge/objects/{hex}");
    let nested = format!("/.edge/objects/{}/{hex}", &hex[..2]);

    let plain = rig.node("plain", "").start();
    let r = H1::new(plain.addr).get(&flat).await;
    assert_eq!(r.status, 404, "off by default: {}", r.text());
    drop(plain);

    let parent = rig.node("parent", &parent_toml()).start();
    let mut c = H1::new(parent.addr);
    let bearer = format!("Bearer {TOKEN}");
    let auth = [("authorization", bearer.as_str())];
    let r = c.get(&flat).await;
    assert_eq!(r.status, 401, "no token: {}", r.text());
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    let r = c
        .get_with(
            &flat,
            &[("authorization", "Bearer parent-token-0123456788")],
        )
        .await;
    assert_eq!(r.status, 401, "another token");
    for path in [&flat, &nested] {
        let r = c.get_with(path, &auth).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert!(r.body == data, "{path}: the object's bytes");
        assert_eq!(
            r.header("content-length"),
            Some(data.len().to_string().as_str())
        );
        assert_eq!(r.header("etag"), Some(etag_of(&data).as_str()));
    }
    let r = c.request("HEAD", &flat, &auth).await;
    assert_eq!((r.status, r.body.len()), (200, 0));
    for bad in [
        "/.edge/objects/xyz",
        "/.edge/objects/",
        &format!("/.edge/objects/00/{hex}0"),
    ] {
        let r = c.get_with(bad, &auth).await;
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
    }
    let missing = Hash::of(b"not in the store").to_hex();
    let r = c
        .get_with(&format!("/.edge/objects/{missing}"), &auth)
        .await;
    assert_eq!(r.status, 404, "{}", r.text());
    // Site paths are served as before.
    expect_file(&mut c, "/small.bin", &data).await;
    let m = metrics(&parent).await;
    for (result, want) in [
        ("ok", 3.0),
        ("unauthorized", 2.0),
        ("bad_request", 3.0),
        ("not_found", 1.0),
    ] {
        assert_eq!(
            sample(
                &m,
                &format!("edge_child_requests_total{{result=\"{result}\"}}")
            ),
            Some(want),
            "{result}"
        );
    }
    assert_eq!(
        rig.fetched("small.bin"),
        1,
        "filled once, then from the tiers"
    );
}

/// `edge check-config` names the key: a parent that is not an http(s) URL, a short token,
/// `serve_children` on a non-loopback listener without a token (`tiers.token` or
/// `EDGE_TIERS_TOKEN` allows it), and a short `EDGE_TIERS_TOKEN`.
#[test]
fn check_config_names_the_tiers_keys() {
    let ws = Workspace::new();
    let check = |toml: &str, env: Option<&str>| {
        let path: PathBuf = ws.config("tiers.toml", toml);
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_edge"));
        cmd.arg("check-config")
            .arg(&path)
            .env_remove("EDGE_TIERS_TOKEN");
        if let Some(v) = env {
            cmd.env("EDGE_TIERS_TOKEN", v);
        }
        let out = cmd.output().expect("running edge check-config");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, err) = check(
        "[tiers]\nparents = [\"http://127.0.0.1:8081\", \"https://p.example/x\"]\n",
        None,
    );
    assert!(ok, "{err}");
    let (ok, err) = check("[tiers]\n\nparents = [\"127.0.0.1:8081\"]\n", None);
    assert!(
        !ok && err.contains("line 3") && err.contains("`tiers.parents`"),
        "{err}"
    );
    let (ok, err) = check("[tiers]\nparents = [\"s3://bucket/x\"]\n", None);
    assert!(!ok && err.contains("`tiers.parents`"), "{err}");
    let (ok, err) = check("[tiers]\ntoken = \"short\"\n", None);
    assert!(
        !ok && err.contains("line 2") && err.contains("`tiers.token`"),
        "{err}"
    );

    let exposed = "[server]\nlisten = \"0.0.0.0:8080\"\n[tiers]\nserve_children = true\n";
    let (ok, err) = check(exposed, None);
    assert!(
        !ok && err.contains("`tiers.serve_children`") && err.contains("0.0.0.0:8080"),
        "{err}"
    );
    let (ok, err) = check(&format!("{exposed}token = \"{TOKEN}\"\n"), None);
    assert!(ok, "{err}");
    let (ok, err) = check(exposed, Some(TOKEN));
    assert!(ok, "{err}");
    let (ok, err) = check(exposed, Some("short"));
    assert!(!ok && err.contains("`EDGE_TIERS_TOKEN`"), "{err}");
    // Loopback needs no token.
    let (ok, err) = check("[tiers]\nserve_children = true\n", None);
    assert!(ok, "{err}");
}
