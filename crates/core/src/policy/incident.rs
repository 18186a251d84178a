//! What a rollback does besides the swap, as the policy declares it: which
//! evidence is kept (and what is redacted from it), how recovery is
//! verified, which HTTP hooks run and who is told.
//!
//! Every part is optional with a sensible default, so a policy without any
//! of it still opens a complete incident.

use super::{check_name, FieldError, Period, Severity, Threshold, PERIOD_MAX_MS};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Most request/response pairs kept per version.
pub const SAMPLES_MAX: usize = 10_000;
/// Most hooks and receivers per policy.
pub const HOOKS_MAX: usize = 16;
pub const RECEIVERS_MAX: usize = 16;

/// Request/response samples the gateway keeps per version while the
/// rollout runs, frozen into the incident at the verdict.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Evidence {
    /// Share of requests sampled, in percent (0 turns sampling off).
    #[serde(default = "default_sample_percent")]
    pub sample_percent: f64,
    /// Pairs kept per version (a ring: the newest replace the oldest).
    #[serde(default = "default_samples")]
    pub samples: usize,
    /// JSON fields (any depth) and OIP tensors (by `name`) whose values
    /// are replaced by `"[redacted]"` before a sample is kept.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub redact: Vec<String>,
    /// Fields and tensors whose values are replaced by a keyed SHA-256
    /// (equal values stay equal within one process, for correlation).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hash: Vec<String>,
}

impl Default for Evidence {
    fn default() -> Self {
        Self {
            sample_percent: default_sample_percent(),
            samples: default_samples(),
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

/// After the swap, the baseline must serve within its own pre-rollout
/// figures for `window`, or the incident says "not recovered" and escalates.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Verification {
    #[serde(default = "default_verification_window")]
    pub window: Period,
    /// Largest change of the baseline's p95 latency vs its pre-rollout
    /// value, as `"+20%"`.
    #[serde(default = "default_latency_slack")]
    pub latency_p95: Threshold,
    /// A p95 within this much of its pre-rollout value always passes, so
    /// noise at millisecond latencies is not called a failed recovery.
    #[serde(default = "default_latency_tolerance")]
    pub latency_tolerance: Period,
    /// Largest change of the baseline's error rate vs its pre-rollout
    /// value, as `"+1pp"` or `"+50%"`.
    #[serde(default = "default_error_slack")]
    pub error_rate: Threshold,
    /// Baseline requests needed in the window to call it recovered; fewer
    /// is reported as "no traffic", never as recovered.
    #[serde(default = "default_verification_sample")]
    #[schemars(range(min = 1))]
    pub min_sample: u64,
}

impl Default for Verification {
    fn default() -> Self {
        Self {
            window: default_verification_window(),
            latency_p95: default_latency_slack(),
            latency_tolerance: default_latency_tolerance(),
            error_rate: default_error_slack(),
            min_sample: default_verification_sample(),
        }
    }
}

fn default_verification_window() -> Period {
    Period::from_ms(60_000)
}

fn default_latency_slack() -> Threshold {
    Threshold::RelativePercent(20.0)
}

fn default_latency_tolerance() -> Period {
    Period::from_ms(5)
}

fn default_error_slack() -> Threshold {
    Threshold::PercentagePoints(1.0)
}

fn default_verification_sample() -> u64 {
    100
}

/// Most steps of a graduated rollback.
pub const RAMP_STEPS_MAX: usize = 10;

/// How traffic goes back to the baseline on a verdict. Default: all at
/// once, for every verdict.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Rollback {
    /// Ramp traffic back in steps for `severity: warning` rollback
    /// triggers, watching the baseline on the way; critical triggers,
    /// operator rollbacks and shadow rejections always swap at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub graduated: Option<Graduated>,
}

/// A graduated rollback: the candidate's share steps down through `steps`,
/// each held for `hold`, then the swap to 0%. If the baseline misbehaves on
/// the way (beyond the `verification` slack of its own figures before the
/// ramp) the swap happens at once.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Graduated {
    /// The candidate's share at each step, percent, strictly decreasing,
    /// each above 0 and below 100. Steps at or above the candidate's share
    /// at the verdict are skipped.
    #[serde(default = "default_ramp_steps")]
    pub steps: Vec<f64>,
    /// How long each step is held.
    #[serde(default = "default_ramp_hold")]
    pub hold: Period,
}

