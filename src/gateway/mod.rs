//! The gateway: the data plane in front of the model servers.
//!
//! [`Gateway`] holds every model's routing table behind one `ArcSwap`, the
//! per-version statistics, the upstream endpoints and their health. The
//! proxy ([`proxy`]) reads it; the admin API replaces tables through
//! [`Gateway::replace_model`], the single path every routing change takes
//! (startup config included).

pub mod body;
pub mod capture;
pub mod error;
pub mod grpc;
pub mod h1;
mod health;
pub mod listener;
pub mod proxy;
pub mod request_id;
pub mod routing;
pub mod signals;
pub mod upstream;

use crate::config::{Config, FieldError, ModelSpec, Protocol};
use crate::feedback::Feedback;
use arc_swap::ArcSwap;
use backstop_core::analysis::VersionStats;
use routing::{ModelTable, VersionRoute};
use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use upstream::{Endpoint, HealthSettings, UpstreamClients};

/// All routing tables, by model. Replaced whole on every change.
pub type Tables = HashMap<String, Arc<ModelTable>>;

/// Everything the gateway keeps about one (model, version), across swaps.
pub struct VersionState {
    pub model: String,
    pub version: String,
    pub stats: VersionStats,
    pub shadow_sent: AtomicU64,
    pub shadow_dropped: AtomicU64,
    /// Requests that a health fallback moved away from this version.
    pub rerouted_unhealthy: AtomicU64,
    /// Sampled request/response pairs (with the model's `capture` on).
    pub samples: capture::Ring,
    /// Model-aware signals gathered since the controller last took them,
    /// and the registered input signature they are checked against.
    pub signals: signals::Pending,
    /// The version's feedback accumulators (KPIs and labels joined to the
    /// requests it answered), shared with the gateway's [`Feedback`].
    pub feedback: Arc<crate::feedback::VersionFeedback>,
    events: Arc<Events>,
}

impl VersionState {
    pub fn new(
        model: &str,
        version: &str,
        bucket_ms: u64,
        buckets: usize,
        events: Arc<Events>,
    ) -> Self {
        Self {
            model: model.to_string(),
            version: version.to_string(),
            stats: VersionStats::new(bucket_ms, buckets, unix_ms() / bucket_ms),
            shadow_sent: AtomicU64::new(0),
            shadow_dropped: AtomicU64::new(0),
            rerouted_unhealthy: AtomicU64::new(0),
            samples: capture::Ring::default(),
            signals: signals::Pending::default(),
            // Stand-alone; the gateway gives its states the shared ones.
            feedback: Arc::new(crate::feedback::VersionFeedback::new(
                model,
                version,
                Default::default(),
                buckets,
            )),
            events,
        }
    }

    pub fn note_ejection(&self, endpoint: &Endpoint, backoff: Duration) {
        self.events.push(Event {
            kind: "endpoint_ejected",
            model: Some(self.model.clone()),
            version: Some(self.version.clone()),
            endpoint: Some(endpoint.url.clone()),
            detail: format!("consecutive failures; back-off {} ms", backoff.as_millis()),
            ..Event::default()
        });
    }
}

/// Something operators should know happened: health changes and swaps.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Event {
    pub at_unix_ms: u64,
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    pub detail: String,
}

/// Rollout and incident events per model (`step`, `rollback`, `promote`,
/// `incident_open`, ...): counters and last times for `/metrics`, so a
/// dashboard can draw deploy and rollback annotations. Bounded by models
/// times event kinds.
#[derive(Default)]
pub struct RolloutEvents {
    counts: Mutex<std::collections::BTreeMap<(String, String), (u64, u64)>>,
}

impl RolloutEvents {
    pub fn count(&self, model: &str, event: &str) {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let entry = counts
            .entry((model.to_string(), event.to_string()))
            .or_default();
        entry.0 += 1;
        entry.1 = unix_ms();
    }

    /// `((model, event), (count, last unix ms))`, sorted.
    pub fn snapshot(&self) -> Vec<((String, String), (u64, u64))> {
        let counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        counts.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }
}

/// The most recent events, bounded.
pub struct Events {
    ring: Mutex<VecDeque<Event>>,
    total: AtomicU64,
}

const EVENTS_MAX: usize = 1000;

impl Default for Events {
    fn default() -> Self {
        Self::new()
    }
}

impl Events {
    pub fn new() -> Self {
        Self {
            ring: Mutex::new(VecDeque::with_capacity(EVENTS_MAX)),
            total: AtomicU64::new(0),
        }
    }

