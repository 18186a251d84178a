//! What each receiver format puts on the wire. Rendering is a pure
//! function of the notification, so every retry sends the same bytes.

use super::Notification;
use backstop_core::policy::{Severity, WebhookFormat};
use serde_json::{json, Map, Value};
use std::time::{Duration, UNIX_EPOCH};

/// Slack's limits: header text, section text, field text, fields per
/// section (longer is refused with `invalid_blocks`).
const SLACK_HEADER_MAX: usize = 150;
const SLACK_TEXT_MAX: usize = 3000;
const SLACK_FIELD_MAX: usize = 2000;
const SLACK_FIELDS_MAX: usize = 10;
/// The last millisecond of year 9999: RFC 3339 cannot write later ones.
const RFC3339_MAX_MS: u64 = 253_402_300_799_999;

/// `page` for critical, `ticket` for warning: how on-call tools route it.
pub fn route(severity: Severity) -> &'static str {
    match severity {
        Severity::Critical => "page",
        Severity::Warning => "ticket",
    }
}

/// The request body for a receiver of this format.
pub fn render(format: WebhookFormat, n: &Notification) -> Value {
    match format {
        WebhookFormat::Json => generic(n),
        WebhookFormat::Slack => slack(n),
        WebhookFormat::Alertmanager => alertmanager(n),
    }
}

/// Backstop's own document: the notification plus its route.
pub fn generic(n: &Notification) -> Value {
    let mut value = serde_json::to_value(n).unwrap_or_else(|_| json!({}));
    if let Value::Object(map) = &mut value {
        map.insert("route".into(), route(n.severity).into());
    }
    value
}

/// A Slack incoming-webhook message: `text` for notifications and clients
/// without blocks, `blocks` for the channel.
pub fn slack(n: &Notification) -> Value {
    let severity = n.severity.name().to_uppercase();
    let text = format!(
        "[{severity}] {}: {} (model {}, incident {})",
        n.title, n.summary, n.model, n.incident
    );
    let mut facts: Vec<(String, String)> = vec![
        ("Model".into(), n.model.clone()),
        (
            "Severity".into(),
            format!("{severity} ({})", route(n.severity)),
        ),
        ("Incident".into(), n.incident.clone()),
    ];
    if let Some(rollout) = &n.rollout {
        facts.push(("Rollout".into(), rollout.clone()));
    }
    facts.extend(n.fields.iter().map(|(k, v)| (k.clone(), v.clone())));
    let fields: Vec<Value> = facts
        .iter()
        .take(SLACK_FIELDS_MAX)
        .map(|(name, value)| {
            let text = format!("*{}*\n{}", mrkdwn(name), mrkdwn(value));
            json!({"type": "mrkdwn", "text": clip(&text, SLACK_FIELD_MAX)})
        })
        .collect();
    let mut blocks = vec![
        json!({
            "type": "header",
            "text": {"type": "plain_text", "text": clip(&n.title, SLACK_HEADER_MAX), "emoji": true}
        }),
        json!({
            "type": "section",
            "text": {"type": "mrkdwn", "text": clip(&mrkdwn(&n.summary), SLACK_TEXT_MAX)}
        }),
        json!({"type": "section", "fields": fields}),
    ];
    // Fields past Slack's ten per section go on as plain lines.
    let rest: Vec<String> = facts
        .iter()
        .skip(SLACK_FIELDS_MAX)
        .map(|(name, value)| format!("*{}*: {}", mrkdwn(name), mrkdwn(value)))
        .collect();
    if !rest.is_empty() {
        blocks.push(json!({
            "type": "section",
            "text": {"type": "mrkdwn", "text": clip(&rest.join("\n"), SLACK_TEXT_MAX)}
        }));
    }
    blocks.push(json!({
        "type": "context",
        "elements": [{"type": "mrkdwn", "text": format!("{} · {}", mrkdwn(&n.kind), rfc3339(n.at_unix_ms))}]
    }));
    json!({"text": clip(&text, SLACK_TEXT_MAX), "blocks": blocks})
}

