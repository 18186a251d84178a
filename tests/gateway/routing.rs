//! Which version answers: weights, sticky keys, cohorts, pins, and the
//! `x-backstop-version` header on every answer.

use crate::util::*;
use http::StatusCode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_split_is_within_statistical_tolerance() {
    let (v1, v2) = (toy("v1").await, toy("v2").await);
    let backstop = Backstop::start(&two_versions(&v1.url(), &v2.url(), 90, 10, ""));
    let client = HttpClient::new();
    let total = 2000;
    let mut v2_count = 0;
    for _ in 0..total {
        let answer = client.infer(&backstop.url("/v2/models/m/infer"), &[]).await;
        assert_eq!(answer.status, StatusCode::OK);
        // The header names the version that really answered.
        let body = answer.json();
        assert_eq!(
            Some(body["model_version"].as_str().unwrap()),
            answer.version()
        );
        v2_count += (answer.version() == Some("v2")) as u32;
    }
    // Expected 200; the binomial sd is 13.4, so ±60 is ±4.5 sd.
    assert!(
        (140..=260).contains(&v2_count),
        "v2 got {v2_count} of {total}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_keys_stay_on_one_version_and_cohorts_win_over_weights() {
    let (v1, v2) = (toy("v1").await, toy("v2").await);
    let extra = r#"    sticky: { header: x-user-id }
    cohorts:
      - { header: x-tenant, values: [beta], version: v2 }"#;
    let backstop = Backstop::start(&two_versions(&v1.url(), &v2.url(), 50, 50, extra));
    let client = HttpClient::new();
    let url = backstop.url("/v2/models/m/infer");
    let mut seen = std::collections::BTreeSet::new();
    for user in 0..60 {
        let key = format!("user-{user}");
        let first = client.infer(&url, &[("x-user-id", &key)]).await;
        let first = first.version().unwrap().to_string();
        for _ in 0..4 {
            let again = client.infer(&url, &[("x-user-id", &key)]).await;
            assert_eq!(again.version(), Some(first.as_str()), "user {key} moved");
        }
        seen.insert(first);
    }
    assert_eq!(seen.len(), 2, "60 users at 50/50 land on both versions");
    for user in 0..30 {
        let key = format!("user-{user}");
        let answer = client
            .infer(&url, &[("x-user-id", &key), ("x-tenant", "beta")])
            .await;
        assert_eq!(answer.version(), Some("v2"), "cohort beta always gets v2");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pins_are_honoured_only_for_allowed_callers() {
    let (v1, v2) = (toy("v1").await, toy("v2").await);
    let allowed = Backstop::start(&two_versions(&v1.url(), &v2.url(), 100, 0, ""));
    let client = HttpClient::new();
    let url = allowed.url("/v2/models/m/infer");
    for _ in 0..10 {
        let answer = client.infer(&url, &[("x-backstop-pin", "v2")]).await;
        assert_eq!(answer.version(), Some("v2"));
    }
    let unknown = client.infer(&url, &[("x-backstop-pin", "v9")]).await;
    assert_eq!(unknown.status, StatusCode::BAD_REQUEST);
    assert_eq!(unknown.error_code(), "unknown_version");

    let config = two_versions(&v1.url(), &v2.url(), 100, 0, "").replace(
        r#"pin: { allow_from: ["127.0.0.1/32"] }"#,
        r#"pin: { allow_from: ["10.0.0.0/8"] }"#,
    );
    let denied = Backstop::start(&config);
    let answer = client
        .infer(
            &denied.url("/v2/models/m/infer"),
            &[("x-backstop-pin", "v2")],
        )
        .await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
    assert_eq!(answer.error_code(), "pin_not_allowed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oip_passthrough_and_h2c_all_carry_the_version_header() {
    let (v1, v2) = (toy("v1").await, toy("v2").await);
    let backstop = Backstop::start(&two_versions(&v1.url(), &v2.url(), 100, 0, ""));
    let client = HttpClient::new();

    let metadata = client.get(&backstop.url("/v2/models/m")).await;
    assert_eq!(metadata.status, StatusCode::OK);
    assert_eq!(metadata.json()["name"], "m");
    assert_eq!(metadata.version(), Some("v1"));

    let ready = client
        .get(&backstop.url("/v2/models/m/versions/3/ready"))
        .await;
    assert_eq!(
        (ready.status, ready.version()),
        (StatusCode::OK, Some("v1"))
    );

    // Passthrough strips /models/{model} and keeps the query.
    let passthrough = client
        .send(
            http::Method::POST,
            &backstop.url("/models/m/predict?explain=1"),
            &[],
            "{}",
        )
        .await;
    assert_eq!(passthrough.status, StatusCode::OK);
    assert_eq!(passthrough.json()["path"], "/predict");
    assert_eq!(passthrough.json()["request_bytes"], 2);
    assert_eq!(passthrough.version(), Some("v1"));

    // The gateway answers server-level OIP calls itself.
    let live = client.get(&backstop.url("/v2/health/live")).await;
    assert_eq!(live.status, StatusCode::OK);
    let ready = client.get(&backstop.url("/v2/health/ready")).await;
    assert_eq!(ready.json()["ready"], true);
    assert_eq!(
        client.get(&backstop.url("/v2")).await.json()["name"],
        "backstop"
    );

    let h2 = HttpClient::h2c();
    for _ in 0..20 {
        let answer = h2.infer(&backstop.url("/v2/models/m/infer"), &[]).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.version(), Some("v1"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connections_are_kept_alive_and_stale_ones_replaced() {
    use std::sync::atomic::Ordering;
    let v1 = toy("v1").await;
    let addr = v1.addr;
    let config = one_version(&v1.url(), "health: { interval_ms: 60000 }", "");
    let backstop = Backstop::start(&config);
    let client = HttpClient::new();
    let url = backstop.url("/v2/models/m/infer");
    for _ in 0..100 {
        assert_eq!(client.infer(&url, &[]).await.status, StatusCode::OK);
    }
    let connections = v1.behaviour.connections.load(Ordering::Relaxed);
    assert!(
        connections <= 3,
        "100 sequential requests used {connections} connections"
    );

    // The server goes away and comes back: its old keep-alive connections
    // are closed, and the gateway must not send requests into them.
    drop(v1);
    let v1 = restart_toy(addr, "v1").await;
    for _ in 0..20 {
        let answer = client.infer(&url, &[]).await;
        assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    }
    assert!(v1.behaviour.requests() >= 20);
}

/// Every answer carries a fresh `x-backstop-request-id`; the model server
/// gets the same id, and one sent by the client never survives (it could
/// collide with another request's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_request_gets_an_id_the_upstream_and_client_both_see() {
    // An upstream that answers with the id it was sent.
    let app = axum::Router::new().fallback(|headers: http::HeaderMap| async move {
        headers
            .get("x-backstop-request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("none")
            .to_string()
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let backstop = Backstop::start(&one_version(&upstream, "", ""));
    let client = HttpClient::new();
    let url = backstop.url("/v2/models/m/infer");
    let spoofed = [("x-backstop-request-id", "0000")];
    let mut seen = std::collections::HashSet::new();
    for _ in 0..5 {
        let answer = client.infer(&url, &spoofed).await;
        assert_eq!(answer.status, StatusCode::OK);
        let id = answer.headers["x-backstop-request-id"].to_str().unwrap();
        assert_eq!(id.len(), 32, "{id}");
        assert_eq!(
            String::from_utf8_lossy(&answer.body),
            id,
            "upstream saw the same id"
        );
        assert!(seen.insert(id.to_string()), "ids are unique");
    }
    // Errors carry one too.
    let answer = client
        .infer(&backstop.url("/v2/models/nope/infer"), &[])
        .await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert_eq!(answer.headers["x-backstop-request-id"].len(), 32);
}
