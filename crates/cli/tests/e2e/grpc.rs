//! The gRPC front end: inference with raw and typed contents, streaming, and the metadata,
//! config and repository calls.

use std::collections::BTreeMap;

use rtserve_server::proto::model_config::SchedulingChoice;
use rtserve_server::proto::model_infer_request::InferRequestedOutputTensor;
use rtserve_server::proto::{
    DataType, ModelConfigRequest, ModelMetadataRequest, ModelReadyRequest, RepositoryIndexRequest,
    ServerLiveRequest, ServerMetadataRequest, ServerReadyRequest,
};
use tonic::Code;

use crate::client::{
    assert_grpc_error, grpc, grpc_infer, grpc_outputs, grpc_request, http_infer_json, Contents,
};
use crate::server::Engine;
use crate::shared_server;
use crate::tensors::{all_cases, assert_bitwise_equal, assert_matches_reference, Case, MODELS};

crate::engine_tests!(
    every_model_raw,
    every_model_typed,
    http_and_grpc_identical,
    stream_infer,
    server_calls,
    model_metadata,
    model_config,
    repository_index,
);

async fn every_model_raw(engine: Engine) {
    let Some(server) = shared_server(engine) else { return };
    let mut grpc = grpc(server).await;
    for case in all_cases() {
        let mut request = grpc_request(&case.model, &case.inputs, Contents::Raw);
        request.id = format!("raw-{}", case.model);
        let response = grpc.model_infer(request).await.expect("ModelInfer").into_inner();
        assert_eq!(response.model_name, case.model);
        assert_eq!(response.model_version, "1");
        assert_eq!(response.id, format!("raw-{}", case.model));
        assert_matches_reference(&case, &grpc_outputs(&response), "gRPC raw_input_contents");
    }
    // Only the requested outputs come back.
    let case = crate::tensors::case("two_io");
    let mut request = grpc_request("two_io", &case.inputs, Contents::Raw);
    request.outputs.push(InferRequestedOutputTensor { name: "product".into(), ..Default::default() });
    let response = grpc.model_infer(request).await.expect("ModelInfer").into_inner();
    let only_product =
        Case { outputs: case.outputs.into_iter().filter(|t| t.name == "product").collect(), ..case };
    assert_matches_reference(&only_product, &grpc_outputs(&response), "gRPC, one output requested");
}

async fn every_model_typed(engine: Engine) {
    let Some(server) = shared_server(engine) else { return };
    let mut grpc = grpc(server).await;
    for case in all_cases() {
        let typed = grpc_infer(&mut grpc, &case.model, &case.inputs, Contents::Typed).await;
        assert_matches_reference(&case, &typed, "gRPC typed contents");
        let raw = grpc_infer(&mut grpc, &case.model, &case.inputs, Contents::Raw).await;
        assert_bitwise_equal(&typed, &raw, &format!("{}: gRPC typed vs raw", case.model));
    }
}

/// The same engine gives the same bits whichever protocol carries the request.
async fn http_and_grpc_identical(engine: Engine) {
    let Some(server) = shared_server(engine) else { return };
    let http = reqwest::Client::new();
    let mut grpc = grpc(server).await;
    for case in all_cases() {
        let over_http = http_infer_json(&http, server, &case.model, &case.inputs).await;
        let over_grpc = grpc_infer(&mut grpc, &case.model, &case.inputs, Contents::Raw).await;
        assert_bitwise_equal(&over_http, &over_grpc, &format!("{}: HTTP JSON vs gRPC", case.model));
    }
}

/// Several requests on one stream, one of them bad: every request gets its answer, matched by
/// id, and the bad one an error message without ending the stream.
async fn stream_infer(engine: Engine) {
    let Some(server) = shared_server(engine) else { return };
    let mut grpc = grpc(server).await;
    let cases: BTreeMap<String, _> =
        all_cases().into_iter().map(|c| (format!("stream-{}", c.model), c)).collect();
    let mut requests = Vec::new();
    for (round, (id, case)) in cases.iter().enumerate() {
        let contents = if round % 2 == 0 { Contents::Raw } else { Contents::Typed };
        let mut request = grpc_request(&case.model, &case.inputs, contents);
        request.id = id.clone();
        requests.push(request);
        if round == 1 {
            let mut bad = grpc_request("two_io", &case.inputs, Contents::Raw);
            bad.id = "stream-bad".to_string();
            requests.push(bad);
        }
    }
    let sent = requests.len();
    let mut responses =
        grpc.model_stream_infer(tokio_stream::iter(requests)).await.expect("stream").into_inner();
    let mut seen = BTreeMap::new();
    while let Some(message) = responses.message().await.expect("stream message") {
        let response = message.infer_response.expect("every stream message carries infer_response");
        let id = response.id.clone();
        if id == "stream-bad" {
            assert!(
                message.error_message.contains("two_io") && !message.error_message.is_empty(),
                "the bad request's error names the model: '{}'",
                message.error_message
            );
        } else {
            assert_eq!(message.error_message, "", "request {id}");
            let case = cases.get(&id).unwrap_or_else(|| panic!("unexpected id '{id}'"));
            assert_matches_reference(case, &grpc_outputs(&response), "gRPC stream");
        }
        assert!(seen.insert(id.clone(), ()).is_none(), "two answers for '{id}'");
    }
    assert_eq!(seen.len(), sent, "one answer per request: {:?}", seen.keys());
}

