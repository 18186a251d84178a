//! The audit log's hash chain.
//!
//! Each entry's hash is SHA-256 over a canonical JSON of its sequence
//! number, time, draft and the previous entry's hash. Altering an entry
//! changes its hash; removing one breaks the sequence or the link; so
//! [`verify`] names the first entry that was altered or removed.

use super::{AuditDraft, AuditEntry};
use serde::Serialize;
use sha2::{Digest, Sha256};

/// The fields a hash covers, in a fixed order.
#[derive(Serialize)]
struct Hashed<'a> {
    seq: u64,
    at_ms: u64,
    actor: &'a str,
    action: &'a str,
    target: &'a str,
    reason: &'a str,
    before: &'a Option<serde_json::Value>,
    after: &'a Option<serde_json::Value>,
    prev_hash: &'a str,
}

/// The hash of an entry with these contents.
pub fn entry_hash(seq: u64, at_ms: u64, draft: &AuditDraft, prev_hash: &str) -> String {
    let hashed = Hashed {
        seq,
        at_ms,
        actor: &draft.actor,
        action: &draft.action,
        target: &draft.target,
        reason: &draft.reason,
        before: &draft.before,
        after: &draft.after,
        prev_hash,
    };
    // serde_json writes struct fields in declaration order and map keys
    // sorted (no `preserve_order`), so the bytes are canonical.
    let bytes = serde_json::to_vec(&hashed).expect("audit fields serialize");
    hex(&Sha256::digest(&bytes))
}

/// Lower-case hex. One allocation: a sampled exchange with a hashed field
/// calls this on the gateway's hot path (`redact::keyed_hash`), where a
/// `format!` per byte cost 33 allocations per hash.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    out
}

/// Where the chain breaks.
#[derive(Debug, PartialEq, Eq)]
pub struct Broken {
    /// Sequence number of the first entry that was altered, or that is
    /// missing.
    pub seq: u64,
    pub why: String,
}

/// Walks the whole chain, oldest first.
pub fn verify(entries: &[AuditEntry]) -> Result<u64, Broken> {
    let mut prev_hash = "";
    for (i, entry) in entries.iter().enumerate() {
        let expected_seq = i as u64 + 1;
        if entry.seq != expected_seq {
            return Err(Broken {
                seq: expected_seq,
                why: format!("entry {expected_seq} is missing (next is {})", entry.seq),
            });
        }
        if entry.prev_hash != prev_hash {
            return Err(Broken {
                seq: entry.seq,
                why: "its link to the previous entry does not match".into(),
            });
        }
        if entry_hash(entry.seq, entry.at_ms, &entry.draft, &entry.prev_hash) != entry.hash {
            return Err(Broken {
                seq: entry.seq,
                why: "its contents do not match its hash".into(),
            });
        }
        prev_hash = &entry.hash;
    }
    Ok(entries.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_two_lower_case_digits_per_byte() {
        let all: Vec<u8> = (0..=255).collect();
        let expected: String = all.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex(&all), expected);
        assert_eq!(hex(&[0x00, 0x0f, 0xa0, 0xff]), "000fa0ff");
        assert_eq!(hex(&[]), "");
    }

    fn chain(n: u64) -> Vec<AuditEntry> {
        let mut entries: Vec<AuditEntry> = Vec::new();
        for seq in 1..=n {
            let draft = AuditDraft {
                actor: "alice".into(),
                action: "version.register".into(),
                target: format!("m/v{seq}"),
                reason: String::new(),
                before: None,
                after: Some(serde_json::json!({"digest": "sha256:00"})),
            };
            let prev_hash = entries.last().map_or(String::new(), |e| e.hash.clone());
            entries.push(AuditEntry {
                seq,
                at_ms: 1000 * seq,
                hash: entry_hash(seq, 1000 * seq, &draft, &prev_hash),
                draft,
                prev_hash,
            });
        }
        entries
    }

    #[test]
    fn an_intact_chain_verifies() {
        assert_eq!(verify(&chain(5)), Ok(5));
        assert_eq!(verify(&[]), Ok(0));
    }

    #[test]
    fn an_altered_entry_is_named() {
        let mut entries = chain(5);
        entries[2].draft.actor = "mallory".into();
        assert_eq!(verify(&entries).unwrap_err().seq, 3);
    }

    #[test]
    fn a_removed_entry_is_named() {
        let mut entries = chain(5);
        entries.remove(1);
        assert_eq!(verify(&entries).unwrap_err().seq, 2);
        let mut entries = chain(5);
        entries.pop();
        assert_eq!(
            verify(&entries),
            Ok(4),
            "a truncated tail is only visible against a count kept elsewhere"
        );
    }

    #[test]
    fn a_rehashed_entry_breaks_the_next_link() {
        let mut entries = chain(5);
        entries[1].draft.reason = "edited".into();
        entries[1].hash = entry_hash(
            2,
            entries[1].at_ms,
            &entries[1].draft,
            &entries[1].prev_hash,
        );
        assert_eq!(verify(&entries).unwrap_err().seq, 3);
    }
}
