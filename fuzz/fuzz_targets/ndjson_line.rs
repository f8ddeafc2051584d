//! One NDJSON registration / import line through the service's own parsing and validation.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(line) = std::str::from_utf8(data) else { return };
    let _ = service::http::devices::parse_import_line(line, false);
    let _ = service::http::enrollment::parse_registration_line(data);
});
