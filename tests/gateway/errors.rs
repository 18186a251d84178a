//! Bad input gets a clean, coded answer and never takes the gateway down.

use crate::util::*;
use http::StatusCode;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn config(upstream: &str) -> String {
    one_version(upstream, "limits: { request_body_max_bytes: 1024 }", "")
}

/// Sends raw bytes and returns whatever comes back within 5 s.
async fn raw(addr: std::net::SocketAddr, bytes: &[u8]) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _ = stream.write_all(bytes).await;
    let _ = stream.shutdown().await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_and_models_get_404_json() {
    let v1 = toy("v1").await;
    let backstop = Backstop::start(&config(&v1.url()));
    let client = HttpClient::new();
    let answer = client.get(&backstop.url("/nope")).await;
    assert_eq!(
        (answer.status, answer.error_code()),
        (StatusCode::NOT_FOUND, "route_not_found".into())
    );
    let answer = client
        .infer(&backstop.url("/v2/models/other/infer"), &[])
        .await;
    assert_eq!(
        (answer.status, answer.error_code()),
        (StatusCode::NOT_FOUND, "model_not_found".into())
    );
    let answer = client.get(&backstop.url("/v2/models/")).await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_get_413_whether_declared_or_streamed() {
    let v1 = toy("v1").await;
    let backstop = Backstop::start(&config(&v1.url()));
    let client = HttpClient::new();
    let answer = client
        .send(
            http::Method::POST,
            &backstop.url("/v2/models/m/infer"),
            &[],
            vec![b'x'; 4096],
        )
        .await;
    assert_eq!(
        (answer.status, answer.error_code()),
        (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large".into())
    );
    assert_eq!(v1.behaviour.requests(), 0, "never reached the model server");

    let mut chunked =
        b"POST /v2/models/m/infer HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
            .to_vec();
    for _ in 0..4 {
        chunked.extend(b"200\r\n");
        chunked.extend([b'y'; 512]);
        chunked.extend(b"\r\n");
    }
    chunked.extend(b"0\r\n\r\n");
    let answer = raw(backstop.data, &chunked).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("body_too_large"), "{answer}");

    // A body within the limit still goes through.
    let answer = client.infer(&backstop.url("/v2/models/m/infer"), &[]).await;
    assert_eq!(answer.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_never_take_the_gateway_down() {
    let v1 = toy("v1").await;
    let mut backstop = Backstop::start(&config(&v1.url()));
    let cases: Vec<Vec<u8>> = vec![
        b"GARBAGE\r\n\r\n".to_vec(),
        b"GET / HTTP/9.9\r\n\r\n".to_vec(),
        b"GET /v2/models/m/infer HTTP/1.1\r\nbad header line\r\n\r\n".to_vec(),
        b"POST /v2/models/m/infer HTTP/1.1\r\nhost: x\r\ncontent-length: nope\r\n\r\n".to_vec(),
        b"POST /v2/models/m/infer HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n".to_vec(),
        b"GET /v2/models/%ff%fe/infer HTTP/1.1\r\nhost: x\r\nx-backstop-pin: \xff\r\n\r\n".to_vec(),
        [b"GET /".as_slice(), &[b'a'; 70_000], b" HTTP/1.1\r\n\r\n"].concat(),
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x09\x00\x00\x00\x00".to_vec(),
    ];
    for case in &cases {
        let answer = raw(backstop.data, case).await;
        // Bad input is the client's fault: never a 5xx.
        assert!(!answer.starts_with("HTTP/1.1 5"), "{answer}");
    }
    // Random bytes, seeded, bounded.
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..100 {
        let bytes: Vec<u8> = (0..(seed % 300) as usize)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        let _ = raw(backstop.data, &bytes).await;
    }
    assert!(backstop.is_running());
    let client = HttpClient::new();
    let answer = client.infer(&backstop.url("/v2/models/m/infer"), &[]).await;
    assert_eq!(answer.status, StatusCode::OK);
    // Broken client bodies are the client's fault, never the version's.
    let stats = client
        .get(&backstop.admin_url("/api/v1/models/m/stats?window_ms=60000"))
        .await
        .json();
    assert_eq!(stats["versions"]["v1"]["server_errors"], 0, "{stats}");
}

#[test]
fn a_bad_config_names_file_line_and_field_and_starts_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("backstop.yaml");
    std::fs::write(
        &path,
        "models:\n  m:\n    versions:\n      - { name: v1, weight: -1, endpoints: [\"http://127.0.0.1:1\"] }\n",
    )
    .unwrap();
    for command in ["check", "serve"] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_backstop"))
            .args([command, "--config"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("backstop.yaml:4:") && stderr.contains("models.m.versions[0].weight"),
            "{stderr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dot_segments_and_protocol_mismatches_are_client_errors() {
    let v1 = toy("v1").await;
    let backstop = Backstop::start(&config(&v1.url()));
    for path in ["/v2/models/m/../other/infer", "/models/m/%2E%2e/admin"] {
        let answer = HttpClient::new().get(&backstop.url(path)).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{path}");
        assert_eq!(answer.error_code(), "bad_request");
    }

    // gRPC to a model served over HTTP: refused, and not counted.
    let client = HttpClient::h2c();
    let answer = client
        .send(
            http::Method::POST,
            &backstop.url("/inference.GRPCInferenceService/ModelInfer"),
            &[
                ("content-type", "application/grpc"),
                ("x-backstop-model", "m"),
            ],
            vec![0u8, 0, 0, 0, 0],
        )
        .await;
    assert_eq!(answer.headers["grpc-status"], "3", "INVALID_ARGUMENT");
    let stats = HttpClient::new()
        .get(&backstop.admin_url("/api/v1/models/m/stats"))
        .await
        .json();
    assert_eq!(stats["versions"]["v1"]["requests"], 0, "{stats}");
    assert_eq!(v1.behaviour.requests(), 0);
}
