//! A reference profile stored with a version: built from request bodies by
//! `backstop profile build`, registered with the version, and judged by a
//! `drift_psi` trigger with `reference: profile` — at 100%, where the
//! baseline serves nothing to compare with.

use crate::rollout::{audit_entries, cli, config, policy, refused, start, wait_for_phase};
use crate::util::*;
use http::StatusCode;
use serde_json::{json, Value};
use std::path::Path;

/// An OIP request with one `amount` value.
fn request(amount: f64) -> String {
    json!({"inputs": [{"name": "amount", "datatype": "FP32", "shape": [1, 1], "data": [amount]}]})
        .to_string()
}

/// `n` amounts spread evenly over 100 ± 15 (σ ≈ 8.66), moved by `shift`.
fn amounts(n: usize, shift: f64) -> Vec<f64> {
    (0..n)
        .map(|i| 100.0 + shift + 30.0 * ((i as f64 + 0.5) / n as f64 - 0.5))
        .collect()
}

/// `backstop profile build` (a local command: no `--admin`).
fn profile_build(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_backstop"))
        .args(["profile", "build"])
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

async fn register(backstop: &Backstop, dir: &Path, version: &str, extra: &[&str]) {
    let artifact = dir.join(format!("{version}.bin"));
    std::fs::write(&artifact, version.as_bytes()).unwrap();
    let mut args = vec![
        "version",
        "register",
        "m",
        version,
        "--artifact",
        artifact.to_str().unwrap(),
        "--signature",
        "sig.yaml",
    ];
    args.extend_from_slice(extra);
    let (code, _, stderr) = cli(backstop, dir, &args).await;
    assert_eq!(code, 0, "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inputs_shifted_from_the_stored_profile_roll_back_at_100_percent() {
    let dir = tempfile::tempdir().unwrap();
    let sigma = 30.0 / 12f64.sqrt();
    std::fs::write(
        dir.path().join("sig.yaml"),
        "inputs:\n  - { name: amount, datatype: FP32, shape: [-1, 1] }\n",
    )
    .unwrap();
    // The "training data": 2,000 requests, and one line that is not JSON.
    let mut lines: Vec<String> = amounts(2000, 0.0).into_iter().map(request).collect();
    lines.insert(7, "not json".into());
    std::fs::write(dir.path().join("train.jsonl"), lines.join("\n")).unwrap();
    let (code, stdout, stderr) = profile_build(
        dir.path(),
        &[
            "--signature",
            "sig.yaml",
            "--input",
            "train.jsonl",
            "-o",
            "profile.json",
            "--output",
            "json",
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    let summary: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(summary["used"], 2000, "{summary}");
    assert_eq!(summary["bad"], 1, "{summary}");
    assert_eq!(summary["features"], json!(["amount"]), "{summary}");
    // Nothing usable: a failure, not an empty profile.
    std::fs::write(dir.path().join("junk.jsonl"), "junk\n[1]\n").unwrap();
    let (code, _, stderr) = profile_build(
        dir.path(),
        &["--signature", "sig.yaml", "--input", "junk.jsonl"],
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("no line could be used"), "{stderr}");

    let (v1, v2) = (toy("v1").await, toy("v2").await);
    let backstop = Backstop::start(&config(&v1.url(), &v2.url()));
    let client = HttpClient::new();
    register(&backstop, dir.path(), "v1", &[]).await;
    register(&backstop, dir.path(), "v2", &["--profile", "profile.json"]).await;

    // Version answers name the profile's features, not its bins; the
    // profile itself has its own address.
    let version = client
        .get(&backstop.admin_url("/api/v1/models/m/versions/v2"))
        .await
        .json();
    assert_eq!(version["profile_features"], json!(["amount"]), "{version}");
    assert!(!version.to_string().contains("bins"), "{version}");
    let v1_answer = client
        .get(&backstop.admin_url("/api/v1/models/m/versions/v1"))
        .await
        .json();
    assert!(v1_answer.get("profile_features").is_none(), "{v1_answer}");
    let profile = client
        .get(&backstop.admin_url("/api/v1/models/m/versions/v2/profile"))
        .await;
    assert_eq!(profile.status, StatusCode::OK);
    assert_eq!(profile.json()["features"]["amount"]["kind"], "numeric");
    let none = client
        .get(&backstop.admin_url("/api/v1/models/m/versions/v1/profile"))
        .await;
    assert_eq!(none.status, StatusCode::NOT_FOUND);
    let entries = audit_entries(&client, &backstop).await;
    let registered = entries
        .iter()
        .find(|e| e["action"] == "version.register" && e["target"] == "m/v2")
        .unwrap();
    assert_eq!(registered["after"]["profile_features"], json!(["amount"]));

    // A profile is checked at registration: its features are inputs of
    // the signature, its sketches readable.
    let digest = v1_answer["digest"].clone();
    for (profile, field) in [
        (
            json!({"features": {"income": {"kind": "categorical", "counts": {}}}}),
            "profile.features.income",
        ),
        (
            json!({"features": {"amount": {"kind": "numeric", "layout": 2, "bins": []}}}),
            "profile.features.amount",
        ),
    ] {
        let answer = client
            .post_json(
                &backstop.admin_url("/api/v1/models/m/versions"),
                &json!({
                    "id": "v3", "digest": digest, "profile": profile,
                    "signature": {"inputs": [{"name": "amount", "datatype": "FP32", "shape": [-1, 1]}]},
                }),
            )
            .await;
        let body = answer.json().to_string();
        assert_eq!(answer.status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert!(body.contains(field), "{body}");
    }

    // A trigger the profile cannot feed is refused, naming the field.
    let starved = policy(
        "{ canary: { steps: [100], bake: 1m } }",
        &[
            r#"{ metric: drift_psi, feature: amount, reference: profile, above: 0.2, min_sample: 5000, action: rollback }"#,
        ],
    );
    let message = refused(&client, &backstop, &starved).await;
    assert!(message.contains("triggers[0].min_sample"), "{message}");
    // And so is one whose candidate has no profile at all.
    let reversed = starved
        .replace("candidate: v2\nbaseline: v1", "candidate: v1\nbaseline: v2")
        .replace("min_sample: 5000", "min_sample: 50");
    let message = refused(&client, &backstop, &reversed).await;
    assert!(message.contains("triggers[0].reference"), "{message}");
    assert!(
        message.contains("not registered with a reference profile"),
        "{message}"
    );

    // All traffic on v2 at once: the baseline serves nothing, the profile
    // is the reference. Inputs one σ off the training data roll back.
    let guarded = policy(
        "{ canary: { steps: [100], bake: 1m } }",
        &[
            r#"{ metric: drift_psi, feature: amount, reference: profile, above: 0.2, min_sample: 50, action: rollback }"#,
        ],
    );
    let view = start(&client, &backstop, &guarded).await;
    let id = view["id"].as_str().unwrap().to_string();
    let driver = {
        let url = backstop.url("/v2/models/m/infer");
        let bodies: Vec<String> = amounts(100, sigma).into_iter().map(request).collect();
        tokio::spawn(async move {
            let client = HttpClient::new();
            for body in bodies.iter().cycle().take(4000) {
                let headers = [("content-type", "application/json")];
                client
                    .send(http::Method::POST, &url, &headers, body.clone())
                    .await;
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
        })
    };
    let view = wait_for_phase(&client, &backstop, &id, "rolled_back").await;
    driver.abort();
    let trigger = &view["verdict"]["trigger"];
    assert_eq!(
        trigger["rule"], "drift_psi{feature=amount} above 0.2 vs profile",
        "{view:#}"
    );
    assert_eq!(view["verdict"]["candidate_percent"], 100.0, "{view:#}");
    assert!(
        trigger["candidate_value"].as_f64().unwrap() > 0.2,
        "{view:#}"
    );
}
