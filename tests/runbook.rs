//! `backstop runbook` and `backstop gameday` as a user runs them, from a
//! policy file: the runbook's JSON has its stable fields, the rehearsal
//! passes with the recommended policy (exit 0) and fails, saying why, with
//! one that cannot meet the target (exit 1).

use std::process::{Command, Output};

fn backstop(args: &[&str]) -> (Output, serde_json::Value) {
    let output = Command::new(env!("CARGO_BIN_EXE_backstop"))
        .args(args)
        // Never reach a real admin API by accident.
        .env("BACKSTOP_ADMIN", "http://127.0.0.1:9")
        .env_remove("BACKSTOP_TOKEN")
        .output()
        .expect("running backstop");
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    let json = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "{args:?}: not one JSON object ({e}), exit {:?}\n{stdout}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (output, json)
}

#[test]
fn runbook_from_a_policy_file_as_json() {
    let (output, runbook) = backstop(&[
        "runbook",
        "m",
        "--policy",
        "examples/policy.yaml",
        "--output",
        "json",
    ]);
    assert!(output.status.success(), "{runbook}");
    assert_eq!(runbook["model"], "m");
    assert_eq!(runbook["policy_source"], "file examples/policy.yaml");
    assert_eq!(runbook["strategy"]["name"], "canary");
    assert_eq!(runbook["triggers"].as_array().unwrap().len(), 5);
    let commands: Vec<&str> = runbook["manual_rollback"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["command"].as_str().unwrap())
        .collect();
    assert!(
        commands.contains(&"backstop rollout rollback m"),
        "{commands:?}"
    );
    // The example policy writes its verification out (with the defaults).
    assert_eq!(runbook["verification"]["defaulted"], false);
    assert_eq!(runbook["evidence"]["samples"], 100);
    for field in ["automatic", "notifications", "hooks"] {
        assert!(runbook.get(field).is_some(), "{field}");
    }
}

#[test]
fn gameday_passes_with_the_recommended_policy() {
    let (output, report) = backstop(&[
        "gameday",
        "m",
        "--policy",
        "examples/sim-policy.yaml",
        "--fault",
        "errors",
        "--runs",
        "20",
        "--output",
        "json",
    ]);
    assert!(output.status.success(), "{report}");
    assert_eq!(report["mode"], "simulator");
    assert_eq!(report["fault"], "errors");
    assert_eq!(report["runs"], 20);
    assert_eq!(report["rolled_back"], 20);
    assert_eq!(report["missed"], 0);
    assert_eq!(report["false_rollbacks"], 0);
    assert_eq!(report["target_detect_s"], 15.0);
    assert!(report["detection_s_p95"].as_f64().unwrap() <= 15.0);
    assert!(report["detection_s_p50"].as_f64().is_some());
    assert!(report["exposed_requests_p50"].as_u64().is_some());
    assert_eq!(report["passed"], true);
}

#[test]
fn gameday_fails_a_policy_that_waits_too_long_and_says_why() {
    let (output, report) = backstop(&[
        "gameday",
        "m",
        "--policy",
        "examples/policy.yaml",
        "--fault",
        "errors",
        "--runs",
        "20",
        "--output",
        "json",
    ]);
    assert_eq!(output.status.code(), Some(1), "{report}");
    assert_eq!(report["passed"], false);
    let reasons = report["reasons"].to_string();
    assert!(reasons.contains("over the 15 s target"), "{reasons}");
}

#[test]
fn a_broken_policy_file_is_named_with_its_line_and_live_needs_the_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.yaml");
    std::fs::write(
        &file,
        "model: m\ncandidate: v2\nstrategy: { canary: { steps: [5, 100], bake: 1m } }\ntriggers:\n  - { metric: error_rate, above: 250ms, action: rollback }\n",
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_backstop"))
        .args(["runbook", "m", "--policy"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("bad.yaml:5:"), "{stderr}");
    assert!(stderr.contains("triggers[0].above"), "{stderr}");

    // Live mode works on the running gateway: without one it says so
    // (and has changed nothing), exit 1.
    let output = Command::new(env!("CARGO_BIN_EXE_backstop"))
        .args(["gameday", "m", "--fault", "latency", "--live"])
        .args(["--admin", "http://127.0.0.1:9"])
        .env_remove("BACKSTOP_ADMIN")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cannot reach the admin API"), "{stderr}");
    // --rehearsal belongs to live mode.
    let output = Command::new(env!("CARGO_BIN_EXE_backstop"))
        .args(["gameday", "m", "--fault", "latency", "--rehearsal", "r"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
}
