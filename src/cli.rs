//! Client commands: the CLI drives the admin API, as any other client would
//! (with `--token`/`BACKSTOP_TOKEN` as its bearer token). `token` commands
//! are the exception: they work on the data directory's store directly, so
//! the first admin token can be made before any token exists.
//!
//! Every command prints human output by default and the API's JSON with
//! `--output json`. Exit codes: 0 done, 1 failed (the API's error code and
//! message are printed), 2 bad usage, 3 a verification found a problem.

use crate::store::sqlite::SqliteStore;
use crate::store::Store;
use anyhow::{anyhow, Context};
use bytes::Bytes;
use clap::{Args, Subcommand};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::ExitCode;

/// Where the admin API is.
#[derive(Args, Clone, Debug)]
pub struct Remote {
    /// Admin API base URL.
    #[arg(
        long,
        env = "BACKSTOP_ADMIN",
        default_value = "http://127.0.0.1:9090",
        global = true
    )]
    pub admin: String,
    /// Print the API's JSON instead of human output.
    #[arg(long, value_enum, default_value_t = Output::Text, global = true)]
    pub output: Output,
    /// Bearer token for the admin API (`backstop token create` makes one).
    #[arg(long, env = "BACKSTOP_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
}

/// Where the local store is, for commands that work on it directly.
#[derive(Args, Clone, Debug)]
pub struct Local {
    /// The gateway's data directory (`data_dir` in its config).
    #[arg(
        long,
        env = "BACKSTOP_DATA_DIR",
        default_value = "backstop-data",
        global = true
    )]
    pub data_dir: PathBuf,
    /// Print JSON instead of human output.
    #[arg(long, value_enum, default_value_t = Output::Text, global = true)]
    pub output: Output,
}

#[derive(Clone, Copy, Debug, Default, clap::ValueEnum, PartialEq, Eq)]
pub enum Output {
    #[default]
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum VersionCommand {
    /// Upload an artifact and register an immutable version.
    #[command(
        after_help = "Example:\n  backstop version register fraud-scorer v2 --artifact model.onnx \\\n    --signature sig.yaml --upstream http://127.0.0.1:9001 --label team=risk"
    )]
    Register {
        model: String,
        id: String,
        /// The model artifact; its sha256 is computed while it streams up.
        #[arg(long)]
        artifact: PathBuf,
        /// Input/output signature, YAML or JSON.
        #[arg(long)]
        signature: PathBuf,
        /// Upstream endpoint serving this version (repeatable).
        #[arg(long = "upstream")]
        upstreams: Vec<String>,
        /// Metadata label `key=value` (repeatable).
        #[arg(long = "label", value_parser = key_value)]
        labels: Vec<(String, String)>,
        /// Provenance `key=value`, e.g. `commit=abc123` (repeatable).
        #[arg(long = "provenance", value_parser = key_value)]
        provenance: Vec<(String, String)>,
        /// Why, for the audit log.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// List a model's versions.
    #[command(after_help = "Example:\n  backstop version list fraud-scorer --output json")]
    List { model: String },
    /// Show one version.
    Show { model: String, id: String },
    /// Re-hash every stored artifact and report those that changed (exit 3).
    Verify,
    /// Mark a version deprecated: it stays readable, but joins no new bundle.
    #[command(
        after_help = "Example:\n  backstop version deprecate fraud-scorer v1 --reason \"superseded by v2\""
    )]
    Deprecate {
        model: String,
        id: String,
        /// Why, for the audit log.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Delete a version and its artifact (admin). Refused (exit 1,
    /// version_retained) while a last-known-good bundle, a retention pin or
    /// any bundle names it.
    #[command(
        after_help = "Example:\n  backstop version delete fraud-scorer v0 --reason \"never shipped\""
    )]
    Delete {
        model: String,
        id: String,
        /// Why, for the audit log.
        #[arg(long, default_value = "")]
        reason: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum BundleCommand {
    /// Create an immutable bundle of versions that move together, under its
    /// home model; members' signatures must fit in order (producer first).
    #[command(
        after_help = "Example:\n  backstop bundle create fraud-scorer b7 \\\n    --member fraud-encoder/e3 --member fraud-scorer/v2 --reason \"retrained together\""
    )]
    Create {
        model: String,
        id: String,
        /// A member `MODEL/VERSION` (repeatable, in order).
        #[arg(long = "member", value_parser = member_ref, required = true)]
        members: Vec<(String, String)>,
        /// Why, for the audit log.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// List a model's bundles; the last-known-good one is marked.
    #[command(after_help = "Example:\n  backstop bundle list fraud-scorer --output json")]
    List { model: String },
}

