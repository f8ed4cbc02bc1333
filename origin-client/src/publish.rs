//! Publishing a folder as a deploy: walk, hash, diff, upload, flip.
//!
//! 1. Walk the folder (symbolic links followed only when they stay inside it; version-control
//!    folders and `.DS_Store` skipped unless asked; sockets, FIFOs and devices refused).
//! 2. Hash every file, in parallel, bounded.
//! 3. Ask the store which blobs it lacks, upload only those (bounded); each upload is checked
//!    against the hash taken in step 2, so a file edited mid-publish is refused, not stored.
//! 4. Write tree nodes bottom-up (a parent only after all its children).
//! 5. Write the deploy record, then move `current` with a compare-and-swap on the sequence
//!    number read in step 1. A publish that dies before this leaves the previous deploy
//!    serving; its uploaded objects are reused by the next run.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};

use crate::Hash;
use crate::records::{CurrentPointer, DeployRecord, unix_now, validate_site};
use crate::store::{Store, StoreError};
use crate::tree::{self, EntryKind, OwnedEntry, TreeError};

/// Names skipped by default (a flag includes them).
pub const DEFAULT_SKIPPED: &[&str] = &[".git", ".hg", ".svn", ".DS_Store"];

#[derive(Debug, Clone)]
pub struct PublishOptions {
    /// Publish `.git`, `.hg`, `.svn` and `.DS_Store` too.
    pub include_skipped: bool,
    /// Files hashed at once.
    pub hash_concurrency: usize,
    /// Objects checked or uploaded at once.
    pub upload_concurrency: usize,
    /// Draw a progress bar on standard error.
    pub progress: bool,
    /// Store compressed variants of compressible files at these levels (None: do not).
    pub compress: Option<crate::compress::Levels>,
}

