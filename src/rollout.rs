//! The live rollout runtime: feeds the pure controller
//! (`backstop_core::controller`) with the gateway's statistics and operator
//! commands, and carries out its actions.
//!
//! Order matters on the way back: a rollback swaps the routing table to
//! the baseline first (in memory, one pointer swap), and only then writes
//! the durable record; safety is never delayed by I/O. Every other
//! transition is stored (state and audit entry, fsynced) as it happens.
//!
//! On startup, open rollouts are loaded from the store, their traffic is
//! put back on the baseline and they are paused until an operator resumes:
//! a half-finished rollout never continues unattended after a crash.

use crate::config::{CaptureSpec, CohortSpec, ModelSpec, ShadowSpec, SignalSpec, StickySpec};
use crate::gateway::{unix_ms, Event, Gateway};
use crate::incident::{Incidents, Opening, Swap, WindowSummary};
use crate::prometheus::Prometheus;
use crate::registry::{PromoteRequest, Registry};
use crate::signature::InputSignature;
use crate::store::{blocking, AuditDraft, RolloutRecord, Store, StoreError};
use backstop_core::analysis::{Reading, Sample, Sketch};
use backstop_core::controller::{Action, Command, Input, Observation, Rollout, Status};
use backstop_core::policy::{Metric, Policy};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Weights are written in basis points so fractional steps (0.5%) route.
const WEIGHT_TOTAL: f64 = 10_000.0;
/// Save the controller's evidence at least this often while nothing else
/// changes, so a restart loses little of it.
const PERSIST_EVERY_MS: u64 = 10_000;

/// Why a rollout request was refused; nothing changed.
#[derive(Debug)]
pub enum RolloutError {
    NotFound(String),
    /// Another open rollout, or a command that does not apply now.
    Conflict(String),
    /// The policy, or what it names, is wrong: the field and why.
    Invalid {
        field: String,
        message: String,
    },
    /// The candidate was rolled back before; `force` acknowledges it.
    Condemned(String),
    Store(String),
}

impl std::fmt::Display for RolloutError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RolloutError::NotFound(m)
            | RolloutError::Conflict(m)
            | RolloutError::Condemned(m)
            | RolloutError::Store(m) => f.write_str(m),
            RolloutError::Invalid { field, message } => write!(f, "{field}: {message}"),
        }
    }
}

impl From<StoreError> for RolloutError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Conflict(m) => RolloutError::Conflict(m),
            StoreError::NotFound(m) => RolloutError::NotFound(m),
            other => RolloutError::Store(other.to_string()),
        }
    }
}

/// How fast the last rollback took effect.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct RollbackTiming {
    /// From the controller's verdict to the baseline table being installed.
    /// For a graduated rollback the swap is the ramp's last step: this is
    /// measured from the decision to take it (the verdict's own time is in
    /// the verdict).
    pub verdict_to_swap_us: f64,
    /// From the install to the first request routed by the new table
    /// (absent until a request arrives).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub swap_to_first_request_us: Option<f64>,
}

/// A rollout as the API shows it.
#[derive(Clone, Debug, Serialize)]
pub struct RolloutView {
    #[serde(flatten)]
    pub status: Status,
    pub open: bool,
    pub created_unix_ms: u64,
    pub updated_unix_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollback_timing: Option<RollbackTiming>,
    /// The incident the rollback opened (this process only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub incident: Option<String>,
    /// The rollout's policy (normalized, baseline resolved), with webhook
    /// addresses cut to scheme and host and hook header values redacted:
    /// what `backstop runbook` and `backstop gameday` read.
    pub policy: Policy,
}

/// Each version's registered input signature (candidate first), as a
/// rollout's input triggers need them.
type Signatures = Vec<(String, Option<Arc<InputSignature>>)>;

struct Active {
    rollout: Rollout,
    record: RolloutRecord,
    /// Last statistics bucket fed to the controller.
    last_epoch: u64,
    persisted_ms: u64,
    rollback: Option<RollbackTiming>,
    /// Audit entries (and the state) not stored yet: a failed write is
    /// retried every tick, so no verdict is lost to a transient error.
    unsaved: Option<Vec<AuditDraft>>,
    /// The baseline's figures when the rollout started: what recovery is
    /// judged against after a rollback.
    baseline_before: Option<WindowSummary>,
    /// The incident the rollback opened.
    incident: Option<String>,
    /// When its Prometheus triggers were last read.
    queried_ms: u64,
}

impl Active {
    /// A rollout just loaded or started: its ticks begin at `epoch`.
    fn new(rollout: Rollout, record: RolloutRecord, epoch: u64, now: u64) -> Self {
        Self {
            rollout,
            record,
            last_epoch: epoch,
            persisted_ms: now,
            rollback: None,
            unsaved: None,
            baseline_before: None,
            incident: None,
            queried_ms: 0,
        }
    }
}

pub struct Rollouts {
    gateway: Arc<Gateway>,
    registry: Arc<Registry>,
    store: Arc<dyn Store>,
    incidents: Arc<Incidents>,
    /// Open rollouts (and those that finished in this process, for status).
    active: tokio::sync::Mutex<BTreeMap<String, Active>>,
    /// Where `prometheus` triggers are evaluated (config `prometheus:`).
    prometheus: Option<Result<Prometheus, String>>,
}

impl Rollouts {
    pub fn new(gateway: Arc<Gateway>, registry: Arc<Registry>) -> Arc<Rollouts> {
        Arc::new(Rollouts {
            incidents: Incidents::new(gateway.clone(), registry.store()),
            store: registry.store(),
            prometheus: gateway.config.prometheus.as_ref().map(Prometheus::new),
            gateway,
            registry,
            active: tokio::sync::Mutex::new(BTreeMap::new()),
        })
    }

    /// The incidents rollbacks open.
    pub fn incidents(&self) -> Arc<Incidents> {
        self.incidents.clone()
    }

    /// The store rollouts and their audit entries live in.
    pub fn store(&self) -> Arc<dyn Store> {
        self.store.clone()
    }