impl Default for Graduated {
    fn default() -> Self {
        Self {
            steps: default_ramp_steps(),
            hold: default_ramp_hold(),
        }
    }
}

fn default_ramp_steps() -> Vec<f64> {
    vec![25.0, 5.0]
}

fn default_ramp_hold() -> Period {
    Period::from_ms(10_000)
}

impl Rollback {
    pub(super) fn check(&self) -> Result<(), FieldError> {
        let Some(graduated) = &self.graduated else {
            return Ok(());
        };
        let at = |field: &str, message: String| {
            FieldError::new(format!("rollback.graduated.{field}"), message)
        };
        let steps = &graduated.steps;
        if steps.is_empty() || steps.len() > RAMP_STEPS_MAX {
            return Err(at(
                "steps",
                format!("expected 1 to {RAMP_STEPS_MAX} steps, like [25, 5]"),
            ));
        }
        for (i, &step) in steps.iter().enumerate() {
            // `!(a < b)` rather than `a >= b` so NaN is refused too.
            if !(step > 0.0 && step < 100.0) {
                return Err(at(
                    &format!("steps[{i}]"),
                    "a step is the candidate's share, above 0 and below 100".into(),
                ));
            }
            if i > 0 && step >= steps[i - 1] {
                return Err(at(
                    &format!("steps[{i}]"),
                    format!("steps must decrease: {step} follows {}", steps[i - 1]),
                ));
            }
        }
        let hold = graduated.hold.as_ms();
        if !(1000..=PERIOD_MAX_MS).contains(&hold) {
            return Err(at("hold", "must be at least 1s and at most 7 days".into()));
        }
        Ok(())
    }
}

/// An HTTP call made after a rollback (cache invalidation, feature flag
/// off, a downstream system told). It runs beside the rollback, never
/// before it: a failing hook is recorded, and changes nothing else.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Hook {
    pub name: String,
    /// `http://` or `https://`; the body is the incident summary as JSON.
    pub url: String,
    #[serde(default = "default_method")]
    pub method: String,
    /// Per attempt.
    #[serde(default = "default_hook_timeout")]
    pub timeout: Period,
    /// Attempts after the first, with exponential back-off.
    #[serde(default = "default_hook_retries")]
    #[schemars(range(max = 10))]
    pub retries: u32,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}

fn default_method() -> String {
    "POST".into()
}

fn default_hook_timeout() -> Period {
    Period::from_ms(5_000)
}

fn default_hook_retries() -> u32 {
    2
}

/// Where notifications go. Which severities a receiver takes is how a
/// policy says "page" (critical) versus "ticket" (warning).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Receiver {
    pub name: String,
    /// The webhook address. Exactly one of `url` or `url_env`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The environment variable of the server that holds the address, so
    /// a secret (a Slack webhook) never sits in the policy or the store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_env: Option<String>,
    #[serde(default)]
    pub format: WebhookFormat,
    /// Severities sent here; default both.
    #[serde(default = "all_severities")]
    pub severities: Vec<Severity>,
}

fn all_severities() -> Vec<Severity> {
    vec![Severity::Critical, Severity::Warning]
}

/// The payload shape a receiver understands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum WebhookFormat {
    /// Backstop's own JSON document.
    #[default]
    Json,
    /// A Slack incoming webhook (`{"text": ..., "blocks": [...]}`).
    Slack,
    /// Alertmanager's `POST /api/v2/alerts` (a list of alerts), so its
    /// routing, grouping and dedupe apply.
    Alertmanager,
}

impl WebhookFormat {
    pub fn name(self) -> &'static str {
        match self {
            WebhookFormat::Json => "json",
            WebhookFormat::Slack => "slack",
            WebhookFormat::Alertmanager => "alertmanager",
        }
    }
}

