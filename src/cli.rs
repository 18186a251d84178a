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
        after_help = "Example:\n  backstop version register fraud-scorer v2 --artifact model.onnx \\\n    --signature sig.yaml --upstream http://127.0.0.1:9001 --label team=risk \\\n    --profile profile.json"
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
        /// Reference profile of the input features (`backstop profile
        /// build` writes one), for `drift_psi` triggers with
        /// `reference: profile`. Only at registration: versions are
        /// immutable.
        #[arg(long)]
        profile: Option<PathBuf>,
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
            profile,
            reason,
        } => {
            let text = std::fs::read_to_string(&signature)
                .with_context(|| format!("reading {}", signature.display()))?;
            let signature_value: Value = serde_yaml_ng::from_str(&text)
                .map_err(|e| anyhow!("{}: {e}", signature.display()))?;
            // Read and checked before anything is uploaded.
            let profile_value = match &profile {
                None => None,
                Some(path) => {
                    let bytes = std::fs::read(path)
                        .with_context(|| format!("reading {}", path.display()))?;
                    let parsed = crate::profile::parse_text(&bytes)
                        .map_err(|e| anyhow!("{}: {e}", path.display()))?;
                    Some(serde_json::to_value(&parsed)?)
                }
            };
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
            let mut body = json!({
                "id": id,
                "digest": stored["digest"],
                "signature": signature_value,
                "metadata": labels.into_iter().collect::<std::collections::BTreeMap<_, _>>(),
                "provenance": provenance.into_iter().collect::<std::collections::BTreeMap<_, _>>(),
                "upstreams": upstreams,
                "reason": reason,
            });
            if let Some(profile) = profile_value {
                body["profile"] = profile;
            }
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

#[derive(Subcommand, Debug)]
pub enum ProfileCommand {
    /// Build a reference profile of every input feature from request
    /// bodies, one per line (OIP or plain JSON, as the gateway sees them),
    /// each checked against the input signature; lines that do not fit
    /// are counted and left out. Exit 1 only when no line could be used.
    #[command(
        after_help = "Example:\n  backstop profile build --signature sig.yaml --input train-requests.jsonl -o profile.json\n  backstop version register fraud-scorer v2 --artifact model.onnx --signature sig.yaml \\\n    --profile profile.json"
    )]
    Build {
        /// The version's signature, YAML or JSON (as registered).
        #[arg(long)]
        signature: PathBuf,
        /// Request bodies, one JSON document per line (`-`: stdin).
        #[arg(long)]
        input: PathBuf,
        /// Where to write the profile (default: stdout, and the summary on
        /// stderr).
        #[arg(short = 'o', long = "out")]
        out: Option<PathBuf>,
        /// With json, the summary as `{"lines","used","bad","errors",
        /// "values","missing","features","bytes","file"}`.
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
}

/// `profile` commands work on files only: nothing is started or changed.
pub fn profile(command: ProfileCommand) -> anyhow::Result<ExitCode> {
    use backstop_core::analysis::profile::PROFILE_BYTES_MAX;
    let ProfileCommand::Build {
        signature,
        input,
        out,
        output,
    } = command;
    let text = std::fs::read_to_string(&signature)
        .with_context(|| format!("reading {}", signature.display()))?;
    let value: Value =
        serde_yaml_ng::from_str(&text).map_err(|e| anyhow!("{}: {e}", signature.display()))?;
    let checker = crate::signature::InputSignature::from_registered(&value)
        .map_err(|e| anyhow!("{}: {e}", signature.display()))?;
    let built = if input.as_os_str() == "-" {
        crate::profile::build(&checker, std::io::stdin().lock())
    } else {
        let file =
            std::fs::File::open(&input).with_context(|| format!("opening {}", input.display()))?;
        crate::profile::build(&checker, std::io::BufReader::new(file))
    };
    if built.used == 0 {
        let why = built
            .read_error
            .clone()
            .or_else(|| built.errors.first().cloned())
            .unwrap_or_else(|| "no lines".into());
        return Err(anyhow!(
            "{}: no line could be used ({} read, {} bad; {why})",
            input.display(),
            built.lines,
            built.bad
        ));
    }
    built
        .profile
        .check()
        .map_err(|e| anyhow!("the profile would be refused: {e}"))?;
    let profile_json = serde_json::to_string(&built.profile)?;
    if profile_json.len() > PROFILE_BYTES_MAX {
        return Err(anyhow!(
            "the profile would be refused: {} bytes, over the {PROFILE_BYTES_MAX}-byte limit (fewer features?)",
            profile_json.len()
        ));
    }
    match &out {
        Some(path) => std::fs::write(path, format!("{profile_json}\n"))
            .with_context(|| format!("writing {}", path.display()))?,
        None => println!("{profile_json}"),
    }
    let mut summary = serde_json::to_value(&built)?;
    summary["features"] = json!(built.profile.feature_names());
    summary["bytes"] = json!(profile_json.len());
    summary["file"] = json!(out.as_ref().map(|p| p.display().to_string()));
    // The summary goes to stdout only when the profile does not.
    let say = |line: String| {
        if out.is_some() {
            println!("{line}");
        } else {
            eprintln!("{line}");
        }
    };
    match output {
        Output::Json => say(serde_json::to_string_pretty(&summary)?),
        Output::Text => {
            say(format!(
                "profiled {} feature(s) from {} of {} line(s) ({} bad), {} bytes{}",
                built.profile.features.len(),
                built.used,
                built.lines,
                built.bad,
                profile_json.len(),
                out.as_ref()
                    .map(|p| format!(" → {}", p.display()))
                    .unwrap_or_default()
            ));
            for (feature, n) in &built.values {
                say(format!("  {feature}: {n} value(s)"));
            }
            for feature in &built.missing {
                say(format!("  {feature}: no values (not in the profile)"));
            }
            for error in &built.errors {
                say(format!("  bad {error}"));
            }
            if let Some(e) = &built.read_error {
                say(format!("  input ended early: {e}"));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
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
                (Output::Json, Ok(policy)) => {
                    let answer = json!({"file": name, "ok": true, "policy": policy});
                    println!("{}", serde_json::to_string_pretty(&answer)?);
                }
                (output, Err(error)) => print_policy_error(output, &name, &error)?,
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

/// A policy file that cannot be used, as `policy check` reports it:
/// `FILE:LINE:COLUMN: FIELD: problem` on stderr, or its JSON on stdout.
fn print_policy_error(
    output: Output,
    name: &str,
    error: &crate::policy::PolicyError,
) -> anyhow::Result<()> {
    match output {
        Output::Text => eprintln!("{error}"),
        Output::Json => {
            let answer = json!({"file": name, "ok": false, "error": error});
            println!("{}", serde_json::to_string_pretty(&answer)?);
        }
    }
    Ok(())
}

#[derive(Subcommand, Debug)]
pub enum RolloutCommand {
    /// Start a rollout from a policy file (deployer). The file is checked
    /// here first, as `backstop policy check` checks it: a broken one
    /// exits 2 and nothing is sent.
    #[command(
        after_help = "Examples:\n  backstop rollout start canary.yaml\n  backstop rollout start canary.yaml --force    # retry a candidate rolled back before\n  backstop rollout start canary.yaml --output json"
    )]
    Start {
        /// The policy file (YAML).
        file: PathBuf,
        /// Start even though the candidate was rolled back or rejected
        /// before.
        #[arg(long)]
        force: bool,
    },
    /// Show a rollout: phase, stage, traffic, each trigger's figures and
    /// the verdict. Without an id or model, the open rollouts.
    #[command(
        after_help = "Examples:\n  backstop rollout status fraud-scorer --watch\n  backstop rollout status ro-3f9a0c1b2e7d --output json\n  backstop rollout status --watch --interval 5s\n  backstop rollout status fraud-scorer --watch --output json   # one JSON object per line per frame"
    )]
    Status {
        /// Rollout id, or a model name for its open rollout.
        rollout: Option<String>,
        /// Redraw every --interval until the rollout is no longer open (or
        /// Ctrl-C); exits 0 however it ended, with the final phase shown.
        #[arg(long)]
        watch: bool,
        /// How often --watch redraws: 500ms, 1s, 5s.
        #[arg(long, default_value = "1s", value_parser = watch_interval)]
        interval: std::time::Duration,
    },
    /// List rollouts, newest first: the open ones, or all with --all.
    #[command(
        after_help = "Example:\n  backstop rollout list --model fraud-scorer --all --output json"
    )]
    List {
        #[arg(long)]
        model: Option<String>,
        /// Finished rollouts too.
        #[arg(long)]
        all: bool,
    },
    /// Hold the current traffic shares; triggers keep judging (deployer).
    #[command(after_help = "Example:\n  backstop rollout pause fraud-scorer")]
    Pause(RolloutTarget),
    /// Resume a paused rollout; its stage starts over (deployer).
    #[command(after_help = "Example:\n  backstop rollout resume ro-3f9a0c1b2e7d")]
    Resume(RolloutTarget),
    /// Let the stage that waits for approval start (approver).
    #[command(after_help = "Example:\n  backstop rollout approve fraud-scorer")]
    Approve(RolloutTarget),
    /// Skip the remaining stages: the candidate takes all traffic and
    /// becomes the last-known-good (approver).
    #[command(after_help = "Example:\n  backstop rollout promote fraud-scorer")]
    Promote(RolloutTarget),
    /// All traffic back to the baseline; the candidate is not condemned
    /// (deployer).
    #[command(after_help = "Example:\n  backstop rollout abort fraud-scorer")]
    Abort(RolloutTarget),
    /// All traffic back to the baseline; the candidate is condemned, and
    /// starting it again needs --force (deployer).
    #[command(after_help = "Example:\n  backstop rollout rollback fraud-scorer --output json")]
    Rollback(RolloutTarget),
}

