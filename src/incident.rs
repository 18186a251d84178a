//! Incidents: what a rollback opens.
//!
//! The order follows the rollback's: the routing table is swapped first
//! (`rollout.rs`), then [`Incidents::capture`] copies everything that can
//! rotate away out of memory — the statistics of both versions over the
//! trigger window and the request/response samples — without any I/O.
//! [`Incidents::open`] then stores the incident with its evidence frozen
//! (the store refuses to change it), pins the candidate against deletion
//! and GC in the same transaction, tells the receivers and runs the
//! policy's hooks beside it, and finally [`Incidents::verify`] checks,
//! after the verification window, that the baseline serves within its own
//! pre-rollout figures: "recovered", "not recovered" (escalated as
//! critical) or "unverified" (not enough traffic to say).

use crate::gateway::capture::CapturedExchange;
use crate::gateway::{unix_ms, Gateway};
use crate::notify::{self, HookResult, Notification, Notifier, NotifierConfig};
use crate::store::OutboxRecord;
use crate::store::{
    blocking, AuditDraft, AuditFilter, IncidentRecord, Retention, Store, StoreError,
};
use backstop_core::analysis::window::Counts;
use backstop_core::analysis::WindowSnapshot;
use backstop_core::controller::Verdict;
use backstop_core::policy::{Metric, Policy, Severity, Threshold, Verification};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;

/// Largest evidence document stored; samples beyond it are dropped
/// (oldest first) and counted.
const EVIDENCE_MAX_BYTES: usize = 16 * 1024 * 1024;

/// Requests a group of buckets needs before its figures say anything about
/// recovery (for the time-to-recovered figure).
const RECOVERY_GROUP_MIN: u64 = 20;

/// Requests, failures and latency of one version over a window.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WindowSummary {
    pub from_unix_ms: u64,
    pub to_unix_ms: u64,
    pub requests: u64,
    pub successes: u64,
    pub server_errors: u64,
    pub timeouts: u64,
    pub connect_errors: u64,
    pub client_errors: u64,
    pub cancelled: u64,
    /// Failures (5xx, timeouts, connect errors) over judged requests.
    pub error_rate: Option<f64>,
    pub timeout_rate: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

impl WindowSummary {
    pub fn of(window: &WindowSnapshot) -> Self {
        let c: &Counts = &window.counts;
        let judged = c.successes + c.failures();
        let rate = |n: u64| (judged > 0).then(|| n as f64 / judged as f64);
        let ms = |q: f64| window.latency_quantile_us(q).map(|us| us as f64 / 1000.0);
        Self {
            from_unix_ms: window.from_epoch * window.bucket_ms,
            to_unix_ms: (window.to_epoch + 1) * window.bucket_ms,
            requests: c.requests,
            successes: c.successes,
            server_errors: c.server_errors,
            timeouts: c.timeouts,
            connect_errors: c.connect_errors,
            client_errors: c.client_errors,
            cancelled: c.cancelled,
            error_rate: rate(c.failures()),
            timeout_rate: rate(c.timeouts),
            p50_ms: ms(0.5),
            p95_ms: ms(0.95),
            p99_ms: ms(0.99),
        }
    }

    /// Requests the version answered or failed (not the client's faults).
    pub fn judged(&self) -> u64 {
        self.successes + self.server_errors + self.timeouts + self.connect_errors
    }

    /// The value of a trigger's metric, in the trigger's unit (ms or 0..1).
    fn metric(&self, metric: Metric) -> Option<f64> {
        match metric {
            Metric::LatencyP50 => self.p50_ms,
            Metric::LatencyP95 => self.p95_ms,
            Metric::LatencyP99 => self.p99_ms,
            Metric::ErrorRate => self.error_rate,
            Metric::TimeoutRate => self.timeout_rate,
            // Model-aware signals are not part of the recovery figures.
            _ => None,
        }
    }
}

/// One bucket of both versions, for a chart in the postmortem.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SeriesPoint {
    pub at_unix_ms: u64,
    pub candidate_requests: u64,
    pub candidate_failures: u64,
    pub candidate_p95_ms: Option<f64>,
    pub baseline_requests: u64,
    pub baseline_failures: u64,
    pub baseline_p95_ms: Option<f64>,
}

/// Both versions over the trigger window (the stage that produced the
/// verdict, as far back as the gateway keeps buckets).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MetricSnapshot {
    pub bucket_ms: u64,
    pub candidate: WindowSummary,
    pub baseline: WindowSummary,
    pub series: Vec<SeriesPoint>,
}

/// A version as the registry knows it, pinned for the postmortem.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Subject {
    pub version: String,
    /// False for a version only a routing table names (nothing to pin).
    pub registered: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Bundles of the model that hold this version, with their members'
    /// digests.
    pub bundles: Vec<BundleRef>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BundleRef {
    pub id: String,
    pub members: Vec<String>,
    pub last_known_good: bool,
}

/// How the swap went.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Swap {
    pub ok: bool,
    pub at_unix_ms: u64,
    pub verdict_to_swap_us: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Everything frozen at the verdict. Stored once, never changed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    pub model: String,
    pub rollout: String,
    pub strategy: String,
    pub candidate: Subject,
    pub baseline: Subject,
    pub verdict: Verdict,
    /// `controller`, or the token holder who rolled back.
    pub actor: String,
    pub severity: Severity,
    pub swap: Swap,
    pub metrics: MetricSnapshot,
    /// The baseline before the rollout started: what recovery is judged
    /// against (absent after a restart, or when it had no traffic).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline_before_rollout: Option<WindowSummary>,
    pub samples: Samples,
    /// Versions pinned against deletion and GC (`incident:<id>`).
    pub pinned: Vec<String>,
    pub policy: Policy,
}

