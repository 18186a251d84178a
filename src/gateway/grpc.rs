//! OIP over gRPC (`inference.GRPCInferenceService`) passthrough helpers.
//!
//! Requests are routed by the model name inside the first message: every
//! model-scoped method of the service (ModelInfer, ModelStreamInfer,
//! ModelReady, ModelMetadata, and Triton's ModelConfig/ModelStatistics)
//! carries it as field 1. The gateway reads only as many bytes as it takes
//! to find that field, then streams the rest. A client may instead name the
//! model in the `x-backstop-model` header (needed for compressed messages).

use backstop_core::analysis::Outcome;
use http::HeaderMap;

pub const SERVICE_PREFIX: &str = "/inference.GRPCInferenceService/";
pub const MODEL_HEADER: &str = "x-backstop-model";

/// gRPC status codes used by the gateway's own answers.
pub mod code {
    pub const OK: u32 = 0;
    pub const INVALID_ARGUMENT: u32 = 3;
    pub const DEADLINE_EXCEEDED: u32 = 4;
    pub const NOT_FOUND: u32 = 5;
    pub const PERMISSION_DENIED: u32 = 7;
    pub const RESOURCE_EXHAUSTED: u32 = 8;
    pub const UNIMPLEMENTED: u32 = 12;
    pub const INTERNAL: u32 = 13;
    pub const UNAVAILABLE: u32 = 14;
}

/// `application/grpc`, `application/grpc+proto` and the like; not
/// gRPC-Web, which is a different wire format.
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers.get(http::header::CONTENT_TYPE).is_some_and(|v| {
        let v = v.as_bytes();
        v == b"application/grpc"
            || v.starts_with(b"application/grpc+")
            || v.starts_with(b"application/grpc;")
    })
}

/// How a gRPC status counts for the version that returned it. Codes that
/// blame the caller are client errors, so a bad client never counts
/// against a canary.
pub fn outcome_of_code(code: u32) -> Outcome {
    match code {
        0 => Outcome::Success,
        1 => Outcome::Cancelled,
        // RESOURCE_EXHAUSTED (8) is what servers answer to a message over
        // their size limit: the caller's doing, like our own body_too_large.
        3 | 5 | 6 | 7 | 8 | 9 | 11 | 12 | 16 => Outcome::ClientError,
        4 => Outcome::Timeout,
        _ => Outcome::ServerError,
    }
}

/// Outcome from trailers (or trailers-only headers); a missing or garbled
/// status is the server's fault.
pub fn outcome_of(headers: &HeaderMap) -> Outcome {
    match status_of(headers) {
        Some(code) => outcome_of_code(code),
        None => Outcome::ServerError,
    }
}

/// How an answer without `grpc-status` counts until trailers say more,
/// after gRPC's HTTP-to-gRPC status mapping: 401, 403 and 404 blame the
/// caller; anything else without a status is the server's failure.
pub fn outcome_without_status(status: http::StatusCode) -> Outcome {
    match status.as_u16() {
        401 | 403 | 404 => Outcome::ClientError,
        _ => Outcome::ServerError,
    }
}

pub fn status_of(headers: &HeaderMap) -> Option<u32> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

