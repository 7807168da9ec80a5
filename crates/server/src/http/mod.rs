//! The KServe v2 HTTP front end (axum).

mod api;
mod chunks;
mod classify;
pub(crate) mod connections;
pub mod json;
mod pages;
mod repository;
mod status;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode, Version};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use rtserve_core::InferRequest;
use serde_json::Value;
use utoipa::{OpenApi, ToSchema};
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt};
use utoipa_axum::routes;

use self::api::{ApiDoc, ErrorBody, ServerMetadata};
use self::chunks::chunked_body;
use crate::access_log::ServedBy;
use crate::metrics::{Protocol, RequestTimer};
use crate::model::Served;
use crate::state::{ServerState, EXTENSIONS, SERVER_NAME, SERVER_VERSION};
use crate::triton_config::{config_json, metadata, ModelMetadata};
use crate::triton_stats::stats_json;
use crate::ServerError;

/// The header that gives the JSON part's length in a binary-extension body.
const HEADER_LENGTH: &str = "inference-header-content-length";

type Shared = State<Arc<ServerState>>;

/// The HTTP application. Tests call it with `oneshot`; `serve` binds it to a socket.
pub fn app(state: Arc<ServerState>) -> Router {
    let (router, mut description) = described_routes(state.max_request_bytes).split_for_parts();
    if state.auth.enabled() {
        api::describe_bearer_auth(&mut description, |path| state.auth.http_access(path));
    }
    let description = OpenApiJson(Arc::new(description.to_pretty_json().unwrap_or_default()));
    let access_log = state.access_log;
    let router = router
        .fallback(not_found)
        .layer(Extension(description))
        .layer(middleware::from_fn_with_state(state.clone(), require_token))
        .layer(middleware::from_fn_with_state(state.clone(), close_when_draining))
        .with_state(state);
    // Outermost, so that refusals (401, 413) are logged too.
    if access_log {
        router.layer(middleware::from_fn(crate::access_log::http))
    } else {
        router
    }
}

/// Every route with its description: `routes!` registers each handler on the path and methods
/// of its `#[utoipa::path]`, and adds that description to the document.
fn described_routes(max_request_bytes: usize) -> OpenApiRouter<Arc<ServerState>> {
    let upload_limit = DefaultBodyLimit::max(max_request_bytes);
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(server_metadata))
        .routes(routes!(live))
        .routes(routes!(ready))
        .routes(routes!(model_metadata))
        .routes(routes!(version_metadata))
        .routes(routes!(model_ready))
        .routes(routes!(version_ready))
        .routes(routes!(model_config))
        .routes(routes!(version_config))
        .routes(routes!(all_model_stats))
        .routes(routes!(model_stats))
        .routes(routes!(version_stats))
        .routes(routes!(infer))
        .routes(routes!(version_infer))
        .routes(routes!(classify::classify).layer(upload_limit))
        .routes(routes!(classify::version_classify).layer(upload_limit))
        .routes(routes!(repository_index))
        .routes(routes!(repository::load_model).layer(upload_limit))
        .routes(routes!(repository::unload_model))
        .routes(routes!(metrics))
        .routes(routes!(status::status))
        .routes(routes!(pages::status_page))
        .routes(routes!(pages::docs_page))
        .routes(routes!(pages::swagger_ui_script))
        .routes(routes!(pages::swagger_ui_style))
        .routes(routes!(openapi_json))
}

/// The OpenAPI description as served, rendered once when the application is built.
#[derive(Clone)]
struct OpenApiJson(Arc<String>);

/// `GET /openapi.json`.
#[utoipa::path(get, path = "/openapi.json", tag = "pages",
    responses((status = 200, description = "This description (OpenAPI 3.1)", content_type = "application/json", body = Object)))]
async fn openapi_json(Extension(description): Extension<OpenApiJson>) -> Response {
    let json = HeaderValue::from_static("application/json");
    ([(header::CONTENT_TYPE, json)], description.0.as_str().to_owned()).into_response()
}

