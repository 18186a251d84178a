//! Redaction of captured bodies, before they are kept anywhere.
//!
//! A [`Redactor`] turns raw body bytes into a [`CapturedBody`]: JSON with
//! the named fields replaced, text, or "omitted" with the size and why.
//! It is applied before a sample enters a ring, so a redacted value never
//! exists in the ring, in an incident, or on disk.
//!
//! - JSON: an object key equal to a listed name, at any depth, has its
//!   value replaced by `"[redacted]"` (`redact`) or by `"sha256:<hex>"`
//!   (`hash`: HMAC-SHA256 of the value's JSON text).
//! - OIP tensors (`{"name": "ssn", "datatype": ..., "data": [...]}` in
//!   `inputs` / `outputs`, or anywhere): a listed `name` redacts `data`
//!   whole, or hashes each element.
//! - Not JSON while names are listed: never kept (the fields cannot be
//!   found). Without names: UTF-8 text kept as text, binary omitted.
//!
//! The hash key is random per process: equal values correlate within one
//! run, but a hash in an incident file cannot be brute-forced offline
//! (an SSN has only 10⁹ values; an unkeyed hash would be a lookup table).

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::sync::OnceLock;

/// What replaces a redacted value.
pub const REDACTED: &str = "[redacted]";

/// A body as kept in a sample: `{"json": ...}`, `{"text": "..."}` or
/// `{"omitted": {"bytes": N, "reason": "..."}}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CapturedBody {
    /// A JSON body, already redacted.
    Json(Value),
    /// UTF-8 text (only when no field names are listed).
    Text(String),
    /// Not kept: its size and why.
    Omitted { bytes: u64, reason: String },
}

