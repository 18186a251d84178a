//! Seeded synthetic traffic: what the gateway would record for a baseline
//! and a candidate version, tick by tick.
//!
//! # Model
//!
//! Requests arrive as a Poisson process of `rate_per_s` in total. Each
//! request independently draws an outcome and a latency from its version's
//! [`Behaviour`]:
//!
//! - with probability `timeout_rate` it hangs: a **timeout**, with no latency
//!   recorded (the gateway records none for timeouts);
//! - otherwise it draws a latency `L` from the [`LatencyModel`] and, with
//!   probability `error_rate` (of *all* requests, see below), is a **server
//!   error**, else a **success**; both record `L` in the histogram;
//! - either way, if `L >= timeout_us` the gateway would have given up first:
//!   the request is a timeout instead and records no latency. (`timeout_us`
//!   of 0 means no such limit.)
//!
//! `timeout_rate` and `error_rate` are fractions of all requests; if they add
//! up to more than 1 the error rate is cut to `1 - timeout_rate`.
//!
//! # Exact and fast
//!
//! The gateway records latencies as whole microseconds into a histogram with
//! a fixed set of buckets ([`BUCKETS`]), so all that a request can change is
//! one counter and one bucket. For each behaviour the generator computes,
//! once, the exact probability of every *(outcome, bucket)* pair from the
//! analytic distribution (the mass of `floor(L)` in the bucket, from the
//! normal CDF), and builds a Walker/Vose **alias table** over them. A request
//! then costs one 64-bit draw (top bits pick a slot, low 32 bits pick between
//! the slot's two entries), one table load and one increment: no `exp` or
//! `ln` per request and no quantization beyond the histogram's own (the
//! table's probabilities are exact to about 2⁻³² per slot; buckets with mass
//! below 1e-15 are dropped).
//!
//! Request counts are exact too: a tick's arrivals on each side of the split
//! are independent Poisson draws (a Poisson process thinned by a fixed share
//! is two independent Poisson processes), drawn by inversion for small
//! means and by Hörmann's PTRS transformed rejection for means ≥ 10.
//!
//! Determinism: one [`fastrand::Rng`] seeded by the caller drives
//! everything, in a fixed order, so the same seed and the same calls give
//! the same samples. (Tables are built with the platform's `exp`/`ln`; a
//! libm that rounds differently could move a table threshold by one part
//! in 2³², so replay across platforms is exact only in distribution.)

use crate::analysis::histogram::{bucket_range, BUCKETS};

/// Requests that finished in one tick, per version, as the gateway would record them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TickSample {
    pub candidate: Sample,
    pub baseline: Sample,
}

/// One version's requests in one tick: the controller's own input type.
pub use crate::analysis::Sample;

/// How a version behaves: latency distribution and failure rates.
#[derive(Clone, Debug, PartialEq)]
pub struct Behaviour {
    pub latency: LatencyModel,
    /// Fraction (0..=1) of all requests that are server errors.
    pub error_rate: f64,
    /// Fraction (0..=1) of all requests that hang until the timeout.
    pub timeout_rate: f64,
    /// Requests slower than this (µs) time out as well; 0: no limit.
    pub timeout_us: u64,
}

/// Share of requests [`Regression::LatencyTail`] slows: the slowest 10%.
pub const TAIL_SHARE_DEFAULT: f64 = 0.10;

/// Standard normal quantile of 0.95.
const Z95: f64 = 1.644_853_626_951_472_2;

#[derive(Clone, Debug, PartialEq)]
pub enum LatencyModel {
    /// Lognormal with this median (µs) and sigma (of ln latency).
    LogNormal { median_us: f64, sigma: f64 },
    /// Baseline lognormal where only the slowest `tail_share` of requests is slowed, so that the
    /// distribution's p95 is `p95_factor` × the base p95 while p50 is unchanged ("tail-only").
    ///
    /// Construction: draw `L` from the base lognormal; let `Qs` be its
    /// `1 - tail_share` quantile (the p90 for a share of 0.10) and `Q95` its
    /// p95. Values up to `Qs` are kept; above it they are stretched away
    /// from it: `L' = Qs + (L − Qs) × k` with `k = (f·Q95 − Qs)/(Q95 − Qs)`,
    /// so that the p95 lands on exactly `f·Q95`. Every quantile below
    /// `1 - tail_share` is unchanged; every one above moves by the same
    /// stretch. Needs `0.05 < tail_share < 1` and `f·Q95 > Qs`.
    TailSlowed {
        median_us: f64,
        sigma: f64,
        tail_share: f64,
        p95_factor: f64,
    },
}

/// What goes wrong with a candidate.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Regression {
    None,
    /// Every latency multiplied by `p95_factor` (so every quantile is).
    LatencyWhole {
        p95_factor: f64,
    },
    /// Only the slowest 10% slowed, so the p95 is `p95_factor` × as slow
    /// and the p50 unchanged (see [`LatencyModel::TailSlowed`]).
    LatencyTail {
        p95_factor: f64,
    },
    /// `extra_pp` percentage points more server errors: 5.0 adds 0.05 to
    /// `error_rate`.
    Errors {
        extra_pp: f64,
    },
    /// `extra_pp` percentage points more timeouts: 5.0 adds 0.05 to
    /// `timeout_rate`.
    Timeouts {
        extra_pp: f64,
    },
    /// The candidate's watched input feature moved by `sigma` standard
    /// deviations (see [`super::quality`]).
    FeatureDrift {
        sigma: f64,
    },
    /// `moved_pp` percentage points of the candidate's predictions moved
    /// from the first class to the last.
    PredictionShift {
        moved_pp: f64,
    },
    /// The candidate's conversions `percent`% fewer (relative).
    KpiDrop {
        percent: f64,
    },
    /// Not the candidate's doing: the watched input feature of *both*
    /// versions moves by `sd_per_min` standard deviations a minute (a
    /// daily cycle, a campaign). Healthy by any policy.
    InputsMove {
        sd_per_min: f64,
    },
}

