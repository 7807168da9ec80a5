//! Prometheus metrics on `GET /metrics`: histograms fed as requests and batches happen, plus
//! the collectors registered at start-up (`crate::scrape`: counters and gauges read from the
//! schedulers, the cache and the process at scrape time). A leaf: it knows requests, batches and
//! errors, not the repository. Every name starts with `rtserve_` but the GPU families, which keep
//! Triton's (`crate::gpu_metrics`); docs/monitoring.md lists them all.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus::core::Collector;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
};
use rtserve_core::{InferError, RejectReason, SchedulerObserver};

use crate::ServerError;

/// Geometric latency buckets, in seconds: 10 µs × 2^k up to about 10 s.
fn latency_buckets() -> Vec<f64> {
    (0..21).map(|k| 1e-5 * f64::from(1u32 << k)).collect()
}

/// Rows per engine execution: 1, 2, 4, … 1024.
fn batch_buckets() -> Vec<f64> {
    (0..11).map(|k| f64::from(1u32 << k)).collect()
}

/// The front end a request came through.
#[derive(Debug, Clone, Copy)]
pub enum Protocol {
    Http,
    Grpc,
}

impl Protocol {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Grpc => "grpc",
        }
    }
}

/// How a request ended, as the `outcome` label says it.
pub fn outcome<T>(result: &Result<T, ServerError>) -> &'static str {
    match result {
        Ok(_) => "success",
        Err(ServerError::Infer(InferError::Rejected { reason, .. })) => match reason {
            RejectReason::QueueFull { .. } => "rejected_overload",
            RejectReason::TooManyRows { .. } => "invalid",
            RejectReason::PredictedMiss { .. } | RejectReason::DeadlinePassed => "rejected_deadline",
        },
        Err(ServerError::Infer(InferError::DeadlineExceeded { .. })) => "rejected_deadline",
        Err(
            ServerError::BadRequest(_)
            | ServerError::TooLarge { .. }
            | ServerError::ModelNotFound(_)
            | ServerError::VersionNotFound { .. }
            | ServerError::Infer(InferError::InvalidInput(_)),
        ) => "invalid",
        Err(_) => "error",
    }
}

/// The server's metrics.
pub struct Metrics {
    registry: Registry,
    request_duration: HistogramVec,
    requests: IntCounterVec,
    inflight: IntGaugeVec,
    auth_failures: IntCounterVec,
    tls_handshake_failures: IntCounterVec,
    stages: StageMetrics,
    model_loads: IntCounterVec,
}

/// The per-batch histograms that each model's scheduler feeds through its observer.
#[derive(Clone)]
pub struct StageMetrics {
    queue: HistogramVec,
    compute: HistogramVec,
    batch_size: HistogramVec,
    preprocess: HistogramVec,
    postprocess: HistogramVec,
}

/// One model version's input-processing and post-processing histograms.
pub struct ProcessingMetrics {
    pub preprocess: Histogram,
    pub postprocess: Histogram,
}

impl StageMetrics {
    /// The processing histograms of one model version.
    pub fn processing(&self, model: &str, version: u64) -> ProcessingMetrics {
        let version = version.to_string();
        let labels = [model, version.as_str()];
        ProcessingMetrics {
            preprocess: self.preprocess.with_label_values(&labels),
            postprocess: self.postprocess.with_label_values(&labels),
        }
    }

    /// The observer for one model version's scheduler.
    pub fn observer(&self, model: &str, version: u64) -> Arc<dyn SchedulerObserver> {
        let version = version.to_string();
        let labels = [model, version.as_str()];
        Arc::new(ModelObserver {
            queue: self.queue.with_label_values(&labels),
            compute: self.compute.with_label_values(&labels),
            batch_size: self.batch_size.with_label_values(&labels),
        })
    }
}

struct ModelObserver {
    queue: Histogram,
    compute: Histogram,
    batch_size: Histogram,
}

impl SchedulerObserver for ModelObserver {
    fn queue_wait(&self, wait: Duration) {
        self.queue.observe(wait.as_secs_f64());
    }

    fn batch(&self, rows: usize, exec: Duration) {
        self.compute.observe(exec.as_secs_f64());
        self.batch_size.observe(rows as f64);
    }
}

