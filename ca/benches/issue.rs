//! CSR → certificate issuance throughput on one core: parse + verify proof of possession + sign,
//! the whole `ca` hot path of an enrollment. Run through `scripts/bench-ca`, which measures
//! `openssl speed ecdsap256` in the same run and reports the ratio to its ceiling.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::time::{Duration, Instant};

use ca::authority::{create_intermediate, create_root, CaKeyAlgorithm};
use ca::csr::{CsrPolicy, VerifiedCsr};
use ca::issue::{issue_device, DeviceProfile, RevocationUrls};

fn main() {
    #[allow(clippy::disallowed_methods)]
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
        as i64;
    let root = create_root("bench root", CaKeyAlgorithm::P256, now, 10 * 365 * 86400).unwrap();
    let inter =
        create_intermediate(&root, "bench inter", CaKeyAlgorithm::P256, now, 365 * 86400).unwrap();
    // Pre-generate CSRs so key generation is not measured.
    let csrs: Vec<Vec<u8>> = (0..256)
        .map(|i| {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut params = rcgen::CertificateParams::default();
            params.distinguished_name = rcgen::DistinguishedName::new();
            params.distinguished_name.push(rcgen::DnType::CommonName, format!("dev-{i}"));
            params.serialize_request(&key).unwrap().der().to_vec()
        })
        .collect();
    let urls = RevocationUrls { base_url: Some("https://127.0.0.1:8443".into()) };
    let secs: f64 = std::env::var("BENCH_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(3.0);
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let start = Instant::now();
    let mut n = 0usize;
    while Instant::now() < deadline {
        let i = n % csrs.len();
        let id = format!("dev-{i}");
        let csr = VerifiedCsr::parse(&csrs[i], &CsrPolicy::device(&id)).unwrap();
        let profile = DeviceProfile { device_id: &id, validity_secs: 365 * 86400, urls: &urls };
        std::hint::black_box(issue_device(&inter, &csr, &profile, now).unwrap());
        n += 1;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    println!("ca_issue_per_sec {rate:.0}");
}
