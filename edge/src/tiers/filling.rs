//! Fills readable while they are written. A large miss goes to the disk tier through a
//! temporary file; every request that joins the fill streams from that file as the bytes
//! land, instead of waiting for the whole object, so a burst on a cold object costs one
//! origin fetch and its clients finish at the origin's transfer speed.
//!
//! What a waiter is given: the source's bytes in order, as they reach the file, and the
//! response's last byte only once the whole object's length and blake3 checked out (the
//! rule of an origin stream: a source's wrong bytes end in a cut response, never a complete
//! wrong one). An attempt that fails (wrong bytes, a cut, a parent that lied) fails every
//! response reading it; requests that arrive later wait for the next attempt (the fill moves
//! on to the next source) or for the fill's end.
//!
//! Invariant: a [`Live`] entry exists only while an attempt of its key is being written or a
//! request waits on it; the last to leave removes it.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use futures_util::StreamExt;
use origin_client::Hash;
use origin_client::store::ByteStream;
use tokio::sync::watch;

use super::{Block, Budget, Pace, WINDOW, shares};

/// How far an attempt has got.
#[derive(Debug, Clone)]
enum Progress {
    /// This many bytes from the start are in the file.
    Written(u64),
    /// All of them, and the whole object passed its length and hash checks.
    Verified,
    /// The attempt failed: why.
    Failed(String),
}

/// One fill attempt: one source's bytes being written to a temporary file.
pub struct Attempt {
    file: Arc<std::fs::File>,
    pub(super) len: u64,
    hash: Hash,
    progress: watch::Sender<Progress>,
}

impl Attempt {
    /// `file` is opened for reading and writing; `len` is the object's checked length.
    pub(super) fn new(file: std::fs::File, hash: Hash, len: u64) -> Arc<Attempt> {
        Arc::new(Attempt {
            file: Arc::new(file),
            len,
            hash,
            progress: watch::Sender::new(Progress::Written(0)),
        })
    }

    pub(super) fn file(&self) -> &Arc<std::fs::File> {
        &self.file
    }

    /// The first `upto` bytes are in the file.
    pub(super) fn wrote(&self, upto: u64) {
        self.progress.send_replace(Progress::Written(upto));
    }

    fn failed(&self) -> bool {
        matches!(*self.progress.borrow(), Progress::Failed(_))
    }

    fn ended(&self) -> bool {
        !matches!(*self.progress.borrow(), Progress::Written(_))
    }
}

/// The writing side of an attempt, published under its fill key while it is written. It
/// ends the attempt when dropped: verified if [`Writer::verified`] was called, else failed
/// (with the reason given to [`Writer::fail`], or as abandoned), and leaves [`Live`].
pub(super) struct Writer<'a> {
    attempt: Arc<Attempt>,
    live: &'a Live,
    key: (Hash, u64),
}

impl<'a> Writer<'a> {
    pub(super) fn publish(live: &'a Live, key: (Hash, u64), attempt: Arc<Attempt>) -> Self {
        live.lock()
            .entry(key)
            .or_insert_with(|| watch::Sender::new(None))
            .send_replace(Some(attempt.clone()));
        Writer { attempt, live, key }
    }

    /// The whole object checked out: every waiter may take its last byte.
    pub(super) fn verified(&self) {
        self.attempt.progress.send_replace(Progress::Verified);
    }

    pub(super) fn fail(&self, why: String) {
        self.attempt.progress.send_if_modified(|p| {
            let open = matches!(p, Progress::Written(_));
            if open {
                *p = Progress::Failed(why);
            }
            open
        });
    }
}

impl Drop for Writer<'_> {
    fn drop(&mut self) {
        self.fail("the fill was abandoned".into());
        let mut map = self.live.lock();
        if let Some(tx) = map.get(&self.key) {
            if tx
                .borrow()
                .as_ref()
                .is_some_and(|a| Arc::ptr_eq(a, &self.attempt))
            {
                tx.send_replace(None);
            }
            if tx.receiver_count() == 0 {
                map.remove(&self.key);
            }
        }
    }
}

