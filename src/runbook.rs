//! `backstop runbook MODEL`: the one-page plan for a model's current policy,
//! for the on-call engineer: what stops the rollout (in words), what
//! Backstop does by itself, the exact commands to roll back by hand, how
//! recovery is verified, who is told and where the evidence goes.
//!
//! Built from the policy alone (pure), so it renders the same from a file
//! or from the server's rollout. Sections a policy leaves out are shown
//! with their effective defaults, and say so. Secrets never appear: a
//! receiver's `url_env` is shown by name, addresses only as
//! `scheme://host/…`, hook headers by name only.

use backstop_core::controller::{plan, strategy_name};
use backstop_core::policy::{
    Action, Evidence, Metric, Policy, Receiver, Severity, Strategy, Threshold, Trigger,
    Verification, CONFIDENCE_DEFAULT,
};
use serde::Serialize;

/// The runbook. Field names are part of `backstop runbook --output json`:
/// keep them stable.
#[derive(Clone, Debug, Serialize)]
pub struct Runbook {
    pub model: String,
    /// Where the policy came from: a rollout on the server or a file.
    pub policy_source: String,
    pub candidate: String,
    /// The version traffic returns to.
    pub baseline: String,
    /// Things the reader must know first (a policy for another model, no
    /// receivers, a trigger-less fault class).
    pub warnings: Vec<String>,
    pub strategy: StrategyText,
    pub triggers: Vec<TriggerText>,
    /// What happens without anyone doing anything, in order.
    pub automatic: Vec<String>,
    /// Environment to set, then the commands, in order.
    pub manual_rollback: ManualRollback,
    pub verification: VerificationText,
    pub notifications: Notifications,
    pub hooks: Vec<HookText>,
    pub evidence: EvidenceText,
}

