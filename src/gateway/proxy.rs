//! The request path: route, forward, record.
//!
//! 1. Find the model: OIP REST (`/v2/models/{model}/...`), plain JSON
//!    passthrough (`/models/{model}/...`), or OIP gRPC (model name in the
//!    first message). Health and server-metadata calls are answered here.
//! 2. Load the routing table once, choose a version (pin, cohort, weight,
//!    health) and an endpoint.
//! 3. Maybe copy the request to the shadow version (never waited for).
//! 4. Forward with the route's timeout; stream the answer back, tagged with
//!    `x-backstop-version`, and record the outcome when it ends.

use super::body::{BoxError, GatewayBody, Recorder, RecordingBody, UpstreamBody, UpstreamResponse};
use super::capture::PendingCapture;
use super::error::GatewayError;
use super::grpc::{self, Scan};
use super::h1::SendError;
use super::request_id::{RequestId, REQUEST_ID_HEADER};
use super::routing::{FaultAction, ModelTable};
use super::signals::{self, OutputRead, Pair, PairSide, Side};
use super::upstream::Endpoint;
use super::Gateway;
use crate::config::Protocol;
use backstop_core::analysis::Outcome;
use backstop_core::policy::{FallbackReason, Output};
use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Request, Response, StatusCode, Version};
use http_body::Body as _;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

pub const VERSION_HEADER: &str = "x-backstop-version";
/// On an answer the baseline gave in the candidate's place: why.
pub const FALLBACK_HEADER: &str = "x-backstop-fallback";

/// The client end of a connection, worked out once per connection rather
/// than once per request.
#[derive(Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    /// The client's IP as an `x-forwarded-for` value.
    forwarded_for: HeaderValue,
}

impl Peer {
    pub fn new(addr: SocketAddr) -> Self {
        let ip = addr.ip().to_canonical().to_string();
        Self {
            addr,
            forwarded_for: HeaderValue::from_str(&ip)
                .expect("an IP address is a valid header value"),
        }
    }
}

/// Handles one client request. Never fails: errors become answers.
pub async fn handle(
    gateway: Arc<Gateway>,
    request: Request<Incoming>,
    remote: Peer,
) -> Response<GatewayBody> {
    let grpc = grpc::is_grpc(request.headers());
    let request_id = RequestId::new();
    let mut response = match proxy(&gateway, request, remote, grpc, request_id).await {
        Ok(response) => response,
        Err(error) => {
            if error.source == super::error::Source::Internal {
                let version = error.version.as_ref().and_then(|v| v.to_str().ok());
                tracing::error!(code = error.code, error = %error.message, version, request_id = %request_id, "Gateway failure.");
            }
            error.into_response(grpc)
        }
    };
    // Every answer, errors included, so a client can quote it.
    response
        .headers_mut()
        .insert(REQUEST_ID_HEADER, request_id.header_value());
    response
}

/// Where a request is headed.
enum Target<'a> {
    /// OIP REST: forward the path unchanged.
    Oip(&'a str),
    /// Plain passthrough: forward the path after `/models/{model}`.
    Passthrough(&'a str, usize),
    Grpc,
    Local(Local),
}

enum Local {
    Live,
    Ready,
    ServerMetadata,
}

fn classify(path: &str, grpc: bool) -> Option<Target<'_>> {
    if grpc {
        return path
            .starts_with(grpc::SERVICE_PREFIX)
            .then_some(Target::Grpc);
    }
    match path {
        "/v2/health/live" => return Some(Target::Local(Local::Live)),
        "/v2/health/ready" => return Some(Target::Local(Local::Ready)),
        "/v2" | "/v2/" => return Some(Target::Local(Local::ServerMetadata)),
        _ => {}
    }
    if let Some(rest) = path.strip_prefix("/v2/models/") {
        let model = rest.split('/').next().filter(|m| !m.is_empty())?;
        return Some(Target::Oip(model));
    }
    if let Some(rest) = path.strip_prefix("/models/") {
        let model = rest.split('/').next().filter(|m| !m.is_empty())?;
        let strip = "/models/".len() + model.len();
        return Some(Target::Passthrough(model, strip));
    }
    None
}

