//! What one step measured: latency histograms (µs, 3 significant digits) and error counts.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::outcome::{ErrorCounts, ErrorKind, RequestError};

/// Largest latency a histogram holds exactly (one hour); longer ones count as this.
const MAX_LATENCY_US: u64 = 3_600_000_000;

/// Latency of successful requests, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    pub min_us: u64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p95_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub mean_us: f64,
}

/// The median and tail of a secondary latency (429 answers, open-loop send lag), µs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TailLatency {
    pub p50_us: u64,
    pub p99_us: u64,
}

/// How long one request took to be answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// From when it was due to leave: its scheduled time in an open loop, its send in a
    /// closed one. The latency that reports show.
    pub from_due: Duration,
    /// From when it actually left: the server's (and the network's) part alone.
    pub from_send: Duration,
}

impl Timing {
    /// A closed-loop request: due when sent.
    pub fn sent_when_due(elapsed: Duration) -> Timing {
        Timing { from_due: elapsed, from_send: elapsed }
    }
}

/// Counts and histograms of the requests of one step's measurement window.
#[derive(Debug, Clone)]
pub struct StepStats {
    latency: Histogram<u64>,
    rejected_latency: Histogram<u64>,
    send_lag: Histogram<u64>,
    successes: u64,
    /// Exact extremes of successful latencies (the histogram rounds to 3 digits).
    min_us: u64,
    max_us: u64,
    errors: ErrorCounts,
    first_error: Option<String>,
}

impl Default for StepStats {
    fn default() -> Self {
        StepStats::new()
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("constant histogram bounds are valid")
}

fn micros(latency: Duration) -> u64 {
    u64::try_from(latency.as_micros()).unwrap_or(u64::MAX).max(1)
}

impl StepStats {
    pub fn new() -> Self {
        StepStats {
            latency: histogram(),
            rejected_latency: histogram(),
            send_lag: histogram(),
            successes: 0,
            min_us: u64::MAX,
            max_us: 0,
            errors: ErrorCounts::default(),
            first_error: None,
        }
    }

    /// Records one answered (or failed) request and how long it took. Only successes enter the
    /// latency histogram (from when they were due); rejections have one of their own, from
    /// their send, as it shows how fast the server turns work away.
    pub fn record(&mut self, outcome: &Result<(), RequestError>, timing: Timing) {
        match outcome {
            Ok(()) => {
                let us = micros(timing.from_due);
                self.successes += 1;
                self.min_us = self.min_us.min(us);
                self.max_us = self.max_us.max(us);
                self.latency.saturating_record(us);
            }
            Err(error) => {
                if error.kind == ErrorKind::Rejected {
                    self.rejected_latency.saturating_record(micros(timing.from_send));
                }
                self.record_error(error);
            }
        }
    }

    /// Records how late an open-loop request left after its scheduled time.
    pub fn record_send_lag(&mut self, lag: Duration) {
        self.send_lag.saturating_record(micros(lag));
    }

    /// Records a request that was never sent (open loop, `--max-inflight` reached).
    pub fn record_dropped(&mut self) {
        self.record_error(&RequestError::new(ErrorKind::Dropped, "--max-inflight requests were in flight"));
    }

    fn record_error(&mut self, error: &RequestError) {
        self.errors.add(error.kind, 1);
        if self.first_error.is_none() {
            self.first_error = Some(format!("{}: {}", error.kind.label(), error.message));
        }
    }

    pub fn merge(&mut self, other: &StepStats) {
        // Same bounds on both sides, so adding cannot fail.
        let _ = self.latency.add(&other.latency);
        let _ = self.rejected_latency.add(&other.rejected_latency);
        let _ = self.send_lag.add(&other.send_lag);
        self.successes += other.successes;
        self.min_us = self.min_us.min(other.min_us);
        self.max_us = self.max_us.max(other.max_us);
        self.errors.merge(&other.errors);
        if self.first_error.is_none() {
            self.first_error.clone_from(&other.first_error);
        }
    }

    pub fn successes(&self) -> u64 {
        self.successes
    }

    pub fn errors(&self) -> ErrorCounts {
        self.errors
    }

    /// Successes and failures together, dropped requests included.
    pub fn requests(&self) -> u64 {
        self.successes + self.errors.total()
    }

    /// The first failure of the step, `kind: message`, to show why requests fail.
    pub fn first_error(&self) -> Option<&str> {
        self.first_error.as_deref()
    }