    /// Loads open rollouts after a restart: baseline gets all traffic, the
    /// rollout waits paused for an operator.
    pub async fn recover(&self) -> Result<usize, RolloutError> {
        let store = self.store.clone();
        let open = blocking(move || store.rollouts(None, true, usize::MAX)).await?;
        let mut active = self.active.lock().await;
        let now = unix_ms();
        for record in open {
            let rollout: Rollout = match serde_json::from_str(&record.state_json) {
                Ok(rollout) => rollout,
                Err(e) => {
                    tracing::error!(id = record.id, "Stored rollout state is unreadable ({e}); routing its model to the baseline.");
                    // The bare facts from the record suffice for that.
                    let policy: Result<Policy, _> = serde_json::from_str(&record.policy_json);
                    if let Ok(mut policy) = policy {
                        policy.baseline = Some(record.baseline.clone());
                        let _ = self.route_table(&policy, 0.0, 0.0, false, false);
                    }
                    // Closed, so the model is free for a new rollout.
                    let mut closed = record.clone();
                    closed.phase = "aborted".into();
                    closed.open = false;
                    closed.updated_unix_ms = now;
                    let draft = AuditDraft {
                        actor: "controller".into(),
                        action: "rollout.abort".into(),
                        target: format!("{}/{}", record.model, record.id),
                        reason: format!(
                            "stored state unreadable at startup ({e}); traffic on the baseline"
                        ),
                        before: None,
                        after: None,
                    };
                    let store = self.store.clone();
                    blocking(move || store.update_rollout(&closed, Some(draft))).await?;
                    continue;
                }
            };
            let mut rollout = rollout;
            if let Err(e) = self.restore_inputs(&mut rollout, true).await {
                tracing::error!(
                    id = record.id,
                    "The versions' input signatures or reference profile cannot be read ({e}); input and profile triggers hold the stage until `resume` reads them again."
                );
            }
            let first = self.first_epoch(&rollout);
            let mut entry = Active::new(rollout, record, first, now);
            let actions = entry
                .rollout
                .step(now, Input::Restarted)
                .map_err(|r| RolloutError::Conflict(r.message))?;
            let decided = Instant::now();
            self.carry_out(&mut entry, actions, decided, "controller", now)
                .await;
            if entry.rollout.is_open() {
                tracing::warn!(
                    id = entry.record.id,
                    model = entry.record.model,
                    "Rollout was open at restart: all traffic is on the baseline; it stays paused until `backstop rollout resume`."
                );
            } else {
                // A graduated rollback under way: the restart completed it.
                tracing::warn!(
                    id = entry.record.id,
                    model = entry.record.model,
                    "Rollout was rolling back at restart: the rollback is complete, all traffic is on the baseline."
                );
            }
            active.insert(entry.record.id.clone(), entry);
        }
        // Beside startup: the listeners need not wait for it.
        let incidents = self.incidents.clone();
        tokio::spawn(async move {
            match incidents.recover().await {
                Ok(0) => {}
                Ok(n) => tracing::warn!("{n} incident(s) were waiting for verification at restart: verifying them over a fresh window."),
                Err(e) => tracing::error!("Incidents waiting for verification could not be resumed: {e}"),
            }
        });
        Ok(active.len())
    }

