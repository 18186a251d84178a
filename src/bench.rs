//! `backstop bench`: what the gateway costs on the hot path, measured
//! against a direct call and against nginx, on loopback.
//!
//! The setups, each driven by [`crate::loadgen`] inside this process:
//!
//! - `direct`: client → toy upstream;
//! - `nginx`: client → nginx (one worker, upstream keep-alive) → toy upstream;
//! - `backstop`: client → `backstop serve` → toy upstream;
//! - `backstop_capture`, `backstop_capture_1pct`: the same with the model's
//!   sample capture on at 100% and at 1% (the default rollout setting),
//!   redacting one field and hashing another that the request body holds,
//!   so every sampled exchange is parsed, redacted and pushed into a ring;
//! - `backstop_signals`: the same with the model-aware input signals on at
//!   100%: v1 and v2 are registered (admin API) with an OIP input signature
//!   that [`INFER_BODY`] fits, and a canary rollout v1 → v2 (held at 50%
//!   for longer than the bench runs) watches `schema_violation_rate`,
//!   `null_rate` and `drift_psi` on the tensor `x` with `action: notify`,
//!   so every request on either version is checked against its version's
//!   signature, its nulls counted and its feature values sketched. After
//!   the run the rollout's status is read back (`signals` in the report):
//!   inputs checked and schema violations.
//!
//! The toy upstream, nginx and the gateway are separate child processes, so
//! the CPU time of each proxy can be read from `/proc/<pid>/stat` on its own.
//! The method:
//!
//! 1. Closed loop, each setup: the maximum rate (`max_rps`) and the proxy's
//!    CPU time per request over that run.
//! 2. Open loop (coordinated-omission corrected) at 25% and 75% of nginx's
//!    maximum (of backstop's without nginx), the same rates for every setup.
//!
//! Both steps repeat over `rounds` rounds, rotating the order of the setups
//! each round so that no setup always runs first (or last, on a warmer or
//! more throttled machine); the report gives the median over rounds.
//! 3. Backstop only: the routing table is replaced every 100 ms under the
//!    75% load, and the time from each swap to the first request routed by
//!    the new table is collected from the admin API.
//!
//! Every child process is owned by a guard that stops it on drop, so they
//! die with the bench on success, on error and on Ctrl-C.

use crate::loadgen::{self, LoadReport, LoadSpec, Mode};
use anyhow::Context;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};

/// Options of `backstop bench`.
#[derive(clap::Args, Clone, Debug)]
pub struct BenchOptions {
    /// Seconds per measurement.
    #[arg(long, default_value_t = 5)]
    pub duration_s: u64,
    /// Rounds; the order of the setups rotates each round and the report
    /// gives the median over rounds.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Keep-alive connections the load generator holds open.
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// nginx binary (default: `nginx` in PATH, then /usr/sbin/nginx). Without
    /// one the nginx setup is skipped and its figures are null.
    #[arg(long)]
    pub nginx: Option<PathBuf>,
    /// One round of 2 s measurements: a smoke test, not a result.
    #[arg(long)]
    pub quick: bool,
    /// Worker threads of the gateway under test. The default, 1, matches
    /// nginx's single worker process, so the two are compared like for
    /// like; 0 means one per core.
    #[arg(long, default_value_t = 1)]
    pub backstop_threads: usize,
}

/// Longest measurement accepted, so a typo cannot run for a day.
const DURATION_S_MAX: u64 = 600;
const ROUNDS_MAX: usize = 20;
/// Open-loop rates, in percent of the reference maximum.
const LOAD_PCTS: [u32; 2] = [25, 75];
/// Time between routing-table swaps in the swap test.
const SWAP_INTERVAL: Duration = Duration::from_millis(100);
/// Time a child process gets to print its listen address.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(15);
/// Time a setup gets to answer its first request.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// One admin or probe call, connect to last byte.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// Lines of a child's stdout read while looking for its listen address.
const STARTUP_LINES_MAX: usize = 100;
/// Entries of /proc looked at when listing a process's children.
const PROC_ENTRIES_MAX: usize = 100_000;

const MODEL_PATH: &str = "/v2/models/bench/infer";
const ROUTES_PATH: &str = "/api/v1/models/bench/routes";
const INFER_BODY: &str =
    r#"{"inputs":[{"name":"x","datatype":"FP32","shape":[1,4],"data":[1,2,3,4]}]}"#;
/// Capture setups: sampled shares (percent) and their setup names.
const CAPTURE_SETUPS: [(&str, f64); 2] =
    [("backstop_capture", 100.0), ("backstop_capture_1pct", 1.0)];
/// Ring size per version in the capture setups.
const CAPTURE_SAMPLES: usize = 100;
/// Redacted in the capture setups: the tensor `x` of [`INFER_BODY`] (its
/// `data` becomes "[redacted]").
const CAPTURE_REDACT: &str = "x";
/// Hashed in the capture setups: the `shape` field, in the request's and the
/// toy upstream's answer's tensors.
const CAPTURE_HASH: &str = "shape";
const SAMPLES_PATH: &str = "/api/v1/models/bench/samples?version=v1";
/// The input-signals setup's name.
const SIGNALS_SETUP: &str = "backstop_signals";
/// The signature v1 and v2 are registered with in the signals setup:
/// [`INFER_BODY`]'s tensor `x` (any batch of 4 FP32 values) and the toy
/// upstream's `score` answer.
const SIGNALS_SIGNATURE: &str = r#"{"inputs":[{"name":"x","datatype":"FP32","shape":[-1,4]}],"outputs":[{"name":"score","datatype":"FP32","shape":[-1,1]}]}"#;
/// The feature the signals setup's triggers name (sketched for drift).
const SIGNALS_FEATURE: &str = "x";
/// Share of requests checked in the signals setup, percent.
const SIGNALS_SAMPLE_PERCENT: f64 = 100.0;
/// The candidate's share while the signals setup is measured.
const SIGNALS_CANARY_PERCENT: f64 = 50.0;
/// Time the signals setup's rollout gets to route its first step.
const SIGNALS_START_TIMEOUT: Duration = Duration::from_secs(15);

/// Everything `backstop bench` measured. Field names are stable: scripts
/// and BENCHMARKS.md read them.
#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub setups: Setups,
    pub ratios: Ratios,
    pub swap: SwapReport,
    /// The capture setups' settings, and what their ring held afterwards.
    pub capture: CaptureReport,
    /// The input-signals setup's policy, and what its rollout had checked
    /// by the end of the run.
    pub signals: SignalsReport,
    pub machine: Machine,
    /// The command line that produced this report.
    pub command: String,
    pub settings: Settings,
    /// What was skipped or assumed, in sentences.
    pub notes: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Setups {
    pub direct: SetupReport,
    pub nginx: SetupReport,
    pub backstop: SetupReport,
    /// backstop with sample capture at 100%.
    pub backstop_capture: SetupReport,
    /// backstop with sample capture at 1%.
    pub backstop_capture_1pct: SetupReport,
    /// backstop with the model-aware input checks on at 100%.
    pub backstop_signals: SetupReport,
}

/// One setup's figures; null where the setup did not run or has no proxy.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SetupReport {
    /// Median over rounds of the closed-loop rate (2xx answers per second).
    pub max_rps: Option<f64>,
    /// Median over rounds, at the 25% rate.
    pub p50_us: Option<u64>,
    pub p99_us: Option<u64>,
    pub p999_us: Option<u64>,
    /// Proxy CPU time (user + system, all its processes) per request over
    /// the closed-loop runs; null for `direct`, which has no proxy.
    pub cpu_us_per_req: Option<f64>,
    /// Failed requests over every run of this setup.
    pub errors: Option<u64>,
    pub rates: Vec<RateReport>,
    /// Closed-loop rate of each round, in the order run.
    pub max_rps_rounds: Vec<f64>,
}

/// Open-loop latency at one fixed rate: medians over rounds.
#[derive(Clone, Debug, Serialize)]
pub struct RateReport {
    pub load_pct: u32,
    pub rate_rps: u64,
    pub p50_us: Option<u64>,
    pub p99_us: Option<u64>,
    pub p999_us: Option<u64>,
    pub errors: Option<u64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Ratios {
    pub backstop_over_nginx: Ratio,
    pub backstop_over_direct: Ratio,
    /// The cost of sample capture: with it on, divided by backstop without.
    pub backstop_capture_over_backstop: Ratio,
    pub backstop_capture_1pct_over_backstop: Ratio,
    /// The cost of the input checks (signature, nulls, sketches) at 100%.
    pub backstop_signals_over_backstop: Ratio,
}

/// One setup's figure divided by the other setup's (backstop's, for the
/// first two ratios); null where either is unknown.
#[derive(Clone, Debug, Serialize)]
pub struct Ratio {
    pub max_rps: Option<f64>,
    pub p99_us_at_25pct: Option<f64>,
    pub cpu_us_per_req: Option<f64>,
    pub p50_us_at_25pct: Option<f64>,
    pub p50_us_at_75pct: Option<f64>,
    pub p99_us_at_75pct: Option<f64>,
}

/// Sample capture in the capture setups.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CaptureReport {
    /// Ring size per version.
    pub samples: usize,
    pub redact: Vec<String>,
    pub hash: Vec<String>,
    /// Read back from the 100% setup's ring after the run (null: the
    /// read failed): samples kept, and whether the last one had its
    /// request's `redact` tensor redacted and its `hash` field hashed.
    pub kept: Option<u64>,
    pub redacted: Option<bool>,
    pub hashed: Option<bool>,
}

