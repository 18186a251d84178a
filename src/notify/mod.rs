//! Telling people about an incident, durably, and running rollback hooks.
//!
//! [`Notifier::enqueue`] writes one outbox row per receiver that takes the
//! notification's severity, fsynced before it returns; only then does a
//! worker ([`Notifier::spawn`]) try to deliver it. The worker delivers
//! every due row, including rows an earlier process left pending, so a
//! crash or restart loses no notification. Delivery is at least once: a
//! crash between a receiver's 2xx and the row's update resends it, which
//! Alertmanager dedupes by its labels. Each failed attempt is retried with
//! exponential back-off and jitter until `max_attempts`, then the row is
//! `failed` with the last error.
//!
//! [`run_hooks`] runs the policy's HTTP hooks after the swap; it shares the
//! HTTP client ([`http`]) and nothing else.

pub mod format;
pub mod hooks;
pub(crate) mod http;

pub use hooks::{run_hooks, HookResult};

use crate::store::{Attempt, Enqueued, OutboxRecord, OutboxState, Store, StoreError};
use backstop_core::policy::{Receiver, Severity, WebhookFormat};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// Notification kinds the incident code sends (any other text works too).
pub const INCIDENT_OPENED: &str = "incident.opened";
pub const INCIDENT_NOT_RECOVERED: &str = "incident.not_recovered";
pub const INCIDENT_RECOVERED: &str = "incident.recovered";

/// Rows fetched per look at the outbox.
const DUE_BATCH: usize = 32;
/// Deliveries in progress at once; more wait for the next look.
const IN_FLIGHT_MAX: usize = 64;
/// Rows listed for one incident.
const DELIVERIES_MAX: usize = 1_000;

/// What happened, for whom to read: the same document for every receiver,
/// rendered per format at send time.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Notification {
    pub incident: String,
    pub model: String,
    #[serde(default)]
    pub rollout: Option<String>,
    /// `incident.opened`, `incident.not_recovered`, ...
    pub kind: String,
    #[schema(value_type = String)]
    pub severity: Severity,
    pub title: String,
    pub summary: String,
    /// Trigger, candidate, baseline, the numbers: shown as name/value.
    #[serde(default)]
    pub fields: BTreeMap<String, String>,
    pub at_unix_ms: u64,
    /// Set on good news that ends an earlier alert (`incident.recovered`):
    /// the severity that alert had. Alertmanager receivers that took it get
    /// this as its resolution (same labels, `endsAt`), whatever their
    /// severities; other formats see an ordinary notification.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub resolves: Option<Severity>,
}

/// How the worker paces itself.
#[derive(Clone, Debug)]
pub struct NotifierConfig {
    /// Longest wait between looks at the outbox (an enqueue wakes it
    /// sooner).
    pub poll: Duration,
    /// Wait after the first failed attempt; doubles per attempt.
    pub base_backoff: Duration,
    pub max_backoff: Duration,
    /// Attempts before a row is given up as `failed` (at least 1).
    pub max_attempts: u32,
    /// Per attempt, connect to last byte.
    pub timeout: Duration,
}

impl Default for NotifierConfig {
    /// Production pacing: about two hours of retries before giving up.
    fn default() -> Self {
        Self {
            poll: Duration::from_millis(500),
            base_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(300),
            max_attempts: 20,
            timeout: Duration::from_secs(10),
        }
    }
}

/// One receiver's row.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxEntry {
    pub receiver: String,
    pub id: u64,
}

/// What [`Notifier::enqueue`] did with each receiver.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnqueueSummary {
    /// New rows.
    pub queued: Vec<OutboxEntry>,
    /// Already queued for this incident and kind: the existing rows.
    pub grouped: Vec<OutboxEntry>,
    /// Receivers that do not take this severity.
    pub skipped: Vec<String>,
}

/// The durable notifier: enqueue from anywhere, one worker delivers.
pub struct Notifier {
    store: Arc<dyn Store>,
    config: NotifierConfig,
    /// Shared with the worker, which holds the notifier only weakly.
    wake: Arc<Notify>,
    http: http::HttpClient,
    /// Rows being delivered now, so a slow one is not sent twice at once.
    in_flight: Mutex<HashSet<u64>>,
}

