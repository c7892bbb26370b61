//! Arbitrary bytes as the body of `POST /v1/events`: parsing and validation must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) {
        let _ = proto::validate::parse_event(&value);
    }
});