/// The model-aware input checks in the signals setup.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SignalsReport {
    /// Share of requests checked, percent.
    pub sample_percent: f64,
    /// The features sketched (the triggers' `feature`s).
    pub features: Vec<String>,
    /// The rollout's triggers, as written (all `action: notify`).
    pub triggers: Vec<String>,
    /// Read back from the rollout's status after the run (null: the read
    /// failed or the figure was missing). `phase` and `candidate_percent`
    /// show that the rollout still held its first step.
    pub rollout: Option<String>,
    pub phase: Option<String>,
    pub candidate_percent: Option<f64>,
    /// Candidate (v2) requests checked against its signature during the
    /// step: the `schema_violation_rate` trigger's sample.
    pub checked: Option<u64>,
    /// Schema violations among them (the trigger's rate × `checked`).
    pub violations: Option<u64>,
    /// `schema_violation_rate` over the step, each version; the baseline's
    /// is null if none of its requests was checked.
    pub violation_rate_candidate: Option<f64>,
    pub violation_rate_baseline: Option<f64>,
    /// `null_rate` of the feature, candidate's, over the step.
    pub null_rate_candidate: Option<f64>,
    /// `drift_psi` of the feature, candidate vs baseline sketches.
    pub drift_psi: Option<f64>,
    /// True when the checks ran as intended: the rollout still on its
    /// first step, candidate requests checked, none of them and none of
    /// the baseline's (some checked) breaking the signature. False: a note
    /// says so, and the setup's figures do not measure the checks.
    pub ran: bool,
}

/// Routing-table swaps under load.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SwapReport {
    /// Swaps acknowledged by the admin API.
    pub swaps: u64,
    /// Swaps whose first request was seen (the others had no request before
    /// the next swap, or their generation could not be read back).
    pub measured: u64,
    /// Swap → first request routed by the new table. Includes the gap until
    /// the next request arrives (1 / rate on average).
    pub p50_us: Option<f64>,
    pub p99_us: Option<f64>,
    pub max_us: Option<f64>,
    /// Failed load requests during the swap run.
    pub errors: u64,
    /// Failed admin calls (PUT or GET).
    pub admin_errors: u64,
    pub rate_rps: u64,
    pub load_p99_us: u64,
    /// In-process, with a thread routing requests back to back (no gap to
    /// the next request): table install → first request that used it.
    /// This is the mechanism's own cost; the target is ≤ 1 µs at p99.
    pub visible: SwapVisibility,
}

/// Swap-to-first-use of the routing table, measured in-process.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SwapVisibility {
    pub swaps: u64,
    pub p50_ns: Option<u64>,
    pub p99_ns: Option<u64>,
    pub max_ns: Option<u64>,
    /// Requests routed by the reader thread during the measurement.
    pub routed: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    pub cores: usize,
    pub kernel: String,
    pub cpu_model: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Settings {
    pub duration_s: u64,
    pub rounds: usize,
    pub connections: usize,
    pub quick: bool,
    /// Worker threads of the gateway under test (0: one per core).
    pub backstop_threads: usize,
    pub nginx_version: Option<String>,
    /// Clock ticks per second used to convert /proc CPU times.
    pub clk_tck: u64,
}

/// Runs the whole benchmark. Progress goes to stderr; the report is returned.
pub async fn run(options: BenchOptions) -> anyhow::Result<BenchReport> {
    // Ctrl-C drops the benchmark future, and with it the guards that stop
    // the child processes.
    tokio::select! {
        result = bench(options) => result,
        _ = tokio::signal::ctrl_c() => anyhow::bail!("interrupted"),
    }
}

/// The settings a run actually uses, after `--quick` and checks.
struct Plan {
    duration: Duration,
    rounds: usize,
    connections: usize,
    warmup: Duration,
}

