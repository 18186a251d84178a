//! Shared test plumbing: start the real `backstop serve` binary on
//! ephemeral loopback ports, and talk to it over HTTP/1.1, h2c or TLS.

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A `backstop serve` child process, killed on drop.
pub struct Backstop {
    child: Child,
    pub data: SocketAddr,
    pub admin: SocketAddr,
    /// Its data directory (registry, tokens, audit log).
    pub data_dir: PathBuf,
    /// Everything it logged (stderr) so far.
    logs: Arc<Mutex<String>>,
    _dir: tempfile::TempDir,
}

impl Backstop {
    /// Starts the binary with `config` (YAML) and waits for its two
    /// "backstop listening" lines.
    pub fn start(config: &str) -> Backstop {
        Self::start_in(config, None, &[], &[])
    }

    /// Like [`Backstop::start`], with extra `serve` arguments and
    /// environment variables (which win over the default `RUST_LOG`).
    pub fn start_with(config: &str, args: &[&str], env: &[(&str, &str)]) -> Backstop {
        Self::start_in(config, None, args, env)
    }

    /// Like [`Backstop::start`], on a data directory the test chose (and
    /// perhaps prepared, e.g. with `backstop token create`).
    pub fn start_with_data_dir(config: &str, data_dir: &Path) -> Backstop {
        Self::start_in(config, Some(data_dir), &[], &[])
    }

    fn start_in(
        config: &str,
        data_dir: Option<&Path>,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Backstop {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("backstop.yaml");
        // Keep the registry's files in the test's own directory.
        let data_dir = data_dir.map_or_else(|| dir.path().join("data"), Path::to_path_buf);
        let config = format!("data_dir: \"{}\"\n{config}", data_dir.display());
        std::fs::write(&path, config).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_backstop"))
            .arg("serve")
            .arg("--config")
            .arg(&path)
            .env("RUST_LOG", "warn")
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting backstop");
        let logs = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("{line}");
                let mut logs = sink.lock().unwrap();
                logs.push_str(&line);
                logs.push('\n');
            }
        });
        let stdout = child.stdout.take().unwrap();
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = sender.send(line);
            }
        });
        let (mut data, mut admin) = (None, None);
        let deadline = Instant::now() + Duration::from_secs(30);
        while data.is_none() || admin.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = receiver
                .recv_timeout(left)
                .expect("backstop printed its listening addresses in time");
            let address = |prefix: &str| -> Option<SocketAddr> {
                let rest = line.strip_prefix(prefix)?;
                let rest = rest.split("://").nth(1)?;
                rest.parse().ok()
            };
            data = data.or_else(|| address("backstop listening: data="));
            admin = admin.or_else(|| address("backstop listening: admin="));
        }
        Backstop {
            child,
            data: data.unwrap(),
            admin: admin.unwrap(),
            data_dir,
            logs,
            _dir: dir,
        }
    }

    /// What it has logged so far.
    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.data)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Backstop {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    pub fn version(&self) -> Option<&str> {
        self.headers.get("x-backstop-version")?.to_str().ok()
    }

    pub fn error_code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }
}

/// A pooled HTTP client; `h2c` speaks HTTP/2 with prior knowledge.
#[derive(Clone)]
pub struct HttpClient {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl HttpClient {
    pub fn new() -> Self {
        Self {
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    pub fn h2c() -> Self {
        Self {
            client: Client::builder(TokioExecutor::new())
                .http2_only(true)
                .build_http(),
        }
    }

    pub async fn send(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Answer {
        let mut request = Request::builder().method(method).uri(url);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(Full::new(body.into())).unwrap();
        let response = tokio::time::timeout(Duration::from_secs(20), self.client.request(request))
            .await
            .expect("answered within 20 s")
            .expect("request sent");
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        Answer {
            status,
            headers,
            body,
        }
    }

    pub async fn get(&self, url: &str) -> Answer {
        self.send(Method::GET, url, &[], Bytes::new()).await
    }

    pub async fn infer(&self, url: &str, headers: &[(&str, &str)]) -> Answer {
        let mut all = vec![("content-type", "application/json")];
        all.extend_from_slice(headers);
        self.send(Method::POST, url, &all, INFER_BODY).await
    }

    /// Like [`HttpClient::infer`], but a failed connection or no answer
    /// within 20 s comes back as an error rather than a panic: for load
    /// loops that count such failures.
    pub async fn try_infer(&self, url: &str) -> Result<Answer, String> {
        let request = Request::builder()
            .method(Method::POST)
            .uri(url)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(INFER_BODY.as_bytes())))
            .map_err(|e| format!("building the request: {e}"))?;
        let response = tokio::time::timeout(Duration::from_secs(20), self.client.request(request))
            .await
            .map_err(|_| "no answer within 20 s".to_string())?
            .map_err(|e| format!("request failed: {e}"))?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("reading the body: {e}"))?
            .to_bytes();
        Ok(Answer {
            status,
            headers,
            body,
        })
    }

    pub async fn post_json(&self, url: &str, body: &serde_json::Value) -> Answer {
        self.send(
            Method::POST,
            url,
            &[("content-type", "application/json")],
            body.to_string(),
        )
        .await
    }

    pub async fn put_json(&self, url: &str, body: &serde_json::Value) -> Answer {
        self.send(
            Method::PUT,
            url,
            &[("content-type", "application/json")],
            body.to_string(),
        )
        .await
    }
}

pub const INFER_BODY: &str =
    r#"{"inputs":[{"name":"x","datatype":"FP32","shape":[1,4],"data":[1,2,3,4]}]}"#;

/// Polls `check` every 50 ms until it returns true or `limit` passes.
pub async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// A two-version config in front of the given upstream URLs.
pub fn two_versions(v1: &str, v2: &str, w1: u32, w2: u32, extra_model: &str) -> String {
    format!(
        r#"
listen: 127.0.0.1:0
admin: {{ listen: 127.0.0.1:0 }}
health: {{ interval_ms: 100, timeout_ms: 200, eject_after_failures: 3, eject_base_ms: 500 }}
pin: {{ allow_from: ["127.0.0.1/32"] }}
models:
  m:
    versions:
      - {{ name: v1, weight: {w1}, endpoints: ["{v1}"] }}
      - {{ name: v2, weight: {w2}, endpoints: ["{v2}"] }}
{extra_model}
"#
    )
}

/// A one-version config for model `m`: `top` is added at the top level and
/// `model` (indented by four spaces) under the model.
pub fn one_version(upstream: &str, top: &str, model: &str) -> String {
    format!(
        r#"
listen: 127.0.0.1:0
admin: {{ listen: 127.0.0.1:0 }}
{top}
models:
  m:
{model}
    versions:
      - {{ name: v1, weight: 1, endpoints: ["{upstream}"] }}
"#
    )
}

pub async fn toy(version: &str) -> backstop::toy::ToyServer {
    backstop::toy::ToyServer::start("127.0.0.1:0".parse().unwrap(), version)
        .await
        .unwrap()
}

/// Starts a toy server on an address a stopped one used; the old listener
/// closes asynchronously, so binding is retried for a few seconds.
pub async fn restart_toy(addr: SocketAddr, version: &str) -> backstop::toy::ToyServer {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match backstop::toy::ToyServer::start(addr, version).await {
            Ok(toy) => return toy,
            Err(error) if Instant::now() < deadline => {
                let _ = error;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(error) => panic!("rebinding {addr}: {error}"),
        }
    }
}
