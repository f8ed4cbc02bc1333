//! Blob tiers: memory, then disk, then a fill from the parents (`[tiers] parents`, each
//! object from its home parent, then the next) and the origin.
//!
//! Invariant: every byte this module hands out was checked against its blake3 hash before it
//! was cached, or is checked while it streams (the last chunk is held back until the hash
//! matches; on a mismatch the stream fails, so the client sees a cut response, never a
//! complete wrong one). Sizes are checked on every hit: a blob is handed out only when its
//! length equals the size its tree entry declares (a tree that lies about a size gets a 502,
//! never a panic or a Content-Length that disagrees with the body). Identical concurrent
//! misses of one (hash, size) share one origin fetch. A fill checks a parent's bytes exactly as
//! the origin's, and bytes that fail make it read the object from the next source within the
//! same fill (see [`Parents::fetch`]). Blocking file I/O runs on the blocking pool.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use origin_client::resilience::{Bulkhead, bulkhead};
use origin_client::store::{ByteStream, Parents};
use origin_client::{Hash, Store};

use crate::coalesce::Coalescer;
use crate::error::{EdgeError, EdgeResult};

pub mod disk;
mod filling;
pub mod scrub;
pub mod sums;

pub use disk::DiskTier;
pub use filling::Attempt;
use filling::{Live, Writer, read_filling};

/// Which tier answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Memory,
    Disk,
    Origin,
}

/// A blob ready to serve.
pub enum Blob {
    /// Whole and verified.
    Bytes(Bytes),
    /// A disk-tier file whose size matched and whose whole bytes passed blake3 once (at
    /// fill, or at its first read since the node started); each block is checked against
    /// `sums` as it is read.
    File {
        file: std::fs::File,
        len: u64,
        sums: sums::Sums,
        /// Called once if a block fails its check (counts it, drops the file).
        on_fail: Arc<dyn Fn() + Send + Sync>,
        budget: Budget,
    },
    /// A fill being written to the disk tier, read as it is written (a coalesced miss
    /// streamed to its waiter): bytes go out as they reach the file, the response's last
    /// byte only once the whole object passed blake3.
    Filling {
        attempt: Arc<Attempt>,
        budget: Budget,
    },
    /// Streaming from the origin, not cached (too large for memory, no room on disk).
    Origin {
        stream: ByteStream,
        len: u64,
        hash: Hash,
        budget: Budget,
    },
}

impl Blob {
    pub fn len(&self) -> u64 {
        match self {
            Blob::Bytes(b) => b.len() as u64,
            Blob::File { len, .. } | Blob::Origin { len, .. } => *len,
            Blob::Filling { attempt, .. } => attempt.len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes `start..end` as a stream. Disk files are checked block by block (whole or a
    /// range: no byte of a block goes out before its checksum matched); origin streams are
    /// hashed whole as they go, the last piece held until the hash matched.
    ///
    /// Back-pressure: disk and origin bytes come in blocks of at most [`BLOCK`], each
    /// holding a share of `budget` (`server.max_buffered`, node-wide) and of this
    /// response's window of [`WINDOW`] blocks until the transport drops it (written to the
    /// socket, or the stream abandoned). The next block is read only when a window slot is
    /// free, i.e. when the client has taken an earlier one.
    pub fn into_stream(self, start: u64, end: u64) -> ByteStream {
        match self {
            Blob::Bytes(b) => {
                let piece = b.slice(start as usize..end as usize);
                futures_util::stream::once(async move { Ok(piece) }).boxed()
            }
            Blob::File {
                file,
                len,
                sums,
                on_fail,
                budget,
            } => read_blocks(
                Arc::new(file),
                Checked { len, sums, on_fail },
                start,
                end,
                budget,
            ),
            Blob::Filling { attempt, budget } => read_filling(attempt, start, end, budget),
            Blob::Origin {
                stream,
                len,
                hash,
                budget,
            } => Verify::new(metered(stream, budget), hash, len, start, end, None).boxed(),
        }
    }
}

/// The largest block a streamed response reads at a time from disk or takes from the
/// origin before the client has it: four checksum blocks ([`sums::SUM_BLOCK`]), so a fast
/// client's disk read is one `pread` and one blocking-pool trip per 128 KiB.
pub const BLOCK: usize = 128 << 10;
/// Blocks one response may hold at a time (read, verified, or queued in the transport):
/// the next one is read while the transport writes the one before.
pub const WINDOW: usize = 2;

/// The node-wide bound on response bytes buffered in memory (`server.max_buffered`): bytes
/// read from disk or the origin that the client has not taken yet.
#[derive(Clone)]
pub struct Budget {
    sem: Arc<tokio::sync::Semaphore>,
    /// The bound now.
    max: Arc<AtomicU64>,
    /// Bytes held now (the metric `edge_buffered_bytes` reads it).
    held: Arc<AtomicU64>,
}

impl Budget {
    pub fn new(max: u64, held: Arc<AtomicU64>) -> Budget {
        let max = max.min(tokio::sync::Semaphore::MAX_PERMITS as u64);
        Budget {
            sem: Arc::new(tokio::sync::Semaphore::new(max as usize)),
            max: Arc::new(AtomicU64::new(max)),
            held,
        }
    }

    /// Changes the bound (at least one block); bytes held stay held.
    pub fn set_max(&self, max: u64) {
        let max = max.clamp(BLOCK as u64, tokio::sync::Semaphore::MAX_PERMITS as u64);
        let old = self.max.swap(max, Ordering::Relaxed);
        if max > old {
            self.sem.add_permits((max - old) as usize);
        } else {
            // Permits held now come back later and stay out then.
            let mut left = (old - max) as usize;
            while left > 0 {
                let gone = self.sem.forget_permits(left);
                left -= gone;
                if gone == 0 {
                    break;
                }
            }
            if left > 0 {
                // Taken back as they return: hold them in a task until all are in.
                let sem = self.sem.clone();
                tokio::spawn(async move {
                    if let Ok(p) = sem.acquire_many_owned(left as u32).await {
                        p.forget();
                    }
                });
            }
        }
    }

    /// The largest block a response may read now: [`BLOCK`] while less than 1/32 of the
    /// bound is held (8 MiB of the default 256), [`SMALL_BLOCK`] while less than 1/16 is,
    /// else [`MIN_BLOCK`].
    /// Many stalled clients (slow readers) so fill the budget with small blocks: full ones
    /// are for when there is plenty of room.
    fn block_cap(&self) -> usize {
        let (held, max) = (
            self.held.load(Ordering::Relaxed),
            self.max.load(Ordering::Relaxed),
        );
        if held < max / 32 {
            BLOCK
        } else if held < max / 16 {
            SMALL_BLOCK
        } else {
            MIN_BLOCK
        }
    }

    /// Waits for room for `n` bytes (at most [`BLOCK`]).
    async fn take(&self, n: usize) -> io::Result<Held> {
        let permit = self
            .sem
            .clone()
            .acquire_many_owned(n as u32)
            .await
            .map_err(|_| io::Error::other("response buffer budget closed"))?;
        self.held.fetch_add(n as u64, Ordering::Relaxed);
        Ok(Held {
            _permit: permit,
            n: n as u64,
            held: self.held.clone(),
        })
    }
}

struct Held {
    _permit: tokio::sync::OwnedSemaphorePermit,
    n: u64,
    held: Arc<AtomicU64>,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.held.fetch_sub(self.n, Ordering::Relaxed);
    }
}

/// A block's bytes and the budget and window shares they hold: released when the last
/// `Bytes` (or slice) of the block is dropped.
struct Block<T> {
    data: T,
    _budget: Held,
    _window: tokio::sync::OwnedSemaphorePermit,
}

impl<T: AsRef<[u8]>> AsRef<[u8]> for Block<T> {
    fn as_ref(&self) -> &[u8] {
        self.data.as_ref()
    }
}

/// Shares of the budget and of a response's window for a block of `n` bytes, waiting for
/// both (the window first: a response waiting on its client takes no budget), and whether
/// the client kept up: a window slot was free without waiting, so the transport had let go
/// of a block before this one was wanted.
async fn shares(
    window: &Arc<tokio::sync::Semaphore>,
    budget: &Budget,
    n: usize,
) -> io::Result<(Held, tokio::sync::OwnedSemaphorePermit, bool)> {
    let (w, kept_up) = match window.clone().try_acquire_owned() {
        Ok(w) => (w, true),
        Err(_) => (
            window
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| io::Error::other("response window closed"))?,
            false,
        ),
    };
    Ok((budget.take(n).await?, w, kept_up))
}

/// The smallest block a slow client is held to.
pub const MIN_BLOCK: usize = 8 << 10;

/// The block a disk read starts with, before its client has taken anything. Small, because
/// a client may never take it: hyper (since 1.12, hyper#4003) polls an HTTP/2 body before
/// the stream has send capacity, so every stream of a client that keeps its windows at zero
/// holds its first block until `send_timeout` (4,000 such streams in `tests/stall.rs`).
/// Doubling from here reaches [`BLOCK`] four blocks later.
pub const FIRST_BLOCK: usize = 2 << 10;

/// A response's block size, following its client: doubled when the client kept up (a window
/// slot was free when the next block was wanted), halved (down to [`MIN_BLOCK`]) when it made
/// the response wait. Up to [`SMALL_BLOCK`] at first; up to [`BLOCK`] once the response has
/// sent [`PROVEN`] bytes, more than most clients that stop reading have soaked up in socket
/// buffers by then. On top of that, [`Budget::block_cap`]: many stalled clients fill the
/// node-wide budget with small blocks only.
///
/// (Until 2026-12-02 "kept up" meant both window slots free, which a streaming response
/// almost never sees: the block just handed to the transport is still held while the next
/// is wanted. Disk reads were stuck at [`MIN_BLOCK`], 8 KiB per blocking-pool trip, about
/// 150 MB/s per response.)
#[derive(Debug, Clone, Copy)]
struct Pace {
    size: usize,
    /// Bytes handed to the transport so far.
    sent: u64,
}

/// The largest block before a response has sent [`PROVEN`] bytes.
pub const SMALL_BLOCK: usize = 32 << 10;
/// Bytes a response sends before its blocks may grow past [`SMALL_BLOCK`].
const PROVEN: u64 = 1 << 20;

impl Pace {
    fn new() -> Pace {
        Pace {
            size: FIRST_BLOCK,
            sent: 0,
        }
    }