async fn bench(options: BenchOptions) -> anyhow::Result<BenchReport> {
    let plan = if options.quick {
        Plan {
            duration: Duration::from_secs(2),
            rounds: 1,
            connections: options.connections,
            warmup: Duration::from_millis(300),
        }
    } else {
        Plan {
            duration: Duration::from_secs(options.duration_s),
            rounds: options.rounds,
            connections: options.connections,
            warmup: Duration::from_secs(1),
        }
    };
    anyhow::ensure!(
        (1..=DURATION_S_MAX).contains(&plan.duration.as_secs()),
        "--duration-s must be 1..={DURATION_S_MAX}"
    );
    anyhow::ensure!(
        (1..=ROUNDS_MAX).contains(&plan.rounds),
        "--rounds must be 1..={ROUNDS_MAX}"
    );
    anyhow::ensure!(
        (1..=loadgen::CONNECTIONS_MAX).contains(&plan.connections),
        "--connections must be 1..={}",
        loadgen::CONNECTIONS_MAX
    );

    let mut notes = Vec::new();
    let (clk_tck, assumed) = clock_ticks_per_s();
    if assumed {
        notes.push(format!(
            "`getconf CLK_TCK` failed; CPU times assume {clk_tck} ticks per second."
        ));
    }
    let exe = std::env::current_exe().context("finding the backstop binary")?;
    // Declared first so it is dropped last, after the processes using it.
    let dir = TempDir::create()?;

    let toy = start_toy(&exe, &dir).await?;
    let threads = options.backstop_threads;
    let backstop = start_backstop(&exe, &dir, toy.addr, threads, "backstop", None).await?;
    let mut capture_backstops = Vec::with_capacity(CAPTURE_SETUPS.len());
    for (name, percent) in CAPTURE_SETUPS {
        let process = start_backstop(&exe, &dir, toy.addr, threads, name, Some(percent)).await?;
        capture_backstops.push((name, process));
    }
    let signals_backstop =
        start_backstop(&exe, &dir, toy.addr, threads, SIGNALS_SETUP, None).await?;
    let signals_policy = signals_policy(&plan);
    let signals_rollout = start_signals_rollout(signals_backstop.admin, &signals_policy)
        .await
        .context("starting the signals setup's rollout")?;
    let nginx_binary = options.nginx.clone().or_else(find_nginx);
    let mut nginx_version = None;
    let nginx = match nginx_binary {
        Some(binary) => {
            anyhow::ensure!(
                binary.is_file(),
                "nginx binary {} not found",
                binary.display()
            );
            nginx_version = nginx_version_of(&binary);
            Some(start_nginx(&binary, &dir, toy.addr).await?)
        }
        None => {
            notes.push(
                "nginx not found (PATH, /usr/sbin/nginx, --nginx): the nginx setup was skipped."
                    .to_string(),
            );
            None
        }
    };

    let mut targets = vec![Target {
        name: "direct",
        addr: toy.addr,
        pid: None,
    }];
    if let Some(nginx) = &nginx {
        targets.push(Target {
            name: "nginx",
            addr: nginx.addr,
            pid: nginx.process.pid(),
        });
    }
    targets.push(Target {
        name: "backstop",
        addr: backstop.data,
        pid: backstop.process.pid(),
    });
    for (name, process) in &capture_backstops {
        targets.push(Target {
            name,
            addr: process.data,
            pid: process.process.pid(),
        });
    }
    targets.push(Target {
        name: SIGNALS_SETUP,
        addr: signals_backstop.data,
        pid: signals_backstop.process.pid(),
    });
    for target in &targets {
        wait_ready(target.addr)
            .await
            .with_context(|| format!("{} never answered", target.name))?;
        // Fill connection pools and caches before anything is measured.
        loadgen::run(spec(
            target.addr,
            plan.connections,
            plan.warmup,
            Mode::ClosedLoop,
        ))
        .await?;
    }

    let mut runs: Vec<SetupRuns> = targets.iter().map(|_| SetupRuns::default()).collect();

    // Step 1: closed-loop maximum and CPU per request.
    for round in 0..plan.rounds {
        for index in rotated(targets.len(), round) {
            let target = &targets[index];
            let cpu_before = target.pid.map(cpu_ticks_of_tree);
            let started = Instant::now();
            let report = loadgen::run(spec(
                target.addr,
                plan.connections,
                plan.duration,
                Mode::ClosedLoop,
            ))
            .await?;
            let cpu = cpu_before
                .zip(target.pid.map(cpu_ticks_of_tree))
                .map(|(before, after)| {
                    let cpu_us = after.saturating_sub(before) as f64 * 1e6 / clk_tck as f64;
                    cpu_us / report.sent.max(1) as f64
                });
            eprintln!(
                "bench: round {}/{} closed loop {:>8}: {:>9.0} rps, {} errors, cpu {} µs/req ({:.1} s)",
                round + 1,
                plan.rounds,
                target.name,
                report.achieved_rps,
                report.errors,
                cpu.map_or("-".to_string(), |c| format!("{c:.1}")),
                started.elapsed().as_secs_f64(),
            );
            let setup = &mut runs[index];
            setup.max_rps.push(report.achieved_rps);
            setup.cpu_us_per_req.extend(cpu);
            setup.errors += report.errors;
        }
    }

    // Step 2: open loop at fixed rates, the same for every setup.
    let reference = targets
        .iter()
        .position(|t| t.name == "nginx")
        .or_else(|| targets.iter().position(|t| t.name == "backstop"))
        .context("no reference setup")?;
    let reference_rps = median_f64(&runs[reference].max_rps).unwrap_or(0.0);
    anyhow::ensure!(
        reference_rps >= 4.0,
        "{} reached only {reference_rps:.1} rps; nothing to measure",
        targets[reference].name
    );
    let rates: Vec<u64> = LOAD_PCTS
        .iter()
        .map(|pct| ((reference_rps * f64::from(*pct) / 100.0).round() as u64).max(1))
        .collect();
    for round in 0..plan.rounds {
        for index in rotated(targets.len(), round) {
            let target = &targets[index];
            for (slot, rate) in rates.iter().enumerate() {
                let mode = Mode::OpenLoop { rate_per_s: *rate };
                let report =
                    loadgen::run(spec(target.addr, plan.connections, plan.duration, mode)).await?;
                eprintln!(
                    "bench: round {}/{} open loop {:>8} at {:>3}% ({} rps): p50 {} µs, p99 {} µs, p99.9 {} µs, {} errors",
                    round + 1,
                    plan.rounds,
                    target.name,
                    LOAD_PCTS[slot],
                    rate,
                    report.p50_us,
                    report.p99_us,
                    report.p999_us,
                    report.errors,
                );
                runs[index].rates[slot].push(report);
            }
        }
    }

    // Step 3: routing-table swaps under the 75% load.
    let mut swap = swap_under_load(&backstop, toy.addr, rates[1], &plan).await?;
    swap.visible = tokio::task::spawn_blocking(|| swap_visibility(SWAP_VISIBILITY_SWAPS))
        .await
        .context("swap visibility task failed")??;
    eprintln!(
        "bench: in-process swap → first use over {} swaps: p50 {} ns, p99 {} ns, max {} ns",
        swap.visible.swaps,
        fmt_opt_u64(swap.visible.p50_ns),
        fmt_opt_u64(swap.visible.p99_ns),
        fmt_opt_u64(swap.visible.max_ns),
    );
    eprintln!(
        "bench: swaps {}: p50 {} µs, p99 {} µs, max {} µs, {} load errors",
        swap.swaps,
        fmt_opt_f64(swap.p50_us, 1),
        fmt_opt_f64(swap.p99_us, 1),
        fmt_opt_f64(swap.max_us, 1),
        swap.errors
    );

    // The ring of the 100% setup: full, and redacted as configured?
    let mut capture = CaptureReport {
        samples: CAPTURE_SAMPLES,
        redact: vec![CAPTURE_REDACT.to_string()],
        hash: vec![CAPTURE_HASH.to_string()],
        ..CaptureReport::default()
    };
    match admin_call(
        capture_backstops[0].1.admin,
        Method::GET,
        SAMPLES_PATH,
        None,
    )
    .await
    {
        Ok(value) => check_samples(&value, &mut capture),
        Err(error) => notes.push(format!("Reading the capture ring failed: {error:#}")),
    }
    eprintln!(
        "bench: capture ring: {} samples kept, redacted {}, hashed {}",
        fmt_opt_u64(capture.kept),
        capture.redacted.unwrap_or(false),
        capture.hashed.unwrap_or(false),
    );

    // The signals setup's rollout: still on its first step, requests
    // checked, none broken?
    let mut signals = SignalsReport {
        sample_percent: SIGNALS_SAMPLE_PERCENT,
        features: vec![SIGNALS_FEATURE.to_string()],
        triggers: signals_triggers().iter().map(|t| t.to_string()).collect(),
        rollout: Some(signals_rollout.clone()),
        ..SignalsReport::default()
    };
    let rollout_path = format!("/api/v1/rollouts/{signals_rollout}");
    match admin_call(signals_backstop.admin, Method::GET, &rollout_path, None).await {
        Ok(value) => check_signals(&value, &mut signals),
        Err(error) => notes.push(format!("Reading the signals rollout failed: {error:#}")),
    }
    eprintln!(
        "bench: signals rollout {}: phase {}, candidate {}%, {} inputs checked, {} schema violations, PSI {}",
        signals_rollout,
        signals.phase.as_deref().unwrap_or("?"),
        fmt_opt_f64(signals.candidate_percent, 0),
        fmt_opt_u64(signals.checked),
        fmt_opt_u64(signals.violations),
        fmt_opt_f64(signals.drift_psi, 4),
    );
    if !signals.ran {
        let message = format!(
            "The signals setup's input checks did not run as intended (phase {}, candidate {}%, \
             {} inputs checked, {} schema violations): its figures do not measure the checks.",
            signals.phase.as_deref().unwrap_or("unknown"),
            fmt_opt_f64(signals.candidate_percent, 0),
            fmt_opt_u64(signals.checked),
            fmt_opt_u64(signals.violations),
        );
        eprintln!("bench: WARNING: {message}");
        notes.push(message);
    }

    let mut summarized: Vec<(&str, SetupReport)> = targets
        .iter()
        .zip(&runs)
        .map(|(target, setup_runs)| (target.name, setup_runs.summarize(&rates)))
        .collect();
    let mut take = |name: &str| {
        summarized
            .iter()
            .position(|(n, _)| *n == name)
            .map(|i| summarized.swap_remove(i).1)
    };
    let direct = take("direct").context("direct setup missing")?;
    let backstop_report = take("backstop").context("backstop setup missing")?;
    let capture_report = take(CAPTURE_SETUPS[0].0).context("capture setup missing")?;
    let capture_1pct_report = take(CAPTURE_SETUPS[1].0).context("capture setup missing")?;
    let signals_report = take(SIGNALS_SETUP).context("signals setup missing")?;
    let nginx_report = take("nginx");
    // Skipped nginx: same shape, null figures.
    let nginx_report = nginx_report.unwrap_or_else(|| SetupReport {
        rates: LOAD_PCTS
            .iter()
            .zip(&rates)
            .map(|(pct, rate)| RateReport {
                load_pct: *pct,
                rate_rps: *rate,
                p50_us: None,
                p99_us: None,
                p999_us: None,
                errors: None,
            })
            .collect(),
        ..SetupReport::default()
    });
    let ratios = Ratios {
        backstop_over_nginx: Ratio::of(&backstop_report, &nginx_report),
        backstop_over_direct: Ratio::of(&backstop_report, &direct),
        backstop_capture_over_backstop: Ratio::of(&capture_report, &backstop_report),
        backstop_capture_1pct_over_backstop: Ratio::of(&capture_1pct_report, &backstop_report),
        backstop_signals_over_backstop: Ratio::of(&signals_report, &backstop_report),
    };

    // Stop the proxies before the upstream, so neither logs a lost upstream.
    drop(nginx);
    drop(backstop);
    drop(capture_backstops);
    drop(signals_backstop);
    drop(toy);
    drop(dir);

    Ok(BenchReport {
        setups: Setups {
            direct,
            nginx: nginx_report,
            backstop: backstop_report,
            backstop_capture: capture_report,
            backstop_capture_1pct: capture_1pct_report,
            backstop_signals: signals_report,
        },
        ratios,
        swap,
        capture,
        signals,
        machine: machine(),
        command: command_line(),
        settings: Settings {
            duration_s: plan.duration.as_secs(),
            rounds: plan.rounds,
            connections: plan.connections,
            quick: options.quick,
            backstop_threads: options.backstop_threads,
            nginx_version,
            clk_tck,
        },
        notes,
    })
}

/// One setup as the load generator sees it.
struct Target {
    name: &'static str,
    addr: SocketAddr,
    /// The proxy process (its children count too); None for `direct`.
    pid: Option<u32>,
}

/// Raw results of one setup over all rounds.
#[derive(Default)]
struct SetupRuns {
    max_rps: Vec<f64>,
    cpu_us_per_req: Vec<f64>,
    /// Closed-loop errors.
    errors: u64,
    /// Open-loop reports per rate in [`LOAD_PCTS`], one per round.
    rates: [Vec<LoadReport>; LOAD_PCTS.len()],
}

impl SetupRuns {
    fn summarize(&self, rates: &[u64]) -> SetupReport {
        let rate_reports: Vec<RateReport> = LOAD_PCTS
            .iter()
            .zip(rates)
            .zip(&self.rates)
            .map(|((pct, rate), reports)| RateReport {
                load_pct: *pct,
                rate_rps: *rate,
                p50_us: median_u64(reports.iter().map(|r| r.p50_us)),
                p99_us: median_u64(reports.iter().map(|r| r.p99_us)),
                p999_us: median_u64(reports.iter().map(|r| r.p999_us)),
                errors: Some(reports.iter().map(|r| r.errors).sum()),
            })
            .collect();
        let open_errors: u64 = rate_reports.iter().filter_map(|r| r.errors).sum();
        SetupReport {
            max_rps: median_f64(&self.max_rps),
            p50_us: rate_reports[0].p50_us,
            p99_us: rate_reports[0].p99_us,
            p999_us: rate_reports[0].p999_us,
            cpu_us_per_req: median_f64(&self.cpu_us_per_req),
            errors: Some(self.errors + open_errors),
            rates: rate_reports,
            max_rps_rounds: self.max_rps.clone(),
        }
    }
}

impl Ratio {
    fn of(backstop: &SetupReport, other: &SetupReport) -> Ratio {
        let at = |setup: &SetupReport, slot: usize, p99: bool| {
            let rate = setup.rates.get(slot)?;
            if p99 { rate.p99_us } else { rate.p50_us }.map(|v| v as f64)
        };
        fn divide(a: Option<f64>, b: Option<f64>) -> Option<f64> {
            match (a, b) {
                (Some(a), Some(b)) if b > 0.0 => Some(a / b),
                _ => None,
            }
        }
        let as_f64 = |v: Option<u64>| v.map(|v| v as f64);
        Ratio {
            max_rps: divide(backstop.max_rps, other.max_rps),
            p99_us_at_25pct: divide(as_f64(backstop.p99_us), as_f64(other.p99_us)),
            cpu_us_per_req: divide(backstop.cpu_us_per_req, other.cpu_us_per_req),
            p50_us_at_25pct: divide(at(backstop, 0, false), at(other, 0, false)),
            p50_us_at_75pct: divide(at(backstop, 1, false), at(other, 1, false)),
            p99_us_at_75pct: divide(at(backstop, 1, true), at(other, 1, true)),
        }
    }
}

