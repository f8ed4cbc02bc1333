//! The disk tier: content-addressed files under `DIR/blobs/<hh>/<hash>`, bounded in bytes,
//! evicting the least recently used.
//!
//! Fills are written to `DIR/tmp/` and renamed into place only after their bytes have been
//! checked against the hash, so a file under `blobs/` was whole and right when written. The
//! index (hash -> size, recency) lives in memory and is rebuilt at start from file names and
//! sizes alone (no byte is read), so a restarted node serves its disk cache at once. Damage
//! after the write is caught when the file is read: its size is checked against the tree
//! entry on every lookup; a file read whole into memory is hashed (blake3); a file streamed
//! (whole or a range) is checked block by block against its [`Sums`], kept with the index:
//! made at fill, or, after a restart, by hashing the whole file once at its first read.
//!
//! Every method here does blocking file I/O: call them from the blocking pool (but
//! [`read_cached`], which never waits on the disk). A background scrub (`tiers::scrub`)
//! reads every file back in turn at a bounded rate and drops the damaged ones.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use origin_client::Hash;

use super::sums::Sums;

#[derive(Debug)]
pub struct DiskTier {
    dir: PathBuf,
    capacity: u64,
    index: Mutex<Index>,
    tmp_counter: AtomicU64,
    evictions: AtomicU64,
}

#[derive(Debug)]
struct Entry {
    size: u64,
    tick: u64,
    /// Block checksums, once known (at fill, or after the file's first whole check).
    sums: Option<Sums>,
}

#[derive(Debug, Default)]
struct Index {
    entries: HashMap<Hash, Entry>,
    order: BTreeMap<u64, Hash>, // recency tick -> hash, oldest first
    tick: u64,
    bytes: u64,
}

/// An entry as [`DiskTier::entries_between`] lists it.
#[derive(Debug, Clone)]
pub struct Listed {
    pub tick: u64,
    pub hash: Hash,
    pub size: u64,
    pub sums: Option<Sums>,
}

/// Evicted files moved aside into `tmp/` (under the index lock, by rename), to unlink once
/// the lock is released.
#[must_use = "moved-aside files must be unlinked"]
struct Graves(Vec<PathBuf>);

impl Index {
    fn touch(&mut self, hash: &Hash) -> Option<u64> {
        self.tick += 1;
        let tick = self.tick;
        let (size, old) = {
            let e = self.entries.get_mut(hash)?;
            let old = e.tick;
            e.tick = tick;
            (e.size, old)
        };
        self.order.remove(&old);
        self.order.insert(tick, *hash);
        Some(size)
    }

    fn insert(&mut self, hash: Hash, size: u64, sums: Option<Sums>) {
        self.remove(&hash);
        self.tick += 1;
        let tick = self.tick;
        self.entries.insert(hash, Entry { size, tick, sums });
        self.order.insert(self.tick, hash);
        self.bytes += size;
    }

    fn remove(&mut self, hash: &Hash) -> Option<u64> {
        let Entry { size, tick, .. } = self.entries.remove(hash)?;
        self.order.remove(&tick);
        self.bytes -= size;
        Some(size)
    }

    fn pop_oldest(&mut self) -> Option<Hash> {
        let (_, hash) = self.order.pop_first()?;
        if let Some(e) = self.entries.remove(&hash) {
            self.bytes -= e.size;
        }
        Some(hash)
    }
}