    /// The pace after a block of `n` bytes, read when the client had (`kept_up`) or had not
    /// left a window slot free.
    fn next(self, n: usize, kept_up: bool) -> Pace {
        let sent = self.sent + n as u64;
        let max = if sent >= PROVEN { BLOCK } else { SMALL_BLOCK };
        let size = if kept_up {
            (self.size * 2).min(max)
        } else {
            (self.size / 2).max(MIN_BLOCK)
        };
        Pace { size, sent }
    }
}

/// What a disk file's blocks are checked against.
struct Checked {
    len: u64,
    sums: sums::Sums,
    on_fail: Arc<dyn Fn() + Send + Sync>,
}

/// Reads `start..end` of `file` in blocks on the blocking pool, each under its shares;
/// block sizes start at [`FIRST_BLOCK`] and follow the client's pace ([`Pace`]). Each
/// read covers whole checksum blocks ([`sums::SUM_BLOCK`]) and checks every one of them
/// before any of its bytes go out: a read that is exactly those blocks is sent as is, a
/// smaller piece is read with the rest of its blocks, checked, and copied out (so a slow
/// client holds only its piece). A block that fails ends the stream with an error (the
/// client sees a cut response, never a wrong byte) and calls `on_fail` once.
fn read_blocks(
    file: Arc<std::fs::File>,
    checked: Checked,
    start: u64,
    end: u64,
    budget: Budget,
) -> ByteStream {
    let window = Arc::new(tokio::sync::Semaphore::new(WINDOW));
    let checked = Arc::new(checked);
    futures_util::stream::try_unfold((start, Pace::new()), move |(pos, pace)| {
        let size = pace.size;
        let (file, window, budget, c) = (
            file.clone(),
            window.clone(),
            budget.clone(),
            checked.clone(),
        );
        async move {
            if pos >= end {
                return Ok(None);
            }
            // The piece ends on a checksum-block boundary when it can, so that after the
            // first pieces every read is whole blocks, sent without a copy.
            let mut stop = pos + (end - pos).min(size.min(budget.block_cap()) as u64);
            let boundary = stop / sums::SUM_BLOCK * sums::SUM_BLOCK;
            if stop < end && boundary > pos {
                stop = boundary;
            }
            let n = (stop - pos) as usize;
            // The checksum blocks the piece pos..pos+n touches.
            let (first, r_start, _) = sums::block_of(pos, c.len);
            let (_, _, r_end) = sums::block_of(pos + n as u64 - 1, c.len);
            let (held, w, kept_up) = shares(&window, &budget, n).await?;
            let exact = pos == r_start && pos + n as u64 == r_end;
            let v = read_block(&file, r_start, (r_end - r_start) as usize).await?;
            for (k, block) in v.chunks(sums::SUM_BLOCK as usize).enumerate() {
                if !sums::block_ok(&c.sums, first + k, block) {
                    (c.on_fail)();
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "disk cache block at {} failed its checksum",
                            r_start + k as u64 * sums::SUM_BLOCK
                        ),
                    ));
                }
            }
            let data = if exact {
                v
            } else {
                let from = (pos - r_start) as usize;
                v[from..from + n].to_vec()
            };
            let block = Bytes::from_owner(Block {
                data,
                _budget: held,
                _window: w,
            });
            Ok(Some((block, (pos + n as u64, pace.next(n, kept_up)))))
        }
    })
    .boxed()
}

/// `n` bytes of `file` from `at`: on this thread, with no trip to the blocking pool, when
/// the page cache holds them ([`disk::read_cached`]; a block's read and check take
/// microseconds), else the rest on the blocking pool.
async fn read_block(file: &Arc<std::fs::File>, at: u64, n: usize) -> io::Result<Vec<u8>> {
    let (v, got) = disk::read_cached(file, at, n);
    if got == n {
        return Ok(v);
    }
    let file = file.clone();
    tokio::task::spawn_blocking(move || disk::read_rest(&file, at, v, got))
        .await
        .map_err(|e| io::Error::other(format!("disk read task: {e}")))?
}

/// An origin stream with each chunk (split to at most [`BLOCK`]) under its shares.
fn metered(inner: ByteStream, budget: Budget) -> ByteStream {
    let window = Arc::new(tokio::sync::Semaphore::new(WINDOW));
    let pieces = inner
        .map(|r| match r {
            Ok(mut chunk) => {
                let mut v = Vec::with_capacity(chunk.len().div_ceil(BLOCK));
                while !chunk.is_empty() {
                    v.push(Ok(chunk.split_to(chunk.len().min(BLOCK))));
                }
                futures_util::stream::iter(v)
            }
            Err(e) => futures_util::stream::iter(vec![Err(e)]),
        })
        .flatten();
    pieces
        .then(move |r| {
            let (window, budget) = (window.clone(), budget.clone());
            async move {
                let chunk = r?;
                let (held, w, _) = shares(&window, &budget, chunk.len()).await?;
                Ok(Bytes::from_owner(Block {
                    data: chunk,
                    _budget: held,
                    _window: w,
                }))
            }
        })
        .boxed()
}

type FailHook = Box<dyn FnOnce() + Send>;

/// Hashes a whole object as it streams, passes on the bytes in `start..end` as they come,
/// and holds the last piece back until the hash and length check out.
struct Verify {
    inner: ByteStream,
    hasher: blake3::Hasher,
    hash: Hash,
    len: u64,
    pos: u64,
    start: u64,
    end: u64,
    held: Option<Bytes>,
    done: bool,
    on_fail: Option<FailHook>,
}

impl Verify {
    fn new(
        inner: ByteStream,
        hash: Hash,
        len: u64,
        start: u64,
        end: u64,
        on_fail: Option<FailHook>,
    ) -> Verify {
        Verify {
            inner,
            hasher: blake3::Hasher::new(),
            hash,
            len,
            pos: 0,
            start,
            end,
            held: None,
            done: false,
            on_fail,
        }
    }

    fn fail(&mut self, why: String) -> Poll<Option<io::Result<Bytes>>> {
        self.done = true;
        self.held = None;
        if let Some(f) = self.on_fail.take() {
            f();
        }
        Poll::Ready(Some(Err(io::Error::new(io::ErrorKind::InvalidData, why))))
    }
}

