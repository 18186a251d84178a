//! The admin API (JSON, under `/api/v1`) and `/metrics`.
//!
//! `router(gateway, registry, access)` builds the whole API, access control
//! included, so tests drive it with `oneshot` without a server. Errors are
//! `{"error":{"code","message","field"?}}` with a stable code; a refused
//! change changes nothing.

pub mod auth;
mod metrics;
mod registry;
mod tokens;

use crate::config::ModelSpec;
use crate::gateway::{Gateway, ReplaceError};
use crate::store::AuditDraft;
use auth::{AccessPolicy, Actor};
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use backstop_core::analysis::WindowSnapshot;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;

/// What the admin handlers share: the gateway, the registry when the
/// gateway has a data directory, and the access policy.
#[derive(Clone)]
pub struct AdminState {
    pub gateway: Arc<Gateway>,
    pub registry: Option<Arc<crate::registry::Registry>>,
    pub access: Arc<AccessPolicy>,
}

pub fn router(
    gateway: Arc<Gateway>,
    registry: Option<Arc<crate::registry::Registry>>,
    access: Arc<AccessPolicy>,
) -> Router {
    let state = AdminState {
        gateway,
        registry,
        access,
    };
    Router::new()
        .route("/healthz", get(|| async { Json(json!({"ok": true})) }))
        .route("/metrics", get(metrics::render))
        .route("/api/v1/models", get(list_models))
        .route(
            "/api/v1/models/{model}/routes",
            get(get_routes).put(put_routes),
        )
        .route("/api/v1/models/{model}/stats", get(get_stats))
        .route("/api/v1/events", get(get_events))
        .merge(registry::routes())
        .merge(tokens::routes())
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

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = json!({ "code": self.code, "message": self.message });
        if let Some(field) = self.field {
            error["field"] = Value::String(field);
        }
        (self.status, Json(json!({ "error": error }))).into_response()
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        let code = match rejection {
            JsonRejection::MissingJsonContentType(_) => "unsupported_media_type",
            JsonRejection::JsonDataError(_) => "invalid_field",
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

#[derive(Serialize)]
struct ModelSummary {
    model: String,
    generation: u64,
    versions: Vec<VersionSummary>,
}

#[derive(Serialize)]
struct VersionSummary {
    name: String,
    weight: u32,
    healthy: bool,
    endpoints: Vec<EndpointSummary>,
}

#[derive(Serialize)]
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

async fn list_models(
    State(AdminState { gateway, .. }): State<AdminState>,
) -> Json<Vec<ModelSummary>> {
    let tables = gateway.tables();
    let mut models: Vec<_> = tables.values().map(|t| summarize(&gateway, t)).collect();
    models.sort_by(|a, b| a.model.cmp(&b.model));
    Json(models)
}

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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PutQuery {
    /// Refuse unless the current generation is this one (0: no table yet).
    if_generation: Option<u64>,
}

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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
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
        router(gateway.clone(), None, AccessPolicy::new(None, true))
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