impl Drop for Notifier {
    fn drop(&mut self) {
        // Let the worker see at once that the notifier is gone.
        self.wake.notify_one();
    }
}

impl Notifier {
    pub fn new(store: Arc<dyn Store>, config: NotifierConfig) -> Arc<Notifier> {
        Arc::new(Notifier {
            store,
            config,
            wake: Arc::new(Notify::new()),
            http: http::HttpClient::new(),
            in_flight: Mutex::new(HashSet::new()),
        })
    }

    /// Queues `n` for every receiver that takes its severity, grouped by
    /// `{incident}/{receiver}/{kind}` (a second enqueue of a group changes
    /// nothing). Every row is durable when this returns; then the worker is
    /// woken. Blocking (store writes): from async code call it on the
    /// blocking pool. On an error some receivers may be queued already;
    /// calling again is safe, those are grouped.
    pub fn enqueue(
        &self,
        receivers: &[Receiver],
        n: &Notification,
    ) -> Result<EnqueueSummary, StoreError> {
        let payload = serde_json::to_value(n)
            .map_err(|e| StoreError::Refused(format!("notification as JSON: {e}")))?;
        let now = now_ms();
        let mut summary = EnqueueSummary::default();
        for receiver in receivers {
            // An Alertmanager receiver that took the alert takes its end.
            let severity = match n.resolves {
                Some(opened) if receiver.format == WebhookFormat::Alertmanager => opened,
                _ => n.severity,
            };
            if !receiver.severities.contains(&severity) {
                summary.skipped.push(receiver.name.clone());
                continue;
            }
            let record = OutboxRecord {
                id: 0,
                incident: n.incident.clone(),
                model: n.model.clone(),
                receiver: receiver.name.clone(),
                format: receiver.format.name().to_string(),
                url: receiver.url.clone(),
                url_env: receiver.url_env.clone(),
                severity: n.severity.name().to_string(),
                kind: n.kind.clone(),
                group_key: format!("{}/{}/{}", n.incident, receiver.name, n.kind),
                payload: payload.clone(),
                state: OutboxState::Pending,
                attempts: 0,
                next_attempt_unix_ms: now,
                last_error: None,
                created_unix_ms: now,
                delivered_unix_ms: None,
            };
            let entry = |id| OutboxEntry {
                receiver: receiver.name.clone(),
                id,
            };
            match self.store.enqueue_notification(&record)? {
                Enqueued::Queued(id) => summary.queued.push(entry(id)),
                Enqueued::Grouped(id) => summary.grouped.push(entry(id)),
            }
        }
        if !summary.queued.is_empty() {
            self.wake.notify_one();
        }
        Ok(summary)
    }

    /// The incident's notifications, oldest first, with their state,
    /// attempts and last error. Blocking, like [`Notifier::enqueue`].
    pub fn deliveries(&self, incident: &str) -> Result<Vec<OutboxRecord>, StoreError> {
        let mut rows = self.store.notifications(Some(incident), DELIVERIES_MAX)?;
        rows.reverse();
        Ok(rows)
    }

    /// Starts the delivery worker on the current runtime. It stops when
    /// the last other `Arc` of the notifier is dropped (or when aborted).
    pub fn spawn(self: &Arc<Self>) -> JoinHandle<()> {
        let notifier = Arc::downgrade(self);
        let wake = self.wake.clone();
        let poll = self.config.poll.max(Duration::from_millis(1));
        tokio::spawn(async move {
            loop {
                let Some(this) = notifier.upgrade() else {
                    break;
                };
                this.dispatch_due().await;
                drop(this);
                tokio::select! {
                    _ = wake.notified() => {}
                    _ = tokio::time::sleep(poll) => {}
                }
            }
        })
    }

