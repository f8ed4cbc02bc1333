//! Resilience for a remote store: per face (metadata, objects) a circuit breaker, timeouts,
//! a retry budget with jittered exponential backoff (reads only: every store read is an
//! idempotent GET), and a concurrency limit with a bounded queue.
//!
//! The state machines ([`breaker`], [`retry`]) take time as an argument and do no I/O;
//! [`ResilientStore`] wires them around any [`Store`]. It reads the clock from tokio
//! ([`now`]), so tests on simulated time (`tokio::time::pause`) drive the breaker too.
//!
//! An object body is watched until it ends: a body that fails (its deadline passes, the
//! transfer breaks, it ends short of its announced length) is a failure of the objects face,
//! counted once; a completed body is the request's success. Bytes that fail their hash are
//! not (the consumer checks them; the origin answered).

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};

use crate::Hash;
use crate::records::{CurrentPointer, DeployRecord, HostIndex, HostRecord};
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
    /// Body deadline: `first_byte_timeout + total_base + size / min_rate` of waiting for the
    /// origin. Only the time the body waits on the origin counts, not the time its consumer
    /// takes between chunks: a slow client must not make the origin look slow.
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
    /// Attempts that failed because this node ran out of descriptors or memory
    /// ([`Blame::Local`]): counted neither for nor against the origin.
    pub local_errors: std::sync::atomic::AtomicU64,
}

#[derive(Debug)]
struct FaceState {
    cfg: FaceConfig,
    breaker: Mutex<Breaker>,
    budget: Mutex<RetryBudget>,
    limit: Bulkhead,
    stats: FaceStats,
}

