//! The pages for a browser, built into the binary: the live status page (`GET /`, reading
//! `GET /v2/status`) and the API page (`GET /docs`, Swagger UI reading `GET /openapi.json`).
//! Swagger UI is vendored from the npm package swagger-ui-dist by
//! `scripts/vendor_swagger_ui.sh`, which records the files' sha256 sums; a test below checks the
//! embedded bytes against them. Every page forbids loading anything from another origin.

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};

const STATUS_PAGE: &str = include_str!("../../assets/status.html");
const DOCS_PAGE: &str = include_str!("../../assets/docs.html");
const SWAGGER_UI_SCRIPT: &str = include_str!("../../assets/swagger-ui/swagger-ui-bundle.js");
const SWAGGER_UI_STYLE: &str = include_str!("../../assets/swagger-ui/swagger-ui.css");

/// Same origin only: the pages work offline, from the binary alone. Inline scripts and styles
/// are the pages' own (Swagger UI sets styles and draws icons as data: images).
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self' 'unsafe-inline'; \
     style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'";

fn page(content_type: &'static str, body: &'static str) -> Response {
    let headers = [
        (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
        (header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY)),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
    ];
    (headers, body).into_response()
}

/// The live status page: each model's state, engine, and over the last minute its request
/// rate, p50 and p99 latency against the SLO, queue depth, batch size, cache hit ratio, 4xx and
/// 5xx, with charts refreshed every second from `GET /v2/status`.
#[utoipa::path(get, path = "/", tag = "pages",
    responses((status = 200, description = "The status page", content_type = "text/html", body = String)))]
pub async fn status_page() -> Response {
    page("text/html; charset=utf-8", STATUS_PAGE)
}

/// This API, described and runnable in the browser (Swagger UI).
#[utoipa::path(get, path = "/docs", tag = "pages",
    responses((status = 200, description = "The API page", content_type = "text/html", body = String)))]
pub async fn docs_page() -> Response {
    page("text/html; charset=utf-8", DOCS_PAGE)
}

/// Swagger UI's script, for `/docs`.
#[utoipa::path(get, path = "/docs/swagger-ui-bundle.js", tag = "pages",
    responses((status = 200, description = "Swagger UI", content_type = "text/javascript", body = String)))]
pub async fn swagger_ui_script() -> Response {
    page("text/javascript; charset=utf-8", SWAGGER_UI_SCRIPT)
}

/// Swagger UI's style sheet, for `/docs`.
#[utoipa::path(get, path = "/docs/swagger-ui.css", tag = "pages",
    responses((status = 200, description = "Swagger UI's styles", content_type = "text/css", body = String)))]
pub async fn swagger_ui_style() -> Response {
    page("text/css; charset=utf-8", SWAGGER_UI_STYLE)
}

#[cfg(test)]
mod tests {
    use sha2::{Digest, Sha256};

    use super::*;

    /// The embedded Swagger UI is the one `scripts/vendor_swagger_ui.sh` fetched and summed.
    #[test]
    fn vendored_files_match_their_checksums() {
        let sums = include_str!("../../assets/swagger-ui/SHA256SUMS");
        let embedded = [("swagger-ui-bundle.js", SWAGGER_UI_SCRIPT), ("swagger-ui.css", SWAGGER_UI_STYLE)];
        for (name, content) in embedded {
            let expected = sums
                .lines()
                .filter_map(|line| line.split_once("  "))
                .find_map(|(sum, file)| (file == name).then_some(sum))
                .unwrap_or_else(|| panic!("{name} is not in SHA256SUMS"));
            let actual = format!("{:x}", Sha256::digest(content.as_bytes()));
            assert_eq!(actual, expected, "{name} differs from what the vendor script summed");
        }
    }
}
