//! Registry and audit endpoints of the admin API.

use super::auth::Actor;
use super::{AdminState, ApiError, ErrorBody};
use crate::registry::{
    AuditVerdict, BundleRequest, Deleted, GcReport, LkgView, PromoteRequest, RegisterRequest,
    Registry, RegistryError,
};
use crate::store::artifacts::{Stored, VerifyReport};
use crate::store::{AuditEntry, AuditFilter, BundleRecord, Retention, VersionRecord};
use axum::body::Body;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn routes() -> OpenApiRouter<AdminState> {
    OpenApiRouter::new()
        .routes(routes!(put_artifact))
        .routes(routes!(verify_artifacts))
        .routes(routes!(list_versions, register_version))
        .routes(routes!(get_version, delete_version))
        .routes(routes!(get_version_profile))
        .routes(routes!(deprecate_version))
        .routes(routes!(list_retentions, retain_version, release_version))
        .routes(routes!(list_bundles, create_bundle))
        .routes(routes!(get_bundle))
        .routes(routes!(promote))
        .routes(routes!(get_lkg))
        .routes(routes!(gc))
        .routes(routes!(list_audit))
        .routes(routes!(verify_audit))
}

/// A version as registered, and whether this request registered it.
#[derive(Serialize, utoipa::ToSchema)]
struct RegisteredVersion {
    #[serde(flatten)]
    version: VersionRecord,
    /// False when the same content was already registered (nothing changed).
    created: bool,
}

/// A bundle as created, and whether this request created it.
#[derive(Serialize, utoipa::ToSchema)]
struct CreatedBundle {
    #[serde(flatten)]
    bundle: BundleRecord,
    /// False when the same members were already bundled (nothing changed).
    created: bool,
}

#[derive(Serialize, utoipa::ToSchema)]
struct VersionList {
    model: String,
    versions: Vec<VersionRecord>,
}

#[derive(Serialize, utoipa::ToSchema)]
struct BundleList {
    model: String,
    bundles: Vec<BundleRecord>,
}

#[derive(Serialize, utoipa::ToSchema)]
struct RetentionList {
    model: String,
    version: String,
    retentions: Vec<Retention>,
}

/// A pin set or lifted.
#[derive(Serialize, utoipa::ToSchema)]
struct PinChange {
    model: String,
    version: String,
    reason: String,
    /// Set: false when the pin already existed.
    #[serde(skip_serializing_if = "Option::is_none")]
    created: Option<bool>,
    /// Lifted: false when there was no such pin.
    #[serde(skip_serializing_if = "Option::is_none")]
    removed: Option<bool>,
}

#[derive(Serialize, utoipa::ToSchema)]
struct AuditList {
    /// Oldest first.
    entries: Vec<AuditEntry>,
}

/// The last-known-good after a promotion, and what it was before.
#[derive(Serialize, utoipa::ToSchema)]
struct PromotedLkg {
    #[serde(flatten)]
    lkg: LkgView,
    /// The bundle that was last-known-good before, if any.
    before: Option<String>,
    /// False when the bundle already was the last-known-good.
    changed: bool,
}

impl From<RegistryError> for ApiError {
    fn from(error: RegistryError) -> Self {
        let message = error.to_string();
        match error {
            RegistryError::Invalid { field, message } => ApiError {
                status: StatusCode::UNPROCESSABLE_ENTITY,
                code: "invalid_field",
                message: format!("{field}: {message}"),
                field: Some(field),
            },
            RegistryError::ArtifactNotFound(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "artifact_not_found", message)
            }
            RegistryError::VersionNotFound(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "version_not_found", message)
            }
            RegistryError::Conflict(_) => {
                ApiError::new(StatusCode::CONFLICT, "version_conflict", message)
            }
            RegistryError::SignatureMismatch { field, message } => ApiError {
                status: StatusCode::UNPROCESSABLE_ENTITY,
                code: "bundle_signature_mismatch",
                message,
                field: Some(field),
            },
            RegistryError::BundleNotFound(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "bundle_not_found", message)
            }
            RegistryError::BundleConflict(_) => {
                ApiError::new(StatusCode::CONFLICT, "bundle_conflict", message)
            }
            RegistryError::LkgNotFound(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "lkg_not_found", message)
            }
            RegistryError::Deprecated(_) => {
                ApiError::new(StatusCode::CONFLICT, "version_deprecated", message)
            }
            RegistryError::Retained(_) => {
                ApiError::new(StatusCode::CONFLICT, "version_retained", message)
            }
            RegistryError::TooLarge(_) => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", message)
            }
            RegistryError::Unavailable(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                message,
            ),
        }
    }
}

/// 201 for a new record, 200 when the same one was already there.
fn created_or_ok(created: bool) -> StatusCode {
    if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    }
}

fn registry(state: &AdminState) -> Result<&Arc<Registry>, ApiError> {
    state.registry.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "registry_disabled",
            "this gateway runs without a registry (no data_dir)",
        )
    })
}

/// Uploads an artifact (streamed, any content type); stored by its sha256 digest.
#[utoipa::path(
    put,
    path = "/api/v1/artifacts",
    tag = "registry",
    description = "Role: deployer.",
    security(("bearer" = [])),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses(
        (status = 201, description = "Stored", body = Stored),
        (status = 200, description = "Already stored", body = Stored),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
        (status = 403, description = "`forbidden`", body = ErrorBody),
        (status = 413, description = "`body_too_large`", body = ErrorBody),
        (status = 422, description = "`invalid_field`", body = ErrorBody),
        (status = 503, description = "`registry_disabled`, `store_unavailable`", body = ErrorBody),
    )
)]
async fn put_artifact(
    State(state): State<AdminState>,
    Extension(Actor(actor)): Extension<Actor>,
    body: Body,
) -> Result<(StatusCode, Json<Stored>), ApiError> {
    let registry = registry(&state)?;
    let stored = registry
        .put_artifact(body.into_data_stream(), &actor)
        .await?;
    let status = created_or_ok(stored.created);
    Ok((status, Json(stored)))
}

/// Re-hashes stored artifacts and reports any that no longer match.
#[utoipa::path(
    post,
    path = "/api/v1/artifacts/verify",
    tag = "registry",
    description = "Role: viewer.",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Verification report", body = VerifyReport),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
        (status = 503, description = "`registry_disabled`, `store_unavailable`", body = ErrorBody),
    )
)]
async fn verify_artifacts(
    State(state): State<AdminState>,
    Extension(Actor(actor)): Extension<Actor>,
) -> Result<Json<VerifyReport>, ApiError> {
    let report = registry(&state)?.verify_artifacts(&actor).await?;
    Ok(Json(report))
}

