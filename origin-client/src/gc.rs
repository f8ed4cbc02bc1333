//! Garbage collection and consistency checks, sharing one mark phase.
//!
//! **Kept deploys**: for every site, the current deploy, the newest `keep` deploys, and
//! every deploy created within `grace`. **Mark**: every object reachable from a kept
//! deploy's root (tree nodes fetched, verified and decoded; `fsck` also reads and verifies
//! every blob), and the publish index a kept deploy's record names (a hint for the next
//! publish, see [`crate::reuse`]: kept, not checked). **Sweep** (`gc`): every listed object
//! that is neither marked nor younger than `grace` is deleted.
//!
//! Publishing and rollback run alongside: a collection announces itself in `gc/state`
//! (a compare-and-swap record, its `version` bumped on start, on every heartbeat and at the
//! end), and a publish or rollback that sees that state change across its own run waits for
//! the collection to finish and then checks (and repairs) the objects it relies on. Objects
//! younger than `grace` are never deleted, so the uploads of a publish in flight, whose
//! deploy record does not exist yet, survive.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};

use crate::Hash;
use crate::records::{DeployRecord, unix_now, validate_site};
use crate::store::{GcState, Store, StoreError};
use crate::tree::{EntryKind, TreeNode};

/// A running collection that has not shown a heartbeat for this long is taken as dead.
pub const STALE: Duration = Duration::from_secs(10 * 60);
/// How often a running collection refreshes its state.
const HEARTBEAT: Duration = Duration::from_secs(30);

pub fn is_stale(s: &GcState, now: u64) -> bool {
    now.saturating_sub(s.updated) > STALE.as_secs()
}

/// Which deploys are kept.
#[derive(Debug, Clone, Copy)]
pub struct KeepRule {
    /// The newest N deploys of each site (the current one is kept as well).
    pub keep: usize,
    /// Deploys created within this long ago, and objects written within it.
    pub grace: Duration,
}

impl Default for KeepRule {
    fn default() -> Self {
        KeepRule {
            keep: 10,
            grace: Duration::from_secs(24 * 3600),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GcError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "another garbage collection is running (started {started}, last heartbeat {updated}); try again later"
    )]
    Busy { started: String, updated: String },
    #[error("another garbage collection took over the gc state; stopping")]
    LostLease,
    #[error(
        "kept deploys are damaged ({problems} missing or corrupt objects, e.g. {example}); nothing was deleted: run `edge fsck` and re-publish or roll back the damaged sites first"
    )]
    Damaged { problems: usize, example: String },
}

/// A deploy the mark phase walks.
#[derive(Debug, Clone)]
pub struct KeptDeploy {
    pub site: String,
    pub deploy: String,
    pub root: Hash,
    pub current: bool,
    /// The deploy's publish index ([`crate::reuse`]): kept with it, not walked.
    pub index: Option<Hash>,
}

/// The kept deploys of `sites` (every site when `None`).
pub async fn kept_deploys(
    store: &dyn Store,
    only_site: Option<&str>,
    rule: Option<KeepRule>,
    now: u64,
) -> Result<Vec<KeptDeploy>, StoreError> {
    let sites = match only_site {
        Some(s) => {
            validate_site(s)?;
            vec![s.to_owned()]
        }
        None => store.list_sites().await?,
    };
    let mut out = Vec::new();
    for site in sites {
        let deploys = store.list_deploys(&site).await?;
        let current = store.get_current(&site).await?;
        let n = deploys.len();
        let mut seen = HashSet::new();
        for (i, d) in deploys.iter().enumerate() {
            let is_current = current.as_ref().is_some_and(|c| c.deploy == d.id);
            let keep = match rule {
                None => true,
                Some(r) => {
                    is_current
                        || i + r.keep >= n
                        || d.created.saturating_add(r.grace.as_secs()) >= now
                }
            };
            if keep {
                seen.insert(d.id.clone());
                out.push(kept(&site, d, is_current));
            }
        }
        // A pointer whose record is missing still names a root that must stay.
        if let Some(c) = current
            && !seen.contains(&c.deploy)
        {
            out.push(KeptDeploy {
                site: site.clone(),
                deploy: c.deploy,
                root: c.root,
                current: true,
                index: None,
            });
        }
    }
    Ok(out)
}

