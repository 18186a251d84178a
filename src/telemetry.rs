//! Traces of the gateway hop (OpenTelemetry, exported as OTLP/HTTP JSON)
//! and the optional access log.
//!
//! One span per proxied request, from the moment a version is chosen to the
//! moment the answer has been fully passed on (or has failed): it ends where
//! the request's statistics are recorded ([`crate::gateway::body::Recorder`]).
//! A shadow copy gets a span of its own, a child of the request's span,
//! marked `backstop.shadow = true`.
//!
//! W3C trace context: a valid incoming `traceparent` makes the gateway's span
//! its child, and the upstream gets a `traceparent` with the same trace id and
//! the gateway span as parent (`tracestate` passes through unchanged). With
//! no valid one, a new trace starts (and a stray `tracestate` is dropped).
//! With tracing off the gateway does not touch either header.
//!
//! Sampling is parent-based: the client's sampled flag decides when it sent
//! a trace context; otherwise `sample_ratio` decides from the trace id (as
//! OpenTelemetry's `TraceIdRatioBased` does), so all replicas agree.
//!
//! Why a hand-written exporter rather than `opentelemetry-otlp`: its
//! `http-proto` exporter brings in `opentelemetry_sdk`, `opentelemetry-proto`
//! with its generated tonic/prost messages, `opentelemetry-http` and (by
//! default) reqwest — dozens of crates and a noticeably longer build on the
//! two-core machines this project is built on — and an API that changes with
//! each minor release. The gateway makes one kind of span; OTLP over HTTP
//! with the JSON encoding (`POST /v1/traces`, `application/json`) is part of
//! the OTLP spec, every collector (OpenTelemetry Collector, Jaeger, Tempo)
//! accepts it, and it needs nothing beyond serde_json and the hyper client
//! already here.
//!
//! Cost: with no `telemetry:` and no `log.requests`, the request path checks
//! one `Option` and allocates nothing. With tracing on, an unsampled request
//! parses/formats one header and allocates one small box; a sampled one also
//! copies its path and hands a finished span to a bounded queue with
//! `try_send` — never waiting. A background task sends batches; when the
//! queue is full or the collector fails, spans are dropped and counted, and
//! the count is logged at most once per [`DROP_LOG_INTERVAL`].

use crate::config::{LogConfig, TelemetryConfig};
use crate::gateway::request_id::RequestId;
use crate::gateway::upstream::Endpoint;
use backstop_core::analysis::Outcome;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method};
use http_body_util::Full;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;

pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";

/// Finished spans waiting for export; beyond this they are dropped.
pub const QUEUE_MAX: usize = 4096;
/// Spans per export request.
pub const BATCH_MAX: usize = 512;
/// A batch goes out at least this often while spans are waiting.
pub const BATCH_DELAY: Duration = Duration::from_millis(500);
/// An export that takes longer is abandoned (its spans count as dropped).
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);
/// Dropped spans are logged at most this often.
pub const DROP_LOG_INTERVAL: Duration = Duration::from_secs(30);

const SPAN_KIND_SERVER: u8 = 2;
const SPAN_KIND_CLIENT: u8 = 3;
const STATUS_UNSET: u8 = 0;
const STATUS_ERROR: u8 = 2;

/// A W3C `traceparent` (version 00 as written; later versions are read by
/// their first four fields, as the spec asks).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: [u8; 16],
    pub parent_id: [u8; 8],
    pub flags: u8,
}

