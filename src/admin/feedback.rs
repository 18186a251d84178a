//! The feedback API: `POST /api/v1/feedback` takes business outcomes keyed
//! by `x-backstop-request-id`; `GET /api/v1/models/{model}/feedback` reads
//! what was joined to each version (see `crate::feedback`).

use super::{AdminState, ApiError, ErrorBody};
use crate::feedback::{FeedbackItem, Unjoined};
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use backstop_core::analysis::KpiWindow;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Items one post may carry.
pub const ITEMS_MAX: usize = 1000;

pub fn routes() -> OpenApiRouter<AdminState> {
    OpenApiRouter::new()
        .routes(routes!(post_feedback))
        .routes(routes!(get_feedback))
}

/// One outcome, as documented (the handler reads it as
/// [`FeedbackItem`]).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct FeedbackItemDoc {
    /// The `x-backstop-request-id` the gateway answered with (32 hex digits).
    request_id: String,
    /// The true label, for accuracy: a string, number or boolean.
    label: Option<Value>,
    /// KPI values by name (`conversion`, `click`, `revenue`...): at most 32
    /// names per model, each 1-64 characters of `[A-Za-z0-9_.:-]`.
    kpis: Option<BTreeMap<String, f64>>,
}

/// One item, or `{"items": [...]}` with at most 1000.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct FeedbackBatchDoc {
    items: Vec<FeedbackItemDoc>,
}

