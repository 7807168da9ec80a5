//! Execution time as a function of batch size, measured at warm-up and updated online.
//!
//! Each batch size keeps a window of its most recent samples and stands for their median, so
//! a single slow run (a page fault, a noisy neighbour) does not move the prediction. Medians are
//! made non-decreasing in the batch size (a bigger batch is never predicted faster), sizes in
//! between are interpolated, and sizes past the largest measured one are extrapolated along a
//! Theil–Sen line (the median of pairwise slopes), which ignores up to ~29% outlying points.
//!
//! A second, *upper* curve is built the same way from each window's 90th percentile: admission
//! control predicts with it, so a request is admitted only when it will most likely be on time,
//! not merely on time when every run ahead of it is typical.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

/// Samples kept per batch size unless told otherwise.
pub const DEFAULT_PROFILE_WINDOW: usize = 16;

/// The quantile of each window that the upper curve follows.
const UPPER_QUANTILE: f64 = 0.9;

/// At most this many points enter the line fit (pairwise slopes are quadratic in it).
const MAX_FIT_POINTS: usize = 48;

/// One point of the profile: the typical execution time of a batch of `rows`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProfilePoint {
    pub rows: usize,
    pub exec: Duration,
}

/// The latency profile of one model version.
#[derive(Debug, Clone)]
pub struct LatencyProfile {
    window: usize,
    samples: BTreeMap<usize, VecDeque<f64>>,
    /// From each window's median: the typical execution time. Rebuilt on every sample.
    typical: Curve,
    /// From each window's 90th percentile: a time most runs stay within.
    upper: Curve,
}

/// Execution time over batch size: measured levels, made non-decreasing, interpolated between
/// and extrapolated past them along a robust line.
#[derive(Debug, Clone, Default)]
struct Curve {
    /// `(rows, nanoseconds)`, increasing in both.
    points: Vec<(usize, f64)>,
    /// Nanoseconds per extra row past the largest measured size.
    slope: f64,
}

impl Curve {
    fn new(levels: Vec<(usize, f64)>) -> Curve {
        // The slope comes from the raw levels: one slow size must not tilt the line.
        let slope = theil_sen_slope(&levels).max(0.0);
        let mut running_max = 0.0f64;
        let points = levels
            .into_iter()
            .map(|(rows, nanos)| {
                running_max = running_max.max(nanos);
                (rows, running_max)
            })
            .collect();
        Curve { points, slope }
    }

    fn predict(&self, rows: usize) -> Option<Duration> {
        let (&(first_rows, first), &(last_rows, last)) = (self.points.first()?, self.points.last()?);
        let nanos = if rows >= last_rows {
            last + self.slope * (rows - last_rows) as f64
        } else if rows <= first_rows {
            (first - self.slope * (first_rows - rows) as f64)
                .clamp(first * rows as f64 / first_rows as f64, first)
        } else {
            let above = self.points.partition_point(|&(r, _)| r < rows);
            let (r1, t1) = self.points[above - 1];
            let (r2, t2) = self.points[above];
            t1 + (t2 - t1) * (rows - r1) as f64 / (r2 - r1) as f64
        };
        Some(Duration::from_nanos(nanos.max(0.0).round() as u64))
    }
}

impl Default for LatencyProfile {
    fn default() -> Self {
        LatencyProfile::new(DEFAULT_PROFILE_WINDOW)
    }
}

impl LatencyProfile {
    /// An empty profile keeping `window` samples per batch size.
    pub fn new(window: usize) -> Self {
        LatencyProfile {
            window: window.max(1),
            samples: BTreeMap::new(),
            typical: Curve::default(),
            upper: Curve::default(),
        }
    }

    /// True until the first sample.
    pub fn is_empty(&self) -> bool {
        self.typical.points.is_empty()
    }

    /// Records that a batch of `rows` took `exec` to run.
    pub fn record(&mut self, rows: usize, exec: Duration) {
        if rows == 0 {
            return;
        }
        let window = self.samples.entry(rows).or_default();
        if window.len() == self.window {
            window.pop_front();
        }
        window.push_back(exec.as_nanos() as f64);
        self.rebuild();
    }

    /// The predicted (typical) execution time of a batch of `rows`; `None` while the profile is
    /// empty.
    pub fn predict(&self, rows: usize) -> Option<Duration> {
        self.typical.predict(rows)
    }

    /// A time a batch of `rows` most likely stays within (the 90th percentile curve); `None`
    /// while the profile is empty.
    pub fn predict_upper(&self, rows: usize) -> Option<Duration> {
        self.upper.predict(rows)
    }

    /// The measured points (median per batch size, made non-decreasing), smallest batch first.
    pub fn points(&self) -> Vec<ProfilePoint> {
        self.typical
            .points
            .iter()
            .map(|&(rows, ns)| ProfilePoint { rows, exec: Duration::from_nanos(ns.round() as u64) })
            .collect()
    }

