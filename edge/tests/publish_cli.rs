//! The `edge` binary's store commands as real child processes against real folders:
//! publishing killed mid-upload, racing publishes, bad input, and deploys / rollback / hosts.
//!
//! Every failure case ends by checking that the site's previous deploy is still current and
//! that every object in the store still hashes to its name.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use origin_client::records::{CurrentPointer, DeployRecord, HostRecord};
use origin_client::store::LocalStore;
use origin_client::{Access, Store};

const SITE: &str = "shop";

// ---- helpers ---------------------------------------------------------------------------

fn edge() -> Command {
    Command::new(env!("CARGO_BIN_EXE_edge"))
}

fn run<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    edge().args(args).output().expect("running edge")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn publish(dir: &Path, store: &Path) -> Output {
    edge()
        .arg("publish")
        .arg(dir)
        .args(["--site", SITE, "--store"])
        .arg(store)
        .output()
        .expect("running edge")
}

/// Publishes and returns the new deploy's id; panics with the child's output on failure.
fn publish_ok(dir: &Path, store: &Path) -> (String, Output) {
    let out = publish(dir, store);
    assert!(
        out.status.success(),
        "publish failed: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    (deploy_id(&text(&out.stdout)), out)
}

fn deploy_id(stdout: &str) -> String {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("deploy "))
        .unwrap_or_else(|| panic!("no deploy line in {stdout:?}"))
        .trim()
        .to_owned()
}

/// `N new objects (B blobs, T trees) of M` from publish's summary line: (N, M).
fn new_objects(stdout: &str) -> (u64, u64) {
    let line = stdout
        .lines()
        .find(|l| l.contains(" new objects "))
        .unwrap_or_else(|| panic!("no summary in {stdout:?}"));
    let words: Vec<&str> = line.split([' ', ',']).filter(|w| !w.is_empty()).collect();
    let at = words.iter().position(|w| *w == "new").unwrap();
    let of = words.iter().position(|w| *w == "of").unwrap();
    (
        words[at - 1].parse().unwrap(),
        words[of + 1].parse().unwrap(),
    )
}

fn current(store: &Path) -> CurrentPointer {
    let bytes = fs::read(store.join(format!("sites/{SITE}/current"))).unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

fn list_deploys(store: &Path) -> Vec<DeployRecord> {
    let store = LocalStore::open(store, Access::Read).unwrap();
    block_on(store.list_deploys(SITE)).unwrap()
}

fn object_files(store: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir(store.join("objects")) else {
        return out;
    };
    for prefix in rd {
        let prefix = prefix.unwrap().path();
        if prefix.is_dir() {
            out.extend(fs::read_dir(&prefix).unwrap().map(|f| f.unwrap().path()));
        } else {
            out.push(prefix);
        }
    }
    out
}

/// Every file under `objects/` is `objects/<hh>/<hash>` and hashes (blake3) to its name, so
/// no partial or temporary file is there. Returns the count.
fn verify_objects(store: &Path) -> usize {
    let files = object_files(store);
    for path in &files {
        let name = path.file_name().unwrap().to_str().unwrap();
        let prefix = path
            .parent()
            .unwrap()
            .file_name()
            .unwrap()
            .to_str()
            .unwrap();
        assert_eq!(name.len(), 64, "{}: not an object name", path.display());
        assert_eq!(prefix, &name[..2], "{}: wrong folder", path.display());
        let data = fs::read(path).unwrap();
        assert_eq!(
            blake3::hash(&data).to_hex().as_str(),
            name,
            "{} does not hash to its name",
            path.display()
        );
    }
    files.len()
}

fn write(root: &Path, rel: &str, data: &[u8]) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, data).unwrap();
}

/// `n` small files in ten folders, their text tagged so two tags never share a blob.
fn small_site(dir: &Path, tag: &str, n: usize) {
    for i in 0..n {
        write(
            dir,
            &format!("d{}/page-{i}.html", i % 10),
            format!("<p>{tag} {i}</p>").as_bytes(),
        );
    }
}

/// A site published once into a fresh store: the state every failure must leave alone.
struct Fixture {
    tmp: tempfile::TempDir,
    site: PathBuf,
    store: PathBuf,
    deploy: String,
    objects: usize,
}

