//! Graceful shutdown: after SIGTERM the server drains (not ready, still serving), then stops
//! accepting, finishes the requests in flight over both protocols, and exits 0. Bad shutdown
//! and listener settings are start-up errors; `--listen-when-ready` opens the ports after loading.

use std::time::{Duration, Instant};

use rtserve_server::proto::{ModelInferRequest, ModelReadyRequest, ServerReadyRequest};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_stream::wrappers::ReceiverStream;

use crate::client::{grpc, grpc_infer, grpc_outputs, grpc_request, http_infer_json, json_body, Contents};
use crate::server::{Engine, Server};
use crate::tensors::{assert_matches_reference, case, Case, Tensor};
use crate::{start_error, start_server, temp_repository};

crate::engine_tests!(sigterm_finishes_requests_in_flight);

/// How long the server may take to answer `Expect: 100-continue`.
const INTERIM_WITHIN: Duration = Duration::from_secs(10);

/// How long the listener may stay open after SIGTERM (and after the drain).
const STOP_ACCEPTING_WITHIN: Duration = Duration::from_secs(10);

/// The drain of the drain test: long enough for its checks on a busy machine.
const DRAIN: Duration = Duration::from_secs(4);

/// How soon after SIGTERM readiness must be withdrawn.
const NOT_READY_WITHIN: Duration = Duration::from_secs(2);

fn stream_request(case: &Case, id: &str) -> ModelInferRequest {
    ModelInferRequest { id: id.to_string(), ..grpc_request(&case.model, &case.inputs, Contents::Raw) }
}

/// Sends the head of an infer request with `Expect: 100-continue` and waits for the server's
/// `100 Continue`: then the handler runs and is reading the body, which is not yet sent.
async fn start_http_request(server: &Server, body_length: usize) -> TcpStream {
    let mut stream = TcpStream::connect(server.http_addr()).await.expect("connect");
    let head = format!(
        "POST /v2/models/mlp/infer HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
         Content-Length: {body_length}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
        server.http_addr()
    );
    stream.write_all(head.as_bytes()).await.expect("send request head");
    let mut interim = Vec::new();
    while !interim.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(INTERIM_WITHIN, stream.read(&mut byte))
            .await
            .expect("no 100 Continue in time")
            .expect("read interim response");
        assert_eq!(read, 1, "connection closed before 100 Continue: {}", String::from_utf8_lossy(&interim));
        interim.push(byte[0]);
    }
    let interim = String::from_utf8_lossy(&interim);
    assert!(interim.starts_with("HTTP/1.1 100"), "expected 100 Continue, got {interim}");
    stream
}

/// Sends the body and reads the whole answer: status and JSON body.
async fn finish_http_request(mut stream: TcpStream, body: &[u8]) -> (u16, Value) {
    stream.write_all(body).await.expect("send request body");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.expect("read response");
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no complete response: {text}"));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("status code");
    let body =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("response body is not JSON ({e}): {body}"));
    (status, body)
}

async fn sigterm_finishes_requests_in_flight(engine: Engine) {
    let repository = temp_repository(&["mlp"]);
    let Some(server) = start_server(repository.path(), engine, &[]) else { return };
    let case = case("mlp");

    // In flight over HTTP: the handler is waiting for the body.
    let body = serde_json::to_vec(&json_body(&case.inputs)).expect("serializable");
    let http_request = start_http_request(&server, body.len()).await;

    // In flight over gRPC: a stream that has answered once and stays open.
    let mut grpc = grpc(&server).await;
    let (requests, receiver) = tokio::sync::mpsc::channel(4);
    requests.send(stream_request(&case, "before")).await.expect("queue request");
    let mut responses =
        grpc.model_stream_infer(ReceiverStream::new(receiver)).await.expect("stream").into_inner();
    let first = responses.message().await.expect("stream message").expect("an answer before SIGTERM");
    assert_eq!(first.infer_response.as_ref().map(|r| r.id.as_str()), Some("before"));

    server.terminate();
    wait_until_refused(&server, Instant::now() + STOP_ACCEPTING_WITHIN).await;

    let (status, answer) = finish_http_request(http_request, &body).await;
    assert_eq!(status, 200, "the in-flight HTTP request completes: {answer}");
    let outputs: Vec<Tensor> =
        answer["outputs"].as_array().expect("outputs").iter().map(Tensor::from_json).collect();
    assert_matches_reference(&case, &outputs, "HTTP request in flight at SIGTERM");

    // The stream is still open; one more request on it is refused, so that shutdown ends.
    requests.send(stream_request(&case, "after")).await.expect("queue request");
    let second = responses.message().await.expect("stream message").expect("an answer after SIGTERM");
    assert!(second.error_message.contains("shutting down"), "{second:?}");
    drop(requests);
    assert!(responses.message().await.expect("clean end of stream").is_none());

    server.wait_for_clean_exit().await;
}

/// Waits until a new HTTP connection is refused (the listener closed) and returns when.
async fn wait_until_refused(server: &Server, deadline: Instant) -> Instant {
    while TcpStream::connect(server.http_addr()).await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "the HTTP listener still accepts connections; its log:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Instant::now()
}

/// Status of `GET path` on a fresh connection.
async fn status_of(http: &reqwest::Client, server: &Server, path: &str) -> u16 {
    http.get(server.url(path)).send().await.expect("GET").status().as_u16()
}

