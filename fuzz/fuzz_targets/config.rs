//! Any text as backstop.yaml: parsing and checking return an error or a
//! config, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = backstop::config::Config::parse(std::path::Path::new("fuzz.yaml"), text);
        let _ = backstop::config::locate(text, "models.m.versions[0].weight");
    }
});
