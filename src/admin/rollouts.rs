//! Rollout endpoints of the admin API: start a rollout from a policy,
//! list and show rollouts, and the operator commands (one endpoint each,
//! so each documents the role it needs).

use super::auth::Actor;
use super::{AdminState, ApiError, ErrorBody};
use crate::policy::{PolicyError, POLICY_FILE_MAX_BYTES};
use crate::rollout::{RolloutError, RolloutView, Rollouts};
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use backstop_core::controller::Command;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn routes() -> OpenApiRouter<AdminState> {
    OpenApiRouter::new()
        .routes(routes!(list_rollouts, start_rollout))
        .routes(routes!(get_rollout))
        .routes(routes!(pause))
        .routes(routes!(resume))
        .routes(routes!(approve))
        .routes(routes!(promote))
        .routes(routes!(abort))
        .routes(routes!(rollback))
}

/// What error positions call the policy when the request names no file.
const DEFAULT_FILE: &str = "policy.yaml";

impl From<RolloutError> for ApiError {
    fn from(error: RolloutError) -> Self {
        let message = error.to_string();
        match error {
            RolloutError::NotFound(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "rollout_not_found", message)
            }
            RolloutError::Conflict(_) => {
                ApiError::new(StatusCode::CONFLICT, "rollout_conflict", message)
            }
            RolloutError::Condemned(_) => {
                ApiError::new(StatusCode::CONFLICT, "candidate_condemned", message)
            }
            RolloutError::Invalid { field, .. } => ApiError {
                status: StatusCode::UNPROCESSABLE_ENTITY,
                code: "invalid_policy",
                message,
                field: Some(field),
            },
            RolloutError::Store(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                message,
            ),
        }
    }
}

/// A policy that cannot be used: the message names file, line, column and
/// field; `field` is the path inside the policy (none for the whole text).
fn invalid_policy(error: PolicyError) -> ApiError {
    ApiError {
        status: StatusCode::UNPROCESSABLE_ENTITY,
        code: "invalid_policy",
        message: error.to_string(),
        field: (!error.path.is_empty()).then_some(error.path),
    }
}

fn rollouts(state: &AdminState) -> Result<&Arc<Rollouts>, ApiError> {
    state.rollouts.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "rollouts_unavailable",
            "rollouts need a data directory: set data_dir in the gateway's config",
        )
    })
}

/// A rollout to start.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct StartRequest {
    /// The policy file's text, YAML (or JSON, which is YAML too).
    policy: String,
    /// The file's name, for error positions (`policy.yaml:12:7: ...`).
    #[serde(default)]
    file: Option<String>,
    /// Start even though this candidate was rolled back or rejected before.
    #[serde(default)]
    force: bool,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// Only this model's rollouts.
    model: Option<String>,
    /// Only open rollouts (running, awaiting approval, paused); default all.
    #[serde(default)]
    open: bool,
}

#[derive(Serialize)]
struct RolloutList {
    /// Newest first.
    rollouts: Vec<RolloutView>,
}

