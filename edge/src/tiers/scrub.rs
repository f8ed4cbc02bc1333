//! The background scrub of the disk tier: every file read back in turn, least recently used
//! first, at a bounded rate (`cache.disk_scrub_rate`), hashed whole (blake3) and compared with
//! its block checksums. A damaged file (wrong hash, wrong length, a read error, gone from
//! under its entry) is dropped before a client meets it, counted and logged; the next request
//! for it refills it. A file whose checksums were not known yet (met first since the node
//! started) gets them, so its first read is not a whole-file hash any more. What the scrub
//! had to read from the disk it drops from the page cache again, so a pass over a cold tier
//! does not push hot files out of memory.
//!
//! One pass covers the entries as they stood when it began (a file used since has just been
//! checked block by block by its reader, and comes round in the next pass); passes are
//! [`PASS_PAUSE`] apart, the first one that long after the start. The reads run on the
//! blocking pool, one step of at most [`STEP`] bytes at a time, each followed by a pause of
//! its share of the rate, so the scrub costs at most `rate` bytes a second of disk and
//! blake3, and never a serving thread. A pass logs its first [`LOGGED_PER_PASS`] damaged
//! files one by one and the rest in one line.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use origin_client::Hash;

use super::Tiers;
use super::disk::{self, DiskTier, Listed};
use super::sums;

/// The most one read of the scrub takes.
pub const STEP: u64 = 1 << 20;

/// What a file costs the rate at least (its open and metadata, for tiny files).
const MIN_COST: u64 = 4 << 10;

/// Entries listed from the index at a time.
const PAGE: usize = 64;

/// Damaged files logged one by one in a pass; the rest are counted in one line at its end.
const LOGGED_PER_PASS: u64 = 10;

/// Between two passes.
pub const PASS_PAUSE: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
pub struct ScrubStats {
    /// Bytes read and checked.
    pub bytes: AtomicU64,
    /// Files read whole and found right.
    pub files: AtomicU64,
    /// Files found damaged and dropped.
    pub failures: AtomicU64,
    /// Passes over the whole tier completed.
    pub passes: AtomicU64,
}

/// Starts the scrub of `tiers`' disk tier at `rate` bytes a second, as a task that ends when
/// the tiers are dropped. Nothing when the rate is zero or there is no disk tier.
pub fn spawn(tiers: &Arc<Tiers>, rate: u64) -> Option<tokio::task::JoinHandle<()>> {
    if rate == 0 || tiers.disk().is_none() {
        return None;
    }
    let weak = Arc::downgrade(tiers);
    Some(tokio::spawn(async move {
        // The first pass a pause after the start, not during the warm-up.
        loop {
            tokio::time::sleep(PASS_PAUSE).await;
            if pass(&weak, rate).await.is_none() {
                return;
            }
        }
    }))
}

/// One pass over the disk tier as it stands now: the files checked, or `None` once the
/// tiers are gone.
pub async fn pass(tiers: &Weak<Tiers>, rate: u64) -> Option<u64> {
    let disk = tiers.upgrade()?.disk()?.clone();
    let upto = disk.tick();
    let mut after = 0;
    let (mut checked, mut dropped) = (0, 0);
    loop {
        let page = disk.entries_between(after, upto, PAGE);
        if page.is_empty() {
            break;
        }
        for entry in page {
            after = entry.tick;
            let hash = entry.hash;
            let t = tiers.upgrade()?;
            checked += 1;
            let Err(why) = check(&t, &disk, entry, rate).await else {
                continue;
            };
            // A file evicted while the scrub read it is not damage. (One evicted and filled
            // again meanwhile is dropped with the old one: a refetch, never a wrong byte.)
            if disk.lookup_quiet(&hash).is_none() {
                continue;
            }
            dropped += 1;
            if dropped <= LOGGED_PER_PASS {
                tracing::error!(%hash, why, "disk scrub: cached file damaged; dropped (refetched when next asked for)");
            }
            t.stats.scrub.failures.fetch_add(1, Ordering::Relaxed);
            t.stats.verify_failures.fetch_add(1, Ordering::Relaxed);
            disk.remove(&hash);
        }
    }
    if dropped > LOGGED_PER_PASS {
        tracing::error!(
            dropped,
            "disk scrub: {} more damaged files dropped in this pass (not logged one by one)",
            dropped - LOGGED_PER_PASS
        );
    }
    tiers
        .upgrade()?
        .stats
        .scrub
        .passes
        .fetch_add(1, Ordering::Relaxed);
    Some(checked)
}

