//! Upstream endpoints: pooled clients and health.
//!
//! An [`Endpoint`] is one model-server address. It is healthy when its last
//! active check passed and it is not ejected. Passive checks eject it after
//! `eject_after_failures` consecutive failed requests, for a back-off that
//! doubles with each ejection in a row (capped), and resets on a success.
//! Endpoints are shared by URL between tables, so a swap keeps their health.

use super::body::{UpstreamBody, UpstreamResponse};
use super::h1;
use crate::config::{HealthConfig, Protocol};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Passive-health settings an endpoint needs on the request path.
#[derive(Clone, Debug)]
pub struct HealthSettings {
    pub eject_after_failures: u32,
    pub eject_base_ms: u64,
    pub eject_max_ms: u64,
}

impl Default for HealthSettings {
    fn default() -> Self {
        Self::from(&HealthConfig::default())
    }
}

impl From<&HealthConfig> for HealthSettings {
    fn from(config: &HealthConfig) -> Self {
        Self {
            eject_after_failures: config.eject_after_failures,
            eject_base_ms: config.eject_base_ms,
            eject_max_ms: config.eject_max_ms,
        }
    }
}

/// One upstream address and its health.
pub struct Endpoint {
    /// Base URL: scheme, authority and an optional path prefix.
    pub uri: http::Uri,
    pub url: String,
    pub protocol: Protocol,
    pub health_path: String,
    settings: HealthSettings,
    /// Result of the last active check. Optimistic at start so traffic
    /// flows before the first check has run.
    active_healthy: AtomicBool,
    consecutive_failures: AtomicU32,
    /// Ejections in a row (each doubles the back-off).
    ejections: AtomicU32,
    /// Gateway-clock ms until which the endpoint is ejected.
    ejected_until_ms: AtomicU64,
    /// Idle HTTP/1.1 keep-alive connections.
    pub pool: h1::Pool,
}

impl Endpoint {
    pub fn new(
        uri: http::Uri,
        protocol: Protocol,
        health_path: String,
        settings: HealthSettings,
    ) -> Self {
        Self {
            url: uri.to_string().trim_end_matches('/').to_string(),
            uri,
            protocol,
            health_path,
            settings,
            active_healthy: AtomicBool::new(true),
            consecutive_failures: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            ejected_until_ms: AtomicU64::new(0),
            pool: h1::Pool::default(),
        }
    }

    #[inline]
    pub fn is_healthy(&self, now_ms: u64) -> bool {
        self.active_healthy.load(Ordering::Relaxed)
            && now_ms >= self.ejected_until_ms.load(Ordering::Relaxed)
    }

    pub fn is_ejected(&self, now_ms: u64) -> bool {
        now_ms < self.ejected_until_ms.load(Ordering::Relaxed)
    }

    pub fn active_healthy(&self) -> bool {
        self.active_healthy.load(Ordering::Relaxed)
    }

    /// Sets the active-check result; returns whether it changed.
    pub fn set_active_health(&self, healthy: bool) -> bool {
        self.active_healthy.swap(healthy, Ordering::Relaxed) != healthy
    }

    /// A request succeeded. Writes only when there is something to reset,
    /// so the common case is two loads.
    #[inline]
    pub fn record_success(&self) {
        if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
        if self.ejections.load(Ordering::Relaxed) != 0 {
            self.ejections.store(0, Ordering::Relaxed);
        }
    }

    /// A request failed because of this endpoint. Returns the back-off when
    /// this failure ejected it.
    pub fn record_failure(&self, now_ms: u64) -> Option<Duration> {
        let failures = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures < self.settings.eject_after_failures || self.is_ejected(now_ms) {
            return None;
        }
        self.consecutive_failures.store(0, Ordering::Relaxed);
        let ejections = self.ejections.fetch_add(1, Ordering::Relaxed);
        let backoff_ms = self
            .settings
            .eject_base_ms
            .saturating_mul(1u64 << ejections.min(20))
            .min(self.settings.eject_max_ms);
        self.ejected_until_ms
            .store(now_ms.saturating_add(backoff_ms), Ordering::Relaxed);
        Some(Duration::from_millis(backoff_ms))
    }

