//! `backstop demo`: the gateway on loopback in front of two built-in toy
//! model servers, a stable `v1` and a worse candidate `v2` (slower, 5% of
//! its answers fail), split 90/10 under open-loop load, with live
//! per-version figures read from the gateway's own statistics.
//!
//! The canary controller that would notice `v2` and roll it back is not
//! built yet; for now the demo shows the split and what the analysis sees.

use crate::config::{Config, ModelSpec, StickySpec, VersionSpec};
use crate::loadgen::{self, LoadSpec, Mode};
use crate::toy::ToyServer;
use backstop_core::analysis::WindowSnapshot;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

pub struct DemoOptions {
    pub duration: Duration,
    pub rate_per_s: u64,
    /// Print only the final JSON report (no live table).
    pub json: bool,
}

/// Final figures: per version as the gateway saw them, and as the client did.
#[derive(Serialize)]
pub struct DemoReport {
    pub duration_s: f64,
    pub rate_rps: u64,
    pub weights: BTreeMap<String, u32>,
    pub versions: BTreeMap<String, VersionFigures>,
    pub client: loadgen::LoadReport,
}

#[derive(Serialize)]
pub struct VersionFigures {
    pub requests: u64,
    /// Share of all requests this version answered.
    pub share: f64,
    pub p50_us: Option<u64>,
    pub p95_us: Option<u64>,
    pub p99_us: Option<u64>,
    /// Server-side failures per request.
    pub error_rate: f64,
}

impl VersionFigures {
    fn from_window(window: &WindowSnapshot, total: u64) -> Self {
        let requests = window.counts.requests;
        Self {
            requests,
            share: ratio(requests, total),
            p50_us: window.latency_quantile_us(0.5),
            p95_us: window.latency_quantile_us(0.95),
            p99_us: window.latency_quantile_us(0.99),
            error_rate: ratio(window.counts.failures(), requests),
        }
    }
}

fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

const MODEL: &str = "fraud-scorer";
const BUCKET_MS: u64 = 250;