/// What became of a post's items.
#[derive(Debug, Default, Serialize, ToSchema)]
pub struct FeedbackAnswer {
    /// Joined to the version that answered and counted.
    pub accepted: u64,
    /// No answered request has the id (never seen, failed, or evicted).
    pub unknown: u64,
    /// The request was answered longer ago than `feedback.window_ms`.
    pub expired: u64,
    /// The request already took one of the item's KPIs (or its label).
    pub duplicate: u64,
    /// Items refused for their content, with their index in the post.
    pub rejected: Vec<RejectedItem>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RejectedItem {
    pub index: usize,
    /// `invalid_request_id`, `empty_feedback`, `invalid_kpi_name`,
    /// `invalid_kpi_value`, `invalid_label` or `too_many_kpis`.
    pub code: String,
    pub message: String,
}

fn invalid(message: impl Into<String>, field: Option<String>) -> ApiError {
    ApiError {
        field,
        ..ApiError::new(StatusCode::BAD_REQUEST, "invalid_feedback", message)
    }
}

/// The post's items, all parsed before any is applied: a malformed body
/// changes nothing.
fn items_of(body: Value) -> Result<Vec<FeedbackItem>, ApiError> {
    let parse = |value: Value, field: Option<String>| {
        serde_json::from_value::<FeedbackItem>(value).map_err(|e| {
            let at = field.as_deref().map_or(String::new(), |f| format!("{f}: "));
            invalid(format!("{at}{e}"), field)
        })
    };
    match body {
        Value::Object(mut object) if object.contains_key("items") => {
            if object.len() > 1 {
                return Err(invalid(
                    "a batch is {\"items\": [...]} and nothing else",
                    None,
                ));
            }
            let Some(Value::Array(items)) = object.remove("items") else {
                return Err(invalid("items must be an array", Some("items".into())));
            };
            if items.is_empty() || items.len() > ITEMS_MAX {
                return Err(invalid(
                    format!("a batch has 1 to {ITEMS_MAX} items, got {}", items.len()),
                    Some("items".into()),
                ));
            }
            items
                .into_iter()
                .enumerate()
                .map(|(i, item)| parse(item, Some(format!("items[{i}]"))))
                .collect()
        }
        Value::Object(_) => Ok(vec![parse(body, None)?]),
        _ => Err(invalid(
            "expected one feedback item (an object) or {\"items\": [...]}",
            None,
        )),
    }
}

/// Reports business outcomes for answered requests.
#[utoipa::path(
    post,
    path = "/api/v1/feedback",
    tag = "feedback",
    description = "Role: reporter. Applications report what happened after an answer — the true \
        label, KPIs such as `conversion` or `revenue` — keyed by the answer's \
        `x-backstop-request-id`. Each item is joined to the version that answered (within \
        `feedback.window_ms`) and counted in that version's bucket of the post's arrival. A KPI \
        (or the label) posted twice for one request is refused as `duplicate`, so retries never \
        count twice. Deployers and above may post too.",
    security(("bearer" = [])),
    request_body(content = FeedbackBatchDoc, description = "One item (`FeedbackItemDoc`) or `{items: [...]}` (at most 1000)"),
    responses(
        (status = 200, description = "What became of each item", body = FeedbackAnswer),
        (status = 400, description = "`invalid_json`, `invalid_feedback` (with `field`): nothing applied", body = ErrorBody),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
        (status = 403, description = "`forbidden`", body = ErrorBody),
        (status = 413, description = "`body_too_large`", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`", body = ErrorBody),
    )
)]
pub async fn post_feedback(
    State(AdminState { gateway, .. }): State<AdminState>,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<Json<FeedbackAnswer>, ApiError> {
    let Json(body) = body?;
    let items = items_of(body)?;
    let now_ms = crate::gateway::unix_ms();
    let mut answer = FeedbackAnswer::default();
    for (index, item) in items.iter().enumerate() {
        match gateway.feedback.apply(item, now_ms) {
            Ok(_) => answer.accepted += 1,
            Err(Unjoined::Unknown) => answer.unknown += 1,
            Err(Unjoined::Expired) => answer.expired += 1,
            Err(Unjoined::Duplicate) => answer.duplicate += 1,
            Err(Unjoined::Rejected { code, message }) => answer.rejected.push(RejectedItem {
                index,
                code: code.to_string(),
                message,
            }),
        }
    }
    Ok(Json(answer))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct FeedbackQuery {
    /// Window length ending now, rounded up to whole buckets (default: 10
    /// buckets).
    window_ms: Option<u64>,
    /// Or an explicit range of bucket epochs (epoch × bucket_ms = Unix ms).
    from_epoch: Option<u64>,
    to_epoch: Option<u64>,
}

#[derive(Serialize)]
struct VersionFeedbackView {
    /// Over the window asked for, by arrival time.
    window: KpiWindow,
    /// `correct / labeled` over the window.
    accuracy: Option<f64>,
    /// Since the gateway started.
    lifetime: KpiWindow,
    #[serde(flatten)]
    counts: crate::feedback::FeedbackCounts,
}

/// Per-version feedback joined to a model's answers.
#[utoipa::path(
    get,
    path = "/api/v1/models/{model}/feedback",
    tag = "feedback",
    description = "Role: viewer. By version: `{window: {kpis: {name: {n, sum, sum_sq}}, labeled, \
        correct}, accuracy, lifetime, accepted, duplicate, expired, unjudged_labels}`, every \
        version that has \
        answered since the gateway started (rolled-back ones included).",
    security(("bearer" = [])),
    params(("model" = String, Path, description = "Model name"), FeedbackQuery),
    responses(
        (status = 200, description = "`{model, bucket_ms, from_epoch, to_epoch, versions}`", body = Value),
        (status = 400, description = "`invalid_query`", body = ErrorBody),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
        (status = 404, description = "`model_not_found`", body = ErrorBody),
    )
)]
pub async fn get_feedback(
    State(AdminState { gateway, .. }): State<AdminState>,
    Path(model): Path<String>,
    query: Result<Query<FeedbackQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(query) = query?;
    let versions = gateway.feedback.versions_of(&model);
    if versions.is_empty() && gateway.table(&model).is_none() {
        return Err(ApiError::model_not_found(&model));
    }
    let bucket_ms = gateway.feedback.bucket_ms();
    let (from_epoch, to_epoch) = match (query.from_epoch, query.to_epoch, query.window_ms) {
        (Some(from), Some(to), None) if from <= to => (from, to),
        (None, None, window_ms) => {
            let to = crate::gateway::unix_ms() / bucket_ms;
            let buckets = window_ms
                .unwrap_or(10 * bucket_ms)
                .div_ceil(bucket_ms)
                .max(1);
            (to.saturating_sub(buckets - 1), to)
        }
        _ => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                "use either window_ms, or from_epoch and to_epoch with from_epoch <= to_epoch",
            ))
        }
    };
    let views: BTreeMap<String, VersionFeedbackView> = versions
        .iter()
        .map(|v| {
            let window = v.window(from_epoch, to_epoch);
            let view = VersionFeedbackView {
                accuracy: window.accuracy(),
                window,
                lifetime: v.lifetime(),
                counts: v.counts(),
            };
            (v.version.to_string(), view)
        })
        .collect();
    Ok(Json(json!({
        "model": model,
        "bucket_ms": bucket_ms,
        "from_epoch": from_epoch,
        "to_epoch": to_epoch,
        "versions": views,
    })))
}

#[cfg(test)]
mod tests {
    use super::super::{auth::AccessPolicy, router};
    use crate::gateway::request_id::RequestId;
    use crate::gateway::Gateway;
    use axum::body::Body;
    use http::{Request, StatusCode};
    use serde_json::{json, Value};
    use std::sync::Arc;
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

    async fn call(gateway: &Arc<Gateway>, request: Request<Body>) -> (StatusCode, Value) {
        let router = router(gateway.clone(), None, None, AccessPolicy::new(None, true));
        let response = router.oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    fn post(body: &str) -> Request<Body> {
        Request::post("/api/v1/feedback")
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .unwrap()
    }

    /// A request `v1` answered just now, predicting class "1".
    fn answered(gateway: &Gateway) -> RequestId {
        let id = RequestId::new();
        let state = &gateway.table("m").unwrap().versions[0].state;
        let predicted = Some(std::sync::Arc::from("1"));
        gateway
            .feedback
            .record(&id, &state.feedback, predicted, crate::gateway::unix_ms());
        id
    }

    #[tokio::test]
    async fn posts_report_what_became_of_each_item() {
        let gateway = gateway();
        let (a, b) = (answered(&gateway), answered(&gateway));
        let body = json!({"items": [
            {"request_id": a.as_str(), "kpis": {"conversion": 1}, "label": "fraud"},
            {"request_id": b.as_str(), "kpis": {"conversion": 0}},
            {"request_id": a.as_str(), "kpis": {"conversion": 1}},
            {"request_id": RequestId::new().as_str(), "kpis": {"click": 1}},
            {"request_id": "nope", "kpis": {"click": 1}},
            {"request_id": b.as_str()},
        ]});
        let (status, value) = call(&gateway, post(&body.to_string())).await;
        assert_eq!(status, StatusCode::OK, "{value}");
        assert_eq!(value["accepted"], 2, "{value}");
        assert_eq!(value["duplicate"], 1);
        assert_eq!(value["unknown"], 1);
        assert_eq!(value["expired"], 0);
        assert_eq!(
            value["rejected"],
            json!([
                {"index": 4, "code": "invalid_request_id", "message": value["rejected"][0]["message"]},
                {"index": 5, "code": "empty_feedback", "message": value["rejected"][1]["message"]},
            ])
        );
        // One item on its own.
        let c = answered(&gateway);
        let one = json!({"request_id": c.as_str(), "kpis": {"revenue": 2.5}});
        let (status, value) = call(&gateway, post(&one.to_string())).await;
        assert_eq!(
            (status, value["accepted"].as_u64()),
            (StatusCode::OK, Some(1))
        );

        let (status, value) = call(
            &gateway,
            Request::get("/api/v1/models/m/feedback?window_ms=60000")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{value}");
        let v1 = &value["versions"]["v1"];
        assert_eq!(v1["window"]["kpis"]["conversion"]["n"], 2, "{value}");
        assert_eq!(v1["window"]["kpis"]["revenue"]["sum"], 2.5);
        assert_eq!(v1["window"]["labeled"], 1);
        assert_eq!(v1["accuracy"], 0.0, "it predicted 1, not fraud");
        assert_eq!(
            (v1["accepted"].as_u64(), v1["duplicate"].as_u64()),
            (Some(3), Some(1))
        );
        assert_eq!(v1["lifetime"], v1["window"]);
    }

    #[tokio::test]
    async fn a_malformed_body_is_400_and_changes_nothing() {
        let gateway = gateway();
        let id = answered(&gateway);
        let id = id.as_str();
        let too_many: Vec<Value> = (0..1001)
            .map(|_| json!({"request_id": id, "kpis": {"k": 1}}))
            .collect();
        let too_many = json!({ "items": too_many }).to_string();
        let cases = [
            ("{not json".to_string(), "invalid_json", None),
            ("[1, 2]".to_string(), "invalid_feedback", None),
            (
                json!({"request_id": id, "kpis": {"click": "yes"}}).to_string(),
                "invalid_feedback",
                None,
            ),
            (
                json!({"request_id": id, "kpis": {"click": 1}, "extra": 1}).to_string(),
                "invalid_feedback",
                None,
            ),
            (
                json!({"items": [{"request_id": id, "kpis": {"click": 1}}, {"kpis": {"click": 1}}]})
                    .to_string(),
                "invalid_feedback",
                Some("items[1]"),
            ),
            (
                json!({"request_id": id, "label": [1]}).to_string(),
                "invalid_feedback",
                None,
            ),
            (json!({"items": []}).to_string(), "invalid_feedback", Some("items")),
            (too_many, "invalid_feedback", Some("items")),
        ];
        for (body, code, field) in cases {
            let (status, value) = call(&gateway, post(&body)).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{body:.80}: {value}");
            assert_eq!(value["error"]["code"], code, "{value}");
            assert_eq!(value["error"]["field"].as_str(), field, "{value}");
        }
        let v1 = gateway.feedback.version("m", "v1");
        assert_eq!(v1.counts(), Default::default(), "nothing applied");
        // The id still takes its feedback.
        let (_, value) = call(
            &gateway,
            post(&json!({"request_id": id, "kpis": {"click": 1}}).to_string()),
        )
        .await;
        assert_eq!(value["accepted"], 1, "{value}");
    }

    #[tokio::test]
    async fn metrics_carry_feedback_per_version() {
        let gateway = gateway();
        let id = answered(&gateway);
        let body = json!({"request_id": id.as_str(), "kpis": {"revenue": 4}, "label": 1});
        call(&gateway, post(&body.to_string())).await;
        call(&gateway, post(&body.to_string())).await;
        let text = super::super::metrics::text(&gateway);
        for line in [
            r#"backstop_feedback_total{model="m",version="v1",result="accepted"} 1"#,
            r#"backstop_feedback_total{model="m",version="v1",result="duplicate"} 1"#,
            r#"backstop_feedback_labeled_total{model="m",version="v1"} 1"#,
            r#"backstop_kpi_sum{model="m",version="v1",kpi="revenue"} 4"#,
            r#"backstop_kpi_count{model="m",version="v1",kpi="revenue"} 1"#,
            "backstop_feedback_join_entries 1",
            r#"backstop_feedback_unjoined_total{reason="unknown"} 0"#,
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
    }
}