    pub fn push(&self, mut event: Event) {
        event.at_unix_ms = unix_ms();
        self.total.fetch_add(1, Ordering::Relaxed);
        let mut ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        if ring.len() == EVENTS_MAX {
            ring.pop_front();
        }
        ring.push_back(event);
    }

    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    pub fn recent(&self) -> Vec<Event> {
        let ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        ring.iter().cloned().collect()
    }
}

pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A routing change that was refused; nothing changed.
#[derive(Debug)]
pub enum ReplaceError {
    Invalid(FieldError),
    /// The caller expected another generation (someone else changed it).
    GenerationMismatch {
        expected: u64,
        actual: u64,
    },
}

pub struct Gateway {
    pub config: Config,
    tables: ArcSwap<Tables>,
    /// Serialises writers so each swap builds on the latest tables.
    write_lock: Mutex<()>,
    states: Mutex<HashMap<(String, String), Arc<VersionState>>>,
    endpoints: Mutex<HashMap<(String, Protocol, String), Arc<Endpoint>>>,
    clients: UpstreamClients,
    pub shadow_permits: Arc<tokio::sync::Semaphore>,
    pub events: Arc<Events>,
    pub rollout_events: RolloutEvents,
    /// Feedback posted by applications, joined to the versions that
    /// answered (the feedback API).
    pub feedback: Arc<Feedback>,
    pub pin_header: http::HeaderName,
    pub swaps: AtomicU64,
    started: Instant,
    /// Tracing and the access log; `None` when both are off.
    pub telemetry: Option<Arc<crate::telemetry::Telemetry>>,
}

impl Gateway {
    /// Builds the gateway and installs the config's routing tables.
    pub fn new(config: Config) -> Result<Arc<Gateway>, String> {
        let clients = UpstreamClients::new(config.upstream_tls.ca_file.as_deref())?;
        let pin_header = http::HeaderName::from_bytes(config.pin.header.as_bytes())
            .map_err(|e| format!("pin.header: {e}"))?;
        let gateway = Arc::new(Gateway {
            shadow_permits: Arc::new(tokio::sync::Semaphore::new(
                config.limits.shadow_inflight_max,
            )),
            tables: ArcSwap::from_pointee(Tables::new()),
            write_lock: Mutex::new(()),
            states: Mutex::new(HashMap::new()),
            endpoints: Mutex::new(HashMap::new()),
            clients,
            events: Arc::new(Events::new()),
            rollout_events: RolloutEvents::default(),
            feedback: Arc::new(Feedback::new(
                &config.feedback,
                config.stats.bucket_ms,
                config.stats.buckets,
            )),
            pin_header,
            swaps: AtomicU64::new(0),
            started: Instant::now(),
            telemetry: crate::telemetry::Telemetry::start(config.telemetry.as_ref(), &config.log),
            config,
        });
        for (model, spec) in gateway.config.models.clone() {
            gateway
                .replace_model(&model, spec, None)
                .map_err(|e| format!("models.{model}: {e:?}"))?;
        }
        Ok(gateway)
    }

    /// Milliseconds on the gateway's monotonic clock.
    #[inline]
    pub fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// The instant `now_ms` counts from.
    pub fn clock_origin(&self) -> Instant {
        self.started
    }

    /// The current tables. A request loads them once.
    pub fn tables(&self) -> arc_swap::Guard<Arc<Tables>> {
        self.tables.load()
    }

    pub fn table(&self, model: &str) -> Option<Arc<ModelTable>> {
        self.tables.load().get(model).cloned()
    }

    /// Replaces (or adds) one model's routing table in a single pointer
    /// swap. With `if_generation`, refuses unless the current table has that
    /// generation. Requests in flight finish on the table they started with.
    pub fn replace_model(
        &self,
        model: &str,
        spec: ModelSpec,
        if_generation: Option<u64>,
    ) -> Result<u64, ReplaceError> {
        crate::config::check_model_name(model).map_err(|m| {
            ReplaceError::Invalid(FieldError {
                path: "model".into(),
                message: m,
            })
        })?;
        spec.check().map_err(ReplaceError::Invalid)?;
        let _writer = self.write_lock.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.tables.load_full();
        let actual = current.get(model).map_or(0, |t| t.generation);
        if let Some(expected) = if_generation {
            if expected != actual {
                return Err(ReplaceError::GenerationMismatch { expected, actual });
            }
        }
        let generation = actual + 1;
        let table = Arc::new(self.compile(model, generation, spec));
        let mut next: Tables = (*current).clone();
        next.insert(model.to_string(), table.clone());
        let next = Arc::new(next);
        table.mark_installed();
        self.tables.store(next);
        self.swaps.fetch_add(1, Ordering::Relaxed);
        tracing::info!(model, generation, "Routing table replaced.");
        Ok(generation)
    }

