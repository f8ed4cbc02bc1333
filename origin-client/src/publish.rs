//! Publishing a folder as a deploy: walk, hash, diff, upload, flip.
//!
//! 1. Walk the folder (symbolic links followed only when they stay inside it; version-control
//!    folders and `.DS_Store` skipped unless asked; sockets, FIFOs and devices refused).
//! 2. Hash every file, in parallel, bounded. With compression, plan the folders: a folder
//!    whose plain hash the previous deploy's index lists is reused as it is (see
//!    [`crate::reuse`]); the files of the others get their variants, reused from the
//!    previous deploy's nodes or made.
//! 3. Diff top-down: ask the store for the root node, then for the children of each node it
//!    lacks, a level at a time; a node it has is skipped with its whole subtree (objects are
//!    written bottom-up, so a node present implies its subtree). An unchanged re-publish
//!    costs one lookup, not one per file.
//! 4. Upload the missing blobs (bounded, parallel; large files in parts on S3); each upload
//!    is checked against the hash taken in step 2, so a file edited mid-publish is refused.
//! 5. Write the missing tree nodes bottom-up (a parent only after all its children).
//! 6. Write the deploy's index (with compression), the deploy record, then move `current` with a compare-and-swap on the sequence
//!    number read in step 1. A publish that dies before this leaves the previous deploy
//!    serving; its uploaded objects are reused by the next run.
//! 7. If a garbage collection ran meanwhile (the store's gc state changed), wait for it to
//!    finish, then check every object of the deploy and put back any it removed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};

use crate::Hash;
use crate::records::{CurrentPointer, DeployRecord, unix_now, validate_site};
use crate::reuse::{self, Index, IndexedDir, Lookup};
use crate::store::{GcState, Store, StoreError};
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
    /// Distinct objects (blobs and trees) the deploy references.
    pub objects: u64,
    /// Objects put back after a garbage collection that overlapped the publish removed
    /// them (normally 0).
    pub repaired: u64,
    /// Compressed variants (and the compiled rules) the store did not have.
    pub new_variants: u64,
    /// Files compressed in this publish, and files whose variants the previous deploy had.
    pub compressed: u64,
    pub reused_variants: u64,
    /// The deploy's index, if the store did not have it (see [`crate::reuse`]).
    pub new_index: u64,
    /// Folders reused from the previous deploy as they were, without being read.
    pub reused_folders: u64,
}

impl PublishReport {
    pub fn new_objects(&self) -> u64 {
        self.new_blobs + self.new_trees + self.new_variants + self.new_index
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

/// One directory node as built: its encoding, its hash, and what it holds. A node reused
/// from the previous deploy (see [`crate::reuse`]) has no bytes, files or sub-folders here:
/// it stands for its whole subtree, which the store holds.
struct BuiltNode {
    hash: Hash,
    bytes: Bytes,
    /// The encoding's length (the size its parent records).
    size: u64,
    reused: bool,
    /// Files (indices into the file list) and sub-folders (indices into the node list).
    files: Vec<usize>,
    dirs: Vec<usize>,
    /// Longest chain of sub-folders below it (0: none): a node is written after every node
    /// of a smaller height, so children always land before their parents.
    height: usize,
}

/// A folder planned for a publish with compression: the hash of its plain node (see
/// [`crate::reuse`]) and, when the previous deploy had a folder with the same content, that
/// folder, reused as it is.
struct Planned<'a> {
    plain: Hash,
    size: u64,
    reuse: Option<&'a IndexedDir>,
    /// The sub-folders' plans, in entry order.
    dirs: Vec<Planned<'a>>,
}

/// Plans `dir` and everything below it: plain nodes computed bottom-up, with no request.
fn plan<'a>(
    dir: &ScanDir,
    hashes: &[(Hash, u64)],
    rules: Option<Hash>,
    prev: Option<&'a Lookup>,
) -> Result<Planned<'a>, TreeError> {
    let mut entries = Vec::with_capacity(dir.entries.len());
    let mut dirs = Vec::new();
    for (name, node) in &dir.entries {
        let (kind, (hash, size)) = match node {
            ScanNode::File(i) => (EntryKind::File, hashes[*i]),
            ScanNode::Dir(sub) => {
                let p = plan(sub, hashes, None, prev)?;
                let hs = (p.plain, p.size);
                dirs.push(p);
                (EntryKind::Dir, hs)
            }
        };
        let e = OwnedEntry {
            name: name.clone(),
            kind,
            size,
            hash,
        };
        entries.push((e, Vec::new()));
    }
    let bytes = tree::encode_node(entries, rules)?;
    let plain = Hash::of(&bytes);
    Ok(Planned {
        plain,
        size: bytes.len() as u64,
        reuse: prev.and_then(|l| l.same_content(&plain)),
        dirs,
    })
}

