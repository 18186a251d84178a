//! The rollout controller: a pure state machine.
//!
//! [`Rollout::step`] takes the time and one [`Input`] (a tick of gateway
//! statistics, an operator command, a restart) and returns the [`Action`]s
//! the runtime must carry out. No sockets, no sleeping, no clock: the live
//! runtime and the simulator drive the same code, and a [`Rollout`] is plain
//! data that serializes whole (it survives a restart in the store).
//!
//! Every strategy is a list of [`Stage`]s: a canary step, a linear
//! increment, a blue/green warm-up then flip, a shadow run. A stage is held
//! for its time *and* until the triggers have their minimum sample (no
//! traffic never counts as healthy); the last stage either promotes the
//! candidate or, for shadow, ends with the verdict "promote to canary".
//!
//! A verdict swaps all traffic to the baseline at once, except a
//! `severity: warning` rollback trigger under a policy with
//! `rollback.graduated`: then the candidate's share ramps down in steps
//! (phase `rolling_back`) while the baseline is watched against its own
//! figures before the ramp, and the swap to 0% ends the ramp, or comes at
//! once if the baseline misbehaves, a critical trigger fires, an operator
//! says `rollback`/`abort`, or the process restarts.
//!
//! Invariants (property-tested below): a rolled-back or rejected candidate
//! is never routed traffic again, and during a graduated rollback never
//! more than it had at the verdict; routed shares stay within 0..=100.

use crate::analysis::trigger::{
    metric_value, rule_text, Reading, Sample, TriggerEval, TriggerStatus,
};
use crate::analysis::Sketch;
use crate::policy::{
    self, FieldError, Metric, Policy, Severity, Strategy, Threshold, Verification,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One hour, for the anti-flap cap.
const HOUR_MS: u64 = 3_600_000;
/// Notify that a step lacks traffic after this long, unless the policy says.
const WAITING_DEADLINE_DEFAULT_MS: u64 = 10 * 60_000;

/// A step of the plan: the candidate's share and how long it is held.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stage {
    /// Share of user traffic the candidate answers, percent.
    pub candidate_percent: f64,
    /// Share of requests copied to the candidate (shadow), percent.
    pub shadow_percent: f64,
    pub hold_ms: u64,
    /// Waits for `rollout approve` before it starts.
    pub approval: bool,
    /// Blue/green warm-up: the candidate must be healthy to move on.
    pub warmup: bool,
}

/// The stages a strategy walks through.
pub fn plan(strategy: &Strategy) -> Vec<Stage> {
    let stage = |candidate_percent: f64, hold_ms: u64| Stage {
        candidate_percent,
        shadow_percent: 0.0,
        hold_ms,
        approval: false,
        warmup: false,
    };
    match strategy {
        Strategy::Canary(canary) => canary
            .steps
            .iter()
            .map(|&percent| Stage {
                approval: canary.approval.contains(&percent),
                ..stage(percent, canary.bake.as_ms())
            })
            .collect(),
        Strategy::Linear(linear) => {
            let mut stages = Vec::new();
            let mut percent: f64 = 0.0;
            while percent < 100.0 && stages.len() < policy::STEPS_MAX {
                percent = (percent + linear.step).min(100.0);
                stages.push(stage(percent, linear.interval.as_ms()));
            }
            if percent < 100.0 {
                stages.push(stage(100.0, linear.interval.as_ms()));
            }
            stages
        }
        Strategy::BlueGreen(blue_green) => vec![
            Stage {
                warmup: true,
                ..stage(0.0, blue_green.warmup.as_ms())
            },
            stage(100.0, blue_green.bake.as_ms()),
        ],
        Strategy::Shadow(shadow) => vec![Stage {
            shadow_percent: shadow.percent,
            ..stage(0.0, shadow.duration.as_ms())
        }],
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Running,
    AwaitingApproval,
    Paused,
    /// A graduated rollback: the verdict is made and the candidate is
    /// condemned; its share steps down to 0%.
    RollingBack,
    /// The candidate is the new last-known-good.
    Promoted,
    /// A trigger or an operator put all traffic back: condemned.
    RolledBack,
    /// An operator stopped it; the candidate is not condemned.
    Aborted,
    /// Shadow run clean: the verdict is "promote to canary".
    ShadowPassed,
    /// Shadow run failed a trigger: condemned.
    Rejected,
}

impl Phase {
    pub fn is_final(self) -> bool {
        !matches!(
            self,
            Phase::Running | Phase::AwaitingApproval | Phase::Paused | Phase::RollingBack
        )
    }

    /// The candidate may not get traffic again without a human (during a
    /// graduated rollback: no more than it had at the verdict).
    pub fn condemns(self) -> bool {
        matches!(
            self,
            Phase::RolledBack | Phase::Rejected | Phase::RollingBack
        )
    }

    pub fn name(self) -> &'static str {
        match self {
            Phase::Running => "running",
            Phase::AwaitingApproval => "awaiting_approval",
            Phase::Paused => "paused",
            Phase::RollingBack => "rolling_back",
            Phase::Promoted => "promoted",
            Phase::RolledBack => "rolled_back",
            Phase::Aborted => "aborted",
            Phase::ShadowPassed => "shadow_passed",
            Phase::Rejected => "rejected",
        }
    }
}

/// Why a rollout is paused.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PauseReason {
    Operator,
    /// A `pause` trigger fired (its index).
    Trigger(usize),
    /// The process restarted during the rollout: traffic is on the
    /// baseline until an operator resumes.
    Restart,
}

/// What the controller is told.
#[derive(Clone, Debug)]
// One tick's observation is a few hundred bytes, made once a second:
// boxing it would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum Input {
    /// Requests that finished since the previous tick, per version.
    Tick(Observation),
    Command(Command),
    /// The process came back with this rollout open.
    Restarted,
}

#[derive(Clone, Debug, Default)]
pub struct Observation {
    pub candidate: Sample,
    pub baseline: Sample,
    /// Whether the candidate's endpoints pass their health checks.
    pub candidate_healthy: bool,
    /// Prometheus triggers read this tick, by trigger index (the others
    /// keep their last reading).
    pub readings: BTreeMap<usize, Reading>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    Pause,
    Resume,
    Approve,
    Promote,
    Abort,
    Rollback,
}

impl Command {
    pub fn name(self) -> &'static str {
        match self {
            Command::Pause => "pause",
            Command::Resume => "resume",
            Command::Approve => "approve",
            Command::Promote => "promote",
            Command::Abort => "abort",
            Command::Rollback => "rollback",
        }
    }
}

/// What the runtime must do, in order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "action")]
pub enum Action {
    /// Set the candidate's share of traffic and of mirrored copies.
    Route {
        candidate_percent: f64,
        shadow_percent: f64,
    },
    /// All traffic to the baseline *first* (one table swap), then record
    /// the verdict durably: safety is never delayed by I/O.
    Rollback {
        verdict: Verdict,
    },
    /// All traffic to the candidate, which becomes the last-known-good.
    Promote,
    Notify {
        severity: Severity,
        message: String,
    },
    /// A transition for the audit log.
    Record {
        kind: String,
        detail: String,
    },
}

/// Why traffic went back, with the numbers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub at_ms: u64,
    /// `trigger` or `operator`.
    pub by: String,
    /// The trigger and its figures at the verdict (none for an operator).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trigger: Option<TriggerStatus>,
    /// From the candidate's first request to the verdict.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detection_ms: Option<u64>,
    pub stage: usize,
    pub candidate_percent: f64,
    /// The window the values cover: the current stage.
    pub window_from_ms: u64,
    pub window_to_ms: u64,
}

/// An operator command that does not apply now; nothing changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    pub message: String,
}

/// Where a rollout stands: what `rollout status` shows.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub id: String,
    pub model: String,
    pub candidate: String,
    pub baseline: String,
    pub strategy: String,
    pub phase: Phase,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paused_by: Option<PauseReason>,
    pub stage: usize,
    pub stages: usize,
    pub candidate_percent: f64,
    pub shadow_percent: f64,
    pub stage_elapsed_ms: u64,
    pub stage_hold_ms: u64,
    /// The stage's time is up but a trigger lacks its minimum sample.
    pub waiting_for_traffic: bool,
    pub triggers: Vec<TriggerStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verdict: Option<Verdict>,
    /// A graduated rollback in progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ramp: Option<RampStatus>,
}

/// Where a graduated rollback stands.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RampStatus {
    /// The step now held, from 0.
    pub step: usize,
    /// The candidate's shares on the way down (those below its share at
    /// the verdict), then 0.
    pub steps: Vec<f64>,
    pub step_elapsed_ms: u64,
    pub hold_ms: u64,
    /// Baseline requests judged since the ramp began.
    pub baseline_requests: u64,
}