async fn proxy(
    gateway: &Arc<Gateway>,
    request: Request<Incoming>,
    remote: Peer,
    grpc: bool,
    request_id: RequestId,
) -> Result<Response<GatewayBody>, GatewayError> {
    let start = Instant::now();
    let limit = gateway.config.limits.request_body_max_bytes;
    let (mut parts, body) = request.into_parts();
    if has_dot_segments(parts.uri.path()) {
        // Upstreams that normalise paths would serve something else than
        // what was routed (and counted).
        return Err(GatewayError::bad_request(
            "the path has '.' or '..' segments",
        ));
    }
    let target = classify(parts.uri.path(), grpc)
        .ok_or_else(|| GatewayError::route_not_found(parts.uri.path()))?;
    if declared_length(&parts.headers).is_some_and(|len| len > limit) {
        return Err(GatewayError::body_too_large(limit));
    }
    let mut body = Limited::new(body, limit as usize);

    // Find the model, and the path to forward.
    let mut prefix = None;
    let (model, forward_path): (String, Option<String>) = match target {
        Target::Local(local) => return Ok(answer_locally(gateway, local)),
        Target::Oip(model) => (model.to_string(), None),
        Target::Passthrough(model, strip) => {
            let rest = &parts.uri.path()[strip..];
            let rest = if rest.is_empty() { "/" } else { rest };
            let forward = match parts.uri.query() {
                Some(query) => format!("{rest}?{query}"),
                None => rest.to_string(),
            };
            (model.to_string(), Some(forward))
        }
        Target::Grpc => {
            let method = parts.uri.path()[grpc::SERVICE_PREFIX.len()..].to_string();
            if let Some(message) = grpc::local_answer(&method) {
                return Ok(grpc_message_response(&message));
            }
            match parts
                .headers
                .get(grpc::MODEL_HEADER)
                .and_then(|v| v.to_str().ok())
            {
                Some(model) => (model.to_string(), None),
                None => {
                    let (model, read) = read_grpc_model(&mut body, limit).await?;
                    prefix = Some(read);
                    (model, None)
                }
            }
        }
    };

    let table = gateway
        .table(&model)
        .ok_or_else(|| GatewayError::model_not_found(&model))?;
    if grpc != (table.protocol == Protocol::Grpc) {
        return Err(GatewayError::protocol_mismatch(&model, grpc));
    }
    table.mark_used();
    let now_ms = gateway.now_ms();

    // Choose the version.
    let version_index = match parts.headers.get(&gateway.pin_header) {
        Some(pin) => {
            if !pin_allowed(gateway, remote.addr) {
                return Err(GatewayError::pin_not_allowed());
            }
            let pin = pin.to_str().unwrap_or_default();
            table
                .version_index(pin)
                .ok_or_else(|| GatewayError::unknown_version(&model, pin))?
        }
        None => {
            let choice = table.choose(&parts.headers, now_ms);
            if let Some(from) = choice.moved_from {
                table.versions[from]
                    .state
                    .rerouted_unhealthy
                    .fetch_add(1, Ordering::Relaxed);
            }
            choice.version
        }
    };
    let version = &table.versions[version_index];

    // From here on every answer, errors included, names the version.
    let forwarded: Result<Response<GatewayBody>, GatewayError> = async {
        strip_hop_by_hop(&mut parts.headers, grpc);
        parts.headers.remove(&gateway.pin_header);
        append_forwarded_for(&mut parts.headers, &remote);
        // Ours replaces any the client sent: the id must be unique.
        parts
            .headers
            .insert(REQUEST_ID_HEADER, request_id.header_value());
        // Tracing off and no access log: one branch, nothing allocated.
        let mut hop = gateway
            .telemetry
            .as_ref()
            .map(|t| t.start_hop(&mut parts.headers, &parts.method, parts.uri.path()));
        let path_and_query = match &forward_path {
            Some(path) => path.as_str(),
            None => parts.uri.path_and_query().map_or("/", |p| p.as_str()),
        }
        .to_string();

        // With capture off this is one branch; sampled requests only pay
        // for the rest.
        let capture = match &table.capture {
            Some(capture) if capture.sample() => Some(capture.clone()),
            _ => None,
        };
        let shadow = table.shadow_for(version_index);
        let shadow_max = shadow.map(|_| gateway.config.limits.shadow_body_max_bytes);
        // gRPC bodies are binary: never buffered for a sample.
        let capture_max = capture
            .as_ref()
            .filter(|_| !grpc)
            .map(|c| c.body_max_bytes as u64);
        // Model-aware signals (HTTP JSON only): one branch when off.
        let plan = match &table.signals {
            Some(_) if !grpc && is_inference(&parts) => {
                SignalPlan::new(&table, version_index, shadow)
            }
            _ => SignalPlan::default(),
        };
        if plan.reads_answers() {
            // The answer is read: ask for it uncompressed (a preference the
            // client expressed, not a requirement; gzip would read as
            // invalid output).
            parts.headers.remove(http::header::ACCEPT_ENCODING);
        }
        let signals_max = plan
            .needs_body()
            .then_some(gateway.config.limits.shadow_body_max_bytes);
        let mut captured_request = None;
        let mut request_bytes = None;
        let upstream_body = match shadow_max.max(capture_max).max(signals_max) {
            Some(max) => match buffer_small(gateway, &parts, prefix.take(), body, max).await? {
                Buffered::Whole(bytes) => {
                    if let (Some(shadow), Some(shadow_max)) = (shadow, shadow_max) {
                        if bytes.len() as u64 <= shadow_max {
                            spawn_shadow(
                                gateway,
                                &table,
                                Copy {
                                    to: shadow,
                                    pair: plan.pair.clone(),
                                    sampled: plan.sampled,
                                    mirror: false,
                                },
                                &parts,
                                &path_and_query,
                                bytes.clone(),
                                Origin {
                                    request_id,
                                    hop: hop.as_deref(),
                                },
                            );
                        } else {
                            note_shadow_dropped(&table, shadow);
                        }
                    }
                    if let Some(baseline) = plan.mirror_to {
                        spawn_shadow(
                            gateway,
                            &table,
                            Copy {
                                to: baseline,
                                pair: plan.pair.clone(),
                                sampled: false,
                                mirror: true,
                            },
                            &parts,
                            &path_and_query,
                            bytes.clone(),
                            // Not the user's traffic: no span of its own.
                            Origin {
                                request_id,
                                hop: None,
                            },
                        );
                    }
                    if capture_max.is_some() {
                        captured_request = Some(bytes.clone());
                    }
                    if signals_max.is_some() {
                        if plan.sampled {
                            if let Some(settings) = &table.signals {
                                signals::record_input(&version.state, settings, &bytes);
                            }
                        }
                        request_bytes = Some(bytes.clone());
                    }
                    UpstreamBody::full(bytes)
                }
                Buffered::Streaming(prefix, body) => {
                    if let Some(shadow) = shadow {
                        note_shadow_dropped(&table, shadow);
                    }
                    UpstreamBody::streaming(prefix, body)
                }
            },
            None => UpstreamBody::streaming(prefix, body),
        };
        let capture = capture
            .map(|settings| PendingCapture::new(settings, &parts, captured_request, grpc, false));

        let endpoint = version.pick_endpoint(now_ms).clone();
        // The request again, for the baseline, should the candidate fail.
        let fallback = match (plan.fallback_to, &request_bytes) {
            (Some(to), Some(bytes)) => Some((to, copy_head(&parts), bytes.clone())),
            _ => None,
        };
        let head = upstream_head(parts, &endpoint, &path_and_query, table.protocol)?;
        // If the client goes away before the answer's head, the guard
        // records a cancellation (which never counts against the version).
        let pending = PendingRecord(Some(Recorder {
            state: version.state.clone(),
            endpoint: endpoint.clone(),
            start,
            clock: gateway.clock_origin(),
            bytes: 0,
            outcome: Outcome::Success,
            grpc,
            capture,
            request_id,
            output: plan.output_read(),
            predicted: None,
            feedback: Some(gateway.feedback.clone()),
            hop: hop.take(),
        }));
        // A gameday fault (rehearsal versions only): one branch otherwise.
        if let Some(fault) = &version.fault {
            if let Some(delay) = fault.delay {
                tokio::time::sleep(delay).await;
            }
            match fault.next() {
                FaultAction::Forward => {}
                FaultAction::Error => {
                    let error = GatewayError::injected_fault(&model, &version.name);
                    let mut recorder = pending.take();
                    note_status(&mut recorder, &error, grpc);
                    recorder.finish_injected(Outcome::ServerError);
                    return Err(error);
                }
                FaultAction::Timeout => {
                    tokio::time::sleep(table.request_timeout).await;
                    let error = GatewayError::upstream_timeout(
                        &model,
                        &version.name,
                        table.request_timeout.as_millis() as u64,
                    );
                    let mut recorder = pending.take();
                    note_status(&mut recorder, &error, grpc);
                    recorder.finish_injected(Outcome::Timeout);
                    return Err(error);
                }
            }
        }
        let result = table
            .client
            .send(&endpoint, head, upstream_body, table.request_timeout)
            .await;
        let mut recorder = pending.take();
        // The candidate failed a request the baseline can answer instead.
        if let (Some((to, parts, bytes)), Some(settings)) = (&fallback, &table.signals) {
            let failed = match &result {
                Err(SendError::Timeout) => Some((FallbackReason::Timeout, Outcome::Timeout)),
                Err(SendError::Connect(_)) => {
                    Some((FallbackReason::ConnectError, Outcome::ConnectError))
                }
                Err(SendError::Upstream(_)) => {
                    Some((FallbackReason::ServerError, Outcome::ServerError))
                }
                Ok(response) if outcome_of_status(response.status()) == Outcome::ServerError => {
                    Some((FallbackReason::ServerError, Outcome::ServerError))
                }
                _ => None,
            };
            if let Some((reason, outcome)) = failed.filter(|(r, _)| settings.falls_back_on(*r)) {
                recorder.output = None;
                recorder.feedback = None;
                recorder.finish(outcome);
                signals::record_fallback(&version.state, reason);
                let copy = copy_head(parts);
                return fall_back(gateway, &table, *to, copy, &path_and_query, bytes.clone(), reason, request_id).await;
            }
        }
        let response = match result {
            Err(SendError::Timeout) => {
                let error = GatewayError::upstream_timeout(
                    &model,
                    &version.name,
                    table.request_timeout.as_millis() as u64,
                );
                return fail(recorder, Outcome::Timeout, error, grpc);
            }
            // The client's own body failing is its fault, not the version's.
            Err(SendError::BodyTooLarge) => {
                let error = GatewayError::body_too_large(limit);
                return fail(recorder, Outcome::ClientError, error, grpc);
            }
            Err(SendError::ClientBody(why)) => {
                let error = GatewayError::bad_request(format!("reading the request body: {why}"));
                return fail(recorder, Outcome::ClientError, error, grpc);
            }
            Err(SendError::Connect(why)) => {
                let url = recorder.endpoint.url.clone();
                tracing::debug!(model, version = %version.name, request_id = %request_id, endpoint = %url, error = %why, "Upstream connect failed.");
                let error = GatewayError::upstream_connect(&model, &version.name, &url);
                return fail(recorder, Outcome::ConnectError, error, grpc);
            }
            Err(SendError::Upstream(why)) => {
                tracing::debug!(model, version = %version.name, request_id = %request_id, error = %why, "Upstream request failed.");
                let error = GatewayError::upstream_error(&model, &version.name, &why);
                return fail(recorder, Outcome::ServerError, error, grpc);
            }
            Ok(response) => response,
        };

        let (mut head, body) = response.into_parts();
        if let Some(hop) = recorder.hop.as_mut() {
            hop.status = Some(head.status.as_u16());
        }
        if let Some(capture) = recorder.capture.as_mut() {
            capture.status = Some(head.status.as_u16());
        }
        let outcome = if grpc {
            // Trailers-only answers carry the status in the headers;
            // otherwise it comes in the trailers.
            grpc::status_of(&head.headers)
                .map_or_else(|| grpc::outcome_without_status(head.status), grpc::outcome_of_code)
        } else {
            outcome_of_status(head.status)
        };
        strip_hop_by_hop(&mut head.headers, grpc);
        head.headers
            .insert(VERSION_HEADER, version.header_value.clone());
        // A fallback that judges the answer's content reads it first.
        if let (Some((to, parts, bytes)), Some(settings)) = (&fallback, &table.signals) {
            if outcome == Outcome::Success && settings.judges_answers() {
                let output = settings.output.as_ref().expect("judges_answers needs an output");
                // Taken, so the answer is read once, here, and its pair
                // (a mirror copy's comparison) still hears of it.
                let output_read = recorder.output.take();
                // A client that goes away while the answer is read is
                // recorded as a cancellation, as before the answer's head.
                let pending = PendingRecord(Some(recorder));
                let read = tokio::time::timeout(
                    table.request_timeout.saturating_sub(start.elapsed()),
                    read_answer(body, signals::OUTPUT_READ_MAX),
                )
                .await;
                let mut recorder = pending.take();
                let answer = match read {
                    Ok(Ok(ReadAnswer::Whole(answer))) => answer,
                    // Too large to judge: passed on as it is, unjudged
                    // (a long answer is not a failed one).
                    Ok(Ok(ReadAnswer::TooLarge(rest))) => {
                        if let Some(read) = output_read {
                            read.finish(&version.state, false);
                        }
                        let body = RecordingBody::new(rest, Recorder { outcome, ..recorder });
                        return Ok(Response::from_parts(head, GatewayBody::Upstream(body)));
                    }
                    // The answer broke off: the candidate failed it.
                    _ => {
                        if let Some(read) = output_read {
                            read.finish(&version.state, false);
                        }
                        recorder.feedback = None;
                        recorder.finish(Outcome::ServerError);
                        if settings.falls_back_on(FallbackReason::ServerError) {
                            signals::record_fallback(&version.state, FallbackReason::ServerError);
                            let copy = copy_head(parts);
                            return fall_back(gateway, &table, *to, copy, &path_and_query, bytes.clone(), FallbackReason::ServerError, request_id).await;
                        }
                        return Err(GatewayError::upstream_error(&model, &version.name, "the answer broke off"));
                    }
                };
                let prediction = match output_read {
                    Some(mut read) => {
                        read.tee(&answer);
                        read.finish(&version.state, true)
                    }
                    // Not sampled: judged all the same, and counted.
                    None => {
                        let prediction = signals::read_prediction(output, &answer);
                        signals::record_output(&version.state, prediction.as_ref());
                        prediction
                    }
                };
                recorder.predicted = prediction.as_ref().and_then(|p| p.class.as_deref()).map(Arc::from);
                if let Some(reason) = settings.fallback_for(&prediction) {
                    // The candidate did answer: its figures keep the
                    // success; the fallback is counted on its own.
                    recorder.feedback = None;
                    recorder.bytes = answer.len() as u64;
                    recorder.finish(Outcome::Success);
                    signals::record_fallback(&version.state, reason);
                    let copy = copy_head(parts);
                    return fall_back(gateway, &table, *to, copy, &path_and_query, bytes.clone(), reason, request_id).await;
                }
                recorder.bytes = answer.len() as u64;
                if let Some(capture) = recorder.capture.as_mut() {
                    capture.tee(&answer);
                    capture.complete();
                }
                recorder.finish(outcome);
                return Ok(Response::from_parts(head, GatewayBody::local(answer)));
            }
        }
        let body = RecordingBody::new(body, Recorder { outcome, ..recorder });
        Ok(Response::from_parts(head, GatewayBody::Upstream(body)))
    }
    .await;
    forwarded.map_err(|error| error.with_version(&version.header_value))
}