    /// Starts a delivery task for each due row not already in flight.
    async fn dispatch_due(self: &Arc<Self>) {
        // Rows in flight before the query may finish while it runs; their
        // rows read as pending then, yet must not be sent again.
        let busy: HashSet<u64> = self.in_flight().clone();
        if busy.len() >= IN_FLIGHT_MAX {
            return;
        }
        let store = self.store.clone();
        let now = now_ms();
        // In-flight rows are still due; ask for enough to see past them.
        let limit = DUE_BATCH + busy.len();
        let due = tokio::task::spawn_blocking(move || store.due_notifications(now, limit)).await;
        let rows = match due {
            Ok(Ok(rows)) => rows,
            Ok(Err(error)) => {
                tracing::warn!(%error, "cannot read the notification outbox");
                return;
            }
            Err(error) => {
                tracing::warn!(%error, "reading the notification outbox failed");
                return;
            }
        };
        for row in rows {
            if busy.contains(&row.id) {
                continue;
            }
            {
                let mut in_flight = self.in_flight();
                if in_flight.len() >= IN_FLIGHT_MAX || !in_flight.insert(row.id) {
                    continue;
                }
            }
            let this = self.clone();
            tokio::spawn(async move {
                let id = row.id;
                this.deliver(row).await;
                this.in_flight().remove(&id);
            });
        }
    }

    fn in_flight(&self) -> std::sync::MutexGuard<'_, HashSet<u64>> {
        self.in_flight.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One attempt at one row, and its outcome recorded.
    async fn deliver(&self, row: OutboxRecord) {
        let attempt = row.attempts.saturating_add(1);
        let max_attempts = self.config.max_attempts.max(1);
        let outcome = match self.attempt(&row).await {
            Ok(()) => Attempt::Delivered {
                at_unix_ms: now_ms(),
            },
            Err(failure) => {
                tracing::warn!(
                    receiver = %row.receiver,
                    incident = %row.incident,
                    kind = %row.kind,
                    attempt,
                    of = max_attempts,
                    error = %failure.message,
                    "notification delivery failed"
                );
                if failure.permanent || attempt >= max_attempts {
                    Attempt::GaveUp {
                        error: failure.message,
                    }
                } else {
                    let wait = backoff(attempt, self.config.base_backoff, self.config.max_backoff);
                    Attempt::Retry {
                        error: failure.message,
                        next_attempt_unix_ms: now_ms()
                            .saturating_add(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX)),
                    }
                }
            }
        };
        let store = self.store.clone();
        let id = row.id;
        let recorded =
            tokio::task::spawn_blocking(move || store.record_attempt(id, &outcome)).await;
        let error = match recorded {
            Ok(Ok(stored)) => {
                if stored.state == OutboxState::Failed {
                    tracing::warn!(
                        receiver = %row.receiver,
                        incident = %row.incident,
                        attempts = stored.attempts,
                        "notification given up"
                    );
                }
                return;
            }
            Ok(Err(error)) => error.to_string(),
            Err(error) => error.to_string(),
        };
        tracing::warn!(
            receiver = %row.receiver,
            incident = %row.incident,
            %error,
            "cannot record a notification attempt"
        );
        // The row stays due and would be sent again at the next look; hold
        // it back a while so a broken store does not turn into a flood.
        tokio::time::sleep(self.config.max_backoff).await;
    }

    /// Renders and sends one row.
    async fn attempt(&self, row: &OutboxRecord) -> Result<(), http::Failure> {
        let permanent = |message: String| http::Failure {
            message,
            permanent: true,
        };
        let format: WebhookFormat =
            serde_json::from_value(serde_json::Value::String(row.format.clone()))
                .map_err(|_| permanent(format!("unknown webhook format {:?}", row.format)))?;
        let notification: Notification = serde_json::from_value(row.payload.clone())
            .map_err(|e| permanent(format!("stored notification unreadable: {e}")))?;
        let url = receiver_url(row)?;
        let body = format::render(format, &notification).to_string();
        let reply = self
            .http
            .send(
                "POST",
                &url,
                &BTreeMap::new(),
                body.into(),
                self.config.timeout,
            )
            .await?;
        if (200..300).contains(&reply.status) {
            Ok(())
        } else {
            Err(http::Failure {
                message: status_error(&reply),
                permanent: false,
            })
        }
    }
}

