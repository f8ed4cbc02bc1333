//! The `edge` binary against a real S3-compatible server (s3s-fs on 127.0.0.1), as child
//! processes: publish, serve every file byte-identical, a second publish picked up within the
//! refresh interval, rollback, deploys, racing publishes, gc and fsck, and bad input.

#[path = "../../origin-client/tests/support/s3.rs"]
mod s3server;
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use s3server::S3Server;
use support::{H1, Node, Workspace, url_path};

const STORE: &str = "s3://edge/deploys";

fn edge(server: &S3Server) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_edge"));
    for (k, v) in server.env() {
        c.env(k, v);
    }
    c
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "edge failed: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

fn publish(server: &S3Server, dir: &Path, site: &str) -> Output {
    edge(server)
        .arg("publish")
        .arg(dir)
        .args(["--site", site, "--store", STORE])
        .output()
        .unwrap()
}

fn deploy_id(stdout: &str) -> String {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("deploy "))
        .unwrap_or_else(|| panic!("no deploy line in {stdout}"))
        .trim()
        .to_owned()
}

/// Every file under `dir`, by relative path.
fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    fn go(dir: &Path, prefix: &str, out: &mut Vec<(String, Vec<u8>)>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().into_string().unwrap();
            let rel = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            };
            if e.file_type().unwrap().is_dir() {
                go(&e.path(), &rel, out);
            } else {
                out.push((rel, std::fs::read(e.path()).unwrap()));
            }
        }
    }
    let mut out = Vec::new();
    go(dir, "", &mut out);
    out
}

fn copy_dir(from: &Path, to: &Path) {
    for (rel, data) in files(from) {
        let p = to.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    }
}

fn example_site() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/site")
}