impl Fixture {
    fn new() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let site = tmp.path().join("site");
        let store = tmp.path().join("store");
        small_site(&site, "v1", 30);
        let (deploy, _) = publish_ok(&site, &store);
        let objects = verify_objects(&store);
        assert_eq!(
            objects,
            30 + 11 + 1,
            "30 blobs, root and 10 folders, the publish index"
        );
        let fx = Fixture {
            tmp,
            site,
            store,
            deploy,
            objects,
        };
        fx.assert_intact();
        fx
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.tmp.path().join(rel)
    }

    /// The first deploy is still current, no other deploy was recorded, and every object
    /// still verifies.
    fn assert_intact(&self) {
        let c = current(&self.store);
        assert_eq!((c.deploy.as_str(), c.seq), (self.deploy.as_str(), 1));
        let ids: Vec<String> = list_deploys(&self.store)
            .into_iter()
            .map(|d| d.id)
            .collect();
        assert_eq!(ids, std::slice::from_ref(&self.deploy));
        assert_eq!(verify_objects(&self.store), self.objects);
    }
}

fn assert_failed(out: &Output, needles: &[&str]) {
    let stderr = text(&out.stderr);
    assert!(
        !out.status.success(),
        "expected failure, got success: {}",
        text(&out.stdout)
    );
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    for n in needles {
        assert!(stderr.contains(n), "stderr lacks {n:?}: {stderr}");
    }
}

// ---- 3. a publish killed mid-upload ----------------------------------------------------

#[test]
fn publish_killed_mid_upload_keeps_previous_deploy_and_resumes() {
    const FILES: usize = 3_000;
    let tmp = tempfile::tempdir().unwrap();
    let (v1, v2, store) = (
        tmp.path().join("v1"),
        tmp.path().join("v2"),
        tmp.path().join("store"),
    );
    small_site(&v1, "v1", 200);
    let (previous, _) = publish_ok(&v1, &store);
    let baseline = verify_objects(&store);
    assert_eq!(baseline, 200 + 11 + 1, "blobs, folders, index");

    // v2: v1's 200 files unchanged plus 3,000 new ones of 8 to 64 KiB (about 100 MiB), so
    // the upload takes long enough to be interrupted.
    small_site(&v2, "v1", 200);
    let mut new_dirs = std::collections::BTreeSet::new();
    for i in 0..FILES {
        let seed = blake3::hash(format!("v2 file {i}").as_bytes());
        let len = 8 * 1024 + (i * 7919) % (56 * 1024);
        let data: Vec<u8> = seed.as_bytes().iter().copied().cycle().take(len).collect();
        let (s, t) = (format!("s{}", i % 6), format!("s{}/t{}", i % 6, i % 4));
        write(&v2, &format!("{t}/blob-{i}.bin"), &data);
        new_dirs.insert(s);
        new_dirs.insert(t);
    }
    // (i % 6, i % 4) takes 12 values, so 6 + 12 new folders, plus a new root.
    assert_eq!(new_dirs.len(), 18);
    let total_new = FILES + new_dirs.len() + 1;

    let mut child = edge()
        .arg("publish")
        .arg(&v2)
        .args(["--site", SITE, "--store"])
        .arg(&store)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if object_files(&store).len() > baseline {
            break;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("publish ended ({status}) before any new object appeared");
        }
        assert!(Instant::now() < deadline, "no upload started in 120 s");
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success(), "killed, not finished: {status}");

    let after_kill = verify_objects(&store);
    assert!(
        after_kill > baseline && after_kill < baseline + total_new,
        "killed mid-upload: {baseline} -> {after_kill} of {}",
        baseline + total_new
    );
    let c = current(&store);
    assert_eq!((c.deploy.as_str(), c.seq), (previous.as_str(), 1));
    let ids: Vec<String> = list_deploys(&store).into_iter().map(|d| d.id).collect();
    assert_eq!(
        ids,
        std::slice::from_ref(&previous),
        "no deploy record from the killed run"
    );
    // What the killed run was writing is in tmp/, never under objects/.
    let leftovers = fs::read_dir(store.join("tmp")).map_or(0, |rd| rd.count());
    eprintln!(
        "killed after {} new objects; {leftovers} temporary file(s) left in tmp/",
        after_kill - baseline
    );

    let (next, out) = publish_ok(&v2, &store);
    let (new, of) = new_objects(&text(&out.stdout));
    let after = verify_objects(&store);
    // Every object of v2: v1's 200 blobs and 10 folders are shared; its index is its own.
    assert_eq!(of as usize, total_new + 200 + 10 + 1);
    assert_eq!(new as usize, after - after_kill, "reported what it wrote");
    assert_eq!(
        new as usize,
        baseline + total_new + 1 - after_kill,
        "reused the killed run's uploads and v1's files"
    );
    assert!(new < of);
    let c = current(&store);
    assert_eq!((c.deploy.as_str(), c.seq), (next.as_str(), 2));
    let ids: Vec<String> = list_deploys(&store).into_iter().map(|d| d.id).collect();
    assert_eq!(ids, [previous, next]);
}

// ---- 4. two publishes racing -----------------------------------------------------------

