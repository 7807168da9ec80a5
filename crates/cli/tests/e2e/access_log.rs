//! `--access-log`: one line per HTTP request and per gRPC inference (unary and each stream
//! message), with the request id, model, version, status, cache outcome and client address,
//! and never the bearer token.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::client::{grpc_request, infer_path, json_body, Contents};
use crate::server::{Engine, Server};
use crate::tensors::case;
use crate::{add_model, mlp_config, start_server, temp_repository};

const TOKEN: &str = "access-log-secret-81f0";

/// The fields of every access line in `log` (text format: `... rtserve::access: access k=v ...`).
fn access_lines(log: &str) -> Vec<BTreeMap<String, String>> {
    log.lines()
        .filter_map(|line| line.split_once("rtserve::access: access "))
        .map(|(_, fields)| {
            fields
                .split_whitespace()
                .filter_map(|field| field.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        })
        .collect()
}

/// Waits until the line of request `id` is logged; returns it.
async fn line_of(server: &Server, id: &str) -> BTreeMap<String, String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let lines = access_lines(&server.log());
        if let Some(line) = lines.into_iter().find(|line| line.get("id").map(String::as_str) == Some(id)) {
            return line;
        }
        assert!(Instant::now() < deadline, "no access line for {id}; log:\n{}", server.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn assert_fields(line: &BTreeMap<String, String>, expected: &[(&str, &str)]) {
    for (key, value) in expected {
        assert_eq!(line.get(*key).map(String::as_str), Some(*value), "{key} in {line:?}");
    }
}

/// A gRPC request with the test's bearer token.
fn with_token<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("authorization", format!("Bearer {TOKEN}").parse().expect("ASCII"));
    request
}

#[tokio::test]
async fn each_request_is_logged_once_without_the_token() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, format!("{TOKEN} access-e2e\n")).expect("write token file");
    let repository = temp_repository(&["mlp"]);
    add_model(
        repository.path(),
        "mlp",
        "mlp_cached",
        &mlp_config("mlp_cached", "response_cache { enable: true }"),
    );
    let flags = ["--access-log", "--auth-token-file", tokens.to_str().expect("UTF-8 path")];
    let Some(server) = start_server(repository.path(), Engine::Tract, &flags) else { return };
    let http = reqwest::Client::new();
    let body = json_body(&case("mlp").inputs);

    for (id, cache) in [("http-miss", "miss"), ("http-hit", "hit")] {
        let reply = http
            .post(server.url(&infer_path("mlp_cached")))
            .bearer_auth(TOKEN)
            .header("x-request-id", id)
            .json(&body)
            .send()
            .await
            .expect("POST");
        assert_eq!(reply.status(), 200);
        assert_eq!(reply.headers()["x-request-id"], id, "the id is echoed");
        let line = line_of(&server, id).await;
        let path = infer_path("mlp_cached");
        let expected = [
            ("protocol", "http"),
            ("method", "POST"),
            ("path", path.as_str()),
            ("model", "mlp_cached"),
            ("version", "1"),
            ("status", "200"),
            ("cache", cache),
        ];
        assert_fields(&line, &expected);
        assert!(line["client"].starts_with("127.0.0.1:"), "{line:?}");
        assert!(line["latency_us"].parse::<u64>().is_ok(), "{line:?}");
        assert!(line["bytes_in"].parse::<u64>().is_ok_and(|n| n > 0), "{line:?}");
    }

    let refused = http.post(server.url(&infer_path("mlp"))).header("x-request-id", "no-token").json(&body);
    assert_eq!(refused.send().await.expect("POST").status(), 401);
    assert_fields(&line_of(&server, "no-token").await, &[("status", "401"), ("model", "-")]);
    let unknown =
        http.post(server.url(&infer_path("nope"))).bearer_auth(TOKEN).header("x-request-id", "unknown");
    assert_eq!(unknown.json(&body).send().await.expect("POST").status(), 404);
    assert_fields(
        &line_of(&server, "unknown").await,
        &[("status", "404"), ("path", "/v2/models/nope/infer")],
    );

    // gRPC: a unary call and each message of a stream.
    let mut grpc = crate::client::grpc(&server).await;
    let mut unary = grpc_request("mlp", &case("mlp").inputs, Contents::Raw);
    unary.id = "grpc-unary".to_string();
    grpc.model_infer(with_token(unary)).await.expect("ModelInfer");
    let messages: Vec<_> = ["grpc-stream-1", "grpc-stream-2"]
        .into_iter()
        .map(|id| {
            let mut request = grpc_request("mlp", &case("mlp").inputs, Contents::Raw);
            request.id = id.to_string();
            request
        })
        .collect();
    let mut stream = grpc.model_stream_infer(with_token(tokio_stream::iter(messages))).await.expect("stream");
    while stream.get_mut().message().await.expect("stream message").is_some() {}
    let unary = line_of(&server, "grpc-unary").await;
    assert_fields(
        &unary,
        &[("protocol", "grpc"), ("method", "ModelInfer"), ("model", "mlp"), ("status", "OK")],
    );
    for id in ["grpc-stream-1", "grpc-stream-2"] {
        let expected =
            [("protocol", "grpc"), ("method", "ModelStreamInfer"), ("model", "mlp"), ("version", "1")];
        assert_fields(&line_of(&server, id).await, &expected);
    }

    let log = server.log();
    for id in ["http-miss", "http-hit", "no-token", "unknown", "grpc-unary", "grpc-stream-1"] {
        let count = access_lines(&log).iter().filter(|l| l.get("id").map(String::as_str) == Some(id)).count();
        assert_eq!(count, 1, "{id} logged {count} times");
    }
    assert!(!log.contains(TOKEN), "the token is in the log");
    server.stop().await;
}
