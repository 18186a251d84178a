//! Rollout policies: what a rollout does (strategy, sticky key, cohorts) and
//! when it stops by itself (triggers). One policy file per rollout.
//!
//! The types here are what users write (YAML in the CLI, JSON over the API),
//! parsed with serde, and what the controller consumes. Serde checks shapes
//! (unknown fields, unknown metrics, malformed thresholds and durations);
//! [`Policy::check`] checks what serde cannot (steps increasing, threshold
//! forms that fit the metric, names). Both report a field path such as
//! `triggers[1].above`, which the caller turns into a file position.
//!
//! Thresholds and durations are strings in the file (`"+30%"`, `"250ms"`,
//! `"2m"`) and typed values here ([`Threshold`], [`Period`]); the JSON
//! Schema ([`schema`]) describes them as strings with a pattern.

mod incident;
mod signals;

pub use incident::{
    Evidence, Graduated, Hook, Receiver, Rollback, Verification, WebhookFormat, RAMP_STEPS_MAX,
};
use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Serialize};
pub use signals::{Fallback, FallbackReason, Output, OutputKind, Signals};
use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

/// Longest duration a policy may name: a rollout step that bakes longer
/// than a week is almost certainly a typo (`2h` for `2m`), and the bound
/// keeps arithmetic on milliseconds far from overflow.
pub const PERIOD_MAX_MS: u64 = 7 * 24 * 3_600_000;
/// Triggers per policy: each is evaluated every tick, so keep it bounded.
pub const TRIGGERS_MAX: usize = 64;
/// Canary steps per policy.
pub const STEPS_MAX: usize = 100;
/// Buckets a sticky key hashes into for `key_range` cohorts (as the gateway).
pub const KEY_BUCKETS: u32 = 10_000;

/// One rollout: move `model`'s traffic from `baseline` to `candidate`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// The model being rolled out (as registered).
    pub model: String,
    /// The version or bundle id that receives traffic.
    pub candidate: String,
    /// The version or bundle traffic returns to; absent: the model's
    /// last-known-good (LKG) when the rollout starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<String>,
    /// How traffic moves to the candidate.
    pub strategy: Strategy,
    /// Where the sticky key comes from, so a user stays on one version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky: Option<Sticky>,
    /// Rules checked before weights (same shape as the gateway's cohorts):
    /// matching requests go to the named version.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cohorts: Vec<Cohort>,
    /// When to roll back, pause or notify. At least one.
    pub triggers: Vec<Trigger>,
    /// Cap on automatic actions (rollback, pause) per model and hour, so a
    /// flapping signal cannot thrash traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_auto_actions_per_hour: Option<u32>,
    /// A step without its minimum sample reports "waiting for traffic";
    /// after this long it also notifies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_for_traffic_deadline: Option<Period>,
    /// Chance that a healthy candidate completes without any trigger
    /// acting, over the whole rollout however often it is checked (each
    /// trigger gets an equal share of the rest). Default 0.99.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confidence: Option<f64>,
    /// Request/response samples kept for an incident, and what is
    /// redacted from them. Default: 1% of requests, 100 per version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<Evidence>,
    /// How recovery is checked after a rollback. Default: 1m, p95 within
    /// +20% and errors within +1pp of the baseline's pre-rollout values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification: Option<Verification>,
    /// How traffic goes back on a verdict. Default: all at once; with
    /// `graduated`, warning-severity rollback triggers ramp it back in
    /// steps while the baseline is watched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback: Option<Rollback>,
    /// HTTP calls made after a rollback, beside it (never delaying it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hooks: Vec<Hook>,
    /// Who is told about incidents, and of which severities.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notify: Vec<Receiver>,
    /// What the gateway reads from requests and answers for the
    /// model-aware triggers (input checks, output, agreement mirror).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signals: Option<Signals>,
    /// Candidate answers that failed (or were not confident enough) are
    /// answered by the baseline instead, per request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<Fallback>,
}

/// The default [`Policy::confidence`].
pub const CONFIDENCE_DEFAULT: f64 = 0.99;

// Written as a one-key map: see `StrategyFile`. (Doc comments here become
// the schema's description, so this note is a plain comment.)
/// Exactly one strategy, written as a map with one key, like
/// `{ canary: { steps: [1, 5, 25, 50, 100], bake: 2m } }`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(try_from = "StrategyFile", into = "StrategyFile")]
pub enum Strategy {
    Canary(Canary),
    BlueGreen(BlueGreen),
    Shadow(Shadow),
    Linear(Linear),
}

/// The strategy as written: a map with exactly one of these keys. YAML
/// libraries disagree on how enums look (tags or one-key maps), so the file
/// format is this plain map and the choice is checked here.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(extend("minProperties" = 1, "maxProperties" = 1))]
pub struct StrategyFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<Canary>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blue_green: Option<BlueGreen>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<Shadow>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub linear: Option<Linear>,
}

impl TryFrom<StrategyFile> for Strategy {
    type Error = String;

    fn try_from(file: StrategyFile) -> Result<Self, String> {
        match file {
            StrategyFile {
                canary: Some(c),
                blue_green: None,
                shadow: None,
                linear: None,
            } => Ok(Strategy::Canary(c)),
            StrategyFile {
                canary: None,
                blue_green: Some(b),
                shadow: None,
                linear: None,
            } => Ok(Strategy::BlueGreen(b)),
            StrategyFile {
                canary: None,
                blue_green: None,
                shadow: Some(s),
                linear: None,
            } => Ok(Strategy::Shadow(s)),
            StrategyFile {
                canary: None,
                blue_green: None,
                shadow: None,
                linear: Some(l),
            } => Ok(Strategy::Linear(l)),
            _ => Err("set exactly one of `canary`, `blue_green`, `shadow` or `linear`".to_string()),
        }
    }
}

impl From<Strategy> for StrategyFile {
    fn from(strategy: Strategy) -> Self {
        let mut file = StrategyFile::default();
        match strategy {
            Strategy::Canary(c) => file.canary = Some(c),
            Strategy::BlueGreen(b) => file.blue_green = Some(b),
            Strategy::Shadow(s) => file.shadow = Some(s),
            Strategy::Linear(l) => file.linear = Some(l),
        }
        file
    }
}