/// While the server drains, HTTP/1 replies say `Connection: close`: keep-alive clients and
/// balancers (nginx's upstream pool) reconnect, and so reach the other replicas, before the
/// listener closes instead of racing its close on an idle connection.
async fn close_when_draining(State(state): Shared, request: axum::extract::Request, next: Next) -> Response {
    let http1 = request.version() <= Version::HTTP_11;
    let mut response = next.run(request).await;
    if http1 && state.is_draining() {
        response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// Checks the bearer token for what the path needs (`crate::auth`): 401 with
/// `WWW-Authenticate: Bearer` or 403 before any handler runs.
async fn require_token(State(state): Shared, request: axum::extract::Request, next: Next) -> Response {
    let path = request.uri().path();
    let need = state.auth.http_access(path);
    let authorization = request.headers().get(header::AUTHORIZATION).map(HeaderValue::as_bytes);
    match state.authorize(Protocol::Http, path, need, authorization) {
        Ok(()) => next.run(request).await,
        Err(refused) => refused.into_response(),
    }
}

impl IntoResponse for ServerError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (status, Json(ErrorBody { error: self.client_message() })).into_response();
        if let Some(wait) = self.retry_after() {
            // Retry-After counts whole seconds: round up, at least 1, so a client never retries
            // too early.
            let seconds = (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1);
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if status == StatusCode::UNAUTHORIZED {
            let challenge = HeaderValue::from_static("Bearer realm=\"rtserve\"");
            response.headers_mut().insert(header::WWW_AUTHENTICATE, challenge);
        }
        response
    }
}

/// Path parameters: the model and, on versioned routes, the version (described on each route).
#[derive(serde::Deserialize)]
struct ModelPath {
    model: String,
    version: Option<String>,
}

async fn not_found() -> Response {
    let body =
        Json(ErrorBody { error: "no such endpoint; see the KServe v2 protocol (/v2/...) or /docs".into() });
    (StatusCode::NOT_FOUND, body).into_response()
}

/// `GET /v2`: the server's name, version and protocol extensions.
#[utoipa::path(get, path = "/v2", tag = "metadata", responses((status = 200, body = ServerMetadata)))]
async fn server_metadata() -> Json<ServerMetadata> {
    Json(ServerMetadata { name: SERVER_NAME, version: SERVER_VERSION, extensions: EXTENSIONS })
}

/// Liveness: 200 while the process serves HTTP.
#[utoipa::path(get, path = "/v2/health/live", tag = "health", responses((status = 200, description = "Live")))]
async fn live() -> StatusCode {
    StatusCode::OK
}

/// Readiness: 200 once start-up loading is done, 503 before and from a shutdown signal on.
#[utoipa::path(get, path = "/v2/health/ready", tag = "health",
    responses((status = 200, description = "Ready"), (status = 503, description = "Loading models, or draining after a shutdown signal")))]
async fn ready(State(state): Shared) -> StatusCode {
    if state.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

/// The model's inputs and outputs (`-1` for a dynamic dimension).
#[utoipa::path(get, path = "/v2/models/{model}", tag = "metadata", params(("model" = String, Path, description = "The model's name (its folder in the repository)")),
    responses(
        (status = 200, body = ModelMetadata),
        (status = 404, description = "Unknown model", body = ErrorBody),
        (status = 503, description = "The model is not loaded", body = ErrorBody)))]
async fn model_metadata(
    State(state): Shared,
    Path(path): Path<ModelPath>,
) -> Result<Json<ModelMetadata>, ServerError> {
    let model = state.repository.get(&path.model, path.version.as_deref())?;
    let versions = state.repository.versions(&path.model);
    Ok(Json(metadata(&model, &versions)))
}

/// One version's inputs and outputs.
#[utoipa::path(get, path = "/v2/models/{model}/versions/{version}", tag = "metadata", params(("model" = String, Path, description = "The model's name (its folder in the repository)"), ("version" = String, Path, description = "A loaded version of the model")),
    responses(
        (status = 200, body = ModelMetadata),
        (status = 404, description = "Unknown model or version", body = ErrorBody),
        (status = 503, description = "The model is not loaded", body = ErrorBody)))]
async fn version_metadata(state: Shared, path: Path<ModelPath>) -> Result<Json<ModelMetadata>, ServerError> {
    model_metadata(state, path).await
}

