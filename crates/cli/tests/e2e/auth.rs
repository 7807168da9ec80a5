//! Bearer tokens (`--auth-token-file`, `--admin-token-file`, `--metrics-auth`): missing, wrong
//! and valid tokens over HTTP and gRPC, inference against admin tokens on the repository API,
//! open health probes, refusals counted and logged without the token, SIGHUP reload, and bad
//! token files as start-up errors.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use rtserve_server::proto::{
    ModelMetadataRequest, RepositoryIndexRequest, RepositoryModelUnloadRequest, ServerLiveRequest,
    ServerReadyRequest,
};
use serde_json::json;
use tonic::Code;

use crate::client::{assert_grpc_error, grpc, grpc_request, infer_path, json_body, metric_value, Contents};
use crate::server::{Engine, Server};
use crate::tensors::case;
use crate::{start_error, start_server, temp_repository};

const CLIENT_TOKEN: &str = "client-secret-0f3a9c";
const ADMIN_TOKEN: &str = "admin-secret-77d1e2";

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write token file");
    path
}

/// A request builder with `Authorization: Bearer token` when a token is given.
fn bearer(request: reqwest::RequestBuilder, token: Option<&str>) -> reqwest::RequestBuilder {
    match token {
        Some(token) => request.bearer_auth(token),
        None => request,
    }
}

/// A gRPC request with `authorization: Bearer token` metadata when a token is given.
fn with_token<T>(message: T, token: Option<&str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(token) = token {
        let value = format!("Bearer {token}").parse().expect("ASCII metadata");
        request.metadata_mut().insert("authorization", value);
    }
    request
}

/// The status and body text of one request.
async fn status(request: reqwest::RequestBuilder) -> (u16, String) {
    let reply = crate::client::send(request).await;
    (reply.status.as_u16(), String::from_utf8_lossy(&reply.body).into_owned())
}

#[tokio::test]
async fn tokens_guard_http_and_grpc_and_admin_tokens_guard_the_repository() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let tokens = write(dir.path(), "tokens", &format!("# clients\n\n{CLIENT_TOKEN} client-app\n"));
    let admins = write(dir.path(), "admins", &format!("{ADMIN_TOKEN} ops\n"));
    let repository = temp_repository(&["two_io"]);
    let flags = [
        "--auth-token-file",
        tokens.to_str().expect("UTF-8 path"),
        "--admin-token-file",
        admins.to_str().expect("UTF-8 path"),
    ];
    let Some(server) = start_server(repository.path(), Engine::Tract, &flags) else { return };
    let http = reqwest::Client::new();
    let url = |path: &str| server.url(path);

    // Probes, the static pages and /metrics (no --metrics-auth) are open.
    for path in ["/v2/health/live", "/v2/health/ready", "/", "/openapi.json", "/metrics"] {
        assert_eq!(status(http.get(url(path))).await.0, 200, "{path}");
    }

    // Metadata and inference: 401 without a token or with a wrong one, 200 with either kind.
    let reply = crate::client::send(http.get(url("/v2/models/two_io"))).await;
    reply.assert_error(401, &["Authorization: Bearer"]);
    let challenge = reply.headers.get("www-authenticate").expect("401 carries WWW-Authenticate");
    assert!(challenge.to_str().expect("ASCII").starts_with("Bearer"), "{challenge:?}");
    let reply = crate::client::send(bearer(http.get(url("/v2/models/two_io")), Some("wrong"))).await;
    reply.assert_error(401, &["not valid"]);
    for token in [CLIENT_TOKEN, ADMIN_TOKEN] {
        let (code, body) = status(bearer(http.get(url("/v2/models/two_io")), Some(token))).await;
        assert_eq!(code, 200, "{body}");
    }
    let body = json_body(&case("two_io").inputs);
    let (code, _) = status(http.post(url(&infer_path("two_io"))).json(&body)).await;
    assert_eq!(code, 401);
    let infer = http.post(url(&infer_path("two_io"))).json(&body);
    let (code, text) = status(bearer(infer, Some(CLIENT_TOKEN))).await;
    assert_eq!(code, 200, "{text}");
    assert_eq!(status(http.get(url("/v2/status"))).await.0, 401);

    // The repository API: admin tokens only.
    let index = || http.post(url("/v2/repository/index")).json(&json!({}));
    assert_eq!(status(index()).await.0, 401);
    assert_eq!(status(bearer(index(), Some("wrong"))).await.0, 401);
    let reply = crate::client::send(bearer(index(), Some(CLIENT_TOKEN))).await;
    reply.assert_error(403, &["client-app", "admin"]);
    assert_eq!(status(bearer(index(), Some(ADMIN_TOKEN))).await.0, 200);
    let unload = http.post(url("/v2/repository/models/two_io/unload")).json(&json!({}));
    assert_eq!(status(bearer(unload, Some(CLIENT_TOKEN))).await.0, 403);

    // gRPC: the same rules on the authorization metadata.
    let mut client = grpc(&server).await;
    client.server_live(ServerLiveRequest {}).await.expect("ServerLive is open");
    client.server_ready(ServerReadyRequest {}).await.expect("ServerReady is open");
    let metadata = || ModelMetadataRequest { name: "two_io".into(), version: String::new() };
    assert_grpc_error(
        client.model_metadata(with_token(metadata(), None)).await,
        Code::Unauthenticated,
        &["Authorization: Bearer"],
    );
    assert_grpc_error(
        client.model_metadata(with_token(metadata(), Some("wrong"))).await,
        Code::Unauthenticated,
        &["not valid"],
    );
    client
        .model_metadata(with_token(metadata(), Some(CLIENT_TOKEN)))
        .await
        .expect("ModelMetadata with a token");
    let infer = || grpc_request("two_io", &case("two_io").inputs, Contents::Raw);
    assert_grpc_error(client.model_infer(with_token(infer(), None)).await, Code::Unauthenticated, &[]);
    client.model_infer(with_token(infer(), Some(CLIENT_TOKEN))).await.expect("ModelInfer with a token");
    let index = || RepositoryIndexRequest { repository_name: String::new(), ready: false };
    assert_grpc_error(client.repository_index(with_token(index(), None)).await, Code::Unauthenticated, &[]);
    assert_grpc_error(
        client.repository_index(with_token(index(), Some(CLIENT_TOKEN))).await,
        Code::PermissionDenied,
        &["client-app", "admin"],
    );
    client.repository_index(with_token(index(), Some(ADMIN_TOKEN))).await.expect("RepositoryIndex as admin");
    let unload = RepositoryModelUnloadRequest {
        repository_name: String::new(),
        model_name: "two_io".into(),
        parameters: Default::default(),
    };
    assert_grpc_error(
        client.repository_model_unload(with_token(unload, Some(CLIENT_TOKEN))).await,
        Code::PermissionDenied,
        &[],
    );
    // Nothing the client token tried changed what is served.
    let infer = http.post(url(&infer_path("two_io"))).json(&body);
    assert_eq!(status(bearer(infer, Some(CLIENT_TOKEN))).await.0, 200);

    // Refusals are counted by protocol and reason.
    let metrics = status(http.get(url("/metrics"))).await.1;
    let count = |protocol: &str, reason: &str| {
        let labels = [("protocol", protocol), ("reason", reason)];
        metric_value(&metrics, "rtserve_auth_failures_total", &labels).unwrap_or(0.0)
    };
    assert_eq!(count("http", "missing"), 4.0, "{metrics}");
    assert_eq!(count("http", "invalid"), 2.0);
    assert_eq!(count("http", "forbidden"), 2.0);
    assert_eq!(count("grpc", "missing"), 3.0);
    assert_eq!(count("grpc", "invalid"), 1.0);
    assert_eq!(count("grpc", "forbidden"), 2.0);

    // The log names the token, never shows it.
    let log = server.log();
    assert!(log.contains("client-app"), "the forbidden call names its token:\n{log}");
    assert!(!log.contains(CLIENT_TOKEN) && !log.contains(ADMIN_TOKEN), "a token leaked into the log:\n{log}");
    server.stop().await;
}

