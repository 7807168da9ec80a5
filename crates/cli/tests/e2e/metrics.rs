//! Metrics and statistics through the real server: `/metrics` in the Prometheus text format
//! (also on `--metrics-port`), Triton's statistics over HTTP and gRPC.

use rtserve_server::proto::infer_parameter::ParameterChoice;
use rtserve_server::proto::ModelStatisticsRequest;
use serde_json::json;
use tonic::Code;

use crate::client::{
    assert_grpc_error, get, grpc, http_infer_json, metric_value, model_stats_when, post_json,
};
use crate::server::Engine;
use crate::tensors::{case, MODELS};
use crate::{shared_server, start_server};

/// Families that exist as soon as the server serves (per model, or global).
const ALWAYS: [&str; 12] = [
    "rtserve_model_loaded",
    "rtserve_queue_depth",
    "rtserve_instances_busy",
    "rtserve_instances",
    "rtserve_inferences_total",
    "rtserve_executions_total",
    "rtserve_rejections_total",
    "rtserve_cache_hits_total",
    "rtserve_cache_misses_total",
    "rtserve_cache_lookup_duration_seconds",
    "rtserve_cache_entries",
    "rtserve_process_resident_memory_bytes",
];

#[tokio::test]
async fn metrics_count_requests_by_model_and_outcome() {
    let Some(server) = shared_server(Engine::Tract) else { return };
    let http = reqwest::Client::new();
    let cnn = case("cnn");
    http_infer_json(&http, server, "cnn", &cnn.inputs).await;
    let ran = |stats: &serde_json::Value| stats["inference_count"].as_u64().is_some_and(|n| n >= 2);
    model_stats_when(&http, server, "cnn", ran).await;
    let unknown = post_json(&http, server, "/v2/models/no_such_model/infer", &json!({ "inputs": [] })).await;
    assert_eq!(unknown.status, 404);

    let reply = get(&http, server, "/metrics").await;
    assert_eq!(reply.status, 200);
    let content_type = reply.headers.get("content-type").expect("content type").to_str().expect("ascii");
    assert!(content_type.starts_with("text/plain; version=0.0.4"), "{content_type}");
    let text = String::from_utf8(reply.body.to_vec()).expect("UTF-8");
    for family in ALWAYS {
        assert!(text.contains(&format!("# TYPE {family} ")), "no family {family} in:\n{text}");
    }
    for model in MODELS {
        assert_eq!(metric_value(&text, "rtserve_model_loaded", &[("model", model)]), Some(1.0), "{model}");
    }
    let ok = [("model", "cnn"), ("protocol", "http"), ("outcome", "success")];
    assert!(metric_value(&text, "rtserve_requests_total", &ok).is_some_and(|n| n >= 1.0));
    assert!(metric_value(&text, "rtserve_request_duration_seconds_count", &ok).is_some_and(|n| n >= 1.0));
    let invalid = [("model", ""), ("outcome", "invalid")];
    assert!(metric_value(&text, "rtserve_requests_total", &invalid).is_some_and(|n| n >= 1.0));
    assert_eq!(metric_value(&text, "rtserve_model_slo_seconds", &[("model", "cnn")]), Some(0.05));
    assert!(metric_value(&text, "rtserve_batch_size_count", &[("model", "cnn")]).is_some_and(|n| n >= 1.0));
    assert!(metric_value(&text, "rtserve_inferences_total", &[("model", "cnn")]).is_some_and(|n| n >= 2.0));
}