/// Request/response pairs of both versions, redacted before they were kept.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Samples {
    pub candidate: Vec<CapturedExchange>,
    pub baseline: Vec<CapturedExchange>,
    /// Fields replaced by `[redacted]` and by a keyed hash.
    pub redacted: Vec<String>,
    pub hashed: Vec<String>,
    /// Pairs left out to keep the evidence storable.
    #[serde(default)]
    pub dropped: usize,
}

/// One line of the timeline.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TimelineEntry {
    pub at_unix_ms: u64,
    pub what: String,
    pub detail: String,
    #[serde(skip_serializing_if = "String::is_empty", default)]
    pub actor: String,
}

/// The verification after the swap.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VerificationResult {
    /// `recovered`, `not_recovered` or `unverified`.
    pub state: String,
    pub reasons: Vec<String>,
    /// The baseline over the verification window after the swap.
    pub after: WindowSummary,
    /// What it was compared with, and where that came from
    /// (`before_rollout` or `during_rollout`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference: Option<WindowSummary>,
    pub reference_source: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p95_ms_max: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_rate_max: Option<f64>,
    /// From the verdict to the first stretch of buckets after the swap in
    /// which the baseline was within its limits.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time_to_recovered_ms: Option<u64>,
    /// The candidate's value on the trigger's metric was no worse than the
    /// baseline's after the swap: the rollback may have been a false one
    /// (the trouble was shared, not the candidate's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub candidate_not_worse: Option<bool>,
    pub verified_unix_ms: u64,
}

/// The few facts lists and the report need, copied out of the evidence so
/// they never read it (it can be megabytes).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub candidate: String,
    pub baseline: String,
    /// The verdict in one line.
    pub trigger: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detection_ms: Option<u64>,
    pub candidate_percent: f64,
    pub swap_ok: bool,
    pub verdict_to_swap_us: f64,
}

/// What grows after the incident opens.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Record {
    #[serde(default)]
    pub summary: Summary,
    pub timeline: Vec<TimelineEntry>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verification: Option<VerificationResult>,
    /// The policy's hooks, once they have all finished.
    #[serde(default)]
    pub hooks: Vec<HookResult>,
}

/// An incident as the API shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct IncidentView {
    pub id: String,
    pub model: String,
    pub rollout: String,
    pub severity: String,
    pub state: String,
    pub opened_unix_ms: u64,
    pub updated_unix_ms: u64,
    /// SHA-256 of the stored evidence, as in the `incident.open` audit
    /// entry: the chain vouches for the evidence.
    pub evidence_sha256: String,
    pub evidence: Evidence,
    #[serde(flatten)]
    pub record: Record,
    /// Every notification queued for the incident and how its delivery
    /// stands (from the durable outbox).
    pub notifications: Vec<OutboxRecord>,
}

/// A short line per incident, for lists.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct IncidentSummary {
    pub id: String,
    pub model: String,
    pub rollout: String,
    pub severity: String,
    pub state: String,
    pub opened_unix_ms: u64,
    pub candidate: String,
    pub baseline: String,
    pub trigger: String,
}

#[derive(Debug)]
pub enum IncidentError {
    NotFound(String),
    /// The id is taken (an earlier write landed).
    Conflict(String),
    Store(String),
}

impl std::fmt::Display for IncidentError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IncidentError::NotFound(m) | IncidentError::Conflict(m) | IncidentError::Store(m) => {
                f.write_str(m)
            }
        }
    }
}

impl From<StoreError> for IncidentError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::NotFound(m) => IncidentError::NotFound(m),
            StoreError::Conflict(m) => IncidentError::Conflict(m),
            other => IncidentError::Store(other.to_string()),
        }
    }
}

/// What the rollout runtime hands over right after the swap.
#[derive(Clone)]
pub struct Opening {
    /// Chosen by the caller ([`new_id`]) so the rollout can name it at once.
    pub id: String,
    pub model: String,
    pub rollout: String,
    pub rollout_created_unix_ms: u64,
    pub candidate: String,
    pub baseline: String,
    pub policy: Policy,
    pub verdict: Verdict,
    pub actor: String,
    pub swap: Swap,
    /// The bucket in progress at the swap: verification starts after it.
    pub swap_epoch: u64,
    pub metrics: MetricSnapshot,
    pub samples: Samples,
    pub baseline_before_rollout: Option<WindowSummary>,
}

pub struct Incidents {
    gateway: Arc<Gateway>,
    store: Arc<dyn Store>,
    notifier: Arc<Notifier>,
    /// Serialises read-modify-write of incident records (hooks and
    /// verification finish independently).
    update: tokio::sync::Mutex<()>,
}

impl Incidents {
    pub fn new(gateway: Arc<Gateway>, store: Arc<dyn Store>) -> Arc<Incidents> {
        Arc::new(Incidents {
            notifier: Notifier::new(store.clone(), NotifierConfig::default()),
            gateway,
            store,
            update: tokio::sync::Mutex::new(()),
        })
    }

    /// Starts delivering notifications, those a previous process left
    /// queued first.
    pub fn spawn_notifier(&self) -> tokio::task::JoinHandle<()> {
        self.notifier.spawn()
    }

    /// The baseline's figures over the last minute (or what the gateway
    /// keeps): the reference recovery is judged against. Taken when a
    /// rollout starts.
    pub fn baseline_reference(&self, model: &str, baseline: &str) -> Option<WindowSummary> {
        let table = self.gateway.table(model)?;
        let version = table.versions.iter().find(|v| v.name == baseline)?;
        let bucket_ms = self.gateway.config.stats.bucket_ms;
        let buckets = (60_000 / bucket_ms).max(1);
        let now = version.state.stats.current_epoch();
        let to = now.checked_sub(1)?;
        let summary = WindowSummary::of(
            &version
                .state
                .stats
                .range(to.saturating_sub(buckets - 1), to),
        );
        (summary.judged() > 0).then_some(summary)
    }

