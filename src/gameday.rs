//! `backstop gameday MODEL --fault latency|errors|timeouts`: rehearse the
//! plan. In simulator mode (the only one so far) the real controller runs
//! the model's policy on a virtual clock against a candidate that has the
//! fault from its first request, many times over, plus as many healthy
//! control runs; the report says whether every faulty run was rolled back
//! within the target and no healthy one was.
//!
//! A policy with no rollback trigger that sees the fault fails the
//! rehearsal and says so: finding that out before an incident is the point.

use crate::runbook::FAULT_METRICS;
use backstop_core::controller::plan;
use backstop_core::policy::{Action, Metric, Policy, Strategy, Threshold, Trigger};
use backstop_core::sim::scenario::{self, Scenario};
use backstop_core::sim::traffic::Regression;
use serde::Serialize;

/// The fault injected into the candidate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    /// Every latency slowed (×3, more when a trigger's bound needs it).
    Latency,
    /// 10 percentage points more server errors.
    Errors,
    /// 10 percentage points more requests time out.
    Timeouts,
}

impl Fault {
    pub fn name(self) -> &'static str {
        match self {
            Fault::Latency => "latency",
            Fault::Errors => "errors",
            Fault::Timeouts => "timeouts",
        }
    }

    /// The metrics whose triggers can see this fault.
    fn metrics(self) -> &'static [Metric] {
        FAULT_METRICS
            .iter()
            .find(|(name, _)| *name == self.name())
            .map_or(&[], |(_, metrics)| metrics)
    }
}

/// Extra server errors and timeouts injected, percentage points.
pub const FAULT_EXTRA_PP: f64 = 10.0;
/// The least latency slow-down injected.
pub const LATENCY_FACTOR_MIN: f64 = 3.0;
/// Most runs per rehearsal (each is a whole simulated rollout).
pub const RUNS_MAX: usize = 100_000;
/// Highest simulated traffic rate, requests per second.
pub const RATE_MAX: f64 = 100_000.0;

pub struct GamedayOptions {
    pub fault: Fault,
    pub runs: usize,
    pub seed: u64,
    /// Every faulty run must be rolled back within this (p95).
    pub detect_within_s: f64,
    /// Simulated requests per second, baseline and candidate together.
    pub rate_per_s: f64,
}

/// The rehearsal's result. Field names are part of
/// `backstop gameday --output json`: keep them stable.
#[derive(Clone, Debug, Serialize)]
pub struct GamedayReport {
    /// `simulator` (live rehearsals are not built yet).
    pub mode: String,
    pub model: String,
    pub policy_source: String,
    pub strategy: String,
    pub fault: Fault,
    /// The fault in words, with its size.
    pub fault_detail: String,
    /// Candidate's share of traffic in the first stage that has any, percent
    /// (for shadow: the mirrored share).
    pub first_stage_percent: f64,
    pub rate_rps: f64,
    pub seed: u64,
    pub runs: usize,
    /// Faulty runs that were rolled back (or, for shadow, rejected).
    pub rolled_back: usize,
    /// Faulty runs that were promoted (or left paused) instead.
    pub missed: usize,
    /// From the candidate's first request to the verdict, over the rolled-back runs.
    pub detection_s_p50: Option<f64>,
    pub detection_s_p95: Option<f64>,
    /// Candidate requests (mirrored copies for shadow) before the verdict.
    pub exposed_requests_p50: Option<u64>,
    /// Healthy control runs with the same policy, seed and traffic.
    pub control_runs: usize,
    /// Control runs that were rolled back: false rollbacks.
    pub false_rollbacks: usize,
    pub target_detect_s: f64,
    /// Rollback triggers that can see this fault, as rules.
    pub catching_triggers: Vec<String>,
    pub passed: bool,
    /// Why it failed (empty when it passed), in plain words.
    pub reasons: Vec<String>,
    pub elapsed_s: f64,
}

/// Rollback triggers that see `fault`: on one of its metrics, fire when the
/// value goes up.
fn catching(policy: &Policy, fault: Fault) -> Vec<&Trigger> {
    policy
        .triggers
        .iter()
        .filter(|t| t.action == Action::Rollback && t.above.is_some())
        .filter(|t| fault.metrics().contains(&t.metric))
        .collect()
}

