//! `backstop gameday --live`: the gateway injects a fault into the
//! model's rehearsal version, the real controller rolls it back under the
//! policy, and the fault is cleared at the end — with no client request
//! failing except those the fault itself answered.

use crate::rollout::{audit_actions, cli, Load};
use crate::util::*;
use http::StatusCode;
use serde_json::{json, Value};
use std::time::Duration;

/// Model `m`: v1 takes all traffic; `r` is a rehearsal version on the
/// same upstream as v1 (as a real one would be on the LKG's upstreams).
fn config(upstream: &str) -> String {
    config_with(
        upstream,
        "{ interval_ms: 100, timeout_ms: 500, eject_after_failures: 100000 }",
    )
}

fn config_with(upstream: &str, health: &str) -> String {
    format!(
        r#"
listen: 127.0.0.1:0
admin: {{ listen: 127.0.0.1:0 }}
stats: {{ bucket_ms: 100 }}
pin: {{ allow_from: ["127.0.0.1/32"] }}
health: {health}
models:
  m:
    versions:
      - {{ name: v1, weight: 100, endpoints: ["{upstream}"] }}
      - {{ name: r, weight: 0, rehearsal: true, endpoints: ["{upstream}"] }}
"#
    )
}

const POLICY: &str = r#"model: m
candidate: v2
strategy: { canary: { steps: [25, 100], bake: 30s } }
triggers:
  - { metric: error_rate, above: "+2pp", min_sample: 20, action: rollback }
  - { metric: latency_p95, above: "+30%", min_sample: 20, action: rollback }
"#;