/// Weighted steps, each held for `bake` while triggers are checked.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Canary {
    /// Candidate's share of traffic per step, in percent: strictly
    /// increasing, each in (0, 100], the last 100.
    pub steps: Vec<f64>,
    /// How long each step is held before the next.
    pub bake: Period,
    /// Steps (percent values from `steps`) that wait for
    /// `backstop rollout approve` before they start.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approval: Vec<f64>,
}

/// Warm and health-check the candidate, flip all traffic at once, bake.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BlueGreen {
    /// Health-checked warm-up before the flip.
    pub warmup: Period,
    /// Time after the flip during which a trigger flips back.
    pub bake: Period,
}

/// Mirror a share of traffic to the candidate; it never answers users.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Shadow {
    /// Share of requests mirrored, in (0, 100].
    pub percent: f64,
    /// How long to compare before the verdict.
    pub duration: Period,
}

/// Add `step` percent every `interval` until 100.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Linear {
    /// Percent added per interval, in (0, 100].
    pub step: f64,
    pub interval: Period,
}

/// Where the sticky key comes from: exactly one of `header` or `cookie`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Sticky {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
}

/// A cohort: exactly one of `header` (with `values`) or `key_range`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Cohort {
    /// Match when this header carries one of `values`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
    /// Match when the sticky key hashes into `[from, to)` of 0..10000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_range: Option<[u32; 2]>,
    /// The candidate or the baseline.
    pub version: String,
}

/// One rule: when `metric` crosses the threshold for `for`, do `action`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Trigger {
    pub metric: Metric,
    /// The input feature (OIP tensor or JSON field) a `null_rate` or
    /// `drift_psi` trigger watches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feature: Option<String>,
    /// The KPI a `kpi` trigger watches, as posted to the feedback API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kpi: Option<String>,
    /// A `prometheus` trigger's PromQL query; `{{version}}` and `{{model}}`
    /// are substituted, once for the candidate and once for the baseline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// Compare with the baseline over the same window. Implied by (and
    /// only allowed with) a relative threshold: `"+30%"` or `"+2pp"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relative_to: Option<RelativeTo>,
    /// What a `drift_psi` trigger compares the candidate's inputs with:
    /// the baseline's traffic over the same stage (default), or the
    /// reference profile registered with the candidate version (judged in
    /// every stage, 100% included).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<DriftReference>,
    /// Fires when the candidate's value is above this. Exactly one of
    /// `above` or `below`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub above: Option<Threshold>,
    /// Fires when the candidate's value is below this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub below: Option<Threshold>,
    /// How long the breach must last; `0s` acts on the first verdict.
    #[serde(rename = "for", default)]
    pub for_period: Period,
    /// Candidate requests needed before the trigger can decide anything:
    /// no data never counts as healthy.
    #[serde(default = "default_min_sample")]
    #[schemars(range(min = 1))]
    pub min_sample: u64,
    #[serde(default)]
    pub severity: Severity,
    pub action: Action,
}

/// The default minimum sample: below about 100 requests a rate or a
/// quantile says too little to act on.
pub const MIN_SAMPLE_DEFAULT: u64 = 100;

fn default_min_sample() -> u64 {
    MIN_SAMPLE_DEFAULT
}

/// What a trigger measures. An explicit list: new metrics (business KPIs,
/// confidence, drift) are added here, and an unknown name is an error that
/// lists the known ones.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Median latency of answered requests (timeouts excluded).
    LatencyP50,
    /// 95th-percentile latency of answered requests (timeouts excluded).
    LatencyP95,
    /// 99th-percentile latency of answered requests (timeouts excluded).
    LatencyP99,
    /// Share of requests that failed (model server errors, not client ones).
    ErrorRate,
    /// Share of requests that timed out.
    TimeoutRate,
    /// Share of checked requests that break the version's input signature
    /// (missing, extra, wrong datatype or shape).
    SchemaViolationRate,
    /// Share of checked requests with a null, NaN or infinite value in
    /// `feature`.
    NullRate,
    /// Population stability index of `feature` on the candidate's requests
    /// against the baseline's.
    DriftPsi,
    /// Population stability index of the candidate's predictions (class
    /// shares or score histogram) against the baseline's.
    PredictionShift,
    /// Mean confidence of the candidate's answers (0..1).
    ConfidenceMean,
    /// Share of requests answered by both versions where the candidate's
    /// prediction equals the baseline's.
    AgreementRate,
    /// Share of the candidate's requests answered by the baseline instead
    /// (see `fallback`).
    FallbackRate,
    /// Share of labelled feedback where the prediction was right.
    Accuracy,
    /// Mean of a KPI posted to the feedback API (`kpi:` names it).
    Kpi,
    /// A PromQL query (`query:`) evaluated for each version.
    Prometheus,
}

/// What kind of number a metric is, which decides the threshold forms it
/// takes and how a breach is tested.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricKind {
    Latency,
    /// A share of events among counted requests (a sequential test).
    Rate,
    /// A mean of per-request values (a sequential test on the mean).
    Mean,
    /// A distance between two distributions (PSI with a significance test).
    Distance,
    /// A number computed elsewhere (Prometheus): compared as it is.
    External,
}

impl Metric {
    pub const ALL: [Metric; 15] = [
        Metric::LatencyP50,
        Metric::LatencyP95,
        Metric::LatencyP99,
        Metric::ErrorRate,
        Metric::TimeoutRate,
        Metric::SchemaViolationRate,
        Metric::NullRate,
        Metric::DriftPsi,
        Metric::PredictionShift,
        Metric::ConfidenceMean,
        Metric::AgreementRate,
        Metric::FallbackRate,
        Metric::Accuracy,
        Metric::Kpi,
        Metric::Prometheus,
    ];

