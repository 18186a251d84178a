//! OIP over gRPC passes through on HTTP/2, routed by the model name in the
//! first message, with `grpc-status` counted as success or error.

use crate::util::*;
use backstop::gateway::grpc::{frame, protobuf_string};
use bytes::Bytes;
use http::{HeaderMap, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

struct GrpcAnswer {
    headers: HeaderMap,
    body: Bytes,
    status: Option<String>,
}

async fn call(addr: std::net::SocketAddr, method: &str, message: &[u8]) -> GrpcAnswer {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let request = Request::post(format!(
        "http://{addr}/inference.GRPCInferenceService/{method}"
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .body(Full::new(Bytes::from(frame(message))))
    .unwrap();
    let response = client.request(request).await.unwrap();
    let headers = response.headers().clone();
    let collected = response.into_body().collect().await.unwrap();
    let status = collected
        .trailers()
        .and_then(|t| t.get("grpc-status"))
        .or(headers.get("grpc-status"))
        .map(|v| v.to_str().unwrap().to_string());
    GrpcAnswer {
        headers,
        body: collected.to_bytes(),
        status,
    }
}

fn infer_request(model: &str) -> Vec<u8> {
    // id (field 3) before model_name (field 1): the gateway must scan.
    let mut message = protobuf_string(3, "request-7");
    message.extend(protobuf_string(1, model));
    message.extend(protobuf_string(5, "tensor bytes would be here"));
    message
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_infer_is_routed_by_model_name_and_counted_by_grpc_status() {
    let (v1, v2) = (toy("v1").await, toy("v2").await);
    let config = format!(
        r#"
listen: 127.0.0.1:0
admin: {{ listen: 127.0.0.1:0 }}
models:
  fraud:
    protocol: grpc
    versions:
      - {{ name: v1, weight: 0, endpoints: ["{}"] }}
      - {{ name: v2, weight: 1, endpoints: ["{}"] }}
"#,
        v1.url(),
        v2.url()
    );
    let backstop = Backstop::start(&config);
    for _ in 0..5 {
        let answer = call(backstop.data, "ModelInfer", &infer_request("fraud")).await;
        assert_eq!(answer.status.as_deref(), Some("0"));
        assert_eq!(answer.headers["x-backstop-version"], "v2");
        // ModelInferResponse.model_version (field 2) comes from the v2 server.
        assert!(answer.body.windows(2).any(|w| w == b"v2"));
    }
    v2.behaviour.set_error_rate(1.0);
    let failed = call(backstop.data, "ModelInfer", &infer_request("fraud")).await;
    assert_eq!(failed.status.as_deref(), Some("13"));

    let unknown = call(backstop.data, "ModelInfer", &infer_request("nope")).await;
    assert_eq!(unknown.status.as_deref(), Some("5"), "NOT_FOUND");
    let nameless = call(backstop.data, "ModelInfer", &protobuf_string(3, "id")).await;
    assert_eq!(nameless.status.as_deref(), Some("3"), "INVALID_ARGUMENT");
    let live = call(backstop.data, "ServerLive", &[]).await;
    assert_eq!(live.status.as_deref(), Some("0"));
    assert_eq!(&live.body[..], &frame(&[0x08, 0x01])[..]);

    let stats = HttpClient::new()
        .get(&backstop.admin_url("/api/v1/models/fraud/stats"))
        .await
        .json();
    assert_eq!(stats["versions"]["v2"]["requests"], 6, "{stats}");
    assert_eq!(stats["versions"]["v2"]["server_errors"], 1, "{stats}");
    assert_eq!(stats["versions"]["v1"]["requests"], 0, "{stats}");
}