    fn rebuild(&mut self) {
        let levels = |level: &dyn Fn(Vec<f64>) -> f64| -> Vec<(usize, f64)> {
            self.samples
                .iter()
                .map(|(&rows, window)| (rows, level(window.iter().copied().collect())))
                .collect()
        };
        self.typical = Curve::new(levels(&median));
        self.upper = Curve::new(levels(&|values| quantile(values, UPPER_QUANTILE)));
    }
}

/// The median of pairwise slopes; for a single point, the slope of the line through the origin.
fn theil_sen_slope(points: &[(usize, f64)]) -> f64 {
    let step = points.len().div_ceil(MAX_FIT_POINTS).max(1);
    let kept: Vec<(usize, f64)> = points.iter().copied().step_by(step).collect();
    if let [(rows, nanos)] = kept.as_slice() {
        return nanos / *rows as f64;
    }
    let mut slopes = Vec::with_capacity(kept.len() * (kept.len() - 1) / 2);
    for (i, &(r1, t1)) in kept.iter().enumerate() {
        for &(r2, t2) in &kept[i + 1..] {
            slopes.push((t2 - t1) / (r2 - r1) as f64);
        }
    }
    median(slopes)
}

/// The nearest-rank `q` quantile (0 for no values).
fn quantile(mut values: Vec<f64>, q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
    values[rank - 1]
}

fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(value: f64) -> Duration {
        Duration::from_secs_f64(value / 1000.0)
    }

    fn predicted_ms(profile: &LatencyProfile, rows: usize) -> f64 {
        profile.predict(rows).expect("profile has samples").as_secs_f64() * 1000.0
    }

    fn close(actual: f64, expected: f64) -> bool {
        (actual - expected).abs() < 1e-3
    }

    #[test]
    fn upper_curve_follows_the_90th_percentile() {
        let mut profile = LatencyProfile::default();
        for value in 1..=10 {
            profile.record(2, ms(f64::from(value)));
        }
        assert!(close(predicted_ms(&profile, 2), 5.5), "median of 1..=10 ms");
        let upper = profile.predict_upper(2).expect("samples").as_secs_f64() * 1000.0;
        assert!(close(upper, 9.0), "nearest-rank 90th percentile of 1..=10 ms, got {upper}");
        assert!(profile.predict_upper(1) <= profile.predict_upper(2));
    }

    #[test]
    fn empty_profile_predicts_nothing() {
        let profile = LatencyProfile::default();
        assert!(profile.is_empty());
        assert_eq!(profile.predict(4), None);
    }

    #[test]
    fn fits_a_fixed_plus_per_row_cost() {
        // 2 ms per call plus 0.5 ms per row, measured at 1, 2, 4 and 8.
        let mut profile = LatencyProfile::default();
        for rows in [1, 2, 4, 8] {
            profile.record(rows, ms(2.0 + 0.5 * rows as f64));
        }
        assert!(close(predicted_ms(&profile, 4), 4.0));
        assert!(close(predicted_ms(&profile, 3), 3.5), "interpolated");
        assert!(close(predicted_ms(&profile, 16), 10.0), "extrapolated along the line");
    }

    #[test]
    fn median_ignores_outliers() {
        let mut profile = LatencyProfile::new(5);
        for exec in [1.0, 1.1, 50.0, 0.9, 1.0] {
            profile.record(1, ms(exec));
        }
        assert!(close(predicted_ms(&profile, 1), 1.0));
        // The window slides: old samples leave it.
        for _ in 0..5 {
            profile.record(1, ms(3.0));
        }
        assert!(close(predicted_ms(&profile, 1), 3.0));
    }

    #[test]
    fn line_fit_ignores_an_outlying_size() {
        let mut profile = LatencyProfile::default();
        for rows in [1, 2, 3, 4, 5, 6] {
            let exec = if rows == 3 { 40.0 } else { rows as f64 };
            profile.record(rows, ms(exec));
        }
        // The curve becomes non-decreasing (40 ms from 3 rows on), but most pairwise slopes
        // of the raw medians are 1 ms per row, so the line past 6 rows keeps that slope.
        assert!(predicted_ms(&profile, 2) <= predicted_ms(&profile, 3));
        assert!(close(predicted_ms(&profile, 12), 46.0));
    }

    #[test]
    fn predictions_never_decrease_with_rows() {
        let mut profile = LatencyProfile::default();
        for (rows, exec) in [(1, 3.0), (2, 2.0), (8, 9.0), (16, 8.0)] {
            profile.record(rows, ms(exec));
        }
        let predictions: Vec<f64> = (1..40).map(|rows| predicted_ms(&profile, rows)).collect();
        assert!(predictions.windows(2).all(|w| w[0] <= w[1] + 1e-12), "{predictions:?}");
    }

    #[test]
    fn single_point_scales_with_rows() {
        let mut profile = LatencyProfile::default();
        profile.record(4, ms(8.0));
        assert!(close(predicted_ms(&profile, 8), 16.0));
        assert!(close(predicted_ms(&profile, 2), 4.0));
        assert_eq!(profile.points(), vec![ProfilePoint { rows: 4, exec: ms(8.0) }]);
    }
}
