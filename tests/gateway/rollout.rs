//! Rollouts end to end: the real `backstop serve` runs the controller on
//! live traffic sent through the gateway to toy model servers, and the
//! outcomes (promotion, rollbacks on latency and errors, blue/green
//! flip-back, shadow rejection, recovery after a kill -9, refused policies
//! and condemned candidates) are read back over the admin API and the CLI.
//!
//! Statistics buckets are 100 ms, so the controller ticks ten times a
//! second. Every load loop is bounded in count and time; waits poll the
//! status endpoint up to a generous deadline and assert on outcomes only.

use crate::util::*;
use http::StatusCode;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long any rollout may take to reach the phase a test waits for.
const PHASE_DEADLINE: Duration = Duration::from_secs(20);

/// Model `m` with v1 taking all traffic and v2 none; 100 ms statistics
/// buckets (and controller ticks). Passive ejection is effectively off so
/// a failing candidate keeps answering (and being judged) rather than
/// having its traffic moved to v1 by the health fallback.
pub(crate) fn config(v1: &str, v2: &str) -> String {
    format!(
        r#"
listen: 127.0.0.1:0
admin: {{ listen: 127.0.0.1:0 }}
stats: {{ bucket_ms: 100 }}
health: {{ interval_ms: 100, timeout_ms: 500, eject_after_failures: 100000 }}
models:
  m:
    versions:
      - {{ name: v1, weight: 100, endpoints: ["{v1}"] }}
      - {{ name: v2, weight: 0, endpoints: ["{v2}"] }}
"#
    )
}

/// A policy for model `m` moving v1 → v2 with `strategy`, guarded by
/// `triggers` (YAML flow mappings, one per line).
pub(crate) fn policy(strategy: &str, triggers: &[&str]) -> String {
    let mut text =
        format!("model: m\ncandidate: v2\nbaseline: v1\nstrategy: {strategy}\ntriggers:\n");
    for trigger in triggers {
        text.push_str(&format!("  - {trigger}\n"));
    }
    text
}

pub(crate) const ERROR_TRIGGER: &str =
    r#"{ metric: error_rate, above: "+2pp", min_sample: 20, action: rollback }"#;
pub(crate) const LATENCY_TRIGGER: &str =
    r#"{ metric: latency_p95, above: "+30%", min_sample: 20, action: rollback }"#;

/// Starts a rollout over the API; panics unless it is created.
pub(crate) async fn start(client: &HttpClient, backstop: &Backstop, policy: &str) -> Value {
    let answer = client
        .post_json(
            &backstop.admin_url("/api/v1/rollouts"),
            &json!({"policy": policy, "file": "policy.yaml"}),
        )
        .await;
    let view = answer.json();
    assert_eq!(answer.status, StatusCode::CREATED, "{view}");
    view
}

/// Starts a rollout over the API that must be refused as an invalid
/// policy (422); the error body, as text.
pub(crate) async fn refused(client: &HttpClient, backstop: &Backstop, policy: &str) -> String {
    let answer = client
        .post_json(
            &backstop.admin_url("/api/v1/rollouts"),
            &json!({"policy": policy, "file": "policy.yaml"}),
        )
        .await;
    let error = answer.json().to_string();
    assert_eq!(answer.status, StatusCode::UNPROCESSABLE_ENTITY, "{error}");
    error
}

pub(crate) async fn status(client: &HttpClient, backstop: &Backstop, id: &str) -> Value {
    let answer = client
        .get(&backstop.admin_url(&format!("/api/v1/rollouts/{id}")))
        .await;
    let view = answer.json();
    assert_eq!(answer.status, StatusCode::OK, "{view}");
    view
}

/// An operator command (`pause`, `resume`, `rollback`, ...) over the API.
pub(crate) async fn command(
    client: &HttpClient,
    backstop: &Backstop,
    id: &str,
    command: &str,
) -> Answer {
    let url = backstop.admin_url(&format!("/api/v1/rollouts/{id}/{command}"));
    client
        .send(http::Method::POST, &url, &[], bytes::Bytes::new())
        .await
}

