//! The HTTP front end: health, metadata, config, versioned routes, and inference with JSON and
//! binary tensors on every example model.

use serde_json::{json, Value};

use crate::client::{
    self, binary_body, get, http_infer_binary, http_infer_json, infer_path, post_binary, post_json,
};
use crate::server::Engine;
use crate::shared_server;
use crate::tensors::{all_cases, assert_bitwise_equal, assert_matches_reference, case};

crate::engine_tests!(
    every_model_json,
    every_model_binary,
    mixed_output_encodings,
    requested_outputs_and_id,
    json_without_content_type,
    server_metadata_and_health,
    model_metadata,
    model_config,
    versioned_routes,
);

async fn every_model_json(engine: Engine) {
    let Some(server) = shared_server(engine) else { return };
    let http = reqwest::Client::new();
    for case in all_cases() {
        let reply =
            post_json(&http, server, &infer_path(&case.model), &client::json_body(&case.inputs)).await;
        let body = reply.json();
        assert_eq!(body["model_name"], json!(case.model));
        assert_eq!(body["model_version"], json!("1"));
        for output in body["outputs"].as_array().expect("outputs") {
            assert!(
                output.get("parameters").is_none(),
                "a JSON output carries no parameters object: {output}"
            );
        }
        assert_matches_reference(&case, &reply.outputs(), "HTTP JSON");
    }
}

async fn every_model_binary(engine: Engine) {
    let Some(server) = shared_server(engine) else { return };
    let http = reqwest::Client::new();
    for case in all_cases() {
        let binary = http_infer_binary(&http, server, &case.model, &case.inputs).await;
        assert_matches_reference(&case, &binary, "HTTP binary");
        let json = http_infer_json(&http, server, &case.model, &case.inputs).await;
        assert_bitwise_equal(&binary, &json, &format!("{}: HTTP binary vs JSON", case.model));
    }
}

/// `binary_data` per output: one output binary, the other JSON, in one answer.
async fn mixed_output_encodings(engine: Engine) {
    let Some(server) = shared_server(engine) else { return };
    let http = reqwest::Client::new();
    let case = case("two_io");
    let outputs = json!({ "outputs": [
        { "name": "sum", "parameters": { "binary_data": true } },
        { "name": "product", "parameters": { "binary_data": false } },
    ]});
    let (body, header) = binary_body(&case.inputs, outputs);
    let reply = post_binary(&http, server, &infer_path("two_io"), body, header).await;
    let length: usize =
        reply.headers[client::HEADER_LENGTH].to_str().expect("ascii").parse().expect("number");
    let header: Value = serde_json::from_slice(&reply.body[..length]).expect("JSON header");
    assert_eq!(header["outputs"][0]["parameters"]["binary_data_size"], json!(32), "sum is binary: {header}");
    assert!(header["outputs"][1].get("data").is_some(), "product is JSON: {header}");
    let mixed = reply.outputs();
    assert_matches_reference(&case, &mixed, "HTTP mixed encodings");
    let json = http_infer_json(&http, server, "two_io", &case.inputs).await;
    assert_bitwise_equal(&mixed, &json, "two_io: mixed vs JSON");
}

/// Only the requested outputs come back, and the request id is echoed.
async fn requested_outputs_and_id(engine: Engine) {
    let Some(server) = shared_server(engine) else { return };
    let http = reqwest::Client::new();
    let case = case("two_io");
    let mut body = client::json_body(&case.inputs);
    body["id"] = json!("request-42");
    body["outputs"] = json!([{ "name": "product" }]);
    let reply = post_json(&http, server, &infer_path("two_io"), &body).await;
    assert_eq!(reply.json()["id"], json!("request-42"));
    let outputs = reply.outputs();
    assert_eq!(outputs.len(), 1, "only 'product' was asked for: {outputs:?}");
    let want = case.outputs.iter().find(|t| t.name == "product").expect("reference has product");
    let only_product = crate::tensors::Case { outputs: vec![want.clone()], ..case };
    assert_matches_reference(&only_product, &outputs, "HTTP JSON, one output requested");
}

