//! Body types of the proxy.
//!
//! Bodies stream through; nothing is buffered unless a feature needs the
//! bytes (a shadow copy, a sampled exchange, or the model name inside a
//! gRPC message), and then only what it needs. [`RecordingBody`] records
//! the request's statistics (and finishes its sample, if any) when the
//! upstream's answer has been fully passed on, so latency covers the whole
//! answer and gRPC status can be read from the trailers.

use super::capture::PendingCapture;
use super::grpc;
use super::upstream::Endpoint;
use super::VersionState;
use backstop_core::analysis::Outcome;
use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Limited;
use hyper::body::Incoming;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What the gateway sends upstream: bytes already read (if any), then the
/// rest of the client's body, size-limited.
pub struct UpstreamBody {
    prefix: Option<Bytes>,
    rest: Option<Limited<Incoming>>,
    /// Where a failure of the client's body is noted, for clients (hyper's
    /// HTTP/2) that report it only as a broken stream.
    fault: Option<Arc<AtomicU8>>,
}

/// Values of an [`UpstreamBody`] fault cell.
pub const BODY_OK: u8 = 0;
pub const BODY_TOO_LARGE: u8 = 1;
pub const BODY_BROKEN: u8 = 2;

impl UpstreamBody {
    pub fn full(bytes: Bytes) -> Self {
        Self {
            prefix: (!bytes.is_empty()).then_some(bytes),
            rest: None,
            fault: None,
        }
    }

    pub fn streaming(prefix: Option<Bytes>, rest: Limited<Incoming>) -> Self {
        Self {
            prefix: prefix.filter(|p| !p.is_empty()),
            rest: Some(rest),
            fault: None,
        }
    }

