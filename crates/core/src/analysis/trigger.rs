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
use super::window::Counts;
use crate::policy::{Metric, MetricKind, Threshold, Trigger};
use serde::{Deserialize, Serialize};

/// One version's finished requests over some span (a tick, a step).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub counts: Counts,
    pub latency_us: HistogramSnapshot,
}

impl Sample {
    pub fn merge(&mut self, other: &Sample) {
        self.counts.add(&other.counts);
        self.latency_us.merge(&other.latency_us);
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
pub fn metric_value(metric: Metric, sample: &Sample) -> Option<f64> {
    let judged = sample.judged();
    match metric {
        Metric::ErrorRate => ratio(sample.counts.failures(), judged),
        Metric::TimeoutRate => ratio(sample.counts.timeouts, judged),
        latency => sample
            .latency_us
            .quantile(quantile_of(latency))
            .map(|us| us as f64 / 1000.0),
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
        Metric::ErrorRate | Metric::TimeoutRate => f64::NAN,
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
}

/// What a trigger's values are in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    /// A rate, 0..1.
    Ratio,
    /// Milliseconds.
    Ms,
}

impl Unit {
    /// A value for people: rates in percent (`5.60%`), latencies in ms
    /// (`41.2 ms`), `-` when there is none.
    pub fn show(self, value: Option<f64>) -> String {
        match (value, self) {
            (None, _) => "-".into(),
            (Some(v), Unit::Ratio) => format!("{:.2}%", v * 100.0),
            (Some(v), Unit::Ms) => format!("{v:.1} ms"),
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
        }
    }

    /// The test rejects "healthy" now (minimum sample or not, acted on
    /// or not).
    pub fn has_evidence(&self) -> bool {
        self.test.rejects(self.alpha)
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
        if self.fired {
            return false;
        }
        if let Some((events, requests, p0)) = self.question(candidate, reference) {
            self.test.observe(events, requests, p0);
        }
        let enough = self.enough_sample(reference);
        if enough && self.test.rejects(self.alpha) {
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
        self.test.requests >= self.trigger.min_sample && self.baseline_ready(reference)
    }

    /// The baseline bounds this rule: an absolute rule needs none; a
    /// relative one needs `min_sample` baseline requests and enough of them
    /// to bound its quantile (a p99 bound needs about a thousand).
    pub fn baseline_ready(&self, reference: &Sample) -> bool {
        if !self.is_relative() {
            return true;
        }
        let (above, threshold) = self.threshold();
        let bounded = match self.trigger.metric.kind() {
            MetricKind::Rate => self.rate_limit(threshold, above, reference).is_some(),
            MetricKind::Latency => self.latency_limit_us(threshold, above, reference).is_some(),
        };
        reference.judged() >= self.trigger.min_sample && bounded
    }

    fn is_relative(&self) -> bool {
        self.threshold().1.is_relative()
    }

    /// `(events, requests, p0)` for this tick, or `None` when the baseline
    /// cannot bound anything yet.
    fn question(&self, candidate: &Sample, reference: &Sample) -> Option<(u64, u64, f64)> {
        let (above, threshold) = self.threshold();
        let metric = self.trigger.metric;
        match metric.kind() {
            MetricKind::Rate => {
                let events = match metric {
                    Metric::TimeoutRate => candidate.counts.timeouts,
                    _ => candidate.counts.failures(),
                };
                let requests = candidate.judged();
                let limit = self.rate_limit(threshold, above, reference)?;
                if above {
                    Some((events, requests, limit))
                } else {
                    // H0: rate ≥ limit ⇔ P(no event) ≤ 1 − limit.
                    Some((requests - events.min(requests), requests, 1.0 - limit))
                }
            }
            MetricKind::Latency => {
                let q = quantile_of(metric);
                let bound_us = self.latency_limit_us(threshold, above, reference)?;
                let requests = candidate.timed();
                let slower = candidate.slower_than(bound_us);
                if above {
                    // H0: quantile ≤ bound ⇔ P(slower) ≤ 1 − q.
                    Some((slower, requests, 1.0 - q))
                } else {
                    Some((requests - slower, requests, q))
                }
            }
        }
    }

    /// The rate limit implied by the threshold, with the baseline's
    /// confidence bound on the conservative side.
    fn rate_limit(&self, threshold: Threshold, above: bool, reference: &Sample) -> Option<f64> {
        let baseline = || {
            let events = match self.trigger.metric {
                Metric::TimeoutRate => reference.counts.timeouts,
                _ => reference.counts.failures(),
            };
            if above {
                sequential::rate_upper(events, reference.judged(), BASELINE_Z)
            } else {
                sequential::rate_lower(events, reference.judged(), BASELINE_Z)
            }
        };
        let limit = match threshold {
            Threshold::RatePercent(p) => p / 100.0,
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
            Threshold::RatePercent(_) | Threshold::PercentagePoints(_) => None,
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
        };
        let state = if self.fired {
            TriggerState::Fired
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
        TriggerStatus {
            index: self.index,
            rule: rule_text(&self.trigger),
            metric,
            unit: match metric.kind() {
                MetricKind::Rate => Unit::Ratio,
                MetricKind::Latency => Unit::Ms,
            },
            candidate_value: metric_value(metric, step_candidate),
            baseline_value: metric_value(metric, baseline_window),
            limit,
            candidate_requests: self.test.requests,
            baseline_requests: reference.judged(),
            e_value: self.test.e_value(),
            e_value_needed: 1.0 / self.alpha,
            state,
            breaching_since_ms: self.breaching_since_ms,
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

/// `latency_p95 above +30% vs baseline for 5m`.
pub fn rule_text(trigger: &Trigger) -> String {
    let (word, threshold) = match (trigger.above, trigger.below) {
        (Some(t), _) => ("above", t),
        (None, Some(t)) => ("below", t),
        (None, None) => return trigger.metric.name().to_string(),
    };
    let mut text = format!("{} {word} {threshold}", trigger.metric.name());
    if threshold.is_relative() {
        text.push_str(" vs baseline");
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
            relative_to: None,
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
