//! Incidents end to end: a rollback of the real `backstop serve` opens an
//! incident whose evidence is frozen and redacted, tells the policy's
//! receivers (retrying a failing one, across a restart), runs hooks
//! without letting a failing one touch the rollback, and verifies
//! recovery — "recovered", or "not recovered" and escalated.

use crate::rollout::{
    assert_audit_intact, cli, config, failures, policy, start, wait_for_phase, Load, ERROR_TRIGGER,
    LATENCY_TRIGGER,
};
use crate::util::*;
use http::StatusCode;
use serde_json::Value;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the receivers in these tests must never see, nor the disk.
const SECRET: &str = "123-45-6789";

/// A local webhook receiver: records every request (path, JSON body) and
/// answers 500 for the first `failures` requests, or while `down`.
struct Receiver {
    url: String,
    hits: Arc<Mutex<Vec<(String, Value)>>>,
    down: Arc<AtomicBool>,
    _server: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start(failures: u32) -> Receiver {
        let hits: Arc<Mutex<Vec<(String, Value)>>> = Arc::default();
        let down = Arc::new(AtomicBool::new(false));
        let left = Arc::new(AtomicU32::new(failures));
        let (h, d) = (hits.clone(), down.clone());
        let app = axum::Router::new().fallback(move |uri: http::Uri, body: bytes::Bytes| {
            let (hits, down, left) = (h.clone(), d.clone(), left.clone());
            async move {
                let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
                hits.lock().unwrap().push((uri.path().to_string(), json));
                let failing = down.load(Ordering::SeqCst)
                    || left
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                        .is_ok();
                if failing {
                    StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    StatusCode::OK
                }
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Receiver {
            url,
            hits,
            down,
            _server: server,
        }
    }

    fn hits(&self, path: &str) -> Vec<Value> {
        let hits = self.hits.lock().unwrap();
        hits.iter()
            .filter(|(p, _)| p == path)
            .map(|(_, body)| body.clone())
            .collect()
    }
}

async fn get_json(client: &HttpClient, backstop: &Backstop, path: &str) -> Value {
    let answer = client.get(&backstop.admin_url(path)).await;
    let json = answer.json();
    assert_eq!(answer.status, StatusCode::OK, "{path}: {json}");
    json
}

/// Polls the incident until `done` holds; panics with it after 30 s.
async fn wait_for_incident(
    client: &HttpClient,
    backstop: &Backstop,
    id: &str,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answer = client
            .get(&backstop.admin_url(&format!("/api/v1/incidents/{id}")))
            .await;
        if answer.status == StatusCode::OK && done(&answer.json()) {
            return answer.json();
        }
        if Instant::now() > deadline {
            panic!(
                "incident {id} never reached {what}: {:#}\nlogs:\n{}",
                answer.json(),
                backstop.logs()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Requests that carry the secret in a JSON field and in an OIP tensor.
async fn send_secrets(client: &HttpClient, backstop: &Backstop, n: usize) {
    let body = format!(
        r#"{{"inputs":[{{"name":"ssn","datatype":"BYTES","shape":[1],"data":["{SECRET}"]}},{{"name":"x","datatype":"FP32","shape":[1],"data":[0.5]}}],"parameters":{{"user_id":"u-42","ssn":"{SECRET}"}}}}"#
    );
    for _ in 0..n {
        client
            .send(
                http::Method::POST,
                &backstop.url("/v2/models/m/infer"),
                &[("content-type", "application/json")],
                bytes::Bytes::from(body.clone()),
            )
            .await;
    }
}

/// Every file under `dir`, read whole (the store, its WAL, artifacts).
fn disk_contains(dir: &std::path::Path, needle: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(disk_contains(&path, needle));
        } else if let Ok(bytes) = std::fs::read(&path) {
            if bytes.windows(needle.len()).any(|w| w == needle) {
                found.push(path.display().to_string());
            }
        }
    }
    found
}

/// Registers v2 in the registry (so the incident can pin its artifact).
async fn register_v2(backstop: &Backstop, dir: &std::path::Path) {
    let artifact = dir.join("model.onnx");
    std::fs::write(&artifact, b"v2 weights").unwrap();
    let signature = dir.join("sig.yaml");
    std::fs::write(
        &signature,
        "inputs:\n  - { name: x, datatype: FP32, shape: [1] }\n",
    )
    .unwrap();
    let (code, _, stderr) = cli(
        backstop,
        dir,
        &[
            "version",
            "register",
            "m",
            "v2",
            "--artifact",
            artifact.to_str().unwrap(),
            "--signature",
            signature.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(code, 0, "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_opens_an_incident_with_frozen_redacted_evidence_and_tells_people() {
    let (v1, v2) = (toy("v1").await, toy("v2").await);
    v2.behaviour.set_error_rate(0.3);
    // The pager fails twice before it takes the alert: retried, delivered.
    let pager = Receiver::start(2).await;
    let flags = Receiver::start(0).await;
    let team = Receiver::start(0).await;
    let backstop = Backstop::start(&config(&v1.url(), &v2.url()));
    let dir = tempfile::tempdir().unwrap();
    register_v2(&backstop, dir.path()).await;
    let client = HttpClient::new();

    let mut text = policy(
        "{ canary: { steps: [50, 100], bake: 60s } }",
        &[ERROR_TRIGGER],
    );
    text.push_str(&format!(
        r#"evidence: {{ sample_percent: 100, samples: 2000, redact: [ssn], hash: [user_id] }}
verification: {{ window: 2s, min_sample: 20 }}
hooks:
  - {{ name: flags-off, url: "{flags}/hooks/flags", timeout: 1s, retries: 0 }}
  - {{ name: cache, url: "http://127.0.0.1:9/never", timeout: 500ms, retries: 1 }}
notify:
  - {{ name: oncall, url: "{pager}/alerts", format: alertmanager, severities: [critical] }}
  - {{ name: team, url: "{team}/slack", format: slack }}
"#,
        pager = pager.url,
        flags = flags.url,
        team = team.url
    ));
    let load = Load::start(&backstop, 4, 50, Duration::from_secs(25));
    // The baseline's own figures before the rollout: what recovery is
    // judged against.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rollout = start(&client, &backstop, &text).await;
    let id = rollout["id"].as_str().unwrap().to_string();
    send_secrets(&client, &backstop, 40).await;
    let done = wait_for_phase(&client, &backstop, &id, "rolled_back").await;
    let incident_id = done["incident"]
        .as_str()
        .expect("the rollout names its incident");
    // Traffic goes on through the verification window.
    let incident = wait_for_incident(
        &client,
        &backstop,
        incident_id,
        "verification and hooks",
        |v| v["state"] != "verifying" && v["hooks"].as_array().is_some_and(|h| h.len() == 2),
    )
    .await;
    let seen = load.finish().await;
    // The failing hook changed nothing: no client request failed.
    assert!(failures(&seen).is_empty(), "{:?}", failures(&seen));

    // What happened, with the numbers.
    assert_eq!(incident["severity"], "critical");
    assert_eq!(incident["state"], "recovered", "{incident:#}");
    let evidence = &incident["evidence"];
    assert_eq!(evidence["verdict"]["trigger"]["metric"], "error_rate");
    assert_eq!(evidence["actor"], "controller");
    assert_eq!(evidence["swap"]["ok"], true);
    assert!(evidence["swap"]["verdict_to_swap_us"].as_f64().unwrap() < 1_000_000.0);
    let (candidate, baseline) = (
        &evidence["metrics"]["candidate"],
        &evidence["metrics"]["baseline"],
    );
    assert!(candidate["requests"].as_u64().unwrap() >= 20, "{candidate}");
    assert!(
        candidate["error_rate"].as_f64().unwrap() > baseline["error_rate"].as_f64().unwrap(),
        "{candidate} vs {baseline}"
    );
    assert!(!evidence["metrics"]["series"].as_array().unwrap().is_empty());
    // The candidate's artifact is pinned against deletion and GC.
    assert_eq!(evidence["pinned"], serde_json::json!(["v2"]));
    assert!(evidence["candidate"]["digest"]
        .as_str()
        .unwrap()
        .starts_with("sha256:"));
    // Samples of both versions, redacted before they were kept.
    let samples = &evidence["samples"];
    assert!(
        !samples["candidate"].as_array().unwrap().is_empty(),
        "{samples}"
    );
    assert!(
        !samples["baseline"].as_array().unwrap().is_empty(),
        "{samples}"
    );
    let whole = incident.to_string();
    assert!(!whole.contains(SECRET), "the secret reached the incident");
    assert!(whole.contains("[redacted]"));
    assert!(
        !whole.contains("u-42"),
        "a hashed value reached the incident"
    );

    // The timeline, in order.
    let what: Vec<&str> = incident["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["what"].as_str().unwrap())
        .collect();
    for step in [
        "rollout.create",
        "verdict",
        "swap",
        "incident.open",
        "verification",
        "hook",
    ] {
        assert!(what.contains(&step), "{step} missing from {what:?}");
    }
    let verification = &incident["verification"];
    assert_eq!(
        verification["reference_source"], "before_rollout",
        "{verification}"
    );
    assert!(verification["time_to_recovered_ms"].as_u64().is_some());
    assert_eq!(verification["candidate_not_worse"], false);

    // Hooks: one failed, one succeeded; neither touched the rollback.
    let hooks = incident["hooks"].as_array().unwrap();
    let hook = |name: &str| hooks.iter().find(|h| h["name"] == name).unwrap().clone();
    assert_eq!(hook("flags-off")["ok"], true);
    assert_eq!(hook("cache")["ok"], false);
    assert_eq!(hook("cache")["attempts"], 2);
    assert_eq!(flags.hits("/hooks/flags").len(), 1);
    assert_eq!(flags.hits("/hooks/flags")[0]["incident"], incident_id);

    // The pager (critical only) got the alert on its third attempt, then
    // its end (Alertmanager: same labels, `endsAt`); the team channel got
    // the opening and the recovery (a warning: good news pages nobody).
    let incident = wait_for_incident(
        &client,
        &backstop,
        incident_id,
        "notifications delivered",
        |v| {
            let n = v["notifications"].as_array().cloned().unwrap_or_default();
            n.len() == 4 && n.iter().all(|n| n["state"] == "delivered")
        },
    )
    .await;
    let notifications = incident["notifications"].as_array().unwrap();
    let opened_page = notifications
        .iter()
        .find(|n| n["receiver"] == "oncall" && n["kind"] == "incident.opened")
        .unwrap();
    assert_eq!(opened_page["attempts"], 3, "{opened_page}");
    let alerts = pager.hits("/alerts");
    assert!(alerts.len() >= 3);
    assert_eq!(alerts[0][0]["labels"]["incident"], incident_id);
    assert_eq!(alerts[0][0]["labels"]["severity"], "critical");
    let resolved = alerts.last().unwrap();
    assert_eq!(resolved[0]["labels"], alerts[0][0]["labels"]);
    assert!(resolved[0]["endsAt"].is_string(), "{resolved}");
    assert!(team.hits("/slack").iter().all(|b| b["text"].is_string()));

    // Nothing redacted reached the disk either (store, WAL, artifacts).
    let leaks = disk_contains(&backstop.data_dir, SECRET.as_bytes());
    assert!(leaks.is_empty(), "the secret is on disk in {leaks:?}");

    // Export, show, report, annotations, /metrics.
    let export_file = dir.path().join("incident.json");
    let (code, _, stderr) = cli(
        &backstop,
        dir.path(),
        &[
            "incident",
            "export",
            incident_id,
            "--file",
            export_file.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(code, 0, "{stderr}");
    let export: Value = serde_json::from_slice(&std::fs::read(&export_file).unwrap()).unwrap();
    assert_eq!(export["format"], "backstop-incident/1");
    assert_eq!(export["audit_chain_ok"], true);
    let actions: Vec<&str> = export["audit"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for action in [
        "rollout.create",
        "rollout.verdict",
        "incident.open",
        "incident.verify",
        "incident.hooks",
    ] {
        assert!(
            actions.contains(&action),
            "{action} missing from {actions:?}"
        );
    }
    let (code, stdout, stderr) =
        cli(&backstop, dir.path(), &["incident", "show", incident_id]).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("verification: recovered"), "{stdout}");

    let report = get_json(&client, &backstop, "/api/v1/report?model=m").await;
    let figures = &report["overall"];
    assert_eq!(report["audit_chain_ok"], true);
    assert_eq!(figures["rollbacks"], 1);
    assert_eq!(figures["rollback_success_rate"], 1.0);
    assert_eq!(figures["false_rollback_rate"], 0.0);
    assert_eq!(figures["audit_completeness"], 1.0);
    assert_eq!(figures["notifications"]["delivered"], 4);
    assert_eq!(figures["traffic_moved_percent"]["max"], 50.0);

    let annotations = get_json(&client, &backstop, "/api/v1/annotations?model=m").await;
    let titles: Vec<&str> = annotations
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["title"].as_str().unwrap())
        .collect();
    assert!(
        titles.iter().any(|t| t.starts_with("rollout.rollback")),
        "{titles:?}"
    );
    assert!(
        titles.iter().any(|t| t.starts_with("incident.open")),
        "{titles:?}"
    );
    let metrics = client.get(&backstop.admin_url("/metrics")).await;
    let metrics = String::from_utf8_lossy(&metrics.body);
    assert!(
        metrics.contains(r#"backstop_rollout_events_total{model="m",event="rollback"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"backstop_rollout_events_total{model="m",event="incident_open"} 1"#));
    assert_audit_intact(&client, &backstop).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_baseline_that_stays_broken_is_not_recovered_and_escalates() {
    let (v1, v2) = (toy("v1").await, toy("v2").await);
    v2.behaviour.set_latency(Duration::from_millis(30));
    let pager = Receiver::start(0).await;
    let backstop = Backstop::start(&config(&v1.url(), &v2.url()));
    let client = HttpClient::new();
    let mut text = policy(
        "{ canary: { steps: [50, 100], bake: 60s } }",
        &[LATENCY_TRIGGER],
    );
    text.push_str(&format!(
        "verification: {{ window: 2s, min_sample: 20 }}\nnotify:\n  - {{ name: oncall, url: \"{}/alerts\", format: json, severities: [critical] }}\n",
        pager.url
    ));
    let load = Load::start(&backstop, 4, 50, Duration::from_secs(25));
    let rollout = start(&client, &backstop, &text).await;
    let id = rollout["id"].as_str().unwrap().to_string();
    let done = wait_for_phase(&client, &backstop, &id, "rolled_back").await;
    // The trouble was not only the candidate's: the baseline fails now.
    v1.behaviour.set_error_rate(0.5);
    let incident_id = done["incident"].as_str().unwrap();
    let incident = wait_for_incident(&client, &backstop, incident_id, "verification", |v| {
        v["state"] != "verifying"
    })
    .await;
    load.finish().await;
    assert_eq!(
        incident["evidence"]["verdict"]["trigger"]["metric"],
        "latency_p95"
    );
    assert_eq!(incident["state"], "not_recovered", "{incident:#}");
    let reasons = incident["verification"]["reasons"].to_string();
    assert!(reasons.contains("error rate"), "{reasons}");
    // Escalated as critical to the pager.
    assert!(
        eventually(Duration::from_secs(10), || async {
            pager
                .hits("/alerts")
                .iter()
                .any(|b| b["kind"] == "incident.not_recovered" && b["severity"] == "critical")
        })
        .await,
        "no escalation: {:?}",
        pager.hits("/alerts")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_queued_before_a_kill_is_delivered_after_the_restart() {
    let (v1, v2) = (toy("v1").await, toy("v2").await);
    v2.behaviour.set_error_rate(0.3);
    let pager = Receiver::start(0).await;
    pager.down.store(true, Ordering::SeqCst);
    let data = tempfile::tempdir().unwrap();
    let config = config(&v1.url(), &v2.url());
    let backstop = Backstop::start_with_data_dir(&config, data.path());
    let client = HttpClient::new();
    let mut text = policy(
        "{ canary: { steps: [50, 100], bake: 60s } }",
        &[ERROR_TRIGGER],
    );
    text.push_str(&format!(
        "verification: {{ window: 5s, min_sample: 20 }}\nnotify:\n  - {{ name: oncall, url: \"{}/alerts\", format: alertmanager }}\n",
        pager.url
    ));
    let load = Load::start(&backstop, 4, 50, Duration::from_secs(20));
    let rollout = start(&client, &backstop, &text).await;
    let id = rollout["id"].as_str().unwrap().to_string();
    let done = wait_for_phase(&client, &backstop, &id, "rolled_back").await;
    load.finish().await;
    let incident_id = done["incident"].as_str().unwrap().to_string();
    // Queued (and refused at least once) while the receiver is down.
    wait_for_incident(&client, &backstop, &incident_id, "a failed attempt", |v| {
        v["notifications"]
            .as_array()
            .is_some_and(|n| n.iter().any(|n| n["attempts"].as_u64() >= Some(1)))
    })
    .await;
    drop(backstop); // kill -9
    pager.down.store(false, Ordering::SeqCst);
    let before = pager.hits("/alerts").len();
    let backstop = Backstop::start_with_data_dir(&config, data.path());
    let incident = wait_for_incident(&client, &backstop, &incident_id, "delivered", |v| {
        v["notifications"].as_array().is_some_and(|n| {
            n.iter()
                .any(|n| n["kind"] == "incident.opened" && n["state"] == "delivered")
        })
    })
    .await;
    assert!(pager.hits("/alerts").len() > before);
    assert_eq!(
        incident["evidence"]["verdict"]["trigger"]["metric"],
        "error_rate"
    );
    // The verification the kill interrupted runs over a fresh window.
    let load = Load::start(&backstop, 4, 50, Duration::from_secs(15));
    let incident = wait_for_incident(&client, &backstop, &incident_id, "verified", |v| {
        v["state"] != "verifying"
    })
    .await;
    load.finish().await;
    assert_eq!(incident["state"], "recovered", "{incident:#}");
    let timeline = incident["timeline"].to_string();
    assert!(
        timeline.contains("restarted before the verification"),
        "{timeline}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warning_trigger_ramps_back_in_steps_and_the_incident_shows_the_ramp() {
    let (v1, v2) = (toy("v1").await, toy("v2").await);
    v2.behaviour.set_error_rate(0.3);
    let backstop = Backstop::start(&config(&v1.url(), &v2.url()));
    let client = HttpClient::new();
    let mut text = policy(
        "{ canary: { steps: [50, 100], bake: 60s } }",
        &[
            r#"{ metric: error_rate, above: "+2pp", min_sample: 20, severity: warning, action: rollback }"#,
        ],
    );
    text.push_str(
        "rollback: { graduated: { steps: [25, 5], hold: 1s } }\nverification: { window: 2s, min_sample: 20 }\n",
    );
    let load = Load::start(&backstop, 4, 50, Duration::from_secs(25));
    let rollout = start(&client, &backstop, &text).await;
    let id = rollout["id"].as_str().unwrap().to_string();
    let ramping = wait_for_phase(&client, &backstop, &id, "rolling_back").await;
    assert_eq!(
        ramping["ramp"]["steps"],
        serde_json::json!([25.0, 5.0, 0.0]),
        "{ramping:#}"
    );
    assert!(ramping["candidate_percent"].as_f64().unwrap() <= 25.0);
    // Condemned from the verdict on: no command routes it up again.
    let answer = client
        .post_json(
            &backstop.admin_url(&format!("/api/v1/rollouts/{id}/promote")),
            &serde_json::json!({}),
        )
        .await;
    assert_ne!(answer.status, StatusCode::OK, "{}", answer.json());
    let done = wait_for_phase(&client, &backstop, &id, "rolled_back").await;
    assert_eq!(done["verdict"]["candidate_percent"], 50.0);
    let incident_id = done["incident"].as_str().unwrap().to_string();
    let incident = wait_for_incident(&client, &backstop, &incident_id, "verification", |v| {
        v["state"] != "verifying"
    })
    .await;
    let seen = load.finish().await;
    assert!(failures(&seen).is_empty(), "{:?}", failures(&seen));
    assert_eq!(incident["severity"], "warning");
    assert_eq!(incident["state"], "recovered", "{incident:#}");
    // The ramp is in the timeline, before the swap that ended it.
    let timeline = incident["timeline"].as_array().unwrap();
    let at = |what: &str| {
        timeline
            .iter()
            .filter(|e| e["what"] == what)
            .map(|e| e["at_unix_ms"].as_u64().unwrap())
            .collect::<Vec<_>>()
    };
    let (ramp, swap) = (at("rollout.ramp_down"), at("swap"));
    assert_eq!(ramp.len(), 2, "{timeline:#?}");
    // Two holds of 1s on the controller's clock (the verdict's), then the swap.
    let verdict = at("verdict");
    assert!(
        swap[0] > ramp[1] && swap[0] >= verdict[0] + 2000,
        "{timeline:#?}"
    );
    let detail = timeline.iter().find(|e| e["what"] == "swap").unwrap()["detail"].to_string();
    assert!(detail.contains("graduated rollback"), "{detail}");
    assert_audit_intact(&client, &backstop).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_rollback_opens_an_incident_with_the_timeouts_in_its_evidence() {
    let (v1, v2) = (toy("v1").await, toy("v2").await);
    v2.behaviour.set_latency(Duration::from_millis(400));
    let backstop = Backstop::start(
        &config(&v1.url(), &v2.url())
            .replace("  m:\n", "  m:\n    timeouts: { request_ms: 200 }\n"),
    );
    let client = HttpClient::new();
    let mut text = policy(
        "{ canary: { steps: [50, 100], bake: 60s } }",
        &[r#"{ metric: timeout_rate, above: "+2pp", min_sample: 20, action: rollback }"#],
    );
    text.push_str("evidence: { sample_percent: 100, samples: 200 }\n");
    let load = Load::start(&backstop, 4, 50, Duration::from_secs(20));
    let rollout = start(&client, &backstop, &text).await;
    let id = rollout["id"].as_str().unwrap().to_string();
    let done = wait_for_phase(&client, &backstop, &id, "rolled_back").await;
    load.finish().await;
    let incident_id = done["incident"].as_str().unwrap();
    let incident = wait_for_incident(&client, &backstop, incident_id, "stored", |_| true).await;
    let evidence = &incident["evidence"];
    assert_eq!(evidence["verdict"]["trigger"]["metric"], "timeout_rate");
    assert!(
        evidence["metrics"]["candidate"]["timeouts"]
            .as_u64()
            .unwrap()
            > 0
    );
    assert_eq!(evidence["metrics"]["baseline"]["timeouts"], 0);
    let outcomes: Vec<&str> = evidence["samples"]["candidate"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["outcome"].as_str().unwrap())
        .collect();
    assert!(outcomes.contains(&"timeout"), "{outcomes:?}");
}
