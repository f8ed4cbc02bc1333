//! Resilience for a remote store: per face (metadata, objects) a circuit breaker, timeouts,
//! a retry budget with jittered exponential backoff (reads only: every store read is an
//! idempotent GET), and a concurrency limit with a bounded queue.
//!
//! The state machines ([`breaker`], [`retry`]) take time as an argument and do no I/O;
//! [`ResilientStore`] wires them around any [`Store`].

use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};

use crate::Hash;
use crate::records::{CurrentPointer, DeployRecord, HostRecord};
use crate::store::{Blame, ByteStream, ObjectBody, Store, StoreError};

pub mod breaker;
pub mod bulkhead;
pub mod retry;

pub use breaker::{Breaker, BreakerConfig, BreakerState};
pub use bulkhead::Bulkhead;
pub use retry::{RetryBudget, RetryConfig};

/// The two faces of the origin, each with its own breaker, budget and limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Face {
    /// Host records, pointers, deploy records.
    Meta,
    /// Blobs and tree nodes.
    Objects,
}

impl Face {
    pub fn as_str(self) -> &'static str {
        match self {
            Face::Meta => "meta",
            Face::Objects => "objects",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct FaceConfig {
    pub breaker: BreakerConfig,
    pub retry: RetryConfig,
    /// From sending a request to its answer starting (headers, or a whole small record).
    pub first_byte_timeout: Duration,
    /// Whole-transfer deadline: `first_byte_timeout + total_base + size / min_rate`.
    pub total_base: Duration,
    /// Slowest acceptable transfer rate, bytes per second (scales the total deadline).
    pub min_rate: u64,
    /// Requests in flight to the origin at once (node-wide, this face).
    pub concurrency: usize,
    /// Requests allowed to wait for a slot; beyond that, shed at once.
    pub queue: usize,
}

impl Default for FaceConfig {
    fn default() -> Self {
        FaceConfig {
            breaker: BreakerConfig::default(),
            retry: RetryConfig::default(),
            first_byte_timeout: Duration::from_secs(5),
            total_base: Duration::from_secs(10),
            min_rate: 1024 * 1024,
            concurrency: 64,
            queue: 1024,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct ResilienceConfig {
    pub meta: FaceConfig,
    pub objects: FaceConfig,
}

/// Counters of one face, for metrics.
#[derive(Debug, Default)]
pub struct FaceStats {
    pub requests: std::sync::atomic::AtomicU64,
    pub successes: std::sync::atomic::AtomicU64,
    pub failures: std::sync::atomic::AtomicU64,
    pub retries: std::sync::atomic::AtomicU64,
    pub rejected_open: std::sync::atomic::AtomicU64,
    pub timeouts: std::sync::atomic::AtomicU64,
}

#[derive(Debug)]
struct FaceState {
    cfg: FaceConfig,
    breaker: Mutex<Breaker>,
    budget: Mutex<RetryBudget>,
    limit: Bulkhead,
    stats: FaceStats,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Each critical section is a few arithmetic updates; a panic cannot leave them torn.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl FaceState {
    fn new(cfg: FaceConfig) -> FaceState {
        FaceState {
            breaker: Mutex::new(Breaker::new(cfg.breaker.clone())),
            budget: Mutex::new(RetryBudget::new(cfg.retry.clone())),
            limit: Bulkhead::new(cfg.concurrency, cfg.queue),
            stats: FaceStats::default(),
            cfg,
        }
    }
}

/// Reports a breaker outcome exactly once; a dropped (cancelled) attempt gives its permit back.
struct Attempt<'a> {
    face: &'a FaceState,
    permit: Option<breaker::Permit>,
}

impl Attempt<'_> {
    fn finish(mut self, success: bool) {
        if let Some(p) = self.permit.take() {
            lock(&self.face.breaker).record(p, success, Instant::now());
        }
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if let Some(p) = self.permit.take() {
            lock(&self.face.breaker).release(p);
        }
    }
}

/// Whether a failed read is worth another try.
fn retryable(e: &StoreError) -> bool {
    match e {
        StoreError::Status { status, .. } => *status >= 500,
        StoreError::Io { .. }
        | StoreError::Http { .. }
        | StoreError::Timeout { .. }
        | StoreError::Truncated { .. } => true,
        _ => false,
    }
}

/// Whether an outcome counts against the origin's availability. Not-found and caller errors
/// do not, and neither do bytes that fail their hash: the origin answered, so not asking it
/// for a while would not help, and one bad object asked for again and again (a deploy
/// pointer to a corrupt root, re-checked on every refresh) must not shut off every site's
/// misses. Corrupt bytes are refused where they are read, and counted there.
fn origin_failed<T>(r: &Result<T, StoreError>) -> bool {
    match r {
        Ok(_) => false,
        Err(StoreError::Corrupt { .. }) => false,
        Err(e) => e.blame() == Blame::Upstream,
    }
}

/// A [`Store`] with breakers, timeouts, retries and limits around another store.
#[derive(Debug)]
pub struct ResilientStore {
    inner: Arc<dyn Store>,
    meta: FaceState,
    objects: FaceState,
}

impl ResilientStore {
    pub fn new(inner: Arc<dyn Store>, cfg: ResilienceConfig) -> ResilientStore {
        ResilientStore {
            inner,
            meta: FaceState::new(cfg.meta),
            objects: FaceState::new(cfg.objects),
        }
    }

    fn face(&self, face: Face) -> &FaceState {
        match face {
            Face::Meta => &self.meta,
            Face::Objects => &self.objects,
        }
    }

    pub fn breaker_state(&self, face: Face) -> BreakerState {
        lock(&self.face(face).breaker).state(Instant::now())
    }

    pub fn breaker_opened(&self, face: Face) -> u64 {
        lock(&self.face(face).breaker).times_opened()
    }

    pub fn stats(&self, face: Face) -> &FaceStats {
        &self.face(face).stats
    }

    pub fn limit(&self, face: Face) -> &Bulkhead {
        &self.face(face).limit
    }

    /// Runs `op` under `face`'s limit, breaker, deadline and retry policy.
    async fn call<T, F, Fut>(
        &self,
        face: Face,
        what: &str,
        deadline: Duration,
        op: F,
    ) -> Result<T, StoreError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        use std::sync::atomic::Ordering::Relaxed;
        let f = self.face(face);
        let _slot = f.limit.enter().await.map_err(|_| StoreError::Shed {
            face: face.as_str(),
        })?;
        f.stats.requests.fetch_add(1, Relaxed);
        lock(&f.budget).deposit(Instant::now());
        let mut attempt = 1u32;
        loop {
            let permit = lock(&f.breaker).try_acquire(Instant::now()).map_err(|r| {
                f.stats.rejected_open.fetch_add(1, Relaxed);
                StoreError::CircuitOpen {
                    face: face.as_str(),
                    retry_after: r.retry_after,
                }
            })?;
            let guard = Attempt {
                face: f,
                permit: Some(permit),
            };
            let result = match tokio::time::timeout(deadline, op()).await {
                Ok(r) => r,
                Err(_) => {
                    f.stats.timeouts.fetch_add(1, Relaxed);
                    Err(StoreError::Timeout {
                        url: format!("{} {what}", self.inner.location()),
                        after: Some(deadline),
                    })
                }
            };
            let failed = origin_failed(&result);
            guard.finish(!failed);
            match result {
                Ok(v) => {
                    f.stats.successes.fetch_add(1, Relaxed);
                    return Ok(v);
                }
                Err(e) => {
                    let max = f.cfg.retry.max_attempts;
                    if failed
                        && retryable(&e)
                        && attempt < max
                        && lock(&f.budget).withdraw(Instant::now())
                    {
                        f.stats.retries.fetch_add(1, Relaxed);
                        let wait = retry::backoff(&f.cfg.retry, attempt, fastrand::f64());
                        tracing::debug!(face = face.as_str(), what, attempt, error = %e, ?wait, "retrying");
                        tokio::time::sleep(wait).await;
                        attempt += 1;
                        continue;
                    }
                    if failed {
                        f.stats.failures.fetch_add(1, Relaxed);
                    }
                    return Err(e);
                }
            }
        }
    }

    fn total_deadline(&self, size: Option<u64>) -> Duration {
        let c = &self.objects.cfg;
        let transfer = size.map_or(Duration::ZERO, |s| {
            Duration::from_secs_f64(s as f64 / c.min_rate.max(1) as f64)
        });
        c.first_byte_timeout + c.total_base + transfer
    }
}

/// A body stream with a whole-transfer deadline.
struct Deadline {
    inner: ByteStream,
    sleep: std::pin::Pin<Box<tokio::time::Sleep>>,
    done: bool,
}

impl Stream for Deadline {
    type Item = std::io::Result<Bytes>;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        if let Poll::Ready(item) = self.inner.poll_next_unpin(cx) {
            return Poll::Ready(item);
        }
        if self.sleep.as_mut().poll(cx).is_ready() {
            self.done = true;
            return Poll::Ready(Some(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "object transfer exceeded its deadline",
            ))));
        }
        Poll::Pending
    }
}