    /// Ends an ejection early (an active check passed after it).
    pub fn clear_ejection(&self) {
        self.ejected_until_ms.store(0, Ordering::Relaxed);
    }

    /// Absolute upstream URI for a request path (and query) on this endpoint.
    pub fn target(&self, path_and_query: &str) -> Result<http::Uri, http::Error> {
        let prefix = self.uri.path().trim_end_matches('/');
        let mut builder = http::Uri::builder();
        if let Some(scheme) = self.uri.scheme() {
            builder = builder.scheme(scheme.clone());
        }
        if let Some(authority) = self.uri.authority() {
            builder = builder.authority(authority.clone());
        }
        if prefix.is_empty() {
            builder.path_and_query(path_and_query).build()
        } else {
            builder
                .path_and_query(format!("{prefix}{path_and_query}"))
                .build()
        }
    }
}

/// hyper's pooled client, for gRPC (HTTP/2) upstreams.
pub type H2Client = Client<HttpsConnector<HttpConnector>, UpstreamBody>;

/// How a table talks to its upstreams: HTTP/1.1 inline in the request's
/// task, or gRPC over hyper's HTTP/2 client (whose connection multiplexes
/// requests, so a task per connection is the right shape there).
#[derive(Clone)]
pub enum UpstreamClient {
    Http1(h1::Client),
    Grpc(Box<H2Client>),
}

impl UpstreamClient {
    /// Sends a request (its URI already absolute, on `endpoint`) and
    /// returns the answer once its head has arrived.
    ///
    /// `timeout` bounds the wait for the answer. Over HTTP/1.1 it starts
    /// once the request is written (a stalled client upload is the
    /// client's fault); over HTTP/2 it covers the whole exchange.
    pub async fn send(
        &self,
        endpoint: &Arc<Endpoint>,
        head: http::request::Parts,
        body: UpstreamBody,
        timeout: Duration,
    ) -> Result<http::Response<UpstreamResponse>, h1::SendError> {
        match self {
            UpstreamClient::Http1(client) => client
                .send(endpoint, head, body, timeout)
                .await
                .map(|r| r.map(UpstreamResponse::Http1)),
            UpstreamClient::Grpc(client) => {
                let (body, fault) = body.with_fault_cell();
                let sent = client.request(http::Request::from_parts(head, body));
                match tokio::time::timeout(timeout, sent).await {
                    Err(_) => Err(h1::SendError::Timeout),
                    Ok(Ok(response)) => Ok(response.map(UpstreamResponse::Http2)),
                    // hyper's HTTP/2 client reports a failed request body
                    // as a reset stream; the cell says whose fault it was.
                    Ok(Err(error)) => Err(match fault.load(std::sync::atomic::Ordering::Relaxed) {
                        super::body::BODY_TOO_LARGE => h1::SendError::BodyTooLarge,
                        super::body::BODY_BROKEN => {
                            h1::SendError::ClientBody(super::error::error_chain(&error))
                        }
                        _ => classify_hyper_error(&error),
                    }),
                }
            }
        }
    }
}

/// Whose fault a hyper client error was.
fn classify_hyper_error(error: &hyper_util::client::legacy::Error) -> h1::SendError {
    if error.is_connect() {
        return h1::SendError::Connect(super::error::error_chain(error));
    }
    let mut source = std::error::Error::source(error);
    while let Some(inner) = source {
        if inner.is::<http_body_util::LengthLimitError>() {
            return h1::SendError::BodyTooLarge;
        }
        // hyper calls an error of the body we handed it a "user" error.
        if inner
            .downcast_ref::<hyper::Error>()
            .is_some_and(|e| e.is_user())
        {
            return h1::SendError::ClientBody(super::error::error_chain(error));
        }
        source = inner.source();
    }
    h1::SendError::Upstream(super::error::error_chain(error))
}

