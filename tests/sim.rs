//! `backstop sim` as a user runs it: the request scenarios under the
//! recommended policy, the model-aware ones under the policy with drift,
//! prediction and KPI triggers, with the stable JSON fields.

use std::process::Command;

fn sim(args: &[&str]) -> serde_json::Value {
    let output = Command::new(env!("CARGO_BIN_EXE_backstop"))
        .arg("sim")
        .args(args)
        .args(["--output", "json"])
        .output()
        .expect("running backstop sim");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("one JSON object")
}

fn scenario<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["scenarios"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no scenario {name:?} in {report:#}"))
}

#[test]
fn model_aware_scenarios_run_with_their_own_policy() {
    let report = sim(&["--seed", "3", "--runs", "4", "--only", "1000rps 5%"]);
    let metrics = |policy: &serde_json::Value| -> Vec<String> {
        policy["triggers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["metric"].as_str().unwrap().to_string())
            .collect()
    };
    assert!(!metrics(&report["policy"]).contains(&"drift_psi".to_string()));
    let signals = metrics(&report["signals_policy"]);
    for metric in ["drift_psi", "prediction_shift", "kpi", "error_rate"] {
        assert!(signals.contains(&metric.to_string()), "{signals:?}");
    }
    let healthy = scenario(&report, "model: healthy 1000rps 5%");
    assert_eq!(healthy["healthy"], true);
    assert_eq!(healthy["rollbacks"], 0);
    let drift = scenario(&report, "drift 1σ (PSI≈0.9) 1000rps 5%");
    assert_eq!(drift["healthy"], false);
    assert_eq!(drift["missed"], 0, "{drift:#}");
    assert_eq!(drift["rollbacks"], 4);
    for field in [
        "false_rollback_rate",
        "detection_delay_s_p50",
        "detection_delay_s_p95",
        "exposed_requests_p50",
        "exposed_requests_p95",
    ] {
        assert!(drift.get(field).is_some(), "{field} missing: {drift:#}");
    }
    // The request scenarios are still there, under their policy.
    assert_eq!(scenario(&report, "errors +5pp 1000rps 5%")["missed"], 0);
}

#[test]
fn a_policy_file_runs_every_scenario() {
    let report = sim(&[
        "--runs",
        "2",
        "--only",
        "KPI -50%",
        "--policy",
        "examples/sim-signals-policy.yaml",
    ]);
    assert_eq!(report["policy"], report["signals_policy"]);
    let kpi = scenario(&report, "KPI -50% 1000rps 5%");
    assert_eq!(kpi["missed"], 0, "{kpi:#}");
}
