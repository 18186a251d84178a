//! Errors the gateway answers with, and who caused them.
//!
//! Every error has a stable code and says which side failed (as Pingora's
//! `ErrorSource` does), so the analysis never counts a bad client against a
//! version. HTTP clients get `{"error":{"code","message"}}`; gRPC clients get
//! a trailers-only answer with the matching `grpc-status`.

use super::body::GatewayBody;
use super::grpc;
use http::{header, HeaderValue, Response, StatusCode};

/// Which side of the gateway failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The client sent something unusable.
    Downstream,
    /// The model server failed or could not be reached.
    Upstream,
    /// Backstop itself.
    Internal,
}

#[derive(Debug)]
pub struct GatewayError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub source: Source,
    /// The version the request was routed to, once one was chosen.
    pub version: Option<HeaderValue>,
}

impl GatewayError {
    fn new(status: StatusCode, code: &'static str, source: Source, message: String) -> Self {
        Self {
            status,
            code,
            message,
            source,
            version: None,
        }
    }

    /// Names the version that was chosen (answers carry `x-backstop-version`).
    /// Names the version, unless one is named already (a fallback's
    /// error names the baseline that failed it, not the candidate).
    pub fn with_version(mut self, version: &HeaderValue) -> Self {
        if self.version.is_none() {
            self.version = Some(version.clone());
        }
        self
    }

    pub fn protocol_mismatch(model: &str, grpc: bool) -> Self {
        let (sent, served) = if grpc {
            ("gRPC", "HTTP")
        } else {
            ("HTTP", "gRPC")
        };
        Self::new(
            StatusCode::BAD_REQUEST,
            "protocol_mismatch",
            Source::Downstream,
            format!("model {model:?} is served over {served}; this request is {sent}"),
        )
    }

    pub fn route_not_found(path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "route_not_found",
            Source::Downstream,
            format!("no route for {path:?}: use /v2/models/{{model}}/..., /models/{{model}}/... or gRPC inference.GRPCInferenceService"),
        )
    }

    pub fn model_not_found(model: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "model_not_found",
            Source::Downstream,
            format!("model {model:?} has no routing table"),
        )
    }

    pub fn unknown_version(model: &str, version: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "unknown_version",
            Source::Downstream,
            format!("model {model:?} has no version {version:?} to pin to"),
        )
    }

    pub fn pin_not_allowed() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "pin_not_allowed",
            Source::Downstream,
            "this client may not pin requests to a version (see pin.allow_from)".into(),
        )
    }

    pub fn body_too_large(limit: u64) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            Source::Downstream,
            format!("request body exceeds the limit of {limit} bytes"),
        )
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            Source::Downstream,
            message.into(),
        )
    }

    /// A gameday fault answered for the version: counted as its server
    /// error, as a real failure would be.
    pub fn injected_fault(model: &str, version: &str) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "injected_fault",
            Source::Upstream,
            format!("{model}/{version}: error injected by a gameday fault (rehearsal version)"),
        )
    }

    pub fn upstream_timeout(model: &str, version: &str, timeout_ms: u64) -> Self {
        Self::new(
            StatusCode::GATEWAY_TIMEOUT,
            "upstream_timeout",
            Source::Upstream,
            format!("model {model:?} version {version:?} did not answer within {timeout_ms} ms"),
        )
    }

    pub fn upstream_connect(model: &str, version: &str, endpoint: &str) -> Self {
        Self::new(
            StatusCode::BAD_GATEWAY,
            "upstream_connect_failed",
            Source::Upstream,
            format!("model {model:?} version {version:?}: cannot connect to {endpoint}"),
        )
    }

    pub fn upstream_error(model: &str, version: &str, why: &str) -> Self {
        Self::new(
            StatusCode::BAD_GATEWAY,
            "upstream_error",
            Source::Upstream,
            format!("model {model:?} version {version:?}: {why}"),
        )
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            Source::Internal,
            message.into(),
        )
    }

    fn grpc_code(&self) -> u32 {
        match self.code {
            "route_not_found" => grpc::code::UNIMPLEMENTED,
            "model_not_found" => grpc::code::NOT_FOUND,
            "pin_not_allowed" => grpc::code::PERMISSION_DENIED,
            "body_too_large" => grpc::code::RESOURCE_EXHAUSTED,
            "upstream_timeout" => grpc::code::DEADLINE_EXCEEDED,
            "upstream_connect_failed" | "upstream_error" | "injected_fault" => {
                grpc::code::UNAVAILABLE
            }
            "internal" => grpc::code::INTERNAL,
            _ => grpc::code::INVALID_ARGUMENT,
        }
    }

    /// The answer the client gets.
    pub fn into_response(self, grpc: bool) -> Response<GatewayBody> {
        let version = self.version.clone();
        let mut response = self.into_response_without_version(grpc);
        if let Some(version) = version {
            response
                .headers_mut()
                .insert(super::proxy::VERSION_HEADER, version);
        }
        response
    }

    fn into_response_without_version(self, grpc: bool) -> Response<GatewayBody> {
        if grpc {
            return grpc_trailers_only(self.grpc_code(), &self.message);
        }
        let body = serde_json::json!({
            "error": { "code": self.code, "message": self.message }
        });
        let mut response = Response::new(GatewayBody::local(body.to_string()));
        *response.status_mut() = self.status;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        response
    }
}

/// A gRPC answer with no messages: the status travels in the headers.
pub fn grpc_trailers_only(code: u32, message: &str) -> Response<GatewayBody> {
    let mut response = Response::new(GatewayBody::local(bytes::Bytes::new()));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert("grpc-status", HeaderValue::from(code));
    // grpc-message is percent-encoded; keep it to safe characters.
    let safe: String = message
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect::<String>()
        .replace('%', "%25");
    if let Ok(value) = HeaderValue::from_str(&safe) {
        headers.insert("grpc-message", value);
    }
    response
}

/// "outer: inner: innermost", the way people read error chains.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        let inner_text = inner.to_string();
        if !text.contains(&inner_text) {
            text.push_str(": ");
            text.push_str(&inner_text);
        }
        source = inner.source();
    }
    text
}
