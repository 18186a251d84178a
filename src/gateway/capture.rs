//! Samples of request/response pairs per version: the evidence an incident
//! freezes when it opens.
//!
//! A model's `capture` settings ([`Capture`], compiled into its routing
//! table) decide which requests are sampled. A sampled request carries a
//! [`PendingCapture`] in its recorder: the request body (only when it was
//! known to be small), and a copy of the response taken as it streams, up
//! to `body_max_bytes`. When the exchange ends — answered, failed, timed
//! out or cancelled — the bodies are redacted and the record is pushed into
//! the version's [`Ring`], which lives in its `VersionState` and so
//! survives table swaps. Unsampled requests touch none of this.

use crate::config::CaptureSpec;
pub use crate::redact::CapturedBody;
use crate::redact::Redactor;
use backstop_core::analysis::Outcome;
use bytes::{Bytes, BytesMut};
use http::request::Parts;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One sampled exchange, redacted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CapturedExchange {
    /// When the request arrived (Unix milliseconds).
    pub at_unix_ms: u64,
    /// The client's `x-request-id`, if it sent one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    pub method: String,
    /// The request path, without the query string (queries can carry
    /// anything, and are not redacted).
    pub path: String,
    /// The upstream's status; none when no answer came.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// `success`, `server_error`, `client_error`, `timeout`,
    /// `connect_error` or `cancelled`.
    pub outcome: String,
    /// From the request's arrival to the end of the answer.
    pub latency_ms: f64,
    /// A copy sent to the shadow version (its answer went to nobody).
    #[serde(default, skip_serializing_if = "is_false")]
    pub shadow: bool,
    pub request: CapturedBody,
    pub response: CapturedBody,
}

