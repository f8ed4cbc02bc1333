//! Publishing into a local store: incremental re-publishes write exactly what changed, and
//! two publishes from the same base cannot both move `current`.

mod support;

use std::collections::BTreeSet;
use std::path::Path;

use bytes::Bytes;
use origin_client::publish::{PublishError, PublishOptions, publish};
use origin_client::records::{CurrentPointer, DeployRecord};
use origin_client::store::LocalStore;
use origin_client::tree::{self, OwnedEntry};
use origin_client::{Access, EntryKind, Hash, Store, StoreError};
use support::{object_files, read_deploy, read_folder, resolve, verify_objects, write_file};

const FILES: usize = 2_100;

/// `page-NNNN.html` at depth `i % 4` under `sec-*/part-*/leaf-*`, every file different.
fn large_site_path(i: usize) -> String {
    let dirs = [
        format!("sec-{}", i % 7),
        format!("part-{}", i % 5),
        format!("leaf-{}", i % 3),
    ];
    let mut parts: Vec<String> = dirs[..i % 4].to_vec();
    parts.push(format!("page-{i:04}.html"));
    parts.join("/")
}

fn large_site_content(i: usize) -> Vec<u8> {
    let mut v = format!("<p>page {i}</p>\n").into_bytes();
    v.extend(std::iter::repeat_n(b'x', (i * 37) % 1500));
    v
}

/// Every folder a path lies in, the root (`""`) included.
fn ancestors(path: &str) -> Vec<String> {
    let parts: Vec<&str> = path.split('/').collect();
    (0..parts.len()).map(|n| parts[..n].join("/")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_site_republishes_only_what_changed() {
    let site = tempfile::tempdir().unwrap();
    let paths: Vec<String> = (0..FILES).map(large_site_path).collect();
    for (i, p) in paths.iter().enumerate() {
        write_file(site.path(), p, &large_site_content(i));
    }
    let dirs: BTreeSet<String> = paths.iter().flat_map(|p| ancestors(p)).collect();
    // root + 7 sec + 35 part + 105 leaf, as the modular layout gives.
    assert_eq!(dirs.len(), 1 + 7 + 35 + 105);

    let store_dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(store_dir.path(), Access::Write).unwrap();
    // Counts blobs and nodes exactly: without compressed variants (see `compress`'s tests).
    let opts = PublishOptions {
        compress: None,
        ..PublishOptions::default()
    };

    let first = publish(&store, site.path(), "big", &opts).await.unwrap();
    assert_eq!(first.deploy.files, FILES as u64);
    assert_eq!(first.new_blobs, FILES as u64, "every file is distinct");
    assert_eq!(first.new_trees, dirs.len() as u64);
    assert_eq!(first.objects, (FILES + dirs.len()) as u64);
    assert_eq!(verify_objects(store_dir.path()), FILES + dirs.len());

    let unchanged = publish(&store, site.path(), "big", &opts).await.unwrap();
    assert_eq!((unchanged.new_blobs, unchanged.new_trees), (0, 0));
    assert_eq!(unchanged.deploy.root, first.deploy.root);
    assert_eq!(object_files(store_dir.path()).len(), FILES + dirs.len());

    // Three edits at depths 0, 1 and 3: new blobs for those files, new nodes for the folders
    // on their paths, nothing else.
    let changed = [0usize, 5, 11].map(|i| paths[i].clone());
    assert_eq!(
        changed,
        [
            "page-0000.html",
            "sec-5/page-0005.html",
            "sec-4/part-1/leaf-2/page-0011.html"
        ]
    );
    for p in &changed {
        write_file(site.path(), p, format!("edited {p}").as_bytes());
    }
    let on_paths: BTreeSet<String> = changed.iter().flat_map(|p| ancestors(p)).collect();
    assert_eq!(
        on_paths.len(),
        5,
        "root, sec-5, sec-4, sec-4/part-1, sec-4/part-1/leaf-2"
    );

    let edited = publish(&store, site.path(), "big", &opts).await.unwrap();
    assert_eq!(edited.new_blobs, 3);
    assert_eq!(edited.new_trees, on_paths.len() as u64);
    assert_ne!(edited.deploy.root, first.deploy.root);
    assert_eq!(
        verify_objects(store_dir.path()),
        FILES + dirs.len() + 3 + on_paths.len()
    );
    for p in &changed {
        let r = resolve(&store, &edited.deploy.root, p).await.unwrap();
        assert_eq!(r.hash, Hash::of(format!("edited {p}").as_bytes()));
    }
    // An untouched file still resolves to its original blob.
    let same = resolve(&store, &edited.deploy.root, &paths[1])
        .await
        .unwrap();
    assert_eq!(same.hash, Hash::of(&large_site_content(1)));

    let current = store.get_current("big").await.unwrap().unwrap();
    assert_eq!((current.deploy, current.seq), (edited.deploy.id, 3));
    assert_eq!(
        read_deploy(&store, &edited.deploy.root).await,
        read_folder(site.path())
    );
}

/// Stores a one-file tree and returns its root.
async fn one_file_root(store: &dyn Store, content: &str) -> Hash {
    let data = Bytes::from(content.to_owned());
    let blob = Hash::of(&data);
    store.put_object(&blob, data.clone()).await.unwrap();
    let node = tree::encode(vec![OwnedEntry {
        name: "index.html".into(),
        kind: EntryKind::File,
        size: data.len() as u64,
        hash: blob,
    }])
    .unwrap();
    let root = Hash::of(&node);
    store.put_object(&root, node).await.unwrap();
    root
}

fn record(site: &str, id: &str, root: Hash, seq: u64) -> DeployRecord {
    DeployRecord {
        id: id.into(),
        site: site.into(),
        root,
        seq,
        created: 1_700_000_000 + seq,
        files: 1,
        bytes: 1,
        index: None,
    }
}

fn pointer(d: &DeployRecord) -> CurrentPointer {
    CurrentPointer {
        site: d.site.clone(),
        deploy: d.id.clone(),
        root: d.root,
        seq: d.seq,
        updated: d.created,
    }
}

#[tokio::test]
async fn two_swaps_from_the_same_sequence_conflict() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path(), Access::Write).unwrap();
    let (ra, rb, rc) = (
        one_file_root(&store, "a").await,
        one_file_root(&store, "b").await,
        one_file_root(&store, "c").await,
    );

    // First deploy of a site: both racers expect no pointer.
    let base = record("race", "base", ra, 1);
    let lost = record("race", "lost-first", rc, 1);
    store.put_deploy(&base).await.unwrap();
    store.put_deploy(&lost).await.unwrap();
    store.swap_current(None, &pointer(&base)).await.unwrap();
    let err = store.swap_current(None, &pointer(&lost)).await.unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Conflict { ref site, expected: None, found: Some(1) } if site == "race"
        ),
        "{err:?}"
    );

    // Two publishes that both read sequence 1.
    let x = record("race", "x", rb, 2);
    let y = record("race", "y", rc, 2);
    store.put_deploy(&x).await.unwrap();
    store.put_deploy(&y).await.unwrap();
    store.swap_current(Some(1), &pointer(&x)).await.unwrap();
    let err = store.swap_current(Some(1), &pointer(&y)).await.unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Conflict {
                expected: Some(1),
                found: Some(2),
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("conflict"), "{err}");
    assert_eq!(
        err.blame(),
        origin_client::store::Blame::Caller,
        "a conflict is the caller's"
    );

    let current = store.get_current("race").await.unwrap().unwrap();
    assert_eq!(current, pointer(&x), "the winner stays current");
    let ids: Vec<String> = store
        .list_deploys("race")
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.id)
        .collect();
    assert_eq!(ids, ["base", "lost-first", "x", "y"]);
    let history = std::fs::read_to_string(dir.path().join("sites/race/history")).unwrap();
    assert_eq!(history, "base\nlost-first\nx\ny\n");
}

