//! `backstop policy` as users run it: the real binary on good and bad files,
//! checking exit codes, the text and JSON verdicts, and that the schema is
//! JSON that names what a policy file may contain.

use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};

fn backstop(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_backstop"))
        .args(args)
        .output()
        .expect("run backstop")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/policy.yaml");

#[test]
fn check_accepts_the_example() {
    let out = backstop(&["policy", "check", EXAMPLE]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), format!("{EXAMPLE}: ok\n"));
}

#[test]
fn check_json_prints_the_normalized_policy() {
    let out = backstop(&["policy", "check", EXAMPLE, "--output", "json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["ok"], true);
    assert_eq!(answer["file"], EXAMPLE);
    let policy = &answer["policy"];
    assert_eq!(policy["model"], "fraud-scorer");
    assert_eq!(policy["strategy"]["canary"]["bake"], "2m");
    // Implied by the relative threshold, spelled out when normalized.
    assert_eq!(policy["triggers"][3]["above"], "+1pp");
    assert_eq!(policy["triggers"][3]["relative_to"], "baseline");
    assert_eq!(policy["triggers"][2]["min_sample"], 100);
}

fn bad_policy(dir: &Path) -> std::path::PathBuf {
    let file = dir.join("policy.yaml");
    std::fs::write(
        &file,
        "model: fraud-scorer\ncandidate: v2\nstrategy: { canary: { steps: [1, 5, 25, 50, 100], bake: 2m } }\ntriggers:\n  - { metric: latency_p95, above: \"+30%\", action: rollback }\n  - { metric: error_rate, above: 250ms, action: rollback }\n",
    )
    .unwrap();
    file
}

#[test]
fn check_rejects_a_bad_file_with_line_column_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let file = bad_policy(dir.path());
    let name = file.to_str().unwrap();
    let out = backstop(&["policy", "check", name]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let stderr = text(&out.stderr);
    assert!(
        stderr.starts_with(&format!(
            "{name}:6:27: triggers[1].above: expected a percentage like \"5%\""
        )),
        "{stderr}"
    );
}

#[test]
fn check_json_reports_the_error_as_fields() {
    let dir = tempfile::tempdir().unwrap();
    let file = bad_policy(dir.path());
    let name = file.to_str().unwrap();
    let out = backstop(&["policy", "check", name, "--output", "json"]);
    assert_eq!(out.status.code(), Some(1));
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["ok"], false);
    assert_eq!(answer["file"], name);
    let error = &answer["error"];
    assert_eq!((&error["line"], &error["column"]), (&6.into(), &27.into()));
    assert_eq!(error["path"], "triggers[1].above");
    assert!(error["message"]
        .as_str()
        .unwrap()
        .starts_with("expected a percentage"));
}

#[test]
fn check_reports_a_missing_file() {
    let out = backstop(&["policy", "check", "/nonexistent/policy.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("cannot read"));
}

#[test]
fn schema_is_json_and_lists_the_metrics() {
    let out = backstop(&["policy", "schema"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let schema: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(schema["title"], "Policy");
    let required = schema["required"].as_array().unwrap();
    for field in ["model", "candidate", "strategy", "triggers"] {
        assert!(required.contains(&field.into()), "{field}");
    }
    // Each metric is a documented constant of the Metric definition.
    let metric = &schema["$defs"]["Metric"];
    let names: Vec<&str> = metric["oneOf"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["const"].as_str())
        .collect();
    assert_eq!(
        names,
        [
            "latency_p50",
            "latency_p95",
            "latency_p99",
            "error_rate",
            "timeout_rate",
            "schema_violation_rate",
            "null_rate",
            "drift_psi",
            "prediction_shift",
            "confidence_mean",
            "agreement_rate",
            "fallback_rate",
            "accuracy",
            "kpi",
            "prometheus",
        ],
        "{metric}"
    );
    assert_eq!(schema["$defs"]["Threshold"]["type"], "string");
    assert!(schema["$defs"]["Threshold"]["pattern"].is_string());
    assert!(schema["$defs"]["Duration"]["pattern"].is_string());
}

#[test]
fn incident_sections_are_checked_with_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policy.yaml");
    std::fs::write(
        &file,
        "model: fraud-scorer\ncandidate: v2\nstrategy: { canary: { steps: [5, 100], bake: 2m } }\ntriggers:\n  - { metric: error_rate, above: \"+1pp\", action: rollback }\nnotify:\n  - { name: pager, url: \"ftp://pager\", format: alertmanager }\n",
    )
    .unwrap();
    let name = file.to_str().unwrap();
    let out = backstop(&["policy", "check", name]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.starts_with(&format!("{name}:7:")) && stderr.contains("notify[0].url"),
        "{stderr}"
    );
    assert!(
        stderr.contains("not an http:// or https:// address"),
        "{stderr}"
    );
}