fn serve(server: &S3Server, ws: &Workspace, config: Option<PathBuf>) -> Node {
    let mut serve = ws.serve().store_location(STORE).default_site("example");
    if let Some(c) = config {
        serve = serve.config(c);
    }
    let mut cmd = serve.command();
    for (k, v) in server.env() {
        cmd.env(k, v);
    }
    Node::start(cmd, &serve.log).unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_serve_republish_rollback_and_deploys_on_s3() {
    let server = S3Server::start(&["edge"]);
    let ws = Workspace::new();
    let site = ws.site_dir("example");
    copy_dir(&example_site(), &site);
    let first = deploy_id(&ok(publish(&server, &site, "example")));
    assert!(
        server
            .key_file("edge", "deploys/sites/example/current")
            .is_file(),
        "the layout lives under the prefix"
    );

    // Serve with a short refresh interval, the endpoint from [store.s3].
    let config = ws.config(
        "edge.toml",
        &format!(
            "[store.s3]\nendpoint = \"{}\"\nallow_http = true\nregion = \"us-east-1\"\n[pointers]\nrefresh_interval = \"200ms\"\n",
            server.endpoint()
        ),
    );
    let node = serve(&server, &ws, Some(config));
    let mut h1 = H1::new(node.addr);
    for (rel, data) in files(&site) {
        let path = url_path(&rel);
        let r = h1.get(&path).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert!(r.body == data, "{path}: body differs");
        assert_eq!(r.must("x-edge-deploy"), first, "{path}");
    }

    // A second publish is served within the refresh interval.
    std::fs::write(site.join("index.html"), b"<h1>second</h1>").unwrap();
    let second = deploy_id(&ok(publish(&server, &site, "example")));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = h1.get("/").await;
        if r.must("x-edge-deploy") == second {
            assert_eq!(r.body, b"<h1>second</h1>");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new deploy was not picked up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // deploys lists both, marking the current one; rollback moves back.
    let list = ok(edge(&server)
        .args(["deploys", "--site", "example", "--store", STORE])
        .output()
        .unwrap());
    assert!(
        list.contains(&first) && list.contains(&format!("*  {second}")),
        "{list}"
    );
    ok(edge(&server)
        .args([
            "rollback", "--site", "example", "--store", STORE, "--to", &first,
        ])
        .output()
        .unwrap());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = h1.get("/").await;
        if r.must("x-edge-deploy") == first {
            assert!(r.body == std::fs::read(example_site().join("index.html")).unwrap());
            break;
        }
        assert!(Instant::now() < deadline, "the rollback was not picked up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // hosts add works too.
    ok(edge(&server)
        .args([
            "hosts",
            "add",
            "www.example.test",
            "--site",
            "example",
            "--store",
            STORE,
        ])
        .output()
        .unwrap());
    assert!(
        server
            .key_file("edge", "deploys/hosts/www.example.test")
            .is_file()
    );
    node.kill();
}

#[test]
fn racing_publishes_on_s3_one_wins_one_conflicts_both_records_kept() {
    let server = S3Server::start(&["edge"]);
    let ws = Workspace::new();
    let base = ws.site_dir("base");
    copy_dir(&example_site(), &base);
    ok(publish(&server, &base, "race"));
    for round in 0..3 {
        let (a, b) = (
            ws.site_dir(&format!("a{round}")),
            ws.site_dir(&format!("b{round}")),
        );
        copy_dir(&base, &a);
        copy_dir(&base, &b);
        std::fs::write(a.join("index.html"), format!("a{round}")).unwrap();
        std::fs::write(b.join("index.html"), format!("b{round}")).unwrap();
        let spawn = |dir: &Path| {
            edge(&server)
                .arg("publish")
                .arg(dir)
                .args(["--site", "race", "--store", STORE])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        };
        let (pa, pb) = (spawn(&a), spawn(&b));
        let (oa, ob) = (
            pa.wait_with_output().unwrap(),
            pb.wait_with_output().unwrap(),
        );
        let outcomes = [&oa, &ob];
        let wins = outcomes.iter().filter(|o| o.status.success()).count();
        // Both may win when one finished before the other read the pointer; never none.
        assert!(wins >= 1, "{}{}", text(&oa.stderr), text(&ob.stderr));
        for o in outcomes.iter().filter(|o| !o.status.success()) {
            let err = text(&o.stderr);
            assert!(err.contains("conflict on site \"race\""), "{err}");
        }
        let list = ok(edge(&server)
            .args(["deploys", "--site", "race", "--store", STORE])
            .output()
            .unwrap());
        assert_eq!(
            list.lines().count() - 1,
            1 + 2 * (round + 1),
            "every publish left its record: {list}"
        );
        if wins == 1 {
            return;
        }
    }
    panic!("three rounds and the publishes never overlapped");
}

#[test]
fn gc_and_fsck_on_s3_through_the_cli() {
    let server = S3Server::start(&["edge"]);
    let ws = Workspace::new();
    let site = ws.site_dir("s");
    copy_dir(&example_site(), &site);
    for i in 0..5 {
        std::fs::write(site.join("version.txt"), format!("v{i}")).unwrap();
        ok(publish(&server, &site, "example"));
    }
    let out = ok(edge(&server)
        .args([
            "gc",
            "--store",
            STORE,
            "--keep",
            "2",
            "--grace",
            "0s",
            "--dry-run",
        ])
        .output()
        .unwrap());
    assert!(out.contains("would delete"), "{out}");
    let out = ok(edge(&server)
        .args(["fsck", "--store", STORE])
        .output()
        .unwrap());
    assert!(
        out.contains("checked 5 deploys of 1 sites") && out.contains("ok"),
        "{out}"
    );

    // Damage one blob: fsck fails naming it, the site and every deploy.
    let hash = blake3::hash(b"v4").to_hex().to_string();
    let key = format!("deploys/objects/{}/{hash}", &hash[..2]);
    std::fs::remove_file(server.key_file("edge", &key)).unwrap();
    let out = edge(&server)
        .args(["fsck", "--store", STORE, "--site", "example"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains(&format!("missing blob {hash} at /version.txt"))
            && stdout.contains("site example deploy")
            && stdout.contains("(current)"),
        "{stdout}"
    );
    assert!(text(&out.stderr).contains("1 damaged objects in 1 deploys of 1 sites (example)"));
}

#[test]
fn bad_s3_input_is_a_clear_error_naming_the_cause() {
    let mut server = S3Server::start(&["edge"]);
    let ws = Workspace::new();
    let site = ws.site_dir("s");
    copy_dir(&example_site(), &site);
    let base_env = server.env();
    let run = |env: &[(&str, &str)], remove: &[&str], store: &str| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_edge"));
        for (k, v) in &base_env {
            c.env(k, v);
        }
        for k in remove {
            c.env_remove(k);
        }
        for (k, v) in env {
            c.env(k, v);
        }
        let out = c
            .arg("publish")
            .arg(&site)
            .args(["--site", "example", "--store", store])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{}", text(&out.stdout));
        text(&out.stderr)
    };
    let err = run(&[], &["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"], STORE);
    assert!(
        err.contains("needs credentials") && err.contains("AWS_ACCESS_KEY_ID"),
        "{err}"
    );
    let err = run(&[], &["AWS_SECRET_ACCESS_KEY"], STORE);
    assert!(err.contains("AWS_SECRET_ACCESS_KEY is not"), "{err}");
    let err = run(&[("AWS_SECRET_ACCESS_KEY", "wrong")], &[], STORE);
    assert!(err.contains("access denied"), "{err}");
    let err = run(&[], &[], "s3://nosuchbucket/p");
    assert!(
        err.contains("bucket \"nosuchbucket\" does not exist"),
        "{err}"
    );
    let err = run(&[], &["AWS_ALLOW_HTTP"], STORE);
    assert!(
        err.contains("plain http") && err.contains("AWS_ALLOW_HTTP"),
        "{err}"
    );
    let err = run(&[], &[], "s3://");
    assert!(err.contains("names no bucket"), "{err}");
    server.stop();
    let err = run(&[], &[], STORE);
    assert!(err.contains("cannot connect to the endpoint"), "{err}");
    server.restart();
    // Nothing was written by any of them.
    assert_eq!(
        std::fs::read_dir(server.bucket_dir("edge"))
            .unwrap()
            .count(),
        0
    );
}