/// Polls the rollout every 100 ms until `done` holds for its view; panics
/// with the last view (and the server's log) after [`PHASE_DEADLINE`].
pub(crate) async fn wait_until(
    client: &HttpClient,
    backstop: &Backstop,
    id: &str,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + PHASE_DEADLINE;
    loop {
        let view = status(client, backstop, id).await;
        if done(&view) {
            return view;
        }
        if Instant::now() > deadline {
            panic!(
                "rollout {id} never reached {what} within {PHASE_DEADLINE:?}: {view:#}\nlogs:\n{}",
                backstop.logs()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub(crate) async fn wait_for_phase(
    client: &HttpClient,
    backstop: &Backstop,
    id: &str,
    phase: &str,
) -> Value {
    wait_until(client, backstop, id, phase, |v| v["phase"] == phase).await
}

/// The v2 share of model `m`'s routing table, in percent of all weight.
async fn v2_share(client: &HttpClient, backstop: &Backstop) -> f64 {
    let table = client
        .get(&backstop.admin_url("/api/v1/models/m/routes"))
        .await
        .json();
    let versions = table["spec"]["versions"].as_array().unwrap().clone();
    let weight = |name: &str| {
        versions
            .iter()
            .find(|v| v["name"] == name)
            .and_then(|v| v["weight"].as_f64())
            .unwrap_or_else(|| panic!("no weight for {name}: {table}"))
    };
    let total = weight("v1") + weight("v2");
    assert!(total > 0.0, "{table}");
    100.0 * weight("v2") / total
}

/// The audit log's entries, oldest first.
pub(crate) async fn audit_entries(client: &HttpClient, backstop: &Backstop) -> Vec<Value> {
    let listed = client
        .get(&backstop.admin_url("/api/v1/audit?limit=1000"))
        .await
        .json();
    listed["entries"]
        .as_array()
        .unwrap_or_else(|| panic!("no entries: {listed}"))
        .clone()
}

/// The audit log's actions, oldest first.
pub(crate) async fn audit_actions(client: &HttpClient, backstop: &Backstop) -> Vec<String> {
    audit_entries(client, backstop)
        .await
        .iter()
        .map(|e| e["action"].as_str().unwrap_or("").to_string())
        .collect()
}

/// Asserts that the audit log's hash chain verifies; names the entry
/// that does not.
pub(crate) async fn assert_audit_intact(client: &HttpClient, backstop: &Backstop) {
    let verdict = client
        .get(&backstop.admin_url("/api/v1/audit/verify"))
        .await
        .json();
    if verdict["intact"] != true {
        let entries = audit_entries(client, backstop).await;
        let broken = entries
            .iter()
            .find(|e| e["seq"] == verdict["broken_at_seq"])
            .cloned()
            .unwrap_or(Value::Null);
        panic!("audit chain broken: {verdict}\nentry: {broken:#}");
    }
}

/// Runs the CLI against the server (off the async workers, which the load
/// loops need): exit code, stdout, stderr.
pub(crate) async fn cli(backstop: &Backstop, dir: &Path, args: &[&str]) -> (i32, String, String) {
    let admin = format!("http://{}", backstop.admin);
    let dir = dir.to_path_buf();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_backstop"))
            .args(&args)
            .args(["--admin", &admin])
            .current_dir(dir)
            .env_remove("BACKSTOP_TOKEN")
            .env_remove("BACKSTOP_ADMIN")
            .output()
            .unwrap();
        (
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

/// One answer the load loop got.
#[derive(Debug)]
pub(crate) struct Seen {
    /// When the request was sent.
    pub(crate) sent: Instant,
    pub(crate) status: Option<StatusCode>,
    /// `x-backstop-version`: the version that answered.
    pub(crate) version: Option<String>,
    /// A 500 that v2's toy server injected on purpose.
    pub(crate) injected_by_v2: bool,
    /// A connection error or a missing answer.
    pub(crate) error: Option<String>,
}

impl Seen {
    /// Answered by a version: a 200, or v2's own injected failure.
    fn answered(&self) -> bool {
        self.error.is_none() && (self.status == Some(StatusCode::OK) || self.injected_by_v2)
    }
}

/// Background traffic: `workers` loops, each sending about `rate_per_worker`
/// inference requests a second, at most `max_per_worker` each and for at
/// most `limit`, until stopped.
pub(crate) struct Load {
    stop: Arc<AtomicBool>,
    workers: Vec<tokio::task::JoinHandle<Vec<Seen>>>,
}

impl Load {
    pub(crate) fn start(
        backstop: &Backstop,
        workers: usize,
        rate_per_worker: u64,
        limit: Duration,
    ) -> Load {
        const MAX_PER_WORKER: u64 = 10_000;
        let url = backstop.url("/v2/models/m/infer");
        let stop = Arc::new(AtomicBool::new(false));
        let deadline = Instant::now() + limit;
        let workers = (0..workers)
            .map(|_| {
                let (url, stop) = (url.clone(), stop.clone());
                tokio::spawn(async move {
                    let client = HttpClient::new();
                    let mut every =
                        tokio::time::interval(Duration::from_micros(1_000_000 / rate_per_worker));
                    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    let mut seen = Vec::new();
                    for _ in 0..MAX_PER_WORKER {
                        every.tick().await;
                        if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                            break;
                        }
                        let sent = Instant::now();
                        seen.push(match client.try_infer(&url).await {
                            Ok(answer) => {
                                let version = answer.version().map(str::to_string);
                                let injected_by_v2 = answer.status
                                    == StatusCode::INTERNAL_SERVER_ERROR
                                    && version.as_deref() == Some("v2")
                                    && String::from_utf8_lossy(&answer.body)
                                        .contains("injected failure");
                                Seen {
                                    sent,
                                    status: Some(answer.status),
                                    version,
                                    injected_by_v2,
                                    error: None,
                                }
                            }
                            Err(error) => Seen {
                                sent,
                                status: None,
                                version: None,
                                injected_by_v2: false,
                                error: Some(error),
                            },
                        });
                    }
                    seen
                })
            })
            .collect();
        Load { stop, workers }
    }

    /// Stops the loops and returns every answer, in no particular order.
    pub(crate) async fn finish(self) -> Vec<Seen> {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        for worker in self.workers {
            all.extend(worker.await.expect("load worker"));
        }
        all
    }
}

/// Requests the client saw fail for any reason but v2's injected errors.
pub(crate) fn failures(seen: &[Seen]) -> Vec<&Seen> {
    seen.iter().filter(|s| !s.answered()).collect()
}

/// How many answers each version gave among requests sent after `from`.
pub(crate) fn versions_since(seen: &[Seen], from: Instant) -> BTreeMap<String, u64> {
    let mut versions = BTreeMap::new();
    for s in seen.iter().filter(|s| s.sent >= from && s.answered()) {
        *versions
            .entry(s.version.clone().unwrap_or_else(|| "none".into()))
            .or_insert(0) += 1;
    }
    versions
}

/// `n` requests one after another: the versions that answered them.
async fn sequential(client: &HttpClient, backstop: &Backstop, n: usize) -> BTreeMap<String, u64> {
    let mut versions = BTreeMap::new();
    for _ in 0..n {
        let answer = client.infer(&backstop.url("/v2/models/m/infer"), &[]).await;
        assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
        *versions
            .entry(answer.version().unwrap_or("none").to_string())
            .or_insert(0) += 1;
    }
    versions
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_canary_walks_its_steps_and_promotes() {
    let (v1, v2) = (toy("v1").await, toy("v2").await);
    let backstop = Backstop::start(&config(&v1.url(), &v2.url()));
    let client = HttpClient::new();
    let load = Load::start(&backstop, 4, 50, Duration::from_secs(25));

    let text = policy(
        "{ canary: { steps: [10, 50, 100], bake: 1s } }",
        &[ERROR_TRIGGER],
    );
    let view = start(&client, &backstop, &text).await;
    assert_eq!(
        (view["phase"].as_str(), view["candidate_percent"].as_f64()),
        (Some("running"), Some(10.0)),
        "{view}"
    );
    let id = view["id"].as_str().unwrap().to_string();
    let view = wait_for_phase(&client, &backstop, &id, "promoted").await;
    let promoted_at = Instant::now();
    assert_eq!(view["open"], false, "{view}");
    assert_eq!(view["candidate_percent"], 100.0, "{view}");
    assert!(view.get("verdict").is_none(), "no verdict: {view}");
    assert_eq!(view["triggers"][0]["metric"], "error_rate", "{view}");
    assert!(
        view["triggers"][0]["candidate_requests"].as_u64().unwrap() >= 20,
        "{view}"
    );
    assert_eq!(v2_share(&client, &backstop).await, 100.0);
    // Let some traffic arrive after the promotion.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seen = load.finish().await;

    let failed = failures(&seen);
    assert!(failed.is_empty(), "client failures: {failed:?}");
    let after = versions_since(&seen, promoted_at);
    assert!(after.get("v2").copied().unwrap_or(0) > 0, "{after:?}");
    assert_eq!(after.keys().collect::<Vec<_>>(), ["v2"], "{after:?}");
    assert_eq!(
        sequential(&client, &backstop, 20).await,
        [("v2".into(), 20)].into()
    );

    let actions = audit_actions(&client, &backstop).await;
    for action in ["rollout.create", "rollout.start", "rollout.promote"] {
        assert!(
            actions.iter().any(|a| a == action),
            "{action} missing: {actions:?}"
        );
    }
    let stages = actions.iter().filter(|a| *a == "rollout.stage").count();
    assert_eq!(stages, 3, "one entry per step: {actions:?}");
    assert_audit_intact(&client, &backstop).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slower_candidate_is_rolled_back_on_latency_without_failing_a_request() {
    let (v1, v2) = (toy("v1").await, toy("v2").await);
    v1.behaviour.set_latency(Duration::from_millis(1));
    v2.behaviour.set_latency(Duration::from_millis(40));
    let backstop = Backstop::start(&config(&v1.url(), &v2.url()));
    let client = HttpClient::new();
    let load = Load::start(&backstop, 8, 30, Duration::from_secs(25));

    let text = policy(
        "{ canary: { steps: [25, 100], bake: 30s } }",
        &[LATENCY_TRIGGER],
    );
    let id = start(&client, &backstop, &text).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let view = wait_until(&client, &backstop, &id, "a finished phase", |v| {
        v["open"] == false
    })
    .await;
    let rolled_back_at = Instant::now();
    assert_eq!(view["phase"], "rolled_back", "{view:#}");
    let trigger = &view["verdict"]["trigger"];
    assert_eq!(view["verdict"]["by"], "trigger", "{view:#}");
    assert_eq!(trigger["metric"], "latency_p95", "{view:#}");
    assert_eq!(trigger["state"], "fired", "{view:#}");
    let (candidate, baseline) = (
        trigger["candidate_value"].as_f64().unwrap(),
        trigger["baseline_value"].as_f64().unwrap(),
    );
    assert!(candidate > baseline, "{candidate} vs {baseline}: {view:#}");
    assert!(
        trigger["e_value"].as_f64().unwrap() >= trigger["e_value_needed"].as_f64().unwrap(),
        "{view:#}"
    );
    let swap_us = view["rollback_timing"]["verdict_to_swap_us"]
        .as_f64()
        .unwrap_or_else(|| panic!("no rollback timing: {view:#}"));
    assert!((0.0..1e6).contains(&swap_us), "{swap_us}");
    assert_eq!(view["candidate_percent"], 0.0, "{view:#}");
    assert_eq!(v2_share(&client, &backstop).await, 0.0);

    tokio::time::sleep(Duration::from_millis(1000)).await;
    let seen = load.finish().await;
    let failed = failures(&seen);
    assert!(failed.is_empty(), "client failures: {failed:?}");
    let before: u64 = seen
        .iter()
        .filter(|s| s.sent < rolled_back_at && s.version.as_deref() == Some("v2"))
        .count() as u64;
    assert!(before > 0, "v2 served during the canary");
    let after = versions_since(&seen, rolled_back_at);
    assert_eq!(after.keys().collect::<Vec<_>>(), ["v1"], "{after:?}");
    assert!(after["v1"] > 10, "{after:?}");

    let actions = audit_actions(&client, &backstop).await;
    assert!(
        actions.iter().any(|a| a == "rollout.rollback"),
        "{actions:?}"
    );
    assert!(
        actions.iter().any(|a| a == "rollout.verdict"),
        "{actions:?}"
    );
    // Whether the chain still verifies after an automatic rollback is
    // `the_audit_chain_verifies_after_a_rollback_with_fractional_figures`,
    // ignored for a known bug.
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_candidate_is_rolled_back_on_errors() {
    let (v1, v2) = (toy("v1").await, toy("v2").await);
    v2.behaviour.set_error_rate(0.3);
    let backstop = Backstop::start(&config(&v1.url(), &v2.url()));
    let client = HttpClient::new();
    let load = Load::start(&backstop, 4, 50, Duration::from_secs(25));

    let text = policy(
        "{ canary: { steps: [25, 100], bake: 30s } }",
        &[ERROR_TRIGGER, LATENCY_TRIGGER],
    );
    let id = start(&client, &backstop, &text).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let view = wait_until(&client, &backstop, &id, "a finished phase", |v| {
        v["open"] == false
    })
    .await;
    let rolled_back_at = Instant::now();
    assert_eq!(view["phase"], "rolled_back", "{view:#}");
    let trigger = &view["verdict"]["trigger"];
    assert_eq!(trigger["metric"], "error_rate", "{view:#}");
    assert!(
        trigger["candidate_value"].as_f64().unwrap() > trigger["baseline_value"].as_f64().unwrap(),
        "{view:#}"
    );
    assert!(
        trigger["e_value"].as_f64().unwrap() >= trigger["e_value_needed"].as_f64().unwrap(),
        "{view:#}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seen = load.finish().await;
    let failed = failures(&seen);
    assert!(failed.is_empty(), "client failures: {failed:?}");
    assert!(seen.iter().any(|s| s.injected_by_v2), "v2 failed some");
    let after = versions_since(&seen, rolled_back_at);
    assert_eq!(after.keys().collect::<Vec<_>>(), ["v1"], "{after:?}");
    assert_eq!(v2_share(&client, &backstop).await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blue_green_flips_and_flips_back_when_the_candidate_fails() {
    let (v1, v2) = (toy("v1").await, toy("v2").await);
    let backstop = Backstop::start(&config(&v1.url(), &v2.url()));
    let client = HttpClient::new();
    let load = Load::start(&backstop, 4, 50, Duration::from_secs(25));

    let text = policy(
        "{ blue_green: { warmup: 1s, bake: 20s } }",
        &[ERROR_TRIGGER],
    );
    let view = start(&client, &backstop, &text).await;
    assert_eq!(view["candidate_percent"], 0.0, "warming up: {view}");
    let id = view["id"].as_str().unwrap().to_string();
    let view = wait_until(&client, &backstop, &id, "the flip", |v| {
        v["candidate_percent"] == 100.0 || v["open"] == false
    })
    .await;
    assert_eq!(
        (view["phase"].as_str(), view["stage"].as_u64()),
        (Some("running"), Some(1)),
        "{view:#}"
    );
    let flipped_at = Instant::now();
    assert_eq!(v2_share(&client, &backstop).await, 100.0);
    // Serve healthily on v2 a moment, then break it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    v2.behaviour.set_error_rate(0.5);

    let view = wait_until(&client, &backstop, &id, "a finished phase", |v| {
        v["open"] == false
    })
    .await;
    let flipped_back_at = Instant::now();
    assert_eq!(view["phase"], "rolled_back", "{view:#}");
    assert_eq!(
        view["verdict"]["trigger"]["metric"], "error_rate",
        "{view:#}"
    );
    assert_eq!(view["verdict"]["candidate_percent"], 100.0, "{view:#}");
    assert_eq!(v2_share(&client, &backstop).await, 0.0);

    tokio::time::sleep(Duration::from_millis(500)).await;
    let seen = load.finish().await;
    let failed = failures(&seen);
    assert!(failed.is_empty(), "client failures: {failed:?}");
    let during = seen
        .iter()
        .filter(|s| s.sent >= flipped_at && s.sent < flipped_back_at)
        .filter(|s| s.version.as_deref() == Some("v2") && s.status == Some(StatusCode::OK))
        .count();
    assert!(during > 0, "v2 answered after the flip");
    let after = versions_since(&seen, flipped_back_at);
    assert_eq!(after.keys().collect::<Vec<_>>(), ["v1"], "{after:?}");
    assert_eq!(
        sequential(&client, &backstop, 20).await,
        [("v1".into(), 20)].into()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_shadow_is_rejected_and_never_answers_a_client() {
    let (v1, v2) = (toy("v1").await, toy("v2").await);
    v2.behaviour.set_error_rate(0.5);
    let backstop = Backstop::start(&config(&v1.url(), &v2.url()));
    let client = HttpClient::new();
    let load = Load::start(&backstop, 4, 50, Duration::from_secs(25));

    let text = policy(
        "{ shadow: { percent: 50, duration: 20s } }",
        &[ERROR_TRIGGER],
    );
    let view = start(&client, &backstop, &text).await;
    assert_eq!(
        (
            view["candidate_percent"].as_f64(),
            view["shadow_percent"].as_f64()
        ),
        (Some(0.0), Some(50.0)),
        "{view}"
    );
    let id = view["id"].as_str().unwrap().to_string();
    let view = wait_until(&client, &backstop, &id, "a finished phase", |v| {
        v["open"] == false
    })
    .await;
    assert_eq!(view["phase"], "rejected", "{view:#}");
    assert_eq!(
        view["verdict"]["trigger"]["metric"], "error_rate",
        "{view:#}"
    );
    assert_eq!(view["shadow_percent"], 0.0, "{view:#}");
    let seen = load.finish().await;

    assert!(v2.behaviour.requests() > 0, "v2 got shadow copies");
    let failed = failures(&seen);
    assert!(failed.is_empty(), "client failures: {failed:?}");
    let all = versions_since(&seen, seen.iter().map(|s| s.sent).min().unwrap());
    assert_eq!(all.keys().collect::<Vec<_>>(), ["v1"], "{all:?}");
    assert!(
        seen.iter().all(|s| !s.injected_by_v2),
        "no v2 failure reached a client"
    );
    let actions = audit_actions(&client, &backstop).await;
    assert!(actions.iter().any(|a| a == "rollout.reject"), "{actions:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_open_at_a_kill_comes_back_paused_on_the_baseline() {
    let (v1, v2) = (toy("v1").await, toy("v2").await);
    let data = tempfile::tempdir().unwrap();
    let config = config(&v1.url(), &v2.url());
    let client = HttpClient::new();
    let backstop = Backstop::start_with_data_dir(&config, data.path());
    let text = policy(
        "{ canary: { steps: [50, 100], bake: 60s } }",
        &[ERROR_TRIGGER],
    );
    let id = start(&client, &backstop, &text).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let served = sequential(&client, &backstop, 60).await;
    assert!(served.get("v2").copied().unwrap_or(0) > 0, "{served:?}");
    assert_eq!(v2_share(&client, &backstop).await, 50.0);

    // kill -9 (`Child::kill` is SIGKILL), then the same config and data.
    drop(backstop);
    let backstop = Backstop::start_with_data_dir(&config, data.path());
    let view = status(&client, &backstop, "m").await;
    assert_eq!(view["id"], id.as_str(), "{view:#}");
    assert_eq!(
        (
            view["phase"].as_str(),
            view["paused_by"].as_str(),
            view["candidate_percent"].as_f64(),
            view["open"].as_bool(),
        ),
        (Some("paused"), Some("restart"), Some(0.0), Some(true)),
        "{view:#}"
    );
    assert_eq!(v2_share(&client, &backstop).await, 0.0);
    assert_eq!(
        sequential(&client, &backstop, 40).await,
        [("v1".into(), 40)].into()
    );
    // It stays paused: ticks do not move it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(status(&client, &backstop, &id).await["phase"], "paused");

    let answer = command(&client, &backstop, &id, "resume").await;
    let view = answer.json();
    assert_eq!(answer.status, StatusCode::OK, "{view:#}");
    assert_eq!(
        (
            view["phase"].as_str(),
            view["candidate_percent"].as_f64(),
            view["stage"].as_u64()
        ),
        (Some("running"), Some(50.0), Some(0)),
        "{view:#}"
    );
    assert!(view.get("paused_by").is_none(), "{view:#}");
    assert_eq!(v2_share(&client, &backstop).await, 50.0);
    let served = sequential(&client, &backstop, 60).await;
    assert!(served.get("v2").copied().unwrap_or(0) > 0, "{served:?}");

    let actions = audit_actions(&client, &backstop).await;
    assert!(actions.iter().any(|a| a == "rollout.pause"), "{actions:?}");
    assert!(actions.iter().any(|a| a == "rollout.resume"), "{actions:?}");
    assert_audit_intact(&client, &backstop).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_policies_are_refused_with_file_line_and_field_and_start_nothing() {
    let (v1, v2) = (toy("v1").await, toy("v2").await);
    let backstop = Backstop::start(&config(&v1.url(), &v2.url()));
    let client = HttpClient::new();
    // Line 6, the trigger's `above`: a latency where a rate belongs.
    let bad = policy(
        "{ canary: { steps: [10, 100], bake: 1s } }",
        &[r#"{ metric: error_rate, above: "250ms", action: rollback }"#],
    );
    assert_eq!(
        bad.lines().nth(5).unwrap().trim_start(),
        "- { metric: error_rate, above: \"250ms\", action: rollback }"
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bad.yaml"), &bad).unwrap();

    let (code, stdout, stderr) =
        cli(&backstop, dir.path(), &["rollout", "start", "bad.yaml"]).await;
    assert_eq!(code, 2, "stdout: {stdout}\nstderr: {stderr}");
    let line = stderr
        .lines()
        .find(|l| l.starts_with("bad.yaml:"))
        .unwrap_or_else(|| panic!("no position: {stderr}"));
    let mut parts = line.splitn(4, ':');
    let (file, row, column, rest) = (
        parts.next().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap_or(""),
    );
    assert_eq!((file, row), ("bad.yaml", "6"), "{line}");
    assert!(column.parse::<u32>().is_ok_and(|c| c > 0), "{line}");
    assert!(rest.starts_with(" triggers[0].above: "), "{line}");

    let answer = client
        .post_json(
            &backstop.admin_url("/api/v1/rollouts"),
            &json!({"policy": bad, "file": "bad.yaml"}),
        )
        .await;
    let error = answer.json();
    assert_eq!(answer.status, StatusCode::UNPROCESSABLE_ENTITY, "{error}");
    assert_eq!(error["error"]["code"], "invalid_policy", "{error}");
    assert_eq!(error["error"]["field"], "triggers[0].above", "{error}");
    let message = error["error"]["message"].as_str().unwrap();
    assert!(message.starts_with("bad.yaml:6:"), "{message}");

    // A version the gateway does not route: the API locates it too.
    let unknown = policy(
        "{ canary: { steps: [10, 100], bake: 1s } }",
        &[ERROR_TRIGGER],
    )
    .replace("candidate: v2", "candidate: v7");
    let (code, _, stderr) = {
        std::fs::write(dir.path().join("unknown.yaml"), &unknown).unwrap();
        cli(&backstop, dir.path(), &["rollout", "start", "unknown.yaml"]).await
    };
    assert_ne!(code, 0, "{stderr}");
    assert!(stderr.contains("unknown.yaml:2:"), "{stderr}");

    let listed = client
        .get(&backstop.admin_url("/api/v1/rollouts"))
        .await
        .json();
    assert_eq!(listed["rollouts"], json!([]), "nothing started: {listed}");
    assert_eq!(v2_share(&client, &backstop).await, 0.0);
    assert_eq!(
        sequential(&client, &backstop, 10).await,
        [("v1".into(), 10)].into()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_condemned_candidate_needs_force() {
    let (v1, v2) = (toy("v1").await, toy("v2").await);
    let backstop = Backstop::start(&config(&v1.url(), &v2.url()));
    let client = HttpClient::new();
    let text = policy(
        "{ canary: { steps: [50, 100], bake: 60s } }",
        &[ERROR_TRIGGER],
    );
    let id = start(&client, &backstop, &text).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let answer = command(&client, &backstop, &id, "rollback").await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.json());
    assert_eq!(answer.json()["phase"], "rolled_back");
    assert_eq!(
        sequential(&client, &backstop, 10).await,
        [("v1".into(), 10)].into()
    );

    let rollouts = backstop.admin_url("/api/v1/rollouts");
    let answer = client.post_json(&rollouts, &json!({"policy": text})).await;
    let error = answer.json();
    assert_eq!(
        (answer.status, error["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("candidate_condemned")),
        "{error}"
    );
    assert!(
        error["error"]["message"].as_str().unwrap().contains(&id),
        "{error}"
    );
    assert_eq!(
        v2_share(&client, &backstop).await,
        0.0,
        "refused: nothing moved"
    );

    let answer = client
        .post_json(&rollouts, &json!({"policy": text, "force": true}))
        .await;
    let view = answer.json();
    assert_eq!(answer.status, StatusCode::CREATED, "{view}");
    assert_ne!(view["id"], id.as_str());
    assert_eq!(
        (view["phase"].as_str(), view["candidate_percent"].as_f64()),
        (Some("running"), Some(50.0)),
        "{view}"
    );
    assert_eq!(v2_share(&client, &backstop).await, 50.0);
    let listed = client.get(&rollouts).await.json();
    assert_eq!(listed["rollouts"].as_array().unwrap().len(), 2, "{listed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_starts_a_rollout_and_shows_its_status_as_json() {
    let (v1, v2) = (toy("v1").await, toy("v2").await);
    let backstop = Backstop::start(&config(&v1.url(), &v2.url()));
    let client = HttpClient::new();
    let dir = tempfile::tempdir().unwrap();
    let text = policy(
        "{ canary: { steps: [10, 100], bake: 60s } }",
        &[ERROR_TRIGGER, LATENCY_TRIGGER],
    );
    std::fs::write(dir.path().join("canary.yaml"), &text).unwrap();
    let (code, stdout, stderr) = cli(
        &backstop,
        dir.path(),
        &["rollout", "start", "canary.yaml", "--output", "json"],
    )
    .await;
    assert_eq!(code, 0, "stdout: {stdout}\nstderr: {stderr}");
    let started: Value = serde_json::from_str(&stdout).unwrap();
    let id = started["id"].as_str().unwrap().to_string();
    sequential(&client, &backstop, 30).await;

    let (code, stdout, stderr) = cli(
        &backstop,
        dir.path(),
        &["rollout", "status", "m", "--output", "json"],
    )
    .await;
    assert_eq!(code, 0, "stdout: {stdout}\nstderr: {stderr}");
    let shown: Value =
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"));
    assert_eq!(shown["id"], id.as_str(), "{shown:#}");
    assert_eq!(shown["phase"], "running", "{shown:#}");
    assert_eq!(shown["candidate_percent"], 10.0, "{shown:#}");
    let triggers = shown["triggers"].as_array().unwrap();
    assert_eq!(triggers.len(), 2, "{shown:#}");
    assert_eq!(triggers[0]["metric"], "error_rate", "{shown:#}");
    assert_eq!(triggers[1]["metric"], "latency_p95", "{shown:#}");
    for trigger in triggers {
        for field in [
            "rule",
            "state",
            "e_value",
            "e_value_needed",
            "candidate_requests",
        ] {
            assert!(trigger.get(field).is_some(), "{field}: {trigger}");
        }
    }

    // Aborted, it still shows by id.
    let (code, _, stderr) = cli(&backstop, dir.path(), &["rollout", "abort", "m"]).await;
    assert_eq!(code, 0, "{stderr}");
    let (code, stdout, stderr) = cli(
        &backstop,
        dir.path(),
        &["rollout", "status", &id, "--output", "json"],
    )
    .await;
    assert_eq!(code, 0, "{stderr}");
    let shown: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        (shown["phase"].as_str(), shown["open"].as_bool()),
        (Some("aborted"), Some(false)),
        "{shown:#}"
    );
}

/// A verdict's figures are floats; the audit entry holding them must still
/// verify once read back. `0.09752343323075807` is one of the ~9% of
/// doubles that serde_json's default (non-`float_roundtrip`) parser reads
/// back one ULP off, so the check is deterministic here; automatic
/// rollbacks, whose e-values and rates are arbitrary doubles, hit the
/// same thing in about one run in three.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_chain_verifies_after_a_rollback_with_fractional_figures() {
    let (v1, v2) = (toy("v1").await, toy("v2").await);
    let backstop = Backstop::start(&config(&v1.url(), &v2.url()));
    let client = HttpClient::new();
    let text = policy(
        "{ canary: { steps: [0.09752343323075807, 100], bake: 60s } }",
        &[ERROR_TRIGGER],
    );
    let id = start(&client, &backstop, &text).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_audit_intact(&client, &backstop).await;
    let answer = command(&client, &backstop, &id, "rollback").await;
    let view = answer.json();
    assert_eq!(answer.status, StatusCode::OK, "{view}");
    assert_eq!(view["verdict"]["by"], "operator", "{view}");
    assert_audit_intact(&client, &backstop).await;
}
