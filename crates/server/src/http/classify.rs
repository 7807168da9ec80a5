//! `POST /v2/models/{model}[/versions/{v}]/classify`: the convenience endpoint for models that
//! declare preprocessing. The body is one raw image (`Content-Type: image/jpeg`, `image/png`,
//! `image/webp` or `application/octet-stream`) or a `multipart/form-data` upload (each part one
//! image, a batch); the reply is the top-k classes of each image as JSON
//! `{label, index, score}`. Query: `top_k` (default 5), `softmax` (default true), `output`
//! (default the model's first output).

use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Multipart, Path, RawQuery, Request, State};
use axum::http::{header, HeaderValue};
use axum::response::Response;
use rtserve_core::{DataType, InferRequest, NamedTensor, Tensor, TensorData};
use serde::Serialize;
use utoipa::ToSchema;

use super::api::ErrorBody;
use super::{insert_served, ModelPath, Shared};
use crate::classification::{score_rows, top_k};
use crate::metrics::{Protocol, RequestTimer};
use crate::model::Served;
use crate::state::ServerState;
use crate::ServerError;

/// The classify reply: the top-k classes of each image, in upload order.
#[derive(Serialize, ToSchema)]
pub struct ClassifyReply {
    model_name: String,
    model_version: String,
    /// The output ranked.
    output: String,
    predictions: Vec<Vec<ClassScore>>,
}

/// One class of one image.
#[derive(Serialize, ToSchema)]
pub struct ClassScore {
    /// From the model's `labels.txt`; null without one.
    label: Option<String>,
    index: usize,
    /// A probability with softmax, else the raw score.
    score: f32,
}

/// The classes returned per image when the query does not say.
const DEFAULT_TOP_K: usize = 5;

struct ClassifyQuery {
    top_k: usize,
    softmax: bool,
    output: Option<String>,
}

fn bad(message: String) -> ServerError {
    ServerError::BadRequest(message)
}

fn parse_query(query: Option<&str>) -> Result<ClassifyQuery, ServerError> {
    let mut parsed = ClassifyQuery { top_k: DEFAULT_TOP_K, softmax: true, output: None };
    for pair in query.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "top_k" => {
                parsed.top_k = value
                    .parse::<usize>()
                    .ok()
                    .filter(|k| *k > 0)
                    .ok_or_else(|| bad(format!("top_k '{value}' is not a positive integer")))?
            }
            "softmax" => {
                parsed.softmax = match value {
                    "true" | "1" | "" => true,
                    "false" | "0" => false,
                    other => return Err(bad(format!("softmax '{other}' is not true or false"))),
                }
            }
            "output" => parsed.output = Some(value.to_string()),
            other => return Err(bad(format!("unknown query parameter '{other}' (top_k, softmax, output)"))),
        }
    }
    Ok(parsed)
}

/// The top-k classes of each image; see the module's documentation.
#[utoipa::path(post, path = "/v2/models/{model}/classify", tag = "inference",
    params(("model" = String, Path, description = "The model's name (its folder in the repository)"), ("top_k" = Option<u64>, Query, minimum = 1, description = "Classes per image (default 5)"),
        ("softmax" = Option<bool>, Query, description = "Softmax over the scores first (default true)"),
        ("output" = Option<String>, Query, description = "The output to rank (default the model's first output)")),
    request_body(description = "One image, or a multipart/form-data upload with one image per part (a batch)",
        content(("image/jpeg"), ("image/png"), ("image/webp"), ("application/octet-stream"), ("multipart/form-data"))),
    responses(
        (status = 200, body = ClassifyReply),
        (status = 400, description = "Not an image, a bad query, or a model without preprocessing", body = ErrorBody),
        (status = 404, description = "Unknown model or version", body = ErrorBody),
        (status = 413, description = "Body over --max-request-bytes", body = ErrorBody),
        (status = 429, description = "Queue full, or predicted to miss its SLO", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 500, description = "Engine failure (details in the log)", body = ErrorBody),
        (status = 503, description = "The model is not loaded", body = ErrorBody)))]
pub async fn classify(
    State(state): Shared,
    Path(path): Path<ModelPath>,
    RawQuery(query): RawQuery,
    request: Request,
) -> Result<Response, ServerError> {
    let mut timer = state.metrics.request(Protocol::Http);
    let result = classify_timed(&state, path, query, request, &mut timer).await;
    timer.finish(&result);
    result
}

/// [`classify`] on one version.
#[utoipa::path(post, path = "/v2/models/{model}/versions/{version}/classify", tag = "inference",
    params(("model" = String, Path, description = "The model's name (its folder in the repository)"), ("version" = String, Path, description = "A loaded version of the model"), ("top_k" = Option<u64>, Query, minimum = 1, description = "Classes per image (default 5)"),
        ("softmax" = Option<bool>, Query, description = "Softmax over the scores first (default true)"),
        ("output" = Option<String>, Query, description = "The output to rank (default the model's first output)")),
    request_body(description = "One image, or a multipart/form-data upload with one image per part (a batch)",
        content(("image/jpeg"), ("image/png"), ("image/webp"), ("application/octet-stream"), ("multipart/form-data"))),
    responses(
        (status = 200, body = ClassifyReply),
        (status = 400, description = "Not an image, a bad query, or a model without preprocessing", body = ErrorBody),
        (status = 404, description = "Unknown model or version", body = ErrorBody),
        (status = 413, description = "Body over --max-request-bytes", body = ErrorBody),
        (status = 429, description = "Queue full, or predicted to miss its SLO", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 500, description = "Engine failure (details in the log)", body = ErrorBody),
        (status = 503, description = "The model is not loaded", body = ErrorBody)))]