fn kept(site: &str, d: &DeployRecord, current: bool) -> KeptDeploy {
    KeptDeploy {
        site: site.to_owned(),
        deploy: d.id.clone(),
        root: d.root,
        current,
        index: d.index,
    }
}

/// What is wrong with a reachable object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    Missing,
    /// Bytes that do not match the hash, a tree node that does not decode, or a size other
    /// than its entry says.
    Corrupt(String),
}

#[derive(Debug, Clone)]
pub struct Problem {
    pub hash: Hash,
    pub kind: EntryKind,
    pub fault: Fault,
}

/// The result of a mark: every object reached, and what was wrong.
#[derive(Debug, Default)]
pub struct Marked {
    /// Every reachable object and its kind.
    pub reached: HashMap<Hash, EntryKind>,
    pub problems: Vec<Problem>,
    /// Who refers to each object: (parent node, entry name). For naming paths in reports.
    parents: HashMap<Hash, Vec<(Hash, String)>>,
}

impl Marked {
    /// One path from a root in `roots` to `hash` per root that reaches it.
    pub fn paths_to(&self, hash: &Hash, roots: &HashSet<Hash>) -> BTreeMap<Hash, String> {
        let mut out = BTreeMap::new();
        // Breadth-first up the parent links; each node visited once.
        let mut queue = std::collections::VecDeque::from([(*hash, String::new())]);
        let mut visited = HashSet::from([*hash]);
        while let Some((h, path)) = queue.pop_front() {
            if roots.contains(&h) {
                out.entry(h).or_insert_with(|| {
                    if path.is_empty() {
                        "/".to_owned()
                    } else {
                        path.clone()
                    }
                });
            }
            for (parent, name) in self.parents.get(&h).into_iter().flatten() {
                if visited.insert(*parent) {
                    let p = if path.is_empty() {
                        format!("/{name}")
                    } else {
                        format!("/{name}{path}")
                    };
                    queue.push_back((*parent, p));
                }
            }
        }
        out
    }
}

/// How deep the mark looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Depth {
    /// Tree nodes fetched and decoded; blobs only noted (gc).
    Trees,
    /// Every blob read and checked against its hash and size too (fsck).
    Everything,
}