/// Registers an immutable version; the same id and content again is idempotent.
#[utoipa::path(
    post,
    path = "/api/v1/models/{model}/versions",
    tag = "registry",
    description = "Role: deployer.",
    security(("bearer" = [])),
    params(("model" = String, Path, description = "Model name")),
    request_body = RegisterRequest,
    responses(
        (status = 201, description = "Registered: the version and `created: true`", body = RegisteredVersion),
        (status = 200, description = "Already registered with the same content (`created: false`)", body = RegisteredVersion),
        (status = 400, description = "`invalid_json`", body = ErrorBody),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
        (status = 403, description = "`forbidden`", body = ErrorBody),
        (status = 404, description = "`artifact_not_found`", body = ErrorBody),
        (status = 409, description = "`version_conflict`", body = ErrorBody),
        (status = 413, description = "`body_too_large`", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`", body = ErrorBody),
        (status = 422, description = "`invalid_field` (with `field`)", body = ErrorBody),
        (status = 503, description = "`registry_disabled`, `store_unavailable`", body = ErrorBody),
    )
)]
async fn register_version(
    State(state): State<AdminState>,
    Extension(Actor(actor)): Extension<Actor>,
    Path(model): Path<String>,
    request: Result<Json<RegisterRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<RegisteredVersion>), ApiError> {
    let registry = registry(&state)?;
    let Json(request) = request?;
    let (version, outcome) = registry.register(&model, request, &actor).await?;
    let created = outcome == crate::store::Registered::Created;
    let status = created_or_ok(created);
    Ok((status, Json(RegisteredVersion { version, created })))
}

/// A model's versions.
#[utoipa::path(
    get,
    path = "/api/v1/models/{model}/versions",
    tag = "registry",
    description = "Role: viewer.",
    security(("bearer" = [])),
    params(("model" = String, Path, description = "Model name")),
    responses(
        (status = 200, description = "The versions", body = VersionList),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
        (status = 503, description = "`registry_disabled`, `store_unavailable`", body = ErrorBody),
    )
)]
async fn list_versions(
    State(state): State<AdminState>,
    Path(model): Path<String>,
) -> Result<Json<VersionList>, ApiError> {
    let versions = registry(&state)?.versions(&model).await?;
    Ok(Json(VersionList { model, versions }))
}

/// One version.
#[utoipa::path(
    get,
    path = "/api/v1/models/{model}/versions/{id}",
    tag = "registry",
    description = "Role: viewer.",
    security(("bearer" = [])),
    params(("model" = String, Path, description = "Model name"), ("id" = String, Path, description = "Version id")),
    responses(
        (status = 200, description = "The version", body = VersionRecord),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
        (status = 404, description = "`version_not_found`", body = ErrorBody),
        (status = 503, description = "`registry_disabled`, `store_unavailable`", body = ErrorBody),
    )
)]
async fn get_version(
    State(state): State<AdminState>,
    Path((model, id)): Path<(String, String)>,
) -> Result<Json<VersionRecord>, ApiError> {
    let version = registry(&state)?.version(&model, &id).await?;
    Ok(Json(version))
}

/// A version's reference profile, whole: `{"features": {NAME: SKETCH}}`
/// (version answers only name its features).
#[utoipa::path(
    get,
    path = "/api/v1/models/{model}/versions/{id}/profile",
    tag = "registry",
    description = "Role: viewer.",
    security(("bearer" = [])),
    params(("model" = String, Path, description = "Model name"), ("id" = String, Path, description = "Version id")),
    responses(
        (status = 200, description = "The profile", body = Object),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
        (status = 404, description = "`version_not_found` (also when the version has no profile)", body = ErrorBody),
        (status = 503, description = "`registry_disabled`, `store_unavailable`", body = ErrorBody),
    )
)]
async fn get_version_profile(
    State(state): State<AdminState>,
    Path((model, id)): Path<(String, String)>,
) -> Result<Json<backstop_core::analysis::Profile>, ApiError> {
    let version = registry(&state)?.version(&model, &id).await?;
    let profile = version.profile.ok_or_else(|| {
        crate::registry::RegistryError::VersionNotFound(format!(
            "{model}/{id} was registered without a profile"
        ))
    })?;
    Ok(Json(profile))
}

/// `{reason}`: why, for the audit log (or, for a pin, who holds it).
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct ReasonBody {
    #[serde(default)]
    reason: String,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ReasonQuery {
    /// Why, for the audit log.
    #[serde(default)]
    reason: String,
}

/// Marks a version deprecated (it stays registered).
#[utoipa::path(
    post,
    path = "/api/v1/models/{model}/versions/{id}/deprecate",
    tag = "registry",
    description = "Role: deployer.",
    security(("bearer" = [])),
    params(("model" = String, Path, description = "Model name"), ("id" = String, Path, description = "Version id")),
    request_body = ReasonBody,
    responses(
        (status = 200, description = "The version", body = VersionRecord),
        (status = 400, description = "`invalid_json`", body = ErrorBody),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
        (status = 403, description = "`forbidden`", body = ErrorBody),
        (status = 404, description = "`version_not_found`", body = ErrorBody),
        (status = 413, description = "`body_too_large`", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`", body = ErrorBody),
        (status = 422, description = "`invalid_field`", body = ErrorBody),
        (status = 503, description = "`registry_disabled`, `store_unavailable`", body = ErrorBody),
    )
)]
async fn deprecate_version(
    State(state): State<AdminState>,
    Extension(Actor(actor)): Extension<Actor>,
    Path((model, id)): Path<(String, String)>,
    body: Result<Json<ReasonBody>, JsonRejection>,
) -> Result<Json<VersionRecord>, ApiError> {
    let registry = registry(&state)?;
    let Json(body) = body?;
    let version = registry.deprecate(&model, &id, body.reason, &actor).await?;
    Ok(Json(version))
}

/// Pins that keep a version from deletion.
#[utoipa::path(
    get,
    path = "/api/v1/models/{model}/versions/{id}/retain",
    tag = "registry",
    description = "Role: viewer.",
    security(("bearer" = [])),
    params(("model" = String, Path, description = "Model name"), ("id" = String, Path, description = "Version id")),
    responses(
        (status = 200, description = "The pins", body = RetentionList),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
        (status = 404, description = "`version_not_found`", body = ErrorBody),
        (status = 503, description = "`registry_disabled`, `store_unavailable`", body = ErrorBody),
    )
)]
async fn list_retentions(
    State(state): State<AdminState>,
    Path((model, id)): Path<(String, String)>,
) -> Result<Json<RetentionList>, ApiError> {
    let retentions = registry(&state)?.retentions(&model, &id).await?;
    Ok(Json(RetentionList {
        model,
        version: id,
        retentions,
    }))
}