impl DiskTier {
    /// Opens (creating) the tier at `dir` and rebuilds the index from what is there,
    /// oldest-modified first. Leftover temporary files are removed; files beyond the bound
    /// are evicted.
    pub fn open(dir: &Path, capacity: u64) -> io::Result<DiskTier> {
        fs::create_dir_all(dir.join("blobs"))?;
        let tmp = dir.join("tmp");
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir_all(&tmp)?;
        let mut found = Vec::new();
        for fan in fs::read_dir(dir.join("blobs"))? {
            let fan = fan?;
            if !fan.file_type()?.is_dir() {
                continue;
            }
            for f in fs::read_dir(fan.path())? {
                let f = f?;
                let name = f.file_name();
                let Some(hash) = name.to_str().and_then(|n| n.parse::<Hash>().ok()) else {
                    let _ = fs::remove_file(f.path()); // not ours
                    continue;
                };
                let meta = f.metadata()?;
                if !meta.is_file() {
                    continue;
                }
                let mtime = meta.modified().unwrap_or(std::time::UNIX_EPOCH);
                found.push((mtime, hash, meta.len()));
            }
        }
        found.sort();
        let tier = DiskTier {
            dir: dir.to_owned(),
            capacity,
            index: Mutex::new(Index::default()),
            tmp_counter: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
        };
        {
            let mut idx = tier.lock();
            for (_, hash, size) in found {
                idx.insert(hash, size, None);
            }
        }
        tier.evict_to(capacity);
        Ok(tier)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Index> {
        // Index updates are single map operations; a panic cannot leave it half-changed.
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn path(&self, hash: &Hash) -> PathBuf {
        let hex = hash.to_hex();
        self.dir.join("blobs").join(&hex[..2]).join(hex)
    }

    /// The size recorded for `hash` if the tier has it (marking it recently used).
    pub fn lookup(&self, hash: &Hash) -> Option<u64> {
        self.lock().touch(hash)
    }

    /// The size recorded for `hash` if the tier has it, without marking it used.
    pub fn lookup_quiet(&self, hash: &Hash) -> Option<u64> {
        self.lock().entries.get(hash).map(|e| e.size)
    }

    /// The size and, once known, the block checksums of `hash` (marking it recently used).
    pub fn lookup_sums(&self, hash: &Hash) -> Option<(u64, Option<Sums>)> {
        let mut idx = self.lock();
        let size = idx.touch(hash)?;
        Some((size, idx.entries.get(hash).and_then(|e| e.sums.clone())))
    }

    /// Records the block checksums of the `size`-byte file of `hash`, made from bytes that
    /// passed blake3 (ignored if the file was replaced or dropped since).
    pub fn set_sums(&self, hash: &Hash, size: u64, sums: Sums) {
        if let Some(e) = self.lock().entries.get_mut(hash)
            && e.size == size
        {
            e.sums = Some(sums);
        }
    }

    /// The recency tick of the newest entry: entries touched or added after this call get
    /// larger ones.
    pub fn tick(&self) -> u64 {
        self.lock().tick
    }

    /// Up to `n` entries whose recency tick is in `after + 1 ..= upto`, least recently used
    /// first: their tick, hash, size and block checksums (if known). Marks none as used.
    pub fn entries_between(&self, after: u64, upto: u64, n: usize) -> Vec<Listed> {
        if after >= upto {
            return Vec::new();
        }
        let idx = self.lock();
        idx.order
            .range(after + 1..=upto)
            .take(n)
            .filter_map(|(&tick, hash)| {
                let e = idx.entries.get(hash)?;
                Some(Listed {
                    tick,
                    hash: *hash,
                    size: e.size,
                    sums: e.sums.clone(),
                })
            })
            .collect()
    }

    /// Drops a damaged or unwanted file.
    pub fn remove(&self, hash: &Hash) {
        let graves = {
            let mut idx = self.lock();
            let mut graves = Graves(Vec::new());
            if idx.remove(hash).is_some() {
                self.doom(hash, &mut graves);
            }
            graves
        };
        self.bury(graves);
    }

    /// Moves an evicted file aside (a rename: one metadata operation, done under the lock so
    /// that a fill of the same hash that commits next cannot be unlinked by mistake).
    /// Called with the lock held, so `blobs/` never holds more than the bound. Like a fill's
    /// temporary file, the moved-aside file lives briefly in `tmp/` (emptied at start too).
    fn doom(&self, hash: &Hash, graves: &mut Graves) {
        let n = self.tmp_counter.fetch_add(1, Ordering::Relaxed);
        let grave = self.dir.join("tmp").join(format!("evicted-{n}"));
        if fs::rename(self.path(hash), &grave).is_ok() {
            graves.0.push(grave);
        }
    }

    /// Unlinks moved-aside files, outside the index lock: freeing a large file's extents can
    /// take a while, and lookups must not wait for it.
    fn bury(&self, graves: Graves) {
        for grave in &graves.0 {
            let _ = fs::remove_file(grave);
        }
    }

    /// A fresh temporary path for a fill.
    pub fn temp_path(&self) -> PathBuf {
        let n = self.tmp_counter.fetch_add(1, Ordering::Relaxed);
        self.dir.join("tmp").join(format!("fill-{n}"))
    }

    /// Whether an object of `size` bytes may enter the tier (one object may take at most an
    /// eighth of it, so a single huge file cannot flush everything else).
    pub fn admits(&self, size: u64) -> bool {
        size <= self.capacity / 8
    }

    /// Moves a verified temporary file into the tier and evicts down to the bound.
    ///
    /// Choosing victims, moving them out of `blobs/`, the rename into place and the index
    /// update happen under one lock, so concurrent fills can never leave more bytes under
    /// `blobs/` than the bound; the victims are unlinked after the lock is released.
    pub fn commit(&self, hash: &Hash, tmp: &Path, size: u64, sums: Option<Sums>) -> io::Result<()> {
        if !self.admits(size) {
            let _ = fs::remove_file(tmp);
            return Ok(());
        }
        let dest = self.path(hash);
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent)?;
        }
        let mut graves = Graves(Vec::new());
        let renamed = {
            let mut idx = self.lock();
            idx.remove(hash); // replaced by the rename below
            let target = self.capacity.saturating_sub(size);
            while idx.bytes > target {
                let Some(victim) = idx.pop_oldest() else {
                    break;
                };
                self.evictions.fetch_add(1, Ordering::Relaxed);
                self.doom(&victim, &mut graves);
            }
            let renamed = fs::rename(tmp, &dest);
            if renamed.is_ok() {
                idx.insert(*hash, size, sums);
            }
            renamed
        };
        self.bury(graves);
        if let Err(e) = renamed {
            let _ = fs::remove_file(tmp);
            return Err(e);
        }
        Ok(())
    }