fn small_site(dir: &Path, tag: &str, n: usize) {
    for i in 0..n {
        write_file(
            dir,
            &format!("d{}/f{i}.txt", i % 10),
            format!("{tag} {i}").as_bytes(),
        );
    }
}

/// Two `publish()` calls from the same base, through two handles on one store folder (as two
/// tasks of one process would hold): exactly one moves `current`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishes_from_the_same_base_one_wins() {
    let store_dir = tempfile::tempdir().unwrap();
    let first = LocalStore::open(store_dir.path(), Access::Write).unwrap();
    let second = LocalStore::open(store_dir.path(), Access::Write).unwrap();
    let opts = PublishOptions::default();
    let base_dir = tempfile::tempdir().unwrap();
    small_site(base_dir.path(), "base", 20);
    let base = publish(&first, base_dir.path(), "race", &opts)
        .await
        .unwrap();
    assert_eq!(base.deploy.seq, 1);

    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    small_site(a.path(), "a", 400);
    small_site(b.path(), "b", 400);
    let (ra, rb) = tokio::join!(
        publish(&first, a.path(), "race", &opts),
        publish(&second, b.path(), "race", &opts)
    );
    let (won, lost) = match (ra, rb) {
        (Ok(w), Err(l)) | (Err(l), Ok(w)) => (w, l),
        (ra, rb) => panic!("expected exactly one winner: {ra:?} / {rb:?}"),
    };
    assert_eq!(won.previous_seq, Some(1));
    assert_eq!(won.deploy.seq, 2);
    assert_eq!(
        won.new_blobs, 400,
        "no upload failed on a shared temporary name"
    );
    assert!(
        matches!(
            lost,
            PublishError::Store(StoreError::Conflict {
                expected: Some(1),
                found: Some(2),
                ..
            })
        ),
        "{lost:?}"
    );
    assert!(lost.to_string().contains("conflict"), "{lost}");

    let current = first.get_current("race").await.unwrap().unwrap();
    assert_eq!(
        (current.deploy.as_str(), current.seq),
        (won.deploy.id.as_str(), 2)
    );
    let deploys = first.list_deploys("race").await.unwrap();
    assert_eq!(deploys.len(), 3, "both racers wrote their deploy record");
    assert_eq!(deploys.iter().filter(|d| d.seq == 2).count(), 2);
    assert!(deploys.iter().any(|d| d.id == won.deploy.id));
    // The loser's objects are all there, so its deploy could still be rolled back to.
    let loser = deploys
        .iter()
        .find(|d| d.seq == 2 && d.id != won.deploy.id)
        .unwrap();
    let a_won = read_deploy(&first, &won.deploy.root).await == read_folder(a.path());
    let loser_dir = if a_won { b.path() } else { a.path() };
    assert_eq!(
        read_deploy(&first, &loser.root).await,
        read_folder(loser_dir)
    );
    // Three deploys of blobs and 11 folders each, and each deploy's publish index.
    assert_eq!(
        verify_objects(store_dir.path()),
        20 + 11 + 400 + 11 + 400 + 11 + 3
    );
}
