//! The Prometheus source against a real Prometheus: the Debian package's
//! binary, started here on a loopback port, scraping the real gateway's
//! `/metrics` every second. Shapes a real server will not produce on
//! demand (an old sample, no answer, a huge answer) come from a canned
//! loopback server. Every wait is bounded; children are killed on drop.

use crate::util::*;
use backstop::config::PrometheusConfig;
use backstop::prometheus::{Prometheus, Reading, SourceError};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BINARY: &str = "/usr/bin/prometheus";

/// A Prometheus child process on a loopback port, killed on drop.
struct PrometheusServer {
    child: Child,
    url: String,
    dir: tempfile::TempDir,
}

impl PrometheusServer {
    /// Starts Prometheus scraping `target` every second and waits until it
    /// is ready. `None` (after a skip line) when the binary is missing and
    /// `BACKSTOP_SKIP_PROMETHEUS=1`; a missing binary otherwise fails.
    fn start(target: SocketAddr) -> Option<PrometheusServer> {
        if !Path::new(BINARY).exists() {
            if std::env::var("BACKSTOP_SKIP_PROMETHEUS").as_deref() == Ok("1") {
                eprintln!("skipped: {BINARY} is missing and BACKSTOP_SKIP_PROMETHEUS=1");
                return None;
            }
            panic!(
                "{BINARY} is missing: run scripts/test (it installs the Debian package \
                 `prometheus`), or set BACKSTOP_SKIP_PROMETHEUS=1 to skip this test"
            );
        }
        let mut dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global: {{ scrape_interval: 1s, scrape_timeout: 1s }}\n\
                 scrape_configs:\n  - job_name: backstop\n    static_configs:\n      - targets: [\"{target}\"]\n"
            ),
        )
        .unwrap();
        // The port is free when chosen but may be taken before Prometheus
        // binds it: a child that exits early is retried on another port.
        for _ in 0..3 {
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
            let child = Command::new(BINARY)
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .arg(format!("--config.file={}", config.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join("data").display()
                ))
                .arg("--log.level=warn")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("starting prometheus");
            let mut server = PrometheusServer {
                child,
                url: format!("http://127.0.0.1:{port}"),
                dir,
            };
            if server.wait_ready(Duration::from_secs(30)) {
                return Some(server);
            }
            if server.child.try_wait().unwrap().is_none() {
                panic!("prometheus not ready within 30 s:\n{}", server.log());
            }
            eprintln!("prometheus exited early, retrying:\n{}", server.log());
            // Keep the directory, let the child go.
            dir = std::mem::replace(&mut server.dir, tempfile::tempdir().unwrap());
        }
        panic!("prometheus did not start in three tries");
    }

    /// Polls `/-/ready` until 200; false when the child exits or time runs out.
    fn wait_ready(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let address = self.url.trim_start_matches("http://").to_string();
        while Instant::now() < deadline {
            if self.child.try_wait().unwrap().is_some() {
                return false;
            }
            if ready(&address) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for PrometheusServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One blocking `GET /-/ready`, true on a 200.
fn ready(address: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(address) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let request = format!("GET /-/ready HTTP/1.1\r\nhost: {address}\r\nconnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && head.ends_with(b" 200")
}

fn source(url: &str, timeout_ms: u64) -> Prometheus {
    Prometheus::new(&PrometheusConfig {
        url: url.to_string(),
        timeout_ms,
        max_staleness_ms: 120_000,
        interval_ms: 10_000,
    })
    .unwrap()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

const SUCCESSES: &str =
    r#"sum(backstop_requests_total{model="{{model}}",version="{{version}}",outcome="success"})"#;
const WEIGHT: &str = r#"backstop_version_weight{model="{{model}}",version="{{version}}"}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_version_queries_against_a_real_prometheus() {
    let (v1, v2) = (toy("v1").await, toy("v2").await);
    let backstop = Backstop::start(&two_versions(&v1.url(), &v2.url(), 90, 10, ""));
    // Known per-version counts: 7 answers pinned to v1, 3 to v2.
    let client = HttpClient::new();
    let url = backstop.url("/v2/models/m/infer");
    for (version, count) in [("v1", 7), ("v2", 3)] {
        for _ in 0..count {
            let answer = client.infer(&url, &[("x-backstop-pin", version)]).await;
            assert_eq!(answer.status, http::StatusCode::OK);
            assert_eq!(answer.version(), Some(version));
        }
    }
    let Some(mut server) = PrometheusServer::start(backstop.admin) else {
        return;
    };
    let prometheus = source(&server.url, 5000);

    // The first scrapes land within a few seconds.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match prometheus.query(SUCCESSES, "m", "v2").await {
            Ok(reading) if reading.value == 3.0 => break,
            other => assert!(
                Instant::now() < deadline,
                "no v2 series within 30 s: {other:?}\n{}",
                server.log()
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Candidate and baseline, from the same template.
    for (version, successes, weight) in [("v1", 7.0, 90.0), ("v2", 3.0, 10.0)] {
        let reading = prometheus.query(SUCCESSES, "m", version).await.unwrap();
        assert_eq!(reading.value, successes, "{version}");
        assert_eq!(
            reading.query,
            format!(
                r#"sum(backstop_requests_total{{model="m",version="{version}",outcome="success"}})"#
            )
        );
        assert!(
            now_ms().abs_diff(reading.sample_unix_ms) < 60_000,
            "{reading:?}"
        );
        let Reading { value, .. } = prometheus.query(WEIGHT, "m", version).await.unwrap();
        assert_eq!(value, weight, "{version}");
        // A scalar result reads the same.
        let scalar = format!("scalar({WEIGHT})");
        let reading = prometheus.query(&scalar, "m", version).await.unwrap();
        assert_eq!(reading.value, weight, "{version}");
    }

    // Everything that is not one trustworthy number is an error.
    assert_eq!(
        prometheus.query(SUCCESSES, "m", "v9").await,
        Err(SourceError::NoData)
    );
    // An escaped odd value is a valid query that matches nothing.
    assert_eq!(
        prometheus.query(WEIGHT, "m", "a\"b\\c").await,
        Err(SourceError::NoData)
    );
    let all_outcomes = r#"backstop_requests_total{model="{{model}}",version="{{version}}"}"#;
    let error = prometheus.query(all_outcomes, "m", "v1").await.unwrap_err();
    assert_eq!(error, SourceError::ManySeries(6));
    assert!(error.to_string().contains("aggregate"), "{error}");
    let error = prometheus
        .query(
            r#"sum(backstop_requests_total{version="{{version}}"}"#,
            "m",
            "v1",
        )
        .await
        .unwrap_err();
    match &error {
        SourceError::BadQuery { error_type, error } => {
            assert_eq!(error_type, "bad_data");
            assert!(error.contains("parse error"), "{error}");
        }
        other => panic!("expected bad_query, got {other:?}"),
    }
    let nan = format!("0 * {WEIGHT} / 0");
    assert_eq!(
        prometheus.query(&nan, "m", "v1").await,
        Err(SourceError::NotANumber)
    );
    let range = format!("{WEIGHT}[1m]");
    let error = prometheus.query(&range, "m", "v1").await.unwrap_err();
    assert_eq!(error.code(), "bad_response", "{error}");

    // The command line reads the same numbers; a version without one
    // makes it exit 1.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("backstop.yaml");
    std::fs::write(
        &config,
        format!("prometheus: {{ url: \"{}\" }}\n", server.url),
    )
    .unwrap();
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_backstop"))
        .args(["prometheus", "query", "--model", "m", "--version", "v1"])
        .args(["--version", "v9", "--output", "json", "--config"])
        .arg(&config)
        .arg(WEIGHT)
        .kill_on_drop(true)
        .output();
    let run = tokio::time::timeout(Duration::from_secs(20), run)
        .await
        .expect("the command finished within 20 s")
        .unwrap();
    assert_eq!(run.status.code(), Some(1), "{run:?}");
    let rows: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(rows[0]["version"], "v1");
    assert_eq!(rows[0]["value"], 90.0);
    assert_eq!(rows[1]["version"], "v9");
    assert_eq!(rows[1]["error"]["code"], "no_data");

    // A target that stops answering: Prometheus marks its series stale at
    // the next failed scrape, and the source reports no data.
    drop(backstop);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match prometheus.query(WEIGHT, "m", "v1").await {
            Err(SourceError::NoData) => break,
            other => assert!(
                Instant::now() < deadline,
                "series still there 15 s after the target stopped: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Prometheus itself gone: connection refused.
    server.stop();
    let error = prometheus.query(WEIGHT, "m", "v1").await.unwrap_err();
    assert_eq!(error.code(), "unreachable", "{error}");
    assert!(
        error.to_string().to_lowercase().contains("refused"),
        "{error}"
    );
}

/// A loopback server that answers every request with `answer` (status
/// 200, JSON), or holds the connection open without answering.
async fn canned(answer: Option<String>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let answer = answer.clone();
            tokio::spawn(async move {
                read_request(&mut stream).await;
                let Some(body) = answer else {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    return;
                };
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes()).await;
                let _ = stream.write_all(body.as_bytes()).await;
            });
        }
    });
    address
}

/// Reads one request (head and `content-length` body), so that closing
/// the connection afterwards does not reset it.
async fn read_request(stream: &mut tokio::net::TcpStream) {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buffer[..end]).to_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if buffer.len() >= end + 4 + length {
                return;
            }
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
        }
    }
}