/// Upstream clients, one per (protocol, connect timeout), shared by all
/// tables; connection pools live in the endpoints (HTTP/1.1) or in the
/// shared gRPC clients, so they survive swaps.
pub struct UpstreamClients {
    tls: rustls::ClientConfig,
    clients: Mutex<HashMap<(Protocol, Duration), UpstreamClient>>,
}

impl UpstreamClients {
    /// Trusts the web PKI roots plus the CA certificates in `ca_file`.
    pub fn new(ca_file: Option<&Path>) -> Result<Self, String> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(file) = ca_file {
            use rustls_pki_types::pem::PemObject;
            let certs = rustls_pki_types::CertificateDer::pem_file_iter(file)
                .map_err(|e| format!("{}: {e}", file.display()))?;
            for cert in certs {
                let cert = cert.map_err(|e| format!("{}: {e}", file.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("{}: {e}", file.display()))?;
            }
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
        Ok(Self {
            tls,
            clients: Mutex::new(HashMap::new()),
        })
    }

    pub fn get(&self, protocol: Protocol, connect_timeout: Duration) -> UpstreamClient {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        clients
            .entry((protocol, connect_timeout))
            .or_insert_with(|| self.build(protocol, connect_timeout))
            .clone()
    }

    fn build(&self, protocol: Protocol, connect_timeout: Duration) -> UpstreamClient {
        if protocol == Protocol::Http {
            let mut tls = self.tls.clone();
            tls.alpn_protocols = vec![b"http/1.1".to_vec()];
            return UpstreamClient::Http1(h1::Client {
                tls: tokio_rustls::TlsConnector::from(Arc::new(tls)),
                connect_timeout,
            });
        }
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(connect_timeout));
        http.set_keepalive(Some(Duration::from_secs(60)));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(self.tls.clone())
            .https_or_http();
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(90));
        builder.http2_only(true);
        UpstreamClient::Grpc(Box::new(
            builder.build(https.enable_http2().wrap_connector(http)),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(path: &str) -> Endpoint {
        Endpoint::new(
            path.parse().unwrap(),
            Protocol::Http,
            "/v2/health/ready".into(),
            HealthSettings {
                eject_after_failures: 3,
                eject_base_ms: 100,
                eject_max_ms: 350,
            },
        )
    }

    #[test]
    fn consecutive_failures_eject_with_doubling_backoff() {
        let e = endpoint("http://127.0.0.1:1");
        assert!(e.is_healthy(0));
        assert_eq!(e.record_failure(0), None);
        assert_eq!(e.record_failure(0), None);
        assert_eq!(e.record_failure(0), Some(Duration::from_millis(100)));
        assert!(!e.is_healthy(50));
        assert!(e.is_healthy(100));
        for _ in 0..2 {
            e.record_failure(100);
        }
        assert_eq!(e.record_failure(100), Some(Duration::from_millis(200)));
        for _ in 0..2 {
            e.record_failure(300);
        }
        assert_eq!(
            e.record_failure(300),
            Some(Duration::from_millis(350)),
            "capped"
        );
        e.record_success();
        for _ in 0..2 {
            e.record_failure(1000);
        }
        assert_eq!(
            e.record_failure(1000),
            Some(Duration::from_millis(100)),
            "reset"
        );
    }

    #[test]
    fn a_success_resets_the_failure_count() {
        let e = endpoint("http://127.0.0.1:1");
        e.record_failure(0);
        e.record_failure(0);
        e.record_success();
        e.record_failure(0);
        e.record_failure(0);
        assert!(e.is_healthy(0));
    }

    #[test]
    fn targets_keep_the_endpoint_prefix() {
        let e = endpoint("http://127.0.0.1:9001/serving/");
        assert_eq!(
            e.target("/predict?x=1").unwrap().to_string(),
            "http://127.0.0.1:9001/serving/predict?x=1"
        );
        let e = endpoint("https://models.internal:8443");
        assert_eq!(
            e.target("/v2/models/m/infer").unwrap().to_string(),
            "https://models.internal:8443/v2/models/m/infer"
        );
    }
}