impl TraceParent {
    /// Parses a header value; `None` for anything invalid (never an error:
    /// the caller starts a new trace).
    pub fn parse(value: &[u8]) -> Option<TraceParent> {
        // version "-" trace-id "-" parent-id "-" flags
        if value.len() < 55 {
            return None;
        }
        let version = hex_byte(&value[0..2])?;
        if version == 0xff {
            return None;
        }
        // Version 00 is exactly 55 characters; a later version may carry
        // more fields after another dash.
        if (version == 0 && value.len() != 55) || (value.len() > 55 && value[55] != b'-') {
            return None;
        }
        if value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
            return None;
        }
        let mut trace_id = [0u8; 16];
        for (i, byte) in trace_id.iter_mut().enumerate() {
            *byte = hex_byte(&value[3 + 2 * i..5 + 2 * i])?;
        }
        let mut parent_id = [0u8; 8];
        for (i, byte) in parent_id.iter_mut().enumerate() {
            *byte = hex_byte(&value[36 + 2 * i..38 + 2 * i])?;
        }
        let flags = hex_byte(&value[53..55])?;
        if trace_id == [0; 16] || parent_id == [0; 8] {
            return None;
        }
        Some(TraceParent {
            trace_id,
            parent_id,
            flags,
        })
    }

    pub fn from_headers(headers: &HeaderMap) -> Option<TraceParent> {
        // Several traceparent headers: invalid, as the spec says.
        let mut values = headers.get_all(TRACEPARENT).iter();
        let first = values.next()?;
        if values.next().is_some() {
            return None;
        }
        Self::parse(first.as_bytes())
    }

    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }

    /// `00-{trace id}-{parent id}-{flags}`, lowercase.
    pub fn to_bytes(&self) -> [u8; 55] {
        let mut out = [b'-'; 55];
        out[0] = b'0';
        out[1] = b'0';
        write_hex(&mut out[3..35], &self.trace_id);
        write_hex(&mut out[36..52], &self.parent_id);
        write_hex(&mut out[53..55], &[self.flags]);
        out
    }

    pub fn header_value(&self) -> HeaderValue {
        HeaderValue::from_bytes(&self.to_bytes()).expect("hex digits and dashes are a valid header")
    }
}

impl std::fmt::Display for TraceParent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(std::str::from_utf8(&self.to_bytes()).unwrap_or_default())
    }
}

/// Two lowercase hex digits (uppercase is invalid in `traceparent`).
fn hex_byte(two: &[u8]) -> Option<u8> {
    fn digit(b: u8) -> Option<u8> {
        match b {
            b'0'..=b'9' => Some(b - b'0'),
            b'a'..=b'f' => Some(b - b'a' + 10),
            _ => None,
        }
    }
    Some(digit(two[0])? << 4 | digit(two[1])?)
}

fn write_hex(out: &mut [u8], bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (i, byte) in bytes.iter().enumerate() {
        out[2 * i] = HEX[(byte >> 4) as usize];
        out[2 * i + 1] = HEX[(byte & 0xf) as usize];
    }
}

pub fn hex(bytes: &[u8]) -> String {
    let mut out = vec![0u8; bytes.len() * 2];
    write_hex(&mut out, bytes);
    String::from_utf8(out).unwrap_or_default()
}

fn new_span_id() -> [u8; 8] {
    loop {
        let id = fastrand::u64(..);
        if id != 0 {
            return id.to_be_bytes();
        }
    }
}

fn new_trace_id() -> [u8; 16] {
    loop {
        let id = fastrand::u128(..);
        if id != 0 {
            return id.to_be_bytes();
        }
    }
}

pub fn outcome_name(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Success => "success",
        Outcome::ServerError => "server_error",
        Outcome::ClientError => "client_error",
        Outcome::Timeout => "timeout",
        Outcome::ConnectError => "connect_error",
        Outcome::Cancelled => "cancelled",
    }
}

/// The gateway's tracing and access-log settings, shared by every request.
/// Absent from the gateway (`None`) when both are off.
pub struct Telemetry {
    /// `None`: tracing off (the access log alone is on).
    queue: Option<mpsc::Sender<FinishedSpan>>,
    /// Roots are sampled when the low 63 bits of their trace id are below this.
    sample_below: u64,
    access_log: bool,
    pub dropped: Arc<AtomicU64>,
    pub exported: Arc<AtomicU64>,
}

