//! `--access-log`: one line per request, as an `info` event of the target `rtserve::access`
//! (so `--log-format json` makes it a JSON object like every other line). HTTP: every request,
//! refusals included. gRPC: each inference (ModelInfer, and each message of ModelStreamInfer).
//!
//! Fields: `id` (the client's `x-request-id` header or the request's `id`, when it is a short
//! run of visible characters, else one made here; HTTP replies echo it in `x-request-id`),
//! `protocol`, `method` (HTTP method, or the gRPC method), `path` (HTTP path, `-` on gRPC),
//! `model`, `version`,
//! `status` (HTTP status, or gRPC code), `latency_us` (arrival to the reply's head), `cache`,
//! `client` (peer address), `bytes_in` and `bytes_out` (`-` when not known without reading the
//! body). Never the token, the query string or tensor data.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use http_body::Body as _;
use prost::Message;

use crate::http::connections::ClientAddr;
use crate::metrics::RequestTimer;
use crate::proto::infer_parameter::ParameterChoice;
use crate::proto::{ModelInferRequest, ModelInferResponse};
use crate::ServerError;

/// The header that carries a request's id, both ways.
const REQUEST_ID: &str = "x-request-id";
/// The longest request id taken from a client.
const MAX_ID_LEN: usize = 128;
/// Written for a field that has no value.
const NONE: &str = "-";

/// The model version that served an HTTP request: a reply extension the log middleware reads.
#[derive(Debug, Clone)]
pub struct ServedBy {
    model: String,
    version: String,
}

impl ServedBy {
    /// The model labels of a request's timer (empty when no loaded model was named).
    pub fn of(timer: &RequestTimer) -> ServedBy {
        let (model, version) = timer.labels();
        ServedBy { model: model.to_string(), version: version.to_string() }
    }
}

/// One line of the access log.
struct Entry<'a> {
    id: &'a str,
    protocol: &'static str,
    method: &'a str,
    path: &'a str,
    model: &'a str,
    version: &'a str,
    status: &'a str,
    latency: Duration,
    cache: &'a str,
    client: Option<SocketAddr>,
    bytes_in: Option<u64>,
    bytes_out: Option<u64>,
}

impl Entry<'_> {
    fn emit(&self) {
        let or_none = |text: &str| if text.is_empty() { NONE.to_string() } else { text.to_string() };
        let number = |n: Option<u64>| n.map_or_else(|| NONE.to_string(), |n| n.to_string());
        tracing::info!(
            target: "rtserve::access",
            id = %self.id,
            protocol = %self.protocol,
            method = %self.method,
            path = %or_none(self.path),
            model = %or_none(self.model),
            version = %or_none(self.version),
            status = %self.status,
            latency_us = u64::try_from(self.latency.as_micros()).unwrap_or(u64::MAX),
            cache = %or_none(self.cache),
            client = %self.client.map_or_else(|| NONE.to_string(), |c| c.to_string()),
            bytes_in = %number(self.bytes_in),
            bytes_out = %number(self.bytes_out),
            "access"
        );
    }
}

/// The client's id when it is usable in a log line, else a new one (process id and a counter).
fn request_id(given: Option<&str>) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    match given {
        Some(id) if !id.is_empty() && id.len() <= MAX_ID_LEN && id.bytes().all(|b| b.is_ascii_graphic()) => {
            id.to_string()
        }
        _ => format!("{:x}-{:x}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed)),
    }
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// The HTTP middleware: logs each request once its reply's head is ready, and echoes the id.
pub async fn http(request: Request, next: Next) -> Response {
    let start = Instant::now();
    let client = request.extensions().get::<ClientAddr>().map(|c| c.0);
    let id = request_id(request.headers().get(REQUEST_ID).and_then(|v| v.to_str().ok()));
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let bytes_in = content_length(request.headers());
    let mut response = next.run(request).await;
    let served = response.extensions().get::<ServedBy>();
    let status = response.status().as_u16().to_string();
    Entry {
        id: &id,
        protocol: "http",
        method: method.as_str(),
        path: &path,
        model: served.map_or("", |s| s.model.as_str()),
        version: served.map_or("", |s| s.version.as_str()),
        status: &status,
        latency: start.elapsed(),
        cache: response.headers().get("x-rtserve-cache").and_then(|v| v.to_str().ok()).unwrap_or(""),
        client,
        bytes_in,
        bytes_out: response.body().size_hint().exact(),
    }
    .emit();
    if let Ok(id) = HeaderValue::try_from(id) {
        response.headers_mut().insert(REQUEST_ID, id);
    }
    response
}

/// A gRPC inference being logged: what is known when it arrives.
pub struct GrpcEntry {
    id: String,
    method: &'static str,
    client: Option<SocketAddr>,
    bytes_in: u64,
    start: Instant,
}

impl GrpcEntry {
    /// Starts the entry of `request`, a message of the gRPC `method`.
    pub fn start(request: &ModelInferRequest, method: &'static str, client: Option<SocketAddr>) -> GrpcEntry {
        GrpcEntry {
            id: request_id(Some(&request.id)),
            method,
            client,
            bytes_in: request.encoded_len() as u64,
            start: Instant::now(),
        }
    }

    /// Logs how the request ended.
    pub fn finish(self, timer: &RequestTimer, result: &Result<ModelInferResponse, ServerError>) {
        let (model, version) = timer.labels();
        let (status, cache, bytes_out) = match result {
            Ok(response) => {
                let cache = match response
                    .parameters
                    .get("rtserve_cache")
                    .and_then(|p| p.parameter_choice.as_ref())
                {
                    Some(ParameterChoice::StringParam(cache)) => cache.as_str(),
                    _ => "",
                };
                ("OK".to_string(), cache, Some(response.encoded_len() as u64))
            }
            Err(e) => (format!("{:?}", e.grpc_code()), "", None),
        };
        Entry {
            id: &self.id,
            protocol: "grpc",
            method: self.method,
            path: "",
            model,
            version,
            status: &status,
            latency: self.start.elapsed(),
            cache,
            client: self.client,
            bytes_in: Some(self.bytes_in),
            bytes_out,
        }
        .emit();
    }
}

#[cfg(test)]
mod tests {
    use super::request_id;

    #[test]
    fn a_client_id_is_kept_when_it_is_short_and_visible() {
        assert_eq!(request_id(Some("abc-123")), "abc-123");
    }

    #[test]
    fn an_unusable_client_id_is_replaced() {
        for bad in ["", "two words", "line\nbreak", &"x".repeat(129)] {
            let id = request_id(Some(bad));
            assert_ne!(id, bad);
            assert!(id.starts_with(&format!("{:x}-", std::process::id())), "{id}");
        }
    }

    #[test]
    fn made_ids_differ() {
        assert_ne!(request_id(None), request_id(None));
    }
}
