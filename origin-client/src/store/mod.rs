//! Stores: where objects and pointer records live. One trait, several backends with the same
//! semantics: every read answers found (`Ok(Some)`), not found (`Ok(None)`) or error (`Err`),
//! and those are never confused (a timeout is not a "not found").

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::Stream;

use crate::Hash;
use crate::records::{CurrentPointer, DeployRecord, HostIndex, HostRecord, NameError, RecordError};

mod counting;
mod http;
mod local;
mod memory;
pub mod parents;
mod s3;

pub use self::counting::CountingStore;
pub use self::http::{HttpStore, HttpStoreOptions};
pub use self::local::LocalStore;
pub use self::memory::MemoryStore;
pub use self::parents::{Parent, Parents};
pub use self::s3::{S3Options, S3Store};

/// A stream of an object's bytes. Not verified: whoever consumes it checks the hash.
pub type ByteStream = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>;

/// An object being read: its length (when the store knows it up front) and its bytes.
pub struct ObjectBody {
    pub len: Option<u64>,
    pub stream: ByteStream,
}

impl fmt::Debug for ObjectBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObjectBody")
            .field("len", &self.len)
            .finish()
    }
}

/// Who is to blame for a failure: the store (upstream), or the caller's request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blame {
    /// The store misbehaved or could not be reached; retrying may help.
    Upstream,
    /// The request itself was wrong (read-only store, conflict, bad name).
    Caller,
    /// This node ran out of something of its own (file descriptors, memory, socket
    /// buffers): the store was not reached, so its breaker counts neither a failure nor a
    /// success.
    Local,
}

/// Whether `e` or one of its sources is an I/O error saying this process or machine ran out
/// of a resource: EMFILE, ENFILE, ENOMEM, ENOBUFS.
pub fn local_exhaustion(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<io::Error>()
            && matches!(
                io.raw_os_error(),
                Some(
                    libc_codes::EMFILE
                        | libc_codes::ENFILE
                        | libc_codes::ENOMEM
                        | libc_codes::ENOBUFS
                )
            )
        {
            return true;
        }
        cur = err.source();
    }
    false
}

