//! Handler-level tests: the application from [`app`] driven with `oneshot`, no socket. The
//! repository is `examples/model_repository` on tract, with `two_io` loaded (`a + b`, `a * b`).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use rtserve_core::{CacheOptions, InferError, PredictionCache, RejectReason, SchedulerOptions};
use serde_json::{json, Value};
use tower::ServiceExt;

use super::{app, HEADER_LENGTH};
use crate::auth::{Auth, AuthConfig};
use crate::metrics::Metrics;
use crate::preprocess::ImagePool;
use crate::repository::{GpuDefaults, ModelControl, ModelRepository, Serving};
use crate::scrape::ScrapeCollector;
use crate::state::ServerState;
use crate::ServerError;
use rtserve_engines::{EngineChoice, Engines};

/// A ready server state set up as `serve` does (the scrape-time collector registered), with
/// `two_io` loaded and requests limited to `max_request_bytes`.
async fn state(max_request_bytes: usize) -> Arc<ServerState> {
    state_with_auth(max_request_bytes, Auth::disabled()).await
}

/// [`state`] checking bearer tokens with `auth`.
async fn state_with_auth(max_request_bytes: usize, auth: Auth) -> Arc<ServerState> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/model_repository");
    let metrics = Arc::new(Metrics::new().expect("metrics"));
    let cache = PredictionCache::new(CacheOptions::default()).expect("cache");
    let serving = Serving {
        scheduling: SchedulerOptions { warm_up_rounds: 0, ..SchedulerOptions::default() },
        stages: metrics.stages(),
        cache: cache.clone(),
        images: Arc::new(ImagePool::new(1, 1 << 20).expect("image pool")),
        loads: metrics.model_loads(),
        gpus: GpuDefaults::default(),
    };
    let engines = Engines::new(EngineChoice::Tract, None).expect("tract");
    let repository = Arc::new(ModelRepository::new(vec![root], engines, serving, ModelControl::default()));
    metrics.register(Box::new(ScrapeCollector::new(repository.clone(), cache))).expect("collector");
    repository.load("two_io").await.expect("two_io loads");
    let state = Arc::new(ServerState::new(repository, max_request_bytes, metrics).with_auth(Arc::new(auth)));
    state.set_ready();
    state
}