/// Starts a rollout of a policy (audited as `rollout.create`).
#[utoipa::path(
    post,
    path = "/api/v1/rollouts",
    tag = "rollouts",
    description = "Role: deployer. The policy is checked as `backstop policy check` \
        checks it; the candidate and baseline must be versions in the model's \
        routing table. Without a `baseline`, the model's last-known-good is used.",
    security(("bearer" = [])),
    request_body = StartRequest,
    responses(
        (status = 201, description = "Started: the rollout as `GET /api/v1/rollouts/{id}` shows it", body = serde_json::Value),
        (status = 400, description = "`invalid_json`", body = ErrorBody),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
        (status = 403, description = "`forbidden`", body = ErrorBody),
        (status = 409, description = "`rollout_conflict` (the model has an open rollout), \
            `candidate_condemned` (rolled back before; retry with `force`)", body = ErrorBody),
        (status = 413, description = "`body_too_large`", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`", body = ErrorBody),
        (status = 422, description = "`invalid_field`, `invalid_policy` (FILE:LINE:COLUMN in \
            the message, the policy field in `field`)", body = ErrorBody),
        (status = 503, description = "`rollouts_unavailable`, `store_unavailable`", body = ErrorBody),
    )
)]
async fn start_rollout(
    State(state): State<AdminState>,
    Extension(Actor(actor)): Extension<Actor>,
    request: Result<Json<StartRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<RolloutView>), ApiError> {
    let rollouts = rollouts(&state)?;
    let Json(request) = request?;
    let file = std::path::PathBuf::from(request.file.as_deref().unwrap_or(DEFAULT_FILE));
    if request.policy.len() as u64 > POLICY_FILE_MAX_BYTES {
        return Err(invalid_policy(PolicyError::whole_file(
            &file,
            format!(
                "{} bytes is too big for a policy (at most {POLICY_FILE_MAX_BYTES})",
                request.policy.len()
            ),
        )));
    }
    let policy = crate::policy::parse(&file, &request.policy).map_err(invalid_policy)?;
    let view = rollouts
        .start(policy, request.force, &actor)
        .await
        .map_err(|error| match error {
            // What the gateway knows (the model, its versions): located in
            // the text like the file's own errors.
            RolloutError::Invalid { field, message } => invalid_policy(PolicyError::at_field(
                &file,
                &request.policy,
                field,
                message,
            )),
            other => other.into(),
        })?;
    Ok((StatusCode::CREATED, Json(view)))
}

/// Rollouts, newest first (at most 200).
#[utoipa::path(
    get,
    path = "/api/v1/rollouts",
    tag = "rollouts",
    description = "Role: viewer.",
    security(("bearer" = [])),
    params(ListQuery),
    responses(
        (status = 200, description = "`{rollouts: [...]}`, each as `GET /api/v1/rollouts/{id}` shows it", body = serde_json::Value),
        (status = 400, description = "`invalid_query`", body = ErrorBody),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
        (status = 503, description = "`rollouts_unavailable`, `store_unavailable`", body = ErrorBody),
    )
)]
async fn list_rollouts(
    State(state): State<AdminState>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<RolloutList>, ApiError> {
    let rollouts = rollouts(&state)?;
    let Query(query) = query?;
    let model = query.model.filter(|m| !m.is_empty());
    Ok(Json(RolloutList {
        rollouts: rollouts.list(model, query.open).await?,
    }))
}

/// One rollout: phase, stage, traffic shares, every trigger's figures and
/// the verdict.
#[utoipa::path(
    get,
    path = "/api/v1/rollouts/{id}",
    tag = "rollouts",
    description = "Role: viewer.",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "Rollout id, or a model name: its open rollout, else its latest")),
    responses(
        (status = 200, description = "`{id, model, candidate, baseline, strategy, phase, \
            paused_by?, stage, stages, candidate_percent, shadow_percent, stage_elapsed_ms, \
            stage_hold_ms, waiting_for_traffic, triggers: [...], verdict?, open, \
            created_unix_ms, updated_unix_ms, rollback_timing?, policy}` (`policy`: \
            webhook addresses cut to scheme and host, hook header values redacted)", body = serde_json::Value),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
        (status = 404, description = "`rollout_not_found`", body = ErrorBody),
        (status = 503, description = "`rollouts_unavailable`, `store_unavailable`", body = ErrorBody),
    )
)]
async fn get_rollout(
    State(state): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Json<RolloutView>, ApiError> {
    Ok(Json(rollouts(&state)?.status(&id).await?))
}

/// Runs one operator command on rollout `id` (or the open rollout of the
/// model `id`).
async fn run_command(
    state: &AdminState,
    id: &str,
    command: Command,
    actor: &str,
) -> Result<Json<RolloutView>, ApiError> {
    Ok(Json(rollouts(state)?.command(id, command, actor).await?))
}

/// One endpoint per operator command: the same answers, its own role.
macro_rules! command_endpoint {
    ($handler:ident, $command:expr, $path:literal, $description:literal, $summary:literal) => {
        #[doc = $summary]
        #[utoipa::path(
            post,
            path = $path,
            tag = "rollouts",
            description = $description,
            security(("bearer" = [])),
            params(("id" = String, Path, description = "Rollout id, or a model name for its open rollout")),
            responses(
                (status = 200, description = "Done: the rollout as `GET /api/v1/rollouts/{id}` shows it", body = serde_json::Value),
                (status = 401, description = "`unauthenticated`", body = ErrorBody),
                (status = 403, description = "`forbidden`", body = ErrorBody),
                (status = 404, description = "`rollout_not_found` (no open rollout by that id or model)", body = ErrorBody),
                (status = 409, description = "`rollout_conflict`: the command does not apply now; nothing changed", body = ErrorBody),
                (status = 503, description = "`rollouts_unavailable`, `store_unavailable`", body = ErrorBody),
            )
        )]
        async fn $handler(
            State(state): State<AdminState>,
            Extension(Actor(actor)): Extension<Actor>,
            Path(id): Path<String>,
        ) -> Result<Json<RolloutView>, ApiError> {
            run_command(&state, &id, $command, &actor).await
        }
    };
}

command_endpoint!(
    pause,
    Command::Pause,
    "/api/v1/rollouts/{id}/pause",
    "Role: deployer. Holds the current traffic shares; triggers keep judging.",
    "Pauses a rollout."
);
command_endpoint!(
    resume,
    Command::Resume,
    "/api/v1/rollouts/{id}/resume",
    "Role: deployer. The current stage starts over with a fresh hold.",
    "Resumes a paused rollout."
);
command_endpoint!(
    approve,
    Command::Approve,
    "/api/v1/rollouts/{id}/approve",
    "Role: approver. Only while a gated stage awaits approval.",
    "Approves the stage that awaits approval."
);
command_endpoint!(
    promote,
    Command::Promote,
    "/api/v1/rollouts/{id}/promote",
    "Role: approver. Skips the remaining stages: the candidate gets all traffic and \
        becomes the last-known-good.",
    "Promotes the candidate now."
);
command_endpoint!(
    abort,
    Command::Abort,
    "/api/v1/rollouts/{id}/abort",
    "Role: deployer. All traffic back on the baseline; the candidate is not condemned.",
    "Aborts a rollout."
);
command_endpoint!(
    rollback,
    Command::Rollback,
    "/api/v1/rollouts/{id}/rollback",
    "Role: deployer. All traffic back on the baseline; the candidate is condemned \
        (a new rollout of it needs `force`).",
    "Rolls a rollout back."
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::auth::{AccessPolicy, LOCAL_OPERATOR};
    use crate::gateway::Gateway;
    use crate::registry::Registry;
    use axum::body::Body;
    use axum::Router;
    use http::Request;
    use serde_json::{json, Value};
    use tower::ServiceExt;

    const POLICY: &str = r#"model: m
candidate: v2
strategy: { canary: { steps: [5, 50, 100], bake: 1m } }
triggers:
  - { metric: error_rate, above: "5%", action: rollback }
"#;

    struct Fixture {
        _dir: tempfile::TempDir,
        gateway: Arc<Gateway>,
        app: Router,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let config = crate::config::Config::parse(
            std::path::Path::new("t.yaml"),
            r#"
models:
  m:
    versions:
      - { name: v1, weight: 100, endpoints: ["http://127.0.0.1:9"] }
      - { name: v2, weight: 0, endpoints: ["http://127.0.0.1:10"] }
"#,
        )
        .unwrap();
        let gateway = Gateway::new(config).unwrap();
        let registry = Arc::new(Registry::open(dir.path(), 1024).unwrap());
        let rollouts = Rollouts::new(gateway.clone(), registry.clone());
        let access = AccessPolicy::new(Some(registry.store()), true);
        let app = super::super::router(gateway.clone(), Some(registry), Some(rollouts), access);
        Fixture {
            _dir: dir,
            gateway,
            app,
        }
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

    fn post(uri: &str, body: Option<Value>) -> Request<Body> {
        let request = Request::post(uri);
        match body {
            Some(body) => request
                .header("content-type", "application/json")
                .body(Body::from(body.to_string())),
            None => request.body(Body::empty()),
        }
        .unwrap()
    }

    fn get(uri: &str) -> Request<Body> {
        Request::get(uri).body(Body::empty()).unwrap()
    }

    async fn start(app: &Router, policy: &str, force: bool) -> (StatusCode, Value) {
        let body = json!({"policy": policy, "file": "canary.yaml", "force": force});
        call(app, post("/api/v1/rollouts", Some(body))).await
    }

    async fn command(app: &Router, id: &str, command: &str) -> (StatusCode, Value) {
        call(app, post(&format!("/api/v1/rollouts/{id}/{command}"), None)).await
    }

    /// The candidate's weight in the model's routing table, basis points.
    fn candidate_weight(gateway: &Gateway) -> u32 {
        let table = gateway.table("m").unwrap();
        table
            .spec
            .versions
            .iter()
            .find(|v| v.name == "v2")
            .unwrap()
            .weight
    }

    #[tokio::test]
    async fn starting_a_canary_routes_its_first_step() {
        let f = fixture();
        let (status, view) = start(&f.app, POLICY, false).await;
        assert_eq!(status, StatusCode::CREATED, "{view}");
        assert_eq!(view["phase"], "running");
        assert_eq!(view["open"], true);
        assert_eq!(view["candidate_percent"], 5.0);
        assert_eq!(
            (view["stage"].as_u64(), view["stages"].as_u64()),
            (Some(0), Some(3))
        );
        assert_eq!(
            (view["candidate"].as_str(), view["baseline"].as_str()),
            (Some("v2"), Some("v1"))
        );
        assert_eq!(view["strategy"], "canary");
        assert_eq!(view["triggers"].as_array().unwrap().len(), 1);
        assert_eq!(view["triggers"][0]["state"], "waiting_for_traffic");
        assert_eq!(candidate_weight(&f.gateway), 500, "5% of 10000");
        let id = view["id"].as_str().unwrap();
        assert!(id.starts_with("ro-"), "{id}");

        // By id and by model name.
        for key in [id, "m"] {
            let (status, shown) = call(&f.app, get(&format!("/api/v1/rollouts/{key}"))).await;
            assert_eq!(status, StatusCode::OK, "{shown}");
            assert_eq!(shown["id"], id);
        }
        let (status, error) = call(&f.app, get("/api/v1/rollouts/ro-nope")).await;
        assert_eq!(
            (status, error["error"]["code"].as_str()),
            (StatusCode::NOT_FOUND, Some("rollout_not_found"))
        );

        // One open rollout per model.
        let (status, error) = start(&f.app, POLICY, false).await;
        assert_eq!(
            (status, error["error"]["code"].as_str()),
            (StatusCode::CONFLICT, Some("rollout_conflict")),
            "{error}"
        );

        let (_, audit) = call(&f.app, get("/api/v1/audit")).await;
        let created = audit["entries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["action"] == "rollout.create")
            .expect("rollout.create is audited");
        assert_eq!(created["actor"], LOCAL_OPERATOR);
        assert_eq!(created["target"], format!("m/{id}"));
    }

    /// The status carries the policy (what `backstop runbook` reads), with
    /// the baseline resolved and no webhook secret or hook header value.
    #[tokio::test]
    async fn the_status_carries_the_policy_without_secrets() {
        let f = fixture();
        let text = format!(
            "{POLICY}hooks:\n  - {{ name: flags, url: \"https://flags.internal/off?key=s3cr3t\", headers: {{ Authorization: \"Bearer s3cr3t\" }} }}\nnotify:\n  - {{ name: chat, url: \"https://hooks.slack.com/services/s3cr3t\", format: slack }}\n  - {{ name: pager, url_env: PAGER_URL, format: alertmanager, severities: [critical] }}\n"
        );
        let (status, view) = start(&f.app, &text, false).await;
        assert_eq!(status, StatusCode::CREATED, "{view}");
        let (status, shown) = call(&f.app, get("/api/v1/rollouts/m")).await;
        assert_eq!(status, StatusCode::OK, "{shown}");
        assert!(!shown.to_string().contains("s3cr3t"), "{shown}");
        let policy: backstop_core::policy::Policy =
            serde_json::from_value(shown["policy"].clone()).unwrap();
        policy.check().unwrap();
        assert_eq!(policy.baseline.as_deref(), Some("v1"));
        assert_eq!(
            policy.notify[0].url.as_deref(),
            Some("https://hooks.slack.com/…")
        );
        assert_eq!(policy.notify[1].url_env.as_deref(), Some("PAGER_URL"));
        assert_eq!(policy.hooks[0].headers["Authorization"], "[redacted]");
        let runbook = crate::runbook::build(
            "m",
            &policy,
            "rollout",
            &crate::runbook::Admin {
                url: "http://admin",
            },
        );
        assert_eq!(runbook.baseline, "v1");
        assert_eq!(runbook.notifications.receivers.len(), 2);
    }

    #[tokio::test]
    async fn bad_policies_are_422_with_the_field_and_its_line() {
        let f = fixture();
        let text = POLICY.replace("\"5%\"", "\"250ms\"");
        let (status, error) = start(&f.app, &text, false).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{error}");
        assert_eq!(error["error"]["code"], "invalid_policy");
        assert_eq!(error["error"]["field"], "triggers[0].above");
        let message = error["error"]["message"].as_str().unwrap();
        assert!(message.starts_with("canary.yaml:5:"), "{message}");

        // What only the gateway knows is located in the text too.
        let text = POLICY.replace("candidate: v2", "candidate: v9");
        let (status, error) = start(&f.app, &text, false).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{error}");
        assert_eq!(error["error"]["field"], "candidate");
        let message = error["error"]["message"].as_str().unwrap();
        assert!(message.starts_with("canary.yaml:2:"), "{message}");
        assert!(message.contains("no version \"v9\""), "{message}");

        let (status, error) = start(&f.app, "", false).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{error}");
        assert_eq!(error["error"]["code"], "invalid_policy");

        let (status, error) = call(
            &f.app,
            post(
                "/api/v1/rollouts",
                Some(json!({"policy": POLICY, "forse": true})),
            ),
        )
        .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{error}");
        assert_eq!(error["error"]["code"], "invalid_field");

        assert_eq!(candidate_weight(&f.gateway), 0, "nothing started");
        let (_, listed) = call(&f.app, get("/api/v1/rollouts")).await;
        assert_eq!(listed["rollouts"], json!([]));
    }

    #[tokio::test]
    async fn pause_resume_and_refused_commands() {
        let f = fixture();
        let (_, view) = start(&f.app, POLICY, false).await;
        let id = view["id"].as_str().unwrap().to_string();

        let (status, view) = command(&f.app, &id, "pause").await;
        assert_eq!(status, StatusCode::OK, "{view}");
        assert_eq!(
            (view["phase"].as_str(), view["paused_by"].as_str()),
            (Some("paused"), Some("operator"))
        );
        let (status, error) = command(&f.app, &id, "pause").await;
        assert_eq!(
            (status, error["error"]["code"].as_str()),
            (StatusCode::CONFLICT, Some("rollout_conflict"))
        );
        let (status, view) = command(&f.app, "m", "resume").await;
        assert_eq!(status, StatusCode::OK, "{view}");
        assert_eq!(view["phase"], "running");
        assert_eq!(view["candidate_percent"], 5.0);

        // Nothing awaits approval.
        let (status, error) = command(&f.app, &id, "approve").await;
        assert_eq!(
            (status, error["error"]["code"].as_str()),
            (StatusCode::CONFLICT, Some("rollout_conflict")),
            "{error}"
        );
        assert!(
            error["error"]["message"]
                .as_str()
                .unwrap()
                .contains("waiting for approval"),
            "{error}"
        );

        let (status, error) = command(&f.app, &id, "explode").await;
        assert_eq!(
            (status, error["error"]["code"].as_str()),
            (StatusCode::NOT_FOUND, Some("not_found"))
        );
        let (status, error) = command(&f.app, "ro-nope", "pause").await;
        assert_eq!(
            (status, error["error"]["code"].as_str()),
            (StatusCode::NOT_FOUND, Some("rollout_not_found"))
        );
    }

    #[tokio::test]
    async fn a_gated_stage_waits_for_approve() {
        let f = fixture();
        let text = POLICY.replace("bake: 1m", "bake: 1m, approval: [5]");
        let (status, view) = start(&f.app, &text, false).await;
        assert_eq!(status, StatusCode::CREATED, "{view}");
        assert_eq!(view["phase"], "awaiting_approval");
        assert_eq!(candidate_weight(&f.gateway), 0);
        let (status, view) = command(&f.app, "m", "approve").await;
        assert_eq!(status, StatusCode::OK, "{view}");
        assert_eq!(
            (view["phase"].as_str(), view["candidate_percent"].as_f64()),
            (Some("running"), Some(5.0))
        );
        assert_eq!(candidate_weight(&f.gateway), 500);
    }

    #[tokio::test]
    async fn a_rolled_back_rollout_takes_no_more_commands_and_condemns_its_candidate() {
        let f = fixture();
        let (_, view) = start(&f.app, POLICY, false).await;
        let id = view["id"].as_str().unwrap().to_string();

        let (status, view) = command(&f.app, &id, "rollback").await;
        assert_eq!(status, StatusCode::OK, "{view}");
        assert_eq!(
            (view["phase"].as_str(), view["open"].as_bool()),
            (Some("rolled_back"), Some(false))
        );
        assert_eq!(view["verdict"]["by"], "operator");
        assert!(
            view["rollback_timing"]["verdict_to_swap_us"].is_number(),
            "{view}"
        );
        assert_eq!(
            candidate_weight(&f.gateway),
            0,
            "all traffic on the baseline"
        );
        let table = f.gateway.table("m").unwrap();
        let v2 = table.versions.iter().find(|v| v.name == "v2").unwrap();
        assert!(
            !v2.fallback,
            "a condemned candidate is never a health fallback"
        );

        let (status, error) = command(&f.app, &id, "resume").await;
        assert_eq!(status, StatusCode::CONFLICT, "{error}");
        assert_eq!(error["error"]["code"], "rollout_conflict");
        assert!(
            error["error"]["message"]
                .as_str()
                .unwrap()
                .contains("finished"),
            "{error}"
        );
        // By model name there is no open rollout any more; by id it shows.
        let (status, _) = command(&f.app, "m", "resume").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, shown) = call(&f.app, get(&format!("/api/v1/rollouts/{id}"))).await;
        assert_eq!(
            (status, shown["phase"].as_str()),
            (StatusCode::OK, Some("rolled_back"))
        );
        // Status by model name shows its latest rollout, finished or not.
        let (status, shown) = call(&f.app, get("/api/v1/rollouts/m")).await;
        assert_eq!(
            (status, shown["id"].as_str(), shown["phase"].as_str()),
            (StatusCode::OK, Some(id.as_str()), Some("rolled_back"))
        );

        let (status, error) = start(&f.app, POLICY, false).await;
        assert_eq!(
            (status, error["error"]["code"].as_str()),
            (StatusCode::CONFLICT, Some("candidate_condemned")),
            "{error}"
        );
        let (status, view) = start(&f.app, POLICY, true).await;
        assert_eq!(status, StatusCode::CREATED, "{view}");
        assert_ne!(view["id"], id.as_str());
    }

    #[tokio::test]
    async fn lists_filter_by_model_and_openness() {
        let f = fixture();
        let (_, first) = start(&f.app, POLICY, false).await;
        command(&f.app, "m", "abort").await;
        let (_, second) = start(&f.app, POLICY, false).await;
        assert_eq!(
            second["phase"], "running",
            "an aborted candidate is not condemned"
        );

        let ids = |listed: &Value| -> Vec<String> {
            listed["rollouts"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["id"].as_str().unwrap().to_string())
                .collect()
        };
        let (status, listed) = call(&f.app, get("/api/v1/rollouts")).await;
        assert_eq!(status, StatusCode::OK, "{listed}");
        let (first, second) = (
            first["id"].as_str().unwrap(),
            second["id"].as_str().unwrap(),
        );
        assert_eq!(ids(&listed), [second, first], "newest first");
        assert_eq!(listed["rollouts"][1]["phase"], "aborted");
        let (_, listed) = call(&f.app, get("/api/v1/rollouts?open=true")).await;
        assert_eq!(ids(&listed), [second]);
        let (_, listed) = call(&f.app, get("/api/v1/rollouts?model=m&open=false")).await;
        assert_eq!(ids(&listed).len(), 2);
        let (_, listed) = call(&f.app, get("/api/v1/rollouts?model=other")).await;
        assert!(ids(&listed).is_empty());
        let (status, error) = call(&f.app, get("/api/v1/rollouts?open=maybe")).await;
        assert_eq!(
            (status, error["error"]["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some("invalid_query"))
        );
    }

    #[tokio::test]
    async fn without_a_data_dir_rollouts_say_so() {
        let config = crate::config::Config::parse(std::path::Path::new("t.yaml"), "{}").unwrap();
        let access = AccessPolicy::new(None, true);
        let app = super::super::router(Gateway::new(config).unwrap(), None, None, access);
        for request in [
            get("/api/v1/rollouts"),
            get("/api/v1/rollouts/m"),
            post("/api/v1/rollouts", Some(json!({"policy": POLICY}))),
            post("/api/v1/rollouts/m/pause", None),
        ] {
            let (status, error) = call(&app, request).await;
            assert_eq!(
                (status, error["error"]["code"].as_str()),
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    Some("rollouts_unavailable")
                )
            );
            let message = error["error"]["message"].as_str().unwrap();
            assert!(message.contains("data_dir"), "{message}");
        }
    }
}