    /// Copies, from memory and without I/O, what the incident freezes: both
    /// versions' statistics over the verdict's window and their samples.
    pub fn capture(&self, policy: &Policy, verdict: &Verdict) -> (MetricSnapshot, Samples) {
        let model = &policy.model;
        let baseline = policy.baseline.as_deref().unwrap_or_default();
        let Some(table) = self.gateway.table(model) else {
            return Default::default();
        };
        let bucket_ms = self.gateway.config.stats.bucket_ms;
        let state = |name: &str| {
            table
                .versions
                .iter()
                .find(|v| v.name == name)
                .map(|v| v.state.clone())
        };
        let (candidate, base) = (state(&policy.candidate), state(baseline));
        let last = verdict.window_to_ms / bucket_ms;
        // As far back as the ring still holds.
        let kept = self.gateway.config.stats.buckets as u64 - 2;
        let first = (verdict.window_from_ms / bucket_ms).max(last.saturating_sub(kept));
        let range = |s: &Option<Arc<crate::gateway::VersionState>>, from: u64, to: u64| {
            s.as_ref()
                .map(|s| s.stats.range(from, to))
                .unwrap_or_default()
        };
        let series = (first..=last)
            .map(|epoch| {
                let (c, b) = (range(&candidate, epoch, epoch), range(&base, epoch, epoch));
                let p95 =
                    |w: &WindowSnapshot| w.latency_quantile_us(0.95).map(|us| us as f64 / 1000.0);
                SeriesPoint {
                    at_unix_ms: epoch * bucket_ms,
                    candidate_requests: c.counts.requests,
                    candidate_failures: c.counts.failures(),
                    candidate_p95_ms: p95(&c),
                    baseline_requests: b.counts.requests,
                    baseline_failures: b.counts.failures(),
                    baseline_p95_ms: p95(&b),
                }
            })
            .filter(|p| p.candidate_requests + p.baseline_requests > 0)
            .collect();
        let metrics = MetricSnapshot {
            bucket_ms,
            candidate: WindowSummary::of(&range(&candidate, first, last)),
            baseline: WindowSummary::of(&range(&base, first, last)),
            series,
        };
        // The redactions in force: the policy's and the gateway config's,
        // applied again to every sample (idempotent), since a ring may hold
        // pairs taken before the rollout's redactions were installed.
        let capture = table.spec.capture.clone().unwrap_or_default();
        let redactor = crate::redact::Redactor::new(&capture.redact, &capture.hash);
        let redacted = |mut exchanges: Vec<CapturedExchange>| {
            for exchange in &mut exchanges {
                redact_again(&redactor, &mut exchange.request);
                redact_again(&redactor, &mut exchange.response);
            }
            exchanges
        };
        let samples = Samples {
            candidate: redacted(self.gateway.samples(model, &policy.candidate)),
            baseline: redacted(self.gateway.samples(model, baseline)),
            redacted: capture.redact,
            hashed: capture.hash,
            dropped: 0,
        };
        (metrics, samples)
    }

    /// After a restart: incidents still waiting for their verification
    /// lost the statistics it needed (they live in memory), so each is
    /// verified over a fresh window from now, on the baseline that has
    /// served all traffic since (open rollouts come back on it too).
    pub async fn recover(self: &Arc<Self>) -> Result<usize, IncidentError> {
        let store = self.store.clone();
        let waiting: Vec<IncidentRecord> = blocking(move || store.incidents(None, 10_000))
            .await?
            .into_iter()
            .filter(|i| i.state == "verifying")
            .collect();
        let epoch = unix_ms() / self.gateway.config.stats.bucket_ms;
        for incident in &waiting {
            // One unreadable incident must not keep the others waiting.
            if let Err(e) = self.resume_verification(&incident.id, epoch).await {
                tracing::error!(incident = incident.id, "Verification not resumed: {e}");
            }
        }
        Ok(waiting.len())
    }

    async fn resume_verification(
        self: &Arc<Self>,
        id: &str,
        epoch: u64,
    ) -> Result<(), IncidentError> {
        {
            let _update = self.update.lock().await;
            let (mut stored, evidence, mut record) = self.load(id).await?;
            let window = evidence
                .policy
                .verification
                .clone()
                .unwrap_or_default()
                .window;
            record.timeline.push(TimelineEntry {
                at_unix_ms: unix_ms(),
                what: "restart".into(),
                detail: format!(
                    "restarted before the verification: verifying {} over {window} from now",
                    evidence.baseline.version
                ),
                actor: String::new(),
            });
            stored.record_json = to_json(&record);
            stored.updated_unix_ms = unix_ms();
            let store = self.store.clone();
            blocking(move || store.update_incident(&stored, None)).await?;
        }
        self.schedule_verification(id.to_string(), epoch).await
    }

    /// Verifies incident `id` once the window after `swap_epoch` is over.
    async fn schedule_verification(
        self: &Arc<Self>,
        id: String,
        swap_epoch: u64,
    ) -> Result<(), IncidentError> {
        let (_, evidence, _) = self.load(&id).await?;
        let window = evidence
            .policy
            .verification
            .clone()
            .unwrap_or_default()
            .window;
        let incidents = self.clone();
        tokio::spawn(async move {
            let wait = window.as_ms() + 2 * incidents.gateway.config.stats.bucket_ms;
            tokio::time::sleep(Duration::from_millis(wait)).await;
            if let Err(e) = incidents.verify(&id, swap_epoch).await {
                tracing::error!(incident = id, "Verification could not be stored: {e}");
            }
        });
        Ok(())
    }