    pub fn kind(self) -> MetricKind {
        match self {
            Metric::LatencyP50 | Metric::LatencyP95 | Metric::LatencyP99 => MetricKind::Latency,
            Metric::ErrorRate
            | Metric::TimeoutRate
            | Metric::SchemaViolationRate
            | Metric::NullRate
            | Metric::AgreementRate
            | Metric::FallbackRate
            | Metric::Accuracy => MetricKind::Rate,
            Metric::ConfidenceMean | Metric::Kpi => MetricKind::Mean,
            Metric::DriftPsi | Metric::PredictionShift => MetricKind::Distance,
            Metric::Prometheus => MetricKind::External,
        }
    }

    /// The trigger field this metric needs besides its threshold.
    pub fn needs(self) -> Option<&'static str> {
        match self {
            Metric::NullRate | Metric::DriftPsi => Some("feature"),
            Metric::Kpi => Some("kpi"),
            Metric::Prometheus => Some("query"),
            _ => None,
        }
    }

    /// Needs the answer's prediction (`signals.output`).
    pub fn reads_output(self) -> bool {
        matches!(
            self,
            Metric::PredictionShift
                | Metric::ConfidenceMean
                | Metric::AgreementRate
                | Metric::Accuracy
        )
    }

    /// Needs the gateway to check and sketch inputs.
    pub fn reads_input(self) -> bool {
        matches!(
            self,
            Metric::SchemaViolationRate | Metric::NullRate | Metric::DriftPsi
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RelativeTo {
    /// The baseline (LKG) over the same window.
    Baseline,
}

/// What a distance trigger compares with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DriftReference {
    /// The baseline's traffic over the same stage span.
    #[default]
    Baseline,
    /// The profile stored with the candidate version at registration.
    Profile,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    #[default]
    Critical,
    Warning,
}

impl Severity {
    /// The name users write (`critical`, `warning`).
    pub fn name(self) -> &'static str {
        match self {
            Severity::Critical => "critical",
            Severity::Warning => "warning",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// All traffic back to the baseline; the candidate is condemned.
    Rollback,
    /// Hold the current step until an operator resumes.
    Pause,
    /// Tell people, change nothing.
    Notify,
}

/// A trigger threshold, parsed from its string form.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Threshold {
    /// `"+30%"`, `"-10%"`: a change relative to the baseline's value.
    RelativePercent(f64),
    /// `"5%"`: an absolute rate (rate metrics only).
    RatePercent(f64),
    /// `"+2pp"`: percentage points above (or below) the baseline's rate
    /// (rate metrics only).
    PercentagePoints(f64),
    /// `"250ms"`, `"1.5s"`: an absolute latency (latency metrics only).
    LatencyMs(f64),
    /// `"0.2"`, `0.6`: a plain number (distances, means, Prometheus).
    Value(f64),
}

impl Threshold {
    /// Compared with the baseline rather than a fixed number.
    pub fn is_relative(self) -> bool {
        matches!(
            self,
            Threshold::RelativePercent(_) | Threshold::PercentagePoints(_)
        )
    }

    /// Checks that this form suits `metric` and its number is sensible.
    fn check_for(self, metric: Metric) -> Result<(), String> {
        let kind = metric.kind();
        // Only the candidate has these: a relative limit would wait for a
        // baseline figure that never comes.
        if self.is_relative() && matches!(metric, Metric::AgreementRate | Metric::FallbackRate) {
            return Err(format!(
                "{} is measured on the candidate only (the baseline is what it is compared with or falls back to); use an absolute rate like \"{}\"",
                metric.name(),
                if metric == Metric::AgreementRate { "90%" } else { "2%" }
            ));
        }
        match (kind, self) {
            (MetricKind::Latency | MetricKind::Rate, Threshold::Value(_)) => {
                return Err(format!(
                    "a plain number is for distances, means and Prometheus queries; {} takes {}",
                    metric.name(),
                    if kind == MetricKind::Latency { "a latency like \"250ms\" or \"+30%\"" } else { "a percentage like \"5%\", \"+2pp\" or \"+30%\"" }
                ))
            }
            (MetricKind::Distance, t) if !matches!(t, Threshold::Value(_)) => {
                return Err(format!(
                    "expected a PSI like \"0.2\" ({} already compares the candidate with the baseline)",
                    metric.name()
                ))
            }
            (MetricKind::Distance, Threshold::Value(v)) if !(v > 0.0 && v <= 10.0) => {
                return Err("a PSI threshold is above 0 and at most 10 (0.1 small, 0.25 major)".into())
            }
            (MetricKind::Mean | MetricKind::External, Threshold::RatePercent(_) | Threshold::PercentagePoints(_) | Threshold::LatencyMs(_)) => {
                return Err(format!(
                    "expected a number like \"0.6\" or a change vs the baseline like \"-2%\" ({} is a {})",
                    metric.name(),
                    if kind == MetricKind::Mean { "mean" } else { "query's value" }
                ))
            }
            (_, Threshold::Value(v)) if !v.is_finite() => return Err("not a finite number".into()),
            (MetricKind::Mean, Threshold::Value(v)) if metric == Metric::ConfidenceMean && !(0.0..=1.0).contains(&v) => {
                return Err("a confidence is between 0 and 1".into())
            }
            _ => {}
        }
        match (kind, self) {
            (MetricKind::Latency, Threshold::RatePercent(_) | Threshold::PercentagePoints(_)) => {
                Err(format!(
                    "expected a latency like \"250ms\" ({} is a latency), or a change vs the baseline like \"+30%\"",
                    metric.name()
                ))
            }
            (MetricKind::Rate, Threshold::LatencyMs(_)) => Err(format!(
                "expected a percentage like \"5%\" ({} is a rate), or a change vs the baseline like \"+2pp\" or \"+30%\"",
                metric.name()
            )),
            (_, Threshold::RelativePercent(p)) if p <= -100.0 || p > 10_000.0 => {
                Err("a relative change must be above -100% and at most +10000%".into())
            }
            (_, Threshold::RatePercent(p)) if p > 100.0 => {
                Err("a rate is between 0% and 100%".into())
            }
            (_, Threshold::PercentagePoints(p)) if !(-100.0..=100.0).contains(&p) => {
                Err("percentage points are between -100pp and +100pp".into())
            }
            (_, Threshold::LatencyMs(ms)) if ms > PERIOD_MAX_MS as f64 => {
                Err("a latency threshold must be at most 7 days".into())
            }
            _ => Ok(()),
        }
    }
}

impl Metric {
    /// The name users write.
    pub fn name(self) -> &'static str {
        match self {
            Metric::LatencyP50 => "latency_p50",
            Metric::LatencyP95 => "latency_p95",
            Metric::LatencyP99 => "latency_p99",
            Metric::ErrorRate => "error_rate",
            Metric::TimeoutRate => "timeout_rate",
            Metric::SchemaViolationRate => "schema_violation_rate",
            Metric::NullRate => "null_rate",
            Metric::DriftPsi => "drift_psi",
            Metric::PredictionShift => "prediction_shift",
            Metric::ConfidenceMean => "confidence_mean",
            Metric::AgreementRate => "agreement_rate",
            Metric::FallbackRate => "fallback_rate",
            Metric::Accuracy => "accuracy",
            Metric::Kpi => "kpi",
            Metric::Prometheus => "prometheus",
        }
    }
}

