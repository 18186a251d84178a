//! Whole rollouts on a virtual clock: the real controller, fed seeded
//! synthetic traffic one tick at a time, many times over, with the figures
//! that say whether its verdicts can be trusted: false rollbacks on healthy
//! candidates, missed regressions, detection delay and the candidate
//! requests exposed before the rollback.

use super::quality::{Quality, QualityTraffic};
use super::traffic::{Behaviour, LatencyModel, Regression, Traffic};
use crate::controller::{Input, Observation, Rollout};
use crate::policy::{Metric, Policy, Strategy};
use serde::Serialize;

/// Checks happen once per tick, as in the live runtime with 1 s buckets.
pub const TICK_MS: u64 = 1000;

/// Values in the simulated reference profile.
pub const PROFILE_VALUES: usize = 20_000;

/// Feedback (the KPI) arrives this long after the answer.
pub const FEEDBACK_DELAY_S: u64 = 30;

/// One kind of rollout to repeat.
#[derive(Clone, Debug, PartialEq)]
pub struct Scenario {
    pub name: String,
    /// Total requests per second (baseline and candidate together).
    pub rate_per_s: f64,
    /// Canary steps, replacing the policy's (its first is the canary share).
    pub steps: Vec<f64>,
    pub regression: Regression,
    /// Seconds after the start when the regression begins.
    pub onset_s: u64,
    /// A change the policy allows (none, or one exactly at a trigger's
    /// margin: the hardest case for false rollbacks).
    pub within_policy: bool,
}

impl Scenario {
    /// Every rollback of this candidate is a false one.
    pub fn healthy(&self) -> bool {
        self.regression == Regression::None || self.within_policy
    }
}

/// The baseline every scenario shares: a model answering in ~20 ms
/// (lognormal, p95 ≈ 39 ms), 0.5% errors, 0.1% timeouts.
pub fn baseline_behaviour() -> Behaviour {
    Behaviour {
        latency: LatencyModel::LogNormal {
            median_us: 20_000.0,
            sigma: 0.4,
        },
        error_rate: 0.005,
        timeout_rate: 0.001,
        timeout_us: 1_000_000,
    }
}

/// The scenarios `backstop sim` runs: healthy candidates and each kind of
/// regression, at several traffic rates and canary shares.
pub fn standard() -> Vec<Scenario> {
    let canary = |first: f64| {
        let mut steps = vec![first];
        steps.extend([25.0, 50.0, 100.0].into_iter().filter(|&s| s > first));
        steps
    };
    let scenario = |name: &str, rate: f64, first: f64, regression: Regression| Scenario {
        name: name.to_string(),
        rate_per_s: rate,
        steps: canary(first),
        regression,
        onset_s: 0,
        within_policy: false,
    };
    let errors = Regression::Errors { extra_pp: 5.0 };
    let whole = Regression::LatencyWhole { p95_factor: 1.4 };
    let tail = Regression::LatencyTail { p95_factor: 1.4 };
    let timeouts = Regression::Timeouts { extra_pp: 2.0 };
    vec![
        scenario("healthy 1000rps 5%", 1000.0, 5.0, Regression::None),
        scenario("healthy 100rps 5%", 100.0, 5.0, Regression::None),
        scenario("healthy 10000rps 1%", 10_000.0, 1.0, Regression::None),
        // Worse by exactly the recommended policy's +0.5pp margin: still
        // healthy by that policy, and the case where the test is tightest.
        Scenario {
            within_policy: true,
            ..scenario(
                "at margin: errors +0.5pp 1000rps 5%",
                1000.0,
                5.0,
                Regression::Errors { extra_pp: 0.5 },
            )
        },
        Scenario {
            within_policy: true,
            ..scenario(
                "at margin: p95 +10% 1000rps 5%",
                1000.0,
                5.0,
                Regression::LatencyWhole { p95_factor: 1.1 },
            )
        },
        scenario("errors +5pp 1000rps 5%", 1000.0, 5.0, errors),
        scenario("p95 +40% whole 1000rps 5%", 1000.0, 5.0, whole),
        scenario("p95 +40% tail 1000rps 5%", 1000.0, 5.0, tail),
        scenario("timeouts +2pp 1000rps 5%", 1000.0, 5.0, timeouts),
        scenario("errors +5pp 100rps 5%", 100.0, 5.0, errors),
        scenario("errors +5pp 10000rps 1%", 10_000.0, 1.0, errors),
        scenario("p95 +40% whole 1000rps 25%", 1000.0, 25.0, whole),
        Scenario {
            onset_s: 90,
            ..scenario("errors +5pp from 90s 1000rps 5%", 1000.0, 5.0, errors)
        },
    ]
}

