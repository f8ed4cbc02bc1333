//! A circuit breaker: closed, open, half-open. Pure: time comes in as an argument.
//!
//! Closed: requests pass; the breaker opens after `consecutive_failures` failures in a row, or
//! when the failure rate over the last `window` reaches `failure_rate` (with at least
//! `min_requests` in the window). Open: requests are refused until `open_for` has passed.
//! Half-open: at most `half_open_probes` requests pass at once; `half_open_probes` successes
//! close it, any failure opens it again.
//!
//! A streamed answer has two reports: its head ([`Breaker::record_head`]: a probe's success,
//! not yet the request's) and its body ([`Breaker::record_body`]: the request's outcome), so
//! an origin that answers heads and then stalls bodies opens the breaker too.

use std::time::{Duration, Instant};

#[derive(Debug, Clone, PartialEq)]
pub struct BreakerConfig {
    pub consecutive_failures: u32,
    pub failure_rate: f64,
    pub window: Duration,
    pub min_requests: u32,
    pub open_for: Duration,
    pub half_open_probes: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            consecutive_failures: 5,
            failure_rate: 0.5,
            window: Duration::from_secs(10),
            min_requests: 20,
            open_for: Duration::from_secs(5),
            half_open_probes: 3,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

/// Permission to send one request; report its outcome with [`Breaker::record`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct Permit {
    probe: bool,
}

/// The breaker refused: the origin is considered down until about `retry_after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    pub retry_after: Duration,
}

const BUCKETS: usize = 10;

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    start: Option<Instant>,
    ok: u32,
    failed: u32,
}

#[derive(Debug, Clone)]
pub struct Breaker {
    cfg: BreakerConfig,
    state: Inner,
    consecutive: u32,
    buckets: [Bucket; BUCKETS],
    /// Times the breaker has opened.
    opened: u64,
}

#[derive(Debug, Clone, Copy)]
enum Inner {
    Closed,
    Open { until: Instant },
    HalfOpen { in_flight: u32, ok: u32 },
}

impl Breaker {
    pub fn new(cfg: BreakerConfig) -> Breaker {
        Breaker {
            cfg,
            state: Inner::Closed,
            consecutive: 0,
            buckets: [Bucket::default(); BUCKETS],
            opened: 0,
        }
    }

    pub fn config(&self) -> &BreakerConfig {
        &self.cfg
    }

