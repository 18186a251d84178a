//! Reference profiles: how `backstop profile build` makes one from request
//! bodies (one per line, as the gateway sees them), and how the registry
//! reads one given at registration, within its bounds.
//!
//! A profile is the distribution of each input feature, sketched exactly
//! as the gateway sketches live traffic ([`InputSignature::check_observing`]
//! then [`Signals::sketch_number`] / [`Signals::sketch_category`]), so a
//! `drift_psi` trigger with `reference: profile` compares like with like.

use crate::signature::InputSignature;
use backstop_core::analysis::profile::{ProfileError, PROFILE_BYTES_MAX, PROFILE_FEATURES_MAX};
use backstop_core::analysis::{Profile, Signals, Sketch};
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::BufRead;

fn refuse(field: impl Into<String>, message: impl Into<String>) -> ProfileError {
    ProfileError {
        field: field.into(),
        message: message.into(),
    }
}

/// Reads a profile file's text: at most [`PROFILE_BYTES_MAX`] bytes.
pub fn parse_text(text: &[u8]) -> Result<Profile, ProfileError> {
    if text.len() > PROFILE_BYTES_MAX {
        return Err(refuse(
            "profile",
            format!(
                "{} bytes, over the {PROFILE_BYTES_MAX}-byte limit",
                text.len()
            ),
        ));
    }
    let value: serde_json::Value =
        serde_json::from_slice(text).map_err(|e| refuse("profile", e.to_string()))?;
    parse_value(value)
}

/// Reads a profile from JSON (an API request's `profile` field), within
/// the bounds; a sketch that cannot be read is named
/// (`profile.features.amount: ...`).
pub fn parse_value(value: serde_json::Value) -> Result<Profile, ProfileError> {
    let size = serde_json::to_vec(&value).map_or(usize::MAX, |v| v.len());
    if size > PROFILE_BYTES_MAX {
        return Err(refuse(
            "profile",
            format!("{size} bytes of JSON, over the {PROFILE_BYTES_MAX}-byte limit"),
        ));
    }
    let serde_json::Value::Object(mut object) = value else {
        return Err(refuse(
            "profile",
            "expected an object {\"features\": {NAME: SKETCH, ...}}",
        ));
    };
    if let Some(key) = object.keys().find(|k| k.as_str() != "features") {
        return Err(refuse(
            format!("profile.{key}"),
            "unknown field (a profile has only `features`)",
        ));
    }
    let Some(serde_json::Value::Object(features)) = object.remove("features") else {
        return Err(refuse(
            "profile.features",
            "expected an object of sketches by feature name",
        ));
    };
    if features.len() > PROFILE_FEATURES_MAX {
        return Err(refuse(
            "profile.features",
            format!(
                "{} features, more than {PROFILE_FEATURES_MAX}",
                features.len()
            ),
        ));
    }
    let mut profile = Profile::default();
    for (name, sketch) in features {
        let sketch: Sketch = serde_json::from_value(sketch)
            .map_err(|e| refuse(format!("profile.features.{name}"), e.to_string()))?;
        profile.features.insert(name, sketch);
    }
    // Names and the count, as a built profile is checked.
    profile.check()?;
    Ok(profile)
}

/// Lines whose problems are kept for the summary.
const ERRORS_SHOWN: usize = 5;

/// What `profile build` read, and the profile.
#[derive(Debug, Serialize)]
pub struct Built {
    #[serde(skip)]
    pub profile: Profile,
    /// Non-empty lines read.
    pub lines: u64,
    /// Lines that fit the signature and went into the profile.
    pub used: u64,
    /// Lines that did not (not JSON, not UTF-8, or against the signature):
    /// left out.
    pub bad: u64,
    /// The first few bad lines: `line N: problem`.
    pub errors: Vec<String>,
    /// Values sketched per feature (numbers and categories; nulls apart).
    pub values: BTreeMap<String, u64>,
    /// Signature features no line gave a value for: not in the profile.
    pub missing: Vec<String>,
    /// An error reading the input that ended it early.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_error: Option<String>,
}