impl Default for PublishOptions {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        PublishOptions {
            include_skipped: false,
            hash_concurrency: cores * 2,
            upload_concurrency: 16,
            progress: false,
            compress: Some(crate::compress::Levels::PUBLISH),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    #[error("{path}: {why}")]
    Source { path: PathBuf, why: String },
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: symbolic link points outside the published folder (to {target})")]
    SymlinkEscapes { path: PathBuf, target: PathBuf },
    #[error("{path}: symbolic link makes a cycle (to {target})")]
    SymlinkCycle { path: PathBuf, target: PathBuf },
    #[error("{path}: is a {kind}; only files, folders and links to them can be published")]
    Unsupported { path: PathBuf, kind: &'static str },
    #[error("{path}: name is not valid UTF-8")]
    NonUtf8Name { path: PathBuf },
    #[error("{path}: name cannot be published")]
    BadName {
        path: PathBuf,
        #[source]
        source: TreeError,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("site {site:?} has no deploy {id:?}")]
    NoSuchDeploy { site: String, id: String },
    /// A `_redirects` or `_headers` line that cannot be published.
    #[error(transparent)]
    Rules(#[from] crate::rules::RulesError),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> PublishError + '_ {
    move |source| PublishError::Io {
        path: path.to_owned(),
        source,
    }
}

/// What a publish did.
#[derive(Debug, Clone)]
pub struct PublishReport {
    pub deploy: DeployRecord,
    /// The sequence number the site's pointer had before (None: first deploy).
    pub previous_seq: Option<u64>,
    pub new_blobs: u64,
    pub new_trees: u64,
    /// Distinct objects (blobs, variants, rules and trees) the deploy references.
    pub objects: u64,
    /// Compressed variants (and the compiled rules) the store did not have.
    pub new_variants: u64,
    /// Files compressed in this publish, and files whose variants the previous deploy had.
    pub compressed: u64,
    pub reused_variants: u64,
}

impl PublishReport {
    pub fn new_objects(&self) -> u64 {
        self.new_blobs + self.new_trees + self.new_variants
    }
}

/// A folder as scanned: names to files or sub-folders, sorted.
#[derive(Debug, Default)]
struct ScanDir {
    entries: BTreeMap<String, ScanNode>,
}

#[derive(Debug)]
enum ScanNode {
    /// Index into the flat file list.
    File(usize),
    Dir(ScanDir),
}

struct Scan {
    root: ScanDir,
    files: Vec<PathBuf>,
}

/// Walks `dir` into a [`Scan`]. Blocking.
fn scan(dir: &Path, include_skipped: bool) -> Result<Scan, PublishError> {
    let meta = fs::metadata(dir).map_err(|e| PublishError::Source {
        path: dir.to_owned(),
        why: if e.kind() == io::ErrorKind::NotFound {
            "no such folder".into()
        } else {
            e.to_string()
        },
    })?;
    if !meta.is_dir() {
        return Err(PublishError::Source {
            path: dir.to_owned(),
            why: "is not a folder".into(),
        });
    }
    let root_canon = fs::canonicalize(dir).map_err(io_err(dir))?;
    let mut files = Vec::new();
    let mut stack = vec![root_canon.clone()];
    let root = scan_dir(dir, &root_canon, &mut stack, &mut files, include_skipped)?;
    Ok(Scan { root, files })
}

fn scan_dir(
    dir: &Path,
    root_canon: &Path,
    stack: &mut Vec<PathBuf>,
    files: &mut Vec<PathBuf>,
    include_skipped: bool,
) -> Result<ScanDir, PublishError> {
    let mut out = ScanDir::default();
    for ent in fs::read_dir(dir).map_err(io_err(dir))? {
        let ent = ent.map_err(io_err(dir))?;
        let path = ent.path();
        let name = ent
            .file_name()
            .into_string()
            .map_err(|_| PublishError::NonUtf8Name { path: path.clone() })?;
        if !include_skipped && DEFAULT_SKIPPED.contains(&name.as_str()) {
            continue;
        }
        tree::validate_name(name.as_bytes(), 0).map_err(|source| PublishError::BadName {
            path: path.clone(),
            source,
        })?;
        let mut meta = fs::symlink_metadata(&path).map_err(io_err(&path))?;
        let mut real = None;
        if meta.file_type().is_symlink() {
            let target = fs::canonicalize(&path).map_err(|e| PublishError::Source {
                path: path.clone(),
                why: format!("broken symbolic link: {e}"),
            })?;
            if !target.starts_with(root_canon) {
                return Err(PublishError::SymlinkEscapes { path, target });
            }
            meta = fs::metadata(&target).map_err(io_err(&path))?;
            real = Some(target);
        }
        let ft = meta.file_type();
        let node = if ft.is_file() {
            files.push(path);
            ScanNode::File(files.len() - 1)
        } else if ft.is_dir() {
            let canon = match real {
                Some(t) => t,
                None => fs::canonicalize(&path).map_err(io_err(&path))?,
            };
            if stack.contains(&canon) {
                return Err(PublishError::SymlinkCycle {
                    path,
                    target: canon,
                });
            }
            stack.push(canon);
            let sub = scan_dir(&path, root_canon, stack, files, include_skipped)?;
            stack.pop();
            ScanNode::Dir(sub)
        } else {
            use std::os::unix::fs::FileTypeExt;
            let kind = if ft.is_socket() {
                "socket"
            } else if ft.is_fifo() {
                "FIFO"
            } else if ft.is_block_device() {
                "block device"
            } else if ft.is_char_device() {
                "character device"
            } else {
                "special file"
            };
            return Err(PublishError::Unsupported { path, kind });
        };
        out.entries.insert(name, node);
    }
    Ok(out)
}

/// Hashes one file. Blocking. Returns the hash and the number of bytes hashed.
fn hash_file(path: &Path) -> Result<(Hash, u64), PublishError> {
    let mut f = fs::File::open(path).map_err(io_err(path))?;
    let mut hasher = blake3::Hasher::new();
    hasher.update_reader(&mut f).map_err(io_err(path))?;
    Ok((hasher.finalize().into(), hasher.count()))
}

/// Builds the tree nodes of `dir`, children before parents, recording each compressible
/// file's variants and, on the root, the compiled rules. Returns the root's entry data.
fn build_nodes(
    dir: &ScanDir,
    hashes: &[(Hash, u64)],
    variants: &HashMap<Hash, Vec<tree::Variant>>,
    rules: Option<Hash>,
    nodes: &mut Vec<(Hash, Bytes)>,
) -> Result<(Hash, u64), TreeError> {
    let mut entries = Vec::with_capacity(dir.entries.len());
    for (name, node) in &dir.entries {
        let (kind, (hash, size)) = match node {
            ScanNode::File(i) => (EntryKind::File, hashes[*i]),
            ScanNode::Dir(sub) => (
                EntryKind::Dir,
                build_nodes(sub, hashes, variants, None, nodes)?,
            ),
        };
        let v = match variants.get(&hash) {
            Some(v) if kind == EntryKind::File && crate::compress::compressible(name) => v.clone(),
            _ => Vec::new(),
        };
        let e = OwnedEntry {
            name: name.clone(),
            kind,
            size,
            hash,
        };
        entries.push((e, v));
    }
    let bytes = tree::encode_node(entries, rules)?;
    let hash = Hash::of(&bytes);
    let len = bytes.len() as u64;
    nodes.push((hash, bytes));
    Ok((hash, len))
}

/// Publishes `dir` as a new deploy of `site` and makes it current.
pub async fn publish(
    store: &dyn Store,
    dir: &Path,
    site: &str,
    opts: &PublishOptions,
) -> Result<PublishReport, PublishError> {
    validate_site(site).map_err(StoreError::from)?;
    // The sequence number this publish builds on: the compare-and-swap at the end fails if
    // anyone moved the pointer in between.
    let previous = store.get_current(site).await?;
    let previous_seq = previous.as_ref().map(|c| c.seq);

    let dir_owned = dir.to_owned();
    let include = opts.include_skipped;
    let scan = tokio::task::spawn_blocking(move || scan(&dir_owned, include))
        .await
        .map_err(|e| PublishError::Io {
            path: dir.to_owned(),
            source: io::Error::other(e),
        })??;
    let Scan { root, files } = scan;
    // Site rules are checked before anything is written: a bad line fails the publish.
    let rules = crate::rules::compile_dir(dir).await?;
    let files = Arc::new(files);

    let bar = progress_bar(opts.progress, files.len() as u64, "hashing");
    let mut hashes: Vec<(Hash, u64)> = vec![(Hash::from_bytes([0; 32]), 0); files.len()];
    let mut hashed = futures_util::stream::iter(0..files.len())
        .map(|i| {
            let files = files.clone();
            async move {
                let r = tokio::task::spawn_blocking(move || hash_file(&files[i])).await;
                (i, r)
            }
        })
        .buffer_unordered(opts.hash_concurrency.max(1));
    while let Some((i, r)) = hashed.next().await {
        hashes[i] = r.map_err(|e| PublishError::Io {
            path: files[i].clone(),
            source: io::Error::other(e),
        })??;
        bar.inc(1);
    }
    bar.finish_and_clear();

    let made = match opts.compress {
        Some(levels) => {
            let known = match &previous {
                Some(p) => crate::compress::recorded(store, p.root).await,
                None => HashMap::new(),
            };
            let concurrency = opts.hash_concurrency.max(1);
            crate::compress::make(store, &files, &hashes, known, levels, concurrency).await?
        }
        None => crate::compress::Made::default(),
    };
    let mut new_variants = made.new_blobs;
    let rules_hash = match rules {
        Some(bytes) => {
            let h = Hash::of(&bytes);
            if !store.has_object(&h).await? && store.put_object(&h, bytes).await? {
                new_variants += 1;
            }
            Some(h)
        }
        None => None,
    };

    let mut nodes = Vec::new();
    let (root_hash, _) = build_nodes(&root, &hashes, &made.variants, rules_hash, &mut nodes)
        .map_err(|source| PublishError::BadName {
            path: dir.to_owned(),
            source,
        })?;

    // Blobs: one upload per distinct hash, from the first file that has it.
    let mut seen = HashSet::new();
    let unique: Vec<usize> = (0..files.len())
        .filter(|&i| seen.insert(hashes[i].0))
        .collect();
    let total_bytes: u64 = hashes.iter().map(|h| h.1).sum();
    let bar = progress_bar(opts.progress, unique.len() as u64, "uploading");
    let new_blobs: u64 = futures_util::stream::iter(unique.iter().copied())
        .map(|i| {
            let (hash, path, bar) = (hashes[i].0, &files[i], &bar);
            async move {
                let new = if store.has_object(&hash).await? {
                    false
                } else {
                    store.put_object_file(&hash, path).await?
                };
                bar.inc(1);
                Ok::<u64, StoreError>(u64::from(new))
            }
        })
        .buffer_unordered(opts.upload_concurrency.max(1))
        .try_fold(0u64, |acc, n| async move { Ok(acc + n) })
        .await?;
    bar.finish_and_clear();

    // Trees, in post-order: every child is stored before its parent.
    let mut new_trees = 0;
    let mut tree_seen = HashSet::new();
    for (hash, bytes) in nodes {
        if !tree_seen.insert(hash) || seen.contains(&hash) {
            continue;
        }
        if !store.has_object(&hash).await? && store.put_object(&hash, bytes).await? {
            new_trees += 1;
        }
    }

    let now = std::time::SystemTime::now();
    let record = DeployRecord {
        id: DeployRecord::new_id(&root_hash, now),
        site: site.to_owned(),
        root: root_hash,
        seq: previous_seq.map_or(1, |s| s + 1),
        created: unix_now(),
        files: files.len() as u64,
        bytes: total_bytes,
    };
    store.put_deploy(&record).await?;
    move_current(store, site, previous_seq, &record).await?;
    Ok(PublishReport {
        objects: (seen.len() + tree_seen.difference(&seen).count()) as u64
            + made.blobs
            + u64::from(rules_hash.is_some()),
        deploy: record,
        previous_seq,
        new_blobs,
        new_trees,
        new_variants,
        compressed: made.compressed,
        reused_variants: made.reused,
    })
}

async fn move_current(
    store: &dyn Store,
    site: &str,
    expected: Option<u64>,
    to: &DeployRecord,
) -> Result<CurrentPointer, StoreError> {
    let pointer = CurrentPointer {
        site: site.to_owned(),
        deploy: to.id.clone(),
        root: to.root,
        seq: expected.map_or(1, |s| s + 1),
        updated: unix_now(),
    };
    store.swap_current(expected, &pointer).await?;
    Ok(pointer)
}

/// Makes an earlier deploy current again. Its root must still be in the store.
pub async fn rollback(
    store: &dyn Store,
    site: &str,
    to: &str,
) -> Result<CurrentPointer, PublishError> {
    validate_site(site).map_err(StoreError::from)?;
    let record = store
        .get_deploy(site, to)
        .await?
        .ok_or_else(|| PublishError::NoSuchDeploy {
            site: site.to_owned(),
            id: to.to_owned(),
        })?;
    if !store.has_object(&record.root).await? {
        return Err(PublishError::Source {
            path: PathBuf::from(crate::store::layout::object(&record.root)),
            why: format!("root tree of deploy {to} is missing from the store"),
        });
    }
    let current = store.get_current(site).await?;
    Ok(move_current(store, site, current.map(|c| c.seq), &record).await?)
}

fn progress_bar(show: bool, len: u64, what: &'static str) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{msg:>10} [{bar:30}] {pos}/{len} {per_sec}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what);
    bar
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    fn write(root: &Path, rel: &str, data: &[u8]) {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, data).unwrap();
    }

    #[tokio::test]
    async fn publish_to_memory_and_rollback() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "index.html", b"<h1>hi</h1>");
        write(dir.path(), "a/b/c.txt", b"c");
        write(dir.path(), "a/dup.txt", b"c");
        write(dir.path(), ".git/HEAD", b"ref");
        write(dir.path(), ".well-known/x", b"x");
        let store = MemoryStore::new();
        let opts = PublishOptions::default();
        let r1 = publish(&store, dir.path(), "docs", &opts).await.unwrap();
        assert_eq!(r1.deploy.files, 4, ".git skipped, .well-known kept");
        assert_eq!(r1.new_blobs, 3, "dup.txt shares c.txt's blob");
        assert_eq!(r1.new_trees, 4, "root, a, a/b, .well-known");
        let root = TreeNodeExt::root(&store, &r1.deploy.root).await;
        assert!(root.lookup(".git").is_none());
        assert!(root.lookup(".well-known").is_some());

