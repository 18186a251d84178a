//! Request/response samples: kept per version in a bounded ring, redacted
//! before they are kept, read through the admin API, kept across swaps.

use crate::util::*;
use http::{Method, StatusCode};
use serde_json::{json, Value};
use std::time::Duration;

const SECRET: &str = "987-65-4320";

fn config(upstream: &str) -> String {
    format!(
        r#"
listen: 127.0.0.1:0
admin: {{ listen: 127.0.0.1:0 }}
models:
  m:
    capture: {{ sample_percent: 100, samples: 5, redact: [ssn], hash: [user_id] }}
    versions:
      - {{ name: v1, weight: 1, endpoints: ["{upstream}"] }}
  off:
    versions:
      - {{ name: v1, weight: 1, endpoints: ["{upstream}"] }}
"#
    )
}

async fn samples(client: &HttpClient, backstop: &Backstop, model: &str) -> (String, Vec<Value>) {
    let url = backstop.admin_url(&format!("/api/v1/models/{model}/samples?version=v1"));
    let answer = client.get(&url).await;
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    let value = answer.json();
    assert_eq!(
        (&value["model"], &value["version"]),
        (&json!(model), &json!("v1"))
    );
    let text = String::from_utf8_lossy(&answer.body).to_string();
    (
        text,
        value["samples"].as_array().cloned().unwrap_or_default(),
    )
}

