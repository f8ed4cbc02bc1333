//! Publishing a folder as a deploy: walk, hash, diff, upload, flip.
//!
//! 1. Walk the folder (symbolic links followed only when they stay inside it; version-control
//!    folders and `.DS_Store` skipped unless asked; sockets, FIFOs and devices refused).
//! 2. Hash every file, in parallel, bounded.
//! 3. Diff top-down: ask the store for the root node, then for the children of each node it
//!    lacks, a level at a time; a node it has is skipped with its whole subtree (objects are
//!    written bottom-up, so a node present implies its subtree). An unchanged re-publish
//!    costs one lookup, not one per file.
//! 4. Upload the missing blobs (bounded, parallel; large files in parts on S3); each upload
//!    is checked against the hash taken in step 2, so a file edited mid-publish is refused.
//! 5. Write the missing tree nodes bottom-up (a parent only after all its children).
//! 6. Write the deploy record, then move `current` with a compare-and-swap on the sequence
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

/// One directory node as built: its encoding, its hash, and what it holds.
struct BuiltNode {
    hash: Hash,
    bytes: Bytes,
    /// Files (indices into the file list) and sub-folders (indices into the node list).
    files: Vec<usize>,
    dirs: Vec<usize>,
    /// Longest chain of sub-folders below it (0: none): a node is written after every node
    /// of a smaller height, so children always land before their parents.
    height: usize,
}

/// Builds the tree nodes of `dir` into `nodes`, children before parents, recording each
/// compressible file's variants and, on the root, the compiled rules. Returns the node's
/// index (the root is the last node).
fn build_nodes(
    dir: &ScanDir,
    hashes: &[(Hash, u64)],
    variants: &HashMap<Hash, Vec<tree::Variant>>,
    rules: Option<Hash>,
    nodes: &mut Vec<BuiltNode>,
) -> Result<usize, TreeError> {
    let mut entries = Vec::with_capacity(dir.entries.len());
    let (mut files, mut dirs, mut height) = (Vec::new(), Vec::new(), 0);
    for (name, node) in &dir.entries {
        let (kind, (hash, size)) = match node {
            ScanNode::File(i) => {
                files.push(*i);
                (EntryKind::File, hashes[*i])
            }
            ScanNode::Dir(sub) => {
                let n = build_nodes(sub, hashes, variants, None, nodes)?;
                dirs.push(n);
                height = height.max(nodes[n].height + 1);
                let child = &nodes[n];
                (EntryKind::Dir, (child.hash, child.bytes.len() as u64))
            }
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
    nodes.push(BuiltNode {
        hash: Hash::of(&bytes),
        bytes,
        files,
        dirs,
        height,
    });
    Ok(nodes.len() - 1)
}

/// Files at most this large are sent without asking first whether the store has them: the
/// store skips an object it holds (a create-only write), so one request does both.
const DIRECT_PUT_MAX: u64 = 64 * 1024;

/// Files hashed per blocking task.
const HASH_BATCH: usize = 64;

/// What the top-down diff found missing from the store.
struct Missing {
    /// Node indices to write, each once.
    nodes: Vec<usize>,
    /// File indices to upload, one per distinct hash.
    files: Vec<usize>,
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
    let root_index =
        build_nodes(&root, &hashes, &made.variants, rules_hash, &mut nodes).map_err(|source| {
            PublishError::BadName {
                path: dir.to_owned(),
                source,
            }
        })?;
    let root_hash = nodes[root_index].hash;
    let total_bytes: u64 = hashes.iter().map(|h| h.1).sum();
    let concurrency = opts.upload_concurrency.max(1);

    // Top-down: only the subtrees the store lacks are looked into; blobs first, then the
    // missing nodes bottom-up, so a node in the store always has its whole subtree.
    let missing = diff_top_down(store, &nodes, &hashes, concurrency).await?;
    let new_blobs = upload_files(store, &files, &hashes, &missing.files, opts).await?;
    let new_trees = write_nodes(store, &nodes, &missing.nodes, concurrency).await?;

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

    // From here on every collection that starts keeps this deploy (it is current, and new).
    // One that overlapped may have deleted something the diff relied on: once it is done,
    // check every object of the deploy and put back what is missing.
    let gc_after = store.get_gc_state().await?;
    let mut repaired = 0;
    if gc_overlapped(&gc_before, &gc_after) {
        wait_for_gc(store).await?;
        repaired = repair(store, &files, &hashes, &nodes, opts).await?;
    }

    let distinct_blobs: HashSet<Hash> = hashes.iter().map(|h| h.0).collect();
    let distinct_nodes: HashSet<Hash> = nodes.iter().map(|n| n.hash).collect();
    Ok(PublishReport {
        objects: distinct_blobs.union(&distinct_nodes).count() as u64
            + made.blobs
            + u64::from(rules_hash.is_some()),
        deploy: record,
        previous_seq,
        new_blobs,
        new_trees,
        repaired,
        new_variants,
        compressed: made.compressed,
        reused_variants: made.reused,
    })
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
