//! The feedback API end to end: answers carry `x-backstop-request-id`, the
//! application posts outcomes keyed by it, and they are joined to the
//! version that answered.

use crate::util::*;
use http::{Method, StatusCode};
use serde_json::{json, Value};
use std::time::Duration;

/// Sends `n` inference requests; `(request id, version)` of each answer.
async fn answers(client: &HttpClient, backstop: &Backstop, n: usize) -> Vec<(String, String)> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let answer = client.infer(&backstop.url("/v2/models/m/infer"), &[]).await;
        assert_eq!(answer.status, StatusCode::OK);
        let id = answer.headers["x-backstop-request-id"].to_str().unwrap();
        out.push((id.to_string(), answer.version().unwrap().to_string()));
    }
    out
}

async fn feedback_of(client: &HttpClient, backstop: &Backstop) -> Value {
    let answer = client
        .get(&backstop.admin_url("/api/v1/models/m/feedback?window_ms=60000"))
        .await;
    assert_eq!(answer.status, StatusCode::OK);
    answer.json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feedback_joins_the_version_that_answered() {
    let (v1, v2) = (toy("v1").await, toy("v2").await);
    let backstop = Backstop::start(&two_versions(&v1.url(), &v2.url(), 50, 50, ""));
    let client = HttpClient::new();
    let answered = answers(&client, &backstop, 40).await;
    let on = |version: &str| answered.iter().filter(|(_, v)| v == version).count();
    assert!(on("v1") > 0 && on("v2") > 0, "{answered:?}");

    // v1's answers convert, v2's do not; every answer gets a label.
    let mut items: Vec<Value> = answered
        .iter()
        .map(|(id, version)| {
            json!({
                "request_id": id,
                "kpis": {"conversion": if version == "v1" { 1 } else { 0 }},
                "label": "fraud",
            })
        })
        .collect();
    items.push(json!({"request_id": "0".repeat(32), "kpis": {"conversion": 1}}));
    let url = backstop.admin_url("/api/v1/feedback");

    // A bad body first: 400 with a code, and nothing counted.
    let mut bad = items.clone();
    bad[3]["kpis"]["conversion"] = json!("yes");
    let answer = client.post_json(&url, &json!({ "items": bad })).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(answer.error_code(), "invalid_feedback");
    assert_eq!(answer.json()["error"]["field"], "items[3]");
    let figures = feedback_of(&client, &backstop).await;
    assert_eq!(figures["versions"]["v1"]["accepted"], 0, "{figures}");

    let answer = client.post_json(&url, &json!({ "items": items })).await;
    assert_eq!(answer.status, StatusCode::OK);
    let result = answer.json();
    assert_eq!(result["accepted"], 40, "{result}");
    assert_eq!(result["unknown"], 1, "{result}");
    assert_eq!(result["rejected"], json!([]));

    let figures = feedback_of(&client, &backstop).await;
    for (version, sum) in [("v1", on("v1")), ("v2", 0)] {
        let entry = &figures["versions"][version];
        let conversion = &entry["window"]["kpis"]["conversion"];
        assert_eq!(conversion["n"], on(version), "{figures}");
        assert_eq!(conversion["sum"].as_f64(), Some(sum as f64), "{figures}");
        // No rollout read the answers' predictions: the labels are
        // accepted and left unjudged (accuracy is over judged ones).
        assert_eq!(entry["window"]["labeled"], 0);
        assert_eq!(entry["unjudged_labels"], on(version));
        assert_eq!(entry["accepted"], on(version));
    }

    // A retry of the same post counts nothing twice.
    let answer = client.post_json(&url, &json!({ "items": items })).await;
    let result = answer.json();
    assert_eq!(
        (result["accepted"].as_u64(), result["duplicate"].as_u64()),
        (Some(0), Some(40))
    );

    let metrics = String::from_utf8(
        client
            .get(&backstop.admin_url("/metrics"))
            .await
            .body
            .to_vec(),
    )
    .unwrap();
    for line in [
        format!(
            r#"backstop_feedback_total{{model="m",version="v1",result="accepted"}} {}"#,
            on("v1")
        ),
        format!(
            r#"backstop_feedback_total{{model="m",version="v2",result="duplicate"}} {}"#,
            on("v2")
        ),
        format!(
            r#"backstop_kpi_count{{model="m",version="v2",kpi="conversion"}} {}"#,
            on("v2")
        ),
        r#"backstop_feedback_unjoined_total{reason="unknown"} 2"#.to_string(),
        "backstop_feedback_join_entries 40".to_string(),
    ] {
        assert!(metrics.contains(&line), "{line} not in {metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_feedback_is_expired_and_shadow_copies_are_never_joined() {
    let (v1, v2) = (toy("v1").await, toy("v2").await);
    let config = two_versions(
        &v1.url(),
        &v2.url(),
        100,
        0,
        "    shadow: { version: v2, percent: 100 }",
    )
    .replace(
        "listen: 127.0.0.1:0\nadmin",
        "feedback: { window_ms: 1000 }\nlisten: 127.0.0.1:0\nadmin",
    );
    let backstop = Backstop::start(&config);
    let client = HttpClient::new();
    let answered = answers(&client, &backstop, 2).await;
    // Both shadow copies have been answered (and recorded) by v2.
    let stats_url = backstop.admin_url("/api/v1/models/m/stats?window_ms=60000");
    let shadowed = eventually(Duration::from_secs(10), || async {
        client.get(&stats_url).await.json()["versions"]["v2"]["requests"].as_u64() == Some(2)
    })
    .await;
    assert!(shadowed, "{}", client.get(&stats_url).await.json());

    let url = backstop.admin_url("/api/v1/feedback");
    let post = |id: &str| json!({"request_id": id, "kpis": {"click": 1}});
    let result = client.post_json(&url, &post(&answered[0].0)).await.json();
    assert_eq!(result["accepted"], 1, "{result}");
    let figures = feedback_of(&client, &backstop).await;
    assert_eq!(figures["versions"]["v1"]["accepted"], 1, "{figures}");
    assert_eq!(figures["versions"]["v2"]["accepted"], 0, "{figures}");

    tokio::time::sleep(Duration::from_millis(1300)).await;
    let result = client.post_json(&url, &post(&answered[1].0)).await.json();
    assert_eq!(
        (result["accepted"].as_u64(), result["expired"].as_u64()),
        (Some(0), Some(1)),
        "{result}"
    );
    let figures = feedback_of(&client, &backstop).await;
    assert_eq!(figures["versions"]["v1"]["expired"], 1, "{figures}");
    assert_eq!(figures["versions"]["v1"]["window"]["kpis"]["click"]["n"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applications_post_feedback_with_a_reporter_token() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let token = |role: &str| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_backstop"))
            .args([
                "token",
                "create",
                "--role",
                role,
                "--name",
                role,
                "--data-dir",
            ])
            .arg(&data_dir)
            .args(["--output", "json"])
            .env_remove("BACKSTOP_TOKEN")
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let created: Value = serde_json::from_slice(&output.stdout).unwrap();
        format!("Bearer {}", created["token"].as_str().unwrap())
    };
    let (reporter, viewer) = (token("reporter"), token("viewer"));
    let v1 = toy("v1").await;
    let backstop = Backstop::start_with_data_dir(&one_version(&v1.url(), "", ""), &data_dir);
    let client = HttpClient::new();
    let answered = answers(&client, &backstop, 1).await;
    let body = json!({"request_id": answered[0].0, "label": true}).to_string();
    let url = backstop.admin_url("/api/v1/feedback");
    let post = |auth: &str| {
        let (client, url, body, auth) =
            (client.clone(), url.clone(), body.clone(), auth.to_string());
        async move {
            let headers = [
                ("content-type", "application/json"),
                ("authorization", &auth),
            ];
            client.send(Method::POST, &url, &headers, body).await
        }
    };
    let answer = post(&viewer).await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
    let answer = post(&reporter).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.json()["accepted"], 1);
    // A reporter reads nothing.
    let read = client
        .send(
            Method::GET,
            &backstop.admin_url("/api/v1/models/m/feedback"),
            &[("authorization", &reporter)],
            "",
        )
        .await;
    assert_eq!(read.status, StatusCode::FORBIDDEN);
    let read = client
        .send(
            Method::GET,
            &backstop.admin_url("/api/v1/models/m/feedback"),
            &[("authorization", &viewer)],
            "",
        )
        .await;
    assert_eq!(read.status, StatusCode::OK);
    assert_eq!(read.json()["versions"]["v1"]["unjudged_labels"], 1);
}