/// What the threshold string may look like (also the schema's pattern).
pub const THRESHOLD_PATTERN: &str =
    r"^([+-]?[0-9]+(\.[0-9]+)?(%|pp)|[0-9]+(\.[0-9]+)?(ms|s)|-?[0-9]+(\.[0-9]+)?)$";
const THRESHOLD_EXPECTED: &str = r#"a threshold like "+30%" (vs baseline), "5%" (rate), "+2pp" (points vs baseline), "250ms" or a number like 0.2"#;

impl FromStr for Threshold {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || format!("{text:?} is not {THRESHOLD_EXPECTED}");
        let (body, unit) = if let Some(b) = text.strip_suffix("pp") {
            (b, "pp")
        } else if let Some(b) = text.strip_suffix('%') {
            (b, "%")
        } else if let Some(b) = text.strip_suffix("ms") {
            (b, "ms")
        } else if let Some(b) = text.strip_suffix('s') {
            (b, "s")
        } else {
            // A plain number: a distance, a mean or a query's value.
            let (sign, digits) = match text.strip_prefix('-') {
                Some(digits) => (-1.0, digits),
                None => (1.0, text),
            };
            return Ok(Threshold::Value(
                sign * parse_decimal(digits).ok_or_else(bad)? + 0.0,
            ));
        };
        let (sign, digits) = match body.as_bytes().first() {
            Some(b'+') => (1.0, &body[1..]),
            Some(b'-') => (-1.0, &body[1..]),
            _ => (1.0, body),
        };
        let signed = digits.len() != body.len();
        // `+ 0.0` turns "-0" into 0, which prints without a sign.
        let value = sign * parse_decimal(digits).ok_or_else(bad)? + 0.0;
        Ok(match unit {
            "pp" => Threshold::PercentagePoints(value),
            "%" if signed => Threshold::RelativePercent(value),
            "%" => Threshold::RatePercent(value),
            // A latency has no sign: "+50ms" would be a relative latency,
            // which the relative percent form already covers.
            _ if signed => return Err(bad()),
            "ms" => Threshold::LatencyMs(value),
            // Shift the decimal point in the text rather than multiply, so
            // "1.001s" is exactly 1001ms and prints back as written.
            _ => Threshold::LatencyMs(seconds_as_ms(digits).ok_or_else(bad)?),
        })
    }
}

/// `12`, `0.5`: digits with an optional fraction. Rust's own float parser
/// would also take `inf`, `NaN` and `1e3`, which the schema pattern does not.
fn parse_decimal(text: &str) -> Option<f64> {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, "0"));
    let digits = |s: &str| !s.is_empty() && s.len() <= 12 && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(whole) || !digits(fraction) {
        return None;
    }
    text.parse().ok()
}

/// `1.5` seconds as `1500.0` ms, by moving the decimal point three places.
fn seconds_as_ms(text: &str) -> Option<f64> {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    let split = fraction.len().min(3);
    let (to_whole, rest) = fraction.split_at(split);
    let ms = format!("{whole}{to_whole:0<3}.{rest}0");
    ms.parse().ok()
}

impl fmt::Display for Threshold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Threshold::RelativePercent(p) => write!(f, "{}{p}%", if p >= 0.0 { "+" } else { "" }),
            Threshold::RatePercent(p) => write!(f, "{p}%"),
            Threshold::PercentagePoints(p) => write!(f, "{}{p}pp", if p >= 0.0 { "+" } else { "" }),
            Threshold::LatencyMs(ms) => write!(f, "{ms}ms"),
            Threshold::Value(v) => write!(f, "{v}"),
        }
    }
}

/// A duration written as `30s`, `2m`, `1h`, `500ms` or combined (`1m30s`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Period {
    ms: u64,
}

impl Period {
    pub const fn from_ms(ms: u64) -> Self {
        Self { ms }
    }

    pub const fn as_ms(self) -> u64 {
        self.ms
    }
}

/// What the duration string may look like (also the schema's pattern).
pub const PERIOD_PATTERN: &str = r"^([0-9]+(ms|s|m|h))+$";
const PERIOD_EXPECTED: &str = r#"a duration like "30s", "2m", "1h" or "1m30s""#;

impl FromStr for Period {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || format!("{text:?} is not {PERIOD_EXPECTED}");
        let too_long = || format!("{text:?} is longer than the 7-day limit");
        let mut rest = text;
        let mut total_ms: u64 = 0;
        if rest.is_empty() {
            return Err(bad());
        }
        while !rest.is_empty() {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 || digits > 12 {
                return Err(bad());
            }
            let value: u64 = rest[..digits].parse().map_err(|_| bad())?;
            rest = &rest[digits..];
            let (unit_ms, unit_len) = if rest.starts_with("ms") {
                (1, 2)
            } else if rest.starts_with('s') {
                (1000, 1)
            } else if rest.starts_with('m') {
                (60_000, 1)
            } else if rest.starts_with('h') {
                (3_600_000, 1)
            } else {
                return Err(bad());
            };
            rest = &rest[unit_len..];
            total_ms = value
                .checked_mul(unit_ms)
                .and_then(|ms| total_ms.checked_add(ms))
                .ok_or_else(too_long)?;
        }
        if total_ms > PERIOD_MAX_MS {
            return Err(too_long());
        }
        Ok(Period { ms: total_ms })
    }
}