#[derive(Clone, Debug, Serialize)]
pub struct StrategyText {
    /// `canary`, `linear`, `blue_green` or `shadow`.
    pub name: String,
    /// The strategy in plain words.
    pub summary: String,
    /// Each stage in plain words, in order.
    pub stages: Vec<String>,
    /// Sticky key and cohorts, in words (empty when none).
    pub routing: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct TriggerText {
    /// As the policy says it: `latency_p95 above +30% vs baseline for 5m`.
    pub rule: String,
    /// The rule in plain words.
    pub words: String,
    /// `rollback`, `pause` or `notify`.
    pub action: String,
    /// `critical` (pages) or `warning` (ticket).
    pub severity: String,
    pub min_sample: u64,
    /// How long the breach must last (`0s`: the first confident verdict).
    #[serde(rename = "for")]
    pub for_period: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct ManualRollback {
    /// `export` lines for the admin address and token.
    pub setup: Vec<String>,
    pub steps: Vec<CommandStep>,
}

#[derive(Clone, Debug, Serialize)]
pub struct CommandStep {
    /// What the step is for.
    pub what: String,
    pub command: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct VerificationText {
    pub window: String,
    /// Largest allowed change of the baseline's p95 vs its pre-rollout value.
    pub latency_p95: String,
    /// Largest allowed change of the baseline's error rate.
    pub error_rate: String,
    pub min_sample: u64,
    /// The policy has no `verification` section: these are the defaults.
    pub defaulted: bool,
    pub words: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Notifications {
    pub receivers: Vec<ReceiverText>,
    /// Who gets what, in words (also when nobody does).
    pub words: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct ReceiverText {
    pub name: String,
    /// `json`, `slack` or `alertmanager`.
    pub format: String,
    /// `$VARIABLE (on the server)` or `scheme://host/…`: never the secret.
    pub target: String,
    pub severities: Vec<String>,
    /// Takes critical incidents: a page.
    pub page: bool,
    /// Takes warnings: a ticket.
    pub ticket: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct HookText {
    pub name: String,
    pub method: String,
    /// `scheme://host/…`.
    pub target: String,
    pub timeout: String,
    pub retries: u32,
    /// Header names only: their values may be credentials.
    pub headers: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct EvidenceText {
    pub sample_percent: f64,
    /// Request/response pairs kept per version.
    pub samples: usize,
    pub redact: Vec<String>,
    pub hash: Vec<String>,
    /// The policy has no `evidence` section: these are the defaults.
    pub defaulted: bool,
    /// What an incident holds and where to find it, in words.
    pub words: Vec<String>,
}

/// Where the CLI reaches the admin API: shown in the runbook's commands.
pub struct Admin<'a> {
    /// The admin URL the commands should use.
    pub url: &'a str,
}

/// The runbook for `model` under `policy`.
pub fn build(model: &str, policy: &Policy, policy_source: &str, admin: &Admin) -> Runbook {
    // A policy may leave the baseline to the rollout's start.
    let baseline = policy
        .baseline
        .clone()
        .unwrap_or_else(|| "the last-known-good (LKG)".into());
    let shadow = matches!(policy.strategy, Strategy::Shadow(_));
    let mut warnings = Vec::new();
    if policy.model != model {
        warnings.push(format!(
            "The policy names model {:?}, not {model:?}: check that it is the right file.",
            policy.model
        ));
    }
    if policy.notify.is_empty() {
        warnings.push(
            "No notification receivers: Backstop tells nobody by itself. Watch `backstop rollout status` and the audit log."
                .into(),
        );
    }
    for (fault, metrics) in FAULT_METRICS {
        let watched = policy.triggers.iter().any(|t| {
            t.action == Action::Rollback && t.above.is_some() && metrics.contains(&t.metric)
        });
        if !watched {
            warnings.push(format!(
                "No rollback trigger watches {fault}: Backstop will not roll back by itself when only that goes wrong."
            ));
        }
    }
    let verification = policy.verification.clone();
    let evidence = policy.evidence.clone();
    Runbook {
        model: model.to_string(),
        policy_source: policy_source.to_string(),
        candidate: policy.candidate.clone(),
        baseline: policy
            .baseline
            .clone()
            .unwrap_or_else(|| "last-known-good (resolved when the rollout starts)".into()),
        warnings,
        strategy: strategy_text(model, policy),
        triggers: policy.triggers.iter().map(trigger_text).collect(),
        automatic: automatic(model, policy, &baseline, shadow),
        manual_rollback: manual_rollback(model, admin, shadow),
        verification: verification_text(verification.as_ref()),
        notifications: notifications(&policy.notify),
        hooks: policy
            .hooks
            .iter()
            .map(|h| HookText {
                name: h.name.clone(),
                method: h.method.clone(),
                target: shown_url(&h.url),
                timeout: h.timeout.to_string(),
                retries: h.retries,
                headers: h.headers.keys().cloned().collect(),
            })
            .collect(),
        evidence: evidence_text(model, evidence.as_ref()),
    }
}

/// The kinds of fault a rehearsal injects and the metrics that see each
/// (a timeout is a failure and slower than any latency bound).
pub const FAULT_METRICS: [(&str, &[Metric]); 3] = [
    (
        "latency",
        &[Metric::LatencyP50, Metric::LatencyP95, Metric::LatencyP99],
    ),
    ("errors", &[Metric::ErrorRate]),
    (
        "timeouts",
        &[
            Metric::TimeoutRate,
            Metric::ErrorRate,
            Metric::LatencyP95,
            Metric::LatencyP99,
        ],
    ),
];

fn strategy_text(model: &str, policy: &Policy) -> StrategyText {
    let stages = plan(&policy.strategy);
    let gate_note =
        format!(" — waits for `backstop rollout approve {model}` (approver) before it starts");
    let summary = match &policy.strategy {
        Strategy::Canary(c) => format!(
            "Canary: the candidate answers a growing share of live traffic in {} steps ({}), each held {} while the triggers judge it.",
            c.steps.len(),
            c.steps.iter().map(|s| format!("{s}%")).collect::<Vec<_>>().join(" → "),
            c.bake
        ),
        Strategy::Linear(l) => format!(
            "Linear: the candidate's share grows by {}% every {} until it answers all traffic ({} steps).",
            l.step,
            l.interval,
            stages.len()
        ),
        Strategy::BlueGreen(b) => format!(
            "Blue/green: the candidate is warmed up and health-checked for {} with no user traffic, then all traffic flips to it at once and bakes for {}; a trigger flips it all back.",
            b.warmup, b.bake
        ),
        Strategy::Shadow(s) => format!(
            "Shadow: {}% of requests are copied to the candidate for {}; it never answers users. A trigger rejects it; a clean run ends with the verdict \"promote to canary\".",
            s.percent, s.duration
        ),
    };
    let count = stages.len();
    let mut words: Vec<String> = stages
        .iter()
        .enumerate()
        .map(|(i, stage)| {
            let hold = backstop_core::policy::Period::from_ms(stage.hold_ms);
            let mut text = if stage.warmup {
                format!(
                    "Stage {}/{count}: warm-up for {hold}, no user traffic on the candidate; it must pass health checks to go on.",
                    i + 1
                )
            } else if stage.shadow_percent > 0.0 {
                format!(
                    "Stage {}/{count}: {}% of requests mirrored to the candidate for {hold}; users are answered by the baseline only.",
                    i + 1,
                    stage.shadow_percent
                )
            } else {
                format!(
                    "Stage {}/{count}: candidate answers {}% of traffic for {hold}.",
                    i + 1,
                    stage.candidate_percent
                )
            };
            if stage.approval {
                text.pop();
                text.push_str(&gate_note);
                text.push('.');
            }
            text
        })
        .collect();
    words.push(match policy.strategy {
        Strategy::Shadow(_) => {
            "Then: verdict \"shadow_passed\" (start a canary next) or \"rejected\".".into()
        }
        _ => "Then: promoted — the candidate becomes the last-known-good.".into(),
    });
    words.push(
        "A stage moves on only after its hold time and once every trigger has its minimum sample: no traffic never counts as healthy."
            .into(),
    );
    let mut routing = Vec::new();
    if let Some(sticky) = &policy.sticky {
        let key = match (&sticky.header, &sticky.cookie) {
            (Some(h), _) => format!("header {h}"),
            (_, Some(c)) => format!("cookie {c}"),
            _ => "a key".into(),
        };
        routing.push(format!("Sticky: a user keeps one version, keyed by {key}."));
    }
    for cohort in &policy.cohorts {
        let who = match (&cohort.header, cohort.key_range) {
            (Some(h), _) => format!("requests with {h} in [{}]", cohort.values.join(", ")),
            (_, Some([from, to])) => format!("sticky keys in buckets [{from}, {to}) of 10000"),
            _ => "some requests".into(),
        };
        routing.push(format!("Cohort: {who} always go to {}.", cohort.version));
    }
    StrategyText {
        name: strategy_name(&policy.strategy).to_string(),
        summary,
        stages: words,
        routing,
    }
}

fn metric_words(metric: Metric) -> &'static str {
    match metric {
        Metric::LatencyP50 => "median latency",
        Metric::LatencyP95 => "95th-percentile latency",
        Metric::LatencyP99 => "99th-percentile latency",
        Metric::ErrorRate => "error rate (server errors and timeouts)",
        Metric::TimeoutRate => "timeout rate",
        Metric::SchemaViolationRate => "share of requests that break the input signature",
        Metric::NullRate => "share of requests with a null, NaN or infinite value in the feature",
        Metric::DriftPsi => "drift (PSI) of the feature against the baseline's traffic",
        Metric::PredictionShift => "shift (PSI) of the predictions against the baseline's",
        Metric::ConfidenceMean => "mean confidence of the answers",
        Metric::AgreementRate => "agreement with the baseline on the same requests",
        Metric::FallbackRate => "share of requests the baseline had to answer instead",
        Metric::Accuracy => "accuracy on labelled feedback",
        Metric::Kpi => "mean of the KPI from the feedback API",
        Metric::Prometheus => "value of the Prometheus query",
    }
}

fn threshold_words(above: bool, threshold: Threshold) -> String {
    let side = if above { "above" } else { "below" };
    match threshold {
        Threshold::RelativePercent(p) if (p >= 0.0) == above && p != 0.0 => {
            format!("is more than {}% {side} the baseline's", p.abs())
        }
        Threshold::RelativePercent(p) => {
            format!("is {side} {}% of the baseline's", 100.0 + p)
        }
        Threshold::PercentagePoints(p) if (p >= 0.0) == above && p != 0.0 => format!(
            "is more than {} percentage point{} {side} the baseline's",
            p.abs(),
            if p.abs() == 1.0 { "" } else { "s" }
        ),
        Threshold::PercentagePoints(p) => format!(
            "is {side} the baseline's {} {} percentage points",
            if p >= 0.0 { "plus" } else { "minus" },
            p.abs()
        ),
        Threshold::RatePercent(p) => format!("is {side} {p}%"),
        Threshold::LatencyMs(ms) => format!("is {side} {ms} ms"),
        Threshold::Value(v) => format!("is {side} {v}"),
    }
}

fn action_words(action: Action) -> &'static str {
    match action {
        Action::Rollback => "ROLL BACK",
        Action::Pause => "PAUSE (hold the traffic shares, wait for an operator)",
        Action::Notify => "NOTIFY only (traffic unchanged)",
    }
}

fn severity_words(severity: Severity) -> &'static str {
    match severity {
        Severity::Critical => "critical (pages)",
        Severity::Warning => "warning (ticket)",
    }
}

fn action_name(action: Action) -> &'static str {
    match action {
        Action::Rollback => "rollback",
        Action::Pause => "pause",
        Action::Notify => "notify",
    }
}

fn trigger_text(trigger: &Trigger) -> TriggerText {
    let condition = match (trigger.above, trigger.below) {
        (Some(t), _) => threshold_words(true, t),
        (None, Some(t)) => threshold_words(false, t),
        (None, None) => "crosses its threshold".into(),
    };
    let compared = if trigger.threshold().is_some_and(Threshold::is_relative) {
        " over the same window"
    } else {
        ""
    };
    let lasting = match trigger.for_period.as_ms() {
        0 => "on the first confident verdict (checked every second)".to_string(),
        _ => format!("when that lasts {}", trigger.for_period),
    };
    TriggerText {
        rule: backstop_core::analysis::trigger::rule_text(trigger),
        words: format!(
            "{} when the candidate's {} {condition}{compared}, {lasting}; needs {} candidate requests first. Severity {}.",
            action_words(trigger.action),
            metric_words(trigger.metric),
            trigger.min_sample,
            severity_words(trigger.severity)
        ),
        action: action_name(trigger.action).into(),
        severity: trigger.severity.name().into(),
        min_sample: trigger.min_sample,
        for_period: trigger.for_period.to_string(),
    }
}

fn automatic(model: &str, policy: &Policy, baseline: &str, shadow: bool) -> Vec<String> {
    let verification = policy.verification.clone().unwrap_or_default();
    let evidence = policy.evidence.clone().unwrap_or_default();
    let candidate = &policy.candidate;
    let mut steps = vec![if shadow {
        format!(
            "When a rollback trigger fires: mirroring to {candidate} stops and it is rejected; users were answered by {baseline} all along."
        )
    } else {
        format!(
            "When a rollback trigger fires: all traffic goes back to {baseline} in one routing-table swap; no request is dropped."
        )
    }];
    let graduated = policy.rollback.as_ref().and_then(|r| r.graduated.as_ref());
    let ramps = policy
        .triggers
        .iter()
        .any(|t| t.action == Action::Rollback && t.severity == Severity::Warning);
    if let (Some(graduated), true, false) = (graduated, ramps, shadow) {
        steps.push(format!(
            "When a warning-severity rollback trigger fires: {candidate}'s share steps down through {} (each held {}) before the swap to 0%, while {baseline} is watched against its own figures before the ramp ({} / {} slack); if it misbehaves, a critical trigger fires, an operator rolls back or the process restarts, the swap happens at once.",
            graduated
                .steps
                .iter()
                .map(|s| format!("{s}%"))
                .collect::<Vec<_>>()
                .join(" → "),
            graduated.hold,
            verification.latency_p95,
            verification.error_rate
        ));
    }
    steps.push(format!(
        "{candidate} is condemned: a new rollout of it needs `backstop rollout start FILE --force` (audited)."
    ));
    steps.push(format!(
        "The verdict (trigger, candidate and baseline numbers, window) is recorded in the tamper-evident audit log (`backstop audit list --model {model}`)."
    ));
    steps.push(format!(
        "An incident opens with frozen evidence: a metric snapshot of both versions over the trigger window, request/response samples ({}), and {candidate}'s artifacts pinned against garbage collection.",
        redaction_words(&evidence)
    ));
    steps.push(if policy.notify.is_empty() {
        "Nobody is notified: the policy has no receivers.".into()
    } else {
        format!(
            "Receivers are notified: {}.",
            policy
                .notify
                .iter()
                .map(|r| r.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )
    });
    steps.push(if policy.hooks.is_empty() {
        "No hooks run (none configured).".into()
    } else {
        format!(
            "Hooks run beside the rollback, never delaying it (a failure is recorded, nothing else changes): {}.",
            policy
                .hooks
                .iter()
                .map(|h| h.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )
    });
    steps.push(format!(
        "Recovery is verified over {}: not recovered escalates the incident as critical.",
        verification.window
    ));
    if policy.triggers.iter().any(|t| t.action == Action::Pause) {
        steps.push(format!(
            "When a pause trigger fires: the traffic shares are held and the triggers keep judging; an operator resumes (`backstop rollout resume {model}`) or rolls back."
        ));
    }
    if policy.triggers.iter().any(|t| t.action == Action::Notify) {
        steps.push("When a notify trigger fires: receivers are told; traffic is unchanged.".into());
    }
    steps.push(match policy.max_auto_actions_per_hour {
        Some(cap) => format!(
            "Automatic pauses and notices are capped at {cap} per hour (max_auto_actions_per_hour); rollbacks are never capped."
        ),
        None => "Automatic pauses and notices are not capped (no max_auto_actions_per_hour); rollbacks are never capped.".into(),
    });
    steps.push(format!(
        "False alarms: a healthy candidate finishes with no trigger acting with probability {}{}.",
        policy.confidence.unwrap_or(CONFIDENCE_DEFAULT),
        if policy.confidence.is_none() {
            " (default)"
        } else {
            ""
        }
    ));
    steps
}

fn redaction_words(evidence: &Evidence) -> String {
    let mut words = format!(
        "{}% of requests, up to {} per version",
        evidence.sample_percent, evidence.samples
    );
    if !evidence.redact.is_empty() {
        words.push_str(&format!("; redacted: {}", evidence.redact.join(", ")));
    }
    if !evidence.hash.is_empty() {
        words.push_str(&format!("; hashed: {}", evidence.hash.join(", ")));
    }
    if evidence.redact.is_empty() && evidence.hash.is_empty() {
        words.push_str("; nothing redacted");
    }
    words
}

fn manual_rollback(model: &str, admin: &Admin, shadow: bool) -> ManualRollback {
    let step = |what: &str, command: String| CommandStep {
        what: what.to_string(),
        command,
    };
    let mut steps = vec![
        step(
            "See where the rollout stands: phase, stage, traffic shares, each trigger vs its limit.",
            format!("backstop rollout status {model}"),
        ),
        step(
            "Roll back now: all traffic to the baseline, the candidate condemned (deployer role).",
            format!("backstop rollout rollback {model}"),
        ),
        step(
            "Or hold the traffic shares while you look; triggers keep judging (deployer).",
            format!("backstop rollout pause {model}"),
        ),
        step(
            "Or stop without condemning the candidate: all traffic to the baseline (deployer).",
            format!("backstop rollout abort {model}"),
        ),
        step(
            "Confirm: phase rolled_back (or aborted), candidate at 0%.",
            format!("backstop rollout status {model} --watch"),
        ),
        step(
            "Find the rollback in the audit log.",
            format!("backstop audit list --model {model} --since 1h"),
        ),
    ];
    if shadow {
        steps[1].what =
            "Reject now: mirroring stops, the candidate is condemned (users never saw it; deployer role)."
                .into();
    }
    ManualRollback {
        setup: vec![
            format!("export BACKSTOP_ADMIN={}", admin.url),
            "export BACKSTOP_TOKEN=<a deployer token>   # or pass --admin URL --token TOKEN".into(),
        ],
        steps,
    }
}

fn verification_text(verification: Option<&Verification>) -> VerificationText {
    let defaulted = verification.is_none();
    let v = verification.cloned().unwrap_or_default();
    VerificationText {
        window: v.window.to_string(),
        latency_p95: v.latency_p95.to_string(),
        error_rate: v.error_rate.to_string(),
        min_sample: v.min_sample,
        defaulted,
        words: format!(
            "After the swap the baseline must serve within its own pre-rollout figures for {}: p95 latency at most {} and error rate at most {} vs before the rollout, over at least {} baseline requests (fewer is reported as \"no traffic\", never as recovered). Not recovered: the incident escalates as critical.{}",
            v.window,
            v.latency_p95,
            v.error_rate,
            v.min_sample,
            if defaulted {
                " (Defaults: the policy has no `verification` section.)"
            } else {
                ""
            }
        ),
    }
}

fn notifications(receivers: &[Receiver]) -> Notifications {
    let receivers: Vec<ReceiverText> = receivers
        .iter()
        .map(|r| {
            let page = r.severities.contains(&Severity::Critical);
            let ticket = r.severities.contains(&Severity::Warning);
            ReceiverText {
                name: r.name.clone(),
                format: r.format.name().to_string(),
                target: match (&r.url_env, &r.url) {
                    (Some(var), _) => format!("${var} (on the server)"),
                    (None, Some(url)) => shown_url(url),
                    (None, None) => "(no address)".into(),
                },
                severities: r.severities.iter().map(|s| s.name().to_string()).collect(),
                page,
                ticket,
            }
        })
        .collect();
    let names = |f: fn(&ReceiverText) -> bool| {
        let list: Vec<&str> = receivers
            .iter()
            .filter(|r| f(r))
            .map(|r| r.name.as_str())
            .collect();
        if list.is_empty() {
            "nobody".to_string()
        } else {
            list.join(", ")
        }
    };
    let words = if receivers.is_empty() {
        "Nobody: the policy has no `notify` receivers.".to_string()
    } else {
        format!(
            "Critical incidents (rollbacks, failed recovery) page: {}. Warnings (pauses, waiting for traffic) open a ticket: {}.",
            names(|r| r.page),
            names(|r| r.ticket)
        )
    };
    Notifications { receivers, words }
}

fn evidence_text(model: &str, evidence: Option<&Evidence>) -> EvidenceText {
    let defaulted = evidence.is_none();
    let e = evidence.cloned().unwrap_or_default();
    let mut words = vec![
        format!(
            "Request/response samples: {}.{}",
            redaction_words(&e),
            if defaulted {
                " (Defaults: the policy has no `evidence` section.)"
            } else {
                ""
            }
        ),
        "Metric snapshot of both versions over the trigger window; the candidate's artifacts pinned against garbage collection.".into(),
        "Incidents: `backstop incident list`, `backstop incident show ID`, `backstop incident export ID`.".into(),
        format!("Audit log: `backstop audit list --model {model}` (verify the chain: `backstop audit verify`)."),
    ];
    if e.sample_percent == 0.0 {
        words[0] = "Request/response samples: off (sample_percent 0).".into();
    }
    EvidenceText {
        sample_percent: e.sample_percent,
        samples: e.samples,
        redact: e.redact,
        hash: e.hash,
        defaulted,
        words,
    }
}

/// `scheme://host/…`: enough to recognise a webhook, never its secret path,
/// query or credentials.
pub fn shown_url(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (scheme, rest),
        None => return "(address hidden)".into(),
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    let host = authority.rsplit('@').next().unwrap_or_default();
    if end < rest.len() && rest.len() > end + 1 {
        format!("{scheme}://{host}/…")
    } else {
        format!("{scheme}://{host}")
    }
}

/// The policy as the API shows it: webhook addresses cut to scheme and
/// host (a Slack webhook's path is its secret) and hook header values
/// (tokens) redacted.
pub fn shown_policy(policy: &Policy) -> Policy {
    let mut policy = policy.clone();
    for hook in &mut policy.hooks {
        hook.url = shown_url(&hook.url);
        for value in hook.headers.values_mut() {
            *value = "[redacted]".into();
        }
    }
    for receiver in &mut policy.notify {
        if let Some(url) = &mut receiver.url {
            *url = shown_url(url);
        }
    }
    policy
}

/// The runbook as one page of Markdown.
pub fn render_markdown(runbook: &Runbook) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let r = runbook;
    let _ = writeln!(out, "# Runbook: {}\n", r.model);
    let _ = writeln!(
        out,
        "Candidate **{}** → baseline **{}**. Policy: {}.\n",
        r.candidate, r.baseline, r.policy_source
    );
    if !r.warnings.is_empty() {
        let _ = writeln!(out, "## ⚠ Read first\n");
        for w in &r.warnings {
            let _ = writeln!(out, "- {w}");
        }
        out.push('\n');
    }
    let _ = writeln!(out, "## Roll back by hand\n\n```sh");
    for line in &r.manual_rollback.setup {
        let _ = writeln!(out, "{line}");
    }
    for step in &r.manual_rollback.steps {
        let _ = writeln!(out, "{:<48} # {}", step.command, step.what);
    }
    let _ = writeln!(out, "```\n");
    let _ = writeln!(out, "## What stops the rollout\n");
    for (i, t) in r.triggers.iter().enumerate() {
        let _ = writeln!(out, "{}. {} — `{}`", i + 1, t.words, t.rule);
    }
    let _ = writeln!(out, "\n## What Backstop does by itself\n");
    for step in &r.automatic {
        let _ = writeln!(out, "- {step}");
    }
    let _ = writeln!(
        out,
        "\n## Strategy: {}\n\n{}\n",
        r.strategy.name, r.strategy.summary
    );
    for stage in &r.strategy.stages {
        let _ = writeln!(out, "- {stage}");
    }
    for line in &r.strategy.routing {
        let _ = writeln!(out, "- {line}");
    }
    let _ = writeln!(out, "\n## Verifying recovery\n\n{}\n", r.verification.words);
    let _ = writeln!(out, "## Who is notified\n\n{}\n", r.notifications.words);
    for n in &r.notifications.receivers {
        let _ = writeln!(
            out,
            "- {} ({}, {}): {}",
            n.name,
            n.format,
            n.severities.join(" + "),
            n.target
        );
    }
    if !r.notifications.receivers.is_empty() {
        out.push('\n');
    }
    let _ = writeln!(out, "## Hooks after a rollback\n");
    if r.hooks.is_empty() {
        let _ = writeln!(out, "None.");
    }
    for h in &r.hooks {
        let headers = if h.headers.is_empty() {
            String::new()
        } else {
            format!(", headers {}", h.headers.join(", "))
        };
        let _ = writeln!(
            out,
            "- {}: {} {} (timeout {}, {} retries{headers})",
            h.name, h.method, h.target, h.timeout, h.retries
        );
    }
    let _ = writeln!(out, "\n## Evidence\n");
    for line in &r.evidence.words {
        let _ = writeln!(out, "- {line}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const ADMIN: Admin = Admin {
        url: "http://127.0.0.1:9090",
    };

    fn policy(strategy: &str, extra: &str) -> Policy {
        let text = format!(
            "model: fraud-scorer\ncandidate: v2\nstrategy: {strategy}\ntriggers:\n  - {{ metric: latency_p95, above: \"+30%\", for: 5m, action: rollback }}\n  - {{ metric: error_rate, above: \"+1pp\", min_sample: 500, severity: warning, action: pause }}\n{extra}"
        );
        crate::policy::parse(Path::new("policy.yaml"), &text).unwrap()
    }

    fn markdown(policy: &Policy) -> (Runbook, String) {
        let runbook = build("fraud-scorer", policy, "file policy.yaml", &ADMIN);
        let text = render_markdown(&runbook);
        (runbook, text)
    }

    #[test]
    fn renders_for_every_strategy() {
        let cases = [
            (
                "{ canary: { steps: [1, 5, 50, 100], bake: 2m, approval: [50] } }",
                vec![
                    "Stage 1/4: candidate answers 1% of traffic for 2m.",
                    "Stage 3/4: candidate answers 50% of traffic for 2m — waits for `backstop rollout approve fraud-scorer`",
                    "promoted",
                ],
            ),
            (
                "{ linear: { step: 25, interval: 1m } }",
                vec!["grows by 25% every 1m", "Stage 4/4: candidate answers 100% of traffic for 1m."],
            ),
            (
                "{ blue_green: { warmup: 30s, bake: 5m } }",
                vec![
                    "Stage 1/2: warm-up for 30s",
                    "Stage 2/2: candidate answers 100% of traffic for 5m.",
                    "all traffic goes back to",
                ],
            ),
            (
                "{ shadow: { percent: 10, duration: 10m } }",
                vec![
                    "10% of requests mirrored to the candidate for 10m",
                    "never answers users",
                    "mirroring to v2 stops",
                    "shadow_passed",
                ],
            ),
        ];
        for (strategy, expected) in cases {
            let (runbook, text) = markdown(&policy(strategy, ""));
            for needle in expected {
                assert!(
                    text.contains(needle),
                    "{strategy}: {needle:?} missing in\n{text}"
                );
            }
            for section in [
                "# Runbook: fraud-scorer",
                "## Roll back by hand",
                "## What stops the rollout",
                "## What Backstop does by itself",
                "## Verifying recovery",
                "## Who is notified",
                "## Evidence",
                "backstop rollout rollback fraud-scorer",
                "export BACKSTOP_ADMIN=http://127.0.0.1:9090",
                "BACKSTOP_TOKEN",
            ] {
                assert!(text.contains(section), "{strategy}: {section:?} missing");
            }
            let json = serde_json::to_value(&runbook).unwrap();
            for field in [
                "model",
                "policy_source",
                "strategy",
                "triggers",
                "automatic",
                "manual_rollback",
                "verification",
                "notifications",
                "hooks",
                "evidence",
            ] {
                assert!(json.get(field).is_some(), "{field}");
            }
            assert_eq!(json["triggers"][0]["for"], "5m");
            assert_eq!(json["triggers"][1]["min_sample"], 500);
            assert_eq!(json["triggers"][1]["action"], "pause");
            assert_eq!(json["triggers"][1]["severity"], "warning");
        }
    }

    #[test]
    fn triggers_read_as_words() {
        let (runbook, _) = markdown(&policy("{ canary: { steps: [5, 100], bake: 1m } }", ""));
        assert_eq!(
            runbook.triggers[0].words,
            "ROLL BACK when the candidate's 95th-percentile latency is more than 30% above the baseline's over the same window, when that lasts 5m; needs 100 candidate requests first. Severity critical (pages)."
        );
        assert_eq!(
            runbook.triggers[0].rule,
            "latency_p95 above +30% vs baseline for 5m"
        );
        assert!(runbook.triggers[1].words.starts_with("PAUSE"));
        assert!(runbook.triggers[1]
            .words
            .contains("more than 1 percentage point above the baseline's"));
    }

    #[test]
    fn defaults_are_stated() {
        let (runbook, text) = markdown(&policy("{ canary: { steps: [5, 100], bake: 1m } }", ""));
        assert!(runbook.verification.defaulted);
        assert_eq!(runbook.verification.window, "1m");
        assert_eq!(runbook.verification.latency_p95, "+20%");
        assert_eq!(runbook.verification.error_rate, "+1pp");
        assert_eq!(runbook.verification.min_sample, 100);
        assert!(runbook.evidence.defaulted);
        assert_eq!(runbook.evidence.sample_percent, 1.0);
        assert_eq!(runbook.evidence.samples, 100);
        assert!(text.contains("Defaults: the policy has no `verification` section"));
        assert!(text.contains("Defaults: the policy has no `evidence` section"));
        assert!(text.contains("1% of requests, up to 100 per version"));
        assert!(text.contains("Nobody: the policy has no `notify` receivers."));
        assert!(text.contains("probability 0.99 (default)"));
        assert!(runbook
            .warnings
            .iter()
            .any(|w| w.contains("No rollback trigger watches errors")));
    }

    #[test]
    fn secrets_are_never_printed() {
        let extra = r#"evidence: { sample_percent: 5, samples: 50, redact: [ssn], hash: [account_id] }
verification: { window: 2m, latency_p95: "+10%", error_rate: "+0.5pp", min_sample: 300 }
hooks:
  - name: flags
    url: https://flags.internal/api/off?token=s3cr3t-hook
    headers: { Authorization: "Bearer s3cr3t-header" }
notify:
  - { name: oncall, url_env: PAGER_WEBHOOK, format: alertmanager, severities: [critical] }
  - { name: team-chat, url: "https://hooks.slack.com/services/T000/B000/s3cr3t-slack", format: slack }
"#;
        let policy = policy("{ canary: { steps: [5, 100], bake: 1m } }", extra);
        let (runbook, text) = markdown(&policy);
        let json = serde_json::to_string(&runbook).unwrap();
        for secret in ["s3cr3t", "/services/", "token="] {
            assert!(!text.contains(secret), "{secret} in\n{text}");
            assert!(!json.contains(secret), "{secret} in {json}");
        }
        assert!(text.contains("$PAGER_WEBHOOK (on the server)"), "{text}");
        assert!(text.contains("https://hooks.slack.com/…"), "{text}");
        assert!(text.contains("https://flags.internal/…"), "{text}");
        assert!(text.contains("headers Authorization"), "{text}");
        let receivers = &runbook.notifications.receivers;
        assert!(receivers[0].page && !receivers[0].ticket);
        assert!(receivers[1].page && receivers[1].ticket);
        assert!(text.contains("page: oncall, team-chat"), "{text}");
        assert!(text.contains("ticket: team-chat"), "{text}");
        assert!(!runbook.verification.defaulted);
        assert!(text.contains("for 2m: p95 latency at most +10%"), "{text}");
        assert!(text.contains("redacted: ssn; hashed: account_id"), "{text}");
        // The API's copy of the policy hides the same things.
        let shown = serde_json::to_string(&shown_policy(&policy)).unwrap();
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!(shown.contains("PAGER_WEBHOOK"), "{shown}");
    }

    #[test]
    fn urls_keep_scheme_and_host_only() {
        assert_eq!(shown_url("https://a.example/x/y"), "https://a.example/…");
        assert_eq!(shown_url("http://u:p@h:8080/x"), "http://h:8080/…");
        assert_eq!(shown_url("http://h"), "http://h");
        assert_eq!(shown_url("http://h/"), "http://h");
        assert_eq!(shown_url("http://h?k=v"), "http://h/…");
        assert_eq!(shown_url("nonsense"), "(address hidden)");
    }

    #[test]
    fn another_models_policy_is_flagged() {
        let policy = policy("{ canary: { steps: [5, 100], bake: 1m } }", "");
        let runbook = build("m", &policy, "file policy.yaml", &ADMIN);
        assert!(runbook.warnings[0].contains("names model \"fraud-scorer\", not \"m\""));
        assert!(render_markdown(&runbook).contains("backstop rollout rollback m"));
    }
}
