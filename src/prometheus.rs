//! Prometheus as a metrics source for rollout triggers: a PromQL template
//! with `{{model}}` and `{{version}}` filled in, evaluated as an instant
//! query (`POST /api/v1/query`) once for the candidate and once for the
//! baseline.
//!
//! A trigger needs one number it can trust, so anything else is an error
//! with a stable code, never a value: no answer, a refused query, no
//! series, several series (the template must aggregate), NaN or infinity,
//! a sample older than `max_staleness_ms`, or an answer that is not a
//! query result. The answer is read up to [`RESPONSE_MAX`] bytes and parsed
//! by [`parse_answer`], which never panics (unit tests feed it garbage).

use crate::config::PrometheusConfig;
use crate::notify::http::{FetchError, HttpClient};
use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Most bytes of an answer read: one series is well under 1 KiB, so a
/// larger answer is a template that matched far too much.
pub const RESPONSE_MAX: usize = 1024 * 1024;
/// How much of an error body is quoted in [`SourceError::HttpStatus`].
const BODY_QUOTE: usize = 300;

/// A configured Prometheus server. Cheap to clone; make it inside the
/// runtime that uses it (the connection pool belongs to that runtime).
#[derive(Clone)]
pub struct Prometheus {
    query_url: String,
    timeout: Duration,
    max_staleness_ms: u64,
    client: HttpClient,
}

/// One number from Prometheus, with when it was sampled and the query
/// that produced it (the evidence a verdict quotes).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Reading {
    pub value: f64,
    pub sample_unix_ms: u64,
    pub query: String,
}

/// Why a query gave no usable number. None of these may be read as
/// "healthy": the caller decides what a missing number means.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum SourceError {
    #[error("Prometheus is unreachable: {0}")]
    Unreachable(String),
    #[error("Prometheus did not answer in time")]
    Timeout,
    #[error("Prometheus answered HTTP {status}: {body}")]
    HttpStatus { status: u16, body: String },
    #[error("Prometheus refused the query ({error_type}): {error}")]
    BadQuery { error_type: String, error: String },
    #[error("the query matched no series (no traffic yet, or labels that do not match)")]
    NoData,
    #[error("the query returned {0} series but a trigger needs one number: aggregate it, e.g. sum(...) or max(...)")]
    ManySeries(usize),
    #[error("the newest sample is {age_ms} ms old, older than max_staleness_ms")]
    Stale { age_ms: u64 },
    #[error("the query's value is NaN or infinite (e.g. a ratio over no traffic)")]
    NotANumber,
    #[error("Prometheus sent something that is not a query result: {0}")]
    BadResponse(String),
}

impl SourceError {
    /// Stable code for logs, API answers and verdicts.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unreachable(_) => "unreachable",
            Self::Timeout => "timeout",
            Self::HttpStatus { .. } => "http_status",
            Self::BadQuery { .. } => "bad_query",
            Self::NoData => "no_data",
            Self::ManySeries(_) => "many_series",
            Self::Stale { .. } => "stale",
            Self::NotANumber => "not_a_number",
            Self::BadResponse(_) => "bad_response",
        }
    }
}

impl Prometheus {
    /// A client for the server `config` names. Fails only on a URL that
    /// config checks would refuse too.
    pub fn new(config: &PrometheusConfig) -> Result<Self, String> {
        crate::config::check_prometheus_url(&config.url)?;
        Ok(Self {
            query_url: format!("{}/api/v1/query", config.url.trim_end_matches('/')),
            timeout: Duration::from_millis(config.timeout_ms),
            max_staleness_ms: config.max_staleness_ms,
            client: HttpClient::new(),
        })
    }

