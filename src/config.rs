//! `backstop.yaml`: parsed once into checked types.
//!
//! Parsing goes YAML → [`Config`] with serde (unknown fields refused), then
//! [`Config::check`] validates what serde cannot (weights, references between
//! versions, URLs). Every error names the file, line, column (when the YAML
//! parser knows it) and the field path, e.g.
//! `backstop.yaml:14:19: models.fraud-scorer.versions[1].weight: ...`.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

// Shared with policy files; re-exported because the fuzz target calls it here.
pub use crate::yaml::locate;

/// Whole gateway configuration.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Data-plane listen address; port 0 picks a free port.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Where the registry keeps its store file and artifacts. `serve`
    /// defaults it to `./backstop-data`; without one (the demo) the
    /// registry endpoints answer 503 `registry_disabled`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// Worker threads of the gateway's runtime; absent: one per core.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_threads: Option<usize>,
    /// TLS on the data-plane listener.
    #[serde(default)]
    pub tls: Option<TlsFiles>,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub upstream_tls: UpstreamTls,
    #[serde(default)]
    pub stats: StatsConfig,
    #[serde(default)]
    pub feedback: FeedbackConfig,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub health: HealthConfig,
    #[serde(default)]
    pub pin: PinConfig,
    /// A Prometheus server that rollout triggers may query; absent: only
    /// the gateway's own statistics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<PrometheusConfig>,
    #[serde(default)]
    pub models: BTreeMap<String, ModelSpec>,
    /// OpenTelemetry traces of the gateway hop; absent: no tracing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub telemetry: Option<TelemetryConfig>,
    #[serde(default)]
    pub log: LogConfig,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    #[serde(default = "default_admin_listen")]
    pub listen: SocketAddr,
    #[serde(default)]
    pub tls: Option<TlsFiles>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: default_admin_listen(),
            tls: None,
        }
    }
}

fn default_admin_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9090))
}

/// PEM certificate chain and private key.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Trust for `https://` upstreams: the built-in web PKI roots plus any
/// extra CA certificates (PEM) named here.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTls {
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

/// The feedback API's join of reported outcomes to the version that
/// answered (see `crate::feedback`).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FeedbackConfig {
    /// How long after its answer a request still takes feedback.
    #[serde(default = "default_feedback_window_ms")]
    pub window_ms: u64,
    /// Answered requests remembered at most (about 100 bytes each); the
    /// oldest go first.
    #[serde(default = "default_feedback_capacity")]
    pub capacity: usize,
}

impl Default for FeedbackConfig {
    fn default() -> Self {
        Self {
            window_ms: default_feedback_window_ms(),
            capacity: default_feedback_capacity(),
        }
    }
}

fn default_feedback_window_ms() -> u64 {
    3_600_000
}
fn default_feedback_capacity() -> usize {
    1_000_000
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StatsConfig {
    /// Width of one statistics bucket.
    #[serde(default = "default_bucket_ms")]
    pub bucket_ms: u64,
    /// Buckets kept per version: the longest window the controller can ask for.
    #[serde(default = "default_buckets")]
    pub buckets: usize,
}

impl Default for StatsConfig {
    fn default() -> Self {
        Self {
            bucket_ms: default_bucket_ms(),
            buckets: default_buckets(),
        }
    }
}

fn default_bucket_ms() -> u64 {
    1000
}
fn default_buckets() -> usize {
    300
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Largest request body accepted; larger gets 413 `body_too_large`.
    #[serde(default = "default_request_body_max")]
    pub request_body_max_bytes: u64,
    /// Largest request body copied to a shadow version; larger requests are
    /// not mirrored (and counted as shadow drops).
    #[serde(default = "default_shadow_body_max")]
    pub shadow_body_max_bytes: u64,
    /// Shadow requests in flight at once; beyond that copies are dropped.
    #[serde(default = "default_shadow_inflight_max")]
    pub shadow_inflight_max: usize,
    /// Largest model artifact the registry accepts.
    #[serde(default = "default_artifact_max")]
    pub artifact_max_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            request_body_max_bytes: default_request_body_max(),
            shadow_body_max_bytes: default_shadow_body_max(),
            shadow_inflight_max: default_shadow_inflight_max(),
            artifact_max_bytes: default_artifact_max(),
        }
    }
}

fn default_request_body_max() -> u64 {
    64 * 1024 * 1024
}
fn default_shadow_body_max() -> u64 {
    1024 * 1024
}
fn default_shadow_inflight_max() -> usize {
    256
}
fn default_artifact_max() -> u64 {
    16 * 1024 * 1024 * 1024
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// Active check period per endpoint.
    #[serde(default = "default_health_interval_ms")]
    pub interval_ms: u64,
    #[serde(default = "default_health_timeout_ms")]
    pub timeout_ms: u64,
    /// Consecutive failed requests that eject an endpoint (passive check).
    #[serde(default = "default_eject_failures")]
    pub eject_after_failures: u32,
    /// First ejection lasts this long; each further one doubles it.
    #[serde(default = "default_eject_base_ms")]
    pub eject_base_ms: u64,
    #[serde(default = "default_eject_max_ms")]
    pub eject_max_ms: u64,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            interval_ms: default_health_interval_ms(),
            timeout_ms: default_health_timeout_ms(),
            eject_after_failures: default_eject_failures(),
            eject_base_ms: default_eject_base_ms(),
            eject_max_ms: default_eject_max_ms(),
        }
    }
}