async fn server_calls(engine: Engine) {
    let Some(server) = shared_server(engine) else { return };
    let mut grpc = grpc(server).await;
    assert!(grpc.server_live(ServerLiveRequest {}).await.expect("ServerLive").get_ref().live);
    assert!(grpc.server_ready(ServerReadyRequest {}).await.expect("ServerReady").get_ref().ready);
    let metadata = grpc.server_metadata(ServerMetadataRequest {}).await.expect("ServerMetadata").into_inner();
    assert_eq!(metadata.name, "rtserve");
    assert!(metadata.extensions.iter().any(|e| e == "binary_tensor_data"), "{metadata:?}");
    for model in MODELS {
        for version in ["", "1"] {
            let request = ModelReadyRequest { name: model.to_string(), version: version.to_string() };
            assert!(
                grpc.model_ready(request).await.expect("ModelReady").get_ref().ready,
                "{model} v'{version}'"
            );
        }
    }
    let unknown =
        grpc.model_ready(ModelReadyRequest { name: "nope".to_string(), version: String::new() }).await;
    assert_grpc_error(unknown, Code::NotFound, &["nope"]);
}

async fn model_metadata(engine: Engine) {
    let Some(server) = shared_server(engine) else { return };
    let mut grpc = grpc(server).await;
    for version in ["", "1"] {
        let request = ModelMetadataRequest { name: "mlp".to_string(), version: version.to_string() };
        let metadata = grpc.model_metadata(request).await.expect("ModelMetadata").into_inner();
        assert_eq!(metadata.name, "mlp");
        assert_eq!(metadata.versions, vec!["1".to_string()]);
        let input = &metadata.inputs[0];
        assert_eq!(
            (input.name.as_str(), input.datatype.as_str(), input.shape.as_slice()),
            ("input", "FP32", &[-1, 784][..])
        );
        let output = &metadata.outputs[0];
        assert_eq!(
            (output.name.as_str(), output.datatype.as_str(), output.shape.as_slice()),
            ("output", "FP32", &[-1, 10][..])
        );
    }
    let request = ModelMetadataRequest { name: "dynamic_seq".to_string(), version: String::new() };
    let metadata = grpc.model_metadata(request).await.expect("ModelMetadata").into_inner();
    assert_eq!(metadata.inputs[0].shape, vec![-1, -1, 8]);
}

async fn model_config(engine: Engine) {
    let Some(server) = shared_server(engine) else { return };
    let mut grpc = grpc(server).await;
    let config = |model: &str| {
        let request = ModelConfigRequest { name: model.to_string(), version: String::new() };
        let mut grpc = grpc.clone();
        async move { grpc.model_config(request).await.expect("ModelConfig").into_inner().config.expect("config") }
    };
    let mlp = config("mlp").await;
    assert_eq!(mlp.name, "mlp");
    assert_eq!(mlp.max_batch_size, 8);
    assert_eq!(mlp.input[0].name, "input");
    assert_eq!(mlp.input[0].data_type, DataType::TypeFp32 as i32);
    assert_eq!(mlp.input[0].dims, vec![784]);
    assert_eq!(mlp.output[0].dims, vec![10]);

    let cnn = config("cnn").await;
    assert_eq!(cnn.instance_group[0].count, 2);
    match cnn.scheduling_choice {
        Some(SchedulingChoice::DynamicBatching(batching)) => {
            assert_eq!(batching.max_queue_delay_microseconds, 500)
        }
        other => panic!("cnn declares dynamic_batching, got {other:?}"),
    }
    assert_eq!(cnn.parameters["slo_ms"].string_value, "50");

    let int_bool = config("int_bool").await;
    assert!(int_bool.max_batch_size > 0, "inferred batch dimension");
    let tensors: Vec<(&str, i32, &[i64])> =
        int_bool.input.iter().map(|t| (t.name.as_str(), t.data_type, t.dims.as_slice())).collect();
    assert_eq!(
        tensors,
        vec![("x", DataType::TypeInt64 as i32, &[3][..]), ("mask", DataType::TypeBool as i32, &[3][..])]
    );

    let unknown =
        grpc.model_config(ModelConfigRequest { name: "mlp".to_string(), version: "9".to_string() }).await;
    assert_grpc_error(unknown, Code::NotFound, &["mlp", "9"]);
}

async fn repository_index(engine: Engine) {
    let Some(server) = shared_server(engine) else { return };
    let mut grpc = grpc(server).await;
    let index =
        grpc.repository_index(RepositoryIndexRequest::default()).await.expect("RepositoryIndex").into_inner();
    let rows: Vec<(&str, &str, &str)> =
        index.models.iter().map(|m| (m.name.as_str(), m.version.as_str(), m.state.as_str())).collect();
    let mut want: Vec<(&str, &str, &str)> = MODELS.iter().map(|&m| (m, "1", "READY")).collect();
    want.sort();
    assert_eq!(rows, want);

    let http = reqwest::Client::new();
    let over_http = crate::repository::http_index(&http, server).await;
    let over_grpc = crate::repository::grpc_index(&mut grpc).await;
    assert_eq!(over_http, over_grpc, "HTTP and gRPC indexes agree");
}
