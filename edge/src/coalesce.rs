//! Request coalescing, the one mechanism for pointers, tree nodes and blobs: concurrent
//! callers for one key share one run of the work and its result (value or error, both
//! cloned to every waiter, so an error keeps its kind).
//!
//! Two ways to run the work:
//! - [`Coalescer::run`]: the work runs inside the callers' futures. If the caller doing it is
//!   cancelled, a waiting caller takes it over; when the last caller goes, the entry goes
//!   (pingora's `Dangling` lock is the model). So cancelled callers never leave an entry behind,
//!   whoever chose the key (a Host header, for example).
//! - [`Coalescer::run_detached`]: the work runs as its own task, which owns the entry until it
//!   finishes; callers only wait. For fills that should complete (and fill a cache) even when
//!   every client has left. The entry lives as long as the work, which has its own deadline.
//!
//! Invariant: an entry exists only while some caller is waiting on it or a detached task is
//! running it; a finished run leaves no entry (results and errors are not cached here).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{OnceCell, watch};

enum Flight<V, E> {
    Inline {
        cell: Arc<OnceCell<Result<V, E>>>,
        /// Callers holding a [`Waiter`] for this flight (changed under the map's lock).
        waiters: usize,
    },
    Detached(watch::Receiver<Option<Result<V, E>>>),
}

/// Flights by key, each with the id that tells flights of one key apart.
type Flights<K, V, E> = Mutex<HashMap<K, (u64, Flight<V, E>)>>;
/// Shared between the coalescer and detached tasks, which remove their own entry.
type Map<K, V, E> = Arc<Flights<K, V, E>>;

pub struct Coalescer<K, V, E> {
    inflight: Map<K, V, E>,
    /// Tells flights of one key apart, so a late remover never removes a newer flight.
    next_id: std::sync::atomic::AtomicU64,
}