#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// List audit entries, oldest first.
    #[command(
        after_help = "Example:\n  backstop audit list --model fraud-scorer --since 1h --output json"
    )]
    List {
        #[arg(long)]
        model: Option<String>,
        /// How far back: 90s, 15m, 1h, 7d.
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Walk the hash chain; names the first altered or removed entry (exit 3).
    Verify,
}

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Create an admin API token; its secret is printed once, and only its
    /// hash is stored.
    #[command(
        after_help = "Examples:\n  backstop token create --role admin --name root --data-dir ./backstop-data\n  export BACKSTOP_TOKEN=$(backstop token create --role deployer --name ci)\n  backstop token create --role viewer --name grafana --output json"
    )]
    Create {
        /// Who holds it; audit entries name them `NAME (ROLE)`.
        #[arg(long)]
        name: String,
        #[arg(long, value_enum)]
        role: crate::access::Role,
        /// Why, for the audit log.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// List tokens (never their secrets).
    #[command(after_help = "Example:\n  backstop token list --output json")]
    List,
    /// Revoke a token by id; requests with it get 401 from then on.
    #[command(
        after_help = "Example:\n  backstop token revoke 3f9a0c1b2e7d --reason \"left the team\""
    )]
    Revoke {
        id: String,
        /// Why, for the audit log.
        #[arg(long, default_value = "")]
        reason: String,
    },
}

fn key_value(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected key=value, got {text:?}"))
}