impl CapturedBody {
    pub fn omitted(bytes: u64, reason: impl Into<String>) -> Self {
        CapturedBody::Omitted {
            bytes,
            reason: reason.into(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Action {
    Hash,
    Redact,
}

/// Field and tensor names to redact or hash.
#[derive(Clone, Debug, Default)]
pub struct Redactor {
    redact: HashSet<String>,
    hash: HashSet<String>,
}

impl Redactor {
    pub fn new(redact: &[String], hash: &[String]) -> Self {
        Self {
            redact: redact.iter().cloned().collect(),
            hash: hash.iter().cloned().collect(),
        }
    }

    /// Whether no name is listed (then bodies are kept as they are).
    pub fn is_empty(&self) -> bool {
        self.redact.is_empty() && self.hash.is_empty()
    }

    /// The body as it may be kept; `max` is the largest body kept.
    pub fn body(&self, bytes: &[u8], max: usize) -> CapturedBody {
        let size = bytes.len() as u64;
        if bytes.len() > max {
            return CapturedBody::omitted(size, "larger than body_max_bytes");
        }
        if bytes.is_empty() {
            return CapturedBody::Text(String::new());
        }
        match serde_json::from_slice::<Value>(bytes) {
            Ok(mut value) => {
                self.value(&mut value);
                CapturedBody::Json(value)
            }
            // The listed fields cannot be found in it: keeping it could
            // keep exactly what the policy says must not be kept.
            Err(_) if !self.is_empty() => {
                CapturedBody::omitted(size, "not JSON, and fields are listed for redaction")
            }
            Err(_) => match std::str::from_utf8(bytes) {
                Ok(text) => CapturedBody::Text(text.to_string()),
                Err(_) => CapturedBody::omitted(size, "binary"),
            },
        }
    }

    /// Redacts a JSON value in place.
    pub fn value(&self, value: &mut Value) {
        if !self.is_empty() {
            self.walk(value);
        }
    }

    fn action(&self, name: &str) -> Option<Action> {
        // Names match whatever their case (`SSN`, `ssn`): a field that
        // slipped through on its spelling would be kept in the clear.
        let listed = |set: &HashSet<String>| set.iter().any(|n| n.eq_ignore_ascii_case(name));
        // Redaction wins when a name is in both lists: it keeps less.
        if listed(&self.redact) {
            Some(Action::Redact)
        } else if listed(&self.hash) {
            Some(Action::Hash)
        } else {
            None
        }
    }

    /// Recursion is bounded: serde_json refuses input nested deeper than
    /// 128 levels.
    fn walk(&self, value: &mut Value) {
        match value {
            Value::Array(items) => items.iter_mut().for_each(|item| self.walk(item)),
            Value::Object(map) => {
                let tensor = match map.get("name") {
                    Some(Value::String(name)) => self.action(name),
                    _ => None,
                };
                for (key, field) in map.iter_mut() {
                    let by_key = self.action(key);
                    // A named object (an OIP tensor, `{"name": "ssn",
                    // "value": ...}`): every value but its name and shape
                    // description belongs to the named field.
                    let structural = matches!(key.as_str(), "name" | "datatype" | "shape");
                    if tensor.is_some() && !structural {
                        match tensor.max(by_key) {
                            Some(Action::Redact) => *field = Value::from(REDACTED),
                            _ => hash_each(field),
                        }
                        continue;
                    }
                    match by_key {
                        Some(Action::Redact) => *field = Value::from(REDACTED),
                        Some(Action::Hash) => hash_value(field),
                        None => self.walk(field),
                    }
                }
            }
            _ => {}
        }
    }
}

/// Hashes every element of (possibly nested) tensor data.
fn hash_each(data: &mut Value) {
    match data {
        Value::Array(items) => items.iter_mut().for_each(hash_each),
        other => hash_value(other),
    }
}

/// Replaces a value by its keyed hash, unless it already is one (or is
/// redacted): redacting a kept sample again leaves it as it was.
fn hash_value(value: &mut Value) {
    if let Value::String(text) = value {
        let hashed = text
            .strip_prefix("sha256:")
            .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()));
        if hashed || text == REDACTED {
            return;
        }
    }
    *value = Value::from(keyed_hash(value));
}

/// `sha256:<hex>`: HMAC-SHA256 of the value's JSON text under the
/// process's key; `[redacted]` if the OS gave no randomness for a key
/// (an unkeyed hash would be reversible by brute force).
pub fn keyed_hash(value: &Value) -> String {
    let Some(key) = hash_key() else {
        return REDACTED.to_string();
    };
    let text = serde_json::to_string(value).unwrap_or_default();
    format!(
        "sha256:{}",
        crate::store::audit::hex(&hmac_sha256(key, text.as_bytes()))
    )
}

fn hash_key() -> Option<&'static [u8; 32]> {
    static KEY: OnceLock<Option<[u8; 32]>> = OnceLock::new();
    KEY.get_or_init(|| {
        let mut key = [0u8; 32];
        getrandom::fill(&mut key).ok().map(|()| key)
    })
    .as_ref()
}

/// HMAC (RFC 2104) over SHA-256; the key is shorter than a block.
fn hmac_sha256(key: &[u8; 32], message: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut inner_pad = [0x36u8; BLOCK];
    let mut outer_pad = [0x5cu8; BLOCK];
    for (i, byte) in key.iter().enumerate() {
        inner_pad[i] ^= byte;
        outer_pad[i] ^= byte;
    }
    let inner = Sha256::new()
        .chain_update(inner_pad)
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(outer_pad)
        .chain_update(inner)
        .finalize()
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn redactor() -> Redactor {
        Redactor::new(&["ssn".into()], &["user_id".into()])
    }

    fn json_of(redactor: &Redactor, value: Value) -> Value {
        match redactor.body(value.to_string().as_bytes(), 1 << 20) {
            CapturedBody::Json(value) => value,
            other => panic!("expected JSON, got {other:?}"),
        }
    }

    #[test]
    fn hmac_matches_rfc_4231_shape() {
        // RFC 4231 test case 2 uses a 4-byte key; ours are 32 bytes, padded
        // with zeros like any key shorter than a block.
        let mut key = [0u8; 32];
        key[..4].copy_from_slice(b"Jefe");
        let mac = hmac_sha256(&key, b"what do ya want for nothing?");
        assert_eq!(
            crate::store::audit::hex(&mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn nested_keys_and_arrays_of_objects_are_redacted() {
        let out = json_of(
            &redactor(),
            json!({
                "ssn": "123-45-6789",
                "user": {"profile": {"ssn": 123456789, "age": 41}},
                "rows": [{"ssn": "a"}, {"user_id": "u1", "x": 1}, 7],
                "user_id": {"nested": "object"},
            }),
        );
        assert_eq!(out["ssn"], REDACTED);
        assert_eq!(out["user"]["profile"]["ssn"], REDACTED);
        assert_eq!(out["user"]["profile"]["age"], 41);
        assert_eq!(out["rows"][0]["ssn"], REDACTED);
        assert_eq!(out["rows"][1]["x"], 1);
        assert_eq!(out["rows"][2], 7);
        let hashed = out["rows"][1]["user_id"].as_str().unwrap();
        assert!(hashed.starts_with("sha256:") && hashed.len() == 7 + 64);
        assert!(out["user_id"].as_str().unwrap().starts_with("sha256:"));
        let text = out.to_string();
        assert!(!text.contains("123-45-6789") && !text.contains("123456789"));
        assert!(!text.contains("u1") && !text.contains("nested"));
    }

    #[test]
    fn oip_tensors_are_redacted_by_name() {
        let out = json_of(
            &redactor(),
            json!({
                "inputs": [
                    {"name": "ssn", "datatype": "BYTES", "shape": [1], "data": ["123-45-6789"]},
                    {"name": "user_id", "datatype": "BYTES", "shape": [2], "data": ["u1", "u1"]},
                    {"name": "amount", "datatype": "FP32", "shape": [1], "data": [12.5]},
                ],
                "outputs": [
                    {"name": "user_id", "datatype": "BYTES", "shape": [1, 2], "data": [["u1", "u2"]]},
                ],
            }),
        );
        assert_eq!(out["inputs"][0]["data"], REDACTED);
        assert_eq!(out["inputs"][0]["name"], "ssn", "the name stays");
        assert_eq!(out["inputs"][0]["shape"], json!([1]));
        let data = &out["inputs"][1]["data"];
        assert!(data[0].as_str().unwrap().starts_with("sha256:"));
        assert_eq!(data[0], data[1], "equal elements, equal hashes");
        assert_eq!(out["inputs"][2]["data"], json!([12.5]));
        let nested = &out["outputs"][0]["data"][0];
        assert_eq!(nested[0], data[0], "same value, same hash across tensors");
        assert_ne!(nested[0], nested[1]);
        assert!(!out.to_string().contains("123-45-6789"));
    }

    #[test]
    fn hashes_are_stable_for_equal_values_and_differ_otherwise() {
        let r = redactor();
        let a = json_of(&r, json!({"user_id": "alice"}));
        let b = json_of(&r, json!({"user_id": "alice", "other": 1}));
        let c = json_of(&r, json!({"user_id": "bob"}));
        assert_eq!(a["user_id"], b["user_id"]);
        assert_ne!(a["user_id"], c["user_id"]);
        // The string "1" and the number 1 are different values.
        assert_ne!(
            keyed_hash(&json!("1")),
            keyed_hash(&json!(1)),
            "hashes the JSON text"
        );
        // Keyed: not the plain SHA-256 of the text.
        let plain = crate::store::audit::hex(&Sha256::digest(b"\"alice\""));
        assert_ne!(a["user_id"], format!("sha256:{plain}"));
    }

    #[test]
    fn redaction_wins_over_hashing() {
        let r = Redactor::new(&["k".into()], &["k".into()]);
        assert_eq!(json_of(&r, json!({"k": 1}))["k"], REDACTED);
    }

    #[test]
    fn non_json_is_omitted_when_names_are_listed() {
        let r = redactor();
        assert_eq!(
            r.body(b"ssn=123-45-6789", 1000),
            CapturedBody::omitted(15, "not JSON, and fields are listed for redaction")
        );
        let plain = Redactor::default();
        assert_eq!(
            plain.body(b"ssn=1", 1000),
            CapturedBody::Text("ssn=1".into())
        );
        assert_eq!(
            plain.body(&[0xff, 0x00, 0x12], 1000),
            CapturedBody::omitted(3, "binary")
        );
        assert_eq!(
            plain.body(br#"{"a":1}"#, 1000),
            CapturedBody::Json(json!({"a": 1}))
        );
        assert_eq!(r.body(b"", 1000), CapturedBody::Text(String::new()));
    }

    #[test]
    fn bodies_over_the_limit_are_omitted_with_their_size() {
        assert_eq!(
            redactor().body(br#"{"ssn":"123"}"#, 5),
            CapturedBody::omitted(13, "larger than body_max_bytes")
        );
    }

    #[test]
    fn serialized_shapes_are_stable() {
        let cases = [
            (
                CapturedBody::Json(json!({"a": 1})),
                json!({"json": {"a": 1}}),
            ),
            (CapturedBody::Text("hi".into()), json!({"text": "hi"})),
            (
                CapturedBody::omitted(3, "binary"),
                json!({"omitted": {"bytes": 3, "reason": "binary"}}),
            ),
        ];
        for (body, expected) in cases {
            let value = serde_json::to_value(&body).unwrap();
            assert_eq!(value, expected);
            let back: CapturedBody = serde_json::from_value(value).unwrap();
            assert_eq!(back, body);
        }
    }

    #[test]
    fn garbage_never_panics_and_never_leaks() {
        let r = redactor();
        let mut rng = fastrand::Rng::with_seed(6);
        let seed = json!({"inputs": [{"name": "ssn", "data": ["SECRET"]}], "ssn": "SECRET"})
            .to_string()
            .into_bytes();
        for round in 0..3000 {
            let bytes: Vec<u8> = if round % 2 == 0 {
                let len = rng.usize(0..200);
                (0..len).map(|_| rng.u8(..)).collect()
            } else {
                // Valid JSON, truncated or with a byte flipped.
                let mut bytes = seed.clone();
                let at = rng.usize(0..bytes.len());
                if rng.bool() {
                    bytes.truncate(at);
                } else {
                    bytes[at] = rng.u8(..);
                }
                bytes
            };
            let body = r.body(&bytes, 150);
            if let CapturedBody::Text(text) = &body {
                assert!(
                    text.is_empty(),
                    "text kept while names are listed: {bytes:?}"
                );
            }
            if let CapturedBody::Json(value) = &body {
                // A flipped byte can rename a key or a tensor; the intact
                // ones must never show the secret.
                if value.get("ssn").is_some() {
                    assert_eq!(value["ssn"], REDACTED);
                }
            }
        }
        // Deep nesting is refused by the parser, not a stack overflow.
        let deep = "[".repeat(100_000);
        assert!(matches!(
            r.body(deep.as_bytes(), 1 << 20),
            CapturedBody::Omitted { .. }
        ));
    }

    #[test]
    fn names_match_whatever_their_case_and_named_objects_lose_every_value() {
        let redactor = Redactor::new(&["ssn".to_string()], &["user_id".to_string()]);
        let mut value = serde_json::json!({
            "SSN": "123-45-6789",
            "fields": [{"name": "Ssn", "value": "123-45-6789", "datatype": "BYTES"}],
            "User_Id": "u-1"
        });
        redactor.value(&mut value);
        let text = value.to_string();
        assert!(!text.contains("123-45-6789"), "{text}");
        assert!(!text.contains("u-1"), "{text}");
        assert_eq!(value["fields"][0]["datatype"], "BYTES");
    }

    #[test]
    fn redacting_again_changes_nothing() {
        let redactor = Redactor::new(&["ssn".to_string()], &["user_id".to_string()]);
        let mut once = serde_json::json!({"ssn": "1", "user_id": "u-1", "inputs": [{"name": "user_id", "data": ["a"]}]});
        redactor.value(&mut once);
        let mut twice = once.clone();
        redactor.value(&mut twice);
        assert_eq!(once, twice);
    }
}
