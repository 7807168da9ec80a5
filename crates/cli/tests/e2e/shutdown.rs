//! Graceful shutdown: after SIGTERM the server stops accepting, finishes the requests in flight
//! over both protocols, and exits 0.

use std::time::{Duration, Instant};

use rtserve_server::proto::ModelInferRequest;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_stream::wrappers::ReceiverStream;

use crate::client::{grpc, grpc_outputs, grpc_request, json_body, Contents};
use crate::server::{Engine, Server};
use crate::tensors::{assert_matches_reference, case, Case, Tensor};
use crate::{start_server, temp_repository};

crate::engine_tests!(sigterm_finishes_requests_in_flight);

/// How long the server may take to answer `Expect: 100-continue`.
const INTERIM_WITHIN: Duration = Duration::from_secs(10);

/// How long the listener may stay open after SIGTERM.
const STOP_ACCEPTING_WITHIN: Duration = Duration::from_secs(10);

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

    // New connections are refused once the listener closes, while the requests above go on.
    let deadline = Instant::now() + STOP_ACCEPTING_WITHIN;
    while TcpStream::connect(server.http_addr()).await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "the HTTP listener still accepts {STOP_ACCEPTING_WITHIN:?} after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let (status, answer) = finish_http_request(http_request, &body).await;
    assert_eq!(status, 200, "the in-flight HTTP request completes: {answer}");
    let outputs: Vec<Tensor> =
        answer["outputs"].as_array().expect("outputs").iter().map(Tensor::from_json).collect();
    assert_matches_reference(&case, &outputs, "HTTP request in flight at SIGTERM");

    requests.send(stream_request(&case, "after")).await.expect("queue request");
    let second = responses.message().await.expect("stream message").expect("an answer after SIGTERM");
    assert_eq!(second.error_message, "");
    let response = second.infer_response.expect("infer_response");
    assert_eq!(response.id, "after");
    assert_matches_reference(&case, &grpc_outputs(&response), "gRPC stream open at SIGTERM");
    drop(requests);
    assert!(responses.message().await.expect("clean end of stream").is_none());

    server.wait_for_clean_exit().await;
}
