//! Model-aware figures of one version over a span (a tick, a stage, the
//! whole rollout): what the gateway read from sampled requests and answers,
//! what the feedback API joined to them. Mergeable like [`super::Sample`],
//! and bounded: counters, one sketch per watched feature, one for the
//! predictions.

use super::drift::{self, CategoricalSketch, NumericSketch};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub use super::kpi::Moments;

/// A distribution: numbers on the fixed log-linear grid, or categories.
/// Serialized with its kind: `{"kind": "numeric", "layout": 1, "bins":
/// [...]}` or `{"kind": "categorical", "counts": {...}}` (the sketches'
/// own sparse forms, see [`super::drift`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Sketch {
    Numeric(NumericSketch),
    Categorical(CategoricalSketch),
}

impl Sketch {
    pub fn merge(&mut self, other: &Sketch) {
        match (self, other) {
            (Sketch::Numeric(a), Sketch::Numeric(b)) => a.merge(b),
            (Sketch::Categorical(a), Sketch::Categorical(b)) => a.merge(b),
            // A feature that changed type mid-window: keep what was first.
            _ => {}
        }
    }

    /// Values compared by the scores.
    pub fn count(&self) -> u64 {
        match self {
            Sketch::Numeric(s) => s.finite_count(),
            Sketch::Categorical(s) => s.present_count(),
        }
    }

    /// PSI of `self` (current) against `reference`, and the p-value of the
    /// matching fixed-horizon test (KS for numbers, chi-square for
    /// categories). `None` when the sketches differ in kind or are too
    /// small to score.
    pub fn drift_from(&self, reference: &Sketch) -> Option<(f64, f64)> {
        match (reference, self) {
            (Sketch::Numeric(r), Sketch::Numeric(c)) => {
                Some((drift::psi(r, c)?, drift::ks(r, c)?.p_value))
            }
            (Sketch::Categorical(r), Sketch::Categorical(c)) => {
                Some((drift::psi(r, c)?, drift::chi_square(r, c)?.p_value))
            }
            _ => None,
        }
    }
}

/// The model-aware figures. Counters travel with a rollout's saved state;
/// the sketches are rebuilt from traffic after a restart (they are large
/// and a few seconds of data refills them).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Signals {
    /// Requests whose input was checked against the signature (sampled).
    pub inputs_checked: u64,
    /// Of those, requests with at least one schema violation.
    pub schema_violations: u64,
    /// Of those, requests with a null, NaN or infinite value, by feature.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub feature_nulls: BTreeMap<String, u64>,
    /// Input distributions, by feature.
    #[serde(skip)]
    pub features: BTreeMap<String, Sketch>,
    /// Answers whose prediction was read (sampled with the inputs).
    pub outputs_read: u64,
    /// Of those, answers without a readable prediction.
    pub invalid_outputs: u64,
    /// Distribution of the predictions (class or score).
    #[serde(skip)]
    pub predictions: Option<Sketch>,
    /// Confidence of the answers that carry one.
    pub confidence: Moments,
    /// Requests answered by both versions, and of those the ones where the
    /// predictions matched (recorded on the candidate).
    pub paired: u64,
    pub agreed: u64,
    /// Requests routed to this version that the baseline answered instead.
    pub fallbacks: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub fallback_reasons: BTreeMap<String, u64>,
    /// Feedback joined to this version's answers: KPIs by name, and labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub kpis: BTreeMap<String, Moments>,
    pub labeled: u64,
    pub correct: u64,
}

