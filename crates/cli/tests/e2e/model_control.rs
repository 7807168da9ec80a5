//! Model control through the real server: `none` refuses load and unload as Triton does;
//! `explicit` loads only the `--load-model` models; `poll` follows new, changed, broken and
//! removed models and versions; the load request's `config` and `file:` parameters and the
//! unload of one version, over HTTP and gRPC; bad flags are start-up errors.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine as _;
use rtserve_server::proto::model_repository_parameter::ParameterChoice;
use rtserve_server::proto::{
    ModelRepositoryParameter, RepositoryModelLoadRequest, RepositoryModelUnloadRequest,
};
use serde_json::{json, Value};
use tonic::Code;

use crate::client::{
    assert_grpc_error, get, grpc, infer_path, json_body, metric_value, post_json, GrpcClient,
};
use crate::repository::http_index;
use crate::server::{Engine, Server};
use crate::stamp_model::{self, input, stamp_of};
use crate::{start_error, start_server};

/// How long a poll mode change may take to show (polls every 0.2 s, a debug build).
const POLL_TIMEOUT: Duration = Duration::from_secs(30);

/// The stamp `model` (or one version of it) answers with, past the cache.
async fn stamp(http: &reqwest::Client, server: &Server, path: &str) -> Result<f32, String> {
    let x = input(1);
    let mut body = json_body(std::slice::from_ref(&x));
    body["parameters"] = json!({ "cache": false });
    let reply = post_json(http, server, path, &body).await;
    if reply.status != 200 {
        return Err(format!("HTTP {}: {}", reply.status, String::from_utf8_lossy(&reply.body)));
    }
    stamp_of(&x, &reply.outputs()[0])
}