impl Behaviour {
    /// This behaviour with `regression` applied. Rates are clamped to 0..=1;
    /// a tail regression of a model that is already tail-slowed multiplies
    /// its `p95_factor`.
    pub fn regressed(&self, regression: Regression) -> Behaviour {
        let mut behaviour = self.clone();
        match regression {
            Regression::None => {}
            Regression::LatencyWhole { p95_factor } => {
                behaviour.latency = self.latency.scaled(p95_factor);
            }
            Regression::LatencyTail { p95_factor } => {
                behaviour.latency = self.latency.tail_slowed(p95_factor);
            }
            Regression::Errors { extra_pp } => {
                behaviour.error_rate = (self.error_rate + extra_pp / 100.0).clamp(0.0, 1.0);
            }
            Regression::Timeouts { extra_pp } => {
                behaviour.timeout_rate = (self.timeout_rate + extra_pp / 100.0).clamp(0.0, 1.0);
            }
            // Model-aware: the requests behave the same.
            Regression::FeatureDrift { .. }
            | Regression::PredictionShift { .. }
            | Regression::KpiDrop { .. }
            | Regression::InputsMove { .. } => {}
        }
        behaviour
    }

    fn validate(&self) {
        assert!(
            (0.0..=1.0).contains(&self.error_rate),
            "error_rate {} is not in 0..=1",
            self.error_rate
        );
        assert!(
            (0.0..=1.0).contains(&self.timeout_rate),
            "timeout_rate {} is not in 0..=1",
            self.timeout_rate
        );
        self.latency.validate();
    }
}

impl LatencyModel {
    /// Every latency multiplied by `factor`.
    fn scaled(&self, factor: f64) -> LatencyModel {
        // The tail construction is scale-free: scaling the median scales
        // Qs, Q95 and the stretched values alike.
        match *self {
            LatencyModel::LogNormal { median_us, sigma } => LatencyModel::LogNormal {
                median_us: median_us * factor,
                sigma,
            },
            LatencyModel::TailSlowed {
                median_us,
                sigma,
                tail_share,
                p95_factor,
            } => LatencyModel::TailSlowed {
                median_us: median_us * factor,
                sigma,
                tail_share,
                p95_factor,
            },
        }
    }

    /// The slowest requests slowed so the p95 moves by `factor`.
    fn tail_slowed(&self, factor: f64) -> LatencyModel {
        match *self {
            LatencyModel::LogNormal { median_us, sigma } => LatencyModel::TailSlowed {
                median_us,
                sigma,
                tail_share: TAIL_SHARE_DEFAULT,
                p95_factor: factor,
            },
            LatencyModel::TailSlowed {
                median_us,
                sigma,
                tail_share,
                p95_factor,
            } => LatencyModel::TailSlowed {
                median_us,
                sigma,
                tail_share,
                p95_factor: p95_factor * factor,
            },
        }
    }

    fn validate(&self) {
        let (median_us, sigma) = match *self {
            LatencyModel::LogNormal { median_us, sigma } => (median_us, sigma),
            LatencyModel::TailSlowed {
                median_us,
                sigma,
                tail_share,
                ..
            } => {
                assert!(
                    tail_share > 0.05 && tail_share < 1.0,
                    "tail_share {tail_share} must be in (0.05, 1) to move the p95"
                );
                (median_us, sigma)
            }
        };
        assert!(
            median_us.is_finite() && median_us > 0.0,
            "median_us {median_us} must be positive"
        );
        assert!(
            sigma.is_finite() && sigma > 0.0,
            "sigma {sigma} must be positive"
        );
        if let Some((_, k)) = self.stretch() {
            assert!(
                k.is_finite() && k > 0.0,
                "p95_factor too small: the tail cannot end below where it starts"
            );
        }
    }

    /// For a tail-slowed model: where stretching starts (µs) and by how much.
    fn stretch(&self) -> Option<(f64, f64)> {
        match *self {
            LatencyModel::LogNormal { .. } => None,
            LatencyModel::TailSlowed {
                median_us,
                sigma,
                tail_share,
                p95_factor,
            } => {
                let start = median_us * (sigma * normal_quantile(1.0 - tail_share)).exp();
                let q95 = median_us * (sigma * Z95).exp();
                let k = (p95_factor * q95 - start) / (q95 - start);
                Some((start, k))
            }
        }
    }

    fn base(&self) -> (f64, f64) {
        match *self {
            LatencyModel::LogNormal { median_us, sigma }
            | LatencyModel::TailSlowed {
                median_us, sigma, ..
            } => (median_us, sigma),
        }
    }

    /// The analytic quantile `q` (0..=1) of the latency, in µs.
    pub fn quantile_us(&self, q: f64) -> f64 {
        self.shape().quantile_us(q)
    }

    fn shape(&self) -> Shape {
        let (median_us, sigma) = self.base();
        Shape {
            median_us,
            sigma,
            stretch: self.stretch(),
        }
    }
}

