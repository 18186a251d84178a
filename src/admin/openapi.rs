//! The OpenAPI 3.1 document of the admin API, served at
//! `/api/v1/openapi.json`. Operations come from the handlers'
//! `#[utoipa::path]` attributes as the router registers them (see
//! `api_routes`); this module adds what is not per-operation.

use super::ErrorBody;
use axum::http::header;
use axum::response::IntoResponse;
use axum::Extension;
use bytes::Bytes;
use std::collections::BTreeMap;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Backstop admin API",
        description = "Routing tables, statistics, the model registry, the audit log and tokens. \
            Errors are `{\"error\":{\"code\",\"message\",\"field\"?}}` with a stable code. \
            Each operation's description names the role its bearer token needs."
    ),
    modifiers(&BearerAuth),
    components(schemas(ErrorBody))
)]
struct ApiDoc;

/// The document's parts that no handler declares.
pub fn base() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let mut scheme = Http::new(HttpAuthScheme::Bearer);
        scheme.description = Some("A token from `backstop token create` (`bst_...`).".into());
        components.add_security_scheme("bearer", SecurityScheme::Http(scheme));
    }
}

/// The finished document as JSON, handed to [`serve`] as a request
/// extension.
#[derive(Clone)]
pub struct Document(Bytes);

impl Document {
    pub fn new(document: utoipa::openapi::OpenApi) -> Self {
        let json = serde_json::to_vec(&document).expect("an OpenAPI document serializes");
        Self(Bytes::from(json))
    }
}

/// This document.
#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    tag = "gateway",
    description = "Open: no token needed.",
    responses((status = 200, description = "OpenAPI 3.1 document", body = serde_json::Value))
)]
pub async fn serve(Extension(Document(json)): Extension<Document>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], json)
}

/// `GET /api/v1/models/{model}/stats`, as documented (the handler builds it
/// as JSON).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct StatsResponse {
    model: String,
    generation: u64,
    bucket_ms: u64,
    /// By version name.
    versions: BTreeMap<String, StatsWindow>,
}

/// One version's counts and latency quantiles over the window.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct StatsWindow {
    /// First and last bucket epoch included (epoch × bucket_ms = Unix ms).
    from_epoch: u64,
    to_epoch: u64,
    bucket_ms: u64,
    requests: u64,
    successes: u64,
    server_errors: u64,
    client_errors: u64,
    timeouts: u64,
    connect_errors: u64,
    cancelled: u64,
    response_bytes: u64,
    p50_us: Option<u64>,
    p95_us: Option<u64>,
    p99_us: Option<u64>,
    p999_us: Option<u64>,
    /// Server-side failures (5xx, timeouts, connect errors) per request.
    error_rate: Option<f64>,
    shadow_sent: u64,
    shadow_dropped: u64,
    /// With `histogram=true` only: `[[bucket_low_us, count], ...]`.
    latency_us: Option<Vec<Vec<u64>>>,
}