#[test]
fn racing_publish_processes_exactly_one_wins_from_a_shared_base() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let base = tmp.path().join("base");
    small_site(&base, "base", 20);
    publish_ok(&base, &store);

    let mut raced = 0;
    let mut known: Vec<String> = list_deploys(&store).into_iter().map(|d| d.id).collect();
    for round in 0..4 {
        let dirs = [
            tmp.path().join(format!("a{round}")),
            tmp.path().join(format!("b{round}")),
        ];
        small_site(&dirs[0], &format!("a{round}"), 400);
        small_site(&dirs[1], &format!("b{round}"), 400);
        let children: Vec<_> = dirs
            .iter()
            .map(|d| {
                edge()
                    .arg("publish")
                    .arg(d)
                    .args(["--site", SITE, "--store"])
                    .arg(&store)
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let outs: Vec<Output> = children
            .into_iter()
            .map(|c| c.wait_with_output().unwrap())
            .collect();

        let all = list_deploys(&store);
        let fresh: Vec<&DeployRecord> = all.iter().filter(|d| !known.contains(&d.id)).collect();
        assert_eq!(fresh.len(), 2, "round {round}: both deploy records exist");
        let c = current(&store);
        if fresh[0].seq == fresh[1].seq {
            // Both read the same base: exactly one moved `current`.
            raced += 1;
            let winners: Vec<&Output> = outs.iter().filter(|o| o.status.success()).collect();
            let losers: Vec<&Output> = outs.iter().filter(|o| !o.status.success()).collect();
            assert_eq!(
                (winners.len(), losers.len()),
                (1, 1),
                "round {round}: {:?}",
                outs.iter().map(|o| text(&o.stderr)).collect::<Vec<_>>()
            );
            let stderr = text(&losers[0].stderr);
            assert!(stderr.contains("conflict"), "round {round}: {stderr}");
            let winner = deploy_id(&text(&winners[0].stdout));
            assert_eq!((c.deploy.as_str(), c.seq), (winner.as_str(), fresh[0].seq));
        } else {
            // One finished before the other started: both succeed, in order.
            for o in &outs {
                assert!(o.status.success(), "round {round}: {}", text(&o.stderr));
            }
            let last = fresh.iter().max_by_key(|d| d.seq).unwrap();
            assert_eq!((&c.deploy, c.seq), (&last.id, last.seq));
        }
        known = all.into_iter().map(|d| d.id).collect();
    }
    eprintln!("{raced} of 4 rounds raced from the same base");
    assert!(raced >= 1, "the two publishes never overlapped");
    verify_objects(&store);
}

// ---- 6. bad input ----------------------------------------------------------------------

#[test]
fn publish_of_a_missing_folder_fails() {
    let fx = Fixture::new();
    let missing = fx.path("no-such-folder");
    let out = publish(&missing, &fx.store);
    assert_failed(&out, &[missing.to_str().unwrap(), "no such folder"]);
    fx.assert_intact();
}

fn running_as_root() -> bool {
    let probe = tempfile::NamedTempFile::new().unwrap();
    probe.as_file().metadata().unwrap().uid() == 0
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

fn chmod_tree(path: &Path, dir_mode: u32, file_mode: u32) {
    if path.is_dir() {
        chmod(path, dir_mode);
        for ent in fs::read_dir(path).unwrap() {
            chmod_tree(&ent.unwrap().path(), dir_mode, file_mode);
        }
    } else {
        chmod(path, file_mode);
    }
}

#[test]
fn publish_of_an_unreadable_file_fails() {
    let fx = Fixture::new();
    let secret = fx.site.join("d3/secret.html");
    fs::write(&secret, b"no peeking").unwrap();
    chmod(&secret, 0o000);

    let mut cmd = if running_as_root() {
        // Root reads any file whatever its mode: drop to nobody, who must be able to reach the
        // site and the (world-writable) store but not the secret.
        if Command::new("setpriv").arg("--version").output().is_err() {
            eprintln!("skipped: running as root and setpriv is not installed");
            return;
        }
        chmod(fx.tmp.path(), 0o755);
        chmod_tree(&fx.store, 0o777, 0o666);
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            env!("CARGO_BIN_EXE_edge"),
        ]);
        c
    } else {
        edge()
    };
    let out = cmd
        .arg("publish")
        .arg(&fx.site)
        .args(["--site", SITE, "--store"])
        .arg(&fx.store)
        .output()
        .unwrap();
    assert_failed(&out, &[secret.to_str().unwrap(), "Permission denied"]);
    fx.assert_intact();
}

