//! The model repository: a model that fails to load is reported and the others serve; explicit
//! unload and load over HTTP and gRPC; a fixed config loads on request.

use std::collections::BTreeMap;

use rtserve_server::proto::{
    ModelReadyRequest, RepositoryIndexRequest, RepositoryModelLoadRequest, RepositoryModelUnloadRequest,
};
use serde_json::json;
use tonic::Code;

use crate::client::{
    assert_grpc_error, get, grpc, grpc_infer, grpc_request, http_infer_json, infer_path, json_body,
    post_json, GrpcClient,
};
use crate::server::{Engine, Server};
use crate::tensors::{assert_matches_reference, case};
use crate::{start_server, temp_repository};

crate::engine_tests!(broken_config_unload_and_reload);

/// A config.pbtxt with a syntax error: a list that is never closed.
const BROKEN_CONFIG: &str =
    "name: \"cnn\"\nmax_batch_size: 8\ninput [\n  { name: \"input\" data_type: TYPE_FP32\n";

/// One row of the repository index: (version, state, reason).
pub type Row = (String, String, String);

pub async fn http_index(http: &reqwest::Client, server: &Server) -> BTreeMap<String, Row> {
    let reply = post_json(http, server, "/v2/repository/index", &json!({})).await;
    assert_eq!(reply.status, 200);
    reply
        .json()
        .as_array()
        .expect("index array")
        .iter()
        .map(|m| {
            let field = |k: &str| m[k].as_str().unwrap_or_default().to_string();
            (field("name"), (field("version"), field("state"), field("reason")))
        })
        .collect()
}

pub async fn grpc_index(grpc: &mut GrpcClient) -> BTreeMap<String, Row> {
    let index = grpc.repository_index(RepositoryIndexRequest::default()).await.expect("RepositoryIndex");
    index.into_inner().models.into_iter().map(|m| (m.name, (m.version, m.state, m.reason))).collect()
}

async fn assert_serves(http: &reqwest::Client, grpc: &mut GrpcClient, server: &Server, model: &str) {
    let case = case(model);
    let outputs = http_infer_json(http, server, model, &case.inputs).await;
    assert_matches_reference(&case, &outputs, "HTTP JSON");
    let outputs = grpc_infer(grpc, model, &case.inputs, crate::client::Contents::Raw).await;
    assert_matches_reference(&case, &outputs, "gRPC");
}

/// Asserts that `model` is known but not serving: 503 / UNAVAILABLE, not ready.
async fn assert_unavailable(http: &reqwest::Client, grpc: &mut GrpcClient, server: &Server, model: &str) {
    let name = format!("'{model}'");
    let inputs = case(model).inputs;
    post_json(http, server, &infer_path(model), &json_body(&inputs)).await.assert_error(503, &[&name]);
    assert_eq!(get(http, server, &format!("/v2/models/{model}/ready")).await.status, 503);
    let result = grpc.model_infer(grpc_request(model, &inputs, crate::client::Contents::Raw)).await;
    assert_grpc_error(result, Code::Unavailable, &[&name]);
    let ready = grpc.model_ready(ModelReadyRequest { name: model.to_string(), version: String::new() }).await;
    assert!(!ready.expect("ModelReady on a known model").get_ref().ready, "{model} reports ready");
}