/// The Linux error numbers [`local_exhaustion`] looks for.
mod libc_codes {
    pub const ENOMEM: i32 = 12;
    pub const ENFILE: i32 = 23;
    pub const EMFILE: i32 = 24;
    pub const ENOBUFS: i32 = 105;
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("store location {location:?} {why}")]
    Location { location: String, why: String },
    #[error("store {store} is read-only: {op} needs a local (path or file://) or s3:// store")]
    ReadOnly { store: String, op: &'static str },
    #[error("store {store} cannot {op}")]
    Unsupported { store: String, op: &'static str },
    #[error(
        "store {store} does not honour conditional writes ({why}); refusing to write to it, since two publishes could silently overwrite each other's pointer"
    )]
    NoConditionalWrites { store: String, why: String },
    #[error("{op} {url}: {why}")]
    Remote {
        op: &'static str,
        url: String,
        why: String,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    #[error(
        "conflict on site {site:?}: expected sequence {expected:?} but the store has {found:?} (another publish or rollback moved it first)"
    )]
    Conflict {
        site: String,
        expected: Option<u64>,
        found: Option<u64>,
    },
    #[error("GET {url}: unexpected status {status}")]
    Status { url: String, status: u16 },
    #[error("GET {url}")]
    Http {
        url: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("GET {url}: timed out{}", After(*after))]
    Timeout {
        url: String,
        /// The deadline that passed, when the one who gave up knows it (a plain `TimedOut`
        /// I/O error from a body stream does not say).
        after: Option<std::time::Duration>,
    },
    #[error("GET {url}: body ended after {got} of {want} bytes")]
    Truncated { url: String, got: u64, want: u64 },
    #[error("record {key}")]
    Record {
        key: String,
        #[source]
        source: RecordError,
    },
    #[error("object {hash}: bytes do not match the hash")]
    Corrupt { hash: Hash },
    #[error("object {hash}: {size} bytes is larger than the {limit}-byte limit for whole reads")]
    TooLarge { hash: Hash, size: u64, limit: u64 },
    #[error("{path}: file changed while it was being published")]
    SourceChanged { path: PathBuf },
    #[error(transparent)]
    Name(#[from] NameError),
    #[error("origin {face} circuit is open; retry in {retry_after:?}")]
    CircuitOpen {
        face: &'static str,
        retry_after: std::time::Duration,
    },
    #[error("origin {face} queue is full")]
    Shed { face: &'static str },
}

impl StoreError {
    /// Who is to blame. Exhaustive on purpose: a new variant must be classified here, since
    /// an upstream error counts against the origin's breaker.
    pub fn blame(&self) -> Blame {
        if self.is_local_exhaustion() {
            return Blame::Local;
        }
        match self {
            // The request itself was wrong, or asked for something this store cannot do.
            StoreError::ReadOnly { .. }
            | StoreError::Unsupported { .. }
            | StoreError::NoConditionalWrites { .. }
            | StoreError::Conflict { .. }
            | StoreError::Name(_)
            | StoreError::Location { .. }
            | StoreError::SourceChanged { .. } => Blame::Caller,
            // The store failed to answer, answered wrongly, or sent something unreadable.
            StoreError::Io { .. }
            | StoreError::Status { .. }
            | StoreError::Http { .. }
            | StoreError::Remote { .. }
            | StoreError::Timeout { .. }
            | StoreError::Truncated { .. }
            | StoreError::Record { .. }
            | StoreError::Corrupt { .. } => Blame::Upstream,
            // A whole read of an object the store holds at more than the limit: the caller
            // picked a whole read from a tree entry's size, so the store's object is not
            // what the tree says.
            StoreError::TooLarge { .. } => Blame::Upstream,
            // The origin is considered down (breaker), or too busy to queue for (bulkhead).
            StoreError::CircuitOpen { .. } | StoreError::Shed { .. } => Blame::Upstream,
        }
    }

    /// An I/O failure (opening a file, connecting) because this node ran out of
    /// descriptors or memory ([`Blame::Local`]).
    fn is_local_exhaustion(&self) -> bool {
        match self {
            StoreError::Io { source, .. } => local_exhaustion(source),
            StoreError::Http { source, .. } => local_exhaustion(source.as_ref()),
            StoreError::Remote {
                source: Some(source),
                ..
            } => local_exhaustion(source.as_ref()),
            _ => false,
        }
    }

    /// The store error behind a failed read of an [`ObjectBody`] stream. Streams yield
    /// `io::Result`, so the stores put their [`StoreError`] inside the `io::Error`
    /// (`io::Error::new(kind, store_error)`): that error is given back as it was (a body
    /// deadline is a [`StoreError::Timeout`]). A plain I/O error is wrapped: a `TimedOut`
    /// one as [`StoreError::Timeout`], any other as [`StoreError::Http`]; `what` names the
    /// transfer in its message (`object <hash>`).
    pub fn from_body(e: io::Error, what: &str) -> StoreError {
        if e.get_ref().is_some_and(|inner| inner.is::<StoreError>()) {
            let kind = e.kind();
            return match e.into_inner().map(|inner| inner.downcast::<StoreError>()) {
                Some(Ok(store)) => *store,
                // Not reached (checked above); kept whole rather than asserted.
                Some(Err(other)) => StoreError::Http {
                    url: what.to_owned(),
                    source: other,
                },
                None => StoreError::Http {
                    url: what.to_owned(),
                    source: Box::new(io::Error::from(kind)),
                },
            };
        }
        match e.kind() {
            io::ErrorKind::TimedOut => StoreError::Timeout {
                url: what.to_owned(),
                after: None,
            },
            _ => StoreError::Http {
                url: what.to_owned(),
                source: Box::new(e),
            },
        }
    }

    /// This error inside an `io::Error` of `kind`, for a body stream; [`StoreError::from_body`]
    /// takes it out again.
    pub fn into_io(self, kind: io::ErrorKind) -> io::Error {
        io::Error::new(kind, self)
    }

    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        StoreError::Io {
            op,
            path: path.into(),
            source,
        }
    }
}

