//! The KServe v2 HTTP front end (axum).

mod chunks;
mod classify;
pub mod json;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode, Version};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rtserve_core::InferRequest;
use serde_json::{json, Value};

use self::chunks::chunked_body;
use crate::metrics::{Protocol, RequestTimer};
use crate::model::Served;
use crate::state::{ServerState, EXTENSIONS, SERVER_NAME, SERVER_VERSION};
use crate::triton_config::{config_json, metadata_json};
use crate::triton_stats::stats_json;
use crate::ServerError;

/// The header that gives the JSON part's length in a binary-extension body.
const HEADER_LENGTH: &str = "inference-header-content-length";

type Shared = State<Arc<ServerState>>;

/// The HTTP application. Tests call it with `oneshot`; `serve` binds it to a socket.
pub fn app(state: Arc<ServerState>) -> Router {
    let upload_limit = DefaultBodyLimit::max(state.max_request_bytes);
    Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2/models/{model}", get(model_metadata))
        .route("/v2/models/{model}/versions/{version}", get(model_metadata))
        .route("/v2/models/{model}/ready", get(model_ready))
        .route("/v2/models/{model}/versions/{version}/ready", get(model_ready))
        .route("/v2/models/{model}/config", get(model_config))
        .route("/v2/models/{model}/versions/{version}/config", get(model_config))
        .route("/v2/models/stats", get(all_model_stats))
        .route("/v2/models/{model}/stats", get(model_stats))
        .route("/v2/models/{model}/versions/{version}/stats", get(model_stats))
        .route("/v2/models/{model}/infer", post(infer))
        .route("/v2/models/{model}/versions/{version}/infer", post(infer))
        .route("/v2/models/{model}/classify", post(classify::classify).layer(upload_limit))
        .route("/v2/models/{model}/versions/{version}/classify", post(classify::classify).layer(upload_limit))
        .route("/v2/repository/index", post(repository_index))
        .route("/v2/repository/models/{model}/load", post(load_model))
        .route("/v2/repository/models/{model}/unload", post(unload_model))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), close_when_draining))
        .with_state(state)
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

impl IntoResponse for ServerError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (status, Json(json!({ "error": self.client_message() }))).into_response();
        if let Some(wait) = self.retry_after() {
            // Retry-After counts whole seconds: round up, at least 1, so a client never retries
            // too early.
            let seconds = (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1);
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// Path parameters: the model and, on versioned routes, the version.
#[derive(serde::Deserialize)]
struct ModelPath {
    model: String,
    version: Option<String>,
}

async fn not_found() -> Response {
    let body = Json(json!({ "error": "no such endpoint; see the KServe v2 protocol (/v2/...)" }));
    (StatusCode::NOT_FOUND, body).into_response()
}

async fn server_metadata() -> Json<Value> {
    Json(json!({ "name": SERVER_NAME, "version": SERVER_VERSION, "extensions": EXTENSIONS }))
}

async fn live() -> StatusCode {
    StatusCode::OK
}

async fn ready(State(state): Shared) -> StatusCode {
    if state.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

async fn model_metadata(
    State(state): Shared,
    Path(path): Path<ModelPath>,
) -> Result<Json<Value>, ServerError> {
    let model = state.repository.get(&path.model, path.version.as_deref())?;
    let versions = state.repository.versions(&path.model);
    Ok(Json(metadata_json(&model, &versions)))
}

async fn model_ready(State(state): Shared, Path(path): Path<ModelPath>) -> Result<StatusCode, ServerError> {
    let ready = state.model_ready(&path.model, path.version.as_deref())?;
    Ok(if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE })
}

async fn model_config(State(state): Shared, Path(path): Path<ModelPath>) -> Result<Json<Value>, ServerError> {
    let model = state.repository.get(&path.model, path.version.as_deref())?;
    Ok(Json(config_json(&model.config)))
}

async fn all_model_stats(State(state): Shared) -> Json<Value> {
    Json(stats_json(&state.repository.loaded()))
}

async fn model_stats(State(state): Shared, Path(path): Path<ModelPath>) -> Result<Json<Value>, ServerError> {
    let models = state.repository.select(&path.model, path.version.as_deref().unwrap_or_default())?;
    Ok(Json(stats_json(&models)))
}

/// `GET /metrics`, in the Prometheus text format.
pub async fn metrics(State(state): Shared) -> Result<Response, ServerError> {
    let text = state.metrics.render()?;
    let content_type = HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8");
    Ok(([(header::CONTENT_TYPE, content_type)], text).into_response())
}

/// The metrics alone, for `--metrics-port`.
pub fn metrics_app(state: Arc<ServerState>) -> Router {
    Router::new().route("/metrics", get(metrics)).fallback(not_found).with_state(state)
}

async fn infer(
    State(state): Shared,
    Path(path): Path<ModelPath>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ServerError> {
    let mut timer = state.metrics.request(Protocol::Http);
    let result = infer_timed(&state, path, headers, body, &mut timer).await;
    timer.finish(&result);
    result
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

/// `POST /v2/repository/index` body: `{"ready": true}` lists only models that serve.
#[derive(serde::Deserialize, Default)]
struct IndexRequest {
    #[serde(default)]
    ready: bool,
}

async fn repository_index(State(state): Shared, body: axum::body::Bytes) -> Result<Json<Value>, ServerError> {
    let request: IndexRequest = if body.iter().all(u8::is_ascii_whitespace) {
        IndexRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ServerError::BadRequest(format!("invalid repository index request: {e}")))?
    };
    let rows: Vec<Value> = state
        .repository
        .index(request.ready)
        .into_iter()
        .map(|row| {
            let mut value = json!({ "name": row.name, "state": row.state.as_str() });
            if !row.version.is_empty() {
                value["version"] = json!(row.version);
            }
            if !row.reason.is_empty() {
                value["reason"] = json!(row.reason);
            }
            value
        })
        .collect();
    Ok(Json(Value::Array(rows)))
}

async fn load_model(State(state): Shared, Path(model): Path<String>) -> Result<StatusCode, ServerError> {
    state.repository.load(&model).await?;
    Ok(StatusCode::OK)
}

async fn unload_model(State(state): Shared, Path(model): Path<String>) -> Result<StatusCode, ServerError> {
    state.repository.unload(&model).await?;
    Ok(StatusCode::OK)
}
