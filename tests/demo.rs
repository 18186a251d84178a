//! The main job, as a new user runs it: `backstop demo --output json` must
//! roll the regressing candidate back, lose no request and send nothing to
//! it afterwards, and exit 0.

use std::process::Command;

#[test]
fn the_demo_rolls_back_and_loses_nothing() {
    let output = Command::new(env!("CARGO_BIN_EXE_backstop"))
        .args(["demo", "--output", "json", "--duration-s", "60"])
        .output()
        .expect("running backstop demo");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "exit {:?}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("one JSON object");
    assert_eq!(report["rolled_back"], true, "{report}");
    assert_eq!(report["requests_lost"], 0, "{report}");
    assert_eq!(report["candidate_requests_after_rollback"], 0, "{report}");
    assert!(report["trigger"].is_string(), "{report}");
    assert!(report["detection_s"].as_f64().unwrap() > 0.0, "{report}");
    // The verdict is applied in memory first: well under a second.
    assert!(
        report["verdict_to_swap_us"].as_f64().unwrap() < 1_000_000.0,
        "{report}"
    );
    assert!(report["requests_sent"].as_u64().unwrap() > 0);
    // The rollback opened an incident, told the (local) pager and
    // verified that v1 serves as before.
    assert!(
        report["incident"].as_str().unwrap().starts_with("inc-"),
        "{report}"
    );
    // Verified one way or the other (a loaded shared machine can slow v1
    // past its pre-rollout latency: "not recovered" is then the truth).
    assert!(
        ["recovered", "not_recovered", "unverified"]
            .contains(&report["incident_state"].as_str().unwrap_or("")),
        "{report}"
    );
    assert!(
        report["notifications_delivered"].as_u64().unwrap() >= 1,
        "{report}"
    );
    assert!(report["samples_frozen"].as_u64().unwrap() > 0, "{report}");
    let audit: Vec<&str> = report["audit"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| entry.as_str().unwrap())
        .collect();
    assert!(
        audit.iter().any(|entry| entry.ends_with("rollout.verdict")),
        "{audit:?}"
    );
    let _ = std::fs::remove_dir_all(report["data_dir"].as_str().unwrap());
}