/// Displays " after {duration:?}" when the duration is known.
struct After(Option<std::time::Duration>);

impl fmt::Display for After {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(d) => write!(f, " after {d:?}"),
            None => Ok(()),
        }
    }
}

/// Largest object [`Store::get_object`] reads whole (tree nodes and small blobs). Bigger
/// objects are streamed with [`Store::open_object`].
pub const MAX_WHOLE_OBJECT: u64 = 256 * 1024 * 1024;

/// The origin protocol. See the crate docs for the layout every backend shares.
#[async_trait]
pub trait Store: Send + Sync + fmt::Debug {
    /// Where this store is, for messages (`file:///srv/store`, `https://origin/`).
    fn location(&self) -> String;

    /// Reads a whole object and checks it against its hash ([`StoreError::Corrupt`] if not).
    async fn get_object(&self, hash: &Hash) -> Result<Option<Bytes>, StoreError>;

    /// Opens an object for streaming. The bytes are not verified here.
    async fn open_object(&self, hash: &Hash) -> Result<Option<ObjectBody>, StoreError>;

    async fn has_object(&self, hash: &Hash) -> Result<bool, StoreError>;

    /// Stores `data` under `hash` (checked first) atomically. `Ok(true)` if it was new.
    async fn put_object(&self, hash: &Hash, data: Bytes) -> Result<bool, StoreError>;

    /// Stores the file at `path`, which should hash to `hash`. A file that changed since it
    /// was hashed is refused with [`StoreError::SourceChanged`]. `Ok(true)` if it was new.
    async fn put_object_file(&self, hash: &Hash, path: &Path) -> Result<bool, StoreError> {
        let p = path.to_owned();
        let data = tokio::task::spawn_blocking(move || std::fs::read(&p))
            .await
            .map_err(|e| StoreError::io("read", path, io::Error::other(e)))?
            .map_err(|e| StoreError::io("read", path, e))?;
        if Hash::of(&data) != *hash {
            return Err(StoreError::SourceChanged {
                path: path.to_owned(),
            });
        }
        self.put_object(hash, Bytes::from(data)).await
    }

    async fn get_host(&self, host: &str) -> Result<Option<HostRecord>, StoreError>;
    async fn put_host(&self, record: &HostRecord) -> Result<(), StoreError>;

    async fn get_current(&self, site: &str) -> Result<Option<CurrentPointer>, StoreError>;

    /// Moves `sites/<site>/current` to `new`, atomically, only if the stored pointer's
    /// sequence number is still `expected` (`None`: no pointer yet). Otherwise
    /// [`StoreError::Conflict`] and nothing changes.
    async fn swap_current(
        &self,
        expected: Option<u64>,
        new: &CurrentPointer,
    ) -> Result<(), StoreError>;

    /// Appends a deploy record to the site's log. Records are never overwritten.
    async fn put_deploy(&self, record: &DeployRecord) -> Result<(), StoreError>;
    async fn get_deploy(&self, site: &str, id: &str) -> Result<Option<DeployRecord>, StoreError>;
    /// Every deploy record of the site, oldest first.
    async fn list_deploys(&self, site: &str) -> Result<Vec<DeployRecord>, StoreError>;

    /// Requests sent to the service so far, for a store that counts them (S3: every HTTP
    /// request). `None` for the others.
    fn requests(&self) -> Option<u64> {
        None
    }

    /// Every site that has a folder under `sites/`, sorted. Garbage collection and fsck
    /// start here; readers that cannot list (HTTP) refuse.
    async fn list_sites(&self) -> Result<Vec<String>, StoreError> {
        Err(self.unsupported("list sites"))
    }

    /// Every object in the store, with its size and last-modified time.
    async fn list_objects(&self) -> Result<Vec<ObjectInfo>, StoreError> {
        Err(self.unsupported("list objects"))
    }

