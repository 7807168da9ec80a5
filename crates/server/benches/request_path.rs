//! Guards the CPU that each request costs on its way through the server, apart from the engine:
//! decoding the body (HTTP JSON, HTTP binary extension, gRPC raw contents), the cache key,
//! assembling a batch of 16 requests and splitting its outputs, and encoding the reply.
//!
//! The tensors are those of the example MLP (784 FP32 in, 10 FP32 out, one row per request).
//!
//! ```sh
//! taskset -c 0 cargo bench -p rtserve-server --no-default-features --bench request_path
//! ```
//!
//! Figures: `docs/benchmarks.md` (issue 16, item 8).

use std::hint::black_box;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use rtserve_core::concat_rows;
use rtserve_core::scheduler::split_rows;
use rtserve_core::wire::Element;
use rtserve_core::{cache_key, DataType, InferResponse, NamedTensor, Tensor, TensorData};
use rtserve_server::grpc::codec as grpc_codec;
use rtserve_server::http::json;
use rtserve_server::proto::{model_infer_request::InferInputTensor, ModelInferRequest};
use serde_json::json;

const FEATURES: usize = 784;
const CLASSES: usize = 10;
const BATCH: usize = 16;

/// Seeded values in [0, 1), different per request.
fn values(n: usize, seed: usize) -> Vec<f32> {
    (0..n).map(|i| ((i * 7919 + seed * 104_729) % 1000) as f32 / 1000.0).collect()
}

fn tensor(name: &str, rows: usize, width: usize, seed: usize) -> NamedTensor {
    let data = f32::encode(&values(rows * width, seed));
    let tensor = Tensor::new(DataType::Fp32, vec![rows, width], TensorData::Raw(data.into())).expect("sized");
    NamedTensor { name: name.to_string(), tensor }
}

fn json_body() -> Bytes {
    let body = json!({
        "inputs": [{ "name": "input", "datatype": "FP32", "shape": [1, FEATURES], "data": values(FEATURES, 1) }],
    });
    body.to_string().into()
}

/// A binary-extension body and its header length, asking for binary outputs.
fn binary_body() -> (Bytes, usize) {
    let header = json!({
        "inputs": [{
            "name": "input", "datatype": "FP32", "shape": [1, FEATURES],
            "parameters": { "binary_data_size": FEATURES * 4 },
        }],
        "parameters": { "binary_data_output": true },
    })
    .to_string();
    let mut body = header.clone().into_bytes();
    body.extend(f32::encode(&values(FEATURES, 1)));
    (body.into(), header.len())
}

fn grpc_request() -> ModelInferRequest {
    ModelInferRequest {
        model_name: "mlp".into(),
        inputs: vec![InferInputTensor {
            name: "input".into(),
            datatype: "FP32".into(),
            shape: vec![1, FEATURES as i64],
            ..Default::default()
        }],
        raw_input_contents: vec![f32::encode(&values(FEATURES, 1)).into()],
        ..Default::default()
    }
}

fn reply() -> InferResponse {
    InferResponse {
        model_name: "mlp".into(),
        model_version: "1".into(),
        id: String::new(),
        outputs: vec![tensor("output", 1, CLASSES, 2)],
    }
}

fn decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode");
    let body = json_body();
    group.bench_function("http_json", |b| {
        b.iter(|| json::decode_request(black_box(body.clone()), None).expect("valid"))
    });
    let (body, header_length) = binary_body();
    group.bench_function("http_binary", |b| {
        b.iter(|| json::decode_request(black_box(body.clone()), Some(header_length)).expect("valid"))
    });
    let request = grpc_request();
    group.bench_function("grpc_raw", |b| {
        b.iter_batched(
            || request.clone(),
            |request| grpc_codec::decode_request(black_box(request)).expect("valid"),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn key(c: &mut Criterion) {
    let inputs = vec![tensor("input", 1, FEATURES, 1)];
    let outputs = vec!["output".to_string()];
    c.bench_function("cache_key", |b| b.iter(|| cache_key("mlp", "1", black_box(&inputs), &outputs, &[])));
}

fn batch(c: &mut Criterion) {
    let mut group = c.benchmark_group("batch_of_16");
    let requests: Vec<Vec<NamedTensor>> = (0..BATCH).map(|i| vec![tensor("input", 1, FEATURES, i)]).collect();
    let parts: Vec<&[NamedTensor]> = requests.iter().map(Vec::as_slice).collect();
    group.bench_function("assemble", |b| b.iter(|| concat_rows(black_box(&parts)).expect("same shapes")));
    let outputs = vec![tensor("output", BATCH, CLASSES, 3)];
    let rows = vec![1; BATCH];
    group
        .bench_function("split", |b| b.iter(|| split_rows(black_box(&outputs), &rows).expect("rows add up")));
    group.finish();
}

fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode");
    let response = reply();
    let (_, as_json) = json::decode_request(json_body(), None).expect("valid");
    group.bench_function("http_json", |b| {
        b.iter(|| json::encode_response(black_box(&response), &as_json).expect("encodes"))
    });
    let (body, header_length) = binary_body();
    let (_, as_binary) = json::decode_request(body, Some(header_length)).expect("valid");
    group.bench_function("http_binary", |b| {
        b.iter(|| json::encode_response(black_box(&response), &as_binary).expect("encodes"))
    });
    group.bench_function("grpc_raw", |b| {
        b.iter_batched(
            || response.clone(),
            |response| grpc_codec::encode_response(black_box(response)).expect("encodes"),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, decode, key, batch, encode);
criterion_main!(benches);
