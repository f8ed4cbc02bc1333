//! Requests per path, so tests can assert how many requests reached the origin, and how
//! many were being answered at once (the peak), so tests can assert a client never had more
//! than its limit in flight.
//!
//! Invariant: bounded. At most `max_paths` distinct paths are kept, each at most
//! [`MAX_KEY_LEN`] bytes; any other request is counted under `other`. The lock is held only to
//! bump or copy counters, never across an await.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

/// Default for the most distinct paths counted one by one.
pub const DEFAULT_MAX_PATHS: usize = 100_000;
/// Longer paths are counted under `other`.
pub const MAX_KEY_LEN: usize = 1024;

/// A snapshot of the counters: `GET /_chaos/counts` answers it as JSON.
///
/// ```json
/// {"total": 4, "paths": {"sites/docs/current": 3, "objects/ab/ab12…": 1}, "other": 0,
///  "in_flight": 1, "peak_in_flight": 3, "objects_in_flight": 1, "peak_objects_in_flight": 2}
/// ```
///
/// A request is in flight from its arrival until its answer is over: the last body byte
/// handed to the connection, or the answer dropped (a reset, a hang that ended, a client
/// that left). Control requests are neither counted nor tracked.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Every request counted, `other` included.
    pub total: u64,
    /// Requests per path (the URL path without its leading `/` and without the query).
    pub paths: BTreeMap<String, u64>,
    /// Requests whose path was not kept: past the distinct-path limit, or too long.
    pub other: u64,
    /// Requests in flight now.
    #[serde(default)]
    pub in_flight: u64,
    /// Most requests in flight at once since the start or the last reset (a reset starts it
    /// from the requests still in flight then).
    #[serde(default)]
    pub peak_in_flight: u64,
    /// Requests for `objects/…` (blobs and tree nodes) in flight now.
    #[serde(default)]
    pub objects_in_flight: u64,
    /// Most `objects/…` requests in flight at once since the start or the last reset.
    #[serde(default)]
    pub peak_objects_in_flight: u64,
}

impl Counts {
    /// Requests for `path` (a leading `/` is ignored).
    pub fn path(&self, path: &str) -> u64 {
        let path = path.strip_prefix('/').unwrap_or(path);
        self.paths.get(path).copied().unwrap_or(0)
    }
}

#[derive(Debug)]
pub(crate) struct Counter {
    max_paths: usize,
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug, Default)]
struct Inner {
    total: u64,
    paths: HashMap<String, u64>,
    other: u64,
    in_flight: Gauge,
    objects_in_flight: Gauge,
}

/// A level and its high-water mark.
#[derive(Debug, Default, Clone, Copy)]
struct Gauge {
    now: u64,
    peak: u64,
}

impl Gauge {
    fn up(&mut self) {
        self.now += 1;
        self.peak = self.peak.max(self.now);
    }

    fn down(&mut self) {
        self.now = self.now.saturating_sub(1);
    }

    /// Forgets the past peak: the mark restarts from the current level.
    fn restart(&mut self) {
        self.peak = self.now;
    }
}

fn lock(inner: &Mutex<Inner>) -> std::sync::MutexGuard<'_, Inner> {
    // Counters stay consistent even if a holder panicked: every update is a few field writes.
    inner.lock().unwrap_or_else(|e| e.into_inner())
}

/// One request in flight: counted up when made by [`Counter::enter`], down when dropped.
#[derive(Debug)]
#[must_use = "the request counts as in flight only while this guard lives"]
pub(crate) struct InFlight {
    inner: Arc<Mutex<Inner>>,
    object: bool,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut inner = lock(&self.inner);
        inner.in_flight.down();
        if self.object {
            inner.objects_in_flight.down();
        }
    }
}

