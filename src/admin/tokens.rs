//! Token endpoints: create (the secret is in the answer, once), list (no
//! secrets, no hashes) and revoke. Admins only (see `access::required`).

use super::auth::{blocking, on_blocking_pool, Actor};
use super::{AdminState, ApiError, ErrorBody};
use crate::access::{self, Role, TokenError};
use crate::store::{Store, StoreError, TokenRecord};
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};

use std::sync::Arc;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn routes() -> OpenApiRouter<AdminState> {
    OpenApiRouter::new()
        .routes(routes!(list_tokens, create_token))
        .routes(routes!(revoke_token))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateRequest {
    name: String,
    role: Role,
    /// Why, for the audit log.
    #[serde(default)]
    reason: String,
}

impl From<TokenError> for ApiError {
    fn from(error: TokenError) -> Self {
        let message = error.to_string();
        match error {
            TokenError::Invalid { field, message } => ApiError {
                status: StatusCode::UNPROCESSABLE_ENTITY,
                code: "invalid_field",
                message: format!("{field}: {message}"),
                field: Some(field.into()),
            },
            TokenError::Random(_) => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
            }
            TokenError::Store(error) => store_error(error),
        }
    }
}

fn store_error(error: StoreError) -> ApiError {
    let message = error.to_string();
    match error {
        StoreError::Conflict(_) | StoreError::Refused(_) => {
            ApiError::new(StatusCode::CONFLICT, "token_conflict", message)
        }
        StoreError::NotFound(_) => ApiError::new(StatusCode::NOT_FOUND, "token_not_found", message),
        StoreError::Unavailable(_) | StoreError::Corrupt(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            message,
        ),
    }
}

fn token_store(state: &AdminState) -> Result<Arc<dyn Store>, ApiError> {
    state.access.store().cloned().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "registry_disabled",
            "this gateway runs without a store (no data_dir), so it has no tokens",
        )
    })
}

/// A new token: its secret is here and nowhere else.
#[derive(Serialize, ToSchema)]
struct CreatedToken {
    id: String,
    name: String,
    role: Role,
    /// The secret (`bst_...`), shown once.
    token: String,
}

/// The token list.
#[derive(Serialize, ToSchema)]
struct TokenList {
    /// Revoked tokens too; no secrets, no hashes.
    tokens: Vec<TokenRecord>,
}

/// Creates a token (audited as `token.create`).
#[utoipa::path(
    post,
    path = "/api/v1/tokens",
    tag = "tokens",
    description = "Role: admin.",
    security(("bearer" = [])),
    request_body = CreateRequest,
    responses(
        (status = 201, description = "Created; the secret is shown only here", body = CreatedToken),
        (status = 400, description = "`invalid_json`", body = ErrorBody),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
        (status = 403, description = "`forbidden`", body = ErrorBody),
        (status = 409, description = "`token_conflict`", body = ErrorBody),
        (status = 413, description = "`body_too_large`", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`", body = ErrorBody),
        (status = 422, description = "`invalid_field` (with `field`)", body = ErrorBody),
        (status = 500, description = "`internal`", body = ErrorBody),
        (status = 503, description = "`registry_disabled`, `store_unavailable`", body = ErrorBody),
    )
)]
async fn create_token(
    State(state): State<AdminState>,
    Extension(Actor(actor)): Extension<Actor>,
    request: Result<Json<CreateRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<CreatedToken>), ApiError> {
    let store = token_store(&state)?;
    let Json(request) = request?;
    let now_ms = crate::gateway::unix_ms();
    let created = on_blocking_pool(move || {
        access::create_token(
            store.as_ref(),
            &request.name,
            request.role,
            &actor,
            &request.reason,
            now_ms,
        )
    })
    .await??;
    let record = created.record;
    Ok((
        StatusCode::CREATED,
        Json(CreatedToken {
            id: record.id,
            name: record.name,
            role: record.role,
            token: created.secret,
        }),
    ))
}

/// All tokens, revoked ones included.
#[utoipa::path(
    get,
    path = "/api/v1/tokens",
    tag = "tokens",
    description = "Role: admin.",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The tokens", body = TokenList),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
        (status = 403, description = "`forbidden`", body = ErrorBody),
        (status = 503, description = "`registry_disabled`, `store_unavailable`", body = ErrorBody),
    )
)]
async fn list_tokens(State(state): State<AdminState>) -> Result<Json<TokenList>, ApiError> {
    let store = token_store(&state)?;
    let tokens = blocking(move || store.tokens()).await?;
    Ok(Json(TokenList { tokens }))
}

/// Revokes a token (audited as `token.revoke`).
#[utoipa::path(
    delete,
    path = "/api/v1/tokens/{id}",
    tag = "tokens",
    description = "Role: admin.",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "Token id")),
    responses(
        (status = 200, description = "The revoked token", body = TokenRecord),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
        (status = 403, description = "`forbidden`", body = ErrorBody),
        (status = 404, description = "`token_not_found`", body = ErrorBody),
        (status = 503, description = "`registry_disabled`, `store_unavailable`", body = ErrorBody),
    )
)]
async fn revoke_token(
    State(state): State<AdminState>,
    Extension(Actor(actor)): Extension<Actor>,
    Path(id): Path<String>,
) -> Result<Json<TokenRecord>, ApiError> {
    let store = token_store(&state)?;
    let revoked = on_blocking_pool(move || access::revoke_token(store.as_ref(), &id, &actor, ""))
        .await?
        .map_err(store_error)?;
    Ok(Json(revoked))
}
