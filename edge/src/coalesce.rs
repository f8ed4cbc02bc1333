//! Request coalescing: concurrent callers for one key share one run of the work and its
//! result (value or error). If the caller doing the work is cancelled, a waiting caller takes
//! it over, so no waiter is left stuck behind a vanished leader.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use tokio::sync::OnceCell;

/// One run's shared outcome.
type Cell<V, E> = Arc<OnceCell<Result<V, Arc<E>>>>;

pub struct Coalescer<K, V, E> {
    inflight: Mutex<HashMap<K, Cell<V, E>>>,
}

impl<K, V, E> Default for Coalescer<K, V, E> {
    fn default() -> Self {
        Coalescer {
            inflight: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Hash + Eq + Clone, V: Clone, E> Coalescer<K, V, E> {
    /// Runs `work` for `key`, or waits for the run already under way.
    pub async fn run<F>(&self, key: K, work: F) -> Result<V, Arc<E>>
    where
        F: Future<Output = Result<V, E>>,
    {
        let cell = self
            .inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key.clone())
            .or_default()
            .clone();
        let result = cell
            .get_or_init(|| async move { work.await.map_err(Arc::new) })
            .await
            .clone();
        let mut map = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        if map.get(&key).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
            map.remove(&key);
        }
        result
    }

    /// Keys with work under way.
    pub fn len(&self) -> usize {
        self.inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn concurrent_callers_share_one_run_and_its_error() {
        let c: Arc<Coalescer<u32, u32, String>> = Arc::default();
        let runs = Arc::new(AtomicU32::new(0));
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let (c, runs) = (c.clone(), runs.clone());
                tokio::spawn(async move {
                    c.run(1, async {
                        runs.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        Err::<u32, _>("down".to_string())
                    })
                    .await
                })
            })
            .collect();
        for t in tasks {
            assert_eq!(*t.await.unwrap().unwrap_err(), "down");
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert!(c.is_empty(), "finished work leaves no entry");
    }

    #[tokio::test]
    async fn a_cancelled_leader_hands_over_to_a_waiter() {
        let c: Arc<Coalescer<u32, u32, String>> = Arc::default();
        let leader = {
            let c = c.clone();
            tokio::spawn(async move {
                c.run(7, async {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    Ok(1)
                })
                .await
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        let follower = {
            let c = c.clone();
            tokio::spawn(async move { c.run(7, async { Ok(2) }).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        leader.abort();
        let got = tokio::time::timeout(Duration::from_secs(5), follower)
            .await
            .expect("the waiter is not stuck")
            .unwrap();
        assert_eq!(got.unwrap(), 2);
    }
}