/// 200 when the model serves, 503 when it is not loaded.
#[utoipa::path(get, path = "/v2/models/{model}/ready", tag = "health", params(("model" = String, Path, description = "The model's name (its folder in the repository)")),
    responses(
        (status = 200, description = "The model serves"),
        (status = 404, description = "Unknown model", body = ErrorBody),
        (status = 503, description = "The model is not loaded")))]
async fn model_ready(State(state): Shared, Path(path): Path<ModelPath>) -> Result<StatusCode, ServerError> {
    let ready = state.model_ready(&path.model, path.version.as_deref())?;
    Ok(if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE })
}

/// 200 when this version serves, 503 when the model is not loaded.
#[utoipa::path(get, path = "/v2/models/{model}/versions/{version}/ready", tag = "health", params(("model" = String, Path, description = "The model's name (its folder in the repository)"), ("version" = String, Path, description = "A loaded version of the model")),
    responses(
        (status = 200, description = "The version serves"),
        (status = 404, description = "Unknown model or version", body = ErrorBody),
        (status = 503, description = "The model is not loaded")))]
async fn version_ready(state: Shared, path: Path<ModelPath>) -> Result<StatusCode, ServerError> {
    model_ready(state, path).await
}

/// Triton's model configuration, in its JSON form.
#[utoipa::path(get, path = "/v2/models/{model}/config", tag = "metadata", params(("model" = String, Path, description = "The model's name (its folder in the repository)")),
    responses(
        (status = 200, description = "Triton's ModelConfig in JSON", body = Object),
        (status = 404, description = "Unknown model", body = ErrorBody),
        (status = 503, description = "The model is not loaded", body = ErrorBody)))]
async fn model_config(State(state): Shared, Path(path): Path<ModelPath>) -> Result<Json<Value>, ServerError> {
    let model = state.repository.get(&path.model, path.version.as_deref())?;
    Ok(Json(config_json(&model.config)))
}

/// One version's configuration.
#[utoipa::path(get, path = "/v2/models/{model}/versions/{version}/config", tag = "metadata", params(("model" = String, Path, description = "The model's name (its folder in the repository)"), ("version" = String, Path, description = "A loaded version of the model")),
    responses(
        (status = 200, description = "Triton's ModelConfig in JSON", body = Object),
        (status = 404, description = "Unknown model or version", body = ErrorBody),
        (status = 503, description = "The model is not loaded", body = ErrorBody)))]
async fn version_config(state: Shared, path: Path<ModelPath>) -> Result<Json<Value>, ServerError> {
    model_config(state, path).await
}

/// Triton's statistics of every loaded model version.
#[utoipa::path(get, path = "/v2/models/stats", tag = "statistics",
    responses((status = 200, description = "Triton's statistics: `{\"model_stats\": [...]}`", body = Object)))]
async fn all_model_stats(State(state): Shared) -> Json<Value> {
    Json(stats_json(&state.repository.loaded()))
}

/// Triton's statistics of a model's loaded versions.
#[utoipa::path(get, path = "/v2/models/{model}/stats", tag = "statistics", params(("model" = String, Path, description = "The model's name (its folder in the repository)")),
    responses(
        (status = 200, description = "Triton's statistics: `{\"model_stats\": [...]}`", body = Object),
        (status = 404, description = "Unknown model", body = ErrorBody),
        (status = 503, description = "The model is not loaded", body = ErrorBody)))]
async fn model_stats(State(state): Shared, Path(path): Path<ModelPath>) -> Result<Json<Value>, ServerError> {
    let models = state.repository.select(&path.model, path.version.as_deref().unwrap_or_default())?;
    Ok(Json(stats_json(&models)))
}

/// Triton's statistics of one version.
#[utoipa::path(get, path = "/v2/models/{model}/versions/{version}/stats", tag = "statistics", params(("model" = String, Path, description = "The model's name (its folder in the repository)"), ("version" = String, Path, description = "A loaded version of the model")),
    responses(
        (status = 200, description = "Triton's statistics: `{\"model_stats\": [...]}`", body = Object),
        (status = 404, description = "Unknown model or version", body = ErrorBody),
        (status = 503, description = "The model is not loaded", body = ErrorBody)))]