impl Counter {
    pub(crate) fn new(max_paths: usize) -> Counter {
        Counter {
            max_paths,
            inner: Arc::new(Mutex::new(Inner::default())),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        lock(&self.inner)
    }

    /// Marks a request for `key` in flight until the returned guard drops.
    pub(crate) fn enter(&self, key: &str) -> InFlight {
        let object = key.starts_with("objects/");
        let mut inner = self.lock();
        inner.in_flight.up();
        if object {
            inner.objects_in_flight.up();
        }
        InFlight {
            inner: self.inner.clone(),
            object,
        }
    }

    pub(crate) fn count(&self, key: &str) {
        let mut inner = self.lock();
        inner.total += 1;
        if let Some(n) = inner.paths.get_mut(key) {
            *n += 1;
        } else if key.len() <= MAX_KEY_LEN && inner.paths.len() < self.max_paths {
            inner.paths.insert(key.to_owned(), 1);
        } else {
            inner.other += 1;
        }
    }

    pub(crate) fn snapshot(&self) -> Counts {
        let inner = self.lock();
        Counts {
            total: inner.total,
            paths: inner.paths.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            other: inner.other,
            in_flight: inner.in_flight.now,
            peak_in_flight: inner.in_flight.peak,
            objects_in_flight: inner.objects_in_flight.now,
            peak_objects_in_flight: inner.objects_in_flight.peak,
        }
    }

    /// Zeroes the counts and restarts the peaks from the requests in flight now (those are
    /// still being answered; their guards will count them down).
    pub(crate) fn reset(&self) {
        let mut inner = self.lock();
        inner.total = 0;
        inner.paths.clear();
        inner.other = 0;
        inner.in_flight.restart();
        inner.objects_in_flight.restart();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_path_up_to_the_bound() {
        let c = Counter::new(2);
        for key in ["a", "b", "a", "c", "d", "b"] {
            c.count(key);
        }
        c.count(&"x".repeat(MAX_KEY_LEN + 1));
        let s = c.snapshot();
        assert_eq!(s.total, 7);
        assert_eq!(
            s.paths,
            BTreeMap::from([("a".to_owned(), 2), ("b".to_owned(), 2)])
        );
        assert_eq!(s.other, 3);
        assert_eq!(s.path("/a"), 2);
        assert_eq!(s.path("c"), 0);
        c.reset();
        assert_eq!(c.snapshot(), Counts::default());
    }

    #[test]
    fn tracks_requests_in_flight_and_their_peak() {
        let c = Counter::new(10);
        let a = c.enter("objects/ab/ab00");
        let b = c.enter("sites/docs/current");
        let d = c.enter("objects/cd/cd00");
        let s = c.snapshot();
        assert_eq!((s.in_flight, s.peak_in_flight), (3, 3));
        assert_eq!((s.objects_in_flight, s.peak_objects_in_flight), (2, 2));
        drop(a);
        drop(b);
        let s = c.snapshot();
        assert_eq!((s.in_flight, s.peak_in_flight), (1, 3));
        assert_eq!((s.objects_in_flight, s.peak_objects_in_flight), (1, 2));
        // A reset restarts the peaks from what is still in flight, not from zero.
        c.reset();
        let s = c.snapshot();
        assert_eq!((s.in_flight, s.peak_in_flight), (1, 1));
        assert_eq!((s.objects_in_flight, s.peak_objects_in_flight), (1, 1));
        let e = c.enter("hosts/a.example");
        assert_eq!(c.snapshot().peak_in_flight, 2);
        drop(d);
        drop(e);
        let s = c.snapshot();
        assert_eq!((s.in_flight, s.peak_in_flight), (0, 2));
        assert_eq!((s.objects_in_flight, s.peak_objects_in_flight), (0, 1));
        // Old snapshots without the gauges still parse.
        let old: Counts =
            serde_json::from_str(r#"{"total": 1, "paths": {"a": 1}, "other": 0}"#).unwrap();
        assert_eq!(old.peak_in_flight, 0);
    }
}
