//! An HTTP/1.1 load generator: the traffic source of the demo and the
//! benchmark.
//!
//! Each of [`LoadSpec::connections`] tasks owns one keep-alive connection
//! (hyper's low-level `http1` client over a `TcpStream` with `TCP_NODELAY`)
//! and sends one request at a time on it. All connections are opened before
//! the clock starts, so handshakes are not part of what is measured. A
//! connection that breaks is reopened; the failed request counts as an error.
//!
//! # Modes
//!
//! - [`Mode::ClosedLoop`]: every task sends back-to-back until the deadline.
//!   The rate is whatever the server sustains: this finds the maximum.
//! - [`Mode::OpenLoop`]: requests are due on a fixed schedule, request `i` at
//!   `start + i / rate`, whatever the server does. Tasks take the next
//!   request number ("ticket") from one shared atomic counter.
//!
//! # Coordinated omission
//!
//! A closed-loop client that waits for a slow answer also stops sending, so
//! the requests that *would* have met the slow server are never sent and
//! never measured: the server "coordinates" with the client to hide its
//! stalls. The open loop corrects for that the way wrk2 does:
//!
//! - a task that takes a ticket **ahead** of schedule sleeps until the
//!   intended time and measures latency from the **actual** send. The
//!   generator's own timer lag (a late wake-up) is not the server's fault;
//! - a task that takes a ticket **behind** schedule (it got it after its
//!   intended time, because every connection was still busy with earlier
//!   answers) measures latency from the **intended** time. The time the
//!   request spent waiting for a free connection is what a real client
//!   arriving then would have waited, so it is charged to the server.
//!
//! Issuing stops at the deadline: tickets due after it are not sent, and a
//! task that is still behind schedule at the deadline stops too (so
//! `achieved_rps` below the asked rate means the server did not keep up).
//! Requests in flight at the deadline get [`GRACE`] to finish; those that do
//! not are counted as errors.
//!
//! # Accounting
//!
//! `sent` counts attempts: `sent == ok + errors`. A request answered with a
//! non-2xx status, a transport error, a failed reconnect or a request still
//! unanswered after the grace counts as an error. Latencies (µs, from send
//! or intended time to the last byte of the response body) are recorded for
//! every *answered* request whatever its status, into one
//! [`HistogramSnapshot`] per task (no locks, no sharing on the hot path);
//! the snapshots are merged when the run ends.

use anyhow::Context;
use backstop_core::analysis::HistogramSnapshot;
use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::{sleep_until, timeout, timeout_at, Instant};

/// How long requests in flight at the deadline may take to finish.
pub const GRACE: Duration = Duration::from_secs(2);
/// Distinct `x-backstop-version` values kept; the rest count under "other".
pub const VERSIONS_MAX: usize = 16;
/// Most connections one run may open: more would exhaust file descriptors
/// long before it measured anything useful.
pub const CONNECTIONS_MAX: usize = 4096;
/// Longest run accepted; loops below are bounded by the deadline.
pub const DURATION_MAX: Duration = Duration::from_secs(3600);
/// Response header that names the version the gateway routed to.
pub const VERSION_HEADER: &str = "x-backstop-version";

const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Pause after a failed connect, so a dead target is not hammered in a
/// tight loop (and the error count stays meaningful).
const RECONNECT_BACKOFF: Duration = Duration::from_millis(10);
/// Distinct sticky user keys drawn from.
const STICKY_USERS: u32 = 10_000;

/// How requests are paced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Back-to-back on every connection: measures the maximum rate.
    ClosedLoop,
    /// A fixed schedule of `rate_per_s` requests per second, corrected for
    /// coordinated omission (see the module documentation).
    OpenLoop { rate_per_s: u64 },
}

/// What to send, where, and for how long.
#[derive(Clone, Debug)]
pub struct LoadSpec {
    pub target: SocketAddr,
    pub method: Method,
    /// Path and query, e.g. "/v2/models/m/infer".
    pub path: String,
    pub body: Bytes,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Optional: a header whose value is set per request to a random user
    /// key (e.g. "x-user-id"), None = off.
    pub sticky_header: Option<HeaderName>,
    pub connections: usize,
    pub duration: Duration,
    pub mode: Mode,
    /// Set to stop early: no request is issued after it is set (those in
    /// flight finish).
    pub stop: Option<Arc<AtomicBool>>,
}

