//! Retries: a budget (retries may add at most a fraction of the request rate, plus a small
//! floor) and exponential backoff with full jitter. Pure: time and randomness come in as
//! arguments.

use std::time::{Duration, Instant};

#[derive(Debug, Clone, PartialEq)]
pub struct RetryConfig {
    /// Most attempts per request (1 = no retry).
    pub max_attempts: u32,
    /// Retries may add this fraction of recent requests (0.2 = 20%).
    pub budget_ratio: f64,
    /// Retries always allowed per second, whatever the request rate.
    pub min_per_second: u32,
    /// Backoff before retry n is uniform in [0, min(cap, base * 2^n)).
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_attempts: 3,
            budget_ratio: 0.2,
            min_per_second: 10,
            backoff_base: Duration::from_millis(25),
            backoff_cap: Duration::from_secs(1),
        }
    }
}

/// A token bucket refilled by requests: each request deposits `budget_ratio` tokens, each
/// retry withdraws one; a floor of `min_per_second` refills with time. Capped at ten
/// seconds' worth so an idle period cannot bank a retry storm.
#[derive(Debug, Clone)]
pub struct RetryBudget {
    cfg: RetryConfig,
    tokens: f64,
    last: Option<Instant>,
}

impl RetryBudget {
    pub fn new(cfg: RetryConfig) -> RetryBudget {
        RetryBudget {
            tokens: f64::from(cfg.min_per_second),
            cfg,
            last: None,
        }
    }

    pub fn config(&self) -> &RetryConfig {
        &self.cfg
    }

    fn cap(&self) -> f64 {
        (f64::from(self.cfg.min_per_second) * 10.0).max(1.0)
    }

    fn refill(&mut self, now: Instant) {
        if let Some(last) = self.last {
            let secs = now.saturating_duration_since(last).as_secs_f64();
            self.tokens = (self.tokens + secs * f64::from(self.cfg.min_per_second)).min(self.cap());
        }
        self.last = Some(now);
    }

    /// A first attempt was made.
    pub fn deposit(&mut self, now: Instant) {
        self.refill(now);
        self.tokens = (self.tokens + self.cfg.budget_ratio).min(self.cap());
    }

    /// May a retry be sent now? Takes a token if so.
    pub fn withdraw(&mut self, now: Instant) -> bool {
        self.refill(now);
        // A small tolerance: ten deposits of 0.1 must make one token despite rounding.
        if self.tokens >= 1.0 - 1e-9 {
            self.tokens = (self.tokens - 1.0).max(0.0);
            true
        } else {
            false
        }
    }
}

/// Full-jitter backoff before retry number `retry` (1 for the first retry); `unit` is a
/// uniform random number in [0, 1).
pub fn backoff(cfg: &RetryConfig, retry: u32, unit: f64) -> Duration {
    let exp = cfg
        .backoff_base
        .saturating_mul(1u32.checked_shl(retry.min(20)).unwrap_or(u32::MAX));
    let ceiling = exp.min(cfg.backoff_cap);
    ceiling.mul_f64(unit.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_limits_retries_to_a_fraction_of_requests() {
        let cfg = RetryConfig {
            budget_ratio: 0.1,
            min_per_second: 0,
            ..RetryConfig::default()
        };
        let t = Instant::now();
        let mut b = RetryBudget::new(cfg);
        let mut retries = 0;
        for _ in 0..1000 {
            b.deposit(t);
            if b.withdraw(t) {
                retries += 1;
            }
        }
        assert!((99..=100).contains(&retries), "{retries}");
    }

    #[test]
    fn floor_refills_with_time_and_is_capped() {
        let cfg = RetryConfig {
            budget_ratio: 0.0,
            min_per_second: 2,
            ..RetryConfig::default()
        };
        let t = Instant::now();
        let mut b = RetryBudget::new(cfg);
        let mut n = 0;
        while b.withdraw(t) {
            n += 1;
        }
        assert_eq!(n, 2, "starts with one second's floor");
        assert!(!b.withdraw(t + Duration::from_millis(100)));
        assert!(b.withdraw(t + Duration::from_millis(600)));
        // An hour idle banks at most ten seconds' worth.
        let later = t + Duration::from_secs(3600);
        let mut n = 0;
        while b.withdraw(later) {
            n += 1;
        }
        assert_eq!(n, 20);
    }

    #[test]
    fn backoff_is_jittered_exponential_and_capped() {
        let cfg = RetryConfig {
            backoff_base: Duration::from_millis(10),
            backoff_cap: Duration::from_millis(100),
            ..RetryConfig::default()
        };
        assert_eq!(backoff(&cfg, 1, 0.0), Duration::ZERO);
        assert_eq!(backoff(&cfg, 1, 0.5), Duration::from_millis(10));
        assert_eq!(backoff(&cfg, 2, 0.5), Duration::from_millis(20));
        assert_eq!(backoff(&cfg, 10, 0.5), Duration::from_millis(50));
        assert_eq!(backoff(&cfg, 40, 1.0), Duration::from_millis(100));
    }
}
