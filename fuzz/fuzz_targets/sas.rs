//! SAS token parsing and verification.
#![no_main]
use ca::sas::{SasToken, Validity};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(t) = SasToken::parse(text) {
        let key = ca::SasKey::from_bytes(vec![7u8; 32]);
        let _ = t.verify(&key, Validity { now: 1_800_000_000, skew_secs: 300, max_ahead_secs: 366 * 86_400 });
        let _ = t.covers("hub.example/devices/d1");
    }
});
