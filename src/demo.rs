//! `backstop demo`: the whole story on loopback, nothing else installed.
//!
//! Two built-in toy model servers (`v1` healthy; `v2` slower and failing
//! 5% of requests once it carries traffic), the gateway with a data
//! directory, open-loop load, and a canary 1 → 5 → 25 → 50 → 100 run by
//! the real controller (`examples/demo-policy.yaml`). The candidate is
//! caught, traffic swaps back to `v1`, and the summary gives the verdict's
//! numbers, how fast it acted and how many requests were lost (none).

use crate::config::{Config, ModelSpec, StickySpec, VersionSpec};
use crate::loadgen::{self, LoadReport, LoadSpec, Mode};
use crate::store::AuditFilter;
use crate::toy::ToyServer;
use backstop_core::controller::Phase;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The rollout the demo runs, embedded so the demo needs no files.
pub const DEMO_POLICY: &str = include_str!("../examples/demo-policy.yaml");

pub struct DemoOptions {
    /// Longest the load runs; it stops a few seconds after the verdict.
    pub duration: Duration,
    pub rate_per_s: u64,
    /// Print only the final JSON report (no live progress).
    pub json: bool,
}

/// The summary; `demo --output json` prints it. Field names are how the
/// figures are checked: keep them stable.
#[derive(Serialize)]
pub struct DemoReport {
    /// The canary was rolled back by a trigger (what the demo is for).
    pub rolled_back: bool,
    pub phase: String,
    pub rollout_id: String,
    /// The rule that fired, as written: `latency_p95 above +10% vs baseline`.
    pub trigger: Option<String>,
    pub metric: Option<String>,
    pub unit: Option<String>,
    pub candidate_value: Option<f64>,
    pub baseline_value: Option<f64>,
    pub limit: Option<f64>,
    pub e_value: Option<f64>,
    pub e_value_needed: Option<f64>,
    pub candidate_percent_at_verdict: Option<f64>,
    /// From the candidate's first request to the verdict.
    pub detection_s: Option<f64>,
    /// From the verdict to the baseline's table being installed.
    pub verdict_to_swap_us: Option<f64>,
    /// From the install to the first request it routed.
    pub swap_to_first_request_us: Option<f64>,
    pub requests_sent: u64,
    /// Requests that got no answer from a model server: transport errors
    /// and the gateway's own 502/503/504. Must be 0.
    pub requests_lost: u64,
    /// Requests `v2` answered after the rollback (in buckets wholly after
    /// the swap). Must be 0.
    pub candidate_requests_after_rollback: u64,
    /// The store with the rollout, its verdict and the audit log.
    pub data_dir: PathBuf,
    /// Audit entries of the rollout, `#seq action`.
    pub audit: Vec<String>,
    /// The incident the rollback opened.
    pub incident: Option<String>,
    /// `recovered`, `not_recovered`, `unverified`, or `verifying` when the
    /// verification had not finished.
    pub incident_state: Option<String>,
    /// From the verdict to the baseline serving within its limits.
    pub time_to_recovered_s: Option<f64>,
    /// Request/response pairs frozen into the incident (both versions).
    pub samples_frozen: usize,
    /// Webhook notifications the demo's local receiver took.
    pub notifications_delivered: usize,
    pub client: LoadReport,
}

impl DemoReport {
    /// The story went as designed: rolled back, nothing lost, nothing on
    /// `v2` after the swap. `backstop demo` exits 1 otherwise.
    pub fn as_designed(&self) -> bool {
        self.rolled_back
            && self.requests_lost == 0
            && self.candidate_requests_after_rollback == 0
            && self.incident.is_some()
    }
}

const MODEL: &str = "fraud-scorer";
const BUCKET_MS: u64 = 250;
/// Load keeps running at least this long after the verdict: it shows
/// traffic staying on the baseline and nothing lost around the swap.
const AFTER_VERDICT: Duration = Duration::from_secs(3);
/// ... and until the incident's recovery is verified (the demo policy's
/// window is 3 s), at most this long.
const VERIFICATION_WAIT: Duration = Duration::from_secs(10);

