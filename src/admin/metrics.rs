//! `/metrics` in the Prometheus text exposition format (0.0.4).
//!
//! Counters come from each version's lifetime totals (retired buckets plus
//! the live ring), so they only go up. Labels are model, version and
//! endpoint: bounded by configuration, never by request.

use crate::gateway::Gateway;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use std::fmt::Write;
use std::sync::atomic::Ordering;

/// Upper bounds of the exported latency histogram, in seconds.
const LATENCY_BOUNDS_S: [f64; 15] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Prometheus metrics.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "gateway",
    description = "Open: no token needed.",
    responses((status = 200, description = "Prometheus text format 0.0.4", body = String, content_type = "text/plain"))
)]
pub async fn render(State(state): State<super::AdminState>) -> impl IntoResponse {
    let gateway = state.gateway;
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text(&gateway),
    )
}

/// Escapes a label value (backslash, quote, newline).
fn label(value: &str) -> String {
    value
        .replace('\\', r"\\")
        .replace('"', r#"\""#)
        .replace('\n', r"\n")
}

pub(super) fn text(gateway: &Gateway) -> String {
    let mut out = String::with_capacity(8192);
    let states = gateway.version_states();

    let _ = writeln!(
        out,
        "# HELP backstop_requests_total Requests answered, by how they ended."
    );
    let _ = writeln!(out, "# TYPE backstop_requests_total counter");
    let mut lifetimes = Vec::with_capacity(states.len());
    for state in &states {
        let (counts, latency) = state.stats.lifetime();
        let (m, v) = (label(&state.model), label(&state.version));
        for (outcome, value) in [
            ("success", counts.successes),
            ("server_error", counts.server_errors),
            ("client_error", counts.client_errors),
            ("timeout", counts.timeouts),
            ("connect_error", counts.connect_errors),
            ("cancelled", counts.cancelled),
        ] {
            let _ = writeln!(
                out,
                "backstop_requests_total{{model=\"{m}\",version=\"{v}\",outcome=\"{outcome}\"}} {value}"
            );
        }
        lifetimes.push((m, v, counts, latency));
    }

    let _ = writeln!(
        out,
        "# HELP backstop_request_duration_seconds Time to the end of the upstream's answer."
    );
    let _ = writeln!(out, "# TYPE backstop_request_duration_seconds histogram");
    for (m, v, _, latency) in &lifetimes {
        for bound in LATENCY_BOUNDS_S {
            let count = latency.count_at_most((bound * 1e6) as u64);
            let _ = writeln!(
                out,
                "backstop_request_duration_seconds_bucket{{model=\"{m}\",version=\"{v}\",le=\"{bound}\"}} {count}"
            );
        }
        let total = latency.count();
        let _ = writeln!(
            out,
            "backstop_request_duration_seconds_bucket{{model=\"{m}\",version=\"{v}\",le=\"+Inf\"}} {total}"
        );
        let _ = writeln!(
            out,
            "backstop_request_duration_seconds_sum{{model=\"{m}\",version=\"{v}\"}} {}",
            latency.sum_estimate() as f64 / 1e6
        );
        let _ = writeln!(
            out,
            "backstop_request_duration_seconds_count{{model=\"{m}\",version=\"{v}\"}} {total}"
        );
    }

    let _ = writeln!(
        out,
        "# HELP backstop_response_bytes_total Response body bytes passed to clients."
    );
    let _ = writeln!(out, "# TYPE backstop_response_bytes_total counter");
    for (m, v, counts, _) in &lifetimes {
        let _ = writeln!(
            out,
            "backstop_response_bytes_total{{model=\"{m}\",version=\"{v}\"}} {}",
            counts.response_bytes
        );
    }

    for (name, help, read) in [
        (
            "backstop_shadow_requests_total",
            "Requests copied to this version as shadow traffic.",
            (|s: &crate::gateway::VersionState| s.shadow_sent.load(Ordering::Relaxed))
                as fn(&crate::gateway::VersionState) -> u64,
        ),
        (
            "backstop_shadow_dropped_total",
            "Shadow copies dropped (too many in flight, or body too large to copy).",
            |s| s.shadow_dropped.load(Ordering::Relaxed),
        ),
        (
            "backstop_rerouted_unhealthy_total",
            "Requests sent elsewhere because this version had no healthy endpoint.",
            |s| s.rerouted_unhealthy.load(Ordering::Relaxed),
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} counter");
        for state in &states {
            let _ = writeln!(
                out,
                "{name}{{model=\"{}\",version=\"{}\"}} {}",
                label(&state.model),
                label(&state.version),
                read(state)
            );
        }
    }

    let tables = gateway.tables();
    let mut models: Vec<_> = tables.values().collect();
    models.sort_by(|a, b| a.model.cmp(&b.model));
    let now_ms = gateway.now_ms();

    let _ = writeln!(
        out,
        "# HELP backstop_routing_table_generation Generation of the model's current routing table."
    );
    let _ = writeln!(out, "# TYPE backstop_routing_table_generation gauge");
    for table in &models {
        let _ = writeln!(
            out,
            "backstop_routing_table_generation{{model=\"{}\"}} {}",
            label(&table.model),
            table.generation
        );
    }
    let _ = writeln!(
        out,
        "# HELP backstop_routing_table_swaps_total Routing tables installed since start."
    );
    let _ = writeln!(out, "# TYPE backstop_routing_table_swaps_total counter");
    let _ = writeln!(
        out,
        "backstop_routing_table_swaps_total {}",
        gateway.swaps.load(Ordering::Relaxed)
    );

    let _ = writeln!(
        out,
        "# HELP backstop_version_weight Routing weight of each version in the current table."
    );
    let _ = writeln!(out, "# TYPE backstop_version_weight gauge");
    for table in &models {
        for version in &table.versions {
            let _ = writeln!(
                out,
                "backstop_version_weight{{model=\"{}\",version=\"{}\"}} {}",
                label(&table.model),
                label(&version.name),
                version.weight
            );
        }
    }
    let _ = writeln!(out, "# HELP backstop_upstream_healthy Whether an endpoint may take traffic (active check passed, not ejected).");
    let _ = writeln!(out, "# TYPE backstop_upstream_healthy gauge");
    for table in &models {
        for version in &table.versions {
            for endpoint in &version.endpoints {
                let _ = writeln!(
                    out,
                    "backstop_upstream_healthy{{model=\"{}\",version=\"{}\",endpoint=\"{}\"}} {}",
                    label(&table.model),
                    label(&version.name),
                    label(&endpoint.url),
                    u8::from(endpoint.is_healthy(now_ms))
                );
            }
        }
    }
    let _ = writeln!(
        out,
        "# HELP backstop_events_total Health and routing events recorded since start."
    );
    let _ = writeln!(out, "# TYPE backstop_events_total counter");
    let _ = writeln!(out, "backstop_events_total {}", gateway.events.total());
    let rollout_events = gateway.rollout_events.snapshot();
    let _ = writeln!(
        out,
        "# HELP backstop_rollout_events_total Rollout steps, rollbacks, promotions and incident events, by model (for deploy and rollback annotations)."
    );
    let _ = writeln!(out, "# TYPE backstop_rollout_events_total counter");
    for ((model, event), (count, _)) in &rollout_events {
        let _ = writeln!(
            out,
            "backstop_rollout_events_total{{model=\"{}\",event=\"{}\"}} {count}",
            label(model),
            label(event)
        );
    }
    let _ = writeln!(
        out,
        "# HELP backstop_rollout_event_last_timestamp_seconds When each rollout event last happened."
    );
    let _ = writeln!(
        out,
        "# TYPE backstop_rollout_event_last_timestamp_seconds gauge"
    );
    for ((model, event), (_, last_ms)) in &rollout_events {
        let _ = writeln!(
            out,
            "backstop_rollout_event_last_timestamp_seconds{{model=\"{}\",event=\"{}\"}} {:.3}",
            label(model),
            label(event),
            *last_ms as f64 / 1000.0
        );
    }
    feedback(&mut out, gateway);
    signals(&mut out, &states);
    out
}

/// The model-aware signals' counters, per version: what a rollout's
/// input checks, answer reading, agreement pairs and fallbacks saw.
fn signals(out: &mut String, states: &[std::sync::Arc<crate::gateway::VersionState>]) {
    use backstop_core::policy::FallbackReason;
    type Read = fn(&crate::gateway::signals::SignalTotals) -> &std::sync::atomic::AtomicU64;
    let counters: [(&str, &str, Read); 6] = [
        (
            "backstop_signal_inputs_checked_total",
            "Requests checked against the version's input signature (sampled).",
            |t| &t.inputs_checked,
        ),
        (
            "backstop_signal_schema_violations_total",
            "Checked requests that broke the version's input signature.",
            |t| &t.schema_violations,
        ),
        (
            "backstop_signal_outputs_read_total",
            "Answers read for their prediction.",
            |t| &t.outputs_read,
        ),
        (
            "backstop_signal_invalid_outputs_total",
            "Answers read that did not hold the prediction the policy names.",
            |t| &t.invalid_outputs,
        ),
        (
            "backstop_signal_paired_total",
            "Requests both the candidate and the baseline answered (mirror or shadow), on the candidate.",
            |t| &t.paired,
        ),
        (
            "backstop_signal_agreed_total",
            "Of those, the ones where the predictions matched.",
            |t| &t.agreed,
        ),
    ];
    for (name, help, read) in counters {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} counter");
        for state in states {
            let (m, v) = (label(&state.model), label(&state.version));
            let value = read(&state.signals.totals).load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}{{model=\"{m}\",version=\"{v}\"}} {value}");
        }
    }
    let _ = writeln!(
        out,
        "# HELP backstop_fallbacks_total Candidate requests answered by the baseline instead, by reason."
    );
    let _ = writeln!(out, "# TYPE backstop_fallbacks_total counter");
    for state in states {
        let (m, v) = (label(&state.model), label(&state.version));
        for (reason, counter) in FallbackReason::ALL
            .iter()
            .zip(&state.signals.totals.fallbacks)
        {
            let _ = writeln!(
                out,
                "backstop_fallbacks_total{{model=\"{m}\",version=\"{v}\",reason=\"{}\"}} {}",
                reason.name(),
                counter.load(Ordering::Relaxed)
            );
        }
    }
}