/// Finishes the recorder of a request that failed with `error`.
fn fail(
    mut recorder: Recorder,
    outcome: Outcome,
    error: GatewayError,
    grpc: bool,
) -> Result<Response<GatewayBody>, GatewayError> {
    note_status(&mut recorder, &error, grpc);
    recorder.finish(outcome);
    Err(error)
}

/// The request's span carries the status its client gets.
fn note_status(recorder: &mut Recorder, error: &GatewayError, grpc: bool) {
    if let Some(hop) = recorder.hop.as_mut() {
        // gRPC errors are trailers-only answers: HTTP 200.
        hop.status = Some(if grpc { 200 } else { error.status.as_u16() });
    }
}

/// Finishes its recorder as a cancellation when dropped unfinished.
struct PendingRecord(Option<Recorder>);

impl PendingRecord {
    fn take(mut self) -> Recorder {
        self.0.take().expect("a pending record is taken once")
    }
}

impl Drop for PendingRecord {
    fn drop(&mut self) {
        if let Some(recorder) = self.0.take() {
            recorder.finish(Outcome::Cancelled);
        }
    }
}

pub fn outcome_of_status(status: StatusCode) -> Outcome {
    if status.is_server_error() {
        Outcome::ServerError
    } else if status.is_client_error() {
        Outcome::ClientError
    } else {
        Outcome::Success
    }
}

