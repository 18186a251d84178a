//! The admin API (JSON, under `/api/v1`) and `/metrics`.
//!
//! `router(gateway, registry, rollouts, access)` builds the whole API, access control
//! included, so tests drive it with `oneshot` without a server. Errors are
//! `{"error":{"code","message","field"?}}` with a stable code; a refused
//! change changes nothing.

pub mod auth;
mod faults;
mod feedback;
mod incidents;
mod metrics;
mod openapi;
mod registry;
mod rollouts;
mod samples;
mod tokens;

use crate::config::ModelSpec;
use crate::gateway::{Gateway, ReplaceError};
use crate::store::AuditDraft;
use auth::{AccessPolicy, Actor};
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json, Router};
use backstop_core::analysis::WindowSnapshot;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// What the admin handlers share: the gateway, the registry when the
/// gateway has a data directory, and the access policy.
#[derive(Clone)]
pub struct AdminState {
    pub gateway: Arc<Gateway>,
    pub registry: Option<Arc<crate::registry::Registry>>,
    /// The rollout runtime, which needs the registry's store.
    pub rollouts: Option<Arc<crate::rollout::Rollouts>>,
    pub access: Arc<AccessPolicy>,
}

pub fn router(
    gateway: Arc<Gateway>,
    registry: Option<Arc<crate::registry::Registry>>,
    rollouts: Option<Arc<crate::rollout::Rollouts>>,
    access: Arc<AccessPolicy>,
) -> Router {
    let state = AdminState {
        gateway,
        registry,
        rollouts,
        access,
    };
    let (routes, document) = api_routes().split_for_parts();
    routes
        .layer(Extension(openapi::Document::new(document)))
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such admin endpoint")
        })
        // After the fallback, so unknown paths are guarded too.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::guard,
        ))
        .with_state(state)
}

/// Every endpoint with its OpenAPI operation: `routes!` registers a
/// handler under the method and path of its `#[utoipa::path]`, so router
/// and document come from the same list. Add routes only this way: the
/// test `the_openapi_document_lists_every_route_the_router_serves` fails
/// on a route the document lacks.
fn api_routes() -> OpenApiRouter<AdminState> {
    OpenApiRouter::with_openapi(openapi::base())
        .routes(routes!(healthz))
        .routes(routes!(metrics::render))
        .routes(routes!(openapi::serve))
        .routes(routes!(list_models))
        .routes(routes!(get_routes, put_routes))
        .routes(routes!(get_stats))
        .routes(routes!(samples::get_samples))
        .routes(routes!(get_events))
        .routes(routes!(auth::check))
        .merge(registry::routes())
        .merge(rollouts::routes())
        .merge(faults::routes())
        .merge(feedback::routes())
        .merge(incidents::routes())
        .merge(tokens::routes())
}

/// Liveness.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "gateway",
    description = "Open: no token needed.",
    responses((status = 200, description = "Alive: `{\"ok\": true}`", body = Value))
)]
async fn healthz() -> Json<Value> {
    Json(json!({"ok": true}))
}

/// An API error: status, stable code, message and (for bad input) the field.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    field: Option<String>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            field: None,
        }
    }

    fn model_not_found(model: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "model_not_found",
            format!("model {model:?} has no routing table"),
        )
    }
}

/// The body of every error answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable: `model_not_found`, `invalid_json`, ...
    pub code: String,
    /// For people; may change between releases.
    pub message: String,
    /// The offending input field, for bad input.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message,
                field: self.field,
            },
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        let code = match rejection {
            JsonRejection::MissingJsonContentType(_) => "unsupported_media_type",
            JsonRejection::JsonDataError(_) => "invalid_field",
            // Over the body limit (axum's `DefaultBodyLimit`, 2 MiB).
            _ if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
            _ => "invalid_json",
        };
        Self::new(rejection.status(), code, rejection.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            rejection.body_text(),
        )
    }
}

#[derive(Serialize, ToSchema)]
struct ModelSummary {
    model: String,
    generation: u64,
    versions: Vec<VersionSummary>,
}

#[derive(Serialize, ToSchema)]
struct VersionSummary {
    name: String,
    weight: u32,
    healthy: bool,
    endpoints: Vec<EndpointSummary>,
}

#[derive(Serialize, ToSchema)]
struct EndpointSummary {
    url: String,
    healthy: bool,
    active_check_passed: bool,
    ejected: bool,
}

