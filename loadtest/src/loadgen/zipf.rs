//! A Zipf distribution over ranks `0..n`: rank `k` is drawn with probability proportional to
//! `1 / (k + 1)^s`. Pure and deterministic: the caller supplies the uniform number.
//!
//! Sampling is a binary search in a precomputed cumulative table, so it is exact for any `s`
//! (including `s = 0`, the uniform distribution) and costs `O(log n)`; the table costs 8 bytes a
//! rank, which is why `n` is bounded by [`MAX_RANKS`].

/// The largest number of ranks a [`Zipf`] accepts (80 MB of table).
pub const MAX_RANKS: usize = 10_000_000;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ZipfError {
    #[error("a Zipf distribution needs between 1 and {MAX_RANKS} ranks, not {0}")]
    Ranks(usize),
    #[error("the Zipf exponent must be a finite number >= 0, not {0}")]
    Exponent(f64),
}

/// Zipf popularity over `n` ranks.
#[derive(Debug, Clone)]
pub struct Zipf {
    /// `cdf[k]` = P(rank <= k); the last entry is exactly 1.0.
    cdf: Vec<f64>,
    exponent: f64,
}

impl Zipf {
    pub fn new(n: usize, exponent: f64) -> Result<Zipf, ZipfError> {
        if n == 0 || n > MAX_RANKS {
            return Err(ZipfError::Ranks(n));
        }
        if !exponent.is_finite() || exponent < 0.0 {
            return Err(ZipfError::Exponent(exponent));
        }
        let mut cdf = Vec::with_capacity(n);
        let mut sum = 0.0;
        for k in 1..=n {
            sum += (k as f64).powf(-exponent);
            cdf.push(sum);
        }
        for c in &mut cdf {
            *c /= sum;
        }
        // Rounding may leave the last entry a hair under 1; a draw of 0.99999... must still land.
        if let Some(last) = cdf.last_mut() {
            *last = 1.0;
        }
        Ok(Zipf { cdf, exponent })
    }

    /// The number of ranks.
    pub fn len(&self) -> usize {
        self.cdf.len()
    }

    /// Never true: a `Zipf` has at least one rank.
    pub fn is_empty(&self) -> bool {
        self.cdf.is_empty()
    }

    pub fn exponent(&self) -> f64 {
        self.exponent
    }

    /// The rank for a uniform draw `u` in `[0, 1)` (values outside are clamped).
    pub fn sample(&self, u: f64) -> usize {
        let u = u.clamp(0.0, 1.0);
        // The first rank whose cumulative probability exceeds u.
        self.cdf
            .partition_point(|&c| c <= u)
            .min(self.cdf.len() - 1)
    }

    /// The probability of rank `k` (0 for ranks out of range).
    pub fn probability(&self, k: usize) -> f64 {
        match k {
            0 => self.cdf.first().copied().unwrap_or(0.0),
            k if k < self.cdf.len() => self.cdf[k] - self.cdf[k - 1],
            _ => 0.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_parameters() {
        assert_eq!(Zipf::new(0, 1.0).unwrap_err(), ZipfError::Ranks(0));
        assert!(matches!(
            Zipf::new(10, -1.0).unwrap_err(),
            ZipfError::Exponent(_)
        ));
        assert!(matches!(
            Zipf::new(10, f64::NAN).unwrap_err(),
            ZipfError::Exponent(_)
        ));
    }

    #[test]
    fn probabilities_follow_the_power_law() {
        let z = Zipf::new(100, 1.0).unwrap();
        let total: f64 = (0..100).map(|k| z.probability(k)).sum();
        assert!((total - 1.0).abs() < 1e-9);
        // P(0) / P(9) = 10^s.
        assert!((z.probability(0) / z.probability(9) - 10.0).abs() < 1e-9);
        assert_eq!(z.probability(100), 0.0);
    }

    #[test]
    fn exponent_zero_is_uniform() {
        let z = Zipf::new(4, 0.0).unwrap();
        assert_eq!(z.sample(0.0), 0);
        assert_eq!(z.sample(0.26), 1);
        assert_eq!(z.sample(0.51), 2);
        assert_eq!(z.sample(0.99999), 3);
        assert_eq!(z.sample(1.0), 3);
    }

    #[test]
    fn sampled_frequencies_match() {
        let z = Zipf::new(50, 1.2).unwrap();
        let mut rng = fastrand::Rng::with_seed(7);
        let mut counts = [0u32; 50];
        let draws = 200_000;
        for _ in 0..draws {
            counts[z.sample(rng.f64())] += 1;
        }
        for k in [0, 1, 5, 20] {
            let seen = f64::from(counts[k]) / f64::from(draws);
            let want = z.probability(k);
            assert!(
                (seen - want).abs() < 0.01 + want * 0.05,
                "rank {k}: {seen} vs {want}"
            );
        }
    }
}