/// A [`LatencyModel`] with its constants worked out, for building tables.
struct Shape {
    median_us: f64,
    sigma: f64,
    /// Where stretching starts (µs) and by how much.
    stretch: Option<(f64, f64)>,
}

impl Shape {
    fn quantile_us(&self, q: f64) -> f64 {
        let base = self.median_us * (self.sigma * normal_quantile(q)).exp();
        match self.stretch {
            Some((start, k)) if base > start => start + (base - start) * k,
            _ => base,
        }
    }

    /// Standard normal score of latency `x_us`: P(L < x) = Φ(z(x)).
    /// Monotone in `x`; −∞ at 0.
    fn z(&self, x_us: f64) -> f64 {
        let base = match self.stretch {
            Some((start, k)) if x_us > start => start + (x_us - start) / k,
            _ => x_us,
        };
        (base / self.median_us).ln() / self.sigma
    }
}

/// Seeded generator: Poisson arrivals at `rate_per_s` total, split by the candidate's share.
pub struct Traffic {
    rng: fastrand::Rng,
    rate_per_s: f64,
    baseline: Behaviour,
    candidate: Behaviour,
    baseline_sampler: Sampler,
    candidate_sampler: Sampler,
}

impl Traffic {
    pub fn new(seed: u64, rate_per_s: f64, baseline: Behaviour, candidate: Behaviour) -> Self {
        assert!(
            rate_per_s.is_finite() && rate_per_s >= 0.0,
            "rate_per_s {rate_per_s} must be finite and non-negative"
        );
        Self {
            rng: fastrand::Rng::with_seed(seed),
            rate_per_s,
            baseline_sampler: Sampler::new(&baseline),
            candidate_sampler: Sampler::new(&candidate),
            baseline,
            candidate,
        }
    }

    /// Requests finishing in the next `tick_ms`, with `candidate_percent` (0..=100) of them on the candidate.
    pub fn tick(&mut self, tick_ms: u64, candidate_percent: f64) -> TickSample {
        let share = share(candidate_percent, "candidate_percent");
        let lambda = self.rate_per_s * tick_ms as f64 / 1000.0;
        let on_candidate = poisson(&mut self.rng, lambda * share);
        let on_baseline = poisson(&mut self.rng, lambda * (1.0 - share));
        self.draw(on_candidate, on_baseline)
    }

    /// Same, but the candidate is a shadow: it receives `mirror_percent` of requests as copies
    /// and the baseline still receives all of them.
    ///
    /// A copy's outcome and latency are drawn independently of the
    /// original's.
    pub fn tick_shadow(&mut self, tick_ms: u64, mirror_percent: f64) -> TickSample {
        let share = share(mirror_percent, "mirror_percent");
        let lambda = self.rate_per_s * tick_ms as f64 / 1000.0;
        let mirrored = poisson(&mut self.rng, lambda * share);
        let not_mirrored = poisson(&mut self.rng, lambda * (1.0 - share));
        self.draw(mirrored, mirrored + not_mirrored)
    }

    /// Switch the candidate's behaviour (regression onset mid-run).
    pub fn set_candidate(&mut self, candidate: Behaviour) {
        self.candidate_sampler = Sampler::new(&candidate);
        self.candidate = candidate;
    }

    pub fn baseline(&self) -> &Behaviour {
        &self.baseline
    }

    pub fn candidate(&self) -> &Behaviour {
        &self.candidate
    }

    fn draw(&mut self, on_candidate: u64, on_baseline: u64) -> TickSample {
        let mut sample = TickSample::default();
        self.candidate_sampler
            .fill(&mut self.rng, on_candidate, &mut sample.candidate);
        self.baseline_sampler
            .fill(&mut self.rng, on_baseline, &mut sample.baseline);
        sample
    }
}

fn share(percent: f64, what: &str) -> f64 {
    assert!(
        (0.0..=100.0).contains(&percent),
        "{what} {percent} is not in 0..=100"
    );
    percent / 100.0
}

// ---------------------------------------------------------------------------
// Per-request sampler: an alias table over (outcome, bucket) codes.

/// Codes `0..BUCKETS`: success in that bucket; `BUCKETS..2*BUCKETS`: server
/// error in bucket `code - BUCKETS`; `TIMEOUT`: timeout.
const TIMEOUT: u16 = 2 * BUCKETS as u16;
const _: () = assert!(2 * BUCKETS < u16::MAX as usize);

/// Buckets with less probability than this are dropped (then renormalized).
const MASS_MIN: f64 = 1e-15;

#[derive(Clone, Copy, Debug)]
struct Entry {
    /// `primary` when the low 32 bits of the draw are below this.
    threshold: u32,
    primary: u16,
    alias: u16,
}

struct Sampler {
    /// A power-of-two number of slots.
    table: Box<[Entry]>,
    /// 64 − log2(slots): the draw's top bits pick the slot.
    shift: u32,
}

impl Sampler {
    fn new(behaviour: &Behaviour) -> Self {
        behaviour.validate();
        Self::from_weights(&outcome_weights(behaviour))
    }