/// What a run measured.
#[derive(serde::Serialize, Clone, Debug, Default)]
pub struct LoadReport {
    pub sent: u64,
    /// 2xx answers.
    pub ok: u64,
    /// Non-2xx answers and transport errors.
    pub errors: u64,
    /// Requests that got no HTTP answer at all: connection refused or
    /// reset, or still unanswered at the deadline.
    pub transport_errors: u64,
    /// Answers per HTTP status code.
    pub statuses: BTreeMap<u16, u64>,
    pub elapsed_ms: u64,
    /// `ok` per second of `elapsed_ms`.
    pub achieved_rps: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    /// Responses per value of the `x-backstop-version` response header (at
    /// most 16 distinct values kept; others under "other").
    pub versions: BTreeMap<String, u64>,
    #[serde(skip)]
    pub latency: HistogramSnapshot,
}

/// Runs `spec` to its deadline and reports what it measured.
///
/// Fails only when the spec is unusable or no connection to the target can
/// be opened at all; errors during the run are counted, not returned.
pub async fn run(spec: LoadSpec) -> anyhow::Result<LoadReport> {
    anyhow::ensure!(
        (1..=CONNECTIONS_MAX).contains(&spec.connections),
        "connections must be 1..={CONNECTIONS_MAX}, not {}",
        spec.connections
    );
    anyhow::ensure!(
        spec.duration <= DURATION_MAX,
        "duration must be at most {DURATION_MAX:?}"
    );
    let interval_ns = match spec.mode {
        Mode::ClosedLoop => None,
        Mode::OpenLoop { rate_per_s: 0 } => anyhow::bail!("open-loop rate must be above 0"),
        Mode::OpenLoop { rate_per_s } => Some(1e9 / rate_per_s as f64),
    };
    let uri: Uri = spec
        .path
        .parse()
        .with_context(|| format!("invalid request path {:?}", spec.path))?;
    let mut headers = HeaderMap::new();
    // The low-level hyper client does not add Host; HTTP/1.1 requires it.
    headers.insert(
        header::HOST,
        HeaderValue::from_str(&spec.target.to_string())?,
    );
    for (name, value) in &spec.headers {
        headers.append(name.clone(), value.clone());
    }

    // Open every connection before the clock starts: the handshakes are not
    // what is measured, and a target that is not there fails fast here.
    let opened =
        futures_util::future::join_all((0..spec.connections).map(|_| Conn::open(spec.target)))
            .await;
    let mut first_error = None;
    let mut conns = Vec::with_capacity(opened.len());
    for result in opened {
        match result {
            Ok(conn) => conns.push(Some(conn)),
            Err(error) => {
                first_error.get_or_insert(error);
                // The task reconnects by itself (counting errors if it fails).
                conns.push(None);
            }
        }
    }
    if conns.iter().all(Option::is_none) {
        let error = first_error.unwrap_or_else(|| anyhow::anyhow!("no connection"));
        return Err(error.context(format!("cannot connect to {}", spec.target)));
    }

    let start = Instant::now();
    let shared = Arc::new(Shared {
        target: spec.target,
        method: spec.method,
        uri,
        headers,
        body: spec.body,
        sticky_header: spec.sticky_header,
        interval_ns,
        start,
        deadline: start + spec.duration,
        tickets: AtomicU64::new(0),
        stop: spec.stop,
    });
    let mut tasks = tokio::task::JoinSet::new();
    for conn in conns {
        tasks.spawn(worker(shared.clone(), conn));
    }
    let mut total = TaskStats::new(start);
    // Bounded: one iteration per task, and every task ends by deadline + GRACE.
    while let Some(joined) = tasks.join_next().await {
        total.merge(joined.context("load generator task failed")?);
    }

    let elapsed = total
        .last_done
        .saturating_duration_since(start)
        .max(Duration::from_millis(1));
    let quantile = |q: f64| total.histogram.quantile(q).unwrap_or(0);
    Ok(LoadReport {
        sent: total.sent,
        ok: total.ok,
        errors: total.errors,
        transport_errors: total.transport_errors,
        statuses: total.statuses,
        elapsed_ms: elapsed.as_millis() as u64,
        achieved_rps: total.ok as f64 / elapsed.as_secs_f64(),
        p50_us: quantile(0.5),
        p99_us: quantile(0.99),
        p999_us: quantile(0.999),
        max_us: quantile(1.0),
        versions: total.versions,
        latency: total.histogram,
    })
}