impl Stream for Verify {
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            match this.inner.poll_next_unpin(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => {
                    this.done = true;
                    this.held = None;
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(Some(Ok(chunk))) => {
                    let chunk_start = this.pos;
                    let chunk_end = this.pos + chunk.len() as u64;
                    if chunk_end > this.len {
                        let why = format!("object {} is longer than {} bytes", this.hash, this.len);
                        return this.fail(why);
                    }
                    this.hasher.update(&chunk);
                    this.pos = chunk_end;
                    let lo = this.start.max(chunk_start);
                    let hi = this.end.min(chunk_end);
                    if lo < hi {
                        let piece =
                            chunk.slice((lo - chunk_start) as usize..(hi - chunk_start) as usize);
                        if hi < this.end {
                            // Not the answer's last piece: passed on at once. Holding it back
                            // until the next one arrives would make every response read a
                            // block ahead of its client (a block per stalled stream).
                            return Poll::Ready(Some(Ok(piece)));
                        }
                        // The last piece: held until the whole object checks out (below).
                        this.held = Some(piece);
                    }
                }
                Poll::Ready(None) => {
                    if this.pos != this.len {
                        let why = format!(
                            "object {} ended after {} of {} bytes",
                            this.hash, this.pos, this.len
                        );
                        return this.fail(why);
                    }
                    if Hash::from(this.hasher.finalize()) != this.hash {
                        let why = format!("object {} failed verification", this.hash);
                        return this.fail(why);
                    }
                    this.done = true;
                    return Poll::Ready(this.held.take().map(Ok));
                }
            }
        }
    }
}

#[derive(Debug, Default)]
pub struct TierStats {
    /// Origin fetches refused because the site's bulkhead was full.
    pub site_shed: AtomicU64,
    pub memory_hits: AtomicU64,
    pub disk_hits: AtomicU64,
    pub origin_fetches: AtomicU64,
    pub verify_failures: AtomicU64,
    /// Cached blobs whose length differs from the size a tree entry declares for their hash
    /// (the tree lies about a size): not served for that entry, refetched.
    pub size_mismatches: AtomicU64,
    /// Responses that joined a fill and streamed it from its file as it was written.
    pub fill_streams: AtomicU64,
    /// The background scrub of the disk tier ([`scrub`]).
    pub scrub: scrub::ScrubStats,
}

#[derive(Debug, Clone)]
pub struct TierConfig {
    pub memory_bytes: u64,
    pub memory_max_object: u64,
    /// Origin fills one site may have in flight, and waiting (a bulkhead per site).
    pub site_concurrency: usize,
    pub site_queue: usize,
}

/// The default of `server.max_buffered`, until [`Tiers::set_max_buffered`].
pub const DEFAULT_MAX_BUFFERED: u64 = 256 << 20;

#[derive(Debug, Clone)]
enum Filled {
    Memory(Bytes),
    Disk,
    /// An object asked for by hash alone turned out to be this long: more than memory and
    /// disk take. Not cached; streamed through instead.
    TooLarge(u64),
}

/// Weighs memory-tier entries by their bytes (plus a little for the entry itself).
#[derive(Debug, Clone, Copy)]
pub struct BytesWeight;

impl quick_cache::Weighter<Hash, Bytes> for BytesWeight {
    fn weight(&self, _: &Hash, b: &Bytes) -> u64 {
        b.len() as u64 + 64
    }
}

pub struct Tiers {
    /// Where fills read objects: the parents, then the origin.
    objects: Arc<Parents>,
    memory: quick_cache::sync::Cache<Hash, Bytes, BytesWeight>,
    memory_max_object: u64,
    disk: Option<Arc<DiskTier>>,
    /// Origin fills by (hash, declared size): entries that disagree on a size never share
    /// a fill (nor its size check). A child edge's request, which declares no size, fills
    /// under [`UNSIZED`].
    fills: Coalescer<(Hash, u64), Filled, EdgeError>,
    /// Fills being written to disk, readable by the requests that join them.
    live: Live,
    sites: moka::sync::Cache<String, Arc<Bulkhead>>,
    /// Response bytes in memory on their way to clients (`server.max_buffered`).
    budget: Budget,
    /// Per-site bulkhead size (limit, queue); a config reload may change them.
    site_limits: (
        std::sync::atomic::AtomicUsize,
        std::sync::atomic::AtomicUsize,
    ),
    pub stats: TierStats,
}

/// The fill key's size for an object asked for by hash alone (a child edge's request).
const UNSIZED: u64 = u64::MAX;

impl Tiers {
    /// Tiers that fill from `store` alone.
    pub fn new(store: Arc<dyn Store>, cfg: &TierConfig, disk: Option<Arc<DiskTier>>) -> Arc<Tiers> {
        Tiers::with_parents(Arc::new(Parents::none(store)), cfg, disk)
    }

    /// Tiers that fill from `objects`: its parents, then its origin.
    pub fn with_parents(
        objects: Arc<Parents>,
        cfg: &TierConfig,
        disk: Option<Arc<DiskTier>>,
    ) -> Arc<Tiers> {
        // quick_cache (S3-FIFO, sharded locks): a hit is a hash lookup under a read lock, with
        // no per-read bookkeeping queue; it measured cheaper than moka on the hit path.
        let items = (cfg.memory_bytes / 16_384).clamp(1024, 1 << 22) as usize;
        let memory = quick_cache::sync::Cache::with_weighter(items, cfg.memory_bytes, BytesWeight);
        Arc::new(Tiers {
            objects,
            memory,
            memory_max_object: cfg.memory_max_object,
            disk,
            fills: Coalescer::default(),
            live: Live::default(),
            sites: moka::sync::Cache::new(100_000),
            budget: Budget::new(DEFAULT_MAX_BUFFERED, Arc::default()),
            site_limits: (cfg.site_concurrency.into(), cfg.site_queue.into()),
            stats: TierStats::default(),
        })
    }

    pub fn disk(&self) -> Option<&Arc<DiskTier>> {
        self.disk.as_ref()
    }

    /// The sources fills read from (the parents and their counters, the origin).
    pub fn parents(&self) -> &Arc<Parents> {
        &self.objects
    }

    /// Sets `server.max_buffered`, the node-wide bound on streamed response bytes in memory.
    pub fn set_max_buffered(&self, max: u64) {
        self.budget.set_max(max);
    }

    /// Response bytes held now under `server.max_buffered` (read by the metrics).
    pub fn buffered(&self) -> &Arc<AtomicU64> {
        &self.budget.held
    }

    pub fn memory_bytes(&self) -> u64 {
        self.memory.weight()
    }

    /// The bulkhead of one site's origin fills.
    pub fn site_bulkhead(&self, site: &str) -> Arc<Bulkhead> {
        if let Some(b) = self.sites.get(site) {
            return b;
        }
        let limit = self.site_limits.0.load(Ordering::Relaxed);
        let queue = self.site_limits.1.load(Ordering::Relaxed);
        self.sites
            .get_with(site.to_owned(), || Arc::new(Bulkhead::new(limit, queue)))
    }

    /// Applies reloaded per-site limits: new bulkheads get them at once (fetches in flight
    /// keep the slots they hold).
    pub fn set_site_limits(&self, limit: usize, queue: usize) {
        self.site_limits.0.store(limit, Ordering::Relaxed);
        self.site_limits.1.store(queue, Ordering::Relaxed);
        self.sites.invalidate_all();
    }

    /// Holds a slot of `site`'s bulkhead for an origin fetch, unless the fetch for `hash`
    /// is already under way (joining it adds no origin load).
    async fn site_slot(
        &self,
        site: &str,
        hash: Hash,
        size: u64,
    ) -> EdgeResult<Option<bulkhead::Slot>> {
        if self.fills.contains(&(hash, size)) {
            return Ok(None);
        }
        match self.site_bulkhead(site).enter().await {
            Ok(slot) => Ok(Some(slot)),
            Err(_) => {
                self.stats.site_shed.fetch_add(1, Ordering::Relaxed);
                Err(EdgeError::SiteShed { site: site.into() })
            }
        }
    }

    /// Origin fills under way.
    pub fn fills_in_flight(&self) -> usize {
        self.fills.len()
    }

