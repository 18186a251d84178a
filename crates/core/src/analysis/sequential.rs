//! An always-valid sequential test, checked as often as the caller likes.
//!
//! Every trigger reduces to one question about a per-request event `E` (a
//! failure, a timeout, a latency above a bound): is `P(E)` on the candidate
//! above `p0`? `H0: p ≤ p0` is "healthy"; rejecting it is the verdict.
//!
//! For each tilt `θ > 0` the product over requests of
//! `exp(θ·x − ln(1 − p0 + p0·e^θ))` (x = 1 when the event happened) is a
//! non-negative supermartingale under every `p ≤ p0`, because
//! `E[e^{θx}] = 1 − p + p·e^θ` grows with `p`. An equal-weight mixture over
//! a grid of tilts is one too, so by Ville's inequality the chance that it
//! *ever* reaches `1/α` under `H0` is at most `α`, however often it is
//! looked at. That is what lets Backstop check every second without
//! inflating false rollbacks (a mixture SPRT, as in Lindon et al.,
//! arXiv:2205.14762, with a discrete mixture in place of a conjugate prior so
//! that `p0` may change from one observation to the next: the baseline it is
//! derived from keeps moving).
//!
//! Counts arrive per tick (`x` events in `n` requests, all under the same
//! `p0`): the product over those `n` requests collapses to one update.

use serde::{Deserialize, Serialize};

/// Tilts on the log-odds scale: `θ = 1` tests a candidate whose odds of the
/// event are e (2.7×) those allowed. Wide enough for a barely-worse and a
/// completely broken candidate; 8 points cost `ln 8 ≈ 2.1` nats of evidence.
const TILTS: [f64; 8] = [0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0];

/// Smallest `p0` used: an "above 0%" rule (or a baseline with no events)
/// still needs a few events before it acts, not a single one.
const P0_MIN: f64 = 1e-4;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SequentialTest {
    /// `ln` of each tilt's running product.
    log_products: [f64; TILTS.len()],
    /// Events and requests observed so far (for reports).
    pub events: u64,
    pub requests: u64,
}

impl Default for SequentialTest {
    fn default() -> Self {
        Self {
            log_products: [0.0; TILTS.len()],
            events: 0,
            requests: 0,
        }
    }
}

impl SequentialTest {
    /// Adds `events` out of `requests`, each of which had at most `p0`
    /// chance of the event under `H0`. A `p0` of 1 or more (nothing could
    /// count as evidence) or an empty tick changes nothing.
    pub fn observe(&mut self, events: u64, requests: u64, p0: f64) {
        self.observe_sum(events as f64, requests, p0);
    }

    /// As [`observe`](Self::observe) for values in `[0, 1]` rather than
    /// 0/1 events (`sum` of them over `requests`): `H0` is "their mean is at
    /// most `p0`". Still a supermartingale: `e^{θx}` is convex, so for `x`
    /// in `[0, 1]` with mean `μ`, `E[e^{θx}] ≤ 1 − μ + μ·e^θ` (Hoeffding).
    pub fn observe_sum(&mut self, sum: f64, requests: u64, p0: f64) {
        let sum = sum.clamp(0.0, requests as f64);
        if requests == 0 || p0.is_nan() || p0 >= 1.0 || sum.is_nan() {
            return;
        }
        let events = sum.round() as u64;
        let p0 = p0.max(P0_MIN);
        let (x, n) = (sum, requests as f64);
        for (log_product, theta) in self.log_products.iter_mut().zip(TILTS) {
            // ln(1 − p0 + p0·e^θ), accurate for small p0.
            let normaliser = (p0 * theta.exp_m1()).ln_1p();
            *log_product += theta * x - n * normaliser;
        }
        self.events += events;
        self.requests += requests;
    }

    /// `ln` of the mixture: the evidence against `H0`, in nats.
    pub fn log_e_value(&self) -> f64 {
        let max = self
            .log_products
            .iter()
            .copied()
            .fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = self.log_products.iter().map(|l| (l - max).exp()).sum();
        max + (sum / TILTS.len() as f64).ln()
    }