/// Pins a version (`reason` names the holder, e.g. `rollout:<id>`).
#[utoipa::path(
    post,
    path = "/api/v1/models/{model}/versions/{id}/retain",
    tag = "registry",
    description = "Role: deployer.",
    security(("bearer" = [])),
    params(("model" = String, Path, description = "Model name"), ("id" = String, Path, description = "Version id")),
    request_body = ReasonBody,
    responses(
        (status = 201, description = "Pinned (`created: true`)", body = PinChange),
        (status = 200, description = "Already pinned for this reason (`created: false`)", body = PinChange),
        (status = 400, description = "`invalid_json`", body = ErrorBody),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
        (status = 403, description = "`forbidden`", body = ErrorBody),
        (status = 404, description = "`version_not_found`", body = ErrorBody),
        (status = 413, description = "`body_too_large`", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`", body = ErrorBody),
        (status = 422, description = "`invalid_field`", body = ErrorBody),
        (status = 503, description = "`registry_disabled`, `store_unavailable`", body = ErrorBody),
    )
)]
async fn retain_version(
    State(state): State<AdminState>,
    Extension(Actor(actor)): Extension<Actor>,
    Path((model, id)): Path<(String, String)>,
    body: Result<Json<ReasonBody>, JsonRejection>,
) -> Result<(StatusCode, Json<PinChange>), ApiError> {
    let registry = registry(&state)?;
    let Json(body) = body?;
    let reason = body.reason.clone();
    let created = registry.retain(&model, &id, body.reason, &actor).await?;
    let status = created_or_ok(created);
    Ok((
        status,
        Json(PinChange {
            model,
            version: id,
            reason,
            created: Some(created),
            removed: None,
        }),
    ))
}

/// Lifts a pin.
#[utoipa::path(
    delete,
    path = "/api/v1/models/{model}/versions/{id}/retain",
    tag = "registry",
    description = "Role: deployer.",
    security(("bearer" = [])),
    params(("model" = String, Path, description = "Model name"), ("id" = String, Path, description = "Version id")),
    request_body = ReasonBody,
    responses(
        (status = 200, description = "Lifted (`removed: false` when there was no such pin)", body = PinChange),
        (status = 400, description = "`invalid_json`", body = ErrorBody),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
        (status = 403, description = "`forbidden`", body = ErrorBody),
        (status = 404, description = "`version_not_found`", body = ErrorBody),
        (status = 413, description = "`body_too_large`", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`", body = ErrorBody),
        (status = 422, description = "`invalid_field`", body = ErrorBody),
        (status = 503, description = "`registry_disabled`, `store_unavailable`", body = ErrorBody),
    )
)]
async fn release_version(
    State(state): State<AdminState>,
    Extension(Actor(actor)): Extension<Actor>,
    Path((model, id)): Path<(String, String)>,
    body: Result<Json<ReasonBody>, JsonRejection>,
) -> Result<Json<PinChange>, ApiError> {
    let registry = registry(&state)?;
    let Json(body) = body?;
    let reason = body.reason.clone();
    let removed = registry.release(&model, &id, body.reason, &actor).await?;
    Ok(Json(PinChange {
        model,
        version: id,
        reason,
        created: None,
        removed: Some(removed),
    }))
}

/// Deletes a version nothing references, and its artifact when no other version names it.
#[utoipa::path(
    delete,
    path = "/api/v1/models/{model}/versions/{id}",
    tag = "registry",
    description = "Role: admin.",
    security(("bearer" = [])),
    params(("model" = String, Path, description = "Model name"), ("id" = String, Path, description = "Version id"), ReasonQuery),
    responses(
        (status = 200, description = "What was deleted", body = Deleted),
        (status = 400, description = "`invalid_query`", body = ErrorBody),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
        (status = 403, description = "`forbidden`", body = ErrorBody),
        (status = 404, description = "`version_not_found`", body = ErrorBody),
        (status = 409, description = "`version_retained` (referenced by a last-known-good, bundle or pin)", body = ErrorBody),
        (status = 503, description = "`registry_disabled`, `store_unavailable`", body = ErrorBody),
    )
)]
async fn delete_version(
    State(state): State<AdminState>,
    Extension(Actor(actor)): Extension<Actor>,
    Path((model, id)): Path<(String, String)>,
    query: Result<Query<ReasonQuery>, QueryRejection>,
) -> Result<Json<Deleted>, ApiError> {
    let registry = registry(&state)?;
    let Query(query) = query?;
    let deleted = registry
        .delete_version(&model, &id, query.reason, &actor)
        .await?;
    Ok(Json(deleted))
}

