//! Parent tiers: objects (blobs, tree nodes, rules) read from parent edges before the origin.
//!
//! Each object hash has a home parent, picked by rendezvous hashing ([`rendezvous`]), and the
//! next one as its fallback; then the origin. A parent is a read-only [`HttpStore`] rooted at
//! `URL/.edge/` (a parent edge answers the store's object layout there from its own tiers),
//! behind its own [`ResilientStore`]: a breaker, timeouts and a concurrency limit of its own,
//! and no retries (the next source is the retry).
//!
//! Invariants:
//! - only objects are read from parents; pointers, records and the host index always come
//!   from the origin, the authority ([`Parents`] as a [`Store`] passes them straight through);
//! - every byte from a parent is checked exactly as the origin's: whole reads here (blake3),
//!   fills by the caller's own checks inside [`Parents::fetch`]; a parent whose bytes fail is
//!   counted, logged at a bounded rate and skipped for that object, and the read goes on to
//!   the next source in the same call, so the caller never sees the parent's failure;
//! - a failure of this node's own (disk, memory, descriptors) stops the walk at once: another
//!   source would not help;
//! - which parents an object goes to is a pure function of the parents' URLs and its hash.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use async_trait::async_trait;
use bytes::Bytes;

use super::{
    Blame, GcState, HttpStore, HttpStoreOptions, ObjectBody, ObjectInfo, Store, StoreError,
};
use crate::Hash;
use crate::records::{CurrentPointer, DeployRecord, HostIndex, HostRecord};
use crate::resilience::{BreakerState, Face, FaceConfig, ResilienceConfig, ResilientStore};

/// The path under a parent's URL where it serves objects (`objects/<hh>/<hash>` below it).
pub const PARENT_PREFIX: &str = ".edge/";

/// Why a read from a parent did not give the object, as counted per parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Bytes that fail their hash or their size.
    WrongBytes,
    /// The parent answered that it (its origin) has no such object.
    NotFound,
    /// Not asked: the parent's breaker is open.
    BreakerOpen,
    /// Refused, timed out, cut, a 5xx or 401: the parent failed.
    Error,
    /// This node ran out of something of its own; no other source is tried.
    Local,
}

impl Failure {
    /// Every kind a parent's error counter has, in label order.
    pub const COUNTED: [Failure; 4] = [
        Failure::WrongBytes,
        Failure::NotFound,
        Failure::BreakerOpen,
        Failure::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Failure::WrongBytes => "wrong_bytes",
            Failure::NotFound => "not_found",
            Failure::BreakerOpen => "breaker_open",
            Failure::Error => "error",
            Failure::Local => "local",
        }
    }
}

/// How a failed read is counted against a parent.
pub trait Classify: fmt::Display {
    fn failure(&self) -> Failure;
    /// A length that differs from the size the caller expected: the parent's bytes are
    /// wrong, unless the origin's are found to be the same length (then the caller's
    /// expectation, a tree entry, is what is wrong, and the parent is not blamed).
    fn size_mismatch(&self) -> bool {
        false
    }
}

impl Classify for StoreError {
    fn failure(&self) -> Failure {
        match self {
            StoreError::Corrupt { .. } | StoreError::TooLarge { .. } => Failure::WrongBytes,
            StoreError::CircuitOpen { .. } => Failure::BreakerOpen,
            e if e.blame() == Blame::Local => Failure::Local,
            _ => Failure::Error,
        }
    }
}

/// Counters of one parent.
#[derive(Debug, Default)]
pub struct ParentStats {
    /// Objects asked of this parent (including those its open breaker refused).
    pub fetches: AtomicU64,
    pub wrong_bytes: AtomicU64,
    pub not_found: AtomicU64,
    pub breaker_open: AtomicU64,
    pub errors: AtomicU64,
}

impl ParentStats {
    /// The count of failures of `kind` (0 for [`Failure::Local`], never counted).
    pub fn failures(&self, kind: Failure) -> u64 {
        match kind {
            Failure::WrongBytes => self.wrong_bytes.load(Relaxed),
            Failure::NotFound => self.not_found.load(Relaxed),
            Failure::BreakerOpen => self.breaker_open.load(Relaxed),
            Failure::Error => self.errors.load(Relaxed),
            Failure::Local => 0,
        }
    }