use std::future::Future;

#[async_trait]
impl Store for ResilientStore {
    fn location(&self) -> String {
        self.inner.location()
    }

    async fn get_object(&self, hash: &Hash) -> Result<Option<Bytes>, StoreError> {
        // Whole reads are tree nodes and small blobs.
        let deadline = self.total_deadline(None);
        self.call(Face::Objects, "object", deadline, || {
            self.inner.get_object(hash)
        })
        .await
    }

    async fn open_object(&self, hash: &Hash) -> Result<Option<ObjectBody>, StoreError> {
        let ttfb = self.objects.cfg.first_byte_timeout;
        let body = self
            .call(Face::Objects, "object", ttfb, || {
                self.inner.open_object(hash)
            })
            .await?;
        Ok(body.map(|b| {
            let total = self.total_deadline(b.len);
            ObjectBody {
                len: b.len,
                stream: Deadline {
                    inner: b.stream,
                    sleep: Box::pin(tokio::time::sleep(total)),
                    done: false,
                }
                .boxed(),
            }
        }))
    }

    async fn has_object(&self, hash: &Hash) -> Result<bool, StoreError> {
        let d = self.objects.cfg.first_byte_timeout;
        self.call(Face::Objects, "object", d, || self.inner.has_object(hash))
            .await
    }

