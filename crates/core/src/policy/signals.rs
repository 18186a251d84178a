//! What the gateway reads from a model's requests and answers, as the policy
//! declares it: the sampled input checks and sketches behind the data
//! quality and drift triggers, where the prediction sits in an answer, the
//! mirror sample that measures agreement in a canary, and the per-request
//! fallback to the baseline.
//!
//! All optional: a policy whose triggers are about latency and errors only
//! costs the gateway nothing here.

use super::FieldError;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Longest field or tensor name a policy may point at.
pub const FIELD_NAME_MAX: usize = 256;

/// Model-aware signals the gateway gathers while the rollout runs.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Signals {
    /// Share of requests (each version) whose input is checked against the
    /// version's signature and sketched, in percent. Default 100: the
    /// check costs about a microsecond (BENCHMARKS.md); lower it for very
    /// large bodies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample_percent: Option<f64>,
    /// Where the prediction is in an answer, for `prediction_shift`,
    /// `confidence_mean`, `agreement_rate`, `accuracy` and the confidence
    /// floor of `fallback`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Output>,
    /// Canary: share of the candidate's requests also sent to the baseline
    /// (its answer thrown away) to measure `agreement_rate`. Shadow
    /// rollouts compare every mirrored request. Default 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror_percent: Option<f64>,
}

impl Signals {
    pub fn sample_percent(&self) -> f64 {
        self.sample_percent.unwrap_or(100.0)
    }

    pub fn mirror_percent(&self) -> f64 {
        self.mirror_percent.unwrap_or(0.0)
    }

    pub(super) fn check(&self) -> Result<(), FieldError> {
        let at = |field: &str, message: &str| FieldError::new(format!("signals.{field}"), message);
        for (field, value) in [
            ("sample_percent", self.sample_percent),
            ("mirror_percent", self.mirror_percent),
        ] {
            if value.is_some_and(|p| !(0.0..=100.0).contains(&p)) {
                return Err(at(field, "expected a percentage between 0 and 100"));
            }
        }
        if let Some(output) = &self.output {
            output
                .check()
                .map_err(|(f, m)| at(&format!("output.{f}"), &m))?;
        }
        Ok(())
    }
}

/// The prediction in an answer: an OIP output tensor (by `name`) or a
/// top-level field of a plain JSON answer.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Output {
    /// The output tensor or JSON field that holds the prediction.
    pub field: String,
    /// What its value is.
    pub kind: OutputKind,
    /// A separate tensor or field holding the confidence (0..1), when the
    /// prediction is a `label`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confidence_field: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OutputKind {
    /// Class probabilities: the class is the index of the largest, the
    /// confidence is that probability.
    Probabilities,
    /// A class label (string, integer or boolean).
    Label,
    /// A number (a score or a regression output).
    Score,
}

impl Output {
    fn check(&self) -> Result<(), (&'static str, String)> {
        let named = |name: &str| !name.is_empty() && name.len() <= FIELD_NAME_MAX;
        if !named(&self.field) {
            return Err((
                "field",
                format!("expected a tensor or field name of 1 to {FIELD_NAME_MAX} characters"),
            ));
        }
        if let Some(confidence) = &self.confidence_field {
            if !named(confidence) {
                return Err((
                    "confidence_field",
                    format!("expected a tensor or field name of 1 to {FIELD_NAME_MAX} characters"),
                ));
            }
            if self.kind == OutputKind::Probabilities {
                return Err((
                    "confidence_field",
                    "probabilities carry their own confidence (the largest); drop confidence_field"
                        .into(),
                ));
            }
        }
        Ok(())
    }
}

/// Per-request fallback: a candidate answer that failed, or was not
/// confident enough, is replaced by the baseline's answer to the same
/// request. Declare it only for models whose calls are idempotent
/// (inference usually is): the request is sent twice.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Fallback {
    /// Which candidate failures are answered by the baseline. Default: all.
    #[serde(default = "FallbackReason::all")]
    pub on: Vec<FallbackReason>,
    /// Also fall back when the answer's confidence (see `signals.output`)
    /// is below this, in 0..1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confidence_below: Option<f64>,
}

/// Why a candidate answer was replaced.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum FallbackReason {
    /// A 5xx answer (or a gRPC status that blames the server).
    ServerError,
    Timeout,
    /// No connection to any of the candidate's endpoints.
    ConnectError,
    /// The answer is not what `signals.output` says it holds.
    InvalidOutput,
    /// Below `confidence_below`.
    LowConfidence,
}

impl FallbackReason {
    pub const ALL: [FallbackReason; 5] = [
        FallbackReason::ServerError,
        FallbackReason::Timeout,
        FallbackReason::ConnectError,
        FallbackReason::InvalidOutput,
        FallbackReason::LowConfidence,
    ];

    fn all() -> Vec<FallbackReason> {
        Self::ALL.to_vec()
    }

    pub fn name(self) -> &'static str {
        match self {
            FallbackReason::ServerError => "server_error",
            FallbackReason::Timeout => "timeout",
            FallbackReason::ConnectError => "connect_error",
            FallbackReason::InvalidOutput => "invalid_output",
            FallbackReason::LowConfidence => "low_confidence",
        }
    }
}

impl Fallback {
    pub fn covers(&self, reason: FallbackReason) -> bool {
        self.on.contains(&reason)
    }

    pub(super) fn check(&self, signals: Option<&Signals>) -> Result<(), FieldError> {
        let at = |field: &str, message: &str| FieldError::new(format!("fallback.{field}"), message);
        if self.on.is_empty() {
            return Err(at("on", "name at least one reason, or drop `fallback`"));
        }
        let has_output = signals.is_some_and(|s| s.output.is_some());
        if let Some(floor) = self.confidence_below {
            if !(0.0..=1.0).contains(&floor) {
                return Err(at(
                    "confidence_below",
                    "expected a confidence between 0 and 1",
                ));
            }
            if !has_output {
                return Err(at(
                    "confidence_below",
                    "needs signals.output to say where the confidence is",
                ));
            }
        }
        let reads_output = self.on.contains(&FallbackReason::InvalidOutput)
            || self.on.contains(&FallbackReason::LowConfidence) && self.confidence_below.is_some();
        if reads_output && !has_output && self.on != FallbackReason::all() {
            return Err(at(
                "on",
                "invalid_output needs signals.output to say what a valid answer holds",
            ));
        }
        Ok(())
    }
}