/// Marks every object reachable from `roots`, a level at a time, `concurrency` fetches at
/// once. Store errors other than "not found" and bad bytes stop the walk.
pub async fn mark(
    store: &dyn Store,
    roots: &[Hash],
    depth: Depth,
    concurrency: usize,
    progress: bool,
) -> Result<Marked, StoreError> {
    let mut marked = Marked::default();
    let bar = crate::publish::progress_bar(progress, roots.len() as u64, "checking");
    let mut level: Vec<(Hash, EntryKind, u64)> = Vec::new();
    for r in roots {
        if marked.reached.insert(*r, EntryKind::Dir).is_none() {
            level.push((*r, EntryKind::Dir, u64::MAX));
        }
    }
    bar.set_length(level.len() as u64);
    while !level.is_empty() {
        let fetched: Vec<_> = futures_util::stream::iter(level)
            .map(|(hash, kind, size)| async move {
                let r = match kind {
                    EntryKind::Dir => fetch_node(store, &hash, size).await,
                    EntryKind::File => check_blob(store, &hash, size)
                        .await
                        .map(|f| f.map_or(Ok(None), Err)),
                };
                (hash, kind, r)
            })
            .buffer_unordered(concurrency.max(1))
            .collect()
            .await;
        let mut next = Vec::new();
        for (hash, kind, r) in fetched {
            bar.inc(1);
            match r? {
                Err(fault) => marked.problems.push(Problem { hash, kind, fault }),
                Ok(None) => {}
                Ok(Some(node)) => {
                    // Every object the node names: its entries, their compressed variants
                    // and the deploy's compiled rules (`references` lists them all), so a
                    // collection never removes a variant or the rules of a kept deploy.
                    let mut named: Vec<(Hash, EntryKind, u64, String)> = Vec::new();
                    for (i, e) in node.iter().enumerate() {
                        named.push((e.hash, e.kind, e.size, e.name.to_owned()));
                        for v in node.variants(i) {
                            let name = format!("{} ({:?} variant)", e.name, v.coding);
                            named.push((v.hash, EntryKind::File, v.size, name));
                        }
                    }
                    if let Some(r) = node.rules() {
                        named.push((
                            r,
                            EntryKind::File,
                            u64::MAX,
                            "_redirects/_headers (compiled)".into(),
                        ));
                    }
                    debug_assert_eq!(named.len(), node.references().count());
                    for (h, kind, size, name) in named {
                        marked.parents.entry(h).or_default().push((hash, name));
                        if marked.reached.insert(h, kind).is_some() {
                            continue;
                        }
                        match (kind, depth) {
                            (EntryKind::Dir, _) | (EntryKind::File, Depth::Everything) => {
                                next.push((h, kind, size));
                            }
                            (EntryKind::File, Depth::Trees) => {}
                        }
                    }
                }
            }
        }
        bar.inc_length(next.len() as u64);
        level = next;
    }
    bar.finish_and_clear();
    Ok(marked)
}

/// A tree node, fetched, verified and decoded; or what is wrong with it.
async fn fetch_node(
    store: &dyn Store,
    hash: &Hash,
    size: u64,
) -> Result<Result<Option<TreeNode>, Fault>, StoreError> {
    let bytes = match store.get_object(hash).await {
        Ok(Some(b)) => b,
        Ok(None) => return Ok(Err(Fault::Missing)),
        Err(StoreError::Corrupt { .. }) => {
            return Ok(Err(Fault::Corrupt("bytes do not match the hash".into())));
        }
        Err(e) => return Err(e),
    };
    if size != u64::MAX && bytes.len() as u64 != size {
        return Ok(Err(Fault::Corrupt(format!(
            "{} bytes, its entry says {size}",
            bytes.len()
        ))));
    }
    match TreeNode::decode(bytes) {
        Ok(n) => Ok(Ok(Some(n))),
        Err(e) => Ok(Err(Fault::Corrupt(format!("not a tree node: {e}")))),
    }
}

/// Reads a blob through and checks its hash and size. `Ok(None)` when it is whole.
async fn check_blob(
    store: &dyn Store,
    hash: &Hash,
    size: u64,
) -> Result<Option<Fault>, StoreError> {
    let Some(mut body) = store.open_object(hash).await? else {
        return Ok(Some(Fault::Missing));
    };
    let mut hasher = blake3::Hasher::new();
    let mut got = 0u64;
    while let Some(chunk) = body.stream.next().await {
        let chunk = chunk.map_err(|e| StoreError::from_body(e, &format!("object {hash}")))?;
        got += chunk.len() as u64;
        hasher.update(&chunk);
    }
    // `u64::MAX`: an object whose size no entry declares (a deploy's compiled rules).
    if size != u64::MAX && got != size {
        return Ok(Some(Fault::Corrupt(format!(
            "{got} bytes, its entry says {size}"
        ))));
    }
    if Hash::from(hasher.finalize()) != *hash {
        return Ok(Some(Fault::Corrupt("bytes do not match the hash".into())));
    }
    Ok(None)
}