/// Setup indices in the order round `round` runs them: rotated by one per
/// round, so each setup takes each position equally often.
fn rotated(count: usize, round: usize) -> impl Iterator<Item = usize> {
    (0..count).map(move |i| (i + round) % count)
}

fn spec(target: SocketAddr, connections: usize, duration: Duration, mode: Mode) -> LoadSpec {
    LoadSpec {
        stop: None,
        target,
        method: Method::POST,
        path: MODEL_PATH.to_string(),
        body: Bytes::from_static(INFER_BODY.as_bytes()),
        headers: vec![(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        sticky_header: None,
        connections,
        duration,
        mode,
    }
}

/// Median (the lower middle for an even count); None when empty.
fn median_u64(values: impl Iterator<Item = u64>) -> Option<u64> {
    let mut values: Vec<u64> = values.collect();
    values.sort_unstable();
    values.get(values.len().saturating_sub(1) / 2).copied()
}

fn median_f64(values: &[f64]) -> Option<f64> {
    let mut values = values.to_vec();
    values.sort_by(f64::total_cmp);
    values.get(values.len().saturating_sub(1) / 2).copied()
}

/// Nearest-rank quantile of sorted values.
fn quantile_sorted(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

// ---------------------------------------------------------------------------
// Routing-table swaps under load.

/// Runs the 75% load against backstop and replaces the routing table every
/// [`SWAP_INTERVAL`], flipping all weight between v1 and v2 (both on the same
/// toy upstream, so the answers do not change, only the table does). Before
/// each swap it reads back the previous one's `swap_to_first_request_ns`.
async fn swap_under_load(
    backstop: &BackstopProcess,
    toy: SocketAddr,
    rate_rps: u64,
    plan: &Plan,
) -> anyhow::Result<SwapReport> {
    let load = tokio::spawn(loadgen::run(spec(
        backstop.data,
        plan.connections,
        plan.duration,
        Mode::OpenLoop {
            rate_per_s: rate_rps,
        },
    )));
    // Stop swapping a little before the load ends, so the last swap still
    // meets a request.
    let swaps_until = Instant::now() + plan.duration.saturating_sub(Duration::from_millis(300));
    let swaps_max = plan.duration.as_millis() / SWAP_INTERVAL.as_millis() + 1;
    let mut ticker = tokio::time::interval(SWAP_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    let mut report = SwapReport {
        rate_rps,
        ..SwapReport::default()
    };
    let mut samples_us = Vec::new();
    let mut pending: Option<u64> = None;
    for swap in 0..swaps_max {
        ticker.tick().await;
        if Instant::now() >= swaps_until {
            break;
        }
        if let Some(generation) = pending.take() {
            collect_swap(backstop.admin, generation, &mut report, &mut samples_us).await;
        }
        // Even swaps send everything to v2, odd ones back to v1.
        let to_v2 = swap % 2 == 0;
        let body = routes_body(toy, if to_v2 { 0 } else { 100 });
        match admin_call(backstop.admin, Method::PUT, ROUTES_PATH, Some(body)).await {
            Ok(value) => match value.get("generation").and_then(serde_json::Value::as_u64) {
                Some(generation) => {
                    report.swaps += 1;
                    pending = Some(generation);
                }
                None => report.admin_errors += 1,
            },
            Err(error) => {
                if report.admin_errors == 0 {
                    eprintln!("bench: swap failed: {error:#}");
                }
                report.admin_errors += 1;
            }
        }
    }
    if let Some(generation) = pending {
        collect_swap(backstop.admin, generation, &mut report, &mut samples_us).await;
    }
    let load = load.await.context("swap load task failed")??;

    samples_us.sort_by(f64::total_cmp);
    report.measured = samples_us.len() as u64;
    report.p50_us = quantile_sorted(&samples_us, 0.5);
    report.p99_us = quantile_sorted(&samples_us, 0.99);
    report.max_us = samples_us.last().copied();
    report.errors = load.errors;
    report.load_p99_us = load.p99_us;
    Ok(report)
}

/// Swaps measured in-process.
const SWAP_VISIBILITY_SWAPS: u64 = 2000;

/// Measures how soon a routing table is used after it is installed when
/// requests never stop arriving: a reader thread does what the request path
/// does (load the tables, take the model's table, note it is used, choose a
/// version) back to back while this thread installs tables through
/// `Gateway::replace_model`, the path the admin API takes. Each table
/// records the time from the moment of its pointer swap to
/// its first use.
fn swap_visibility(swaps: u64) -> anyhow::Result<SwapVisibility> {
    use crate::config::{Config, ModelSpec};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    let text = "models:\n  bench:\n    versions:\n      \
                - { name: v1, weight: 1, endpoints: [\"http://127.0.0.1:9\"] }\n      \
                - { name: v2, weight: 1, endpoints: [\"http://127.0.0.1:9\"] }\n";
    let config = Config::parse(Path::new("bench.yaml"), text)?;
    let spec: ModelSpec = config.models["bench"].clone();
    let gateway = crate::gateway::Gateway::new(config).map_err(anyhow::Error::msg)?;
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (gateway, stop) = (gateway.clone(), stop.clone());
        std::thread::spawn(move || {
            let headers = http::HeaderMap::new();
            let mut routed = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if let Some(table) = gateway.table("bench") {
                    table.mark_used();
                    std::hint::black_box(table.choose(&headers, 0).version);
                    routed += 1;
                }
            }
            routed
        })
    };
    let mut samples = Vec::with_capacity(swaps as usize);
    for i in 0..swaps {
        let mut next = spec.clone();
        next.versions[0].weight = 1 + (i % 2) as u32;
        gateway
            .replace_model("bench", next, None)
            .map_err(|e| anyhow::anyhow!("swap refused: {e:?}"))?;
        // Give the reader time to reach the new table before the next swap.
        std::thread::sleep(Duration::from_micros(200));
        if let Some(ns) = gateway
            .table("bench")
            .and_then(|t| t.swap_to_first_request_ns())
        {
            samples.push(ns);
        }
    }
    stop.store(true, Ordering::Relaxed);
    let routed = reader
        .join()
        .map_err(|_| anyhow::anyhow!("swap reader panicked"))?;
    samples.sort_unstable();
    let quantile = |q: f64| {
        (!samples.is_empty()).then(|| {
            samples[((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len()) - 1]
        })
    };
    Ok(SwapVisibility {
        swaps: samples.len() as u64,
        p50_ns: quantile(0.5),
        p99_ns: quantile(0.99),
        max_ns: samples.last().copied(),
        routed,
    })
}

/// Reads back swap `generation`'s time to first request, if it had one.
async fn collect_swap(
    admin: SocketAddr,
    generation: u64,
    report: &mut SwapReport,
    samples_us: &mut Vec<f64>,
) {
    match admin_call(admin, Method::GET, ROUTES_PATH, None).await {
        Ok(value) => {
            let same =
                value.get("generation").and_then(serde_json::Value::as_u64) == Some(generation);
            let ns = value
                .get("swap_to_first_request_ns")
                .and_then(serde_json::Value::as_u64);
            if let (true, Some(ns)) = (same, ns) {
                samples_us.push(ns as f64 / 1000.0);
            }
        }
        Err(_) => report.admin_errors += 1,
    }
}

/// Reads a samples answer (`{samples: [...]}`) into `report`: how many
/// were kept, and whether the newest request had the tensor
/// [`CAPTURE_REDACT`] redacted and [`CAPTURE_HASH`] hashed.
fn check_samples(answer: &serde_json::Value, report: &mut CaptureReport) {
    let samples = answer.get("samples").and_then(serde_json::Value::as_array);
    report.kept = samples.map(|s| s.len() as u64);
    let tensor = samples
        .and_then(|s| s.last())
        .and_then(|s| s.pointer("/request/json/inputs/0"));
    report.redacted =
        Some(tensor.and_then(|t| t.get("data")) == Some(&crate::redact::REDACTED.into()));
    report.hashed = Some(
        tensor
            .and_then(|t| t.get(CAPTURE_HASH))
            .and_then(serde_json::Value::as_str)
            .is_some_and(|h| h.starts_with("sha256:")),
    );
}

/// The signals setup's triggers (YAML flow mappings), all `notify`: the
/// rollout never rolls back, whatever they see.
fn signals_triggers() -> [String; 3] {
    let f = SIGNALS_FEATURE;
    [
        r#"{ metric: schema_violation_rate, above: "1%", action: notify }"#.to_string(),
        format!(r#"{{ metric: null_rate, feature: {f}, above: "1%", action: notify }}"#),
        format!(r#"{{ metric: drift_psi, feature: {f}, above: "0.25", action: notify }}"#),
    ]
}

/// The signals setup's policy: a canary v1 → v2 whose first step (50%)
/// bakes for longer than the whole bench can run, every request checked.
fn signals_policy(plan: &Plan) -> String {
    // Upper bound of the bench's length: every setup (8 at most, with
    // warm-ups and the swap test) three measurements a round, plus an hour.
    let bench_s = plan.rounds as u64 * 8 * 3 * plan.duration.as_secs().max(1);
    let bake_h = bench_s / 3600 + 1;
    let mut text = format!(
        "model: bench\ncandidate: v2\nbaseline: v1\n\
         strategy: {{ canary: {{ steps: [{SIGNALS_CANARY_PERCENT}, 100], bake: {bake_h}h }} }}\n\
         signals: {{ sample_percent: {SIGNALS_SAMPLE_PERCENT} }}\n\
         triggers:\n"
    );
    for trigger in signals_triggers() {
        text.push_str(&format!("  - {trigger}\n"));
    }
    text
}

/// Registers v1 and v2 of the bench model with [`SIGNALS_SIGNATURE`] and
/// starts the rollout of `policy` over the admin API; returns its id once
/// its first step routes the candidate's share.
async fn start_signals_rollout(admin: SocketAddr, policy: &str) -> anyhow::Result<String> {
    let stored = admin_call(
        admin,
        Method::PUT,
        "/api/v1/artifacts",
        Some("backstop bench model".to_string()),
    )
    .await?;
    let digest = stored
        .get("digest")
        .and_then(serde_json::Value::as_str)
        .context("artifact upload: no digest")?
        .to_string();
    let signature: serde_json::Value = serde_json::from_str(SIGNALS_SIGNATURE)?;
    for version in ["v1", "v2"] {
        let body = serde_json::json!({
            "id": version,
            "digest": digest,
            "signature": signature,
            "reason": "backstop bench: input signals setup",
        });
        admin_call(
            admin,
            Method::POST,
            "/api/v1/models/bench/versions",
            Some(body.to_string()),
        )
        .await?;
    }
    let body = serde_json::json!({ "policy": policy, "file": "bench-signals.yaml" });
    let view = admin_call(
        admin,
        Method::POST,
        "/api/v1/rollouts",
        Some(body.to_string()),
    )
    .await?;
    let id = view
        .get("id")
        .and_then(serde_json::Value::as_str)
        .context("rollout answer has no id")?
        .to_string();
    let path = format!("/api/v1/rollouts/{id}");
    let deadline = Instant::now() + SIGNALS_START_TIMEOUT;
    // Bounded by the deadline; one look per 100 ms.
    loop {
        let view = admin_call(admin, Method::GET, &path, None).await?;
        let percent = view
            .get("candidate_percent")
            .and_then(serde_json::Value::as_f64);
        if view.get("phase") == Some(&"running".into()) && percent == Some(SIGNALS_CANARY_PERCENT) {
            return Ok(id);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "rollout {id} did not route its first step within {SIGNALS_START_TIMEOUT:?}: {view}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reads a rollout's status into `report`: its phase and share, and what
/// its input triggers (in [`signals_triggers`]'s order) counted.
fn check_signals(view: &serde_json::Value, report: &mut SignalsReport) {
    let f64_at = |pointer: &str| view.pointer(pointer).and_then(serde_json::Value::as_f64);
    report.phase = view
        .get("phase")
        .and_then(serde_json::Value::as_str)
        .map(str::to_string);
    report.candidate_percent = f64_at("/candidate_percent");
    report.checked = view
        .pointer("/triggers/0/candidate_requests")
        .and_then(serde_json::Value::as_u64);
    report.violation_rate_candidate = f64_at("/triggers/0/candidate_value");
    report.violation_rate_baseline = f64_at("/triggers/0/baseline_value");
    report.violations = report
        .checked
        .zip(report.violation_rate_candidate)
        .map(|(checked, rate)| (checked as f64 * rate).round() as u64);
    report.null_rate_candidate = f64_at("/triggers/1/candidate_value");
    report.drift_psi = f64_at("/triggers/2/candidate_value");
    report.ran = report.phase.as_deref() == Some("running")
        && report.checked.is_some_and(|c| c > 0)
        && report.violations == Some(0)
        && report.violation_rate_baseline == Some(0.0);
}

/// The bench model's routing table with `v1_weight` on v1, the rest on v2.
fn routes_body(toy: SocketAddr, v1_weight: u32) -> String {
    let endpoint = format!("http://{toy}");
    serde_json::json!({
        "versions": [
            { "name": "v1", "weight": v1_weight, "endpoints": [endpoint] },
            { "name": "v2", "weight": 100 - v1_weight, "endpoints": [endpoint] },
        ]
    })
    .to_string()
}

// ---------------------------------------------------------------------------
// A tiny HTTP client for probes and the admin API (one connection per call:
// these calls are rare and must not share state with the load).

/// Sends one request and returns the status and the whole body.
async fn http_call(
    addr: SocketAddr,
    method: Method,
    path: &str,
    body: Option<String>,
) -> anyhow::Result<(StatusCode, Bytes)> {
    let call = async {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        let driver = tokio::spawn(connection);
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, addr.to_string())
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.unwrap_or_default())))?;
        let result = async {
            let response = sender.send_request(request).await?;
            let status = response.status();
            let bytes = response.into_body().collect().await?.to_bytes();
            anyhow::Ok((status, bytes))
        }
        .await;
        driver.abort();
        result
    };
    timeout(CALL_TIMEOUT, call)
        .await
        .with_context(|| format!("{addr}{path}: no answer within {CALL_TIMEOUT:?}"))?
}

/// An admin API call that must succeed with a JSON body.
async fn admin_call(
    addr: SocketAddr,
    method: Method,
    path: &str,
    body: Option<String>,
) -> anyhow::Result<serde_json::Value> {
    let (status, bytes) = http_call(addr, method.clone(), path, body).await?;
    anyhow::ensure!(
        status.is_success(),
        "{method} {path}: {status}: {}",
        String::from_utf8_lossy(&bytes)
    );
    serde_json::from_slice(&bytes).with_context(|| format!("{method} {path}: answer is not JSON"))
}

/// Waits until `addr` answers an inference request with a 2xx.
async fn wait_ready(addr: SocketAddr) -> anyhow::Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut last = String::from("no attempt");
    // Bounded by the deadline; one attempt per 50 ms at most.
    while Instant::now() < deadline {
        match http_call(addr, Method::POST, MODEL_PATH, Some(INFER_BODY.to_string())).await {
            Ok((status, _)) if status.is_success() => return Ok(()),
            Ok((status, body)) => last = format!("{status}: {}", String::from_utf8_lossy(&body)),
            Err(error) => last = format!("{error:#}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("not ready after {READY_TIMEOUT:?}: {last}")
}

// ---------------------------------------------------------------------------
// Child processes.

/// A child process that is stopped when this guard drops: SIGTERM, up to
/// 2 s to exit, then SIGKILL for it and any children it left behind.
struct ChildProcess {
    name: &'static str,
    child: tokio::process::Child,
}

impl ChildProcess {
    fn spawn(
        name: &'static str,
        command: &mut tokio::process::Command,
        stderr_file: &Path,
    ) -> anyhow::Result<ChildProcess> {
        let stderr = std::fs::File::create(stderr_file)?;
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            // Last resort if the guard's own stop is skipped.
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(ChildProcess { name, child })
    }

    fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Reads stdout lines until `parse` accepts one, then drains the rest in
    /// the background (a full pipe would block the child).
    async fn read_until<T>(
        &mut self,
        stderr_file: &Path,
        mut parse: impl FnMut(&str) -> Option<T>,
    ) -> anyhow::Result<T> {
        let stdout = self.child.stdout.take().context("stdout not piped")?;
        let mut lines = BufReader::new(stdout).lines();
        let found = timeout(STARTUP_TIMEOUT, async {
            for _ in 0..STARTUP_LINES_MAX {
                match lines.next_line().await {
                    Ok(Some(line)) => {
                        if let Some(value) = parse(&line) {
                            return Some(value);
                        }
                    }
                    Ok(None) | Err(_) => return None,
                }
            }
            None
        })
        .await
        .ok()
        .flatten();
        match found {
            Some(value) => {
                let mut rest = lines.into_inner();
                // Ends at EOF, i.e. when the child exits.
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut rest, &mut tokio::io::sink()).await;
                });
                Ok(value)
            }
            None => {
                let log = std::fs::read_to_string(stderr_file).unwrap_or_default();
                let tail: String = log.lines().rev().take(20).collect::<Vec<_>>().join("\n");
                anyhow::bail!("{} did not start: {}", self.name, tail.trim())
            }
        }
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        let Some(pid) = self.child.id() else {
            return; // Already exited and reaped.
        };
        // nginx's master stops its workers on SIGTERM; a SIGKILLed master
        // would leave them running. So note its children first, then TERM.
        let children: Vec<(u32, String)> = children_of(pid)
            .into_iter()
            .filter_map(|child| Some((child, proc_stat(child)?.comm)))
            .collect();
        signal(pid, "TERM");
        let mut exited = false;
        // Bounded: 200 × 10 ms.
        for _ in 0..200 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                exited = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        if !exited {
            let _ = self.child.start_kill();
            let _ = self.child.try_wait();
        }
        for (child, comm) in children {
            // Only a child that outlived its parent, and only if the pid
            // still names the same program (not a recycled pid).
            if proc_stat(child).is_some_and(|s| s.comm == comm) {
                signal(child, "KILL");
            }
        }
    }
}

/// Sends a signal by pid with the `kill` utility (libc is not a dependency).
fn signal(pid: u32, name: &str) {
    let _ = std::process::Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

struct ToyProcess {
    addr: SocketAddr,
    _process: ChildProcess,
}

async fn start_toy(exe: &Path, dir: &TempDir) -> anyhow::Result<ToyProcess> {
    let log = dir.path.join("toy.stderr");
    let mut command = tokio::process::Command::new(exe);
    command.args(["toy-upstream", "--listen", "127.0.0.1:0", "--version", "v1"]);
    let mut process = ChildProcess::spawn("toy upstream", &mut command, &log)?;
    let addr = process
        .read_until(&log, |line| {
            line.strip_prefix("toy upstream listening: http://")?
                .trim()
                .parse()
                .ok()
        })
        .await?;
    Ok(ToyProcess {
        addr,
        _process: process,
    })
}

struct BackstopProcess {
    data: SocketAddr,
    admin: SocketAddr,
    process: ChildProcess,
}

async fn start_backstop(
    exe: &Path,
    dir: &TempDir,
    toy: SocketAddr,
    threads: usize,
    // The setup's name: its config, data and log files are named after it.
    name: &str,
    // Sample capture on: the sampled percent.
    capture: Option<f64>,
) -> anyhow::Result<BackstopProcess> {
    let config = dir.path.join(format!("{name}.yaml"));
    let mut top = if threads == 0 {
        String::new()
    } else {
        format!("worker_threads: {threads}\n")
    };
    // The registry's files stay in the bench's temporary directory.
    top.push_str(&format!(
        "data_dir: \"{}\"\n",
        dir.path.join(format!("{name}-data")).display()
    ));
    let capture = capture.map_or(String::new(), |percent| {
        format!(
            "    capture: {{ sample_percent: {percent}, samples: {CAPTURE_SAMPLES}, \
             redact: [{CAPTURE_REDACT}], hash: [{CAPTURE_HASH}] }}\n"
        )
    });
    std::fs::write(
        &config,
        format!(
            "{top}listen: 127.0.0.1:0\n\
             admin: {{ listen: 127.0.0.1:0 }}\n\
             models:\n  \
               bench:\n    \
                 versions:\n      \
                   - {{ name: v1, weight: 100, endpoints: [\"http://{toy}\"] }}\n      \
                   - {{ name: v2, weight: 0, endpoints: [\"http://{toy}\"] }}\n\
             {capture}"
        ),
    )?;
    let log = dir.path.join(format!("{name}.stderr"));
    let mut command = tokio::process::Command::new(exe);
    command
        .arg("serve")
        .arg("--config")
        .arg(&config)
        // Per-request logs would be measured as proxy cost (nginx runs with
        // access_log off for the same reason).
        .env("RUST_LOG", "warn");
    let mut process = ChildProcess::spawn("backstop serve", &mut command, &log)?;
    let (mut data, mut admin) = (None, None);
    process
        .read_until(&log, |line| {
            let rest = line.strip_prefix("backstop listening: ")?;
            if let Some(addr) = rest.strip_prefix("data=http://") {
                data = addr.trim().parse().ok();
            } else if let Some(addr) = rest.strip_prefix("admin=http://") {
                admin = addr.trim().parse().ok();
            }
            data.zip(admin)
        })
        .await
        .map(|(data, admin)| BackstopProcess {
            data,
            admin,
            process,
        })
}

struct NginxProcess {
    addr: SocketAddr,
    process: ChildProcess,
}

/// `nginx` in PATH, then /usr/sbin/nginx (Debian's place, often not in a
/// user's PATH).
fn find_nginx() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("nginx"))
        .chain([PathBuf::from("/usr/sbin/nginx")])
        .find(|candidate| candidate.is_file())
}

/// `nginx -v` prints "nginx version: nginx/1.22.1" on stderr.
fn nginx_version_of(binary: &Path) -> Option<String> {
    let output = std::process::Command::new(binary).arg("-v").output().ok()?;
    let text = String::from_utf8_lossy(&output.stderr);
    let version = text.trim().strip_prefix("nginx version: ")?;
    Some(version.to_string())
}

async fn start_nginx(
    binary: &Path,
    dir: &TempDir,
    toy: SocketAddr,
) -> anyhow::Result<NginxProcess> {
    let prefix = dir.path.join("nginx");
    std::fs::create_dir_all(&prefix)?;
    // A port nobody uses right now; nginx binds it a moment later.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let p = prefix.display();
    // One worker, like one gateway process; upstream keep-alive so nginx is
    // not charged for a TCP handshake per request; high keep-alive request
    // limits so neither side closes connections mid-run (nginx's default
    // is 1000 requests per connection).
    let conf = format!(
        "daemon off;
master_process on;
worker_processes 1;
pid {p}/nginx.pid;
error_log {p}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {p}/client_body;
    proxy_temp_path {p}/proxy;
    fastcgi_temp_path {p}/fastcgi;
    uwsgi_temp_path {p}/uwsgi;
    scgi_temp_path {p}/scgi;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    upstream toy {{
        server {toy};
        keepalive 64;
        keepalive_requests 100000000;
        keepalive_timeout 300s;
    }}
    server {{
        listen {addr};
        location / {{
            proxy_pass http://toy;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
        }}
    }}
}}
"
    );
    let conf_path = prefix.join("nginx.conf");
    std::fs::write(&conf_path, conf)?;
    let log = prefix.join("stderr.log");
    let mut command = tokio::process::Command::new(binary);
    command.arg("-p").arg(&prefix).arg("-c").arg(&conf_path);
    let mut process = ChildProcess::spawn("nginx", &mut command, &log)?;
    // nginx prints nothing when it is up: poll the port (bounded by time).
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    loop {
        if let Ok(Some(status)) = process.child.try_wait() {
            let errors = std::fs::read_to_string(prefix.join("error.log")).unwrap_or_default()
                + &std::fs::read_to_string(&log).unwrap_or_default();
            anyhow::bail!("nginx exited ({status}): {}", errors.trim());
        }
        if TcpStream::connect(addr).await.is_ok() {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "nginx did not listen on {addr}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(NginxProcess { addr, process })
}

/// A private temporary directory, removed on drop.
struct TempDir {
    path: PathBuf,
}

impl TempDir {
    fn create() -> anyhow::Result<TempDir> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path =
            std::env::temp_dir().join(format!("backstop-bench-{}-{nanos}", std::process::id()));
        std::fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(TempDir { path })
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

// ---------------------------------------------------------------------------
// /proc: CPU time and process trees.

/// The fields of /proc/<pid>/stat the bench needs.
struct ProcStat {
    comm: String,
    ppid: u32,
    /// utime + stime, in clock ticks.
    cpu_ticks: u64,
}

fn proc_stat(pid: u32) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // comm is in parentheses and may itself contain spaces or ')'.
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_string();
    let fields: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    // fields[0] is field 3 (state) of proc(5): ppid is field 4, utime 14,
    // stime 15.
    let ppid = fields.get(1)?.parse().ok()?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(ProcStat {
        comm,
        ppid,
        cpu_ticks: utime + stime,
    })
}

/// Processes whose parent is `pid` (nginx's workers, for its master).
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .take(PROC_ENTRIES_MAX)
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| proc_stat(*child).is_some_and(|s| s.ppid == pid))
        .collect()
}