/// Read-only state every task shares.
struct Shared {
    target: SocketAddr,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
    sticky_header: Option<HeaderName>,
    /// Open loop: nanoseconds between intended send times.
    interval_ns: Option<f64>,
    start: Instant,
    deadline: Instant,
    /// Open loop: the next request number to send.
    tickets: AtomicU64,
    stop: Option<Arc<AtomicBool>>,
}

impl Shared {
    fn over(&self) -> bool {
        Instant::now() >= self.deadline
            || self
                .stop
                .as_ref()
                .is_some_and(|s| s.load(Ordering::Relaxed))
    }

    fn request(&self) -> Request<Full<Bytes>> {
        let mut request = Request::new(Full::new(self.body.clone()));
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri.clone();
        *request.headers_mut() = self.headers.clone();
        if let Some(name) = &self.sticky_header {
            let key = format!("user-{}", fastrand::u32(..STICKY_USERS));
            if let Ok(value) = HeaderValue::try_from(key) {
                request.headers_mut().insert(name.clone(), value);
            }
        }
        request
    }

    /// Intended send time of open-loop request `ticket`.
    fn intended(&self, ticket: u64, interval_ns: f64) -> Instant {
        self.start + Duration::from_nanos((ticket as f64 * interval_ns) as u64)
    }
}

/// One keep-alive connection; its driver task dies with it.
struct Conn {
    sender: http1::SendRequest<Full<Bytes>>,
    driver: tokio::task::JoinHandle<()>,
}

impl Conn {
    async fn open(target: SocketAddr) -> anyhow::Result<Conn> {
        let stream = timeout(CONNECT_TIMEOUT, TcpStream::connect(target))
            .await
            .context("connect timed out")??;
        // Small requests must leave at once, not wait for Nagle's timer.
        stream.set_nodelay(true)?;
        let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
        let driver = tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Conn { sender, driver })
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        // A connection stuck on an unanswered request would otherwise keep
        // its driver (and socket) alive after the run.
        self.driver.abort();
    }
}

/// What one task counted; merged into the report at the end.
struct TaskStats {
    sent: u64,
    ok: u64,
    errors: u64,
    transport_errors: u64,
    statuses: BTreeMap<u16, u64>,
    histogram: HistogramSnapshot,
    versions: BTreeMap<String, u64>,
    last_done: Instant,
}

impl TaskStats {
    fn new(start: Instant) -> Self {
        Self {
            sent: 0,
            ok: 0,
            errors: 0,
            transport_errors: 0,
            statuses: BTreeMap::new(),
            histogram: HistogramSnapshot::default(),
            versions: BTreeMap::new(),
            last_done: start,
        }
    }

    fn count_version(&mut self, version: &str, count: u64) {
        let key = if self.versions.len() < VERSIONS_MAX || self.versions.contains_key(version) {
            version
        } else {
            "other"
        };
        *self.versions.entry(key.to_string()).or_default() += count;
    }

    fn merge(&mut self, other: TaskStats) {
        self.sent += other.sent;
        self.ok += other.ok;
        self.errors += other.errors;
        self.transport_errors += other.transport_errors;
        for (status, count) in &other.statuses {
            *self.statuses.entry(*status).or_default() += count;
        }
        self.histogram.merge(&other.histogram);
        for (version, count) in &other.versions {
            self.count_version(version, *count);
        }
        self.last_done = self.last_done.max(other.last_done);
    }
}