impl Evidence {
    pub(super) fn check(&self) -> Result<(), FieldError> {
        let at =
            |field: &str, message: String| FieldError::new(format!("evidence.{field}"), message);
        if !(0.0..=100.0).contains(&self.sample_percent) {
            return Err(at(
                "sample_percent",
                "expected a percentage between 0 and 100".into(),
            ));
        }
        if self.samples == 0 || self.samples > SAMPLES_MAX {
            return Err(at(
                "samples",
                format!("expected between 1 and {SAMPLES_MAX} pairs per version"),
            ));
        }
        for (list, names) in [("redact", &self.redact), ("hash", &self.hash)] {
            for (i, name) in names.iter().enumerate() {
                if name.is_empty() || name.len() > 256 {
                    return Err(at(
                        &format!("{list}[{i}]"),
                        "a field name is 1-256 characters".into(),
                    ));
                }
            }
        }
        if let Some(both) = self.redact.iter().find(|n| self.hash.contains(n)) {
            return Err(at(
                "hash",
                format!("{both:?} is also in `redact`: a field is either redacted or hashed"),
            ));
        }
        Ok(())
    }
}

impl Verification {
    pub(super) fn check(&self) -> Result<(), FieldError> {
        let at = |field: &str, message: &str| {
            FieldError::new(format!("verification.{field}"), message.to_string())
        };
        if self.window.as_ms() < 1000 {
            return Err(at("window", "must be at least 1s"));
        }
        match self.latency_p95 {
            Threshold::RelativePercent(p) if p >= 0.0 => {}
            _ => {
                return Err(at(
                    "latency_p95",
                    "expected an allowed increase vs the pre-rollout value, like \"+20%\"",
                ))
            }
        }
        match self.error_rate {
            Threshold::RelativePercent(p) | Threshold::PercentagePoints(p) if p >= 0.0 => {}
            _ => return Err(at(
                "error_rate",
                "expected an allowed increase vs the pre-rollout value, like \"+1pp\" or \"+50%\"",
            )),
        }
        if self.min_sample == 0 {
            return Err(at("min_sample", "must be at least 1"));
        }
        Ok(())
    }
}

/// `http://host...` or `https://host...`, no spaces: what a hook or
/// receiver may call.
fn check_url(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| format!("{url:?} is not an http:// or https:// address"))?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if host.is_empty() || url.len() > 2048 || url.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(format!("{url:?} is not a valid address"));
    }
    Ok(())
}

pub(super) fn check_hooks(hooks: &[Hook]) -> Result<(), FieldError> {
    if hooks.len() > HOOKS_MAX {
        return Err(FieldError::new(
            "hooks",
            format!("at most {HOOKS_MAX} hooks"),
        ));
    }
    for (i, hook) in hooks.iter().enumerate() {
        let at =
            |field: &str, message: String| FieldError::new(format!("hooks[{i}].{field}"), message);
        check_name(&hook.name).map_err(|m| at("name", m))?;
        if hooks[..i].iter().any(|h| h.name == hook.name) {
            return Err(at("name", format!("{:?} is used twice", hook.name)));
        }
        check_url(&hook.url).map_err(|m| at("url", m))?;
        if !matches!(
            hook.method.as_str(),
            "POST" | "PUT" | "PATCH" | "DELETE" | "GET"
        ) {
            return Err(at(
                "method",
                format!(
                    "{:?}: expected POST, PUT, PATCH, DELETE or GET",
                    hook.method
                ),
            ));
        }
        if hook.timeout.as_ms() == 0 || hook.timeout.as_ms() > 60_000 {
            return Err(at("timeout", "expected between 1ms and 60s".into()));
        }
        if hook.retries > 10 {
            return Err(at("retries", "at most 10".into()));
        }
        for (name, value) in &hook.headers {
            let valid_name = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
            if !valid_name || value.bytes().any(|b| b == b'\r' || b == b'\n') {
                return Err(at(&format!("headers.{name}"), "not a valid header".into()));
            }
        }
    }
    Ok(())
}