    /// Starts a rollout of a checked policy (as text, for the record).
    pub async fn start(
        &self,
        mut policy: Policy,
        force: bool,
        actor: &str,
    ) -> Result<RolloutView, RolloutError> {
        let invalid = |field: &str, message: String| RolloutError::Invalid {
            field: field.to_string(),
            message,
        };
        policy.check().map_err(|e| invalid(&e.path, e.message))?;
        let queried = policy
            .triggers
            .iter()
            .position(|t| t.metric == Metric::Prometheus);
        match (queried, &self.prometheus) {
            (Some(i), None) => return Err(invalid(
                &format!("triggers[{i}].query"),
                "no Prometheus server is configured (set prometheus.url in the gateway's config)"
                    .into(),
            )),
            (Some(i), Some(Err(e))) => {
                return Err(invalid(
                    &format!("triggers[{i}].query"),
                    format!("the configured Prometheus cannot be used: {e}"),
                ))
            }
            _ => {}
        }
        // Verification reads the gateway's buckets: its window must fit.
        let stats = &self.gateway.config.stats;
        let kept_ms = (stats.buckets as u64).saturating_sub(2) * stats.bucket_ms;
        if let Some(verification) = &policy.verification {
            if verification.window.as_ms() > kept_ms {
                return Err(invalid(
                    "verification.window",
                    format!(
                        "{} is longer than the statistics the gateway keeps ({}; stats.buckets × stats.bucket_ms)",
                        verification.window,
                        backstop_core::policy::Period::from_ms(kept_ms)
                    ),
                ));
            }
        }
        let model = policy.model.clone();
        let table = self
            .gateway
            .table(&model)
            .ok_or_else(|| invalid("model", format!("the gateway routes no model {model:?}")))?;
        if policy.baseline.is_none() {
            policy.baseline = Some(self.resolve_baseline(&model, &table.spec).await?);
        }
        let baseline = policy.baseline.clone().unwrap_or_default();
        for (field, name) in [("candidate", &policy.candidate), ("baseline", &baseline)] {
            if !table.spec.versions.iter().any(|v| &v.name == name) {
                return Err(invalid(
                    field,
                    format!(
                        "{model} has no version {name:?} in its routing table (it has: {})",
                        table
                            .spec
                            .versions
                            .iter()
                            .map(|v| v.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
        }
        // Read and checked now, given to the gateway only once nothing can
        // refuse the start (a refused start changes nothing).
        let signatures = self.signatures(&policy).await?;
        let profiles = self.profiles(&policy).await?;
        let store = self.store.clone();
        let m = model.clone();
        let past = blocking(move || store.rollouts(Some(&m), false, 1000)).await?;
        if let Some(open) = past.iter().find(|r| r.open) {
            return Err(RolloutError::Conflict(format!(
                "{model} already has an open rollout {}: finish or abort it first",
                open.id
            )));
        }
        if let Some(condemned) = past.iter().find(|r| {
            r.candidate == policy.candidate && (r.phase == "rolled_back" || r.phase == "rejected")
        }) {
            if !force {
                return Err(RolloutError::Condemned(format!(
                    "{} of {model} was {} by rollout {}; start again with force to retry it",
                    policy.candidate,
                    condemned.phase.replace('_', " "),
                    condemned.id
                )));
            }
        }

        let id = crate::store::new_id("ro");
        let now = unix_ms();
        let policy_json =
            serde_json::to_string(&policy).map_err(|e| RolloutError::Store(e.to_string()))?;
        let (mut rollout, actions) =
            Rollout::start(&id, policy, now).map_err(|e| invalid(&e.path, e.message))?;
        rollout.set_profiles(&profiles);
        // Did the candidate serve anything in the bucket in progress before
        // this rollout routed it (a retry right after a rollback)?
        let candidate_quiet = self.candidate_quiet(&rollout);
        let decided = Instant::now();
        let record = RolloutRecord {
            id: id.clone(),
            model: model.clone(),
            candidate: rollout.policy.candidate.clone(),
            baseline,
            phase: rollout.phase.name().to_string(),
            open: true,
            policy_json,
            state_json: state_json(&rollout),
            created_unix_ms: now,
            updated_unix_ms: now,
        };
        let draft = AuditDraft {
            actor: actor.to_string(),
            action: "rollout.create".into(),
            target: format!("{model}/{id}"),
            reason: if force {
                "force: retrying a condemned candidate".into()
            } else {
                String::new()
            },
            before: None,
            after: Some(
                serde_json::json!({"candidate": record.candidate, "baseline": record.baseline}),
            ),
        };
        let store = self.store.clone();
        let created = record.clone();
        blocking(move || store.create_rollout(&created, draft)).await?;
        self.give_signatures(&model, signatures, true);
        let mut active = self.active.lock().await;
        let first = self.first_epoch(&rollout);
        let mut entry = Active::new(rollout, record, first, now);
        entry.baseline_before = self
            .incidents
            .baseline_reference(&entry.record.model, &entry.record.baseline);
        self.carry_out(&mut entry, actions, decided, actor, now)
            .await;
        // The first route moved the start past the bucket in progress; but
        // when the candidate had no traffic before it, every request of its
        // in that bucket is at the first share: keep it (the first stage
        // is the one short of data).
        if candidate_quiet {
            entry.last_epoch = first;
        }
        let view = self.view(&entry);
        active.insert(id, entry);
        Ok(view)
    }

    /// The baseline when the policy names none: the version of the
    /// model's last-known-good bundle, or else the one taking most traffic.
    async fn resolve_baseline(
        &self,
        model: &str,
        spec: &ModelSpec,
    ) -> Result<String, RolloutError> {
        if let Ok(lkg) = self.registry.lkg(model).await {
            if let Some(member) = lkg.members.iter().find(|m| m.model == model) {
                return Ok(member.version.clone());
            }
        }
        spec.versions
            .iter()
            .max_by_key(|v| v.weight)
            .map(|v| v.name.clone())
            .ok_or_else(|| RolloutError::Invalid {
                field: "baseline".into(),
                message: format!("{model} has no last-known-good and no versions"),
            })
    }

    /// An operator command on rollout `id` (or the open rollout of model `id`).
    pub async fn command(
        &self,
        id: &str,
        command: Command,
        actor: &str,
    ) -> Result<RolloutView, RolloutError> {
        let mut active = self.active.lock().await;
        let key = find_key(&active, id)
            .ok_or_else(|| RolloutError::NotFound(format!("no open rollout {id:?}")))?;
        let entry = active.get_mut(&key).expect("key was found");
        if matches!(command, Command::Resume) {
            // What a restart could not read (the registry unavailable for
            // a moment) is read again: a resumed rollout sees its inputs
            // and its profiles, or is not resumed.
            self.restore_inputs(&mut entry.rollout, false).await?;
        }
        let now = unix_ms();
        let actions = entry
            .rollout
            .step(now, Input::Command(command))
            .map_err(|r| RolloutError::Conflict(r.message))?;
        let decided = Instant::now();
        self.carry_out(entry, actions, decided, actor, now).await;
        Ok(self.view(entry))
    }

    /// Rollout `id`, or the open (else the latest) rollout of model `id`.
    pub async fn status(&self, id: &str) -> Result<RolloutView, RolloutError> {
        {
            let active = self.active.lock().await;
            if let Some(key) = find_key(&active, id) {
                return Ok(self.view(&active[&key]));
            }
        }
        let store = self.store.clone();
        let key = id.to_string();
        let record = blocking(move || {
            Ok(match store.rollout(&key)? {
                Some(record) => Some(record),
                None => store.rollouts(Some(&key), false, 1)?.into_iter().next(),
            })
        })
        .await?
        .ok_or_else(|| RolloutError::NotFound(format!("no rollout {id:?}")))?;
        let active = self.active.lock().await;
        match active.get(&record.id) {
            Some(entry) => Ok(self.view(entry)),
            None => stored_view(&record),
        }
    }

    pub async fn list(
        &self,
        model: Option<String>,
        open_only: bool,
    ) -> Result<Vec<RolloutView>, RolloutError> {
        let store = self.store.clone();
        let records = blocking(move || store.rollouts(model.as_deref(), open_only, 200)).await?;
        let active = self.active.lock().await;
        records
            .iter()
            .map(|r| match active.get(&r.id) {
                Some(entry) => Ok(self.view(entry)),
                None => stored_view(r),
            })
            .collect()
    }

    /// One controller tick for every open rollout: the buckets completed
    /// since the last tick, per version.
    pub async fn tick(&self) {
        // Queries run before the lock is taken: a slow Prometheus must not
        // hold up operators' commands.
        let mut readings = self.read_prometheus().await;
        let mut active = self.active.lock().await;
        let now = unix_ms();
        for entry in active.values_mut().filter(|e| e.unsaved.is_some()) {
            self.persist(entry, Vec::new(), now).await;
        }
        for entry in active.values_mut().filter(|e| e.rollout.is_open()) {
            // Buckets the statistics ticker has closed for both versions.
            let epoch = self.settled_epoch(&entry.rollout);
            let (from, to) = (entry.last_epoch + 1, epoch.saturating_sub(1));
            if to < from {
                continue;
            }
            entry.last_epoch = to;
            let mut observation = self.observe(&entry.rollout, from, to);
            if let Some(read) = readings.remove(&entry.record.id) {
                observation.readings = read;
                entry.queried_ms = now;
            }
            let stepped = entry.rollout.step(now, Input::Tick(observation));
            let decided = Instant::now();
            let actions = match stepped {
                Ok(actions) => actions,
                Err(refused) => {
                    tracing::error!(id = entry.record.id, "Tick refused: {}", refused.message);
                    continue;
                }
            };
            if actions.is_empty() && now.saturating_sub(entry.persisted_ms) < PERSIST_EVERY_MS {
                continue;
            }
            self.carry_out(entry, actions, decided, "controller", now)
                .await;
        }
    }

    /// Gives the gateway both versions' registered input signatures and
    /// clears what it gathered before: the rollout judges its own traffic.
    /// A policy whose triggers name what the candidate's signature lacks
    /// is refused, naming the field.
    async fn signatures(&self, policy: &Policy) -> Result<Signatures, RolloutError> {
        if !policy.reads_signals() {
            return Ok(Vec::new());
        }
        let baseline = policy.baseline.clone().unwrap_or_default();
        let mut signatures = Vec::with_capacity(2);
        for name in [&policy.candidate, &baseline] {
            let signature = match self.registry.version(&policy.model, name).await {
                Ok(record) => InputSignature::from_registered(&record.signature)
                    .ok()
                    .map(Arc::new),
                Err(_) => None,
            };
            signatures.push((name.clone(), signature));
        }
        let candidate_signature = signatures[0].1.clone();
        for (i, trigger) in policy.triggers.iter().enumerate() {
            if !trigger.metric.reads_input() {
                continue;
            }
            let Some(signature) = &candidate_signature else {
                return Err(RolloutError::Invalid {
                    field: format!("triggers[{i}].metric"),
                    message: format!(
                        "{} checks requests against the candidate's input signature, and {} is not registered with one",
                        trigger.metric.name(),
                        policy.candidate
                    ),
                });
            };
            if let Some(feature) = &trigger.feature {
                let names = signature.feature_names();
                if !names.contains(&feature.as_str()) {
                    return Err(RolloutError::Invalid {
                        field: format!("triggers[{i}].feature"),
                        message: format!(
                            "{}'s input signature has no feature {feature:?} (it has: {})",
                            policy.candidate,
                            names.join(", ")
                        ),
                    });
                }
            }
        }
        Ok(signatures)
    }

    /// What a loaded rollout does not keep in its saved state, given
    /// again: the versions' signatures (to the gateway) and the
    /// candidate's profile (to its triggers). `clear`: as
    /// [`give_signatures`](Self::give_signatures).
    async fn restore_inputs(&self, rollout: &mut Rollout, clear: bool) -> Result<(), RolloutError> {
        let signatures = self.signatures(&rollout.policy).await?;
        let profiles = self.profiles(&rollout.policy).await?;
        self.give_signatures(&rollout.policy.model, signatures, clear);
        rollout.set_profiles(&profiles);
        Ok(())
    }

    /// Gives the versions the signatures their requests are checked
    /// against; `clear` also drops what they gathered before (another
    /// rollout's).
    fn give_signatures(&self, model: &str, signatures: Signatures, clear: bool) {
        let Some(table) = self.gateway.table(model) else {
            return;
        };
        for (name, signature) in signatures {
            if let Some(version) = table.versions.iter().find(|v| v.name == name) {
                version.state.signals.set_signature(signature);
                if clear {
                    version.state.signals.clear();
                }
            }
        }
    }

    /// The candidate's stored reference profile, by feature, when a
    /// trigger has `reference: profile` (else empty). A policy whose
    /// triggers need a profile the candidate was not registered with, or a
    /// feature (or enough values of it) that profile lacks, is refused,
    /// naming the field.
    async fn profiles(&self, policy: &Policy) -> Result<BTreeMap<String, Sketch>, RolloutError> {
        let wanted: Vec<(usize, &backstop_core::policy::Trigger)> = policy
            .triggers
            .iter()
            .enumerate()
            .filter(|(_, t)| t.against_profile())
            .collect();
        let Some((first, _)) = wanted.first() else {
            return Ok(BTreeMap::new());
        };
        let profile = match self
            .registry
            .version(&policy.model, &policy.candidate)
            .await
        {
            Ok(record) => record.profile,
            Err(crate::registry::RegistryError::VersionNotFound(_)) => None,
            Err(e) => return Err(RolloutError::Store(e.to_string())),
        };
        let Some(profile) = profile else {
            return Err(RolloutError::Invalid {
                field: format!("triggers[{first}].reference"),
                message: format!(
                    "{} of {} is not registered with a reference profile (`backstop version register ... --profile`)",
                    policy.candidate, policy.model
                ),
            });
        };
        for (i, trigger) in wanted {
            let feature = trigger.feature.as_deref().unwrap_or_default();
            let Some(sketch) = profile.features.get(feature) else {
                return Err(RolloutError::Invalid {
                    field: format!("triggers[{i}].feature"),
                    message: format!(
                        "{}'s reference profile has no feature {feature:?} (it has: {})",
                        policy.candidate,
                        profile.feature_names().join(", ")
                    ),
                });
            };
            if sketch.count() < trigger.min_sample {
                return Err(RolloutError::Invalid {
                    field: format!("triggers[{i}].min_sample"),
                    message: format!(
                        "{}'s reference profile has {} value(s) of {feature:?}, fewer than min_sample {}: the trigger could never judge",
                        policy.candidate,
                        sketch.count(),
                        trigger.min_sample
                    ),
                });
            }
        }
        Ok(profile.features)
    }

    /// Reads the `prometheus` triggers of the open rollouts that are due,
    /// for candidate and baseline, concurrently. An error is a reading too:
    /// the controller holds the stage on it.
    async fn read_prometheus(&self) -> BTreeMap<String, BTreeMap<usize, Reading>> {
        let (Some(Ok(prometheus)), Some(config)) =
            (&self.prometheus, &self.gateway.config.prometheus)
        else {
            return BTreeMap::new();
        };
        let every_ms = config.interval_ms;
        let now = unix_ms();
        let due: Vec<(String, Policy)> = {
            let active = self.active.lock().await;
            active
                .values()
                .filter(|e| e.rollout.is_open())
                .filter(|e| now.saturating_sub(e.queried_ms) >= every_ms)
                .filter(|e| {
                    e.rollout
                        .policy
                        .triggers
                        .iter()
                        .any(|t| t.metric == Metric::Prometheus)
                })
                .map(|e| (e.record.id.clone(), e.rollout.policy.clone()))
                .collect()
        };
        let mut out = BTreeMap::new();
        for (id, policy) in due {
            let baseline = policy.baseline.clone().unwrap_or_default();
            let queries = policy
                .triggers
                .iter()
                .enumerate()
                .filter(|(_, t)| t.metric == Metric::Prometheus)
                .map(|(i, t)| {
                    let query = t.query.clone().unwrap_or_default();
                    let (model, candidate, baseline) = (
                        policy.model.clone(),
                        policy.candidate.clone(),
                        baseline.clone(),
                    );
                    async move {
                        let (c, b) = futures_util::future::join(
                            prometheus.query(&query, &model, &candidate),
                            prometheus.query(&query, &model, &baseline),
                        )
                        .await;
                        let reading: Reading = match (c, b) {
                            (Ok(c), Ok(b)) => Ok((c.value, b.value)),
                            (Err(e), _) => Err(format!("candidate {}: {e}", e.code())),
                            (_, Err(e)) => Err(format!("baseline {}: {e}", e.code())),
                        };
                        (i, reading)
                    }
                });
            let read = futures_util::future::join_all(queries).await;
            out.insert(id, read.into_iter().collect());
        }
        out
    }

    fn current_epoch(&self) -> u64 {
        unix_ms() / self.gateway.config.stats.bucket_ms
    }

    /// Where a rollout's ticks start (just before the bucket the versions
    /// record into now): the candidate's first requests are in that
    /// bucket, wherever the wall clock is.
    fn first_epoch(&self, rollout: &Rollout) -> u64 {
        self.settled_epoch(rollout).saturating_sub(1)
    }

    /// The candidate has served nothing in the bucket in progress.
    fn candidate_quiet(&self, rollout: &Rollout) -> bool {
        let Some(table) = self.gateway.table(&rollout.policy.model) else {
            return true;
        };
        let epoch = self.settled_epoch(rollout);
        table
            .versions
            .iter()
            .find(|v| v.name == rollout.policy.candidate)
            .is_none_or(|v| v.state.stats.range(epoch, epoch).counts.requests == 0)
    }

    /// The bucket both versions currently record into (the ticker may not
    /// have moved them on yet): everything before it is complete.
    fn settled_epoch(&self, rollout: &Rollout) -> u64 {
        let wall = self.current_epoch();
        let Some(table) = self.gateway.table(&rollout.policy.model) else {
            return wall;
        };
        table
            .versions
            .iter()
            .filter(|v| v.name == rollout.policy.candidate || v.name == rollout.baseline())
            .map(|v| v.state.stats.current_epoch())
            .fold(wall, u64::min)
    }

    fn observe(&self, rollout: &Rollout, from: u64, to: u64) -> Observation {
        let Some(table) = self.gateway.table(&rollout.policy.model) else {
            return Observation::default();
        };
        let now_ms = self.gateway.now_ms();
        let sample = |name: &str| {
            table
                .versions
                .iter()
                .find(|v| v.name == name)
                .map(|v| {
                    let window = v.state.stats.range(from, to);
                    // The same buckets as the counts.
                    let mut signals = v.state.signals.take(from, to);
                    // Feedback that arrived in these buckets.
                    let feedback = v.state.feedback.window(from, to);
                    signals.kpis = feedback.kpis;
                    signals.labeled = feedback.labeled;
                    signals.correct = feedback.correct;
                    Sample {
                        counts: window.counts,
                        latency_us: window.latency_us,
                        signals,
                    }
                })
                .unwrap_or_default()
        };
        Observation {
            candidate: sample(&rollout.policy.candidate),
            baseline: sample(rollout.baseline()),
            candidate_healthy: table
                .versions
                .iter()
                .any(|v| v.name == rollout.policy.candidate && v.is_healthy(now_ms)),
            readings: Default::default(),
        }
    }

    /// Carries out the controller's actions in order, then stores the new
    /// state with one audit entry per recorded transition.
    /// `decided` is when the controller returned them: the verdict's
    /// instant, for the verdict-to-swap figure.
    async fn carry_out(
        &self,
        entry: &mut Active,
        actions: Vec<Action>,
        decided: Instant,
        actor: &str,
        now: u64,
    ) {
        let (model, candidate) = (entry.record.model.clone(), entry.record.candidate.clone());
        let mut audits = Vec::new();
        let mut opening = None;
        for action in actions {
            // The rollback's own record (`rollout.rollback`) counts it.
            let event = match &action {
                Action::Route { .. } => Some("route"),
                Action::Rollback { .. } => None,
                Action::Promote => Some("promote_swap"),
                Action::Notify { .. } => Some("notice"),
                Action::Record { kind, .. } => Some(kind.strip_prefix("rollout.").unwrap_or(kind)),
            };
            if let Some(event) = event {
                self.gateway.rollout_events.count(&model, event);
            }
            match action {
                Action::Route {
                    candidate_percent,
                    shadow_percent,
                } => {
                    // The bucket in progress mixes the old and new shares:
                    // the next tick starts after it (the one the versions
                    // record into, which lags the wall clock when the
                    // statistics ticker does: skipping to the wall clock's
                    // would lose the next whole bucket too).
                    let in_progress = self.settled_epoch(&entry.rollout);
                    entry.last_epoch = entry.last_epoch.max(in_progress);
                    if let Err(e) =
                        self.route(&entry.rollout.policy, candidate_percent, shadow_percent)
                    {
                        tracing::error!(model, "Could not route the rollout: {e}");
                    }
                }
                Action::Rollback { verdict } => {
                    // Safety first: the swap, before any I/O.
                    let swapped = self.condemn(&entry.rollout.policy);
                    let verdict_to_swap_us = decided.elapsed().as_secs_f64() * 1e6;
                    let swap_epoch = self.current_epoch();
                    let swap = Swap {
                        ok: swapped.is_ok(),
                        at_unix_ms: unix_ms(),
                        verdict_to_swap_us,
                        error: swapped.as_ref().err().cloned(),
                    };
                    match swapped {
                        Ok(()) => {
                            entry.rollback = Some(RollbackTiming {
                                verdict_to_swap_us,
                                swap_to_first_request_us: None,
                            })
                        }
                        Err(e) => tracing::error!(model, "Rollback swap failed: {e}"),
                    }
                    // Evidence out of memory before anything rotates it.
                    let (metrics, samples) =
                        self.incidents.capture(&entry.rollout.policy, &verdict);
                    let id = crate::store::new_id("inc");
                    entry.incident = Some(id.clone());
                    opening = Some(Opening {
                        id,
                        model: model.clone(),
                        rollout: entry.record.id.clone(),
                        rollout_created_unix_ms: entry.record.created_unix_ms,
                        candidate: candidate.clone(),
                        baseline: entry.record.baseline.clone(),
                        policy: entry.rollout.policy.clone(),
                        verdict: verdict.clone(),
                        actor: actor.to_string(),
                        swap,
                        swap_epoch,
                        metrics,
                        samples,
                        baseline_before_rollout: entry.baseline_before.clone(),
                    });
                    audits.push(AuditDraft {
                        actor: actor.to_string(),
                        action: "rollout.verdict".into(),
                        target: format!("{model}/{}", entry.record.id),
                        reason: verdict.trigger.as_ref().map_or_else(
                            || "operator rollback".into(),
                            backstop_core::controller::describe,
                        ),
                        before: None,
                        after: serde_json::to_value(&verdict).ok(),
                    });
                }
                Action::Promote => {
                    // Finished: the signals (and any fallback) stop here.
                    if let Err(e) =
                        self.route_table(&entry.rollout.policy, 100.0, 0.0, false, false)
                    {
                        tracing::error!(model, "Could not route the promotion: {e}");
                    }
                    self.promote_in_registry(&model, &candidate, actor).await;
                }
                Action::Notify { severity, message } => {
                    tracing::warn!(model, ?severity, "{message}");
                    self.gateway.events.push(Event {
                        kind: "rollout_notice",
                        model: Some(model.clone()),
                        version: Some(candidate.clone()),
                        detail: message,
                        ..Event::default()
                    });
                }
                Action::Record { kind, detail } => audits.push(AuditDraft {
                    actor: actor.to_string(),
                    action: kind,
                    target: format!("{model}/{}", entry.record.id),
                    reason: detail,
                    before: None,
                    after: None,
                }),
            }
        }
        self.persist(entry, audits, now).await;
        if let Some(opening) = opening {
            // Beside the rollout: its fsyncs and the verification that
            // follows must not hold the other rollouts' ticks.
            let incidents = self.incidents.clone();
            tokio::spawn(async move { incidents.open(opening).await });
        }
    }

    /// Stores the rollout's state with its new audit entries (and any a
    /// failed write left behind); on failure they stay for the next tick.
    async fn persist(&self, entry: &mut Active, audits: Vec<AuditDraft>, now: u64) {
        let mut pending = entry.unsaved.take().unwrap_or_default();
        pending.extend(audits);
        entry.record.phase = entry.rollout.phase.name().to_string();
        entry.record.open = entry.rollout.is_open();
        entry.record.state_json = state_json(&entry.rollout);
        entry.record.updated_unix_ms = now;
        entry.persisted_ms = now;
        let store = self.store.clone();
        let record = entry.record.clone();
        let drafts = pending.clone();
        // One transaction for the state and the first entry; the rest
        // follow. A retry after a partial failure may repeat an entry:
        // better twice in the log than missing.
        let result = blocking(move || {
            let mut drafts = drafts.into_iter();
            store.update_rollout(&record, drafts.next())?;
            for draft in drafts {
                store.append_audit(draft)?;
            }
            Ok(())
        })
        .await;
        if let Err(e) = result {
            tracing::error!(
                id = entry.record.id,
                "Could not store the rollout (retrying every tick): {e}"
            );
            entry.unsaved = Some(pending);
        }
    }

    /// Routes everything to the baseline, and marks the candidate as never
    /// a health fallback: even with the baseline down, a condemned
    /// candidate gets no traffic (pins, an operator's explicit choice,
    /// still reach it).
    fn condemn(&self, policy: &Policy) -> Result<(), String> {
        self.route_table(policy, 0.0, 0.0, true, false)
    }

    fn route(
        &self,
        policy: &Policy,
        candidate_percent: f64,
        shadow_percent: f64,
    ) -> Result<(), String> {
        self.route_table(policy, candidate_percent, shadow_percent, false, true)
    }

    /// Rewrites the model's table for the rollout: the candidate gets
    /// `candidate_percent` of the weight, the baseline the rest, other
    /// versions nothing (pins still reach them). The policy's sticky key
    /// applies, and its cohorts while the candidate takes traffic; at 0%
    /// no cohort may send anything to the candidate.
    fn route_table(
        &self,
        policy: &Policy,
        candidate_percent: f64,
        shadow_percent: f64,
        condemned: bool,
        with_signals: bool,
    ) -> Result<(), String> {
        let model = &policy.model;
        let candidate = &policy.candidate;
        let baseline = policy.baseline.as_deref().unwrap_or_default();
        let table = self
            .gateway
            .table(model)
            .ok_or_else(|| format!("no model {model}"))?;
        let mut spec = table.spec.clone();
        let candidate_weight =
            (candidate_percent.clamp(0.0, 100.0) / 100.0 * WEIGHT_TOTAL).round() as u32;
        for version in &mut spec.versions {
            if &version.name == candidate {
                version.fallback = !condemned;
            }
            version.weight = if &version.name == candidate {
                candidate_weight
            } else if version.name == baseline {
                WEIGHT_TOTAL as u32 - candidate_weight
            } else {
                0
            };
        }
        spec.shadow = (shadow_percent > 0.0).then(|| ShadowSpec {
            version: candidate.to_string(),
            percent: shadow_percent,
        });
        if let Some(sticky) = &policy.sticky {
            spec.sticky = Some(StickySpec {
                header: sticky.header.clone(),
                cookie: sticky.cookie.clone(),
            });
        }
        let policy_cohorts = policy.cohorts.iter().map(|c| CohortSpec {
            header: c.header.clone(),
            values: c.values.clone(),
            key_range: c.key_range,
            version: c.version.clone(),
        });
        let mut cohorts: Vec<CohortSpec> = policy_cohorts.collect();
        let own: Vec<CohortSpec> = spec
            .cohorts
            .into_iter()
            .filter(|c| !cohorts.contains(c))
            .collect();
        cohorts.extend(own);
        if candidate_weight == 0 {
            cohorts.retain(|c| &c.version != candidate);
        }
        spec.cohorts = cohorts;
        let configured = spec.capture.clone();
        spec.capture = Some(capture_for(policy, spec.capture.take()));
        spec.signals = if with_signals {
            signals_for(policy)
        } else {
            // The model's own settings, if its config has any.
            self.gateway
                .config
                .models
                .get(model)
                .and_then(|m| m.signals.clone())
        };
        match self.gateway.replace_model(model, spec.clone(), None) {
            Ok(_) => Ok(()),
            // Evidence settings must never stand in the way of routing (a
            // rollback above all): route with the table's own sampling.
            Err(e) if spec.capture != configured => {
                tracing::error!(
                    model,
                    "The policy's evidence settings were refused ({e:?}); routing without them."
                );
                spec.capture = configured;
                self.gateway
                    .replace_model(model, spec, None)
                    .map(|_| ())
                    .map_err(|e| format!("{e:?}"))
            }
            Err(e) => Err(format!("{e:?}")),
        }
    }

    /// Makes the candidate the registry's last-known-good when it is (in) a
    /// registered bundle; a version only the routing table knows is routed,
    /// not registered.
    async fn promote_in_registry(&self, model: &str, candidate: &str, actor: &str) {
        let holds = |b: &crate::store::BundleRecord| {
            b.members
                .iter()
                .any(|m| m.model == model && m.version == candidate)
        };
        let bundle = match self.registry.bundle(model, candidate).await {
            Ok(bundle) if holds(&bundle) => Some(bundle.id),
            // Not a bundle id (or a bundle without it): the newest bundle
            // that holds the candidate.
            _ => self
                .registry
                .bundles(model)
                .await
                .ok()
                .and_then(|bundles| bundles.into_iter().rev().find(|b| holds(b)).map(|b| b.id)),
        };
        let Some(bundle) = bundle else {
            tracing::info!(
                model,
                candidate,
                "Promoted in the routing table; no registered bundle holds it."
            );
            return;
        };
        let request = PromoteRequest {
            bundle,
            reason: "rollout completed".into(),
        };
        if let Err(e) = self.registry.promote(model, request, actor).await {
            tracing::error!(model, candidate, "Registry promotion failed: {e}");
        }
    }

    fn view(&self, entry: &Active) -> RolloutView {
        let mut rollback = entry.rollback;
        if let (Some(timing), Some(table)) =
            (rollback.as_mut(), self.gateway.table(&entry.record.model))
        {
            timing.swap_to_first_request_us = table
                .swap_to_first_request_ns()
                .map(|ns| ns as f64 / 1000.0);
        }
        RolloutView {
            status: entry.rollout.status(unix_ms()),
            open: entry.record.open,
            created_unix_ms: entry.record.created_unix_ms,
            updated_unix_ms: entry.record.updated_unix_ms,
            rollback_timing: rollback,
            incident: entry.incident.clone(),
            policy: crate::runbook::shown_policy(&entry.rollout.policy),
        }
    }

    /// Runs the controller every statistics bucket until the task is dropped.
    pub fn spawn(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        self.incidents.spawn_notifier();
        let rollouts = self.clone();
        tokio::spawn(async move {
            let bucket = Duration::from_millis(rollouts.gateway.config.stats.bucket_ms);
            let mut interval = tokio::time::interval(bucket);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                interval.tick().await;
                rollouts.tick().await;
            }
        })
    }
}

/// The gateway's sampling while a rollout runs: the policy's rate and ring
/// size, and the redactions of both the policy and the gateway's config (a
/// policy can add redactions, never lift them).
fn capture_for(policy: &Policy, configured: Option<CaptureSpec>) -> CaptureSpec {
    let evidence = policy.evidence.clone().unwrap_or_default();
    let configured = configured.unwrap_or_default();
    let mut redact = configured.redact;
    redact.extend(evidence.redact);
    redact.sort();
    redact.dedup();
    let mut hash = configured.hash;
    hash.extend(evidence.hash);
    hash.retain(|name| !redact.contains(name));
    hash.sort();
    hash.dedup();
    // Within the gateway's memory bound per version, whatever the policy asks.
    let samples_max =
        (crate::config::CAPTURE_RING_BYTES_MAX / configured.body_max_bytes.max(1)).max(1);
    CaptureSpec {
        sample_percent: evidence.sample_percent,
        samples: evidence.samples.min(samples_max),
        body_max_bytes: configured.body_max_bytes,
        redact,
        hash,
    }
}

/// The gateway's signal settings while a rollout runs, from its policy
/// (`None` when no trigger and no fallback needs them: nothing is read).
fn signals_for(policy: &Policy) -> Option<SignalSpec> {
    if !policy.reads_signals() {
        return None;
    }
    let signals = policy.signals.clone().unwrap_or_default();
    Some(SignalSpec {
        sample_percent: signals.sample_percent(),
        features: policy.features().into_iter().map(str::to_string).collect(),
        output: signals.output.clone(),
        mirror_percent: signals.mirror_percent(),
        fallback: policy.fallback.clone(),
        candidate: Some(policy.candidate.clone()),
        baseline: policy.baseline.clone(),
    })
}

/// A rollout from the store alone (finished before this process started).
fn stored_view(record: &RolloutRecord) -> Result<RolloutView, RolloutError> {
    let rollout: Rollout = serde_json::from_str(&record.state_json).map_err(|e| {
        RolloutError::Store(format!("rollout {} state is unreadable: {e}", record.id))
    })?;
    Ok(RolloutView {
        status: rollout.status(record.updated_unix_ms),
        open: record.open,
        created_unix_ms: record.created_unix_ms,
        updated_unix_ms: record.updated_unix_ms,
        rollback_timing: None,
        incident: None,
        policy: crate::runbook::shown_policy(&rollout.policy),
    })
}

/// The rollout with this id, or the open rollout of the model named `id`.
fn find_key(active: &BTreeMap<String, Active>, id: &str) -> Option<String> {
    if active.contains_key(id) {
        return Some(id.to_string());
    }
    active
        .values()
        .find(|e| e.record.model == id && e.rollout.is_open())
        .map(|e| e.record.id.clone())
}

fn state_json(rollout: &Rollout) -> String {
    serde_json::to_string(rollout).expect("a rollout serializes")
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"
models:
  m:
    versions:
      - { name: v1, weight: 50, endpoints: ["http://127.0.0.1:9"] }
      - { name: v2, weight: 50, endpoints: ["http://127.0.0.1:10"] }
"#;

    fn weights(gateway: &Gateway) -> Vec<(String, u32)> {
        let table = gateway.table("m").unwrap();
        table
            .versions
            .iter()
            .map(|v| (v.name.clone(), v.weight))
            .collect()
    }

    /// A stored rollout whose state cannot be read must not block its
    /// model for good: recovery routes to the baseline and closes it.
    #[tokio::test]
    async fn an_unreadable_stored_rollout_is_closed_on_the_baseline() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Arc::new(Registry::open(dir.path(), 1024).unwrap());
        let policy = r#"{"model":"m","candidate":"v2","baseline":"v1","strategy":{"canary":{"steps":[50,100],"bake":"1m"}},"triggers":[{"metric":"error_rate","above":"5%","action":"rollback"}]}"#;
        let record = RolloutRecord {
            id: "ro-1".into(),
            model: "m".into(),
            candidate: "v2".into(),
            baseline: "v1".into(),
            phase: "running".into(),
            open: true,
            policy_json: policy.into(),
            state_json: "{not json".into(),
            created_unix_ms: 1,
            updated_unix_ms: 1,
        };
        let draft = AuditDraft {
            actor: "test".into(),
            action: "rollout.create".into(),
            target: "m/ro-1".into(),
            reason: String::new(),
            before: None,
            after: None,
        };
        registry.store().create_rollout(&record, draft).unwrap();

        let config = crate::config::Config::parse(std::path::Path::new("t.yaml"), CONFIG).unwrap();
        let gateway = Gateway::new(config).unwrap();
        let rollouts = Rollouts::new(gateway.clone(), registry.clone());
        assert_eq!(rollouts.recover().await.unwrap(), 0);
        assert_eq!(
            weights(&gateway),
            vec![("v1".to_string(), 10_000), ("v2".to_string(), 0)]
        );
        let stored = registry.store().rollout("ro-1").unwrap().unwrap();
        assert_eq!((stored.phase.as_str(), stored.open), ("aborted", false));
    }

    /// A gameday fault lives in the routing table: the rollout's own swaps
    /// (stage changes, the rollback) carry it rather than clearing it.
    #[tokio::test]
    async fn rollout_swaps_keep_a_rehearsal_fault() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Arc::new(Registry::open(dir.path(), 1024).unwrap());
        let config = crate::config::Config::parse(std::path::Path::new("t.yaml"), CONFIG).unwrap();
        let gateway = Gateway::new(config).unwrap();
        let mut spec = gateway.table("m").unwrap().spec.clone();
        spec.versions[1].rehearsal = true;
        spec.versions[1].fault = Some(crate::config::FaultSpec {
            error_percent: 10.0,
            ..Default::default()
        });
        gateway.replace_model("m", spec, None).unwrap();
        let rollouts = Rollouts::new(gateway.clone(), registry);
        let policy: Policy = serde_json::from_str(
            r#"{"model":"m","candidate":"v2","baseline":"v1","strategy":{"canary":{"steps":[50,100],"bake":"1m"}},"triggers":[{"metric":"error_rate","above":"5%","action":"rollback"}]}"#,
        )
        .unwrap();
        let fault = |gateway: &Gateway| gateway.table("m").unwrap().versions[1].fault.is_some();
        rollouts.route(&policy, 25.0, 0.0).unwrap();
        assert!(fault(&gateway), "a stage change keeps the fault");
        rollouts.condemn(&policy).unwrap();
        assert!(fault(&gateway), "the rollback keeps the fault");
        assert_eq!(
            weights(&gateway),
            vec![("v1".to_string(), 10_000), ("v2".to_string(), 0)]
        );
    }
}