fn default_health_interval_ms() -> u64 {
    1000
}
fn default_health_timeout_ms() -> u64 {
    500
}
fn default_eject_failures() -> u32 {
    5
}
fn default_eject_base_ms() -> u64 {
    2000
}
fn default_eject_max_ms() -> u64 {
    60_000
}

/// Traces of the gateway hop, sent to an OTLP collector (see
/// `crate::telemetry`).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// The collector's OTLP/HTTP base URL (`/v1/traces` is appended, as
    /// with `OTEL_EXPORTER_OTLP_ENDPOINT`), e.g. `http://127.0.0.1:4318`.
    pub otlp_endpoint: String,
    #[serde(default)]
    pub protocol: OtlpProtocol,
    /// Share of new traces recorded (0.0-1.0); a client's sampled flag
    /// decides for the traces it continues.
    #[serde(default = "default_sample_ratio")]
    pub sample_ratio: f64,
    #[serde(default = "default_service_name")]
    pub service_name: String,
}

/// How spans travel to the collector. OTLP/HTTP with the JSON encoding is
/// the one supported: every OTLP collector accepts it on its HTTP port.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum OtlpProtocol {
    #[default]
    #[serde(rename = "http/json")]
    HttpJson,
}

fn default_sample_ratio() -> f64 {
    1.0
}
fn default_service_name() -> String {
    "backstop".to_string()
}

impl TelemetryConfig {
    pub fn check(&self) -> Result<(), FieldError> {
        parse_endpoint(&self.otlp_endpoint).map_err(|m| FieldError::new("otlp_endpoint", m))?;
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            return Err(FieldError::new(
                "sample_ratio",
                "must be between 0.0 and 1.0",
            ));
        }
        if self.service_name.trim().is_empty() {
            return Err(FieldError::new("service_name", "must not be empty"));
        }
        Ok(())
    }
}

/// Log output of `serve`.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `text` (default) or `json` (one JSON object a line); the
    /// `--log-format` option wins over it.
    #[serde(default)]
    pub format: LogFormat,
    /// An access log: one line (target `backstop::access`) per proxied
    /// request with model, version, request_id, status, outcome, latency_ms.
    #[serde(default)]
    pub requests: bool,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Who may pin a request to a version with the pin header.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PinConfig {
    #[serde(default = "default_pin_header")]
    pub header: String,
    /// Client networks allowed to pin; empty means nobody.
    #[serde(default)]
    pub allow_from: Vec<ipnet::IpNet>,
}

impl Default for PinConfig {
    fn default() -> Self {
        Self {
            header: default_pin_header(),
            allow_from: Vec::new(),
        }
    }
}

fn default_pin_header() -> String {
    "x-backstop-pin".to_string()
}

/// Where PromQL triggers are evaluated (see `crate::prometheus`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PrometheusConfig {
    /// Base URL of the server (`http[s]://host:port[/prefix]`); queries go
    /// to `{url}/api/v1/query`.
    pub url: String,
    /// One query, connection included; a slower answer is an error.
    #[serde(default = "default_prometheus_timeout_ms")]
    pub timeout_ms: u64,
    /// A sample older than this is `stale`, never a reading.
    #[serde(default = "default_max_staleness_ms")]
    pub max_staleness_ms: u64,
    /// How often a rollout's `prometheus` triggers are read (Prometheus
    /// scrapes every 15 s by default: reading more often repeats values).
    #[serde(default = "default_prometheus_interval_ms")]
    pub interval_ms: u64,
}

fn default_prometheus_interval_ms() -> u64 {
    10_000
}

fn default_prometheus_timeout_ms() -> u64 {
    5000
}
fn default_max_staleness_ms() -> u64 {
    120_000
}

impl PrometheusConfig {
    /// Checks the URL and bounds; paths are relative to the section.
    pub fn check(&self) -> Result<(), FieldError> {
        check_prometheus_url(&self.url).map_err(|m| FieldError::new("url", m))?;
        if !(1..=300_000).contains(&self.timeout_ms) {
            return Err(FieldError::new(
                "timeout_ms",
                "must be between 1 and 300000 (5 min)",
            ));
        }
        if !(100..=3_600_000).contains(&self.interval_ms) {
            return Err(FieldError::new(
                "interval_ms",
                "must be between 100 and 3600000 (1 h)",
            ));
        }
        if !(1..=86_400_000).contains(&self.max_staleness_ms) {
            return Err(FieldError::new(
                "max_staleness_ms",
                "must be between 1 and 86400000 (24 h)",
            ));
        }
        Ok(())
    }
}

/// A Prometheus base URL: `http` or `https`, a host, an optional path
/// prefix, no query (the API path is appended to it).
pub fn check_prometheus_url(url: &str) -> Result<(), String> {
    parse_endpoint(url).map(|_| ())
}

/// One model's routing table as users write it (config file and admin API).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// How the gateway talks to this model's upstreams.
    #[serde(default)]
    pub protocol: Protocol,
    /// Versions in routing order, each with its weight and endpoints.
    pub versions: Vec<VersionSpec>,
    /// Where the sticky key comes from, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky: Option<StickySpec>,
    /// Rules checked in order before weights; the first match wins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cohorts: Vec<CohortSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<ShadowSpec>,
    #[serde(default)]
    pub timeouts: Timeouts,
    /// Request/response samples kept per version for incidents; absent:
    /// nothing is captured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capture: Option<CaptureSpec>,
    /// Model-aware signals (input checks, predictions, agreement, per-request
    /// fallback); a rollout sets them from its policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signals: Option<SignalSpec>,
    /// Active health-check path on each endpoint (HTTP upstreams).
    #[serde(default = "default_health_path")]
    pub health_path: String,
}

