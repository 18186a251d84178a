//! Gameday faults: set and clear a fault on a rehearsal version.
//!
//! The fault lives in the model's routing table (`versions[i].fault`), so
//! every later swap — a rollout's stage change, its rollback — carries it
//! until it is cleared. It is never written to the config file or the
//! store: a restart clears it.

use super::auth::Actor;
use super::{AdminState, ApiError, ErrorBody};
use crate::config::FaultSpec;
use crate::gateway::{Gateway, ReplaceError};
use crate::store::AuditDraft;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde_json::{json, Value};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn routes() -> OpenApiRouter<AdminState> {
    OpenApiRouter::new().routes(routes!(put_fault, delete_fault))
}

/// Swaps tried before giving up when other writers (a rollout) keep
/// swapping the same table.
const SWAP_TRIES: usize = 8;

/// Sets (`Some`) or clears (`None`) the fault of `model/version` in one
/// swap built on the current table. Returns the generation, the fault
/// before, and whether anything changed.
fn swap_fault(
    gateway: &Gateway,
    model: &str,
    version: &str,
    fault: Option<FaultSpec>,
) -> Result<(u64, Option<FaultSpec>, bool), ApiError> {
    for _ in 0..SWAP_TRIES {
        let table = gateway
            .table(model)
            .ok_or_else(|| ApiError::model_not_found(model))?;
        let index = table
            .spec
            .versions
            .iter()
            .position(|v| v.name == version)
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    "version_not_found",
                    format!("{model} has no version {version:?} in its routing table"),
                )
            })?;
        let current = &table.spec.versions[index];
        let before = current.fault;
        if fault.is_some() && !current.rehearsal {
            return Err(ApiError {
                status: StatusCode::CONFLICT,
                code: "not_a_rehearsal_version",
                message: format!(
                    "{model}/{version} is not a rehearsal version: faults are injected only into a version marked `rehearsal: true` in the routing table"
                ),
                field: Some(format!("versions[{index}].rehearsal")),
            });
        }
        if before == fault {
            return Ok((table.generation, before, false));
        }
        let mut spec = table.spec.clone();
        spec.versions[index].fault = fault;
        match gateway.replace_model(model, spec, Some(table.generation)) {
            Ok(generation) => return Ok((generation, before, true)),
            Err(ReplaceError::Invalid(error)) => {
                return Err(ApiError {
                    status: StatusCode::UNPROCESSABLE_ENTITY,
                    code: "invalid_fault",
                    message: error.to_string(),
                    field: Some(error.path),
                })
            }
            // Someone swapped in between: build on their table instead.
            Err(ReplaceError::GenerationMismatch { .. }) => continue,
        }
    }
    Err(ApiError::new(
        StatusCode::CONFLICT,
        "generation_mismatch",
        format!("the routing table of {model} kept changing; try again"),
    ))
}

async fn audit(
    state: &AdminState,
    action: &str,
    target: String,
    actor: String,
    before: Option<FaultSpec>,
    after: Value,
) {
    if let Some(registry) = &state.registry {
        let draft = AuditDraft {
            actor,
            action: action.into(),
            target: target.clone(),
            reason: String::new(),
            before: Some(json!({ "fault": before })),
            after: Some(after),
        };
        // The swap has happened; a missing entry is logged loudly rather
        // than failing the request (as for `routes.replace`).
        if let Err(error) = registry.record(draft).await {
            tracing::error!(target, %error, "Cannot audit a fault change.");
        }
    }
}

/// Injects a fault into a rehearsal version (audited as `fault.set`).
#[utoipa::path(
    put,
    path = "/api/v1/models/{model}/versions/{id}/fault",
    tag = "routing",
    description = "Role: deployer. Only a version with `rehearsal: true` may carry a fault; it stays in the routing table (rollout swaps keep it) until DELETE or a restart.",
    security(("bearer" = [])),
    params(
        ("model" = String, Path, description = "Model name"),
        ("id" = String, Path, description = "A rehearsal version in the model's routing table"),
    ),
    request_body = FaultSpec,
    responses(
        (status = 200, description = "Set: `{model, version, generation, fault, changed}`", body = Value),
        (status = 400, description = "`invalid_json`", body = ErrorBody),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
        (status = 403, description = "`forbidden`", body = ErrorBody),
        (status = 404, description = "`model_not_found`, `version_not_found`", body = ErrorBody),
        (status = 409, description = "`not_a_rehearsal_version` (with `field`), `generation_mismatch`", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`", body = ErrorBody),
        (status = 422, description = "`invalid_field`, `invalid_fault` (with `field`)", body = ErrorBody),
    )
)]
async fn put_fault(
    State(state): State<AdminState>,
    Extension(Actor(actor)): Extension<Actor>,
    Path((model, version)): Path<(String, String)>,
    fault: Result<Json<FaultSpec>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let Json(fault) = fault?;
    let (generation, before, changed) = swap_fault(&state.gateway, &model, &version, Some(fault))?;
    if changed {
        tracing::warn!(model, version, ?fault, "Gameday fault injected.");
        audit(
            &state,
            "fault.set",
            format!("{model}/{version}"),
            actor,
            before,
            json!({ "generation": generation, "fault": fault }),
        )
        .await;
    }
    Ok(Json(json!({
        "model": model,
        "version": version,
        "generation": generation,
        "fault": fault,
        "changed": changed,
    })))
}

/// Clears a version's fault (audited as `fault.clear`); clearing a version
/// without one changes nothing and answers 200 with `changed: false`.
#[utoipa::path(
    delete,
    path = "/api/v1/models/{model}/versions/{id}/fault",
    tag = "routing",
    description = "Role: deployer.",
    security(("bearer" = [])),
    params(
        ("model" = String, Path, description = "Model name"),
        ("id" = String, Path, description = "Version name"),
    ),
    responses(
        (status = 200, description = "Cleared: `{model, version, generation, changed}`", body = Value),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
        (status = 403, description = "`forbidden`", body = ErrorBody),
        (status = 404, description = "`model_not_found`, `version_not_found`", body = ErrorBody),
        (status = 409, description = "`generation_mismatch`", body = ErrorBody),
    )
)]
async fn delete_fault(
    State(state): State<AdminState>,
    Extension(Actor(actor)): Extension<Actor>,
    Path((model, version)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let (generation, before, changed) = swap_fault(&state.gateway, &model, &version, None)?;
    if changed {
        tracing::warn!(model, version, "Gameday fault cleared.");
        audit(
            &state,
            "fault.clear",
            format!("{model}/{version}"),
            actor,
            before,
            json!({ "generation": generation, "fault": null }),
        )
        .await;
    }
    Ok(Json(json!({
        "model": model,
        "version": version,
        "generation": generation,
        "changed": changed,
    })))
}