    fn count(&self, kind: Failure) {
        let c = match kind {
            Failure::WrongBytes => &self.wrong_bytes,
            Failure::NotFound => &self.not_found,
            Failure::BreakerOpen => &self.breaker_open,
            Failure::Error => &self.errors,
            Failure::Local => return,
        };
        c.fetch_add(1, Relaxed);
    }
}

/// One parent edge: its URL, its key in rendezvous hashing, and its store with a breaker.
pub struct Parent {
    url: Arc<str>,
    /// blake3 of the URL.
    key: [u8; 32],
    store: ResilientStore,
    pub stats: ParentStats,
}

impl fmt::Debug for Parent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Parent").field("url", &self.url).finish()
    }
}

impl Parent {
    /// A parent at `url` (`http(s)://host[:port][/path]`, read at `url/.edge/`), sending
    /// `token` as `Authorization: Bearer TOKEN` when given. `face` is its breaker, timeouts
    /// and limit (its retries are turned off: the next source is the retry).
    pub fn new(
        url: &str,
        token: Option<&str>,
        mut face: FaceConfig,
        mut http: HttpStoreOptions,
    ) -> Result<Parent, StoreError> {
        let url = url.trim_end_matches('/');
        if let Some(t) = token {
            let mut v = http::HeaderValue::try_from(format!("Bearer {t}")).map_err(|_| {
                StoreError::Location {
                    location: url.to_owned(),
                    why: "has a token that cannot be sent in a header".into(),
                }
            })?;
            v.set_sensitive(true);
            http.authorization = Some(v);
        }
        let store = HttpStore::new(&format!("{url}/{PARENT_PREFIX}"), http)?;
        face.retry.max_attempts = 1;
        let cfg = ResilienceConfig {
            meta: face.clone(),
            objects: face,
        };
        Ok(Parent {
            key: *blake3::hash(url.as_bytes()).as_bytes(),
            url: url.into(),
            store: ResilientStore::new(Arc::new(store), cfg),
            stats: ParentStats::default(),
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn breaker_state(&self) -> BreakerState {
        self.store.breaker_state(Face::Objects)
    }

    pub fn breaker_opened(&self) -> u64 {
        self.store.breaker_opened(Face::Objects)
    }
}

/// The home parent of `hash` and the next one, among parents with these keys: the two
/// highest scores `blake3::keyed_hash(key, hash)` (highest random weight). Adding a parent
/// moves only the objects it now scores highest for, about 1/N of them, and every other
/// object keeps its home; removing one moves only its objects, each to its next parent.
pub fn rendezvous(keys: &[[u8; 32]], hash: &Hash) -> [Option<usize>; 2] {
    let mut best: [Option<(u64, usize)>; 2] = [None, None];
    for (i, key) in keys.iter().enumerate() {
        let h = blake3::keyed_hash(key, hash.as_bytes());
        let mut first = [0u8; 8];
        first.copy_from_slice(&h.as_bytes()[..8]);
        let s = (u64::from_le_bytes(first), i);
        if best[0].is_none_or(|b| s > b) {
            best[1] = best[0];
            best[0] = Some(s);
        } else if best[1].is_none_or(|b| s > b) {
            best[1] = Some(s);
        }
    }
    best.map(|b| b.map(|(_, i)| i))
}

/// At most [`LogGate::LINES`] lines per [`LogGate::WINDOW_SECS`]; the rest are counted.
#[derive(Debug)]
struct LogGate {
    started: std::time::Instant,
    window: AtomicU64,
    lines: AtomicU64,
    suppressed: AtomicU64,
}

impl LogGate {
    const LINES: u64 = 5;
    const WINDOW_SECS: u64 = 10;

    fn new() -> LogGate {
        LogGate {
            started: std::time::Instant::now(),
            window: AtomicU64::new(0),
            lines: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    fn allow(&self) -> bool {
        let w = self.started.elapsed().as_secs() / Self::WINDOW_SECS;
        if self.window.swap(w, Relaxed) != w {
            self.lines.store(0, Relaxed);
        }
        if self.lines.fetch_add(1, Relaxed) < Self::LINES {
            return true;
        }
        self.suppressed.fetch_add(1, Relaxed);
        false
    }
}

/// The sources of objects: parents (each hash to its home and next one), then the origin.
/// As a [`Store`], object reads go through them (verified) and everything else goes to the
/// origin.
pub struct Parents {
    parents: Vec<Parent>,
    keys: Vec<[u8; 32]>,
    origin: Arc<dyn Store>,
    logs: LogGate,
}

impl fmt::Debug for Parents {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Parents")
            .field("parents", &self.parents)
            .field("origin", &self.origin)
            .finish()
    }
}

impl Parents {
    pub fn new(origin: Arc<dyn Store>, parents: Vec<Parent>) -> Parents {
        Parents {
            keys: parents.iter().map(|p| p.key).collect(),
            parents,
            origin,
            logs: LogGate::new(),
        }
    }

    /// The origin alone.
    pub fn none(origin: Arc<dyn Store>) -> Parents {
        Parents::new(origin, Vec::new())
    }

    pub fn origin(&self) -> &Arc<dyn Store> {
        &self.origin
    }

    pub fn list(&self) -> &[Parent] {
        &self.parents
    }

    /// The parents `hash` is read from, home first.
    pub fn route(&self, hash: &Hash) -> impl Iterator<Item = &Parent> {
        rendezvous(&self.keys, hash)
            .into_iter()
            .flatten()
            .map(|i| &self.parents[i])
    }

    /// Reads object `hash` with `read` from its home parent, its next parent, then the
    /// origin, until one gives it: `read` does the reading and every check (hash, size), so
    /// bytes that fail them (an `Err` whose [`Classify::failure`] is
    /// [`Failure::WrongBytes`]) and any other failure of a parent, `Ok(None)` (not found)
    /// included, move on to the next source. The origin's answer is the answer. A failure
    /// of this node's own ([`Failure::Local`]) is returned at once.
    pub async fn fetch<'a, T, E, F, Fut>(&'a self, hash: &Hash, mut read: F) -> Result<Option<T>, E>
    where
        F: FnMut(&'a dyn Store) -> Fut,
        Fut: Future<Output = Result<Option<T>, E>>,
        E: Classify,
    {
        // Parents whose length was wrong: blamed only if the origin's is right.
        let mut sized: Vec<(&Parent, String)> = Vec::new();
        for p in self.route(hash) {
            p.stats.fetches.fetch_add(1, Relaxed);
            let kind = match read(&p.store).await {
                Ok(Some(v)) => return Ok(Some(v)),
                Ok(None) => Failure::NotFound,
                Err(e) => {
                    let kind = e.failure();
                    if kind == Failure::Local {
                        return Err(e);
                    }
                    if e.size_mismatch() {
                        sized.push((p, e.to_string()));
                        continue;
                    }
                    self.failed(p, hash, kind, &e);
                    continue;
                }
            };
            self.failed(p, hash, kind, &"no such object");
        }
        let answer = read(self.origin.as_ref()).await;
        let origin_same_size = matches!(&answer, Err(e) if e.size_mismatch());
        if !origin_same_size {
            for (p, why) in &sized {
                self.failed(p, hash, Failure::WrongBytes, why);
            }
        }
        answer
    }

    fn failed(&self, p: &Parent, hash: &Hash, kind: Failure, why: &dyn fmt::Display) {
        p.stats.count(kind);
        // Breaker-open skips are the breaker's business (its state is a metric); a missing
        // object is not the parent's fault.
        let quiet = matches!(kind, Failure::BreakerOpen | Failure::NotFound);
        if quiet {
            tracing::debug!(parent = %p.url, %hash, kind = kind.as_str(), "parent skipped");
        } else if self.logs.allow() {
            let suppressed = self.logs.suppressed.load(Relaxed);
            if kind == Failure::WrongBytes {
                tracing::warn!(parent = %p.url, %hash, error = %why, suppressed, "parent sent wrong bytes; skipped for this object");
            } else {
                tracing::warn!(parent = %p.url, %hash, error = %why, suppressed, "parent failed; reading the object from the next source");
            }
        }
    }

    /// Reads a whole object, verified, from the parents then the origin.
    async fn read_whole(&self, hash: &Hash) -> Result<Option<Bytes>, StoreError> {
        self.fetch(hash, |s| async move {
            match s.get_object(hash).await? {
                // Every store checks whole reads; this one does not rely on it.
                Some(b) if Hash::of(&b) != *hash => Err(StoreError::Corrupt { hash: *hash }),
                found => Ok(found),
            }
        })
        .await
    }
}

#[async_trait]
impl Store for Parents {
    fn location(&self) -> String {
        self.origin.location()
    }
    fn requests(&self) -> Option<u64> {
        self.origin.requests()
    }
    async fn get_object(&self, hash: &Hash) -> Result<Option<Bytes>, StoreError> {
        if self.parents.is_empty() {
            return self.origin.get_object(hash).await;
        }
        self.read_whole(hash).await
    }
    /// Streams come from the origin: a stream's bytes are checked by its reader after they
    /// were handed on, too late to read them from another source. Fills that stream go
    /// through [`Parents::fetch`], where the reader checks and falls back.
    async fn open_object(&self, hash: &Hash) -> Result<Option<ObjectBody>, StoreError> {
        self.origin.open_object(hash).await
    }
    async fn has_object(&self, hash: &Hash) -> Result<bool, StoreError> {
        self.origin.has_object(hash).await
    }
    async fn put_object(&self, hash: &Hash, data: Bytes) -> Result<bool, StoreError> {
        self.origin.put_object(hash, data).await
    }
    async fn put_object_file(
        &self,
        hash: &Hash,
        path: &std::path::Path,
    ) -> Result<bool, StoreError> {
        self.origin.put_object_file(hash, path).await
    }
    async fn get_host(&self, host: &str) -> Result<Option<HostRecord>, StoreError> {
        self.origin.get_host(host).await
    }
    async fn put_host(&self, record: &HostRecord) -> Result<(), StoreError> {
        self.origin.put_host(record).await
    }
    async fn get_current(&self, site: &str) -> Result<Option<CurrentPointer>, StoreError> {
        self.origin.get_current(site).await
    }
    async fn swap_current(
        &self,
        expected: Option<u64>,
        new: &CurrentPointer,
    ) -> Result<(), StoreError> {
        self.origin.swap_current(expected, new).await
    }
    async fn put_deploy(&self, record: &DeployRecord) -> Result<(), StoreError> {
        self.origin.put_deploy(record).await
    }
    async fn get_deploy(&self, site: &str, id: &str) -> Result<Option<DeployRecord>, StoreError> {
        self.origin.get_deploy(site, id).await
    }
    async fn list_deploys(&self, site: &str) -> Result<Vec<DeployRecord>, StoreError> {
        self.origin.list_deploys(site).await
    }
    async fn list_sites(&self) -> Result<Vec<String>, StoreError> {
        self.origin.list_sites().await
    }
    async fn list_objects(&self) -> Result<Vec<ObjectInfo>, StoreError> {
        self.origin.list_objects().await
    }
    async fn delete_object(&self, hash: &Hash) -> Result<(), StoreError> {
        self.origin.delete_object(hash).await
    }
    async fn get_host_index(&self) -> Result<Option<HostIndex>, StoreError> {
        self.origin.get_host_index().await
    }
    async fn swap_host_index(
        &self,
        expected: Option<u64>,
        new: &HostIndex,
    ) -> Result<bool, StoreError> {
        self.origin.swap_host_index(expected, new).await
    }
    async fn list_hosts(&self) -> Result<Vec<HostRecord>, StoreError> {
        self.origin.list_hosts().await
    }
    async fn get_gc_state(&self) -> Result<Option<GcState>, StoreError> {
        self.origin.get_gc_state().await
    }
    async fn swap_gc_state(
        &self,
        expected: Option<u64>,
        new: &GcState,
    ) -> Result<bool, StoreError> {
        self.origin.swap_gc_state(expected, new).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    fn keys(n: usize) -> Vec<[u8; 32]> {
        (0..n)
            .map(|i| *blake3::hash(format!("http://10.0.0.{i}:8080").as_bytes()).as_bytes())
            .collect()
    }

    fn hashes(n: u32) -> Vec<Hash> {
        (0..n).map(|i| Hash::of(&i.to_le_bytes())).collect()
    }

    /// Adding a 4th parent to 3 moves about a quarter of 10,000 objects, every one of them to
    /// the new parent; the others keep their home. Their fallback is another parent.
    #[test]
    fn adding_a_parent_moves_about_one_in_n_keys_and_only_to_it() {
        let (three, four) = (keys(3), keys(4));
        let all = hashes(10_000);
        let mut moved = 0;
        let mut homes = [0usize; 4];
        for h in &all {
            let [before, next_before] = rendezvous(&three, h);
            let [after, next_after] = rendezvous(&four, h);
            let (before, after) = (before.unwrap(), after.unwrap());
            assert_ne!(Some(before), next_before, "the fallback is another parent");
            assert!(next_after.is_some_and(|n| n != after));
            homes[after] += 1;
            if before != after {
                moved += 1;
                assert_eq!(after, 3, "a key that moves moves to the new parent");
                assert_eq!(next_after, Some(before), "its old home is its fallback");
            }
        }
        let share = moved as f64 / all.len() as f64;
        eprintln!(
            "rendezvous: adding a 4th parent moved {moved} of 10000 keys ({share:.3}); homes {homes:?}"
        );
        assert!((0.22..0.28).contains(&share), "{share}");
        for n in homes {
            assert!((2_200..2_800).contains(&n), "balanced: {homes:?}");
        }
    }

    /// Removing a parent moves only its own objects, each to its former fallback.
    #[test]
    fn removing_a_parent_moves_its_keys_to_their_fallback() {
        let four = keys(4);
        let three = four[..3].to_vec();
        for h in hashes(2_000) {
            let [home, next] = rendezvous(&four, &h);
            let [after, _] = rendezvous(&three, &h);
            if home == Some(3) {
                assert_eq!(after, next);
            } else {
                assert_eq!(after, home);
            }
        }
        assert_eq!(rendezvous(&[], &Hash::of(b"x")), [None, None]);
        assert_eq!(rendezvous(&keys(1), &Hash::of(b"x")), [Some(0), None]);
    }

    /// A memory store holding `objects`, and how many object reads reached it.
    async fn counting(objects: &[&[u8]]) -> (Arc<MemoryStore>, Arc<AtomicU64>) {
        let plain = MemoryStore::new();
        for o in objects {
            plain
                .put_object(&Hash::of(o), Bytes::copy_from_slice(o))
                .await
                .unwrap();
        }
        let reads = Arc::new(AtomicU64::new(0));
        let r = reads.clone();
        let store = plain.with_read_hook(Arc::new(move |_| {
            r.fetch_add(1, Relaxed);
            Box::pin(async { Ok(()) })
        }));
        (Arc::new(store), reads)
    }

    /// Parents that cannot be reached (nothing listens on port 1), whatever their breaker.
    fn unreachable(n: usize) -> Vec<Parent> {
        (0..n)
            .map(|i| {
                Parent::new(
                    &format!("http://127.0.0.1:1/p{i}"),
                    Some("0123456789abcdef"),
                    FaceConfig::default(),
                    HttpStoreOptions::default(),
                )
                .unwrap()
            })
            .collect()
    }

    /// Wrong bytes, a missing object or an error from a parent never reach the caller: the
    /// read goes on to the next source, and each parent's failure is counted by kind.
    #[tokio::test]
    async fn a_failing_parent_costs_a_fallback_not_an_error() {
        let data = Bytes::from_static(b"the object");
        let hash = Hash::of(&data);
        let (origin, reads) = counting(&[&data]).await;
        let parents = Parents::new(origin.clone(), unreachable(2));
        assert_eq!(parents.get_object(&hash).await.unwrap(), Some(data.clone()));
        assert_eq!(reads.load(Relaxed), 1);
        for p in parents.list() {
            assert_eq!(p.stats.fetches.load(Relaxed), 1, "{}", p.url());
            assert_eq!(p.stats.errors.load(Relaxed), 1, "{}", p.url());
        }

        // Through the generic walk: the first source sends wrong bytes, the second has
        // nothing, the origin has it.
        let parents = Parents::new(origin.clone(), unreachable(2));
        let mut calls = 0;
        let got: Result<Option<Bytes>, StoreError> = parents
            .fetch(&hash, |s| {
                calls += 1;
                let n = calls;
                async move {
                    match n {
                        1 => Err(StoreError::Corrupt { hash }),
                        2 => Ok(None),
                        _ => s.get_object(&hash).await,
                    }
                }
            })
            .await;
        assert_eq!(got.unwrap(), Some(data));
        let [home, next]: [&Parent; 2] = {
            let v: Vec<&Parent> = parents.route(&hash).collect();
            [v[0], v[1]]
        };
        assert_eq!(home.stats.failures(Failure::WrongBytes), 1);
        assert_eq!(next.stats.failures(Failure::NotFound), 1);
    }

    #[derive(Debug)]
    struct Sized(bool);
    impl fmt::Display for Sized {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("size differs")
        }
    }
    impl Classify for Sized {
        fn failure(&self) -> Failure {
            Failure::WrongBytes
        }
        fn size_mismatch(&self) -> bool {
            self.0
        }
    }

    /// A length that differs from the caller's expectation is the parent's fault only if
    /// the origin's length is right; when the origin's differs the same way, the
    /// expectation was wrong and no parent is blamed.
    #[tokio::test]
    async fn a_size_mismatch_is_blamed_on_a_parent_only_if_the_origin_disagrees() {
        let (origin, _) = counting(&[]).await;
        let hash = Hash::of(b"x");
        for (origin_mismatch, blamed) in [(true, 0), (false, 1)] {
            let parents = Parents::new(origin.clone(), unreachable(1));
            let mut n = 0;
            let r: Result<Option<()>, Sized> = parents
                .fetch(&hash, |_| {
                    n += 1;
                    let first = n == 1;
                    async move {
                        if first || origin_mismatch {
                            Err(Sized(true))
                        } else {
                            Ok(Some(()))
                        }
                    }
                })
                .await;
            assert_eq!(r.is_err(), origin_mismatch);
            let p = &parents.list()[0];
            assert_eq!(p.stats.failures(Failure::WrongBytes), blamed);
        }
    }

    /// A local failure (this node out of descriptors) is not a parent's: returned at once,
    /// the origin not asked.
    #[tokio::test]
    async fn a_local_failure_stops_the_walk() {
        let (origin, reads) = counting(&[]).await;
        let parents = Parents::new(origin.clone(), unreachable(2));
        let r: Result<Option<()>, StoreError> = parents
            .fetch(&Hash::of(b"x"), |_| async {
                Err(StoreError::io(
                    "open",
                    "/x",
                    std::io::Error::from_raw_os_error(24),
                ))
            })
            .await;
        assert!(r.is_err());
        assert_eq!(reads.load(Relaxed), 0);
        let counted: u64 = parents
            .list()
            .iter()
            .map(|p| {
                Failure::COUNTED
                    .map(|k| p.stats.failures(k))
                    .iter()
                    .sum::<u64>()
            })
            .sum();
        assert_eq!(counted, 0);
    }

    /// Pointers and records never go to a parent.
    #[tokio::test]
    async fn only_objects_are_read_from_parents() {
        let (origin, _) = counting(&[]).await;
        let parents = Parents::new(origin, unreachable(2));
        assert!(parents.get_current("s").await.unwrap().is_none());
        assert!(parents.get_host("h.example").await.unwrap().is_none());
        assert!(parents.get_host_index().await.unwrap().is_none());
        for p in parents.list() {
            assert_eq!(p.stats.fetches.load(Relaxed), 0);
        }
    }
}
