//! Triton's model statistics (`GET /v2/models[/{m}[/versions/{v}]]/stats`, gRPC
//! ModelStatistics), from a model's request counters and its scheduler.
//!
//! `queue` sums each request's wait for dispatch; `compute_infer` sums engine time per
//! execution (batch assembly and splitting, Triton's `compute_input`/`compute_output`, are not
//! timed apart: they are zero); `cache_miss` counts lookups that ran the model, without time.

use std::sync::Arc;

use rtserve_core::scheduler::DurationTotal;
use serde_json::{json, Value};

use crate::model::LoadedModel;
use crate::proto;

fn nanos(total: &DurationTotal) -> u64 {
    u64::try_from(total.sum.as_nanos()).unwrap_or(u64::MAX)
}

fn duration_proto(total: &DurationTotal) -> Option<proto::StatisticDuration> {
    Some(proto::StatisticDuration { count: total.count, ns: nanos(total) })
}

/// The gRPC ModelStatistics answer for `models`.
pub fn stats_proto(models: &[Arc<LoadedModel>]) -> proto::ModelStatisticsResponse {
    let zero = DurationTotal::default();
    let model_stats = models
        .iter()
        .map(|model| {
            let requests = model.request_stats();
            let scheduler = model.scheduler.stats();
            let executions = scheduler.executions();
            let untimed = |count| duration_proto(&DurationTotal { count, ..zero });
            proto::ModelStatistics {
                name: model.config.name.clone(),
                version: model.version.to_string(),
                last_inference: requests.last_inference_ms,
                inference_count: scheduler.rows(),
                execution_count: executions.count,
                inference_stats: Some(proto::InferStatistics {
                    success: duration_proto(&requests.success),
                    fail: duration_proto(&requests.fail),
                    queue: duration_proto(&scheduler.queue_wait),
                    compute_input: untimed(executions.count),
                    compute_infer: duration_proto(&executions),
                    compute_output: untimed(executions.count),
                    cache_hit: duration_proto(&requests.cache_hit),
                    cache_miss: duration_proto(&requests.cache_miss),
                }),
                batch_stats: scheduler
                    .batches
                    .iter()
                    .map(|(&rows, total)| proto::InferBatchStatistics {
                        batch_size: rows as u64,
                        compute_input: untimed(total.count),
                        compute_infer: duration_proto(total),
                        compute_output: untimed(total.count),
                    })
                    .collect(),
                ..Default::default()
            }
        })
        .collect();
    proto::ModelStatisticsResponse { model_stats }
}

/// `{"count", "ns"}`; an absent duration is zero.
fn duration_json(duration: Option<&proto::StatisticDuration>) -> Value {
    let d = duration.copied().unwrap_or_default();
    json!({ "count": d.count, "ns": d.ns })
}

/// The JSON body of the HTTP statistics endpoint: the gRPC answer in Triton's JSON spelling.
pub fn stats_json(models: &[Arc<LoadedModel>]) -> Value {
    let model_stats: Vec<Value> = stats_proto(models)
        .model_stats
        .iter()
        .map(|m| {
            let s = m.inference_stats.unwrap_or_default();
            let batch_stats: Vec<Value> = m
                .batch_stats
                .iter()
                .map(|b| {
                    json!({
                        "batch_size": b.batch_size,
                        "compute_input": duration_json(b.compute_input.as_ref()),
                        "compute_infer": duration_json(b.compute_infer.as_ref()),
                        "compute_output": duration_json(b.compute_output.as_ref()),
                    })
                })
                .collect();
            json!({
                "name": m.name,
                "version": m.version,
                "last_inference": m.last_inference,
                "inference_count": m.inference_count,
                "execution_count": m.execution_count,
                "inference_stats": {
                    "success": duration_json(s.success.as_ref()),
                    "fail": duration_json(s.fail.as_ref()),
                    "queue": duration_json(s.queue.as_ref()),
                    "compute_input": duration_json(s.compute_input.as_ref()),
                    "compute_infer": duration_json(s.compute_infer.as_ref()),
                    "compute_output": duration_json(s.compute_output.as_ref()),
                    "cache_hit": duration_json(s.cache_hit.as_ref()),
                    "cache_miss": duration_json(s.cache_miss.as_ref()),
                },
                "batch_stats": batch_stats,
            })
        })
        .collect();
    json!({ "model_stats": model_stats })
}