/// Reads one file whole, paced: `Err` with what is wrong if it is damaged.
async fn check(tiers: &Tiers, disk: &DiskTier, entry: Listed, rate: u64) -> Result<(), String> {
    let Listed {
        hash, size, sums, ..
    } = entry;
    let stats = &tiers.stats.scrub;
    let path = disk.path(&hash);
    let opened = tokio::task::spawn_blocking(move || {
        let file = std::fs::File::open(path)?;
        let len = file.metadata()?.len();
        Ok::<_, io::Error>((file, len))
    })
    .await;
    let (file, len) = match opened {
        Ok(Ok(f)) => f,
        Ok(Err(e)) => return Err(format!("cannot open it: {e}")),
        Err(e) => {
            tracing::warn!(%hash, "disk scrub task: {e}");
            return Ok(());
        }
    };
    if len != size {
        return Err(format!("{len} bytes on disk, {size} recorded at fill"));
    }
    let file = Arc::new(file);
    let mut state = (blake3::Hasher::new(), sums::SumsBuilder::with_len(size));
    let mut pos = 0;
    while pos < size {
        let n = (size - pos).min(STEP);
        let f = file.clone();
        let step = tokio::task::spawn_blocking(move || {
            let (mut hasher, mut builder) = state;
            let buf = read_uncached(&f, pos, n as usize)?;
            hasher.update(&buf);
            builder.update(&buf);
            Ok::<_, io::Error>((hasher, builder))
        })
        .await;
        state = match step {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(format!("read at {pos}: {e}")),
            Err(e) => {
                tracing::warn!(%hash, "disk scrub task: {e}");
                return Ok(());
            }
        };
        pos += n;
        stats.bytes.fetch_add(n, Ordering::Relaxed);
        pace(n, rate).await;
    }
    if size == 0 {
        pace(0, rate).await;
    }
    let (hasher, builder) = state;
    if Hash::from(hasher.finalize()) != hash {
        return Err("its bytes do not hash to its name".into());
    }
    stats.files.fetch_add(1, Ordering::Relaxed);
    let made = builder.finish();
    if sums.as_deref() != Some(&made[..]) {
        // Unknown yet (first met since the start), or (never expected) recorded wrong:
        // these were made from bytes that just passed blake3.
        disk.set_sums(&hash, size, made);
    }
    Ok(())
}

/// `n` bytes of `file` from `at`, leaving the page cache as it found it: what it held is
/// read from it (and stays), what had to come from the disk is dropped from it again
/// (`POSIX_FADV_DONTNEED`), so a pass over a cold tier does not push hot files out of memory.
/// Blocking.
fn read_uncached(file: &std::fs::File, at: u64, n: usize) -> io::Result<Vec<u8>> {
    let (v, got) = disk::read_cached(file, at, n);
    if got == n {
        return Ok(v);
    }
    let v = disk::read_rest(file, at, v, got)?;
    let len = std::num::NonZeroU64::new((n - got) as u64);
    // Advice only: a file system that ignores it costs page cache, not correctness.
    let _ = rustix::fs::fadvise(file, at + got as u64, len, rustix::fs::Advice::DontNeed);
    Ok(v)
}

