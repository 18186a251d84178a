//! Any bytes as a Prometheus query answer, with any status and clock: the
//! parser gives a finite, fresh reading or a coded error, never a panic.
#![no_main]

use backstop::prometheus::parse_answer;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (u16, u64, u64, &[u8])| {
    let (status, now_ms, max_staleness_ms, body) = input;
    if let Ok(reading) = parse_answer(status, body, String::new(), now_ms, max_staleness_ms) {
        assert!(reading.value.is_finite());
        assert!(now_ms.saturating_sub(reading.sample_unix_ms) <= max_staleness_ms);
    }
});