/// Options of a collection.
#[derive(Debug, Clone, Copy)]
pub struct GcOptions {
    pub rule: KeepRule,
    pub dry_run: bool,
    pub concurrency: usize,
    pub progress: bool,
}

/// What a collection did (or, dry, would do).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    pub sites: usize,
    pub kept_deploys: usize,
    pub objects: usize,
    pub reachable: usize,
    /// Unreachable but written within the grace period.
    pub young: usize,
    pub deleted: usize,
    pub deleted_bytes: u64,
    pub kept_bytes: u64,
}

/// Collects garbage: see the module docs.
pub async fn collect(store: &dyn Store, opts: &GcOptions) -> Result<GcReport, GcError> {
    collect_at(store, opts, unix_now()).await
}

/// [`collect`] as if the clock read `now` (Unix seconds) for the grace period.
pub async fn collect_at(
    store: &dyn Store,
    opts: &GcOptions,
    now: u64,
) -> Result<GcReport, GcError> {
    let lease = if opts.dry_run {
        None
    } else {
        Some(Lease::take(store, opts.rule).await?)
    };
    let result = sweep(store, opts, lease.as_ref(), now).await;
    if let Some(lease) = lease {
        let ended = lease.end(store).await;
        // The sweep's error is the one to report; a failed end is reported when all else
        // went well (a later collection takes over a stale state).
        let report = result?;
        ended?;
        return Ok(report);
    }
    result
}

async fn sweep(
    store: &dyn Store,
    opts: &GcOptions,
    lease: Option<&Lease>,
    now: u64,
) -> Result<GcReport, GcError> {
    let kept = kept_deploys(store, None, Some(opts.rule), now).await?;
    let roots: Vec<Hash> = kept.iter().map(|k| k.root).collect();
    let marked = mark(store, &roots, Depth::Trees, opts.concurrency, opts.progress).await?;
    if let Some(p) = marked.problems.first() {
        return Err(GcError::Damaged {
            problems: marked.problems.len(),
            example: format!("{:?} {}", p.fault, p.hash),
        });
    }
    let listed = store.list_objects().await?;
    let cutoff = now.saturating_sub(opts.rule.grace.as_secs());
    let sites: HashSet<&str> = kept.iter().map(|k| k.site.as_str()).collect();
    let mut report = GcReport {
        sites: sites.len(),
        kept_deploys: kept.len(),
        objects: listed.len(),
        ..GcReport::default()
    };
    let indexes: HashSet<Hash> = kept.iter().filter_map(|k| k.index).collect();
    let mut doomed = Vec::new();
    for o in &listed {
        if marked.reached.contains_key(&o.hash) || indexes.contains(&o.hash) {
            report.reachable += 1;
            report.kept_bytes += o.size;
        } else if o.modified >= cutoff {
            report.young += 1;
            report.kept_bytes += o.size;
        } else {
            doomed.push(*o);
        }
    }
    report.deleted = doomed.len();
    report.deleted_bytes = doomed.iter().map(|o| o.size).sum();
    if opts.dry_run {
        return Ok(report);
    }
    let bar = crate::publish::progress_bar(opts.progress, doomed.len() as u64, "deleting");
    for chunk in doomed.chunks(1000) {
        if let Some(lease) = lease {
            lease.heartbeat(store).await?;
        }
        let hashes: Vec<Hash> = chunk.iter().map(|o| o.hash).collect();
        futures_util::stream::iter(hashes)
            .map(|h| async move { store.delete_object(&h).await })
            .buffer_unordered(opts.concurrency.max(1))
            .inspect_ok(|_| bar.inc(1))
            .try_collect::<Vec<()>>()
            .await?;
    }
    bar.finish_and_clear();
    Ok(report)
}

/// A running collection's hold on `gc/state`.
struct Lease {
    version: AtomicU64,
    started: u64,
    last_beat: std::sync::Mutex<std::time::Instant>,
    rule: KeepRule,
}

