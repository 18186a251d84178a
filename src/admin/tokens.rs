//! Token endpoints: create (the secret is in the answer, once), list (no
//! secrets, no hashes) and revoke. Admins only (see `access::required`).

use super::auth::{blocking, on_blocking_pool, Actor};
use super::{AdminState, ApiError};
use crate::access::{self, Role, TokenError};
use crate::store::{Store, StoreError};
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

pub fn routes() -> Router<AdminState> {
    Router::new()
        .route("/api/v1/tokens", get(list_tokens).post(create_token))
        .route("/api/v1/tokens/{id}", delete(revoke_token))
}

#[derive(Deserialize)]
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

async fn create_token(
    State(state): State<AdminState>,
    Extension(Actor(actor)): Extension<Actor>,
    request: Result<Json<CreateRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
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
    let record = &created.record;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "id": record.id,
            "name": record.name,
            "role": record.role,
            "token": created.secret,
        })),
    ))
}

async fn list_tokens(State(state): State<AdminState>) -> Result<Json<Value>, ApiError> {
    let store = token_store(&state)?;
    let tokens = blocking(move || store.tokens()).await?;
    Ok(Json(json!({ "tokens": tokens })))
}

async fn revoke_token(
    State(state): State<AdminState>,
    Extension(Actor(actor)): Extension<Actor>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let store = token_store(&state)?;
    let revoked = on_blocking_pool(move || access::revoke_token(store.as_ref(), &id, &actor, ""))
        .await?
        .map_err(store_error)?;
    Ok(Json(json!(revoked)))
}