/// CPU ticks of `pid` and its children (nginx: master and workers). Live
/// processes only, which is right here: workers live for the whole run.
fn cpu_ticks_of_tree(pid: u32) -> u64 {
    std::iter::once(pid)
        .chain(children_of(pid))
        .filter_map(proc_stat)
        .map(|s| s.cpu_ticks)
        .sum()
}

/// Clock ticks per second of /proc CPU times, and whether it was assumed.
/// From `getconf CLK_TCK` since libc (sysconf) is not a dependency.
fn clock_ticks_per_s() -> (u64, bool) {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .filter(|ticks| *ticks > 0)
        .map_or((100, true), |ticks| (ticks, false))
}

fn machine() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find_map(|line| line.strip_prefix("model name")?.split_once(':'))
        .map_or("unknown".to_string(), |(_, model)| model.trim().to_string());
    Machine {
        cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map_or("unknown".to_string(), |k| k.trim().to_string()),
        cpu_model,
    }
}

/// The command line, with the binary shown as `backstop`.
fn command_line() -> String {
    std::iter::once("backstop".to_string())
        .chain(std::env::args().skip(1))
        .collect::<Vec<_>>()
        .join(" ")
}

// ---------------------------------------------------------------------------
// Markdown.

fn fmt_opt_u64(value: Option<u64>) -> String {
    value.map_or("–".to_string(), |v| v.to_string())
}