    /// The state as of `now` (an open breaker whose time is up reads as half-open).
    pub fn state(&self, now: Instant) -> BreakerState {
        match self.state {
            Inner::Closed => BreakerState::Closed,
            Inner::Open { until } if now >= until => BreakerState::HalfOpen,
            Inner::Open { .. } => BreakerState::Open,
            Inner::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    pub fn times_opened(&self) -> u64 {
        self.opened
    }

    /// Asks to send a request at `now`.
    pub fn try_acquire(&mut self, now: Instant) -> Result<Permit, Refused> {
        match self.state {
            Inner::Closed => Ok(Permit { probe: false }),
            Inner::Open { until } if now < until => Err(Refused {
                retry_after: until - now,
            }),
            Inner::Open { .. } => {
                self.state = Inner::HalfOpen {
                    in_flight: 1,
                    ok: 0,
                };
                Ok(Permit { probe: true })
            }
            Inner::HalfOpen { in_flight, ok } => {
                if in_flight + ok < self.cfg.half_open_probes {
                    self.state = Inner::HalfOpen {
                        in_flight: in_flight + 1,
                        ok,
                    };
                    Ok(Permit { probe: true })
                } else {
                    Err(Refused {
                        retry_after: Duration::from_millis(100),
                    })
                }
            }
        }
    }

    /// Reports the outcome of a request sent under `permit`.
    pub fn record(&mut self, permit: Permit, success: bool, now: Instant) {
        self.count(success, now);
        if permit.probe {
            self.probe_outcome(success, now);
        } else {
            self.outcome(success, now);
        }
    }

    /// Reports that the answer to a request sent under `permit` has begun (its head
    /// arrived) and its body is still to come; report how the body ends with
    /// [`Breaker::record_body`].
    ///
    /// For a half-open probe this is the probe's success: the origin answered. For the
    /// failure count it is not an outcome yet: the request succeeds when its body completes,
    /// so an origin that answers every head and then stalls every body still makes a run
    /// of consecutive failures.
    pub fn record_head(&mut self, permit: Permit, now: Instant) {
        if permit.probe {
            self.probe_outcome(true, now);
        }
    }

    /// Reports how a body whose head was reported with [`Breaker::record_head`] ended:
    /// completed (`true`) or failed (`false`: cut, stalled past its deadline, short). This
    /// is the request's one outcome. Like an ordinary request's, it moves only a closed
    /// breaker (a completed body ends a run of failures, a failed one adds to the run and
    /// to the failure rate); when the breaker is open or half-open it is only counted.
    pub fn record_body(&mut self, success: bool, now: Instant) {
        self.count(success, now);
        self.outcome(success, now);
    }

    fn probe_outcome(&mut self, success: bool, now: Instant) {
        if let Inner::HalfOpen { in_flight, ok } = self.state {
            if !success {
                self.open(now);
                return;
            }
            let ok = ok + 1;
            if ok >= self.cfg.half_open_probes {
                self.close();
            } else {
                self.state = Inner::HalfOpen {
                    in_flight: in_flight.saturating_sub(1),
                    ok,
                };
            }
        }
    }

    /// The outcome of an ordinary (not probe) request, already counted in the window.
    fn outcome(&mut self, success: bool, now: Instant) {
        // An ordinary request that finishes after the breaker changed state only counts.
        if !matches!(self.state, Inner::Closed) {
            return;
        }
        if success {
            self.consecutive = 0;
            return;
        }
        self.consecutive += 1;
        if self.consecutive >= self.cfg.consecutive_failures {
            self.open(now);
            return;
        }
        let (ok, failed) = self.window_counts(now);
        let total = ok + failed;
        if total >= self.cfg.min_requests
            && f64::from(failed) / f64::from(total) >= self.cfg.failure_rate
        {
            self.open(now);
        }
    }

    /// Gives back a permit whose request was abandoned without an outcome (cancelled).
    pub fn release(&mut self, permit: Permit) {
        if permit.probe
            && let Inner::HalfOpen { in_flight, ok } = self.state
        {
            self.state = Inner::HalfOpen {
                in_flight: in_flight.saturating_sub(1),
                ok,
            };
        }
    }

    fn open(&mut self, now: Instant) {
        self.state = Inner::Open {
            until: now + self.cfg.open_for,
        };
        self.opened += 1;
        self.consecutive = 0;
        self.buckets = [Bucket::default(); BUCKETS];
    }

    fn close(&mut self) {
        self.state = Inner::Closed;
        self.consecutive = 0;
        self.buckets = [Bucket::default(); BUCKETS];
    }

    fn bucket_len(&self) -> Duration {
        (self.cfg.window / BUCKETS as u32).max(Duration::from_millis(1))
    }

    fn count(&mut self, success: bool, now: Instant) {
        let len = self.bucket_len();
        // The newest bucket, if it still covers `now`; else reuse the oldest slot.
        let idx = self
            .buckets
            .iter()
            .position(|b| b.start.is_some_and(|s| now >= s && now < s + len));
        let idx = match idx {
            Some(i) => i,
            None => {
                let i = self
                    .buckets
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, b)| b.start)
                    .map_or(0, |(i, _)| i);
                self.buckets[i] = Bucket {
                    start: Some(now),
                    ok: 0,
                    failed: 0,
                };
                i
            }
        };
        if success {
            self.buckets[idx].ok += 1;
        } else {
            self.buckets[idx].failed += 1;
        }
    }