fn member_ref(text: &str) -> Result<(String, String), String> {
    text.split_once('/')
        .filter(|(m, v)| !m.is_empty() && !v.is_empty() && !v.contains('/'))
        .map(|(m, v)| (m.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected MODEL/VERSION, got {text:?}"))
}

/// Percent-encodes a query parameter value (RFC 3986 unreserved kept).
fn query_value(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, std::io::Error>;

/// A tiny JSON client for the admin API.
struct Api {
    base: String,
    /// `Authorization` value sent with every request, when a token is set.
    authorization: Option<String>,
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Body>,
}

/// An answer: status and JSON body.
struct Answer {
    status: StatusCode,
    json: Value,
}

impl Api {
    fn new(remote: &Remote) -> Self {
        Self {
            base: remote.admin.trim_end_matches('/').to_string(),
            authorization: remote
                .token
                .as_deref()
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(|t| format!("Bearer {t}")),
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Body>,
        json_body: bool,
    ) -> anyhow::Result<Answer> {
        let url = format!("{}{path}", self.base);
        let mut request = Request::builder().method(method).uri(&url);
        if json_body {
            request = request.header("content-type", "application/json");
        }
        if let Some(authorization) = &self.authorization {
            request = request.header(http::header::AUTHORIZATION, authorization);
        }
        let body = body.unwrap_or_else(|| {
            Full::new(Bytes::new())
                .map_err(|never| match never {})
                .boxed_unsync()
        });
        // (Never with the token in the message.)
        let request = request
            .body(body)
            .map_err(|_| anyhow!("invalid request: check --admin and --token"))?;
        let response = self
            .client
            .request(request)
            .await
            .with_context(|| format!("cannot reach the admin API at {}", self.base))?;
        let status = response.status();
        let bytes = response.into_body().collect().await?.to_bytes();
        let json = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
            json!({
                "error": {"code": "bad_answer", "message": String::from_utf8_lossy(&bytes)}
            })
        });
        Ok(Answer { status, json })
    }

    async fn json(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Answer> {
        let has_body = body.is_some();
        let body = body.map(|b| {
            Full::new(Bytes::from(b.to_string()))
                .map_err(|never| match never {})
                .boxed_unsync()
        });
        self.send(method, path, body, has_body).await
    }
}

/// The API's error as the command's failure.
fn failure(answer: &Answer) -> anyhow::Error {
    let error = &answer.json["error"];
    anyhow!(
        "{} ({}): {}",
        error["code"].as_str().unwrap_or("error"),
        answer.status.as_u16(),
        error["message"].as_str().unwrap_or("no message")
    )
}

fn ok(answer: Answer) -> anyhow::Result<Value> {
    if answer.status.is_success() {
        Ok(answer.json)
    } else {
        Err(failure(&answer))
    }
}

/// Streams a file as a request body, 256 KiB at a time.
async fn file_body(path: &PathBuf) -> anyhow::Result<Body> {
    use tokio::io::AsyncReadExt;
    let file = tokio::fs::File::open(path)
        .await
        .with_context(|| format!("opening {}", path.display()))?;
    let stream = futures_util::stream::unfold(Some(file), |file| async move {
        let mut file = file?;
        let mut buffer = bytes::BytesMut::with_capacity(256 * 1024);
        match file.read_buf(&mut buffer).await {
            Ok(0) => None,
            Ok(_) => Some((Ok(Frame::data(buffer.freeze())), Some(file))),
            Err(error) => Some((Err(error), None)),
        }
    });
    Ok(StreamBody::new(stream).boxed_unsync())
}

fn print(remote: &Remote, value: &Value, human: impl FnOnce(&Value)) {
    match remote.output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_default()
        ),
        Output::Text => human(value),
    }
}

pub async fn version(command: VersionCommand, remote: &Remote) -> anyhow::Result<ExitCode> {
    let api = Api::new(remote);
    match command {
        VersionCommand::Register {
            model,
            id,
            artifact,
            signature,
            upstreams,
            labels,
            provenance,
            reason,
        } => {
            let text = std::fs::read_to_string(&signature)
                .with_context(|| format!("reading {}", signature.display()))?;
            let signature_value: Value = serde_yaml_ng::from_str(&text)
                .map_err(|e| anyhow!("{}: {e}", signature.display()))?;
            // Ask first: a refusal that arrives mid-upload would surface
            // as a broken pipe instead of the 401/403 it is.
            for (method, path) in [
                ("PUT", "/api/v1/artifacts".to_string()),
                ("POST", format!("/api/v1/models/{model}/versions")),
            ] {
                let check = format!("/api/v1/access/check?method={method}&path={path}");
                ok(api.json(Method::GET, &check, None).await?)?;
            }
            let stored = ok(api
                .send(
                    Method::PUT,
                    "/api/v1/artifacts",
                    Some(file_body(&artifact).await?),
                    false,
                )
                .await?)?;
            let body = json!({
                "id": id,
                "digest": stored["digest"],
                "signature": signature_value,
                "metadata": labels.into_iter().collect::<std::collections::BTreeMap<_, _>>(),
                "provenance": provenance.into_iter().collect::<std::collections::BTreeMap<_, _>>(),
                "upstreams": upstreams,
                "reason": reason,
            });
            let version = ok(api
                .json(
                    Method::POST,
                    &format!("/api/v1/models/{model}/versions"),
                    Some(body),
                )
                .await?)?;
            print(remote, &version, |v| {
                let verb = if v["created"] == true {
                    "registered"
                } else {
                    "already registered"
                };
                println!(
                    "{verb} {model}/{id} ({})",
                    v["digest"].as_str().unwrap_or("?")
                );
            });
        }
        VersionCommand::List { model } => {
            let listed = ok(api
                .json(
                    Method::GET,
                    &format!("/api/v1/models/{model}/versions"),
                    None,
                )
                .await?)?;
            print(remote, &listed, |v| {
                let versions = v["versions"].as_array().cloned().unwrap_or_default();
                if versions.is_empty() {
                    println!("{model} has no registered versions");
                }
                println!(
                    "{:<16} {:<20} {:<12} REGISTERED BY",
                    "VERSION", "DIGEST", "STATE"
                );
                for version in versions {
                    let digest = version["digest"].as_str().unwrap_or("");
                    println!(
                        "{:<16} {:<20} {:<12} {}",
                        version["id"].as_str().unwrap_or(""),
                        &digest[..digest.len().min(19)],
                        if version["deprecated"] == true {
                            "deprecated"
                        } else {
                            "active"
                        },
                        version["registered_by"].as_str().unwrap_or("")
                    );
                }
            });
        }
        VersionCommand::Show { model, id } => {
            let version = ok(api
                .json(
                    Method::GET,
                    &format!("/api/v1/models/{model}/versions/{id}"),
                    None,
                )
                .await?)?;
            print(remote, &version, |v| {
                println!("{}", serde_yaml_ng::to_string(v).unwrap_or_default());
            });
        }
        VersionCommand::Verify => {
            let report = ok(api
                .json(Method::POST, "/api/v1/artifacts/verify", None)
                .await?)?;
            let mismatched = report["mismatched"].as_array().map_or(0, Vec::len);
            print(remote, &report, |r| {
                println!("checked {} artifacts, {mismatched} changed", r["checked"]);
                for m in r["mismatched"].as_array().into_iter().flatten() {
                    match m["actual"].as_str() {
                        Some(actual) => println!(
                            "  {} now hashes to {actual}",
                            m["digest"].as_str().unwrap_or("?")
                        ),
                        None => println!("  {} is missing", m["digest"].as_str().unwrap_or("?")),
                    }
                }
            });
            if mismatched > 0 {
                return Ok(ExitCode::from(3));
            }
        }
        VersionCommand::Deprecate { model, id, reason } => {
            let version = ok(api
                .json(
                    Method::POST,
                    &format!("/api/v1/models/{model}/versions/{id}/deprecate"),
                    Some(json!({ "reason": reason })),
                )
                .await?)?;
            print(remote, &version, |_| println!("deprecated {model}/{id}"));
        }
        VersionCommand::Delete { model, id, reason } => {
            let deleted = ok(api
                .json(
                    Method::DELETE,
                    &format!(
                        "/api/v1/models/{model}/versions/{id}?reason={}",
                        query_value(&reason)
                    ),
                    None,
                )
                .await?)?;
            print(remote, &deleted, |d| {
                let artifact = if d["artifact_removed"] == true {
                    "artifact removed"
                } else {
                    "artifact kept: another version names it"
                };
                println!(
                    "deleted {model}/{id} ({}; {artifact})",
                    d["digest"].as_str().unwrap_or("?")
                );
            });
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn bundle(command: BundleCommand, remote: &Remote) -> anyhow::Result<ExitCode> {
    let api = Api::new(remote);
    match command {
        BundleCommand::Create {
            model,
            id,
            members,
            reason,
        } => {
            let members: Vec<Value> = members
                .into_iter()
                .map(|(model, version)| json!({ "model": model, "version": version }))
                .collect();
            let bundle = ok(api
                .json(
                    Method::POST,
                    &format!("/api/v1/models/{model}/bundles"),
                    Some(json!({ "id": id, "members": members, "reason": reason })),
                )
                .await?)?;
            print(remote, &bundle, |b| {
                let verb = if b["created"] == true {
                    "created"
                } else {
                    "already created"
                };
                println!("{verb} bundle {model}/{id}: {}", member_list(b));
            });
        }
        BundleCommand::List { model } => {
            let mut listed = ok(api
                .json(
                    Method::GET,
                    &format!("/api/v1/models/{model}/bundles"),
                    None,
                )
                .await?)?;
            let lkg = api
                .json(Method::GET, &format!("/api/v1/models/{model}/lkg"), None)
                .await?;
            listed["lkg"] = match lkg.status {
                StatusCode::NOT_FOUND => Value::Null,
                _ => ok(lkg)?["bundle"].clone(),
            };
            print(remote, &listed, |v| {
                let bundles = v["bundles"].as_array().cloned().unwrap_or_default();
                if bundles.is_empty() {
                    println!("{model} has no bundles");
                    return;
                }
                println!("{:<16} {:<5} {:<24} MEMBERS", "BUNDLE", "LKG", "CREATED BY");
                for bundle in bundles {
                    println!(
                        "{:<16} {:<5} {:<24} {}",
                        bundle["id"].as_str().unwrap_or(""),
                        if bundle["id"] == v["lkg"] { "yes" } else { "" },
                        bundle["created_by"].as_str().unwrap_or(""),
                        member_list(&bundle)
                    );
                }
            });
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `model/version, model/version` of a bundle.
fn member_list(bundle: &Value) -> String {
    bundle["members"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            format!(
                "{}/{}",
                m["model"].as_str().unwrap_or("?"),
                m["version"].as_str().unwrap_or("?")
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

pub async fn promote(
    model: &str,
    bundle: &str,
    reason: &str,
    remote: &Remote,
) -> anyhow::Result<ExitCode> {
    let promoted = ok(Api::new(remote)
        .json(
            Method::POST,
            &format!("/api/v1/models/{model}/promote"),
            Some(json!({ "bundle": bundle, "reason": reason })),
        )
        .await?)?;
    print(remote, &promoted, |p| {
        if p["changed"] == true {
            let before = p["before"].as_str().unwrap_or("none");
            println!(
                "{model}: last-known-good is now {bundle} (was {before}): {}",
                member_list(p)
            );
        } else {
            println!("{model}: {bundle} already is the last-known-good");
        }
    });
    Ok(ExitCode::SUCCESS)
}

pub async fn gc(remote: &Remote) -> anyhow::Result<ExitCode> {
    let report = ok(Api::new(remote)
        .json(Method::POST, "/api/v1/gc", None)
        .await?)?;
    print(remote, &report, |r| {
        let removed = r["removed"].as_array().cloned().unwrap_or_default();
        println!(
            "checked {} artifacts, removed {} that no version names",
            r["checked"],
            removed.len()
        );
        for digest in removed {
            println!("  {}", digest.as_str().unwrap_or("?"));
        }
    });
    Ok(ExitCode::SUCCESS)
}

pub async fn audit(command: AuditCommand, remote: &Remote) -> anyhow::Result<ExitCode> {
    let api = Api::new(remote);
    match command {
        AuditCommand::List {
            model,
            since,
            limit,
        } => {
            let mut query = Vec::new();
            if let Some(model) = model {
                query.push(format!("model={model}"));
            }
            if let Some(since) = since {
                query.push(format!("since={since}"));
            }
            if let Some(limit) = limit {
                query.push(format!("limit={limit}"));
            }
            let path = if query.is_empty() {
                "/api/v1/audit".to_string()
            } else {
                format!("/api/v1/audit?{}", query.join("&"))
            };
            let listed = ok(api.json(Method::GET, &path, None).await?)?;
            print(remote, &listed, |v| {
                for entry in v["entries"].as_array().into_iter().flatten() {
                    println!(
                        "#{:<5} {} {:<12} {:<20} {}{}",
                        entry["seq"],
                        entry["at_ms"],
                        entry["actor"].as_str().unwrap_or(""),
                        entry["action"].as_str().unwrap_or(""),
                        entry["target"].as_str().unwrap_or(""),
                        match entry["reason"].as_str() {
                            Some(reason) if !reason.is_empty() => format!(" ({reason})"),
                            _ => String::new(),
                        }
                    );
                }
            });
        }
        AuditCommand::Verify => {
            let verdict = ok(api.json(Method::GET, "/api/v1/audit/verify", None).await?)?;
            let intact = verdict["intact"] == true;
            print(remote, &verdict, |v| {
                if intact {
                    println!(
                        "audit log intact: {} entries, head {}",
                        v["entries"],
                        v["head_hash"].as_str().unwrap_or("-")
                    );
                } else {
                    println!(
                        "audit log broken at entry {}: {}",
                        v["broken_at_seq"],
                        v["why"].as_str().unwrap_or("")
                    );
                }
            });
            if !intact {
                return Ok(ExitCode::from(3));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Opens the data directory's store. Only `create` may start a new one:
/// listing or revoking in a directory that has none is a mistake (a typo
/// in `--data-dir`), not an empty list.
fn open_local(local: &Local, create: bool) -> anyhow::Result<SqliteStore> {
    let path = local.data_dir.join("backstop.db");
    if create {
        std::fs::create_dir_all(&local.data_dir)
            .with_context(|| format!("creating {}", local.data_dir.display()))?;
    } else if !path.exists() {
        return Err(anyhow!(
            "no store at {} (is --data-dir the gateway's data_dir?)",
            path.display()
        ));
    }
    SqliteStore::open(&path).with_context(|| format!("opening {}", path.display()))
}

/// The actor of local token commands: whoever runs them on this machine.
fn local_actor() -> String {
    let user = ["USER", "LOGNAME"]
        .iter()
        .find_map(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
        .unwrap_or_else(|| "unknown".into());
    format!("local-cli:{user}")
}

pub fn token(command: TokenCommand, local: &Local) -> anyhow::Result<ExitCode> {
    let json_output = local.output == Output::Json;
    match command {
        TokenCommand::Create { name, role, reason } => {
            let store = open_local(local, true)?;
            let now_ms = crate::gateway::unix_ms();
            let created =
                crate::access::create_token(&store, &name, role, &local_actor(), &reason, now_ms)?;
            let record = &created.record;
            if json_output {
                let value = json!({
                    "id": record.id,
                    "name": record.name,
                    "role": record.role,
                    "token": created.secret,
                });
                println!("{}", serde_json::to_string_pretty(&value)?);
            } else {
                // The secret alone on stdout, so `$(backstop token create ...)`
                // captures just it; the rest is for the person at the terminal.
                eprintln!(
                    "created token {} for {} ({role}); the secret is shown only this once:",
                    record.id, record.name
                );
                println!("{}", created.secret);
            }
        }
        TokenCommand::List => {
            let tokens = open_local(local, false)?.tokens()?;
            if json_output {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&json!({ "tokens": tokens }))?
                );
            } else {
                println!(
                    "{:<14} {:<24} {:<11} {:<8} CREATED BY",
                    "ID", "NAME", "ROLE", "STATE"
                );
                for token in tokens {
                    println!(
                        "{:<14} {:<24} {:<11} {:<8} {}",
                        token.id,
                        token.name,
                        token.role.as_str(),
                        if token.revoked { "revoked" } else { "active" },
                        token.created_by
                    );
                }
            }
        }
        TokenCommand::Revoke { id, reason } => {
            let store = open_local(local, false)?;
            let token = crate::access::revoke_token(&store, &id, &local_actor(), &reason)?;
            if json_output {
                println!("{}", serde_json::to_string_pretty(&token)?);
            } else {
                println!(
                    "revoked token {} ({}, {})",
                    token.id, token.name, token.role
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Subcommand, Debug)]
pub enum PolicyCommand {
    /// Print the policy file's JSON Schema (generated from the code).
    #[command(after_help = "Example:\n  backstop policy schema > policy.schema.json")]
    Schema,
    /// Validate a policy file without side effects: exit 0 and print
    /// "FILE: ok", or exit 1 and print FILE:LINE:COLUMN: FIELD: problem.
    #[command(after_help = "Example:\n  backstop policy check examples/policy.yaml --output json")]
    Check {
        /// The policy file (YAML).
        file: PathBuf,
        /// With json: `{"file","ok":true,"policy":{...}}` (normalized) or
        /// `{"file","ok":false,"error":{"line","column","path","message"}}`.
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
}

/// `policy` commands work on files only: nothing is started or changed.
pub fn policy(command: PolicyCommand) -> anyhow::Result<ExitCode> {
    match command {
        PolicyCommand::Schema => {
            let schema = backstop_core::policy::schema();
            println!("{}", serde_json::to_string_pretty(&schema)?);
            Ok(ExitCode::SUCCESS)
        }
        PolicyCommand::Check { file, output } => {
            let name = file.display().to_string();
            let result = crate::policy::load(&file);
            let ok = result.is_ok();
            match (output, result) {
                (Output::Text, Ok(_)) => println!("{name}: ok"),
                (Output::Text, Err(error)) => eprintln!("{error}"),
                (Output::Json, Ok(policy)) => {
                    let answer = json!({"file": name, "ok": true, "policy": policy});
                    println!("{}", serde_json::to_string_pretty(&answer)?);
                }
                (Output::Json, Err(error)) => {
                    let answer = json!({"file": name, "ok": false, "error": error});
                    println!("{}", serde_json::to_string_pretty(&answer)?);
                }
            }
            // The exit code carries the verdict in both output modes, so
            // scripts and CI can gate on it.
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}
