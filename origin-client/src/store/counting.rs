//! A store wrapper that counts the operations made through it (one per trait call), for the
//! publish report and the scale benchmark. Backends that count their own requests (S3, per
//! HTTP request) report those through [`Store::requests`] as well.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::Bytes;

use super::{GcState, ObjectBody, ObjectInfo, Store, StoreError};
use crate::Hash;
use crate::records::{CurrentPointer, DeployRecord, HostIndex, HostRecord};

#[derive(Debug, Clone)]
pub struct CountingStore {
    inner: Arc<dyn Store>,
    ops: Arc<AtomicU64>,
}

impl CountingStore {
    pub fn new(inner: Arc<dyn Store>) -> CountingStore {
        CountingStore {
            inner,
            ops: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Operations made so far.
    pub fn ops(&self) -> u64 {
        self.ops.load(Ordering::Relaxed)
    }

    fn tick(&self) {
        self.ops.fetch_add(1, Ordering::Relaxed);
    }
}

#[async_trait]
impl Store for CountingStore {
    fn location(&self) -> String {
        self.inner.location()
    }
    fn requests(&self) -> Option<u64> {
        self.inner.requests()
    }
    async fn get_object(&self, hash: &Hash) -> Result<Option<Bytes>, StoreError> {
        self.tick();
        self.inner.get_object(hash).await
    }
    async fn open_object(&self, hash: &Hash) -> Result<Option<ObjectBody>, StoreError> {
        self.tick();
        self.inner.open_object(hash).await
    }
    async fn has_object(&self, hash: &Hash) -> Result<bool, StoreError> {
        self.tick();
        self.inner.has_object(hash).await
    }
    async fn put_object(&self, hash: &Hash, data: Bytes) -> Result<bool, StoreError> {
        self.tick();
        self.inner.put_object(hash, data).await
    }
    async fn put_object_file(&self, hash: &Hash, path: &Path) -> Result<bool, StoreError> {
        self.tick();
        self.inner.put_object_file(hash, path).await
    }
    async fn get_host(&self, host: &str) -> Result<Option<HostRecord>, StoreError> {
        self.tick();
        self.inner.get_host(host).await
    }
    async fn put_host(&self, record: &HostRecord) -> Result<(), StoreError> {
        self.tick();
        self.inner.put_host(record).await
    }
    async fn get_current(&self, site: &str) -> Result<Option<CurrentPointer>, StoreError> {
        self.tick();
        self.inner.get_current(site).await
    }
    async fn swap_current(
        &self,
        expected: Option<u64>,
        new: &CurrentPointer,
    ) -> Result<(), StoreError> {
        self.tick();
        self.inner.swap_current(expected, new).await
    }
    async fn put_deploy(&self, record: &DeployRecord) -> Result<(), StoreError> {
        self.tick();
        self.inner.put_deploy(record).await
    }
    async fn get_deploy(&self, site: &str, id: &str) -> Result<Option<DeployRecord>, StoreError> {
        self.tick();
        self.inner.get_deploy(site, id).await
    }
    async fn list_deploys(&self, site: &str) -> Result<Vec<DeployRecord>, StoreError> {
        self.tick();
        self.inner.list_deploys(site).await
    }
    async fn list_sites(&self) -> Result<Vec<String>, StoreError> {
        self.tick();
        self.inner.list_sites().await
    }
    async fn list_objects(&self) -> Result<Vec<ObjectInfo>, StoreError> {
        self.tick();
        self.inner.list_objects().await
    }
    async fn delete_object(&self, hash: &Hash) -> Result<(), StoreError> {
        self.tick();
        self.inner.delete_object(hash).await
    }
    async fn get_host_index(&self) -> Result<Option<HostIndex>, StoreError> {
        self.tick();
        self.inner.get_host_index().await
    }
    async fn swap_host_index(
        &self,
        expected: Option<u64>,
        new: &HostIndex,
    ) -> Result<bool, StoreError> {
        self.tick();
        self.inner.swap_host_index(expected, new).await
    }
    async fn list_hosts(&self) -> Result<Vec<HostRecord>, StoreError> {
        self.tick();
        self.inner.list_hosts().await
    }
    async fn get_gc_state(&self) -> Result<Option<GcState>, StoreError> {
        self.tick();
        self.inner.get_gc_state().await
    }
    async fn swap_gc_state(
        &self,
        expected: Option<u64>,
        new: &GcState,
    ) -> Result<bool, StoreError> {
        self.tick();
        self.inner.swap_gc_state(expected, new).await
    }
}