/// A JSON body without a Content-Type header is accepted.
async fn json_without_content_type(engine: Engine) {
    let Some(server) = shared_server(engine) else { return };
    let http = reqwest::Client::new();
    let case = case("int_bool");
    let body = serde_json::to_vec(&client::json_body(&case.inputs)).expect("serializable");
    let reply = client::send(http.post(server.url(&infer_path("int_bool"))).body(body)).await;
    assert_matches_reference(&case, &reply.outputs(), "HTTP JSON without Content-Type");
}

async fn server_metadata_and_health(engine: Engine) {
    let Some(server) = shared_server(engine) else { return };
    let http = reqwest::Client::new();
    let metadata = get(&http, server, "/v2").await;
    assert_eq!(metadata.status, 200);
    let metadata = metadata.json();
    assert_eq!(metadata["name"], json!("rtserve"));
    assert!(metadata["version"].as_str().is_some_and(|v| !v.is_empty()), "{metadata}");
    let extensions = metadata["extensions"].as_array().expect("extensions");
    for extension in ["binary_tensor_data", "model_repository"] {
        assert!(extensions.contains(&json!(extension)), "extension {extension} missing: {metadata}");
    }
    for path in ["/v2/health/live", "/v2/health/ready"] {
        assert_eq!(get(&http, server, path).await.status, 200, "{path}");
    }
    for model in crate::tensors::MODELS {
        for path in [format!("/v2/models/{model}/ready"), format!("/v2/models/{model}/versions/1/ready")] {
            assert_eq!(get(&http, server, &path).await.status, 200, "{path}");
        }
    }
    let unknown = get(&http, server, "/v2/no/such/route").await;
    unknown.assert_error(404, &[]);
}

/// Metadata shapes include the batch dimension as -1.
async fn model_metadata(engine: Engine) {
    let Some(server) = shared_server(engine) else { return };
    let http = reqwest::Client::new();
    let expected = [
        ("mlp", vec![("input", "FP32", json!([-1, 784]))], vec![("output", "FP32", json!([-1, 10]))]),
        ("cnn", vec![("input", "FP32", json!([-1, 1, 28, 28]))], vec![("logits", "FP32", json!([-1, 10]))]),
        (
            "two_io",
            vec![("a", "FP32", json!([-1, 4])), ("b", "FP32", json!([-1, 4]))],
            vec![("sum", "FP32", json!([-1, 4])), ("product", "FP32", json!([-1, 4]))],
        ),
        (
            "int_bool",
            vec![("x", "INT64", json!([-1, 3])), ("mask", "BOOL", json!([-1, 3]))],
            vec![("y", "INT64", json!([-1, 3])), ("positive", "BOOL", json!([-1, 3]))],
        ),
        (
            "dynamic_seq",
            vec![("tokens", "FP32", json!([-1, -1, 8]))],
            vec![("pooled", "FP32", json!([-1, 4]))],
        ),
    ];
    for (model, inputs, outputs) in expected {
        let reply = get(&http, server, &format!("/v2/models/{model}")).await;
        assert_eq!(reply.status, 200, "{model}");
        let metadata = reply.json();
        assert_eq!(metadata["name"], json!(model));
        assert_eq!(metadata["versions"], json!(["1"]), "{model}");
        assert!(metadata["platform"].as_str().is_some_and(|p| !p.is_empty()), "{metadata}");
        for (key, tensors) in [("inputs", inputs), ("outputs", outputs)] {
            let want: Vec<Value> = tensors
                .into_iter()
                .map(|(name, datatype, shape)| json!({ "name": name, "datatype": datatype, "shape": shape }))
                .collect();
            assert_eq!(metadata[key], json!(want), "{model} {key}");
        }
    }
}