/// Alertmanager's `POST /api/v2/alerts` body: one alert whose labels name
/// the incident and kind only, so every resend of it is the same alert
/// and Alertmanager dedupes it; the numbers go in the annotations.
pub fn alertmanager(n: &Notification) -> Value {
    // The end of an earlier alert carries that alert's labels, so
    // Alertmanager resolves it rather than opening another.
    let (kind, severity) = match n.resolves {
        Some(opened) => ("incident.opened", opened),
        None => (n.kind.as_str(), n.severity),
    };
    let mut labels = Map::new();
    labels.insert("alertname".into(), alertname(kind).into());
    labels.insert("model".into(), n.model.clone().into());
    labels.insert("severity".into(), severity.name().into());
    labels.insert("incident".into(), n.incident.clone().into());
    // An empty label is no label to Alertmanager; leave it out instead.
    if let Some(rollout) = n.rollout.as_ref().filter(|r| !r.is_empty()) {
        labels.insert("rollout".into(), rollout.clone().into());
    }
    labels.insert("route".into(), route(severity).into());
    let mut description = n.summary.clone();
    for (name, value) in &n.fields {
        description.push_str(&format!("\n{name}: {value}"));
    }
    let mut annotations = Map::new();
    annotations.insert("summary".into(), n.title.clone().into());
    annotations.insert("description".into(), description.into());
    for (name, value) in &n.fields {
        if is_label_name(name) && !annotations.contains_key(name) {
            annotations.insert(name.clone(), value.clone().into());
        }
    }
    let mut alert = json!({
        "labels": labels,
        "annotations": annotations,
        "startsAt": rfc3339(n.at_unix_ms),
    });
    if n.resolves.is_some() {
        alert["endsAt"] = rfc3339(n.at_unix_ms).into();
    }
    json!([alert])
}

/// `incident.opened` is a rollback; other kinds get their own alert name
/// (`incident.not_recovered` → `BackstopNotRecovered`).
pub fn alertname(kind: &str) -> String {
    if kind == "incident.opened" {
        return "BackstopRollback".into();
    }
    let rest = kind.strip_prefix("incident.").unwrap_or(kind);
    let mut name = String::from("Backstop");
    for word in rest.split(|c: char| !c.is_ascii_alphanumeric()) {
        let mut chars = word.chars();
        if let Some(first) = chars.next() {
            name.push(first.to_ascii_uppercase());
            name.extend(chars);
        }
    }
    name
}

/// Alertmanager's label name rule, for fields copied into annotations.
fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// RFC 3339 with milliseconds, clamped to what the format can write.
pub fn rfc3339(unix_ms: u64) -> String {
    let at = UNIX_EPOCH + Duration::from_millis(unix_ms.min(RFC3339_MAX_MS));
    humantime::format_rfc3339_millis(at).to_string()
}

