//! Replacing a routing table under load: no request fails, each request
//! is answered by a version of one table, and new requests follow the new
//! table at once.

use crate::util::*;
use http::StatusCode;
use serde_json::json;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swaps_under_concurrent_load_lose_no_request() {
    let (v1, v2) = (toy("v1").await, toy("v2").await);
    let backstop = Backstop::start(&two_versions(&v1.url(), &v2.url(), 100, 0, ""));
    let url = backstop.url("/v2/models/m/infer");
    let failures = Arc::new(AtomicU64::new(0));
    let answered = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut workers = Vec::new();
    for _ in 0..8 {
        let (url, failures, answered) = (url.clone(), failures.clone(), answered.clone());
        workers.push(tokio::spawn(async move {
            let client = HttpClient::new();
            let mut versions = std::collections::BTreeSet::new();
            for _ in 0..250 {
                if Instant::now() > deadline {
                    break;
                }
                let answer = client.infer(&url, &[]).await;
                answered.fetch_add(1, Ordering::Relaxed);
                if answer.status != StatusCode::OK {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
                versions.insert(answer.version().unwrap_or("none").to_string());
            }
            versions
        }));
    }
    let admin = HttpClient::new();
    let routes = backstop.admin_url("/api/v1/models/m/routes");
    for i in 0..40u64 {
        let (w1, w2) = if i % 2 == 0 { (0, 100) } else { (100, 0) };
        let spec = json!({"versions": [
            {"name": "v1", "weight": w1, "endpoints": [v1.url()]},
            {"name": "v2", "weight": w2, "endpoints": [v2.url()]},
        ]});
        let answer = admin
            .put_json(&format!("{routes}?if_generation={}", i + 1), &spec)
            .await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.json());
        assert_eq!(answer.json()["generation"], i + 2);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut seen = std::collections::BTreeSet::new();
    for worker in workers {
        seen.extend(worker.await.unwrap());
    }
    assert_eq!(failures.load(Ordering::Relaxed), 0, "no request failed");
    assert!(answered.load(Ordering::Relaxed) >= 500);
    assert_eq!(
        seen,
        ["v1", "v2"].map(String::from).into(),
        "both tables served"
    );

    // After the last swap (v1 100%), new requests follow it at once.
    let client = HttpClient::new();
    for _ in 0..20 {
        assert_eq!(client.infer(&url, &[]).await.version(), Some("v1"));
    }
    let table = client.get(&routes).await.json();
    assert_eq!(table["generation"], 41);
    assert!(table["swap_to_first_request_ns"].as_u64().unwrap() > 0);
}