    async fn put_object(&self, hash: &Hash, data: Bytes) -> Result<bool, StoreError> {
        self.inner.put_object(hash, data).await
    }

    async fn put_object_file(
        &self,
        hash: &Hash,
        path: &std::path::Path,
    ) -> Result<bool, StoreError> {
        self.inner.put_object_file(hash, path).await
    }

    async fn get_host(&self, host: &str) -> Result<Option<HostRecord>, StoreError> {
        let d = self.meta.cfg.first_byte_timeout;
        self.call(Face::Meta, "host", d, || self.inner.get_host(host))
            .await
    }

    async fn put_host(&self, record: &HostRecord) -> Result<(), StoreError> {
        self.inner.put_host(record).await
    }

    async fn get_current(&self, site: &str) -> Result<Option<CurrentPointer>, StoreError> {
        let d = self.meta.cfg.first_byte_timeout;
        self.call(Face::Meta, "pointer", d, || self.inner.get_current(site))
            .await
    }

    async fn swap_current(
        &self,
        expected: Option<u64>,
        new: &CurrentPointer,
    ) -> Result<(), StoreError> {
        self.inner.swap_current(expected, new).await
    }

    async fn put_deploy(&self, record: &DeployRecord) -> Result<(), StoreError> {
        self.inner.put_deploy(record).await
    }

    async fn get_deploy(&self, site: &str, id: &str) -> Result<Option<DeployRecord>, StoreError> {
        let d = self.meta.cfg.first_byte_timeout;
        self.call(Face::Meta, "deploy", d, || self.inner.get_deploy(site, id))
            .await
    }

