//! Active health checks, and reports of versions losing or regaining all
//! their healthy endpoints.
//!
//! Every `health.interval_ms` each endpoint referenced by a current table
//! is checked once (concurrently, each bounded by `health.timeout_ms`):
//! HTTP endpoints with a GET of the model's `health_path` (2xx = healthy),
//! gRPC endpoints with OIP `ServerReady`.

use super::body::UpstreamBody;
use super::grpc;
use super::upstream::Endpoint;
use super::{Event, Gateway};
use crate::config::Protocol;
use bytes::Bytes;
use http_body_util::BodyExt;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

pub async fn run(gateway: Arc<Gateway>) {
    let interval = Duration::from_millis(gateway.config.health.interval_ms);
    let timeout = Duration::from_millis(gateway.config.health.timeout_ms);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut version_healthy: HashMap<(String, String), bool> = HashMap::new();
    loop {
        ticker.tick().await;
        let tables = gateway.tables.load_full();
        let mut seen = HashSet::new();
        let mut checks = Vec::new();
        for table in tables.values() {
            for version in &table.versions {
                for endpoint in &version.endpoints {
                    if seen.insert(Arc::as_ptr(endpoint) as usize) {
                        let endpoint = endpoint.clone();
                        let client = table.client.clone();
                        checks.push(async move {
                            let healthy = tokio::time::timeout(timeout, probe(&client, &endpoint))
                                .await
                                .unwrap_or(false);
                            (endpoint, healthy)
                        });
                    }
                }
            }
        }
        for (endpoint, healthy) in futures_util::future::join_all(checks).await {
            // Close idle connections the server dropped or that aged out.
            endpoint.pool.reap();
            if healthy && endpoint.is_ejected(gateway.now_ms()) {
                // The server answers its health check again: let traffic
                // probe it instead of waiting out the whole back-off.
                endpoint.clear_ejection();
            }
            if endpoint.set_active_health(healthy) {
                let kind = if healthy {
                    "endpoint_healthy"
                } else {
                    "endpoint_unhealthy"
                };
                tracing::warn!(endpoint = %endpoint.url, healthy, "Endpoint health changed.");
                gateway.events.push(Event {
                    kind,
                    endpoint: Some(endpoint.url.clone()),
                    detail: format!("active check of {}", endpoint.health_path),
                    ..Event::default()
                });
            }
        }
        report_version_health(&gateway, &tables, &mut version_healthy);
    }
}

/// Logs and records each version whose availability changed since the
/// last round.
fn report_version_health(
    gateway: &Gateway,
    tables: &super::Tables,
    last: &mut HashMap<(String, String), bool>,
) {
    let now_ms = gateway.now_ms();
    for table in tables.values() {
        let any_healthy = table.versions.iter().any(|v| v.is_healthy(now_ms));
        for version in &table.versions {
            let healthy = version.is_healthy(now_ms);
            let key = (table.model.clone(), version.name.clone());
            let before = last.insert(key, healthy).unwrap_or(true);
            if before == healthy {
                continue;
            }
            let (kind, detail) = if healthy {
                (
                    "version_available",
                    "a healthy endpoint is back".to_string(),
                )
            } else if any_healthy {
                (
                    "version_unavailable",
                    "no healthy endpoint: new traffic goes to the other versions".to_string(),
                )
            } else {
                (
                    "version_unavailable",
                    "no healthy endpoint, and no other version is healthy".to_string(),
                )
            };
            tracing::warn!(model = %table.model, version = %version.name, healthy, "{detail}");
            gateway.events.push(Event {
                kind,
                model: Some(table.model.clone()),
                version: Some(version.name.clone()),
                detail,
                ..Event::default()
            });
        }
    }
}

async fn probe(client: &super::upstream::UpstreamClient, endpoint: &Arc<Endpoint>) -> bool {
    let request = match endpoint.protocol {
        Protocol::Http => endpoint.target(&endpoint.health_path).ok().and_then(|uri| {
            http::Request::get(uri)
                .body(UpstreamBody::full(Bytes::new()))
                .ok()
        }),
        Protocol::Grpc => endpoint
            .target(&format!("{}ServerReady", grpc::SERVICE_PREFIX))
            .ok()
            .and_then(|uri| {
                http::Request::post(uri)
                    .version(http::Version::HTTP_2)
                    .header(http::header::CONTENT_TYPE, "application/grpc")
                    .header("te", "trailers")
                    .body(UpstreamBody::full(Bytes::from(grpc::frame(&[]))))
                    .ok()
            }),
    };
    let Some(request) = request else {
        return false;
    };
    let (head, body) = request.into_parts();
    let timeout = Duration::from_secs(3600); // the caller bounds the whole probe
    let Ok(response) = client.send(endpoint, head, body, timeout).await else {
        return false;
    };
    if !response.status().is_success() {
        return false;
    }
    match endpoint.protocol {
        Protocol::Http => {
            // Drain so the pooled connection can be reused.
            let _ = response.into_body().collect().await;
            true
        }
        Protocol::Grpc => {
            let header_status = grpc::status_of(response.headers());
            let Ok(collected) = response.into_body().collect().await else {
                return false;
            };
            let status = collected
                .trailers()
                .and_then(grpc::status_of)
                .or(header_status);
            // ServerReadyResponse { bool ready = 1 } framed: 0,0,0,0,2, 8,1
            status == Some(grpc::code::OK) && collected.to_bytes().ends_with(&[0x08, 0x01])
        }
    }
}
