//! Counters and gauges read at scrape time from the loaded models' schedulers, the prediction
//! cache and the process, so that nothing on the request path updates them twice: a Prometheus
//! collector registered with the server's metrics at start-up (metrics itself knows nothing of
//! the repository).

use std::sync::Arc;

use prometheus::core::{Collector, Desc};
use prometheus::proto::{Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType};
use rtserve_core::{LatencySnapshot, PredictionCache, LOOKUP_BUCKETS};

use crate::repository::ModelRepository;

/// The scrape-time families. Unchecked (no descriptors up front), as its families follow the
/// models loaded at the time of the scrape.
pub struct ScrapeCollector {
    repository: Arc<ModelRepository>,
    cache: PredictionCache,
}

/// One metric family under construction (also used by `crate::gpu_metrics`).
pub(crate) struct Family {
    pub(crate) family: MetricFamily,
}

impl Family {
    pub(crate) fn new(name: &str, help: &str, kind: MetricType) -> Family {
        let mut family = MetricFamily::default();
        family.set_name(name.to_string());
        family.set_help(help.to_string());
        family.set_field_type(kind);
        Family { family }
    }

    pub(crate) fn sample(&mut self, labels: &[(&str, &str)], value: f64) {
        let mut metric = Metric::default();
        metric.set_label(
            labels
                .iter()
                .map(|(name, value)| {
                    let mut pair = LabelPair::default();
                    pair.set_name(name.to_string());
                    pair.set_value(value.to_string());
                    pair
                })
                .collect(),
        );
        if self.family.get_field_type() == MetricType::COUNTER {
            let mut counter = Counter::default();
            counter.set_value(value);
            metric.set_counter(counter);
        } else {
            let mut gauge = Gauge::default();
            gauge.set_value(value);
            metric.set_gauge(gauge);
        }
        self.family.mut_metric().push(metric);
    }
}

fn histogram(name: &str, help: &str, snapshot: &LatencySnapshot) -> MetricFamily {
    let mut family = MetricFamily::default();
    family.set_name(name.to_string());
    family.set_help(help.to_string());
    family.set_field_type(MetricType::HISTOGRAM);
    let mut histogram = Histogram::default();
    histogram.set_sample_count(snapshot.count);
    histogram.set_sample_sum(snapshot.sum.as_secs_f64());
    histogram.set_bucket(
        LOOKUP_BUCKETS
            .iter()
            .zip(&snapshot.cumulative_counts)
            .map(|(&bound, &count)| {
                let mut bucket = Bucket::default();
                bucket.set_upper_bound(bound);
                bucket.set_cumulative_count(count);
                bucket
            })
            .collect(),
    );
    let mut metric = Metric::default();
    metric.set_histogram(histogram);
    family.mut_metric().push(metric);
    family
}

/// The resident set size of this process, from `/proc/self/status` (Linux).
fn resident_memory_bytes() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024.0)
}

impl ScrapeCollector {
    pub fn new(repository: Arc<ModelRepository>, cache: PredictionCache) -> ScrapeCollector {
        ScrapeCollector { repository, cache }
    }
}

impl Collector for ScrapeCollector {
    fn desc(&self) -> Vec<&Desc> {
        Vec::new()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        use MetricType::{COUNTER, GAUGE};
        let mut loaded = Family::new("rtserve_model_loaded", "1 for each model version that serves", GAUGE);
        let mut slo = Family::new(
            "rtserve_model_slo_seconds",
            "Each model's latency objective (models with slo_ms or slo)",
            GAUGE,
        );
        let mut depth = Family::new("rtserve_queue_depth", "Requests waiting in the scheduler", GAUGE);
        let mut busy = Family::new("rtserve_instances_busy", "Instances running a batch", GAUGE);
        let mut instances = Family::new("rtserve_instances", "Instances of each model version", GAUGE);
        let mut rows = Family::new("rtserve_inferences_total", "Rows run by the engine", COUNTER);
        let mut executions = Family::new("rtserve_executions_total", "Engine executions (batches)", COUNTER);
        let mut rejections = Family::new(
            "rtserve_rejections_total",
            "Requests the scheduler refused at admission or expired in the queue, by reason",
            COUNTER,
        );
        let mut met = Family::new("rtserve_slo_met_total", "Requests answered within the SLO", COUNTER);
        let mut missed = Family::new(
            "rtserve_slo_missed_total",
            "Requests answered after the SLO or expired in the queue",
            COUNTER,
        );
        for model in self.repository.loaded() {
            let version = model.version.to_string();
            let labels = [("model", model.config.name.as_str()), ("version", version.as_str())];
            let stats = model.scheduler.stats();
            loaded.sample(&labels, 1.0);
            if let Some(objective) = model.scheduler.policy().slo {
                slo.sample(&labels, objective.as_secs_f64());
            }
            depth.sample(&labels, stats.queue_depth as f64);
            busy.sample(&labels, stats.instances_busy as f64);
            instances.sample(&labels, stats.instances as f64);
            rows.sample(&labels, stats.rows() as f64);
            executions.sample(&labels, stats.executions().count as f64);
            for (reason, count) in &stats.rejections {
                rejections.sample(&[labels[0], labels[1], ("reason", reason)], *count as f64);
            }
            rejections.sample(&[labels[0], labels[1], ("reason", "expired_in_queue")], stats.expired as f64);
            met.sample(&labels, stats.slo_met as f64);
            missed.sample(&labels, stats.slo_missed as f64);
        }

        let cache = self.cache.stats();
        let mut hits =
            Family::new("rtserve_cache_hits_total", "Replies served from the cache, by tier", COUNTER);
        hits.sample(&[("tier", "local")], cache.hits as f64);
        hits.sample(&[("tier", "redis")], cache.redis_hits as f64);
        let single = |name: &str, help: &str, kind: MetricType, value: u64| {
            let mut family = Family::new(name, help, kind);
            family.sample(&[], value as f64);
            family.family
        };
        let mut families: Vec<MetricFamily> =
            [loaded, slo, depth, busy, instances, rows, executions, rejections]
                .into_iter()
                .chain([met, missed, hits])
                .map(|f| f.family)
                .collect();
        families.extend([
            single("rtserve_cache_misses_total", "Cache lookups that ran the model", COUNTER, cache.misses),
            single(
                "rtserve_cache_coalesced_total",
                "Requests that waited for an identical request in flight",
                COUNTER,
                cache.coalesced,
            ),
            single(
                "rtserve_cache_evictions_total",
                "Local entries dropped to stay under --cache-bytes",
                COUNTER,
                cache.evictions,
            ),
            single(
                "rtserve_cache_redis_errors_total",
                "Redis calls that failed or timed out",
                COUNTER,
                cache.redis_errors,
            ),
            single("rtserve_cache_entries", "Entries in the local cache tier", GAUGE, cache.entries),
            single("rtserve_cache_bytes", "Approximate bytes in the local cache tier", GAUGE, cache.bytes),
            histogram(
                "rtserve_cache_lookup_duration_seconds",
                "Local cache lookups, from entering the cache to knowing hit or miss",
                &cache.lookup,
            ),
        ]);
        if let Some(rss) = resident_memory_bytes() {
            let mut memory =
                Family::new("rtserve_process_resident_memory_bytes", "Resident memory of the server", GAUGE);
            memory.sample(&[], rss);
            families.push(memory.family);
        }
        families
    }
}
