//! Any bytes as a reference profile file (what `version register
//! --profile` reads): a profile within its bounds whose every sketch can be
//! scored against itself, or an error naming the field, never a panic.
#![no_main]

use backstop::profile::parse_text;
use backstop_core::analysis::profile::{PROFILE_BYTES_MAX, PROFILE_FEATURES_MAX};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &[u8]| {
    match parse_text(text) {
        Ok(profile) => {
            assert!(text.len() <= PROFILE_BYTES_MAX);
            assert!(profile.features.len() <= PROFILE_FEATURES_MAX);
            for sketch in profile.features.values() {
                if let Some((psi, p)) = sketch.drift_from(sketch) {
                    assert!(psi.is_finite() && psi >= 0.0, "psi {psi}");
                    assert!((0.0..=1.0).contains(&p), "p {p}");
                }
            }
        }
        Err(error) => assert!(!error.message.is_empty(), "{error:?}"),
    }
});