/// One connection's loop: send, wait for the whole answer, record, repeat.
async fn worker(shared: Arc<Shared>, mut conn: Option<Conn>) -> TaskStats {
    let mut stats = TaskStats::new(shared.start);
    let hard_stop = shared.deadline + GRACE;
    // Bounded by time: every pass either sends a request (which ends by
    // `hard_stop`), opens a connection (≤ CONNECT_TIMEOUT) or backs off, and
    // the loop ends at the deadline.
    loop {
        if shared.over() {
            break;
        }
        let Some(open) = conn.as_mut() else {
            match Conn::open(shared.target).await {
                Ok(opened) => conn = Some(opened),
                Err(_) => {
                    stats.sent += 1;
                    stats.errors += 1;
                    stats.transport_errors += 1;
                    sleep_until((Instant::now() + RECONNECT_BACKOFF).min(shared.deadline)).await;
                }
            }
            continue;
        };
        // Waits until the previous exchange is fully done. It fails when the
        // server closed the idle connection (e.g. a keep-alive limit):
        // nothing was sent, so nothing is counted; just reconnect.
        if !matches!(
            timeout_at(shared.deadline, open.sender.ready()).await,
            Ok(Ok(()))
        ) {
            conn = None;
            continue;
        }

        // The instant this request's latency counts from, when it is not the
        // actual send (see "Coordinated omission" above).
        let mut counted_from = None;
        if let Some(interval_ns) = shared.interval_ns {
            let ticket = shared.tickets.fetch_add(1, Ordering::Relaxed);
            let intended = shared.intended(ticket, interval_ns);
            if intended >= shared.deadline {
                break;
            }
            if intended > Instant::now() {
                sleep_until(intended).await;
                if shared.over() {
                    break;
                }
            } else {
                counted_from = Some(intended);
            }
        }

        let request = shared.request();
        let sent_at = Instant::now();
        stats.sent += 1;
        let outcome = timeout_at(hard_stop, exchange(&mut open.sender, request)).await;
        let done = Instant::now();
        stats.last_done = done;
        match outcome {
            Ok(Ok((status, version))) => {
                let latency = done.saturating_duration_since(counted_from.unwrap_or(sent_at));
                stats
                    .histogram
                    .record(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX));
                if status.is_success() {
                    stats.ok += 1;
                } else {
                    stats.errors += 1;
                }
                *stats.statuses.entry(status.as_u16()).or_default() += 1;
                if let Some(version) = version {
                    stats.count_version(&String::from_utf8_lossy(version.as_bytes()), 1);
                }
            }
            Ok(Err(_)) => {
                stats.errors += 1;
                stats.transport_errors += 1;
                conn = None;
            }
            Err(_) => {
                // Still unanswered after the grace: give up on it.
                stats.errors += 1;
                stats.transport_errors += 1;
                break;
            }
        }
    }
    stats
}

/// Sends one request and reads the whole response, so the connection can
/// carry the next one. Returns the status and the version header.
async fn exchange(
    sender: &mut http1::SendRequest<Full<Bytes>>,
    request: Request<Full<Bytes>>,
) -> Result<(StatusCode, Option<HeaderValue>), hyper::Error> {
    let response = sender.send_request(request).await?;
    let status = response.status();
    let version = response.headers().get(VERSION_HEADER).cloned();
    response.into_body().collect().await?;
    Ok((status, version))
}

#[cfg(test)]
mod tests {
    //! The generator against an in-process toy server on loopback: counts
    //! add up, the open loop keeps its rate, and a slow server is charged
    //! for the requests it delayed (coordinated-omission correction).

    use super::*;
    use crate::toy::ToyServer;

    /// Upper bound on any single test, so a hang fails instead of blocking.
    const TEST_TIMEOUT: Duration = Duration::from_secs(15);

    /// The report without its histogram, for assertion messages.
    fn summary(report: &LoadReport) -> String {
        serde_json::to_string(report).unwrap_or_default()
    }