/// Creates a bundle: versions that move together, checked to fit each other.
#[utoipa::path(
    post,
    path = "/api/v1/models/{model}/bundles",
    tag = "registry",
    description = "Role: deployer.",
    security(("bearer" = [])),
    params(("model" = String, Path, description = "Model name")),
    request_body = BundleRequest,
    responses(
        (status = 201, description = "Created: the bundle and `created: true`", body = CreatedBundle),
        (status = 200, description = "Already created with the same members", body = CreatedBundle),
        (status = 400, description = "`invalid_json`", body = ErrorBody),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
        (status = 403, description = "`forbidden`", body = ErrorBody),
        (status = 404, description = "`version_not_found`", body = ErrorBody),
        (status = 409, description = "`bundle_conflict`, `version_deprecated`", body = ErrorBody),
        (status = 413, description = "`body_too_large`", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`", body = ErrorBody),
        (status = 422, description = "`invalid_field`, `bundle_signature_mismatch` (with `field`)", body = ErrorBody),
        (status = 503, description = "`registry_disabled`, `store_unavailable`", body = ErrorBody),
    )
)]
async fn create_bundle(
    State(state): State<AdminState>,
    Extension(Actor(actor)): Extension<Actor>,
    Path(model): Path<String>,
    request: Result<Json<BundleRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<CreatedBundle>), ApiError> {
    let registry = registry(&state)?;
    let Json(request) = request?;
    let (bundle, outcome) = registry.create_bundle(&model, request, &actor).await?;
    let created = outcome == crate::store::Registered::Created;
    let status = created_or_ok(created);
    Ok((status, Json(CreatedBundle { bundle, created })))
}

/// A model's bundles.
#[utoipa::path(
    get,
    path = "/api/v1/models/{model}/bundles",
    tag = "registry",
    description = "Role: viewer.",
    security(("bearer" = [])),
    params(("model" = String, Path, description = "Model name")),
    responses(
        (status = 200, description = "The bundles", body = BundleList),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
        (status = 503, description = "`registry_disabled`, `store_unavailable`", body = ErrorBody),
    )
)]
async fn list_bundles(
    State(state): State<AdminState>,
    Path(model): Path<String>,
) -> Result<Json<BundleList>, ApiError> {
    let bundles = registry(&state)?.bundles(&model).await?;
    Ok(Json(BundleList { model, bundles }))
}

/// One bundle.
#[utoipa::path(
    get,
    path = "/api/v1/models/{model}/bundles/{id}",
    tag = "registry",
    description = "Role: viewer.",
    security(("bearer" = [])),
    params(("model" = String, Path, description = "Model name"), ("id" = String, Path, description = "Bundle id")),
    responses(
        (status = 200, description = "The bundle", body = BundleRecord),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
        (status = 404, description = "`bundle_not_found`", body = ErrorBody),
        (status = 503, description = "`registry_disabled`, `store_unavailable`", body = ErrorBody),
    )
)]
async fn get_bundle(
    State(state): State<AdminState>,
    Path((model, id)): Path<(String, String)>,
) -> Result<Json<BundleRecord>, ApiError> {
    let bundle = registry(&state)?.bundle(&model, &id).await?;
    Ok(Json(bundle))
}

/// Makes a bundle the model's last-known-good.
#[utoipa::path(
    post,
    path = "/api/v1/models/{model}/promote",
    tag = "registry",
    description = "Role: approver.",
    security(("bearer" = [])),
    params(("model" = String, Path, description = "Model name")),
    request_body = PromoteRequest,
    responses(
        (status = 200, description = "The last-known-good with `before` and `changed`", body = PromotedLkg),
        (status = 400, description = "`invalid_json`", body = ErrorBody),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
        (status = 403, description = "`forbidden`", body = ErrorBody),
        (status = 404, description = "`bundle_not_found`, `version_not_found`", body = ErrorBody),
        (status = 409, description = "`version_deprecated`", body = ErrorBody),
        (status = 413, description = "`body_too_large`", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`", body = ErrorBody),
        (status = 422, description = "`invalid_field`", body = ErrorBody),
        (status = 503, description = "`registry_disabled`, `store_unavailable`", body = ErrorBody),
    )
)]
async fn promote(
    State(state): State<AdminState>,
    Extension(Actor(actor)): Extension<Actor>,
    Path(model): Path<String>,
    request: Result<Json<PromoteRequest>, JsonRejection>,
) -> Result<Json<PromotedLkg>, ApiError> {
    let registry = registry(&state)?;
    let Json(request) = request?;
    let promoted = registry.promote(&model, request, &actor).await?;
    let lkg = registry.lkg(&model).await?;
    Ok(Json(PromotedLkg {
        lkg,
        before: promoted.before,
        changed: promoted.changed,
    }))
}

/// A model's last-known-good bundle and its versions.
#[utoipa::path(
    get,
    path = "/api/v1/models/{model}/lkg",
    tag = "registry",
    description = "Role: viewer.",
    security(("bearer" = [])),
    params(("model" = String, Path, description = "Model name")),
    responses(
        (status = 200, description = "The last-known-good", body = LkgView),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
        (status = 404, description = "`lkg_not_found`", body = ErrorBody),
        (status = 503, description = "`registry_disabled`, `store_unavailable`", body = ErrorBody),
    )
)]
async fn get_lkg(
    State(state): State<AdminState>,
    Path(model): Path<String>,
) -> Result<Json<LkgView>, ApiError> {
    let lkg = registry(&state)?.lkg(&model).await?;
    Ok(Json(lkg))
}

