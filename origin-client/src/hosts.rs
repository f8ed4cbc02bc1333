//! Adding hosts: the host's record, then the store's host index
//! ([`HostIndex`](crate::records::HostIndex)), which edges read instead of one record per
//! unknown name.

use std::time::Duration;

use crate::records::{HostIndex, HostRecord};
use crate::store::{Store, StoreError};

/// Attempts at the index's compare-and-swap before giving up (each after a short random wait).
const ATTEMPTS: usize = 20;

/// Writes `record` and adds it to the host index (the index is built from every host record
/// the first time). Returns the version of the index written. The record is written first:
/// an index that lags (a publisher that died in between) names a host the record also
/// names, and the next `hosts add` brings the index up to date.
pub async fn add(store: &dyn Store, record: &HostRecord) -> Result<u64, StoreError> {
    store.put_host(record).await?;
    for _ in 0..ATTEMPTS {
        let (expected, mut next) = match store.get_host_index().await? {
            Some(ix) => (Some(ix.version), ix),
            None => {
                let mut ix = HostIndex::default();
                for r in store.list_hosts().await? {
                    ix.hosts.insert(r.host, r.site);
                }
                (None, ix)
            }
        };
        next.hosts.insert(record.host.clone(), record.site.clone());
        next.version = expected.map_or(1, |v| v + 1);
        if store.swap_host_index(expected, &next).await? {
            return Ok(next.version);
        }
        tokio::time::sleep(Duration::from_millis(fastrand::u64(10..100))).await;
    }
    Err(StoreError::Remote {
        op: "PUT",
        url: format!("{}/{}", store.location(), crate::store::layout::HOST_INDEX),
        why: "too many concurrent writers of the host index".into(),
        source: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    fn rec(host: &str, site: &str) -> HostRecord {
        HostRecord {
            host: host.into(),
            site: site.into(),
        }
    }

    /// The first add builds the index from the records already there; later adds (and
    /// moves) bump its version; concurrent adds all land.
    #[tokio::test]
    async fn the_index_holds_every_record() {
        let store = MemoryStore::new();
        store.put_host(&rec("old.example", "a")).await.unwrap();
        assert_eq!(store.get_host_index().await.unwrap(), None);
        assert_eq!(add(&store, &rec("new.example", "b")).await.unwrap(), 1);
        let ix = store.get_host_index().await.unwrap().unwrap();
        assert_eq!(ix.hosts.len(), 2);
        assert_eq!(ix.hosts["old.example"], "a");
        assert_eq!(add(&store, &rec("old.example", "c")).await.unwrap(), 2);
        let adds = (0..10).map(|i| {
            let store = &store;
            async move { add(store, &rec(&format!("h{i}.example"), "s")).await }
        });
        for r in futures_util::future::join_all(adds).await {
            r.unwrap();
        }
        let ix = store.get_host_index().await.unwrap().unwrap();
        assert_eq!(ix.version, 12);
        assert_eq!(ix.hosts.len(), 12);
        assert_eq!(ix.hosts["old.example"], "c");
        assert_eq!(
            store.get_host("old.example").await.unwrap().unwrap().site,
            "c"
        );
    }
}
