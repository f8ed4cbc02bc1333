//! Garbage collection and fsck against a local store and a real S3 (s3s-fs): exactly the
//! objects only dropped deploys reach are deleted; a publish or rollback that overlaps a
//! collection ends whole (or refuses); fsck names what is missing or corrupt and who reaches it.

mod support;

use std::collections::{BTreeSet, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use origin_client::gc::{self, Depth, Fault, GcOptions, KeepRule};
use origin_client::publish::{PublishOptions, publish, rollback};
use origin_client::records::{CurrentPointer, DeployRecord, HostRecord, unix_now};
use origin_client::store::{GcState, LocalStore, ObjectBody, ObjectInfo, S3Store};
use origin_client::{Access, EntryKind, Hash, Store, StoreError};
use support::s3::S3Server;
use support::{read_deploy, read_folder, write_file};

/// A backend for these tests, and how to damage it behind its back.
struct Backend {
    store: Arc<dyn Store>,
    /// The folder the `objects/` of the store live in (local root, or the bucket folder).
    objects_root: std::path::PathBuf,
    _server: Option<S3Server>,
    _dir: tempfile::TempDir,
}

fn local() -> Backend {
    let dir = tempfile::tempdir().unwrap();
    Backend {
        store: Arc::new(LocalStore::open(dir.path(), Access::Write).unwrap()),
        objects_root: dir.path().to_owned(),
        _server: None,
        _dir: dir,
    }
}

fn s3() -> Backend {
    let server = S3Server::start(&["edge"]);
    let store = S3Store::open("edge/p", server.options()).unwrap();
    Backend {
        store: Arc::new(store),
        objects_root: server.bucket_dir("edge").join("p"),
        _server: Some(server),
        _dir: tempfile::tempdir().unwrap(),
    }
}

/// Every object a deploy reaches.
async fn objects_of(store: &dyn Store, root: &Hash) -> HashSet<Hash> {
    let m = gc::mark(store, &[*root], Depth::Trees, 8, false)
        .await
        .unwrap();
    assert!(m.problems.is_empty(), "{:?}", m.problems);
    m.reached.keys().copied().collect()
}

async fn listed(store: &dyn Store) -> BTreeSet<Hash> {
    store
        .list_objects()
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.hash)
        .collect()
}

/// Publishes `n` deploys of `site`, each changing one file (and the fifth onwards a file in
/// a nested folder), returning the records oldest first.
async fn history(store: &dyn Store, dir: &Path, site: &str, n: usize) -> Vec<DeployRecord> {
    write_file(dir, "index.html", b"<h1>home</h1>");
    write_file(dir, "assets/app.css", b"body{}");
    write_file(dir, "docs/deep/page.html", b"deep page");
    let mut out = Vec::new();
    for i in 0..n {
        write_file(
            dir,
            "changing.txt",
            format!("{site} version {i}").as_bytes(),
        );
        if i >= 5 {
            write_file(
                dir,
                "docs/deep/n.txt",
                format!("{site} nested {i}").as_bytes(),
            );
        }
        let r = publish(store, dir, site, &PublishOptions::default())
            .await
            .unwrap();
        out.push(r.deploy);
    }
    out
}

const HOUR: u64 = 3600;

fn opts(keep: usize, dry_run: bool) -> GcOptions {
    GcOptions {
        rule: KeepRule {
            keep,
            grace: Duration::from_secs(60),
        },
        dry_run,
        concurrency: 8,
        progress: false,
    }
}