async fn broken_config_unload_and_reload(engine: Engine) {
    let repository = temp_repository(&["mlp", "cnn"]);
    let cnn_config = repository.path().join("cnn/config.pbtxt");
    let good_config = std::fs::read_to_string(&cnn_config).expect("read cnn config");
    std::fs::write(&cnn_config, BROKEN_CONFIG).expect("write broken config");

    // The server starts although cnn cannot load; cnn is UNAVAILABLE with its reason, mlp serves.
    let Some(server) = start_server(repository.path(), engine, &[]) else { return };
    let http = reqwest::Client::new();
    let mut grpc = grpc(&server).await;
    let index = http_index(&http, &server).await;
    assert_eq!(index["mlp"].0, "1");
    assert_eq!(index["mlp"].1, "READY");
    let (_, state, reason) = &index["cnn"];
    assert_eq!(state, "UNAVAILABLE");
    assert!(reason.contains("config.pbtxt"), "the reason names the broken file: '{reason}'");
    assert_eq!(grpc_index(&mut grpc).await, index, "HTTP and gRPC indexes agree");
    assert_serves(&http, &mut grpc, &server, "mlp").await;
    assert_unavailable(&http, &mut grpc, &server, "cnn").await;

    // Loading it again while the file is still broken fails with the reason; nothing changes.
    let load = post_json(&http, &server, "/v2/repository/models/cnn/load", &json!({})).await;
    load.assert_error(400, &["'cnn'", "config.pbtxt"]);
    let result = grpc
        .repository_model_load(RepositoryModelLoadRequest { model_name: "cnn".into(), ..Default::default() });
    assert_grpc_error(result.await, Code::InvalidArgument, &["'cnn'", "config.pbtxt"]);
    assert_eq!(http_index(&http, &server).await["cnn"].1, "UNAVAILABLE");
    assert_serves(&http, &mut grpc, &server, "mlp").await;

    // Unload and load over HTTP.
    let unload = post_json(&http, &server, "/v2/repository/models/mlp/unload", &json!({})).await;
    assert_eq!(unload.status, 200, "{}", String::from_utf8_lossy(&unload.body));
    assert_unavailable(&http, &mut grpc, &server, "mlp").await;
    assert_eq!(http_index(&http, &server).await["mlp"].1, "UNAVAILABLE");
    let load = post_json(&http, &server, "/v2/repository/models/mlp/load", &json!({})).await;
    assert_eq!(load.status, 200, "{}", String::from_utf8_lossy(&load.body));
    assert_serves(&http, &mut grpc, &server, "mlp").await;

    // Unload and load over gRPC.
    let unload = RepositoryModelUnloadRequest { model_name: "mlp".into(), ..Default::default() };
    grpc.repository_model_unload(unload).await.expect("RepositoryModelUnload");
    assert_unavailable(&http, &mut grpc, &server, "mlp").await;
    let load = RepositoryModelLoadRequest { model_name: "mlp".into(), ..Default::default() };
    grpc.repository_model_load(load).await.expect("RepositoryModelLoad");
    assert_serves(&http, &mut grpc, &server, "mlp").await;

    // With the config fixed on disk, a load brings cnn up.
    std::fs::write(&cnn_config, good_config).expect("restore cnn config");
    let load = post_json(&http, &server, "/v2/repository/models/cnn/load", &json!({})).await;
    assert_eq!(load.status, 200, "{}", String::from_utf8_lossy(&load.body));
    let index = http_index(&http, &server).await;
    assert_eq!((index["cnn"].0.as_str(), index["cnn"].1.as_str()), ("1", "READY"), "{index:?}");
    assert_serves(&http, &mut grpc, &server, "cnn").await;
    assert_serves(&http, &mut grpc, &server, "mlp").await;

    // Models the repository does not have.
    for action in ["load", "unload"] {
        let path = format!("/v2/repository/models/no_such_model/{action}");
        post_json(&http, &server, &path, &json!({})).await.assert_error(404, &["'no_such_model'"]);
    }
    let load = RepositoryModelLoadRequest { model_name: "no_such_model".into(), ..Default::default() };
    assert_grpc_error(grpc.repository_model_load(load).await, Code::NotFound, &["'no_such_model'"]);

    server.stop().await;
}

/// `ready: true` in an index request lists only the models ready for inference (Triton's
/// repository extension; the field is in this repo's `inference.proto`).
#[tokio::test]
async fn index_of_ready_models_only() {
    let repository = temp_repository(&["mlp", "cnn"]);
    std::fs::write(repository.path().join("cnn/config.pbtxt"), BROKEN_CONFIG).expect("write broken config");
    let Some(server) = start_server(repository.path(), Engine::Tract, &[]) else { return };
    let http = reqwest::Client::new();
    let reply = post_json(&http, &server, "/v2/repository/index", &json!({ "ready": true })).await;
    assert_eq!(reply.status, 200);
    let names: Vec<String> = reply
        .json()
        .as_array()
        .expect("index array")
        .iter()
        .map(|m| m["name"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(names, vec!["mlp".to_string()], "HTTP index with ready: true");
    let mut grpc = grpc(&server).await;
    let index = grpc.repository_index(RepositoryIndexRequest { ready: true, ..Default::default() }).await;
    let names: Vec<String> =
        index.expect("RepositoryIndex").into_inner().models.into_iter().map(|m| m.name).collect();
    assert_eq!(names, vec!["mlp".to_string()], "gRPC index with ready: true");
    server.stop().await;
}