    fn window_counts(&self, now: Instant) -> (u32, u32) {
        let window = self.cfg.window;
        self.buckets
            .iter()
            .filter(|b| {
                b.start
                    .is_some_and(|s| now.saturating_duration_since(s) < window)
            })
            .fold((0, 0), |(ok, f), b| (ok + b.ok, f + b.failed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> BreakerConfig {
        BreakerConfig {
            consecutive_failures: 3,
            failure_rate: 0.5,
            window: Duration::from_secs(10),
            min_requests: 10,
            open_for: Duration::from_secs(5),
            half_open_probes: 2,
        }
    }

    fn run(b: &mut Breaker, ok: bool, now: Instant) -> bool {
        match b.try_acquire(now) {
            Ok(p) => {
                b.record(p, ok, now);
                true
            }
            Err(_) => false,
        }
    }

    #[test]
    fn opens_on_consecutive_failures_then_half_opens_and_closes() {
        let t0 = Instant::now();
        let mut b = Breaker::new(cfg());
        assert!(run(&mut b, false, t0));
        assert!(run(&mut b, false, t0));
        assert_eq!(b.state(t0), BreakerState::Closed);
        assert!(run(&mut b, false, t0));
        assert_eq!(b.state(t0), BreakerState::Open);
        let refused = b.try_acquire(t0 + Duration::from_secs(1)).unwrap_err();
        assert_eq!(refused.retry_after, Duration::from_secs(4));
        // After open_for: half-open, a bounded number of probes.
        let t1 = t0 + Duration::from_secs(5);
        assert_eq!(b.state(t1), BreakerState::HalfOpen);
        let p1 = b.try_acquire(t1).unwrap();
        let p2 = b.try_acquire(t1).unwrap();
        assert!(b.try_acquire(t1).is_err(), "only two probes at once");
        b.record(p1, true, t1);
        assert_eq!(b.state(t1), BreakerState::HalfOpen);
        b.record(p2, true, t1);
        assert_eq!(b.state(t1), BreakerState::Closed);
        assert_eq!(b.times_opened(), 1);
    }

    #[test]
    fn a_failed_probe_reopens() {
        let t0 = Instant::now();
        let mut b = Breaker::new(cfg());
        for _ in 0..3 {
            run(&mut b, false, t0);
        }
        let t1 = t0 + Duration::from_secs(6);
        let p = b.try_acquire(t1).unwrap();
        b.record(p, false, t1);
        assert_eq!(b.state(t1), BreakerState::Open);
        assert_eq!(b.state(t1 + Duration::from_secs(5)), BreakerState::HalfOpen);
        assert_eq!(b.times_opened(), 2);
    }

    #[test]
    fn opens_on_failure_rate_over_the_window() {
        let t0 = Instant::now();
        let mut b = Breaker::new(cfg());
        // Alternate: never three failures in a row, but half fail.
        for i in 0..9 {
            assert!(run(&mut b, i % 2 == 0, t0 + Duration::from_millis(i * 100)));
        }
        assert_eq!(b.state(t0 + Duration::from_secs(1)), BreakerState::Closed);
        run(&mut b, false, t0 + Duration::from_secs(1));
        assert_eq!(b.state(t0 + Duration::from_secs(1)), BreakerState::Open);
    }

    #[test]
    fn old_failures_leave_the_window() {
        let t0 = Instant::now();
        let mut b = Breaker::new(cfg());
        for i in 0..8 {
            run(&mut b, i % 2 == 0, t0);
        }
        // Much later: the old failures no longer count.
        let later = t0 + Duration::from_secs(30);
        for _ in 0..9 {
            run(&mut b, true, later);
        }
        run(&mut b, false, later);
        assert_eq!(b.state(later), BreakerState::Closed);
    }

    #[test]
    fn a_cancelled_probe_frees_its_slot() {
        let t0 = Instant::now();
        let mut b = Breaker::new(cfg());
        for _ in 0..3 {
            run(&mut b, false, t0);
        }
        let t1 = t0 + Duration::from_secs(5);
        let p1 = b.try_acquire(t1).unwrap();
        let _p2 = b.try_acquire(t1).unwrap();
        assert!(b.try_acquire(t1).is_err());
        b.release(p1);
        assert!(b.try_acquire(t1).is_ok());
    }

    /// Heads that arrive, bodies that fail: three in a row open the breaker, whatever the
    /// heads said, and each body counts once.
    #[test]
    fn failed_bodies_open_it_although_their_heads_arrived() {
        let t0 = Instant::now();
        let mut b = Breaker::new(cfg());
        for i in 0..3 {
            assert_eq!(b.state(t0), BreakerState::Closed, "before body {i}");
            let p = b.try_acquire(t0).unwrap();
            b.record_head(p, t0);
            assert_eq!(b.state(t0), BreakerState::Closed);
            b.record_body(false, t0);
        }
        assert_eq!(b.state(t0), BreakerState::Open);
        assert_eq!(b.times_opened(), 1);
    }

    #[test]
    fn a_completed_body_ends_a_run_of_failures() {
        let t0 = Instant::now();
        let mut b = Breaker::new(cfg());
        let body = |b: &mut Breaker, ok: bool| {
            let p = b.try_acquire(t0).unwrap();
            b.record_head(p, t0);
            b.record_body(ok, t0);
        };
        body(&mut b, false);
        body(&mut b, false);
        body(&mut b, true);
        body(&mut b, false);
        body(&mut b, false);
        assert_eq!(
            b.state(t0),
            BreakerState::Closed,
            "the completed body ended the run"
        );
        // A head failure and a body failure are one run.
        assert!(run(&mut b, false, t0));
        assert_eq!(b.state(t0), BreakerState::Open);
    }

    #[test]
    fn a_probe_head_is_a_probe_success_and_its_body_counts_once_closed() {
        let t0 = Instant::now();
        let mut b = Breaker::new(cfg());
        for _ in 0..3 {
            run(&mut b, false, t0);
        }
        let t1 = t0 + Duration::from_secs(5);
        let p1 = b.try_acquire(t1).unwrap();
        let p2 = b.try_acquire(t1).unwrap();
        b.record_head(p1, t1);
        assert_eq!(b.state(t1), BreakerState::HalfOpen);
        // A body failing while half-open is counted, and does not reopen.
        b.record_body(false, t1);
        assert_eq!(b.state(t1), BreakerState::HalfOpen);
        b.record_head(p2, t1);
        assert_eq!(
            b.state(t1),
            BreakerState::Closed,
            "two probe heads close it"
        );
        // Closed again: bodies failing after the close start a fresh run.
        b.record_body(false, t1);
        b.record_body(false, t1);
        assert_eq!(b.state(t1), BreakerState::Closed);
        b.record_body(false, t1);
        assert_eq!(b.state(t1), BreakerState::Open);
        assert_eq!(b.times_opened(), 2);
    }
}