impl fmt::Display for Period {
    /// The largest unit that divides it exactly, so `90s` prints as `90s`
    /// and `120s` as `2m`: normalized output stays exact.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.ms;
        match ms {
            0 => write!(f, "0s"),
            _ if ms % 3_600_000 == 0 => write!(f, "{}h", ms / 3_600_000),
            _ if ms % 60_000 == 0 => write!(f, "{}m", ms / 60_000),
            _ if ms % 1000 == 0 => write!(f, "{}s", ms / 1000),
            _ => write!(f, "{ms}ms"),
        }
    }
}

/// Serde and schema for a type that users write as a string: parsed with
/// `FromStr`, written back with `Display`, described by a pattern.
macro_rules! string_form {
    ($type:ty, $name:literal, $description:literal, $pattern:expr, $expected:expr, $examples:expr) => {
        impl Serialize for $type {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $type {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct Visitor;
                impl serde::de::Visitor<'_> for Visitor {
                    type Value = $type;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str($expected)
                    }
                    fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<$type, E> {
                        text.parse().map_err(E::custom)
                    }
                    // `above: 0.2` is a YAML number, not a string.
                    fn visit_f64<E: serde::de::Error>(self, value: f64) -> Result<$type, E> {
                        self.visit_str(&value.to_string())
                    }
                    fn visit_u64<E: serde::de::Error>(self, value: u64) -> Result<$type, E> {
                        self.visit_str(&value.to_string())
                    }
                    fn visit_i64<E: serde::de::Error>(self, value: i64) -> Result<$type, E> {
                        self.visit_str(&value.to_string())
                    }
                }
                deserializer.deserialize_any(Visitor)
            }
        }

        impl JsonSchema for $type {
            fn schema_name() -> Cow<'static, str> {
                $name.into()
            }

            fn json_schema(_: &mut SchemaGenerator) -> Schema {
                json_schema!({
                    "type": "string",
                    "pattern": $pattern,
                    "description": $description,
                    "examples": $examples,
                })
            }
        }
    };
}

string_form!(
    Threshold,
    "Threshold",
    "\"+30%\": change relative to the baseline (any metric); \"5%\": absolute rate; \"+2pp\": percentage points vs the baseline's rate (rates); \"250ms\" or \"1.5s\": absolute latency (latencies).",
    THRESHOLD_PATTERN,
    THRESHOLD_EXPECTED,
    ["+30%", "5%", "+2pp", "250ms"]
);
string_form!(
    Period,
    "Duration",
    "A duration: whole numbers with units ms, s, m, h, combinable (\"1m30s\"); at most 7 days.",
    PERIOD_PATTERN,
    PERIOD_EXPECTED,
    ["30s", "2m", "1h", "1m30s"]
);

/// The policy's JSON Schema (draft 2020-12), generated from these types.
pub fn schema() -> Schema {
    schemars::schema_for!(Policy)
}

/// A field that failed [`Policy::check`]: its path and what is wrong.
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
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

impl std::error::Error for FieldError {}