    /// Reads a whole object if the tier has it and it verifies; a damaged file is dropped.
    pub fn read_verified(&self, hash: &Hash) -> Option<bytes::Bytes> {
        self.lookup(hash)?;
        match fs::read(self.path(hash)) {
            Ok(data) if Hash::of(&data) == *hash => Some(bytes::Bytes::from(data)),
            _ => {
                self.remove(hash);
                None
            }
        }
    }

    /// Writes `data` (already verified) as the object `hash`.
    pub fn write(&self, hash: &Hash, data: &[u8]) -> io::Result<()> {
        if !self.admits(data.len() as u64) {
            return Ok(());
        }
        let tmp = self.temp_path();
        if let Err(e) = fs::write(&tmp, data) {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        self.commit(hash, &tmp, data.len() as u64, None)
    }

    fn evict_to(&self, target: u64) {
        let mut graves = Graves(Vec::new());
        {
            let mut idx = self.lock();
            while idx.bytes > target {
                let Some(hash) = idx.pop_oldest() else {
                    break;
                };
                self.evictions.fetch_add(1, Ordering::Relaxed);
                self.doom(&hash, &mut graves);
            }
        }
        self.bury(graves);
    }

    /// Bytes currently indexed.
    pub fn bytes(&self) -> u64 {
        self.lock().bytes
    }

    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }
}

/// `n` bytes of `file` from offset `at`, read into `v`'s spare, uninitialised room (`v` is
/// cleared first; pass the previous buffer back to reuse its allocation). A zeroed
/// allocation of a block's size (`vec![0; n]`) makes jemalloc hand its pages back to the
/// kernel and fault them in again (an IPI to every core each time): a fifth of the node's
/// CPU when it streamed large files. Short of `n` bytes is an `UnexpectedEof`. Blocking.
pub fn read_at(file: &fs::File, at: u64, n: usize, mut v: Vec<u8>) -> io::Result<Vec<u8>> {
    v.clear();
    v.reserve_exact(n);
    while v.len() < n {
        let from = at + v.len() as u64;
        match rustix::io::pread(file, rustix::buffer::spare_capacity(&mut v), from) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("disk cache file ends at {from}, before {}", at + n as u64),
                ));
            }
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    // The allocation may have had room for more than `n`.
    v.truncate(n);
    Ok(v)
}

/// What of `n` bytes of `file` from offset `at` the page cache holds, read on the calling
/// thread with `RWF_NOWAIT` (it never waits on the disk): the buffer (`n` long) and how many
/// bytes from its start were read. Short when a page is not cached, at the end of the file,
/// or where the file system cannot read without waiting: [`read_rest`] then reads the rest.
/// The buffer is zeroed first (a `memset`, not a zeroed allocation: see [`read_at`]).
#[allow(
    clippy::slow_vector_initialization,
    reason = "vec![0; n] is a zeroed allocation, the cost this avoids"
)]
pub fn read_cached(file: &fs::File, at: u64, n: usize) -> (Vec<u8>, usize) {
    let mut v = Vec::with_capacity(n);
    v.resize(n, 0);
    let mut got = 0;
    while got < n {
        let mut slice = [io::IoSliceMut::new(&mut v[got..])];
        match rustix::io::preadv2(
            file,
            &mut slice,
            at + got as u64,
            rustix::io::ReadWriteFlags::NOWAIT,
        ) {
            Ok(0) => break,
            Ok(k) => got += k,
            Err(rustix::io::Errno::INTR) => {}
            Err(_) => break,
        }
    }
    (v, got)
}