/// The feedback API's counters and KPI sums, per version (KPI names are
/// bounded per model, so labels stay bounded).
fn feedback(out: &mut String, gateway: &Gateway) {
    let feedback = &gateway.feedback;
    let versions = feedback.all_versions();
    let _ = writeln!(
        out,
        "# HELP backstop_feedback_total Feedback items joined to the version that answered, by result."
    );
    let _ = writeln!(out, "# TYPE backstop_feedback_total counter");
    let mut lifetimes = Vec::with_capacity(versions.len());
    for version in &versions {
        let (m, v) = (label(&version.model), label(&version.version));
        let counts = version.counts();
        for (result, value) in [
            ("accepted", counts.accepted),
            ("duplicate", counts.duplicate),
            ("expired", counts.expired),
        ] {
            let _ = writeln!(
                out,
                "backstop_feedback_total{{model=\"{m}\",version=\"{v}\",result=\"{result}\"}} {value}"
            );
        }
        lifetimes.push((m, v, version.lifetime()));
    }
    let _ = writeln!(
        out,
        "# HELP backstop_feedback_unjoined_total Feedback items joined to no version: unknown request ids, or refused for their content."
    );
    let _ = writeln!(out, "# TYPE backstop_feedback_unjoined_total counter");
    for (reason, value) in [
        ("unknown", feedback.unknown_total()),
        ("rejected", feedback.rejected_total()),
    ] {
        let _ = writeln!(
            out,
            "backstop_feedback_unjoined_total{{reason=\"{reason}\"}} {value}"
        );
    }
    let _ = writeln!(
        out,
        "# HELP backstop_feedback_join_entries Answered requests the feedback join table remembers now."
    );
    let _ = writeln!(out, "# TYPE backstop_feedback_join_entries gauge");
    let _ = writeln!(out, "backstop_feedback_join_entries {}", feedback.len());
    let _ = writeln!(
        out,
        "# HELP backstop_feedback_join_evicted_total Answered requests forgotten early because the join table was full."
    );
    let _ = writeln!(out, "# TYPE backstop_feedback_join_evicted_total counter");
    let _ = writeln!(
        out,
        "backstop_feedback_join_evicted_total {}",
        feedback.evicted_total()
    );
    for (name, help, read) in [
        (
            "backstop_feedback_labeled_total",
            "Feedback items that carried the true label.",
            (|w: &backstop_core::analysis::KpiWindow| w.labeled)
                as fn(&backstop_core::analysis::KpiWindow) -> u64,
        ),
        (
            "backstop_feedback_correct_total",
            "Labelled items whose recorded prediction matched the label.",
            |w| w.correct,
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} counter");
        for (m, v, lifetime) in &lifetimes {
            let _ = writeln!(
                out,
                "{name}{{model=\"{m}\",version=\"{v}\"}} {}",
                read(lifetime)
            );
        }
    }
    // A summary without quantiles: `_sum` may go down (negative KPIs
    // such as refunds), `_count` only up.
    let _ = writeln!(
        out,
        "# HELP backstop_kpi KPI values reported for the version's answers (sum and count)."
    );
    let _ = writeln!(out, "# TYPE backstop_kpi summary");
    for (m, v, lifetime) in &lifetimes {
        for (kpi, moments) in &lifetime.kpis {
            let k = label(kpi);
            let _ = writeln!(
                out,
                "backstop_kpi_sum{{model=\"{m}\",version=\"{v}\",kpi=\"{k}\"}} {}",
                moments.sum
            );
            let _ = writeln!(
                out,
                "backstop_kpi_count{{model=\"{m}\",version=\"{v}\",kpi=\"{k}\"}} {}",
                moments.n
            );
        }
    }
}
