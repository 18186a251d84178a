//! Model-aware signals end to end: requests checked against each
//! version's registered signature, predictions read from the answers,
//! agreement on mirrored copies, the per-request fallback to the baseline,
//! and business KPIs joined from the feedback API — each judged by the
//! real controller in the real binary.

use crate::rollout::{cli, config, policy, refused, start, wait_for_phase};
use crate::util::*;
use http::StatusCode;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// A model server answering OIP requests with fixed class probabilities,
/// or with an error status; counts what it was sent.
struct ModelServer {
    url: String,
    probabilities: Arc<Mutex<Vec<f64>>>,
    status: Arc<Mutex<u16>>,
    /// Bytes of padding added to each answer (a `pad` field).
    padding: Arc<Mutex<usize>>,
    requests: Arc<AtomicU64>,
    /// Requests that asked for a compressed answer.
    compressed_asked: Arc<AtomicU64>,
}

impl ModelServer {
    async fn start(probabilities: &[f64]) -> ModelServer {
        let probabilities = Arc::new(Mutex::new(probabilities.to_vec()));
        let status = Arc::new(Mutex::new(200u16));
        let requests = Arc::new(AtomicU64::new(0));
        let padding = Arc::new(Mutex::new(0usize));
        let compressed_asked = Arc::new(AtomicU64::new(0));
        let (p, s, r) = (probabilities.clone(), status.clone(), requests.clone());
        let (pad, gz) = (padding.clone(), compressed_asked.clone());
        let app = axum::Router::new().fallback(move |uri: http::Uri, headers: http::HeaderMap| {
            let (p, s, r, pad, gz) = (p.clone(), s.clone(), r.clone(), pad.clone(), gz.clone());
            async move {
                if uri.path().contains("health") {
                    return (StatusCode::OK, String::new());
                }
                r.fetch_add(1, Ordering::SeqCst);
                if headers.contains_key("accept-encoding") {
                    gz.fetch_add(1, Ordering::SeqCst);
                }
                let status = StatusCode::from_u16(*s.lock().unwrap()).unwrap();
                let data = p.lock().unwrap().clone();
                let body = json!({"model_name": "m", "outputs": [
                    {"name": "probs", "datatype": "FP32", "shape": [1, data.len()], "data": data}
                ], "pad": "x".repeat(*pad.lock().unwrap())});
                (status, body.to_string())
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        ModelServer {
            url,
            probabilities,
            status,
            padding,
            requests,
            compressed_asked,
        }
    }

    fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }
}

const AGE_REQUEST: &str =
    r#"{"inputs":[{"name":"age","datatype":"FP32","shape":[1,1],"data":[31.5]}]}"#;

const OUTPUT: &str = "signals: { output: { field: probs, kind: probabilities } }\n";

/// Sends `n` requests for model `m`; the answers.
async fn send(client: &HttpClient, backstop: &Backstop, n: usize, body: &str) -> Vec<Answer> {
    let url = backstop.url("/v2/models/m/infer");
    let mut answers = Vec::with_capacity(n);
    for _ in 0..n {
        let headers = [("content-type", "application/json")];
        answers.push(
            client
                .send(http::Method::POST, &url, &headers, body.to_string())
                .await,
        );
    }
    answers
}

/// Sends requests until the rollout reaches `phase` (bounded by the
/// phase deadline of [`wait_for_phase`] and a request budget).
async fn drive_until(
    client: &HttpClient,
    backstop: &Backstop,
    id: &str,
    phase: &str,
    body: &str,
) -> Value {
    let driver = {
        let (url, body) = (backstop.url("/v2/models/m/infer"), body.to_string());
        tokio::spawn(async move {
            let client = HttpClient::new();
            for _ in 0..4000 {
                let headers = [("content-type", "application/json")];
                client
                    .send(http::Method::POST, &url, &headers, body.clone())
                    .await;
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        })
    };
    let view = wait_for_phase(client, backstop, id, phase).await;
    driver.abort();
    view
}

/// Registers `version` of `m` with an input signature (an `age` tensor of
/// `datatype`) through the CLI.
async fn register(backstop: &Backstop, version: &str, datatype: &str) {
    let dir = tempfile::tempdir().unwrap();
    let artifact = dir.path().join("model.bin");
    std::fs::write(&artifact, version.as_bytes()).unwrap();
    std::fs::write(
        dir.path().join("sig.yaml"),
        format!("inputs:\n  - {{ name: age, datatype: {datatype}, shape: [-1, 1] }}\n"),
    )
    .unwrap();
    let args = [
        "version",
        "register",
        "m",
        version,
        "--artifact",
        artifact.to_str().unwrap(),
        "--signature",
        "sig.yaml",
    ];
    let (code, _, stderr) = cli(backstop, dir.path(), &args).await;
    assert_eq!(code, 0, "{stderr}");
}

/// v1 and v2 answering these class probabilities, a rollout of `policy`
/// driven with OIP requests until it rolls back: its view.
async fn roll_back_with(v1: &[f64], v2: &[f64], policy: &str) -> Value {
    let (v1, v2) = (ModelServer::start(v1).await, ModelServer::start(v2).await);
    let backstop = Backstop::start(&config(&v1.url, &v2.url));
    let client = HttpClient::new();
    let view = start(&client, &backstop, policy).await;
    let id = view["id"].as_str().unwrap().to_string();
    drive_until(&client, &backstop, &id, "rolled_back", INFER_BODY).await
}

/// A counter of model `m`'s `version` on `/metrics`.
async fn counter(client: &HttpClient, backstop: &Backstop, name: &str, version: &str) -> u64 {
    let metrics = client.get(&backstop.admin_url("/metrics")).await;
    let metrics = String::from_utf8_lossy(&metrics.body);
    let prefix = format!(r#"{name}{{model="m",version="{version}"}} "#);
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("{prefix} not in {metrics}"))
        .parse()
        .unwrap()
}

fn verdict_rule(view: &Value) -> String {
    view["verdict"]["trigger"]["rule"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// A candidate registered with an input signature today's clients do not
/// fit (it expects INT64 ages, they send FP32) is rolled back on its
/// schema violation rate; a policy naming a feature the signature lacks is
/// refused with the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_candidate_whose_signature_clients_break_is_rolled_back() {
    let (v1, v2) = (toy("v1").await, toy("v2").await);
    let backstop = Backstop::start(&config(&v1.url(), &v2.url()));
    register(&backstop, "v1", "FP32").await;
    register(&backstop, "v2", "INT64").await;
    let client = HttpClient::new();

    let unknown = policy(
        "{ canary: { steps: [50, 100], bake: 1m } }",
        &[r#"{ metric: null_rate, feature: income, above: "1%", action: rollback }"#],
    );
    let message = refused(&client, &backstop, &unknown).await;
    assert!(message.contains("triggers[0].feature"), "{message}");
    assert!(
        message.contains("has no feature \\\"income\\\" (it has: age)"),
        "{message}"
    );

    let guarded = policy(
        "{ canary: { steps: [50, 100], bake: 1m } }",
        &[
            r#"{ metric: schema_violation_rate, above: "+5pp", min_sample: 20, action: rollback }"#,
            r#"{ metric: null_rate, feature: age, above: "+5pp", min_sample: 20, action: notify }"#,
        ],
    );
    let view = start(&client, &backstop, &guarded).await;
    let id = view["id"].as_str().unwrap().to_string();
    let view = drive_until(&client, &backstop, &id, "rolled_back", AGE_REQUEST).await;
    assert!(
        verdict_rule(&view).starts_with("schema_violation_rate above +5pp"),
        "{view:#}"
    );
    let trigger = &view["verdict"]["trigger"];
    assert_eq!(
        trigger["candidate_value"], 1.0,
        "every request breaks v2's signature"
    );
    assert_eq!(trigger["baseline_value"], 0.0, "and none v1's");
    let checked = counter(
        &client,
        &backstop,
        "backstop_signal_inputs_checked_total",
        "v2",
    )
    .await;
    assert!(checked > 0);
    let violations = "backstop_signal_schema_violations_total";
    assert_eq!(counter(&client, &backstop, violations, "v2").await, checked);
    assert_eq!(counter(&client, &backstop, violations, "v1").await, 0);
    // Nulls: none on either side, so the null trigger never breached.
    assert_eq!(view["triggers"][1]["state"], "ok", "{view:#}");
}

/// Input checks go on after a restart: the signatures live in the
/// gateway's memory and are given again when the open rollout is loaded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_checks_go_on_after_a_restart() {
    let (v1, v2) = (toy("v1").await, toy("v2").await);
    let data = tempfile::tempdir().unwrap();
    let config = config(&v1.url(), &v2.url());
    let backstop = Backstop::start_with_data_dir(&config, data.path());
    register(&backstop, "v1", "FP32").await;
    register(&backstop, "v2", "FP32").await;
    let client = HttpClient::new();
    let guarded = policy(
        "{ canary: { steps: [50, 100], bake: 10m } }",
        &[r#"{ metric: schema_violation_rate, above: "+5pp", action: rollback }"#],
    );
    let id = start(&client, &backstop, &guarded).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    drop(backstop);

    let backstop = Backstop::start_with_data_dir(&config, data.path());
    let answer = crate::rollout::command(&client, &backstop, &id, "resume").await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.json());
    send(&client, &backstop, 40, AGE_REQUEST).await;
    let checked = counter(
        &client,
        &backstop,
        "backstop_signal_inputs_checked_total",
        "v2",
    )
    .await;
    assert!(checked > 0, "no input of v2 checked after the restart");
}

/// The candidate answers less confidently (and with another class): the
/// confidence trigger rolls it back; its predictions are read from the
/// OIP answers the clients got.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_less_confident_candidate_is_rolled_back_on_confidence() {
    let text = format!(
        "{}{OUTPUT}",
        policy(
            "{ canary: { steps: [50, 100], bake: 1m } }",
            &[
                r#"{ metric: confidence_mean, below: "0.7", min_sample: 20, action: rollback }"#,
                r#"{ metric: prediction_shift, above: "0.2", min_sample: 20, action: notify }"#,
            ],
        )
    );
    let view = roll_back_with(&[0.9, 0.1], &[0.45, 0.55], &text).await;
    assert!(
        verdict_rule(&view).starts_with("confidence_mean below 0.7"),
        "{view:#}"
    );
    let value = view["verdict"]["trigger"]["candidate_value"]
        .as_f64()
        .unwrap();
    assert!((value - 0.55).abs() < 1e-6, "{view:#}");
}

/// A canary's mirror sample sends the candidate's requests to the
/// baseline too; answers that disagree (another class) roll it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disagreeing_with_the_baseline_on_mirrored_requests_rolls_back() {
    let text = format!(
        "{}signals: {{ output: {{ field: probs, kind: probabilities }}, mirror_percent: 100 }}\n",
        policy(
            "{ canary: { steps: [20, 100], bake: 1m } }",
            &[r#"{ metric: agreement_rate, below: "90%", min_sample: 20, action: rollback }"#],
        )
    );
    let view = roll_back_with(&[0.9, 0.1], &[0.2, 0.8], &text).await;
    assert!(
        verdict_rule(&view).starts_with("agreement_rate below 90%"),
        "{view:#}"
    );
    assert_eq!(
        view["verdict"]["trigger"]["candidate_value"], 0.0,
        "{view:#}"
    );
}

/// With a fallback that judges answers, mirrored copies still measure
/// agreement (the candidate's answer, read once for the fallback, joins
/// its pair).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agreement_is_measured_beside_a_judging_fallback() {
    let text = format!(
        "{}signals: {{ output: {{ field: probs, kind: probabilities }}, mirror_percent: 100 }}\n\
         fallback: {{ confidence_below: 0.6 }}\n",
        policy(
            "{ canary: { steps: [20, 100], bake: 1m } }",
            &[r#"{ metric: agreement_rate, below: "90%", min_sample: 20, action: rollback }"#],
        )
    );
    let view = roll_back_with(&[0.9, 0.1], &[0.2, 0.8], &text).await;
    assert!(
        verdict_rule(&view).starts_with("agreement_rate below 90%"),
        "{view:#}"
    );
}

/// The fallback judges predictions only: a metadata call is passed on as
/// the candidate answered it, an answer too large to read is passed on
/// unjudged (never taken for a failure), and answers that are read are
/// asked for uncompressed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fallback_judges_only_predictions_it_can_read() {
    let v1 = ModelServer::start(&[0.9, 0.1]).await;
    let v2 = ModelServer::start(&[0.2, 0.8]).await;
    let backstop = Backstop::start(&config(&v1.url, &v2.url));
    let client = HttpClient::new();
    let text = format!(
        "{}{OUTPUT}fallback: {{}}\n",
        policy(
            "{ canary: { steps: [50, 100], bake: 1m } }",
            &[r#"{ metric: fallback_rate, above: "50%", min_sample: 20, action: notify }"#],
        )
    );
    start(&client, &backstop, &text).await;

    // Metadata: no prediction in it, and none expected.
    for _ in 0..20 {
        let answer = client
            .send(
                http::Method::GET,
                &backstop.url("/v2/models/m"),
                &[],
                String::new(),
            )
            .await;
        assert_eq!(answer.status, StatusCode::OK);
        assert!(
            !answer.headers.contains_key("x-backstop-fallback"),
            "{:?}",
            answer.headers
        );
    }

    // A 1.5 MB answer from v2: passed on whole, unjudged.
    *v2.padding.lock().unwrap() = 1_500_000;
    let headers = [
        ("content-type", "application/json"),
        ("accept-encoding", "gzip"),
    ];
    let url = backstop.url("/v2/models/m/infer");
    let mut from_v2 = 0;
    for _ in 0..20 {
        let answer = client
            .send(http::Method::POST, &url, &headers, INFER_BODY.to_string())
            .await;
        assert_eq!(answer.status, StatusCode::OK);
        assert!(
            !answer.headers.contains_key("x-backstop-fallback"),
            "{:?}",
            answer.headers
        );
        if answer.version() == Some("v2") {
            from_v2 += 1;
            assert!(answer.body.len() > 1_500_000, "{} bytes", answer.body.len());
            assert_eq!(answer.json()["outputs"][0]["data"][1], 0.8);
        }
    }
    assert!(from_v2 > 0, "v2 answered none of 20");
    assert_eq!(
        v2.compressed_asked.load(Ordering::SeqCst),
        0,
        "read answers are asked plain"
    );
}

/// A failing candidate's requests are answered by the baseline, exactly
/// once each: every client gets a 200, the ones the candidate failed say
/// so in `x-backstop-fallback`, and the baseline served each of them
/// once. The fallback rate then rolls the candidate back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_and_unsure_candidate_answers_fall_back_to_the_baseline_once() {
    let v1 = ModelServer::start(&[0.9, 0.1]).await;
    let v2 = ModelServer::start(&[0.2, 0.8]).await;
    *v2.status.lock().unwrap() = 500;
    let backstop = Backstop::start(&config(&v1.url, &v2.url));
    let client = HttpClient::new();
    let text = format!(
        "{}{OUTPUT}fallback: {{ confidence_below: 0.6 }}\n",
        policy(
            "{ canary: { steps: [50, 100], bake: 1m } }",
            &[
                r#"{ metric: fallback_rate, above: "20%", min_sample: 20, for: 1m, action: rollback }"#
            ],
        )
    );
    let view = start(&client, &backstop, &text).await;
    let id = view["id"].as_str().unwrap().to_string();

    let answers = send(&client, &backstop, 40, INFER_BODY).await;
    let fell_back: Vec<&Answer> = answers
        .iter()
        .filter(|a| a.headers.contains_key("x-backstop-fallback"))
        .collect();
    assert!(
        answers.iter().all(|a| a.status == StatusCode::OK),
        "no client saw the 500"
    );
    assert!(answers.iter().all(|a| a.version() == Some("v1")));
    assert_eq!(
        fell_back.len() as u64,
        v2.requests(),
        "one fallback per failed request"
    );
    assert!(!fell_back.is_empty());
    assert!(fell_back
        .iter()
        .all(|a| a.headers["x-backstop-fallback"] == "server_error"));
    assert_eq!(v1.requests(), 40, "the baseline answered each request once");

    // An unsure candidate: answered, but under the confidence floor.
    *v2.status.lock().unwrap() = 200;
    *v2.probabilities.lock().unwrap() = vec![0.45, 0.55];
    let before = (v1.requests(), v2.requests());
    let answers = send(&client, &backstop, 40, INFER_BODY).await;
    let unsure = answers
        .iter()
        .filter(|a| {
            a.headers
                .get("x-backstop-fallback")
                .is_some_and(|v| v == "low_confidence")
        })
        .count() as u64;
    assert_eq!(unsure, v2.requests() - before.1);
    assert_eq!(v1.requests() - before.0, 40);
    assert!(answers
        .iter()
        .all(|a| a.json()["outputs"][0]["data"][0] == 0.9));

    // What an SRE's dashboard sees: fallbacks by reason, on the candidate.
    let metrics = client.get(&backstop.admin_url("/metrics")).await;
    let metrics = String::from_utf8_lossy(&metrics.body);
    for line in [
        format!(
            r#"backstop_fallbacks_total{{model="m",version="v2",reason="server_error"}} {}"#,
            fell_back.len()
        ),
        format!(
            r#"backstop_fallbacks_total{{model="m",version="v2",reason="low_confidence"}} {unsure}"#
        ),
        r#"backstop_fallbacks_total{model="m",version="v1",reason="server_error"} 0"#.to_string(),
    ] {
        assert!(metrics.contains(&line), "{line} not in {metrics}");
    }

    // Confident again: the candidate's own answers go through.
    *v2.probabilities.lock().unwrap() = vec![0.2, 0.8];
    let answers = send(&client, &backstop, 20, INFER_BODY).await;
    assert!(answers.iter().any(|a| a.version() == Some("v2")));
    assert!(answers
        .iter()
        .all(|a| !a.headers.contains_key("x-backstop-fallback")));

    // The controller sees the fallbacks (ticks trail the requests).
    let view =
        crate::rollout::wait_until(&client, &backstop, &id, "a breaching fallback rate", |v| {
            v["triggers"][0]["state"] == "breaching"
        })
        .await;
    let rate = view["triggers"][0]["candidate_value"].as_f64().unwrap();
    assert!(rate > 0.2, "{view:#}");
}

/// Conversions posted to the feedback API, joined to the version that
/// answered: the candidate converts less and is rolled back on the KPI.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kpi_drop_reported_through_feedback_rolls_back() {
    let (v1, v2) = (toy("v1").await, toy("v2").await);
    let backstop = Backstop::start(&config(&v1.url(), &v2.url()));
    let client = HttpClient::new();
    let text = policy(
        "{ canary: { steps: [50, 100], bake: 1m } }",
        &[r#"{ metric: kpi, kpi: conversion, below: "-10%", min_sample: 30, action: rollback }"#],
    );
    let view = start(&client, &backstop, &text).await;
    let id = view["id"].as_str().unwrap().to_string();
    let feedback = backstop.admin_url("/api/v1/feedback");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut round = 0u64;
    loop {
        let answers = send(&client, &backstop, 20, INFER_BODY).await;
        // v1 converts 60% of the time, v2 20%: deterministic by position.
        let items: Vec<Value> = answers
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let converted = match a.version() {
                    Some("v1") => (i + round as usize) % 5 < 3,
                    _ => (i + round as usize).is_multiple_of(5),
                };
                json!({
                    "request_id": a.headers["x-backstop-request-id"].to_str().unwrap(),
                    "kpis": {"conversion": u8::from(converted)},
                })
            })
            .collect();
        let answer = client
            .post_json(&feedback, &json!({ "items": items }))
            .await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.json());
        assert_eq!(answer.json()["accepted"], 20);
        let view = crate::rollout::status(&client, &backstop, &id).await;
        if view["phase"] == "rolled_back" {
            assert!(
                verdict_rule(&view).starts_with("kpi{kpi=conversion} below -10%"),
                "{view:#}"
            );
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no rollback: {view:#}"
        );
        round += 1;
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
