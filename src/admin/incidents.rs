//! Incident endpoints of the admin API: list, show and export incidents,
//! the rollback report (M1–M10) and the annotation feed for dashboards.

use super::{AdminState, ApiError, ErrorBody};
use crate::gateway::unix_ms;
use crate::incident::{IncidentError, IncidentSummary, IncidentView, Incidents};
use crate::report::{Annotation, Report};
use crate::store::{blocking, AuditEntry, AuditFilter, Store, StoreError};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Incidents listed at most.
const LIST_MAX: usize = 1000;

pub fn routes() -> OpenApiRouter<AdminState> {
    OpenApiRouter::new()
        .routes(routes!(list_incidents))
        .routes(routes!(get_incident))
        .routes(routes!(export_incident))
        .routes(routes!(get_report))
        .routes(routes!(get_annotations))
}

impl From<IncidentError> for ApiError {
    fn from(error: IncidentError) -> Self {
        let message = error.to_string();
        match error {
            IncidentError::NotFound(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "incident_not_found", message)
            }
            IncidentError::Conflict(_) => {
                ApiError::new(StatusCode::CONFLICT, "incident_conflict", message)
            }
            IncidentError::Store(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                message,
            ),
        }
    }
}

fn store_unavailable(error: StoreError) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "store_unavailable",
        error.to_string(),
    )
}

fn incidents(state: &AdminState) -> Result<Arc<Incidents>, ApiError> {
    state
        .rollouts
        .as_ref()
        .map(|r| r.incidents())
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "incidents_unavailable",
                "incidents need a data directory: set data_dir in the gateway's config",
            )
        })
}

fn store(state: &AdminState) -> Result<Arc<dyn Store>, ApiError> {
    state.rollouts.as_ref().map(|r| r.store()).ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "incidents_unavailable",
            "incidents need a data directory: set data_dir in the gateway's config",
        )
    })
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ModelQuery {
    /// Only this model's.
    model: Option<String>,
}

#[derive(Serialize)]
struct IncidentList {
    /// Newest first.
    incidents: Vec<IncidentSummary>,
}

/// Incidents, newest first (at most 1000).
#[utoipa::path(
    get,
    path = "/api/v1/incidents",
    tag = "incidents",
    description = "Role: viewer.",
    security(("bearer" = [])),
    params(ModelQuery),
    responses(
        (status = 200, description = "`{incidents: [{id, model, rollout, severity, state, opened_unix_ms, candidate, baseline, trigger}]}`", body = serde_json::Value),
        (status = 400, description = "`invalid_query`", body = ErrorBody),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
        (status = 503, description = "`incidents_unavailable`, `store_unavailable`", body = ErrorBody),
    )
)]
async fn list_incidents(
    State(state): State<AdminState>,
    query: Result<Query<ModelQuery>, QueryRejection>,
) -> Result<Json<IncidentList>, ApiError> {
    let incidents = incidents(&state)?;
    let Query(query) = query?;
    let model = query.model.filter(|m| !m.is_empty());
    Ok(Json(IncidentList {
        incidents: incidents.list(model, LIST_MAX).await?,
    }))
}