/// The row's address: given, or read from the environment now (a secret
/// never sits in the store, and errors never quote it).
fn receiver_url(row: &OutboxRecord) -> Result<String, http::Failure> {
    let transient = |message: String| http::Failure {
        message,
        permanent: false,
    };
    match (&row.url, &row.url_env) {
        (Some(url), _) => Ok(url.clone()),
        (None, Some(name)) => match std::env::var(name) {
            Ok(url) if !url.trim().is_empty() => Ok(url.trim().to_string()),
            Ok(_) => Err(transient(format!("environment variable {name} is empty"))),
            Err(std::env::VarError::NotPresent) => {
                Err(transient(format!("environment variable {name} is not set")))
            }
            Err(std::env::VarError::NotUnicode(_)) => Err(transient(format!(
                "environment variable {name} is not valid UTF-8"
            ))),
        },
        (None, None) => Err(http::Failure {
            message: "the receiver has neither url nor url_env".into(),
            permanent: true,
        }),
    }
}

/// A non-2xx answer as an attempt error, quoting the start of its body.
fn status_error(reply: &http::Reply) -> String {
    if reply.body_start.is_empty() {
        format!("HTTP {}", reply.status)
    } else {
        format!("HTTP {}: {}", reply.status, reply.body_start)
    }
}