    /// The e-value: `H0` is rejected at level `α` once this reaches `1/α`.
    pub fn e_value(&self) -> f64 {
        self.log_e_value().exp()
    }

    pub fn rejects(&self, alpha: f64) -> bool {
        self.log_e_value() >= -alpha.ln()
    }
}

/// `ln` of the mixture sequential probability ratio (mSPRT, Johari et
/// al., "Always valid inference", 2017) for a mean difference estimated as
/// `estimate` with variance `variance` (its standard error squared), under
/// a normal mixture of effects with variance `tau2`:
/// `Λ = sqrt(V / (V + τ²)) · exp(τ²·d² / (2V·(V + τ²)))`. Checked as often
/// as the caller likes, `Λ ≥ 1/α` wrongly rejects "no difference" with
/// chance at most α (asymptotically: the estimate must be near normal,
/// which a KPI mean over the minimum sample is). One-sided: an estimate on
/// the healthy side is no evidence at all.
pub fn mean_difference_log_e(estimate: f64, variance: f64, tau2: f64, above: bool) -> f64 {
    let toward = if above {
        estimate > 0.0
    } else {
        estimate < 0.0
    };
    let positive = |x: f64| x > 0.0;
    if !toward || !estimate.is_finite() || !positive(variance) || !positive(tau2) {
        return f64::NEG_INFINITY;
    }
    let sum = variance + tau2;
    0.5 * (variance / sum).ln() + tau2 * estimate * estimate / (2.0 * variance * sum)
}

/// One test per rollout stage, averaged with fixed weights.
///
/// A test started at the beginning of stage `k` is 1 before it starts and a
/// test supermartingale after, so a fixed-weight average of all of them is
/// one too, and Ville's bound still holds. What it buys: a regression that
/// begins late (at 50%, under load) is judged by a test that has not spent
/// the earlier stages drifting down on healthy data. The first stage gets
/// half the weight (most regressions show from the first request; it costs
/// `ln 2` nats there), the later stages share the other half.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StagedTest {
    weights: Vec<f64>,
    /// The test of each stage started so far, by stage index.
    started: Vec<SequentialTest>,
    /// Events and requests since the first stage (for reports).
    pub events: u64,
    pub requests: u64,
}

impl StagedTest {
    /// `judged[k]`: whether stage `k` sends the candidate requests to judge
    /// (a blue/green warm-up does not; its weight goes to the others).
    pub fn new(judged: &[bool]) -> Self {
        let judging: Vec<usize> = (0..judged.len()).filter(|&k| judged[k]).collect();
        let mut weights = vec![0.0; judged.len().max(1)];
        match judging.as_slice() {
            [] => weights[0] = 1.0,
            [only] => weights[*only] = 1.0,
            [first, rest @ ..] => {
                weights[*first] = 0.5;
                for &k in rest {
                    weights[k] = 0.5 / rest.len() as f64;
                }
            }
        }
        Self {
            weights,
            started: vec![SequentialTest::default()],
            events: 0,
            requests: 0,
        }
    }

    /// Starts stage `index`'s test (once; a stage entered again after a
    /// pause keeps its evidence).
    pub fn start_stage(&mut self, index: usize) {
        while self.started.len() <= index.min(self.weights.len() - 1) {
            self.started.push(SequentialTest::default());
        }
    }

    pub fn observe(&mut self, events: u64, requests: u64, p0: f64) {
        self.observe_sum(events as f64, requests, p0);
    }

    /// Values in `[0, 1]` (see [`SequentialTest::observe_sum`]).
    pub fn observe_sum(&mut self, sum: f64, requests: u64, p0: f64) {
        for test in &mut self.started {
            test.observe_sum(sum, requests, p0);
        }
        self.events += (sum.clamp(0.0, requests as f64).round()) as u64;
        self.requests += requests;
    }

    /// `ln` of the weighted average; stages not started count as 1.
    pub fn log_e_value(&self) -> f64 {
        let terms: Vec<f64> = self
            .weights
            .iter()
            .enumerate()
            .filter(|(_, w)| **w > 0.0)
            .map(|(i, w)| w.ln() + self.started.get(i).map_or(0.0, SequentialTest::log_e_value))
            .collect();
        let max = terms.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        max + terms.iter().map(|t| (t - max).exp()).sum::<f64>().ln()
    }

