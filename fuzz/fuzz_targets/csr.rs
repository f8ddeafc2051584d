//! CSR parsing, proof-of-possession check and profile rules: typed errors, never a panic.
#![no_main]
use ca::csr::{CsrPolicy, VerifiedCsr};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = VerifiedCsr::parse(data, &CsrPolicy::device("dev-1"));
    let _ = VerifiedCsr::parse(data, &CsrPolicy::server());
});