/// The folders of a plan that are not reused (their paths) and their files: what the
/// publish builds again.
fn changed(
    dir: &ScanDir,
    plan: &Planned<'_>,
    path: &str,
    files: &mut Vec<usize>,
    paths: &mut Vec<String>,
) {
    if plan.reuse.is_some() {
        return;
    }
    paths.push(path.to_owned());
    let mut sub = plan.dirs.iter();
    for (name, node) in &dir.entries {
        match node {
            ScanNode::File(i) => files.push(*i),
            ScanNode::Dir(d) => {
                if let Some(p) = sub.next() {
                    changed(d, p, &reuse::join(path, name), files, paths);
                }
            }
        }
    }
}

/// What [`build_nodes`] records besides the nodes, for a publish with compression.
#[derive(Default)]
struct Recording {
    /// Every folder of the deploy, for its index.
    dirs: Vec<IndexedDir>,
    /// Variants recorded, by the hash of the file they compress.
    variants: HashMap<Hash, usize>,
}

/// Builds the tree nodes of `dir` into `nodes`, children before parents, recording each
/// compressible file's variants and, on the root, the compiled rules. With a plan, a folder
/// it reuses becomes a stand-in for the previous deploy's node, and `rec` gets every
/// folder's index entry. Returns the node's index (the root is the last node).
#[allow(clippy::too_many_arguments)]
fn build_nodes(
    dir: &ScanDir,
    hashes: &[(Hash, u64)],
    variants: &HashMap<Hash, Vec<tree::Variant>>,
    rules: Option<Hash>,
    plan: Option<&Planned<'_>>,
    path: &str,
    rec: &mut Recording,
    nodes: &mut Vec<BuiltNode>,
) -> Result<usize, TreeError> {
    if let Some(reused) = plan.and_then(|p| p.reuse.map(|r| (p, r))) {
        let (p, r) = reused;
        nodes.push(BuiltNode {
            hash: r.real,
            bytes: Bytes::new(),
            size: r.size,
            reused: true,
            files: Vec::new(),
            dirs: Vec::new(),
            height: 0,
        });
        record_reused(dir, hashes, p, path, rec);
        return Ok(nodes.len() - 1);
    }
    let mut entries = Vec::with_capacity(dir.entries.len());
    let (mut files, mut dirs, mut height) = (Vec::new(), Vec::new(), 0);
    let mut sub_plans = plan.map(|p| p.dirs.iter());
    let mut counts = String::with_capacity(dir.entries.len());
    for (name, node) in &dir.entries {
        let (kind, (hash, size)) = match node {
            ScanNode::File(i) => {
                files.push(*i);
                (EntryKind::File, hashes[*i])
            }
            ScanNode::Dir(sub) => {
                let sub_plan = sub_plans.as_mut().and_then(|it| it.next());
                let sub_path = reuse::join(path, name);
                let n = build_nodes(sub, hashes, variants, None, sub_plan, &sub_path, rec, nodes)?;
                dirs.push(n);
                height = height.max(nodes[n].height + 1);
                let child = &nodes[n];
                (EntryKind::Dir, (child.hash, child.size))
            }
        };
        let v = match variants.get(&hash) {
            Some(v) if kind == EntryKind::File && crate::compress::compressible(name) => v.clone(),
            _ => Vec::new(),
        };
        if kind == EntryKind::File {
            let n = rec.variants.entry(hash).or_default();
            *n = (*n).max(v.len());
        }
        counts.push(char::from(b'0' + v.len().min(9) as u8));
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
    if let Some(p) = plan {
        rec.dirs.push(IndexedDir {
            path: path.to_owned(),
            plain: p.plain,
            real: hash,
            size: bytes.len() as u64,
            variants: counts,
        });
    }
    nodes.push(BuiltNode {
        hash,
        size: bytes.len() as u64,
        bytes,
        reused: false,
        files,
        dirs,
        height,
    });
    Ok(nodes.len() - 1)
}

/// Records a reused folder and everything below it from the previous index: its entry (at
/// its new path) and the number of variants of each of its files.
fn record_reused(
    dir: &ScanDir,
    hashes: &[(Hash, u64)],
    plan: &Planned<'_>,
    path: &str,
    rec: &mut Recording,
) {
    // A reused folder's sub-folders have the content they had too, so the previous index
    // lists them; one it somehow does not is left out of the new index (a hint only).
    let Some(r) = plan.reuse else { return };
    let mut counts = r.variants.bytes();
    let mut sub = plan.dirs.iter();
    for (name, node) in &dir.entries {
        let n = counts
            .next()
            .map_or(0, |c| usize::from(c.saturating_sub(b'0')));
        match node {
            ScanNode::File(i) => {
                let v = rec.variants.entry(hashes[*i].0).or_default();
                *v = (*v).max(n);
            }
            ScanNode::Dir(d) => {
                if let Some(p) = sub.next() {
                    record_reused(d, hashes, p, &reuse::join(path, name), rec);
                }
            }
        }
    }
    rec.dirs.push(IndexedDir {
        path: path.to_owned(),
        ..r.clone()
    });
}

/// Files at most this large are sent without asking first whether the store has them: the
/// store skips an object it holds (a create-only write), so one request does both.
pub(crate) const DIRECT_PUT_MAX: u64 = 64 * 1024;

/// Files hashed per blocking task.
const HASH_BATCH: usize = 64;

/// What the top-down diff found missing from the store.
struct Missing {
    /// Node indices to write, each once.
    nodes: Vec<usize>,
    /// File indices to upload, one per distinct hash.
    files: Vec<usize>,
    /// A node reused from the previous deploy is not in the store (it was deleted since):
    /// the publish has to build it again.
    lost_reused: bool,
}

/// Walks the tree from the root, a level at a time, asking the store for each node. A node
/// the store has is skipped with its whole subtree (objects are written bottom-up, so its
/// subtree is there); a missing node is to be written and its children are looked at.
async fn diff_top_down(
    store: &dyn Store,
    nodes: &[BuiltNode],
    hashes: &[(Hash, u64)],
    concurrency: usize,
) -> Result<Missing, StoreError> {
    let root = nodes.len() - 1;
    let mut seen_nodes = HashSet::new();
    let mut seen_blobs = HashSet::new();
    let mut missing = Missing {
        nodes: Vec::new(),
        files: Vec::new(),
        lost_reused: false,
    };
    let mut level = vec![root];
    seen_nodes.insert(nodes[root].hash);
    while !level.is_empty() {
        let present: Vec<bool> = futures_util::stream::iter(level.clone())
            .map(|n| async move { store.has_object(&nodes[n].hash).await })
            .buffered(concurrency)
            .try_collect()
            .await?;
        let mut next = Vec::new();
        for (&n, present) in level.iter().zip(present) {
            if present {
                continue;
            }
            if nodes[n].reused {
                missing.lost_reused = true;
                continue;
            }
            missing.nodes.push(n);
            for &f in &nodes[n].files {
                if seen_blobs.insert(hashes[f].0) {
                    missing.files.push(f);
                }
            }
            for &d in &nodes[n].dirs {
                if seen_nodes.insert(nodes[d].hash) {
                    next.push(d);
                }
            }
        }
        level = next;
    }
    Ok(missing)
}

/// Uploads the files (bounded, parallel). Returns how many were new to the store.
async fn upload_files(
    store: &dyn Store,
    files: &[PathBuf],
    hashes: &[(Hash, u64)],
    which: &[usize],
    opts: &PublishOptions,
) -> Result<u64, StoreError> {
    let bar = progress_bar(opts.progress, which.len() as u64, "uploading");
    let new = futures_util::stream::iter(which.iter().copied())
        .map(|i| {
            let ((hash, size), path, bar) = (hashes[i], &files[i], &bar);
            async move {
                let new = if size > DIRECT_PUT_MAX && store.has_object(&hash).await? {
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
    Ok(new)
}

/// Writes tree nodes lowest first (every node of height h after all of height h-1), each
/// height in parallel. Returns how many were new.
async fn write_nodes(
    store: &dyn Store,
    nodes: &[BuiltNode],
    which: &[usize],
    concurrency: usize,
) -> Result<u64, StoreError> {
    let mut by_height: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for &n in which {
        by_height.entry(nodes[n].height).or_default().push(n);
    }
    let mut new = 0;
    for level in by_height.values() {
        new += futures_util::stream::iter(level.clone())
            .map(|n| async move {
                store
                    .put_object(&nodes[n].hash, nodes[n].bytes.clone())
                    .await
            })
            .buffer_unordered(concurrency)
            .try_fold(
                0u64,
                |acc, was_new| async move { Ok(acc + u64::from(was_new)) },
            )
            .await?;
    }
    Ok(new)
}

/// How long a publish or rollback that overlapped a garbage collection waits for it to
/// finish before checking its own objects.
pub const GC_WAIT: std::time::Duration = std::time::Duration::from_secs(30 * 60);

/// Whether a collection may have run between two reads of the gc state.
fn gc_overlapped(before: &Option<GcState>, after: &Option<GcState>) -> bool {
    before.as_ref().is_some_and(|s| s.running)
        || after.as_ref().is_some_and(|s| s.running)
        || before.as_ref().map(|s| s.version) != after.as_ref().map(|s| s.version)
}

/// Waits (bounded by [`GC_WAIT`]) until no collection is running, or the one marked as
/// running is stale ([`crate::gc::STALE`]).
pub async fn wait_for_gc(store: &dyn Store) -> Result<(), StoreError> {
    let deadline = tokio::time::Instant::now() + GC_WAIT;
    loop {
        match store.get_gc_state().await? {
            Some(s) if s.running && !crate::gc::is_stale(&s, unix_now()) => {}
            _ => return Ok(()),
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
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
    // A collection that overlaps this publish may delete an object the diff below finds
    // present; read its state now and again at the end to know.
    let gc_before = store.get_gc_state().await?;

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
    let mut hashed = futures_util::stream::iter((0..files.len()).step_by(HASH_BATCH))
        .map(|start| {
            let files = files.clone();
            async move {
                let end = (start + HASH_BATCH).min(files.len());
                let r = tokio::task::spawn_blocking(move || {
                    (start..end)
                        .map(|i| hash_file(&files[i]))
                        .collect::<Result<Vec<_>, _>>()
                })
                .await;
                (start, r)
            }
        })
        .buffer_unordered(opts.hash_concurrency.max(1));
    while let Some((start, r)) = hashed.next().await {
        let batch = r.map_err(|e| PublishError::Io {
            path: files[start].clone(),
            source: io::Error::other(e),
        })??;
        bar.inc(batch.len() as u64);
        for (k, h) in batch.into_iter().enumerate() {
            hashes[start + k] = h;
        }
    }
    bar.finish_and_clear();

    // Variants and the rules object are stored before any node that names them, so a node
    // in the store still implies its whole subtree (what the top-down diff relies on).
    let mut new_variants = 0;
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
    let concurrency = opts.upload_concurrency.max(1);
    let ctx = BuildContext {
        store,
        dir,
        root: &root,
        files: &files,
        hashes: &hashes,
        rules: rules_hash,
        levels: opts.compress,
        previous_root: previous.as_ref().map(|p| p.root),
        concurrency: opts.hash_concurrency.max(1),
    };
    let index = match (opts.compress, &previous) {
        (Some(levels), Some(p)) => load_index(store, site, p, levels).await,
        _ => None,
    };
    let mut built = ctx.build(index.as_ref()).await?;

    // Top-down: only the subtrees the store lacks are looked into; blobs first, then the
    // missing nodes bottom-up, so a node in the store always has its whole subtree.
    let mut missing = diff_top_down(store, &built.nodes, &hashes, concurrency).await?;
    if missing.lost_reused {
        tracing::warn!(
            "a folder unchanged since the previous deploy is no longer in the store; building every folder again"
        );
        built = ctx.build(None).await?;
        missing = diff_top_down(store, &built.nodes, &hashes, concurrency).await?;
    }
    new_variants += built.made.new_blobs;
    let new_blobs = upload_files(store, &files, &hashes, &missing.files, opts).await?;
    let new_trees = write_nodes(store, &built.nodes, &missing.nodes, concurrency).await?;
    let mut new_index = 0;
    let index_hash = match &built.index {
        Some(ix) => {
            let bytes = ix.encode();
            let h = Hash::of(&bytes);
            new_index += u64::from(store.put_object(&h, bytes).await?);
            Some(h)
        }
        None => None,
    };
    let root_hash = built.nodes[built.nodes.len() - 1].hash;
    let total_bytes: u64 = hashes.iter().map(|h| h.1).sum();

    let now = std::time::SystemTime::now();
    let record = DeployRecord {
        id: DeployRecord::new_id(&root_hash, now),
        site: site.to_owned(),
        root: root_hash,
        seq: previous_seq.map_or(1, |s| s + 1),
        created: unix_now(),
        files: files.len() as u64,
        bytes: total_bytes,
        index: index_hash,
    };
    store.put_deploy(&record).await?;
    move_current(store, site, previous_seq, &record).await?;

    // From here on every collection that starts keeps this deploy (it is current, and new).
    // One that overlapped may have deleted something the diff relied on: once it is done,
    // check every object of the deploy and put back what is missing.
    let gc_after = store.get_gc_state().await?;
    let mut repaired = 0;
    if gc_overlapped(&gc_before, &gc_after) {
        wait_for_gc(store).await?;
        // Reused nodes stand for subtrees this publish did not build: build them to check.
        if built.nodes.iter().any(|n| n.reused) {
            built = ctx.build(None).await?;
        }
        repaired = repair(store, &files, &hashes, &built.nodes, opts).await?;
    }

    let distinct_blobs: HashSet<Hash> = hashes.iter().map(|h| h.0).collect();
    let distinct_nodes: HashSet<Hash> = match &built.index {
        Some(ix) => ix.dirs.iter().map(|d| d.real).collect(),
        None => built.nodes.iter().map(|n| n.hash).collect(),
    };
    let compressible: HashSet<Hash> = built.compressible.iter().map(|&i| hashes[i].0).collect();
    Ok(PublishReport {
        objects: distinct_blobs.union(&distinct_nodes).count() as u64
            + built.variant_blobs
            + u64::from(rules_hash.is_some())
            + u64::from(index_hash.is_some()),
        deploy: record,
        previous_seq,
        new_blobs,
        new_trees,
        new_index,
        repaired,
        new_variants,
        compressed: built.made.compressed,
        reused_variants: (compressible.len() as u64).saturating_sub(built.made.compressed),
        reused_folders: built.nodes.iter().filter(|n| n.reused).count() as u64,
    })
}

/// What a publish builds its tree from.
struct BuildContext<'a> {
    store: &'a dyn Store,
    dir: &'a Path,
    root: &'a ScanDir,
    files: &'a [PathBuf],
    hashes: &'a [(Hash, u64)],
    rules: Option<Hash>,
    levels: Option<crate::compress::Levels>,
    previous_root: Option<Hash>,
    concurrency: usize,
}

/// A deploy's tree as built.
struct Built {
    nodes: Vec<BuiltNode>,
    made: crate::compress::Made,
    /// The deploy's index (with compression only).
    index: Option<Index>,
    /// Distinct variant blobs the deploy records.
    variant_blobs: u64,
    /// The files that are compressed (compressible and not too large).
    compressible: Vec<usize>,
}

impl BuildContext<'_> {
    /// Builds the tree: with compression, the variants first (made, or reused from the
    /// previous deploy), reusing the folders `prev` lists unchanged; without `prev`, reading
    /// the previous deploy's whole tree for the variants it recorded.
    async fn build(&self, prev: Option<&Lookup>) -> Result<Built, PublishError> {
        let bad_name = |source| PublishError::BadName {
            path: self.dir.to_owned(),
            source,
        };
        let mut nodes = Vec::new();
        let mut rec = Recording::default();
        let Some(levels) = self.levels else {
            let none = HashMap::new();
            build_nodes(
                self.root,
                self.hashes,
                &none,
                self.rules,
                None,
                "",
                &mut rec,
                &mut nodes,
            )
            .map_err(bad_name)?;
            return Ok(Built {
                nodes,
                made: crate::compress::Made::default(),
                index: None,
                variant_blobs: 0,
                compressible: Vec::new(),
            });
        };
        let plan = plan(self.root, self.hashes, self.rules, prev).map_err(bad_name)?;
        let (which, known) = match prev {
            Some(l) => {
                let (mut which, mut paths) = (Vec::new(), Vec::new());
                changed(self.root, &plan, "", &mut which, &mut paths);
                let before: Vec<Hash> = paths
                    .iter()
                    .filter_map(|p| l.at_path(p).map(|d| d.real))
                    .collect();
                let known =
                    crate::compress::recorded_in(self.store, &before, self.concurrency).await;
                (which, known)
            }
            None => {
                let known = match self.previous_root {
                    Some(r) => crate::compress::recorded(self.store, r).await,
                    None => HashMap::new(),
                };
                ((0..self.files.len()).collect(), known)
            }
        };
        let made = crate::compress::make(
            self.store,
            self.files,
            self.hashes,
            &which,
            known,
            levels,
            self.concurrency,
        )
        .await?;
        build_nodes(
            self.root,
            self.hashes,
            &made.variants,
            self.rules,
            Some(&plan),
            "",
            &mut rec,
            &mut nodes,
        )
        .map_err(bad_name)?;
        let compressible = (0..self.files.len())
            .filter(|&i| crate::compress::eligible(&self.files[i], self.hashes[i].1))
            .collect();
        Ok(Built {
            nodes,
            made,
            index: Some(Index::new(levels, rec.dirs)),
            variant_blobs: rec.variants.values().map(|&n| n as u64).sum(),
            compressible,
        })
    }
}

/// The previous deploy's index, when it has a usable one (a hint: anything wrong with it,
/// and the publish reads the previous deploy's tree instead).
async fn load_index(
    store: &dyn Store,
    site: &str,
    previous: &CurrentPointer,
    levels: crate::compress::Levels,
) -> Option<Lookup> {
    let why = match read_index(store, site, previous).await {
        Ok(Some(ix)) if ix.usable_at(levels) => return Some(Lookup::new(ix)),
        Ok(Some(_)) => "made with other compression levels".to_owned(),
        Ok(None) => return None,
        Err(e) => e,
    };
    tracing::info!(deploy = %previous.deploy, "not using the previous deploy's index: {why}");
    None
}

/// An error and its sources, `: `-separated.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

async fn read_index(
    store: &dyn Store,
    site: &str,
    previous: &CurrentPointer,
) -> Result<Option<Index>, String> {
    let record = store
        .get_deploy(site, &previous.deploy)
        .await
        .map_err(|e| chain(&e))?;
    let Some(h) = record
        .and_then(|r| (r.root == previous.root).then_some(r.index))
        .flatten()
    else {
        return Ok(None);
    };
    let bytes = match store.get_object(&h).await {
        Ok(Some(b)) => b,
        Ok(None) => return Err(format!("index {h} is not in the store")),
        Err(e) => return Err(chain(&e)),
    };
    if Hash::of(&bytes) != h {
        return Err(format!("index {h} does not match its hash"));
    }
    let ix = Index::decode(&bytes).map_err(|e| format!("index {h}: {e}"))?;
    match ix.dirs.iter().find(|d| d.path.is_empty()) {
        Some(d) if d.real == previous.root => Ok(Some(ix)),
        _ => Err(format!(
            "index {h} does not describe root {}",
            previous.root
        )),
    }
}

/// Checks every object of a deploy being published and stores what is missing: blobs
/// first, then nodes lowest first. Returns how many objects were put back.
async fn repair(
    store: &dyn Store,
    files: &[PathBuf],
    hashes: &[(Hash, u64)],
    nodes: &[BuiltNode],
    opts: &PublishOptions,
) -> Result<u64, StoreError> {
    let concurrency = opts.upload_concurrency.max(1);
    let mut seen = HashSet::new();
    let blobs: Vec<usize> = (0..files.len())
        .filter(|&i| seen.insert(hashes[i].0))
        .collect();
    let lost_blobs: Vec<usize> = futures_util::stream::iter(blobs)
        .map(|i| async move { Ok::<_, StoreError>((i, store.has_object(&hashes[i].0).await?)) })
        .buffer_unordered(concurrency)
        .try_filter_map(|(i, present)| async move { Ok((!present).then_some(i)) })
        .try_collect()
        .await?;
    let mut seen = HashSet::new();
    let all_nodes: Vec<usize> = (0..nodes.len())
        .filter(|&n| seen.insert(nodes[n].hash))
        .collect();
    let lost_nodes: Vec<usize> = futures_util::stream::iter(all_nodes)
        .map(|n| async move { Ok::<_, StoreError>((n, store.has_object(&nodes[n].hash).await?)) })
        .buffer_unordered(concurrency)
        .try_filter_map(|(n, present)| async move { Ok((!present).then_some(n)) })
        .try_collect()
        .await?;
    if !lost_blobs.is_empty() || !lost_nodes.is_empty() {
        tracing::warn!(
            blobs = lost_blobs.len(),
            nodes = lost_nodes.len(),
            "a garbage collection overlapped this publish and removed objects it reuses; putting them back"
        );
    }
    upload_files(store, files, hashes, &lost_blobs, opts).await?;
    write_nodes(store, nodes, &lost_nodes, concurrency).await?;
    Ok((lost_blobs.len() + lost_nodes.len()) as u64)
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

/// Makes an earlier deploy current again. Its root must still be in the store. If a garbage
/// collection overlapped the move, waits for it and checks the deploy is still whole; if it
/// is not, the pointer is moved back and the rollback fails.
pub async fn rollback(
    store: &dyn Store,
    site: &str,
    to: &str,
) -> Result<CurrentPointer, PublishError> {
    validate_site(site).map_err(StoreError::from)?;
    let gc_before = store.get_gc_state().await?;
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
    let moved = move_current(store, site, current.as_ref().map(|c| c.seq), &record).await?;
    let gc_after = store.get_gc_state().await?;
    if gc_overlapped(&gc_before, &gc_after) {
        wait_for_gc(store).await?;
        if !crate::gc::is_whole(store, &record.root, 16).await? {
            let mut why = format!(
                "a garbage collection that ran at the same time removed objects of deploy {to}"
            );
            if let Some(prev) = current {
                let back = CurrentPointer {
                    seq: moved.seq + 1,
                    updated: unix_now(),
                    ..prev
                };
                match store.swap_current(Some(moved.seq), &back).await {
                    Ok(()) => why.push_str(&format!("; current is back on {}", back.deploy)),
                    Err(e) => why.push_str(&format!("; moving current back failed: {e}")),
                }
            }
            return Err(PublishError::Source {
                path: PathBuf::from(crate::store::layout::current(site)),
                why,
            });
        }
    }
    Ok(moved)
}

pub(crate) fn progress_bar(show: bool, len: u64, what: &'static str) -> indicatif::ProgressBar {
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

    /// 20 folders of 5 text files (each compresses) and a picture.
    fn text_site(root: &Path, tag: &str) {
        for d in 0..20 {
            for f in 0..5 {
                let body = format!("<p>{tag} folder {d} file {f}</p>\n").repeat(40);
                write(root, &format!("d{d}/p{f}.html"), body.as_bytes());
            }
        }
        write(root, "d0/img.png", &[0x89; 300]);
    }

    /// What publishing `dir` into an empty store gives: the root and the object count.
    async fn fresh(dir: &Path) -> (Hash, u64) {
        let r = publish(&MemoryStore::new(), dir, "s", &PublishOptions::default())
            .await
            .unwrap();
        (r.deploy.root, r.objects)
    }

    /// With compression, a re-publish reuses the folders that did not change through the
    /// previous deploy's index: a handful of store requests unchanged, a few more per changed
    /// folder, and the very tree (and object count) a publish into an empty store makes.
    #[tokio::test]
    async fn a_republish_reuses_unchanged_folders_through_the_index() {
        use crate::store::CountingStore;
        let dir = tempfile::tempdir().unwrap();
        text_site(dir.path(), "v1");
        let inner = Arc::new(MemoryStore::new());
        let store = CountingStore::new(inner.clone());
        let opts = PublishOptions::default();
        let r1 = publish(&store, dir.path(), "s", &opts).await.unwrap();
        assert_eq!((r1.compressed, r1.reused_folders), (100, 0));
        assert_eq!(r1.new_index, 1);
        assert_eq!(
            r1.objects,
            inner.object_count() as u64,
            "every object counted"
        );
        let index = r1
            .deploy
            .index
            .expect("a deploy with compression has an index");
        assert!(inner.has_object(&index).await.unwrap());

        let before = store.ops();
        let r2 = publish(&store, dir.path(), "s", &opts).await.unwrap();
        let unchanged_ops = store.ops() - before;
        assert_eq!(r2.deploy.root, r1.deploy.root);
        assert_eq!((r2.compressed, r2.reused_variants), (0, 100));
        assert_eq!(r2.reused_folders, 1, "the root stands for everything");
        assert_eq!(r2.new_objects(), 0);
        assert_eq!(r2.objects, r1.objects);
        // current, gc state, deploy record, index, root, deploy record, current (read and
        // swap), gc state: no request per folder.
        assert!(unchanged_ops <= 12, "{unchanged_ops} store operations");

        write(dir.path(), "d3/p1.html", &b"<p>changed</p>".repeat(50));
        write(dir.path(), "d7/new.css", &b"body { margin: 0 } ".repeat(30));
        let before = store.ops();
        let r3 = publish(&store, dir.path(), "s", &opts).await.unwrap();
        let changed_ops = store.ops() - before;
        assert_eq!(r3.compressed, 2, "only the new contents");
        assert_eq!(r3.reused_folders, 18, "every folder but d3 and d7");
        assert_eq!((r3.deploy.root, r3.objects), fresh(dir.path()).await);
        // 4 reads to start (current, gc state, record, index); the previous root, d3 and
        // d7 read for their variants; 2 x 3 variants looked up and written; the diff asks
        // for the root and its 20 folders; the 11 files of d3 and d7 sent (small files
        // without asking first), 3 nodes and the index written; 4 to finish. About 60,
        // where reading the previous tree alone would be 21 and grows with every folder.
        assert!(changed_ops <= 70, "{changed_ops} store operations");
        assert!(
            crate::gc::is_whole(&store, &r3.deploy.root, 4)
                .await
                .unwrap()
        );

        // A reused folder the store lost (deleted by hand, say) is built again.
        let root =
            crate::TreeNode::decode(inner.get_object(&r3.deploy.root).await.unwrap().unwrap())
                .unwrap();
        let d5 = root.lookup("d5").unwrap().hash;
        inner.delete_object(&d5).await.unwrap();
        write(dir.path(), "d9/p0.html", &b"<p>again</p>".repeat(50));
        let r4 = publish(&store, dir.path(), "s", &opts).await.unwrap();
        assert_eq!(r4.reused_folders, 0, "built again: {r4:?}");
        assert_eq!((r4.deploy.root, r4.objects), fresh(dir.path()).await);
        assert!(inner.has_object(&d5).await.unwrap(), "d5 written back");
        assert!(
            crate::gc::is_whole(&store, &r4.deploy.root, 4)
                .await
                .unwrap()
        );

        // An index made at other levels is not used; the tree is read instead.
        let fast = PublishOptions {
            compress: Some(crate::compress::Levels::FAST),
            ..PublishOptions::default()
        };
        let r5 = publish(&store, dir.path(), "s", &fast).await.unwrap();
        assert_eq!(r5.reused_folders, 0);
        assert_eq!(
            r5.compressed, 0,
            "variants still come from the previous tree"
        );
        assert!(
            crate::gc::is_whole(&store, &r5.deploy.root, 4)
                .await
                .unwrap()
        );
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
