//! Interop with tools nobody here wrote: the `openssl` CLI, Python `cryptography`, and Azure's
//! own SDKs (Python `azure-iot-device`, Node `azure-iot-common`).
//!
//! A missing tool skips its test with a notice, unless `PROVISIOND_REQUIRE_INTEROP=1` (set by
//! `.ci/run`), where it fails: CI must prove interop, a developer laptop need not have Node.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;

use ca::authority::{chain_pem, create_intermediate, create_root, CaKeyAlgorithm, Issuer};
use ca::csr::{CsrError, CsrPolicy, KeyType, VerifiedCsr};
use ca::issue::{issue_device, DeviceProfile, RevocationUrls};
use ca::revocation::{
    build_crl, ocsp_response, CertState, ParsedOcspRequest, RevocationReason, RevokedEntry,
};
use ca::sas::{SasToken, Validity};
use ca::SasKey;

const YEAR: i64 = 365 * 86400;

/// Wall-clock time: openssl checks validity against the real clock, so certificates made here
/// must be valid now. (The `ca` crate itself never reads a clock; its tests may.)
fn now() -> i64 {
    #[allow(clippy::disallowed_methods)]
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    d.as_secs() as i64
}

fn require(tool: &str, probe: &[&str]) -> bool {
    let ok = Command::new(tool).args(probe).output().map(|o| o.status.success()).unwrap_or(false);
    if !ok {
        if std::env::var("PROVISIOND_REQUIRE_INTEROP").as_deref() == Ok("1") {
            panic!("{tool} is required (PROVISIOND_REQUIRE_INTEROP=1) but not usable");
        }
        eprintln!("SKIPPED: {tool} not available");
    }
    ok
}