/// A graduated rollback in progress: the shares still to go and the
/// baseline's requests since it began.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Ramp {
    steps: Vec<f64>,
    step: usize,
    hold_ms: u64,
    started_ms: u64,
    step_started_ms: u64,
    baseline: Sample,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Rollout {
    pub id: String,
    /// Normalized, with the baseline resolved.
    pub policy: Policy,
    pub stages: Vec<Stage>,
    pub phase: Phase,
    pub paused_by: Option<PauseReason>,
    pub stage: usize,
    /// An operator approved the current (gated) stage.
    stage_approved: bool,
    stage_started_ms: u64,
    /// What is routed now (the last `Route` the runtime was asked for).
    pub routed: (f64, f64),
    triggers: Vec<TriggerEval>,
    /// The baseline since the rollout started: what relative rules judge
    /// against (up to the previous tick).
    reference: Sample,
    /// The candidate since the rollout started: what means (KPIs) and
    /// distributions (drift) are judged on.
    #[serde(default)]
    candidate_total: Sample,
    /// This stage's requests, for the values shown.
    stage_candidate: Sample,
    stage_baseline: Sample,
    candidate_first_ms: Option<u64>,
    /// Times of automatic pauses and notices within the last hour.
    auto_actions_ms: Vec<u64>,
    /// A capped action was recorded; not again until one goes through.
    #[serde(default)]
    rate_limited_noted: bool,
    waiting_notified: bool,
    pub verdict: Option<Verdict>,
    /// Set while `phase` is `rolling_back`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ramp: Option<Ramp>,
}

impl Rollout {
    /// Starts a rollout of a checked policy whose baseline is resolved.
    /// A broken policy starts nothing.
    pub fn start(
        id: &str,
        policy: Policy,
        now_ms: u64,
    ) -> Result<(Rollout, Vec<Action>), FieldError> {
        policy.check()?;
        if policy.baseline.is_none() {
            return Err(FieldError {
                path: "baseline".into(),
                message: "no baseline: the model has no last-known-good to return to".into(),
            });
        }
        let policy = policy.normalized();
        let alpha = policy.alpha_per_trigger();
        let stages = plan(&policy.strategy);
        let judged: Vec<bool> = stages
            .iter()
            .map(|s| s.candidate_percent > 0.0 || s.shadow_percent > 0.0)
            .collect();
        let triggers = policy
            .triggers
            .iter()
            .enumerate()
            .map(|(i, t)| TriggerEval::new(i, t.clone(), alpha, &judged))
            .collect();
        let mut rollout = Rollout {
            id: id.to_string(),
            stages,
            policy,
            phase: Phase::Running,
            paused_by: None,
            stage: 0,
            stage_approved: false,
            stage_started_ms: now_ms,
            routed: (0.0, 0.0),
            triggers,
            reference: Sample::default(),
            candidate_total: Sample::default(),
            stage_candidate: Sample::default(),
            stage_baseline: Sample::default(),
            candidate_first_ms: None,
            auto_actions_ms: Vec::new(),
            rate_limited_noted: false,
            waiting_notified: false,
            verdict: None,
            ramp: None,
        };
        let mut actions = vec![record(
            "rollout.start",
            format!(
                "{} → {} of {}, {} stage(s)",
                rollout.baseline(),
                rollout.policy.candidate,
                rollout.policy.model,
                rollout.stages.len()
            ),
        )];
        rollout.enter_stage(0, now_ms, &mut actions);
        Ok((rollout, actions))
    }

    /// Gives `drift_psi` triggers with `reference: profile` the sketches
    /// of the candidate's stored profile, by feature (the runtime reads
    /// them from the registry at start and again after a restart: they are
    /// not saved with the state). A trigger whose feature is missing keeps
    /// none and holds its stage.
    pub fn set_profiles(&mut self, profiles: &BTreeMap<String, Sketch>) {
        for t in &mut self.triggers {
            let sketch = t
                .trigger
                .feature
                .as_deref()
                .and_then(|f| profiles.get(f))
                .cloned();
            t.set_profile(sketch);
        }
    }

    pub fn baseline(&self) -> &str {
        self.policy.baseline.as_deref().unwrap_or_default()
    }

    pub fn is_open(&self) -> bool {
        !self.phase.is_final()
    }

    /// One input; the actions to carry out in order. Commands that do not
    /// apply now are refused and change nothing.
    pub fn step(&mut self, now_ms: u64, input: Input) -> Result<Vec<Action>, Refused> {
        let mut actions = Vec::new();
        match input {
            Input::Tick(observation) => self.tick(now_ms, observation, &mut actions),
            Input::Command(command) => self.command(now_ms, command, &mut actions)?,
            Input::Restarted => {
                if self.phase == Phase::RollingBack {
                    // Fail safe: the runtime routes to the baseline at
                    // startup anyway; finish the rollback so the state says
                    // so and the incident opens.
                    self.complete_ramp(
                        "process restarted during the graduated rollback".into(),
                        &mut actions,
                    );
                } else if self.is_open() {
                    self.phase = Phase::Paused;
                    self.paused_by = Some(PauseReason::Restart);
                    self.route(0.0, 0.0, &mut actions);
                    actions.push(record(
                        "rollout.pause",
                        "process restarted: all traffic on the baseline until resumed".into(),
                    ));
                }
            }
        }
        Ok(actions)
    }

    fn tick(&mut self, now_ms: u64, observation: Observation, actions: &mut Vec<Action>) {
        if !self.is_open() {
            return;
        }
        if self.phase == Phase::RollingBack {
            self.ramp_tick(now_ms, observation, actions);
            return;
        }
        if observation.candidate.counts.requests > 0 {
            self.candidate_first_ms.get_or_insert(now_ms);
        }
        // Judge this tick against the baseline *before* it: the bound is
        // fixed before the data it judges.
        self.candidate_total.merge(&observation.candidate);
        self.stage_candidate.merge(&observation.candidate);
        self.stage_baseline.merge(&observation.baseline);
        let (total, reference) = (&self.candidate_total, &self.reference);
        let stage = (&self.stage_candidate, &self.stage_baseline);
        let mut newly_unavailable = Vec::new();
        let fired: Vec<usize> = self
            .triggers
            .iter_mut()
            .filter_map(|t| {
                let was_available = t.unavailable.is_none();
                let reading = observation.readings.get(&t.index);
                let fired = t.observe_tick(
                    now_ms,
                    &observation.candidate,
                    total,
                    reference,
                    stage,
                    reading,
                );
                if was_available {
                    if let Some(why) = &t.unavailable {
                        newly_unavailable.push(format!("{}: {why}", rule_text(&t.trigger)));
                    }
                }
                fired.then_some(t.index)
            })
            .collect();
        for message in newly_unavailable {
            // Said once per outage; the stage is held meanwhile.
            actions.push(record(
                "rollout.source_unavailable",
                format!("{message}; the stage is held until it reads again"),
            ));
            actions.push(Action::Notify {
                severity: Severity::Warning,
                message: format!("rollout {}: trigger source unavailable: {message}", self.id),
            });
        }
        self.reference.merge(&observation.baseline);

        for index in fired {
            let status = self.trigger_status(index);
            let trigger = &self.triggers[index].trigger;
            match trigger.action {
                policy::Action::Rollback => {
                    let verdict = self.verdict(now_ms, "trigger", Some(status));
                    if trigger.severity == Severity::Warning {
                        if let Some(steps) = self.ramp_steps() {
                            self.start_ramp(verdict, steps, now_ms, actions);
                            return;
                        }
                    }
                    self.roll_back(verdict, actions);
                    return;
                }
                policy::Action::Pause | policy::Action::Notify => {
                    let severity = trigger.severity;
                    let pause = trigger.action == policy::Action::Pause;
                    let message = describe(&status);
                    if !self.take_auto_action(now_ms) {
                        // Not acted on: armed again (its evidence still
                        // holds the stage), and said once.
                        self.triggers[index].rearm();
                        if !self.rate_limited_noted {
                            self.rate_limited_noted = true;
                            actions.push(record(
                                "rollout.rate_limited",
                                format!("{message}: not acted on, max_auto_actions_per_hour reached; the stage is held"),
                            ));
                        }
                        continue;
                    }
                    self.rate_limited_noted = false;
                    if pause && self.phase != Phase::Paused {
                        self.phase = Phase::Paused;
                        self.paused_by = Some(PauseReason::Trigger(index));
                        actions.push(record("rollout.pause", message.clone()));
                    }
                    actions.push(Action::Notify { severity, message });
                }
            }
        }

        if self.phase == Phase::Running {
            self.maybe_advance(now_ms, observation.candidate_healthy, actions);
        }
    }

    /// Moves to the next stage when this one has been held long enough,
    /// has its sample, and no trigger is gathering a verdict.
    fn maybe_advance(&mut self, now_ms: u64, candidate_healthy: bool, actions: &mut Vec<Action>) {
        let stage = &self.stages[self.stage];
        let elapsed = now_ms.saturating_sub(self.stage_started_ms);
        if elapsed < stage.hold_ms {
            return;
        }
        if stage.warmup && !candidate_healthy {
            return;
        }
        if self.waiting_for_traffic() {
            let deadline = self
                .policy
                .waiting_for_traffic_deadline
                .map_or(WAITING_DEADLINE_DEFAULT_MS, |p| p.as_ms());
            if elapsed >= stage.hold_ms + deadline && !self.waiting_notified {
                self.waiting_notified = true;
                actions.push(Action::Notify {
                    severity: Severity::Warning,
                    message: format!(
                        "rollout {} is waiting for traffic: stage {} has {} candidate requests, the triggers need {}",
                        self.id,
                        self.stage + 1,
                        self.stage_candidate.judged(),
                        self.min_sample()
                    ),
                });
            }
            return;
        }
        // Evidence against the candidate holds the stage, even while the
        // trigger still waits for its minimum sample or its `for:`.
        if self
            .triggers
            .iter()
            .filter(|t| t.trigger.action != policy::Action::Notify)
            .any(|t| t.breaching() || t.has_evidence())
        {
            return;
        }
        if self.stage + 1 < self.stages.len() {
            self.enter_stage(self.stage + 1, now_ms, actions);
        } else if stage.shadow_percent > 0.0 {
            self.phase = Phase::ShadowPassed;
            self.route(0.0, 0.0, actions);
            actions.push(record(
                "rollout.shadow_passed",
                "no trigger fired over the shadow run: verdict promote to canary".into(),
            ));
        } else {
            self.promote(actions);
        }
    }

