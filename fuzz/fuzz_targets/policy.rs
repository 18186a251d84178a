//! Any text as a policy file: parsing, checking and locating the failing
//! field return a policy or an error, never panic; a policy that parses
//! also survives being written back and parsed again.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let file = std::path::Path::new("fuzz.yaml");
        if let Ok(policy) = backstop::policy::parse(file, text) {
            let yaml = serde_yaml_ng::to_string(&policy).expect("a policy serializes");
            let again = backstop::policy::parse(file, &yaml).expect("normalized policies parse");
            assert_eq!(again, policy);
        }
        let _ = backstop::config::locate(text, "triggers[1].above");
        let _ = backstop::config::locate(text, "strategy.canary.steps[2]");
    }
});
