//! `GET /api/v1/models/{model}/samples?version=NAME`: a version's sampled
//! request/response pairs (already redacted), oldest first.
//!
//! Deployers and up: samples carry payloads, even redacted.

use super::{AdminState, ApiError, ErrorBody};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SamplesQuery {
    /// The version whose samples to read.
    version: String,
}

/// A version's sampled request/response pairs (see the model's `capture`).
#[utoipa::path(
    get,
    path = "/api/v1/models/{model}/samples",
    tag = "routing",
    description = "Role: deployer. Samples carry (redacted) payloads, so viewers may not read them. \
        Each sample: `{at_unix_ms, request_id?, method, path, status?, outcome, latency_ms, shadow?, \
        request, response}`; a body is `{json}`, `{text}` or `{omitted: {bytes, reason}}`.",
    security(("bearer" = [])),
    params(("model" = String, Path, description = "Model name"), SamplesQuery),
    responses(
        (status = 200, description = "`{model, version, samples: [...]}`, oldest first", body = Value),
        (status = 400, description = "`invalid_query`", body = ErrorBody),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
        (status = 403, description = "`forbidden`", body = ErrorBody),
        (status = 404, description = "`model_not_found`, `version_not_found`", body = ErrorBody),
    )
)]
pub async fn get_samples(
    State(AdminState { gateway, .. }): State<AdminState>,
    Path(model): Path<String>,
    query: Result<Query<SamplesQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(SamplesQuery { version }) = query?;
    if gateway.table(&model).is_none() {
        return Err(ApiError::model_not_found(&model));
    }
    // Versions that left the table keep their samples (evidence of a
    // rolled-back candidate), so the lookup is by state, not by table.
    let samples = gateway.try_samples(&model, &version).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "version_not_found",
            format!("model {model:?} has no version {version:?} in the gateway"),
        )
    })?;
    Ok(Json(json!({
        "model": model,
        "version": version,
        "samples": samples,
    })))
}
