//! Pushed pointer changes over NATS, with real processes: Debian's `nats-server` on
//! 127.0.0.1 and `edge serve` nodes polling only every 60 s. A publish with `--notify` is
//! served within a second; with NATS gone the nodes say so and poll at the fallback
//! interval, and pushes resume once it is back, without a restart; forged and malformed
//! messages cause no adoption and no error, and are counted; a flood for one site is
//! coalesced; an admin purge tells the other nodes.
//!
//! Every node here polls every 60 s, so a change seen within a few seconds was pushed: each
//! test fails if the feature is removed.

mod support;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::{Nats, Node, Workspace, free_port, nats_installed, raw_exchange};

/// What the tests allow a pushed change (the target is under a second).
const PUSH_LIMIT: Duration = Duration::from_secs(5);

fn get(addr: std::net::SocketAddr, path: &str) -> support::RawReply {
    raw_exchange(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )
}

fn admin(node: &Node) -> std::net::SocketAddr {
    node.admin.expect("the node prints its admin address")
}

fn status(node: &Node) -> serde_json::Value {
    let r = get(admin(node), "/status");
    assert_eq!(r.status, 200);
    serde_json::from_slice(&r.body).expect("/status is JSON")
}

fn notify(node: &Node) -> serde_json::Value {
    status(node)["notify"].clone()
}

fn count(node: &Node, group: &str, key: &str) -> u64 {
    notify(node)[group][key]
        .as_u64()
        .unwrap_or_else(|| panic!("no notify.{group}.{key} in /status"))
}

/// A sample of `/metrics` by its exact name and labels (`name{a="b"}`); `None` if absent.
fn metric(node: &Node, series: &str) -> Option<f64> {
    let r = get(admin(node), "/metrics");
    String::from_utf8_lossy(&r.body).lines().find_map(|l| {
        let (k, v) = l.rsplit_once(' ')?;
        (k == series).then(|| v.parse().expect("a number"))
    })
}

fn body(node: &Node) -> String {
    String::from_utf8_lossy(&get(node.addr, "/").body).into_owned()
}