/// The model-aware scenarios: regressions that latency and errors do not
/// show (input drift, a shift in predictions, a KPI drop), and healthy
/// candidates, with changes the policy allows, for false rollbacks. Run by
/// default with `examples/sim-signals-policy.yaml`.
pub fn model_aware() -> Vec<Scenario> {
    let scenario = |name: &str, rate: f64, regression: Regression| Scenario {
        name: name.to_string(),
        rate_per_s: rate,
        steps: vec![5.0, 25.0, 50.0, 100.0],
        regression,
        onset_s: 0,
        within_policy: false,
    };
    let allowed = |name: &str, regression: Regression| Scenario {
        within_policy: true,
        ..scenario(name, 1000.0, regression)
    };
    let drift = Regression::FeatureDrift { sigma: 0.5 };
    vec![
        scenario("model: healthy 1000rps 5%", 1000.0, Regression::None),
        scenario("model: healthy 100rps 5%", 100.0, Regression::None),
        // Real but small changes, under the recommended thresholds (PSI
        // 0.2 and 0.1, KPI -10%): significant, and still allowed.
        allowed(
            "allowed: drift 0.2σ (PSI≈0.04) 1000rps 5%",
            Regression::FeatureDrift { sigma: 0.2 },
        ),
        allowed(
            "allowed: predictions 3pp 1000rps 5%",
            Regression::PredictionShift { moved_pp: 3.0 },
        ),
        allowed(
            "at margin: KPI -10% 1000rps 5%",
            Regression::KpiDrop { percent: 10.0 },
        ),
        scenario("drift 0.5σ (PSI≈0.23) 1000rps 5%", 1000.0, drift),
        scenario("drift 0.5σ (PSI≈0.23) 100rps 5%", 100.0, drift),
        scenario(
            "drift 1σ (PSI≈0.9) 1000rps 5%",
            1000.0,
            Regression::FeatureDrift { sigma: 1.0 },
        ),
        scenario(
            "predictions 15pp 1000rps 5%",
            1000.0,
            Regression::PredictionShift { moved_pp: 15.0 },
        ),
        scenario(
            "KPI -50% 1000rps 5%",
            1000.0,
            Regression::KpiDrop { percent: 50.0 },
        ),
        scenario(
            "KPI -25% 1000rps 5%",
            1000.0,
            Regression::KpiDrop { percent: 25.0 },
        ),
        Scenario {
            onset_s: 90,
            ..scenario("drift 0.5σ from 90s 1000rps 5%", 1000.0, drift)
        },
        // Both versions' inputs move 2σ over the rollout: not drift
        // between them, when compared over the same span. (Last, so the
        // seeds of the scenarios above stay as published.)
        allowed(
            "allowed: inputs move 0.5σ/min on both 1000rps 5%",
            Regression::InputsMove { sd_per_min: 0.5 },
        ),
    ]
}

/// Whether the policy's triggers read what the gateway gathers from
/// requests, answers or feedback (so the simulated traffic must carry it).
pub fn reads_model_signals(policy: &Policy) -> bool {
    policy.reads_signals()
        || policy
            .triggers
            .iter()
            .any(|t| matches!(t.metric, Metric::Kpi | Metric::Accuracy))
}

/// How one simulated rollout ended.
#[derive(Clone, Debug, PartialEq)]
pub struct RunResult {
    pub rolled_back: bool,
    /// Seconds from onset to the verdict (rolled back after onset).
    pub detection_delay_s: Option<f64>,
    /// Seconds from the candidate's first request to the verdict (the
    /// verdict's own `detection_ms`), when `detection_delay_s` is set: what
    /// a rehearsal of a candidate that is faulty from the start measures,
    /// so a blue/green warm-up without traffic does not count.
    pub detection_from_first_request_s: Option<f64>,
    /// Candidate requests from the onset to the verdict.
    pub exposed_requests: u64,
    /// Rolled back before the regression began: a false rollback.
    pub false_rollback: bool,
}

/// The policy as a scenario runs it: its canary steps, no approval gates
/// (nobody approves in a simulation), a named baseline.
pub fn policy_for(policy: &Policy, scenario: &Scenario) -> Policy {
    let mut policy = policy.clone();
    if let Strategy::Canary(canary) = &mut policy.strategy {
        canary.steps = scenario.steps.clone();
        canary.approval.clear();
    }
    policy
        .baseline
        .get_or_insert_with(|| "baseline".to_string());
    policy
}

