//! Dynamic batching through the real server: concurrent requests are run as one batch and
//! answered with the same outputs as unbatched requests; the queue policy's refusals (full
//! queue, deadline, priority, rows) reach clients as 429 / RESOURCE_EXHAUSTED or 400.

use std::time::{Duration, Instant};

use futures::future::join_all;
use rtserve_server::proto::ModelInferRequest;
use serde_json::json;
use tonic::Code;

use crate::client::{
    assert_grpc_error, binary_body, grpc, grpc_request, http_infer_binary, infer_path, json_body,
    model_stats_when, post_binary, post_json, Contents,
};
use crate::server::{Engine, Server};
use crate::tensors::{mlp_rows, Tensor, Values, ATOL, RTOL};
use crate::{add_model, mlp_config, start_server};

crate::engine_tests!(batched_outputs_match_unbatched);

/// Rows the batching test sends at once: a full batch.
const ROWS: usize = 8;

fn fp32(tensors: &[Tensor]) -> Vec<f32> {
    match &tensors[0].values {
        Values::Fp32(v) => v.clone(),
        other => panic!("expected FP32 outputs, got {other:?}"),
    }
}

/// The same rows, one request each, through a model without batching and, all at once,
/// through a model that batches: the engine runs fewer, larger batches, and every caller gets
/// its own row's answer. Kernels may differ by batch size, so FP32 outputs agree within the
/// reference tolerance rather than bit for bit.
async fn batched_outputs_match_unbatched(engine: Engine) {
    let repository = tempfile::tempdir().expect("temporary folder");
    add_model(repository.path(), "mlp", "plain", &mlp_config("plain", ""));
    let batching = "dynamic_batching { max_queue_delay_microseconds: 300000 preferred_batch_size: [ 8 ] }";
    add_model(repository.path(), "mlp", "batched", &mlp_config("batched", batching));
    let Some(server) = start_server(repository.path(), engine, &[]) else { return };
    let http = reqwest::Client::new();

    let rows = mlp_rows(ROWS);
    let mut unbatched = Vec::new();
    for inputs in &rows {
        unbatched.push(fp32(&http_infer_binary(&http, &server, "plain", inputs).await));
    }
    let batched: Vec<Vec<f32>> =
        join_all(rows.iter().map(|inputs| http_infer_binary(&http, &server, "batched", inputs)))
            .await
            .iter()
            .map(|outputs| fp32(outputs))
            .collect();
    for (row, (alone, together)) in unbatched.iter().zip(&batched).enumerate() {
        assert_eq!(alone.len(), together.len(), "row {row}: output length");
        for (i, (&a, &b)) in alone.iter().zip(together).enumerate() {
            assert!((a - b).abs() <= ATOL + RTOL * a.abs(), "row {row}, element {i}: alone {a}, batched {b}");
        }
    }

    let rows_counted = |n: u64| move |stats: &serde_json::Value| stats["inference_count"].as_u64() == Some(n);
    let plain = model_stats_when(&http, &server, "plain", rows_counted(ROWS as u64)).await;
    assert_eq!(plain["execution_count"].as_u64(), Some(ROWS as u64), "one call per request: {plain}");
    let stats = model_stats_when(&http, &server, "batched", rows_counted(ROWS as u64)).await;
    let executions = stats["execution_count"].as_u64().expect("execution_count");
    assert!(executions < ROWS as u64, "8 concurrent rows should share engine calls: {stats}");
    server.stop().await;
}

/// A batching model whose queue holds one request and waits long for a batch to fill.
const ONE_SLOT: &str = "dynamic_batching { max_queue_delay_microseconds: 1500000 \
                        default_queue_policy { max_queue_size: 1 } }";
/// A batching model with two priority levels and no queue policy (request timeouts apply).
const PRIORITIES: &str = "dynamic_batching { max_queue_delay_microseconds: 100 \
                          priority_levels: 2 default_priority_level: 2 }";

fn one_row_grpc(model: &str) -> ModelInferRequest {
    grpc_request(model, &mlp_rows(1)[0], Contents::Raw)
}

