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