impl Lease {
    async fn take(store: &dyn Store, rule: KeepRule) -> Result<Lease, GcError> {
        let now = unix_now();
        let current = store.get_gc_state().await?;
        if let Some(s) = &current
            && s.running
            && !is_stale(s, now)
        {
            return Err(GcError::Busy {
                started: crate::records::utc_display(s.started),
                updated: crate::records::utc_display(s.updated),
            });
        }
        let expected = current.as_ref().map(|s| s.version);
        let version = expected.map_or(1, |v| v + 1);
        let state = GcState {
            version,
            running: true,
            started: now,
            updated: now,
            keep: Some(rule.keep as u64),
            grace_secs: Some(rule.grace.as_secs()),
        };
        if !store.swap_gc_state(expected, &state).await? {
            return Err(GcError::Busy {
                started: "just now".into(),
                updated: "just now".into(),
            });
        }
        Ok(Lease {
            version: AtomicU64::new(version),
            started: now,
            last_beat: std::sync::Mutex::new(std::time::Instant::now()),
            rule,
        })
    }

    fn state(&self, version: u64, running: bool) -> GcState {
        GcState {
            version,
            running,
            started: self.started,
            updated: unix_now(),
            keep: Some(self.rule.keep as u64),
            grace_secs: Some(self.rule.grace.as_secs()),
        }
    }

    async fn bump(&self, store: &dyn Store, running: bool) -> Result<(), GcError> {
        let v = self.version.load(Ordering::SeqCst);
        if !store
            .swap_gc_state(Some(v), &self.state(v + 1, running))
            .await?
        {
            return Err(GcError::LostLease);
        }
        self.version.store(v + 1, Ordering::SeqCst);
        Ok(())
    }

    async fn heartbeat(&self, store: &dyn Store) -> Result<(), GcError> {
        let due = {
            let last = self.last_beat.lock().unwrap_or_else(|p| p.into_inner());
            last.elapsed() >= HEARTBEAT
        };
        if due {
            self.bump(store, true).await?;
            *self.last_beat.lock().unwrap_or_else(|p| p.into_inner()) = std::time::Instant::now();
        }
        Ok(())
    }

    async fn end(self, store: &dyn Store) -> Result<(), GcError> {
        self.bump(store, false).await
    }
}

/// One damaged object as reported by [`fsck`], with the deploys that reach it.
#[derive(Debug, Clone)]
pub struct Damage {
    pub hash: Hash,
    pub kind: EntryKind,
    pub fault: Fault,
    /// (site, deploy, path from the deploy's root).
    pub reached_from: Vec<(String, String, String)>,
}

#[derive(Debug, Clone, Default)]
pub struct FsckReport {
    pub deploys: Vec<KeptDeploy>,
    pub objects: usize,
    pub damage: Vec<Damage>,
}

/// Checks every kept deploy (of `site`, or of every site): every reachable object read and
/// verified. Kept as the last collection kept them (its `keep` and grace, from `gc/state`),
/// or every deploy when no collection has run.
pub async fn fsck(
    store: &dyn Store,
    site: Option<&str>,
    concurrency: usize,
    progress: bool,
) -> Result<FsckReport, StoreError> {
    let rule = store.get_gc_state().await?.and_then(|s| {
        Some(KeepRule {
            keep: usize::try_from(s.keep?).unwrap_or(usize::MAX),
            grace: Duration::from_secs(s.grace_secs?),
        })
    });
    let deploys = kept_deploys(store, site, rule, unix_now()).await?;
    let roots: Vec<Hash> = deploys.iter().map(|d| d.root).collect();
    let marked = mark(store, &roots, Depth::Everything, concurrency, progress).await?;
    let root_set: HashSet<Hash> = roots.iter().copied().collect();
    let mut by_root: HashMap<Hash, Vec<&KeptDeploy>> = HashMap::new();
    for d in &deploys {
        by_root.entry(d.root).or_default().push(d);
    }
    let mut damage: Vec<Damage> = marked
        .problems
        .iter()
        .map(|p| {
            let mut reached_from = Vec::new();
            for (root, path) in marked.paths_to(&p.hash, &root_set) {
                for d in by_root.get(&root).into_iter().flatten() {
                    reached_from.push((d.site.clone(), d.deploy.clone(), path.clone()));
                }
            }
            reached_from.sort();
            Damage {
                hash: p.hash,
                kind: p.kind,
                fault: p.fault.clone(),
                reached_from,
            }
        })
        .collect();
    damage.sort_by(|a, b| {
        a.reached_from
            .cmp(&b.reached_from)
            .then(a.hash.cmp(&b.hash))
    });
    Ok(FsckReport {
        objects: marked.reached.len(),
        deploys,
        damage,
    })
}

