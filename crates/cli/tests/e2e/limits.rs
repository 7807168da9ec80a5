//! Connection limits and early refusals (docs/reliability.md, "Limits and early refusals"): a
//! refusal sent before the body is read reaches a client that first sends its whole body (as
//! Python's `requests` and `urllib` do); a client slow to send its headers is cut while others
//! are served; `--max-connections` and `--grpc-max-concurrent-streams` hold the connection and
//! the stream past the limit until one ends.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_stream::wrappers::ReceiverStream;

use crate::client::{grpc, grpc_request, infer_path, metric_value, Contents};
use crate::errors::still_serves;
use crate::server::{Engine, Server};
use crate::tensors::case;
use crate::{start_server, temp_repository};

/// Far more than the kernel buffers of a loopback connection hold, so that a server that
/// closes without reading it makes the sender fail.
const LARGE_BODY: usize = 16 * 1024 * 1024;
/// How long a held connection or stream is watched to see that it is not served.
const HELD: Duration = Duration::from_secs(1);
/// How long a freed one may take to be served (a debug build on a busy machine).
const FREED: Duration = Duration::from_secs(20);

/// An HTTP/1.1 reply read off a socket.
struct RawReply {
    status_line: String,
    body: String,
}

/// Reads one reply (status line, headers, a Content-Length body) from `stream`.
async fn read_reply(stream: &mut TcpStream) -> std::io::Result<RawReply> {
    let mut reader = BufReader::new(stream);
    let mut status_line = String::new();
    reader.read_line(&mut status_line).await?;
    let mut length = 0;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).await? == 0 || line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).await?;
    Ok(RawReply {
        status_line: status_line.trim_end().to_string(),
        body: String::from_utf8_lossy(&body).into(),
    })
}

/// Sends `head` and then `body` in full, as a client that reads only once it has sent
/// everything, and reads the reply. A server that closed without draining makes the write or
/// the read fail; the error says which.
async fn send_all_then_read(addr: SocketAddr, head: &str, body: &[u8]) -> RawReply {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(head.as_bytes()).await.expect("send the request head");
    if let Err(e) = stream.write_all(body).await {
        panic!("sending the body failed ({e}): the server closed before the client could read its reply");
    }
    read_reply(&mut stream).await.unwrap_or_else(|e| panic!("reading the reply failed: {e}"))
}

/// A POST head with a Content-Length body of `length` bytes, and `extra` header lines.
fn post_head(addr: SocketAddr, path: &str, length: usize, extra: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {length}\r\n{extra}\r\n"
    )
}

/// 413, 404 and 401 refusals sent before the body is read are read whole by a client that
/// sends its 16 MiB body first, and the server serves on.
#[tokio::test]
async fn refusals_before_the_body_is_read_reach_the_client() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "limits-token-4d2c e2e\n").expect("write token file");
    let tokens = tokens.to_str().expect("UTF-8 path");
    let repository = temp_repository(&["mlp"]);
    let flags = ["--max-request-bytes", "8192", "--auth-token-file", tokens];
    let Some(server) = start_server(repository.path(), Engine::Tract, &flags) else { return };
    let addr = server.http_addr();
    let body = vec![b' '; LARGE_BODY];
    let auth = "Authorization: Bearer limits-token-4d2c\r\n";

    let cases = [
        ("over --max-request-bytes", infer_path("mlp"), auth, "413", "--max-request-bytes"),
        ("unknown model", infer_path("no_such_model"), auth, "404", "no_such_model"),
        ("no token", infer_path("mlp"), "", "401", "Authorization: Bearer"),
    ];
    for (what, path, extra, status, mention) in cases {
        let reply = send_all_then_read(addr, &post_head(addr, &path, body.len(), extra), &body).await;
        assert!(
            reply.status_line.starts_with(&format!("HTTP/1.1 {status} ")),
            "{what}: {}",
            reply.status_line
        );
        assert!(reply.body.contains(mention), "{what}: {}", reply.body);
    }

    // Chunked, with no Content-Length: refused once the limit is passed, mid-body.
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: {addr}\r\n{auth}Transfer-Encoding: chunked\r\n\r\n",
        infer_path("mlp")
    );
    let mut chunked = Vec::with_capacity(LARGE_BODY + 64 * 1024);
    for chunk in body.chunks(64 * 1024) {
        chunked.extend(format!("{:x}\r\n", chunk.len()).as_bytes());
        chunked.extend(chunk);
        chunked.extend(b"\r\n");
    }
    chunked.extend(b"0\r\n\r\n");
    let reply = send_all_then_read(addr, &head, &chunked).await;
    assert!(reply.status_line.starts_with("HTTP/1.1 413 "), "chunked: {}", reply.status_line);

    let http = reqwest::Client::new();
    let ready = http.get(server.url("/v2/health/ready")).send().await.expect("GET ready");
    assert_eq!(ready.status(), 200);
    server.stop().await;
}