/// Removes artifacts no version names.
#[utoipa::path(
    post,
    path = "/api/v1/gc",
    tag = "registry",
    description = "Role: admin.",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "What was removed", body = GcReport),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
        (status = 403, description = "`forbidden`", body = ErrorBody),
        (status = 503, description = "`registry_disabled`, `store_unavailable`", body = ErrorBody),
    )
)]
async fn gc(
    State(state): State<AdminState>,
    Extension(Actor(actor)): Extension<Actor>,
) -> Result<Json<GcReport>, ApiError> {
    let report = registry(&state)?.gc(&actor).await?;
    Ok(Json(report))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct AuditQuery {
    /// Entries about this model (target `model` or `model/...`).
    model: Option<String>,
    /// A duration back from now: `90s`, `15m`, `1h`, `7d`.
    since: Option<String>,
    limit: Option<usize>,
}

/// Audit entries, oldest first.
#[utoipa::path(
    get,
    path = "/api/v1/audit",
    tag = "audit",
    description = "Role: viewer.",
    security(("bearer" = [])),
    params(AuditQuery),
    responses(
        (status = 200, description = "The entries", body = AuditList),
        (status = 400, description = "`invalid_query` (with `field`)", body = ErrorBody),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
        (status = 503, description = "`registry_disabled`, `store_unavailable`", body = ErrorBody),
    )
)]
async fn list_audit(
    State(state): State<AdminState>,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Json<AuditList>, ApiError> {
    let Query(query) = query?;
    let since_ms = match &query.since {
        Some(text) => {
            let back = humantime::parse_duration(text).map_err(|e| ApiError {
                status: StatusCode::BAD_REQUEST,
                code: "invalid_query",
                message: format!("since: {e} (expected a duration like 15m, 1h, 7d)"),
                field: Some("since".into()),
            })?;
            Some(crate::gateway::unix_ms().saturating_sub(back.as_millis() as u64))
        }
        None => None,
    };
    let entries = registry(&state)?
        .audit(AuditFilter {
            model: query.model,
            since_ms,
            limit: query.limit,
        })
        .await?;
    Ok(Json(AuditList { entries }))
}

/// Walks the audit hash chain and names the first entry altered or removed.
#[utoipa::path(
    get,
    path = "/api/v1/audit/verify",
    tag = "audit",
    description = "Role: viewer.",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The verdict", body = AuditVerdict),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
        (status = 503, description = "`registry_disabled`, `store_unavailable`", body = ErrorBody),
    )
)]
async fn verify_audit(State(state): State<AdminState>) -> Result<Json<AuditVerdict>, ApiError> {
    let verdict = registry(&state)?.verify_audit().await?;
    Ok(Json(verdict))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::auth::{AccessPolicy, LOCAL_OPERATOR};
    use crate::gateway::Gateway;
    use axum::Router;
    use http::Request;
    use serde_json::{json, Value};
    use tower::ServiceExt;

    fn app(dir: &std::path::Path) -> Router {
        let config = crate::config::Config::parse(std::path::Path::new("t.yaml"), "{}").unwrap();
        let registry = Arc::new(Registry::open(dir, 1024).unwrap());
        let access = AccessPolicy::new(Some(registry.store()), true);
        super::super::router(Gateway::new(config).unwrap(), Some(registry), None, access)
    }

    async fn call(app: &Router, request: Request<Body>) -> (StatusCode, Value) {
        let response = app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    fn json_request(method: &str, uri: &str, body: Value) -> Request<Body> {
        Request::builder()
            .method(method)
            .uri(uri)
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .unwrap()
    }

    fn get(uri: &str) -> Request<Body> {
        Request::get(uri).body(Body::empty()).unwrap()
    }

    #[tokio::test]
    async fn register_list_and_audit_a_version() {
        let dir = tempfile::tempdir().unwrap();
        let app = app(dir.path());
        let upload = || {
            Request::put("/api/v1/artifacts")
                .body(Body::from("model bytes"))
                .unwrap()
        };
        let (status, stored) = call(&app, upload()).await;
        assert_eq!(status, StatusCode::CREATED, "{stored}");
        let digest = stored["digest"].as_str().unwrap().to_string();
        assert!(digest.starts_with("sha256:"));
        let (status, again) = call(&app, upload()).await;
        assert_eq!(
            (status, again["created"].as_bool()),
            (StatusCode::OK, Some(false))
        );

        let register = |id: &str, digest: &str| {
            json_request(
                "POST",
                "/api/v1/models/fraud/versions",
                json!({"id": id, "digest": digest, "signature": {"inputs": []},
                       "upstreams": ["http://127.0.0.1:9001"], "reason": "first canary"}),
            )
        };
        let (status, version) = call(&app, register("v1", &digest)).await;
        assert_eq!(status, StatusCode::CREATED, "{version}");
        assert_eq!(version["created"], true);
        assert_eq!(version["registered_by"], LOCAL_OPERATOR);
        let (status, version) = call(&app, register("v1", &digest)).await;
        assert_eq!(
            (status, version["created"].as_bool()),
            (StatusCode::OK, Some(false))
        );

        // Same id, other artifact: a conflict, never an overwrite.
        let (_, other) = call(
            &app,
            Request::put("/api/v1/artifacts")
                .body(Body::from("other bytes"))
                .unwrap(),
        )
        .await;
        let (status, error) = call(&app, register("v1", other["digest"].as_str().unwrap())).await;
        assert_eq!(status, StatusCode::CONFLICT);
        assert_eq!(error["error"]["code"], "version_conflict");

        let (status, listed) = call(&app, get("/api/v1/models/fraud/versions")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(listed["versions"].as_array().unwrap().len(), 1);
        assert_eq!(listed["versions"][0]["digest"], digest.as_str());
        let (status, _) = call(&app, get("/api/v1/models/fraud/versions/v1")).await;
        assert_eq!(status, StatusCode::OK);

        let (status, audit) = call(&app, get("/api/v1/audit?model=fraud&since=1h")).await;
        assert_eq!(status, StatusCode::OK, "{audit}");
        let entries = audit["entries"].as_array().unwrap();
        assert_eq!(
            entries.len(),
            1,
            "refused and repeated registrations change nothing"
        );
        assert_eq!(entries[0]["action"], "version.register");
        assert_eq!(entries[0]["reason"], "first canary");
        let (_, all) = call(&app, get("/api/v1/audit")).await;
        assert_eq!(
            all["entries"].as_array().unwrap().len(),
            3,
            "two uploads and one registration"
        );
        let (status, verdict) = call(&app, get("/api/v1/audit/verify")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            (verdict["intact"].as_bool(), verdict["entries"].as_u64()),
            (Some(true), Some(3))
        );

        let (status, report) = call(
            &app,
            Request::post("/api/v1/artifacts/verify")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            (
                report["checked"].as_u64(),
                report["mismatched"].as_array().map(Vec::len)
            ),
            (Some(2), Some(0))
        );
    }

    #[tokio::test]
    async fn oversized_json_is_413_and_a_missing_content_type_415() {
        let dir = tempfile::tempdir().unwrap();
        let app = app(dir.path());
        // A JSON body over axum's 2 MiB limit.
        let huge = json!({
            "id": "v1",
            "digest": format!("sha256:{}", "0".repeat(64)),
            "signature": {"padding": "x".repeat(3 << 20)},
        });
        let (status, error) = call(
            &app,
            json_request("POST", "/api/v1/models/m/versions", huge),
        )
        .await;
        assert_eq!(
            (status, error["error"]["code"].as_str()),
            (StatusCode::PAYLOAD_TOO_LARGE, Some("body_too_large")),
            "{error}"
        );
        let (status, error) = call(
            &app,
            Request::post("/api/v1/models/m/versions")
                .body(Body::from(r#"{"id":"v1"}"#))
                .unwrap(),
        )
        .await;
        assert_eq!(
            (status, error["error"]["code"].as_str()),
            (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                Some("unsupported_media_type")
            )
        );
        let (_, listed) = call(&app, get("/api/v1/models/m/versions")).await;
        assert_eq!(listed["versions"].as_array().unwrap().len(), 0);
    }

    #[tokio::test]
    async fn bad_registrations_get_coded_errors_and_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let app = app(dir.path());
        let missing = format!("sha256:{}", "0".repeat(64));
        let cases = [
            (
                json!({"id": "v1", "digest": missing, "signature": {}}),
                StatusCode::NOT_FOUND,
                "artifact_not_found",
            ),
            (
                json!({"id": "v 1", "digest": missing, "signature": {}}),
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_field",
            ),
            (
                json!({"id": "v1", "digest": "md5:abc", "signature": {}}),
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_field",
            ),
            (
                json!({"id": "v1", "digest": missing, "signature": {}, "extra": 1}),
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_field",
            ),
            (
                json!({"id": "v1"}),
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_field",
            ),
        ];
        for (body, status, code) in cases {
            let (got, error) = call(
                &app,
                json_request("POST", "/api/v1/models/fraud/versions", body.clone()),
            )
            .await;
            assert_eq!(
                (got, error["error"]["code"].as_str()),
                (status, Some(code)),
                "{body}: {error}"
            );
        }
        let (status, error) = call(
            &app,
            Request::post("/api/v1/models/fraud/versions")
                .header("content-type", "application/json")
                .body(Body::from("{not json"))
                .unwrap(),
        )
        .await;
        assert_eq!(
            (status, error["error"]["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some("invalid_json"))
        );
        let (status, error) = call(
            &app,
            Request::put("/api/v1/artifacts")
                .body(Body::from(vec![0u8; 2048]))
                .unwrap(),
        )
        .await;
        assert_eq!(
            (status, error["error"]["code"].as_str()),
            (StatusCode::PAYLOAD_TOO_LARGE, Some("body_too_large"))
        );
        let (status, error) = call(&app, get("/api/v1/audit?since=yesterday")).await;
        assert_eq!(
            (status, error["error"]["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some("invalid_query"))
        );
        let (status, error) = call(&app, get("/api/v1/models/fraud/versions/v9")).await;
        assert_eq!(
            (status, error["error"]["code"].as_str()),
            (StatusCode::NOT_FOUND, Some("version_not_found"))
        );
        let (_, listed) = call(&app, get("/api/v1/models/fraud/versions")).await;
        assert_eq!(listed["versions"].as_array().unwrap().len(), 0);
        let (_, audit) = call(&app, get("/api/v1/audit")).await;
        assert_eq!(audit["entries"].as_array().unwrap().len(), 0);
    }

    /// Uploads `bytes` and registers `model/id` with `signature`; the digest.
    async fn register(
        app: &Router,
        model: &str,
        id: &str,
        bytes: &str,
        signature: Value,
    ) -> String {
        let (_, stored) = call(
            app,
            Request::put("/api/v1/artifacts")
                .body(Body::from(bytes.to_string()))
                .unwrap(),
        )
        .await;
        let digest = stored["digest"].as_str().unwrap().to_string();
        let (status, version) = call(
            app,
            json_request(
                "POST",
                &format!("/api/v1/models/{model}/versions"),
                json!({"id": id, "digest": digest, "signature": signature}),
            ),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{version}");
        digest
    }

    fn tensors(key: &str, datatype: &str, shape: Value) -> Value {
        json!({ key: [{"name": "x", "datatype": datatype, "shape": shape}] })
    }

    async fn create_bundle(
        app: &Router,
        model: &str,
        id: &str,
        members: &[&str],
    ) -> (StatusCode, Value) {
        let members: Vec<Value> = members
            .iter()
            .map(|m| {
                let (model, version) = m.split_once('/').unwrap();
                json!({"model": model, "version": version})
            })
            .collect();
        call(
            app,
            json_request(
                "POST",
                &format!("/api/v1/models/{model}/bundles"),
                json!({"id": id, "members": members, "reason": "ship together"}),
            ),
        )
        .await
    }

    async fn actions(app: &Router) -> Vec<String> {
        let (_, audit) = call(app, get("/api/v1/audit")).await;
        audit["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["action"].as_str().unwrap().to_string())
            .collect()
    }

    #[tokio::test]
    async fn bundles_whose_signatures_do_not_fit_are_refused_naming_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let app = app(dir.path());
        register(
            &app,
            "fraud-encoder",
            "e3",
            "enc",
            tensors("outputs", "FP64", json!([-1, 4])),
        )
        .await;
        register(
            &app,
            "fraud-scorer",
            "v2",
            "v2",
            tensors("inputs", "FP32", json!([-1, 4])),
        )
        .await;
        register(
            &app,
            "fraud-scorer",
            "v3",
            "v3",
            tensors("inputs", "FP64", json!([8, 5])),
        )
        .await;
        register(
            &app,
            "fraud-scorer",
            "v4",
            "v4",
            tensors("inputs", "FP64", json!([8, -1])),
        )
        .await;
        register(
            &app,
            "fraud-scorer",
            "v5",
            "v5",
            json!({"inputs": [{"name": "y", "datatype": "FP64", "shape": [4]}]}),
        )
        .await;

        let (status, error) = create_bundle(
            &app,
            "fraud-scorer",
            "b7",
            &["fraud-encoder/e3", "fraud-scorer/v2"],
        )
        .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{error}");
        assert_eq!(error["error"]["code"], "bundle_signature_mismatch");
        assert_eq!(error["error"]["field"], "members[1].signature.inputs[0]");
        assert_eq!(
            error["error"]["message"],
            "members[1].signature.inputs[0] (x): datatype FP32 does not match \
             fraud-encoder/e3 output x of datatype FP64"
        );
        let (_, error) = create_bundle(
            &app,
            "fraud-scorer",
            "b7",
            &["fraud-encoder/e3", "fraud-scorer/v3"],
        )
        .await;
        assert_eq!(error["error"]["code"], "bundle_signature_mismatch");
        assert!(
            error["error"]["message"]
                .as_str()
                .unwrap()
                .contains("shape [8, 5] does not match"),
            "{error}"
        );
        let (_, error) = create_bundle(
            &app,
            "fraud-scorer",
            "b7",
            &["fraud-encoder/e3", "fraud-scorer/v5"],
        )
        .await;
        assert!(
            error["error"]["message"]
                .as_str()
                .unwrap()
                .contains("has no output y"),
            "{error}"
        );

        // -1 matches any size.
        let (status, bundle) = create_bundle(
            &app,
            "fraud-scorer",
            "b7",
            &["fraud-encoder/e3", "fraud-scorer/v4"],
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{bundle}");
        assert_eq!(bundle["members"][1]["version"], "v4");
        assert!(bundle["members"][0]["digest"]
            .as_str()
            .unwrap()
            .starts_with("sha256:"));
        let (status, again) = create_bundle(
            &app,
            "fraud-scorer",
            "b7",
            &["fraud-encoder/e3", "fraud-scorer/v4"],
        )
        .await;
        assert_eq!(
            (status, again["created"].as_bool()),
            (StatusCode::OK, Some(false))
        );
        let (status, error) = create_bundle(&app, "fraud-scorer", "b7", &["fraud-scorer/v2"]).await;
        assert_eq!(
            (status, error["error"]["code"].as_str()),
            (StatusCode::CONFLICT, Some("bundle_conflict"))
        );

        let cases: [(&[&str], StatusCode, &str); 4] = [
            (
                &["fraud-scorer/v9"],
                StatusCode::NOT_FOUND,
                "version_not_found",
            ),
            (
                &["fraud-encoder/e3"],
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_field",
            ),
            (
                &["fraud-scorer/v2", "fraud-scorer/v3"],
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_field",
            ),
            (&[], StatusCode::UNPROCESSABLE_ENTITY, "invalid_field"),
        ];
        for (members, status, code) in cases {
            let (got, error) = create_bundle(&app, "fraud-scorer", "b8", members).await;
            assert_eq!(
                (got, error["error"]["code"].as_str()),
                (status, Some(code)),
                "{members:?}: {error}"
            );
        }

        // A deprecated version stays readable but joins no new bundle.
        let (status, version) = call(
            &app,
            json_request(
                "POST",
                "/api/v1/models/fraud-scorer/versions/v2/deprecate",
                json!({"reason": "bad recall"}),
            ),
        )
        .await;
        assert_eq!(
            (status, version["deprecated"].as_bool()),
            (StatusCode::OK, Some(true))
        );
        let (status, version) = call(&app, get("/api/v1/models/fraud-scorer/versions/v2")).await;
        assert_eq!(
            (status, version["deprecated"].as_bool()),
            (StatusCode::OK, Some(true))
        );
        let (status, error) = create_bundle(&app, "fraud-scorer", "b8", &["fraud-scorer/v2"]).await;
        assert_eq!(
            (status, error["error"]["code"].as_str()),
            (StatusCode::CONFLICT, Some("version_deprecated"))
        );
        let (status, error) = call(
            &app,
            json_request(
                "POST",
                "/api/v1/models/fraud-scorer/versions/v9/deprecate",
                json!({}),
            ),
        )
        .await;
        assert_eq!(
            (status, error["error"]["code"].as_str()),
            (StatusCode::NOT_FOUND, Some("version_not_found"))
        );

        let (_, listed) = call(&app, get("/api/v1/models/fraud-scorer/bundles")).await;
        assert_eq!(listed["bundles"].as_array().unwrap().len(), 1);
        let (status, _) = call(&app, get("/api/v1/models/fraud-scorer/bundles/b7")).await;
        assert_eq!(status, StatusCode::OK);
        let (status, error) = call(&app, get("/api/v1/models/fraud-scorer/bundles/b8")).await;
        assert_eq!(
            (status, error["error"]["code"].as_str()),
            (StatusCode::NOT_FOUND, Some("bundle_not_found"))
        );
        let actions = actions(&app).await;
        assert_eq!(
            actions.iter().filter(|a| *a == "bundle.create").count(),
            1,
            "{actions:?}"
        );
        assert_eq!(
            actions.iter().filter(|a| *a == "version.deprecate").count(),
            1,
            "{actions:?}"
        );
    }

    #[tokio::test]
    async fn promoting_sets_the_last_known_good_and_is_audited() {
        let dir = tempfile::tempdir().unwrap();
        let app = app(dir.path());
        register(&app, "solo", "v1", "one", json!({})).await;
        register(&app, "solo", "v2", "two", json!({})).await;
        for (bundle, member) in [("b1", "solo/v1"), ("b2", "solo/v2")] {
            let (status, created) = create_bundle(&app, "solo", bundle, &[member]).await;
            assert_eq!(status, StatusCode::CREATED, "{created}");
        }
        let (status, error) = call(&app, get("/api/v1/models/solo/lkg")).await;
        assert_eq!(
            (status, error["error"]["code"].as_str()),
            (StatusCode::NOT_FOUND, Some("lkg_not_found"))
        );

        let promote = |bundle: &str| {
            json_request(
                "POST",
                "/api/v1/models/solo/promote",
                json!({"bundle": bundle, "reason": "soaked a week"}),
            )
        };
        let (status, promoted) = call(&app, promote("b1")).await;
        assert_eq!(status, StatusCode::OK, "{promoted}");
        assert_eq!(
            (promoted["bundle"].as_str(), promoted["changed"].as_bool()),
            (Some("b1"), Some(true))
        );
        assert_eq!(promoted["before"], Value::Null);
        let (_, promoted) = call(&app, promote("b2")).await;
        assert_eq!(promoted["before"], "b1");
        let (status, lkg) = call(&app, get("/api/v1/models/solo/lkg")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(lkg["bundle"], "b2");
        assert_eq!(lkg["members"][0]["version"], "v2");
        assert_eq!(lkg["promoted_by"], LOCAL_OPERATOR);

        let (_, audit) = call(&app, get("/api/v1/audit?model=solo")).await;
        let last = audit["entries"].as_array().unwrap().last().unwrap().clone();
        assert_eq!(last["action"], "model.promote");
        assert_eq!(last["target"], "solo");
        assert_eq!(last["reason"], "soaked a week");
        assert_eq!(last["before"], json!({"lkg": "b1"}));
        assert_eq!(last["after"], json!({"lkg": "b2"}));

        let (status, error) = call(&app, promote("b9")).await;
        assert_eq!(
            (status, error["error"]["code"].as_str()),
            (StatusCode::NOT_FOUND, Some("bundle_not_found"))
        );
        let (status, error) = call(
            &app,
            json_request(
                "POST",
                "/api/v1/models/solo/promote",
                json!({"reason": "x"}),
            ),
        )
        .await;
        assert_eq!(
            (status, error["error"]["code"].as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, Some("invalid_field"))
        );
        let (_, lkg) = call(&app, get("/api/v1/models/solo/lkg")).await;
        assert_eq!(lkg["bundle"], "b2", "refusals change nothing");
    }

    #[tokio::test]
    async fn referenced_versions_are_never_deleted_and_gc_keeps_their_artifacts() {
        let dir = tempfile::tempdir().unwrap();
        let app = app(dir.path());
        let lkg_digest = register(&app, "m", "v1", "lkg", json!({})).await;
        let pinned_digest = register(&app, "m", "v2", "pinned", json!({})).await;
        let bundled_digest = register(&app, "m", "v3", "bundled", json!({})).await;
        let free_digest = register(&app, "m", "v4", "free", json!({})).await;
        let shared_digest = register(&app, "m", "v5", "shared", json!({})).await;
        register(&app, "m", "v6", "shared", json!({})).await;
        create_bundle(&app, "m", "b1", &["m/v1"]).await;
        create_bundle(&app, "m", "b3", &["m/v3"]).await;
        call(
            &app,
            json_request("POST", "/api/v1/models/m/promote", json!({"bundle": "b1"})),
        )
        .await;
        let retain = |method: &str, reason: &str| {
            json_request(
                method,
                "/api/v1/models/m/versions/v2/retain",
                json!({"reason": reason}),
            )
        };
        let (status, pin) = call(&app, retain("POST", "rollout:r1")).await;
        assert_eq!(
            (status, pin["created"].as_bool()),
            (StatusCode::CREATED, Some(true))
        );
        let (status, _) = call(&app, retain("POST", "rollout:r1")).await;
        assert_eq!(status, StatusCode::OK);
        let (status, error) = call(&app, retain("POST", "because")).await;
        assert_eq!(
            (status, error["error"]["code"].as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, Some("invalid_field"))
        );
        let (_, pins) = call(&app, get("/api/v1/models/m/versions/v2/retain")).await;
        assert_eq!(pins["retentions"][0]["reason"], "rollout:r1");

        let delete = |id: &str| {
            Request::delete(format!("/api/v1/models/m/versions/{id}?reason=cleanup"))
                .body(Body::empty())
                .unwrap()
        };
        for (id, why) in [
            ("v1", "lkg:m/b1"),
            ("v2", "retained:rollout:r1"),
            ("v3", "bundle:m/b3"),
        ] {
            let (status, error) = call(&app, delete(id)).await;
            assert_eq!(
                (status, error["error"]["code"].as_str()),
                (StatusCode::CONFLICT, Some("version_retained")),
                "{id}: {error}"
            );
            assert!(
                error["error"]["message"].as_str().unwrap().contains(why),
                "{error}"
            );
        }
        let (_, audit) = call(&app, get("/api/v1/audit?model=m")).await;
        let refused: Vec<_> = audit["entries"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["action"] == "version.delete.refused")
            .collect();
        assert_eq!(refused.len(), 3);
        assert_eq!(refused[0]["target"], "m/v1");
        assert_eq!(
            refused[0]["after"]["refused"],
            json!(["lkg:m/b1", "bundle:m/b1"])
        );

        // Released, the pin no longer holds v2.
        let (status, released) = call(&app, retain("DELETE", "rollout:r1")).await;
        assert_eq!(
            (status, released["removed"].as_bool()),
            (StatusCode::OK, Some(true))
        );
        let (status, deleted) = call(&app, delete("v2")).await;
        assert_eq!(status, StatusCode::OK, "{deleted}");
        assert_eq!(deleted["artifact_removed"], true);
        let (status, deleted) = call(&app, delete("v4")).await;
        assert_eq!(
            (status, deleted["digest"].as_str()),
            (StatusCode::OK, Some(free_digest.as_str()))
        );
        // v6 still names v5's artifact.
        let (_, deleted) = call(&app, delete("v5")).await;
        assert_eq!(deleted["artifact_removed"], false);
        let (status, error) = call(&app, delete("v5")).await;
        assert_eq!(
            (status, error["error"]["code"].as_str()),
            (StatusCode::NOT_FOUND, Some("version_not_found"))
        );

        // GC removes only what no version names.
        let (_, stray) = call(
            &app,
            Request::put("/api/v1/artifacts")
                .body(Body::from("stray"))
                .unwrap(),
        )
        .await;
        let (status, report) = call(
            &app,
            Request::post("/api/v1/gc").body(Body::empty()).unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{report}");
        assert_eq!(report["removed"], json!([stray["digest"]]));
        assert_eq!(report["checked"], 4);
        let root = dir.path().join("artifacts");
        let artifacts = crate::store::artifacts::ArtifactStore::open(&root).unwrap();
        for digest in [&lkg_digest, &bundled_digest, &shared_digest] {
            assert!(artifacts.contains(digest), "{digest}");
        }
        assert!(!artifacts.contains(&pinned_digest));
        let (_, report) = call(
            &app,
            Request::post("/api/v1/gc").body(Body::empty()).unwrap(),
        )
        .await;
        assert_eq!(report["removed"], json!([]));

        // Deletions stay in the audit log, which still verifies.
        let actions = actions(&app).await;
        assert_eq!(
            actions.iter().filter(|a| *a == "version.delete").count(),
            3,
            "{actions:?}"
        );
        assert_eq!(
            actions.iter().filter(|a| *a == "artifact.gc").count(),
            2,
            "{actions:?}"
        );
        let (_, verdict) = call(&app, get("/api/v1/audit/verify")).await;
        assert_eq!(verdict["intact"], true);
    }

    #[tokio::test]
    async fn a_failed_store_write_changes_nothing() {
        use crate::store::Store;
        let dir = tempfile::tempdir().unwrap();
        let sqlite = crate::store::sqlite::SqliteStore::open(&dir.path().join("b.db")).unwrap();
        // The upload's audit entry, the registration and the bundle are
        // written, then the disk dies.
        let store = Arc::new(crate::store::faulty::FaultyStore::new(sqlite, 3, true));
        let artifacts =
            crate::store::artifacts::ArtifactStore::open(&dir.path().join("a")).unwrap();
        let registry = Arc::new(Registry::new(store.clone(), artifacts, 1024));
        let config = crate::config::Config::parse(std::path::Path::new("t.yaml"), "{}").unwrap();
        let access = AccessPolicy::new(None, true);
        let app = super::super::router(Gateway::new(config).unwrap(), Some(registry), None, access);
        register(&app, "m", "v1", "one", json!({})).await;
        let (status, _) = create_bundle(&app, "m", "b1", &["m/v1"]).await;
        assert_eq!(status, StatusCode::CREATED);
        let (status, error) = call(
            &app,
            json_request("POST", "/api/v1/models/m/promote", json!({"bundle": "b1"})),
        )
        .await;
        assert_eq!(
            (status, error["error"]["code"].as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, Some("store_unavailable"))
        );
        assert_eq!(store.inner().lkg("m").unwrap(), None);
        let (status, _) = call(
            &app,
            Request::delete("/api/v1/models/m/versions/v1")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(store.inner().version("m", "v1").unwrap().is_some());
        assert_eq!(
            store.inner().audit(&AuditFilter::default()).unwrap().len(),
            3
        );
    }

    #[tokio::test]
    async fn without_a_data_dir_the_registry_says_so() {
        let config = crate::config::Config::parse(std::path::Path::new("t.yaml"), "{}").unwrap();
        let access = AccessPolicy::new(None, true);
        let app = super::super::router(Gateway::new(config).unwrap(), None, None, access);
        let (status, error) = call(&app, get("/api/v1/models/fraud/versions")).await;
        assert_eq!(
            (status, error["error"]["code"].as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, Some("registry_disabled"))
        );
    }
}