#[tokio::test]
async fn statistics_over_http_and_grpc() {
    let Some(server) = shared_server(Engine::Tract) else { return };
    let http = reqwest::Client::new();
    let mlp = case("mlp");
    http_infer_json(&http, server, "mlp", &mlp.inputs).await;
    let ran = |stats: &serde_json::Value| stats["inference_count"].as_u64().is_some_and(|n| n >= 2);
    model_stats_when(&http, server, "mlp", ran).await;

    let all = get(&http, server, "/v2/models/stats").await.json();
    let names: Vec<&str> =
        all["model_stats"].as_array().expect("list").iter().filter_map(|m| m["name"].as_str()).collect();
    for model in MODELS {
        assert!(names.contains(&model), "{model} missing from {names:?}");
    }
    let one = get(&http, server, "/v2/models/mlp/versions/1/stats").await.json();
    let stats = &one["model_stats"][0];
    assert_eq!(stats["name"], "mlp");
    assert!(stats["inference_count"].as_u64().is_some_and(|n| n >= 2), "{stats}");
    assert!(stats["inference_stats"]["success"]["count"].as_u64().is_some_and(|n| n >= 1), "{stats}");
    assert!(stats["inference_stats"]["compute_infer"]["ns"].as_u64().is_some_and(|n| n > 0), "{stats}");
    get(&http, server, "/v2/models/no_such_model/stats").await.assert_error(404, &["no_such_model"]);

    let mut grpc = grpc(server).await;
    let request = ModelStatisticsRequest { name: "mlp".into(), version: String::new() };
    let reply = grpc.model_statistics(request).await.expect("ModelStatistics").into_inner();
    assert_eq!(reply.model_stats.len(), 1);
    assert!(reply.model_stats[0].inference_count >= 2);
    let unknown = ModelStatisticsRequest { name: "no_such_model".into(), version: String::new() };
    assert_grpc_error(grpc.model_statistics(unknown).await, Code::NotFound, &["no_such_model"]);
}

#[tokio::test]
async fn metrics_port_serves_metrics_alone() {
    let repository = crate::temp_repository(&["mlp"]);
    let Some(server) = start_server(repository.path(), Engine::Tract, &["--metrics-port", "0"]) else {
        return;
    };
    let log = server.log();
    let addr = log
        .split("metrics listening on ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no metrics port in the log:\n{log}"));
    let http = reqwest::Client::new();
    let scrape = http.get(format!("http://{addr}/metrics")).send().await.expect("scrape");
    assert_eq!(scrape.status(), 200);
    let text = scrape.text().await.expect("text");
    assert!(text.contains("rtserve_model_loaded{model=\"mlp\",version=\"1\"} 1"));
    assert_gpu_metrics_follow_nvml(&log, &text);
    let other = http.get(format!("http://{addr}/v2/models/mlp")).send().await.expect("request");
    assert_eq!(other.status(), 404, "only /metrics on the metrics port");
    server.stop().await;
}

#[tokio::test]
async fn replies_carry_their_stage_times() {
    let Some(server) = shared_server(Engine::Tract) else { return };
    let http = reqwest::Client::new();
    let mlp = case("mlp");
    let reply =
        post_json(&http, server, "/v2/models/mlp/infer", &crate::client::json_body(&mlp.inputs)).await;
    assert_eq!(reply.status, 200);
    let micros = |name: &str| -> u64 {
        let value = reply.headers.get(name).unwrap_or_else(|| panic!("no {name} header"));
        value.to_str().expect("ascii").parse().expect("whole microseconds")
    };
    assert!(micros("x-rtserve-compute-us") > 0, "the engine took some time");
    micros("x-rtserve-queue-us");
    assert!(reply.headers.get("x-rtserve-cache").is_none(), "mlp does not cache");

    let mut grpc = grpc(server).await;
    let request = crate::client::grpc_request("mlp", &mlp.inputs, crate::client::Contents::Raw);
    let response = grpc.model_infer(request).await.expect("ModelInfer").into_inner();
    for name in ["rtserve_queue_us", "rtserve_compute_us"] {
        let parameter = response.parameters.get(name).unwrap_or_else(|| panic!("no {name} parameter"));
        assert!(
            matches!(parameter.parameter_choice, Some(ParameterChoice::Uint64Param(_))),
            "{name}: {parameter:?}"
        );
    }
}

/// Triton's GPU families are there exactly where NVML loaded, which the server logs at start:
/// on a host without the NVIDIA driver it starts all the same, with no `nv_` series.
fn assert_gpu_metrics_follow_nvml(log: &str, text: &str) {
    let gpu_lines: Vec<&str> =
        text.lines().filter(|l| l.contains("nv_gpu_") || l.contains("nv_energy")).collect();
    if log.contains("no GPU metrics: NVML did not load") {
        assert!(gpu_lines.is_empty(), "GPU series without NVML: {gpu_lines:?}");
        return;
    }
    let gpus = log
        .split("GPU metrics (nv_gpu_*) from NVML: ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or_else(|| panic!("the log says neither that NVML loaded nor why not:\n{log}"));
    let totals =
        gpu_lines.iter().filter(|l| l.starts_with("nv_gpu_memory_total_bytes{gpu_uuid=\"GPU-")).count();
    assert_eq!(totals, gpus, "one memory total per GPU: {gpu_lines:?}");
}
