//! The one small HTTP client behind webhooks, hooks and the Prometheus
//! source: hyper 1 over rustls with the web PKI roots, so `http://` and
//! `https://` both work. Every call is cut by its timeout and reports
//! failures as values, never a panic.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// How much of an error response is read and quoted (Slack explains a
/// refusal in the body: `invalid_payload`, `no_service`).
const ERROR_BODY_QUOTE: usize = 200;
/// Most response bytes read; the rest is dropped with the connection.
const BODY_LIMIT: usize = 64 * 1024;

type Inner = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// A pooled client. Cheap to clone. Made per runtime user (a notifier, one
/// `run_hooks` call): a pool must not outlive the runtime that made it.
#[derive(Clone)]
pub(crate) struct HttpClient {
    /// The TLS set-up cannot really fail with the bundled provider, but
    /// when it does every call says so instead of the process panicking.
    inner: Result<Inner, String>,
}

/// Why a call got no response. `permanent` when the request itself is
/// malformed (address, method, header): every retry would fail the same.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Failure {
    pub message: String,
    pub permanent: bool,
}

impl Failure {
    fn permanent(message: String) -> Self {
        Self {
            message,
            permanent: true,
        }
    }

    fn transient(message: String) -> Self {
        Self {
            message,
            permanent: false,
        }
    }
}

/// A response that came back (any status).
#[derive(Debug)]
pub(crate) struct Reply {
    pub status: u16,
    /// The start of the body, for error messages.
    pub body_start: String,
}

/// A whole response, read up to a limit (any status).
#[derive(Debug)]
pub(crate) struct Fetched {
    pub status: u16,
    pub body: Bytes,
}

/// Why [`HttpClient::fetch`] got no whole response. Callers that report
/// to people (the Prometheus source) tell a timeout from a refusal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FetchError {
    /// The request itself is malformed (URL, method).
    Malformed(String),
    /// No connection, TLS failure, or the connection broke mid-answer.
    Unreachable(String),
    Timeout,
    /// The body was longer than the limit.
    TooLarge {
        limit: usize,
    },
}

impl HttpClient {
    pub fn new() -> Self {
        Self {
            inner: build().map_err(|e| format!("TLS client set-up failed: {e}")),
        }
    }

    /// Sends `body` and reads the reply, all within `timeout`. `Err` is a
    /// transport failure (address, connection, TLS, timeout).
    pub async fn send(
        &self,
        method: &str,
        url: &str,
        headers: &BTreeMap<String, String>,
        body: Bytes,
        timeout: Duration,
    ) -> Result<Reply, Failure> {
        let client = self
            .inner
            .as_ref()
            .map_err(|e| Failure::transient(e.clone()))?;
        let request =
            request(method, url, headers, "application/json", body).map_err(Failure::permanent)?;
        let call = async {
            let response = client
                .request(request)
                .await
                .map_err(|e| Failure::transient(chain(&e)))?;
            let status = response.status().as_u16();
            // Read (a bounded part of) the body so the connection can be
            // reused; a broken body after a 2xx still counts as delivered.
            let body = Limited::new(response.into_body(), BODY_LIMIT)
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let text = String::from_utf8_lossy(&body);
            let body_start: String = text.chars().take(ERROR_BODY_QUOTE).collect();
            Ok(Reply {
                status,
                body_start: body_start.trim().to_string(),
            })
        };
        match tokio::time::timeout(timeout, call).await {
            Ok(result) => result,
            Err(_) => Err(Failure::transient(format!(
                "timed out after {} ms",
                timeout.as_millis()
            ))),
        }
    }
}

impl HttpClient {
    /// Sends `body` with `content_type` and reads the whole reply, at most
    /// `limit` bytes of body, all within `timeout`.
    pub async fn fetch(
        &self,
        method: &str,
        url: &str,
        content_type: &str,
        body: Bytes,
        timeout: Duration,
        limit: usize,
    ) -> Result<Fetched, FetchError> {
        let client = self
            .inner
            .as_ref()
            .map_err(|e| FetchError::Unreachable(e.clone()))?;
        let request = request(method, url, &BTreeMap::new(), content_type, body)
            .map_err(FetchError::Malformed)?;
        let call = async {
            let response = client
                .request(request)
                .await
                .map_err(|e| FetchError::Unreachable(chain(&e)))?;
            let status = response.status().as_u16();
            let body = Limited::new(response.into_body(), limit)
                .collect()
                .await
                .map_err(|e| {
                    if e.downcast_ref::<http_body_util::LengthLimitError>()
                        .is_some()
                    {
                        FetchError::TooLarge { limit }
                    } else {
                        FetchError::Unreachable(format!("reading the answer: {}", chain(&*e)))
                    }
                })?
                .to_bytes();
            Ok(Fetched { status, body })
        };
        tokio::time::timeout(timeout, call)
            .await
            .unwrap_or(Err(FetchError::Timeout))
    }
}

fn build() -> Result<Inner, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    let mut builder = Client::builder(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(30));
    Ok(builder.build(https))
}

fn request(
    method: &str,
    url: &str,
    headers: &BTreeMap<String, String>,
    content_type: &str,
    body: Bytes,
) -> Result<http::Request<Full<Bytes>>, String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("bad URL: {e}"))?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => return Err("bad URL: expected http:// or https://".into()),
    }
    let method: http::Method = method
        .parse()
        .map_err(|_| format!("bad HTTP method {method:?}"))?;
    let mut builder = http::Request::builder()
        .method(method)
        .uri(uri)
        .header(http::header::CONTENT_TYPE, content_type)
        .header(
            http::header::USER_AGENT,
            concat!("backstop/", env!("CARGO_PKG_VERSION")),
        );
    for (name, value) in headers {
        let name = http::HeaderName::try_from(name.as_str())
            .map_err(|_| format!("bad header name {name:?}"))?;
        // The value may be a secret: never quote it.
        let value = http::HeaderValue::try_from(value.as_str())
            .map_err(|_| format!("bad value for header {name}"))?;
        builder = builder.header(name, value);
    }
    builder.body(Full::new(body)).map_err(|e| e.to_string())
}

/// An error and its causes on one line (hyper's top error alone says only
/// "client error (Connect)").
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        let more = inner.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = inner.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bad_addresses_methods_and_headers_are_errors_not_panics() {
        let client = HttpClient::new();
        let none = BTreeMap::new();
        let t = Duration::from_secs(1);
        for url in ["", "not a url", "ftp://example.com/", "/relative"] {
            let error = client
                .send("POST", url, &none, Bytes::new(), t)
                .await
                .unwrap_err();
            assert!(error.permanent);
            assert!(error.message.starts_with("bad URL"), "{url}: {error:?}");
        }
        let error = client
            .send("PO ST", "http://127.0.0.1:9/", &none, Bytes::new(), t)
            .await
            .unwrap_err();
        assert!(
            error.permanent && error.message.contains("method"),
            "{error:?}"
        );
        let bad = BTreeMap::from([("x-token".to_string(), "a\nb".to_string())]);
        let error = client
            .send("POST", "http://127.0.0.1:9/", &bad, Bytes::new(), t)
            .await
            .unwrap_err();
        assert_eq!(error.message, "bad value for header x-token");
        // Nothing listens on port 9 of loopback: worth a retry, not malformed.
        let error = client
            .send("POST", "http://127.0.0.1:9/", &none, Bytes::new(), t)
            .await
            .unwrap_err();
        assert!(!error.permanent, "{error:?}");
    }
}