        write(dir.path(), "index.html", b"<h1>v2</h1>");
        let r2 = publish(&store, dir.path(), "docs", &opts).await.unwrap();
        assert_eq!((r2.new_blobs, r2.new_trees), (1, 1));
        assert_eq!(store.get_current("docs").await.unwrap().unwrap().seq, 2);

        let back = rollback(&store, "docs", &r1.deploy.id).await.unwrap();
        assert_eq!(back.root, r1.deploy.root);
        assert_eq!(back.seq, 3);
        assert!(matches!(
            rollback(&store, "docs", "nope").await,
            Err(PublishError::NoSuchDeploy { .. })
        ));
    }

    struct TreeNodeExt;
    impl TreeNodeExt {
        async fn root(store: &MemoryStore, h: &Hash) -> tree::TreeNode {
            tree::TreeNode::decode(store.get_object(h).await.unwrap().unwrap()).unwrap()
        }
    }

    #[tokio::test]
    async fn refuses_escaping_symlink_and_fifo() {
        let outside = tempfile::tempdir().unwrap();
        write(outside.path(), "secret", b"s");
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "ok.txt", b"ok");
        std::os::unix::fs::symlink(outside.path().join("secret"), dir.path().join("leak")).unwrap();
        let store = MemoryStore::new();
        let err = publish(&store, dir.path(), "s", &PublishOptions::default())
            .await
            .unwrap_err();
        assert!(matches!(err, PublishError::SymlinkEscapes { .. }), "{err}");
        assert!(err.to_string().contains("leak"), "{err}");
        assert_eq!(store.object_count(), 0);

        fs::remove_file(dir.path().join("leak")).unwrap();
        std::os::unix::fs::symlink("ok.txt", dir.path().join("inside")).unwrap();
        std::os::unix::fs::symlink(".", dir.path().join("loop")).unwrap();
        let err = publish(&store, dir.path(), "s", &PublishOptions::default())
            .await
            .unwrap_err();
        assert!(matches!(err, PublishError::SymlinkCycle { .. }), "{err}");
        fs::remove_file(dir.path().join("loop")).unwrap();
        let r = publish(&store, dir.path(), "s", &PublishOptions::default())
            .await
            .unwrap();
        assert_eq!(r.deploy.files, 2, "a link inside the folder is followed");
    }
}
