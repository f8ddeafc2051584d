//! Enrollment / operator JWT verification (alg pinned to ES256, audience, expiry).
#![no_main]
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use service::auth::jwt::{JwtKeys, ENROLLMENT_AUDIENCE, OPERATOR_AUDIENCE};

fn keys() -> &'static JwtKeys {
    static KEYS: OnceLock<JwtKeys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let (k, _) = ca::issue::generate_key(ca::KeyType::P256).expect("P-256 key");
        JwtKeys::from_pkcs8(k.expose_secret()).expect("JWT keys")
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else { return };
    let _ = keys().verify(token, ENROLLMENT_AUDIENCE, 1_800_000_000, 0);
    let _ = keys().verify(token, OPERATOR_AUDIENCE, 1_800_000_000, 0);
});