/// Result of scanning the start of a gRPC request body for the model name.
#[derive(Debug, PartialEq, Eq)]
pub enum Scan {
    Found(String),
    /// The bytes so far end before field 1 was seen.
    NeedMore,
    /// The first message ended without field 1.
    Absent,
    /// Not a valid uncompressed protobuf message.
    Invalid(&'static str),
}

/// Looks for string field 1 of the first length-prefixed message in `buf`
/// (which may be a prefix of the body).
pub fn scan_model_name(buf: &[u8]) -> Scan {
    if buf.len() < 5 {
        return Scan::NeedMore;
    }
    if buf[0] != 0 {
        return Scan::Invalid(
            "the first message is compressed; name the model in the x-backstop-model header",
        );
    }
    let length = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    let available = &buf[5..];
    let message = &available[..available.len().min(length)];
    let complete = available.len() >= length;
    let mut at = 0;
    while at < message.len() {
        let Some((tag, used)) = read_varint(&message[at..]) else {
            return if complete {
                Scan::Invalid("bad protobuf tag")
            } else {
                Scan::NeedMore
            };
        };
        at += used;
        let (field, wire_type) = (tag >> 3, tag & 7);
        let skip = match wire_type {
            0 => match read_varint(&message[at..]) {
                Some((_, used)) => used,
                None if complete => return Scan::Invalid("bad protobuf varint"),
                None => return Scan::NeedMore,
            },
            1 => 8,
            2 => {
                let Some((len, used)) = read_varint(&message[at..]) else {
                    return if complete {
                        Scan::Invalid("bad protobuf length")
                    } else {
                        Scan::NeedMore
                    };
                };
                at += used;
                let Ok(len) = usize::try_from(len) else {
                    return Scan::Invalid("bad protobuf length");
                };
                if field == 1 {
                    return match message.get(at..at.saturating_add(len)) {
                        Some(bytes) => match std::str::from_utf8(bytes) {
                            Ok(name) => Scan::Found(name.to_string()),
                            Err(_) => Scan::Invalid("the model name is not UTF-8"),
                        },
                        None if complete => Scan::Invalid("truncated protobuf field"),
                        None => Scan::NeedMore,
                    };
                }
                len
            }
            5 => 4,
            _ => return Scan::Invalid("unsupported protobuf wire type"),
        };
        at = at.saturating_add(skip);
    }
    if complete {
        Scan::Absent
    } else {
        Scan::NeedMore
    }
}

fn read_varint(buf: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for (i, byte) in buf.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

/// Methods the gateway answers itself because they name no model.
pub fn local_answer(method: &str) -> Option<Vec<u8>> {
    match method {
        // ServerLiveResponse / ServerReadyResponse { bool live|ready = 1 }
        "ServerLive" | "ServerReady" => Some(vec![0x08, 0x01]),
        // ServerMetadataResponse { name = 1, version = 2 }
        "ServerMetadata" => {
            let mut message = protobuf_string(1, "backstop");
            message.extend(protobuf_string(2, env!("CARGO_PKG_VERSION")));
            Some(message)
        }
        _ => None,
    }
}

/// Encodes a protobuf length-delimited string field.
pub fn protobuf_string(field: u32, value: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len() + 6);
    put_varint(&mut out, u64::from(field << 3 | 2));
    put_varint(&mut out, value.len() as u64);
    out.extend_from_slice(value.as_bytes());
    out
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Frames one message with the 5-byte gRPC prefix.
pub fn frame(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + message.len());
    out.push(0);
    out.extend((message.len() as u32).to_be_bytes());
    out.extend_from_slice(message);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use protobuf_string;

    fn infer_request(model: &str) -> Vec<u8> {
        // id = 3 first, then model_name = 1, then a big tensor-ish field 5.
        let mut message = protobuf_string(3, "req-1");
        message.extend(protobuf_string(1, model));
        message.extend(protobuf_string(5, &"x".repeat(300)));
        frame(&message)
    }

    #[test]
    fn finds_the_model_name_wherever_field_1_is() {
        let body = infer_request("fraud-scorer");
        assert_eq!(scan_model_name(&body), Scan::Found("fraud-scorer".into()));
    }

    #[test]
    fn asks_for_more_bytes_until_field_1_is_complete() {
        let body = infer_request("fraud-scorer");
        let found_at = 5 + 7 + 2 + "fraud-scorer".len();
        for cut in 0..found_at {
            assert_eq!(
                scan_model_name(&body[..cut]),
                Scan::NeedMore,
                "cut at {cut}"
            );
        }
        assert_eq!(
            scan_model_name(&body[..found_at]),
            Scan::Found("fraud-scorer".into())
        );
    }

    #[test]
    fn reports_absent_and_invalid_messages() {
        assert_eq!(
            scan_model_name(&frame(&protobuf_string(2, "v"))),
            Scan::Absent
        );
        assert_eq!(scan_model_name(&frame(&[])), Scan::Absent);
        assert!(matches!(
            scan_model_name(&[1, 0, 0, 0, 0]),
            Scan::Invalid(_)
        ));
        assert!(matches!(scan_model_name(&frame(&[0x0b])), Scan::Invalid(_)));
        assert!(matches!(
            scan_model_name(&frame(&[0x0a, 0x05, b'a'])),
            Scan::Invalid(_)
        ));
    }

    #[test]
    fn never_panics_on_arbitrary_bytes() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = (seed % 40) as usize;
            let bytes: Vec<u8> = (0..len).map(|i| (seed >> (i % 8 * 8)) as u8).collect();
            let mut framed = vec![0, 0, 0, 0, len as u8];
            framed.extend(&bytes);
            let _ = scan_model_name(&framed);
            let _ = scan_model_name(&bytes);
        }
    }

    #[test]
    fn status_codes_blame_the_right_side() {
        assert_eq!(outcome_of_code(0), Outcome::Success);
        assert_eq!(outcome_of_code(3), Outcome::ClientError);
        assert_eq!(outcome_of_code(4), Outcome::Timeout);
        assert_eq!(outcome_of_code(13), Outcome::ServerError);
        assert_eq!(outcome_of_code(14), Outcome::ServerError);
        assert_eq!(outcome_of(&HeaderMap::new()), Outcome::ServerError);
    }
}