    fn size_mismatch(&self, hash: &Hash, got: u64, want: u64, tier: &'static str) {
        self.stats.size_mismatches.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(%hash, got, want, tier, "cached blob's size differs from its tree entry; refetching");
    }

    /// The blob `hash` of `size` bytes (as its tree entry says), from the first tier that
    /// has it. Origin fetches count against `site`'s bulkhead.
    pub async fn get(
        self: &Arc<Self>,
        hash: Hash,
        size: u64,
        site: &str,
    ) -> EdgeResult<(Blob, Source)> {
        if let Some(hit) = self.cached(hash, size).await? {
            return Ok(hit);
        }
        let slot = self.site_slot(site, hash, size).await?;
        if slot.is_some()
            && let Some(hit) = self.cached(hash, size).await?
        {
            // Filled by another request while this one waited for its slot.
            return Ok(hit);
        }
        let disk_takes = self.disk.as_ref().is_some_and(|d| d.admits(size));
        if size <= self.memory_max_object || disk_takes {
            // A large object is streamed from its fill's file as soon as the fill has one;
            // a small one is waited for whole.
            let mut watch = (size > self.memory_max_object).then(|| self.live.watch((hash, size)));
            let attempt = async {
                match watch.as_mut() {
                    Some(w) => w.attempt().await,
                    None => std::future::pending().await,
                }
            };
            let filled = tokio::select! {
                biased;
                filled = Box::pin(self.fill(hash, Some(size), slot)) => filled?,
                attempt = attempt => {
                    self.stats.fill_streams.fetch_add(1, Ordering::Relaxed);
                    let budget = self.budget.clone();
                    return Ok((Blob::Filling { attempt, budget }, Source::Origin));
                }
            };
            drop(watch);
            match filled {
                Filled::Memory(b) => return Ok((Blob::Bytes(b), Source::Origin)),
                Filled::Disk => {
                    if let Some(blob) = self.from_disk(hash, size).await? {
                        return Ok((blob, Source::Origin));
                    }
                }
                Filled::TooLarge(_) => {}
            }
        }
        self.stream_through(hash, size).await
    }

    /// An object too large for memory with no room on disk: streamed through, verifying.
    /// From the origin only: a stream is checked as it goes to the client, too late to read
    /// the object from another source when a parent's bytes fail.
    async fn stream_through(&self, hash: Hash, size: u64) -> EdgeResult<(Blob, Source)> {
        self.stats.origin_fetches.fetch_add(1, Ordering::Relaxed);
        let body = self
            .objects
            .origin()
            .open_object(&hash)
            .await?
            .ok_or(EdgeError::MissingObject { hash })?;
        if let Some(len) = body.len.filter(|&l| l != size) {
            return Err(EdgeError::SizeMismatch {
                hash,
                got: len,
                want: size,
            });
        }
        Ok((
            Blob::Origin {
                stream: body.stream,
                len: size,
                hash,
                budget: self.budget.clone(),
            },
            Source::Origin,
        ))
    }

    /// A memory or disk hit.
    async fn cached(self: &Arc<Self>, hash: Hash, size: u64) -> EdgeResult<Option<(Blob, Source)>> {
        if let Some(b) = self.memory.get(&hash) {
            if b.len() as u64 == size {
                self.stats.memory_hits.fetch_add(1, Ordering::Relaxed);
                return Ok(Some((Blob::Bytes(b), Source::Memory)));
            }
            // The bytes are right for the hash (verified when they came in); the entry asking
            // declares another size. Not served for it; the origin is asked, and a fill checks
            // the size again.
            self.size_mismatch(&hash, b.len() as u64, size, "memory");
            return Ok(None);
        }
        if let Some(blob) = self.from_disk(hash, size).await? {
            self.stats.disk_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(Some((blob, Source::Disk)));
        }
        Ok(None)
    }

    /// A disk-tier hit, checked: size always; hash too when read whole into memory.
    async fn from_disk(self: &Arc<Self>, hash: Hash, size: u64) -> EdgeResult<Option<Blob>> {
        let Some(disk) = self.disk.clone() else {
            return Ok(None);
        };
        // A miss needs no trip to the blocking pool to find out: the index is in memory. (An
        // object committed just after this look is found by the fill's own look.)
        if disk.lookup_quiet(&hash).is_none() {
            return Ok(None);
        }
        let this = self.clone();
        let into_memory = size <= self.memory_max_object;
        tokio::task::spawn_blocking(move || {
            let (recorded, known) = disk.lookup_sums(&hash)?;
            let bad = |why: &str| {
                tracing::warn!(%hash, why, "disk cache file rejected; refetching");
                this.stats.verify_failures.fetch_add(1, Ordering::Relaxed);
                disk.remove(&hash);
                None
            };
            let path = disk.path(&hash);
            let file = match std::fs::File::open(&path) {
                Ok(f) => f,
                Err(_) => return bad("file missing"),
            };
            let len = file.metadata().map(|m| m.len()).unwrap_or(u64::MAX);
            if len != recorded {
                return bad("file size differs from the size recorded at fill");
            }
            if recorded != size {
                // The file is what was verified at fill; the entry asking declares another
                // size for its hash. Kept (another entry may be right), not served for this one.
                this.size_mismatch(&hash, recorded, size, "disk");
                return None;
            }
            if into_memory {
                let mut data = Vec::with_capacity(size as usize);
                use std::io::Read;
                if (&file).read_to_end(&mut data).is_err() || Hash::of(&data) != hash {
                    return bad("hash mismatch");
                }
                let data = Bytes::from(data);
                this.memory.insert(hash, data.clone());
                return Some(Blob::Bytes(data));
            }
            // Checksums come with the fill; a file met first since the node started is
            // hashed whole once (blake3) to make them.
            let sums = match known {
                Some(sums) => sums,
                None => match sums_of_verified(&file, hash, size) {
                    Ok(sums) => {
                        disk.set_sums(&hash, size, sums.clone());
                        sums
                    }
                    Err(_) => return bad("hash mismatch"),
                },
            };
            let stats = this.clone();
            let tier = disk.clone();
            let once = std::sync::Once::new();
            Some(Blob::File {
                file,
                len,
                sums,
                on_fail: Arc::new(move || {
                    once.call_once(|| {
                        tracing::error!(%hash, "disk cache file failed its block check; dropped");
                        stats.stats.verify_failures.fetch_add(1, Ordering::Relaxed);
                        tier.remove(&hash);
                    });
                }),
                budget: this.budget.clone(),
            })
        })
        .await
        .map_err(|e| EdgeError::internal(format!("disk read task: {e}")))
    }

    /// One origin fetch per (hash, size) at a time; every waiter gets its result. The fetch
    /// runs as its own task, so it completes (and fills the cache) even if every client leaves;
    /// it holds `slot` (the site's bulkhead) until it ends, when this call started it (one
    /// that joins a fill under way lets its slot go at once).
    async fn fill(
        self: &Arc<Self>,
        hash: Hash,
        size: Option<u64>,
        slot: Option<bulkhead::Slot>,
    ) -> EdgeResult<Filled> {
        let this = self.clone();
        self.fills
            .run_detached((hash, size.unwrap_or(UNSIZED)), async move {
                let _slot = slot;
                // A request that missed the cache just before an earlier fill of this object
                // ended gets here after that fill has left: look again before the origin.
                if let Some(size) = size {
                    if let Some(b) = this.memory.get(&hash).filter(|b| b.len() as u64 == size) {
                        return Ok(Filled::Memory(b));
                    }
                    if this.disk.as_ref().and_then(|d| d.lookup(&hash)) == Some(size) {
                        return Ok(Filled::Disk);
                    }
                }
                this.fetch(hash, size).await
            })
            .await
    }

    /// The object from its sources in turn (home parent, next parent, origin): bytes that
    /// fail a check move on to the next source.
    async fn fetch(&self, hash: Hash, size: Option<u64>) -> Result<Filled, EdgeError> {
        self.stats.origin_fetches.fetch_add(1, Ordering::Relaxed);
        self.objects
            .fetch(&hash, |store| self.fetch_from(store, hash, size))
            .await?
            .ok_or(EdgeError::MissingObject { hash })
    }