/// Whether the injected fault takes `trigger`'s metric past its threshold
/// (from the simulated distributions, not a run): a trigger the fault stays
/// under cannot be what catches it.
fn breached_by(trigger: &Trigger, fault: Fault, latency_factor: f64) -> bool {
    let baseline = scenario::baseline_behaviour();
    let failures = 100.0 * (baseline.error_rate + baseline.timeout_rate);
    let timeouts = 100.0 * baseline.timeout_rate;
    let latency = |metric: Metric| {
        let q = match metric {
            Metric::LatencyP50 => 0.5,
            Metric::LatencyP95 => 0.95,
            _ => 0.99,
        };
        baseline.latency.quantile_us(q) / 1000.0
    };
    // (before, after): percent for rates, milliseconds for latencies.
    let (before, after) = match (fault, trigger.metric) {
        (Fault::Latency, m @ (Metric::LatencyP50 | Metric::LatencyP95 | Metric::LatencyP99)) => {
            (latency(m), latency(m) * latency_factor)
        }
        // 10% of requests timing out: slower than any bound at p95 and p99.
        (Fault::Timeouts, m @ (Metric::LatencyP95 | Metric::LatencyP99)) => {
            (latency(m), f64::INFINITY)
        }
        (Fault::Errors | Fault::Timeouts, Metric::ErrorRate) => {
            (failures, failures + FAULT_EXTRA_PP)
        }
        (Fault::Timeouts, Metric::TimeoutRate) => (timeouts, timeouts + FAULT_EXTRA_PP),
        _ => return false,
    };
    match trigger.above {
        Some(Threshold::RelativePercent(p)) => after > before * (1.0 + p / 100.0),
        Some(Threshold::PercentagePoints(p)) => after - before > p,
        Some(Threshold::RatePercent(p))
        | Some(Threshold::LatencyMs(p))
        | Some(Threshold::Value(p)) => after > p,
        None => false,
    }
}

/// How much slower the candidate is made: at least ×3, and well over
/// (×1.5) the easiest latency rollback trigger to breach, as long as the
/// candidate's p99 stays under the gateway timeout (else it would be a
/// timeout fault). Returns the factor and a note when it was capped.
fn latency_factor(policy: &Policy) -> (f64, Option<String>) {
    let baseline = scenario::baseline_behaviour();
    let timeout_ms = baseline.timeout_us as f64 / 1000.0;
    let p99_ms = baseline.latency.quantile_us(0.99) / 1000.0;
    let cap = (0.8 * timeout_ms / p99_ms).max(LATENCY_FACTOR_MIN);
    let needed = catching(policy, Fault::Latency)
        .iter()
        .filter_map(|t| {
            let q = match t.metric {
                Metric::LatencyP50 => 0.5,
                Metric::LatencyP95 => 0.95,
                _ => 0.99,
            };
            match t.above? {
                Threshold::RelativePercent(p) => Some(1.5 * (1.0 + p / 100.0)),
                Threshold::LatencyMs(ms) => {
                    Some(1.5 * ms / (baseline.latency.quantile_us(q) / 1000.0))
                }
                _ => None,
            }
        })
        .fold(f64::INFINITY, f64::min);
    let wanted = if needed.is_finite() {
        needed.max(LATENCY_FACTOR_MIN)
    } else {
        LATENCY_FACTOR_MIN
    };
    if wanted > cap {
        (
            cap,
            Some(format!(
                "The latency triggers' bounds sit above what the simulated candidate can reach before its requests time out ({timeout_ms:.0} ms): slowed ×{cap:.1} instead of ×{wanted:.1}."
            )),
        )
    } else {
        (wanted, None)
    }
}

