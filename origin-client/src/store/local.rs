//! A store in a local directory: the embedded default.
//!
//! Every write goes to `tmp/` first, is fsynced, then renamed into place (and the directory
//! fsynced), so a crash leaves either the old file or the new one, never half of one. Objects
//! are written only after their bytes are checked against their hash. Pointer moves hold an
//! exclusive lock on `sites/<site>/lock` across read-compare-write.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};

use super::{
    Access, GcState, ObjectBody, ObjectInfo, Store, StoreError, check_current, check_deploy,
    check_host, layout, parse_record, sort_deploys,
};
use crate::Hash;
use crate::records::{
    CurrentPointer, DeployRecord, HostIndex, HostRecord, normalize_host, validate_deploy_id,
    validate_site,
};

#[derive(Debug, Clone)]
pub struct LocalStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    root: PathBuf,
    tmp_counter: AtomicU64,
}

async fn blocking<T, F>(f: F) -> Result<T, StoreError>
where
    F: FnOnce() -> Result<T, StoreError> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::io("run", "blocking task", io::Error::other(e)))?
}

impl LocalStore {
    /// Opens the store at `root`. For [`Access::Write`] the folder is created when missing;
    /// for reading it must exist. A path that is not a directory is refused either way.
    pub fn open(root: &Path, access: Access) -> Result<LocalStore, StoreError> {
        match fs::metadata(root) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(StoreError::Location {
                    location: root.display().to_string(),
                    why: "is not a directory".into(),
                });
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound && access == Access::Write => {
                fs::create_dir_all(root).map_err(|e| StoreError::io("create", root, e))?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound && access == Access::Serve => {
                tracing::warn!(store = %root.display(), "store folder does not exist (yet); reads fail until it appears");
                return Ok(LocalStore::open_lenient(root));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::Location {
                    location: root.display().to_string(),
                    why: "does not exist".into(),
                });
            }
            Err(e) => return Err(StoreError::io("stat", root, e)),
        }
        if access == Access::Write {
            remove_stale_temp_files(&root.join("tmp"));
        }
        Ok(LocalStore {
            inner: Arc::new(Inner {
                root: root.to_owned(),
                tmp_counter: AtomicU64::new(0),
            }),
        })
    }

    /// Opens for reading without requiring the folder to exist yet: every read is then an
    /// error (not "not found") until it appears. For a node that must start, and serve what
    /// it has cached, while its store is unavailable.
    pub fn open_lenient(root: &Path) -> LocalStore {
        LocalStore {
            inner: Arc::new(Inner {
                root: root.to_owned(),
                tmp_counter: AtomicU64::new(0),
            }),
        }
    }

    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    pub fn object_path(&self, hash: &Hash) -> PathBuf {
        self.inner.root.join(layout::object(hash))
    }
}

impl Inner {
    fn path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    /// A fresh temporary file under `tmp/`, on the same filesystem as every final path.
    fn temp_file(&self) -> Result<(File, PathBuf), StoreError> {
        let dir = self.root.join("tmp");
        fs::create_dir_all(&dir).map_err(|e| StoreError::io("create", &dir, e))?;
        // The counter is per handle, not per folder: another handle on the same store in this
        // process, or a file left by a killed process whose pid was reused, may hold a name.
        // `create_new` sees that; take the next name instead of failing the write.
        let mut attempts = 0;
        loop {
            let n = self.tmp_counter.fetch_add(1, Ordering::Relaxed);
            let path = dir.join(format!("{}.{}.tmp", std::process::id(), n));
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(f) => return Ok((f, path)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempts < 10_000 => {
                    attempts += 1;
                }
                Err(e) => return Err(StoreError::io("create", &path, e)),
            }
        }
    }

    /// Fsyncs `tmp`, renames it to `dest`, fsyncs the directory. Removes `tmp` on failure.
    fn commit(&self, file: File, tmp: &Path, dest: &Path) -> Result<(), StoreError> {
        let res = (|| {
            file.sync_all()
                .map_err(|e| StoreError::io("fsync", tmp, e))?;
            drop(file);
            let parent = dest.parent().unwrap_or(&self.root);
            fs::create_dir_all(parent).map_err(|e| StoreError::io("create", parent, e))?;
            fs::rename(tmp, dest).map_err(|e| StoreError::io("rename into", dest, e))?;
            sync_dir(parent)
        })();
        if res.is_err() {
            let _ = fs::remove_file(tmp);
        }
        res
    }