/// Waits until `check` holds, polling every 50 ms.
async fn eventually<F, Fut>(what: &str, server: &Server, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + POLL_TIMEOUT;
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "{what} did not happen in {POLL_TIMEOUT:?}; log:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `rtserve_model_loads_total{model, outcome="failed"}` (0 before any).
async fn failed_loads(http: &reqwest::Client, server: &Server, model: &str) -> f64 {
    let text = String::from_utf8_lossy(&get(http, server, "/metrics").await.body).into_owned();
    metric_value(&text, "rtserve_model_loads_total", &[("model", model), ("outcome", "failed")])
        .unwrap_or(0.0)
}

/// Writes the model stamped `stamp` to `path` in 40 pieces, 25 ms apart (a second in all).
async fn write_slowly(path: &Path, stamp: f32) {
    use prost::Message;
    use std::io::Write;
    let bytes = stamp_model::model(stamp).encode_to_vec();
    let mut file = std::fs::File::create(path).expect("create the model file");
    for piece in bytes.chunks(bytes.len().div_ceil(40)) {
        file.write_all(piece).expect("write a piece");
        file.flush().expect("flush");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn load_path(model: &str) -> String {
    format!("/v2/repository/models/{model}/load")
}

fn unload_path(model: &str) -> String {
    format!("/v2/repository/models/{model}/unload")
}

fn parameter(choice: ParameterChoice) -> ModelRepositoryParameter {
    ModelRepositoryParameter { parameter_choice: Some(choice) }
}

async fn grpc_load(
    grpc: &mut GrpcClient,
    model: &str,
    parameters: HashMap<String, ModelRepositoryParameter>,
) -> Result<(), tonic::Status> {
    let request = RepositoryModelLoadRequest { model_name: model.into(), parameters, ..Default::default() };
    grpc.repository_model_load(request).await.map(|_| ())
}

async fn grpc_unload(
    grpc: &mut GrpcClient,
    model: &str,
    parameters: HashMap<String, ModelRepositoryParameter>,
) -> Result<(), tonic::Status> {
    let request = RepositoryModelUnloadRequest { model_name: model.into(), parameters, ..Default::default() };
    grpc.repository_model_unload(request).await.map(|_| ())
}

#[tokio::test]
async fn none_mode_serves_everything_and_refuses_load_and_unload() {
    let repository = tempfile::tempdir().expect("temporary folder");
    stamp_model::add(repository.path(), "a", 1.0);
    stamp_model::add(repository.path(), "b", 2.0);
    let Some(server) = start_server(repository.path(), Engine::Tract, &["--model-control-mode", "none"])
    else {
        return;
    };
    let http = reqwest::Client::new();
    assert_eq!(stamp(&http, &server, &infer_path("a")).await, Ok(1.0));
    assert_eq!(stamp(&http, &server, &infer_path("b")).await, Ok(2.0));
    for path in [load_path("a"), unload_path("a")] {
        post_json(&http, &server, &path, &json!({})).await.assert_error(503, &["--model-control-mode none"]);
    }
    let mut grpc = grpc(&server).await;
    assert_grpc_error(grpc_load(&mut grpc, "a", HashMap::new()).await, Code::Unavailable, &["not allowed"]);
    assert_grpc_error(grpc_unload(&mut grpc, "b", HashMap::new()).await, Code::Unavailable, &["not allowed"]);
    assert_eq!(stamp(&http, &server, &infer_path("a")).await, Ok(1.0), "a still serves");
    assert_eq!(http_index(&http, &server).await["b"].1, "READY");
    server.stop().await;
}

#[tokio::test]
async fn explicit_mode_loads_only_the_named_models() {
    let repository = tempfile::tempdir().expect("temporary folder");
    stamp_model::add(repository.path(), "a", 1.0);
    stamp_model::add(repository.path(), "b", 2.0);
    let flags = ["--model-control-mode", "explicit", "--load-model", "a"];
    let Some(server) = start_server(repository.path(), Engine::Tract, &flags) else { return };
    let http = reqwest::Client::new();
    assert_eq!(stamp(&http, &server, &infer_path("a")).await, Ok(1.0));
    let index = http_index(&http, &server).await;
    assert_eq!((index["b"].1.as_str(), index["b"].2.as_str()), ("UNAVAILABLE", "not loaded"));
    assert_eq!(post_json(&http, &server, &load_path("b"), &json!({})).await.status, 200);
    assert_eq!(stamp(&http, &server, &infer_path("b")).await, Ok(2.0));
    server.stop().await;

    let log = start_error(repository.path(), &["--model-control-mode", "explicit", "--load-model", "c"]);
    assert!(log.contains("--load-model 'c': no such model folder"), "{log}");
}

#[tokio::test]
async fn poll_mode_follows_the_repository() {
    let repository = tempfile::tempdir().expect("temporary folder");
    let root = repository.path();
    stamp_model::add(root, "a", 1.0);
    stamp_model::serve_all_versions(root, "a");
    let flags = ["--model-control-mode", "poll", "--repository-poll-seconds", "0.2"];
    let Some(server) = start_server(root, Engine::Tract, &flags) else { return };
    let http = reqwest::Client::new();
    let http = &http;
    let server = &server;
    assert_eq!(stamp(http, server, &infer_path("a")).await, Ok(1.0));
    post_json(http, server, &load_path("a"), &json!({}))
        .await
        .assert_error(503, &["--model-control-mode poll"]);

    // A new model; a file replaced in place; a new version.
    stamp_model::add(root, "b", 2.0);
    eventually("b loads", server, || async { stamp(http, server, &infer_path("b")).await == Ok(2.0) }).await;
    stamp_model::write(&root.join("a/1/model.onnx"), 3.0);
    eventually("a's file is reloaded", server, || async {
        stamp(http, server, &infer_path("a")).await == Ok(3.0)
    })
    .await;
    stamp_model::write(&root.join("a/2/model.onnx"), 4.0);
    eventually("a's version 2 loads", server, || async {
        stamp(http, server, &infer_path("a")).await == Ok(4.0)
    })
    .await;
    assert_eq!(stamp(http, server, "/v2/models/a/versions/1/infer").await, Ok(3.0), "version 1 stays");

    // A file written slowly, in pieces 25 ms apart across eight polls: never loaded half-written.
    let failed_before = failed_loads(http, server, "a").await;
    write_slowly(&root.join("a/1/model.onnx"), 7.0).await;
    eventually("the slowly written file loads", server, || async {
        stamp(http, server, "/v2/models/a/versions/1/infer").await == Ok(7.0)
    })
    .await;
    assert_eq!(failed_loads(http, server, "a").await, failed_before, "a half-written file was loaded");

    // A file that is not a model (as one cut short): the load fails, the versions in force stay.
    std::fs::write(root.join("a/2/model.onnx"), b"\x08\x07not a whole model").expect("write");
    eventually("the broken file is tried", server, || async {
        http_index(http, server).await["a"].2.contains("load failed")
    })
    .await;
    assert_eq!(stamp(http, server, &infer_path("a")).await, Ok(4.0), "the previous version 2 still serves");
    assert_eq!(
        failed_loads(http, server, "a").await,
        failed_before + 1.0,
        "the broken file's load is counted"
    );

    // A removed version, a removed model.
    std::fs::remove_dir_all(root.join("a/2")).expect("remove version 2");
    eventually("a's version 2 goes", server, || async {
        get(http, server, "/v2/models/a/versions/2/ready").await.status == 404
    })
    .await;
    assert_eq!(stamp(http, server, &infer_path("a")).await, Ok(7.0));
    std::fs::remove_dir_all(root.join("b")).expect("remove b");
    eventually("b unloads", server, || async { get(http, server, "/v2/models/b/ready").await.status == 503 })
        .await;
    assert_eq!(stamp(http, server, &infer_path("a")).await, Ok(7.0), "a still serves");
}

#[tokio::test]
async fn load_parameters_config_and_files_over_http_and_grpc() {
    let repository = tempfile::tempdir().expect("temporary folder");
    stamp_model::add(repository.path(), "a", 1.0);
    let Some(server) = start_server(repository.path(), Engine::Tract, &[]) else { return };
    let http = reqwest::Client::new();

    // `config` overrides the folder's config.pbtxt (max_batch_size 8 there).
    let mut config: Value = serde_json::from_str(&stamp_model::config_json("a")).expect("JSON");
    config["max_batch_size"] = json!(2);
    let body = json!({ "parameters": { "config": config.to_string() } });
    assert_eq!(post_json(&http, &server, &load_path("a"), &body).await.status, 200);
    let served = get(&http, &server, "/v2/models/a/config").await.json();
    assert_eq!(served["max_batch_size"], json!(2), "{served}");

    // A model that is not in the repository, from its files (base64 over HTTP).
    let file = |stamp: f32| {
        use prost::Message;
        stamp_model::model(stamp).encode_to_vec()
    };
    let encoded = base64::engine::general_purpose::STANDARD.encode(file(5.0));
    let body = json!({ "parameters": {
        "config": stamp_model::config_json("uploaded"),
        "file:1/model.onnx": encoded,
    }});
    let reply = post_json(&http, &server, &load_path("uploaded"), &body).await;
    assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
    assert_eq!(stamp(&http, &server, &infer_path("uploaded")).await, Ok(5.0));

    // Bytes over gRPC replace it.
    let mut grpc = grpc(&server).await;
    let parameters = HashMap::from([
        ("config".to_string(), parameter(ParameterChoice::StringParam(stamp_model::config_json("uploaded")))),
        ("file:1/model.onnx".to_string(), parameter(ParameterChoice::BytesParam(file(6.0).into()))),
    ]);
    grpc_load(&mut grpc, "uploaded", parameters).await.expect("gRPC load with files");
    assert_eq!(stamp(&http, &server, &infer_path("uploaded")).await, Ok(6.0));

    // Refused: a path out of the model folder, files without config, a config of another name.
    let outside = repository.path().join("escaped");
    let escape = format!("file:../../../../../../..{}", outside.display());
    let body = json!({ "parameters": { "config": stamp_model::config_json("uploaded"), escape: "eA==" } });
    post_json(&http, &server, &load_path("uploaded"), &body)
        .await
        .assert_error(400, &["inside the model folder"]);
    assert!(!outside.exists(), "a file was written outside the model folder");
    let body = json!({ "parameters": { "file:1/model.onnx": "eA==" } });
    post_json(&http, &server, &load_path("uploaded"), &body).await.assert_error(400, &["'config' parameter"]);
    let body = json!({ "parameters": { "config": stamp_model::config_json("other") } });
    post_json(&http, &server, &load_path("a"), &body).await.assert_error(400, &["does not match"]);
    let parameters = HashMap::from([(
        "file:/etc/x".to_string(),
        parameter(ParameterChoice::BytesParam(b"x".to_vec().into())),
    )]);
    assert_grpc_error(grpc_load(&mut grpc, "a", parameters).await, Code::InvalidArgument, &["file:/etc/x"]);
    assert_eq!(stamp(&http, &server, &infer_path("uploaded")).await, Ok(6.0), "refusals change nothing");
    server.stop().await;
}

#[tokio::test]
async fn one_version_unloads_over_http_and_grpc() {
    let repository = tempfile::tempdir().expect("temporary folder");
    stamp_model::add(repository.path(), "a", 1.0);
    stamp_model::serve_all_versions(repository.path(), "a");
    stamp_model::write(&repository.path().join("a/2/model.onnx"), 2.0);
    stamp_model::write(&repository.path().join("a/3/model.onnx"), 3.0);
    let Some(server) = start_server(repository.path(), Engine::Tract, &[]) else { return };
    let http = reqwest::Client::new();
    assert_eq!(stamp(&http, &server, &infer_path("a")).await, Ok(3.0));

    let body = json!({ "parameters": { "version": "3" } });
    assert_eq!(post_json(&http, &server, &unload_path("a"), &body).await.status, 200);
    assert_eq!(get(&http, &server, "/v2/models/a/versions/3/ready").await.status, 404);
    assert_eq!(stamp(&http, &server, &infer_path("a")).await, Ok(2.0), "the latest left serves");

    let mut grpc = grpc(&server).await;
    let version =
        |v: i64| HashMap::from([("version".to_string(), parameter(ParameterChoice::Int64Param(v)))]);
    grpc_unload(&mut grpc, "a", version(2)).await.expect("gRPC unload of version 2");
    assert_eq!(stamp(&http, &server, &infer_path("a")).await, Ok(1.0));
    assert_grpc_error(grpc_unload(&mut grpc, "a", version(7)).await, Code::NotFound, &["'7'"]);
    let body = json!({ "parameters": { "version": "two" } });
    post_json(&http, &server, &unload_path("a"), &body).await.assert_error(400, &["version number"]);

    // A load brings every version back.
    assert_eq!(post_json(&http, &server, &load_path("a"), &json!({})).await.status, 200);
    assert_eq!(stamp(&http, &server, &infer_path("a")).await, Ok(3.0));
    server.stop().await;
}

#[test]
fn bad_model_control_flags_are_start_up_errors() {
    let repository = tempfile::tempdir().expect("temporary folder");
    stamp_model::add(repository.path(), "a", 1.0);
    let root = repository.path();
    let log = start_error(root, &["--model-control-mode", "poll", "--repository-poll-seconds", "0"]);
    assert!(log.contains("--repository-poll-seconds 0 must be a positive number"), "{log}");
    let log = start_error(root, &["--load-model", "a"]);
    assert!(log.contains("--load-model needs --model-control-mode explicit"), "{log}");
    let log = start_error(root, &["--model-control-mode", "sometimes"]);
    assert!(log.contains("none, explicit or poll"), "{log}");
    unreadable_repository_is_a_start_up_error(root);
}

/// Poll mode on a repository that cannot be listed stops the start. Permission bits do not
/// stop root (CI runs as root), so there the server runs as `nobody` through `setpriv`.
fn unreadable_repository_is_a_start_up_error(root: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let locked = root.join("locked");
    std::fs::create_dir(&locked).expect("folder");
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).expect("chmod");
    let log = if std::fs::read_dir(&locked).is_err() {
        start_error(&locked, &["--model-control-mode", "poll"])
    } else {
        start_error_as_nobody(&locked, &["--model-control-mode", "poll"])
    };
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o755)).expect("chmod back");
    assert!(log.contains("cannot be read") && log.contains("--model-repository"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
}

/// What `rtserve serve` prints when run as `nobody` on `repository` with `flags`; it must exit
/// (with an error) within a minute.
fn start_error_as_nobody(repository: &Path, flags: &[&str]) -> String {
    use std::process::{Command, Stdio};
    let mut child = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", env!("CARGO_BIN_EXE_rtserve"), "serve"])
        .arg("--model-repository")
        .arg(repository)
        .args(["--http-port", "0", "--grpc-port", "0", "--host", "127.0.0.1", "--engine", "tract"])
        .args(flags)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("setpriv (util-linux) runs rtserve as nobody");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for rtserve") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("rtserve started as nobody on an unreadable repository");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut log = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr is piped"), &mut log)
        .expect("read log");
    assert!(!status.success(), "rtserve exited 0 on an unreadable repository: {log}");
    log
}
