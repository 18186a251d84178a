//! Model-aware signals on the request path: the sampled input check
//! against the version's signature (schema violations, nulls, feature
//! sketches), the prediction read from the answer (class or score,
//! confidence), the pairing of two versions' answers to one request
//! (agreement), and the per-request fallback's reasons.
//!
//! What is gathered goes into the version's pending [`Signals`] under a
//! short lock; the rollout controller takes it once per tick. Nothing here
//! runs unless the model's table has `signals` (a rollout whose policy
//! needs them), and then only for sampled requests.

use super::VersionState;
use crate::config::SignalSpec;
use crate::signature::{CheckReport, InputSignature};
use backstop_core::analysis::Signals;
use backstop_core::policy::{Fallback, FallbackReason, Output, OutputKind};
use serde_json::Value;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Largest answer read for its prediction; a larger one is not read.
pub const OUTPUT_READ_MAX: usize = 1 << 20;

/// A model table's signal settings, resolved against its versions.
pub struct SignalSettings {
    /// Parts per million of requests checked and read.
    ppm: u32,
    mirror_ppm: u32,
    pub features: Vec<String>,
    pub output: Option<Output>,
    pub fallback: Option<Fallback>,
    /// Version indices in the table.
    pub candidate: Option<usize>,
    pub baseline: Option<usize>,
}

impl SignalSettings {
    pub fn new(spec: &SignalSpec, index: impl Fn(&str) -> Option<usize>) -> Self {
        let ppm = |percent: f64| (percent * 10_000.0).round() as u32;
        Self {
            ppm: ppm(spec.sample_percent),
            mirror_ppm: ppm(spec.mirror_percent),
            features: spec.features.clone(),
            output: spec.output.clone(),
            fallback: spec.fallback.clone(),
            candidate: spec.candidate.as_deref().and_then(&index),
            baseline: spec.baseline.as_deref().and_then(&index),
        }
    }

    /// Whether to check and read this request.
    pub fn sample(&self) -> bool {
        chance(self.ppm)
    }

    /// Whether to mirror this candidate request to the baseline.
    pub fn mirror(&self) -> bool {
        chance(self.mirror_ppm)
    }

    /// The fallback covers `reason`.
    pub fn falls_back_on(&self, reason: FallbackReason) -> bool {
        self.fallback.as_ref().is_some_and(|f| f.covers(reason))
    }

    /// The answer must be read before it is passed on: a fallback judges
    /// its content.
    pub fn judges_answers(&self) -> bool {
        self.output.is_some()
            && (self.falls_back_on(FallbackReason::InvalidOutput)
                || self.fallback.as_ref().is_some_and(|f| {
                    f.confidence_below.is_some() && f.covers(FallbackReason::LowConfidence)
                }))
    }

    /// Why this answer (already read) should be replaced, if it should.
    pub fn fallback_for(&self, prediction: &Option<Prediction>) -> Option<FallbackReason> {
        let fallback = self.fallback.as_ref()?;
        self.output.as_ref()?;
        match prediction {
            None if fallback.covers(FallbackReason::InvalidOutput) => {
                Some(FallbackReason::InvalidOutput)
            }
            Some(p) => {
                let floor = fallback.confidence_below?;
                let low = p.confidence.is_some_and(|c| c < floor);
                (low && fallback.covers(FallbackReason::LowConfidence))
                    .then_some(FallbackReason::LowConfidence)
            }
            None => None,
        }
    }
}

fn chance(ppm: u32) -> bool {
    ppm >= 1_000_000 || (ppm > 0 && fastrand::u32(0..1_000_000) < ppm)
}

/// Buckets of signals kept until the rollout takes them: it takes them
/// every bucket, so this only bounds what piles up when none does (a
/// model whose config turns signals on with no rollout open). Each holds
/// a 9 KiB sketch per feature.
const PENDING_BUCKETS_MAX: usize = 64;

/// A version's signals by statistics bucket, until the controller takes
/// them with the same buckets as the request counts (so a rate's events
/// and its requests cover the same span).
#[derive(Default)]
pub struct Pending {
    buckets: Mutex<VecDeque<(u64, Signals)>>,
    signature: Mutex<Option<Arc<InputSignature>>>,
    /// Since the process started, for `/metrics`.
    pub totals: SignalTotals,
}

/// A version's signal counters since the process started (what `/metrics`
/// shows; the controller's figures are taken by bucket and drained).
#[derive(Default)]
pub struct SignalTotals {
    pub inputs_checked: AtomicU64,
    pub schema_violations: AtomicU64,
    pub outputs_read: AtomicU64,
    pub invalid_outputs: AtomicU64,
    pub paired: AtomicU64,
    pub agreed: AtomicU64,
    /// By [`FallbackReason::ALL`]'s order.
    pub fallbacks: [AtomicU64; FallbackReason::ALL.len()],
}

