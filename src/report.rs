//! Rollback figures (the seeds' M1–M10) and the annotation feed, both
//! computed from the store: incidents, rollouts and the audit log.
//!
//! | # | figure | field |
//! |---|---|---|
//! | M1 | time to detect | `time_to_detect_s` |
//! | M2 | verdict to swap | `verdict_to_swap_us` |
//! | M3 | time to recovered | `time_to_recovered_s` |
//! | M4 | rollback success rate | `rollback_success_rate` |
//! | M5 | false rollback rate | `false_rollback_rate` |
//! | M6 | share of traffic moved back | `traffic_moved_percent` |
//! | M7 | post-rollback error rate | `post_rollback_error_rate` |
//! | M8 | audit completeness | `audit_completeness` |
//! | M9 | notifications sent | `notifications` |
//! | M10 | rollbacks per rollout | `rollback_rate` |

use crate::incident::Record;
use crate::store::{AuditEntry, AuditFilter, OutboxState, Store, StoreError};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Incidents and rollouts read for a report, at most.
const READ_MAX: usize = 100_000;

/// p50, p95 and max of a figure over the incidents that have it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Distribution {
    pub count: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p50: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p95: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
}

impl Distribution {
    fn of(mut values: Vec<f64>) -> Self {
        values.retain(|v| v.is_finite());
        values.sort_by(f64::total_cmp);
        let at = |q: f64| {
            (!values.is_empty()).then(|| {
                let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
                values[rank - 1]
            })
        };
        Self {
            count: values.len(),
            p50: at(0.5),
            p95: at(0.95),
            max: values.last().copied(),
        }
    }
}

/// Notification deliveries, by state.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Deliveries {
    pub queued: u64,
    pub delivered: u64,
    pub failed: u64,
    pub pending: u64,
}

/// The figures of one model (or of all: `model` is `*`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Figures {
    pub model: String,
    pub rollouts: u64,
    pub rollbacks: u64,
    /// Incidents whose verification is done.
    pub verified: u64,
    pub time_to_detect_s: Distribution,
    pub verdict_to_swap_us: Distribution,
    pub time_to_recovered_s: Distribution,
    /// Rollbacks whose swap worked and whose baseline recovered, over the
    /// verified ones.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollback_success_rate: Option<f64>,
    /// Verified rollbacks where the candidate was no worse than the
    /// baseline after the swap (the trouble was not the candidate's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub false_rollback_rate: Option<f64>,
    /// The candidate's share of traffic when it was rolled back.
    pub traffic_moved_percent: Distribution,
    /// The baseline's failures over its requests in the verification
    /// windows, pooled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub post_rollback_error_rate: Option<f64>,
    /// Share of the audit entries each rollback should have (rollout
    /// created, verdict, incident opened, verified) that are there.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audit_completeness: Option<f64>,
    pub notifications: Deliveries,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollback_rate: Option<f64>,
}

/// `GET /api/v1/report`, `backstop report`: field names are how the
/// figures are checked; keep them stable.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    pub generated_unix_ms: u64,
    /// The whole audit chain verifies (the figures rest on it).
    pub audit_chain_ok: bool,
    pub overall: Figures,
    pub models: Vec<Figures>,
}

/// What one incident contributes.
struct Row {
    model: String,
    rollout: String,
    record: Record,
    incident_id: String,
}