fn run(dir: &Path, cmd: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(cmd).args(args).current_dir(dir).output().unwrap();
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

struct Pki {
    dir: tempfile::TempDir,
    root: Issuer,
    inter: Issuer,
}

impl Pki {
    fn new() -> Self {
        let now = now();
        let root =
            create_root("provisiond test root", CaKeyAlgorithm::P256, now, 10 * YEAR).unwrap();
        let inter = create_intermediate(
            &root,
            "provisiond test intermediate",
            CaKeyAlgorithm::P256,
            now,
            5 * YEAR,
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("root.pem"), root.cert_pem()).unwrap();
        std::fs::write(dir.path().join("inter.pem"), inter.cert_pem()).unwrap();
        std::fs::write(
            dir.path().join("chain.pem"),
            chain_pem([inter.cert_der(), root.cert_der()]),
        )
        .unwrap();
        Self { dir, root, inter }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn issue(&self, csr: &VerifiedCsr, id: &str) -> ca::IssuedCertificate {
        let urls = RevocationUrls { base_url: Some("https://127.0.0.1:8443".into()) };
        let profile = DeviceProfile { device_id: id, validity_secs: YEAR, urls: &urls };
        issue_device(&self.inter, csr, &profile, now()).unwrap()
    }

    fn openssl_csr(&self, name: &str, newkey: &[&str], cn: &str) -> Vec<u8> {
        let csr = format!("{name}.csr");
        let key = format!("{name}.key");
        let subj = format!("/CN={cn}");
        let mut args = vec!["req", "-new", "-nodes", "-subj", &subj, "-keyout", &key, "-out", &csr];
        args.extend_from_slice(newkey);
        let (ok, out) = run(self.dir.path(), "openssl", &args);
        assert!(ok, "openssl req failed: {out}");
        std::fs::read(self.path(&csr)).unwrap()
    }
}

#[test]
fn openssl_verifies_root_intermediate_leaf_strictly() {
    if !require("openssl", &["version"]) {
        return;
    }
    let pki = Pki::new();
    let _ = &pki.root;
    let csr_pem =
        pki.openssl_csr("p256", &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"], "dev-1");
    let csr = VerifiedCsr::parse(&csr_pem, &CsrPolicy::device("dev-1")).unwrap();
    let leaf = pki.issue(&csr, "dev-1");
    std::fs::write(pki.path("leaf.pem"), leaf.pem()).unwrap();
    let (ok, out) = run(
        pki.dir.path(),
        "openssl",
        &[
            "verify",
            "-x509_strict",
            "-purpose",
            "sslclient",
            "-CAfile",
            "root.pem",
            "-untrusted",
            "inter.pem",
            "leaf.pem",
        ],
    );
    assert!(ok && out.contains("leaf.pem: OK"), "{out}");
    let (ok, out) = run(
        pki.dir.path(),
        "openssl",
        &["verify", "-x509_strict", "-CAfile", "root.pem", "inter.pem"],
    );
    assert!(ok, "{out}");
    let (_, text) = run(pki.dir.path(), "openssl", &["x509", "-in", "leaf.pem", "-noout", "-text"]);
    assert!(text.contains("TLS Web Client Authentication"), "{text}");
    assert!(text.contains("URI:urn:provisiond:device:dev-1"), "{text}");
    assert!(text.contains("OCSP - URI:https://127.0.0.1:8443/v1/ca/ocsp"), "{text}");
    assert!(
        text.contains(&format!("URI:https://127.0.0.1:8443/v1/ca/crl/{}", pki.inter.id())),
        "{text}"
    );
}

#[test]
fn openssl_csrs_of_every_supported_key_type_are_accepted_and_certified() {
    if !require("openssl", &["version"]) {
        return;
    }
    let pki = Pki::new();
    let cases: &[(&str, &[&str], KeyType)] = &[
        ("p256", &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"], KeyType::P256),
        ("p384", &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-384"], KeyType::P384),
        ("ed25519", &["-newkey", "ed25519"], KeyType::Ed25519),
        ("rsa2048", &["-newkey", "rsa:2048"], KeyType::Rsa2048),
    ];
    for (name, args, want) in cases {
        let pem = pki.openssl_csr(name, args, "dev-x");
        let csr = VerifiedCsr::parse(&pem, &CsrPolicy::device("dev-x"))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(csr.key_type(), *want, "{name}");
        let leaf = pki.issue(&csr, "dev-x");
        let file = format!("{name}.pem");
        std::fs::write(pki.path(&file), leaf.pem()).unwrap();
        let (ok, out) = run(
            pki.dir.path(),
            "openssl",
            &["verify", "-x509_strict", "-CAfile", "root.pem", "-untrusted", "inter.pem", &file],
        );
        assert!(ok, "{name}: {out}");
    }
    // One flipped signature byte: the proof of possession fails.
    let pem =
        pki.openssl_csr("flip", &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"], "dev-x");
    let mut der = pem::parse(&pem).unwrap().into_contents();
    let i = der.len() - 5;
    der[i] ^= 0x01;
    assert_eq!(
        VerifiedCsr::parse(&der, &CsrPolicy::device("dev-x")),
        Err(CsrError::SignatureInvalid)
    );
    let weak = pki.openssl_csr("rsa1024", &["-newkey", "rsa:1024"], "dev-x");
    assert_eq!(
        VerifiedCsr::parse(&weak, &CsrPolicy::device("dev-x")),
        Err(CsrError::KeyTooSmall { bits: 1024 })
    );
}

#[test]
fn python_cryptography_csrs_are_accepted() {
    if !require("python3", &["-c", "import cryptography"]) {
        return;
    }
    let script = r#"
import sys
from cryptography import x509
from cryptography.x509.oid import NameOID
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
keys = {"p256": ec.generate_private_key(ec.SECP256R1()), "p384": ec.generate_private_key(ec.SECP384R1()),
        "ed25519": ed25519.Ed25519PrivateKey.generate(), "rsa2048": rsa.generate_private_key(65537, 2048)}
for name, key in keys.items():
    algo = None if name == "ed25519" else (hashes.SHA384() if name == "p384" else hashes.SHA256())
    csr = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "py-dev")])).sign(key, algo)
    sys.stdout.write(name + "\n" + csr.public_bytes(serialization.Encoding.PEM).decode() + "===\n")
"#;
    let out = Command::new("python3").args(["-c", script]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let mut seen = 0;
    for chunk in text.split("===\n").filter(|c| !c.trim().is_empty()) {
        let (name, pem) = chunk.split_once('\n').unwrap();
        let csr = VerifiedCsr::parse(pem.as_bytes(), &CsrPolicy::device("py-dev"))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(csr.key_type(), KeyType::parse(name).unwrap());
        seen += 1;
    }
    assert_eq!(seen, 4);
}

#[test]
fn openssl_verifies_the_crl_and_lists_the_revoked_serial() {
    if !require("openssl", &["version"]) {
        return;
    }
    let pki = Pki::new();
    let entries = [RevokedEntry {
        serial: "4abcdef0123456789abcdef012345678".into(),
        revoked_at: now() - 10,
        reason: RevocationReason::KeyCompromise,
    }];
    let der = build_crl(&pki.inter, 3, now(), now() + 3600, &entries).unwrap();
    std::fs::write(pki.path("crl.der"), &der).unwrap();
    let (ok, out) = run(
        pki.dir.path(),
        "openssl",
        &[
            "crl",
            "-inform",
            "DER",
            "-in",
            "crl.der",
            "-CAfile",
            "chain.pem",
            "-noout",
            "-verify",
            "-text",
        ],
    );
    assert!(ok, "{out}");
    assert!(out.contains("verify OK"), "{out}");
    assert!(out.contains("4ABCDEF0123456789ABCDEF012345678"), "{out}");
    assert!(out.contains("Key Compromise"), "{out}");
    assert!(out.contains("X509v3 CRL Number"), "{out}");
    assert!(out.contains("Version 2"), "{out}");
}

#[test]
fn openssl_ocsp_requests_parse_and_signed_responses_verify_with_nonce() {
    if !require("openssl", &["version"]) {
        return;
    }
    let pki = Pki::new();
    let pem =
        pki.openssl_csr("o", &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"], "dev-o");
    let leaf = pki.issue(&VerifiedCsr::parse(&pem, &CsrPolicy::device("dev-o")).unwrap(), "dev-o");
    std::fs::write(pki.path("leaf.pem"), leaf.pem()).unwrap();

    for (digest, state, want) in [
        ("-sha1", CertState::Good, "leaf.pem: good"),
        (
            "-sha256",
            CertState::Revoked { at: now() - 60, reason: RevocationReason::KeyCompromise },
            "leaf.pem: revoked",
        ),
        ("-sha1", CertState::Unknown, "leaf.pem: unknown"),
    ] {
        let (ok, out) = run(
            pki.dir.path(),
            "openssl",
            &["ocsp", digest, "-issuer", "inter.pem", "-cert", "leaf.pem", "-reqout", "req.der"],
        );
        assert!(ok, "{out}");
        let req = ParsedOcspRequest::parse(&std::fs::read(pki.path("req.der")).unwrap()).unwrap();
        assert_eq!(req.queries().len(), 1);
        assert_eq!(req.queries()[0].serial(), leaf.serial);
        assert!(req.queries()[0].is_issued_by(&pki.inter), "{digest}");
        assert!(!req.queries()[0].is_issued_by(&pki.root));
        let resp = ocsp_response(&pki.inter, &req, &[state], now(), now() + 3600).unwrap();
        std::fs::write(pki.path("resp.der"), &resp).unwrap();
        // The nonce check needs the original request.
        let (ok, out) = run(
            pki.dir.path(),
            "openssl",
            &[
                "ocsp",
                "-reqin",
                "req.der",
                "-respin",
                "resp.der",
                "-CAfile",
                "root.pem",
                "-resp_text",
            ],
        );
        assert!(ok && out.contains("Response verify OK"), "{out}");
        assert!(!out.to_lowercase().contains("nonce verify error"), "{out}");
        assert!(out.contains("WITH_NONCE") || out.contains("OCSP Nonce"), "nonce echoed: {out}");
        let (ok, out) = run(
            pki.dir.path(),
            "openssl",
            &[
                "ocsp",
                digest,
                "-no_nonce",
                "-issuer",
                "inter.pem",
                "-cert",
                "leaf.pem",
                "-respin",
                "resp.der",
                "-CAfile",
                "root.pem",
            ],
        );
        assert!(ok && out.contains(want), "{want}: {out}");
    }
}

const VECTOR_KEY: &str = "cHJvdmlzaW9uZC1pbnRlcm9wLXZlY3Rvci1rZXktMzI=";

fn at(now: i64) -> Validity {
    Validity { now, skew_secs: 300, max_ahead_secs: 366 * 86400 }
}

#[test]
fn recorded_azure_sdk_tokens_verify() {
    let key = SasKey::from_base64(VECTOR_KEY).unwrap();
    // azure-iot-device (Python) RenewableSasToken: url-encoded sr.
    let py = "SharedAccessSignature sr=myhub.example%2Fdevices%2Fdev-1&sig=JFK4nF5zr%2BEtWOwASzS3GfzPplKWfo2a%2Fp4nRkg6UfE%3D&se=1795434406";
    let t = SasToken::parse(py).unwrap();
    t.verify(&key, at(1_795_434_000)).unwrap();
    assert!(t.covers("myhub.example/devices/dev-1"));
    let py_policy = "SharedAccessSignature sr=myhub.example&sig=VKo35aFe5HcKPVC0%2Fz6LirvplJukEVqw6fgWs7G95c8%3D&se=1795434406&skn=owner";
    let t = SasToken::parse(py_policy).unwrap();
    t.verify(&key, at(1_795_434_000)).unwrap();
    assert_eq!(t.key_name(), Some("owner"));
    // azure-iot-common (Node) SharedAccessSignature.create: raw sr, skn before se.
    let node = "SharedAccessSignature sr=0ne0000ABCD/registrations/dev-1&sig=fznI%2BTIjtN%2BO2nmvoOm0hr4R%2BvRcjVQDWiVeAM2P52g%3D&skn=registration&se=1900000000";
    let t = SasToken::parse(node).unwrap();
    t.verify(&key, at(1_899_999_000)).unwrap();
    assert!(t.covers("0ne0000ABCD/registrations/dev-1"));
    let node_dev = "SharedAccessSignature sr=myhub.example/devices/dev-1&sig=lFLz3vQ%2BpcLADGXkYlUeglTr0g%2F%2F3l%2BenSHJlejfnAQ%3D&se=1900000000";
    SasToken::parse(node_dev).unwrap().verify(&key, at(1_899_999_000)).unwrap();
    // The wrong key fails.
    let other = SasKey::generate();
    assert!(SasToken::parse(py).unwrap().verify(&other, at(1_795_434_000)).is_err());
}

#[test]
fn live_python_azure_iot_device_tokens_verify() {
    if !require("python3", &["-c", "import azure.iot.device"]) {
        return;
    }
    let script = format!(
        "from azure.iot.device.common.auth import sastoken, signing_mechanism\n\
         sm = signing_mechanism.SymmetricKeySigningMechanism('{VECTOR_KEY}')\n\
         print(str(sastoken.RenewableSasToken('live.example/devices/d-9', sm, ttl=600)))"
    );
    let out = Command::new("python3").args(["-c", &script]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let token = String::from_utf8(out.stdout).unwrap();
    let t = SasToken::parse(token.trim()).unwrap();
    t.verify(&SasKey::from_base64(VECTOR_KEY).unwrap(), at(now())).unwrap();
    assert!(t.covers("live.example/devices/d-9"));
}

#[test]
fn live_node_azure_iot_common_tokens_verify() {
    let node_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/node");
    let has_sdk = node_dir.join("node_modules/azure-iot-common").exists();
    if !require("node", &["--version"]) {
        return;
    }
    if !has_sdk {
        if std::env::var("PROVISIOND_REQUIRE_INTEROP").as_deref() == Ok("1") {
            panic!("tests/node/node_modules missing: run npm ci in tests/node");
        }
        eprintln!("SKIPPED: npm packages not installed in tests/node");
        return;
    }
    let exp = now() + 600;
    let script = format!(
        "const {{SharedAccessSignature}} = require('azure-iot-common');\n\
         console.log(SharedAccessSignature.create('0ne0000ABCD/registrations/r-1', 'registration', '{VECTOR_KEY}', {exp}).toString());"
    );
    let out = Command::new("node").args(["-e", &script]).current_dir(&node_dir).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let token = String::from_utf8(out.stdout).unwrap();
    assert!(token.contains("sr=0ne0000ABCD/registrations/r-1"), "Node sends sr raw: {token}");
    let t = SasToken::parse(token.trim()).unwrap();
    t.verify(&SasKey::from_base64(VECTOR_KEY).unwrap(), at(now())).unwrap();
}
