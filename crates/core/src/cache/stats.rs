//! Counters and latency histograms of the prediction cache, read by the metrics endpoint.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds, in seconds, of the lookup-latency histogram buckets (an implicit `+Inf` follows).
pub const LOOKUP_BUCKETS: [f64; 16] = [
    1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 1e-1,
];

/// A lock-free latency histogram with the fixed [`LOOKUP_BUCKETS`].
#[derive(Debug, Default)]
pub(crate) struct LatencyHistogram {
    /// Non-cumulative counts; the last one is `+Inf`.
    buckets: [AtomicU64; LOOKUP_BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
    count: AtomicU64,
}

impl LatencyHistogram {
    pub(crate) fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let index = LOOKUP_BUCKETS.iter().position(|&bound| seconds <= bound).unwrap_or(LOOKUP_BUCKETS.len());
        self.buckets[index].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> LatencySnapshot {
        let mut cumulative = [0u64; LOOKUP_BUCKETS.len() + 1];
        let mut running = 0;
        for (slot, bucket) in cumulative.iter_mut().zip(&self.buckets) {
            running += bucket.load(Ordering::Relaxed);
            *slot = running;
        }
        LatencySnapshot {
            cumulative_counts: cumulative,
            sum: Duration::from_nanos(self.sum_nanos.load(Ordering::Relaxed)),
            count: self.count.load(Ordering::Relaxed),
        }
    }
}

/// A latency histogram as Prometheus exposes one.
#[derive(Debug, Clone, PartialEq)]
pub struct LatencySnapshot {
    /// Cumulative counts for each bound of [`LOOKUP_BUCKETS`], then `+Inf` (equal to `count`).
    pub cumulative_counts: [u64; LOOKUP_BUCKETS.len() + 1],
    pub sum: Duration,
    pub count: u64,
}

/// The cache's counters.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) hits: AtomicU64,
    pub(crate) misses: AtomicU64,
    pub(crate) coalesced: AtomicU64,
    pub(crate) bypassed: AtomicU64,
    pub(crate) evictions: AtomicU64,
    pub(crate) expirations: AtomicU64,
    pub(crate) redis_hits: AtomicU64,
    pub(crate) redis_misses: AtomicU64,
    pub(crate) redis_errors: AtomicU64,
    pub(crate) redis_skipped: AtomicU64,
    pub(crate) lookup: LatencyHistogram,
    pub(crate) redis_lookup: LatencyHistogram,
}

impl Counters {
    pub(crate) fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// A point-in-time copy of the cache's statistics. Counters only grow.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheStats {
    /// Replies served from the local tier.
    pub hits: u64,
    /// Replies that ran the model (both tiers missed, or the cache was cold).
    pub misses: u64,
    /// Requests that waited for an identical in-flight request instead of running the model.
    pub coalesced: u64,
    /// Requests that skipped the cache (model switch off or per-request bypass).
    pub bypassed: u64,
    /// Local entries dropped to stay under the byte limit.
    pub evictions: u64,
    /// Local entries dropped because their TTL passed.
    pub expirations: u64,
    /// Local entries now.
    pub entries: u64,
    /// Approximate bytes held by the local tier now.
    pub bytes: u64,
    /// Replies served from the shared (Redis) tier.
    pub redis_hits: u64,
    /// Shared-tier lookups that found nothing.
    pub redis_misses: u64,
    /// Shared-tier calls that failed, timed out or returned an undecodable value.
    pub redis_errors: u64,
    /// Shared-tier calls skipped while it was marked down after an error.
    pub redis_skipped: u64,
    /// Local-tier lookup latency (from entering the cache to knowing hit or miss).
    pub lookup: LatencySnapshot,
    /// Shared-tier GET latency, failures included.
    pub redis_lookup: LatencySnapshot,
}

impl Counters {
    pub(crate) fn snapshot(&self, entries: u64, bytes: u64) -> CacheStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CacheStats {
            hits: get(&self.hits),
            misses: get(&self.misses),
            coalesced: get(&self.coalesced),
            bypassed: get(&self.bypassed),
            evictions: get(&self.evictions),
            expirations: get(&self.expirations),
            entries,
            bytes,
            redis_hits: get(&self.redis_hits),
            redis_misses: get(&self.redis_misses),
            redis_errors: get(&self.redis_errors),
            redis_skipped: get(&self.redis_skipped),
            lookup: self.lookup.snapshot(),
            redis_lookup: self.redis_lookup.snapshot(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = LatencyHistogram::default();
        h.observe(Duration::from_nanos(500)); // <= 1 µs
        h.observe(Duration::from_micros(3)); // <= 5 µs
        h.observe(Duration::from_secs(1)); // +Inf
        let s = h.snapshot();
        assert_eq!(s.count, 3);
        assert_eq!(s.cumulative_counts[0], 1);
        assert_eq!(s.cumulative_counts[1], 1);
        assert_eq!(s.cumulative_counts[2], 2);
        assert_eq!(s.cumulative_counts[LOOKUP_BUCKETS.len() - 1], 2);
        assert_eq!(s.cumulative_counts[LOOKUP_BUCKETS.len()], 3);
        assert_eq!(s.sum, Duration::from_nanos(500 + 3_000 + 1_000_000_000));
    }
}
