//! Test support for unit tests: a memory store with switchable faults. (Integration tests use
//! real processes and `loadtest`'s chaos origin instead.)

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use origin_client::records::{DeployRecord, HostRecord};
use origin_client::store::{MemoryStore, ObjectBody};
use origin_client::{CurrentPointer, Hash, Store, StoreError};

/// A memory store whose faces can be switched off, made to hang, or made to stall mid-body,
/// with its reads counted.
#[derive(Debug)]
pub struct FaultStore {
    pub store: MemoryStore,
    /// Pointer and host reads fail (a timeout).
    pub meta_down: AtomicBool,
    /// Pointer and host reads never answer.
    pub meta_hang: AtomicBool,
    /// Whole-object reads never answer.
    pub objects_hang: AtomicBool,
    /// Streamed objects stop after this many bytes until [`FaultStore::release`] (never, if
    /// it is not called) (`u64::MAX`: off).
    pub stall_after: AtomicU64,
    /// Streamed objects have the byte at this offset inverted (`u64::MAX`: off).
    pub flip_at: AtomicU64,
    released: tokio::sync::watch::Sender<bool>,
    pub meta_reads: AtomicU32,
    pub object_reads: AtomicU32,
}

impl Default for FaultStore {
    fn default() -> Self {
        FaultStore::new(MemoryStore::new())
    }
}

impl FaultStore {
    pub fn new(store: MemoryStore) -> FaultStore {
        FaultStore {
            store,
            meta_down: AtomicBool::new(false),
            meta_hang: AtomicBool::new(false),
            objects_hang: AtomicBool::new(false),
            stall_after: AtomicU64::new(u64::MAX),
            flip_at: AtomicU64::new(u64::MAX),
            released: tokio::sync::watch::Sender::new(false),
            meta_reads: AtomicU32::new(0),
            object_reads: AtomicU32::new(0),
        }
    }

    pub fn set(flag: &AtomicBool, on: bool) {
        flag.store(on, Ordering::SeqCst);
    }

    /// Streams stalled at `stall_after` go on (and later ones no longer stall).
    pub fn release(&self) {
        self.released.send_replace(true);
    }

    async fn meta(&self) -> Result<(), StoreError> {
        self.meta_reads.fetch_add(1, Ordering::SeqCst);
        if self.meta_hang.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        if self.meta_down.load(Ordering::SeqCst) {
            return Err(StoreError::Timeout {
                url: "fault store".into(),
                after: Some(Duration::from_secs(1)),
            });
        }
        Ok(())
    }

    async fn object(&self) {
        self.object_reads.fetch_add(1, Ordering::SeqCst);
        if self.objects_hang.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
    }
}

/// `chunk` (at `offset` in its object) with the byte at `flip` inverted, if it holds it.
fn flipped(chunk: Bytes, offset: u64, flip: u64) -> Bytes {
    if flip < offset || flip >= offset + chunk.len() as u64 {
        return chunk;
    }
    let mut v = chunk.to_vec();
    v[(flip - offset) as usize] ^= 0xff;
    Bytes::from(v)
}

#[async_trait::async_trait]
impl Store for FaultStore {
    fn location(&self) -> String {
        "fault store".into()
    }
    async fn get_object(&self, hash: &Hash) -> Result<Option<Bytes>, StoreError> {
        self.object().await;
        self.store.get_object(hash).await
    }
    async fn open_object(&self, hash: &Hash) -> Result<Option<ObjectBody>, StoreError> {
        self.object().await;
        let Some(body) = self.store.open_object(hash).await? else {
            return Ok(None);
        };
        let stall = self.stall_after.load(Ordering::SeqCst);
        let flip = self.flip_at.load(Ordering::SeqCst);
        if stall == u64::MAX && flip == u64::MAX {
            return Ok(Some(body));
        }
        // (inner stream, bytes sent, release, the rest of a chunk cut at the stall)
        let state = (body.stream, 0u64, self.released.subscribe(), None::<Bytes>);
        let stream =
            futures_util::stream::unfold(state, move |(mut s, sent, mut rel, rest)| async move {
                let mut chunk = match rest {
                    Some(c) => c,
                    None => match s.next().await? {
                        Ok(c) => c,
                        Err(e) => return Some((Err(e), (s, sent, rel, None))),
                    },
                };
                let end = sent + chunk.len() as u64;
                if sent < stall && end > stall {
                    let rest = chunk.split_off((stall - sent) as usize);
                    return Some((Ok(flipped(chunk, sent, flip)), (s, stall, rel, Some(rest))));
                }
                if sent >= stall && rel.wait_for(|r| *r).await.is_err() {
                    std::future::pending::<()>().await;
                }
                Some((Ok(flipped(chunk, sent, flip)), (s, end, rel, None)))
            })
            .boxed();
        Ok(Some(ObjectBody {
            len: body.len,
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
        self.meta().await?;
        self.store.get_host(host).await
    }
    async fn put_host(&self, record: &HostRecord) -> Result<(), StoreError> {
        self.store.put_host(record).await
    }
    async fn get_current(&self, site: &str) -> Result<Option<CurrentPointer>, StoreError> {
        self.meta().await?;
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
    async fn get_deploy(&self, site: &str, id: &str) -> Result<Option<DeployRecord>, StoreError> {
        self.store.get_deploy(site, id).await
    }
    async fn list_deploys(&self, site: &str) -> Result<Vec<DeployRecord>, StoreError> {
        self.store.list_deploys(site).await
    }
}

/// A handler over `origin` wired as the node wires it (trees, pointers, routes, tiers), with
/// `default_site` and, with `disk`, a disk tier; blobs over 64 KiB go through the disk tier.
pub fn handler(
    origin: std::sync::Arc<dyn Store>,
    default_site: &str,
    disk: Option<std::sync::Arc<crate::tiers::DiskTier>>,
) -> std::sync::Arc<crate::http::Handler> {
    use crate::http::{Handler, HttpConfig, Routes};
    use crate::pointers::{Pointers, PointersConfig};
    use crate::tiers::{TierConfig, Tiers};
    use crate::trees::Trees;
    let trees = Trees::new(origin.clone(), 1 << 20, disk.clone());
    let pointers = Pointers::new(
        origin.clone(),
        trees.clone(),
        PointersConfig {
            refresh_interval: Duration::from_secs(60),
            negative_ttl: Duration::from_secs(60),
            default_site: Some(default_site.into()),
            max_pointers: 1000,
            state_file: None,
            stale_after: Duration::from_secs(600),
        },
    );
    let tiers = Tiers::new(
        origin,
        &TierConfig {
            memory_bytes: 8 << 20,
            memory_max_object: 64 * 1024,
            site_concurrency: 64,
            site_queue: 1024,
        },
        disk,
    );
    std::sync::Arc::new(Handler::new(
        pointers,
        Routes::new(trees, 1 << 20),
        tiers,
        HttpConfig {
            cache_control_html: http::HeaderValue::from_static("no-cache"),
            cache_control_other: http::HeaderValue::from_static("max-age=60"),
        },
    ))
}