impl Telemetry {
    /// Builds the settings and, with tracing on, starts the exporter on the
    /// current tokio runtime. `None` when there is nothing to do.
    pub fn start(telemetry: Option<&TelemetryConfig>, log: &LogConfig) -> Option<Arc<Telemetry>> {
        if telemetry.is_none() && !log.requests {
            return None;
        }
        let dropped = Arc::new(AtomicU64::new(0));
        let exported = Arc::new(AtomicU64::new(0));
        let queue = telemetry.and_then(|config| {
            let (sender, receiver) = mpsc::channel(QUEUE_MAX);
            let exporter = Exporter::new(config, dropped.clone(), exported.clone())?;
            // Without a runtime (never in `serve`) spans just queue up and
            // are dropped.
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(exporter.run(receiver));
            }
            Some(sender)
        });
        let ratio = telemetry.map_or(0.0, |c| c.sample_ratio).clamp(0.0, 1.0);
        Some(Arc::new(Telemetry {
            queue,
            sample_below: ratio_threshold(ratio),
            access_log: log.requests,
            dropped,
            exported,
        }))
    }

    pub fn tracing(&self) -> bool {
        self.queue.is_some()
    }

    fn sample_root(&self, trace_id: &[u8; 16]) -> bool {
        sample(self.sample_below, trace_id)
    }

    /// Starts the hop span of a request and, with tracing on, writes the
    /// `traceparent` the upstream gets into `headers`.
    pub fn start_hop(
        self: &Arc<Self>,
        headers: &mut HeaderMap,
        method: &Method,
        path: &str,
    ) -> Box<Hop> {
        let mut hop = Hop {
            telemetry: self.clone(),
            trace: None,
            shadow: false,
            start: Instant::now(),
            start_unix_ns: unix_ns(),
            method: method.clone(),
            path: None,
            status: None,
        };
        if self.tracing() {
            let span = match TraceParent::from_headers(headers) {
                Some(parent) => SpanIds {
                    trace_id: parent.trace_id,
                    span_id: new_span_id(),
                    parent_id: Some(parent.parent_id),
                    sampled: parent.sampled(),
                },
                None => {
                    // A tracestate without a valid traceparent belongs to
                    // no trace we continue.
                    headers.remove(TRACESTATE);
                    let trace_id = new_trace_id();
                    SpanIds {
                        trace_id,
                        span_id: new_span_id(),
                        parent_id: None,
                        sampled: self.sample_root(&trace_id),
                    }
                }
            };
            headers.insert(TRACEPARENT, span.traceparent().header_value());
            if span.sampled {
                hop.path = Some(path.to_string());
            }
            hop.trace = Some(span);
        }
        Box::new(hop)
    }

    /// A shadow copy's span: a child of the request's, written into the
    /// copy's `headers`. `None` when the request is not traced.
    pub fn start_shadow_hop(
        self: &Arc<Self>,
        parent: &Hop,
        headers: &mut HeaderMap,
    ) -> Option<Box<Hop>> {
        let parent_ids = parent.trace.as_ref()?;
        let span = SpanIds {
            trace_id: parent_ids.trace_id,
            span_id: new_span_id(),
            parent_id: Some(parent_ids.span_id),
            sampled: parent_ids.sampled,
        };
        headers.insert(TRACEPARENT, span.traceparent().header_value());
        Some(Box::new(Hop {
            telemetry: self.clone(),
            trace: Some(span),
            shadow: true,
            start: Instant::now(),
            start_unix_ns: unix_ns(),
            method: parent.method.clone(),
            path: parent.path.clone(),
            status: None,
        }))
    }

    /// Ends a hop: exports its span if sampled, writes its access-log line
    /// if that is on.
    fn end_hop(&self, hop: &Hop, end: HopEnd<'_>) {
        if self.access_log && !hop.shadow {
            tracing::info!(
                target: "backstop::access",
                model = end.model,
                version = end.version,
                request_id = %end.request_id,
                status = hop.status.unwrap_or(0),
                outcome = outcome_name(end.outcome),
                latency_ms = hop.start.elapsed().as_secs_f64() * 1000.0,
                "Request."
            );
        }
        let Some(queue) = &self.queue else { return };
        if !hop.trace.as_ref().is_some_and(|t| t.sampled) {
            return;
        }
        let span = hop.finish(end);
        if queue.try_send(span).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn ratio_threshold(ratio: f64) -> u64 {
    if ratio >= 1.0 {
        u64::MAX
    } else {
        (ratio * (1u64 << 63) as f64) as u64
    }
}

fn sample(below: u64, trace_id: &[u8; 16]) -> bool {
    if below == u64::MAX {
        return true;
    }
    let low = u64::from_be_bytes(trace_id[8..16].try_into().expect("8 bytes")) & (u64::MAX >> 1);
    low < below
}

fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Ids of one span.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpanIds {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent_id: Option<[u8; 8]>,
    pub sampled: bool,
}

impl SpanIds {
    /// What the upstream is sent: this span as the parent.
    pub fn traceparent(&self) -> TraceParent {
        TraceParent {
            trace_id: self.trace_id,
            parent_id: self.span_id,
            flags: u8::from(self.sampled),
        }
    }
}

/// One request's hop, while it is in flight.
pub struct Hop {
    telemetry: Arc<Telemetry>,
    /// `None`: tracing is off (access log only).
    pub trace: Option<SpanIds>,
    pub shadow: bool,
    start: Instant,
    start_unix_ns: u64,
    method: Method,
    /// The client's path (sampled spans only).
    path: Option<String>,
    /// The status the client (or, for a shadow, the gateway) got.
    pub status: Option<u16>,
}

/// What is known when a hop ends.
pub struct HopEnd<'a> {
    pub model: &'a str,
    pub version: &'a str,
    pub request_id: RequestId,
    pub outcome: Outcome,
    pub endpoint: &'a Endpoint,
}