fn summarize(gateway: &Gateway, table: &crate::gateway::routing::ModelTable) -> ModelSummary {
    let now_ms = gateway.now_ms();
    ModelSummary {
        model: table.model.clone(),
        generation: table.generation,
        versions: table
            .versions
            .iter()
            .map(|v| VersionSummary {
                name: v.name.clone(),
                weight: v.weight,
                healthy: v.is_healthy(now_ms),
                endpoints: v
                    .endpoints
                    .iter()
                    .map(|e| EndpointSummary {
                        url: e.url.clone(),
                        healthy: e.is_healthy(now_ms),
                        active_check_passed: e.active_healthy(),
                        ejected: e.is_ejected(now_ms),
                    })
                    .collect(),
            })
            .collect(),
    }
}

/// Routing tables of all models, with health.
#[utoipa::path(
    get,
    path = "/api/v1/models",
    tag = "routing",
    description = "Role: viewer.",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Every model's table", body = [ModelSummary]),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
    )
)]
async fn list_models(
    State(AdminState { gateway, .. }): State<AdminState>,
) -> Json<Vec<ModelSummary>> {
    let tables = gateway.tables();
    let mut models: Vec<_> = tables.values().map(|t| summarize(&gateway, t)).collect();
    models.sort_by(|a, b| a.model.cmp(&b.model));
    Json(models)
}