pub(super) fn check_receivers(receivers: &[Receiver]) -> Result<(), FieldError> {
    if receivers.len() > RECEIVERS_MAX {
        return Err(FieldError::new(
            "notify",
            format!("at most {RECEIVERS_MAX} receivers"),
        ));
    }
    for (i, receiver) in receivers.iter().enumerate() {
        let at =
            |field: &str, message: String| FieldError::new(format!("notify[{i}].{field}"), message);
        check_name(&receiver.name).map_err(|m| at("name", m))?;
        if receivers[..i].iter().any(|r| r.name == receiver.name) {
            return Err(at("name", format!("{:?} is used twice", receiver.name)));
        }
        match (&receiver.url, &receiver.url_env) {
            (Some(url), None) => check_url(url).map_err(|m| at("url", m))?,
            (None, Some(var)) => {
                let valid = !var.is_empty()
                    && var.len() <= 128
                    && var.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
                if !valid {
                    return Err(at(
                        "url_env",
                        format!("{var:?} is not an environment variable name"),
                    ));
                }
            }
            _ => return Err(at("url", "set exactly one of `url` or `url_env`".into())),
        }
        if receiver.severities.is_empty() {
            return Err(at(
                "severities",
                "a receiver needs at least one severity (critical pages, warning tickets)".into(),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Evidence::default().check().unwrap();
        Verification::default().check().unwrap();
        Rollback::default().check().unwrap();
        Rollback {
            graduated: Some(Graduated::default()),
        }
        .check()
        .unwrap();
    }

    #[test]
    fn graduated_rollback_steps_decrease_within_0_and_100() {
        let check = |steps: Vec<f64>, hold_ms: u64| {
            Rollback {
                graduated: Some(Graduated {
                    steps,
                    hold: Period::from_ms(hold_ms),
                }),
            }
            .check()
            .map_err(|e| e.path)
        };
        assert_eq!(check(vec![50.0, 25.0, 5.0, 1.0], 1000), Ok(()));
        let steps = "rollback.graduated.steps";
        assert_eq!(check(vec![], 10_000), Err(steps.to_string()));
        assert_eq!(check(vec![9.0; 11], 10_000), Err(steps.to_string()));
        assert_eq!(check(vec![25.0, 25.0], 10_000), Err(format!("{steps}[1]")));
        assert_eq!(check(vec![5.0, 25.0], 10_000), Err(format!("{steps}[1]")));
        assert_eq!(check(vec![100.0], 10_000), Err(format!("{steps}[0]")));
        assert_eq!(check(vec![25.0, 0.0], 10_000), Err(format!("{steps}[1]")));
        assert_eq!(check(vec![f64::NAN], 10_000), Err(format!("{steps}[0]")));
        let hold = "rollback.graduated.hold".to_string();
        assert_eq!(check(vec![25.0], 999), Err(hold.clone()));
        assert_eq!(check(vec![25.0], PERIOD_MAX_MS + 1), Err(hold));
    }

    #[test]
    fn bad_values_name_their_field() {
        let evidence = Evidence {
            sample_percent: 101.0,
            ..Evidence::default()
        };
        assert_eq!(
            evidence.check().unwrap_err().path,
            "evidence.sample_percent"
        );
        let evidence = Evidence {
            redact: vec!["ssn".into()],
            hash: vec!["ssn".into()],
            ..Evidence::default()
        };
        assert_eq!(evidence.check().unwrap_err().path, "evidence.hash");
        let verification = Verification {
            latency_p95: Threshold::LatencyMs(100.0),
            ..Verification::default()
        };
        assert_eq!(
            verification.check().unwrap_err().path,
            "verification.latency_p95"
        );
        let hook = Hook {
            name: "flags".into(),
            url: "ftp://x".into(),
            method: default_method(),
            timeout: default_hook_timeout(),
            retries: 1,
            headers: BTreeMap::new(),
        };
        assert_eq!(check_hooks(&[hook]).unwrap_err().path, "hooks[0].url");
        let receiver = Receiver {
            name: "pager".into(),
            url: Some("http://127.0.0.1:1/".into()),
            url_env: Some("PAGER".into()),
            format: WebhookFormat::Alertmanager,
            severities: all_severities(),
        };
        assert_eq!(
            check_receivers(&[receiver]).unwrap_err().path,
            "notify[0].url"
        );
    }
}
