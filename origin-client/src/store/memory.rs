//! A store held in memory: used by `edge preview` and by unit tests. Same semantics as the
//! other backends, including compare-and-swap on pointers.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;

use super::{GcState, ObjectBody, ObjectInfo, Store, StoreError, sort_deploys};
use crate::Hash;
use crate::records::{CurrentPointer, DeployRecord, HostIndex, HostRecord, normalize_host};

/// Runs before every object read (`get_object`, `open_object`): tests use it to count, delay
/// or fail reads.
pub type ReadHook = Arc<
    dyn Fn(Hash) -> futures_util::future::BoxFuture<'static, Result<(), StoreError>> + Send + Sync,
>;

#[derive(Default, Clone)]
pub struct MemoryStore {
    inner: Arc<Mutex<State>>,
    read_hook: Option<ReadHook>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("objects", &self.object_count())
            .field("read_hook", &self.read_hook.is_some())
            .finish()
    }
}

#[derive(Debug, Default)]
struct State {
    objects: HashMap<Hash, Bytes>,
    hosts: HashMap<String, HostRecord>,
    current: HashMap<String, CurrentPointer>,
    deploys: HashMap<String, BTreeMap<String, DeployRecord>>,
    /// When each object was stored (Unix seconds), for listing.
    stored_at: HashMap<Hash, u64>,
    gc: Option<GcState>,
    host_index: Option<HostIndex>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// The same store (sharing its contents) with `hook` run before each object read; an
    /// error from the hook is the read's answer.
    pub fn with_read_hook(&self, hook: ReadHook) -> Self {
        MemoryStore {
            inner: self.inner.clone(),
            read_hook: Some(hook),
        }
    }

