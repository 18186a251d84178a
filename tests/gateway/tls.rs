//! TLS on the listener and to `https://` upstreams: one Backstop with a
//! certificate fronts the toy server, a second Backstop reaches it over
//! https, trusting the test CA.

use crate::util::*;
use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_listener_and_https_upstreams_work() {
    let dir = tempfile::tempdir().unwrap();
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.key_pair.serialize_pem()).unwrap();

    let v1 = toy("v1").await;
    let edge = Backstop::start(&format!(
        r#"
listen: 127.0.0.1:0
tls: {{ cert: "{}", key: "{}" }}
admin: {{ listen: 127.0.0.1:0 }}
models:
  m:
    versions:
      - {{ name: v1, weight: 1, endpoints: ["{}"] }}
"#,
        cert.display(),
        key.display(),
        v1.url()
    ));

    // A TLS client that trusts only the test certificate.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(certified.cert.der().clone()).unwrap();
    let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_all_versions()
        .build();
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(https);
    let request = http::Request::post(format!(
        "https://127.0.0.1:{}/v2/models/m/infer",
        edge.data.port()
    ))
    .body(Full::new(Bytes::from(INFER_BODY)))
    .unwrap();
    let response = client.request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["x-backstop-version"], "v1");
    let _ = response.into_body().collect().await;

    // A second gateway whose upstream is the first one, over https.
    let front = Backstop::start(&format!(
        r#"
listen: 127.0.0.1:0
admin: {{ listen: 127.0.0.1:0 }}
upstream_tls: {{ ca_file: "{}" }}
models:
  m:
    versions:
      - {{ name: edge, weight: 1, endpoints: ["https://127.0.0.1:{}"] }}
"#,
        cert.display(),
        edge.data.port()
    ));
    let answer = HttpClient::new()
        .infer(&front.url("/v2/models/m/infer"), &[])
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    assert_eq!(answer.version(), Some("edge"));
    assert_eq!(answer.json()["model_version"], "v1");
}