/// Builds the profile of every feature of `signature` from request bodies,
/// one per line. Never panics: a line that is not JSON or does not fit the
/// signature is counted as bad and left out.
pub fn build(signature: &InputSignature, mut input: impl BufRead) -> Built {
    let features: Vec<String> = signature
        .feature_names()
        .into_iter()
        .map(str::to_string)
        .collect();
    let mut signals = Signals::default();
    let mut built = Built {
        profile: Profile::default(),
        lines: 0,
        used: 0,
        bad: 0,
        errors: Vec::new(),
        values: BTreeMap::new(),
        missing: Vec::new(),
        read_error: None,
    };
    let mut line = Vec::new();
    let mut number = 0u64;
    loop {
        line.clear();
        match input.read_until(b'\n', &mut line) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                built.read_error = Some(format!("after line {number}: {e}"));
                break;
            }
        }
        number += 1;
        let body = line.trim_ascii();
        if body.is_empty() {
            continue;
        }
        built.lines += 1;
        let report = signature.check_observing(body, &features);
        if let Some(violation) = report.violations.first() {
            built.bad += 1;
            if built.errors.len() < ERRORS_SHOWN {
                let field = if violation.field.is_empty() {
                    String::new()
                } else {
                    format!("{}: ", violation.field)
                };
                built
                    .errors
                    .push(format!("line {number}: {field}{}", violation.detail));
            }
            continue;
        }
        built.used += 1;
        report.sketch_into(&mut signals);
    }
    // The values the scores compare: finite numbers, present categories.
    built.values = signals
        .features
        .iter()
        .map(|(name, sketch)| (name.clone(), sketch.count()))
        .filter(|(_, n)| *n > 0)
        .collect();
    built.missing = features
        .iter()
        .filter(|f| !signals.features.contains_key(f.as_str()))
        .cloned()
        .collect();
    built.profile = Profile {
        features: signals.features,
    };
    built
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn signature() -> InputSignature {
        InputSignature::from_registered(&json!({
            "type": "object",
            "properties": {
                "amount": {"type": "number"},
                "country": {"type": "string"},
                "note": {"type": "string"}
            },
            "required": ["amount", "country"]
        }))
        .unwrap()
    }

    #[test]
    fn a_profile_is_built_from_good_lines_and_bad_ones_are_counted() {
        let mut text = String::new();
        for i in 0..100 {
            let country = if i % 2 == 0 { "fr" } else { "de" };
            text.push_str(&format!(
                "{{\"amount\": {}, \"country\": \"{country}\"}}\n",
                i as f64 * 1.5
            ));
        }
        text.push_str("not json\n\n");
        text.push_str("{\"amount\": \"high\", \"country\": \"fr\"}\n");
        text.push_str("{\"country\": \"fr\"}\n");
        text.push_str("\u{0}\u{ff}\n");
        let mut bytes = text.into_bytes();
        bytes.extend_from_slice(&[0xff, 0xfe, b'\n']);
        let built = build(&signature(), &bytes[..]);
        assert_eq!(built.lines, 105);
        assert_eq!(built.used, 100);
        assert_eq!(built.bad, 5);
        assert_eq!(built.errors.len(), 5);
        assert!(
            built.errors[0].starts_with("line 101: "),
            "{:?}",
            built.errors
        );
        assert!(
            built.errors[1].starts_with("line 103: amount: "),
            "{:?}",
            built.errors
        );
        assert_eq!(built.values["amount"], 100);
        assert_eq!(built.values["country"], 100);
        assert_eq!(built.missing, vec!["note"]);
        assert_eq!(built.profile.feature_names(), vec!["amount", "country"]);
        assert_eq!(built.profile.features["amount"].count(), 100);
        // What it writes reads back, within the bounds.
        let text = serde_json::to_vec(&built.profile).unwrap();
        assert_eq!(parse_text(&text).unwrap(), built.profile);
    }

    #[test]
    fn nothing_readable_gives_an_empty_profile() {
        let built = build(&signature(), &b"[1, 2]\n{\n"[..]);
        assert_eq!((built.lines, built.used, built.bad), (2, 0, 2));
        assert!(built.profile.features.is_empty());
    }

    #[test]
    fn profiles_out_of_bounds_are_refused_naming_the_field() {
        let error = parse_text(&vec![b' '; PROFILE_BYTES_MAX + 1]).unwrap_err();
        assert_eq!(error.field, "profile");
        assert!(error.message.contains("limit"), "{error}");
        let mut features = serde_json::Map::new();
        for i in 0..=PROFILE_FEATURES_MAX {
            features.insert(
                format!("f{i}"),
                json!({"kind": "categorical", "counts": {}}),
            );
        }
        let error = parse_value(json!({ "features": features })).unwrap_err();
        assert_eq!(error.field, "profile.features");
        assert!(error.message.contains("257 features"), "{error}");
        let error = parse_value(json!({
            "features": {"amount": {"kind": "numeric", "layout": 9, "bins": []}}
        }))
        .unwrap_err();
        assert_eq!(error.field, "profile.features.amount");
        assert!(error.message.contains("layout 9"), "{error}");
        let error = parse_value(json!({"features": {"a": {"kind": "weird"}}})).unwrap_err();
        assert_eq!(error.field, "profile.features.a");
        let error = parse_value(json!({"feature": {}})).unwrap_err();
        assert_eq!(error.field, "profile.feature");
        assert_eq!(parse_value(json!([])).unwrap_err().field, "profile");
        assert_eq!(parse_text(b"{").unwrap_err().field, "profile");
    }
}