    async fn before_read(&self, hash: &Hash) -> Result<(), StoreError> {
        match &self.read_hook {
            Some(hook) => hook(*hash).await,
            None => Ok(()),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the maps half-updated (every update
        // is a single insert), so a poisoned lock is safe to keep using.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Number of objects held.
    pub fn object_count(&self) -> usize {
        self.state().objects.len()
    }

    /// Drops every object not in `keep` (used by preview to forget old files).
    pub fn retain_objects(&self, keep: &std::collections::HashSet<Hash>) {
        let mut st = self.state();
        st.objects.retain(|h, _| keep.contains(h));
        st.stored_at.retain(|h, _| keep.contains(h));
    }
}

#[async_trait]
impl Store for MemoryStore {
    fn location(&self) -> String {
        "memory:".into()
    }

    async fn get_object(&self, hash: &Hash) -> Result<Option<Bytes>, StoreError> {
        self.before_read(hash).await?;
        Ok(self.state().objects.get(hash).cloned())
    }

    async fn open_object(&self, hash: &Hash) -> Result<Option<ObjectBody>, StoreError> {
        self.before_read(hash).await?;
        Ok(self.state().objects.get(hash).cloned().map(|b| ObjectBody {
            len: Some(b.len() as u64),
            stream: futures_util::stream::once(async move { Ok(b) }).boxed(),
        }))
    }

    async fn has_object(&self, hash: &Hash) -> Result<bool, StoreError> {
        Ok(self.state().objects.contains_key(hash))
    }

    async fn put_object(&self, hash: &Hash, data: Bytes) -> Result<bool, StoreError> {
        if Hash::of(&data) != *hash {
            return Err(StoreError::Corrupt { hash: *hash });
        }
        let mut st = self.state();
        st.stored_at
            .entry(*hash)
            .or_insert_with(crate::records::unix_now);
        Ok(st.objects.insert(*hash, data).is_none())
    }

    async fn get_host(&self, host: &str) -> Result<Option<HostRecord>, StoreError> {
        let host = normalize_host(host)?;
        Ok(self.state().hosts.get(&host).cloned())
    }

    async fn put_host(&self, record: &HostRecord) -> Result<(), StoreError> {
        super::check("host record", record.validate())?;
        self.state()
            .hosts
            .insert(record.host.clone(), record.clone());
        Ok(())
    }

    async fn get_current(&self, site: &str) -> Result<Option<CurrentPointer>, StoreError> {
        Ok(self.state().current.get(site).cloned())
    }

    async fn swap_current(
        &self,
        expected: Option<u64>,
        new: &CurrentPointer,
    ) -> Result<(), StoreError> {
        super::check("current pointer", new.validate())?;
        let mut st = self.state();
        let found = st.current.get(&new.site).map(|c| c.seq);
        if found != expected {
            return Err(StoreError::Conflict {
                site: new.site.clone(),
                expected,
                found,
            });
        }
        st.current.insert(new.site.clone(), new.clone());
        Ok(())
    }

    async fn put_deploy(&self, record: &DeployRecord) -> Result<(), StoreError> {
        super::check("deploy record", record.validate())?;
        let mut st = self.state();
        let log = st.deploys.entry(record.site.clone()).or_default();
        if log.get(&record.id).is_some_and(|old| old != record) {
            return Err(StoreError::Record {
                key: super::layout::deploy(&record.site, &record.id),
                source: crate::records::RecordError::Mismatch {
                    expected: "a new deploy id".into(),
                    found: record.id.clone(),
                },
            });
        }
        log.insert(record.id.clone(), record.clone());
        Ok(())
    }

    async fn get_deploy(&self, site: &str, id: &str) -> Result<Option<DeployRecord>, StoreError> {
        Ok(self
            .state()
            .deploys
            .get(site)
            .and_then(|m| m.get(id))
            .cloned())
    }

    async fn list_deploys(&self, site: &str) -> Result<Vec<DeployRecord>, StoreError> {
        let mut v: Vec<_> = self
            .state()
            .deploys
            .get(site)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        sort_deploys(&mut v);
        Ok(v)
    }

    async fn list_sites(&self) -> Result<Vec<String>, StoreError> {
        let st = self.state();
        let mut v: Vec<String> = st
            .deploys
            .keys()
            .chain(st.current.keys())
            .cloned()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        v.sort();
        Ok(v)
    }

    async fn list_objects(&self) -> Result<Vec<ObjectInfo>, StoreError> {
        let st = self.state();
        Ok(st
            .objects
            .iter()
            .map(|(h, b)| ObjectInfo {
                hash: *h,
                size: b.len() as u64,
                modified: st.stored_at.get(h).copied().unwrap_or(0),
            })
            .collect())
    }

    async fn delete_object(&self, hash: &Hash) -> Result<(), StoreError> {
        let mut st = self.state();
        st.objects.remove(hash);
        st.stored_at.remove(hash);
        Ok(())
    }

    async fn get_host_index(&self) -> Result<Option<HostIndex>, StoreError> {
        Ok(self.state().host_index.clone())
    }

    async fn swap_host_index(
        &self,
        expected: Option<u64>,
        new: &HostIndex,
    ) -> Result<bool, StoreError> {
        super::check(super::layout::HOST_INDEX, new.validate())?;
        let mut st = self.state();
        if st.host_index.as_ref().map(|h| h.version) != expected {
            return Ok(false);
        }
        st.host_index = Some(new.clone());
        Ok(true)
    }

    async fn list_hosts(&self) -> Result<Vec<HostRecord>, StoreError> {
        let mut v: Vec<HostRecord> = self.state().hosts.values().cloned().collect();
        v.sort_by(|a, b| a.host.cmp(&b.host));
        Ok(v)
    }

    async fn get_gc_state(&self) -> Result<Option<GcState>, StoreError> {
        Ok(self.state().gc.clone())
    }

    async fn swap_gc_state(
        &self,
        expected: Option<u64>,
        new: &GcState,
    ) -> Result<bool, StoreError> {
        let mut st = self.state();
        if st.gc.as_ref().map(|s| s.version) != expected {
            return Ok(false);
        }
        st.gc = Some(new.clone());
        Ok(true)
    }
}
