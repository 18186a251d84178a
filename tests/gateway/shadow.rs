//! Shadow traffic is recorded, never returned, never waited for, and
//! dropped (and counted) under back-pressure.

use crate::util::*;
use http::StatusCode;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_failing_shadow_never_affects_the_answer() {
    let (v1, v2) = (toy("v1").await, toy("v2").await);
    v2.behaviour.set_latency(Duration::from_secs(2));
    v2.behaviour.set_error_rate(1.0);
    let extra = "    shadow: { version: v2, percent: 100 }";
    let config = two_versions(&v1.url(), &v2.url(), 100, 0, extra).replace(
        "listen: 127.0.0.1:0\nadmin",
        "limits: { shadow_inflight_max: 4 }\nlisten: 127.0.0.1:0\nadmin",
    );
    let backstop = Backstop::start(&config);
    let client = HttpClient::new();
    let started = Instant::now();
    for _ in 0..50 {
        let answer = client.infer(&backstop.url("/v2/models/m/infer"), &[]).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.version(), Some("v1"));
        assert_eq!(answer.json()["model_version"], "v1");
    }
    // Had the client waited for the 2 s shadow, this would take 100 s.
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );

    let stats_url = backstop.admin_url("/api/v1/models/m/stats?window_ms=60000");
    let stats = client.get(&stats_url).await.json();
    let v2_stats = &stats["versions"]["v2"];
    let (sent, dropped) = (
        v2_stats["shadow_sent"].as_u64().unwrap(),
        v2_stats["shadow_dropped"].as_u64().unwrap(),
    );
    assert_eq!(sent + dropped, 50, "{v2_stats}");
    assert!(sent >= 4 && dropped > 0, "at most 4 in flight: {v2_stats}");
    assert_eq!(stats["versions"]["v1"]["requests"], 50);

    // The shadow's own (failed) answers are recorded against v2.
    let recorded = eventually(Duration::from_secs(10), || async {
        let stats = client.get(&stats_url).await.json();
        stats["versions"]["v2"]["server_errors"].as_u64() == Some(sent)
    })
    .await;
    assert!(recorded, "{}", client.get(&stats_url).await.json());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_shadow_never_fails_the_answer() {
    let v1 = toy("v1").await;
    let dead = toy("v2").await;
    let dead_url = dead.url();
    drop(dead);
    let extra = "    shadow: { version: v2, percent: 100 }";
    let backstop = Backstop::start(&two_versions(&v1.url(), &dead_url, 100, 0, extra));
    let client = HttpClient::new();
    for _ in 0..30 {
        let answer = client.infer(&backstop.url("/v2/models/m/infer"), &[]).await;
        assert_eq!(
            (answer.status, answer.version()),
            (StatusCode::OK, Some("v1"))
        );
    }
}
