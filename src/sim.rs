//! `backstop sim`: the real controller on a virtual clock against seeded
//! synthetic traffic (`backstop_core::sim`), thousands of rollouts in
//! seconds, with the figures that say whether its verdicts can be trusted.

use backstop_core::policy::Policy;
use backstop_core::sim::scenario::{self, ScenarioReport};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// The default policy, embedded so `backstop sim` needs no file.
pub const DEFAULT_POLICY: &str = include_str!("../examples/sim-policy.yaml");
/// The default policy of the model-aware scenarios: the same rules plus
/// drift, prediction shift and a KPI.
pub const DEFAULT_SIGNALS_POLICY: &str = include_str!("../examples/sim-signals-policy.yaml");

pub struct SimOptions {
    pub seed: u64,
    pub runs: usize,
    /// A policy file instead of the embedded defaults (for every scenario).
    pub policy: Option<PathBuf>,
    /// Only scenarios whose name contains this.
    pub only: Option<String>,
}

/// `backstop sim --output json`: field names are how the figures are
/// checked; keep them stable.
#[derive(Serialize)]
pub struct SimReport {
    pub seed: u64,
    pub runs: usize,
    pub tick_ms: u64,
    /// The policy of the request scenarios.
    pub policy: Policy,
    /// The policy of the model-aware scenarios (names starting `model:`,
    /// `allowed:`, `drift`, `predictions`, `KPI`, and the KPI margin).
    pub signals_policy: Policy,
    pub elapsed_s: f64,
    pub scenarios: Vec<ScenarioReport>,
}

pub fn run(options: &SimOptions) -> anyhow::Result<SimReport> {
    let (policy, signals_policy) = match &options.policy {
        Some(file) => {
            let policy = crate::policy::load(file)?;
            (policy.clone(), policy)
        }
        None => (
            crate::policy::parse(Path::new("examples/sim-policy.yaml"), DEFAULT_POLICY)?,
            crate::policy::parse(
                Path::new("examples/sim-signals-policy.yaml"),
                DEFAULT_SIGNALS_POLICY,
            )?,
        ),
    };
    // Each scenario with its policy; the index seeds its runs.
    let suites = scenario::standard()
        .into_iter()
        .map(|s| (s, &policy))
        .chain(
            scenario::model_aware()
                .into_iter()
                .map(|s| (s, &signals_policy)),
        );
    let scenarios: Vec<_> = suites
        .enumerate()
        .filter(|(_, (s, _))| {
            options
                .only
                .as_ref()
                .is_none_or(|only| s.name.contains(only.as_str()))
        })
        .collect();
    anyhow::ensure!(!scenarios.is_empty(), "no scenario matches");
    for (_, (s, policy)) in &scenarios {
        let policy = scenario::policy_for(policy, s);
        policy
            .check()
            .map_err(|e| anyhow::anyhow!("scenario {:?} cannot run this policy: {e}", s.name))?;
    }
    let started = std::time::Instant::now();
    // Scenarios in parallel; each run's seed depends only on (seed,
    // scenario, run), so the figures do not depend on the thread count.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..threads.min(scenarios.len()) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some((index, (scenario, policy))) = scenarios.get(i) else {
                    break;
                };
                let report =
                    scenario::run_scenario(policy, scenario, options.seed, *index, options.runs);
                results
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((*index, report));
            });
        }
    });
    let mut results = results.into_inner().unwrap_or_else(|e| e.into_inner());
    results.sort_by_key(|(index, _)| *index);
    Ok(SimReport {
        seed: options.seed,
        runs: options.runs,
        tick_ms: scenario::TICK_MS,
        policy: policy.clone(),
        signals_policy: signals_policy.clone(),
        elapsed_s: started.elapsed().as_secs_f64(),
        scenarios: results.into_iter().map(|(_, r)| r).collect(),
    })
}

pub fn print_human(report: &SimReport) {
    println!(
        "backstop sim: seed {}, {} runs per scenario, checks every {} ms, {:.1} s",
        report.seed, report.runs, report.tick_ms, report.elapsed_s
    );
    println!(
        "\n{:<44} {:>9} {:>10} {:>7} {:>9} {:>9} {:>9} {:>9}",
        "scenario",
        "rollbacks",
        "false rate",
        "missed",
        "delay p50",
        "delay p95",
        "exposed50",
        "exposed95"
    );
    let opt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.0} s"));
    let opt_n = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
    for s in &report.scenarios {
        println!(
            "{:<44} {:>9} {:>9.2}% {:>7} {:>9} {:>9} {:>9} {:>9}",
            s.name,
            s.rollbacks,
            100.0 * s.false_rollback_rate,
            s.missed,
            opt(s.detection_delay_s_p50),
            opt(s.detection_delay_s_p95),
            opt_n(s.exposed_requests_p50),
            opt_n(s.exposed_requests_p95),
        );
    }
    println!("\ndelay: from the regression's onset to the verdict; exposed: candidate requests in that time.");
}