    /// `template` with `{{model}}` and `{{version}}` (inner spaces allowed)
    /// replaced by the values escaped for a PromQL double-quoted string, so
    /// write them inside quotes: `version="{{version}}"`. Other `{{...}}`
    /// are left as they are (Prometheus will refuse them).
    pub fn render(template: &str, model: &str, version: &str) -> String {
        let mut out = String::with_capacity(template.len() + model.len() + version.len());
        let mut rest = template;
        while let Some(start) = rest.find("{{") {
            let Some(len) = rest[start + 2..].find("}}") else {
                break;
            };
            let name = rest[start + 2..start + 2 + len].trim();
            let end = start + 2 + len + 2;
            out.push_str(&rest[..start]);
            match name {
                "model" => escape_into(&mut out, model),
                "version" => escape_into(&mut out, version),
                _ => out.push_str(&rest[start..end]),
            }
            rest = &rest[end..];
        }
        out.push_str(rest);
        out
    }

    /// Renders `template` for `version` and evaluates it now.
    pub async fn query(
        &self,
        template: &str,
        model: &str,
        version: &str,
    ) -> Result<Reading, SourceError> {
        let query = Prometheus::render(template, model, version);
        let now_ms = now_unix_ms();
        let form = format!(
            "query={}&time={}.{:03}",
            form_encode(&query),
            now_ms / 1000,
            now_ms % 1000
        );
        let fetched = self
            .client
            .fetch(
                "POST",
                &self.query_url,
                "application/x-www-form-urlencoded",
                Bytes::from(form),
                self.timeout,
                RESPONSE_MAX,
            )
            .await
            .map_err(|e| match e {
                FetchError::Timeout => SourceError::Timeout,
                FetchError::Malformed(m) | FetchError::Unreachable(m) => {
                    SourceError::Unreachable(m)
                }
                FetchError::TooLarge { limit } => {
                    SourceError::BadResponse(format!("answer larger than {limit} bytes"))
                }
            })?;
        parse_answer(
            fetched.status,
            &fetched.body,
            query,
            now_unix_ms(),
            self.max_staleness_ms,
        )
    }
}