    /// Opens the incident for a rollback: people are told and the hooks
    /// run first — neither waits for the evidence to be written — then the
    /// incident is stored (retried with back-off on store errors; without
    /// its samples if they are what fails), then verification is scheduled.
    pub async fn open(self: &Arc<Self>, opening: Opening) {
        let severity = severity_of(&opening);
        self.notify(&opening.policy, opened_notification(&opening, severity))
            .await;
        if !opening.policy.hooks.is_empty() {
            let incidents = self.clone();
            let hooks = opening.policy.hooks.clone();
            let body = serde_json::json!({
                "incident": opening.id,
                "model": opening.model,
                "rollout": opening.rollout,
                "candidate": opening.candidate,
                "baseline": opening.baseline,
                "severity": severity.name(),
                "verdict": opening.verdict,
            });
            let id = opening.id.clone();
            tokio::spawn(async move {
                let results = notify::run_hooks(&hooks, &body).await;
                // The incident may still be on its way to the store.
                let mut delay = Duration::from_millis(250);
                for _ in 0..8 {
                    match incidents.record_hooks(&id, results.clone()).await {
                        Ok(()) => return,
                        Err(e) => tracing::warn!(incident = id, "Hook results not stored yet: {e}"),
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(16));
                }
                tracing::error!(incident = id, "Hook results could not be stored.");
            });
        }

        let mut opening = opening;
        let mut delay = Duration::from_millis(250);
        for attempt in 1..=8 {
            if attempt == 8 && !opening.samples.candidate.is_empty() {
                // Last try: without the samples, which may be what fails.
                opening.samples.dropped +=
                    opening.samples.candidate.len() + opening.samples.baseline.len();
                opening.samples.candidate.clear();
                opening.samples.baseline.clear();
            }
            match self.store_incident(&opening, severity).await {
                Ok(()) => {
                    tracing::warn!(
                        incident = opening.id,
                        model = opening.model,
                        candidate = opening.candidate,
                        "Incident opened: {}",
                        verdict_text(&opening.verdict)
                    );
                    if let Err(e) = self
                        .schedule_verification(opening.id.clone(), opening.swap_epoch)
                        .await
                    {
                        tracing::error!(incident = opening.id, "Verification not scheduled: {e}");
                    }
                    return;
                }
                Err(e) => tracing::error!(
                    incident = opening.id,
                    attempt,
                    "Could not store the incident (retrying): {e}"
                ),
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(16));
        }
        tracing::error!(
            incident = opening.id,
            "Gave up storing the incident; the verdict is in the audit log (rollout.verdict) and people were told."
        );
    }