    /// Percentiles of successful requests; `None` when there were none. The histogram gives
    /// the top of a value's 3-digit bucket, so percentiles are clamped to the exact extremes.
    pub fn latency(&self) -> Option<LatencySummary> {
        let h = &self.latency;
        let at = |q: f64| h.value_at_quantile(q).clamp(self.min_us, self.max_us);
        (!h.is_empty()).then(|| LatencySummary {
            min_us: self.min_us,
            p50_us: at(0.50),
            p90_us: at(0.90),
            p95_us: at(0.95),
            p99_us: at(0.99),
            p999_us: at(0.999),
            max_us: self.max_us,
            mean_us: h.mean(),
        })
    }

    /// Percentiles of rejected requests; `None` when there were none.
    pub fn rejected_latency(&self) -> Option<TailLatency> {
        tail(&self.rejected_latency)
    }

    /// Percentiles of the open-loop send lag; `None` in a closed loop.
    pub fn send_lag(&self) -> Option<TailLatency> {
        tail(&self.send_lag)
    }
}

fn tail(h: &Histogram<u64>) -> Option<TailLatency> {
    (!h.is_empty())
        .then(|| TailLatency { p50_us: h.value_at_quantile(0.50), p99_us: h.value_at_quantile(0.99) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut stats = StepStats::new();
        // 1 ms, 2 ms, ..., 1000 ms: the p-th percentile is p × 10 ms.
        for ms in 1..=1000u64 {
            stats.record(&Ok(()), Timing::sent_when_due(Duration::from_millis(ms)));
        }
        let s = stats.latency().expect("some");
        // Three significant digits: each value within 0.1% of the exact one.
        let near = |got: u64, want: u64| (got as f64 / want as f64 - 1.0).abs() <= 1e-3;
        assert!(near(s.p50_us, 500_000), "{s:?}");
        assert!(near(s.p90_us, 900_000), "{s:?}");
        assert!(near(s.p99_us, 990_000), "{s:?}");
        assert!(near(s.p999_us, 999_000), "{s:?}");
        assert_eq!((s.min_us, s.max_us), (1_000, 1_000_000));
        assert!((s.mean_us / 500_500.0 - 1.0).abs() < 1e-3, "{s:?}");
        assert!(s.p50_us <= s.p90_us && s.p90_us <= s.p95_us && s.p95_us <= s.p99_us && s.p99_us <= s.max_us);
    }

    #[test]
    fn only_successes_enter_the_latency_histogram() {
        let mut stats = StepStats::new();
        // Open loop: sent 9 ms late; the success counts from its due time.
        stats.record(
            &Ok(()),
            Timing { from_due: Duration::from_millis(10), from_send: Duration::from_millis(1) },
        );
        let rejected = Err(RequestError::new(ErrorKind::Rejected, "HTTP 429"));
        // A rejection counts from its send: how fast the server said no.
        stats.record(
            &rejected,
            Timing { from_due: Duration::from_millis(5), from_send: Duration::from_micros(50) },
        );
        stats.record(
            &Err(RequestError::new(ErrorKind::Server, "HTTP 500")),
            Timing::sent_when_due(Duration::from_secs(1)),
        );
        stats.record_dropped();
        assert_eq!(stats.successes(), 1);
        assert_eq!(stats.requests(), 4);
        assert_eq!(stats.latency().map(|l| l.max_us), Some(10_000));
        assert_eq!(stats.rejected_latency().map(|l| l.p99_us), Some(50));
        assert_eq!(
            (stats.errors().rejected_429, stats.errors().server_5xx, stats.errors().dropped),
            (1, 1, 1)
        );
        assert_eq!(stats.first_error(), Some("429: HTTP 429"));
    }

    #[test]
    fn merging_adds_everything() {
        let mut a = StepStats::new();
        a.record(&Ok(()), Timing::sent_when_due(Duration::from_millis(1)));
        let mut b = StepStats::new();
        b.record(&Ok(()), Timing::sent_when_due(Duration::from_millis(3)));
        b.record(
            &Err(RequestError::new(ErrorKind::Timeout, "late")),
            Timing::sent_when_due(Duration::from_secs(10)),
        );
        a.merge(&b);
        assert_eq!((a.successes(), a.requests()), (2, 3));
        let l = a.latency().expect("some");
        assert_eq!((l.min_us, l.max_us), (1_000, 3_000));
        assert_eq!(a.errors().timeout, 1);
        assert!(StepStats::new().latency().is_none());
    }
}