impl Policy {
    /// Checks what serde cannot. Pure: a broken policy is only reported,
    /// never acted on. The first problem wins, in file order.
    pub fn check(&self) -> Result<(), FieldError> {
        check_name(&self.model).map_err(|m| FieldError::new("model", m))?;
        check_name(&self.candidate).map_err(|m| FieldError::new("candidate", m))?;
        if let Some(baseline) = &self.baseline {
            check_name(baseline).map_err(|m| FieldError::new("baseline", m))?;
            if baseline == &self.candidate {
                return Err(FieldError::new(
                    "baseline",
                    "the baseline must differ from the candidate",
                ));
            }
        }
        self.strategy.check()?;
        if let Some(sticky) = &self.sticky {
            match (&sticky.header, &sticky.cookie) {
                (Some(name), None) | (None, Some(name)) if is_token(name) => {}
                (Some(_), None) | (None, Some(_)) => {
                    return Err(FieldError::new(
                        "sticky",
                        "not a valid header or cookie name",
                    ))
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
            self.check_cohort(cohort)
                .map_err(|(field, m)| FieldError::new(format!("cohorts[{i}]{field}"), m))?;
        }
        if self.triggers.is_empty() {
            return Err(FieldError::new(
                "triggers",
                "at least one trigger is required: a rollout nothing can stop is not safe",
            ));
        }
        if self.triggers.len() > TRIGGERS_MAX {
            return Err(FieldError::new(
                "triggers",
                format!("at most {TRIGGERS_MAX} triggers"),
            ));
        }
        for (i, trigger) in self.triggers.iter().enumerate() {
            trigger
                .check()
                .map_err(|(field, m)| FieldError::new(format!("triggers[{i}].{field}"), m))?;
        }
        if self.max_auto_actions_per_hour == Some(0) {
            return Err(FieldError::new(
                "max_auto_actions_per_hour",
                "must be at least 1 (0 would forbid the automatic rollback)",
            ));
        }
        if let Some(confidence) = self.confidence {
            if !(0.5..=0.999_999).contains(&confidence) {
                return Err(FieldError::new(
                    "confidence",
                    "expected a probability between 0.5 and 0.999999, like 0.99",
                ));
            }
        }
        if self.waiting_for_traffic_deadline == Some(Period::from_ms(0)) {
            return Err(FieldError::new(
                "waiting_for_traffic_deadline",
                "must be longer than 0s",
            ));
        }
        if let Some(evidence) = &self.evidence {
            evidence.check()?;
        }
        if let Some(verification) = &self.verification {
            verification.check()?;
        }
        if let Some(rollback) = &self.rollback {
            rollback.check()?;
        }
        incident::check_hooks(&self.hooks)?;
        incident::check_receivers(&self.notify)?;
        if let Some(signals) = &self.signals {
            signals.check()?;
        }
        if let Some(fallback) = &self.fallback {
            fallback.check(self.signals.as_ref())?;
        }
        let has_output = self.signals.as_ref().is_some_and(|s| s.output.is_some());
        for (i, trigger) in self.triggers.iter().enumerate() {
            if trigger.metric.reads_output() && !has_output {
                return Err(FieldError::new(
                    format!("triggers[{i}].metric"),
                    format!(
                        "{} needs signals.output to say where the prediction is in an answer",
                        trigger.metric.name()
                    ),
                ));
            }
            if trigger.metric == Metric::FallbackRate && self.fallback.is_none() {
                return Err(FieldError::new(
                    format!("triggers[{i}].metric"),
                    "fallback_rate needs a `fallback` section",
                ));
            }
        }
        Ok(())
    }

    /// Whether the gateway must check and sketch inputs or read answers
    /// for this policy.
    pub fn reads_signals(&self) -> bool {
        self.signals.is_some()
            || self.fallback.is_some()
            || self
                .triggers
                .iter()
                .any(|t| t.metric.reads_input() || t.metric.reads_output())
    }

    /// Input features the triggers name (`null_rate`, `drift_psi`).
    pub fn features(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self
            .triggers
            .iter()
            .filter_map(|t| t.feature.as_deref())
            .collect();
        names.sort_unstable();
        names.dedup();
        names
    }

    /// The policy as the controller uses it: implied fields spelled out
    /// (`relative_to: baseline` on relative thresholds).
    pub fn normalized(mut self) -> Policy {
        for trigger in &mut self.triggers {
            if trigger.threshold().is_some_and(Threshold::is_relative) {
                trigger.relative_to = Some(RelativeTo::Baseline);
            }
        }
        self
    }

    /// Each trigger's share of the false-action budget `1 − confidence`
    /// (Bonferroni: the shares add up to the whole).
    pub fn alpha_per_trigger(&self) -> f64 {
        let confidence = self.confidence.unwrap_or(CONFIDENCE_DEFAULT);
        (1.0 - confidence) / self.triggers.len().max(1) as f64
    }

    /// Returns the failing field below `cohorts[i]` (e.g. `.version`).
    fn check_cohort(&self, cohort: &Cohort) -> Result<(), (&'static str, String)> {
        let known = cohort.version == self.candidate
            || self.baseline.as_deref() == Some(cohort.version.as_str());
        if !known {
            return Err((
                ".version",
                format!(
                    "unknown version {:?}: a cohort goes to the candidate ({:?}) or the baseline (set `baseline` to name it)",
                    cohort.version, self.candidate
                ),
            ));
        }
        match (&cohort.header, &cohort.key_range) {
            (Some(header), None) => {
                if !is_token(header) {
                    return Err((".header", "not a valid header name".into()));
                }
                if cohort.values.is_empty() {
                    return Err((".values", "a header cohort needs values".into()));
                }
            }
            (None, Some([from, to])) => {
                if from >= to || *to > KEY_BUCKETS {
                    return Err((
                        ".key_range",
                        format!("expected [from, to) with from < to <= {KEY_BUCKETS}"),
                    ));
                }
                if self.sticky.is_none() {
                    return Err((
                        ".key_range",
                        "a key_range cohort needs a sticky key (set `sticky`)".into(),
                    ));
                }
            }
            _ => {
                return Err((
                    "",
                    "a cohort has exactly one of `header` (with `values`) or `key_range`".into(),
                ))
            }
        }
        Ok(())
    }
}

impl Strategy {
    fn check(&self) -> Result<(), FieldError> {
        match self {
            Strategy::Canary(Canary {
                steps, approval, ..
            }) => {
                let at = |field: &str| format!("strategy.canary.{field}");
                if steps.is_empty() || steps.len() > STEPS_MAX {
                    return Err(FieldError::new(
                        at("steps"),
                        format!("expected 1 to {STEPS_MAX} steps, ending with 100"),
                    ));
                }
                let mut previous = 0.0;
                for (i, &step) in steps.iter().enumerate() {
                    // `!(a > b)` rather than `a <= b` so NaN is refused too.
                    if !(step > 0.0 && step <= 100.0) {
                        return Err(FieldError::new(
                            at(&format!("steps[{i}]")),
                            "a step is a percentage above 0 and at most 100",
                        ));
                    }
                    if i > 0 && step <= previous {
                        return Err(FieldError::new(
                            at(&format!("steps[{i}]")),
                            format!("steps must increase: {step} follows {previous}"),
                        ));
                    }
                    previous = step;
                }
                if previous != 100.0 {
                    return Err(FieldError::new(
                        at("steps"),
                        "the last step must be 100: a canary ends with all traffic on the candidate",
                    ));
                }
                for (i, gate) in approval.iter().enumerate() {
                    if !steps.contains(gate) {
                        return Err(FieldError::new(
                            at(&format!("approval[{i}]")),
                            format!("{gate} is not one of the steps"),
                        ));
                    }
                }
            }
            Strategy::BlueGreen(_) => {}
            Strategy::Shadow(Shadow {
                percent, duration, ..
            }) => {
                if !(*percent > 0.0 && *percent <= 100.0) {
                    return Err(FieldError::new(
                        "strategy.shadow.percent",
                        "must be above 0 and at most 100",
                    ));
                }
                if duration.as_ms() == 0 {
                    return Err(FieldError::new(
                        "strategy.shadow.duration",
                        "must be longer than 0s",
                    ));
                }
            }
            Strategy::Linear(Linear { step, interval }) => {
                let smallest = 100.0 / STEPS_MAX as f64;
                if !(*step >= smallest && *step <= 100.0) {
                    return Err(FieldError::new(
                        "strategy.linear.step",
                        format!("must be at least {smallest} (at most {STEPS_MAX} steps) and at most 100"),
                    ));
                }
                if interval.as_ms() == 0 {
                    return Err(FieldError::new(
                        "strategy.linear.interval",
                        "must be longer than 0s",
                    ));
                }
            }
        }
        Ok(())
    }
}

impl Trigger {
    /// The threshold, whichever side it is on.
    pub fn threshold(&self) -> Option<Threshold> {
        self.above.or(self.below)
    }

    /// A `drift_psi` trigger judged against the candidate's stored profile.
    pub fn against_profile(&self) -> bool {
        self.reference == Some(DriftReference::Profile)
    }

    /// Returns the failing field below `triggers[i]`.
    fn check(&self) -> Result<(), (&'static str, String)> {
        let (field, threshold) = match (self.above, self.below) {
            (Some(t), None) => ("above", t),
            (None, Some(t)) => ("below", t),
            (Some(_), Some(_)) => {
                return Err(("below", "set exactly one of `above` or `below`".into()))
            }
            (None, None) => {
                return Err((
                    "metric",
                    "a trigger needs a threshold: set `above` or `below`".into(),
                ))
            }
        };
        threshold.check_for(self.metric).map_err(|m| (field, m))?;
        for (name, value) in [
            ("feature", &self.feature),
            ("kpi", &self.kpi),
            ("query", &self.query),
        ] {
            let needed = self.metric.needs() == Some(name);
            match value {
                None if needed => {
                    return Err((name, format!("{} needs `{name}`", self.metric.name())))
                }
                Some(_) if !needed => {
                    return Err((name, format!("{} takes no `{name}`", self.metric.name())))
                }
                Some(text) if name == "query" && (text.trim().is_empty() || text.len() > 4096) => {
                    return Err((
                        name,
                        "expected a PromQL query of at most 4096 characters".into(),
                    ))
                }
                Some(text)
                    if name != "query"
                        && (text.is_empty() || text.len() > signals::FIELD_NAME_MAX) =>
                {
                    return Err((
                        name,
                        format!(
                            "expected a name of 1 to {} characters",
                            signals::FIELD_NAME_MAX
                        ),
                    ))
                }
                _ => {}
            }
        }
        if self.relative_to.is_some() && !threshold.is_relative() {
            return Err((
                "relative_to",
                format!(
                    "\"{threshold}\" is an absolute threshold, not compared with the baseline: drop `relative_to` or use a relative one like \"+30%\""
                ),
            ));
        }
        if self.reference.is_some() && self.metric != Metric::DriftPsi {
            return Err((
                "reference",
                format!(
                    "{} takes no `reference`: only drift_psi compares with a stored profile",
                    self.metric.name()
                ),
            ));
        }
        if self.min_sample == 0 {
            return Err((
                "min_sample",
                "must be at least 1: no data never counts as healthy".into(),
            ));
        }
        Ok(())
    }
}

/// Model, version and bundle names, as the registry accepts them.
fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?}: names are 1-128 characters of [A-Za-z0-9._-]"
        ))
    }
}