    /// Walker/Vose alias table over `(code, weight)` pairs.
    fn from_weights(weights: &[(u16, f64)]) -> Self {
        let slots = weights.len().next_power_of_two().max(2);
        let total: f64 = weights.iter().map(|(_, w)| w).sum();
        assert!(total > 0.0, "no outcome has any probability");
        let mut codes: Vec<u16> = weights.iter().map(|(code, _)| *code).collect();
        let mut scaled: Vec<f64> = weights
            .iter()
            .map(|(_, w)| w * slots as f64 / total)
            .collect();
        // Padding slots carry no weight: always their alias.
        codes.resize(slots, weights[0].0);
        scaled.resize(slots, 0.0);

        let mut alias: Vec<usize> = (0..slots).collect();
        let mut probability = vec![1.0; slots];
        let (mut small, mut large): (Vec<usize>, Vec<usize>) =
            (0..slots).partition(|&i| scaled[i] < 1.0);
        while let (false, Some(&l)) = (small.is_empty(), large.last()) {
            let s = small.pop().expect("not empty");
            probability[s] = scaled[s];
            alias[s] = l;
            scaled[l] = (scaled[l] + scaled[s]) - 1.0;
            if scaled[l] < 1.0 {
                large.pop();
                small.push(l);
            }
        }
        // Whatever is left is 1 up to rounding: keeps its own slot.

        let table = (0..slots)
            .map(|i| {
                let p = probability[i];
                if p >= 1.0 {
                    Entry {
                        threshold: u32::MAX,
                        primary: codes[i],
                        alias: codes[i],
                    }
                } else {
                    Entry {
                        threshold: (p * 4_294_967_296.0).round().min(u32::MAX as f64) as u32,
                        primary: codes[i],
                        alias: codes[alias[i]],
                    }
                }
            })
            .collect();
        Self {
            table,
            shift: 64 - slots.trailing_zeros(),
        }
    }

    #[inline]
    fn code(&self, draw: u64) -> u16 {
        let entry = self.table[(draw >> self.shift) as usize];
        if (draw as u32) < entry.threshold {
            entry.primary
        } else {
            entry.alias
        }
    }

    /// Draws `requests` requests into `sample`.
    fn fill(&self, rng: &mut fastrand::Rng, requests: u64, sample: &mut Sample) {
        let mut errors = 0u64;
        let mut timeouts = 0u64;
        let histogram = &mut sample.latency_us;
        for _ in 0..requests {
            let code = self.code(rng.u64(..)) as usize;
            if code < BUCKETS {
                histogram.record_bucket(code);
            } else if code < TIMEOUT as usize {
                errors += 1;
                histogram.record_bucket(code - BUCKETS);
            } else {
                timeouts += 1;
            }
        }
        let counts = &mut sample.counts;
        counts.requests += requests;
        counts.successes += requests - errors - timeouts;
        counts.server_errors += errors;
        counts.timeouts += timeouts;
    }
}

/// Probability of every (outcome, bucket) code that has any, for `behaviour`.
fn outcome_weights(behaviour: &Behaviour) -> Vec<(u16, f64)> {
    let model = behaviour.latency.shape();
    let limit = match behaviour.timeout_us {
        0 => f64::INFINITY,
        us => us as f64,
    };
    // Mass of floor(L) in each bucket: P(low <= L < low + width), the last
    // bucket open-ended (the histogram clamps), cut at the timeout.
    let mut masses = Vec::with_capacity(BUCKETS);
    let mut at_low = Boundary::new(model.z(0.0));
    for index in 0..BUCKETS {
        let (low, width) = bucket_range(index);
        let high = if index == BUCKETS - 1 {
            f64::INFINITY
        } else {
            (low + width) as f64
        };
        let at_high = Boundary::new(model.z(high.min(limit)));
        let mass = if (low as f64) < limit {
            at_low.mass_to(&at_high)
        } else {
            0.0
        };
        masses.push(if mass < MASS_MIN { 0.0 } else { mass });
        at_low = at_high;
    }
    let too_slow = Boundary::new(model.z(limit)).mass_to(&Boundary::new(f64::INFINITY));

    let hang = behaviour.timeout_rate;
    let error = behaviour.error_rate.min(1.0 - hang);
    let success = 1.0 - hang - error;
    let mut weights = Vec::new();
    for (outcome, share) in [(0, success), (BUCKETS, error)] {
        if share > 0.0 {
            for (index, mass) in masses.iter().enumerate() {
                if *mass > 0.0 {
                    weights.push(((outcome + index) as u16, share * mass));
                }
            }
        }
    }
    let timeout = hang + (1.0 - hang) * too_slow;
    if timeout > 0.0 {
        weights.push((TIMEOUT, timeout));
    }
    weights
}

// ---------------------------------------------------------------------------
// Counts per tick: exact Poisson draws.

/// One Poisson(`lambda`) draw; 0 without drawing when `lambda` is 0.
fn poisson(rng: &mut fastrand::Rng, lambda: f64) -> u64 {
    if lambda <= 0.0 {
        0
    } else if lambda < 10.0 {
        poisson_inversion(rng, lambda)
    } else {
        poisson_ptrs(rng, lambda)
    }
}

/// Sequential search of the CDF: exact, O(lambda) steps.
fn poisson_inversion(rng: &mut fastrand::Rng, lambda: f64) -> u64 {
    let u = rng.f64();
    let mut k = 0u64;
    let mut p = (-lambda).exp();
    let mut cdf = p;
    while u > cdf {
        k += 1;
        p *= lambda / k as f64;
        let next = cdf + p;
        if next == cdf {
            // The rest of the tail is below rounding: u was within it.
            break;
        }
        cdf = next;
    }
    k
}

