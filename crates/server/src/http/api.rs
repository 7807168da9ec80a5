//! The OpenAPI description of the HTTP front end (`GET /openapi.json`): the document's header
//! and the bodies shared by several routes. Each route's own description sits on its handler
//! (`#[utoipa::path]`), and the router is built from those same handlers (`utoipa_axum::routes!`),
//! so a route cannot be served without being described.

use serde::{Deserialize, Serialize};
use utoipa::openapi::content::ContentBuilder;
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Schema, SchemaType, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{Ref, RefOr};
use utoipa::{OpenApi, ToSchema};

use crate::auth::Access;

/// The document's header; the paths come from the router.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "rtserve",
        description = "KServe v2 (Open Inference Protocol) over HTTP, with Triton's extensions \
            (binary tensor data, model repository, statistics, classification), rtserve's \
            image classification endpoint, Prometheus metrics and a live status page.\n\n\
            Every error reply is `{\"error\": \"...\"}` with the status: 400 bad input (the text \
            names the field), 401 no valid bearer token and 403 a token without the access needed \
            (when the server checks tokens), 404 unknown model or version, 413 body over \
            --max-request-bytes, 429 overload or predicted SLO miss (with Retry-After), 503 model \
            not loaded, 500 engine failure (generic text; details in the log).",
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

/// When the server checks tokens: the bearer scheme, and on each operation that needs a token
/// its requirement and the 401 (and 403 on the repository API) replies.
pub(super) fn describe_bearer_auth(doc: &mut utoipa::openapi::OpenApi, access: impl Fn(&str) -> Access) {
    let scheme = HttpBuilder::new()
        .scheme(HttpAuthScheme::Bearer)
        .description(Some(
            "A token from --auth-token-file, or from --admin-token-file for the repository API",
        ))
        .build();
    doc.components
        .get_or_insert_with(Default::default)
        .add_security_scheme("bearer", SecurityScheme::Http(scheme));
    let reply = |description: &str| {
        let content = ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorBody"))).build();
        ResponseBuilder::new().description(description).content("application/json", content).build()
    };
    for (path, item) in doc.paths.paths.iter_mut() {
        let need = access(path);
        if need == Access::Open {
            continue;
        }
        let operations = [&mut item.get, &mut item.post, &mut item.put, &mut item.delete];
        for operation in operations.into_iter().flatten() {
            operation.security = Some(vec![SecurityRequirement::new("bearer", Vec::<String>::new())]);
            let responses = &mut operation.responses.responses;
            responses.insert("401".into(), reply("No bearer token, or one that is not valid").into());
            if need == Access::Admin {
                responses.insert("403".into(), reply("A valid token that is not an admin token").into());
            }
        }
    }
}