/// Runs one rollout of `scenario` under `policy` to its end. The caller
/// checks `policy_for(policy, scenario)` first.
pub fn run_once(policy: &Policy, scenario: &Scenario, seed: u64) -> RunResult {
    let policy = policy_for(policy, scenario);
    let baseline = baseline_behaviour();
    let candidate = if scenario.onset_s == 0 {
        baseline.regressed(scenario.regression)
    } else {
        baseline.clone()
    };
    let mut traffic = Traffic::new(seed, scenario.rate_per_s, baseline.clone(), candidate);
    // Model-aware figures only when the policy reads them (they cost a
    // draw per request).
    let base_quality = Quality::baseline_for(scenario.regression);
    let mut quality = reads_model_signals(&policy).then(|| {
        let candidate = if scenario.onset_s == 0 {
            base_quality.regressed(scenario.regression)
        } else {
            base_quality.clone()
        };
        let sample_percent = policy
            .signals
            .as_ref()
            .map_or(100.0, |s| s.sample_percent());
        let delay_ticks = (FEEDBACK_DELAY_S * 1000 / TICK_MS) as usize;
        QualityTraffic::new(
            seed,
            base_quality.clone(),
            candidate,
            sample_percent,
            delay_ticks,
        )
    });
    let (mut rollout, _) =
        Rollout::start("sim", policy, 0).expect("the simulated policy was checked");
    // `reference: profile` triggers compare with the baseline model's
    // training distribution, as a registered profile would hold it.
    let against_profile = rollout.policy.triggers.iter().any(|t| t.against_profile());
    if let Some(quality) = quality.as_mut().filter(|_| against_profile) {
        rollout.set_profiles(&quality.profile(PROFILE_VALUES));
    }
    // Long enough for every stage plus the longest wait for traffic.
    let horizon_ms = rollout.stages.iter().map(|s| s.hold_ms).sum::<u64>() + 3_600_000;
    let onset_ms = scenario.onset_s * 1000;
    let mut exposed = 0;
    let mut now = 0;
    while rollout.is_open() && now < horizon_ms {
        if now == onset_ms && scenario.onset_s > 0 {
            traffic.set_candidate(baseline.regressed(scenario.regression));
            if let Some(quality) = &mut quality {
                quality.set_candidate(base_quality.regressed(scenario.regression));
            }
        }
        now += TICK_MS;
        let (candidate_percent, shadow_percent) = rollout.routed;
        let shadow = shadow_percent > 0.0;
        let mut sample = if shadow {
            traffic.tick_shadow(TICK_MS, shadow_percent)
        } else {
            traffic.tick(TICK_MS, candidate_percent)
        };
        if let Some(quality) = &mut quality {
            quality.fill(&mut sample, shadow);
        }
        if now > onset_ms {
            exposed += sample.candidate.counts.requests;
        }
        let observation = Observation {
            candidate: sample.candidate,
            baseline: sample.baseline,
            candidate_healthy: true,
            ..Observation::default()
        };
        // Ticks are never refused; only commands can be.
        let _ = rollout.step(now, Input::Tick(observation));
    }
    let verdict_ms = rollout.verdict.as_ref().map(|v| v.at_ms);
    let after_onset = verdict_ms.filter(|&at| at > onset_ms || scenario.onset_s == 0);
    let detected = after_onset.filter(|_| !scenario.healthy());
    RunResult {
        rolled_back: verdict_ms.is_some(),
        false_rollback: verdict_ms.is_some() && (scenario.healthy() || after_onset.is_none()),
        detection_delay_s: detected.map(|at| (at - onset_ms) as f64 / 1000.0),
        detection_from_first_request_s: detected.and(
            rollout
                .verdict
                .as_ref()
                .and_then(|v| v.detection_ms)
                .map(|ms| ms as f64 / 1000.0),
        ),
        exposed_requests: exposed,
    }
}

/// The figures for one scenario over many seeded runs. Field names are
/// part of `backstop sim --output json`: keep them stable.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ScenarioReport {
    pub name: String,
    pub healthy: bool,
    pub runs: usize,
    pub rate_rps: f64,
    pub canary_percent: f64,
    pub rollbacks: usize,
    /// Rollbacks of healthy candidates (or before the onset), per run.
    pub false_rollback_rate: f64,
    /// Regressions that were promoted instead of rolled back.
    pub missed: usize,
    pub detection_delay_s_p50: Option<f64>,
    pub detection_delay_s_p95: Option<f64>,
    pub exposed_requests_p50: Option<u64>,
    pub exposed_requests_p95: Option<u64>,
}

