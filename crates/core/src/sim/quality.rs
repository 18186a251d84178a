//! Seeded synthetic model behaviour: what the gateway would read from each
//! version's requests and answers, and what the feedback API would join to
//! them, tick by tick — the inputs of the model-aware triggers.
//!
//! # Model
//!
//! One watched numeric input feature ([`FEATURE`]), normal with a mean and
//! a standard deviation; predictions among three classes ([`CLASSES`]) with
//! fixed shares; one 0/1 business KPI ([`KPI`], a conversion) per answered
//! request, reported `feedback_delay_ticks` later (an application learns
//! of a conversion after the answer, and the live runtime adds feedback to
//! the bucket it *arrives* in).
//!
//! As in the gateway: every sampled request (answered or not) has its input
//! sketched; only answered ones have a prediction and a KPI; a shadow copy
//! is never joined to feedback.
//!
//! Cost: one table lookup per input value (1,024 normal quantiles, midpoints
//! of equal-probability slices, so the values are exactly normal to the
//! sketch's resolution) and one draw per prediction and KPI. A request
//! generator of its own, seeded apart from the request outcomes, so adding
//! signals to a scenario does not change its request figures.

use super::traffic::{Regression, TickSample};
use crate::analysis::signals::{Moments, Sketch};
use std::collections::{BTreeMap, VecDeque};

/// The watched input feature's name (as a policy's `feature:` names it).
pub const FEATURE: &str = "amount";
/// The KPI's name (as a policy's `kpi:` names it).
pub const KPI: &str = "conversion";
/// The predicted classes.
pub const CLASSES: [&str; 3] = ["approve", "review", "decline"];

/// Values of the standard normal at the midpoints of 1,024 equal slices.
const NORMAL_POINTS: usize = 1024;

/// How a version's model behaves, as the model-aware triggers see it.
#[derive(Clone, Debug, PartialEq)]
pub struct Quality {
    /// The input feature: normal with this mean and standard deviation.
    pub feature_mean: f64,
    pub feature_sd: f64,
    /// Shares of [`CLASSES`] among predictions (they sum to 1).
    pub class_shares: [f64; 3],
    /// Chance that an answered request converts.
    pub conversion_rate: f64,
    /// How fast the feature's mean moves, in standard deviations a second.
    pub feature_moves_sd_per_s: f64,
}

impl Quality {
    /// The baseline every model-aware scenario shares: amounts around 120
    /// (sd 30), 70% approve / 20% review / 10% decline, 10% conversion.
    pub fn baseline() -> Quality {
        Quality {
            feature_mean: 120.0,
            feature_sd: 30.0,
            class_shares: [0.7, 0.2, 0.1],
            conversion_rate: 0.10,
            feature_moves_sd_per_s: 0.0,
        }
    }

    /// The baseline of a scenario with `regression`: inputs that move
    /// over time move on both versions.
    pub fn baseline_for(regression: Regression) -> Quality {
        let mut quality = Quality::baseline();
        if let Regression::InputsMove { sd_per_min } = regression {
            quality.feature_moves_sd_per_s = sd_per_min / 60.0;
        }
        quality
    }

    /// This behaviour with `regression` applied (request-level regressions
    /// leave it unchanged).
    pub fn regressed(&self, regression: Regression) -> Quality {
        let mut quality = self.clone();
        match regression {
            Regression::FeatureDrift { sigma } => {
                quality.feature_mean += sigma * self.feature_sd;
            }
            Regression::PredictionShift { moved_pp } => {
                // Approvals become declines.
                let moved = (moved_pp / 100.0).clamp(0.0, self.class_shares[0]);
                quality.class_shares[0] -= moved;
                quality.class_shares[2] += moved;
            }
            Regression::KpiDrop { percent } => {
                quality.conversion_rate =
                    (self.conversion_rate * (1.0 - percent / 100.0)).clamp(0.0, 1.0);
            }
            _ => {}
        }
        quality
    }
}

/// Fills in the signals of each tick's samples, per version.
pub struct QualityTraffic {
    rng: fastrand::Rng,
    normal: Box<[f64]>,
    baseline: Quality,
    candidate: Quality,
    /// Share of requests checked and read (the policy's `sample_percent`).
    sample_share: f64,
    /// Conversions waiting to be reported: (candidate, baseline) per tick.
    feedback: VecDeque<(Moments, Moments)>,
    feedback_delay_ticks: usize,
    /// Seconds since the start, for inputs that move over time.
    now_s: f64,
    tick_s: f64,
}

