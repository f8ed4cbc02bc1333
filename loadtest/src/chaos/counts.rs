//! Requests per path, so tests can assert how many requests reached the origin.
//!
//! Invariant: bounded. At most `max_paths` distinct paths are kept, each at most
//! [`MAX_KEY_LEN`] bytes; any other request is counted under `other`. The lock is held only to
//! bump or copy counters, never across an await.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// Default for the most distinct paths counted one by one.
pub const DEFAULT_MAX_PATHS: usize = 100_000;
/// Longer paths are counted under `other`.
pub const MAX_KEY_LEN: usize = 1024;

/// A snapshot of the counters: `GET /_chaos/counts` answers it as JSON.
///
/// ```json
/// {"total": 4, "paths": {"sites/docs/current": 3, "objects/ab/ab12…": 1}, "other": 0}
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Every request counted, `other` included.
    pub total: u64,
    /// Requests per path (the URL path without its leading `/` and without the query).
    pub paths: BTreeMap<String, u64>,
    /// Requests whose path was not kept: past the distinct-path limit, or too long.
    pub other: u64,
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
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    total: u64,
    paths: HashMap<String, u64>,
    other: u64,
}

impl Counter {
    pub(crate) fn new(max_paths: usize) -> Counter {
        Counter {
            max_paths,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Counters stay consistent even if a holder panicked: every update is one field write.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
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
        }
    }

    pub(crate) fn reset(&self) {
        *self.lock() = Inner::default();
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
}
