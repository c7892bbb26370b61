//! Arbitrary bytes as an upstream producer's protobuf `Event` (the NATS ingest path) and as a
//! stored event (the fan-out): decoding, validation and rendering must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message as _;

fuzz_target!(|data: &[u8]| {
    if let Ok(event) = proto::v1::Event::decode(data) {
        let errors = proto::validate::validate_event(&event);
        if errors.is_empty() {
            let _ = proto::envelope::render(&event, "https://api.open.example");
        }
        let _ = proto::validate::check_event(event);
    }
    let _ = proto::v1::Delivery::decode(data);
});