/// Triton's JSON model configuration, declared (pbtxt, TOML) and inferred from the graph.
async fn model_config(engine: Engine) {
    let Some(server) = shared_server(engine) else { return };
    let http = reqwest::Client::new();
    let config = |model: &'static str| {
        let http = http.clone();
        async move {
            let reply = get(&http, server, &format!("/v2/models/{model}/config")).await;
            assert_eq!(reply.status, 200, "{model}");
            reply.json()
        }
    };

    let mlp = config("mlp").await;
    assert_eq!(mlp["name"], json!("mlp"));
    assert_eq!(mlp["max_batch_size"], json!(8));
    assert_eq!(mlp["input"][0]["name"], json!("input"));
    assert_eq!(mlp["input"][0]["data_type"], json!("TYPE_FP32"));
    assert_eq!(mlp["input"][0]["dims"], json!([784]));
    assert_eq!(mlp["output"][0]["dims"], json!([10]));
    assert_eq!(mlp["instance_group"][0]["count"], json!(1));
    assert_eq!(mlp["instance_group"][0]["kind"], json!("KIND_CPU"));

    let cnn = config("cnn").await;
    assert_eq!(cnn["instance_group"][0]["count"], json!(2));
    assert_eq!(cnn["dynamic_batching"]["max_queue_delay_microseconds"], json!(500));
    assert_eq!(cnn["parameters"]["slo_ms"], json!({ "string_value": "50" }));

    let two_io = config("two_io").await;
    assert_eq!(two_io["max_batch_size"], json!(16), "from config.toml");
    assert_eq!(two_io["output"][1]["name"], json!("product"));

    let dynamic_seq = config("dynamic_seq").await;
    assert_eq!(dynamic_seq["input"][0]["dims"], json!([-1, 8]));

    // int_bool has no config file: everything below is inferred from the ONNX graph.
    let int_bool = config("int_bool").await;
    assert_eq!(int_bool["name"], json!("int_bool"));
    let max_batch = int_bool["max_batch_size"].as_u64().expect("max_batch_size");
    assert!(max_batch > 0, "the dynamic first dimension is taken as the batch: {int_bool}");
    let tensors = |key: &str| -> Vec<(Value, Value, Value)> {
        int_bool[key]
            .as_array()
            .expect("tensor list")
            .iter()
            .map(|t| (t["name"].clone(), t["data_type"].clone(), t["dims"].clone()))
            .collect()
    };
    assert_eq!(
        tensors("input"),
        vec![(json!("x"), json!("TYPE_INT64"), json!([3])), (json!("mask"), json!("TYPE_BOOL"), json!([3]))]
    );
    assert_eq!(
        tensors("output"),
        vec![
            (json!("y"), json!("TYPE_INT64"), json!([3])),
            (json!("positive"), json!("TYPE_BOOL"), json!([3]))
        ]
    );
}

/// `/versions/1/...` serves version 1; an unknown version is a 404 that names it.
async fn versioned_routes(engine: Engine) {
    let Some(server) = shared_server(engine) else { return };
    let http = reqwest::Client::new();
    let latest = get(&http, server, "/v2/models/mlp").await.json();
    let v1 = get(&http, server, "/v2/models/mlp/versions/1").await;
    assert_eq!(v1.status, 200);
    assert_eq!(v1.json(), latest);
    let config = get(&http, server, "/v2/models/mlp/versions/1/config").await;
    assert_eq!(config.status, 200);
    assert_eq!(config.json()["max_batch_size"], json!(8));

    let case = case("mlp");
    let reply =
        post_json(&http, server, "/v2/models/mlp/versions/1/infer", &client::json_body(&case.inputs)).await;
    assert_eq!(reply.json()["model_version"], json!("1"));
    assert_matches_reference(&case, &reply.outputs(), "HTTP JSON on /versions/1");

    for version in ["2", "0", "latest"] {
        let base = format!("/v2/models/mlp/versions/{version}");
        for path in [base.clone(), format!("{base}/ready"), format!("{base}/config")] {
            get(&http, server, &path).await.assert_error(404, &["mlp", version]);
        }
        let infer =
            post_json(&http, server, &format!("{base}/infer"), &client::json_body(&case.inputs)).await;
        infer.assert_error(404, &["mlp", version]);
    }
}