/// Hörmann's PTRS transformed rejection (1993), as in NumPy; exact for
/// `lambda >= 10`.
fn poisson_ptrs(rng: &mut fastrand::Rng, lambda: f64) -> u64 {
    let slam = lambda.sqrt();
    let loglam = lambda.ln();
    let b = 0.931 + 2.53 * slam;
    let a = -0.059 + 0.02483 * b;
    let inv_alpha = 1.1239 + 1.1328 / (b - 3.4);
    let vr = 0.9277 - 3.6224 / (b - 2.0);
    loop {
        let u = rng.f64() - 0.5;
        let v = rng.f64();
        let us = 0.5 - u.abs();
        let k = ((2.0 * a / us + b) * u + lambda + 0.43).floor();
        if us >= 0.07 && v <= vr {
            return k as u64;
        }
        if k < 0.0 || (us < 0.013 && v > us) {
            continue;
        }
        if v.ln() + inv_alpha.ln() - (a / (us * us) + b).ln()
            <= -lambda + k * loglam - ln_gamma(k + 1.0)
        {
            return k as u64;
        }
    }
}

/// ln Γ(x) for x >= 1 (Stirling series, shifted up to 7), as in NumPy.
fn ln_gamma(x: f64) -> f64 {
    // B_2n / (2n (2n − 1)).
    const COEFFICIENTS: [f64; 10] = [
        1.0 / 12.0,
        -1.0 / 360.0,
        1.0 / 1260.0,
        -1.0 / 1680.0,
        1.0 / 1188.0,
        -691.0 / 360_360.0,
        1.0 / 156.0,
        -3617.0 / 122_400.0,
        43_867.0 / 244_188.0,
        -174_611.0 / 125_400.0,
    ];
    if x == 1.0 || x == 2.0 {
        return 0.0;
    }
    let shift = if x < 7.0 { (7.0 - x).floor() } else { 0.0 };
    let mut x0 = x + shift;
    let x2 = 1.0 / (x0 * x0);
    let mut series = COEFFICIENTS[9];
    for c in COEFFICIENTS[..9].iter().rev() {
        series = series * x2 + c;
    }
    let ln_2pi = (2.0 * std::f64::consts::PI).ln();
    let mut result = series / x0 + 0.5 * ln_2pi + (x0 - 0.5) * x0.ln() - x0;
    for _ in 0..shift as u32 {
        result -= (x0 - 1.0).ln();
        x0 -= 1.0;
    }
    result
}

// ---------------------------------------------------------------------------
// Normal distribution, for building tables (never per request).

/// Complementary error function, to ~1e-13 relative.
fn erfc(x: f64) -> f64 {
    if x.is_nan() {
        return f64::NAN;
    }
    if x < 0.0 {
        return 2.0 - erfc(-x);
    }
    if x > 27.0 {
        return 0.0;
    }
    let frac_2_sqrt_pi = std::f64::consts::FRAC_2_SQRT_PI;
    if x < 2.5 {
        // erf(x) = 2/√π e^(−x²) Σ (2x²)ⁿ x / (1·3···(2n+1)): positive terms.
        let two_x2 = 2.0 * x * x;
        let mut term = x;
        let mut sum = x;
        let mut n = 0.0;
        while term > sum * 1e-17 {
            n += 1.0;
            term *= two_x2 / (2.0 * n + 1.0);
            sum += term;
        }
        1.0 - frac_2_sqrt_pi * (-x * x).exp() * sum
    } else {
        // erfc(x) = e^(−x²)/√π · 1/(x + (1/2)/(x + 1/(x + (3/2)/(x + ...)))).
        // 40 terms reach full precision from x = 2.5 on.
        let mut fraction = x;
        for n in (1..=40).rev() {
            fraction = x + (n as f64 / 2.0) / fraction;
        }
        frac_2_sqrt_pi / 2.0 * (-x * x).exp() / fraction
    }
}

/// P(Z < z) for a standard normal Z.
fn normal_cdf(z: f64) -> f64 {
    0.5 * erfc(-z / std::f64::consts::SQRT_2)
}

/// P(Z > z), accurate in the upper tail.
fn normal_sf(z: f64) -> f64 {
    0.5 * erfc(z / std::f64::consts::SQRT_2)
}

/// Beyond this many sd a tail holds less than 1e-17: taken as 0.
const Z_NEGLIGIBLE: f64 = 8.5;

/// A point `z` of the standard normal with the probability on its thin
/// side: P(Z < z) below the mean, P(Z > z) above (so tails keep precision).
struct Boundary {
    z: f64,
    tail: f64,
}

impl Boundary {
    fn new(z: f64) -> Self {
        let tail = if z.abs() > Z_NEGLIGIBLE {
            0.0
        } else if z < 0.0 {
            normal_cdf(z)
        } else {
            normal_sf(z)
        };
        Self { z, tail }
    }

    /// P(self.z <= Z < high.z).
    fn mass_to(&self, high: &Boundary) -> f64 {
        if high.z <= self.z {
            0.0
        } else if self.z >= 0.0 {
            self.tail - high.tail
        } else if high.z <= 0.0 {
            high.tail - self.tail
        } else {
            1.0 - self.tail - high.tail
        }
        .max(0.0)
    }
}