    fn min_sample(&self) -> u64 {
        self.triggers
            .iter()
            .map(|t| t.trigger.min_sample)
            .max()
            .unwrap_or(0)
    }

    /// The stage lacks the candidate requests its triggers need, or a
    /// relative trigger's baseline cannot bound it yet.
    fn waiting_for_traffic(&self) -> bool {
        let warmup = self.stages[self.stage].warmup;
        let candidate_short = !warmup && self.stage_candidate.judged() < self.min_sample();
        candidate_short
            || self
                .triggers
                .iter()
                .any(|t| !t.baseline_ready(&self.reference) || (!warmup && t.short_of_sample()))
    }

    /// Starts stage `index` (again, after a pause); a gated stage waits for
    /// approval unless it has it.
    fn enter_stage(&mut self, index: usize, now_ms: u64, actions: &mut Vec<Action>) {
        if index != self.stage {
            self.stage_approved = false;
        }
        for trigger in &mut self.triggers {
            trigger.test.start_stage(index);
        }
        self.stage = index;
        self.stage_started_ms = now_ms;
        self.stage_candidate = Sample::default();
        self.stage_baseline = Sample::default();
        self.waiting_notified = false;
        let stage = self.stages[index].clone();
        if stage.approval && !self.stage_approved {
            self.phase = Phase::AwaitingApproval;
            actions.push(record(
                "rollout.awaiting_approval",
                format!(
                    "stage {} ({}%) waits for `rollout approve`",
                    index + 1,
                    stage.candidate_percent
                ),
            ));
            actions.push(Action::Notify {
                severity: Severity::Warning,
                message: format!(
                    "rollout {} of {} waits for approval before {}%",
                    self.id, self.policy.model, stage.candidate_percent
                ),
            });
            return;
        }
        self.phase = Phase::Running;
        self.route(stage.candidate_percent, stage.shadow_percent, actions);
        actions.push(record(
            "rollout.stage",
            format!(
                "stage {}/{}: candidate {}%{}",
                index + 1,
                self.stages.len(),
                stage.candidate_percent,
                if stage.shadow_percent > 0.0 {
                    format!(", shadow {}%", stage.shadow_percent)
                } else {
                    String::new()
                }
            ),
        ));
    }

    fn route(&mut self, candidate_percent: f64, shadow_percent: f64, actions: &mut Vec<Action>) {
        self.routed = (candidate_percent, shadow_percent);
        actions.push(Action::Route {
            candidate_percent,
            shadow_percent,
        });
    }

    fn promote(&mut self, actions: &mut Vec<Action>) {
        self.phase = Phase::Promoted;
        self.routed = (100.0, 0.0);
        actions.push(Action::Promote);
        actions.push(record(
            "rollout.promote",
            format!(
                "{} is the last-known-good of {}",
                self.policy.candidate, self.policy.model
            ),
        ));
    }

    fn roll_back(&mut self, verdict: Verdict, actions: &mut Vec<Action>) {
        let shadow = self.stages[self.stage].shadow_percent > 0.0;
        self.phase = if shadow {
            Phase::Rejected
        } else {
            Phase::RolledBack
        };
        self.paused_by = None;
        self.routed = (0.0, 0.0);
        self.ramp = None;
        let what = match &verdict.trigger {
            Some(status) => describe(status),
            None => "operator rollback".to_string(),
        };
        actions.push(Action::Rollback {
            verdict: verdict.clone(),
        });
        actions.push(record(
            if shadow {
                "rollout.reject"
            } else {
                "rollout.rollback"
            },
            what.clone(),
        ));
        actions.push(Action::Notify {
            severity: Severity::Critical,
            message: format!(
                "{} {} of {}: {what}",
                if shadow { "rejected" } else { "rolled back" },
                self.policy.candidate,
                self.policy.model
            ),
        });
        self.verdict = Some(verdict);
    }

    /// The graduated rollback's steps below the candidate's share now, or
    /// `None` when the policy has none or none is below (swap at once).
    fn ramp_steps(&self) -> Option<Vec<f64>> {
        let graduated = self.policy.rollback.as_ref()?.graduated.as_ref()?;
        // Shadow traffic never answers users: nothing to ramp.
        if self.stages[self.stage].shadow_percent > 0.0 {
            return None;
        }
        let steps: Vec<f64> = graduated
            .steps
            .iter()
            .copied()
            .filter(|&s| s < self.routed.0)
            .collect();
        (!steps.is_empty()).then_some(steps)
    }

    /// The verdict is made: the candidate is condemned and its share steps
    /// down; the final `Rollback` carries this verdict unchanged.
    fn start_ramp(
        &mut self,
        verdict: Verdict,
        steps: Vec<f64>,
        now_ms: u64,
        actions: &mut Vec<Action>,
    ) {
        let hold_ms = self
            .policy
            .rollback
            .as_ref()
            .and_then(|r| r.graduated.as_ref())
            .map_or(0, |g| g.hold.as_ms());
        let what = verdict
            .trigger
            .as_ref()
            .map_or_else(|| "operator rollback".to_string(), describe);
        let from = self.routed.0;
        self.phase = Phase::RollingBack;
        self.paused_by = None;
        self.verdict = Some(verdict);
        self.route(steps[0], 0.0, actions);
        actions.push(record(
            "rollout.ramp_down",
            format!(
                "graduated rollback (warning trigger) {what}: candidate {from}% → {}%, step 1/{}, held {}",
                steps[0],
                steps.len() + 1,
                policy::Period::from_ms(hold_ms)
            ),
        ));
        actions.push(Action::Notify {
            severity: Severity::Warning,
            message: format!(
                "rolling back {} of {} in steps ({}% → 0%): {what}",
                self.policy.candidate,
                self.policy.model,
                steps
                    .iter()
                    .map(|s| format!("{s}%"))
                    .collect::<Vec<_>>()
                    .join(" → ")
            ),
        });
        self.ramp = Some(Ramp {
            steps,
            step: 0,
            hold_ms,
            started_ms: now_ms,
            step_started_ms: now_ms,
            baseline: Sample::default(),
        });
    }

    /// One tick of a graduated rollback: a critical trigger or a baseline
    /// beyond its slack completes it at once; otherwise the next step
    /// comes when this one's hold is over, and the swap after the last.
    fn ramp_tick(&mut self, now_ms: u64, observation: Observation, actions: &mut Vec<Action>) {
        let Some(ramp) = self.ramp.as_mut() else {
            // Not reachable through `step`; finish safely if it ever is.
            self.complete_ramp("graduated rollback without its plan".into(), actions);
            return;
        };
        ramp.baseline.merge(&observation.baseline);
        self.stage_candidate.merge(&observation.candidate);
        self.stage_baseline.merge(&observation.baseline);
        // Severe triggers always swap at once, even mid-ramp. The reference
        // stays the baseline before the ramp.
        let critical = self.triggers.iter_mut().find_map(|t| {
            let severe = t.trigger.action == policy::Action::Rollback
                && t.trigger.severity == Severity::Critical;
            let reading = observation.readings.get(&t.index);
            (severe
                && t.observe_tick(
                    now_ms,
                    &observation.candidate,
                    &self.candidate_total,
                    &self.reference,
                    (&self.stage_candidate, &self.stage_baseline),
                    reading,
                ))
            .then_some(t.index)
        });
        if let Some(index) = critical {
            let status = self.trigger_status(index);
            self.complete_ramp(
                format!(
                    "critical trigger fired during the ramp: {}",
                    describe(&status)
                ),
                actions,
            );
            return;
        }
        if let Some(why) = self.baseline_misbehaves() {
            self.complete_ramp(why, actions);
            return;
        }
        let Some(ramp) = self.ramp.as_mut() else {
            return;
        };
        if now_ms.saturating_sub(ramp.step_started_ms) < ramp.hold_ms {
            return;
        }
        let Some(&next) = ramp.steps.get(ramp.step + 1) else {
            let verdict = self.verdict.clone();
            self.final_rollback(verdict, actions);
            return;
        };
        let from = ramp.steps[ramp.step];
        ramp.step += 1;
        ramp.step_started_ms = now_ms;
        let (step, total) = (ramp.step, ramp.steps.len());
        self.route(next, 0.0, actions);
        actions.push(record(
            "rollout.ramp_down",
            format!(
                "graduated rollback: candidate {from}% → {next}%, step {}/{}",
                step + 1,
                total + 1
            ),
        ));
    }