/// Runs the rehearsal in the simulator.
pub fn run(
    model: &str,
    policy: &Policy,
    policy_source: &str,
    options: &GamedayOptions,
) -> anyhow::Result<GamedayReport> {
    anyhow::ensure!(
        (1..=RUNS_MAX).contains(&options.runs),
        "--runs must be between 1 and {RUNS_MAX}"
    );
    anyhow::ensure!(
        options.rate_per_s.is_finite()
            && options.rate_per_s >= 1.0
            && options.rate_per_s <= RATE_MAX,
        "--rate must be between 1 and {RATE_MAX} requests per second"
    );
    anyhow::ensure!(
        options.detect_within_s.is_finite() && options.detect_within_s > 0.0,
        "--detect-within must be longer than 0s"
    );
    let baseline = scenario::baseline_behaviour();
    let mut reasons = Vec::new();
    let mut factor = 1.0;
    let (regression, fault_detail) = match options.fault {
        Fault::Latency => {
            let (slowed_by, note) = latency_factor(policy);
            factor = slowed_by;
            reasons.extend(note);
            let p95 =
                |b: &backstop_core::sim::traffic::Behaviour| b.latency.quantile_us(0.95) / 1000.0;
            let regression = Regression::LatencyWhole { p95_factor: factor };
            let slowed = baseline.regressed(regression);
            (
                regression,
                format!(
                    "every candidate latency ×{factor:.1} (p95 {:.0} ms → {:.0} ms)",
                    p95(&baseline),
                    p95(&slowed)
                ),
            )
        }
        Fault::Errors => (
            Regression::Errors {
                extra_pp: FAULT_EXTRA_PP,
            },
            format!(
                "+{FAULT_EXTRA_PP}pp server errors on the candidate ({:.1}% → {:.1}%)",
                100.0 * baseline.error_rate,
                100.0 * baseline.error_rate + FAULT_EXTRA_PP
            ),
        ),
        Fault::Timeouts => (
            Regression::Timeouts {
                extra_pp: FAULT_EXTRA_PP,
            },
            format!(
                "+{FAULT_EXTRA_PP}pp of candidate requests time out ({:.1}% → {:.1}%)",
                100.0 * baseline.timeout_rate,
                100.0 * baseline.timeout_rate + FAULT_EXTRA_PP
            ),
        ),
    };
    let steps = match &policy.strategy {
        Strategy::Canary(canary) => canary.steps.clone(),
        _ => Vec::new(),
    };
    let faulty = Scenario {
        name: format!("gameday {}", options.fault.name()),
        rate_per_s: options.rate_per_s,
        steps: steps.clone(),
        regression,
        onset_s: 0,
        within_policy: false,
    };
    let control = Scenario {
        name: "gameday healthy control".into(),
        regression: Regression::None,
        ..faulty.clone()
    };
    let simulated = scenario::policy_for(policy, &faulty);
    simulated
        .check()
        .map_err(|e| anyhow::anyhow!("the policy cannot be simulated: {e}"))?;

    let started = std::time::Instant::now();
    let runs = options.runs;
    let seed = options.seed;
    let (faulty_results, control_results) = std::thread::scope(|scope| {
        let faulty = scope.spawn(|| {
            (0..runs)
                .map(|i| scenario::run_once(policy, &faulty, scenario::run_seed(seed, 0, i)))
                .collect::<Vec<_>>()
        });
        let control: Vec<_> = (0..runs)
            .map(|i| scenario::run_once(policy, &control, scenario::run_seed(seed, 1, i)))
            .collect();
        (faulty.join(), control)
    });
    let faulty_results =
        faulty_results.map_err(|_| anyhow::anyhow!("the simulation of the faulty runs failed"))?;

    let rolled_back = faulty_results.iter().filter(|r| r.rolled_back).count();
    let missed = runs - rolled_back;
    let mut delays: Vec<f64> = faulty_results
        .iter()
        .filter_map(|r| r.detection_from_first_request_s)
        .collect();
    delays.sort_by(f64::total_cmp);
    let mut exposed: Vec<u64> = faulty_results
        .iter()
        .filter(|r| r.rolled_back)
        .map(|r| r.exposed_requests)
        .collect();
    exposed.sort_unstable();
    let false_rollbacks = control_results.iter().filter(|r| r.rolled_back).count();
    let detection_s_p95 = scenario::percentile(&delays, 0.95);

    let catchers = catching(policy, options.fault);
    let target = options.detect_within_s;
    if catchers.is_empty() {
        let metrics: Vec<&str> = options.fault.metrics().iter().map(|m| m.name()).collect();
        let others: Vec<String> = policy
            .triggers
            .iter()
            .filter(|t| options.fault.metrics().contains(&t.metric))
            .map(|t| {
                format!(
                    "{} ({})",
                    backstop_core::analysis::trigger::rule_text(t),
                    match t.action {
                        Action::Rollback => "rollback, but only when the value goes down",
                        Action::Pause => "pause",
                        Action::Notify => "notify",
                    }
                )
            })
            .collect();
        reasons.insert(
            0,
            if others.is_empty() {
                format!(
                    "The policy has no trigger that can catch a {} fault: none watches {}. Backstop would not roll back by itself.",
                    options.fault.name(),
                    metrics.join(", ")
                )
            } else {
                format!(
                    "The policy has no rollback trigger that can catch a {} fault: only {} watch {}. Backstop would not roll back by itself.",
                    options.fault.name(),
                    others.join(", "),
                    metrics.join(", ")
                )
            },
        );
    }
    let breached: Vec<&Trigger> = catchers
        .iter()
        .copied()
        .filter(|t| breached_by(t, options.fault, factor))
        .collect();
    if breached.is_empty() && !catchers.is_empty() {
        reasons.insert(
            0,
            format!(
                "The fault ({fault_detail}) stays under every rollback trigger that watches it: {}.",
                catchers
                    .iter()
                    .map(|t| backstop_core::analysis::trigger::rule_text(t))
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        );
    }
    if missed > 0 && !catchers.is_empty() {
        reasons.push(format!(
            "{missed} of {runs} faulty runs were not rolled back."
        ));
    }
    match detection_s_p95 {
        Some(p95) if p95 > target => {
            let mut reason =
                format!("Detection took {p95:.0} s at p95, over the {target} s target.");
            if let Some(fastest) = breached.iter().min_by_key(|t| t.for_period.as_ms()) {
                if fastest.for_period.as_ms() as f64 / 1000.0 >= target {
                    reason.push_str(&format!(
                        " The quickest trigger that sees this fault waits `for: {}` ({}).",
                        fastest.for_period,
                        backstop_core::analysis::trigger::rule_text(fastest)
                    ));
                }
            }
            reasons.push(reason);
        }
        _ => {}
    }
    if false_rollbacks > 0 {
        reasons.push(format!(
            "{false_rollbacks} of {runs} healthy control runs were rolled back (false rollbacks)."
        ));
    }
    let passed = !catchers.is_empty()
        && missed == 0
        && detection_s_p95.is_some_and(|p| p <= target)
        && false_rollbacks == 0;
    if passed {
        // A capped latency fault is a note, not a failure, when it was caught.
        reasons.clear();
    }
    let first_stage_percent = plan(&policy.strategy)
        .iter()
        .map(|s| s.candidate_percent.max(s.shadow_percent))
        .find(|&p| p > 0.0)
        .unwrap_or(0.0);
    Ok(GamedayReport {
        mode: "simulator".into(),
        model: model.to_string(),
        policy_source: policy_source.to_string(),
        strategy: backstop_core::controller::strategy_name(&policy.strategy).into(),
        fault: options.fault,
        fault_detail,
        first_stage_percent,
        rate_rps: options.rate_per_s,
        seed,
        runs,
        rolled_back,
        missed,
        detection_s_p50: scenario::percentile(&delays, 0.5),
        detection_s_p95,
        exposed_requests_p50: scenario::percentile(&exposed, 0.5),
        control_runs: runs,
        false_rollbacks,
        target_detect_s: target,
        catching_triggers: catchers
            .iter()
            .map(|t| backstop_core::analysis::trigger::rule_text(t))
            .collect(),
        passed,
        reasons,
        elapsed_s: started.elapsed().as_secs_f64(),
    })
}

/// The fault a live rehearsal injects into the rehearsal version, and the
/// same fault in words. Errors and timeouts are the simulator's +10pp;
/// latency adds twice the baseline's p95 (×3 as in the simulator) or more
/// when a latency rollback trigger's bound needs it, kept under 80% of the
/// route's request timeout (beyond that it would be a timeout fault).
pub fn live_fault(
    fault: Fault,
    policy: &Policy,
    baseline_ms: Option<(f64, f64, f64)>,
    request_timeout_ms: u64,
) -> (crate::config::FaultSpec, String) {
    use crate::config::FaultSpec;
    match fault {
        Fault::Errors => (
            FaultSpec {
                error_percent: FAULT_EXTRA_PP,
                ..FaultSpec::default()
            },
            format!("{FAULT_EXTRA_PP}% of the rehearsal version's requests answered 503 by the gateway"),
        ),
        Fault::Timeouts => (
            FaultSpec {
                timeout_percent: FAULT_EXTRA_PP,
                ..FaultSpec::default()
            },
            format!(
                "{FAULT_EXTRA_PP}% of the rehearsal version's requests held {request_timeout_ms} ms (the route's timeout), then answered as timeouts"
            ),
        ),
        Fault::Latency => {
            let (p50, p95, p99) = baseline_ms.unwrap_or((0.0, 0.0, 0.0));
            let mut added = ((LATENCY_FACTOR_MIN - 1.0) * p95).max(50.0);
            for t in catching(policy, Fault::Latency) {
                let base = match t.metric {
                    Metric::LatencyP50 => p50,
                    Metric::LatencyP95 => p95,
                    _ => p99,
                };
                let needed = match t.above {
                    Some(Threshold::RelativePercent(p)) => base * (1.5 * (1.0 + p / 100.0) - 1.0),
                    Some(Threshold::LatencyMs(ms)) => 1.5 * ms - base,
                    _ => 0.0,
                };
                added = added.max(needed);
            }
            let cap = 0.8 * request_timeout_ms as f64;
            let added = added.min(cap).max(1.0).round() as u64;
            (
                FaultSpec {
                    latency_ms: added,
                    ..FaultSpec::default()
                },
                match baseline_ms {
                    Some(_) => format!("+{added} ms on every request to the rehearsal version (baseline p95 {p95:.0} ms)"),
                    None => format!("+{added} ms on every request to the rehearsal version (no baseline latency in the last minute to size it from)"),
                },
            )
        }
    }
}

/// A live rehearsal's result. Fields shared with [`GamedayReport`] keep
/// its names and meaning; part of `backstop gameday --live --output json`.
#[derive(Clone, Debug, Serialize)]
pub struct LiveReport {
    /// `live`.
    pub mode: String,
    pub model: String,
    pub policy_source: String,
    pub strategy: String,
    pub fault: Fault,
    pub fault_detail: String,
    /// What the gateway was told to inject.
    pub injected: crate::config::FaultSpec,
    /// The rehearsal version (the rollout's candidate) and its baseline.
    pub rehearsal: String,
    pub baseline: Option<String>,
    /// The rehearsal's rollout id, once started.
    pub rollout: Option<String>,
    /// Its phase when the rehearsal ended.
    pub phase: Option<String>,
    pub rolled_back: bool,
    /// From the rehearsal version's first request to the verdict.
    pub detection_s: Option<f64>,
    /// From the verdict to the baseline's table being installed.
    pub verdict_to_swap_us: Option<f64>,
    /// The rule that rolled it back.
    pub trigger: Option<String>,
    pub incident: Option<String>,
    pub target_detect_s: f64,
    /// The rollout was waiting for traffic (a trigger lacked its sample)
    /// when the rehearsal ended.
    pub waiting_for_traffic: bool,
    /// Requests the rehearsal version had in the rollout's current stage.
    pub candidate_requests: Option<u64>,
    /// `--timeout` ran out before a verdict.
    pub timed_out: bool,
    /// The rehearsal aborted its still-open rollout (timeout, interrupt,
    /// or a pause instead of a rollback): traffic back on the baseline.
    pub aborted: bool,
    /// The fault was cleared at the end (false: clear it by hand).
    pub fault_cleared: bool,
    pub catching_triggers: Vec<String>,
    pub passed: bool,
    pub reasons: Vec<String>,
    pub notes: Vec<String>,
    pub elapsed_s: f64,
}

impl LiveReport {
    /// Passed: rolled back by a trigger within the target. Fills `reasons`.
    pub fn judge(&mut self) {
        let mut reasons = Vec::new();
        if !self.rolled_back {
            let phase = self.phase.as_deref().unwrap_or("not started");
            let starved = self.waiting_for_traffic || self.candidate_requests == Some(0);
            reasons.push(if self.timed_out && starved {
                format!("No verdict before --timeout: the rollout was waiting for traffic (phase {phase}). Is there live traffic on {}?", self.model)
            } else if self.timed_out {
                format!("No rollback before --timeout (phase {phase}).")
            } else {
                format!("The rollout ended {phase}, not rolled back.")
            });
            if phase == "promoted" {
                reasons.push(format!(
                    "The rollout PROMOTED the rehearsal version: {} now takes the traffic (its fault is cleared, and it serves from the upstreams it was given). Route the model back to {} by hand.",
                    self.rehearsal,
                    self.baseline.as_deref().unwrap_or("its baseline")
                ));
            }
            if self.catching_triggers.is_empty() {
                reasons.push(format!(
                    "The policy has no rollback trigger that can catch a {} fault.",
                    self.fault.name()
                ));
            }
        }
        match self.detection_s {
            Some(d) if self.rolled_back && d > self.target_detect_s => reasons.push(format!(
                "Detection took {d:.1} s, over the {} s target.",
                self.target_detect_s
            )),
            _ => {}
        }
        if !self.fault_cleared {
            reasons.push(format!(
                "The fault could not be cleared: run `curl -X DELETE $BACKSTOP_ADMIN/api/v1/models/{}/versions/{}/fault`.",
                self.model, self.rehearsal
            ));
        }
        self.passed = self.rolled_back
            && self.detection_s.is_some_and(|d| d <= self.target_detect_s)
            && self.fault_cleared;
        self.reasons = reasons;
    }
}

/// The live report as text.
pub fn render_live_text(r: &LiveReport) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let _ = writeln!(
        out,
        "# Gameday: {} — {} fault (live mode)\n",
        r.model,
        r.fault.name()
    );
    let _ = writeln!(out, "Fault: {}.", r.fault_detail);
    let _ = writeln!(
        out,
        "Rehearsal version {} vs baseline {}; policy: {} ({}). Rollout {} ({:.1} s).\n",
        r.rehearsal,
        opt(&r.baseline),
        r.policy_source,
        r.strategy,
        opt(&r.rollout),
        r.elapsed_s
    );
    let _ = writeln!(
        out,
        "- rolled back:        {} (phase {})",
        if r.rolled_back { "yes" } else { "no" },
        opt(&r.phase)
    );
    let _ = writeln!(
        out,
        "- detection:          {} (target {} s)",
        r.detection_s.map_or("-".into(), |d| format!("{d:.1} s")),
        r.target_detect_s
    );
    let _ = writeln!(
        out,
        "- rehearsal requests: {}",
        r.candidate_requests
            .map_or("-".into(), |n| format!("{n} in the last stage"))
    );
    let _ = writeln!(
        out,
        "- verdict to swap:    {}",
        r.verdict_to_swap_us
            .map_or("-".into(), |us| format!("{us:.0} µs"))
    );
    let _ = writeln!(out, "- trigger:            {}", opt(&r.trigger));
    let _ = writeln!(out, "- incident:           {}", opt(&r.incident));
    let _ = writeln!(
        out,
        "- fault cleared:      {}",
        if r.fault_cleared { "yes" } else { "NO" }
    );
    for note in &r.notes {
        let _ = writeln!(out, "- note: {note}");
    }
    if r.passed {
        let _ = writeln!(
            out,
            "\nPASSED: the plan rolled the rehearsal version back within {} s.",
            r.target_detect_s
        );
    } else {
        let _ = writeln!(out, "\nFAILED:");
        for reason in &r.reasons {
            let _ = writeln!(out, "- {reason}");
        }
    }
    out
}