/// The mlp server again, without tokens, for the refusal check over both protocols after.
#[tokio::test]
async fn the_server_serves_on_after_refusing_large_bodies() {
    let repository = temp_repository(&["mlp"]);
    // Room for the good requests of `still_serves`, far below the refused body.
    let flags = ["--max-request-bytes", "65536"];
    let Some(server) = start_server(repository.path(), Engine::Tract, &flags) else { return };
    let addr = server.http_addr();
    let body = vec![b' '; LARGE_BODY];
    for _ in 0..3 {
        let reply =
            send_all_then_read(addr, &post_head(addr, &infer_path("mlp"), body.len(), ""), &body).await;
        assert!(reply.status_line.starts_with("HTTP/1.1 413 "), "{}", reply.status_line);
    }
    still_serves(&server).await;
    server.stop().await;
}

/// A client that sends its headers a byte at a time is disconnected after
/// `--header-read-timeout-ms`, while another client is served meanwhile.
#[tokio::test]
async fn a_client_slow_to_send_its_headers_is_cut_while_others_are_served() {
    let repository = temp_repository(&["mlp"]);
    let flags = ["--header-read-timeout-ms", "1000"];
    let Some(server) = start_server(repository.path(), Engine::Tract, &flags) else { return };
    let http = reqwest::Client::new();
    let mut slow = TcpStream::connect(server.http_addr()).await.expect("connect");
    slow.write_all(b"GET /v2/health/live HTTP/1.1\r\nHost: slow\r\nX-Slow: ").await.expect("send");
    let started = Instant::now();
    let (mut cut, mut others_served) = (None, false);
    let mut buffer = [0u8; 1024];
    while cut.is_none() && started.elapsed() < FREED {
        if let Err(e) = slow.write_all(b"x").await {
            cut = Some(format!("write failed: {e}"));
            break;
        }
        match tokio::time::timeout(Duration::from_millis(100), slow.read(&mut buffer)).await {
            Ok(Ok(0)) => cut = Some("closed".to_string()),
            Ok(Ok(n)) => {
                cut = Some(format!("answered {:?} and closed", String::from_utf8_lossy(&buffer[..n])))
            }
            Ok(Err(e)) => cut = Some(format!("read failed: {e}")),
            Err(_) => {}
        }
        if !others_served {
            let live = http.get(server.url("/v2/health/live")).send().await.expect("GET live");
            others_served = live.status() == 200;
        }
    }
    let elapsed = started.elapsed();
    let cut = cut.unwrap_or_else(|| panic!("a client dribbling its headers for {elapsed:?} was never cut"));
    assert!(elapsed >= Duration::from_millis(900), "cut after {elapsed:?} ({cut}), before the timeout");
    assert!(others_served, "no other client was served while the slow one was connected");
    server.stop().await;
}

/// One GET on a kept-alive connection; returns the status line and body.
async fn get_on(stream: &mut TcpStream, path: &str) -> std::io::Result<RawReply> {
    stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: rtserve\r\n\r\n").as_bytes()).await?;
    read_reply(stream).await
}