impl Signals {
    pub fn merge(&mut self, other: &Signals) {
        self.inputs_checked += other.inputs_checked;
        self.schema_violations += other.schema_violations;
        for (name, n) in &other.feature_nulls {
            *self.feature_nulls.entry(name.clone()).or_default() += n;
        }
        for (name, sketch) in &other.features {
            match self.features.get_mut(name) {
                Some(mine) => mine.merge(sketch),
                None => {
                    self.features.insert(name.clone(), sketch.clone());
                }
            }
        }
        self.outputs_read += other.outputs_read;
        self.invalid_outputs += other.invalid_outputs;
        match (&mut self.predictions, &other.predictions) {
            (Some(mine), Some(theirs)) => mine.merge(theirs),
            (mine @ None, Some(theirs)) => *mine = Some(theirs.clone()),
            _ => {}
        }
        self.confidence.merge(&other.confidence);
        self.paired += other.paired;
        self.agreed += other.agreed;
        self.fallbacks += other.fallbacks;
        for (reason, n) in &other.fallback_reasons {
            *self.fallback_reasons.entry(reason.clone()).or_default() += n;
        }
        for (name, moments) in &other.kpis {
            self.kpis.entry(name.clone()).or_default().merge(moments);
        }
        self.labeled += other.labeled;
        self.correct += other.correct;
    }

    pub fn is_empty(&self) -> bool {
        *self == Signals::default()
    }

    /// Records a checked input's feature value into its sketch (numbers
    /// and categories; a feature keeps the kind it was first seen with).
    pub fn sketch_number(&mut self, feature: &str, value: f64) {
        match self.features.get_mut(feature) {
            Some(Sketch::Numeric(s)) => s.record(value),
            Some(Sketch::Categorical(_)) => {}
            None => {
                let mut s = NumericSketch::new();
                s.record(value);
                self.features
                    .insert(feature.to_string(), Sketch::Numeric(s));
            }
        }
    }

    pub fn sketch_category(&mut self, feature: &str, value: &str) {
        match self.features.get_mut(feature) {
            Some(Sketch::Categorical(s)) => s.record(value),
            Some(Sketch::Numeric(_)) => {}
            None => {
                let mut s = CategoricalSketch::new();
                s.record(value);
                self.features
                    .insert(feature.to_string(), Sketch::Categorical(s));
            }
        }
    }

    /// Records a prediction: a class label or a score.
    pub fn predict_class(&mut self, class: &str) {
        match &mut self.predictions {
            Some(Sketch::Categorical(s)) => s.record(class),
            Some(Sketch::Numeric(_)) => {}
            None => {
                let mut s = CategoricalSketch::new();
                s.record(class);
                self.predictions = Some(Sketch::Categorical(s));
            }
        }
    }

    pub fn predict_score(&mut self, score: f64) {
        match &mut self.predictions {
            Some(Sketch::Numeric(s)) => s.record(score),
            Some(Sketch::Categorical(_)) => {}
            None => {
                let mut s = NumericSketch::new();
                s.record(score);
                self.predictions = Some(Sketch::Numeric(s));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merging_signals_adds_counts_and_sketches() {
        let mut a = Signals {
            inputs_checked: 3,
            ..Signals::default()
        };
        a.feature_nulls.insert("age".into(), 1);
        a.sketch_number("age", 30.0);
        a.predict_class("cat");
        let mut b = Signals {
            inputs_checked: 2,
            ..Signals::default()
        };
        b.feature_nulls.insert("age".into(), 2);
        b.sketch_number("age", 40.0);
        b.sketch_category("country", "fr");
        b.predict_class("dog");
        b.kpis.entry("revenue".into()).or_default().add(10.0);
        a.merge(&b);
        assert_eq!(a.inputs_checked, 5);
        assert_eq!(a.feature_nulls["age"], 3);
        assert_eq!(a.features["age"].count(), 2);
        assert_eq!(a.features["country"].count(), 1);
        assert_eq!(a.predictions.as_ref().unwrap().count(), 2);
        assert_eq!(a.kpis["revenue"].n, 1);
    }

    #[test]
    fn sketches_stay_out_of_the_saved_state() {
        let mut a = Signals {
            inputs_checked: 1,
            ..Signals::default()
        };
        a.sketch_number("age", 30.0);
        let json = serde_json::to_string(&a).unwrap();
        let back: Signals = serde_json::from_str(&json).unwrap();
        assert_eq!(back.inputs_checked, 1);
        assert!(back.features.is_empty());
    }
}