fn bump(counter: &AtomicU64, by: bool) {
    if by {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

impl Pending {
    /// Adds to bucket `epoch` (the one the version's statistics record
    /// into now).
    pub fn with<R>(&self, epoch: u64, f: impl FnOnce(&mut Signals) -> R) -> R {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.back().is_none_or(|(e, _)| *e < epoch) {
            if buckets.len() >= PENDING_BUCKETS_MAX {
                buckets.pop_front();
            }
            buckets.push_back((epoch, Signals::default()));
        }
        // A request that started in an earlier bucket still lands in its
        // own (or, if that is gone, the oldest kept).
        let index = buckets.iter().rposition(|(e, _)| *e <= epoch).unwrap_or(0);
        f(&mut buckets[index].1)
    }

    /// Buckets `from..=to` merged; those up to `to` are dropped.
    pub fn take(&self, from: u64, to: u64) -> Signals {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let mut merged = Signals::default();
        while buckets.front().is_some_and(|(e, _)| *e <= to) {
            if let Some((epoch, signals)) = buckets.pop_front() {
                if epoch >= from {
                    merged.merge(&signals);
                }
            }
        }
        merged
    }

    /// Drops everything gathered so far.
    pub fn clear(&self) {
        self.buckets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    pub fn set_signature(&self, signature: Option<Arc<InputSignature>>) {
        *self.signature.lock().unwrap_or_else(|e| e.into_inner()) = signature;
    }

    pub fn signature(&self) -> Option<Arc<InputSignature>> {
        self.signature
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl VersionState {
    /// Adds to this version's signals, in the bucket its requests record
    /// into now.
    pub fn add_signals<R>(&self, f: impl FnOnce(&mut Signals) -> R) -> R {
        self.signals.with(self.stats.current_epoch(), f)
    }
}

/// Checks a sampled request against the version's signature (parsed
/// outside the lock) and records the result.
pub fn record_input(state: &VersionState, settings: &SignalSettings, body: &[u8]) {
    let Some(signature) = state.signals.signature() else {
        return;
    };
    let report = signature.check_observing(body, &settings.features);
    let totals = &state.signals.totals;
    bump(&totals.inputs_checked, true);
    bump(&totals.schema_violations, !report.is_valid());
    state.add_signals(|signals| add_report(signals, &report));
}

fn add_report(signals: &mut Signals, report: &CheckReport) {
    signals.inputs_checked += 1;
    if !report.is_valid() {
        signals.schema_violations += 1;
    }
    for (feature, counts) in &report.per_feature {
        if counts.nulls + counts.nan + counts.inf > 0 {
            *signals.feature_nulls.entry(feature.clone()).or_default() += 1;
        }
    }
    report.sketch_into(signals);
}

/// What an answer predicted.
#[derive(Clone, Debug, PartialEq)]
pub struct Prediction {
    /// The class (probabilities, labels).
    pub class: Option<String>,
    /// The number (scores).
    pub score: Option<f64>,
    pub confidence: Option<f64>,
}

impl Prediction {
    /// Same answer: the same class, or scores within 1% of each other.
    pub fn agrees_with(&self, other: &Prediction) -> bool {
        match (&self.class, &other.class, self.score, other.score) {
            (Some(a), Some(b), _, _) => a == b,
            (_, _, Some(a), Some(b)) => (a - b).abs() <= 0.01 * a.abs().max(b.abs()).max(1e-12),
            _ => false,
        }
    }
}

/// Reads the prediction from an answer: an OIP `outputs` tensor named
/// `output.field`, or a top-level field of a plain JSON answer. Batches
/// are read from their first row. `None`: the answer does not hold what
/// the policy says it holds.
pub fn read_prediction(output: &Output, body: &[u8]) -> Option<Prediction> {
    if body.len() > OUTPUT_READ_MAX {
        return None;
    }
    let answer: Value = serde_json::from_slice(body).ok()?;
    let (value, row_len) = field(&answer, &output.field)?;
    let first_row = first_row(value);
    let mut prediction = Prediction {
        class: None,
        score: None,
        confidence: None,
    };
    match output.kind {
        OutputKind::Probabilities => {
            let row = first_row.as_array()?;
            // OIP sends a batch flat: its shape says where a row ends.
            let row = match row_len {
                Some(n) if n > 0 && n < row.len() => &row[..n],
                _ => row,
            };
            let probabilities: Vec<f64> = row.iter().map(Value::as_f64).collect::<Option<_>>()?;
            let (index, best) = probabilities
                .iter()
                .copied()
                .enumerate()
                .filter(|(_, p)| p.is_finite())
                .max_by(|a, b| a.1.total_cmp(&b.1))?;
            prediction.class = Some(index.to_string());
            prediction.confidence = Some(best);
        }
        OutputKind::Label => {
            let label = scalar(first_row)?;
            prediction.class = Some(match label {
                Value::String(s) => s.clone(),
                Value::Number(n) => crate::feedback::number_text(n),
                other => other.to_string(),
            });
        }
        OutputKind::Score => {
            let score = scalar(first_row)?.as_f64().filter(|s| s.is_finite())?;
            prediction.score = Some(score);
        }
    }
    if let Some(name) = &output.confidence_field {
        let confidence = scalar(first_row_of(field(&answer, name)?.0))?.as_f64()?;
        prediction.confidence = Some(confidence);
    }
    // A confidence outside 0..1 is not one.
    if prediction
        .confidence
        .is_some_and(|c| !(0.0..=1.0).contains(&c))
    {
        return None;
    }
    Some(prediction)
}

/// The named OIP output tensor's `data` with the length of one row by its
/// shape (the product of the dimensions after the first, when the first
/// is the batch), or the top-level field.
fn field<'a>(answer: &'a Value, name: &str) -> Option<(&'a Value, Option<usize>)> {
    if let Some(outputs) = answer.get("outputs").and_then(Value::as_array) {
        if let Some(tensor) = outputs
            .iter()
            .find(|t| t.get("name").and_then(Value::as_str) == Some(name))
        {
            let row_len = tensor
                .get("shape")
                .and_then(Value::as_array)
                .filter(|dims| dims.len() >= 2)
                .and_then(|dims| {
                    dims[1..].iter().try_fold(1usize, |n, d| {
                        n.checked_mul(usize::try_from(d.as_u64()?).ok()?)
                    })
                });
            return Some((tensor.get("data")?, row_len));
        }
    }
    Some((answer.get(name)?, None))
}

/// `[[0.1, 0.9], [..]]` → `[0.1, 0.9]`; a flat list stays as it is.
fn first_row(value: &Value) -> &Value {
    match value.as_array().and_then(|rows| rows.first()) {
        Some(row @ Value::Array(_)) => row,
        _ => value,
    }
}

/// `[x, ...]` → `x`, nested as deep as it goes; a scalar stays.
fn first_row_of(value: &Value) -> &Value {
    let mut value = value;
    while let Some(first) = value.as_array().and_then(|a| a.first()) {
        value = first;
    }
    value
}

fn scalar(value: &Value) -> Option<&Value> {
    let value = first_row_of(value);
    (!value.is_array() && !value.is_object() && !value.is_null()).then_some(value)
}

/// Records an answer's prediction (or its absence) on its version.
pub fn record_output(state: &VersionState, prediction: Option<&Prediction>) {
    let totals = &state.signals.totals;
    bump(&totals.outputs_read, true);
    bump(&totals.invalid_outputs, prediction.is_none());
    state.add_signals(|signals| {
        signals.outputs_read += 1;
        let Some(p) = prediction else {
            signals.invalid_outputs += 1;
            return;
        };
        if let Some(class) = &p.class {
            signals.predict_class(class);
        } else if let Some(score) = p.score {
            signals.predict_score(score);
        }
        if let Some(confidence) = p.confidence {
            signals.confidence.add(confidence);
        }
    });
}

/// Records a fallback on the candidate that needed it.
pub fn record_fallback(state: &VersionState, reason: FallbackReason) {
    if let Some(i) = FallbackReason::ALL.iter().position(|r| *r == reason) {
        bump(&state.signals.totals.fallbacks[i], true);
    }
    state.add_signals(|signals| {
        signals.fallbacks += 1;
        *signals
            .fallback_reasons
            .entry(reason.name().to_string())
            .or_default() += 1;
    });
}

/// A pair an answer joins, and on which side.
pub type PairSide = (Arc<Pair>, Side);

/// An answer's bytes, kept as they stream past, for its prediction.
pub struct OutputRead {
    output: Output,
    bytes: Vec<u8>,
    too_big: bool,
    pair: Option<PairSide>,
    /// Record the prediction on the version (not for mirror copies, which
    /// only feed the pair).
    record: bool,
}

impl OutputRead {
    pub fn new(output: Output, pair: Option<PairSide>, record: bool) -> Box<Self> {
        Box::new(OutputRead {
            output,
            bytes: Vec::new(),
            too_big: false,
            pair,
            record,
        })
    }

    pub fn tee(&mut self, data: &[u8]) {
        if self.too_big || self.bytes.len() + data.len() > OUTPUT_READ_MAX {
            self.too_big = true;
            self.bytes = Vec::new();
        } else {
            self.bytes.extend_from_slice(data);
        }
    }

    /// `answered`: the version answered in full and successfully. Returns
    /// the prediction read.
    pub fn finish(self, state: &VersionState, answered: bool) -> Option<Prediction> {
        let read = answered && !self.too_big;
        let prediction = if read {
            read_prediction(&self.output, &self.bytes)
        } else {
            None
        };
        if read && self.record {
            record_output(state, prediction.as_ref());
        }
        if let Some((pair, side)) = self.pair {
            pair.offer(side, prediction.clone());
        }
        prediction
    }
}

/// Two answers to one request (the user's and a mirrored or shadow copy):
/// whichever is read second compares them, on the candidate's signals.
pub struct Pair {
    candidate: Arc<VersionState>,
    /// Each side's prediction once read (`Some(None)`: no prediction).
    sides: Mutex<[Option<Option<Prediction>>; 2]>,
}

#[derive(Clone, Copy)]
pub enum Side {
    Candidate = 0,
    Baseline = 1,
}

impl Pair {
    pub fn new(candidate: Arc<VersionState>) -> Arc<Pair> {
        Arc::new(Pair {
            candidate,
            sides: Mutex::new([None, None]),
        })
    }

    pub fn offer(&self, side: Side, prediction: Option<Prediction>) {
        let both = {
            let mut sides = self.sides.lock().unwrap_or_else(|e| e.into_inner());
            sides[side as usize] = Some(prediction);
            match &*sides {
                [Some(Some(c)), Some(Some(b))] => Some(c.agrees_with(b)),
                _ => None,
            }
        };
        if let Some(agreed) = both {
            let totals = &self.candidate.signals.totals;
            bump(&totals.paired, true);
            bump(&totals.agreed, agreed);
            self.candidate.add_signals(|signals| {
                signals.paired += 1;
                signals.agreed += u64::from(agreed);
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn output(field: &str, kind: OutputKind) -> Output {
        Output {
            field: field.into(),
            kind,
            confidence_field: None,
        }
    }

    fn read(output: &Output, answer: Value) -> Option<Prediction> {
        read_prediction(output, answer.to_string().as_bytes())
    }

    #[test]
    fn predictions_are_read_from_oip_and_plain_json_answers() {
        let probabilities = output("probs", OutputKind::Probabilities);
        let oip = json!({"outputs": [
            {"name": "other", "datatype": "FP32", "shape": [1], "data": [7]},
            {"name": "probs", "datatype": "FP32", "shape": [1, 3], "data": [0.1, 0.7, 0.2]},
        ]});
        let p = read(&probabilities, oip).unwrap();
        assert_eq!((p.class.as_deref(), p.confidence), (Some("1"), Some(0.7)));
        // A batch: the first row.
        let p = read(&probabilities, json!({"probs": [[0.9, 0.1], [0.2, 0.8]]})).unwrap();
        assert_eq!(p.class.as_deref(), Some("0"));
        // An OIP batch comes flat: the shape says where the first row ends.
        let batch = json!({"outputs": [{"name": "probs", "datatype": "FP32",
            "shape": [2, 3], "data": [0.1, 0.7, 0.2, 0.05, 0.05, 0.9]}]});
        let p = read(&probabilities, batch).unwrap();
        assert_eq!((p.class.as_deref(), p.confidence), (Some("1"), Some(0.7)));
        let nested = json!({"outputs": [{"name": "probs", "datatype": "FP32",
            "shape": [2, 2], "data": [[0.3, 0.7], [0.9, 0.1]]}]});
        assert_eq!(
            read(&probabilities, nested).unwrap().class.as_deref(),
            Some("1")
        );
        // Numbers as labels compare as numbers: 1.0 is class 1.
        let label = output("label", OutputKind::Label);
        assert_eq!(
            read(&label, json!({"label": 1.0}))
                .unwrap()
                .class
                .as_deref(),
            Some("1")
        );
        assert_eq!(
            read(&label, json!({"label": 2.5}))
                .unwrap()
                .class
                .as_deref(),
            Some("2.5")
        );
        let label = output("label", OutputKind::Label);
        assert_eq!(
            read(&label, json!({"label": ["cat"]}))
                .unwrap()
                .class
                .as_deref(),
            Some("cat")
        );
        assert_eq!(
            read(&label, json!({"label": 3})).unwrap().class.as_deref(),
            Some("3")
        );
        let score = output("score", OutputKind::Score);
        assert_eq!(
            read(&score, json!({"score": [[0.25]]})).unwrap().score,
            Some(0.25)
        );
        let mut with_confidence = output("label", OutputKind::Label);
        with_confidence.confidence_field = Some("conf".into());
        let p = read(&with_confidence, json!({"label": "dog", "conf": 0.4})).unwrap();
        assert_eq!(p.confidence, Some(0.4));
    }

    #[test]
    fn answers_without_the_prediction_are_invalid() {
        let probabilities = output("probs", OutputKind::Probabilities);
        for bad in [
            json!({"other": [0.1]}),
            json!({"probs": "high"}),
            json!({"probs": [0.1, "x"]}),
            json!({"probs": []}),
            json!({"probs": [1.5, 0.2]}),
        ] {
            assert_eq!(read(&probabilities, bad.clone()), None, "{bad}");
        }
        assert_eq!(read_prediction(&probabilities, b"not json"), None);
        let score = output("score", OutputKind::Score);
        assert_eq!(read(&score, json!({"score": null})), None);
        assert_eq!(read(&score, json!({"score": {"a": 1}})), None);
    }

    #[test]
    fn agreement_is_the_same_class_or_a_close_score() {
        let class = |c: &str| Prediction {
            class: Some(c.into()),
            score: None,
            confidence: None,
        };
        let score = |s: f64| Prediction {
            class: None,
            score: Some(s),
            confidence: None,
        };
        assert!(class("a").agrees_with(&class("a")));
        assert!(!class("a").agrees_with(&class("b")));
        assert!(score(100.0).agrees_with(&score(100.5)));
        assert!(!score(100.0).agrees_with(&score(102.0)));
        assert!(!class("a").agrees_with(&score(1.0)));
    }

    #[test]
    fn fallback_reasons_follow_the_policy() {
        let settings = |fallback: Fallback| SignalSettings {
            ppm: 0,
            mirror_ppm: 0,
            features: vec![],
            output: Some(output("probs", OutputKind::Probabilities)),
            fallback: Some(fallback),
            candidate: Some(1),
            baseline: Some(0),
        };
        let all = settings(Fallback {
            on: FallbackReason::ALL.to_vec(),
            confidence_below: Some(0.5),
        });
        let confident = Some(Prediction {
            class: Some("1".into()),
            score: None,
            confidence: Some(0.9),
        });
        let unsure = Some(Prediction {
            class: Some("1".into()),
            score: None,
            confidence: Some(0.3),
        });
        assert_eq!(all.fallback_for(&confident), None);
        assert_eq!(
            all.fallback_for(&unsure),
            Some(FallbackReason::LowConfidence)
        );
        assert_eq!(all.fallback_for(&None), Some(FallbackReason::InvalidOutput));
        assert!(all.judges_answers());
        let errors_only = settings(Fallback {
            on: vec![FallbackReason::ServerError],
            confidence_below: None,
        });
        assert_eq!(errors_only.fallback_for(&None), None);
        assert!(!errors_only.judges_answers());
        assert!(errors_only.falls_back_on(FallbackReason::ServerError));
    }

    #[test]
    fn pending_signals_are_taken_by_the_buckets_they_landed_in() {
        let pending = Pending::default();
        let checked = |epoch: u64, n: u64| pending.with(epoch, |s| s.inputs_checked += n);
        checked(10, 1);
        checked(11, 2);
        // A request that started in bucket 10 and ends after 11 opened.
        checked(10, 4);
        checked(12, 8);
        // The controller takes 10..=11: bucket 12 stays for the next tick.
        assert_eq!(pending.take(10, 11).inputs_checked, 7);
        assert_eq!(pending.take(12, 12).inputs_checked, 8);
        assert_eq!(pending.take(0, 100).inputs_checked, 0);
        // Buckets before `from` are dropped, not counted.
        checked(20, 1);
        checked(21, 2);
        assert_eq!(pending.take(21, 21).inputs_checked, 2);
        assert_eq!(pending.take(0, 100).inputs_checked, 0);
        // Memory stays bounded when nobody takes them.
        for epoch in 0..(PENDING_BUCKETS_MAX as u64 * 2) {
            checked(100 + epoch, 1);
        }
        let kept = pending.take(0, u64::MAX).inputs_checked;
        assert_eq!(kept, PENDING_BUCKETS_MAX as u64);
        checked(5, 1);
        pending.clear();
        assert_eq!(pending.take(0, u64::MAX).inputs_checked, 0);
    }
}