/// SIGTERM with `--drain-seconds`: readiness is withdrawn at once over both protocols while
/// inference (new connections, unary and streaming) is still answered, HTTP/1 replies close
/// their connections; after the drain the listener closes, the request in flight completes and
/// the process exits 0.
#[tokio::test]
async fn drain_withdraws_readiness_and_keeps_serving() {
    let repository = temp_repository(&["mlp"]);
    let drain = DRAIN.as_secs().to_string();
    let flags = ["--drain-seconds", drain.as_str(), "--shutdown-timeout", "20"];
    let Some(server) = start_server(repository.path(), Engine::Tract, &flags) else { return };
    let case = case("mlp");
    let body = serde_json::to_vec(&json_body(&case.inputs)).expect("serializable");
    let in_flight = start_http_request(&server, body.len()).await;
    let mut grpc = grpc(&server).await;
    let (requests, receiver) = tokio::sync::mpsc::channel(4);
    let mut responses =
        grpc.model_stream_infer(ReceiverStream::new(receiver)).await.expect("stream").into_inner();
    let http = reqwest::Client::new();
    assert_eq!(status_of(&http, &server, "/v2/health/ready").await, 200);

    server.terminate();
    let signalled = Instant::now();
    while status_of(&http, &server, "/v2/health/ready").await != 503 {
        assert!(signalled.elapsed() < NOT_READY_WITHIN, "still ready {NOT_READY_WITHIN:?} after SIGTERM");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(status_of(&http, &server, "/v2/models/mlp/ready").await, 503);
    assert!(!grpc.server_ready(ServerReadyRequest {}).await.expect("ServerReady").into_inner().ready);
    let model_ready = ModelReadyRequest { name: "mlp".into(), version: String::new() };
    assert!(!grpc.model_ready(model_ready).await.expect("ModelReady").into_inner().ready);

    // Still serving, on every path.
    let reply = http.post(server.url("/v2/models/mlp/infer")).json(&json_body(&case.inputs)).send().await;
    let reply = reply.expect("HTTP infer while draining");
    assert_eq!(reply.status().as_u16(), 200);
    assert_eq!(
        reply.headers().get("connection").and_then(|v| v.to_str().ok()),
        Some("close"),
        "HTTP/1 replies close their connection while draining"
    );
    let outputs = http_infer_json(&http, &server, "mlp", &case.inputs).await;
    assert_matches_reference(&case, &outputs, "HTTP while draining");
    let outputs = grpc_infer(&mut grpc, "mlp", &case.inputs, Contents::Raw).await;
    assert_matches_reference(&case, &outputs, "gRPC while draining");
    requests.send(stream_request(&case, "draining")).await.expect("queue request");
    let answer = responses.message().await.expect("stream message").expect("an answer while draining");
    assert_eq!(answer.error_message, "");
    assert_matches_reference(&case, &grpc_outputs(&answer.infer_response.expect("response")), "stream");

    let refused = wait_until_refused(&server, signalled + DRAIN + STOP_ACCEPTING_WITHIN).await;
    assert!(refused - signalled >= DRAIN, "the listener closed {:?} after SIGTERM", refused - signalled);
    let (status, answer) = finish_http_request(in_flight, &body).await;
    assert_eq!(status, 200, "the request in flight completes: {answer}");
    drop(requests);
    assert!(responses.message().await.expect("clean end of stream").is_none());
    server.wait_for_clean_exit().await;
}

/// A second signal ends the drain: a server told to drain for longer than the harness waits
/// for its exit still exits 0 in time.
#[tokio::test]
async fn a_second_signal_cuts_the_drain_short() {
    let repository = temp_repository(&["mlp"]);
    let flags = ["--drain-seconds", "600", "--shutdown-timeout", "600"];
    let Some(server) = start_server(repository.path(), Engine::Tract, &flags) else { return };
    let http = reqwest::Client::new();
    server.terminate();
    while status_of(&http, &server, "/v2/health/ready").await != 503 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.stop().await;
}

/// With `--listen-when-ready` the ports open only after every model of the repository loaded:
/// a balancer never reaches a replica that would answer "not loaded".
#[tokio::test]
async fn listen_when_ready_opens_the_ports_after_loading() {
    let repository = temp_repository(&["mlp", "two_io"]);
    let Some(server) = start_server(repository.path(), Engine::Tract, &["--listen-when-ready"]) else {
        return;
    };
    let log = server.log();
    let listening = log.find("HTTP listening on").expect("the HTTP port is logged");
    for model in ["mlp", "two_io"] {
        let loaded =
            log.find(&format!("model={model} version=1 engine")).expect("the model's load is logged");
        assert!(loaded < listening, "{model} loaded after the port opened:\n{log}");
    }
    server.stop().await;
}

#[test]
fn drain_longer_than_the_shutdown_timeout_is_refused_at_start() {
    let repository = temp_repository(&["mlp"]);
    let log = start_error(repository.path(), &["--drain-seconds", "40", "--shutdown-timeout", "30"]);
    assert!(log.contains("--drain-seconds (40) is longer than --shutdown-timeout (30)"), "{log}");
}

#[test]
fn a_port_in_use_is_named_at_start() {
    let repository = temp_repository(&["mlp"]);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    let port = taken.local_addr().expect("local address").port().to_string();
    let log = start_error(repository.path(), &["--metrics-port", port.as_str()]);
    assert!(log.contains(&format!("cannot listen on 127.0.0.1:{port} (--metrics-port)")), "{log}");
    assert!(log.to_lowercase().contains("in use"), "{log}");
}