    /// Ends a graduated rollback now (baseline misbehaving, critical
    /// trigger, operator, restart): the swap to 0% with the verdict.
    fn complete_ramp(&mut self, why: String, actions: &mut Vec<Action>) {
        let verdict = self.verdict.clone();
        let share = self.routed.0;
        let before = actions.len();
        self.final_rollback(verdict, actions);
        // After the swap: recording why never delays it.
        actions.insert(
            (before + 1).min(actions.len()),
            record(
                "rollout.ramp_aborted",
                format!("{why}: candidate {share}% → 0% at once"),
            ),
        );
    }

    fn final_rollback(&mut self, verdict: Option<Verdict>, actions: &mut Vec<Action>) {
        // The verdict is set when the ramp starts; a stored state without
        // one still rolls back, as the operator's.
        let verdict = verdict.unwrap_or_else(|| {
            let at = self
                .ramp
                .as_ref()
                .map_or(self.stage_started_ms, |r| r.started_ms);
            self.verdict(at, "operator", None)
        });
        self.roll_back(verdict, actions);
    }

    /// The baseline since the ramp began, against its own figures before
    /// it, with the `verification` slack: `Some(why)` when it is worse.
    /// Too few requests (either side) judge nothing: the ramp goes on.
    fn baseline_misbehaves(&self) -> Option<String> {
        let ramp = self.ramp.as_ref()?;
        let verification = self.policy.verification.clone().unwrap_or_default();
        let (now, before) = (&ramp.baseline, &self.reference);
        let min = verification.min_sample;
        if now.judged() < min || before.judged() < min {
            return None;
        }
        let mut why = Vec::new();
        if let (Some(rate), Some(reference)) = (
            metric_value(Metric::ErrorRate, now),
            metric_value(Metric::ErrorRate, before),
        ) {
            let max = error_rate_max(&verification, reference);
            if rate > max + 1e-12 {
                why.push(format!(
                    "error rate {:.2}% vs {:.2}% before the ramp (max {:.2}%)",
                    rate * 100.0,
                    reference * 100.0,
                    max * 100.0
                ));
            }
        }
        if let (Some(p95), Some(reference)) = (
            metric_value(Metric::LatencyP95, now),
            metric_value(Metric::LatencyP95, before),
        ) {
            let max = latency_max(&verification, reference);
            if p95 > max {
                why.push(format!(
                    "p95 {p95:.1} ms vs {reference:.1} ms before the ramp (max {max:.1} ms)"
                ));
            }
        }
        (!why.is_empty()).then(|| {
            format!(
                "baseline {} misbehaves during the graduated rollback: {}, {} vs {} requests",
                self.baseline(),
                why.join(", "),
                now.judged(),
                before.judged()
            )
        })
    }

    fn verdict(&self, now_ms: u64, by: &str, trigger: Option<TriggerStatus>) -> Verdict {
        Verdict {
            at_ms: now_ms,
            by: by.to_string(),
            trigger,
            detection_ms: self
                .candidate_first_ms
                .map(|first| now_ms.saturating_sub(first)),
            stage: self.stage,
            candidate_percent: self.routed.0,
            window_from_ms: self.stage_started_ms,
            window_to_ms: now_ms,
        }
    }

    /// Counts an automatic pause or notice against the hourly cap; false
    /// when the cap is reached. Rollbacks are never capped: going back to
    /// the baseline is the safe direction, and it ends the rollout.
    fn take_auto_action(&mut self, now_ms: u64) -> bool {
        self.auto_actions_ms
            .retain(|&at| now_ms.saturating_sub(at) < HOUR_MS);
        let cap = self
            .policy
            .max_auto_actions_per_hour
            .map_or(u32::MAX, |c| c);
        if self.auto_actions_ms.len() >= cap as usize {
            return false;
        }
        self.auto_actions_ms.push(now_ms);
        true
    }

    fn command(
        &mut self,
        now_ms: u64,
        command: Command,
        actions: &mut Vec<Action>,
    ) -> Result<(), Refused> {
        let refuse = |why: &str| {
            Err(Refused {
                message: format!(
                    "cannot {} rollout {}: {why} (phase {})",
                    command.name(),
                    self.id,
                    self.phase.name()
                ),
            })
        };
        if !self.is_open() {
            return refuse("it is finished");
        }
        if self.phase == Phase::RollingBack {
            // Condemned from the verdict on: nothing routes the candidate
            // up again; `rollback` and `abort` finish the ramp now.
            return match command {
                Command::Rollback | Command::Abort => {
                    self.complete_ramp(format!("operator {}", command.name()), actions);
                    Ok(())
                }
                _ => refuse("a graduated rollback is under way (`rollback` completes it now)"),
            };
        }
        match command {
            Command::Pause => {
                if self.phase == Phase::Paused {
                    return refuse("it is already paused");
                }
                self.phase = Phase::Paused;
                self.paused_by = Some(PauseReason::Operator);
                actions.push(record("rollout.pause", "operator pause".into()));
            }
            Command::Resume => {
                if self.phase != Phase::Paused {
                    return refuse("it is not paused");
                }
                self.paused_by = None;
                actions.push(record("rollout.resume", "operator resume".into()));
                // A pause trigger acts again if its evidence still holds.
                for trigger in &mut self.triggers {
                    if trigger.fired && trigger.trigger.action == policy::Action::Pause {
                        trigger.rearm();
                    }
                }
                // The stage starts over: a fresh hold, on the stage's shares.
                self.phase = Phase::Running;
                self.enter_stage(self.stage, now_ms, actions);
            }
            Command::Approve => {
                if self.phase != Phase::AwaitingApproval {
                    return refuse("no stage is waiting for approval");
                }
                actions.push(record(
                    "rollout.approve",
                    format!("stage {} approved", self.stage + 1),
                ));
                self.stage_approved = true;
                self.enter_stage(self.stage, now_ms, actions);
            }
            Command::Promote => {
                actions.push(record("rollout.promote_now", "operator promotion".into()));
                self.promote(actions);
            }
            Command::Abort => {
                self.phase = Phase::Aborted;
                self.paused_by = None;
                self.route(0.0, 0.0, actions);
                actions.push(record(
                    "rollout.abort",
                    "operator abort: all traffic on the baseline".into(),
                ));
            }
            Command::Rollback => {
                let verdict = self.verdict(now_ms, "operator", None);
                self.roll_back(verdict, actions);
            }
        }
        Ok(())
    }

    fn trigger_status(&self, index: usize) -> TriggerStatus {
        self.triggers[index].status(&self.stage_candidate, &self.stage_baseline, &self.reference)
    }

    pub fn status(&self, now_ms: u64) -> Status {
        let stage = &self.stages[self.stage];
        Status {
            id: self.id.clone(),
            model: self.policy.model.clone(),
            candidate: self.policy.candidate.clone(),
            baseline: self.baseline().to_string(),
            strategy: strategy_name(&self.policy.strategy).to_string(),
            phase: self.phase,
            paused_by: self.paused_by.clone(),
            stage: self.stage,
            stages: self.stages.len(),
            candidate_percent: self.routed.0,
            shadow_percent: self.routed.1,
            stage_elapsed_ms: now_ms.saturating_sub(self.stage_started_ms),
            stage_hold_ms: stage.hold_ms,
            waiting_for_traffic: self.is_open()
                && self.phase != Phase::RollingBack
                && self.waiting_for_traffic(),
            triggers: (0..self.triggers.len())
                .map(|i| self.trigger_status(i))
                .collect(),
            verdict: self.verdict.clone(),
            ramp: self.ramp.as_ref().map(|ramp| RampStatus {
                step: ramp.step,
                steps: ramp.steps.iter().copied().chain([0.0]).collect(),
                step_elapsed_ms: now_ms.saturating_sub(ramp.step_started_ms),
                hold_ms: ramp.hold_ms,
                baseline_requests: ramp.baseline.judged(),
            }),
        }
    }
}

pub fn strategy_name(strategy: &Strategy) -> &'static str {
    match strategy {
        Strategy::Canary(_) => "canary",
        Strategy::BlueGreen(_) => "blue_green",
        Strategy::Shadow(_) => "shadow",
        Strategy::Linear(_) => "linear",
    }
}

fn record(kind: &str, detail: String) -> Action {
    Action::Record {
        kind: kind.to_string(),
        detail,
    }
}

/// `latency_p95 above +30% vs baseline: candidate 41.2 ms vs baseline
/// 20.1 ms (limit 26.9 ms), 412 vs 7,803 requests, e-value 312 ≥ 300`.
pub fn describe(status: &TriggerStatus) -> String {
    let value = |v: Option<f64>| status.unit.show(v);
    format!(
        "{}: candidate {} vs baseline {} (limit {}), {} vs {} requests, e-value {:.0} ≥ {:.0}",
        status.rule,
        value(status.candidate_value),
        value(status.baseline_value),
        value(status.limit),
        status.candidate_requests,
        status.baseline_requests,
        status.e_value.min(1e12),
        status.e_value_needed
    )
}

/// The highest error rate still within `verification`'s slack of `rate`.
fn error_rate_max(verification: &Verification, rate: f64) -> f64 {
    match verification.error_rate {
        Threshold::PercentagePoints(pp) => rate + pp / 100.0,
        Threshold::RelativePercent(p) => rate * (1.0 + p / 100.0),
        _ => rate,
    }
}