impl<K, V, E> Default for Coalescer<K, V, E> {
    fn default() -> Self {
        Coalescer {
            inflight: Arc::new(Mutex::new(HashMap::new())),
            next_id: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section is a map lookup, insert or remove: a panic cannot tear one.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One caller's share of an inline flight: dropping it (finished or cancelled) removes the
/// entry if this was the last caller.
struct Waiter<'a, K: Hash + Eq, V, E> {
    map: &'a Flights<K, V, E>,
    key: &'a K,
    id: u64,
}

impl<K: Hash + Eq, V, E> Drop for Waiter<'_, K, V, E> {
    fn drop(&mut self) {
        let mut map = lock(self.map);
        if let Some((id, Flight::Inline { waiters, .. })) = map.get_mut(self.key)
            && *id == self.id
        {
            *waiters -= 1;
            if *waiters == 0 {
                map.remove(self.key);
            }
        }
    }
}

/// Removes a detached flight's entry when its task ends, however it ends.
struct Remover<K: Hash + Eq, V, E> {
    map: Map<K, V, E>,
    key: K,
    id: u64,
}

impl<K: Hash + Eq, V, E> Drop for Remover<K, V, E> {
    fn drop(&mut self) {
        let mut map = lock(&self.map);
        if map.get(&self.key).is_some_and(|(i, _)| *i == self.id) {
            map.remove(&self.key);
        }
    }
}

/// What a caller joins.
enum Joined<V, E> {
    Inline(Arc<OnceCell<Result<V, E>>>, u64),
    Detached(watch::Receiver<Option<Result<V, E>>>),
}

impl<K, V, E> Coalescer<K, V, E>
where
    K: Hash + Eq + Clone + Send + 'static,
    V: Clone + Send + Sync + 'static,
    E: Clone + Send + Sync + 'static,
{
    fn fresh_id(&self) -> u64 {
        self.next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// Runs `work` for `key` in this future, or waits for (or takes over) the run already
    /// under way. A waiter that joined a detached run that died gets `E::from(Abandoned)`.
    pub async fn run<F>(&self, key: K, work: F) -> Result<V, E>
    where
        F: Future<Output = Result<V, E>>,
        E: From<Abandoned>,
    {
        let joined = {
            let mut map = lock(&self.inflight);
            match map.get_mut(&key) {
                Some((id, Flight::Inline { cell, waiters })) => {
                    *waiters += 1;
                    Joined::Inline(cell.clone(), *id)
                }
                Some((_, Flight::Detached(rx))) => Joined::Detached(rx.clone()),
                None => {
                    let id = self.fresh_id();
                    let cell = Arc::new(OnceCell::new());
                    map.insert(
                        key.clone(),
                        (
                            id,
                            Flight::Inline {
                                cell: cell.clone(),
                                waiters: 1,
                            },
                        ),
                    );
                    Joined::Inline(cell, id)
                }
            }
        };
        match joined {
            Joined::Detached(rx) => wait_detached(rx).await,
            Joined::Inline(cell, id) => {
                let _waiter = Waiter {
                    map: &self.inflight,
                    key: &key,
                    id,
                };
                let result = cell.get_or_init(|| work).await.clone();
                // Finished: later callers start a fresh run (errors are not cached).
                let mut map = lock(&self.inflight);
                if map.get(&key).is_some_and(|(i, _)| *i == id) {
                    map.remove(&key);
                }
                result
            }
        }
    }

    /// Runs `work` for `key` as its own task (spawned on the current runtime), or waits for
    /// the run already under way. The task completes even if every caller leaves.
    pub async fn run_detached<F>(&self, key: K, work: F) -> Result<V, E>
    where
        F: Future<Output = Result<V, E>> + Send + 'static,
        E: From<Abandoned>,
    {
        let (joined, start) = {
            let mut map = lock(&self.inflight);
            match map.get_mut(&key) {
                Some((id, Flight::Inline { cell, waiters })) => {
                    *waiters += 1;
                    (Joined::Inline(cell.clone(), *id), None)
                }
                Some((_, Flight::Detached(rx))) => (Joined::Detached(rx.clone()), None),
                None => {
                    let id = self.fresh_id();
                    let (tx, rx) = watch::channel(None);
                    map.insert(key.clone(), (id, Flight::Detached(rx.clone())));
                    (Joined::Detached(rx), Some((id, tx)))
                }
            }
        };
        match joined {
            Joined::Detached(rx) => {
                if let Some((id, tx)) = start {
                    let remove = Remover {
                        map: self.inflight.clone(),
                        key: key.clone(),
                        id,
                    };
                    tokio::spawn(async move {
                        // `remove` goes with the task however it ends, a panic included.
                        let r = work.await;
                        drop(remove);
                        let _ = tx.send(Some(r));
                    });
                }
                wait_detached(rx).await
            }
            // An inline run of the same key is under way (a coalescer normally uses one mode):
            // share it; if its callers all leave first, this caller's work runs here.
            Joined::Inline(cell, id) => {
                let _waiter = Waiter {
                    map: &self.inflight,
                    key: &key,
                    id,
                };
                cell.get_or_init(|| work).await.clone()
            }
        }
    }

    /// Whether work for `key` is under way.
    pub fn contains(&self, key: &K) -> bool {
        lock(&self.inflight).contains_key(key)
    }

    /// Keys with work under way.
    pub fn len(&self) -> usize {
        lock(&self.inflight).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A detached run ended without a result (its task panicked or its runtime shut down).
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("coalesced work was abandoned")]
pub struct Abandoned;

async fn wait_detached<V: Clone, E: Clone + From<Abandoned>>(
    mut rx: watch::Receiver<Option<Result<V, E>>>,
) -> Result<V, E> {
    match rx.wait_for(Option::is_some).await {
        Ok(v) => v.clone().unwrap_or(Err(E::from(Abandoned))),
        Err(_) => Err(E::from(Abandoned)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    #[derive(Debug, Clone, PartialEq)]
    enum TestError {
        Down,
        Gone,
    }

    impl From<Abandoned> for TestError {
        fn from(_: Abandoned) -> Self {
            TestError::Gone
        }
    }

    type C = Coalescer<u32, u32, TestError>;

    #[tokio::test(start_paused = true)]
    async fn concurrent_callers_share_one_run_and_its_error() {
        let c: Arc<C> = Arc::default();
        let runs = Arc::new(AtomicU32::new(0));
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let (c, runs) = (c.clone(), runs.clone());
                tokio::spawn(async move {
                    c.run(1, async {
                        runs.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        Err::<u32, _>(TestError::Down)
                    })
                    .await
                })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap_err(), TestError::Down);
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert!(c.is_empty(), "finished work leaves no entry");
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_leader_hands_over_to_a_waiter() {
        let c: Arc<C> = Arc::default();
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
        tokio::task::yield_now().await;
        assert!(c.contains(&7));
        let follower = {
            let c = c.clone();
            tokio::spawn(async move { c.run(7, async { Ok(2) }).await })
        };
        tokio::task::yield_now().await;
        leader.abort();
        let got = tokio::time::timeout(Duration::from_secs(5), follower)
            .await
            .expect("the waiter is not stuck")
            .unwrap();
        assert_eq!(got.unwrap(), 2);
        assert!(c.is_empty());
    }

    /// The review's leak: a lone caller cancelled mid-run used to leave its entry forever.
    #[tokio::test(start_paused = true)]
    async fn a_cancelled_lone_caller_leaves_no_entry() {
        let c: Arc<C> = Arc::default();
        for key in 0..100 {
            let fut = c.run(key, std::future::pending::<Result<u32, TestError>>());
            // Poll once (the entry exists), then drop: a stream reset mid-lookup.
            let polled = tokio::time::timeout(Duration::from_millis(1), fut).await;
            assert!(polled.is_err());
        }
        assert!(c.is_empty(), "{} entries left", c.len());
    }

    #[tokio::test(start_paused = true)]
    async fn detached_work_finishes_without_callers_and_leaves_no_entry() {
        let c: Arc<C> = Arc::default();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let fut = c.run_detached(3, async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let _ = tx.send(());
            Ok(9)
        });
        assert!(
            tokio::time::timeout(Duration::from_millis(1), fut)
                .await
                .is_err()
        );
        assert!(c.contains(&3), "the task owns the entry while it runs");
        rx.await
            .expect("the work ran to the end with no caller left");
        // Joiners while it ran would have shared it; now a new call starts fresh.
        tokio::task::yield_now().await;
        assert!(c.is_empty());
        assert_eq!(c.run_detached(3, async { Ok(4) }).await, Ok(4));
    }

    #[tokio::test(start_paused = true)]
    async fn detached_runs_are_shared() {
        let c: Arc<C> = Arc::default();
        let runs = Arc::new(AtomicU32::new(0));
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let (c, runs) = (c.clone(), runs.clone());
                tokio::spawn(async move {
                    c.run_detached(5, async move {
                        runs.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        Ok(5)
                    })
                    .await
                })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap(), Ok(5));
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert!(c.is_empty());
    }

    #[tokio::test]
    async fn a_panicking_detached_run_is_an_error_not_a_hang() {
        let c: Arc<C> = Arc::default();
        let r = c
            .run_detached(1, async {
                if true {
                    panic!("boom");
                }
                Ok(0)
            })
            .await;
        assert_eq!(r, Err(TestError::Gone));
        assert!(c.is_empty(), "a panicked run leaves no entry");
    }
}