    /// Reads `hash` from one source into the cache, checked: length (against `size`, the
    /// tree entry's, when known) and blake3. Small objects into memory (and disk), large
    /// ones streamed to the disk tier. `Ok(None)`: the source has no such object.
    async fn fetch_from(
        &self,
        store: &dyn Store,
        hash: Hash,
        size: Option<u64>,
    ) -> Result<Option<Filled>, EdgeError> {
        if let Some(size) = size.filter(|&s| s <= self.memory_max_object) {
            let Some(data) = store.get_object(&hash).await? else {
                return Ok(None);
            };
            // The store checks too; the edge does not rely on it.
            if let Err(e) = check_whole(&data, hash, size) {
                if matches!(e, EdgeError::Corrupt { .. }) {
                    self.stats.verify_failures.fetch_add(1, Ordering::Relaxed);
                }
                return Err(e);
            }
            return Ok(Some(self.keep(hash, data).await));
        }
        let checked = |e: EdgeError| {
            if matches!(
                e,
                EdgeError::Corrupt { .. } | EdgeError::SizeMismatch { .. }
            ) {
                self.stats.verify_failures.fetch_add(1, Ordering::Relaxed);
            }
            e
        };
        let Some(body) = store.open_object(&hash).await? else {
            return Ok(None);
        };
        let len = match (size, body.len) {
            (Some(want), Some(got)) if got != want => {
                return Err(checked(EdgeError::SizeMismatch { hash, got, want }));
            }
            (Some(want), _) => want,
            (None, Some(got)) => got,
            // The source's fault (a parent edge always sends Content-Length): the next one.
            (None, None) => {
                return Err(origin_client::StoreError::Remote {
                    op: "GET",
                    url: format!("{} object {hash}", store.location()),
                    why: "no length for an object asked for by hash alone".into(),
                    source: None,
                }
                .into());
            }
        };
        if size.is_none() && len <= self.memory_max_object {
            let data = read_whole(body.stream, hash, len).await.map_err(checked)?;
            return Ok(Some(self.keep(hash, data).await));
        }
        let disk = match &self.disk {
            Some(d) if d.admits(len) => d.clone(),
            // Only when the size was not known before (`get` streams such objects through
            // without a fill).
            _ => return Ok(Some(Filled::TooLarge(len))),
        };
        let tmp = disk.temp_path();
        let file = {
            let tmp = tmp.clone();
            tokio::task::spawn_blocking(move || {
                std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .open(tmp)
            })
            .await
            .map_err(|e| EdgeError::internal(format!("disk fill task: {e}")))?
            .map_err(EdgeError::disk)?
        };
        // Readable by every request that joins this fill, as it is written, when the source
        // is the origin: its failure is the fill's. A parent's is not (its wrong bytes move
        // the fill on to the next source), so requests wait for a parent's fill whole and
        // never see a cut response for bytes the origin would have given right.
        let attempt = Attempt::new(file, hash, len);
        let from_origin = std::ptr::addr_eq(store, Arc::as_ptr(self.objects.origin()));
        let writer = from_origin
            .then(|| Writer::publish(&self.live, (hash, size.unwrap_or(UNSIZED)), attempt.clone()));
        let sums = match stream_to_file(body.stream, &attempt, hash, len).await {
            Ok(sums) => sums,
            Err(e) => {
                if let Some(w) = &writer {
                    w.fail(e.to_string());
                }
                let _ = tokio::fs::remove_file(&tmp).await;
                return Err(checked(e));
            }
        };
        if let Some(w) = &writer {
            w.verified();
        }
        tokio::task::spawn_blocking(move || disk.commit(&hash, &tmp, len, Some(sums)))
            .await
            .map_err(|e| EdgeError::internal(format!("disk commit task: {e}")))?
            .map_err(EdgeError::disk)?;
        drop(writer);
        Ok(Some(Filled::Disk))
    }

    /// Keeps verified bytes in memory and on disk.
    async fn keep(&self, hash: Hash, data: Bytes) -> Filled {
        if let Some(disk) = self.disk.clone() {
            let d = data.clone();
            let written = tokio::task::spawn_blocking(move || disk.write(&hash, &d)).await;
            if let Ok(Err(e)) = written {
                tracing::warn!(%hash, error = %e, "disk cache write failed");
            }
        }
        self.memory.insert(hash, data.clone());
        Filled::Memory(data)
    }