    /// Removes an object (garbage collection only). Removing a missing one is not an error.
    async fn delete_object(&self, _hash: &Hash) -> Result<(), StoreError> {
        Err(self.unsupported("delete objects"))
    }

    /// The host index (`host-index`), if the store has one. Stores that never had one
    /// answer `None`: readers then look hosts up one record at a time.
    async fn get_host_index(&self) -> Result<Option<HostIndex>, StoreError> {
        Ok(None)
    }

    /// Replaces the host index if its `version` is still `expected` (`None`: no index yet).
    /// `Ok(false)` when someone else changed it first.
    async fn swap_host_index(
        &self,
        _expected: Option<u64>,
        _new: &HostIndex,
    ) -> Result<bool, StoreError> {
        Err(self.unsupported("index hosts"))
    }

    /// Every host record (to build the host index the first time).
    async fn list_hosts(&self) -> Result<Vec<HostRecord>, StoreError> {
        Err(self.unsupported("list hosts"))
    }

    /// The store-wide garbage-collection state (`gc/state`), which publish and rollback read
    /// to notice a collection that overlapped them.
    async fn get_gc_state(&self) -> Result<Option<GcState>, StoreError> {
        Ok(None)
    }

    /// Replaces the gc state if its `version` is still `expected` (`None`: no state yet).
    /// `Ok(false)` when someone else changed it first.
    async fn swap_gc_state(
        &self,
        _expected: Option<u64>,
        _new: &GcState,
    ) -> Result<bool, StoreError> {
        Err(self.unsupported("collect garbage"))
    }

    #[doc(hidden)]
    fn unsupported(&self, op: &'static str) -> StoreError {
        StoreError::Unsupported {
            store: self.location(),
            op,
        }
    }
}

/// One object as listed: its hash, size and last-modified time (Unix seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectInfo {
    pub hash: Hash,
    pub size: u64,
    pub modified: u64,
}

/// `gc/state`: whether a garbage collection is running. Every change (start, finish)
/// increments `version`, so a publish that reads the same version, not running, before and
/// after its work knows no collection overlapped it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GcState {
    pub version: u64,
    pub running: bool,
    /// Unix time the running (or last) collection started.
    pub started: u64,
    /// Unix time of this change (a running collection refreshes it as a heartbeat).
    pub updated: u64,
    /// The rule the collection kept deploys by, for `fsck`.
    #[serde(default)]
    pub keep: Option<u64>,
    #[serde(default)]
    pub grace_secs: Option<u64>,
}

/// Whether a store is opened to read or to write (a local store is created for writing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
    /// Reading for a server that must start while its store is unavailable: a missing local
    /// folder is accepted, and every read is an error until it appears.
    Serve,
}

/// Opens a store from a location: a path, a `file://` URL, an `http(s)://` URL (read-only),
/// or `s3://BUCKET/PREFIX`.
pub fn open_store(location: &str, access: Access) -> Result<Arc<dyn Store>, StoreError> {
    open_store_opts(location, access, &StoreOptions::default())
}

/// Options for the remote backends.
#[derive(Debug, Clone, Default)]
pub struct StoreOptions {
    pub http: HttpStoreOptions,
    pub s3: S3Options,
}

/// [`open_store`] with options for HTTP stores.
pub fn open_store_with(
    location: &str,
    access: Access,
    http: HttpStoreOptions,
) -> Result<Arc<dyn Store>, StoreError> {
    open_store_opts(
        location,
        access,
        &StoreOptions {
            http,
            ..StoreOptions::default()
        },
    )
}