    async fn list_deploys(&self, site: &str) -> Result<Vec<DeployRecord>, StoreError> {
        let d = self.meta.cfg.first_byte_timeout * 4;
        self.call(Face::Meta, "history", d, || self.inner.list_deploys(site))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A memory store whose first `fail` whole-object reads answer 503, after `delay`.
    struct Flaky {
        store: MemoryStore,
        calls: Arc<AtomicU32>,
    }

    impl Flaky {
        fn new(fail: u32, delay: Duration) -> Flaky {
            let calls = Arc::new(AtomicU32::new(0));
            let fail = Arc::new(AtomicU32::new(fail));
            let c = calls.clone();
            let store = MemoryStore::new().with_read_hook(Arc::new(move |_| {
                c.fetch_add(1, Ordering::SeqCst);
                let fail = fail.clone();
                Box::pin(async move {
                    tokio::time::sleep(delay).await;
                    match fail
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    {
                        Ok(_) => Err(StoreError::Status {
                            url: "x".into(),
                            status: 503,
                        }),
                        Err(_) => Ok(()),
                    }
                })
            }));
            Flaky { store, calls }
        }
    }

    fn fast(cfg: &mut FaceConfig) {
        cfg.retry.backoff_base = Duration::from_millis(1);
        cfg.retry.backoff_cap = Duration::from_millis(2);
        cfg.breaker.consecutive_failures = 3;
        cfg.breaker.open_for = Duration::from_millis(200);
        cfg.breaker.half_open_probes = 1;
    }

    async fn setup(fail: u32, cfg: ResilienceConfig) -> (Flaky, ResilientStore, Hash) {
        let flaky = Flaky::new(fail, Duration::ZERO);
        let h = Hash::of(b"x");
        flaky
            .store
            .put_object(&h, Bytes::from_static(b"x"))
            .await
            .unwrap();
        let store = ResilientStore::new(Arc::new(flaky.store.clone()), cfg);
        (flaky, store, h)
    }

    #[tokio::test]
    async fn retries_transient_errors_within_attempts() {
        let mut cfg = ResilienceConfig::default();
        fast(&mut cfg.objects);
        let (flaky, store, h) = setup(2, cfg).await;
        assert_eq!(store.get_object(&h).await.unwrap().unwrap(), &b"x"[..]);
        assert_eq!(flaky.calls.load(Ordering::SeqCst), 3);
        assert_eq!(
            store.stats(Face::Objects).retries.load(Ordering::Relaxed),
            2
        );
        assert_eq!(store.breaker_state(Face::Objects), BreakerState::Closed);
    }

    #[tokio::test]
    async fn breaker_opens_fails_fast_then_heals() {
        let mut cfg = ResilienceConfig::default();
        fast(&mut cfg.objects);
        cfg.objects.retry.max_attempts = 1;
        let (flaky, store, h) = setup(3, cfg).await;
        for _ in 0..3 {
            assert!(matches!(
                store.get_object(&h).await,
                Err(StoreError::Status { status: 503, .. })
            ));
        }
        assert_eq!(store.breaker_state(Face::Objects), BreakerState::Open);
        let calls = flaky.calls.load(Ordering::SeqCst);
        assert!(matches!(
            store.get_object(&h).await,
            Err(StoreError::CircuitOpen {
                face: "objects",
                ..
            })
        ));
        assert_eq!(
            flaky.calls.load(Ordering::SeqCst),
            calls,
            "an open breaker sends nothing"
        );
        // The meta face is separate.
        assert_eq!(store.breaker_state(Face::Meta), BreakerState::Closed);
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(store.get_object(&h).await.unwrap().unwrap(), &b"x"[..]);
        assert_eq!(store.breaker_state(Face::Objects), BreakerState::Closed);
        assert_eq!(store.breaker_opened(Face::Objects), 1);
    }

    #[tokio::test]
    async fn not_found_is_not_a_failure() {
        let mut cfg = ResilienceConfig::default();
        fast(&mut cfg.objects);
        let (_, store, _) = setup(0, cfg).await;
        for _ in 0..10 {
            assert!(
                store
                    .get_object(&Hash::of(b"missing"))
                    .await
                    .unwrap()
                    .is_none()
            );
        }
        assert_eq!(store.breaker_state(Face::Objects), BreakerState::Closed);
    }

    #[tokio::test]
    async fn limit_sheds_beyond_the_queue() {
        let mut cfg = ResilienceConfig::default();
        cfg.objects.concurrency = 2;
        cfg.objects.queue = 2;
        let flaky = Flaky::new(0, Duration::from_millis(200));
        let h = Hash::of(b"x");
        flaky
            .store
            .put_object(&h, Bytes::from_static(b"x"))
            .await
            .unwrap();
        let store = Arc::new(ResilientStore::new(Arc::new(flaky.store.clone()), cfg));
        let tasks: Vec<_> = (0..10)
            .map(|_| {
                let s = store.clone();
                tokio::spawn(async move { s.get_object(&h).await })
            })
            .collect();
        let mut ok = 0;
        let mut shed = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(Some(_)) => ok += 1,
                Err(StoreError::Shed { .. }) => shed += 1,
                other => panic!("{other:?}"),
            }
        }
        assert_eq!((ok, shed), (4, 6));
        assert_eq!(flaky.calls.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn slow_answers_time_out() {
        let mut cfg = ResilienceConfig::default();
        fast(&mut cfg.objects);
        cfg.objects.retry.max_attempts = 1;
        cfg.objects.first_byte_timeout = Duration::from_millis(20);
        cfg.objects.total_base = Duration::from_millis(20);
        let flaky = Flaky::new(0, Duration::from_secs(5));
        let store = ResilientStore::new(Arc::new(flaky.store), cfg);
        let started = Instant::now();
        assert!(matches!(
            store.get_object(&Hash::of(b"x")).await,
            Err(StoreError::Timeout { .. })
        ));
        assert!(started.elapsed() < Duration::from_secs(4));
    }
}
