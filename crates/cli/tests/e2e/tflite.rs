//! A TFLite model served over HTTP and gRPC: found without a config (`model.tflite`) and with
//! Triton's `backend: "tflite"`, answers checked against Google's interpreter (LiteRT) on the
//! same file and input (`examples/edge/refs`, written by `scripts/edge/tflite_zoo.py refs`):
//! float, full INT8, and INT8 with a run-time batch (eight examples in one request; it does not
//! convert to ONNX, so it runs on tract under either `--engine`), and under `--engine
//! onnxruntime` a small mobile classifier tract cannot read. A TFLite file neither engine can
//! run fails to load with a reason and leaves the rest serving.

use std::path::{Path, PathBuf};

use crate::client::{
    get, grpc, grpc_infer, http_infer_binary, http_infer_json, infer_path, json_body, post_json, Contents,
};
use crate::server::Engine;
use crate::tensors::{assert_matches_reference, case_from_file};
use crate::{engine_tests, start_server};

fn edge(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/edge").join(file)
}

fn add_tflite(repository: &Path, name: &str, file: &str, config: Option<&str>) {
    let version = repository.join(name).join("1");
    std::fs::create_dir_all(&version).expect("version folder");
    std::fs::copy(edge(file), version.join("model.tflite")).expect("copy model");
    if let Some(config) = config {
        std::fs::write(repository.join(name).join("config.pbtxt"), config).expect("write config");
    }
}

engine_tests!(serves_tflite);

async fn serves_tflite(engine: Engine) {
    let repository = tempfile::tempdir().expect("temporary folder");
    add_tflite(repository.path(), "fashion", "fashion_cnn_float.tflite", None);
    add_tflite(
        repository.path(),
        "fashion_cfg",
        "fashion_cnn_float.tflite",
        Some("name: \"fashion_cfg\"\nbackend: \"tflite\"\n"),
    );
    add_tflite(repository.path(), "fashion_int8", "fashion_cnn_int8.tflite", None);
    add_tflite(repository.path(), "fashion_batch", "fashion_cnn_int8_dynamic_batch.tflite", None);
    add_tflite(repository.path(), "mobile_int8", "mobile_block_int8.tflite", None);
    add_tflite(repository.path(), "unreadable", "cumsum.tflite", None);
    let Some(server) = start_server(repository.path(), engine, &[]) else { return };
    let http = reqwest::Client::new();
    let mut grpc = grpc(&server).await;

    let mut cases = vec![
        ("fashion", "fashion_cnn_float"),
        ("fashion_cfg", "fashion_cnn_float"),
        ("fashion_int8", "fashion_cnn_int8"),
        ("fashion_batch", "fashion_cnn_int8_dynamic_batch"),
    ];
    if engine == Engine::OnnxRuntime {
        cases.push(("mobile_int8", "mobile_block_int8"));
    } else {
        // tract's TFLite reader does not read a depth multiplier of 2.
        let reply = get(&http, &server, "/v2/models/mobile_int8/ready").await;
        assert_ne!(reply.status.as_u16(), 200, "the model must not be ready on tract");
    }
    for (model, reference) in cases {
        let mut case = case_from_file(model, &edge(&format!("refs/{reference}.expected.json")));
        case.model = model.to_string();
        let metadata = get(&http, &server, &format!("/v2/models/{model}")).await.json();
        assert_eq!(metadata["platform"], "tensorflowlite", "{metadata}");
        assert_eq!(metadata["inputs"][0]["name"], "serving_default_image:0", "{metadata}");
        let got = http_infer_json(&http, &server, model, &case.inputs).await;
        assert_matches_reference(&case, &got, "HTTP JSON");
        let got = http_infer_binary(&http, &server, model, &case.inputs).await;
        assert_matches_reference(&case, &got, "HTTP binary");
        let got = grpc_infer(&mut grpc, model, &case.inputs, Contents::Raw).await;
        assert_matches_reference(&case, &got, "gRPC");
    }

    // The run-time batch file batches: eight examples in one request above, and its config says so.
    let config = get(&http, &server, "/v2/models/fashion_batch/config").await.json();
    assert!(config["max_batch_size"].as_u64().unwrap_or_default() >= 8, "{config}");
    // An operator tract-tflite lacks: not ready, with the reason, and the rest serves.
    let reply = get(&http, &server, "/v2/models/unreadable/ready").await;
    assert_ne!(reply.status.as_u16(), 200, "the model must not be ready");
    let log = server.log();
    assert!(log.contains("unreadable") && log.contains("CUMSUM"), "{log}");
    let case = case_from_file("fashion", &edge("refs/fashion_cnn_float.expected.json"));
    let reply = post_json(&http, &server, &infer_path("fashion"), &json_body(&case.inputs)).await;
    assert_eq!(reply.status.as_u16(), 200);
    server.stop().await;
}