    /// Resolves a checked spec into a table: endpoints and statistics are
    /// looked up (or created) once here, never on the request path.
    fn compile(&self, model: &str, generation: u64, spec: ModelSpec) -> ModelTable {
        let settings = HealthSettings::from(&self.config.health);
        let versions = spec
            .versions
            .iter()
            .map(|v| {
                let endpoints = v
                    .endpoints
                    .iter()
                    .map(|url| self.endpoint(url, spec.protocol, &spec.health_path, &settings))
                    .collect();
                let mut route = VersionRoute::new(
                    v.name.clone(),
                    v.weight,
                    endpoints,
                    self.state(model, &v.name),
                );
                route.fallback = v.fallback;
                route.fault = v.fault.map(routing::InjectedFault::new);
                route
            })
            .collect();
        let client = self.clients.get(
            spec.protocol,
            Duration::from_millis(spec.timeouts.connect_ms),
        );
        ModelTable::new(model.to_string(), generation, spec, versions, client)
    }

    fn endpoint(
        &self,
        url: &str,
        protocol: Protocol,
        health_path: &str,
        settings: &HealthSettings,
    ) -> Arc<Endpoint> {
        let uri = crate::config::parse_endpoint(url).expect("spec was checked");
        let key = (uri.to_string(), protocol, health_path.to_string());
        let mut endpoints = self.endpoints.lock().unwrap_or_else(|e| e.into_inner());
        endpoints
            .entry(key)
            .or_insert_with(|| {
                Arc::new(Endpoint::new(
                    uri,
                    protocol,
                    health_path.to_string(),
                    settings.clone(),
                ))
            })
            .clone()
    }

    fn state(&self, model: &str, version: &str) -> Arc<VersionState> {
        let stats = &self.config.stats;
        let mut states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        states
            .entry((model.to_string(), version.to_string()))
            .or_insert_with(|| {
                Arc::new(VersionState {
                    feedback: self.feedback.version(model, version),
                    ..VersionState::new(
                        model,
                        version,
                        stats.bucket_ms,
                        stats.buckets,
                        self.events.clone(),
                    )
                })
            })
            .clone()
    }

    /// The version's sampled request/response pairs, oldest first; empty
    /// when it has none or is unknown. They outlive table swaps, so a
    /// rolled-back version's samples are still here.
    pub fn samples(&self, model: &str, version: &str) -> Vec<capture::CapturedExchange> {
        self.try_samples(model, version).unwrap_or_default()
    }

    /// Like [`Gateway::samples`], but `None` for a version the gateway has
    /// never had in a table.
    pub fn try_samples(
        &self,
        model: &str,
        version: &str,
    ) -> Option<Vec<capture::CapturedExchange>> {
        let states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        let state = states
            .get(&(model.to_string(), version.to_string()))?
            .clone();
        drop(states);
        Some(state.samples.snapshot())
    }

    /// Every version's state, sorted by model and version.
    pub fn version_states(&self) -> Vec<Arc<VersionState>> {
        let states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        let mut all: Vec<_> = states.values().cloned().collect();
        all.sort_by(|a, b| (&a.model, &a.version).cmp(&(&b.model, &b.version)));
        all
    }

    /// Moves every version's statistics to the current bucket.
    fn tick_stats(&self) {
        let epoch = unix_ms() / self.config.stats.bucket_ms;
        for state in self.version_states() {
            state.stats.advance_to(epoch);
        }
    }

    /// Whether every model has at least one healthy version.
    pub fn is_ready(&self) -> bool {
        let now_ms = self.now_ms();
        self.tables()
            .values()
            .all(|t| t.versions.iter().any(|v| v.is_healthy(now_ms)))
    }
}

/// A started gateway: listeners bound, background tasks running.
pub struct Running {
    pub gateway: Arc<Gateway>,
    /// The rollout runtime (with a data directory only).
    pub rollouts: Option<Arc<crate::rollout::Rollouts>>,
    pub data_addr: std::net::SocketAddr,
    pub admin_addr: std::net::SocketAddr,
    shutdown: listener::Shutdown,
    listeners: Vec<tokio::task::JoinHandle<()>>,
    background: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Stops accepting, lets requests in flight finish (up to `grace`),
    /// then stops the background tasks.
    pub async fn stop(self, grace: Duration) {
        self.shutdown.trigger();
        let listeners = self.listeners;
        let _ = tokio::time::timeout(grace, async move {
            for task in listeners {
                let _ = task.await;
            }
        })
        .await;
        for task in self.background {
            task.abort();
        }
    }
}