/// Standard normal quantile of `p`, by bisection (table building only).
pub(crate) fn normal_quantile(p: f64) -> f64 {
    if p <= 0.0 {
        return f64::NEG_INFINITY;
    }
    if p >= 1.0 {
        return f64::INFINITY;
    }
    // Solve in the tail that holds precision: cdf below the median, sf above.
    let (mut low, mut high, target, upper) = if p < 0.5 {
        (-40.0, 0.0, p, false)
    } else {
        (0.0, 40.0, 1.0 - p, true)
    };
    for _ in 0..200 {
        let mid = 0.5 * (low + high);
        if mid == low || mid == high {
            break;
        }
        let below = if upper {
            normal_sf(mid) > target
        } else {
            normal_cdf(mid) < target
        };
        if below {
            low = mid;
        } else {
            high = mid;
        }
    }
    0.5 * (low + high)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn healthy() -> Behaviour {
        Behaviour {
            latency: LatencyModel::LogNormal {
                median_us: 50_000.0,
                sigma: 0.5,
            },
            error_rate: 0.0,
            timeout_rate: 0.0,
            timeout_us: 0,
        }
    }

    /// About `n` requests of `behaviour` in one sample.
    fn sample_of(behaviour: Behaviour, seed: u64, n: u64) -> Sample {
        let mut traffic = Traffic::new(seed, 1000.0, healthy(), behaviour);
        traffic.tick(n, 100.0).candidate
    }

    fn relative(actual: f64, expected: f64) -> f64 {
        (actual - expected).abs() / expected
    }

    fn quantile(sample: &Sample, q: f64) -> f64 {
        sample.latency_us.quantile(q).unwrap() as f64
    }

    #[test]
    fn erfc_matches_known_values() {
        for (x, expected) in [
            (0.0, 1.0),
            (0.5, 0.479_500_122_186_953_5),
            (1.0, 0.157_299_207_050_285_13),
            (2.0, 0.004_677_734_981_047_266),
            (2.5, 4.069_520_174_449_59e-4),
            (3.0, 2.209_049_699_858_544e-5),
            (5.0, 1.537_459_794_428_035e-12),
            (-1.0, 1.842_700_792_949_715),
        ] {
            assert!(
                relative(erfc(x), expected) < 1e-12,
                "erfc({x}) = {}",
                erfc(x)
            );
        }
        assert!(relative(normal_quantile(0.95), Z95) < 1e-12);
        assert!(relative(normal_quantile(0.05), -Z95) < 1e-12);
        assert!(normal_quantile(0.5).abs() < 1e-12);
        assert!(relative(normal_quantile(0.9), 1.281_551_565_544_600_5) < 1e-12);
    }

    #[test]
    fn ln_gamma_matches_factorials() {
        let mut factorial = 1.0f64;
        for n in 1..=30u32 {
            factorial *= n as f64;
            let x = n as f64 + 1.0;
            assert!(
                (ln_gamma(x) - factorial.ln()).abs() < 1e-12 * factorial.ln().max(1.0),
                "ln Γ({x})"
            );
        }
    }

    /// Draws of Poisson(`lambda`) fall in each value with the exact pmf,
    /// within 5 sd.
    fn check_poisson_pmf(lambda: f64, draws: u32, seed: u64) {
        let mut rng = fastrand::Rng::with_seed(seed);
        let top = (lambda + 6.0 * lambda.sqrt() + 10.0) as usize;
        let mut seen = vec![0u32; top + 1];
        let mut sum = 0.0;
        let mut sum_sq = 0.0;
        for _ in 0..draws {
            let k = poisson(&mut rng, lambda);
            sum += k as f64;
            sum_sq += (k as f64) * (k as f64);
            seen[(k as usize).min(top)] += 1;
        }
        for (k, count) in seen.iter().enumerate().take(top) {
            let p = (k as f64 * lambda.ln() - lambda - ln_gamma(k as f64 + 1.0)).exp();
            let expected = p * draws as f64;
            let sd = (expected * (1.0 - p)).sqrt().max(1.0);
            assert!(
                (*count as f64 - expected).abs() < 5.0 * sd,
                "lambda {lambda}: P({k}) seen {count}, expected {expected}"
            );
        }
        let mean = sum / draws as f64;
        let variance = sum_sq / draws as f64 - mean * mean;
        assert!((mean - lambda).abs() < 5.0 * (lambda / draws as f64).sqrt());
        assert!(
            relative(variance, lambda) < 0.05,
            "variance {variance}, not {lambda}"
        );
    }

    #[test]
    fn poisson_counts_are_exact_for_small_and_large_means() {
        check_poisson_pmf(0.3, 50_000, 1);
        check_poisson_pmf(3.0, 50_000, 2);
        check_poisson_pmf(9.9, 50_000, 3);
        check_poisson_pmf(10.0, 50_000, 4);
        check_poisson_pmf(50.0, 50_000, 5);
        check_poisson_pmf(2_000.0, 20_000, 6);
    }

    #[test]
    fn alias_table_reproduces_the_weights() {
        let weights = outcome_weights(&Behaviour {
            error_rate: 0.03,
            timeout_rate: 0.01,
            timeout_us: 150_000,
            ..healthy()
        });
        let sampler = Sampler::from_weights(&weights);
        let slots = sampler.table.len() as f64;
        let mut implied = vec![0.0; TIMEOUT as usize + 1];
        for entry in sampler.table.iter() {
            let p = entry.threshold as f64 / 4_294_967_296.0;
            implied[entry.primary as usize] += p / slots;
            implied[entry.alias as usize] += (1.0 - p) / slots;
        }
        let total: f64 = weights.iter().map(|(_, w)| w).sum();
        assert!((total - 1.0).abs() < 1e-9, "weights sum to {total}");
        for (code, weight) in weights {
            assert!(
                (implied[code as usize] - weight).abs() < 1e-9,
                "code {code}: {} vs {weight}",
                implied[code as usize]
            );
        }
    }

    #[test]
    fn same_seed_gives_identical_samples_and_another_seed_does_not() {
        let candidate = healthy().regressed(Regression::Errors { extra_pp: 2.0 });
        let mut a = Traffic::new(7, 500.0, healthy(), candidate.clone());
        let mut b = Traffic::new(7, 500.0, healthy(), candidate.clone());
        let mut c = Traffic::new(8, 500.0, healthy(), candidate);
        let mut differs = false;
        for (i, percent) in [0.0, 5.0, 50.0, 100.0].iter().cycle().take(40).enumerate() {
            let (x, y, z) = if i % 3 == 0 {
                (
                    a.tick_shadow(1000, *percent),
                    b.tick_shadow(1000, *percent),
                    c.tick_shadow(1000, *percent),
                )
            } else {
                (
                    a.tick(1000, *percent),
                    b.tick(1000, *percent),
                    c.tick(1000, *percent),
                )
            };
            assert_eq!(x, y, "tick {i}");
            differs |= x != z;
        }
        assert!(differs, "seeds 7 and 8 gave the same samples");
    }

    #[test]
    fn request_counts_match_the_rate() {
        let mut traffic = Traffic::new(11, 1000.0, healthy(), healthy());
        let ticks = 200;
        let mut per_tick = Vec::new();
        for _ in 0..ticks {
            let sample = traffic.tick(250, 10.0);
            per_tick
                .push((sample.candidate.counts.requests + sample.baseline.counts.requests) as f64);
        }
        let lambda = 250.0;
        let total: f64 = per_tick.iter().sum();
        let expected = lambda * ticks as f64;
        assert!(
            (total - expected).abs() < 5.0 * expected.sqrt(),
            "{total} requests, expected {expected}"
        );
        // Poisson: variance equals the mean (sd of the sample variance is
        // about λ·√(2/n) = 10%).
        let mean = total / ticks as f64;
        let variance =
            per_tick.iter().map(|n| (n - mean).powi(2)).sum::<f64>() / (ticks - 1) as f64;
        assert!(
            relative(variance, lambda) < 0.4,
            "variance {variance}, mean {mean}"
        );
        // A zero-length tick or a zero rate has no requests.
        assert_eq!(traffic.tick(0, 50.0), TickSample::default());
        let mut idle = Traffic::new(11, 0.0, healthy(), healthy());
        assert_eq!(idle.tick(1000, 50.0), TickSample::default());
    }

    #[test]
    fn candidate_share_matches_percent() {
        let mut traffic = Traffic::new(12, 1000.0, healthy(), healthy());
        for percent in [0.0, 1.0, 10.0, 50.0, 100.0] {
            let (mut candidate, mut baseline) = (0u64, 0u64);
            for _ in 0..100 {
                let sample = traffic.tick(1000, percent);
                candidate += sample.candidate.counts.requests;
                baseline += sample.baseline.counts.requests;
            }
            let total = (candidate + baseline) as f64;
            let p = percent / 100.0;
            let share = candidate as f64 / total;
            let sd = (p * (1.0 - p) / total).sqrt();
            assert!((share - p).abs() <= 5.0 * sd, "{percent}%: share {share}");
        }
    }

    #[test]
    fn error_and_timeout_rates_match() {
        let behaviour = Behaviour {
            error_rate: 0.02,
            timeout_rate: 0.01,
            ..healthy()
        };
        let sample = sample_of(behaviour, 13, 200_000);
        let counts = &sample.counts;
        let n = counts.requests as f64;
        assert!(n > 190_000.0);
        for (seen, p) in [
            (counts.server_errors, 0.02),
            (counts.timeouts, 0.01),
            (counts.successes, 0.97),
        ] {
            let sd = (p * (1.0 - p) / n).sqrt();
            let rate = seen as f64 / n;
            assert!((rate - p).abs() < 5.0 * sd, "rate {rate}, expected {p}");
        }
        assert_eq!(
            counts.successes + counts.server_errors + counts.timeouts,
            counts.requests
        );
    }

    #[test]
    fn timeouts_are_not_in_the_histogram() {
        let hanging = Behaviour {
            error_rate: 0.1,
            timeout_rate: 0.5,
            ..healthy()
        };
        let sample = sample_of(hanging, 14, 20_000);
        assert!(sample.counts.timeouts > 9_000);
        assert_eq!(
            sample.latency_us.count(),
            sample.counts.successes + sample.counts.server_errors
        );

        // Requests slower than the timeout time out too: half of them here.
        let limited = Behaviour {
            timeout_us: 50_000,
            ..healthy()
        };
        let sample = sample_of(limited, 15, 20_000);
        let share = sample.counts.timeouts as f64 / sample.counts.requests as f64;
        assert!((share - 0.5).abs() < 0.02, "timeout share {share}");
        assert_eq!(sample.latency_us.count(), sample.counts.successes);
        assert!(sample.latency_us.quantile(1.0).unwrap() < 50_000);
    }

    #[test]
    fn lognormal_quantiles_match_the_analytic_values() {
        for (median_us, sigma) in [(50_000.0, 0.5), (800.0, 1.0), (20.0, 0.3)] {
            let model = LatencyModel::LogNormal { median_us, sigma };
            let sample = sample_of(
                Behaviour {
                    latency: model.clone(),
                    ..healthy()
                },
                16,
                400_000,
            );
            let p95 = median_us * (sigma * Z95).exp();
            assert!(relative(model.quantile_us(0.95), p95) < 1e-12);
            for (q, expected) in [(0.5, median_us), (0.95, p95)] {
                let seen = quantile(&sample, q);
                // Small values are whole microseconds: allow one.
                let error = ((seen - expected).abs() - 1.0).max(0.0) / expected;
                assert!(
                    error < 0.02,
                    "median {median_us} sigma {sigma}: q{q} {seen} vs {expected}"
                );
            }
        }
    }

    #[test]
    fn whole_latency_regression_scales_every_quantile() {
        let base = sample_of(healthy(), 17, 400_000);
        let slow = sample_of(
            healthy().regressed(Regression::LatencyWhole { p95_factor: 1.4 }),
            18,
            400_000,
        );
        for q in [0.5, 0.95] {
            let ratio = quantile(&slow, q) / quantile(&base, q);
            assert!(relative(ratio, 1.4) < 0.03, "q{q} ratio {ratio}");
        }
    }

    #[test]
    fn tail_regression_moves_p95_but_not_p50() {
        let slowed = healthy().regressed(Regression::LatencyTail { p95_factor: 1.4 });
        assert!(
            relative(
                slowed.latency.quantile_us(0.95),
                1.4 * healthy().latency.quantile_us(0.95)
            ) < 1e-9
        );
        assert!(
            relative(
                slowed.latency.quantile_us(0.5),
                healthy().latency.quantile_us(0.5)
            ) < 1e-12
        );
        assert!(
            relative(
                slowed.latency.quantile_us(0.9),
                healthy().latency.quantile_us(0.9)
            ) < 1e-9
        );

        let base = sample_of(healthy(), 19, 400_000);
        let slow = sample_of(slowed, 20, 400_000);
        let p95 = quantile(&slow, 0.95) / quantile(&base, 0.95);
        assert!(relative(p95, 1.4) < 0.03, "p95 ratio {p95}");
        let p50 = quantile(&slow, 0.5) / quantile(&base, 0.5);
        assert!(relative(p50, 1.0) < 0.02, "p50 ratio {p50}");
    }

    #[test]
    fn regressions_change_what_they_name() {
        let base = Behaviour {
            error_rate: 0.01,
            timeout_rate: 0.002,
            ..healthy()
        };
        assert_eq!(base.regressed(Regression::None), base);
        let errors = base.regressed(Regression::Errors { extra_pp: 5.0 });
        assert!((errors.error_rate - 0.06).abs() < 1e-12);
        assert_eq!(errors.timeout_rate, base.timeout_rate);
        let timeouts = base.regressed(Regression::Timeouts { extra_pp: 5.0 });
        assert!((timeouts.timeout_rate - 0.052).abs() < 1e-12);
        assert_eq!(timeouts.error_rate, base.error_rate);
        assert_eq!(
            base.regressed(Regression::Errors { extra_pp: 500.0 })
                .error_rate,
            1.0
        );
        // Tail on tail compounds; whole on tail keeps the shape.
        let tail = base
            .regressed(Regression::LatencyTail { p95_factor: 1.2 })
            .regressed(Regression::LatencyTail { p95_factor: 1.5 });
        assert!(
            relative(
                tail.latency.quantile_us(0.95),
                1.8 * base.latency.quantile_us(0.95)
            ) < 1e-9
        );
        let whole = tail.regressed(Regression::LatencyWhole { p95_factor: 2.0 });
        for q in [0.5, 0.9, 0.95, 0.99] {
            assert!(
                relative(
                    whole.latency.quantile_us(q),
                    2.0 * tail.latency.quantile_us(q)
                ) < 1e-9
            );
        }
    }

    #[test]
    fn shadow_baseline_gets_every_request() {
        let mut traffic = Traffic::new(21, 1000.0, healthy(), healthy());
        let (mut candidate, mut baseline) = (0u64, 0u64);
        for _ in 0..100 {
            let sample = traffic.tick_shadow(1000, 20.0);
            candidate += sample.candidate.counts.requests;
            baseline += sample.baseline.counts.requests;
            assert!(sample.candidate.counts.requests <= sample.baseline.counts.requests);
        }
        let expected = 100_000.0;
        assert!((baseline as f64 - expected).abs() < 5.0 * expected.sqrt());
        let share = candidate as f64 / baseline as f64;
        assert!(
            (share - 0.2).abs() < 5.0 * (0.2f64 * 0.8 / baseline as f64).sqrt(),
            "share {share}"
        );
        let all = traffic.tick_shadow(1000, 100.0);
        assert_eq!(all.candidate.counts.requests, all.baseline.counts.requests);
        let none = traffic.tick_shadow(1000, 0.0);
        assert_eq!(none.candidate.counts.requests, 0);
        assert!(none.baseline.counts.requests > 800);
    }

    #[test]
    fn set_candidate_switches_behaviour_mid_run() {
        let mut traffic = Traffic::new(22, 1000.0, healthy(), healthy());
        let before = traffic.tick(10_000, 50.0);
        assert_eq!(before.candidate.counts.server_errors, 0);
        traffic.set_candidate(healthy().regressed(Regression::Errors { extra_pp: 50.0 }));
        assert!((traffic.candidate().error_rate - 0.5).abs() < 1e-12);
        let after = traffic.tick(10_000, 50.0);
        let rate =
            after.candidate.counts.server_errors as f64 / after.candidate.counts.requests as f64;
        assert!((rate - 0.5).abs() < 0.05, "error rate {rate}");
        assert_eq!(after.baseline.counts.server_errors, 0);
    }

    #[test]
    #[should_panic(expected = "candidate_percent")]
    fn percent_out_of_range_panics() {
        Traffic::new(1, 1.0, healthy(), healthy()).tick(1, 101.0);
    }
}
