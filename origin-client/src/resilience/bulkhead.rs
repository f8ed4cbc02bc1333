//! A concurrency limit with a bounded queue: at most `limit` at once, at most `queue`
//! waiting; anyone beyond that is refused at once (shed) instead of growing a queue.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

#[derive(Debug)]
pub struct Bulkhead {
    sem: Arc<Semaphore>,
    limit: usize,
    queue: usize,
    waiting: AtomicUsize,
    shed: std::sync::atomic::AtomicU64,
}

/// The bulkhead is full: its queue holds `queue` waiters already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

/// Holds one slot until dropped.
#[derive(Debug)]
pub struct Slot(#[allow(dead_code)] OwnedSemaphorePermit);

struct Waiting<'a>(&'a AtomicUsize);
impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Bulkhead {
    pub fn new(limit: usize, queue: usize) -> Bulkhead {
        let limit = limit.max(1);
        Bulkhead {
            sem: Arc::new(Semaphore::new(limit)),
            limit,
            queue,
            waiting: AtomicUsize::new(0),
            shed: Default::default(),
        }
    }

    /// A slot now, a place in the queue, or [`Full`] at once.
    pub async fn enter(&self) -> Result<Slot, Full> {
        if let Ok(p) = self.sem.clone().try_acquire_owned() {
            return Ok(Slot(p));
        }
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.queue {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            self.shed.fetch_add(1, Ordering::Relaxed);
            return Err(Full);
        }
        let _w = Waiting(&self.waiting);
        // The semaphore is never closed, so acquiring cannot fail.
        match self.sem.clone().acquire_owned().await {
            Ok(p) => Ok(Slot(p)),
            Err(_) => Err(Full),
        }
    }

    pub fn in_use(&self) -> usize {
        self.limit - self.sem.available_permits()
    }

    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Requests refused so far.
    pub fn shed_count(&self) -> u64 {
        self.shed.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn limits_queues_and_sheds() {
        let b = Arc::new(Bulkhead::new(2, 1));
        let s1 = b.enter().await.unwrap();
        let _s2 = b.enter().await.unwrap();
        assert_eq!(b.in_use(), 2);
        let b2 = b.clone();
        let queued = tokio::spawn(async move { b2.enter().await.map(|_| ()) });
        while b.waiting() == 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            b.enter().await.unwrap_err(),
            Full,
            "queue full: shed at once"
        );
        assert_eq!(b.shed_count(), 1);
        drop(s1);
        queued.await.unwrap().unwrap();
        assert_eq!(b.waiting(), 0);
    }

    #[tokio::test]
    async fn a_cancelled_waiter_leaves_the_queue() {
        let b = Bulkhead::new(1, 1);
        let _s = b.enter().await.unwrap();
        {
            let fut = b.enter();
            tokio::pin!(fut);
            assert!(futures_util::FutureExt::now_or_never(fut.as_mut()).is_none());
            assert_eq!(b.waiting(), 1);
        }
        assert_eq!(b.waiting(), 0);
    }
}
