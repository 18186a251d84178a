//! One trigger, evaluated tick by tick: what it measures on each request,
//! the bound the baseline implies, the sequential test, and the figures a
//! verdict carries.
//!
//! Each trigger becomes a question about a per-request event on the
//! candidate (see [`super::sequential`]):
//!
//! | rule                                   | event                 | `p0` (largest healthy chance)        |
//! |----------------------------------------|-----------------------|--------------------------------------|
//! | `error_rate above 5%`                  | failure               | 0.05                                 |
//! | `error_rate above +2pp`                | failure               | baseline upper bound + 0.02          |
//! | `error_rate above +30%`                | failure               | baseline upper bound × 1.3           |
//! | `latency_p95 above 250ms`              | latency > 250 ms      | 0.05                                 |
//! | `latency_p95 above +30%`               | latency > 1.3 × `B`   | 0.05, `B` an upper bound of the baseline p95 |
//!
//! `below` rules test the complementary event. Timeouts count as "slower
//! than any bound" for latency rules: a request that never answered was slow.
//! The baseline bounds use only ticks *before* the one being tested, so the
//! bound is fixed before the candidate's data it judges arrives.

use super::histogram::HistogramSnapshot;
use super::sequential::{self, StagedTest, BASELINE_Z};
use super::signals::{Moments, Signals, Sketch};
use super::window::Counts;
use crate::policy::{Metric, MetricKind, Threshold, Trigger};
use serde::{Deserialize, Serialize};

/// One version's finished requests over some span (a tick, a step).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub counts: Counts,
    pub latency_us: HistogramSnapshot,
    /// Model-aware figures (inputs, outputs, feedback), when gathered.
    #[serde(default, skip_serializing_if = "Signals::is_empty")]
    pub signals: Signals,
}

/// A Prometheus trigger's reading for one tick: the query's value for the
/// candidate and for the baseline, or why there is none.
pub type Reading = Result<(f64, f64), String>;

impl Sample {
    pub fn merge(&mut self, other: &Sample) {
        self.counts.add(&other.counts);
        self.latency_us.merge(&other.latency_us);
        self.signals.merge(&other.signals);
    }

    /// Requests the version is judged on: client errors and cancellations
    /// say nothing about it.
    pub fn judged(&self) -> u64 {
        self.counts
            .requests
            .saturating_sub(self.counts.client_errors + self.counts.cancelled)
    }

    /// Requests with a latency, plus timeouts (slower than any bound).
    pub fn timed(&self) -> u64 {
        self.latency_us.count() + self.counts.timeouts
    }

    /// Requests slower than `bound_us` (timeouts included).
    fn slower_than(&self, bound_us: u64) -> u64 {
        self.latency_us.count() - self.latency_us.count_at_most(bound_us) + self.counts.timeouts
    }
}

/// The metric's value over a sample: a rate (0..1) or a latency in ms.
/// (Request metrics only; see [`trigger_value`] for the rest.)
pub fn metric_value(metric: Metric, sample: &Sample) -> Option<f64> {
    let judged = sample.judged();
    match metric {
        Metric::ErrorRate => ratio(sample.counts.failures(), judged),
        Metric::TimeoutRate => ratio(sample.counts.timeouts, judged),
        Metric::LatencyP50 | Metric::LatencyP95 | Metric::LatencyP99 => sample
            .latency_us
            .quantile(quantile_of(metric))
            .map(|us| us as f64 / 1000.0),
        _ => None,
    }
}

/// A rate trigger's `(events, requests)` over a sample: what it counts and
/// among what.
pub fn rate_counts(trigger: &Trigger, sample: &Sample) -> (u64, u64) {
    let s = &sample.signals;
    match trigger.metric {
        Metric::TimeoutRate => (sample.counts.timeouts, sample.judged()),
        Metric::SchemaViolationRate => (s.schema_violations, s.inputs_checked),
        Metric::NullRate => {
            let feature = trigger.feature.as_deref().unwrap_or_default();
            let nulls = s.feature_nulls.get(feature).copied().unwrap_or(0);
            (nulls, s.inputs_checked)
        }
        Metric::AgreementRate => (s.agreed, s.paired),
        Metric::FallbackRate => (s.fallbacks, sample.judged()),
        Metric::Accuracy => (s.correct, s.labeled),
        _ => (sample.counts.failures(), sample.judged()),
    }
}

/// The per-request values a mean trigger averages.
fn moments_of<'a>(trigger: &Trigger, sample: &'a Sample) -> Option<&'a Moments> {
    match trigger.metric {
        Metric::ConfidenceMean => Some(&sample.signals.confidence),
        Metric::Kpi => sample.signals.kpis.get(trigger.kpi.as_deref()?),
        _ => None,
    }
}

/// The trigger's value over one sample (a distance needs two: `None`).
pub fn trigger_value(trigger: &Trigger, sample: &Sample) -> Option<f64> {
    match trigger.metric.kind() {
        MetricKind::Latency => metric_value(trigger.metric, sample),
        MetricKind::Rate => {
            let (events, requests) = rate_counts(trigger, sample);
            ratio(events, requests)
        }
        MetricKind::Mean => moments_of(trigger, sample)?.mean(),
        MetricKind::Distance | MetricKind::External => None,
    }
}

/// The sketches a distance trigger compares.
fn sketch_of<'a>(trigger: &Trigger, sample: &'a Sample) -> Option<&'a Sketch> {
    match trigger.metric {
        Metric::DriftPsi => sample.signals.features.get(trigger.feature.as_deref()?),
        Metric::PredictionShift => sample.signals.predictions.as_ref(),
        _ => None,
    }
}

fn ratio(part: u64, whole: u64) -> Option<f64> {
    (whole > 0).then(|| part as f64 / whole as f64)
}

/// The quantile a latency metric names.
pub fn quantile_of(metric: Metric) -> f64 {
    match metric {
        Metric::LatencyP50 => 0.5,
        Metric::LatencyP95 => 0.95,
        Metric::LatencyP99 => 0.99,
        _ => f64::NAN,
    }
}

