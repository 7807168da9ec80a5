//! The OpenAPI description of the HTTP front end (`GET /openapi.json`): the document's header
//! and the bodies shared by several routes. Each route's own description sits on its handler
//! (`#[utoipa::path]`), and the router is built from those same handlers (`utoipa_axum::routes!`),
//! so a route cannot be served without being described.

use serde::{Deserialize, Serialize};
use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Schema, SchemaType, Type};
use utoipa::openapi::RefOr;
use utoipa::{OpenApi, ToSchema};

/// The document's header; the paths come from the router.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "rtserve",
        description = "KServe v2 (Open Inference Protocol) over HTTP, with Triton's extensions \
            (binary tensor data, model repository, statistics, classification), rtserve's \
            image classification endpoint, Prometheus metrics and a live status page.\n\n\
            Every error reply is `{\"error\": \"...\"}` with the status: 400 bad input (the text \
            names the field), 404 unknown model or version, 413 body over --max-request-bytes, \
            429 overload or predicted SLO miss (with Retry-After), 503 model not loaded, 500 \
            engine failure (generic text; details in the log).",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    tags(
        (name = "health", description = "Liveness and readiness"),
        (name = "metadata", description = "Server and model metadata, Triton model configuration"),
        (name = "inference", description = "Inference: JSON tensors, the binary tensor data extension, classification"),
        (name = "repository", description = "Triton's model repository extension"),
        (name = "statistics", description = "Triton's statistics extension, Prometheus metrics, the status feed"),
        (name = "pages", description = "The pages for a browser: the status page, the API page and this description"),
    )
)]
pub(super) struct ApiDoc;

/// Every error reply: what went wrong, for a person to read.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// The field at fault and what was expected (4xx), or a generic text (5xx).
    pub error: String,
}

/// `GET /v2`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ServerMetadata {
    pub name: &'static str,
    pub version: &'static str,
    /// Protocol extensions that work end to end.
    pub extensions: &'static [&'static str],
}

/// Tensor elements as JSON: numbers, booleans or strings (BYTES), flattened in row-major order.
/// A floating-point NaN or infinity has no JSON spelling: it comes back as `null`.
pub(super) fn elements_schema() -> RefOr<Schema> {
    let element = ObjectBuilder::new().schema_type(SchemaType::Array(vec![
        Type::Number,
        Type::Boolean,
        Type::String,
        Type::Null,
    ]));
    ArrayBuilder::new()
        .items(element)
        .description(Some("The elements in row-major order; NaN and infinities as null"))
        .into()
}

/// Input data as JSON: elements, flat or nested in arrays of the tensor's shape.
pub(super) fn input_data_schema() -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(SchemaType::AnyValue)
        .description(Some(
            "The elements in row-major order, flat or nested as the shape: numbers, true/false \
             (BOOL) or strings (BYTES)",
        ))
        .into()
}