/// The clock the resilient store gives its state machines: tokio's, which follows a paused
/// (simulated) clock in tests and is the system's monotonic clock otherwise.
pub fn now() -> Instant {
    tokio::time::Instant::now().into_std()
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
            lock(&self.face.breaker).record(p, success, now());
        }
    }

    /// The answer's head arrived; its body reports the outcome ([`Body`]).
    fn finish_head(mut self) {
        if let Some(p) = self.permit.take() {
            lock(&self.face.breaker).record_head(p, now());
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
    /// `inner.location()`, for error messages.
    location: Arc<str>,
    meta: Arc<FaceState>,
    /// Shared with the bodies being read, which report how they end.
    objects: Arc<FaceState>,
}

impl ResilientStore {
    pub fn new(inner: Arc<dyn Store>, cfg: ResilienceConfig) -> ResilientStore {
        ResilientStore {
            location: inner.location().into(),
            inner,
            meta: Arc::new(FaceState::new(cfg.meta)),
            objects: Arc::new(FaceState::new(cfg.objects)),
        }
    }

    fn face(&self, face: Face) -> &FaceState {
        match face {
            Face::Meta => &self.meta,
            Face::Objects => &self.objects,
        }
    }

    pub fn breaker_state(&self, face: Face) -> BreakerState {
        lock(&self.face(face).breaker).state(now())
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
        self.call_with(face, what, deadline, op, |_| false).await
    }

    /// [`ResilientStore::call`] for answers that may carry a body still to come
    /// (`streams(&answer)`): the breaker then takes the head as such, and the body reports
    /// the request's outcome when it ends.
    async fn call_with<T, F, Fut>(
        &self,
        face: Face,
        what: &str,
        deadline: Duration,
        op: F,
        streams: fn(&T) -> bool,
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
        lock(&f.budget).deposit(now());
        let mut attempt = 1u32;
        loop {
            let permit = lock(&f.breaker).try_acquire(now()).map_err(|r| {
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
                        url: format!("{} {what}", self.location),
                        after: Some(deadline),
                    })
                }
            };
            let failed = origin_failed(&result);
            match &result {
                Ok(v) if streams(v) => guard.finish_head(),
                // The origin was not reached: its permit is handed back, nothing recorded
                // (a half-open breaker is neither closed nor reopened by it).
                Err(e) if e.blame() == Blame::Local => {
                    f.stats.local_errors.fetch_add(1, Relaxed);
                    drop(guard);
                }
                _ => guard.finish(!failed),
            }
            match result {
                Ok(v) => {
                    f.stats.successes.fetch_add(1, Relaxed);
                    return Ok(v);
                }
                Err(e) => {
                    let max = f.cfg.retry.max_attempts;
                    if failed && retryable(&e) && attempt < max && lock(&f.budget).withdraw(now()) {
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

/// An object body from the origin, watched until it ends: a deadline on the time spent
/// waiting for the origin, a check of the announced length, and the body's outcome reported
/// once to the objects face (breaker and [`FaceStats`]). A body dropped before its end
/// (the consumer left) reports nothing.
struct Body {
    inner: ByteStream,
    face: Arc<FaceState>,
    /// `<location> object <hash>`, for error messages.
    what: String,
    /// The announced length, if any.
    len: Option<u64>,
    got: u64,
    /// How long the body may wait on the origin, in all.
    budget: Duration,
    /// Waited so far, in finished waits.
    waited: Duration,
    /// When the current wait began: the first poll the origin had nothing for.
    waiting_since: Option<tokio::time::Instant>,
    /// Armed for the end of the budget while waiting.
    sleep: Pin<Box<tokio::time::Sleep>>,
    done: bool,
}

impl Body {
    fn new(
        inner: ByteStream,
        face: Arc<FaceState>,
        what: String,
        len: Option<u64>,
        budget: Duration,
    ) -> Body {
        Body {
            inner,
            face,
            what,
            len,
            got: 0,
            budget,
            waited: Duration::ZERO,
            waiting_since: None,
            sleep: Box::pin(tokio::time::sleep(budget)),
            done: false,
        }
    }

    /// Ends the body and reports its one outcome.
    fn end(&mut self, success: bool) {
        use std::sync::atomic::Ordering::Relaxed;
        self.done = true;
        lock(&self.face.breaker).record_body(success, now());
        if !success {
            self.face.stats.failures.fetch_add(1, Relaxed);
        }
    }
}

impl Stream for Body {
    type Item = std::io::Result<Bytes>;
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        use std::io::ErrorKind;
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        match this.inner.poll_next_unpin(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                if let Some(since) = this.waiting_since.take() {
                    this.waited += since.elapsed();
                }
                this.got += chunk.len() as u64;
                return Poll::Ready(Some(Ok(chunk)));
            }
            Poll::Ready(Some(Err(e))) => {
                // The store's own error, typed where it was made (see `StoreError::from_body`).
                this.end(false);
                return Poll::Ready(Some(Err(e)));
            }
            Poll::Ready(None) => {
                if let Some(want) = this.len.filter(|&want| this.got < want) {
                    this.end(false);
                    let e = StoreError::Truncated {
                        url: std::mem::take(&mut this.what),
                        got: this.got,
                        want,
                    };
                    return Poll::Ready(Some(Err(e.into_io(ErrorKind::UnexpectedEof))));
                }
                this.end(true);
                return Poll::Ready(None);
            }
            Poll::Pending => {}
        }
        let since = *this
            .waiting_since
            .get_or_insert_with(tokio::time::Instant::now);
        let deadline = since + this.budget.saturating_sub(this.waited);
        if this.sleep.deadline() != deadline {
            this.sleep.as_mut().reset(deadline);
        }
        if this.sleep.as_mut().poll(cx).is_ready() {
            use std::sync::atomic::Ordering::Relaxed;
            this.face.stats.timeouts.fetch_add(1, Relaxed);
            this.end(false);
            let e = StoreError::Timeout {
                url: std::mem::take(&mut this.what),
                after: Some(this.budget),
            };
            return Poll::Ready(Some(Err(e.into_io(ErrorKind::TimedOut))));
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
            .call_with(
                Face::Objects,
                "object",
                ttfb,
                || self.inner.open_object(hash),
                Option::is_some,
            )
            .await?;
        Ok(body.map(|b| {
            let budget = self.total_deadline(b.len);
            let what = format!("{} object {hash}", self.location);
            ObjectBody {
                len: b.len,
                stream: Body::new(b.stream, self.objects.clone(), what, b.len, budget).boxed(),
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

    async fn get_host_index(&self) -> Result<Option<HostIndex>, StoreError> {
        // A larger record than the others: the whole-transfer deadline, not first byte.
        let d = self.total_deadline(Some(crate::store::MAX_HOST_INDEX_BYTES / 4));
        self.call(Face::Meta, "host index", d, || self.inner.get_host_index())
            .await
    }

    async fn swap_host_index(
        &self,
        expected: Option<u64>,
        new: &HostIndex,
    ) -> Result<bool, StoreError> {
        self.inner.swap_host_index(expected, new).await
    }

    async fn list_hosts(&self) -> Result<Vec<HostRecord>, StoreError> {
        self.inner.list_hosts().await
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
    //! On simulated time (`start_paused`): the runtime jumps its clock to the next timer
    //! whenever every task waits, so open periods, backoffs and deadlines take no real time.

    use super::*;
    use crate::store::MemoryStore;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A memory store whose first `fail` whole-object reads answer 503, after `delay`.
    struct Flaky {
        store: MemoryStore,
        calls: Arc<AtomicU32>,
        /// When each read began (simulated time).
        at: Arc<Mutex<Vec<tokio::time::Instant>>>,
        fail: Arc<AtomicU32>,
    }

    impl Flaky {
        fn new(fail: u32, delay: Duration) -> Flaky {
            let calls = Arc::new(AtomicU32::new(0));
            let at = Arc::new(Mutex::new(Vec::new()));
            let fail = Arc::new(AtomicU32::new(fail));
            let (c, a, f) = (calls.clone(), at.clone(), fail.clone());
            let store = MemoryStore::new().with_read_hook(Arc::new(move |_| {
                c.fetch_add(1, Ordering::SeqCst);
                lock(&a).push(tokio::time::Instant::now());
                let fail = f.clone();
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
            Flaky {
                store,
                calls,
                at,
                fail,
            }
        }

        fn calls(&self) -> u32 {
            self.calls.load(Ordering::SeqCst)
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

    fn stat(store: &ResilientStore, f: fn(&FaceStats) -> &std::sync::atomic::AtomicU64) -> u64 {
        f(store.stats(Face::Objects)).load(Ordering::Relaxed)
    }

    #[tokio::test(start_paused = true)]
    async fn retries_transient_errors_within_attempts() {
        let mut cfg = ResilienceConfig::default();
        fast(&mut cfg.objects);
        let (flaky, store, h) = setup(2, cfg).await;
        assert_eq!(store.get_object(&h).await.unwrap().unwrap(), &b"x"[..]);
        assert_eq!(flaky.calls(), 3);
        assert_eq!(stat(&store, |s| &s.retries), 2);
        assert_eq!(store.breaker_state(Face::Objects), BreakerState::Closed);
    }

    /// Closed -> open after failures -> refuses with CircuitOpen and the time left ->
    /// half-open after `open_for` -> a failed probe reopens -> successful probes close it.
    #[tokio::test(start_paused = true)]
    async fn breaker_opens_fails_fast_half_opens_and_closes() {
        let real = Instant::now();
        let mut cfg = ResilienceConfig::default();
        cfg.objects.retry.max_attempts = 1;
        cfg.objects.breaker.consecutive_failures = 3;
        cfg.objects.breaker.open_for = Duration::from_secs(30);
        cfg.objects.breaker.half_open_probes = 2;
        let open_for = cfg.objects.breaker.open_for;
        let (flaky, store, h) = setup(4, cfg).await;
        for i in 0..3 {
            assert_eq!(
                store.breaker_state(Face::Objects),
                BreakerState::Closed,
                "{i}"
            );
            assert!(matches!(
                store.get_object(&h).await,
                Err(StoreError::Status { status: 503, .. })
            ));
        }
        assert_eq!(store.breaker_state(Face::Objects), BreakerState::Open);
        assert_eq!(store.breaker_opened(Face::Objects), 1);
        assert_eq!(stat(&store, |s| &s.failures), 3);

        let retry_after = |r: Result<Option<Bytes>, StoreError>| match r {
            Err(StoreError::CircuitOpen {
                face: "objects",
                retry_after,
            }) => retry_after,
            other => panic!("expected CircuitOpen, got {other:?}"),
        };
        let calls = flaky.calls();
        assert_eq!(retry_after(store.get_object(&h).await), open_for);
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(
            retry_after(store.get_object(&h).await),
            open_for - Duration::from_secs(10)
        );
        assert_eq!(flaky.calls(), calls, "an open breaker sends nothing");
        assert_eq!(stat(&store, |s| &s.rejected_open), 2);
        // The meta face is separate.
        assert_eq!(store.breaker_state(Face::Meta), BreakerState::Closed);

        // Half-open once open_for has passed; the origin still fails: the probe reopens it.
        tokio::time::advance(Duration::from_secs(20)).await;
        assert_eq!(store.breaker_state(Face::Objects), BreakerState::HalfOpen);
        assert!(matches!(
            store.get_object(&h).await,
            Err(StoreError::Status { status: 503, .. })
        ));
        assert_eq!(store.breaker_state(Face::Objects), BreakerState::Open);
        assert_eq!(store.breaker_opened(Face::Objects), 2);
        assert_eq!(retry_after(store.get_object(&h).await), open_for);

        // The origin heals: two successful probes close it.
        assert_eq!(flaky.fail.load(Ordering::SeqCst), 0);
        tokio::time::advance(open_for).await;
        assert_eq!(store.breaker_state(Face::Objects), BreakerState::HalfOpen);
        assert_eq!(store.get_object(&h).await.unwrap().unwrap(), &b"x"[..]);
        assert_eq!(store.breaker_state(Face::Objects), BreakerState::HalfOpen);
        assert_eq!(store.get_object(&h).await.unwrap().unwrap(), &b"x"[..]);
        assert_eq!(store.breaker_state(Face::Objects), BreakerState::Closed);
        assert_eq!(store.breaker_opened(Face::Objects), 2);
        assert!(
            real.elapsed() < Duration::from_secs(5),
            "simulated, not slept"
        );
    }

    /// A store that cannot be reached because this node is out of descriptors (EMFILE)
    /// never opens the breaker, however many reads fail; the store's own failures still do.
    #[tokio::test(start_paused = true)]
    async fn running_out_of_descriptors_never_opens_the_breaker() {
        let mut cfg = ResilienceConfig::default();
        fast(&mut cfg.objects);
        let fail = Arc::new(AtomicU32::new(u32::MAX));
        let f = fail.clone();
        let inner = MemoryStore::new().with_read_hook(Arc::new(move |_| {
            let fail = f.load(Ordering::SeqCst);
            Box::pin(async move {
                match fail {
                    0 => Ok(()),
                    1 => Err(StoreError::Status {
                        url: "x".into(),
                        status: 503,
                    }),
                    _ => Err(StoreError::io(
                        "open",
                        "/srv/objects/x",
                        std::io::Error::from_raw_os_error(24),
                    )),
                }
            })
        }));
        let h = Hash::of(b"x");
        inner
            .put_object(&h, Bytes::from_static(b"x"))
            .await
            .unwrap();
        let store = ResilientStore::new(Arc::new(inner), cfg);
        for _ in 0..20 {
            let e = store.get_object(&h).await.unwrap_err();
            assert_eq!(e.blame(), Blame::Local, "{e}");
        }
        assert_eq!(store.breaker_state(Face::Objects), BreakerState::Closed);
        assert_eq!(stat(&store, |s| &s.local_errors), 20);
        assert_eq!(stat(&store, |s| &s.failures), 0);
        fail.store(0, Ordering::SeqCst);
        assert_eq!(store.get_object(&h).await.unwrap().unwrap(), &b"x"[..]);
        // The origin's own failures still open it.
        fail.store(1, Ordering::SeqCst);
        for _ in 0..3 {
            let _ = store.get_object(&h).await;
        }
        assert_eq!(store.breaker_state(Face::Objects), BreakerState::Open);
    }

    /// Each retry waits a full-jitter backoff within [0, min(cap, base * 2^n)], and retries
    /// stop when the budget is spent, before `max_attempts`; the budget refills with time.
    #[tokio::test(start_paused = true)]
    async fn retry_backoff_is_bounded_and_stops_when_the_budget_is_empty() {
        fastrand::seed(7);
        let mut cfg = ResilienceConfig::default();
        let retry = &mut cfg.objects.retry;
        retry.max_attempts = 4;
        // Short against the refill (two tokens a second): backoffs refill under 0.1 token.
        retry.backoff_base = Duration::from_millis(10);
        retry.backoff_cap = Duration::from_millis(30);
        // No share of the request rate: only the floor, two retries a second.
        retry.budget_ratio = 0.0;
        retry.min_per_second = 2;
        cfg.objects.breaker.consecutive_failures = 1000;
        let rcfg = cfg.objects.retry.clone();
        let (flaky, store, h) = setup(1000, cfg).await;
        let gaps = |flaky: &Flaky| -> Vec<Duration> {
            let at = lock(&flaky.at);
            at.windows(2).map(|w| w[1] - w[0]).collect()
        };
        let tick = Duration::from_millis(1); // the timer's resolution

        // The budget starts with one second's floor: two retries, then none.
        let t = tokio::time::Instant::now();
        assert!(store.get_object(&h).await.is_err());
        assert_eq!(flaky.calls(), 3, "two retries, not max_attempts - 1 = 3");
        assert_eq!(stat(&store, |s| &s.retries), 2);
        let waits = gaps(&flaky);
        assert_eq!(waits.len(), 2);
        for (n, wait) in waits.iter().enumerate() {
            let ceiling = retry::backoff(&rcfg, n as u32 + 1, 1.0);
            assert!(
                *wait <= ceiling + tick,
                "retry {}: {wait:?} > {ceiling:?}",
                n + 1
            );
        }
        assert_eq!(
            retry::backoff(&rcfg, 2, 1.0),
            Duration::from_millis(30),
            "the cap"
        );
        assert_eq!(t.elapsed(), waits.iter().sum::<Duration>());
        // Refilled at 2 a second only during the backoffs (under 50 ms): not a whole token.
        let before = flaky.calls();
        assert!(store.get_object(&h).await.is_err());
        assert_eq!(flaky.calls(), before + 1, "an empty budget retries nothing");
        assert_eq!(stat(&store, |s| &s.retries), 2);

        // Half a second later, one retry's worth again.
        tokio::time::advance(Duration::from_millis(500)).await;
        let before = flaky.calls();
        assert!(store.get_object(&h).await.is_err());
        assert_eq!(flaky.calls(), before + 2);
        assert_eq!(stat(&store, |s| &s.retries), 3);
        let last = *gaps(&flaky).last().unwrap();
        assert!(last <= retry::backoff(&rcfg, 1, 1.0) + tick, "{last:?}");
    }

    #[tokio::test(start_paused = true)]
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
            assert!(
                store
                    .open_object(&Hash::of(b"missing"))
                    .await
                    .unwrap()
                    .is_none()
            );
        }
        assert_eq!(store.breaker_state(Face::Objects), BreakerState::Closed);
        assert_eq!(stat(&store, |s| &s.failures), 0);
    }

    #[tokio::test(start_paused = true)]
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
        assert_eq!(flaky.calls(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn slow_answers_time_out() {
        let mut cfg = ResilienceConfig::default();
        fast(&mut cfg.objects);
        cfg.objects.retry.max_attempts = 1;
        cfg.objects.first_byte_timeout = Duration::from_millis(20);
        cfg.objects.total_base = Duration::from_millis(20);
        let flaky = Flaky::new(0, Duration::from_secs(5));
        let store = ResilientStore::new(Arc::new(flaky.store), cfg);
        let started = tokio::time::Instant::now();
        assert!(matches!(
            store.get_object(&Hash::of(b"x")).await,
            Err(StoreError::Timeout {
                after: Some(d),
                ..
            }) if d == Duration::from_millis(40)
        ));
        assert_eq!(started.elapsed(), Duration::from_millis(40));
        assert_eq!(stat(&store, |s| &s.timeouts), 1);
    }

    // ---- bodies -------------------------------------------------------------------------

    /// How [`Bodies`] answers the next `open_object`.
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Mode {
        /// Every byte, then the end.
        Whole,
        /// One chunk, then nothing ever again.
        Stall,
        /// One chunk, then the end, short of the announced length.
        Short,
        /// One chunk, then a transport error.
        Broken,
        /// Every byte, but one changed (the store does not check hashes when streaming).
        Corrupt,
        /// Every byte, each chunk after this long (the origin's time, from the poll that
        /// asks for it).
        Slow(Duration),
    }

    /// A store whose object bodies misbehave as told; everything else is a memory store.
    #[derive(Debug)]
    struct Bodies {
        store: MemoryStore,
        mode: Mutex<Mode>,
    }

    const CHUNK: &[u8] = b"0123456789";

    impl Bodies {
        fn new(mode: Mode) -> Bodies {
            Bodies {
                store: MemoryStore::new(),
                mode: Mutex::new(mode),
            }
        }
        fn set(&self, mode: Mode) {
            *lock(&self.mode) = mode;
        }
    }

    #[async_trait]
    impl Store for Bodies {
        fn location(&self) -> String {
            "bodies:".into()
        }
        async fn get_object(&self, hash: &Hash) -> Result<Option<Bytes>, StoreError> {
            self.store.get_object(hash).await
        }
        async fn open_object(&self, _hash: &Hash) -> Result<Option<ObjectBody>, StoreError> {
            use futures_util::stream;
            let first = || stream::once(async { Ok(Bytes::from_static(CHUNK)) });
            let stream: ByteStream = match *lock(&self.mode) {
                Mode::Whole | Mode::Slow(_) => {
                    stream::iter([CHUNK, CHUNK].map(|c| Ok(Bytes::from_static(c)))).boxed()
                }
                Mode::Stall => first().chain(stream::pending()).boxed(),
                Mode::Short => first().boxed(),
                Mode::Broken => first()
                    .chain(stream::once(async {
                        Err(StoreError::Http {
                            url: "bodies: object".into(),
                            source: "connection reset".into(),
                        }
                        .into_io(std::io::ErrorKind::ConnectionReset))
                    }))
                    .boxed(),
                Mode::Corrupt => {
                    stream::iter([CHUNK, b"0123456788"].map(|c| Ok(Bytes::from_static(c)))).boxed()
                }
            };
            let stream = match *lock(&self.mode) {
                Mode::Slow(delay) => stream
                    .then(move |c| async move {
                        tokio::time::sleep(delay).await;
                        c
                    })
                    .boxed(),
                _ => stream,
            };
            Ok(Some(ObjectBody {
                len: Some(2 * CHUNK.len() as u64),
                stream,
            }))
        }
        async fn has_object(&self, hash: &Hash) -> Result<bool, StoreError> {
            self.store.has_object(hash).await
        }
        async fn put_object(&self, hash: &Hash, data: Bytes) -> Result<bool, StoreError> {
            self.store.put_object(hash, data).await
        }
        async fn get_host(&self, host: &str) -> Result<Option<HostRecord>, StoreError> {
            self.store.get_host(host).await
        }
        async fn put_host(&self, record: &HostRecord) -> Result<(), StoreError> {
            self.store.put_host(record).await
        }
        async fn get_current(&self, site: &str) -> Result<Option<CurrentPointer>, StoreError> {
            self.store.get_current(site).await
        }
        async fn swap_current(
            &self,
            expected: Option<u64>,
            new: &CurrentPointer,
        ) -> Result<(), StoreError> {
            self.store.swap_current(expected, new).await
        }
        async fn put_deploy(&self, record: &DeployRecord) -> Result<(), StoreError> {
            self.store.put_deploy(record).await
        }
        async fn get_deploy(
            &self,
            site: &str,
            id: &str,
        ) -> Result<Option<DeployRecord>, StoreError> {
            self.store.get_deploy(site, id).await
        }
        async fn list_deploys(&self, site: &str) -> Result<Vec<DeployRecord>, StoreError> {
            self.store.list_deploys(site).await
        }
    }

    /// Objects face: three failures in a row open it; no retries; a 3 s body budget for
    /// these 20-byte bodies (1 s to the first byte + 2 s + 20 B at 1 MiB/s).
    fn body_cfg() -> ResilienceConfig {
        let mut cfg = ResilienceConfig::default();
        let o = &mut cfg.objects;
        o.breaker.consecutive_failures = 3;
        o.breaker.open_for = Duration::from_secs(60);
        o.first_byte_timeout = Duration::from_secs(1);
        o.total_base = Duration::from_secs(2);
        cfg
    }

    fn body_store(mode: Mode) -> (Arc<Bodies>, ResilientStore, Duration) {
        let bodies = Arc::new(Bodies::new(mode));
        let store = ResilientStore::new(bodies.clone(), body_cfg());
        let budget = store.total_deadline(Some(2 * CHUNK.len() as u64));
        (bodies, store, budget)
    }

    /// Opens the object and reads it to its end or its first error.
    async fn read_body(store: &ResilientStore) -> (Vec<u8>, Option<std::io::Error>) {
        let mut body = store.open_object(&Hash::of(b"any")).await.unwrap().unwrap();
        let mut got = Vec::new();
        while let Some(chunk) = body.stream.next().await {
            match chunk {
                Ok(c) => got.extend_from_slice(&c),
                Err(e) => {
                    assert!(
                        body.stream.next().await.is_none(),
                        "the body ends at its error"
                    );
                    return (got, Some(e));
                }
            }
        }
        (got, None)
    }

    fn inner_store_error(e: &std::io::Error) -> &StoreError {
        e.get_ref()
            .and_then(|inner| inner.downcast_ref::<StoreError>())
            .unwrap_or_else(|| panic!("no StoreError inside {e:?}"))
    }

    /// An origin that sends one chunk and then stalls: the body deadline is a TimedOut
    /// error carrying StoreError::Timeout, each body is one failure, and after
    /// `consecutive_failures` of them the breaker is open.
    #[tokio::test(start_paused = true)]
    async fn stalled_bodies_time_out_typed_and_open_the_breaker() {
        let real = Instant::now();
        let (_, store, budget) = body_store(Mode::Stall);
        assert!(budget > Duration::from_secs(3) && budget < Duration::from_millis(3001));
        let n = body_cfg().objects.breaker.consecutive_failures;
        for i in 0..n {
            assert_eq!(
                store.breaker_state(Face::Objects),
                BreakerState::Closed,
                "body {i}"
            );
            let t = tokio::time::Instant::now();
            let (got, err) = read_body(&store).await;
            assert_eq!(got, CHUNK, "the chunk before the stall arrives");
            let e = err.expect("the deadline ends the body");
            let waited = t.elapsed();
            assert!(
                waited >= budget && waited <= budget + Duration::from_millis(1),
                "{waited:?} for a {budget:?} budget"
            );
            assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
            match inner_store_error(&e) {
                StoreError::Timeout { url, after } => {
                    assert_eq!(*after, Some(budget));
                    assert!(url.starts_with("bodies: object "), "{url}");
                }
                other => panic!("expected a Timeout, got {other:?}"),
            }
            assert!(matches!(
                StoreError::from_body(e, "object"),
                StoreError::Timeout { after: Some(a), .. } if a == budget
            ));
            assert_eq!(
                stat(&store, |s| &s.failures),
                u64::from(i + 1),
                "once per body"
            );
            assert_eq!(stat(&store, |s| &s.timeouts), u64::from(i + 1));
        }
        assert_eq!(store.breaker_state(Face::Objects), BreakerState::Open);
        assert!(matches!(
            store.open_object(&Hash::of(b"any")).await,
            Err(StoreError::CircuitOpen {
                face: "objects",
                ..
            })
        ));
        assert!(
            real.elapsed() < Duration::from_secs(3),
            "simulated, not slept"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn completed_bodies_count_nothing_extra_and_end_a_run() {
        let (bodies, store, _) = body_store(Mode::Whole);
        for _ in 0..10 {
            let (got, err) = read_body(&store).await;
            assert!(err.is_none(), "{err:?}");
            assert_eq!(got, [CHUNK, CHUNK].concat());
        }
        assert_eq!(stat(&store, |s| &s.failures), 0);
        assert_eq!(stat(&store, |s| &s.successes), 10);
        // Two failures, a completed body, two failures: no run of three.
        for mode in [
            Mode::Stall,
            Mode::Broken,
            Mode::Whole,
            Mode::Short,
            Mode::Stall,
        ] {
            bodies.set(mode);
            let (_, err) = read_body(&store).await;
            assert_eq!(err.is_none(), mode == Mode::Whole, "{mode:?}");
        }
        assert_eq!(store.breaker_state(Face::Objects), BreakerState::Closed);
        assert_eq!(stat(&store, |s| &s.failures), 4);
        bodies.set(Mode::Broken);
        read_body(&store).await;
        assert_eq!(store.breaker_state(Face::Objects), BreakerState::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn a_short_or_broken_body_is_one_typed_failure() {
        let (bodies, store, _) = body_store(Mode::Short);
        let (got, err) = read_body(&store).await;
        assert_eq!(got, CHUNK);
        let e = err.expect("a body short of its length is an error, not an end");
        assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof);
        assert!(matches!(
            inner_store_error(&e),
            StoreError::Truncated {
                got: 10,
                want: 20,
                ..
            }
        ));
        assert_eq!(StoreError::from_body(e, "x").blame(), Blame::Upstream);
        assert_eq!(stat(&store, |s| &s.failures), 1);

        bodies.set(Mode::Broken);
        let (_, err) = read_body(&store).await;
        let e = err.expect("the transport error comes through");
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset);
        assert!(matches!(
            StoreError::from_body(e, "x"),
            StoreError::Http { .. }
        ));
        assert_eq!(stat(&store, |s| &s.failures), 2);
        assert_eq!(stat(&store, |s| &s.timeouts), 0);
    }

    /// Corrupt bytes are the consumer's to find; the origin answered, so nothing counts.
    #[tokio::test(start_paused = true)]
    async fn corrupt_bytes_do_not_count_against_the_origin() {
        let (_, store, _) = body_store(Mode::Corrupt);
        for _ in 0..5 {
            let (got, err) = read_body(&store).await;
            assert!(err.is_none());
            assert_ne!(Hash::of(&got), Hash::of(&[CHUNK, CHUNK].concat()));
        }
        assert_eq!(store.breaker_state(Face::Objects), BreakerState::Closed);
        assert_eq!(stat(&store, |s| &s.failures), 0);
    }

    /// The deadline counts the time spent waiting on the origin, not the consumer's: a
    /// consumer slower than the whole budget still gets every byte, and nothing counts.
    #[tokio::test(start_paused = true)]
    async fn a_slow_consumer_does_not_spend_the_deadline() {
        let (bodies, store, budget) = body_store(Mode::Whole);
        // The origin takes a third of the budget per chunk; the consumer twice the budget.
        bodies.set(Mode::Slow(budget / 3));
        let mut body = store.open_object(&Hash::of(b"any")).await.unwrap().unwrap();
        for _ in 0..2 {
            tokio::time::sleep(budget * 2).await;
            assert_eq!(body.stream.next().await.unwrap().unwrap(), CHUNK);
        }
        assert!(body.stream.next().await.is_none());
        assert_eq!(stat(&store, |s| &s.failures), 0);
        assert_eq!(store.breaker_state(Face::Objects), BreakerState::Closed);
    }

    /// Waits add up: an origin that trickles, each chunk within the budget but not all of
    /// them, runs out of it.
    #[tokio::test(start_paused = true)]
    async fn an_origin_that_trickles_spends_the_deadline() {
        let (bodies, store, budget) = body_store(Mode::Whole);
        bodies.set(Mode::Slow(budget * 2 / 3));
        let t = tokio::time::Instant::now();
        let (got, err) = read_body(&store).await;
        assert_eq!(got, CHUNK);
        let e = err.expect("the deadline passes during the second chunk");
        assert!(matches!(inner_store_error(&e), StoreError::Timeout { .. }));
        let waited = t.elapsed();
        assert!(
            waited >= budget && waited <= budget + Duration::from_millis(2),
            "{waited:?} for a {budget:?} budget"
        );
        assert_eq!(stat(&store, |s| &s.failures), 1);
    }

    /// A body dropped before its end (the consumer left) reports nothing.
    #[tokio::test(start_paused = true)]
    async fn a_dropped_body_reports_nothing() {
        let (_, store, _) = body_store(Mode::Stall);
        for _ in 0..5 {
            let mut body = store.open_object(&Hash::of(b"any")).await.unwrap().unwrap();
            assert_eq!(body.stream.next().await.unwrap().unwrap(), CHUNK);
        }
        assert_eq!(store.breaker_state(Face::Objects), BreakerState::Closed);
        assert_eq!(stat(&store, |s| &s.failures), 0);
    }
}