impl Hop {
    /// Ends the hop: exports its span if sampled, writes its access-log
    /// line if that is on.
    pub fn end(self: Box<Self>, end: HopEnd<'_>) {
        self.telemetry.end_hop(&self, end);
    }

    fn finish(&self, end: HopEnd<'_>) -> FinishedSpan {
        let ids = self.trace.expect("only traced hops finish as spans");
        let duration = self.start.elapsed().as_nanos() as u64;
        let mut attributes = vec![
            ("backstop.model", AttrValue::Str(end.model.to_string())),
            ("backstop.version", AttrValue::Str(end.version.to_string())),
            (
                "backstop.request_id",
                AttrValue::Str(end.request_id.to_string()),
            ),
            (
                "backstop.outcome",
                AttrValue::Str(outcome_name(end.outcome).to_string()),
            ),
            (
                "http.request.method",
                AttrValue::Str(self.method.as_str().to_string()),
            ),
        ];
        if let Some(path) = &self.path {
            attributes.push(("url.path", AttrValue::Str(path.clone())));
        }
        if let Some(status) = self.status {
            attributes.push(("http.response.status_code", AttrValue::Int(status.into())));
        }
        if let Some(host) = end.endpoint.uri.host() {
            attributes.push((
                "server.address",
                AttrValue::Str(host.trim_matches(['[', ']']).to_string()),
            ));
        }
        if let Some(port) = end.endpoint.uri.port_u16() {
            attributes.push(("server.port", AttrValue::Int(port.into())));
        }
        if self.shadow {
            attributes.push(("backstop.shadow", AttrValue::Bool(true)));
        }
        let failed = matches!(
            end.outcome,
            Outcome::ServerError | Outcome::Timeout | Outcome::ConnectError
        );
        FinishedSpan {
            ids,
            name: format!(
                "backstop.{} {}",
                if self.shadow { "shadow" } else { "proxy" },
                end.model
            ),
            kind: if self.shadow {
                SPAN_KIND_CLIENT
            } else {
                SPAN_KIND_SERVER
            },
            start_unix_ns: self.start_unix_ns,
            end_unix_ns: self.start_unix_ns + duration,
            attributes,
            status: if failed { STATUS_ERROR } else { STATUS_UNSET },
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum AttrValue {
    Str(String),
    Int(i64),
    Bool(bool),
}

/// A span ready for export.
#[derive(Clone, Debug)]
pub struct FinishedSpan {
    pub ids: SpanIds,
    pub name: String,
    pub kind: u8,
    pub start_unix_ns: u64,
    pub end_unix_ns: u64,
    pub attributes: Vec<(&'static str, AttrValue)>,
    pub status: u8,
}

impl FinishedSpan {
    /// The span in OTLP's JSON encoding (ids as hex, enums as numbers,
    /// 64-bit integers as strings).
    pub fn to_json(&self) -> Value {
        let attributes: Vec<Value> = self
            .attributes
            .iter()
            .map(|(key, value)| {
                let value = match value {
                    AttrValue::Str(s) => json!({ "stringValue": s }),
                    AttrValue::Int(i) => json!({ "intValue": i.to_string() }),
                    AttrValue::Bool(b) => json!({ "boolValue": b }),
                };
                json!({ "key": key, "value": value })
            })
            .collect();
        let mut span = json!({
            "traceId": hex(&self.ids.trace_id),
            "spanId": hex(&self.ids.span_id),
            "name": self.name,
            "kind": self.kind,
            "startTimeUnixNano": self.start_unix_ns.to_string(),
            "endTimeUnixNano": self.end_unix_ns.to_string(),
            "attributes": attributes,
            "flags": 0x100 | u32::from(self.ids.sampled),
            "status": { "code": self.status },
        });
        if let Some(parent) = self.ids.parent_id {
            span["parentSpanId"] = Value::String(hex(&parent));
        }
        span
    }
}

/// One OTLP `ExportTraceServiceRequest` in JSON.
pub fn export_request(service_name: &str, spans: &[FinishedSpan]) -> Value {
    json!({
        "resourceSpans": [{
            "resource": {
                "attributes": [
                    { "key": "service.name", "value": { "stringValue": service_name } },
                    { "key": "service.version", "value": { "stringValue": env!("CARGO_PKG_VERSION") } },
                ]
            },
            "scopeSpans": [{
                "scope": { "name": "backstop", "version": env!("CARGO_PKG_VERSION") },
                "spans": spans.iter().map(FinishedSpan::to_json).collect::<Vec<_>>(),
            }]
        }]
    })
}

type ExportClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<Bytes>,
>;

/// Sends finished spans in batches from a background task.
struct Exporter {
    url: http::Uri,
    service_name: String,
    client: ExportClient,
    dropped: Arc<AtomicU64>,
    exported: Arc<AtomicU64>,
}

impl Exporter {
    fn new(
        config: &TelemetryConfig,
        dropped: Arc<AtomicU64>,
        exported: Arc<AtomicU64>,
    ) -> Option<Exporter> {
        let url = traces_url(&config.otlp_endpoint)?;
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())
            .map_err(|e| tracing::error!(error = %e, "OTLP exporter: no TLS provider."))
            .ok()?
            .https_or_http()
            .enable_http1()
            .build();
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build(https);
        Some(Exporter {
            url,
            service_name: config.service_name.clone(),
            client,
            dropped,
            exported,
        })
    }

    async fn run(self, mut queue: mpsc::Receiver<FinishedSpan>) {
        let mut batch = Vec::with_capacity(BATCH_MAX);
        let mut logged_drops = 0u64;
        let mut last_log = Instant::now() - DROP_LOG_INTERVAL;
        loop {
            // Wait for a first span, then up to BATCH_DELAY for more.
            let Some(first) = queue.recv().await else {
                return;
            };
            batch.push(first);
            let deadline = tokio::time::Instant::now() + BATCH_DELAY;
            while batch.len() < BATCH_MAX {
                match tokio::time::timeout_at(deadline, queue.recv()).await {
                    Ok(Some(span)) => batch.push(span),
                    Ok(None) | Err(_) => break,
                }
            }
            let count = batch.len() as u64;
            match self.send(&batch).await {
                Ok(()) => {
                    self.exported.fetch_add(count, Ordering::Relaxed);
                }
                Err(why) => {
                    self.dropped.fetch_add(count, Ordering::Relaxed);
                    if last_log.elapsed() >= DROP_LOG_INTERVAL {
                        tracing::warn!(url = %self.url, error = %why, "OTLP export failed; spans dropped.");
                    }
                }
            }
            batch.clear();
            let dropped = self.dropped.load(Ordering::Relaxed);
            if dropped > logged_drops && last_log.elapsed() >= DROP_LOG_INTERVAL {
                tracing::warn!(
                    dropped_total = dropped,
                    dropped_since_last = dropped - logged_drops,
                    "OTLP: spans dropped (queue full or collector failing)."
                );
                logged_drops = dropped;
                last_log = Instant::now();
            }
        }
    }

    async fn send(&self, batch: &[FinishedSpan]) -> Result<(), String> {
        let body = serde_json::to_vec(&export_request(&self.service_name, batch))
            .map_err(|e| e.to_string())?;
        let request = http::Request::post(self.url.clone())
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let response = tokio::time::timeout(EXPORT_TIMEOUT, self.client.request(request))
            .await
            .map_err(|_| "timed out".to_string())?
            .map_err(|e| e.to_string())?;
        let status = response.status();
        // Drain the answer so the connection can be reused.
        let _ = tokio::time::timeout(
            EXPORT_TIMEOUT,
            http_body_util::BodyExt::collect(response.into_body()),
        )
        .await;
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("collector answered {status}"))
        }
    }
}

/// `{endpoint}/v1/traces`, as OTLP's `OTEL_EXPORTER_OTLP_ENDPOINT` means it;
/// an endpoint that already ends in `/v1/traces` is used as it is.
pub fn traces_url(endpoint: &str) -> Option<http::Uri> {
    let base = endpoint.trim_end_matches('/');
    let url = if base.ends_with("/v1/traces") {
        base.to_string()
    } else {
        format!("{base}/v1/traces")
    };
    url.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_and_formats_a_valid_traceparent() {
        let parent = TraceParent::parse(VALID.as_bytes()).unwrap();
        assert_eq!(hex(&parent.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(hex(&parent.parent_id), "00f067aa0ba902b7");
        assert!(parent.sampled());
        assert_eq!(parent.to_string(), VALID);
        assert_eq!(parent.header_value().to_str().unwrap(), VALID);
        let unsampled = TraceParent::parse(&VALID.replace("-01", "-00").into_bytes()).unwrap();
        assert!(!unsampled.sampled());
    }

    #[test]
    fn later_versions_are_read_by_their_first_fields() {
        let future = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-ever";
        let parent = TraceParent::parse(future.as_bytes()).unwrap();
        assert_eq!(parent.to_string(), VALID);
        // ...but only after a dash.
        let glued = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x";
        assert_eq!(TraceParent::parse(glued.as_bytes()), None);
    }

    #[test]
    fn invalid_traceparents_are_ignored() {
        for bad in [
            // version ff is forbidden
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            // all-zero ids
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            // wrong lengths
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e47360-0f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "",
            // uppercase
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00F067AA0BA902B7-01",
            "0A-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            // not hex, wrong separators
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceParent::parse(bad.as_bytes()), None, "{bad:?}");
        }
    }

    #[test]
    fn two_traceparent_headers_are_invalid() {
        let mut headers = HeaderMap::new();
        headers.append(TRACEPARENT, HeaderValue::from_static(VALID));
        assert!(TraceParent::from_headers(&headers).is_some());
        headers.append(TRACEPARENT, HeaderValue::from_static(VALID));
        assert!(TraceParent::from_headers(&headers).is_none());
    }

    fn tracing_on(ratio: f64) -> Arc<Telemetry> {
        let config = TelemetryConfig {
            otlp_endpoint: "http://127.0.0.1:1".into(),
            protocol: Default::default(),
            sample_ratio: ratio,
            service_name: "backstop".into(),
        };
        Telemetry::start(Some(&config), &LogConfig::default()).unwrap()
    }

    #[test]
    fn a_valid_parent_is_continued_and_the_upstream_sees_our_span() {
        let telemetry = tracing_on(0.0);
        let mut headers = HeaderMap::new();
        headers.insert(TRACEPARENT, HeaderValue::from_static(VALID));
        headers.insert(TRACESTATE, HeaderValue::from_static("vendor=abc"));
        let hop = telemetry.start_hop(&mut headers, &Method::POST, "/v2/models/m/infer");
        let ids = hop.trace.unwrap();
        let incoming = TraceParent::parse(VALID.as_bytes()).unwrap();
        assert_eq!(ids.trace_id, incoming.trace_id);
        assert_eq!(ids.parent_id, Some(incoming.parent_id));
        assert_ne!(ids.span_id, incoming.parent_id);
        // Sampled because the client sampled it, whatever the ratio.
        assert!(ids.sampled);
        let sent = TraceParent::from_headers(&headers).unwrap();
        assert_eq!(sent.trace_id, incoming.trace_id);
        assert_eq!(sent.parent_id, ids.span_id);
        assert_eq!(sent.flags, 1);
        assert_eq!(headers[TRACESTATE], "vendor=abc");

        // A shadow copy is a child of the request's span.
        let mut copy = headers.clone();
        let shadow = telemetry.start_shadow_hop(&hop, &mut copy).unwrap();
        let shadow_ids = shadow.trace.unwrap();
        assert_eq!(shadow_ids.trace_id, ids.trace_id);
        assert_eq!(shadow_ids.parent_id, Some(ids.span_id));
        assert_eq!(
            TraceParent::from_headers(&copy).unwrap().parent_id,
            shadow_ids.span_id
        );
    }

    #[test]
    fn without_a_valid_parent_a_new_trace_starts() {
        let telemetry = tracing_on(1.0);
        let mut headers = HeaderMap::new();
        headers.insert(
            TRACEPARENT,
            HeaderValue::from_static("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        headers.insert(TRACESTATE, HeaderValue::from_static("vendor=abc"));
        let hop = telemetry.start_hop(&mut headers, &Method::GET, "/x");
        let ids = hop.trace.unwrap();
        assert_eq!(ids.parent_id, None);
        assert!(ids.sampled);
        assert_ne!(hex(&ids.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        let sent = TraceParent::from_headers(&headers).unwrap();
        assert_eq!(sent.trace_id, ids.trace_id);
        assert_eq!(sent.parent_id, ids.span_id);
        assert!(headers.get(TRACESTATE).is_none());

        // Ratio 0: a new trace is propagated but not sampled.
        let telemetry = tracing_on(0.0);
        let mut headers = HeaderMap::new();
        let hop = telemetry.start_hop(&mut headers, &Method::GET, "/x");
        assert!(!hop.trace.unwrap().sampled);
        assert_eq!(TraceParent::from_headers(&headers).unwrap().flags, 0);
    }

    #[test]
    fn sampling_follows_the_ratio() {
        assert!(sample(ratio_threshold(1.0), &[0xff; 16]));
        assert!(!sample(ratio_threshold(0.0), &[0; 16]));
        let below = ratio_threshold(0.25);
        let sampled = (0..10_000)
            .filter(|_| sample(below, &new_trace_id()))
            .count();
        assert!((2_000..3_000).contains(&sampled), "{sampled}");
    }

    #[test]
    fn access_log_only_touches_no_header() {
        let log = LogConfig {
            requests: true,
            ..LogConfig::default()
        };
        let telemetry = Telemetry::start(None, &log).unwrap();
        assert!(!telemetry.tracing());
        let mut headers = HeaderMap::new();
        headers.insert(TRACEPARENT, HeaderValue::from_static(VALID));
        let hop = telemetry.start_hop(&mut headers, &Method::GET, "/x");
        assert!(hop.trace.is_none());
        assert_eq!(headers[TRACEPARENT], VALID);
        assert!(Telemetry::start(None, &LogConfig::default()).is_none());
    }

    #[test]
    fn spans_carry_the_attributes_in_otlp_json() {
        let telemetry = tracing_on(1.0);
        let mut headers = HeaderMap::new();
        headers.insert(TRACEPARENT, HeaderValue::from_static(VALID));
        let mut hop = telemetry.start_hop(&mut headers, &Method::POST, "/v2/models/m/infer");
        hop.status = Some(503);
        let endpoint = Endpoint::new(
            "http://10.1.2.3:8001".parse().unwrap(),
            crate::config::Protocol::Http,
            "/".into(),
            Default::default(),
        );
        let request_id = RequestId::new();
        let span = hop.finish(HopEnd {
            model: "m",
            version: "v2",
            request_id,
            outcome: Outcome::ServerError,
            endpoint: &endpoint,
        });
        let json = export_request("svc", &[span]);
        let resource = &json["resourceSpans"][0];
        assert_eq!(
            resource["resource"]["attributes"][0]["value"]["stringValue"],
            "svc"
        );
        let span = &resource["scopeSpans"][0]["spans"][0];
        assert_eq!(span["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(span["parentSpanId"], "00f067aa0ba902b7");
        assert_eq!(span["spanId"].as_str().unwrap().len(), 16);
        assert_eq!(span["name"], "backstop.proxy m");
        assert_eq!(span["kind"], 2);
        assert_eq!(span["status"]["code"], 2);
        let attr = |key: &str| -> Value {
            span["attributes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|a| a["key"] == key)
                .map(|a| a["value"].clone())
                .unwrap_or(Value::Null)
        };
        assert_eq!(attr("backstop.model")["stringValue"], "m");
        assert_eq!(attr("backstop.version")["stringValue"], "v2");
        assert_eq!(
            attr("backstop.request_id")["stringValue"],
            request_id.to_string()
        );
        assert_eq!(attr("backstop.outcome")["stringValue"], "server_error");
        assert_eq!(attr("http.request.method")["stringValue"], "POST");
        assert_eq!(attr("url.path")["stringValue"], "/v2/models/m/infer");
        assert_eq!(attr("http.response.status_code")["intValue"], "503");
        assert_eq!(attr("server.address")["stringValue"], "10.1.2.3");
        assert_eq!(attr("server.port")["intValue"], "8001");
        assert_eq!(attr("backstop.shadow"), Value::Null);
        let start: u64 = span["startTimeUnixNano"].as_str().unwrap().parse().unwrap();
        let end: u64 = span["endTimeUnixNano"].as_str().unwrap().parse().unwrap();
        assert!(end >= start && start > 0);
    }

    #[test]
    fn the_traces_url_is_the_endpoint_plus_v1_traces() {
        assert_eq!(
            traces_url("http://127.0.0.1:4318").unwrap().to_string(),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert_eq!(
            traces_url("http://c:4318/otlp/").unwrap().to_string(),
            "http://c:4318/otlp/v1/traces"
        );
        assert_eq!(
            traces_url("https://c/v1/traces").unwrap().to_string(),
            "https://c/v1/traces"
        );
    }
}