/// Computes the report, for one model or all.
pub fn report(store: &dyn Store, model: Option<&str>, now: u64) -> Result<Report, StoreError> {
    let incidents = store.incidents(model, READ_MAX)?;
    let rollouts = store.rollouts(model, false, READ_MAX)?;
    let audit = store.audit(&AuditFilter {
        model: model.map(str::to_string),
        since_ms: None,
        limit: None,
    })?;
    let chain = store.audit(&AuditFilter::default())?;
    let audit_chain_ok = crate::store::audit::verify(&chain).is_ok();
    let deliveries = deliveries(store, model)?;

    let rows: Vec<Row> = incidents
        .into_iter()
        .filter_map(|r| {
            Some(Row {
                record: serde_json::from_str(&r.record_json).ok()?,
                rollout: r.rollout,
                model: r.model,
                incident_id: r.id,
            })
        })
        .collect();
    let actions: BTreeSet<(String, String)> = audit
        .iter()
        .map(|e: &AuditEntry| (e.draft.target.clone(), e.draft.action.clone()))
        .collect();

    // Rollbacks whose incident never got stored still count against the
    // audit's completeness: their `incident.open` is missing.
    let with_incident: BTreeSet<&str> = rows.iter().map(|r| r.rollout.as_str()).collect();
    let orphans: Vec<(String, String)> = rollouts
        .iter()
        .filter(|r| matches!(r.phase.as_str(), "rolled_back" | "rejected"))
        .filter(|r| !with_incident.contains(r.id.as_str()))
        .map(|r| (r.model.clone(), r.id.clone()))
        .collect();
    let mut per_model: BTreeMap<String, (Vec<&Row>, u64)> = BTreeMap::new();
    for rollout in &rollouts {
        per_model.entry(rollout.model.clone()).or_default().1 += 1;
    }
    for row in &rows {
        per_model.entry(row.model.clone()).or_default().0.push(row);
    }
    let empty = Deliveries::default();
    let models = per_model
        .iter()
        .map(|(name, (rows, rollouts))| {
            let orphans: Vec<&(String, String)> =
                orphans.iter().filter(|(m, _)| m == name).collect();
            figures(
                name,
                rows,
                *rollouts,
                &orphans,
                &actions,
                deliveries.get(name).unwrap_or(&empty),
            )
        })
        .collect::<Vec<_>>();
    let all: Vec<&Row> = rows.iter().collect();
    let mut total = Deliveries::default();
    for d in deliveries.values() {
        total.queued += d.queued;
        total.delivered += d.delivered;
        total.failed += d.failed;
        total.pending += d.pending;
    }
    let all_orphans: Vec<&(String, String)> = orphans.iter().collect();
    let overall = figures(
        "*",
        &all,
        rollouts.len() as u64,
        &all_orphans,
        &actions,
        &total,
    );
    Ok(Report {
        generated_unix_ms: now,
        audit_chain_ok,
        overall,
        models,
    })
}

fn figures(
    model: &str,
    rows: &[&Row],
    rollouts: u64,
    orphans: &[&(String, String)],
    actions: &BTreeSet<(String, String)>,
    deliveries: &Deliveries,
) -> Figures {
    let verified: Vec<&&Row> = rows
        .iter()
        .filter(|r| r.record.verification.is_some())
        .collect();
    let ratio = |num: usize, den: usize| (den > 0).then(|| num as f64 / den as f64);
    let success = verified
        .iter()
        .filter(|r| {
            r.record.summary.swap_ok
                && r.record
                    .verification
                    .as_ref()
                    .is_some_and(|v| v.state == "recovered")
        })
        .count();
    let judged_false: Vec<bool> = verified
        .iter()
        .filter_map(|r| r.record.verification.as_ref()?.candidate_not_worse)
        .collect();
    let (mut failures, mut judged) = (0u64, 0u64);
    for row in &verified {
        if let Some(v) = &row.record.verification {
            failures += v.after.server_errors + v.after.timeouts + v.after.connect_errors;
            judged += v.after.judged();
        }
    }
    // Each rollback should leave these four entries (the last once
    // verified); the share present is the audit's completeness.
    let (mut present, mut expected) = (0usize, 0usize);
    for row in rows {
        let rollout_target = format!("{}/{}", row.model, row.rollout);
        let incident_target = format!("{}/{}", row.model, row.incident_id);
        let mut needed = vec![
            (rollout_target.clone(), "rollout.create"),
            (rollout_target, "rollout.verdict"),
            (incident_target.clone(), "incident.open"),
        ];
        if row.record.verification.is_some() {
            needed.push((incident_target, "incident.verify"));
        }
        expected += needed.len();
        present += needed
            .iter()
            .filter(|(t, a)| actions.contains(&(t.clone(), a.to_string())))
            .count();
    }
    for (model, rollout) in orphans {
        let target = format!("{model}/{rollout}");
        expected += 3;
        present += ["rollout.create", "rollout.verdict"]
            .iter()
            .filter(|a| actions.contains(&(target.clone(), a.to_string())))
            .count();
    }
    Figures {
        model: model.to_string(),
        rollouts,
        rollbacks: (rows.len() + orphans.len()) as u64,
        verified: verified.len() as u64,
        time_to_detect_s: Distribution::of(
            rows.iter()
                .filter_map(|r| r.record.summary.detection_ms)
                .map(|ms| ms as f64 / 1000.0)
                .collect(),
        ),
        verdict_to_swap_us: Distribution::of(
            rows.iter()
                .filter(|r| r.record.summary.swap_ok)
                .map(|r| r.record.summary.verdict_to_swap_us)
                .collect(),
        ),
        time_to_recovered_s: Distribution::of(
            verified
                .iter()
                .filter_map(|r| r.record.verification.as_ref()?.time_to_recovered_ms)
                .map(|ms| ms as f64 / 1000.0)
                .collect(),
        ),
        rollback_success_rate: ratio(success, verified.len()),
        false_rollback_rate: ratio(
            judged_false.iter().filter(|f| **f).count(),
            judged_false.len(),
        ),
        traffic_moved_percent: Distribution::of(
            rows.iter()
                .map(|r| r.record.summary.candidate_percent)
                .collect(),
        ),
        post_rollback_error_rate: (judged > 0).then(|| failures as f64 / judged as f64),
        audit_completeness: ratio(present, expected),
        notifications: deliveries.clone(),
        rollback_rate: (rollouts > 0)
            .then(|| (rows.len() + orphans.len()) as f64 / rollouts as f64),
    }
}