/// Whether a path has a `.` or `..` segment, literally or percent-encoded
/// (`%2e`, either case). Allocation-free: it runs on every request.
fn has_dot_segments(path: &str) -> bool {
    path.split('/')
        .any(|segment| is_dot_segment(segment.as_bytes()))
}

fn is_dot_segment(segment: &[u8]) -> bool {
    let (mut dots, mut at) = (0, 0);
    while at < segment.len() {
        match segment[at..] {
            [b'.', ..] => at += 1,
            [b'%', b'2', e, ..] if e.eq_ignore_ascii_case(&b'e') => at += 3,
            _ => return false,
        }
        dots += 1;
        if dots > 2 {
            return false;
        }
    }
    dots > 0
}

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

fn pin_allowed(gateway: &Gateway, remote: SocketAddr) -> bool {
    let ip = remote.ip().to_canonical();
    gateway
        .config
        .pin
        .allow_from
        .iter()
        .any(|net| net.contains(&ip))
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) are for one connection only.
fn strip_hop_by_hop(headers: &mut HeaderMap, grpc: bool) {
    // Names listed in `Connection` are hop-by-hop too.
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        header::PROXY_AUTHORIZATION,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::HOST,
    ] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
    // gRPC needs `te: trailers` end to end; nothing else uses TE.
    if !grpc {
        headers.remove(header::TE);
    }
}