#[derive(Args, Debug)]
pub struct RolloutTarget {
    /// Rollout id, or a model name for its open rollout.
    rollout: String,
}

fn watch_interval(text: &str) -> Result<std::time::Duration, String> {
    let period: backstop_core::policy::Period = text.parse()?;
    if period.as_ms() < 100 {
        return Err(format!("{text:?} is too short: at least 100ms"));
    }
    Ok(std::time::Duration::from_millis(period.as_ms()))
}

pub async fn rollout(command: RolloutCommand, remote: &Remote) -> anyhow::Result<ExitCode> {
    let api = Api::new(remote);
    let (command, target, done) = match command {
        RolloutCommand::Start { file, force } => {
            return rollout_start(&api, remote, &file, force).await
        }
        RolloutCommand::Status {
            rollout,
            watch,
            interval,
        } => return rollout_status(&api, remote, rollout, watch, interval).await,
        RolloutCommand::List { model, all } => {
            let mut query = vec![format!("open={}", !all)];
            query.extend(model.map(|m| format!("model={}", query_value(&m))));
            let path = format!("/api/v1/rollouts?{}", query.join("&"));
            let listed = ok(api.json(Method::GET, &path, None).await?)?;
            print(remote, &listed, |v| print!("{}", rollout_table(v)));
            return Ok(ExitCode::SUCCESS);
        }
        RolloutCommand::Pause(target) => ("pause", target, "paused"),
        RolloutCommand::Resume(target) => ("resume", target, "resumed"),
        RolloutCommand::Approve(target) => ("approve", target, "approved"),
        RolloutCommand::Promote(target) => ("promote", target, "promoted"),
        RolloutCommand::Abort(target) => ("abort", target, "aborted"),
        RolloutCommand::Rollback(target) => ("rollback", target, "rolled back"),
    };
    let path = format!(
        "/api/v1/rollouts/{}/{command}",
        query_value(&target.rollout)
    );
    let view = ok(api.json(Method::POST, &path, None).await?)?;
    print(remote, &view, |v| {
        println!(
            "{done} {}: phase {}, candidate {}",
            rollout_name(v),
            v["phase"].as_str().unwrap_or("?"),
            percent(v["candidate_percent"].as_f64().unwrap_or(0.0))
        );
    });
    Ok(ExitCode::SUCCESS)
}

/// `ro-3f9a0c1b2e7d (fraud-scorer: v2 vs baseline v1)`.
fn rollout_name(view: &Value) -> String {
    format!(
        "{} ({}: {} vs baseline {})",
        view["id"].as_str().unwrap_or("?"),
        view["model"].as_str().unwrap_or("?"),
        view["candidate"].as_str().unwrap_or("?"),
        view["baseline"].as_str().unwrap_or("?")
    )
}

async fn rollout_start(
    api: &Api,
    remote: &Remote,
    file: &std::path::Path,
    force: bool,
) -> anyhow::Result<ExitCode> {
    let name = file.display().to_string();
    let policy = match crate::policy::load(file) {
        Ok(policy) => policy,
        Err(error) => {
            print_policy_error(remote.output, &name, &error)?;
            return Ok(ExitCode::from(2));
        }
    };
    // The text as written, so the gateway's errors point into the file.
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {name}"))?;
    let body = json!({ "policy": text, "file": name, "force": force });
    let view = ok(api
        .json(Method::POST, "/api/v1/rollouts", Some(body))
        .await?)?;
    print(remote, &view, |v| {
        println!(
            "started {}, {} in {} stage(s)",
            rollout_name(v),
            v["strategy"].as_str().unwrap_or("?"),
            v["stages"]
        );
        if let Some(stage) = backstop_core::controller::plan(&policy.strategy).first() {
            let share = if stage.shadow_percent > 0.0 {
                format!("shadow {}", percent(stage.shadow_percent))
            } else {
                format!("candidate {}", percent(stage.candidate_percent))
            };
            println!(
                "first stage: {share} for {}{} (phase {})",
                backstop_core::policy::Period::from_ms(stage.hold_ms),
                if stage.approval {
                    ", after `backstop rollout approve`"
                } else {
                    ""
                },
                v["phase"].as_str().unwrap_or("?")
            );
        }
    });
    Ok(ExitCode::SUCCESS)
}