/// One incident: the frozen evidence (verdict and its numbers, both
/// versions' metrics over the trigger window, redacted samples, pinned
/// artifacts), the timeline, verification, hooks and notifications.
#[utoipa::path(
    get,
    path = "/api/v1/incidents/{id}",
    tag = "incidents",
    description = "Role: deployer. It holds request/response samples, redacted as the policy says before they were kept.",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "Incident id (`inc-...`)")),
    responses(
        (status = 200, description = "`{id, model, rollout, severity, state, opened_unix_ms, \
            updated_unix_ms, evidence_sha256, evidence, timeline, verification?, hooks, notifications}`", body = serde_json::Value),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
        (status = 403, description = "`forbidden`", body = ErrorBody),
        (status = 404, description = "`incident_not_found`", body = ErrorBody),
        (status = 503, description = "`incidents_unavailable`, `store_unavailable`", body = ErrorBody),
    )
)]
async fn get_incident(
    State(state): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Json<IncidentView>, ApiError> {
    Ok(Json(incidents(&state)?.get(&id).await?))
}

/// Everything for the postmortem in one document.
#[derive(Serialize, Deserialize)]
pub struct Export {
    pub format: String,
    pub exported_unix_ms: u64,
    pub incident: IncidentView,
    /// Audit entries of the rollout and of the incident, in order, with
    /// their hashes: checkable against the chain.
    pub audit: Vec<AuditEntry>,
    /// Whether the whole audit chain verified at export.
    pub audit_chain_ok: bool,
}

/// The incident with its rollout's and its own audit entries: one JSON
/// file for the postmortem.
#[utoipa::path(
    get,
    path = "/api/v1/incidents/{id}/export",
    tag = "incidents",
    description = "Role: deployer.",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "Incident id (`inc-...`)")),
    responses(
        (status = 200, description = "`{format: \"backstop-incident/1\", exported_unix_ms, incident, audit: [...], audit_chain_ok}`", body = serde_json::Value),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
        (status = 403, description = "`forbidden`", body = ErrorBody),
        (status = 404, description = "`incident_not_found`", body = ErrorBody),
        (status = 503, description = "`incidents_unavailable`, `store_unavailable`", body = ErrorBody),
    )
)]
async fn export_incident(
    State(state): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Json<Export>, ApiError> {
    let incident = incidents(&state)?.get(&id).await?;
    let store = store(&state)?;
    let targets = [
        format!("{}/{}", incident.model, incident.rollout),
        format!("{}/{}", incident.model, incident.id),
    ];
    let (audit, chain_ok) = blocking(move || {
        let mut entries = Vec::new();
        for target in &targets {
            entries.extend(store.audit(&AuditFilter {
                model: Some(target.clone()),
                since_ms: None,
                limit: None,
            })?);
        }
        entries.sort_by_key(|e| e.seq);
        let chain = store.audit(&AuditFilter::default())?;
        Ok((entries, crate::store::audit::verify(&chain).is_ok()))
    })
    .await
    .map_err(store_unavailable)?;
    Ok(Json(Export {
        format: "backstop-incident/1".into(),
        exported_unix_ms: unix_ms(),
        incident,
        audit,
        audit_chain_ok: chain_ok,
    }))
}

/// The rollback figures (M1–M10), per model and overall.
#[utoipa::path(
    get,
    path = "/api/v1/report",
    tag = "incidents",
    description = "Role: viewer. Fields: time_to_detect_s (M1), verdict_to_swap_us (M2), \
        time_to_recovered_s (M3), rollback_success_rate (M4), false_rollback_rate (M5), \
        traffic_moved_percent (M6), post_rollback_error_rate (M7), audit_completeness (M8), \
        notifications (M9), rollback_rate (M10).",
    security(("bearer" = [])),
    params(ModelQuery),
    responses(
        (status = 200, description = "`{generated_unix_ms, audit_chain_ok, overall, models: [...]}`", body = serde_json::Value),
        (status = 400, description = "`invalid_query`", body = ErrorBody),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
        (status = 503, description = "`incidents_unavailable`, `store_unavailable`", body = ErrorBody),
    )
)]
async fn get_report(
    State(state): State<AdminState>,
    query: Result<Query<ModelQuery>, QueryRejection>,
) -> Result<Json<Report>, ApiError> {
    let store = store(&state)?;
    let Query(query) = query?;
    let model = query.model.filter(|m| !m.is_empty());
    let report =
        blocking(move || crate::report::report(store.as_ref(), model.as_deref(), unix_ms()))
            .await
            .map_err(store_unavailable)?;
    Ok(Json(report))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct AnnotationQuery {
    model: Option<String>,
    /// Unix milliseconds (Grafana's `${__from}`).
    from: Option<u64>,
    /// Unix milliseconds (Grafana's `${__to}`).
    to: Option<u64>,
    /// At most this many (default and cap 1000).
    limit: Option<usize>,
}

/// Rollout and incident events as annotations (`time`, `title`, `text`,
/// `tags`), oldest first: the shape Grafana's JSON data sources read.
#[utoipa::path(
    get,
    path = "/api/v1/annotations",
    tag = "incidents",
    description = "Role: viewer. From the audit log: every rollout step, rollback, promotion, \
        incident and verification.",
    security(("bearer" = [])),
    params(AnnotationQuery),
    responses(
        (status = 200, description = "`[{time, title, text, tags}]`", body = serde_json::Value),
        (status = 400, description = "`invalid_query`", body = ErrorBody),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
        (status = 503, description = "`incidents_unavailable`, `store_unavailable`", body = ErrorBody),
    )
)]
async fn get_annotations(
    State(state): State<AdminState>,
    query: Result<Query<AnnotationQuery>, QueryRejection>,
) -> Result<Json<Vec<Annotation>>, ApiError> {
    let store = store(&state)?;
    let Query(query) = query?;
    let model = query.model.filter(|m| !m.is_empty());
    let limit = query.limit.unwrap_or(LIST_MAX).min(LIST_MAX);
    let annotations = blocking(move || {
        crate::report::annotations(
            store.as_ref(),
            model.as_deref(),
            query.from,
            query.to,
            limit,
        )
    })
    .await
    .map_err(store_unavailable)?;
    Ok(Json(annotations))
}
