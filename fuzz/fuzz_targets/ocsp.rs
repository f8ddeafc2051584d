//! OCSP request parsing.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = ca::revocation::ParsedOcspRequest::parse(data) {
        for q in req.queries() {
            let _ = q.serial();
        }
    }
});