    pub fn e_value(&self) -> f64 {
        self.log_e_value().exp()
    }

    pub fn rejects(&self, alpha: f64) -> bool {
        self.log_e_value() >= -alpha.ln()
    }
}

/// z for the confidence bounds on the baseline (one-sided, ~0.1% per
/// look). The bound moves with every look, so it is not time-uniform; the
/// simulator measures what that costs on a candidate exactly at a rule's
/// margin (p95 +10% under a "+10%" rule, 2,000 runs): z = 0 (plain
/// estimate) acts on 10.5% of them, z = 1 on 2.6%, z = 2 on 0.40%, z = 3
/// on 0.15%, within the rule's share of the budget (0.25%).
pub const BASELINE_Z: f64 = 3.0;

/// Wilson score upper bound on a rate from `events` of `requests`.
/// `None` without data.
pub fn rate_upper(events: u64, requests: u64, z: f64) -> Option<f64> {
    wilson(events, requests, z).map(|(_, high)| high)
}

/// Wilson score lower bound on a rate.
pub fn rate_lower(events: u64, requests: u64, z: f64) -> Option<f64> {
    wilson(events, requests, z).map(|(low, _)| low)
}

fn wilson(events: u64, requests: u64, z: f64) -> Option<(f64, f64)> {
    if requests == 0 {
        return None;
    }
    let n = requests as f64;
    let p = events.min(requests) as f64 / n;
    let z2 = z * z;
    let centre = (p + z2 / (2.0 * n)) / (1.0 + z2 / n);
    let half = z / (1.0 + z2 / n) * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    Some(((centre - half).max(0.0), (centre + half).min(1.0)))
}

/// The quantile whose sample value bounds the `q`-quantile from above
/// (distribution-free, from the binomial count of samples below it):
/// rank `n·q + z·√(n·q·(1−q)) + 1`, as a quantile of `n` samples. `None`
/// when no sample is high enough to bound it.
pub fn quantile_upper_rank(q: f64, n: u64, z: f64) -> Option<f64> {
    if n == 0 {
        return None;
    }
    let n = n as f64;
    let rank = n * q + z * (n * q * (1.0 - q)).sqrt() + 1.0;
    (rank <= n).then_some(rank / n)
}