/// `backstop prometheus query`: evaluates `template` for each version on
/// the Prometheus that the config file names and prints what a trigger
/// would read. Returns whether every version got a number.
pub async fn cli_query(
    config: &std::path::Path,
    template: &str,
    model: &str,
    versions: &[String],
    json: bool,
) -> anyhow::Result<bool> {
    let loaded = crate::config::Config::load(config)?;
    let Some(settings) = loaded.prometheus else {
        anyhow::bail!("{}: no `prometheus` section", config.display());
    };
    let prometheus = Prometheus::new(&settings).map_err(anyhow::Error::msg)?;
    let mut all_read = true;
    let mut rows = Vec::with_capacity(versions.len());
    for version in versions {
        let result = prometheus.query(template, model, version).await;
        all_read &= result.is_ok();
        let query = Prometheus::render(template, model, version);
        if json {
            rows.push(match result {
                Ok(reading) => serde_json::json!({
                    "version": version,
                    "query": reading.query,
                    "value": reading.value,
                    "sample_unix_ms": reading.sample_unix_ms,
                }),
                Err(error) => serde_json::json!({
                    "version": version,
                    "query": query,
                    "error": { "code": error.code(), "message": error.to_string() },
                }),
            });
        } else {
            match result {
                Ok(reading) => println!("{version}: {}    {query}", reading.value),
                Err(error) => println!("{version}: {}: {error}    {query}", error.code()),
            }
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    }
    Ok(all_read)
}

/// Turns an answer of `/api/v1/query` into a reading or an error; `now_ms`
/// and `max_staleness_ms` judge the sample's age. Public for the fuzz
/// target: it must never panic, whatever the bytes.
pub fn parse_answer(
    status: u16,
    body: &[u8],
    query: String,
    now_ms: u64,
    max_staleness_ms: u64,
) -> Result<Reading, SourceError> {
    let json: Option<Value> = serde_json::from_slice(body).ok();
    let field = |name: &str| {
        json.as_ref()
            .and_then(|j| j.get(name))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    // Prometheus explains a refusal in the same JSON shape whatever the
    // status (400 bad_data, 422 execution, 503 timeout).
    if field("status").as_deref() == Some("error") {
        let error_type = field("errorType").unwrap_or_default();
        let error = field("error").unwrap_or_default();
        return Err(match error_type.as_str() {
            "timeout" | "canceled" => SourceError::Timeout,
            "bad_data" | "execution" => SourceError::BadQuery { error_type, error },
            _ if (200..300).contains(&status) => SourceError::BadQuery { error_type, error },
            _ => SourceError::HttpStatus {
                status,
                body: format!("{error_type}: {error}"),
            },
        });
    }
    if !(200..300).contains(&status) {
        let text = String::from_utf8_lossy(body);
        return Err(SourceError::HttpStatus {
            status,
            body: text.trim().chars().take(BODY_QUOTE).collect(),
        });
    }
    let json = json.ok_or_else(|| SourceError::BadResponse("not JSON".into()))?;
    if json.get("status").and_then(Value::as_str) != Some("success") {
        return Err(SourceError::BadResponse(
            "no \"status\": \"success\"".into(),
        ));
    }
    let data = json
        .get("data")
        .ok_or_else(|| SourceError::BadResponse("no \"data\"".into()))?;
    let result = data.get("result");
    let sample = match data.get("resultType").and_then(Value::as_str) {
        Some("scalar") => result,
        Some("vector") => {
            let series = result
                .and_then(Value::as_array)
                .ok_or_else(|| SourceError::BadResponse("vector without a list".into()))?;
            match series.len() {
                0 => return Err(SourceError::NoData),
                1 => series[0].get("value"),
                n => return Err(SourceError::ManySeries(n)),
            }
        }
        Some(other @ ("matrix" | "string")) => {
            return Err(SourceError::BadResponse(format!(
                "result type {other}: a trigger needs an instant vector or a scalar (no range selector)"
            )))
        }
        _ => return Err(SourceError::BadResponse("unknown resultType".into())),
    };
    let (seconds, text) = match sample.and_then(Value::as_array).map(Vec::as_slice) {
        Some([Value::Number(seconds), Value::String(text)]) => (seconds.as_f64(), text),
        _ => {
            return Err(SourceError::BadResponse(
                "a sample is not [timestamp, \"value\"]".into(),
            ))
        }
    };
    let sample_unix_ms = match seconds {
        Some(s) if (0.0..1e13).contains(&s) => (s * 1000.0).round() as u64,
        _ => return Err(SourceError::BadResponse("bad sample timestamp".into())),
    };
    // Prometheus writes NaN, +Inf and -Inf; Rust parses all three.
    let value: f64 = text
        .parse()
        .map_err(|_| SourceError::BadResponse(format!("value {text:?} is not a number")))?;
    if !value.is_finite() {
        return Err(SourceError::NotANumber);
    }
    let age_ms = now_ms.saturating_sub(sample_unix_ms);
    if age_ms > max_staleness_ms {
        return Err(SourceError::Stale { age_ms });
    }
    Ok(Reading {
        value,
        sample_unix_ms,
        query,
    })
}

fn escape_into(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str(r"\\"),
            '"' => out.push_str(r#"\""#),
            '\n' => out.push_str(r"\n"),
            '\r' => out.push_str(r"\r"),
            '\t' => out.push_str(r"\t"),
            c => out.push(c),
        }
    }
}

/// `application/x-www-form-urlencoded` for one value.
fn form_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len() * 3 / 2);
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000_000;

    fn parse(status: u16, body: &str) -> Result<Reading, SourceError> {
        parse_answer(status, body.as_bytes(), "q".into(), NOW, 60_000)
    }

    fn vector(samples: &[(&str, f64, &str)]) -> String {
        let series: Vec<String> = samples
            .iter()
            .map(|(version, t, v)| {
                format!(r#"{{"metric":{{"version":"{version}"}},"value":[{t},"{v}"]}}"#)
            })
            .collect();
        format!(
            r#"{{"status":"success","data":{{"resultType":"vector","result":[{}]}}}}"#,
            series.join(",")
        )
    }

    #[test]
    fn render_fills_and_escapes_the_placeholders() {
        let t = r#"sum(rate(x{model="{{model}}",version="{{ version }}"}[1m]))"#;
        assert_eq!(
            Prometheus::render(t, "fraud", "v2"),
            r#"sum(rate(x{model="fraud",version="v2"}[1m]))"#
        );
        assert_eq!(
            Prometheus::render(r#"x{v="{{version}}"}"#, "m", "a\"b\\c\nd"),
            r#"x{v="a\"b\\c\nd"}"#
        );
        // Repeats, unknown names and unclosed braces.
        assert_eq!(
            Prometheus::render("{{version}}/{{version}} {{job}} {{version", "m", "v1"),
            "v1/v1 {{job}} {{version"
        );
        assert_eq!(Prometheus::render("", "m", "v"), "");
        // A value that looks like a placeholder is not expanded again.
        assert_eq!(
            Prometheus::render("{{model}}", "{{version}}", "v"),
            "{{version}}"
        );
    }

    #[test]
    fn form_encoding_keeps_only_unreserved_bytes() {
        assert_eq!(
            form_encode(r#"a{b="c d"}+é"#),
            "a%7Bb%3D%22c%20d%22%7D%2B%C3%A9"
        );
    }

    #[test]
    fn one_series_and_scalars_are_readings() {
        let reading = parse(200, &vector(&[("v1", 1_700_000_000.5, "0.25")])).unwrap();
        assert_eq!(reading.value, 0.25);
        assert_eq!(reading.sample_unix_ms, 1_700_000_000_500);
        assert_eq!(reading.query, "q");
        let scalar =
            r#"{"status":"success","data":{"resultType":"scalar","result":[1700000000,"42"]}}"#;
        assert_eq!(parse(200, scalar).unwrap().value, 42.0);
        // Warnings and extra fields are ignored.
        let extra = r#"{"status":"success","warnings":["w"],"data":{"resultType":"scalar","result":[1700000000,"1e3"],"x":1}}"#;
        assert_eq!(parse(200, extra).unwrap().value, 1000.0);
    }

    #[test]
    fn every_result_shape_that_is_not_one_number_is_an_error() {
        assert_eq!(parse(200, &vector(&[])), Err(SourceError::NoData));
        let two = vector(&[("v1", 1_700_000_000.0, "1"), ("v2", 1_700_000_000.0, "2")]);
        let error = parse(200, &two).unwrap_err();
        assert_eq!(error, SourceError::ManySeries(2));
        assert!(error.to_string().contains("aggregate"), "{error}");
        for v in ["NaN", "+Inf", "-Inf"] {
            let answer = vector(&[("v1", 1_700_000_000.0, v)]);
            assert_eq!(parse(200, &answer), Err(SourceError::NotANumber), "{v}");
        }
        let old = vector(&[("v1", 1_699_999_000.0, "1")]);
        assert_eq!(
            parse(200, &old),
            Err(SourceError::Stale { age_ms: 1_000_000 })
        );
        // A sample from slightly in the future (clock skew) is fresh.
        assert!(parse(200, &vector(&[("v1", 1_700_000_001.0, "1")])).is_ok());
        let matrix = r#"{"status":"success","data":{"resultType":"matrix","result":[]}}"#;
        let error = parse(200, matrix).unwrap_err();
        assert_eq!(error.code(), "bad_response");
        assert!(error.to_string().contains("matrix"), "{error}");
    }

    #[test]
    fn refusals_keep_their_type_and_message() {
        let bad = r#"{"status":"error","errorType":"bad_data","error":"1:5: parse error: unclosed left parenthesis"}"#;
        assert_eq!(
            parse(400, bad),
            Err(SourceError::BadQuery {
                error_type: "bad_data".into(),
                error: "1:5: parse error: unclosed left parenthesis".into()
            })
        );
        let exec = r#"{"status":"error","errorType":"execution","error":"many-to-many matching"}"#;
        assert_eq!(parse(422, exec).unwrap_err().code(), "bad_query");
        let timeout = r#"{"status":"error","errorType":"timeout","error":"query timed out"}"#;
        assert_eq!(parse(503, timeout), Err(SourceError::Timeout));
        let unavailable = r#"{"status":"error","errorType":"unavailable","error":"shutting down"}"#;
        assert_eq!(
            parse(503, unavailable),
            Err(SourceError::HttpStatus {
                status: 503,
                body: "unavailable: shutting down".into()
            })
        );
        let error = parse(502, " <html>bad gateway</html>\n").unwrap_err();
        assert_eq!(
            error,
            SourceError::HttpStatus {
                status: 502,
                body: "<html>bad gateway</html>".into()
            }
        );
        let long = "x".repeat(10_000);
        match parse(500, &long) {
            Err(SourceError::HttpStatus { body, .. }) => assert_eq!(body.len(), BODY_QUOTE),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn garbage_is_a_bad_response_never_a_panic() {
        for body in [
            "",
            "null",
            "[]",
            "{}",
            "not json",
            r#"{"status":"success"}"#,
            r#"{"status":"success","data":{}}"#,
            r#"{"status":"success","data":{"resultType":"vector"}}"#,
            r#"{"status":"success","data":{"resultType":"vector","result":{}}}"#,
            r#"{"status":"success","data":{"resultType":"vector","result":[{}]}}"#,
            r#"{"status":"success","data":{"resultType":"vector","result":[{"value":[]}]}}"#,
            r#"{"status":"success","data":{"resultType":"vector","result":[{"value":["1","2"]}]}}"#,
            r#"{"status":"success","data":{"resultType":"vector","result":[{"value":[1,2]}]}}"#,
            r#"{"status":"success","data":{"resultType":"vector","result":[{"value":[1,"x"]}]}}"#,
            r#"{"status":"success","data":{"resultType":"scalar","result":[-1,"1"]}}"#,
            r#"{"status":"success","data":{"resultType":"scalar","result":[1e300,"1"]}}"#,
            r#"{"status":"success","data":{"resultType":"scalar","result":[1,"1",3]}}"#,
            r#"{"status":"success","data":{"resultType":"histogram","result":[]}}"#,
            r#"{"status":"success","data":{"resultType":7,"result":[]}}"#,
        ] {
            let error = parse(200, body).unwrap_err();
            assert_eq!(error.code(), "bad_response", "{body}: {error}");
        }
        // Random bytes, and every prefix of a good answer.
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..2000 {
            let len = rng.usize(0..64);
            let bytes: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
            let _ = parse_answer(rng.u16(..), &bytes, String::new(), rng.u64(..), rng.u64(..));
        }
        let good = vector(&[("v1", 1_700_000_000.0, "1")]);
        for end in 0..good.len() {
            let _ = parse(200, &good[..end]);
        }
    }

    #[test]
    fn codes_are_distinct() {
        let all = [
            SourceError::Unreachable(String::new()),
            SourceError::Timeout,
            SourceError::HttpStatus {
                status: 500,
                body: String::new(),
            },
            SourceError::BadQuery {
                error_type: String::new(),
                error: String::new(),
            },
            SourceError::NoData,
            SourceError::ManySeries(2),
            SourceError::Stale { age_ms: 1 },
            SourceError::NotANumber,
            SourceError::BadResponse(String::new()),
        ];
        let codes: std::collections::BTreeSet<_> = all.iter().map(SourceError::code).collect();
        assert_eq!(codes.len(), all.len());
    }

    #[test]
    fn a_bad_url_is_refused_when_made() {
        let config = |url: &str| PrometheusConfig {
            url: url.into(),
            timeout_ms: 1000,
            max_staleness_ms: 1000,
            interval_ms: 1000,
        };
        assert!(Prometheus::new(&config("ftp://x")).is_err());
        let prometheus = Prometheus::new(&config("http://127.0.0.1:9090/prom/")).unwrap();
        assert_eq!(
            prometheus.query_url,
            "http://127.0.0.1:9090/prom/api/v1/query"
        );
    }
}