fn default_health_path() -> String {
    "/v2/health/ready".to_string()
}

#[derive(
    Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq, Hash, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// HTTP/1.1 with pooled keep-alive (OIP REST or plain JSON).
    #[default]
    Http,
    /// gRPC (OIP `inference.GRPCInferenceService`) over HTTP/2.
    Grpc,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VersionSpec {
    pub name: String,
    /// Relative weight; a share is weight / sum of weights.
    pub weight: u32,
    /// `http://host:port[/prefix]` or `https://...`.
    pub endpoints: Vec<String>,
    /// May answer when the versions with weight are all unhealthy (default
    /// true). A rolled-back candidate has `false`: it gets no traffic at
    /// all, however the others fare.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub fallback: bool,
    /// A designated rehearsal candidate for `backstop gameday --live`
    /// (default false): it normally serves from the same upstreams as the
    /// last-known-good, and it is the only kind of version that may carry
    /// an injected fault.
    #[serde(default, skip_serializing_if = "is_false")]
    pub rehearsal: bool,
    /// A fault the gateway injects into this version's requests. Set and
    /// cleared over the admin API (`PUT|DELETE
    /// /api/v1/models/{model}/versions/{version}/fault`), never in the
    /// config file, so a restart always clears it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<FaultSpec>,
}

fn is_false(value: &bool) -> bool {
    !*value
}

/// Most latency a fault may add, milliseconds.
pub const FAULT_LATENCY_MAX_MS: u64 = 600_000;

/// What the gateway does to a rehearsal version's requests: every one is
/// delayed by `latency_ms` before it is forwarded; `error_percent` of them
/// are answered 503 `injected_fault` without forwarding (a server error
/// of the version), and `timeout_percent` are held until the route's
/// request timeout and answered as a timeout.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FaultSpec {
    #[serde(default)]
    pub latency_ms: u64,
    #[serde(default)]
    pub error_percent: f64,
    #[serde(default)]
    pub timeout_percent: f64,
}

impl FaultSpec {
    /// Checks the numbers; paths are relative to the fault.
    pub fn check(&self) -> Result<(), FieldError> {
        if self.latency_ms > FAULT_LATENCY_MAX_MS {
            return Err(FieldError::new(
                "latency_ms",
                format!("must be at most {FAULT_LATENCY_MAX_MS} (10 min)"),
            ));
        }
        for (field, value) in [
            ("error_percent", self.error_percent),
            ("timeout_percent", self.timeout_percent),
        ] {
            if !(0.0..=100.0).contains(&value) {
                return Err(FieldError::new(field, "must be between 0 and 100"));
            }
        }
        if self.error_percent + self.timeout_percent > 100.0 {
            return Err(FieldError::new(
                "timeout_percent",
                "error_percent and timeout_percent add up to more than 100",
            ));
        }
        if self.latency_ms == 0 && self.error_percent == 0.0 && self.timeout_percent == 0.0 {
            return Err(FieldError::new(
                "",
                "the fault does nothing: set latency_ms, error_percent or timeout_percent (DELETE clears a fault)",
            ));
        }
        Ok(())
    }
}

fn yes() -> bool {
    true
}

fn is_true(value: &bool) -> bool {
    *value
}

/// Where the sticky key comes from: exactly one of `header` or `cookie`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StickySpec {
    /// The key is this request header's value (e.g. `x-user-id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// The key is this cookie's value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
}

impl StickySpec {
    pub fn header(name: &str) -> Self {
        Self {
            header: Some(name.to_string()),
            cookie: None,
        }
    }