#[tokio::test]
async fn old_samples_silence_and_huge_answers_are_errors() {
    // Ten minutes old: a caching frontend or a skewed clock.
    let old = (now_ms() - 600_000) as f64 / 1000.0;
    let answer = format!(
        r#"{{"status":"success","data":{{"resultType":"vector","result":[{{"metric":{{}},"value":[{old},"1"]}}]}}}}"#
    );
    let address = canned(Some(answer)).await;
    match source(&format!("http://{address}"), 2000)
        .query("up", "m", "v1")
        .await
    {
        Err(SourceError::Stale { age_ms }) => {
            assert!((600_000..660_000).contains(&age_ms), "{age_ms}")
        }
        other => panic!("expected stale, got {other:?}"),
    }

    let address = canned(None).await;
    let started = Instant::now();
    let result = source(&format!("http://{address}"), 300)
        .query("up", "m", "v1")
        .await;
    assert_eq!(result, Err(SourceError::Timeout));
    assert!(started.elapsed() < Duration::from_secs(5));

    let huge = format!(r#"{{"status":"success","pad":"{}"}}"#, "x".repeat(2 << 20));
    let address = canned(Some(huge)).await;
    let error = source(&format!("http://{address}"), 5000)
        .query("up", "m", "v1")
        .await
        .unwrap_err();
    assert_eq!(error.code(), "bad_response", "{error}");
    assert!(error.to_string().contains("larger than"), "{error}");
}

/// A loopback exporter of a per-version quality gauge, for Prometheus to
/// scrape: v1 (the baseline) at 0.95, v2 (the candidate) at 0.60.
async fn quality_exporter() -> SocketAddr {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(|| async {
            "# TYPE model_quality gauge\n\
             model_quality{model=\"m\",version=\"v1\"} 0.95\n\
             model_quality{model=\"m\",version=\"v2\"} 0.60\n"
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

const QUALITY_TRIGGER: &str = r#"{ metric: prometheus, query: 'min(model_quality{model="{{model}}",version="{{version}}"})', below: "-10%", min_sample: 5, action: rollback }"#;

/// A `prometheus` trigger reads real series from a real Prometheus for
/// candidate and baseline, and rolls back a candidate whose quality is
/// below the baseline's by more than the rule allows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prometheus_trigger_rolls_back_on_real_series() {
    use crate::rollout::{config, failures, policy, start, wait_for_phase, Load};
    let exporter = quality_exporter().await;
    let Some(server) = PrometheusServer::start(exporter) else {
        return;
    };
    // The series are there before the rollout starts.
    let prometheus = source(&server.url, 5000);
    let query = r#"min(model_quality{model="{{model}}",version="{{version}}"})"#;
    let deadline = Instant::now() + Duration::from_secs(30);
    while prometheus.query(query, "m", "v2").await.is_err() {
        assert!(
            Instant::now() < deadline,
            "no series within 30 s\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (v1, v2) = (toy("v1").await, toy("v2").await);
    let top = format!(
        "prometheus: {{ url: \"{}\", interval_ms: 500 }}\n",
        server.url
    );
    let backstop = Backstop::start(&format!("{top}{}", config(&v1.url(), &v2.url())));
    let client = HttpClient::new();
    let view = start(
        &client,
        &backstop,
        &policy(
            "{ canary: { steps: [50, 100], bake: 1m } }",
            &[QUALITY_TRIGGER],
        ),
    )
    .await;
    let id = view["id"].as_str().unwrap().to_string();
    let load = Load::start(&backstop, 2, 50, Duration::from_secs(25));
    let view = wait_for_phase(&client, &backstop, &id, "rolled_back").await;
    let seen = load.finish().await;
    assert!(failures(&seen).is_empty(), "the rollback failed no request");
    let verdict = &view["verdict"];
    assert!(
        verdict["trigger"]["rule"]
            .as_str()
            .unwrap()
            .starts_with("prometheus below -10%"),
        "{verdict:#}"
    );
    assert_eq!(verdict["trigger"]["candidate_value"], 0.6, "{verdict:#}");
    assert_eq!(verdict["trigger"]["baseline_value"], 0.95, "{verdict:#}");
}

/// With the Prometheus server down the trigger is `unavailable`, said
/// once in the audit log, and the stage is held: never taken as healthy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prometheus_that_is_down_holds_the_stage() {
    use crate::rollout::{audit_actions, config, policy, start, status, wait_until, Load};
    // A port nothing listens on.
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (v1, v2) = (toy("v1").await, toy("v2").await);
    let top =
        format!("prometheus: {{ url: \"http://{closed}\", interval_ms: 200, timeout_ms: 500 }}\n");
    let backstop = Backstop::start(&format!("{top}{}", config(&v1.url(), &v2.url())));
    let client = HttpClient::new();
    let view = start(
        &client,
        &backstop,
        &policy(
            "{ canary: { steps: [50, 100], bake: 1s } }",
            &[QUALITY_TRIGGER],
        ),
    )
    .await;
    let id = view["id"].as_str().unwrap().to_string();
    let load = Load::start(&backstop, 2, 50, Duration::from_secs(25));
    let view = wait_until(&client, &backstop, &id, "an unavailable trigger", |v| {
        v["triggers"][0]["state"] == "unavailable"
    })
    .await;
    assert!(
        view["triggers"][0]["unavailable"]
            .as_str()
            .unwrap()
            .contains("unreachable"),
        "{view:#}"
    );
    // Well past the 1 s bake, with traffic: still on the first stage.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let view = status(&client, &backstop, &id).await;
    load.finish().await;
    assert_eq!(
        (view["phase"].as_str(), view["stage"].as_u64()),
        (Some("running"), Some(0)),
        "{view:#}"
    );
    let actions = audit_actions(&client, &backstop).await;
    assert_eq!(
        actions
            .iter()
            .filter(|a| *a == "rollout.source_unavailable")
            .count(),
        1,
        "{actions:?}"
    );
}
