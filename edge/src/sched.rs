//! Cooperative yielding of the serving threads.
//!
//! A busy serving thread (one that always finds another ready connection) never blocks, so
//! the kernel takes its CPU away only when its time slice ends, and gives it back a slice
//! later: on a core shared with other runnable threads (a load generator, a log shipper, the
//! kernel's own network work) every connection of that thread then waits several
//! milliseconds. Measured on the 2-core development machine with wrk on the same cores (64
//! connections): p99 7.6 ms without yielding, 2.4-3.1 ms with, at the same req/s.
//!
//! So a serving thread gives its CPU up (`sched_yield`) between two requests at most once
//! per [`set_yield_after`] (`server.yield_after`, 1 ms by default) of wall time: a thread
//! waiting for that CPU (here, the client whose responses are waiting in its socket) runs
//! now instead of at the next tick, and this one resumes as soon as that one blocks or its
//! own turn comes. A thread alone on its core gets the CPU straight back. The check runs
//! only at request boundaries, so an idle node makes no extra wake-ups. (Yielding only
//! after a millisecond without going idle did not help: serving threads park often, for
//! microseconds, and still starve their clients.)

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// Microseconds; 0 turns yielding off.
static YIELD_AFTER_US: AtomicU64 = AtomicU64::new(1000);
/// Yields so far, all threads (`edge_worker_yields_total`).
static YIELDS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// When this serving thread last yielded; `None` on threads that are not serving threads.
    static LAST_YIELD: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// How long a serving thread may run between two yields (zero: never yields). A config
/// reload may change it.
pub fn set_yield_after(d: Duration) {
    YIELD_AFTER_US.store(u64::try_from(d.as_micros()).unwrap_or(u64::MAX), Relaxed);
}

/// Yields so far, across serving threads.
pub fn yields() -> u64 {
    YIELDS.load(Relaxed)
}

/// Marks the calling thread as a serving thread (the only kind that yields).
pub fn serving_thread() {
    LAST_YIELD.with(|l| l.set(Some(Instant::now())));
}

/// Called after each response, with the current time: yields if this serving thread last
/// yielded longer ago than the limit. Does nothing on other threads.
pub fn after_request(now: Instant) {
    LAST_YIELD.with(|l| {
        let Some(last) = l.get() else { return };
        let limit = YIELD_AFTER_US.load(Relaxed);
        if limit == 0 || (now.saturating_duration_since(last).as_micros() as u64) < limit {
            return;
        }
        std::thread::yield_now();
        YIELDS.fetch_add(1, Relaxed);
        l.set(Some(Instant::now()));
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only serving threads yield, at most once per limit; zero turns it off. (One test:
    /// the limit is global.)
    #[test]
    fn yields_only_serving_threads_once_per_limit() {
        set_yield_after(Duration::from_millis(1));
        let before = yields();
        // Not a serving thread: never.
        after_request(Instant::now() + Duration::from_secs(1));
        assert_eq!(yields(), before);

        serving_thread();
        after_request(Instant::now());
        assert_eq!(yields(), before, "less than the limit since the last yield");
        after_request(Instant::now() + Duration::from_millis(2));
        assert_eq!(yields(), before + 1);
        after_request(Instant::now());
        assert_eq!(yields(), before + 1, "the clock restarted after the yield");

        set_yield_after(Duration::ZERO);
        after_request(Instant::now() + Duration::from_secs(1));
        assert_eq!(yields(), before + 1, "zero turns it off");
        set_yield_after(Duration::from_millis(1));
    }
}