/// [`open_store`] with options for HTTP and S3 stores.
pub fn open_store_opts(
    location: &str,
    access: Access,
    opts: &StoreOptions,
) -> Result<Arc<dyn Store>, StoreError> {
    let http = opts.http.clone();
    let loc_err = |why: &str| StoreError::Location {
        location: location.to_owned(),
        why: why.to_owned(),
    };
    if location.is_empty() {
        return Err(loc_err("is empty"));
    }
    if let Some((scheme, rest)) = location.split_once("://") {
        match scheme.to_ascii_lowercase().as_str() {
            "file" => {
                let path = match rest.strip_prefix("localhost") {
                    Some(p) => p,
                    None => rest,
                };
                if !path.starts_with('/') {
                    return Err(loc_err("is not an absolute file:// URL (file:///path)"));
                }
                let decoded = percent_encoding::percent_decode_str(path)
                    .decode_utf8()
                    .map_err(|_| loc_err("is not valid UTF-8 once percent-decoded"))?;
                Ok(Arc::new(LocalStore::open(
                    Path::new(decoded.as_ref()),
                    access,
                )?))
            }
            "http" | "https" => {
                if access == Access::Write {
                    return Err(StoreError::ReadOnly {
                        store: location.to_owned(),
                        op: "writing",
                    });
                }
                Ok(Arc::new(HttpStore::new(location, http)?))
            }
            "s3" => Ok(Arc::new(S3Store::open(rest, opts.s3.clone())?)),
            other => Err(loc_err(&format!(
                "has unknown scheme {other:?} (expected a path, file://, http://, https:// or s3://)"
            ))),
        }
    } else {
        Ok(Arc::new(LocalStore::open(Path::new(location), access)?))
    }
}

pub(crate) fn parse_record<T: serde::de::DeserializeOwned>(
    key: &str,
    bytes: &[u8],
) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Record {
        key: key.to_owned(),
        source: RecordError::Json(e),
    })
}

pub(crate) fn check<T>(key: &str, r: Result<T, RecordError>) -> Result<T, StoreError> {
    r.map_err(|source| StoreError::Record {
        key: key.to_owned(),
        source,
    })
}

/// The relative path of each key in the shared layout.
pub mod layout {
    use crate::Hash;

    pub fn object(hash: &Hash) -> String {
        let hex = hash.to_hex();
        format!("objects/{}/{}", &hex[..2], hex)
    }
    pub fn host(host: &str) -> String {
        format!("hosts/{host}")
    }
    pub fn current(site: &str) -> String {
        format!("sites/{site}/current")
    }
    pub fn deploy(site: &str, id: &str) -> String {
        format!("sites/{site}/deploys/{id}")
    }
    pub fn deploys_dir(site: &str) -> String {
        format!("sites/{site}/deploys")
    }
    /// One deploy id per line, oldest first: the listing HTTP readers use.
    pub fn history(site: &str) -> String {
        format!("sites/{site}/history")
    }
    /// The garbage-collection state record.
    pub const GC_STATE: &str = "gc/state";
    /// Every host record in one object ([`crate::records::HostIndex`]). Not under `hosts/`,
    /// where any valid host name could collide with it.
    pub const HOST_INDEX: &str = "host-index";
}

/// The largest host index a reader accepts (about a million hosts).
pub const MAX_HOST_INDEX_BYTES: u64 = 64 << 20;

/// Validates a fetched host index.
pub(crate) fn check_host_index(h: HostIndex) -> Result<HostIndex, StoreError> {
    check(layout::HOST_INDEX, h.validate())?;
    Ok(h)
}

/// Validates a fetched pointer against the site it was fetched for.
pub(crate) fn check_current(site: &str, c: CurrentPointer) -> Result<CurrentPointer, StoreError> {
    let key = layout::current(site);
    check(&key, c.validate())?;
    if c.site != site {
        return Err(StoreError::Record {
            key,
            source: RecordError::Mismatch {
                expected: site.to_owned(),
                found: c.site,
            },
        });
    }
    Ok(c)
}

pub(crate) fn check_deploy(
    site: &str,
    id: &str,
    d: DeployRecord,
) -> Result<DeployRecord, StoreError> {
    let key = layout::deploy(site, id);
    check(&key, d.validate())?;
    if d.site != site || d.id != id {
        return Err(StoreError::Record {
            key,
            source: RecordError::Mismatch {
                expected: format!("{site}/{id}"),
                found: format!("{}/{}", d.site, d.id),
            },
        });
    }
    Ok(d)
}