/// The rest of a [`read_cached`] buffer: `v[got..]` read from `at + got`, waiting on the
/// disk. Short of the end is an `UnexpectedEof`. Blocking.
pub fn read_rest(file: &fs::File, at: u64, mut v: Vec<u8>, got: usize) -> io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    file.read_exact_at(&mut v[got..], at + got as u64)?;
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(i: u32, len: usize) -> (Hash, Vec<u8>) {
        let data = vec![(i % 251) as u8; len];
        let mut d = data.clone();
        d.extend_from_slice(&i.to_le_bytes());
        (Hash::of(&d), d)
    }

    fn on_disk(dir: &Path) -> u64 {
        let mut total = 0;
        for fan in fs::read_dir(dir.join("blobs")).unwrap() {
            for f in fs::read_dir(fan.unwrap().path()).unwrap() {
                total += f.unwrap().metadata().unwrap().len();
            }
        }
        total
    }

    #[test]
    fn reads_of_a_range_give_its_bytes_and_a_short_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        fs::write(&path, &data).unwrap();
        let file = fs::File::open(&path).unwrap();
        for (at, n) in [
            (0usize, 1usize),
            (0, 300_000),
            (12_345, 131_072),
            (299_999, 1),
        ] {
            let (v, got) = read_cached(&file, at as u64, n);
            assert_eq!(v.len(), n);
            let v = read_rest(&file, at as u64, v, got).unwrap();
            assert_eq!(v, &data[at..at + n], "cached read of {n} at {at}");
            let v = read_at(&file, at as u64, n, Vec::new()).unwrap();
            assert_eq!(v, &data[at..at + n], "read of {n} at {at}");
        }
        // Past the end: the cached part stops at the end, the rest is an error.
        let (v, got) = read_cached(&file, 299_000, 2_000);
        assert_eq!(got, 1_000);
        assert_eq!(&v[..got], &data[299_000..]);
        let e = read_rest(&file, 299_000, v, got).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        let e = read_at(&file, 299_000, 2_000, Vec::new()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn stays_within_bound_and_evicts_lru() {
        let dir = tempfile::tempdir().unwrap();
        let tier = DiskTier::open(dir.path(), 64 * 1024).unwrap();
        let mut hashes = Vec::new();
        for i in 0..48 {
            let (h, d) = blob(i, 4096);
            tier.write(&h, &d).unwrap();
            hashes.push(h);
            // Keep the first object hot.
            tier.lookup(&hashes[0]);
            assert!(tier.bytes() <= 64 * 1024);
            assert!(on_disk(dir.path()) <= 64 * 1024);
            let left = fs::read_dir(dir.path().join("tmp")).unwrap().count();
            assert_eq!(
                left, 0,
                "evicted files are unlinked once the lock is released"
            );
        }
        assert!(tier.lookup(&hashes[0]).is_some(), "recently used survives");
        assert!(
            tier.lookup(&hashes[1]).is_none(),
            "least recently used evicted"
        );
        assert!(tier.evictions() > 0);
    }

    #[test]
    fn index_rebuilds_from_names_and_sizes() {
        let dir = tempfile::tempdir().unwrap();
        let (h, d) = blob(7, 1000);
        {
            let tier = DiskTier::open(dir.path(), 1 << 20).unwrap();
            tier.write(&h, &d).unwrap();
            fs::write(dir.path().join("tmp/leftover"), b"x").unwrap();
        }
        let tier = DiskTier::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(tier.lookup(&h), Some(d.len() as u64));
        assert_eq!(tier.len(), 1);
        assert!(!dir.path().join("tmp/leftover").exists());
        // Reopening with a smaller bound evicts.
        drop(tier);
        let tier = DiskTier::open(dir.path(), 500).unwrap();
        assert!(tier.is_empty());
    }

    #[test]
    fn refuses_objects_over_an_eighth() {
        let dir = tempfile::tempdir().unwrap();
        let tier = DiskTier::open(dir.path(), 8000).unwrap();
        let (h, d) = blob(1, 1001);
        tier.write(&h, &d).unwrap();
        assert!(tier.lookup(&h).is_none());
    }
}