    /// Attaches a cell that records whether the client's body failed.
    pub fn with_fault_cell(mut self) -> (Self, Arc<AtomicU8>) {
        let cell = Arc::new(AtomicU8::new(BODY_OK));
        self.fault = Some(cell.clone());
        (self, cell)
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(prefix) = self.prefix.take() {
            return Poll::Ready(Some(Ok(Frame::data(prefix))));
        }
        let this = self.get_mut();
        let Some(rest) = this.rest.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(rest).poll_frame(cx);
        if let (Poll::Ready(Some(Err(error))), Some(cell)) = (&polled, &this.fault) {
            let fault = if error.is::<http_body_util::LengthLimitError>() {
                BODY_TOO_LARGE
            } else {
                BODY_BROKEN
            };
            cell.store(fault, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_none() && self.rest.as_ref().is_none_or(|r| r.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let prefix = self.prefix.as_ref().map_or(0, |p| p.len() as u64);
        match &self.rest {
            None => SizeHint::with_exact(prefix),
            Some(rest) => {
                let hint = rest.size_hint();
                let mut out = SizeHint::new();
                out.set_lower(hint.lower() + prefix);
                if let Some(upper) = hint.upper() {
                    out.set_upper(upper + prefix);
                }
                out
            }
        }
    }
}

/// An upstream's answer body, from either client.
pub enum UpstreamResponse {
    Http1(super::h1::ResponseBody),
    Http2(Incoming),
    /// Bytes already read from the answer (to judge it), then the rest.
    Prefixed(Option<Bytes>, Box<UpstreamResponse>),
}

impl UpstreamResponse {
    pub fn prefixed(read: Bytes, rest: UpstreamResponse) -> Self {
        UpstreamResponse::Prefixed(Some(read), Box::new(rest))
    }
}

impl Body for UpstreamResponse {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            UpstreamResponse::Http1(body) => Pin::new(body).poll_frame(cx),
            UpstreamResponse::Http2(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
            UpstreamResponse::Prefixed(read, rest) => match read.take() {
                Some(read) => Poll::Ready(Some(Ok(Frame::data(read)))),
                None => Pin::new(rest.as_mut()).poll_frame(cx),
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamResponse::Http1(body) => body.is_end_stream(),
            UpstreamResponse::Http2(body) => body.is_end_stream(),
            UpstreamResponse::Prefixed(read, rest) => read.is_none() && rest.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamResponse::Http1(body) => body.size_hint(),
            UpstreamResponse::Http2(body) => body.size_hint(),
            UpstreamResponse::Prefixed(read, rest) => {
                let read = read.as_ref().map_or(0, |r| r.len() as u64);
                let hint = rest.size_hint();
                let mut out = SizeHint::new();
                out.set_lower(hint.lower() + read);
                if let Some(upper) = hint.upper() {
                    out.set_upper(upper + read);
                }
                out
            }
        }
    }
}

/// What the gateway answers the client with.
pub enum GatewayBody {
    /// An upstream's answer, recorded when it ends.
    Upstream(RecordingBody),
    /// An answer the gateway wrote itself (errors, health), with trailers
    /// for gRPC.
    Local {
        data: Option<Bytes>,
        trailers: Option<HeaderMap>,
    },
}

impl GatewayBody {
    pub fn local(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        GatewayBody::Local {
            data: (!bytes.is_empty()).then_some(bytes),
            trailers: None,
        }
    }

    pub fn with_trailers(bytes: Bytes, trailers: HeaderMap) -> Self {
        GatewayBody::Local {
            data: Some(bytes),
            trailers: Some(trailers),
        }
    }
}

impl Body for GatewayBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            GatewayBody::Upstream(body) => Pin::new(body).poll_frame(cx),
            GatewayBody::Local { data, trailers } => Poll::Ready(
                data.take()
                    .map(Frame::data)
                    .or_else(|| trailers.take().map(Frame::trailers))
                    .map(Ok),
            ),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            GatewayBody::Upstream(body) => body.inner.is_end_stream(),
            GatewayBody::Local { data, trailers } => data.is_none() && trailers.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            GatewayBody::Upstream(body) => body.inner.size_hint(),
            GatewayBody::Local { data, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}

/// Records one request's outcome into its version's statistics and its
/// endpoint's passive health, exactly once.
pub struct Recorder {
    pub state: Arc<VersionState>,
    pub endpoint: Arc<Endpoint>,
    pub start: Instant,
    /// The gateway clock's origin: ejections are timed from when the
    /// request ends, not when it started.
    pub clock: Instant,
    pub bytes: u64,
    /// Outcome so far: from the status line, or from gRPC trailers.
    pub outcome: Outcome,
    pub grpc: bool,
    /// A sampled exchange's bodies so far (`None`: not sampled).
    pub capture: Option<Box<PendingCapture>>,
    pub request_id: super::request_id::RequestId,
    /// The answer's bytes for its prediction (`None`: not read).
    pub output: Option<Box<super::signals::OutputRead>>,
    /// The class predicted, when the answer was read before it was passed
    /// on (a fallback that judges answers).
    pub predicted: Option<Arc<str>>,
    /// Where a successful answer is remembered for feedback joins; `None`
    /// for shadow copies, which never answered the user.
    pub feedback: Option<Arc<crate::feedback::Feedback>>,
    /// The request's span and access-log entry (`None`: both off).
    pub hop: Option<Box<crate::telemetry::Hop>>,
}

impl Recorder {
    pub fn finish(mut self, outcome: Outcome) {
        self.record(outcome);
        match outcome {
            Outcome::Success => self.endpoint.record_success(),
            Outcome::ServerError | Outcome::Timeout | Outcome::ConnectError => {
                let now_ms = self.clock.elapsed().as_millis() as u64;
                if let Some(backoff) = self.endpoint.record_failure(now_ms) {
                    tracing::warn!(
                        model = %self.state.model,
                        version = %self.state.version,
                        request_id = %self.request_id,
                        endpoint = %self.endpoint.url,
                        backoff_ms = backoff.as_millis() as u64,
                        "Endpoint ejected after consecutive failures."
                    );
                    self.state.note_ejection(&self.endpoint, backoff);
                }
            }
            Outcome::ClientError | Outcome::Cancelled => {}
        }
    }

    /// Records the version's statistics and sample only: a gameday fault's
    /// answer is the version's failure, not its endpoint's, and that
    /// endpoint is usually the last-known-good's too — passive ejection
    /// must never see it.
    pub fn finish_injected(mut self, outcome: Outcome) {
        self.record(outcome);
    }

    /// The version's statistics and its sample, if this request has one.
    fn record(&mut self, outcome: Outcome) {
        let elapsed = self.start.elapsed();
        let latency_us = elapsed.as_micros() as u64;
        self.state.stats.record(outcome, latency_us, self.bytes);
        if let Some(output) = self.output.take() {
            let prediction = output.finish(&self.state, outcome == Outcome::Success);
            self.predicted = prediction.and_then(|p| p.class).map(Arc::from);
        }
        // Only answers the client got whole: a failure predicts nothing
        // anyone acts on. The class predicted (when the answer was read)
        // is what labels are checked against.
        if let (Outcome::Success, Some(feedback)) = (outcome, &self.feedback) {
            feedback.record(
                &self.request_id,
                &self.state.feedback,
                self.predicted.take(),
                super::unix_ms(),
            );
        }
        if let Some(capture) = self.capture.take() {
            capture.finish(self.state.clone(), outcome, elapsed);
        }
        if let Some(hop) = self.hop.take() {
            hop.end(crate::telemetry::HopEnd {
                model: &self.state.model,
                version: &self.state.version,
                request_id: self.request_id,
                outcome,
                endpoint: &self.endpoint,
            });
        }
    }
}

/// An upstream response body that records statistics when it ends (or, if
/// the client goes away first, records a cancellation when dropped).
pub struct RecordingBody {
    inner: UpstreamResponse,
    recorder: Option<Recorder>,
}

impl RecordingBody {
    pub fn new(inner: UpstreamResponse, recorder: Recorder) -> Self {
        let mut body = Self {
            inner,
            recorder: Some(recorder),
        };
        // Empty bodies (HEAD, 204, gRPC trailers-only) never poll to the end.
        if body.inner.is_end_stream() {
            body.finish(None);
        }
        body
    }

    /// `None`: the answer ended normally.
    fn finish(&mut self, outcome: Option<Outcome>) {
        if let Some(mut recorder) = self.recorder.take() {
            if let (None, Some(capture)) = (outcome, recorder.capture.as_mut()) {
                capture.complete();
            }
            let outcome = outcome.unwrap_or(recorder.outcome);
            recorder.finish(outcome);
        }
    }
}

impl Body for RecordingBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.as_mut().get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(recorder) = this.recorder.as_mut() {
                    if let Some(data) = frame.data_ref() {
                        recorder.bytes += data.len() as u64;
                        // A copy for a sampled exchange; the frame itself
                        // goes on unchanged.
                        if let Some(capture) = recorder.capture.as_mut() {
                            capture.tee(data);
                        }
                        if let Some(output) = recorder.output.as_mut() {
                            output.tee(data);
                        }
                    } else if let Some(trailers) = frame.trailers_ref() {
                        if recorder.grpc {
                            recorder.outcome = grpc::outcome_of(trailers);
                        }
                    }
                }
                if this.inner.is_end_stream() {
                    this.finish(None);
                }
            }
            Poll::Ready(Some(Err(_))) => this.finish(Some(Outcome::ServerError)),
            Poll::Ready(None) => this.finish(None),
            Poll::Pending => {}
        }
        polled
    }
}

impl Drop for RecordingBody {
    fn drop(&mut self) {
        self.finish(Some(Outcome::Cancelled));
    }
}