/// Binds both listeners and starts serving; returns at once.
pub async fn start(config: Config) -> anyhow::Result<Running> {
    let data_tls = listener::server_tls(config.tls.as_ref())?;
    let admin_tls = listener::server_tls(config.admin.tls.as_ref())?;
    let registry = match &config.data_dir {
        Some(dir) => Some(Arc::new(
            crate::registry::Registry::open(dir, config.limits.artifact_max_bytes)
                .map_err(|e| anyhow::anyhow!("opening the registry in {}: {e}", dir.display()))?,
        )),
        None => None,
    };
    let gateway = Gateway::new(config).map_err(anyhow::Error::msg)?;
    let bind = |addr, what: &'static str| async move {
        tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("binding the {what} to {addr}: {e}"))
    };
    let data = bind(gateway.config.listen, "data plane").await?;
    let admin = bind(gateway.config.admin.listen, "admin API").await?;
    let data_addr = data.local_addr()?;
    let admin_addr = admin.local_addr()?;
    let access = crate::admin::auth::AccessPolicy::new(
        registry.as_ref().map(|r| r.store()),
        admin_addr.ip().is_loopback(),
    );
    access.log_startup(admin_addr);
    // Rollouts need the store: without a data directory there are none.
    let rollouts = match &registry {
        Some(registry) => {
            let rollouts = crate::rollout::Rollouts::new(gateway.clone(), registry.clone());
            let reopened = rollouts
                .recover()
                .await
                .map_err(|e| anyhow::anyhow!("loading open rollouts: {e}"))?;
            if reopened > 0 {
                tracing::warn!(
                    reopened,
                    "Open rollouts found at startup: paused, traffic on their baselines."
                );
            }
            Some(rollouts)
        }
        None => None,
    };
    let shutdown = listener::Shutdown::new();
    let listeners = vec![
        tokio::spawn(listener::serve_data(
            data,
            data_tls,
            gateway.clone(),
            shutdown.clone(),
        )),
        tokio::spawn(listener::serve_admin(
            admin,
            admin_tls,
            crate::admin::router(gateway.clone(), registry, rollouts.clone(), access),
            shutdown.clone(),
        )),
    ];
    let mut background = spawn_background(&gateway);
    background.extend(rollouts.as_ref().map(|r| r.spawn()));
    Ok(Running {
        background,
        gateway,
        rollouts,
        data_addr,
        admin_addr,
        shutdown,
        listeners,
    })
}

/// Runs the gateway until SIGINT/SIGTERM: data plane, admin API, health
/// checks and the statistics ticker.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    let scheme =
        |tls: &Option<crate::config::TlsFiles>| if tls.is_some() { "https" } else { "http" };
    let (data_scheme, admin_scheme) = (scheme(&config.tls), scheme(&config.admin.tls));
    let running = start(config).await?;
    let (data_addr, admin_addr) = (running.data_addr, running.admin_addr);
    // Tests and scripts read these two lines to find the ports.
    println!("backstop listening: data={data_scheme}://{data_addr}");
    println!("backstop listening: admin={admin_scheme}://{admin_addr}");
    tracing::info!(
        %data_addr,
        %admin_addr,
        models = running.gateway.tables().len(),
        "Backstop gateway started."
    );
    listener::wait_for_signal().await;
    tracing::info!("Shutting down: no new connections; waiting for requests in flight.");
    running.stop(Duration::from_secs(10)).await;
    Ok(())
}

/// The statistics ticker and the active health checker.
pub fn spawn_background(gateway: &Arc<Gateway>) -> Vec<tokio::task::JoinHandle<()>> {
    let ticker = {
        let gateway = gateway.clone();
        tokio::spawn(async move {
            let bucket = Duration::from_millis(gateway.config.stats.bucket_ms);
            // Tick a few times per bucket so a new bucket starts promptly.
            let mut interval = tokio::time::interval((bucket / 4).max(Duration::from_millis(1)));
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                interval.tick().await;
                gateway.tick_stats();
            }
        })
    };
    let health = tokio::spawn(health::run(gateway.clone()));
    vec![ticker, health]
}