#[tokio::test]
async fn refusals_are_clear_and_the_server_keeps_serving() {
    let repository = tempfile::tempdir().expect("temporary folder");
    add_model(repository.path(), "mlp", "one_slot", &mlp_config("one_slot", ONE_SLOT));
    add_model(repository.path(), "mlp", "priorities", &mlp_config("priorities", PRIORITIES));
    let Some(server) = start_server(repository.path(), Engine::Tract, &[]) else { return };
    full_queue_is_429_with_retry_after(&server).await;
    request_options_are_checked(&server).await;
    server.stop().await;
}

async fn full_queue_is_429_with_retry_after(server: &Server) {
    let http = reqwest::Client::new();
    let inputs = mlp_rows(1).remove(0);
    // The first request waits in the queue (up to 1.5 s) for a batch to fill; it fills the queue.
    let first = tokio::spawn({
        let (http, url) = (http.clone(), server.url(&infer_path("one_slot")));
        let body = json_body(&inputs);
        async move { http.post(url).json(&body).send().await.map(|r| r.status().as_u16()) }
    });
    let metrics = |http: reqwest::Client| async move {
        let text =
            http.get(server.url("/metrics")).send().await.expect("metrics").text().await.expect("text");
        crate::client::metric_value(&text, "rtserve_queue_depth", &[("model", "one_slot")])
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while metrics(http.clone()).await != Some(1.0) {
        assert!(Instant::now() < deadline, "the blocked request never showed in rtserve_queue_depth");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (body, header) = binary_body(&inputs, json!({}));
    let refused = post_binary(&http, server, &infer_path("one_slot"), body, header).await;
    refused.assert_error(429, &["one_slot", "queue"]);
    let retry_after = refused.headers.get("retry-after").expect("Retry-After on a 429");
    assert!(retry_after.to_str().expect("ascii").parse::<u64>().expect("whole seconds") >= 1);
    let mut grpc = grpc(server).await;
    assert_grpc_error(grpc.model_infer(one_row_grpc("one_slot")).await, Code::ResourceExhausted, &["queue"]);
    assert_eq!(first.await.expect("join").expect("first request"), 200, "the queued request is served");
    let text = http.get(server.url("/metrics")).send().await.expect("metrics").text().await.expect("text");
    let refused = [("model", "one_slot"), ("outcome", "rejected_overload")];
    let by_protocol = |protocol| {
        let labels = [refused[0], refused[1], ("protocol", protocol)];
        crate::client::metric_value(&text, "rtserve_requests_total", &labels)
    };
    assert_eq!((by_protocol("http"), by_protocol("grpc")), (Some(1.0), Some(1.0)), "{text}");
}

async fn request_options_are_checked(server: &Server) {
    let http = reqwest::Client::new();
    let inputs = mlp_rows(1).remove(0);
    let path = infer_path("priorities");
    let with = |parameters: serde_json::Value| {
        let mut body = json_body(&inputs);
        body["parameters"] = parameters;
        body
    };
    // Priority 1 is the highest of two levels; 3 does not exist.
    assert_eq!(post_json(&http, server, &path, &with(json!({ "priority": 1 }))).await.status, 200);
    post_json(&http, server, &path, &with(json!({ "priority": 3 }))).await.assert_error(400, &["priority"]);
    // A timeout of 1 µs cannot be met: refused (or expired) as a deadline, never served late.
    let late = post_json(&http, server, &path, &with(json!({ "timeout": 1 }))).await;
    late.assert_error(429, &["priorities"]);
    assert!(late.headers.contains_key("retry-after"));
    // Nine rows exceed max_batch_size 8.
    let rows = Tensor {
        name: "input".into(),
        datatype: "FP32".into(),
        shape: vec![9, 784],
        values: Values::Fp32(vec![0.5; 9 * 784]),
    };
    post_json(&http, server, &path, &json_body(&[rows])).await.assert_error(400, &["9"]);
    // Still serving.
    let outputs = http_infer_binary(&http, server, "priorities", &inputs).await;
    assert_eq!(outputs[0].shape, vec![1, 10]);
}