/// A model's routing table: its spec, generation and version health.
#[utoipa::path(
    get,
    path = "/api/v1/models/{model}/routes",
    tag = "routing",
    description = "Role: viewer.",
    security(("bearer" = [])),
    params(("model" = String, Path, description = "Model name")),
    responses(
        (status = 200, description = "`{model, generation, spec, versions, swap_to_first_request_ns}`", body = Value),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
        (status = 404, description = "`model_not_found`", body = ErrorBody),
    )
)]
async fn get_routes(
    State(AdminState { gateway, .. }): State<AdminState>,
    Path(model): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let table = gateway
        .table(&model)
        .ok_or_else(|| ApiError::model_not_found(&model))?;
    let summary = summarize(&gateway, &table);
    Ok(Json(json!({
        "model": model,
        "generation": table.generation,
        "spec": table.spec,
        "versions": summary.versions,
        "swap_to_first_request_ns": table.swap_to_first_request_ns(),
    })))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct PutQuery {
    /// Refuse unless the current generation is this one (0: no table yet).
    if_generation: Option<u64>,
}

/// Replaces a model's routing table atomically (audited as `routes.replace`).
#[utoipa::path(
    put,
    path = "/api/v1/models/{model}/routes",
    tag = "routing",
    description = "Role: deployer.",
    security(("bearer" = [])),
    params(("model" = String, Path, description = "Model name"), PutQuery),
    request_body = ModelSpec,
    responses(
        (status = 200, description = "Swapped: `{model, generation}`", body = Value),
        (status = 400, description = "`invalid_json`, `invalid_query`", body = ErrorBody),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
        (status = 403, description = "`forbidden`", body = ErrorBody),
        (status = 409, description = "`generation_mismatch`", body = ErrorBody),
        (status = 413, description = "`body_too_large`", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`", body = ErrorBody),
        (status = 422, description = "`invalid_field`, `invalid_routes` (with `field`)", body = ErrorBody),
    )
)]
async fn put_routes(
    State(AdminState {
        gateway, registry, ..
    }): State<AdminState>,
    Extension(Actor(actor)): Extension<Actor>,
    Path(model): Path<String>,
    query: Result<Query<PutQuery>, QueryRejection>,
    spec: Result<Json<ModelSpec>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(query) = query?;
    let Json(spec) = spec?;
    let previous = gateway.table(&model);
    match gateway.replace_model(&model, spec.clone(), query.if_generation) {
        Ok(generation) => {
            if let Some(registry) = registry {
                let draft = routes_replaced(&model, previous.as_deref(), generation, &spec, actor);
                // The swap has happened and cannot be taken back; a missing
                // entry is logged loudly instead of failing the request.
                if let Err(error) = registry.record(draft).await {
                    tracing::error!(model, generation, %error, "Cannot audit a routing table swap.");
                }
            }
            Ok(Json(json!({ "model": model, "generation": generation })))
        }
        Err(ReplaceError::Invalid(error)) => Err(ApiError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code: "invalid_routes",
            message: error.to_string(),
            field: Some(error.path),
        }),
        Err(ReplaceError::GenerationMismatch { expected, actual }) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "generation_mismatch",
            format!("expected generation {expected}, the table is at {actual}"),
        )),
    }
}

/// The `routes.replace` audit entry. The table read before the swap is
/// the one replaced unless another swap came between (possible only
/// without `if_generation`); then only the generation is recorded.
fn routes_replaced(
    model: &str,
    previous: Option<&crate::gateway::routing::ModelTable>,
    generation: u64,
    spec: &ModelSpec,
    actor: String,
) -> AuditDraft {
    let before = match previous {
        Some(table) if table.generation + 1 == generation => {
            json!({ "generation": table.generation, "spec": table.spec })
        }
        _ => json!({ "generation": generation - 1 }),
    };
    AuditDraft {
        actor,
        action: "routes.replace".into(),
        target: model.to_string(),
        reason: String::new(),
        before: Some(before),
        after: Some(json!({ "generation": generation, "spec": spec })),
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct StatsQuery {
    /// Window length ending now, rounded up to whole buckets.
    window_ms: Option<u64>,
    /// Or an explicit range of bucket epochs (epoch × bucket_ms = Unix ms).
    from_epoch: Option<u64>,
    to_epoch: Option<u64>,
    /// Include the latency histogram as `[[bucket_low_us, count], ...]`.
    #[serde(default)]
    histogram: bool,
}

#[derive(Serialize)]
struct VersionWindow {
    #[serde(flatten)]
    window: WindowSnapshot,
    p50_us: Option<u64>,
    p95_us: Option<u64>,
    p99_us: Option<u64>,
    p999_us: Option<u64>,
    /// Server-side failures (5xx, timeouts, connect errors) per request.
    error_rate: Option<f64>,
    shadow_sent: u64,
    shadow_dropped: u64,
}

/// Per-version request statistics over a window.
#[utoipa::path(
    get,
    path = "/api/v1/models/{model}/stats",
    tag = "routing",
    description = "Role: viewer.",
    security(("bearer" = [])),
    params(("model" = String, Path, description = "Model name"), StatsQuery),
    responses(
        (status = 200, description = "Windows by version name", body = openapi::StatsResponse),
        (status = 400, description = "`invalid_query`", body = ErrorBody),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
        (status = 404, description = "`model_not_found`", body = ErrorBody),
    )
)]
async fn get_stats(
    State(AdminState { gateway, .. }): State<AdminState>,
    Path(model): Path<String>,
    query: Result<Query<StatsQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(query) = query?;
    let table = gateway
        .table(&model)
        .ok_or_else(|| ApiError::model_not_found(&model))?;
    let bucket_ms = gateway.config.stats.bucket_ms;
    let mut versions = BTreeMap::new();
    for version in &table.versions {
        let stats = &version.state.stats;
        let mut window =
            match (query.from_epoch, query.to_epoch, query.window_ms) {
                (Some(from), Some(to), None) if from <= to => stats.range(from, to),
                (None, None, window_ms) => {
                    let window_ms = window_ms.unwrap_or(10 * bucket_ms);
                    stats.window(window_ms.div_ceil(bucket_ms).max(1) as usize)
                }
                _ => return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_query",
                    "use either window_ms, or from_epoch and to_epoch with from_epoch <= to_epoch",
                )),
            };
        let latency = std::mem::take(&mut window.latency_us);
        let quantile = |q| latency.quantile(q);
        let counts = &window.counts;
        let entry = VersionWindow {
            p50_us: quantile(0.5),
            p95_us: quantile(0.95),
            p99_us: quantile(0.99),
            p999_us: quantile(0.999),
            error_rate: (counts.requests > 0)
                .then(|| counts.failures() as f64 / counts.requests as f64),
            shadow_sent: version
                .state
                .shadow_sent
                .load(std::sync::atomic::Ordering::Relaxed),
            shadow_dropped: version
                .state
                .shadow_dropped
                .load(std::sync::atomic::Ordering::Relaxed),
            window: WindowSnapshot {
                latency_us: if query.histogram {
                    latency
                } else {
                    Default::default()
                },
                ..window
            },
        };
        let mut value = serde_json::to_value(entry).map_err(|e| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
        })?;
        if !query.histogram {
            if let Some(object) = value.as_object_mut() {
                object.remove("latency_us");
            }
        }
        versions.insert(version.name.clone(), value);
    }
    Ok(Json(json!({
        "model": model,
        "generation": table.generation,
        "bucket_ms": bucket_ms,
        "versions": versions,
    })))
}

/// Recent gateway events (ejections, swaps, health changes).
#[utoipa::path(
    get,
    path = "/api/v1/events",
    tag = "gateway",
    description = "Role: viewer.",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "`{events: [...]}`", body = Value),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
    )
)]
async fn get_events(State(AdminState { gateway, .. }): State<AdminState>) -> Json<Value> {
    Json(json!({ "events": gateway.events.recent() }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use http::Request;
    use tower::ServiceExt;

    fn gateway() -> Arc<Gateway> {
        let config = crate::config::Config::parse(
            std::path::Path::new("test.yaml"),
            r#"
models:
  m:
    versions:
      - { name: v1, weight: 100, endpoints: ["http://127.0.0.1:9"] }
"#,
        )
        .unwrap();
        Gateway::new(config).unwrap()
    }

    fn open_router(gateway: &Arc<Gateway>) -> Router {
        router(gateway.clone(), None, None, AccessPolicy::new(None, true))
    }

    async fn call(gateway: &Arc<Gateway>, request: Request<Body>) -> (StatusCode, Value) {
        let response = open_router(gateway).oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, value)
    }

    fn put(uri: &str, body: &str) -> Request<Body> {
        Request::put(uri)
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .unwrap()
    }

    #[tokio::test]
    async fn replaces_a_table_and_bumps_the_generation() {
        let gateway = gateway();
        let body = r#"{"versions":[{"name":"v1","weight":50,"endpoints":["http://127.0.0.1:9"]},{"name":"v2","weight":50,"endpoints":["http://127.0.0.1:10"]}]}"#;
        let (status, value) = call(
            &gateway,
            put("/api/v1/models/m/routes?if_generation=1", body),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{value}");
        assert_eq!(value["generation"], 2);
        assert_eq!(gateway.table("m").unwrap().versions.len(), 2);
        let (status, value) = call(
            &gateway,
            Request::get("/api/v1/models/m/routes")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(value["spec"]["versions"][1]["name"], "v2");
    }

    #[tokio::test]
    async fn bad_input_gets_a_coded_error_and_changes_nothing() {
        let gateway = gateway();
        let cases = [
            (
                "/api/v1/models/m/routes",
                "{not json",
                StatusCode::BAD_REQUEST,
                "invalid_json",
            ),
            (
                "/api/v1/models/m/routes",
                r#"{"versions":[{"name":"v1","weight":"x","endpoints":[]}]}"#,
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_field",
            ),
            (
                "/api/v1/models/m/routes",
                r#"{"versions":[{"name":"v1","weight":0,"endpoints":["http://127.0.0.1:9"]}]}"#,
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_routes",
            ),
            (
                "/api/v1/models/m/routes?if_generation=7",
                r#"{"versions":[{"name":"v1","weight":1,"endpoints":["http://127.0.0.1:9"]}]}"#,
                StatusCode::CONFLICT,
                "generation_mismatch",
            ),
            (
                "/api/v1/models/bad%20name/routes",
                r#"{"versions":[{"name":"v1","weight":1,"endpoints":["http://127.0.0.1:9"]}]}"#,
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_routes",
            ),
        ];
        for (uri, body, status, code) in cases {
            let (got_status, value) = call(&gateway, put(uri, body)).await;
            assert_eq!(got_status, status, "{uri} {body}: {value}");
            assert_eq!(value["error"]["code"], code, "{value}");
            assert!(value["error"]["message"].as_str().unwrap().len() > 5);
        }
        let (_, value) = call(
            &gateway,
            put(
                "/api/v1/models/m/routes",
                r#"{"versions":[{"name":"v1","weight":0,"endpoints":["http://127.0.0.1:9"]}]}"#,
            ),
        )
        .await;
        assert_eq!(value["error"]["field"], "versions");
        assert_eq!(gateway.table("m").unwrap().generation, 1, "nothing changed");
        assert!(gateway.table("bad name").is_none());
    }

    #[tokio::test]
    async fn stats_report_windows_per_version() {
        let gateway = gateway();
        let table = gateway.table("m").unwrap();
        let stats = &table.versions[0].state.stats;
        for latency in [1000, 2000, 3000] {
            stats.record(backstop_core::analysis::Outcome::Success, latency, 10);
        }
        stats.record(backstop_core::analysis::Outcome::ServerError, 500, 0);
        let (status, value) = call(
            &gateway,
            Request::get("/api/v1/models/m/stats?window_ms=5000&histogram=true")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{value}");
        let v1 = &value["versions"]["v1"];
        assert_eq!(v1["requests"], 4);
        assert_eq!(v1["server_errors"], 1);
        assert_eq!(v1["error_rate"], 0.25);
        assert!(v1["p99_us"].as_u64().unwrap() >= 2970);
        assert_eq!(v1["latency_us"].as_array().unwrap().len(), 4);

        let (status, value) = call(
            &gateway,
            Request::get("/api/v1/models/m/stats?from_epoch=5")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(value["error"]["code"], "invalid_query");
    }

    #[tokio::test]
    async fn unknown_models_and_paths_are_404_json() {
        let gateway = gateway();
        let (status, value) = call(
            &gateway,
            Request::get("/api/v1/models/nope/routes")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(
            (status, value["error"]["code"].as_str()),
            (StatusCode::NOT_FOUND, Some("model_not_found"))
        );
        let (status, value) =
            call(&gateway, Request::get("/nope").body(Body::empty()).unwrap()).await;
        assert_eq!(
            (status, value["error"]["code"].as_str()),
            (StatusCode::NOT_FOUND, Some("not_found"))
        );
    }

    /// Every (method, path) the router serves, as the OpenAPI document
    /// writes paths. `routes!` builds router and document from the same
    /// handlers; this list catches a route added with plain `.route` (in
    /// the router, not the document) or a document that lost one.
    const ROUTES: &[(&str, &str)] = &[
        ("GET", "/healthz"),
        ("GET", "/metrics"),
        ("GET", "/api/v1/openapi.json"),
        ("GET", "/api/v1/models"),
        ("GET", "/api/v1/models/{model}/routes"),
        ("PUT", "/api/v1/models/{model}/routes"),
        ("GET", "/api/v1/models/{model}/stats"),
        ("GET", "/api/v1/models/{model}/samples"),
        ("POST", "/api/v1/feedback"),
        ("GET", "/api/v1/models/{model}/feedback"),
        ("GET", "/api/v1/events"),
        ("GET", "/api/v1/access/check"),
        ("PUT", "/api/v1/artifacts"),
        ("POST", "/api/v1/artifacts/verify"),
        ("GET", "/api/v1/models/{model}/versions"),
        ("POST", "/api/v1/models/{model}/versions"),
        ("GET", "/api/v1/models/{model}/versions/{id}"),
        ("DELETE", "/api/v1/models/{model}/versions/{id}"),
        ("GET", "/api/v1/models/{model}/versions/{id}/profile"),
        ("POST", "/api/v1/models/{model}/versions/{id}/deprecate"),
        ("GET", "/api/v1/models/{model}/versions/{id}/retain"),
        ("POST", "/api/v1/models/{model}/versions/{id}/retain"),
        ("DELETE", "/api/v1/models/{model}/versions/{id}/retain"),
        ("PUT", "/api/v1/models/{model}/versions/{id}/fault"),
        ("DELETE", "/api/v1/models/{model}/versions/{id}/fault"),
        ("GET", "/api/v1/models/{model}/bundles"),
        ("POST", "/api/v1/models/{model}/bundles"),
        ("GET", "/api/v1/models/{model}/bundles/{id}"),
        ("POST", "/api/v1/models/{model}/promote"),
        ("GET", "/api/v1/models/{model}/lkg"),
        ("POST", "/api/v1/gc"),
        ("GET", "/api/v1/audit"),
        ("GET", "/api/v1/audit/verify"),
        ("GET", "/api/v1/tokens"),
        ("POST", "/api/v1/tokens"),
        ("DELETE", "/api/v1/tokens/{id}"),
        ("GET", "/api/v1/rollouts"),
        ("POST", "/api/v1/rollouts"),
        ("GET", "/api/v1/rollouts/{id}"),
        ("POST", "/api/v1/rollouts/{id}/pause"),
        ("POST", "/api/v1/rollouts/{id}/resume"),
        ("POST", "/api/v1/rollouts/{id}/approve"),
        ("POST", "/api/v1/rollouts/{id}/promote"),
        ("POST", "/api/v1/rollouts/{id}/abort"),
        ("POST", "/api/v1/rollouts/{id}/rollback"),
        ("GET", "/api/v1/incidents"),
        ("GET", "/api/v1/incidents/{id}"),
        ("GET", "/api/v1/incidents/{id}/export"),
        ("GET", "/api/v1/report"),
        ("GET", "/api/v1/annotations"),
    ];

    async fn openapi_document(gateway: &Arc<Gateway>) -> Value {
        let (status, document) = call(
            gateway,
            Request::get("/api/v1/openapi.json")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{document}");
        document
    }

    #[tokio::test]
    async fn the_openapi_document_lists_every_route_the_router_serves() {
        let gateway = gateway();
        let document = openapi_document(&gateway).await;
        assert!(
            document["openapi"].as_str().unwrap().starts_with("3.1"),
            "{}",
            document["openapi"]
        );
        let paths = document["paths"].as_object().unwrap();
        let documented: usize = paths
            .values()
            .map(|item| item.as_object().unwrap().len())
            .sum();
        assert_eq!(
            documented,
            ROUTES.len(),
            "operations in the document: {paths:?}"
        );
        for (method, path) in ROUTES {
            let operation = &paths
                .get(*path)
                .unwrap_or_else(|| panic!("{path} is not in the document"))[method.to_lowercase()];
            assert!(
                operation.is_object(),
                "{method} {path} is not in the document"
            );
            assert!(
                operation["responses"]["200"].is_object()
                    || operation["responses"]["201"].is_object(),
                "{method} {path}"
            );

            // The router serves it (any answer but the fallback's).
            let uri = path.replace("{model}", "m").replace("{id}", "x");
            let request = Request::builder()
                .method(*method)
                .uri(&uri)
                .body(Body::empty())
                .unwrap();
            let (status, body) = call(&gateway, request).await;
            assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {uri}");
            assert_ne!(body["error"]["code"], "not_found", "{method} {uri}");

            // Security and the role named agree with the access table.
            let method = http::Method::from_bytes(method.as_bytes()).unwrap();
            let description = operation["description"].as_str().unwrap_or_default();
            match crate::access::required(&method, &uri) {
                crate::access::Need::Open => {
                    assert!(operation.get("security").is_none(), "{method} {path}");
                    assert!(
                        description.contains("Open"),
                        "{method} {path}: {description}"
                    );
                }
                crate::access::Need::Role(role) => {
                    assert_eq!(
                        operation["security"],
                        json!([{"bearer": []}]),
                        "{method} {path}"
                    );
                    assert!(
                        description.contains(&format!("Role: {role}.")),
                        "{method} {path}: {description}"
                    );
                    assert!(operation["responses"]["401"].is_object(), "{method} {path}");
                }
            }
        }
        let components = &document["components"];
        let error = &components["schemas"]["ErrorBody"];
        assert_eq!(error["required"], json!(["error"]), "{error}");
        assert!(components["schemas"]["ErrorDetail"]["properties"]["field"].is_object());
        assert_eq!(
            components["schemas"]["ErrorDetail"]["required"],
            json!(["code", "message"])
        );
        assert_eq!(components["securitySchemes"]["bearer"]["scheme"], "bearer");
        for schema in [
            "ModelSpec",
            "RegisterRequest",
            "VersionRecord",
            "BundleRecord",
            "AuditEntry",
            "TokenRecord",
            "FeedbackAnswer",
            "FeedbackItemDoc",
        ] {
            assert!(components["schemas"][schema].is_object(), "{schema}");
        }
        assert!(
            components["schemas"]["TokenRecord"]["properties"]
                .get("hash")
                .is_none(),
            "token hashes are never served"
        );
    }

    #[tokio::test]
    async fn a_missing_content_type_is_415() {
        let gateway = gateway();
        let request = Request::put("/api/v1/models/m/routes")
            .body(Body::from(r#"{"versions":[]}"#))
            .unwrap();
        let (status, value) = call(&gateway, request).await;
        assert_eq!(
            (status, value["error"]["code"].as_str()),
            (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                Some("unsupported_media_type")
            )
        );
    }

    #[tokio::test]
    async fn metrics_are_prometheus_text() {
        let gateway = gateway();
        let table = gateway.table("m").unwrap();
        table.versions[0]
            .state
            .stats
            .record(backstop_core::analysis::Outcome::Success, 1500, 10);
        let response = open_router(&gateway)
            .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert!(response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4"));
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        let text = String::from_utf8(bytes.to_vec()).unwrap();
        assert!(
            text.contains(r#"backstop_requests_total{model="m",version="v1",outcome="success"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"backstop_request_duration_seconds_bucket{model="m",version="v1",le="0.0025"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"backstop_request_duration_seconds_count{model="m",version="v1"} 1"#)
        );
        assert!(text.contains(r#"backstop_routing_table_generation{model="m"} 1"#));
        assert!(text.contains(r#"backstop_upstream_healthy{model="m",version="v1",endpoint="http://127.0.0.1:9"} 1"#), "{text}");
    }
}