    fn spec(target: SocketAddr, connections: usize, duration: Duration, mode: Mode) -> LoadSpec {
        LoadSpec {
            stop: None,
            target,
            method: Method::POST,
            path: "/v2/models/m/infer".to_string(),
            body: Bytes::from_static(
                br#"{"inputs":[{"name":"x","datatype":"FP32","shape":[1,4],"data":[1,2,3,4]}]}"#,
            ),
            headers: vec![(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            sticky_header: Some(HeaderName::from_static("x-user-id")),
            connections,
            duration,
            mode,
        }
    }

    #[tokio::test]
    async fn closed_loop_counts_add_up() {
        let toy = ToyServer::start("127.0.0.1:0".parse().unwrap(), "v1")
            .await
            .unwrap();
        let run = run(spec(
            toy.addr,
            8,
            Duration::from_millis(300),
            Mode::ClosedLoop,
        ));
        let report = timeout(TEST_TIMEOUT, run).await.unwrap().unwrap();
        assert!(report.sent > 50, "{}", summary(&report));
        assert_eq!(report.errors, 0, "{}", summary(&report));
        assert_eq!(report.ok, report.sent);
        assert_eq!(report.latency.count(), report.sent);
        assert_eq!(toy.behaviour.requests(), report.sent);
        assert!(report.p50_us <= report.p99_us && report.p99_us <= report.max_us);
        assert!(report.elapsed_ms >= 250 && report.elapsed_ms < 300 + GRACE.as_millis() as u64);
    }

    #[tokio::test]
    async fn open_loop_keeps_its_rate() {
        let toy = ToyServer::start("127.0.0.1:0".parse().unwrap(), "v1")
            .await
            .unwrap();
        let mode = Mode::OpenLoop { rate_per_s: 200 };
        let run = run(spec(toy.addr, 16, Duration::from_millis(500), mode));
        let report = timeout(TEST_TIMEOUT, run).await.unwrap().unwrap();
        // 200 rps × 0.5 s = 100 requests.
        assert!((70..=130).contains(&report.sent), "{}", summary(&report));
        assert_eq!(report.errors, 0, "{}", summary(&report));
        assert_eq!(report.ok, report.sent);
        // Ahead of schedule, latency counts from the actual send: an idle
        // toy answers in well under the 5 ms between requests.
        assert!(report.p50_us < 50_000, "{}", summary(&report));
    }

    #[tokio::test]
    async fn open_loop_charges_the_server_for_delayed_requests() {
        let toy = ToyServer::start("127.0.0.1:0".parse().unwrap(), "v1")
            .await
            .unwrap();
        toy.behaviour.set_latency(Duration::from_millis(50));
        // One connection can do 20 rps; 100 rps are asked for. Request k
        // leaves at about 50k ms but was due at 10k ms, so its latency grows
        // by 40 ms per request: about 50, 90, 130, ... 410 ms. A generator
        // without the correction would report about 50 ms throughout.
        let mode = Mode::OpenLoop { rate_per_s: 100 };
        let run = run(spec(toy.addr, 1, Duration::from_millis(500), mode));
        let report = timeout(TEST_TIMEOUT, run).await.unwrap().unwrap();
        assert_eq!(report.errors, 0, "{}", summary(&report));
        assert!((8..=12).contains(&report.sent), "{}", summary(&report));
        assert!(report.max_us >= 300_000, "{}", summary(&report));
        assert!(report.p50_us >= 150_000, "{}", summary(&report));
    }

    #[tokio::test]
    async fn counts_versions_and_caps_them() {
        let mut stats = TaskStats::new(Instant::now());
        for i in 0..(VERSIONS_MAX + 4) {
            stats.count_version(&format!("v{i}"), 1);
        }
        stats.count_version("v0", 1);
        assert_eq!(stats.versions.len(), VERSIONS_MAX + 1);
        assert_eq!(stats.versions["other"], 4);
        assert_eq!(stats.versions["v0"], 2);
    }

    #[tokio::test]
    async fn unreachable_target_is_an_error() {
        // Bind then drop a listener: the port is (almost surely) closed now.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let run = run(spec(addr, 2, Duration::from_millis(100), Mode::ClosedLoop));
        assert!(timeout(TEST_TIMEOUT, run).await.unwrap().is_err());
    }
}
