//! Results as plain serializable data: what `--json` writes and what later consumers (plots,
//! matrices) read. Field names are stable; `docs/bench.md` documents them.

use serde::{Deserialize, Serialize};

use crate::outcome::ErrorCounts;
use crate::server_side::ServerStats;
use crate::stats::{LatencySummary, TailLatency};

/// The version of this layout, written as `schema` in the JSON file.
pub const SCHEMA_VERSION: u32 = 1;

/// Closed loop (fixed concurrency) or open loop (fixed arrival rate).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LoadMode {
    Closed,
    Open,
}

/// One step of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepResult {
    pub mode: LoadMode,
    /// Closed loop: requests kept in flight.
    pub concurrency: Option<usize>,
    /// Open loop: the configured arrival rate, requests/s.
    pub offered_rps: Option<f64>,
    /// `http`, `http-json`, `grpc` or `grpc-stream`.
    pub protocol: String,
    /// Rows per request (the batch dimension sent).
    pub batch: usize,
    pub warmup_s: f64,
    pub duration_s: f64,
    /// Requests sent (closed loop) or scheduled (open loop) inside the window, dropped ones
    /// included: `successes` + the sum of `errors`.
    pub requests: u64,
    pub successes: u64,
    /// Successful requests per second of window.
    pub throughput_rps: f64,
    /// `throughput_rps` × `batch`: rows inferred per second.
    pub inferences_per_s: f64,
    /// Latency of successful requests; `null` when none succeeded.
    pub latency_us: Option<LatencySummary>,
    /// Latency of 429 / RESOURCE_EXHAUSTED answers, from their send (how fast the server
    /// refuses); `null` when there were none.
    pub rejected_latency_us: Option<TailLatency>,
    /// Open loop: how late requests left after their scheduled time (the client's own delay,
    /// included in `latency_us`); `null` in a closed loop.
    pub send_lag_us: Option<TailLatency>,
    pub errors: ErrorCounts,
    /// The first failure of the step, `kind: message`.
    pub error_sample: Option<String>,
    /// From the server's `/metrics` over the window; `null` when not read.
    pub server: Option<ServerStats>,
    /// Peak resident memory of `--server-pid` during the step.
    pub server_peak_rss_bytes: Option<u64>,
}

impl StepResult {
    /// `c=4` or `r=500/s`.
    pub fn label(&self) -> String {
        match (self.mode, self.concurrency, self.offered_rps) {
            (LoadMode::Closed, Some(c), _) => format!("c={c}"),
            (LoadMode::Open, _, Some(r)) => format!("r={r}/s"),
            (LoadMode::Closed, ..) => "closed".into(),
            (LoadMode::Open, ..) => "open".into(),
        }
    }
}

/// A whole run: what was measured and its steps in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchReport {
    pub schema: u32,
    pub url: String,
    pub model: String,
    pub model_version: Option<String>,
    pub protocol: String,
    /// Input data: `random` (with the pool size and seed) or the files read.
    pub inputs: String,
    /// Distinct requests cycled through.
    pub distinct_requests: usize,
    pub steps: Vec<StepResult>,
}