async fn rollout_status(
    api: &Api,
    remote: &Remote,
    mut target: Option<String>,
    watch: bool,
    interval: std::time::Duration,
) -> anyhow::Result<ExitCode> {
    use std::io::{IsTerminal, Write};
    let redraw = watch && remote.output == Output::Text && std::io::stdout().is_terminal();
    // One Ctrl-C listener for the whole watch, so a press during a request
    // is not lost; none without --watch (Ctrl-C then just ends the process).
    let interrupted = async {
        if watch {
            let _ = tokio::signal::ctrl_c().await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::pin!(interrupted);
    loop {
        let path = match &target {
            Some(id) => format!("/api/v1/rollouts/{}", query_value(id)),
            None => "/api/v1/rollouts?open=true".to_string(),
        };
        let frame = tokio::select! {
            answer = api.json(Method::GET, &path, None) => ok(answer?)?,
            () = &mut interrupted => break,
        };
        let finished = match &target {
            Some(_) => {
                // A model name finds only its open rollout: follow the id,
                // so the rollout still shows once it has ended.
                target = frame["id"].as_str().map(str::to_string);
                frame["open"] != true
            }
            None => frame["rollouts"].as_array().is_none_or(Vec::is_empty),
        };
        let text = match remote.output {
            Output::Json if watch => format!("{frame}\n"),
            Output::Json => format!("{}\n", serde_json::to_string_pretty(&frame)?),
            Output::Text if target.is_some() => rollout_details(&frame)?,
            Output::Text => rollout_table(&frame),
        };
        let mut stdout = std::io::stdout().lock();
        if redraw {
            write!(stdout, "\x1b[2J\x1b[H")?;
        }
        write!(stdout, "{text}")?;
        if watch && remote.output == Output::Text {
            match (&target, finished) {
                (Some(_), true) => writeln!(
                    stdout,
                    "ended: {}",
                    frame["phase"].as_str().unwrap_or("?").replace('_', " ")
                )?,
                (None, true) => {}
                _ if !redraw => writeln!(stdout)?,
                _ => {}
            }
        }
        stdout.flush()?;
        if !watch || finished {
            break;
        }
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = &mut interrupted => break,
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A share of traffic or a rate, in percent: `5.00%`.
fn percent(value: f64) -> String {
    format!("{value:.2}%")
}

/// A span for people: `850ms`, `12.5s`, `2m05s`, `1h30m`.
fn span(ms: u64) -> String {
    match ms {
        0..1_000 => format!("{ms}ms"),
        1_000..60_000 => format!("{:.1}s", ms as f64 / 1000.0),
        60_000..3_600_000 => format!("{}m{:02}s", ms / 60_000, ms % 60_000 / 1000),
        _ => format!("{}h{:02}m", ms / 3_600_000, ms % 3_600_000 / 60_000),
    }
}

/// An e-value, readable however large it grows.
fn evidence(e_value: f64) -> String {
    if e_value >= 1e6 {
        format!("{e_value:.1e}")
    } else {
        format!("{e_value:.1}")
    }
}

/// The rollout as `rollout status ID` shows it.
fn rollout_details(view: &Value) -> anyhow::Result<String> {
    use backstop_core::analysis::trigger::TriggerState;
    use backstop_core::controller::{describe, PauseReason, Phase, Status};
    use std::fmt::Write;
    let status: Status =
        serde_json::from_value(view.clone()).context("the rollout's JSON is not as expected")?;
    let mut out = String::new();
    writeln!(out, "{}, {}", rollout_name(view), status.strategy)?;
    writeln!(out, "phase      {}", status.phase.name().replace('_', " "))?;
    if let Some(reason) = &status.paused_by {
        let why = match reason {
            PauseReason::Operator => "an operator".to_string(),
            PauseReason::Trigger(i) => match status.triggers.get(*i) {
                Some(trigger) => format!("trigger {}: {}", i + 1, trigger.rule),
                None => format!("trigger {}", i + 1),
            },
            PauseReason::Restart => "a restart (traffic on the baseline until resumed)".to_string(),
        };
        writeln!(out, "paused by  {why}")?;
    }
    let mut traffic = format!("candidate {}", percent(status.candidate_percent));
    if status.shadow_percent > 0.0 {
        write!(traffic, ", shadow {}", percent(status.shadow_percent))?;
    }
    writeln!(
        out,
        "stage      {}/{}, {traffic}",
        status.stage + 1,
        status.stages
    )?;
    if status.phase.is_final() {
        writeln!(out, "stage held {}", span(status.stage_elapsed_ms))?;
    } else {
        writeln!(
            out,
            "stage held {} of {}{}",
            span(status.stage_elapsed_ms),
            span(status.stage_hold_ms),
            if status.waiting_for_traffic {
                ", waiting for traffic"
            } else {
                ""
            }
        )?;
    }
    if let Some(ramp) = &status.ramp {
        let steps: Vec<String> = ramp.steps.iter().map(|s| percent(*s)).collect();
        writeln!(
            out,
            "ramp       graduated rollback, step {}/{} ({}), held {} of {}; baseline {} requests since it began",
            ramp.step + 1,
            ramp.steps.len(),
            steps.join(" → "),
            span(ramp.step_elapsed_ms),
            span(ramp.hold_ms),
            ramp.baseline_requests
        )?;
    }
    let rows: Vec<[String; 7]> = status
        .triggers
        .iter()
        .map(|t| {
            [
                t.rule.clone(),
                t.unit.show(t.candidate_value),
                t.unit.show(t.baseline_value),
                t.unit.show(t.limit),
                match t.state {
                    TriggerState::WaitingForTraffic => "waiting for traffic",
                    TriggerState::Ok => "ok",
                    TriggerState::Breaching => "breaching",
                    TriggerState::Fired => "fired",
                    TriggerState::Unavailable => "unavailable",
                }
                .to_string(),
                format!("{} / {}", evidence(t.e_value), evidence(t.e_value_needed)),
                format!("{} vs {}", t.candidate_requests, t.baseline_requests),
            ]
        })
        .collect();
    let header = [
        "TRIGGER",
        "CANDIDATE",
        "BASELINE",
        "LIMIT",
        "STATE",
        "E-VALUE / NEEDED",
        "REQUESTS (CANDIDATE VS BASELINE)",
    ]
    .map(str::to_string);
    table(&mut out, &header, &rows)?;
    if let Some(verdict) = &status.verdict {
        let what = if status.phase == Phase::Rejected {
            "rejected"
        } else {
            "rolled back"
        };
        write!(
            out,
            "verdict    {what} by {} at stage {} ({})",
            verdict.by,
            verdict.stage + 1,
            percent(verdict.candidate_percent)
        )?;
        if let Some(ms) = verdict.detection_ms {
            write!(out, ", {} after the candidate's first request", span(ms))?;
        }
        writeln!(out)?;
        if let Some(trigger) = &verdict.trigger {
            writeln!(out, "           {}", describe(trigger))?;
        }
    }
    let timing = &view["rollback_timing"];
    if let Some(swap_us) = timing["verdict_to_swap_us"].as_f64() {
        write!(
            out,
            "rollback   baseline routed {swap_us:.1} µs after the verdict"
        )?;
        if let Some(first_us) = timing["swap_to_first_request_us"].as_f64() {
            write!(out, ", first request on it {first_us:.1} µs later")?;
        }
        writeln!(out)?;
    }
    Ok(out)
}

/// Rollouts one per line, as `rollout list` and `rollout status` without
/// an id show them.
fn rollout_table(listed: &Value) -> String {
    let rollouts = listed["rollouts"].as_array().cloned().unwrap_or_default();
    if rollouts.is_empty() {
        return "no rollouts\n".to_string();
    }
    let text = |v: &Value| v.as_str().unwrap_or("").to_string();
    let rows: Vec<[String; 7]> = rollouts
        .iter()
        .map(|r| {
            [
                text(&r["id"]),
                text(&r["model"]),
                format!("{} vs {}", text(&r["candidate"]), text(&r["baseline"])),
                text(&r["strategy"]),
                text(&r["phase"]),
                format!(
                    "{}/{}",
                    r["stage"].as_u64().unwrap_or(0) + 1,
                    r["stages"].as_u64().unwrap_or(0)
                ),
                percent(r["candidate_percent"].as_f64().unwrap_or(0.0)),
            ]
        })
        .collect();
    let header = [
        "ID",
        "MODEL",
        "CANDIDATE VS BASELINE",
        "STRATEGY",
        "PHASE",
        "STAGE",
        "CANDIDATE",
    ]
    .map(str::to_string);
    let mut out = String::new();
    let _ = table(&mut out, &header, &rows);
    out
}

/// Left-aligned columns as wide as their widest cell.
fn table<const N: usize>(
    out: &mut String,
    header: &[String; N],
    rows: &[[String; N]],
) -> std::fmt::Result {
    use std::fmt::Write;
    let mut widths = header.clone().map(|h| h.chars().count());
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    for row in std::iter::once(header).chain(rows) {
        let mut line = String::new();
        for (cell, width) in row.iter().zip(widths) {
            write!(line, "{cell:<width$}  ")?;
        }
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}

/// `backstop runbook MODEL`.
#[derive(Args, Debug)]
pub struct RunbookArgs {
    /// The model; its open rollout's policy, else its latest rollout's.
    pub model: String,
    /// Render from this policy file instead of the model's rollout on the server.
    #[arg(long)]
    pub policy: Option<PathBuf>,
}

/// `backstop gameday MODEL --fault ...`.
#[derive(Args, Debug)]
pub struct GamedayArgs {
    /// The model; its open rollout's policy, else its latest rollout's.
    pub model: String,
    /// What goes wrong with the candidate: latency ×3 (at least), +10pp
    /// server errors, or +10pp timeouts, from its first request.
    #[arg(long, value_enum)]
    pub fault: crate::gameday::Fault,
    /// Rehearse with this policy file instead of the model's rollout on the server.
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// Simulated rollouts with the fault (and as many healthy control runs).
    #[arg(long, default_value_t = 200)]
    pub runs: usize,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Target: every faulty run rolled back within this, at p95.
    #[arg(long, default_value = "15s", value_parser = detect_target)]
    pub detect_within: std::time::Duration,
    /// Simulated requests per second (baseline and candidate together).
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// Rehearse on the live system: the gateway injects the fault into the
    /// model's rehearsal version (`rehearsal: true` in its routing table),
    /// a rollout of it runs under the policy, and the fault is cleared at
    /// the end. Needs live traffic on the model.
    #[arg(long)]
    pub live: bool,
    /// With --live: the rehearsal version (default: the model's only one).
    #[arg(long, requires = "live")]
    pub rehearsal: Option<String>,
    /// With --live: give up (abort the rollout, clear the fault) after this.
    #[arg(long, default_value = "5m", value_parser = detect_target)]
    pub timeout: std::time::Duration,
}

fn detect_target(text: &str) -> Result<std::time::Duration, String> {
    let period: backstop_core::policy::Period = text.parse()?;
    if period.as_ms() == 0 {
        return Err("must be longer than 0s".into());
    }
    Ok(std::time::Duration::from_millis(period.as_ms()))
}

/// Where a command's policy comes from.
enum PolicySource {
    Found(Box<backstop_core::policy::Policy>, String),
    /// A policy file that cannot be used: reported, exit 2.
    BadFile(ExitCode),
}

/// The policy `file` names, or the policy of `model`'s open rollout (else
/// its latest) from the admin API; with where it came from, in words.
async fn model_policy(
    model: &str,
    file: Option<&std::path::Path>,
    remote: &Remote,
) -> anyhow::Result<PolicySource> {
    if let Some(file) = file {
        let name = file.display().to_string();
        return Ok(match crate::policy::load(file) {
            Ok(policy) => PolicySource::Found(Box::new(policy), format!("file {name}")),
            Err(error) => {
                print_policy_error(remote.output, &name, &error)?;
                PolicySource::BadFile(ExitCode::from(2))
            }
        });
    }
    let api = Api::new(remote);
    let path = format!("/api/v1/rollouts/{}", query_value(model));
    let answer = api.json(Method::GET, &path, None).await?;
    if answer.status == StatusCode::NOT_FOUND {
        anyhow::bail!(
            "model {model:?} has no rollout on {}: pass --policy FILE to use a policy file",
            remote.admin
        );
    }
    let view = ok(answer)?;
    let id = view["id"].as_str().unwrap_or("?").to_string();
    let policy = view.get("policy").cloned().ok_or_else(|| {
        anyhow!("the server's answer for rollout {id} has no policy (a server older than this CLI?): pass --policy FILE")
    })?;
    let policy: backstop_core::policy::Policy = serde_json::from_value(policy)
        .map_err(|e| anyhow!("the policy of rollout {id} is unreadable: {e}"))?;
    policy
        .check()
        .map_err(|e| anyhow!("the policy of rollout {id} is not valid: {e}"))?;
    let state = if view["open"].as_bool() == Some(true) {
        "open"
    } else {
        "latest, closed"
    };
    Ok(PolicySource::Found(
        Box::new(policy),
        format!(
            "rollout {id} ({state}, phase {}) on {}",
            view["phase"].as_str().unwrap_or("?"),
            remote.admin
        ),
    ))
}

pub async fn runbook(args: RunbookArgs, remote: &Remote) -> anyhow::Result<ExitCode> {
    let (policy, source) = match model_policy(&args.model, args.policy.as_deref(), remote).await? {
        PolicySource::Found(policy, source) => (*policy, source),
        PolicySource::BadFile(code) => return Ok(code),
    };
    let admin = crate::runbook::Admin { url: &remote.admin };
    let runbook = crate::runbook::build(&args.model, &policy, &source, &admin);
    match remote.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&runbook)?),
        Output::Text => print!("{}", crate::runbook::render_markdown(&runbook)),
    }
    Ok(ExitCode::SUCCESS)
}

/// Exit 0 when the rehearsal passed, 1 when not (as `backstop demo`).
pub async fn gameday(args: GamedayArgs, remote: &Remote) -> anyhow::Result<ExitCode> {
    if args.live {
        return gameday_live(args, remote).await;
    }
    let (policy, source) = match model_policy(&args.model, args.policy.as_deref(), remote).await? {
        PolicySource::Found(policy, source) => (*policy, source),
        PolicySource::BadFile(code) => return Ok(code),
    };
    let options = crate::gameday::GamedayOptions {
        fault: args.fault,
        runs: args.runs,
        seed: args.seed,
        detect_within_s: args.detect_within.as_secs_f64(),
        rate_per_s: args.rate,
    };
    let model = args.model;
    let report = tokio::task::spawn_blocking(move || {
        crate::gameday::run(&model, &policy, &source, &options)
    })
    .await
    .map_err(|e| anyhow!("the rehearsal failed: {e}"))??;
    match remote.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Output::Text => print!("{}", crate::gameday::render_text(&report)),
    }
    Ok(if report.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// How often a live rehearsal polls its rollout.
const GAMEDAY_POLL: std::time::Duration = std::time::Duration::from_millis(100);

/// What the watch of a live rehearsal's rollout saw.
#[derive(Default)]
struct LiveWatch {
    id: Option<String>,
    view: Option<Value>,
    timed_out: bool,
}

/// `backstop gameday MODEL --live`: fault on the rehearsal version, a
/// rollout of it under the policy, and the fault cleared whatever happens.
async fn gameday_live(args: GamedayArgs, remote: &Remote) -> anyhow::Result<ExitCode> {
    use backstop_core::controller::strategy_name;
    let started = std::time::Instant::now();
    let api = Api::new(remote);
    let model = args.model.clone();
    let m = query_value(&model);
    let routes = ok(api
        .json(Method::GET, &format!("/api/v1/models/{m}/routes"), None)
        .await?)?;
    let versions = routes["spec"]["versions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let name_of = |v: &Value| v["name"].as_str().unwrap_or_default().to_string();
    let rehearsals: Vec<String> = versions
        .iter()
        .filter(|v| v["rehearsal"].as_bool() == Some(true))
        .map(name_of)
        .collect();
    let rehearsal = match &args.rehearsal {
        Some(name) => {
            if !versions.iter().any(|v| &name_of(v) == name) {
                anyhow::bail!("{model} has no version {name:?} in its routing table");
            }
            if !rehearsals.contains(name) {
                anyhow::bail!(
                    "{model}/{name} is not a rehearsal version: mark it `rehearsal: true` in the routing table (it normally points at the last-known-good's upstreams)"
                );
            }
            name.clone()
        }
        None => match rehearsals.as_slice() {
            [one] => one.clone(),
            [] => anyhow::bail!(
                "{model} has no rehearsal version: add one with `rehearsal: true` (weight 0, the last-known-good's endpoints) to its routing table"
            ),
            many => anyhow::bail!(
                "{model} has several rehearsal versions ({}): pick one with --rehearsal",
                many.join(", ")
            ),
        },
    };
    let request_timeout_ms = routes["spec"]["timeouts"]["request_ms"]
        .as_u64()
        .unwrap_or(10_000);

    let (mut policy, source) = match model_policy(&model, args.policy.as_deref(), remote).await? {
        PolicySource::Found(policy, source) => (*policy, source),
        PolicySource::BadFile(code) => return Ok(code),
    };
    if policy.model != model {
        anyhow::bail!("the policy is for model {:?}, not {model:?}", policy.model);
    }
    // The same plan, aimed at the rehearsal version; the baseline is
    // resolved by the gateway now (the current last-known-good).
    let old = std::mem::replace(&mut policy.candidate, rehearsal.clone());
    for cohort in &mut policy.cohorts {
        if cohort.version == old {
            cohort.version = rehearsal.clone();
        }
    }
    policy.baseline = None;
    let mut notes = Vec::new();
    if args.policy.is_none() && (!policy.hooks.is_empty() || !policy.notify.is_empty()) {
        // The server's copy has webhook addresses and hook headers redacted.
        policy.hooks.clear();
        policy.notify.clear();
        notes.push("Hooks and notifications were left out: the server's copy of the policy has their addresses redacted. Pass --policy FILE to rehearse them too.".into());
    }
    policy
        .check()
        .map_err(|e| anyhow!("the rehearsal policy is not valid: {e}"))?;
    let open = ok(api
        .json(
            Method::GET,
            &format!("/api/v1/rollouts?model={m}&open=true"),
            None,
        )
        .await?)?;
    let open_ids: Vec<String> = open
        .as_array()
        .or_else(|| open["rollouts"].as_array())
        .map(|a| {
            a.iter()
                .filter_map(|r| r["id"].as_str())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default();
    if let Some(id) = open_ids.first() {
        anyhow::bail!(
            "{model} has an open rollout {id}: a rehearsal needs the model to itself; let it finish or abort it first"
        );
    }
    let baseline_ms = if args.fault == crate::gameday::Fault::Latency {
        baseline_latency_ms(&api, &m, &routes).await
    } else {
        None
    };
    let (injected, fault_detail) =
        crate::gameday::live_fault(args.fault, &policy, baseline_ms, request_timeout_ms);

    let fault_path = format!(
        "/api/v1/models/{m}/versions/{}/fault",
        query_value(&rehearsal)
    );
    ok(api
        .json(
            Method::PUT,
            &fault_path,
            Some(serde_json::to_value(injected)?),
        )
        .await?)?;
    if remote.output == Output::Text {
        eprintln!("backstop: fault set on {model}/{rehearsal}: {fault_detail}; rollout starting (Ctrl-C aborts and clears the fault)");
    }

    let watch = std::sync::Mutex::new(LiveWatch::default());
    let result = tokio::select! {
        result = live_rollout(&api, &policy, args.timeout, &watch) => result,
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
    };
    let watch = watch.into_inner().unwrap_or_else(|e| e.into_inner());
    let mut aborted = false;
    // A rollout left open (timeout, interrupt, a pause) goes back to the
    // baseline; the rehearsal version never becomes the new normal.
    if let Some(id) = &watch.id {
        let still_open = watch
            .view
            .as_ref()
            .is_none_or(|v| v["open"].as_bool() != Some(false));
        if still_open {
            let path = format!("/api/v1/rollouts/{}/abort", query_value(id));
            aborted =
                matches!(api.json(Method::POST, &path, None).await, Ok(a) if a.status.is_success());
        }
    }
    let mut fault_cleared = false;
    for _ in 0..3 {
        if let Ok(answer) = api.json(Method::DELETE, &fault_path, None).await {
            if answer.status.is_success() {
                fault_cleared = true;
                break;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    if let Err(error) = result {
        if !fault_cleared {
            eprintln!("backstop: the fault on {model}/{rehearsal} could not be cleared: DELETE {fault_path}");
        }
        return Err(error.context(format!(
            "gameday on {model}/{rehearsal} stopped{}{}",
            if aborted {
                "; its rollout was aborted"
            } else {
                ""
            },
            if fault_cleared {
                "; the fault is cleared"
            } else {
                ""
            }
        )));
    }

    let view = watch.view.unwrap_or(Value::Null);
    let phase = view["phase"].as_str().map(String::from);
    let rolled_back = matches!(phase.as_deref(), Some("rolled_back" | "rejected"))
        && view["verdict"]["by"].as_str() == Some("trigger");
    let mut report = crate::gameday::LiveReport {
        mode: "live".into(),
        model: model.clone(),
        policy_source: source,
        strategy: strategy_name(&policy.strategy).into(),
        fault: args.fault,
        fault_detail,
        injected,
        rehearsal,
        baseline: view["baseline"].as_str().map(String::from),
        rollout: watch.id,
        phase,
        rolled_back,
        detection_s: view["verdict"]["detection_ms"]
            .as_f64()
            .map(|ms| ms / 1000.0),
        verdict_to_swap_us: view["rollback_timing"]["verdict_to_swap_us"].as_f64(),
        trigger: view["verdict"]["trigger"]["rule"]
            .as_str()
            .map(String::from),
        incident: view["incident"].as_str().map(String::from),
        target_detect_s: args.detect_within.as_secs_f64(),
        waiting_for_traffic: view["waiting_for_traffic"].as_bool() == Some(true),
        candidate_requests: view["triggers"].as_array().and_then(|t| {
            t.iter()
                .filter_map(|t| t["candidate_requests"].as_u64())
                .max()
        }),
        timed_out: watch.timed_out,
        aborted,
        fault_cleared,
        catching_triggers: crate::gameday::catching_rules(&policy, args.fault),
        passed: false,
        reasons: Vec::new(),
        notes,
        elapsed_s: started.elapsed().as_secs_f64(),
    };
    report.judge();
    match remote.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Output::Text => print!("{}", crate::gameday::render_live_text(&report)),
    }
    Ok(if report.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Starts the rehearsal's rollout and watches it until it closes, stops
/// for a human (paused, awaiting approval) or `timeout` runs out.
async fn live_rollout(
    api: &Api,
    policy: &backstop_core::policy::Policy,
    timeout: std::time::Duration,
    watch: &std::sync::Mutex<LiveWatch>,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    // JSON is YAML: the gateway parses it as it would a policy file.
    let body = json!({
        "policy": serde_json::to_string(policy)?,
        "file": "gameday",
        "force": true,
    });
    let view = ok(api
        .json(Method::POST, "/api/v1/rollouts", Some(body))
        .await?)?;
    let id = view["id"]
        .as_str()
        .ok_or_else(|| anyhow!("the gateway's answer has no rollout id"))?
        .to_string();
    let set = |view: Value| {
        let mut w = watch.lock().unwrap_or_else(|e| e.into_inner());
        w.view = Some(view);
    };
    {
        let mut w = watch.lock().unwrap_or_else(|e| e.into_inner());
        w.id = Some(id.clone());
    }
    set(view);
    let path = format!("/api/v1/rollouts/{}", query_value(&id));
    loop {
        tokio::time::sleep(GAMEDAY_POLL).await;
        let view = ok(api.json(Method::GET, &path, None).await?)?;
        let open = view["open"].as_bool() != Some(false);
        let phase = view["phase"].as_str().unwrap_or_default().to_string();
        let incident_pending = !open && phase == "rolled_back" && view["incident"].is_null();
        set(view);
        if !open {
            // The incident is opened just after the swap: give it a moment.
            if incident_pending && tokio::time::Instant::now() + GAMEDAY_POLL < deadline {
                for _ in 0..10 {
                    tokio::time::sleep(GAMEDAY_POLL).await;
                    let view = ok(api.json(Method::GET, &path, None).await?)?;
                    let done = !view["incident"].is_null();
                    set(view);
                    if done {
                        break;
                    }
                }
            }
            return Ok(());
        }
        if phase == "paused" || phase == "awaiting_approval" {
            // The plan stopped for a human rather than rolling back.
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            watch.lock().unwrap_or_else(|e| e.into_inner()).timed_out = true;
            return Ok(());
        }
    }
}

/// The baseline's p50/p95/p99 over the last minute, milliseconds: what the
/// latency fault is sized from. The baseline is the version taking most
/// traffic now.
async fn baseline_latency_ms(api: &Api, m: &str, routes: &Value) -> Option<(f64, f64, f64)> {
    let baseline = routes["spec"]["versions"]
        .as_array()?
        .iter()
        .max_by_key(|v| v["weight"].as_u64().unwrap_or(0))?["name"]
        .as_str()?
        .to_string();
    let stats = api
        .json(
            Method::GET,
            &format!("/api/v1/models/{m}/stats?window_ms=60000"),
            None,
        )
        .await
        .ok()?;
    let window = stats
        .json
        .get("versions")
        .unwrap_or(&stats.json)
        .get(&baseline)?;
    let ms = |key: &str| window[key].as_f64().map(|us| us / 1000.0);
    Some((ms("p50_us")?, ms("p95_us")?, ms("p99_us")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view() -> Value {
        json!({
            "id": "ro-1", "model": "m", "candidate": "v2", "baseline": "v1",
            "strategy": "canary", "phase": "rolled_back", "stage": 1, "stages": 3,
            "candidate_percent": 0.0, "shadow_percent": 0.0,
            "stage_elapsed_ms": 72_000, "stage_hold_ms": 120_000,
            "waiting_for_traffic": false,
            "triggers": [{
                "index": 0, "rule": "latency_p95 above +30% vs baseline",
                "metric": "latency_p95", "unit": "ms",
                "candidate_value": 41.234, "baseline_value": 20.1, "limit": 26.9,
                "candidate_requests": 412, "baseline_requests": 7803,
                "e_value": 312.0, "e_value_needed": 300.0, "state": "fired"
            }, {
                "index": 1, "rule": "error_rate above 5%",
                "metric": "error_rate", "unit": "ratio",
                "candidate_value": 0.0123, "baseline_value": null, "limit": 0.05,
                "candidate_requests": 412, "baseline_requests": 7803,
                "e_value": 0.5, "e_value_needed": 200.0, "state": "ok"
            }],
            "verdict": {
                "at_ms": 5, "by": "trigger", "detection_ms": 41_000, "stage": 1,
                "candidate_percent": 5.0, "window_from_ms": 1, "window_to_ms": 5,
                "trigger": {
                    "index": 0, "rule": "latency_p95 above +30% vs baseline",
                    "metric": "latency_p95", "unit": "ms",
                    "candidate_value": 41.2, "baseline_value": 20.1, "limit": 26.9,
                    "candidate_requests": 412, "baseline_requests": 7803,
                    "e_value": 312.0, "e_value_needed": 300.0, "state": "fired"
                }
            },
            "open": false, "created_unix_ms": 1, "updated_unix_ms": 5,
            "rollback_timing": {"verdict_to_swap_us": 12.34, "swap_to_first_request_us": 980.0}
        })
    }

    #[test]
    fn status_shows_each_trigger_in_its_unit_and_the_verdict() {
        let text = rollout_details(&view()).unwrap();
        for expected in [
            "ro-1 (m: v2 vs baseline v1), canary",
            "phase      rolled back",
            "stage      2/3, candidate 0.00%",
            "stage held 1m12s\n",
            "41.2 ms",
            "1.23%",
            "5.00%",
            "312.0 / 300.0",
            "412 vs 7803",
            "fired",
            "verdict    rolled back by trigger at stage 2 (5.00%), 41.0s after",
            "e-value 312 ≥ 300",
            "baseline routed 12.3 µs after the verdict, first request on it 980.0 µs later",
        ] {
            assert!(text.contains(expected), "{expected:?} in\n{text}");
        }
        let rows: Vec<&str> = text.lines().filter(|l| l.ends_with(" vs 7803")).collect();
        assert_eq!(rows.len(), 2, "{text}");
        assert_eq!(
            rows[0].find("41.2 ms"),
            rows[1].find("1.23%"),
            "columns line up:\n{text}"
        );
    }

    #[test]
    fn an_open_rollout_shows_its_hold_and_waiting() {
        let mut view = view();
        view["phase"] = json!("paused");
        view["paused_by"] = json!("operator");
        view["open"] = json!(true);
        view["waiting_for_traffic"] = json!(true);
        view["shadow_percent"] = json!(10.0);
        view["verdict"] = Value::Null;
        view["rollback_timing"] = Value::Null;
        let text = rollout_details(&view).unwrap();
        assert!(text.contains("paused by  an operator"), "{text}");
        assert!(text.contains(", shadow 10.00%"), "{text}");
        assert!(
            text.contains("stage held 1m12s of 2m00s, waiting for traffic"),
            "{text}"
        );
        assert!(!text.contains("verdict"), "{text}");
    }

    #[test]
    fn lists_are_tables() {
        let text = rollout_table(&json!({ "rollouts": [view()] }));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[0].starts_with("ID  "), "{text}");
        assert!(
            lines[1].contains("v2 vs v1") && lines[1].contains("rolled_back"),
            "{text}"
        );
        assert_eq!(rollout_table(&json!({ "rollouts": [] })), "no rollouts\n");
    }

    #[test]
    fn spans_and_intervals() {
        assert_eq!(span(850), "850ms");
        assert_eq!(span(12_500), "12.5s");
        assert_eq!(span(125_000), "2m05s");
        assert_eq!(span(5_400_000), "1h30m");
        assert_eq!(watch_interval("1s"), Ok(std::time::Duration::from_secs(1)));
        assert!(watch_interval("50ms").is_err());
        assert!(watch_interval("1").is_err());
    }
}

#[derive(Subcommand, Debug)]
pub enum IncidentCommand {
    /// List incidents, newest first.
    #[command(
        after_help = "Example:\n  backstop incident list --model fraud-scorer --output json"
    )]
    List {
        #[arg(long)]
        model: Option<String>,
    },
    /// Show one incident: the verdict and its numbers, the timeline,
    /// recovery, notifications, hooks and the evidence kept.
    #[command(after_help = "Example:\n  backstop incident show inc-3f9a0c1b2e7d")]
    Show {
        /// Incident id (`inc-...`).
        incident: String,
    },
    /// Write everything for the postmortem to one JSON file: the incident
    /// with its frozen evidence and the audit entries of its rollout.
    #[command(
        after_help = "Examples:\n  backstop incident export inc-3f9a0c1b2e7d                   # writes inc-3f9a0c1b2e7d.json\n  backstop incident export inc-3f9a0c1b2e7d --file postmortem.json"
    )]
    Export {
        incident: String,
        /// Where to write it (default `<id>.json`; `-` for stdout).
        #[arg(long)]
        file: Option<PathBuf>,
    },
}

pub async fn incident(command: IncidentCommand, remote: &Remote) -> anyhow::Result<ExitCode> {
    let api = Api::new(remote);
    match command {
        IncidentCommand::List { model } => {
            let path = match model {
                Some(m) => format!("/api/v1/incidents?model={}", query_value(&m)),
                None => "/api/v1/incidents".to_string(),
            };
            let listed = ok(api.json(Method::GET, &path, None).await?)?;
            print(remote, &listed, |v| {
                let incidents = v["incidents"].as_array().cloned().unwrap_or_default();
                if incidents.is_empty() {
                    println!("no incidents");
                }
                for i in incidents {
                    println!(
                        "{}  {}  {:<8}  {:<13}  {}: {} → {}  {}",
                        i["id"].as_str().unwrap_or("?"),
                        unix_ms_text(i["opened_unix_ms"].as_u64().unwrap_or(0)),
                        i["severity"].as_str().unwrap_or("?"),
                        i["state"].as_str().unwrap_or("?"),
                        i["model"].as_str().unwrap_or("?"),
                        i["candidate"].as_str().unwrap_or("?"),
                        i["baseline"].as_str().unwrap_or("?"),
                        i["trigger"].as_str().unwrap_or("")
                    );
                }
            });
        }
        IncidentCommand::Show { incident } => {
            let path = format!("/api/v1/incidents/{}", query_value(&incident));
            let view = ok(api.json(Method::GET, &path, None).await?)?;
            print(remote, &view, |v| print!("{}", incident_text(v)));
        }
        IncidentCommand::Export { incident, file } => {
            let path = format!("/api/v1/incidents/{}/export", query_value(&incident));
            let export = ok(api.json(Method::GET, &path, None).await?)?;
            let text = serde_json::to_string_pretty(&export)?;
            let file = file.unwrap_or_else(|| PathBuf::from(format!("{incident}.json")));
            if file.as_os_str() == "-" {
                println!("{text}");
            } else {
                std::fs::write(&file, format!("{text}\n"))
                    .with_context(|| format!("writing {}", file.display()))?;
                match remote.output {
                    Output::Json => println!("{}", json!({"file": file, "bytes": text.len() + 1})),
                    Output::Text => println!("wrote {} ({} bytes)", file.display(), text.len() + 1),
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `2026-11-23T07:31:17Z`.
fn unix_ms_text(ms: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
        .to_string()
}

/// One incident for people: what happened, in order, and what was kept.
fn incident_text(v: &Value) -> String {
    use std::fmt::Write as _;
    let e = &v["evidence"];
    let mut out = String::new();
    let s = |v: &Value| v.as_str().unwrap_or("?").to_string();
    let _ = writeln!(
        out,
        "incident {} ({}, {}): {} of {} rolled back to {}",
        s(&v["id"]),
        s(&v["severity"]),
        s(&v["state"]).replace('_', " "),
        s(&e["candidate"]["version"]),
        s(&v["model"]),
        s(&e["baseline"]["version"])
    );
    let trigger = &e["verdict"]["trigger"];
    if trigger.is_object() {
        let _ = writeln!(
            out,
            "  trigger   {}: candidate {} vs baseline {} (limit {}), e-value {:.0} ≥ {:.0}",
            s(&trigger["rule"]),
            trigger["candidate_value"],
            trigger["baseline_value"],
            trigger["limit"],
            trigger["e_value"].as_f64().unwrap_or(0.0),
            trigger["e_value_needed"].as_f64().unwrap_or(0.0)
        );
    } else {
        let _ = writeln!(out, "  trigger   operator rollback by {}", s(&e["actor"]));
    }
    let _ = writeln!(
        out,
        "  swap      {} ({:.0} µs after the verdict); candidate had {}% of traffic",
        if e["swap"]["ok"].as_bool() == Some(true) {
            "done"
        } else {
            "FAILED"
        },
        e["swap"]["verdict_to_swap_us"].as_f64().unwrap_or(0.0),
        e["verdict"]["candidate_percent"]
    );
    for (name, side) in [("candidate", "candidate"), ("baseline", "baseline")] {
        let m = &e["metrics"][side];
        let _ = writeln!(
            out,
            "  {name:<9} {} requests, error rate {}, p95 {} ms over the trigger window",
            m["requests"],
            m["error_rate"]
                .as_f64()
                .map_or("-".into(), |r| format!("{:.2}%", r * 100.0)),
            m["p95_ms"]
                .as_f64()
                .map_or("-".into(), |p| format!("{p:.1}"))
        );
    }
    let _ = writeln!(out, "timeline");
    for entry in v["timeline"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "  {}  {:<20} {}",
            unix_ms_text(entry["at_unix_ms"].as_u64().unwrap_or(0)),
            s(&entry["what"]),
            s(&entry["detail"])
        );
    }
    match v["verification"].as_object() {
        Some(check) => {
            let _ = writeln!(
                out,
                "verification: {} ({})",
                check["state"].as_str().unwrap_or("?").replace('_', " "),
                check["reasons"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join("; ")
            );
        }
        None => {
            let _ = writeln!(out, "verification: pending");
        }
    }
    let notifications = v["notifications"].as_array().cloned().unwrap_or_default();
    let _ = writeln!(out, "notifications: {}", notifications.len());
    for n in notifications {
        let _ = writeln!(
            out,
            "  {:<24} {:<12} {:<10} {} attempt(s){}",
            s(&n["kind"]),
            s(&n["receiver"]),
            s(&n["state"]),
            n["attempts"],
            n["last_error"]
                .as_str()
                .map(|e| format!(", last error: {e}"))
                .unwrap_or_default()
        );
    }
    for h in v["hooks"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "hook {}: {} after {} attempt(s){}",
            s(&h["name"]),
            if h["ok"].as_bool() == Some(true) {
                "ok"
            } else {
                "FAILED"
            },
            h["attempts"],
            h["error"]
                .as_str()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default()
        );
    }
    let count = |side: &str| e["samples"][side].as_array().map_or(0, Vec::len);
    let _ = writeln!(
        out,
        "evidence: {} candidate and {} baseline samples (redacted: {}; hashed: {}), pinned: {}, sha256 {}",
        count("candidate"),
        count("baseline"),
        e["samples"]["redacted"],
        e["samples"]["hashed"],
        e["pinned"],
        s(&v["evidence_sha256"])
    );
    out
}

/// `backstop report`: the rollback figures (M1–M10).
pub async fn report(model: Option<String>, remote: &Remote) -> anyhow::Result<ExitCode> {
    let path = match model {
        Some(m) => format!("/api/v1/report?model={}", query_value(&m)),
        None => "/api/v1/report".to_string(),
    };
    let report = ok(Api::new(remote).json(Method::GET, &path, None).await?)?;
    print(remote, &report, |r| {
        let mut rows = vec![r["overall"].clone()];
        rows.extend(r["models"].as_array().cloned().unwrap_or_default());
        let dist = |d: &Value, unit: &str| match (d["p50"].as_f64(), d["max"].as_f64()) {
            (Some(p50), Some(max)) => format!("p50 {p50:.1}{unit}, max {max:.1}{unit}"),
            _ => "-".to_string(),
        };
        let rate = |v: &Value| {
            v.as_f64()
                .map_or("-".into(), |r| format!("{:.1}%", r * 100.0))
        };
        for f in rows {
            let name = match f["model"].as_str() {
                Some("*") => "all models".to_string(),
                Some(m) => m.to_string(),
                None => "?".to_string(),
            };
            println!(
                "{name}: {} rollouts, {} rollbacks ({} verified)",
                f["rollouts"], f["rollbacks"], f["verified"]
            );
            println!(
                "  M1  time to detect          {}",
                dist(&f["time_to_detect_s"], " s")
            );
            println!(
                "  M2  verdict to swap         {}",
                dist(&f["verdict_to_swap_us"], " µs")
            );
            println!(
                "  M3  time to recovered       {}",
                dist(&f["time_to_recovered_s"], " s")
            );
            println!(
                "  M4  rollback success rate   {}",
                rate(&f["rollback_success_rate"])
            );
            println!(
                "  M5  false rollback rate     {}",
                rate(&f["false_rollback_rate"])
            );
            println!(
                "  M6  traffic moved back      {}",
                dist(&f["traffic_moved_percent"], "%")
            );
            println!(
                "  M7  post-rollback errors    {}",
                rate(&f["post_rollback_error_rate"])
            );
            println!(
                "  M8  audit completeness      {}",
                rate(&f["audit_completeness"])
            );
            let n = &f["notifications"];
            println!(
                "  M9  notifications           {} queued: {} delivered, {} pending, {} failed",
                n["queued"], n["delivered"], n["pending"], n["failed"]
            );
            println!(
                "  M10 rollbacks per rollout   {}",
                rate(&f["rollback_rate"])
            );
        }
        if r["audit_chain_ok"].as_bool() != Some(true) {
            println!("WARNING: the audit chain does not verify (`backstop audit verify`)");
        }
    });
    Ok(ExitCode::SUCCESS)
}