/// The mirror image of [`quantile_upper_rank`]: a quantile of the sample
/// that bounds the `q`-quantile from below.
pub fn quantile_lower_rank(q: f64, n: u64, z: f64) -> Option<f64> {
    if n == 0 {
        return None;
    }
    let n = n as f64;
    let rank = n * q - z * (n * q * (1.0 - q)).sqrt() - 1.0;
    (rank >= 1.0).then_some(rank / n)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic Bernoulli draws without a dependency: a 64-bit LCG.
    struct Draws(u64);
    impl Draws {
        fn next_unit(&mut self) -> f64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 11) as f64 / (1u64 << 53) as f64
        }
        fn events(&mut self, n: u64, p: f64) -> u64 {
            (0..n).filter(|_| self.next_unit() < p).count() as u64
        }
    }

    #[test]
    fn starts_with_no_evidence() {
        let test = SequentialTest::default();
        assert!((test.e_value() - 1.0).abs() < 1e-12);
        assert!(!test.rejects(0.01));
    }

    #[test]
    fn one_update_of_n_equals_n_updates_of_one() {
        let mut batch = SequentialTest::default();
        batch.observe(3, 10, 0.05);
        let mut single = SequentialTest::default();
        for i in 0..10 {
            single.observe(u64::from(i < 3), 1, 0.05);
        }
        assert!((batch.log_e_value() - single.log_e_value()).abs() < 1e-9);
        assert_eq!((batch.events, batch.requests), (3, 10));
    }

    #[test]
    fn detects_a_clearly_worse_rate() {
        let mut draws = Draws(7);
        let mut test = SequentialTest::default();
        let mut requests = 0;
        while !test.rejects(0.01) {
            test.observe(draws.events(50, 0.06), 50, 0.015);
            requests += 50;
            assert!(requests < 5_000, "not detected after {requests}");
        }
        // KL(6% ‖ 1.5%) ≈ 0.032 nats per request: a few hundred requests.
        assert!(requests <= 1_000, "took {requests}");
    }

    #[test]
    fn healthy_streams_rarely_reject_however_often_checked() {
        // 400 healthy streams at exactly p0 (the hardest null), checked
        // after every request for 2,000 requests: Ville bounds the share
        // that ever rejects at alpha = 5%.
        let mut draws = Draws(11);
        let mut rejected = 0;
        for _ in 0..400 {
            let mut test = SequentialTest::default();
            for _ in 0..2_000 {
                test.observe(draws.events(1, 0.02), 1, 0.02);
                if test.rejects(0.05) {
                    rejected += 1;
                    break;
                }
            }
        }
        assert!(rejected <= 20, "{rejected} of 400 rejected at alpha 5%");
    }

    #[test]
    fn below_the_null_evidence_shrinks() {
        let mut test = SequentialTest::default();
        test.observe(0, 1_000, 0.05);
        assert!(test.e_value() < 1.0);
    }

    #[test]
    fn degenerate_inputs_change_nothing_or_stay_finite() {
        let mut test = SequentialTest::default();
        test.observe(5, 0, 0.1);
        test.observe(5, 10, 1.0);
        test.observe(5, 10, f64::NAN);
        assert_eq!(test, SequentialTest::default());
        test.observe(10, 10, 0.0);
        assert!(test.log_e_value().is_finite());
        test.observe(20, 10, 0.5);
        assert_eq!(test.events, 20, "events are capped at requests");
    }

    #[test]
    fn a_late_regression_is_judged_by_its_own_stage() {
        // 20,000 healthy requests in stage 0, then a bad stage 1.
        let mut staged = StagedTest::new(&[true; 4]);
        let mut whole = SequentialTest::default();
        let mut draws = Draws(3);
        for _ in 0..400 {
            let events = draws.events(50, 0.01);
            staged.observe(events, 50, 0.02);
            whole.observe(events, 50, 0.02);
        }
        staged.start_stage(1);
        let (mut staged_n, mut whole_n) = (None, None);
        for tick in 1..=200u64 {
            let events = draws.events(50, 0.08);
            staged.observe(events, 50, 0.02);
            whole.observe(events, 50, 0.02);
            if staged.rejects(0.01) {
                staged_n.get_or_insert(tick * 50);
            }
            if whole.rejects(0.01) {
                whole_n.get_or_insert(tick * 50);
            }
        }
        let staged_n = staged_n.expect("detected");
        assert!(
            staged_n < whole_n.unwrap_or(u64::MAX) / 2,
            "{staged_n} vs {whole_n:?}"
        );
    }

    #[test]
    fn stages_not_started_count_as_one() {
        let staged = StagedTest::new(&[true; 5]);
        assert!((staged.e_value() - 1.0).abs() < 1e-12);
        let mut staged = StagedTest::new(&[false, true, true]);
        staged.start_stage(7); // past the last stage: no panic, no new weight
        assert!((staged.e_value() - 1.0).abs() < 1e-12);
    }

    #[test]
    fn wilson_bounds_bracket_the_rate() {
        let (low, high) = wilson(10, 1_000, 3.0).unwrap();
        assert!(low < 0.01 && 0.01 < high);
        assert!(rate_upper(0, 1_000, 3.0).unwrap() > 0.0);
        assert_eq!(rate_upper(0, 0, 3.0), None);
        assert!(rate_lower(0, 100, 3.0).unwrap() == 0.0);
    }

    #[test]
    fn quantile_ranks_widen_with_little_data() {
        let high = quantile_upper_rank(0.95, 10_000, 3.0).unwrap();
        assert!(high > 0.95 && high < 0.97);
        assert_eq!(quantile_upper_rank(0.95, 20, 3.0), None);
        let low = quantile_lower_rank(0.95, 10_000, 3.0).unwrap();
        assert!(low < 0.95 && low > 0.93);
        assert_eq!(quantile_lower_rank(0.5, 2, 3.0), None);
    }
}
