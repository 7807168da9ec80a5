//! `GET /v2/status`: the feed of the status page (`GET /`). The figures are the ones the
//! metrics already keep, cumulative since start, read only when the feed is asked for; the page
//! keeps a minute of these snapshots and works out rates and percentiles from their differences
//! (docs/status.md). Nothing runs for it while nobody asks.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use super::Shared;
use crate::metrics::{HistogramFigures, ModelFigures};
use crate::state::{SERVER_NAME, SERVER_VERSION};

/// The status feed.
#[derive(Debug, Serialize, ToSchema)]
pub struct Status {
    pub server: ServerStatus,
    /// Every model on disk or known to the server: one row per loaded version, one row for a
    /// model with none.
    pub models: Vec<ModelStatus>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ServerStatus {
    pub name: &'static str,
    pub version: &'static str,
    /// As `GET /v2/health/ready` says.
    pub ready: bool,
    /// When this snapshot was taken, in milliseconds since the Unix epoch.
    pub time_ms: u64,
}

/// One model version (or a model with no loaded version).
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelStatus {
    pub name: String,
    /// Empty for a model with no loaded version.
    pub version: String,
    /// `READY`, `LOADING` or `UNAVAILABLE`.
    pub state: &'static str,
    /// Why the model does not serve; empty when it does.
    pub reason: String,
    /// The engine running it (`tract`, `onnxruntime`); empty when not loaded.
    pub engine: &'static str,
    /// The latency objective, when the model declares one.
    pub slo_seconds: Option<f64>,
    /// Requests waiting in the scheduler now.
    pub queue_depth: u64,
    pub instances: u64,
    /// Instances running a batch now.
    pub instances_busy: u64,
    /// Requests by outcome, cumulative: `success`, `invalid` (400, 404, 413),
    /// `rejected_overload` and `rejected_deadline` (429), `error` (5xx), `cancelled` (the
    /// client went away). As `rtserve_requests_total`, both protocols summed.
    pub requests: BTreeMap<String, u64>,
    /// End-to-end latency of successful requests, in seconds, cumulative; as
    /// `rtserve_request_duration_seconds{outcome="success"}`, both protocols summed.
    pub latency: Histogram,
    /// Rows per engine execution, cumulative; as `rtserve_batch_size`.
    pub batch_size: Histogram,
    /// Requests answered from the prediction cache (local, Redis or coalesced), cumulative.
    pub cache_hits: u64,
    /// Cache lookups that ran the model, cumulative.
    pub cache_misses: u64,
}

/// A cumulative histogram, as Prometheus keeps it.
#[derive(Debug, Default, Serialize, ToSchema)]
pub struct Histogram {
    pub count: u64,
    pub sum: f64,
    /// Upper bounds of the buckets (the last, +Inf, implied by `count`).
    pub bounds: Vec<f64>,
    /// Samples at or below each bound.
    pub cumulative: Vec<u64>,
}

impl From<HistogramFigures> for Histogram {
    fn from(figures: HistogramFigures) -> Self {
        Histogram {
            count: figures.count,
            sum: figures.sum,
            bounds: figures.bounds,
            cumulative: figures.cumulative,
        }
    }
}

/// The figures the status page charts: every model's state, engine and cumulative counters,
/// histograms and gauges, read now.
#[utoipa::path(get, path = "/v2/status", tag = "statistics",
    responses((status = 200, description = "A snapshot of every model's figures", body = Status)))]
pub async fn status(State(state): Shared) -> Json<Status> {
    let mut figures = state.metrics.model_figures();
    let models = state
        .repository
        .index(false)
        .into_iter()
        .map(|row| {
            let loaded =
                state.repository.get(&row.name, Some(&row.version)).ok().filter(|_| !row.version.is_empty());
            let ModelFigures { outcomes, latency, batch_size } =
                figures.remove(&(row.name.clone(), row.version.clone())).unwrap_or_default();
            let mut status = ModelStatus {
                name: row.name,
                version: row.version,
                state: row.state.as_str(),
                reason: row.reason,
                engine: "",
                slo_seconds: None,
                queue_depth: 0,
                instances: 0,
                instances_busy: 0,
                requests: outcomes,
                latency: latency.into(),
                batch_size: batch_size.into(),
                cache_hits: 0,
                cache_misses: 0,
            };
            if let Some(model) = loaded {
                let scheduler = model.scheduler.stats();
                let requests = model.request_stats();
                status.engine = model.engine;
                status.slo_seconds = model.scheduler.policy().slo.map(|slo| slo.as_secs_f64());
                status.queue_depth = scheduler.queue_depth as u64;
                status.instances = scheduler.instances as u64;
                status.instances_busy = scheduler.instances_busy as u64;
                status.cache_hits = requests.cache_hit.count;
                status.cache_misses = requests.cache_miss.count;
            }
            status
        })
        .collect();
    let time_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    Json(Status {
        server: ServerStatus { name: SERVER_NAME, version: SERVER_VERSION, ready: state.is_ready(), time_ms },
        models,
    })
}