async fn version_stats(state: Shared, path: Path<ModelPath>) -> Result<Json<Value>, ServerError> {
    model_stats(state, path).await
}

/// `GET /metrics`, in the Prometheus text format; docs/monitoring.md lists every metric.
#[utoipa::path(get, path = "/metrics", tag = "statistics",
    responses(
        (status = 200, description = "Prometheus text format 0.0.4", content_type = "text/plain", body = String),
        (status = 500, description = "The metrics could not be encoded", body = ErrorBody)))]
pub async fn metrics(State(state): Shared) -> Result<Response, ServerError> {
    let text = state.metrics.render()?;
    let content_type = HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8");
    Ok(([(header::CONTENT_TYPE, content_type)], text).into_response())
}

/// The operations port, `--metrics-port`: the metrics and the health probes, in plaintext even
/// with TLS on the other ports, so that Prometheus, kubelet probes and the container's
/// healthcheck need no client certificate.
pub fn metrics_app(state: Arc<ServerState>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), require_token))
        .with_state(state)
}

/// Inference with JSON tensors or the binary tensor data extension.
///
/// JSON: the body is an `InferRequest`. Binary: `Inference-Header-Content-Length` gives the
/// length of the JSON part, inputs with a `binary_data_size` parameter take their raw
/// little-endian data from what follows, in input order. Outputs come back as binary data
/// (`application/octet-stream`, the JSON part's length in `Inference-Header-Content-Length`)
/// when the request asks for it (`binary_data_output`, or `binary_data` per output).
#[utoipa::path(post, path = "/v2/models/{model}/infer", tag = "inference", params(("model" = String, Path, description = "The model's name (its folder in the repository)"), ("Inference-Header-Content-Length" = Option<u64>, Header, description = "Binary tensor data extension: the length of the JSON part of the body")),
    request_body(content(
        (json::JsonRequest = "application/json", example = json!({"inputs": [
            {"name": "a", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]},
            {"name": "b", "shape": [1, 4], "datatype": "FP32", "data": [10, 20, 30, 40]}]})),
        (Vec<u8> = "application/octet-stream"))),
    responses(
        (status = 200, description = "The outputs",
            headers(("Inference-Header-Content-Length" = u64, description = "Binary replies: the length of the JSON part")),
            content((json::JsonResponse = "application/json"), (Vec<u8> = "application/octet-stream"))),
        (status = 400, description = "Bad input: the text names the field", body = ErrorBody),
        (status = 404, description = "Unknown model or version", body = ErrorBody),
        (status = 413, description = "Body over --max-request-bytes", body = ErrorBody),
        (status = 429, description = "Queue full, or predicted to miss its SLO or deadline", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 500, description = "Engine failure (details in the log)", body = ErrorBody),
        (status = 503, description = "The model is not loaded", body = ErrorBody)))]
async fn infer(
    State(state): Shared,
    Path(path): Path<ModelPath>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let mut timer = state.metrics.request(Protocol::Http);
    let result = infer_timed(&state, path, headers, body, &mut timer).await;
    let served = state.access_log.then(|| ServedBy::of(&timer));
    timer.finish(&result);
    let mut response = result.into_response();
    if let Some(served) = served {
        response.extensions_mut().insert(served);
    }
    response
}

/// Inference on one version; see `POST /v2/models/{model}/infer`.
#[utoipa::path(post, path = "/v2/models/{model}/versions/{version}/infer", tag = "inference", params(("model" = String, Path, description = "The model's name (its folder in the repository)"), ("version" = String, Path, description = "A loaded version of the model"), ("Inference-Header-Content-Length" = Option<u64>, Header, description = "Binary tensor data extension: the length of the JSON part of the body")),
    request_body(content((json::JsonRequest = "application/json"), (Vec<u8> = "application/octet-stream"))),
    responses(
        (status = 200, description = "The outputs",
            headers(("Inference-Header-Content-Length" = u64, description = "Binary replies: the length of the JSON part")),
            content((json::JsonResponse = "application/json"), (Vec<u8> = "application/octet-stream"))),
        (status = 400, description = "Bad input: the text names the field", body = ErrorBody),
        (status = 404, description = "Unknown model or version", body = ErrorBody),
        (status = 413, description = "Body over --max-request-bytes", body = ErrorBody),
        (status = 429, description = "Queue full, or predicted to miss its SLO or deadline", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 500, description = "Engine failure (details in the log)", body = ErrorBody),
        (status = 503, description = "The model is not loaded", body = ErrorBody)))]