/// Waits until the server's log holds `text` `times` times.
async fn wait_for_log(server: &Server, text: &str, times: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while server.log().matches(text).count() < times {
        assert!(Instant::now() < deadline, "the log never said '{text}' {times} times:\n{}", server.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn sighup_rereads_the_token_file_and_a_bad_file_keeps_the_tokens() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let tokens = write(dir.path(), "tokens", "old-token-1234\n");
    let repository = temp_repository(&["two_io"]);
    let flags = ["--auth-token-file", tokens.to_str().expect("UTF-8 path"), "--metrics-auth"];
    let Some(server) = start_server(repository.path(), Engine::Tract, &flags) else { return };
    let http = reqwest::Client::new();
    let metadata = |token: &str| bearer(http.get(server.url("/v2/models/two_io")), Some(token));

    assert_eq!(status(metadata("old-token-1234")).await.0, 200);
    // --metrics-auth: /metrics needs a token; without --admin-token-file the repository API
    // is refused to every token.
    assert_eq!(status(http.get(server.url("/metrics"))).await.0, 401);
    assert_eq!(status(bearer(http.get(server.url("/metrics")), Some("old-token-1234"))).await.0, 200);
    let index =
        bearer(http.post(server.url("/v2/repository/index")).json(&json!({})), Some("old-token-1234"));
    let reply = crate::client::send(index).await;
    reply.assert_error(403, &["--admin-token-file"]);

    write(dir.path(), "tokens", "new-token-5678 rotated\n");
    server.signal(Signal::SIGHUP);
    wait_for_log(&server, "token files reread", 1).await;
    assert_eq!(status(metadata("old-token-1234")).await.0, 401);
    assert_eq!(status(metadata("new-token-5678")).await.0, 200);

    // A file that no longer parses is logged, and the tokens in force stay.
    write(dir.path(), "tokens", "# nothing left\n");
    server.signal(Signal::SIGHUP);
    wait_for_log(&server, "the tokens in force are kept", 1).await;
    assert!(server.log().contains("holds no token"), "{}", server.log());
    assert_eq!(status(metadata("new-token-5678")).await.0, 200);
    server.stop().await;
}

#[test]
fn bad_token_files_are_start_up_errors() {
    let repository = temp_repository(&["two_io"]);
    let dir = tempfile::tempdir().expect("temporary folder");
    let missing = dir.path().join("missing");
    let log = start_error(repository.path(), &["--auth-token-file", missing.to_str().expect("UTF-8 path")]);
    assert!(log.contains("cannot read token file") && log.contains("--auth-token-file"), "{log}");

    let empty = write(dir.path(), "empty", "# no tokens yet\n\n");
    let log = start_error(repository.path(), &["--admin-token-file", empty.to_str().expect("UTF-8 path")]);
    assert!(log.contains("holds no token") && log.contains("--admin-token-file"), "{log}");

    let malformed = write(dir.path(), "malformed", "good-token\nbad\u{7f}token\n");
    let log = start_error(repository.path(), &["--auth-token-file", malformed.to_str().expect("UTF-8 path")]);
    assert!(log.contains("line 2") && log.contains("visible ASCII"), "{log}");

    let log = start_error(repository.path(), &["--metrics-auth"]);
    assert!(log.contains("--metrics-auth needs --auth-token-file"), "{log}");
}
