//! The repository extension's load and unload: `POST /v2/repository/models/{model}/load` and
//! `.../unload`, with Triton's optional body `{"parameters": {...}}`.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::api::ErrorBody;
use super::Shared;
use crate::repository::RepositoryParameter;
use crate::ServerError;

/// A model named in a repository route.
#[derive(serde::Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(super) struct RepositoryPath {
    /// The model's folder in the repository.
    model: String,
}

/// The optional body of a load or unload request.
#[derive(serde::Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RepositoryRequest {
    /// Load: `config` (a JSON model config, as a string) and `file:<path>` (base64 contents).
    /// Unload: `version` (one version only) and `unload_dependents` (accepted, no effect).
    #[serde(default)]
    #[schema(value_type = Object)]
    parameters: serde_json::Map<String, Value>,
}

/// The body's parameters; an empty body has none.
fn parameters(body: &[u8]) -> Result<BTreeMap<String, RepositoryParameter>, ServerError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(BTreeMap::new());
    }
    let request: RepositoryRequest = serde_json::from_slice(body)
        .map_err(|e| ServerError::BadRequest(format!("invalid repository request body: {e}")))?;
    request
        .parameters
        .into_iter()
        .map(|(key, value)| {
            let parameter = match value {
                Value::Bool(b) => RepositoryParameter::Bool(b),
                Value::String(s) => RepositoryParameter::String(s),
                Value::Number(n) => match n.as_i64() {
                    Some(i) => RepositoryParameter::Int(i),
                    None => {
                        return Err(ServerError::BadRequest(format!(
                            "parameter '{key}': {n} is not a whole number"
                        )))
                    }
                },
                other => {
                    return Err(ServerError::BadRequest(format!(
                        "parameter '{key}' must be a string, a number or a boolean, not {other}"
                    )))
                }
            };
            Ok((key, parameter))
        })
        .collect()
}

/// (Re)loads a model; versions already serving stay if the load fails. The new versions
/// replace the old ones only once loaded. Refused (503) with `--model-control-mode` none or
/// poll.
#[utoipa::path(post, path = "/v2/repository/models/{model}/load", tag = "repository", params(RepositoryPath),
    request_body(content = RepositoryRequest, content_type = "application/json", description = "Optional"),
    responses(
        (status = 200, description = "Loaded"),
        (status = 400, description = "The model failed to load, or a parameter is refused; the text says why", body = ErrorBody),
        (status = 404, description = "No such model folder", body = ErrorBody),
        (status = 503, description = "The model control mode does not allow loads", body = ErrorBody)))]
pub(super) async fn load_model(
    State(state): Shared,
    Path(path): Path<RepositoryPath>,
    body: axum::body::Bytes,
) -> Result<StatusCode, ServerError> {
    state.repository.request_load(&path.model, parameters(&body)?).await?;
    Ok(StatusCode::OK)
}

/// Stops serving a model, or one version with `{"parameters": {"version": "2"}}`; requests
/// already queued finish. Refused (503) with `--model-control-mode` none or poll.
#[utoipa::path(post, path = "/v2/repository/models/{model}/unload", tag = "repository", params(RepositoryPath),
    request_body(content = RepositoryRequest, content_type = "application/json", description = "Optional"),
    responses(
        (status = 200, description = "Unloaded"),
        (status = 400, description = "A parameter is refused", body = ErrorBody),
        (status = 404, description = "Unknown model or version", body = ErrorBody),
        (status = 503, description = "The model control mode does not allow unloads", body = ErrorBody)))]
pub(super) async fn unload_model(
    State(state): Shared,
    Path(path): Path<RepositoryPath>,
    body: axum::body::Bytes,
) -> Result<StatusCode, ServerError> {
    state.repository.request_unload(&path.model, parameters(&body)?).await?;
    Ok(StatusCode::OK)
}