impl QualityTraffic {
    pub fn new(
        seed: u64,
        baseline: Quality,
        candidate: Quality,
        sample_percent: f64,
        feedback_delay_ticks: usize,
    ) -> Self {
        assert!(
            (0.0..=100.0).contains(&sample_percent),
            "sample_percent {sample_percent} is not in 0..=100"
        );
        let normal = (0..NORMAL_POINTS)
            .map(|i| super::traffic::normal_quantile((i as f64 + 0.5) / NORMAL_POINTS as f64))
            .collect();
        Self {
            // Apart from the request outcomes' stream.
            rng: fastrand::Rng::with_seed(seed ^ 0x5157_414c_4954_5921),
            normal,
            baseline,
            candidate,
            sample_share: sample_percent / 100.0,
            feedback: VecDeque::new(),
            feedback_delay_ticks,
            now_s: 0.0,
            tick_s: super::scenario::TICK_MS as f64 / 1000.0,
        }
    }

    /// The baseline model's inputs as a stored reference profile would
    /// hold them (the training data's distribution): `n` values of
    /// [`FEATURE`], by feature. Training data is never live traffic
    /// exactly: the profile's mean is 0.1σ off and its spread 5% wider
    /// (PSI ≈ 0.01 against live inputs, well under any threshold).
    pub fn profile(&mut self, n: usize) -> BTreeMap<String, Sketch> {
        let mut signals = crate::analysis::Signals::default();
        let mean = self.baseline.feature_mean + 0.1 * self.baseline.feature_sd;
        let sd = 1.05 * self.baseline.feature_sd;
        for _ in 0..n {
            let z = self.standard_normal();
            signals.sketch_number(FEATURE, mean + sd * z);
        }
        signals.features
    }

    /// Switch the candidate's behaviour (regression onset mid-run).
    pub fn set_candidate(&mut self, candidate: Quality) {
        self.candidate = candidate;
    }

    /// Adds the tick's signals to `sample`, from its request counts.
    /// `shadow`: the candidate's requests are copies, never joined to
    /// feedback.
    pub fn fill(&mut self, sample: &mut TickSample, shadow: bool) {
        self.now_s += self.tick_s;
        let candidate = self.version(&self.candidate.clone(), &mut sample.candidate);
        let baseline = self.version(&self.baseline.clone(), &mut sample.baseline);
        let candidate = if shadow {
            Moments::default()
        } else {
            candidate
        };
        self.feedback.push_back((candidate, baseline));
        if self.feedback.len() > self.feedback_delay_ticks {
            if let Some((candidate, baseline)) = self.feedback.pop_front() {
                for (signals, kpi) in [
                    (&mut sample.candidate.signals, candidate),
                    (&mut sample.baseline.signals, baseline),
                ] {
                    if kpi.n > 0 {
                        signals.kpis.entry(KPI.to_string()).or_default().merge(&kpi);
                    }
                }
            }
        }
    }

    /// One version's tick: sketches its sampled inputs and predictions;
    /// the conversions of its answered requests, to be reported later.
    fn version(&mut self, quality: &Quality, sample: &mut super::traffic::Sample) -> Moments {
        let counts = &sample.counts;
        let answered = counts.successes;
        let signals = &mut sample.signals;
        let checked = self.sampled(counts.requests);
        let read = self.sampled(answered);
        let mean =
            quality.feature_mean + quality.feature_sd * quality.feature_moves_sd_per_s * self.now_s;
        for _ in 0..checked {
            let z = self.standard_normal();
            signals.sketch_number(FEATURE, mean + quality.feature_sd * z);
        }
        signals.inputs_checked += checked;
        let [approve, review, _] = quality.class_shares;
        for _ in 0..read {
            let u = self.rng.f64();
            let class = if u < approve {
                CLASSES[0]
            } else if u < approve + review {
                CLASSES[1]
            } else {
                CLASSES[2]
            };
            signals.predict_class(class);
        }
        signals.outputs_read += read;
        let mut conversions = Moments::default();
        for _ in 0..answered {
            conversions.add(f64::from(u8::from(
                self.rng.f64() < quality.conversion_rate,
            )));
        }
        conversions
    }

    /// A draw of the standard normal (one of its 1,024 slice midpoints).
    fn standard_normal(&mut self) -> f64 {
        self.normal[self.rng.usize(..NORMAL_POINTS)]
    }