fn append_forwarded_for(headers: &mut HeaderMap, remote: &Peer) {
    const NAME: HeaderName = HeaderName::from_static("x-forwarded-for");
    match headers.get(&NAME).and_then(|v| v.to_str().ok()) {
        Some(existing) => {
            let ip = remote.forwarded_for.to_str().unwrap_or_default();
            if let Ok(value) = HeaderValue::from_str(&format!("{existing}, {ip}")) {
                headers.insert(NAME, value);
            }
        }
        None => {
            headers.insert(NAME, remote.forwarded_for.clone());
        }
    }
}

/// The request head to send upstream, reusing the client's (no header copy
/// on the hot path).
fn upstream_head(
    mut parts: Parts,
    endpoint: &Endpoint,
    path_and_query: &str,
    protocol: Protocol,
) -> Result<Parts, GatewayError> {
    parts.uri = endpoint
        .target(path_and_query)
        .map_err(|e| GatewayError::bad_request(format!("cannot forward this path: {e}")))?;
    parts.version = match protocol {
        Protocol::Http => Version::HTTP_11,
        Protocol::Grpc => Version::HTTP_2,
    };
    Ok(parts)
}

/// A copy of the client's request head, for the shadow version.
fn copy_head(parts: &Parts) -> Parts {
    let mut copy = Request::new(());
    *copy.method_mut() = parts.method.clone();
    *copy.headers_mut() = parts.headers.clone();
    copy.into_parts().0
}

/// Reads just enough of a gRPC body to find the model name.
async fn read_grpc_model(
    body: &mut Limited<Incoming>,
    limit: u64,
) -> Result<(String, Bytes), GatewayError> {
    let mut read = BytesMut::new();
    loop {
        match grpc::scan_model_name(&read) {
            Scan::Found(model) => return Ok((model, read.freeze())),
            Scan::Absent => {
                return Err(GatewayError::bad_request(
                    "the first gRPC message names no model (field 1)",
                ))
            }
            Scan::Invalid(why) => return Err(GatewayError::bad_request(why)),
            Scan::NeedMore => {}
        }
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    read.extend_from_slice(data);
                }
            }
            Some(Err(error)) => {
                return Err(if error.is::<http_body_util::LengthLimitError>() {
                    GatewayError::body_too_large(limit)
                } else {
                    GatewayError::bad_request(format!("reading the request: {error}"))
                })
            }
            None => {
                return Err(GatewayError::bad_request(
                    "the request ended before the model name",
                ))
            }
        }
    }
}