pub async fn run(options: DemoOptions) -> anyhow::Result<DemoReport> {
    let loopback = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let stable = ToyServer::start(loopback, "v1").await?;
    stable.behaviour.set_latency(Duration::from_millis(2));
    let candidate = ToyServer::start(loopback, "v2").await?;
    candidate.behaviour.set_latency(Duration::from_millis(6));
    candidate.behaviour.set_error_rate(0.05);

    let weights: BTreeMap<String, u32> = [("v1".to_string(), 90), ("v2".to_string(), 10)].into();
    let spec = ModelSpec {
        versions: vec![
            VersionSpec {
                name: "v1".into(),
                weight: weights["v1"],
                endpoints: vec![stable.url()],
            },
            VersionSpec {
                name: "v2".into(),
                weight: weights["v2"],
                endpoints: vec![candidate.url()],
            },
        ],
        sticky: Some(StickySpec::header("x-user-id")),
        ..embedded_model_defaults()
    };
    let mut config: Config = serde_yaml_ng::from_str("{}")?;
    config.listen = loopback;
    config.admin.listen = loopback;
    config.stats.bucket_ms = BUCKET_MS;
    config.stats.buckets = 1200;
    config.models.insert(MODEL.into(), spec);
    config
        .check()
        .map_err(|e| anyhow::anyhow!("demo config: {e}"))?;

    let running = crate::gateway::start(config).await?;
    let gateway = running.gateway.clone();
    if !options.json {
        println!(
            "backstop demo: gateway on http://{} (admin http://{}), model {MODEL}: v1 90% / v2 10%",
            running.data_addr, running.admin_addr
        );
        println!("v2 is the candidate: slower (6 ms vs 2 ms) and 5% of its answers fail.");
        println!(
            "sending {} req/s for {} s (open loop, sticky x-user-id)\n",
            options.rate_per_s,
            options.duration.as_secs()
        );
        println!(
            "{:>4}  {:<7} {:>7} {:>8} {:>8} {:>8}",
            "t", "version", "req/s", "p50 ms", "p99 ms", "errors"
        );
    }

    let load = tokio::spawn(loadgen::run(LoadSpec {
        target: running.data_addr,
        method: http::Method::POST,
        path: format!("/v2/models/{MODEL}/infer"),
        body: bytes::Bytes::from_static(
            br#"{"inputs":[{"name":"x","datatype":"FP32","shape":[1,4],"data":[1,2,3,4]}]}"#,
        ),
        headers: vec![(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        )],
        sticky_header: Some(http::HeaderName::from_static("x-user-id")),
        connections: 32,
        duration: options.duration,
        mode: Mode::OpenLoop {
            rate_per_s: options.rate_per_s,
        },
    }));

    let started = Instant::now();
    let table = gateway
        .table(MODEL)
        .ok_or_else(|| anyhow::anyhow!("the demo model has no table"))?;
    let first_epoch = table.versions[0].state.stats.current_epoch();
    let mut second = 0;
    while !load.is_finished() {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if options.json || started.elapsed() < Duration::from_secs(second + 1) {
            continue;
        }
        second += 1;
        // The last whole second: 4 buckets of 250 ms before the current one.
        for version in &table.versions {
            let stats = &version.state.stats;
            let to = stats.current_epoch().saturating_sub(1);
            let window = stats.range(to.saturating_sub(3), to);
            let label = if version.name == "v1" {
                format!("{second}s")
            } else {
                String::new()
            };
            println!(
                "{:>4}  {:<7} {:>7} {:>8} {:>8} {:>7.1}%",
                label,
                version.name,
                window.counts.requests,
                millis(window.latency_quantile_us(0.5)),
                millis(window.latency_quantile_us(0.99)),
                100.0 * ratio(window.counts.failures(), window.counts.requests),
            );
        }
    }
    let client = load.await??;

    // Whole-run figures from the gateway's statistics.
    let windows: Vec<(String, WindowSnapshot)> = table
        .versions
        .iter()
        .map(|v| {
            let stats = &v.state.stats;
            (
                v.name.clone(),
                stats.range(first_epoch, stats.current_epoch()),
            )
        })
        .collect();
    let total: u64 = windows.iter().map(|(_, w)| w.counts.requests).sum();
    let versions: BTreeMap<String, VersionFigures> = windows
        .iter()
        .map(|(name, window)| (name.clone(), VersionFigures::from_window(window, total)))
        .collect();
    running.stop(Duration::from_secs(2)).await;

    let report = DemoReport {
        duration_s: started.elapsed().as_secs_f64(),
        rate_rps: options.rate_per_s,
        weights,
        versions,
        client,
    };
    if !options.json {
        println!("\nwhole run, as the gateway recorded it:");
        for (name, figures) in &report.versions {
            println!(
                "  {name}: {} requests ({:.1}% of traffic, weight {}), p50 {} ms, p99 {} ms, errors {:.2}%",
                figures.requests,
                100.0 * figures.share,
                report.weights[name],
                millis(figures.p50_us),
                millis(figures.p99_us),
                100.0 * figures.error_rate
            );
        }
        println!(
            "client: {} sent, {} ok, {} errors, p99 {:.1} ms (coordinated-omission corrected)",
            report.client.sent,
            report.client.ok,
            report.client.errors,
            report.client.p99_us as f64 / 1000.0
        );
        println!("\nv2 is visibly worse. Automatic rollback comes with the canary controller, which this build does not have yet.");
    }
    Ok(report)
}

fn embedded_model_defaults() -> ModelSpec {
    ModelSpec {
        protocol: Default::default(),
        versions: Vec::new(),
        sticky: None,
        cohorts: Vec::new(),
        shadow: None,
        timeouts: Default::default(),
        health_path: "/v2/health/ready".into(),
    }
}

fn millis(us: Option<u64>) -> String {
    us.map_or("-".into(), |us| format!("{:.1}", us as f64 / 1000.0))
}