    /// Object `hash` whatever its size, for a child edge: from memory, the disk tier, or a
    /// fill (coalesced with every other request for it by hash alone; from this node's
    /// parents or origin, verified). `Ok(None)`: the origin has no such object. An object
    /// too large for this node's tiers streams through from the origin, verified as it goes.
    pub async fn object(self: &Arc<Self>, hash: Hash) -> EdgeResult<Option<(Blob, Source)>> {
        if let Some(b) = self.memory.get(&hash) {
            self.stats.memory_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(Some((Blob::Bytes(b), Source::Memory)));
        }
        let on_disk = |this: &Arc<Self>| this.disk.as_ref().and_then(|d| d.lookup(&hash));
        if let Some(size) = on_disk(self)
            && let Some(blob) = self.from_disk(hash, size).await?
        {
            self.stats.disk_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(Some((blob, Source::Disk)));
        }
        // A large object is streamed to the child from the fill's file as it is written.
        let mut watch = self.live.watch((hash, UNSIZED));
        let filled = tokio::select! {
            biased;
            filled = Box::pin(self.fill(hash, None, None)) => filled,
            attempt = watch.attempt() => {
                self.stats.fill_streams.fetch_add(1, Ordering::Relaxed);
                let budget = self.budget.clone();
                return Ok(Some((Blob::Filling { attempt, budget }, Source::Origin)));
            }
        };
        drop(watch);
        match filled {
            Ok(Filled::Memory(b)) => Ok(Some((Blob::Bytes(b), Source::Origin))),
            Ok(Filled::TooLarge(len)) => self.stream_through(hash, len).await.map(Some),
            Ok(Filled::Disk) => match on_disk(self) {
                Some(size) => Ok(self
                    .from_disk(hash, size)
                    .await?
                    .map(|b| (b, Source::Origin))),
                // Evicted at once by other fills: the child reads it elsewhere.
                None => Err(EdgeError::internal(format!(
                    "object {hash} left the disk tier as it was filled"
                ))),
            },
            Err(EdgeError::MissingObject { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// The error of an origin body that failed mid-way, with its kind kept: a transfer deadline
/// is a timeout (504), anything else an upstream failure (502).
pub fn body_error(e: io::Error, hash: &Hash) -> EdgeError {
    EdgeError::from(origin_client::StoreError::from_body(
        e,
        &format!("object {hash}"),
    ))
}

/// Reads a stream of `size` bytes whole; fails unless length and hash match.
async fn read_whole(mut stream: ByteStream, hash: Hash, size: u64) -> Result<Bytes, EdgeError> {
    let mut data = Vec::with_capacity(size as usize);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| body_error(e, &hash))?;
        if (data.len() + chunk.len()) as u64 > size {
            return Err(EdgeError::SizeMismatch {
                hash,
                got: (data.len() + chunk.len()) as u64,
                want: size,
            });
        }
        data.extend_from_slice(&chunk);
    }
    check_whole(&data, hash, size)?;
    Ok(Bytes::from(data))
}

/// A whole object against what it should be: its length, then its hash.
fn check_whole(data: &[u8], hash: Hash, size: u64) -> Result<(), EdgeError> {
    if data.len() as u64 != size {
        return Err(EdgeError::SizeMismatch {
            hash,
            got: data.len() as u64,
            want: size,
        });
    }
    if Hash::of(data) != hash {
        return Err(EdgeError::Corrupt { hash });
    }
    Ok(())
}

/// The most a fill takes from its source before writing to its file: what the source has
/// ready, up to this.
const FILL_BATCH: usize = 256 << 10;

/// Copies a source's stream into the attempt's file (`pwrite` on the blocking pool, a batch
/// of what the source has ready at a time), hashing as it goes and telling the attempt's
/// readers after each batch; fails unless length and hash match.
async fn stream_to_file(
    mut stream: ByteStream,
    attempt: &Attempt,
    hash: Hash,
    size: u64,
) -> Result<sums::Sums, EdgeError> {
    use futures_util::FutureExt;
    let mut hasher = blake3::Hasher::new();
    let mut sums = sums::SumsBuilder::with_len(size);
    let mut got = 0u64;
    let mut ended = false;
    while !ended {
        let Some(first) = stream.next().await else {
            break;
        };
        let mut batch = vec![first.map_err(|e| body_error(e, &hash))?];
        let mut n = batch[0].len();
        while n < FILL_BATCH && !ended {
            match stream.next().now_or_never() {
                Some(Some(chunk)) => {
                    let chunk = chunk.map_err(|e| body_error(e, &hash))?;
                    n += chunk.len();
                    batch.push(chunk);
                }
                Some(None) => ended = true,
                None => break,
            }
        }
        let from = got;
        for chunk in &batch {
            got += chunk.len() as u64;
            if got > size {
                return Err(EdgeError::SizeMismatch {
                    hash,
                    got,
                    want: size,
                });
            }
            hasher.update(chunk);
            sums.update(chunk);
        }
        let file = attempt.file().clone();
        tokio::task::spawn_blocking(move || {
            use std::os::unix::fs::FileExt;
            let mut pos = from;
            for chunk in &batch {
                file.write_all_at(chunk, pos)?;
                pos += chunk.len() as u64;
            }
            Ok::<_, io::Error>(())
        })
        .await
        .map_err(|e| EdgeError::internal(format!("disk write task: {e}")))?
        .map_err(EdgeError::disk)?;
        attempt.wrote(got);
    }
    if got != size {
        return Err(EdgeError::SizeMismatch {
            hash,
            got,
            want: size,
        });
    }
    if Hash::from(hasher.finalize()) != hash {
        return Err(EdgeError::Corrupt { hash });
    }
    Ok(sums.finish())
}

/// The block checksums of a disk file, made while hashing it whole: `Err` unless its bytes
/// are `size` long and hash to `hash`. Blocking; reads in 1 MiB steps.
fn sums_of_verified(file: &std::fs::File, hash: Hash, size: u64) -> io::Result<sums::Sums> {
    let mut hasher = blake3::Hasher::new();
    let mut sums = sums::SumsBuilder::with_len(size);
    let mut buf = Vec::new();
    let mut pos = 0u64;
    while pos < size {
        let n = (size - pos).min(1 << 20) as usize;
        buf = disk::read_at(file, pos, n, buf)?;
        hasher.update(&buf);
        sums.update(&buf);
        pos += n as u64;
    }
    if Hash::from(hasher.finalize()) != hash {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("disk cache file {hash} failed verification"),
        ));
    }
    Ok(sums.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::TryStreamExt;
    use origin_client::store::MemoryStore;

    /// Block sizes follow the client: up while it keeps up (at most once per GROW_EVERY),
    /// down while it does not, within [MIN_BLOCK, BLOCK].
    #[test]
    fn block_sizes_follow_the_client() {
        let mut pace = Pace {
            size: MIN_BLOCK,
            sent: 0,
        };
        // Up to SMALL_BLOCK until PROVEN bytes went out, then up to BLOCK.
        for _ in 0..10 {
            pace = pace.next(pace.size, true);
        }
        assert_eq!(pace.size, SMALL_BLOCK);
        assert!(pace.sent < PROVEN);
        pace = pace.next(PROVEN as usize, true);
        for _ in 0..10 {
            pace = pace.next(pace.size, true);
        }
        assert_eq!(pace.size, BLOCK);
        pace = pace.next(BLOCK, false);
        assert_eq!(pace.size, BLOCK / 2);
        for _ in 0..10 {
            pace = pace.next(MIN_BLOCK, false);
        }
        assert_eq!(pace.size, MIN_BLOCK);
    }

    /// A memory store that counts object reads and answers them slowly, so misses overlap.
    fn slow_counting() -> (MemoryStore, MemoryStore, Arc<AtomicU64>) {
        let reads = Arc::new(AtomicU64::new(0));
        let r = reads.clone();
        let plain = MemoryStore::new();
        let slow = plain.with_read_hook(Arc::new(move |_| {
            r.fetch_add(1, Ordering::SeqCst);
            Box::pin(async {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                Ok(())
            })
        }));
        (plain, slow, reads)
    }

    async fn concurrent_misses(size: usize, disk: bool) -> (u64, Vec<Vec<u8>>) {
        let (plain, slow, reads) = slow_counting();
        let data: Vec<u8> = (0..size).map(|i| (i * 7 % 256) as u8).collect();
        let hash = Hash::of(&data);
        plain
            .put_object(&hash, Bytes::from(data.clone()))
            .await
            .unwrap();
        let store = Arc::new(slow);
        let dir = tempfile::tempdir().unwrap();
        let disk = disk.then(|| Arc::new(DiskTier::open(dir.path(), 64 << 20).unwrap()));
        let tiers = Tiers::new(
            store.clone(),
            &TierConfig {
                memory_bytes: 8 << 20,
                memory_max_object: 64 * 1024,
                site_concurrency: 4,
                site_queue: 200,
            },
            disk,
        );
        let tasks: Vec<_> = (0..100)
            .map(|_| {
                let t = tiers.clone();
                tokio::spawn(async move {
                    let (blob, _) = t.get(hash, size as u64, "s").await.unwrap();
                    let n = blob.len();
                    // Copied out block by block, as a transport does: a stream holds at
                    // most WINDOW blocks until they are dropped.
                    let s = blob.into_stream(0, n);
                    s.try_fold(Vec::new(), |mut v, b| async move {
                        v.extend_from_slice(&b);
                        Ok(v)
                    })
                    .await
                    .unwrap()
                })
            })
            .collect();
        let mut bodies = Vec::new();
        for t in tasks {
            bodies.push(t.await.unwrap());
        }
        assert!(bodies.iter().all(|b| *b == data));
        (reads.load(Ordering::SeqCst), bodies)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_small_misses_make_one_origin_fetch() {
        let (reads, bodies) = concurrent_misses(10_000, false).await;
        assert_eq!(reads, 1);
        assert_eq!(bodies.len(), 100);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_large_misses_make_one_origin_fetch_through_disk() {
        let (reads, bodies) = concurrent_misses(1 << 20, true).await;
        assert_eq!(reads, 1);
        assert_eq!(bodies.len(), 100);
    }

    /// Tiers with a 64 MiB disk tier (objects over 64 KiB go to disk) over `store`.
    pub(super) fn disk_tiers(store: Arc<dyn Store>, dir: &std::path::Path) -> Arc<Tiers> {
        let disk = Arc::new(DiskTier::open(dir, 64 << 20).unwrap());
        Tiers::new(
            store,
            &TierConfig {
                memory_bytes: 8 << 20,
                memory_max_object: 64 * 1024,
                site_concurrency: 4,
                site_queue: 200,
            },
            Some(disk),
        )
    }

    /// Waits (up to 10 s) for the fill's task to end: clients may finish just before it
    /// commits the file and leaves.
    async fn fills_done(tiers: &Tiers) {
        for _ in 0..2000 {
            if tiers.fills_in_flight() == 0 {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        panic!("the fill did not end");
    }

    /// One client of a burst: its first block (reported on `first`), then the rest.
    fn burst_client(
        tiers: &Arc<Tiers>,
        hash: Hash,
        size: u64,
        first: tokio::sync::mpsc::UnboundedSender<()>,
    ) -> tokio::task::JoinHandle<io::Result<Vec<u8>>> {
        let t = tiers.clone();
        tokio::spawn(async move {
            let (blob, source) = t.get(hash, size, "s").await.unwrap();
            assert_eq!(source, Source::Origin);
            let mut s = blob.into_stream(0, size);
            let mut got = Vec::new();
            while let Some(b) = s.next().await {
                if got.is_empty() {
                    let _ = first.send(());
                }
                got.extend_from_slice(&b?);
            }
            Ok(got)
        })
    }

    /// A burst of `n` clients on a cold 1 MiB object whose origin stream stalls at
    /// `stall_after` (and inverts the byte at `flip_at`, if given), returned once every
    /// client has had its first bytes.
    struct Burst {
        faults: Arc<crate::testing::FaultStore>,
        tiers: Arc<Tiers>,
        _dir: tempfile::TempDir,
        data: Vec<u8>,
        hash: Hash,
        size: u64,
        clients: Vec<tokio::task::JoinHandle<io::Result<Vec<u8>>>>,
    }

    const BURST_WAIT: std::time::Duration = std::time::Duration::from_secs(20);

    async fn burst(n: usize, stall_after: u64, flip_at: Option<u64>) -> Burst {
        let faults = Arc::new(crate::testing::FaultStore::default());
        let data: Vec<u8> = (0..(1u32 << 20)).map(|i| (i * 13 % 251) as u8).collect();
        let (hash, size) = (Hash::of(&data), data.len() as u64);
        faults
            .store
            .put_object(&hash, Bytes::from(data.clone()))
            .await
            .unwrap();
        faults.stall_after.store(stall_after, Ordering::SeqCst);
        if let Some(at) = flip_at {
            faults.flip_at.store(at, Ordering::SeqCst);
        }
        let dir = tempfile::tempdir().unwrap();
        let tiers = disk_tiers(faults.clone(), dir.path());
        let (tx, mut firsts) = tokio::sync::mpsc::unbounded_channel();
        let clients: Vec<_> = (0..n)
            .map(|_| burst_client(&tiers, hash, size, tx.clone()))
            .collect();
        for _ in 0..n {
            tokio::time::timeout(BURST_WAIT, firsts.recv())
                .await
                .expect("every client has its first bytes while the origin stalls")
                .unwrap();
        }
        Burst {
            faults,
            tiers,
            _dir: dir,
            data,
            hash,
            size,
            clients,
        }
    }

    /// A burst on a cold large object: one origin fetch, every client has bytes while the
    /// fill is still under way (the origin stalls mid-body), none has its last byte before
    /// the object checked out, and all get it whole once the origin goes on.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_streams_one_fill_to_every_waiter_as_it_is_written() {
        let Burst {
            faults,
            tiers,
            _dir,
            data,
            hash,
            size,
            clients,
        } = burst(50, 300_000, None).await;
        // The origin is still stalled: one fetch, under way, and no client done.
        assert_eq!(faults.object_reads.load(Ordering::SeqCst), 1);
        assert_eq!(tiers.fills_in_flight(), 1);
        assert!(clients.iter().all(|c| !c.is_finished()));
        faults.release();
        for c in clients {
            let got = tokio::time::timeout(BURST_WAIT, c)
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            assert!(
                got == data,
                "a client got {} wrong or missing bytes",
                got.len()
            );
        }
        assert_eq!(faults.object_reads.load(Ordering::SeqCst), 1);
        fills_done(&tiers).await;
        assert_eq!(tiers.stats.fill_streams.load(Ordering::Relaxed), 50);
        assert_eq!(
            tiers.live.len(),
            0,
            "no entry outlives its fill and waiters"
        );
        // Filled: the next request is a disk hit.
        let (_, source) = tiers.get(hash, size, "s").await.unwrap();
        assert_eq!(source, Source::Disk);
    }

    /// Wrong bytes from the origin while clients stream a fill: every client's stream
    /// fails, none is handed the whole length, nothing is cached, and the next request
    /// fills again from a healed origin.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_fill_that_fails_its_hash_cuts_every_waiter_short() {
        // Inverted near the end, after every client has had bytes.
        let Burst {
            faults,
            tiers,
            _dir,
            data,
            hash,
            size,
            clients,
        } = burst(20, 500_000, Some((1 << 20) - 10)).await;
        faults.release();
        for c in clients {
            let got = tokio::time::timeout(BURST_WAIT, c).await.unwrap().unwrap();
            assert!(
                got.is_err(),
                "a client was handed the whole length of wrong bytes"
            );
        }
        fills_done(&tiers).await;
        assert_eq!(tiers.stats.verify_failures.load(Ordering::Relaxed), 1);
        assert_eq!(tiers.live.len(), 0);
        assert!(tiers.disk.as_ref().unwrap().lookup(&hash).is_none());
        faults.flip_at.store(u64::MAX, Ordering::SeqCst);
        let (blob, _) = tiers.get(hash, size, "s").await.unwrap();
        assert!(read_blob(blob).await == data);
        assert_eq!(faults.object_reads.load(Ordering::SeqCst), 2);
    }

    async fn read_blob(blob: Blob) -> Vec<u8> {
        let n = blob.len();
        blob.into_stream(0, n)
            .try_fold(Vec::new(), |mut v, b| async move {
                v.extend_from_slice(&b);
                Ok(v)
            })
            .await
            .unwrap()
    }

    /// What a child edge asks for (a hash, no size): concurrent requests share one fill,
    /// later ones hit memory, and an object more than the tiers take streams through
    /// (verified, not cached); a missing one is `None`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn objects_by_hash_alone_fill_once_and_stream_what_does_not_fit() {
        let (plain, slow, reads) = slow_counting();
        let small: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let big: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 239) as u8).collect();
        for d in [&small, &big] {
            plain
                .put_object(&Hash::of(d), Bytes::from(d.clone()))
                .await
                .unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        // One object may take an eighth of the disk tier: 256 KiB here, less than `big`.
        let disk = Arc::new(DiskTier::open(dir.path(), 2 << 20).unwrap());
        let tiers = Tiers::new(
            Arc::new(slow),
            &TierConfig {
                memory_bytes: 8 << 20,
                memory_max_object: 64 * 1024,
                site_concurrency: 4,
                site_queue: 200,
            },
            Some(disk),
        );
        let h = Hash::of(&small);
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let t = tiers.clone();
                tokio::spawn(async move { t.object(h).await.unwrap().unwrap() })
            })
            .collect();
        for t in tasks {
            let (blob, _) = t.await.unwrap();
            assert_eq!(read_blob(blob).await, small);
        }
        assert_eq!(reads.load(Ordering::SeqCst), 1, "one fill for 20 requests");
        let (blob, source) = tiers.object(h).await.unwrap().unwrap();
        assert_eq!(source, Source::Memory);
        assert_eq!(read_blob(blob).await, small);
        let (_, source) = tiers.get(h, small.len() as u64, "s").await.unwrap();
        assert_eq!(source, Source::Memory, "the node's own request finds it");

        let before = reads.load(Ordering::SeqCst);
        let (blob, source) = tiers.object(Hash::of(&big)).await.unwrap().unwrap();
        assert_eq!(source, Source::Origin);
        assert_eq!(read_blob(blob).await, big, "streamed through, whole");
        assert_eq!(tiers.disk().unwrap().len(), 1, "not cached on disk");
        assert!(reads.load(Ordering::SeqCst) > before);

        assert!(tiers.object(Hash::of(b"missing")).await.unwrap().is_none());
        assert_eq!(tiers.fills_in_flight(), 0);
    }