/// Waits out `n` bytes' share of the rate (at least [`MIN_COST`]'s).
async fn pace(n: u64, rate: u64) {
    let cost = n.max(MIN_COST) as f64 / rate as f64;
    tokio::time::sleep(Duration::from_secs_f64(cost)).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use origin_client::store::MemoryStore;
    use std::io::{Seek, SeekFrom, Write};

    fn tiers_over(dir: &std::path::Path) -> Arc<Tiers> {
        crate::tiers::tests::disk_tiers(Arc::new(MemoryStore::new()), dir)
    }

    fn object(seed: u32, len: usize) -> (Hash, Vec<u8>) {
        let data: Vec<u8> = (0..len as u32)
            .map(|i| (i.wrapping_mul(31).wrapping_add(seed) % 251) as u8)
            .collect();
        (Hash::of(&data), data)
    }

    /// Good files stay (and get their block checksums), a flipped byte and a truncated file
    /// are found, counted and dropped, and nothing else is touched.
    #[tokio::test]
    async fn a_pass_drops_damaged_files_and_keeps_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let tiers = tiers_over(dir.path());
        let disk = tiers.disk().unwrap().clone();
        // With checksums from its fill, and without (written as after a restart).
        let (a, a_data) = object(1, 3 * STEP as usize + 1000);
        let tmp = disk.temp_path();
        std::fs::write(&tmp, &a_data).unwrap();
        disk.commit(&a, &tmp, a_data.len() as u64, Some(sums::of(&a_data)))
            .unwrap();
        let (d, d_data) = object(4, 70_000);
        disk.write(&d, &d_data).unwrap();
        // A byte flipped deep inside, and a file cut short.
        let (b, b_data) = object(2, 2 * STEP as usize);
        disk.write(&b, &b_data).unwrap();
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(disk.path(&b))
            .unwrap();
        f.seek(SeekFrom::Start(STEP + 12_345)).unwrap();
        f.write_all(&[b_data[(STEP + 12_345) as usize] ^ 0x40])
            .unwrap();
        drop(f);
        let (c, c_data) = object(3, 100_000);
        disk.write(&c, &c_data).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(disk.path(&c))
            .unwrap()
            .set_len(50_000)
            .unwrap();
        assert!(disk.lookup_sums(&d).unwrap().1.is_none());
        // a's pages out of the page cache (synced first: dirty pages stay), so the pass reads
        // it from the disk rather than the cache.
        let f = std::fs::File::open(disk.path(&a)).unwrap();
        f.sync_all().unwrap();
        rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed).unwrap();
        let (_, cached) = disk::read_cached(&f, 0, a_data.len());
        assert!(cached < a_data.len(), "a still cached whole");

        let checked = pass(&Arc::downgrade(&tiers), 1 << 40).await;
        assert_eq!(checked, Some(4));
        let s = &tiers.stats.scrub;
        assert_eq!(s.files.load(Ordering::Relaxed), 2, "a and d are whole");
        assert_eq!(s.failures.load(Ordering::Relaxed), 2, "b and c are not");
        assert_eq!(tiers.stats.verify_failures.load(Ordering::Relaxed), 2);
        assert_eq!(s.passes.load(Ordering::Relaxed), 1);
        // c's length was wrong before any byte was read.
        let read = (a_data.len() + b_data.len() + d_data.len()) as u64;
        assert_eq!(s.bytes.load(Ordering::Relaxed), read);
        for (h, kept) in [(a, true), (b, false), (c, false), (d, true)] {
            assert_eq!(disk.lookup_quiet(&h).is_some(), kept, "{h} kept: {kept}");
            assert_eq!(disk.path(&h).exists(), kept, "{h} on disk: {kept}");
        }
        assert_eq!(disk.lookup_sums(&d).unwrap().1.unwrap(), sums::of(&d_data));
        assert_eq!(disk.lookup_sums(&a).unwrap().1.unwrap(), sums::of(&a_data));
        assert_eq!(c_data.len(), 100_000);
    }

    /// A pass costs the rate: 3 MiB at 1 MiB a second takes 3 s (tokio's clock); a pass of
    /// tiers that are gone ends.
    #[tokio::test(start_paused = true)]
    async fn a_pass_keeps_to_its_rate() {
        let dir = tempfile::tempdir().unwrap();
        let tiers = tiers_over(dir.path());
        let disk = tiers.disk().unwrap().clone();
        for seed in 0..3 {
            let (h, data) = object(seed, STEP as usize);
            disk.write(&h, &data).unwrap();
        }
        let t0 = tokio::time::Instant::now();
        let weak = Arc::downgrade(&tiers);
        assert_eq!(pass(&weak, STEP).await, Some(3));
        let took = t0.elapsed();
        assert!(
            took >= Duration::from_secs(3) && took < Duration::from_millis(3100),
            "{took:?}"
        );
        assert_eq!(tiers.stats.scrub.bytes.load(Ordering::Relaxed), 3 * STEP);
        // Gone with the tiers.
        drop(tiers);
        assert_eq!(pass(&weak, STEP).await, None);
    }
}
