//! Upstream health: a dead version is ejected and stops getting traffic
//! while another is healthy, comes back when it recovers, and failures
//! get clear 502/504 JSON answers.

use crate::util::*;
use http::StatusCode;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_upstream_is_ejected_and_recovers() {
    let (v1, v2) = (toy("v1").await, toy("v2").await);
    let v2_addr = v2.addr;
    let backstop = Backstop::start(&two_versions(&v1.url(), &v2.url(), 50, 50, ""));
    let client = HttpClient::new();
    let url = backstop.url("/v2/models/m/infer");
    for _ in 0..20 {
        assert_eq!(client.infer(&url, &[]).await.status, StatusCode::OK);
    }

    v2.stop();
    drop(v2);
    // Some requests may still hit v2 before the checks notice; soon every
    // request is served by v1.
    let failed = AtomicU32::new(0);
    let healed = eventually(Duration::from_secs(10), || {
        let (client, url, failed) = (client.clone(), url.clone(), &failed);
        async move {
            for _ in 0..30 {
                let answer = client.infer(&url, &[]).await;
                if answer.status != StatusCode::OK {
                    // Refused connections, or a connection the dying server
                    // closed under a request.
                    assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
                    let code = answer.error_code();
                    assert!(
                        code == "upstream_connect_failed" || code == "upstream_error",
                        "{code}"
                    );
                    failed.fetch_add(1, Ordering::Relaxed);
                    return false;
                }
                assert_eq!(answer.version(), Some("v1"));
            }
            true
        }
    })
    .await;
    assert!(healed, "traffic moved off the dead version");
    let failed = failed.load(Ordering::Relaxed);
    assert!(failed <= 10, "{failed} requests failed before the ejection");

    let events = client
        .get(&backstop.admin_url("/api/v1/events"))
        .await
        .json();
    let kinds: Vec<_> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["kind"].as_str().unwrap().to_string(),
                e["version"].clone(),
            )
        })
        .collect();
    assert!(
        kinds.contains(&("version_unavailable".into(), "v2".into())),
        "{events}"
    );
    let models = client
        .get(&backstop.admin_url("/api/v1/models"))
        .await
        .json();
    assert_eq!(models[0]["versions"][1]["healthy"], false, "{models}");

    // Bring v2 back on the same address: it gets traffic again.
    let v2 = backstop::toy::ToyServer::start(v2_addr, "v2")
        .await
        .unwrap();
    let back = eventually(Duration::from_secs(10), || async {
        client.infer(&url, &[]).await.version() == Some("v2")
    })
    .await;
    assert!(back, "v2 recovered");
    assert!(v2.behaviour.requests() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_upstream_times_out_with_a_504() {
    let v1 = toy("v1").await;
    let config = one_version(
        &v1.url(),
        "health: { interval_ms: 60000 }",
        "    timeouts: { connect_ms: 200, request_ms: 300 }",
    );
    let backstop = Backstop::start(&config);
    let client = HttpClient::new();
    v1.behaviour.hang.store(true, Ordering::Relaxed);
    let answer = client.infer(&backstop.url("/v2/models/m/infer"), &[]).await;
    v1.behaviour.hang.store(false, Ordering::Relaxed);
    assert_eq!(answer.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(answer.error_code(), "upstream_timeout");
    assert!(answer.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("300 ms"));
    let stats = client
        .get(&backstop.admin_url("/api/v1/models/m/stats"))
        .await
        .json();
    assert_eq!(stats["versions"]["v1"]["timeouts"], 1, "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_upstream_gets_a_502() {
    let dead = toy("v1").await;
    let dead_url = dead.url();
    drop(dead);
    let config = one_version(&dead_url, "", "");
    let backstop = Backstop::start(&config);
    let client = HttpClient::new();
    let answer = client.infer(&backstop.url("/v2/models/m/infer"), &[]).await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
    assert_eq!(answer.error_code(), "upstream_connect_failed");
    let stats = client
        .get(&backstop.admin_url("/api/v1/models/m/stats"))
        .await
        .json();
    assert_eq!(stats["versions"]["v1"]["connect_errors"], 1, "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_eject_and_name_the_version_but_a_stalled_client_upload_does_not() {
    let v1 = toy("v1").await;
    let config = one_version(
        &v1.url(),
        "health: { interval_ms: 60000, eject_after_failures: 2, eject_base_ms: 60000 }",
        "    timeouts: { connect_ms: 200, request_ms: 300 }",
    );
    let backstop = Backstop::start(&config);
    let client = HttpClient::new();
    let models = backstop.admin_url("/api/v1/models");

    // A client that promises a body and stalls is the client's fault.
    let mut stream = tokio::net::TcpStream::connect(backstop.data).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream
        .write_all(b"POST /v2/models/m/infer HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\n0123456789")
        .await
        .unwrap();
    let mut answer = vec![0u8; 4096];
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut answer))
        .await
        .expect("answered")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..read]);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("x-backstop-version: v1"), "{answer}");
    let stats = client
        .get(&backstop.admin_url("/api/v1/models/m/stats"))
        .await
        .json();
    assert_eq!(stats["versions"]["v1"]["timeouts"], 0, "{stats}");
    assert_eq!(stats["versions"]["v1"]["client_errors"], 1, "{stats}");
    assert_eq!(
        client.get(&models).await.json()[0]["versions"][0]["endpoints"][0]["ejected"],
        false
    );

    // A stuck upstream: two timeouts eject it (timed from when they end).
    v1.behaviour.hang.store(true, Ordering::Relaxed);
    for _ in 0..2 {
        let answer = client.infer(&backstop.url("/v2/models/m/infer"), &[]).await;
        assert_eq!(answer.status, StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(answer.version(), Some("v1"), "errors name the version too");
    }
    v1.behaviour.hang.store(false, Ordering::Relaxed);
    let models = client.get(&models).await.json();
    assert_eq!(
        models[0]["versions"][0]["endpoints"][0]["ejected"], true,
        "{models}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_before_the_answer_is_recorded_as_cancelled() {
    let v1 = toy("v1").await;
    let backstop = Backstop::start(&one_version(
        &v1.url(),
        "health: { interval_ms: 60000 }",
        "",
    ));
    v1.behaviour.hang.store(true, Ordering::Relaxed);
    {
        use tokio::io::AsyncWriteExt;
        let mut stream = tokio::net::TcpStream::connect(backstop.data).await.unwrap();
        stream
            .write_all(b"GET /v2/models/m HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let client = HttpClient::new();
    let url = backstop.admin_url("/api/v1/models/m/stats");
    let recorded = eventually(Duration::from_secs(10), || async {
        client.get(&url).await.json()["versions"]["v1"]["cancelled"] == 1
    })
    .await;
    v1.behaviour.hang.store(false, Ordering::Relaxed);
    assert!(recorded, "{}", client.get(&url).await.json());
    let stats = client.get(&url).await.json();
    assert_eq!(stats["versions"]["v1"]["server_errors"], 0);
}
