//! Any bytes as the start of a gRPC request body: the model-name scan
//! answers Found, NeedMore, Absent or Invalid, never panics, and a longer
//! prefix never turns a Found into something else.
#![no_main]

use backstop::gateway::grpc::{scan_model_name, Scan};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let whole = scan_model_name(data);
    for cut in 0..data.len() {
        if let Scan::Found(name) = scan_model_name(&data[..cut]) {
            assert_eq!(whole, Scan::Found(name));
            break;
        }
    }
});
