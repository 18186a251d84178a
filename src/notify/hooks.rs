//! Rollback hooks: HTTP calls the policy asks for after the swap (cache
//! invalidation, a feature flag off). They run beside the rollback, never
//! before it, all at once, each bounded by its timeout and retries, so a
//! slow or failing hook delays nothing and changes nothing but its result.

use super::http::HttpClient;
use backstop_core::policy::Hook;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

/// First back-off between hook attempts; doubles each retry.
const HOOK_BACKOFF: Duration = Duration::from_millis(200);
const HOOK_BACKOFF_MAX: Duration = Duration::from_secs(10);
/// A timeout of zero would fail every attempt at once; treat it as this.
const HOOK_TIMEOUT_MIN: Duration = Duration::from_millis(1);
/// Policies cap retries at 10; this guards a hook built in code.
const HOOK_RETRIES_MAX: u32 = 10;

/// What one hook came to, for the incident.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HookResult {
    pub name: String,
    pub url: String,
    pub method: String,
    /// The last attempt answered 2xx.
    pub ok: bool,
    /// The last attempt's status, when it got an answer.
    pub status: Option<u16>,
    pub attempts: u32,
    /// Why the last attempt failed.
    pub error: Option<String>,
    /// From the first attempt to the result, back-off included.
    pub duration_ms: f64,
}

/// Runs every hook concurrently with `body` as the JSON request body and
/// returns their results in the hooks' order. Never panics; a caller
/// spawns it after the swap and records what it returns.
pub async fn run_hooks(hooks: &[Hook], body: &serde_json::Value) -> Vec<HookResult> {
    let client = HttpClient::new();
    let body = Bytes::from(body.to_string());
    let runs = hooks
        .iter()
        .map(|hook| run_hook(&client, hook, body.clone()));
    futures_util::future::join_all(runs).await
}

async fn run_hook(client: &HttpClient, hook: &Hook, body: Bytes) -> HookResult {
    let started = Instant::now();
    let timeout = Duration::from_millis(hook.timeout.as_ms()).max(HOOK_TIMEOUT_MIN);
    let tries = hook.retries.min(HOOK_RETRIES_MAX) + 1;
    let mut result = HookResult {
        name: hook.name.clone(),
        url: hook.url.clone(),
        method: hook.method.clone(),
        ok: false,
        status: None,
        attempts: 0,
        error: None,
        duration_ms: 0.0,
    };
    for attempt in 1..=tries {
        result.attempts = attempt;
        result.status = None;
        let (error, permanent) = match client
            .send(
                &hook.method,
                &hook.url,
                &hook.headers,
                body.clone(),
                timeout,
            )
            .await
        {
            Ok(reply) if (200..300).contains(&reply.status) => {
                result.status = Some(reply.status);
                result.ok = true;
                result.error = None;
                break;
            }
            Ok(reply) => {
                result.status = Some(reply.status);
                (super::status_error(&reply), false)
            }
            Err(failure) => (failure.message, failure.permanent),
        };
        tracing::warn!(
            hook = %hook.name,
            attempt,
            of = tries,
            error = %error,
            "rollback hook attempt failed"
        );
        result.error = Some(error);
        // A malformed URL, method or header fails the same way every time.
        if permanent || attempt == tries {
            break;
        }
        tokio::time::sleep(super::backoff(attempt, HOOK_BACKOFF, HOOK_BACKOFF_MAX)).await;
    }
    result.duration_ms = started.elapsed().as_secs_f64() * 1000.0;
    result
}

#[cfg(test)]
mod tests {
    use super::super::test_server::{answering, closed_url, hanging};
    use super::*;
    use backstop_core::policy::Period;
    use std::collections::BTreeMap;

    fn hook(name: &str, url: &str, timeout_ms: u64, retries: u32) -> Hook {
        Hook {
            name: name.into(),
            url: url.into(),
            method: "POST".into(),
            timeout: Period::from_ms(timeout_ms),
            retries,
            headers: BTreeMap::from([("x-backstop-hook".to_string(), name.to_string())]),
        }
    }

    async fn run(hooks: &[Hook]) -> Vec<HookResult> {
        let body = serde_json::json!({"incident": "inc-1", "model": "fraud"});
        tokio::time::timeout(Duration::from_secs(20), run_hooks(hooks, &body))
            .await
            .expect("hooks finish within their timeouts")
    }

    #[tokio::test]
    async fn a_failing_hook_is_retried_and_recorded_beside_a_good_one() {
        let good = answering(&[200]).await;
        let broken = answering(&[500]).await;
        let refused = closed_url().await;
        let results = run(&[
            hook("cache", &good.url, 2_000, 2),
            hook("flag", &refused, 2_000, 2),
            hook("ticket", &broken.url, 2_000, 1),
        ])
        .await;
        assert_eq!(results.len(), 3);

        let cache = &results[0];
        assert_eq!(cache.name, "cache");
        assert!(cache.ok);
        assert_eq!(
            (cache.status, cache.attempts, &cache.error),
            (Some(200), 1, &None)
        );
        assert_eq!(good.received().len(), 1);
        let body: serde_json::Value = serde_json::from_slice(&good.received()[0].body).unwrap();
        assert_eq!(body["incident"], "inc-1");

        let flag = &results[1];
        assert!(!flag.ok);
        assert_eq!(flag.attempts, 3);
        assert_eq!(flag.status, None);
        assert!(flag.error.is_some());

        let ticket = &results[2];
        assert!(!ticket.ok);
        assert_eq!(ticket.attempts, 2);
        assert_eq!(ticket.status, Some(500));
        assert_eq!(ticket.error.as_deref(), Some("HTTP 500"));
        assert_eq!(broken.received().len(), 2);
    }

    #[tokio::test]
    async fn a_hanging_hook_is_cut_by_its_timeout() {
        let server = hanging().await;
        let good = answering(&[204]).await;
        let started = Instant::now();
        let results = run(&[
            hook("slow", &server.url, 150, 0),
            hook("fast", &good.url, 2_000, 0),
        ])
        .await;
        assert!(started.elapsed() < Duration::from_secs(5));
        let slow = &results[0];
        assert!(!slow.ok);
        assert_eq!(slow.attempts, 1);
        assert_eq!(slow.error.as_deref(), Some("timed out after 150 ms"));
        assert!(slow.duration_ms >= 150.0, "{}", slow.duration_ms);
        assert!(results[1].ok);
        assert_eq!(results[1].status, Some(204));
    }

    #[tokio::test]
    async fn a_malformed_hook_fails_at_once_without_retries() {
        let mut bad = hook("bad", "not a url", 1_000, 5);
        let results = run(std::slice::from_ref(&bad)).await;
        assert_eq!(results[0].attempts, 1);
        assert!(results[0].error.as_deref().unwrap().starts_with("bad URL"));
        bad.url = "http://127.0.0.1:9/".into();
        bad.method = "NOT A METHOD".into();
        let results = run(&[bad]).await;
        assert_eq!(results[0].attempts, 1);
        assert!(run(&[]).await.is_empty());
    }
}
