//! Registry and audit endpoints of the admin API.

use super::auth::Actor;
use super::{AdminState, ApiError};
use crate::registry::{RegisterRequest, Registry, RegistryError};
use crate::store::AuditFilter;
use axum::body::Body;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

pub fn routes() -> Router<AdminState> {
    Router::new()
        .route("/api/v1/artifacts", put(put_artifact))
        .route("/api/v1/artifacts/verify", post(verify_artifacts))
        .route(
            "/api/v1/models/{model}/versions",
            get(list_versions).post(register_version),
        )
        .route("/api/v1/models/{model}/versions/{id}", get(get_version))
        .route("/api/v1/audit", get(list_audit))
        .route("/api/v1/audit/verify", get(verify_audit))
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

fn registry(state: &AdminState) -> Result<&Arc<Registry>, ApiError> {
    state.registry.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "registry_disabled",
            "this gateway runs without a registry (no data_dir)",
        )
    })
}

async fn put_artifact(
    State(state): State<AdminState>,
    Extension(Actor(actor)): Extension<Actor>,
    body: Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let registry = registry(&state)?;
    let stored = registry
        .put_artifact(body.into_data_stream(), &actor)
        .await?;
    let status = if stored.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(json!(stored))))
}

async fn verify_artifacts(
    State(state): State<AdminState>,
    Extension(Actor(actor)): Extension<Actor>,
) -> Result<Json<Value>, ApiError> {
    let report = registry(&state)?.verify_artifacts(&actor).await?;
    Ok(Json(json!(report)))
}

async fn register_version(
    State(state): State<AdminState>,
    Extension(Actor(actor)): Extension<Actor>,
    Path(model): Path<String>,
    request: Result<Json<RegisterRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let registry = registry(&state)?;
    let Json(request) = request?;
    let (version, outcome) = registry.register(&model, request, &actor).await?;
    let created = outcome == crate::store::Registered::Created;
    let mut body = json!(version);
    body["created"] = json!(created);
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(body)))
}

async fn list_versions(
    State(state): State<AdminState>,
    Path(model): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let versions = registry(&state)?.versions(&model).await?;
    Ok(Json(json!({ "model": model, "versions": versions })))
}

async fn get_version(
    State(state): State<AdminState>,
    Path((model, id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let version = registry(&state)?.version(&model, &id).await?;
    Ok(Json(json!(version)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    model: Option<String>,
    /// A duration back from now: `90s`, `15m`, `1h`, `7d`.
    since: Option<String>,
    limit: Option<usize>,
}

async fn list_audit(
    State(state): State<AdminState>,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
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
    Ok(Json(json!({ "entries": entries })))
}

async fn verify_audit(State(state): State<AdminState>) -> Result<Json<Value>, ApiError> {
    let verdict = registry(&state)?.verify_audit().await?;
    Ok(Json(json!(verdict)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::auth::{AccessPolicy, LOCAL_OPERATOR};
    use crate::gateway::Gateway;
    use http::Request;
    use tower::ServiceExt;

    fn app(dir: &std::path::Path) -> Router {
        let config = crate::config::Config::parse(std::path::Path::new("t.yaml"), "{}").unwrap();
        let registry = Arc::new(Registry::open(dir, 1024).unwrap());
        let access = AccessPolicy::new(Some(registry.store()), true);
        super::super::router(Gateway::new(config).unwrap(), Some(registry), access)
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

    #[tokio::test]
    async fn without_a_data_dir_the_registry_says_so() {
        let config = crate::config::Config::parse(std::path::Path::new("t.yaml"), "{}").unwrap();
        let access = AccessPolicy::new(None, true);
        let app = super::super::router(Gateway::new(config).unwrap(), None, access);
        let (status, error) = call(&app, get("/api/v1/models/fraud/versions")).await;
        assert_eq!(
            (status, error["error"]["code"].as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, Some("registry_disabled"))
        );
    }
}