/// Escapes the three characters Slack's mrkdwn treats as markup.
fn mrkdwn(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// At most `max` characters, with an ellipsis when cut.
fn clip(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut cut: String = text.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn sample(severity: Severity) -> Notification {
        Notification {
            incident: "inc-7".into(),
            model: "fraud".into(),
            rollout: Some("ro-3".into()),
            kind: "incident.opened".into(),
            severity,
            title: "fraud rolled back to v1".into(),
            summary: "p95 latency of v2 rose 45% (<180ms> vs 124ms) & errors".into(),
            fields: BTreeMap::from([
                ("trigger".to_string(), "latency_p95".to_string()),
                ("candidate".to_string(), "v2".to_string()),
                ("baseline".to_string(), "v1".to_string()),
            ]),
            at_unix_ms: 1_700_000_000_123,
            resolves: None,
        }
    }

    /// Recovery ends the rollback's alert: same labels, with `endsAt`.
    #[test]
    fn a_recovery_resolves_the_rollback_alert_in_alertmanager() {
        let opened = alertmanager(&sample(Severity::Critical));
        let recovered = alertmanager(&Notification {
            kind: "incident.recovered".into(),
            severity: Severity::Warning,
            resolves: Some(Severity::Critical),
            ..sample(Severity::Warning)
        });
        assert_eq!(opened[0]["labels"], recovered[0]["labels"]);
        assert!(opened[0].get("endsAt").is_none());
        assert!(recovered[0]["endsAt"].is_string());
        // Other formats show it as what it is.
        let generic = generic(&Notification {
            kind: "incident.recovered".into(),
            resolves: Some(Severity::Critical),
            ..sample(Severity::Warning)
        });
        assert_eq!(generic["kind"], "incident.recovered");
        assert_eq!(generic["route"], "ticket");
    }

    #[test]
    fn generic_json_is_the_notification_and_its_route() {
        let page = generic(&sample(Severity::Critical));
        assert_eq!(page["route"], "page");
        assert_eq!(page["severity"], "critical");
        assert_eq!(page["incident"], "inc-7");
        assert_eq!(page["fields"]["trigger"], "latency_p95");
        assert_eq!(page["at_unix_ms"], 1_700_000_000_123u64);
        let back: Notification = serde_json::from_value(page).unwrap();
        assert_eq!(back.title, "fraud rolled back to v1");
        assert_eq!(generic(&sample(Severity::Warning))["route"], "ticket");
    }

    #[test]
    fn slack_has_a_text_fallback_a_header_and_mrkdwn_fields() {
        let body = slack(&sample(Severity::Critical));
        let text = body["text"].as_str().unwrap();
        assert!(
            text.starts_with("[CRITICAL] fraud rolled back to v1"),
            "{text}"
        );
        let blocks = body["blocks"].as_array().unwrap();
        assert_eq!(blocks[0]["type"], "header");
        assert_eq!(blocks[0]["text"]["type"], "plain_text");
        assert_eq!(blocks[0]["text"]["text"], "fraud rolled back to v1");
        assert_eq!(blocks[1]["type"], "section");
        assert_eq!(blocks[1]["text"]["type"], "mrkdwn");
        // Markup characters are escaped, not interpreted.
        let summary = blocks[1]["text"]["text"].as_str().unwrap();
        assert!(summary.contains("&lt;180ms&gt;") && summary.contains("&amp;"));
        let fields = blocks[2]["fields"].as_array().unwrap();
        assert!(fields.iter().all(|f| f["type"] == "mrkdwn"));
        let texts: Vec<&str> = fields.iter().map(|f| f["text"].as_str().unwrap()).collect();
        assert!(texts.contains(&"*Model*\nfraud"), "{texts:?}");
        assert!(texts.contains(&"*trigger*\nlatency_p95"), "{texts:?}");
        assert_eq!(blocks.last().unwrap()["type"], "context");
    }

    #[test]
    fn slack_stays_within_its_limits() {
        let mut n = sample(Severity::Warning);
        n.title = "t".repeat(400);
        for i in 0..20 {
            n.fields.insert(format!("f{i:02}"), "x".repeat(3000));
        }
        let body = slack(&n);
        let blocks = body["blocks"].as_array().unwrap();
        assert_eq!(
            blocks[0]["text"]["text"].as_str().unwrap().chars().count(),
            SLACK_HEADER_MAX
        );
        assert_eq!(
            blocks[2]["fields"].as_array().unwrap().len(),
            SLACK_FIELDS_MAX
        );
        for f in blocks[2]["fields"].as_array().unwrap() {
            assert!(f["text"].as_str().unwrap().chars().count() <= SLACK_FIELD_MAX);
        }
        assert!(blocks[3]["text"]["text"].as_str().unwrap().chars().count() <= SLACK_TEXT_MAX);
    }

    #[test]
    fn alertmanager_gets_one_alert_with_stable_labels() {
        let n = sample(Severity::Critical);
        let body = alertmanager(&n);
        let alerts = body.as_array().unwrap();
        assert_eq!(alerts.len(), 1);
        let alert = &alerts[0];
        assert_eq!(
            alert["labels"],
            json!({
                "alertname": "BackstopRollback",
                "model": "fraud",
                "severity": "critical",
                "incident": "inc-7",
                "rollout": "ro-3",
                "route": "page",
            })
        );
        assert_eq!(alert["annotations"]["summary"], "fraud rolled back to v1");
        let description = alert["annotations"]["description"].as_str().unwrap();
        assert!(
            description.contains("trigger: latency_p95"),
            "{description}"
        );
        assert_eq!(alert["startsAt"], "2023-11-14T22:13:20.123Z");
        // Other numbers, later: the labels, Alertmanager's identity, stay.
        let mut later = n.clone();
        later.summary = "now 60%".into();
        later.fields.insert("value".into(), "0.6".into());
        later.at_unix_ms += 5_000;
        assert_eq!(alertmanager(&later)[0]["labels"], alert["labels"]);
    }

    #[test]
    fn alertmanager_names_other_kinds_and_skips_a_missing_rollout() {
        let mut n = sample(Severity::Warning);
        n.kind = "incident.not_recovered".into();
        n.rollout = None;
        let alert = &alertmanager(&n)[0];
        assert_eq!(alert["labels"]["alertname"], "BackstopNotRecovered");
        assert_eq!(alert["labels"]["route"], "ticket");
        assert!(alert["labels"].get("rollout").is_none());
        assert_eq!(
            alertname("verification-failed"),
            "BackstopVerificationFailed"
        );
        assert_eq!(alertname(""), "Backstop");
    }

    #[test]
    fn times_past_year_9999_are_clamped_not_a_panic() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(u64::MAX), "9999-12-31T23:59:59.999Z");
    }
}