/// With `--max-connections 2`, a third connection is not served while two are open, and is
/// served once one closes; the wait is counted.
#[tokio::test]
async fn a_connection_past_max_connections_waits_for_one_to_close() {
    let repository = temp_repository(&["mlp"]);
    let Some(server) = start_server(repository.path(), Engine::Tract, &["--max-connections", "2"]) else {
        return;
    };
    // The harness's readiness probes close their connections; let their slots free.
    let mut first = held_connection(&server).await;
    let mut second = held_connection(&server).await;
    assert!(get_on(&mut first, "/v2/health/live").await.expect("first").status_line.contains(" 200 "));
    assert!(get_on(&mut second, "/v2/health/live").await.expect("second").status_line.contains(" 200 "));

    let mut third = TcpStream::connect(server.http_addr()).await.expect("the kernel queues the third");
    let waiting = tokio::time::timeout(HELD, get_on(&mut third, "/v2/health/live")).await;
    assert!(
        waiting.is_err(),
        "the third connection was served while two were open: {:?}",
        waiting.map(|r| r.map(|r| r.status_line))
    );

    drop(first);
    let served = tokio::time::timeout(FREED, read_reply(&mut third)).await;
    let reply = served.expect("the third connection is served once one closes").expect("reply");
    assert!(reply.status_line.contains(" 200 "), "{}", reply.status_line);

    let metrics = get_on(&mut third, "/metrics").await.expect("metrics").body;
    let waits = metric_value(&metrics, "rtserve_connection_limit_waits_total", &[("protocol", "http")]);
    assert!(waits.is_some_and(|w| w >= 1.0), "waits: {waits:?}");
    let open = metric_value(&metrics, "rtserve_connections_open", &[("protocol", "http")]);
    assert!(open.is_some_and(|o| (1.0..=2.0).contains(&o)), "open: {open:?}");
    drop((second, third));
    server.stop().await;
}

/// A connection that the server has accepted: its first request is answered (retrying while
/// the slots of the harness's readiness probes are still being freed).
async fn held_connection(server: &Server) -> TcpStream {
    let deadline = Instant::now() + FREED;
    loop {
        let mut stream = TcpStream::connect(server.http_addr()).await.expect("connect");
        if let Ok(Ok(reply)) = tokio::time::timeout(HELD, get_on(&mut stream, "/v2/health/live")).await {
            assert!(reply.status_line.contains(" 200 "), "{}", reply.status_line);
            return stream;
        }
        assert!(Instant::now() < deadline, "no connection slot came free");
    }
}

/// With `--grpc-max-concurrent-streams 2`, a third stream on the same connection is not opened
/// while two are open, and is served once one ends.
#[tokio::test]
async fn a_grpc_stream_past_the_limit_waits_for_one_to_end() {
    let repository = temp_repository(&["mlp"]);
    let flags = ["--grpc-max-concurrent-streams", "2"];
    let Some(server) = start_server(repository.path(), Engine::Tract, &flags) else { return };
    let client = grpc(&server).await;
    let inputs = case("mlp").inputs;
    let open = |id: &str| {
        let (sender, receiver) = tokio::sync::mpsc::channel(4);
        let mut request = grpc_request("mlp", &inputs, Contents::Raw);
        request.id = id.to_string();
        let mut client = client.clone();
        let call = tokio::spawn(async move {
            let mut responses = client.model_stream_infer(ReceiverStream::new(receiver)).await?.into_inner();
            let first = responses.message().await?;
            Ok::<_, tonic::Status>((first, responses))
        });
        (sender, request, call)
    };
    let mut streams = Vec::new();
    for id in ["one", "two"] {
        let (sender, request, call) = open(id);
        sender.send(request).await.expect("send");
        let (first, responses) = call.await.expect("task").expect("stream");
        assert_eq!(first.expect("a reply").infer_response.expect("response").id, id);
        streams.push((sender, responses));
    }
    let (sender, request, mut third) = open("three");
    sender.send(request).await.expect("send");
    let waiting = tokio::time::timeout(HELD, &mut third).await;
    assert!(waiting.is_err(), "a third stream was served while two were open");

    drop(streams.remove(0));
    let served = tokio::time::timeout(FREED, third).await.expect("the third stream is served once one ends");
    let (first, _) = served.expect("task").expect("stream");
    assert_eq!(first.expect("a reply").infer_response.expect("response").id, "three");
    drop(streams);
    server.stop().await;
}