impl Metrics {
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let histogram = |name: &str, help: &str, labels: &[&str], buckets: Vec<f64>| {
            let vec = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)?;
            registry.register(Box::new(vec.clone()))?;
            Ok::<_, prometheus::Error>(vec)
        };
        let request_labels = ["model", "version", "protocol", "outcome"];
        let request_duration = histogram(
            "rtserve_request_duration_seconds",
            "Inference requests, end to end inside the server (decode to encode)",
            &request_labels,
            latency_buckets(),
        )?;
        let stage = ["model", "version"];
        let stages = StageMetrics {
            queue: histogram(
                "rtserve_queue_duration_seconds",
                "Per request: arrival at the scheduler to dispatch to an instance",
                &stage,
                latency_buckets(),
            )?,
            compute: histogram(
                "rtserve_compute_duration_seconds",
                "Per engine execution: time inside the engine (batch assembly excluded)",
                &stage,
                latency_buckets(),
            )?,
            batch_size: histogram(
                "rtserve_batch_size",
                "Rows per engine execution",
                &stage,
                batch_buckets(),
            )?,
            preprocess: histogram(
                "rtserve_preprocess_duration_seconds",
                "Per request with images: decode, resize and normalise (waiting for a worker included)",
                &stage,
                latency_buckets(),
            )?,
            postprocess: histogram(
                "rtserve_postprocess_duration_seconds",
                "Per request with post-processing: top-k classification and labels",
                &stage,
                latency_buckets(),
            )?,
        };
        let requests = IntCounterVec::new(
            Opts::new("rtserve_requests_total", "Inference requests by outcome"),
            &request_labels,
        )?;
        registry.register(Box::new(requests.clone()))?;
        let inflight = IntGaugeVec::new(
            Opts::new("rtserve_inflight_requests", "Inference requests being served now"),
            &["protocol"],
        )?;
        registry.register(Box::new(inflight.clone()))?;
        let auth_failures = IntCounterVec::new(
            Opts::new(
                "rtserve_auth_failures_total",
                "Requests refused for their bearer token: missing, invalid (401) or forbidden (403)",
            ),
            &["protocol", "reason"],
        )?;
        registry.register(Box::new(auth_failures.clone()))?;
        let model_loads = IntCounterVec::new(
            Opts::new(
                "rtserve_model_loads_total",
                "Model loads and reloads (start-up, repository API, poll) by outcome: success or failed",
            ),
            &["model", "outcome"],
        )?;
        registry.register(Box::new(model_loads.clone()))?;
        let tls_handshake_failures = IntCounterVec::new(
            Opts::new(
                "rtserve_tls_handshake_failures_total",
                "Connections closed because their TLS handshake failed: plaintext, an untrusted or \
                 missing client certificate, a client that distrusts the server's, a timeout",
            ),
            &["protocol"],
        )?;
        registry.register(Box::new(tls_handshake_failures.clone()))?;
        Ok(Metrics {
            registry,
            request_duration,
            requests,
            inflight,
            auth_failures,
            tls_handshake_failures,
            stages,
            model_loads,
        })
    }

    /// What the repository counts its loads in (`model`, `outcome`).
    pub fn model_loads(&self) -> IntCounterVec {
        self.model_loads.clone()
    }

    /// What each model's scheduler reports to.
    pub fn stages(&self) -> StageMetrics {
        self.stages.clone()
    }

    /// Adds families read at scrape time (the models, the cache and the process).
    pub fn register(&self, collector: Box<dyn Collector>) -> Result<(), prometheus::Error> {
        self.registry.register(collector)
    }

    /// Counts a request refused for its token (`reason`: missing, invalid, forbidden).
    pub fn auth_failure(&self, protocol: Protocol, reason: &str) {
        self.auth_failures.with_label_values(&[protocol.as_str(), reason]).inc();
    }

    /// Counts a connection whose TLS handshake failed.
    pub fn tls_handshake_failure(&self, protocol: Protocol) {
        self.tls_handshake_failures.with_label_values(&[protocol.as_str()]).inc();
    }

    /// Starts timing one inference request; see [`RequestTimer`].
    pub fn request(self: &Arc<Self>, protocol: Protocol) -> RequestTimer {
        self.inflight.with_label_values(&[protocol.as_str()]).inc();
        RequestTimer {
            metrics: self.clone(),
            protocol,
            start: Instant::now(),
            model: String::new(),
            version: String::new(),
            outcome: "cancelled",
        }
    }

    /// The metrics in the Prometheus text format.
    pub fn render(&self) -> Result<String, ServerError> {
        // `gather` leaves out families without samples (no model has an SLO, say), which the
        // text encoder would refuse.
        let families = self.registry.gather();
        let mut text = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&families, &mut text)
            .map_err(|e| ServerError::Internal(format!("encoding metrics: {e}")))?;
        String::from_utf8(text).map_err(|e| ServerError::Internal(format!("encoding metrics: {e}")))
    }
}

