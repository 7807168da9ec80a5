//! GPU placement on a host without one (this machine, CI): a `KIND_GPU` model fails to load with
//! the reasons (no GPU found; a CPU-only ONNX Runtime; tract runs on the CPU only) and the rest
//! serves; with `allow_cpu_fallback` it runs on the CPU and answers as the example does; a bad
//! accelerator setting is a config error that names it. The GPU itself is exercised by
//! `scripts/gpu/check.sh` on a machine that has one.

use crate::client::{grpc, grpc_infer, http_infer_json, Contents};
use crate::repository::http_index;
use crate::server::Engine;
use crate::tensors::{assert_matches_reference, case};
use crate::{add_model, engine_tests, start_server, temp_repository};

const MLP_IO: &str = r#"max_batch_size: 8
input [ { name: "input" data_type: TYPE_FP32 dims: [ 784 ] } ]
output [ { name: "output" data_type: TYPE_FP32 dims: [ 10 ] } ]
"#;

engine_tests!(kind_gpu_without_a_gpu);

async fn kind_gpu_without_a_gpu(engine: Engine) {
    let repository = temp_repository(&["mlp"]);
    let config = |name: &str, extra: &str| format!("name: \"{name}\"\n{MLP_IO}{extra}");
    add_model(
        repository.path(),
        "mlp",
        "on_gpu",
        &config("on_gpu", "instance_group [ { kind: KIND_GPU gpus: [ 0 ] } ]\n"),
    );
    add_model(
        repository.path(),
        "mlp",
        "gpu_or_cpu",
        &config(
            "gpu_or_cpu",
            "instance_group [ { kind: KIND_GPU count: 2 } ]\n\
             parameters { key: \"allow_cpu_fallback\" value: { string_value: \"true\" } }\n",
        ),
    );
    add_model(
        repository.path(),
        "mlp",
        "bad_precision",
        &config(
            "bad_precision",
            "optimization { execution_accelerators { gpu_execution_accelerator: [ { name: \"tensorrt\" \
             parameters { key: \"precision_mode\" value: \"FP8\" } } ] } }\n",
        ),
    );
    let Some(server) = start_server(repository.path(), engine, &[]) else { return };
    let http = reqwest::Client::new();

    let index = http_index(&http, &server).await;
    let (_, state, reason) = &index["on_gpu"];
    assert_eq!(state, "UNAVAILABLE", "{index:?}");
    assert!(reason.contains("instance_group KIND_GPU cannot be placed"), "{reason}");
    assert!(reason.contains("allow_cpu_fallback"), "{reason}");
    match engine {
        Engine::Tract => assert!(reason.contains("the tract engine runs on the CPU only"), "{reason}"),
        // This host has neither a GPU nor a GPU build of ONNX Runtime; a GPU host with the
        // CPU-only wheel would give only the second reason.
        Engine::OnnxRuntime => {
            assert!(reason.contains("no GPU found") || reason.contains("has no CUDA provider"), "{reason}")
        }
    }
    let (_, state, reason) = &index["bad_precision"];
    assert_eq!(state, "UNAVAILABLE", "{index:?}");
    assert!(reason.contains("precision_mode 'FP8' is not FP32, FP16 or INT8"), "{reason}");

    // Allowed to fall back: both instances on the CPU, same answers as the example model.
    assert_eq!(index["gpu_or_cpu"].1, "READY", "{index:?}");
    let mut fallback = case("mlp");
    fallback.model = "gpu_or_cpu".to_string();
    let outputs = http_infer_json(&http, &server, "gpu_or_cpu", &fallback.inputs).await;
    assert_matches_reference(&fallback, &outputs, "HTTP JSON, KIND_GPU on the CPU");
    let log = server.log();
    assert!(log.contains("KIND_GPU instances run on the CPU (allow_cpu_fallback)"), "{log}");

    // The models that did not load leave the rest serving, over gRPC too.
    let mut grpc = grpc(&server).await;
    let example = case("mlp");
    let outputs = grpc_infer(&mut grpc, "mlp", &example.inputs, Contents::Raw).await;
    assert_matches_reference(&example, &outputs, "gRPC");
    server.stop().await;
}