    fn write_atomic(&self, dest: &Path, data: &[u8]) -> Result<(), StoreError> {
        let (mut f, tmp) = self.temp_file()?;
        if let Err(e) = f.write_all(data) {
            let _ = fs::remove_file(&tmp);
            return Err(StoreError::io("write", &tmp, e));
        }
        self.commit(f, &tmp, dest)
    }

    /// "Not found" is only an answer while the store itself is there: a store folder that
    /// vanished (an unmounted disk, a deleted folder) is an error, never an empty store.
    fn not_found<T>(&self, v: T) -> Result<T, StoreError> {
        match fs::metadata(&self.root) {
            Ok(m) if m.is_dir() => Ok(v),
            Ok(_) => Err(StoreError::io(
                "open",
                &self.root,
                io::Error::other("store root is no longer a directory"),
            )),
            Err(e) => Err(StoreError::io("open store", &self.root, e)),
        }
    }

    fn read_opt(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let path = self.path(key);
        match fs::read(&path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => self.not_found(None),
            Err(e) => Err(StoreError::io("read", path, e)),
        }
    }

    /// Whether a complete object is stored: present with the expected length. (Objects are
    /// written atomically, so a short file can only come from damage outside the store.)
    fn object_present(&self, hash: &Hash, len: u64) -> Result<bool, StoreError> {
        let path = self.path(&layout::object(hash));
        match fs::metadata(&path) {
            Ok(m) => Ok(m.len() == len),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(StoreError::io("stat", path, e)),
        }
    }

    fn lock_site(&self, site: &str) -> Result<File, StoreError> {
        let dir = self.path(&format!("sites/{site}"));
        fs::create_dir_all(&dir).map_err(|e| StoreError::io("create", &dir, e))?;
        lock_file(&dir.join("lock"))
    }
}

/// Temporary files untouched for this long belong to a writer that died (a killed publish).
const STALE_TEMP: std::time::Duration = std::time::Duration::from_secs(3600);

/// Removes what killed writers left in `tmp/`. A live writer touches its file as it writes,
/// so only files idle for [`STALE_TEMP`] go. Best effort: failures are ignored.
fn remove_stale_temp_files(tmp: &Path) {
    let Ok(rd) = fs::read_dir(tmp) else { return };
    let now = std::time::SystemTime::now();
    for ent in rd.flatten() {
        let stale = ent
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| now.duration_since(t).ok())
            .is_some_and(|age| age > STALE_TEMP);
        if stale {
            let _ = fs::remove_file(ent.path());
        }
    }
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::io("fsync", dir, e))
}

#[async_trait]
impl Store for LocalStore {
    fn location(&self) -> String {
        format!("file://{}", self.inner.root.display())
    }