    /// How many of `n` requests the sample takes.
    fn sampled(&mut self, n: u64) -> u64 {
        if self.sample_share >= 1.0 {
            n
        } else {
            (0..n)
                .filter(|_| self.rng.f64() < self.sample_share)
                .count() as u64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::signals::{Signals, Sketch};

    fn merged<'a>(signals: impl Iterator<Item = &'a Signals>) -> Signals {
        let mut total = Signals::default();
        for s in signals {
            total.merge(s);
        }
        total
    }

    fn answered(n: u64) -> TickSample {
        let mut sample = TickSample::default();
        for side in [&mut sample.candidate, &mut sample.baseline] {
            side.counts.requests = n;
            side.counts.successes = n;
        }
        sample
    }

    fn run(quality: &mut QualityTraffic, ticks: usize, n: u64) -> (Signals, Signals) {
        let samples: Vec<TickSample> = (0..ticks)
            .map(|_| {
                let mut sample = answered(n);
                quality.fill(&mut sample, false);
                sample
            })
            .collect();
        (
            merged(samples.iter().map(|s| &s.candidate.signals)),
            merged(samples.iter().map(|s| &s.baseline.signals)),
        )
    }

    #[test]
    fn same_seed_same_signals() {
        let make = || QualityTraffic::new(9, Quality::baseline(), Quality::baseline(), 100.0, 3);
        assert_eq!(run(&mut make(), 10, 100), run(&mut make(), 10, 100));
    }

    #[test]
    fn healthy_versions_match_and_the_figures_match_the_model() {
        let mut quality =
            QualityTraffic::new(1, Quality::baseline(), Quality::baseline(), 100.0, 0);
        let (candidate, baseline) = run(&mut quality, 100, 500);
        assert_eq!(candidate.inputs_checked, 50_000);
        let Some(Sketch::Numeric(amounts)) = candidate.features.get(FEATURE) else {
            panic!("no numeric sketch of {FEATURE}");
        };
        let median = amounts.quantile(0.5).unwrap();
        assert!((median - 120.0).abs() < 8.0, "median {median}");
        let p84 = amounts.quantile(0.8413).unwrap();
        assert!((p84 - 150.0).abs() < 10.0, "p84 {p84}");
        let Some(Sketch::Categorical(classes)) = &candidate.predictions else {
            panic!("no class sketch");
        };
        let approve = classes.count("approve").unwrap() as f64 / 50_000.0;
        assert!((approve - 0.7).abs() < 0.01, "approve share {approve}");
        let conversion = candidate.kpis[KPI].mean().unwrap();
        assert!((conversion - 0.10).abs() < 0.005, "conversion {conversion}");
        // Same model on both sides: no drift to speak of.
        let (psi, p) = candidate.features[FEATURE]
            .drift_from(&baseline.features[FEATURE])
            .unwrap();
        assert!(psi < 0.01 && p > 0.001, "psi {psi}, p {p}");
    }

    #[test]
    fn regressions_move_what_they_name() {
        let base = Quality::baseline();
        let drifted = base.regressed(Regression::FeatureDrift { sigma: 0.5 });
        assert_eq!(drifted.feature_mean, 135.0);
        let shifted = base.regressed(Regression::PredictionShift { moved_pp: 10.0 });
        assert!((shifted.class_shares[0] - 0.6).abs() < 1e-12);
        assert!((shifted.class_shares[2] - 0.2).abs() < 1e-12);
        let dropped = base.regressed(Regression::KpiDrop { percent: 20.0 });
        assert!((dropped.conversion_rate - 0.08).abs() < 1e-12);
        assert_eq!(base.regressed(Regression::Errors { extra_pp: 5.0 }), base);

        let mut quality = QualityTraffic::new(2, base.clone(), drifted, 100.0, 0);
        let (candidate, baseline) = run(&mut quality, 20, 500);
        let (psi, p) = candidate.features[FEATURE]
            .drift_from(&baseline.features[FEATURE])
            .unwrap();
        assert!(psi > 0.15 && p < 1e-10, "psi {psi}, p {p}");
    }

    #[test]
    fn feedback_arrives_after_the_delay_and_never_for_shadow_copies() {
        let mut quality =
            QualityTraffic::new(3, Quality::baseline(), Quality::baseline(), 100.0, 2);
        let mut ticks = Vec::new();
        for _ in 0..4 {
            let mut sample = answered(100);
            quality.fill(&mut sample, true);
            ticks.push(sample);
        }
        // Each tick reports what was answered two ticks before.
        assert!(ticks[0].baseline.signals.kpis.is_empty());
        assert!(ticks[1].baseline.signals.kpis.is_empty());
        assert_eq!(ticks[2].baseline.signals.kpis[KPI].n, 100);
        assert_eq!(ticks[3].baseline.signals.kpis[KPI].n, 100);
        assert!(ticks.iter().all(|t| t.candidate.signals.kpis.is_empty()));
    }

    #[test]
    fn a_sample_share_checks_part_of_the_requests() {
        let mut quality = QualityTraffic::new(4, Quality::baseline(), Quality::baseline(), 10.0, 0);
        let (candidate, _) = run(&mut quality, 10, 1000);
        let checked = candidate.inputs_checked;
        assert!(
            (800..1200).contains(&checked),
            "checked {checked} of 10,000"
        );
        assert_eq!(candidate.kpis[KPI].n, 10_000, "every answer is reported");
    }
}