/// Runs `scenario` `runs` times; run `i` uses a seed derived from
/// (`seed`, `scenario_index`, `i`), so results do not depend on how runs
/// are spread over threads.
pub fn run_scenario(
    policy: &Policy,
    scenario: &Scenario,
    seed: u64,
    scenario_index: usize,
    runs: usize,
) -> ScenarioReport {
    let results: Vec<RunResult> = (0..runs)
        .map(|i| run_once(policy, scenario, run_seed(seed, scenario_index, i)))
        .collect();
    let mut delays: Vec<f64> = results.iter().filter_map(|r| r.detection_delay_s).collect();
    delays.sort_by(f64::total_cmp);
    let mut exposed: Vec<u64> = results
        .iter()
        .filter(|r| r.detection_delay_s.is_some())
        .map(|r| r.exposed_requests)
        .collect();
    exposed.sort_unstable();
    let healthy = scenario.healthy();
    ScenarioReport {
        name: scenario.name.clone(),
        healthy,
        runs,
        rate_rps: scenario.rate_per_s,
        canary_percent: scenario.steps.first().copied().unwrap_or(0.0),
        rollbacks: results.iter().filter(|r| r.rolled_back).count(),
        false_rollback_rate: results.iter().filter(|r| r.false_rollback).count() as f64
            / runs.max(1) as f64,
        missed: if healthy {
            0
        } else {
            results.iter().filter(|r| !r.rolled_back).count()
        },
        detection_delay_s_p50: percentile(&delays, 0.5),
        detection_delay_s_p95: percentile(&delays, 0.95),
        exposed_requests_p50: percentile(&exposed, 0.5),
        exposed_requests_p95: percentile(&exposed, 0.95),
    }
}

/// Nearest-rank percentile of sorted values.
pub fn percentile<T: Copy>(sorted: &[T], q: f64) -> Option<T> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