    pub fn cookie(name: &str) -> Self {
        Self {
            header: None,
            cookie: Some(name.to_string()),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CohortSpec {
    /// Match when this header carries one of `values`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
    /// Match when the sticky key hashes into `[from, to)` of 0..10000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_range: Option<[u32; 2]>,
    /// The version matching requests go to.
    pub version: String,
}

/// Buckets a sticky key hashes into for `key_range` cohorts.
pub const KEY_BUCKETS: u32 = 10_000;

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ShadowSpec {
    pub version: String,
    /// Share of requests copied, 0..=100 (fractions allowed).
    pub percent: f64,
}

/// Samples of request/response pairs kept per version (the evidence an
/// incident freezes). Same names as a policy's `evidence` section.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CaptureSpec {
    /// Share of requests sampled, 0..=100 (fractions allowed; 0: none).
    #[serde(default = "default_sample_percent")]
    pub sample_percent: f64,
    /// Pairs kept per version, 1..=10000: the newest replace the oldest.
    #[serde(default = "default_samples")]
    pub samples: usize,
    /// Larger bodies are recorded as omitted, with their size (max 1 MiB).
    #[serde(default = "default_body_max_bytes")]
    pub body_max_bytes: usize,
    /// JSON fields (any depth) and OIP tensors (by `name`) whose values are
    /// replaced by `"[redacted]"` before a sample is kept.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub redact: Vec<String>,
    /// Fields and tensors whose values are replaced by a keyed SHA-256
    /// (equal values stay equal within one process, for correlation).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hash: Vec<String>,
}

impl Default for CaptureSpec {
    fn default() -> Self {
        Self {
            sample_percent: default_sample_percent(),
            samples: default_samples(),
            body_max_bytes: default_body_max_bytes(),
            redact: Vec::new(),
            hash: Vec::new(),
        }
    }
}

fn default_sample_percent() -> f64 {
    1.0
}
fn default_samples() -> usize {
    100
}
fn default_body_max_bytes() -> usize {
    16 * 1024
}

/// Largest `capture.body_max_bytes`.
pub const CAPTURE_BODY_MAX: usize = 1024 * 1024;
/// Largest `samples × body_max_bytes` per version: a ring holds at most
/// twice that (request and response), so one model cannot exhaust memory.
pub const CAPTURE_RING_BYTES_MAX: usize = 512 * 1024 * 1024;

/// What the gateway reads from a model's requests and answers, and which
/// candidate answers the baseline replaces. Same names as a policy's
/// `signals` and `fallback` sections; a rollout fills in the versions.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignalSpec {
    /// Share of requests (each version) whose input is checked against the
    /// version's signature and whose answer's prediction is read, 0..=100.
    #[serde(default = "default_signal_percent")]
    pub sample_percent: f64,
    /// Input features (tensor or field names) whose values are sketched.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub features: Vec<String>,
    /// Where the prediction is in an answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub output: Option<backstop_core::policy::Output>,
    /// Share of the candidate's requests also sent to the baseline, whose
    /// answer is only compared (agreement), 0..=100.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub mirror_percent: f64,
    /// Candidate answers replaced by the baseline's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub fallback: Option<backstop_core::policy::Fallback>,
    /// The version judged (its answers are compared, and may fall back).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidate: Option<String>,
    /// The version mirrors and fallbacks go to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<String>,
}

fn default_signal_percent() -> f64 {
    100.0
}

fn is_zero(value: &f64) -> bool {
    *value == 0.0
}

impl SignalSpec {
    /// `versions`: the model's version names.
    pub fn check(&self, versions: &BTreeSet<&str>) -> Result<(), FieldError> {
        for (field, value) in [
            ("sample_percent", self.sample_percent),
            ("mirror_percent", self.mirror_percent),
        ] {
            if !(0.0..=100.0).contains(&value) {
                return Err(FieldError::new(field, "must be between 0 and 100"));
            }
        }
        if self.features.len() > 64 || self.features.iter().any(|f| f.is_empty() || f.len() > 256) {
            return Err(FieldError::new(
                "features",
                "at most 64 names of 1 to 256 characters",
            ));
        }
        for (field, version) in [("candidate", &self.candidate), ("baseline", &self.baseline)] {
            if let Some(version) = version {
                if !versions.contains(version.as_str()) {
                    return Err(FieldError::new(
                        field,
                        format!("no version {version:?} (the model has: {})", join(versions)),
                    ));
                }
            }
        }
        let needs_both = self.fallback.is_some() || self.mirror_percent > 0.0;
        if needs_both && (self.candidate.is_none() || self.baseline.is_none()) {
            return Err(FieldError::new(
                "baseline",
                "fallback and mirror_percent need both candidate and baseline",
            ));
        }
        Ok(())
    }
}

impl CaptureSpec {
    pub fn check(&self) -> Result<(), FieldError> {
        if !(0.0..=100.0).contains(&self.sample_percent) {
            return Err(FieldError::new(
                "sample_percent",
                "must be between 0 and 100",
            ));
        }
        if !(1..=10_000).contains(&self.samples) {
            return Err(FieldError::new("samples", "must be between 1 and 10000"));
        }
        if !(1..=CAPTURE_BODY_MAX).contains(&self.body_max_bytes) {
            return Err(FieldError::new(
                "body_max_bytes",
                format!("must be between 1 and {CAPTURE_BODY_MAX} (1 MiB)"),
            ));
        }
        if self.samples.saturating_mul(self.body_max_bytes) > CAPTURE_RING_BYTES_MAX {
            return Err(FieldError::new(
                "samples",
                "samples × body_max_bytes must be at most 512 MiB per version",
            ));
        }
        for (field, names) in [("redact", &self.redact), ("hash", &self.hash)] {
            for (i, name) in names.iter().enumerate() {
                if name.is_empty() || name.len() > 256 {
                    return Err(FieldError::new(
                        format!("{field}[{i}]"),
                        "field names are 1-256 characters",
                    ));
                }
            }
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Timeouts {
    #[serde(default = "default_connect_ms")]
    pub connect_ms: u64,
    /// Time allowed until the upstream's response headers.
    #[serde(default = "default_request_ms")]
    pub request_ms: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect_ms: default_connect_ms(),
            request_ms: default_request_ms(),
        }
    }
}

fn default_connect_ms() -> u64 {
    1000
}
fn default_request_ms() -> u64 {
    10_000
}

/// A field that failed validation: its path and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    pub path: String,
    pub message: String,
}

impl FieldError {
    fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }

    fn under(mut self, prefix: &str) -> Self {
        self.path = if self.path.is_empty() {
            prefix.to_string()
        } else {
            format!("{prefix}.{}", self.path)
        };
        self
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// A configuration file that could not be used.
pub type ConfigError = crate::yaml::FileError;

impl Config {
    /// Reads, parses and checks a config file.
    pub fn load(file: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(file)
            .map_err(|e| ConfigError::whole_file(file, format!("cannot read: {e}")))?;
        Self::parse(file, &text)
    }

    /// Parses and checks config text; `file` only names it in errors.
    pub fn parse(file: &Path, text: &str) -> Result<Config, ConfigError> {
        let config: Config = crate::yaml::deserialize(file, text)?;
        config
            .check()
            .map_err(|e| ConfigError::at_field(file, text, e.path, e.message))?;
        Ok(config)
    }

    /// Checks what serde cannot.
    pub fn check(&self) -> Result<(), FieldError> {
        if self
            .worker_threads
            .is_some_and(|n| !(1..=1024).contains(&n))
        {
            return Err(FieldError::new(
                "worker_threads",
                "must be between 1 and 1024",
            ));
        }
        if !(1..=3_600_000).contains(&self.stats.bucket_ms) {
            return Err(FieldError::new(
                "stats.bucket_ms",
                "must be between 1 and 3600000 (1 h)",
            ));
        }
        if !(3..=100_000).contains(&self.stats.buckets) {
            return Err(FieldError::new(
                "stats.buckets",
                "must be between 3 and 100000",
            ));
        }
        if !(1..=7 * 86_400_000).contains(&self.feedback.window_ms) {
            return Err(FieldError::new(
                "feedback.window_ms",
                "must be between 1 and 604800000 (7 days)",
            ));
        }
        if !(16..=100_000_000).contains(&self.feedback.capacity) {
            return Err(FieldError::new(
                "feedback.capacity",
                "must be between 16 and 100000000",
            ));
        }
        if self.health.interval_ms == 0 || self.health.timeout_ms == 0 {
            return Err(FieldError::new(
                "health",
                "interval_ms and timeout_ms must be at least 1",
            ));
        }
        if self.health.eject_after_failures == 0 {
            return Err(FieldError::new(
                "health.eject_after_failures",
                "must be at least 1",
            ));
        }
        if http::HeaderName::from_bytes(self.pin.header.as_bytes()).is_err() {
            return Err(FieldError::new("pin.header", "not a valid header name"));
        }
        if let Some(prometheus) = &self.prometheus {
            prometheus.check().map_err(|e| e.under("prometheus"))?;
        }
        for (name, model) in &self.models {
            check_model_name(name).map_err(|m| FieldError::new(format!("models.{name}"), m))?;
            model
                .check()
                .map_err(|e| e.under(&format!("models.{name}")))?;
            if let Some(i) = model.versions.iter().position(|v| v.fault.is_some()) {
                // A fault in the file would survive restarts; the admin API
                // keeps it in memory only.
                return Err(FieldError::new(
                    format!("models.{name}.versions[{i}].fault"),
                    "faults are injected over the admin API only (PUT /api/v1/models/{model}/versions/{version}/fault), never from the config file",
                ));
            }
        }
        if let Some(telemetry) = &self.telemetry {
            telemetry.check().map_err(|e| e.under("telemetry"))?;
        }
        Ok(())
    }
}

/// Model names appear in URL paths and metric labels.
pub fn check_model_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err("model names are 1-128 characters of [A-Za-z0-9._-]".to_string())
    }
}

impl ModelSpec {
    /// Checks one routing table: names unique, weights sensible, every
    /// reference to a version resolvable, URLs usable.
    pub fn check(&self) -> Result<(), FieldError> {
        if self.versions.is_empty() {
            return Err(FieldError::new(
                "versions",
                "at least one version is required",
            ));
        }
        let mut names = BTreeSet::new();
        let mut total_weight: u64 = 0;
        for (i, version) in self.versions.iter().enumerate() {
            let at = |field: &str| format!("versions[{i}].{field}");
            check_model_name(&version.name).map_err(|_| {
                FieldError::new(
                    at("name"),
                    "version names are 1-128 characters of [A-Za-z0-9._-]",
                )
            })?;
            if !names.insert(version.name.as_str()) {
                return Err(FieldError::new(
                    at("name"),
                    format!("version {:?} appears twice", version.name),
                ));
            }
            if version.weight > 1_000_000 {
                return Err(FieldError::new(at("weight"), "must be at most 1000000"));
            }
            total_weight += u64::from(version.weight);
            if version.endpoints.is_empty() {
                return Err(FieldError::new(
                    at("endpoints"),
                    "at least one endpoint is required",
                ));
            }
            for (j, endpoint) in version.endpoints.iter().enumerate() {
                parse_endpoint(endpoint)
                    .map_err(|m| FieldError::new(format!("versions[{i}].endpoints[{j}]"), m))?;
            }
            if let Some(fault) = &version.fault {
                // Faults are for rehearsals: never on a version that serves
                // users for real.
                if !version.rehearsal {
                    return Err(FieldError::new(
                        at("fault"),
                        format!(
                            "version {:?} is not a rehearsal version: only a version with `rehearsal: true` may carry an injected fault",
                            version.name
                        ),
                    ));
                }
                fault.check().map_err(|e| e.under(&at("fault")))?;
            }
        }
        if total_weight == 0 {
            return Err(FieldError::new(
                "versions",
                "the weights add up to 0: at least one version must take traffic",
            ));
        }
        let known = |field: String, version: &str| {
            if names.contains(version) {
                Ok(())
            } else {
                Err(FieldError::new(
                    field,
                    format!("unknown version {version:?} (known: {})", join(&names)),
                ))
            }
        };
        if let Some(sticky) = &self.sticky {
            match (&sticky.header, &sticky.cookie) {
                (Some(name), None) | (None, Some(name)) => {
                    if name.is_empty() || http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                        return Err(FieldError::new(
                            "sticky",
                            "not a valid header or cookie name",
                        ));
                    }
                }
                _ => {
                    return Err(FieldError::new(
                        "sticky",
                        "set exactly one of `header` or `cookie`",
                    ))
                }
            }
        }
        for (i, cohort) in self.cohorts.iter().enumerate() {
            let at = |field: &str| format!("cohorts[{i}].{field}");
            known(at("version"), &cohort.version)?;
            match (&cohort.header, &cohort.key_range) {
                (Some(header), None) => {
                    if http::HeaderName::from_bytes(header.as_bytes()).is_err() {
                        return Err(FieldError::new(at("header"), "not a valid header name"));
                    }
                    if cohort.values.is_empty() {
                        return Err(FieldError::new(
                            at("values"),
                            "a header cohort needs values",
                        ));
                    }
                }
                (None, Some([from, to])) => {
                    if from >= to || *to > KEY_BUCKETS {
                        return Err(FieldError::new(
                            at("key_range"),
                            format!("expected [from, to) with from < to <= {KEY_BUCKETS}"),
                        ));
                    }
                    if self.sticky.is_none() {
                        return Err(FieldError::new(
                            at("key_range"),
                            "a key_range cohort needs a sticky key (set `sticky`)",
                        ));
                    }
                }
                _ => {
                    return Err(FieldError::new(
                        format!("cohorts[{i}]"),
                        "a cohort has exactly one of `header` (with `values`) or `key_range`",
                    ))
                }
            }
        }
        if let Some(shadow) = &self.shadow {
            known("shadow.version".into(), &shadow.version)?;
            if !(0.0..=100.0).contains(&shadow.percent) {
                return Err(FieldError::new(
                    "shadow.percent",
                    "must be between 0 and 100",
                ));
            }
        }
        if self.timeouts.connect_ms == 0 || self.timeouts.request_ms == 0 {
            return Err(FieldError::new(
                "timeouts",
                "timeouts must be at least 1 ms",
            ));
        }
        if !self.health_path.starts_with('/') {
            return Err(FieldError::new("health_path", "must start with '/'"));
        }
        if let Some(capture) = &self.capture {
            capture.check().map_err(|e| e.under("capture"))?;
        }
        if let Some(signals) = &self.signals {
            signals.check(&names).map_err(|e| e.under("signals"))?;
        }
        Ok(())
    }
}