/// An HTTP token (RFC 9110): what header and cookie names are made of.
fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 256
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_parse_into_their_forms() {
        let parse = |s: &str| s.parse::<Threshold>();
        assert_eq!(parse("+30%"), Ok(Threshold::RelativePercent(30.0)));
        assert_eq!(parse("-12.5%"), Ok(Threshold::RelativePercent(-12.5)));
        assert_eq!(parse("5%"), Ok(Threshold::RatePercent(5.0)));
        assert_eq!(parse("0.5%"), Ok(Threshold::RatePercent(0.5)));
        assert_eq!(parse("+2pp"), Ok(Threshold::PercentagePoints(2.0)));
        assert_eq!(parse("2pp"), Ok(Threshold::PercentagePoints(2.0)));
        assert_eq!(parse("250ms"), Ok(Threshold::LatencyMs(250.0)));
        assert_eq!(parse("1.5s"), Ok(Threshold::LatencyMs(1500.0)));
        assert_eq!(parse("30"), Ok(Threshold::Value(30.0)));
        assert_eq!(parse("0.2"), Ok(Threshold::Value(0.2)));
        assert_eq!(parse("-1.5"), Ok(Threshold::Value(-1.5)));
        for bad in [
            "", "%", "+30", "+", "abc", "1e3", "inf", "NaN", "--1", "+250ms", "1e3ms", "inf%",
            "NaN%", "5 %", "1.%", ".5%", "5%%", "2m",
        ] {
            let error = parse(bad).unwrap_err();
            assert!(error.contains("is not a threshold like"), "{bad}: {error}");
        }
    }

    #[test]
    fn thresholds_print_as_they_parse() {
        for text in ["+30%", "-10%", "5%", "+2pp", "-1.5pp", "250ms"] {
            assert_eq!(text.parse::<Threshold>().unwrap().to_string(), text);
        }
        for (text, printed) in [
            ("1.5s", "1500ms"),
            ("1.001s", "1001ms"),
            ("0.0001s", "0.1ms"),
            ("2s", "2000ms"),
            ("-0%", "+0%"),
            ("-0pp", "+0pp"),
        ] {
            assert_eq!(text.parse::<Threshold>().unwrap().to_string(), printed);
        }
    }

    #[test]
    fn periods_parse_and_print() {
        let ms = |s: &str| s.parse::<Period>().map(Period::as_ms);
        assert_eq!(ms("500ms"), Ok(500));
        assert_eq!(ms("30s"), Ok(30_000));
        assert_eq!(ms("2m"), Ok(120_000));
        assert_eq!(ms("1h"), Ok(3_600_000));
        assert_eq!(ms("1m30s"), Ok(90_000));
        assert_eq!(ms("0s"), Ok(0));
        for bad in [
            "",
            "2",
            "m",
            "2d",
            "-1s",
            "1.5s",
            "2 m",
            "1s2",
            "999999999999999h",
        ] {
            assert!(ms(bad).is_err(), "{bad}");
        }
        assert!(ms("169h").unwrap_err().contains("7-day limit"));
        for (text, printed) in [
            ("0s", "0s"),
            ("90s", "90s"),
            ("120s", "2m"),
            ("1500ms", "1500ms"),
        ] {
            assert_eq!(text.parse::<Period>().unwrap().to_string(), printed);
        }
    }

    #[test]
    fn threshold_forms_must_fit_the_metric() {
        let check = |metric, t: &str| t.parse::<Threshold>().unwrap().check_for(metric);
        assert!(check(Metric::LatencyP95, "250ms").is_ok());
        assert!(check(Metric::LatencyP95, "+30%").is_ok());
        assert!(check(Metric::ErrorRate, "5%").is_ok());
        assert!(check(Metric::ErrorRate, "+2pp").is_ok());
        assert!(check(Metric::TimeoutRate, "+50%").is_ok());
        let error = check(Metric::ErrorRate, "250ms").unwrap_err();
        assert!(
            error.starts_with("expected a percentage like \"5%\""),
            "{error}"
        );
        let error = check(Metric::LatencyP99, "5%").unwrap_err();
        assert!(
            error.starts_with("expected a latency like \"250ms\""),
            "{error}"
        );
        assert!(error.contains("latency_p99"), "{error}");
        assert!(check(Metric::LatencyP99, "+2pp").is_err());
        assert!(check(Metric::ErrorRate, "101%").is_err());
        assert!(check(Metric::ErrorRate, "-100%").is_err());
        // Candidate-only rates take absolute thresholds.
        assert!(check(Metric::AgreementRate, "90%").is_ok());
        assert!(check(Metric::FallbackRate, "2%").is_ok());
        for (metric, t) in [
            (Metric::AgreementRate, "-5pp"),
            (Metric::FallbackRate, "+50%"),
        ] {
            let error = check(metric, t).unwrap_err();
            assert!(error.contains("candidate only"), "{error}");
        }
    }

    #[test]
    fn schema_lists_metrics_and_describes_strings() {
        let schema = serde_json::to_string(&schema()).unwrap();
        for metric in Metric::ALL {
            assert!(
                schema.contains(&format!("\"{}\"", metric.name())),
                "{metric:?}"
            );
        }
        assert!(schema.contains(&serde_json::to_string(THRESHOLD_PATTERN).unwrap()));
        assert!(schema.contains(&serde_json::to_string(PERIOD_PATTERN).unwrap()));
    }

    #[test]
    fn graduated_rollback_parses_and_names_its_fields() {
        let parse = |rollback: serde_json::Value| {
            serde_json::from_value::<Policy>(serde_json::json!({
                "model": "m",
                "candidate": "v2",
                "strategy": { "canary": { "steps": [5, 100], "bake": "1m" } },
                "triggers": [{ "metric": "error_rate", "above": "5%", "severity": "warning", "action": "rollback" }],
                "rollback": rollback,
            }))
        };
        let policy = parse(serde_json::json!({ "graduated": {} })).unwrap();
        policy.check().unwrap();
        let graduated = policy.rollback.unwrap().graduated.unwrap();
        assert_eq!(graduated.steps, vec![25.0, 5.0]);
        assert_eq!(graduated.hold.as_ms(), 10_000);
        let policy =
            parse(serde_json::json!({ "graduated": { "steps": [25, 50], "hold": "10s" } }));
        assert_eq!(
            policy.unwrap().check().unwrap_err().path,
            "rollback.graduated.steps[1]"
        );
        let error = parse(serde_json::json!({ "graduated": { "step": [25] } })).unwrap_err();
        assert!(
            error.to_string().contains("unknown field `step`"),
            "{error}"
        );
        let schema = serde_json::to_string(&schema()).unwrap();
        assert!(schema.contains("\"graduated\""), "{schema}");
    }

    #[test]
    fn reference_profile_is_for_drift_psi_only() {
        let parse = |triggers: serde_json::Value| {
            serde_json::from_value::<Policy>(serde_json::json!({
                "model": "m",
                "candidate": "v2",
                "strategy": { "canary": { "steps": [5, 100], "bake": "1m" } },
                "triggers": triggers,
            }))
            .unwrap()
        };
        let policy = parse(serde_json::json!([
            { "metric": "error_rate", "above": "5%", "action": "rollback" },
            { "metric": "drift_psi", "feature": "amount", "above": "0.2", "reference": "profile", "action": "rollback" },
            { "metric": "drift_psi", "feature": "amount", "above": "0.2", "reference": "baseline", "action": "rollback" },
        ]));
        policy.check().unwrap();
        assert!(policy.triggers[1].against_profile());
        assert!(!policy.triggers[2].against_profile());
        assert!(!policy.triggers[0].against_profile());
        let policy = parse(serde_json::json!([
            { "metric": "error_rate", "above": "5%", "action": "rollback" },
            { "metric": "drift_psi", "feature": "amount", "above": "0.2", "action": "rollback" },
            { "metric": "null_rate", "feature": "amount", "above": "5%", "reference": "profile", "action": "rollback" },
        ]));
        let error = policy.check().unwrap_err();
        assert_eq!(error.path, "triggers[2].reference");
        assert!(
            error.message.contains("null_rate takes no `reference`"),
            "{error:?}"
        );
        let bad = serde_json::from_value::<Policy>(serde_json::json!({
            "model": "m", "candidate": "v2",
            "strategy": { "canary": { "steps": [100], "bake": "1m" } },
            "triggers": [{ "metric": "drift_psi", "feature": "a", "above": "0.2", "reference": "training", "action": "rollback" }],
        }));
        assert!(bad
            .unwrap_err()
            .to_string()
            .contains("unknown variant `training`"));
        let schema = serde_json::to_string(&schema()).unwrap();
        assert!(schema.contains("\"profile\""), "{schema}");
    }

    #[test]
    fn metric_names_match_serde() {
        for metric in Metric::ALL {
            assert_eq!(
                serde_json::to_value(metric).unwrap(),
                serde_json::Value::from(metric.name())
            );
        }
    }
}