async fn gc_keeps_exactly_what_kept_deploys_reach(b: Backend) {
    let store = b.store.as_ref();
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = history(store, da.path(), "alpha", 15).await;
    let bb = history(store, db.path(), "beta", 2).await;
    // Roll alpha back to its 12th deploy: the current one and the newest 3 are kept.
    rollback(store, "alpha", &a[11].id).await.unwrap();

    // A deploy's objects: what its root reaches, and its publish index.
    let mut kept = HashSet::new();
    for d in a[11..].iter().chain(bb.iter()) {
        kept.extend(objects_of(store, &d.root).await);
        kept.extend(d.index);
    }
    let mut all_reached = HashSet::new();
    for d in a.iter().chain(bb.iter()) {
        all_reached.extend(objects_of(store, &d.root).await);
        all_reached.extend(d.index);
    }
    let before = listed(store).await;
    assert_eq!(before.len(), all_reached.len(), "nothing stray yet");
    let doomed: BTreeSet<Hash> = before
        .iter()
        .filter(|h| !kept.contains(h))
        .copied()
        .collect();
    assert!(
        doomed.len() >= 2 * 11,
        "each dropped deploy had its own root and blob"
    );

    // Within the grace period nothing goes.
    let r = gc::collect_at(store, &opts(3, false), unix_now())
        .await
        .unwrap();
    assert_eq!(r.deleted, 0, "{r:?}");
    assert_eq!(listed(store).await, before);

    // An hour later: the dry run counts, the real run deletes exactly those.
    let later = unix_now() + HOUR;
    let dry = gc::collect_at(store, &opts(3, true), later).await.unwrap();
    assert_eq!(dry.deleted, doomed.len(), "{dry:?}");
    assert_eq!(
        dry.kept_deploys,
        4 + 2,
        "alpha: current + newest 3; beta: both"
    );
    assert_eq!(dry.sites, 2);
    assert_eq!(listed(store).await, before, "a dry run deletes nothing");
    let r = gc::collect_at(store, &opts(3, false), later).await.unwrap();
    assert_eq!(r.deleted, doomed.len(), "{r:?}");
    assert_eq!(r.reachable, kept.len());
    assert!(r.deleted_bytes > 0);
    let after = listed(store).await;
    assert_eq!(
        after,
        before.difference(&doomed).copied().collect::<BTreeSet<_>>()
    );
    // Every kept deploy reads whole; the folder's current state is the newest deploy.
    for d in a[11..].iter().chain(bb.iter()) {
        assert!(gc::is_whole(store, &d.root, 8).await.unwrap(), "{}", d.id);
    }
    assert_eq!(
        read_deploy(store, &a[14].root).await,
        read_folder(da.path())
    );
    let state = store.get_gc_state().await.unwrap().unwrap();
    assert!(!state.running);
    assert_eq!(state.keep, Some(3));
    // Again: nothing left to delete.
    let r = gc::collect_at(store, &opts(3, false), later).await.unwrap();
    assert_eq!(r.deleted, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_gc_keeps_exactly_what_kept_deploys_reach() {
    gc_keeps_exactly_what_kept_deploys_reach(local()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_gc_keeps_exactly_what_kept_deploys_reach() {
    gc_keeps_exactly_what_kept_deploys_reach(s3()).await;
}

/// A store that runs a whole garbage collection (an hour in the future, `keep` 1) the first
/// time a deploy record is written or the pointer is moved (whichever `on` says): the worst
/// moment for a publish or rollback in flight.
#[derive(Debug)]
struct GcInTheMiddle {
    inner: Arc<dyn Store>,
    armed: AtomicBool,
    on_swap: bool,
}

impl GcInTheMiddle {
    async fn maybe_collect(&self) {
        if self.armed.swap(false, Ordering::SeqCst) {
            let r = gc::collect_at(self.inner.as_ref(), &opts(1, false), unix_now() + HOUR)
                .await
                .unwrap();
            assert!(r.deleted > 0, "the collection deleted something: {r:?}");
        }
    }
}

#[async_trait]
impl Store for GcInTheMiddle {
    fn location(&self) -> String {
        self.inner.location()
    }
    async fn get_object(&self, h: &Hash) -> Result<Option<Bytes>, StoreError> {
        self.inner.get_object(h).await
    }
    async fn open_object(&self, h: &Hash) -> Result<Option<ObjectBody>, StoreError> {
        self.inner.open_object(h).await
    }
    async fn has_object(&self, h: &Hash) -> Result<bool, StoreError> {
        self.inner.has_object(h).await
    }
    async fn put_object(&self, h: &Hash, d: Bytes) -> Result<bool, StoreError> {
        self.inner.put_object(h, d).await
    }
    async fn put_object_file(&self, h: &Hash, p: &Path) -> Result<bool, StoreError> {
        self.inner.put_object_file(h, p).await
    }
    async fn get_host(&self, h: &str) -> Result<Option<HostRecord>, StoreError> {
        self.inner.get_host(h).await
    }
    async fn put_host(&self, r: &HostRecord) -> Result<(), StoreError> {
        self.inner.put_host(r).await
    }
    async fn get_current(&self, s: &str) -> Result<Option<CurrentPointer>, StoreError> {
        self.inner.get_current(s).await
    }
    async fn swap_current(&self, e: Option<u64>, n: &CurrentPointer) -> Result<(), StoreError> {
        if self.on_swap {
            self.maybe_collect().await;
        }
        self.inner.swap_current(e, n).await
    }
    async fn put_deploy(&self, r: &DeployRecord) -> Result<(), StoreError> {
        if !self.on_swap {
            self.maybe_collect().await;
        }
        self.inner.put_deploy(r).await
    }
    async fn get_deploy(&self, s: &str, id: &str) -> Result<Option<DeployRecord>, StoreError> {
        self.inner.get_deploy(s, id).await
    }
    async fn list_deploys(&self, s: &str) -> Result<Vec<DeployRecord>, StoreError> {
        self.inner.list_deploys(s).await
    }
    async fn list_sites(&self) -> Result<Vec<String>, StoreError> {
        self.inner.list_sites().await
    }
    async fn list_objects(&self) -> Result<Vec<ObjectInfo>, StoreError> {
        self.inner.list_objects().await
    }
    async fn delete_object(&self, h: &Hash) -> Result<(), StoreError> {
        self.inner.delete_object(h).await
    }
    async fn get_gc_state(&self) -> Result<Option<GcState>, StoreError> {
        self.inner.get_gc_state().await
    }
    async fn swap_gc_state(&self, e: Option<u64>, n: &GcState) -> Result<bool, StoreError> {
        self.inner.swap_gc_state(e, n).await
    }
}

/// The publish re-uses objects only a dropped deploy reaches (it republishes an old
/// version); a collection deletes them after its diff found them present and before its
/// record exists. The publish notices, puts them back, and its deploy serves whole.
async fn a_publish_overlapping_gc_ends_whole(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let first = history(b.store.as_ref(), dir.path(), "alpha", 4).await;
    let racing = GcInTheMiddle {
        inner: b.store.clone(),
        armed: AtomicBool::new(true),
        on_swap: false,
    };
    // Back to the first version's content: its blob exists, reachable only from deploy 1.
    write_file(dir.path(), "changing.txt", b"alpha version 0");
    let r = publish(&racing, dir.path(), "alpha", &PublishOptions::default())
        .await
        .unwrap();
    assert_eq!(
        r.deploy.root, first[0].root,
        "the same tree as the first deploy"
    );
    assert!(
        r.repaired >= 1,
        "objects the collection removed were put back: {r:?}"
    );
    assert!(
        gc::is_whole(b.store.as_ref(), &r.deploy.root, 8)
            .await
            .unwrap()
    );
    assert_eq!(
        read_deploy(b.store.as_ref(), &r.deploy.root).await,
        read_folder(dir.path())
    );
    let current = b.store.get_current("alpha").await.unwrap().unwrap();
    assert_eq!(current.deploy, r.deploy.id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_publish_overlapping_gc_ends_whole() {
    a_publish_overlapping_gc_ends_whole(local()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_publish_overlapping_gc_ends_whole() {
    a_publish_overlapping_gc_ends_whole(s3()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_whose_deploy_a_concurrent_gc_removed_is_undone() {
    let b = local();
    let dir = tempfile::tempdir().unwrap();
    let d = history(b.store.as_ref(), dir.path(), "alpha", 4).await;
    let racing = GcInTheMiddle {
        inner: b.store.clone(),
        armed: AtomicBool::new(true),
        on_swap: true,
    };
    // The collection (keep 1) runs as the pointer moves to deploy 1, and removes it.
    let err = rollback(&racing, "alpha", &d[0].id).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("garbage collection") && msg.contains(&d[3].id),
        "{msg}"
    );
    let current = b.store.get_current("alpha").await.unwrap().unwrap();
    assert_eq!(
        current.deploy, d[3].id,
        "back on the deploy that was current"
    );
    assert!(
        gc::is_whole(b.store.as_ref(), &current.root, 8)
            .await
            .unwrap()
    );
}

async fn fsck_names_missing_and_corrupt_objects(b: Backend) {
    let store = b.store.as_ref();
    let dir = tempfile::tempdir().unwrap();
    let d = history(store, dir.path(), "alpha", 3).await;
    let dir2 = tempfile::tempdir().unwrap();
    let other = history(store, dir2.path(), "beta", 1).await;
    let clean = gc::fsck(store, None, 8, false).await.unwrap();
    assert!(clean.damage.is_empty());
    assert_eq!(clean.deploys.len(), 4);

    // Delete a blob every deploy of both sites shares; alter the `docs/deep` node (the same
    // in every deploy of both sites, too).
    let shared = Hash::of(b"<h1>home</h1>");
    store.delete_object(&shared).await.unwrap();
    let deep = support::resolve(store, &d[2].root, "docs/deep")
        .await
        .unwrap();
    assert_eq!(deep.kind, EntryKind::Dir);
    let path = b
        .objects_root
        .join(origin_client::store::layout::object(&deep.hash));
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x55;
    std::fs::write(&path, bytes).unwrap();

    let r = gc::fsck(store, None, 8, false).await.unwrap();
    assert_eq!(r.damage.len(), 2, "{:?}", r.damage);
    let missing = r.damage.iter().find(|x| x.hash == shared).unwrap();
    assert_eq!(
        (missing.kind, &missing.fault),
        (EntryKind::File, &Fault::Missing)
    );
    let reached: BTreeSet<(String, String, String)> =
        missing.reached_from.iter().cloned().collect();
    let want: BTreeSet<(String, String, String)> = d
        .iter()
        .map(|x| ("alpha".to_owned(), x.id.clone(), "/index.html".to_owned()))
        .chain([(
            "beta".to_owned(),
            other[0].id.clone(),
            "/index.html".to_owned(),
        )])
        .collect();
    assert_eq!(reached, want);
    let corrupt = r.damage.iter().find(|x| x.hash == deep.hash).unwrap();
    assert_eq!(corrupt.kind, EntryKind::Dir);
    assert!(matches!(corrupt.fault, Fault::Corrupt(_)));
    let reached: BTreeSet<(String, String, String)> =
        corrupt.reached_from.iter().cloned().collect();
    let want: BTreeSet<(String, String, String)> = want
        .into_iter()
        .map(|(s, d, _)| (s, d, "/docs/deep".to_owned()))
        .collect();
    assert_eq!(reached, want);
    // One site only.
    let beta = gc::fsck(store, Some("beta"), 8, false).await.unwrap();
    assert_eq!(beta.damage.len(), 2, "beta reaches both");
    assert_eq!(beta.deploys.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_fsck_names_missing_and_corrupt_objects() {
    fsck_names_missing_and_corrupt_objects(local()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_fsck_names_missing_and_corrupt_objects() {
    fsck_names_missing_and_corrupt_objects(s3()).await;
}

/// A deploy's compressed variants and compiled rules are objects it reaches: a collection
/// keeps them for kept deploys (and fsck checks them), and drops those only a dropped deploy
/// named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_keeps_the_variants_and_rules_of_kept_deploys() {
    let b = local();
    let store = b.store.as_ref();
    let dir = tempfile::tempdir().unwrap();
    let text = |v: usize| {
        (0..200)
            .map(|i| format!("<p>line {i} of version {v}, repeated so it compresses</p>\n"))
            .collect::<String>()
    };
    write_file(dir.path(), "_redirects", b"/old /new 301\n");
    let mut deploys = Vec::new();
    for v in 0..3 {
        write_file(dir.path(), "index.html", text(v).as_bytes());
        write_file(
            dir.path(),
            "_redirects",
            format!("/old{v} /new 301\n").as_bytes(),
        );
        let r = publish(store, dir.path(), "s", &PublishOptions::default())
            .await
            .unwrap();
        assert!(r.new_variants >= 2, "variants and rules were stored: {r:?}");
        deploys.push(r.deploy);
    }
    // What the current deploy's root names beyond its entries.
    let root =
        origin_client::TreeNode::decode(store.get_object(&deploys[2].root).await.unwrap().unwrap())
            .unwrap();
    let extra: Vec<Hash> = root
        .references()
        .map(|(h, _)| h)
        .filter(|h| !root.iter().any(|e| e.hash == *h))
        .collect();
    assert!(
        extra.len() >= 3,
        "br/zstd/gzip of index.html and the rules: {extra:?}"
    );
    let reached = objects_of(store, &deploys[2].root).await;
    assert!(extra.iter().all(|h| reached.contains(h)), "marked");

    let r = gc::collect_at(store, &opts(0, false), unix_now() + HOUR)
        .await
        .unwrap();
    assert!(r.deleted > 0, "the dropped deploys' own objects go: {r:?}");
    let after = listed(store).await;
    for h in &extra {
        assert!(after.contains(h), "{h} of the current deploy was deleted");
    }
    assert!(gc::is_whole(store, &deploys[2].root, 8).await.unwrap());
    let old_root = store.get_object(&deploys[0].root).await.unwrap();
    assert!(old_root.is_none(), "the first deploy's root went");
}