/// Rollback triggers that can see `fault`, as rules.
pub fn catching_rules(policy: &Policy, fault: Fault) -> Vec<String> {
    catching(policy, fault)
        .iter()
        .map(|t| backstop_core::analysis::trigger::rule_text(t))
        .collect()
}

/// The report as text: a few lines an on-call engineer can read.
pub fn render_text(report: &GamedayReport) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let r = report;
    let secs = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.0} s"));
    let _ = writeln!(
        out,
        "# Gameday: {} — {} fault ({} mode)\n",
        r.model,
        r.fault.name(),
        r.mode
    );
    let _ = writeln!(
        out,
        "Fault: {}, from the candidate's first request.",
        r.fault_detail
    );
    let _ = writeln!(
        out,
        "Policy: {} ({}, first stage {}%). Traffic {} req/s, seed {}, {} runs + {} healthy control runs ({:.1} s).\n",
        r.policy_source,
        r.strategy,
        r.first_stage_percent,
        r.rate_rps,
        r.seed,
        r.runs,
        r.control_runs,
        r.elapsed_s
    );
    let _ = writeln!(
        out,
        "- rolled back:        {}/{} (missed {})",
        r.rolled_back, r.runs, r.missed
    );
    let _ = writeln!(
        out,
        "- detection p50/p95:  {} / {} (target {} s)",
        secs(r.detection_s_p50),
        secs(r.detection_s_p95),
        r.target_detect_s
    );
    let _ = writeln!(
        out,
        "- exposed p50:        {} candidate requests",
        r.exposed_requests_p50
            .map_or("-".to_string(), |v| v.to_string())
    );
    let _ = writeln!(
        out,
        "- false rollbacks:    {}/{} healthy control runs",
        r.false_rollbacks, r.control_runs
    );
    let _ = writeln!(
        out,
        "- triggers that see this fault: {}",
        if r.catching_triggers.is_empty() {
            "none".to_string()
        } else {
            r.catching_triggers.join("; ")
        }
    );
    if r.passed {
        let _ = writeln!(
            out,
            "\nPASSED: every faulty run was rolled back within {} s (p95), and no healthy run was.",
            r.target_detect_s
        );
    } else {
        let _ = writeln!(out, "\nFAILED:");
        for reason in &r.reasons {
            let _ = writeln!(out, "- {reason}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn options(fault: Fault, runs: usize) -> GamedayOptions {
        GamedayOptions {
            fault,
            runs,
            seed: 7,
            detect_within_s: 15.0,
            rate_per_s: 1000.0,
        }
    }

    fn sim_policy() -> Policy {
        crate::policy::load(Path::new("examples/sim-policy.yaml")).unwrap()
    }

    #[test]
    fn the_recommended_policy_passes_every_fault() {
        for fault in [Fault::Latency, Fault::Errors, Fault::Timeouts] {
            let report = run("m", &sim_policy(), "file", &options(fault, 8)).unwrap();
            assert!(report.passed, "{}", render_text(&report));
            assert_eq!(report.mode, "simulator");
            assert_eq!(report.rolled_back, 8);
            assert_eq!(report.missed, 0);
            assert_eq!(report.false_rollbacks, 0);
            assert!(report.detection_s_p95.unwrap() <= 15.0, "{report:?}");
            assert!(report.exposed_requests_p50.unwrap() > 0, "{report:?}");
            assert!(render_text(&report).contains("PASSED"));
        }
    }

    #[test]
    fn same_seed_same_report() {
        let a = run("m", &sim_policy(), "file", &options(Fault::Errors, 4)).unwrap();
        let b = run("m", &sim_policy(), "file", &options(Fault::Errors, 4)).unwrap();
        assert_eq!(a.detection_s_p50, b.detection_s_p50);
        assert_eq!(a.exposed_requests_p50, b.exposed_requests_p50);
    }

    /// The example policy waits `for: 3m` on errors: a 15 s target fails,
    /// and the report says which `for:` is why.
    #[test]
    fn slow_for_periods_fail_the_target_and_say_why() {
        let policy = crate::policy::load(Path::new("examples/policy.yaml")).unwrap();
        let report = run("fraud-scorer", &policy, "file", &options(Fault::Errors, 3)).unwrap();
        assert!(!report.passed);
        assert_eq!(report.rolled_back, 3, "{report:?}");
        assert!(report.detection_s_p95.unwrap() >= 180.0, "{report:?}");
        let text = render_text(&report);
        assert!(text.contains("FAILED"), "{text}");
        assert!(text.contains("over the 15 s target"), "{text}");
        assert!(
            text.contains("waits `for: 3m` (error_rate above 5% for 3m)"),
            "{text}"
        );
    }

    /// A latency bound the simulated candidate cannot reach before it
    /// times out: the rehearsal says the fault stays under it.
    #[test]
    fn a_fault_under_every_threshold_is_named() {
        let text = "model: m\ncandidate: v2\nstrategy: { canary: { steps: [5, 100], bake: 30s } }\ntriggers:\n  - { metric: latency_p95, above: 5s, action: rollback }\n";
        let policy = crate::policy::parse(Path::new("p.yaml"), text).unwrap();
        let report = run("m", &policy, "file", &options(Fault::Latency, 2)).unwrap();
        assert!(!report.passed);
        assert_eq!(report.missed, 2);
        let reasons = report.reasons.join("\n");
        assert!(
            reasons.contains(
                "stays under every rollback trigger that watches it: latency_p95 above 5000ms"
            ),
            "{reasons}"
        );
        assert!(
            reasons.contains("before its requests time out"),
            "{reasons}"
        );
    }

    #[test]
    fn no_latency_trigger_fails_the_latency_gameday_with_the_reason() {
        let text = "model: m\ncandidate: v2\nstrategy: { canary: { steps: [5, 100], bake: 30s } }\ntriggers:\n  - { metric: error_rate, above: \"+0.5pp\", action: rollback }\n  - { metric: latency_p95, above: \"+10%\", action: notify }\n";
        let policy = crate::policy::parse(Path::new("p.yaml"), text).unwrap();
        let report = run("m", &policy, "file p.yaml", &options(Fault::Latency, 3)).unwrap();
        assert!(!report.passed);
        assert_eq!(report.missed, 3, "{report:?}");
        assert!(report.catching_triggers.is_empty());
        assert!(
            report.reasons[0].starts_with(
                "The policy has no rollback trigger that can catch a latency fault: only latency_p95 above +10% vs baseline (notify) watch"
            ),
            "{:?}",
            report.reasons
        );
        let no_watch = crate::policy::parse(
            Path::new("p.yaml"),
            &text.replace(
                "latency_p95, above: \"+10%\", action: notify",
                "timeout_rate, above: \"+1pp\", action: rollback",
            ),
        )
        .unwrap();
        let report = run("m", &no_watch, "file p.yaml", &options(Fault::Latency, 2)).unwrap();
        assert!(!report.passed);
        assert!(
            report.reasons[0].contains("none watches latency_p50, latency_p95, latency_p99"),
            "{:?}",
            report.reasons
        );
    }

    #[test]
    fn every_strategy_can_be_rehearsed() {
        for strategy in [
            "{ linear: { step: 50, interval: 30s } }",
            "{ blue_green: { warmup: 20s, bake: 30s } }",
            "{ shadow: { percent: 10, duration: 1m } }",
        ] {
            let text = format!("model: m\ncandidate: v2\nstrategy: {strategy}\ntriggers:\n  - {{ metric: error_rate, above: \"+0.5pp\", action: rollback }}\n");
            let policy = crate::policy::parse(Path::new("p.yaml"), &text).unwrap();
            let report = run("m", &policy, "file", &options(Fault::Errors, 3)).unwrap();
            assert_eq!(report.rolled_back, 3, "{strategy}: {report:?}");
            assert!(report.passed, "{strategy}: {}", render_text(&report));
        }
    }

    #[test]
    fn bad_options_are_errors_not_panics() {
        let policy = sim_policy();
        for bad in [
            GamedayOptions {
                runs: 0,
                ..options(Fault::Errors, 1)
            },
            GamedayOptions {
                rate_per_s: f64::NAN,
                ..options(Fault::Errors, 1)
            },
            GamedayOptions {
                detect_within_s: 0.0,
                ..options(Fault::Errors, 1)
            },
        ] {
            assert!(run("m", &policy, "file", &bad).is_err());
        }
    }

    #[test]
    fn live_faults_match_the_simulated_ones_and_stay_under_the_timeout() {
        let policy = sim_policy();
        let (errors, _) = live_fault(Fault::Errors, &policy, None, 10_000);
        assert_eq!(errors.error_percent, FAULT_EXTRA_PP);
        assert_eq!((errors.latency_ms, errors.timeout_percent), (0, 0.0));
        let (timeouts, detail) = live_fault(Fault::Timeouts, &policy, None, 2_000);
        assert_eq!(timeouts.timeout_percent, FAULT_EXTRA_PP);
        assert!(detail.contains("2000 ms"), "{detail}");
        // ×3 the baseline's p95 at least (+2×p95).
        let (latency, _) = live_fault(Fault::Latency, &policy, Some((20.0, 40.0, 60.0)), 10_000);
        assert!(latency.latency_ms >= 80, "{latency:?}");
        // An absolute bound far above: 1.5× it, capped under the timeout.
        let text = "model: m\ncandidate: v2\nstrategy: { canary: { steps: [5, 100], bake: 30s } }\ntriggers:\n  - { metric: latency_p95, above: 5s, action: rollback }\n";
        let high = crate::policy::parse(Path::new("p.yaml"), text).unwrap();
        let (latency, _) = live_fault(Fault::Latency, &high, Some((20.0, 40.0, 60.0)), 10_000);
        assert_eq!(latency.latency_ms, 7460);
        let (latency, _) = live_fault(Fault::Latency, &high, Some((20.0, 40.0, 60.0)), 1_000);
        assert_eq!(latency.latency_ms, 800);
        // No baseline figures yet: a floor, never zero (a fault must do something).
        let (latency, _) = live_fault(Fault::Latency, &policy, None, 10_000);
        assert!(
            latency.latency_ms >= 50 && latency.check().is_ok(),
            "{latency:?}"
        );
    }

    fn live_report() -> LiveReport {
        LiveReport {
            mode: "live".into(),
            model: "m".into(),
            policy_source: "file".into(),
            strategy: "canary".into(),
            fault: Fault::Errors,
            fault_detail: String::new(),
            injected: crate::config::FaultSpec::default(),
            rehearsal: "r".into(),
            baseline: Some("v1".into()),
            rollout: Some("ro-1".into()),
            phase: Some("rolled_back".into()),
            rolled_back: true,
            detection_s: Some(3.0),
            verdict_to_swap_us: Some(40.0),
            trigger: Some("error_rate above +2pp vs baseline".into()),
            incident: None,
            target_detect_s: 15.0,
            waiting_for_traffic: false,
            candidate_requests: Some(400),
            timed_out: false,
            aborted: false,
            fault_cleared: true,
            catching_triggers: vec!["error_rate above +2pp vs baseline".into()],
            passed: false,
            reasons: vec![],
            notes: vec![],
            elapsed_s: 4.0,
        }
    }

    #[test]
    fn a_live_rehearsal_passes_only_when_rolled_back_in_time_and_cleared() {
        let mut r = live_report();
        r.judge();
        assert!(r.passed && r.reasons.is_empty(), "{r:?}");
        assert!(render_live_text(&r).contains("PASSED"));

        let mut slow = LiveReport {
            detection_s: Some(20.0),
            ..live_report()
        };
        slow.judge();
        assert!(!slow.passed);
        assert!(slow.reasons[0].contains("over the 15 s target"), "{slow:?}");

        let mut starved = LiveReport {
            rolled_back: false,
            detection_s: None,
            phase: Some("running".into()),
            timed_out: true,
            waiting_for_traffic: true,
            ..live_report()
        };
        starved.judge();
        assert!(!starved.passed);
        assert!(
            starved.reasons[0].contains("waiting for traffic"),
            "{starved:?}"
        );

        let mut promoted = LiveReport {
            rolled_back: false,
            detection_s: None,
            phase: Some("promoted".into()),
            catching_triggers: vec![],
            ..live_report()
        };
        promoted.judge();
        assert!(!promoted.passed);
        assert!(promoted.reasons[1].contains("PROMOTED"), "{promoted:?}");
        assert!(
            promoted.reasons[2].contains("no rollback trigger"),
            "{promoted:?}"
        );

        let mut stuck = LiveReport {
            fault_cleared: false,
            ..live_report()
        };
        stuck.judge();
        assert!(!stuck.passed);
        assert!(render_live_text(&stuck).contains("DELETE"), "{stuck:?}");
    }
}