/// Notification deliveries per model.
fn deliveries(
    store: &dyn Store,
    model: Option<&str>,
) -> Result<BTreeMap<String, Deliveries>, StoreError> {
    let mut per_model: BTreeMap<String, Deliveries> = BTreeMap::new();
    for row in store.notifications(None, READ_MAX)? {
        if model.is_some_and(|m| m != row.model) {
            continue;
        }
        let d = per_model.entry(row.model.clone()).or_default();
        d.queued += 1;
        match row.state {
            OutboxState::Pending => d.pending += 1,
            OutboxState::Delivered => d.delivered += 1,
            OutboxState::Failed => d.failed += 1,
        }
    }
    Ok(per_model)
}

/// One annotation, in the shape Grafana's JSON data sources read.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Annotation {
    /// Unix milliseconds.
    pub time: u64,
    pub title: String,
    pub text: String,
    pub tags: Vec<String>,
}

/// Rollout and incident events from the audit log, oldest first: every
/// step, rollback, promotion, incident and verification.
pub fn annotations(
    store: &dyn Store,
    model: Option<&str>,
    from_ms: Option<u64>,
    to_ms: Option<u64>,
    limit: usize,
) -> Result<Vec<Annotation>, StoreError> {
    let entries = store.audit(&AuditFilter {
        model: model.map(str::to_string),
        since_ms: from_ms,
        limit: None,
    })?;
    let events: Vec<AuditEntry> = entries
        .into_iter()
        .filter(|e| {
            e.draft.action.starts_with("rollout.") || e.draft.action.starts_with("incident.")
        })
        .filter(|e| to_ms.is_none_or(|to| e.at_ms <= to))
        .collect();
    // The newest `limit`: those are what a dashboard looks at.
    let skip = events.len().saturating_sub(limit);
    Ok(events
        .into_iter()
        .skip(skip)
        .map(|e| {
            let model = e
                .draft
                .target
                .split('/')
                .next()
                .unwrap_or_default()
                .to_string();
            Annotation {
                time: e.at_ms,
                title: format!("{} {}", e.draft.action, e.draft.target),
                text: e.draft.reason.clone(),
                tags: vec![
                    "backstop".into(),
                    model,
                    e.draft.action.clone(),
                    e.draft.actor.clone(),
                ],
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distributions_use_nearest_rank() {
        let d = Distribution::of(vec![3.0, 1.0, 2.0, 4.0, f64::NAN]);
        assert_eq!(d.count, 4);
        assert_eq!((d.p50, d.p95, d.max), (Some(2.0), Some(4.0), Some(4.0)));
        assert_eq!(Distribution::of(vec![]).p50, None);
    }

    /// A rollback whose incident never got stored still counts: as a
    /// rollback, and as an `incident.open` missing from the audit log.
    #[test]
    fn a_rollback_without_its_incident_lowers_audit_completeness() {
        use crate::store::sqlite::SqliteStore;
        use crate::store::{AuditDraft, RolloutRecord};
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("backstop.db")).unwrap();
        let record = RolloutRecord {
            id: "ro-1".into(),
            model: "m".into(),
            candidate: "v2".into(),
            baseline: "v1".into(),
            phase: "rolled_back".into(),
            open: false,
            policy_json: "{}".into(),
            state_json: "{}".into(),
            created_unix_ms: 1,
            updated_unix_ms: 2,
        };
        let draft = |action: &str| AuditDraft {
            actor: "controller".into(),
            action: action.into(),
            target: "m/ro-1".into(),
            ..Default::default()
        };
        store
            .create_rollout(&record, draft("rollout.create"))
            .unwrap();
        store.append_audit(draft("rollout.verdict")).unwrap();
        // Another model whose name shares the prefix is not counted.
        store
            .append_audit(AuditDraft {
                target: "m_x/ro-9".into(),
                ..draft("rollout.create")
            })
            .unwrap();
        let report = report(&store, Some("m"), 10).unwrap();
        assert_eq!(report.overall.rollbacks, 1);
        assert_eq!(report.overall.rollback_rate, Some(1.0));
        let completeness = report.overall.audit_completeness.unwrap();
        assert!((completeness - 2.0 / 3.0).abs() < 1e-9, "{completeness}");
        assert!(report.audit_chain_ok);
    }
}