/// Per fill key, the attempt being written (if any), for the requests that join the fill.
type Attempts = HashMap<(Hash, u64), watch::Sender<Option<Arc<Attempt>>>>;

/// The attempts being written, by fill key, for requests that join a fill.
#[derive(Default)]
pub(super) struct Live {
    map: Mutex<Attempts>,
}

impl Live {
    fn lock(&self) -> MutexGuard<'_, Attempts> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Watches `key` for an attempt to read.
    pub(super) fn watch(&self, key: (Hash, u64)) -> Watch<'_> {
        let rx = self
            .lock()
            .entry(key)
            .or_insert_with(|| watch::Sender::new(None))
            .subscribe();
        Watch {
            live: self,
            key,
            rx: Some(rx),
        }
    }

    /// Keys with an entry now (tests: entries do not outlive their fills and waiters).
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.lock().len()
    }
}

/// A request waiting for an attempt of its fill; leaves [`Live`] when dropped.
pub(super) struct Watch<'a> {
    live: &'a Live,
    key: (Hash, u64),
    rx: Option<watch::Receiver<Option<Arc<Attempt>>>>,
}

impl Watch<'_> {
    /// The next attempt of this key that has not failed. Never resolves if none comes (the
    /// caller races it against the fill itself).
    pub(super) async fn attempt(&mut self) -> Arc<Attempt> {
        if let Some(rx) = self.rx.as_mut()
            && let Ok(a) = rx
                .wait_for(|a| a.as_ref().is_some_and(|a| !a.failed()))
                .await
            && let Some(a) = a.as_ref()
        {
            return a.clone();
        }
        std::future::pending().await
    }
}

impl Drop for Watch<'_> {
    fn drop(&mut self) {
        let mut map = self.live.lock();
        self.rx = None;
        if let Some(tx) = map.get(&self.key)
            && tx.receiver_count() == 0
            && tx.borrow().as_ref().is_none_or(|a| a.ended())
        {
            map.remove(&self.key);
        }
    }
}

/// Bytes `start..end` of an attempt's object, as they reach its file: in blocks sized to
/// the client's pace under the response's window and the node's budget (as disk reads),
/// each read with `pread` on the blocking pool; the last byte only once the attempt is
/// verified. A failed attempt ends the stream with an error (a cut response).
pub(super) fn read_filling(
    attempt: Arc<Attempt>,
    start: u64,
    end: u64,
    budget: Budget,
) -> ByteStream {
    let window = Arc::new(tokio::sync::Semaphore::new(WINDOW));
    let rx = attempt.progress.subscribe();
    futures_util::stream::try_unfold((start, Pace::new(), rx), move |(pos, pace, mut rx)| {
        let size = pace.size;
        let (attempt, window, budget) = (attempt.clone(), window.clone(), budget.clone());
        async move {
            if pos >= end {
                return Ok(None);
            }
            let upto = loop {
                let now = rx.borrow_and_update().clone();
                let upto = match now {
                    Progress::Written(w) => w.min(end - 1),
                    Progress::Verified => end,
                    Progress::Failed(why) => {
                        return Err(io::Error::other(format!(
                            "fill of object {} failed: {why}",
                            attempt.hash
                        )));
                    }
                };
                if upto > pos {
                    break upto;
                }
                if rx.changed().await.is_err() {
                    return Err(io::Error::other("fill ended without an outcome"));
                }
            };
            let n = (upto - pos).min(size.min(budget.block_cap()) as u64) as usize;
            let (held, w, kept_up) = shares(&window, &budget, n).await?;
            let data = super::read_block(&attempt.file, pos, n).await?;
            let block = Bytes::from_owner(Block {
                data,
                _budget: held,
                _window: w,
            });
            Ok(Some((block, (pos + n as u64, pace.next(n, kept_up), rx))))
        }
    })
    .boxed()
}