/// SplitMix64 over the three numbers: independent streams per run.
pub fn run_seed(seed: u64, scenario_index: usize, run: usize) -> u64 {
    let mut z = seed
        ^ (scenario_index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (run as u64).wrapping_mul(0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        serde_json::from_value(serde_json::json!({
            "model": "m",
            "candidate": "candidate",
            "strategy": { "canary": { "steps": [5, 25, 50, 100], "bake": "30s" } },
            "triggers": [
                { "metric": "error_rate", "above": "+1pp", "action": "rollback" },
                { "metric": "latency_p95", "above": "+10%", "action": "rollback" },
                { "metric": "timeout_rate", "above": "+1pp", "action": "rollback" }
            ]
        }))
        .unwrap()
    }

    /// A scenario `backstop sim` runs (request or model-aware), by name.
    fn scenario(name: &str) -> Scenario {
        standard()
            .into_iter()
            .chain(model_aware())
            .find(|s| s.name == name)
            .expect("a scenario of backstop sim")
    }

    #[test]
    fn same_seed_same_result() {
        let s = scenario("errors +5pp 1000rps 5%");
        assert_eq!(run_once(&policy(), &s, 3), run_once(&policy(), &s, 3));
    }

    /// The simulator as a test, with a fixed seed: healthy candidates go
    /// through, +5pp errors are caught within seconds at a 5% canary.
    #[test]
    fn healthy_promotes_and_errors_roll_back() {
        let healthy = run_scenario(&policy(), &scenario("healthy 1000rps 5%"), 42, 0, 10);
        assert_eq!(healthy.rollbacks, 0, "{healthy:?}");
        let errors = run_scenario(&policy(), &scenario("errors +5pp 1000rps 5%"), 42, 3, 10);
        assert_eq!(errors.missed, 0, "{errors:?}");
        assert!(errors.detection_delay_s_p50.unwrap() <= 10.0, "{errors:?}");
        assert!(errors.exposed_requests_p50.unwrap() <= 500, "{errors:?}");
    }

    #[test]
    fn late_onset_is_measured_from_the_onset() {
        let s = scenario("errors +5pp from 90s 1000rps 5%");
        let result = run_once(&policy(), &s, 7);
        assert!(result.rolled_back && !result.false_rollback, "{result:?}");
        assert!(result.detection_delay_s.unwrap() < 60.0, "{result:?}");
    }

    /// The model-aware policy of `backstop sim` (examples/sim-signals-policy.yaml).
    fn signals_policy() -> Policy {
        let mut policy = policy();
        policy.strategy = serde_json::from_value(
            serde_json::json!({ "canary": { "steps": [5, 25, 50, 100], "bake": "1m" } }),
        )
        .unwrap();
        let more: Vec<crate::policy::Trigger> = serde_json::from_value(serde_json::json!([
            { "metric": "drift_psi", "feature": "amount", "above": 0.2,
              "min_sample": 500, "action": "rollback" },
            { "metric": "prediction_shift", "above": 0.1, "min_sample": 500,
              "action": "rollback" },
            { "metric": "kpi", "kpi": "conversion", "below": "-10%",
              "min_sample": 1000, "action": "rollback" }
        ]))
        .unwrap();
        policy.triggers.extend(more);
        policy.signals = Some(
            serde_json::from_value(
                serde_json::json!({ "output": { "field": "probs", "kind": "probabilities" } }),
            )
            .unwrap(),
        );
        policy.check().unwrap();
        policy
    }

    /// Healthy models go through every model-aware trigger; drift, a shift
    /// in predictions and a KPI drop are each caught, by the trigger that
    /// names them.
    #[test]
    fn model_aware_regressions_roll_back_and_healthy_models_promote() {
        let policy = signals_policy();
        for name in [
            "model: healthy 1000rps 5%",
            "allowed: drift 0.2σ (PSI≈0.04) 1000rps 5%",
        ] {
            let report = run_scenario(&policy, &scenario(name), 42, 0, 5);
            assert_eq!(report.rollbacks, 0, "{report:?}");
        }
        for (name, within_s) in [
            ("drift 1σ (PSI≈0.9) 1000rps 5%", 15.0),
            ("predictions 15pp 1000rps 5%", 15.0),
            // The feedback arrives 30 s after the answers.
            ("KPI -50% 1000rps 5%", 90.0),
            ("drift 0.5σ from 90s 1000rps 5%", 60.0),
        ] {
            let report = run_scenario(&policy, &scenario(name), 42, 1, 5);
            assert_eq!(report.missed, 0, "{report:?}");
            assert_eq!(report.false_rollback_rate, 0.0, "{report:?}");
            assert!(
                report.detection_delay_s_p95.unwrap() <= within_s,
                "{report:?}"
            );
        }
    }

    /// Drift against a stored profile is judged in every stage, so a
    /// drift that starts at 100% (no baseline to compare with) is caught.
    #[test]
    fn drift_against_a_profile_is_caught_at_the_full_step() {
        let mut policy = signals_policy();
        let against_profile: crate::policy::Trigger = serde_json::from_value(serde_json::json!(
            { "metric": "drift_psi", "feature": "amount", "reference": "profile",
              "above": 0.2, "min_sample": 500, "action": "rollback" }
        ))
        .unwrap();
        policy.triggers.push(against_profile);
        policy.check().unwrap();
        let late = Scenario {
            // The 100% step starts at 180 s.
            onset_s: 200,
            ..scenario("drift 1σ (PSI≈0.9) 1000rps 5%")
        };
        let healthy = run_scenario(&policy, &scenario("model: healthy 1000rps 5%"), 42, 0, 5);
        assert_eq!(healthy.rollbacks, 0, "{healthy:?}");
        let report = run_scenario(&policy, &late, 42, 1, 5);
        assert_eq!(report.missed, 0, "{report:?}");
        assert!(report.detection_delay_s_p95.unwrap() <= 30.0, "{report:?}");
    }

    /// A policy without model-aware triggers gets no model-aware traffic
    /// (it would cost a draw per request for nothing); with them, a seed
    /// still replays the same run.
    #[test]
    fn model_signals_only_when_read_and_seeded() {
        assert!(!reads_model_signals(&policy()));
        assert!(reads_model_signals(&signals_policy()));
        let s = scenario("drift 0.5σ (PSI≈0.23) 1000rps 5%");
        let policy = signals_policy();
        assert_eq!(run_once(&policy, &s, 11), run_once(&policy, &s, 11));
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        assert_eq!(percentile(&[1, 2, 3, 4], 0.5), Some(2));
        assert_eq!(percentile(&[1, 2, 3, 4], 0.95), Some(4));
        assert_eq!(percentile::<u64>(&[], 0.5), None);
    }
}