/// Checks that every object reachable from `root` is in the store (trees read, blobs looked
/// up). For a rollback that overlapped a collection.
pub async fn is_whole(
    store: &dyn Store,
    root: &Hash,
    concurrency: usize,
) -> Result<bool, StoreError> {
    let marked = mark(store, &[*root], Depth::Trees, concurrency, false).await?;
    if !marked.problems.is_empty() {
        return Ok(false);
    }
    let blobs: Vec<Hash> = marked
        .reached
        .iter()
        .filter(|(_, k)| **k == EntryKind::File)
        .map(|(h, _)| *h)
        .collect();
    let present: Vec<bool> = futures_util::stream::iter(blobs)
        .map(|h| async move { store.has_object(&h).await })
        .buffer_unordered(concurrency.max(1))
        .try_collect()
        .await?;
    Ok(present.into_iter().all(|p| p))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::publish::{PublishOptions, publish};
    use crate::store::MemoryStore;

    fn write(root: &std::path::Path, rel: &str, data: &[u8]) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    }

    #[tokio::test]
    async fn a_busy_state_refuses_a_second_collection_until_it_is_stale() {
        let store = MemoryStore::new();
        let now = unix_now();
        let running = GcState {
            version: 4,
            running: true,
            started: now,
            updated: now,
            keep: Some(3),
            grace_secs: Some(0),
        };
        assert!(store.swap_gc_state(None, &running).await.unwrap());
        let opts = GcOptions {
            rule: KeepRule::default(),
            dry_run: false,
            concurrency: 4,
            progress: false,
        };
        assert!(matches!(
            collect(&store, &opts).await,
            Err(GcError::Busy { .. })
        ));
        let stale = GcState {
            updated: now - STALE.as_secs() - 1,
            ..running
        };
        assert!(store.swap_gc_state(Some(4), &stale).await.unwrap());
        collect(&store, &opts).await.unwrap();
        let end = store.get_gc_state().await.unwrap().unwrap();
        assert!(!end.running);
        assert_eq!(end.version, 6, "taken (5) and ended (6)");
    }

    #[tokio::test]
    async fn paths_name_every_root_that_reaches_an_object() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a/b.txt", b"b");
        write(dir.path(), "c.txt", b"c");
        let store = MemoryStore::new();
        let r1 = publish(&store, dir.path(), "s", &PublishOptions::default())
            .await
            .unwrap();
        write(dir.path(), "c.txt", b"c2");
        let r2 = publish(&store, dir.path(), "s", &PublishOptions::default())
            .await
            .unwrap();
        let roots = [r1.deploy.root, r2.deploy.root];
        let m = mark(&store, &roots, Depth::Everything, 4, false)
            .await
            .unwrap();
        assert!(m.problems.is_empty());
        let b = Hash::of(b"b");
        let paths = m.paths_to(&b, &roots.iter().copied().collect());
        assert_eq!(paths.len(), 2, "both deploys reach a/b.txt");
        assert!(paths.values().all(|p| p == "/a/b.txt"), "{paths:?}");
    }
}