fn fmt_opt_f64(value: Option<f64>, decimals: usize) -> String {
    value.map_or("–".to_string(), |v| format!("{v:.decimals$}"))
}

fn fmt_ratio(value: Option<f64>) -> String {
    value.map_or("–".to_string(), |v| format!("{v:.2}×"))
}

impl BenchReport {
    /// The report as Markdown, ready for BENCHMARKS.md.
    pub fn to_markdown(&self) -> String {
        let mut out = String::new();
        let s = &self.settings;
        let m = &self.machine;
        let _ = writeln!(out, "## Hot path: direct vs nginx vs backstop\n");
        let _ = writeln!(
            out,
            "`{}` on {} cores ({}), Linux {}; {} round(s) × {} s per measurement, {} connections{}.\n",
            self.command,
            m.cores,
            m.cpu_model,
            m.kernel,
            s.rounds,
            s.duration_s,
            s.connections,
            if s.quick { " (**--quick: a smoke test, not a result**)" } else { "" },
        );
        let rates = &self.setups.backstop.rates;
        let _ = write!(out, "| setup | max rps | CPU µs/req |");
        for rate in rates {
            let _ = write!(
                out,
                " p50 / p99 / p99.9 µs at {}% ({} rps) |",
                rate.load_pct, rate.rate_rps
            );
        }
        let _ = writeln!(out, " errors |");
        let _ = write!(out, "|---|---:|---:|");
        for _ in rates {
            let _ = write!(out, "---:|");
        }
        let _ = writeln!(out, "---:|");
        // Set when a fixed rate exceeds a setup's maximum (footnote below).
        let mut saturated = false;
        for (name, setup) in [
            ("direct", &self.setups.direct),
            ("nginx", &self.setups.nginx),
            ("backstop", &self.setups.backstop),
            ("backstop, capture 100%", &self.setups.backstop_capture),
            ("backstop, capture 1%", &self.setups.backstop_capture_1pct),
            (
                "backstop, input signals 100%",
                &self.setups.backstop_signals,
            ),
        ] {
            let _ = write!(
                out,
                "| {name} | {} | {} |",
                fmt_opt_f64(setup.max_rps, 0),
                fmt_opt_f64(setup.cpu_us_per_req, 1)
            );
            for rate in &setup.rates {
                let over = setup.max_rps.is_some_and(|max| rate.rate_rps as f64 > max);
                saturated |= over;
                let _ = write!(
                    out,
                    " {} / {} / {}{} |",
                    fmt_opt_u64(rate.p50_us),
                    fmt_opt_u64(rate.p99_us),
                    fmt_opt_u64(rate.p999_us),
                    if over { " †" } else { "" }
                );
            }
            let _ = writeln!(out, " {} |", fmt_opt_u64(setup.errors));
        }
        if saturated {
            let _ = writeln!(
                out,
                "\n† The rate is above this setup's closed-loop maximum: requests queue for a \
                 free connection, and the coordinated-omission correction charges that wait."
            );
        }
        let _ = writeln!(out);
        let _ = writeln!(out, "| backstop ÷ | max rps | p99 at 25% | CPU µs/req |");
        let _ = writeln!(out, "|---|---:|---:|---:|");
        for (name, ratio) in [
            ("nginx", &self.ratios.backstop_over_nginx),
            ("direct", &self.ratios.backstop_over_direct),
        ] {
            let _ = writeln!(
                out,
                "| {name} | {} | {} | {} |",
                fmt_ratio(ratio.max_rps),
                fmt_ratio(ratio.p99_us_at_25pct),
                fmt_ratio(ratio.cpu_us_per_req)
            );
        }
        let _ = writeln!(
            out,
            "\n| ÷ backstop | max rps | p50 / p99 at 25% | p50 / p99 at 75% | CPU µs/req | CPU µs/req added |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|");
        for (name, ratio, setup) in [
            (
                "capture 100%",
                &self.ratios.backstop_capture_over_backstop,
                &self.setups.backstop_capture,
            ),
            (
                "capture 1%",
                &self.ratios.backstop_capture_1pct_over_backstop,
                &self.setups.backstop_capture_1pct,
            ),
            (
                "input signals 100%",
                &self.ratios.backstop_signals_over_backstop,
                &self.setups.backstop_signals,
            ),
        ] {
            let added = setup
                .cpu_us_per_req
                .zip(self.setups.backstop.cpu_us_per_req)
                .map(|(with, without)| with - without);
            let _ = writeln!(
                out,
                "| {name} | {} | {} / {} | {} / {} | {} | {} |",
                fmt_ratio(ratio.max_rps),
                fmt_ratio(ratio.p50_us_at_25pct),
                fmt_ratio(ratio.p99_us_at_25pct),
                fmt_ratio(ratio.p50_us_at_75pct),
                fmt_ratio(ratio.p99_us_at_75pct),
                fmt_ratio(ratio.cpu_us_per_req),
                added.map_or("–".to_string(), |a| format!("{a:+.1}")),
            );
        }
        let c = &self.capture;
        let yes_no = |v: Option<bool>| match v {
            Some(true) => "yes",
            Some(false) => "no",
            None => "–",
        };
        let _ = writeln!(
            out,
            "\nCapture setups: `capture: {{ sample_percent: 100 | 1, samples: {}, redact: [{}], \
             hash: [{}] }}`. The 100% setup's ring afterwards: {} samples; tensor redacted: {}; \
             field hashed: {}.",
            c.samples,
            c.redact.join(", "),
            c.hash.join(", "),
            fmt_opt_u64(c.kept),
            yes_no(c.redacted),
            yes_no(c.hashed),
        );
        let g = &self.signals;
        let _ = writeln!(
            out,
            "\nInput signals setup: v1 and v2 registered with an OIP input signature the request \
             fits, a canary rollout at its first step with `signals: {{ sample_percent: {} }}` \
             and triggers {} (features sketched: {}). The rollout afterwards: phase {}, \
             candidate {}%; candidate inputs checked: {}; schema violations: {} (rate {} \
             candidate, {} baseline); null rate {}; PSI {}.{}",
            g.sample_percent,
            g.triggers
                .iter()
                .map(|t| format!("`{t}`"))
                .collect::<Vec<_>>()
                .join(", "),
            g.features.join(", "),
            g.phase.as_deref().unwrap_or("–"),
            fmt_opt_f64(g.candidate_percent, 0),
            fmt_opt_u64(g.checked),
            fmt_opt_u64(g.violations),
            fmt_opt_f64(g.violation_rate_candidate, 4),
            fmt_opt_f64(g.violation_rate_baseline, 4),
            fmt_opt_f64(g.null_rate_candidate, 4),
            fmt_opt_f64(g.drift_psi, 4),
            if g.ran {
                ""
            } else {
                " **The checks did not run as intended: these figures do not measure them.**"
            },
        );
        let w = &self.swap;
        let _ = writeln!(
            out,
            "\nRouting-table swap under load (backstop, {} rps open loop, a swap every {} ms): \
             {} swaps, {} measured; swap → first request on the new table: \
             p50 {} µs, p99 {} µs, max {} µs. This includes the gap until the next request \
             arrives (on average 1/rate = {:.0} µs). Load errors during swaps: {}; admin errors: {}.\n\n\
             In-process, with requests routed back to back (no arrival gap), table install → \
             first request on it over {} swaps: p50 {} ns, p99 {} ns, max {} ns.",
            w.rate_rps,
            SWAP_INTERVAL.as_millis(),
            w.swaps,
            w.measured,
            fmt_opt_f64(w.p50_us, 1),
            fmt_opt_f64(w.p99_us, 1),
            fmt_opt_f64(w.max_us, 1),
            1e6 / w.rate_rps.max(1) as f64,
            w.errors,
            w.admin_errors,
            w.visible.swaps,
            fmt_opt_u64(w.visible.p50_ns),
            fmt_opt_u64(w.visible.p99_ns),
            fmt_opt_u64(w.visible.max_ns),
        );
        let _ =
            writeln!(
            out,
            "\nMethod: everything on loopback on one machine: the load generator (in the bench \
             process), the proxy and the toy upstream share the cores, so ratios mean more than \
             absolute numbers. max rps: closed loop, median over rounds. Latencies: open loop at \
             fixed shares of {}'s maximum, corrected for coordinated omission, median over rounds \
             of each round's quantile. Setup order rotates each round. CPU: utime + stime of the \
             proxy processes (nginx: master + 1 worker) from /proc over the closed-loop run, \
             divided by requests ({} ticks/s). nginx: {}.",
            if self.setups.nginx.max_rps.is_some() { "nginx" } else { "backstop" },
            s.clk_tck,
            s.nginx_version.as_deref().unwrap_or("not run"),
        );
        for note in &self.notes {
            let _ = writeln!(out, "\nNote: {note}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    //! The pure helpers: medians, rotation, /proc parsing and rendering.

    use super::*;

    #[test]
    fn medians_pick_the_middle() {
        assert_eq!(median_u64([5, 1, 3].into_iter()), Some(3));
        assert_eq!(median_u64([4, 1].into_iter()), Some(1));
        assert_eq!(median_u64(std::iter::empty()), None);
        assert_eq!(median_f64(&[2.0, 9.0, 1.0]), Some(2.0));
    }

    #[test]
    fn rotation_puts_each_setup_first_once() {
        let firsts: Vec<usize> = (0..3).map(|r| rotated(3, r).next().unwrap()).collect();
        assert_eq!(firsts, vec![0, 1, 2]);
        let mut order: Vec<usize> = rotated(3, 2).collect();
        assert_eq!(order, vec![2, 0, 1]);
        order.sort_unstable();
        assert_eq!(order, vec![0, 1, 2]);
    }

    #[test]
    fn reads_this_process_from_proc() {
        let stat = proc_stat(std::process::id()).expect("/proc/self/stat");
        assert!(stat.ppid > 0);
        assert!(!stat.comm.is_empty());
        let (ticks, _) = clock_ticks_per_s();
        assert!(ticks > 0);
    }

    #[test]
    fn routes_body_is_a_model_spec() {
        let body = routes_body("127.0.0.1:9".parse().unwrap(), 0);
        let spec: crate::config::ModelSpec = serde_json::from_str(&body).unwrap();
        assert_eq!(spec.versions[0].weight, 0);
        assert_eq!(spec.versions[1].weight, 100);
        assert_eq!(spec.versions[1].endpoints, vec!["http://127.0.0.1:9"]);
    }

    #[test]
    fn report_has_the_stable_fields_and_renders() {
        let runs = SetupRuns {
            max_rps: vec![1000.0, 1200.0, 1100.0],
            cpu_us_per_req: vec![50.0],
            errors: 0,
            rates: [
                vec![LoadReport {
                    p50_us: 100,
                    p99_us: 400,
                    p999_us: 900,
                    ..LoadReport::default()
                }],
                vec![],
            ],
        };
        let setup = runs.summarize(&[275, 825]);
        assert_eq!(setup.max_rps, Some(1100.0));
        assert_eq!(setup.p99_us, Some(400));
        let direct = SetupReport {
            cpu_us_per_req: None,
            ..setup.clone()
        };
        let capture = SetupReport {
            cpu_us_per_req: Some(60.0),
            ..setup.clone()
        };
        let signals = SetupReport {
            cpu_us_per_req: Some(55.0),
            ..setup.clone()
        };
        let report = BenchReport {
            ratios: Ratios {
                backstop_over_nginx: Ratio::of(&setup, &SetupReport::default()),
                backstop_over_direct: Ratio::of(&setup, &direct),
                backstop_capture_over_backstop: Ratio::of(&capture, &setup),
                backstop_capture_1pct_over_backstop: Ratio::of(&setup, &setup),
                backstop_signals_over_backstop: Ratio::of(&signals, &setup),
            },
            setups: Setups {
                direct,
                nginx: SetupReport::default(),
                backstop_capture: capture,
                backstop_capture_1pct: setup.clone(),
                backstop_signals: signals,
                backstop: setup,
            },
            swap: SwapReport::default(),
            capture: CaptureReport {
                samples: CAPTURE_SAMPLES,
                redact: vec![CAPTURE_REDACT.to_string()],
                hash: vec![CAPTURE_HASH.to_string()],
                kept: Some(100),
                redacted: Some(true),
                hashed: Some(true),
            },
            signals: SignalsReport {
                sample_percent: SIGNALS_SAMPLE_PERCENT,
                features: vec![SIGNALS_FEATURE.to_string()],
                triggers: signals_triggers().to_vec(),
                rollout: Some("ro-1".to_string()),
                phase: Some("running".to_string()),
                candidate_percent: Some(50.0),
                checked: Some(1000),
                violations: Some(0),
                violation_rate_candidate: Some(0.0),
                violation_rate_baseline: Some(0.0),
                null_rate_candidate: Some(0.0),
                drift_psi: Some(0.0),
                ran: true,
            },
            machine: machine(),
            command: "backstop bench --quick".to_string(),
            settings: Settings {
                duration_s: 2,
                rounds: 1,
                connections: 64,
                quick: true,
                backstop_threads: 1,
                nginx_version: None,
                clk_tck: 100,
            },
            notes: vec!["nginx not found".to_string()],
        };
        let json = serde_json::to_value(&report).unwrap();
        for setup in [
            "direct",
            "nginx",
            "backstop",
            "backstop_capture",
            "backstop_capture_1pct",
            "backstop_signals",
        ] {
            for field in [
                "max_rps",
                "p50_us",
                "p99_us",
                "p999_us",
                "cpu_us_per_req",
                "errors",
                "rates",
            ] {
                assert!(
                    json["setups"][setup].get(field).is_some(),
                    "{setup}.{field}"
                );
            }
        }
        assert_eq!(
            json["setups"]["direct"]["cpu_us_per_req"],
            serde_json::Value::Null
        );
        assert_eq!(json["ratios"]["backstop_over_direct"]["max_rps"], 1.0);
        assert_eq!(
            json["ratios"]["backstop_over_nginx"]["max_rps"],
            serde_json::Value::Null
        );
        assert_eq!(json["setups"]["backstop"]["rates"][0]["load_pct"], 25);
        let ratio = &json["ratios"]["backstop_capture_over_backstop"];
        assert_eq!(ratio["cpu_us_per_req"], 1.2);
        assert_eq!(ratio["max_rps"], 1.0);
        assert_eq!(ratio["p99_us_at_25pct"], 1.0);
        assert_eq!(ratio["p50_us_at_25pct"], 1.0);
        // No 75% figures in these runs: null, not a division by zero.
        assert_eq!(ratio["p99_us_at_75pct"], serde_json::Value::Null);
        assert_eq!(
            json["ratios"]["backstop_capture_1pct_over_backstop"]["max_rps"],
            1.0
        );
        let ratio = &json["ratios"]["backstop_signals_over_backstop"];
        assert_eq!(ratio["cpu_us_per_req"], 1.1);
        assert_eq!(ratio["max_rps"], 1.0);
        for field in [
            "sample_percent",
            "features",
            "triggers",
            "rollout",
            "phase",
            "candidate_percent",
            "checked",
            "violations",
            "violation_rate_candidate",
            "violation_rate_baseline",
            "null_rate_candidate",
            "drift_psi",
            "ran",
        ] {
            assert!(json["signals"].get(field).is_some(), "signals.{field}");
        }
        for field in ["samples", "redact", "hash", "kept", "redacted", "hashed"] {
            assert!(json["capture"].get(field).is_some(), "capture.{field}");
        }
        for field in ["swaps", "p50_us", "p99_us", "max_us", "errors"] {
            assert!(json["swap"].get(field).is_some(), "swap.{field}");
        }
        assert!(json["machine"]["cores"].as_u64().is_some());
        let markdown = report.to_markdown();
        assert!(
            markdown.contains("| backstop | 1100 | 50.0 | 100 / 400 / 900 |"),
            "{markdown}"
        );
        assert!(markdown.contains("includes the gap until the next request"));
        assert!(
            markdown.contains("| backstop, capture 100% | 1100 | 60.0 | 100 / 400 / 900 |"),
            "{markdown}"
        );
        assert!(
            markdown.contains("| capture 100% | 1.00× | 1.00× / 1.00× | – / – | 1.20× | +10.0 |"),
            "{markdown}"
        );
        assert!(
            markdown.contains("| backstop, input signals 100% | 1100 | 55.0 | 100 / 400 / 900 |"),
            "{markdown}"
        );
        assert!(
            markdown
                .contains("| input signals 100% | 1.00× | 1.00× / 1.00× | – / – | 1.10× | +5.0 |"),
            "{markdown}"
        );
        assert!(
            markdown.contains("candidate inputs checked: 1000; schema violations: 0"),
            "{markdown}"
        );
        assert!(!markdown.contains("did not run as intended"), "{markdown}");
    }

    #[test]
    fn signals_policy_parses_and_the_bench_body_fits_its_signature() {
        let plan = Plan {
            duration: Duration::from_secs(5),
            rounds: 3,
            connections: 64,
            warmup: Duration::from_secs(1),
        };
        let text = signals_policy(&plan);
        let policy = crate::policy::parse(Path::new("bench-signals.yaml"), &text)
            .unwrap_or_else(|e| panic!("{e:?}\n{text}"));
        assert_eq!(policy.triggers.len(), 3);
        assert!(text.contains("bake: 1h"), "{text}");
        assert!(text.contains("steps: [50, 100]"), "{text}");
        assert!(text.contains("sample_percent: 100 }"), "{text}");
        // The request the bench sends fits both versions' signature, and
        // its feature is observed: no violation, no null.
        let signature: serde_json::Value = serde_json::from_str(SIGNALS_SIGNATURE).unwrap();
        let signature = crate::signature::InputSignature::from_registered(&signature).unwrap();
        let report =
            signature.check_observing(INFER_BODY.as_bytes(), &[SIGNALS_FEATURE.to_string()]);
        assert!(report.is_valid(), "{report:?}");
        assert_eq!(report.observed[SIGNALS_FEATURE].len(), 4);
    }

    #[test]
    fn signals_status_is_read_from_the_rollout_view() {
        let view = serde_json::json!({
            "id": "ro-1", "phase": "running", "candidate_percent": 50.0,
            "triggers": [
                { "candidate_requests": 2000, "candidate_value": 0.0, "baseline_value": 0.0 },
                { "candidate_requests": 2000, "candidate_value": 0.0, "baseline_value": 0.0 },
                { "candidate_requests": 2000, "candidate_value": 0.001, "baseline_value": null },
            ]
        });
        let mut report = SignalsReport::default();
        check_signals(&view, &mut report);
        assert_eq!(report.checked, Some(2000));
        assert_eq!(report.violations, Some(0));
        assert_eq!(report.drift_psi, Some(0.001));
        assert!(report.ran);
        // Every request breaking the signature is told apart.
        let mut broken = view.clone();
        broken["triggers"][0]["candidate_value"] = 1.0.into();
        check_signals(&broken, &mut report);
        assert_eq!(report.violations, Some(2000));
        assert!(!report.ran);
        // So is a rollout that checked nothing, or ended.
        let mut idle = view.clone();
        idle["triggers"][0]["candidate_requests"] = 0.into();
        check_signals(&idle, &mut report);
        assert!(!report.ran);
        let mut ended = view;
        ended["phase"] = "promoted".into();
        check_signals(&ended, &mut report);
        assert!(!report.ran);
    }

    #[test]
    fn capture_config_parses_and_redacts_the_bench_body() {
        // The capture setups' settings, as start_backstop writes them.
        let text = format!(
            "models:\n  bench:\n    versions:\n      \
             - {{ name: v1, weight: 1, endpoints: [\"http://127.0.0.1:9\"] }}\n    \
             capture: {{ sample_percent: 100, samples: {CAPTURE_SAMPLES}, \
             redact: [{CAPTURE_REDACT}], hash: [{CAPTURE_HASH}] }}\n"
        );
        let config = crate::config::Config::parse(Path::new("bench.yaml"), &text).unwrap();
        let spec = config.models["bench"].capture.clone().unwrap();
        assert_eq!(spec.sample_percent, 100.0);
        let redactor = crate::redact::Redactor::new(&spec.redact, &spec.hash);
        let body = match redactor.body(INFER_BODY.as_bytes(), spec.body_max_bytes) {
            crate::redact::CapturedBody::Json(value) => value,
            other => panic!("{other:?}"),
        };
        // What the bench reads back from the ring after a run.
        let answer = serde_json::json!({ "samples": [{ "request": { "json": body } }] });
        let mut report = CaptureReport::default();
        check_samples(&answer, &mut report);
        assert_eq!(report.kept, Some(1));
        assert_eq!(report.redacted, Some(true));
        assert_eq!(report.hashed, Some(true));
        // And a ring of unredacted bodies is told apart.
        let raw: serde_json::Value = serde_json::from_str(INFER_BODY).unwrap();
        let answer = serde_json::json!({ "samples": [{ "request": { "json": raw } }] });
        check_samples(&answer, &mut report);
        assert_eq!((report.redacted, report.hashed), (Some(false), Some(false)));
    }
}
