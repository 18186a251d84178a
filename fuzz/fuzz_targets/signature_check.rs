//! Any bytes as a request body, checked against a fixed OIP signature and a
//! fixed JSON Schema signature (small limits, so the bounds are reached):
//! a report comes back, never a panic, and a body over the limit is refused
//! as `too_large` alone.
#![no_main]

use std::sync::OnceLock;

use backstop::signature::{
    Datatype, FieldSpec, Format, InputSignature, JsonType, Limits, TensorSpec, ViolationKind,
};
use libfuzzer_sys::fuzz_target;

fn signatures() -> &'static [InputSignature; 2] {
    static SIGNATURES: OnceLock<[InputSignature; 2]> = OnceLock::new();
    SIGNATURES.get_or_init(|| {
        let limits = Limits {
            max_body_bytes: 64 << 10,
            max_elements: 1000,
            max_depth: 8,
        };
        let tensor = |name: &str, datatype, shape: &[i64]| TensorSpec {
            name: name.into(),
            datatype,
            shape: shape.to_vec(),
        };
        let field = |name: &str, types: &[JsonType], required, numeric| FieldSpec {
            name: name.into(),
            types: types.to_vec(),
            required,
            numeric,
        };
        [
            InputSignature {
                format: Format::Oip(vec![
                    tensor("x", Datatype::Fp32, &[-1, 4]),
                    tensor("n", Datatype::Int8, &[-1]),
                    tensor("b", Datatype::Bool, &[1]),
                    tensor("s", Datatype::Bytes, &[-1]),
                    tensor("u", Datatype::Uint64, &[2, -1]),
                ]),
                limits,
            },
            InputSignature {
                format: Format::Json {
                    fields: vec![
                        field("amount", &[JsonType::Number], true, true),
                        field("country", &[JsonType::String, JsonType::Null], false, false),
                        field("history", &[JsonType::Array], false, true),
                        field("any", &[], false, false),
                    ],
                    additional_properties: false,
                },
                limits,
            },
        ]
    })
}

fuzz_target!(|data: &[u8]| {
    for signature in signatures() {
        let report = signature.check(data);
        if data.len() > signature.limits.max_body_bytes {
            assert_eq!(report.violations.len(), 1);
            assert_eq!(report.violations[0].kind, ViolationKind::TooLarge);
        }
    }
});