fn note_shadow_dropped(table: &ModelTable, shadow: usize) {
    table.versions[shadow]
        .state
        .shadow_dropped
        .fetch_add(1, Ordering::Relaxed);
}

enum Buffered {
    Whole(Bytes),
    /// Not known to be at most `max`: left streaming.
    Streaming(Option<Bytes>, Limited<Incoming>),
}

/// Buffers the body when it is known to be at most `max` bytes (declared
/// length, or already at its end): for a shadow copy or a sample.
async fn buffer_small(
    gateway: &Gateway,
    parts: &Parts,
    prefix: Option<Bytes>,
    body: Limited<Incoming>,
    max: u64,
) -> Result<Buffered, GatewayError> {
    let known_small =
        body.is_end_stream() || declared_length(&parts.headers).is_some_and(|len| len <= max);
    if !known_small {
        return Ok(Buffered::Streaming(prefix, body));
    }
    let rest = body.collect().await.map_err(|error| {
        if error.is::<http_body_util::LengthLimitError>() {
            GatewayError::body_too_large(gateway.config.limits.request_body_max_bytes)
        } else {
            GatewayError::bad_request(format!("reading the request: {error}"))
        }
    })?;
    let bytes = match prefix {
        Some(prefix) => {
            let mut all = BytesMut::from(prefix.as_ref());
            all.extend_from_slice(&rest.to_bytes());
            all.freeze()
        }
        None => rest.to_bytes(),
    };
    Ok(Buffered::Whole(bytes))
}

/// A prediction call, what the signals are about: a POST to an OIP
/// model's `infer` (or `generate`), or any POST through the plain JSON
/// passthrough. Metadata and readiness calls are not predictions: they
/// are never checked, read, mirrored or answered by the fallback.
fn is_inference(parts: &Parts) -> bool {
    let path = parts.uri.path();
    parts.method == http::Method::POST
        && (!path.starts_with("/v2/") || path.ends_with("/infer") || path.ends_with("/generate"))
}

/// An answer read for judging.
enum ReadAnswer {
    Whole(Bytes),
    /// Over the limit: what was read, then the rest, to pass on.
    TooLarge(UpstreamResponse),
}

/// Reads an answer up to `max` bytes.
async fn read_answer(mut body: UpstreamResponse, max: usize) -> Result<ReadAnswer, BoxError> {
    let mut read = BytesMut::new();
    while let Some(frame) = body.frame().await {
        // Trailers of a JSON answer are dropped, as by `collect`.
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        read.extend_from_slice(&data);
        if read.len() > max {
            return Ok(ReadAnswer::TooLarge(UpstreamResponse::prefixed(
                read.freeze(),
                body,
            )));
        }
    }
    Ok(ReadAnswer::Whole(read.freeze()))
}

/// The request a shadow copy is made from: its id and its span, if any.
struct Origin<'a> {
    request_id: RequestId,
    hop: Option<&'a crate::telemetry::Hop>,
}