/// Waits up to `limit` for `check`; panics naming `what`.
fn wait_for(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls `/` until it is `want`; how long after `since` that was (`None`: not within
/// `limit`).
fn served_after(node: &Node, want: &str, since: Instant, limit: Duration) -> Option<Duration> {
    while since.elapsed() < limit {
        if body(node) == want {
            return Some(since.elapsed());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    None
}

fn edge(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_edge"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running edge")
}

/// `edge publish DIR --site main --notify URL` of a folder whose index.html is `content`;
/// returns when the process exited, and its output.
fn publish(ws: &Workspace, dir: &Path, content: &str, url: &str) -> (Instant, Output) {
    std::fs::write(dir.join("index.html"), content).unwrap();
    let store = ws.store();
    let out = edge(&[
        "publish".as_ref(),
        dir.as_os_str(),
        "--site".as_ref(),
        "main".as_ref(),
        "--store".as_ref(),
        store.as_os_str(),
        "--notify".as_ref(),
        url.as_ref(),
    ]);
    let exited = Instant::now();
    assert!(
        out.status.success(),
        "publish failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (exited, out)
}

/// A workspace with site `main` published ("v0"), and a config that polls every 60 s with
/// notifications from `url`.
fn setup(url: &str, fallback: &str) -> (Workspace, std::path::PathBuf, std::path::PathBuf) {
    let ws = Workspace::new();
    let dir = ws.site_dir("main");
    std::fs::write(dir.join("index.html"), "v0").unwrap();
    ws.publish(&dir, "main");
    let cfg = ws.config(
        "edge.toml",
        &format!(
            "[pointers]\nrefresh_interval = \"60s\"\n[notify]\nnats = \"{url}\"\nfallback_refresh_interval = \"{fallback}\"\n"
        ),
    );
    (ws, dir, cfg)
}

fn start(ws: &Workspace, cfg: &Path, name: &str) -> Node {
    let mut serve = ws
        .serve()
        .default_site("main")
        .config(cfg.to_owned())
        .log_to(ws.root().join(format!("{name}.log")));
    serve.cache_dir = Some(ws.root().join(format!("cache-{name}")));
    let node = serve.start();
    assert_eq!(body(&node), "v0", "the site is cached");
    node
}

fn wait_connected(node: &Node, up: bool, limit: Duration) {
    wait_for(limit, &format!("notify.connected = {up}"), || {
        notify(node)["connected"] == up
    });
}

/// (a) With `refresh_interval = 60s`, a publish with `--notify` is served at once.
#[test]
fn a_notified_publish_is_served_within_a_second() {
    if !nats_installed() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let nats = Nats::start(free_port(), &tmp.path().join("nats.log"));
    // The fallback is as long as the interval: nothing but a push is quick here.
    let (ws, dir, cfg) = setup(&nats.url(), "60s");
    let node = start(&ws, &cfg, "a");
    wait_connected(&node, true, Duration::from_secs(10));
    assert_eq!(metric(&node, "edge_notify_connected"), Some(1.0));
    assert_eq!(
        metric(&node, "edge_notify_poll_interval_seconds"),
        Some(60.0)
    );
    let mut took = Vec::new();
    for i in 1..=3 {
        let want = format!("v{i}");
        let (exited, out) = publish(&ws, &dir, &want, &nats.url());
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains("notified nats://127.0.0.1") && stdout.contains("edge.sites.main"),
            "{stdout}"
        );
        let t = served_after(&node, &want, exited, PUSH_LIMIT).unwrap_or_else(|| {
            panic!(
                "publish {i} not served within {PUSH_LIMIT:?}; log:\n{}",
                node.log_text()
            )
        });
        took.push(t);
    }
    eprintln!("publish exit -> served (refresh_interval 60s, pushed): {took:?}");
    assert!(count(&node, "refreshes", "changed") >= 3);
    assert_eq!(count(&node, "messages", "invalid"), 0);
    assert_eq!(
        metric(&node, "edge_notify_messages_total{outcome=\"accepted\"}").map(|v| v >= 3.0),
        Some(true)
    );
}

/// (b) NATS stopped: the node says so (log, metric, `/status`) and a publish still reaches
/// it within the fallback interval; NATS back on the same port: pushes resume without a
/// restart.
#[test]
fn without_nats_the_node_polls_at_the_fallback_and_pushes_resume() {
    if !nats_installed() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut nats = Nats::start(free_port(), &tmp.path().join("nats.log"));
    let (ws, dir, cfg) = setup(&nats.url(), "1s");
    let node = start(&ws, &cfg, "b");
    wait_connected(&node, true, Duration::from_secs(10));
    assert_eq!(notify(&node)["poll_interval_s"], 60.0);

    nats.kill();
    wait_connected(&node, false, Duration::from_secs(10));
    let n = notify(&node);
    assert_eq!(n["poll_interval_s"], 1.0, "{n}");
    assert!(n["disconnects"].as_u64() >= Some(1), "{n}");
    assert_eq!(metric(&node, "edge_notify_connected"), Some(0.0));
    assert_eq!(
        metric(&node, "edge_notify_poll_interval_seconds"),
        Some(1.0)
    );
    wait_for(Duration::from_secs(5), "the log says NATS is lost", || {
        node.log_lines_with(&["NATS connection lost", "polling at the fallback"]) == 1
    });
    // The publisher cannot notify: a warning, and the publish stands.
    let (exited, out) = publish(&ws, &dir, "v1", &nats.url());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("warning: the pointer moved, but notifying"),
        "{stderr}"
    );
    let t = served_after(&node, "v1", exited, Duration::from_secs(5))
        .expect("served within the fallback interval (1 s) plus slack");
    eprintln!("NATS down: publish exit -> served by polling: {t:?}");

    nats.restart();
    wait_connected(&node, true, Duration::from_secs(15));
    assert_eq!(notify(&node)["poll_interval_s"], 60.0);
    assert_eq!(
        node.log_lines_with(&["NATS connected"]),
        2,
        "{}",
        node.log_text()
    );
    let accepted = count(&node, "messages", "accepted");
    let (exited, _) = publish(&ws, &dir, "v2", &nats.url());
    let t = served_after(&node, "v2", exited, PUSH_LIMIT)
        .unwrap_or_else(|| panic!("not pushed after NATS came back; log:\n{}", node.log_text()));
    eprintln!("NATS back: publish exit -> served (pushed): {t:?}");
    assert!(
        count(&node, "messages", "accepted") > accepted,
        "pushed, not polled"
    );
}

/// (c) A forged hint for a site whose pointer did not move causes a refresh that confirms
/// it: no adoption, no error. Malformed ones are counted; a flood for one site is coalesced.
#[test]
fn forged_and_malformed_messages_change_nothing() {
    if !nats_installed() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let nats = Nats::start(free_port(), &tmp.path().join("nats.log"));
    let (ws, _dir, cfg) = setup(&nats.url(), "60s");
    let node = start(&ws, &cfg, "c");
    wait_connected(&node, true, Duration::from_secs(10));
    let deploy_before = status(&node)["sites"][0]["deploy"].clone();
    let failures = || metric(&node, "edge_pointer_refresh_failures_total");
    let failures_before = failures();

    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = rt
        .block_on(async_nats::connect(nats.url()))
        .expect("connecting to nats-server");
    let send = |subject: &str, payload: &[u8]| {
        rt.block_on(async {
            client
                .publish(subject.to_owned(), payload.to_vec().into())
                .await
                .unwrap();
            client.flush().await.unwrap();
        })
    };
    // Forged: a deploy the store never had, a sequence number far ahead.
    send(
        "edge.sites.main",
        br#"{"site":"main","deploy":"forged","seq":999999,"event":"publish"}"#,
    );
    wait_for(Duration::from_secs(5), "the forged hint's refresh", || {
        count(&node, "refreshes", "unchanged") == 1
    });
    assert_eq!(count(&node, "refreshes", "changed"), 0);
    assert_eq!(count(&node, "refreshes", "failed"), 0);
    assert_eq!(status(&node)["sites"][0]["deploy"], deploy_before);
    assert_eq!(failures(), failures_before);
    assert_eq!(metric(&node, "edge_pointer_rejected_total"), Some(0.0));
    assert_eq!(body(&node), "v0");

    // Malformed: a bad site in the subject, not JSON, another site, too large; and a site
    // this node does not serve (nothing to refresh).
    let big = format!(r#"{{"site":"main","pad":"{}"}}"#, "x".repeat(4096));
    send("edge.sites.Main", br#"{"site":"Main"}"#);
    send("edge.sites.main", b"\xff not json");
    send("edge.sites.main", br#"{"site":"other"}"#);
    send("edge.sites.main", big.as_bytes());
    send("edge.sites.other", br#"{"site":"other"}"#);
    wait_for(Duration::from_secs(5), "malformed messages counted", || {
        count(&node, "messages", "invalid") == 4 && count(&node, "messages", "ignored") == 1
    });
    assert_eq!(
        metric(&node, "edge_notify_messages_total{outcome=\"invalid\"}"),
        Some(4.0)
    );
    assert!(node.log_lines_with(&["ignoring a malformed pointer notification"]) >= 1);

    // A flood for one site: at most one refresh in flight plus one queued.
    let hint = br#"{"site":"main","deploy":null,"seq":null}"#;
    rt.block_on(async {
        for _ in 0..500 {
            client
                .publish("edge.sites.main", hint.to_vec().into())
                .await
                .unwrap();
        }
        client.flush().await.unwrap();
    });
    let taken = |n: &serde_json::Value| -> u64 {
        ["accepted", "queued", "coalesced", "dropped"]
            .iter()
            .map(|k| n["messages"][k].as_u64().unwrap())
            .sum()
    };
    wait_for(Duration::from_secs(10), "the flood taken", || {
        let n = notify(&node);
        taken(&n) == 501 && n["pending_sites"] == 0
    });
    let n = notify(&node);
    let refreshes: u64 = ["changed", "unchanged", "failed"]
        .iter()
        .map(|k| n["refreshes"][k].as_u64().unwrap())
        .sum();
    let started =
        n["messages"]["accepted"].as_u64().unwrap() + n["messages"]["queued"].as_u64().unwrap();
    eprintln!("flood of 500: {n}");
    assert_eq!(
        refreshes, started,
        "one refresh per accepted or queued hint"
    );
    assert!(refreshes < 250, "500 hints made {refreshes} refreshes");
    assert!(n["messages"]["coalesced"].as_u64() > Some(250), "{n}");
    assert_eq!(failures(), failures_before);
    assert_eq!(count(&node, "refreshes", "changed"), 0);
    assert_eq!(body(&node), "v0", "still serving");
}

/// An admin purge on one node tells the others, which refresh the site.
#[test]
fn an_admin_purge_is_announced_to_the_other_nodes() {
    if !nats_installed() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let nats = Nats::start(free_port(), &tmp.path().join("nats.log"));
    let (ws, _dir, cfg) = setup(&nats.url(), "60s");
    let a = start(&ws, &cfg, "purger");
    let b = start(&ws, &cfg, "other");
    wait_connected(&a, true, Duration::from_secs(10));
    wait_connected(&b, true, Duration::from_secs(10));
    let r = raw_exchange(
        admin(&a),
        b"POST /sites/main/purge HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["notified"], true, "{v}");
    wait_for(Duration::from_secs(5), "the other node refreshed", || {
        count(&b, "refreshes", "unchanged") == 1
    });
    assert_eq!(count(&a, "announced", "sent"), 1);
    assert_eq!(body(&b), "v0");
}

/// Without `[notify]` nothing changes: no subscription, no notify metrics, `/status` says
/// null, polling at `pointers.refresh_interval`.
#[test]
fn without_notify_nothing_changes() {
    let ws = Workspace::new();
    let dir = ws.site_dir("main");
    std::fs::write(dir.join("index.html"), "v0").unwrap();
    ws.publish(&dir, "main");
    let node = ws.serve().default_site("main").start();
    assert_eq!(body(&node), "v0");
    assert!(status(&node)["notify"].is_null());
    let metrics = String::from_utf8_lossy(&get(admin(&node), "/metrics").body).into_owned();
    assert!(!metrics.contains("edge_notify_"), "{metrics}");
    // `--notify` is checked before anything is written.
    let store = ws.store();
    let out = edge(&[
        "publish".as_ref(),
        dir.as_os_str(),
        "--site".as_ref(),
        "main".as_ref(),
        "--store".as_ref(),
        store.as_os_str(),
        "--notify".as_ref(),
        "127.0.0.1:4222".as_ref(),
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--notify") && stderr.contains("nats://"),
        "{stderr}"
    );
}