/// Where a trigger stands, with the numbers (also a verdict's evidence).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TriggerStatus {
    /// Position in the policy's `triggers`.
    pub index: usize,
    /// The rule as written: `latency_p95 above +30% vs baseline`.
    pub rule: String,
    pub metric: Metric,
    pub unit: Unit,
    /// Values over the current step (the same window for both versions).
    pub candidate_value: Option<f64>,
    pub baseline_value: Option<f64>,
    /// The candidate value beyond which the rule is breached, now.
    pub limit: Option<f64>,
    pub candidate_requests: u64,
    pub baseline_requests: u64,
    /// Evidence against "healthy" (the sequential test's e-value) and the
    /// value at which the trigger acts (1/α).
    pub e_value: f64,
    pub e_value_needed: f64,
    pub state: TriggerState,
    /// Since when the evidence has held (for `for:`), in controller ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub breaching_since_ms: Option<u64>,
    /// Why a Prometheus trigger has no value now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unavailable: Option<String>,
}

/// What a trigger's values are in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    /// A rate, 0..1.
    Ratio,
    /// Milliseconds.
    Ms,
    /// A plain number (a mean, a PSI, a query's value).
    Number,
}

impl Unit {
    /// A value for people: rates in percent (`5.60%`), latencies in ms
    /// (`41.2 ms`), `-` when there is none.
    pub fn show(self, value: Option<f64>) -> String {
        match (value, self) {
            (None, _) => "-".into(),
            (Some(v), Unit::Ratio) => format!("{:.2}%", v * 100.0),
            (Some(v), Unit::Ms) => format!("{v:.1} ms"),
            (Some(v), Unit::Number) => format!("{v:.4}"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TriggerState {
    /// Fewer than `min_sample` requests: no verdict either way.
    WaitingForTraffic,
    Ok,
    /// The evidence is there; waiting out `for:`.
    Breaching,
    /// The trigger acted.
    Fired,
    /// Its source (Prometheus) gave no usable value: never taken as
    /// healthy, the stage is held.
    Unavailable,
}

/// A trigger's running state across ticks (serializable: it survives a
/// restart with the rollout).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TriggerEval {
    pub index: usize,
    pub trigger: Trigger,
    /// This trigger's share of the policy's false-action budget.
    pub alpha: f64,
    pub test: StagedTest,
    breaching_since_ms: Option<u64>,
    pub fired: bool,
    /// Whether the evidence held at the last tick (tests other than the
    /// staged one: means of KPIs, distances, Prometheus readings).
    #[serde(default)]
    holds: bool,
    /// `ln` of the evidence for those (the staged test has its own).
    #[serde(default)]
    log_e: Option<f64>,
    /// What `min_sample` is compared with for those: feedback items,
    /// sketched values, candidate requests.
    #[serde(default)]
    seen: u64,
    /// Ticks a distance was scored at: its p-value is corrected for them.
    #[serde(default)]
    looks: u64,
    /// A distance in a stage where the baseline serves nothing: not
    /// judged, and not holding the stage for its sample.
    #[serde(default)]
    without_baseline: bool,
    /// The last value computed (distance, KPI mean, query readings).
    #[serde(default)]
    last: Option<(f64, Option<f64>)>,
    /// Why the last Prometheus reading failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unavailable: Option<String>,
    /// The candidate's stored profile sketch of the feature, for a
    /// `reference: profile` distance. Given by the runtime at start and
    /// after a restart, never saved with the state.
    #[serde(skip)]
    profile: Option<Sketch>,
}

impl TriggerEval {
    /// `judged[k]`: whether the rollout's stage `k` sends the candidate
    /// requests (each such stage starts a test of its own).
    pub fn new(index: usize, trigger: Trigger, alpha: f64, judged: &[bool]) -> Self {
        Self {
            index,
            trigger,
            alpha,
            test: StagedTest::new(judged),
            breaching_since_ms: None,
            fired: false,
            holds: false,
            log_e: None,
            seen: 0,
            looks: 0,
            without_baseline: false,
            last: None,
            unavailable: None,
            profile: None,
        }
    }

    /// Gives a `reference: profile` distance its reference: the stored
    /// profile's sketch of the feature (ignored by other triggers).
    pub fn set_profile(&mut self, sketch: Option<Sketch>) {
        if self.trigger.against_profile() {
            self.profile = sketch;
        }
    }

    /// A `reference: profile` distance that has its profile.
    pub fn has_profile(&self) -> bool {
        self.profile.is_some()
    }

    /// Judged by the staged sequential test on per-request events (or
    /// per-request values in 0..1).
    fn staged(&self) -> bool {
        matches!(
            self.trigger.metric.kind(),
            MetricKind::Latency | MetricKind::Rate
        ) || self.trigger.metric == Metric::ConfidenceMean
    }

    /// The test rejects "healthy" now (minimum sample or not, acted on
    /// or not).
    pub fn has_evidence(&self) -> bool {
        if self.staged() {
            self.test.rejects(self.alpha)
        } else {
            self.holds
        }
    }

    /// The trigger has its own minimum sample (feedback items, sketched
    /// values): a stage cannot pass before it does.
    pub fn short_of_sample(&self) -> bool {
        match self.trigger.metric.kind() {
            MetricKind::Latency => false,
            MetricKind::Rate => {
                !matches!(
                    self.trigger.metric,
                    Metric::ErrorRate | Metric::TimeoutRate | Metric::FallbackRate
                ) && self.test.requests < self.trigger.min_sample
            }
            _ if self.staged() => self.test.requests < self.trigger.min_sample,
            MetricKind::Distance if self.without_baseline => false,
            _ => self.seen < self.trigger.min_sample,
        }
    }

    /// Arms the trigger again after its action was not taken (capped) or
    /// was undone by an operator (resume after a pause): if the evidence
    /// still holds it acts again.
    pub fn rearm(&mut self) {
        self.fired = false;
        self.breaching_since_ms = None;
    }

    /// The evidence is there and `for:` is running.
    pub fn breaching(&self) -> bool {
        !self.fired && self.breaching_since_ms.is_some()
    }

    fn threshold(&self) -> (bool, Threshold) {
        match (self.trigger.above, self.trigger.below) {
            (Some(t), _) => (true, t),
            (None, Some(t)) => (false, t),
            // `Policy::check` requires exactly one; treat a hand-built
            // trigger without either as "never healthy to act on".
            (None, None) => (true, Threshold::RelativePercent(f64::INFINITY)),
        }
    }

    /// Feeds one tick of candidate requests, judged against `reference`
    /// (the baseline up to, not including, this tick). Returns true when
    /// the trigger fires now: evidence held for `for:` and the minimum
    /// sample reached.
    pub fn observe(&mut self, now_ms: u64, candidate: &Sample, reference: &Sample) -> bool {
        self.observe_tick(
            now_ms,
            candidate,
            candidate,
            reference,
            (candidate, reference),
            None,
        )
    }

    /// One tick: `candidate` is the tick's requests, `total` the
    /// candidate's since the rollout started (what means are judged on),
    /// `reference` the baseline before this tick, `stage` both versions
    /// over the current stage, this tick included (what distances are
    /// judged on), `reading` a Prometheus trigger's values for this tick
    /// (`None`: not read now).
    pub fn observe_tick(
        &mut self,
        now_ms: u64,
        candidate: &Sample,
        total: &Sample,
        reference: &Sample,
        stage: (&Sample, &Sample),
        reading: Option<&Reading>,
    ) -> bool {
        if self.fired {
            return false;
        }
        match self.trigger.metric.kind() {
            _ if self.staged() => {
                if let Some((events, requests, p0)) = self.question(candidate, reference) {
                    self.test.observe_sum(events, requests, p0);
                }
            }
            MetricKind::Mean => self.judge_mean(total, reference),
            MetricKind::Distance => self.judge_stage_distance(stage),
            _ => {
                self.seen = total.judged();
                if let Some(reading) = reading {
                    self.judge_reading(reading);
                }
            }
        }
        let enough = self.enough_sample(reference);
        if enough && self.has_evidence() {
            let since = *self.breaching_since_ms.get_or_insert(now_ms);
            if now_ms.saturating_sub(since) >= self.trigger.for_period.as_ms() {
                self.fired = true;
                return true;
            }
        } else {
            self.breaching_since_ms = None;
        }
        false
    }

    /// No verdict before `min_sample` candidate requests and a baseline
    /// that can bound the rule.
    fn enough_sample(&self, reference: &Sample) -> bool {
        let seen = if self.staged() {
            self.test.requests
        } else {
            self.seen
        };
        seen >= self.trigger.min_sample && self.baseline_ready(reference)
    }

    /// A KPI's mean against a number or the baseline's mean (mSPRT).
    fn judge_mean(&mut self, total: &Sample, reference: &Sample) {
        let (above, threshold) = self.threshold();
        let empty = Moments::default();
        let candidate = moments_of(&self.trigger, total).unwrap_or(&empty);
        let baseline = moments_of(&self.trigger, reference).unwrap_or(&empty);
        self.seen = candidate.n;
        self.last = candidate.mean().map(|c| (c, baseline.mean()));
        let (Some(mean), Some(variance)) = (candidate.mean(), candidate.variance()) else {
            self.holds = false;
            return;
        };
        let standard_error_sq = variance / candidate.n as f64;
        let (estimate, error_sq, scale) = match threshold {
            Threshold::Value(v) => (mean - v, standard_error_sq, 0.1 * variance.sqrt()),
            Threshold::RelativePercent(r) => {
                let (Some(b_mean), Some(b_var)) = (baseline.mean(), baseline.variance()) else {
                    self.holds = false;
                    return;
                };
                // The limit is `b + |b|·r`: "-10%" is below the baseline
                // whatever its sign (a net revenue of -5 gives -5.5).
                let factor = 1.0 + b_mean.signum() * r / 100.0;
                (
                    mean - factor * b_mean,
                    standard_error_sq + factor * factor * b_var / baseline.n as f64,
                    (r / 100.0 * b_mean).abs(),
                )
            }
            _ => (f64::NAN, 0.0, 0.0),
        };
        // Floors keep a KPI that never varies (every value equal) finite.
        let floor = 1e-12 * (1.0 + estimate.abs());
        let tau2 = (scale * scale).max(floor);
        let log_e = sequential::mean_difference_log_e(estimate, error_sq.max(floor), tau2, above);
        self.log_e = Some(log_e);
        self.holds = log_e >= -self.alpha.ln();
    }

    /// A distance over the current stage: against the baseline over the
    /// same span, so inputs that change over time (a daily cycle) change
    /// both alike, whatever the shares were; or against the stored
    /// profile, there in every stage (100% included). A stage the baseline
    /// serves nothing of (100%, blue/green after the flip) has nothing to
    /// compare with: the trigger waits for the next one. A profile never
    /// given judges nothing and holds the stage: no data is never healthy.
    fn judge_stage_distance(&mut self, (candidate, baseline): (&Sample, &Sample)) {
        if self.trigger.against_profile() {
            self.without_baseline = false;
            // Taken for the call and put back (the reference is our own).
            match self.profile.take() {
                Some(profile) => {
                    self.judge_distance_against(candidate, &profile);
                    self.profile = Some(profile);
                }
                None => self.holds = false,
            }
            return;
        }
        self.without_baseline = baseline.judged() == 0;
        if self.without_baseline {
            self.holds = false;
        } else {
            self.judge_distance(candidate, baseline);
        }
    }

    /// A distance: PSI beyond the threshold *and* the matching test's
    /// p-value below α divided by the looks so far (Bonferroni: the test
    /// is fixed-horizon, and it is looked at every tick).
    fn judge_distance(&mut self, total: &Sample, reference: &Sample) {
        let Some(base) = sketch_of(&self.trigger, reference) else {
            // Nothing of this stage to compare: its sample starts at 0.
            self.seen = 0;
            self.holds = false;
            return;
        };
        self.judge_distance_against(total, base);
    }

    /// [`judge_distance`](Self::judge_distance) against a reference sketch
    /// (the baseline's, or the stored profile's).
    fn judge_distance_against(&mut self, total: &Sample, base: &Sketch) {
        let threshold = match self.threshold().1 {
            Threshold::Value(v) => v,
            _ => f64::INFINITY,
        };
        let Some(current) = sketch_of(&self.trigger, total) else {
            // Not the previous stage's count: this stage has no values yet.
            self.seen = 0;
            self.holds = false;
            return;
        };
        self.seen = current.count().min(base.count());
        let Some((psi, p_value)) = current.drift_from(base) else {
            self.holds = false;
            return;
        };
        self.looks += 1;
        self.last = Some((psi, None));
        let corrected = (p_value * self.looks as f64).max(f64::MIN_POSITIVE);
        self.log_e = Some(-corrected.ln());
        self.holds = psi > threshold && corrected <= self.alpha;
    }

    /// A Prometheus reading: beyond the threshold or not, as it is.
    fn judge_reading(&mut self, reading: &Reading) {
        let (above, threshold) = self.threshold();
        match reading {
            Err(why) => {
                self.unavailable = Some(why.clone());
                self.holds = false;
            }
            Ok((candidate, baseline)) => {
                self.unavailable = None;
                self.last = Some((*candidate, Some(*baseline)));
                let limit = match threshold {
                    Threshold::Value(v) => v,
                    Threshold::RelativePercent(r) => baseline + baseline.abs() * r / 100.0,
                    _ => f64::NAN,
                };
                self.holds = if above {
                    *candidate > limit
                } else {
                    *candidate < limit
                };
                self.log_e = Some(if self.holds {
                    f64::INFINITY
                } else {
                    f64::NEG_INFINITY
                });
            }
        }
    }

    /// The baseline bounds this rule: an absolute rule needs none; a
    /// relative one needs `min_sample` baseline requests and enough of them
    /// to bound its quantile (a p99 bound needs about a thousand).
    pub fn baseline_ready(&self, reference: &Sample) -> bool {
        let kind = self.trigger.metric.kind();
        if kind == MetricKind::External {
            return self.unavailable.is_none();
        }
        if kind == MetricKind::Distance && self.trigger.against_profile() {
            return self
                .profile
                .as_ref()
                .is_some_and(|s| s.count() >= self.trigger.min_sample);
        }
        if kind == MetricKind::Distance {
            // Scored against the baseline's own distribution.
            return sketch_of(&self.trigger, reference)
                .is_some_and(|s| s.count() >= self.trigger.min_sample);
        }
        if !self.is_relative() {
            return true;
        }
        let (above, threshold) = self.threshold();
        let (bounded, baseline_n) = match kind {
            MetricKind::Rate => (
                self.rate_limit(threshold, above, reference).is_some(),
                rate_counts(&self.trigger, reference).1,
            ),
            MetricKind::Latency => (
                self.latency_limit_us(threshold, above, reference).is_some(),
                reference.judged(),
            ),
            _ => {
                let n = moments_of(&self.trigger, reference).map_or(0, |m| m.n);
                (n >= 2, n)
            }
        };
        baseline_n >= self.trigger.min_sample && bounded
    }

    fn is_relative(&self) -> bool {
        self.threshold().1.is_relative()
    }

    /// `(events, requests, p0)` for this tick, or `None` when the baseline
    /// cannot bound anything yet.
    fn question(&self, candidate: &Sample, reference: &Sample) -> Option<(f64, u64, f64)> {
        let (above, threshold) = self.threshold();
        let metric = self.trigger.metric;
        match metric.kind() {
            MetricKind::Rate | MetricKind::Mean => {
                let (events, requests) = if metric.kind() == MetricKind::Rate {
                    let (events, requests) = rate_counts(&self.trigger, candidate);
                    (events.min(requests) as f64, requests)
                } else {
                    let m = moments_of(&self.trigger, candidate)?;
                    (m.sum, m.n)
                };
                let limit = self.rate_limit(threshold, above, reference)?;
                if above {
                    Some((events, requests, limit))
                } else {
                    // H0: rate ≥ limit ⇔ P(no event) ≤ 1 − limit.
                    Some((requests as f64 - events, requests, 1.0 - limit))
                }
            }
            MetricKind::Latency => {
                let q = quantile_of(metric);
                let bound_us = self.latency_limit_us(threshold, above, reference)?;
                let requests = candidate.timed();
                let slower = candidate.slower_than(bound_us);
                if above {
                    // H0: quantile ≤ bound ⇔ P(slower) ≤ 1 − q.
                    Some((slower as f64, requests, 1.0 - q))
                } else {
                    Some(((requests - slower) as f64, requests, q))
                }
            }
            MetricKind::Distance | MetricKind::External => None,
        }
    }

    /// The rate limit implied by the threshold, with the baseline's
    /// confidence bound on the conservative side.
    fn rate_limit(&self, threshold: Threshold, above: bool, reference: &Sample) -> Option<f64> {
        let baseline = || {
            if self.trigger.metric.kind() == MetricKind::Mean {
                // A mean in 0..1 (confidence): bounded like a rate, with
                // the normal bound of the mean.
                let m = moments_of(&self.trigger, reference)?;
                let (mean, variance) = (m.mean()?, m.variance()?);
                let half = BASELINE_Z * (variance / m.n as f64).sqrt();
                return Some(if above { mean + half } else { mean - half });
            }
            let (events, requests) = rate_counts(&self.trigger, reference);
            if above {
                sequential::rate_upper(events, requests, BASELINE_Z)
            } else {
                sequential::rate_lower(events, requests, BASELINE_Z)
            }
        };
        let limit = match threshold {
            Threshold::RatePercent(p) => p / 100.0,
            Threshold::Value(v) => v,
            Threshold::PercentagePoints(pp) => baseline()? + pp / 100.0,
            Threshold::RelativePercent(r) => baseline()? * (1.0 + r / 100.0),
            Threshold::LatencyMs(_) => return None,
        };
        Some(limit.clamp(0.0, 1.0))
    }

    /// The latency bound (µs) implied by the threshold.
    fn latency_limit_us(
        &self,
        threshold: Threshold,
        above: bool,
        reference: &Sample,
    ) -> Option<u64> {
        match threshold {
            Threshold::LatencyMs(ms) => Some((ms * 1000.0) as u64),
            Threshold::RelativePercent(r) => {
                // Over answered requests *and* timeouts (slower than any
                // answer), as the candidate's events are counted.
                let q = quantile_of(self.trigger.metric);
                let answered = reference.latency_us.count();
                let n = reference.timed();
                let at = if above {
                    sequential::quantile_upper_rank(q, n, BASELINE_Z)?
                } else {
                    sequential::quantile_lower_rank(q, n, BASELINE_Z)?
                };
                // A rank among the timeouts bounds nothing.
                let rank = at * n as f64;
                if rank > answered as f64 {
                    return None;
                }
                let baseline_us = reference.latency_us.quantile(rank / answered as f64)? as f64;
                Some((baseline_us * (1.0 + r / 100.0)) as u64)
            }
            Threshold::RatePercent(_) | Threshold::PercentagePoints(_) | Threshold::Value(_) => {
                None
            }
        }
    }

    /// The figures now: values over `step_candidate` / `step_baseline` (the
    /// current step), the limit from `reference`.
    pub fn status(
        &self,
        step_candidate: &Sample,
        step_baseline: &Sample,
        reference: &Sample,
    ) -> TriggerStatus {
        let metric = self.trigger.metric;
        let (above, threshold) = self.threshold();
        let limit = match metric.kind() {
            MetricKind::Rate => self.rate_limit(threshold, above, reference),
            MetricKind::Latency => self
                .latency_limit_us(threshold, above, reference)
                .map(|us| us as f64 / 1000.0),
            _ if self.staged() => self.rate_limit(threshold, above, reference),
            MetricKind::Distance => match threshold {
                Threshold::Value(v) => Some(v),
                _ => None,
            },
            _ => match (threshold, self.last) {
                (Threshold::Value(v), _) => Some(v),
                (Threshold::RelativePercent(r), Some((_, Some(b)))) => {
                    Some(b + b.abs() * r / 100.0)
                }
                _ => None,
            },
        };
        let state = if self.fired {
            TriggerState::Fired
        } else if self.unavailable.is_some() {
            TriggerState::Unavailable
        } else if self.breaching_since_ms.is_some() {
            TriggerState::Breaching
        } else if !self.enough_sample(reference) {
            TriggerState::WaitingForTraffic
        } else {
            TriggerState::Ok
        };
        // A step where the baseline served nothing (100%, blue/green after
        // the flip) is compared with the baseline's earlier traffic.
        let baseline_window = if step_baseline.judged() > 0 {
            step_baseline
        } else {
            reference
        };
        let (candidate_value, baseline_value) = if self.staged() {
            (
                trigger_value(&self.trigger, step_candidate),
                trigger_value(&self.trigger, baseline_window),
            )
        } else {
            self.last.map_or((None, None), |(c, b)| (Some(c), b))
        };
        let (candidate_requests, e_value) = if self.staged() {
            (self.test.requests, self.test.e_value())
        } else {
            (self.seen, self.log_e.map_or(0.0, f64::exp))
        };
        TriggerStatus {
            index: self.index,
            rule: rule_text(&self.trigger),
            metric,
            unit: match metric.kind() {
                MetricKind::Rate => Unit::Ratio,
                MetricKind::Latency => Unit::Ms,
                _ => Unit::Number,
            },
            candidate_value,
            baseline_value,
            limit,
            candidate_requests,
            baseline_requests: reference.judged(),
            e_value,
            e_value_needed: 1.0 / self.alpha,
            state,
            breaching_since_ms: self.breaching_since_ms,
            unavailable: self.unavailable.clone(),
        }
    }
}

/// Samples for the tests here and in the controller.
#[cfg(test)]
pub(crate) mod test_support {
    use super::Sample;

    /// `n` requests: `failures` of them 5xx, all answered in `latency_us`.
    pub fn sample(n: u64, failures: u64, latency_us: u64) -> Sample {
        let mut s = Sample::default();
        s.counts.requests = n;
        s.counts.server_errors = failures;
        s.counts.successes = n - failures;
        for _ in 0..n {
            s.latency_us.record(latency_us);
        }
        s
    }
}

/// The metric as written, with what it watches: `null_rate{feature=age}`,
/// `kpi{kpi=conversion}`, `prometheus` (the query is long; see the policy).
pub fn metric_label(trigger: &Trigger) -> String {
    let name = trigger.metric.name();
    match (&trigger.feature, &trigger.kpi) {
        (Some(feature), _) => format!("{name}{{feature={feature}}}"),
        (None, Some(kpi)) => format!("{name}{{kpi={kpi}}}"),
        _ => name.to_string(),
    }
}

/// `latency_p95 above +30% vs baseline for 5m`.
pub fn rule_text(trigger: &Trigger) -> String {
    let (word, threshold) = match (trigger.above, trigger.below) {
        (Some(t), _) => ("above", t),
        (None, Some(t)) => ("below", t),
        (None, None) => return metric_label(trigger),
    };
    let mut text = format!("{} {word} {threshold}", metric_label(trigger));
    if threshold.is_relative() {
        text.push_str(" vs baseline");
    } else if trigger.against_profile() {
        text.push_str(" vs profile");
    }
    if trigger.for_period.as_ms() > 0 {
        text.push_str(&format!(" for {}", trigger.for_period));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Action, Period, Severity};

    fn trigger(metric: Metric, above: &str) -> Trigger {
        Trigger {
            metric,
            feature: None,
            kpi: None,
            query: None,
            relative_to: None,
            reference: None,
            above: Some(above.parse().unwrap()),
            below: None,
            for_period: Period::from_ms(0),
            min_sample: 100,
            severity: Severity::Critical,
            action: Action::Rollback,
        }
    }

    use super::test_support::sample;

    impl TriggerEval {
        fn new_single(index: usize, trigger: Trigger, alpha: f64) -> Self {
            Self::new(index, trigger, alpha, &[true])
        }
    }

    /// Ticks of 50 candidate requests until the trigger fires; the tick
    /// count, or None within `ticks`.
    fn ticks_to_fire(
        eval: &mut TriggerEval,
        ticks: u64,
        candidate: impl Fn(u64) -> Sample,
        reference: &Sample,
    ) -> Option<u64> {
        (0..ticks).find(|&t| eval.observe(t * 1000, &candidate(t), reference))
    }

    #[test]
    fn absolute_error_ceiling_fires_on_a_broken_candidate() {
        let mut eval = TriggerEval::new_single(0, trigger(Metric::ErrorRate, "5%"), 0.01);
        let reference = Sample::default();
        let fired = ticks_to_fire(&mut eval, 60, |_| sample(50, 10, 1000), &reference);
        // 20% errors against a 5% ceiling: after the 100-request minimum.
        assert_eq!(fired, Some(1));
        let status = eval.status(&sample(100, 20, 1000), &Sample::default(), &reference);
        assert_eq!(status.state, TriggerState::Fired);
        assert_eq!(status.limit, Some(0.05));
        assert_eq!(status.candidate_value, Some(0.2));
    }

    #[test]
    fn relative_error_rule_needs_a_baseline() {
        let mut eval = TriggerEval::new_single(0, trigger(Metric::ErrorRate, "+2pp"), 0.01);
        let fired = ticks_to_fire(&mut eval, 30, |_| sample(50, 50, 1000), &Sample::default());
        assert_eq!(fired, None, "no baseline: no verdict, however bad");
        assert_eq!(eval.test.requests, 0);
    }

    #[test]
    fn relative_error_rule_fires_on_plus_five_points() {
        let mut eval = TriggerEval::new_single(0, trigger(Metric::ErrorRate, "+1pp"), 0.01);
        let reference = sample(20_000, 100, 1000); // 0.5%
                                                   // 5.5% errors: 11 per 200 requests, spread evenly.
        let fired = ticks_to_fire(
            &mut eval,
            60,
            |t| sample(50, [3, 3, 3, 2][(t % 4) as usize], 1000),
            &reference,
        );
        assert!(fired.is_some_and(|t| t <= 10), "fired at {fired:?}");
    }

    #[test]
    fn healthy_candidate_gathers_no_evidence() {
        let mut eval = TriggerEval::new_single(0, trigger(Metric::ErrorRate, "+1pp"), 0.01);
        let reference = sample(20_000, 100, 1000);
        let fired = ticks_to_fire(
            &mut eval,
            300,
            |t| sample(50, u64::from(t % 4 == 0), 1000),
            &reference,
        );
        assert_eq!(fired, None);
        assert!(eval.test.e_value() < 1.0);
    }

    #[test]
    fn relative_latency_rule_fires_on_a_slower_candidate() {
        let mut eval = TriggerEval::new_single(0, trigger(Metric::LatencyP95, "+30%"), 0.01);
        let mut reference = Sample::default();
        for i in 0..10_000u64 {
            reference.merge(&sample(1, 0, 10_000 + i % 100 * 100)); // 10..20 ms
        }
        let slow = |_| sample(50, 0, 40_000);
        let fired = ticks_to_fire(&mut eval, 60, slow, &reference);
        assert_eq!(fired, Some(1));
        let status = eval.status(&slow(0), &reference, &reference);
        let limit = status.limit.unwrap();
        assert!((24.0..27.0).contains(&limit), "limit {limit} ms");
        assert_eq!(status.unit, Unit::Ms);
    }

    #[test]
    fn timeouts_count_as_slow_for_latency_rules() {
        let mut eval = TriggerEval::new_single(0, trigger(Metric::LatencyP99, "250ms"), 0.01);
        let timing_out = |_| {
            let mut s = sample(40, 0, 1000);
            s.counts.requests += 10;
            s.counts.timeouts = 10;
            s
        };
        let fired = ticks_to_fire(&mut eval, 60, timing_out, &Sample::default());
        assert!(fired.is_some_and(|t| t <= 3), "fired at {fired:?}");
    }

    #[test]
    fn shared_timeouts_do_not_make_a_healthy_candidate_slow() {
        // Both versions: latencies spread 5..15 ms, and 3% timeouts.
        // Requests `from..from + n` of one endless, identical stream.
        let with_timeouts = |from: u64, n: u64| {
            let mut s = Sample::default();
            for i in from..from + n {
                if i % 100 < 3 {
                    s.counts.timeouts += 1;
                } else {
                    s.counts.successes += 1;
                    s.latency_us.record(5_000 + (i * 7919 % 100) * 100);
                }
                s.counts.requests += 1;
            }
            s
        };
        let mut eval = TriggerEval::new_single(0, trigger(Metric::LatencyP95, "+10%"), 0.01);
        let reference = with_timeouts(0, 20_000);
        let fired = ticks_to_fire(&mut eval, 600, |t| with_timeouts(t * 50, 50), &reference);
        assert_eq!(fired, None);
        // Half the baseline timing out: its p95 is a timeout, which bounds nothing.
        let mut reference = with_timeouts(0, 1_000);
        reference.counts.timeouts += 1_000;
        reference.counts.requests += 1_000;
        let eval = TriggerEval::new_single(0, trigger(Metric::LatencyP95, "+10%"), 0.01);
        assert!(!eval.baseline_ready(&reference));
    }

    #[test]
    fn for_period_holds_the_verdict_back() {
        let mut rule = trigger(Metric::ErrorRate, "5%");
        rule.for_period = Period::from_ms(5_000);
        let mut eval = TriggerEval::new_single(0, rule, 0.01);
        let fired = ticks_to_fire(&mut eval, 60, |_| sample(50, 25, 1000), &Sample::default());
        // Evidence from tick 1 (100 requests), held 5 s more.
        assert_eq!(fired, Some(6));
    }

    #[test]
    fn below_rules_test_the_other_side() {
        let mut rule = trigger(Metric::ErrorRate, "5%");
        rule.above = None;
        rule.below = Some("50%".parse().unwrap());
        let mut eval = TriggerEval::new_single(0, rule, 0.01);
        // Half the requests failing is not "below 50%"; 2% is.
        assert_eq!(
            ticks_to_fire(&mut eval, 10, |_| sample(50, 25, 1000), &Sample::default()),
            None
        );
        let mut eval = TriggerEval::new_single(0, eval.trigger.clone(), 0.01);
        assert!(
            ticks_to_fire(&mut eval, 10, |_| sample(50, 1, 1000), &Sample::default()).is_some()
        );
    }

    fn signal_trigger(metric: Metric, side: &str, threshold: &str) -> Trigger {
        let mut t = trigger(metric, threshold);
        if side == "below" {
            t.below = t.above.take();
        }
        match metric.needs() {
            Some("feature") => t.feature = Some("age".into()),
            Some("kpi") => t.kpi = Some("conversion".into()),
            Some("query") => t.query = Some("up".into()),
            _ => {}
        }
        t
    }

    /// `n` checked inputs, `violations` of them breaking the schema and
    /// `nulls` with a null in `age`.
    fn checked(n: u64, violations: u64, nulls: u64) -> Sample {
        let mut s = sample(n, 0, 1000);
        s.signals.inputs_checked = n;
        s.signals.schema_violations = violations;
        s.signals.feature_nulls.insert("age".into(), nulls);
        s
    }

    #[test]
    fn data_quality_rates_fire_on_a_broken_schema_and_nulls() {
        let reference = checked(10_000, 10, 20);
        let mut eval = TriggerEval::new_single(
            0,
            signal_trigger(Metric::SchemaViolationRate, "above", "+1pp"),
            0.01,
        );
        let fired = ticks_to_fire(&mut eval, 60, |_| checked(50, 10, 0), &reference);
        assert!(fired.is_some_and(|t| t <= 3), "fired at {fired:?}");
        let mut eval =
            TriggerEval::new_single(0, signal_trigger(Metric::NullRate, "above", "1%"), 0.01);
        let fired = ticks_to_fire(&mut eval, 60, |_| checked(50, 0, 5), &reference);
        assert!(fired.is_some_and(|t| t <= 3), "fired at {fired:?}");
        // Healthy inputs: no verdict however long.
        let mut eval =
            TriggerEval::new_single(0, signal_trigger(Metric::NullRate, "above", "+1pp"), 0.01);
        assert_eq!(
            ticks_to_fire(
                &mut eval,
                300,
                |t| checked(50, 0, u64::from(t % 10 == 0)),
                &reference
            ),
            None
        );
        // Nothing checked: waiting, never healthy.
        let eval =
            TriggerEval::new_single(0, signal_trigger(Metric::NullRate, "above", "1%"), 0.01);
        assert!(eval.short_of_sample());
    }

    #[test]
    fn confidence_mean_below_a_floor_fires_and_a_confident_candidate_does_not() {
        let confident = |mean: f64| {
            move |t: u64| {
                let mut s = sample(50, 0, 1000);
                for i in 0..50 {
                    // Values spread ±0.1 around the mean.
                    s.signals
                        .confidence
                        .add(mean - 0.1 + 0.2 * ((t * 50 + i) % 11) as f64 / 10.0);
                }
                s
            }
        };
        let rule = signal_trigger(Metric::ConfidenceMean, "below", "0.6");
        let mut eval = TriggerEval::new_single(0, rule.clone(), 0.01);
        let fired = ticks_to_fire(&mut eval, 60, confident(0.4), &Sample::default());
        assert!(fired.is_some_and(|t| t <= 5), "fired at {fired:?}");
        let mut eval = TriggerEval::new_single(0, rule, 0.01);
        assert_eq!(
            ticks_to_fire(&mut eval, 300, confident(0.8), &Sample::default()),
            None
        );
        let status = eval.status(&confident(0.8)(0), &Sample::default(), &Sample::default());
        assert!((status.candidate_value.unwrap() - 0.8).abs() < 0.02);
        assert_eq!(status.limit, Some(0.6));
    }

    /// Conversions (0/1) at `rate`, `n` of them per tick, seeded.
    fn conversions(rng: &mut fastrand::Rng, n: u64, rate: f64) -> Sample {
        let mut s = Sample::default();
        for _ in 0..n {
            let converted = f64::from(u8::from(rng.f64() < rate));
            s.signals
                .kpis
                .entry("conversion".into())
                .or_default()
                .add(converted);
        }
        s
    }

    /// Runs a KPI trigger over `ticks` ticks of 200 feedback items per
    /// version; the tick it fired at.
    fn kpi_run(seed: u64, rule: &Trigger, candidate_rate: f64, ticks: u64) -> Option<u64> {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut eval = TriggerEval::new_single(0, rule.clone(), 0.01);
        let (mut total, mut reference) = (Sample::default(), Sample::default());
        for t in 0..ticks {
            let c = conversions(&mut rng, 200, candidate_rate);
            total.merge(&c);
            if eval.observe_tick(t * 1000, &c, &total, &reference, (&c, &reference), None) {
                return Some(t);
            }
            reference.merge(&conversions(&mut rng, 200, 0.10));
        }
        None
    }

    /// A KPI whose mean is negative (net revenue after refunds): "-10%"
    /// means lower than the baseline, not higher.
    #[test]
    fn relative_kpi_limits_hold_for_negative_means() {
        let run = |seed: u64, candidate_mean: f64| {
            let mut rng = fastrand::Rng::with_seed(seed);
            let rule = signal_trigger(Metric::Kpi, "below", "-10%");
            let mut eval = TriggerEval::new_single(0, rule, 0.01);
            let (mut total, mut reference) = (Sample::default(), Sample::default());
            let draw = |rng: &mut fastrand::Rng, mean: f64| {
                let mut s = Sample::default();
                let kpi = s.signals.kpis.entry("conversion".into()).or_default();
                for _ in 0..200 {
                    kpi.add(normal(rng, mean));
                }
                s
            };
            for t in 0..300 {
                let c = draw(&mut rng, candidate_mean);
                total.merge(&c);
                if eval.observe_tick(t * 1000, &c, &total, &reference, (&c, &reference), None) {
                    return (Some(t), eval);
                }
                reference.merge(&draw(&mut rng, -5.0));
            }
            (None, eval)
        };
        for seed in 0..10 {
            assert_eq!(
                run(seed, -5.0).0,
                None,
                "the same as the baseline, seed {seed}"
            );
        }
        let (fired, eval) = run(1, -6.0);
        assert!(fired.is_some_and(|t| t < 30), "fired at {fired:?}");
        let status = eval.status(&Sample::default(), &Sample::default(), &Sample::default());
        let baseline = status.baseline_value.unwrap();
        let limit = status.limit.unwrap();
        assert!(limit < baseline, "{status:?}");
        assert!((limit - 1.1 * baseline).abs() < 1e-9, "{status:?}");
    }

    #[test]
    fn kpi_drop_versus_baseline_is_found_with_significance() {
        let rule = signal_trigger(Metric::Kpi, "below", "-2%");
        // 10% → 7% conversion: a 30% drop, found within minutes of data.
        let fired = kpi_run(1, &rule, 0.07, 600);
        assert!(fired.is_some_and(|t| t < 120), "fired at {fired:?}");
        // The same rate: false alarms stay within α over 40 seeded runs
        // of 10 minutes each, checked every tick.
        let false_alarms = (0..40)
            .filter(|&seed| kpi_run(seed, &rule, 0.10, 600).is_some())
            .count();
        assert!(false_alarms <= 2, "{false_alarms} false alarms in 40 runs");
    }

    fn normal(rng: &mut fastrand::Rng, mean: f64) -> f64 {
        // Box–Muller.
        let (u, v) = (rng.f64().max(1e-12), rng.f64());
        mean + (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }

    fn drift_run(seed: u64, shift: f64, ticks: u64) -> (Option<u64>, TriggerEval) {
        let mut rng = fastrand::Rng::with_seed(seed);
        let rule = signal_trigger(Metric::DriftPsi, "above", "0.1");
        let mut eval = TriggerEval::new_single(0, rule, 0.01);
        let (mut total, mut reference) = (Sample::default(), Sample::default());
        let mut stage_baseline = Sample::default();
        for t in 0..ticks {
            let mut c = sample(100, 0, 1000);
            let mut b = sample(100, 0, 1000);
            for _ in 0..100 {
                c.signals
                    .sketch_number("age", 40.0 + 10.0 * normal(&mut rng, shift));
                b.signals
                    .sketch_number("age", 40.0 + 10.0 * normal(&mut rng, 0.0));
            }
            // One stage: both windows include this tick.
            total.merge(&c);
            stage_baseline.merge(&b);
            let stage = (&total, &stage_baseline);
            if eval.observe_tick(t * 1000, &c, &total, &reference, stage, None) {
                return (Some(t), eval);
            }
            reference.merge(&b);
        }
        (None, eval)
    }

    /// A new stage whose candidate has no values of the feature yet is
    /// short of its sample, whatever the previous stage had.
    #[test]
    fn a_distance_sample_starts_again_with_each_stage() {
        let mut rule = signal_trigger(Metric::DriftPsi, "above", "0.1");
        rule.min_sample = 50;
        let mut eval = TriggerEval::new_single(0, rule, 0.01);
        let with_values = || {
            let mut s = sample(100, 0, 1000);
            for i in 0..100 {
                s.signals.sketch_number("age", 30.0 + f64::from(i % 20));
            }
            s
        };
        let (c, b) = (with_values(), with_values());
        eval.observe_tick(1000, &c, &c, &b, (&c, &b), None);
        assert!(!eval.short_of_sample());
        // The next stage: requests, but no value of the feature yet.
        let empty = sample(10, 0, 1000);
        eval.observe_tick(2000, &empty, &c, &b, (&empty, &b), None);
        assert!(eval.short_of_sample());
    }

    #[test]
    fn drift_psi_fires_on_a_shifted_feature_and_not_on_the_same_one() {
        let (fired, eval) = drift_run(7, 0.5, 120);
        assert!(fired.is_some_and(|t| t < 60), "fired at {fired:?}");
        let status = eval.status(&Sample::default(), &Sample::default(), &Sample::default());
        assert!(status.candidate_value.unwrap() > 0.1, "{status:?}");
        // No shift: scored at every tick, corrected for it, never fires.
        for seed in 0..5 {
            assert_eq!(drift_run(seed, 0.0, 120).0, None, "seed {seed}");
        }
    }

    #[test]
    fn prometheus_readings_fire_past_the_limit_and_errors_are_never_healthy() {
        let mut rule = signal_trigger(Metric::Prometheus, "above", "+20%");
        rule.min_sample = 1;
        let mut eval = TriggerEval::new_single(0, rule, 0.01);
        let traffic = sample(50, 0, 1000);
        let none = Sample::default();
        let ok: Reading = Ok((1.1, 1.0));
        assert!(!eval.observe_tick(0, &traffic, &traffic, &none, (&traffic, &none), Some(&ok)));
        let down: Reading = Err("unreachable: connection refused".into());
        assert!(!eval.observe_tick(
            1000,
            &traffic,
            &traffic,
            &none,
            (&traffic, &none),
            Some(&down)
        ));
        assert!(
            !eval.baseline_ready(&Sample::default()),
            "an error holds the stage"
        );
        let status = eval.status(&traffic, &traffic, &Sample::default());
        assert_eq!(status.state, TriggerState::Unavailable);
        assert!(status.unavailable.unwrap().contains("refused"));
        let bad: Reading = Ok((1.5, 1.0));
        assert!(eval.observe_tick(
            2000,
            &traffic,
            &traffic,
            &none,
            (&traffic, &none),
            Some(&bad)
        ));
        let status = eval.status(&traffic, &traffic, &Sample::default());
        assert_eq!(
            (status.candidate_value, status.baseline_value),
            (Some(1.5), Some(1.0))
        );
        assert_eq!(status.limit, Some(1.2));
    }

    #[test]
    fn rules_read_as_written() {
        let mut rule = trigger(Metric::LatencyP95, "+30%");
        rule.for_period = Period::from_ms(300_000);
        assert_eq!(
            rule_text(&rule),
            "latency_p95 above +30% vs baseline for 5m"
        );
        assert_eq!(
            rule_text(&trigger(Metric::ErrorRate, "5%")),
            "error_rate above 5%"
        );
    }
}