#[test]
fn publish_to_an_unknown_store_scheme_fails() {
    let fx = Fixture::new();
    let out = run([
        OsStr::new("publish"),
        fx.site.as_os_str(),
        OsStr::new("--site"),
        OsStr::new(SITE),
        OsStr::new("--store"),
        OsStr::new("ftp://x"),
    ]);
    assert_failed(&out, &["ftp://x", "unknown scheme", "s3://"]);
    fx.assert_intact();
}

#[test]
fn publish_to_a_store_path_that_is_a_file_fails() {
    let fx = Fixture::new();
    let file = fx.path("store-is-a-file");
    fs::write(&file, b"not a store").unwrap();
    let out = publish(&fx.site, &file);
    assert_failed(&out, &[file.to_str().unwrap(), "is not a directory"]);
    assert_eq!(fs::read(&file).unwrap(), b"not a store");
    fx.assert_intact();
}

#[test]
fn publish_with_a_symlink_escaping_the_folder_fails() {
    let fx = Fixture::new();
    let outside = fx.path("outside.txt");
    fs::write(&outside, b"private").unwrap();
    let link = fx.site.join("d1/leak.txt");
    std::os::unix::fs::symlink(&outside, &link).unwrap();
    let out = publish(&fx.site, &fx.store);
    assert_failed(
        &out,
        &[
            link.to_str().unwrap(),
            "points outside the published folder",
        ],
    );
    fx.assert_intact();
}

// ---- 7. deploys, rollback, hosts -------------------------------------------------------

/// The `edge deploys` row for each id: (id, marked current).
fn deploys_listing(store: &Path) -> Vec<(String, bool)> {
    let out = run([
        OsStr::new("deploys"),
        OsStr::new("--site"),
        OsStr::new(SITE),
        OsStr::new("--store"),
        store.as_os_str(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
        .lines()
        .skip(1) // header
        .map(|l| {
            let marked = l.starts_with('*');
            let id = l.trim_start_matches('*').split_whitespace().next().unwrap();
            (id.to_owned(), marked)
        })
        .collect()
}

#[test]
fn deploys_rollback_and_hosts_add() {
    let fx = Fixture::new();
    write(&fx.site, "index.html", b"v2");
    let (second, _) = publish_ok(&fx.site, &fx.store);
    write(&fx.site, "index.html", b"v3");
    let (third, _) = publish_ok(&fx.site, &fx.store);
    let ids = [fx.deploy.clone(), second.clone(), third.clone()];

    let listing = deploys_listing(&fx.store);
    assert_eq!(
        listing,
        [
            (ids[0].clone(), false),
            (ids[1].clone(), false),
            (ids[2].clone(), true)
        ]
    );

    let out = run([
        OsStr::new("rollback"),
        OsStr::new("--site"),
        OsStr::new(SITE),
        OsStr::new("--store"),
        fx.store.as_os_str(),
        OsStr::new("--to"),
        OsStr::new(&ids[0]),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains(&format!("current deploy is now {} (seq 4)", ids[0])),
        "{}",
        text(&out.stdout)
    );
    let c = current(&fx.store);
    assert_eq!((c.deploy.as_str(), c.seq), (ids[0].as_str(), 4));
    let first = list_deploys(&fx.store).into_iter().next().unwrap();
    assert_eq!(c.root, first.root);
    assert_eq!(
        deploys_listing(&fx.store),
        [
            (ids[0].clone(), true),
            (ids[1].clone(), false),
            (ids[2].clone(), false)
        ]
    );

    // Rolling back to an id the site does not have changes nothing.
    let out = run([
        OsStr::new("rollback"),
        OsStr::new("--site"),
        OsStr::new(SITE),
        OsStr::new("--store"),
        fx.store.as_os_str(),
        OsStr::new("--to"),
        OsStr::new("20000101-000000-deadbeef"),
    ]);
    assert_failed(&out, &["20000101-000000-deadbeef", "has no deploy"]);
    assert_eq!(current(&fx.store).seq, 4);

    let out = run([
        OsStr::new("hosts"),
        OsStr::new("add"),
        OsStr::new("WWW.Shop.Example."),
        OsStr::new("--site"),
        OsStr::new(SITE),
        OsStr::new("--store"),
        fx.store.as_os_str(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "host www.shop.example -> site shop\n");
    let path = fx.store.join("hosts/www.shop.example");
    let rec: HostRecord = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    assert_eq!(
        rec,
        HostRecord {
            host: "www.shop.example".into(),
            site: SITE.into()
        }
    );
    let store = LocalStore::open(&fx.store, Access::Read).unwrap();
    assert_eq!(
        block_on(store.get_host("www.shop.example")).unwrap(),
        Some(rec)
    );
    // Two more deploys, each a new index.html, a new root and its publish index.
    assert_eq!(verify_objects(&fx.store), fx.objects + 2 * 3);
}
