//! Traces of the gateway hop reach an OTLP collector (a fake one on
//! loopback, decoding OTLP/HTTP JSON), W3C trace context is continued or
//! passed through, and JSON logs name model, version and request id.

use crate::util::*;
use http::StatusCode;
use serde_json::Value;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_PARENT: &str = "00f067aa0ba902b7";

fn client_traceparent() -> String {
    format!("00-{CLIENT_TRACE}-{CLIENT_PARENT}-01")
}

/// A fake OTLP/HTTP collector: every span it was sent, flattened.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Value>>>,
    service_names: Arc<Mutex<Vec<String>>>,
}

impl Collector {
    async fn start() -> (Collector, SocketAddr) {
        let collector = Collector::default();
        let sink = collector.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |headers: http::HeaderMap, body: bytes::Bytes| {
                let sink = sink.clone();
                async move {
                    assert_eq!(headers["content-type"], "application/json");
                    let request: Value = serde_json::from_slice(&body).unwrap();
                    for resource in request["resourceSpans"].as_array().unwrap() {
                        let service = resource["resource"]["attributes"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .find(|a| a["key"] == "service.name")
                            .map(|a| a["value"]["stringValue"].as_str().unwrap().to_string())
                            .unwrap();
                        sink.service_names.lock().unwrap().push(service);
                        for scope in resource["scopeSpans"].as_array().unwrap() {
                            let spans = scope["spans"].as_array().unwrap();
                            sink.spans.lock().unwrap().extend(spans.iter().cloned());
                        }
                    }
                    "{}"
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (collector, addr)
    }

    /// The request's span (`shadow`: its shadow copy's) with this request
    /// id, waiting up to 10 s for it.
    async fn span_of(&self, request_id: &str, shadow: bool) -> Value {
        let name = if shadow {
            "backstop.shadow m"
        } else {
            "backstop.proxy m"
        };
        let mut found = None;
        eventually(Duration::from_secs(10), || {
            found = self
                .spans
                .lock()
                .unwrap()
                .iter()
                .find(|span| {
                    span["name"] == name
                        && attr(span, "backstop.request_id")["stringValue"] == request_id
                })
                .cloned();
            let done = found.is_some();
            async move { done }
        })
        .await;
        found.unwrap_or_else(|| {
            panic!(
                "no span {name} for {request_id}: {:?}",
                self.spans.lock().unwrap()
            )
        })
    }
}

fn attr(span: &Value, key: &str) -> Value {
    span["attributes"]
        .as_array()
        .and_then(|all| all.iter().find(|a| a["key"] == key))
        .map_or(Value::Null, |a| a["value"].clone())
}

/// An upstream that answers with the trace headers it was sent.
async fn echo_upstream() -> String {
    let app = axum::Router::new().fallback(|headers: http::HeaderMap| async move {
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        axum::Json(serde_json::json!({
            "traceparent": header("traceparent"),
            "tracestate": header("tracestate"),
            "shadow": false,
        }))
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

/// `traceparent` fields: (trace id, parent id, flags).
fn fields(traceparent: &Value) -> (String, String, String) {
    let text = traceparent.as_str().expect("a traceparent was sent");
    let parts: Vec<&str> = text.split('-').collect();
    assert_eq!(parts.len(), 4, "{text}");
    assert_eq!(parts[0], "00", "{text}");
    (
        parts[1].to_string(),
        parts[2].to_string(),
        parts[3].to_string(),
    )
}

fn telemetry_section(collector: SocketAddr) -> String {
    format!("telemetry:\n  otlp_endpoint: http://{collector}\n  service_name: gateway-test\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_the_collector_and_the_upstream_continues_the_trace() {
    let (collector, collector_addr) = Collector::start().await;
    let upstream = echo_upstream().await;
    // v2 gets a shadow copy of every request.
    let config = format!(
        "{}{}",
        telemetry_section(collector_addr),
        two_versions(
            &upstream,
            &upstream,
            100,
            0,
            "    shadow: { version: v2, percent: 100 }"
        )
    );
    let backstop = Backstop::start(&config);
    let client = HttpClient::new();
    let url = backstop.url("/v2/models/m/infer");

    // The client's trace is continued.
    let traceparent = client_traceparent();
    let answer = client
        .infer(
            &url,
            &[
                ("traceparent", traceparent.as_str()),
                ("tracestate", "vendor=abc"),
            ],
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK);
    let request_id = answer.headers["x-backstop-request-id"].to_str().unwrap();
    let seen = answer.json();
    let (trace, parent, flags) = fields(&seen["traceparent"]);
    assert_eq!(trace, CLIENT_TRACE);
    assert_ne!(parent, CLIENT_PARENT, "the upstream's parent is our span");
    assert_eq!(flags, "01");
    assert_eq!(seen["tracestate"], "vendor=abc");

    let span = collector.span_of(request_id, false).await;
    assert_eq!(span["traceId"], CLIENT_TRACE);
    assert_eq!(span["spanId"], parent.as_str());
    assert_eq!(span["parentSpanId"], CLIENT_PARENT);
    assert_eq!(span["name"], "backstop.proxy m");
    assert_eq!(span["kind"], 2);
    assert_eq!(attr(&span, "backstop.model")["stringValue"], "m");
    assert_eq!(attr(&span, "backstop.version")["stringValue"], "v1");
    assert_eq!(attr(&span, "backstop.outcome")["stringValue"], "success");
    assert_eq!(attr(&span, "http.request.method")["stringValue"], "POST");
    assert_eq!(attr(&span, "http.response.status_code")["intValue"], "200");
    assert_eq!(attr(&span, "url.path")["stringValue"], "/v2/models/m/infer");
    assert_eq!(attr(&span, "server.address")["stringValue"], "127.0.0.1");
    assert_eq!(attr(&span, "backstop.shadow"), Value::Null);
    assert!(collector
        .service_names
        .lock()
        .unwrap()
        .iter()
        .all(|name| name == "gateway-test"));

    // The shadow copy has its own span, a child of the request's.
    let shadow = collector.span_of(request_id, true).await;
    assert_eq!(attr(&shadow, "backstop.version")["stringValue"], "v2");
    assert_eq!(shadow["traceId"], CLIENT_TRACE);
    assert_eq!(shadow["parentSpanId"], parent.as_str());
    assert_eq!(shadow["name"], "backstop.shadow m");
    assert_eq!(attr(&shadow, "backstop.shadow")["boolValue"], true);
    assert_eq!(
        attr(&shadow, "backstop.request_id")["stringValue"],
        request_id
    );

    // No trace context, or an invalid one: a new trace, sent upstream.
    for headers in [
        vec![],
        vec![(
            "traceparent",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        )],
    ] {
        let answer = client.infer(&url, &headers).await;
        assert_eq!(answer.status, StatusCode::OK);
        let request_id = answer.headers["x-backstop-request-id"].to_str().unwrap();
        let (trace, parent, flags) = fields(&answer.json()["traceparent"]);
        assert_ne!(trace, CLIENT_TRACE);
        assert_ne!(trace, "0".repeat(32));
        assert_eq!(flags, "01", "sample_ratio defaults to 1.0");
        let span = collector.span_of(request_id, false).await;
        assert_eq!(span["traceId"], trace.as_str());
        assert_eq!(span["spanId"], parent.as_str());
        assert_eq!(span["parentSpanId"], Value::Null);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_collector_never_fails_a_request() {
    // A port nothing listens on.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let upstream = echo_upstream().await;
    let config = format!(
        "{}{}",
        telemetry_section(closed),
        one_version(&upstream, "", "")
    );
    let backstop = Backstop::start(&config);
    let client = HttpClient::new();
    let url = backstop.url("/v2/models/m/infer");
    let deadline = Instant::now() + Duration::from_secs(30);
    for _ in 0..100 {
        assert!(Instant::now() < deadline, "bounded in time");
        let answer = client.infer(&url, &[]).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert!(answer.json()["traceparent"].is_string());
    }
    // The failed export is counted and logged (once per interval).
    let logged = eventually(Duration::from_secs(10), || {
        let logs = backstop.logs();
        async move { logs.contains("OTLP export failed") }
    })
    .await;
    assert!(logged, "{}", backstop.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_telemetry_the_clients_trace_context_passes_through() {
    let upstream = echo_upstream().await;
    let backstop = Backstop::start(&one_version(&upstream, "", ""));
    let client = HttpClient::new();
    let traceparent = client_traceparent();
    let answer = client
        .infer(
            &backstop.url("/v2/models/m/infer"),
            &[
                ("traceparent", traceparent.as_str()),
                ("tracestate", "vendor=abc"),
            ],
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK);
    let seen = answer.json();
    assert_eq!(seen["traceparent"], traceparent.as_str());
    assert_eq!(seen["tracestate"], "vendor=abc");

    // And none is made up.
    let answer = client.infer(&backstop.url("/v2/models/m/infer"), &[]).await;
    assert_eq!(answer.json()["traceparent"], Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_name_model_version_and_request_id() {
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    let config = one_version(&closed, "log: { requests: true }", "");
    let backstop = Backstop::start_with(
        &config,
        &["--log-format", "json"],
        &[("RUST_LOG", "warn,backstop::gateway=debug")],
    );
    let client = HttpClient::new();
    let answer = client.infer(&backstop.url("/v2/models/m/infer"), &[]).await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
    let request_id = answer.headers["x-backstop-request-id"]
        .to_str()
        .unwrap()
        .to_string();

    let line_with = |message: &'static str| {
        let request_id = request_id.clone();
        let logs = backstop.logs();
        logs.lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .find(move |line| {
                line["message"] == message && line["request_id"] == request_id.as_str()
            })
    };
    let found = eventually(Duration::from_secs(10), || {
        let done =
            line_with("Upstream connect failed.").is_some() && line_with("Request.").is_some();
        async move { done }
    })
    .await;
    assert!(found, "{}", backstop.logs());

    let connect = line_with("Upstream connect failed.").unwrap();
    assert_eq!(connect["model"], "m");
    assert_eq!(connect["version"], "v1");
    assert_eq!(connect["level"], "DEBUG");

    // The access log: one line per request.
    let access = line_with("Request.").unwrap();
    assert_eq!(access["target"], "backstop::access");
    assert_eq!(access["model"], "m");
    assert_eq!(access["version"], "v1");
    assert_eq!(access["status"], 502);
    assert_eq!(access["outcome"], "connect_error");
    assert!(access["latency_ms"].is_number());

    // Every line is JSON.
    for line in backstop.logs().lines() {
        assert!(
            serde_json::from_str::<Value>(line).is_ok(),
            "not JSON: {line}"
        );
    }
}