/// Sends a copy to the shadow version in the background. Its answer is
/// recorded and thrown away; when too many copies are in flight the copy
/// is dropped and counted, so shadows never slow the client down.
fn spawn_shadow(
    gateway: &Arc<Gateway>,
    table: &Arc<ModelTable>,
    copy: Copy,
    parts: &Parts,
    path_and_query: &str,
    body: Bytes,
    origin: Origin<'_>,
) {
    let Copy {
        to: shadow,
        pair,
        sampled,
        mirror,
    } = copy;
    let Origin { request_id, hop } = origin;
    let version = &table.versions[shadow];
    let Ok(permit) = gateway.shadow_permits.clone().try_acquire_owned() else {
        if !mirror {
            version.state.shadow_dropped.fetch_add(1, Ordering::Relaxed);
        }
        return;
    };
    if !mirror {
        version.state.shadow_sent.fetch_add(1, Ordering::Relaxed);
    }
    // The shadow is the candidate of a shadow rollout: its inputs are
    // checked against its own signature.
    if sampled {
        if let Some(settings) = &table.signals {
            signals::record_input(&version.state, settings, &body);
        }
    }
    let output = match (&table.signals, &pair) {
        (Some(settings), _) if sampled || pair.is_some() => settings.output.clone().map(|o| {
            let side = if mirror {
                Side::Baseline
            } else {
                Side::Candidate
            };
            OutputRead::new(o, pair.map(|p| (p, side)), !mirror)
        }),
        _ => None,
    };
    let clock = gateway.clock_origin();
    let endpoint = version.pick_endpoint(gateway.now_ms()).clone();
    let Ok(mut head) = upstream_head(copy_head(parts), &endpoint, path_and_query, table.protocol)
    else {
        return;
    };
    // The copy's own span, a child of the request's.
    let hop = match (&gateway.telemetry, hop) {
        (Some(telemetry), Some(parent)) => telemetry.start_shadow_hop(parent, &mut head.headers),
        _ => None,
    };
    let grpc = grpc::is_grpc(&parts.headers);
    // The shadow is the candidate in shadow rollouts: its samples are
    // evidence too, drawn on their own.
    let capture = match &table.capture {
        Some(capture) if !mirror && capture.sample() => Some(PendingCapture::new(
            capture.clone(),
            parts,
            Some(body.clone()),
            grpc,
            true,
        )),
        _ => None,
    };
    let table = table.clone();
    tokio::spawn(async move {
        let _permit = permit;
        let version = &table.versions[shadow];
        let recorder = Recorder {
            state: version.state.clone(),
            endpoint,
            start: Instant::now(),
            clock,
            bytes: 0,
            outcome: Outcome::Success,
            grpc,
            capture,
            request_id,
            output,
            predicted: None,
            // A shadow copy never answered the user: nothing to join.
            feedback: None,
            hop,
        };
        let send = table.client.send(
            &recorder.endpoint,
            head,
            UpstreamBody::full(body),
            table.request_timeout,
        );
        let outcome_and_response = match send.await {
            Err(SendError::Timeout) => Err(Outcome::Timeout),
            Err(SendError::Connect(_)) => Err(Outcome::ConnectError),
            Err(_) => Err(Outcome::ServerError),
            Ok(response) => Ok(response),
        };
        let mut recorder = recorder;
        let response = match outcome_and_response {
            Err(_) if mirror => {
                if let Some(output) = recorder.output.take() {
                    output.finish(&recorder.state, false);
                }
                return;
            }
            Err(outcome) => return recorder.finish(outcome),
            Ok(response) => response,
        };
        if let Some(capture) = recorder.capture.as_mut() {
            capture.status = Some(response.status().as_u16());
        }
        if let Some(hop) = recorder.hop.as_mut() {
            hop.status = Some(response.status().as_u16());
        }
        let outcome = if grpc {
            grpc::status_of(response.headers()).map_or_else(
                || grpc::outcome_without_status(response.status()),
                grpc::outcome_of_code,
            )
        } else {
            outcome_of_status(response.status())
        };
        if mirror {
            // A mirror copy only feeds the comparison: the baseline's
            // figures are its users' requests alone.
            let mut output = recorder.output.take();
            let mut body = response.into_body();
            let read = tokio::time::timeout(table.request_timeout, async {
                while let Some(Ok(frame)) = body.frame().await {
                    if let (Some(data), Some(output)) = (frame.data_ref(), output.as_mut()) {
                        output.tee(data);
                    }
                }
            })
            .await;
            if let Some(output) = output {
                output.finish(&recorder.state, read.is_ok() && outcome == Outcome::Success);
            }
            return;
        }
        // Read the answer to the end (bounded by the request timeout) so
        // latency and size are complete, and its prediction read.
        let mut body = RecordingBody::new(
            response.into_body(),
            Recorder {
                outcome,
                ..recorder
            },
        );
        let _ = tokio::time::timeout(table.request_timeout, async {
            while let Some(Ok(_)) = body.frame().await {}
        })
        .await;
    });
}

/// Answers a request the candidate failed (or answered without the
/// confidence the policy asks for) from the baseline: the same request,
/// once, with the route's full timeout. The answer says so in
/// `x-backstop-fallback`; the client gets exactly one answer, this one.
#[allow(clippy::too_many_arguments)]
async fn fall_back(
    gateway: &Arc<Gateway>,
    table: &Arc<ModelTable>,
    to: usize,
    parts: Parts,
    path_and_query: &str,
    body: Bytes,
    reason: FallbackReason,
    request_id: RequestId,
) -> Result<Response<GatewayBody>, GatewayError> {
    let version = &table.versions[to];
    let failed = |error: GatewayError| Err(error.with_version(&version.header_value));
    let endpoint = version.pick_endpoint(gateway.now_ms()).clone();
    let head = match upstream_head(parts, &endpoint, path_and_query, table.protocol) {
        Ok(head) => head,
        Err(error) => return failed(error),
    };
    let mut recorder = Recorder {
        state: version.state.clone(),
        endpoint: endpoint.clone(),
        start: Instant::now(),
        clock: gateway.clock_origin(),
        bytes: 0,
        outcome: Outcome::Success,
        grpc: false,
        capture: None,
        request_id,
        output: None,
        predicted: None,
        // The baseline's answer is the one the client gets.
        feedback: Some(gateway.feedback.clone()),
        // The user's span ended with the candidate's failure.
        hop: None,
    };
    let model = &table.model;
    let response = match table
        .client
        .send(
            &endpoint,
            head,
            UpstreamBody::full(body),
            table.request_timeout,
        )
        .await
    {
        Ok(response) => response,
        Err(SendError::Timeout) => {
            recorder.finish(Outcome::Timeout);
            let ms = table.request_timeout.as_millis() as u64;
            return failed(GatewayError::upstream_timeout(model, &version.name, ms));
        }
        Err(SendError::Connect(_)) => {
            recorder.finish(Outcome::ConnectError);
            return failed(GatewayError::upstream_connect(
                model,
                &version.name,
                &endpoint.url,
            ));
        }
        Err(other) => {
            recorder.finish(Outcome::ServerError);
            let why = match other {
                SendError::Upstream(why) => why,
                _ => "the request could not be sent again".into(),
            };
            return failed(GatewayError::upstream_error(model, &version.name, &why));
        }
    };
    let (mut head, body) = response.into_parts();
    let outcome = outcome_of_status(head.status);
    strip_hop_by_hop(&mut head.headers, false);
    head.headers
        .insert(VERSION_HEADER, version.header_value.clone());
    head.headers
        .insert(FALLBACK_HEADER, HeaderValue::from_static(reason.name()));
    recorder.outcome = outcome;
    let body = RecordingBody::new(body, recorder);
    Ok(Response::from_parts(head, GatewayBody::Upstream(body)))
}