async fn wait_for_count(client: &HttpClient, backstop: &Backstop, count: usize) -> Vec<Value> {
    // Samples are pushed just after the answer ends: poll briefly.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, found) = samples(client, backstop, "m").await;
        if found.len() == count {
            return found;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "expected {count} samples: {found:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn samples_are_redacted_bounded_and_kept_across_swaps() {
    let v1 = toy("v1").await;
    let backstop = Backstop::start(&config(&v1.url()));
    let client = HttpClient::new();
    let infer = backstop.url("/v2/models/m/infer");
    let json_type = ("content-type", "application/json");

    // A plain JSON request, then an OIP one with the same user.
    let plain = json!({"ssn": SECRET, "user_id": "alice", "deep": [{"ssn": SECRET}], "x": 1});
    let answer = client
        .send(
            Method::POST,
            &infer,
            &[json_type, ("x-request-id", "req-1")],
            plain.to_string(),
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK);
    let oip = json!({"inputs": [
        {"name": "ssn", "datatype": "BYTES", "shape": [1], "data": [SECRET]},
        {"name": "user_id", "datatype": "BYTES", "shape": [1], "data": ["alice"]},
        {"name": "x", "datatype": "FP32", "shape": [1], "data": [0.5]},
    ]});
    let answer = client
        .send(
            Method::POST,
            &infer,
            &[json_type, ("x-request-id", "req-2")],
            oip.to_string(),
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK);
    let samples_now = wait_for_count(&client, &backstop, 2).await;

    // Samples are kept as their exchanges end, on tasks of their own: find
    // them by request id, not by position.
    let find = |id: &str| {
        samples_now
            .iter()
            .find(|s| s["request_id"] == id)
            .unwrap_or_else(|| panic!("no sample {id}: {samples_now:?}"))
            .clone()
    };
    let first = &find("req-1");
    assert_eq!(first["request_id"], "req-1");
    assert_eq!(first["method"], "POST");
    assert_eq!(first["path"], "/v2/models/m/infer");
    assert_eq!(first["status"], 200);
    assert_eq!(first["outcome"], "success");
    assert!(first["latency_ms"].as_f64().unwrap() >= 0.0);
    let request = &first["request"]["json"];
    assert_eq!(request["ssn"], "[redacted]");
    assert_eq!(request["deep"][0]["ssn"], "[redacted]");
    assert_eq!(request["x"], 1);
    let alice = request["user_id"].as_str().unwrap().to_string();
    assert!(alice.starts_with("sha256:"), "{alice}");
    assert_eq!(first["response"]["json"]["model_version"], "v1");

    let second = &find("req-2");
    let inputs = &second["request"]["json"]["inputs"];
    assert_eq!(inputs[0]["data"], "[redacted]");
    assert_eq!(inputs[1]["data"][0], alice, "equal values, equal hashes");
    assert_eq!(inputs[2]["data"], json!([0.5]));

    // Non-JSON bodies are never kept while fields are listed; another user
    // hashes differently.
    let answer = client
        .send(
            Method::POST,
            &infer,
            &[("x-request-id", "req-3")],
            format!("ssn={SECRET}"),
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK);
    let bob = json!({"user_id": "bob"}).to_string();
    client
        .send(
            Method::POST,
            &infer,
            &[json_type, ("x-request-id", "req-4")],
            bob,
        )
        .await;
    let samples_now = wait_for_count(&client, &backstop, 4).await;
    let by_id = |id: &str| {
        samples_now
            .iter()
            .find(|s| s["request_id"] == id)
            .unwrap_or_else(|| panic!("{id} in {samples_now:#?}"))
            .clone()
    };
    let text_sample = by_id("req-3");
    assert_eq!(text_sample["request"]["omitted"]["bytes"], 15);
    let bob_hash = &by_id("req-4")["request"]["json"]["user_id"];
    assert!(bob_hash.as_str().unwrap().starts_with("sha256:"));
    assert_ne!(bob_hash, &json!(alice));

    // The ring holds the 5 newest.
    for i in 5..=12 {
        let id = format!("req-{i}");
        let body = json!({"ssn": SECRET, "user_id": "alice"}).to_string();
        let answer = client
            .send(
                Method::POST,
                &infer,
                &[json_type, ("x-request-id", &id)],
                body,
            )
            .await;
        assert_eq!(answer.status, StatusCode::OK);
    }
    let reached = eventually(Duration::from_secs(10), || async {
        let (_, found) = samples(&client, &backstop, "m").await;
        found.len() == 5 && found.iter().any(|s| s["request_id"] == "req-12")
    })
    .await;
    let (text, found) = samples(&client, &backstop, "m").await;
    assert!(reached, "{found:#?}");
    assert!(!text.contains(SECRET), "the secret leaked: {text}");
    assert!(
        !text.contains("alice") && !text.contains("\"bob\""),
        "{text}"
    );
    assert!(found
        .iter()
        .all(|s| s["request"]["json"]["user_id"] == alice));

    // A swap with a smaller ring keeps what was captured until the next
    // sample, which trims the ring to the new size.
    let mut spec = client
        .get(&backstop.admin_url("/api/v1/models/m/routes"))
        .await
        .json()["spec"]
        .clone();
    assert_eq!(spec["capture"]["samples"], 5);
    spec["capture"]["samples"] = json!(3);
    let put = client
        .put_json(&backstop.admin_url("/api/v1/models/m/routes"), &spec)
        .await;
    assert_eq!(put.status, StatusCode::OK, "{:?}", put.body);
    assert_eq!(samples(&client, &backstop, "m").await.1.len(), 5);
    client
        .infer(&infer, &[("x-request-id", "after-swap")])
        .await;
    let found = wait_for_count(&client, &backstop, 3).await;
    assert_eq!(found[2]["request_id"], "after-swap");

    // Bad capture settings are refused with their field.
    spec["capture"]["sample_percent"] = json!(150);
    let put = client
        .put_json(&backstop.admin_url("/api/v1/models/m/routes"), &spec)
        .await;
    assert_eq!(put.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(put.json()["error"]["field"], "capture.sample_percent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_capture_nothing_is_kept_and_unknowns_are_404() {
    let v1 = toy("v1").await;
    let backstop = Backstop::start(&config(&v1.url()));
    let client = HttpClient::new();
    for _ in 0..5 {
        let answer = client
            .infer(&backstop.url("/v2/models/off/infer"), &[])
            .await;
        assert_eq!(answer.status, StatusCode::OK);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_, found) = samples(&client, &backstop, "off").await;
    assert!(found.is_empty(), "{found:#?}");

    let get = |path: &str| {
        let url = backstop.admin_url(path);
        let client = client.clone();
        async move { client.get(&url).await }
    };
    let answer = get("/api/v1/models/nope/samples?version=v1").await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert_eq!(answer.error_code(), "model_not_found");
    let answer = get("/api/v1/models/m/samples?version=v9").await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert_eq!(answer.error_code(), "version_not_found");
    let answer = get("/api/v1/models/m/samples").await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(answer.error_code(), "invalid_query");
}