fn join(names: &BTreeSet<&str>) -> String {
    names.iter().copied().collect::<Vec<_>>().join(", ")
}

/// Parses an endpoint URL: `http` or `https`, a host and port, an optional
/// path prefix, no query.
pub fn parse_endpoint(text: &str) -> Result<http::Uri, String> {
    let uri: http::Uri = text
        .parse()
        .map_err(|e| format!("{text:?} is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(format!("{text:?}: expected an http:// or https:// URL")),
    }
    if uri.authority().is_none() {
        return Err(format!("{text:?}: missing host"));
    }
    if uri.query().is_some() {
        return Err(format!("{text:?}: an endpoint has no query string"));
    }
    Ok(uri)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
listen: 127.0.0.1:0
admin:
  listen: 127.0.0.1:0
models:
  fraud-scorer:
    sticky: { header: x-user-id }
    versions:
      - name: v1
        weight: 90
        endpoints: ["http://127.0.0.1:9001"]
      - name: v2
        weight: 10
        endpoints: ["http://127.0.0.1:9002"]
    cohorts:
      - { header: x-tenant, values: [beta], version: v2 }
    shadow: { version: v2, percent: 5 }
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("backstop.yaml"), text)
    }

    #[test]
    fn parses_a_good_config() {
        let config = parse(GOOD).unwrap();
        let model = &config.models["fraud-scorer"];
        assert_eq!(model.versions.len(), 2);
        assert_eq!(model.sticky, Some(StickySpec::header("x-user-id")));
        assert_eq!(model.timeouts.request_ms, 10_000);
    }

    #[test]
    fn type_errors_name_file_line_column_and_field() {
        let text = GOOD.replace("weight: 10\n", "weight: ten\n");
        let error = parse(&text).unwrap_err().to_string();
        assert!(
            error.starts_with(
                "backstop.yaml:13:17: models.fraud-scorer.versions[1].weight: invalid type"
            ),
            "{error}"
        );
    }

    #[test]
    fn unknown_fields_are_refused() {
        let text = GOOD.replace("weight: 90", "wieght: 90");
        let error = parse(&text).unwrap_err().to_string();
        assert!(error.contains("unknown field `wieght`"), "{error}");
        assert!(error.contains("models.fraud-scorer.versions[0]"), "{error}");
    }

    #[test]
    fn semantic_errors_point_at_the_field() {
        let text = GOOD.replace("version: v2 }\n    shadow", "version: v9 }\n    shadow");
        let error = parse(&text).unwrap_err();
        assert_eq!(error.path, "models.fraud-scorer.cohorts[0].version");
        assert!(
            error.message.contains("unknown version \"v9\""),
            "{}",
            error.message
        );
        assert_eq!(error.line, Some(16), "{error}");

        let text = GOOD
            .replace("weight: 90", "weight: 0")
            .replace("weight: 10", "weight: 0");
        let error = parse(&text).unwrap_err();
        assert_eq!(error.path, "models.fraud-scorer.versions");
        assert_eq!(error.line, Some(8));
    }

    #[test]
    fn feedback_settings_default_and_are_checked() {
        let config = parse(GOOD).unwrap();
        assert_eq!(config.feedback.window_ms, 3_600_000);
        assert_eq!(config.feedback.capacity, 1_000_000);
        let config = parse(&format!(
            "feedback: {{ window_ms: 500, capacity: 64 }}\n{GOOD}"
        ))
        .unwrap();
        assert_eq!(
            (config.feedback.window_ms, config.feedback.capacity),
            (500, 64)
        );
        for (bad, path) in [
            ("window_ms: 0", "feedback.window_ms"),
            ("capacity: 3", "feedback.capacity"),
        ] {
            let error = parse(&format!("feedback: {{ {bad} }}\n{GOOD}")).unwrap_err();
            assert_eq!(error.path, path, "{bad}");
        }
        let error = parse(&format!("feedback: {{ windw_ms: 5 }}\n{GOOD}")).unwrap_err();
        assert!(
            error.to_string().contains("unknown field `windw_ms`"),
            "{error}"
        );
    }

    #[test]
    fn bad_endpoints_are_refused() {
        let text = GOOD.replace("http://127.0.0.1:9002", "ftp://x");
        let error = parse(&text).unwrap_err();
        assert_eq!(error.path, "models.fraud-scorer.versions[1].endpoints[0]");
        assert!(error.message.contains("http:// or https://"));
    }

    #[test]
    fn the_shipped_example_is_valid() {
        let text = include_str!("../examples/backstop.yaml");
        let config = parse(text).unwrap();
        assert_eq!(config.models["fraud-scorer"].cohorts.len(), 2);
    }

    #[test]
    fn capture_settings_are_checked_with_their_path() {
        let text = GOOD.replace(
            "shadow: { version: v2, percent: 5 }",
            "shadow: { version: v2, percent: 5 }\n    capture: { sample_percent: 100, samples: 5, redact: [ssn], hash: [user_id] }",
        );
        let config = parse(&text).unwrap();
        let capture = config.models["fraud-scorer"].capture.clone().unwrap();
        assert_eq!(capture.samples, 5);
        assert_eq!(capture.body_max_bytes, 16 * 1024);
        assert_eq!(capture.redact, vec!["ssn".to_string()]);

        for (bad, path) in [
            ("sample_percent: 101", "sample_percent"),
            ("sample_percent: .nan", "sample_percent"),
            ("samples: 0", "samples"),
            ("samples: 10001", "samples"),
            ("body_max_bytes: 2000000", "body_max_bytes"),
            ("samples: 10000, body_max_bytes: 1048576", "samples"),
            ("redact: ['']", "redact[0]"),
        ] {
            let text = GOOD.replace(
                "shadow: { version: v2, percent: 5 }",
                &format!("shadow: {{ version: v2, percent: 5 }}\n    capture: {{ {bad} }}"),
            );
            let error = parse(&text).unwrap_err();
            assert_eq!(
                error.path,
                format!("models.fraud-scorer.capture.{path}"),
                "{bad}"
            );
        }
        let text = GOOD.replace(
            "shadow: { version: v2, percent: 5 }",
            "shadow: { version: v2, percent: 5 }\n    capture: { samples: 3, sampel_percent: 1 }",
        );
        assert!(parse(&text)
            .unwrap_err()
            .to_string()
            .contains("unknown field"));
    }

    #[test]
    fn prometheus_is_optional_and_checked_with_its_path() {
        assert_eq!(parse(GOOD).unwrap().prometheus, None);
        let text = format!("prometheus: {{ url: \"http://127.0.0.1:9091/\" }}\n{GOOD}");
        let prometheus = parse(&text).unwrap().prometheus.unwrap();
        assert_eq!(prometheus.url, "http://127.0.0.1:9091/");
        assert_eq!(prometheus.timeout_ms, 5000);
        assert_eq!(prometheus.max_staleness_ms, 120_000);
        for (bad, path, line) in [
            ("{ url: \"ftp://x\" }", "prometheus.url", 1),
            ("{ url: \"http://x:9090/?a=1\" }", "prometheus.url", 1),
            (
                "{ url: \"http://x\", timeout_ms: 0 }",
                "prometheus.timeout_ms",
                1,
            ),
            (
                "\n  url: http://x\n  max_staleness_ms: 0",
                "prometheus.max_staleness_ms",
                3,
            ),
        ] {
            let text = format!("prometheus: {bad}\n{GOOD}");
            let error = parse(&text).unwrap_err();
            assert_eq!(error.path, path, "{bad}: {error}");
            assert_eq!(error.line, Some(line), "{bad}: {error}");
        }
        let text = format!("prometheus: {{ url: \"http://x\", timeout: 1 }}\n{GOOD}");
        let error = parse(&text).unwrap_err().to_string();
        assert!(error.contains("unknown field `timeout`"), "{error}");
        let error = parse(&format!("prometheus: {{}}\n{GOOD}"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("missing field `url`"), "{error}");
    }

    #[test]
    fn empty_config_uses_defaults() {
        let config = parse("{}").unwrap();
        assert_eq!(config.listen.port(), 8080);
        assert!(config.models.is_empty());
    }

    #[test]
    fn locate_finds_nested_fields() {
        let text = "a:\n  b:\n    - x: 1\n      y: 2\n    - x: 3\n";
        assert_eq!(locate(text, "a.b[1].x"), Some((5, 7)));
        assert_eq!(locate(text, "a.b[0].y"), Some((4, 7)));
        assert_eq!(
            locate(text, "a.c"),
            Some((1, 1)),
            "falls back to the parent"
        );
        assert_eq!(locate(text, "z"), None);
        // Odd model names end up in paths; they must not break the locator.
        assert_eq!(locate(text, "models.m[1]]"), None);
        assert_eq!(locate(text, "a]["), None);
    }

    #[test]
    fn a_rehearsal_version_is_marked_and_serialized_only_when_set() {
        let text = GOOD.replace(
            "        endpoints: [\"http://127.0.0.1:9002\"]",
            "        endpoints: [\"http://127.0.0.1:9002\"]\n        rehearsal: true",
        );
        let config = parse(&text).unwrap();
        let versions = &config.models["fraud-scorer"].versions;
        assert!(!versions[0].rehearsal && versions[1].rehearsal);
        let json = serde_json::to_value(versions).unwrap();
        assert!(json[0].get("rehearsal").is_none(), "{json}");
        assert!(json[0].get("fault").is_none(), "{json}");
        assert_eq!(json[1]["rehearsal"], true);
    }

    fn with_fault(rehearsal: bool, fault: FaultSpec) -> Result<(), FieldError> {
        let mut spec = parse(GOOD).unwrap().models["fraud-scorer"].clone();
        spec.versions[1].rehearsal = rehearsal;
        spec.versions[1].fault = Some(fault);
        spec.check()
    }

    #[test]
    fn only_a_rehearsal_version_may_carry_a_fault() {
        let errors = FaultSpec {
            error_percent: 10.0,
            ..FaultSpec::default()
        };
        let error = with_fault(false, errors).unwrap_err();
        assert_eq!(error.path, "versions[1].fault");
        assert!(error.message.contains("not a rehearsal version"), "{error}");
        assert_eq!(with_fault(true, errors), Ok(()));
    }

    #[test]
    fn fault_numbers_are_checked_with_their_path() {
        let fault = |latency_ms, error_percent, timeout_percent| FaultSpec {
            latency_ms,
            error_percent,
            timeout_percent,
        };
        for (bad, path) in [
            (fault(0, 100.5, 0.0), "versions[1].fault.error_percent"),
            (fault(0, -1.0, 0.0), "versions[1].fault.error_percent"),
            (fault(0, f64::NAN, 0.0), "versions[1].fault.error_percent"),
            (fault(0, 0.0, 101.0), "versions[1].fault.timeout_percent"),
            (fault(0, 60.0, 50.0), "versions[1].fault.timeout_percent"),
            (
                fault(FAULT_LATENCY_MAX_MS + 1, 0.0, 0.0),
                "versions[1].fault.latency_ms",
            ),
            (fault(0, 0.0, 0.0), "versions[1].fault"),
        ] {
            let error = with_fault(true, bad).unwrap_err();
            assert_eq!(error.path, path, "{bad:?}: {error}");
        }
        for good in [
            fault(250, 0.0, 0.0),
            fault(0, 100.0, 0.0),
            fault(0, 50.0, 50.0),
            fault(10, 0.5, 0.5),
        ] {
            assert_eq!(with_fault(true, good), Ok(()), "{good:?}");
        }
    }

    #[test]
    fn a_fault_in_the_config_file_is_refused() {
        let text = GOOD.replace(
            "        endpoints: [\"http://127.0.0.1:9002\"]",
            "        endpoints: [\"http://127.0.0.1:9002\"]\n        rehearsal: true\n        fault: { error_percent: 10 }",
        );
        let error = parse(&text).unwrap_err();
        assert_eq!(error.path, "models.fraud-scorer.versions[1].fault");
        assert!(error.message.contains("admin API only"), "{error}");
        let text = text.replace("error_percent: 10", "eror_percent: 10");
        let error = parse(&text).unwrap_err().to_string();
        assert!(error.contains("unknown field `eror_percent`"), "{error}");
    }

    #[test]
    fn telemetry_and_log_sections_parse_and_are_checked() {
        let config = parse(GOOD).unwrap();
        assert!(config.telemetry.is_none());
        assert_eq!(config.log.format, LogFormat::Text);
        assert!(!config.log.requests);

        let text = format!(
            "{GOOD}telemetry:\n  otlp_endpoint: http://127.0.0.1:4318\nlog:\n  format: json\n  requests: true\n"
        );
        let config = parse(&text).unwrap();
        let telemetry = config.telemetry.unwrap();
        assert_eq!(telemetry.sample_ratio, 1.0);
        assert_eq!(telemetry.service_name, "backstop");
        assert_eq!(telemetry.protocol, OtlpProtocol::HttpJson);
        assert_eq!(config.log.format, LogFormat::Json);
        assert!(config.log.requests);

        for (section, path, message) in [
            (
                "telemetry:\n  otlp_endpoint: http://c:4318\n  sample_ratio: 1.5\n",
                "telemetry.sample_ratio",
                "between 0.0 and 1.0",
            ),
            (
                "telemetry:\n  otlp_endpoint: ftp://c\n",
                "telemetry.otlp_endpoint",
                "expected an http:// or https:// URL",
            ),
            (
                "telemetry:\n  otlp_endpoint: http://c:4318\n  service_name: ' '\n",
                "telemetry.service_name",
                "must not be empty",
            ),
        ] {
            let error = parse(&format!("{GOOD}{section}")).unwrap_err();
            assert_eq!(error.path, path);
            assert!(error.message.contains(message), "{}", error.message);
        }
        let error = parse(&format!(
            "{GOOD}telemetry:\n  otlp_endpoint: http://c:4318\n  protocol: grpc\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(error.contains("telemetry.protocol"), "{error}");
        assert!(error.contains("http/json"), "{error}");
    }
}