    fn chunks(data: &[u8], size: usize) -> ByteStream {
        let v: Vec<io::Result<Bytes>> = data
            .chunks(size)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        futures_util::stream::iter(v).boxed()
    }

    async fn run(v: Verify) -> (Vec<u8>, bool) {
        let mut out = Vec::new();
        let mut s = v.boxed();
        loop {
            match s.try_next().await {
                Ok(Some(b)) => out.extend_from_slice(&b),
                Ok(None) => return (out, true),
                Err(_) => return (out, false),
            }
        }
    }

    #[tokio::test]
    async fn verify_passes_good_bytes_and_windows() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 253) as u8).collect();
        let h = Hash::of(&data);
        let (out, ok) = run(Verify::new(chunks(&data, 777), h, 10_000, 0, 10_000, None)).await;
        assert!(ok);
        assert_eq!(out, data);
        let (out, ok) = run(Verify::new(chunks(&data, 777), h, 10_000, 1234, 5678, None)).await;
        assert!(ok);
        assert_eq!(out, &data[1234..5678]);
    }

    /// A piece that is not the last is passed on before the next one is read: a response
    /// whose client takes nothing holds no block beyond the one it has been given.
    #[tokio::test]
    async fn verify_reads_no_piece_ahead() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 253) as u8).collect();
        let h = Hash::of(&data);
        let first = futures_util::stream::iter([Ok(Bytes::copy_from_slice(&data[..1000]))]);
        // After the first piece the source never yields again.
        let stalled = first.chain(futures_util::stream::pending()).boxed();
        let mut v = Verify::new(stalled, h, 10_000, 0, 10_000, None).boxed();
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), v.try_next())
            .await
            .expect("the first piece without the second")
            .expect("no error");
        assert_eq!(got.as_deref(), Some(&data[..1000]));
    }

    /// A disk read starts with a small block, doubling while the client keeps up.
    /// A disk file with its checksums, and how many times its check failed.
    fn checked_file(
        data: &[u8],
        damage: Option<usize>,
    ) -> (
        tempfile::TempDir,
        Arc<std::fs::File>,
        Checked,
        Arc<AtomicU64>,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        let mut on_disk = data.to_vec();
        if let Some(at) = damage {
            on_disk[at] ^= 0x10;
        }
        std::fs::write(&path, &on_disk).unwrap();
        let file = Arc::new(std::fs::File::open(&path).unwrap());
        let fails = Arc::new(AtomicU64::new(0));
        let f = fails.clone();
        let checked = Checked {
            len: data.len() as u64,
            sums: sums::of(data),
            on_fail: Arc::new(move || {
                f.fetch_add(1, Ordering::SeqCst);
            }),
        };
        (dir, file, checked, fails)
    }

    /// Reads `start..end`: the bytes that came, and whether the stream ended in an error.
    async fn read_range(
        file: &Arc<std::fs::File>,
        c: Checked,
        start: u64,
        end: u64,
    ) -> (Vec<u8>, bool) {
        let budget = Budget::new(1 << 20, Arc::default());
        let mut blocks = read_blocks(file.clone(), c, start, end, budget);
        let mut out = Vec::new();
        loop {
            match blocks.try_next().await {
                Ok(Some(b)) => out.extend_from_slice(&b),
                Ok(None) => return (out, false),
                Err(_) => return (out, true),
            }
        }
    }

    #[tokio::test]
    async fn disk_reads_start_small_and_keep_to_checksum_blocks() {
        let data: Vec<u8> = (0..600_000u32).map(|i| (i % 251) as u8).collect();
        let (_dir, file, checked, fails) = checked_file(&data, None);
        let budget = Budget::new(1 << 20, Arc::default());
        let mut blocks = read_blocks(file, checked, 0, data.len() as u64, budget);
        let mut sizes = Vec::new();
        let mut out = Vec::new();
        while let Some(b) = blocks.try_next().await.unwrap() {
            sizes.push(b.len());
            out.extend_from_slice(&b);
        }
        assert_eq!(out, data);
        // From 2 KiB up, never more than BLOCK; a piece smaller than a checksum block stays
        // inside one, a larger one is whole checksum blocks (the last may end at the end of
        // the file), so it is sent without a copy.
        assert_eq!(sizes[0], FIRST_BLOCK);
        let sum = sums::SUM_BLOCK;
        let mut pos = 0u64;
        for &n in &sizes {
            let n = n as u64;
            assert!(n <= BLOCK as u64, "{sizes:?}");
            if n < sum {
                assert_eq!(pos / sum, (pos + n - 1) / sum, "{sizes:?}");
            } else {
                assert_eq!(pos % sum, 0, "{sizes:?}");
                assert!(
                    (pos + n).is_multiple_of(sum) || pos + n == data.len() as u64,
                    "{sizes:?}"
                );
            }
            pos += n;
        }
        assert_eq!(fails.load(Ordering::SeqCst), 0);
    }

    /// A client that still holds the block being written while it asks for the next (as
    /// every transport does) is keeping up: its reads grow to full blocks. (They stayed at
    /// MIN_BLOCK when "kept up" needed both window slots free: 8 KiB per disk read.)
    #[tokio::test]
    async fn a_streaming_client_gets_full_blocks() {
        let data: Vec<u8> = (0..4_000_000u32).map(|i| (i % 249) as u8).collect();
        let (_dir, file, checked, _fails) = checked_file(&data, None);
        let budget = Budget::new(256 << 20, Arc::default());
        let mut blocks = read_blocks(file, checked, 0, data.len() as u64, budget);
        let mut sizes = Vec::new();
        let mut out = Vec::new();
        let mut writing: Option<Bytes> = None;
        while let Some(b) = blocks.try_next().await.unwrap() {
            sizes.push(b.len());
            out.extend_from_slice(&b);
            // The block before is let go only now, once the next one has come.
            writing = Some(b);
        }
        drop(writing);
        assert_eq!(out, data);
        let full = sizes.iter().filter(|&&n| n == BLOCK).count();
        assert!(
            full >= 16,
            "{full} full blocks of {}: {sizes:?}",
            sizes.len()
        );
    }

    /// A flipped byte on disk: a range (or whole read) over it never yields a byte of the
    /// damaged block; ranges that miss it are served; the failure is reported once per read.
    #[tokio::test]
    async fn disk_reads_never_yield_a_damaged_block() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i * 31 % 253) as u8).collect();
        // Byte 100,000 is in the block 98,304..131,072.
        let damaged = 100_000;
        let cases: [(u64, u64, usize); 5] = [
            (0, 50_000, 50_000),
            (140_000, 200_000, 60_000),
            (99_000, 99_500, 0),
            (60_000, 150_000, 98_304 - 60_000),
            (0, 200_000, 98_304),
        ];
        for (start, end, good) in cases {
            let (_dir, file, checked, fails) = checked_file(&data, Some(damaged));
            let (out, failed) = read_range(&file, checked, start, end).await;
            let whole = good as u64 == end - start;
            assert_eq!(failed, !whole, "{start}..{end}: failed={failed}");
            assert_eq!(
                out.len(),
                good,
                "{start}..{end}: bytes before the damaged block only"
            );
            assert!(
                out == data[start as usize..start as usize + good],
                "{start}..{end}: a wrong byte"
            );
            assert_eq!(fails.load(Ordering::SeqCst), u64::from(!whole));
        }
        // A truncated file fails its check too (a short read is an I/O error, not wrong bytes).
        let (dir, file, checked, _) = checked_file(&data, None);
        std::fs::OpenOptions::new()
            .write(true)
            .open(dir.path().join("blob"))
            .and_then(|f| f.set_len(150_000))
            .unwrap();
        let (out, failed) = read_range(&file, checked, 0, 200_000).await;
        assert!(failed && out.len() <= 150_000 && out == data[..out.len()]);
    }

    #[tokio::test]
    async fn verify_never_completes_wrong_bytes() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 253) as u8).collect();
        let h = Hash::of(&data);
        let mut bad = data.clone();
        bad[9_999] ^= 1;
        let (out, ok) = run(Verify::new(chunks(&bad, 1000), h, 10_000, 0, 10_000, None)).await;
        assert!(!ok);
        assert!(out.len() < 10_000, "the last chunk is held back");
        let (_, ok) = run(Verify::new(
            chunks(&data[..9_000], 1000),
            h,
            10_000,
            0,
            10_000,
            None,
        ))
        .await;
        assert!(!ok, "truncated");
        let mut long = data.clone();
        long.push(0);
        let (_, ok) = run(Verify::new(chunks(&long, 1000), h, 10_000, 0, 10_000, None)).await;
        assert!(!ok, "too long");
    }
}

