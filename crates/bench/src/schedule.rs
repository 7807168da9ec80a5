//! Open-loop arrival times: a Poisson process, i.e. exponential gaps between requests.

use std::time::Duration;

use crate::rng::SplitMix64;

/// Send times of a Poisson process of `rate` requests per second, as offsets from the start.
/// Seeded: the same seed and rate give the same schedule.
#[derive(Debug, Clone)]
pub struct PoissonSchedule {
    rng: SplitMix64,
    rate: f64,
    elapsed_s: f64,
}

impl PoissonSchedule {
    /// `rate` must be positive and finite (the config checks it).
    pub fn new(rate: f64, seed: u64) -> Self {
        PoissonSchedule { rng: SplitMix64::new(seed), rate, elapsed_s: 0.0 }
    }

    /// The next gap in seconds: inverse-transform sampling of Exp(rate).
    pub fn next_gap_s(&mut self) -> f64 {
        // 1 - u is in (0, 1], so the logarithm is finite.
        -(1.0 - self.rng.next_f64()).ln() / self.rate
    }
}

impl Iterator for PoissonSchedule {
    type Item = Duration;

    /// The next send time, counted from the start of the schedule. Never ends.
    fn next(&mut self) -> Option<Duration> {
        self.elapsed_s += self.next_gap_s();
        Some(Duration::from_secs_f64(self.elapsed_s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_are_exponential_with_mean_one_over_rate() {
        let rate = 500.0;
        let n = 100_000;
        let mut schedule = PoissonSchedule::new(rate, 42);
        let gaps: Vec<f64> = (0..n).map(|_| schedule.next_gap_s()).collect();
        let mean = gaps.iter().sum::<f64>() / n as f64;
        let variance = gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
        // The mean of n Exp(rate) samples has a standard error of 1 / (rate √n), 0.3% here;
        // 2% is more than 6 standard errors, so a correct sampler never fails this.
        assert!((mean * rate - 1.0).abs() < 0.02, "mean gap {mean} for rate {rate}");
        // Exponential: the standard deviation equals the mean (coefficient of variation 1).
        let cv = variance.sqrt() / mean;
        assert!((cv - 1.0).abs() < 0.03, "coefficient of variation {cv}");
        // And P(gap > mean) = e^-1 ≈ 0.368.
        let above = gaps.iter().filter(|&&g| g > 1.0 / rate).count() as f64 / n as f64;
        assert!((above - (-1.0f64).exp()).abs() < 0.01, "share above the mean {above}");
    }

    #[test]
    fn offsets_increase_and_the_seed_fixes_the_schedule() {
        let a: Vec<Duration> = PoissonSchedule::new(100.0, 9).take(1000).collect();
        let b: Vec<Duration> = PoissonSchedule::new(100.0, 9).take(1000).collect();
        let c: Vec<Duration> = PoissonSchedule::new(100.0, 10).take(1000).collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(a.windows(2).all(|w| w[0] <= w[1]));
        // 1000 arrivals at 100/s take about 10 s (standard deviation √1000 / 100 ≈ 0.32 s).
        let last = a[999].as_secs_f64();
        assert!((8.0..12.0).contains(&last), "1000 arrivals took {last} s");
    }
}