    /// Stores the incident (evidence frozen, candidate pinned, audited).
    /// Idempotent: an incident already stored under this id is success.
    async fn store_incident(
        &self,
        opening: &Opening,
        severity: Severity,
    ) -> Result<(), IncidentError> {
        let opening = opening.clone();
        let id = opening.id.clone();
        let now = unix_ms();
        let store = self.store.clone();
        let (model, candidate, baseline) = (
            opening.model.clone(),
            opening.candidate.clone(),
            opening.baseline.clone(),
        );
        let (candidate_subject, baseline_subject) = blocking(move || {
            Ok((
                subject(store.as_ref(), &model, &candidate)?,
                subject(store.as_ref(), &model, &baseline)?,
            ))
        })
        .await?;
        let pinned: Vec<String> = [&candidate_subject]
            .iter()
            .filter(|s| s.registered)
            .map(|s| s.version.clone())
            .collect();
        let evidence = Evidence {
            model: opening.model.clone(),
            rollout: opening.rollout.clone(),
            strategy: backstop_core::controller::strategy_name(&opening.policy.strategy)
                .to_string(),
            candidate: candidate_subject,
            baseline: baseline_subject,
            verdict: opening.verdict.clone(),
            actor: opening.actor.clone(),
            severity,
            swap: opening.swap.clone(),
            metrics: opening.metrics,
            baseline_before_rollout: opening.baseline_before_rollout,
            samples: opening.samples,
            pinned: pinned.clone(),
            // Hook headers and webhook addresses are credentials: kept cut.
            policy: crate::runbook::shown_policy(&opening.policy),
        };
        let mut evidence = evidence;
        let mut evidence_json = serde_json::to_string(&evidence)
            .map_err(|e| IncidentError::Store(format!("evidence does not serialize: {e}")))?;
        // Bounded, so one incident cannot fill the store: the oldest
        // samples give way first.
        while evidence_json.len() > EVIDENCE_MAX_BYTES {
            let samples = &mut evidence.samples;
            let side = if samples.candidate.len() >= samples.baseline.len() {
                &mut samples.candidate
            } else {
                &mut samples.baseline
            };
            if side.is_empty() {
                break;
            }
            let drop = side.len().div_ceil(2);
            side.drain(..drop);
            samples.dropped += drop;
            evidence_json = serde_json::to_string(&evidence)
                .map_err(|e| IncidentError::Store(format!("evidence does not serialize: {e}")))?;
        }
        let evidence_sha256 = crate::store::audit::hex(&Sha256::digest(evidence_json.as_bytes()));

        let target = format!("{}/{}", opening.model, opening.rollout);
        let store = self.store.clone();
        let filter = AuditFilter {
            model: Some(target.clone()),
            since_ms: Some(opening.rollout_created_unix_ms),
            limit: None,
        };
        let history = blocking(move || store.audit(&filter)).await?;
        let graduated = history
            .iter()
            .any(|e| e.draft.action == "rollout.ramp_down");
        let mut timeline: Vec<TimelineEntry> = history
            .iter()
            .map(|e| TimelineEntry {
                at_unix_ms: e.at_ms,
                what: e.draft.action.clone(),
                detail: e.draft.reason.clone(),
                actor: e.draft.actor.clone(),
            })
            .collect();
        if let Some(since) = opening
            .verdict
            .trigger
            .as_ref()
            .and_then(|t| t.breaching_since_ms)
        {
            timeline.push(TimelineEntry {
                at_unix_ms: since,
                what: "first_breach".into(),
                detail: opening
                    .verdict
                    .trigger
                    .as_ref()
                    .map(|t| t.rule.clone())
                    .unwrap_or_default(),
                actor: String::new(),
            });
        }
        timeline.push(TimelineEntry {
            at_unix_ms: opening.verdict.at_ms,
            what: "verdict".into(),
            detail: verdict_text(&opening.verdict),
            actor: opening.actor.clone(),
        });
        timeline.push(TimelineEntry {
            at_unix_ms: opening.swap.at_unix_ms,
            what: "swap".into(),
            detail: if opening.swap.ok && graduated {
                // The swap ended a ramp: timed from the last step's decision.
                format!(
                    "all traffic to {}, the last step of a graduated rollback {:.1} s after the verdict ({:.0} µs after its decision)",
                    opening.baseline,
                    opening.swap.at_unix_ms.saturating_sub(opening.verdict.at_ms) as f64 / 1000.0,
                    opening.swap.verdict_to_swap_us
                )
            } else if opening.swap.ok {
                format!(
                    "all traffic to {} ({:.0} µs after the verdict)",
                    opening.baseline, opening.swap.verdict_to_swap_us
                )
            } else {
                format!("FAILED: {}", opening.swap.error.clone().unwrap_or_default())
            },
            actor: String::new(),
        });
        timeline.push(TimelineEntry {
            at_unix_ms: now,
            what: "incident.open".into(),
            detail: format!("incident {id} opened, severity {}", severity.name()),
            actor: opening.actor.clone(),
        });
        timeline.sort_by_key(|e| e.at_unix_ms);

        let record = Record {
            summary: Summary {
                candidate: opening.candidate.clone(),
                baseline: opening.baseline.clone(),
                trigger: verdict_text(&opening.verdict),
                detection_ms: opening.verdict.detection_ms,
                candidate_percent: opening.verdict.candidate_percent,
                swap_ok: opening.swap.ok,
                verdict_to_swap_us: opening.swap.verdict_to_swap_us,
            },
            timeline,
            ..Record::default()
        };
        let incident = IncidentRecord {
            id: id.clone(),
            model: opening.model.clone(),
            rollout: opening.rollout.clone(),
            severity: severity.name().into(),
            state: "verifying".into(),
            opened_unix_ms: now,
            updated_unix_ms: now,
            evidence_json,
            record_json: to_json(&record),
        };
        let pins: Vec<Retention> = pinned
            .iter()
            .map(|version| Retention {
                model: opening.model.clone(),
                version: version.clone(),
                reason: format!("incident:{id}"),
                created_at_ms: now,
                created_by: opening.actor.clone(),
            })
            .collect();
        let audit = AuditDraft {
            actor: opening.actor.clone(),
            action: "incident.open".into(),
            target: format!("{}/{id}", opening.model),
            reason: verdict_text(&opening.verdict),
            before: None,
            after: Some(serde_json::json!({
                "rollout": opening.rollout,
                "severity": severity.name(),
                "evidence_sha256": evidence_sha256,
                "pinned": pinned,
            })),
        };
        let store = self.store.clone();
        let stored = incident.clone();
        match blocking(move || store.create_incident(&stored, &pins, audit)).await {
            Ok(()) => {}
            // A retry after a write that did land.
            Err(StoreError::Conflict(_)) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        self.gateway
            .rollout_events
            .count(&opening.model, "incident_open");
        Ok(())
    }

    /// Queues a notification to every receiver of the policy that takes
    /// its severity (durably: the outbox delivers it, across restarts).
    async fn notify(&self, policy: &Policy, notification: Notification) {
        if policy.notify.is_empty() {
            return;
        }
        let notifier = self.notifier.clone();
        let receivers = policy.notify.clone();
        let id = notification.incident.clone();
        let queued =
            tokio::task::spawn_blocking(move || notifier.enqueue(&receivers, &notification)).await;
        match queued {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!(incident = id, "Notifications could not be queued: {e}"),
            Err(e) => tracing::error!(incident = id, "Notification task failed: {e}"),
        }
    }

    /// Stores the hooks' results in the incident, audited.
    async fn record_hooks(&self, id: &str, results: Vec<HookResult>) -> Result<(), IncidentError> {
        // A hook's address may carry a token: kept cut, like the policy's.
        let results: Vec<HookResult> = results
            .into_iter()
            .map(|mut hook| {
                hook.url = crate::runbook::shown_url(&hook.url);
                hook
            })
            .collect();
        let _update = self.update.lock().await;
        let (mut incident, evidence, mut record) = self.load(id).await?;
        let now = unix_ms();
        for hook in &results {
            record.timeline.push(TimelineEntry {
                at_unix_ms: now,
                what: "hook".into(),
                detail: format!(
                    "{} {} {}: {} after {} attempt(s){}",
                    hook.name,
                    hook.method,
                    hook.url,
                    if hook.ok { "ok" } else { "FAILED" },
                    hook.attempts,
                    hook.error
                        .as_ref()
                        .map(|e| format!(" ({e})"))
                        .unwrap_or_default()
                ),
                actor: String::new(),
            });
        }
        let failed: Vec<&str> = results
            .iter()
            .filter(|h| !h.ok)
            .map(|h| h.name.as_str())
            .collect();
        let audit = AuditDraft {
            actor: "controller".into(),
            action: "incident.hooks".into(),
            target: format!("{}/{id}", evidence.model),
            reason: if failed.is_empty() {
                format!("{} hook(s) succeeded", results.len())
            } else {
                format!("failed: {}", failed.join(", "))
            },
            before: None,
            after: serde_json::to_value(&results).ok(),
        };
        record.hooks = results;
        incident.record_json = to_json(&record);
        incident.updated_unix_ms = now;
        let store = self.store.clone();
        Ok(blocking(move || store.update_incident(&incident, Some(audit))).await?)
    }

    /// Judges the baseline over the verification window after the swap and
    /// records the result (audited).
    pub async fn verify(
        &self,
        id: &str,
        swap_epoch: u64,
    ) -> Result<VerificationResult, IncidentError> {
        let _update = self.update.lock().await;
        let (mut incident, evidence, mut record) = self.load(id).await?;
        let verification = evidence.policy.verification.clone().unwrap_or_default();
        let bucket_ms = self.gateway.config.stats.bucket_ms;
        let buckets = verification.window.as_ms().div_ceil(bucket_ms).max(1);
        let (from, to) = (swap_epoch + 1, swap_epoch + buckets);
        let state = self.gateway.table(&evidence.model).and_then(|t| {
            t.versions
                .iter()
                .find(|v| v.name == evidence.baseline.version)
                .map(|v| v.state.clone())
        });
        let window = |a: u64, b: u64| {
            state
                .as_ref()
                .map(|s| WindowSummary::of(&s.stats.range(a, b)))
                .unwrap_or_else(|| WindowSummary {
                    from_unix_ms: a * bucket_ms,
                    to_unix_ms: (b + 1) * bucket_ms,
                    ..Default::default()
                })
        };
        let after = window(from, to);
        let groups = (from..=to).map(|e| window(e, e)).collect::<Vec<_>>();
        let result = judge_recovery(&evidence, &verification, after, &groups, unix_ms());

        incident.state = result.state.clone();
        incident.updated_unix_ms = result.verified_unix_ms;
        record.timeline.push(TimelineEntry {
            at_unix_ms: result.verified_unix_ms,
            what: "verification".into(),
            detail: format!(
                "{}: {}",
                result.state.replace('_', " "),
                result.reasons.join("; ")
            ),
            actor: String::new(),
        });
        record.verification = Some(result.clone());
        incident.record_json = to_json(&record);
        let audit = AuditDraft {
            actor: "controller".into(),
            action: "incident.verify".into(),
            target: format!("{}/{}", evidence.model, id),
            reason: result.reasons.join("; "),
            before: None,
            after: Some(serde_json::json!({
                "state": result.state,
                "error_rate": result.after.error_rate,
                "p95_ms": result.after.p95_ms,
                "requests": result.after.requests,
            })),
        };
        let store = self.store.clone();
        blocking(move || store.update_incident(&incident, Some(audit))).await?;
        self.gateway
            .rollout_events
            .count(&evidence.model, &format!("incident_{}", result.state));
        let (kind, severity) = match result.state.as_str() {
            "recovered" => (notify::INCIDENT_RECOVERED, Severity::Warning),
            "not_recovered" => (notify::INCIDENT_NOT_RECOVERED, Severity::Critical),
            _ => ("incident.unverified", Severity::Warning),
        };
        let mut fields = std::collections::BTreeMap::new();
        fields.insert("baseline".to_string(), evidence.baseline.version.clone());
        fields.insert("verification".to_string(), result.reasons.join("; "));
        let notification = Notification {
            incident: id.to_string(),
            model: evidence.model.clone(),
            rollout: Some(evidence.rollout.clone()),
            kind: kind.into(),
            severity,
            title: match result.state.as_str() {
                "recovered" => format!(
                    "{} of {} recovered after the rollback",
                    evidence.baseline.version, evidence.model
                ),
                "not_recovered" => format!(
                    "{} of {} did NOT recover after the rollback",
                    evidence.baseline.version, evidence.model
                ),
                _ => format!("Recovery of {} could not be verified", evidence.model),
            },
            summary: result.reasons.join("; "),
            fields,
            at_unix_ms: result.verified_unix_ms,
            // Recovered ends the rollback's alert (Alertmanager resolves it).
            resolves: (result.state == "recovered").then_some(evidence.severity),
        };
        // The evidence keeps the policy with its addresses cut; the
        // receivers come from the rollout's stored policy.
        let store = self.store.clone();
        let rollout = evidence.rollout.clone();
        let policy = blocking(move || store.rollout(&rollout))
            .await
            .ok()
            .flatten()
            .and_then(|r| serde_json::from_str::<Policy>(&r.policy_json).ok());
        match policy {
            Some(policy) => self.notify(&policy, notification).await,
            None => tracing::error!(
                incident = id,
                "The rollout's policy is unreadable: nobody was told about the verification."
            ),
        }
        match result.state.as_str() {
            "recovered" => tracing::info!(incident = id, "Recovery verified."),
            state => tracing::error!(
                incident = id,
                state,
                "Recovery NOT verified: {}",
                result.reasons.join("; ")
            ),
        }
        Ok(result)
    }

    async fn load(&self, id: &str) -> Result<(IncidentRecord, Evidence, Record), IncidentError> {
        let store = self.store.clone();
        let key = id.to_string();
        let incident = blocking(move || store.incident(&key))
            .await?
            .ok_or_else(|| IncidentError::NotFound(format!("no incident {id:?}")))?;
        let evidence: Evidence = serde_json::from_str(&incident.evidence_json).map_err(|e| {
            IncidentError::Store(format!("incident {id} evidence is unreadable: {e}"))
        })?;
        let record: Record = serde_json::from_str(&incident.record_json).map_err(|e| {
            IncidentError::Store(format!("incident {id} record is unreadable: {e}"))
        })?;
        Ok((incident, evidence, record))
    }

    pub async fn get(&self, id: &str) -> Result<IncidentView, IncidentError> {
        let (incident, evidence, record) = self.load(id).await?;
        let notifier = self.notifier.clone();
        let key = id.to_string();
        let mut notifications = blocking(move || notifier.deliveries(&key)).await?;
        for row in &mut notifications {
            row.url = row.url.as_deref().map(crate::runbook::shown_url);
        }
        Ok(IncidentView {
            notifications,
            evidence_sha256: crate::store::audit::hex(&Sha256::digest(
                incident.evidence_json.as_bytes(),
            )),
            id: incident.id,
            model: incident.model,
            rollout: incident.rollout,
            severity: incident.severity,
            state: incident.state,
            opened_unix_ms: incident.opened_unix_ms,
            updated_unix_ms: incident.updated_unix_ms,
            evidence,
            record,
        })
    }

    pub async fn list(
        &self,
        model: Option<String>,
        limit: usize,
    ) -> Result<Vec<IncidentSummary>, IncidentError> {
        let store = self.store.clone();
        let records = blocking(move || store.incidents(model.as_deref(), limit)).await?;
        Ok(records
            .into_iter()
            .map(|r| {
                let summary = serde_json::from_str::<Record>(&r.record_json)
                    .map(|record| record.summary)
                    .unwrap_or_default();
                IncidentSummary {
                    candidate: summary.candidate,
                    baseline: summary.baseline,
                    trigger: summary.trigger,
                    id: r.id,
                    model: r.model,
                    rollout: r.rollout,
                    severity: r.severity,
                    state: r.state,
                    opened_unix_ms: r.opened_unix_ms,
                }
            })
            .collect())
    }
}

/// The incident's severity: its trigger's, or warning for an operator's
/// rollback (the operator already knows).
fn severity_of(opening: &Opening) -> Severity {
    match &opening.verdict.trigger {
        Some(trigger) => opening
            .policy
            .triggers
            .get(trigger.index)
            .map_or(Severity::Critical, |t| t.severity),
        None => Severity::Warning,
    }
}

/// "Backstop rolled back v2 of fraud-scorer", with the numbers.
fn opened_notification(opening: &Opening, severity: Severity) -> Notification {
    let mut fields = std::collections::BTreeMap::new();
    fields.insert("candidate".to_string(), opening.candidate.clone());
    fields.insert("baseline".to_string(), opening.baseline.clone());
    fields.insert("trigger".to_string(), verdict_text(&opening.verdict));
    fields.insert(
        "traffic".to_string(),
        format!(
            "{}% on the candidate at the verdict",
            opening.verdict.candidate_percent
        ),
    );
    fields.insert(
        "swap".to_string(),
        if opening.swap.ok {
            format!(
                "{:.0} µs after the verdict",
                opening.swap.verdict_to_swap_us
            )
        } else {
            "FAILED".to_string()
        },
    );
    Notification {
        incident: opening.id.clone(),
        model: opening.model.clone(),
        rollout: Some(opening.rollout.clone()),
        kind: notify::INCIDENT_OPENED.into(),
        severity,
        title: format!(
            "Backstop rolled back {} of {}",
            opening.candidate, opening.model
        ),
        summary: verdict_text(&opening.verdict),
        fields,
        at_unix_ms: opening.swap.at_unix_ms,
        resolves: None,
    }
}

/// A kept body under the redactions in force now: JSON redacted (again),
/// text dropped when any field must be redacted (it cannot be searched).
fn redact_again(redactor: &crate::redact::Redactor, body: &mut crate::redact::CapturedBody) {
    use crate::redact::CapturedBody;
    match body {
        CapturedBody::Json(value) => redactor.value(value),
        CapturedBody::Text(text) if !redactor.is_empty() => {
            *body = CapturedBody::omitted(
                text.len() as u64,
                "not JSON, and fields are listed for redaction",
            );
        }
        _ => {}
    }
}

/// Recovered when the baseline, over the window after the swap, had its
/// sample and stayed within the policy's slack of its reference on both
/// p95 latency and error rate.
fn judge_recovery(
    evidence: &Evidence,
    verification: &Verification,
    after: WindowSummary,
    buckets: &[WindowSummary],
    now: u64,
) -> VerificationResult {
    let min = verification.min_sample;
    let (reference, source) = match &evidence.baseline_before_rollout {
        Some(before) if before.judged() >= min => (Some(before.clone()), "before_rollout"),
        _ if evidence.metrics.baseline.judged() >= min => {
            (Some(evidence.metrics.baseline.clone()), "during_rollout")
        }
        _ => (None, "none"),
    };
    let p95_max = reference
        .as_ref()
        .and_then(|r| r.p95_ms)
        .map(|p95| latency_max(verification, p95));
    let error_rate_max = reference.as_ref().map(|r| {
        let rate = r.error_rate.unwrap_or(0.0);
        match verification.error_rate {
            Threshold::PercentagePoints(pp) => rate + pp / 100.0,
            Threshold::RelativePercent(p) => rate * (1.0 + p / 100.0),
            _ => rate,
        }
    });
    let within = |w: &WindowSummary| {
        let latency_ok = match (w.p95_ms, p95_max) {
            (Some(p95), Some(max)) => p95 <= max,
            _ => true,
        };
        let errors_ok = match (w.error_rate, error_rate_max) {
            (Some(rate), Some(max)) => rate <= max + 1e-12,
            _ => true,
        };
        latency_ok && errors_ok
    };
    let mut reasons = Vec::new();
    let state = if after.judged() < min {
        reasons.push(format!(
            "{} answered {} requests in the window, {min} needed to judge",
            evidence.baseline.version,
            after.judged()
        ));
        "unverified"
    } else if reference.is_none() {
        reasons.push(format!(
            "{} had fewer than {min} requests before the rollback: nothing to compare with",
            evidence.baseline.version
        ));
        "unverified"
    } else {
        let show = |v: Option<f64>, unit: &str| {
            v.map_or("-".to_string(), |v| match unit {
                "%" => format!("{:.2}%", v * 100.0),
                _ => format!("{v:.1} ms"),
            })
        };
        reasons.push(format!(
            "error rate {} (max {})",
            show(after.error_rate, "%"),
            show(error_rate_max, "%")
        ));
        reasons.push(format!(
            "p95 {} (max {})",
            show(after.p95_ms, "ms"),
            show(p95_max, "ms")
        ));
        if within(&after) {
            "recovered"
        } else {
            "not_recovered"
        }
    };

    // The first stretch of buckets (with a few requests) within limits.
    let mut time_to_recovered_ms = None;
    if state == "recovered" {
        let mut group = WindowSummary::default();
        for bucket in buckets {
            merge(&mut group, bucket);
            if group.judged() >= RECOVERY_GROUP_MIN {
                if within(&group) {
                    time_to_recovered_ms =
                        Some(bucket.to_unix_ms.saturating_sub(evidence.verdict.at_ms));
                    break;
                }
                group = WindowSummary::default();
            }
        }
        time_to_recovered_ms = time_to_recovered_ms.or(Some(
            after.to_unix_ms.saturating_sub(evidence.verdict.at_ms),
        ));
    }

    let candidate_not_worse = (after.judged() >= min).then(|| match &evidence.verdict.trigger {
        Some(trigger) => {
            let below = evidence
                .policy
                .triggers
                .get(trigger.index)
                .is_some_and(|t| t.below.is_some());
            match (trigger.candidate_value, after.metric(trigger.metric)) {
                // A `below` rule: worse is lower.
                (Some(candidate), Some(baseline)) if below => match trigger.metric.kind() {
                    backstop_core::policy::MetricKind::Rate => {
                        candidate >= baseline - error_slack(verification, baseline)
                    }
                    backstop_core::policy::MetricKind::Latency => {
                        latency_max(verification, candidate) >= baseline
                    }
                    _ => false,
                },
                (Some(candidate), Some(baseline)) => match trigger.metric.kind() {
                    backstop_core::policy::MetricKind::Rate => {
                        candidate <= baseline + error_slack(verification, baseline)
                    }
                    backstop_core::policy::MetricKind::Latency => {
                        candidate <= latency_max(verification, baseline)
                    }
                    _ => false,
                },
                _ => false,
            }
        }
        // An operator's rollback: the candidate over the trigger window
        // against the baseline after the swap, on both signals.
        None => {
            let c = &evidence.metrics.candidate;
            let errors = match (c.error_rate, after.error_rate) {
                (Some(c), Some(b)) => c <= b + error_slack(verification, b),
                _ => true,
            };
            let latency = match (c.p95_ms, after.p95_ms) {
                (Some(c), Some(b)) => c <= latency_max(verification, b),
                _ => true,
            };
            errors && latency
        }
    });

    VerificationResult {
        state: state.into(),
        reasons,
        after,
        reference,
        reference_source: source.into(),
        p95_ms_max: p95_max,
        error_rate_max,
        time_to_recovered_ms,
        candidate_not_worse,
        verified_unix_ms: now,
    }
}

fn error_slack(verification: &Verification, rate: f64) -> f64 {
    match verification.error_rate {
        Threshold::PercentagePoints(pp) => pp / 100.0,
        Threshold::RelativePercent(p) => rate * p / 100.0,
        _ => 0.0,
    }
}

/// The highest latency (ms) still "no worse than" `ms` by the policy's slack.
fn latency_max(verification: &Verification, ms: f64) -> f64 {
    let factor = match verification.latency_p95 {
        Threshold::RelativePercent(p) => 1.0 + p / 100.0,
        _ => 1.0,
    };
    (ms * factor).max(ms + verification.latency_tolerance.as_ms() as f64)
}

/// Adds `b`'s counts to `a` (latency: the worse p95 of the two, which is
/// conservative for "within limits").
fn merge(a: &mut WindowSummary, b: &WindowSummary) {
    if a.requests == 0 {
        a.from_unix_ms = b.from_unix_ms;
    }
    a.to_unix_ms = b.to_unix_ms;
    a.requests += b.requests;
    a.successes += b.successes;
    a.server_errors += b.server_errors;
    a.timeouts += b.timeouts;
    a.connect_errors += b.connect_errors;
    a.client_errors += b.client_errors;
    a.cancelled += b.cancelled;
    let judged = a.judged();
    let failures = a.server_errors + a.timeouts + a.connect_errors;
    a.error_rate = (judged > 0).then(|| failures as f64 / judged as f64);
    a.timeout_rate = (judged > 0).then(|| a.timeouts as f64 / judged as f64);
    a.p95_ms = match (a.p95_ms, b.p95_ms) {
        (Some(x), Some(y)) => Some(x.max(y)),
        (x, y) => x.or(y),
    };
}

/// The registry's view of `version`: digest, bundles holding it.
fn subject(store: &dyn Store, model: &str, version: &str) -> Result<Subject, StoreError> {
    let record = store.version(model, version)?;
    let lkg = store.lkg(model)?;
    let bundles = store
        .bundles(model)?
        .into_iter()
        .filter(|b| {
            b.id == version
                || b.members
                    .iter()
                    .any(|m| m.model == model && m.version == version)
        })
        .map(|b| BundleRef {
            last_known_good: lkg.as_ref().is_some_and(|l| l.bundle == b.id),
            members: b
                .members
                .iter()
                .map(|m| format!("{}/{}@{}", m.model, m.version, m.digest))
                .collect(),
            id: b.id,
        })
        .collect();
    Ok(Subject {
        version: version.to_string(),
        registered: record.is_some(),
        digest: record.map(|r| r.digest),
        bundles,
    })
}

/// The verdict in one line: the rule and its numbers, or the operator.
pub fn verdict_text(verdict: &Verdict) -> String {
    verdict.trigger.as_ref().map_or_else(
        || "operator rollback".to_string(),
        backstop_core::controller::describe,
    )
}

fn to_json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("incident records serialize")
}