#[cfg(test)]
mod future_sizes {
    /// The hit path's futures stay small: a large future is copied whenever it is built or
    /// moved, and one 29 KiB pointer-fetch future once made memmove 14% of a hit's CPU.
    /// Miss paths are boxed to keep it so.
    #[tokio::test]
    async fn hit_path_futures_are_small() {
        fn size_of<F: Future>(_: &F) -> usize {
            std::mem::size_of::<F>()
        }
        let store: std::sync::Arc<dyn origin_client::Store> =
            std::sync::Arc::new(origin_client::store::MemoryStore::new());
        let cfg = edge_config::Config::default();
        let handler = crate::node::build_handler(&cfg, store, false)
            .await
            .unwrap();
        let t = handler.tiers().clone();
        let r = handler.pointers().clone();
        let trees = handler.trees().clone();
        let routes = crate::http::Routes::new(trees.clone(), 1 << 20);
        let h = origin_client::Hash::of(b"x");
        let p = crate::path::parse("/a/b").unwrap();
        let sizes = [
            ("tiers.get", size_of(&t.get(h, 1, "s")), 1024),
            ("routes.lookup", size_of(&routes.lookup(h, "/a/b", &p)), 512),
            (
                "pointers.site_for_host",
                size_of(&r.site_for_host(Some("x"))),
                256,
            ),
            ("pointers.deploy", size_of(&r.deploy("s")), 256),
            ("trees.get", size_of(&trees.get(h)), 256),
        ];
        for (what, n, max) in sizes {
            assert!(n <= max, "{what}: {n} bytes (at most {max})");
        }
    }
}