    async fn get_object(&self, hash: &Hash) -> Result<Option<Bytes>, StoreError> {
        let inner = self.inner.clone();
        let hash = *hash;
        blocking(move || {
            let key = layout::object(&hash);
            let path = inner.path(&key);
            let mut f = match File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return inner.not_found(None),
                Err(e) => return Err(StoreError::io("open", path, e)),
            };
            let size = f
                .metadata()
                .map_err(|e| StoreError::io("stat", &path, e))?
                .len();
            if size > super::MAX_WHOLE_OBJECT {
                return Err(StoreError::TooLarge {
                    hash,
                    size,
                    limit: super::MAX_WHOLE_OBJECT,
                });
            }
            let mut buf = Vec::with_capacity(size as usize);
            f.read_to_end(&mut buf)
                .map_err(|e| StoreError::io("read", &path, e))?;
            if Hash::of(&buf) != hash {
                return Err(StoreError::Corrupt { hash });
            }
            Ok(Some(Bytes::from(buf)))
        })
        .await
    }

    async fn open_object(&self, hash: &Hash) -> Result<Option<ObjectBody>, StoreError> {
        let path = self.inner.path(&layout::object(hash));
        let f = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let inner = self.inner.clone();
                return blocking(move || inner.not_found(None)).await;
            }
            Err(e) => return Err(StoreError::io("open", path, e)),
        };
        let len = f
            .metadata()
            .await
            .map_err(|e| StoreError::io("stat", &path, e))?
            .len();
        let stream = tokio_util::io::ReaderStream::with_capacity(f, 256 * 1024).map_err(move |e| {
            let kind = e.kind();
            StoreError::io("read", &path, e).into_io(kind)
        });
        Ok(Some(ObjectBody {
            len: Some(len),
            stream: stream.boxed(),
        }))
    }

    async fn has_object(&self, hash: &Hash) -> Result<bool, StoreError> {
        let path = self.inner.path(&layout::object(hash));
        match tokio::fs::metadata(&path).await {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let inner = self.inner.clone();
                blocking(move || inner.not_found(false)).await
            }
            Err(e) => Err(StoreError::io("stat", path, e)),
        }
    }

    async fn put_object(&self, hash: &Hash, data: Bytes) -> Result<bool, StoreError> {
        let inner = self.inner.clone();
        let hash = *hash;
        blocking(move || {
            if Hash::of(&data) != hash {
                return Err(StoreError::Corrupt { hash });
            }
            if inner.object_present(&hash, data.len() as u64)? {
                return Ok(false);
            }
            inner.write_atomic(&inner.path(&layout::object(&hash)), &data)?;
            Ok(true)
        })
        .await
    }

    async fn put_object_file(&self, hash: &Hash, src: &Path) -> Result<bool, StoreError> {
        let inner = self.inner.clone();
        let hash = *hash;
        let src = src.to_owned();
        blocking(move || {
            let mut input = File::open(&src).map_err(|e| StoreError::io("open", &src, e))?;
            let len = input
                .metadata()
                .map_err(|e| StoreError::io("stat", &src, e))?
                .len();
            if inner.object_present(&hash, len)? {
                return Ok(false);
            }
            // Copy and hash in one pass: what lands in the store is exactly what was hashed.
            let (mut out, tmp) = inner.temp_file()?;
            let mut hasher = blake3::Hasher::new();
            let mut buf = vec![0u8; 256 * 1024];
            let copied = (|| loop {
                let n = match input.read(&mut buf) {
                    Ok(0) => return Ok(()),
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(StoreError::io("read", &src, e)),
                };
                hasher.update(&buf[..n]);
                out.write_all(&buf[..n])
                    .map_err(|e| StoreError::io("write", &tmp, e))?;
            })();
            if let Err(e) = copied {
                let _ = fs::remove_file(&tmp);
                return Err(e);
            }
            if Hash::from(hasher.finalize()) != hash {
                let _ = fs::remove_file(&tmp);
                return Err(StoreError::SourceChanged { path: src });
            }
            inner.commit(out, &tmp, &inner.path(&layout::object(&hash)))?;
            Ok(true)
        })
        .await
    }

    async fn get_host(&self, host: &str) -> Result<Option<HostRecord>, StoreError> {
        let host = normalize_host(host)?;
        let inner = self.inner.clone();
        blocking(move || {
            let key = layout::host(&host);
            match inner.read_opt(&key)? {
                None => Ok(None),
                Some(b) => Ok(Some(check_host(&host, parse_record(&key, &b)?)?)),
            }
        })
        .await
    }

    async fn put_host(&self, record: &HostRecord) -> Result<(), StoreError> {
        super::check("host record", record.validate())?;
        let inner = self.inner.clone();
        let record = record.clone();
        blocking(move || {
            let json = serde_json::to_vec_pretty(&record).map_err(|e| StoreError::Record {
                key: layout::host(&record.host),
                source: e.into(),
            })?;
            inner.write_atomic(&inner.path(&layout::host(&record.host)), &json)
        })
        .await
    }

    async fn get_current(&self, site: &str) -> Result<Option<CurrentPointer>, StoreError> {
        validate_site(site)?;
        let inner = self.inner.clone();
        let site = site.to_owned();
        blocking(move || read_current(&inner, &site)).await
    }

    async fn swap_current(
        &self,
        expected: Option<u64>,
        new: &CurrentPointer,
    ) -> Result<(), StoreError> {
        super::check("current pointer", new.validate())?;
        let inner = self.inner.clone();
        let new = new.clone();
        blocking(move || {
            let _lock = inner.lock_site(&new.site)?;
            let found = read_current(&inner, &new.site)?.map(|c| c.seq);
            if found != expected {
                return Err(StoreError::Conflict {
                    site: new.site.clone(),
                    expected,
                    found,
                });
            }
            let json = serde_json::to_vec_pretty(&new).map_err(|e| StoreError::Record {
                key: layout::current(&new.site),
                source: e.into(),
            })?;
            inner.write_atomic(&inner.path(&layout::current(&new.site)), &json)
        })
        .await
    }

    async fn put_deploy(&self, record: &DeployRecord) -> Result<(), StoreError> {
        super::check("deploy record", record.validate())?;
        let inner = self.inner.clone();
        let record = record.clone();
        blocking(move || {
            let key = layout::deploy(&record.site, &record.id);
            let json = serde_json::to_vec_pretty(&record).map_err(|e| StoreError::Record {
                key: key.clone(),
                source: e.into(),
            })?;
            let _lock = inner.lock_site(&record.site)?;
            if inner.read_opt(&key)?.is_some_and(|old| old != json) {
                return Err(StoreError::Record {
                    key,
                    source: crate::records::RecordError::Mismatch {
                        expected: "a new deploy id".into(),
                        found: record.id.clone(),
                    },
                });
            }
            inner.write_atomic(&inner.path(&key), &json)?;
            // The history file is derived from the deploy records (the source of truth) and
            // rewritten whole, so a crash before this point is repaired by the next write.
            let ids: Vec<String> = list_deploys_blocking(&inner, &record.site)?
                .into_iter()
                .map(|d| d.id)
                .collect();
            let mut text = ids.join("\n");
            text.push('\n');
            inner.write_atomic(&inner.path(&layout::history(&record.site)), text.as_bytes())
        })
        .await
    }

    async fn get_deploy(&self, site: &str, id: &str) -> Result<Option<DeployRecord>, StoreError> {
        validate_site(site)?;
        validate_deploy_id(id)?;
        let inner = self.inner.clone();
        let (site, id) = (site.to_owned(), id.to_owned());
        blocking(move || {
            let key = layout::deploy(&site, &id);
            match inner.read_opt(&key)? {
                None => Ok(None),
                Some(b) => Ok(Some(check_deploy(&site, &id, parse_record(&key, &b)?)?)),
            }
        })
        .await
    }

    async fn list_deploys(&self, site: &str) -> Result<Vec<DeployRecord>, StoreError> {
        validate_site(site)?;
        let inner = self.inner.clone();
        let site = site.to_owned();
        blocking(move || list_deploys_blocking(&inner, &site)).await
    }

    async fn list_sites(&self) -> Result<Vec<String>, StoreError> {
        let inner = self.inner.clone();
        blocking(move || {
            let dir = inner.path("sites");
            let rd = match fs::read_dir(&dir) {
                Ok(rd) => rd,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return inner.not_found(Vec::new());
                }
                Err(e) => return Err(StoreError::io("list", dir, e)),
            };
            let mut out = Vec::new();
            for ent in rd {
                let ent = ent.map_err(|e| StoreError::io("list", &dir, e))?;
                if let Some(name) = ent.file_name().to_str()
                    && validate_site(name).is_ok()
                    && ent.path().is_dir()
                {
                    out.push(name.to_owned());
                }
            }
            out.sort();
            Ok(out)
        })
        .await
    }

    async fn list_objects(&self) -> Result<Vec<ObjectInfo>, StoreError> {
        let inner = self.inner.clone();
        blocking(move || {
            let dir = inner.path("objects");
            let rd = match fs::read_dir(&dir) {
                Ok(rd) => rd,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return inner.not_found(Vec::new());
                }
                Err(e) => return Err(StoreError::io("list", dir, e)),
            };
            let mut out = Vec::new();
            for sub in rd {
                let sub = sub.map_err(|e| StoreError::io("list", &dir, e))?.path();
                if !sub.is_dir() {
                    continue;
                }
                for ent in fs::read_dir(&sub).map_err(|e| StoreError::io("list", &sub, e))? {
                    let ent = ent.map_err(|e| StoreError::io("list", &sub, e))?;
                    let Some(hash) = ent
                        .file_name()
                        .to_str()
                        .and_then(|n| n.parse::<Hash>().ok())
                    else {
                        continue;
                    };
                    let meta = match ent.metadata() {
                        Ok(m) => m,
                        // Removed since the listing (a concurrent gc): not there.
                        Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                        Err(e) => return Err(StoreError::io("stat", ent.path(), e)),
                    };
                    let modified = meta
                        .modified()
                        .ok()
                        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                        .map_or(0, |d| d.as_secs());
                    out.push(ObjectInfo {
                        hash,
                        size: meta.len(),
                        modified,
                    });
                }
            }
            Ok(out)
        })
        .await
    }

    async fn delete_object(&self, hash: &Hash) -> Result<(), StoreError> {
        let inner = self.inner.clone();
        let hash = *hash;
        blocking(move || {
            let path = inner.path(&layout::object(&hash));
            match fs::remove_file(&path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(StoreError::io("remove", path, e)),
            }
        })
        .await
    }

    async fn get_host_index(&self) -> Result<Option<HostIndex>, StoreError> {
        let inner = self.inner.clone();
        blocking(move || read_host_index(&inner)).await
    }

    async fn swap_host_index(
        &self,
        expected: Option<u64>,
        new: &HostIndex,
    ) -> Result<bool, StoreError> {
        super::check(layout::HOST_INDEX, new.validate())?;
        let inner = self.inner.clone();
        let new = new.clone();
        blocking(move || {
            let _lock = lock_file(&inner.path("host-index.lock"))?;
            if read_host_index(&inner)?.map(|h| h.version) != expected {
                return Ok(false);
            }
            let json = serde_json::to_vec(&new).map_err(|e| StoreError::Record {
                key: layout::HOST_INDEX.into(),
                source: e.into(),
            })?;
            inner.write_atomic(&inner.path(layout::HOST_INDEX), &json)?;
            Ok(true)
        })
        .await
    }

    async fn list_hosts(&self) -> Result<Vec<HostRecord>, StoreError> {
        let inner = self.inner.clone();
        blocking(move || {
            let dir = inner.path("hosts");
            let rd = match fs::read_dir(&dir) {
                Ok(rd) => rd,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return inner.not_found(Vec::new());
                }
                Err(e) => return Err(StoreError::io("list", dir, e)),
            };
            let mut out = Vec::new();
            for ent in rd {
                let ent = ent.map_err(|e| StoreError::io("list", &dir, e))?;
                let Some(name) = ent.file_name().to_str().map(str::to_owned) else {
                    continue;
                };
                // Only names a record can have (temporary files and the like are skipped).
                if normalize_host(&name).ok().as_deref() != Some(name.as_str()) {
                    continue;
                }
                let key = layout::host(&name);
                if let Some(b) = inner.read_opt(&key)? {
                    out.push(check_host(&name, parse_record(&key, &b)?)?);
                }
            }
            out.sort_by(|a, b| a.host.cmp(&b.host));
            Ok(out)
        })
        .await
    }

    async fn get_gc_state(&self) -> Result<Option<GcState>, StoreError> {
        let inner = self.inner.clone();
        blocking(move || read_gc_state(&inner)).await
    }

    async fn swap_gc_state(
        &self,
        expected: Option<u64>,
        new: &GcState,
    ) -> Result<bool, StoreError> {
        let inner = self.inner.clone();
        let new = new.clone();
        blocking(move || {
            let dir = inner.path("gc");
            fs::create_dir_all(&dir).map_err(|e| StoreError::io("create", &dir, e))?;
            let _lock = lock_file(&dir.join("lock"))?;
            if read_gc_state(&inner)?.map(|s| s.version) != expected {
                return Ok(false);
            }
            let json = serde_json::to_vec_pretty(&new).map_err(|e| StoreError::Record {
                key: layout::GC_STATE.into(),
                source: e.into(),
            })?;
            inner.write_atomic(&inner.path(layout::GC_STATE), &json)?;
            Ok(true)
        })
        .await
    }
}