async fn version_spec(client: &HttpClient, backstop: &Backstop, name: &str) -> Value {
    let table = client
        .get(&backstop.admin_url("/api/v1/models/m/routes"))
        .await
        .json();
    table["spec"]["versions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no version {name}: {table}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_errors_gameday_rolls_the_rehearsal_version_back_and_clears_the_fault() {
    let upstream = toy("v1").await;
    let backstop = Backstop::start(&config(&upstream.url()));
    let client = HttpClient::new();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("policy.yaml"), POLICY).unwrap();
    let load = Load::start(&backstop, 4, 50, Duration::from_secs(40));

    let (code, stdout, stderr) = cli(
        &backstop,
        dir.path(),
        &[
            "gameday",
            "m",
            "--live",
            "--fault",
            "errors",
            "--policy",
            "policy.yaml",
            "--timeout",
            "30s",
            "--output",
            "json",
        ],
    )
    .await;
    let report: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("{e}: {stdout}\n{stderr}\nlogs:\n{}", backstop.logs()));
    assert_eq!(code, 0, "{report:#}\n{stderr}");
    assert_eq!(report["mode"], "live");
    assert_eq!(report["fault"], "errors");
    assert_eq!(report["rehearsal"], "r");
    assert_eq!(report["baseline"], "v1");
    assert_eq!(report["rolled_back"], true, "{report:#}");
    assert_eq!(report["passed"], true, "{report:#}");
    assert_eq!(report["fault_cleared"], true);
    assert_eq!(report["injected"]["error_percent"], 10.0);
    assert!(
        report["trigger"]
            .as_str()
            .unwrap()
            .starts_with("error_rate"),
        "{report:#}"
    );
    assert!(
        report["detection_s"].as_f64().unwrap() <= 15.0,
        "{report:#}"
    );
    assert!(
        report["verdict_to_swap_us"].as_f64().is_some(),
        "{report:#}"
    );
    assert_eq!(report["target_detect_s"], 15.0);

    // The fault is gone from the table; requests pinned to the rehearsal
    // version are served again.
    let r = version_spec(&client, &backstop, "r").await;
    assert!(r.get("fault").is_none(), "{r}");
    for _ in 0..20 {
        let answer = client
            .infer(
                &backstop.url("/v2/models/m/infer"),
                &[("x-backstop-pin", "r")],
            )
            .await;
        assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
        assert_eq!(answer.version(), Some("r"));
    }

    let seen = load.finish().await;
    // Only the rehearsal version's injected 503s failed: the rollback
    // itself failed no client request.
    let failed: Vec<_> = seen
        .iter()
        .filter(|s| s.error.is_some() || s.status != Some(StatusCode::OK))
        .filter(|s| {
            !(s.status == Some(StatusCode::SERVICE_UNAVAILABLE)
                && s.version.as_deref() == Some("r"))
        })
        .collect();
    assert!(failed.is_empty(), "client failures: {failed:?}");
    assert!(
        seen.iter()
            .any(|s| s.status == Some(StatusCode::SERVICE_UNAVAILABLE)),
        "the fault answered some requests"
    );
    let actions = audit_actions(&client, &backstop).await;
    for action in ["fault.set", "rollout.create", "fault.clear"] {
        assert!(actions.iter().any(|a| a == action), "{action}: {actions:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fault_on_a_version_that_is_not_a_rehearsal_is_refused_and_changes_nothing() {
    let upstream = toy("v1").await;
    let backstop = Backstop::start(&config(&upstream.url()));
    let client = HttpClient::new();
    let routes = client
        .get(&backstop.admin_url("/api/v1/models/m/routes"))
        .await
        .json();

    let answer = client
        .put_json(
            &backstop.admin_url("/api/v1/models/m/versions/v1/fault"),
            &json!({"error_percent": 50.0}),
        )
        .await;
    assert_eq!(answer.status, StatusCode::CONFLICT, "{:?}", answer.body);
    assert_eq!(answer.error_code(), "not_a_rehearsal_version");
    assert_eq!(answer.json()["error"]["field"], "versions[0].rehearsal");

    for (body, field) in [
        (
            json!({"error_percent": 150.0}),
            "versions[1].fault.error_percent",
        ),
        (json!({}), "versions[1].fault"),
    ] {
        let answer = client
            .put_json(
                &backstop.admin_url("/api/v1/models/m/versions/r/fault"),
                &body,
            )
            .await;
        assert_eq!(
            answer.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{:?}",
            answer.body
        );
        assert_eq!(answer.error_code(), "invalid_fault");
        assert_eq!(answer.json()["error"]["field"], field);
    }
    for (path, code) in [
        ("/api/v1/models/nope/versions/r/fault", "model_not_found"),
        ("/api/v1/models/m/versions/v9/fault", "version_not_found"),
    ] {
        let answer = client
            .put_json(&backstop.admin_url(path), &json!({"error_percent": 5.0}))
            .await;
        assert_eq!(answer.status, StatusCode::NOT_FOUND, "{:?}", answer.body);
        assert_eq!(answer.error_code(), code);
    }
    // Nothing changed: same table, same generation; v1 still serves.
    let after = client
        .get(&backstop.admin_url("/api/v1/models/m/routes"))
        .await
        .json();
    assert_eq!(after, routes);
    let answer = client.infer(&backstop.url("/v2/models/m/infer"), &[]).await;
    assert_eq!(answer.status, StatusCode::OK);

    // A fault on the rehearsal version is served, then cleared.
    let answer = client
        .put_json(
            &backstop.admin_url("/api/v1/models/m/versions/r/fault"),
            &json!({"error_percent": 100.0}),
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    let pinned = [("x-backstop-pin", "r")];
    let answer = client
        .infer(&backstop.url("/v2/models/m/infer"), &pinned)
        .await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(answer.error_code(), "injected_fault");
    let cleared = client
        .send(
            http::Method::DELETE,
            &backstop.admin_url("/api/v1/models/m/versions/r/fault"),
            &[],
            bytes::Bytes::new(),
        )
        .await;
    assert_eq!(cleared.status, StatusCode::OK, "{:?}", cleared.body);
    assert_eq!(cleared.json()["changed"], true);
    let answer = client
        .infer(&backstop.url("/v2/models/m/infer"), &pinned)
        .await;
    assert_eq!(answer.status, StatusCode::OK);
}

/// Without traffic the rollout waits for its sample: the rehearsal says so
/// when `--timeout` runs out, aborts its rollout and clears the fault,
/// rather than hanging.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_gameday_without_traffic_says_so_and_cleans_up() {
    let upstream = toy("v1").await;
    let backstop = Backstop::start(&config(&upstream.url()));
    let client = HttpClient::new();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("policy.yaml"), POLICY).unwrap();
    let args = [
        "gameday",
        "m",
        "--live",
        "--fault",
        "latency",
        "--policy",
        "policy.yaml",
        "--timeout",
        "1500ms",
        "--output",
        "json",
    ];
    let (code, stdout, stderr) = cli(&backstop, dir.path(), &args).await;
    let report: Value =
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}\n{stderr}"));
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(report["passed"], false);
    assert_eq!(report["rolled_back"], false);
    assert_eq!(report["timed_out"], true);
    assert_eq!(report["aborted"], true);
    assert_eq!(report["fault_cleared"], true);
    assert!(
        report["injected"]["latency_ms"].as_u64().unwrap() > 0,
        "{report:#}"
    );
    let reasons = report["reasons"].to_string();
    assert!(reasons.contains("live traffic"), "{reasons}");
    assert!(version_spec(&client, &backstop, "r")
        .await
        .get("fault")
        .is_none());
    let rollout = client
        .get(&backstop.admin_url(&format!(
            "/api/v1/rollouts/{}",
            report["rollout"].as_str().unwrap()
        )))
        .await
        .json();
    assert_eq!(
        (rollout["phase"].as_str(), rollout["open"].as_bool()),
        (Some("aborted"), Some(false))
    );

    // Naming a version that is not a rehearsal one is refused up front.
    let (code, _, stderr) = cli(
        &backstop,
        dir.path(),
        &[
            "gameday",
            "m",
            "--live",
            "--fault",
            "errors",
            "--rehearsal",
            "v1",
            "--policy",
            "policy.yaml",
        ],
    )
    .await;
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("m/v1 is not a rehearsal version"),
        "{stderr}"
    );
}

/// Injected failures are the rehearsal version's, not its endpoint's: the
/// endpoint it shares with the last-known-good is never ejected for them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_failures_never_eject_the_shared_endpoint() {
    let upstream = toy("v1").await;
    let backstop = Backstop::start(&config_with(&upstream.url(), "{ eject_after_failures: 2 }"));
    let client = HttpClient::new();
    let answer = client
        .put_json(
            &backstop.admin_url("/api/v1/models/m/versions/r/fault"),
            &json!({"error_percent": 100.0}),
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    let url = backstop.url("/v2/models/m/infer");
    for _ in 0..10 {
        let answer = client.infer(&url, &[("x-backstop-pin", "r")]).await;
        assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(answer.version(), Some("r"));
    }
    for _ in 0..10 {
        let answer = client.infer(&url, &[]).await;
        assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
        assert_eq!(answer.version(), Some("v1"));
    }
    let models = client
        .get(&backstop.admin_url("/api/v1/models"))
        .await
        .json();
    assert!(
        !models.to_string().contains(r#""ejected":true"#),
        "{models}"
    );
    let stats = client
        .get(&backstop.admin_url("/api/v1/models/m/stats?window_ms=60000"))
        .await
        .json();
    assert_eq!(stats["versions"]["r"]["server_errors"], 10, "{stats}");
}