/// Sends one request; returns the status, the `Retry-After` header and the body as JSON (or
/// `null` when it is not JSON).
async fn send(state: &Arc<ServerState>, request: Request<Body>) -> (StatusCode, Option<String>, Value) {
    let response = app(state.clone()).oneshot(request).await.expect("infallible");
    let status = response.status();
    let retry_after =
        response.headers().get(header::RETRY_AFTER).map(|v| v.to_str().expect("ascii").to_string());
    let body = axum::body::to_bytes(response.into_body(), usize::MAX).await.expect("body");
    (status, retry_after, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

fn post(uri: &str, body: Vec<u8>) -> Request<Body> {
    Request::post(uri)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONTENT_LENGTH, body.len())
        .body(Body::from(body))
        .expect("request")
}

fn two_io_request(a: [f32; 4], b: [f32; 4]) -> Vec<u8> {
    let tensor =
        |name: &str, data: [f32; 4]| json!({"name": name, "shape": [1, 4], "datatype": "FP32", "data": data});
    serde_json::to_vec(&json!({"inputs": [tensor("a", a), tensor("b", b)]})).expect("json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statuses_follow_the_error_and_the_server_keeps_serving() {
    let state = state(1 << 16).await;
    let infer = "/v2/models/two_io/infer";
    let (status, _, body) =
        send(&state, post(infer, two_io_request([1., 2., 3., 4.], [10., 20., 30., 40.]))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let sum = body["outputs"].as_array().expect("outputs").iter().find(|o| o["name"] == "sum").expect("sum");
    assert_eq!(sum["data"], json!([11.0, 22.0, 33.0, 44.0]));

    let cases: Vec<(Request<Body>, StatusCode, &str)> = vec![
        (post("/v2/models/nope/infer", two_io_request([0.; 4], [0.; 4])), StatusCode::NOT_FOUND, "unknown model 'nope'"),
        (post("/v2/models/two_io/versions/7/infer", two_io_request([0.; 4], [0.; 4])), StatusCode::NOT_FOUND, "version '7'"),
        (post(infer, b"{\"inputs\": [".to_vec()), StatusCode::BAD_REQUEST, ""),
        (
            post(infer, serde_json::to_vec(&json!({"inputs": [{"name": "a", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]})).expect("json")),
            StatusCode::BAD_REQUEST,
            "",
        ),
        (
            Request::post(infer).header(HEADER_LENGTH, "many").body(Body::from("{}")).expect("request"),
            StatusCode::BAD_REQUEST,
            "Inference-Header-Content-Length",
        ),
        (Request::get("/v3/anything").body(Body::empty()).expect("request"), StatusCode::NOT_FOUND, "no such endpoint"),
    ];
    for (request, want, names) in cases {
        let uri = request.uri().to_string();
        let (status, retry_after, body) = send(&state, request).await;
        assert_eq!(status, want, "{uri}: {body}");
        assert_eq!(retry_after, None, "{uri}");
        let message = body["error"].as_str().unwrap_or_default();
        assert!(message.contains(names), "{uri}: '{message}' should name '{names}'");
    }
    // Still serving after every refusal.
    let (status, _, _) = send(&state, post(infer, two_io_request([0.; 4], [1.; 4]))).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_limit_is_413_whether_or_not_it_says_its_length() {
    let state = state(64).await;
    let big = two_io_request([1.; 4], [2.; 4]);
    assert!(big.len() > 64);
    let (status, _, body) = send(&state, post("/v2/models/two_io/infer", big.clone())).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert!(body["error"].as_str().unwrap_or_default().contains("--max-request-bytes"), "{body}");
    // Streamed without a Content-Length: the limit is enforced while reading.
    let chunked = Request::post("/v2/models/two_io/infer").body(Body::from(big)).expect("request");
    let (status, _, _) = send(&state, chunked).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_and_metrics_answer_through_the_router() {
    let state = state(1 << 16).await;
    let get = |uri: &str| Request::get(uri).body(Body::empty()).expect("request");
    assert_eq!(send(&state, get("/v2/health/ready")).await.0, StatusCode::OK);
    assert_eq!(send(&state, get("/v2/models/two_io/ready")).await.0, StatusCode::OK);
    let response = app(state.clone()).oneshot(get("/metrics")).await.expect("infallible");
    assert_eq!(response.status(), StatusCode::OK);
    let text = axum::body::to_bytes(response.into_body(), usize::MAX).await.expect("body");
    let text = String::from_utf8(text.to_vec()).expect("utf-8");
    // A family from the scrape-time collector registered beside the request histograms.
    assert!(text.contains("rtserve_model_loaded{model=\"two_io\",version=\"1\"} 1"), "{text}");
    state.begin_drain();
    assert_eq!(send(&state, get("/v2/health/ready")).await.0, StatusCode::SERVICE_UNAVAILABLE);
}

#[test]
fn overload_answers_429_with_retry_after_in_whole_seconds_rounded_up() {
    let rejected = |retry_after: Duration| {
        ServerError::Infer(InferError::Rejected {
            model: "m".into(),
            reason: RejectReason::QueueFull { capacity: 4 },
            retry_after,
        })
    };
    for (wait, seconds) in
        [(Duration::from_millis(1), "1"), (Duration::from_millis(1500), "2"), (Duration::from_secs(3), "3")]
    {
        let response = axum::response::IntoResponse::into_response(rejected(wait));
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], seconds, "{wait:?}");
    }
}

/// The paths the router matches, read from its `Debug` form (axum prints each path router's
/// `paths`; the fallback router after it is left out).
fn routed_paths(router: &axum::Router) -> BTreeSet<String> {
    let debug = format!("{router:?}");
    let routes = debug.split("fallback_router").next().unwrap_or_default();
    routes
        .split("RouteId(")
        .skip(1)
        .filter_map(|entry| {
            entry.split_once("): \"").and_then(|(_, rest)| rest.split_once('"')).map(|(p, _)| p.to_string())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_is_described_and_every_description_is_routed() {
    assert_routes_match_descriptions(&state(1 << 16).await, None).await;
}

/// An inference and an admin token file in a temporary folder, and `/metrics` behind them.
fn auth_for_tests() -> Auth {
    let dir = std::env::temp_dir().join(format!("rtserve-http-auth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temporary folder");
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("token file");
        Some(path)
    };
    let config = AuthConfig {
        token_file: write("tokens", "client-token client\n"),
        admin_token_file: write("admins", "admin-token ops\n"),
        metrics_auth: true,
    };
    Auth::load(config).expect("token files")
}

/// With tokens: the description declares the bearer scheme, and every operation that needs a
/// token says so and answers 401 without one (documented); with the admin token everything
/// is routed and described as without authentication.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tokens_protected_routes_answer_401_as_described() {
    let state = state_with_auth(1 << 16, auth_for_tests()).await;
    let description = assert_routes_match_descriptions(&state, Some("admin-token")).await;
    assert_eq!(description["components"]["securitySchemes"]["bearer"]["scheme"], json!("bearer"));
    for (path, item) in description["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().expect("path item") {
            let uri = path.replace("{model}", "nope").replace("{version}", "1");
            let request = Request::builder().method(method.to_uppercase().as_str()).uri(&uri);
            let (status, _, body) = send(&state, request.body(Body::empty()).expect("request")).await;
            let open = path.starts_with("/v2/health/") || !path.starts_with("/v2") && path != "/metrics";
            if open {
                assert_ne!(status, StatusCode::UNAUTHORIZED, "{method} {path} should be open");
                assert!(operation.get("security").is_none(), "{method} {path} declares security");
            } else {
                assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path}: {body}");
                assert_eq!(operation["security"], json!([{"bearer": []}]), "{method} {path}");
                assert!(operation["responses"]["401"].is_object(), "{method} {path} lacks 401");
                let admin = path.starts_with("/v2/repository/");
                assert_eq!(operation["responses"]["403"].is_object(), admin, "{method} {path}: 403");
            }
        }
    }
    let request = Request::post("/v2/repository/index").header(header::AUTHORIZATION, "Bearer client-token");
    let (status, _, body) = send(&state, request.body(Body::empty()).expect("request")).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body["error"].as_str().is_some_and(|e| e.contains("'client'")), "{body}");
}

/// Checks the description against the router (sending `token` when given); returns the
/// description.
async fn assert_routes_match_descriptions(state: &Arc<ServerState>, token: Option<&str>) -> Value {
    let with_token = |builder: axum::http::request::Builder| match token {
        Some(token) => builder.header(header::AUTHORIZATION, format!("Bearer {token}")),
        None => builder,
    };
    let state = state.clone();
    let (status, _, description) =
        send(&state, with_token(Request::get("/openapi.json")).body(Body::empty()).expect("request")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(description["openapi"], json!("3.1.0"));
    let paths = description["paths"].as_object().expect("paths");
    let described: BTreeSet<String> = paths.keys().cloned().collect();
    assert_eq!(routed_paths(&app(state.clone())), described, "the router's paths against the description's");

    let methods = [Method::GET, Method::POST, Method::PUT, Method::DELETE, Method::PATCH];
    for (path, item) in paths {
        // A model that does not exist: every handler answers for itself, none changes anything.
        let uri = path.replace("{model}", "nope").replace("{version}", "1");
        for method in &methods {
            let operation = item.get(method.as_str().to_ascii_lowercase());
            let request = with_token(Request::builder().method(method).uri(&uri));
            let (status, _, body) = send(&state, request.body(Body::empty()).expect("request")).await;
            match operation {
                Some(operation) => {
                    let mut declared: Vec<&str> = operation["parameters"]
                        .as_array()
                        .map(|ps| {
                            ps.iter()
                                .filter(|p| p["in"] == "path")
                                .filter_map(|p| p["name"].as_str())
                                .collect()
                        })
                        .unwrap_or_default();
                    declared.sort_unstable();
                    let mut templated: Vec<&str> = path
                        .split('{')
                        .skip(1)
                        .filter_map(|part| part.split_once('}').map(|(name, _)| name))
                        .collect();
                    templated.sort_unstable();
                    assert_eq!(declared, templated, "{method} {path}: path parameters against the path");
                    assert_ne!(
                        status,
                        StatusCode::METHOD_NOT_ALLOWED,
                        "{method} {uri} is described but not routed"
                    );
                    let error = body["error"].as_str().unwrap_or_default();
                    assert!(
                        !error.starts_with("no such endpoint"),
                        "{method} {uri} fell through to the fallback"
                    );
                    let documented = &operation["responses"][status.as_str()];
                    assert!(
                        documented.is_object(),
                        "{method} {uri} answered {status}, which its description lacks"
                    );
                }
                None => assert_eq!(
                    status,
                    StatusCode::METHOD_NOT_ALLOWED,
                    "{method} {uri} is routed but not described"
                ),
            }
        }
    }
    description
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_feed_reads_what_the_metrics_keep() {
    let state = state(1 << 16).await;
    for _ in 0..3 {
        let (status, _, _) =
            send(&state, post("/v2/models/two_io/infer", two_io_request([1.; 4], [2.; 4]))).await;
        assert_eq!(status, StatusCode::OK);
    }
    let (status, _, _) = send(&state, post("/v2/models/two_io/infer", b"{".to_vec())).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _, feed) =
        send(&state, Request::get("/v2/status").body(Body::empty()).expect("request")).await;
    assert_eq!(status, StatusCode::OK);
    let models = feed["models"].as_array().expect("models");
    let two_io = models.iter().find(|m| m["name"] == "two_io").expect("two_io");
    assert_eq!(
        (&two_io["state"], &two_io["engine"], &two_io["version"]),
        (&json!("READY"), &json!("tract"), &json!("1"))
    );
    assert_eq!(two_io["requests"], json!({"success": 3, "invalid": 1}));
    assert_eq!(two_io["latency"]["count"], json!(3), "successful requests only");
    let cumulative = two_io["latency"]["cumulative"].as_array().expect("buckets");
    assert_eq!(cumulative.len(), two_io["latency"]["bounds"].as_array().expect("bounds").len());
    assert_eq!(cumulative.last(), Some(&json!(3)), "every request under the last bound (10 s)");
    assert_eq!(two_io["batch_size"]["count"], json!(3));
    // Models on disk that are not loaded are listed with their state.
    let mlp = models.iter().find(|m| m["name"] == "mlp").expect("mlp");
    assert_eq!((&mlp["state"], &mlp["engine"]), (&json!("UNAVAILABLE"), &json!("")));
}

#[tokio::test]
async fn the_pages_come_from_the_binary_and_forbid_other_origins() {
    let state = state(1 << 16).await;
    for (uri, content_type) in [
        ("/", "text/html"),
        ("/docs", "text/html"),
        ("/docs/swagger-ui-bundle.js", "text/javascript"),
        ("/docs/swagger-ui.css", "text/css"),
    ] {
        let response = app(state.clone())
            .oneshot(Request::get(uri).body(Body::empty()).expect("request"))
            .await
            .expect("infallible");
        assert_eq!(response.status(), StatusCode::OK, "{uri}");
        let headers = response.headers();
        assert!(headers[header::CONTENT_TYPE].to_str().expect("ascii").starts_with(content_type), "{uri}");
        assert!(
            headers[header::CONTENT_SECURITY_POLICY]
                .to_str()
                .expect("ascii")
                .starts_with("default-src 'self'"),
            "{uri}"
        );
    }
}
