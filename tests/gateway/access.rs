//! Access control end to end: tokens made with `backstop token create` on
//! the data directory guard the running gateway's admin API, and the CLI
//! sends its `--token` (or `BACKSTOP_TOKEN`).

use crate::util::*;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Runs the CLI; `token` goes in through `BACKSTOP_TOKEN` when given.
fn run(args: &[&str], token: Option<&str>) -> (i32, String, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_backstop"));
    command.args(args).env_remove("BACKSTOP_TOKEN");
    if let Some(token) = token {
        command.env("BACKSTOP_TOKEN", token);
    }
    let output = command.output().unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn create_token(data_dir: &Path, name: &str, role: &str) -> serde_json::Value {
    let data_dir = data_dir.to_str().unwrap();
    let (code, stdout, stderr) = run(
        &[
            "token",
            "create",
            "--role",
            role,
            "--name",
            name,
            "--data-dir",
            data_dir,
            "--output",
            "json",
        ],
        None,
    );
    assert_eq!(code, 0, "{stderr}");
    serde_json::from_str(&stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_made_with_the_cli_guard_the_running_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let root = create_token(&data_dir, "root", "admin");
    let root_secret = root["token"].as_str().unwrap().to_string();
    assert!(root_secret.starts_with("bst_"), "{root}");
    assert_eq!(
        (root["name"].as_str(), root["role"].as_str()),
        (Some("root"), Some("admin"))
    );
    // Human output: the secret alone on stdout, the words on stderr.
    let (code, stdout, stderr) = run(
        &[
            "token",
            "create",
            "--role",
            "viewer",
            "--name",
            "bob",
            "--data-dir",
            data_dir.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("shown only this once"), "{stderr}");
    let bob_secret = stdout.trim().to_string();
    assert!(
        bob_secret.starts_with("bst_") && !bob_secret.contains(' '),
        "{stdout}"
    );

    let v1 = toy("v1").await;
    let backstop = Backstop::start_with_data_dir(&one_version(&v1.url(), "", ""), &data_dir);
    let admin = format!("http://{}", backstop.admin);
    let with_admin = |args: &[&str]| -> Vec<String> {
        args.iter()
            .map(|a| a.to_string())
            .chain(["--admin".to_string(), admin.clone()])
            .collect()
    };
    let api = |args: &[&str], token: Option<&str>| {
        let args = with_admin(args);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run(&args, token)
    };

    let (code, _, stderr) = api(&["version", "list", "m"], None);
    assert_eq!(code, 1);
    assert!(stderr.contains("unauthenticated (401)"), "{stderr}");
    let (code, stdout, stderr) = api(
        &[
            "version",
            "list",
            "m",
            "--token",
            &bob_secret,
            "--output",
            "json",
        ],
        None,
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("\"versions\""), "{stdout}");

    // A viewer cannot register (the artifact upload is refused already).
    let artifact = dir.path().join("model.onnx");
    std::fs::write(&artifact, b"weights").unwrap();
    let signature = dir.path().join("sig.yaml");
    std::fs::write(&signature, "inputs: []\n").unwrap();
    let register = [
        "version",
        "register",
        "m",
        "v2",
        "--artifact",
        artifact.to_str().unwrap(),
        "--signature",
        signature.to_str().unwrap(),
    ];
    let (code, _, stderr) = api(&register, Some(&bob_secret));
    assert_eq!(code, 1);
    assert!(stderr.contains("forbidden (403)"), "{stderr}");
    // An admin may do what a deployer may; the version names its registrant.
    let (code, stdout, stderr) = api(&register, Some(&root_secret));
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("registered m/v2"), "{stdout}");
    let (_, stdout, _) = api(
        &["version", "show", "m", "v2", "--output", "json"],
        Some(&root_secret),
    );
    let version: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(version["registered_by"], "root (admin)");

    // Probes and scrapes need no token.
    let client = HttpClient::new();
    for path in ["/healthz", "/metrics"] {
        assert_eq!(
            client.get(&backstop.admin_url(path)).await.status,
            200,
            "{path}"
        );
    }

    // Revoking on the data directory takes effect in the running gateway.
    let bob_id = {
        let (code, stdout, stderr) = run(
            &[
                "token",
                "list",
                "--data-dir",
                data_dir.to_str().unwrap(),
                "--output",
                "json",
            ],
            None,
        );
        assert_eq!(code, 0, "{stderr}");
        assert!(!stdout.contains("bst_"), "no secrets in lists: {stdout}");
        let listed: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        let tokens = listed["tokens"].as_array().unwrap().clone();
        assert_eq!(tokens.len(), 2);
        tokens.iter().find(|t| t["name"] == "bob").unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (code, stdout, stderr) = run(
        &[
            "token",
            "revoke",
            &bob_id,
            "--data-dir",
            data_dir.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains(&format!("revoked token {bob_id}")),
        "{stdout}"
    );
    let (code, _, stderr) = api(&["version", "list", "m"], Some(&bob_secret));
    assert_eq!(code, 1);
    assert!(stderr.contains("unauthenticated (401)"), "{stderr}");

    // Every refusal left an audit entry.
    let (code, stdout, stderr) = api(&["audit", "list", "--output", "json"], Some(&root_secret));
    assert_eq!(code, 0, "{stderr}");
    let audit: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let entries: Vec<(String, String)> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap().to_string(),
                e["actor"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for expected in [
        ("token.create", "local-cli"),
        ("login.failed", "anonymous"),
        ("access.denied", "bob (viewer)"),
        ("version.register", "root (admin)"),
        ("token.revoke", "local-cli"),
        ("login.failed", "bob (viewer)"),
    ] {
        assert!(
            entries
                .iter()
                .any(|(action, actor)| action == expected.0 && actor.starts_with(expected.1)),
            "{expected:?} in {entries:?}"
        );
    }
    assert!(!stdout.contains(&bob_secret) && !stdout.contains(&root_secret));
    assert!(
        !backstop.logs().contains("open on loopback"),
        "{}",
        backstop.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_tokens_the_loopback_admin_api_is_open_and_says_so() {
    let v1 = toy("v1").await;
    let backstop = Backstop::start(&one_version(&v1.url(), "", ""));
    let said = eventually(Duration::from_secs(5), || async {
        backstop
            .logs()
            .contains("The admin API is open on loopback because no access tokens exist")
    })
    .await;
    assert!(said, "startup log: {}", backstop.logs());
    let admin = format!("http://{}", backstop.admin);
    let (code, stdout, stderr) = run(
        &["audit", "verify", "--admin", &admin, "--output", "json"],
        None,
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("\"intact\": true"), "{stdout}");

    // The first token, made while it runs, switches access control on.
    create_token(&backstop.data_dir, "root", "admin");
    let (code, _, stderr) = run(&["audit", "verify", "--admin", &admin], None);
    assert_eq!(code, 1);
    assert!(stderr.contains("unauthenticated (401)"), "{stderr}");
}
