//! The registry through the CLI, against the real server: register a
//! version (the artifact streams up and is hashed), list it, read the audit
//! log, and verify both the chain and the artifacts.

use crate::util::*;
use std::process::Command;

fn cli(backstop: &Backstop, args: &[&str]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_backstop"))
        .args(args)
        .args(["--admin", &format!("http://{}", backstop.admin)])
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_are_registered_listed_and_audited_from_the_cli() {
    let v1 = toy("v1").await;
    let backstop = Backstop::start(&one_version(&v1.url(), "", ""));
    let dir = tempfile::tempdir().unwrap();
    let artifact = dir.path().join("model.onnx");
    std::fs::write(&artifact, vec![7u8; 3 * 1024 * 1024 + 11]).unwrap();
    let signature = dir.path().join("sig.yaml");
    std::fs::write(
        &signature,
        "inputs:\n  - { name: x, datatype: FP32, shape: [-1, 4] }\n",
    )
    .unwrap();
    let (artifact, signature) = (artifact.to_str().unwrap(), signature.to_str().unwrap());

    let register = [
        "version",
        "register",
        "fraud",
        "v2",
        "--artifact",
        artifact,
        "--signature",
        signature,
        "--upstream",
        "http://127.0.0.1:9002",
        "--label",
        "team=risk",
        "--reason",
        "canary",
        "--output",
        "json",
    ];
    let (code, stdout, stderr) = cli(&backstop, &register);
    assert_eq!(code, 0, "{stderr}");
    let version: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(version["created"], true);
    use sha2::Digest;
    let expected = sha2::Sha256::digest(vec![7u8; 3 * 1024 * 1024 + 11]);
    let expected: String = expected.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(version["digest"], format!("sha256:{expected}"));
    assert_eq!(version["metadata"]["team"], "risk");

    // Registering again is idempotent; human output says so.
    let (code, stdout, _) = cli(&backstop, &register[..register.len() - 2]);
    assert_eq!(code, 0);
    assert!(stdout.contains("already registered fraud/v2"), "{stdout}");

    let (code, stdout, _) = cli(&backstop, &["version", "list", "fraud", "--output", "json"]);
    assert_eq!(code, 0);
    let listed: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(listed["versions"][0]["id"], "v2");

    let (code, stdout, _) = cli(&backstop, &["version", "show", "fraud", "nope"]);
    assert_eq!(code, 1, "{stdout}");

    let (code, stdout, _) = cli(
        &backstop,
        &[
            "audit", "list", "--model", "fraud", "--since", "1h", "--output", "json",
        ],
    );
    assert_eq!(code, 0);
    let audit: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(audit["entries"][0]["action"], "version.register");
    assert_eq!(audit["entries"][0]["reason"], "canary");

    let (code, stdout, _) = cli(&backstop, &["audit", "verify"]);
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.contains("audit log intact"), "{stdout}");
    let (code, stdout, _) = cli(&backstop, &["version", "verify", "--output", "json"]);
    assert_eq!(code, 0, "{stdout}");

    // A bad signature file is refused before anything is uploaded.
    std::fs::write(dir.path().join("bad.yaml"), "inputs: [unclosed\n").unwrap();
    let bad = dir.path().join("bad.yaml");
    let (code, _, stderr) = cli(
        &backstop,
        &[
            "version",
            "register",
            "fraud",
            "v3",
            "--artifact",
            artifact,
            "--signature",
            bad.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 1);
    assert!(stderr.contains("bad.yaml"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promoted_bundle_keeps_its_versions_from_deletion() {
    let v1 = toy("v1").await;
    let backstop = Backstop::start(&one_version(&v1.url(), "", ""));
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_string()
    };
    let encoder_sig = write(
        "enc.yaml",
        "outputs:\n  - { name: x, datatype: FP32, shape: [-1, 4] }\n",
    );
    let scorer_sig = write(
        "sig.yaml",
        "inputs:\n  - { name: x, datatype: FP32, shape: [-1, 4] }\n",
    );
    let wrong_sig = write(
        "wrong.yaml",
        "inputs:\n  - { name: x, datatype: FP64, shape: [-1, 4] }\n",
    );
    for (model, id, bytes, signature) in [
        ("fraud-encoder", "e3", "encoder", &encoder_sig),
        ("fraud", "v2", "scorer", &scorer_sig),
        ("fraud", "v3", "wrong", &wrong_sig),
    ] {
        let artifact = write(id, bytes);
        let (code, _, stderr) = cli(
            &backstop,
            &[
                "version",
                "register",
                model,
                id,
                "--artifact",
                &artifact,
                "--signature",
                signature,
            ],
        );
        assert_eq!(code, 0, "{stderr}");
    }

    let (code, _, stderr) = cli(
        &backstop,
        &[
            "bundle",
            "create",
            "fraud",
            "b8",
            "--member",
            "fraud-encoder/e3",
            "--member",
            "fraud/v3",
        ],
    );
    assert_eq!(code, 1);
    assert!(stderr.contains("bundle_signature_mismatch"), "{stderr}");
    assert!(
        stderr.contains("members[1].signature.inputs[0] (x): datatype FP64"),
        "{stderr}"
    );

    let (code, stdout, stderr) = cli(
        &backstop,
        &[
            "bundle",
            "create",
            "fraud",
            "b7",
            "--member",
            "fraud-encoder/e3",
            "--member",
            "fraud/v2",
            "--output",
            "json",
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    let bundle: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(bundle["created"], true);

    let (code, stdout, stderr) = cli(
        &backstop,
        &["promote", "fraud", "b7", "--reason", "clean week"],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("last-known-good is now b7 (was none)"),
        "{stdout}"
    );
    let (code, stdout, _) = cli(&backstop, &["bundle", "list", "fraud", "--output", "json"]);
    assert_eq!(code, 0);
    let listed: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(listed["lkg"], "b7");
    assert_eq!(listed["bundles"][0]["members"][0]["model"], "fraud-encoder");

    let (code, _, stderr) = cli(&backstop, &["version", "delete", "fraud", "v2"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("version_retained (409)"), "{stderr}");
    assert!(stderr.contains("lkg:fraud/b7"), "{stderr}");

    // An unbundled version goes, and its artifact with it; GC has nothing
    // left to remove.
    let (code, stdout, stderr) = cli(
        &backstop,
        &["version", "delete", "fraud", "v3", "--reason", "bad dtype"],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("artifact removed"), "{stdout}");
    let (code, stdout, _) = cli(&backstop, &["gc", "--output", "json"]);
    assert_eq!(code, 0);
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["removed"], serde_json::json!([]));

    let (code, _, stderr) = cli(&backstop, &["version", "deprecate", "fraud", "v2"]);
    assert_eq!(code, 0, "{stderr}");
    let (code, stdout, _) = cli(
        &backstop,
        &["audit", "list", "--model", "fraud", "--output", "json"],
    );
    assert_eq!(code, 0);
    let audit: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let actions: Vec<_> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "version.register",
            "version.register",
            "bundle.create",
            "model.promote",
            "version.delete.refused",
            "version.delete",
            "version.deprecate"
        ]
    );
}