/// The wait after failed attempt `attempt` (1-based): `base` doubled per
/// attempt, capped at `max`, with "equal jitter" (half fixed, half random)
/// so many rows failing together do not retry together, yet never at once.
pub(crate) fn backoff(attempt: u32, base: Duration, max: Duration) -> Duration {
    let factor = 1u32
        .checked_shl(attempt.saturating_sub(1))
        .unwrap_or(u32::MAX);
    let capped = base.saturating_mul(factor).min(max);
    let half = capped / 2;
    let spread = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
    half + Duration::from_nanos(fastrand::u64(..=spread))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A loopback HTTP receiver for tests: answers a script of statuses (the
/// last one repeats), or never answers, and keeps what it was sent.
#[cfg(test)]
pub(crate) mod test_server {
    use axum::extract::State;
    use axum::http::{HeaderMap, StatusCode};
    use bytes::Bytes;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    #[derive(Clone, Debug)]
    pub struct Received {
        pub content_type: Option<String>,
        pub body: Bytes,
    }

    #[derive(Default)]
    struct Script {
        statuses: Vec<u16>,
        hang: bool,
        received: Mutex<Vec<Received>>,
    }

    pub struct TestServer {
        pub url: String,
        script: Arc<Script>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for TestServer {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    impl TestServer {
        pub fn received(&self) -> Vec<Received> {
            self.script
                .received
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
        }
    }

    /// Answers `statuses` in order, then the last one again and again.
    pub async fn answering(statuses: &[u16]) -> TestServer {
        start(Script {
            statuses: statuses.to_vec(),
            ..Default::default()
        })
        .await
    }

    /// Takes requests and never answers.
    pub async fn hanging() -> TestServer {
        start(Script {
            hang: true,
            ..Default::default()
        })
        .await
    }

    /// An address where nothing listens (connection refused).
    pub async fn closed_url() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        format!("http://{addr}/hook")
    }

    async fn start(script: Script) -> TestServer {
        let script = Arc::new(script);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(script.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        TestServer { url, script, task }
    }

    async fn handle(
        State(script): State<Arc<Script>>,
        headers: HeaderMap,
        body: Bytes,
    ) -> StatusCode {
        let seen = {
            let mut received = script.received.lock().unwrap_or_else(|e| e.into_inner());
            received.push(Received {
                content_type: headers
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string),
                body,
            });
            received.len()
        };
        if script.hang {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        let status = script
            .statuses
            .get(seen - 1)
            .or(script.statuses.last())
            .copied()
            .unwrap_or(200);
        StatusCode::from_u16(status).unwrap_or(StatusCode::OK)
    }
}

#[cfg(test)]
mod tests {
    use super::test_server::{answering, closed_url};
    use super::*;
    use crate::store::sqlite::SqliteStore;
    use std::path::Path;
    use std::time::Instant;

    fn fast() -> NotifierConfig {
        NotifierConfig {
            poll: Duration::from_millis(20),
            base_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(40),
            max_attempts: 5,
            timeout: Duration::from_secs(2),
        }
    }

    fn notification(severity: Severity) -> Notification {
        Notification {
            incident: "inc-1".into(),
            model: "fraud".into(),
            rollout: Some("ro-1".into()),
            kind: INCIDENT_OPENED.into(),
            severity,
            title: "fraud rolled back to v1".into(),
            summary: "error rate of v2 at 4.1% vs 0.3%".into(),
            fields: BTreeMap::from([("trigger".to_string(), "error_rate".to_string())]),
            at_unix_ms: 1_700_000_000_000,
            resolves: None,
        }
    }

    fn receiver(name: &str, url: &str, severities: &[Severity]) -> Receiver {
        Receiver {
            name: name.into(),
            url: Some(url.into()),
            url_env: None,
            format: WebhookFormat::Json,
            severities: severities.to_vec(),
        }
    }

    fn open(path: &Path) -> Arc<dyn Store> {
        Arc::new(SqliteStore::open(&path.join("backstop.db")).unwrap())
    }

    /// Polls the store until `done` holds for the incident's rows, for at
    /// most ten seconds; returns the rows either way.
    async fn settle(
        notifier: &Notifier,
        done: impl Fn(&[OutboxRecord]) -> bool,
    ) -> Vec<OutboxRecord> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let rows = notifier.deliveries("inc-1").unwrap();
            if done(&rows) || Instant::now() > deadline {
                return rows;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn all_in(state: OutboxState) -> impl Fn(&[OutboxRecord]) -> bool {
        move |rows| !rows.is_empty() && rows.iter().all(|r| r.state == state)
    }

    #[tokio::test]
    async fn a_failing_receiver_gets_the_same_payload_until_it_takes_it() {
        let dir = tempfile::tempdir().unwrap();
        let server = answering(&[500, 500, 200]).await;
        let notifier = Notifier::new(open(dir.path()), fast());
        let worker = notifier.spawn();
        let summary = notifier
            .enqueue(
                &[receiver("oncall", &server.url, &[Severity::Critical])],
                &notification(Severity::Critical),
            )
            .unwrap();
        assert_eq!(summary.queued.len(), 1);
        let rows = settle(&notifier, all_in(OutboxState::Delivered)).await;
        worker.abort();
        assert_eq!(rows.len(), 1);
        let row = &rows[0];
        assert_eq!(row.state, OutboxState::Delivered);
        assert_eq!(row.attempts, 3);
        assert_eq!(row.last_error.as_deref(), Some("HTTP 500"));
        assert!(row.delivered_unix_ms.is_some());
        let received = server.received();
        assert_eq!(received.len(), 3);
        assert!(received.iter().all(|r| r.body == received[0].body));
        assert_eq!(
            received[0].content_type.as_deref(),
            Some("application/json")
        );
        let body: serde_json::Value = serde_json::from_slice(&received[0].body).unwrap();
        assert_eq!(body["incident"], "inc-1");
        assert_eq!(body["route"], "page");
    }

    #[tokio::test]
    async fn the_outbox_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let server = answering(&[200]).await;
        {
            // No worker: the process "dies" with the row queued.
            let notifier = Notifier::new(open(dir.path()), fast());
            notifier
                .enqueue(
                    &[receiver("oncall", &server.url, &[Severity::Critical])],
                    &notification(Severity::Critical),
                )
                .unwrap();
        }
        assert!(server.received().is_empty());
        let notifier = Notifier::new(open(dir.path()), fast());
        let worker = notifier.spawn();
        let rows = settle(&notifier, all_in(OutboxState::Delivered)).await;
        worker.abort();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].state, OutboxState::Delivered);
        assert_eq!(rows[0].attempts, 1);
        assert_eq!(server.received().len(), 1);
    }

    #[tokio::test]
    async fn the_same_notification_twice_is_queued_once() {
        let dir = tempfile::tempdir().unwrap();
        let notifier = Notifier::new(open(dir.path()), fast());
        let receivers = [receiver(
            "oncall",
            "http://127.0.0.1:9/",
            &[Severity::Critical],
        )];
        let n = notification(Severity::Critical);
        let first = notifier.enqueue(&receivers, &n).unwrap();
        let second = notifier.enqueue(&receivers, &n).unwrap();
        assert_eq!(first.queued.len(), 1);
        assert!(first.grouped.is_empty());
        assert!(second.queued.is_empty());
        assert_eq!(second.grouped, first.queued);
        let rows = notifier.deliveries("inc-1").unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].group_key, "inc-1/oncall/incident.opened");
        // Another kind for the same incident is its own group.
        let mut later = n.clone();
        later.kind = INCIDENT_NOT_RECOVERED.into();
        assert_eq!(
            notifier.enqueue(&receivers, &later).unwrap().queued.len(),
            1
        );
        assert_eq!(notifier.deliveries("inc-1").unwrap().len(), 2);
    }

    /// A critical-only Alertmanager receiver takes the end of the alert it
    /// took (a warning); a critical-only JSON receiver does not.
    #[test]
    fn the_end_of_an_alert_reaches_the_alertmanager_that_took_it() {
        let dir = tempfile::tempdir().unwrap();
        let notifier = Notifier::new(open(dir.path()), fast());
        let alertmanager = Receiver {
            format: WebhookFormat::Alertmanager,
            ..receiver(
                "am",
                "http://127.0.0.1:9/api/v2/alerts",
                &[Severity::Critical],
            )
        };
        let pager = receiver("pager", "http://127.0.0.1:9/", &[Severity::Critical]);
        let recovered = Notification {
            kind: INCIDENT_RECOVERED.into(),
            resolves: Some(Severity::Critical),
            ..notification(Severity::Warning)
        };
        let summary = notifier
            .enqueue(&[alertmanager, pager], &recovered)
            .unwrap();
        assert_eq!(summary.skipped, ["pager"]);
        assert_eq!(summary.queued.len(), 1);
        assert_eq!(summary.queued[0].receiver, "am");
    }

    #[tokio::test]
    async fn a_receiver_gets_only_the_severities_it_takes() {
        let dir = tempfile::tempdir().unwrap();
        let pager = answering(&[200]).await;
        let tickets = answering(&[200]).await;
        let notifier = Notifier::new(open(dir.path()), fast());
        let worker = notifier.spawn();
        let receivers = [
            receiver("pager", &pager.url, &[Severity::Critical]),
            receiver("tickets", &tickets.url, &[Severity::Warning]),
        ];
        let summary = notifier
            .enqueue(&receivers, &notification(Severity::Warning))
            .unwrap();
        assert_eq!(summary.skipped, ["pager"]);
        assert_eq!(summary.queued.len(), 1);
        assert_eq!(summary.queued[0].receiver, "tickets");
        let rows = settle(&notifier, all_in(OutboxState::Delivered)).await;
        worker.abort();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].receiver, "tickets");
        assert_eq!(rows[0].state, OutboxState::Delivered);
        assert_eq!(tickets.received().len(), 1);
        assert!(pager.received().is_empty());
        let body: serde_json::Value = serde_json::from_slice(&tickets.received()[0].body).unwrap();
        assert_eq!(body["route"], "ticket");
    }

    #[tokio::test]
    async fn delivery_is_given_up_after_max_attempts_with_the_last_error() {
        let dir = tempfile::tempdir().unwrap();
        let server = answering(&[502, 503]).await;
        let config = NotifierConfig {
            max_attempts: 3,
            ..fast()
        };
        let notifier = Notifier::new(open(dir.path()), config);
        let worker = notifier.spawn();
        notifier
            .enqueue(
                &[receiver("oncall", &server.url, &[Severity::Critical])],
                &notification(Severity::Critical),
            )
            .unwrap();
        let rows = settle(&notifier, all_in(OutboxState::Failed)).await;
        // Nothing more is tried once it is given up.
        tokio::time::sleep(Duration::from_millis(100)).await;
        worker.abort();
        assert_eq!(rows[0].state, OutboxState::Failed);
        assert_eq!(rows[0].attempts, 3);
        assert_eq!(rows[0].last_error.as_deref(), Some("HTTP 503"));
        assert!(rows[0].delivered_unix_ms.is_none());
        assert_eq!(server.received().len(), 3);
    }

    #[tokio::test]
    async fn a_refused_connection_is_retried_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        let url = closed_url().await;
        let config = NotifierConfig {
            max_attempts: 2,
            ..fast()
        };
        let notifier = Notifier::new(open(dir.path()), config);
        let worker = notifier.spawn();
        notifier
            .enqueue(
                &[receiver("oncall", &url, &[Severity::Critical])],
                &notification(Severity::Critical),
            )
            .unwrap();
        let rows = settle(&notifier, all_in(OutboxState::Failed)).await;
        worker.abort();
        assert_eq!(rows[0].attempts, 2);
        let error = rows[0].last_error.as_deref().unwrap_or_default();
        assert!(error.to_lowercase().contains("connect"), "{error}");
    }

    #[tokio::test]
    async fn url_env_is_read_at_send_time_and_a_missing_one_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let server = answering(&[200]).await;
        let set = "BACKSTOP_NOTIFY_TEST_URL_SET";
        let unset = "BACKSTOP_NOTIFY_TEST_URL_NEVER_SET";
        // Names no other test touches, so the process-wide change is safe.
        std::env::set_var(set, &server.url);
        let by_env = |name: &str, var: &str| Receiver {
            name: name.into(),
            url: None,
            url_env: Some(var.into()),
            format: WebhookFormat::Slack,
            severities: vec![Severity::Critical],
        };
        let config = NotifierConfig {
            max_attempts: 2,
            ..fast()
        };
        let notifier = Notifier::new(open(dir.path()), config);
        let worker = notifier.spawn();
        notifier
            .enqueue(
                &[by_env("slack", set), by_env("missing", unset)],
                &notification(Severity::Critical),
            )
            .unwrap();
        let rows = settle(&notifier, |rows| {
            rows.len() == 2 && rows.iter().all(|r| r.state != OutboxState::Pending)
        })
        .await;
        worker.abort();
        let slack = rows.iter().find(|r| r.receiver == "slack").unwrap();
        assert_eq!(slack.state, OutboxState::Delivered);
        // The address itself is never stored.
        assert_eq!(slack.url, None);
        let body: serde_json::Value = serde_json::from_slice(&server.received()[0].body).unwrap();
        assert!(body["blocks"].is_array(), "{body}");
        let missing = rows.iter().find(|r| r.receiver == "missing").unwrap();
        assert_eq!(missing.state, OutboxState::Failed);
        assert_eq!(
            missing.last_error.as_deref(),
            Some("environment variable BACKSTOP_NOTIFY_TEST_URL_NEVER_SET is not set")
        );
    }

    #[tokio::test]
    async fn dropping_the_notifier_stops_its_worker() {
        let dir = tempfile::tempdir().unwrap();
        let notifier = Notifier::new(open(dir.path()), fast());
        let worker = notifier.spawn();
        drop(notifier);
        tokio::time::timeout(Duration::from_secs(5), worker)
            .await
            .expect("the worker stops")
            .unwrap();
    }

    #[tokio::test]
    async fn a_failed_enqueue_is_an_error_and_a_retry_groups_what_landed() {
        use crate::store::faulty::FaultyStore;
        let dir = tempfile::tempdir().unwrap();
        let inner = SqliteStore::open(&dir.path().join("backstop.db")).unwrap();
        // The second write fails once.
        let store: Arc<dyn Store> = Arc::new(FaultyStore::new(inner, 1, false));
        let notifier = Notifier::new(store, fast());
        let receivers = [
            receiver("a", "http://127.0.0.1:9/", &[Severity::Critical]),
            receiver("b", "http://127.0.0.1:9/", &[Severity::Critical]),
        ];
        let n = notification(Severity::Critical);
        let error = notifier.enqueue(&receivers, &n).unwrap_err();
        assert!(matches!(error, StoreError::Unavailable(_)), "{error}");
        assert_eq!(notifier.deliveries("inc-1").unwrap().len(), 1);
        let summary = notifier.enqueue(&receivers, &n).unwrap();
        assert_eq!(summary.grouped.len(), 1);
        assert_eq!(summary.queued.len(), 1);
        assert_eq!(notifier.deliveries("inc-1").unwrap().len(), 2);
    }

    #[test]
    fn backoff_doubles_within_its_cap_with_jitter() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(1);
        for _ in 0..50 {
            let first = backoff(1, base, max);
            assert!(first >= base / 2 && first <= base, "{first:?}");
            let third = backoff(3, base, max);
            assert!(third >= base * 2 && third <= base * 4, "{third:?}");
            let late = backoff(u32::MAX, base, max);
            assert!(late >= max / 2 && late <= max, "{late:?}");
        }
    }
}