/// One model version's request figures as the metrics hold them now (cumulative since start):
/// what the status feed (`GET /v2/status`) reports, read only when it is asked for.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ModelFigures {
    /// Requests by outcome label, over both protocols.
    pub outcomes: BTreeMap<String, u64>,
    /// End-to-end latency of the successful requests, over both protocols.
    pub latency: HistogramFigures,
    /// Rows per engine execution.
    pub batch_size: HistogramFigures,
}

/// A histogram: sample count, sum and cumulative counts at its upper bounds.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct HistogramFigures {
    pub count: u64,
    pub sum: f64,
    pub bounds: Vec<f64>,
    pub cumulative: Vec<u64>,
}

impl HistogramFigures {
    fn add(&mut self, histogram: &prometheus::proto::Histogram) {
        let buckets = histogram.get_bucket();
        if self.bounds.is_empty() {
            self.bounds = buckets.iter().map(|b| b.upper_bound()).collect();
            self.cumulative = vec![0; buckets.len()];
        }
        for (total, bucket) in self.cumulative.iter_mut().zip(buckets) {
            *total += bucket.cumulative_count();
        }
        self.count += histogram.get_sample_count();
        self.sum += histogram.get_sample_sum();
    }
}

/// The value of label `name` of a collected sample.
fn label<'a>(metric: &'a prometheus::proto::Metric, name: &str) -> &'a str {
    metric.get_label().iter().find(|l| l.name() == name).map_or("", |l| l.value())
}

impl Metrics {
    /// The request figures of every model version that has any, by (model, version). Requests
    /// that named no loaded model (empty labels) are left out.
    pub fn model_figures(&self) -> BTreeMap<(String, String), ModelFigures> {
        let mut figures: BTreeMap<(String, String), ModelFigures> = BTreeMap::new();
        let key =
            |m: &prometheus::proto::Metric| (label(m, "model").to_string(), label(m, "version").to_string());
        let samples = |families: Vec<prometheus::proto::MetricFamily>| {
            families.into_iter().flat_map(|mut f| f.take_metric()).filter(|m| !label(m, "model").is_empty())
        };
        for metric in samples(self.requests.collect()) {
            let entry = figures.entry(key(&metric)).or_default();
            // Counters hold whole numbers of requests.
            *entry.outcomes.entry(label(&metric, "outcome").to_string()).or_default() +=
                metric.get_counter().get_value() as u64;
        }
        for metric in samples(self.request_duration.collect()) {
            if label(&metric, "outcome") == "success" {
                figures.entry(key(&metric)).or_default().latency.add(metric.get_histogram());
            }
        }
        for metric in samples(self.stages.batch_size.collect()) {
            figures.entry(key(&metric)).or_default().batch_size.add(metric.get_histogram());
        }
        figures
    }
}

/// Times one request from its arrival; recorded when dropped, so a request whose client went
/// away counts with the outcome `cancelled`. The model labels stay empty for a request that
/// names no loaded model (so clients cannot grow the label set).
pub struct RequestTimer {
    metrics: Arc<Metrics>,
    protocol: Protocol,
    start: Instant,
    model: String,
    version: String,
    outcome: &'static str,
}

impl RequestTimer {
    /// When the request arrived.
    pub fn started(&self) -> Instant {
        self.start
    }

    /// The model version serving the request.
    pub fn model(&mut self, name: &str, version: u64) {
        self.model = name.to_string();
        self.version = version.to_string();
    }

    /// The model and version labels (empty until [`RequestTimer::model`]).
    pub fn labels(&self) -> (&str, &str) {
        (&self.model, &self.version)
    }

    /// Records how the request ended.
    pub fn finish<T>(mut self, result: &Result<T, ServerError>) {
        self.outcome = outcome(result);
    }
}

impl Drop for RequestTimer {
    fn drop(&mut self) {
        let protocol = self.protocol.as_str();
        let labels = [self.model.as_str(), self.version.as_str(), protocol, self.outcome];
        let metrics = &self.metrics;
        metrics.request_duration.with_label_values(&labels).observe(self.start.elapsed().as_secs_f64());
        metrics.requests.with_label_values(&labels).inc();
        metrics.inflight.with_label_values(&[protocol]).dec();
    }
}