async fn version_infer(state: Shared, path: Path<ModelPath>, headers: HeaderMap, body: Body) -> Response {
    infer(state, path, headers, body).await
}

async fn infer_timed(
    state: &ServerState,
    path: ModelPath,
    headers: HeaderMap,
    body: Body,
    timer: &mut RequestTimer,
) -> Result<Response, ServerError> {
    let model = state.repository.get(&path.model, path.version.as_deref())?;
    timer.model(&model.config.name, model.version);
    let limit = state.max_request_bytes;
    if let Some(size) = content_length(&headers).filter(|&size| size > limit) {
        return Err(ServerError::TooLarge { size, limit });
    }
    let body = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| ServerError::TooLarge { size: limit + 1, limit })?;
    let header_length = match headers.get(HEADER_LENGTH) {
        None => None,
        Some(value) => {
            Some(value.to_str().ok().and_then(|v| v.trim().parse::<usize>().ok()).ok_or_else(|| {
                ServerError::BadRequest(
                    "Inference-Header-Content-Length must be a non-negative integer".to_string(),
                )
            })?)
        }
    };
    let (request, encoding) = json::decode_request(body, header_length)?;
    let request = InferRequest { received: Some(timer.started()), ..request };
    let inferred = model.infer_with(request, None, &encoding.classification).await?;
    let (chunks, header_length) = json::encode_response(&inferred.response, &encoding)?;
    let mut reply = Response::new(chunked_body(chunks));
    let headers = reply.headers_mut();
    match header_length {
        Some(length) => {
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
            headers.insert(HEADER_LENGTH, HeaderValue::from(length));
        }
        None => {
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
    }
    insert_served(headers, inferred.served());
    Ok(reply)
}

/// How the reply was served, as `x-rtserve-{name}` headers (`_` as `-`).
fn insert_served(headers: &mut HeaderMap, served: Vec<(&'static str, Served)>) {
    for (name, value) in served {
        let name = format!("x-rtserve-{}", name.replace('_', "-"));
        if let (Ok(name), Ok(value)) = (HeaderName::try_from(name), HeaderValue::try_from(value.to_string()))
        {
            headers.insert(name, value);
        }
    }
}

fn content_length(headers: &HeaderMap) -> Option<usize> {
    headers.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// `POST /v2/repository/index` body (optional).
#[derive(serde::Deserialize, Default, ToSchema)]
struct IndexRequest {
    /// Only the models that serve.
    #[serde(default)]
    ready: bool,
}

/// One row of the repository index: a loaded version, or a model with none.
#[derive(serde::Serialize, ToSchema)]
struct IndexRow {
    name: String,
    /// Absent for a model with no loaded version.
    #[serde(skip_serializing_if = "String::is_empty")]
    version: String,
    /// `READY`, `LOADING` or `UNAVAILABLE`.
    state: &'static str,
    /// Why the model is not serving (absent when it is).
    #[serde(skip_serializing_if = "String::is_empty")]
    reason: String,
}

/// Every model on disk or known to the server, with its state.
#[utoipa::path(post, path = "/v2/repository/index", tag = "repository",
    request_body(content = IndexRequest, content_type = "application/json", description = "Optional; an empty body lists every model"),
    responses(
        (status = 200, body = Vec<IndexRow>),
        (status = 400, description = "The body is not an index request", body = ErrorBody)))]
async fn repository_index(
    State(state): Shared,
    body: axum::body::Bytes,
) -> Result<Json<Vec<IndexRow>>, ServerError> {
    let request: IndexRequest = if body.iter().all(u8::is_ascii_whitespace) {
        IndexRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ServerError::BadRequest(format!("invalid repository index request: {e}")))?
    };
    let rows = state
        .repository
        .index(request.ready)
        .into_iter()
        .map(|row| IndexRow {
            name: row.name,
            version: row.version,
            state: row.state.as_str(),
            reason: row.reason,
        })
        .collect();
    Ok(Json(rows))
}