pub(crate) fn check_host(host: &str, h: HostRecord) -> Result<HostRecord, StoreError> {
    let key = layout::host(host);
    check(&key, h.validate())?;
    if h.host != host {
        return Err(StoreError::Record {
            key,
            source: RecordError::Mismatch {
                expected: host.to_owned(),
                found: h.host,
            },
        });
    }
    Ok(h)
}

pub(crate) fn sort_deploys(v: &mut [DeployRecord]) {
    v.sort_by(|a, b| (a.created, a.seq, &a.id).cmp(&(b.created, b.seq, &b.id)));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// The variant's name. No `_` arm: a new variant fails to compile here until it has an
    /// example (and an expected blame) in `every_variant_has_a_blame`.
    fn variant(e: &StoreError) -> &'static str {
        match e {
            StoreError::Io { .. } => "Io",
            StoreError::Location { .. } => "Location",
            StoreError::ReadOnly { .. } => "ReadOnly",
            StoreError::Unsupported { .. } => "Unsupported",
            StoreError::NoConditionalWrites { .. } => "NoConditionalWrites",
            StoreError::Remote { .. } => "Remote",
            StoreError::Conflict { .. } => "Conflict",
            StoreError::Status { .. } => "Status",
            StoreError::Http { .. } => "Http",
            StoreError::Timeout { .. } => "Timeout",
            StoreError::Truncated { .. } => "Truncated",
            StoreError::Record { .. } => "Record",
            StoreError::Corrupt { .. } => "Corrupt",
            StoreError::TooLarge { .. } => "TooLarge",
            StoreError::SourceChanged { .. } => "SourceChanged",
            StoreError::Name(_) => "Name",
            StoreError::CircuitOpen { .. } => "CircuitOpen",
            StoreError::Shed { .. } => "Shed",
        }
    }

    const VARIANTS: usize = 18;

    #[test]
    fn every_variant_has_a_blame() {
        use Blame::{Caller, Upstream};
        let hash = Hash::of(b"x");
        let url = || "http://origin/objects/x".to_owned();
        let cases: Vec<(StoreError, Blame)> = vec![
            (
                StoreError::io("read", "/srv/x", io::Error::other("eio")),
                Upstream,
            ),
            (
                StoreError::Location {
                    location: "ftp://x".into(),
                    why: "has unknown scheme".into(),
                },
                Caller,
            ),
            (
                StoreError::ReadOnly {
                    store: url(),
                    op: "writing",
                },
                Caller,
            ),
            (
                StoreError::Unsupported {
                    store: url(),
                    op: "list objects",
                },
                Caller,
            ),
            (
                StoreError::NoConditionalWrites {
                    store: "s3://b/p".into(),
                    why: "If-Match was ignored".into(),
                },
                Caller,
            ),
            (
                StoreError::Remote {
                    op: "GET",
                    url: "s3://b/p/sites/s/current".into(),
                    why: "access denied".into(),
                    source: None,
                },
                Upstream,
            ),
            (
                StoreError::Conflict {
                    site: "s".into(),
                    expected: Some(1),
                    found: Some(2),
                },
                Caller,
            ),
            (
                StoreError::Status {
                    url: url(),
                    status: 503,
                },
                Upstream,
            ),
            (
                StoreError::Http {
                    url: url(),
                    source: "reset".into(),
                },
                Upstream,
            ),
            (
                StoreError::Timeout {
                    url: url(),
                    after: Some(Duration::from_secs(1)),
                },
                Upstream,
            ),
            (
                StoreError::Truncated {
                    url: url(),
                    got: 1,
                    want: 2,
                },
                Upstream,
            ),
            (
                StoreError::Record {
                    key: "sites/s/current".into(),
                    source: crate::records::RecordError::Mismatch {
                        expected: "s".into(),
                        found: "t".into(),
                    },
                },
                Upstream,
            ),
            (StoreError::Corrupt { hash }, Upstream),
            (
                StoreError::TooLarge {
                    hash,
                    size: 2,
                    limit: 1,
                },
                Upstream,
            ),
            (
                StoreError::SourceChanged {
                    path: "/site/x".into(),
                },
                Caller,
            ),
            (
                StoreError::Name(NameError {
                    what: "site name",
                    value: "A".into(),
                    why: "lowercase",
                }),
                Caller,
            ),
            (
                StoreError::CircuitOpen {
                    face: "objects",
                    retry_after: Duration::from_secs(1),
                },
                Upstream,
            ),
            (StoreError::Shed { face: "objects" }, Upstream),
        ];
        let names: std::collections::BTreeSet<_> = cases.iter().map(|(e, _)| variant(e)).collect();
        assert_eq!(names.len(), cases.len(), "one example per variant");
        assert_eq!(names.len(), VARIANTS, "every variant: {names:?}");
        for (e, want) in &cases {
            assert_eq!(e.blame(), *want, "{}: {e}", variant(e));
        }
    }

    /// Running out of descriptors or memory here is this node's problem, wherever in the
    /// error's chain the I/O error sits; any other I/O error is the store's.
    #[test]
    fn local_exhaustion_is_blamed_on_this_node() {
        let emfile = || io::Error::from_raw_os_error(24);
        assert_eq!(
            StoreError::io("open", "/srv/objects/ab/x", emfile()).blame(),
            Blame::Local
        );
        assert_eq!(
            StoreError::io("open", "/x", io::Error::from_raw_os_error(23)).blame(),
            Blame::Local
        );
        let nested = StoreError::Http {
            url: "http://origin/x".into(),
            source: Box::new(StoreError::io("connect", "x", emfile())),
        };
        assert_eq!(nested.blame(), Blame::Local);
        let remote = StoreError::Remote {
            op: "get",
            url: "s3://b/x".into(),
            why: "connect".into(),
            source: Some(Box::new(io::Error::from_raw_os_error(12))),
        };
        assert_eq!(remote.blame(), Blame::Local);
        assert_eq!(
            StoreError::io("read", "/x", io::Error::from_raw_os_error(5)).blame(),
            Blame::Upstream,
            "EIO is the store's"
        );
    }

    #[test]
    fn from_body_recovers_the_store_error_or_types_a_plain_one() {
        let timeout = StoreError::Timeout {
            url: "memory: object x".into(),
            after: Some(Duration::from_secs(3)),
        }
        .into_io(io::ErrorKind::TimedOut);
        assert_eq!(timeout.kind(), io::ErrorKind::TimedOut);
        match StoreError::from_body(timeout, "object x") {
            StoreError::Timeout { url, after } => {
                assert_eq!(url, "memory: object x", "the inner error, not a new one");
                assert_eq!(after, Some(Duration::from_secs(3)));
            }
            other => panic!("{other:?}"),
        }

        let io_err =
            StoreError::io("read", "/srv/o", io::Error::other("eio")).into_io(io::ErrorKind::Other);
        assert!(matches!(
            StoreError::from_body(io_err, "object x"),
            StoreError::Io { op: "read", .. }
        ));

        let plain = io::Error::new(io::ErrorKind::TimedOut, "slow disk");
        let e = StoreError::from_body(plain, "object x");
        assert!(
            matches!(&e, StoreError::Timeout { url, after: None } if url == "object x"),
            "{e:?}"
        );
        assert_eq!(e.to_string(), "GET object x: timed out");

        let plain = io::Error::new(io::ErrorKind::ConnectionReset, "reset by peer");
        match StoreError::from_body(plain, "object x") {
            StoreError::Http { url, source } => {
                assert_eq!(url, "object x");
                assert_eq!(source.to_string(), "reset by peer");
            }
            other => panic!("{other:?}"),
        }
        // Another error type inside an io::Error is kept as the cause.
        let other = io::Error::other(std::fmt::Error);
        assert!(matches!(
            StoreError::from_body(other, "object x"),
            StoreError::Http { .. }
        ));
        assert_eq!(
            StoreError::Timeout {
                url: "u".into(),
                after: Some(Duration::from_millis(1500))
            }
            .to_string(),
            "GET u: timed out after 1.5s"
        );
    }
}