/// The highest p95 (ms) still within `verification`'s slack of `ms` (as
/// the incident's recovery check).
fn latency_max(verification: &Verification, ms: f64) -> f64 {
    let factor = match verification.latency_p95 {
        Threshold::RelativePercent(p) => 1.0 + p / 100.0,
        _ => 1.0,
    };
    (ms * factor).max(ms + verification.latency_tolerance.as_ms() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::trigger::TriggerState;

    fn policy(strategy: serde_json::Value, triggers: serde_json::Value) -> Policy {
        serde_json::from_value(serde_json::json!({
            "model": "fraud-scorer",
            "candidate": "v2",
            "baseline": "v1",
            "strategy": strategy,
            "triggers": triggers,
        }))
        .unwrap()
    }

    fn canary() -> Policy {
        policy(
            serde_json::json!({ "canary": { "steps": [5, 50, 100], "bake": "10s" } }),
            serde_json::json!([
                { "metric": "error_rate", "above": "+1pp", "action": "rollback" },
                { "metric": "latency_p95", "above": "+30%", "action": "rollback" }
            ]),
        )
    }

    use crate::analysis::trigger::test_support::sample;

    /// One second of traffic at 1,000 req/s split by the routed share.
    fn second(
        rollout: &Rollout,
        candidate_errors_per_mille: u64,
        candidate_latency_us: u64,
    ) -> Observation {
        let on_candidate = (rollout.routed.0 * 10.0) as u64;
        let errors = on_candidate * candidate_errors_per_mille / 1000;
        Observation {
            candidate: sample(on_candidate, errors, candidate_latency_us),
            baseline: sample(1000 - on_candidate, (1000 - on_candidate) / 200, 10_000),
            candidate_healthy: true,
            ..Observation::default()
        }
    }

    fn routes(actions: &[Action]) -> Vec<(f64, f64)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Route {
                    candidate_percent,
                    shadow_percent,
                } => Some((*candidate_percent, *shadow_percent)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_healthy_canary_walks_every_step_and_promotes() {
        let (mut rollout, actions) = Rollout::start("ro-1", canary(), 0).unwrap();
        assert_eq!(routes(&actions), vec![(5.0, 0.0)]);
        let mut seen = vec![];
        for t in 1..=40 {
            let obs = second(&rollout, 5, 10_000);
            let actions = rollout.step(t * 1000, Input::Tick(obs)).unwrap();
            seen.extend(routes(&actions));
            if actions.contains(&Action::Promote) {
                break;
            }
        }
        assert_eq!(seen, vec![(50.0, 0.0), (100.0, 0.0)]);
        assert_eq!(rollout.phase, Phase::Promoted);
        assert!(rollout.verdict.is_none());
    }

    #[test]
    fn more_errors_roll_back_with_the_numbers() {
        let (mut rollout, _) = Rollout::start("ro-1", canary(), 0).unwrap();
        let mut verdict = None;
        for t in 1..=30 {
            let obs = second(&rollout, 55, 10_000);
            for action in rollout.step(t * 1000, Input::Tick(obs)).unwrap() {
                if let Action::Rollback { verdict: v } = action {
                    verdict = Some(v);
                }
            }
            if verdict.is_some() {
                break;
            }
        }
        let verdict = verdict.expect("rolled back");
        let trigger = verdict.trigger.as_ref().unwrap();
        assert_eq!(trigger.index, 0);
        assert_eq!(trigger.state, TriggerState::Fired);
        assert!(trigger.candidate_value.unwrap() > 0.04);
        assert!(trigger.baseline_value.unwrap() < 0.01);
        assert!(trigger.e_value >= trigger.e_value_needed);
        assert!(verdict.detection_ms.unwrap() <= 10_000, "{verdict:?}");
        assert_eq!(rollout.phase, Phase::RolledBack);
        assert_eq!(rollout.routed, (0.0, 0.0));
        // Condemned: no command brings traffic back.
        for command in [Command::Resume, Command::Approve, Command::Promote] {
            assert!(rollout.step(99_000, Input::Command(command)).is_err());
        }
    }

    #[test]
    fn slower_candidate_rolls_back_on_latency() {
        let (mut rollout, _) = Rollout::start("ro-1", canary(), 0).unwrap();
        for t in 1..=30 {
            let obs = second(&rollout, 5, 20_000);
            rollout.step(t * 1000, Input::Tick(obs)).unwrap();
        }
        let verdict = rollout.verdict.expect("rolled back");
        assert_eq!(verdict.trigger.unwrap().metric, policy::Metric::LatencyP95);
    }

    #[test]
    fn no_traffic_never_advances_and_notifies_after_the_deadline() {
        let mut p = canary();
        p.waiting_for_traffic_deadline = Some("30s".parse().unwrap());
        let (mut rollout, _) = Rollout::start("ro-1", p, 0).unwrap();
        let mut notified = 0;
        for t in 1..=120 {
            let actions = rollout
                .step(t * 1000, Input::Tick(Observation::default()))
                .unwrap();
            assert!(routes(&actions).is_empty(), "advanced without traffic");
            notified += actions
                .iter()
                .filter(|a| matches!(a, Action::Notify { .. }))
                .count();
        }
        assert_eq!(notified, 1);
        let status = rollout.status(120_000);
        assert!(status.waiting_for_traffic);
        assert_eq!(status.triggers[0].state, TriggerState::WaitingForTraffic);
    }

    #[test]
    fn approval_gates_wait_for_a_human() {
        let p = policy(
            serde_json::json!({ "canary": { "steps": [5, 100], "bake": "1s", "approval": [100] } }),
            serde_json::json!([{ "metric": "error_rate", "above": "5%", "action": "rollback" }]),
        );
        let (mut rollout, _) = Rollout::start("ro-1", p, 0).unwrap();
        for t in 1..=5 {
            let obs = second(&rollout, 0, 10_000);
            rollout.step(t * 1000, Input::Tick(obs)).unwrap();
        }
        assert_eq!(rollout.phase, Phase::AwaitingApproval);
        assert_eq!(rollout.routed, (5.0, 0.0));
        let actions = rollout
            .step(6_000, Input::Command(Command::Approve))
            .unwrap();
        assert_eq!(routes(&actions), vec![(100.0, 0.0)]);
        assert_eq!(rollout.phase, Phase::Running);
    }

    #[test]
    fn blue_green_warms_up_flips_and_flips_back() {
        let p = policy(
            serde_json::json!({ "blue_green": { "warmup": "5s", "bake": "30s" } }),
            serde_json::json!([{ "metric": "error_rate", "above": "+1pp", "action": "rollback" }]),
        );
        let (mut rollout, actions) = Rollout::start("ro-1", p, 0).unwrap();
        assert_eq!(routes(&actions), vec![(0.0, 0.0)]);
        // Unhealthy during warm-up: no flip.
        for t in 1..=8 {
            let mut obs = second(&rollout, 0, 10_000);
            obs.candidate_healthy = false;
            assert!(routes(&rollout.step(t * 1000, Input::Tick(obs)).unwrap()).is_empty());
        }
        let obs = second(&rollout, 0, 10_000);
        let actions = rollout.step(9_000, Input::Tick(obs)).unwrap();
        assert_eq!(routes(&actions), vec![(100.0, 0.0)]);
        // After the flip the baseline serves nothing; its warm-up traffic
        // is the reference, and a failing candidate flips back.
        for t in 10..=40 {
            let obs = second(&rollout, 100, 10_000);
            rollout.step(t * 1000, Input::Tick(obs)).unwrap();
        }
        assert_eq!(rollout.phase, Phase::RolledBack);
        assert_eq!(rollout.routed, (0.0, 0.0));
    }

    #[test]
    fn shadow_rejects_or_passes() {
        let p = policy(
            serde_json::json!({ "shadow": { "percent": 20, "duration": "20s" } }),
            serde_json::json!([{ "metric": "error_rate", "above": "+1pp", "action": "rollback" }]),
        );
        let shadow_second = |errors: u64| Observation {
            candidate: sample(200, errors, 10_000),
            baseline: sample(1000, 5, 10_000),
            candidate_healthy: true,
            ..Observation::default()
        };
        let (mut clean, actions) = Rollout::start("ro-1", p.clone(), 0).unwrap();
        assert_eq!(routes(&actions), vec![(0.0, 20.0)]);
        for t in 1..=25 {
            clean.step(t * 1000, Input::Tick(shadow_second(1))).unwrap();
        }
        assert_eq!(clean.phase, Phase::ShadowPassed);
        let (mut bad, _) = Rollout::start("ro-2", p, 0).unwrap();
        for t in 1..=25 {
            bad.step(t * 1000, Input::Tick(shadow_second(30))).unwrap();
        }
        assert_eq!(bad.phase, Phase::Rejected);
        assert!(bad.phase.condemns());
    }

    #[test]
    fn restart_puts_traffic_on_the_baseline_until_resumed() {
        let (mut rollout, _) = Rollout::start("ro-1", canary(), 0).unwrap();
        // Persisted and reloaded, as the runtime does.
        let json = serde_json::to_string(&rollout).unwrap();
        rollout = serde_json::from_str(&json).unwrap();
        let actions = rollout.step(5_000, Input::Restarted).unwrap();
        assert_eq!(routes(&actions), vec![(0.0, 0.0)]);
        assert_eq!(rollout.paused_by, Some(PauseReason::Restart));
        // Ticks while paused never advance.
        for t in 6..=30 {
            let obs = second(&rollout, 0, 10_000);
            assert!(routes(&rollout.step(t * 1000, Input::Tick(obs)).unwrap()).is_empty());
        }
        let actions = rollout
            .step(31_000, Input::Command(Command::Resume))
            .unwrap();
        assert_eq!(routes(&actions), vec![(5.0, 0.0)]);
    }

    #[test]
    fn pause_triggers_are_capped_per_hour() {
        let mut p = policy(
            serde_json::json!({ "linear": { "step": 25, "interval": "1s" } }),
            serde_json::json!([{ "metric": "error_rate", "above": "1%", "action": "pause" }]),
        );
        p.max_auto_actions_per_hour = Some(1);
        let (mut rollout, _) = Rollout::start("ro-1", p, 0).unwrap();
        assert_eq!(rollout.stages.len(), 4);
        let mut paused = 0;
        for t in 1..=20 {
            let obs = second(&rollout, 200, 10_000);
            let actions = rollout.step(t * 1000, Input::Tick(obs)).unwrap();
            paused += actions
                .iter()
                .filter(|a| matches!(a, Action::Record { kind, .. } if kind == "rollout.pause"))
                .count();
        }
        assert_eq!(paused, 1);
        assert_eq!(rollout.paused_by, Some(PauseReason::Trigger(0)));
    }

    #[test]
    fn commands_that_do_not_apply_are_refused_and_change_nothing() {
        let (mut rollout, _) = Rollout::start("ro-1", canary(), 0).unwrap();
        let before = rollout.clone();
        assert!(rollout.step(1, Input::Command(Command::Resume)).is_err());
        assert!(rollout.step(1, Input::Command(Command::Approve)).is_err());
        assert_eq!(rollout, before);
        rollout.step(2, Input::Command(Command::Abort)).unwrap();
        assert_eq!(rollout.phase, Phase::Aborted);
        assert!(!rollout.phase.condemns());
        assert!(rollout.step(3, Input::Command(Command::Rollback)).is_err());
    }

    #[test]
    fn a_broken_policy_starts_nothing() {
        let mut p = canary();
        p.baseline = None;
        assert_eq!(Rollout::start("ro-1", p, 0).unwrap_err().path, "baseline");
        let mut p = canary();
        p.triggers.clear();
        assert_eq!(Rollout::start("ro-1", p, 0).unwrap_err().path, "triggers");
    }

    #[test]
    fn relative_rules_without_a_baseline_never_promote() {
        // All traffic on the candidate from the start: the baseline never
        // serves, so "+1pp vs baseline" can judge nothing.
        let p = policy(
            serde_json::json!({ "canary": { "steps": [100], "bake": "1s" } }),
            serde_json::json!([{ "metric": "error_rate", "above": "+1pp", "action": "rollback" }]),
        );
        let (mut rollout, _) = Rollout::start("ro-1", p, 0).unwrap();
        for t in 1..=60 {
            let obs = second(&rollout, 500, 10_000);
            rollout.step(t * 1000, Input::Tick(obs)).unwrap();
        }
        assert_eq!(rollout.phase, Phase::Running);
        assert!(rollout.status(60_000).waiting_for_traffic);
    }

    #[test]
    fn blue_green_flips_only_once_the_baseline_can_judge() {
        let p = policy(
            serde_json::json!({ "blue_green": { "warmup": "1s", "bake": "30s" } }),
            serde_json::json!([{ "metric": "latency_p99", "above": "+30%", "action": "rollback" }]),
        );
        let (mut rollout, _) = Rollout::start("ro-1", p, 0).unwrap();
        // 20 baseline requests a second: a p99 bound needs ~1,000 of them.
        let quiet = |candidate: &Rollout, latency: u64| Observation {
            candidate: sample((candidate.routed.0 / 5.0) as u64, 0, latency),
            baseline: sample(20 - (candidate.routed.0 / 5.0) as u64, 0, 10_000),
            candidate_healthy: true,
            ..Observation::default()
        };
        for t in 1..=10 {
            let obs = quiet(&rollout, 10_000);
            rollout.step(t * 1000, Input::Tick(obs)).unwrap();
        }
        assert_eq!(
            rollout.routed.0, 0.0,
            "flipped before the baseline could bound p99"
        );
        let mut t = 10;
        while rollout.routed.0 == 0.0 && t < 200 {
            t += 1;
            let obs = quiet(&rollout, 10_000);
            rollout.step(t * 1000, Input::Tick(obs)).unwrap();
        }
        assert_eq!(rollout.routed.0, 100.0);
        for t in t + 1..t + 60 {
            let obs = quiet(&rollout, 100_000);
            rollout.step(t * 1000, Input::Tick(obs)).unwrap();
        }
        assert_eq!(rollout.phase, Phase::RolledBack);
    }

    #[test]
    fn a_capped_pause_still_holds_the_stage() {
        let mut p = policy(
            serde_json::json!({ "linear": { "step": 25, "interval": "1s" } }),
            serde_json::json!([
                { "metric": "error_rate", "above": "1%", "action": "notify" },
                { "metric": "error_rate", "above": "2%", "action": "pause" }
            ]),
        );
        p.max_auto_actions_per_hour = Some(1);
        let (mut rollout, _) = Rollout::start("ro-1", p, 0).unwrap();
        let mut rate_limited = 0;
        for t in 1..=60 {
            let obs = second(&rollout, 300, 10_000);
            let actions = rollout.step(t * 1000, Input::Tick(obs)).unwrap();
            rate_limited += actions
                .iter()
                .filter(
                    |a| matches!(a, Action::Record { kind, .. } if kind == "rollout.rate_limited"),
                )
                .count();
        }
        assert_ne!(rollout.phase, Phase::Promoted);
        assert_eq!(rollout.routed.0, 25.0, "advanced past evidence");
        assert_eq!(rate_limited, 1, "said once");
    }

    #[test]
    fn resume_after_a_pause_trigger_pauses_again_on_the_same_evidence() {
        let p = policy(
            serde_json::json!({ "canary": { "steps": [10, 100], "bake": "1s" } }),
            serde_json::json!([{ "metric": "error_rate", "above": "2%", "action": "pause" }]),
        );
        let (mut rollout, _) = Rollout::start("ro-1", p, 0).unwrap();
        for t in 1..=20 {
            let obs = second(&rollout, 300, 10_000);
            rollout.step(t * 1000, Input::Tick(obs)).unwrap();
        }
        assert_eq!(rollout.paused_by, Some(PauseReason::Trigger(0)));
        rollout
            .step(21_000, Input::Command(Command::Resume))
            .unwrap();
        let obs = second(&rollout, 300, 10_000);
        rollout.step(22_000, Input::Tick(obs)).unwrap();
        assert_eq!(rollout.paused_by, Some(PauseReason::Trigger(0)));
        assert_eq!(rollout.routed.0, 10.0);
    }

    /// Canary at 50% whose error trigger is a warning, under a policy with a
    /// graduated rollback of [25, 5] held 10s; latency stays critical.
    fn graduated(error_severity: &str) -> Policy {
        let mut p = policy(
            serde_json::json!({ "canary": { "steps": [50, 100], "bake": "60s" } }),
            serde_json::json!([
                { "metric": "error_rate", "above": "+1pp", "severity": error_severity, "action": "rollback" },
                { "metric": "latency_p95", "above": "+30%", "action": "rollback" }
            ]),
        );
        p.rollback = serde_json::from_value(
            serde_json::json!({ "graduated": { "steps": [25, 5], "hold": "10s" } }),
        )
        .unwrap();
        p
    }

    /// Failing candidate until the verdict; returns its time and actions.
    fn until_verdict(rollout: &mut Rollout) -> (u64, Vec<Action>) {
        for t in 1..=60 {
            let obs = second(rollout, 60, 10_000);
            let actions = rollout.step(t * 1000, Input::Tick(obs)).unwrap();
            if rollout.verdict.is_some() {
                return (t * 1000, actions);
            }
        }
        panic!("no verdict");
    }

    fn kinds(actions: &[Action]) -> Vec<&str> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Record { kind, .. } => Some(kind.as_str()),
                _ => None,
            })
            .collect()
    }

    fn rollback_of(actions: &[Action]) -> Option<&Verdict> {
        actions.iter().find_map(|a| match a {
            Action::Rollback { verdict } => Some(verdict),
            _ => None,
        })
    }

    #[test]
    fn a_warning_trigger_ramps_back_in_steps_then_swaps() {
        let (mut rollout, _) = Rollout::start("ro-1", graduated("warning"), 0).unwrap();
        let (at, actions) = until_verdict(&mut rollout);
        assert_eq!(routes(&actions), vec![(25.0, 0.0)]);
        assert!(rollback_of(&actions).is_none(), "swapped at once");
        assert_eq!(kinds(&actions), vec!["rollout.ramp_down"]);
        assert_eq!(rollout.phase, Phase::RollingBack);
        assert!(rollout.phase.condemns() && rollout.is_open());
        let verdict = rollout.verdict.clone().unwrap();
        assert_eq!((verdict.at_ms, verdict.candidate_percent), (at, 50.0));
        let status = rollout.status(at + 1000);
        assert_eq!(status.phase.name(), "rolling_back");
        let ramp = status.ramp.unwrap();
        assert_eq!((ramp.step, ramp.steps), (0, vec![25.0, 5.0, 0.0]));
        // Each step is held 10s, with or without traffic; then the swap,
        // with the verdict as it was made.
        let mut seen = vec![];
        let mut swapped = None;
        for t in 1..=25 {
            let now = at + t * 1000;
            let obs = if t % 2 == 0 {
                Observation::default()
            } else {
                second(&rollout, 60, 10_000)
            };
            let actions = rollout.step(now, Input::Tick(obs)).unwrap();
            seen.extend(routes(&actions).into_iter().map(|r| (now - at, r.0)));
            if let Some(v) = rollback_of(&actions) {
                assert_eq!(v, &verdict);
                assert!(!kinds(&actions).contains(&"rollout.ramp_aborted"));
                swapped = Some(now - at);
            }
        }
        assert_eq!(seen, vec![(10_000, 5.0)]);
        assert_eq!(swapped, Some(20_000));
        assert_eq!(rollout.phase, Phase::RolledBack);
        assert_eq!(rollout.routed, (0.0, 0.0));
        assert_eq!(rollout.verdict, Some(verdict));
        assert!(rollout.status(at + 30_000).ramp.is_none());
    }

    #[test]
    fn a_misbehaving_baseline_completes_the_ramp_at_once() {
        let (mut rollout, _) = Rollout::start("ro-1", graduated("warning"), 0).unwrap();
        let (at, _) = until_verdict(&mut rollout);
        let verdict = rollout.verdict.clone().unwrap();
        // The baseline fails 5% of its requests (0.4% before the ramp).
        let mut obs = second(&rollout, 60, 10_000);
        obs.baseline = sample(750, 38, 10_000);
        let actions = rollout.step(at + 1000, Input::Tick(obs)).unwrap();
        assert_eq!(rollback_of(&actions), Some(&verdict));
        assert!(routes(&actions).is_empty());
        // The swap comes first; then why.
        assert!(matches!(actions[0], Action::Rollback { .. }));
        let why = actions
            .iter()
            .find_map(|a| match a {
                Action::Record { kind, detail } if kind == "rollout.ramp_aborted" => Some(detail),
                _ => None,
            })
            .expect("ramp_aborted recorded");
        assert!(
            why.contains("error rate 5.07% vs 0.40% before the ramp (max 1.40%)"),
            "{why}"
        );
        assert!(why.contains("25% → 0% at once"), "{why}");
        assert_eq!(rollout.phase, Phase::RolledBack);
        assert_eq!(rollout.routed, (0.0, 0.0));
    }

    #[test]
    fn a_slower_baseline_completes_the_ramp_but_too_few_requests_judge_nothing() {
        let (mut rollout, _) = Rollout::start("ro-1", graduated("warning"), 0).unwrap();
        let (at, _) = until_verdict(&mut rollout);
        // 50 slow baseline requests: below verification.min_sample (100).
        let obs = Observation {
            baseline: sample(50, 0, 40_000),
            ..Observation::default()
        };
        let actions = rollout.step(at + 1000, Input::Tick(obs.clone())).unwrap();
        assert!(actions.is_empty(), "{actions:?}");
        assert_eq!(rollout.phase, Phase::RollingBack);
        // 100: judged; p95 40ms against 10ms before (+20% or +5ms).
        let actions = rollout.step(at + 2000, Input::Tick(obs)).unwrap();
        assert!(rollback_of(&actions).is_some());
        let why = format!("{actions:?}");
        assert!(why.contains("max 15.0 ms"), "{why}");
    }

    #[test]
    fn severe_triggers_still_swap_at_once() {
        let (mut rollout, _) = Rollout::start("ro-1", graduated("critical"), 0).unwrap();
        let (_, actions) = until_verdict(&mut rollout);
        assert!(rollback_of(&actions).is_some());
        assert!(routes(&actions).is_empty());
        assert_eq!(rollout.phase, Phase::RolledBack);
        // An operator's rollback swaps at once too.
        let (mut rollout, _) = Rollout::start("ro-2", graduated("warning"), 0).unwrap();
        let actions = rollout
            .step(1000, Input::Command(Command::Rollback))
            .unwrap();
        assert!(rollback_of(&actions).is_some());
        assert_eq!(rollout.phase, Phase::RolledBack);
    }

    #[test]
    fn a_critical_trigger_during_the_ramp_completes_it() {
        let (mut rollout, _) = Rollout::start("ro-1", graduated("warning"), 0).unwrap();
        let (at, _) = until_verdict(&mut rollout);
        let mut completed = None;
        for t in 1..=9 {
            let obs = second(&rollout, 60, 100_000);
            let actions = rollout.step(at + t * 1000, Input::Tick(obs)).unwrap();
            if rollback_of(&actions).is_some() {
                completed = Some(format!("{actions:?}"));
                break;
            }
        }
        let actions = completed.expect("completed before the next step");
        assert!(
            actions.contains("critical trigger fired during the ramp: latency_p95"),
            "{actions}"
        );
        assert_eq!(rollout.routed, (0.0, 0.0));
    }

    #[test]
    fn steps_at_or_above_the_share_are_skipped() {
        let mut p = graduated("warning");
        p.strategy = serde_json::from_value(
            serde_json::json!({ "canary": { "steps": [5, 100], "bake": "60s" } }),
        )
        .unwrap();
        let (mut rollout, _) = Rollout::start("ro-1", p.clone(), 0).unwrap();
        let (_, actions) = until_verdict(&mut rollout);
        // 25 and 5 are not below 5%: nothing to ramp.
        assert!(rollback_of(&actions).is_some());
        assert_eq!(rollout.phase, Phase::RolledBack);
        p.rollback =
            serde_json::from_value(serde_json::json!({ "graduated": { "steps": [25, 2] } }))
                .unwrap();
        let (mut rollout, _) = Rollout::start("ro-2", p, 0).unwrap();
        let (_, actions) = until_verdict(&mut rollout);
        assert_eq!(routes(&actions), vec![(2.0, 0.0)]);
        assert_eq!(rollout.status(0).ramp.unwrap().steps, vec![2.0, 0.0]);
    }

    #[test]
    fn during_the_ramp_only_rollback_and_abort_apply_and_both_complete_it() {
        for command in [Command::Rollback, Command::Abort] {
            let (mut rollout, _) = Rollout::start("ro-1", graduated("warning"), 0).unwrap();
            let (at, _) = until_verdict(&mut rollout);
            let verdict = rollout.verdict.clone();
            let before = rollout.clone();
            for refused in [
                Command::Promote,
                Command::Resume,
                Command::Approve,
                Command::Pause,
            ] {
                let error = rollout.step(at + 500, Input::Command(refused)).unwrap_err();
                assert!(error.message.contains("graduated rollback"), "{error:?}");
                assert_eq!(rollout, before);
            }
            let actions = rollout.step(at + 1000, Input::Command(command)).unwrap();
            assert_eq!(rollback_of(&actions).cloned(), verdict);
            assert!(kinds(&actions).contains(&"rollout.ramp_aborted"));
            assert_eq!(rollout.phase, Phase::RolledBack, "{command:?}");
            assert_eq!(rollout.verdict, verdict);
            assert_eq!(rollout.routed, (0.0, 0.0));
        }
    }

    #[test]
    fn a_restart_during_the_ramp_completes_it() {
        let (mut rollout, _) = Rollout::start("ro-1", graduated("warning"), 0).unwrap();
        let (at, _) = until_verdict(&mut rollout);
        let verdict = rollout.verdict.clone();
        // Persisted and reloaded, as the runtime does.
        let json = serde_json::to_string(&rollout).unwrap();
        rollout = serde_json::from_str(&json).unwrap();
        assert_eq!(rollout.phase, Phase::RollingBack);
        let actions = rollout.step(at + 5000, Input::Restarted).unwrap();
        assert_eq!(rollback_of(&actions).cloned(), verdict);
        assert!(kinds(&actions).contains(&"rollout.ramp_aborted"));
        assert_eq!(rollout.phase, Phase::RolledBack);
        assert_eq!(rollout.paused_by, None);
        assert_eq!(rollout.verdict, verdict);
        assert_eq!(rollout.routed, (0.0, 0.0));
    }

    /// Random sequences of ticks, commands and restarts: a condemned
    /// candidate never gets traffic back (during a graduated rollback never
    /// more than it had at the verdict, and it ends at 0), shares stay
    /// within 0..=100, and what is routed always matches the last routing
    /// action.
    #[test]
    fn no_sequence_of_inputs_breaks_the_invariants() {
        let mut rng = fastrand::Rng::with_seed(5);
        let strategies = [
            serde_json::json!({ "canary": { "steps": [1, 5, 25, 50, 100], "bake": "3s", "approval": [50] } }),
            serde_json::json!({ "linear": { "step": 30, "interval": "2s" } }),
            serde_json::json!({ "blue_green": { "warmup": "2s", "bake": "5s" } }),
            serde_json::json!({ "shadow": { "percent": 10, "duration": "5s" } }),
        ];
        let commands = [
            Command::Pause,
            Command::Resume,
            Command::Approve,
            Command::Promote,
            Command::Abort,
            Command::Rollback,
        ];
        let mut ramps = 0;
        for round in 0..800 {
            let severity = if (round / 4) % 2 == 0 {
                "warning"
            } else {
                "critical"
            };
            let mut p = policy(
                strategies[round % strategies.len()].clone(),
                serde_json::json!([
                    { "metric": "error_rate", "above": "+1pp", "action": "rollback", "severity": severity, "min_sample": 20 },
                    { "metric": "latency_p95", "above": "+30%", "action": "pause", "min_sample": 20 },
                    { "metric": "latency_p99", "above": "+200%", "action": "rollback", "min_sample": 20 }
                ]),
            );
            if (round / 8) % 2 == 0 {
                p.rollback = serde_json::from_value(serde_json::json!({
                    "graduated": { "steps": [60, 20, 3], "hold": "1s" }
                }))
                .unwrap();
            }
            let (mut rollout, actions) = Rollout::start("ro", p, 0).unwrap();
            let mut routed = routes(&actions).last().copied().unwrap_or((0.0, 0.0));
            let mut condemned = false;
            // What a condemned candidate may still get: its share at the
            // verdict during a graduated rollback, then nothing.
            let mut ceiling = 100.0;
            let mut t = 0u64;
            let mut check = |rollout: &Rollout, actions: &[Action]| {
                if !condemned && rollout.phase == Phase::RollingBack {
                    condemned = true;
                    ramps += 1;
                    ceiling = rollout.verdict.as_ref().unwrap().candidate_percent;
                }
                for action in actions {
                    match action {
                        Action::Route {
                            candidate_percent,
                            shadow_percent,
                        } => {
                            assert!((0.0..=100.0).contains(candidate_percent));
                            assert!((0.0..=100.0).contains(shadow_percent));
                            assert!(
                                !condemned
                                    || (*candidate_percent < ceiling && *shadow_percent == 0.0),
                                "condemned candidate routed up: {candidate_percent}% (ceiling {ceiling}%)"
                            );
                            if condemned {
                                ceiling = *candidate_percent;
                            }
                            routed = (*candidate_percent, *shadow_percent);
                        }
                        Action::Rollback { .. } => {
                            condemned = true;
                            ceiling = 0.0;
                            routed = (0.0, 0.0);
                        }
                        Action::Promote => {
                            assert!(!condemned, "condemned candidate promoted");
                            routed = (100.0, 0.0);
                        }
                        _ => {}
                    }
                }
                assert_eq!(rollout.routed, routed);
                assert_eq!(condemned, rollout.phase.condemns());
                assert!(!condemned || rollout.routed.0 <= ceiling);
            };
            while t < 200 {
                t += 1;
                let input = match rng.u32(0..20) {
                    0 => Input::Command(commands[rng.usize(0..commands.len())]),
                    1 => Input::Restarted,
                    _ => {
                        let mut obs = second(&rollout, rng.u64(0..120), rng.u64(5_000..20_000));
                        obs.candidate_healthy = rng.bool();
                        Input::Tick(obs)
                    }
                };
                let Ok(actions) = rollout.step(t * 500, input) else {
                    continue;
                };
                check(&rollout, &actions);
            }
            // Left alone, a graduated rollback ends at 0%.
            while rollout.phase == Phase::RollingBack && t < 400 {
                t += 1;
                let obs = second(&rollout, rng.u64(0..120), rng.u64(5_000..20_000));
                let actions = rollout.step(t * 500, Input::Tick(obs)).unwrap();
                check(&rollout, &actions);
            }
            if rollout.phase.condemns() {
                assert!(matches!(rollout.phase, Phase::RolledBack | Phase::Rejected));
                assert_eq!(rollout.routed, (0.0, 0.0));
            }
        }
        assert!(ramps > 20, "only {ramps} graduated rollbacks exercised");
    }

    /// Inputs that change over time change on both versions alike: a
    /// daily cycle is not drift. Judged on the stage's span on both sides,
    /// the candidate (mostly sampled late, at 50%) is not compared with a
    /// baseline mostly sampled early (at 95%).
    #[test]
    fn inputs_that_move_on_both_versions_alike_are_not_drift() {
        let policy = policy(
            serde_json::json!({ "canary": { "steps": [5, 50, 100], "bake": "60s" } }),
            serde_json::json!([
                { "metric": "drift_psi", "feature": "amount", "above": 0.1,
                  "min_sample": 200, "action": "rollback" }
            ]),
        );
        let (mut rollout, _) = Rollout::start("ro-1", policy, 0).unwrap();
        // The same values on both sides each second: a uniform spread of
        // width 30 whose centre moves by 1 a second.
        let tick = |n: u64, t: u64| {
            let mut s = sample(n, 0, 10_000);
            for i in 0..n {
                let value = 100.0 + t as f64 + 30.0 * ((i as f64 + 0.5) / n as f64 - 0.5);
                s.signals.sketch_number("amount", value);
            }
            s
        };
        for t in 1..=200 {
            let on_candidate = (rollout.routed.0 * 10.0) as u64;
            let obs = Observation {
                candidate: tick(on_candidate, t),
                baseline: tick(1000 - on_candidate, t),
                candidate_healthy: true,
                ..Observation::default()
            };
            let actions = rollout.step(t * 1000, Input::Tick(obs)).unwrap();
            if actions.contains(&Action::Promote) {
                break;
            }
        }
        assert_eq!(rollout.phase, Phase::Promoted, "{:?}", rollout.verdict);
    }

    /// `reference: profile`: the candidate's inputs against the sketch
    /// stored with the version, in every stage, 100% included. Inputs like
    /// the profile's promote; inputs shifted by one standard deviation once
    /// the candidate serves everything roll back (the baseline serves
    /// nothing then, so a `reference: baseline` trigger could not judge).
    #[test]
    fn drift_against_the_stored_profile_is_judged_at_100_percent() {
        // A uniform spread of width 30 around 100 (σ ≈ 8.66).
        let sigma = 30.0 / 12f64.sqrt();
        let values = |n: u64, shift: f64| {
            (0..n).map(move |i| 100.0 + shift + 30.0 * ((i as f64 + 0.5) / n as f64 - 0.5))
        };
        let mut profile = crate::analysis::Signals::default();
        for v in values(20_000, 0.0) {
            profile.sketch_number("amount", v);
        }
        let profiles = profile.features;
        let policy = || {
            policy(
                serde_json::json!({ "canary": { "steps": [5, 100], "bake": "60s" } }),
                serde_json::json!([
                    { "metric": "drift_psi", "feature": "amount", "above": 0.2,
                      "reference": "profile", "min_sample": 200, "action": "rollback" }
                ]),
            )
        };
        let run = |shift_at_100: f64| {
            let (mut rollout, _) = Rollout::start("ro-1", policy(), 0).unwrap();
            rollout.set_profiles(&profiles);
            assert!(rollout.triggers[0].has_profile());
            let mut at_100 = 0;
            for t in 1..=400u64 {
                let on_candidate = (rollout.routed.0 * 10.0) as u64;
                let shift = if rollout.routed.0 >= 100.0 {
                    at_100 += 1;
                    shift_at_100
                } else {
                    0.0
                };
                let mut candidate = sample(on_candidate, 0, 10_000);
                for v in values(on_candidate, shift) {
                    candidate.signals.sketch_number("amount", v);
                }
                let obs = Observation {
                    candidate,
                    baseline: sample(1000 - on_candidate, 0, 10_000),
                    candidate_healthy: true,
                    ..Observation::default()
                };
                let actions = rollout.step(t * 1000, Input::Tick(obs)).unwrap();
                if !rollout.is_open() || actions.contains(&Action::Promote) {
                    break;
                }
            }
            (rollout, at_100)
        };
        let (rollout, at_100) = run(0.0);
        assert_eq!(rollout.phase, Phase::Promoted, "{:?}", rollout.verdict);
        assert!(at_100 >= 60, "{at_100}");
        let (rollout, at_100) = run(sigma);
        assert_eq!(rollout.phase, Phase::RolledBack);
        assert!((1..60).contains(&at_100), "{at_100}");
        let verdict = rollout.verdict.as_ref().unwrap();
        let rule = &verdict.trigger.as_ref().unwrap().rule;
        assert_eq!(rule, "drift_psi{feature=amount} above 0.2 vs profile");

        // The profile is not saved with the state: after a restart the
        // trigger has none until the runtime gives it again, and waits.
        let (mut rollout, _) = Rollout::start("ro-2", policy(), 0).unwrap();
        rollout.set_profiles(&profiles);
        let json = serde_json::to_string(&rollout).unwrap();
        assert!(!json.contains("\"profile\":{"), "{json}");
        let mut back: Rollout = serde_json::from_str(&json).unwrap();
        assert!(!back.triggers[0].has_profile());
        back.set_profiles(&profiles);
        assert!(back.triggers[0].has_profile());
        // A profile without the feature gives the trigger none.
        back.set_profiles(&BTreeMap::new());
        assert!(!back.triggers[0].has_profile());
    }
}