/// Opens (creating) and exclusively locks `path`: the lock is held until the file is dropped.
fn lock_file(path: &Path) -> Result<File, StoreError> {
    let lock = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| StoreError::io("open", path, e))?;
    lock.lock().map_err(|e| StoreError::io("lock", path, e))?;
    Ok(lock)
}

fn read_host_index(inner: &Inner) -> Result<Option<HostIndex>, StoreError> {
    match inner.read_opt(layout::HOST_INDEX)? {
        None => Ok(None),
        Some(b) => Ok(Some(super::check_host_index(parse_record(
            layout::HOST_INDEX,
            &b,
        )?)?)),
    }
}

fn read_gc_state(inner: &Inner) -> Result<Option<GcState>, StoreError> {
    match inner.read_opt(layout::GC_STATE)? {
        None => Ok(None),
        Some(b) => Ok(Some(parse_record(layout::GC_STATE, &b)?)),
    }
}

fn read_current(inner: &Inner, site: &str) -> Result<Option<CurrentPointer>, StoreError> {
    let key = layout::current(site);
    match inner.read_opt(&key)? {
        None => Ok(None),
        Some(b) => Ok(Some(check_current(site, parse_record(&key, &b)?)?)),
    }
}

fn list_deploys_blocking(inner: &Inner, site: &str) -> Result<Vec<DeployRecord>, StoreError> {
    let dir = inner.path(&layout::deploys_dir(site));
    let rd = match fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return inner.not_found(Vec::new()),
        Err(e) => return Err(StoreError::io("list", dir, e)),
    };
    let mut out = Vec::new();
    for ent in rd {
        let ent = ent.map_err(|e| StoreError::io("list", &dir, e))?;
        let Some(id) = ent.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if validate_deploy_id(&id).is_err() {
            continue; // not a record (an editor's backup file, say)
        }
        let key = layout::deploy(site, &id);
        if let Some(b) = inner.read_opt(&key)? {
            out.push(check_deploy(site, &id, parse_record(&key, &b)?)?);
        }
    }
    sort_deploys(&mut out);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opening_for_write_removes_only_stale_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let tmp = dir.path().join("tmp");
        fs::create_dir_all(&tmp).unwrap();
        let old = tmp.join("1.0.tmp");
        let fresh = tmp.join("2.0.tmp");
        fs::write(&old, b"half").unwrap();
        fs::write(&fresh, b"in progress").unwrap();
        let two_hours_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(7200);
        File::options()
            .write(true)
            .open(&old)
            .unwrap()
            .set_modified(two_hours_ago)
            .unwrap();
        LocalStore::open(dir.path(), Access::Read).unwrap();
        assert!(old.exists(), "reading never cleans");
        LocalStore::open(dir.path(), Access::Write).unwrap();
        assert!(!old.exists());
        assert!(fresh.exists());
    }

    #[tokio::test]
    async fn a_vanished_store_is_an_error_not_an_empty_store() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("store");
        let store = LocalStore::open(&root, Access::Write).unwrap();
        assert!(store.get_current("s").await.unwrap().is_none());
        assert!(store.get_object(&Hash::of(b"x")).await.unwrap().is_none());
        fs::rename(&root, dir.path().join("elsewhere")).unwrap();
        assert!(store.get_current("s").await.is_err());
        assert!(store.get_host("a.example").await.is_err());
        assert!(store.get_object(&Hash::of(b"x")).await.is_err());
        assert!(store.open_object(&Hash::of(b"x")).await.is_err());
        assert!(store.has_object(&Hash::of(b"x")).await.is_err());
        assert!(store.list_deploys("s").await.is_err());
        let lenient = LocalStore::open_lenient(&root);
        assert!(lenient.get_current("s").await.is_err());
    }
}