pub async fn run(options: DemoOptions) -> anyhow::Result<DemoReport> {
    let loopback = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let stable = ToyServer::start(loopback, "v1").await?;
    stable.behaviour.set_latency(Duration::from_millis(2));
    let candidate = ToyServer::start(loopback, "v2").await?;
    candidate.behaviour.set_latency(Duration::from_millis(6));
    candidate.behaviour.set_error_rate(0.05);

    let data_dir = std::env::temp_dir().join(format!(
        "backstop-demo-{}-{}",
        std::process::id(),
        crate::gateway::unix_ms()
    ));
    std::fs::create_dir_all(&data_dir)?;
    let spec = ModelSpec {
        versions: vec![
            VersionSpec {
                name: "v1".into(),
                weight: 100,
                endpoints: vec![stable.url()],
                fallback: true,
                rehearsal: false,
                fault: None,
            },
            VersionSpec {
                name: "v2".into(),
                weight: 0,
                endpoints: vec![candidate.url()],
                fallback: true,
                rehearsal: false,
                fault: None,
            },
        ],
        sticky: Some(StickySpec::header("x-user-id")),
        ..embedded_model_defaults()
    };
    let mut config: Config = serde_yaml_ng::from_str("{}")?;
    config.listen = loopback;
    config.admin.listen = loopback;
    config.data_dir = Some(data_dir.clone());
    config.stats.bucket_ms = BUCKET_MS;
    config.stats.buckets = 1200;
    config.models.insert(MODEL.into(), spec);
    config
        .check()
        .map_err(|e| anyhow::anyhow!("demo config: {e}"))?;

    let running = crate::gateway::start(config).await?;
    let gateway = running.gateway.clone();
    let rollouts = running
        .rollouts
        .clone()
        .ok_or_else(|| anyhow::anyhow!("the demo gateway has no rollout runtime"))?;
    let say = |line: String| {
        if !options.json {
            println!("{line}");
        }
    };
    say(format!(
        "backstop demo: gateway on http://{} (admin http://{}), data in {}",
        running.data_addr,
        running.admin_addr,
        data_dir.display()
    ));
    say(format!(
        "{MODEL}: v1 is the last-known-good (2 ms); v2 is the candidate: 6 ms, and 5% of its answers fail."
    ));
    say(format!(
        "load: {} req/s open loop, sticky x-user-id; rollout: canary 1 → 5 → 25 → 50 → 100, bake 3 s\n",
        options.rate_per_s
    ));

    let stop_load = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(loadgen::run(LoadSpec {
        stop: Some(stop_load.clone()),
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

    let mut policy = crate::policy::parse(Path::new("examples/demo-policy.yaml"), DEMO_POLICY)?;
    // A local webhook receiver stands in for the pager: the incident's
    // notification goes there, in Alertmanager's format.
    let pager = Pager::start().await?;
    policy.notify.push(backstop_core::policy::Receiver {
        name: "pager".into(),
        url: Some(format!("{}/api/v2/alerts", pager.url)),
        url_env: None,
        format: backstop_core::policy::WebhookFormat::Alertmanager,
        severities: vec![backstop_core::policy::Severity::Critical],
    });
    let started = Instant::now();
    let view = rollouts
        .start(policy, true, "demo")
        .await
        .map_err(|e| anyhow::anyhow!("starting the demo rollout: {e}"))?;
    let id = view.status.id.clone();
    say(format!(
        "{:>5}  {:<8} {:>6}  {:<26} {:>10} {:>10} {:>10} {:>9}",
        "t", "phase", "v2 %", "trigger", "v2", "v1", "limit", "evidence"
    ));

    let mut ended_at: Option<Instant> = None;
    let mut last_print = Duration::ZERO;
    let mut printed_end = false;
    while !load.is_finished() {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let view = rollouts
            .status(&id)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let status = &view.status;
        if ended_at.is_none() && status.phase.is_final() {
            ended_at = Some(Instant::now());
        }
        let elapsed = started.elapsed();
        // A line a second, and one at the verdict.
        let just_ended = ended_at.is_some() && !printed_end;
        if !options.json && (elapsed - last_print >= Duration::from_secs(1) || just_ended) {
            printed_end |= just_ended;
            last_print = elapsed;
            // The trigger closest to acting.
            if let Some(t) = status.triggers.iter().max_by(|a, b| {
                (a.e_value / a.e_value_needed).total_cmp(&(b.e_value / b.e_value_needed))
            }) {
                let value = |v: Option<f64>| t.unit.show(v);
                println!(
                    "{:>4.0}s  {:<8} {:>6}  {:<26} {:>10} {:>10} {:>10} {:>8.0}%",
                    elapsed.as_secs_f64(),
                    short_phase(status.phase),
                    status.candidate_percent,
                    t.rule,
                    value(t.candidate_value),
                    value(t.baseline_value),
                    value(t.limit),
                    (100.0 * t.e_value.ln().max(0.0) / t.e_value_needed.ln()).min(100.0),
                );
            }
        }
        if let Some(at) = ended_at {
            let verified = match &view.incident {
                Some(incident) => rollouts
                    .incidents()
                    .get(incident)
                    .await
                    .is_ok_and(|i| i.state != "verifying"),
                None => false,
            };
            if at.elapsed() >= AFTER_VERDICT && (verified || at.elapsed() >= VERIFICATION_WAIT) {
                break;
            }
        }
    }
    // Stop the load: it has shown what it needed to.
    stop_load.store(true, Ordering::Relaxed);
    let client = load.await??;

    let view = rollouts
        .status(&id)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let status = &view.status;
    let verdict = status.verdict.clone();
    let trigger = verdict.as_ref().and_then(|v| v.trigger.clone());
    // v2 left the routing table at the rollback; its statistics remain.
    let candidate_requests_after_rollback = verdict.as_ref().map_or(0, |v| {
        gateway
            .version_states()
            .into_iter()
            .find(|state| state.model == MODEL && state.version == "v2")
            .map_or(0, |state| {
                let stats = &state.stats;
                // Buckets wholly after the swap: requests already on
                // their way to v2 at the swap finish there, legitimately.
                let from = v.at_ms / BUCKET_MS + 2;
                let to = stats.current_epoch();
                if from > to {
                    0
                } else {
                    stats.range(from, to).counts.requests
                }
            })
    });
    let audit = audit_lines(&rollouts, &id).await?;
    let incident = match &view.incident {
        Some(incident) => rollouts.incidents().get(incident).await.ok(),
        None => None,
    };
    let requests_lost = client.transport_errors
        + client
            .statuses
            .iter()
            .filter(|(status, _)| matches!(status, 502..=504))
            .map(|(_, count)| count)
            .sum::<u64>();
    running.stop(Duration::from_secs(2)).await;

    let report = DemoReport {
        rolled_back: status.phase == Phase::RolledBack,
        phase: status.phase.name().to_string(),
        rollout_id: id,
        trigger: trigger.as_ref().map(|t| t.rule.clone()),
        metric: trigger.as_ref().map(|t| t.metric.name().to_string()),
        unit: trigger.as_ref().map(|t| {
            serde_json::to_value(t.unit)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default()
        }),
        candidate_value: trigger.as_ref().and_then(|t| t.candidate_value),
        baseline_value: trigger.as_ref().and_then(|t| t.baseline_value),
        limit: trigger.as_ref().and_then(|t| t.limit),
        e_value: trigger.as_ref().map(|t| t.e_value),
        e_value_needed: trigger.as_ref().map(|t| t.e_value_needed),
        candidate_percent_at_verdict: verdict.as_ref().map(|v| v.candidate_percent),
        detection_s: verdict
            .as_ref()
            .and_then(|v| v.detection_ms)
            .map(|ms| ms as f64 / 1000.0),
        verdict_to_swap_us: view.rollback_timing.map(|t| t.verdict_to_swap_us),
        swap_to_first_request_us: view
            .rollback_timing
            .and_then(|t| t.swap_to_first_request_us),
        requests_sent: client.sent,
        requests_lost,
        candidate_requests_after_rollback,
        data_dir,
        audit,
        incident: view.incident.clone(),
        incident_state: incident.as_ref().map(|i| i.state.clone()),
        time_to_recovered_s: incident.as_ref().and_then(|i| {
            let ms = i.record.verification.as_ref()?.time_to_recovered_ms?;
            Some(ms as f64 / 1000.0)
        }),
        samples_frozen: incident.as_ref().map_or(0, |i| {
            i.evidence.samples.candidate.len() + i.evidence.samples.baseline.len()
        }),
        notifications_delivered: pager.received(),
        client,
    };
    if !options.json {
        print_summary(&report);
    }
    Ok(report)
}

/// The rollout's audit entries, as `#seq action`.
async fn audit_lines(rollouts: &crate::rollout::Rollouts, id: &str) -> anyhow::Result<Vec<String>> {
    let store = rollouts.store();
    let filter = AuditFilter {
        model: Some(MODEL.to_string()),
        since_ms: None,
        limit: None,
    };
    let entries = tokio::task::spawn_blocking(move || store.audit(&filter)).await??;
    Ok(entries
        .iter()
        .filter(|e| e.draft.target.ends_with(id))
        .map(|e| format!("#{} {}", e.seq, e.draft.action))
        .collect())
}

fn short_phase(phase: Phase) -> &'static str {
    match phase {
        Phase::RolledBack => "ROLLBACK",
        Phase::AwaitingApproval => "approval",
        other => other.name(),
    }
}

fn print_summary(report: &DemoReport) {
    println!();
    if report.rolled_back {
        println!("ROLLED BACK: v2 is condemned; all traffic is on v1.");
    } else {
        println!(
            "NOT rolled back (phase {}): the demo expected a rollback.",
            report.phase
        );
    }
    if let Some(trigger) = &report.trigger {
        let unit = if report.unit.as_deref() == Some("ms") {
            backstop_core::analysis::trigger::Unit::Ms
        } else {
            backstop_core::analysis::trigger::Unit::Ratio
        };
        println!("  trigger:         {trigger}");
        println!(
            "  numbers:         v2 {} vs v1 {} (limit {}), e-value {:.3e} ≥ {:.0} needed",
            unit.show(report.candidate_value),
            unit.show(report.baseline_value),
            unit.show(report.limit),
            report.e_value.unwrap_or(0.0),
            report.e_value_needed.unwrap_or(0.0)
        );
    }
    if let Some(percent) = report.candidate_percent_at_verdict {
        println!("  caught at:       the {percent}% step");
    }
    if let Some(s) = report.detection_s {
        println!("  detection:       {s:.1} s after v2's first request");
    }
    if let Some(us) = report.verdict_to_swap_us {
        println!(
            "  verdict → swap:  {us:.0} µs (routing table replaced before anything was written)"
        );
    }
    if let Some(us) = report.swap_to_first_request_us {
        println!("  swap → next request on the new table: {us:.0} µs");
    }
    println!(
        "  requests:        {} sent, {} lost, {} answered by v2 after the rollback",
        report.requests_sent, report.requests_lost, report.candidate_requests_after_rollback
    );
    println!(
        "  rollout:         {} (state and verdict in {}/backstop.db)",
        report.rollout_id,
        report.data_dir.display()
    );
    println!("  audit log:       {}", report.audit.join(", "));
    if let Some(incident) = &report.incident {
        println!(
            "  incident:        {incident}, {} ({} request/response pairs frozen, redacted per the policy)",
            report
                .incident_state
                .as_deref()
                .unwrap_or("?")
                .replace('_', " "),
            report.samples_frozen
        );
        if let Some(s) = report.time_to_recovered_s {
            println!(
                "  recovered:       v1 within its pre-rollout figures {s:.1} s after the verdict"
            );
        }
        println!(
            "  pager:           {} notification(s) delivered (Alertmanager format, local receiver)",
            report.notifications_delivered
        );
    }
    println!(
        "                   (backstop audit list --model {MODEL} against a running gateway on that data_dir; `backstop audit verify` checks the chain)"
    );
}

/// The demo's stand-in pager: a loopback webhook receiver that counts what
/// it is sent.
struct Pager {
    url: String,
    received: Arc<std::sync::atomic::AtomicUsize>,
    _server: tokio::task::JoinHandle<()>,
}

impl Pager {
    async fn start() -> anyhow::Result<Pager> {
        let received = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = received.clone();
        let app = axum::Router::new().fallback(move || {
            let count = count.clone();
            async move {
                count.fetch_add(1, Ordering::Relaxed);
                http::StatusCode::OK
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Pager {
            url,
            received,
            _server: server,
        })
    }

    fn received(&self) -> usize {
        self.received.load(Ordering::Relaxed)
    }
}

fn embedded_model_defaults() -> ModelSpec {
    ModelSpec {
        protocol: Default::default(),
        versions: Vec::new(),
        sticky: None,
        cohorts: Vec::new(),
        shadow: None,
        capture: None,
        signals: None,
        timeouts: Default::default(),
        health_path: "/v2/health/ready".into(),
    }
}
