//! The id the gateway gives each request: sent upstream and back to the
//! client in `x-backstop-request-id`, so an application can later report an
//! outcome for it (the feedback API) and logs and traces can be joined.
//!
//! 128 random bits as 32 lowercase hex digits: unique without coordination
//! between replicas, and the same shape as a W3C trace id.

use http::HeaderValue;

pub const REQUEST_ID_HEADER: &str = "x-backstop-request-id";

/// One request's id. Cheap to copy; formats without allocating.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct RequestId([u8; 32]);

impl RequestId {
    pub fn new() -> Self {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let bits = fastrand::u128(..);
        let mut text = [0u8; 32];
        for (i, digit) in text.iter_mut().enumerate() {
            *digit = HEX[((bits >> (124 - 4 * i)) & 0xf) as usize];
        }
        Self(text)
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII hex digits are ever stored.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// The 128 bits as 16 bytes: what the feedback join table keys by.
    pub fn to_bytes(&self) -> [u8; 16] {
        let mut bytes = [0u8; 16];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = (nibble(self.0[2 * i]) << 4) | nibble(self.0[2 * i + 1]);
        }
        bytes
    }

    /// Parses an id as the gateway writes it: 32 hex digits (upper case
    /// accepted, stored lower case). `None` for anything else.
    pub fn parse(text: &str) -> Option<Self> {
        let bytes = text.as_bytes();
        if bytes.len() != 32 || !bytes.iter().all(u8::is_ascii_hexdigit) {
            return None;
        }
        let mut id = [0u8; 32];
        for (out, b) in id.iter_mut().zip(bytes) {
            *out = b.to_ascii_lowercase();
        }
        Some(Self(id))
    }

    pub fn header_value(&self) -> HeaderValue {
        HeaderValue::from_bytes(&self.0).expect("hex digits are a valid header value")
    }
}

/// The value of one lower-case hex digit (only those are stored).
fn nibble(digit: u8) -> u8 {
    match digit {
        b'0'..=b'9' => digit - b'0',
        _ => digit.wrapping_sub(b'a').wrapping_add(10) & 0xf,
    }
}

impl Default for RequestId {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Debug for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RequestId({})", self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn ids_are_32_hex_digits_and_distinct() {
        let ids: HashSet<String> = (0..10_000).map(|_| RequestId::new().to_string()).collect();
        assert_eq!(ids.len(), 10_000);
        for id in ids.iter().take(100) {
            assert_eq!(id.len(), 32);
            assert!(id
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        }
        let id = RequestId::new();
        assert_eq!(id.header_value().to_str().unwrap(), id.as_str());
    }

    #[test]
    fn ids_parse_and_give_their_16_bytes() {
        let id = RequestId::new();
        assert_eq!(RequestId::parse(id.as_str()), Some(id));
        let upper = id.as_str().to_ascii_uppercase();
        assert_eq!(RequestId::parse(&upper), Some(id));
        let parsed = RequestId::parse("00112233445566778899aabbccddeeff").unwrap();
        assert_eq!(
            parsed.to_bytes(),
            [
                0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd,
                0xee, 0xff
            ]
        );
        for bad in [
            "",
            "abc",
            "00112233445566778899aabbccddeefg",
            "00112233445566778899aabbccddeeff0",
        ] {
            assert_eq!(RequestId::parse(bad), None, "{bad}");
        }
    }
}