fn is_false(value: &bool) -> bool {
    !*value
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

/// A model's capture settings, compiled once per routing table.
#[derive(Debug)]
pub struct Capture {
    /// Sampled share in parts per million.
    ppm: u32,
    /// Ring size per version.
    pub samples: usize,
    pub body_max_bytes: usize,
    pub redactor: Redactor,
}

impl Capture {
    pub fn new(spec: &CaptureSpec) -> Self {
        Self {
            ppm: (spec.sample_percent.clamp(0.0, 100.0) * 10_000.0).round() as u32,
            samples: spec.samples.max(1),
            body_max_bytes: spec.body_max_bytes,
            redactor: Redactor::new(&spec.redact, &spec.hash),
        }
    }

    /// Whether to sample this request.
    #[inline]
    pub fn sample(&self) -> bool {
        self.ppm >= 1_000_000 || (self.ppm > 0 && fastrand::u32(0..1_000_000) < self.ppm)
    }
}

/// A version's most recent samples, bounded. Locked only to push a
/// sampled exchange or to read.
#[derive(Default)]
pub struct Ring {
    entries: Mutex<VecDeque<CapturedExchange>>,
}

impl Ring {
    /// Appends, dropping the oldest beyond `capacity` (the current table's
    /// `samples`, which may have shrunk since the last push).
    pub fn push(&self, exchange: CapturedExchange, capacity: usize) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        while entries.len() >= capacity.max(1) {
            entries.pop_front();
        }
        entries.push_back(exchange);
    }

    /// Oldest first (in the order the exchanges ended).
    pub fn snapshot(&self) -> Vec<CapturedExchange> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.iter().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The request body as the proxy had it.
enum RawRequest {
    Bytes(Bytes),
    Omitted { bytes: u64, reason: &'static str },
}

/// A sampled exchange in flight. Holds raw bytes only until it ends; they
/// are redacted before anything is kept.
pub struct PendingCapture {
    settings: Arc<Capture>,
    at_unix_ms: u64,
    request_id: Option<String>,
    method: String,
    path: String,
    request: RawRequest,
    shadow: bool,
    grpc: bool,
    /// The upstream's status, once its answer's head arrived.
    pub status: Option<u16>,
    response: BytesMut,
    response_bytes: u64,
    /// More than `body_max_bytes` came: the copy was dropped.
    response_overflow: bool,
    /// The answer reached its end (rather than failing or being cut off).
    response_complete: bool,
}

impl PendingCapture {
    /// Starts a sample. `request` is the whole body when the proxy
    /// buffered it; gRPC bodies are binary and are never kept.
    pub fn new(
        settings: Arc<Capture>,
        parts: &Parts,
        request: Option<Bytes>,
        grpc: bool,
        shadow: bool,
    ) -> Box<Self> {
        let declared = parts
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let request = match (grpc, request) {
            (true, body) => RawRequest::Omitted {
                bytes: body.map(|b| b.len() as u64).or(declared).unwrap_or(0),
                reason: "gRPC (binary)",
            },
            (false, Some(bytes)) => RawRequest::Bytes(bytes),
            (false, None) => RawRequest::Omitted {
                bytes: declared.unwrap_or(0),
                reason: "streamed: larger than body_max_bytes, or of unknown length",
            },
        };
        Box::new(Self {
            at_unix_ms: super::unix_ms(),
            request_id: parts
                .headers
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
            method: parts.method.to_string(),
            path: parts.uri.path().to_string(),
            request,
            shadow,
            grpc,
            status: None,
            response: BytesMut::new(),
            response_bytes: 0,
            response_overflow: false,
            response_complete: false,
            settings,
        })
    }

    /// Copies a frame of the answer, while it fits.
    #[inline]
    pub fn tee(&mut self, data: &Bytes) {
        self.response_bytes += data.len() as u64;
        if self.grpc || self.response_overflow {
            return;
        }
        if self.response.len() + data.len() > self.settings.body_max_bytes {
            self.response_overflow = true;
            self.response = BytesMut::new();
        } else {
            self.response.extend_from_slice(data);
        }
    }

    /// The answer was passed on to its end.
    pub fn complete(&mut self) {
        self.response_complete = true;
    }

    /// Redacts and pushes the exchange into the version's ring, off the
    /// client's path: on a task of its own when a runtime is at hand, so
    /// the answer's last frame is not held up by the redaction.
    pub fn finish(
        self: Box<Self>,
        state: Arc<super::VersionState>,
        outcome: Outcome,
        latency: Duration,
    ) {
        let work = move || {
            let capacity = self.settings.samples;
            let exchange = self.into_exchange(outcome, latency);
            state.samples.push(exchange, capacity);
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move { work() });
            }
            Err(_) => work(),
        }
    }

    /// The redacted record.
    pub fn into_exchange(self, outcome: Outcome, latency: Duration) -> CapturedExchange {
        let redactor = &self.settings.redactor;
        let max = self.settings.body_max_bytes;
        let request = match self.request {
            RawRequest::Bytes(bytes) => redactor.body(&bytes, max),
            RawRequest::Omitted { bytes, reason } => CapturedBody::omitted(bytes, reason),
        };
        let size = self.response_bytes;
        let response = if self.status.is_none() {
            CapturedBody::omitted(0, format!("no answer: {}", outcome_name(outcome)))
        } else if self.grpc {
            CapturedBody::omitted(size, "gRPC (binary)")
        } else if !self.response_complete {
            CapturedBody::omitted(size, format!("incomplete: {}", outcome_name(outcome)))
        } else if self.response_overflow {
            CapturedBody::omitted(size, "larger than body_max_bytes")
        } else {
            redactor.body(&self.response, max)
        };
        CapturedExchange {
            at_unix_ms: self.at_unix_ms,
            request_id: self.request_id,
            method: self.method,
            path: self.path,
            status: self.status,
            outcome: outcome_name(outcome).to_string(),
            latency_ms: latency.as_secs_f64() * 1000.0,
            shadow: self.shadow,
            request,
            response,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn settings(samples: usize, body_max_bytes: usize) -> Arc<Capture> {
        Arc::new(Capture::new(&CaptureSpec {
            sample_percent: 100.0,
            samples,
            body_max_bytes,
            redact: vec!["ssn".into()],
            hash: vec![],
        }))
    }

    fn parts(headers: &[(&str, &str)]) -> Parts {
        let mut request = http::Request::post("/v2/models/m/infer?token=abc");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.body(()).unwrap().into_parts().0
    }

    fn exchange(n: u64) -> CapturedExchange {
        CapturedExchange {
            at_unix_ms: n,
            request_id: None,
            method: "POST".into(),
            path: "/".into(),
            status: Some(200),
            outcome: "success".into(),
            latency_ms: 1.0,
            shadow: false,
            request: CapturedBody::Text(String::new()),
            response: CapturedBody::Text(String::new()),
        }
    }

    #[test]
    fn the_ring_is_bounded_and_keeps_the_newest() {
        let ring = Ring::default();
        for n in 0..10 {
            ring.push(exchange(n), 4);
        }
        let kept: Vec<u64> = ring.snapshot().iter().map(|e| e.at_unix_ms).collect();
        assert_eq!(kept, vec![6, 7, 8, 9]);
        // A smaller ring after a swap shrinks on the next push.
        ring.push(exchange(10), 2);
        assert_eq!(ring.len(), 2);
        assert_eq!(ring.snapshot()[1].at_unix_ms, 10);
    }

    #[test]
    fn sampling_follows_the_share() {
        let never = Capture::new(&CaptureSpec {
            sample_percent: 0.0,
            ..CaptureSpec::default()
        });
        let always = Capture::new(&CaptureSpec {
            sample_percent: 100.0,
            ..CaptureSpec::default()
        });
        let half = Capture::new(&CaptureSpec {
            sample_percent: 50.0,
            ..CaptureSpec::default()
        });
        assert!((0..1000).all(|_| !never.sample() && always.sample()));
        let hits = (0..10_000).filter(|_| half.sample()).count();
        assert!((4000..6000).contains(&hits), "{hits}");
    }

    #[test]
    fn a_complete_exchange_is_redacted() {
        let request = Bytes::from(json!({"ssn": "123-45-6789", "x": 1}).to_string());
        let mut pending = PendingCapture::new(
            settings(5, 1000),
            &parts(&[("x-request-id", "r-1")]),
            Some(request),
            false,
            false,
        );
        pending.status = Some(200);
        pending.tee(&Bytes::from_static(br#"{"outputs":[{"name":"ssn","#));
        pending.tee(&Bytes::from_static(br#""data":["123-45-6789"]}]}"#));
        pending.complete();
        let record = pending.into_exchange(Outcome::Success, Duration::from_millis(3));
        assert_eq!(record.request_id.as_deref(), Some("r-1"));
        assert_eq!(record.path, "/v2/models/m/infer", "no query string");
        assert_eq!(record.outcome, "success");
        assert_eq!(record.latency_ms, 3.0);
        let text = serde_json::to_string(&record).unwrap();
        assert!(!text.contains("123-45-6789"), "{text}");
        assert_eq!(
            record.request,
            CapturedBody::Json(json!({"ssn": "[redacted]", "x": 1}))
        );
        assert_eq!(
            record.response,
            CapturedBody::Json(json!({"outputs": [{"name": "ssn", "data": "[redacted]"}]}))
        );
        let back: CapturedExchange = serde_json::from_str(&text).unwrap();
        assert_eq!(back, record);
    }

    #[test]
    fn failures_and_large_or_cut_answers_are_omitted() {
        let start = |grpc| PendingCapture::new(settings(5, 8), &parts(&[]), None, grpc, false);

        let pending = start(false);
        let record = pending.into_exchange(Outcome::Timeout, Duration::ZERO);
        assert_eq!(record.status, None);
        assert_eq!(record.outcome, "timeout");
        assert_eq!(
            record.response,
            CapturedBody::omitted(0, "no answer: timeout")
        );
        assert!(matches!(record.request, CapturedBody::Omitted { .. }));

        let mut pending = start(false);
        pending.status = Some(200);
        pending.tee(&Bytes::from_static(b"12345"));
        pending.tee(&Bytes::from_static(b"67890"));
        pending.complete();
        let record = pending.into_exchange(Outcome::Success, Duration::ZERO);
        assert_eq!(
            record.response,
            CapturedBody::omitted(10, "larger than body_max_bytes")
        );

        let mut pending = start(false);
        pending.status = Some(200);
        pending.tee(&Bytes::from_static(b"{\"a\""));
        let record = pending.into_exchange(Outcome::Cancelled, Duration::ZERO);
        assert_eq!(
            record.response,
            CapturedBody::omitted(4, "incomplete: cancelled")
        );

        let mut pending = start(true);
        pending.status = Some(200);
        pending.tee(&Bytes::from_static(b"\0\0\0\0\x01x"));
        pending.complete();
        let record = pending.into_exchange(Outcome::Success, Duration::ZERO);
        assert_eq!(record.response, CapturedBody::omitted(6, "gRPC (binary)"));
    }
}