pub async fn version_classify(
    state: Shared,
    path: Path<ModelPath>,
    query: RawQuery,
    request: Request,
) -> Result<Response, ServerError> {
    classify(state, path, query, request).await
}

async fn classify_timed(
    state: &ServerState,
    path: ModelPath,
    query: Option<String>,
    request: Request,
    timer: &mut RequestTimer,
) -> Result<Response, ServerError> {
    let model = state.repository.get(&path.model, path.version.as_deref())?;
    timer.model(&model.config.name, model.version);
    let query = parse_query(query.as_deref())?;
    let Some(preprocessor) = model.preprocessor() else {
        return Err(bad(format!(
            "model '{}' declares no preprocessing ([preprocess] in config.toml, preprocess.* parameters in config.pbtxt)",
            model.config.name
        )));
    };
    let output = match query.output {
        Some(name) if model.config.output(&name).is_some() => name,
        Some(name) => return Err(bad(format!("model '{}' has no output '{name}'", model.config.name))),
        None => match model.config.outputs.first() {
            Some(first) => first.name.clone(),
            None => {
                return Err(ServerError::Internal(format!("model '{}' has no outputs", model.config.name)))
            }
        },
    };
    let images = images(request, state.max_request_bytes).await?;
    let tensor = Tensor::new(DataType::Bytes, vec![images.len()], TensorData::Strings(images))
        .map_err(|e| ServerError::Internal(format!("image tensor: {e}")))?;
    let request = InferRequest {
        inputs: vec![NamedTensor { name: preprocessor.spec().input.clone(), tensor }],
        outputs: vec![output.clone()],
        received: Some(timer.started()),
        ..InferRequest::default()
    };
    let inferred = model.infer(request, None).await?;
    let start = Instant::now();
    let scores = inferred
        .response
        .outputs
        .iter()
        .find(|o| o.name == output)
        .ok_or_else(|| ServerError::Internal(format!("output '{output}' missing from the reply")))?;
    let rows = score_rows(scores, model.config.max_batch_size > 0)?;
    let labels = model.labels();
    let predictions: Vec<Vec<ClassScore>> = rows
        .iter()
        .map(|row| {
            top_k(row, query.top_k, query.softmax)
                .into_iter()
                .map(|s| ClassScore {
                    label: labels.and_then(|l| l.get(s.index)).cloned(),
                    index: s.index,
                    score: s.score,
                })
                .collect()
        })
        .collect();
    let postprocess = start.elapsed();
    model.observe_postprocess(postprocess);
    let body = ClassifyReply {
        model_name: inferred.response.model_name.clone(),
        model_version: inferred.response.model_version.clone(),
        output,
        predictions,
    };
    let body =
        serde_json::to_vec(&body).map_err(|e| ServerError::Internal(format!("encoding the reply: {e}")))?;
    let mut reply = Response::new(Body::from(body));
    let headers = reply.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    let mut served = inferred.served();
    served
        .push(("postprocess_us", Served::Micros(u64::try_from(postprocess.as_micros()).unwrap_or(u64::MAX))));
    insert_served(headers, served);
    Ok(reply)
}

/// The encoded images of the body: the body itself, or each part of a multipart upload.
async fn images(request: Request, limit: usize) -> Result<Vec<Bytes>, ServerError> {
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/octet-stream")
        .to_ascii_lowercase();
    let essence = content_type.split(';').next().unwrap_or_default().trim().to_string();
    match essence.as_str() {
        "multipart/form-data" => {
            let mut multipart = Multipart::from_request(request, &())
                .await
                .map_err(|e| bad(format!("multipart upload: {}", e.body_text())))?;
            let mut images = Vec::new();
            let mut total = 0usize;
            while let Some(field) = multipart.next_field().await.map_err(|e| multipart_error(e, limit))? {
                let data = field.bytes().await.map_err(|e| multipart_error(e, limit))?;
                total += data.len();
                if total > limit {
                    return Err(ServerError::TooLarge { size: total, limit });
                }
                images.push(data);
            }
            if images.is_empty() {
                return Err(bad("multipart upload holds no image part".to_string()));
            }
            Ok(images)
        }
        "image/jpeg" | "image/jpg" | "image/png" | "image/webp" | "application/octet-stream" => {
            let body = axum::body::to_bytes(request.into_body(), limit)
                .await
                .map_err(|_| ServerError::TooLarge { size: limit + 1, limit })?;
            Ok(vec![body])
        }
        other if other.starts_with("image/") => Err(bad(format!(
            "unsupported image format {other}; rtserve decodes image/jpeg, image/png and image/webp"
        ))),
        other => Err(bad(format!(
            "Content-Type {other} is not an image: send image/jpeg, image/png, image/webp or multipart/form-data"
        ))),
    }
}

fn multipart_error(e: axum::extract::multipart::MultipartError, limit: usize) -> ServerError {
    if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
        ServerError::TooLarge { size: limit + 1, limit }
    } else {
        bad(format!("multipart upload: {}", e.body_text()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_query() {
        let q = parse_query(Some("top_k=3&softmax=false&output=logits")).expect("valid");
        assert_eq!((q.top_k, q.softmax, q.output.as_deref()), (3, false, Some("logits")));
        let q = parse_query(None).expect("empty");
        assert_eq!((q.top_k, q.softmax, q.output), (DEFAULT_TOP_K, true, None));
        for (query, expected) in
            [("top_k=0", "top_k '0'"), ("softmax=maybe", "softmax 'maybe'"), ("k=1", "'k'")]
        {
            let err = parse_query(Some(query)).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(err.contains(expected), "'{err}' should contain '{expected}'");
        }
    }
}