/// A copy of a request sent beside the user's: to the shadow version, or
/// (a canary's mirror sample) to the baseline for the agreement figure.
struct Copy {
    to: usize,
    /// The comparison of the two answers, when the prediction is read.
    pair: Option<Arc<Pair>>,
    /// Check its input and read its answer for the version's signals.
    sampled: bool,
    /// A mirror: not the version's traffic, so not in its figures.
    mirror: bool,
}

/// What the signals need of one request: decided once, up front.
#[derive(Default)]
struct SignalPlan {
    /// Check the input and read the answer.
    sampled: bool,
    /// The answer's prediction, and the pair it joins.
    output: Option<(Output, Option<PairSide>)>,
    /// A shadow or mirror copy's answer is compared with the user's.
    pair: Option<Arc<Pair>>,
    /// Also send the request to this version (the baseline), to compare.
    mirror_to: Option<usize>,
    /// Send the request to this version (the baseline) if the candidate
    /// fails it.
    fallback_to: Option<usize>,
}

impl SignalPlan {
    fn new(table: &ModelTable, version: usize, shadow: Option<usize>) -> SignalPlan {
        let Some(settings) = &table.signals else {
            return SignalPlan::default();
        };
        let sampled = settings.sample();
        let to_candidate = settings.candidate == Some(version);
        let output = settings.output.clone();
        let mirror_to = settings
            .baseline
            .filter(|_| to_candidate && shadow.is_none() && output.is_some())
            .filter(|_| settings.mirror());
        let fallback_to = settings
            .baseline
            .filter(|_| to_candidate && settings.fallback.is_some());
        let shadow_compared =
            sampled && output.is_some() && shadow.is_some() && shadow == settings.candidate;
        let pair = match settings.candidate {
            Some(candidate) if shadow_compared || mirror_to.is_some() => {
                Some(Pair::new(table.versions[candidate].state.clone()))
            }
            _ => None,
        };
        let side = if to_candidate {
            Side::Candidate
        } else {
            Side::Baseline
        };
        let output = output
            .filter(|_| sampled || pair.is_some())
            .map(|o| (o, pair.clone().map(|p| (p, side))));
        SignalPlan {
            sampled,
            output,
            pair,
            mirror_to,
            fallback_to,
        }
    }

    /// An answer to this request (the user's, a copy's, or a candidate's
    /// the fallback judges) is read.
    fn reads_answers(&self) -> bool {
        self.output.is_some() || self.pair.is_some() || self.fallback_to.is_some()
    }

    /// The request body is needed: checked, copied, or kept for a fallback.
    fn needs_body(&self) -> bool {
        self.sampled || self.pair.is_some() || self.fallback_to.is_some()
    }

    /// The user's answer, read for its prediction.
    fn output_read(&self) -> Option<Box<OutputRead>> {
        self.output
            .as_ref()
            .map(|(output, pair)| OutputRead::new(output.clone(), pair.clone(), true))
    }
}

fn answer_locally(gateway: &Gateway, local: Local) -> Response<GatewayBody> {
    let (status, body) = match local {
        Local::Live => (StatusCode::OK, r#"{"live":true}"#.to_string()),
        Local::Ready => {
            if gateway.is_ready() {
                (StatusCode::OK, r#"{"ready":true}"#.to_string())
            } else {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    r#"{"ready":false}"#.to_string(),
                )
            }
        }
        Local::ServerMetadata => (
            StatusCode::OK,
            serde_json::json!({
                "name": "backstop",
                "version": env!("CARGO_PKG_VERSION"),
                "extensions": [],
            })
            .to_string(),
        ),
    };
    let mut response = Response::new(GatewayBody::local(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// A unary gRPC answer the gateway writes itself: one message, then OK.
fn grpc_message_response(message: &[u8]) -> Response<GatewayBody> {
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from(grpc::code::OK));
    let body = GatewayBody::with_trailers(Bytes::from(grpc::frame(message)), trailers);
    let mut response = Response::new(body);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_segments_are_found_in_every_spelling() {
        for path in [
            "/a/./b",
            "/a/../b",
            "/a/%2e%2E/b",
            "/a/.%2e",
            "/..",
            "/models/m/%2E",
        ] {
            assert!(has_dot_segments(path), "{path}");
        }
        for path in [
            "/a/b",
            "/a/.../b",
            "/a/.b",
            "/a/b.",
            "/v2/models/m/infer",
            "/",
            "",
            "/%2f",
            "/a/%2",
        ] {
            assert!(!has_dot_segments(path), "{path}");
        }
    }
}
